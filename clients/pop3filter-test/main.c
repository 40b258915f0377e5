/* main.c: pop3filter-test, the replay and conformance tool for filters:
 * command line, then replay_run() or conformance_run(). */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"

static void
usage(FILE *fp)
{
	fprintf(fp,
"usage: pop3filter-test --socket PATH [options] FILE|MAILDIR|DIR ...\n"
"       pop3filter-test --socket PATH --conformance [--pid PID]\n"
"\n"
"Plays the proxy against a filter listening on PATH: performs the handshake\n"
"(and prints what was negotiated), sends each message as a request (many in\n"
"flight) and prints each verdict. Exit status 1 on protocol errors.\n"
"\n"
"  --socket PATH      the filter's UNIX socket\n"
"  --show             also print the message the client would get\n"
"  --raw              send files as they are (default: line ends made CRLF)\n"
"  --top N            send as TOP N instead of RETR\n"
"  --inflight N       requests in flight at most (default: the window)\n"
"  --timeout SECONDS  wait for each answer (default 10)\n"
"  --conformance      check the filter against PROTOCOL.md; PASS/FAIL lines\n"
"  --pid PID          with --conformance: also check drain on SIGTERM (the\n"
"                     filter is stopped by this check)\n"
"  --large-cap BYTES  largest message the conformance check sends (16 MiB)\n"
"  -h, --help\n");
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "show", no_argument, NULL, 'S' },
		{ "raw", no_argument, NULL, 'r' },
		{ "top", required_argument, NULL, 'T' },
		{ "inflight", required_argument, NULL, 'i' },
		{ "timeout", required_argument, NULL, 't' },
		{ "conformance", no_argument, NULL, 'c' },
		{ "pid", required_argument, NULL, 'p' },
		{ "large-cap", required_argument, NULL, 'L' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct opts o = {
		.timeout_ms = 10000,
		.inflight = TOOL_INFLIGHT,
		.large_cap = 16u << 20,
	};
	char *end;
	double secs;
	int ch;

	while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (ch) {
		case 's': o.socket = optarg; break;
		case 'S': o.show = true; break;
		case 'r': o.raw = true; break;
		case 'c': o.conformance = true; break;
		case 'T':
			o.top = true;
			o.top_lines = strtoull(optarg, &end, 10);
			if (*end != '\0')
				goto bad;
			break;
		case 'i':
			o.inflight = (uint32_t)strtoul(optarg, &end, 10);
			if (*end != '\0' || o.inflight == 0)
				goto bad;
			break;
		case 't':
			secs = strtod(optarg, &end);
			if (*end != '\0' || secs <= 0 || secs > 3600)
				goto bad;
			o.timeout_ms = (int)(secs * 1000);
			break;
		case 'p':
			o.pid = strtol(optarg, &end, 10);
			if (*end != '\0' || o.pid <= 1)
				goto bad;
			break;
		case 'L':
			o.large_cap = strtoull(optarg, &end, 10);
			if (*end != '\0' || o.large_cap < 1024)
				goto bad;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	o.files = argv + optind;
	o.nfiles = argc - optind;
	if (o.socket == NULL || (!o.conformance && o.nfiles == 0)) {
		usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	return o.conformance ? conformance_run(&o) : replay_run(&o);
bad:
	fprintf(stderr, "pop3filter-test: bad option value \"%s\"\n", optarg);
	usage(stderr);
	return 2;
}
