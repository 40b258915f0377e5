/* base64.h: strict RFC 4648 base64 for SASL (RFC 5034), no I/O.
 * Hand-written (40 lines) because OpenSSL's EVP_DecodeBlock hides padding. */
#ifndef BASE64_H
#define BASE64_H

#include <stddef.h>
#include <sys/types.h>

/* Output size needed to encode len octets, NUL excluded. */
#define BASE64_ENCODED_LEN(len) ((((len) + 2) / 3) * 4)

/* Encode; out must hold BASE64_ENCODED_LEN(len) + 1. Returns the length. */
size_t base64_encode(const unsigned char *in, size_t len, char *out);

/*
 * Decode strictly: alphabet A-Z a-z 0-9 + /, '=' padding required to a
 * multiple of 4, no white space, non-zero unused bits rejected.
 * Returns the decoded length, or -1 on bad input or if outcap is too small.
 */
ssize_t base64_decode(const char *in, size_t len, unsigned char *out,
    size_t outcap);

#endif
