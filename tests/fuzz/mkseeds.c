/* mkseeds.c: writes the seed corpus of tests/fuzz/corpus/ (`make fuzz-seeds`):
 * real POP3 exchanges, and frames produced by the codec itself. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fp.h"

static const char *dir;

static void
put(const char *target, const char *name, const void *prefix, size_t plen,
    const void *p, size_t len)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, target);
	if (mkdir(path, 0755) == -1 && errno != EEXIST) {
		perror(path);
		return;
	}
	snprintf(path, sizeof(path), "%s/%s/%s", dir, target, name);
	if ((f = fopen(path, "wb")) == NULL) {
		perror(path);
		return;
	}
	fwrite(prefix, 1, plen, f);
	fwrite(p, 1, len, f);
	fclose(f);
}

#define PUTS(t, n, pfx, s) put(t, n, pfx, sizeof(pfx) - 1, s, strlen(s))

static const char msg[] =
    "Return-Path: <a@example.org>\r\nFrom: a@example.org\r\n"
    "Subject: hi\r\n\tfolded\r\nX-Spam-Status: No\r\n\r\n"
    ".leading dot\r\nbody\r\n";

int
main(int argc, char **argv)
{
	static const uint32_t versions[] = { 1, 7 };
	static const struct fp_edit edits[] = {
		{ .op = FP_EDIT_ADD, .name = FP_STR("X-Spam-Flag"), .value = FP_STR("YES") },
		{ .op = FP_EDIT_DELETE, .name = FP_STR("X-Spam-Status"), .index = 0 },
		{ .op = FP_EDIT_CHANGE, .name = FP_STR("Subject"),
		  .value = FP_STR("[SPAM] hi\r\n\tfolded"), .index = 1 },
	};
	static const struct fp_str tags[] = { FP_STR("spam"), FP_STR("bayes") };
	struct fp_msg m[12];
	struct fp_buf b = { 0 }, all = { 0 };
	char name[32];
	size_t n = 0;

	dir = argc > 1 ? argv[1] : "tests/fuzz/corpus";

	/* --- client command streams (first octet: line limit) --- */
	PUTS("fuzz_cmd", "login", "\x00", "CAPA\r\nUSER alice%pop.example.com:110\r\n"
	    "PASS secret\r\nSTAT\r\nLIST\r\nUIDL 1\r\nRETR 1\r\nTOP 2 10\r\n"
	    "DELE 2\r\nRSET\r\nNOOP\r\nQUIT\r\n");
	PUTS("fuzz_cmd", "auth", "\x01", "AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n"
	    "AUTH LOGIN YWxpY2U=\r\nc2VjcmV0\r\n*\r\napop alice c4c9334bac560ecc979e58001b3e22fb\r\n");
	PUTS("fuzz_cmd", "hostile", "\x02", "RETR 0\r\nRETR -1\r\nRETR 2147483648\r\n"
	    "LIST 1 2\r\nUSER %n%s\r\nNO\0OP\r\nST\rAT\r\n \r\n\n");

	/* --- server replies (multi flags, slicing seed, stream) --- */
	PUTS("fuzz_resp", "retr", "\x05\x07", "+OK 3 messages\r\n+OK 120 octets\r\n"
	    "From: a\r\n\r\n..stuffed\r\n.x\r\nbody\r\n.\r\n-ERR no such message\r\n"
	    "+OK\r\n1 120\r\n2 200\r\n.\r\n");
	PUTS("fuzz_resp", "bare_lf", "\x03\x01", "+OK\n..\n.\r\n.\n+OK capa\nTOP\n.\n");
	PUTS("fuzz_resp", "sasl", "\x00\x03", "+ \r\n+OK logged in\r\n-ERR [AUTH] bad\r\n");
	PUTS("fuzz_resp", "dots", "\x01\xfe", "+OK\r\n.\r.\r\n..\r\n...\r\n.\rX\r\n.\r\n");

	/* --- routing (flags, 16 address octets, 2 port octets, text) --- */
	PUTS("fuzz_route", "percent", "\x00\x5d\xb8\xd8\x22" "\0\0\0\0\0\0\0\0\0\0\0\0" "\x00\x6e",
	    "john@example.com%POP.Example.com:995\n*.example.com:*\n10.0.0.0/8:110\n");
	PUTS("fuzz_route", "v6", "\x02\x20\x01\x0d\xb8" "\0\0\0\0\0\0\0\0\0\0\0\x01" "\x03\xe3",
	    "alice%[2001:DB8::1]:995\n[2001:db8::]/32:*\n[::ffff:10.0.0.0]/104:110\n");
	PUTS("fuzz_route", "loopback", "\x04\x7f\x00\x00\x01" "\0\0\0\0\0\0\0\0\0\0\0\0" "\x00\x6e",
	    "bob@127.0.0.1\n*:110\nlocalhost:*\n");
	PUTS("fuzz_route", "hostport", "\x01\x0a\x01\x02\x03" "\0\0\0\0\0\0\0\0\0\0\0\0" "\x00\x6e",
	    "pop.example.com:110\n*:*\n");

	/* --- codec frames, one per type, and all in one stream --- */
	m[n].type = FP_MSG_HELLO, m[n++].hello = (struct fp_hello){
	    .versions = versions, .nversions = 2, .proxy = FP_STR("pop3proxyd/0.1"),
	    .caps = FP_CAP_RETR | FP_CAP_TOP | FP_CAPS_ACTIONS | FP_CAP_CANCEL,
	    .max_frame = FP_DEFAULT_MAX_FRAME, .max_inflight = 32 };
	m[n].type = FP_MSG_HELLO_ACK, m[n++].hello_ack = (struct fp_hello_ack){
	    .version = 1, .filter = FP_STR("spamc-bridge 2"), .commands = FP_CAP_RETR,
	    .actions = FP_CAP_EDIT_HEADERS | FP_CAP_REJECT,
	    .max_message_size = 10u << 20, .max_frame = 1u << 20, .max_inflight = 8 };
	m[n].type = FP_MSG_REQUEST, m[n++].request = (struct fp_request){
	    .id = 42, .deadline_ms = 30000,
	    .session = { .id = FP_STR("s-0001"), .client = FP_STR("127.0.0.1:40000"),
		.user = FP_STR("alice"), .upstream_host = FP_STR("mail.example"),
		.upstream_port = 995, .tls_client = true },
	    .message = { .number = 3, .size = 1234, .uidl = FP_STR("UID-3"),
		.command = FP_CMD_TOP, .top_lines = 5 },
	    .body = { msg, sizeof(msg) - 1 } };
	m[n].type = FP_MSG_VERDICT, m[n++].verdict = (struct fp_verdict){
	    .id = 42, .action = FP_ACCEPT, .edits = edits, .nedits = 3,
	    .reason = FP_STR("score 7.5"), .tags = tags, .ntags = 2,
	    .has_score = true, .score = -7.5 };
	m[n].type = FP_MSG_VERDICT, m[n++].verdict = (struct fp_verdict){
	    .id = 43, .action = FP_REPLACE, .body = FP_STR("Subject: new\r\n\r\nx\r\n") };
	m[n].type = FP_MSG_VERDICT, m[n++].verdict = (struct fp_verdict){
	    .id = 44, .action = FP_REJECT, .notice = FP_STR("virus found"),
	    .quarantine_id = FP_STR("q/1") };
	m[n].type = FP_MSG_ERROR, m[n++].error = (struct fp_error){
	    .has_id = true, .id = 45, .code = FP_STR("busy"), .message = FP_STR("full") };
	m[n].type = FP_MSG_PING, m[n++].ping.id = 5;
	m[n].type = FP_MSG_PONG, m[n++].pong.id = UINT64_MAX;
	m[n].type = FP_MSG_CANCEL, m[n++].cancel.id = 46;
	m[n].type = FP_MSG_DRAIN, m[n++].drain.reason = FP_STR("restart");
	for (size_t i = 0; i < n; i++) {
		fp_buf_reset(&b);
		if (fp_encode(&b, &m[i]) == -1 || fp_encode(&all, &m[i]) == -1) {
			fprintf(stderr, "mkseeds: cannot encode %s\n",
			    fp_msg_type_name(m[i].type));
			return 1;
		}
		snprintf(name, sizeof(name), "%02zu_%s", i, fp_msg_type_name(m[i].type));
		/* role any (0), proxy (1) or filter (2); slicing seed */
		put("fuzz_codec", name, "\x00\x11", 2, b.data, b.len);
		if (m[i].type == FP_MSG_VERDICT) {
			/* edit seeds: mode, 2-octet message length, message, frame */
			char hdr[3] = { 1, (char)((sizeof(msg) - 1) >> 8),
			    (char)(sizeof(msg) - 1) };
			struct fp_buf e = { 0 };
			fp_buf_append(&e, msg, sizeof(msg) - 1);
			fp_buf_append(&e, b.data, b.len);
			put("fuzz_edit", name, hdr, 3, e.data, e.len);
			fp_buf_free(&e);
		}
	}
	put("fuzz_codec", "stream_proxy", "\x01\x03", 2, all.data, all.len);
	put("fuzz_codec", "stream_filter", "\x06\x40", 2, all.data, all.len);
	/* raw edits: op, index, name length, name, value length, value */
	static const char rawe[] = "\x00\x00\x0bX-Spam-Flag\x00\x03YES"
	    "\x01\x01\x07Subject\x00\x0f[SPAM] hi\r\n\tyes" "\x02\x00\x0dX-Spam-Status\x00\x00";
	char hdr[3] = { 0, (char)((sizeof(msg) - 1) >> 8), (char)(sizeof(msg) - 1) };
	struct fp_buf e = { 0 };
	fp_buf_append(&e, msg, sizeof(msg) - 1);
	fp_buf_append(&e, rawe, sizeof(rawe) - 1);
	put("fuzz_edit", "raw", hdr, 3, e.data, e.len);
	static const char lfmsg[] = "A: b\nSubject: x\n\nbody\n";
	char hdr2[3] = { 0, 0, (char)(sizeof(lfmsg) - 1) };
	fp_buf_reset(&e);
	fp_buf_append(&e, lfmsg, sizeof(lfmsg) - 1);
	fp_buf_append(&e, rawe, sizeof(rawe) - 1);
	put("fuzz_edit", "raw_lf", hdr2, 3, e.data, e.len);
	fp_buf_free(&e);
	fp_buf_free(&b);
	fp_buf_free(&all);
	return 0;
}
