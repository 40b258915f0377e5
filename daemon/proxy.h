/* proxy.h: the daemon core as an embeddable object: new / run / cleanup,
 * the original module's constructor, looper() and cleanup(FORCE). */
#ifndef PROXY_H
#define PROXY_H

#include <ev.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"
#include "tls.h"

struct session;
struct listener;
struct resolver;
struct filter_chain;

struct ipcount;

struct proxy {
	struct ev_loop *loop;
	const struct config *cfg;
	struct listener *listeners[CONFIG_MAX_LISTEN];
	int nlisteners;
	struct resolver *resolver;
	struct filter_chain *filters;	/* NULL: no filtering */
	struct tls tls;

	struct session *sessions;	/* all live sessions */
	int nsessions;
	struct session *dead;		/* ended, freed from the reaper */
	ev_prepare reaper;
	struct ipcount *per_ip;

	ev_signal sigterm, sigint, sighup, sigusr1;
	ev_timer grace_timer;
	int stopping;			/* 0 running, 1 graceful, 2 forced */
	uint64_t sid_counter;
	uint64_t accepted;		/* sessions since start */
	uint64_t held_bytes;		/* messages held for filters, all sessions */
	struct session *bw_head, *bw_tail;	/* waiting for budget, FIFO */
	ev_idle budget_wake;		/* resumes them when room is freed */

	/* Local addresses, for refusing routing loops to ourselves. */
	struct sockaddr_storage *local_addrs;
	int nlocal;
};

/* Bind the listeners and set everything up; NULL (logged) on failure. */
struct proxy *proxy_new(struct ev_loop *loop, const struct config *cfg);
/* Connect the filters, then run until cleanup has finished its work.
 * Returns 0, or -1 if the filter chain cannot be set up. */
int proxy_run(struct proxy *);
/*
 * Stop. force == 0: stop accepting, let open sessions finish within the
 * grace period, then close what is left. force == 1: close everything now.
 */
void proxy_cleanup(struct proxy *, int force);
void proxy_free(struct proxy *);
/* Log one status line (SIGUSR1): sessions, held bytes, budget waiters,
 * the state of each filter. */
void proxy_status(struct proxy *);

/*
 * Take a connected client socket (arg is the proxy): the listeners call
 * this for every accepted connection; an embedder with sockets of its own,
 * or the whole-session fuzzer with socketpairs, calls it the same way.
 * The proxy owns fd from here on, whether it refuses it or not.
 */
void proxy_accept(void *arg, int fd, const struct sockaddr_storage *peer,
    socklen_t len, int tls);

/* Is ss (with port) one of our own listening addresses? */
int proxy_is_self(const struct proxy *, const struct sockaddr *ss);

/* Used by sessions. */
void proxy_session_gone(struct proxy *, struct session *);
const char *proxy_next_sid(struct proxy *, char *out, size_t outlen);

#endif
