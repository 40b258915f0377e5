/* route.c: parses the routing part of a login name ("user%host[:port]",
 * "user@host[:port]", "[v6]" literals) into a struct route; no I/O. */
#include <arpa/inet.h>
#include <string.h>

#include "route.h"

#define ROUTE_NAME_MAX	253	/* RFC 1035 host name, dots included */
#define ROUTE_LABEL_MAX	63

/*
 * Refused before anything else, so that nothing below ever sees a control
 * character, NUL or white space and no message can be smuggled into a log
 * line or a reply. Octets >= 0x80 pass (UTF-8 user names); the host
 * checks refuse them in host names.
 */
static int
has_ctl_or_space(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= 0x20 || c == 0x7f)
			return 1;
	}
	return 0;
}

/* "1".."65535"; anything else, including "" and "0110000", is refused. */
static int
parse_port(const char *s, size_t len, uint16_t *port, const char **err)
{
	unsigned long v = 0;
	size_t i;

	if (len == 0) {
		*err = "missing port number after ':'";
		return -1;
	}
	for (i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9') {
			*err = "port must be a number";
			return -1;
		}
		v = v * 10 + (unsigned long)(s[i] - '0');
		if (v > 65535) {
			*err = "port out of range (1-65535)";
			return -1;
		}
	}
	if (v == 0) {
		*err = "port out of range (1-65535)";
		return -1;
	}
	*port = (uint16_t)v;
	return 0;
}

/*
 * A host name: [A-Za-z0-9._-], labels 1..63, total <= 253, no empty label
 * (so no leading, trailing or double dot). A name whose last label is all
 * digits must be a dotted-quad IPv4 address: "10.1" or "1.2.3.256" would
 * otherwise reach the resolver, and some resolvers read "10.1" as 10.0.0.1.
 * Writes the lower-cased name to out.
 */
static int
parse_name(const char *s, size_t len, char *out, int *is_ip, const char **err)
{
	size_t i, label = 0;
	int digits_only = 1;
	char tmp[ROUTE_NAME_MAX + 1];
	struct in_addr a4;

	if (len == 0) {
		*err = "empty host name";
		return -1;
	}
	if (len > ROUTE_NAME_MAX) {
		*err = "host name too long";
		return -1;
	}
	for (i = 0; i < len; i++) {
		char c = s[i];

		if (c == '.') {
			if (label == 0) {
				*err = "empty label in host name";
				return -1;
			}
			label = 0;
			digits_only = 1;
			tmp[i] = c;
			continue;
		}
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '_')) {
			*err = "invalid character in host name";
			return -1;
		}
		if (c < '0' || c > '9')
			digits_only = 0;
		if (++label > ROUTE_LABEL_MAX) {
			*err = "host name label too long";
			return -1;
		}
		tmp[i] = c;
	}
	if (label == 0) {
		*err = "empty label in host name";
		return -1;
	}
	tmp[len] = '\0';
	if (digits_only) {
		if (inet_pton(AF_INET, tmp, &a4) != 1) {
			*err = "invalid IPv4 address";
			return -1;
		}
		*is_ip = 4;
	} else
		*is_ip = 0;
	memcpy(out, tmp, len + 1);
	return 0;
}

/* host[:port] or [v6][:port]; fills host, host_is_ip and port only. */
static int
parse_hostport(const char *s, size_t len, uint16_t default_port,
    struct route *r, const char **err)
{
	const char *colon, *host = s;
	size_t hlen = len;

	r->port = default_port;
	if (len == 0) {
		*err = "empty host name";
		return -1;
	}
	if (s[0] == '[') {
		const char *close = memchr(s, ']', len);
		char lit[INET6_ADDRSTRLEN];
		struct in6_addr a6;
		size_t llen;

		if (close == NULL) {
			*err = "missing ']' after IPv6 address";
			return -1;
		}
		llen = (size_t)(close - s) - 1;
		if (llen == 0) {
			*err = "empty IPv6 address";
			return -1;
		}
		if (llen >= sizeof(lit)) {
			*err = "invalid IPv6 address";
			return -1;
		}
		memcpy(lit, s + 1, llen);
		lit[llen] = '\0';
		if (inet_pton(AF_INET6, lit, &a6) != 1) {
			*err = "invalid IPv6 address";
			return -1;
		}
		/* Canonical text form, so logs and policy names are stable. */
		if (inet_ntop(AF_INET6, &a6, r->host, sizeof(r->host)) == NULL) {
			*err = "invalid IPv6 address";
			return -1;
		}
		r->host_is_ip = 6;
		s = close + 1;
		len -= (size_t)(close - host) + 1;
		if (len == 0)
			return 0;
		if (s[0] != ':') {
			*err = "expected ':port' after ']'";
			return -1;
		}
		return parse_port(s + 1, len - 1, &r->port, err);
	}

	colon = memchr(s, ':', len);
	if (colon != NULL) {
		if (memchr(colon + 1, ':', len - (size_t)(colon - s) - 1) != NULL) {
			*err = "IPv6 addresses need brackets: use [address]:port";
			return -1;
		}
		if (memchr(s, ']', len) != NULL) {
			*err = "missing '[' before IPv6 address";
			return -1;
		}
		hlen = (size_t)(colon - s);
		if (parse_port(colon + 1, len - hlen - 1, &r->port, err) == -1)
			return -1;
	}
	return parse_name(host, hlen, r->host, &r->host_is_ip, err);
}

int
route_parse_hostport(const char *s, size_t len, uint16_t default_port,
    struct route *r, const char **err)
{
	memset(r, 0, sizeof(*r));
	if (has_ctl_or_space(s, len)) {
		*err = "control characters and spaces are not allowed";
		return -1;
	}
	if (parse_hostport(s, len, default_port, r, err) == -1) {
		memset(r, 0, sizeof(*r));	/* no half-parsed route */
		return -1;
	}
	return 0;
}

int
route_parse(const char *s, size_t len, uint16_t default_port,
    struct route *r, const char **err)
{
	const char *sep = NULL;
	size_t i, ulen;

	memset(r, 0, sizeof(*r));
	if (has_ctl_or_space(s, len)) {
		*err = "control characters and spaces are not allowed";
		return -1;
	}
	/* The last '%' wins over any '@', so user names may contain '@'. */
	for (i = len; i-- > 0 && sep == NULL;)
		if (s[i] == '%')
			sep = s + i;
	for (i = len; i-- > 0 && sep == NULL;)
		if (s[i] == '@')
			sep = s + i;
	if (sep == NULL) {
		*err = "no host given: use user%host or user@host";
		return -1;
	}
	ulen = (size_t)(sep - s);
	if (ulen == 0) {
		*err = "empty user name";
		return -1;
	}
	if (ulen >= ROUTE_USER_MAX) {
		*err = "user name too long";
		return -1;
	}
	if (parse_hostport(sep + 1, len - ulen - 1, default_port, r, err) == -1) {
		memset(r, 0, sizeof(*r));
		return -1;
	}
	memcpy(r->user, s, ulen);
	r->user[ulen] = '\0';
	return 0;
}
