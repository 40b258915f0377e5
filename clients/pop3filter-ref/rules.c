/* rules.c: pop3filter-ref's configuration file and rules: Subject tagging by
 * header regex, attachment name globs, notice and quarantine settings. */
#include <ctype.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pop3filter.h"
#include "ref.h"

void
config_init(struct ref_config *c)
{
	memset(c, 0, sizeof(*c));
	c->trace = true;
}

void
config_free(struct ref_config *c)
{
	size_t i;

	for (i = 0; i < c->ntags; i++) {
		free(c->tags[i].prefix);
		free(c->tags[i].header);
		free(c->tags[i].pattern);
		regfree(&c->tags[i].re);
	}
	for (i = 0; i < c->nglobs; i++)
		free(c->globs[i]);
	for (i = 0; i < c->nstrips; i++)
		free(c->strips[i]);
	free(c->trace_name);
	free(c->notice);
	free(c->quarantine);
	memset(c, 0, sizeof(*c));
}

int
config_add_tag(struct ref_config *c, const char *prefix, const char *header,
    const char *regex, char *err, size_t errlen)
{
	struct tag_rule *t;
	int rc;

	if (c->ntags == REF_MAX_RULES) {
		snprintf(err, errlen, "more than %d tag rules", REF_MAX_RULES);
		return -1;
	}
	t = &c->tags[c->ntags];
	if ((rc = regcomp(&t->re, regex, REG_EXTENDED | REG_ICASE | REG_NOSUB))) {
		regerror(rc, &t->re, err, errlen);
		return -1;
	}
	t->prefix = strdup(prefix);
	t->header = strdup(header);
	t->pattern = strdup(regex);
	c->ntags++;
	return 0;
}

static int
glob_add(char **globs, size_t *n, const char *glob, char *err, size_t errlen)
{
	if (*n == REF_MAX_GLOBS) {
		snprintf(err, errlen, "more than %d attachment patterns",
		    REF_MAX_GLOBS);
		return -1;
	}
	if ((globs[*n] = strdup(glob)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	(*n)++;
	return 0;
}

int
config_add_glob(struct ref_config *c, const char *glob, char *err, size_t errlen)
{
	return glob_add(c->globs, &c->nglobs, glob, err, errlen);
}

int
config_add_strip(struct ref_config *c, const char *glob, char *err, size_t errlen)
{
	return glob_add(c->strips, &c->nstrips, glob, err, errlen);
}

static char *
skip_ws(char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/* Next blank-separated word (or "quoted string", with \" and \\), cut out
 * in place; NULL at the end of the line. */
static char *
word(char **pp)
{
	char *p = skip_ws(*pp), *w, *o;

	if (*p == '\0')
		return NULL;
	if (*p == '"') {
		w = o = ++p;
		while (*p != '\0' && *p != '"') {
			if (*p == '\\' && p[1] != '\0')
				p++;
			*o++ = *p++;
		}
		if (*p == '"')
			p++;
		*o = '\0';
		*pp = p;
		return w;
	}
	w = p;
	while (*p != '\0' && *p != ' ' && *p != '\t')
		p++;
	if (*p != '\0')
		*p++ = '\0';
	*pp = p;
	return w;
}

static int
set_str(char **dst, const char *v)
{
	free(*dst);
	return (*dst = strdup(v)) == NULL ? -1 : 0;
}

int
config_load(struct ref_config *c, const char *path, char *err, size_t errlen)
{
	char line[4096], msg[256], *p, *key, *a, *b;
	FILE *fp;
	int lineno = 0, rc = -1;
	size_t n;

	if ((fp = fopen(path, "r")) == NULL) {
		snprintf(err, errlen, "%s: cannot open", path);
		return -1;
	}
	while (fgets(line, sizeof(line), fp) != NULL) {
		lineno++;
		n = strlen(line);
		if (n > 0 && line[n - 1] != '\n' && !feof(fp)) {
			snprintf(msg, sizeof(msg), "line too long");
			goto bad;
		}
		while (n > 0 && isspace((unsigned char)line[n - 1]))
			line[--n] = '\0';
		p = skip_ws(line);
		if (*p == '#' || *p == '\0')
			continue;
		key = word(&p);
		if (strcmp(key, "trace") == 0) {
			a = word(&p);
			if (a == NULL || (strcmp(a, "yes") && strcmp(a, "no"))) {
				snprintf(msg, sizeof(msg), "trace yes|no");
				goto bad;
			}
			c->trace = strcmp(a, "yes") == 0;
		} else if (strcmp(key, "trace-header") == 0) {
			a = word(&p);
			if (a == NULL || set_str(&c->trace_name, a) == -1) {
				snprintf(msg, sizeof(msg), "trace-header NAME");
				goto bad;
			}
		} else if (strcmp(key, "tag") == 0) {
			/* tag "PREFIX" HEADER REGEX (the rest of the line) */
			a = word(&p);
			b = word(&p);
			p = skip_ws(p);
			if (a == NULL || b == NULL || *p == '\0') {
				snprintf(msg, sizeof(msg), "tag \"PREFIX\" HEADER REGEX");
				goto bad;
			}
			if (config_add_tag(c, a, b, p, msg, sizeof(msg)) == -1)
				goto bad;
		} else if (strcmp(key, "reject-attachment") == 0) {
			if ((a = word(&p)) == NULL) {
				snprintf(msg, sizeof(msg), "reject-attachment GLOB...");
				goto bad;
			}
			for (; a != NULL; a = word(&p))
				if (config_add_glob(c, a, msg, sizeof(msg)) == -1)
					goto bad;
		} else if (strcmp(key, "strip-attachment") == 0) {
			if ((a = word(&p)) == NULL) {
				snprintf(msg, sizeof(msg), "strip-attachment GLOB...");
				goto bad;
			}
			for (; a != NULL; a = word(&p))
				if (config_add_strip(c, a, msg, sizeof(msg)) == -1)
					goto bad;
		} else if (strcmp(key, "notice") == 0) {
			p = skip_ws(p);
			if (*p == '\0' || set_str(&c->notice, p) == -1) {
				snprintf(msg, sizeof(msg), "notice TEXT");
				goto bad;
			}
		} else if (strcmp(key, "quarantine") == 0) {
			if ((a = word(&p)) == NULL || set_str(&c->quarantine, a) == -1) {
				snprintf(msg, sizeof(msg), "quarantine DIRECTORY");
				goto bad;
			}
		} else {
			snprintf(msg, sizeof(msg), "unknown keyword \"%.40s\"", key);
			goto bad;
		}
	}
	rc = 0;
	goto done;
bad:
	snprintf(err, errlen, "%s:%d: %s", path, lineno, msg);
done:
	fclose(fp);
	return rc;
}

const struct tag_rule *
config_match_tag(const struct ref_config *c, const char *msg, size_t len)
{
	const char *v;
	char *s, *o;
	size_t vl, i, n;
	unsigned k;

	for (i = 0; i < c->ntags; i++) {
		/* Every occurrence of the field counts. */
		for (k = 1; pf_header(msg, len, c->tags[i].header, k, &v, &vl) == 0;
		    k++) {
			if ((s = malloc(vl + 1)) == NULL)
				return NULL;
			/* Unfold, and stop at a NUL: regexec sees C strings. */
			for (o = s, n = 0; n < vl && v[n] != '\0'; n++)
				if (v[n] != '\r' && v[n] != '\n')
					*o++ = v[n];
			*o = '\0';
			if (regexec(&c->tags[i].re, s, 0, NULL, 0) == 0) {
				free(s);
				return &c->tags[i];
			}
			free(s);
		}
	}
	return NULL;
}

static const char *
glob_match(char *const *globs, size_t n, const char *name, size_t len)
{
	char buf[1025];
	size_t i;

	if (len >= sizeof(buf))
		len = sizeof(buf) - 1;
	memcpy(buf, name, len);
	buf[len] = '\0';
	/* A NUL ends the name for us as it would for the receiving system. */
	len = strlen(buf);
	while (len > 0 && (buf[len - 1] == '.' || buf[len - 1] == ' ' ||
	    buf[len - 1] == '\t'))
		buf[--len] = '\0';
	for (i = 0; i < n; i++)
		if (fnmatch(globs[i], buf, FNM_CASEFOLD) == 0)
			return globs[i];
	return NULL;
}

const char *
config_match_name(const struct ref_config *c, const char *name, size_t len)
{
	return glob_match(c->globs, c->nglobs, name, len);
}

const char *
config_match_strip(const struct ref_config *c, const char *name, size_t len)
{
	return glob_match(c->strips, c->nstrips, name, len);
}
