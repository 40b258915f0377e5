/* policy.h: the upstream allow-list (--allow-upstream), deciding which
 * host, address and port a client may make the proxy connect to. No I/O. */
#ifndef POLICY_H
#define POLICY_H

#include <stdint.h>
#include <sys/socket.h>

struct policy;

struct policy *policy_new(void);
void policy_free(struct policy *);

/*
 * Add one pattern "HOST:PORT": HOST is a host name with '*' globs, an IPv4
 * address, a bracketed IPv6 address ("[::1]") or a CIDR range ("10.0.0.0/8",
 * "[fd00::]/8"); PORT is a number or '*'. Returns 0, or -1 with *err set to a
 * static message for a malformed pattern.
 */
int policy_add(struct policy *, const char *pattern, const char **err);

/* Number of patterns added. With none, the default rule applies. */
int policy_count(const struct policy *);

/*
 * May the proxy connect to `addr` (port included) for a user who asked for
 * host `name` (as typed, lower-cased; an IP literal is its own name)?
 * Returns 1 if allowed, 0 if refused.
 *
 * Default rule, with no pattern: port 110 or 995, and addr is public.
 * With patterns: some pattern must match, either a glob pattern matching
 * `name` or an IP/CIDR pattern matching `addr`, and its port must match.
 * A glob containing '*' never grants a non-public address (loopback,
 * private, link-local, unique-local, unspecified, multicast...): those need
 * an exact host name or an IP/CIDR pattern, so that '*:110' cannot reach
 * internal services.
 */
int policy_allows(const struct policy *, const char *name,
    const struct sockaddr *addr);

/* 1 if addr is a public unicast address, 0 otherwise. */
int addr_is_public(const struct sockaddr *addr);

#endif
