/* fp_edit.c: header edits (add, change, delete) applied to a held message,
 * and the syntax of one edit; the proxy and the filter library share both. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fp.h"

/* One header field of the message being edited: its whole text (first line,
 * continuation lines, line end), either in the original message or, once
 * added or changed, in the scratch buffer. Offsets survive reallocation. */
struct hfield {
	size_t		off, len;
	size_t		nlen;		/* name, without WSP before the colon */
	size_t		colon;		/* offset of ':' within the field */
	bool		own;		/* in scratch, not in the message */
	bool		dead;		/* deleted */
};

struct hdrs {
	const char	*msg;
	struct hfield	*f;
	size_t		 n, cap;
	struct fp_buf	 scratch;
	const char	*eol;		/* "\r\n", or "\n" for a bare-LF message */
	size_t		 eollen;
};

static bool
is_ftext(unsigned char c)
{
	/* RFC 5322 field name: printable US-ASCII except ':'. */
	return c >= 33 && c <= 126 && c != ':';
}

static bool
is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

static const char *
value_invalid(struct fp_str v)
{
	size_t i, j;

	if (v.ptr == NULL)
		return "missing value";
	if (v.len > FP_MAX_VALUE)
		return "value too long";
	if (memchr(v.ptr, '\0', v.len) != NULL)
		return "NUL in value";
	for (i = 0; i < v.len; i++) {
		if (v.ptr[i] == '\r') {
			if (i + 1 == v.len || v.ptr[i + 1] != '\n')
				return "CR not followed by LF in value";
			continue;
		}
		if (v.ptr[i] != '\n')
			continue;
		if (i + 1 == v.len || !is_wsp(v.ptr[i + 1]))
			return "line break in value not followed by SP or HTAB";
		/* A continuation line of only blanks reads as the end of the
		 * header block to some parsers: refuse it. */
		for (j = i + 1; j < v.len && is_wsp(v.ptr[j]); j++)
			;
		if (j == v.len || v.ptr[j] == '\r' || v.ptr[j] == '\n')
			return "blank continuation line in value";
	}
	return NULL;
}

const char *
fp_edit_invalid(const struct fp_edit *e)
{
	size_t i;

	if (e->op < FP_EDIT_ADD || e->op > FP_EDIT_DELETE)
		return "unknown op";
	if (e->name.ptr == NULL || e->name.len == 0)
		return "empty name";
	if (e->name.len > FP_MAX_NAME)
		return "name too long";
	for (i = 0; i < e->name.len; i++)
		if (!is_ftext((unsigned char)e->name.ptr[i]))
			return "invalid character in name";
	if (e->op == FP_EDIT_CHANGE && e->index == 0)
		return "change needs index >= 1";
	return e->op == FP_EDIT_DELETE ? NULL : value_invalid(e->value);
}

static struct hfield *
hdrs_push(struct hdrs *h)
{
	struct hfield *p;
	size_t ncap;

	if (h->n == h->cap) {
		ncap = h->cap ? h->cap * 2 : 32;
		if ((p = realloc(h->f, ncap * sizeof(*p))) == NULL)
			return NULL;
		h->f = p;
		h->cap = ncap;
	}
	p = &h->f[h->n++];
	memset(p, 0, sizeof(*p));
	return p;
}

/* Splits the header block into fields and returns where it ends: at the
 * empty line that separates it from the body (the line stays with the body),
 * at the first line that is neither a field nor a continuation (a message
 * without a separator), or at the end of the message. */
static int
hdrs_parse(struct hdrs *h, const char *m, size_t len, size_t *end)
{
	const char *lf;
	struct hfield *f;
	size_t pos = 0, next, cl, k, nend;

	while (pos < len) {
		lf = memchr(m + pos, '\n', len - pos);
		next = lf ? (size_t)(lf - m) + 1 : len;
		cl = next - pos;
		if (lf) {
			cl--;
			if (cl > 0 && m[pos + cl - 1] == '\r')
				cl--;
		}
		if (cl == 0)
			break;			/* the separator */
		if (is_wsp(m[pos])) {
			if (h->n == 0)
				break;		/* continuation of nothing */
			h->f[h->n - 1].len += next - pos;
			pos = next;
			continue;
		}
		for (k = pos; k < pos + cl && is_ftext((unsigned char)m[k]); k++)
			;
		nend = k;
		while (k < pos + cl && is_wsp(m[k]))
			k++;		/* obsolete "Name :" syntax */
		if (nend == pos || k == pos + cl || m[k] != ':')
			break;		/* not a header field */
		if ((f = hdrs_push(h)) == NULL)
			return -1;
		f->off = pos;
		f->len = next - pos;
		f->nlen = nend - pos;
		f->colon = k - pos;
		pos = next;
	}
	*end = pos;
	return 0;
}

static const char *
field_text(const struct hdrs *h, const struct hfield *f)
{
	return f->own ? h->scratch.data + f->off : h->msg + f->off;
}

static bool
field_is(const struct hdrs *h, const struct hfield *f, struct fp_str name)
{
	return !f->dead && f->nlen == name.len &&
	    strncasecmp(field_text(h, f), name.ptr, name.len) == 0;
}

/* Writes "<prefix> <value><eol>" into scratch and describes it in *out.
 * prefix ends with the colon and may itself lie in scratch: reserving the
 * worst case first keeps it from moving while we copy. */
static int
field_make(struct hdrs *h, const char *prefix, size_t plen, size_t nlen,
    struct fp_str value, struct hfield *out)
{
	struct fp_buf *s = &h->scratch;
	size_t start = s->len, i, run;
	ptrdiff_t poff = -1;

	if (s->data && (uintptr_t)prefix >= (uintptr_t)s->data &&
	    (uintptr_t)prefix < (uintptr_t)(s->data + s->len))
		poff = prefix - s->data;
	if (fp_buf_reserve(s, plen + 1 + 2 * value.len + h->eollen) == -1)
		return -1;
	if (poff >= 0)
		prefix = s->data + poff;
	memmove(s->data + s->len, prefix, plen);
	s->len += plen;
	if (value.len > 0)
		s->data[s->len++] = ' ';
	/* Folds arrive as CRLF or LF + WSP; they leave in the message's own
	 * line-end style. */
	for (i = 0; i < value.len; i += run) {
		if (value.ptr[i] == '\r') {
			run = 1;
			continue;
		}
		if (value.ptr[i] == '\n') {
			memcpy(s->data + s->len, h->eol, h->eollen);
			s->len += h->eollen;
			run = 1;
			continue;
		}
		for (run = 0; i + run < value.len && value.ptr[i + run] != '\r' &&
		    value.ptr[i + run] != '\n'; run++)
			;
		memcpy(s->data + s->len, value.ptr + i, run);
		s->len += run;
	}
	memcpy(s->data + s->len, h->eol, h->eollen);
	s->len += h->eollen;
	*out = (struct hfield){ .off = start, .len = s->len - start,
	    .nlen = nlen, .colon = plen - 1, .own = true };
	return 0;
}

static int
edit_add(struct hdrs *h, const struct fp_edit *e)
{
	struct hfield nf, *f;
	char prefix[FP_MAX_NAME + 1];

	memcpy(prefix, e->name.ptr, e->name.len);
	prefix[e->name.len] = ':';
	if (field_make(h, prefix, e->name.len + 1, e->name.len, e->value,
	    &nf) == -1 || (f = hdrs_push(h)) == NULL)
		return -1;
	*f = nf;
	return 0;
}

static int
edit_apply(struct hdrs *h, const struct fp_edit *e)
{
	struct hfield *f, nf;
	size_t i, seen = 0;

	if (e->op == FP_EDIT_ADD)
		return edit_add(h, e);
	for (i = 0; i < h->n; i++) {
		f = &h->f[i];
		if (!field_is(h, f, e->name))
			continue;
		seen++;
		if (e->op == FP_EDIT_DELETE) {
			if (e->index == 0 || e->index == seen)
				f->dead = true;
			if (e->index != 0 && e->index == seen)
				return 0;
			continue;
		}
		if (seen != e->index)
			continue;
		/* change: keep the field's own spelling of its name */
		if (field_make(h, field_text(h, f), f->colon + 1, f->nlen,
		    e->value, &nf) == -1)
			return -1;
		h->f[i] = nf;
		return 0;
	}
	/* change of an occurrence that is not there adds it; deleting one
	 * that is not there is not an error */
	return e->op == FP_EDIT_CHANGE ? edit_add(h, e) : 0;
}

int
fp_apply_edits(const char *msg, size_t len, const struct fp_edit *edits,
    size_t n, struct fp_buf *out)
{
	struct hdrs h;
	const char *lf;
	const struct hfield *f;
	size_t i, end, start = out->len;
	bool pending = false, emitted = false;

	for (i = 0; i < n; i++)
		if (fp_edit_invalid(&edits[i]) != NULL)
			return -1;
	if (n == 0)
		return fp_buf_append(out, msg, len);

	memset(&h, 0, sizeof(h));
	h.msg = msg;
	lf = memchr(msg, '\n', len);
	if (lf != NULL && (lf == msg || lf[-1] != '\r'))
		h.eol = "\n";
	else
		h.eol = "\r\n";
	h.eollen = strlen(h.eol);
	if (hdrs_parse(&h, msg, len, &end) == -1)
		goto fail;
	for (i = 0; i < n; i++)
		if (edit_apply(&h, &edits[i]) == -1)
			goto fail;

	if (fp_buf_reserve(out, len + h.scratch.len) == -1)
		goto fail;
	for (i = 0; i < h.n; i++) {
		f = &h.f[i];
		if (f->dead)
			continue;
		/* Only a last original field at the very end of the message
		 * can lack its line end; a field after it needs one. */
		if (pending && fp_buf_append(out, h.eol, h.eollen) == -1)
			goto fail;
		if (fp_buf_append(out, field_text(&h, f), f->len) == -1)
			goto fail;
		pending = field_text(&h, f)[f->len - 1] != '\n';
		emitted = true;
	}
	/*
	 * A header block that ended at a line that is neither a field nor the
	 * empty separator (a message without one, or one whose first line
	 * starts with a blank) must not run on into what follows: that line
	 * would continue the last field written and the lines after it would
	 * read as fields. An empty line makes the rest the body it was.
	 */
	if (emitted && end < len && msg[end] != '\n' &&
	    !(msg[end] == '\r' && end + 1 < len && msg[end + 1] == '\n')) {
		if (pending && fp_buf_append(out, h.eol, h.eollen) == -1)
			goto fail;
		if (fp_buf_append(out, h.eol, h.eollen) == -1)
			goto fail;
	}
	if (fp_buf_append(out, msg + end, len - end) == -1)
		goto fail;
	free(h.f);
	fp_buf_free(&h.scratch);
	return 0;
fail:
	out->len = start;
	free(h.f);
	fp_buf_free(&h.scratch);
	return -1;
}
