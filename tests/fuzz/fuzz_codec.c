/* fuzz_codec.c: libFuzzer target for the filter protocol codec (protocol/fp.c):
 * frames decoded in every role, and what decodes re-encodes to itself. */
#include <string.h>

#include "fp.h"
#include "fuzz.h"

/* Decode exactly one message from a complete, trusted frame. */
static void
decode_one(const struct fp_buf *b, struct fp_reader *r, struct fp_msg *m)
{
	struct fp_err e;

	fp_reader_init(r, FP_DEFAULT_MAX_FRAME, FP_ROLE_ANY);
	FUZZ_CHECK(fp_reader_feed(r, b->data, b->len) == 0);
	FUZZ_CHECK(fp_reader_next(r, m, &e) == 1);
	FUZZ_CHECK(fp_reader_buffered(r) == 0);
}

/*
 * The round trip: a message the decoder accepted passes the encoder's checks
 * (they are the same rules), and encode(decode(encode(m))) == encode(m), so
 * no field is lost, invented or changed on the way.
 */
static void
roundtrip(const struct fp_msg *m)
{
	struct fp_buf e1 = { 0 }, e2 = { 0 }, head = { 0 };
	struct fp_reader r;
	struct fp_msg m2;
	struct fp_err err;

	FUZZ_CHECK(fp_msg_check(m, &err) == 0);
	FUZZ_CHECK(fp_encode(&e1, m) == 0);
	FUZZ_CHECK(e1.len > 4 && fp_frame_len(e1.data) == e1.len - 4);
	decode_one(&e1, &r, &m2);
	FUZZ_CHECK(m2.type == m->type);
	FUZZ_CHECK(fp_encode(&e2, &m2) == 0);
	FUZZ_CHECK(e2.len == e1.len && memcmp(e1.data, e2.data, e1.len) == 0);
	fp_reader_free(&r);

	/* The zero-copy heads plus the body octets are the same frame. */
	if (m->type == FP_MSG_REQUEST) {
		FUZZ_CHECK(fp_encode_request_head(&head, &m->request,
		    m->request.body.len) == 0);
		FUZZ_CHECK(fp_buf_append(&head, m->request.body.ptr,
		    m->request.body.len) == 0);
	} else if (m->type == FP_MSG_VERDICT && m->verdict.action == FP_REPLACE) {
		FUZZ_CHECK(fp_encode_verdict_head(&head, &m->verdict,
		    m->verdict.body.len) == 0);
		FUZZ_CHECK(fp_buf_append(&head, m->verdict.body.ptr,
		    m->verdict.body.len) == 0);
	}
	if (head.len)
		FUZZ_CHECK(head.len == e1.len && memcmp(head.data, e1.data, e1.len) == 0);

	/* Verdicts: the edits the decoder let through are valid edits. */
	if (m->type == FP_MSG_VERDICT)
		for (size_t i = 0; i < m->verdict.nedits; i++)
			FUZZ_CHECK(fp_edit_invalid(&m->verdict.edits[i]) == NULL);
	fp_buf_free(&e1);
	fp_buf_free(&e2);
	fp_buf_free(&head);
}

static int
sent_by_filter(enum fp_msg_type t)
{
	return t == FP_MSG_HELLO_ACK || t == FP_MSG_VERDICT || t == FP_MSG_ERROR ||
	    t == FP_MSG_PING || t == FP_MSG_PONG || t == FP_MSG_DRAIN;
}

static int
sent_by_proxy(enum fp_msg_type t)
{
	return t == FP_MSG_HELLO || t == FP_MSG_REQUEST || t == FP_MSG_ERROR ||
	    t == FP_MSG_PING || t == FP_MSG_PONG || t == FP_MSG_CANCEL;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fp_reader r;
	struct fp_msg m;
	struct fp_err e;
	enum fp_role role;
	uint32_t seed;
	size_t fed = 0;
	int rc, dead = 0;

	if (size < 2)
		return 0;
	role = (enum fp_role)(data[0] % 3);
	seed = data[1] + 1u;
	/* A small max_frame, so that too_large is reachable too. */
	fp_reader_init(&r, data[0] & 4 ? FP_MIN_MAX_FRAME : FP_DEFAULT_MAX_FRAME,
	    role);
	data += 2, size -= 2;

	while (fed < size || !dead) {
		rc = fp_reader_next(&r, &m, &e);
		if (rc == 1) {
			FUZZ_CHECK(!dead);
			if (role == FP_ROLE_PROXY)
				FUZZ_CHECK(sent_by_filter(m.type));
			if (role == FP_ROLE_FILTER)
				FUZZ_CHECK(sent_by_proxy(m.type));
			roundtrip(&m);
			continue;
		}
		if (rc == -1) {
			FUZZ_CHECK(e.code != NULL && strlen(e.message) < sizeof(e.message));
			if (e.fatal)
				dead = 1;	/* and every later call says so */
			else
				FUZZ_CHECK(!dead);
			if (dead && fed == size)
				break;
			if (!dead)
				continue;
		}
		FUZZ_CHECK(rc == 0 || rc == -1);
		if (fed == size)
			break;
		/* Feed the next slice, alternating the two ways in. */
		size_t n = fuzz_slice(&seed, size - fed);
		if (seed & 1) {
			FUZZ_CHECK(fp_reader_feed(&r, data + fed, n) == 0);
		} else {
			size_t avail;
			char *sp = fp_reader_space(&r, &avail);
			FUZZ_CHECK(sp != NULL && avail >= 1);
			if (n > avail)
				n = avail;
			memcpy(sp, data + fed, n);
			fp_reader_commit(&r, n);
		}
		fed += n;
	}
	if (dead)
		FUZZ_CHECK(fp_reader_next(&r, &m, &e) == -1 && e.fatal);
	fp_reader_free(&r);
	return 0;
}
