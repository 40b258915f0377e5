/* fuzz_edit.c: libFuzzer target for header edits (protocol/fp_edit.c): edits
 * decoded from a verdict frame, or built from raw octets, on a fuzzed message. */
#include <string.h>
#include <strings.h>

#include "fp.h"
#include "fuzz.h"

#define MAX_FIELDS	256

struct name {
	const char	*p;
	size_t		 len;
	int		 dead;
};

/*
 * Reference reading of a header block, written from RFC 5322 and the rules
 * in fp_edit.c's comments: fields are "name[WSP]:" lines with WSP-led
 * continuation lines; the block ends at an empty line, at a line that is
 * neither, or at the end. Returns the number of field names found.
 */
static size_t
ref_fields(const char *m, size_t len, struct name *out)
{
	size_t pos = 0, n = 0;

	while (pos < len) {
		const char *lf = memchr(m + pos, '\n', len - pos);
		size_t next = lf ? (size_t)(lf - m) + 1 : len, cl = next - pos, k;

		if (lf && --cl > 0 && m[pos + cl - 1] == '\r')
			cl--;
		if (cl == 0)
			break;
		if (m[pos] == ' ' || m[pos] == '\t') {
			if (n == 0)
				break;
			pos = next;
			continue;
		}
		for (k = pos; k < pos + cl && m[k] >= 33 && m[k] <= 126 && m[k] != ':'; k++)
			;
		size_t nend = k;
		while (k < pos + cl && (m[k] == ' ' || m[k] == '\t'))
			k++;
		if (nend == pos || k == pos + cl || m[k] != ':')
			break;
		if (n == MAX_FIELDS)
			return n;
		out[n++] = (struct name){ m + pos, nend - pos, 0 };
		pos = next;
	}
	return n;
}

static int
name_eq(const struct name *a, struct fp_str b)
{
	return !a->dead && a->len == b.len && strncasecmp(a->p, b.ptr, b.len) == 0;
}

/* What the header's field names must be after the edits. */
static size_t
model_apply(struct name *f, size_t n, const struct fp_edit *e, size_t ne)
{
	for (size_t i = 0; i < ne && n < MAX_FIELDS; i++) {
		size_t seen = 0, j;

		if (e[i].op == FP_EDIT_ADD) {
			f[n++] = (struct name){ e[i].name.ptr, e[i].name.len, 0 };
			continue;
		}
		for (j = 0; j < n; j++) {
			if (!name_eq(&f[j], e[i].name))
				continue;
			seen++;
			if (e[i].op == FP_EDIT_DELETE) {
				if (e[i].index == 0 || e[i].index == seen)
					f[j].dead = 1;
				if (e[i].index != 0 && e[i].index == seen)
					break;
			} else if (seen == e[i].index)
				break;	/* changed in place, spelling kept */
		}
		if (e[i].op == FP_EDIT_CHANGE && j == n)
			f[n++] = (struct name){ e[i].name.ptr, e[i].name.len, 0 };
	}
	return n;
}

/* Raw edits: op, index, name length, name, value length (2), value. */
static size_t
raw_edits(const uint8_t *p, size_t len, struct fp_edit *e, size_t max)
{
	size_t n = 0, pos = 0;

	while (n < max && pos + 3 <= len) {
		struct fp_edit *x = &e[n++];
		size_t nl, vl;

		memset(x, 0, sizeof(*x));	/* nothing from the last input */
		x->op = (enum fp_edit_op)(1 + p[pos] % 3);
		x->index = p[pos + 1] % 5;
		nl = p[pos + 2] % 40;
		pos += 3;
		if (nl > len - pos)
			nl = len - pos;
		x->name = (struct fp_str){ (const char *)p + pos, nl };
		pos += nl;
		if (pos + 2 > len)
			break;
		vl = (size_t)p[pos] << 8 | p[pos + 1];
		pos += 2;
		if (vl > len - pos)
			vl = len - pos;
		x->value = (struct fp_str){ (const char *)p + pos, vl };
		pos += vl;
	}
	return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct fp_edit raw[16];
	static struct name before[MAX_FIELDS * 2], after[MAX_FIELDS * 2];
	const struct fp_edit *edits = NULL;
	struct fp_reader r;
	struct fp_msg m;
	struct fp_buf out = { 0 };
	size_t ne = 0, mlen, valid = 1;
	const char *msg;
	int rc, framed;

	if (size < 3)
		return 0;
	framed = data[0] & 1;
	mlen = ((size_t)data[1] << 8 | data[2]);
	data += 3, size -= 3;
	if (mlen > size)
		mlen = size;
	/* Own copy: ASan sees any read past the message's end. */
	char *copy = malloc(mlen ? mlen : 1);
	memcpy(copy, data, mlen);
	msg = copy;

	fp_reader_init(&r, FP_DEFAULT_MAX_FRAME, FP_ROLE_PROXY);
	if (framed) {
		/* The first verdict of the frames that follow the message. */
		FUZZ_CHECK(fp_reader_feed(&r, data + mlen, size - mlen) == 0);
		while ((rc = fp_reader_next(&r, &m, NULL)) != 0) {
			if (rc == 1 && m.type == FP_MSG_VERDICT) {
				edits = m.verdict.edits;
				ne = m.verdict.nedits;
				break;
			}
			if (rc == -1 && fp_reader_next(&r, &m, NULL) == -1)
				break;
		}
		if (edits == NULL)
			goto done;
	} else {
		ne = raw_edits(data + mlen, size - mlen, raw, 16);
		edits = raw;
	}
	for (size_t i = 0; i < ne; i++)
		if (fp_edit_invalid(&edits[i]) != NULL)
			valid = 0;
	if (framed)
		FUZZ_CHECK(valid);	/* the decoder checked them */

	FUZZ_CHECK(fp_buf_append(&out, "PFX", 3) == 0);
	rc = fp_apply_edits(msg, mlen, edits, ne, &out);
	if (!valid) {
		/* Refused whole, and out is as it was. */
		FUZZ_CHECK(rc == -1 && out.len == 3 && memcmp(out.data, "PFX", 3) == 0);
		goto done;
	}
	FUZZ_CHECK(rc == 0 && out.len >= 3 && memcmp(out.data, "PFX", 3) == 0);
	const char *o = out.data + 3;
	size_t olen = out.len - 3;

	if (ne == 0)
		FUZZ_CHECK(olen == mlen && memcmp(o, msg, mlen) == 0);

	/* Everything from the first empty line on is body: untouched. */
	for (size_t q = 0; q < mlen; q++) {
		if ((q == 0 || msg[q - 1] == '\n') && (msg[q] == '\n' ||
		    (msg[q] == '\r' && q + 1 < mlen && msg[q + 1] == '\n'))) {
			FUZZ_CHECK(olen >= mlen - q);
			FUZZ_CHECK(memcmp(o + olen - (mlen - q), msg + q, mlen - q) == 0);
			break;
		}
	}

	/* The header's field names are what the edits say, no more: a value
	 * can never smuggle in a field, and no body line becomes one. */
	size_t nb = ref_fields(msg, mlen, before);
#ifdef FUZZ_SKIP_F1
	/* Finding F1 (docs/FUZZING.md), open: a first line led by WSP. Long
	 * runs may be built with this to search past it. */
	if (mlen > 0 && (msg[0] == ' ' || msg[0] == '\t'))
		nb = MAX_FIELDS;
#endif
	if (nb < MAX_FIELDS) {
		nb = model_apply(before, nb, edits, ne);
		size_t na = ref_fields(o, olen, after), k = 0;
		if (nb < MAX_FIELDS && na < MAX_FIELDS) {
			for (size_t i = 0; i < nb; i++) {
				if (before[i].dead)
					continue;
				FUZZ_CHECK(k < na);
				FUZZ_CHECK(after[k].len == before[i].len &&
				    memcmp(after[k].p, before[i].p, before[i].len) == 0);
				k++;
			}
			FUZZ_CHECK(k == na);
		}
	}
done:
	fp_buf_free(&out);
	fp_reader_free(&r);
	free(copy);
	return 0;
}
