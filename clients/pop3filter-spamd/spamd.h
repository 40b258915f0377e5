/* spamd.h: pop3filter-spamd's pure parts: the SPAMC/1.5 request head, the
 * SPAMD reply parser, and header-block diffing into the proxy's header edits. */
#ifndef SPAMD_H
#define SPAMD_H

#include <stdbool.h>
#include <stddef.h>

#define SPAMD_MAX_HEAD_LINE	8192	/* one reply header line */
#define SPAMD_MAX_HEADS		64	/* reply header lines */
#define HDR_MAX_FIELDS		10000	/* fields of one message's header */
#define HDR_MAX_EDITS		1024	/* the protocol's bound on edits */

/* The request head for command ("HEADERS", "PROCESS") and a message of len
 * octets; user may be NULL (no User line). Length of the head written, or -1
 * (no room, or a user name with characters a header line cannot carry). */
int	spamd_request_head(char *out, size_t cap, const char *command,
	    size_t len, const char *user);

struct spamd_reply {
	int		 major, minor;	/* SPAMD/1.1 */
	int		 code;		/* 0: EX_OK; else spamd's error */
	char		 message[128];	/* "EX_OK" or spamd's error text */
	bool		 has_spam;	/* a Spam: line was there */
	bool		 is_spam;
	double		 score, threshold;
	bool		 has_length;
	size_t		 content_length;
	const char	*body;		/* into the parsed buffer */
	size_t		 body_len;
};

/* Parse what spamd sent so far. 1: complete (an error reply is complete once
 * its status line is); 0: more is needed (and eof is false); -1: malformed
 * or truncated, with why in err. eof: the connection has been closed. */
int	spamd_reply_parse(const char *buf, size_t len, bool eof,
	    struct spamd_reply *, char *err, size_t errlen);
/* For the bridge's completeness check: whether spamd_reply_parse would not
 * want more (1), or needs more (0). */
int	spamd_reply_complete(const char *buf, size_t len);

/* A header field, as the proxy's edits see it (PROTOCOL.md section 8). */
struct hfield {
	const char	*name;
	size_t		 nlen;
	const char	*value;		/* after ':' and blanks, folds kept */
	size_t		 vlen;		/* without the final line end */
	size_t		 pos;		/* its place in the block, from 0 */
};

struct hlist {
	struct hfield	*f;
	size_t		 n;
};

/* Split the header block of msg into fields. 0, or -1 (no memory, or more
 * than HDR_MAX_FIELDS fields). Free with hlist_free. */
int	hlist_parse(const char *msg, size_t len, struct hlist *);
void	hlist_free(struct hlist *);

enum hedit_op { HEDIT_ADD = 1, HEDIT_CHANGE, HEDIT_DELETE };

struct hedit {
	enum hedit_op	 op;
	const char	*name;		/* points into one of the lists */
	size_t		 nlen;
	const char	*value;		/* NULL for delete */
	size_t		 vlen;
	unsigned	 index;		/* change: >= 1; delete: 0 = all */
};

/* Only fields spamd's markup touches: X-Spam-* and Subject (used when the
 * rest of spamd's header block belongs to a body we cannot send as edits). */
#define HDIFF_TAGS_ONLY	0x01u

/* The edits that turn the fields of from into those of to: per field name
 * the same values in the same order. Changes and deletions keep the place of
 * a field; added fields come at the end in to's order. *edits is malloc'ed
 * (NULL when there are none). 0, or -1 (no memory, or over HDR_MAX_EDITS). */
int	hdr_diff(const struct hlist *from, const struct hlist *to,
	    unsigned flags, struct hedit **edits, size_t *nedits);

/* Whether the MIME structure fields (MIME-Version, Content-Type,
 * Content-Transfer-Encoding) differ: spamd then rewrote the body too
 * (report_safe), and header edits alone cannot express its result. */
bool	hdr_mime_changed(const struct hlist *from, const struct hlist *to);

#endif
