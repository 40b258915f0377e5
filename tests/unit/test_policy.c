/* test_policy.c: the --allow-upstream patterns (globs, exact names, IPv4,
 * [IPv6], CIDR, ports), the default rule, addr_is_public and bad patterns. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>

#include "policy.h"
#include "unit.h"

/* "1.2.3.4" or "2001:db8::1" plus a port, as a sockaddr_storage. */
static const struct sockaddr *
sa(const char *ip, int port)
{
	static struct sockaddr_storage ss[4];
	static int next;
	struct sockaddr_storage *s = &ss[next++ % 4];
	struct sockaddr_in *s4 = (struct sockaddr_in *)s;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)s;

	memset(s, 0, sizeof(*s));
	if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
	} else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
	} else {
		fprintf(stderr, "test bug: bad address %s\n", ip);
		s->ss_family = AF_UNSPEC;
	}
	return (const struct sockaddr *)s;
}

static int
pub(const char *ip)
{
	return addr_is_public(sa(ip, 110));
}

static void
check_public(const char *const *list, size_t n, int want)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (pub(list[i]) != want)
			fprintf(stderr, "%s: addr_is_public should be %d\n", list[i], want);
		CHECK_INT(pub(list[i]), want);
	}
}

static void
test_addr_is_public_v4(void)
{
	static const char *const priv[] = {
		"0.0.0.0", "0.255.255.255", "10.0.0.1", "10.255.255.255",
		"100.64.0.1", "100.127.255.255", "127.0.0.1", "127.1.2.3",
		"169.254.1.1", "172.16.0.1", "172.31.255.255", "192.0.0.1",
		"192.0.2.1", "192.168.0.1", "192.168.255.255", "198.18.0.1",
		"198.19.255.255", "198.51.100.7", "203.0.113.9", "224.0.0.1",
		"239.255.255.255", "240.0.0.1", "255.255.255.255",
	};
	static const char *const public[] = {
		"1.1.1.1", "8.8.8.8", "9.255.255.255", "11.0.0.0",
		"100.63.255.255", "100.128.0.0", "126.255.255.255", "128.0.0.0",
		"169.253.255.255", "169.255.0.0", "172.15.255.255", "172.32.0.0",
		"192.0.1.255", "192.0.3.0", "192.167.255.255", "192.169.0.0",
		"198.17.255.255", "198.20.0.0", "198.51.99.255", "203.0.112.1",
		"223.255.255.255", "193.0.2.1",
	};

	check_public(priv, sizeof(priv) / sizeof(priv[0]), 0);
	check_public(public, sizeof(public) / sizeof(public[0]), 1);
}

static void
test_addr_is_public_v6(void)
{
	static const char *const priv[] = {
		"::", "::1", "::127.0.0.1", "fc00::1", "fd12:3456::1",
		"fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::1",
		"febf::1", "fec0::1", "ff02::1", "ff0e::1", "2001:db8::1",
		"2001:db8:ffff::1", "100::1",
		/* Embedded IPv4 that is private: mapped, NAT64, 6to4. */
		"::ffff:127.0.0.1", "::ffff:10.1.2.3", "::ffff:192.168.1.1",
		"::ffff:0.0.0.0", "::ffff:255.255.255.255",
		"64:ff9b::10.0.0.1", "64:ff9b::127.0.0.1", "64:ff9b:1::1",
		"2002:0a00:0001::1", "2002:7f00:0001::1",
	};
	static const char *const public[] = {
		"2001:4860:4860::8888", "2a00:1450::1", "2001:db9::1",
		"2001:db7::1", "fbff::1", "fe00::1",
		"::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:0808:0808::1",
	};

	check_public(priv, sizeof(priv) / sizeof(priv[0]), 0);
	check_public(public, sizeof(public) / sizeof(public[0]), 1);
}

static void
test_addr_is_public_odd(void)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	ss.ss_family = AF_UNIX;
	CHECK_INT(addr_is_public((struct sockaddr *)&ss), 0);
	ss.ss_family = AF_UNSPEC;
	CHECK_INT(addr_is_public((struct sockaddr *)&ss), 0);
	CHECK_INT(addr_is_public(NULL), 0);
}

static void
test_default_rule(void)
{
	struct policy *p = policy_new();

	CHECK(p != NULL);
	CHECK_INT(policy_count(p), 0);
	CHECK_INT(policy_allows(p, "pop.example.com", sa("8.8.8.8", 110)), 1);
	CHECK_INT(policy_allows(p, "pop.example.com", sa("8.8.8.8", 995)), 1);
	CHECK_INT(policy_allows(p, "pop.example.com", sa("2a00:1450::1", 995)), 1);
	CHECK_INT(policy_allows(p, "pop.example.com", sa("8.8.8.8", 25)), 0);
	CHECK_INT(policy_allows(p, "pop.example.com", sa("8.8.8.8", 1110)), 0);
	CHECK_INT(policy_allows(p, "localhost", sa("127.0.0.1", 110)), 0);
	CHECK_INT(policy_allows(p, "x", sa("10.0.0.1", 110)), 0);
	CHECK_INT(policy_allows(p, "x", sa("::1", 110)), 0);
	CHECK_INT(policy_allows(p, "x", sa("::ffff:127.0.0.1", 110)), 0);
	CHECK_INT(policy_allows(p, "x", sa("::ffff:8.8.8.8", 995)), 1);
	CHECK_INT(policy_allows(p, NULL, sa("8.8.8.8", 110)), 1);
	policy_free(p);
	policy_free(NULL);
}

static struct policy *
make(const char *const *pats, size_t n)
{
	struct policy *p = policy_new();
	const char *err;
	size_t i;

	for (i = 0; i < n; i++) {
		err = NULL;
		if (policy_add(p, pats[i], &err) != 0)
			fprintf(stderr, "pattern %s refused: %s\n", pats[i], err);
	}
	CHECK_INT(policy_count(p), n);
	return p;
}

static void
test_ip_patterns(void)
{
	static const char *const pats[] = {
		"127.0.0.1:*", "[::1]:1110", "10.0.0.0/8:110",
		"[fd00::]/8:995", "192.168.1.77/16:143", "[::ffff:172.16.0.0]/108:25",
	};
	struct policy *p = make(pats, 6);

	CHECK_INT(policy_allows(p, "127.0.0.1", sa("127.0.0.1", 1110)), 1);
	CHECK_INT(policy_allows(p, "127.0.0.1", sa("127.0.0.1", 1)), 1);
	CHECK_INT(policy_allows(p, "anything", sa("127.0.0.1", 65535)), 1);
	CHECK_INT(policy_allows(p, NULL, sa("127.0.0.1", 110)), 1);
	CHECK_INT(policy_allows(p, "x", sa("127.0.0.2", 110)), 0);
	/* Mapped v6 is matched as v4. */
	CHECK_INT(policy_allows(p, "x", sa("::ffff:127.0.0.1", 110)), 1);
	CHECK_INT(policy_allows(p, "x", sa("::1", 1110)), 1);
	CHECK_INT(policy_allows(p, "x", sa("::1", 110)), 0);
	CHECK_INT(policy_allows(p, "x", sa("::2", 1110)), 0);
	CHECK_INT(policy_allows(p, "x", sa("10.0.0.1", 110)), 1);
	CHECK_INT(policy_allows(p, "x", sa("10.255.255.255", 110)), 1);
	CHECK_INT(policy_allows(p, "x", sa("11.0.0.0", 110)), 0);
	CHECK_INT(policy_allows(p, "x", sa("10.0.0.1", 995)), 0);
	CHECK_INT(policy_allows(p, "x", sa("::ffff:10.9.9.9", 110)), 1);
	CHECK_INT(policy_allows(p, "x", sa("fd12::1", 995)), 1);
	CHECK_INT(policy_allows(p, "x", sa("fe80::1", 995)), 0);
	CHECK_INT(policy_allows(p, "x", sa("fd12::1", 110)), 0);
	/* Host bits in a CIDR pattern are ignored: 192.168.0.0/16. */
	CHECK_INT(policy_allows(p, "x", sa("192.168.200.1", 143)), 1);
	CHECK_INT(policy_allows(p, "x", sa("192.169.0.1", 143)), 0);
	/* A mapped CIDR pattern becomes 172.16.0.0/12. */
	CHECK_INT(policy_allows(p, "x", sa("172.31.0.1", 25)), 1);
	CHECK_INT(policy_allows(p, "x", sa("172.32.0.1", 25)), 0);
	/* Public addresses are not granted by these patterns either. */
	CHECK_INT(policy_allows(p, "x", sa("8.8.8.8", 110)), 0);
	policy_free(p);
}

static void
test_cidr_edges(void)
{
	static const char *const pats[] = {
		"0.0.0.0/0:7", "[::]/0:8", "203.0.113.128/25:9", "[2001:db8::]/127:10",
	};
	struct policy *p = make(pats, 4);

	CHECK_INT(policy_allows(p, "x", sa("1.2.3.4", 7)), 1);
	CHECK_INT(policy_allows(p, "x", sa("127.0.0.1", 7)), 1);
	CHECK_INT(policy_allows(p, "x", sa("::1", 7)), 0);	/* v4 only */
	CHECK_INT(policy_allows(p, "x", sa("::ffff:1.2.3.4", 7)), 1);
	CHECK_INT(policy_allows(p, "x", sa("::1", 8)), 1);
	CHECK_INT(policy_allows(p, "x", sa("1.2.3.4", 8)), 0);	/* v6 only */
	CHECK_INT(policy_allows(p, "x", sa("203.0.113.128", 9)), 1);
	CHECK_INT(policy_allows(p, "x", sa("203.0.113.255", 9)), 1);
	CHECK_INT(policy_allows(p, "x", sa("203.0.113.127", 9)), 0);
	CHECK_INT(policy_allows(p, "x", sa("2001:db8::1", 10)), 1);
	CHECK_INT(policy_allows(p, "x", sa("2001:db8::2", 10)), 0);
	policy_free(p);
}

static void
test_name_patterns(void)
{
	static const char *const pats[] = {
		"localhost:*", "*.example.com:110", "POP.Example.ORG:995",
		"mail*.example.net:*", "*:995",
	};
	struct policy *p = make(pats, 5);

	/* An exact name grants any address, loopback included. */
	CHECK_INT(policy_allows(p, "localhost", sa("127.0.0.1", 1110)), 1);
	CHECK_INT(policy_allows(p, "localhost", sa("::1", 1)), 1);
	CHECK_INT(policy_allows(p, "LOCALHOST", sa("::1", 1)), 1);
	CHECK_INT(policy_allows(p, "localhost.", sa("127.0.0.1", 1)), 0);
	CHECK_INT(policy_allows(p, "localhostx", sa("127.0.0.1", 1)), 0);
	CHECK_INT(policy_allows(p, "pop.example.org", sa("10.0.0.1", 995)), 1);
	CHECK_INT(policy_allows(p, "pop.example.org", sa("10.0.0.1", 110)), 0);

	/* Globs: any run of characters, dots included, public only. */
	CHECK_INT(policy_allows(p, "pop.example.com", sa("8.8.8.8", 110)), 1);
	CHECK_INT(policy_allows(p, "a.b.c.example.com", sa("8.8.8.8", 110)), 1);
	CHECK_INT(policy_allows(p, "POP.EXAMPLE.COM", sa("8.8.8.8", 110)), 1);
	CHECK_INT(policy_allows(p, "example.com", sa("8.8.8.8", 110)), 0);
	CHECK_INT(policy_allows(p, "pop.example.com.evil", sa("8.8.8.8", 110)), 0);
	CHECK_INT(policy_allows(p, "popexample.com", sa("8.8.8.8", 110)), 0);
	CHECK_INT(policy_allows(p, "pop.example.com", sa("8.8.8.8", 111)), 0);
	CHECK_INT(policy_allows(p, "pop.example.com", sa("127.0.0.1", 110)), 0);
	CHECK_INT(policy_allows(p, "pop.example.com", sa("10.0.0.1", 110)), 0);
	CHECK_INT(policy_allows(p, "pop.example.com", sa("::ffff:192.168.0.1", 110)), 0);
	CHECK_INT(policy_allows(p, "pop.example.com", sa("fe80::1", 110)), 0);
	CHECK_INT(policy_allows(p, "pop.example.com", sa("64:ff9b::7f00:1", 110)), 0);
	CHECK_INT(policy_allows(p, "mail.example.net", sa("8.8.4.4", 2)), 1);
	CHECK_INT(policy_allows(p, "mail2.pop.example.net", sa("8.8.4.4", 2)), 1);
	CHECK_INT(policy_allows(p, "xmail.example.net", sa("8.8.4.4", 2)), 0);
	CHECK_INT(policy_allows(p, "mail.example.net", sa("100.64.0.1", 2)), 0);
	/* '*:995' is every public address on 995, never an internal one. */
	CHECK_INT(policy_allows(p, "anything.at.all", sa("1.1.1.1", 995)), 1);
	CHECK_INT(policy_allows(p, "127.0.0.1", sa("127.0.0.1", 995)), 0);
	CHECK_INT(policy_allows(p, "anything", sa("::1", 995)), 0);
	CHECK_INT(policy_allows(p, "anything", sa("1.1.1.1", 110)), 0);
	/* Without a name only IP patterns can match. */
	CHECK_INT(policy_allows(p, NULL, sa("1.1.1.1", 995)), 0);
	CHECK_INT(policy_allows(p, "", sa("1.1.1.1", 995)), 1);	/* '*' matches "" */
	policy_free(p);
}

static void
test_glob_matching(void)
{
	static const char *const pats[] = {
		"a*b*c:1", "***:2", "*x*x*x*x*x*x*x*x*x*y:3", "ab:4", "*.:5",
	};
	struct policy *p = make(pats, 5);
	const struct sockaddr *pub1 = sa("8.8.8.8", 1);
	const struct sockaddr *pub3 = sa("8.8.8.8", 3);
	char longname[260];

	CHECK_INT(policy_allows(p, "abc", pub1), 1);
	CHECK_INT(policy_allows(p, "a.b.c", pub1), 1);
	CHECK_INT(policy_allows(p, "aXbYc", pub1), 1);
	CHECK_INT(policy_allows(p, "abcc", pub1), 1);
	CHECK_INT(policy_allows(p, "abcd", pub1), 0);
	CHECK_INT(policy_allows(p, "acb", pub1), 0);
	CHECK_INT(policy_allows(p, "", sa("8.8.8.8", 2)), 1);
	CHECK_INT(policy_allows(p, "q", sa("8.8.8.8", 2)), 1);
	/* Pathological backtracking stays linear enough and correct. */
	memset(longname, 'x', 250);
	longname[250] = '\0';
	CHECK_INT(policy_allows(p, longname, pub3), 0);
	longname[249] = 'y';
	CHECK_INT(policy_allows(p, longname, pub3), 1);
	CHECK_INT(policy_allows(p, "ab", sa("8.8.8.8", 4)), 1);
	CHECK_INT(policy_allows(p, "abx", sa("8.8.8.8", 4)), 0);
	CHECK_INT(policy_allows(p, "x.", sa("8.8.8.8", 5)), 1);
	CHECK_INT(policy_allows(p, "x", sa("8.8.8.8", 5)), 0);
	/* Exact name "ab" grants private addresses; glob "a*b*c" does not. */
	CHECK_INT(policy_allows(p, "ab", sa("10.0.0.1", 4)), 1);
	CHECK_INT(policy_allows(p, "abc", sa("10.0.0.1", 1)), 0);
	policy_free(p);
}

static void
expect_bad(const char *pattern, const char *word)
{
	struct policy *p = policy_new();
	const char *err = NULL;
	int rc = policy_add(p, pattern, &err);

	if (rc != -1)
		fprintf(stderr, "pattern \"%s\" accepted\n", pattern);
	CHECK_INT(rc, -1);
	CHECK(err != NULL);
	if (err != NULL && strstr(err, word) == NULL)
		fprintf(stderr, "\"%s\": message \"%s\" lacks \"%s\"\n",
		    pattern, err, word);
	CHECK(err != NULL && strstr(err, word) != NULL);
	CHECK_INT(policy_count(p), 0);
	policy_free(p);
}

static void
test_bad_patterns(void)
{
	char big[400];

	expect_bad("", "missing port");
	expect_bad("pop.example.com", "missing port");
	expect_bad("127.0.0.1", "missing port");
	expect_bad("[::1]", "missing port");
	expect_bad("[::1]/128", "missing port");
	expect_bad("pop.example.com:", "missing port");
	expect_bad("[::1]:", "missing port");
	expect_bad(":110", "empty host");
	expect_bad(":*", "empty host");
	expect_bad("h:0", "bad port");
	expect_bad("h:65536", "bad port");
	expect_bad("h:99999999999999999999", "bad port");
	expect_bad("h:-1", "bad port");
	expect_bad("h:**", "bad port");
	expect_bad("h:1*", "bad port");
	expect_bad("h:%n", "bad port");
	expect_bad("10.0.0.0/33:110", "CIDR");
	expect_bad("10.0.0.0/-1:110", "CIDR");
	expect_bad("10.0.0.0/:110", "CIDR");
	expect_bad("10.0.0.0/8/8:110", "CIDR");
	expect_bad("10.0.0.0/x:110", "CIDR");
	expect_bad("10.0.0/8:110", "CIDR");
	expect_bad("pop.example.com/8:110", "CIDR");
	expect_bad("[fd00::]/129:110", "CIDR");
	expect_bad("[fd00::]/:110", "CIDR");
	expect_bad("[fd00::]8:110", "CIDR");
	expect_bad("[fd00::/8]:110", "IPv6");
	expect_bad("[fd00::]/1000000000000:110", "CIDR");
	expect_bad("[fd00::1:110", "']'");
	expect_bad("[zz::1]:110", "IPv6");
	expect_bad("[]:110", "IPv6");
	expect_bad("[10.0.0.1]:110", "IPv6");
	expect_bad("::1:110", "brackets");
	expect_bad("fd00::/8:110", "brackets");
	expect_bad("::1]:110", "'['");
	expect_bad("pop example.com:110", "invalid character");
	expect_bad("pop%example.com:110", "invalid character");
	expect_bad("%n%s%x:110", "invalid character");
	expect_bad("pop\texample.com:110", "invalid character");
	expect_bad("pop.example.com\n:110", "invalid character");
	expect_bad("?.example.com:110", "invalid character");
	expect_bad("p\xc3\xa9p.example.com:110", "invalid character");
	memset(big, 'a', 300);
	strcpy(big + 300, ":110");
	expect_bad(big, "too long");
	memset(big, 'a', 254);
	strcpy(big + 254, ":110");
	expect_bad(big, "too long");
}

static void
test_many_patterns(void)
{
	struct policy *p = policy_new();
	const char *err;
	char pat[64];
	int i;

	for (i = 0; i < 300; i++) {
		snprintf(pat, sizeof(pat), "10.%d.%d.0/24:%d", i / 256, i % 256, 1000 + i);
		CHECK_INT(policy_add(p, pat, &err), 0);
	}
	CHECK_INT(policy_count(p), 300);
	CHECK_INT(policy_allows(p, "x", sa("10.1.43.9", 1299)), 1);
	CHECK_INT(policy_allows(p, "x", sa("10.1.43.9", 1298)), 0);
	CHECK_INT(policy_allows(p, "x", sa("10.0.0.200", 1000)), 1);
	policy_free(p);
}

int
main(void)
{
	RUN(test_addr_is_public_v4);
	RUN(test_addr_is_public_v6);
	RUN(test_addr_is_public_odd);
	RUN(test_default_rule);
	RUN(test_ip_patterns);
	RUN(test_cidr_edges);
	RUN(test_name_patterns);
	RUN(test_glob_matching);
	RUN(test_bad_patterns);
	RUN(test_many_patterns);
	return UNIT_DONE();
}
