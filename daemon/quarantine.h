/* quarantine.h: keeps the original of a rejected message in a directory,
 * durably (file and directory synced) before the notice is served. */
#ifndef QUARANTINE_H
#define QUARANTINE_H

#include <stddef.h>
#include <stdint.h>

/*
 * Write data (the message as the server served it, unstuffed) to a new file
 * in dir, fsync it, rename it into place and fsync dir. On success returns 0
 * with the file's full path in path. On failure returns -1 with the reason
 * in err, and leaves no file behind.
 */
int quarantine_write(const char *dir, const char *sid, uint32_t msgno,
    const char *data, size_t len, char *path, size_t pathlen,
    char *err, size_t errlen);

#endif
