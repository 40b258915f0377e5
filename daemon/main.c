/* main.c: the pop3proxyd program: parse the command line, detach if asked,
 * then new / run / cleanup the embeddable core in proxy.c. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "proxy.h"

static int
daemonize(void)
{
	pid_t pid = fork();

	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	if (setsid() < 0)
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	if (chdir("/") < 0)
		return -1;
	int fd = open("/dev/null", O_RDWR);
	if (fd < 0)
		return -1;
	dup2(fd, STDIN_FILENO);
	dup2(fd, STDOUT_FILENO);
	dup2(fd, STDERR_FILENO);
	if (fd > STDERR_FILENO)
		close(fd);
	return 0;
}

/*
 * Least privilege: once the listeners are bound and the keys loaded, a
 * proxy started as root becomes --user/--group for good. Without --user it
 * refuses to go on as root unless --allow-root says so.
 */
static void
drop_privileges(const struct config *cfg)
{
	if (cfg->user == NULL) {
		if (geteuid() == 0 && !cfg->allow_root)
			fatal("refusing to run as root: give --user USER to drop "
			    "privileges after binding (or --allow-root)");
		return;
	}
	struct passwd *pw = getpwnam(cfg->user);
	if (pw == NULL)
		fatal("--user %s: no such user", cfg->user);
	gid_t gid = pw->pw_gid;
	if (cfg->group != NULL) {
		struct group *gr = getgrnam(cfg->group);
		if (gr == NULL)
			fatal("--group %s: no such group", cfg->group);
		gid = gr->gr_gid;
	}
	if (geteuid() != 0) {
		if (geteuid() != pw->pw_uid)
			fatal("--user %s: only root can switch users", cfg->user);
		return;
	}
	if (initgroups(pw->pw_name, gid) < 0 || setgid(gid) < 0 ||
	    setuid(pw->pw_uid) < 0)
		fatal("cannot become %s: %s", cfg->user, strerror(errno));
	if (setuid(0) == 0)
		fatal("could still regain root after dropping privileges");
	log_notice(NULL, "running as %s (uid %ld, gid %ld)", pw->pw_name,
	    (long)pw->pw_uid, (long)gid);
}

/* Passwords pass through this process: keep them out of core files. */
static void
no_core_dumps(void)
{
	struct rlimit rl = { 0, 0 };

	setrlimit(RLIMIT_CORE, &rl);
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

static int
write_pidfile(const char *path)
{
	FILE *f = fopen(path, "w");

	if (f == NULL)
		return -1;
	fprintf(f, "%ld\n", (long)getpid());
	return fclose(f);
}

int
main(int argc, char **argv)
{
	struct config cfg;
	int r = config_parse(&cfg, argc, argv);

	if (r != 0) {
		config_free(&cfg);
		return r > 0 ? 0 : 2;
	}
	signal(SIGPIPE, SIG_IGN);
	no_core_dumps();
	log_init("pop3proxyd", cfg.use_syslog || cfg.daemonize, cfg.log_level);

	struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
	if (loop == NULL)
		fatal("cannot initialise the event loop");
	struct proxy *px = proxy_new(loop, &cfg);
	if (px == NULL)
		return 1;
	if (cfg.daemonize) {
		if (daemonize() < 0)
			fatal("cannot detach: %s", strerror(errno));
		ev_loop_fork(loop);
	}
	if (cfg.pidfile && write_pidfile(cfg.pidfile) < 0)
		fatal("cannot write %s: %s", cfg.pidfile, strerror(errno));
	drop_privileges(&cfg);
	log_notice(NULL, "pop3proxyd started (%s mode)", cfg.fixed ?
	    "fixed-upstream" : "routing");

	int rc = proxy_run(px) < 0 ? 1 : 0;

	proxy_free(px);
	if (cfg.pidfile)
		unlink(cfg.pidfile);
	log_notice(NULL, "pop3proxyd stopped");
	config_free(&cfg);
	return rc;
}
