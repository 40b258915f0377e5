/* fuzz_session.c: whole sessions through the daemon's real code (proxy,
 * session, retr, filter, conn), driven by a script over socketpairs. */
/*
 * As Dovecot's fuzz-smtp-server: the input is a script. One proxy per input,
 * up to two clients on socketpairs, a fake upstream per session (a
 * socketpair handed out by a replacement of upstream_start(), the only
 * seam), and a fake filter on a UNIX socket that answers the handshake
 * itself and whatever the script says to each request.
 *
 * Input: two octets of configuration (config_for()), then operations:
 *
 *   op = octet & 0x0f, who = (octet >> 4) & 1 (client 0 or 1), x = octet >> 5
 *   0  client sends n octets, n = next octet + 256 * x
 *   1  upstream sends n octets, n as above
 *   2  upstream sends a pattern (length octet, octets) count times
 *      (count: two octets): big messages, budgets and --max-size
 *   3  filter: answer a request (see filter_op)
 *   4  x: 0 client SHUT_WR, 1 client close, 2 upstream SHUT_WR, 3 upstream
 *      close, 4 filter close, 5 refuse the next upstream connection,
 *      6 stop reading the client's output, 7 read it again
 *   5  time passes (x: 50 ms, 0.3, 1.1, 5, 31, 121, 601 or 3601 s), so
 *      that every timer of the daemon fires when it is due
 *   6  client `who` connects if it is not connected (x odd: with implicit
 *      TLS, when a certificate is configured)
 *   7  x odd: the status line (SIGUSR1); x even: graceful shutdown
 *      (cleanup(0), as SIGTERM)
 *   other: the event loop just runs
 *
 * Beyond "no crash, no leak, no undefined behaviour", each input checks:
 * - what reaches the upstream is CRLF lines, no NUL or bare CR, at most the
 *   AUTH limit long (until STLS: then TLS records follow);
 * - no DELE reaches the upstream beyond the DELE lines the client sent,
 *   and no QUIT after a DELE on one connection unless the client sent QUIT
 *   (mail is deleted only by DELE + QUIT of the client);
 * - a password given in PASS never appears in the log;
 * - after shutdown: no session, nothing held against the budget, no
 *   budget waiter, and not one file descriptor more than before.
 */
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "fuzz.h"

/* The real upstream.c, with the two entry points renamed out of the way:
 * sockaddr_format() and the rest stay real. */
#define upstream_start real_upstream_start
#define upstream_abort real_upstream_abort
#include "../../daemon/upstream.c"
#undef upstream_start
#undef upstream_abort

/* The real tls.c too: building OpenSSL contexts costs milliseconds, so one
 * set is built and each proxy takes references to it. */
#define tls_init real_tls_init
#include "../../daemon/tls.c"
#undef tls_init

#include "base64.h"
#include "config.h"
#include "filter.h"
#include "fp.h"
#include "log.h"
#include "proxy.h"
#include "session.h"

#define SECRET		"Pw-s3cr3t"
#define MAX_REQS	32
#define AUTH_LINE_MAX	(8192 + 2)

/* Incremental line reader for one direction of a stream. */
struct lines {
	char head[8];		/* first octets of the current line */
	size_t len;		/* octets of the current line so far */
	int bad;		/* NUL or bare CR in it */
	int prev_cr;
};

struct client {
	int open;
	int fd;			/* our end */
	int read_off;		/* not draining its output (backpressure) */
	struct session *s;	/* while it lives; only compared, never used
				 * after the session list lost it */
	struct lines sent;	/* what the client sent */
	int dele, quit;		/* DELE and QUIT lines it sent */
	int secret_tainted;	/* SECRET sent outside a PASS line */
	char linebuf[AUTH_LINE_MAX + 1];	/* the current client line */
	size_t linelen;
	int linelong;		/* longer than linebuf */

	/* Its upstream. */
	int ufd;
	struct lines up;	/* what reached the upstream, this connection */
	int up_dele;		/* DELE lines seen on this connection */
	int up_dele_all;	/* on all of this client's connections */
	int up_stls;		/* STLS sent: binary from here on */
	int refuse_next;
};

static struct {
	struct ev_loop *loop;
	int flisten;
	char fpath[108];
	char fspec[120];		/* "unix:" fpath, for --filter */
	int logfd;
	int fd_base;
	struct config *cfgs[65536];	/* by configuration, parsed once */
	char qdir[64];			/* --quarantine, emptied per input */
	char tdir[64], cert[96], key[96];	/* --tls-cert, --tls-key */

	struct proxy *px;
	unsigned char conf, conf2;
	struct client c[2];
	int opening;			/* client_open() in progress: its index */
	int client_dele, client_quit;	/* lines sent, all clients */
	int up_dele_total;
	size_t big_total;		/* octets of op 2, this input */
	/* For FUZZ_SESSION_VERBOSE: how deep an input got. */
	size_t client_got, up_got;
	int requests, verdicts, up_lines;
	int upstream_tainted;		/* SECRET came from a server/filter */
	int verbose;			/* FUZZ_SESSION_VERBOSE is set */

	/* A pending fake connect: delivered from the loop, never from
	 * inside upstream_start(). */
	struct upstream_connect *pend[2];
	int pend_fd[2];
	ev_idle connect_w;

	int ffd;
	struct fp_reader frd;
	int frd_live;
	struct fp_hello hello_seen;
	uint64_t reqs[MAX_REQS];
	int nreqs;
} H;

/* --- time travel -------------------------------------------------------------
 * libev reads CLOCK_MONOTONIC through glibc's clock_gettime(); this
 * definition (it overrides the sanitizers' weak interceptor) adds a skew the
 * script moves forward, so every timer of the daemon (idle, upstream,
 * linger, filter deadlines, hello watchdog, reconnect backoff, ping, pong,
 * breaker, grace) fires in its order without anyone sleeping. The skew only
 * grows: monotonic time never goes back. CLOCK_REALTIME is left alone:
 * libFuzzer measures its timeouts with it. */
static int64_t skew_ns;

int
clock_gettime(clockid_t id, struct timespec *ts)
{
	static int (*real)(clockid_t, struct timespec *);

	if (real == NULL)
		real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT,
		    "clock_gettime");
	int r = real(id, ts);
	if (r == 0 && skew_ns != 0 && (id == CLOCK_MONOTONIC ||
	    id == CLOCK_MONOTONIC_COARSE || id == CLOCK_MONOTONIC_RAW ||
	    id == CLOCK_BOOTTIME)) {
		int64_t ns = (int64_t)ts->tv_nsec + skew_ns % 1000000000;
		ts->tv_sec += skew_ns / 1000000000 + ns / 1000000000;
		ts->tv_nsec = ns % 1000000000;
	}
	return r;
}

/* --- the seam: upstream_start / upstream_abort --------------------------- */

static int
client_of_session(const void *arg)
{
	for (int i = 0; i < 2; i++)
		if (H.c[i].open && H.c[i].s == arg)
			return i;
	/* Fixed mode connects from inside proxy_accept(). */
	if (H.opening >= 0) {
		H.c[H.opening].s = (struct session *)arg;
		return H.opening;
	}
	return -1;
}

static void
connect_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	ev_idle_stop(loop, w);
	for (int i = 0; i < 2; i++) {
		struct upstream_connect *uc = H.pend[i];
		if (uc == NULL)
			continue;
		int fd = H.pend_fd[i];
		H.pend[i] = NULL;
		H.pend_fd[i] = -1;
		uc->active = 0;
		if (fd < 0) {
			snprintf(uc->err, sizeof(uc->err), "[SYS/TEMP] cannot "
			    "connect to %s:%u: Connection refused", uc->rt->host,
			    uc->rt->port);
			uc->cb(uc->arg, -1, uc->err);
		} else {
			uc->cb(uc->arg, fd, NULL);
		}
	}
}

int
upstream_start(struct upstream_connect *uc, struct proxy *px, const char *sid,
    const struct route *rt, int check_policy, upstream_cb cb, void *arg)
{
	int i = client_of_session(arg), sv[2];
	struct sockaddr_in *sin;

	FUZZ_CHECK(i >= 0);
	FUZZ_CHECK(H.pend[i] == NULL);
	upstream_init(uc, px, sid, rt, check_policy, cb, arg);
	/* Loopback or not decides whether a password may go in clear. */
	sin = (struct sockaddr_in *)&uc->connected;
	sin->sin_family = AF_INET;
	sin->sin_port = htons(rt->port);
	sin->sin_addr.s_addr = htonl(H.conf & 0x40 ? 0x7f000001 : 0xc0000201);
	snprintf(uc->peer, sizeof(uc->peer), "fake:%u", rt->port);

	H.pend[i] = uc;
	H.pend_fd[i] = -1;
	if (H.c[i].refuse_next) {
		H.c[i].refuse_next = 0;
	} else {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    0, sv) < 0)
			abort();
		/* The previous connection of this client is over for us. */
		if (H.c[i].ufd >= 0)
			close(H.c[i].ufd);
		H.c[i].ufd = sv[1];
		memset(&H.c[i].up, 0, sizeof(H.c[i].up));
		H.c[i].up_dele = H.c[i].up_stls = 0;	/* up_dele_all stays */
		H.pend_fd[i] = sv[0];
	}
	ev_idle_start(H.loop, &H.connect_w);
	return 0;
}

void
upstream_abort(struct upstream_connect *uc)
{
	for (int i = 0; i < 2; i++) {
		if (H.pend[i] != uc)
			continue;
		if (H.pend_fd[i] >= 0)
			close(H.pend_fd[i]);
		H.pend[i] = NULL;
		H.pend_fd[i] = -1;
	}
	uc->active = 0;
}

int
tls_init(struct tls *t, const struct config *cfg)
{
	static struct tls cache[2];	/* without, with a certificate */
	static int have[2];
	int k = cfg->tls_cert != NULL;

	if (!have[k]) {
		if (real_tls_init(&cache[k], cfg) < 0)
			return -1;
		have[k] = 1;
	}
	*t = cache[k];
	SSL_CTX_up_ref(t->up);
	SSL_CTX_up_ref(t->up_insecure);
	if (t->down != NULL)
		SSL_CTX_up_ref(t->down);
	return 0;
}

/* A throw-away self-signed certificate (P-256) for the client side's STLS
 * and implicit TLS: no key is kept in the repository. */
static void
make_cert(const char *certpath, const char *keypath)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	FILE *f;

	if (key == NULL || x == NULL)
		abort();
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365);
	X509_set_pubkey(x, key);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
	    (const unsigned char *)"fuzz.invalid", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	if (X509_sign(x, key, EVP_sha256()) == 0)
		abort();
	if ((f = fopen(certpath, "w")) == NULL || !PEM_write_X509(f, x))
		abort();
	fclose(f);
	if ((f = fopen(keypath, "w")) == NULL ||
	    !PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL))
		abort();
	fclose(f);
	X509_free(x);
	EVP_PKEY_free(key);
}

/* --- checks on the streams ------------------------------------------------ */

static int
head_is(const struct lines *l, const char *kw)
{
	size_t n = strlen(kw);

	if (l->len < n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (toupper((unsigned char)l->head[i]) != kw[i])
			return 0;
	/* the keyword ends there */
	return l->len == n || l->head[n] == ' ' || l->head[n] == '\r' ||
	    l->head[n] == '\n';
}

/* Feed octets; calls back at each LF with the finished line's summary. */
static void
lines_feed(struct lines *l, const char *p, size_t n,
    void (*done)(void *, struct lines *), void *arg)
{
	for (size_t i = 0; i < n; i++) {
		char ch = p[i];
		if (l->len < sizeof(l->head))
			l->head[l->len] = ch;
		l->len++;
		if (ch == '\0' || (l->prev_cr && ch != '\n'))
			l->bad = 1;
		if (ch == '\n') {
			done(arg, l);
			memset(l, 0, sizeof(*l));
			continue;
		}
		l->prev_cr = ch == '\r';
	}
}

static void
client_line_done(void *arg, struct lines *l)
{
	struct client *c = arg;

	if (head_is(l, "DELE")) {
		c->dele++;
		H.client_dele++;
	}
	if (head_is(l, "QUIT")) {
		c->quit++;
		H.client_quit++;
	}
}

/* The password check needs the whole line: PASS lines may carry SECRET,
 * anything else that carries it (a user name, AUTH data naming it as the
 * user) may log it legitimately. */
static void
client_secret_scan(struct client *c, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (c->linelen < sizeof(c->linebuf) - 1)
			c->linebuf[c->linelen++] = p[i];
		else
			c->linelong = 1;
		if (p[i] != '\n')
			continue;
		c->linebuf[c->linelen] = '\0';
		int is_pass = c->linelen >= 5 &&
		    strncasecmp(c->linebuf, "PASS ", 5) == 0;
		/* Not seen whole: assume the worst. */
		if (c->linelong && !is_pass)
			c->secret_tainted = 1;
		c->linelong = 0;
		if (!is_pass && memmem(c->linebuf, c->linelen, SECRET,
		    sizeof(SECRET) - 1) != NULL)
			c->secret_tainted = 1;
		/* AUTH PLAIN data: the user names in it are logged. */
		char *tok = c->linebuf, *save = NULL;
		while ((tok = strtok_r(tok, " \r\n", &save)) != NULL) {
			unsigned char out[AUTH_LINE_MAX];
			ssize_t k = base64_decode(tok, strlen(tok), out, sizeof(out));
			if (k > 0 && memmem(out, (size_t)k, SECRET,
			    sizeof(SECRET) - 1) != NULL)
				c->secret_tainted = 1;
			tok = NULL;
		}
		c->linelen = 0;
	}
}

static void
up_line_done(void *arg, struct lines *l)
{
	struct client *c = arg;

	if (c->up_stls)
		return;
	H.up_lines++;
	FUZZ_CHECK(!l->bad);
	FUZZ_CHECK(l->prev_cr);			/* CRLF */
	FUZZ_CHECK(l->len <= AUTH_LINE_MAX);
	if (head_is(l, "DELE")) {
		c->up_dele++;
		c->up_dele_all++;
		H.up_dele_total++;
		/* Every DELE on this client's server is one it sent. */
		FUZZ_CHECK(c->up_dele_all <= c->dele);
	}
	/* A QUIT commits deletions: only this client may ask for it. */
	if (head_is(l, "QUIT") && c->up_dele > 0)
		FUZZ_CHECK(c->quit > 0);
	if (head_is(l, "STLS"))
		c->up_stls = 1;
}

/* --- the fake filter -------------------------------------------------------- */

static void
filter_send(const void *p, size_t n)
{
	const char *q = p;

	while (H.ffd >= 0 && n > 0) {
		ssize_t w = send(H.ffd, q, n, MSG_NOSIGNAL);
		if (w > 0) {
			q += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EAGAIN) {
			/* The proxy reads its filters from the loop. */
			ev_run(H.loop, EVRUN_NOWAIT);
			continue;
		}
		break;
	}
}

static void
filter_close(void)
{
	if (H.ffd >= 0)
		close(H.ffd);
	H.ffd = -1;
	if (H.frd_live)
		fp_reader_free(&H.frd);
	H.frd_live = 0;
	H.nreqs = 0;
}

static void
filter_msg(const struct fp_msg *m)
{
	struct fp_buf b = { 0 };

	switch (m->type) {
	case FP_MSG_HELLO: {
		struct fp_hello_ack ack = {
			.version = fp_version_choose(&m->hello),
			.filter = FP_STR("fuzz"),
			.commands = FP_CAP_RETR | (H.conf & 0x80 ? FP_CAP_TOP : 0),
			.actions = H.conf2 & 0x80 ? FP_CAP_EDIT_HEADERS :
			    FP_CAPS_ACTIONS,
			.max_message_size = H.conf2 & 0x40 ? 1000 : 0,
			.max_frame = FP_DEFAULT_MAX_FRAME,
			.max_inflight = H.conf & 0x80 ? 1 : 8,
		};
		if (fp_encode_hello_ack(&b, &ack) == 0)
			filter_send(b.data, b.len);
		break;
	}
	case FP_MSG_REQUEST:
		H.requests++;
		if (H.nreqs < MAX_REQS)
			H.reqs[H.nreqs++] = m->request.id;
		break;
	case FP_MSG_CANCEL:
		for (int i = 0; i < H.nreqs; i++)
			if (H.reqs[i] == m->cancel.id) {
				memmove(&H.reqs[i], &H.reqs[i + 1],
				    (size_t)(H.nreqs - i - 1) * sizeof(H.reqs[0]));
				H.nreqs--;
				break;
			}
		break;
	case FP_MSG_PING:
		if (fp_encode_pong(&b, m->ping.id) == 0)
			filter_send(b.data, b.len);
		break;
	default:
		break;
	}
	fp_buf_free(&b);
}

/* Returns 1 if anything moved. */
static int
filter_io(void)
{
	int moved = 0;

	for (;;) {
		int fd = accept4(H.flisten, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			break;
		/* The proxy reconnected: the old connection is dead to it. */
		filter_close();
		H.ffd = fd;
		fp_reader_init(&H.frd, FP_DEFAULT_MAX_FRAME, FP_ROLE_FILTER);
		H.frd_live = 1;
		moved = 1;
	}
	while (H.ffd >= 0) {
		size_t avail;
		char *sp = fp_reader_space(&H.frd, &avail);
		if (sp == NULL)
			abort();
		ssize_t r = recv(H.ffd, sp, avail, 0);
		if (r == 0 || (r < 0 && errno != EAGAIN)) {
			filter_close();
			moved = 1;
			break;
		}
		if (r < 0)
			break;
		moved = 1;
		fp_reader_commit(&H.frd, (size_t)r);
		struct fp_msg m;
		struct fp_err e;
		int k;
		while ((k = fp_reader_next(&H.frd, &m, &e)) == 1)
			filter_msg(&m);
		/* What the proxy sends must decode: it is the codec's peer. */
		FUZZ_CHECK(k == 0);
	}
	return moved;
}

/* --- pumping ---------------------------------------------------------------- */

static int
drain(int fd, struct client *c, int up)
{
	char buf[65536];
	int moved = 0;

	for (;;) {
		ssize_t r = recv(fd, buf, sizeof(buf), 0);
		if (r <= 0)
			break;
		moved = 1;
		if (up && H.verbose) {
			fprintf(stderr, "fuzz_session: to upstream %d: ",
			    (int)(c - H.c));
			for (ssize_t i = 0; i < r; i++)
				fprintf(stderr, isprint((unsigned char)buf[i]) ?
				    "%c" : "\\x%02x", (unsigned char)buf[i]);
			fputc('\n', stderr);
		}
		if (up)
			lines_feed(&c->up, buf, (size_t)r, up_line_done, c);
		*(up ? &H.up_got : &H.client_got) += (size_t)r;
	}
	return moved;
}

static int
harness_io(void)
{
	int moved = filter_io();

	for (int i = 0; i < 2; i++) {
		struct client *c = &H.c[i];
		if (c->open && !c->read_off && c->fd >= 0)
			moved |= drain(c->fd, c, 0);
		if (c->ufd >= 0)
			moved |= drain(c->ufd, c, 1);
	}
	return moved;
}

static void
pump(void)
{
	int quiet = 0;

	for (int round = 0; round < 64 && quiet < 3; round++) {
		ev_run(H.loop, EVRUN_NOWAIT);
		if (harness_io())
			quiet = 0;
		else
			quiet++;
	}
}

/* Write to one of our socket ends; what does not fit after some pumping is
 * dropped (a real peer would just be stuck). */
static void
put(int fd, const char *p, size_t n)
{
	int tries = 0;

	while (fd >= 0 && n > 0 && tries < 8) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno != EAGAIN)
			return;
		tries++;
		pump();
	}
}

/* --- script ------------------------------------------------------------------ */

struct in {
	const uint8_t *p;
	size_t n;
};

static int
get(struct in *in, uint8_t *v)
{
	if (in->n == 0)
		return -1;
	*v = *in->p++;
	in->n--;
	return 0;
}

static size_t
take(struct in *in, size_t want, const uint8_t **p)
{
	if (want > in->n)
		want = in->n;
	*p = in->p;
	in->p += want;
	in->n -= want;
	return want;
}

static struct fp_str
take_str(struct in *in)
{
	uint8_t l = 0;
	const uint8_t *p;

	get(in, &l);
	size_t n = take(in, l, &p);
	return (struct fp_str){ (const char *)p, n };
}

static void
client_open(int i, int tls)
{
	struct client *c = &H.c[i];
	struct sockaddr_storage ss = { 0 };
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	int sv[2];

	if (c->open || H.px->stopping)
		return;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
	    sv) < 0)
		abort();
	memset(c, 0, sizeof(*c));
	c->ufd = -1;
	c->fd = sv[1];
	c->open = 1;
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)(40000 + i));
	sin->sin_addr.s_addr = htonl(H.conf & 0x40 ? 0x7f000001 : 0xc6336401);
	int before = H.px->nsessions;
	H.opening = i;
	/* Implicit TLS (POP3S) only where a certificate is configured, as
	 * config_parse() insists for --listen-tls. */
	proxy_accept(H.px, sv[0], &ss, sizeof(*sin),
	    tls && H.px->cfg->tls_cert != NULL);
	H.opening = -1;
	/* The newest session is at the head of the proxy's list. */
	if (H.px->nsessions > before)
		c->s = H.px->sessions;
}

static void
client_send(struct client *c, const uint8_t *p, size_t n)
{
	if (!c->open || c->fd < 0)
		return;
	lines_feed(&c->sent, (const char *)p, n, client_line_done, c);
	client_secret_scan(c, (const char *)p, n);
	put(c->fd, (const char *)p, n);
}

/* Answer request #k (in order of arrival) as the script says. */
static void
filter_op(struct in *in)
{
	static const char *const codes[] = { FP_E_INTERNAL, FP_E_BUSY,
	    FP_E_TIMEOUT, FP_E_UNKNOWN_ID, "no-such-code" };
	struct fp_buf b = { 0 };
	struct fp_edit edits[4];
	struct fp_verdict v = { 0 };
	uint8_t sub = 0, x = 0;
	const uint8_t *p;

	get(in, &sub);
	int k = (sub >> 3) & 3, act = sub & 7;
	uint64_t id = k < H.nreqs ? H.reqs[k] : 1000 + (uint64_t)k;
	int answered = 1;

	v.id = id;
	switch (act) {
	case 0:
		v.action = FP_ACCEPT;
		break;
	case 1:
		v.action = FP_ACCEPT;
		get(in, &x);
		v.nedits = x % 5;
		for (size_t i = 0; i < v.nedits; i++) {
			uint8_t op = 0, idx = 0;
			get(in, &op);
			get(in, &idx);
			edits[i] = (struct fp_edit){ .op = 1 + op % 3,
			    .name = take_str(in), .value = take_str(in),
			    .index = idx };
		}
		v.edits = edits;
		break;
	case 2: {
		uint8_t hi = 0, lo = 0;
		v.action = FP_REPLACE;
		get(in, &hi);
		get(in, &lo);
		size_t n = take(in, (size_t)hi << 8 | lo, &p);
		v.body = (struct fp_str){ (const char *)p, n };
		break;
	}
	case 3:
		v.action = FP_REJECT;
		get(in, &x);
		if (x & 1)
			v.notice = take_str(in);
		if (x & 2)
			v.quarantine_id = take_str(in);
		if (x & 4)
			v.reason = take_str(in);
		break;
	case 4:
		v.action = FP_TEMPFAIL;
		v.reason = take_str(in);
		break;
	case 5: {
		struct fp_error e = { .has_id = 1, .id = id };
		get(in, &x);
		e.code = fp_str_c(codes[x % 5]);
		e.message = take_str(in);
		fp_encode_error(&b, &e);
		break;
	}
	case 6: {
		uint8_t hi = 0, lo = 0;
		get(in, &hi);
		get(in, &lo);
		size_t n = take(in, (size_t)(hi & 0x0f) << 8 | lo, &p);
		fp_buf_append(&b, p, n);	/* raw octets: garbage frames */
		answered = 0;
		break;
	}
	default:
		get(in, &x);
		answered = 0;
		if (x % 3 == 0)
			fp_encode_drain(&b, NULL);
		else if (x % 3 == 1)
			fp_encode_ping(&b, 77);
		else
			fp_encode_pong(&b, 78);
		break;
	}
	if (v.action != 0 && fp_encode_verdict(&b, &v) < 0) {
		/* An invalid verdict (bad edit): send it anyway, as a broken
		 * filter would, through the raw path: here, just skip. */
		answered = 0;
	}
	if (b.len > 0)
		filter_send(b.data, b.len);
	if (answered && k < H.nreqs) {
		H.verdicts++;
		memmove(&H.reqs[k], &H.reqs[k + 1],
		    (size_t)(H.nreqs - k - 1) * sizeof(H.reqs[0]));
		H.nreqs--;
	}
	fp_buf_free(&b);
}

static void
run_script(struct in *in)
{
	uint8_t o;
	const uint8_t *p;

	while (get(in, &o) == 0) {
		int op = o & 0x0f, who = (o >> 4) & 1, x = o >> 5;
		struct client *c = &H.c[who];
		uint8_t l = 0, hi = 0, lo = 0;

		switch (op) {
		case 0:
		case 1: {
			get(in, &l);
			size_t n = take(in, (size_t)l + 256 * (size_t)x, &p);
			if (op == 0) {
				client_send(c, p, n);
				break;
			}
			/* What a server says may be logged (its -ERR text). */
			if (memmem(p, n, SECRET, sizeof(SECRET) - 1) != NULL)
				H.upstream_tainted = 1;
			if (c->ufd >= 0)
				put(c->ufd, (const char *)p, n);
			break;
		}
		case 2: {
			get(in, &hi);
			get(in, &lo);
			get(in, &l);
			size_t n = take(in, l, &p), count = (size_t)hi << 8 | lo;
			if (n == 0 || c->ufd < 0)
				break;
			if (memmem(p, n, SECRET, sizeof(SECRET) - 1) != NULL)
				H.upstream_tainted = 1;
			if (n * count > (4u << 20))	/* at most 4 MiB */
				count = (4u << 20) / n;
			/* and 16 MiB per input, to stay well inside -timeout */
			if (H.big_total + n * count > (16u << 20))
				break;
			H.big_total += n * count;
			char *big = malloc(n * count + 1);
			for (size_t i = 0; i < count; i++)
				memcpy(big + i * n, p, n);
			put(c->ufd, big, n * count);
			free(big);
			break;
		}
		case 3: {
			const uint8_t *from = in->p;
			filter_op(in);
			/* Whatever a filter says may be logged. */
			if (memmem(from, (size_t)(in->p - from), SECRET,
			    sizeof(SECRET) - 1) != NULL)
				H.upstream_tainted = 1;
			break;
		}
		case 4:
			switch (x) {
			case 0: if (c->fd >= 0) shutdown(c->fd, SHUT_WR); break;
			case 1: if (c->fd >= 0) close(c->fd); c->fd = -1; break;
			case 2: if (c->ufd >= 0) shutdown(c->ufd, SHUT_WR); break;
			case 3: if (c->ufd >= 0) close(c->ufd); c->ufd = -1; break;
			case 4: filter_close(); break;
			case 5: c->refuse_next = 1; break;
			case 6: c->read_off = 1; break;
			default: c->read_off = 0; break;
			}
			break;
		case 5: {
			/* Time passes: 50 ms to an hour, past each of the
			 * daemon's timeouts in turn. */
			static const int64_t ms[8] = { 50, 300, 1100, 5000,
			    31000, 121000, 601000, 3601000 };
			skew_ns += ms[x] * 1000000;
			break;
		}
		case 6:
			client_open(who, x & 1);
			break;
		case 7:
			if (x & 1)
				proxy_status(H.px);	/* as SIGUSR1 */
			else
				proxy_cleanup(H.px, 0);	/* as SIGTERM */
			break;
		default:
			break;
		}
		pump();
	}
}

/* --- set-up ------------------------------------------------------------------ */

static struct config *
config_for(unsigned char conf, unsigned char conf2)
{
	struct config **slot = &H.cfgs[conf | conf2 << 8];
	char *argv[40];
	int argc = 0;

	if (*slot != NULL)
		return *slot;
	argv[argc++] = "pop3proxyd";
	if (conf & 0x01) {
		argv[argc++] = "--upstream";
		argv[argc++] = "pop.example.com:110";
	} else {
		argv[argc++] = "--allow-upstream";
		argv[argc++] = "*:*";
	}
	if (conf & 0x02) {
		argv[argc++] = "--filter";
		argv[argc++] = H.fspec;
	}
	argv[argc++] = "--on-filter-failure";
	argv[argc++] = conf & 0x04 ? "tempfail" : "accept";
	argv[argc++] = "--upstream-tls";
	argv[argc++] = conf2 & 0x20 ? "stls" : conf & 0x08 ? "auto" : "none";
	if (!(conf & 0x08))
		argv[argc++] = "--allow-plaintext-upstream";
	if (conf2 & 0x02) {
		argv[argc++] = "--tls-cert";
		argv[argc++] = H.cert;
		argv[argc++] = "--tls-key";
		argv[argc++] = H.key;
	}
	if (conf2 & 0x01) {
		argv[argc++] = "--quarantine";
		argv[argc++] = H.qdir;
	}
	if (conf2 & 0x04) {
		argv[argc++] = "--filter-timeout";
		argv[argc++] = "2";
	}
	if (conf2 & 0x08) {
		argv[argc++] = "--max-sessions-per-ip";
		argv[argc++] = "1";
	}
	if (conf2 & 0x10)
		argv[argc++] = "--no-unfiltered-header";
	if (conf & 0x10) {
		argv[argc++] = "--max-size";
		argv[argc++] = "4096";
	}
	if (conf & 0x20) {
		argv[argc++] = "--buffer-budget";
		argv[argc++] = "65536";
	}
	if (conf & 0x40)
		argv[argc++] = "--admin-shutdown";
	argv[argc++] = "--log-level";
	argv[argc++] = "debug";
	argv[argc] = NULL;
	struct config *cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL || config_parse(cfg, argc, argv) != 0)
		abort();
	cfg->nlisten = 0;	/* clients come through proxy_accept() */
	return *slot = cfg;
}

/* /tmp/fuzz_session.PID of processes that are gone (a crash skips atexit). */
static void
stale_dirs_remove(void)
{
	static const char *const names[] = { "filter.sock", "cert.pem", "key.pem" };
	DIR *d = opendir("/tmp"), *q;
	struct dirent *e, *f;
	char dir[300], path[600];
	int pid;

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		const char *digits = e->d_name + strlen("fuzz_session.");
		if (strncmp(e->d_name, "fuzz_session.", 13) != 0 || *digits == '\0' ||
		    strspn(digits, "0123456789") != strlen(digits))
			continue;
		pid = atoi(digits);
		if (pid <= 0 || kill(pid, 0) == 0 || errno != ESRCH)
			continue;
		snprintf(dir, sizeof(dir), "/tmp/%s", e->d_name);
		for (size_t i = 0; i < 3; i++) {
			snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
			unlink(path);
		}
		snprintf(dir, sizeof(dir), "/tmp/%s/q", e->d_name);
		if ((q = opendir(dir)) != NULL) {
			while ((f = readdir(q)) != NULL) {
				snprintf(path, sizeof(path), "%s/%s", dir, f->d_name);
				unlink(path);
			}
			closedir(q);
		}
		rmdir(dir);
		snprintf(dir, sizeof(dir), "/tmp/%s", e->d_name);
		rmdir(dir);
	}
	closedir(d);
}

static void
setup_once(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };

	signal(SIGPIPE, SIG_IGN);
	H.loop = ev_default_loop(EVFLAG_AUTO);
	ev_idle_init(&H.connect_w, connect_cb);
	/* Everything of this process under one directory; what crashed
	 * processes left behind goes first. */
	stale_dirs_remove();
	snprintf(H.tdir, sizeof(H.tdir), "/tmp/fuzz_session.%d", (int)getpid());
	if (mkdir(H.tdir, 0700) < 0 && errno != EEXIST)
		abort();
	snprintf(H.fpath, sizeof(H.fpath), "%s/filter.sock", H.tdir);
	snprintf(H.fspec, sizeof(H.fspec), "unix:%s", H.fpath);
	snprintf(H.qdir, sizeof(H.qdir), "%s/q", H.tdir);
	if (mkdir(H.qdir, 0700) < 0 && errno != EEXIST)
		abort();
	snprintf(H.cert, sizeof(H.cert), "%s/cert.pem", H.tdir);
	snprintf(H.key, sizeof(H.key), "%s/key.pem", H.tdir);
	make_cert(H.cert, H.key);
	unlink(H.fpath);
	memcpy(sun.sun_path, H.fpath, strlen(H.fpath) + 1);
	H.flisten = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (H.flisten < 0 || bind(H.flisten, (struct sockaddr *)&sun,
	    sizeof(sun)) < 0 || listen(H.flisten, 16) < 0)
		abort();
	/* Log lines go to memory, read back for the password check. */
	H.logfd = memfd_create("fuzz_session_log", MFD_CLOEXEC);
	if (H.logfd < 0)
		abort();
	log_init("fuzz", 0, LOG_LVL_DEBUG);
	log_set_fd(H.logfd);
	H.ffd = -1;
}

/* Rejected originals the proxy kept: checked, then removed. */
static void
quarantine_empty(int keep_check)
{
	DIR *d = opendir(H.qdir);
	struct dirent *e;
	char path[400];

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", H.qdir, e->d_name);
		/* Only whole files: a temporary name left means a write
		 * was abandoned half way. */
		if (keep_check)
			FUZZ_CHECK(strncmp(e->d_name, ".tmp.", 5) != 0);
		unlink(path);
	}
	closedir(d);
}

static void
cleanup_path(void)
{
	unlink(H.fpath);
	quarantine_empty(0);
	rmdir(H.qdir);
	unlink(H.cert);
	unlink(H.key);
	rmdir(H.tdir);
}

/* What is open beyond the baseline, for the report of a leak. */
static void
fd_report(void)
{
	char path[64], target[256];

	for (int fd = H.fd_base; fd < H.fd_base + 64; fd++) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ssize_t n = readlink(path, target, sizeof(target) - 1);
		if (n < 0)
			continue;
		target[n] = '\0';
		fprintf(stderr, "fuzz_session: fd %d open: %s\n", fd, target);
	}
}

static void
check_log(void)
{
	off_t end = lseek(H.logfd, 0, SEEK_CUR);

	if (end > 0 && !H.c[0].secret_tainted && !H.c[1].secret_tainted &&
	    !H.upstream_tainted) {
		char *m = mmap(NULL, (size_t)end, PROT_READ, MAP_PRIVATE,
		    H.logfd, 0);
		if (m != MAP_FAILED) {
			if (getenv("FUZZ_SESSION_VERBOSE") != NULL)
				fwrite(m, 1, (size_t)end, stderr);
			FUZZ_CHECK(memmem(m, (size_t)end, SECRET,
			    sizeof(SECRET) - 1) == NULL);
			munmap(m, (size_t)end);
		}
	}
	if (ftruncate(H.logfd, 0) < 0 || lseek(H.logfd, 0, SEEK_SET) < 0)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	struct in in = { data, size };

	if (!ready) {
		setup_once();
		H.verbose = getenv("FUZZ_SESSION_VERBOSE") != NULL;
		atexit(cleanup_path);
		ready = 1;
	}
	if (get(&in, &H.conf) < 0 || get(&in, &H.conf2) < 0)
		return 0;
	H.upstream_tainted = 0;
	H.opening = -1;
	/* The lowest free descriptor now: a leak would take it. (libFuzzer
	 * opens descriptors of its own between inputs.) */
	H.fd_base = dup(0);
	close(H.fd_base);
	H.client_dele = H.client_quit = H.up_dele_total = 0;
	H.client_got = H.up_got = H.big_total = 0;
	H.requests = H.verdicts = H.up_lines = 0;
	H.nreqs = 0;
	H.pend[0] = H.pend[1] = NULL;
	H.pend_fd[0] = H.pend_fd[1] = -1;
	memset(H.c, 0, sizeof(H.c));
	H.c[0].fd = H.c[1].fd = H.c[0].ufd = H.c[1].ufd = -1;

	H.px = proxy_new(H.loop, config_for(H.conf, H.conf2));
	FUZZ_CHECK(H.px != NULL);
	if (H.conf & 0x02) {
		H.px->filters = filter_chain_new(H.px);
		FUZZ_CHECK(H.px->filters != NULL);
	}
	pump();
	client_open(0, 0);
	pump();
	run_script(&in);

	/* The clients leave; then a forced shutdown ends what is left. */
	for (int i = 0; i < 2; i++)
		if (H.c[i].fd >= 0) {
			close(H.c[i].fd);
			H.c[i].fd = -1;
		}
	pump();
	proxy_cleanup(H.px, 1);
	pump();
	FUZZ_CHECK(H.px->nsessions == 0);
	FUZZ_CHECK(H.px->sessions == NULL);
	FUZZ_CHECK(H.px->held_bytes == 0);
	FUZZ_CHECK(H.px->bw_head == NULL);
	FUZZ_CHECK(H.pend[0] == NULL && H.pend[1] == NULL);
	proxy_free(H.px);
	H.px = NULL;
	harness_io();		/* the last octets upstream are checked too */

	for (int i = 0; i < 2; i++)
		if (H.c[i].ufd >= 0) {
			close(H.c[i].ufd);
			H.c[i].ufd = -1;
		}
	filter_close();
	for (int fd; (fd = accept(H.flisten, NULL, NULL)) >= 0;)
		close(fd);
	ev_idle_stop(H.loop, &H.connect_w);
	check_log();
	quarantine_empty(1);
	if (getenv("FUZZ_SESSION_VERBOSE") != NULL)
		fprintf(stderr, "fuzz_session: conf 0x%02x: client got %zu octets, "
		    "upstream got %zu in %d lines (DELE %d of %d, client QUIT %d), "
		    "filter: %d requests, %d answered\n", H.conf, H.client_got,
		    H.up_got, H.up_lines, H.up_dele_total, H.client_dele,
		    H.client_quit, H.requests, H.verdicts);

	/* Nothing the proxy opened is left open. */
	int fd = dup(0);
	if (fd != H.fd_base)
		fd_report();
	FUZZ_CHECK(fd == H.fd_base);
	close(fd);
	return 0;
}
