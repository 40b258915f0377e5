/* base64.c: strict RFC 4648 base64 (standard alphabet, '=' padding) for the
 * SASL exchanges; refuses anything a careful peer would not send. */
#include <limits.h>

#include "base64.h"

static const char b64_alpha[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t
base64_encode(const unsigned char *in, size_t len, char *out)
{
	size_t i, o = 0;

	for (i = 0; i + 2 < len; i += 3) {
		unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
		out[o++] = b64_alpha[v >> 18];
		out[o++] = b64_alpha[(v >> 12) & 63];
		out[o++] = b64_alpha[(v >> 6) & 63];
		out[o++] = b64_alpha[v & 63];
	}
	if (i < len) {
		unsigned v = (unsigned)in[i] << 16;
		if (i + 1 < len)
			v |= (unsigned)in[i + 1] << 8;
		out[o++] = b64_alpha[v >> 18];
		out[o++] = b64_alpha[(v >> 12) & 63];
		out[o++] = i + 1 < len ? b64_alpha[(v >> 6) & 63] : '=';
		out[o++] = '=';
	}
	out[o] = '\0';
	return o;
}

/* 0..63, or -1 for anything outside the alphabet (including '=' and NUL). */
static int
b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

ssize_t
base64_decode(const char *in, size_t len, unsigned char *out, size_t outcap)
{
	size_t i, o = 0, pad = 0, need;

	if (len % 4 != 0)
		return -1;
	if (len > 0 && in[len - 1] == '=')
		pad = in[len - 2] == '=' ? 2 : 1;
	need = len / 4 * 3 - pad;
	if (need > outcap || need > (size_t)SSIZE_MAX)
		return -1;

	for (i = 0; i < len; i += 4) {
		int last = i + 4 == len, q[4], k;
		unsigned v;

		/* '=' may only appear in the last quantum's final pad positions. */
		for (k = 0; k < 4; k++) {
			q[k] = b64_value((unsigned char)in[i + k]);
			if (q[k] < 0 && !(last && k >= 4 - (int)pad))
				return -1;
		}
		v = (unsigned)q[0] << 18 | (unsigned)q[1] << 12;
		if (last && pad == 2) {
			if (q[1] & 0x0f)	/* unused bits must be zero */
				return -1;
			out[o++] = v >> 16;
			break;
		}
		v |= (unsigned)q[2] << 6;
		if (last && pad == 1) {
			if (q[2] & 0x03)
				return -1;
			out[o++] = v >> 16;
			out[o++] = (v >> 8) & 0xff;
			break;
		}
		v |= (unsigned)q[3];
		out[o++] = v >> 16;
		out[o++] = (v >> 8) & 0xff;
		out[o++] = v & 0xff;
	}
	return (ssize_t)o;
}
