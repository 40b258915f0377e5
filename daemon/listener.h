/* listener.h: a listening TCP socket and its accept loop. It hands each new
 * connection to its owner and survives running out of file descriptors. */
#ifndef LISTENER_H
#define LISTENER_H

#include <ev.h>
#include <sys/socket.h>

#include "config.h"

typedef void (*listener_accept_cb)(void *arg, int fd,
    const struct sockaddr_storage *peer, socklen_t len, int tls);

struct listener {
	struct ev_loop *loop;
	int fd;
	ev_io io;
	ev_timer backoff;	/* accept paused after EMFILE/ENFILE */
	listener_accept_cb cb;
	void *arg;
	char text[80];
	int tls;		/* implicit TLS (POP3S) */
};

/* Bind and listen; NULL with a logged reason on failure. */
struct listener *listener_new(struct ev_loop *, const struct listen_addr *,
    listener_accept_cb, void *arg);
void listener_stop(struct listener *);
void listener_free(struct listener *);

#endif
