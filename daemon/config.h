/* config.h: the daemon's settings, filled from the command line, checked at
 * start-up so that a bad value is refused before anything runs. */
#ifndef CONFIG_H
#define CONFIG_H

#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "log.h"
#include "route.h"

#define CONFIG_MAX_LISTEN	16
#define CONFIG_MAX_FILTERS	8

struct listen_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	char text[80];		/* as given, for log lines */
	int tls;		/* --listen-tls: implicit TLS (POP3S) */
};

enum upstream_tls {
	UP_TLS_AUTO,		/* implicit on --implicit-tls-ports, else STLS if offered */
	UP_TLS_IMPLICIT,
	UP_TLS_STLS,
	UP_TLS_NONE,
};

struct config {
	struct listen_addr listen[CONFIG_MAX_LISTEN];
	int nlisten;
	int fixed;			/* fixed-upstream (transparent) mode */
	struct route upstream;		/* its host and port, when fixed */
	struct policy *policy;		/* --allow-upstream patterns */
	int max_sessions;
	int max_per_ip;			/* 0 = no limit */
	double idle_timeout;
	double upstream_timeout;
	double connect_timeout;
	double grace;
	const char *dns_servers;	/* NULL: /etc/resolv.conf */
	enum log_level log_level;
	int use_syslog;
	int daemonize;
	const char *pidfile;
	int admin_shutdown;
	const char *user, *group;	/* drop to these after binding */
	int allow_root;
	const char *greeting;

	/* TLS. */
	enum upstream_tls upstream_tls;
	uint16_t implicit_ports[16];
	int nimplicit;
	int allow_plaintext;		/* passwords in clear to remote servers */
	const char *upstream_ca;	/* NULL: the system store */
	const char *insecure[16];	/* host globs not verified */
	int ninsecure;
	const char *tls_ciphers, *tls_min_version;
	const char *tls_cert, *tls_key;	/* towards clients */
	int require_tls;

	/* The filter path. */
	const char *filters[CONFIG_MAX_FILTERS];	/* UNIX socket paths */
	int nfilters;
	double filter_timeout;
	int on_failure_tempfail;	/* else accept (deliver unfiltered) */
	int mark_unfiltered;		/* header on messages that bypassed */
	uint64_t max_size;		/* 0: filter every message */
	uint64_t buffer_budget;		/* bytes of held messages, all sessions */
	const char *quarantine;		/* directory for rejected originals */
};

/*
 * Fill cfg from argv. On a bad flag or value, print one clear line to
 * stderr and return -1 (the caller exits 2). --help and --version print
 * and return 1 (the caller exits 0).
 */
int config_parse(struct config *cfg, int argc, char **argv);
void config_free(struct config *cfg);
void config_usage(FILE *out);

#endif
