/* test_libfilter.c: unit tests for libpop3filter, driven on a libev loop by a
 * proxy-side client built with the codec; plus pop3filter-ref's MIME walker. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <ev.h>

#include "fp.h"
#include "pop3filter.h"
#include "unit.h"

/* pop3filter-ref's pure parts are tested here too (they are not a library). */
#include "../../clients/pop3filter-ref/mime.c"
#include "../../clients/pop3filter-ref/rules.c"
#include "../../clients/pop3filter-ref/strip.c"

#define MSG "From: a@example.org\r\nSubject: hello\r\n\r\nbody\r\n"

static char sock_path[108];

/* ---- the proxy side ------------------------------------------------------ */

struct cl {
	int			 fd;
	struct fp_reader	 rd;
	struct ev_loop		*loop;
	bool			 eof;
};

static void
cl_connect(struct cl *c, struct ev_loop *loop)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };

	memset(c, 0, sizeof(*c));
	c->loop = loop;
	memcpy(sun.sun_path, sock_path, strlen(sock_path));
	c->fd = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(connect(c->fd, (struct sockaddr *)&sun, sizeof(sun)) == 0);
	fcntl(c->fd, F_SETFL, O_NONBLOCK);
	fp_reader_init(&c->rd, FP_DEFAULT_MAX_FRAME, FP_ROLE_PROXY);
}

static void
cl_close(struct cl *c)
{
	close(c->fd);
	fp_reader_free(&c->rd);
	ev_run(c->loop, EVRUN_NOWAIT);
	ev_run(c->loop, EVRUN_NOWAIT);
}

static void
cl_raw(struct cl *c, const void *p, size_t n)
{
	CHECK(send(c->fd, p, n, MSG_NOSIGNAL) == (ssize_t)n);
}

static void
cl_send(struct cl *c, const struct fp_msg *m)
{
	struct fp_buf b = { 0 };

	CHECK(fp_encode(&b, m) == 0);
	cl_raw(c, b.data, b.len);
	fp_buf_free(&b);
}

/* Run the loop until the filter sends a frame: 1 (in *m), -1 decode error,
 * -2 EOF, 0 nothing within ms. */
static int
cl_next(struct cl *c, struct fp_msg *m, int ms)
{
	struct fp_err err;
	struct pollfd pfd;
	size_t avail;
	ssize_t n;
	char *p;
	int rc, i;

	for (i = 0; i < ms; i++) {
		if ((rc = fp_reader_next(&c->rd, m, &err)) != 0)
			return rc;
		if (c->eof)
			return -2;
		ev_run(c->loop, EVRUN_NOWAIT);
		pfd = (struct pollfd){ .fd = c->fd, .events = POLLIN };
		if (poll(&pfd, 1, 1) <= 0)
			continue;
		p = fp_reader_space(&c->rd, &avail);
		n = recv(c->fd, p, avail, 0);
		if (n > 0)
			fp_reader_commit(&c->rd, (size_t)n);
		else if (n == 0 || errno != EAGAIN)
			c->eof = true;
	}
	return 0;
}

static const uint32_t V1[] = { 1 };

static void
cl_hello(struct cl *c, uint32_t caps, struct fp_hello_ack *ack_out)
{
	struct fp_msg m = { .type = FP_MSG_HELLO, .hello = {
		.versions = V1, .nversions = 1, .proxy = FP_STR("unit/1"),
		.caps = caps, .max_frame = FP_DEFAULT_MAX_FRAME,
		.max_inflight = 8 } };

	cl_send(c, &m);
	CHECK_INT(cl_next(c, &m, 2000), 1);
	CHECK_INT(m.type, FP_MSG_HELLO_ACK);
	if (ack_out != NULL && m.type == FP_MSG_HELLO_ACK)
		*ack_out = m.hello_ack;
}

static void
cl_request(struct cl *c, uint64_t id, const char *body, size_t len, bool top)
{
	struct fp_msg m = { .type = FP_MSG_REQUEST, .request = {
		.id = id, .deadline_ms = 5000,
		.session = { .id = FP_STR("s1"), .client = FP_STR("127.0.0.1:5"),
		    .user = FP_STR("alice"), .upstream_host = FP_STR("mx"),
		    .upstream_port = 110, .tls_upstream = true },
		.message = { .number = id, .size = len,
		    .command = top ? FP_CMD_TOP : FP_CMD_RETR, .top_lines = 2 },
		.body = { body, len } } };

	cl_send(c, &m);
}

static void
cl_simple(struct cl *c, enum fp_msg_type t, uint64_t id)
{
	struct fp_msg m = { .type = t };

	m.ping.id = id;
	cl_send(c, &m);
}

/* ---- filters under test -------------------------------------------------- */

#define ALL_CAPS	(FP_CAP_RETR | FP_CAP_TOP | FP_CAPS_ACTIONS | FP_CAP_CANCEL)

struct fx {
	struct ev_loop		*loop;
	struct pf		*f;
	struct pf_req		*held[8];
	int			 nheld;
	int			 messages, cancels;
	char			 last_cancel[64];
	void			*cancel_data;
	struct pf_message	 copy;		/* of the last message */
	char			 body[256], user[64], sid[64], host[64];
	int			 mode;		/* what on_message does */
	ev_timer		 timer;
};

enum { M_ACCEPT_EDIT, M_HOLD, M_MISUSE };

static void
on_message(struct pf_req *r, const struct pf_message *m, void *arg)
{
	struct fx *x = arg;

	x->messages++;
	/* Copied: the message dies with its verdict. */
	x->copy = *m;
	memcpy(x->body, m->body, m->body_len < 255 ? m->body_len : 255);
	snprintf(x->user, sizeof(x->user), "%s", m->user);
	snprintf(x->sid, sizeof(x->sid), "%s", m->session_id);
	snprintf(x->host, sizeof(x->host), "%s", m->upstream_host);
	switch (x->mode) {
	case M_ACCEPT_EDIT:
		CHECK(pf_add_header(r, "X-Unit", "one") == 0);
		CHECK(pf_change_header(r, "Subject", 1, "[T] hello") == 0);
		CHECK(pf_reason(r, "unit") == 0);
		CHECK(pf_tag(r, "t1") == 0);
		CHECK(pf_score(r, 2.5) == 0);
		CHECK(pf_accept(r) == 0);
		/* Still readable until we return; a second verdict is refused. */
		CHECK_STR(m->user, "alice");
		CHECK(pf_reject(r, "twice") == -1);
		CHECK_INT(pf_errno(pf_req_filter(r)), PF_ESTATE);
		break;
	case M_HOLD:
		pf_req_set_data(r, x);
		x->held[x->nheld++] = r;
		break;
	}
}

static void
on_cancel(struct pf_req *r, const char *why, void *arg)
{
	struct fx *x = arg;
	int i;

	x->cancels++;
	snprintf(x->last_cancel, sizeof(x->last_cancel), "%s", why);
	x->cancel_data = pf_req_data(r);
	for (i = 0; i < x->nheld; i++)
		if (x->held[i] == r)
			x->held[i] = NULL;
	/* A verdict from inside the cancel callback is refused. */
	CHECK(pf_accept(r) == -1);
	CHECK_INT(pf_errno(pf_req_filter(r)), PF_ECANCELED);
}

static void
quiet_log(enum pf_log_level l, const char *line, void *arg)
{
	(void)l; (void)line; (void)arg;
}

static void
fx_start(struct fx *x, unsigned actions, bool with_cancel)
{
	memset(x, 0, sizeof(*x));
	x->loop = ev_loop_new(EVFLAG_AUTO);
	x->f = pf_new(x->loop);
	CHECK(x->f != NULL);
	pf_on_log(x->f, quiet_log, NULL);
	pf_on_message(x->f, on_message, x);
	if (with_cancel)
		pf_on_cancel(x->f, on_cancel, x);
	CHECK(pf_name(x->f, "unit-filter/1") == 0);
	CHECK(pf_declare(x->f, actions) == 0);
	CHECK(pf_commands(x->f, PF_RETR) == 0);
	CHECK(pf_max_inflight(x->f, 4) == 0);
	CHECK(pf_socket_mode(x->f, 0600) == 0);
	CHECK(pf_listen(x->f, sock_path) == 0);
}

static void
fx_stop(struct fx *x)
{
	struct ev_loop *loop = x->loop;

	pf_free(x->f);
	ev_loop_destroy(loop);
}

/* ---- tests --------------------------------------------------------------- */

static void
test_handshake_and_sync_accept(void)
{
	struct fx x;
	struct cl c;
	struct fp_hello_ack ack;
	struct fp_msg m;
	struct stat st;

	fx_start(&x, PF_EDIT_HEADERS | PF_REJECT, true);
	CHECK(stat(sock_path, &st) == 0 && (st.st_mode & 0777) == 0600);
	/* Settings are fixed once listening. */
	CHECK(pf_declare(x.f, PF_REPLACE) == -1);
	CHECK_INT(pf_errno(x.f), PF_ESTATE);
	x.mode = M_ACCEPT_EDIT;
	cl_connect(&c, x.loop);
	/* Nothing before our hello. */
	CHECK_INT(cl_next(&c, &m, 50), 0);
	cl_hello(&c, ALL_CAPS, &ack);
	CHECK_INT(ack.version, 1);
	CHECK(fp_str_eq(ack.filter, "unit-filter/1"));
	CHECK_INT(ack.commands, FP_CAP_RETR);
	CHECK_INT(ack.actions, FP_CAP_EDIT_HEADERS | FP_CAP_REJECT);
	CHECK_INT(ack.max_inflight, 4);

	cl_request(&c, 7, MSG, sizeof(MSG) - 1, false);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK_INT(m.type, FP_MSG_VERDICT);
	CHECK_INT(m.verdict.id, 7);
	CHECK_INT(m.verdict.action, FP_ACCEPT);
	CHECK_INT(m.verdict.nedits, 2);
	if (m.verdict.nedits == 2) {
		CHECK_INT(m.verdict.edits[0].op, FP_EDIT_ADD);
		CHECK(fp_str_eq(m.verdict.edits[0].name, "X-Unit"));
		CHECK(fp_str_eq(m.verdict.edits[0].value, "one"));
		CHECK_INT(m.verdict.edits[1].op, FP_EDIT_CHANGE);
		CHECK_INT(m.verdict.edits[1].index, 1);
	}
	CHECK(fp_str_eq(m.verdict.reason, "unit"));
	CHECK_INT(m.verdict.ntags, 1);
	CHECK(m.verdict.has_score && m.verdict.score == 2.5);
	CHECK(m.verdict.body.ptr == NULL);	/* never echoed */
	/* What the callback saw. */
	CHECK_INT(x.copy.id, 7);
	CHECK_STR(x.user, "alice");
	CHECK_STR(x.sid, "s1");
	CHECK_STR(x.host, "mx");
	CHECK_INT(x.copy.upstream_port, 110);
	CHECK(x.copy.tls_upstream && !x.copy.tls_client);
	CHECK(x.copy.uidl == NULL);
	CHECK_INT(x.copy.command, PF_CMD_RETR);
	CHECK_INT(x.copy.body_len, sizeof(MSG) - 1);
	CHECK_MEM(x.body, x.copy.body_len, MSG, sizeof(MSG) - 1);
	CHECK_INT(pf_inflight(x.f), 0);

	/* Ping answered. */
	cl_simple(&c, FP_MSG_PING, 99);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_PONG && m.pong.id == 99);
	cl_close(&c);
	fx_stop(&x);
	/* The socket is gone after pf_free. */
	CHECK(stat(sock_path, &st) == -1 && errno == ENOENT);
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct fx *x = w->data;

	(void)loop; (void)revents;
	/* The first held request is answered from the timer, later. */
	if (x->held[0] != NULL) {
		CHECK(pf_reject(x->held[0], "later") == 0);
		x->held[0] = NULL;
	}
}

static void
test_async_from_timer(void)
{
	struct fx x;
	struct cl c;
	struct fp_msg m;
	uint64_t order[2];
	int i;

	fx_start(&x, PF_EDIT_HEADERS | PF_REJECT, true);
	x.mode = M_HOLD;
	cl_connect(&c, x.loop);
	cl_hello(&c, ALL_CAPS, NULL);
	cl_request(&c, 1, MSG, sizeof(MSG) - 1, false);
	cl_request(&c, 2, MSG, sizeof(MSG) - 1, false);
	/* Both held: the filter still answers pings (its loop is free). */
	cl_simple(&c, FP_MSG_PING, 5);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_PONG && m.pong.id == 5);
	CHECK_INT(x.nheld, 2);
	CHECK_INT(pf_inflight(x.f), 2);
	CHECK(pf_req_data(x.held[1]) == &x);
	/* The held message stays valid after its frame is gone. */
	CHECK_MEM(pf_req_message(x.held[1])->body,
	    pf_req_message(x.held[1])->body_len, MSG, sizeof(MSG) - 1);

	ev_timer_init(&x.timer, timer_cb, 0.02, 0.0);
	x.timer.data = &x;
	ev_timer_start(x.loop, &x.timer);
	/* Request 2 answered now, request 1 by the timer: out of order. */
	CHECK(pf_accept(x.held[1]) == 0);
	x.held[1] = NULL;
	for (i = 0; i < 2; i++) {
		CHECK_INT(cl_next(&c, &m, 2000), 1);
		CHECK_INT(m.type, FP_MSG_VERDICT);
		order[i] = m.verdict.id;
		if (m.verdict.id == 1) {
			CHECK_INT(m.verdict.action, FP_REJECT);
			CHECK(fp_str_eq(m.verdict.notice, "later"));
		}
	}
	CHECK_INT(order[0], 2);
	CHECK_INT(order[1], 1);
	CHECK_INT(pf_inflight(x.f), 0);
	cl_close(&c);
	fx_stop(&x);
}

static void
test_cancel(void)
{
	struct fx x;
	struct cl c;
	struct fp_msg m;

	/* With a cancel callback: told once, with our data; handle freed. */
	fx_start(&x, PF_EDIT_HEADERS, true);
	x.mode = M_HOLD;
	cl_connect(&c, x.loop);
	cl_hello(&c, ALL_CAPS, NULL);
	cl_request(&c, 3, MSG, sizeof(MSG) - 1, false);
	cl_simple(&c, FP_MSG_CANCEL, 3);
	cl_simple(&c, FP_MSG_CANCEL, 12345);	/* unknown: ignored */
	cl_simple(&c, FP_MSG_PING, 6);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_PONG && m.pong.id == 6);
	CHECK_INT(x.cancels, 1);
	CHECK_STR(x.last_cancel, "cancelled by the proxy");
	CHECK(x.cancel_data == &x);
	CHECK_INT(pf_inflight(x.f), 0);

	/* The proxy closing cancels what is in flight. */
	cl_request(&c, 4, MSG, sizeof(MSG) - 1, false);
	cl_simple(&c, FP_MSG_PING, 7);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK_INT(pf_inflight(x.f), 1);
	cl_close(&c);
	CHECK_INT(x.cancels, 2);
	CHECK_STR(x.last_cancel, "closed by the proxy");
	fx_stop(&x);

	/* Without one: the handle lives on until the verdict call, which
	 * fails with PF_ECANCELED and sends nothing. */
	fx_start(&x, PF_EDIT_HEADERS, false);
	x.mode = M_HOLD;
	cl_connect(&c, x.loop);
	cl_hello(&c, ALL_CAPS, NULL);
	cl_request(&c, 8, MSG, sizeof(MSG) - 1, false);
	cl_simple(&c, FP_MSG_CANCEL, 8);
	cl_simple(&c, FP_MSG_PING, 9);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_PONG);
	CHECK(x.nheld == 1 && pf_req_cancelled(x.held[0]));
	CHECK(pf_add_header(x.held[0], "X-A", "b") == -1);
	CHECK_INT(pf_errno(x.f), PF_ECANCELED);
	CHECK(pf_accept(x.held[0]) == -1);
	CHECK_INT(pf_errno(x.f), PF_ECANCELED);
	CHECK_INT(cl_next(&c, &m, 50), 0);	/* no verdict went out */
	cl_close(&c);
	fx_stop(&x);
}

static void
test_misuse_refused(void)
{
	struct fx x;
	struct cl c;
	struct fp_msg m;
	struct pf_req *r;
	char big[5000];

	fx_start(&x, PF_EDIT_HEADERS | PF_REJECT | PF_TEMPFAIL, true);
	x.mode = M_HOLD;
	cl_connect(&c, x.loop);
	/* The proxy offers no "reject": declared but not granted. */
	cl_hello(&c, FP_CAP_RETR | FP_CAP_EDIT_HEADERS | FP_CAP_TEMPFAIL, NULL);
	cl_request(&c, 1, MSG, sizeof(MSG) - 1, false);
	CHECK_INT(cl_next(&c, &m, 30), 0);
	CHECK_INT(x.nheld, 1);
	r = x.held[0];

	CHECK(pf_replace(r, "x", 1) == -1);
	CHECK_INT(pf_errno(x.f), PF_ENOTDECLARED);
	CHECK(pf_granted(r, PF_EDIT_HEADERS) && !pf_granted(r, PF_REJECT));
	CHECK(pf_reject(r, "no") == -1);
	CHECK_INT(pf_errno(x.f), PF_ENOTGRANTED);
	CHECK(pf_add_header(r, "Bad Name", "v") == -1);
	CHECK_INT(pf_errno(x.f), PF_EINVAL);
	CHECK(pf_add_header(r, "X-Ok", "a\r\n\r\nInjected: yes") == -1);
	CHECK_INT(pf_errno(x.f), PF_EINVAL);
	CHECK(pf_change_header(r, "Subject", 0, "v") == -1);
	memset(big, 'n', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	CHECK(pf_reason(r, big) == -1);
	CHECK_INT(pf_errno(x.f), PF_ETOOLARGE);
	CHECK(pf_add_header(r, "X-Ok", "fine") == 0);
	/* Edits go only with accept. */
	CHECK(pf_tempfail(r, "busy") == -1);
	CHECK_INT(pf_errno(x.f), PF_ESTATE);
	/* None of that reached the proxy, and the request is still live. */
	CHECK_INT(cl_next(&c, &m, 30), 0);
	CHECK_INT(pf_inflight(x.f), 1);
	CHECK(pf_accept(r) == 0);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_VERDICT && m.verdict.action == FP_ACCEPT &&
	    m.verdict.nedits == 1);

	/* pf_fail: an error for that request. */
	cl_request(&c, 2, MSG, sizeof(MSG) - 1, false);
	CHECK_INT(cl_next(&c, &m, 30), 0);
	CHECK(pf_fail(x.held[1], "broken") == 0);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_ERROR && m.error.has_id && m.error.id == 2 &&
	    fp_str_eq(m.error.code, "internal"));
	cl_close(&c);
	fx_stop(&x);

	/* No callback, bad names, bad path. */
	x.loop = ev_loop_new(EVFLAG_AUTO);
	x.f = pf_new(x.loop);
	pf_on_log(x.f, quiet_log, NULL);
	CHECK(pf_listen(x.f, sock_path) == -1);
	CHECK_INT(pf_errno(x.f), PF_ESTATE);
	pf_on_message(x.f, on_message, &x);
	CHECK(pf_name(x.f, "") == -1);
	CHECK(pf_commands(x.f, PF_TOP) == -1);
	CHECK(pf_declare(x.f, 0x100) == -1);
	CHECK(pf_max_inflight(x.f, 0) == -1);
	CHECK(pf_listen(x.f, "/nonexistent-dir/x.sock") == -1);
	CHECK_INT(pf_errno(x.f), PF_ESYS);
	fx_stop(&x);
}

static void
test_hostile_proxy(void)
{
	struct fx x;
	struct cl c;
	struct fp_msg m;
	int i, busy = 0, answered = 0;

	fx_start(&x, PF_EDIT_HEADERS, true);
	x.mode = M_HOLD;

	/* A request before hello: bad_frame, closed. */
	cl_connect(&c, x.loop);
	cl_request(&c, 1, MSG, sizeof(MSG) - 1, false);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_ERROR && fp_str_eq(m.error.code, "bad_frame"));
	CHECK_INT(cl_next(&c, &m, 2000), -2);
	cl_close(&c);
	CHECK_INT(x.messages, 0);

	/* No common version: error "version", closed. */
	cl_connect(&c, x.loop);
	{
		static const uint32_t v9[] = { 9 };
		struct fp_msg h = { .type = FP_MSG_HELLO, .hello = {
			.versions = v9, .nversions = 1, .proxy = FP_STR("p"),
			.caps = FP_CAP_RETR, .max_frame = FP_MIN_MAX_FRAME,
			.max_inflight = 1 } };
		cl_send(&c, &h);
	}
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_ERROR && fp_str_eq(m.error.code, "version"));
	CHECK_INT(cl_next(&c, &m, 2000), -2);
	cl_close(&c);

	cl_connect(&c, x.loop);
	cl_hello(&c, ALL_CAPS, NULL);
	/* Over the window (4): "busy" for the fifth. */
	for (i = 1; i <= 5; i++)
		cl_request(&c, (uint64_t)i, MSG, sizeof(MSG) - 1, false);
	/* A duplicate id and an unwanted TOP are refused for that id. */
	cl_request(&c, 1, MSG, sizeof(MSG) - 1, false);
	cl_request(&c, 6, MSG, sizeof(MSG) - 1, true);
	while (cl_next(&c, &m, 200) == 1)
		if (m.type == FP_MSG_ERROR && m.error.has_id)
			busy += fp_str_eq(m.error.code, "busy") ? 1 : 0,
			answered++;
	CHECK_INT(busy, 2);	/* #5, and #6 as the window is full */
	CHECK_INT(answered, 3);
	CHECK_INT(x.nheld, 4);
	/* Garbage in a frame: bad_frame, and the connection goes on. */
	cl_raw(&c, "\0\0\0\3\x92\x01\x02", 7);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_ERROR && fp_str_eq(m.error.code, "bad_frame") &&
	    !m.error.has_id);
	cl_simple(&c, FP_MSG_PING, 1);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_PONG);
	/* A frame over max_frame: too_large, closed; held requests cancelled. */
	cl_raw(&c, "\x7f\xff\xff\xff\x80", 5);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_ERROR && fp_str_eq(m.error.code, "too_large"));
	CHECK_INT(cl_next(&c, &m, 2000), -2);
	CHECK_INT(x.cancels, 4);
	CHECK_INT(pf_inflight(x.f), 0);
	cl_close(&c);

	/* The filter still serves new connections. */
	x.mode = M_ACCEPT_EDIT;
	cl_connect(&c, x.loop);
	cl_hello(&c, ALL_CAPS, NULL);
	cl_request(&c, 1, MSG, sizeof(MSG) - 1, false);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_VERDICT);
	cl_close(&c);
	fx_stop(&x);
}

static void
test_drain(void)
{
	struct fx x;
	struct cl c, c2;
	struct fp_msg m;
	bool drain = false, verdict = false;
	int rc;

	fx_start(&x, PF_EDIT_HEADERS | PF_REJECT, true);
	x.mode = M_HOLD;
	cl_connect(&c, x.loop);
	cl_hello(&c, ALL_CAPS, NULL);
	cl_request(&c, 1, MSG, sizeof(MSG) - 1, false);
	CHECK_INT(cl_next(&c, &m, 30), 0);
	pf_drain(x.f, "unit");
	CHECK(!pf_done(x.f));
	/* "drain" first; the held request is answered later, then close. */
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_DRAIN && fp_str_eq(m.drain.reason, "unit"));
	/* A request that crossed our "drain" is still answered. */
	x.mode = M_ACCEPT_EDIT;
	cl_request(&c, 2, MSG, sizeof(MSG) - 1, false);
	CHECK_INT(cl_next(&c, &m, 2000), 1);
	CHECK(m.type == FP_MSG_VERDICT && m.verdict.id == 2);
	ev_timer_init(&x.timer, timer_cb, 0.02, 0.0);
	x.timer.data = &x;
	ev_timer_start(x.loop, &x.timer);
	while ((rc = cl_next(&c, &m, 2000)) == 1)
		if (m.type == FP_MSG_VERDICT && m.verdict.id == 1)
			verdict = true;
		else if (m.type == FP_MSG_DRAIN)
			drain = true;
	CHECK(verdict);
	CHECK(!drain);	/* sent once */
	CHECK_INT(rc, -2);
	CHECK(pf_done(x.f));
	/* No new connections once draining. */
	{
		struct sockaddr_un sun = { .sun_family = AF_UNIX };

		memcpy(sun.sun_path, sock_path, strlen(sock_path));
		c2.fd = socket(AF_UNIX, SOCK_STREAM, 0);
		CHECK(connect(c2.fd, (struct sockaddr *)&sun, sizeof(sun)) == -1);
		close(c2.fd);
	}
	cl_close(&c);
	fx_stop(&x);
}

static void
test_stale_socket(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct fx x;
	struct pf *f2;
	int fd;

	/* A socket file nobody listens on: removed and replaced. */
	unlink(sock_path);
	memcpy(sun.sun_path, sock_path, strlen(sock_path));
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0);
	close(fd);
	fx_start(&x, 0, false);
	/* A live one is refused: another filter is listening. */
	f2 = pf_new(x.loop);
	pf_on_log(f2, quiet_log, NULL);
	pf_on_message(f2, on_message, &x);
	CHECK(pf_listen(f2, sock_path) == -1);
	CHECK_INT(pf_errno(f2), PF_EINVAL);
	pf_free(f2);
	fx_stop(&x);
	/* A regular file is not ours to remove. */
	fd = open(sock_path, O_CREAT | O_WRONLY, 0600);
	close(fd);
	x.loop = ev_loop_new(EVFLAG_AUTO);
	f2 = pf_new(x.loop);
	pf_on_log(f2, quiet_log, NULL);
	pf_on_message(f2, on_message, &x);
	CHECK(pf_listen(f2, sock_path) == -1);
	pf_free(f2);
	ev_loop_destroy(x.loop);
	unlink(sock_path);
}

static void
test_header_helpers(void)
{
	static const char msg[] = "Received: one\r\nsubject: first\r\n line two\r\n"
	    "X-A:x\r\nSubject:  second\r\n\r\nSubject: in body\r\n";
	const char *v;
	size_t n;

	CHECK(pf_header(msg, sizeof(msg) - 1, "SUBJECT", 1, &v, &n) == 0);
	CHECK_MEM(v, n, "first\r\n line two", 16);
	CHECK(pf_header(msg, sizeof(msg) - 1, "Subject", 2, &v, &n) == 0);
	CHECK_MEM(v, n, "second", 6);
	CHECK(pf_header(msg, sizeof(msg) - 1, "Subject", 3, &v, &n) == -1);
	CHECK(pf_header(msg, sizeof(msg) - 1, "X-A", 1, &v, &n) == 0);
	CHECK_MEM(v, n, "x", 1);
	CHECK(pf_header(msg, sizeof(msg) - 1, "X-A", 0, &v, &n) == -1);
	CHECK_INT(pf_body_offset(msg, sizeof(msg) - 1), sizeof(msg) - 1 - 18);
	CHECK_INT(pf_body_offset("A: b\n\nc", 7), 6);
	CHECK_INT(pf_body_offset("A: b", 4), 4);
	CHECK(pf_header("A: b", 4, "A", 1, &v, &n) == 0 && n == 1);
	CHECK(pf_header("", 0, "A", 1, &v, &n) == -1);
}

/* ---- pop3filter-ref's MIME walker ---------------------------------------- */

struct names {
	char	 all[1024];
	int	 n;
};

static int
collect(const char *name, size_t len, void *arg)
{
	struct names *ns = arg;
	size_t l = strlen(ns->all);

	snprintf(ns->all + l, sizeof(ns->all) - l, "%s%.*s", ns->n++ ? "|" : "",
	    (int)len, name);
	return 0;
}

static const char *
names_of(const char *msg, struct names *ns)
{
	memset(ns, 0, sizeof(*ns));
	mime_names(msg, strlen(msg), collect, ns);
	return ns->all;
}

/* levels multiparts, each inside the previous, the attachment innermost. */
static const char *
nested(int levels)
{
	static char deep[100000];
	size_t o = 0;
	int i;

	for (i = 0; i < levels; i++)
		o += (size_t)snprintf(deep + o, sizeof(deep) - o,
		    "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n",
		    i, i);
	snprintf(deep + o, sizeof(deep) - o,
	    "Content-Disposition: attachment; filename=z.exe\r\n\r\n");
	return deep;
}

static void
test_mime_names(void)
{
	struct names ns;
	char out[256];
	size_t n;

	CHECK_STR(names_of(
	    "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
	    "preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
	    "--b1\r\nContent-Type: application/octet-stream; name=\"a.exe\"\r\n"
	    "Content-Disposition: attachment;\r\n filename=\"b.EXE\"\r\n\r\nMZ\r\n"
	    "--b1--\r\nepilogue\r\n", &ns), "b.EXE|a.exe");
	/* RFC 2231: extended, continuations, charset stripped, %XX. */
	CHECK_STR(names_of(
	    "Content-Disposition: attachment; filename*=UTF-8''ev%69l.scr\r\n"
	    "\r\nx", &ns), "evil.scr");
	CHECK_STR(names_of(
	    "Content-Disposition: attachment; filename*0=\"li\";\r\n"
	    "\tfilename*1*=%6E%65; filename*2=\"s.exe\"\r\n\r\nx", &ns),
	    "lines.exe");
	/* RFC 2047 in a plain value. */
	CHECK_STR(names_of(
	    "Content-Type: application/x; name=\"=?UTF-8?B?cmVwb3J0LmV4ZQ==?=\"\r\n"
	    "\r\nx", &ns), "report.exe");
	CHECK_STR(names_of(
	    "Content-Type: application/x; name==?iso-8859-1?Q?r=E9sum=E9_x.scr?=\r\n"
	    "\r\nx", &ns), "r\xe9sum\xe9 x.scr");
	/* Nested multipart inside a message/rfc822 part; no closing delimiter. */
	CHECK_STR(names_of(
	    "Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
	    "Content-Type: message/rfc822\r\n\r\n"
	    "Content-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n"
	    "Content-Disposition: inline; filename=deep.scr\r\n\r\nz\r\n", &ns),
	    "deep.scr");
	/* Hostile: nesting past the limit stops, no crash (one boundary for
	 * all levels would make them all parts of the outermost). */
	CHECK_STR(names_of(nested(10), &ns), "z.exe");
	CHECK_STR(names_of(nested(1000), &ns), "");
	CHECK_STR(names_of("Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n"
	    "--\r\nContent-Type: a/b; name=q.exe\r\n\r\n", &ns), "");
	CHECK_STR(names_of("Content-Type: text/plain; name=\"unterminated\r\n\r\n",
	    &ns), "unterminated");
	CHECK(mime_param("a/b; x=1", 8, "name", out, sizeof(out), &n) == -1);
	/* Decoding stays inside the output buffer. */
	CHECK(mime_param("a/b; name*=''%41%41%41%41%41%41%41%41", 37, "name", out,
	    4, &n) == 0 && n == 3);
	CHECK(mime_param("a/b; name=\"x\\\"y\"", 16, "name", out, sizeof(out),
	    &n) == 0);
	CHECK_STR(out, "x\"y");
}

static void
test_ref_rules(void)
{
	struct ref_config c;
	char err[256], path[] = "/tmp/unit-ref-XXXXXX";
	FILE *fp;
	int fd;

	config_init(&c);
	fd = mkstemp(path);
	fp = fdopen(fd, "w");
	fprintf(fp, "# comment\n\ntrace no\ntag \"[SPAM] \" X-Spam-Flag ^yes\n"
	    "reject-attachment *.exe *.scr\nnotice Withheld: \"quoted\"\n"
	    "quarantine /tmp\n");
	fclose(fp);
	CHECK(config_load(&c, path, err, sizeof(err)) == 0);
	CHECK(!c.trace);
	CHECK_INT(c.ntags, 1);
	CHECK_STR(c.tags[0].prefix, "[SPAM] ");
	CHECK_INT(c.nglobs, 2);
	CHECK_STR(c.notice, "Withheld: \"quoted\"");
	CHECK_STR(c.quarantine, "/tmp");
	CHECK(config_match_tag(&c, "X-Spam-Flag: YES\r\n\r\n", 20) != NULL);
	CHECK(config_match_tag(&c, "X-Spam-Flag: no\r\n\r\nX-Spam-Flag: yes\r\n",
	    37) == NULL);
	CHECK(config_match_name(&c, "A.EXE", 5) != NULL);
	CHECK(config_match_name(&c, "a.exe. . ", 9) != NULL);	/* Windows */
	CHECK(config_match_name(&c, "a.exe\0.txt", 10) != NULL);	/* NUL */
	CHECK(config_match_name(&c, "a.exe.txt", 9) == NULL);
	config_free(&c);

	config_init(&c);
	fp = fopen(path, "w");
	fprintf(fp, "tag \"x\" Subject (unclosed\n");
	fclose(fp);
	CHECK(config_load(&c, path, err, sizeof(err)) == -1);
	config_free(&c);
	config_init(&c);
	fp = fopen(path, "w");
	fprintf(fp, "frobnicate yes\n");
	fclose(fp);
	CHECK(config_load(&c, path, err, sizeof(err)) == -1);
	CHECK(strstr(err, ":1: unknown keyword") != NULL);
	config_free(&c);
	unlink(path);
}

/* Stripping: the spans mime_parts() reports, and the message rebuilt. */
struct spans {
	struct strip_span sp[8];
	size_t n;
	const char *msg;
	int depth0;
};

static int
collect_part(const char *name, size_t len, const char *ent, size_t elen,
    int depth, void *arg)
{
	struct spans *s = arg;

	if (depth == 0) {
		s->depth0++;
		return 0;
	}
	if (s->n < 8) {
		s->sp[s->n].off = (size_t)(ent - s->msg);
		s->sp[s->n].len = elen;
		snprintf(s->sp[s->n].name, sizeof(s->sp[0].name), "%.*s", (int)len,
		    name);
		s->sp[s->n].glob = "*.exe";
		s->n++;
	}
	return 0;
}

static void
test_ref_strip(void)
{
	static const char msg[] =
	    "Subject: invoice\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
	    "--zz\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
	    "--zz\r\nContent-Disposition: attachment; filename=x.exe\r\n\r\nTVqQ\r\n"
	    "--zz--\r\n";
	static const char want[] =
	    "X-T: 1\r\n"
	    "Subject: invoice\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
	    "--zz\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
	    "--zz\r\nContent-Type: text/plain; charset=us-ascii\r\n"
	    "Content-Disposition: inline\r\n\r\n"
	    "[pop3filter-ref removed the attachment \"x.exe\": its name matches *.exe]"
	    "\r\n--zz--\r\n";
	struct spans s = { .msg = msg };
	size_t n;
	char *out;

	mime_parts(msg, sizeof(msg) - 1, collect_part, &s);
	CHECK_INT((int)s.n, 1);
	CHECK_INT(s.depth0, 0);
	/* The span is the part, header and body, without the line end that
	 * belongs to the next delimiter. */
	static const char part[] =
	    "Content-Disposition: attachment; filename=x.exe\r\n\r\nTVqQ";
	CHECK(s.n == 1 && s.sp[0].len == sizeof(part) - 1 &&
	    memcmp(msg + s.sp[0].off, part, sizeof(part) - 1) == 0);
	out = strip_build(msg, sizeof(msg) - 1, s.sp, s.n, "X-T: 1\r\n", &n);
	CHECK(out != NULL && n == sizeof(want) - 1 && memcmp(out, want, n) == 0);
	free(out);
	/* No span: the message as it was, after the header line. */
	out = strip_build(msg, sizeof(msg) - 1, NULL, 0, NULL, &n);
	CHECK(out != NULL && n == sizeof(msg) - 1 && memcmp(out, msg, n) == 0);
	free(out);
	/* A message that is itself the file reports depth 0, never a span. */
	struct spans t = { .msg = "Content-Disposition: attachment; filename=y.exe"
	    "\r\n\r\nMZ\r\n" };
	mime_parts(t.msg, strlen(t.msg), collect_part, &t);
	CHECK(t.n == 0 && t.depth0 == 1);
	/* Strip patterns are separate from reject patterns. */
	struct ref_config c;
	char err[128];
	config_init(&c);
	CHECK_INT(config_add_strip(&c, "*.EXE", err, sizeof(err)), 0);
	CHECK(config_match_strip(&c, "x.exe. ", 7) != NULL);
	CHECK(config_match_name(&c, "x.exe", 5) == NULL);
	config_free(&c);
}

int
main(void)
{
	snprintf(sock_path, sizeof(sock_path), "/tmp/unit-libfilter-%ld.sock",
	    (long)getpid());
	RUN(test_handshake_and_sync_accept);
	RUN(test_async_from_timer);
	RUN(test_cancel);
	RUN(test_misuse_refused);
	RUN(test_hostile_proxy);
	RUN(test_drain);
	RUN(test_stale_socket);
	RUN(test_header_helpers);
	RUN(test_mime_names);
	RUN(test_ref_rules);
	RUN(test_ref_strip);
	unlink(sock_path);
	return UNIT_DONE();
}
