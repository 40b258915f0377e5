/* test_clamd.c: unit tests for pop3filter-clamd's pure parts: the zINSTREAM
 * framing of a message and the parser of clamd's answers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"

#include "../../clients/pop3filter-clamd/clamd_proto.c"

/* What the segments put on the wire, in one buffer. */
static char *
flatten(const struct bridge_seg *s, size_t n, size_t *len)
{
	size_t i, t = 0;
	char *out;

	for (i = 0; i < n; i++)
		t += s[i].len;
	out = malloc(t ? t : 1);
	for (i = 0, t = 0; i < n; i++) {
		memcpy(out + t, s[i].ptr, s[i].len);
		t += s[i].len;
	}
	*len = t;
	return out;
}

/* Read the stream back as clamd does: every chunk within the limit, the
 * data in order, ended by a zero length. */
static void
check_stream(const char *msg, size_t len, size_t chunk)
{
	struct bridge_seg *s;
	unsigned char *lens, *p;
	size_t n, wl, got = 0, cl;
	char *w;

	CHECK_INT(clamd_instream(msg, len, chunk, &s, &n, &lens), 0);
	w = flatten(s, n, &wl);
	CHECK_MEM(w, 10, "zINSTREAM\0", 10);
	p = (unsigned char *)w + 10;
	for (;;) {
		cl = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
		p += 4;
		if (cl == 0)
			break;
		CHECK(cl <= chunk);
		CHECK(got + cl <= len);
		if (got + cl > len)
			break;
		CHECK_MEM(p, cl, msg + got, cl);
		got += cl;
		p += cl;
	}
	CHECK_INT(got, len);
	CHECK_INT((char *)p - w, wl);
	/* No copy of the message: its segments point into it. */
	if (len > 0)
		CHECK(s[2].ptr == msg);
	free(w);
	free(s);
	free(lens);
}

static void
test_instream(void)
{
	size_t len = 3 * CLAMD_CHUNK + 17, i;
	char *m = malloc(len);

	for (i = 0; i < len; i++)
		m[i] = (char)(i * 7 + i / 251);
	check_stream(m, len, CLAMD_CHUNK);
	check_stream(m, 3 * CLAMD_CHUNK, CLAMD_CHUNK);
	check_stream(m, 1, CLAMD_CHUNK);
	check_stream(m, 0, CLAMD_CHUNK);
	check_stream(m, 1000, 7);
	free(m);
}

static void
test_replies(void)
{
	struct clamd_reply r;
	char err[128];
	const char *s;

	s = "stream: OK";
	CHECK_INT(clamd_reply_parse(s, strlen(s) + 1, true, &r, err, sizeof(err)), 1);
	CHECK_INT(r.status, CLAMD_CLEAN);
	s = "stream: Eicar-Signature FOUND";
	CHECK_INT(clamd_reply_parse(s, strlen(s) + 1, false, &r, err, sizeof(err)), 1);
	CHECK_INT(r.status, CLAMD_FOUND);
	CHECK_STR(r.text, "Eicar-Signature");
	s = "stream: Pop3proxy-Test-Eicar.UNOFFICIAL FOUND";
	CHECK_INT(clamd_reply_parse(s, strlen(s) + 1, true, &r, err, sizeof(err)), 1);
	CHECK_STR(r.text, "Pop3proxy-Test-Eicar.UNOFFICIAL");
	s = "INSTREAM size limit exceeded. ERROR";
	CHECK_INT(clamd_reply_parse(s, strlen(s) + 1, true, &r, err, sizeof(err)), 1);
	CHECK_INT(r.status, CLAMD_ERROR);
	CHECK(r.size_limit);
	CHECK_STR(r.text, "INSTREAM size limit exceeded.");
	s = "UNKNOWN COMMAND";
	CHECK_INT(clamd_reply_parse(s, strlen(s) + 1, true, &r, err, sizeof(err)), 1);
	CHECK_INT(r.status, CLAMD_ERROR);
	CHECK(!r.size_limit);
	/* Not complete before the NUL. */
	s = "stream: OK";
	CHECK_INT(clamd_reply_parse(s, 5, false, &r, err, sizeof(err)), 0);
	CHECK_INT(clamd_reply_complete(s, 10), 0);
	CHECK_INT(clamd_reply_complete(s, 11), 1);
}

static void
test_hostile(void)
{
	static const struct { const char *s; size_t len; } bad[] = {
		{ "", 0 },
		{ "stream: OK", 10 },			/* EOF, no NUL */
		{ "\0", 1 },
		{ "\n\0", 2 },
		{ "stream: OK\0junk", 15 },
		{ "stream: FOUND\0", 14 },
		{ "stream:  FOUND\0", 15 },
		{ "stream: Evil\x1b[2J FOUND\0", 23 },
		{ "stream: \xff FOUND\0", 16 },
	};
	struct clamd_reply r;
	char err[128], *big;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (clamd_reply_parse(bad[i].s, bad[i].len, true, &r, err,
		    sizeof(err)) != -1) {
			fprintf(stderr, "accepted #%zu\n", i);
			CHECK(0);
		}
	/* Endless answers stop before EOF; long names are not cut. */
	big = malloc(CLAMD_MAX_REPLY + 100);
	memset(big, 'A', CLAMD_MAX_REPLY + 100);
	CHECK_INT(clamd_reply_parse(big, CLAMD_MAX_REPLY + 1, false, &r, err,
	    sizeof(err)), -1);
	memcpy(big, "stream: ", 8);
	memcpy(big + 300, " FOUND", 7);
	CHECK_INT(clamd_reply_parse(big, 307, true, &r, err, sizeof(err)), -1);
	free(big);
	CHECK_INT(clamd_instream("x", 1, 0, NULL, NULL, NULL), -1);
}

int
main(void)
{
	RUN(test_instream);
	RUN(test_replies);
	RUN(test_hostile);
	return UNIT_DONE();
}
