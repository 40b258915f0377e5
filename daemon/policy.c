/* policy.c: the upstream allow-list (--allow-upstream patterns) and the
 * public-address test behind the default rule; no I/O. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "policy.h"

#define POLICY_NAME_MAX	253
#define PORT_ANY	-1

enum pat_kind { PAT_NAME, PAT_GLOB, PAT_NET };

struct pattern {
	enum pat_kind kind;
	int port;			/* 1..65535 or PORT_ANY */
	char name[POLICY_NAME_MAX + 1];	/* PAT_NAME, PAT_GLOB: lower-cased */
	int family;			/* PAT_NET: AF_INET or AF_INET6 */
	unsigned char net[16];		/* PAT_NET: host bits cleared */
	int prefix;
};

struct policy {
	struct pattern *pats;
	int n, cap;
};

/* An address reduced to what matching needs; v4-mapped v6 becomes v4. */
struct addr {
	int family;
	unsigned char b[16];
	int port;
};

static const unsigned char v4mapped[12] =
    { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

static int
addr_get(const struct sockaddr *sa, struct addr *a)
{
	if (sa == NULL)
		return -1;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
		a->family = AF_INET;
		memcpy(a->b, &s4->sin_addr, 4);
		a->port = ntohs(s4->sin_port);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		a->port = ntohs(s6->sin6_port);
		if (memcmp(s6->sin6_addr.s6_addr, v4mapped, 12) == 0) {
			a->family = AF_INET;
			memcpy(a->b, s6->sin6_addr.s6_addr + 12, 4);
		} else {
			a->family = AF_INET6;
			memcpy(a->b, s6->sin6_addr.s6_addr, 16);
		}
		return 0;
	}
	return -1;
}

/* Do the first `prefix` bits of a and b agree? */
static int
prefix_match(const unsigned char *a, const unsigned char *b, int prefix)
{
	int full = prefix / 8, rest = prefix % 8;

	if (memcmp(a, b, (size_t)full) != 0)
		return 0;
	if (rest == 0)
		return 1;
	return ((a[full] ^ b[full]) & (0xff << (8 - rest)) & 0xff) == 0;
}

struct netblock {
	unsigned char net[16];
	int prefix;
};

/* Special-purpose IPv4 blocks (RFC 6890 and friends): never "public". */
static const struct netblock v4_private[] = {
	{ { 0 }, 8 },			/* "this" network */
	{ { 10 }, 8 },
	{ { 100, 64 }, 10 },		/* carrier-grade NAT */
	{ { 127 }, 8 },
	{ { 169, 254 }, 16 },
	{ { 172, 16 }, 12 },
	{ { 192, 0, 0 }, 24 },		/* IETF protocol assignments */
	{ { 192, 0, 2 }, 24 },		/* TEST-NET-1 */
	{ { 192, 88, 99 }, 24 },	/* 6to4 relay anycast */
	{ { 192, 168 }, 16 },
	{ { 198, 18 }, 15 },		/* benchmarking */
	{ { 198, 51, 100 }, 24 },	/* TEST-NET-2 */
	{ { 203, 0, 113 }, 24 },	/* TEST-NET-3 */
	{ { 224 }, 4 },			/* multicast */
	{ { 240 }, 4 },			/* reserved, and 255.255.255.255 */
};

static const struct netblock v6_private[] = {
	{ { 0 }, 96 },			/* ::, ::1, deprecated v4-compatible */
	{ { 0x01 }, 64 },		/* 100::/64 discard-only */
	{ { 0x00, 0x64, 0xff, 0x9b, 0x00, 0x01 }, 48 },	/* local NAT64 */
	{ { 0x20, 0x01, 0x0d, 0xb8 }, 32 },	/* documentation */
	{ { 0x20, 0x01, 0x00, 0x00 }, 23 },	/* IETF protocol assignments */
	{ { 0xfc }, 7 },		/* unique local */
	{ { 0xfe, 0x80 }, 10 },		/* link-local */
	{ { 0xfe, 0xc0 }, 10 },		/* site-local (deprecated) */
	{ { 0xff }, 8 },		/* multicast */
};

static int
in_blocks(const unsigned char *b, const struct netblock *nb, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (prefix_match(b, nb[i].net, nb[i].prefix))
			return 1;
	return 0;
}

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static int
v4_is_public(const unsigned char *b)
{
	return !in_blocks(b, v4_private, NELEM(v4_private));
}

static int
addr_public(const struct addr *a)
{
	static const unsigned char nat64[12] =
	    { 0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0 };

	if (a->family == AF_INET)
		return v4_is_public(a->b);
	/* Addresses that embed an IPv4 address are as public as that one. */
	if (memcmp(a->b, nat64, 12) == 0)		/* 64:ff9b::/96 */
		return v4_is_public(a->b + 12);
	if (a->b[0] == 0x20 && a->b[1] == 0x02)		/* 2002::/16 6to4 */
		return v4_is_public(a->b + 2);
	return !in_blocks(a->b, v6_private, NELEM(v6_private));
}

int
addr_is_public(const struct sockaddr *sa)
{
	struct addr a;

	if (addr_get(sa, &a) == -1)
		return 0;
	return addr_public(&a);
}

struct policy *
policy_new(void)
{
	return calloc(1, sizeof(struct policy));
}

void
policy_free(struct policy *p)
{
	if (p == NULL)
		return;
	free(p->pats);
	free(p);
}

int
policy_count(const struct policy *p)
{
	return p->n;
}

static int
parse_port(const char *s, int *port, const char **err)
{
	long v = 0;

	if (strcmp(s, "*") == 0) {
		*port = PORT_ANY;
		return 0;
	}
	if (*s == '\0') {
		*err = "missing port after ':' (use HOST:PORT or HOST:*)";
		return -1;
	}
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || (v = v * 10 + (*s - '0')) > 65535) {
			*err = "bad port (use 1-65535 or '*')";
			return -1;
		}
	}
	if (v == 0) {
		*err = "bad port (use 1-65535 or '*')";
		return -1;
	}
	*port = (int)v;
	return 0;
}

/* "/N" with 0 <= N <= max; an absent suffix means the full length. */
static int
parse_prefix(const char *s, int max, int *prefix, const char **err)
{
	int v = 0;

	*prefix = max;
	if (*s == '\0')
		return 0;
	if (*s++ != '/' || *s == '\0')
		goto bad;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || (v = v * 10 + (*s - '0')) > max)
			goto bad;
	}
	*prefix = v;
	return 0;
bad:
	*err = "bad CIDR prefix length";
	return -1;
}

static void
clear_host_bits(unsigned char *b, int prefix, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		int bits = prefix - (int)i * 8;
		if (bits <= 0)
			b[i] = 0;
		else if (bits < 8)
			b[i] &= (unsigned char)(0xff << (8 - bits));
	}
}

/* host is "[v6]", "[v6]/N", "a.b.c.d", "a.b.c.d/N" or a name glob. */
static int
parse_host(char *host, struct pattern *pt, const char **err)
{
	char *slash;
	size_t i, len = strlen(host);

	if (len == 0) {
		*err = "empty host in pattern";
		return -1;
	}
	if (host[0] == '[') {
		char *close = strchr(host, ']');

		if (close == NULL) {
			*err = "missing ']' in pattern";
			return -1;
		}
		*close = '\0';
		if (inet_pton(AF_INET6, host + 1, pt->net) != 1) {
			*err = "bad IPv6 address in pattern";
			return -1;
		}
		if (parse_prefix(close + 1, 128, &pt->prefix, err) == -1)
			return -1;
		pt->kind = PAT_NET;
		pt->family = AF_INET6;
		/* Mapped patterns match as IPv4, like the addresses they meet. */
		if (memcmp(pt->net, v4mapped, 12) == 0 && pt->prefix >= 96) {
			memmove(pt->net, pt->net + 12, 4);
			pt->family = AF_INET;
			pt->prefix -= 96;
		}
		clear_host_bits(pt->net, pt->prefix, 16);
		return 0;
	}
	if (strchr(host, ']') != NULL) {
		*err = "missing '[' in pattern";
		return -1;
	}
	if (strchr(host, ':') != NULL) {
		*err = "IPv6 addresses need brackets: [addr]:port";
		return -1;
	}
	slash = strchr(host, '/');
	if (slash != NULL)
		*slash = '\0';
	if (inet_pton(AF_INET, host, pt->net) == 1) {
		if (slash != NULL)
			*slash = '/';
		if (parse_prefix(slash ? slash : "", 32, &pt->prefix, err) == -1)
			return -1;
		pt->kind = PAT_NET;
		pt->family = AF_INET;
		clear_host_bits(pt->net, pt->prefix, 16);
		return 0;
	}
	if (slash != NULL) {
		*err = "bad CIDR address (use a.b.c.d/N or [v6]/N)";
		return -1;
	}
	if (len > POLICY_NAME_MAX) {
		*err = "host name too long in pattern";
		return -1;
	}
	pt->kind = PAT_NAME;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)host[i];

		if (c == '*')
			pt->kind = PAT_GLOB;
		else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_')) {
			*err = "invalid character in host pattern";
			return -1;
		}
		pt->name[i] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
	}
	pt->name[len] = '\0';
	return 0;
}

int
policy_add(struct policy *p, const char *pattern, const char **err)
{
	struct pattern pt;
	char buf[POLICY_NAME_MAX + 16], *colon;
	size_t len = strlen(pattern);

	memset(&pt, 0, sizeof(pt));
	if (len >= sizeof(buf)) {
		*err = "pattern too long";
		return -1;
	}
	memcpy(buf, pattern, len + 1);
	/* The port follows the last ':' (after ']' for an IPv6 pattern). */
	colon = strrchr(buf, ':');
	if (buf[0] == '[') {
		char *close = strchr(buf, ']');
		if (close != NULL && (colon == NULL || colon < close))
			colon = NULL;
	}
	if (colon == NULL) {
		*err = "missing port (use HOST:PORT or HOST:*)";
		return -1;
	}
	*colon = '\0';
	if (parse_port(colon + 1, &pt.port, err) == -1 ||
	    parse_host(buf, &pt, err) == -1)
		return -1;

	if (p->n == p->cap) {
		int ncap = p->cap ? p->cap * 2 : 8;
		struct pattern *np = realloc(p->pats, (size_t)ncap * sizeof(*np));
		if (np == NULL) {
			*err = "out of memory";
			return -1;
		}
		p->pats = np;
		p->cap = ncap;
	}
	p->pats[p->n++] = pt;
	return 0;
}

static int
tolower_ascii(int c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* '*' matches any run, dots included; case-insensitive; no recursion. */
static int
glob_match(const char *pat, const char *s)
{
	const char *star = NULL, *resume = NULL;

	while (*s) {
		if (*pat == '*') {
			star = pat++;
			resume = s;
		} else if (*pat && tolower_ascii((unsigned char)*pat) ==
		    tolower_ascii((unsigned char)*s)) {
			pat++;
			s++;
		} else if (star) {
			pat = star + 1;
			s = ++resume;
		} else
			return 0;
	}
	while (*pat == '*')
		pat++;
	return *pat == '\0';
}

int
policy_allows(const struct policy *p, const char *name,
    const struct sockaddr *sa)
{
	struct addr a;
	int i;

	if (addr_get(sa, &a) == -1)
		return 0;
	if (p->n == 0)
		return (a.port == 110 || a.port == 995) && addr_public(&a);
	for (i = 0; i < p->n; i++) {
		const struct pattern *pt = &p->pats[i];

		if (pt->port != PORT_ANY && pt->port != a.port)
			continue;
		switch (pt->kind) {
		case PAT_NET:
			if (pt->family == a.family &&
			    prefix_match(a.b, pt->net, pt->prefix))
				return 1;
			break;
		case PAT_NAME:
			if (name != NULL && strcasecmp(name, pt->name) == 0)
				return 1;
			break;
		case PAT_GLOB:
			if (name != NULL && addr_public(&a) &&
			    glob_match(pt->name, name))
				return 1;
			break;
		}
	}
	return 0;
}
