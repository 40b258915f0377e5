/* tconn.c: pop3filter-test's connection to a filter: blocking connect, sends
 * that keep reading, timed frame reads through the codec, hand-made msgpack. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "tool.h"

int
tc_open(struct tconn *c, const char *path, char *why, size_t whylen)
{
	struct sockaddr_un sun;

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(why, whylen, "socket path too long");
		return -1;
	}
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, strlen(path));
	if ((c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
	    connect(c->fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		snprintf(why, whylen, "connect %s: %s", path, strerror(errno));
		if (c->fd >= 0)
			close(c->fd);
		c->fd = -1;
		return -1;
	}
	fp_reader_init(&c->rd, TOOL_MAX_FRAME, FP_ROLE_PROXY);
	return 0;
}

void
tc_close(struct tconn *c)
{
	if (c->fd >= 0) {
		close(c->fd);
		fp_reader_free(&c->rd);
	}
	c->fd = -1;
}

/* One recv() into the reader: 1 got octets, 0 EOF, -1 error/none. */
static int
tc_fill(struct tconn *c)
{
	size_t avail;
	ssize_t n;
	char *p;

	if ((p = fp_reader_space(&c->rd, &avail)) == NULL)
		return -1;
	n = recv(c->fd, p, avail, MSG_DONTWAIT);
	if (n > 0) {
		fp_reader_commit(&c->rd, (size_t)n);
		return 1;
	}
	if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
		c->eof = true;
		c->eof_why = n == 0 ? "closed by the filter" : strerror(errno);
		return 0;
	}
	return -1;
}

int
tc_send(struct tconn *c, const void *data, size_t len)
{
	const char *p = data;
	struct pollfd pfd;
	ssize_t n;

	while (len > 0) {
		pfd = (struct pollfd){ .fd = c->fd, .events = POLLOUT | POLLIN };
		if (poll(&pfd, 1, 30000) <= 0)
			return -1;
		if ((pfd.revents & POLLIN) && !c->eof)
			tc_fill(c);
		if (!(pfd.revents & (POLLOUT | POLLERR | POLLHUP)))
			continue;
		n = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			p += n;
			len -= (size_t)n;
		} else if (n == -1 && errno != EAGAIN && errno != EINTR) {
			return -1;
		}
	}
	return 0;
}

int
tc_send_buf(struct tconn *c, const struct fp_buf *b)
{
	return tc_send(c, b->data, b->len);
}

static long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int
tc_next(struct tconn *c, struct fp_msg *m, struct fp_err *err, int timeout_ms)
{
	long deadline = now_ms() + timeout_ms, left;
	struct pollfd pfd;
	int rc;

	for (;;) {
		if ((rc = fp_reader_next(&c->rd, m, err)) != 0)
			return rc;
		if (c->eof)
			return -2;
		if ((left = deadline - now_ms()) <= 0)
			return 0;
		pfd = (struct pollfd){ .fd = c->fd, .events = POLLIN };
		if (poll(&pfd, 1, (int)left) > 0)
			tc_fill(c);
	}
}

void
tc_hello(struct fp_hello *h, const uint32_t *versions, size_t n)
{
	*h = (struct fp_hello){
		.versions = versions, .nversions = n,
		.proxy = FP_STR(TOOL_NAME),
		.caps = FP_CAP_RETR | FP_CAP_TOP | FP_CAPS_ACTIONS | FP_CAP_CANCEL,
		.max_frame = TOOL_MAX_FRAME,
		.max_inflight = TOOL_INFLIGHT,
	};
}

int
tool_request(struct fp_buf *b, uint64_t id, uint64_t n, const char *body,
    size_t len, bool top, uint64_t top_lines)
{
	char uidl[32];
	struct fp_request r = {
		.id = id,
		.deadline_ms = 20000,
		.session = {
			.id = FP_STR("t0000001"),
			.client = FP_STR("127.0.0.1:40110"),
			.user = FP_STR("alice"),
			.upstream_host = FP_STR("127.0.0.1"),
			.upstream_port = 110,
		},
		.message = {
			.number = n, .size = len,
			.command = top ? FP_CMD_TOP : FP_CMD_RETR,
			.top_lines = top_lines,
		},
		.body = { body, len },
	};

	snprintf(uidl, sizeof(uidl), "uidl-%llu", (unsigned long long)n);
	r.message.uidl = fp_str_c(uidl);
	return fp_encode_request(b, &r);
}

/* ---- hand-made msgpack --------------------------------------------------- */

static void
put_be(struct fp_buf *b, unsigned char tag, uint64_t v, int octets)
{
	unsigned char x[9];
	int i;

	x[0] = tag;
	for (i = 0; i < octets; i++)
		x[1 + i] = (unsigned char)(v >> (8 * (octets - 1 - i)));
	fp_buf_append(b, x, 1 + (size_t)octets);
}

size_t
mp_frame_begin(struct fp_buf *b)
{
	size_t start = b->len;

	fp_buf_append(b, "\0\0\0\0", 4);
	return start;
}

void
mp_frame_end(struct fp_buf *b, size_t start)
{
	uint32_t n = (uint32_t)(b->len - start - 4);
	unsigned char *p = (unsigned char *)b->data + start;

	p[0] = (unsigned char)(n >> 24);
	p[1] = (unsigned char)(n >> 16);
	p[2] = (unsigned char)(n >> 8);
	p[3] = (unsigned char)n;
}

void
mp_map(struct fp_buf *b, uint32_t n)
{
	if (n < 16)
		put_be(b, (unsigned char)(0x80 | n), 0, 0);
	else
		put_be(b, n <= 0xffff ? 0xde : 0xdf, n, n <= 0xffff ? 2 : 4);
}

void
mp_array(struct fp_buf *b, uint32_t n)
{
	if (n < 16)
		put_be(b, (unsigned char)(0x90 | n), 0, 0);
	else
		put_be(b, n <= 0xffff ? 0xdc : 0xdd, n, n <= 0xffff ? 2 : 4);
}

void
mp_str(struct fp_buf *b, const char *s)
{
	size_t n = strlen(s);

	if (n < 32)
		put_be(b, (unsigned char)(0xa0 | n), 0, 0);
	else if (n <= 0xff)
		put_be(b, 0xd9, n, 1);
	else if (n <= 0xffff)
		put_be(b, 0xda, n, 2);
	else
		put_be(b, 0xdb, n, 4);
	fp_buf_append(b, s, n);
}

void
mp_uint(struct fp_buf *b, uint64_t v)
{
	if (v < 128)
		put_be(b, (unsigned char)v, 0, 0);
	else if (v <= 0xff)
		put_be(b, 0xcc, v, 1);
	else if (v <= 0xffff)
		put_be(b, 0xcd, v, 2);
	else if (v <= 0xffffffffu)
		put_be(b, 0xce, v, 4);
	else
		put_be(b, 0xcf, v, 8);
}

void
mp_bin(struct fp_buf *b, const void *p, size_t n)
{
	if (n <= 0xff)
		put_be(b, 0xc4, n, 1);
	else if (n <= 0xffff)
		put_be(b, 0xc5, n, 2);
	else
		put_be(b, 0xc6, n, 4);
	fp_buf_append(b, p, n);
}

void
mp_bool(struct fp_buf *b, bool v)
{
	put_be(b, v ? 0xc3 : 0xc2, 0, 0);
}

void
mp_nil(struct fp_buf *b)
{
	put_be(b, 0xc0, 0, 0);
}

void
mp_raw(struct fp_buf *b, const void *p, size_t n)
{
	fp_buf_append(b, p, n);
}

/* ---- printing answers ---------------------------------------------------- */

static void
print_str(const char *label, struct fp_str s)
{
	if (s.ptr != NULL)
		printf(" %s=\"%.*s\"", label, (int)s.len, s.ptr);
}

void
tool_print_answer(const char *label, const struct fp_msg *m, const char *body,
    size_t len, bool show)
{
	const struct fp_verdict *v = &m->verdict;
	const struct fp_edit *e;
	struct fp_buf out = { 0 };
	size_t i;

	if (m->type == FP_MSG_ERROR) {
		printf("%s: error %.*s", label, (int)m->error.code.len,
		    m->error.code.ptr);
		print_str("message", m->error.message);
		printf("\n");
		return;
	}
	printf("%s: %s", label, fp_action_name(v->action));
	if (v->nedits > 0)
		printf(" (%zu edit%s)", v->nedits, v->nedits == 1 ? "" : "s");
	print_str("notice", v->notice);
	print_str("quarantine_id", v->quarantine_id);
	print_str("reason", v->reason);
	for (i = 0; i < v->ntags; i++)
		printf("%s%.*s", i == 0 ? " tags=" : ",", (int)v->tags[i].len,
		    v->tags[i].ptr);
	if (v->has_score)
		printf(" score=%g", v->score);
	if (v->action == FP_REPLACE)
		printf(" body=%zu octets", v->body.len);
	printf("\n");
	for (i = 0; i < v->nedits; i++) {
		e = &v->edits[i];
		printf("  edit %s %.*s", e->op == FP_EDIT_ADD ? "add" :
		    e->op == FP_EDIT_CHANGE ? "change" : "delete",
		    (int)e->name.len, e->name.ptr);
		if (e->op != FP_EDIT_ADD)
			printf("[%u]", e->index);
		if (e->op != FP_EDIT_DELETE)
			printf(": %.*s", (int)e->value.len, e->value.ptr);
		printf("\n");
	}
	if (!show)
		return;
	printf("----- %s: what the client would get -----\n", label);
	switch (v->action) {
	case FP_ACCEPT:
		if (fp_apply_edits(body, len, v->edits, v->nedits, &out) == -1)
			printf("(edits cannot be applied)\n");
		else
			fwrite(out.data, 1, out.len, stdout);
		break;
	case FP_REPLACE:
		fwrite(v->body.ptr, 1, v->body.len, stdout);
		break;
	case FP_REJECT:
		printf("(a notice from the proxy: \"%.*s\"; the original is kept)\n",
		    (int)v->notice.len, v->notice.ptr ? v->notice.ptr : "");
		break;
	case FP_TEMPFAIL:
		printf("(-ERR [SYS/TEMP]; the message stays on the server)\n");
		break;
	}
	printf("----- end %s -----\n", label);
	fp_buf_free(&out);
}
