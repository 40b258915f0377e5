/* session.h: one client's POP3 session through the proxy: its two
 * connections, its state machine and its queue of commands awaiting replies. */
#ifndef SESSION_H
#define SESSION_H

#include <ev.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buffer.h"
#include "conn.h"
#include "pop3.h"
#include "route.h"
#include "upstream.h"

struct proxy;
struct filter_job;

/* A string literal and its length, counted by the compiler. */
#define LIT(s) (s), (sizeof(s) - 1)

/*
 * Routing mode:
 *
 *   AUTH --USER/AUTH--> LOGIN --upstream +OK to USER--> WAIT_PASS --PASS--> PASS
 *    ^  \--AUTH PLAIN--> SASL --data--> LOGIN              |                 |
 *    |                                                      |           +OK  v
 *    +------- any failure: -ERR to client, upstream dropped +------ TRANSACTION
 *
 * Fixed-upstream mode starts in FIXED (everything relayed, login watched)
 * and enters TRANSACTION on a +OK to PASS, APOP or AUTH.
 * Any state --> CLOSING (flush what the client is owed, then free).
 */
enum session_state {
	S_AUTH,		/* routing: no upstream yet, the proxy answers */
	S_SASL,		/* routing: sent "+ ", awaiting the AUTH PLAIN data */
	S_LOGIN,	/* routing: connecting and logging in; input waits */
	S_WAIT_PASS,	/* routing: upstream took USER, awaiting PASS */
	S_PASS,		/* routing: PASS or AUTH in flight; input waits */
	S_FIXED,	/* fixed mode before login: relay everything */
	S_TRANSACTION,	/* logged in: relay, pipelined */
	S_CLOSING,
};

/* What to do with the reply to a queued command. */
enum pend_kind {
	P_LOCAL,	/* the proxy's own reply, kept in order */
	P_GREETING,	/* routing: upstream greeting, consumed */
	P_UPCAPA,	/* routing: the proxy's CAPA, consumed */
	P_UPSTLS,	/* the proxy's STLS towards the server */
	P_LOGIN_USER,	/* routing: USER name; reply relayed */
	P_FB_USER,	/* routing: USER for AUTH PLAIN fallback, consumed */
	P_LOGIN_PASS,	/* routing: PASS or AUTH; reply relayed, +OK logs in */
	P_FIXED_GREETING,
	P_FIXED_LOGIN,	/* fixed: PASS/APOP; +OK logs in */
	P_FIXED_AUTH,	/* fixed: AUTH; continuations relayed both ways */
	P_RELAY,	/* any other command: relayed as is */
	P_CAPA,		/* relayed, minus capabilities we cannot honour */
	P_UIDL,		/* relayed; unique ids remembered for the filters */
	P_RETR,		/* relayed, or held for the filters */
	P_QUIT,		/* relayed; the session ends after the reply */
};

struct pending {
	uint8_t kind;
	uint8_t multi;
	uint8_t sasl_wait;	/* P_FIXED_AUTH: a "+ " went out, client's turn */
	uint8_t top;		/* P_RETR: a TOP command, top_lines lines */
	uint32_t msgno;
	uint32_t top_lines;
	uint32_t unsent;	/* octets of this command not yet sent upstream */
	const char *local;	/* P_LOCAL: static reply text */
};

struct session {
	struct proxy *px;
	struct session *next, *prev;	/* proxy's list, or its dead list */
	char sid[20];
	enum session_state state;

	struct conn client, up;
	struct sockaddr_storage peer;
	char peer_text[64];
	struct upstream_connect uc;
	struct route rt;		/* target; rt.user is the remote user */
	int routed;			/* rt is meaningful */

	/* Replies awaited, in order: a ring of pending commands. */
	struct pending *pq;
	uint32_t pq_head, pq_len, pq_cap;
	uint32_t pq_sent;		/* entries already sent upstream */
	uint32_t up_owed;		/* of those, replies the server owes */
	struct buf unsent;		/* command octets not yet sent */
	struct resp_parser rp;
	int rp_active;
	const char *span_p;		/* server octets relayed verbatim, not yet */
	size_t span_len;		/* written: one send per parsing pass */
	struct buf capbuf;		/* CAPA bodies, filtered by line */

	/* What the upstream offered before login (its CAPA). */
	unsigned up_pipelining:1, up_sasl_plain:1, up_capa_ok:1;
	unsigned quit_sent:1, discard:1, counted_ip:1;
	unsigned sasl_route:1;		/* this login came by AUTH PLAIN */
	unsigned client_tls:1, up_tls:1;	/* TLS established */
	unsigned up_implicit:1, up_stls_want:1, up_stls_offered:1;
	unsigned stls_now:1;		/* client STLS accepted this line */
	unsigned client_eof:1;		/* client half-closed: answer, then end */
	unsigned fixed_wait:1;		/* fixed mode: the proxy is still talking
					 * to the server (CAPA, STLS); the
					 * client's commands wait for the
					 * greeting to be relayed */
	char *saved_greeting;		/* fixed mode + STLS: relayed after TLS */
	char **uidls;			/* by message number, when filtering */
	uint32_t nuidls;		/* table size */
	uint32_t uidl_high;		/* highest message number stored */
	struct buf uidl_line;		/* a UIDL listing line being split */
	unsigned hold:1;		/* a RETR reply is being held */
	char *secret;			/* AUTH PLAIN fallback password; wiped */
	char *sasl_up;			/* base64 AUTH PLAIN for upstream; wiped */
	int errors;			/* protocol errors in a row */
	int logins;			/* failed login attempts */

	ev_timer idle, uptimer, linger;

	/* The RETR path (retr.c): a reply held whole for the filters, then
	 * served from memory with dot-stuffing reapplied. */
	struct buf msg;
	size_t serve_off;		/* octets of msg already served */
	char held_status[96];		/* the server's +OK line, if short */
	char serve_status[48];		/* our "+OK n octets", sent with the
					 * first octets served */
	uint8_t serve_status_len;
	uint8_t held_status_len;
	unsigned hold_waiting:1;	/* with the filters, or being served */
	unsigned serving:1;
	unsigned budget_wait:1;		/* queued for --buffer-budget room */
	struct session *bw_next;	/* the proxy's budget queue */
	uint32_t hold_msgno;
	uint32_t hold_top_lines;
	uint8_t hold_top;
	long long hold_size;		/* from "+OK n octets", -1 if unknown */
	uint64_t held_now;		/* octets counted in px->held_bytes */
	struct filter_job *job;
	ev_tstamp hold_started;

	ev_tstamp started;
	unsigned msgs;
	const char *end_reason;
};

struct session *session_new(struct proxy *, int fd,
    const struct sockaddr_storage *peer, socklen_t len, int tls);
/* Relay server octets (from s->up.in) to the client verbatim; contiguous
 * runs are gathered and written once per parsing pass, without a copy. */
void session_relay(struct session *, const char *p, size_t n);
/* Anything else for the client: written after what was gathered. */
void session_client_write(struct session *, const void *p, size_t n);
void session_relay_flush(struct session *);
/* The UIDL of message n, if the client asked for it; NULL otherwise. */
const char *session_uidl(const struct session *, uint32_t n);
/* Register done: greet the client, or connect at once in fixed mode. */
void session_start(struct session *);
/* Parse and relay what the server sent; also resumes after a filter. */
void session_upstream_input(struct session *);
/* The same, and rearm the watchers (after waiting for buffer budget). */
void session_resume(struct session *);
/* The held RETR at the head of the queue has been served (retr.c). */
void session_retr_complete(struct session *);
/* End a session: the client gets `client_line` (if any) before the close. */
void session_end(struct session *, const char *reason, const char *client_line);
/* Free a session that has ended; only the proxy's reaper calls this. */
void session_free(struct session *);

#endif
