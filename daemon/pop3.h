/* pop3.h: the POP3 wire grammar, pure (bytes in, events out, no I/O):
 * client command lines, the command table, and the server reply parser. */
#ifndef POP3_H
#define POP3_H

#include <stddef.h>

#define POP3_CMD_MAX	255	/* RFC 2449: a command line, CRLF included */
#define POP3_AUTH_MAX	8192	/* SASL data lines may be longer */
#define POP3_STATUS_MAX	4096	/* RFC 1939 says 512; real servers exceed it */

/* --- client commands -------------------------------------------------- */

enum cmd_id {
	CMD_UNKNOWN, CMD_USER, CMD_PASS, CMD_APOP, CMD_AUTH, CMD_CAPA,
	CMD_QUIT, CMD_STLS, CMD_NOOP, CMD_STAT, CMD_LIST, CMD_RETR,
	CMD_DELE, CMD_RSET, CMD_TOP, CMD_UIDL, CMD_SHUTDOWN,
};

struct cmd {
	enum cmd_id id;
	const char *name;	/* the keyword as sent, not terminated */
	size_t name_len;
	const char *args;	/* after one space, CRLF stripped; may be empty */
	size_t args_len;
	int multi;		/* does a +OK reply to this carry a body? */
};

/*
 * Find the end of the next line in buf. Returns the line length including
 * its LF, 0 if no LF within the first `max` octets and len < max (need more),
 * or -1 if `max` octets hold no LF (the line is too long).
 */
long pop3_line_len(const char *buf, size_t len, size_t max);

/*
 * Parse one command line (LF included; a CR before it is optional).
 * Returns 0, or -1 if the line holds a NUL, a bare CR or no keyword.
 * The keyword is matched case-insensitively against the command table.
 */
int pop3_cmd_parse(const char *line, size_t len, struct cmd *cmd);

/* Parse a message-number argument: 1..INT32_MAX, digits only. -1 if bad. */
long pop3_msgno(const char *s, size_t len);
/* A count (TOP's lines): 0..INT32_MAX, digits only. -1 if bad. */
long pop3_count(const char *s, size_t len);

/* --- server replies --------------------------------------------------- */

enum resp_kind {
	RESP_MORE,	/* need more bytes; nothing consumed */
	RESP_STATUS,	/* a status line: ok tells +OK or -ERR */
	RESP_CONT,	/* a SASL continuation ("+ ..."), single line */
	RESP_DATA,	/* a run of body octets, still byte-stuffed */
	RESP_END,	/* the terminating ".CRLF" */
	RESP_ERROR,	/* not POP3: over-long status line or garbage */
};

struct resp_event {
	enum resp_kind kind;
	const char *p;	/* the octets this event covers (consumed) */
	size_t len;
	int ok;		/* RESP_STATUS: +OK */
	int stuffed;	/* RESP_DATA: p[0] is a stuffing dot to drop */
};

struct resp_parser {
	int state;	/* RP_STATUS, RP_BODY, RP_DONE */
	int multi;	/* a +OK reply carries a body */
	int bol;	/* in a body, at the beginning of a line */
};

/* Expect a new reply; multi says whether +OK starts a body. */
void resp_begin(struct resp_parser *, int multi);
#define resp_done(p) ((p)->state == 2)
/* Still waiting for the status line (nothing of this reply consumed). */
#define resp_at_status(p) ((p)->state == 0)

/*
 * Parse from buf. Returns the number of octets consumed (ev->len) and
 * fills ev. RESP_DATA runs end before a line that starts with '.', so a
 * consumer that unstuffs drops only p[0]. Body lines may be any length:
 * nothing is buffered, only line ends are scanned for.
 */
size_t resp_parse(struct resp_parser *, const char *buf, size_t len,
    struct resp_event *ev);

/*
 * The offset of the first '.' in buf[from, len) that follows a '\n' at or
 * after `from`, i.e. the start of a line that begins with a dot; len if
 * there is none. This is the one scan of message bodies on the relay path,
 * 16 octets at a time where SSE2 is there.
 */
size_t pop3_find_dot_line(const char *buf, size_t len, size_t from);

/* "+OK 1234 octets": the number after +OK, or -1. */
long long pop3_status_octets(const char *line, size_t len);

#endif
