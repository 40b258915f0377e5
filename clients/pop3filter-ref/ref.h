/* ref.h: pop3filter-ref's parts: its configuration (rules) and the MIME
 * walker that finds attachment names. */
#ifndef REF_H
#define REF_H

#include <regex.h>
#include <stdbool.h>
#include <stddef.h>

#define REF_MAX_RULES	64
#define REF_MAX_GLOBS	64

struct tag_rule {
	char		*prefix;	/* "[SPAM] " */
	char		*header;	/* field name to test */
	char		*pattern;	/* for logs */
	regex_t		 re;		/* extended, case-insensitive */
};

struct ref_config {
	bool		 trace;		/* add the trace header (default) */
	char		*trace_name;	/* "X-POP3Filter-Ref" */
	struct tag_rule	 tags[REF_MAX_RULES];
	size_t		 ntags;
	char		*globs[REF_MAX_GLOBS];	/* attachment names to reject */
	size_t		 nglobs;
	char		*strips[REF_MAX_GLOBS];	/* attachments to cut out */
	size_t		 nstrips;
	char		*notice;	/* reject notice text */
	char		*quarantine;	/* directory, or NULL */
};

/* rules.c */
void	config_init(struct ref_config *);
void	config_free(struct ref_config *);
/* Read a configuration file; on error, a message in err. 0/-1. */
int	config_load(struct ref_config *, const char *path, char *err, size_t);
int	config_add_tag(struct ref_config *, const char *prefix, const char *header,
	    const char *regex, char *err, size_t);
int	config_add_glob(struct ref_config *, const char *glob, char *err, size_t);
int	config_add_strip(struct ref_config *, const char *glob, char *err, size_t);
/* The first tag rule matching one of the message's header fields, or NULL. */
const struct tag_rule *config_match_tag(const struct ref_config *,
	    const char *msg, size_t len);
/* Whether a file name matches an attachment glob (case-insensitive; trailing
 * dots and blanks ignored, as Windows does); the glob, or NULL. */
const char *config_match_name(const struct ref_config *, const char *name,
	    size_t len);
/* The same against the strip-attachment globs. */
const char *config_match_strip(const struct ref_config *, const char *name,
	    size_t len);

/* mime.c: calls cb for each file name a MIME entity announces (filename=,
 * filename*=, RFC 2231 continuations, name= of Content-Type, RFC 2047 words),
 * decoded, in nested multiparts and message/rfc822 parts. Pure. cb returns
 * non-zero to stop; mime_names returns that value, or 0. */
typedef int	(*mime_name_cb)(const char *name, size_t len, void *arg);
int	mime_names(const char *msg, size_t len, mime_name_cb, void *arg);
/* The same, with the entity that announces the name: where it starts in msg
 * and its length (its header and body, without the line end before the next
 * delimiter), and its depth (0: the message itself). */
typedef int	(*mime_part_cb)(const char *name, size_t len, const char *ent,
	    size_t entlen, int depth, void *arg);
int	mime_parts(const char *msg, size_t len, mime_part_cb, void *arg);

/* strip.c: msg with each span (sorted, not overlapping) replaced by a short
 * text/plain part saying what was removed; the header line hdr (with its
 * CRLF), if not NULL, is put first. Pure. NULL when out of memory. */
struct strip_span {
	size_t		 off, len;
	char		 name[128];	/* printable ASCII, for the note */
	const char	*glob;
};
char	*strip_build(const char *msg, size_t len, const struct strip_span *,
	    size_t n, const char *hdr, size_t *outlen);
/* Unfold and decode one parameter of a header value (exposed for tests). */
int	mime_param(const char *value, size_t vlen, const char *attr, char *out,
	    size_t outcap, size_t *outlen);

#endif
