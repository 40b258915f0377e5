/* test_spamd.c: unit tests for pop3filter-spamd's pure parts (SPAMD reply
 * parser, header diff checked through the proxy's own edit code) and options. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fp.h"
#include "unit.h"

/* The bridge's pure parts are not a library: compile them in. */
#include "../../clients/pop3filter-spamd/spamd_proto.c"
#include "../../clients/bridge/bridge.c"

/* Real answers of spamd 4.0.1 (Debian 12), HEADERS for GTUBE with
 * report_safe 0 and for a ham message that came with a forged X-Spam-Flag. */
#define SPAM_HEADERS \
	"X-Spam-Checker-Version: SpamAssassin 4.0.1 (2024-03-25) on vm\r\n" \
	"X-Spam-Flag: YES\r\n" \
	"X-Spam-Level: **************************************************\r\n" \
	"X-Spam-Status: Yes, score=1002.7 required=5.0 tests=GTUBE,MISSING_DATE,\r\n" \
	"\tMSGID_SHORT,NO_RECEIVED,NO_RELAYS autolearn=disabled version=4.0.1\r\n" \
	"From: a@example.org\r\nTo: b@example.org\r\nSubject: test spam\r\n" \
	"Message-ID: <g@t>\r\n\r\n"
#define HAM_IN \
	"From: a@example.org\r\nTo: b@example.org\r\nSubject: hello\r\n" \
	"X-Spam-Flag: YES\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n" \
	"Message-ID: <h@t.example.org>\r\n\r\nJust a normal note.\r\n"
#define HAM_HEADERS \
	"X-Spam-Checker-Version: SpamAssassin 4.0.1 (2024-03-25) on vm\r\n" \
	"X-Spam-Level: \r\n" \
	"X-Spam-Status: No, score=-0.0 required=5.0 tests=MSGID_SHORT,NO_RECEIVED,\r\n" \
	"\tNO_RELAYS autolearn=disabled version=4.0.1\r\n" \
	"From: a@example.org\r\nTo: b@example.org\r\nSubject: hello\r\n" \
	"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n" \
	"Message-ID: <h@t.example.org>\r\n\r\n"

static char *
reply_of(const char *status_and_heads, const char *body, size_t *len)
{
	size_t n = strlen(status_and_heads) + strlen(body) + 64;
	char *s = malloc(n);

	*len = (size_t)snprintf(s, n, status_and_heads, strlen(body));
	memcpy(s + *len, body, strlen(body) + 1);
	*len += strlen(body);
	return s;
}

static void
test_request_head(void)
{
	char b[256];
	int n;

	n = spamd_request_head(b, sizeof(b), "HEADERS", 1234, "alice");
	CHECK_STR(b, "HEADERS SPAMC/1.5\r\nContent-length: 1234\r\nUser: alice\r\n\r\n");
	CHECK_INT(n, strlen(b));
	spamd_request_head(b, sizeof(b), "PROCESS", 0, NULL);
	CHECK_STR(b, "PROCESS SPAMC/1.5\r\nContent-length: 0\r\n\r\n");
	/* Hostile user names: a header line must not be split or smuggled. */
	CHECK_INT(spamd_request_head(b, sizeof(b), "HEADERS", 1, "a\r\nX: y"), -1);
	CHECK_INT(spamd_request_head(b, sizeof(b), "HEADERS", 1, "a b"), -1);
	CHECK_INT(spamd_request_head(b, sizeof(b), "HEADERS", 1, ""), -1);
	CHECK_INT(spamd_request_head(b, 20, "HEADERS", 1, "alice"), -1);
}

static void
test_reply_spam(void)
{
	struct spamd_reply r;
	char err[128];
	size_t len, i;
	char *s = reply_of("SPAMD/1.1 0 EX_OK\r\nContent-length: %zu\r\n"
	    "Spam: True ; 1002.7 / 5.0\r\n\r\n", SPAM_HEADERS, &len);

	CHECK_INT(spamd_reply_parse(s, len, true, &r, err, sizeof(err)), 1);
	CHECK_INT(r.major, 1);
	CHECK_INT(r.minor, 1);
	CHECK_INT(r.code, 0);
	CHECK_STR(r.message, "EX_OK");
	CHECK(r.has_spam && r.is_spam);
	CHECK(r.score > 1002.69 && r.score < 1002.71);
	CHECK(r.threshold > 4.99 && r.threshold < 5.01);
	CHECK_MEM(r.body, r.body_len, SPAM_HEADERS, strlen(SPAM_HEADERS));
	/* Every split point: incomplete until the last octet, and an error
	 * if the connection ends there. */
	for (i = 0; i < len; i++) {
		CHECK_INT(spamd_reply_parse(s, i, false, &r, err, sizeof(err)), 0);
		CHECK_INT(spamd_reply_complete(s, i), 0);
		CHECK_INT(spamd_reply_parse(s, i, true, &r, err, sizeof(err)), -1);
	}
	CHECK_INT(spamd_reply_complete(s, len), 1);
	free(s);
}

static void
test_reply_variants(void)
{
	struct spamd_reply r;
	char err[128];
	const char *s;

	s = "SPAMD/1.1 0 EX_OK\r\nSpam: False ; -1.9 / 5.0\r\nContent-length: 0\r\n\r\n";
	CHECK_INT(spamd_reply_parse(s, strlen(s), true, &r, err, sizeof(err)), 1);
	CHECK(r.has_spam && !r.is_spam && r.score < -1.89 && r.score > -1.91);
	CHECK_INT(r.body_len, 0);
	/* Unknown lines are not ours; no length: the body runs to EOF. */
	s = "SPAMD/1.1 0 EX_OK\r\nDidSet: local\r\nSpam: Yes ; 7 / 5\r\n\r\nabc";
	CHECK_INT(spamd_reply_parse(s, strlen(s), false, &r, err, sizeof(err)), 0);
	CHECK_INT(spamd_reply_parse(s, strlen(s), true, &r, err, sizeof(err)), 1);
	CHECK_MEM(r.body, r.body_len, "abc", 3);
	/* An error is whole with its status line. */
	s = "SPAMD/1.0 76 Bad header line: (Content-length mismatch: 3 vs. 5)\r\n";
	CHECK_INT(spamd_reply_parse(s, strlen(s), false, &r, err, sizeof(err)), 1);
	CHECK_INT(r.code, 76);
	CHECK_STR(r.message, "Bad header line: (Content-length mismatch: 3 vs. 5)");
	/* A reply without a Spam line parses; the bridge refuses it. */
	s = "SPAMD/1.1 0 EX_OK\r\nContent-length: 2\r\n\r\nab";
	CHECK_INT(spamd_reply_parse(s, strlen(s), true, &r, err, sizeof(err)), 1);
	CHECK(!r.has_spam);
}

static void
test_reply_hostile(void)
{
	static const char *const bad[] = {
		"HTTP/1.1 200 OK\r\n\r\n",
		"SPAMD/2.0 0 EX_OK\r\n\r\n",
		"SPAMD/1.1 x EX_OK\r\n\r\n",
		"SPAMD/1. 0 EX_OK\r\n\r\n",
		"SPAMD/1.1 0EX_OK\r\n\r\n",
		"SPAMD/1.1 0 EX_OK\r\nContent-length: 2\r\nContent-length: 2\r\n\r\nab",
		"SPAMD/1.1 0 EX_OK\r\nContent-length: -2\r\n\r\nab",
		"SPAMD/1.1 0 EX_OK\r\nContent-length: 99999999999999999999999\r\n\r\n",
		"SPAMD/1.1 0 EX_OK\r\nContent-length: 2x\r\n\r\nab",
		"SPAMD/1.1 0 EX_OK\r\nContent-length: 1\r\n\r\nab",
		"SPAMD/1.1 0 EX_OK\r\nSpam: Maybe ; 1 / 5\r\n\r\n",
		"SPAMD/1.1 0 EX_OK\r\nSpam: True ; nan / 5\r\n\r\n",
		"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5 junk\r\n\r\n",
		"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1e999 / 5\r\n\r\n",
		"SPAMD/1.1 0 EX_OK\r\nSpam: True 1 / 5\r\n\r\n",
		"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\nSpam: False ; 1 / 5\r\n\r\n",
		"SPAMD/1.1 0 EX_OK\r\nno colon here\r\n\r\n",
		"SPAMD/1.1 0 EX_OK\r\n: empty name\r\n\r\n",
		"",
	};
	struct spamd_reply r;
	char err[128], *big;
	size_t i, n;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (spamd_reply_parse(bad[i], strlen(bad[i]), true, &r, err,
		    sizeof(err)) != -1) {
			fprintf(stderr, "accepted: %s\n", bad[i]);
			CHECK(0);
		}
	}
	/* Endless lines and endless headers are refused before EOF. */
	n = SPAMD_MAX_HEAD_LINE + 100;
	big = malloc(n + 100);
	memset(big, 'x', n);
	CHECK_INT(spamd_reply_parse(big, n, false, &r, err, sizeof(err)), -1);
	memcpy(big, "SPAMD/1.1 0 EX_OK\r\n", 19);
	CHECK_INT(spamd_reply_parse(big, n, false, &r, err, sizeof(err)), -1);
	for (i = 19; i + 6 <= n; i += 6)
		memcpy(big + i, "A: b\r\n", 6);
	CHECK_INT(spamd_reply_parse(big, i, false, &r, err, sizeof(err)), -1);
	free(big);
}

/* Apply the diff's edits with the proxy's own code and compare, per field
 * name, the values in order with what spamd produced. */
static char *
apply(const char *msg, const struct hedit *e, size_t n, size_t *outlen)
{
	struct fp_edit *fe = calloc(n ? n : 1, sizeof(*fe));
	struct fp_buf out = { 0 };
	size_t i;

	for (i = 0; i < n; i++) {
		fe[i].op = e[i].op == HEDIT_ADD ? FP_EDIT_ADD :
		    e[i].op == HEDIT_CHANGE ? FP_EDIT_CHANGE : FP_EDIT_DELETE;
		fe[i].name = (struct fp_str){ e[i].name, e[i].nlen };
		fe[i].value = (struct fp_str){ e[i].value, e[i].vlen };
		fe[i].index = e[i].index;
		CHECK(fp_edit_invalid(&fe[i]) == NULL);
	}
	CHECK_INT(fp_apply_edits(msg, strlen(msg), fe, n, &out), 0);
	free(fe);
	fp_buf_append(&out, "", 1);
	*outlen = out.len - 1;
	return out.data;
}

static bool
same_fields(const struct hlist *a, const struct hlist *b)
{
	size_t i, j, k;

	if (a->n != b->n)
		return false;
	for (i = 0; i < a->n; i++) {
		/* The k-th field of this name in a is the k-th in b. */
		for (j = 0, k = 0; j < i; j++)
			k += name_cmp(&a->f[j], &a->f[i]) == 0;
		for (j = 0; j < b->n; j++)
			if (name_cmp(&b->f[j], &a->f[i]) == 0 && k-- == 0)
				break;
		if (j == b->n || !same_value(&a->f[i], &b->f[j]))
			return false;
	}
	return true;
}

static void
check_diff(const char *from, const char *to, size_t want_edits)
{
	struct hlist a, b, c;
	struct hedit *e;
	size_t n, olen;
	char *out;

	CHECK_INT(hlist_parse(from, strlen(from), &a), 0);
	CHECK_INT(hlist_parse(to, strlen(to), &b), 0);
	CHECK_INT(hdr_diff(&a, &b, 0, &e, &n), 0);
	CHECK_INT(n, want_edits);
	out = apply(from, e, n, &olen);
	CHECK_INT(hlist_parse(out, olen, &c), 0);
	CHECK(same_fields(&b, &c));
	/* The body is untouched. */
	CHECK_STR(out + pf_body_offset(out, olen), from + pf_body_offset(from,
	    strlen(from)));
	free(out);
	free(e);
	hlist_free(&a);
	hlist_free(&b);
	hlist_free(&c);
}

static void
test_diff(void)
{
	struct hlist a, b;
	struct hedit *e;
	size_t n;

	/* The real cases: markup added, a forged flag removed. */
	check_diff("From: a@example.org\r\nTo: b@example.org\r\nSubject: test "
	    "spam\r\nMessage-ID: <g@t>\r\n\r\nXJS*C4JDBQADN1\r\n", SPAM_HEADERS, 4);
	check_diff(HAM_IN, HAM_HEADERS, 4);
	CHECK_INT(hlist_parse(HAM_IN, strlen(HAM_IN), &a), 0);
	CHECK_INT(hlist_parse(HAM_HEADERS, strlen(HAM_HEADERS), &b), 0);
	CHECK_INT(hdr_diff(&a, &b, 0, &e, &n), 0);
	CHECK_INT(e[0].op, HEDIT_DELETE);
	CHECK_INT(e[0].index, 0);
	CHECK_INT(e[1].op, HEDIT_ADD);
	CHECK_MEM(e[1].name, e[1].nlen, "X-Spam-Checker-Version", 22);
	CHECK_INT(e[2].vlen, 0);		/* "X-Spam-Level: " */
	free(e);
	hlist_free(&a);
	hlist_free(&b);
	/* rewrite_header Subject: a change in place; nothing when equal,
	 * whatever the case of the names. */
	check_diff("Subject: hi\r\nFrom: x\r\n\r\nb\r\n",
	    "subject: [SPAM] hi\r\nFROM: x\r\nX-Spam-Flag: YES\r\n\r\n", 2);
	check_diff("Subject: hi\r\n\r\n", "SUBJECT: hi\r\n\r\n", 0);
	/* Repeated names: more, fewer, changed in the middle; folds. */
	check_diff("Received: 1\r\nReceived: 2\r\nReceived: 3\r\nX: a\r\n\r\n",
	    "Received: 1\r\nReceived: 2b\r\nX: a\r\n\r\n", 2);
	check_diff("Received: 1\r\nX: a\r\n\r\nbody",
	    "X: a\r\nReceived: 0\r\nReceived: 1\r\n\tfolded\r\nReceived: 9\r\n\r\n", 3);
	/* LF messages, a message that is all header, an empty one. */
	check_diff("A: 1\nB: 2\n\nbody\n", "A: 1\nB: 3\nC: 4\n  more\n\n", 2);
	check_diff("A: 1\r\nB: 2", "A: 1\r\nB: 2\r\nC: 3\r\n\r\n", 1);
	check_diff("", "X-Spam-Flag: NO\r\n\r\n", 1);
}

static void
test_tags_only_and_mime(void)
{
	/* report_safe 1: spamd's header block belongs to its wrapper. */
	const char *orig = "From: a@example.org\r\nSubject: test spam\r\n"
	    "Content-Type: text/plain\r\n\r\nGTUBE\r\n";
	const char *wrapped = "Received: from localhost by vm\r\n\twith "
	    "SpamAssassin;\r\nFrom: a@example.org\r\nSubject: test spam\r\n"
	    "X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=1000\r\n"
	    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
	    "boundary=\"--=_x\"\r\n\r\n";
	struct hlist a, b;
	struct hedit *e;
	size_t n, i;

	CHECK_INT(hlist_parse(orig, strlen(orig), &a), 0);
	CHECK_INT(hlist_parse(wrapped, strlen(wrapped), &b), 0);
	CHECK(hdr_mime_changed(&a, &b));
	CHECK(!hdr_mime_changed(&a, &a));
	CHECK_INT(hdr_diff(&a, &b, HDIFF_TAGS_ONLY, &e, &n), 0);
	CHECK_INT(n, 2);
	for (i = 0; i < n; i++)
		CHECK(e[i].op == HEDIT_ADD && strncasecmp(e[i].name, "X-Spam-", 7) == 0);
	free(e);
	CHECK_INT(hdr_diff(&a, &b, 0, &e, &n), 0);
	CHECK_INT(n, 5);
	free(e);
	hlist_free(&a);
	hlist_free(&b);
}

static void
test_diff_hostile(void)
{
	struct hlist a, b;
	struct hedit *e;
	size_t n, i;
	char *big = malloc(12 * (HDR_MAX_FIELDS + 10) + 10), *p = big;

	/* More fields than a header block may have. */
	for (i = 0; i < HDR_MAX_FIELDS + 1; i++)
		p += sprintf(p, "X%05zu: v\r\n", i);
	CHECK_INT(hlist_parse(big, (size_t)(p - big), &a), -1);
	/* More edits than a verdict may carry. */
	p = big;
	for (i = 0; i < HDR_MAX_EDITS + 1; i++)
		p += sprintf(p, "X%05zu: v\r\n", i);
	CHECK_INT(hlist_parse("", 0, &a), 0);
	CHECK_INT(hlist_parse(big, (size_t)(p - big), &b), 0);
	CHECK_INT(hdr_diff(&a, &b, 0, &e, &n), -1);
	hlist_free(&a);
	hlist_free(&b);
	/* Where the proxy's header block ends, ours does: at a line that is
	 * no field, and a continuation of nothing. */
	CHECK_INT(hlist_parse("A: 1\r\nnot a field\r\nB: 2\r\n\r\n", 27, &a), 0);
	CHECK_INT(a.n, 1);
	hlist_free(&a);
	CHECK_INT(hlist_parse(" cont\r\nA: 1\r\n\r\n", 15, &a), 0);
	CHECK_INT(a.n, 0);
	hlist_free(&a);
	CHECK_INT(hlist_parse("A : 1\r\nB\t:2\r\n\r\n", 16, &a), 0);
	CHECK_INT(a.n, 2);
	CHECK_MEM(a.f[1].value, a.f[1].vlen, "2", 1);
	hlist_free(&a);
	free(big);
}

static void
test_options(void)
{
	struct bridge_addr a;
	char err[256];
	uint64_t v;
	double d;

	CHECK_INT(bridge_addr_parse(&a, "127.0.0.1:783", err, sizeof(err)), 0);
	CHECK_INT(a.ss.ss_family, AF_INET);
	CHECK_INT(bridge_addr_parse(&a, "[::1]:783", err, sizeof(err)), 0);
	CHECK_INT(a.ss.ss_family, AF_INET6);
	CHECK_INT(bridge_addr_parse(&a, "unix:/run/spamd.sock", err, sizeof(err)), 0);
	CHECK_INT(a.ss.ss_family, AF_UNIX);
	/* Names would need a resolver: refused, and said why. */
	CHECK_INT(bridge_addr_parse(&a, "localhost:783", err, sizeof(err)), -1);
	CHECK(strstr(err, "not an IP address") != NULL);
	CHECK_INT(bridge_addr_parse(&a, "::1:783", err, sizeof(err)), -1);
	CHECK_INT(bridge_addr_parse(&a, "127.0.0.1:0", err, sizeof(err)), -1);
	CHECK_INT(bridge_addr_parse(&a, "127.0.0.1:65536", err, sizeof(err)), -1);
	CHECK_INT(bridge_addr_parse(&a, "127.0.0.1:+5", err, sizeof(err)), -1);
	CHECK_INT(bridge_addr_parse(&a, "127.0.0.1", err, sizeof(err)), -1);
	CHECK_INT(bridge_addr_parse(&a, "unix:relative", err, sizeof(err)), -1);
	memset(err, 'a', sizeof(err));
	memcpy(err, "unix:/", 6);
	err[200] = '\0';
	CHECK_INT(bridge_addr_parse(&a, err, err, sizeof(err)), -1);
	CHECK_INT(bridge_parse_size("512000", &v), 0);
	CHECK_INT(v, 512000);
	CHECK_INT(bridge_parse_size("25M", &v), 0);
	CHECK_INT(v, 25 * 1024 * 1024);
	CHECK_INT(bridge_parse_size("500k", &v), 0);
	CHECK_INT(v, 512000);
	CHECK_INT(bridge_parse_size("-1", &v), -1);
	CHECK_INT(bridge_parse_size("1MB", &v), -1);
	CHECK_INT(bridge_parse_size("99999999999999G", &v), -1);
	CHECK_INT(bridge_parse_seconds("0.5", &d), 0);
	CHECK_INT(bridge_parse_seconds("0", &d), -1);
	CHECK_INT(bridge_parse_seconds("inf", &d), -1);
	CHECK_INT(bridge_parse_seconds("5s", &d), -1);
}

int
main(void)
{
	RUN(test_request_head);
	RUN(test_reply_spam);
	RUN(test_reply_variants);
	RUN(test_reply_hostile);
	RUN(test_diff);
	RUN(test_tags_only_and_mime);
	RUN(test_diff_hostile);
	RUN(test_options);
	return UNIT_DONE();
}
