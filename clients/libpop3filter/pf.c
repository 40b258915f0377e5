/* pf.c: the filter object: settings, the listening UNIX socket, the loop with
 * its SIGTERM handling, draining, logging and the author-visible error state. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "pf_local.h"

static const char *const level_names[] = { "error", "warning", "info", "debug" };

/* ---- errors and logging -------------------------------------------------- */

int
pf_fail_with(struct pf *f, enum pf_errno e, const char *fmt, ...)
{
	va_list ap;

	f->err = e;
	va_start(ap, fmt);
	vsnprintf(f->errbuf, sizeof(f->errbuf), fmt, ap);
	va_end(ap);
	return -1;
}

void
pf_clear_err(struct pf *f)
{
	f->err = PF_OK;
	f->errbuf[0] = '\0';
}

enum pf_errno
pf_errno(const struct pf *f)
{
	return f->err;
}

const char *
pf_strerror(const struct pf *f)
{
	return f->err == PF_OK ? "no error" : f->errbuf;
}

void
pf_log(struct pf *f, enum pf_log_level lvl, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	if (lvl > f->level)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (f->on_log != NULL)
		f->on_log(lvl, line, f->log_arg);
	else
		fprintf(stderr, "%s: %s: %s\n", f->name, level_names[lvl], line);
}

/* ---- settings ------------------------------------------------------------ */

struct pf *
pf_new(struct ev_loop *loop)
{
	struct pf *f;

	if (loop == NULL && (loop = EV_DEFAULT) == NULL)
		return NULL;
	if ((f = calloc(1, sizeof(*f))) == NULL)
		return NULL;
	f->loop = loop;
	f->lfd = -1;
	f->commands = PF_RETR;
	f->max_inflight = PF_DEFAULT_INFLIGHT;
	f->max_frame = FP_DEFAULT_MAX_FRAME;
	f->level = PF_LOG_INFO;
	snprintf(f->name, sizeof(f->name), "libpop3filter/%s", PF_LIB_VERSION);
	return f;
}

struct ev_loop *
pf_loop(struct pf *f)
{
	return f->loop;
}

static int
too_late(struct pf *f)
{
	if (f->listening)
		return pf_fail_with(f, PF_ESTATE, "settings are fixed once listening");
	return 0;
}

void
pf_on_message(struct pf *f, pf_message_cb cb, void *arg)
{
	f->on_message = cb;
	f->message_arg = arg;
}

void
pf_on_cancel(struct pf *f, pf_cancel_cb cb, void *arg)
{
	f->on_cancel = cb;
	f->cancel_arg = arg;
}

void
pf_on_log(struct pf *f, pf_log_cb cb, void *arg)
{
	f->on_log = cb;
	f->log_arg = arg;
}

void
pf_log_level(struct pf *f, enum pf_log_level lvl)
{
	f->level = lvl;
}

int
pf_name(struct pf *f, const char *name)
{
	size_t n;

	if (too_late(f) == -1)
		return -1;
	if (name == NULL || (n = strlen(name)) == 0 || n > FP_MAX_NAME)
		return pf_fail_with(f, PF_EINVAL, "name must be 1..%d octets",
		    FP_MAX_NAME);
	memcpy(f->name, name, n + 1);
	return 0;
}

int
pf_declare(struct pf *f, unsigned actions)
{
	if (too_late(f) == -1)
		return -1;
	if (actions & ~(unsigned)FP_CAPS_ACTIONS)
		return pf_fail_with(f, PF_EINVAL, "unknown action bits 0x%x",
		    actions & ~(unsigned)FP_CAPS_ACTIONS);
	f->actions = actions;
	return 0;
}

int
pf_commands(struct pf *f, unsigned commands)
{
	if (too_late(f) == -1)
		return -1;
	if (!(commands & PF_RETR) || (commands & ~(unsigned)FP_CAPS_COMMANDS))
		return pf_fail_with(f, PF_EINVAL,
		    "commands must include PF_RETR and only PF_RETR|PF_TOP");
	f->commands = commands;
	return 0;
}

int
pf_max_message_size(struct pf *f, uint64_t max)
{
	uint64_t frame;

	if (too_late(f) == -1)
		return -1;
	f->max_message_size = max;
	/* Room for the request's other fields (bounded by the codec limits:
	 * four short strings, a uidl and small numbers) beyond the body. */
	frame = max == 0 ? FP_DEFAULT_MAX_FRAME : max + (64u << 10);
	if (frame < FP_DEFAULT_MAX_FRAME)
		frame = FP_DEFAULT_MAX_FRAME;
	f->max_frame = frame > UINT32_MAX ? UINT32_MAX : (uint32_t)frame;
	return 0;
}

int
pf_max_inflight(struct pf *f, uint32_t n)
{
	if (too_late(f) == -1)
		return -1;
	if (n == 0)
		return pf_fail_with(f, PF_EINVAL, "max_inflight must be >= 1");
	f->max_inflight = n;
	return 0;
}

int
pf_socket_mode(struct pf *f, mode_t mode)
{
	if (too_late(f) == -1)
		return -1;
	f->mode = mode & 07777;
	return 0;
}

/* ---- the listening socket ------------------------------------------------ */

static void
listen_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct pf *f = w->data;
	int fd;

	for (;;) {
		fd = accept4(f->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			pf_conn_accept(f, fd);
			continue;
		}
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
		    errno == ENOMEM) {
			/* Out of descriptors: stop polling, or the loop spins
			 * on a socket that stays readable. */
			pf_log(f, PF_LOG_WARN, "accept: %s; pausing 1s",
			    strerror(errno));
			ev_io_stop(loop, &f->lio);
			ev_timer_set(&f->retry, 1.0, 0.0);
			ev_timer_start(loop, &f->retry);
		}
		return;
	}
}

static void
retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct pf *f = w->data;

	if (!f->draining && f->lfd >= 0)
		ev_io_start(loop, &f->lio);
}

/* A socket file nobody accepts on is left over from a crash: remove it. A
 * live one means another instance: refuse rather than steal its address. */
static int
clear_stale(struct pf *f, const struct sockaddr_un *sun)
{
	struct stat st;
	int fd, rc;

	if (lstat(sun->sun_path, &st) == -1)
		return errno == ENOENT ? 0 :
		    pf_fail_with(f, PF_ESYS, "%s: %s", sun->sun_path, strerror(errno));
	if (!S_ISSOCK(st.st_mode))
		return pf_fail_with(f, PF_EINVAL, "%s exists and is not a socket",
		    sun->sun_path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return pf_fail_with(f, PF_ESYS, "socket: %s", strerror(errno));
	rc = connect(fd, (const struct sockaddr *)sun, sizeof(*sun));
	close(fd);
	if (rc == 0)
		return pf_fail_with(f, PF_EINVAL, "%s: another filter is listening "
		    "there", sun->sun_path);
	if (unlink(sun->sun_path) == -1 && errno != ENOENT)
		return pf_fail_with(f, PF_ESYS, "unlink %s: %s", sun->sun_path,
		    strerror(errno));
	pf_log(f, PF_LOG_INFO, "removed stale socket %s", sun->sun_path);
	return 0;
}

int
pf_listen(struct pf *f, const char *path)
{
	struct sockaddr_un sun;
	int fd = -1;

	pf_clear_err(f);
	if (f->listening)
		return pf_fail_with(f, PF_ESTATE, "already listening");
	if (f->on_message == NULL)
		return pf_fail_with(f, PF_ESTATE, "no message callback (pf_on_message)");
	if (path == NULL || *path == '\0' || strlen(path) >= sizeof(sun.sun_path))
		return pf_fail_with(f, PF_EINVAL, "socket path empty or longer "
		    "than %zu octets", sizeof(sun.sun_path) - 1);
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, strlen(path));
	if (clear_stale(f, &sun) == -1)
		return -1;
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) == -1) {
		pf_fail_with(f, PF_ESYS, "socket: %s", strerror(errno));
		goto fail;
	}
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		pf_fail_with(f, PF_ESYS, "bind %s: %s", path, strerror(errno));
		goto fail;
	}
	if (f->mode != 0 && chmod(path, f->mode) == -1) {
		pf_fail_with(f, PF_ESYS, "chmod %s: %s", path, strerror(errno));
		unlink(path);
		goto fail;
	}
	if (listen(fd, 128) == -1) {
		pf_fail_with(f, PF_ESYS, "listen %s: %s", path, strerror(errno));
		unlink(path);
		goto fail;
	}
	if ((f->path = strdup(path)) == NULL) {
		pf_fail_with(f, PF_ENOMEM, "out of memory");
		unlink(path);
		goto fail;
	}
	f->lfd = fd;
	ev_io_init(&f->lio, listen_cb, fd, EV_READ);
	f->lio.data = f;
	ev_io_start(f->loop, &f->lio);
	ev_init(&f->retry, retry_cb);
	f->retry.data = f;
	f->listening = true;
	pf_log(f, PF_LOG_INFO, "listening on %s", path);
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	return -1;
}

static void
listener_close(struct pf *f)
{
	if (f->lfd < 0)
		return;
	ev_io_stop(f->loop, &f->lio);
	ev_timer_stop(f->loop, &f->retry);
	close(f->lfd);
	f->lfd = -1;
	if (f->path != NULL)
		unlink(f->path);
}

/* ---- draining and running ------------------------------------------------ */

static void
drain_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct pf *f = w->data;
	struct pf_conn *c, *next;

	pf_log(f, PF_LOG_WARN, "drain: %u request(s) still unanswered after "
	    "%.0fs; closing", f->inflight, PF_DRAIN_TIMEOUT);
	for (c = f->conns; c != NULL; c = next) {
		next = c->next;
		pf_conn_close(c, "drain timed out");
	}
	pf_check_drained(f);
}

/* Drained once the listener is closed and every connection is gone; each
 * connection closes itself when nothing is in flight and its output is out. */
void
pf_check_drained(struct pf *f)
{
	if (!f->draining || f->done || f->conns != NULL)
		return;
	f->done = true;
	ev_timer_stop(f->loop, &f->drain_timer);
	pf_log(f, PF_LOG_INFO, "drained");
	if (f->running)
		ev_break(f->loop, EVBREAK_ONE);
}

void
pf_drain(struct pf *f, const char *reason)
{
	struct pf_conn *c, *next;

	if (f->draining)
		return;
	f->draining = true;
	if (reason != NULL)
		f->drain_reason = strdup(reason);
	pf_log(f, PF_LOG_INFO, "draining (%s): %u request(s) in flight on %u "
	    "connection(s)", reason ? reason : "asked to", f->inflight, f->nconns);
	listener_close(f);
	ev_timer_init(&f->drain_timer, drain_timeout_cb, PF_DRAIN_TIMEOUT, 0.0);
	f->drain_timer.data = f;
	ev_timer_start(f->loop, &f->drain_timer);
	for (c = f->conns; c != NULL; c = next) {
		next = c->next;
		pf_conn_drain(c, f->drain_reason);
	}
	pf_check_drained(f);
}

bool
pf_done(const struct pf *f)
{
	return f->done;
}

unsigned
pf_inflight(const struct pf *f)
{
	return f->inflight;
}

static void
signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct pf *f = w->data;

	if (f->signals++ == 0) {
		pf_drain(f, w->signum == SIGTERM ? "SIGTERM" : "SIGINT");
		return;
	}
	pf_log(f, PF_LOG_WARN, "second signal: stopping with %u request(s) "
	    "unanswered", f->inflight);
	f->done = true;
	ev_break(loop, EVBREAK_ONE);
}

int
pf_run(struct pf *f)
{
	pf_clear_err(f);
	if (!f->listening && !f->draining)
		return pf_fail_with(f, PF_ESTATE, "pf_listen() first");
	/* Writes use MSG_NOSIGNAL, but author code may write to pipes. */
	signal(SIGPIPE, SIG_IGN);
	ev_signal_init(&f->sigterm, signal_cb, SIGTERM);
	ev_signal_init(&f->sigint, signal_cb, SIGINT);
	f->sigterm.data = f->sigint.data = f;
	ev_signal_start(f->loop, &f->sigterm);
	ev_signal_start(f->loop, &f->sigint);
	f->running = true;
	while (!f->done && ev_run(f->loop, EVRUN_ONCE))
		;
	f->running = false;
	ev_signal_stop(f->loop, &f->sigterm);
	ev_signal_stop(f->loop, &f->sigint);
	if (!f->done)
		return pf_fail_with(f, PF_ESTATE, "loop ended with nothing to do");
	return f->signals > 1 ? -1 : 0;
}

void
pf_free(struct pf *f)
{
	if (f == NULL)
		return;
	listener_close(f);
	while (f->conns != NULL)
		pf_conn_close(f->conns, "filter freed");
	if (ev_is_active(&f->drain_timer))
		ev_timer_stop(f->loop, &f->drain_timer);
	free(f->path);
	free(f->drain_reason);
	free(f);
}
