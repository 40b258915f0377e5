/* conn.h: one non-blocking socket with its watchers and buffers. The owner
 * says what it wants (read or not); conn arms watchers to match, nothing more.
 *
 * Invariants: the write watcher runs only while output is pending (or an
 * error is waiting to be reported); the read watcher runs only while the
 * owner wants input and the input buffer is below its high-water mark. */
#ifndef CONN_H
#define CONN_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stdint.h>

#include "buffer.h"

struct conn;

enum conn_event {
	CONN_DATA,	/* new bytes in c->in */
	CONN_LOWAT,	/* output fell below the low-water mark after being high */
	CONN_DRAINED,	/* output fully written */
	CONN_EOF,	/* peer closed its side; c->in may still hold bytes */
	CONN_ERROR,	/* read or write failed; c->err is errno, and for a
			 * failed TLS handshake c->tls_err says why */
	CONN_TLS_READY,	/* the TLS handshake completed */
};

typedef void (*conn_cb)(struct conn *, enum conn_event, void *arg);

#define CONN_IN_HWM	(256 * 1024)	/* stop reading above this */
#define CONN_OUT_HWM	(256 * 1024)	/* owner should stop feeding above this */

struct conn {
	struct ev_loop *loop;
	int fd;
	ev_io rw, ww;
	struct buf in, out;
	conn_cb cb;
	void *arg;
	size_t in_hwm;
	size_t read_max;		/* octets per read; 0: the default */
	uint64_t bytes_in, bytes_out;
	int err;
	unsigned want_read:1, eof:1, failed:1, out_high:1, notify_drain:1;
	unsigned corked:1;		/* writes gather until conn_uncork */
	/* TLS: once ssl is set every byte goes through it. */
	SSL *ssl;
	unsigned tls_handshake:1;	/* handshaking; owner's I/O waits */
	unsigned tls_start:1;		/* handshake once plaintext is flushed */
	unsigned tls_write_wants_read:1, tls_read_wants_write:1;
	char *tls_err;			/* why the handshake failed */
};

void conn_init(struct conn *, struct ev_loop *, int fd, conn_cb, void *arg);
/* Stop watchers, close the socket, free buffers. Safe to call twice. */
void conn_close(struct conn *);
#define conn_is_open(c) ((c)->fd >= 0)

/* Queue bytes; written at once when nothing is pending (no copy then).
 * Returns -1 if the connection has failed or memory ran out. */
int conn_write(struct conn *, const void *p, size_t n);
/* The same for pieces in the caller's memory: sent with one sendmsg()
 * straight from there when nothing is pending (plain sockets); only what
 * the socket does not take is copied. */
struct iovec;
int conn_writev(struct conn *, const struct iovec *iov, int n);
/* Gather many small writes into one send (a reply served from memory
 * in pieces); uncork sends what gathered. */
void conn_cork(struct conn *);
void conn_uncork(struct conn *);
#define conn_out_pending(c) ((c)->out.len)

/* The owner's wish to read; watchers are rearmed at once. */
void conn_want_read(struct conn *, int want);
/* Re-evaluate the read watcher after the owner consumed from c->in. */
void conn_update(struct conn *);

/*
 * Start TLS on this connection (it takes ownership of ssl). Output already
 * queued is sent in plain text first (a "+OK Begin TLS" reply), and input
 * already buffered is the owner's to discard. CONN_TLS_READY or CONN_ERROR
 * follows, always from the event loop, never from inside this call.
 * Returns -1 only on a bad call.
 */
int conn_tls_start(struct conn *, SSL *ssl);
#define conn_is_tls(c) ((c)->ssl != NULL)

/* Switch a connected socket to the mode a proxy wants: non-blocking,
 * TCP_NODELAY (each reply goes out at once: no Nagle/delayed-ACK stall). */
int conn_socket_setup(int fd);

#endif
