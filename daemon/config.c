/* config.c: the command line: parsing, defaults, and refusal of bad values
 * with a clear message, all before the daemon starts. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "policy.h"
#include "version.h"

enum {
	OPT_LISTEN = 256, OPT_UPSTREAM, OPT_ALLOW, OPT_MAX_SESSIONS,
	OPT_MAX_PER_IP, OPT_IDLE, OPT_UP_TIMEOUT, OPT_CONN_TIMEOUT, OPT_GRACE,
	OPT_DNS, OPT_LOGLEVEL, OPT_SYSLOG, OPT_DAEMON, OPT_PIDFILE,
	OPT_ADMIN, OPT_GREETING, OPT_FILTER, OPT_FILTER_TIMEOUT,
	OPT_ON_FAILURE, OPT_NO_MARK, OPT_MAX_SIZE, OPT_BUDGET,
	OPT_QUARANTINE, OPT_HELP, OPT_VERSION,
	OPT_LISTEN_TLS, OPT_UP_TLS, OPT_IMPLICIT_PORTS, OPT_ALLOW_PLAIN,
	OPT_UP_CA, OPT_INSECURE, OPT_CIPHERS, OPT_MIN_VERSION, OPT_CERT,
	OPT_KEY, OPT_REQUIRE_TLS, OPT_USER, OPT_GROUP, OPT_ALLOW_ROOT,
};

static const struct option long_opts[] = {
	{ "listen",		required_argument, NULL, OPT_LISTEN },
	{ "upstream",		required_argument, NULL, OPT_UPSTREAM },
	{ "allow-upstream",	required_argument, NULL, OPT_ALLOW },
	{ "max-sessions",	required_argument, NULL, OPT_MAX_SESSIONS },
	{ "max-sessions-per-ip", required_argument, NULL, OPT_MAX_PER_IP },
	{ "idle-timeout",	required_argument, NULL, OPT_IDLE },
	{ "upstream-timeout",	required_argument, NULL, OPT_UP_TIMEOUT },
	{ "connect-timeout",	required_argument, NULL, OPT_CONN_TIMEOUT },
	{ "grace",		required_argument, NULL, OPT_GRACE },
	{ "dns-server",		required_argument, NULL, OPT_DNS },
	{ "log-level",		required_argument, NULL, OPT_LOGLEVEL },
	{ "syslog",		no_argument,	   NULL, OPT_SYSLOG },
	{ "daemon",		no_argument,	   NULL, OPT_DAEMON },
	{ "pidfile",		required_argument, NULL, OPT_PIDFILE },
	{ "admin-shutdown",	no_argument,	   NULL, OPT_ADMIN },
	{ "greeting",		required_argument, NULL, OPT_GREETING },
	{ "filter",		required_argument, NULL, OPT_FILTER },
	{ "filter-timeout",	required_argument, NULL, OPT_FILTER_TIMEOUT },
	{ "on-filter-failure",	required_argument, NULL, OPT_ON_FAILURE },
	{ "no-unfiltered-header", no_argument,	   NULL, OPT_NO_MARK },
	{ "max-size",		required_argument, NULL, OPT_MAX_SIZE },
	{ "buffer-budget",	required_argument, NULL, OPT_BUDGET },
	{ "quarantine",		required_argument, NULL, OPT_QUARANTINE },
	{ "listen-tls",		required_argument, NULL, OPT_LISTEN_TLS },
	{ "upstream-tls",	required_argument, NULL, OPT_UP_TLS },
	{ "implicit-tls-ports",	required_argument, NULL, OPT_IMPLICIT_PORTS },
	{ "allow-plaintext-upstream", no_argument, NULL, OPT_ALLOW_PLAIN },
	{ "upstream-ca",	required_argument, NULL, OPT_UP_CA },
	{ "insecure-upstream",	required_argument, NULL, OPT_INSECURE },
	{ "tls-ciphers",	required_argument, NULL, OPT_CIPHERS },
	{ "tls-min-version",	required_argument, NULL, OPT_MIN_VERSION },
	{ "tls-cert",		required_argument, NULL, OPT_CERT },
	{ "tls-key",		required_argument, NULL, OPT_KEY },
	{ "require-tls",	no_argument,	   NULL, OPT_REQUIRE_TLS },
	{ "user",		required_argument, NULL, OPT_USER },
	{ "group",		required_argument, NULL, OPT_GROUP },
	{ "allow-root",		no_argument,	   NULL, OPT_ALLOW_ROOT },
	{ "help",		no_argument,	   NULL, OPT_HELP },
	{ "version",		no_argument,	   NULL, OPT_VERSION },
	{ NULL, 0, NULL, 0 },
};

void
config_usage(FILE *out)
{
	fputs(
"usage: pop3proxyd [options]\n"
"\n"
"A POP3 proxy: clients log in as user%host[:port] (or user@host[:port]) and\n"
"read that mailbox through the proxy; every retrieved message can be passed\n"
"to external filters.\n"
"\n"
"Listening and routing:\n"
"  --listen ADDR:PORT        listen here (repeatable; [::1]:1110 for IPv6)\n"
"                            default 127.0.0.1:110\n"
"  --upstream HOST:PORT      fixed-upstream mode: relay every session to this\n"
"                            server unchanged (APOP and plain USER work)\n"
"  --allow-upstream PATTERN  allow HOST:PORT targets (repeatable); HOST is a\n"
"                            name glob with '*', an IP, [IPv6] or a CIDR range,\n"
"                            PORT a number or '*'. Without any: ports 110 and\n"
"                            995 on public addresses only\n"
"  --dns-server ADDR[:PORT]  DNS server(s), comma-separated (default: system)\n"
"TLS towards servers:\n"
"  --upstream-tls MODE       auto (default): implicit TLS on the ports below,\n"
"                            else STLS when the server offers it; implicit,\n"
"                            stls, or none\n"
"  --implicit-tls-ports LIST comma-separated ports for auto mode (default 995)\n"
"  --allow-plaintext-upstream  allow sending passwords unencrypted to servers\n"
"                            that are not on a loopback address\n"
"  --upstream-ca FILE        trust these CAs instead of the system store\n"
"  --insecure-upstream GLOB  do not verify certificates of matching hosts\n"
"                            (repeatable; logged on every use)\n"
"TLS towards clients:\n"
"  --listen-tls ADDR:PORT    listen for implicit TLS (POP3S); repeatable\n"
"  --tls-cert FILE           certificate chain (PEM), enables STLS and POP3S\n"
"  --tls-key FILE            its private key (PEM); SIGHUP reloads both\n"
"  --require-tls             refuse USER, PASS and AUTH in plain text from\n"
"                            clients not on a loopback address\n"
"Both sides:\n"
"  --tls-min-version V       1.2 (default) or 1.3\n"
"  --tls-ciphers LIST        OpenSSL cipher list for TLS 1.2\n"
"Limits and timeouts:\n"
"  --max-sessions N          concurrent sessions (default 1000)\n"
"  --max-sessions-per-ip N   per client address, 0 = no limit (default 100)\n"
"  --idle-timeout SECONDS    client inactivity (default 600, RFC 1939)\n"
"  --upstream-timeout SECS   server silence while a reply is due (default 120)\n"
"  --connect-timeout SECS    per server address tried (default 15)\n"
"  --grace SECONDS           on SIGTERM, time left to open sessions (default 30)\n"
"Filtering:\n"
"  --filter unix:PATH        pass retrieved messages to this filter; repeat\n"
"                            for a chain, applied in order\n"
"  --filter-timeout SECONDS  per message and filter (default 30)\n"
"  --on-filter-failure accept|tempfail\n"
"                            when a filter fails: deliver the original marked\n"
"                            unfiltered (accept, default) or -ERR [SYS/TEMP]\n"
"  --no-unfiltered-header    do not mark messages delivered unfiltered\n"
"  --max-size BYTES          larger messages are streamed unfiltered; 0 = all\n"
"                            messages are filtered (default 0)\n"
"  --buffer-budget BYTES     memory for held messages, all sessions together\n"
"                            (default 256M; K, M, G suffixes)\n"
"  --quarantine DIR          keep originals of rejected messages here\n"
"Operation:\n"
"  --log-level LEVEL         error, warn, notice, info or debug (default info)\n"
"  --syslog                  log to syslog (facility mail) instead of stderr\n"
"  --daemon                  detach from the terminal\n"
"  --pidfile FILE            write the process id here\n"
"  --user USER               after binding, run as this user (started as root)\n"
"  --group GROUP             and this group (default: the user's)\n"
"  --allow-root              keep running as root (not recommended)\n"
"  --admin-shutdown          honour SHUTDOWN from loopback clients before login\n"
"  --greeting TEXT           text of the proxy's +OK greeting\n"
"  --help, --version\n", out);
}

static int
bad(const char *flag, const char *val, const char *why)
{
	fprintf(stderr, "pop3proxyd: --%s %s: %s\n", flag, val, why);
	return -1;
}

static int
parse_int(const char *flag, const char *s, long long lo, long long hi,
    long long *out)
{
	char *end;

	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || *end != '\0')
		return bad(flag, s, "not a whole number");
	if (v < lo || v > hi) {
		char why[96];
		snprintf(why, sizeof(why), "must be between %lld and %lld", lo, hi);
		return bad(flag, s, why);
	}
	*out = v;
	return 0;
}

static int
parse_secs(const char *flag, const char *s, double lo, double *out)
{
	char *end;

	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end != '\0' || !isfinite(v))
		return bad(flag, s, "not a number of seconds");
	if (v < lo || v > 86400 * 7) {
		char why[80];
		snprintf(why, sizeof(why), "must be between %g and 604800 seconds", lo);
		return bad(flag, s, why);
	}
	*out = v;
	return 0;
}

/* "123", "64K", "256M", "1G" */
static int
parse_size(const char *flag, const char *s, uint64_t *out)
{
	char *end;

	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || s[0] == '-')
		return bad(flag, s, "not a size in bytes");
	unsigned long long mul = 1;
	if (*end == 'k' || *end == 'K')
		mul = 1024ULL, end++;
	else if (*end == 'm' || *end == 'M')
		mul = 1024ULL * 1024, end++;
	else if (*end == 'g' || *end == 'G')
		mul = 1024ULL * 1024 * 1024, end++;
	if (*end != '\0')
		return bad(flag, s, "not a size in bytes (K, M, G suffixes allowed)");
	if (v > (1ULL << 48) / mul)
		return bad(flag, s, "too large");
	*out = v * mul;
	return 0;
}

static int
parse_listen(const char *s, struct listen_addr *la)
{
	char host[64];
	const char *port;
	size_t hl;

	memset(la, 0, sizeof(*la));
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (rb == NULL || rb[1] != ':')
			return bad("listen", s, "expected [IPv6]:PORT");
		hl = (size_t)(rb - s - 1);
		if (hl >= sizeof(host))
			return bad("listen", s, "address too long");
		memcpy(host, s + 1, hl);
		port = rb + 2;
	} else {
		const char *c = strrchr(s, ':');
		if (c == NULL)
			return bad("listen", s, "expected ADDR:PORT");
		hl = (size_t)(c - s);
		if (hl >= sizeof(host))
			return bad("listen", s, "address too long");
		memcpy(host, s, hl);
		port = c + 1;
	}
	host[hl] = '\0';
	long long p;
	if (parse_int("listen", port, 1, 65535, &p) < 0)
		return -1;

	struct sockaddr_in *sin = (struct sockaddr_in *)&la->ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&la->ss;
	if (s[0] != '[' && inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)p);
		la->len = sizeof(*sin);
	} else if (s[0] == '[' && inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)p);
		la->len = sizeof(*sin6);
	} else {
		return bad("listen", s, "not an IP address (IPv6 goes in brackets)");
	}
	snprintf(la->text, sizeof(la->text), "%s", s);
	return 0;
}

/* "1.2.3.4", "1.2.3.4:53", "[::1]:53", comma-separated: what c-ares takes. */
static int
parse_dns_servers(const char *s)
{
	char tmp[512], *save = NULL;

	if (strlen(s) >= sizeof(tmp) || s[0] == '\0')
		return bad("dns-server", s, "expected ADDR[:PORT][,ADDR[:PORT]...]");
	strcpy(tmp, s);
	for (char *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		char host[64];
		const char *port = NULL;
		unsigned char addr[16];
		int v6 = 0;
		if (t[0] == '[') {
			char *rb = strchr(t, ']');
			if (rb == NULL || (size_t)(rb - t - 1) >= sizeof(host) ||
			    (rb[1] != '\0' && rb[1] != ':'))
				return bad("dns-server", s, "bad [IPv6]:PORT");
			memcpy(host, t + 1, (size_t)(rb - t - 1));
			host[rb - t - 1] = '\0';
			port = rb[1] == ':' ? rb + 2 : NULL;
			v6 = 1;
		} else {
			char *c = strchr(t, ':');
			if (c != NULL && strchr(c + 1, ':') != NULL)
				return bad("dns-server", s, "IPv6 servers go in brackets");
			size_t hl = c ? (size_t)(c - t) : strlen(t);
			if (hl >= sizeof(host))
				return bad("dns-server", s, "not an IP address");
			memcpy(host, t, hl);
			host[hl] = '\0';
			port = c ? c + 1 : NULL;
		}
		if (inet_pton(v6 ? AF_INET6 : AF_INET, host, addr) != 1)
			return bad("dns-server", s, "not an IP address");
		long long pv;
		if (port != NULL && parse_int("dns-server", port, 1, 65535, &pv) < 0)
			return -1;
	}
	return 0;
}

static void
config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->max_sessions = 1000;
	cfg->max_per_ip = 100;
	cfg->idle_timeout = 600;
	cfg->upstream_timeout = 120;
	cfg->connect_timeout = 15;
	cfg->grace = 30;
	cfg->log_level = LOG_LVL_INFO;
	cfg->greeting = "pop3proxyd ready";
	cfg->filter_timeout = 30;
	cfg->mark_unfiltered = 1;
	cfg->buffer_budget = 256ULL * 1024 * 1024;
	cfg->implicit_ports[0] = 995;
	cfg->nimplicit = 1;
}

int
config_parse(struct config *cfg, int argc, char **argv)
{
	long long v;
	const char *err;
	int c;

	config_defaults(cfg);
	cfg->policy = policy_new();
	if (cfg->policy == NULL) {
		fprintf(stderr, "pop3proxyd: out of memory\n");
		return -1;
	}
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":", long_opts, NULL)) != -1) {
		const char *name = "";
		for (const struct option *o = long_opts; o->name; o++)
			if (o->val == c)
				name = o->name;
		switch (c) {
		case OPT_LISTEN:
			if (cfg->nlisten == CONFIG_MAX_LISTEN)
				return bad(name, optarg, "too many listeners");
			if (parse_listen(optarg, &cfg->listen[cfg->nlisten]) < 0)
				return -1;
			cfg->nlisten++;
			break;
		case OPT_UPSTREAM:
			if (route_parse_hostport(optarg, strlen(optarg), 110,
			    &cfg->upstream, &err) < 0)
				return bad(name, optarg, err);
			cfg->fixed = 1;
			break;
		case OPT_ALLOW:
			if (policy_add(cfg->policy, optarg, &err) < 0)
				return bad(name, optarg, err);
			break;
		case OPT_MAX_SESSIONS:
			if (parse_int(name, optarg, 1, 1000000, &v) < 0)
				return -1;
			cfg->max_sessions = (int)v;
			break;
		case OPT_MAX_PER_IP:
			if (parse_int(name, optarg, 0, 1000000, &v) < 0)
				return -1;
			cfg->max_per_ip = (int)v;
			break;
		case OPT_IDLE:
			if (parse_secs(name, optarg, 1, &cfg->idle_timeout) < 0)
				return -1;
			break;
		case OPT_UP_TIMEOUT:
			if (parse_secs(name, optarg, 0.1, &cfg->upstream_timeout) < 0)
				return -1;
			break;
		case OPT_CONN_TIMEOUT:
			if (parse_secs(name, optarg, 0.1, &cfg->connect_timeout) < 0)
				return -1;
			break;
		case OPT_GRACE:
			if (parse_secs(name, optarg, 0, &cfg->grace) < 0)
				return -1;
			break;
		case OPT_DNS:
			if (parse_dns_servers(optarg) < 0)
				return -1;
			cfg->dns_servers = optarg;
			break;
		case OPT_LOGLEVEL:
			if (log_level_parse(optarg, &cfg->log_level) < 0)
				return bad(name, optarg,
				    "expected error, warn, notice, info or debug");
			break;
		case OPT_SYSLOG:
			cfg->use_syslog = 1;
			break;
		case OPT_DAEMON:
			cfg->daemonize = 1;
			break;
		case OPT_PIDFILE:
			cfg->pidfile = optarg;
			break;
		case OPT_ADMIN:
			cfg->admin_shutdown = 1;
			break;
		case OPT_GREETING:
			if (strlen(optarg) > 200 || strpbrk(optarg, "\r\n"))
				return bad(name, optarg, "one line of at most 200 characters");
			cfg->greeting = optarg;
			break;
		case OPT_FILTER:
			if (cfg->nfilters == CONFIG_MAX_FILTERS)
				return bad(name, optarg, "too many filters");
			if (strncmp(optarg, "unix:", 5) != 0 || optarg[5] == '\0')
				return bad(name, optarg, "expected unix:PATH");
			if (strlen(optarg + 5) >= 108)
				return bad(name, optarg, "socket path too long");
			cfg->filters[cfg->nfilters++] = optarg + 5;
			break;
		case OPT_FILTER_TIMEOUT:
			if (parse_secs(name, optarg, 0.01, &cfg->filter_timeout) < 0)
				return -1;
			break;
		case OPT_ON_FAILURE:
			if (strcmp(optarg, "accept") == 0)
				cfg->on_failure_tempfail = 0;
			else if (strcmp(optarg, "tempfail") == 0)
				cfg->on_failure_tempfail = 1;
			else
				return bad(name, optarg, "expected accept or tempfail");
			break;
		case OPT_NO_MARK:
			cfg->mark_unfiltered = 0;
			break;
		case OPT_MAX_SIZE:
			if (parse_size(name, optarg, &cfg->max_size) < 0)
				return -1;
			break;
		case OPT_BUDGET:
			if (parse_size(name, optarg, &cfg->buffer_budget) < 0)
				return -1;
			if (cfg->buffer_budget < 64 * 1024)
				return bad(name, optarg, "must be at least 64K");
			break;
		case OPT_QUARANTINE:
			cfg->quarantine = optarg;
			break;
		case OPT_LISTEN_TLS:
			if (cfg->nlisten == CONFIG_MAX_LISTEN)
				return bad(name, optarg, "too many listeners");
			if (parse_listen(optarg, &cfg->listen[cfg->nlisten]) < 0)
				return -1;
			cfg->listen[cfg->nlisten++].tls = 1;
			break;
		case OPT_UP_TLS:
			if (strcmp(optarg, "auto") == 0)
				cfg->upstream_tls = UP_TLS_AUTO;
			else if (strcmp(optarg, "implicit") == 0)
				cfg->upstream_tls = UP_TLS_IMPLICIT;
			else if (strcmp(optarg, "stls") == 0)
				cfg->upstream_tls = UP_TLS_STLS;
			else if (strcmp(optarg, "none") == 0)
				cfg->upstream_tls = UP_TLS_NONE;
			else
				return bad(name, optarg, "expected auto, implicit, stls or none");
			break;
		case OPT_IMPLICIT_PORTS: {
			char tmp[256], *save = NULL;
			if (strlen(optarg) >= sizeof(tmp))
				return bad(name, optarg, "too long");
			strcpy(tmp, optarg);
			cfg->nimplicit = 0;
			for (char *t = strtok_r(tmp, ",", &save); t;
			    t = strtok_r(NULL, ",", &save)) {
				if (cfg->nimplicit == 16)
					return bad(name, optarg, "at most 16 ports");
				if (parse_int(name, t, 1, 65535, &v) < 0)
					return -1;
				cfg->implicit_ports[cfg->nimplicit++] = (uint16_t)v;
			}
			break;
		}
		case OPT_ALLOW_PLAIN:
			cfg->allow_plaintext = 1;
			break;
		case OPT_UP_CA:
			if (access(optarg, R_OK) != 0)
				return bad(name, optarg, strerror(errno));
			cfg->upstream_ca = optarg;
			break;
		case OPT_INSECURE:
			if (cfg->ninsecure == 16)
				return bad(name, optarg, "at most 16 patterns");
			if (optarg[0] == '\0')
				return bad(name, optarg, "empty pattern");
			cfg->insecure[cfg->ninsecure++] = optarg;
			break;
		case OPT_CIPHERS:
			cfg->tls_ciphers = optarg;
			break;
		case OPT_MIN_VERSION:
			if (strcmp(optarg, "1.2") != 0 && strcmp(optarg, "1.3") != 0)
				return bad(name, optarg, "expected 1.2 or 1.3");
			cfg->tls_min_version = optarg;
			break;
		case OPT_CERT:
			if (access(optarg, R_OK) != 0)
				return bad(name, optarg, strerror(errno));
			cfg->tls_cert = optarg;
			break;
		case OPT_KEY:
			if (access(optarg, R_OK) != 0)
				return bad(name, optarg, strerror(errno));
			cfg->tls_key = optarg;
			break;
		case OPT_REQUIRE_TLS:
			cfg->require_tls = 1;
			break;
		case OPT_USER:
			cfg->user = optarg;
			break;
		case OPT_GROUP:
			cfg->group = optarg;
			break;
		case OPT_ALLOW_ROOT:
			cfg->allow_root = 1;
			break;
		case OPT_HELP:
			config_usage(stdout);
			return 1;
		case OPT_VERSION:
			printf("pop3proxyd %s\n", POP3PROXYD_VERSION);
			return 1;
		case ':':
			fprintf(stderr, "pop3proxyd: %s needs a value\n", argv[optind - 1]);
			return -1;
		default:
			fprintf(stderr, "pop3proxyd: unknown option %s (see --help)\n",
			    argv[optind - 1]);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "pop3proxyd: unexpected argument %s (see --help)\n",
		    argv[optind]);
		return -1;
	}
	if (cfg->nlisten == 0) {
		struct listen_addr *la = &cfg->listen[0];
		parse_listen("127.0.0.1:110", la);
		cfg->nlisten = 1;
	}
	if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL)) {
		fprintf(stderr, "pop3proxyd: --tls-cert and --tls-key go together\n");
		return -1;
	}
	for (int i = 0; i < cfg->nlisten; i++) {
		if (cfg->listen[i].tls && cfg->tls_cert == NULL) {
			fprintf(stderr, "pop3proxyd: --listen-tls %s needs --tls-cert "
			    "and --tls-key\n", cfg->listen[i].text);
			return -1;
		}
	}
	if (cfg->fixed && policy_count(cfg->policy) > 0) {
		fprintf(stderr, "pop3proxyd: --upstream and --allow-upstream exclude "
		    "each other: in fixed-upstream mode clients cannot choose\n");
		return -1;
	}
	return 0;
}

void
config_free(struct config *cfg)
{
	policy_free(cfg->policy);
	cfg->policy = NULL;
}
