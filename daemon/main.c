/* main.c: the pop3proxyd program: parse the command line, detach if asked,
 * then new / run / cleanup the embeddable core in proxy.c. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
	log_notice(NULL, "pop3proxyd started (%s mode)", cfg.fixed ?
	    "fixed-upstream" : "routing");

	proxy_run(px);

	proxy_free(px);
	if (cfg.pidfile)
		unlink(cfg.pidfile);
	log_notice(NULL, "pop3proxyd stopped");
	config_free(&cfg);
	return 0;
}
