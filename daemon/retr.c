/* retr.c: the RETR path. Today every message is relayed byte-exact as it
 * streams; the filter hold plugs in here. */
#include "conn.h"
#include "retr.h"
#include "session.h"

int
retr_status(struct session *s, struct pending *h, const char *line, size_t len)
{
	conn_write(&s->client, line, len);
	return 0;
}

void
retr_data(struct session *s, const struct resp_event *ev)
{
	conn_write(&s->client, ev->p, ev->len);
}

int
retr_end(struct session *s, struct pending *h, const struct resp_event *end)
{
	conn_write(&s->client, end->p, end->len);
	s->msgs++;
	return 0;
}

int
retr_may_read(const struct session *s)
{
	return 1;
}

void
retr_abort(struct session *s)
{
	buf_free(&s->msg);
}
