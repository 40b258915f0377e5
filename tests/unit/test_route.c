/* test_route.c: login-name routing, the accepted forms of user%host[:port]
 * and user@host[:port], and every refusal with hostile input. */
#include <stdlib.h>

#include "route.h"
#include "unit.h"

static int
parse(const char *s, struct route *r, const char **err)
{
	*err = NULL;
	return route_parse(s, strlen(s), 110, r, err);
}

static void
expect_ok(const char *s, const char *user, const char *host, int port, int ip)
{
	struct route r;
	const char *err;
	int rc = parse(s, &r, &err);

	if (rc != 0)
		fprintf(stderr, "refused \"%s\": %s\n", s, err ? err : "(null)");
	CHECK_INT(rc, 0);
	CHECK_STR(r.user, user);
	CHECK_STR(r.host, host);
	CHECK_INT(r.port, port);
	CHECK_INT(r.host_is_ip, ip);
}

/* Refused with a message containing `word`; the route is left zeroed. */
static void
expect_err_len(const char *s, size_t len, const char *word)
{
	struct route r;
	const char *err = NULL;
	int rc;

	memset(&r, 0x5a, sizeof(r));
	rc = route_parse(s, len, 110, &r, &err);
	if (rc != -1)
		fprintf(stderr, "accepted \"%.*s\"\n", (int)len, s);
	CHECK_INT(rc, -1);
	CHECK(err != NULL);
	if (err != NULL && strstr(err, word) == NULL)
		fprintf(stderr, "\"%.*s\": message \"%s\" lacks \"%s\"\n",
		    (int)len, s, err, word);
	CHECK(err != NULL && strstr(err, word) != NULL);
	CHECK_INT(r.user[0], 0);
	CHECK_INT(r.host[0], 0);
}

static void
expect_err(const char *s, const char *word)
{
	expect_err_len(s, strlen(s), word);
}

static void
test_basic_forms(void)
{
	expect_ok("alice%pop.example.com", "alice", "pop.example.com", 110, 0);
	expect_ok("alice@pop.example.com:995", "alice", "pop.example.com", 995, 0);
	expect_ok("alice%pop.example.com:1", "alice", "pop.example.com", 1, 0);
	expect_ok("alice%pop.example.com:65535", "alice", "pop.example.com", 65535, 0);
	expect_ok("alice%pop.example.com:0995", "alice", "pop.example.com", 995, 0);
	expect_ok("a%b", "a", "b", 110, 0);
	expect_ok("a@localhost", "a", "localhost", 110, 0);
	expect_ok("u%my_host-1.example", "u", "my_host-1.example", 110, 0);
}

static void
test_last_separator_wins(void)
{
	expect_ok("john@example.com%pop.example.com:995", "john@example.com",
	    "pop.example.com", 995, 0);
	expect_ok("a%b%c", "a%b", "c", 110, 0);
	expect_ok("a@b@c", "a@b", "c", 110, 0);
	/* '%' beats a later '@': the '@' belongs to the host part -> refused. */
	expect_err("a%b@c", "invalid character");
	expect_ok("x@y%z@w%host", "x@y%z@w", "host", 110, 0);
}

static void
test_ip_literals(void)
{
	expect_ok("bob%[2001:db8::1]:110", "bob", "2001:db8::1", 110, 6);
	expect_ok("bob%[2001:db8::1]", "bob", "2001:db8::1", 110, 6);
	expect_ok("bob@[::1]:1110", "bob", "::1", 1110, 6);
	/* Canonical form: upper case and leading zeros go. */
	expect_ok("bob%[2001:0DB8:0:0::0001]:995", "bob", "2001:db8::1", 995, 6);
	expect_ok("bob%[::ffff:192.0.2.1]", "bob", "::ffff:192.0.2.1", 110, 6);
	expect_ok("bob%192.0.2.1", "bob", "192.0.2.1", 110, 4);
	expect_ok("bob%127.0.0.1:1110", "bob", "127.0.0.1", 1110, 4);
	expect_ok("bob@0.0.0.0", "bob", "0.0.0.0", 110, 4);
}

static void
test_case_folding(void)
{
	expect_ok("Alice%POP.Example.COM", "Alice", "pop.example.com", 110, 0);
}

static void
test_refusals(void)
{
	expect_err("", "no host");
	expect_err("alice", "no host");
	expect_err("alice.example.com", "no host");
	expect_err("%pop.example.com", "empty user");
	expect_err("@pop.example.com", "empty user");
	expect_err("alice%", "empty host");
	expect_err("alice@", "empty host");
	expect_err("alice%:110", "empty host");
	expect_err("alice%pop.example.com:", "missing port");
	expect_err("alice%pop.example.com:0", "out of range");
	expect_err("alice%pop.example.com:00000", "out of range");
	expect_err("alice%pop.example.com:65536", "out of range");
	expect_err("alice%pop.example.com:99999999999999999999999", "out of range");
	expect_err("alice%pop.example.com:-1", "number");
	expect_err("alice%pop.example.com:+110", "number");
	expect_err("alice%pop.example.com:11a", "number");
	expect_err("alice%pop.example.com:0x6e", "number");
	expect_err("alice%2001:db8::1", "brackets");
	expect_err("alice%::1", "brackets");
	expect_err("alice%2001:db8::1:110", "brackets");
	expect_err("alice%[2001:db8::1", "']'");
	expect_err("alice%2001:db8::1]", "brackets");
	expect_err("alice%host]:110", "'['");
	expect_err("alice%[]", "empty IPv6");
	expect_err("alice%[]:110", "empty IPv6");
	expect_err("alice%[2001:db8::1]110", "':port'");
	expect_err("alice%[2001:db8::1]:", "missing port");
	expect_err("alice%[2001:db8::1]:0", "out of range");
	expect_err("alice%[2001:db8::1]]:110", "':port'");
	expect_err("alice%[[2001:db8::1]]", "IPv6");
	expect_err("alice%[192.0.2.1]", "IPv6");
	expect_err("alice%[pop.example.com]", "IPv6");
	expect_err("alice%[2001:db8::zz]", "IPv6");
	expect_err("alice%[fe80::1%eth0]", "invalid character");	/* split at last '%' */
	expect_err("alice@[fe80::1%25eth0]", "invalid character");
	expect_err("alice%[1:2:3:4:5:6:7:8:9:10:11:12:13:14:15:16:17]", "IPv6");
	expect_err("alice%pop..example.com", "empty label");
	expect_err("alice%.example.com", "empty label");
	expect_err("alice%example.com.", "empty label");
	expect_err("alice%.", "empty label");
	expect_err("alice%pop/example.com", "invalid character");
	expect_err("alice%pop,example.com", "invalid character");
	expect_err("alice%pop\\example.com", "invalid character");
	expect_err("alice%pop.ex*ample.com", "invalid character");
	expect_err("alice%p\xc3\xa9p.example.com", "invalid character");
	expect_err("alice%256.1.1.1", "IPv4");
	expect_err("alice%10.1", "IPv4");
	expect_err("alice%1.2.3.4.5", "IPv4");
	expect_err("alice%01.2.3.4", "IPv4");
	expect_err("alice%4294967295", "IPv4");
}

static void
test_control_and_spaces(void)
{
	expect_err("al ice%pop.example.com", "control");
	expect_err("alice%pop.example.com ", "control");
	expect_err(" alice%pop.example.com", "control");
	expect_err("alice%pop.example.com:110 ", "control");
	expect_err("alice\t%pop.example.com", "control");
	expect_err("alice%pop.example.com\r\n", "control");
	expect_err("alice\x7f%pop.example.com", "control");
	expect_err("alice\x1b[31m%pop.example.com", "control");
	/* NUL inside the length, in the user and in the host. */
	expect_err_len("ali\0ce%pop.example.com", 22, "control");
	expect_err_len("alice%pop\0.example.com", 22, "control");
	expect_err_len("alice%pop.example.com\0", 22, "control");
	expect_err_len("\0", 1, "control");
}

static void
test_hostile_user_names(void)
{
	/* Format directives are just octets; the user name is kept verbatim. */
	expect_ok("%n%s%x%p%pop.example.com", "%n%s%x%p", "pop.example.com", 110, 0);
	/* With a '%' in the name, '@' is no separator: host "p@pop..." is bad. */
	expect_err("%n%s%x%p@pop.example.com", "invalid character");
	expect_ok("alice%n%s", "alice%n", "s", 110, 0);
	expect_err("alice%n%s%", "empty host");
	expect_ok("%s%s%s%s%s%s%s%s%s%s%n", "%s%s%s%s%s%s%s%s%s%s", "n", 110, 0);
	expect_ok("\xc3\xa9l\xc3\xa8ve@pop.example.com", "\xc3\xa9l\xc3\xa8ve",
	    "pop.example.com", 110, 0);
}

static void
test_lengths(void)
{
	char buf[600], user[300], label[80];
	struct route r;
	const char *err;
	size_t i;

	/* A 255-octet user name fits, 256 does not. */
	memset(user, 'u', 255);
	user[255] = '\0';
	snprintf(buf, sizeof(buf), "%s%%pop.example.com", user);
	expect_ok(buf, user, "pop.example.com", 110, 0);
	snprintf(buf, sizeof(buf), "u%s%%pop.example.com", user);
	expect_err(buf, "user name too long");
	memset(buf, 'a', 300);
	buf[300] = '\0';
	expect_err(buf, "no host");
	buf[150] = '%';
	CHECK_INT(parse(buf, &r, &err), -1);	/* host label of 149 octets */
	CHECK_STR(err, "host name label too long");

	/* Labels: 63 fit, 64 do not. */
	memset(label, 'l', 63);
	label[63] = '\0';
	snprintf(buf, sizeof(buf), "u%%%s.example", label);
	CHECK_INT(parse(buf, &r, &err), 0);
	snprintf(buf, sizeof(buf), "u%%l%s.example", label);
	expect_err(buf, "label too long");

	/* Total name: 253 fits, 254 does not (4 labels of 63 + dots = 255). */
	strcpy(buf, "u%");
	for (i = 0; i < 4; i++) {
		strcat(buf, label);
		strcat(buf, ".");
	}
	buf[strlen(buf) - 1] = '\0';		/* 255-octet name */
	expect_err(buf, "too long");
	buf[2 + 253] = '\0';			/* ends in 'l': 253 octets */
	CHECK_INT(parse(buf, &r, &err), 0);
	CHECK_INT(strlen(r.host), 253);
	buf[2 + 192] = '\0';			/* ends in '.': refused as empty label */
	expect_err(buf, "empty label");

	/* A user of 300 octets with a valid host. */
	memset(buf, 'x', 300);
	strcpy(buf + 300, "@pop.example.com:995");
	expect_err(buf, "user name too long");
}

static void
test_not_nul_terminated(void)
{
	/* The parser must stop at len: "alice%pop:995" followed by junk. */
	const char s[] = "alice%pop:995XXXX";
	struct route r;
	const char *err;

	CHECK_INT(route_parse(s, 13, 110, &r, &err), 0);
	CHECK_STR(r.host, "pop");
	CHECK_INT(r.port, 995);
	CHECK_INT(route_parse(s, 11, 110, &r, &err), 0);
	CHECK_INT(r.port, 9);
	CHECK_INT(route_parse(s, 10, 110, &r, &err), -1);
	CHECK_STR(err, "missing port number after ':'");
}

static void
test_default_port(void)
{
	struct route r;
	const char *err;

	CHECK_INT(route_parse("a%b", 3, 995, &r, &err), 0);
	CHECK_INT(r.port, 995);
}

static void
test_hostport(void)
{
	struct route r;
	const char *err;

	CHECK_INT(route_parse_hostport("pop.example.com:995", 19, 110, &r, &err), 0);
	CHECK_STR(r.user, "");
	CHECK_STR(r.host, "pop.example.com");
	CHECK_INT(r.port, 995);
	CHECK_INT(route_parse_hostport("POP.example.com", 15, 110, &r, &err), 0);
	CHECK_STR(r.host, "pop.example.com");
	CHECK_INT(r.port, 110);
	CHECK_INT(r.host_is_ip, 0);
	CHECK_INT(route_parse_hostport("[::1]:1110", 10, 110, &r, &err), 0);
	CHECK_STR(r.host, "::1");
	CHECK_INT(r.port, 1110);
	CHECK_INT(r.host_is_ip, 6);
	CHECK_INT(route_parse_hostport("127.0.0.1:1110", 14, 110, &r, &err), 0);
	CHECK_STR(r.host, "127.0.0.1");
	CHECK_INT(r.host_is_ip, 4);

	/* In host:port mode '%' and '@' are not separators but bad octets. */
	CHECK_INT(route_parse_hostport("a%b", 3, 110, &r, &err), -1);
	CHECK_STR(err, "invalid character in host name");
	CHECK_INT(route_parse_hostport("a@b", 3, 110, &r, &err), -1);
	CHECK_INT(route_parse_hostport("", 0, 110, &r, &err), -1);
	CHECK_STR(err, "empty host name");
	CHECK_INT(route_parse_hostport(":110", 4, 110, &r, &err), -1);
	CHECK_STR(err, "empty host name");
	CHECK_INT(route_parse_hostport("::1", 3, 110, &r, &err), -1);
	CHECK(strstr(err, "brackets") != NULL);
	CHECK_INT(route_parse_hostport("h:", 2, 110, &r, &err), -1);
	CHECK_INT(route_parse_hostport("h:70000", 7, 110, &r, &err), -1);
	CHECK_INT(route_parse_hostport("h :1", 4, 110, &r, &err), -1);
	CHECK_INT(route_parse_hostport("h\0:1", 4, 110, &r, &err), -1);
	CHECK_STR(err, "control characters and spaces are not allowed");
	CHECK_INT(route_parse_hostport("[::1", 4, 110, &r, &err), -1);
	CHECK_STR(r.host, "");
}

int
main(void)
{
	RUN(test_basic_forms);
	RUN(test_last_separator_wins);
	RUN(test_ip_literals);
	RUN(test_case_folding);
	RUN(test_refusals);
	RUN(test_control_and_spaces);
	RUN(test_hostile_user_names);
	RUN(test_lengths);
	RUN(test_not_nul_terminated);
	RUN(test_default_port);
	RUN(test_hostport);
	return UNIT_DONE();
}
