/* filter.c: the daemon's filter client: one connection per filter service
 * carrying many requests, jobs walking the chain, fallback, replay, breaker. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "fp.h"
#include "filter.h"
#include "log.h"
#include "notice.h"
#include "proxy.h"
#include "quarantine.h"
#include "version.h"

/*
 * A filter connection:
 *
 *   DOWN --retry timer--> CONNECTING --connected--> HELLO --hello_ack--> READY
 *     ^                        |                      |                    |
 *     +---- failure: backoff with jitter, in-flight jobs back to the FIFO -+
 *
 * A job sits in exactly one place: the FIFO of the filter of its stage
 * (waiting for the connection, the window or output room), that filter's
 * in-flight list (request queued or sent), or the chain's done list (its
 * callback is due from the done timer). Every stage has its own deadline
 * timer; when it fires, or the filter fails the request, the fallback
 * policy decides. Jobs are never failed from inside filter_submit: results
 * go through the done list, whose timer runs on the next loop iteration.
 *
 * Request bodies are never copied: the output queue holds the encoded head
 * and a reference to the job's message. Before a job's message changes or
 * the job goes away, its segments are withdrawn (unstarted) or the rest of a
 * half-written frame is copied (at most one frame per connection is ever
 * half-written), so the frame stream stays intact.
 *
 * Circuit breaker: BREAKER_N failures (connect, handshake, timeout, lost
 * connection, protocol error) within BREAKER_T seconds open it; then every
 * job falls back at once for that filter, and the filter is probed
 * (reconnect, handshake, ping) until a pong or a verdict closes it again.
 */

#define FILTER_WINDOW		64		/* requests in flight we accept */
#define FILTER_OUT_LIMIT	(4u << 20)	/* queued octets before jobs wait */
#define BACKOFF_MIN		0.1
#define BACKOFF_MAX		5.0
#define BACKOFF_MISMATCH	30.0
#define BREAKER_N		5
#define BREAKER_T		30.0
#define PING_IDLE		30.0		/* ping an idle connection this often */
#define PONG_WAIT		10.0
#define HELLO_WAIT_MAX		5.0
#define REPLAY_MIN		0.05		/* deadline left worth a replay */
#define DOWN_GRACE		2.0		/* a restart may take this long */
#define IOV_MAX_USE		64

enum fstate { FS_DOWN, FS_CONNECTING, FS_HELLO, FS_READY };
enum jstate { J_NONE, J_QUEUED, J_INFLIGHT, J_DONE };

struct seg {
	struct seg *next;
	struct filter_job *job;	/* whose request this is; NULL: owned */
	const char *p;
	size_t len, off;
	char *own;		/* freed with the segment */
};

struct jq {
	struct filter_job *head, *tail;
};

struct filter {
	struct filter_chain *fc;
	int idx;
	const char *path;
	char label[64];		/* for log lines and the unfiltered mark */
	char name[FP_MAX_NAME + 1];	/* what the filter calls itself */
	enum fstate state;
	int fd;
	unsigned gen;		/* bumped on every close */
	ev_io rw, ww;
	ev_timer retry, watchdog, ping;
	int werr;		/* write failed; reported from the watcher */
	struct fp_reader rd;
	struct seg *out_head, *out_tail;
	size_t out_bytes;
	struct fp_hello hello;
	struct fp_params prm;
	int have_prm;
	uint64_t first_id;	/* ids sent on this connection start here */
	struct jq fifo, inflight;
	uint32_t ninflight;
	int draining;
	int attempts;		/* failures since the last sign of life */
	int logged_down;	/* a connect failure was logged at warn */
	ev_tstamp fails[BREAKER_N];
	int nfails;
	int breaker;		/* open: fall back at once, probe */
	ev_tstamp down_since;	/* unreachable since (0: up) */
	int mismatch;		/* version mismatch: retry slowly */
	uint64_t ping_id;
	int ping_out;
	ev_tstamp last_rx;
};

struct filter_chain {
	struct proxy *px;
	struct ev_loop *loop;
	const struct config *cfg;
	struct filter *f[CONFIG_MAX_FILTERS];
	int n;
	uint64_t next_id;
	uint32_t rnd;
	struct jq done;
	ev_timer done_timer;
	struct filter_job *all;	/* every live job, for chain_free */
	char hostname[128];
};

struct filter_job {
	struct filter_chain *fc;
	struct filter_job *qnext, *qprev;
	struct filter_job *anext, *aprev;
	enum jstate st;
	int stage;		/* index of the filter it is with */
	uint64_t id;		/* of its current request */
	unsigned wire_started:1, wire_done:1, kept_orig:1;
	int nsegs;		/* output segments referencing the job */
	ev_timer timer;		/* the stage deadline */
	ev_tstamp t0, stage_t0;
	struct buf msg;		/* the message as it stands */
	struct buf orig;	/* the server's original, once a stage changed it */
	size_t size_in;
	struct filter_facts facts;
	char *strs;		/* the facts' strings */
	filter_done_cb cb;
	void *arg;
	enum filter_outcome outcome;
	char text[256];		/* TEMPFAIL: for the client's -ERR */
	char log[768];		/* per stage: name:verdict(...) */
	size_t loglen;
};

static void f_connect(struct filter *);
static void f_close(struct filter *, const char *why, int failure);
static void f_pump(struct filter *);
static void f_flush(struct filter *);
static void f_failure(struct filter *, const char *why);
static void job_enter(struct filter_job *, int stage);
static void job_finish(struct filter_job *);

/* --- small helpers ---------------------------------------------------------- */

static void
jq_push(struct jq *q, struct filter_job *j)
{
	j->qnext = NULL;
	j->qprev = q->tail;
	if (q->tail)
		q->tail->qnext = j;
	else
		q->head = j;
	q->tail = j;
}

static void
jq_remove(struct jq *q, struct filter_job *j)
{
	if (j->qprev)
		j->qprev->qnext = j->qnext;
	else
		q->head = j->qnext;
	if (j->qnext)
		j->qnext->qprev = j->qprev;
	else
		q->tail = j->qprev;
	j->qnext = j->qprev = NULL;
}

static struct filter_job *
jq_find(struct jq *q, uint64_t id)
{
	for (struct filter_job *j = q->head; j; j = j->qnext)
		if (j->id == id)
			return j;
	return NULL;
}

__attribute__((format(printf, 2, 3)))
static void
job_note(struct filter_job *j, const char *fmt, ...)
{
	va_list ap;

	if (j->loglen + 2 >= sizeof(j->log))
		return;
	if (j->loglen > 0)
		j->log[j->loglen++] = ' ';
	va_start(ap, fmt);
	int n = vsnprintf(j->log + j->loglen, sizeof(j->log) - j->loglen, fmt, ap);
	va_end(ap);
	if (n > 0)
		j->loglen += (size_t)n < sizeof(j->log) - j->loglen ?
		    (size_t)n : sizeof(j->log) - j->loglen - 1;
}

/* A filter-supplied string made fit for a log line or a header value. */
static void
clean(char *out, size_t outlen, struct fp_str s)
{
	notice_sanitize(out, outlen, s.ptr ? s.ptr : "", s.ptr ? s.len : 0);
}

static double
jitter(struct filter_chain *fc, double d)
{
	/* xorshift32: only has to decorrelate reconnecting proxies. */
	fc->rnd ^= fc->rnd << 13;
	fc->rnd ^= fc->rnd >> 17;
	fc->rnd ^= fc->rnd << 5;
	return d * (0.5 + 0.5 * (double)(fc->rnd % 10000) / 10000.0);
}

static struct filter *
job_filter(const struct filter_job *j)
{
	return j->fc->f[j->stage];
}

/* --- the output queue ------------------------------------------------------- */

static struct seg *
seg_add(struct filter *f, struct filter_job *job, const char *p, size_t len,
    char *own)
{
	struct seg *s = calloc(1, sizeof(*s));

	if (s == NULL)
		return NULL;
	s->job = job;
	s->p = p;
	s->len = len;
	s->own = own;
	if (f->out_tail)
		f->out_tail->next = s;
	else
		f->out_head = s;
	f->out_tail = s;
	f->out_bytes += len;
	if (job)
		job->nsegs++;
	return s;
}

static void
seg_free(struct seg *s)
{
	free(s->own);
	free(s);
}

/* Queue an owned copy of an encoded control frame. */
static int
f_send_buf(struct filter *f, struct fp_buf *b)
{
	if (seg_add(f, NULL, b->data, b->len, b->data) == NULL) {
		fp_buf_free(b);
		return -1;
	}
	b->data = NULL;
	b->len = b->cap = 0;
	return 0;
}

static void
f_queue_free(struct filter *f)
{
	struct seg *s, *n;

	for (s = f->out_head; s; s = n) {
		n = s->next;
		if (s->job)
			s->job->nsegs--;
		seg_free(s);
	}
	f->out_head = f->out_tail = NULL;
	f->out_bytes = 0;
}

/* Ping: a pong must come within PONG_WAIT or the connection is dead. */
static void
f_ping(struct filter *f)
{
	struct fp_buf b = { 0 };

	if (f->state != FS_READY || f->ping_out)
		return;
	f->ping_id++;
	if (fp_encode_ping(&b, f->ping_id) < 0 || f_send_buf(f, &b) < 0)
		return;
	f->ping_out = 1;
	ev_timer_set(&f->watchdog, PONG_WAIT, 0);
	ev_timer_start(f->fc->loop, &f->watchdog);
	f_flush(f);
}

/* An error frame to the filter; has_id: about that request only. */
static void
f_send_error(struct filter *f, int has_id, uint64_t id, const char *code,
    const char *message)
{
	struct fp_buf b = { 0 };
	struct fp_error e = { .has_id = has_id != 0, .id = id,
	    .code = fp_str_c(code), .message = fp_str_c(message) };

	if (fp_encode_error(&b, &e) == 0 && f_send_buf(f, &b) == 0)
		f_flush(f);
}

/*
 * Take a job's request out of the output queue before its message changes or
 * it goes away. Unstarted frames are dropped; the rest of a half-written
 * frame is copied, so that the stream of frames stays whole.
 */
static void
f_withdraw(struct filter *f, struct filter_job *j)
{
	struct seg **pp = &f->out_head, *s;

	while (j->nsegs > 0 && (s = *pp) != NULL) {
		if (s->job != j) {
			pp = &s->next;
			continue;
		}
		j->nsegs--;
		s->job = NULL;
		if (!j->wire_started) {
			*pp = s->next;
			f->out_bytes -= s->len - s->off;
			seg_free(s);
			continue;
		}
		if (s->own == NULL) {
			size_t rest = s->len - s->off;
			char *copy = malloc(rest ? rest : 1);
			if (copy == NULL) {
				/* Cannot keep the frame whole: drop the
				 * connection instead (the other requests are
				 * replayed). */
				f_close(f, "out of memory", 0);
				return;
			}
			memcpy(copy, s->p + s->off, rest);
			s->own = copy;
			s->p = copy;
			s->len = rest;
			s->off = 0;
		}
		pp = &s->next;
	}
	f->out_tail = NULL;
	for (s = f->out_head; s; s = s->next)
		f->out_tail = s;
}

static void
f_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct filter *f = w->data;

	if (f->werr) {
		char why[128];
		snprintf(why, sizeof(why), "write: %s", strerror(f->werr));
		f_close(f, why, 1);
		return;
	}
	if (f->state == FS_CONNECTING) {
		int err = 0;
		socklen_t l = sizeof(err);
		ev_io_stop(loop, w);
		if (getsockopt(f->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
			err = errno;
		if (err != 0) {
			char why[160];
			snprintf(why, sizeof(why), "connect: %s", strerror(err));
			f_close(f, why, 1);
			return;
		}
		f->state = FS_HELLO;
		ev_io_start(loop, &f->rw);
	}
	f_flush(f);
	if (f->state == FS_READY)
		f_pump(f);
}

static void
f_flush(struct filter *f)
{
	struct iovec iov[IOV_MAX_USE];

	if (f->fd < 0 || f->state == FS_CONNECTING || f->werr)
		return;
	while (f->out_head) {
		int n = 0;
		for (struct seg *s = f->out_head; s && n < IOV_MAX_USE; s = s->next) {
			iov[n].iov_base = (void *)(s->p + s->off);
			iov[n].iov_len = s->len - s->off;
			n++;
		}
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t w = sendmsg(f->fd, &mh, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			/* Reported from the watcher: the caller may be deep
			 * inside a job's path and must not see the close. */
			f->werr = errno;
			ev_feed_event(f->fc->loop, &f->ww, EV_WRITE);
			return;
		}
		size_t left = (size_t)w;
		f->out_bytes -= left;
		while (left > 0 || (f->out_head && f->out_head->off == f->out_head->len)) {
			struct seg *s = f->out_head;
			size_t take = s->len - s->off;
			if (take > left)
				take = left;
			s->off += take;
			left -= take;
			if (s->job)
				s->job->wire_started = 1;
			if (s->off < s->len)
				break;
			f->out_head = s->next;
			if (f->out_head == NULL)
				f->out_tail = NULL;
			if (s->job) {
				if (--s->job->nsegs == 0)
					s->job->wire_done = 1;
			}
			seg_free(s);
		}
	}
	if (f->out_head)
		ev_io_start(f->fc->loop, &f->ww);
	else
		ev_io_stop(f->fc->loop, &f->ww);
}

/* --- jobs -------------------------------------------------------------------- */

/* Take a job out of its filter's FIFO or in-flight list. An abandoned
 * request is cancelled on the wire (the filter may stop working on it). */
static void
job_detach(struct filter_job *j, int send_cancel)
{
	struct filter *f;

	if (j->st != J_QUEUED && j->st != J_INFLIGHT)
		return;
	f = job_filter(j);
	ev_timer_stop(j->fc->loop, &j->timer);
	if (j->st == J_QUEUED) {
		jq_remove(&f->fifo, j);
	} else {
		jq_remove(&f->inflight, j);
		f->ninflight--;
		int started = j->wire_started;
		f_withdraw(f, j);
		if (send_cancel && started && f->state == FS_READY) {
			struct fp_buf b = { 0 };
			if (fp_encode_cancel(&b, j->id) == 0)
				f_send_buf(f, &b);
			f_flush(f);
		}
	}
	j->st = J_NONE;
	j->wire_started = j->wire_done = 0;
}

static void
job_tempfail(struct filter_job *j, const char *fmt, const char *arg)
{
	snprintf(j->text, sizeof(j->text), fmt, arg);
	j->outcome = FILTER_TEMPFAIL;
	job_finish(j);
}

/* Replace the job's message, keeping the server's original when a later
 * stage could still reject it and the proxy must quarantine it then. */
static void
job_set_msg(struct filter_job *j, char *data, size_t len, size_t cap)
{
	if (!j->kept_orig && j->fc->cfg->quarantine != NULL &&
	    j->stage + 1 < j->fc->n) {
		j->orig = j->msg;
		j->kept_orig = 1;
	} else {
		buf_free(&j->msg);
	}
	j->msg.data = data;
	j->msg.off = 0;
	j->msg.len = len;
	j->msg.cap = cap;
}

/* The fallback for one stage: the policy decides, the chain goes on. */
static void
job_fallback(struct filter_job *j, const char *why)
{
	struct filter_chain *fc = j->fc;
	struct filter *f = job_filter(j);

	job_detach(j, 1);
	job_note(j, "%s:failed(%s)", f->label, why);
	if (fc->cfg->on_failure_tempfail) {
		snprintf(j->text, sizeof(j->text), "mail filter unavailable, "
		    "try again later");
		j->outcome = FILTER_TEMPFAIL;
		job_finish(j);
		return;
	}
	if (fc->cfg->mark_unfiltered) {
		char hdr[256];
		int n = snprintf(hdr, sizeof(hdr), "X-POP3Proxy-Unfiltered: %s: %s\r\n",
		    f->label, why);
		if (n > 0 && (size_t)n < sizeof(hdr)) {
			size_t len = (size_t)n + j->msg.len;
			char *p = malloc(len ? len : 1);
			if (p != NULL) {
				memcpy(p, hdr, (size_t)n);
				memcpy(p + n, buf_ptr(&j->msg), j->msg.len);
				/* the mark is not a change worth quarantining */
				buf_free(&j->msg);
				j->msg.data = p;
				j->msg.off = 0;
				j->msg.len = j->msg.cap = len;
			}
		}
	}
	job_enter(j, j->stage + 1);
}

static void
job_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct filter_job *j = w->data;
	struct filter *f = job_filter(j);

	job_fallback(j, "timeout");
	f_failure(f, "timeout");
	f_pump(f);
}

/* Does filter f take this job at all? NULL: yes; else why not. */
static const char *
f_skips(const struct filter *f, const struct filter_job *j)
{
	uint32_t cmd = strcmp(j->facts.command, "TOP") == 0 ? FP_CAP_TOP : FP_CAP_RETR;

	if (!f->have_prm)
		return NULL;
	if (!(f->prm.commands & cmd))
		return "command";
	if (f->prm.max_message_size && j->msg.len > f->prm.max_message_size)
		return "size";
	/* The head is small; the body must fit in the filter's max_frame. */
	if (j->msg.len + 4096 > f->prm.filter_max_frame)
		return "frame";
	return NULL;
}

static void
job_enter(struct filter_job *j, int stage)
{
	struct filter_chain *fc = j->fc;

	for (; stage < fc->n; stage++) {
		struct filter *f = fc->f[stage];
		const char *skip = f_skips(f, j);
		j->stage = stage;
		if (skip != NULL) {
			job_note(j, "%s:skipped(%s)", f->label, skip);
			continue;
		}
		if (f->breaker || f->mismatch) {
			j->st = J_NONE;
			job_fallback(j, f->mismatch ? "version mismatch" :
			    "circuit open");
			return;
		}
		j->stage_t0 = ev_now(fc->loop);
		ev_timer_set(&j->timer, fc->cfg->filter_timeout, 0);
		ev_timer_start(fc->loop, &j->timer);
		j->st = J_QUEUED;
		jq_push(&f->fifo, j);
		f_pump(f);
		return;
	}
	j->stage = fc->n;
	j->outcome = FILTER_DELIVER;
	job_finish(j);
}

static int
f_send_request(struct filter *f, struct filter_job *j)
{
	struct filter_chain *fc = f->fc;
	const struct filter_facts *ff = &j->facts;
	struct fp_buf b = { 0 };
	ev_tstamp left = j->stage_t0 + fc->cfg->filter_timeout - ev_now(fc->loop);
	struct fp_request rq = {
		.id = ++fc->next_id,
		.deadline_ms = left <= 0.001 ? 1 : (uint32_t)(left * 1000),
		.session = {
			.id = fp_str_c(ff->sid),
			.client = fp_str_c(ff->client),
			.user = fp_str_c(ff->user),
			.upstream_host = fp_str_c(ff->upstream_host),
			.upstream_port = ff->upstream_port,
			.tls_client = ff->tls_client != 0,
			.tls_upstream = ff->tls_upstream != 0,
		},
		.message = {
			.number = ff->msgno,
			.size = ff->size,
			.uidl = fp_str_c(ff->uidl),
			.command = strcmp(ff->command, "TOP") == 0 ? FP_CMD_TOP :
			    FP_CMD_RETR,
			.top_lines = ff->top_lines,
		},
	};

	if (fp_encode_request_head(&b, &rq, j->msg.len) < 0)
		return -1;
	j->id = rq.id;
	j->wire_started = j->wire_done = 0;
	if (seg_add(f, j, b.data, b.len, b.data) == NULL) {
		fp_buf_free(&b);
		return -1;
	}
	if (j->msg.len > 0 &&
	    seg_add(f, j, buf_ptr(&j->msg), j->msg.len, NULL) == NULL) {
		f_withdraw(f, j);
		return -1;
	}
	j->st = J_INFLIGHT;
	jq_push(&f->inflight, j);
	f->ninflight++;
	return 0;
}

static void
f_pump(struct filter *f)
{
	struct filter_job *j;
	int sent = 0;

	while (f->state == FS_READY && !f->draining && !f->breaker &&
	    f->ninflight < f->prm.window && f->out_bytes < FILTER_OUT_LIMIT &&
	    (j = f->fifo.head) != NULL) {
		jq_remove(&f->fifo, j);
		j->st = J_NONE;
		const char *skip = f_skips(f, j);
		if (skip != NULL) {
			ev_timer_stop(f->fc->loop, &j->timer);
			job_note(j, "%s:skipped(%s)", f->label, skip);
			job_enter(j, j->stage + 1);
			continue;
		}
		if (f_send_request(f, j) < 0) {
			j->st = J_QUEUED;	/* job_fallback detaches it */
			jq_push(&f->fifo, j);
			job_fallback(j, "cannot encode the request");
			continue;
		}
		sent++;
	}
	if (sent)
		f_flush(f);
}

/* --- results ----------------------------------------------------------------- */

static void
job_free(struct filter_job *j)
{
	struct filter_chain *fc = j->fc;

	ev_timer_stop(fc->loop, &j->timer);
	if (j->aprev)
		j->aprev->anext = j->anext;
	else
		fc->all = j->anext;
	if (j->anext)
		j->anext->aprev = j->aprev;
	buf_free(&j->msg);
	buf_free(&j->orig);
	free(j->strs);
	free(j);
}

static void
job_finish(struct filter_job *j)
{
	struct filter_chain *fc = j->fc;

	job_detach(j, 1);
	buf_free(&j->orig);
	j->st = J_DONE;
	jq_push(&fc->done, j);
	if (!ev_is_active(&fc->done_timer)) {
		ev_timer_set(&fc->done_timer, 0, 0);
		ev_timer_start(fc->loop, &fc->done_timer);
	}
}

static void
done_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct filter_chain *fc = w->data;
	struct filter_job *j;

	while ((j = fc->done.head) != NULL) {
		jq_remove(&fc->done, j);
		j->st = J_NONE;
		struct filter_result r = { .outcome = j->outcome };
		char text[sizeof(j->text)];
		double ms = (ev_now(loop) - j->t0) * 1000.0;
		if (j->outcome == FILTER_TEMPFAIL) {
			memcpy(text, j->text, sizeof(text));
			r.text = text;
			log_info(j->facts.sid, "filter: msg %u %s result=tempfail "
			    "time=%.0fms size=%zu chain=[%s] why=\"%s\"",
			    j->facts.msgno, j->facts.command, ms, j->size_in,
			    j->log, j->text);
		} else {
			r.msg = j->msg;
			memset(&j->msg, 0, sizeof(j->msg));
			log_info(j->facts.sid, "filter: msg %u %s result=deliver "
			    "time=%.0fms size=%zu->%zu chain=[%s]",
			    j->facts.msgno, j->facts.command, ms, j->size_in,
			    r.msg.len, j->log);
		}
		filter_done_cb cb = j->cb;
		void *arg = j->arg;
		job_free(j);
		cb(arg, &r);
	}
}

/* A replacement as the client will get it (PROTOCOL.md 6.4): bare LF made
 * CRLF, a final CRLF supplied. Returns a malloc'd copy. */
static char *
crlf_copy(const char *p, size_t len, size_t *outlen)
{
	size_t extra = 0, o = 0;

	for (size_t i = 0; i < len; i++)
		if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
			extra++;
	if (len > 0 && p[len - 1] != '\n')
		extra += 2;
	char *out = malloc(len + extra + 1);
	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
			out[o++] = '\r';
		out[o++] = p[i];
	}
	if (len > 0 && p[len - 1] != '\n') {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	*outlen = o;
	return out;
}

/* For TOP: keep the header block, the empty line and the first n body lines
 * of a message the proxy made up or a filter replaced (PROTOCOL.md 6.4). */
static void
top_cut(struct buf *b, uint32_t n)
{
	const char *p = buf_ptr(b);
	size_t i = 0;
	int in_body = 0;

	while (i < b->len) {
		const char *lf = memchr(p + i, '\n', b->len - i);
		size_t end = lf ? (size_t)(lf - p) + 1 : b->len;
		if (in_body) {
			if (n == 0)
				break;
			n--;
		} else if (end - i <= 2 && (p[i] == '\n' || p[i] == '\r')) {
			in_body = 1;
		}
		i = end;
	}
	b->len = i;
}

/* A reject: the notice replaces the message, once the original is safe. */
static void
job_reject(struct filter_job *j, struct filter *f, const struct fp_verdict *v,
    const char *reason)
{
	struct filter_chain *fc = j->fc;
	const struct buf *orig = j->kept_orig ? &j->orig : &j->msg;
	char kept[4300] = "", path[4096], err[256], notice[FP_MAX_TEXT + 1];
	struct buf out = { 0 };

	if (v->quarantine_id.ptr != NULL) {
		char qid[FP_MAX_SHORT + 1];
		clean(qid, sizeof(qid), v->quarantine_id);
		snprintf(kept, sizeof(kept), "by the mail filter \"%s\" under the "
		    "reference %s", f->name[0] ? f->name : f->label, qid);
		log_notice(j->facts.sid, "filter %s: msg %u: original kept by the "
		    "filter as %s", f->label, j->facts.msgno, qid);
	} else if (fc->cfg->quarantine != NULL) {
		if (quarantine_write(fc->cfg->quarantine, j->facts.sid,
		    j->facts.msgno, buf_ptr(orig), orig->len, path, sizeof(path),
		    err, sizeof(err)) < 0) {
			log_error(j->facts.sid, "filter: msg %u: cannot quarantine "
			    "the rejected message: %s", j->facts.msgno, err);
			job_tempfail(j, "%s", "rejected message cannot be kept, "
			    "try again later");
			return;
		}
		snprintf(kept, sizeof(kept), "in the quarantine directory as %s", path);
		log_notice(j->facts.sid, "filter: msg %u: original (%zu octets) "
		    "quarantined as %s", j->facts.msgno, orig->len, path);
	} else {
		/* Nobody keeps it: serving the notice would lose it once the
		 * client deletes the message. */
		log_warn(j->facts.sid, "filter %s: msg %u rejected, but without "
		    "--quarantine or a quarantine_id nobody keeps the original: "
		    "temporary failure instead", f->label, j->facts.msgno);
		job_tempfail(j, "%s", "message rejected by the mail filter but it "
		    "cannot be kept, try again later");
		return;
	}
	clean(notice, sizeof(notice), (struct fp_str){ NULL, 0 });
	if (v->notice.ptr) {
		/* Keep the filter's line breaks in the notice text: only NULs
		 * go (notice_build folds and normalises the rest). */
		size_t n = v->notice.len < FP_MAX_TEXT ? v->notice.len : FP_MAX_TEXT;
		memcpy(notice, v->notice.ptr, n);
		notice[n] = '\0';
	}
	struct notice_info ni = {
		.filter = f->name[0] ? f->name : f->label,
		.reason = reason,
		.text = notice,
		.user = j->facts.user,
		.upstream_host = j->facts.upstream_host,
		.sid = j->facts.sid,
		.msgno = j->facts.msgno,
		.uidl = j->facts.uidl,
		.size = orig->len,
		.kept = kept,
		.hostname = fc->hostname,
		.now = time(NULL),
	};
	if (notice_build(&out, &ni, buf_ptr(orig), orig->len) < 0) {
		buf_free(&out);
		job_tempfail(j, "%s", "out of memory");
		return;
	}
	buf_free(&j->orig);
	j->kept_orig = 0;
	buf_free(&j->msg);
	j->msg = out;
	if (strcmp(j->facts.command, "TOP") == 0)
		top_cut(&j->msg, j->facts.top_lines);
	j->outcome = FILTER_DELIVER;
	job_finish(j);
}

static void
f_verdict(struct filter *f, const struct fp_verdict *v)
{
	struct filter_job *j = jq_find(&f->inflight, v->id);
	struct fp_err err;
	char reason[200], tags[300] = "", score[32] = "";

	if (j == NULL) {
		if (v->id >= f->first_id && v->id <= f->fc->next_id) {
			log_debug(NULL, "filter %s: late verdict for request %llu "
			    "discarded", f->label, (unsigned long long)v->id);
		} else {
			log_warn(NULL, "filter %s: verdict for unknown request %llu "
			    "ignored", f->label, (unsigned long long)v->id);
			f_send_error(f, 1, v->id, FP_E_UNKNOWN_ID, "no such request");
		}
		return;
	}
	/* A sign of life: the filter works. */
	f->attempts = 0;
	f->down_since = 0;
	if (f->breaker) {
		f->breaker = 0;
		f->nfails = 0;
		log_notice(NULL, "filter %s: answering again, circuit closed", f->label);
	}
	job_detach(j, 0);
	clean(reason, sizeof(reason), v->reason);
	for (size_t i = 0; i < v->ntags; i++) {
		char t[64];
		clean(t, sizeof(t), v->tags[i]);
		size_t l = strlen(tags);
		snprintf(tags + l, sizeof(tags) - l, "%s%s", i ? "," : "", t);
	}
	if (v->has_score)
		snprintf(score, sizeof(score), " score=%.2f", v->score);
	int ms = (int)((ev_now(f->fc->loop) - j->stage_t0) * 1000);
	if (fp_verdict_check(v, f->prm.actions, &err) < 0) {
		log_warn(j->facts.sid, "filter %s: %s", f->label, err.message);
		f_send_error(f, 1, v->id, err.code, err.message);
		j->st = J_NONE;
		job_fallback(j, "verdict not granted");
		return;
	}
	switch (v->action) {
	case FP_ACCEPT:
		if (v->nedits > 0) {
			struct fp_buf out = { 0 };
			if (fp_apply_edits(buf_ptr(&j->msg), j->msg.len, v->edits,
			    v->nedits, &out) < 0) {
				fp_buf_free(&out);
				job_fallback(j, "invalid header edits");
				return;
			}
			job_set_msg(j, out.data, out.len, out.cap);
		}
		job_note(j, "%s:accept(edits=%zu,%dms%s%s%s%s%s)", f->label,
		    v->nedits, ms, score, reason[0] ? ",reason=" : "", reason,
		    tags[0] ? ",tags=" : "", tags);
		job_enter(j, j->stage + 1);
		return;
	case FP_REPLACE: {
		size_t len;
		char *p = crlf_copy(v->body.ptr, v->body.len, &len);
		if (p == NULL) {
			job_fallback(j, "out of memory");
			return;
		}
		job_set_msg(j, p, len, len);
		if (strcmp(j->facts.command, "TOP") == 0)
			top_cut(&j->msg, j->facts.top_lines);
		job_note(j, "%s:replace(%zu,%dms%s%s%s%s%s)", f->label, v->body.len,
		    ms, score, reason[0] ? ",reason=" : "", reason,
		    tags[0] ? ",tags=" : "", tags);
		job_enter(j, j->stage + 1);
		return;
	}
	case FP_REJECT:
		job_note(j, "%s:reject(%dms%s%s%s%s%s)", f->label, ms, score,
		    reason[0] ? ",reason=" : "", reason, tags[0] ? ",tags=" : "", tags);
		job_reject(j, f, v, reason[0] ? reason : NULL);
		return;
	case FP_TEMPFAIL:
		job_note(j, "%s:tempfail(%dms%s%s%s%s%s)", f->label, ms, score,
		    reason[0] ? ",reason=" : "", reason, tags[0] ? ",tags=" : "", tags);
		job_tempfail(j, "message held back by the mail filter%s",
		    reason[0] ? "" : ", try again later");
		if (reason[0]) {
			size_t l = strlen(j->text);
			snprintf(j->text + l, sizeof(j->text) - l, ": %s", reason);
		}
		return;
	}
}

/* --- connection life --------------------------------------------------------- */

static double
f_grace(const struct filter *f)
{
	double half = f->fc->cfg->filter_timeout / 2;

	return half < DOWN_GRACE ? half : DOWN_GRACE;
}

static void
f_failure(struct filter *f, const char *why)
{
	ev_tstamp now = ev_now(f->fc->loop);

	memmove(f->fails + 1, f->fails, sizeof(f->fails[0]) * (BREAKER_N - 1));
	f->fails[0] = now;
	if (f->nfails < BREAKER_N)
		f->nfails++;
	if (f->breaker || f->nfails < BREAKER_N ||
	    now - f->fails[BREAKER_N - 1] > BREAKER_T)
		return;
	/* Quick reconnect failures while a filter restarts are not a broken
	 * filter: waiting jobs keep their deadlines for a while. */
	if (f->down_since > 0 && now - f->down_since < f_grace(f))
		return;
	f->breaker = 1;
	log_warn(NULL, "filter %s: %d failures in %.0f s (last: %s): circuit open, "
	    "falling back at once until it answers again", f->label, BREAKER_N,
	    BREAKER_T, why);
	struct filter_job *j;
	while ((j = f->fifo.head) != NULL)
		job_fallback(j, "circuit open");
	/* Probe a live connection at once; a dead one is probed by reconnects. */
	f_ping(f);
}

static void
f_schedule(struct filter *f)
{
	double d = BACKOFF_MIN;

	for (int i = 1; i < f->attempts && d < BACKOFF_MAX; i++)
		d *= 2;
	if (d > BACKOFF_MAX)
		d = BACKOFF_MAX;
	if (f->mismatch)
		d = BACKOFF_MISMATCH;
	d = jitter(f->fc, d);
	/* Within the restart grace, try again when it ends at the latest, so
	 * that the breaker decides then rather than a backoff later. */
	ev_tstamp now = ev_now(f->fc->loop), end = f->down_since + f_grace(f);
	if (!f->breaker && !f->mismatch && f->down_since > 0 && now < end &&
	    d > end - now + 0.01)
		d = end - now + 0.01;
	ev_timer_set(&f->retry, d, 0);
	ev_timer_start(f->fc->loop, &f->retry);
	log_debug(NULL, "filter %s: reconnecting in %.2f s", f->label, d);
}

/*
 * The connection is gone (or given up). In-flight requests go back to the
 * front of the FIFO, in their order, if their deadline leaves room for a
 * replay; the others fall back now. failure: counts for backoff and breaker.
 */
static void
f_close(struct filter *f, const char *why, int failure)
{
	struct filter_chain *fc = f->fc;
	struct jq replay = { 0 };
	struct filter_job *j;

	if (f->fd < 0 && f->state == FS_DOWN)
		return;
	if (f->state == FS_READY)
		log_notice(NULL, "filter %s: connection closed: %s (%u in flight)",
		    f->label, why, f->ninflight);
	else if (!f->logged_down || log_enabled(LOG_LVL_DEBUG))
		log_msg(f->logged_down ? LOG_LVL_DEBUG : LOG_LVL_WARN, NULL,
		    "filter %s: %s", f->label, why);
	f->logged_down = 1;
	ev_io_stop(fc->loop, &f->rw);
	ev_io_stop(fc->loop, &f->ww);
	ev_timer_stop(fc->loop, &f->watchdog);
	ev_timer_stop(fc->loop, &f->ping);
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	f->gen++;
	f->state = FS_DOWN;
	f->werr = 0;
	f->ping_out = 0;
	f->draining = 0;
	f_queue_free(f);
	fp_reader_free(&f->rd);
	/* Every byte of the old stream is gone: nothing references the jobs. */
	while ((j = f->inflight.head) != NULL) {
		jq_remove(&f->inflight, j);
		f->ninflight--;
		j->st = J_NONE;
		j->wire_started = j->wire_done = 0;
		jq_push(&replay, j);
	}
	if (f->down_since == 0)
		f->down_since = ev_now(fc->loop);
	if (failure) {
		f->attempts++;
		f_failure(f, why);
	}
	/* Replayed requests go before the ones that never left. */
	if (replay.head) {
		replay.tail->qnext = f->fifo.head;
		if (f->fifo.head)
			f->fifo.head->qprev = replay.tail;
		else
			f->fifo.tail = replay.tail;
		f->fifo.head = replay.head;
		for (j = replay.head; j && j != replay.tail->qnext; j = j->qnext)
			j->st = J_QUEUED;
	}
	ev_tstamp now = ev_now(fc->loop);
	for (j = f->fifo.head; j; ) {
		struct filter_job *next = j->qnext;
		if (f->breaker ||
		    j->stage_t0 + fc->cfg->filter_timeout - now < REPLAY_MIN)
			job_fallback(j, f->breaker ? "circuit open" :
			    "connection lost");
		j = next;
	}
	f_schedule(f);
}

static void
f_watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct filter *f = w->data;

	if (f->state == FS_READY && f->draining)
		f_close(f, "drained but not closed by the filter", 0);
	else if (f->state == FS_READY)
		f_close(f, "no pong: connection dead", 1);
	else
		f_close(f, "no hello_ack in time", 1);
}

static void
f_ping_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct filter *f = w->data;

	/* Only an idle connection is pinged: while requests are in flight
	 * their deadlines watch the filter, and a busy single-threaded filter
	 * may answer a ping late without being dead. */
	if (f->ninflight == 0 && ev_now(loop) - f->last_rx >= PING_IDLE * 0.9)
		f_ping(f);
}

static void
f_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	f_connect(w->data);
}

static const char *
caps_text(uint32_t c, char *out, size_t len)
{
	static const char *const names[] = { "retr", "top", "edit_headers",
	    "replace", "reject", "tempfail", "cancel" };
	size_t o = 0;

	out[0] = '\0';
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (c & (1u << i))
			o += (size_t)snprintf(out + o, len - o, "%s%s", o ? "," : "",
			    names[i]);
	if (o == 0)
		snprintf(out, len, "none");
	return out;
}

static void
f_hello_ack(struct filter *f, const struct fp_hello_ack *a)
{
	struct fp_err err;
	char cmds[64], acts[96];

	if (fp_negotiate(&f->hello, a, &f->prm, &err) < 0) {
		char why[256];
		if (strcmp(err.code, FP_E_VERSION) == 0) {
			log_error(NULL, "filter %s: protocol version mismatch: we "
			    "speak version %u, the filter chose %u; every message "
			    "falls back until it is upgraded", f->label,
			    FP_VERSION, a->version);
			f->mismatch = 1;
		}
		f_send_error(f, 0, 0, err.code, err.message);
		snprintf(why, sizeof(why), "handshake failed: %s", err.message);
		f_close(f, why, 1);
		return;
	}
	if (f->prm.window > FILTER_WINDOW)
		f->prm.window = FILTER_WINDOW;
	f->have_prm = 1;
	f->mismatch = 0;
	clean(f->name, sizeof(f->name), a->filter);
	f->state = FS_READY;
	f->logged_down = 0;
	f->first_id = f->fc->next_id + 1;
	ev_timer_stop(f->fc->loop, &f->watchdog);
	ev_timer_again(f->fc->loop, &f->ping);
	log_info(NULL, "filter %s: connected to \"%s\": version %u, window %u, "
	    "commands %s, actions %s, max message %llu", f->label, f->name,
	    f->prm.version, f->prm.window, caps_text(f->prm.commands, cmds,
	    sizeof(cmds)), caps_text(f->prm.actions, acts, sizeof(acts)),
	    (unsigned long long)f->prm.max_message_size);
	if (f->breaker) {
		/* Half open: the filter must show it answers first. */
		f_ping(f);
		return;
	}
	f_pump(f);
}

static void
f_message(struct filter *f, const struct fp_msg *m)
{
	struct fp_buf b = { 0 };
	char text[200], code[64];

	if (f->state == FS_HELLO) {
		if (m->type == FP_MSG_HELLO_ACK) {
			f_hello_ack(f, &m->hello_ack);
			return;
		}
		if (m->type == FP_MSG_ERROR) {
			clean(code, sizeof(code), m->error.code);
			clean(text, sizeof(text), m->error.message);
			if (fp_str_eq(m->error.code, FP_E_VERSION)) {
				log_error(NULL, "filter %s: refused our protocol "
				    "version %u: %s", f->label, FP_VERSION, text);
				f->mismatch = 1;
			}
			char why[300];
			snprintf(why, sizeof(why), "handshake refused: %s: %s",
			    code, text);
			f_close(f, why, 1);
			return;
		}
		f_close(f, "handshake: expected hello_ack", 1);
		return;
	}
	switch (m->type) {
	case FP_MSG_VERDICT:
		f_verdict(f, &m->verdict);
		return;
	case FP_MSG_ERROR: {
		clean(code, sizeof(code), m->error.code);
		clean(text, sizeof(text), m->error.message);
		struct filter_job *j = m->error.has_id ?
		    jq_find(&f->inflight, m->error.id) : NULL;
		if (j != NULL) {
			char why[300];
			log_warn(j->facts.sid, "filter %s: error for msg %u: %s: %s",
			    f->label, j->facts.msgno, code, text);
			snprintf(why, sizeof(why), "filter error %s", code);
			job_fallback(j, why);
		} else {
			log_warn(NULL, "filter %s: error%s: %s: %s", f->label,
			    m->error.has_id ? " for an unknown request" : "",
			    code, text);
		}
		return;
	}
	case FP_MSG_PING:
		if (fp_encode_pong(&b, m->ping.id) == 0 && f_send_buf(f, &b) == 0)
			f_flush(f);
		return;
	case FP_MSG_PONG:
		if (f->ping_out && m->pong.id == f->ping_id) {
			f->ping_out = 0;
			f->attempts = 0;
			f->down_since = 0;
			ev_timer_stop(f->fc->loop, &f->watchdog);
			if (f->breaker) {
				f->breaker = 0;
				f->nfails = 0;
				log_notice(NULL, "filter %s: answering again, "
				    "circuit closed", f->label);
				f_pump(f);
			}
		}
		return;
	case FP_MSG_DRAIN:
		clean(text, sizeof(text), m->drain.reason);
		log_notice(NULL, "filter %s: draining (%s): no new requests, "
		    "%u in flight", f->label, text[0] ? text : "no reason given",
		    f->ninflight);
		f->draining = 1;
		/* If it never closes, we close: the FIFO must not wait on a
		 * filter that takes no work. */
		ev_timer_set(&f->watchdog, f->fc->cfg->filter_timeout + 1, 0);
		ev_timer_start(f->fc->loop, &f->watchdog);
		return;
	default:
		log_warn(NULL, "filter %s: unexpected %s ignored", f->label,
		    fp_msg_type_name(m->type));
		return;
	}
}

static void
f_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct filter *f = w->data;
	size_t avail;
	char *p = fp_reader_space(&f->rd, &avail);

	if (p == NULL) {
		f_close(f, "out of memory", 0);
		return;
	}
	ssize_t n = recv(f->fd, p, avail, 0);
	if (n < 0) {
		if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		char why[128];
		snprintf(why, sizeof(why), "read: %s", strerror(errno));
		f_close(f, why, 1);
		return;
	}
	if (n == 0) {
		/* A drained filter closing is the restart it announced. */
		int planned = f->draining;
		f_close(f, planned ? "closed after drain" : "closed by the filter",
		    !planned);
		return;
	}
	fp_reader_commit(&f->rd, (size_t)n);
	f->last_rx = ev_now(loop);
	unsigned gen = f->gen;
	for (;;) {
		struct fp_msg m;
		struct fp_err err;
		int r = fp_reader_next(&f->rd, &m, &err);
		if (r == 0)
			break;
		if (r > 0) {
			f_message(f, &m);
		} else if (err.fatal || f->state != FS_READY) {
			char why[240];
			snprintf(why, sizeof(why), "protocol error: %s", err.message);
			f_close(f, why, 1);
		} else {
			struct filter_job *j = err.has_id ?
			    jq_find(&f->inflight, err.id) : NULL;
			log_warn(j ? j->facts.sid : NULL, "filter %s: bad frame: %s",
			    f->label, err.message);
			f_send_error(f, err.has_id, err.id, err.code, err.message);
			if (j != NULL)
				job_fallback(j, "protocol error");
		}
		if (f->gen != gen)
			return;		/* the connection went away */
	}
	/* Verdicts opened the window. */
	f_pump(f);
}

static void
f_connect(struct filter *f)
{
	struct filter_chain *fc = f->fc;
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct fp_buf b = { 0 };
	char why[200];

	if (strlen(f->path) >= sizeof(sun.sun_path)) {
		snprintf(why, sizeof(why), "socket path too long");
		goto fail;
	}
	memcpy(sun.sun_path, f->path, strlen(f->path) + 1);
	f->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (f->fd < 0) {
		snprintf(why, sizeof(why), "socket: %s", strerror(errno));
		goto fail;
	}
	fp_reader_init(&f->rd, FP_DEFAULT_MAX_FRAME, FP_ROLE_PROXY);
	ev_io_set(&f->rw, f->fd, EV_READ);
	ev_io_set(&f->ww, f->fd, EV_WRITE);
	if (fp_encode_hello(&b, &f->hello) < 0 || f_send_buf(f, &b) < 0) {
		snprintf(why, sizeof(why), "cannot encode hello");
		goto fail;
	}
	/* The handshake has its own deadline: a stopped filter still accepts
	 * connections (the kernel does), it just never answers. */
	double hw = fc->cfg->filter_timeout < HELLO_WAIT_MAX ?
	    fc->cfg->filter_timeout : HELLO_WAIT_MAX;
	ev_timer_set(&f->watchdog, hw, 0);
	ev_timer_start(fc->loop, &f->watchdog);
	if (connect(f->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		if (errno != EINPROGRESS && errno != EAGAIN) {
			/* The proxy drops privileges after start-up: a socket
			 * reached at start can be out of reach afterwards. */
			snprintf(why, sizeof(why), "connect %s: %s%s", f->path,
			    strerror(errno), errno == EACCES ? " (the socket must "
			    "be writable by the user the proxy runs as)" : "");
			goto fail;
		}
		f->state = FS_CONNECTING;
		ev_io_start(fc->loop, &f->ww);
		return;
	}
	f->state = FS_HELLO;
	ev_io_start(fc->loop, &f->rw);
	f_flush(f);
	return;
fail:
	f->state = FS_CONNECTING;	/* so that f_close does its work */
	f_close(f, why, 1);
}

/* --- the chain --------------------------------------------------------------- */

static const uint32_t versions[] = { FP_VERSION };

static unsigned
jq_count(const struct jq *q)
{
	unsigned n = 0;

	for (const struct filter_job *j = q->head; j != NULL; j = j->qnext)
		n++;
	return n;
}

void
filter_chain_status(const struct filter_chain *fc, char *out, size_t len)
{
	static const char *const names[] = { "down", "connecting", "handshake",
	    "ready" };
	size_t n = 0;

	out[0] = '\0';
	for (int i = 0; fc != NULL && i < fc->n && n < len; i++) {
		const struct filter *f = fc->f[i];
		int k = snprintf(out + n, len - n, "%s%s: %s%s%s, %u in flight, "
		    "%u queued", i ? "; " : "", f->label, names[f->state],
		    f->breaker ? " (circuit open)" : "",
		    f->draining ? " (draining)" : "", f->ninflight,
		    jq_count(&f->fifo));
		if (k < 0)
			break;
		n += (size_t)k;
	}
}

int
filter_chain_wants_top(const struct filter_chain *fc)
{
	for (int i = 0; fc != NULL && i < fc->n; i++)
		if (fc->f[i]->have_prm && (fc->f[i]->prm.commands & FP_CAP_TOP))
			return 1;
	return 0;
}

struct filter_chain *
filter_chain_new(struct proxy *px)
{
	const struct config *cfg = px->cfg;
	struct filter_chain *fc = calloc(1, sizeof(*fc));

	if (fc == NULL)
		return NULL;
	fc->px = px;
	fc->loop = px->loop;
	fc->cfg = cfg;
	if (getrandom(&fc->rnd, sizeof(fc->rnd), GRND_NONBLOCK) != sizeof(fc->rnd))
		fc->rnd = (uint32_t)getpid() * 2654435761u;
	fc->rnd |= 1;
	if (gethostname(fc->hostname, sizeof(fc->hostname) - 1) < 0 ||
	    fc->hostname[0] == '\0')
		snprintf(fc->hostname, sizeof(fc->hostname), "localhost");
	ev_timer_init(&fc->done_timer, done_cb, 0, 0);
	fc->done_timer.data = fc;
	for (int i = 0; i < cfg->nfilters; i++) {
		struct filter *f = calloc(1, sizeof(*f));
		if (f == NULL)
			goto fail;
		fc->f[fc->n++] = f;
		f->fc = fc;
		f->idx = i;
		f->fd = -1;
		f->path = cfg->filters[i];
		/* The label is the socket's name: stable across restarts
		 * and known before the filter ever answered. */
		const char *base = strrchr(f->path, '/');
		snprintf(f->label, sizeof(f->label), "%s", base ? base + 1 : f->path);
		f->hello = (struct fp_hello){
			.versions = versions, .nversions = 1,
			.proxy = FP_STR("pop3proxyd/" POP3PROXYD_VERSION),
			.caps = FP_CAP_RETR | FP_CAP_TOP | FP_CAPS_ACTIONS |
			    FP_CAP_CANCEL,
			.max_frame = FP_DEFAULT_MAX_FRAME,
			.max_inflight = FILTER_WINDOW,
		};
		ev_io_init(&f->rw, f_read_cb, -1, EV_READ);
		ev_io_init(&f->ww, f_write_cb, -1, EV_WRITE);
		ev_timer_init(&f->retry, f_retry_cb, 0, 0);
		ev_timer_init(&f->watchdog, f_watchdog_cb, 0, 0);
		ev_init(&f->ping, f_ping_cb);
		f->ping.repeat = PING_IDLE;
		f->rw.data = f->ww.data = f->retry.data = f->watchdog.data =
		    f->ping.data = f;
	}
	if (cfg->quarantine != NULL && access(cfg->quarantine, W_OK | X_OK) < 0)
		log_warn(NULL, "--quarantine %s: %s: rejected messages will be "
		    "answered with a temporary failure", cfg->quarantine,
		    strerror(errno));
	for (int i = 0; i < fc->n; i++) {
		log_info(NULL, "filter %s: %s, timeout %.1f s, on failure %s",
		    fc->f[i]->label, fc->f[i]->path, cfg->filter_timeout,
		    cfg->on_failure_tempfail ? "tempfail" : "accept");
		f_connect(fc->f[i]);
	}
	return fc;
fail:
	filter_chain_free(fc);
	return NULL;
}

void
filter_chain_free(struct filter_chain *fc)
{
	if (fc == NULL)
		return;
	/* Jobs still alive belong to sessions that were not cancelled; their
	 * callbacks never come. */
	/* Output queues first: their segments point at jobs. */
	for (int i = 0; i < fc->n; i++)
		f_queue_free(fc->f[i]);
	while (fc->all) {
		struct filter_job *j = fc->all;
		if (j->st == J_QUEUED || j->st == J_INFLIGHT) {
			struct filter *f = job_filter(j);
			jq_remove(j->st == J_QUEUED ? &f->fifo : &f->inflight, j);
		} else if (j->st == J_DONE) {
			jq_remove(&fc->done, j);
		}
		j->st = J_NONE;
		job_free(j);
	}
	for (int i = 0; i < fc->n; i++) {
		struct filter *f = fc->f[i];
		ev_io_stop(fc->loop, &f->rw);
		ev_io_stop(fc->loop, &f->ww);
		ev_timer_stop(fc->loop, &f->retry);
		ev_timer_stop(fc->loop, &f->watchdog);
		ev_timer_stop(fc->loop, &f->ping);
		if (f->fd >= 0)
			close(f->fd);
		f_queue_free(f);
		fp_reader_free(&f->rd);
		free(f);
	}
	ev_timer_stop(fc->loop, &fc->done_timer);
	free(fc);
}

static char *
facts_copy(struct filter_job *j, const struct filter_facts *in)
{
	const char *src[] = { in->sid, in->client, in->user, in->upstream_host,
	    in->uidl, in->command };
	size_t len = 0;

	for (size_t i = 0; i < 6; i++)
		len += (src[i] ? strlen(src[i]) : 0) + 1;
	char *p = malloc(len), *o = p;
	if (p == NULL)
		return NULL;
	const char **dst[] = { &j->facts.sid, &j->facts.client, &j->facts.user,
	    &j->facts.upstream_host, &j->facts.uidl, &j->facts.command };
	j->facts = *in;
	for (size_t i = 0; i < 6; i++) {
		if (src[i] == NULL) {
			/* only the UIDL may be unknown; the rest go as "" */
			*dst[i] = i == 4 ? NULL : o;
			*o++ = '\0';
			continue;
		}
		size_t l = strlen(src[i]) + 1;
		memcpy(o, src[i], l);
		*dst[i] = o;
		o += l;
	}
	if (j->facts.command[0] == '\0')
		j->facts.command = "RETR";
	return p;
}

struct filter_job *
filter_submit(struct filter_chain *fc, const struct filter_facts *facts,
    struct buf *msg, filter_done_cb cb, void *arg)
{
	struct filter_job *j = calloc(1, sizeof(*j));

	if (j == NULL)
		return NULL;
	j->fc = fc;
	if ((j->strs = facts_copy(j, facts)) == NULL) {
		free(j);
		return NULL;
	}
	j->cb = cb;
	j->arg = arg;
	j->msg = *msg;
	memset(msg, 0, sizeof(*msg));
	j->size_in = j->msg.len;
	j->t0 = ev_now(fc->loop);
	ev_timer_init(&j->timer, job_timer_cb, 0, 0);
	j->timer.data = j;
	j->anext = fc->all;
	if (fc->all)
		fc->all->aprev = j;
	fc->all = j;
	job_enter(j, 0);
	return j;
}

void
filter_cancel(struct filter_job *j)
{
	if (j == NULL)
		return;
	log_debug(j->facts.sid, "filter: msg %u: cancelled", j->facts.msgno);
	struct filter *f = NULL;
	if (j->st == J_DONE) {
		jq_remove(&j->fc->done, j);
	} else if (j->st != J_NONE) {
		f = job_filter(j);
		job_detach(j, 1);
	}
	j->st = J_NONE;
	job_free(j);
	if (f != NULL)
		f_pump(f);
}
