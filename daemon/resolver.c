/* resolver.c: c-ares driven by libev (one ev_io per c-ares socket, one
 * ev_timer for its timeouts) and the life cycle of each lookup. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <ares.h>
#include <ev.h>

#include "resolver.h"

#define RESOLVER_NAME_MAX 253

struct rsock {
	ev_io io;
	struct resolver *r;
	struct rsock *next;
};

/*
 * A query lives until both c-ares and the user are done with it:
 * in_ares while c-ares may still call query_ares_cb, owned while the user
 * may still cancel it or expect cb. `delivering` keeps it alive across the
 * user callback, whatever that callback frees.
 */
struct resolver_query {
	struct resolver *r;		/* NULL once the resolver is gone */
	struct resolver_query *prev, *next;
	ev_timer timer;			/* deadline, then 0 s to deliver */
	resolver_cb cb;
	void *arg;
	uint16_t port;
	unsigned in_ares:1, owned:1, done:1, delivering:1;
	int err;
	const char *errmsg;
	size_t naddrs;
	struct sockaddr_storage addrs[RESOLVER_MAX_ADDRS];
};

struct resolver {
	struct ev_loop *loop;
	ares_channel ch;
	ev_timer timer;			/* ares_timeout() */
	struct rsock *socks;
	struct resolver_query *queries;	/* every allocated query */
	double timeout;
	int freeing;
};

static void
resolver_update_timer(struct resolver *r)
{
	struct timeval tv, *tvp;

	ev_timer_stop(r->loop, &r->timer);
	if (r->freeing)
		return;
	tvp = ares_timeout(r->ch, NULL, &tv);
	if (tvp == NULL)
		return;
	ev_timer_set(&r->timer, (double)tvp->tv_sec + tvp->tv_usec / 1e6, 0.);
	ev_timer_start(r->loop, &r->timer);
}

static void
resolver_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct resolver *r = w->data;

	ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	resolver_update_timer(r);
}

static void
resolver_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct rsock *s = (struct rsock *)w;	/* io is the first member */
	struct resolver *r = s->r;
	int fd = w->fd;

	/* s may be freed by the sock-state callback inside ares_process_fd. */
	ares_process_fd(r->ch, (revents & EV_READ) ? fd : ARES_SOCKET_BAD,
	    (revents & EV_WRITE) ? fd : ARES_SOCKET_BAD);
	resolver_update_timer(r);
}

/* c-ares says which sockets it wants watched; (0, 0) means closed. */
static void
resolver_sock_state_cb(void *data, ares_socket_t fd, int readable,
    int writable)
{
	struct resolver *r = data;
	struct rsock *s, **sp;

	for (sp = &r->socks; (s = *sp) != NULL; sp = &s->next)
		if (s->io.fd == fd)
			break;
	if (!readable && !writable) {
		if (s != NULL) {
			ev_io_stop(r->loop, &s->io);
			*sp = s->next;
			free(s);
		}
		return;
	}
	if (s == NULL) {
		if ((s = calloc(1, sizeof(*s))) == NULL)
			return;	/* the query times out instead */
		s->r = r;
		s->next = r->socks;
		r->socks = s;
		ev_io_init(&s->io, resolver_io_cb, fd, 0);
	}
	ev_io_stop(r->loop, &s->io);
	ev_io_set(&s->io, fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
	ev_io_start(r->loop, &s->io);
}

static void
query_unlink(struct resolver_query *q)
{
	if (q->r == NULL)
		return;
	ev_timer_stop(q->r->loop, &q->timer);
	if (q->prev)
		q->prev->next = q->next;
	else
		q->r->queries = q->next;
	if (q->next)
		q->next->prev = q->prev;
	q->r = NULL;
}

/* Free q once neither c-ares nor the user can reach it any more. */
static void
query_release(struct resolver_query *q)
{
	if (q->in_ares || q->owned || q->delivering)
		return;
	query_unlink(q);
	free(q);
}

/* Hand the result to the user; q may be gone when this returns. */
static void
query_deliver(struct resolver_query *q)
{
	if (q->r != NULL)
		ev_timer_stop(q->r->loop, &q->timer);
	q->owned = 0;
	q->delivering = 1;
	q->cb(q->arg, q->err, q->errmsg, q->err ? NULL : q->addrs,
	    q->err ? 0 : q->naddrs);
	q->delivering = 0;
	query_release(q);
}

static void
query_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct resolver_query *q = w->data;

	if (!q->done) {
		/* Deadline: c-ares may still answer later; nobody listens. */
		q->err = RESOLVER_ETEMP;
		q->errmsg = "DNS lookup timed out";
		q->done = 1;
	}
	query_deliver(q);
}

/* Result is ready: deliver it from the loop, not from where we are. */
static void
query_finish(struct resolver_query *q, int err, const char *errmsg)
{
	q->err = err;
	q->errmsg = errmsg;
	q->done = 1;
	if (q->r == NULL || !q->owned)
		return;
	ev_timer_stop(q->r->loop, &q->timer);
	ev_timer_set(&q->timer, 0., 0.);
	ev_timer_start(q->r->loop, &q->timer);
}

static void
query_add_addr(struct resolver_query *q, const struct sockaddr *sa)
{
	struct sockaddr_storage *ss = &q->addrs[q->naddrs];
	size_t i, len;

	if (sa->sa_family == AF_INET) {
		len = sizeof(struct sockaddr_in);
		memcpy(ss, sa, len);
		((struct sockaddr_in *)ss)->sin_port = htons(q->port);
	} else if (sa->sa_family == AF_INET6) {
		len = sizeof(struct sockaddr_in6);
		memcpy(ss, sa, len);
		((struct sockaddr_in6 *)ss)->sin6_port = htons(q->port);
	} else
		return;
	for (i = 0; i < q->naddrs; i++)		/* files and DNS may repeat */
		if (memcmp(&q->addrs[i], ss, len) == 0)
			return;
	q->naddrs++;
}

/*
 * Keep c-ares' order within each family but alternate the families,
 * starting with c-ares' first choice, so that a dead IPv6 route costs one
 * connect timeout and not all of them (the Happy Eyeballs order).
 */
static void
query_take_nodes(struct resolver_query *q, const struct ares_addrinfo_node *first)
{
	const struct ares_addrinfo_node *n[2] = { first, NULL };
	int fam[2], turn = 0;

	if (first == NULL)
		return;
	fam[0] = first->ai_family;
	fam[1] = fam[0] == AF_INET ? AF_INET6 : AF_INET;
	for (n[1] = first; n[1] && n[1]->ai_family != fam[1]; n[1] = n[1]->ai_next)
		;
	while ((n[0] || n[1]) && q->naddrs < RESOLVER_MAX_ADDRS) {
		const struct ares_addrinfo_node *cur;

		if (n[turn] == NULL)
			turn ^= 1;
		cur = n[turn];
		if (cur->ai_addr != NULL)
			query_add_addr(q, cur->ai_addr);
		for (cur = cur->ai_next; cur && cur->ai_family != fam[turn];
		    cur = cur->ai_next)
			;
		n[turn] = cur;
		turn ^= 1;
	}
}

static int
resolver_err(int status, const char **msg)
{
	switch (status) {
	case ARES_ENOTFOUND:
	case ARES_ENONAME:
		*msg = "host not found";
		return RESOLVER_ENOTFOUND;
	case ARES_ENODATA:
		*msg = "no address for host";
		return RESOLVER_ENOTFOUND;
	case ARES_EBADNAME:
		*msg = "invalid host name";
		return RESOLVER_EINVAL;
	case ARES_ENOMEM:
		*msg = "out of memory";
		return RESOLVER_ENOMEM;
	case ARES_ETIMEOUT:
		*msg = "DNS lookup timed out";
		return RESOLVER_ETEMP;
	case ARES_ECONNREFUSED:
		*msg = "DNS server unreachable";
		return RESOLVER_ETEMP;
	case ARES_ECANCELLED:
	case ARES_EDESTRUCTION:
		*msg = "lookup cancelled";
		return RESOLVER_ECANCELLED;
	default:
		*msg = ares_strerror(status);	/* static text */
		return RESOLVER_ETEMP;
	}
}

/* Never calls user code: c-ares may be anywhere in its own stack here. */
static void
query_ares_cb(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
	struct resolver_query *q = arg;
	const char *msg;
	int err;

	q->in_ares = 0;
	if (q->owned && !q->done) {
		if (status == ARES_SUCCESS) {
			query_take_nodes(q, res ? res->nodes : NULL);
			if (q->naddrs == 0)
				query_finish(q, RESOLVER_ENOTFOUND, "no address for host");
			else
				query_finish(q, RESOLVER_OK, NULL);
		} else {
			err = resolver_err(status, &msg);
			query_finish(q, err, msg);
		}
	}
	if (res != NULL)
		ares_freeaddrinfo(res);
	query_release(q);
}

/* An IPv4 or IPv6 literal: the answer, without asking anybody. */
static int
query_literal(struct resolver_query *q, const char *host)
{
	struct sockaddr_in s4;
	struct sockaddr_in6 s6;

	memset(&s4, 0, sizeof(s4));
	memset(&s6, 0, sizeof(s6));
	if (inet_pton(AF_INET, host, &s4.sin_addr) == 1) {
		s4.sin_family = AF_INET;
		query_add_addr(q, (struct sockaddr *)&s4);
		return 1;
	}
	if (inet_pton(AF_INET6, host, &s6.sin6_addr) == 1) {
		s6.sin6_family = AF_INET6;
		query_add_addr(q, (struct sockaddr *)&s6);
		return 1;
	}
	return 0;
}

struct resolver_query *
resolver_lookup(struct resolver *r, const char *host, uint16_t port,
    resolver_cb cb, void *arg)
{
	struct resolver_query *q;
	struct ares_addrinfo_hints hints;
	size_t len = strlen(host);

	if (r->freeing || (q = calloc(1, sizeof(*q))) == NULL)
		return NULL;
	q->r = r;
	q->cb = cb;
	q->arg = arg;
	q->port = port;
	q->owned = 1;
	q->next = r->queries;
	if (r->queries)
		r->queries->prev = q;
	r->queries = q;
	ev_timer_init(&q->timer, query_timer_cb, r->timeout, 0.);
	q->timer.data = q;

	if (query_literal(q, host)) {
		query_finish(q, RESOLVER_OK, NULL);
		return q;
	}
	if (len == 0 || len > RESOLVER_NAME_MAX) {
		query_finish(q, RESOLVER_EINVAL, "invalid host name");
		return q;
	}
	ev_timer_start(r->loop, &q->timer);	/* the deadline */
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	q->in_ares = 1;
	/* May call query_ares_cb before returning (hosts file): that only
	 * records the result and arms the 0 s timer. */
	ares_getaddrinfo(r->ch, host, NULL, &hints, query_ares_cb, q);
	resolver_update_timer(r);
	return q;
}

void
resolver_cancel(struct resolver_query *q)
{
	if (q == NULL || !q->owned)
		return;
	q->owned = 0;
	if (q->r != NULL)
		ev_timer_stop(q->r->loop, &q->timer);
	query_release(q);
}

struct resolver *
resolver_new(struct ev_loop *loop, const char *servers_csv, double timeout_s)
{
	struct resolver *r;
	struct ares_options opt;
	char lookups[] = "fb";	/* /etc/hosts, then DNS */
	int per_try;

	if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS)
		return NULL;
	if ((r = calloc(1, sizeof(*r))) == NULL)
		goto fail_lib;
	r->loop = loop;
	r->timeout = timeout_s > 0 ? timeout_s : 10.;
	ev_init(&r->timer, resolver_timer_cb);
	r->timer.data = r;

	/* c-ares doubles the per-try timeout each round: t + 2t = 3t. */
	per_try = (int)(r->timeout * 1000 / 3);
	memset(&opt, 0, sizeof(opt));
	opt.timeout = per_try > 100 ? per_try : 100;
	opt.tries = 2;
	opt.lookups = lookups;
	opt.ndomains = 0;	/* names are absolute: no search list */
	opt.sock_state_cb = resolver_sock_state_cb;
	opt.sock_state_cb_data = r;
	if (ares_init_options(&r->ch, &opt, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
	    ARES_OPT_LOOKUPS | ARES_OPT_DOMAINS | ARES_OPT_SOCK_STATE_CB) !=
	    ARES_SUCCESS)
		goto fail_free;
	/* Before any query exists, so resolv.conf's servers are never used. */
	if (servers_csv != NULL &&
	    ares_set_servers_ports_csv(r->ch, servers_csv) != ARES_SUCCESS)
		goto fail_ch;
	return r;

fail_ch:
	ares_destroy(r->ch);
fail_free:
	free(r);
fail_lib:
	ares_library_cleanup();
	return NULL;
}

void
resolver_free(struct resolver *r)
{
	struct resolver_query *q, *next;
	struct rsock *s;

	if (r == NULL || r->freeing)
		return;
	r->freeing = 1;
	/* Tell every owner, oldest first (the list is newest first). Their
	 * callbacks may cancel or free anything, so rescan after each one. */
	for (;;) {
		struct resolver_query *oldest = NULL;

		for (q = r->queries; q != NULL; q = q->next)
			if (q->owned)
				oldest = q;
		if ((q = oldest) == NULL)
			break;
		q->err = RESOLVER_ECANCELLED;
		q->errmsg = "lookup cancelled";
		q->done = 1;
		query_deliver(q);
	}
	ares_destroy(r->ch);	/* calls back every query it still holds */
	/* Whatever is left (one being delivered right now up the stack, or
	 * one c-ares did not call back) is detached or freed here. */
	for (q = r->queries; q != NULL; q = next) {
		next = q->next;
		q->in_ares = 0;
		if (q->delivering)
			query_unlink(q);
		else
			query_release(q);
	}
	ev_timer_stop(r->loop, &r->timer);
	while ((s = r->socks) != NULL) {
		ev_io_stop(r->loop, &s->io);
		r->socks = s->next;
		free(s);
	}
	free(r);
	ares_library_cleanup();
}
