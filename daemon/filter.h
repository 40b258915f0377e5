/* filter.h: the daemon's side of the filter protocol: a chain of filter
 * services, each reached over one UNIX socket carrying many requests. */
#ifndef FILTER_H
#define FILTER_H

#include <stdint.h>

#include "buffer.h"

struct proxy;
struct filter_chain;
struct filter_job;

/* What a filter is told about a message and its session. */
struct filter_facts {
	const char *sid;
	const char *client;		/* "ip:port" */
	const char *user;		/* remote user */
	const char *upstream_host;
	uint16_t upstream_port;
	int tls_client, tls_upstream;
	uint32_t msgno;
	uint64_t size;			/* as listed by the server (+OK n octets) */
	const char *uidl;		/* NULL when unknown */
	const char *command;		/* "RETR" or "TOP" */
	uint32_t top_lines;
};

enum filter_outcome {
	FILTER_DELIVER,		/* serve result->msg to the client */
	FILTER_TEMPFAIL,	/* -ERR [SYS/TEMP] result->text; message stays */
};

struct filter_result {
	enum filter_outcome outcome;
	struct buf msg;		/* DELIVER: the message, unstuffed; owned by
				 * the receiver of the callback */
	const char *text;	/* TEMPFAIL: why, for the client's -ERR */
};

/* Called exactly once per job, never from inside filter_submit, and never
 * after filter_cancel. The callback takes ownership of result->msg. */
typedef void (*filter_done_cb)(void *arg, struct filter_result *result);

struct filter_chain *filter_chain_new(struct proxy *);
void filter_chain_free(struct filter_chain *);

/*
 * Pass a held message through the chain. The message buffer's contents move
 * into the job (msg is left empty). On any filter failure the fallback
 * policy (--on-filter-failure) decides; the callback always comes.
 * NULL only when out of memory (msg is left untouched then).
 */
struct filter_job *filter_submit(struct filter_chain *,
    const struct filter_facts *, struct buf *msg, filter_done_cb, void *arg);
void filter_cancel(struct filter_job *);

/* "label: ready, 2 in flight, 0 queued; ..." for the status line. */
void filter_chain_status(const struct filter_chain *, char *out, size_t len);

/* Has any filter of the chain asked for TOP replies? (Otherwise TOP is
 * relayed unfiltered, without being held.) */
int filter_chain_wants_top(const struct filter_chain *);

#endif
