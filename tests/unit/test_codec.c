/* test_codec.c: unit tests for the filter protocol codec (protocol/fp.c):
 * round trips, framing split at every octet, limits and hostile frames. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fp.h"
#include "unit.h"

/* ---- a hand-written msgpack writer, independent of the codec ------------ */

static void
raw_byte(struct fp_buf *b, unsigned c)
{
	unsigned char u = (unsigned char)c;

	fp_buf_append(b, &u, 1);
}

static void
raw_be(struct fp_buf *b, uint64_t v, int n)
{
	while (n-- > 0)
		raw_byte(b, (unsigned)(v >> (8 * n)) & 0xff);
}

/* A container header: the fix form below 16 entries, else the 32-bit one. */
static void
raw_container(struct fp_buf *b, unsigned fix, unsigned big, uint32_t n)
{
	if (n < 16)
		raw_byte(b, fix | n);
	else {
		raw_byte(b, big);
		raw_be(b, n, 4);
	}
}

#define raw_map(b, n)	raw_container((b), 0x80, 0xdf, (n))
#define raw_arr(b, n)	raw_container((b), 0x90, 0xdd, (n))

static void
raw_strn(struct fp_buf *b, const char *s, size_t n)
{
	if (n < 32)
		raw_byte(b, 0xa0 | (unsigned)n);
	else if (n < 256) {
		raw_byte(b, 0xd9);
		raw_be(b, n, 1);
	} else {
		raw_byte(b, 0xdb);
		raw_be(b, n, 4);
	}
	fp_buf_append(b, s, n);
}

static void
raw_str(struct fp_buf *b, const char *s)
{
	raw_strn(b, s, strlen(s));
}

static void
raw_uint(struct fp_buf *b, uint64_t v)
{
	if (v < 128)
		raw_byte(b, (unsigned)v);
	else {
		raw_byte(b, 0xcf);
		raw_be(b, v, 8);
	}
}

static void
raw_kv(struct fp_buf *b, const char *k, const char *v)
{
	raw_str(b, k);
	raw_str(b, v);
}

static void
raw_kvu(struct fp_buf *b, const char *k, uint64_t v)
{
	raw_str(b, k);
	raw_uint(b, v);
}

/* Wraps b's msgpack octets into a frame in out. */
static void
raw_frame(struct fp_buf *out, const struct fp_buf *b)
{
	raw_be(out, b->len, 4);
	fp_buf_append(out, b->data, b->len);
}

/* The start of a verdict map with n more keys after type, id and action. */
static void
raw_verdict(struct fp_buf *p, uint32_t more, uint64_t id, const char *action)
{
	raw_map(p, 3 + more);
	raw_kv(p, "type", "verdict");
	raw_kvu(p, "id", id);
	raw_kv(p, "action", action);
}

/* A verdict accepting with one edit map of n pairs, op and name written. */
static void
raw_edit_verdict(struct fp_buf *p, uint32_t n, const char *op, const char *name)
{
	raw_verdict(p, 1, 1, "accept");
	raw_str(p, "edits");
	raw_arr(p, 1);
	raw_map(p, n);
	raw_kv(p, "op", op);
	raw_kv(p, "name", name);
}

/* Decodes the one frame in data and expects an error with code. */
static void
expect_error(const struct fp_buf *payload, enum fp_role role, const char *code,
    bool fatal)
{
	struct fp_buf f = { 0 };
	struct fp_reader r;
	struct fp_msg m;
	struct fp_err e;

	raw_frame(&f, payload);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, role);
	CHECK(fp_reader_feed(&r, f.data, f.len) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), -1);
	CHECK_STR(e.code, code);
	CHECK_INT(e.fatal, fatal);
	CHECK_INT(m.type, FP_MSG_NONE);
	if (!fatal) {
		/* the framing survives: the next frame is read normally */
		struct fp_buf ping = { 0 };

		CHECK(fp_encode_ping(&ping, 99) == 0);
		CHECK(fp_reader_feed(&r, ping.data, ping.len) == 0);
		CHECK_INT(fp_reader_next(&r, &m, &e), 1);
		CHECK_INT(m.type, FP_MSG_PING);
		CHECK_INT(m.ping.id, 99);
		fp_buf_free(&ping);
	}
	CHECK_INT(fp_reader_next(&r, &m, &e), 0);
	fp_reader_free(&r);
	fp_buf_free(&f);
}

/* ---- sample messages ----------------------------------------------------- */

static const uint32_t versions[] = { 1, 7 };

static struct fp_hello
sample_hello(void)
{
	return (struct fp_hello){
		.versions = versions, .nversions = 2,
		.proxy = FP_STR("pop3proxyd/0.1"),
		.caps = FP_CAP_RETR | FP_CAP_TOP | FP_CAPS_ACTIONS | FP_CAP_CANCEL,
		.max_frame = FP_DEFAULT_MAX_FRAME, .max_inflight = 32,
	};
}

static struct fp_hello_ack
sample_ack(void)
{
	return (struct fp_hello_ack){
		.version = 1, .filter = FP_STR("spamc-bridge 2"),
		.commands = FP_CAP_RETR, .actions = FP_CAP_EDIT_HEADERS | FP_CAP_REJECT,
		.max_message_size = 10u << 20, .max_frame = 1u << 20,
		.max_inflight = 8,
	};
}

static const char sample_body[] =
    "From: a@example.org\r\nSubject: hi\r\n\r\n.leading dot kept unstuffed\r\n";

static struct fp_request
sample_request(void)
{
	return (struct fp_request){
		.id = 42, .deadline_ms = 30000,
		.session = {
			.id = FP_STR("s-0001"), .client = FP_STR("127.0.0.1:40000"),
			.user = FP_STR("alice"), .upstream_host = FP_STR("mail.example"),
			.upstream_port = 995, .tls_client = true, .tls_upstream = false,
		},
		.message = {
			.number = 3, .size = 1234, .uidl = FP_STR("UID-3"),
			.command = FP_CMD_RETR,
		},
		.body = { sample_body, sizeof(sample_body) - 1 },
	};
}

static const struct fp_edit sample_edits[] = {
	{ .op = FP_EDIT_ADD, .name = FP_STR("X-Spam-Flag"), .value = FP_STR("YES") },
	{ .op = FP_EDIT_DELETE, .name = FP_STR("X-Spam-Status"), .index = 0 },
	{ .op = FP_EDIT_CHANGE, .name = FP_STR("Subject"),
	  .value = FP_STR("[SPAM] hi\r\n\tfolded"), .index = 2 },
};
static const struct fp_str sample_tags[] = { FP_STR("spam"), FP_STR("bayes") };

/* Encodes a stream of every message type; fills the list of what it holds. */
static size_t
sample_stream(struct fp_buf *b, struct fp_msg *list)
{
	struct fp_verdict v = {
		.id = 42, .action = FP_ACCEPT, .edits = sample_edits, .nedits = 3,
		.reason = FP_STR("score 7.5"), .tags = sample_tags, .ntags = 2,
		.has_score = true, .score = -7.5,
	};
	size_t n = 0;

	list[n].type = FP_MSG_HELLO, list[n++].hello = sample_hello();
	list[n].type = FP_MSG_HELLO_ACK, list[n++].hello_ack = sample_ack();
	list[n].type = FP_MSG_REQUEST, list[n++].request = sample_request();
	list[n].type = FP_MSG_VERDICT, list[n++].verdict = v;
	list[n].type = FP_MSG_VERDICT, list[n++].verdict = (struct fp_verdict){
	    .id = 43, .action = FP_REPLACE, .body = FP_STR("Subject: new\r\n\r\nx\r\n") };
	list[n].type = FP_MSG_VERDICT, list[n++].verdict = (struct fp_verdict){
	    .id = 44, .action = FP_REJECT, .notice = FP_STR("virus found"),
	    .quarantine_id = FP_STR("q/2024/0001") };
	list[n].type = FP_MSG_ERROR, list[n++].error = (struct fp_error){
	    .has_id = true, .id = 45, .code = FP_STR("busy"),
	    .message = FP_STR("queue full") };
	list[n].type = FP_MSG_ERROR, list[n++].error = (struct fp_error){
	    .code = FP_STR("internal") };
	list[n].type = FP_MSG_PING, list[n++].ping.id = 5;
	list[n].type = FP_MSG_PONG, list[n++].pong.id = UINT64_MAX;
	list[n].type = FP_MSG_CANCEL, list[n++].cancel.id = 46;
	list[n].type = FP_MSG_DRAIN, list[n++].drain.reason = FP_STR("restart");
	for (size_t i = 0; i < n; i++)
		CHECK(fp_encode(b, &list[i]) == 0);
	return n;
}

static bool
str_same(struct fp_str a, struct fp_str b)
{
	if (a.ptr == NULL || b.ptr == NULL)
		return a.ptr == b.ptr;
	return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

/* Decoded strings must also be NUL-terminated. */
static bool
str_ok(struct fp_str got, struct fp_str want)
{
	return str_same(got, want) && (got.ptr == NULL || got.ptr[got.len] == '\0');
}

static void
compare_msg(const struct fp_msg *g, const struct fp_msg *w)
{
	size_t i;

	CHECK_INT(g->type, w->type);
	if (g->type != w->type)
		return;
	switch (w->type) {
	case FP_MSG_HELLO:
		CHECK_INT(g->hello.nversions, w->hello.nversions);
		for (i = 0; i < w->hello.nversions && i < g->hello.nversions; i++)
			CHECK_INT(g->hello.versions[i], w->hello.versions[i]);
		CHECK(str_ok(g->hello.proxy, w->hello.proxy));
		CHECK_INT(g->hello.caps, w->hello.caps);
		CHECK_INT(g->hello.max_frame, w->hello.max_frame);
		CHECK_INT(g->hello.max_inflight, w->hello.max_inflight);
		break;
	case FP_MSG_HELLO_ACK:
		CHECK_INT(g->hello_ack.version, w->hello_ack.version);
		CHECK(str_ok(g->hello_ack.filter, w->hello_ack.filter));
		CHECK_INT(g->hello_ack.commands, w->hello_ack.commands);
		CHECK_INT(g->hello_ack.actions, w->hello_ack.actions);
		CHECK_INT(g->hello_ack.max_message_size, w->hello_ack.max_message_size);
		CHECK_INT(g->hello_ack.max_frame, w->hello_ack.max_frame);
		CHECK_INT(g->hello_ack.max_inflight, w->hello_ack.max_inflight);
		break;
	case FP_MSG_REQUEST: {
		const struct fp_request *a = &g->request, *b = &w->request;

		CHECK_INT(a->id, b->id);
		CHECK_INT(a->deadline_ms, b->deadline_ms);
		CHECK(str_ok(a->session.id, b->session.id));
		CHECK(str_ok(a->session.client, b->session.client));
		CHECK(str_ok(a->session.user, b->session.user));
		CHECK(str_ok(a->session.upstream_host, b->session.upstream_host));
		CHECK_INT(a->session.upstream_port, b->session.upstream_port);
		CHECK_INT(a->session.tls_client, b->session.tls_client);
		CHECK_INT(a->session.tls_upstream, b->session.tls_upstream);
		CHECK_INT(a->message.number, b->message.number);
		CHECK_INT(a->message.size, b->message.size);
		CHECK(str_ok(a->message.uidl, b->message.uidl));
		CHECK_INT(a->message.command, b->message.command);
		CHECK_INT(a->message.top_lines, b->message.top_lines);
		CHECK_MEM(a->body.ptr, a->body.len, b->body.ptr, b->body.len);
		break;
	}
	case FP_MSG_VERDICT: {
		const struct fp_verdict *a = &g->verdict, *b = &w->verdict;

		CHECK_INT(a->id, b->id);
		CHECK_INT(a->action, b->action);
		CHECK_INT(a->nedits, b->nedits);
		for (i = 0; i < a->nedits && i < b->nedits; i++) {
			CHECK_INT(a->edits[i].op, b->edits[i].op);
			CHECK(str_ok(a->edits[i].name, b->edits[i].name));
			if (b->edits[i].op != FP_EDIT_DELETE)
				CHECK(str_ok(a->edits[i].value, b->edits[i].value));
			if (b->edits[i].op != FP_EDIT_ADD)
				CHECK_INT(a->edits[i].index, b->edits[i].index);
		}
		CHECK(str_same(a->body, b->body));
		CHECK(str_ok(a->notice, b->notice));
		CHECK(str_ok(a->quarantine_id, b->quarantine_id));
		CHECK(str_ok(a->reason, b->reason));
		CHECK_INT(a->ntags, b->ntags);
		for (i = 0; i < a->ntags && i < b->ntags; i++)
			CHECK(str_ok(a->tags[i], b->tags[i]));
		CHECK_INT(a->has_score, b->has_score);
		CHECK(a->score == b->score);
		break;
	}
	case FP_MSG_ERROR:
		CHECK_INT(g->error.has_id, w->error.has_id);
		CHECK_INT(g->error.id, w->error.id);
		CHECK(str_ok(g->error.code, w->error.code));
		CHECK(str_ok(g->error.message, w->error.message));
		break;
	case FP_MSG_PING:
	case FP_MSG_PONG:
	case FP_MSG_CANCEL:
		CHECK_INT(g->ping.id, w->ping.id);
		break;
	case FP_MSG_DRAIN:
		CHECK(str_ok(g->drain.reason, w->drain.reason));
		break;
	default:
		CHECK(0);
	}
}

/* Drains the reader, comparing against want[*got...]. */
static void
drain_reader(struct fp_reader *r, const struct fp_msg *want, size_t nwant,
    size_t *got)
{
	struct fp_msg m;
	struct fp_err e;
	int rc;

	while ((rc = fp_reader_next(r, &m, &e)) == 1) {
		CHECK(*got < nwant);
		if (*got < nwant)
			compare_msg(&m, &want[*got]);
		(*got)++;
	}
	CHECK_INT(rc, 0);
	if (rc == -1)
		fprintf(stderr, "  reader error %s: %s\n", e.code, e.message);
}

/* ---- tests --------------------------------------------------------------- */

static void
test_roundtrip_all(void)
{
	struct fp_buf b = { 0 };
	struct fp_msg want[16];
	struct fp_reader r;
	size_t n, got = 0;

	n = sample_stream(&b, want);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_ANY);
	CHECK(fp_reader_feed(&r, b.data, b.len) == 0);
	drain_reader(&r, want, n, &got);
	CHECK_INT(got, n);
	CHECK_INT(fp_reader_buffered(&r), 0);
	fp_reader_free(&r);
	fp_buf_free(&b);
}

static void
test_byte_at_a_time(void)
{
	struct fp_buf b = { 0 };
	struct fp_msg want[16];
	struct fp_reader r;
	size_t n, i, got = 0;

	n = sample_stream(&b, want);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_ANY);
	for (i = 0; i < b.len; i++) {
		CHECK(fp_reader_feed(&r, b.data + i, 1) == 0);
		drain_reader(&r, want, n, &got);
	}
	CHECK_INT(got, n);
	fp_reader_free(&r);
	fp_buf_free(&b);
}

static void
test_split_everywhere(void)
{
	struct fp_buf b = { 0 };
	struct fp_msg want[16];
	struct fp_reader r;
	size_t n, k, got, bad = 0;

	n = sample_stream(&b, want);
	for (k = 0; k <= b.len; k++) {
		got = 0;
		fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_ANY);
		CHECK(fp_reader_feed(&r, b.data, k) == 0);
		drain_reader(&r, want, n, &got);
		CHECK(fp_reader_feed(&r, b.data + k, b.len - k) == 0);
		drain_reader(&r, want, n, &got);
		bad += got != n;
		fp_reader_free(&r);
	}
	CHECK_INT(bad, 0);
	fp_buf_free(&b);
}

/* The zero-copy path: recv() into fp_reader_space() in odd-sized pieces. */
static void
test_space_commit(void)
{
	struct fp_buf b = { 0 };
	struct fp_msg want[16];
	struct fp_reader r;
	size_t n, pos = 0, step = 1, got = 0, avail, take;
	char *p;

	n = sample_stream(&b, want);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_ANY);
	while (pos < b.len) {
		p = fp_reader_space(&r, &avail);
		CHECK(p != NULL && avail >= 1);
		if (p == NULL)
			break;
		take = step < avail ? step : avail;
		if (take > b.len - pos)
			take = b.len - pos;
		memcpy(p, b.data + pos, take);
		fp_reader_commit(&r, take);
		pos += take;
		step = step % 13 + 1;
		drain_reader(&r, want, n, &got);
	}
	CHECK_INT(got, n);
	fp_reader_free(&r);
	fp_buf_free(&b);
}

/* Once a frame's length is known, fp_reader_space() offers room for all of
 * it, so a large body arrives with one recv() per chunk and no copy. */
static void
test_large_body_space(void)
{
	struct fp_request req = sample_request();
	struct fp_buf b = { 0 };
	struct fp_reader r;
	struct fp_msg m;
	struct fp_err e;
	size_t blen = 3u << 20, pos = 0, avail, take;
	char *body = malloc(blen), *p;
	int rc = 0;

	for (size_t i = 0; i < blen; i++)
		body[i] = (char)('a' + i % 26);
	req.body = (struct fp_str){ body, blen };
	CHECK(fp_encode_request(&b, &req) == 0);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_FILTER);
	p = fp_reader_space(&r, &avail);
	memcpy(p, b.data, 4);
	fp_reader_commit(&r, 4);
	pos = 4;
	CHECK_INT(fp_reader_next(&r, &m, &e), 0);
	p = fp_reader_space(&r, &avail);
	CHECK(avail >= b.len - 4);
	while (pos < b.len) {
		p = fp_reader_space(&r, &avail);
		take = b.len - pos < avail ? b.len - pos : avail;
		memcpy(p, b.data + pos, take);
		fp_reader_commit(&r, take);
		pos += take;
		rc = fp_reader_next(&r, &m, &e);
	}
	CHECK_INT(rc, 1);
	CHECK_INT(m.type, FP_MSG_REQUEST);
	CHECK_MEM(m.request.body.ptr, m.request.body.len, body, blen);
	fp_reader_free(&r);
	fp_buf_free(&b);
	free(body);
}

/* The head + body path produces exactly the octets of the copying path. */
static void
test_zero_copy_heads(void)
{
	struct fp_request req = sample_request();
	struct fp_verdict v = { .id = 9, .action = FP_REPLACE,
	    .body = FP_STR("Subject: replaced\r\n\r\nclean\r\n"),
	    .reason = FP_STR("cleaned") };
	struct fp_buf whole = { 0 }, head = { 0 };

	CHECK(fp_encode_request(&whole, &req) == 0);
	req.body = (struct fp_str){ NULL, 0 };	/* never read by the head */
	CHECK(fp_encode_request_head(&head, &req, sizeof(sample_body) - 1) == 0);
	CHECK_INT(fp_frame_len(head.data), head.len - 4 + sizeof(sample_body) - 1);
	CHECK(fp_buf_append(&head, sample_body, sizeof(sample_body) - 1) == 0);
	CHECK_MEM(head.data, head.len, whole.data, whole.len);

	fp_buf_reset(&whole);
	fp_buf_reset(&head);
	CHECK(fp_encode_verdict(&whole, &v) == 0);
	CHECK(fp_encode_verdict_head(&head, &v, v.body.len) == 0);
	CHECK(fp_buf_append(&head, v.body.ptr, v.body.len) == 0);
	CHECK_MEM(head.data, head.len, whole.data, whole.len);
	/* only replace carries a body */
	v.action = FP_ACCEPT;
	fp_buf_reset(&head);
	CHECK_INT(fp_encode_verdict_head(&head, &v, 10), -1);
	CHECK_INT(head.len, 0);
	fp_buf_free(&whole);
	fp_buf_free(&head);
}

/* A TOP request carries top_lines; a missing uidl is nil. */
static void
test_request_top_nil_uidl(void)
{
	struct fp_request req = sample_request();
	struct fp_buf b = { 0 };
	struct fp_reader r;
	struct fp_msg m, w = { .type = FP_MSG_REQUEST };
	struct fp_err e;

	req.message.command = FP_CMD_TOP;
	req.message.top_lines = 10;
	req.message.uidl = (struct fp_str){ NULL, 0 };
	req.body = FP_STR("");
	w.request = req;
	CHECK(fp_encode_request(&b, &req) == 0);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_FILTER);
	CHECK(fp_reader_feed(&r, b.data, b.len) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), 1);
	compare_msg(&m, &w);
	CHECK(m.request.message.uidl.ptr == NULL);
	CHECK(m.request.body.ptr != NULL && m.request.body.len == 0);
	fp_reader_free(&r);
	fp_buf_free(&b);
}

/* Bytes from an independent encoder (Python msgpack 1.0.3, packb with
 * use_bin_type) decode, and our encoder produces the same octets. */
static void
test_python_vector(void)
{
	static const unsigned char py[] = {
	0x00, 0x00, 0x00, 0x9e, 0x87, 0xa4, 0x74, 0x79, 0x70, 0x65, 0xa7, 0x76,
	0x65, 0x72, 0x64, 0x69, 0x63, 0x74, 0xa2, 0x69, 0x64, 0x07, 0xa6, 0x61,
	0x63, 0x74, 0x69, 0x6f, 0x6e, 0xa6, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74,
	0xa5, 0x65, 0x64, 0x69, 0x74, 0x73, 0x92, 0x83, 0xa2, 0x6f, 0x70, 0xa3,
	0x61, 0x64, 0x64, 0xa4, 0x6e, 0x61, 0x6d, 0x65, 0xab, 0x58, 0x2d, 0x53,
	0x70, 0x61, 0x6d, 0x2d, 0x46, 0x6c, 0x61, 0x67, 0xa5, 0x76, 0x61, 0x6c,
	0x75, 0x65, 0xa3, 0x59, 0x45, 0x53, 0x83, 0xa2, 0x6f, 0x70, 0xa6, 0x64,
	0x65, 0x6c, 0x65, 0x74, 0x65, 0xa4, 0x6e, 0x61, 0x6d, 0x65, 0xad, 0x58,
	0x2d, 0x53, 0x70, 0x61, 0x6d, 0x2d, 0x53, 0x74, 0x61, 0x74, 0x75, 0x73,
	0xa5, 0x69, 0x6e, 0x64, 0x65, 0x78, 0x00, 0xa6, 0x72, 0x65, 0x61, 0x73,
	0x6f, 0x6e, 0xad, 0x73, 0x63, 0x6f, 0x72, 0x65, 0x20, 0x37, 0x2e, 0x35,
	0x20, 0x3e, 0x20, 0x35, 0xa4, 0x74, 0x61, 0x67, 0x73, 0x91, 0xa4, 0x73,
	0x70, 0x61, 0x6d, 0xa5, 0x73, 0x63, 0x6f, 0x72, 0x65, 0xcb, 0x40, 0x1e,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	};
	static const struct fp_edit edits[] = {
		{ .op = FP_EDIT_ADD, .name = FP_STR("X-Spam-Flag"), .value = FP_STR("YES") },
		{ .op = FP_EDIT_DELETE, .name = FP_STR("X-Spam-Status"), .index = 0 },
	};
	static const struct fp_str tags[] = { FP_STR("spam") };
	struct fp_msg m, w = { .type = FP_MSG_VERDICT, .verdict = {
	    .id = 7, .action = FP_ACCEPT, .edits = edits, .nedits = 2,
	    .reason = FP_STR("score 7.5 > 5"), .tags = tags, .ntags = 1,
	    .has_score = true, .score = 7.5 } };
	struct fp_buf b = { 0 };
	struct fp_reader r;
	struct fp_err e;

	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_PROXY);
	CHECK(fp_reader_feed(&r, py, sizeof(py)) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), 1);
	compare_msg(&m, &w);
	fp_reader_free(&r);
	CHECK(fp_encode(&b, &w) == 0);
	CHECK_MEM(b.data, b.len, py, sizeof(py));
	fp_buf_free(&b);
}

static void
test_too_large(void)
{
	static const unsigned char huge[] = { 0xff, 0xff, 0xff, 0xff, 0x80 };
	static const unsigned char over[] = { 0x00, 0x01, 0x00, 0x01 };
	struct fp_reader r;
	struct fp_msg m;
	struct fp_err e;
	size_t avail;

	/* 4 GiB claimed: refused on the length alone */
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_PROXY);
	CHECK(fp_reader_feed(&r, huge, sizeof(huge)) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), -1);
	CHECK_STR(e.code, FP_E_TOO_LARGE);
	CHECK(e.fatal);
	CHECK(!e.has_id);
	CHECK(r.cap < 65536);		/* nothing was sized for the frame */
	CHECK(fp_reader_space(&r, &avail) != NULL && avail < (1u << 20));
	/* sticky: the stream cannot be resynchronised */
	CHECK_INT(fp_reader_next(&r, &m, &e), -1);
	CHECK(e.fatal);
	fp_reader_free(&r);

	/* one octet over a small announced limit */
	fp_reader_init(&r, 65536, FP_ROLE_FILTER);
	CHECK(fp_reader_feed(&r, over, sizeof(over)) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), -1);
	CHECK_STR(e.code, FP_E_TOO_LARGE);
	fp_reader_free(&r);

	/* exactly at the limit is fine: it waits for the octets */
	fp_reader_init(&r, 65537, FP_ROLE_FILTER);
	CHECK(fp_reader_feed(&r, over, sizeof(over)) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), 0);
	CHECK(fp_reader_space(&r, &avail) != NULL && avail >= 65537);
	fp_reader_free(&r);
}

static void
test_empty_frame(void)
{
	struct fp_buf p = { 0 };

	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
}

static void
test_not_a_map(void)
{
	struct fp_buf p = { 0 };

	raw_arr(&p, 2);
	raw_str(&p, "type");
	raw_str(&p, "ping");
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_free(&p);
}

static void
test_missing_or_bad_type(void)
{
	struct fp_buf p = { 0 };

	raw_map(&p, 1);
	raw_kvu(&p, "id", 1);
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_map(&p, 2);
	raw_kvu(&p, "type", 3);
	raw_kvu(&p, "id", 1);
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_map(&p, 3);
	raw_kv(&p, "type", "ping");
	raw_kv(&p, "type", "pong");
	raw_kvu(&p, "id", 1);
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_free(&p);
}

static void
test_unknown_type_and_direction(void)
{
	struct fp_buf p = { 0 };
	struct fp_buf f = { 0 };
	struct fp_reader r;
	struct fp_msg m;
	struct fp_err e;

	raw_map(&p, 2);
	raw_kv(&p, "type", "progress");
	raw_kvu(&p, "id", 1);
	expect_error(&p, FP_ROLE_ANY, FP_E_UNSUPPORTED, false);
	/* a proxy does not accept a request, nor a filter a verdict */
	fp_buf_reset(&p);
	raw_map(&p, 2);
	raw_kv(&p, "type", "cancel");
	raw_kvu(&p, "id", 1);
	expect_error(&p, FP_ROLE_PROXY, FP_E_UNSUPPORTED, false);
	CHECK(fp_encode_drain(&f, NULL) == 0);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_FILTER);
	CHECK(fp_reader_feed(&r, f.data, f.len) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), -1);
	CHECK_STR(e.code, FP_E_UNSUPPORTED);
	CHECK_INT(e.type, FP_MSG_DRAIN);
	fp_reader_free(&r);
	fp_buf_free(&f);
	fp_buf_free(&p);
}

static void
test_wrong_types(void)
{
	struct fp_buf p = { 0 };

	raw_map(&p, 2);			/* id as a string */
	raw_kv(&p, "type", "ping");
	raw_kv(&p, "id", "1");
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_map(&p, 2);			/* negative id */
	raw_kv(&p, "type", "ping");
	raw_str(&p, "id");
	raw_byte(&p, 0xff);		/* -1 */
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_map(&p, 2);			/* float id */
	raw_kv(&p, "type", "ping");
	raw_str(&p, "id");
	raw_byte(&p, 0xcb);
	raw_be(&p, 0x3ff0000000000000ull, 8);
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_map(&p, 3);			/* str code given as bin */
	raw_kv(&p, "type", "error");
	raw_str(&p, "code");
	raw_byte(&p, 0xc4);
	raw_byte(&p, 4);
	fp_buf_append(&p, "busy", 4);
	raw_kv(&p, "message", "m");
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_free(&p);
}

/* A request whose session map is built by hand with one field altered. */
static void
raw_request(struct fp_buf *p, uint64_t port, bool drop_user, bool body_as_str)
{
	raw_map(p, 6);
	raw_kv(p, "type", "request");
	raw_kvu(p, "id", 77);
	raw_kvu(p, "deadline_ms", (uint64_t)1 << 40);	/* clamped */
	raw_str(p, "session");
	raw_map(p, drop_user ? 6 : 7);
	raw_kv(p, "id", "s");
	raw_kv(p, "client", "127.0.0.1:1");
	if (!drop_user)
		raw_kv(p, "user", "u");
	raw_kv(p, "upstream_host", "h");
	raw_kvu(p, "upstream_port", port);
	raw_str(p, "tls_client");
	raw_byte(p, 0xc2);
	raw_str(p, "tls_upstream");
	raw_byte(p, 0xc3);
	raw_str(p, "message");
	raw_map(p, 4);
	raw_kvu(p, "number", 1);
	raw_kvu(p, "size", 10);
	raw_str(p, "uidl");
	raw_byte(p, 0xc0);
	raw_kv(p, "command", "RETR");
	raw_str(p, "body");
	if (body_as_str)
		raw_str(p, "x");
	else {
		raw_byte(p, 0xc4);
		raw_byte(p, 1);
		raw_byte(p, 'x');
	}
}

static void
test_huge_ints_and_submaps(void)
{
	struct fp_buf p = { 0 }, f = { 0 };
	struct fp_reader r;
	struct fp_msg m;
	struct fp_err e;

	raw_request(&p, 110, false, false);
	raw_frame(&f, &p);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_FILTER);
	CHECK(fp_reader_feed(&r, f.data, f.len) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), 1);
	CHECK_INT(m.request.deadline_ms, UINT32_MAX);
	CHECK_INT(m.request.session.upstream_port, 110);
	CHECK(m.request.message.uidl.ptr == NULL);
	CHECK(!m.request.session.tls_client && m.request.session.tls_upstream);
	fp_reader_free(&r);
	fp_buf_free(&f);

	fp_buf_reset(&p);
	raw_request(&p, 70000, false, false);		/* port out of range */
	expect_error(&p, FP_ROLE_FILTER, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_request(&p, 110, true, false);		/* session.user missing */
	expect_error(&p, FP_ROLE_FILTER, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_request(&p, 110, false, true);		/* body as str */
	raw_frame(&f, &p);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_FILTER);
	CHECK(fp_reader_feed(&r, f.data, f.len) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), -1);
	CHECK_STR(e.code, FP_E_BAD_FRAME);
	CHECK(e.has_id && e.id == 77);		/* fail that request only */
	fp_reader_free(&r);
	fp_buf_free(&f);

	fp_buf_reset(&p);			/* version beyond uint32 */
	raw_map(&p, 8);
	raw_kv(&p, "type", "hello_ack");
	raw_kvu(&p, "version", (uint64_t)1 << 33);
	raw_kv(&p, "filter", "f");
	raw_str(&p, "commands");
	raw_arr(&p, 1);
	raw_str(&p, "retr");
	raw_str(&p, "actions");
	raw_arr(&p, 0);
	raw_kvu(&p, "max_message_size", 0);
	raw_kvu(&p, "max_frame", 1 << 20);
	raw_kvu(&p, "max_inflight", 1);
	expect_error(&p, FP_ROLE_PROXY, FP_E_BAD_FRAME, false);
	fp_buf_free(&p);
}

static void
test_truncated_and_trailing(void)
{
	struct fp_buf p = { 0 };

	raw_map(&p, 2);			/* claims two pairs, holds one */
	raw_kv(&p, "type", "ping");
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_map(&p, 2);			/* str cut short inside the frame */
	raw_kv(&p, "type", "ping");
	raw_str(&p, "id");
	raw_byte(&p, 0xcf);
	raw_be(&p, 1, 3);
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_map(&p, 2);			/* a whole map, then garbage */
	raw_kv(&p, "type", "ping");
	raw_kvu(&p, "id", 1);
	raw_byte(&p, 0x00);
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_map(&p, 2);			/* the never-used type octet */
	raw_kv(&p, "type", "ping");
	raw_str(&p, "id");
	raw_byte(&p, 0xc1);
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_free(&p);
}

/* Tiny frames that claim huge containers or deep nesting are refused
 * without msgpack-c allocating for the claim. */
static void
test_container_bombs(void)
{
	struct fp_buf p = { 0 };
	int i;

	raw_byte(&p, 0xdd);		/* array32 of 2^32-1 elements */
	raw_be(&p, 0xffffffffu, 4);
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_map(&p, 2);
	raw_kv(&p, "type", "ping");
	raw_str(&p, "x");
	raw_byte(&p, 0xdf);		/* map32 claiming 2^31 pairs */
	raw_be(&p, 0x80000000u, 4);
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_map(&p, 3);
	raw_kv(&p, "type", "ping");
	raw_kvu(&p, "id", 1);
	raw_str(&p, "deep");
	for (i = 0; i < 12; i++)	/* msgpack-c alone would allow 32 */
		raw_arr(&p, 1);
	raw_byte(&p, 0xc0);
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_reset(&p);
	raw_map(&p, 3);			/* 70000 nils: too many objects */
	raw_kv(&p, "type", "ping");
	raw_kvu(&p, "id", 1);
	raw_str(&p, "many");
	raw_arr(&p, 70000);
	for (i = 0; i < 70000; i++)
		raw_byte(&p, 0xc0);
	expect_error(&p, FP_ROLE_ANY, FP_E_BAD_FRAME, false);
	fp_buf_free(&p);
}

static void
test_unknown_keys_ignored(void)
{
	struct fp_buf p = { 0 }, f = { 0 };
	struct fp_reader r;
	struct fp_msg m;
	struct fp_err e;

	raw_map(&p, 7);
	raw_str(&p, "x-future");
	raw_map(&p, 1);
	raw_kv(&p, "nested", "value");
	raw_kv(&p, "type", "verdict");
	raw_uint(&p, 5);		/* a non-str key */
	raw_uint(&p, 6);
	raw_kvu(&p, "id", 12);
	raw_kv(&p, "action", "tempfail");
	raw_str(&p, "ext");
	raw_byte(&p, 0xd4);		/* fixext1 */
	raw_byte(&p, 0x01);
	raw_byte(&p, 0x02);
	raw_kv(&p, "reason", "upstream scanner down");
	raw_frame(&f, &p);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_PROXY);
	CHECK(fp_reader_feed(&r, f.data, f.len) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), 1);
	CHECK_INT(m.type, FP_MSG_VERDICT);
	CHECK_INT(m.verdict.id, 12);
	CHECK_INT(m.verdict.action, FP_TEMPFAIL);
	CHECK_STR(m.verdict.reason.ptr, "upstream scanner down");
	fp_reader_free(&r);
	fp_buf_free(&f);

	/* unknown capability names are ignored too */
	fp_buf_reset(&p);
	raw_map(&p, 6);
	raw_kv(&p, "type", "hello");
	raw_str(&p, "versions");
	raw_arr(&p, 2);
	raw_uint(&p, 2);
	raw_uint(&p, 1);
	raw_kv(&p, "proxy", "p");
	raw_str(&p, "capabilities");
	raw_arr(&p, 3);
	raw_str(&p, "retr");
	raw_str(&p, "memfd");
	raw_str(&p, "reject");
	raw_kvu(&p, "max_frame", 1 << 20);
	raw_kvu(&p, "max_inflight", 4);
	raw_frame(&f, &p);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_FILTER);
	CHECK(fp_reader_feed(&r, f.data, f.len) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), 1);
	CHECK_INT(m.hello.caps, FP_CAP_RETR | FP_CAP_REJECT);
	CHECK_INT(m.hello.nversions, 2);
	CHECK_INT(fp_version_choose(&m.hello), 1);
	fp_reader_free(&r);
	fp_buf_free(&f);
	fp_buf_free(&p);
}

static void
test_duplicate_key(void)
{
	struct fp_buf p = { 0 };

	raw_verdict(&p, 1, 3, "accept");
	raw_kv(&p, "action", "reject");
	expect_error(&p, FP_ROLE_PROXY, FP_E_BAD_FRAME, false);
	fp_buf_free(&p);
}

/* Verdicts that break the cross-field rules fail only their request. */
static void
test_bad_verdicts(void)
{
	static const char *const cases[][2] = {
		{ "action", "quarantine" },	/* unknown action */
		{ "action", "replace" },	/* replace without body */
		{ "notice", NULL },		/* reject with edits, below */
	};
	struct fp_buf p = { 0 }, f = { 0 };
	struct fp_reader r;
	struct fp_msg m;
	struct fp_err e;
	size_t i;
	char big[FP_MAX_TEXT + 2];

	for (i = 0; i < 3; i++) {
		fp_buf_reset(&p);
		fp_buf_reset(&f);
		raw_map(&p, i == 2 ? 4 : 3);
		raw_kv(&p, "type", "verdict");
		raw_kvu(&p, "id", 100 + i);
		if (cases[i][1])
			raw_kv(&p, cases[i][0], cases[i][1]);
		else {
			raw_kv(&p, "action", "reject");
			raw_str(&p, "edits");
			raw_arr(&p, 1);
			raw_map(&p, 3);
			raw_kv(&p, "op", "add");
			raw_kv(&p, "name", "X-A");
			raw_kv(&p, "value", "1");
		}
		raw_frame(&f, &p);
		fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_PROXY);
		CHECK(fp_reader_feed(&r, f.data, f.len) == 0);
		CHECK_INT(fp_reader_next(&r, &m, &e), -1);
		CHECK_STR(e.code, FP_E_BAD_FRAME);
		CHECK(e.has_id);
		CHECK_INT(e.id, 100 + i);
		CHECK(!e.fatal);
		fp_reader_free(&r);
	}

	fp_buf_reset(&p);			/* accept echoing the body */
	raw_verdict(&p, 1, 1, "accept");
	raw_str(&p, "body");
	raw_byte(&p, 0xc4);
	raw_byte(&p, 0);
	expect_error(&p, FP_ROLE_PROXY, FP_E_BAD_FRAME, false);

	memset(big, 'r', sizeof(big) - 1);	/* reason over 4 KiB */
	big[sizeof(big) - 1] = '\0';
	fp_buf_reset(&p);
	raw_verdict(&p, 1, 1, "accept");
	raw_kv(&p, "reason", big);
	expect_error(&p, FP_ROLE_PROXY, FP_E_BAD_FRAME, false);

	fp_buf_reset(&p);			/* 33 tags */
	raw_verdict(&p, 1, 1, "accept");
	raw_str(&p, "tags");
	raw_arr(&p, 33);
	for (i = 0; i < 33; i++)
		raw_str(&p, "t");
	expect_error(&p, FP_ROLE_PROXY, FP_E_BAD_FRAME, false);

	fp_buf_reset(&p);			/* header name with a colon */
	raw_edit_verdict(&p, 3, "add", "X-A:");
	raw_kv(&p, "value", "1");
	expect_error(&p, FP_ROLE_PROXY, FP_E_BAD_FRAME, false);

	fp_buf_reset(&p);			/* value injecting a header */
	raw_edit_verdict(&p, 3, "add", "X-A");
	raw_kv(&p, "value", "1\r\nBcc: victim@example.org");
	expect_error(&p, FP_ROLE_PROXY, FP_E_BAD_FRAME, false);

	fp_buf_reset(&p);			/* change without value */
	raw_edit_verdict(&p, 2, "change", "Subject");
	expect_error(&p, FP_ROLE_PROXY, FP_E_BAD_FRAME, false);
	fp_buf_free(&p);
	fp_buf_free(&f);
}

/* An edit without index gets the default 1; delete with index 0 is "all". */
static void
test_edit_index_default(void)
{
	struct fp_buf p = { 0 }, f = { 0 };
	struct fp_reader r;
	struct fp_msg m;
	struct fp_err e;

	raw_verdict(&p, 1, 1, "accept");
	raw_str(&p, "edits");
	raw_arr(&p, 2);
	raw_map(&p, 2);
	raw_kv(&p, "op", "delete");
	raw_kv(&p, "name", "X-A");
	raw_map(&p, 3);
	raw_kv(&p, "op", "delete");
	raw_kv(&p, "name", "X-B");
	raw_kvu(&p, "index", 0);
	raw_frame(&f, &p);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_PROXY);
	CHECK(fp_reader_feed(&r, f.data, f.len) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), 1);
	CHECK_INT(m.verdict.nedits, 2);
	CHECK_INT(m.verdict.edits[0].index, 1);
	CHECK_INT(m.verdict.edits[1].index, 0);
	fp_reader_free(&r);
	fp_buf_free(&f);
	fp_buf_free(&p);
}

static void
test_bad_hellos(void)
{
	struct fp_hello h = sample_hello();
	struct fp_hello_ack a = sample_ack();
	struct fp_buf b = { 0 };

	h.max_frame = 1000;			/* below the floor */
	CHECK_INT(fp_encode_hello(&b, &h), -1);
	h = sample_hello();
	h.caps &= ~FP_CAP_RETR;
	CHECK_INT(fp_encode_hello(&b, &h), -1);
	h = sample_hello();
	h.nversions = 0;
	CHECK_INT(fp_encode_hello(&b, &h), -1);
	a.max_inflight = 0;
	CHECK_INT(fp_encode_hello_ack(&b, &a), -1);
	a = sample_ack();
	a.commands = FP_CAP_TOP;
	CHECK_INT(fp_encode_hello_ack(&b, &a), -1);
	CHECK_INT(b.len, 0);
	fp_buf_free(&b);
}

/* The encoder refuses what a receiver must refuse, and leaves the buffer. */
static void
test_encoder_refuses(void)
{
	struct fp_verdict v = { .id = 1, .action = FP_ACCEPT };
	struct fp_edit bad = { .op = FP_EDIT_ADD, .name = FP_STR("X A"),
	    .value = FP_STR("1") };
	struct fp_str tags[FP_MAX_TAGS + 1];
	struct fp_msg m = { .type = FP_MSG_VERDICT };
	struct fp_err e;
	struct fp_buf b = { 0 };
	char big[FP_MAX_TEXT + 1];
	size_t i, ping_len;

	CHECK(fp_encode_ping(&b, 1) == 0);
	ping_len = b.len;
	memset(big, 'x', sizeof(big));
	v.reason = (struct fp_str){ big, sizeof(big) };
	CHECK_INT(fp_encode_verdict(&b, &v), -1);
	v.reason = FP_STR("ok");
	v.edits = &bad;
	v.nedits = 1;
	CHECK_INT(fp_encode_verdict(&b, &v), -1);
	m.verdict = v;
	CHECK_INT(fp_msg_check(&m, &e), -1);
	CHECK(strstr(e.message, "name") != NULL);
	v.nedits = 0;
	for (i = 0; i <= FP_MAX_TAGS; i++)
		tags[i] = FP_STR("t");
	v.tags = tags;
	v.ntags = FP_MAX_TAGS + 1;
	CHECK_INT(fp_encode_verdict(&b, &v), -1);
	v.ntags = 0;
	v.action = FP_REPLACE;			/* no body */
	CHECK_INT(fp_encode_verdict(&b, &v), -1);
	v.action = FP_TEMPFAIL;
	v.body = FP_STR("x");			/* body on tempfail */
	CHECK_INT(fp_encode_verdict(&b, &v), -1);
	v.body = (struct fp_str){ NULL, 0 };
	v.quarantine_id = FP_STR("q1");		/* only reject keeps one */
	CHECK_INT(fp_encode_verdict(&b, &v), -1);
	v.action = FP_REJECT;
	CHECK_INT(fp_encode_verdict(&b, &v), 0);
	CHECK_INT(fp_frame_len(b.data + ping_len), b.len - ping_len - 4);
	b.len = ping_len;			/* drop it again */
	v.action = (enum fp_action)9;
	CHECK_INT(fp_encode_verdict(&b, &v), -1);
	CHECK_INT(fp_frame_len(b.data), b.len - 4);	/* only the ping */
	m.type = (enum fp_msg_type)77;
	CHECK_INT(fp_encode(&b, &m), -1);
	fp_buf_free(&b);
}

static void
test_negotiation(void)
{
	static const uint32_t only2[] = { 2 }, two_one[] = { 2, 1 };
	struct fp_hello h = sample_hello();
	struct fp_hello_ack a = sample_ack();
	struct fp_params p;
	struct fp_err e;

	CHECK_INT(fp_version_choose(&h), 1);
	h.versions = two_one;
	CHECK_INT(fp_version_choose(&h), 1);
	h.versions = only2;
	h.nversions = 1;
	CHECK_INT(fp_version_choose(&h), 0);
	CHECK_INT(fp_negotiate(&h, &a, &p, &e), -1);	/* 1 not offered */
	CHECK_STR(e.code, FP_E_VERSION);
	h = sample_hello();
	a.version = 7;			/* offered, but not spoken here */
	CHECK_INT(fp_negotiate(&h, &a, &p, &e), -1);
	CHECK_STR(e.code, FP_E_VERSION);

	a = sample_ack();
	a.commands = FP_CAP_RETR | FP_CAP_TOP;
	a.actions = FP_CAPS_ACTIONS;
	h.caps = FP_CAP_RETR | FP_CAP_EDIT_HEADERS | FP_CAP_TEMPFAIL;
	CHECK_INT(fp_negotiate(&h, &a, &p, &e), 0);
	CHECK_INT(p.version, 1);
	CHECK_INT(p.window, 8);
	CHECK_INT(p.commands, FP_CAP_RETR);
	CHECK_INT(p.actions, FP_CAP_EDIT_HEADERS | FP_CAP_TEMPFAIL);
	CHECK_INT(p.proxy_max_frame, FP_DEFAULT_MAX_FRAME);
	CHECK_INT(p.filter_max_frame, 1u << 20);
	CHECK_INT(p.max_message_size, 10u << 20);
	h.max_inflight = 3;
	CHECK_INT(fp_negotiate(&h, &a, &p, &e), 0);
	CHECK_INT(p.window, 3);
}

static void
test_verdict_grants(void)
{
	struct fp_verdict v = { .id = 5, .action = FP_ACCEPT };
	struct fp_err e;

	CHECK_INT(fp_verdict_check(&v, 0, &e), 0);
	v.nedits = 1;
	v.edits = sample_edits;
	CHECK_INT(fp_verdict_check(&v, FP_CAP_REJECT, &e), -1);
	CHECK_STR(e.code, FP_E_NOT_GRANTED);
	CHECK(e.has_id && e.id == 5);
	CHECK_INT(fp_verdict_check(&v, FP_CAP_EDIT_HEADERS, &e), 0);
	v.nedits = 0;
	v.action = FP_REPLACE;
	CHECK_INT(fp_verdict_check(&v, FP_CAP_EDIT_HEADERS | FP_CAP_REJECT, &e), -1);
	CHECK_STR(e.code, FP_E_NOT_GRANTED);
	CHECK_INT(fp_verdict_check(&v, FP_CAP_REPLACE, &e), 0);
	v.action = FP_REJECT;
	CHECK_INT(fp_verdict_check(&v, FP_CAP_REPLACE, &e), -1);
	v.action = FP_TEMPFAIL;
	CHECK_INT(fp_verdict_check(&v, FP_CAP_TEMPFAIL, &e), 0);
}

/* A frame whose last octets are a string, followed by another frame: the
 * NUL borrowed after the string must not corrupt the next frame. */
static void
test_nul_termination_borrow(void)
{
	struct fp_error er = { .code = FP_STR("timeout"), .message = FP_STR("late") };
	struct fp_buf b = { 0 };
	struct fp_reader r;
	struct fp_msg m;
	struct fp_err e;

	CHECK(fp_encode_error(&b, &er) == 0);
	CHECK(fp_encode_pong(&b, 0x1234) == 0);
	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_ANY);
	CHECK(fp_reader_feed(&r, b.data, b.len) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), 1);
	CHECK_STR(m.error.message.ptr, "late");
	CHECK_STR(m.error.code.ptr, "timeout");
	CHECK_INT(fp_reader_next(&r, &m, &e), 1);
	CHECK_INT(m.type, FP_MSG_PONG);
	CHECK_INT(m.pong.id, 0x1234);
	CHECK_INT(fp_reader_next(&r, &m, &e), 0);
	fp_reader_free(&r);

	/* Frame lengths under 16 MiB start with 0x00, the very octet the NUL
	 * borrowed; make the next length start with 0x01 so that a missing
	 * restore would read 16 instead of 16 MiB + 16. */
	fp_reader_init(&r, 65536, FP_ROLE_ANY);
	fp_buf_reset(&b);
	CHECK(fp_encode_error(&b, &er) == 0);
	CHECK(fp_buf_append(&b, "\x01\x00\x00\x10", 4) == 0);
	CHECK(fp_reader_feed(&r, b.data, b.len) == 0);
	CHECK_INT(fp_reader_next(&r, &m, &e), 1);
	CHECK_STR(m.error.message.ptr, "late");
	CHECK_INT(fp_reader_next(&r, &m, &e), -1);
	CHECK_STR(e.code, FP_E_TOO_LARGE);
	CHECK(strstr(e.message, "16777232") != NULL);
	fp_reader_free(&r);
	fp_buf_free(&b);
}

int
main(void)
{
	RUN(test_roundtrip_all);
	RUN(test_byte_at_a_time);
	RUN(test_split_everywhere);
	RUN(test_space_commit);
	RUN(test_large_body_space);
	RUN(test_zero_copy_heads);
	RUN(test_request_top_nil_uidl);
	RUN(test_python_vector);
	RUN(test_too_large);
	RUN(test_empty_frame);
	RUN(test_not_a_map);
	RUN(test_missing_or_bad_type);
	RUN(test_unknown_type_and_direction);
	RUN(test_wrong_types);
	RUN(test_huge_ints_and_submaps);
	RUN(test_truncated_and_trailing);
	RUN(test_container_bombs);
	RUN(test_unknown_keys_ignored);
	RUN(test_duplicate_key);
	RUN(test_bad_verdicts);
	RUN(test_edit_index_default);
	RUN(test_bad_hellos);
	RUN(test_encoder_refuses);
	RUN(test_negotiation);
	RUN(test_verdict_grants);
	RUN(test_nul_termination_borrow);
	return UNIT_DONE();
}
