/* notice.h: the short RFC 5322 message a client receives in place of a
 * message a filter rejected. Pure: bytes in, a message out, no I/O. */
#ifndef NOTICE_H
#define NOTICE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "buffer.h"

struct notice_info {
	const char *filter;	/* who rejected it */
	const char *reason;	/* the filter's reason, or NULL */
	const char *text;	/* the filter's notice for the user, or NULL */
	const char *user;	/* the remote user (the notice's To) */
	const char *upstream_host;
	const char *sid;
	uint32_t msgno;
	const char *uidl;	/* NULL when unknown */
	uint64_t size;		/* the original's size, octets */
	const char *kept;	/* where the original is kept (never NULL) */
	const char *hostname;	/* for From and Message-ID */
	time_t now;
};

/* Append the notice (CRLF lines, unstuffed) to out, quoting From, Subject and
 * Date of the original message orig. 0, or -1 when out of memory. */
int notice_build(struct buf *out, const struct notice_info *,
    const char *orig, size_t origlen);

/* The first field `name` in the header section of msg, unfolded, with
 * control octets and non-ASCII replaced by '?', at most outlen-1 octets.
 * Returns 1 if found, 0 if not (out is then ""). */
int notice_header(const char *msg, size_t len, const char *name,
    char *out, size_t outlen);

/* Copy s into out (size outlen) as one printable US-ASCII line: controls and
 * non-ASCII become '?', runs of white space become one space. */
void notice_sanitize(char *out, size_t outlen, const char *s, size_t len);

#endif
