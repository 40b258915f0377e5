/* pop3load.c: the benchmark's load generator: many POP3 sessions on one
 * libev loop, pipelined RETR/TOP checked byte for byte, or idle sessions held. */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../bench_corpus.h"

#define PIPE_MAX	64	/* commands in flight per session */
#define LINE_MAX_	1024	/* a status line longer than this is an error */
#define RECV_CHUNK	(256 * 1024)

enum mode { M_RETR, M_IDLE };
enum verify { V_EXACT, V_HEADERS };

enum sess_state {
	ST_CONNECT, ST_GREETING, ST_USER, ST_PASS, ST_READY, ST_NOOP,
	ST_QUIT, ST_DONE, ST_FAILED,
};

struct inflight {
	uint32_t msgno;		/* 1-based */
	uint8_t top;
	ev_tstamp sent;
};

struct sess {
	int idx, fd;
	enum sess_state st;
	ev_io rw, ww;
	char out[512];
	size_t outlen;
	char line[LINE_MAX_];
	size_t linelen;
	struct inflight q[PIPE_MAX];
	unsigned qhead, qlen;
	int in_body;		/* the head's +OK came, its body is arriving */
	size_t off;		/* exact: octets of the body matched so far */
	char *acc;		/* headers: the body so far */
	size_t acclen, acccap;
	uint32_t next_msg;
	unsigned ncmd;
};

static struct {
	const char *connect, *user, *pass;
	struct sockaddr_in addr;
	int sources, sessions, pipeline, top_every, concurrency;
	double duration, hold, timeout;
	enum mode mode;
	enum verify verify;
	unsigned long count, size, seed;
	const char *maildir;
} opt = {
	.pass = "x", .sources = 1, .sessions = 1, .pipeline = 4, .top_every = 8,
	.concurrency = 256, .duration = 5, .hold = 30, .timeout = 0,
	.count = 50, .size = 50000, .seed = 1,
};

static struct {
	struct ev_loop *loop;
	struct corpus corpus;
	struct sess *s;
	char *rbuf;
	int started, stopping, holding;
	ev_tstamp t0, t_end, t_stop;
	int next_connect, connecting, ready, failed, done, noop_ok, quit_ok;
	unsigned long long msgs, bytes, tops, marked, errors, late;
	uint32_t *lat;		/* microseconds, measured messages only */
	size_t nlat, latcap;
	int errors_shown;
	ev_timer tick, poll, deadline;
	ev_signal usr1;
	ev_io stdin_w;
} g;

static void load_launch(void);
static void load_sess_io(struct sess *);

static void
load_err(struct sess *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A failed check: counted, shown (a few), and the session is closed. */
static void
load_err(struct sess *s, const char *fmt, ...)
{
	g.errors++;
	if (g.errors_shown++ < 5) {
		va_list ap;
		va_start(ap, fmt);
		fprintf(stderr, "pop3load: session %d: ", s->idx);
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
		va_end(ap);
	}
	if (s->fd >= 0) {
		ev_io_stop(g.loop, &s->rw);
		ev_io_stop(g.loop, &s->ww);
		close(s->fd);
		s->fd = -1;
	}
	if (s->st < ST_READY)
		g.connecting--;
	s->st = ST_FAILED;
	g.failed++;
	free(s->acc);
	s->acc = NULL;
}

static void
load_close(struct sess *s)
{
	ev_io_stop(g.loop, &s->rw);
	ev_io_stop(g.loop, &s->ww);
	close(s->fd);
	s->fd = -1;
	s->st = ST_DONE;
	g.done++;
	free(s->acc);
	s->acc = NULL;
}

static void
load_send(struct sess *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
load_send(struct sess *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(s->out + s->outlen, sizeof(s->out) - s->outlen, fmt, ap);
	va_end(ap);
	if (n > 0 && (size_t)n < sizeof(s->out) - s->outlen)
		s->outlen += (size_t)n;
}

/* Keep `pipeline` commands in flight while the measurement runs. */
static void
load_fill(struct sess *s)
{
	while (g.started && !g.stopping && s->qlen < (unsigned)opt.pipeline &&
	    sizeof(s->out) - s->outlen > 32) {
		struct inflight *f = &s->q[(s->qhead + s->qlen++) % PIPE_MAX];
		f->msgno = s->next_msg;
		s->next_msg = s->next_msg % g.corpus.count + 1;
		f->top = opt.top_every > 0 && ++s->ncmd % opt.top_every == 0;
		f->sent = ev_time();
		if (f->top)
			load_send(s, "TOP %u %d\r\n", f->msgno, CORPUS_TOP_LINES);
		else
			load_send(s, "RETR %u\r\n", f->msgno);
	}
	if (g.stopping && s->qlen == 0 && s->st == ST_READY) {
		load_send(s, "QUIT\r\n");
		s->st = ST_QUIT;
	}
}

static void
load_record(struct sess *s, struct inflight *f, size_t octets)
{
	ev_tstamp now = ev_time();
	if (f->sent < g.t0 || now > g.t_end) {
		g.late++;
		return;
	}
	g.msgs++;
	g.bytes += octets;
	if (f->top)
		g.tops++;
	if (g.nlat == g.latcap) {
		g.latcap = g.latcap ? g.latcap * 2 : 65536;
		g.lat = realloc(g.lat, g.latcap * sizeof(*g.lat));
		if (g.lat == NULL)
			abort();
	}
	double us = (now - f->sent) * 1e6;
	g.lat[g.nlat++] = us > 4e9 ? 4000000000u : (uint32_t)us;
}

static void
load_msg_done(struct sess *s, size_t octets)
{
	struct inflight *f = &s->q[s->qhead];
	load_record(s, f, octets);
	s->qhead = (s->qhead + 1) % PIPE_MAX;
	s->qlen--;
	s->in_body = 0;
	s->off = 0;
	s->acclen = 0;
	load_fill(s);
}

/* A line a filter may have added: a header field or its continuation. */
static int
load_header_like(const char *p, size_t n)
{
	return n >= 3 && p[n - 2] == '\r' && (p[0] == ' ' || p[0] == '\t' ||
	    memchr(p, ':', n) != NULL);
}

/*
 * Header check (filters add header lines, anywhere in the header section):
 * after the blank line the body must be the expected one octet for octet,
 * and the header section must be the expected lines, in order, with only
 * well-formed header lines added between them.
 */
static int
load_check_headers(struct sess *s, const char *exp, size_t explen)
{
	const char *he = memmem(exp, explen, "\r\n\r\n", 4);
	const char *hd = memmem(s->acc, s->acclen, "\r\n\r\n", 4);
	if (he == NULL || hd == NULL)
		return -1;
	size_t elen = (size_t)(he - exp) + 2, dlen = (size_t)(hd - s->acc) + 2;
	if (s->acclen - dlen != explen - elen ||
	    memcmp(s->acc + dlen, exp + elen, explen - elen) != 0)
		return -1;
	size_t e = 0, added = 0;
	for (size_t d = 0; d < dlen;) {
		const char *lf = memchr(s->acc + d, '\n', dlen - d);
		size_t n = (size_t)(lf - (s->acc + d)) + 1;
		const char *elf = e < elen ? memchr(exp + e, '\n', elen - e) : NULL;
		size_t en = elf ? (size_t)(elf - (exp + e)) + 1 : 0;
		if (en == n && memcmp(s->acc + d, exp + e, n) == 0) {
			e += en;
		} else if (load_header_like(s->acc + d, n)) {
			if (memmem(s->acc + d, n, "nfiltered", 9) != NULL ||
			    memmem(s->acc + d, n, "NFILTERED", 9) != NULL)
				g.marked++;
			added++;
		} else {
			return -1;
		}
		d += n;
	}
	return e == elen ? 0 : -1;
}

/* Body octets for the head of the queue; returns octets used or -1. */
static long
load_body(struct sess *s, const char *p, size_t n)
{
	struct inflight *f = &s->q[s->qhead];
	const struct corpus_msg *m = &g.corpus.m[f->msgno - 1];
	size_t blen = f->top ? m->top_len : m->wire_len - 3;

	if (opt.verify == V_EXACT) {
		/* The expected stream is wire[0..blen) then ".\r\n". */
		size_t used = 0;
		while (used < n) {
			size_t want, k;
			const char *e;
			if (s->off < blen) {
				e = m->wire + s->off;
				want = blen - s->off;
			} else {
				e = ".\r\n" + (s->off - blen);
				want = blen + 3 - s->off;
			}
			k = n - used < want ? n - used : want;
			if (memcmp(p + used, e, k) != 0) {
				load_err(s, "%s %u: octet %zu differs",
				    f->top ? "TOP" : "RETR", f->msgno, s->off);
				return -1;
			}
			used += k;
			s->off += k;
			if (s->off == blen + 3) {
				load_msg_done(s, f->top ? blen : m->octets);
				return (long)used;
			}
		}
		return (long)used;
	}
	/* Headers mode: gather up to the terminator, then compare. */
	size_t scan_from = s->acclen > 4 ? s->acclen - 4 : 0;
	if (s->acclen + n > s->acccap) {
		size_t cap = s->acccap ? s->acccap : 4096;
		while (cap < s->acclen + n)
			cap *= 2;
		char *a = realloc(s->acc, cap);
		if (a == NULL)
			abort();
		s->acc = a;
		s->acccap = cap;
	}
	memcpy(s->acc + s->acclen, p, n);
	s->acclen += n;
	const char *t = NULL;
	if (s->acclen >= 3 && memcmp(s->acc, ".\r\n", 3) == 0)
		t = s->acc - 2;
	else
		t = memmem(s->acc + scan_from, s->acclen - scan_from, "\r\n.\r\n", 5);
	if (t == NULL)
		return (long)n;
	size_t body = (size_t)(t + 2 - s->acc), end = body + 3;
	size_t extra = s->acclen - end;	/* the next reply's octets */
	s->acclen = body;
	if (load_check_headers(s, m->wire, blen) < 0) {
		load_err(s, "%s %u: not the expected message (got %zu octets, "
		    "want %zu plus added header lines)", f->top ? "TOP" : "RETR",
		    f->msgno, body, blen);
		return -1;
	}
	load_msg_done(s, f->top ? blen : m->octets);
	return (long)(n - extra);
}

/* A complete status line arrived (CRLF included). Returns 0 or -1. */
static int
load_status(struct sess *s, const char *l, size_t n)
{
	int ok = n >= 3 && memcmp(l, "+OK", 3) == 0;
	switch (s->st) {
	case ST_GREETING:
		if (!ok)
			goto bad;
		load_send(s, "USER %s\r\n", opt.user);
		s->st = ST_USER;
		return 0;
	case ST_USER:
		if (!ok)
			goto bad;
		load_send(s, "PASS %s\r\n", opt.pass);
		s->st = ST_PASS;
		return 0;
	case ST_PASS:
		if (!ok)
			goto bad;
		s->st = ST_READY;
		g.connecting--;
		g.ready++;
		load_launch();
		load_fill(s);
		return 0;
	case ST_READY:
		if (s->qlen == 0 || !ok)
			goto bad;
		s->in_body = 1;
		return 0;
	case ST_NOOP:
		if (!ok)
			goto bad;
		g.noop_ok++;
		load_send(s, "QUIT\r\n");
		s->st = ST_QUIT;
		return 0;
	case ST_QUIT:
		if (!ok)
			goto bad;
		g.quit_ok++;
		load_close(s);
		return -1;
	default:
		goto bad;
	}
bad:
	load_err(s, "unexpected reply in state %d: %.*s", s->st,
	    (int)(n > 200 ? 200 : n), l);
	return -1;
}

static void
load_input(struct sess *s, const char *p, size_t n)
{
	while (n > 0 && s->fd >= 0) {
		if (s->in_body) {
			long k = load_body(s, p, n);
			if (k < 0)
				return;
			p += k;
			n -= (size_t)k;
			continue;
		}
		const char *lf = memchr(p, '\n', n);
		size_t k = lf ? (size_t)(lf - p) + 1 : n;
		if (s->linelen + k > sizeof(s->line)) {
			load_err(s, "status line too long");
			return;
		}
		memcpy(s->line + s->linelen, p, k);
		s->linelen += k;
		p += k;
		n -= k;
		if (lf == NULL)
			break;
		size_t ll = s->linelen;
		s->linelen = 0;
		if (load_status(s, s->line, ll) < 0)
			return;
	}
}

static void
load_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct sess *s = w->data;
	ssize_t n = recv(s->fd, g.rbuf, RECV_CHUNK, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		load_err(s, "connection %s in state %d", n == 0 ? "closed" :
		    strerror(errno), s->st);
		return;
	}
	load_input(s, g.rbuf, (size_t)n);
	if (s->fd >= 0)
		load_sess_io(s);
}

static void
load_sess_io(struct sess *s)
{
	while (s->outlen > 0) {
		ssize_t w = send(s->fd, s->out, s->outlen, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			load_err(s, "send: %s", strerror(errno));
			return;
		}
		memmove(s->out, s->out + w, s->outlen - (size_t)w);
		s->outlen -= (size_t)w;
	}
	if (s->outlen > 0)
		ev_io_start(g.loop, &s->ww);
	else
		ev_io_stop(g.loop, &s->ww);
}

static void
load_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct sess *s = w->data;
	if (s->st == ST_CONNECT) {
		int err = 0;
		socklen_t len = sizeof(err);
		getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err != 0) {
			load_err(s, "connect: %s", strerror(err));
			load_launch();
			return;
		}
		s->st = ST_GREETING;
		ev_io_start(loop, &s->rw);
	}
	load_sess_io(s);
}

static void
load_connect(struct sess *s)
{
	s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	g.connecting++;
	if (s->fd < 0) {
		load_err(s, "socket: %s", strerror(errno));
		return;
	}
	int one = 1;
	setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (opt.sources > 1) {
		/* Spread the sessions over 127.0.0.1..N: one source address
		 * runs out of ephemeral ports long before 10,000 sessions
		 * on each side of a proxy. */
		struct sockaddr_in src = { .sin_family = AF_INET };
		src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(s->idx % opt.sources));
		setsockopt(s->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one,
		    sizeof(one));
		if (bind(s->fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
			load_err(s, "bind: %s", strerror(errno));
			return;
		}
	}
	ev_io_init(&s->rw, load_read_cb, s->fd, EV_READ);
	ev_io_init(&s->ww, load_write_cb, s->fd, EV_WRITE);
	s->rw.data = s->ww.data = s;
	s->st = ST_CONNECT;
	if (connect(s->fd, (struct sockaddr *)&opt.addr, sizeof(opt.addr)) < 0 &&
	    errno != EINPROGRESS) {
		load_err(s, "connect: %s", strerror(errno));
		return;
	}
	ev_io_start(g.loop, &s->ww);
}

static void
load_start_measuring(void)
{
	g.started = 1;
	g.t0 = ev_time();
	g.t_end = g.t0 + opt.duration;
	for (int i = 0; i < opt.sessions; i++) {
		struct sess *s = &g.s[i];
		if (s->st == ST_READY) {
			load_fill(s);
			load_sess_io(s);
		}
	}
}

/* Open sessions up to the handshake concurrency; once every session is
 * in, start measuring (retr) or report that they are held (idle). */
static void
load_launch(void)
{
	while (g.next_connect < opt.sessions && g.connecting < opt.concurrency)
		load_connect(&g.s[g.next_connect++]);
	if (g.next_connect < opt.sessions || g.connecting > 0)
		return;
	if (opt.mode == M_RETR && !g.started) {
		load_start_measuring();
	} else if (opt.mode == M_IDLE && !g.holding) {
		g.holding = 1;
		printf("holding held=%d failed=%d\n", g.ready, g.failed);
		fflush(stdout);
		ev_timer_set(&g.tick, opt.hold, 0);
		ev_timer_start(g.loop, &g.tick);
	}
}

static void
load_stop_all(void)
{
	g.stopping = 1;
	g.t_stop = ev_time();
	for (int i = 0; i < opt.sessions; i++) {
		struct sess *s = &g.s[i];
		if (s->st == ST_READY && s->fd >= 0) {
			if (opt.mode == M_IDLE) {
				load_send(s, "NOOP\r\n");
				s->st = ST_NOOP;
			} else {
				load_fill(s);
			}
			load_sess_io(s);
		}
	}
}

/* Idle mode: the hold time is up. */
static void
load_tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	if (g.holding && !g.stopping)
		load_stop_all();
}

/* Every 10 ms: open more sessions as logins finish or fail, end the
 * measurement on time, and leave when every session is closed. */
static void
load_poll_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	load_launch();
	if (opt.mode == M_RETR && g.started && !g.stopping &&
	    ev_time() >= g.t_end)
		load_stop_all();
	if (g.stopping && g.done + g.failed == opt.sessions)
		ev_break(loop, EVBREAK_ALL);
	if (!g.started && !g.holding && g.failed == opt.sessions)
		ev_break(loop, EVBREAK_ALL);
}

static void
load_release_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	if (g.holding && !g.stopping)
		load_stop_all();
}

static void
load_stdin_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	char b[64];
	if (read(0, b, sizeof(b)) <= 0)
		ev_io_stop(loop, w);
	if (g.holding && !g.stopping)
		load_stop_all();
}

static void
load_deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	fprintf(stderr, "pop3load: overall timeout; %d sessions unfinished\n",
	    opt.sessions - g.done - g.failed);
	g.errors += (unsigned long long)(opt.sessions - g.done - g.failed);
	ev_break(loop, EVBREAK_ALL);
}

static int
load_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static uint32_t
load_pct(double q)
{
	if (g.nlat == 0)
		return 0;
	size_t i = (size_t)ceil(q * (double)g.nlat) - 1;
	return g.lat[i < g.nlat ? i : g.nlat - 1];
}

static void
load_report(void)
{
	double secs = opt.mode == M_RETR ? opt.duration : 0;
	qsort(g.lat, g.nlat, sizeof(*g.lat), load_cmp_u32);
	printf("result mode=%s sessions=%d ready=%d failed=%d errors=%llu "
	    "msgs=%llu tops=%llu bytes=%llu secs=%.3f mbps=%.3f msgps=%.1f "
	    "p50_us=%u p90_us=%u p99_us=%u max_us=%u noop_ok=%d quit_ok=%d "
	    "marked=%llu late=%llu\n",
	    opt.mode == M_RETR ? "retr" : "idle", opt.sessions, g.ready, g.failed,
	    g.errors, g.msgs, g.tops, g.bytes, secs,
	    secs > 0 ? (double)g.bytes / secs / 1e6 : 0,
	    secs > 0 ? (double)g.msgs / secs : 0,
	    load_pct(0.50), load_pct(0.90), load_pct(0.99), load_pct(1.0),
	    g.noop_ok, g.quit_ok, g.marked, g.late);
	fflush(stdout);
}

static void
load_usage(void)
{
	fputs(
"usage: pop3load --connect 127.0.0.1:PORT --user NAME [options]\n"
"  --pass PW            password (default x)\n"
"  --sessions N         concurrent sessions (default 1)\n"
"  --mode retr|idle     retrieve and check messages, or hold idle sessions\n"
"  --duration SECS      retr: measuring time once every session is in\n"
"  --pipeline K         retr: commands in flight per session (default 4)\n"
"  --top-every N        retr: every Nth command is TOP n 5 (0: never; 8)\n"
"  --verify exact|headers  byte for byte, or allow added header lines\n"
"  --count N --size B --seed S   the mailbox pop3memd serves\n"
"  --sources N          bind sessions to 127.0.0.1..127.0.0.N\n"
"  --concurrency N      logins in progress at once (default 256)\n"
"  --hold SECS          idle: hold at most this long; SIGUSR1 or a line\n"
"                       on stdin ends the hold early\n"
"  --timeout SECS       give up after this long overall\n"
"  --write-maildir DIR  write the corpus into DIR/cur (for Dovecot) and exit\n", stderr);
}

/*
 * Store the corpus as a Maildir (cur/, unstuffed, CRLF) so that a real
 * Dovecot serves the very messages the checks expect. The names sort in
 * message order, which is the order Dovecot numbers them in.
 */
static int
load_write_maildir(void)
{
	char path[4096];
	for (uint32_t i = 1; i <= opt.count; i++) {
		size_t hdr;
		char *t = corpus_text(i, opt.size < 512 ? 512 : opt.size,
		    (uint32_t)opt.seed, &hdr);
		snprintf(path, sizeof(path), "%s/cur/%u.M%uP1.bench,S=%lu:2,S",
		    opt.maildir, 1000000000u + i, i, opt.size < 512 ? 512 : opt.size);
		FILE *f = t ? fopen(path, "w") : NULL;
		if (f == NULL || fwrite(t, 1, opt.size < 512 ? 512 : opt.size, f) !=
		    (opt.size < 512 ? 512 : opt.size) || fclose(f) != 0) {
			fprintf(stderr, "pop3load: %s: %s\n", path, strerror(errno));
			return 1;
		}
		free(t);
	}
	return 0;
}

static int
load_parse_addr(const char *spec)
{
	char host[64];
	const char *colon = strrchr(spec, ':');
	if (colon == NULL || (size_t)(colon - spec) >= sizeof(host))
		return -1;
	memcpy(host, spec, (size_t)(colon - spec));
	host[colon - spec] = '\0';
	opt.addr.sin_family = AF_INET;
	opt.addr.sin_port = htons((uint16_t)atoi(colon + 1));
	return inet_pton(AF_INET, host, &opt.addr.sin_addr) == 1 ? 0 : -1;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "connect", required_argument, NULL, 'c' },
		{ "user", required_argument, NULL, 'u' },
		{ "pass", required_argument, NULL, 'p' },
		{ "sessions", required_argument, NULL, 'n' },
		{ "mode", required_argument, NULL, 'm' },
		{ "duration", required_argument, NULL, 'd' },
		{ "pipeline", required_argument, NULL, 'P' },
		{ "top-every", required_argument, NULL, 'T' },
		{ "verify", required_argument, NULL, 'v' },
		{ "count", required_argument, NULL, 'C' },
		{ "size", required_argument, NULL, 's' },
		{ "seed", required_argument, NULL, 'S' },
		{ "sources", required_argument, NULL, 'a' },
		{ "concurrency", required_argument, NULL, 'k' },
		{ "hold", required_argument, NULL, 'H' },
		{ "timeout", required_argument, NULL, 't' },
		{ "write-maildir", required_argument, NULL, 'W' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'c': opt.connect = optarg; break;
		case 'u': opt.user = optarg; break;
		case 'p': opt.pass = optarg; break;
		case 'n': opt.sessions = atoi(optarg); break;
		case 'm':
			if (strcmp(optarg, "retr") == 0)
				opt.mode = M_RETR;
			else if (strcmp(optarg, "idle") == 0)
				opt.mode = M_IDLE;
			else
				goto usage;
			break;
		case 'd': opt.duration = atof(optarg); break;
		case 'P': opt.pipeline = atoi(optarg); break;
		case 'T': opt.top_every = atoi(optarg); break;
		case 'v':
			if (strcmp(optarg, "exact") == 0)
				opt.verify = V_EXACT;
			else if (strcmp(optarg, "headers") == 0)
				opt.verify = V_HEADERS;
			else
				goto usage;
			break;
		case 'C': opt.count = strtoul(optarg, NULL, 10); break;
		case 's': opt.size = strtoul(optarg, NULL, 10); break;
		case 'S': opt.seed = strtoul(optarg, NULL, 10); break;
		case 'a': opt.sources = atoi(optarg); break;
		case 'k': opt.concurrency = atoi(optarg); break;
		case 'H': opt.hold = atof(optarg); break;
		case 't': opt.timeout = atof(optarg); break;
		case 'W': opt.maildir = optarg; break;
		case 'h': load_usage(); return 0;
		default: goto usage;
		}
	}
	if (opt.maildir != NULL)
		return load_write_maildir();
	if (opt.connect == NULL || opt.user == NULL || load_parse_addr(opt.connect) < 0 ||
	    opt.sessions < 1 || opt.pipeline < 1 || opt.pipeline > PIPE_MAX ||
	    opt.sources < 1 || opt.sources > 254 || opt.concurrency < 1 ||
	    opt.count < 1 || opt.duration <= 0)
		goto usage;
	if (opt.timeout <= 0)
		opt.timeout = (opt.mode == M_RETR ? opt.duration : opt.hold) + 120;

	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
	    rl.rlim_cur < (rlim_t)opt.sessions + 16)
		fprintf(stderr, "pop3load: warning: RLIMIT_NOFILE %lu is below "
		    "%d sessions\n", (unsigned long)rl.rlim_cur, opt.sessions);
	if (corpus_build(&g.corpus, (uint32_t)opt.count, opt.size,
	    (uint32_t)opt.seed) < 0 || (g.rbuf = malloc(RECV_CHUNK)) == NULL ||
	    (g.s = calloc((size_t)opt.sessions, sizeof(*g.s))) == NULL) {
		fprintf(stderr, "pop3load: out of memory\n");
		return 1;
	}
	for (int i = 0; i < opt.sessions; i++) {
		g.s[i].idx = i;
		g.s[i].fd = -1;
		/* Sessions start at different messages, as real readers do. */
		g.s[i].next_msg = (uint32_t)(i * 7 % (int)g.corpus.count) + 1;
	}
	g.loop = ev_default_loop(EVFLAG_AUTO);
	ev_timer_init(&g.poll, load_poll_cb, 0.01, 0.01);
	ev_timer_start(g.loop, &g.poll);
	if (opt.mode == M_IDLE) {
		ev_init(&g.tick, load_tick_cb);
		ev_signal_init(&g.usr1, load_release_cb, SIGUSR1);
		ev_signal_start(g.loop, &g.usr1);
		ev_io_init(&g.stdin_w, load_stdin_cb, 0, EV_READ);
		if (!isatty(0))
			ev_io_start(g.loop, &g.stdin_w);
	}
	ev_timer_init(&g.deadline, load_deadline_cb, opt.timeout, 0);
	ev_timer_start(g.loop, &g.deadline);
	load_launch();
	ev_run(g.loop, 0);
	load_report();
	return g.errors > 0 || g.failed > 0 ? 1 : 0;
usage:
	load_usage();
	return 2;
}
