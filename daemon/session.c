/* session.c: the per-client POP3 state machine: the proxy's own dialogue
 * before login, the routed login, then in-order relaying of pipelined
 * commands and their replies. The RETR hold for filters lives in retr.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "base64.h"
#include "filter.h"
#include "log.h"
#include "proxy.h"
#include "retr.h"
#include "session.h"
#include "tls.h"

#define PQ_MAX		4096	/* commands awaiting replies, per session */
#define MAX_ERRORS	10	/* protocol errors in a row before we hang up */
#define MAX_LOGINS	5	/* failed logins before we hang up */
#define LINGER		5.0	/* seconds to flush a goodbye to a slow client */
#define CAPBUF_MAX	16384

/* What the proxy itself offers before login; STLS only with a certificate. */
#define CAPA_PRELOGIN \
    "USER\r\n" \
    "SASL PLAIN\r\n" \
    "PIPELINING\r\n" \
    "TOP\r\n" \
    "UIDL\r\n" \
    "RESP-CODES\r\n" \
    "AUTH-RESP-CODE\r\n" \
    "IMPLEMENTATION pop3proxyd\r\n" \
    ".\r\n"
static const char capa_prelogin[] =
    "+OK Capability list follows\r\n" CAPA_PRELOGIN;
static const char capa_prelogin_stls[] =
    "+OK Capability list follows\r\nSTLS\r\n" CAPA_PRELOGIN;

static void session_client_cb(struct conn *, enum conn_event, void *);
static void session_up_cb(struct conn *, enum conn_event, void *);
static void session_client_input(struct session *);
static void session_update(struct session *);
static void session_login_step(struct session *);
static void session_client_line(struct session *, const char *, size_t);
static void session_uidls_free(struct session *);
static void session_check_eof(struct session *);

static const char *const state_names[] = {
	"AUTH", "SASL", "LOGIN", "WAIT_PASS", "PASS", "FIXED", "TRANSACTION",
	"CLOSING",
};

static void
session_enter(struct session *s, enum session_state st)
{
	if (s->state != st)
		log_debug(s->sid, "state %s -> %s", state_names[s->state],
		    state_names[st]);
	s->state = st;
}

/* --- secrets ----------------------------------------------------------- */

static void
wipe_free(char **p)
{
	if (*p != NULL) {
		explicit_bzero(*p, strlen(*p));
		free(*p);
		*p = NULL;
	}
}

/* --- output to the client ----------------------------------------------- */

void
session_relay_flush(struct session *s)
{
	if (s->span_len > 0) {
		const char *p = s->span_p;
		size_t n = s->span_len;
		s->span_len = 0;
		conn_write(&s->client, p, n);
	}
}

void
session_relay(struct session *s, const char *p, size_t n)
{
	if (s->span_len > 0 && s->span_p + s->span_len == p) {
		s->span_len += n;
		return;
	}
	session_relay_flush(s);
	s->span_p = p;
	s->span_len = n;
}

void
session_client_write(struct session *s, const void *p, size_t n)
{
	session_relay_flush(s);
	conn_write(&s->client, p, n);
}

/* --- the queue of commands awaiting replies ----------------------------- */

static struct pending *
pq_at(struct session *s, uint32_t i)
{
	return &s->pq[(s->pq_head + i) % s->pq_cap];
}

static struct pending *
pq_push(struct session *s, enum pend_kind kind, int multi)
{
	if (s->pq_len == s->pq_cap) {
		uint32_t cap = s->pq_cap ? s->pq_cap * 2 : 8;
		struct pending *n = malloc(cap * sizeof(*n));
		if (n == NULL)
			return NULL;
		for (uint32_t i = 0; i < s->pq_len; i++)
			n[i] = *pq_at(s, i);
		free(s->pq);
		s->pq = n;
		s->pq_head = 0;
		s->pq_cap = cap;
	}
	struct pending *p = &s->pq[(s->pq_head + s->pq_len++) % s->pq_cap];
	memset(p, 0, sizeof(*p));
	p->kind = (uint8_t)kind;
	p->multi = (uint8_t)multi;
	return p;
}

static void
pq_pop(struct session *s)
{
	if (s->pq_sent > 0) {
		s->pq_sent--;
		if (pq_at(s, 0)->kind != P_LOCAL)
			s->up_owed--;
	}
	s->pq_head = (s->pq_head + 1) % s->pq_cap;
	s->pq_len--;
	s->rp_active = 0;
}

static void
pq_clear(struct session *s)
{
	free(s->pq);
	s->pq = NULL;
	s->pq_cap = s->pq_head = s->pq_len = s->pq_sent = s->up_owed = 0;
	s->rp_active = 0;
	buf_free(&s->unsent);
}

/* Replies still owed by the server: sent entries that are not P_LOCAL. */
#define pq_upstream_owed(s) ((s)->up_owed > 0)

/*
 * Send queued commands upstream, in order. A server that did not offer
 * PIPELINING gets one command at a time: the proxy pipelines for it.
 */
static void
pq_flush(struct session *s)
{
	while (s->pq_sent < s->pq_len) {
		struct pending *p = pq_at(s, s->pq_sent);
		if (p->kind != P_LOCAL && p->unsent > 0) {
			if (!s->up_pipelining && pq_upstream_owed(s))
				return;
			conn_write(&s->up, buf_ptr(&s->unsent), p->unsent);
			buf_consume(&s->unsent, p->unsent);
			p->unsent = 0;
		}
		if (p->kind != P_LOCAL)
			s->up_owed++;
		s->pq_sent++;
	}
	if (s->unsent.len == 0)
		buf_shrink(&s->unsent, 0);
}

/* Queue a command for upstream; `line` is sent with CRLF, whatever the
 * client used. In the usual case it goes straight out in one write. */
static struct pending *
session_send(struct session *s, enum pend_kind kind, int multi,
    const char *line, size_t len)
{
	size_t orig = len;

	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	struct pending *p = pq_push(s, kind, multi);
	if (p == NULL)
		return NULL;
	if (s->pq_sent == s->pq_len - 1 && (s->up_pipelining || !s->up_owed)) {
		char tmp[POP3_AUTH_MAX + 64];
		if (orig == len + 2 && line[len] == '\r' && line[len + 1] == '\n') {
			conn_write(&s->up, line, len + 2);	/* as the client sent it */
		} else if (len + 2 <= sizeof(tmp)) {
			memcpy(tmp, line, len);
			memcpy(tmp + len, LIT("\r\n"));
			conn_write(&s->up, tmp, len + 2);
			explicit_bzero(tmp, len);	/* may be a password */
		} else {
			goto queue;
		}
		s->up_owed++;
		s->pq_sent++;
		return p;
	}
queue:
	if (buf_append(&s->unsent, line, len) < 0 ||
	    buf_append(&s->unsent, LIT("\r\n")) < 0) {
		s->pq_len--;
		return NULL;
	}
	p->unsent = (uint32_t)(len + 2);
	pq_flush(s);
	return p;
}

/* The proxy's own reply: at once if nothing is owed to the client before
 * it, else queued so that replies stay in order. */
static void
session_reply(struct session *s, const char *text)
{
	if (s->pq_len == 0) {
		session_client_write(s, text, strlen(text));
		return;
	}
	struct pending *p = pq_push(s, P_LOCAL, 0);
	if (p == NULL) {
		session_end(s, "out of memory", NULL);
		return;
	}
	p->local = text;
	pq_flush(s);
}

static void
session_replyf(struct session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
session_replyf(struct session *s, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	/* Only used where nothing is queued: formatted text is not kept. */
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 3)
		n = sizeof(line) - 3;
	memcpy(line + n, LIT("\r\n"));
	session_client_write(s, line, (size_t)n + 2);
}

/* --- life and death ---------------------------------------------------- */

static void
session_drop_upstream(struct session *s)
{
	session_relay_flush(s);		/* the span points into up.in */
	upstream_abort(&s->uc);
	/* Never QUIT on the client's behalf: QUIT commits DELE. */
	conn_close(&s->up);
	pq_clear(s);
	retr_abort(s);
	buf_free(&s->capbuf);
	ev_timer_stop(s->px->loop, &s->uptimer);
	wipe_free(&s->secret);
	wipe_free(&s->sasl_up);
	free(s->saved_greeting);
	s->saved_greeting = NULL;
	s->up_tls = s->up_stls_offered = 0;
}

static void
session_idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct session *s = w->data;

	/* Waiting for the server or a filter is not the client being idle. */
	if (s->pq_len > 0 && s->client.out.len == 0 && s->state != S_CLOSING) {
		ev_timer_again(loop, w);
		return;
	}
	log_info(s->sid, "client idle for %.0f s", s->px->cfg->idle_timeout);
	session_end(s, "idle timeout",
	    "-ERR [SYS/TEMP] disconnected for inactivity\r\n");
}

static void
session_uptimer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct session *s = w->data;

	log_warn(s->sid, "server %s:%u silent for %.0f s", s->rt.host,
	    s->rt.port, s->px->cfg->upstream_timeout);
	session_end(s, "server timeout",
	    s->rp_active && s->rp.state != 0 ? NULL :
	    "-ERR [SYS/TEMP] the mail server did not answer in time\r\n");
}

static void
session_linger_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct session *s = w->data;

	log_debug(s->sid, "client did not take its last reply in time");
	conn_close(&s->client);
	proxy_session_gone(s->px, s);
}

struct session *
session_new(struct proxy *px, int fd, const struct sockaddr_storage *peer,
    socklen_t len, int tls)
{
	struct session *s = calloc(1, sizeof(*s));

	if (s == NULL)
		return NULL;
	s->px = px;
	proxy_next_sid(px, s->sid, sizeof(s->sid));
	memcpy(&s->peer, peer, len < sizeof(s->peer) ? len : sizeof(s->peer));
	sockaddr_format((struct sockaddr *)&s->peer, s->peer_text,
	    sizeof(s->peer_text));
	s->started = ev_now(px->loop);
	conn_init(&s->client, px->loop, fd, session_client_cb, s);
	conn_init(&s->up, px->loop, -1, session_up_cb, s);
	s->client.in_hwm = 64 * 1024;
	ev_init(&s->idle, session_idle_cb);
	s->idle.repeat = px->cfg->idle_timeout;
	ev_init(&s->uptimer, session_uptimer_cb);
	s->uptimer.repeat = px->cfg->upstream_timeout;
	ev_init(&s->linger, session_linger_cb);
	s->idle.data = s->uptimer.data = s->linger.data = s;
	ev_timer_again(px->loop, &s->idle);
	if (tls && conn_tls_start(&s->client, tls_server_new(&px->tls)) < 0) {
		conn_close(&s->client);
		free(s);
		return NULL;
	}
	return s;
}

static void session_connected(void *arg, int fd, const char *err);

/* After the proxy has registered the session: greet or connect. */
void
session_start(struct session *s)
{
	log_info(s->sid, "connect from %s", s->peer_text);
	if (s->px->cfg->fixed) {
		s->rt = s->px->cfg->upstream;
		s->routed = 1;
		session_enter(s, S_FIXED);
		if (upstream_start(&s->uc, s->px, s->sid, &s->rt, 0,
		    session_connected, s) < 0) {
			session_end(s, "out of memory", "-ERR [SYS/TEMP] out of memory\r\n");
			return;
		}
		/* Client commands wait for the server's greeting. */
		conn_want_read(&s->client, 1);
		return;
	}
	session_enter(s, S_AUTH);
	session_replyf(s, "+OK %s", s->px->cfg->greeting);
	conn_want_read(&s->client, 1);
}

void
session_end(struct session *s, const char *reason, const char *client_line)
{
	if (s->state == S_CLOSING)
		return;
	session_enter(s, S_CLOSING);
	s->end_reason = reason;
	session_drop_upstream(s);
	ev_timer_stop(s->px->loop, &s->idle);
	if (client_line != NULL && conn_is_open(&s->client))
		session_client_write(s, client_line, strlen(client_line));
	conn_want_read(&s->client, 0);
	if (conn_is_open(&s->client) && conn_out_pending(&s->client) > 0 &&
	    !s->client.failed) {
		/* Flush the goodbye; CONN_DRAINED or the linger timer frees. */
		ev_timer_set(&s->linger, LINGER, 0);
		ev_timer_start(s->px->loop, &s->linger);
		return;
	}
	conn_close(&s->client);
	proxy_session_gone(s->px, s);
}

void
session_free(struct session *s)
{
	double dur = ev_now(s->px->loop) - s->started;

	log_info(s->sid, "session end: client=%s user=%s upstream=%s:%u msgs=%u "
	    "bytes_up=%llu bytes_down=%llu duration=%.3fs reason=%s",
	    s->peer_text, s->routed && s->rt.user[0] ? s->rt.user : "-",
	    s->routed ? s->rt.host : "-", s->routed ? s->rt.port : 0, s->msgs,
	    (unsigned long long)s->up.bytes_out,
	    (unsigned long long)s->client.bytes_out, dur,
	    s->end_reason ? s->end_reason : "?");
	session_drop_upstream(s);
	ev_timer_stop(s->px->loop, &s->idle);
	ev_timer_stop(s->px->loop, &s->linger);
	conn_close(&s->client);
	conn_close(&s->up);
	buf_free(&s->msg);
	session_uidls_free(s);
	free(s);
}

/* --- watchers: backpressure in one place ---------------------------------- */

/*
 * Read from the client while its commands can go somewhere; read from the
 * server while the client keeps up. The upstream timer runs only while the
 * server owes a reply that nothing on our side is holding back.
 */
static void
session_update(struct session *s)
{
	if (s->state == S_CLOSING)
		return;
	int client_slow = conn_out_pending(&s->client) >= CONN_OUT_HWM;
	int up_open = conn_is_open(&s->up);

	conn_want_read(&s->client, !s->quit_sent &&
	    (!up_open || conn_out_pending(&s->up) < CONN_OUT_HWM));
	if (up_open) {
		s->up.read_max = retr_read_max(s);
		conn_want_read(&s->up, !client_slow && retr_may_read(s));
	}

	int due = up_open && pq_upstream_owed(s) && !client_slow &&
	    !s->hold_waiting && !s->budget_wait;
	if (due && !ev_is_active(&s->uptimer))
		ev_timer_again(s->px->loop, &s->uptimer);
	else if (!due && ev_is_active(&s->uptimer))
		ev_timer_stop(s->px->loop, &s->uptimer);
	/* Last, as it may end the session: a half-closed client answered. */
	session_check_eof(s);
}

/* --- routing-mode login --------------------------------------------------- */

static void
session_login_failed(struct session *s, const char *line, size_t len)
{
	if (s->px->cfg->fixed) {
		char buf[600];
		snprintf(buf, sizeof(buf), "%.*s", (int)len, line ? line : "");
		session_end(s, "server unusable", line ? buf : NULL);
		return;
	}
	/* line may point into the server's buffer: write it before the drop. */
	if (line != NULL)
		session_client_write(s, line, len);
	session_drop_upstream(s);
	s->sasl_route = 0;
	session_enter(s, S_AUTH);
	if (++s->logins >= MAX_LOGINS)
		session_end(s, "too many failed logins", NULL);
}

static void
session_connected(void *arg, int fd, const char *err)
{
	struct session *s = arg;

	if (fd < 0) {
		if (s->state == S_FIXED) {
			char line[600];
			snprintf(line, sizeof(line), "-ERR %s\r\n", err);
			session_end(s, "cannot reach server", line);
			return;
		}
		char line[600];
		int n = snprintf(line, sizeof(line), "-ERR %s\r\n", err);
		session_login_failed(s, line, (size_t)n);
		session_client_input(s);
		session_update(s);
		return;
	}
	const struct config *cfg = s->px->cfg;
	log_info(s->sid, "server %s:%u connected (%s)", s->rt.host, s->rt.port,
	    s->uc.peer);
	conn_init(&s->up, s->px->loop, fd, session_up_cb, s);
	s->up_implicit = cfg->upstream_tls == UP_TLS_IMPLICIT;
	if (cfg->upstream_tls == UP_TLS_AUTO)
		for (int i = 0; i < cfg->nimplicit; i++)
			if (cfg->implicit_ports[i] == s->rt.port)
				s->up_implicit = 1;
	s->up_stls_want = !s->up_implicit && cfg->upstream_tls != UP_TLS_NONE;
	if (s->up_implicit) {
		int insecure = tls_insecure_for(cfg, s->rt.host);
		if (insecure)
			log_warn(s->sid, "certificate of %s will NOT be verified "
			    "(--insecure-upstream)", s->rt.host);
		SSL *ssl = tls_client_new(&s->px->tls, s->rt.host,
		    s->rt.host_is_ip, insecure);
		if (conn_tls_start(&s->up, ssl) < 0) {
			session_login_failed(s, LIT("-ERR [SYS/TEMP] cannot set up TLS\r\n"));
			return;
		}
	}
	/* The greeting is a reply to no command: queue it as already sent.
	 * Fixed mode relays it, unless the proxy must first do STLS itself. */
	struct pending *p = pq_push(s, s->state == S_FIXED && s->up_implicit ?
	    P_FIXED_GREETING : P_GREETING, 0);
	if (p == NULL) {
		session_end(s, "out of memory", "-ERR [SYS/TEMP] out of memory\r\n");
		return;
	}
	s->pq_sent = 1;
	s->up_owed = 1;
	/* Without implicit TLS the proxy asks CAPA (and maybe does STLS)
	 * first: commands a client sent before its greeting must not reach
	 * the server before that, nor in clear before STLS. */
	s->fixed_wait = s->state == S_FIXED && !s->up_implicit;
	session_update(s);
	if (s->state == S_FIXED)
		session_client_input(s);	/* commands sent before we connected */
}

/* Remember what the server can do, from its CAPA (before login). */
static void
session_parse_upcapa(struct session *s)
{
	const char *p = buf_ptr(&s->capbuf), *end = p + s->capbuf.len;

	while (p < end) {
		const char *lf = memchr(p, '\n', (size_t)(end - p));
		size_t n = lf ? (size_t)(lf - p) : (size_t)(end - p);
		size_t k = n;
		if (k > 0 && p[k - 1] == '\r')
			k--;
		if (k == 10 && strncasecmp(p, LIT("PIPELINING")) == 0)
			s->up_pipelining = 1;
		if (k == 4 && strncasecmp(p, LIT("STLS")) == 0)
			s->up_stls_offered = 1;
		if (k > 5 && strncasecmp(p, LIT("SASL ")) == 0) {
			for (size_t i = 5; i + 5 <= k; i++)
				if (strncasecmp(p + i, LIT("PLAIN")) == 0 &&
				    p[i - 1] == ' ' && (i + 5 == k || p[i + 5] == ' '))
					s->up_sasl_plain = 1;
		}
		p += n + 1;
	}
	buf_free(&s->capbuf);
}

static void
session_login_step(struct session *s)
{
	char line[POP3_AUTH_MAX + 32];
	int n;

	if (!s->sasl_route) {
		n = snprintf(line, sizeof(line), "USER %s", s->rt.user);
		session_send(s, P_LOGIN_USER, 0, line, (size_t)n);
	} else if (s->up_sasl_plain || !s->up_capa_ok) {
		n = snprintf(line, sizeof(line), "AUTH PLAIN %s", s->sasl_up);
		session_send(s, P_LOGIN_PASS, 0, line, (size_t)n);
		explicit_bzero(line, sizeof(line));
		wipe_free(&s->sasl_up);
	} else {
		/* The server takes no SASL PLAIN: log in with USER and PASS. */
		n = snprintf(line, sizeof(line), "USER %s", s->rt.user);
		session_send(s, P_FB_USER, 0, line, (size_t)n);
	}
}

static int
upstream_is_loopback(const struct session *s)
{
	const struct sockaddr *sa = (const struct sockaddr *)&s->uc.connected;

	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr)
		    >> 24) == 127;
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		return IN6_IS_ADDR_LOOPBACK(a) ||
		    (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return 0;
}

/*
 * The server's CAPA is known: upgrade with STLS if we should, refuse to
 * send a password in clear to a remote server, then log in (routing) or
 * hand the server's greeting to the client (fixed mode).
 */
static void
session_after_capa(struct session *s)
{
	const struct config *cfg = s->px->cfg;
	char line[400];
	int n;

	if (!s->up_tls && s->up_stls_want &&
	    (s->up_stls_offered || cfg->upstream_tls == UP_TLS_STLS)) {
		session_send(s, P_UPSTLS, 0, LIT("STLS"));
		return;
	}
	if (!s->up_tls && cfg->upstream_tls == UP_TLS_STLS) {
		n = snprintf(line, sizeof(line), "-ERR [SYS/PERM] %s does not offer "
		    "STLS\r\n", s->rt.host);
		log_info(s->sid, "%s:%u offers no STLS", s->rt.host, s->rt.port);
		session_login_failed(s, line, (size_t)n);
		return;
	}
	if (!s->up_tls && !cfg->allow_plaintext && !upstream_is_loopback(s)) {
		n = snprintf(line, sizeof(line), "-ERR [SYS/PERM] %s:%u offers no "
		    "TLS: the proxy will not send your password in plain text\r\n",
		    s->rt.host, s->rt.port);
		log_notice(s->sid, "refused plain-text login to %s:%u "
		    "(--allow-plaintext-upstream is off)", s->rt.host, s->rt.port);
		session_login_failed(s, line, (size_t)n);
		return;
	}
	if (s->state == S_FIXED) {
		s->fixed_wait = 0;
		if (s->saved_greeting != NULL) {
			session_client_write(s, s->saved_greeting,
			    strlen(s->saved_greeting));
			free(s->saved_greeting);
			s->saved_greeting = NULL;
		}
		session_client_input(s);
		return;
	}
	session_login_step(s);
}

static void
session_route(struct session *s, const char *name, size_t len)
{
	const char *err;

	if (route_parse(name, len, 110, &s->rt, &err) < 0) {
		log_info(s->sid, "login refused: %s", err);
		session_replyf(s, "-ERR [AUTH] %s (log in as user%%host[:port])", err);
		if (++s->errors >= MAX_ERRORS)
			session_end(s, "too many errors", NULL);
		return;
	}
	s->routed = 1;
	s->sasl_route = 0;	/* an earlier AUTH PLAIN attempt is over */
	log_info(s->sid, "user %s routed to %s:%u", s->rt.user, s->rt.host,
	    s->rt.port);
	session_enter(s, S_LOGIN);
	if (upstream_start(&s->uc, s->px, s->sid, &s->rt, 1, session_connected,
	    s) < 0)
		session_end(s, "out of memory", "-ERR [SYS/TEMP] out of memory\r\n");
}

/* AUTH PLAIN data: authzid NUL authcid NUL password, routed by authcid. */
static void
session_sasl_plain(struct session *s, const char *b64, size_t len)
{
	unsigned char dec[POP3_AUTH_MAX];
	ssize_t n = base64_decode(b64, len, dec, sizeof(dec) - 1);
	const char *err = NULL;

	session_enter(s, S_AUTH);
	if (n < 0) {
		err = "-ERR [AUTH] invalid base64 in AUTH PLAIN\r\n";
		goto fail;
	}
	unsigned char *z1 = memchr(dec, '\0', (size_t)n);
	unsigned char *z2 = z1 ? memchr(z1 + 1, '\0', (size_t)(dec + n - z1 - 1)) : NULL;
	if (z1 == NULL || z2 == NULL ||
	    memchr(z2 + 1, '\0', (size_t)(dec + n - z2 - 1)) != NULL ||
	    z2 == z1 + 1) {
		err = "-ERR [AUTH] malformed AUTH PLAIN response\r\n";
		goto fail;
	}
	const char *authzid = (const char *)dec, *authcid = (const char *)z1 + 1;
	const char *pass = (const char *)z2 + 1;
	size_t zlen = (size_t)(z1 - dec), clen = (size_t)(z2 - z1 - 1);
	size_t plen = (size_t)(dec + n - z2 - 1);

	if (route_parse(authcid, clen, 110, &s->rt, &err) < 0) {
		log_info(s->sid, "AUTH PLAIN login refused: %s", err);
		char line[300];
		int k = snprintf(line, sizeof(line),
		    "-ERR %s (authenticate as user%%host[:port])\r\n", err);
		session_client_write(s, line, (size_t)k);
		err = NULL;
		goto fail_quiet;
	}
	/* The authorization identity loses its route too, if it has one. */
	struct route az;
	const char *zerr;
	size_t ulen = strlen(s->rt.user), azlen = 0;
	const char *azname = "";
	if (zlen > 0 && !(zlen == clen && memcmp(authzid, authcid, zlen) == 0)) {
		if (route_parse(authzid, zlen, 110, &az, &zerr) == 0) {
			azname = az.user;
			azlen = strlen(az.user);
		} else {
			azname = authzid;
			azlen = zlen;
		}
	}
	unsigned char plain[POP3_AUTH_MAX];
	size_t pl = azlen + 1 + ulen + 1 + plen;
	if (pl > sizeof(plain) || BASE64_ENCODED_LEN(pl) + 1 > POP3_AUTH_MAX) {
		err = "-ERR [AUTH] AUTH PLAIN response too long\r\n";
		goto fail;
	}
	memcpy(plain, azname, azlen);
	plain[azlen] = '\0';
	memcpy(plain + azlen + 1, s->rt.user, ulen);
	plain[azlen + 1 + ulen] = '\0';
	memcpy(plain + azlen + ulen + 2, pass, plen);
	s->sasl_up = malloc(BASE64_ENCODED_LEN(pl) + 1);
	s->secret = strndup(pass, plen);
	if (s->sasl_up == NULL || s->secret == NULL) {
		explicit_bzero(plain, sizeof(plain));
		err = "-ERR [SYS/TEMP] out of memory\r\n";
		goto fail;
	}
	base64_encode(plain, pl, s->sasl_up);
	explicit_bzero(plain, sizeof(plain));
	explicit_bzero(dec, sizeof(dec));
	s->sasl_route = 1;
	s->routed = 1;
	log_info(s->sid, "user %s routed to %s:%u (AUTH PLAIN)", s->rt.user,
	    s->rt.host, s->rt.port);
	session_enter(s, S_LOGIN);
	if (upstream_start(&s->uc, s->px, s->sid, &s->rt, 1, session_connected,
	    s) < 0)
		session_end(s, "out of memory", "-ERR [SYS/TEMP] out of memory\r\n");
	return;
fail:
	log_info(s->sid, "AUTH PLAIN refused: %.*s", (int)strlen(err) - 7, err + 5);
	session_client_write(s, err, strlen(err));
fail_quiet:
	explicit_bzero(dec, sizeof(dec));
	s->routed = 0;
	if (++s->errors >= MAX_ERRORS)
		session_end(s, "too many errors", NULL);
}

static void
session_auth_cmd(struct session *s, const struct cmd *c)
{
	const char *a = c->args;
	size_t n = c->args_len;

	if (n == 0) {
		session_reply(s, "+OK\r\nPLAIN\r\n.\r\n");
		return;
	}
	size_t m = 0;
	while (m < n && a[m] != ' ')
		m++;
	if (m != 5 || strncasecmp(a, LIT("PLAIN")) != 0) {
		session_reply(s, "-ERR unsupported authentication mechanism "
		    "(this proxy offers PLAIN)\r\n");
		return;
	}
	if (m == n) {
		session_enter(s, S_SASL);
		session_client_write(s, LIT("+ \r\n"));
		return;
	}
	a += m + 1;
	n -= m + 1;
	if (n == 1 && a[0] == '=')
		n = 0;	/* RFC 5034: "=" is an empty initial response */
	session_sasl_plain(s, a, n);
}

static int
client_is_loopback(const struct session *s)
{
	const struct sockaddr *sa = (const struct sockaddr *)&s->peer;

	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr)
		    >> 24) == 127;
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (IN6_IS_ADDR_LOOPBACK(a))
			return 1;
		if (IN6_IS_ADDR_V4MAPPED(a))
			return a->s6_addr[12] == 127;
	}
	return 0;
}

static int
session_tls_required(const struct session *s)
{
	return s->px->cfg->require_tls && !s->client_tls && !client_is_loopback(s);
}

/*
 * STLS from the client (RFC 2595): only before login. Whatever the client
 * pipelined behind it in plain text is thrown away (CVE-2011-0411), and the
 * handshake starts once "+OK" is out.
 */
static void
session_stls(struct session *s)
{
	if (s->client_tls) {
		session_reply(s, "-ERR already using TLS\r\n");
		return;
	}
	if (s->px->tls.down == NULL || s->state == S_WAIT_PASS) {
		session_reply(s, s->px->tls.down == NULL ?
		    "-ERR STLS is not available here\r\n" :
		    "-ERR STLS only before USER\r\n");
		return;
	}
	session_client_write(s, LIT("+OK Begin TLS negotiation\r\n"));
	if (conn_tls_start(&s->client, tls_server_new(&s->px->tls)) < 0) {
		session_end(s, "TLS set-up failed", NULL);
		return;
	}
	s->stls_now = 1;
}

/* The proxy's own dialogue before login (routing mode). */
static void
session_prelogin(struct session *s, const struct cmd *c, const char *line,
    size_t len)
{
	if ((c->id == CMD_USER || c->id == CMD_PASS || c->id == CMD_AUTH) &&
	    session_tls_required(s)) {
		session_reply(s, "-ERR TLS is required here: use STLS (or POP3S) "
		    "before logging in\r\n");
		return;
	}
	switch (c->id) {
	case CMD_CAPA:
		session_reply(s, s->px->tls.down && !s->client_tls ?
		    capa_prelogin_stls : capa_prelogin);
		break;
	case CMD_USER:
		if (s->state == S_WAIT_PASS) {
			session_drop_upstream(s);
			session_enter(s, S_AUTH);
		}
		session_route(s, c->args, c->args_len);
		break;
	case CMD_AUTH:
		if (s->state == S_WAIT_PASS) {
			session_drop_upstream(s);
			session_enter(s, S_AUTH);
		}
		session_auth_cmd(s, c);
		break;
	case CMD_PASS:
		if (s->state != S_WAIT_PASS) {
			session_reply(s, "-ERR send USER user%host first\r\n");
			break;
		}
		session_enter(s, S_PASS);
		session_send(s, P_LOGIN_PASS, 0, line, len);
		break;
	case CMD_QUIT:
		session_end(s, "quit", "+OK bye\r\n");
		break;
	case CMD_APOP:
		session_reply(s, "-ERR APOP cannot be routed: log in with "
		    "USER user%host[:port] and PASS\r\n");
		break;
	case CMD_STLS:
		session_stls(s);
		break;
	case CMD_SHUTDOWN:
		if (s->px->cfg->admin_shutdown && client_is_loopback(s) &&
		    s->state == S_AUTH) {
			log_notice(s->sid, "SHUTDOWN from %s", s->peer_text);
			session_end(s, "shutdown command", "+OK shutting down\r\n");
			proxy_cleanup(s->px, 0);
			break;
		}
		if (s->px->cfg->admin_shutdown)
			log_notice(s->sid, "SHUTDOWN refused from %s", s->peer_text);
		session_reply(s, "-ERR unknown command\r\n");
		break;
	case CMD_UNKNOWN:
		session_reply(s, "-ERR unknown command\r\n");
		break;
	default:
		session_reply(s, s->state == S_WAIT_PASS ?
		    "-ERR send PASS\r\n" : "-ERR log in first\r\n");
		break;
	}
}

/* --- relaying ------------------------------------------------------------ */

static void
session_relay_cmd(struct session *s, const struct cmd *c, const char *line,
    size_t len)
{
	enum pend_kind kind = P_RELAY;
	long msgno = 0;
	int top = 0;
	uint32_t top_lines = 0;

	if (s->state == S_FIXED && session_tls_required(s) &&
	    (c->id == CMD_USER || c->id == CMD_PASS || c->id == CMD_APOP ||
	    c->id == CMD_AUTH)) {
		session_reply(s, "-ERR TLS is required here: use STLS (or POP3S) "
		    "before logging in\r\n");
		return;
	}
	switch (c->id) {
	case CMD_QUIT:
		kind = P_QUIT;
		s->quit_sent = 1;
		break;
	case CMD_CAPA:
		kind = P_CAPA;
		break;
	case CMD_UIDL:
		/* Filters are told each message's UIDL when it is known. */
		if (s->px->filters != NULL)
			kind = P_UIDL;
		break;
	case CMD_STLS:
		if (s->state == S_FIXED && s->pq_len == 0)
			session_stls(s);
		else
			session_reply(s, "-ERR STLS only before login\r\n");
		return;
	case CMD_RETR:
		msgno = pop3_msgno(c->args, c->args_len);
		kind = msgno > 0 ? P_RETR : P_RELAY;
		break;
	case CMD_TOP: {
		/* Held for the filters only if one of them asked for TOP. */
		const char *sp = memchr(c->args, ' ', c->args_len);
		if (sp == NULL || !filter_chain_wants_top(s->px->filters))
			break;
		msgno = pop3_msgno(c->args, (size_t)(sp - c->args));
		long lines = pop3_count(sp + 1, c->args_len -
		    (size_t)(sp + 1 - c->args));
		if (msgno > 0 && lines >= 0) {
			kind = P_RETR;
			top = 1;
			top_lines = (uint32_t)lines;
		}
		break;
	}
	case CMD_PASS:
	case CMD_APOP:
		if (s->state == S_FIXED)
			kind = P_FIXED_LOGIN;
		break;
	case CMD_AUTH:
		if (s->state == S_FIXED && c->args_len > 0)
			kind = P_FIXED_AUTH;
		break;
	case CMD_USER:
		if (s->state == S_FIXED && c->args_len < ROUTE_USER_MAX) {
			memcpy(s->rt.user, c->args, c->args_len);
			s->rt.user[c->args_len] = '\0';
		}
		break;
	default:
		break;
	}
	/* Only the keyword: arguments may be secrets. */
	log_debug(s->sid, "C: %.*s", (int)c->name_len, c->name);
	struct pending *p = session_send(s, kind, c->multi, line, len);
	if (p == NULL) {
		session_end(s, "out of memory", NULL);
		return;
	}
	p->msgno = (uint32_t)msgno;
	p->top = (uint8_t)top;
	p->top_lines = top_lines;
}

static void
session_client_line(struct session *s, const char *line, size_t len)
{
	struct cmd c;

	if (s->state == S_SASL) {
		size_t n = len;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			n--;
		if (n == 1 && line[0] == '*') {
			session_enter(s, S_AUTH);
			session_reply(s, "-ERR AUTH cancelled\r\n");
			return;
		}
		session_sasl_plain(s, line, n);
		return;
	}
	if (pop3_cmd_parse(line, len, &c) < 0) {
		session_reply(s, "-ERR invalid command line\r\n");
		if (++s->errors >= MAX_ERRORS)
			session_end(s, "too many errors",
			    "-ERR too many errors, bye\r\n");
		return;
	}
	if (c.id != CMD_UNKNOWN)
		s->errors = 0;
	if (s->state == S_AUTH || s->state == S_WAIT_PASS)
		session_prelogin(s, &c, line, len);
	else
		session_relay_cmd(s, &c, line, len);
}

/* Is the head of the queue a fixed-mode AUTH waiting for client data? */
static struct pending *
session_sasl_turn(struct session *s)
{
	for (uint32_t i = 0; i < s->pq_len; i++) {
		struct pending *p = pq_at(s, i);
		if (p->kind == P_FIXED_AUTH)
			return p;
	}
	return NULL;
}

static void session_client_input_lines(struct session *);

/*
 * Commands the client pipelined go upstream in one write: the server's
 * socket is corked while they are parsed (with TCP_NODELAY, four RETRs were
 * four segments and four wake-ups of the server).
 */
static void
session_client_input(struct session *s)
{
	conn_cork(&s->up);
	session_client_input_lines(s);
	conn_uncork(&s->up);
}

static void
session_client_input_lines(struct session *s)
{
	struct buf *in = &s->client.in;

	while (in->len > 0 && s->state != S_CLOSING) {
		if (s->state == S_LOGIN || s->state == S_PASS || s->quit_sent)
			break;
		if ((s->state == S_TRANSACTION || s->state == S_FIXED) &&
		    s->pq_len >= PQ_MAX)
			break;
		if (s->state == S_FIXED && (!conn_is_open(&s->up) ||
		    s->fixed_wait))
			break;	/* not connected, or not greeted, yet */

		const char *p = buf_ptr(in);
		struct pending *auth = NULL;
		if (s->state == S_FIXED || s->state == S_TRANSACTION) {
			auth = session_sasl_turn(s);
			if (auth != NULL && !auth->sasl_wait)
				break;	/* wait for the server's challenge */
		}
		size_t max = POP3_CMD_MAX;
		if (auth != NULL || s->state == S_SASL ||
		    (in->len >= 5 && strncasecmp(p, LIT("AUTH ")) == 0))
			max = POP3_AUTH_MAX;

		if (s->discard) {
			const char *lf = memchr(p, '\n', in->len);
			if (lf == NULL) {
				buf_consume(in, in->len);
				break;
			}
			buf_consume(in, (size_t)(lf - p) + 1);
			s->discard = 0;
			continue;
		}
		long n = pop3_line_len(p, in->len, max);
		if (n == 0)
			break;
		if (n < 0) {
			log_info(s->sid, "client line over %zu octets refused", max);
			/* Drop the line through its end if it is here already,
			 * else everything, and the rest of it as it comes. */
			const char *lf = memchr(p, '\n', in->len);
			if (lf != NULL) {
				buf_consume(in, (size_t)(lf - p) + 1);
			} else {
				s->discard = 1;
				buf_consume(in, in->len);
			}
			if (s->state == S_SASL)
				session_enter(s, S_AUTH);
			session_reply(s, "-ERR line too long\r\n");
			if (++s->errors >= MAX_ERRORS)
				session_end(s, "too many errors",
				    "-ERR too many errors, bye\r\n");
			continue;
		}
		if (auth != NULL) {
			/* SASL data for the server: relayed raw, not a command. */
			auth->sasl_wait = 0;
			size_t k = (size_t)n;
			while (k > 0 && (p[k - 1] == '\n' || p[k - 1] == '\r'))
				k--;
			conn_write(&s->up, p, k);
			conn_write(&s->up, LIT("\r\n"));
			buf_consume(in, (size_t)n);
			continue;
		}
		session_client_line(s, p, (size_t)n);
		/* The line may have ended the session and freed the buffers. */
		if (s->state == S_CLOSING)
			break;
		buf_consume(in, (size_t)n);
		if (s->stls_now) {
			s->stls_now = 0;
			if (in->len > 0)
				log_notice(s->sid, "discarded %zu octets sent after "
				    "STLS in plain text", in->len);
			buf_consume(in, in->len);
			break;
		}
	}
	conn_update(&s->client);
}

static void
session_client_cb(struct conn *c, enum conn_event ev, void *arg)
{
	struct session *s = arg;

	switch (ev) {
	case CONN_DATA:
		ev_timer_again(s->px->loop, &s->idle);
		session_client_input(s);
		break;
	case CONN_EOF:
		/* Lines that came before the FIN still count, and are answered
		 * as a server would (the client may only have shut down its
		 * sending side); then the session ends, without QUIT upstream
		 * unless the client sent one. */
		s->client_eof = 1;
		session_client_input(s);
		if (s->state == S_CLOSING)
			return;
		break;
	case CONN_TLS_READY:
		s->client_tls = 1;
		log_info(s->sid, "TLS with client: %s %s", SSL_get_version(c->ssl),
		    SSL_get_cipher_name(c->ssl));
		break;
	case CONN_ERROR:
		if (c->tls_err != NULL)
			log_info(s->sid, "client %s: %s", s->peer_text, c->tls_err);
		else
			log_debug(s->sid, "client: %s", strerror(c->err));
		if (s->state == S_CLOSING) {
			conn_close(&s->client);
			ev_timer_stop(s->px->loop, &s->linger);
			proxy_session_gone(s->px, s);
			return;
		}
		session_end(s, "client error", NULL);
		return;
	case CONN_LOWAT:
		retr_client_writable(s);
		session_upstream_input(s);
		break;
	case CONN_DRAINED:
		if (s->state == S_CLOSING) {
			ev_timer_stop(s->px->loop, &s->linger);
			conn_close(&s->client);
			proxy_session_gone(s->px, s);
			return;
		}
		ev_timer_again(s->px->loop, &s->idle);
		/* A relay that paused for this client resumes; parse what waits. */
		retr_client_writable(s);
		session_upstream_input(s);
		break;
	}
	session_update(s);
}

/*
 * After the client's FIN: once every command it sent has been answered
 * (nothing owed, no login under way, no message being served), end.
 */
static void
session_check_eof(struct session *s)
{
	if (!s->client_eof || s->state == S_CLOSING || s->pq_len > 0 ||
	    s->state == S_LOGIN || s->state == S_PASS || s->serving ||
	    s->hold_waiting)
		return;
	session_end(s, s->quit_sent ? "quit" : "client closed", NULL);
}

void
session_retr_complete(struct session *s)
{
	pq_pop(s);
	pq_flush(s);
	session_upstream_input(s);
	session_client_input(s);
	session_update(s);
}

/* --- replies from the server ----------------------------------------------- */

static int
capa_keep(const char *p, size_t n, int prelogin)
{
	static const char *const keep[] = {
		"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "EXPIRE",
		"LOGIN-DELAY", "IMPLEMENTATION", "UTF8", NULL,
	};
	size_t k = 0;

	while (k < n && p[k] != ' ')
		k++;
	for (int i = 0; keep[i]; i++)
		if (strlen(keep[i]) == k && strncasecmp(p, keep[i], k) == 0)
			return 1;
	/* Before login in fixed mode the client still needs to log in. */
	if (prelogin && ((k == 4 && strncasecmp(p, LIT("USER")) == 0) ||
	    (k == 4 && strncasecmp(p, LIT("SASL")) == 0)))
		return 1;
	return 0;
}

/* Relay a CAPA list minus what the proxy cannot honour (STLS, and SASL
 * after login); PIPELINING is always offered since the proxy provides it. */
static void
session_capa_out(struct session *s)
{
	const char *p = buf_ptr(&s->capbuf), *end = p + s->capbuf.len;
	int prelogin = s->state != S_TRANSACTION;

	while (p < end) {
		const char *lf = memchr(p, '\n', (size_t)(end - p));
		size_t n = lf ? (size_t)(lf - p) + 1 : (size_t)(end - p);
		size_t k = n;
		while (k > 0 && (p[k - 1] == '\n' || p[k - 1] == '\r'))
			k--;
		if (capa_keep(p, k, prelogin)) {
			session_client_write(s, p, k);
			session_client_write(s, LIT("\r\n"));
		}
		p += n;
	}
	if (prelogin && s->px->tls.down && !s->client_tls)
		session_client_write(s, LIT("STLS\r\n"));
	session_client_write(s, LIT("PIPELINING\r\n.\r\n"));
	buf_free(&s->capbuf);
}

/* --- UIDLs, for the facts a filter is given ------------------------------- */

#define UIDL_MAX_MSGS	1000000
#define UIDL_MAX_LEN	70	/* RFC 1939: 1 to 70 characters */
#define UIDL_MAX_GAP	4096	/* numbers past the highest known + this are
				 * ignored: one line "999999 x" from a hostile
				 * server must not cost megabytes of table */

/* "n uid": remember uid for message n. Bad lines are ignored. */
static void
session_uidl_line(struct session *s, const char *p, size_t n)
{
	while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r'))
		n--;
	const char *sp = memchr(p, ' ', n);
	if (sp == NULL)
		return;
	long no = pop3_msgno(p, (size_t)(sp - p));
	const char *u = sp + 1;
	size_t ulen = n - (size_t)(u - p);
	if (no <= 0 || no > UIDL_MAX_MSGS || ulen == 0 || ulen > UIDL_MAX_LEN ||
	    (uint32_t)no > s->uidl_high + UIDL_MAX_GAP)
		return;
	for (size_t i = 0; i < ulen; i++)
		if ((unsigned char)u[i] < 0x21 || (unsigned char)u[i] > 0x7e)
			return;
	if ((uint32_t)no > s->nuidls) {
		uint32_t cap = s->nuidls ? s->nuidls : 16;
		while (cap < (uint32_t)no)
			cap *= 2;
		char **a = realloc(s->uidls, cap * sizeof(*a));
		if (a == NULL)
			return;
		memset(a + s->nuidls, 0, (cap - s->nuidls) * sizeof(*a));
		s->uidls = a;
		s->nuidls = cap;
	}
	free(s->uidls[no - 1]);
	s->uidls[no - 1] = strndup(u, ulen);
	if ((uint32_t)no > s->uidl_high)
		s->uidl_high = (uint32_t)no;
}

/* Body octets of a UIDL listing arrive in runs that may split lines. */
static void
session_uidl_data(struct session *s, const char *p, size_t n)
{
	const char *end = p + n;

	while (p < end) {
		const char *lf = memchr(p, '\n', (size_t)(end - p));
		size_t k = lf ? (size_t)(lf - p) + 1 : (size_t)(end - p);
		if (s->uidl_line.len + k <= 128)
			buf_append(&s->uidl_line, p, k);
		else
			s->uidl_line.len = 128;	/* too long: ignored below */
		if (lf != NULL) {
			if (s->uidl_line.len < 128)
				session_uidl_line(s, buf_ptr(&s->uidl_line),
				    s->uidl_line.len);
			buf_free(&s->uidl_line);
		}
		p += k;
	}
}

const char *
session_uidl(const struct session *s, uint32_t n)
{
	return n >= 1 && n <= s->nuidls ? s->uidls[n - 1] : NULL;
}

static void
session_uidls_free(struct session *s)
{
	for (uint32_t i = 0; i < s->nuidls; i++)
		free(s->uidls[i]);
	free(s->uidls);
	s->uidls = NULL;
	s->nuidls = s->uidl_high = 0;
	buf_free(&s->uidl_line);
}

/* A status line arrived for the head of the queue. Returns -1 if the
 * session ended or the upstream was dropped (stop parsing). */
static int
session_status(struct session *s, struct pending *h, const struct resp_event *ev)
{
	const char *line = ev->p;
	size_t len = ev->len;

	switch ((enum pend_kind)h->kind) {
	case P_GREETING:
		if (!ev->ok || ev->kind == RESP_CONT) {
			log_info(s->sid, "server %s refused us: %.*s", s->rt.host,
			    (int)(len > 2 ? len - 2 : len), line);
			session_login_failed(s, line, len);
			return -1;
		}
		if (s->state == S_FIXED && s->saved_greeting == NULL)
			s->saved_greeting = strndup(line, len);
		return 0;
	case P_UPCAPA:
		s->up_capa_ok = ev->ok;
		return 0;
	case P_UPSTLS:
		if (!ev->ok || ev->kind == RESP_CONT) {
			log_info(s->sid, "%s refused STLS: %.*s", s->rt.host,
			    (int)(len > 2 ? len - 2 : len), line);
			s->up_stls_want = 0;
			s->up_stls_offered = 0;
		}
		return 0;
	case P_LOGIN_USER:
		session_relay(s, line, len);
		if (!ev->ok || ev->kind == RESP_CONT) {
			session_login_failed(s, NULL, 0);
			return -1;
		}
		session_enter(s, S_WAIT_PASS);
		return 0;
	case P_FB_USER:
		if (!ev->ok || ev->kind == RESP_CONT) {
			session_login_failed(s, line, len);
			return -1;
		}
		return 0;
	case P_LOGIN_PASS:
		if (ev->kind == RESP_CONT) {
			/* We sent an initial response; a challenge means the
			 * server wants something else. Cancel. */
			conn_write(&s->up, LIT("*\r\n"));
			resp_begin(&s->rp, 0);
			return 1;
		}
		session_relay(s, line, len);
		if (!ev->ok) {
			log_info(s->sid, "login as %s at %s failed", s->rt.user,
			    s->rt.host);
			session_login_failed(s, NULL, 0);
			return -1;
		}
		log_info(s->sid, "logged in as %s at %s:%u (%s)", s->rt.user,
		    s->rt.host, s->rt.port, s->up_tls ? "TLS" : "unencrypted");
		session_enter(s, S_TRANSACTION);
		return 0;
	case P_FIXED_GREETING:
		session_relay(s, line, len);
		if (!ev->ok) {
			session_end(s, "server refused", NULL);
			return -1;
		}
		return 0;
	case P_FIXED_LOGIN:
	case P_FIXED_AUTH:
		session_relay(s, line, len);
		if (ev->kind == RESP_CONT) {
			h->sasl_wait = 1;
			return 1;
		}
		if (ev->ok && s->state == S_FIXED) {
			log_info(s->sid, "logged in as %s at %s:%u (%s)",
			    s->rt.user[0] ? s->rt.user : "?", s->rt.host, s->rt.port,
			    s->up_tls ? "TLS" : "unencrypted");
			session_enter(s, S_TRANSACTION);
		}
		return 0;
	case P_CAPA:
		session_relay(s, line, len);
		return 0;
	case P_UIDL:
		session_relay(s, line, len);
		if (ev->ok && !h->multi && len > 4)
			session_uidl_line(s, line + 4, len - 4);
		return 0;
	case P_RETR:
		if (ev->ok && ev->kind == RESP_STATUS)
			return retr_status(s, h, line, len);
		session_relay(s, line, len);
		return 0;
	case P_QUIT:
	case P_RELAY:
	case P_LOCAL:
		session_relay(s, line, len);
		return 0;
	}
	return 0;
}

static void
session_data(struct session *s, struct pending *h, const struct resp_event *ev)
{
	switch ((enum pend_kind)h->kind) {
	case P_UPCAPA:
	case P_CAPA:
		if (s->capbuf.len + ev->len <= CAPBUF_MAX)
			buf_append(&s->capbuf, ev->p + ev->stuffed,
			    ev->len - ev->stuffed);
		break;
	case P_RETR:
		retr_data(s, ev);
		break;
	case P_UIDL:
		session_relay(s, ev->p, ev->len);
		session_uidl_data(s, ev->p + ev->stuffed, ev->len - ev->stuffed);
		break;
	default:
		session_relay(s, ev->p, ev->len);
		break;
	}
}

/* The reply to the head is complete. Returns -1 if parsing must stop. */
static int
session_done(struct session *s, struct pending *h, const struct resp_event *end)
{
	switch ((enum pend_kind)h->kind) {
	case P_GREETING:
		pq_pop(s);
		session_send(s, P_UPCAPA, 1, LIT("CAPA"));
		return 0;
	case P_UPCAPA:
		session_parse_upcapa(s);
		pq_pop(s);
		session_after_capa(s);
		return 0;
	case P_UPSTLS:
		pq_pop(s);
		if (!s->up_stls_want) {
			session_after_capa(s);	/* refused: decide on plain text */
			return 0;
		}
		/* Anything the server sent after its +OK is not to be trusted. */
		buf_consume(&s->up.in, s->up.in.len);
		int insecure = tls_insecure_for(s->px->cfg, s->rt.host);
		if (insecure)
			log_warn(s->sid, "certificate of %s will NOT be verified "
			    "(--insecure-upstream)", s->rt.host);
		if (conn_tls_start(&s->up, tls_client_new(&s->px->tls, s->rt.host,
		    s->rt.host_is_ip, insecure)) < 0) {
			session_login_failed(s, LIT("-ERR [SYS/TEMP] cannot set up TLS\r\n"));
			return -1;
		}
		return -1;	/* parsing resumes after the handshake */
	case P_FB_USER: {
		char line[POP3_AUTH_MAX];
		pq_pop(s);
		int n = snprintf(line, sizeof(line), "PASS %s", s->secret);
		session_send(s, P_LOGIN_PASS, 0, line, (size_t)n);
		explicit_bzero(line, sizeof(line));
		wipe_free(&s->secret);
		return 0;
	}
	case P_CAPA:
		if (end != NULL)
			session_capa_out(s);
		break;
	case P_RETR:
		if (end != NULL) {
			int r = retr_end(s, h, end);
			if (r != 0)
				return r;	/* held: the filters have it */
		}
		break;
	case P_QUIT:
		pq_pop(s);
		session_end(s, "quit", NULL);
		return -1;
	default:
		if (end != NULL)
			session_relay(s, end->p, end->len);
		break;
	}
	pq_pop(s);
	pq_flush(s);
	return 0;
}

/*
 * Parse the server's bytes against the queue of pending commands and relay
 * them in order. Stops when the client cannot keep up (backpressure), when
 * a held message is with the filters, or when more bytes are needed.
 */
static void
session_upstream_parse(struct session *s)
{
	struct buf *in = &s->up.in;

	while (s->state != S_CLOSING && s->pq_len > 0) {
		struct pending *h = pq_at(s, 0);
		if (h->kind == P_LOCAL) {
			session_client_write(s, h->local, strlen(h->local));
			pq_pop(s);
			pq_flush(s);
			continue;
		}
		if (h->kind == P_FIXED_AUTH && h->sasl_wait)
			break;		/* the client's turn */
		if (s->hold_waiting)
			break;		/* the filters have the message */
		if (conn_out_pending(&s->client) >= CONN_OUT_HWM)
			break;		/* resumed on CONN_LOWAT/DRAINED */
		if (in->len == 0)
			break;
		if (s->pq_sent == 0)
			break;	/* nothing asked yet: what came is unsolicited */
		if (!s->rp_active) {
			resp_begin(&s->rp, h->multi);
			s->rp_active = 1;
		}
		struct resp_event ev;
		size_t n = resp_parse(&s->rp, buf_ptr(in), in->len, &ev);
		int r = 0;
		switch (ev.kind) {
		case RESP_MORE:
			goto out;
		case RESP_ERROR: {
			log_warn(s->sid, "server %s sent something that is not POP3 "
			    "(%zu octets without a line end, or no +OK/-ERR)",
			    s->rt.host, in->len);
			if (s->state == S_LOGIN) {
				session_login_failed(s, LIT("-ERR [SYS/TEMP] the mail "
				    "server does not speak POP3\r\n"));
				session_client_input(s);
				return;
			}
			session_end(s, "server protocol error",
			    "-ERR [SYS/TEMP] the mail server sent garbage\r\n");
			return;
		}
		case RESP_STATUS:
		case RESP_CONT:
			r = session_status(s, h, &ev);
			if (r == 2) {
				/* Not now (buffer budget): parse it again later. */
				s->rp_active = 0;
				goto out;
			}
			if (r < 0) {
				/* The upstream is gone; its buffer with it. */
				session_client_input(s);
				return;
			}
			break;
		case RESP_DATA:
			session_data(s, h, &ev);
			break;
		case RESP_END:
			break;
		}
		buf_consume(in, n);
		if (r == 1) {	/* a continuation: same head, new reply */
			s->rp_active = h->kind == P_LOGIN_PASS;
			continue;
		}
		if (resp_done(&s->rp) &&
		    session_done(s, h, ev.kind == RESP_END ? &ev : NULL) < 0)
			return;
	}
out:
	if (s->state != S_CLOSING && in->len > 0 &&
	    (s->pq_len == 0 || s->pq_sent == 0)) {
		/* Unsolicited: typically "-ERR disconnected for inactivity"
		 * right before the server closes. Logged, not relayed. */
		log_info(s->sid, "server sent %zu unsolicited octets", in->len);
		buf_consume(in, in->len);
	}
	if (conn_is_open(&s->up))
		conn_update(&s->up);
	/* A login step may have made room for what the client pipelined. */
	if (s->state != S_CLOSING && s->client.in.len > 0)
		session_client_input(s);
}

/*
 * Parse and relay. Verbatim runs gathered by session_relay go out in one
 * write at the end of the pass (57 sends per 64 KiB read became 1).
 */
void
session_upstream_input(struct session *s)
{
	session_upstream_parse(s);
	session_relay_flush(s);
}

void
session_resume(struct session *s)
{
	session_upstream_input(s);
	session_update(s);
}

static void
session_up_lost(struct session *s, const char *why)
{
	log_info(s->sid, "server %s:%u: %s", s->rt.host, s->rt.port, why);
	if (s->up.tls_err != NULL && !s->up_tls) {
		char line[600];
		int n = snprintf(line, sizeof(line), "-ERR [SYS/PERM] TLS with "
		    "%s:%u failed: %s\r\n", s->rt.host, s->rt.port, s->up.tls_err);
		session_login_failed(s, line, (size_t)n);
		if (s->state != S_CLOSING)
			session_client_input(s);
		return;
	}
	switch (s->state) {
	case S_LOGIN:
	case S_PASS:
		session_login_failed(s, LIT("-ERR [SYS/TEMP] the mail server closed "
		    "the connection\r\n"));
		session_client_input(s);
		return;
	default:
		break;
	}
	if (s->quit_sent && s->pq_len == 1 && pq_at(s, 0)->kind == P_QUIT) {
		session_end(s, "quit", NULL);
		return;
	}
	/* In the middle of a multi-line reply nothing more can be said. */
	int mid = s->rp_active && s->rp.state != 0;
	session_end(s, "server closed", mid ? NULL :
	    "-ERR [SYS/TEMP] connection to the mail server lost\r\n");
}

static void
session_up_cb(struct conn *c, enum conn_event ev, void *arg)
{
	struct session *s = arg;

	switch (ev) {
	case CONN_DATA:
		if (ev_is_active(&s->uptimer))
			ev_timer_again(s->px->loop, &s->uptimer);
		session_upstream_input(s);
		break;
	case CONN_EOF:
		session_upstream_input(s);
		if (s->state == S_CLOSING || !conn_is_open(&s->up))
			return;
		session_up_lost(s, "closed the connection");
		break;
	case CONN_ERROR:
		session_up_lost(s, c->tls_err ? c->tls_err : strerror(c->err));
		break;
	case CONN_TLS_READY: {
		s->up_tls = 1;
		int insecure = tls_insecure_for(s->px->cfg, s->rt.host);
		log_info(s->sid, "TLS with server %s: %s %s, certificate %s",
		    s->rt.host, SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl),
		    insecure ? "NOT verified" : "verified");
		if (!s->up_implicit) {
			/* After STLS the server's capabilities are asked anew. */
			session_send(s, P_UPCAPA, 1, LIT("CAPA"));
		}
		session_upstream_input(s);
		break;
	}
	case CONN_LOWAT:
	case CONN_DRAINED:
		session_client_input(s);
		break;
	}
	session_update(s);
}
