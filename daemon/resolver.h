/* resolver.h: asynchronous host name lookups on the libev loop (c-ares),
 * returning every address of a name with the port filled in. */
#ifndef RESOLVER_H
#define RESOLVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct ev_loop;
struct resolver;
struct resolver_query;

#define RESOLVER_MAX_ADDRS 16

/* err values passed to a resolver_cb; errmsg is a static, client-safe text. */
enum {
	RESOLVER_OK = 0,
	RESOLVER_ENOTFOUND,	/* no such name, or it has no address */
	RESOLVER_ETEMP,		/* timeout, server unreachable or failing */
	RESOLVER_EINVAL,	/* not a valid host name */
	RESOLVER_ENOMEM,
	RESOLVER_ECANCELLED,	/* only from resolver_free */
};

/*
 * addrs (naddrs <= RESOLVER_MAX_ADDRS, IPv6 and IPv4 interleaved, the
 * preferred family first) are only valid during the call. The callback is
 * always called from an ev watcher of the loop, never from inside
 * resolver_lookup; it may call resolver_lookup, resolver_cancel on other
 * queries and resolver_free, and free whatever arg points to.
 */
typedef void (*resolver_cb)(void *arg, int err, const char *errmsg,
    const struct sockaddr_storage *addrs, size_t naddrs);

/*
 * servers_csv: NULL for /etc/resolv.conf, else c-ares' "host[:port],..."
 * form, e.g. "127.0.0.1:5353" or "[::1]:53". /etc/hosts is consulted first
 * in either case. timeout_s bounds each lookup as a whole. NULL on error.
 */
struct resolver *resolver_new(struct ev_loop *loop, const char *servers_csv,
    double timeout_s);

/*
 * Every query still pending gets its callback, with RESOLVER_ECANCELLED,
 * oldest first, before resolver_free returns, so no caller is left holding
 * a handle to a freed query. Lookups started from those callbacks fail (NULL).
 */
void resolver_free(struct resolver *);

/*
 * Look up host (a name, or an IPv4/IPv6 literal without brackets, which is
 * answered without DNS) and call cb exactly once, unless cancelled.
 * Returns NULL (and never calls cb) only when out of memory or freeing.
 */
struct resolver_query *resolver_lookup(struct resolver *, const char *host,
    uint16_t port, resolver_cb cb, void *arg);

/* cb will never be called. Only valid before cb has run. NULL is a no-op. */
void resolver_cancel(struct resolver_query *);

#endif
