/* quarantine.c: writes the original of a rejected message to the quarantine
 * directory: temporary name, fsync, rename, fsync of the directory. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "quarantine.h"

/*
 * Blocking disk I/O on the event loop: acceptable because a reject is rare
 * and the notice must not be served before the original is durable; a
 * helper thread would buy little for the complexity.
 */
int
quarantine_write(const char *dir, const char *sid, uint32_t msgno,
    const char *data, size_t len, char *path, size_t pathlen,
    char *err, size_t errlen)
{
	char tmp[4096], name[160];
	uint32_t rnd = 0;
	int fd = -1, dfd = -1;
	const char *step = "open";

	if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != sizeof(rnd))
		rnd = (uint32_t)getpid() ^ (uint32_t)time(NULL);
	/* Names sort by time and say where the message came from. */
	snprintf(name, sizeof(name), "%lld.%s.%u.%08x.eml",
	    (long long)time(NULL), sid, msgno, rnd);
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s/.tmp.%s", dir, name) >= sizeof(tmp) ||
	    (size_t)snprintf(path, pathlen, "%s/%s", dir, name) >= pathlen) {
		snprintf(err, errlen, "quarantine path too long");
		return -1;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		goto fail;
	step = "write";
	for (size_t off = 0; off < len; ) {
		ssize_t n = write(fd, data + off, len - off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			goto fail;
		}
		off += (size_t)n;
	}
	step = "fsync";
	if (fsync(fd) < 0)
		goto fail;
	step = "close";
	if (close(fd) < 0) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	step = "rename";
	if (rename(tmp, path) < 0)
		goto fail;
	step = "fsync of the directory";
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0) {
		int e = errno;
		unlink(path);
		errno = e;
		goto fail;
	}
	close(dfd);
	return 0;
fail:
	snprintf(err, errlen, "%s %s: %s", step, dir, strerror(errno));
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	unlink(tmp);
	return -1;
}
