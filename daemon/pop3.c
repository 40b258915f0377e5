/* pop3.c: the POP3 grammar for both directions: the command table and line
 * splitter for clients, and the incremental reply parser for servers. */
#include <limits.h>
#include <string.h>
#include <strings.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "pop3.h"

enum { RP_STATUS, RP_BODY, RP_DONE };

/* The command table: keyword, id, and whether +OK is multi-line when the
 * command has no argument / has one (LIST and UIDL differ). */
static const struct cmd_def {
	const char *name;
	enum cmd_id id;
	unsigned char multi_noarg, multi_arg;
} cmd_table[] = {
	{ "USER", CMD_USER, 0, 0 },
	{ "PASS", CMD_PASS, 0, 0 },
	{ "APOP", CMD_APOP, 0, 0 },
	{ "AUTH", CMD_AUTH, 1, 0 },	/* bare AUTH lists mechanisms */
	{ "CAPA", CMD_CAPA, 1, 1 },
	{ "QUIT", CMD_QUIT, 0, 0 },
	{ "STLS", CMD_STLS, 0, 0 },
	{ "NOOP", CMD_NOOP, 0, 0 },
	{ "STAT", CMD_STAT, 0, 0 },
	{ "LIST", CMD_LIST, 1, 0 },
	{ "RETR", CMD_RETR, 1, 1 },
	{ "DELE", CMD_DELE, 0, 0 },
	{ "RSET", CMD_RSET, 0, 0 },
	{ "TOP",  CMD_TOP,  1, 1 },
	{ "UIDL", CMD_UIDL, 1, 0 },
	{ "SHUTDOWN", CMD_SHUTDOWN, 0, 0 },
};

long
pop3_line_len(const char *buf, size_t len, size_t max)
{
	size_t n = len < max ? len : max;
	const char *lf = memchr(buf, '\n', n);

	if (lf != NULL)
		return (long)(lf - buf) + 1;
	return len >= max ? -1 : 0;
}

int
pop3_cmd_parse(const char *line, size_t len, struct cmd *cmd)
{
	memset(cmd, 0, sizeof(*cmd));
	if (len == 0 || line[len - 1] != '\n')
		return -1;
	len--;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	/* NUL or a bare CR inside the line: refuse rather than guess. */
	if (memchr(line, '\0', len) != NULL || memchr(line, '\r', len) != NULL)
		return -1;

	size_t k = 0;
	while (k < len && line[k] != ' ')
		k++;
	if (k == 0)
		return -1;
	cmd->name = line;
	cmd->name_len = k;
	if (k < len) {
		cmd->args = line + k + 1;
		cmd->args_len = len - k - 1;
	} else {
		cmd->args = line + len;
		cmd->args_len = 0;
	}
	cmd->id = CMD_UNKNOWN;
	for (size_t i = 0; i < sizeof(cmd_table) / sizeof(cmd_table[0]); i++) {
		const struct cmd_def *d = &cmd_table[i];
		if (strlen(d->name) == k && strncasecmp(d->name, line, k) == 0) {
			cmd->id = d->id;
			cmd->multi = cmd->args_len ? d->multi_arg : d->multi_noarg;
			break;
		}
	}
	return 0;
}

long
pop3_count(const char *s, size_t len)
{
	long v = 0;

	if (len == 0 || len > 10)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v > INT_MAX ? -1 : v;
}

long
pop3_msgno(const char *s, size_t len)
{
	long v = pop3_count(s, len);

	return v < 1 ? -1 : v;
}

void
resp_begin(struct resp_parser *p, int multi)
{
	p->state = RP_STATUS;
	p->multi = multi;
	p->bol = 1;
}

static size_t
resp_status(struct resp_parser *p, const char *buf, size_t len,
    struct resp_event *ev)
{
	long n = pop3_line_len(buf, len, POP3_STATUS_MAX);

	if (n == 0) {
		ev->kind = RESP_MORE;
		return 0;
	}
	if (n < 0) {
		ev->kind = RESP_ERROR;
		return 0;
	}
	ev->p = buf;
	ev->len = (size_t)n;
	/* The keyword ends at a space, CR or LF. */
	char after3 = n > 3 ? buf[3] : '\n', after4 = n > 4 ? buf[4] : '\n';
	if (n >= 3 && memcmp(buf, "+OK", 3) == 0 &&
	    (after3 == ' ' || after3 == '\r' || after3 == '\n')) {
		ev->kind = RESP_STATUS;
		ev->ok = 1;
		p->state = p->multi ? RP_BODY : RP_DONE;
		p->bol = 1;
	} else if (n >= 4 && memcmp(buf, "-ERR", 4) == 0 &&
	    (after4 == ' ' || after4 == '\r' || after4 == '\n')) {
		ev->kind = RESP_STATUS;
		ev->ok = 0;
		p->state = RP_DONE;
	} else if (buf[0] == '+' &&
	    (n == 1 || buf[1] == ' ' || buf[1] == '\r' || buf[1] == '\n')) {
		ev->kind = RESP_CONT;
		p->state = RP_DONE;
	} else {
		ev->kind = RESP_ERROR;
		ev->len = 0;
		return 0;
	}
	return (size_t)n;
}

static size_t
resp_body(struct resp_parser *p, const char *buf, size_t len,
    struct resp_event *ev)
{
	size_t i = 0;

	ev->p = buf;
	ev->stuffed = 0;
	if (p->bol && buf[0] == '.') {
		size_t t = 0;
		if (len >= 2 && buf[1] == '\n')
			t = 2;	/* tolerate a bare-LF server */
		else if (len >= 3 && buf[1] == '\r' && buf[2] == '\n')
			t = 3;
		else if (len == 1 || (len == 2 && buf[1] == '\r')) {
			ev->kind = RESP_MORE;	/* terminator or stuffed line? */
			return 0;
		}
		if (t) {
			ev->kind = RESP_END;
			ev->len = t;
			p->state = RP_DONE;
			return t;
		}
		ev->stuffed = 1;
		i = 1;
	}
	/* Stop right before the next line that starts with '.'. */
	size_t d = pop3_find_dot_line(buf, len, i);
	if (d < len) {
		p->bol = 1;
		i = d;
	} else {
		p->bol = buf[len - 1] == '\n';
		i = len;
	}
	ev->kind = RESP_DATA;
	ev->len = i;
	return i;
}

size_t
pop3_find_dot_line(const char *buf, size_t len, size_t i)
{
#if defined(__SSE2__)
	/* Compare 16 octets with '\n' and the 16 after them with '.': a
	 * set bit in both masks is a line that starts with a dot. */
	const __m128i lf = _mm_set1_epi8('\n'), dot = _mm_set1_epi8('.');
	while (i + 17 <= len) {
		__m128i a = _mm_loadu_si128((const __m128i *)(const void *)(buf + i));
		__m128i b = _mm_loadu_si128((const __m128i *)(const void *)(buf + i + 1));
		int m = _mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8(a, lf),
		    _mm_cmpeq_epi8(b, dot)));
		if (m != 0)
			return i + (size_t)__builtin_ctz((unsigned)m) + 1;
		i += 16;
	}
	for (; i + 1 < len; i++)
		if (buf[i] == '\n' && buf[i + 1] == '.')
			return i + 1;
	return len;
#else
	for (;;) {
		const char *lf = memchr(buf + i, '\n', len - i);
		if (lf == NULL || (size_t)(lf - buf) + 1 >= len)
			return len;
		i = (size_t)(lf - buf) + 1;
		if (buf[i] == '.')
			return i;
	}
#endif
}

size_t
resp_parse(struct resp_parser *p, const char *buf, size_t len,
    struct resp_event *ev)
{
	ev->kind = RESP_MORE;
	ev->p = buf;
	ev->len = 0;
	ev->ok = 0;
	ev->stuffed = 0;
	switch (p->state) {
	case RP_STATUS:
		return resp_status(p, buf, len, ev);
	case RP_BODY:
		if (len == 0)
			return 0;
		return resp_body(p, buf, len, ev);
	default:
		return 0;
	}
}

long long
pop3_status_octets(const char *line, size_t len)
{
	size_t i;
	long long v = 0;

	if (len < 5 || memcmp(line, "+OK ", 4) != 0)
		return -1;
	i = 4;
	if (i >= len || line[i] < '0' || line[i] > '9')
		return -1;
	while (i < len && line[i] >= '0' && line[i] <= '9') {
		if (v > (LLONG_MAX - 9) / 10)
			return -1;
		v = v * 10 + (line[i++] - '0');
	}
	return v;
}
