/* bridge.c: the scanner side of both bridges: address parsing, and exchanges
 * (connect, send, read the reply) on the filter's libev loop, a few at once. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <ev.h>

#include "bridge.h"
#include "pop3filter.h"

#define XCHG_IOV	64		/* segments per sendmsg() */
#define XCHG_READ	65536

/* ---- options --------------------------------------------------------------- */

int
bridge_addr_parse(struct bridge_addr *a, const char *spec, char *err,
    size_t errlen)
{
	struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
	struct sockaddr_in *in4 = (struct sockaddr_in *)&a->ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&a->ss;
	char host[64], *end;
	const char *colon, *h;
	size_t hlen;
	unsigned long port;

	memset(a, 0, sizeof(*a));
	snprintf(a->text, sizeof(a->text), "%s", spec);
	if (strncmp(spec, "unix:", 5) == 0) {
		if (spec[5] != '/' || strlen(spec + 5) >= sizeof(un->sun_path)) {
			snprintf(err, errlen, "%s: want unix:/absolute/path "
			    "(under %zu octets)", spec, sizeof(un->sun_path));
			return -1;
		}
		un->sun_family = AF_UNIX;
		memcpy(un->sun_path, spec + 5, strlen(spec + 5) + 1);
		a->len = sizeof(*un);
		return 0;
	}
	if (spec[0] == '[') {
		if ((colon = strstr(spec, "]:")) == NULL)
			goto bad;
		h = spec + 1;
		hlen = (size_t)(colon - h);
		colon++;
	} else {
		if ((colon = strrchr(spec, ':')) == NULL ||
		    memchr(spec, ':', (size_t)(colon - spec)) != NULL)
			goto bad;
		h = spec;
		hlen = (size_t)(colon - spec);
	}
	if (hlen == 0 || hlen >= sizeof(host))
		goto bad;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (colon[1] < '0' || colon[1] > '9' || *end != '\0' || errno != 0 ||
	    port == 0 || port > 65535)
		goto bad;
	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		a->len = sizeof(*in4);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		a->len = sizeof(*in6);
		return 0;
	}
	snprintf(err, errlen, "%s: not an IP address (host names are not "
	    "resolved: give 127.0.0.1:PORT, [::1]:PORT or unix:PATH)", spec);
	return -1;
bad:
	snprintf(err, errlen, "%s: want IP:PORT, [IPv6]:PORT or unix:PATH", spec);
	return -1;
}

int
bridge_parse_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	char *end;
	unsigned shift = 0;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		return -1;
	switch (*end) {
	case '\0':
		break;
	case 'k': case 'K':
		shift = 10;
		break;
	case 'm': case 'M':
		shift = 20;
		break;
	case 'g': case 'G':
		shift = 30;
		break;
	default:
		return -1;
	}
	if (*end != '\0' && end[1] != '\0')
		return -1;
	if (v > (UINT64_MAX >> shift))
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}

int
bridge_parse_seconds(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (end == s || *end != '\0' || errno != 0 || !isfinite(v) || v <= 0 ||
	    v > 86400)
		return -1;
	*out = v;
	return 0;
}

int
bridge_common_opt(struct bridge_common *c, int ch, const char *arg)
{
	unsigned long v;
	char *end;

	switch (ch) {
	case 's':
		c->sock = arg;
		return 1;
	case 'm':
		v = strtoul(arg, &end, 8);
		if (*arg == '\0' || *end != '\0' || v > 07777)
			return -1;
		c->mode = v;
		return 1;
	case 'q':
		c->quarantine = arg;
		return 1;
	case 'N':
		c->notice = arg;
		return 1;
	case 't':
		return bridge_parse_seconds(arg, &c->timeout) == -1 ? -1 : 1;
	case 'c':
		return bridge_parse_seconds(arg, &c->bo.connect_timeout) == -1 ?
		    -1 : 1;
	case 'n':
	case 'i':
		v = strtoul(arg, &end, 10);
		if (*arg < '0' || *arg > '9' || *end != '\0' || v == 0 ||
		    v > (ch == 'n' ? 1024 : 100000))
			return -1;
		if (ch == 'n')
			c->bo.max_conns = (unsigned)v;
		else
			c->inflight = v;
		return 1;
	case 'v':
		c->verbose = true;
		return 1;
	}
	return 0;
}

int
bridge_common_check(const struct bridge_common *c, const char *prog)
{
	struct stat st;

	if (c->quarantine != NULL && (stat(c->quarantine, &st) == -1 ||
	    !S_ISDIR(st.st_mode))) {
		fprintf(stderr, "%s: quarantine %s: not a directory\n", prog,
		    c->quarantine);
		return -1;
	}
	return 0;
}

int
bridge_listen(struct pf *pf, const struct bridge_common *c, const char *prog)
{
	if (c->verbose)
		pf_log_level(pf, PF_LOG_DEBUG);
	if ((c->inflight && pf_max_inflight(pf, (uint32_t)c->inflight) == -1) ||
	    (c->mode && pf_socket_mode(pf, (mode_t)c->mode) == -1) ||
	    pf_listen(pf, c->sock) == -1) {
		fprintf(stderr, "%s: %s\n", prog, pf_strerror(pf));
		return -1;
	}
	return 0;
}

double
bridge_time_for(const struct bridge_common *c, const struct pf_message *m)
{
	double t = c->timeout;

	if (m->deadline_ms > 0 && m->deadline_ms * 0.9 / 1000. < t)
		t = m->deadline_ms * 0.9 / 1000.;
	return t;
}

void
bridge_must(struct pf *pf, struct pf_req *r, int rc, const char *what)
{
	if (rc == 0)
		return;
	pf_log(pf, PF_LOG_ERROR, "%s: %s", what, pf_strerror(pf));
	pf_fail(r, pf_strerror(pf));
}

void
bridge_reject(struct pf *pf, struct pf_req *r, const struct pf_message *m,
    const struct bridge_common *c, const char *notice, const char *what)
{
	char qid[128];

	if (c->quarantine == NULL) {
		/* The proxy keeps the original, or tempfails if it cannot.
		 * Log first: m dies with the verdict. */
		pf_log(pf, PF_LOG_INFO, "session %s msg %llu: %s: rejecting",
		    m->session_id, (unsigned long long)m->number, what);
		bridge_must(pf, r, pf_reject(r, notice), "reject");
		return;
	}
	/* Durable before we answer: the proxy will not keep a copy. */
	if (pf_quarantine_store(c->quarantine, m->body, m->body_len, qid,
	    sizeof(qid)) == -1) {
		pf_log(pf, PF_LOG_ERROR, "quarantine %s: %s", c->quarantine,
		    strerror(errno));
		if (pf_tempfail(r, "quarantine unavailable") == -1)
			pf_fail(r, "quarantine unavailable");
		return;
	}
	pf_log(pf, PF_LOG_INFO, "session %s msg %llu: %s: rejecting, kept as %s",
	    m->session_id, (unsigned long long)m->number, what, qid);
	bridge_must(pf, r, pf_reject_quarantined(r, notice, qid), "reject");
}

/* ---- exchanges ------------------------------------------------------------- */

enum xchg_state { X_QUEUED, X_CONNECTING, X_SENDING, X_READING };

struct xchg {
	struct bridge		*b;
	TAILQ_ENTRY(xchg)	 entry;		/* in b->queue while X_QUEUED */
	enum xchg_state		 state;
	int			 fd;
	ev_io			 io;
	ev_timer		 timer;
	ev_tstamp		 deadline;	/* absolute, on the loop's clock */
	double			 timeout;
	struct bridge_seg	*segs;
	size_t			 nsegs, seg, off;
	char			*reply;
	size_t			 rlen, rcap;
	int			 write_errno;	/* the scanner stopped reading */
	char			 err[256];	/* set: fail at the next timer */
	xchg_complete_fn	 complete;
	xchg_done_cb		 done;
	void			*arg;
};

struct bridge {
	struct ev_loop		*loop;
	struct bridge_addr	 addr;
	struct bridge_opts	 o;
	unsigned		 active;
	unsigned		 nqueued;
	TAILQ_HEAD(, xchg)	 queue;
};

static void	xchg_start(struct xchg *);

struct bridge *
bridge_new(struct ev_loop *loop, const struct bridge_addr *addr,
    const struct bridge_opts *o)
{
	struct bridge *b;

	if ((b = calloc(1, sizeof(*b))) == NULL)
		return NULL;
	b->loop = loop;
	b->addr = *addr;
	b->o = *o;
	if (b->o.max_conns == 0)
		b->o.max_conns = 1;
	TAILQ_INIT(&b->queue);
	return b;
}

unsigned
bridge_active(const struct bridge *b)
{
	return b->active;
}

unsigned
bridge_queued(const struct bridge *b)
{
	return b->nqueued;
}

/* Unhook an exchange from everything: watchers, socket, pool accounting. */
static void
xchg_detach(struct xchg *x)
{
	struct bridge *b = x->b;

	ev_timer_stop(b->loop, &x->timer);
	ev_io_stop(b->loop, &x->io);
	if (x->fd != -1) {
		close(x->fd);
		x->fd = -1;
	}
	if (x->state == X_QUEUED) {
		TAILQ_REMOVE(&b->queue, x, entry);
		b->nqueued--;
	} else
		b->active--;
}

static void
xchg_free(struct xchg *x)
{
	free(x->segs);
	free(x->reply);
	free(x);
}

/* Start queued exchanges while connections are free. One with less than a
 * tenth of its time left would only hold the scanner for nothing: its timer
 * fails it now. A start that fails does so later, from the timer too, so
 * this never calls back. */
static void
bridge_kick(struct bridge *b)
{
	struct xchg *x, *next;

	for (x = TAILQ_FIRST(&b->queue); x != NULL &&
	    b->active < b->o.max_conns; x = next) {
		next = TAILQ_NEXT(x, entry);
		if (x->deadline - ev_now(b->loop) < x->timeout / 10) {
			ev_timer_stop(b->loop, &x->timer);
			ev_timer_set(&x->timer, 0., 0.);
			ev_timer_start(b->loop, &x->timer);
			continue;
		}
		TAILQ_REMOVE(&b->queue, x, entry);
		b->nqueued--;
		xchg_start(x);
	}
}

static void
xchg_finish(struct xchg *x, const char *err)
{
	struct bridge *b = x->b;

	xchg_detach(x);
	x->done(x, err, x->reply ? x->reply : "", x->rlen, x->arg);
	xchg_free(x);
	bridge_kick(b);
}

void
xchg_cancel(struct xchg *x)
{
	struct bridge *b = x->b;

	xchg_detach(x);
	xchg_free(x);
	bridge_kick(b);
}

void
bridge_free(struct bridge *b)
{
	struct xchg *x;

	if (b == NULL)
		return;
	while ((x = TAILQ_FIRST(&b->queue)) != NULL) {
		xchg_detach(x);
		xchg_free(x);
	}
	/* Running exchanges belong to requests the library cancels. */
	free(b);
}

/* Fail from the next loop iteration, not from the caller's stack. */
static void
xchg_fail_later(struct xchg *x, const char *fmt, const char *detail)
{
	struct bridge *b = x->b;

	snprintf(x->err, sizeof(x->err), fmt, b->o.what, b->addr.text, detail);
	ev_io_stop(b->loop, &x->io);
	ev_timer_stop(b->loop, &x->timer);
	ev_timer_set(&x->timer, 0., 0.);
	ev_timer_start(b->loop, &x->timer);
}

static void
xchg_arm_timer(struct xchg *x, double limit)
{
	struct bridge *b = x->b;
	double left = x->deadline - ev_now(b->loop);

	if (limit > 0 && limit < left)
		left = limit;
	ev_timer_stop(b->loop, &x->timer);
	ev_timer_set(&x->timer, left > 0 ? left : 0., 0.);
	ev_timer_start(b->loop, &x->timer);
}

static void
xchg_set_events(struct xchg *x, int events)
{
	struct bridge *b = x->b;

	ev_io_stop(b->loop, &x->io);
	ev_io_set(&x->io, x->fd, events);
	ev_io_start(b->loop, &x->io);
}

static void
xchg_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct xchg *x = (struct xchg *)((char *)w - offsetof(struct xchg, timer));
	struct bridge *b = x->b;
	char msg[320];

	if (x->err[0] != '\0') {
		xchg_finish(x, x->err);
		return;
	}
	switch (x->state) {
	case X_QUEUED:
		snprintf(msg, sizeof(msg), "%s %s: no free connection within "
		    "%.1f s (%u in use, %u waiting)", b->o.what, b->addr.text,
		    x->timeout, b->active, b->nqueued);
		break;
	case X_CONNECTING:
		snprintf(msg, sizeof(msg), "%s %s: connect timed out", b->o.what,
		    b->addr.text);
		break;
	default:
		snprintf(msg, sizeof(msg), "%s %s: no answer within %.1f s",
		    b->o.what, b->addr.text, x->timeout);
		break;
	}
	xchg_finish(x, msg);
}

/* 1: the exchange is over (freed, or failing from the timer); 0: go on. */
static int
xchg_read(struct xchg *x)
{
	struct bridge *b = x->b;
	size_t cap;
	ssize_t n;
	char *p;

	for (;;) {
		if (x->rcap - x->rlen < XCHG_READ) {
			cap = x->rcap ? x->rcap * 2 : XCHG_READ * 2;
			if ((p = realloc(x->reply, cap)) == NULL) {
				xchg_finish(x, "out of memory");
				return 1;
			}
			x->reply = p;
			x->rcap = cap;
		}
		n = recv(x->fd, x->reply + x->rlen, x->rcap - x->rlen - 1, 0);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			xchg_fail_later(x, "%s %s: read: %s", strerror(errno));
			return 1;
		}
		if (n == 0) {
			if (x->rlen == 0) {
				xchg_fail_later(x, x->write_errno ?
				    "%s %s: closed the connection while we sent "
				    "(%s)" : "%s %s: closed the connection "
				    "without answering%s", x->write_errno ?
				    strerror(x->write_errno) : "");
				return 1;
			}
			xchg_finish(x, NULL);
			return 1;
		}
		x->rlen += (size_t)n;
		x->reply[x->rlen] = '\0';
		if (x->rlen > b->o.max_reply) {
			xchg_fail_later(x, "%s %s: %s", "answer too long");
			return 1;
		}
		if (x->complete(x->reply, x->rlen)) {
			xchg_finish(x, NULL);
			return 1;
		}
	}
}

static void
xchg_send(struct xchg *x)
{
	struct bridge *b = x->b;
	struct iovec iov[XCHG_IOV];
	struct msghdr mh;
	size_t i, k, n;
	ssize_t w;

	while (x->seg < x->nsegs) {
		for (i = x->seg, k = 0; i < x->nsegs && k < XCHG_IOV; i++, k++) {
			iov[k].iov_base = (void *)(x->segs[i].ptr +
			    (i == x->seg ? x->off : 0));
			iov[k].iov_len = x->segs[i].len - (i == x->seg ? x->off : 0);
		}
		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = iov;
		mh.msg_iovlen = k;
		if ((w = sendmsg(x->fd, &mh, MSG_NOSIGNAL)) == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EPIPE || errno == ECONNRESET) {
				/* clamd says why (a size limit) and closes:
				 * read that rather than report the pipe. */
				x->write_errno = errno;
				x->state = X_READING;
				xchg_set_events(x, EV_READ);
				(void)xchg_read(x);
				return;
			}
			xchg_fail_later(x, "%s %s: write: %s", strerror(errno));
			return;
		}
		for (n = (size_t)w; n > 0 && x->seg < x->nsegs; ) {
			k = x->segs[x->seg].len - x->off;
			if (n < k) {
				x->off += n;
				break;
			}
			n -= k;
			x->seg++;
			x->off = 0;
		}
		while (x->seg < x->nsegs && x->segs[x->seg].len == 0)
			x->seg++;
	}
	if (b->o.shut_wr)
		shutdown(x->fd, SHUT_WR);
	x->state = X_READING;
	xchg_set_events(x, EV_READ);
}

static void
xchg_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct xchg *x = (struct xchg *)((char *)w - offsetof(struct xchg, io));
	socklen_t sl = sizeof(int);
	int soerr = 0;

	if (x->state == X_CONNECTING) {
		if (getsockopt(x->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == -1)
			soerr = errno;
		if (soerr != 0) {
			xchg_fail_later(x, "%s %s: connect: %s", strerror(soerr));
			return;
		}
		x->state = X_SENDING;
		xchg_arm_timer(x, 0);
		xchg_set_events(x, EV_READ | EV_WRITE);
		return;
	}
	/* Read first while sending: an early answer is an error we want. */
	if ((revents & EV_READ) && xchg_read(x) == 1)
		return;
	if (x->state == X_SENDING && (revents & EV_WRITE))
		xchg_send(x);
}

static void
xchg_start(struct xchg *x)
{
	struct bridge *b = x->b;
	int fd;

	b->active++;
	x->state = X_CONNECTING;
	fd = socket(b->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0);
	if (fd == -1) {
		xchg_fail_later(x, "%s %s: socket: %s", strerror(errno));
		return;
	}
	x->fd = fd;
	ev_io_init(&x->io, xchg_io_cb, fd, EV_WRITE);
	if (connect(fd, (struct sockaddr *)&b->addr.ss, b->addr.len) == 0) {
		x->state = X_SENDING;
		xchg_arm_timer(x, 0);
		xchg_set_events(x, EV_READ | EV_WRITE);
		return;
	}
	if (errno != EINPROGRESS) {
		/* EAGAIN on a UNIX socket: its backlog is full; no waiting. */
		xchg_fail_later(x, "%s %s: connect: %s", strerror(errno));
		return;
	}
	xchg_arm_timer(x, b->o.connect_timeout);
	ev_io_start(b->loop, &x->io);
}

struct xchg *
bridge_submit(struct bridge *b, const struct bridge_seg *segs, size_t nsegs,
    double timeout, xchg_complete_fn complete, xchg_done_cb done, void *arg)
{
	struct xchg *x;

	if ((x = calloc(1, sizeof(*x))) == NULL)
		return NULL;
	if ((x->segs = calloc(nsegs ? nsegs : 1, sizeof(*segs))) == NULL) {
		free(x);
		return NULL;
	}
	memcpy(x->segs, segs, nsegs * sizeof(*segs));
	x->nsegs = nsegs;
	x->b = b;
	x->fd = -1;
	x->timeout = timeout;
	x->deadline = ev_now(b->loop) + timeout;
	x->complete = complete;
	x->done = done;
	x->arg = arg;
	ev_init(&x->io, xchg_io_cb);
	ev_init(&x->timer, xchg_timer_cb);
	if (b->active < b->o.max_conns) {
		xchg_start(x);
		return x;
	}
	x->state = X_QUEUED;
	TAILQ_INSERT_TAIL(&b->queue, x, entry);
	b->nqueued++;
	xchg_arm_timer(x, 0);
	return x;
}
