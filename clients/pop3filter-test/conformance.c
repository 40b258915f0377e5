/* conformance.c: pop3filter-test --conformance: checks a filter against
 * protocol/PROTOCOL.md, one PASS or FAIL line per check, playing the proxy. */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tool.h"

#define SAMPLE "From: sender@example.org\r\nTo: alice@example.org\r\n" \
	"Subject: conformance test\r\nMessage-ID: <c1@pop3filter-test>\r\n" \
	"\r\nHello, filter.\r\n"

struct ctx {
	const struct opts	*o;
	int			 pass, fail;
	struct fp_params	 p;		/* from the first handshake */
	uint64_t		 next_id;
	unsigned		 verdicts, bad_verdicts;
	char			 bad_first[256];
	uint64_t		 seen[64];	/* ids of recent verdicts */
	unsigned		 nseen;
	uint64_t		 pong_seen;	/* last pong met while waiting */
};

static bool
seen_verdict(const struct ctx *x, uint64_t id)
{
	unsigned i;

	for (i = 0; i < 64 && i < x->nseen; i++)
		if (x->seen[i] == id)
			return true;
	return false;
}

static const uint32_t V1[] = { 1 };

__attribute__((format(printf, 4, 5)))
static void
result(struct ctx *x, bool ok, const char *name, const char *fmt, ...)
{
	va_list ap;

	printf("%s %s: ", ok ? "PASS" : "FAIL", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (ok)
		x->pass++;
	else
		x->fail++;
}

static void
pause_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static const char *
next_why(int rc, const struct tconn *c, const struct fp_err *err)
{
	return rc == 0 ? "no answer in time" : rc == -2 ? c->eof_why :
	    rc == -1 ? err->message : "?";
}

/* Connect and complete the handshake offering these versions. */
static int
open_ready(struct ctx *x, struct tconn *c, const uint32_t *vers, size_t nv,
    struct fp_params *p, char *why, size_t whylen)
{
	struct fp_hello h;
	struct fp_buf b = { 0 };
	struct fp_msg m;
	struct fp_err err;
	int rc;

	if (tc_open(c, x->o->socket, why, whylen) == -1)
		return -1;
	tc_hello(&h, vers, nv);
	fp_encode_hello(&b, &h);
	rc = tc_send_buf(c, &b);
	fp_buf_free(&b);
	if (rc == -1) {
		snprintf(why, whylen, "cannot send hello");
		goto fail;
	}
	if ((rc = tc_next(c, &m, &err, x->o->timeout_ms)) != 1) {
		snprintf(why, whylen, "hello: %s", next_why(rc, c, &err));
		goto fail;
	}
	if (m.type != FP_MSG_HELLO_ACK) {
		snprintf(why, whylen, "hello answered with %s%s%.*s",
		    fp_msg_type_name(m.type), m.type == FP_MSG_ERROR ? " " : "",
		    m.type == FP_MSG_ERROR ? (int)m.error.code.len : 0,
		    m.type == FP_MSG_ERROR ? m.error.code.ptr : "");
		goto fail;
	}
	if (fp_negotiate(&h, &m.hello_ack, p, &err) == -1) {
		snprintf(why, whylen, "negotiation: %s", err.message);
		goto fail;
	}
	return 0;
fail:
	tc_close(c);
	return -1;
}

/* Send one sample request; returns its id. */
static uint64_t
send_sample(struct ctx *x, struct tconn *c)
{
	struct fp_buf b = { 0 };
	uint64_t id = ++x->next_id;

	tool_request(&b, id, id, SAMPLE, sizeof(SAMPLE) - 1, false, 0);
	tc_send_buf(c, &b);
	fp_buf_free(&b);
	return id;
}

static void
note_verdict(struct ctx *x, const struct fp_verdict *v, const struct fp_params *p)
{
	struct fp_err err;

	x->verdicts++;
	x->seen[x->nseen++ % 64] = v->id;
	if (fp_verdict_check(v, p->actions, &err) == -1) {
		if (x->bad_verdicts++ == 0)
			snprintf(x->bad_first, sizeof(x->bad_first), "id %llu: %s",
			    (unsigned long long)v->id, err.message);
	}
}

/* Wait for the answer (verdict, or error with id) to one of ids[0..n). Pings
 * from the filter are answered; pongs are returned to the caller via
 * *pong_id if asked. Returns the index answered, or -1 with why. *is_error
 * tells a verdict from an error. */
static int
await_any(struct ctx *x, struct tconn *c, const struct fp_params *p,
    const uint64_t *ids, size_t n, bool *is_error, char *code, size_t codelen,
    char *why, size_t whylen, int timeout_ms)
{
	struct fp_msg m;
	struct fp_err err;
	struct fp_buf b = { 0 };
	uint64_t id;
	size_t i;
	int rc;

	for (;;) {
		if ((rc = tc_next(c, &m, &err, timeout_ms)) != 1) {
			snprintf(why, whylen, "%s", next_why(rc, c, &err));
			return -1;
		}
		if (m.type == FP_MSG_PING) {
			fp_encode_pong(&b, m.ping.id);
			tc_send_buf(c, &b);
			fp_buf_free(&b);
			continue;
		}
		if (m.type == FP_MSG_PONG)
			x->pong_seen = m.pong.id;
		if (m.type == FP_MSG_DRAIN || m.type == FP_MSG_PONG)
			continue;
		if (m.type == FP_MSG_ERROR && !m.error.has_id) {
			snprintf(why, whylen, "connection error %.*s: %.*s",
			    (int)m.error.code.len, m.error.code.ptr,
			    (int)m.error.message.len,
			    m.error.message.ptr ? m.error.message.ptr : "");
			return -1;
		}
		if (m.type != FP_MSG_VERDICT && m.type != FP_MSG_ERROR) {
			snprintf(why, whylen, "unexpected %s", fp_msg_type_name(m.type));
			return -1;
		}
		id = m.type == FP_MSG_VERDICT ? m.verdict.id : m.error.id;
		for (i = 0; i < n; i++)
			if (ids[i] == id)
				break;
		if (i == n) {
			snprintf(why, whylen, "answer for id %llu, not asked for",
			    (unsigned long long)id);
			return -1;
		}
		*is_error = m.type == FP_MSG_ERROR;
		if (code != NULL)
			snprintf(code, codelen, "%.*s", *is_error ?
			    (int)m.error.code.len : 0, *is_error ?
			    m.error.code.ptr : "");
		if (!*is_error)
			note_verdict(x, &m.verdict, p);
		return (int)i;
	}
}

static int
await_one(struct ctx *x, struct tconn *c, const struct fp_params *p,
    uint64_t id, bool *is_error, char *why, size_t whylen)
{
	return await_any(x, c, p, &id, 1, is_error, NULL, 0, why, whylen,
	    x->o->timeout_ms) == 0 ? 0 : -1;
}

/* Expect the pong for nonce (answers to requests are noted and skipped). */
static int
await_pong(struct ctx *x, struct tconn *c, uint64_t nonce, char *why,
    size_t whylen)
{
	struct fp_msg m;
	struct fp_err err;
	int rc;

	if (x->pong_seen == nonce)
		return 0;
	for (;;) {
		if ((rc = tc_next(c, &m, &err, x->o->timeout_ms)) != 1) {
			snprintf(why, whylen, "ping %llu: %s",
			    (unsigned long long)nonce, next_why(rc, c, &err));
			return -1;
		}
		if (m.type == FP_MSG_PONG) {
			if (m.pong.id == nonce)
				return 0;
			snprintf(why, whylen, "pong %llu for ping %llu",
			    (unsigned long long)m.pong.id,
			    (unsigned long long)nonce);
			return -1;
		}
		if (m.type == FP_MSG_VERDICT)
			note_verdict(x, &m.verdict, &x->p);
	}
}

/* Ping and expect the matching pong. */
static int
ping_ok(struct ctx *x, struct tconn *c, uint64_t nonce, char *why, size_t whylen)
{
	struct fp_buf b = { 0 };
	int rc;

	fp_encode_ping(&b, nonce);
	rc = tc_send_buf(c, &b);
	fp_buf_free(&b);
	if (rc == -1) {
		snprintf(why, whylen, "cannot send ping (connection closed?)");
		return -1;
	}
	return await_pong(x, c, nonce, why, whylen);
}

/* ---- the checks ---------------------------------------------------------- */

static void
check_handshake(struct ctx *x)
{
	static const uint32_t v1_99[] = { 1, 99 }, v99_1[] = { 99, 1 };
	struct tconn c;
	struct fp_params p;
	char why[256];

	if (open_ready(x, &c, V1, 1, &x->p, why, sizeof(why)) == -1) {
		result(x, false, "handshake", "offering [1]: %s", why);
		return;
	}
	tc_close(&c);
	result(x, true, "handshake", "offering [1]: version %u, window %u, "
	    "filter max_frame %u, max_message_size %llu, actions 0x%x",
	    x->p.version, x->p.window, x->p.filter_max_frame,
	    (unsigned long long)x->p.max_message_size, x->p.actions);
	if (open_ready(x, &c, v1_99, 2, &p, why, sizeof(why)) == -1) {
		result(x, false, "version-choice", "offering [1, 99]: %s", why);
		return;
	}
	tc_close(&c);
	if (open_ready(x, &c, v99_1, 2, &p, why, sizeof(why)) == -1) {
		result(x, false, "version-choice", "offering [99, 1]: %s", why);
		return;
	}
	tc_close(&c);
	result(x, true, "version-choice", "chose 1 from [1, 99] and [99, 1]");
}

/* The next frame must be an error with this code, then the filter closes. */
static void
expect_error_close(struct ctx *x, struct tconn *c, const char *code,
    const char *name, const char *what)
{
	struct fp_msg m;
	struct fp_err err;
	int rc;

	rc = tc_next(c, &m, &err, x->o->timeout_ms);
	if (rc != 1 || m.type != FP_MSG_ERROR || !fp_str_eq(m.error.code, code)) {
		result(x, false, name, "%s: expected error \"%s\", got %s", what,
		    code, rc != 1 ? next_why(rc, c, &err) : m.type == FP_MSG_ERROR ?
		    m.error.code.ptr : fp_msg_type_name(m.type));
		tc_close(c);
		return;
	}
	rc = tc_next(c, &m, &err, x->o->timeout_ms);
	tc_close(c);
	result(x, rc == -2, name, "%s: error \"%s\"%s", what, code,
	    rc == -2 ? ", then closed" : ", but the connection stayed open");
}

static void
check_version_none(struct ctx *x)
{
	static const uint32_t v99[] = { 99 };
	struct tconn c;
	struct fp_hello h;
	struct fp_buf b = { 0 };
	char why[256];

	if (tc_open(&c, x->o->socket, why, sizeof(why)) == -1) {
		result(x, false, "version-none", "%s", why);
		return;
	}
	tc_hello(&h, v99, 1);
	fp_encode_hello(&b, &h);
	tc_send_buf(&c, &b);
	fp_buf_free(&b);
	expect_error_close(x, &c, "version", "version-none", "offering [99]");
}

static void
check_wait_hello(struct ctx *x)
{
	struct tconn c;
	struct fp_buf b = { 0 };
	struct fp_msg m;
	struct fp_err err;
	char why[256];
	int rc;

	if (tc_open(&c, x->o->socket, why, sizeof(why)) == -1) {
		result(x, false, "hello-first", "%s", why);
		return;
	}
	/* The filter must stay silent until it has our hello. */
	if ((rc = tc_next(&c, &m, &err, 200)) != 0) {
		result(x, false, "hello-first", "the filter spoke before hello (%s)",
		    rc == 1 ? fp_msg_type_name(m.type) : next_why(rc, &c, &err));
		tc_close(&c);
		return;
	}
	fp_encode_ping(&b, 1);
	tc_send_buf(&c, &b);
	fp_buf_free(&b);
	expect_error_close(x, &c, "bad_frame", "hello-first",
	    "silent until hello; ping before hello");
}

/* A hello and a request, hand-built, carrying keys and capability names that
 * a later revision might add. */
static void
check_unknown_keys(struct ctx *x)
{
	struct tconn c;
	struct fp_buf b = { 0 };
	struct fp_msg m;
	struct fp_err err;
	struct fp_params p;
	struct fp_hello h;
	char why[256];
	size_t st;
	uint64_t id;
	bool is_err;
	int rc;

	if (tc_open(&c, x->o->socket, why, sizeof(why)) == -1) {
		result(x, false, "unknown-keys", "%s", why);
		return;
	}
	st = mp_frame_begin(&b);
	mp_map(&b, 8);
	mp_str(&b, "x-future-key"); mp_map(&b, 1);
	mp_str(&b, "nested"); mp_array(&b, 2); mp_uint(&b, 1); mp_nil(&b);
	mp_str(&b, "type"); mp_str(&b, "hello");
	mp_str(&b, "versions"); mp_array(&b, 1); mp_uint(&b, 1);
	mp_str(&b, "proxy"); mp_str(&b, TOOL_NAME);
	mp_str(&b, "capabilities"); mp_array(&b, 4);
	mp_str(&b, "retr"); mp_str(&b, "x-teleport"); mp_str(&b, "edit_headers");
	mp_str(&b, "reject");
	mp_uint(&b, 42); mp_str(&b, "a key that is not a str");
	mp_str(&b, "max_frame"); mp_uint(&b, TOOL_MAX_FRAME);
	mp_str(&b, "max_inflight"); mp_uint(&b, 8);
	mp_frame_end(&b, st);
	tc_send_buf(&c, &b);
	rc = tc_next(&c, &m, &err, x->o->timeout_ms);
	if (rc != 1 || m.type != FP_MSG_HELLO_ACK) {
		result(x, false, "unknown-keys", "hello with unknown keys: %s",
		    rc == 1 ? fp_msg_type_name(m.type) : next_why(rc, &c, &err));
		goto done;
	}
	h = (struct fp_hello){ .versions = V1, .nversions = 1,
	    .caps = FP_CAP_RETR | FP_CAP_EDIT_HEADERS | FP_CAP_REJECT,
	    .max_frame = TOOL_MAX_FRAME, .max_inflight = 8 };
	if (fp_negotiate(&h, &m.hello_ack, &p, &err) == -1) {
		result(x, false, "unknown-keys", "hello_ack: %s", err.message);
		goto done;
	}
	fp_buf_reset(&b);
	id = ++x->next_id;
	st = mp_frame_begin(&b);
	mp_map(&b, 7);
	mp_str(&b, "type"); mp_str(&b, "request");
	mp_str(&b, "id"); mp_uint(&b, id);
	mp_str(&b, "x-trace"); mp_str(&b, "abc");
	mp_str(&b, "deadline_ms"); mp_uint(&b, 20000);
	mp_str(&b, "session"); mp_map(&b, 8);
	mp_str(&b, "id"); mp_str(&b, "t0000002");
	mp_str(&b, "client"); mp_str(&b, "[::1]:40111");
	mp_str(&b, "user"); mp_str(&b, "bob");
	mp_str(&b, "x-geo"); mp_map(&b, 1); mp_str(&b, "cc"); mp_str(&b, "ZZ");
	mp_str(&b, "upstream_host"); mp_str(&b, "localhost");
	mp_str(&b, "upstream_port"); mp_uint(&b, 110);
	mp_str(&b, "tls_client"); mp_bool(&b, false);
	mp_str(&b, "tls_upstream"); mp_bool(&b, true);
	mp_str(&b, "message"); mp_map(&b, 5);
	mp_str(&b, "number"); mp_uint(&b, 3);
	mp_str(&b, "size"); mp_uint(&b, sizeof(SAMPLE) - 1);
	mp_str(&b, "uidl"); mp_nil(&b);
	mp_str(&b, "command"); mp_str(&b, "RETR");
	mp_str(&b, "x-flags"); mp_array(&b, 1); mp_str(&b, "\\Seen");
	mp_str(&b, "body"); mp_bin(&b, SAMPLE, sizeof(SAMPLE) - 1);
	mp_frame_end(&b, st);
	tc_send_buf(&c, &b);
	if (await_one(x, &c, &p, id, &is_err, why, sizeof(why)) == -1) {
		result(x, false, "unknown-keys", "request with unknown keys: %s", why);
		goto done;
	}
	result(x, !is_err, "unknown-keys", "hello and request with unknown keys, "
	    "a non-str key and an unknown capability: %s",
	    is_err ? "answered with an error" : "verdict");
done:
	fp_buf_free(&b);
	tc_close(&c);
}

static void
check_split(struct ctx *x)
{
	struct tconn c;
	struct fp_hello h;
	struct fp_buf hb = { 0 }, rb = { 0 };
	struct fp_params p;
	struct fp_msg m;
	struct fp_err err;
	char why[256];
	size_t k, bad_at = 0;
	uint64_t id;
	bool is_err, ok = true;
	int rc;

	/* The hello, cut at every position, each on a new connection. */
	tc_hello(&h, V1, 1);
	fp_encode_hello(&hb, &h);
	for (k = 1; k < hb.len && ok; k++) {
		if (tc_open(&c, x->o->socket, why, sizeof(why)) == -1) {
			ok = false;
			break;
		}
		tc_send(&c, hb.data, k);
		pause_ms(2);
		tc_send(&c, hb.data + k, hb.len - k);
		rc = tc_next(&c, &m, &err, x->o->timeout_ms);
		if (rc != 1 || m.type != FP_MSG_HELLO_ACK) {
			snprintf(why, sizeof(why), "%s", rc == 1 ?
			    fp_msg_type_name(m.type) : next_why(rc, &c, &err));
			ok = false;
			bad_at = k;
		}
		tc_close(&c);
	}
	if (ok)
		result(x, true, "split-hello", "hello of %zu octets cut at each "
		    "of %zu positions: hello_ack every time", hb.len, hb.len - 1);
	else
		result(x, false, "split-hello", "hello cut at %zu: %s", bad_at, why);

	if (open_ready(x, &c, V1, 1, &p, why, sizeof(why)) == -1) {
		result(x, false, "split-request", "%s", why);
		goto out;
	}
	/* One octet per write, with pauses so the filter sees each alone. */
	id = ++x->next_id;
	tool_request(&rb, id, id, SAMPLE, sizeof(SAMPLE) - 1, false, 0);
	for (k = 0; k < rb.len; k++) {
		tc_send(&c, rb.data + k, 1);
		pause_ms(1);
	}
	if (await_one(x, &c, &p, id, &is_err, why, sizeof(why)) == -1)
		result(x, false, "split-bytewise", "request sent one octet at a "
		    "time: %s", why);
	else
		result(x, true, "split-bytewise", "request of %zu octets sent one "
		    "octet at a time: answered", rb.len);
	/* Then cut in two at every position. */
	ok = true;
	for (k = 1; k < rb.len && ok; k++) {
		fp_buf_reset(&rb);
		id = ++x->next_id;
		tool_request(&rb, id, id, SAMPLE, sizeof(SAMPLE) - 1, false, 0);
		tc_send(&c, rb.data, k);
		pause_ms(1);
		tc_send(&c, rb.data + k, rb.len - k);
		if (await_one(x, &c, &p, id, &is_err, why, sizeof(why)) == -1) {
			ok = false;
			bad_at = k;
		}
	}
	if (ok)
		result(x, true, "split-request", "request cut at each of %zu "
		    "positions: answered every time", rb.len - 1);
	else
		result(x, false, "split-request", "request cut at %zu: %s",
		    bad_at, why);
	/* Several frames in one write. */
	fp_buf_reset(&rb);
	{
		uint64_t ids[3];
		size_t got = 0, i;
		int idx;

		for (i = 0; i < 3; i++) {
			ids[i] = ++x->next_id;
			tool_request(&rb, ids[i], ids[i], SAMPLE, sizeof(SAMPLE) - 1,
			    false, 0);
		}
		fp_encode_ping(&rb, 77);
		tc_send_buf(&c, &rb);
		ok = true;
		for (i = 0; i < 3 && ok; i++) {
			idx = await_any(x, &c, &p, ids, 3, &is_err, NULL, 0, why,
			    sizeof(why), x->o->timeout_ms);
			if (idx < 0)
				ok = false;
			else {
				ids[idx] = UINT64_MAX;
				got++;
			}
		}
		if (ok && await_pong(x, &c, 77, why, sizeof(why)) == -1)
			ok = false;
		result(x, ok, "merged-frames", "three requests and a ping in "
		    "one write: %s", ok ? "all answered" : why);
	}
	tc_close(&c);
out:
	fp_buf_free(&hb);
	fp_buf_free(&rb);
}

static void
check_inflight(struct ctx *x)
{
	struct tconn c;
	struct fp_params p;
	struct fp_buf b = { 0 };
	uint64_t *ids, *order;
	size_t n, i, got = 0;
	char why[256];
	bool is_err, ooo = false;
	int idx;

	if (open_ready(x, &c, V1, 1, &p, why, sizeof(why)) == -1) {
		result(x, false, "inflight", "%s", why);
		return;
	}
	n = p.window < 64 ? p.window : 64;
	ids = calloc(n, sizeof(*ids));
	order = calloc(n, sizeof(*order));
	for (i = 0; i < n; i++) {
		ids[i] = ++x->next_id;
		tool_request(&b, ids[i], ids[i], SAMPLE, sizeof(SAMPLE) - 1,
		    false, 0);
	}
	tc_send_buf(&c, &b);
	for (got = 0; got < n; got++) {
		idx = await_any(x, &c, &p, ids, n, &is_err, NULL, 0, why,
		    sizeof(why), x->o->timeout_ms);
		if (idx < 0)
			break;
		if ((size_t)idx != got)
			ooo = true;
		ids[idx] = UINT64_MAX;	/* a second answer is "not asked for" */
	}
	if (got == n && ping_ok(x, &c, 4242, why, sizeof(why)) == -1)
		got = n + 1;
	result(x, got == n, "inflight", "%zu requests in flight (the window): "
	    "%s", n, got != n ? why : ooo ? "each answered once, out of order" :
	    "each answered once, in order");
	free(ids);
	free(order);
	fp_buf_free(&b);
	tc_close(&c);
}

static void
check_large(struct ctx *x)
{
	struct tconn c;
	struct fp_params p;
	struct fp_buf body = { 0 }, b = { 0 };
	char why[256], line[128];
	size_t limit, n = 0;
	uint64_t id;
	bool is_err, capped = false;
	int k;

	if (open_ready(x, &c, V1, 1, &p, why, sizeof(why)) == -1) {
		result(x, false, "large-message", "%s", why);
		return;
	}
	/* The request's other fields take well under 2 KiB here. */
	limit = p.filter_max_frame - 2048;
	if (p.max_message_size != 0 && p.max_message_size < limit)
		limit = (size_t)p.max_message_size;
	if (limit > x->o->large_cap) {
		limit = x->o->large_cap;
		capped = true;
	}
	fp_buf_append(&body, "From: big@example.org\r\nTo: alice@example.org\r\n"
	    "Subject: large conformance message\r\n\r\n", 86);
	while (body.len < limit) {
		k = snprintf(line, sizeof(line), "line %08zu "
		    "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTU\r\n",
		    n++);
		fp_buf_append(&body, line, (size_t)k);
	}
	body.len = limit;
	if (limit >= 2)
		memcpy(body.data + limit - 2, "\r\n", 2);
	id = ++x->next_id;
	tool_request(&b, id, id, body.data, body.len, false, 0);
	if (fp_frame_len(b.data) > p.filter_max_frame) {
		result(x, false, "large-message", "tool error: frame %u over %u",
		    fp_frame_len(b.data), p.filter_max_frame);
		goto done;
	}
	tc_send_buf(&c, &b);
	if (await_any(x, &c, &p, &id, 1, &is_err, NULL, 0, why, sizeof(why),
	    x->o->timeout_ms * 6) != 0) {
		result(x, false, "large-message", "%zu octets: %s", limit, why);
		goto done;
	}
	result(x, !is_err, "large-message", "%zu octets (frame %u of the "
	    "filter's %u%s): %s", limit, fp_frame_len(b.data), p.filter_max_frame,
	    capped ? ", capped by --large-cap" : "", is_err ? "error" : "verdict");
done:
	fp_buf_free(&body);
	fp_buf_free(&b);
	tc_close(&c);
}

struct bad_frame {
	const char	*what;
	const char	*octets;	/* the msgpack part */
	size_t		 len;
};

#define BF(w, s)	{ w, s, sizeof(s) - 1 }

static void
check_malformed(struct ctx *x)
{
	static const struct bad_frame bad[] = {
		BF("reserved octet 0xc1", "\xc1"),
		BF("an array, not a map", "\x92\x01\x02"),
		BF("octets after the map",
		    "\x82\xa4type\xa4ping\xa2id\x01\x00"),
		BF("map cut short", "\x82\xa4type\xa4ping"),
		BF("no type", "\x81\xa2id\x01"),
		BF("type not a str", "\x82\xa4type\x07\xa2id\x01"),
		BF("duplicate key", "\x83\xa4type\xa4ping\xa2id\x01\xa2id\x02"),
		BF("array claiming 2^32-1 entries", "\xdd\xff\xff\xff\xff"),
		BF("string longer than the frame", "\x81\xdb\x7f\xff\xff\xff"),
		BF("ping id negative", "\x82\xa4type\xa4ping\xa2id\xff"),
		BF("nested 40 deep", "\x81\xa4type"
		    "\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91"
		    "\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91"
		    "\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x01"),
	};
	struct tconn c;
	struct fp_params p;
	struct fp_buf b = { 0 };
	struct fp_msg m;
	struct fp_err err;
	char why[256];
	size_t i, st;
	int rc;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (open_ready(x, &c, V1, 1, &p, why, sizeof(why)) == -1) {
			result(x, false, "malformed", "%s: %s", bad[i].what, why);
			continue;
		}
		fp_buf_reset(&b);
		st = mp_frame_begin(&b);
		mp_raw(&b, bad[i].octets, bad[i].len);
		mp_frame_end(&b, st);
		tc_send_buf(&c, &b);
		rc = tc_next(&c, &m, &err, x->o->timeout_ms);
		if (rc != 1 || m.type != FP_MSG_ERROR) {
			result(x, false, "malformed", "%s: expected an error frame, "
			    "got %s", bad[i].what, rc == 1 ?
			    fp_msg_type_name(m.type) : next_why(rc, &c, &err));
		} else if (!fp_str_eq(m.error.code, "bad_frame")) {
			result(x, false, "malformed", "%s: error \"%.*s\", expected "
			    "\"bad_frame\"", bad[i].what, (int)m.error.code.len,
			    m.error.code.ptr);
		} else if (ping_ok(x, &c, 900 + i, why, sizeof(why)) == -1) {
			result(x, false, "malformed", "%s: error \"bad_frame\", but "
			    "the connection did not go on: %s", bad[i].what, why);
		} else {
			result(x, true, "malformed", "%s: error \"bad_frame\", "
			    "connection goes on", bad[i].what);
		}
		tc_close(&c);
	}
	/* A zero length frame is malformed too (length MUST be at least 1). */
	if (open_ready(x, &c, V1, 1, &p, why, sizeof(why)) == 0) {
		tc_send(&c, "\0\0\0\0", 4);
		rc = tc_next(&c, &m, &err, x->o->timeout_ms);
		result(x, rc == 1 && m.type == FP_MSG_ERROR &&
		    ping_ok(x, &c, 990, why, sizeof(why)) == 0, "malformed",
		    "empty frame: %s", rc == 1 && m.type == FP_MSG_ERROR ?
		    "error, connection goes on" : "no error frame");
		tc_close(&c);
	}
	if (open_ready(x, &c, V1, 1, &p, why, sizeof(why)) == -1)
		result(x, false, "alive-after-malformed", "%s", why);
	else {
		tc_close(&c);
		result(x, true, "alive-after-malformed", "a fresh connection "
		    "completes the handshake");
	}
	fp_buf_free(&b);
}

static void
check_oversized(struct ctx *x)
{
	struct tconn c;
	struct fp_params p;
	struct fp_msg m;
	struct fp_err err;
	unsigned char hdr[8];
	uint32_t len;
	char why[256];
	int rc;

	if (open_ready(x, &c, V1, 1, &p, why, sizeof(why)) == -1) {
		result(x, false, "oversized-frame", "%s", why);
		return;
	}
	if (p.filter_max_frame == UINT32_MAX) {
		tc_close(&c);
		result(x, true, "oversized-frame", "not applicable: the filter "
		    "takes any frame length");
		return;
	}
	len = p.filter_max_frame + 1;
	hdr[0] = (unsigned char)(len >> 24);
	hdr[1] = (unsigned char)(len >> 16);
	hdr[2] = (unsigned char)(len >> 8);
	hdr[3] = (unsigned char)len;
	memcpy(hdr + 4, "\x82\xa4ty", 4);
	tc_send(&c, hdr, sizeof(hdr));
	rc = tc_next(&c, &m, &err, x->o->timeout_ms);
	if (rc != 1 || m.type != FP_MSG_ERROR || !fp_str_eq(m.error.code, "too_large")) {
		result(x, false, "oversized-frame", "length %u over max_frame %u: "
		    "expected error \"too_large\", got %s", len, p.filter_max_frame,
		    rc == 1 ? fp_msg_type_name(m.type) : next_why(rc, &c, &err));
		tc_close(&c);
		return;
	}
	rc = tc_next(&c, &m, &err, x->o->timeout_ms);
	tc_close(&c);
	if (rc != -2) {
		result(x, false, "oversized-frame", "error \"too_large\" but the "
		    "connection stayed open");
		return;
	}
	if (open_ready(x, &c, V1, 1, &p, why, sizeof(why)) == -1) {
		result(x, false, "oversized-frame", "afterwards: %s", why);
		return;
	}
	tc_close(&c);
	result(x, true, "oversized-frame", "length %u: error \"too_large\", "
	    "closed; a fresh connection works", len);
}

static void
check_unknown_type(struct ctx *x)
{
	struct tconn c;
	struct fp_params p;
	struct fp_buf b = { 0 };
	struct fp_msg m;
	struct fp_err err;
	char why[256];
	size_t st;
	int rc, i;
	bool ok = true;
	static const char *const what[] = { "unknown type \"x-future\"",
	    "a verdict (wrong direction)" };

	if (open_ready(x, &c, V1, 1, &p, why, sizeof(why)) == -1) {
		result(x, false, "unknown-type", "%s", why);
		return;
	}
	for (i = 0; i < 2 && ok; i++) {
		fp_buf_reset(&b);
		st = mp_frame_begin(&b);
		if (i == 0) {
			mp_map(&b, 2);
			mp_str(&b, "type"); mp_str(&b, "x-future");
			mp_str(&b, "id"); mp_uint(&b, 5);
		} else {
			mp_map(&b, 3);
			mp_str(&b, "type"); mp_str(&b, "verdict");
			mp_str(&b, "id"); mp_uint(&b, 1);
			mp_str(&b, "action"); mp_str(&b, "accept");
		}
		mp_frame_end(&b, st);
		tc_send_buf(&c, &b);
		rc = tc_next(&c, &m, &err, x->o->timeout_ms);
		if (rc != 1 || m.type != FP_MSG_ERROR ||
		    !fp_str_eq(m.error.code, "unsupported") || m.error.has_id) {
			snprintf(why, sizeof(why), "%s: expected error \"unsupported\" "
			    "without id, got %s", what[i], rc == 1 ?
			    (m.type == FP_MSG_ERROR ? m.error.code.ptr :
			    fp_msg_type_name(m.type)) : next_why(rc, &c, &err));
			ok = false;
		} else if (ping_ok(x, &c, 31 + (uint64_t)i, why, sizeof(why)) == -1) {
			ok = false;
		}
	}
	result(x, ok, "unknown-type", "unknown type and wrong direction: %s",
	    ok ? "error \"unsupported\", connection goes on" : why);
	fp_buf_free(&b);
	tc_close(&c);
}

static void
check_bad_request(struct ctx *x)
{
	struct tconn c;
	struct fp_params p;
	struct fp_buf b = { 0 };
	char why[256], code[64];
	uint64_t id;
	size_t st;
	bool is_err;

	if (open_ready(x, &c, V1, 1, &p, why, sizeof(why)) == -1) {
		result(x, false, "bad-request", "%s", why);
		return;
	}
	id = ++x->next_id;
	st = mp_frame_begin(&b);
	mp_map(&b, 6);
	mp_str(&b, "type"); mp_str(&b, "request");
	mp_str(&b, "id"); mp_uint(&b, id);
	mp_str(&b, "deadline_ms"); mp_uint(&b, 20000);
	mp_str(&b, "session"); mp_map(&b, 7);
	mp_str(&b, "id"); mp_str(&b, "t3");
	mp_str(&b, "client"); mp_str(&b, "127.0.0.1:1");
	mp_str(&b, "user"); mp_str(&b, "alice");
	mp_str(&b, "upstream_host"); mp_str(&b, "127.0.0.1");
	mp_str(&b, "upstream_port"); mp_uint(&b, 110);
	mp_str(&b, "tls_client"); mp_bool(&b, false);
	mp_str(&b, "tls_upstream"); mp_bool(&b, false);
	mp_str(&b, "message"); mp_map(&b, 3);
	mp_str(&b, "number"); mp_str(&b, "one");	/* must be a uint */
	mp_str(&b, "size"); mp_uint(&b, 5);
	mp_str(&b, "command"); mp_str(&b, "RETR");
	mp_str(&b, "body"); mp_bin(&b, "x\r\n\r\n", 5);
	mp_frame_end(&b, st);
	tc_send_buf(&c, &b);
	if (await_any(x, &c, &p, &id, 1, &is_err, code, sizeof(code), why,
	    sizeof(why), x->o->timeout_ms) != 0)
		result(x, false, "bad-request", "request with message.number a "
		    "str: %s", why);
	else if (!is_err || strcmp(code, "bad_frame") != 0)
		result(x, false, "bad-request", "request with message.number a "
		    "str: expected error \"bad_frame\" for id %llu, got %s %s",
		    (unsigned long long)id, is_err ? "error" : "a verdict", code);
	else if (ping_ok(x, &c, 55, why, sizeof(why)) == -1)
		result(x, false, "bad-request", "connection did not go on: %s", why);
	else
		result(x, true, "bad-request", "request with a wrongly typed field: "
		    "error \"bad_frame\" for that id, connection goes on");
	fp_buf_free(&b);
	tc_close(&c);
}

static void
check_ping_cancel(struct ctx *x)
{
	struct tconn c;
	struct fp_params p;
	struct fp_buf b = { 0 };
	struct fp_msg m;
	struct fp_err err;
	char why[256];
	uint64_t id, id2, nonce = (1ull << 40) + 5;
	bool is_err, ok;
	int rc;

	if (open_ready(x, &c, V1, 1, &p, why, sizeof(why)) == -1) {
		result(x, false, "ping", "%s", why);
		return;
	}
	ok = ping_ok(x, &c, nonce, why, sizeof(why)) == 0;
	if (ok) {
		/* A ping behind a request must be answered too. */
		id = send_sample(x, &c);
		ok = ping_ok(x, &c, 6, why, sizeof(why)) == 0;
		/* The request may have been answered before or after the pong. */
		if (ok && !seen_verdict(x, id))
			ok = await_one(x, &c, &p, id, &is_err, why, sizeof(why)) == 0;
	}
	result(x, ok, "ping", "ping %llu, also with a request in flight: %s",
	    (unsigned long long)nonce, ok ? "pong with the same id" : why);

	/* Cancel right behind its request: an answer may cross it, but the
	 * filter must go on serving. */
	id = ++x->next_id;
	tool_request(&b, id, id, SAMPLE, sizeof(SAMPLE) - 1, false, 0);
	fp_encode_cancel(&b, id);
	tc_send_buf(&c, &b);
	ok = true;
	id2 = send_sample(x, &c);
	for (;;) {
		rc = tc_next(&c, &m, &err, x->o->timeout_ms);
		if (rc != 1) {
			snprintf(why, sizeof(why), "after cancel: %s",
			    next_why(rc, &c, &err));
			ok = false;
			break;
		}
		if (m.type == FP_MSG_VERDICT && m.verdict.id == id)
			continue;	/* crossed the cancel: allowed */
		if (m.type == FP_MSG_VERDICT && m.verdict.id == id2) {
			note_verdict(x, &m.verdict, &p);
			break;
		}
		if (m.type == FP_MSG_ERROR && m.error.has_id && m.error.id == id2)
			break;
		if (m.type == FP_MSG_ERROR) {
			snprintf(why, sizeof(why), "error \"%.*s\" after cancel",
			    (int)m.error.code.len, m.error.code.ptr);
			ok = false;
			break;
		}
	}
	if (ok)
		ok = ping_ok(x, &c, 8, why, sizeof(why)) == 0;
	result(x, ok, "cancel", "cancel right behind its request: %s", ok ?
	    "no error, the next request is answered" : why);
	fp_buf_free(&b);
	tc_close(&c);
}

static bool
pid_gone(long pid)
{
	char path[64], buf[512], *rp;
	FILE *fp;
	size_t n;

	if (kill((pid_t)pid, 0) == -1 && errno == ESRCH)
		return true;
	/* A zombie has exited; its parent has not reaped it yet. */
	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	if ((fp = fopen(path, "r")) == NULL)
		return true;
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	rp = strrchr(buf, ')');
	return rp != NULL && rp[1] == ' ' && rp[2] == 'Z';
}

static void
check_drain(struct ctx *x)
{
	struct tconn c;
	struct fp_params p;
	struct fp_buf b = { 0 };
	struct fp_msg m;
	struct fp_err err;
	uint64_t ids[10];
	size_t n, i, got = 0, total, post;
	char why[256] = "";
	bool drained = false, closed = false, ok;
	int rc, t;

	if (open_ready(x, &c, V1, 1, &p, why, sizeof(why)) == -1) {
		result(x, false, "drain", "%s", why);
		return;
	}
	/* At most the window in all, two of them (if it allows) after kill. */
	total = p.window < 10 ? p.window : 10;
	post = total > 2 ? 2 : total - 1;
	n = total - post;
	for (i = 0; i < n; i++) {
		ids[i] = ++x->next_id;
		tool_request(&b, ids[i], ids[i], SAMPLE, sizeof(SAMPLE) - 1,
		    false, 0);
	}
	tc_send_buf(&c, &b);
	fp_buf_reset(&b);
	if (kill((pid_t)x->o->pid, SIGTERM) == -1) {
		result(x, false, "drain", "kill %ld: %s", x->o->pid, strerror(errno));
		tc_close(&c);
		return;
	}
	/* Two more on the wire before we could have read "drain": a proxy may
	 * do this, and they are owed answers too. */
	for (i = 0; i < post; i++) {
		ids[n] = ++x->next_id;
		tool_request(&b, ids[n], ids[n], SAMPLE, sizeof(SAMPLE) - 1,
		    false, 0);
		n++;
	}
	tc_send_buf(&c, &b);
	fp_buf_free(&b);
	for (;;) {
		rc = tc_next(&c, &m, &err, x->o->timeout_ms);
		if (rc == -2) {
			closed = true;
			break;
		}
		if (rc != 1) {
			snprintf(why, sizeof(why), "%s", next_why(rc, &c, &err));
			break;
		}
		if (m.type == FP_MSG_DRAIN)
			drained = true;
		else if (m.type == FP_MSG_VERDICT || (m.type == FP_MSG_ERROR &&
		    m.error.has_id)) {
			if (m.type == FP_MSG_VERDICT)
				note_verdict(x, &m.verdict, &p);
			got++;
		}
	}
	tc_close(&c);
	for (t = 0; t < x->o->timeout_ms / 50 && !pid_gone(x->o->pid); t++)
		pause_ms(50);
	ok = drained && closed && got == n && pid_gone(x->o->pid);
	result(x, ok, "drain", "SIGTERM with %zu request(s) in flight (%zu sent "
	    "after the signal): %s drain, "
	    "%zu answered, %s, process %s%s%s", n, post, drained ? "got" : "NO", got,
	    closed ? "connection closed" : "connection NOT closed",
	    pid_gone(x->o->pid) ? "exited" : "STILL RUNNING",
	    why[0] ? "; " : "", why);
}

int
conformance_run(const struct opts *o)
{
	struct ctx x = { .o = o };

	check_handshake(&x);
	if (x.fail > 0) {
		printf("conformance: %d passed, %d failed (no handshake, "
		    "stopping)\n", x.pass, x.fail);
		return 1;
	}
	check_version_none(&x);
	check_wait_hello(&x);
	check_unknown_keys(&x);
	check_split(&x);
	check_inflight(&x);
	check_large(&x);
	check_ping_cancel(&x);
	check_malformed(&x);
	check_bad_request(&x);
	check_unknown_type(&x);
	check_oversized(&x);
	if (x.bad_verdicts == 0)
		result(&x, true, "verdicts", "%u verdicts, all valid and with "
		    "granted actions", x.verdicts);
	else
		result(&x, false, "verdicts", "%u verdicts, %u using actions not "
		    "granted; first: %s", x.verdicts, x.bad_verdicts, x.bad_first);
	if (o->pid > 0)
		check_drain(&x);
	else
		printf("SKIP drain: give --pid PID to test drain on SIGTERM\n");
	printf("conformance: %d passed, %d failed\n", x.pass, x.fail);
	return x.fail > 0 ? 1 : 0;
}
