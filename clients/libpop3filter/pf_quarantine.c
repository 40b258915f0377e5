/* pf_quarantine.c: a filter's own quarantine directory: each rejected
 * message written to a temporary file, fsync'ed, renamed, directory synced. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pop3filter.h"

static int
write_all(int fd, const char *p, size_t n)
{
	ssize_t w;

	while (n > 0) {
		if ((w = write(fd, p, n)) == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* The id is also the file name: time, pid and a counter keep it unique for
 * this process, O_EXCL refuses a clash with another one. The rename makes a
 * half-written file invisible; the directory fsync makes the name durable. */
int
pf_quarantine_store(const char *dir, const char *msg, size_t len, char *id,
    size_t idcap)
{
	static unsigned long counter;
	char tmp[4096], dst[4096];
	int fd, dfd, saved;

	snprintf(id, idcap, "q-%lld-%ld-%lu", (long long)time(NULL),
	    (long)getpid(), ++counter);
	snprintf(tmp, sizeof(tmp), "%s/.tmp-%s", dir, id);
	snprintf(dst, sizeof(dst), "%s/%s.eml", dir, id);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) == -1)
		return -1;
	if (write_all(fd, msg, len) == -1 || fsync(fd) == -1) {
		saved = errno;
		close(fd);
		unlink(tmp);
		errno = saved;
		return -1;
	}
	if (close(fd) == -1 || rename(tmp, dst) == -1) {
		saved = errno;
		unlink(tmp);
		errno = saved;
		return -1;
	}
	if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	if (fsync(dfd) == -1) {
		saved = errno;
		close(dfd);
		errno = saved;
		return -1;
	}
	close(dfd);
	return 0;
}
