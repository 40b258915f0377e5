/* test_resolver.c: the c-ares/libev resolver against /etc/hosts, literals
 * and a tiny DNS responder of its own on 127.0.0.1 (never the real DNS). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <unistd.h>

#include <ev.h>

#include "resolver.h"
#include "unit.h"

/* Where nothing listens: refused at once, never the machine's server. */
#define DEAD_DNS "127.0.0.1:1"

static struct ev_loop *loop;

/* --- a DNS responder on 127.0.0.1, in the same loop --------------------- */

static struct {
	int fd;
	ev_io io;
	char csv[32];
	int queries;
	int asked_localhost;
} dns;

static size_t
put16(unsigned char *p, size_t o, unsigned v)
{
	p[o] = (unsigned char)(v >> 8);
	p[o + 1] = (unsigned char)v;
	return o + 2;
}

/* One answer record (name = pointer to the question) of type A or AAAA. */
static size_t
put_rr(unsigned char *p, size_t o, int qtype, const unsigned char *rdata)
{
	size_t rdlen = qtype == 1 ? 4 : 16;

	o = put16(p, o, 0xc00c);
	o = put16(p, o, (unsigned)qtype);
	o = put16(p, o, 1);
	o = put16(p, o, 0);
	o = put16(p, o, 60);
	o = put16(p, o, (unsigned)rdlen);
	memcpy(p + o, rdata, rdlen);
	return o + rdlen;
}

/*
 * Names it knows: a.test (one A, one AAAA), multi.test (17 A, 17 AAAA:
 * still under 512 octets, else c-ares would retry over TCP),
 * v4only.test (A only, empty AAAA), silent.test (never answered);
 * anything else is NXDOMAIN.
 */
static void
dns_read_cb(struct ev_loop *l, ev_io *w, int revents)
{
	unsigned char q[512], a[1500];
	struct sockaddr_storage from;
	socklen_t flen = sizeof(from);
	char name[256];
	size_t o = 12, n = 0, qend;
	ssize_t len = recvfrom(dns.fd, q, sizeof(q), 0, (struct sockaddr *)&from, &flen);
	int qtype, i, count = 0, rcode = 0;

	if (len < 17)
		return;
	dns.queries++;
	while (o < (size_t)len && q[o] != 0 && n + q[o] + 1 < sizeof(name)) {
		if (n)
			name[n++] = '.';
		memcpy(name + n, q + o + 1, q[o]);
		n += q[o];
		o += (size_t)q[o] + 1;
	}
	name[n] = '\0';
	if (strncasecmp(name, "localhost", 9) == 0)
		dns.asked_localhost = 1;
	if (o + 5 > (size_t)len)
		return;
	qtype = q[o + 1] << 8 | q[o + 2];
	qend = o + 5;
	if (strcasecmp(name, "silent.test") == 0)
		return;

	memcpy(a, q, qend);
	a[2] = 0x84 | (q[2] & 1);	/* QR, AA, RD as asked */
	a[3] = 0x80;			/* RA */
	o = qend;
	if (strcasecmp(name, "a.test") == 0) {
		static const unsigned char v4[4] = { 192, 0, 2, 10 };
		unsigned char v6[16] = { 0x20, 0x01, 0x0d, 0xb8 };
		v6[15] = 0x10;
		o = put_rr(a, o, qtype, qtype == 1 ? v4 : v6);
		count = 1;
	} else if (strcasecmp(name, "multi.test") == 0) {
		for (i = 1; i <= 17; i++) {
			unsigned char v4[4] = { 198, 51, 100, 0 };
			unsigned char v6[16] = { 0x20, 0x01, 0x0d, 0xb8, 0, 0x64 };
			v4[3] = (unsigned char)i;
			v6[15] = (unsigned char)i;
			o = put_rr(a, o, qtype, qtype == 1 ? v4 : v6);
		}
		count = 17;
	} else if (strcasecmp(name, "v4only.test") == 0) {
		static const unsigned char v4[4] = { 203, 0, 113, 5 };
		if (qtype == 1) {
			o = put_rr(a, o, qtype, v4);
			count = 1;
		}
	} else
		rcode = 3;	/* NXDOMAIN */
	if (qtype != 1 && qtype != 28) {
		o = qend;
		count = 0;
	}
	a[3] |= (unsigned char)rcode;
	put16(a, 6, (unsigned)count);
	put16(a, 8, 0);
	put16(a, 10, 0);
	sendto(dns.fd, a, o, 0, (struct sockaddr *)&from, flen);
}

static int
dns_start(void)
{
	struct sockaddr_in sin;
	socklen_t slen = sizeof(sin);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if ((dns.fd = socket(AF_INET, SOCK_DGRAM, 0)) == -1 ||
	    bind(dns.fd, (struct sockaddr *)&sin, sizeof(sin)) == -1 ||
	    getsockname(dns.fd, (struct sockaddr *)&sin, &slen) == -1)
		return -1;
	snprintf(dns.csv, sizeof(dns.csv), "127.0.0.1:%u", ntohs(sin.sin_port));
	ev_io_init(&dns.io, dns_read_cb, dns.fd, EV_READ);
	ev_io_start(loop, &dns.io);
	return 0;
}

static void
dns_stop(void)
{
	ev_io_stop(loop, &dns.io);
	close(dns.fd);
}

/* --- what a callback saw ------------------------------------------------- */

struct result {
	int calls;
	int err;
	char errmsg[128];
	size_t naddrs;
	struct sockaddr_storage addrs[RESOLVER_MAX_ADDRS];
	int sync_guard;		/* set while resolver_lookup runs */
	int was_sync;
};

static int lookups_in_progress;

static void
record_cb(void *arg, int err, const char *errmsg,
    const struct sockaddr_storage *addrs, size_t naddrs)
{
	struct result *res = arg;

	res->calls++;
	res->was_sync |= lookups_in_progress;
	res->err = err;
	snprintf(res->errmsg, sizeof(res->errmsg), "%s", errmsg ? errmsg : "");
	res->naddrs = naddrs;
	if (naddrs > RESOLVER_MAX_ADDRS)
		naddrs = RESOLVER_MAX_ADDRS;
	if (addrs != NULL)
		memcpy(res->addrs, addrs, naddrs * sizeof(*addrs));
}

static struct resolver_query *
lookup(struct resolver *r, const char *host, uint16_t port, struct result *res)
{
	struct resolver_query *q;

	lookups_in_progress = 1;
	q = resolver_lookup(r, host, port, record_cb, res);
	lookups_in_progress = 0;
	return q;
}

/* Run the loop until *count reaches want or max_s pass; returns seconds. */
static int guard_fired;

static void
guard_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	guard_fired = 1;
}

static double
run_until(const int *count, int want, double max_s)
{
	ev_timer guard;
	double t0;

	ev_now_update(loop);
	t0 = ev_now(loop);
	guard_fired = 0;
	ev_timer_init(&guard, guard_cb, max_s, 0.);
	ev_timer_start(loop, &guard);
	while (*count < want && !guard_fired)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &guard);
	ev_now_update(loop);
	return ev_now(loop) - t0;
}

static int all_done;

static void
count_cb(void *arg, int err, const char *errmsg,
    const struct sockaddr_storage *addrs, size_t naddrs)
{
	record_cb(arg, err, errmsg, addrs, naddrs);
	all_done++;
}

/* "a.b.c.d:port" / "[v6]:port" of one result, for CHECK_STR. */
static const char *
fmt(const struct sockaddr_storage *ss)
{
	static char buf[4][64];
	static int next;
	char *b = buf[next++ % 4], ip[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(b, 64, "%s:%u", ip, ntohs(s4->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		snprintf(b, 64, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else
		snprintf(b, 64, "family %d", ss->ss_family);
	return b;
}

/* --- tests --------------------------------------------------------------- */

static void
test_bad_servers(void)
{
	CHECK(resolver_new(loop, "not an address", 2.) == NULL);
}

static void
test_literals(void)
{
	struct resolver *r = resolver_new(loop, dns.csv, 2.);
	struct result v4, v6, mapped;
	int before = dns.queries;

	memset(&v4, 0, sizeof(v4));
	memset(&v6, 0, sizeof(v6));
	memset(&mapped, 0, sizeof(mapped));
	CHECK(r != NULL);
	if (r == NULL)
		return;
	CHECK(lookup(r, "192.0.2.1", 110, &v4) != NULL);
	CHECK(lookup(r, "2001:DB8::1", 995, &v6) != NULL);
	CHECK(lookup(r, "::ffff:127.0.0.1", 1, &mapped) != NULL);
	/* Never from inside resolver_lookup. */
	CHECK_INT(v4.calls + v6.calls + mapped.calls, 0);
	run_until(&mapped.calls, 1, 2.);
	run_until(&v6.calls, 1, 2.);
	run_until(&v4.calls, 1, 2.);
	CHECK_INT(v4.calls, 1);
	CHECK_INT(v4.err, 0);
	CHECK_INT(v4.naddrs, 1);
	CHECK_STR(fmt(&v4.addrs[0]), "192.0.2.1:110");
	CHECK_INT(v6.calls, 1);
	CHECK_INT(v6.naddrs, 1);
	CHECK_STR(fmt(&v6.addrs[0]), "[2001:db8::1]:995");
	CHECK_INT(mapped.naddrs, 1);
	CHECK_STR(fmt(&mapped.addrs[0]), "[::ffff:127.0.0.1]:1");
	CHECK_INT(v4.was_sync | v6.was_sync | mapped.was_sync, 0);
	CHECK_INT(dns.queries, before);	/* no DNS traffic for literals */
	resolver_free(r);
}

static void
test_localhost_from_hosts(void)
{
	struct resolver *r = resolver_new(loop, DEAD_DNS, 2.);
	struct result res;
	size_t i;
	int found = 0;

	memset(&res, 0, sizeof(res));
	CHECK(r != NULL);
	if (r == NULL)
		return;
	CHECK(lookup(r, "localhost", 1110, &res) != NULL);
	CHECK_INT(res.calls, 0);
	CHECK(run_until(&res.calls, 1, 3.) < 2.);
	CHECK_INT(res.calls, 1);
	CHECK_INT(res.was_sync, 0);
	CHECK_INT(res.err, 0);
	CHECK(res.naddrs >= 1);
	for (i = 0; i < res.naddrs; i++)
		if (strcmp(fmt(&res.addrs[i]), "127.0.0.1:1110") == 0)
			found = 1;
	CHECK(found);
	/* Case does not matter to the hosts file. */
	memset(&res, 0, sizeof(res));
	CHECK(lookup(r, "LocalHost", 7, &res) != NULL);
	run_until(&res.calls, 1, 3.);
	CHECK_INT(res.err, 0);
	CHECK(res.naddrs >= 1);
	resolver_free(r);
}

static void
test_unknown_name_fails_fast(void)
{
	struct resolver *r = resolver_new(loop, DEAD_DNS, 2.);
	struct result res;
	double t;

	memset(&res, 0, sizeof(res));
	CHECK(r != NULL);
	if (r == NULL)
		return;
	CHECK(lookup(r, "no-such-host.invalid", 110, &res) != NULL);
	t = run_until(&res.calls, 1, 5.);
	CHECK_INT(res.calls, 1);
	CHECK(t < 3.);
	CHECK(res.err != 0);
	CHECK(res.errmsg[0] != '\0');
	CHECK_INT(res.naddrs, 0);
	fprintf(stderr, "dead server: err %d \"%s\" after %.3f s\n", res.err,
	    res.errmsg, t);
	resolver_free(r);
}

static void
test_real_answers(void)
{
	struct resolver *r = resolver_new(loop, dns.csv, 2.);
	struct result a, multi, v4only, nx;
	size_t i;

	memset(&a, 0, sizeof(a));
	memset(&multi, 0, sizeof(multi));
	memset(&v4only, 0, sizeof(v4only));
	memset(&nx, 0, sizeof(nx));
	CHECK(r != NULL);
	if (r == NULL)
		return;
	lookup(r, "a.test", 110, &a);
	lookup(r, "multi.test", 995, &multi);
	lookup(r, "v4only.test", 1110, &v4only);
	lookup(r, "nx.test", 110, &nx);
	run_until(&a.calls, 1, 3.);
	run_until(&multi.calls, 1, 3.);
	run_until(&v4only.calls, 1, 3.);
	run_until(&nx.calls, 1, 3.);

	CHECK_INT(a.calls, 1);
	CHECK_INT(a.err, 0);
	CHECK_INT(a.naddrs, 2);
	CHECK(a.addrs[0].ss_family != a.addrs[1].ss_family);
	for (i = 0; i < a.naddrs; i++)
		CHECK(strcmp(fmt(&a.addrs[i]), "192.0.2.10:110") == 0 ||
		    strcmp(fmt(&a.addrs[i]), "[2001:db8::10]:110") == 0);

	/* 34 addresses: 16 kept, families alternating, each in order. */
	CHECK_INT(multi.err, 0);
	CHECK_INT(multi.naddrs, RESOLVER_MAX_ADDRS);
	for (i = 1; i < multi.naddrs; i++)
		CHECK(multi.addrs[i].ss_family != multi.addrs[i - 1].ss_family);
	for (i = 0; i < multi.naddrs; i++) {
		if (multi.addrs[i].ss_family == AF_INET) {
			struct sockaddr_in *s4 = (struct sockaddr_in *)&multi.addrs[i];
			CHECK_INT(ntohs(s4->sin_port), 995);
			CHECK_INT(((unsigned char *)&s4->sin_addr)[0], 198);
		} else {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&multi.addrs[i];
			CHECK_INT(ntohs(s6->sin6_port), 995);
			CHECK_INT(s6->sin6_addr.s6_addr[5], 0x64);
		}
	}

	CHECK_INT(v4only.err, 0);
	CHECK_INT(v4only.naddrs, 1);
	CHECK_STR(fmt(&v4only.addrs[0]), "203.0.113.5:1110");

	CHECK_INT(nx.calls, 1);
	CHECK_INT(nx.err, RESOLVER_ENOTFOUND);
	CHECK_STR(nx.errmsg, "host not found");
	CHECK_INT(nx.naddrs, 0);
	CHECK_INT(a.was_sync | multi.was_sync | v4only.was_sync | nx.was_sync, 0);
	resolver_free(r);
}

static void
test_hosts_file_before_dns(void)
{
	struct resolver *r = resolver_new(loop, dns.csv, 2.);
	struct result res;

	memset(&res, 0, sizeof(res));
	CHECK(r != NULL);
	if (r == NULL)
		return;
	dns.asked_localhost = 0;
	lookup(r, "localhost", 110, &res);
	run_until(&res.calls, 1, 3.);
	CHECK_INT(res.err, 0);
	CHECK_INT(dns.asked_localhost, 0);
	resolver_free(r);
}

static void
test_deadline(void)
{
	struct resolver *r = resolver_new(loop, dns.csv, 0.5);
	struct result res;
	double t;

	memset(&res, 0, sizeof(res));
	CHECK(r != NULL);
	if (r == NULL)
		return;
	lookup(r, "silent.test", 110, &res);
	t = run_until(&res.calls, 1, 5.);
	CHECK_INT(res.calls, 1);
	CHECK_INT(res.err, RESOLVER_ETEMP);
	CHECK(strstr(res.errmsg, "timed out") != NULL);
	CHECK(t >= 0.4 && t < 1.5);
	/* c-ares still holds the query: freeing now must not call back. */
	resolver_free(r);
	CHECK_INT(res.calls, 1);
}

static void
test_invalid_names(void)
{
	struct resolver *r = resolver_new(loop, dns.csv, 2.);
	struct result empty, longname, hostile;
	char big[301];

	memset(&empty, 0, sizeof(empty));
	memset(&longname, 0, sizeof(longname));
	memset(&hostile, 0, sizeof(hostile));
	memset(big, 'a', 300);
	big[300] = '\0';
	CHECK(r != NULL);
	if (r == NULL)
		return;
	CHECK(lookup(r, "", 110, &empty) != NULL);
	CHECK(lookup(r, big, 110, &longname) != NULL);
	CHECK(lookup(r, "%n%s%x.test", 110, &hostile) != NULL);
	CHECK_INT(empty.calls + longname.calls, 0);
	run_until(&empty.calls, 1, 2.);
	run_until(&longname.calls, 1, 2.);
	run_until(&hostile.calls, 1, 3.);
	CHECK_INT(empty.err, RESOLVER_EINVAL);
	CHECK_INT(longname.err, RESOLVER_EINVAL);
	CHECK_STR(longname.errmsg, "invalid host name");
	CHECK_INT(hostile.calls, 1);
	CHECK(hostile.err != 0);
	CHECK_INT(empty.was_sync | longname.was_sync | hostile.was_sync, 0);
	resolver_free(r);
}

static void
test_cancel(void)
{
	struct resolver *r = resolver_new(loop, dns.csv, 1.);
	struct result lit, hosts, slow, nx, done;
	struct resolver_query *q;

	memset(&lit, 0, sizeof(lit));
	memset(&hosts, 0, sizeof(hosts));
	memset(&slow, 0, sizeof(slow));
	memset(&nx, 0, sizeof(nx));
	memset(&done, 0, sizeof(done));
	CHECK(r != NULL);
	if (r == NULL)
		return;
	/* Finished internally but not delivered yet. */
	resolver_cancel(lookup(r, "127.0.0.1", 110, &lit));
	resolver_cancel(lookup(r, "localhost", 110, &hosts));
	/* Still inside c-ares: an unanswered one and an answered one. */
	resolver_cancel(lookup(r, "silent.test", 110, &slow));
	q = lookup(r, "nx.test", 110, &nx);
	resolver_cancel(NULL);
	lookup(r, "a.test", 110, &done);
	resolver_cancel(q);
	run_until(&done.calls, 1, 3.);
	CHECK_INT(done.calls, 1);
	CHECK_INT(done.err, 0);
	/* Past the deadline of the cancelled silent lookup, too. */
	run_until(&guard_fired, 1, 1.3);
	CHECK_INT(lit.calls + hosts.calls + slow.calls + nx.calls, 0);
	resolver_free(r);
	CHECK_INT(lit.calls + hosts.calls + slow.calls + nx.calls, 0);
}

/* A session whose callback cancels its sibling lookup and frees itself. */
struct session {
	struct resolver_query *other;
	int *freed;
	int *sibling_calls;
};

static void
session_cb(void *arg, int err, const char *errmsg,
    const struct sockaddr_storage *addrs, size_t naddrs)
{
	struct session *s = arg;

	resolver_cancel(s->other);
	(*s->freed)++;
	free(s);
}

static void
sibling_cb(void *arg, int err, const char *errmsg,
    const struct sockaddr_storage *addrs, size_t naddrs)
{
	struct session *s = arg;

	(*s->sibling_calls)++;
}

static void
test_callback_cancels_and_frees(void)
{
	struct resolver *r = resolver_new(loop, dns.csv, 1.);
	struct session *s1 = calloc(1, sizeof(*s1));
	struct session *s2 = calloc(1, sizeof(*s2));
	struct session sib;
	int freed = 0, sibling_calls = 0;
	struct resolver_query *q2;

	CHECK(r != NULL && s1 != NULL && s2 != NULL);
	if (r == NULL || s1 == NULL || s2 == NULL)
		return;
	s1->freed = s2->freed = &freed;
	sib.sibling_calls = &sibling_calls;
	/* s1 (a literal, answered first) cancels s2's lookup, which has also
	 * finished (hosts file) and waits for delivery in the same round. */
	CHECK(resolver_lookup(r, "192.0.2.1", 110, session_cb, s1) != NULL);
	q2 = resolver_lookup(r, "localhost", 110, session_cb, s2);
	s1->other = q2;
	/* s2 would cancel an unanswered DNS lookup; it never runs. */
	s2->other = resolver_lookup(r, "silent.test", 110, sibling_cb, &sib);
	run_until(&freed, 1, 2.);
	run_until(&freed, 2, 0.3);
	CHECK_INT(freed, 1);
	free(s2);	/* its callback was cancelled, so it is ours to free */
	resolver_free(r);	/* the silent lookup gets ECANCELLED */
	CHECK_INT(sibling_calls, 1);
}

static void
test_many_concurrent(void)
{
	enum { N = 300 };
	struct resolver *r = resolver_new(loop, dns.csv, 2.);
	struct result *res = calloc(N, sizeof(*res));
	static const char *const names[] = {
		"a.test", "nx.test", "localhost", "198.51.100.9", "[bad", "::1",
		"multi.test", "v4only.test",
	};
	int i, ok = 1;

	CHECK(r != NULL && res != NULL);
	if (r == NULL || res == NULL)
		goto done;
	all_done = 0;
	for (i = 0; i < N; i++)
		CHECK(resolver_lookup(r, names[i % 8], (uint16_t)(1000 + i),
		    count_cb, &res[i]) != NULL);
	CHECK(run_until(&all_done, N, 10.) < 5.);
	CHECK_INT(all_done, N);
	for (i = 0; i < N; i++) {
		const char *name = names[i % 8];
		int want_err = strcmp(name, "nx.test") == 0 ||
		    strcmp(name, "[bad") == 0;

		if (res[i].calls != 1 || (res[i].err != 0) != want_err ||
		    (!want_err && res[i].naddrs == 0))
			ok = 0;
		if (!want_err && res[i].naddrs > 0) {
			const struct sockaddr_in *s4 =
			    (const struct sockaddr_in *)&res[i].addrs[0];
			if (ntohs(s4->sin_port) != 1000 + i)	/* same offset in v6 */
				ok = 0;
		}
	}
	CHECK(ok);
done:
	resolver_free(r);
	free(res);
}

/* resolver_free: pending owners hear ECANCELLED before it returns. */
static struct resolver *free_r;
static struct resolver_query *free_victim;
static int free_cbs, free_lookup_null;

static void
free_cb(void *arg, int err, const char *errmsg,
    const struct sockaddr_storage *addrs, size_t naddrs)
{
	struct result *res = arg;

	record_cb(arg, err, errmsg, addrs, naddrs);
	free_cbs++;
	if (res->sync_guard == 1) {	/* the first one cancels another */
		resolver_cancel(free_victim);
		free_lookup_null = resolver_lookup(free_r, "a.test", 1, free_cb,
		    res) == NULL;
	}
}

static void
test_free_with_pending(void)
{
	struct result res[4];
	int i;

	memset(res, 0, sizeof(res));
	free_cbs = free_lookup_null = 0;
	free_r = resolver_new(loop, dns.csv, 2.);
	CHECK(free_r != NULL);
	if (free_r == NULL)
		return;
	res[0].sync_guard = 1;
	resolver_lookup(free_r, "silent.test", 110, free_cb, &res[0]);
	resolver_lookup(free_r, "127.0.0.1", 110, free_cb, &res[1]);
	resolver_lookup(free_r, "silent.test", 110, free_cb, &res[2]);
	free_victim = resolver_lookup(free_r, "silent.test", 110, free_cb, &res[3]);
	/* Let the queries reach the responder, but not the deadline. */
	ev_run(loop, EVRUN_NOWAIT);
	resolver_free(free_r);
	/* Everyone but the victim heard back exactly once, oldest first. */
	for (i = 0; i < 3; i++)
		CHECK_INT(res[i].calls, 1);
	CHECK_INT(res[3].calls, 0);
	CHECK_INT(free_cbs, 3);
	CHECK_INT(free_lookup_null, 1);
	CHECK_INT(res[0].err, RESOLVER_ECANCELLED);
	CHECK_INT(res[2].err, RESOLVER_ECANCELLED);
	CHECK(res[1].err == RESOLVER_ECANCELLED || res[1].err == 0);
}

/* resolver_free from inside a callback of its own. */
static struct resolver *inner_r;
static int inner_calls;

static void
free_inside_cb(void *arg, int err, const char *errmsg,
    const struct sockaddr_storage *addrs, size_t naddrs)
{
	inner_calls++;
	if (inner_r != NULL) {
		struct resolver *r = inner_r;
		inner_r = NULL;
		resolver_free(r);
	}
}

static void
test_free_inside_callback(void)
{
	inner_calls = 0;
	inner_r = resolver_new(loop, dns.csv, 0.3);
	CHECK(inner_r != NULL);
	if (inner_r == NULL)
		return;
	/* The deadline fires while c-ares still holds the query. */
	resolver_lookup(inner_r, "silent.test", 110, free_inside_cb, NULL);
	resolver_lookup(inner_r, "silent.test", 110, free_inside_cb, NULL);
	run_until(&inner_calls, 2, 2.);
	CHECK_INT(inner_calls, 2);	/* the second one: ECANCELLED */
	CHECK(inner_r == NULL);
}

int
main(void)
{
	loop = ev_default_loop(0);
	if (dns_start() == -1) {
		perror("dns responder");
		return 1;
	}
	RUN(test_bad_servers);
	RUN(test_literals);
	RUN(test_localhost_from_hosts);
	RUN(test_unknown_name_fails_fast);
	RUN(test_real_answers);
	RUN(test_hosts_file_before_dns);
	RUN(test_deadline);
	RUN(test_invalid_names);
	RUN(test_cancel);
	RUN(test_callback_cancels_and_frees);
	RUN(test_many_concurrent);
	RUN(test_free_with_pending);
	RUN(test_free_inside_callback);
	dns_stop();
	ev_loop_destroy(loop);
	return UNIT_DONE();
}
