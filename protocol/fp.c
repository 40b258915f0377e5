/* fp.c: filter protocol v1 messages: the field tables that drive encoding,
 * validation and decoding, the frame reader, and version negotiation. */
#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "fp.h"

#define FP_READ_CHUNK	16384		/* recv() size before a length is known */
#define FP_SHRINK_ABOVE	(1u << 20)	/* drop an idle reader buffer above this */
#define FP_MAX_DEPTH	8		/* container nesting in one frame */
#define FP_MAX_OBJECTS	65536		/* msgpack objects in one frame */

static_assert(sizeof(enum fp_action) == sizeof(int), "enums stored as int");
static_assert(sizeof(enum fp_command) == sizeof(int), "enums stored as int");
static_assert(sizeof(enum fp_edit_op) == sizeof(int), "enums stored as int");

/* ---- small helpers ------------------------------------------------------- */

struct fp_str
fp_str_c(const char *s)
{
	return (struct fp_str){ s, s ? strlen(s) : 0 };
}

bool
fp_str_eq(struct fp_str s, const char *c)
{
	size_t n = strlen(c);

	return s.ptr != NULL && s.len == n && memcmp(s.ptr, c, n) == 0;
}

__attribute__((format(printf, 3, 4)))
static int
fail(struct fp_err *err, const char *code, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL)
		return -1;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return -1;
}

static void
err_init(struct fp_err *err)
{
	if (err != NULL)
		memset(err, 0, sizeof(*err));
}

int
fp_buf_reserve(struct fp_buf *b, size_t more)
{
	size_t want, ncap;
	char *p;

	if (more > SIZE_MAX - b->len)
		return -1;
	want = b->len + more;
	if (want <= b->cap)
		return 0;
	ncap = b->cap < 256 ? 256 : b->cap;
	while (ncap < want)
		ncap = ncap > SIZE_MAX / 2 ? want : ncap * 2;
	if ((p = realloc(b->data, ncap)) == NULL)
		return -1;
	b->data = p;
	b->cap = ncap;
	return 0;
}

int
fp_buf_append(struct fp_buf *b, const void *data, size_t len)
{
	if (len == 0)
		return 0;
	if (fp_buf_reserve(b, len) == -1)
		return -1;
	memcpy(b->data + b->len, data, len);
	b->len += len;
	return 0;
}

void
fp_buf_reset(struct fp_buf *b)
{
	b->len = 0;
}

void
fp_buf_free(struct fp_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

static uint32_t
be32_get(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;

	return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 |
	    (uint32_t)u[2] << 8 | u[3];
}

uint32_t
fp_frame_len(const char *frame)
{
	return be32_get(frame);
}

/* ---- the field tables ----------------------------------------------------
 * One table per map describes each key once; the same description drives
 * the decoder (types, presence), the validator (bounds, cross-field rules,
 * run on both directions) and the encoder (key order, presence). */

enum kind {
	K_UINT,		/* width 2/4/8 at off; max bounds it */
	K_STR,		/* struct fp_str; max bounds the length */
	K_STR_NIL,	/* struct fp_str, nil when ptr == NULL; always sent */
	K_BOOL,
	K_BIN,		/* struct fp_str; must be the table's last field */
	K_CAPS,		/* uint32_t bits; array of names, mask restricts */
	K_VERSIONS,	/* const uint32_t * at off, size_t count at aux */
	K_TAGS,		/* const struct fp_str * at off, size_t at aux */
	K_EDITS,	/* const struct fp_edit * at off, size_t at aux */
	K_ENUM,		/* int at off, 1 + index into names */
	K_NUMBER,	/* double at off, bool has-flag at aux */
	K_MAP,		/* nested struct at off, described by sub */
};

#define F_REQ	0x01	/* required key */
#define F_HAS	0x02	/* optional K_UINT: bool has-flag at aux */
#define F_CLAMP	0x04	/* K_UINT: larger values are clamped, not refused */
#define F_DEF	0x08	/* K_UINT: absent means def */

struct table;
struct field {
	const char		*key;
	enum kind		 kind;
	unsigned		 flags;
	unsigned		 width;
	size_t			 off, aux;
	uint64_t		 max;
	uint64_t		 def;
	const char *const	*names;		/* K_ENUM */
	size_t			 nnames;
	uint32_t		 mask;		/* K_CAPS */
	const struct table	*sub;		/* K_MAP, K_EDITS */
	/* Conditional presence (sent iff true; then required unless F_DEF). */
	bool			(*present)(const void *obj);
};

struct table {
	const char		*what;
	const struct field	*f;
	size_t			 n;
	size_t			 size;
	int			(*check)(const void *obj, struct fp_err *);
};

static const char *const cap_names[] = {
	"retr", "top", "edit_headers", "replace", "reject", "tempfail", "cancel",
};
static const char *const action_names[] = {
	"accept", "replace", "reject", "tempfail",
};
static const char *const command_names[] = { "RETR", "TOP" };
static const char *const op_names[] = { "add", "change", "delete" };
#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

const char *
fp_action_name(enum fp_action a)
{
	return a >= 1 && (size_t)a <= NELEM(action_names) ?
	    action_names[a - 1] : "?";
}

/* -- cross-field rules, shared by both directions -- */

/* Both hellos: "retr" must be on offer, and the limits must be usable. */
static int
check_limits(const char *what, uint32_t retr, uint32_t max_frame,
    uint32_t max_inflight, struct fp_err *err)
{
	if (!(retr & FP_CAP_RETR))
		return fail(err, FP_E_BAD_FRAME, "%s: \"retr\" missing", what);
	if (max_frame < FP_MIN_MAX_FRAME)
		return fail(err, FP_E_BAD_FRAME, "%s: max_frame %u below %u",
		    what, max_frame, FP_MIN_MAX_FRAME);
	if (max_inflight == 0)
		return fail(err, FP_E_BAD_FRAME, "%s: max_inflight is 0", what);
	return 0;
}

static int
check_hello(const void *obj, struct fp_err *err)
{
	const struct fp_hello *h = obj;

	return check_limits("hello", h->caps, h->max_frame, h->max_inflight,
	    err);
}

static int
check_hello_ack(const void *obj, struct fp_err *err)
{
	const struct fp_hello_ack *a = obj;

	if (a->version == 0)
		return fail(err, FP_E_BAD_FRAME, "hello_ack: version 0");
	return check_limits("hello_ack", a->commands, a->max_frame,
	    a->max_inflight, err);
}

static int
check_verdict(const void *obj, struct fp_err *err)
{
	const struct fp_verdict *v = obj;

	if (v->action == FP_REPLACE && v->body.ptr == NULL)
		return fail(err, FP_E_BAD_FRAME, "verdict: replace without body");
	if (v->action != FP_REPLACE && v->body.ptr != NULL)
		return fail(err, FP_E_BAD_FRAME, "verdict: body with %s",
		    fp_action_name(v->action));
	if (v->action != FP_REJECT && v->quarantine_id.ptr != NULL)
		return fail(err, FP_E_BAD_FRAME, "verdict: quarantine_id with %s",
		    fp_action_name(v->action));
	if (v->action != FP_ACCEPT && v->nedits > 0)
		return fail(err, FP_E_BAD_FRAME, "verdict: edits with %s",
		    fp_action_name(v->action));
	return 0;
}

static int
check_edit(const void *obj, struct fp_err *err)
{
	const char *why = fp_edit_invalid(obj);

	return why ? fail(err, FP_E_BAD_FRAME, "edit: %s", why) : 0;
}

static bool
is_top(const void *obj)
{
	return ((const struct fp_msginfo *)obj)->command == FP_CMD_TOP;
}

static bool
edit_has_value(const void *obj)
{
	return ((const struct fp_edit *)obj)->op != FP_EDIT_DELETE;
}

static bool
edit_has_index(const void *obj)
{
	return ((const struct fp_edit *)obj)->op != FP_EDIT_ADD;
}

static bool
is_replace(const void *obj)
{
	return ((const struct fp_verdict *)obj)->action == FP_REPLACE;
}

#define U(st, k, fl, w, mx)	{ .key = #k, .kind = K_UINT, .flags = fl, \
	.width = w, .off = offsetof(st, k), .max = mx }
#define S(st, k, fl, mx)	{ .key = #k, .kind = K_STR, .flags = fl, \
	.off = offsetof(st, k), .max = mx }

#define FIELDS(a)	a, NELEM(a)

static const struct field hello_f[] = {
	{ .key = "versions", .kind = K_VERSIONS, .flags = F_REQ,
	  .off = offsetof(struct fp_hello, versions),
	  .aux = offsetof(struct fp_hello, nversions), .max = FP_MAX_LIST },
	S(struct fp_hello, proxy, F_REQ, FP_MAX_NAME),
	{ .key = "capabilities", .kind = K_CAPS, .flags = F_REQ,
	  .off = offsetof(struct fp_hello, caps), .mask = ~0u },
	U(struct fp_hello, max_frame, F_REQ | F_CLAMP, 4, UINT32_MAX),
	U(struct fp_hello, max_inflight, F_REQ | F_CLAMP, 4, UINT32_MAX),
};
static const struct table hello_tab = { "hello", FIELDS(hello_f),
	sizeof(struct fp_hello), check_hello };

static const struct field hello_ack_f[] = {
	U(struct fp_hello_ack, version, F_REQ, 4, UINT32_MAX),
	S(struct fp_hello_ack, filter, F_REQ, FP_MAX_NAME),
	{ .key = "commands", .kind = K_CAPS, .flags = F_REQ,
	  .off = offsetof(struct fp_hello_ack, commands),
	  .mask = FP_CAPS_COMMANDS },
	{ .key = "actions", .kind = K_CAPS, .flags = F_REQ,
	  .off = offsetof(struct fp_hello_ack, actions),
	  .mask = FP_CAPS_ACTIONS },
	U(struct fp_hello_ack, max_message_size, F_REQ, 8, UINT64_MAX),
	U(struct fp_hello_ack, max_frame, F_REQ | F_CLAMP, 4, UINT32_MAX),
	U(struct fp_hello_ack, max_inflight, F_REQ | F_CLAMP, 4, UINT32_MAX),
};
static const struct table hello_ack_tab = { "hello_ack", FIELDS(hello_ack_f),
	sizeof(struct fp_hello_ack), check_hello_ack };

static const struct field session_f[] = {
	S(struct fp_session, id, F_REQ, FP_MAX_SHORT),
	S(struct fp_session, client, F_REQ, FP_MAX_SHORT),
	S(struct fp_session, user, F_REQ, FP_MAX_SHORT),
	S(struct fp_session, upstream_host, F_REQ, FP_MAX_SHORT),
	U(struct fp_session, upstream_port, F_REQ, 2, UINT16_MAX),
	{ .key = "tls_client", .kind = K_BOOL, .flags = F_REQ,
	  .off = offsetof(struct fp_session, tls_client) },
	{ .key = "tls_upstream", .kind = K_BOOL, .flags = F_REQ,
	  .off = offsetof(struct fp_session, tls_upstream) },
};
static const struct table session_tab = { "session", FIELDS(session_f),
	sizeof(struct fp_session), NULL };

static const struct field msginfo_f[] = {
	U(struct fp_msginfo, number, F_REQ, 8, UINT64_MAX),
	U(struct fp_msginfo, size, F_REQ, 8, UINT64_MAX),
	{ .key = "uidl", .kind = K_STR_NIL,
	  .off = offsetof(struct fp_msginfo, uidl), .max = FP_MAX_SHORT },
	{ .key = "command", .kind = K_ENUM, .flags = F_REQ,
	  .off = offsetof(struct fp_msginfo, command),
	  .names = command_names, .nnames = NELEM(command_names) },
	{ .key = "top_lines", .kind = K_UINT, .width = 8,
	  .off = offsetof(struct fp_msginfo, top_lines), .max = UINT64_MAX,
	  .present = is_top },
};
static const struct table msginfo_tab = { "message", FIELDS(msginfo_f),
	sizeof(struct fp_msginfo), NULL };

static const struct field request_f[] = {
	U(struct fp_request, id, F_REQ, 8, UINT64_MAX),
	U(struct fp_request, deadline_ms, F_REQ | F_CLAMP, 4, UINT32_MAX),
	{ .key = "session", .kind = K_MAP, .flags = F_REQ,
	  .off = offsetof(struct fp_request, session), .sub = &session_tab },
	{ .key = "message", .kind = K_MAP, .flags = F_REQ,
	  .off = offsetof(struct fp_request, message), .sub = &msginfo_tab },
	{ .key = "body", .kind = K_BIN, .flags = F_REQ,
	  .off = offsetof(struct fp_request, body) },
};
static const struct table request_tab = { "request", FIELDS(request_f),
	sizeof(struct fp_request), NULL };

static const struct field edit_f[] = {
	{ .key = "op", .kind = K_ENUM, .flags = F_REQ,
	  .off = offsetof(struct fp_edit, op),
	  .names = op_names, .nnames = NELEM(op_names) },
	S(struct fp_edit, name, F_REQ, FP_MAX_NAME),
	{ .key = "value", .kind = K_STR, .off = offsetof(struct fp_edit, value),
	  .max = FP_MAX_VALUE, .present = edit_has_value },
	{ .key = "index", .kind = K_UINT, .flags = F_DEF, .width = 4,
	  .off = offsetof(struct fp_edit, index), .max = UINT32_MAX, .def = 1,
	  .present = edit_has_index },
};
static const struct table edit_tab = { "edit", FIELDS(edit_f),
	sizeof(struct fp_edit), check_edit };

static const struct field verdict_f[] = {
	U(struct fp_verdict, id, F_REQ, 8, UINT64_MAX),
	{ .key = "action", .kind = K_ENUM, .flags = F_REQ,
	  .off = offsetof(struct fp_verdict, action),
	  .names = action_names, .nnames = NELEM(action_names) },
	{ .key = "edits", .kind = K_EDITS,
	  .off = offsetof(struct fp_verdict, edits),
	  .aux = offsetof(struct fp_verdict, nedits), .max = FP_MAX_EDITS,
	  .sub = &edit_tab },
	S(struct fp_verdict, notice, 0, FP_MAX_TEXT),
	S(struct fp_verdict, quarantine_id, 0, FP_MAX_SHORT),
	S(struct fp_verdict, reason, 0, FP_MAX_TEXT),
	{ .key = "tags", .kind = K_TAGS, .off = offsetof(struct fp_verdict, tags),
	  .aux = offsetof(struct fp_verdict, ntags), .max = FP_MAX_TAGS },
	{ .key = "score", .kind = K_NUMBER,
	  .off = offsetof(struct fp_verdict, score),
	  .aux = offsetof(struct fp_verdict, has_score) },
	{ .key = "body", .kind = K_BIN, .off = offsetof(struct fp_verdict, body),
	  .present = is_replace },
};
static const struct table verdict_tab = { "verdict", FIELDS(verdict_f),
	sizeof(struct fp_verdict), check_verdict };

static const struct field error_f[] = {
	{ .key = "id", .kind = K_UINT, .flags = F_HAS, .width = 8,
	  .off = offsetof(struct fp_error, id),
	  .aux = offsetof(struct fp_error, has_id), .max = UINT64_MAX },
	S(struct fp_error, code, F_REQ, FP_MAX_SHORT),
	S(struct fp_error, message, 0, FP_MAX_TEXT),
};
static const struct table error_tab = { "error", FIELDS(error_f),
	sizeof(struct fp_error), NULL };

static const struct field id_f[] = {
	U(struct fp_id, id, F_REQ, 8, UINT64_MAX),
};
static const struct table id_tab = { "id", FIELDS(id_f), sizeof(struct fp_id), NULL };

static const struct field drain_f[] = {
	S(struct fp_drain, reason, 0, FP_MAX_TEXT),
};
static const struct table drain_tab = { "drain", FIELDS(drain_f),
	sizeof(struct fp_drain), NULL };

#define P2F	1u	/* sent by the proxy */
#define F2P	2u	/* sent by the filter */

static const struct msgdef {
	const char		*name;
	const struct table	*t;
	unsigned		 dir;
	bool			 id_scoped;	/* an error in it fails that id */
} msgdefs[] = {
	[FP_MSG_HELLO]		= { "hello", &hello_tab, P2F, false },
	[FP_MSG_HELLO_ACK]	= { "hello_ack", &hello_ack_tab, F2P, false },
	[FP_MSG_REQUEST]	= { "request", &request_tab, P2F, true },
	[FP_MSG_VERDICT]	= { "verdict", &verdict_tab, F2P, true },
	[FP_MSG_ERROR]		= { "error", &error_tab, P2F | F2P, false },
	[FP_MSG_PING]		= { "ping", &id_tab, P2F | F2P, false },
	[FP_MSG_PONG]		= { "pong", &id_tab, P2F | F2P, false },
	[FP_MSG_CANCEL]		= { "cancel", &id_tab, P2F, false },
	[FP_MSG_DRAIN]		= { "drain", &drain_tab, F2P, false },
};

const char *
fp_msg_type_name(enum fp_msg_type t)
{
	return t > FP_MSG_NONE && (size_t)t < NELEM(msgdefs) ?
	    msgdefs[t].name : "?";
}

/* -- typed access to a field inside its struct -- */

#define AT(obj, off, T)		((T *)(void *)((char *)(obj) + (off)))
#define CAT(obj, off, T)	((const T *)(const void *)((const char *)(obj) + (off)))

static uint64_t
uint_get(const void *obj, const struct field *f)
{
	switch (f->width) {
	case 2:	return *CAT(obj, f->off, uint16_t);
	case 4:	return *CAT(obj, f->off, uint32_t);
	default: return *CAT(obj, f->off, uint64_t);
	}
}

static void
uint_set(void *obj, const struct field *f, uint64_t v)
{
	switch (f->width) {
	case 2:	*AT(obj, f->off, uint16_t) = (uint16_t)v; break;
	case 4:	*AT(obj, f->off, uint32_t) = (uint32_t)v; break;
	default: *AT(obj, f->off, uint64_t) = v; break;
	}
}

static uint64_t
width_max(const struct field *f)
{
	return f->width == 2 ? UINT16_MAX : f->width == 4 ? UINT32_MAX :
	    UINT64_MAX;
}

/* Whether the encoder sends the field (and the validator checks it). */
static bool
field_present(const void *obj, const struct field *f)
{
	if (f->present != NULL)
		return f->present(obj);
	switch (f->kind) {
	case K_STR:
	case K_BIN:
		return (f->flags & F_REQ) || CAT(obj, f->off, struct fp_str)->ptr;
	case K_UINT:
		return !(f->flags & F_HAS) || *CAT(obj, f->aux, bool);
	case K_NUMBER:
		return *CAT(obj, f->aux, bool);
	case K_TAGS:
	case K_EDITS:
		return (f->flags & F_REQ) || *CAT(obj, f->aux, size_t) > 0;
	default:
		return true;
	}
}

/* ---- validation (both directions) ---------------------------------------- */

static int validate(const struct table *, const void *, struct fp_err *);

static int
validate_field(const void *obj, const struct field *f, const char *what,
    struct fp_err *err)
{
	const struct fp_str *s;
	size_t i, n;
	uint64_t v;
	int e;

	switch (f->kind) {
	case K_UINT:
		if ((v = uint_get(obj, f)) > f->max)
			return fail(err, FP_E_BAD_FRAME, "%s.%s: %llu out of range",
			    what, f->key, (unsigned long long)v);
		return 0;
	case K_STR:
	case K_STR_NIL:
		s = CAT(obj, f->off, struct fp_str);
		if (s->ptr == NULL && f->kind == K_STR)
			return fail(err, FP_E_BAD_FRAME, "%s.%s: missing", what,
			    f->key);
		if (s->len > f->max)
			return fail(err, FP_E_BAD_FRAME, "%s.%s: %zu octets, limit %llu",
			    what, f->key, s->len, (unsigned long long)f->max);
		return 0;
	case K_BIN:
		s = CAT(obj, f->off, struct fp_str);
		if (s->ptr == NULL)
			return fail(err, FP_E_BAD_FRAME, "%s.%s: missing", what,
			    f->key);
		return 0;
	case K_VERSIONS:
		n = *CAT(obj, f->aux, size_t);
		if (n == 0 || n > f->max || *CAT(obj, f->off, const uint32_t *) == NULL)
			return fail(err, FP_E_BAD_FRAME, "%s.%s: %zu entries",
			    what, f->key, n);
		for (i = 0; i < n; i++)
			if ((*CAT(obj, f->off, const uint32_t *))[i] == 0)
				return fail(err, FP_E_BAD_FRAME, "%s.%s: version 0",
				    what, f->key);
		return 0;
	case K_TAGS:
		n = *CAT(obj, f->aux, size_t);
		if (n > f->max)
			return fail(err, FP_E_BAD_FRAME, "%s.%s: %zu entries, limit %llu",
			    what, f->key, n, (unsigned long long)f->max);
		s = *CAT(obj, f->off, const struct fp_str *);
		for (i = 0; i < n; i++)
			if (s[i].ptr == NULL || s[i].len > FP_MAX_NAME)
				return fail(err, FP_E_BAD_FRAME, "%s.%s[%zu]: bad tag",
				    what, f->key, i);
		return 0;
	case K_EDITS:
		n = *CAT(obj, f->aux, size_t);
		if (n > f->max)
			return fail(err, FP_E_BAD_FRAME, "%s.%s: %zu entries, limit %llu",
			    what, f->key, n, (unsigned long long)f->max);
		for (i = 0; i < n; i++)
			if (validate(f->sub,
			    *CAT(obj, f->off, const struct fp_edit *) + i, err) == -1)
				return -1;
		return 0;
	case K_ENUM:
		e = *CAT(obj, f->off, int);
		if (e < 1 || (size_t)e > f->nnames)
			return fail(err, FP_E_BAD_FRAME, "%s.%s: invalid value %d",
			    what, f->key, e);
		return 0;
	case K_NUMBER:
		if (!isfinite(*CAT(obj, f->off, double)))
			return fail(err, FP_E_BAD_FRAME, "%s.%s: not finite", what,
			    f->key);
		return 0;
	case K_MAP:
		return validate(f->sub, CAT(obj, f->off, char), err);
	case K_BOOL:
	case K_CAPS:
		return 0;
	}
	return 0;
}

static int
validate(const struct table *t, const void *obj, struct fp_err *err)
{
	size_t i;

	for (i = 0; i < t->n; i++)
		if (field_present(obj, &t->f[i]) &&
		    validate_field(obj, &t->f[i], t->what, err) == -1)
			return -1;
	return t->check ? t->check(obj, err) : 0;
}

int
fp_msg_check(const struct fp_msg *m, struct fp_err *err)
{
	err_init(err);
	if (m->type <= FP_MSG_NONE || (size_t)m->type >= NELEM(msgdefs))
		return fail(err, FP_E_UNSUPPORTED, "unknown message type %d",
		    (int)m->type);
	if (err)
		err->type = m->type;
	return validate(msgdefs[m->type].t, &m->hello, err);
}

/* ---- encoding ------------------------------------------------------------ */

struct enc {
	struct fp_buf	*b;
	bool		 failed;
	bool		 head;		/* stop after the body's bin header */
	msgpack_packer	 pk;
};

static int
enc_write(void *data, const char *buf, size_t len)
{
	struct enc *e = data;

	if (fp_buf_append(e->b, buf, len) == -1) {
		e->failed = true;
		return -1;
	}
	return 0;
}

static void
enc_str(struct enc *e, const char *p, size_t len)
{
	msgpack_pack_str(&e->pk, len);
	msgpack_pack_str_body(&e->pk, p, len);
}

static void
enc_cstr(struct enc *e, const char *s)
{
	enc_str(e, s, strlen(s));
}

static void enc_map(struct enc *, const struct table *, const void *,
    const char *type);

static void
enc_caps(struct enc *e, uint32_t bits)
{
	size_t i, n = 0;

	for (i = 0; i < NELEM(cap_names); i++)
		n += (bits >> i) & 1;
	msgpack_pack_array(&e->pk, n);
	for (i = 0; i < NELEM(cap_names); i++)
		if ((bits >> i) & 1)
			enc_cstr(e, cap_names[i]);
}

static void
enc_field(struct enc *e, const void *obj, const struct field *f)
{
	const struct fp_str *s;
	size_t i, n;

	enc_cstr(e, f->key);
	switch (f->kind) {
	case K_UINT:
		msgpack_pack_uint64(&e->pk, uint_get(obj, f));
		break;
	case K_STR:
	case K_STR_NIL:
		s = CAT(obj, f->off, struct fp_str);
		if (s->ptr == NULL)
			msgpack_pack_nil(&e->pk);
		else
			enc_str(e, s->ptr, s->len);
		break;
	case K_BOOL:
		if (*CAT(obj, f->off, bool))
			msgpack_pack_true(&e->pk);
		else
			msgpack_pack_false(&e->pk);
		break;
	case K_BIN:
		s = CAT(obj, f->off, struct fp_str);
		msgpack_pack_bin(&e->pk, s->len);
		if (!e->head)
			msgpack_pack_bin_body(&e->pk, s->ptr, s->len);
		break;
	case K_CAPS:
		enc_caps(e, *CAT(obj, f->off, uint32_t) & f->mask);
		break;
	case K_VERSIONS:
		n = *CAT(obj, f->aux, size_t);
		msgpack_pack_array(&e->pk, n);
		for (i = 0; i < n; i++)
			msgpack_pack_uint32(&e->pk,
			    (*CAT(obj, f->off, const uint32_t *))[i]);
		break;
	case K_TAGS:
		n = *CAT(obj, f->aux, size_t);
		s = *CAT(obj, f->off, const struct fp_str *);
		msgpack_pack_array(&e->pk, n);
		for (i = 0; i < n; i++)
			enc_str(e, s[i].ptr, s[i].len);
		break;
	case K_EDITS:
		n = *CAT(obj, f->aux, size_t);
		msgpack_pack_array(&e->pk, n);
		for (i = 0; i < n; i++)
			enc_map(e, f->sub,
			    *CAT(obj, f->off, const struct fp_edit *) + i, NULL);
		break;
	case K_ENUM:
		enc_cstr(e, f->names[*CAT(obj, f->off, int) - 1]);
		break;
	case K_NUMBER:
		msgpack_pack_double(&e->pk, *CAT(obj, f->off, double));
		break;
	case K_MAP:
		enc_map(e, f->sub, CAT(obj, f->off, char), NULL);
		break;
	}
}

static void
enc_map(struct enc *e, const struct table *t, const void *obj, const char *type)
{
	size_t i, n = type ? 1 : 0;

	for (i = 0; i < t->n; i++)
		n += field_present(obj, &t->f[i]);
	msgpack_pack_map(&e->pk, n);
	if (type) {
		enc_cstr(e, "type");
		enc_cstr(e, type);
	}
	for (i = 0; i < t->n; i++)
		if (field_present(obj, &t->f[i]))
			enc_field(e, obj, &t->f[i]);
}

/* Appends one frame; extra is what the caller sends after it (head mode). */
static int
encode(struct fp_buf *b, enum fp_msg_type type, const void *obj, bool head,
    size_t extra)
{
	const struct msgdef *d = &msgdefs[type];
	struct enc e = { .b = b, .head = head };
	size_t start = b->len;
	uint64_t flen;
	char *p;

	if (validate(d->t, obj, NULL) == -1)
		return -1;
	msgpack_packer_init(&e.pk, &e, enc_write);
	if (fp_buf_append(b, "\0\0\0\0", 4) == -1)
		return -1;
	enc_map(&e, d->t, obj, d->name);
	flen = (uint64_t)(b->len - start - 4) + extra;
	if (e.failed || flen > UINT32_MAX) {
		b->len = start;
		return -1;
	}
	p = b->data + start;
	p[0] = (char)(flen >> 24);
	p[1] = (char)(flen >> 16);
	p[2] = (char)(flen >> 8);
	p[3] = (char)flen;
	return 0;
}

int
fp_encode_hello(struct fp_buf *b, const struct fp_hello *h)
{
	return encode(b, FP_MSG_HELLO, h, false, 0);
}

int
fp_encode_hello_ack(struct fp_buf *b, const struct fp_hello_ack *a)
{
	return encode(b, FP_MSG_HELLO_ACK, a, false, 0);
}

int
fp_encode_request(struct fp_buf *b, const struct fp_request *r)
{
	return encode(b, FP_MSG_REQUEST, r, false, 0);
}

int
fp_encode_request_head(struct fp_buf *b, const struct fp_request *r,
    size_t body_len)
{
	struct fp_request h = *r;

	/* The body's bytes are never read here; only its length counts. */
	h.body = (struct fp_str){ "", body_len };
	return encode(b, FP_MSG_REQUEST, &h, true, body_len);
}

int
fp_encode_verdict(struct fp_buf *b, const struct fp_verdict *v)
{
	return encode(b, FP_MSG_VERDICT, v, false, 0);
}

int
fp_encode_verdict_head(struct fp_buf *b, const struct fp_verdict *v,
    size_t body_len)
{
	struct fp_verdict h = *v;

	if (v->action != FP_REPLACE)
		return -1;
	h.body = (struct fp_str){ "", body_len };
	return encode(b, FP_MSG_VERDICT, &h, true, body_len);
}

int
fp_encode_error(struct fp_buf *b, const struct fp_error *er)
{
	return encode(b, FP_MSG_ERROR, er, false, 0);
}

int
fp_encode_ping(struct fp_buf *b, uint64_t id)
{
	struct fp_id m = { id };

	return encode(b, FP_MSG_PING, &m, false, 0);
}

int
fp_encode_pong(struct fp_buf *b, uint64_t id)
{
	struct fp_id m = { id };

	return encode(b, FP_MSG_PONG, &m, false, 0);
}

int
fp_encode_cancel(struct fp_buf *b, uint64_t id)
{
	struct fp_id m = { id };

	return encode(b, FP_MSG_CANCEL, &m, false, 0);
}

int
fp_encode_drain(struct fp_buf *b, const struct fp_drain *d)
{
	struct fp_drain none = { { NULL, 0 } };

	return encode(b, FP_MSG_DRAIN, d ? d : &none, false, 0);
}

int
fp_encode(struct fp_buf *b, const struct fp_msg *m)
{
	if (m->type <= FP_MSG_NONE || (size_t)m->type >= NELEM(msgdefs))
		return -1;
	return encode(b, m->type, &m->hello, false, 0);
}

/* ---- structural pre-scan -------------------------------------------------
 * msgpack-c allocates n * sizeof(msgpack_object) as soon as it reads an
 * array or map header, so a 5-octet frame claiming 2^32 elements would make
 * it ask for 64 GiB. Before unpacking, walk the frame once (skipping str and
 * bin payloads, so this is not per-byte work) and refuse any container that
 * claims more elements than octets remain, nesting deeper than FP_MAX_DEPTH,
 * more than FP_MAX_OBJECTS objects, truncation, and trailing octets. */

struct scan {
	const unsigned char	*p, *end;
	size_t			 objects;
	const char		*why;
};

static uint64_t
scan_be(struct scan *s, size_t n)
{
	uint64_t v = 0;

	if ((size_t)(s->end - s->p) < n) {
		s->why = "truncated";
		return 0;
	}
	while (n-- > 0)
		v = v << 8 | *s->p++;
	return v;
}

static int
scan_skip(struct scan *s, uint64_t n)
{
	if (s->why)
		return -1;
	if ((uint64_t)(s->end - s->p) < n) {
		s->why = "truncated";
		return -1;
	}
	s->p += n;
	return 0;
}

static int
scan_obj(struct scan *s, int depth)
{
	unsigned b;
	uint64_t n, i;

	if (s->p >= s->end) {
		s->why = "truncated";
		return -1;
	}
	if (++s->objects > FP_MAX_OBJECTS) {
		s->why = "too many objects";
		return -1;
	}
	b = *s->p++;
	if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
		return 0;
	if ((b & 0xe0) == 0xa0)
		return scan_skip(s, b & 0x1f);
	switch (b) {
	case 0xc4: case 0xd9: n = scan_be(s, 1); return scan_skip(s, n);
	case 0xc5: case 0xda: n = scan_be(s, 2); return scan_skip(s, n);
	case 0xc6: case 0xdb: n = scan_be(s, 4); return scan_skip(s, n);
	case 0xc7: n = scan_be(s, 1); return scan_skip(s, n + 1);
	case 0xc8: n = scan_be(s, 2); return scan_skip(s, n + 1);
	case 0xc9: n = scan_be(s, 4); return scan_skip(s, n + 1);
	case 0xca: return scan_skip(s, 4);
	case 0xcb: return scan_skip(s, 8);
	case 0xcc: case 0xd0: return scan_skip(s, 1);
	case 0xcd: case 0xd1: return scan_skip(s, 2);
	case 0xce: case 0xd2: return scan_skip(s, 4);
	case 0xcf: case 0xd3: return scan_skip(s, 8);
	case 0xd4: return scan_skip(s, 2);
	case 0xd5: return scan_skip(s, 3);
	case 0xd6: return scan_skip(s, 5);
	case 0xd7: return scan_skip(s, 9);
	case 0xd8: return scan_skip(s, 17);
	case 0xc1:
		s->why = "reserved type octet 0xc1";
		return -1;
	}
	/* Containers remain: fixmap, fixarray, array16/32, map16/32. */
	if ((b & 0xf0) == 0x80)
		n = 2 * (uint64_t)(b & 0x0f);
	else if ((b & 0xf0) == 0x90)
		n = b & 0x0f;
	else if (b == 0xdc)
		n = scan_be(s, 2);
	else if (b == 0xdd)
		n = scan_be(s, 4);
	else if (b == 0xde)
		n = 2 * scan_be(s, 2);
	else
		n = 2 * scan_be(s, 4);
	if (s->why)
		return -1;
	if (depth >= FP_MAX_DEPTH) {
		s->why = "nested too deeply";
		return -1;
	}
	if (n > (uint64_t)(s->end - s->p)) {
		s->why = "container larger than the frame";
		return -1;
	}
	for (i = 0; i < n; i++)
		if (scan_obj(s, depth + 1) == -1)
			return -1;
	return 0;
}

/* ---- decoding ------------------------------------------------------------ */

struct dec {
	char		*lo, *hi;	/* the frame's msgpack octets */
	msgpack_zone	*zone;
	struct fp_err	*err;
};

/* Strings point into the frame. The octet after a str payload is the next
 * object's type octet (already parsed) or the octet after the frame (saved by
 * the reader), so it can become the string's NUL terminator. */
static int
dec_str(struct dec *d, const msgpack_object *o, struct fp_str *out,
    const char *key)
{
	char *p = (char *)(uintptr_t)o->via.str.ptr;

	if (p < d->lo || p > d->hi || (size_t)(d->hi - p) < o->via.str.size)
		return fail(d->err, FP_E_INTERNAL, "%s: string outside frame", key);
	p[o->via.str.size] = '\0';
	*out = (struct fp_str){ p, o->via.str.size };
	return 0;
}

static int dec_map(struct dec *, const msgpack_object *, const struct table *,
    void *);

static void *
zalloc(struct dec *d, size_t n, size_t size)
{
	void *p = msgpack_zone_malloc(d->zone, n ? n * size : 1);

	if (p == NULL)
		fail(d->err, FP_E_INTERNAL, "out of memory");
	return p;
}

static int
dec_field(struct dec *d, const msgpack_object *o, const struct field *f,
    void *obj, const char *what)
{
	const msgpack_object_array *a = &o->via.array;
	struct fp_str *tags, s;
	struct fp_edit *edits;
	uint32_t *vers, bits = 0;
	uint64_t v;
	size_t i, k;

#define WANT(cond, t) do { if (!(cond)) return fail(d->err, FP_E_BAD_FRAME, \
	"%s.%s: expected %s", what, f->key, t); } while (0)
	switch (f->kind) {
	case K_UINT:
		WANT(o->type == MSGPACK_OBJECT_POSITIVE_INTEGER, "unsigned integer");
		v = o->via.u64;
		if (v > width_max(f)) {
			if (!(f->flags & F_CLAMP))
				return fail(d->err, FP_E_BAD_FRAME,
				    "%s.%s: %llu out of range", what, f->key,
				    (unsigned long long)v);
			v = width_max(f);
		}
		uint_set(obj, f, v);
		if (f->flags & F_HAS)
			*AT(obj, f->aux, bool) = true;
		return 0;
	case K_STR_NIL:
		if (o->type == MSGPACK_OBJECT_NIL)
			return 0;
		/* FALLTHROUGH */
	case K_STR:
		WANT(o->type == MSGPACK_OBJECT_STR, "str");
		return dec_str(d, o, AT(obj, f->off, struct fp_str), f->key);
	case K_BOOL:
		WANT(o->type == MSGPACK_OBJECT_BOOLEAN, "bool");
		*AT(obj, f->off, bool) = o->via.boolean;
		return 0;
	case K_BIN:
		WANT(o->type == MSGPACK_OBJECT_BIN, "bin");
		*AT(obj, f->off, struct fp_str) =
		    (struct fp_str){ o->via.bin.ptr, o->via.bin.size };
		return 0;
	case K_CAPS:
		WANT(o->type == MSGPACK_OBJECT_ARRAY, "array of str");
		WANT(a->size <= FP_MAX_LIST, "at most 64 entries");
		for (i = 0; i < a->size; i++) {
			WANT(a->ptr[i].type == MSGPACK_OBJECT_STR, "array of str");
			for (k = 0; k < NELEM(cap_names); k++)
				if (a->ptr[i].via.str.size == strlen(cap_names[k]) &&
				    memcmp(a->ptr[i].via.str.ptr, cap_names[k],
				    a->ptr[i].via.str.size) == 0)
					bits |= 1u << k;
		}
		/* Unknown names are later additions: ignored. */
		*AT(obj, f->off, uint32_t) = bits & f->mask;
		return 0;
	case K_VERSIONS:
		WANT(o->type == MSGPACK_OBJECT_ARRAY, "array of uint");
		WANT(a->size <= f->max, "at most 64 entries");
		if ((vers = zalloc(d, a->size, sizeof(*vers))) == NULL)
			return -1;
		for (i = 0; i < a->size; i++) {
			WANT(a->ptr[i].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
			    a->ptr[i].via.u64 <= UINT32_MAX, "array of uint32");
			vers[i] = (uint32_t)a->ptr[i].via.u64;
		}
		*AT(obj, f->off, const uint32_t *) = vers;
		*AT(obj, f->aux, size_t) = a->size;
		return 0;
	case K_TAGS:
		WANT(o->type == MSGPACK_OBJECT_ARRAY, "array of str");
		WANT(a->size <= f->max, "at most 32 entries");
		if ((tags = zalloc(d, a->size, sizeof(*tags))) == NULL)
			return -1;
		for (i = 0; i < a->size; i++) {
			WANT(a->ptr[i].type == MSGPACK_OBJECT_STR, "array of str");
			if (dec_str(d, &a->ptr[i], &tags[i], f->key) == -1)
				return -1;
		}
		*AT(obj, f->off, const struct fp_str *) = tags;
		*AT(obj, f->aux, size_t) = a->size;
		return 0;
	case K_EDITS:
		WANT(o->type == MSGPACK_OBJECT_ARRAY, "array of maps");
		WANT(a->size <= f->max, "at most 1024 entries");
		if ((edits = zalloc(d, a->size, sizeof(*edits))) == NULL)
			return -1;
		for (i = 0; i < a->size; i++)
			if (dec_map(d, &a->ptr[i], f->sub, &edits[i]) == -1)
				return -1;
		*AT(obj, f->off, const struct fp_edit *) = edits;
		*AT(obj, f->aux, size_t) = a->size;
		return 0;
	case K_ENUM:
		WANT(o->type == MSGPACK_OBJECT_STR, "str");
		for (k = 0; k < f->nnames; k++)
			if (o->via.str.size == strlen(f->names[k]) &&
			    memcmp(o->via.str.ptr, f->names[k], o->via.str.size) == 0)
				break;
		if (k == f->nnames) {
			s = (struct fp_str){ o->via.str.ptr, o->via.str.size };
			return fail(d->err, FP_E_BAD_FRAME, "%s.%s: unknown value "
			    "\"%.*s\"", what, f->key,
			    (int)(s.len > 32 ? 32 : s.len), s.ptr);
		}
		*AT(obj, f->off, int) = (int)k + 1;
		return 0;
	case K_NUMBER:
		if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
			*AT(obj, f->off, double) = (double)o->via.u64;
		else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
			*AT(obj, f->off, double) = (double)o->via.i64;
		else if (o->type == MSGPACK_OBJECT_FLOAT32 ||
		    o->type == MSGPACK_OBJECT_FLOAT64)
			*AT(obj, f->off, double) = o->via.f64;
		else
			WANT(0, "number");
		*AT(obj, f->aux, bool) = true;
		return 0;
	case K_MAP:
		return dec_map(d, o, f->sub, AT(obj, f->off, char));
	}
#undef WANT
	return 0;
}

static int
dec_map(struct dec *d, const msgpack_object *o, const struct table *t,
    void *obj)
{
	const msgpack_object_kv *kv;
	uint64_t seen = 0;
	size_t i, k;

	if (o->type != MSGPACK_OBJECT_MAP)
		return fail(d->err, FP_E_BAD_FRAME, "%s: not a map", t->what);
	memset(obj, 0, t->size);
	for (k = 0; k < t->n; k++)
		if (t->f[k].flags & F_DEF)
			uint_set(obj, &t->f[k], t->f[k].def);
	for (i = 0; i < o->via.map.size; i++) {
		kv = &o->via.map.ptr[i];
		if (kv->key.type != MSGPACK_OBJECT_STR)
			continue;	/* not ours: ignored like unknown keys */
		for (k = 0; k < t->n; k++)
			if (kv->key.via.str.size == strlen(t->f[k].key) &&
			    memcmp(kv->key.via.str.ptr, t->f[k].key,
			    kv->key.via.str.size) == 0)
				break;
		if (k == t->n)
			continue;
		/* Two parsers picking different duplicates is how smuggling
		 * starts: refuse them. */
		if (seen & (1ull << k))
			return fail(d->err, FP_E_BAD_FRAME, "%s: duplicate key "
			    "\"%s\"", t->what, t->f[k].key);
		seen |= 1ull << k;
		if (dec_field(d, &kv->val, &t->f[k], obj, t->what) == -1)
			return -1;
	}
	for (k = 0; k < t->n; k++) {
		const struct field *f = &t->f[k];
		bool need = (f->flags & F_REQ) ||
		    (f->present && !(f->flags & F_DEF) && f->present(obj));

		if (need && !(seen & (1ull << k)))
			return fail(d->err, FP_E_BAD_FRAME, "%s: missing \"%s\"",
			    t->what, f->key);
		/* A key the rules say must not be there (body with accept):
		 * leave it to the table check, which sees it as set. */
	}
	return 0;
}

static enum fp_msg_type
type_lookup(const msgpack_object *o)
{
	size_t i;

	for (i = 1; i < NELEM(msgdefs); i++)
		if (o->via.str.size == strlen(msgdefs[i].name) &&
		    memcmp(o->via.str.ptr, msgdefs[i].name, o->via.str.size) == 0)
			return (enum fp_msg_type)i;
	return FP_MSG_NONE;
}

static int
dec_msg(struct dec *d, const msgpack_object *root, enum fp_role role,
    struct fp_msg *out)
{
	const msgpack_object *type = NULL, *id = NULL;
	const msgpack_object_kv *kv;
	const struct msgdef *md;
	struct fp_err *err = d->err;
	enum fp_msg_type t;
	size_t i;

	if (root->type != MSGPACK_OBJECT_MAP)
		return fail(err, FP_E_BAD_FRAME, "frame is not a map");
	for (i = 0; i < root->via.map.size; i++) {
		kv = &root->via.map.ptr[i];
		if (kv->key.type != MSGPACK_OBJECT_STR)
			continue;
		if (kv->key.via.str.size == 4 &&
		    memcmp(kv->key.via.str.ptr, "type", 4) == 0) {
			if (type != NULL)
				return fail(err, FP_E_BAD_FRAME, "duplicate \"type\"");
			type = &kv->val;
		} else if (kv->key.via.str.size == 2 &&
		    memcmp(kv->key.via.str.ptr, "id", 2) == 0)
			id = &kv->val;
	}
	if (type == NULL || type->type != MSGPACK_OBJECT_STR)
		return fail(err, FP_E_BAD_FRAME, "no \"type\" string");
	if ((t = type_lookup(type)) == FP_MSG_NONE)
		return fail(err, FP_E_UNSUPPORTED, "unknown message type \"%.*s\"",
		    (int)(type->via.str.size > 32 ? 32 : type->via.str.size),
		    type->via.str.ptr);
	md = &msgdefs[t];
	err->type = t;
	if ((role == FP_ROLE_PROXY && !(md->dir & F2P)) ||
	    (role == FP_ROLE_FILTER && !(md->dir & P2F)))
		return fail(err, FP_E_UNSUPPORTED, "\"%s\" is not sent this way",
		    md->name);
	/* From here on, a request-scoped message with a usable id fails only
	 * that request. */
	if (md->id_scoped && id && id->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
		err->has_id = true;
		err->id = id->via.u64;
	}
	memset(out, 0, sizeof(*out));
	out->type = t;
	if (dec_map(d, root, md->t, &out->hello) == -1 ||
	    validate(md->t, &out->hello, err) == -1) {
		out->type = FP_MSG_NONE;
		return -1;
	}
	return 0;
}

/* ---- the frame reader ---------------------------------------------------- */

void
fp_reader_init(struct fp_reader *r, uint32_t max_frame, enum fp_role role)
{
	memset(r, 0, sizeof(*r));
	r->max_frame = max_frame;
	r->role = role;
}

/* Undo what the last fp_reader_next() left behind: the NUL after the frame,
 * the msgpack zone, and the frame's octets themselves. */
static void
reader_release(struct fp_reader *r)
{
	if (r->patched) {
		r->buf[r->patch_at] = r->patch_byte;
		r->patched = false;
	}
	if (r->zone != NULL) {
		msgpack_zone_free(r->zone);
		r->zone = NULL;
	}
	r->start += r->taken;
	r->taken = 0;
	if (r->start == r->end) {
		r->start = r->end = 0;
		if (r->cap > FP_SHRINK_ABOVE) {
			free(r->buf);
			r->buf = NULL;
			r->cap = 0;
		}
	}
}

void
fp_reader_free(struct fp_reader *r)
{
	reader_release(r);
	free(r->buf);
	memset(r, 0, sizeof(*r));
}

/* Room for need more octets after end, plus the one spare octet that a
 * frame's last string may borrow as its NUL. */
static int
reader_room(struct fp_reader *r, size_t need)
{
	size_t used = r->end - r->start, want, ncap;
	char *p;

	if (need > SIZE_MAX - used - 1)
		return -1;
	want = used + need + 1;
	if (r->cap - r->start >= want)
		return 0;
	if (r->start > 0) {
		memmove(r->buf, r->buf + r->start, used);
		r->start = 0;
		r->end = used;
		if (r->cap >= want)
			return 0;
	}
	ncap = r->cap * 2 > want ? r->cap * 2 : want;
	if ((p = realloc(r->buf, ncap)) == NULL)
		return -1;
	r->buf = p;
	r->cap = ncap;
	return 0;
}

int
fp_reader_feed(struct fp_reader *r, const void *data, size_t len)
{
	reader_release(r);
	if (reader_room(r, len) == -1)
		return -1;
	if (len > 0)
		memcpy(r->buf + r->end, data, len);
	r->end += len;
	return 0;
}

char *
fp_reader_space(struct fp_reader *r, size_t *avail)
{
	size_t used, need = FP_READ_CHUNK;
	uint32_t flen;

	reader_release(r);
	used = r->end - r->start;
	if (used >= 4 && !r->dead) {
		flen = be32_get(r->buf + r->start);
		/* Size the buffer for the frame only once its length has
		 * passed the limit check. */
		if (flen <= r->max_frame && (size_t)flen + 4 > used)
			need = (size_t)flen + 4 - used;
	}
	if (reader_room(r, need) == -1)
		return NULL;
	*avail = r->cap - r->end - 1;
	return r->buf + r->end;
}

void
fp_reader_commit(struct fp_reader *r, size_t n)
{
	assert(n <= r->cap - r->end - 1);
	r->end += n;
}

size_t
fp_reader_buffered(const struct fp_reader *r)
{
	return r->end - r->start - r->taken;
}

int
fp_reader_next(struct fp_reader *r, struct fp_msg *out, struct fp_err *err)
{
	msgpack_unpacked up;
	struct fp_err scratch;
	struct scan sc;
	struct dec d;
	size_t used, off = 0;
	uint32_t flen;
	int rc;

	if (err == NULL)
		err = &scratch;
	reader_release(r);
	err_init(err);
	memset(out, 0, sizeof(*out));
	if (r->dead) {
		err->fatal = true;
		return fail(err, FP_E_TOO_LARGE, "framing lost earlier; close");
	}
	used = r->end - r->start;
	if (used < 4)
		return 0;
	flen = be32_get(r->buf + r->start);
	if (flen > r->max_frame) {
		/* The peer will send flen octets we refuse to hold; nothing
		 * after them can be found again. */
		r->dead = true;
		err->fatal = true;
		return fail(err, FP_E_TOO_LARGE, "frame of %u octets exceeds "
		    "max_frame %u", flen, r->max_frame);
	}
	if (flen == 0) {
		r->taken = 4;
		return fail(err, FP_E_BAD_FRAME, "empty frame");
	}
	if (used - 4 < flen)
		return 0;
	r->taken = 4 + (size_t)flen;

	d.lo = r->buf + r->start + 4;
	d.hi = d.lo + flen;
	d.err = err;
	sc = (struct scan){ (const unsigned char *)d.lo,
	    (const unsigned char *)d.hi, 0, NULL };
	if (scan_obj(&sc, 0) == -1)
		return fail(err, FP_E_BAD_FRAME, "malformed msgpack: %s", sc.why);
	if (sc.p != sc.end)
		return fail(err, FP_E_BAD_FRAME, "%zu octets after the map",
		    (size_t)(sc.end - sc.p));

	msgpack_unpacked_init(&up);
	rc = msgpack_unpack_next(&up, d.lo, flen, &off);
	r->zone = up.zone;	/* freed by reader_release() */
	if (rc != MSGPACK_UNPACK_SUCCESS || off != flen)
		return fail(err, FP_E_BAD_FRAME, "malformed msgpack (%d)", rc);
	if (r->zone == NULL && (r->zone = msgpack_zone_new(1024)) == NULL)
		return fail(err, FP_E_INTERNAL, "out of memory");
	d.zone = r->zone;

	/* reader_room() keeps one octet past end, so patch_at is in bounds. */
	r->patch_at = r->start + r->taken;
	r->patch_byte = r->buf[r->patch_at];
	r->patched = true;
	if (dec_msg(&d, &up.data, r->role, out) == -1)
		return -1;
	return 1;
}

/* ---- negotiation and grants ---------------------------------------------- */

uint32_t
fp_version_choose(const struct fp_hello *h)
{
	uint32_t best = 0;
	size_t i;

	for (i = 0; i < h->nversions; i++)
		if (h->versions[i] == FP_VERSION && h->versions[i] > best)
			best = h->versions[i];
	return best;
}

int
fp_negotiate(const struct fp_hello *h, const struct fp_hello_ack *a,
    struct fp_params *p, struct fp_err *err)
{
	struct fp_err scratch;
	bool offered = false;
	size_t i;

	if (err == NULL)
		err = &scratch;
	err_init(err);
	err->type = FP_MSG_HELLO_ACK;
	for (i = 0; i < h->nversions; i++)
		offered |= h->versions[i] == a->version;
	if (!offered || a->version != FP_VERSION)
		return fail(err, FP_E_VERSION, "version %u was not offered or "
		    "is not spoken here", a->version);
	memset(p, 0, sizeof(*p));
	p->version = a->version;
	p->commands = a->commands & h->caps & FP_CAPS_COMMANDS;
	p->actions = a->actions & h->caps & FP_CAPS_ACTIONS;
	if (!(p->commands & FP_CAP_RETR))
		return fail(err, FP_E_UNSUPPORTED, "no common command");
	p->window = a->max_inflight < h->max_inflight ? a->max_inflight :
	    h->max_inflight;
	p->proxy_max_frame = h->max_frame;
	p->filter_max_frame = a->max_frame;
	p->max_message_size = a->max_message_size;
	return 0;
}

int
fp_verdict_check(const struct fp_verdict *v, uint32_t granted,
    struct fp_err *err)
{
	static const uint32_t need[] = {
		[FP_ACCEPT] = 0, [FP_REPLACE] = FP_CAP_REPLACE,
		[FP_REJECT] = FP_CAP_REJECT, [FP_TEMPFAIL] = FP_CAP_TEMPFAIL,
	};
	struct fp_err scratch;

	if (err == NULL)
		err = &scratch;
	err_init(err);
	err->type = FP_MSG_VERDICT;
	err->has_id = true;
	err->id = v->id;
	if (v->action < FP_ACCEPT || v->action > FP_TEMPFAIL)
		return fail(err, FP_E_BAD_FRAME, "invalid action");
	if ((need[v->action] & granted) != need[v->action])
		return fail(err, FP_E_NOT_GRANTED, "action \"%s\" not granted",
		    fp_action_name(v->action));
	if (v->nedits > 0 && !(granted & FP_CAP_EDIT_HEADERS))
		return fail(err, FP_E_NOT_GRANTED, "\"edit_headers\" not granted");
	return 0;
}
