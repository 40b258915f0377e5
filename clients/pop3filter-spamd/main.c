/* main.c: pop3filter-spamd, a pop3proxyd filter that asks SpamAssassin's spamd
 * (SPAMC/1.5) about each message and tags it with header edits like spamc. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "bridge.h"
#include "pop3filter.h"
#include "spamd.h"

#define SPAMC_MAX_SIZE	512000		/* spamc's default -s */

struct spamd {
	struct pf		*pf;
	struct bridge		*b;
	struct bridge_common	 c;
	const char		*user;	/* NULL: no User line; "%u": POP3 user */
	uint64_t		 max_size;
	bool			 process;	/* PROCESS; replace if the body changed */
	bool			 reject;	/* --reject-score given */
	double			 reject_score;
	bool			 warned_mime;	/* report_safe warning logged once */
};

/* One message at spamd. */
struct job {
	struct spamd	*sd;
	struct pf_req	*r;
	struct xchg	*x;
	char		 head[512];
};

static void
job_free(struct job *j)
{
	pf_req_set_data(j->r, NULL);
	free(j);
}

/* NUL-terminated copies for the library's C-string interface. */
static int
send_edits(struct spamd *sd, struct pf_req *r, const struct hedit *e, size_t n)
{
	char name[257], *value;
	size_t i;
	int rc = 0;

	for (i = 0; i < n && rc == 0; i++) {
		if (e[i].nlen >= sizeof(name))
			return -1;
		memcpy(name, e[i].name, e[i].nlen);
		name[e[i].nlen] = '\0';
		if (e[i].op == HEDIT_DELETE) {
			rc = pf_delete_header(r, name, e[i].index);
			continue;
		}
		if ((value = malloc(e[i].vlen + 1)) == NULL)
			return -1;
		memcpy(value, e[i].value, e[i].vlen);
		value[e[i].vlen] = '\0';
		if (memchr(e[i].value, '\0', e[i].vlen) != NULL)
			rc = -1;	/* a NUL cannot be carried */
		else if (e[i].op == HEDIT_ADD)
			rc = pf_add_header(r, name, value);
		else
			rc = pf_change_header(r, name, e[i].index, value);
		free(value);
	}
	return rc;
}

static void
reject(struct spamd *sd, struct pf_req *r, const struct pf_message *m,
    const struct spamd_reply *rep)
{
	char notice[1024], what[64];

	snprintf(notice, sizeof(notice), "%s (SpamAssassin score %.1f, "
	    "rejecting at %.1f).", sd->c.notice ? sd->c.notice :
	    "This message was withheld as spam", rep->score, sd->reject_score);
	snprintf(what, sizeof(what), "spam, score %.1f", rep->score);
	pf_reason(r, "spamd score over --reject-score");
	bridge_reject(sd->pf, r, m, &sd->c, notice, what);
}

/* spamd's verdict on the message it saw: reject, replace or edits. */
static void
answer(struct spamd *sd, struct pf_req *r, const struct pf_message *m,
    const struct spamd_reply *rep)
{
	struct hlist from = { NULL, 0 }, to = { NULL, 0 };
	struct hedit *e = NULL;
	size_t ne = 0, boff, noff;
	unsigned flags = 0;

	if (rep->has_spam) {
		pf_score(r, rep->score);
		pf_tag(r, rep->is_spam ? "spam" : "ham");
	}
	if (sd->reject && rep->has_spam && rep->score >= sd->reject_score &&
	    pf_granted(r, PF_REJECT)) {
		reject(sd, r, m, rep);
		return;
	}
	if (sd->process) {
		/* spamd sent the whole message: if the body is ours, edits
		 * say the same in fewer octets; else it is a replacement. */
		boff = pf_body_offset(m->body, m->body_len);
		noff = pf_body_offset(rep->body, rep->body_len);
		if (m->body_len - boff != rep->body_len - noff ||
		    memcmp(m->body + boff, rep->body + noff, m->body_len - boff)) {
			bridge_must(sd->pf, r, pf_replace(r, rep->body, rep->body_len),
			    "replace");
			return;
		}
	}
	if (!pf_granted(r, PF_EDIT_HEADERS)) {
		bridge_must(sd->pf, r, pf_accept(r), "accept");
		return;
	}
	if (hlist_parse(m->body, m->body_len, &from) == -1 ||
	    hlist_parse(rep->body, rep->body_len, &to) == -1) {
		pf_fail(r, "header block too large");
		goto done;
	}
	if (!sd->process && hdr_mime_changed(&from, &to)) {
		/* report_safe: spamd wrapped the message. Its header block
		 * belongs to a body we do not have; carry only the markup. */
		flags |= HDIFF_TAGS_ONLY;
		if (!sd->warned_mime)
			pf_log(sd->pf, PF_LOG_WARN, "spamd rewrote a message's "
			    "MIME structure (report_safe): passing only its "
			    "X-Spam-* and Subject fields; set report_safe 0 or "
			    "run with --process");
		sd->warned_mime = true;
	}
	if (hdr_diff(&from, &to, flags, &e, &ne) == -1) {
		pf_fail(r, "too many header edits");
		goto done;
	}
	if (send_edits(sd, r, e, ne) == -1) {
		pf_log(sd->pf, PF_LOG_WARN, "session %s msg %llu: spamd's "
		    "headers cannot be sent as edits: %s", m->session_id,
		    (unsigned long long)m->number, pf_strerror(sd->pf));
		pf_fail(r, "spamd's headers cannot be sent as edits");
		goto done;
	}
	bridge_must(sd->pf, r, pf_accept(r), "accept");
done:
	free(e);
	hlist_free(&from);
	hlist_free(&to);
}

static void
on_spamd(struct xchg *x, const char *err, const char *buf, size_t len,
    void *arg)
{
	struct job *j = arg;
	struct spamd *sd = j->sd;
	struct pf_req *r = j->r;
	const struct pf_message *m = pf_req_message(r);
	struct spamd_reply rep;
	char perr[128], why[512];

	job_free(j);
	if (err != NULL) {
		pf_log(sd->pf, PF_LOG_WARN, "session %s msg %llu: %s",
		    m->session_id, (unsigned long long)m->number, err);
		pf_fail(r, err);
		return;
	}
	if (spamd_reply_parse(buf, len, true, &rep, perr, sizeof(perr)) != 1) {
		snprintf(why, sizeof(why), "spamd: bad answer: %s", perr);
		goto fail;
	}
	if (rep.code != 0) {
		snprintf(why, sizeof(why), "spamd: error %d: %s", rep.code,
		    rep.message);
		goto fail;
	}
	if (!rep.has_spam) {
		snprintf(why, sizeof(why), "spamd: answer without a Spam line");
		goto fail;
	}
	pf_log(sd->pf, PF_LOG_DEBUG, "session %s msg %llu: %s, score %.1f / "
	    "%.1f", m->session_id, (unsigned long long)m->number,
	    rep.is_spam ? "spam" : "ham", rep.score, rep.threshold);
	answer(sd, r, m, &rep);
	return;
fail:
	pf_log(sd->pf, PF_LOG_WARN, "session %s msg %llu: %s", m->session_id,
	    (unsigned long long)m->number, why);
	pf_fail(r, why);
}

static void
on_message(struct pf_req *r, const struct pf_message *m, void *arg)
{
	struct spamd *sd = arg;
	struct bridge_seg seg[2];
	const char *user = sd->user;
	struct job *j;
	double t;
	int n;

	if (m->body_len > sd->max_size) {
		/* As spamc does: too big to be worth scanning, pass it on. */
		pf_log(sd->pf, PF_LOG_INFO, "session %s msg %llu: %zu octets, "
		    "over --max-size: not scanned", m->session_id,
		    (unsigned long long)m->number, m->body_len);
		pf_reason(r, "not scanned: over --max-size");
		pf_tag(r, "unscanned");
		bridge_must(sd->pf, r, pf_accept(r), "accept");
		return;
	}
	if ((j = calloc(1, sizeof(*j))) == NULL) {
		pf_fail(r, "out of memory");
		return;
	}
	if (user != NULL && strcmp(user, "%u") == 0)
		user = m->user;
	n = spamd_request_head(j->head, sizeof(j->head),
	    sd->process ? "PROCESS" : "HEADERS", m->body_len, user);
	if (n == -1) {
		free(j);
		pf_fail(r, "user name unfit for spamd");
		return;
	}
	seg[0] = (struct bridge_seg){ j->head, (size_t)n };
	seg[1] = (struct bridge_seg){ m->body, m->body_len };
	t = bridge_time_for(&sd->c, m);
	j->sd = sd;
	j->r = r;
	if ((j->x = bridge_submit(sd->b, seg, 2, t, spamd_reply_complete,
	    on_spamd, j)) == NULL) {
		free(j);
		pf_fail(r, "out of memory");
		return;
	}
	pf_req_set_data(r, j);
}

static void
on_cancel(struct pf_req *r, const char *why, void *arg)
{
	struct job *j = pf_req_data(r);

	if (j == NULL)
		return;
	xchg_cancel(j->x);
	job_free(j);
}

static void
usage(FILE *fp)
{
	fprintf(fp,
"usage: pop3filter-spamd --socket PATH [--spamd ADDR] [options]\n"
"\n"
"A pop3proxyd filter that asks SpamAssassin's spamd about each message and\n"
"adds the X-Spam-* fields spamc would add, as header edits.\n"
"\n"
"  --socket PATH          UNIX socket to listen on for the proxy\n"
"  --socket-mode MODE     chmod the socket (octal, e.g. 666)\n"
"  --spamd ADDR           spamd: IP:PORT, [IPv6]:PORT or unix:PATH\n"
"                         (default 127.0.0.1:783)\n"
"  --user NAME            the User spamd checks as (%%u: the POP3 user)\n"
"  --max-size BYTES       larger messages pass unscanned (default 500K)\n"
"  --timeout SECONDS      per message, queueing included (default 30)\n"
"  --connect-timeout SEC  connecting to spamd (default 5)\n"
"  --max-connections N    spamd connections at once (default 8)\n"
"  --process              use PROCESS: pass spamd's rewritten message on\n"
"  --reject-score SCORE   reject at this score or more (default: tag only)\n"
"  --quarantine DIR       keep rejected messages here (else the proxy does)\n"
"  --notice TEXT          first words of the reject notice\n"
"  --max-inflight N       requests per proxy connection (default 64)\n"
"  -v, --verbose          debug logging\n");
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		BRIDGE_LONGOPTS,
		{ "spamd", required_argument, NULL, 'd' },
		{ "user", required_argument, NULL, 'u' },
		{ "max-size", required_argument, NULL, 'S' },
		{ "process", no_argument, NULL, 'p' },
		{ "reject-score", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const char prog[] = "pop3filter-spamd";
	struct spamd sd = { .max_size = SPAMC_MAX_SIZE, .c = { .timeout = 30,
	    .bo = { .what = "spamd", .max_conns = 8, .connect_timeout = 5,
	    .shut_wr = true } } };
	struct bridge_addr addr;
	const char *spamd = "127.0.0.1:783";
	char err[256], *end;
	unsigned actions;
	int ch, rc;

	while ((ch = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
		if ((rc = bridge_common_opt(&sd.c, ch, optarg)) == 1)
			continue;
		if (rc == -1)
			goto usage;
		switch (ch) {
		case 'd':
			spamd = optarg;
			break;
		case 'u':
			sd.user = optarg;
			break;
		case 'S':
			if (bridge_parse_size(optarg, &sd.max_size) == -1)
				goto usage;
			break;
		case 'p':
			sd.process = true;
			break;
		case 'r':
			sd.reject_score = strtod(optarg, &end);
			if (end == optarg || *end != '\0' || !isfinite(sd.reject_score))
				goto usage;
			sd.reject = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			goto usage;
		}
	}
	if (sd.c.sock == NULL || optind != argc)
		goto usage;
	if (bridge_addr_parse(&addr, spamd, err, sizeof(err)) == -1) {
		fprintf(stderr, "%s: --spamd %s\n", prog, err);
		return 2;
	}
	if (sd.user != NULL && strcmp(sd.user, "%u") != 0 &&
	    spamd_request_head(err, sizeof(err), "HEADERS", 0, sd.user) == -1) {
		fprintf(stderr, "%s: --user: unfit name\n", prog);
		return 2;
	}
	if (bridge_common_check(&sd.c, prog) == -1)
		return 2;
	/* The whole message comes back with PROCESS; spamd adds a report of
	 * a few KB at most (report_safe wraps the original). */
	sd.c.bo.max_reply = (size_t)sd.max_size * 2 + 1024 * 1024;

	if ((sd.pf = pf_new(NULL)) == NULL ||
	    (sd.b = bridge_new(pf_loop(sd.pf), &addr, &sd.c.bo)) == NULL) {
		fprintf(stderr, "%s: out of memory\n", prog);
		return 1;
	}
	actions = PF_EDIT_HEADERS;
	if (sd.process)
		actions |= PF_REPLACE;
	if (sd.reject)
		actions |= PF_REJECT | PF_TEMPFAIL;
	pf_name(sd.pf, "pop3filter-spamd/" PF_LIB_VERSION);
	pf_declare(sd.pf, actions);
	pf_on_message(sd.pf, on_message, &sd);
	pf_on_cancel(sd.pf, on_cancel, &sd);
	if (bridge_listen(sd.pf, &sd.c, prog) == -1) {
		pf_free(sd.pf);
		bridge_free(sd.b);
		return 1;
	}
	pf_log(sd.pf, PF_LOG_INFO, "spamd %s, %s, max size %llu, timeout %.1f s, "
	    "%u connection(s), %s", addr.text, sd.process ? "PROCESS" : "HEADERS",
	    (unsigned long long)sd.max_size, sd.c.timeout, sd.c.bo.max_conns,
	    sd.reject ? "rejecting over the score" : "tagging only");
	rc = pf_run(sd.pf);
	pf_free(sd.pf);
	bridge_free(sd.b);
	return rc == 0 ? 0 : 1;
usage:
	usage(stderr);
	return 2;
}
