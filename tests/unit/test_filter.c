/* test_filter.c: daemon/filter.c on a real libev loop against the Python test
 * filter (tests/integration/pyfilter.py) over real UNIX sockets. */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "config.h"
#include "filter.h"
#include "log.h"
#include "proxy.h"
#include "unit.h"

#define PYFILTER "tests/integration/pyfilter.py"

static char tmpdir[64];
static struct ev_loop *loop;

struct got {
	int calls;
	int in_submit;		/* set while filter_submit runs */
	int called_in_submit;
	enum filter_outcome outcome;
	struct buf msg;
	char text[256];
	double at;
};

static int want_calls, done_calls;

static void
done(void *arg, struct filter_result *r)
{
	struct got *g = arg;

	if (g->in_submit)
		g->called_in_submit = 1;
	g->calls++;
	g->outcome = r->outcome;
	g->at = ev_now(loop);
	buf_free(&g->msg);
	g->msg = r->msg;
	snprintf(g->text, sizeof(g->text), "%s", r->text ? r->text : "");
	if (++done_calls >= want_calls)
		ev_break(loop, EVBREAK_ALL);
}

static void
stop_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	ev_break(l, EVBREAK_ALL);
}

/* Run the loop until n callbacks came or secs passed. */
static void
run_for(int n, double secs)
{
	ev_timer t;

	want_calls = n > 0 ? n : 1 << 30;
	done_calls = 0;
	ev_timer_init(&t, stop_cb, secs, 0);
	ev_timer_start(loop, &t);
	if (n > 0)
		ev_run(loop, 0);
	else
		ev_run(loop, 0);
	ev_timer_stop(loop, &t);
}

static pid_t
spawn_filter(const char *sock, const char *const *extra)
{
	const char *argv[32] = { "/usr/bin/python3", PYFILTER, "--socket", sock };
	int n = 4;
	char logp[128];

	snprintf(logp, sizeof(logp), "%s/filter.log", tmpdir);
	argv[n++] = "--log";
	argv[n++] = logp;
	for (int i = 0; extra && extra[i]; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	unlink(sock);
	pid_t pid = fork();
	if (pid == 0) {
		setsid();
		char out[160];
		snprintf(out, sizeof(out), "%s/filter.out", tmpdir);
		int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0600);
		dup2(fd, 1);
		dup2(fd, 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		struct stat st;
		if (stat(sock, &st) == 0)
			return pid;
		usleep(10000);
	}
	return pid;
}

static void
kill_filter(pid_t pid)
{
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
}

static struct config cfg;
static struct proxy px;

static struct filter_chain *
chain(double timeout, int tempfail, const char *quarantine, int nf, ...)
{
	va_list ap;
	static char paths[CONFIG_MAX_FILTERS][128];

	memset(&cfg, 0, sizeof(cfg));
	va_start(ap, nf);
	for (int i = 0; i < nf; i++) {
		snprintf(paths[i], sizeof(paths[i]), "%s", va_arg(ap, const char *));
		cfg.filters[i] = paths[i];
	}
	va_end(ap);
	cfg.nfilters = nf;
	cfg.filter_timeout = timeout;
	cfg.on_failure_tempfail = tempfail;
	cfg.mark_unfiltered = 1;
	cfg.quarantine = quarantine;
	memset(&px, 0, sizeof(px));
	px.loop = loop;
	px.cfg = &cfg;
	return filter_chain_new(&px);
}

static const char MSG[] =
    "From: Sender <sender@example.org>\r\n"
    "To: alice@example.org\r\n"
    "Subject: hello there\r\n"
    "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
    "X-Spam-Junk: 1\r\n"
    "X-Spam-Junk: 2\r\n"
    "\r\n"
    "body line 1\r\n"
    ".dot line\r\n";

static struct filter_job *
submit(struct filter_chain *fc, struct got *g, const char *text, uint32_t msgno)
{
	struct buf m = { 0 };
	struct filter_facts f = {
		.sid = "S1", .client = "127.0.0.1:5555", .user = "alice",
		.upstream_host = "127.0.0.1", .upstream_port = 110,
		.msgno = msgno, .size = strlen(text), .uidl = "U1",
		.command = "RETR",
	};

	buf_append(&m, text, strlen(text));
	g->in_submit = 1;
	struct filter_job *j = filter_submit(fc, &f, &m, done, g);
	g->in_submit = 0;
	CHECK(m.len == 0);
	return j;
}

static int
msg_has(const struct got *g, const char *needle)
{
	return g->msg.data && memmem(buf_ptr(&g->msg), g->msg.len, needle,
	    strlen(needle)) != NULL;
}

static char sock1[128], sock2[128];
static const char *more_arg1, *more_arg2;	/* one more option for one() */

/* One message through one filter in the given mode; returns the result. */
static void
one(const char *mode, double timeout, int tempfail, const char *q,
    struct got *g)
{
	const char *extra[] = { "--mode", mode, more_arg1, more_arg2, NULL };
	pid_t pid = spawn_filter(sock1, extra);
	struct filter_chain *fc = chain(timeout, tempfail, q, 1, sock1);

	CHECK(fc != NULL);
	memset(g, 0, sizeof(*g));
	submit(fc, g, MSG, 1);
	run_for(1, timeout + 5);
	CHECK_INT(g->calls, 1);
	CHECK_INT(g->called_in_submit, 0);
	filter_chain_free(fc);
	kill_filter(pid);
}

static void
test_accept(void)
{
	struct got g;

	one("accept", 5, 0, NULL, &g);
	CHECK_INT(g.outcome, FILTER_DELIVER);
	CHECK_MEM(buf_ptr(&g.msg), g.msg.len, MSG, strlen(MSG));
	buf_free(&g.msg);
}

static void
test_edit(void)
{
	struct got g;

	one("edit", 5, 0, NULL, &g);
	CHECK_INT(g.outcome, FILTER_DELIVER);
	CHECK(msg_has(&g, "X-Filtered: py\r\n"));
	CHECK(msg_has(&g, "Subject: [filtered] hello there\r\n"));
	CHECK(!msg_has(&g, "X-Spam-Junk"));
	CHECK(msg_has(&g, "\r\n\r\nbody line 1\r\n.dot line\r\n"));
	buf_free(&g.msg);
}

static void
test_replace(void)
{
	struct got g;

	one("replace", 5, 0, NULL, &g);
	CHECK_INT(g.outcome, FILTER_DELIVER);
	CHECK(msg_has(&g, "Subject: replaced by py\r\n"));
	/* bare LF made CRLF, final CRLF supplied */
	CHECK(msg_has(&g, "octets.\r\n.leading dot line\r\nno final newline\r\n"));
	CHECK(g.msg.len > 2 && memcmp(buf_ptr(&g.msg) + g.msg.len - 2, "\r\n", 2) == 0);
	buf_free(&g.msg);
}

static void
test_tempfail(void)
{
	struct got g;

	one("tempfail", 5, 0, NULL, &g);
	CHECK_INT(g.outcome, FILTER_TEMPFAIL);
	CHECK(strstr(g.text, "scanner busy") != NULL);
	CHECK(strchr(g.text, '\r') == NULL && strchr(g.text, '\n') == NULL);
	buf_free(&g.msg);
}

static void
test_reject_quarantine(void)
{
	char q[128], path[512];
	struct got g;

	snprintf(q, sizeof(q), "%s/q", tmpdir);
	mkdir(q, 0700);
	one("reject", 5, 0, q, &g);
	CHECK_INT(g.outcome, FILTER_DELIVER);
	CHECK(msg_has(&g, "Subject: [rejected] hello there - virus found: Test.EICAR\r\n"));
	CHECK(msg_has(&g, "Message-ID: <"));
	CHECK(msg_has(&g, "Content-Type: text/plain; charset=utf-8\r\n"));
	CHECK(msg_has(&g, "This message carried a virus and was removed.\r\n"));
	CHECK(msg_has(&g, "  From:    Sender <sender@example.org>\r\n"));
	CHECK(msg_has(&g, "  Session: S1, message 1\r\n"));
	/* the quarantined file is named in the notice and holds the original */
	DIR *d = opendir(q);
	struct dirent *de;
	int files = 0;
	while (d && (de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		files++;
		CHECK(msg_has(&g, de->d_name));
		snprintf(path, sizeof(path), "%s/%s", q, de->d_name);
		FILE *fp = fopen(path, "rb");
		char buf[4096];
		size_t n = fp ? fread(buf, 1, sizeof(buf), fp) : 0;
		if (fp)
			fclose(fp);
		CHECK_MEM(buf, n, MSG, strlen(MSG));
	}
	if (d)
		closedir(d);
	CHECK_INT(files, 1);
	buf_free(&g.msg);
}

static void
test_reject_not_kept(void)
{
	struct got g;

	/* no --quarantine, no quarantine_id: nobody keeps it: tempfail */
	one("reject", 5, 0, NULL, &g);
	CHECK_INT(g.outcome, FILTER_TEMPFAIL);
	buf_free(&g.msg);
}

static void
test_reject_filter_keeps(void)
{
	char keep[128];
	const char *extra[] = { "--mode", "reject", "--keep-dir", keep, NULL };
	struct got g = { 0 };

	snprintf(keep, sizeof(keep), "%s/keep", tmpdir);
	mkdir(keep, 0700);
	pid_t pid = spawn_filter(sock1, extra);
	struct filter_chain *fc = chain(5, 0, NULL, 1, sock1);
	submit(fc, &g, MSG, 7);
	run_for(1, 10);
	CHECK_INT(g.outcome, FILTER_DELIVER);
	CHECK(msg_has(&g, "under the reference pyq-"));
	filter_chain_free(fc);
	kill_filter(pid);
	buf_free(&g.msg);
}

/* The fallback modes: each is delivered marked (accept policy). */
static void
fallback_case(const char *mode, const char *mark, double max_secs)
{
	struct got g;
	ev_tstamp t0;

	ev_now_update(loop);
	t0 = ev_now(loop);
	one(mode, 1.0, 0, NULL, &g);
	CHECK_INT(g.outcome, FILTER_DELIVER);
	if (!msg_has(&g, mark))
		fprintf(stderr, "mode %s: no mark %s in:\n%.*s\n", mode, mark,
		    (int)(g.msg.len > 300 ? 300 : g.msg.len), buf_ptr(&g.msg));
	CHECK(msg_has(&g, mark));
	CHECK(msg_has(&g, MSG));	/* the original follows the mark */
	if (g.at - t0 > max_secs)
		fprintf(stderr, "mode %s took %.2f s\n", mode, g.at - t0);
	CHECK(g.at - t0 <= max_secs);
	buf_free(&g.msg);
}

static void
test_fallbacks(void)
{
	fallback_case("silent", "X-POP3Proxy-Unfiltered: f1.sock: timeout\r\n", 1.8);
	fallback_case("error", "X-POP3Proxy-Unfiltered: f1.sock: filter error internal\r\n", 1.0);
	more_arg1 = "--actions";
	more_arg2 = "edit_headers";
	fallback_case("not-granted", "X-POP3Proxy-Unfiltered: f1.sock: verdict not granted\r\n", 1.0);
	more_arg1 = more_arg2 = NULL;
	fallback_case("bad-verdict", "X-POP3Proxy-Unfiltered: f1.sock: protocol error\r\n", 1.0);
	fallback_case("oversize", "X-POP3Proxy-Unfiltered: f1.sock: ", 1.8);
}

static void
test_survived_garbage(void)
{
	struct got g;

	/* garbage frames and a verdict for an unknown id are survived: the
	 * real verdict after them is honoured */
	one("garbage", 2, 0, NULL, &g);
	CHECK_INT(g.outcome, FILTER_DELIVER);
	CHECK(!msg_has(&g, "X-POP3Proxy-Unfiltered"));
	buf_free(&g.msg);
	one("unknown-id", 2, 0, NULL, &g);
	CHECK_INT(g.outcome, FILTER_DELIVER);
	CHECK(!msg_has(&g, "X-POP3Proxy-Unfiltered"));
	buf_free(&g.msg);
}

static void
test_tempfail_policy(void)
{
	struct got g;

	one("silent", 0.5, 1, NULL, &g);
	CHECK_INT(g.outcome, FILTER_TEMPFAIL);
	buf_free(&g.msg);
}

static void
test_no_filter(void)
{
	struct got g[8] = { 0 };

	unlink(sock1);
	struct filter_chain *fc = chain(2, 0, NULL, 1, sock1);
	ev_now_update(loop);
	ev_tstamp t0 = ev_now(loop);
	for (int i = 0; i < 8; i++)
		submit(fc, &g[i], MSG, (uint32_t)i + 1);
	run_for(8, 10);
	for (int i = 0; i < 8; i++) {
		CHECK_INT(g[i].calls, 1);
		CHECK_INT(g[i].outcome, FILTER_DELIVER);
		CHECK(msg_has(&g[i], "X-POP3Proxy-Unfiltered: f1.sock: "));
		/* the breaker opens before the deadline of 2 s */
		CHECK(g[i].at - t0 < 2.0);
		buf_free(&g[i].msg);
	}
	/* later messages fall back at once */
	struct got h = { 0 };
	ev_now_update(loop);
	t0 = ev_now(loop);
	submit(fc, &h, MSG, 9);
	run_for(1, 5);
	CHECK_INT(h.calls, 1);
	CHECK(h.at - t0 < 0.5);	/* at once: well before the 1 s deadline */
	buf_free(&h.msg);
	filter_chain_free(fc);
}

static void
test_close_after_hello(void)
{
	const char *extra[] = { "--close-after-hello", NULL };
	pid_t pid = spawn_filter(sock1, extra);
	struct filter_chain *fc = chain(3, 0, NULL, 1, sock1);
	struct got g = { 0 };

	submit(fc, &g, MSG, 1);
	run_for(1, 10);
	CHECK_INT(g.calls, 1);
	CHECK(msg_has(&g, "X-POP3Proxy-Unfiltered: f1.sock: "));
	buf_free(&g.msg);
	filter_chain_free(fc);
	kill_filter(pid);
}

static void
test_version_mismatch(void)
{
	const char *extra[] = { "--version", "2", NULL };
	pid_t pid = spawn_filter(sock1, extra);
	struct filter_chain *fc = chain(5, 0, NULL, 1, sock1);
	struct got g = { 0 };

	run_for(0, 0.5);	/* the handshake fails */
	ev_now_update(loop);
	ev_tstamp t0 = ev_now(loop);
	submit(fc, &g, MSG, 1);
	run_for(1, 10);
	CHECK_INT(g.calls, 1);
	CHECK(msg_has(&g, "X-POP3Proxy-Unfiltered: f1.sock: version mismatch"));
	CHECK(g.at - t0 < 0.1);
	buf_free(&g.msg);
	filter_chain_free(fc);
	kill_filter(pid);
}

static void
test_cancel(void)
{
	const char *extra[] = { "--delay", "0.3", NULL };
	pid_t pid = spawn_filter(sock1, extra);
	struct filter_chain *fc = chain(5, 0, NULL, 1, sock1);
	struct got g1 = { 0 }, g2 = { 0 }, g3 = { 0 };

	struct filter_job *j1 = submit(fc, &g1, MSG, 1);
	submit(fc, &g2, MSG, 2);
	filter_cancel(j1);		/* still queued (connecting) */
	run_for(0, 0.1);
	struct filter_job *j3 = submit(fc, &g3, MSG, 3);
	run_for(0, 0.1);
	filter_cancel(j3);		/* in flight now */
	run_for(2, 2);
	CHECK_INT(g1.calls, 0);
	CHECK_INT(g3.calls, 0);
	CHECK_INT(g2.calls, 1);
	CHECK_INT(g2.outcome, FILTER_DELIVER);
	buf_free(&g2.msg);
	filter_chain_free(fc);
	kill_filter(pid);
}

static void
test_chain_two(void)
{
	const char *e1[] = { "--mode", "edit", "--name", "one", NULL };
	const char *e2[] = { "--mode", "edit", "--name", "two", NULL };
	pid_t p1 = spawn_filter(sock1, e1), p2 = spawn_filter(sock2, e2);
	struct filter_chain *fc = chain(5, 0, NULL, 2, sock1, sock2);
	struct got g = { 0 };

	submit(fc, &g, MSG, 1);
	run_for(1, 10);
	CHECK_INT(g.outcome, FILTER_DELIVER);
	/* the second filter saw the first one's output */
	CHECK(msg_has(&g, "Subject: [filtered] [filtered] hello there\r\n"));
	CHECK(msg_has(&g, "X-Filtered: one\r\n"));
	CHECK(msg_has(&g, "X-Filtered: two\r\n"));
	buf_free(&g.msg);
	filter_chain_free(fc);
	kill_filter(p1);
	kill_filter(p2);
}

static void
test_many_and_restart(void)
{
	enum { N = 300 };
	static struct got g[N];
	const char *extra[] = { "--mode", "edit", "--delay", "0.05",
	    "--max-inflight", "16", NULL };
	pid_t pid = spawn_filter(sock1, extra);
	struct filter_chain *fc = chain(10, 0, NULL, 1, sock1);
	static char big[200000];

	/* bodies larger than a socket buffer, so writes queue up */
	memcpy(big, MSG, strlen(MSG));
	memset(big + strlen(MSG), 'x', sizeof(big) - strlen(MSG) - 3);
	memcpy(big + sizeof(big) - 3, "\r\n", 3);
	memset(g, 0, sizeof(g));
	for (int i = 0; i < N; i++)
		submit(fc, &g[i], i % 3 ? MSG : big, (uint32_t)i + 1);
	/* kill the filter while requests are in flight, start it again */
	run_for(0, 0.4);
	kill_filter(pid);
	run_for(0, 0.3);
	pid = spawn_filter(sock1, extra);
	run_for(N, 30);
	int filtered = 0, marked = 0;
	for (int i = 0; i < N; i++) {
		CHECK_INT(g[i].calls, 1);
		CHECK_INT(g[i].outcome, FILTER_DELIVER);
		filtered += msg_has(&g[i], "X-Filtered: py\r\n");
		marked += msg_has(&g[i], "X-POP3Proxy-Unfiltered");
		buf_free(&g[i].msg);
	}
	CHECK_INT(filtered + marked, N);
	/* the deadline (10 s) leaves room: everything got filtered */
	CHECK_INT(filtered, N);
	filter_chain_free(fc);
	kill_filter(pid);
}

static void
test_stopped_filter(void)
{
	const char *extra[] = { "--mode", "accept", NULL };
	pid_t pid = spawn_filter(sock1, extra);
	struct filter_chain *fc = chain(1.0, 0, NULL, 1, sock1);
	struct got g[10] = { 0 };

	run_for(0, 0.3);	/* connected */
	kill(pid, SIGSTOP);
	ev_now_update(loop);
	ev_tstamp t0 = ev_now(loop);
	for (int i = 0; i < 10; i++)
		submit(fc, &g[i], MSG, (uint32_t)i + 1);
	run_for(10, 5);
	for (int i = 0; i < 10; i++) {
		CHECK_INT(g[i].calls, 1);
		CHECK(msg_has(&g[i], "X-POP3Proxy-Unfiltered: f1.sock: timeout"));
		CHECK(g[i].at - t0 < 1.3);
		buf_free(&g[i].msg);
	}
	/* the breaker is open now: the next one falls back at once */
	struct got h = { 0 };
	ev_now_update(loop);
	t0 = ev_now(loop);
	submit(fc, &h, MSG, 11);
	run_for(1, 3);
	CHECK(msg_has(&h, "circuit open"));
	CHECK(h.at - t0 < 0.5);	/* at once: well before the 1 s deadline */
	buf_free(&h.msg);
	/* it comes back: after a probe, messages are filtered again */
	kill(pid, SIGCONT);
	run_for(0, 1.5);
	struct got k = { 0 };
	submit(fc, &k, MSG, 12);
	run_for(1, 5);
	CHECK(!msg_has(&k, "X-POP3Proxy-Unfiltered"));
	buf_free(&k.msg);
	filter_chain_free(fc);
	kill_filter(pid);
}

int
main(void)
{
	signal(SIGPIPE, SIG_IGN);
	log_init("test_filter", 0, getenv("TEST_DEBUG") ? LOG_LVL_DEBUG : LOG_LVL_WARN);
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/tfXXXXXX");
	if (mkdtemp(tmpdir) == NULL)
		return 1;
	snprintf(sock1, sizeof(sock1), "%s/f1.sock", tmpdir);
	snprintf(sock2, sizeof(sock2), "%s/f2.sock", tmpdir);
	loop = ev_default_loop(0);
#define RUN1(fn) do { if (!getenv("TEST_ONLY") || \
    strcmp(getenv("TEST_ONLY"), #fn) == 0) RUN(fn); } while (0)
	RUN1(test_accept);
	RUN1(test_edit);
	RUN1(test_replace);
	RUN1(test_tempfail);
	RUN1(test_reject_quarantine);
	RUN1(test_reject_not_kept);
	RUN1(test_reject_filter_keeps);
	RUN1(test_fallbacks);
	RUN1(test_survived_garbage);
	RUN1(test_tempfail_policy);
	RUN1(test_no_filter);
	RUN1(test_close_after_hello);
	RUN1(test_version_mismatch);
	RUN1(test_cancel);
	RUN1(test_chain_two);
	RUN1(test_many_and_restart);
	RUN1(test_stopped_filter);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	if (!getenv("TEST_DEBUG") && system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tmpdir);
	return UNIT_DONE();
}
