/* pop3filter.h: libpop3filter, the C library for pop3proxyd filters (filter
 * protocol v1); the one public header: a filter, its requests, their verdicts. */
#ifndef POP3FILTER_H
#define POP3FILTER_H

/*
 * A filter in five lines:
 *
 *	static void on_message(struct pf_req *r, const struct pf_message *m, void *arg)
 *	{
 *		pf_add_header(r, "X-Checked", "yes");
 *		pf_accept(r);
 *	}
 *	int main(void)
 *	{
 *		struct pf *f = pf_new(NULL);
 *		pf_on_message(f, on_message, NULL);
 *		pf_declare(f, PF_EDIT_HEADERS);
 *		if (pf_listen(f, "/run/myfilter.sock") == -1) return 1;
 *		return pf_run(f) == 0 ? 0 : 1;
 *	}
 *
 * The library owns the listening socket, the libev loop, the handshake, the
 * framing, any number of proxy connections each with many requests in flight,
 * ping/pong, cancel, and draining on SIGTERM. Single-threaded: call it only
 * from the loop's thread.
 *
 * Requests. The message callback gets a request handle and a read-only view of
 * the message. Answer it with exactly one verdict call: pf_accept() (after any
 * pf_add_header/pf_change_header/pf_delete_header), pf_replace(), pf_reject(),
 * pf_tempfail() or pf_fail(). The answer may come later, from any other
 * callback on the loop (a timer, a socket of your own): the handle and the
 * pf_message with everything it points to stay valid until the message
 * callback has returned and a verdict call has returned 0, or until the
 * request is cancelled (the proxy gave up on it or its connection closed). With a cancel callback the handle dies when that callback
 * returns; without one it stays allocated, marked cancelled, and the verdict
 * call you eventually make returns -1 with PF_ECANCELED and frees it.
 *
 * Verdict calls return 0 (sent; a second one is refused with PF_ESTATE, and
 * outside the message callback the handle is gone) or -1 with the handle
 * untouched, pf_errno() and pf_strerror() saying why; nothing reaches the
 * proxy then, so answer again (pf_fail() always works on a live request).
 * The library refuses an action you did not pf_declare(), or that the proxy
 * did not grant on this connection: test with pf_granted().
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PF_LIB_VERSION	"1.0"
#define PF_PROTOCOL	1		/* the filter protocol version spoken */

struct ev_loop;				/* libev; include <ev.h> to use it */
struct pf;				/* a filter: socket, loop, connections */
struct pf_req;				/* one message awaiting a verdict */

/* Actions beyond plain accept (which is always allowed); bits for
 * pf_declare() and pf_granted(). */
#define PF_EDIT_HEADERS	0x04u		/* accept with header edits */
#define PF_REPLACE	0x08u		/* serve another message instead */
#define PF_REJECT	0x10u		/* serve a notice, keep the original */
#define PF_TEMPFAIL	0x20u		/* -ERR [SYS/TEMP], message stays */

/* Commands whose messages the filter wants; bits for pf_commands(). */
#define PF_RETR		0x01u
#define PF_TOP		0x02u

enum pf_command { PF_CMD_RETR = 1, PF_CMD_TOP = 2 };

/* The message and its session, as the proxy described them. Strings are
 * NUL-terminated; body may contain NULs (use body_len). */
struct pf_message {
	uint64_t	 id;		/* request id, unique per connection */
	uint32_t	 deadline_ms;	/* the proxy waits this long at most */
	const char	*session_id;	/* the proxy's session id, for logs */
	const char	*client;	/* "ip:port" of the POP3 client */
	const char	*user;		/* the upstream user name */
	const char	*upstream_host;
	uint16_t	 upstream_port;
	bool		 tls_client, tls_upstream;
	uint64_t	 number;	/* message number in the maildrop */
	uint64_t	 size;		/* as LIST reported it */
	const char	*uidl;		/* NULL: the server has none */
	enum pf_command	 command;
	uint64_t	 top_lines;	/* PF_CMD_TOP only */
	const char	*body;		/* unstuffed, CRLF lines, no final "." */
	size_t		 body_len;
};

typedef void	(*pf_message_cb)(struct pf_req *, const struct pf_message *,
		    void *arg);
/* The request is going away without a verdict; free what you attached to it
 * (pf_req_data). Verdict calls on it now fail. why: "cancelled by the proxy",
 * "connection closed", ... */
typedef void	(*pf_cancel_cb)(struct pf_req *, const char *why, void *arg);

enum pf_log_level { PF_LOG_ERROR, PF_LOG_WARN, PF_LOG_INFO, PF_LOG_DEBUG };
typedef void	(*pf_log_cb)(enum pf_log_level, const char *line, void *arg);

/* ---- the filter ---------------------------------------------------------- */

/* loop NULL: libev's default loop (required for the SIGTERM handling of
 * pf_run; with another loop call pf_drain() yourself). NULL on no memory. */
struct pf	*pf_new(struct ev_loop *loop);
/* Closes everything, cancelling what is in flight; unlinks the socket. */
void		 pf_free(struct pf *);
struct ev_loop	*pf_loop(struct pf *);		/* add your own watchers */

/* Before pf_listen(); each returns 0, or -1 (invalid, or too late). */
void	pf_on_message(struct pf *, pf_message_cb, void *arg);	/* required */
void	pf_on_cancel(struct pf *, pf_cancel_cb, void *arg);
int	pf_name(struct pf *, const char *name);		/* "myfilter/1.2" */
int	pf_declare(struct pf *, unsigned actions);	/* PF_EDIT_HEADERS|... */
int	pf_commands(struct pf *, unsigned commands);	/* default PF_RETR */
int	pf_max_message_size(struct pf *, uint64_t);	/* 0 = any (default) */
int	pf_max_inflight(struct pf *, uint32_t);		/* per connection, 64 */
int	pf_socket_mode(struct pf *, mode_t);		/* chmod the socket */

/* Log lines (library events) go to stderr at PF_LOG_INFO and above unless
 * you set a callback; level bounds what is produced either way. */
void	pf_on_log(struct pf *, pf_log_cb, void *arg);
void	pf_log_level(struct pf *, enum pf_log_level);
/* Log through the library's logger, prefixed with the filter's name. */
void	pf_log(struct pf *, enum pf_log_level, const char *fmt, ...)
	    __attribute__((format(printf, 3, 4)));

/* Bind and listen on a UNIX socket. A stale socket file (nobody accepting) is
 * removed first; a live one is an error (another instance runs). */
int	pf_listen(struct pf *, const char *path);
/* Run the loop until drained: SIGTERM or SIGINT starts pf_drain(), a second
 * one stops at once. 0 after a clean drain, -1 on failure. */
int	pf_run(struct pf *);
/* Stop accepting, tell every proxy connection "drain", keep answering what is
 * in flight, then close and (inside pf_run) return. Idempotent. */
void	pf_drain(struct pf *, const char *reason);
bool	pf_done(const struct pf *);	/* drained: nothing left to answer */
unsigned pf_inflight(const struct pf *);	/* live requests, all connections */

/* ---- requests ------------------------------------------------------------ */

const struct pf_message	*pf_req_message(const struct pf_req *);
struct pf	*pf_req_filter(const struct pf_req *);
void		 pf_req_set_data(struct pf_req *, void *);	/* your state */
void		*pf_req_data(const struct pf_req *);
bool		 pf_req_cancelled(const struct pf_req *);
/* Whether an action may be used on this request's connection: declared by
 * you and granted by the proxy. */
bool		 pf_granted(const struct pf_req *, unsigned action);

/* Optional log decorations, sent with the verdict (reason, tags, score). */
int	pf_reason(struct pf_req *, const char *reason);
int	pf_tag(struct pf_req *, const char *tag);		/* up to 32 */
int	pf_score(struct pf_req *, double score);

/* Header edits, applied in call order by the proxy when you pf_accept().
 * index counts the fields of that name from 1; delete with index 0 removes
 * them all; change of a missing occurrence adds the field. Values may be
 * folded ("a\r\n b"); no leading space. Needs PF_EDIT_HEADERS. */
int	pf_add_header(struct pf_req *, const char *name, const char *value);
int	pf_change_header(struct pf_req *, const char *name, unsigned index,
	    const char *value);
int	pf_delete_header(struct pf_req *, const char *name, unsigned index);

/* The verdicts. */
int	pf_accept(struct pf_req *);	/* with the edits above, if any */
int	pf_replace(struct pf_req *, const void *msg, size_t len);  /* copied */
int	pf_reject(struct pf_req *, const char *notice);	/* NULL: proxy's own */
/* Reject, saying you kept the original yourself under this reference (then
 * the proxy need not quarantine it); write it durably before calling. */
int	pf_reject_quarantined(struct pf_req *, const char *notice,
	    const char *quarantine_id);
/* Keep a message durably in dir (a temporary file, fsync, rename, then the
 * directory fsync'ed), so that pf_reject_quarantined() may name it. The id
 * (also the file name, NAME.eml) goes to id. 0, or -1 with errno. */
int	pf_quarantine_store(const char *dir, const char *msg, size_t len,
	    char *id, size_t idcap);
int	pf_tempfail(struct pf_req *, const char *reason);
/* The filter failed on this message: an error (code "internal") for this
 * request; the proxy applies its failure policy. */
int	pf_fail(struct pf_req *, const char *message);

/* Why the last call on this filter failed. */
enum pf_errno {
	PF_OK = 0,
	PF_EINVAL,		/* bad argument (header syntax, NULL, ...) */
	PF_ENOTDECLARED,	/* action not pf_declare()d */
	PF_ENOTGRANTED,		/* declared, but the proxy did not grant it */
	PF_ECANCELED,		/* the request was cancelled (handle freed) */
	PF_ETOOLARGE,		/* over a protocol or negotiated limit */
	PF_ESTATE,		/* too late / wrong order (edits + reject) */
	PF_ENOMEM,
	PF_ESYS,		/* a system call failed; see errno */
};
enum pf_errno	 pf_errno(const struct pf *);
const char	*pf_strerror(const struct pf *);

/* ---- helpers for reading a message ----------------------------------------- */

/* The n-th (from 1) header field called name (case-insensitive) of a message:
 * its raw value (after the colon and leading blanks, folds kept, without the
 * final line end) in *val and *vlen; 0, or -1 if there is none. */
int	pf_header(const char *msg, size_t len, const char *name, unsigned n,
	    const char **val, size_t *vlen);
/* Offset of the body (after the blank line ending the header), or len. */
size_t	pf_body_offset(const char *msg, size_t len);

#endif
