/* bench_corpus.h: the benchmark's mailbox, generated identically by the
 * in-memory server and the load generator, so every byte can be checked. */
#ifndef BENCH_CORPUS_H
#define BENCH_CORPUS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CORPUS_TOP_LINES 5	/* the benchmark always asks TOP n 5 */

/*
 * One message in its POP3 wire form: dot-stuffed, CRLF line ends, with the
 * ".\r\n" terminator at the end of `wire`. `top_len` is how many wire octets
 * "TOP n 5" returns before its terminator (the headers, the blank line and
 * five body lines). `octets` is the unstuffed size, as LIST reports it.
 */
struct corpus_msg {
	char *wire;
	size_t wire_len;	/* terminator included */
	size_t top_len;		/* terminator not included */
	size_t octets;
};

struct corpus {
	uint32_t count;
	size_t size;
	struct corpus_msg *m;	/* m[0] is message 1 */
};

static inline uint64_t
corpus_rand(uint64_t *s)
{
	/* xorshift64*: fast, and the same sequence in both programs. */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

/* The unstuffed text of message `no` (1-based), exactly `size` octets. */
static inline char *
corpus_text(uint32_t no, size_t size, uint32_t seed, size_t *hdr_len)
{
	static const char alpha[] =
	    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	    " .,;:-_=+/()<>'\"!?";
	uint64_t rs = ((uint64_t)seed << 32 | no) * 0x9E3779B97F4A7C15ULL | 1;
	char *t = malloc(size + 1);
	if (t == NULL)
		return NULL;
	int h = snprintf(t, size + 1,
	    "Return-Path: <bench@bench.test>\r\n"
	    "Message-ID: <%u.%u@bench.test>\r\n"
	    "From: Bench Sender <bench@bench.test>\r\n"
	    "To: Bench Reader <reader@bench.test>\r\n"
	    "Subject: benchmark message %u of size %zu\r\n"
	    "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
	    "MIME-Version: 1.0\r\n"
	    "Content-Type: text/plain; charset=us-ascii\r\n"
	    "\r\n", no, seed, no, size);
	if (h < 0 || (size_t)h >= size) {
		free(t);
		return NULL;
	}
	*hdr_len = (size_t)h;
	size_t cur = (size_t)h;
	while (cur < size) {
		size_t r = size - cur;	/* >= 3 by construction */
		uint64_t x = corpus_rand(&rs);
		size_t len = 10 + x % 67;
		if (len > r - 2)
			len = r - 2;
		size_t left = r - len - 2;
		if (left > 0 && left < 3)
			len += left;	/* never leave room for less than a line */
		for (size_t i = 0; i < len; i++)
			t[cur + i] = alpha[corpus_rand(&rs) % (sizeof(alpha) - 1)];
		/* One line in 16 starts with a dot: the stuffing path is
		 * exercised in every message. */
		if ((x >> 40) % 16 == 0)
			t[cur] = '.';
		cur += len;
		t[cur++] = '\r';
		t[cur++] = '\n';
	}
	return t;
}

/* Build `count` messages of `size` octets. Returns 0 or -1. */
static inline int
corpus_build(struct corpus *c, uint32_t count, size_t size, uint32_t seed)
{
	if (size < 512)
		size = 512;
	c->count = count;
	c->size = size;
	c->m = calloc(count, sizeof(*c->m));
	if (c->m == NULL)
		return -1;
	for (uint32_t i = 0; i < count; i++) {
		size_t hdr;
		char *t = corpus_text(i + 1, size, seed, &hdr);
		if (t == NULL)
			return -1;
		/* Worst case every line is stuffed: size/3 extra octets. */
		char *w = malloc(size + size / 3 + 8);
		if (w == NULL)
			return -1;
		size_t o = 0, lines = 0, top = 0;
		for (size_t p = 0; p < size;) {
			const char *lf = memchr(t + p, '\n', size - p);
			size_t n = (size_t)(lf - (t + p)) + 1;
			if (t[p] == '.')
				w[o++] = '.';
			memcpy(w + o, t + p, n);
			o += n;
			p += n;
			if (p > hdr && ++lines == CORPUS_TOP_LINES)
				top = o;
			else if (p == hdr)
				top = o;	/* the message may have no body */
		}
		if (lines < CORPUS_TOP_LINES)
			top = o;	/* TOP returns the whole of a short body */
		memcpy(w + o, ".\r\n", 3);
		c->m[i].wire = w;
		c->m[i].wire_len = o + 3;
		c->m[i].top_len = top;
		c->m[i].octets = size;
		free(t);
	}
	return 0;
}

#endif
