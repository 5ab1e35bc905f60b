/* Crypto primitives the tokens need (HMAC, base64, randomness, constant-time compare).
 * Together with tls.c this is the only place that sees the TLS library's headers. */
#ifndef COMMON_CRYPTO_H
#define COMMON_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SHA1_LEN 20
#define SHA256_LEN 32
#define MD5_LEN 16

void crypto_hmac_sha1(const void *key, size_t klen, const void *msg, size_t mlen,
                      uint8_t out[SHA1_LEN]);
void crypto_hmac_sha256(const void *key, size_t klen, const void *msg, size_t mlen,
                        uint8_t out[SHA256_LEN]);
void crypto_md5(const void *msg, size_t len, uint8_t out[MD5_LEN]);
void crypto_sha256(const void *msg, size_t len, uint8_t out[SHA256_LEN]);
/* SHA-1: only where a protocol still asks for it (WebSocket's Sec-WebSocket-Accept). */
void crypto_sha1(const void *msg, size_t len, uint8_t out[SHA1_LEN]);
/* CRC-32 (ISO-HDLC), as STUN FINGERPRINT uses. */
uint32_t crypto_crc32(const void *msg, size_t len);
/* Fills out with cryptographically strong random bytes; 0 or -EIO. */
int crypto_random(void *out, size_t len);
/* Constant-time equality of two equal-length byte strings. */
bool crypto_ct_eq(const void *a, const void *b, size_t len);

/* Standard base64 with padding. Encode writes a NUL; returns length or -ENOSPC. */
ssize_t base64_encode(const void *in, size_t len, char *out, size_t cap);
ssize_t base64_decode(const char *in, size_t len, uint8_t *out, size_t cap);
/* base64url without padding (tokens). */
ssize_t base64url_encode(const void *in, size_t len, char *out, size_t cap);
ssize_t base64url_decode(const char *in, size_t len, uint8_t *out, size_t cap);
/* Lower-case hex; writes a NUL. */
void hex_encode(const void *in, size_t len, char *out);

#endif
