/* pf_req.c: requests in flight: their copy of the message, per-request state,
 * header edits and decorations, the verdict calls and cancellation. */
#include <stdlib.h>
#include <string.h>

#include "pf_local.h"

/* ---- life cycle ---------------------------------------------------------- */

static size_t
str_room(struct fp_str s)
{
	return s.ptr == NULL ? 0 : s.len + 1;
}

static const char *
str_put(char **at, struct fp_str s)
{
	char *p = *at;

	if (s.ptr == NULL)
		return NULL;
	memcpy(p, s.ptr, s.len);
	p[s.len] = '\0';
	*at += s.len + 1;
	return p;
}

/* The decoded request points into the reader's buffer, which the next frame
 * reuses; a verdict may come much later, so take one copy of everything. */
struct pf_req *
pf_req_new(struct pf_conn *c, const struct fp_request *rq)
{
	const struct fp_session *s = &rq->session;
	struct pf_req *r;
	size_t need;
	char *at;

	need = str_room(s->id) + str_room(s->client) + str_room(s->user) +
	    str_room(s->upstream_host) + str_room(rq->message.uidl) +
	    rq->body.len + 1;
	if ((r = calloc(1, sizeof(*r))) == NULL)
		return NULL;
	if ((r->store = malloc(need)) == NULL) {
		free(r);
		return NULL;
	}
	at = r->store;
	r->m = (struct pf_message){
		.id = rq->id,
		.deadline_ms = rq->deadline_ms,
		.upstream_port = s->upstream_port,
		.tls_client = s->tls_client,
		.tls_upstream = s->tls_upstream,
		.number = rq->message.number,
		.size = rq->message.size,
		.command = rq->message.command == FP_CMD_TOP ? PF_CMD_TOP :
		    PF_CMD_RETR,
		.top_lines = rq->message.top_lines,
		.body_len = rq->body.len,
	};
	r->m.session_id = str_put(&at, s->id);
	r->m.client = str_put(&at, s->client);
	r->m.user = str_put(&at, s->user);
	r->m.upstream_host = str_put(&at, s->upstream_host);
	r->m.uidl = str_put(&at, rq->message.uidl);
	memcpy(at, rq->body.ptr, rq->body.len);
	at[rq->body.len] = '\0';
	r->m.body = at;

	r->f = c->f;
	r->conn = c;
	r->next = c->reqs;
	if (c->reqs != NULL)
		c->reqs->prev = r;
	c->reqs = r;
	c->nreqs++;
	c->f->inflight++;
	return r;
}

static void
req_unlink(struct pf_req *r)
{
	struct pf_conn *c = r->conn;

	if (c == NULL)
		return;
	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		c->reqs = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
	r->conn = NULL;
	c->nreqs--;
	c->f->inflight--;
}

static void
req_free(struct pf_req *r)
{
	size_t i;

	req_unlink(r);
	for (i = 0; i < r->nedits; i++) {
		free((char *)(uintptr_t)r->edits[i].name.ptr);
		free((char *)(uintptr_t)r->edits[i].value.ptr);
	}
	free(r->edits);
	for (i = 0; i < r->ntags; i++)
		free((char *)(uintptr_t)r->tags[i].ptr);
	free(r->tags);
	free(r->reason);
	free(r->store);
	free(r);
}

/* Run the author's message callback. A verdict given inside it unlinks the
 * request at once (the window frees up) but the handle and its message live
 * until the callback returns, so code after the verdict call stays safe. */
void
pf_req_deliver(struct pf_req *r)
{
	struct pf *f = r->f;

	r->in_message = true;
	f->on_message(r, &r->m, f->message_arg);
	r->in_message = false;
	if (r->answered)
		req_free(r);
}

/* A verdict went out: free the request, or let pf_req_deliver() do it. */
static void
req_done(struct pf_req *r)
{
	if (r->in_message) {
		req_unlink(r);
		r->answered = true;
		return;
	}
	req_free(r);
}

void
pf_req_cancel(struct pf_req *r, const char *why)
{
	struct pf *f = r->f;

	req_unlink(r);
	r->cancelled = true;
	pf_log(f, PF_LOG_DEBUG, "request %llu: %s",
	    (unsigned long long)r->m.id, why);
	if (f->on_cancel == NULL)
		return;		/* the author's next verdict call frees it */
	r->in_cancel = true;
	f->on_cancel(r, why, f->cancel_arg);
	req_free(r);
}

/* ---- accessors ----------------------------------------------------------- */

const struct pf_message *
pf_req_message(const struct pf_req *r)
{
	return &r->m;
}

struct pf *
pf_req_filter(const struct pf_req *r)
{
	return r->f;
}

void
pf_req_set_data(struct pf_req *r, void *data)
{
	r->data = data;
}

void *
pf_req_data(const struct pf_req *r)
{
	return r->data;
}

bool
pf_req_cancelled(const struct pf_req *r)
{
	return r->cancelled;
}

bool
pf_granted(const struct pf_req *r, unsigned action)
{
	if (r->conn == NULL || action == 0)
		return false;
	return (r->conn->granted & action) == action;
}

/* ---- checks shared by every call ----------------------------------------- */

static int
req_live(struct pf_req *r)
{
	pf_clear_err(r->f);
	if (r->answered)
		return pf_fail_with(r->f, PF_ESTATE, "request %llu was already "
		    "answered", (unsigned long long)r->m.id);
	if (r->cancelled)
		return pf_fail_with(r->f, PF_ECANCELED, "request %llu was "
		    "cancelled", (unsigned long long)r->m.id);
	return 0;
}

static int
may_use(struct pf_req *r, unsigned action, const char *what)
{
	if (!(r->f->actions & action))
		return pf_fail_with(r->f, PF_ENOTDECLARED, "%s: not declared "
		    "(pf_declare)", what);
	if (!(r->conn->granted & action))
		return pf_fail_with(r->f, PF_ENOTGRANTED, "%s: not granted by "
		    "the proxy on this connection", what);
	return 0;
}

static int
text_ok(struct pf_req *r, const char *s, size_t max, const char *what)
{
	size_t n = strlen(s);

	if (n > max)
		return pf_fail_with(r->f, PF_ETOOLARGE, "%s: %zu octets, limit %zu",
		    what, n, max);
	return 0;
}

/* ---- decorations --------------------------------------------------------- */

int
pf_reason(struct pf_req *r, const char *reason)
{
	char *p;

	if (req_live(r) == -1)
		return -1;
	if (reason == NULL || text_ok(r, reason, FP_MAX_TEXT, "reason") == -1)
		return reason == NULL ? pf_fail_with(r->f, PF_EINVAL, "reason: NULL") : -1;
	if ((p = strdup(reason)) == NULL)
		return pf_fail_with(r->f, PF_ENOMEM, "out of memory");
	free(r->reason);
	r->reason = p;
	return 0;
}

int
pf_tag(struct pf_req *r, const char *tag)
{
	struct fp_str *t;
	char *p;

	if (req_live(r) == -1)
		return -1;
	if (tag == NULL || *tag == '\0')
		return pf_fail_with(r->f, PF_EINVAL, "tag: empty");
	if (r->ntags == FP_MAX_TAGS)
		return pf_fail_with(r->f, PF_ETOOLARGE, "more than %d tags",
		    FP_MAX_TAGS);
	if (text_ok(r, tag, FP_MAX_NAME, "tag") == -1)
		return -1;
	if ((t = realloc(r->tags, (r->ntags + 1) * sizeof(*t))) == NULL)
		return pf_fail_with(r->f, PF_ENOMEM, "out of memory");
	r->tags = t;
	if ((p = strdup(tag)) == NULL)
		return pf_fail_with(r->f, PF_ENOMEM, "out of memory");
	r->tags[r->ntags++] = fp_str_c(p);
	return 0;
}

int
pf_score(struct pf_req *r, double score)
{
	if (req_live(r) == -1)
		return -1;
	if (score != score)
		return pf_fail_with(r->f, PF_EINVAL, "score: NaN");
	r->has_score = true;
	r->score = score;
	return 0;
}

/* ---- header edits -------------------------------------------------------- */

static int
edit_push(struct pf_req *r, enum fp_edit_op op, const char *name,
    unsigned index, const char *value)
{
	struct fp_edit e = { .op = op, .name = fp_str_c(name),
	    .value = fp_str_c(value), .index = index }, *ne;
	const char *why;
	size_t ncap;

	if (req_live(r) == -1 || may_use(r, PF_EDIT_HEADERS, "header edit") == -1)
		return -1;
	if ((why = fp_edit_invalid(&e)) != NULL)
		return pf_fail_with(r->f, PF_EINVAL, "header edit: %s", why);
	if (r->nedits == FP_MAX_EDITS)
		return pf_fail_with(r->f, PF_ETOOLARGE, "more than %d edits",
		    FP_MAX_EDITS);
	if (r->nedits == r->edits_cap) {
		ncap = r->edits_cap ? r->edits_cap * 2 : 4;
		if ((ne = realloc(r->edits, ncap * sizeof(*ne))) == NULL)
			return pf_fail_with(r->f, PF_ENOMEM, "out of memory");
		r->edits = ne;
		r->edits_cap = ncap;
	}
	e.name.ptr = strdup(name);
	e.value.ptr = value ? strdup(value) : NULL;
	if (e.name.ptr == NULL || (value != NULL && e.value.ptr == NULL)) {
		free((char *)(uintptr_t)e.name.ptr);
		free((char *)(uintptr_t)e.value.ptr);
		return pf_fail_with(r->f, PF_ENOMEM, "out of memory");
	}
	r->edits[r->nedits++] = e;
	return 0;
}

int
pf_add_header(struct pf_req *r, const char *name, const char *value)
{
	if (name == NULL || value == NULL)
		return pf_fail_with(r->f, PF_EINVAL, "header edit: NULL name or value");
	return edit_push(r, FP_EDIT_ADD, name, 0, value);
}

int
pf_change_header(struct pf_req *r, const char *name, unsigned index,
    const char *value)
{
	if (name == NULL || value == NULL)
		return pf_fail_with(r->f, PF_EINVAL, "header edit: NULL name or value");
	return edit_push(r, FP_EDIT_CHANGE, name, index, value);
}

int
pf_delete_header(struct pf_req *r, const char *name, unsigned index)
{
	if (name == NULL)
		return pf_fail_with(r->f, PF_EINVAL, "header edit: NULL name");
	return edit_push(r, FP_EDIT_DELETE, name, index, NULL);
}

/* ---- verdicts ------------------------------------------------------------ */

/* Every verdict call starts here. A cancelled request's handle is freed by the
 * verdict call (unless we are inside its cancel callback, which frees it). */
static int
verdict_begin(struct pf_req *r)
{
	if (req_live(r) == 0)
		return 0;
	if (r->cancelled && !r->in_cancel)
		req_free(r);
	return -1;
}

/* Encode, check against what was granted and the proxy's frame limit, queue,
 * free. On any refusal nothing is sent and the request stays live. */
static int
verdict_finish(struct pf_req *r, struct fp_verdict *v)
{
	struct pf_conn *c = r->conn;
	struct fp_buf b = { 0 };
	struct fp_err err;
	uint32_t flen;

	v->id = r->m.id;
	v->reason = fp_str_c(r->reason);
	v->tags = r->tags;
	v->ntags = r->ntags;
	v->has_score = r->has_score;
	v->score = r->score;
	if (fp_verdict_check(v, c->granted, &err) == -1)
		return pf_fail_with(r->f, PF_ENOTGRANTED, "%s", err.message);
	if (fp_encode_verdict(&b, v) == -1) {
		struct fp_msg m = { .type = FP_MSG_VERDICT, .verdict = *v };

		fp_buf_free(&b);
		if (fp_msg_check(&m, &err) == -1)
			return pf_fail_with(r->f, PF_EINVAL, "%s", err.message);
		return pf_fail_with(r->f, PF_ENOMEM, "out of memory");
	}
	if ((flen = fp_frame_len(b.data)) > c->params.proxy_max_frame) {
		fp_buf_free(&b);
		return pf_fail_with(r->f, PF_ETOOLARGE, "verdict of %u octets "
		    "exceeds the proxy's max_frame %u", flen,
		    c->params.proxy_max_frame);
	}
	if (pf_conn_send(c, &b) == -1) {
		fp_buf_free(&b);
		return pf_fail_with(r->f, PF_ENOMEM, "cannot queue the verdict");
	}
	fp_buf_free(&b);
	req_done(r);
	pf_conn_maybe_finish(c);
	return 0;
}

static int
no_edits(struct pf_req *r, const char *what)
{
	if (r->nedits > 0)
		return pf_fail_with(r->f, PF_ESTATE, "%s: header edits are only "
		    "sent with pf_accept()", what);
	return 0;
}

int
pf_accept(struct pf_req *r)
{
	struct fp_verdict v = { .action = FP_ACCEPT };

	if (verdict_begin(r) == -1)
		return -1;
	v.edits = r->edits;
	v.nedits = r->nedits;
	return verdict_finish(r, &v);
}

int
pf_replace(struct pf_req *r, const void *msg, size_t len)
{
	struct fp_verdict v = { .action = FP_REPLACE };

	if (verdict_begin(r) == -1)
		return -1;
	if (msg == NULL)
		return pf_fail_with(r->f, PF_EINVAL, "replace: NULL message");
	if (may_use(r, PF_REPLACE, "replace") == -1 || no_edits(r, "replace") == -1)
		return -1;
	v.body = (struct fp_str){ msg, len };
	return verdict_finish(r, &v);
}

int
pf_reject_quarantined(struct pf_req *r, const char *notice,
    const char *quarantine_id)
{
	struct fp_verdict v = { .action = FP_REJECT };

	if (verdict_begin(r) == -1)
		return -1;
	if (may_use(r, PF_REJECT, "reject") == -1 || no_edits(r, "reject") == -1)
		return -1;
	if (notice != NULL && text_ok(r, notice, FP_MAX_TEXT, "notice") == -1)
		return -1;
	if (quarantine_id != NULL && *quarantine_id == '\0')
		return pf_fail_with(r->f, PF_EINVAL, "quarantine_id: empty");
	if (quarantine_id != NULL &&
	    text_ok(r, quarantine_id, FP_MAX_SHORT, "quarantine_id") == -1)
		return -1;
	v.notice = fp_str_c(notice);
	v.quarantine_id = fp_str_c(quarantine_id);
	return verdict_finish(r, &v);
}

int
pf_reject(struct pf_req *r, const char *notice)
{
	return pf_reject_quarantined(r, notice, NULL);
}

int
pf_tempfail(struct pf_req *r, const char *reason)
{
	struct fp_verdict v = { .action = FP_TEMPFAIL };

	if (verdict_begin(r) == -1)
		return -1;
	if (may_use(r, PF_TEMPFAIL, "tempfail") == -1 ||
	    no_edits(r, "tempfail") == -1)
		return -1;
	if (reason != NULL && pf_reason(r, reason) == -1)
		return -1;
	return verdict_finish(r, &v);
}

int
pf_fail(struct pf_req *r, const char *message)
{
	struct fp_error e = { .has_id = true, .code = FP_STR(FP_E_INTERNAL),
	    .message = fp_str_c(message) };
	struct pf_conn *c;
	struct fp_buf b = { 0 };

	if (verdict_begin(r) == -1)
		return -1;
	c = r->conn;
	e.id = r->m.id;
	if (e.message.len > FP_MAX_TEXT)
		e.message.len = FP_MAX_TEXT;
	if (fp_encode_error(&b, &e) == -1 || pf_conn_send(c, &b) == -1) {
		fp_buf_free(&b);
		return pf_fail_with(r->f, PF_ENOMEM, "cannot queue the error");
	}
	fp_buf_free(&b);
	req_done(r);
	pf_conn_maybe_finish(c);
	return 0;
}
