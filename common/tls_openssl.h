/* Internal to the OpenSSL 3 backend of common/tls.h (make TLS=openssl; the default build
 * uses common/tls_mbed_*.c): the types its files share. tls_openssl_cert.c loads and names
 * certificates, tls_openssl_pki.c makes keys, requests and certificates (pki.h),
 * tls_openssl_ctx.c builds contexts (and their callbacks), tls_openssl_conn.c runs
 * connections. TLS 1.3 and 1.2, TLS 1.3 0-RTT off, renegotiation off. The only files that
 * include OpenSSL headers; what does not depend on the library is in tls_shared.c and
 * tls_sniff.c. Not for use outside common/tls_openssl_*.c.
 *
 * Memory: SSL_MODE_RELEASE_BUFFERS gives the record buffers back whenever a connection has
 * nothing buffered, and a custom BIO writes straight into the conn's byte queues (no
 * memory BIOs), so an idle connection holds the SSL object, its session and the peer
 * certificate only (see make bench-tls). */
#ifndef COMMON_TLS_OPENSSL_H
#define COMMON_TLS_OPENSSL_H

#include "common/tls.h"
#include "common/tls_shared.h"
#include "common/util.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct acme_challenges;

struct tls_cert {
    X509 *crt;
    STACK_OF(X509) * chain; /* the rest of the PEM file: intermediates */
    EVP_PKEY *key;
    char **names; /* DNS SANs, or the CN if there is none: what SNI is matched against */
    size_t nnames;
};

struct ticket_key {
    unsigned char name[16], aes[32], hmac[32];
    time_t born; /* 0: empty slot */
};

struct tls_ctx {
    int refs; /* atomic */
    bool server;
    bool verify_peer;
    bool has_ca;
    SSL_CTX *ssl;
    struct tls_cert *certs;
    size_t ncerts;
    const char **alpn;            /* owned, NULL-terminated, strings in the same block */
    struct acme_challenges *acme; /* server: TLS-ALPN-01 answers (tls_opts.acme), or NULL */
    unsigned char *alpn_wire;
    size_t alpn_wire_len;
    char fingerprint[3 * 32];
    uint32_t handshake_timeout_ms;
    pthread_mutex_t lock;      /* ticket keys and the saved session */
    struct ticket_key keys[2]; /* [0] issues, [1] the previous one still decrypts */
    /* Client: the last session, offered again on reconnect to the same name. */
    SSL_SESSION *session;
    char session_name[256];
};

struct tls_conn {
    SSL *ssl;
    struct tls_ctx *ctx;
    struct tls_conn_base b;
    bool acme;       /* server: a hello offering just "acme-tls/1" (TLS-ALPN-01) */
    bool acme_found; /* ... and the store had its challenge certificate */
    char *name;      /* client: server_name as given (the saved session's key) */
    char cipher[64];
};

/* ---- tls_openssl_cert.c ---- */

/* The first OpenSSL error queued, as text, into out (the queue is cleared); returns out. */
const char *tls_ossl_str(char *out, size_t cap);
/* Subject or issuer as mbedTLS prints it ("CN=partner, O=Example"). */
void tls_ossl_dn_string(const X509_NAME *n, char *out, size_t cap);
/* SHA-256 fingerprint of x, hex with colons, into out (96 bytes). */
void tls_ossl_fingerprint(const X509 *x, char *out);
/* The names, subject and fingerprint of a peer certificate, in one allocation. */
struct tls_peer *tls_ossl_peer_names(const X509 *p);
/* Does tc name host name (RFC 6125 wildcards)? */
bool tls_ossl_cert_matches(const struct tls_cert *tc, const char *name, size_t len);
/* Fills tc->names from its certificate: DNS SANs, the CN only when there is none. */
int tls_ossl_cert_names(struct tls_cert *tc);
/* PEM callback that refuses encrypted keys. */
int tls_ossl_no_password(char *buf, int size, int rw, void *u);
/* The certificates of PEM text (NUL counted in n), up to the first that does not parse, or
 * one DER certificate, pushed on out; at least one or -EINVAL. what names the source in err
 * ("/etc/x.pem: not a valid ..."). */
int tls_ossl_parse_certs(const unsigned char *b, size_t n, const char *what, STACK_OF(X509) * out,
                         char *err, size_t cap);
/* An unencrypted private key, PEM (NUL counted in n) or DER. */
int tls_ossl_parse_key(const unsigned char *b, size_t n, const char *what, EVP_PKEY **out,
                       char *err, size_t cap);
/* The CA bundle (file or directory) into c's store. */
int tls_ossl_load_ca(struct tls_ctx *c, const char *path, char *err, size_t cap);
/* Certificate i of the options: chain, key (checked against each other), names. */
int tls_ossl_load_cert(struct tls_cert *tc, const struct tls_cert_opts *co, size_t i, char *err,
                       size_t cap);

/* ---- tls_openssl_pki.c (common/pki.h) ---- */

struct pki_cert_info;
/* An ECDSA P-256 key and a self-signed certificate for name (CN and SAN). */
int tls_ossl_make_self_signed(struct tls_cert *out, const char *name, char *err, size_t cap);
/* ---- tls_openssl_acme.c ---- */

/* ClientHello callback of a server ctx with a challenge store (arg: the ctx). */
int tls_ossl_acme_hello(SSL *ssl, int *alert, void *arg);

/* ---- tls_openssl_conn.c ---- */

/* The BIO on a conn's byte queues, made once; NULL if out of memory. */
BIO_METHOD *tls_ossl_bio_method(void);

#endif
