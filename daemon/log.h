/* log.h: the daemon's logging, to stderr or syslog (mail facility), with
 * levels; the original module's Debug and Error callbacks, made orderly. */
#ifndef LOG_H
#define LOG_H

enum log_level {
	LOG_LVL_ERROR,
	LOG_LVL_WARN,
	LOG_LVL_NOTICE,
	LOG_LVL_INFO,
	LOG_LVL_DEBUG,
};

/* ident names the program in every line; use_syslog sends lines to syslog. */
void log_init(const char *ident, int use_syslog, enum log_level level);
/* Where lines go when not to syslog (default stderr); for an embedder, and
 * for the session fuzzer, which reads them back to look for secrets. */
void log_set_fd(int fd);
int log_level_parse(const char *name, enum log_level *level);
const char *log_level_name(enum log_level level);
enum log_level log_get_level(void);
#define log_enabled(lvl) ((lvl) <= log_get_level())

/*
 * One log line. sid is a session id (or NULL for the daemon itself); every
 * line about a session carries it, so `grep sid` tells one session's story.
 * Never pass passwords or AUTH data.
 */
void log_msg(enum log_level level, const char *sid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_error(sid, ...)  log_msg(LOG_LVL_ERROR, sid, __VA_ARGS__)
#define log_warn(sid, ...)   log_msg(LOG_LVL_WARN, sid, __VA_ARGS__)
#define log_notice(sid, ...) log_msg(LOG_LVL_NOTICE, sid, __VA_ARGS__)
#define log_info(sid, ...)   log_msg(LOG_LVL_INFO, sid, __VA_ARGS__)
#define log_debug(sid, ...) do { \
	if (log_enabled(LOG_LVL_DEBUG)) log_msg(LOG_LVL_DEBUG, sid, __VA_ARGS__); \
} while (0)

/* Start-up only: log at error level and exit(1). */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
