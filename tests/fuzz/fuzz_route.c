/* fuzz_route.c: libFuzzer target for login-name routing (daemon/route.c)
 * and the upstream allow-list that judges its result (daemon/policy.c). */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "fuzz.h"
#include "policy.h"
#include "route.h"

static void
check_route(const struct route *r, int with_user, uint16_t defport)
{
	size_t hl = strnlen(r->host, sizeof(r->host));

	FUZZ_CHECK(hl > 0 && hl < sizeof(r->host) && hl <= 253);
	FUZZ_CHECK(r->port >= 1);	/* uint16_t: <= 65535 by type */
	for (size_t i = 0; i < hl; i++) {
		unsigned char c = (unsigned char)r->host[i];
		FUZZ_CHECK(c > 0x20 && c < 0x7f);
		FUZZ_CHECK(!(c >= 'A' && c <= 'Z'));
	}
	if (r->host_is_ip == 4) {
		struct in_addr a;
		FUZZ_CHECK(inet_pton(AF_INET, r->host, &a) == 1);
	} else if (r->host_is_ip == 6) {
		struct in6_addr a;
		char canon[INET6_ADDRSTRLEN];
		FUZZ_CHECK(inet_pton(AF_INET6, r->host, &a) == 1);
		FUZZ_CHECK(inet_ntop(AF_INET6, &a, canon, sizeof(canon)) != NULL);
		FUZZ_CHECK(strcmp(canon, r->host) == 0);
	} else {
		FUZZ_CHECK(r->host_is_ip == 0);
		FUZZ_CHECK(strspn(r->host, "abcdefghijklmnopqrstuvwxyz0123456789.-_") == hl);
		FUZZ_CHECK(r->host[0] != '.' && r->host[hl - 1] != '.' &&
		    strstr(r->host, "..") == NULL);
	}
	if (with_user) {
		size_t ul = strnlen(r->user, sizeof(r->user));
		FUZZ_CHECK(ul > 0 && ul < sizeof(r->user));
		for (size_t i = 0; i < ul; i++) {
			unsigned char c = (unsigned char)r->user[i];
			FUZZ_CHECK(c > 0x20 && c != 0x7f);
		}
	}

	/* Idempotent: the route written back parses to itself. */
	char text[ROUTE_USER_MAX + ROUTE_HOST_MAX + 16];
	struct route r2;
	const char *err;
	int n = snprintf(text, sizeof(text), r->host_is_ip == 6 ?
	    "%s%s[%s]:%u" : "%s%s%s:%u", with_user ? r->user : "",
	    with_user ? "%" : "", r->host, r->port);
	FUZZ_CHECK(n > 0 && (size_t)n < sizeof(text));
	if (with_user)
		FUZZ_CHECK(route_parse(text, (size_t)n, defport, &r2, &err) == 0);
	else
		FUZZ_CHECK(route_parse_hostport(text, (size_t)n, defport, &r2, &err) == 0);
	FUZZ_CHECK(strcmp(r2.host, r->host) == 0 && r2.port == r->port &&
	    r2.host_is_ip == r->host_is_ip && strcmp(r2.user, r->user) == 0);
}

/* Reference glob, by dynamic programming: '*' matches any run. */
static int
glob_ref(const char *pat, const char *s)
{
	size_t pl = strlen(pat), sl = strlen(s);
	unsigned char *row = calloc(sl + 1, 1), *nrow = calloc(sl + 1, 1);
	int ok;

	row[0] = 1;
	for (size_t j = 1; j <= sl; j++)
		row[j] = 0;
	for (size_t i = 1; i <= pl; i++) {
		nrow[0] = row[0] && pat[i - 1] == '*';
		for (size_t j = 1; j <= sl; j++) {
			if (pat[i - 1] == '*')
				nrow[j] = row[j] || nrow[j - 1];
			else
				nrow[j] = row[j - 1] && tolower((unsigned char)pat[i - 1]) ==
				    tolower((unsigned char)s[j - 1]);
		}
		memcpy(row, nrow, sl + 1);
	}
	ok = row[sl];
	free(row);
	free(nrow);
	return ok;
}

/* Build the address the resolver would have handed back. */
static socklen_t
make_addr(const uint8_t *b, int v6, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (v6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
		s6->sin6_family = AF_INET6;
		memcpy(&s6->sin6_addr, b, 16);
		memcpy(&s6->sin6_port, b + 16, 2);
		return sizeof(*s6);
	}
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	s4->sin_family = AF_INET;
	memcpy(&s4->sin_addr, b, 4);
	memcpy(&s4->sin_port, b + 16, 2);
	return sizeof(*s4);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint16_t ports[] = { 110, 995, 1, 65535 };
	struct route r;
	struct sockaddr_storage ss, mapped;
	const char *err = NULL, *text, *end;
	uint16_t defport;
	int with_user, rc, v6;

	if (size < 19)
		return 0;
	with_user = !(data[0] & 1);
	v6 = data[0] & 2;
	defport = ports[(data[0] >> 2) & 3];
	make_addr(data + 1, v6, &ss);
	text = (const char *)data + 19;
	end = (const char *)data + size;

	/* Line 1: the login name (or host:port); lines 2..: policy patterns. */
	const char *nl = memchr(text, '\n', (size_t)(end - text));
	size_t rlen = nl ? (size_t)(nl - text) : (size_t)(end - text);

	if (with_user)
		rc = route_parse(text, rlen, defport, &r, &err);
	else
		rc = route_parse_hostport(text, rlen, defport, &r, &err);
	if (rc == 0)
		check_route(&r, with_user, defport);
	else {
		FUZZ_CHECK(rc == -1 && err != NULL && strlen(err) > 0);
		/* No half-parsed route survives a refusal. */
		FUZZ_CHECK(r.host[0] == '\0' && r.user[0] == '\0' && r.port == 0);
	}

	/* The allow-list, judged against the parsed name (or a fixed one). */
	const char *name = rc == 0 ? r.host : "pop.example.com";
	struct policy *pol = policy_new();
	int nglob = 0, nother = 0;
	FUZZ_CHECK(pol != NULL);
	for (const char *p = nl ? nl + 1 : end; p < end && nglob + nother < 8;) {
		const char *e = memchr(p, '\n', (size_t)(end - p));
		size_t l = e ? (size_t)(e - p) : (size_t)(end - p);
		char *pat = strndup(p, l);
		const char *perr = NULL;

		FUZZ_CHECK(pat != NULL);
		if (policy_add(pol, pat, &perr) == 0) {
			/* A glob is a pattern whose host has a '*'. */
			char *colon = strrchr(pat, ':');
			*colon = '\0';
			if (strchr(pat, '*') != NULL && pat[0] != '[') {
				nglob++;
				/* Alone, it decides exactly like a reference
				 * glob for a public address on its port. */
				struct policy *one = policy_new();
				*colon = ':';
				FUZZ_CHECK(policy_add(one, pat, &perr) == 0);
				if (addr_is_public((struct sockaddr *)&ss) &&
				    strcmp(colon + 1, "*") == 0) {
					*colon = '\0';
					FUZZ_CHECK(policy_allows(one, name,
					    (struct sockaddr *)&ss) == glob_ref(pat, name));
				}
				policy_free(one);
			} else
				nother++;
		} else
			FUZZ_CHECK(perr != NULL);
		free(pat);
		p = e ? e + 1 : end;
	}
	FUZZ_CHECK(policy_count(pol) == nglob + nother);

	int allowed = policy_allows(pol, name, (struct sockaddr *)&ss);
	int pub = addr_is_public((struct sockaddr *)&ss);
	struct sockaddr_in6 *m6 = (struct sockaddr_in6 *)&mapped;
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
	uint16_t port = ntohs(s4->sin_port);	/* same offset for v6 */

	FUZZ_CHECK(allowed == 0 || allowed == 1);
	FUZZ_CHECK(pub == 0 || pub == 1);
	if (nglob + nother == 0)
		FUZZ_CHECK(allowed == ((port == 110 || port == 995) && pub));
	/* '*' never reaches a loopback, private or otherwise internal one. */
	if (nother == 0 && !pub)
		FUZZ_CHECK(allowed == 0);
	/* An IPv4 address and its v4-mapped IPv6 form are judged alike. */
	if (!v6) {
		memset(&mapped, 0, sizeof(mapped));
		m6->sin6_family = AF_INET6;
		m6->sin6_port = s4->sin_port;
		m6->sin6_addr.s6_addr[10] = m6->sin6_addr.s6_addr[11] = 0xff;
		memcpy(&m6->sin6_addr.s6_addr[12], &s4->sin_addr, 4);
		FUZZ_CHECK(addr_is_public((struct sockaddr *)&mapped) == pub);
		FUZZ_CHECK(policy_allows(pol, name, (struct sockaddr *)&mapped) == allowed);
	}
	policy_free(pol);
	return 0;
}
