/* bridge.h: what pop3filter-spamd and pop3filter-clamd share: the scanner's
 * address, a bounded pool of non-blocking exchanges with it, option parsing. */
#ifndef BRIDGE_H
#define BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct ev_loop;

/* An IPv4/IPv6 literal with a port ("127.0.0.1:783", "[::1]:783") or a UNIX
 * socket ("unix:/run/clamav/clamd.ctl"). Host names are refused: resolving
 * them would block the loop or reach the machine's resolver. */
struct bridge_addr {
	struct sockaddr_storage	 ss;
	socklen_t		 len;
	char			 text[128];	/* as given, for logs */
};
int	bridge_addr_parse(struct bridge_addr *, const char *spec, char *err,
	    size_t errlen);

/* "512000", "500K", "25M", "1G" (binary multiples): 0, or -1. */
int	bridge_parse_size(const char *, uint64_t *);
/* Seconds, fractions allowed, > 0 and at most a day: 0, or -1. */
int	bridge_parse_seconds(const char *, double *);

/* Octets to send, borrowed: they must stay valid until the exchange ends. */
struct bridge_seg {
	const char	*ptr;
	size_t		 len;
};

struct bridge;
struct xchg;

/* Whether the reply read so far is whole (1: stop reading now), so that a
 * scanner that keeps the connection open is not waited for. */
typedef int	(*xchg_complete_fn)(const char *reply, size_t len);
/* The exchange ended: err NULL and the reply (possibly empty: the scanner
 * closed without answering, which the caller's parser reports), or err set.
 * The reply lives until the callback returns; then the exchange is freed. */
typedef void	(*xchg_done_cb)(struct xchg *, const char *err,
		    const char *reply, size_t len, void *arg);

struct bridge_opts {
	const char	*what;		/* "spamd", "clamd": for messages */
	unsigned	 max_conns;	/* connections at once; more wait */
	double		 connect_timeout;
	size_t		 max_reply;	/* a longer reply is an error */
	bool		 shut_wr;	/* half-close after sending (spamc does) */
};

struct bridge	*bridge_new(struct ev_loop *, const struct bridge_addr *,
		    const struct bridge_opts *);
/* Cancels whatever is still running or queued (no callbacks). */
void		 bridge_free(struct bridge *);

/* Send segs (the array is copied, not the octets), read the reply until EOF
 * or complete(), all within timeout seconds counted from now, time spent
 * waiting for a free connection included. done is called exactly once,
 * never from inside bridge_submit nor after xchg_cancel. NULL: no memory. */
struct xchg	*bridge_submit(struct bridge *, const struct bridge_seg *segs,
		    size_t nsegs, double timeout, xchg_complete_fn,
		    xchg_done_cb, void *arg);
/* Abandon an exchange (not from inside its own done callback). */
void		 xchg_cancel(struct xchg *);

unsigned	 bridge_active(const struct bridge *);
unsigned	 bridge_queued(const struct bridge *);

/* ---- the filter side, on libpop3filter ---- */

struct pf;
struct pf_req;
struct pf_message;

/* Options both bridges take, with their getopt_long codes. */
#define BRIDGE_LONGOPTS \
	{ "socket", required_argument, NULL, 's' }, \
	{ "socket-mode", required_argument, NULL, 'm' }, \
	{ "quarantine", required_argument, NULL, 'q' }, \
	{ "notice", required_argument, NULL, 'N' }, \
	{ "timeout", required_argument, NULL, 't' }, \
	{ "connect-timeout", required_argument, NULL, 'c' }, \
	{ "max-connections", required_argument, NULL, 'n' }, \
	{ "max-inflight", required_argument, NULL, 'i' }, \
	{ "verbose", no_argument, NULL, 'v' }

struct bridge_common {
	const char		*sock;
	unsigned long		 mode;		/* 0: leave the socket's mode */
	unsigned long		 inflight;	/* 0: the library's default */
	bool			 verbose;
	double			 timeout;	/* per message */
	const char		*quarantine;	/* NULL: the proxy keeps them */
	const char		*notice;
	struct bridge_opts	 bo;
};

/* One getopt_long result: 1 taken, 0 not a common option, -1 bad value. */
int	bridge_common_opt(struct bridge_common *, int ch, const char *arg);
/* After parsing: the checks (quarantine is a directory). 0, or -1 with a
 * message on stderr. */
int	bridge_common_check(const struct bridge_common *, const char *prog);
/* Apply the common settings to pf and listen: 0, or -1 said on stderr. */
int	bridge_listen(struct pf *, const struct bridge_common *, const char *prog);
/* Seconds the scanner gets for m: the timeout, cut to 90% of what the proxy
 * waits, so that the proxy hears why rather than times out. */
double	bridge_time_for(const struct bridge_common *, const struct pf_message *);
/* A verdict call's result: on -1, log it and answer pf_fail instead. */
void	bridge_must(struct pf *, struct pf_req *, int rc, const char *what);
/* Withhold m with notice: kept in the quarantine directory (then
 * pf_reject_quarantined), or by the proxy (pf_reject); a quarantine that
 * cannot be written is a tempfail. what names the finding for the log. */
void	bridge_reject(struct pf *, struct pf_req *, const struct pf_message *,
	    const struct bridge_common *, const char *notice, const char *what);


#endif
