/* unit.h: the tiny harness every C unit test includes.
 * A test binary runs its TEST functions, prints one line per failed check and
 * a closing "unit: N passed, N failed" line that scripts/run-unit.sh adds up. */
#ifndef UNIT_H
#define UNIT_H

#include <stdio.h>
#include <string.h>

static int unit_checks_failed, unit_tests_run, unit_tests_failed, unit_cur_failed;

#define CHECK(cond) do { \
	if (!(cond)) { \
		unit_checks_failed++; unit_cur_failed = 1; \
		fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
	} \
} while (0)

#define CHECK_STR(a, b) do { \
	const char *unit_a_ = (a), *unit_b_ = (b); \
	if (unit_a_ == NULL || unit_b_ == NULL || strcmp(unit_a_, unit_b_) != 0) { \
		unit_checks_failed++; unit_cur_failed = 1; \
		fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, \
		    __LINE__, #a, unit_a_ ? unit_a_ : "(null)", unit_b_ ? unit_b_ : "(null)"); \
	} \
} while (0)

#define CHECK_INT(a, b) do { \
	long long unit_a_ = (long long)(a), unit_b_ = (long long)(b); \
	if (unit_a_ != unit_b_) { \
		unit_checks_failed++; unit_cur_failed = 1; \
		fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__, \
		    __LINE__, #a, unit_a_, unit_b_); \
	} \
} while (0)

#define CHECK_MEM(a, alen, b, blen) do { \
	size_t unit_al_ = (alen), unit_bl_ = (blen); \
	if (unit_al_ != unit_bl_ || memcmp((a), (b), unit_al_) != 0) { \
		unit_checks_failed++; unit_cur_failed = 1; \
		fprintf(stderr, "%s:%d: %s (%zu bytes) differs from %s (%zu bytes)\n", \
		    __FILE__, __LINE__, #a, unit_al_, #b, unit_bl_); \
	} \
} while (0)

#define RUN(fn) do { \
	unit_cur_failed = 0; unit_tests_run++; \
	fn(); \
	if (unit_cur_failed) { unit_tests_failed++; fprintf(stderr, "FAIL %s\n", #fn); } \
} while (0)

#define UNIT_DONE() ( \
	printf("unit %s: %d passed, %d failed\n", __FILE__, \
	    unit_tests_run - unit_tests_failed, unit_tests_failed), \
	unit_tests_failed ? 1 : 0)

#endif
