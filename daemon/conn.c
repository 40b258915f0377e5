/* conn.c: buffered non-blocking socket I/O on libev, plain or TLS, with
 * backpressure by turning watchers on and off (the sniproxy scheme). */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/err.h>

#include "conn.h"
#include "tls.h"

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
		if (c->ssl != NULL && !c->failed && !c->tls_handshake)
			(void)SSL_shutdown(c->ssl);	/* close_notify, no wait */
		close(c->fd);
		c->fd = -1;
	}
	if (c->ssl != NULL) {
		SSL_free(c->ssl);
		c->ssl = NULL;
		ERR_clear_error();
	}
	free(c->tls_err);
	c->tls_err = NULL;
	buf_free(&c->in);
	buf_free(&c->out);
}

void
conn_update(struct conn *c)
{
	if (c->fd < 0)
		return;
	int on = (c->want_read || c->tls_handshake || c->tls_write_wants_read) &&
	    !c->eof && !c->failed && !c->tls_start &&
	    (c->in.len < c->in_hwm || c->tls_handshake);
	if (on && !ev_is_active(&c->rw)) {
		ev_io_start(c->loop, &c->rw);
		/* OpenSSL may hold decrypted bytes the socket no longer shows. */
		if (c->ssl != NULL && !c->tls_handshake && SSL_pending(c->ssl) > 0)
			ev_feed_event(c->loop, &c->rw, EV_READ);
	} else if (!on && ev_is_active(&c->rw)) {
		ev_io_stop(c->loop, &c->rw);
	}
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

/*
 * Write up to n octets, plain or TLS. Returns the number written (maybe 0
 * when the socket is full), or -1 after conn_fail().
 */
static ssize_t
conn_send(struct conn *c, const void *p, size_t n)
{
	if (c->ssl == NULL || c->tls_start) {
		for (;;) {
			ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
			if (w >= 0)
				return w;
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			conn_fail(c, errno);
			return -1;
		}
	}
	if (c->tls_handshake)
		return 0;
	ERR_clear_error();
	int w = SSL_write(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
	if (w > 0) {
		c->tls_write_wants_read = 0;
		return w;
	}
	switch (SSL_get_error(c->ssl, w)) {
	case SSL_ERROR_WANT_WRITE:
		return 0;
	case SSL_ERROR_WANT_READ:
		/* A key update or similar: the next read event flushes. */
		c->tls_write_wants_read = 1;
		conn_update(c);
		return 0;
	default:
		conn_fail(c, errno ? errno : EPIPE);
		return -1;
	}
}

static int
conn_flush(struct conn *c)
{
	while (c->out.len > 0) {
		ssize_t n = conn_send(c, buf_ptr(&c->out), c->out.len);
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		c->bytes_out += (uint64_t)n;
		buf_consume(&c->out, (size_t)n);
	}
	if (c->out.len > 0 && !c->tls_write_wants_read)
		ev_io_start(c->loop, &c->ww);
	else if (!c->tls_handshake)
		ev_io_stop(c->loop, &c->ww);
	/* An emptied buffer is released here too, not only in the write
	 * callback: a flush from conn_uncork may empty it with no event. */
	if (c->out.len == 0)
		buf_shrink(&c->out, 0);
	return 0;
}

/* Queue n octets behind what is pending; the write watcher sends them. */
static int
conn_queue(struct conn *c, const void *p, size_t n)
{
	if (buf_append(&c->out, p, n) < 0) {
		conn_fail(c, ENOMEM);
		return -1;
	}
	if (c->out.len >= CONN_OUT_HWM)
		c->out_high = 1;
	c->notify_drain = 1;
	if (!c->tls_handshake && !c->tls_write_wants_read && !c->corked)
		ev_io_start(c->loop, &c->ww);
	return 0;
}

int
conn_writev(struct conn *c, const struct iovec *iov, int n)
{
	int i = 0;
	size_t skip = 0;

	if (c->failed || c->fd < 0)
		return -1;
	if (c->ssl != NULL || c->tls_start) {
		/* OpenSSL takes one buffer at a time: gather, then send. */
		int corked = c->corked;
		conn_cork(c);
		for (; i < n; i++)
			if (conn_write(c, iov[i].iov_base, iov[i].iov_len) < 0)
				return -1;
		if (!corked)
			conn_uncork(c);
		return 0;
	}
	if (c->out.len == 0 && !c->corked) {
		struct msghdr mh = { .msg_iov = (struct iovec *)iov,
		    .msg_iovlen = (size_t)n };
		ssize_t w;
		for (;;) {
			w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
			if (w >= 0)
				break;
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				conn_fail(c, errno);
				return -1;
			}
			w = 0;
			break;
		}
		c->bytes_out += (uint64_t)w;
		for (; i < n && (size_t)w >= iov[i].iov_len; i++)
			w -= (ssize_t)iov[i].iov_len;
		skip = (size_t)w;
	}
	/* What the socket did not take is copied, in order. */
	for (; i < n; i++, skip = 0)
		if (iov[i].iov_len > skip && conn_queue(c,
		    (const char *)iov[i].iov_base + skip, iov[i].iov_len - skip) < 0)
			return -1;
	return 0;
}

int
conn_write(struct conn *c, const void *p, size_t n)
{
	if (c->failed || c->fd < 0)
		return -1;
	if (n == 0)
		return 0;
	if (c->out.len == 0 && !c->corked) {
		/* Fast path: straight from the caller's buffer to the socket. */
		while (n > 0) {
			ssize_t w = conn_send(c, p, n);
			if (w < 0)
				return -1;
			if (w == 0)
				break;
			c->bytes_out += (uint64_t)w;
			p = (const char *)p + w;
			n -= (size_t)w;
		}
		if (n == 0)
			return 0;
	}
	return conn_queue(c, p, n);
}

void
conn_cork(struct conn *c)
{
	c->corked = 1;
}

void
conn_uncork(struct conn *c)
{
	c->corked = 0;
	if (c->fd >= 0 && !c->failed && c->out.len > 0 && !c->tls_handshake &&
	    !c->tls_start)
		conn_flush(c);
	else if (c->out.len > 0 && c->fd >= 0 && !c->failed)
		ev_io_start(c->loop, &c->ww);	/* sent once the handshake is done */
}

/* --- TLS handshake ----------------------------------------------------------- */

static void
conn_tls_step(struct conn *c)
{
	ERR_clear_error();
	int r = SSL_do_handshake(c->ssl);
	if (r == 1) {
		c->tls_handshake = 0;
		/* Output queued during the handshake goes now. */
		if (c->out.len > 0)
			ev_io_start(c->loop, &c->ww);
		else
			ev_io_stop(c->loop, &c->ww);
		conn_update(c);
		c->cb(c, CONN_TLS_READY, c->arg);
		return;
	}
	switch (SSL_get_error(c->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		ev_io_stop(c->loop, &c->ww);
		conn_update(c);
		return;
	case SSL_ERROR_WANT_WRITE:
		ev_io_start(c->loop, &c->ww);
		return;
	default: {
		char why[256];
		tls_error_text(c->ssl, why, sizeof(why));
		free(c->tls_err);
		c->tls_err = strdup(why);
		c->failed = 1;
		c->err = EPROTO;
		ev_io_stop(c->loop, &c->ww);
		conn_update(c);
		c->cb(c, CONN_ERROR, c->arg);
		return;
	}
	}
}

int
conn_tls_start(struct conn *c, SSL *ssl)
{
	if (c->ssl != NULL || c->fd < 0 || ssl == NULL) {
		SSL_free(ssl);
		return -1;
	}
	if (SSL_set_fd(ssl, c->fd) != 1) {
		SSL_free(ssl);
		return -1;
	}
	c->ssl = ssl;
	if (c->out.len > 0) {
		/* Finish the plain-text reply first; conn_write_cb resumes. */
		c->tls_start = 1;
		ev_io_start(c->loop, &c->ww);
		return 0;
	}
	/* The first step runs from the loop (the socket is writable at once),
	 * never from here: a handshake that fails at once must not call the
	 * owner back from inside its own call (it may not be registered yet). */
	c->tls_handshake = 1;
	ev_io_start(c->loop, &c->ww);
	conn_update(c);
	return 0;
}

/* --- events ----------------------------------------------------------------- */

/* Read once; returns 1 if bytes arrived, 0 if nothing more now, -1 if the
 * event was delivered to the owner (EOF or error): stop. */
static int
conn_read_once(struct conn *c)
{
	size_t want = c->read_max ? c->read_max : READ_CHUNK;
	char *p = buf_reserve(&c->in, want);
	if (p == NULL) {
		conn_fail(c, ENOMEM);
		return 0;
	}
	ssize_t n;
	if (c->ssl == NULL) {
		n = recv(c->fd, p, want, 0);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			goto error;
		}
	} else {
		ERR_clear_error();
		int r = SSL_read(c->ssl, p, (int)want);
		if (r > 0) {
			n = r;
		} else {
			switch (SSL_get_error(c->ssl, r)) {
			case SSL_ERROR_WANT_READ:
				return 0;
			case SSL_ERROR_WANT_WRITE:
				c->tls_read_wants_write = 1;
				ev_io_start(c->loop, &c->ww);
				return 0;
			case SSL_ERROR_ZERO_RETURN:
				n = 0;
				break;
			case SSL_ERROR_SYSCALL:
				if (errno == 0) {
					n = 0;	/* EOF without close_notify */
					break;
				}
				goto error;
			default:
				errno = EPROTO;
				goto error;
			}
		}
	}
	if (n == 0) {
		c->eof = 1;
		conn_update(c);
		c->cb(c, CONN_EOF, c->arg);
		return -1;
	}
	c->bytes_in += (uint64_t)n;
	buf_commit(&c->in, (size_t)n);
	return 1;
error:
	c->failed = 1;
	c->err = errno;
	conn_update(c);
	c->cb(c, CONN_ERROR, c->arg);
	return -1;
}

static void
conn_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn *c = w->data;

	if (c->tls_handshake) {
		conn_tls_step(c);
		return;
	}
	if (c->tls_write_wants_read) {
		c->tls_write_wants_read = 0;
		if (conn_flush(c) < 0)
			return;
		conn_update(c);
		if (!c->want_read)
			return;
	}
	int got = 0, r;
	/* TLS: drain what OpenSSL holds, or the watcher may never fire again. */
	do {
		r = conn_read_once(c);
		if (r < 0)
			return;
		got |= r;
	} while (r > 0 && c->ssl != NULL && SSL_pending(c->ssl) > 0 &&
	    c->in.len < c->in_hwm);
	if (!got)
		return;
	if (c->in.len >= c->in_hwm)
		conn_update(c);
	size_t last = c->in.len;
	c->cb(c, CONN_DATA, c->arg);
	/* An idle session keeps no read buffer: 10,000 idle sessions must not
	 * sit on 64 KiB each. A bulk transfer (big reads) keeps its buffer, or
	 * every read would pay a malloc and free of 64 KiB. */
	if (c->in.len == 0 && last < 4096)
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
	if (c->tls_handshake) {
		conn_tls_step(c);
		return;
	}
	if (c->tls_read_wants_write) {
		c->tls_read_wants_write = 0;
		ev_feed_event(loop, &c->rw, EV_READ);
	}
	if (conn_flush(c) < 0)
		return;	/* reported on the next round of the write watcher */
	if (c->tls_start && c->out.len == 0) {
		c->tls_start = 0;
		c->tls_handshake = 1;
		conn_tls_step(c);
		return;
	}
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
