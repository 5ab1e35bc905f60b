/* The ACME challenges this daemon answers right now, set and cleared by the Director over
 * the control channel (common/acme_edge.c): HTTP-01 (RFC 8555 §8.3: token -> key
 * authorization, served by revproxy's port 80) and TLS-ALPN-01 (RFC 8737: name -> the
 * challenge certificate, served in the TLS handshake of a client offering only the ALPN
 * protocol "acme-tls/1"). One store per daemon, shared by every TLS context it builds
 * (tls_opts.acme); thread-safe, since av-edge's workers read it in handshakes. Entries
 * expire on their own (an order abandoned by the Director leaves nothing behind). */
#ifndef COMMON_ACME_CHALLENGES_H
#define COMMON_ACME_CHALLENGES_H

#include <stddef.h>
#include <stdint.h>

#define ACME_ALPN_PROTOCOL "acme-tls/1"

struct acme_challenges;
struct metric;

int acme_challenges_create(struct acme_challenges **out);
void acme_challenges_free(struct acme_challenges *s); /* NULL is a no-op */

/* HTTP-01. token: base64url, at most 128 bytes; key_authz at most 256. -EINVAL otherwise,
 * -ENOSPC past 64 entries. Replaces an entry with the same token. expires: unix seconds. */
int acme_challenges_set_http(struct acme_challenges *s, const char *token, const char *key_authz,
                             int64_t expires);
/* Copies the key authorization for token into out: its length, or -ENOENT (unknown or
 * expired), -ENOSPC if cap is too small. */
int acme_challenges_http(struct acme_challenges *s, const char *token, char *out, size_t cap);

/* TLS-ALPN-01: the challenge certificate and its key (PEM, copied) for a DNS name
 * (compared case-insensitively). */
int acme_challenges_set_alpn(struct acme_challenges *s, const char *name, const char *cert_pem,
                             const char *key_pem, int64_t expires);
/* malloc'd copies of the PEMs for name, or -ENOENT. */
int acme_challenges_alpn(struct acme_challenges *s, const char *name, char **cert_pem,
                         char **key_pem);

/* Counters acme_challenges_alpn increments (NULL: none): a challenge hello whose name has a
 * challenge, and one whose name has none. Set once, before any TLS context uses the store. */
void acme_challenges_count_alpn(struct acme_challenges *s, struct metric *served,
                                struct metric *unknown);

/* Removes the HTTP-01 entry with this token or the TLS-ALPN-01 entry with this name. */
void acme_challenges_remove(struct acme_challenges *s, const char *token_or_name);

#endif
