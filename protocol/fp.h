/* fp.h: the filter protocol v1 codec (see PROTOCOL.md), shared by the proxy
 * and the filter library; pure (no I/O), and the only code that knows msgpack. */
#ifndef FP_H
#define FP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FP_VERSION		1		/* the one version this codec speaks */
#define FP_DEFAULT_MAX_FRAME	(64u << 20)	/* 64 MiB */
#define FP_MIN_MAX_FRAME	(64u << 10)	/* every peer accepts 64 KiB frames */

/* Decode-side bounds; the encoder enforces the same ones, so we never send
 * what a conforming peer must refuse. Lengths are in octets. */
#define FP_MAX_NAME		256	/* header field name, tag, proxy/filter name */
#define FP_MAX_VALUE		65536	/* header field value */
#define FP_MAX_TEXT		4096	/* reason, notice, error message */
#define FP_MAX_SHORT		1024	/* session strings, uidl, error code */
#define FP_MAX_TAGS		32
#define FP_MAX_EDITS		1024
#define FP_MAX_LIST		64	/* versions and capability arrays */

/* ---- byte strings -------------------------------------------------------- */

/* (pointer, length). Decoded strings point into the reader's frame storage and
 * are NUL-terminated (ptr[len] == 0) although they may contain NULs where the
 * spec allows them. ptr == NULL means "absent" for optional fields. */
struct fp_str {
	const char	*ptr;
	size_t		 len;
};

#define FP_STR(lit)	((struct fp_str){ (lit), sizeof(lit) - 1 })
struct fp_str	fp_str_c(const char *s);		/* NULL -> absent */
bool		fp_str_eq(struct fp_str s, const char *c);	/* exact */

/* ---- growable output buffer ---------------------------------------------- */

struct fp_buf {		/* zero-initialise; fp_buf_free() when done */
	char	*data;
	size_t	 len, cap;
};

int	fp_buf_reserve(struct fp_buf *, size_t more);	/* room for len+more */
int	fp_buf_append(struct fp_buf *, const void *, size_t);
void	fp_buf_reset(struct fp_buf *);			/* len = 0, keeps memory */
void	fp_buf_free(struct fp_buf *);

/* ---- message contents ---------------------------------------------------- */

enum fp_msg_type {
	FP_MSG_NONE = 0,
	FP_MSG_HELLO,		/* proxy -> filter */
	FP_MSG_HELLO_ACK,	/* filter -> proxy */
	FP_MSG_REQUEST,		/* proxy -> filter */
	FP_MSG_VERDICT,		/* filter -> proxy */
	FP_MSG_ERROR,		/* both */
	FP_MSG_PING,		/* both */
	FP_MSG_PONG,		/* both */
	FP_MSG_CANCEL,		/* proxy -> filter */
	FP_MSG_DRAIN,		/* filter -> proxy */
};
const char	*fp_msg_type_name(enum fp_msg_type);	/* "hello", ... */

/* Capabilities, commands and actions share one bit space; on the wire each
 * is an array of these strings. Unknown strings are ignored on decode. */
#define FP_CAP_RETR		0x01u	/* "retr" */
#define FP_CAP_TOP		0x02u	/* "top" */
#define FP_CAP_EDIT_HEADERS	0x04u	/* "edit_headers" */
#define FP_CAP_REPLACE		0x08u	/* "replace" */
#define FP_CAP_REJECT		0x10u	/* "reject" */
#define FP_CAP_TEMPFAIL		0x20u	/* "tempfail" */
#define FP_CAP_CANCEL		0x40u	/* "cancel" */
#define FP_CAPS_COMMANDS	(FP_CAP_RETR | FP_CAP_TOP)
#define FP_CAPS_ACTIONS		(FP_CAP_EDIT_HEADERS | FP_CAP_REPLACE | \
				 FP_CAP_REJECT | FP_CAP_TEMPFAIL)

struct fp_hello {
	const uint32_t	*versions;	/* offered, non-empty */
	size_t		 nversions;
	struct fp_str	 proxy;		/* software name/version */
	uint32_t	 caps;		/* FP_CAP_*; must include RETR */
	uint32_t	 max_frame;	/* largest frame the proxy accepts */
	uint32_t	 max_inflight;	/* >= 1 */
};

struct fp_hello_ack {
	uint32_t	 version;	/* chosen from hello.versions */
	struct fp_str	 filter;
	uint32_t	 commands;	/* FP_CAPS_COMMANDS bits; must include RETR */
	uint32_t	 actions;	/* FP_CAPS_ACTIONS bits the filter may use */
	uint64_t	 max_message_size;	/* 0 = any */
	uint32_t	 max_frame;
	uint32_t	 max_inflight;	/* >= 1 */
};

struct fp_session {
	struct fp_str	 id, client, user, upstream_host;
	uint16_t	 upstream_port;
	bool		 tls_client, tls_upstream;
};

enum fp_command { FP_CMD_RETR = 1, FP_CMD_TOP };

struct fp_msginfo {
	uint64_t	 number;	/* message number in the maildrop */
	uint64_t	 size;		/* as LIST reported it */
	struct fp_str	 uidl;		/* ptr NULL: nil, the server has none */
	enum fp_command	 command;
	uint64_t	 top_lines;	/* only for FP_CMD_TOP */
};

struct fp_request {
	uint64_t		 id;
	uint32_t		 deadline_ms;
	struct fp_session	 session;
	struct fp_msginfo	 message;
	struct fp_str		 body;	/* unstuffed, no final ".CRLF" */
};

enum fp_action { FP_ACCEPT = 1, FP_REPLACE, FP_REJECT, FP_TEMPFAIL };
const char	*fp_action_name(enum fp_action);

enum fp_edit_op { FP_EDIT_ADD = 1, FP_EDIT_CHANGE, FP_EDIT_DELETE };

struct fp_edit {
	enum fp_edit_op	 op;
	struct fp_str	 name;
	struct fp_str	 value;		/* add/change; ignored for delete */
	uint32_t	 index;		/* change: >= 1; delete: 0 = all. The
					 * decoder fills the default 1. */
};

struct fp_verdict {
	uint64_t		 id;
	enum fp_action		 action;
	const struct fp_edit	*edits;		/* only with FP_ACCEPT */
	size_t			 nedits;
	struct fp_str		 body;		/* only (and required) with REPLACE */
	struct fp_str		 notice;	/* optional, REJECT's user text */
	struct fp_str		 quarantine_id;	/* optional, REJECT: the filter
						 * kept the original under this
						 * reference; absent: the proxy
						 * must keep it */
	struct fp_str		 reason;	/* optional, for the log */
	const struct fp_str	*tags;
	size_t			 ntags;
	bool			 has_score;
	double			 score;
};

/* Error codes (the "code" of an error frame, and fp_err.code). */
#define FP_E_VERSION		"version"
#define FP_E_BAD_FRAME		"bad_frame"
#define FP_E_TOO_LARGE		"too_large"
#define FP_E_UNKNOWN_ID		"unknown_id"
#define FP_E_NOT_GRANTED	"not_granted"
#define FP_E_BUSY		"busy"
#define FP_E_INTERNAL		"internal"
#define FP_E_TIMEOUT		"timeout"
#define FP_E_UNSUPPORTED	"unsupported"

struct fp_error {
	bool		 has_id;	/* false: about the connection */
	uint64_t	 id;
	struct fp_str	 code;		/* FP_E_*; receivers treat unknown
					 * codes as "internal" */
	struct fp_str	 message;	/* optional */
};

struct fp_id {			/* ping, pong, cancel */
	uint64_t	 id;
};

struct fp_drain {
	struct fp_str	 reason;	/* optional, for the log */
};

struct fp_msg {
	enum fp_msg_type	type;
	union {
		struct fp_hello		hello;
		struct fp_hello_ack	hello_ack;
		struct fp_request	request;
		struct fp_verdict	verdict;
		struct fp_error		error;
		struct fp_id		ping, pong, cancel;
		struct fp_drain		drain;
	};
};

/* Why a decode or a check failed. code is one of FP_E_*; the caller decides
 * what to send and whether to close, guided by fatal and has_id. */
struct fp_err {
	const char		*code;
	enum fp_msg_type	 type;		/* the frame's type, if known */
	bool			 fatal;		/* framing lost: close */
	bool			 has_id;	/* fail only request id */
	uint64_t		 id;
	char			 message[160];
};

/* ---- encoding -------------------------------------------------------------
 * Each call appends one complete frame (4-byte big-endian length + one map) to
 * the buffer and returns 0, or returns -1 (invalid contents or no memory) with
 * the buffer as it was. Contents are checked against the same rules the
 * decoder applies. */
int	fp_encode_hello(struct fp_buf *, const struct fp_hello *);
int	fp_encode_hello_ack(struct fp_buf *, const struct fp_hello_ack *);
int	fp_encode_request(struct fp_buf *, const struct fp_request *);
int	fp_encode_verdict(struct fp_buf *, const struct fp_verdict *);
int	fp_encode_error(struct fp_buf *, const struct fp_error *);
int	fp_encode_ping(struct fp_buf *, uint64_t id);
int	fp_encode_pong(struct fp_buf *, uint64_t id);
int	fp_encode_cancel(struct fp_buf *, uint64_t id);
int	fp_encode_drain(struct fp_buf *, const struct fp_drain *);	/* may be NULL */
int	fp_encode(struct fp_buf *, const struct fp_msg *);	/* dispatch */
/* The checks the encoder (and the decoder) apply, with the reason: lets a
 * filter author learn why a verdict would not be sent. 0 or -1. */
int	fp_msg_check(const struct fp_msg *, struct fp_err *);

/* Zero-copy bodies: body is always the last key, so these write the frame up
 * to and including the bin header, with a length prefix that already counts
 * body_len octets; the caller then sends those octets from its own memory.
 * The struct's body field is ignored. */
int	fp_encode_request_head(struct fp_buf *, const struct fp_request *,
	    size_t body_len);
int	fp_encode_verdict_head(struct fp_buf *, const struct fp_verdict *,
	    size_t body_len);	/* action must be FP_REPLACE */

/* The length field of an encoded frame (what the peer's max_frame bounds). */
uint32_t	fp_frame_len(const char *frame);

/* ---- decoding -------------------------------------------------------------
 * A frame reader. Feed bytes (copied) or recv() straight into its storage,
 * then call fp_reader_next() until it returns 0. A decoded message points
 * into the reader and is valid until the next fp_reader_* call. */
enum fp_role {
	FP_ROLE_ANY = 0,	/* decode every type (tools, tests) */
	FP_ROLE_PROXY,		/* I am the proxy: accept filter->proxy types */
	FP_ROLE_FILTER,		/* I am the filter: accept proxy->filter types */
};

struct fp_reader {		/* embeddable; fields are private */
	char		*buf;
	size_t		 start, end, cap;
	size_t		 taken;		/* bytes of the last frame, dropped
					 * on the next call */
	uint32_t	 max_frame;
	enum fp_role	 role;
	bool		 patched;	/* one byte after the frame NUL-ed */
	size_t		 patch_at;
	char		 patch_byte;
	bool		 dead;		/* after a fatal error */
	void		*zone;		/* msgpack_zone of the last frame */
};

void	 fp_reader_init(struct fp_reader *, uint32_t max_frame, enum fp_role);
void	 fp_reader_free(struct fp_reader *);
int	 fp_reader_feed(struct fp_reader *, const void *, size_t);	/* 0/-1 */
/* Writable space at the end of the buffered bytes (at least 1 octet, enough
 * for the whole current frame once its length is known and accepted); write
 * into it, then fp_reader_commit() what was written. NULL: no memory. */
char	*fp_reader_space(struct fp_reader *, size_t *avail);
void	 fp_reader_commit(struct fp_reader *, size_t n);
/* 1: *out holds the next message. 0: need more bytes. -1: *err says why;
 * non-fatal errors consumed the offending frame, and the next call goes on
 * with the following one; after a fatal one every call returns it again. */
int	 fp_reader_next(struct fp_reader *, struct fp_msg *out, struct fp_err *err);
size_t	 fp_reader_buffered(const struct fp_reader *);	/* undecoded bytes */

/* ---- shared semantics ---------------------------------------------------- */

/* The parameters of an established connection, computed identically by both
 * sides from the hello sent/received and the hello_ack received/sent. */
struct fp_params {
	uint32_t	 version;
	uint32_t	 commands;	/* ack.commands & hello.caps */
	uint32_t	 actions;	/* granted: ack.actions & hello.caps */
	uint32_t	 window;	/* min(max_inflight) */
	uint32_t	 proxy_max_frame;	/* the filter sends at most this */
	uint32_t	 filter_max_frame;	/* the proxy sends at most this */
	uint64_t	 max_message_size;	/* 0 = any */
};

/* Filter side: the version to put in hello_ack, 0 if there is no common one
 * (then send error "version" and close). */
uint32_t fp_version_choose(const struct fp_hello *);
/* Both sides: 0 and *p filled, or -1 with err ("version": send error
 * "version" and close; "unsupported": the filter wants no command we offer). */
int	 fp_negotiate(const struct fp_hello *, const struct fp_hello_ack *,
	    struct fp_params *p, struct fp_err *err);
/* 0 if the verdict only uses granted actions, else -1 with "not_granted"
 * (fail that request only). */
int	 fp_verdict_check(const struct fp_verdict *, uint32_t granted,
	    struct fp_err *err);

/* One edit's syntax (name, value, index); NULL if valid, else why. */
const char	*fp_edit_invalid(const struct fp_edit *);
/* Apply header edits in order to a message (CRLF, bare LF tolerated) and
 * append the result to out: 0, or -1 (invalid edit, no memory) with out as
 * it was. */
int	 fp_apply_edits(const char *msg, size_t len, const struct fp_edit *,
	    size_t n, struct fp_buf *out);

#endif
