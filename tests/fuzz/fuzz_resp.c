/* fuzz_resp.c: libFuzzer target for the server reply parser of daemon/pop3.c
 * (status lines, multi-line bodies, dot-stuffing), fed in random slices. */
#include <string.h>

#include "fuzz.h"
#include "pop3.h"

struct out {
	char	*p;
	size_t	 len;
};

static void
out_add(struct out *o, const char *p, size_t len)
{
	if (len == 0)
		return;
	o->p = realloc(o->p, o->len + len);
	FUZZ_CHECK(o->p != NULL);
	memcpy(o->p + o->len, p, len);
	o->len += len;
}

/* A terminator line at p, given that p is at the beginning of a line. */
static int
is_term(const char *p, size_t len)
{
	return (len >= 2 && p[0] == '.' && p[1] == '\n') ||
	    (len >= 3 && p[0] == '.' && p[1] == '\r' && p[2] == '\n');
}

/*
 * Reference unstuffing of a whole raw body, written independently of the
 * incremental parser: line by line, a line that starts with '.' is either
 * the terminator or loses that dot. Returns the body's unstuffed octets and
 * sets *term if a terminator was found (it must then be the last line).
 */
static void
unstuff_ref(const char *raw, size_t len, struct out *o, int *term)
{
	size_t pos = 0;

	*term = 0;
	while (pos < len) {
		const char *lf = memchr(raw + pos, '\n', len - pos);
		size_t next = lf ? (size_t)(lf - raw) + 1 : len;

		if (is_term(raw + pos, next - pos) && next - pos <= 3) {
			FUZZ_CHECK(next == len);	/* nothing after the end */
			*term = 1;
			return;
		}
		if (raw[pos] == '.')
			out_add(o, raw + pos + 1, next - pos - 1);
		else
			out_add(o, raw + pos, next - pos);
		pos = next;
	}
}

/* What retr.c does with a held body: stuff it again and terminate it. */
static void
restuff(const char *p, size_t len, struct out *o)
{
	size_t pos = 0;

	while (pos < len) {
		const char *lf = memchr(p + pos, '\n', len - pos);
		size_t next = lf ? (size_t)(lf - p) + 1 : len;

		if (p[pos] == '.')
			out_add(o, ".", 1);
		out_add(o, p + pos, next - pos);
		pos = next;
	}
	if (len > 0 && p[len - 1] != '\n')
		out_add(o, "\r\n", 2);
	out_add(o, ".\r\n", 3);
}

struct body {
	struct out raw, unstuffed;
	int ended;
};

/*
 * Runs the parser over buf delivered in slices. Every event's octets are
 * appended to *raw; each body's raw and unstuffed octets are kept in bodies.
 * Returns the number of octets consumed.
 */
static size_t
run(const char *buf, size_t size, unsigned multis, uint32_t seed,
    struct out *raw, struct body *bodies, size_t *nbodies, size_t maxbodies)
{
	struct resp_parser p;
	struct resp_event ev;
	size_t start = 0, avail = 0, nreply = 0;
	int bol = 1;
	struct body *b = NULL;

	resp_begin(&p, multis & 1);
	*nbodies = 0;
	for (;;) {
		size_t n = resp_parse(&p, buf + start, avail - start, &ev);

		FUZZ_CHECK(ev.p == buf + start);
		if (ev.kind == RESP_MORE || ev.kind == RESP_ERROR) {
			FUZZ_CHECK(n == 0);
			if (ev.kind == RESP_ERROR || avail == size)
				break;
			avail += fuzz_slice(&seed, size - avail);
			continue;
		}
		FUZZ_CHECK(n == ev.len && n > 0 && start + n <= avail);
		out_add(raw, ev.p, n);
		switch (ev.kind) {
		case RESP_STATUS:
		case RESP_CONT:
			FUZZ_CHECK(ev.p[n - 1] == '\n' && n <= POP3_STATUS_MAX);
			FUZZ_CHECK(memchr(ev.p, '\n', n - 1) == NULL);
			if (ev.kind == RESP_CONT)
				FUZZ_CHECK(ev.p[0] == '+' && ev.ok == 0);
			else if (ev.ok)
				FUZZ_CHECK(memcmp(ev.p, "+OK", 3) == 0);
			else
				FUZZ_CHECK(memcmp(ev.p, "-ERR", 4) == 0);
			if (ev.kind == RESP_STATUS && ev.ok && (multis & 1)) {
				FUZZ_CHECK(!resp_done(&p));
				FUZZ_CHECK(*nbodies < maxbodies);
				b = &bodies[(*nbodies)++];
				bol = 1;
			} else
				FUZZ_CHECK(resp_done(&p));
			break;
		case RESP_DATA:
			FUZZ_CHECK(b != NULL && !resp_done(&p));
			FUZZ_CHECK(!ev.stuffed || (bol && ev.p[0] == '.'));
			FUZZ_CHECK(ev.stuffed || !bol || ev.p[0] != '.');
			/* A relayed DATA run never holds a terminator line: the
			 * client would see the end early, and what follows
			 * would be read as replies (response injection). */
			for (size_t i = 0; i < n; i++) {
				if (bol && i > 0)
					FUZZ_CHECK(ev.p[i] != '.');
				if (bol && i == 0 && !ev.stuffed)
					FUZZ_CHECK(ev.p[0] != '.');
				bol = ev.p[i] == '\n';
			}
			if (ev.stuffed && n == 1)
				bol = 0;
			out_add(&b->raw, ev.p, n);
			out_add(&b->unstuffed, ev.p + ev.stuffed, n - (size_t)ev.stuffed);
			break;
		case RESP_END:
			FUZZ_CHECK(b != NULL && bol && is_term(ev.p, n) && n <= 3);
			FUZZ_CHECK(resp_done(&p));
			out_add(&b->raw, ev.p, n);
			b->ended = 1;
			b = NULL;
			break;
		default:
			FUZZ_CHECK(0);
		}
		start += n;
		if (resp_done(&p)) {
			/* Pipelined: the next reply follows at once. */
			if (++nreply >= 8)
				break;
			multis >>= 1;
			resp_begin(&p, multis & 1);
		}
	}
	return start;
}

static void
check_bodies(struct body *bodies, size_t nbodies)
{
	for (size_t i = 0; i < nbodies; i++) {
		struct body *b = &bodies[i];
		struct out ref = { 0 }, again = { 0 }, raw2 = { 0 };
		struct body b2[1] = { 0 };
		size_t nb2 = 0;
		int term;

		unstuff_ref(b->raw.p, b->raw.len, &ref, &term);
		FUZZ_CHECK(term == b->ended);
		FUZZ_CHECK(ref.len == b->unstuffed.len);
		FUZZ_CHECK(ref.len == 0 || memcmp(ref.p, b->unstuffed.p, ref.len) == 0);

		/* Held and served again: the client's parser must read back
		 * the same body, ending exactly at our terminator. */
		if (b->ended) {
			struct out s = { 0 };
			out_add(&s, "+OK\r\n", 5);
			restuff(b->unstuffed.p, b->unstuffed.len, &s);
			size_t used = run(s.p, s.len, 1, 1, &raw2, b2, &nb2, 1);
			FUZZ_CHECK(used == s.len && nb2 == 1 && b2[0].ended);
			unstuff_ref(b2[0].raw.p, b2[0].raw.len, &again, &term);
			size_t want = b->unstuffed.len;
			/* restuff() ends an unterminated last line with CRLF */
			if (want > 0 && b->unstuffed.p[want - 1] != '\n')
				FUZZ_CHECK(again.len == want + 2);
			else
				FUZZ_CHECK(again.len == want);
			FUZZ_CHECK(want == 0 || memcmp(again.p, b->unstuffed.p, want) == 0);
			free(s.p);
			free(b2[0].raw.p);
			free(b2[0].unstuffed.p);
			free(again.p);
			free(raw2.p);
		}
		free(ref.p);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct body bodies[8];
	struct out raw = { 0 };
	size_t nbodies, used;

	if (size < 2)
		return 0;
	memset(bodies, 0, sizeof(bodies));
	/* data[0]: which of up to 8 pipelined replies are multi-line;
	 * data[1]: the slicing. */
	used = run((const char *)data + 2, size - 2, data[0], data[1] + 1u,
	    &raw, bodies, &nbodies, 8);
	/* The relayed octets are exactly the consumed input, in order. */
	FUZZ_CHECK(raw.len == used);
	FUZZ_CHECK(used == 0 || memcmp(raw.p, data + 2, used) == 0);
	check_bodies(bodies, nbodies);

	/* The status line's octet count never overflows or misreads. */
	long long oc = pop3_status_octets((const char *)data + 2, size - 2);
	FUZZ_CHECK(oc >= -1);
	if (oc >= 0)
		FUZZ_CHECK(size - 2 >= 5 && memcmp(data + 2, "+OK ", 4) == 0);

	for (size_t i = 0; i < nbodies; i++) {
		free(bodies[i].raw.p);
		free(bodies[i].unstuffed.p);
	}
	free(raw.p);
	return 0;
}
