/* replay.c: pop3filter-test's replay mode: handshake, then .eml files and
 * maildirs sent as requests (many in flight), each answer printed. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tool.h"

struct job {
	char		*path;
	char		*data;		/* loaded while in flight */
	size_t		 len;
	uint64_t	 id;
	bool		 sent, done;
};

struct list {
	struct job	*v;
	size_t		 n, cap;
};

static int
list_add(struct list *l, const char *path)
{
	struct job *nv;

	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 16;
		if ((nv = realloc(l->v, l->cap * sizeof(*nv))) == NULL)
			return -1;
		l->v = nv;
	}
	memset(&l->v[l->n], 0, sizeof(l->v[0]));
	if ((l->v[l->n].path = strdup(path)) == NULL)
		return -1;
	l->n++;
	return 0;
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Regular files of one directory, in name order (dot files skipped). */
static int
add_dir_files(struct list *l, const char *dir)
{
	struct dirent *de;
	struct stat st;
	char **names = NULL, path[4096];
	size_t n = 0, i;
	DIR *d;
	int rc = 0;

	if ((d = opendir(dir)) == NULL)
		return -1;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (stat(path, &st) == -1 || !S_ISREG(st.st_mode))
			continue;
		names = realloc(names, (n + 1) * sizeof(*names));
		names[n++] = strdup(path);
	}
	closedir(d);
	qsort(names, n, sizeof(*names), cmp_str);
	for (i = 0; i < n; i++) {
		if (list_add(l, names[i]) == -1)
			rc = -1;
		free(names[i]);
	}
	free(names);
	return rc;
}

/* A file, a maildir (its cur/ and new/), or a directory of files. */
static int
add_arg(struct list *l, const char *arg)
{
	char sub[4096];
	struct stat st;
	bool maildir = false;
	const char *parts[] = { "cur", "new" };
	size_t i;

	if (stat(arg, &st) == -1) {
		fprintf(stderr, "pop3filter-test: %s: %s\n", arg, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode))
		return list_add(l, arg);
	for (i = 0; i < 2; i++) {
		snprintf(sub, sizeof(sub), "%s/%s", arg, parts[i]);
		if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode)) {
			maildir = true;
			if (add_dir_files(l, sub) == -1)
				return -1;
		}
	}
	return maildir ? 0 : add_dir_files(l, arg);
}

/* Read a message; unless raw, every line end becomes CRLF, as a POP3 server
 * serves it. */
static int
load(struct job *j, bool raw)
{
	FILE *fp;
	struct fp_buf in = { 0 }, out = { 0 };
	char chunk[65536];
	size_t n, i;

	if ((fp = fopen(j->path, "rb")) == NULL)
		return -1;
	while ((n = fread(chunk, 1, sizeof(chunk), fp)) > 0)
		fp_buf_append(&in, chunk, n);
	fclose(fp);
	if (raw) {
		j->data = in.data ? in.data : strdup("");
		j->len = in.len;
		return 0;
	}
	fp_buf_reserve(&out, in.len + in.len / 16 + 1);
	for (i = 0; i < in.len; i++) {
		if (in.data[i] == '\n' && (i == 0 || in.data[i - 1] != '\r'))
			fp_buf_append(&out, "\r", 1);
		fp_buf_append(&out, &in.data[i], 1);
	}
	fp_buf_free(&in);
	j->data = out.data ? out.data : strdup("");
	j->len = out.len;
	return 0;
}

static struct job *
find(struct list *l, uint64_t id)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		if (l->v[i].sent && !l->v[i].done && l->v[i].id == id)
			return &l->v[i];
	return NULL;
}

static void
print_params(const struct fp_hello_ack *a, const struct fp_params *p)
{
	static const char *const an[] = { "edit_headers", "replace", "reject",
	    "tempfail" };
	static const uint32_t ab[] = { FP_CAP_EDIT_HEADERS, FP_CAP_REPLACE,
	    FP_CAP_REJECT, FP_CAP_TEMPFAIL };
	size_t i;
	int k = 0;

	printf("negotiated: version %u with \"%.*s\"; commands %s; actions ",
	    p->version, (int)a->filter.len, a->filter.ptr,
	    (p->commands & FP_CAP_TOP) ? "RETR,TOP" : "RETR");
	for (i = 0; i < 4; i++)
		if (p->actions & ab[i])
			printf("%s%s", k++ ? "," : "", an[i]);
	printf("%s; window %u; filter max_frame %u; max_message_size %llu\n",
	    k ? "" : "accept only", p->window, p->filter_max_frame,
	    (unsigned long long)p->max_message_size);
}

int
replay_run(const struct opts *o)
{
	static const uint32_t v1[] = { FP_VERSION };
	struct list l = { 0 };
	struct tconn c;
	struct fp_hello h;
	struct fp_hello_ack ack;
	struct fp_params p;
	struct fp_msg m;
	struct fp_err err;
	struct fp_buf b = { 0 };
	struct job *j;
	char why[256], label[4200];
	size_t next = 0, inflight = 0, window, answered = 0, i;
	uint64_t id = 0;
	int rc, problems = 0;
	bool draining = false;

	for (i = 0; i < (size_t)o->nfiles; i++)
		if (add_arg(&l, o->files[i]) == -1)
			return 2;
	if (tc_open(&c, o->socket, why, sizeof(why)) == -1) {
		fprintf(stderr, "pop3filter-test: %s\n", why);
		return 1;
	}
	tc_hello(&h, v1, 1);
	if (fp_encode_hello(&b, &h) == -1 || tc_send_buf(&c, &b) == -1) {
		fprintf(stderr, "pop3filter-test: cannot send hello\n");
		return 1;
	}
	rc = tc_next(&c, &m, &err, o->timeout_ms);
	if (rc != 1 || m.type != FP_MSG_HELLO_ACK) {
		fprintf(stderr, "pop3filter-test: handshake failed: %s\n",
		    rc == 0 ? "no answer to hello" : rc == -2 ? c.eof_why :
		    rc == -1 ? err.message : m.type == FP_MSG_ERROR ?
		    m.error.code.ptr : "expected hello_ack");
		return 1;
	}
	ack = m.hello_ack;
	if (fp_negotiate(&h, &ack, &p, &err) == -1) {
		fprintf(stderr, "pop3filter-test: negotiation failed: %s\n",
		    err.message);
		return 1;
	}
	print_params(&ack, &p);
	window = p.window < o->inflight ? p.window : o->inflight;

	while (answered < l.n) {
		while (!draining && inflight < window && next < l.n) {
			j = &l.v[next++];
			if (load(j, o->raw) == -1) {
				printf("%s: cannot read: %s\n", j->path, strerror(errno));
				j->done = true;
				answered++;
				continue;
			}
			fp_buf_reset(&b);
			if ((p.max_message_size != 0 && j->len > p.max_message_size) ||
			    tool_request(&b, ++id, next, j->data, j->len, o->top,
			    o->top_lines) == -1 || fp_frame_len(b.data) >
			    p.filter_max_frame) {
				printf("%s: not sent: larger than the filter takes\n",
				    j->path);
				free(j->data);
				j->done = true;
				answered++;
				continue;
			}
			j->id = id;
			j->sent = true;
			if (tc_send_buf(&c, &b) == -1) {
				fprintf(stderr, "pop3filter-test: send failed\n");
				return 1;
			}
			inflight++;
		}
		if (inflight == 0)
			break;
		rc = tc_next(&c, &m, &err, o->timeout_ms);
		if (rc == 0 || rc == -2) {
			printf("PROTOCOL ERROR: %s with %zu request(s) unanswered\n",
			    rc == 0 ? "no answer in time" : c.eof_why, inflight);
			problems++;
			break;
		}
		if (rc == -1) {
			printf("PROTOCOL ERROR: bad frame from the filter: %s: %s\n",
			    err.code, err.message);
			problems++;
			if (err.fatal)
				break;
			continue;
		}
		switch (m.type) {
		case FP_MSG_VERDICT:
		case FP_MSG_ERROR:
			if (m.type == FP_MSG_ERROR && !m.error.has_id) {
				printf("filter error (connection): %.*s %.*s\n",
				    (int)m.error.code.len, m.error.code.ptr,
				    (int)m.error.message.len,
				    m.error.message.ptr ? m.error.message.ptr : "");
				problems++;
				continue;
			}
			j = find(&l, m.type == FP_MSG_VERDICT ? m.verdict.id :
			    m.error.id);
			if (j == NULL) {
				printf("PROTOCOL ERROR: answer for unknown id %llu\n",
				    (unsigned long long)(m.type == FP_MSG_VERDICT ?
				    m.verdict.id : m.error.id));
				problems++;
				continue;
			}
			snprintf(label, sizeof(label), "%s", j->path);
			if (m.type == FP_MSG_VERDICT &&
			    fp_verdict_check(&m.verdict, p.actions, &err) == -1) {
				printf("PROTOCOL ERROR: %s: %s\n", label, err.message);
				problems++;
			}
			tool_print_answer(label, &m, j->data, j->len, o->show);
			free(j->data);
			j->data = NULL;
			j->done = true;
			answered++;
			inflight--;
			break;
		case FP_MSG_PING:
			fp_buf_reset(&b);
			if (fp_encode_pong(&b, m.ping.id) == 0)
				tc_send_buf(&c, &b);
			break;
		case FP_MSG_DRAIN:
			printf("the filter is draining%s%.*s\n",
			    m.drain.reason.ptr ? ": " : "",
			    (int)m.drain.reason.len, m.drain.reason.ptr ?
			    m.drain.reason.ptr : "");
			draining = true;
			break;
		default:
			printf("PROTOCOL ERROR: unexpected %s\n",
			    fp_msg_type_name(m.type));
			problems++;
		}
	}
	if (answered < l.n)
		printf("%zu of %zu message(s) unanswered\n", l.n - answered, l.n);
	printf("replay: %zu message(s), %zu answered, %d protocol error(s)\n",
	    l.n, answered, problems);
	tc_close(&c);
	fp_buf_free(&b);
	for (i = 0; i < l.n; i++) {
		free(l.v[i].path);
		free(l.v[i].data);
	}
	free(l.v);
	return problems || answered < l.n ? 1 : 0;
}
