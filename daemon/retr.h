/* retr.h: the RETR path: relay a message, or hold it whole for the filter
 * chain and serve the verdict with a fresh octet count. */
#ifndef RETR_H
#define RETR_H

#include <stddef.h>

#include "pop3.h"

struct session;
struct pending;

struct proxy;

void retr_proxy_init(struct proxy *);
void retr_proxy_free(struct proxy *);
/* A +OK status line for the RETR at the head. 0: go on; 2: no room in the
 * buffer budget yet: leave the line unparsed, the session is woken later. */
int retr_status(struct session *, struct pending *, const char *line, size_t len);
/* Body octets (still byte-stuffed). */
void retr_data(struct session *, const struct resp_event *);
/* The terminator. 0: relayed, pop the head; 1: held for the filters (the
 * session resumes in session_retr_complete); -1: the session ended. */
int retr_end(struct session *, struct pending *, const struct resp_event *);
/* The client's output drained: serve more of a held message. */
void retr_client_writable(struct session *);
/* May the session read more from its server (global memory budget)? */
int retr_may_read(const struct session *);
/* Octets per read from the server now (0: the default). */
#define RETR_READ_SMALL	4096
size_t retr_read_max(const struct session *);
/* Forget any held message (session ending or upstream dropped). */
void retr_abort(struct session *);

#endif
