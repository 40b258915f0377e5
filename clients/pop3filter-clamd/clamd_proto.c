/* clamd_proto.c: clamd's zINSTREAM command without I/O: the chunked framing
 * of a message (no copy of it) and the parser of clamd's answer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clamd.h"

static const char instream[] = "zINSTREAM";	/* sent with its NUL */
static const unsigned char zero_len[4];

int
clamd_instream(const char *msg, size_t len, size_t chunk,
    struct bridge_seg **segs, size_t *nsegs, unsigned char **lens)
{
	size_t nchunks = chunk ? (len + chunk - 1) / chunk : 0, i, n, off;
	struct bridge_seg *s;
	unsigned char *l;

	if (chunk == 0 || chunk > UINT32_MAX)
		return -1;
	if ((s = calloc(2 * nchunks + 2, sizeof(*s))) == NULL)
		return -1;
	if ((l = malloc(4 * (nchunks ? nchunks : 1))) == NULL) {
		free(s);
		return -1;
	}
	s[0] = (struct bridge_seg){ instream, sizeof(instream) };
	for (i = 0, off = 0; i < nchunks; i++, off += n) {
		n = len - off < chunk ? len - off : chunk;
		l[4 * i] = (unsigned char)(n >> 24);
		l[4 * i + 1] = (unsigned char)(n >> 16);
		l[4 * i + 2] = (unsigned char)(n >> 8);
		l[4 * i + 3] = (unsigned char)n;
		s[1 + 2 * i] = (struct bridge_seg){ (const char *)l + 4 * i, 4 };
		s[2 + 2 * i] = (struct bridge_seg){ msg + off, n };
	}
	s[1 + 2 * nchunks] = (struct bridge_seg){ (const char *)zero_len, 4 };
	*segs = s;
	*nsegs = 2 * nchunks + 2;
	*lens = l;
	return 0;
}

static int
perr(char *err, size_t errlen, const char *what)
{
	snprintf(err, errlen, "%s", what);
	return -1;
}

static bool
ends_with(const char *s, size_t n, const char *suffix)
{
	size_t k = strlen(suffix);

	return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* "stream: OK", "stream: <signature> FOUND", "<why> ERROR"; other text
 * ("UNKNOWN COMMAND", "COMMAND READ TIMED OUT") is an error too. */
int
clamd_reply_parse(const char *buf, size_t len, bool eof, struct clamd_reply *r,
    char *err, size_t errlen)
{
	const char *nul = memchr(buf, '\0', len), *t;
	size_t n, i;

	memset(r, 0, sizeof(*r));
	if (nul == NULL) {
		if (len > CLAMD_MAX_REPLY)
			return perr(err, errlen, "answer too long");
		if (eof)
			return perr(err, errlen, len ? "answer without its NUL" :
			    "empty answer");
		return 0;
	}
	if ((size_t)(nul - buf) + 1 != len)
		return perr(err, errlen, "octets after the answer");
	n = (size_t)(nul - buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	if (n == 0)
		return perr(err, errlen, "empty answer");
	for (i = 0; i < n; i++)
		if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] > 0x7e)
			return perr(err, errlen, "control or 8-bit octets in the "
			    "answer");
	if (n > CLAMD_MAX_REPLY)
		return perr(err, errlen, "answer too long");
	if (n == 10 && memcmp(buf, "stream: OK", 10) == 0) {
		r->status = CLAMD_CLEAN;
		return 1;
	}
	if (n >= 8 + 5 && memcmp(buf, "stream: ", 8) == 0 &&
	    ends_with(buf, n, "FOUND")) {
		t = buf + 8;
		/* "stream: FOUND" has no room for a name. */
		if (n < 8 + 6 + 1 || buf[n - 6] != ' ')
			return perr(err, errlen, "bad signature name");
		n -= 8 + 6;
		if (n >= sizeof(r->text) || t[0] == ' ' || t[n - 1] == ' ')
			return perr(err, errlen, "bad signature name");
		r->status = CLAMD_FOUND;
		memcpy(r->text, t, n);
		r->text[n] = '\0';
		return 1;
	}
	r->status = CLAMD_ERROR;
	if (ends_with(buf, n, " ERROR"))
		n -= 6;
	if (n >= sizeof(r->text))
		n = sizeof(r->text) - 1;
	memcpy(r->text, buf, n);
	r->text[n] = '\0';
	r->size_limit = strstr(r->text, "size limit exceeded") != NULL;
	return 1;
}

int
clamd_reply_complete(const char *buf, size_t len)
{
	return memchr(buf, '\0', len) != NULL;
}
