/* mime.c: a pure MIME walker for pop3filter-ref: finds the file names that
 * entities announce, through nested multiparts and message/rfc822 parts. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pop3filter.h"
#include "ref.h"

#define MIME_MAX_DEPTH	16	/* nesting of multiparts and messages */
#define MIME_MAX_PARTS	2000	/* entities per message */
#define MIME_MAX_VALUE	16384	/* header value we look into */
#define MIME_MAX_NAME	1024	/* decoded file name */

struct walk {
	mime_name_cb	 cb;
	mime_part_cb	 pcb;		/* instead of cb, for mime_parts() */
	void		*arg;
	int		 parts;
	int		 stop;
};

/* ---- header values and parameters ---------------------------------------- */

/* A field value without its folds (CRLF/LF before a blank removed). */
static size_t
unfold(const char *v, size_t n, char *out, size_t cap)
{
	size_t i, o = 0;

	for (i = 0; i < n && o + 1 < cap; i++) {
		if (v[i] == '\r' || v[i] == '\n')
			continue;
		out[o++] = v[i];
	}
	out[o] = '\0';
	return o;
}

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* RFC 2231 %XX decoding of one section, appended to out. */
static void
pct_decode(const char *s, size_t n, char *out, size_t cap, size_t *olen)
{
	size_t i;
	int h, l;

	for (i = 0; i < n && *olen + 1 < cap; i++) {
		if (s[i] == '%' && i + 2 < n &&
		    (h = hexval((unsigned char)s[i + 1])) >= 0 &&
		    (l = hexval((unsigned char)s[i + 2])) >= 0) {
			out[(*olen)++] = (char)(h << 4 | l);
			i += 2;
		} else
			out[(*olen)++] = s[i];
	}
}

static int
b64val(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* RFC 2047 encoded words (=?cs?B|Q?text?=) decoded in place into out; other
 * text copied; blanks between two encoded words dropped. */
static size_t
words_decode(const char *s, size_t n, char *out, size_t cap)
{
	size_t i = 0, o = 0, j, k, pend = 0;
	const char *q1, *q2, *end;
	unsigned acc = 0;
	int bits = 0, v, h, l;
	char enc;

	while (i < n && o + 1 < cap) {
		if (i + 1 < n && s[i] == '=' && s[i + 1] == '?' &&
		    (q1 = memchr(s + i + 2, '?', n - i - 2)) != NULL &&
		    q1 + 2 < s + n && q1[2] == '?' &&
		    (end = memmem(q1 + 3, (size_t)(s + n - q1 - 3), "?=", 2)) != NULL) {
			enc = (char)toupper((unsigned char)q1[1]);
			q2 = q1 + 3;
			o -= pend;	/* blanks between words */
			pend = 0;
			acc = 0;
			bits = 0;
			for (k = 0; q2 + k < end && o + 1 < cap; k++) {
				if (enc == 'B') {
					if ((v = b64val((unsigned char)q2[k])) < 0)
						continue;
					acc = acc << 6 | (unsigned)v;
					if ((bits += 6) >= 8) {
						bits -= 8;
						out[o++] = (char)(acc >> bits);
					}
				} else if (q2[k] == '_') {
					out[o++] = ' ';
				} else if (q2[k] == '=' && q2 + k + 2 < end &&
				    (h = hexval((unsigned char)q2[k + 1])) >= 0 &&
				    (l = hexval((unsigned char)q2[k + 2])) >= 0) {
					out[o++] = (char)(h << 4 | l);
					k += 2;
				} else
					out[o++] = q2[k];
			}
			i = (size_t)(end + 2 - s);
			/* Remember blanks that may sit between two words. */
			for (j = i; j < n && (s[j] == ' ' || s[j] == '\t') &&
			    o + 1 < cap; j++)
				out[o++] = s[j], pend++;
			i = j;
			continue;
		}
		pend = 0;
		out[o++] = s[i++];
	}
	out[o] = '\0';
	return o;
}

struct param {
	const char	*name, *val;
	size_t		 nlen, vlen;
	bool		 quoted;
};

/* Split "type; a=1; b="x y"" into parameters (pointers into v, which is
 * unfolded). Quoted values keep their backslashes; see unquote(). */
static size_t
params_split(const char *v, size_t n, struct param *ps, size_t max)
{
	size_t i = 0, np = 0;

	while (i < n && v[i] != ';')
		i++;
	while (i < n && np < max) {
		struct param p = { 0 };

		while (i < n && (v[i] == ';' || v[i] == ' ' || v[i] == '\t'))
			i++;
		p.name = v + i;
		while (i < n && v[i] != '=' && v[i] != ';')
			i++;
		p.nlen = (size_t)(v + i - p.name);
		while (p.nlen > 0 && (p.name[p.nlen - 1] == ' ' ||
		    p.name[p.nlen - 1] == '\t'))
			p.nlen--;
		if (i >= n || v[i] != '=')
			continue;
		i++;
		while (i < n && (v[i] == ' ' || v[i] == '\t'))
			i++;
		if (i < n && v[i] == '"') {
			p.quoted = true;
			p.val = v + ++i;
			while (i < n && v[i] != '"') {
				if (v[i] == '\\' && i + 1 < n)
					i++;
				i++;
			}
			p.vlen = (size_t)(v + i - p.val);
			if (i < n)
				i++;
		} else {
			p.val = v + i;
			while (i < n && v[i] != ';')
				i++;
			p.vlen = (size_t)(v + i - p.val);
			while (p.vlen > 0 && (p.val[p.vlen - 1] == ' ' ||
			    p.val[p.vlen - 1] == '\t'))
				p.vlen--;
		}
		if (p.nlen > 0)
			ps[np++] = p;
	}
	return np;
}

static void
unquote(const struct param *p, char *out, size_t cap, size_t *olen)
{
	size_t i;

	for (i = 0; i < p->vlen && *olen + 1 < cap; i++) {
		if (p->quoted && p->val[i] == '\\' && i + 1 < p->vlen)
			i++;
		out[(*olen)++] = p->val[i];
	}
}

/* Does p name attr, attr*, or section k of attr (attr*k, attr*k*)? Returns
 * 1 plain, 2 extended (percent-encoded), 0 no. */
static int
param_is(const struct param *p, const char *attr, long section)
{
	size_t al = strlen(attr), i;
	long k = 0;

	if (p->nlen < al || strncasecmp(p->name, attr, al) != 0)
		return 0;
	if (section < 0) {
		if (p->nlen == al)
			return 1;
		return p->nlen == al + 1 && p->name[al] == '*' ? 2 : 0;
	}
	if (p->nlen < al + 2 || p->name[al] != '*')
		return 0;
	for (i = al + 1; i < p->nlen && isdigit((unsigned char)p->name[i]); i++) {
		/* No message has that many sections; and a long digit run
		 * must not overflow (found by fuzz_mime). */
		if (k > 99999)
			return 0;
		k = k * 10 + (p->name[i] - '0');
	}
	if (i == al + 1 || k != section)
		return 0;
	if (i == p->nlen)
		return 1;
	return i + 1 == p->nlen && p->name[i] == '*' ? 2 : 0;
}

static bool
has_section(const struct param *ps, size_t np, const char *attr, long sec)
{
	size_t i;

	for (i = 0; i < np; i++)
		if (param_is(&ps[i], attr, sec) != 0)
			return true;
	return false;
}

/* Strip "charset'language'" from the first extended section. */
static void
ext_value(const struct param *p, bool first, char *out, size_t cap, size_t *olen)
{
	const char *s = p->val, *q;
	size_t n = p->vlen;

	if (first && (q = memchr(s, '\'', n)) != NULL &&
	    (q = memchr(q + 1, '\'', (size_t)(s + n - q - 1))) != NULL) {
		n -= (size_t)(q + 1 - s);
		s = q + 1;
	}
	pct_decode(s, n, out, cap, olen);
}

int
mime_param(const char *value, size_t vlen, const char *attr, char *out,
    size_t cap, size_t *outlen)
{
	struct param ps[64];
	char *v, *tmp;
	size_t n, np, i, o = 0;
	long sec;
	int kind, found = 0;

	if (cap == 0 || (v = malloc(vlen + 1)) == NULL)
		return -1;
	n = unfold(value, vlen, v, vlen + 1);
	np = params_split(v, n, ps, 64);
	/* RFC 2231: attr* wins over continuations, which win over attr. */
	for (i = 0; i < np && !found; i++)
		if (param_is(&ps[i], attr, -1) == 2) {
			ext_value(&ps[i], true, out, cap, &o);
			found = 1;
		}
	for (sec = 0; !found && sec < 1000 && has_section(ps, np, attr, sec);
	    sec++) {
		for (i = 0; (kind = param_is(&ps[i], attr, sec)) == 0; i++)
			;
		if (kind == 2)
			ext_value(&ps[i], sec == 0, out, cap, &o);
		else
			unquote(&ps[i], out, cap, &o);
	}
	if (sec > 0)
		found = 1;
	for (i = 0; i < np && !found; i++)
		if (param_is(&ps[i], attr, -1) == 1) {
			/* Plain values often carry RFC 2047 words (Outlook). */
			if ((tmp = malloc(cap)) == NULL)
				break;
			unquote(&ps[i], tmp, cap, &o);
			o = words_decode(tmp, o, out, cap);
			free(tmp);
			found = 1;
		}
	free(v);
	if (!found)
		return -1;
	out[o] = '\0';
	*outlen = o;
	return 0;
}

/* ---- entities ------------------------------------------------------------ */

/* The unfolded value of a header field of the entity, or 0 length. */
static size_t
field(const char *ent, size_t hlen, const char *name, char *out, size_t cap)
{
	const char *v;
	size_t vl;

	if (pf_header(ent, hlen, name, 1, &v, &vl) == -1) {
		out[0] = '\0';
		return 0;
	}
	return unfold(v, vl > MIME_MAX_VALUE ? MIME_MAX_VALUE : vl, out, cap);
}

static bool
type_is(const char *ct, const char *prefix)
{
	size_t n = strlen(prefix);

	while (*ct == ' ' || *ct == '\t')
		ct++;
	return strncasecmp(ct, prefix, n) == 0;
}

static void walk_entity(struct walk *, const char *, size_t, int);

static void
report(struct walk *w, const char *value, size_t vlen, const char *attr,
    const char *ent, size_t len, int depth)
{
	char name[MIME_MAX_NAME + 1];
	size_t nl;

	if (w->stop || vlen == 0)
		return;
	if (mime_param(value, vlen, attr, name, sizeof(name), &nl) != 0 || nl == 0)
		return;
	w->stop = w->pcb ? w->pcb(name, nl, ent, len, depth, w->arg) :
	    w->cb(name, nl, w->arg);
}

/* Split a multipart body at its delimiter lines ("--boundary", optionally
 * "--" after it to close) and walk each part. Text before the first and
 * after the last delimiter is preamble and epilogue, not parts. */
static void
walk_multipart(struct walk *w, const char *body, size_t len,
    const char *boundary, size_t blen, int depth)
{
	const char *p = body, *end = body + len, *nl, *part = NULL, *pend;
	bool closing;

	while (p < end && !w->stop) {
		nl = memchr(p, '\n', (size_t)(end - p));
		if ((size_t)(end - p) >= blen + 2 && p[0] == '-' && p[1] == '-' &&
		    memcmp(p + 2, boundary, blen) == 0) {
			closing = (size_t)(end - p) >= blen + 4 &&
			    p[blen + 2] == '-' && p[blen + 3] == '-';
			if (part != NULL) {
				/* The line end before a delimiter belongs to it. */
				pend = p;
				if (pend > part && pend[-1] == '\n')
					pend--;
				if (pend > part && pend[-1] == '\r')
					pend--;
				walk_entity(w, part, (size_t)(pend - part), depth + 1);
			}
			if (closing)
				return;
			part = nl ? nl + 1 : end;
		}
		p = nl ? nl + 1 : end;
	}
	/* No closing delimiter: the last part runs to the end. */
	if (part != NULL && part < end && !w->stop)
		walk_entity(w, part, (size_t)(end - part), depth + 1);
}

static void
walk_entity(struct walk *w, const char *ent, size_t len, int depth)
{
	char *ct, *cd, boundary[256];
	size_t hlen, ctl, cdl, blen;

	if (depth > MIME_MAX_DEPTH || ++w->parts > MIME_MAX_PARTS || w->stop)
		return;
	hlen = pf_body_offset(ent, len);
	if ((ct = malloc(2 * (MIME_MAX_VALUE + 1))) == NULL)
		return;
	cd = ct + MIME_MAX_VALUE + 1;
	ctl = field(ent, hlen, "Content-Type", ct, MIME_MAX_VALUE + 1);
	cdl = field(ent, hlen, "Content-Disposition", cd, MIME_MAX_VALUE + 1);
	report(w, cd, cdl, "filename", ent, len, depth);
	report(w, ct, ctl, "name", ent, len, depth);
	if (!w->stop && type_is(ct, "multipart/") &&
	    mime_param(ct, ctl, "boundary", boundary, sizeof(boundary), &blen) == 0 &&
	    blen > 0)
		walk_multipart(w, ent + hlen, len - hlen, boundary, blen, depth);
	else if (!w->stop && type_is(ct, "message/rfc822"))
		walk_entity(w, ent + hlen, len - hlen, depth + 1);
	free(ct);
}

int
mime_names(const char *msg, size_t len, mime_name_cb cb, void *arg)
{
	struct walk w = { .cb = cb, .arg = arg };

	walk_entity(&w, msg, len, 0);
	return w.stop;
}

int
mime_parts(const char *msg, size_t len, mime_part_cb cb, void *arg)
{
	struct walk w = { .pcb = cb, .arg = arg };

	walk_entity(&w, msg, len, 0);
	return w.stop;
}
