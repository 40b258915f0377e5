/* test_edit.c: unit tests for header edits (protocol/fp_edit.c): add,
 * change, delete, folding, index rules, odd messages and hostile edits. */
#include <stdlib.h>
#include <string.h>

#include "fp.h"
#include "unit.h"

#define ADD(n, v)	{ .op = FP_EDIT_ADD, .name = FP_STR(n), .value = FP_STR(v) }
#define CHG(n, v, i)	{ .op = FP_EDIT_CHANGE, .name = FP_STR(n), \
			  .value = FP_STR(v), .index = (i) }
#define DEL(n, i)	{ .op = FP_EDIT_DELETE, .name = FP_STR(n), .index = (i) }

/* Applies edits to msg and compares the result with want. */
static void
expect(const char *msg, const struct fp_edit *e, size_t n, const char *want)
{
	struct fp_buf out = { 0 };

	CHECK_INT(fp_apply_edits(msg, strlen(msg), e, n, &out), 0);
	CHECK_MEM(out.data, out.len, want, strlen(want));
	if (out.len != strlen(want) || memcmp(out.data, want, out.len) != 0)
		fprintf(stderr, "  got: [%.*s]\n", (int)out.len, out.data);
	fp_buf_free(&out);
}

static void
expect_invalid(const struct fp_edit *e)
{
	struct fp_buf out = { 0 };

	CHECK(fp_edit_invalid(e) != NULL);
	CHECK(fp_buf_append(&out, "keep", 4) == 0);
	CHECK_INT(fp_apply_edits("A: 1\r\n\r\n", 8, e, 1, &out), -1);
	CHECK_MEM(out.data, out.len, "keep", 4);	/* untouched */
	fp_buf_free(&out);
}

static const char msg1[] =
    "Received: from a\r\n"
    "\tby b\r\n"
    "Subject: hello\r\n"
    "X-Spam-Status: No\r\n"
    "subject: second\r\n"
    "\r\n"
    "Subject: in the body, never touched\r\n";

static void
test_add(void)
{
	struct fp_edit e[] = { ADD("X-Spam-Flag", "YES"), ADD("X-Two", "2") };

	expect(msg1, e, 2,
	    "Received: from a\r\n"
	    "\tby b\r\n"
	    "Subject: hello\r\n"
	    "X-Spam-Status: No\r\n"
	    "subject: second\r\n"
	    "X-Spam-Flag: YES\r\n"
	    "X-Two: 2\r\n"
	    "\r\n"
	    "Subject: in the body, never touched\r\n");
}

static void
test_add_empty_value(void)
{
	struct fp_edit e[] = { ADD("X-Empty", "") };

	expect("A: 1\r\n\r\nb", e, 1, "A: 1\r\nX-Empty:\r\n\r\nb");
}

static void
test_change_case_insensitive(void)
{
	struct fp_edit first[] = { CHG("SUBJECT", "[SPAM] hello", 1) };
	struct fp_edit second[] = { CHG("Subject", "[SPAM] second", 2) };

	/* the message's own spelling of the name is kept */
	expect(msg1, first, 1,
	    "Received: from a\r\n\tby b\r\nSubject: [SPAM] hello\r\n"
	    "X-Spam-Status: No\r\nsubject: second\r\n\r\n"
	    "Subject: in the body, never touched\r\n");
	expect(msg1, second, 1,
	    "Received: from a\r\n\tby b\r\nSubject: hello\r\n"
	    "X-Spam-Status: No\r\nsubject: [SPAM] second\r\n\r\n"
	    "Subject: in the body, never touched\r\n");
}

static void
test_change_absent_adds(void)
{
	struct fp_edit third[] = { CHG("Subject", "third", 3) };
	struct fp_edit none[] = { CHG("X-New", "v", 1) };

	expect(msg1, third, 1,
	    "Received: from a\r\n\tby b\r\nSubject: hello\r\n"
	    "X-Spam-Status: No\r\nsubject: second\r\nSubject: third\r\n\r\n"
	    "Subject: in the body, never touched\r\n");
	expect("A: 1\r\n\r\n", none, 1, "A: 1\r\nX-New: v\r\n\r\n");
}

static void
test_change_folded(void)
{
	struct fp_edit e[] = { CHG("received", "from c\r\n by d", 1) };

	/* the continuation line goes with the field it belongs to */
	expect(msg1, e, 1,
	    "Received: from c\r\n by d\r\nSubject: hello\r\n"
	    "X-Spam-Status: No\r\nsubject: second\r\n\r\n"
	    "Subject: in the body, never touched\r\n");
}

static void
test_delete(void)
{
	struct fp_edit all[] = { DEL("subject", 0) };
	struct fp_edit second[] = { DEL("Subject", 2) };
	struct fp_edit folded[] = { DEL("Received", 1) };
	struct fp_edit absent[] = { DEL("X-Nothing", 0), DEL("Subject", 5) };

	expect(msg1, all, 1,
	    "Received: from a\r\n\tby b\r\nX-Spam-Status: No\r\n\r\n"
	    "Subject: in the body, never touched\r\n");
	expect(msg1, second, 1,
	    "Received: from a\r\n\tby b\r\nSubject: hello\r\n"
	    "X-Spam-Status: No\r\n\r\n"
	    "Subject: in the body, never touched\r\n");
	expect(msg1, folded, 1,
	    "Subject: hello\r\nX-Spam-Status: No\r\nsubject: second\r\n\r\n"
	    "Subject: in the body, never touched\r\n");
	expect(msg1, absent, 2, msg1);
}

/* Edits apply in order, each to the result of the ones before. */
static void
test_sequence(void)
{
	struct fp_edit e[] = {
		DEL("X-Spam-Status", 0),
		ADD("X-Spam-Status", "Yes, score=9"),
		CHG("x-spam-status", "Yes, score=10", 1),
		DEL("Subject", 1),
		DEL("Subject", 1),	/* the former second is now the first */
	};

	expect(msg1, e, 5,
	    "Received: from a\r\n\tby b\r\nX-Spam-Status: Yes, score=10\r\n\r\n"
	    "Subject: in the body, never touched\r\n");
}

static void
test_fold_in_value(void)
{
	struct fp_edit crlf[] = { ADD("X-Report", "line one\r\n\tline two") };
	struct fp_edit lf[] = { ADD("X-Report", "line one\n line two") };

	expect("A: 1\r\n\r\nb\r\n", crlf, 1,
	    "A: 1\r\nX-Report: line one\r\n\tline two\r\n\r\nb\r\n");
	/* a bare-LF fold is normalised to the message's CRLF */
	expect("A: 1\r\n\r\nb\r\n", lf, 1,
	    "A: 1\r\nX-Report: line one\r\n line two\r\n\r\nb\r\n");
}

static void
test_bare_lf_message(void)
{
	struct fp_edit e[] = {
		ADD("X-Report", "a\r\n\tb"), CHG("Subject", "new", 1),
		DEL("X-Old", 0),
	};

	expect("Subject: old\nX-Old: 1\n  folded\nTo: x\n\nbody\n", e, 3,
	    "Subject: new\nTo: x\nX-Report: a\n\tb\n\nbody\n");
}

static void
test_no_separator(void)
{
	struct fp_edit e[] = { ADD("X-A", "1") };
	struct fp_edit d[] = { DEL("Subject", 0) };

	/* headers only, final line end present */
	expect("Subject: s\r\n", e, 1, "Subject: s\r\nX-A: 1\r\n");
	/* headers only, no final line end: one is supplied before the add */
	expect("Subject: s", e, 1, "Subject: s\r\nX-A: 1\r\n");
	/* but not when nothing follows the unterminated field */
	expect("X-A: 0\r\nSubject: s", d, 1, "X-A: 0\r\n");
	/* empty message */
	expect("", e, 1, "X-A: 1\r\n");
	/* empty header block: the blank line comes first */
	expect("\r\nbody\r\n", e, 1, "X-A: 1\r\n\r\nbody\r\n");
	/* a line that is no header ends the block: a blank line is put
	 * after the fields written, so the rest stays body */
	expect("Subject: s\r\nnot a header line\r\nX-B: 2\r\n", e, 1,
	    "Subject: s\r\nX-A: 1\r\n\r\nnot a header line\r\nX-B: 2\r\n");
	/* a message that starts with a continuation has no header block */
	expect(" odd\r\nX: 1\r\n", d, 1, " odd\r\nX: 1\r\n");
	/* ... and an added field must not swallow that line, nor turn the
	 * lines after it into fields (found by fuzz_edit, F1) */
	expect(" folded\r\nX-Injected: yes\r\n\r\nbody\r\n", e, 1,
	    "X-A: 1\r\n\r\n folded\r\nX-Injected: yes\r\n\r\nbody\r\n");
	/* the same with the unterminated last field */
	expect("Subject: s", e, 1, "Subject: s\r\nX-A: 1\r\n");
}

/* Obsolete "Name :" syntax is matched, and a changed field keeps it. */
static void
test_obsolete_space_before_colon(void)
{
	struct fp_edit e[] = { CHG("Subject", "new", 1) };

	expect("Subject : old\r\n\r\n", e, 1, "Subject : new\r\n\r\n");
}

static void
test_no_edits_copies(void)
{
	expect(msg1, NULL, 0, msg1);
}

static void
test_appends_to_out(void)
{
	struct fp_edit e[] = { ADD("X-A", "1") };
	struct fp_buf out = { 0 };

	CHECK(fp_buf_append(&out, "PFX", 3) == 0);
	CHECK_INT(fp_apply_edits("B: 2\r\n\r\n", 8, e, 1, &out), 0);
	CHECK_MEM(out.data, out.len, "PFXB: 2\r\nX-A: 1\r\n\r\n", 19);
	fp_buf_free(&out);
}

static void
test_invalid_names(void)
{
	char longname[FP_MAX_NAME + 2];
	struct fp_edit e = ADD("X", "v");

	e.name = FP_STR("");
	expect_invalid(&e);
	e.name = FP_STR("X-A:");
	expect_invalid(&e);
	e.name = FP_STR("X A");
	expect_invalid(&e);
	e.name = FP_STR("X-\xc3\xa4");
	expect_invalid(&e);
	e.name = FP_STR("X-\tA");
	expect_invalid(&e);
	e.name = (struct fp_str){ "X\0A", 3 };
	expect_invalid(&e);
	memset(longname, 'N', sizeof(longname));
	e.name = (struct fp_str){ longname, FP_MAX_NAME + 1 };
	expect_invalid(&e);
	e.name = (struct fp_str){ longname, FP_MAX_NAME };
	CHECK(fp_edit_invalid(&e) == NULL);
	e.op = (enum fp_edit_op)7;
	expect_invalid(&e);
}

static void
test_invalid_values(void)
{
	struct fp_edit e = ADD("X-A", "");
	static const char *const bad[] = {
		"a\rb",			/* bare CR */
		"a\nb",			/* LF without WSP: a new header */
		"a\r\nBcc: x@example.org",
		"a\r\n",		/* ends in a break */
		"a\r\n \r\n b",		/* blank continuation line */
		"a\r\n\t",
		"a\r",
	};
	char *big;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		e.value = fp_str_c(bad[i]);
		expect_invalid(&e);
	}
	e.value = (struct fp_str){ "a\0b", 3 };
	expect_invalid(&e);
	e.value = (struct fp_str){ NULL, 0 };
	expect_invalid(&e);
	big = malloc(FP_MAX_VALUE + 1);
	memset(big, 'v', FP_MAX_VALUE + 1);
	e.value = (struct fp_str){ big, FP_MAX_VALUE + 1 };
	expect_invalid(&e);
	e.value.len = FP_MAX_VALUE;
	CHECK(fp_edit_invalid(&e) == NULL);
	free(big);
	/* change needs an occurrence number; delete's value is ignored */
	e = (struct fp_edit)CHG("Subject", "x", 0);
	expect_invalid(&e);
	e = (struct fp_edit)DEL("Subject", 0);
	e.value = FP_STR("a\nb");
	CHECK(fp_edit_invalid(&e) == NULL);
}

/* One invalid edit among valid ones: nothing is applied. */
static void
test_all_or_nothing(void)
{
	struct fp_edit e[] = { ADD("X-A", "1"), ADD("Bad Name", "2") };
	struct fp_buf out = { 0 };

	CHECK_INT(fp_apply_edits(msg1, strlen(msg1), e, 2, &out), -1);
	CHECK_INT(out.len, 0);
	fp_buf_free(&out);
}

/* 100k header lines (a hostile message): deleting them all stays linear
 * per edit and yields just the body. */
static void
test_many_headers(void)
{
	struct fp_edit e[] = { DEL("X-H", 0), ADD("X-Done", "1") };
	struct fp_buf msg = { 0 }, out = { 0 };
	size_t i;

	for (i = 0; i < 100000; i++)
		CHECK(fp_buf_append(&msg, "x-h: v\r\n", 8) == 0);
	CHECK(fp_buf_append(&msg, "\r\nbody\r\n", 8) == 0);
	CHECK_INT(fp_apply_edits(msg.data, msg.len, e, 2, &out), 0);
	CHECK_MEM(out.data, out.len, "X-Done: 1\r\n\r\nbody\r\n", 19);
	fp_buf_free(&msg);
	fp_buf_free(&out);
}

/* NUL and bare CR inside the original message pass through untouched. */
static void
test_odd_bytes_in_message(void)
{
	static const char m[] = "A: x\0y\r\nB: c\rd\r\n\r\n\0body";
	static const char w[] = "A: x\0y\r\nB: c\rd\r\nX: 1\r\n\r\n\0body";
	struct fp_edit e[] = { ADD("X", "1") };
	struct fp_buf out = { 0 };

	CHECK_INT(fp_apply_edits(m, sizeof(m) - 1, e, 1, &out), 0);
	CHECK_MEM(out.data, out.len, w, sizeof(w) - 1);
	fp_buf_free(&out);
}

int
main(void)
{
	RUN(test_add);
	RUN(test_add_empty_value);
	RUN(test_change_case_insensitive);
	RUN(test_change_absent_adds);
	RUN(test_change_folded);
	RUN(test_delete);
	RUN(test_sequence);
	RUN(test_fold_in_value);
	RUN(test_bare_lf_message);
	RUN(test_no_separator);
	RUN(test_obsolete_space_before_colon);
	RUN(test_no_edits_copies);
	RUN(test_appends_to_out);
	RUN(test_invalid_names);
	RUN(test_invalid_values);
	RUN(test_all_or_nothing);
	RUN(test_many_headers);
	RUN(test_odd_bytes_in_message);
	return UNIT_DONE();
}
