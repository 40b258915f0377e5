/* main.c: pop3filter-clamd, a pop3proxyd filter that streams each message to
 * ClamAV's clamd (zINSTREAM) and withholds infected ones, keeping the original. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "clamd.h"
#include "pop3filter.h"

#define CLAMD_STREAM_MAX	(25u * 1024 * 1024)	/* clamd's default */

struct clamd {
	struct pf		*pf;
	struct bridge		*b;
	struct bridge_common	 c;
	uint64_t		 stream_max;
};

/* One message at clamd. */
struct job {
	struct clamd		*cd;
	struct pf_req		*r;
	struct xchg		*x;
	struct bridge_seg	*segs;
	unsigned char		*lens;
};

static void
job_free(struct job *j)
{
	pf_req_set_data(j->r, NULL);
	free(j->segs);
	free(j->lens);
	free(j);
}

static void
infected(struct clamd *cd, struct pf_req *r, const struct pf_message *m,
    const char *sig)
{
	char notice[1024];

	snprintf(notice, sizeof(notice), "%s: %s.", cd->c.notice ? cd->c.notice :
	    "This message was withheld: the virus scanner found", sig);
	pf_reason(r, sig);
	pf_tag(r, "virus");
	if (!pf_granted(r, PF_REJECT)) {
		/* Never serve what clamd flagged: the message stays on the
		 * server, and the proxy's fallback decides. */
		pf_log(cd->pf, PF_LOG_WARN, "session %s msg %llu: %s found but "
		    "reject not granted", m->session_id,
		    (unsigned long long)m->number, sig);
		if (!pf_granted(r, PF_TEMPFAIL) ||
		    pf_tempfail(r, "virus found; reject not granted") == -1)
			pf_fail(r, "virus found; reject not granted");
		return;
	}
	bridge_reject(cd->pf, r, m, &cd->c, notice, sig);
}

static void
on_clamd(struct xchg *x, const char *err, const char *buf, size_t len,
    void *arg)
{
	struct job *j = arg;
	struct clamd *cd = j->cd;
	struct pf_req *r = j->r;
	const struct pf_message *m = pf_req_message(r);
	struct clamd_reply rep;
	char perr[128], why[512];

	job_free(j);
	if (err != NULL) {
		snprintf(why, sizeof(why), "%s", err);
		goto fail;
	}
	if (clamd_reply_parse(buf, len, true, &rep, perr, sizeof(perr)) != 1) {
		snprintf(why, sizeof(why), "clamd: bad answer: %s", perr);
		goto fail;
	}
	switch (rep.status) {
	case CLAMD_CLEAN:
		pf_log(cd->pf, PF_LOG_DEBUG, "session %s msg %llu: clean",
		    m->session_id, (unsigned long long)m->number);
		pf_tag(r, "clean");
		bridge_must(cd->pf, r, pf_accept(r), "accept");
		return;
	case CLAMD_FOUND:
		infected(cd, r, m, rep.text);
		return;
	case CLAMD_ERROR:
		snprintf(why, sizeof(why), "clamd: %s%s", rep.text, rep.size_limit ?
		    " (clamd's StreamMaxLength is below --stream-max)" : "");
		break;
	}
fail:
	pf_log(cd->pf, PF_LOG_WARN, "session %s msg %llu: %s", m->session_id,
	    (unsigned long long)m->number, why);
	pf_fail(r, why);
}

static void
on_message(struct pf_req *r, const struct pf_message *m, void *arg)
{
	struct clamd *cd = arg;
	struct job *j;
	size_t nsegs;
	double t;

	if (m->body_len > cd->stream_max) {
		/* clamd would refuse it half-way: a filter error, so the
		 * proxy's policy decides, as for any unscanned message. */
		pf_log(cd->pf, PF_LOG_WARN, "session %s msg %llu: %zu octets, "
		    "over --stream-max: not scanned", m->session_id,
		    (unsigned long long)m->number, m->body_len);
		pf_fail(r, "message over clamd's StreamMaxLength (--stream-max)");
		return;
	}
	if ((j = calloc(1, sizeof(*j))) == NULL ||
	    clamd_instream(m->body, m->body_len, CLAMD_CHUNK, &j->segs, &nsegs,
	    &j->lens) == -1) {
		free(j);
		pf_fail(r, "out of memory");
		return;
	}
	t = bridge_time_for(&cd->c, m);
	j->cd = cd;
	j->r = r;
	if ((j->x = bridge_submit(cd->b, j->segs, nsegs, t, clamd_reply_complete,
	    on_clamd, j)) == NULL) {
		free(j->segs);
		free(j->lens);
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
"usage: pop3filter-clamd --socket PATH [--clamd ADDR] [options]\n"
"\n"
"A pop3proxyd filter that streams each message to ClamAV's clamd and\n"
"replaces infected ones with a notice, keeping the original.\n"
"\n"
"  --socket PATH          UNIX socket to listen on for the proxy\n"
"  --socket-mode MODE     chmod the socket (octal, e.g. 666)\n"
"  --clamd ADDR           clamd: unix:PATH, IP:PORT or [IPv6]:PORT\n"
"                         (default unix:/var/run/clamav/clamd.ctl)\n"
"  --stream-max BYTES     clamd's StreamMaxLength (default 25M); larger\n"
"                         messages are a filter error\n"
"  --quarantine DIR       keep infected messages here (else the proxy does)\n"
"  --notice TEXT          first words of the notice (the signature follows)\n"
"  --timeout SECONDS      per message, queueing included (default 30)\n"
"  --connect-timeout SEC  connecting to clamd (default 5)\n"
"  --max-connections N    clamd connections at once (default 8)\n"
"  --max-inflight N       requests per proxy connection (default 64)\n"
"  -v, --verbose          debug logging\n");
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		BRIDGE_LONGOPTS,
		{ "clamd", required_argument, NULL, 'd' },
		{ "stream-max", required_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const char prog[] = "pop3filter-clamd";
	struct clamd cd = { .stream_max = CLAMD_STREAM_MAX, .c = { .timeout = 30,
	    .bo = { .what = "clamd", .max_conns = 8, .connect_timeout = 5,
	    .max_reply = CLAMD_MAX_REPLY } } };
	struct bridge_addr addr;
	const char *clamd = "unix:/var/run/clamav/clamd.ctl";
	char err[256];
	int ch, rc;

	while ((ch = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
		if ((rc = bridge_common_opt(&cd.c, ch, optarg)) == 1)
			continue;
		if (rc == -1)
			goto usage;
		switch (ch) {
		case 'd':
			clamd = optarg;
			break;
		case 'S':
			if (bridge_parse_size(optarg, &cd.stream_max) == -1 ||
			    cd.stream_max == 0)
				goto usage;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			goto usage;
		}
	}
	if (cd.c.sock == NULL || optind != argc)
		goto usage;
	if (bridge_addr_parse(&addr, clamd, err, sizeof(err)) == -1) {
		fprintf(stderr, "%s: --clamd %s\n", prog, err);
		return 2;
	}
	if (bridge_common_check(&cd.c, prog) == -1)
		return 2;
	if ((cd.pf = pf_new(NULL)) == NULL ||
	    (cd.b = bridge_new(pf_loop(cd.pf), &addr, &cd.c.bo)) == NULL) {
		fprintf(stderr, "%s: out of memory\n", prog);
		return 1;
	}
	pf_name(cd.pf, "pop3filter-clamd/" PF_LIB_VERSION);
	pf_declare(cd.pf, PF_REJECT | PF_TEMPFAIL);
	pf_on_message(cd.pf, on_message, &cd);
	pf_on_cancel(cd.pf, on_cancel, &cd);
	if (bridge_listen(cd.pf, &cd.c, prog) == -1) {
		pf_free(cd.pf);
		bridge_free(cd.b);
		return 1;
	}
	pf_log(cd.pf, PF_LOG_INFO, "clamd %s, stream max %llu, timeout %.1f s, "
	    "%u connection(s), quarantine %s", addr.text,
	    (unsigned long long)cd.stream_max, cd.c.timeout, cd.c.bo.max_conns,
	    cd.c.quarantine ? cd.c.quarantine : "by the proxy");
	rc = pf_run(cd.pf);
	pf_free(cd.pf);
	bridge_free(cd.b);
	return rc == 0 ? 0 : 1;
usage:
	usage(stderr);
	return 2;
}
