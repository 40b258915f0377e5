/* fuzz_mime.c: pop3filter-ref's MIME walker, parameter decoder and attachment
 * stripping, and the library's header helpers: they read what anyone sends. */
/*
 * Input: one octet of mode, then the octets.
 *   mode & 3 == 0: mime_names() over a message; the callback stops the walk
 *                  at the (mode >> 2)-th name (0: never).
 *   mode & 3 == 1: mime_param() on a header value for "filename", "name" or
 *                  "boundary" (mode >> 2 picks), into a full-size and a
 *                  small output.
 *   otherwise:     pf_body_offset() and pf_header() on a message.
 * Checks: names are 1..MIME_MAX_NAME octets and NUL-terminated; at most two
 * names per entity and MIME_MAX_PARTS entities; a walk told to stop at the
 * k-th name reports exactly min(k, all) names and returns 1 only then; the
 * same input gives the same names; mime_parts() reports the same names as
 * mime_names(), each with an entity inside the message (the message itself
 * at depth 0 only); cutting out the outermost parts (as --strip-attachment
 * does) keeps every octet outside them, in order, and puts exactly one note
 * in each; decoded parameters are NUL-terminated,
 * fit their buffer, and decode the same twice; a body offset is inside the
 * message and right after a line end; a header value found lies inside the
 * header block.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "pop3filter.h"
#include "ref.h"

#define NAMES_MAX	(2 * 2000 + 2)	/* two per entity, MIME_MAX_PARTS */

struct seen {
	unsigned n, stop_at;
	unsigned long sum;		/* a digest of the names, in order */
	const char *msg;		/* mime_parts(): the message, */
	size_t len;
	struct strip_span sp[64];	/* the outermost parts, as strip cuts */
	size_t nsp;
};

static int
name_cb(const char *name, size_t len, void *arg)
{
	struct seen *s = arg;

	FUZZ_CHECK(len >= 1 && len <= 1024);
	FUZZ_CHECK(name[len] == '\0');
	s->n++;
	FUZZ_CHECK(s->n <= NAMES_MAX);
	for (size_t i = 0; i < len; i++)
		s->sum = s->sum * 31 + (unsigned char)name[i];
	s->sum = s->sum * 31 + len;
	return s->stop_at != 0 && s->n == s->stop_at;
}

static int
part_cb(const char *name, size_t len, const char *ent, size_t elen, int depth,
    void *arg)
{
	struct seen *s = arg;

	name_cb(name, len, arg);
	FUZZ_CHECK(ent >= s->msg && elen <= s->len &&
	    (size_t)(ent - s->msg) <= s->len - elen);
	FUZZ_CHECK(depth >= 0 && (depth > 0 || (ent == s->msg && elen == s->len)));
	size_t off = (size_t)(ent - s->msg);
	if (depth == 0 || s->nsp == 64)
		return 0;
	if (s->nsp > 0) {
		const struct strip_span *p = &s->sp[s->nsp - 1];
		/* Outside in: a later part is inside the last or after it. */
		if (off >= p->off && off < p->off + p->len) {
			FUZZ_CHECK(off + elen <= p->off + p->len);
			return 0;
		}
		FUZZ_CHECK(off >= p->off + p->len);
	}
	struct strip_span *n = &s->sp[s->nsp++];
	n->off = off;
	n->len = elen;
	snprintf(n->name, sizeof(n->name), "n%zu", s->nsp);
	n->glob = "*";
	return 0;
}

/* The message rebuilt with its outermost named parts cut out. */
static void
check_strip(const char *msg, size_t len, const struct seen *s)
{
	static const char hdr[] = "X-F: 1\r\n";
	size_t outlen, at = 0, o = sizeof(hdr) - 1;
	char *out = strip_build(msg, len, s->sp, s->nsp, hdr, &outlen);

	FUZZ_CHECK(out != NULL && memcmp(out, hdr, sizeof(hdr) - 1) == 0);
	for (size_t i = 0; i < s->nsp; i++) {
		size_t keep = s->sp[i].off - at;
		FUZZ_CHECK(o + keep <= outlen &&
		    memcmp(out + o, msg + at, keep) == 0);
		o += keep;
		/* The note: from its header to its closing bracket. */
		static const char start[] = "Content-Type: text/plain";
		FUZZ_CHECK(outlen - o >= sizeof(start) - 1 &&
		    memcmp(out + o, start, sizeof(start) - 1) == 0);
		const char *end = memchr(out + o, ']', outlen - o);
		FUZZ_CHECK(end != NULL);
		o = (size_t)(end - out) + 1;
		at = s->sp[i].off + s->sp[i].len;
	}
	FUZZ_CHECK(outlen - o == len - at && memcmp(out + o, msg + at, len - at) == 0);
	free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const attrs[] = { "filename", "name", "boundary" };

	if (size < 1)
		return 0;
	unsigned mode = data[0];
	size_t len = size - 1;
	/* Its own allocation, so ASan sees any read past the end. */
	char *msg = malloc(len ? len : 1);
	memcpy(msg, data + 1, len);

	if ((mode & 3) == 0) {
		struct seen all = { 0 }, again = { 0 }, part = { 0 };
		int r = mime_names(msg, len, name_cb, &all);
		FUZZ_CHECK(r == 0);
		mime_names(msg, len, name_cb, &again);
		FUZZ_CHECK(again.n == all.n && again.sum == all.sum);
		part.stop_at = mode >> 2;
		r = mime_names(msg, len, name_cb, &part);
		if (part.stop_at != 0 && part.stop_at <= all.n) {
			FUZZ_CHECK(r == 1 && part.n == part.stop_at);
		} else {
			FUZZ_CHECK(r == 0 && part.n == all.n);
		}
		struct seen parts = { .msg = msg, .len = len };
		FUZZ_CHECK(mime_parts(msg, len, part_cb, &parts) == 0);
		FUZZ_CHECK(parts.n == all.n && parts.sum == all.sum);
		check_strip(msg, len, &parts);
	} else if ((mode & 3) == 1) {
		const char *attr = attrs[(mode >> 2) % 3];
		char big[1025], big2[1025], small[8];
		size_t bl = 0, bl2 = 0, sl = 0;
		int r1 = mime_param(msg, len, attr, big, sizeof(big), &bl);
		int r2 = mime_param(msg, len, attr, big2, sizeof(big2), &bl2);
		FUZZ_CHECK(r1 == r2);
		if (r1 == 0) {
			FUZZ_CHECK(bl < sizeof(big) && big[bl] == '\0');
			FUZZ_CHECK(bl == bl2 && memcmp(big, big2, bl) == 0);
		}
		if (mime_param(msg, len, attr, small, sizeof(small), &sl) == 0)
			FUZZ_CHECK(sl < sizeof(small) && small[sl] == '\0');
	} else {
		size_t off = pf_body_offset(msg, len);
		FUZZ_CHECK(off <= len);
		if (off > 0 && off < len)
			FUZZ_CHECK(msg[off - 1] == '\n');
		const char *v;
		size_t vl;
		static const char *const names[] = { "Subject", "Content-Type",
		    "X-A", "From" };
		for (int i = 0; i < 4; i++)
			for (int k = 1; k <= 2; k++)
				if (pf_header(msg, len, names[i], k, &v, &vl) == 0)
					FUZZ_CHECK(v >= msg && v + vl <= msg + off);
	}
	free(msg);
	return 0;
}
