/* fuzz.h: what every libFuzzer target in tests/fuzz/ shares: an invariant
 * check that aborts with a message, and a tiny PRNG for slicing input. */
#ifndef FUZZ_H
#define FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* An invariant failure is a finding: abort so libFuzzer saves the input. */
#define FUZZ_CHECK(cond) do {						\
	if (!(cond)) {							\
		fprintf(stderr, "%s:%d: invariant failed: %s\n",	\
		    __FILE__, __LINE__, #cond);				\
		abort();						\
	}								\
} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* xorshift32, seeded from the input, so one input is one slicing: crashes
 * replay exactly, and the fuzzer mutates the slicing by mutating the seed. */
static inline uint32_t
fuzz_rand(uint32_t *s)
{
	uint32_t x = *s ? *s : 0x9e3779b9u;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return *s = x;
}

/* A slice length in 1..max, biased to small slices (1 and 2 octets are the
 * boundaries parsers get wrong). */
static inline size_t
fuzz_slice(uint32_t *s, size_t max)
{
	uint32_t r = fuzz_rand(s);
	size_t n;

	if (max == 0)
		return 0;
	switch (r & 3) {
	case 0:  n = 1; break;
	case 1:  n = 1 + (r >> 8) % 4; break;
	case 2:  n = 1 + (r >> 8) % 64; break;
	default: n = max; break;
	}
	return n > max ? max : n;
}

#endif
