/* spamd_proto.c: the SPAMC/1.5 protocol without I/O (request head, reply
 * parser) and the header-block diff that turns spamd's headers into edits. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "spamd.h"

/* ---- request --------------------------------------------------------------- */

int
spamd_request_head(char *out, size_t cap, const char *command, size_t len,
    const char *user)
{
	const char *p;
	int n;

	if (user != NULL) {
		/* A user name is one header value: no controls, no colon
		 * games; spamd refuses odd names anyway. */
		if (*user == '\0')
			return -1;
		for (p = user; *p; p++)
			if ((unsigned char)*p < 0x21 || *p == 0x7f)
				return -1;
	}
	n = snprintf(out, cap, "%s SPAMC/1.5\r\nContent-length: %zu\r\n%s%s%s\r\n",
	    command, len, user ? "User: " : "", user ? user : "",
	    user ? "\r\n" : "");
	if (n < 0 || (size_t)n >= cap)
		return -1;
	return n;
}

/* ---- reply ----------------------------------------------------------------- */

static int
perr(char *err, size_t errlen, const char *what)
{
	snprintf(err, errlen, "%s", what);
	return -1;
}

/* The line at p: its content length (without CR LF) in *cl and the offset
 * after it in *next; 0 if the line is not complete yet. */
static int
reply_line(const char *p, size_t left, size_t *cl, size_t *next)
{
	const char *lf = memchr(p, '\n', left);

	if (lf == NULL)
		return 0;
	*next = (size_t)(lf - p) + 1;
	*cl = (size_t)(lf - p);
	if (*cl > 0 && p[*cl - 1] == '\r')
		(*cl)--;
	return 1;
}

/* "True ; 1002.7 / 5.0" (spamd writes True/False; Yes/No read too). */
static int
parse_spam(const char *v, size_t vl, struct spamd_reply *r)
{
	char tmp[128], *p, *end;

	if (vl >= sizeof(tmp))
		return -1;
	memcpy(tmp, v, vl);
	tmp[vl] = '\0';
	p = tmp;
	while (*p == ' ' || *p == '\t')
		p++;
	if (strncasecmp(p, "true", 4) == 0 || strncasecmp(p, "yes", 3) == 0)
		r->is_spam = true;
	else if (strncasecmp(p, "false", 5) == 0 || strncasecmp(p, "no", 2) == 0)
		r->is_spam = false;
	else
		return -1;
	if ((p = strchr(p, ';')) == NULL)
		return -1;
	p++;
	while (*p == ' ' || *p == '\t')
		p++;
	errno = 0;
	r->score = strtod(p, &end);
	if (end == p || errno != 0 || !isfinite(r->score))
		return -1;
	p = end;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p++ != '/')
		return -1;
	while (*p == ' ' || *p == '\t')
		p++;
	r->threshold = strtod(p, &end);
	if (end == p || errno != 0 || !isfinite(r->threshold))
		return -1;
	while (*end == ' ' || *end == '\t')
		end++;
	if (*end != '\0')
		return -1;
	r->has_spam = true;
	return 0;
}

/* "SPAMD/1.1 0 EX_OK" */
static int
parse_status(const char *p, size_t cl, struct spamd_reply *r)
{
	size_t i = 6, mlen;
	long v;

	if (cl < 6 || memcmp(p, "SPAMD/", 6) != 0)
		return -1;
	for (v = 0; i < cl && isdigit((unsigned char)p[i]) && v < 1000; i++)
		v = v * 10 + (p[i] - '0');
	if (i == 6 || i >= cl || p[i] != '.')
		return -1;
	r->major = (int)v;
	for (i++, v = 0; i < cl && isdigit((unsigned char)p[i]) && v < 1000; i++)
		v = v * 10 + (p[i] - '0');
	if (p[i - 1] == '.' || i >= cl || p[i] != ' ')
		return -1;
	r->minor = (int)v;
	for (i++, v = 0; i < cl && isdigit((unsigned char)p[i]) && v < 1000; i++)
		v = v * 10 + (p[i] - '0');
	if (p[i - 1] == ' ' || (i < cl && p[i] != ' '))
		return -1;
	r->code = (int)v;
	while (i < cl && p[i] == ' ')
		i++;
	mlen = cl - i;
	if (mlen >= sizeof(r->message))
		mlen = sizeof(r->message) - 1;
	memcpy(r->message, p + i, mlen);
	r->message[mlen] = '\0';
	/* Keep spamd's error text printable for our logs. */
	for (i = 0; i < mlen; i++)
		if ((unsigned char)r->message[i] < 0x20 || r->message[i] == 0x7f)
			r->message[i] = '?';
	return 0;
}

int
spamd_reply_parse(const char *buf, size_t len, bool eof, struct spamd_reply *r,
    char *err, size_t errlen)
{
	size_t pos = 0, cl, next, nlines = 0, i;
	const char *p, *colon, *v;
	unsigned long long clen;
	char num[32], *end;

	memset(r, 0, sizeof(*r));
	if (!reply_line(buf, len, &cl, &next)) {
		if (len > SPAMD_MAX_HEAD_LINE)
			return perr(err, errlen, "status line too long");
		if (eof)
			return perr(err, errlen, len ? "truncated status line" :
			    "empty answer");
		return 0;
	}
	if (cl > SPAMD_MAX_HEAD_LINE || parse_status(buf, cl, r) == -1)
		return perr(err, errlen, "bad status line");
	if (r->major != 1)
		return perr(err, errlen, "unknown SPAMD protocol version");
	/* An error is all in its status line; spamd closes after it. */
	if (r->code != 0)
		return 1;
	pos = next;
	for (;;) {
		if (!reply_line(buf + pos, len - pos, &cl, &next)) {
			if (len - pos > SPAMD_MAX_HEAD_LINE)
				return perr(err, errlen, "header line too long");
			if (eof)
				return perr(err, errlen, "truncated header");
			return 0;
		}
		p = buf + pos;
		pos += next;
		if (cl == 0)
			break;
		if (cl > SPAMD_MAX_HEAD_LINE || ++nlines > SPAMD_MAX_HEADS)
			return perr(err, errlen, "too many or too long header lines");
		if ((colon = memchr(p, ':', cl)) == NULL || colon == p)
			return perr(err, errlen, "bad header line");
		v = colon + 1;
		while (v < p + cl && (*v == ' ' || *v == '\t'))
			v++;
		if ((size_t)(colon - p) == 14 &&
		    strncasecmp(p, "Content-length", 14) == 0) {
			if (r->has_length)
				return perr(err, errlen, "two Content-length lines");
			i = (size_t)(p + cl - v);
			if (i == 0 || i >= sizeof(num))
				return perr(err, errlen, "bad Content-length");
			memcpy(num, v, i);
			num[i] = '\0';
			errno = 0;
			clen = strtoull(num, &end, 10);
			if (!isdigit((unsigned char)num[0]) || *end != '\0' ||
			    errno != 0 || clen > SIZE_MAX / 2)
				return perr(err, errlen, "bad Content-length");
			r->has_length = true;
			r->content_length = (size_t)clen;
		} else if ((size_t)(colon - p) == 4 &&
		    strncasecmp(p, "Spam", 4) == 0) {
			if (r->has_spam)
				return perr(err, errlen, "two Spam lines");
			if (parse_spam(v, (size_t)(p + cl - v), r) == -1)
				return perr(err, errlen, "bad Spam line");
		}
		/* Other lines (DidSet, DidRemove, ...) are not ours. */
	}
	r->body = buf + pos;
	if (r->has_length) {
		if (len - pos < r->content_length) {
			if (eof)
				return perr(err, errlen, "truncated body");
			return 0;
		}
		if (len - pos > r->content_length)
			return perr(err, errlen, "octets after the body");
		r->body_len = r->content_length;
		return 1;
	}
	/* Without a length the body runs to the end of the connection. */
	if (!eof)
		return 0;
	r->body_len = len - pos;
	return 1;
}

int
spamd_reply_complete(const char *buf, size_t len)
{
	struct spamd_reply r;
	char err[8];

	return spamd_reply_parse(buf, len, false, &r, err, sizeof(err)) != 0;
}

/* ---- header blocks --------------------------------------------------------- */

static bool
is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

static bool
is_ftext(unsigned char c)
{
	return c >= 33 && c <= 126 && c != ':';
}

void
hlist_free(struct hlist *h)
{
	free(h->f);
	h->f = NULL;
	h->n = 0;
}

/* The same reading of a header block as the proxy's edits (protocol/fp_edit.c):
 * the block ends at the empty line, or before the first line that is neither
 * a field nor a continuation. */
int
hlist_parse(const char *m, size_t len, struct hlist *h)
{
	struct hfield *f, *nf;
	size_t pos = 0, next, cl, k, nend, cap = 0;
	const char *lf;

	h->f = NULL;
	h->n = 0;
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
			break;
		if (is_wsp(m[pos])) {
			if (h->n == 0)
				break;
			f = &h->f[h->n - 1];
			/* The value now runs to this line's end. */
			f->vlen = (size_t)(m + pos + cl - f->value);
			pos = next;
			continue;
		}
		for (k = pos; k < pos + cl && is_ftext((unsigned char)m[k]); k++)
			;
		nend = k;
		while (k < pos + cl && is_wsp(m[k]))
			k++;
		if (nend == pos || k == pos + cl || m[k] != ':')
			break;
		if (h->n == HDR_MAX_FIELDS)
			goto fail;
		if (h->n == cap) {
			cap = cap ? cap * 2 : 32;
			if ((nf = realloc(h->f, cap * sizeof(*nf))) == NULL)
				goto fail;
			h->f = nf;
		}
		f = &h->f[h->n];
		f->name = m + pos;
		f->nlen = nend - pos;
		for (k++; k < pos + cl && is_wsp(m[k]); k++)
			;
		f->value = m + k;
		f->vlen = pos + cl - k;
		f->pos = h->n++;
		pos = next;
	}
	return 0;
fail:
	hlist_free(h);
	return -1;
}

static int
name_cmp(const struct hfield *a, const struct hfield *b)
{
	size_t n = a->nlen < b->nlen ? a->nlen : b->nlen;
	int c = strncasecmp(a->name, b->name, n);

	if (c != 0)
		return c;
	return a->nlen < b->nlen ? -1 : a->nlen > b->nlen;
}

/* By name, then by place: each name's occurrences in order. */
static int
field_order(const void *pa, const void *pb)
{
	const struct hfield *a = pa, *b = pb;
	int c = name_cmp(a, b);

	if (c != 0)
		return c;
	return a->pos < b->pos ? -1 : a->pos > b->pos;
}

static struct hfield *
sorted_copy(const struct hlist *h)
{
	struct hfield *s;

	if ((s = malloc((h->n ? h->n : 1) * sizeof(*s))) == NULL)
		return NULL;
	if (h->n > 0) {
		memcpy(s, h->f, h->n * sizeof(*s));
		qsort(s, h->n, sizeof(*s), field_order);
	}
	return s;
}

static bool
is_tag_field(const struct hfield *f)
{
	return (f->nlen >= 7 && strncasecmp(f->name, "X-Spam-", 7) == 0) ||
	    (f->nlen == 7 && strncasecmp(f->name, "Subject", 7) == 0);
}

static bool
same_value(const struct hfield *a, const struct hfield *b)
{
	return a->vlen == b->vlen && memcmp(a->value, b->value, a->vlen) == 0;
}

struct edits {
	struct hedit	*e;
	size_t		 n, cap;
};

static int
edit_push(struct edits *es, enum hedit_op op, const struct hfield *f,
    unsigned index)
{
	struct hedit *ne;
	size_t cap;

	if (es->n == HDR_MAX_EDITS)
		return -1;
	if (es->n == es->cap) {
		cap = es->cap ? es->cap * 2 : 16;
		if ((ne = realloc(es->e, cap * sizeof(*ne))) == NULL)
			return -1;
		es->e = ne;
		es->cap = cap;
	}
	es->e[es->n++] = (struct hedit){ .op = op, .name = f->name,
	    .nlen = f->nlen, .value = op == HEDIT_DELETE ? NULL : f->value,
	    .vlen = op == HEDIT_DELETE ? 0 : f->vlen, .index = index };
	return 0;
}

/* Merge the two sorted lists name by name. Within a name, occurrence i of
 * from becomes occurrence i of to: change what differs, delete the surplus
 * from the back (so the indexes in front stay valid), and mark to's surplus
 * for adding. Adds go last, in to's order, because the proxy appends them. */
int
hdr_diff(const struct hlist *from, const struct hlist *to, unsigned flags,
    struct hedit **edits, size_t *nedits)
{
	struct hfield *a = NULL, *b = NULL;
	struct edits es = { NULL, 0, 0 };
	bool *add = NULL;
	size_t i = 0, j = 0, i2, j2, k, na, nb;
	int c;

	*edits = NULL;
	*nedits = 0;
	if ((a = sorted_copy(from)) == NULL || (b = sorted_copy(to)) == NULL ||
	    (add = calloc(to->n ? to->n : 1, sizeof(*add))) == NULL)
		goto fail;
	while (i < from->n || j < to->n) {
		if (i == from->n)
			c = 1;
		else if (j == to->n)
			c = -1;
		else
			c = name_cmp(&a[i], &b[j]);
		/* The run of one name in each list (maybe empty). */
		for (i2 = i; c <= 0 && i2 < from->n && name_cmp(&a[i2], &a[i]) == 0;
		    i2++)
			;
		for (j2 = j; c >= 0 && j2 < to->n && name_cmp(&b[j2], &b[j]) == 0;
		    j2++)
			;
		na = i2 - i;
		nb = j2 - j;
		if ((flags & HDIFF_TAGS_ONLY) &&
		    !is_tag_field(na ? &a[i] : &b[j])) {
			i = i2;
			j = j2;
			continue;
		}
		for (k = 0; k < na && k < nb; k++)
			if (!same_value(&a[i + k], &b[j + k]) &&
			    edit_push(&es, HEDIT_CHANGE, &b[j + k],
			    (unsigned)k + 1) == -1)
				goto fail;
		if (na > nb && nb == 0) {
			if (edit_push(&es, HEDIT_DELETE, &a[i], 0) == -1)
				goto fail;
		} else
			for (k = na; k > nb; k--)
				if (edit_push(&es, HEDIT_DELETE, &a[i + k - 1],
				    (unsigned)k) == -1)
					goto fail;
		for (k = na; k < nb; k++)
			add[b[j + k].pos] = true;
		i = i2;
		j = j2;
	}
	for (k = 0; k < to->n; k++)
		if (add[k] && edit_push(&es, HEDIT_ADD, &to->f[k], 0) == -1)
			goto fail;
	free(a);
	free(b);
	free(add);
	*edits = es.e;
	*nedits = es.n;
	return 0;
fail:
	free(a);
	free(b);
	free(add);
	free(es.e);
	return -1;
}

bool
hdr_mime_changed(const struct hlist *from, const struct hlist *to)
{
	static const char *const names[] = { "MIME-Version", "Content-Type",
	    "Content-Transfer-Encoding" };
	const struct hlist *l[2] = { from, to };
	const struct hfield *f[2];
	size_t i, k, s, pos[2];

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		pos[0] = pos[1] = 0;
		for (;;) {
			/* The next occurrence of the name in each list. */
			for (s = 0; s < 2; s++) {
				f[s] = NULL;
				for (k = pos[s]; k < l[s]->n; k++)
					if (l[s]->f[k].nlen == strlen(names[i]) &&
					    strncasecmp(l[s]->f[k].name, names[i],
					    l[s]->f[k].nlen) == 0) {
						f[s] = &l[s]->f[k];
						pos[s] = k + 1;
						break;
					}
			}
			if (f[0] == NULL && f[1] == NULL)
				break;
			if (f[0] == NULL || f[1] == NULL || !same_value(f[0], f[1]))
				return true;
		}
	}
	return false;
}
