/* pf_header.c: read-only helpers for filter authors: find a header field of
 * a message, and where its body starts. Pure: bytes in, pointers out. */
#include <string.h>
#include <strings.h>

#include "pop3filter.h"

/* End of the line starting at p (the octet after its LF), or end. */
static const char *
line_end(const char *p, const char *end)
{
	const char *lf = memchr(p, '\n', (size_t)(end - p));

	return lf ? lf + 1 : end;
}

static bool
blank_line(const char *p, const char *end)
{
	return (p < end && *p == '\n') ||
	    (end - p >= 2 && p[0] == '\r' && p[1] == '\n');
}

size_t
pf_body_offset(const char *msg, size_t len)
{
	const char *p = msg, *end = msg + len;

	while (p < end) {
		if (blank_line(p, end))
			return (size_t)(line_end(p, end) - msg);
		p = line_end(p, end);
	}
	return len;
}

int
pf_header(const char *msg, size_t len, const char *name, unsigned n,
    const char **val, size_t *vlen)
{
	const char *p = msg, *end = msg + len, *next, *v, *colon;
	size_t nlen = strlen(name);
	unsigned seen = 0;

	if (n == 0 || nlen == 0)
		return -1;
	while (p < end && !blank_line(p, end)) {
		/* A field is its first line plus continuation lines. */
		next = line_end(p, end);
		while (next < end && (*next == ' ' || *next == '\t'))
			next = line_end(next, end);
		colon = memchr(p, ':', (size_t)(next - p));
		if (colon != NULL && (size_t)(colon - p) == nlen &&
		    strncasecmp(p, name, nlen) == 0 && ++seen == n) {
			v = colon + 1;
			while (v < next && (*v == ' ' || *v == '\t'))
				v++;
			/* Drop the field's final line end. */
			if (next > v && next[-1] == '\n')
				next--;
			if (next > v && next[-1] == '\r')
				next--;
			*val = v;
			*vlen = (size_t)(next - v);
			return 0;
		}
		p = next;
	}
	return -1;
}
