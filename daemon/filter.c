/* filter.c: the daemon's filter client. This build has no filter support
 * yet: --filter is refused at start-up rather than silently ignored. */
#include <stdlib.h>

#include "filter.h"
#include "log.h"
#include "proxy.h"

struct filter_chain *
filter_chain_new(struct proxy *px)
{
	log_error(NULL, "--filter: this build of pop3proxyd cannot filter yet");
	return NULL;
}

void
filter_chain_free(struct filter_chain *fc)
{
}

struct filter_job *
filter_submit(struct filter_chain *fc, const struct filter_facts *f,
    struct buf *msg, filter_done_cb cb, void *arg)
{
	return NULL;
}

void
filter_cancel(struct filter_job *job)
{
}
