/* buffer.c: growable byte buffers. Growth doubles; an empty buffer rewinds
 * to its start so that a steady stream never moves bytes around. */
#include <stdlib.h>
#include <string.h>

#include "buffer.h"

char buf_none[1];

void
buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->off = b->len = b->cap = 0;
}

char *
buf_reserve(struct buf *b, size_t n)
{
	if (b->len == 0)
		b->off = 0;
	if (b->off + b->len + n <= b->cap)
		return buf_tail(b);
	/* Slide the live bytes down when that makes enough room and the move
	 * is cheap compared with what was consumed. */
	if (b->off > 0 && b->len + n <= b->cap && b->len <= b->off) {
		memmove(b->data, b->data + b->off, b->len);
		b->off = 0;
		return buf_tail(b);
	}
	size_t need = b->len + n, cap = b->cap ? b->cap : 512;
	while (cap < need)
		cap *= 2;
	if (b->off > 0) {
		char *p = malloc(cap);
		if (p == NULL)
			return NULL;
		memcpy(p, b->data + b->off, b->len);
		free(b->data);
		b->data = p;
		b->off = 0;
	} else {
		char *p = realloc(b->data, cap);
		if (p == NULL)
			return NULL;
		b->data = p;
	}
	b->cap = cap;
	return buf_tail(b);
}

void
buf_compact(struct buf *b)
{
	if (b->len == 0) {
		buf_free(b);
		return;
	}
	if (b->off > 0) {
		memmove(b->data, b->data + b->off, b->len);
		b->off = 0;
	}
	if (b->cap > b->len) {
		char *p = realloc(b->data, b->len);
		if (p != NULL) {
			b->data = p;
			b->cap = b->len;
		}
	}
}

int
buf_presize(struct buf *b, size_t n)
{
	if (b->cap >= n)
		return 0;
	if (b->len != 0)
		return buf_reserve(b, n - b->len) ? 0 : -1;
	char *p = realloc(b->data, n);
	if (p == NULL)
		return -1;
	b->data = p;
	b->cap = n;
	b->off = 0;
	return 0;
}

int
buf_append(struct buf *b, const void *p, size_t n)
{
	if (n == 0)
		return 0;
	char *t = buf_reserve(b, n);
	if (t == NULL)
		return -1;
	memcpy(t, p, n);
	b->len += n;
	return 0;
}

void
buf_consume(struct buf *b, size_t n)
{
	if (n >= b->len) {
		b->off = b->len = 0;
		return;
	}
	b->off += n;
	b->len -= n;
}

void
buf_shrink(struct buf *b, size_t keep)
{
	if (b->len == 0 && b->cap > keep) {
		free(b->data);
		b->data = NULL;
		b->off = b->cap = 0;
	}
}
