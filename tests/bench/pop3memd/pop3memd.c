/* pop3memd.c: the benchmark's upstream, a POP3 server whose mailbox is the
 * generated corpus in memory, answering pipelined commands with writev(). */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../bench_corpus.h"

#define SEG_MAX		64	/* output segments queued per client */
#define SEG_INLINE	56	/* a formatted status line fits here */
#define IN_MAX		1024	/* a command line longer than this is an error */

/* One piece of output: static corpus/precomputed text, or a short copy. */
struct seg {
	const char *p;
	size_t len;
	char inl[SEG_INLINE];
};

struct client {
	int fd;
	ev_io rw, ww;
	char in[IN_MAX];
	size_t inlen;
	struct seg seg[SEG_MAX];
	unsigned head, nseg;
	size_t head_off;	/* octets of seg[head] already written */
	int quitting;
};

static struct corpus corpus;
static char *stat_line, *list_reply, *uidl_reply;
static size_t list_len, uidl_len;
static unsigned long nclients;

static const char capa_reply[] =
    "+OK Capability list follows\r\n"
    "USER\r\nTOP\r\nUIDL\r\nPIPELINING\r\nRESP-CODES\r\n"
    "IMPLEMENTATION pop3memd\r\n.\r\n";

static void memd_client_io(struct client *);

static void
memd_free(struct ev_loop *loop, struct client *c)
{
	ev_io_stop(loop, &c->rw);
	ev_io_stop(loop, &c->ww);
	close(c->fd);
	free(c);
	nclients--;
}

static struct seg *
memd_seg(struct client *c)
{
	struct seg *s = &c->seg[(c->head + c->nseg++) % SEG_MAX];
	s->p = NULL;
	s->len = 0;
	return s;
}

static void
memd_static(struct client *c, const char *p, size_t len)
{
	struct seg *s = memd_seg(c);
	s->p = p;
	s->len = len;
}

static void
memd_printf(struct client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
memd_printf(struct client *c, const char *fmt, ...)
{
	struct seg *s = memd_seg(c);
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(s->inl, sizeof(s->inl), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(s->inl))
		n = snprintf(s->inl, sizeof(s->inl), "-ERR internal\r\n");
	s->p = s->inl;
	s->len = (size_t)n;
}

/* Message number argument, 1..count, or 0. */
static uint32_t
memd_msgno(const char *a, char **end)
{
	long v = strtol(a, end, 10);
	if (*end == a || v < 1 || v > (long)corpus.count)
		return 0;
	return (uint32_t)v;
}

/* One command line, CRLF stripped. */
static void
memd_command(struct client *c, char *line)
{
	char *arg = strchr(line, ' '), *end;
	if (arg != NULL)
		*arg++ = '\0';
	else
		arg = line + strlen(line);
	uint32_t no;

	if (strcasecmp(line, "RETR") == 0) {
		if ((no = memd_msgno(arg, &end)) == 0)
			goto err_no;
		memd_printf(c, "+OK %zu octets\r\n", corpus.m[no - 1].octets);
		memd_static(c, corpus.m[no - 1].wire, corpus.m[no - 1].wire_len);
	} else if (strcasecmp(line, "TOP") == 0) {
		if ((no = memd_msgno(arg, &end)) == 0 ||
		    strtol(end, NULL, 10) != CORPUS_TOP_LINES)
			goto err_top;
		memd_printf(c, "+OK top of message follows\r\n");
		memd_static(c, corpus.m[no - 1].wire, corpus.m[no - 1].top_len);
		memd_static(c, ".\r\n", 3);
	} else if (strcasecmp(line, "USER") == 0) {
		memd_printf(c, "+OK\r\n");
	} else if (strcasecmp(line, "PASS") == 0) {
		memd_printf(c, "+OK logged in\r\n");
	} else if (strcasecmp(line, "STAT") == 0) {
		memd_static(c, stat_line, strlen(stat_line));
	} else if (strcasecmp(line, "LIST") == 0 && *arg == '\0') {
		memd_static(c, list_reply, list_len);
	} else if (strcasecmp(line, "UIDL") == 0 && *arg == '\0') {
		memd_static(c, uidl_reply, uidl_len);
	} else if (strcasecmp(line, "LIST") == 0 || strcasecmp(line, "UIDL") == 0) {
		if ((no = memd_msgno(arg, &end)) == 0)
			goto err_no;
		if (line[0] == 'L' || line[0] == 'l')
			memd_printf(c, "+OK %u %zu\r\n", no, corpus.m[no - 1].octets);
		else
			memd_printf(c, "+OK %u m%u\r\n", no, no);
	} else if (strcasecmp(line, "CAPA") == 0) {
		memd_static(c, capa_reply, sizeof(capa_reply) - 1);
	} else if (strcasecmp(line, "NOOP") == 0 || strcasecmp(line, "RSET") == 0 ||
	    strcasecmp(line, "DELE") == 0) {
		/* DELE is never committed: every session sees the same box. */
		memd_printf(c, "+OK\r\n");
	} else if (strcasecmp(line, "QUIT") == 0) {
		memd_printf(c, "+OK bye\r\n");
		c->quitting = 1;
	} else {
		memd_printf(c, "-ERR unknown command\r\n");
	}
	return;
err_no:
	memd_printf(c, "-ERR no such message\r\n");
	return;
err_top:
	memd_printf(c, "-ERR only TOP n %d here\r\n", CORPUS_TOP_LINES);
}

/* Run the complete lines in c->in while there is room for their replies;
 * a client that does not read stops being read from (backpressure). */
static void
memd_input(struct client *c)
{
	size_t p = 0;
	while (!c->quitting && c->nseg + 3 <= SEG_MAX) {
		char *lf = memchr(c->in + p, '\n', c->inlen - p);
		if (lf == NULL)
			break;
		*lf = '\0';
		if (lf > c->in + p && lf[-1] == '\r')
			lf[-1] = '\0';
		memd_command(c, c->in + p);
		p = (size_t)(lf - c->in) + 1;
	}
	memmove(c->in, c->in + p, c->inlen - p);
	c->inlen -= p;
}

/* Write what is queued; returns -1 when the client is gone. */
static int
memd_flush(struct client *c)
{
	while (c->nseg > 0) {
		struct iovec iov[SEG_MAX];
		int n = 0;
		for (unsigned i = 0; i < c->nseg; i++, n++) {
			struct seg *s = &c->seg[(c->head + i) % SEG_MAX];
			size_t off = i == 0 ? c->head_off : 0;
			iov[n].iov_base = (char *)s->p + off;
			iov[n].iov_len = s->len - off;
		}
		ssize_t w = writev(c->fd, iov, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -1;
		}
		size_t left = (size_t)w;
		while (left > 0) {
			struct seg *s = &c->seg[c->head];
			size_t rest = s->len - c->head_off;
			if (left < rest) {
				c->head_off += left;
				break;
			}
			left -= rest;
			c->head_off = 0;
			c->head = (c->head + 1) % SEG_MAX;
			c->nseg--;
		}
	}
	return 0;
}

static void
memd_client_io(struct client *c)
{
	struct ev_loop *loop = ev_default_loop(0);
	for (;;) {
		if (memd_flush(c) < 0) {
			memd_free(loop, c);
			return;
		}
		if (c->nseg > 0)
			break;
		if (c->quitting) {
			memd_free(loop, c);
			return;
		}
		size_t before = c->inlen;
		memd_input(c);
		if (c->nseg == 0 || c->inlen == before)
			break;
	}
	if (c->inlen == IN_MAX) {
		memd_free(loop, c);	/* a line without an end: not a client */
		return;
	}
	if (c->nseg > 0)
		ev_io_start(loop, &c->ww);
	else
		ev_io_stop(loop, &c->ww);
	if (c->nseg + 3 <= SEG_MAX && !c->quitting)
		ev_io_start(loop, &c->rw);
	else
		ev_io_stop(loop, &c->rw);
}

static void
memd_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct client *c = w->data;
	ssize_t n = recv(c->fd, c->in + c->inlen, IN_MAX - c->inlen, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		memd_free(loop, c);
		return;
	}
	c->inlen += (size_t)n;
	memd_input(c);
	memd_client_io(c);
}

static void
memd_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct client *c = w->data;
	memd_client_io(c);
}

static void
memd_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	for (int k = 0; k < 64; k++) {
		int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE)
				fprintf(stderr, "pop3memd: accept: %s\n",
				    strerror(errno));
			return;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct client *c = calloc(1, sizeof(*c));
		if (c == NULL) {
			close(fd);
			return;
		}
		c->fd = fd;
		ev_io_init(&c->rw, memd_read_cb, fd, EV_READ);
		ev_io_init(&c->ww, memd_write_cb, fd, EV_WRITE);
		c->rw.data = c->ww.data = c;
		nclients++;
		memd_printf(c, "+OK pop3memd ready\r\n");
		memd_client_io(c);
	}
}

static int
memd_listen(const char *spec)
{
	char host[64];
	const char *colon = strrchr(spec, ':');
	if (colon == NULL || (size_t)(colon - spec) >= sizeof(host))
		return -1;
	memcpy(host, spec, (size_t)(colon - spec));
	host[colon - spec] = '\0';
	struct sockaddr_in sin = { .sin_family = AF_INET,
	    .sin_port = htons((uint16_t)atoi(colon + 1)) };
	if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
		return -1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    listen(fd, 4096) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int
memd_precompute(void)
{
	size_t total = 0;
	for (uint32_t i = 0; i < corpus.count; i++)
		total += corpus.m[i].octets;
	if (asprintf(&stat_line, "+OK %u %zu\r\n", corpus.count, total) < 0)
		return -1;
	size_t cap = 64 + (size_t)corpus.count * 48;
	list_reply = malloc(cap);
	uidl_reply = malloc(cap);
	if (list_reply == NULL || uidl_reply == NULL)
		return -1;
	list_len = (size_t)sprintf(list_reply, "+OK %u messages\r\n", corpus.count);
	uidl_len = (size_t)sprintf(uidl_reply, "+OK\r\n");
	for (uint32_t i = 0; i < corpus.count; i++) {
		list_len += (size_t)sprintf(list_reply + list_len, "%u %zu\r\n",
		    i + 1, corpus.m[i].octets);
		uidl_len += (size_t)sprintf(uidl_reply + uidl_len, "%u m%u\r\n",
		    i + 1, i + 1);
	}
	list_len += (size_t)sprintf(list_reply + list_len, ".\r\n");
	uidl_len += (size_t)sprintf(uidl_reply + uidl_len, ".\r\n");
	return 0;
}

static void
memd_usage(void)
{
	fputs("usage: pop3memd --listen 127.0.0.1:PORT [--count N] [--size BYTES]"
	    " [--seed N]\n"
	    "Serves N generated messages of BYTES octets to any USER/PASS.\n",
	    stderr);
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "count", required_argument, NULL, 'n' },
		{ "size", required_argument, NULL, 's' },
		{ "seed", required_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *listen_spec = NULL;
	unsigned long count = 50, size = 50000, seed = 1;
	int o;

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'l': listen_spec = optarg; break;
		case 'n': count = strtoul(optarg, NULL, 10); break;
		case 's': size = strtoul(optarg, NULL, 10); break;
		case 'S': seed = strtoul(optarg, NULL, 10); break;
		case 'h': memd_usage(); return 0;
		default: memd_usage(); return 2;
		}
	}
	if (listen_spec == NULL || count == 0 || count > 100000 ||
	    size > 64UL << 20) {
		memd_usage();
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (corpus_build(&corpus, (uint32_t)count, size, (uint32_t)seed) < 0 ||
	    memd_precompute() < 0) {
		fprintf(stderr, "pop3memd: out of memory\n");
		return 1;
	}
	int lfd = memd_listen(listen_spec);
	if (lfd < 0) {
		fprintf(stderr, "pop3memd: cannot listen on %s: %s\n", listen_spec,
		    strerror(errno));
		return 1;
	}
	struct ev_loop *loop = ev_default_loop(0);
	ev_io acc;
	ev_io_init(&acc, memd_accept_cb, lfd, EV_READ);
	ev_io_start(loop, &acc);
	fprintf(stderr, "pop3memd: listening on %s, %lu messages of %lu octets\n",
	    listen_spec, count, size);
	ev_run(loop, 0);
	return 0;
}
