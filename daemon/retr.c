/* retr.c: the RETR path. Without filters a message is relayed byte-exact as
 * it streams. With filters it is held whole (unstuffed) within a global
 * memory budget, passed to the filter chain, and the verdict is served from
 * memory with dot-stuffing reapplied and a "+OK n octets" line that tells
 * the truth about the new size.
 *
 * Budget: a hold reserves the size the server announced before the first
 * body octet arrives, so holds never deadlock each other half-way; a
 * session that does not fit waits (its server is not read) until another
 * hold is released. A message larger than the whole budget, or than
 * --max-size, is streamed unfiltered (the original module's MaxSize). */
#include <stdio.h>
#include <string.h>

#include "filter.h"
#include "log.h"
#include "proxy.h"
#include "retr.h"
#include "session.h"

#include <sys/uio.h>

#define SERVE_CHUNK	(256 * 1024)
/* One round of serving: at most this many octets and pieces per sendmsg().
 * What the client's socket does not take is copied to its output buffer,
 * so this also bounds the memory a slow client costs beyond the hold. */
#define SERVE_ROUND	(128 * 1024)
#define SERVE_IOV	64

/* --- the budget ---------------------------------------------------------------- */

static void
budget_take(struct session *s, uint64_t n)
{
	s->held_now += n;
	s->px->held_bytes += n;
}

static void
budget_release(struct session *s)
{
	struct proxy *px = s->px;

	px->held_bytes -= s->held_now;
	s->held_now = 0;
	if (px->bw_head != NULL)
		ev_idle_start(px->loop, &px->budget_wake);
}

static void
budget_enqueue(struct session *s)
{
	struct proxy *px = s->px;

	if (s->budget_wait)
		return;
	s->budget_wait = 1;
	s->bw_next = NULL;
	if (px->bw_tail)
		px->bw_tail->bw_next = s;
	else
		px->bw_head = s;
	px->bw_tail = s;
}

static void
budget_dequeue(struct session *s)
{
	struct proxy *px = s->px;
	struct session **pp = &px->bw_head, *prev = NULL;

	if (!s->budget_wait)
		return;
	while (*pp != NULL && *pp != s) {
		prev = *pp;
		pp = &(*pp)->bw_next;
	}
	if (*pp == s) {
		*pp = s->bw_next;
		if (px->bw_tail == s)
			px->bw_tail = prev;
	}
	s->budget_wait = 0;
	s->bw_next = NULL;
}

/* Room was freed: let waiting sessions retry their status line, in order.
 * Runs from an idle watcher, outside any session's own callback. */
static void
budget_wake_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	struct proxy *px = w->data;

	ev_idle_stop(loop, w);
	/* The head keeps its place while it retries (retr_status lets the
	 * head through); it leaves the queue only once its hold fits. */
	while (px->bw_head != NULL) {
		struct session *s = px->bw_head;
		session_resume(s);
		if (px->bw_head == s)
			break;		/* still does not fit: keep FIFO order */
	}
}

void
retr_proxy_init(struct proxy *px)
{
	ev_idle_init(&px->budget_wake, budget_wake_cb);
	px->budget_wake.data = px;
}

void
retr_proxy_free(struct proxy *px)
{
	ev_idle_stop(px->loop, &px->budget_wake);
}

/*
 * The end of the run of octets starting at off that can be written as is:
 * up to (not past) lim, stopping after a line end that a '.' follows, so
 * the caller can insert the stuffing dot there. Only line ends are scanned.
 */
static size_t
stuffed_run(const char *p, size_t len, size_t off, size_t lim)
{
	size_t bound = lim < len ? lim + 1 : len;
	size_t d = pop3_find_dot_line(p, bound, off);

	return d < lim ? d : lim;
}

/* Does the line that starts at off need a stuffing dot? */
#define NEEDS_DOT(p, off) (((off) == 0 || (p)[(off) - 1] == '\n') && (p)[off] == '.')

/* --- serving a verdict -------------------------------------------------------- */

/*
 * Write the held message to the client with dot-stuffing reapplied, in
 * rounds: the status line, runs of the message straight from the held
 * buffer with a "." piece before each line that starts with one, and the
 * terminator, gathered into one sendmsg() each (no copy of the message
 * unless the socket is full). A round the socket does not take whole is
 * finished from the output buffer; serving resumes on CONN_DRAINED
 * (retr_client_writable).
 */
static void
retr_serve(struct session *s)
{
	static const char dot[] = ".", end_crlf[] = "\r\n.\r\n";
	const char *p = buf_ptr(&s->msg);
	size_t len = s->msg.len;
	int ended = 0;

	session_relay_flush(s);
	while (!ended) {
		if (conn_out_pending(&s->client) > 0 || s->client.failed)
			return;		/* resumed by CONN_DRAINED */
		struct iovec iov[SERVE_IOV];
		int n = 0;
		size_t off = s->serve_off, round = 0;
		if (s->serve_status_len > 0) {
			iov[n++] = (struct iovec){ s->serve_status,
			    s->serve_status_len };
			s->serve_status_len = 0;
		}
		while (off < len && n + 3 <= SERVE_IOV && round < SERVE_ROUND) {
			if (NEEDS_DOT(p, off))
				iov[n++] = (struct iovec){ (void *)dot, 1 };
			size_t lim = len - off > SERVE_CHUNK ? off + SERVE_CHUNK : len;
			size_t end = stuffed_run(p, len, off, lim);
			iov[n++] = (struct iovec){ (void *)(p + off), end - off };
			round += end - off;
			off = end;
		}
		if (off >= len) {
			/* The terminator; a line end must come before it. */
			int bare = len > 0 && p[len - 1] != '\n';
			iov[n++] = (struct iovec){ (void *)(end_crlf + (bare ? 0 : 2)),
			    bare ? 5 : 3 };
			ended = 1;
		}
		s->serve_off = off;
		if (conn_writev(&s->client, iov, n) < 0)
			return;		/* the client is gone: CONN_ERROR ends it */
	}
	buf_free(&s->msg);
	s->serve_off = 0;
	s->serving = 0;
	s->hold_waiting = 0;
	if (!s->hold_top)
		s->msgs++;
	budget_release(s);
	session_retr_complete(s);
}

void
retr_client_writable(struct session *s)
{
	if (s->serving)
		retr_serve(s);
}

static void
retr_done(void *arg, struct filter_result *res)
{
	struct session *s = arg;

	s->job = NULL;
	if (res->outcome == FILTER_TEMPFAIL) {
		char line[600];
		int n = snprintf(line, sizeof(line), "-ERR [SYS/TEMP] %s\r\n",
		    res->text ? res->text : "message not available now, try later");
		buf_free(&res->msg);
		session_client_write(s, line, (size_t)n);
		s->hold_waiting = 0;
		budget_release(s);
		/* The message stays on the server, so it is not counted. */
		session_retr_complete(s);
		return;
	}
	/* The result replaces the held original; account for its real size. */
	buf_free(&s->msg);
	s->msg = res->msg;
	memset(&res->msg, 0, sizeof(res->msg));
	if (s->msg.len > s->held_now)
		budget_take(s, s->msg.len - s->held_now);

	size_t octets = s->msg.len;
	if (octets > 0 && buf_ptr(&s->msg)[octets - 1] != '\n')
		octets += 2;	/* the CRLF retr_serve adds before the dot */
	int n = snprintf(s->serve_status, sizeof(s->serve_status),
	    "+OK %zu octets\r\n", octets);
	s->serve_status_len = (uint8_t)n;
	s->serving = 1;
	s->serve_off = 0;
	retr_serve(s);
}

/* --- holding ------------------------------------------------------------------ */

/* Give up holding: send what was held, stuffed again, and relay the rest. */
static void
retr_unhold(struct session *s, const char *why)
{
	log_info(s->sid, "message %u delivered unfiltered: %s", s->hold_msgno, why);
	session_relay_flush(s);
	conn_cork(&s->client);
	if (s->held_status_len > 0)
		session_client_write(s, s->held_status, s->held_status_len);
	else
		session_client_write(s, LIT("+OK message follows\r\n"));
	const char *p = buf_ptr(&s->msg);
	size_t len = s->msg.len;
	for (size_t off = 0, end; off < len; off = end) {
		if (NEEDS_DOT(p, off))
			session_client_write(s, LIT("."));
		end = stuffed_run(p, len, off, len);
		session_client_write(s, p + off, end - off);
	}
	conn_uncork(&s->client);
	buf_free(&s->msg);
	s->hold = 0;
	budget_release(s);
}

int
retr_status(struct session *s, struct pending *h, const char *line, size_t len)
{
	const struct config *cfg = s->px->cfg;
	struct proxy *px = s->px;

	if (px->filters == NULL) {
		session_relay(s, line, len);
		return 0;
	}
	long long size = pop3_status_octets(line, len);
	if (cfg->max_size > 0 && size > (long long)cfg->max_size) {
		log_info(s->sid, "message %u (%lld octets) over --max-size: "
		    "streamed unfiltered", h->msgno, size);
		session_relay(s, line, len);
		return 0;
	}
	if (size > (long long)cfg->buffer_budget) {
		log_warn(s->sid, "message %u (%lld octets) is larger than the "
		    "whole --buffer-budget: streamed unfiltered", h->msgno, size);
		session_relay(s, line, len);
		return 0;
	}
	/* Reserve the announced size; wait in line if it does not fit now. */
	uint64_t want = size > 0 ? (uint64_t)size : 0;
	if (px->held_bytes + want > cfg->buffer_budget ||
	    (px->bw_head != NULL && px->bw_head != s)) {
		if (!s->budget_wait)
			log_debug(s->sid, "message %u waits for buffer budget "
			    "(%llu of %llu held)", h->msgno,
			    (unsigned long long)px->held_bytes,
			    (unsigned long long)cfg->buffer_budget);
		budget_enqueue(s);
		/* Waiting, it keeps only what it has read (a few KiB, see
		 * retr_read_max), not a 64 KiB read buffer outside the budget.
		 * The relay span points into that buffer: out it goes first
		 * (a use after free found by fuzz_session, F5). */
		session_relay_flush(s);
		buf_compact(&s->up.in);
		return 2;
	}
	budget_dequeue(s);
	s->hold = 1;
	s->hold_msgno = h->msgno;
	s->hold_top = h->top;
	s->hold_top_lines = h->top_lines;
	s->hold_size = size;
	s->hold_started = ev_now(px->loop);
	s->held_status_len = 0;
	if (len <= sizeof(s->held_status)) {
		memcpy(s->held_status, line, len);
		s->held_status_len = (uint8_t)len;
	}
	buf_free(&s->msg);
	if (want > 0 && buf_presize(&s->msg, want + 2) < 0) {
		s->hold = 0;
		session_relay(s, line, len);
		return 0;
	}
	budget_take(s, want);
	return 0;
}

void
retr_data(struct session *s, const struct resp_event *ev)
{
	if (!s->hold) {
		session_relay(s, ev->p, ev->len);
		return;
	}
	size_t n = ev->len - (size_t)ev->stuffed;
	if (buf_append(&s->msg, ev->p + ev->stuffed, n) < 0) {
		retr_unhold(s, "out of memory");
		return;
	}
	/* The server may send more than it announced; count the excess. */
	if (s->msg.len > s->held_now)
		budget_take(s, s->msg.len - s->held_now);
	const struct config *cfg = s->px->cfg;
	if (cfg->max_size > 0 && s->msg.len > cfg->max_size)
		retr_unhold(s, "over --max-size");
	else if (s->px->held_bytes > cfg->buffer_budget + CONN_IN_HWM &&
	    s->hold_size < 0)
		retr_unhold(s, "size unknown and --buffer-budget exhausted");
}

int
retr_end(struct session *s, struct pending *h, const struct resp_event *end)
{
	if (!s->hold) {
		session_relay(s, end->p, end->len);
		if (!h->top)
			s->msgs++;
		return 0;
	}
	s->hold = 0;
	struct filter_facts f = {
		.sid = s->sid,
		.client = s->peer_text,
		.user = s->rt.user,
		.upstream_host = s->rt.host,
		.upstream_port = s->rt.port,
		.tls_client = s->client_tls,
		.tls_upstream = s->up_tls,
		.msgno = s->hold_msgno,
		.size = s->hold_size >= 0 ? (uint64_t)s->hold_size : s->msg.len,
		.uidl = session_uidl(s, s->hold_msgno),
		.command = s->hold_top ? "TOP" : "RETR",
		.top_lines = s->hold_top_lines,
	};
	s->job = filter_submit(s->px->filters, &f, &s->msg, retr_done, s);
	if (s->job == NULL) {
		s->hold = 1;
		retr_unhold(s, "out of memory");
		session_relay(s, end->p, end->len);
		s->msgs++;
		return 0;
	}
	s->hold_waiting = 1;
	return 1;
}

int
retr_may_read(const struct session *s)
{
	return !s->budget_wait;
}

size_t
retr_read_max(const struct session *s)
{
	/* The reply at the head is a RETR the filters may want, and its
	 * status line has not been taken yet: read a little, so that a
	 * session that then waits for budget holds a few KiB of the server's
	 * octets outside the budget, not 64 KiB (500 waiting sessions: 32
	 * MiB). Once the status is taken (held, or relayed), reads are big. */
	if (s->px->filters != NULL && s->pq_len > 0 &&
	    s->pq[s->pq_head].kind == P_RETR &&
	    (!s->rp_active || resp_at_status(&s->rp)))
		return RETR_READ_SMALL;
	return 0;
}

void
retr_abort(struct session *s)
{
	if (s->job != NULL) {
		filter_cancel(s->job);
		s->job = NULL;
	}
	budget_dequeue(s);
	buf_free(&s->msg);
	s->hold = s->hold_waiting = s->serving = 0;
	s->serve_off = 0;
	if (s->held_now > 0)
		budget_release(s);
}
