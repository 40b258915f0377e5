/* conn.c: buffered non-blocking socket I/O on libev, with backpressure by
 * turning watchers on and off (the sniproxy scheme). */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"

#define READ_CHUNK	(64 * 1024)

static void conn_read_cb(struct ev_loop *, ev_io *, int);
static void conn_write_cb(struct ev_loop *, ev_io *, int);

int
conn_socket_setup(int fd)
{
	int one = 1, fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -1;
	/* Not a TCP socket (a UNIX one, in tests or filters): ignore. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return 0;
}

void
conn_init(struct conn *c, struct ev_loop *loop, int fd, conn_cb cb, void *arg)
{
	memset(c, 0, sizeof(*c));
	c->loop = loop;
	c->fd = fd;
	c->cb = cb;
	c->arg = arg;
	c->in_hwm = CONN_IN_HWM;
	ev_io_init(&c->rw, conn_read_cb, fd, EV_READ);
	ev_io_init(&c->ww, conn_write_cb, fd, EV_WRITE);
	c->rw.data = c->ww.data = c;
}

void
conn_close(struct conn *c)
{
	if (c->fd >= 0) {
		ev_io_stop(c->loop, &c->rw);
		ev_io_stop(c->loop, &c->ww);
		close(c->fd);
		c->fd = -1;
	}
	buf_free(&c->in);
	buf_free(&c->out);
}

void
conn_update(struct conn *c)
{
	if (c->fd < 0)
		return;
	int on = c->want_read && !c->eof && !c->failed && c->in.len < c->in_hwm;
	if (on && !ev_is_active(&c->rw))
		ev_io_start(c->loop, &c->rw);
	else if (!on && ev_is_active(&c->rw))
		ev_io_stop(c->loop, &c->rw);
}

void
conn_want_read(struct conn *c, int want)
{
	c->want_read = want ? 1 : 0;
	conn_update(c);
}

/* A failure is reported from the write watcher, never from inside the
 * owner's call to conn_write, so the owner is never freed under its feet. */
static void
conn_fail(struct conn *c, int err)
{
	c->failed = 1;
	c->err = err;
	buf_consume(&c->out, c->out.len);
	conn_update(c);
	if (c->fd >= 0)
		ev_io_start(c->loop, &c->ww);
}

static int
conn_flush(struct conn *c)
{
	while (c->out.len > 0) {
		ssize_t n = send(c->fd, buf_ptr(&c->out), c->out.len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			conn_fail(c, errno);
			return -1;
		}
		c->bytes_out += (uint64_t)n;
		buf_consume(&c->out, (size_t)n);
	}
	if (c->out.len > 0)
		ev_io_start(c->loop, &c->ww);
	else
		ev_io_stop(c->loop, &c->ww);
	return 0;
}

int
conn_write(struct conn *c, const void *p, size_t n)
{
	if (c->failed || c->fd < 0)
		return -1;
	if (n == 0)
		return 0;
	if (c->out.len == 0) {
		/* Fast path: straight from the caller's buffer to the socket. */
		for (;;) {
			ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK)
					break;
				conn_fail(c, errno);
				return -1;
			}
			c->bytes_out += (uint64_t)w;
			p = (const char *)p + w;
			n -= (size_t)w;
			if (n == 0)
				return 0;
		}
	}
	if (buf_append(&c->out, p, n) < 0) {
		conn_fail(c, ENOMEM);
		return -1;
	}
	if (c->out.len >= CONN_OUT_HWM)
		c->out_high = 1;
	c->notify_drain = 1;
	ev_io_start(c->loop, &c->ww);
	return 0;
}

int
conn_printf(struct conn *c, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -1;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	return conn_write(c, line, (size_t)n);
}

static void
conn_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn *c = w->data;

	char *p = buf_reserve(&c->in, READ_CHUNK);
	if (p == NULL) {
		conn_fail(c, ENOMEM);
		return;
	}
	ssize_t n = recv(c->fd, p, READ_CHUNK, 0);
	if (n < 0) {
		if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		c->failed = 1;
		c->err = errno;
		conn_update(c);
		c->cb(c, CONN_ERROR, c->arg);
		return;
	}
	if (n == 0) {
		c->eof = 1;
		conn_update(c);
		c->cb(c, CONN_EOF, c->arg);
		return;
	}
	c->bytes_in += (uint64_t)n;
	buf_commit(&c->in, (size_t)n);
	if (c->in.len >= c->in_hwm)
		conn_update(c);
	c->cb(c, CONN_DATA, c->arg);
	/* An idle session keeps no read buffer: 10,000 idle sessions must not
	 * sit on 64 KiB each. glibc serves the next one from its free list. */
	if (c->in.len == 0)
		buf_shrink(&c->in, 0);
}

static void
conn_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn *c = w->data;

	if (c->failed) {
		ev_io_stop(loop, w);
		c->cb(c, CONN_ERROR, c->arg);
		return;
	}
	if (conn_flush(c) < 0)
		return;	/* reported on the next round of the write watcher */
	if (c->out_high && c->out.len < CONN_OUT_HWM / 2) {
		c->out_high = 0;
		c->cb(c, CONN_LOWAT, c->arg);
		if (c->fd < 0)
			return;
	}
	if (c->out.len == 0) {
		buf_shrink(&c->out, 0);
		if (c->notify_drain) {
			c->notify_drain = 0;
			c->cb(c, CONN_DRAINED, c->arg);
		}
	}
}
