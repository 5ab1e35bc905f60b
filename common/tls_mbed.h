/* Internal to the mbedTLS backend of common/tls.h (the default build; make TLS=openssl
 * builds common/tls_openssl_*.c instead): the types its files share. tls_mbed_cert.c loads
 * and names certificates, tls_mbed_pki.c makes keys, requests and certificates (pki.h),
 * tls_mbed_ctx.c builds contexts, tls_mbed_conn.c runs connections. The only files that
 * include mbedTLS SSL headers; what does not depend on the library is in tls_shared.c and
 * tls_sniff.c. Not for use outside common/tls_mbed_*.c. */
#ifndef COMMON_TLS_MBED_H
#define COMMON_TLS_MBED_H

#include "common/tls.h"
#include "common/tls_shared.h"
#include "common/util.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_cache.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/ssl_internal.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

/* mbedTLS 2.28 allocates two 16 KiB record buffers per connection for its whole life
 * (MBEDTLS_SSL_VARIABLE_BUFFER_LENGTH is off in the packaged build). An idle connection
 * does not need them: between records nothing lives there but the two 8-byte sequence
 * numbers, so we keep those and give the buffers back, and take a pair again when a record
 * comes or goes. A small pool per ctx keeps busy connections from paying malloc, free and
 * heap trimming on every record. This reaches into mbedTLS 2.x internals (ssl_internal.h),
 * hence the version guard; elsewhere connections simply keep their buffers. */
#if MBEDTLS_VERSION_MAJOR == 2 && !defined(MBEDTLS_SSL_VARIABLE_BUFFER_LENGTH) &&                  \
    !defined(TLS_NO_SLEEP)
#define TLS_CAN_SLEEP 1
#else
#define TLS_CAN_SLEEP 0
/* ---- tls_mbed_acme.c ---- */

/* Server ctx with a store: builds c->acme_conf (after c->conf), with these suites and groups. */
int tls_mbed_acme_conf(struct tls_ctx *c, struct acme_challenges *store, const int *suites,
                       const mbedtls_ecp_group_id *groups, char *err, size_t cap);
void tls_mbed_acme_conf_free(struct tls_ctx *c);
/* Before a server conn of such a ctx reads its ClientHello: -EAGAIN until the hello's first
 * record is fed (mbedTLS refuses a hello that does not fit in it); then marks a challenge
 * connection (c->acme, c->ssl.conf). 0, or -ENOMEM. */
int tls_mbed_acme_hello(struct tls_conn *c);
/* Frees a challenge connection's state (after mbedtls_ssl_free). */
void tls_mbed_acme_free(struct tls_conn *c);

#endif

#define TLS_BUF_IN MBEDTLS_SSL_IN_BUFFER_LEN
#define TLS_BUF_PAIR (MBEDTLS_SSL_IN_BUFFER_LEN + MBEDTLS_SSL_OUT_BUFFER_LEN)
#define TLS_POOL_MAX 32 /* spare buffer pairs per ctx: at most ~1 MiB */

/* TLS_TICKET_LIFETIME_S (tls_shared.h): mbedTLS starts a new random ticket key every period
 * and keeps the previous one for another period (key lifetime = 2 x ticket lifetime). */

struct acme_challenges;

struct tls_cert {
    mbedtls_x509_crt crt;
    mbedtls_pk_context key;
};

/* A TLS-ALPN-01 challenge connection (RFC 8737): the challenge certificate it shows,
 * allocated only for a ClientHello offering just "acme-tls/1". */
struct tls_acme {
    mbedtls_x509_crt crt;
    mbedtls_pk_context key;
    bool found; /* the store had a challenge for the name */
};

struct tls_ctx {
    int refs; /* atomic */
    bool server;
    bool verify_peer;
    bool tickets;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_ssl_config conf;
    struct tls_cert *certs;
    size_t ncerts;
    mbedtls_x509_crt ca;
    bool has_ca;
    mbedtls_ssl_ticket_context ticket;
    mbedtls_ssl_cache_context cache;
    /* Server with a challenge store (tls_opts.acme): the config a challenge connection
     * switches to before its ClientHello is parsed (ALPN "acme-tls/1" only, no default
     * certificate, no client certificate, no resumption, its own SNI callback). */
    struct acme_challenges *acme;
    mbedtls_ssl_config *acme_conf;
    const char **alpn;            /* owned, NULL-terminated, strings in the same block */
    int *suites;                  /* 0-terminated */
    mbedtls_ecp_group_id *groups; /* NONE-terminated */
    char fingerprint[3 * 32];
    uint32_t handshake_timeout_ms;
    pthread_mutex_t lock;              /* the buffer pool and the saved session */
    unsigned char *pool[TLS_POOL_MAX]; /* spare record buffer pairs (see TLS_CAN_SLEEP) */
    size_t npool;
    /* Client: the last session, offered again on reconnect to the same name. */
    mbedtls_ssl_session session;
    bool has_session;
    char session_name[256];
};

struct tls_conn {
    mbedtls_ssl_context ssl; /* first: the SNI callback finds the conn from it */
    struct tls_ctx *ctx;
    struct tls_conn_base b;
    bool asleep;    /* record buffers given back while idle */
    bool pooled;    /* the record buffers are one block from the ctx pool */
    size_t in_used; /* bytes of in_buf written since it was taken: wiped on release */
    uint8_t ctr_in[8], ctr_out[8]; /* record sequence numbers while asleep */
    bool ip_name;    /* client: server_name is an IP literal, checked against IP SANs */
    bool hello_seen; /* server with a challenge store: the ClientHello's ALPN was looked at */
    union {
        struct { /* client */
            uint8_t ip[16];
            size_t iplen;
        };
        struct tls_acme *acme; /* server: a TLS-ALPN-01 challenge connection's state */
    };
};

/* id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31 (RFC 8737 3), DER without tag and length. */
#define TLS_OID_ACME_ID "\x2b\x06\x01\x05\x05\x07\x01\x1f"

#define SAN_DNS (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2)
#define SAN_IP (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7)

/* ---- tls_mbed_cert.c ---- */

/* mbedtls_strerror into out; returns out. */
const char *tls_mbed_str(int rc, char *out, size_t cap);
/* The subject CN of crt, or NULL. */
const mbedtls_x509_buf *tls_mbed_crt_cn(const mbedtls_x509_crt *crt);
/* Does crt name host name (DNS SANs, the CN only when there is none; RFC 6125 wildcards)? */
bool tls_mbed_crt_matches(const mbedtls_x509_crt *crt, const char *name, size_t len);
/* Parses PEM (NUL counted in n) or DER certificates; a CA bundle (bundle) is accepted if at
 * least one parses, anything else if all do. Unlike mbedtls_x509_crt_parse, accepts the
 * critical acmeIdentifier of TLS-ALPN-01 challenge certificates (not in bundles). what names the
 * source in err ("/etc/x.pem: not a valid ..."). */
int tls_mbed_parse_crt(mbedtls_x509_crt *crt, const unsigned char *b, size_t n, bool bundle,
                       const char *what, char *err, size_t cap);
/* Loads a PEM (or DER) certificate file; a CA bundle may be a directory. */
int tls_mbed_load_crt(mbedtls_x509_crt *crt, const char *path, bool bundle, char *err, size_t cap);
/* Parses an unencrypted private key, PEM (NUL counted in n) or DER. */
int tls_mbed_parse_key(mbedtls_pk_context *pk, const unsigned char *b, size_t n, const char *what,
                       char *err, size_t cap);
int tls_mbed_load_key(mbedtls_pk_context *pk, const char *path, char *err, size_t cap);
/* SHA-256 fingerprint of crt, hex with colons, into out (96 bytes). */
void tls_mbed_fingerprint(const mbedtls_x509_crt *crt, char *out);

/* ---- tls_mbed_pki.c (common/pki.h) ---- */

struct pki_cert_info;
/* An ECDSA P-256 key and a self-signed certificate for name (CN and SAN), drawn from drbg. */
int tls_mbed_self_signed(mbedtls_ctr_drbg_context *drbg, struct tls_cert *out, const char *name,
                         char *err, size_t cap);
/* ---- tls_mbed_acme.c ---- */

/* Server ctx with a store: builds c->acme_conf (after c->conf), with these suites and groups. */
int tls_mbed_acme_conf(struct tls_ctx *c, struct acme_challenges *store, const int *suites,
                       const mbedtls_ecp_group_id *groups, char *err, size_t cap);
void tls_mbed_acme_conf_free(struct tls_ctx *c);
/* Before a server conn of such a ctx reads its ClientHello: -EAGAIN until the hello's first
 * record is fed (mbedTLS refuses a hello that does not fit in it); then marks a challenge
 * connection (c->acme, c->ssl.conf). 0, or -ENOMEM. */
int tls_mbed_acme_hello(struct tls_conn *c);
/* Frees a challenge connection's state (after mbedtls_ssl_free). */
void tls_mbed_acme_free(struct tls_conn *c);

#endif
