/* clamd.h: pop3filter-clamd's pure parts: the zINSTREAM framing of a message
 * and the parser of clamd's one-line, NUL-terminated answer. */
#ifndef CLAMD_H
#define CLAMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bridge.h"

#define CLAMD_CHUNK		(256 * 1024)	/* octets per INSTREAM chunk */
#define CLAMD_MAX_REPLY		4096

/* The segments that stream len octets at msg: "zINSTREAM\0", then per chunk
 * a 4-octet big-endian length and the octets, then a zero length. The
 * lengths live in *lens (malloc'ed, free it after the exchange); *segs too.
 * 0, or -1 (no memory). */
int	clamd_instream(const char *msg, size_t len, size_t chunk,
	    struct bridge_seg **segs, size_t *nsegs, unsigned char **lens);

enum clamd_status { CLAMD_CLEAN = 1, CLAMD_FOUND, CLAMD_ERROR };

struct clamd_reply {
	enum clamd_status status;
	char		 text[256];	/* the signature, or the error */
	bool		 size_limit;	/* "INSTREAM size limit exceeded" */
};

/* 1: complete, 0: more needed (eof false), -1: malformed (why in err). */
int	clamd_reply_parse(const char *buf, size_t len, bool eof,
	    struct clamd_reply *, char *err, size_t errlen);
int	clamd_reply_complete(const char *buf, size_t len);

#endif
