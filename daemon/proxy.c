/* proxy.c: the daemon core: listeners, the set of live sessions, per-IP
 * limits, signals, and graceful or forced shutdown (cleanup / cleanup(1)). */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "filter.h"
#include "listener.h"
#include "log.h"
#include "proxy.h"
#include "resolver.h"
#include "retr.h"
#include "session.h"

/* --- sessions per client address: a small chained hash table ---------------- */

#define IPC_BUCKETS 1024

struct ipc_entry {
	struct ipc_entry *next;
	unsigned char addr[16];
	int count;
};

struct ipcount {
	struct ipc_entry *b[IPC_BUCKETS];
};

/* IPv4 and IPv4-mapped IPv6 count as the same client. */
static void
ipc_key(const struct sockaddr_storage *ss, unsigned char key[16])
{
	memset(key, 0, 16);
	if (ss->ss_family == AF_INET) {
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
	} else if (ss->ss_family == AF_INET6) {
		memcpy(key, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
	}
}

static struct ipc_entry **
ipc_find(struct ipcount *t, const unsigned char key[16])
{
	uint32_t h = 2166136261u;
	for (int i = 0; i < 16; i++)
		h = (h ^ key[i]) * 16777619u;
	struct ipc_entry **pp = &t->b[h % IPC_BUCKETS];
	while (*pp != NULL && memcmp((*pp)->addr, key, 16) != 0)
		pp = &(*pp)->next;
	return pp;
}

/* Returns the count after adding delta, or -1 on ENOMEM. */
static int
ipc_add(struct ipcount *t, const struct sockaddr_storage *ss, int delta)
{
	unsigned char key[16];

	ipc_key(ss, key);
	struct ipc_entry **pp = ipc_find(t, key);
	if (*pp == NULL) {
		if (delta <= 0)
			return 0;
		struct ipc_entry *e = calloc(1, sizeof(*e));
		if (e == NULL)
			return -1;
		memcpy(e->addr, key, 16);
		*pp = e;
	}
	struct ipc_entry *e = *pp;
	e->count += delta;
	int c = e->count;
	if (c <= 0) {
		*pp = e->next;
		free(e);
	}
	return c;
}

static int
ipc_get(struct ipcount *t, const struct sockaddr_storage *ss)
{
	unsigned char key[16];

	ipc_key(ss, key);
	struct ipc_entry **pp = ipc_find(t, key);
	return *pp ? (*pp)->count : 0;
}

static void
ipc_free(struct ipcount *t)
{
	if (t == NULL)
		return;
	for (int i = 0; i < IPC_BUCKETS; i++) {
		struct ipc_entry *e = t->b[i], *n;
		for (; e != NULL; e = n) {
			n = e->next;
			free(e);
		}
	}
	free(t);
}

/* --- session bookkeeping --------------------------------------------------- */

const char *
proxy_next_sid(struct proxy *px, char *out, size_t outlen)
{
	snprintf(out, outlen, "%08llx", (unsigned long long)(px->sid_counter++ &
	    0xffffffffffULL));
	return out;
}

static void
list_remove(struct session **head, struct session *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		*head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
}

static void
list_push(struct session **head, struct session *s)
{
	s->prev = NULL;
	s->next = *head;
	if (*head)
		(*head)->prev = s;
	*head = s;
}

/*
 * A session has ended: move it to the dead list. The reaper, an ev_prepare
 * watcher, frees it after this round of callbacks and before the loop
 * sleeps again: never from inside one of the session's own callbacks.
 */
void
proxy_session_gone(struct proxy *px, struct session *s)
{
	list_remove(&px->sessions, s);
	px->nsessions--;
	if (s->counted_ip)
		ipc_add(px->per_ip, &s->peer, -1);
	list_push(&px->dead, s);
	ev_prepare_start(px->loop, &px->reaper);
	if (px->stopping && px->nsessions == 0) {
		log_info(NULL, "all sessions closed");
		ev_timer_stop(px->loop, &px->grace_timer);
		ev_break(px->loop, EVBREAK_ALL);
	}
}

static void
proxy_reap(struct proxy *px)
{
	while (px->dead != NULL) {
		struct session *s = px->dead;
		list_remove(&px->dead, s);
		session_free(s);
	}
	ev_prepare_stop(px->loop, &px->reaper);
}

static void
proxy_reap_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	proxy_reap(w->data);
}

/* Turn a client away before it becomes a session; best effort, no wait. */
static void
proxy_refuse(int fd, const char *line)
{
	ssize_t n = send(fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)n;
	close(fd);
}

void
proxy_accept(void *arg, int fd, const struct sockaddr_storage *peer,
    socklen_t len, int tls)
{
	struct proxy *px = arg;
	const struct config *cfg = px->cfg;
	char who[64];

	if (px->stopping) {
		proxy_refuse(fd, "-ERR [SYS/TEMP] shutting down\r\n");
		return;
	}
	if (px->nsessions >= cfg->max_sessions) {
		sockaddr_format((const struct sockaddr *)peer, who, sizeof(who));
		log_warn(NULL, "refused %s: %d sessions (--max-sessions)", who,
		    px->nsessions);
		proxy_refuse(fd, "-ERR [SYS/TEMP] too many sessions, try later\r\n");
		return;
	}
	if (cfg->max_per_ip > 0 && ipc_get(px->per_ip, peer) >= cfg->max_per_ip) {
		sockaddr_format((const struct sockaddr *)peer, who, sizeof(who));
		log_warn(NULL, "refused %s: %d sessions from that address "
		    "(--max-sessions-per-ip)", who, cfg->max_per_ip);
		proxy_refuse(fd, "-ERR [SYS/TEMP] too many sessions from your "
		    "address, try later\r\n");
		return;
	}
	if (conn_socket_setup(fd) < 0) {
		close(fd);
		return;
	}
	struct session *s = session_new(px, fd, peer, len, tls);
	if (s == NULL) {
		proxy_refuse(fd, "-ERR [SYS/TEMP] out of memory\r\n");
		return;
	}
	list_push(&px->sessions, s);
	px->nsessions++;
	px->accepted++;
	if (ipc_add(px->per_ip, peer, 1) >= 0)
		s->counted_ip = 1;
	session_start(s);
}

/* --- routing loops ---------------------------------------------------------- */

static int
same_addr(const struct sockaddr *a, const struct sockaddr *b, int port_too)
{
	unsigned char ka[16], kb[16];
	uint16_t pa, pb;

	ipc_key((const struct sockaddr_storage *)a, ka);
	ipc_key((const struct sockaddr_storage *)b, kb);
	pa = a->sa_family == AF_INET ? ((const struct sockaddr_in *)a)->sin_port :
	    ((const struct sockaddr_in6 *)a)->sin6_port;
	pb = b->sa_family == AF_INET ? ((const struct sockaddr_in *)b)->sin_port :
	    ((const struct sockaddr_in6 *)b)->sin6_port;
	return memcmp(ka, kb, 16) == 0 && (!port_too || pa == pb);
}

static int
is_unspecified(const struct sockaddr *sa)
{
	static const unsigned char zero[16];

	if (sa->sa_family == AF_INET)
		return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == 0;
	return memcmp(&((const struct sockaddr_in6 *)sa)->sin6_addr, zero, 16) == 0;
}

int
proxy_is_self(const struct proxy *px, const struct sockaddr *sa)
{
	const struct config *cfg = px->cfg;
	uint16_t port = sa->sa_family == AF_INET ?
	    ((const struct sockaddr_in *)sa)->sin_port :
	    ((const struct sockaddr_in6 *)sa)->sin6_port;

	for (int i = 0; i < cfg->nlisten; i++) {
		const struct sockaddr *l = (const struct sockaddr *)&cfg->listen[i].ss;
		uint16_t lport = l->sa_family == AF_INET ?
		    ((const struct sockaddr_in *)l)->sin_port :
		    ((const struct sockaddr_in6 *)l)->sin6_port;
		if (lport != port)
			continue;
		if (same_addr(l, sa, 0))
			return 1;
		if (!is_unspecified(l))
			continue;
		/* A wildcard listener: any address of this host is us. */
		if (is_unspecified(sa))
			return 1;
		for (int k = 0; k < px->nlocal; k++)
			if (same_addr((const struct sockaddr *)&px->local_addrs[k],
			    sa, 0))
				return 1;
	}
	return 0;
}

static void
proxy_load_local_addrs(struct proxy *px)
{
	struct ifaddrs *ifa, *i;

	if (getifaddrs(&ifa) < 0)
		return;
	int n = 0;
	for (i = ifa; i; i = i->ifa_next)
		if (i->ifa_addr && (i->ifa_addr->sa_family == AF_INET ||
		    i->ifa_addr->sa_family == AF_INET6))
			n++;
	px->local_addrs = calloc((size_t)n + 1, sizeof(*px->local_addrs));
	if (px->local_addrs != NULL) {
		for (i = ifa; i; i = i->ifa_next) {
			if (!i->ifa_addr)
				continue;
			int f = i->ifa_addr->sa_family;
			if (f == AF_INET)
				memcpy(&px->local_addrs[px->nlocal++], i->ifa_addr,
				    sizeof(struct sockaddr_in));
			else if (f == AF_INET6)
				memcpy(&px->local_addrs[px->nlocal++], i->ifa_addr,
				    sizeof(struct sockaddr_in6));
		}
	}
	freeifaddrs(ifa);
}

/* --- signals and shutdown ---------------------------------------------------- */

static void
proxy_grace_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct proxy *px = w->data;

	log_notice(NULL, "grace period over: closing %d sessions", px->nsessions);
	proxy_cleanup(px, 1);
}

void
proxy_cleanup(struct proxy *px, int force)
{
	if (!px->stopping) {
		for (int i = 0; i < px->nlisteners; i++)
			listener_stop(px->listeners[i]);
		px->stopping = 1;
		if (!force) {
			log_notice(NULL, "shutting down: %d sessions may finish within "
			    "%.0f s", px->nsessions, px->cfg->grace);
			ev_timer_set(&px->grace_timer, px->cfg->grace, 0);
			ev_timer_start(px->loop, &px->grace_timer);
		}
	}
	if (force) {
		px->stopping = 2;
		ev_timer_stop(px->loop, &px->grace_timer);
		/* session_end moves each session off the live list. */
		while (px->sessions != NULL) {
			struct session *s = px->sessions;
			session_end(s, "proxy shutdown",
			    "-ERR [SYS/TEMP] proxy shutting down\r\n");
			if (px->sessions == s) {
				/* still lingering over its goodbye: cut it */
				conn_close(&s->client);
				ev_timer_stop(px->loop, &s->linger);
				proxy_session_gone(px, s);
			}
		}
	}
	if (px->nsessions == 0)
		ev_break(px->loop, EVBREAK_ALL);
}

void
proxy_status(struct proxy *px)
{
	char filters[1024];
	int waiting = 0;

	for (const struct session *s = px->bw_head; s != NULL; s = s->bw_next)
		waiting++;
	filter_chain_status(px->filters, filters, sizeof(filters));
	log_notice(NULL, "status: %d sessions (%llu since start), %llu octets "
	    "held of %llu, %d waiting for budget%s%s%s%s",
	    px->nsessions, (unsigned long long)px->accepted,
	    (unsigned long long)px->held_bytes,
	    (unsigned long long)px->cfg->buffer_budget, waiting,
	    px->stopping ? ", shutting down" : "",
	    filters[0] ? ", filters: [" : "", filters, filters[0] ? "]" : "");
}

static void
proxy_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct proxy *px = w->data;

	if (w->signum == SIGHUP) {
		if (px->cfg->tls_cert == NULL)
			log_notice(NULL, "SIGHUP: no certificate to reload");
		else
			tls_reload(&px->tls, px->cfg);
		return;
	}
	if (w->signum == SIGUSR1) {
		proxy_status(px);
		return;
	}
	log_notice(NULL, "%s received", w->signum == SIGINT ? "SIGINT" : "SIGTERM");
	proxy_cleanup(px, px->stopping ? 1 : 0);
}

/* --- life cycle ---------------------------------------------------------------- */

struct proxy *
proxy_new(struct ev_loop *loop, const struct config *cfg)
{
	struct proxy *px = calloc(1, sizeof(*px));

	if (px == NULL)
		return NULL;
	px->loop = loop;
	px->cfg = cfg;
	uint32_t seed = 0;
	if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed))
		seed = (uint32_t)getpid() * 2654435761u;
	px->sid_counter = ((uint64_t)seed << 8);
	px->per_ip = calloc(1, sizeof(*px->per_ip));
	if (px->per_ip == NULL)
		goto fail;
	proxy_load_local_addrs(px);
	if (tls_init(&px->tls, cfg) < 0)
		goto fail;
	px->resolver = resolver_new(loop, cfg->dns_servers, cfg->connect_timeout);
	if (px->resolver == NULL) {
		log_error(NULL, "cannot set up the DNS resolver");
		goto fail;
	}
	for (int i = 0; i < cfg->nlisten; i++) {
		px->listeners[i] = listener_new(loop, &cfg->listen[i], proxy_accept,
		    px);
		if (px->listeners[i] == NULL)
			goto fail;
		px->nlisteners++;
	}
	ev_prepare_init(&px->reaper, proxy_reap_cb);
	retr_proxy_init(px);
	ev_timer_init(&px->grace_timer, proxy_grace_cb, cfg->grace, 0);
	ev_signal_init(&px->sigterm, proxy_signal_cb, SIGTERM);
	ev_signal_init(&px->sigint, proxy_signal_cb, SIGINT);
	ev_signal_init(&px->sighup, proxy_signal_cb, SIGHUP);
	ev_signal_init(&px->sigusr1, proxy_signal_cb, SIGUSR1);
	px->reaper.data = px->grace_timer.data = px;
	px->sigterm.data = px->sigint.data = px->sighup.data = px;
	px->sigusr1.data = px;
	ev_signal_start(loop, &px->sigterm);
	ev_signal_start(loop, &px->sigint);
	ev_signal_start(loop, &px->sighup);
	ev_signal_start(loop, &px->sigusr1);
	/* The signal watchers must not keep an idle loop alive. */
	for (int i = 0; i < 4; i++)
		ev_unref(loop);
	return px;
fail:
	proxy_free(px);
	return NULL;
}

int
proxy_run(struct proxy *px)
{
	/* Filters are reached only now, after main() dropped privileges, so
	 * that the first connection and every reconnection use the same
	 * identity (a socket root may write to but nobody may not would
	 * otherwise work once and fail after the filter's first restart). */
	if (px->cfg->nfilters > 0 && px->filters == NULL) {
		px->filters = filter_chain_new(px);
		if (px->filters == NULL)
			return -1;
	}
	ev_run(px->loop, 0);
	return 0;
}

void
proxy_free(struct proxy *px)
{
	if (px == NULL)
		return;
	if (px->sessions != NULL)
		proxy_cleanup(px, 1);
	proxy_reap(px);
	for (int i = 0; i < px->nlisteners; i++)
		listener_free(px->listeners[i]);
	if (ev_is_active(&px->sigterm)) {
		for (int i = 0; i < 4; i++)
			ev_ref(px->loop);
		ev_signal_stop(px->loop, &px->sigterm);
		ev_signal_stop(px->loop, &px->sigint);
		ev_signal_stop(px->loop, &px->sighup);
		ev_signal_stop(px->loop, &px->sigusr1);
	}
	ev_timer_stop(px->loop, &px->grace_timer);
	retr_proxy_free(px);
	filter_chain_free(px->filters);
	tls_free(&px->tls);
	resolver_free(px->resolver);
	ipc_free(px->per_ip);
	free(px->local_addrs);
	free(px);
}
