/* upstream.c: from a route to a connected socket without blocking: the
 * resolver's addresses, the allow-list, then connect() with a timeout each. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "policy.h"
#include "proxy.h"
#include "resolver.h"
#include "upstream.h"

static void upstream_try_next(struct upstream_connect *);

void
sockaddr_format(const struct sockaddr *sa, char *out, size_t outlen)
{
	char ip[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		snprintf(out, outlen, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(out, outlen, "%s:%u", ip, ntohs(s4->sin_port));
	} else {
		snprintf(out, outlen, "?");
	}
}

static void
upstream_finish(struct upstream_connect *uc, int fd, const char *err)
{
	uc->active = 0;
	ev_timer_stop(uc->px->loop, &uc->timer);
	ev_io_stop(uc->px->loop, &uc->io);
	uc->fd = -1;
	uc->cb(uc->arg, fd, err);
}

static void
upstream_connected(struct upstream_connect *uc)
{
	int fd = uc->fd;

	uc->connected = uc->addrs[uc->next - 1];
	ev_io_stop(uc->px->loop, &uc->io);
	ev_timer_stop(uc->px->loop, &uc->timer);
	uc->fd = -1;
	log_debug(uc->sid, "connected to %s (%s)", uc->rt->host, uc->peer);
	upstream_finish(uc, fd, NULL);
}

static void
upstream_failed_one(struct upstream_connect *uc, const char *why)
{
	log_info(uc->sid, "connect to %s (%s) failed: %s", uc->rt->host,
	    uc->peer, why);
	snprintf(uc->err, sizeof(uc->err), "[SYS/TEMP] cannot connect to %s:%u: %s",
	    uc->rt->host, uc->rt->port, why);
	if (uc->fd >= 0) {
		ev_io_stop(uc->px->loop, &uc->io);
		close(uc->fd);
		uc->fd = -1;
	}
	ev_timer_stop(uc->px->loop, &uc->timer);
	upstream_try_next(uc);
}

static void
upstream_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct upstream_connect *uc = w->data;
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(uc->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err != 0)
		upstream_failed_one(uc, strerror(err));
	else
		upstream_connected(uc);
}

static void
upstream_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct upstream_connect *uc = w->data;

	upstream_failed_one(uc, "connection timed out");
}

static void
upstream_try_next(struct upstream_connect *uc)
{
	const struct config *cfg = uc->px->cfg;

	while (uc->next < uc->naddrs) {
		struct sockaddr_storage *ss = &uc->addrs[uc->next++];
		socklen_t sl = ss->ss_family == AF_INET6 ?
		    sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);

		sockaddr_format((struct sockaddr *)ss, uc->peer, sizeof(uc->peer));
		uc->fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK |
		    SOCK_CLOEXEC, 0);
		if (uc->fd < 0 || conn_socket_setup(uc->fd) < 0) {
			upstream_failed_one(uc, strerror(errno));
			return;
		}
		if (connect(uc->fd, (struct sockaddr *)ss, sl) == 0) {
			upstream_connected(uc);
			return;
		}
		if (errno != EINPROGRESS) {
			upstream_failed_one(uc, strerror(errno));
			return;
		}
		ev_io_init(&uc->io, upstream_io_cb, uc->fd, EV_WRITE);
		uc->io.data = uc;
		ev_io_start(uc->px->loop, &uc->io);
		ev_timer_set(&uc->timer, cfg->connect_timeout, 0);
		ev_timer_start(uc->px->loop, &uc->timer);
		return;
	}
	if (uc->err[0] == '\0')
		snprintf(uc->err, sizeof(uc->err),
		    "[SYS/TEMP] cannot connect to %s:%u", uc->rt->host, uc->rt->port);
	upstream_finish(uc, -1, uc->err);
}

static void
upstream_resolved(void *arg, int err, const char *errmsg,
    const struct sockaddr_storage *addrs, size_t naddrs)
{
	struct upstream_connect *uc = arg;
	const struct route *rt = uc->rt;
	int refused = 0, self = 0;

	uc->query = NULL;
	if (err != 0 || naddrs == 0) {
		log_info(uc->sid, "cannot resolve %s: %s", rt->host,
		    errmsg ? errmsg : "no address");
		snprintf(uc->err, sizeof(uc->err), "[SYS/TEMP] cannot resolve %s: %s",
		    rt->host, errmsg ? errmsg : "no address");
		upstream_finish(uc, -1, uc->err);
		return;
	}
	/* Keep only what policy allows; never ourselves (a routing loop). */
	uc->naddrs = 0;
	for (size_t i = 0; i < naddrs && uc->naddrs < UPSTREAM_MAX_ADDRS; i++) {
		const struct sockaddr *sa = (const struct sockaddr *)&addrs[i];
		char a[64];
		sockaddr_format(sa, a, sizeof(a));
		if (proxy_is_self(uc->px, sa)) {
			log_notice(uc->sid, "refused %s (%s): that is this proxy",
			    rt->host, a);
			self++;
			continue;
		}
		if (uc->check_policy && !policy_allows(uc->px->cfg->policy,
		    rt->host, sa)) {
			log_notice(uc->sid, "refused %s:%u (%s) by upstream policy",
			    rt->host, rt->port, a);
			refused++;
			continue;
		}
		uc->addrs[uc->naddrs++] = addrs[i];
	}
	if (uc->naddrs == 0) {
		snprintf(uc->err, sizeof(uc->err), "[SYS/PERM] upstream %s:%u is %s",
		    rt->host, rt->port, self && !refused ? "this proxy itself" :
		    "not allowed");
		upstream_finish(uc, -1, uc->err);
		return;
	}
	uc->next = 0;
	upstream_try_next(uc);
}

/* An attempt in progress, nothing started yet (the session fuzzer, which
 * compiles this file in, starts its fake connections from here too). */
static void
upstream_init(struct upstream_connect *uc, struct proxy *px, const char *sid,
    const struct route *rt, int check_policy, upstream_cb cb, void *arg)
{
	memset(uc, 0, sizeof(*uc));
	uc->px = px;
	uc->sid = sid;
	uc->rt = rt;
	uc->check_policy = check_policy;
	uc->cb = cb;
	uc->arg = arg;
	uc->fd = -1;
	uc->active = 1;
	ev_init(&uc->io, upstream_io_cb);
	ev_init(&uc->timer, upstream_timer_cb);
	uc->io.data = uc->timer.data = uc;
}

int
upstream_start(struct upstream_connect *uc, struct proxy *px, const char *sid,
    const struct route *rt, int check_policy, upstream_cb cb, void *arg)
{
	upstream_init(uc, px, sid, rt, check_policy, cb, arg);
	log_debug(sid, "resolving %s", rt->host);
	uc->query = resolver_lookup(px->resolver, rt->host, rt->port,
	    upstream_resolved, uc);
	if (uc->query == NULL) {
		uc->active = 0;
		return -1;
	}
	return 0;
}

void
upstream_abort(struct upstream_connect *uc)
{
	if (!uc->active)
		return;
	uc->active = 0;
	if (uc->query != NULL) {
		resolver_cancel(uc->query);
		uc->query = NULL;
	}
	ev_io_stop(uc->px->loop, &uc->io);
	ev_timer_stop(uc->px->loop, &uc->timer);
	if (uc->fd >= 0) {
		close(uc->fd);
		uc->fd = -1;
	}
}
