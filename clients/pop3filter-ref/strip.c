/* strip.c: pop3filter-ref's attachment stripping: the message again, with
 * each unwanted MIME part replaced by a short note. Pure: bytes in, bytes out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref.h"

/*
 * A part is replaced whole, its header included, so the boundaries around
 * it stay where they were and the rest of the message is untouched octet
 * for octet. The note says what was removed; the name in it was made
 * printable by the caller, so it cannot end the note's line or header.
 */
#define NOTE_MAX	512
#define NOTE_FMT \
	"Content-Type: text/plain; charset=us-ascii\r\n" \
	"Content-Disposition: inline\r\n" \
	"\r\n" \
	"[pop3filter-ref removed the attachment \"%s\": its name matches %s]"

char *
strip_build(const char *msg, size_t len, const struct strip_span *sp, size_t n,
    const char *hdr, size_t *outlen)
{
	size_t hl = hdr ? strlen(hdr) : 0, cap = hl + len + 1, o = 0, at = 0, i;
	char *out, note[NOTE_MAX];
	int k;

	cap += n * sizeof(note);
	if ((out = malloc(cap)) == NULL)
		return NULL;
	memcpy(out, hdr ? hdr : "", hl);
	o = hl;
	for (i = 0; i < n; i++) {
		/* Spans are sorted and apart: copy up to this one, then the
		 * note in its place. */
		memcpy(out + o, msg + at, sp[i].off - at);
		o += sp[i].off - at;
		k = snprintf(note, sizeof(note), NOTE_FMT, sp[i].name, sp[i].glob);
		if (k < 0)
			k = 0;
		if ((size_t)k >= sizeof(note))
			k = sizeof(note) - 1;
		memcpy(out + o, note, (size_t)k);
		o += (size_t)k;
		at = sp[i].off + sp[i].len;
	}
	memcpy(out + o, msg + at, len - at);
	o += len - at;
	*outlen = o;
	return out;
}
