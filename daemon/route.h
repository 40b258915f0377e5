/* route.h: the routing syntax of a login name, "user%host[:port]" or
 * "user@host[:port]", parsed without I/O so that it is unit-testable. */
#ifndef ROUTE_H
#define ROUTE_H

#include <stddef.h>
#include <stdint.h>

#define ROUTE_USER_MAX 256	/* remote user name, NUL included */
#define ROUTE_HOST_MAX 256	/* host name or IP literal, NUL included */

struct route {
	char user[ROUTE_USER_MAX];	/* the name to log in with upstream */
	char host[ROUTE_HOST_MAX];	/* host name (lower-cased) or IP literal, no brackets */
	uint16_t port;
	int host_is_ip;			/* 4 or 6 for a literal, 0 for a name */
};

/*
 * Split `s` (len octets, need not be NUL-terminated) at the LAST '%' if there
 * is one, else at the LAST '@': "john@example.com%pop.example.com:995" routes
 * john@example.com to pop.example.com port 995. IPv6 literals are bracketed:
 * "alice%[2001:db8::1]:110". Without a port, default_port is used.
 * Returns 0, or -1 with *err pointing to a static, client-safe explanation.
 */
int route_parse(const char *s, size_t len, uint16_t default_port,
    struct route *r, const char **err);

/* Parse "host[:port]" or "[v6]:port" alone (for --upstream); same rules. */
int route_parse_hostport(const char *s, size_t len, uint16_t default_port,
    struct route *r, const char **err);

#endif
