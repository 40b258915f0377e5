/* test_base64.c: strict base64 against the RFC 4648 vectors, round trips of
 * every byte value, and the malformed inputs a hostile SASL peer can send. */
#include <stdlib.h>

#include "base64.h"
#include "unit.h"

static void
check_pair(const char *plain, size_t plen, const char *enc)
{
	char out[256];
	unsigned char dec[256];
	size_t n = base64_encode((const unsigned char *)plain, plen, out);
	ssize_t d;

	CHECK_INT(n, strlen(enc));
	CHECK_INT(n, BASE64_ENCODED_LEN(plen));
	CHECK_STR(out, enc);
	d = base64_decode(enc, strlen(enc), dec, sizeof(dec));
	CHECK_INT(d, plen);
	if (d >= 0)
		CHECK_MEM(dec, (size_t)d, plain, plen);
}

static void
test_rfc4648_vectors(void)
{
	check_pair("", 0, "");
	check_pair("f", 1, "Zg==");
	check_pair("fo", 2, "Zm8=");
	check_pair("foo", 3, "Zm9v");
	check_pair("foob", 4, "Zm9vYg==");
	check_pair("fooba", 5, "Zm9vYmE=");
	check_pair("foobar", 6, "Zm9vYmFy");
	/* A SASL PLAIN response: NUL bytes travel inside the length. */
	check_pair("\0tim\0tanstaaftanstaaf", 21, "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
	check_pair("\xff\xfe\xfd", 3, "//79");
	check_pair("\xfb\xff", 2, "+/8=");
}

static void
test_roundtrip_all_bytes(void)
{
	unsigned char in[256], dec[256];
	char enc[BASE64_ENCODED_LEN(256) + 1];
	size_t len, i;

	for (i = 0; i < sizeof(in); i++)
		in[i] = (unsigned char)(255 - i);
	for (len = 0; len <= sizeof(in); len++) {
		size_t n = base64_encode(in, len, enc);
		ssize_t d;

		CHECK_INT(n, BASE64_ENCODED_LEN(len));
		CHECK_INT(strlen(enc), n);
		d = base64_decode(enc, n, dec, len);	/* exact capacity is enough */
		CHECK_INT(d, len);
		if (d >= 0)
			CHECK_MEM(dec, (size_t)d, in, len);
		if (len > 0)	/* one octet short of room is refused */
			CHECK_INT(base64_decode(enc, n, dec, len - 1), -1);
	}
}

static void
test_reject_malformed(void)
{
	static const char *bad[] = {
		"Zg", "Zg=", "Zm9", "Zm9vY", "Z", "=", "==", "===", "====",
		"Zg==Zg==",	/* padding in the middle */
		"Z===", "Zm=v", "=Zm9", "Zm9v====",
		"Zh==",		/* non-zero unused bits */
		"Zm9=",		/* non-zero unused bits */
		"Zm9v\n", "Zm9v\r\n", " Zm9v", "Zm 9v", "Zm9\tv",
		"Zm9-", "Zm9_", "Zm9.", "Zm9v%n%s", "%s%s%s%n",
		"\xc3\xa9Zm9", "Zm\x80v",
	};
	unsigned char out[64];
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ssize_t d = base64_decode(bad[i], strlen(bad[i]), out, sizeof(out));
		if (d != -1)
			fprintf(stderr, "accepted bad input #%zu\n", i);
		CHECK_INT(d, -1);
	}
	/* A NUL byte inside the length is not part of the alphabet. */
	CHECK_INT(base64_decode("Zm\0v", 4, out, sizeof(out)), -1);
	CHECK_INT(base64_decode("Zg=\0", 4, out, sizeof(out)), -1);
	CHECK_INT(base64_decode("\0\0\0\0", 4, out, sizeof(out)), -1);
	/* Zero-length input decodes to nothing, even into no room. */
	CHECK_INT(base64_decode("", 0, out, 0), 0);
	CHECK_INT(base64_decode("Zg==", 4, out, 0), -1);
	CHECK_INT(base64_decode("Zg==", 4, out, 1), 1);
}

static void
test_large_input(void)
{
	/* 8 KiB of AUTH data, the most a client line may carry. */
	size_t len = 6000, i;
	unsigned char *in = malloc(len), *dec = malloc(len);
	char *enc = malloc(BASE64_ENCODED_LEN(len) + 1);
	size_t n;

	if (!in || !dec || !enc) {
		CHECK(0);
		goto done;
	}
	for (i = 0; i < len; i++)
		in[i] = (unsigned char)(i * 7 + 3);
	n = base64_encode(in, len, enc);
	CHECK_INT(n, 8000);
	CHECK_INT(base64_decode(enc, n, dec, len), len);
	CHECK_MEM(dec, len, in, len);
	enc[4000] = '*';
	CHECK_INT(base64_decode(enc, n, dec, len), -1);
done:
	free(in);
	free(dec);
	free(enc);
}

int
main(void)
{
	RUN(test_rfc4648_vectors);
	RUN(test_roundtrip_all_bytes);
	RUN(test_reject_malformed);
	RUN(test_large_input);
	return UNIT_DONE();
}
