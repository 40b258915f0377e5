/* fuzz_cmd.c: libFuzzer target for the client side of daemon/pop3.c (line
 * splitting, command parsing, message numbers) and daemon/base64.c (AUTH). */
#include <ctype.h>
#include <limits.h>
#include <string.h>
#include <strings.h>

#include "base64.h"
#include "fuzz.h"
#include "pop3.h"

/* Reference for pop3_msgno: 1..INT_MAX, ASCII digits only, at most 10. */
static long
msgno_ref(const char *s, size_t len)
{
	unsigned long long v = 0;

	if (len == 0 || len > 10)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	return v >= 1 && v <= INT_MAX ? (long)v : -1;
}

static void
check_base64(const char *s, size_t len)
{
	unsigned char out[POP3_AUTH_MAX];
	char back[BASE64_ENCODED_LEN(POP3_AUTH_MAX) + 1];
	ssize_t n = base64_decode(s, len, out, sizeof(out));

	if (n < 0)
		return;
	/* Strict decoding accepts one spelling per octet string: the one the
	 * encoder writes. Anything else slipped past the checks. */
	FUZZ_CHECK((size_t)n <= len / 4 * 3);
	FUZZ_CHECK(base64_encode(out, (size_t)n, back) == len);
	FUZZ_CHECK(memcmp(back, s, len) == 0);
	/* Too small a buffer is refused, never overrun (ASan watches). */
	if (n > 0) {
		unsigned char *tight = malloc((size_t)n - 1 + 1);
		FUZZ_CHECK(base64_decode(s, len, tight, (size_t)n - 1) == -1);
		free(tight);
	}
}

static void
check_line(const char *line, size_t len)
{
	struct cmd c;
	size_t body = len - 1;

	if (body > 0 && line[body - 1] == '\r')
		body--;
	if (pop3_cmd_parse(line, len, &c) == -1) {
		/* Refused only for a NUL, a bare CR or no keyword. */
		FUZZ_CHECK(memchr(line, '\0', body) != NULL ||
		    memchr(line, '\r', body) != NULL || body == 0 ||
		    line[0] == ' ');
		return;
	}
	FUZZ_CHECK(memchr(line, '\0', body) == NULL);
	FUZZ_CHECK(memchr(line, '\r', body) == NULL);
	FUZZ_CHECK(c.name == line && c.name_len > 0 && c.name_len <= body);
	FUZZ_CHECK(memchr(c.name, ' ', c.name_len) == NULL);
	FUZZ_CHECK(c.args >= line && c.args + c.args_len == line + body);
	if (c.name_len < body)
		FUZZ_CHECK(c.args == line + c.name_len + 1 && line[c.name_len] == ' ');
	else
		FUZZ_CHECK(c.args_len == 0);
	FUZZ_CHECK(c.multi == 0 || c.multi == 1);
	if (c.id == CMD_UNKNOWN)
		FUZZ_CHECK(c.multi == 0);
	else
		FUZZ_CHECK(c.name_len <= 8);
	if (c.id == CMD_RETR || c.id == CMD_TOP || c.id == CMD_CAPA)
		FUZZ_CHECK(c.multi == 1);
	if (c.id == CMD_LIST || c.id == CMD_UIDL)
		FUZZ_CHECK(c.multi == (c.args_len == 0));
	if (c.id == CMD_USER)
		FUZZ_CHECK(strncasecmp(c.name, "USER", 4) == 0);

	/* Every space-separated argument as a message number, against a
	 * reference; every argument and the whole line as base64. */
	size_t i = 0;
	while (i <= c.args_len) {
		size_t j = i;
		while (j < c.args_len && c.args[j] != ' ')
			j++;
		FUZZ_CHECK(pop3_msgno(c.args + i, j - i) ==
		    msgno_ref(c.args + i, j - i));
		check_base64(c.args + i, j - i);
		i = j + 1;
	}
	check_base64(line, body);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t max, pos = 0;
	uint32_t seed;

	if (size < 1)
		return 0;
	/* First octet: the line limit (command or SASL data line). */
	max = data[0] & 1 ? POP3_AUTH_MAX : POP3_CMD_MAX;
	if (data[0] & 2)
		max = 1 + data[0] % 32;	/* tiny limits find edge cases */
	seed = data[0];
	data++, size--;

	/* pop3_line_len over growing windows, like a session reading
	 * slices: the answer must never change once a line is complete. */
	while (pos < size) {
		const char *p = (const char *)data + pos;
		size_t avail = size - pos, w = 0;
		long n = 0;

		while (w < avail) {
			w += fuzz_slice(&seed, avail - w);
			n = pop3_line_len(p, w, max);
			if (n != 0)
				break;
			FUZZ_CHECK(w < max && memchr(p, '\n', w) == NULL);
		}
		if (n == 0)
			break;		/* unterminated tail */
		if (n < 0) {
			FUZZ_CHECK(w >= max && memchr(p, '\n', max) == NULL);
			/* The session refuses the line: skip past its LF. */
			const char *lf = memchr(p, '\n', avail);
			if (lf == NULL)
				break;
			pos += (size_t)(lf - p) + 1;
			continue;
		}
		FUZZ_CHECK((size_t)n <= w && (size_t)n <= max);
		FUZZ_CHECK(p[n - 1] == '\n' && memchr(p, '\n', (size_t)n - 1) == NULL);
		check_line(p, (size_t)n);
		pos += (size_t)n;
	}
	return 0;
}
