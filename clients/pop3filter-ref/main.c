/* main.c: pop3filter-ref, the reference filter on libpop3filter: a trace
 * header by default; Subject tags, attachment rejects and quarantine by rule. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pop3filter.h"
#include "ref.h"

struct ref {
	struct ref_config	 cfg;
	struct pf		*pf;
	char			 trace_value[512];
};

struct hit {
	const struct ref_config	*cfg;
	char			 name[256];
	const char		*glob;
};

static int
on_name(const char *name, size_t len, void *arg)
{
	struct hit *h = arg;
	const char *g;

	if ((g = config_match_name(h->cfg, name, len)) == NULL)
		return 0;
	snprintf(h->name, sizeof(h->name), "%.*s", (int)(len > 200 ? 200 : len),
	    name);
	h->glob = g;
	return 1;
}

/* The proxy did not grant the action a rule wants: say so in a header. */
static void
accept_warned(struct ref *ref, struct pf_req *r, const struct pf_message *m,
    const char *action, const char *warning)
{
	pf_log(ref->pf, PF_LOG_WARN, "session %s msg %llu: %s not granted; "
	    "accepting with a warning header", m->session_id,
	    (unsigned long long)m->number, action);
	if (pf_granted(r, PF_EDIT_HEADERS))
		pf_add_header(r, "X-POP3Filter-Ref-Warning", warning);
	pf_accept(r);
}

/* Parts to cut out: the outermost part (not the message itself) whose name
 * matches a strip pattern; parts inside it go with it. */
#define MAX_STRIPS	64

struct cuts {
	const struct ref_config	*cfg;
	const char		*msg;
	struct strip_span	 sp[MAX_STRIPS];
	size_t			 n;
	int			 top;	/* the message itself is such a file */
};

static int
on_part(const char *name, size_t len, const char *ent, size_t entlen,
    int depth, void *arg)
{
	struct cuts *c = arg;
	struct strip_span *s;
	const char *g;
	size_t off = (size_t)(ent - c->msg), i;

	if ((g = config_match_strip(c->cfg, name, len)) == NULL)
		return 0;
	if (depth == 0) {
		c->top = 1;	/* no part to replace: the header would go too */
		return 0;
	}
	/* Walked outside in: one inside the last cut is already gone. */
	if (c->n > 0 && off >= c->sp[c->n - 1].off &&
	    off < c->sp[c->n - 1].off + c->sp[c->n - 1].len)
		return 0;
	if (c->n == MAX_STRIPS)
		return 1;
	s = &c->sp[c->n++];
	s->off = off;
	s->len = entlen;
	s->glob = g;
	/* For the note: printable ASCII only, no quote. */
	for (i = 0; i < len && i < sizeof(s->name) - 1; i++)
		s->name[i] = name[i] >= 0x20 && name[i] < 0x7f && name[i] != '"' ?
		    name[i] : '?';
	s->name[i] = '\0';
	return 0;
}

/* Replace the message with one whose matching parts are notes. 1 if done
 * (answered), 0 if nothing to strip. */
static int
strip(struct ref *ref, struct pf_req *r, const struct pf_message *m)
{
	struct cuts c = { .cfg = &ref->cfg, .msg = m->body };
	char hdr[700], *out;
	size_t outlen;

	if (mime_parts(m->body, m->body_len, on_part, &c) != 0) {
		pf_log(ref->pf, PF_LOG_WARN, "session %s msg %llu: more than %d "
		    "parts to strip; the rest are left", m->session_id,
		    (unsigned long long)m->number, MAX_STRIPS);
	}
	if (c.top)
		pf_log(ref->pf, PF_LOG_INFO, "session %s msg %llu: the message "
		    "itself is a file to strip: left whole (use a reject pattern)",
		    m->session_id, (unsigned long long)m->number);
	if (c.n == 0)
		return 0;
	pf_reason(r, "attachment name matches a strip pattern");
	pf_tag(r, "stripped");
	if (!pf_granted(r, PF_REPLACE)) {
		accept_warned(ref, r, m, "replace",
		    "carries an attachment the rules would strip");
		return 1;
	}
	snprintf(hdr, sizeof(hdr), "%s: %s; stripped %zu attachment(s)\r\n",
	    ref->cfg.trace_name ? ref->cfg.trace_name : "X-POP3Filter-Ref",
	    ref->trace_value, c.n);
	if ((out = strip_build(m->body, m->body_len, c.sp, c.n, hdr,
	    &outlen)) == NULL) {
		pf_fail(r, "out of memory");
		return 1;
	}
	pf_log(ref->pf, PF_LOG_INFO, "session %s msg %llu: stripped %zu "
	    "attachment(s), the first \"%s\" (%s)", m->session_id,
	    (unsigned long long)m->number, c.n, c.sp[0].name, c.sp[0].glob);
	if (pf_replace(r, out, outlen) == -1) {
		pf_log(ref->pf, PF_LOG_ERROR, "replace: %s", pf_strerror(ref->pf));
		pf_fail(r, pf_strerror(ref->pf));
	}
	free(out);
	return 1;
}

/* Subject gets the rule's prefix once (not again on a second pass). */
static int
tag_subject(struct pf_req *r, const struct pf_message *m,
    const struct tag_rule *t)
{
	const char *v = "";
	size_t vl = 0, pl = strlen(t->prefix);
	char *s;
	int rc;

	pf_header(m->body, m->body_len, "Subject", 1, &v, &vl);
	if (vl >= pl && strncmp(v, t->prefix, pl) == 0)
		return 0;
	/* A Subject with a NUL cannot be carried; leave it. */
	if (memchr(v, '\0', vl) != NULL || (s = malloc(pl + vl + 1)) == NULL)
		return 0;
	memcpy(s, t->prefix, pl);
	memcpy(s + pl, v, vl);
	s[pl + vl] = '\0';
	rc = pf_change_header(r, "Subject", 1, s);
	free(s);
	return rc;
}

static void
reject(struct ref *ref, struct pf_req *r, const struct pf_message *m,
    const struct hit *h)
{
	char notice[1024], qid[128];
	const char *text = ref->cfg.notice ? ref->cfg.notice :
	    "This message was withheld because of an attachment named";

	snprintf(notice, sizeof(notice), "%s \"%s\" (matches %s).", text,
	    h->name, h->glob);
	pf_reason(r, "attachment name matches a reject pattern");
	pf_tag(r, "attachment");
	if (!pf_granted(r, PF_REJECT)) {
		accept_warned(ref, r, m, "reject", notice);
		return;
	}
	if (ref->cfg.quarantine == NULL) {
		/* The proxy keeps the original in its own quarantine. Log
		 * first: m dies with the verdict. */
		pf_log(ref->pf, PF_LOG_INFO, "session %s msg %llu: rejecting (%s)",
		    m->session_id, (unsigned long long)m->number, h->name);
		if (pf_reject(r, notice) == -1)
			pf_fail(r, pf_strerror(ref->pf));
		return;
	}
	/* Durable before we answer: the proxy will not keep a copy. */
	if (pf_quarantine_store(ref->cfg.quarantine, m->body, m->body_len, qid,
	    sizeof(qid)) == -1) {
		pf_log(ref->pf, PF_LOG_ERROR, "quarantine %s: %s",
		    ref->cfg.quarantine, strerror(errno));
		if (pf_tempfail(r, "quarantine unavailable") == -1)
			pf_fail(r, "quarantine unavailable");
		return;
	}
	pf_log(ref->pf, PF_LOG_INFO, "session %s msg %llu: rejecting (%s), kept as "
	    "%s", m->session_id, (unsigned long long)m->number, h->name, qid);
	if (pf_reject_quarantined(r, notice, qid) == -1) {
		pf_log(ref->pf, PF_LOG_ERROR, "reject: %s", pf_strerror(ref->pf));
		pf_fail(r, pf_strerror(ref->pf));
	}
}

static void
on_message(struct pf_req *r, const struct pf_message *m, void *arg)
{
	struct ref *ref = arg;
	struct hit h = { .cfg = &ref->cfg };
	const struct tag_rule *t;

	if (ref->cfg.nglobs > 0 &&
	    mime_names(m->body, m->body_len, on_name, &h) != 0) {
		reject(ref, r, m, &h);
		return;
	}
	if (ref->cfg.nstrips > 0 && strip(ref, r, m))
		return;
	if (pf_granted(r, PF_EDIT_HEADERS)) {
		if ((t = config_match_tag(&ref->cfg, m->body, m->body_len)) != NULL) {
			if (tag_subject(r, m, t) == -1)
				pf_log(ref->pf, PF_LOG_WARN, "tag: %s",
				    pf_strerror(ref->pf));
			pf_tag(r, "tagged");
			pf_reason(r, t->pattern);
		}
		if (ref->cfg.trace &&
		    pf_add_header(r, ref->cfg.trace_name ? ref->cfg.trace_name :
		    "X-POP3Filter-Ref", ref->trace_value) == -1)
			pf_log(ref->pf, PF_LOG_WARN, "trace header: %s",
			    pf_strerror(ref->pf));
	}
	if (pf_accept(r) == -1) {
		pf_log(ref->pf, PF_LOG_ERROR, "accept: %s", pf_strerror(ref->pf));
		pf_fail(r, pf_strerror(ref->pf));
	}
}

static void
usage(FILE *fp)
{
	fprintf(fp,
"usage: pop3filter-ref --socket PATH [--config FILE] [options]\n"
"\n"
"The reference pop3proxyd filter. Without rules it adds a trace header\n"
"(X-POP3Filter-Ref: checked by pop3filter-ref on HOST) and accepts.\n"
"\n"
"  --socket PATH              UNIX socket to listen on (a stale one is removed)\n"
"  --socket-mode MODE         chmod the socket (octal, e.g. 660)\n"
"  --config FILE              rules (see clients/pop3filter-ref/README)\n"
"  --tag PREFIX:HEADER:REGEX  prefix the Subject when HEADER matches REGEX\n"
"  --reject-attachment GLOB   reject messages with such attachment names\n"
"  --strip-attachment GLOB    replace such attachments with a note\n"
"  --quarantine DIR           keep rejected messages here (else the proxy does)\n"
"  --no-trace                 no trace header\n"
"  --max-inflight N           requests per connection (default 64)\n"
"  -v, --verbose              debug logging\n");
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "socket-mode", required_argument, NULL, 'm' },
		{ "config", required_argument, NULL, 'c' },
		{ "tag", required_argument, NULL, 't' },
		{ "reject-attachment", required_argument, NULL, 'a' },
		{ "strip-attachment", required_argument, NULL, 'x' },
		{ "quarantine", required_argument, NULL, 'q' },
		{ "no-trace", no_argument, NULL, 'n' },
		{ "max-inflight", required_argument, NULL, 'i' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct ref ref;
	const char *sock = NULL;
	char err[512], host[256], *p1, *p2, *end;
	unsigned long mode = 0, inflight = 0;
	bool verbose = false, no_trace = false;
	struct stat st;
	unsigned actions;
	int ch, rc;

	config_init(&ref.cfg);
	while ((ch = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
		switch (ch) {
		case 's':
			sock = optarg;
			break;
		case 'm':
			mode = strtoul(optarg, &end, 8);
			if (*end != '\0' || mode > 07777)
				goto usage;
			break;
		case 'c':
			if (config_load(&ref.cfg, optarg, err, sizeof(err)) == -1) {
				fprintf(stderr, "pop3filter-ref: %s\n", err);
				return 2;
			}
			break;
		case 't':
			/* PREFIX:HEADER:REGEX; the regex may contain colons. */
			if ((p1 = strchr(optarg, ':')) == NULL ||
			    (p2 = strchr(p1 + 1, ':')) == NULL)
				goto usage;
			*p1++ = '\0';
			*p2++ = '\0';
			if (config_add_tag(&ref.cfg, optarg, p1, p2, err,
			    sizeof(err)) == -1) {
				fprintf(stderr, "pop3filter-ref: --tag: %s\n", err);
				return 2;
			}
			break;
		case 'a':
			if (config_add_glob(&ref.cfg, optarg, err, sizeof(err)) == -1) {
				fprintf(stderr, "pop3filter-ref: %s\n", err);
				return 2;
			}
			break;
		case 'x':
			if (config_add_strip(&ref.cfg, optarg, err, sizeof(err)) == -1) {
				fprintf(stderr, "pop3filter-ref: %s\n", err);
				return 2;
			}
			break;
		case 'q':
			free(ref.cfg.quarantine);
			ref.cfg.quarantine = strdup(optarg);
			break;
		case 'n':
			no_trace = true;
			break;
		case 'i':
			inflight = strtoul(optarg, &end, 10);
			if (*end != '\0' || inflight == 0 || inflight > 100000)
				goto usage;
			break;
		case 'v':
			verbose = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			goto usage;
		}
	}
	if (sock == NULL || optind != argc)
		goto usage;
	if (no_trace)
		ref.cfg.trace = false;
	if (ref.cfg.quarantine != NULL && (stat(ref.cfg.quarantine, &st) == -1 ||
	    !S_ISDIR(st.st_mode))) {
		fprintf(stderr, "pop3filter-ref: quarantine %s: not a directory\n",
		    ref.cfg.quarantine);
		return 2;
	}
	if (gethostname(host, sizeof(host)) == -1)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	snprintf(ref.trace_value, sizeof(ref.trace_value),
	    "checked by pop3filter-ref on %s", host);

	if ((ref.pf = pf_new(NULL)) == NULL) {
		fprintf(stderr, "pop3filter-ref: out of memory\n");
		return 1;
	}
	actions = PF_EDIT_HEADERS;
	if (ref.cfg.nglobs > 0)
		actions |= PF_REJECT | PF_TEMPFAIL;
	if (ref.cfg.nstrips > 0)
		actions |= PF_REPLACE;
	pf_name(ref.pf, "pop3filter-ref/" PF_LIB_VERSION);
	pf_declare(ref.pf, actions);
	pf_on_message(ref.pf, on_message, &ref);
	if (verbose)
		pf_log_level(ref.pf, PF_LOG_DEBUG);
	if ((inflight && pf_max_inflight(ref.pf, (uint32_t)inflight) == -1) ||
	    (mode && pf_socket_mode(ref.pf, (mode_t)mode) == -1) ||
	    pf_listen(ref.pf, sock) == -1) {
		fprintf(stderr, "pop3filter-ref: %s\n", pf_strerror(ref.pf));
		pf_free(ref.pf);
		return 1;
	}
	pf_log(ref.pf, PF_LOG_INFO, "%zu tag rule(s), %zu reject and %zu strip "
	    "pattern(s), trace %s, quarantine %s", ref.cfg.ntags, ref.cfg.nglobs,
	    ref.cfg.nstrips,
	    ref.cfg.trace ? "on" : "off",
	    ref.cfg.quarantine ? ref.cfg.quarantine : "by the proxy");
	rc = pf_run(ref.pf);
	pf_free(ref.pf);
	config_free(&ref.cfg);
	return rc == 0 ? 0 : 1;
usage:
	usage(stderr);
	return 2;
}
