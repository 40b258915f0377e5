/* test_pop3.c: the POP3 grammar: command lines and the command table, and
 * the reply parser fed whole, byte by byte and with hostile input. */
#include <stdlib.h>
#include <string.h>

#include "buffer.h"
#include "pop3.h"
#include "unit.h"

static void
test_line_len(void)
{
	CHECK_INT(pop3_line_len("NOOP\r\n", 6, 255), 6);
	CHECK_INT(pop3_line_len("NOOP\n", 5, 255), 5);
	CHECK_INT(pop3_line_len("NOO", 3, 255), 0);
	CHECK_INT(pop3_line_len("", 0, 255), 0);
	char big[300];
	memset(big, 'a', sizeof(big));
	CHECK_INT(pop3_line_len(big, sizeof(big), 255), -1);
	CHECK_INT(pop3_line_len(big, 255, 255), -1);
	CHECK_INT(pop3_line_len(big, 254, 255), 0);
	big[254] = '\n';
	CHECK_INT(pop3_line_len(big, sizeof(big), 255), 255);
}

static void
test_cmd_parse(void)
{
	struct cmd c;

	CHECK_INT(pop3_cmd_parse("user alice%host\r\n", 17, &c), 0);
	CHECK_INT(c.id, CMD_USER);
	CHECK_MEM(c.args, c.args_len, "alice%host", 10);
	CHECK_INT(pop3_cmd_parse("LIST\r\n", 6, &c), 0);
	CHECK_INT(c.id, CMD_LIST);
	CHECK_INT(c.multi, 1);
	CHECK_INT(pop3_cmd_parse("LIST 3\r\n", 8, &c), 0);
	CHECK_INT(c.multi, 0);
	CHECK_INT(pop3_cmd_parse("uidl\n", 5, &c), 0);
	CHECK_INT(c.id, CMD_UIDL);
	CHECK_INT(c.multi, 1);
	CHECK_INT(pop3_cmd_parse("UIDL 1\r\n", 8, &c), 0);
	CHECK_INT(c.multi, 0);
	CHECK_INT(pop3_cmd_parse("RETR 1\r\n", 8, &c), 0);
	CHECK_INT(c.multi, 1);
	CHECK_INT(pop3_cmd_parse("TOP 1 0\r\n", 9, &c), 0);
	CHECK_INT(c.id, CMD_TOP);
	CHECK_INT(c.multi, 1);
	CHECK_INT(pop3_cmd_parse("CAPA\r\n", 6, &c), 0);
	CHECK_INT(c.multi, 1);
	CHECK_INT(pop3_cmd_parse("AUTH\r\n", 6, &c), 0);
	CHECK_INT(c.multi, 1);
	CHECK_INT(pop3_cmd_parse("AUTH PLAIN\r\n", 12, &c), 0);
	CHECK_INT(c.multi, 0);
	CHECK_INT(pop3_cmd_parse("XTND foo\r\n", 10, &c), 0);
	CHECK_INT(c.id, CMD_UNKNOWN);
	CHECK_INT(pop3_cmd_parse("RETRX 1\r\n", 9, &c), 0);
	CHECK_INT(c.id, CMD_UNKNOWN);
	CHECK_INT(pop3_cmd_parse("shutdown\r\n", 10, &c), 0);
	CHECK_INT(c.id, CMD_SHUTDOWN);
	/* Hostile: NUL, bare CR, no keyword, no line end. */
	CHECK_INT(pop3_cmd_parse("US\0R x\r\n", 8, &c), -1);
	CHECK_INT(pop3_cmd_parse("USER a\rb\r\n", 10, &c), -1);
	CHECK_INT(pop3_cmd_parse(" USER\r\n", 7, &c), -1);
	CHECK_INT(pop3_cmd_parse("\r\n", 2, &c), -1);
	CHECK_INT(pop3_cmd_parse("USER", 4, &c), -1);
	CHECK_INT(pop3_cmd_parse("", 0, &c), -1);
	/* 8-bit bytes are just bytes. */
	CHECK_INT(pop3_cmd_parse("USER \xe4\xf6\r\n", 9, &c), 0);
	CHECK_INT(c.args_len, 2);
}

static void
test_msgno(void)
{
	CHECK_INT(pop3_msgno("1", 1), 1);
	CHECK_INT(pop3_msgno("2147483647", 10), 2147483647L);
	CHECK_INT(pop3_msgno("2147483648", 10), -1);
	CHECK_INT(pop3_msgno("0", 1), -1);
	CHECK_INT(pop3_msgno("-1", 2), -1);
	CHECK_INT(pop3_msgno("", 0), -1);
	CHECK_INT(pop3_msgno("1 2", 3), -1);
	CHECK_INT(pop3_msgno("99999999999", 11), -1);
	CHECK_INT(pop3_count("0", 1), 0);
	CHECK_INT(pop3_count("10", 2), 10);
	CHECK_INT(pop3_count("-0", 2), -1);
	CHECK_INT(pop3_count("", 0), -1);
	CHECK_INT(pop3_count("2147483648", 10), -1);
}

static void
test_octets(void)
{
	CHECK_INT(pop3_status_octets("+OK 1234 octets\r\n", 17), 1234);
	CHECK_INT(pop3_status_octets("+OK 0\r\n", 7), 0);
	CHECK_INT(pop3_status_octets("+OK message follows\r\n", 21), -1);
	CHECK_INT(pop3_status_octets("-ERR 12\r\n", 9), -1);
	CHECK_INT(pop3_status_octets("+OK 99999999999999999999999\r\n", 29), -1);
}

/*
 * Feed `in` to a parser in slices of `step` octets (0: all at once), like a
 * socket would, and rebuild what a relay forwards (raw) and what a filter
 * would see (unstuffed). Returns the number of events of each kind seen.
 */
struct run {
	struct buf raw, unstuffed;
	int status, ok, cont, end, error;
	size_t consumed;
};

static void
feed(const char *in, size_t len, int multi, size_t step, struct run *r)
{
	struct resp_parser p;
	struct buf pending = { 0 };
	size_t fed = 0;

	memset(r, 0, sizeof(*r));
	resp_begin(&p, multi);
	while (!resp_done(&p) && !r->error) {
		size_t take = step ? step : len;
		if (fed < len) {
			if (take > len - fed)
				take = len - fed;
			buf_append(&pending, in + fed, take);
			fed += take;
		}
		for (;;) {
			struct resp_event ev;
			size_t n = resp_parse(&p, buf_ptr(&pending), pending.len, &ev);
			if (ev.kind == RESP_MORE)
				break;
			if (ev.kind == RESP_ERROR) {
				r->error++;
				break;
			}
			CHECK_INT(n, ev.len);
			buf_append(&r->raw, ev.p, ev.len);
			r->consumed += n;
			switch (ev.kind) {
			case RESP_STATUS:
				r->status++;
				r->ok = ev.ok;
				break;
			case RESP_CONT:
				r->cont++;
				break;
			case RESP_DATA:
				buf_append(&r->unstuffed, ev.p + ev.stuffed,
				    ev.len - ev.stuffed);
				break;
			case RESP_END:
				r->end++;
				break;
			default:
				break;
			}
			buf_consume(&pending, n);
			if (resp_done(&p))
				break;
		}
		if (fed == len && !resp_done(&p) && !r->error)
			break;	/* input ran out */
	}
	buf_free(&pending);
}

static void
run_free(struct run *r)
{
	buf_free(&r->raw);
	buf_free(&r->unstuffed);
}

static void
test_resp_single(void)
{
	struct run r;
	static const char ok[] = "+OK 2 320\r\n+OK next";

	feed(ok, strlen(ok), 0, 0, &r);
	CHECK_INT(r.status, 1);
	CHECK_INT(r.ok, 1);
	CHECK_INT(r.consumed, 11);	/* the next reply is left alone */
	run_free(&r);

	feed("-ERR [IN-USE] locked\r\n", 22, 1, 1, &r);
	CHECK_INT(r.status, 1);
	CHECK_INT(r.ok, 0);
	CHECK_INT(r.end, 0);		/* -ERR to a multi command: one line */
	CHECK_INT(r.consumed, 22);
	run_free(&r);

	feed("+ eyJ9\r\n", 8, 0, 0, &r);
	CHECK_INT(r.cont, 1);
	run_free(&r);

	feed("+OK\n", 4, 0, 0, &r);
	CHECK_INT(r.ok, 1);
	run_free(&r);

	/* Garbage and over-long status lines are errors, never buffered on. */
	feed("HELLO\r\n", 7, 0, 0, &r);
	CHECK_INT(r.error, 1);
	run_free(&r);
	feed("+OKAY\r\n", 7, 0, 0, &r);
	CHECK_INT(r.error, 1);
	run_free(&r);
	char *big = malloc(POP3_STATUS_MAX + 10);
	memset(big, 'x', POP3_STATUS_MAX + 10);
	memcpy(big, "+OK ", 4);
	feed(big, POP3_STATUS_MAX + 10, 0, 0, &r);
	CHECK_INT(r.error, 1);
	run_free(&r);
	free(big);
}

static void
test_resp_multi(void)
{
	static const char msg[] =
	    "+OK 60 octets\r\n"
	    "Subject: x\r\n"
	    "\r\n"
	    "..leading dot\r\n"
	    "..\r\n"
	    "...\r\n"
	    "plain\r\n"
	    ".\r\n";
	static const char unstuffed[] =
	    "Subject: x\r\n\r\n.leading dot\r\n.\r\n..\r\nplain\r\n";
	size_t len = strlen(msg);
	struct run r;

	/* Every slicing gives the same result: frames split at any byte. */
	for (size_t step = 0; step <= len; step++) {
		feed(msg, len, 1, step, &r);
		CHECK_INT(r.status, 1);
		CHECK_INT(r.end, 1);
		CHECK_INT(r.error, 0);
		CHECK_MEM(buf_ptr(&r.raw), r.raw.len, msg, len);
		CHECK_MEM(buf_ptr(&r.unstuffed), r.unstuffed.len, unstuffed,
		    strlen(unstuffed));
		run_free(&r);
	}
	/* An empty body. */
	feed("+OK\r\n.\r\n", 8, 1, 1, &r);
	CHECK_INT(r.end, 1);
	CHECK_INT(r.unstuffed.len, 0);
	run_free(&r);
	/* Bare-LF servers are tolerated. */
	feed("+OK\nline\n.\n", 11, 1, 0, &r);
	CHECK_INT(r.end, 1);
	CHECK_MEM(buf_ptr(&r.unstuffed), r.unstuffed.len, "line\n", 5);
	run_free(&r);
	/* A body with no terminator yet: everything relayed, no end. */
	feed("+OK\r\nabc\r\ndef", 13, 1, 0, &r);
	CHECK_INT(r.end, 0);
	CHECK_INT(r.consumed, 13);
	run_free(&r);
	/* ".x" at line start is stuffing whatever follows, as clients read it. */
	feed("+OK\r\n.x\r\n.\r\n", 12, 1, 0, &r);
	CHECK_MEM(buf_ptr(&r.unstuffed), r.unstuffed.len, "x\r\n", 3);
	run_free(&r);
}

static void
test_resp_long_lines(void)
{
	/* Lines far beyond 998 octets and 8-bit/NUL bytes pass untouched. */
	size_t n = 1 << 20;
	char *m = malloc(n + 32);
	size_t k = 0;
	k += (size_t)sprintf(m, "+OK\r\n");
	for (size_t i = 0; i < n; i++)
		m[k++] = (char)(i % 251 == 0 ? 0 : 0x80 + i % 100);
	memcpy(m + k, "\r\n.\r\n", 5);
	k += 5;
	struct run r;
	feed(m, k, 1, 4093, &r);
	CHECK_INT(r.end, 1);
	CHECK_MEM(buf_ptr(&r.raw), r.raw.len, m, k);
	CHECK_INT(r.unstuffed.len, n + 2);
	run_free(&r);
	free(m);
}

int
main(void)
{
	RUN(test_line_len);
	RUN(test_cmd_parse);
	RUN(test_msgno);
	RUN(test_octets);
	RUN(test_resp_single);
	RUN(test_resp_multi);
	RUN(test_resp_long_lines);
	return UNIT_DONE();
}
