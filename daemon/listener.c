/* listener.c: bind, listen and accept. When the process runs out of file
 * descriptors, accepting pauses briefly instead of spinning the loop. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "listener.h"
#include "log.h"

#define ACCEPT_BATCH	64
#define EMFILE_PAUSE	0.1

static void
listener_accept_cb_io(struct ev_loop *loop, ev_io *w, int revents)
{
	struct listener *l = w->data;

	for (int i = 0; i < ACCEPT_BATCH; i++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd = accept4(l->fd, (struct sockaddr *)&ss, &len,
		    SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				log_warn(NULL, "accept on %s: %s; pausing",
				    l->text, strerror(errno));
				ev_io_stop(loop, &l->io);
				ev_timer_set(&l->backoff, EMFILE_PAUSE, 0);
				ev_timer_start(loop, &l->backoff);
				return;
			}
			log_warn(NULL, "accept on %s: %s", l->text, strerror(errno));
			return;
		}
		l->cb(l->arg, fd, &ss, len, l->tls);
	}
}

static void
listener_backoff_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct listener *l = w->data;

	if (l->fd >= 0)
		ev_io_start(loop, &l->io);
}

struct listener *
listener_new(struct ev_loop *loop, const struct listen_addr *la,
    listener_accept_cb cb, void *arg)
{
	struct listener *l = calloc(1, sizeof(*l));
	int one = 1;

	if (l == NULL)
		return NULL;
	l->loop = loop;
	l->cb = cb;
	l->arg = arg;
	snprintf(l->text, sizeof(l->text), "%s", la->text);
	l->tls = la->tls;
	l->fd = socket(la->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0);
	if (l->fd < 0)
		goto fail;
	setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (la->ss.ss_family == AF_INET6)
		setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(l->fd, (const struct sockaddr *)&la->ss, la->len) < 0)
		goto fail;
	if (listen(l->fd, 511) < 0)
		goto fail;
	ev_io_init(&l->io, listener_accept_cb_io, l->fd, EV_READ);
	ev_timer_init(&l->backoff, listener_backoff_cb, EMFILE_PAUSE, 0);
	l->io.data = l->backoff.data = l;
	ev_io_start(loop, &l->io);
	log_info(NULL, "listening on %s%s", l->text, l->tls ? " (TLS)" : "");
	return l;
fail:
	log_error(NULL, "cannot listen on %s: %s", la->text, strerror(errno));
	if (l->fd >= 0)
		close(l->fd);
	free(l);
	return NULL;
}

void
listener_stop(struct listener *l)
{
	if (l->fd < 0)
		return;
	ev_io_stop(l->loop, &l->io);
	ev_timer_stop(l->loop, &l->backoff);
	close(l->fd);
	l->fd = -1;
}

void
listener_free(struct listener *l)
{
	if (l == NULL)
		return;
	listener_stop(l);
	free(l);
}
