/* log.c: formats log lines and writes them to stderr or syslog.
 * Lines are written with one write(2) each so that they never interleave. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static const char *log_ident = "pop3proxyd";
static int log_syslog;
static int log_fd = STDERR_FILENO;
static enum log_level log_level = LOG_LVL_INFO;

static const char *const level_names[] = {
	"error", "warn", "notice", "info", "debug",
};
static const int level_prio[] = {
	LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG,
};

void
log_init(const char *ident, int use_syslog, enum log_level level)
{
	log_ident = ident;
	log_syslog = use_syslog;
	log_level = level;
	if (use_syslog)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

int
log_level_parse(const char *name, enum log_level *level)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcasecmp(name, level_names[i]) == 0) {
			*level = (enum log_level)i;
			return 0;
		}
	}
	if (strcasecmp(name, "warning") == 0) {
		*level = LOG_LVL_WARN;
		return 0;
	}
	return -1;
}

const char *
log_level_name(enum log_level level)
{
	return level_names[level];
}

enum log_level
log_get_level(void)
{
	return log_level;
}

static void
log_vmsg(enum log_level level, const char *sid, const char *fmt, va_list ap)
{
	char msg[2048];
	int n = 0;

	if (level > log_level)
		return;
	if (sid != NULL)
		n = snprintf(msg, sizeof(msg), "[%s] ", sid);
	vsnprintf(msg + n, sizeof(msg) - n, fmt, ap);

	if (log_syslog) {
		syslog(level_prio[level], "%s", msg);
		return;
	}

	char line[2200], stamp[32];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	int len = snprintf(line, sizeof(line), "%s.%03ldZ %s[%d]: %s: %s\n",
	    stamp, ts.tv_nsec / 1000000, log_ident, (int)getpid(),
	    level_names[level], msg);
	if (len < 0)
		return;
	if ((size_t)len >= sizeof(line)) {
		len = sizeof(line) - 1;
		line[len - 1] = '\n';
	}
	/* Best effort: a full stderr must not stall the event loop forever. */
	ssize_t w = write(log_fd, line, (size_t)len);
	(void)w;
}

void
log_set_fd(int fd)
{
	log_fd = fd;
}

void
log_msg(enum log_level level, const char *sid, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, sid, fmt, ap);
	va_end(ap);
}

void
fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(LOG_LVL_ERROR, NULL, fmt, ap);
	va_end(ap);
	exit(1);
}
