/* Parts of common/tls that do not depend on the TLS library: both backends (tls_mbed_*.c
 * for mbedTLS, tls_openssl_*.c for OpenSSL) use them; the ClientHello sniffing of tls.h is
 * in tls_sniff.c, host name matching in certname.h. Not for use outside common/tls*.c. */
#ifndef COMMON_TLS_SHARED_H
#define COMMON_TLS_SHARED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/util.h"

/* Largest ciphertext a connection accepts ahead of the handshake/decryption: a few full
 * records (tls_conn_feed's -ENOSPC). */
#define TLS_IN_CAP (4 * (16384 + 2048))
/* Tickets are valid this long; a new random ticket key every period, each kept two. */
#define TLS_TICKET_LIFETIME_S (12 * 3600)
#define TLS_CACHE_DEFAULT 4096
#define TLS_CACHE_TIMEOUT_S (12 * 3600)
#define TLS_ERR_LEN 256

/* What the API tells of the peer certificate: one allocation, strings after the array. */
struct tls_peer {
    const char *cn; /* NULL if none */
    const char *subject;
    char fingerprint[3 * 32];
    size_t nsans;
    const char *sans[]; /* nsans DNS names, then NULL */
};

/* What a connection holds in either backend: its records on byte queues, what the
 * handshake found, its error. Each backend's struct tls_conn has it as member b, and says
 * where (tls_conn_base); the accessors of tls.h that read only these are tls_shared.c's. */
struct tls_conn_base {
    struct byteq in;    /* ciphertext fed, not yet taken by the library */
    struct byteq out;   /* ciphertext produced, not yet taken by the caller */
    struct byteq early; /* plaintext written before the handshake finished */
    bool done;          /* handshake finished */
    bool resumed;
    bool failed;
    bool verified;
    char *sni;             /* server: the name the client asked for */
    struct tls_peer *peer; /* names of the peer certificate, copied at handshake end */
    char *vinfo;           /* issuer and subject of the peer certificate during the handshake */
    char *err;             /* allocated on the first failure: most connections never have one */
};
struct tls_conn;
/* c's base, NULL for NULL (each backend's one line; like strchr, const in, not out). */
struct tls_conn_base *tls_conn_base(const struct tls_conn *c);
/* The connection's error in words (b->err allocated on first use; without memory
 * tls_conn_error says "out of memory"). */
void tls_conn_set_err(struct tls_conn_base *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* snprintf into err (when err and cap are set). */
void tls_errf(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* RFC 8446 6 alert names ("handshake_failure"), "unknown alert" otherwise. */
const char *tls_alert_name(unsigned alert);
/* Reads a whole file (up to 16 MiB) NUL-terminated; *len counts the NUL. On failure (a
 * negative errno, never 0) *out is NULL and *len 0. */
int tls_read_file(const char *path, unsigned char **out, size_t *len, char *err, size_t cap);
/* What a certificate (and, with key, whether the key matches it) says, on buffers (PEM with
 * the NUL counted, or DER): each backend's one implementation (tls_*_pki.c), behind
 * pki_chain_inspect and tls_cert_inspect. crt_what and key_what name them in err. */
struct pki_cert_info;
int tls_backend_inspect(const unsigned char *crt, size_t crt_len, const char *crt_what,
                        const unsigned char *key, size_t key_len, const char *key_what,
                        struct pki_cert_info *info, char *err, size_t cap);
/* "AB:CD:..." of a 32-byte hash into out (96 bytes). */
void tls_hex_fingerprint(const uint8_t h[32], char *out);
/* Checks a self_signed_name: a plain host name or IP literal. */
int tls_check_self_signed_name(const char *name, char *err, size_t cap);
/* Checks the names a certificate or request is to carry: 1 <= n <= max, each a host name
 * (labels of 1 to 63 letters, digits, '-', '_'; "*" as the whole first label) or an IP
 * literal, at most 253 bytes. */
int tls_check_cert_names(const char *const *names, size_t n, size_t max, char *err, size_t cap);
/* The subject CN for a request or certificate of names (checked: tls_check_cert_names):
 * the first name that fits X.520's 64 bytes; when none does, NULL for a request (no CN: CAs
 * want a CN that is one of the names, if any) or, with label (64 bytes) for a certificate,
 * which needs a subject, the first label of names[0] copied there. */
const char *tls_cert_cn(const char *const *names, size_t n, char *label);
/* The names of a peer certificate say name (DNS SANs, the CN only when there is none;
 * RFC 6125 wildcards in the first label: cert_names_match). */
bool tls_peer_has_name(const struct tls_peer *p, const char *name);

/* ClientHello extensions (tls_sniff.c). The host name of a server_name extension body
 * (RFC 6066 3), as tls_peek_sni returns it. */
ssize_t tls_sni_ext_name(const uint8_t *ext, size_t len, char *name, size_t cap);
/* An ALPN extension body (protocol_name_list): the number of names, or -EBADMSG. */
int tls_alpn_list_check(const uint8_t *ext, size_t len);
/* Does that list offer proto and nothing else (RFC 8737 3: an ACME server's hello)? */
bool tls_alpn_only(const uint8_t *ext, size_t len, const char *proto);

#endif
