/* pf_conn.c: one proxy connection: non-blocking reads into the codec's frame
 * reader, the handshake, dispatch of proxy frames, queued writes, closing. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pf_local.h"

static void conn_read_cb(struct ev_loop *, ev_io *, int);
static void conn_write_cb(struct ev_loop *, ev_io *, int);
static void conn_linger_cb(struct ev_loop *, ev_timer *, int);

void
pf_conn_accept(struct pf *f, int fd)
{
	struct pf_conn *c;

	if (f->draining || (c = calloc(1, sizeof(*c))) == NULL) {
		close(fd);
		return;
	}
	c->f = f;
	c->fd = fd;
	c->serial = ++f->serial;
	/* Until the hello we accept at most what we will announce. */
	fp_reader_init(&c->rd, f->max_frame, FP_ROLE_FILTER);
	ev_io_init(&c->rio, conn_read_cb, fd, EV_READ);
	ev_io_init(&c->wio, conn_write_cb, fd, EV_WRITE);
	ev_timer_init(&c->linger, conn_linger_cb, PF_DRAIN_QUIET, 0.0);
	c->rio.data = c->wio.data = c->linger.data = c;
	ev_io_start(f->loop, &c->rio);
	c->next = f->conns;
	if (f->conns != NULL)
		f->conns->prev = c;
	f->conns = c;
	f->nconns++;
	pf_log(f, PF_LOG_DEBUG, "conn %u: accepted", c->serial);
}

/* The only way a connection ends. Requests still live are cancelled first, so
 * the author hears about each exactly once. Deferred while our own read
 * callback is on the stack (author callbacks may get here through pf_drain). */
void
pf_conn_close(struct pf_conn *c, const char *why)
{
	struct pf *f = c->f;

	if (c->busy > 0) {
		c->dead = true;
		return;
	}
	while (c->reqs != NULL)
		pf_req_cancel(c->reqs, why);
	ev_io_stop(f->loop, &c->rio);
	ev_io_stop(f->loop, &c->wio);
	ev_timer_stop(f->loop, &c->linger);
	close(c->fd);
	fp_reader_free(&c->rd);
	fp_buf_free(&c->out);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		f->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	f->nconns--;
	pf_log(f, PF_LOG_DEBUG, "conn %u: closed (%s)", c->serial, why);
	free(c);
	pf_check_drained(f);
}

/* ---- output -------------------------------------------------------------- */

static int
conn_flush(struct pf_conn *c)
{
	ssize_t n;

	while (c->out_off < c->out.len) {
		n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
		    MSG_NOSIGNAL);
		if (n > 0) {
			c->out_off += (size_t)n;
			continue;
		}
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			ev_io_start(c->f->loop, &c->wio);
			return 0;
		}
		pf_log(c->f, PF_LOG_WARN, "conn %u: send: %s", c->serial,
		    strerror(errno));
		return -1;
	}
	fp_buf_reset(&c->out);
	c->out_off = 0;
	ev_io_stop(c->f->loop, &c->wio);
	return 0;
}

static void
conn_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct pf_conn *c = w->data;

	if (conn_flush(c) == -1) {
		pf_conn_close(c, "send failed");
		return;
	}
	pf_conn_maybe_finish(c);
}

/* Queue one encoded frame; the write happens from the loop (never inside an
 * author's call), so a verdict call cannot close the connection under it. */
int
pf_conn_send(struct pf_conn *c, const struct fp_buf *frame)
{
	if (c->state == PF_CONN_CLOSING)
		return -1;	/* a fatal error was the last word */
	if (fp_buf_append(&c->out, frame->data, frame->len) == -1)
		return -1;
	ev_io_start(c->f->loop, &c->wio);
	return 0;
}

static void
send_error(struct pf_conn *c, bool has_id, uint64_t id, const char *code,
    const char *msg)
{
	struct fp_error e = { .has_id = has_id, .id = id,
	    .code = fp_str_c(code), .message = fp_str_c(msg) };
	struct fp_buf b = { 0 };

	if (e.message.len > FP_MAX_TEXT)
		e.message.len = FP_MAX_TEXT;
	if (fp_encode_error(&b, &e) == 0)
		pf_conn_send(c, &b);
	fp_buf_free(&b);
}

/* Close once nothing more is owed: after a fatal error (state CLOSING) as
 * soon as the output is out. While draining, when no request is left and
 * the connection has been quiet for PF_DRAIN_QUIET: requests the proxy sent
 * before it read our "drain" may still be on the way, and are answered. */
void
pf_conn_maybe_finish(struct pf_conn *c)
{
	if (c->out_off < c->out.len)
		return;		/* the write callback comes back here */
	if (c->state == PF_CONN_CLOSING) {
		pf_conn_close(c, "protocol error");
		return;
	}
	if (!c->f->draining || c->state != PF_CONN_READY)
		return;
	ev_timer_stop(c->f->loop, &c->linger);
	if (c->nreqs == 0) {
		ev_timer_set(&c->linger, PF_DRAIN_QUIET, 0.0);
		ev_timer_start(c->f->loop, &c->linger);
	}
}

static void
conn_linger_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct pf_conn *c = w->data;

	if (c->nreqs == 0 && c->out_off == c->out.len)
		pf_conn_close(c, "drained");
}

static void
conn_fatal(struct pf_conn *c, const char *code, const char *msg)
{
	pf_log(c->f, PF_LOG_WARN, "conn %u: %s: %s; closing", c->serial, code, msg);
	send_error(c, false, 0, code, msg);
	c->state = PF_CONN_CLOSING;
	ev_io_stop(c->f->loop, &c->rio);
}

void
pf_conn_drain(struct pf_conn *c, const char *reason)
{
	struct fp_drain d = { .reason = fp_str_c(reason) };
	struct fp_buf b = { 0 };

	if (c->state == PF_CONN_HELLO) {
		/* Not yet a peer: nothing to drain. */
		pf_conn_close(c, "draining before the handshake");
		return;
	}
	if (c->state == PF_CONN_READY && !c->drain_sent) {
		if (d.reason.len > FP_MAX_TEXT)
			d.reason.len = FP_MAX_TEXT;
		if (fp_encode_drain(&b, &d) == 0 && pf_conn_send(c, &b) == 0)
			c->drain_sent = true;
		fp_buf_free(&b);
	}
	pf_conn_maybe_finish(c);
}

/* ---- input --------------------------------------------------------------- */

static void
on_hello(struct pf_conn *c, const struct fp_hello *h)
{
	struct pf *f = c->f;
	struct fp_hello_ack ack = {
		.filter = fp_str_c(f->name),
		.commands = f->commands,
		.actions = f->actions,
		.max_message_size = f->max_message_size,
		.max_frame = f->max_frame,
		.max_inflight = f->max_inflight,
	};
	struct fp_buf b = { 0 };
	struct fp_err err;

	if ((ack.version = fp_version_choose(h)) == 0) {
		conn_fatal(c, FP_E_VERSION, "this filter speaks version 1 only");
		return;
	}
	if (fp_negotiate(h, &ack, &c->params, &err) == -1) {
		conn_fatal(c, err.code, err.message);
		return;
	}
	if (fp_encode_hello_ack(&b, &ack) == -1 || pf_conn_send(c, &b) == -1) {
		fp_buf_free(&b);
		conn_fatal(c, FP_E_INTERNAL, "cannot encode hello_ack");
		return;
	}
	fp_buf_free(&b);
	c->granted = c->params.actions & f->actions;
	c->state = PF_CONN_READY;
	pf_log(f, PF_LOG_INFO, "conn %u: %.*s: version %u, window %u, actions "
	    "granted 0x%x of 0x%x", c->serial, (int)h->proxy.len, h->proxy.ptr,
	    c->params.version, c->params.window, c->granted, f->actions);
	if (f->draining)
		pf_conn_drain(c, f->drain_reason);
}

static struct pf_req *
find_req(struct pf_conn *c, uint64_t id)
{
	struct pf_req *r;

	for (r = c->reqs; r != NULL; r = r->next)
		if (r->m.id == id)
			return r;
	return NULL;
}

static void
on_request(struct pf_conn *c, const struct fp_request *rq)
{
	struct pf *f = c->f;
	struct pf_req *r;

	/* Refusals fail that request only; the connection goes on. */
	if (find_req(c, rq->id) != NULL) {
		send_error(c, true, rq->id, FP_E_BAD_FRAME,
		    "request id already in flight");
		return;
	}
	if (c->nreqs >= c->params.window) {
		send_error(c, true, rq->id, FP_E_BUSY, "in-flight window full");
		return;
	}
	if (rq->message.command == FP_CMD_TOP && !(c->params.commands & FP_CAP_TOP)) {
		send_error(c, true, rq->id, FP_E_UNSUPPORTED, "TOP not wanted");
		return;
	}
	if (f->max_message_size != 0 && rq->body.len > f->max_message_size) {
		send_error(c, true, rq->id, FP_E_TOO_LARGE,
		    "message larger than max_message_size");
		return;
	}
	if ((r = pf_req_new(c, rq)) == NULL) {
		send_error(c, true, rq->id, FP_E_INTERNAL, "out of memory");
		return;
	}
	pf_req_deliver(r);
}

static void
on_cancel(struct pf_conn *c, uint64_t id)
{
	struct pf_req *r = find_req(c, id);

	/* A verdict may have crossed the cancel on the wire: not an error. */
	if (r != NULL)
		pf_req_cancel(r, "cancelled by the proxy");
}

static void
on_error(struct pf_conn *c, const struct fp_error *e)
{
	struct pf_req *r;

	pf_log(c->f, PF_LOG_WARN, "conn %u: proxy reports %.*s%s%.*s%s", c->serial,
	    (int)e->code.len, e->code.ptr, e->message.ptr ? ": " : "",
	    (int)e->message.len, e->message.ptr ? e->message.ptr : "",
	    e->has_id ? " (for a request)" : "");
	/* An error about a live request means the proxy gave up on it. */
	if (e->has_id && (r = find_req(c, e->id)) != NULL)
		pf_req_cancel(r, "the proxy reported an error for it");
}

static void
dispatch(struct pf_conn *c, const struct fp_msg *m)
{
	struct fp_buf b = { 0 };

	if (c->state == PF_CONN_HELLO && m->type != FP_MSG_HELLO) {
		conn_fatal(c, FP_E_BAD_FRAME, "expected hello first");
		return;
	}
	switch (m->type) {
	case FP_MSG_HELLO:
		if (c->state != PF_CONN_HELLO) {
			send_error(c, false, 0, FP_E_BAD_FRAME, "second hello ignored");
			return;
		}
		on_hello(c, &m->hello);
		return;
	case FP_MSG_REQUEST:
		on_request(c, &m->request);
		return;
	case FP_MSG_PING:
		if (fp_encode_pong(&b, m->ping.id) == 0)
			pf_conn_send(c, &b);
		fp_buf_free(&b);
		return;
	case FP_MSG_PONG:
		return;		/* we never ping; an answer to nothing */
	case FP_MSG_CANCEL:
		on_cancel(c, m->cancel.id);
		return;
	case FP_MSG_ERROR:
		on_error(c, &m->error);
		return;
	default:
		send_error(c, false, 0, FP_E_UNSUPPORTED, "unexpected message type");
		return;
	}
}

/* A frame the codec refused. Non-fatal errors consumed just that frame: say
 * so (for the request, if it names one) and go on; fatal ones lost framing. */
static void
decode_failed(struct pf_conn *c, const struct fp_err *err)
{
	pf_log(c->f, PF_LOG_WARN, "conn %u: bad frame: %s: %s", c->serial,
	    err->code, err->message);
	if (err->fatal || c->state == PF_CONN_HELLO) {
		conn_fatal(c, err->code, err->message);
		return;
	}
	send_error(c, err->has_id, err->id, err->code, err->message);
}

static void
conn_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct pf_conn *c = w->data;
	struct fp_msg m;
	struct fp_err err;
	size_t avail;
	ssize_t n;
	char *p;
	int i, rc;
	const char *closed = NULL;

	c->busy++;
	for (i = 0; i < PF_READ_BURST && !c->dead &&
	    c->state != PF_CONN_CLOSING; i++) {
		if ((p = fp_reader_space(&c->rd, &avail)) == NULL) {
			closed = "out of memory";
			break;
		}
		n = recv(c->fd, p, avail, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			closed = n == 0 ? "closed by the proxy" : strerror(errno);
			break;
		}
		fp_reader_commit(&c->rd, (size_t)n);
		while (!c->dead && c->state != PF_CONN_CLOSING &&
		    (rc = fp_reader_next(&c->rd, &m, &err)) != 0) {
			if (rc == 1)
				dispatch(c, &m);
			else
				decode_failed(c, &err);
		}
	}
	c->busy--;
	if (c->dead || closed != NULL) {
		pf_conn_close(c, closed ? closed : "closed");
		return;
	}
	pf_conn_maybe_finish(c);
}
