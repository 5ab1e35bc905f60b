/* JWS for ACME (RFC 8555 §6.2, RFC 7515 flattened JSON, RFC 7518 ES256, RFC 7638
 * thumbprints): the account's JWK, its thumbprint, key authorizations, protected headers
 * and signed request bodies. Pure: the signature comes from a callback (pki_es256_sign
 * in the Director, a stand-in in tests), no I/O. Strings are NUL-terminated; results that
 * do not fit are -ENOSPC; the malloc'd ones are freed by the caller. */
#ifndef DIRECTOR_ACME_JWS_H
#define DIRECTOR_ACME_JWS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* An EC P-256 JWK has 43-character coordinates; 128 bytes hold it. */
#define ACME_JWK_MAX 160
/* base64url of a SHA-256 digest: 43 characters. */
#define ACME_THUMB_LEN 43

/* The public JWK of a P-256 key in RFC 7638's canonical form (members crv, kty, x, y in
 * that order, no whitespace): exactly what its thumbprint hashes. */
int acme_jwk(const uint8_t x[32], const uint8_t y[32], char *out, size_t cap);
/* base64url(SHA-256(jwk)) of a canonical JWK (RFC 7638 §3): out holds ACME_THUMB_LEN + 1. */
int acme_jwk_thumbprint(const char *jwk, char out[ACME_THUMB_LEN + 1]);
/* token "." thumbprint (RFC 8555 §8.1); -EINVAL for a token outside base64url. */
int acme_key_authorization(const char *token, const char *thumbprint, char *out, size_t cap);

/* The protected header {"alg":"ES256", "jwk" or "kid", "nonce", "url"}: jwk (a JSON
 * object, for newAccount) or kid (the account URL) exactly one of them. malloc'd. */
char *acme_jws_protected(const char *jwk, const char *kid, const char *nonce, const char *url);

/* Signs data (ES256: r || s, 64 bytes); 0 or a negative errno. */
typedef int (*acme_sign_fn)(const void *data, size_t len, uint8_t sig[64], void *arg);

/* The flattened JWS JSON {"protected", "payload", "signature"} of protected_json and
 * payload (a JSON text, or "" for POST-as-GET: an empty payload), signed over
 * base64url(protected) "." base64url(payload). malloc'd into *out. */
int acme_jws_flattened(const char *protected_json, const char *payload, acme_sign_fn sign,
                       void *sign_arg, char **out);

#endif
