/* upstream.h: reaching a mail server: resolve its name asynchronously, keep
 * only the addresses the policy allows, and connect to each in turn. */
#ifndef UPSTREAM_H
#define UPSTREAM_H

#include <ev.h>
#include <sys/socket.h>

#include "route.h"

struct proxy;
struct resolver_query;

#define UPSTREAM_MAX_ADDRS 16

/*
 * Called once: fd >= 0 is a connected non-blocking socket (the caller owns
 * it), or fd == -1 and err is a client-safe reason that starts with a POP3
 * response code, e.g. "[SYS/TEMP] cannot connect to h:110: Connection refused".
 */
typedef void (*upstream_cb)(void *arg, int fd, const char *err);

struct upstream_connect {
	struct proxy *px;
	const char *sid;
	const struct route *rt;
	int check_policy;		/* routing mode: apply --allow-upstream */
	struct resolver_query *query;
	struct sockaddr_storage addrs[UPSTREAM_MAX_ADDRS];
	size_t naddrs, next;
	int fd;
	ev_io io;
	ev_timer timer;
	upstream_cb cb;
	void *arg;
	int active;
	char err[512];
	char peer[64];			/* the address connected to, for logs */
	struct sockaddr_storage connected;
};

/* Start; the callback never runs from inside this call. 0 or -1 (ENOMEM). */
int upstream_start(struct upstream_connect *, struct proxy *, const char *sid,
    const struct route *rt, int check_policy, upstream_cb, void *arg);
/* Abandon an attempt in progress; the callback will not run. */
void upstream_abort(struct upstream_connect *);

/* "1.2.3.4:110" or "[::1]:110" */
void sockaddr_format(const struct sockaddr *sa, char *out, size_t outlen);

#endif
