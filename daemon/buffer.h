/* buffer.h: a growable byte buffer with a read offset, the unit of all
 * connection I/O. Consuming from the front is O(1); space is reclaimed lazily. */
#ifndef BUFFER_H
#define BUFFER_H

#include <stddef.h>

struct buf {
	char *data;
	size_t off;	/* first unread byte */
	size_t len;	/* bytes from off on */
	size_t cap;
};

/* The unread bytes. An empty buffer may have no memory at all: then this is
 * a static empty array, so that callers may compute p + len and pass p to
 * memcpy without NULL arithmetic (undefined behaviour, found by fuzzing). */
extern char buf_none[1];
static inline char *
buf_ptr(const struct buf *b)
{
	return b->data != NULL ? b->data + b->off : buf_none;
}

void buf_free(struct buf *);
/* Space for at least n more bytes at buf_tail(); returns it or NULL on ENOMEM. */
char *buf_reserve(struct buf *, size_t n);
#define buf_tail(b) ((b)->data + (b)->off + (b)->len)
#define buf_commit(b, n) ((b)->len += (n))
int buf_append(struct buf *, const void *p, size_t n);
/* Give an empty buffer exactly n bytes of room (no rounding up): a held
 * message of known size takes what it needs, not the next power of two. */
int buf_presize(struct buf *, size_t n);
/* Drop n bytes from the front. */
void buf_consume(struct buf *, size_t n);
/* Give back the room beyond the bytes held (a buffer that must wait). */
void buf_compact(struct buf *);
/* Release memory above `keep` bytes of capacity once the buffer is empty, so
 * that an idle session does not sit on a large buffer. */
void buf_shrink(struct buf *, size_t keep);

#endif
