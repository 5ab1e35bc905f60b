/* ACME TLS-ALPN-01 (RFC 8737) for the mbedTLS backend (tls_mbed.h). mbedTLS 2.28 picks
 * the ALPN protocol from its config's list and has no ClientHello callback, so a server
 * ctx with a challenge store looks at the whole ClientHello before mbedTLS reads any of it
 * (tls_peek_alpn): a hello offering just "acme-tls/1" moves its connection to a second
 * config that speaks only that protocol, has no certificate of its own and answers SNI
 * from the store. Every other connection keeps the ctx's config, untouched. */
#include "common/acme_challenges.h"
#include "common/tls_mbed.h"

#include <errno.h>
#include <mbedtls/pem.h>
#include <stdlib.h>
#include <string.h>

static const char *acme_alpn[] = {ACME_ALPN_PROTOCOL, NULL};

/* id-pe-acmeIdentifier (RFC 8737 6.1), 1.3.6.1.5.5.7.1.31: critical in every challenge
 * certificate, and unknown to mbedTLS, which refuses unknown critical extensions. */
static const unsigned char oid_acme_id[] = {0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f};

static int accept_acme_id(void *arg, const mbedtls_x509_crt *crt, const mbedtls_x509_buf *oid,
                          int critical, const unsigned char *p, const unsigned char *end)
{
    (void)arg;
    (void)crt;
    (void)critical;
    (void)p;
    (void)end;
    return oid->len == sizeof oid_acme_id && memcmp(oid->p, oid_acme_id, oid->len) == 0 ? 0 : -1;
}

/* The first certificate of a PEM, with its acmeIdentifier extension. */
static int parse_challenge_crt(mbedtls_x509_crt *crt, const char *pem)
{
    mbedtls_pem_context ctx;
    size_t used;
    mbedtls_pem_init(&ctx);
    int rc =
        mbedtls_pem_read_buffer(&ctx, "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----",
                                (const unsigned char *)pem, NULL, 0, &used);
    if (rc == 0)
        rc = mbedtls_x509_crt_parse_der_with_ext_cb(crt, ctx.buf, ctx.buflen, 1, accept_acme_id,
                                                    NULL);
    mbedtls_pem_free(&ctx);
    return rc;
}

/* SNI on a challenge connection: the challenge certificate for the name, or a failed
 * handshake (mbedTLS sends unrecognized_name). */
static int on_sni_acme(void *arg, mbedtls_ssl_context *ssl, const unsigned char *name, size_t len)
{
    struct tls_ctx *ctx = arg;
    struct tls_conn *c = (struct tls_conn *)ssl; /* ssl is the first member */
    if (!c->acme || len == 0 || len > 255 || memchr(name, 0, len))
        return -1;
    free(c->b.sni);
    if (!(c->b.sni = strndup((const char *)name, len)))
        return -1;
    char *cert = NULL, *key = NULL;
    if (acme_challenges_alpn(ctx->acme, c->b.sni, &cert, &key) != 0)
        return -1;
    struct tls_acme *a = c->acme;
    int rc = parse_challenge_crt(&a->crt, cert);
    if (rc == 0)
        rc = mbedtls_pk_parse_key(&a->key, (const unsigned char *)key, strlen(key) + 1, NULL, 0);
    if (rc == 0)
        rc = mbedtls_pk_check_pair(&a->crt.pk, &a->key);
    mbedtls_platform_zeroize(key, strlen(key));
    free(key);
    free(cert);
    if (rc == 0)
        rc = mbedtls_ssl_set_hs_own_cert(ssl, &a->crt, &a->key);
    a->found = rc == 0;
    return rc ? -1 : 0;
}

int tls_mbed_acme_conf(struct tls_ctx *c, struct acme_challenges *store, const int *suites,
                       const mbedtls_ecp_group_id *groups, char *err, size_t cap)
{
    mbedtls_ssl_config *k = calloc(1, sizeof *k);
    if (!k) {
        tls_errf(err, cap, "out of memory");
        return -ENOMEM;
    }
    mbedtls_ssl_config_init(k);
    c->acme_conf = k;
    c->acme = store;
    int rc = mbedtls_ssl_config_defaults(k, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                         MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc == 0)
        rc = mbedtls_ssl_conf_alpn_protocols(k, acme_alpn);
    if (rc) {
        char e[128];
        tls_errf(err, cap, "TLS config (ACME): %s", tls_mbed_str(rc, e, sizeof e));
        return -EINVAL;
    }
    mbedtls_ssl_conf_rng(k, mbedtls_ctr_drbg_random, &c->drbg);
    mbedtls_ssl_conf_min_version(k, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(k, suites);
    mbedtls_ssl_conf_curves(k, groups);
    mbedtls_ssl_conf_sig_hashes(k, c->conf.sig_hashes);
    mbedtls_ssl_conf_renegotiation(k, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
    /* The validating CA shows no client certificate, even where the ctx requires one. */
    mbedtls_ssl_conf_authmode(k, MBEDTLS_SSL_VERIFY_NONE);
    /* No own certificate: a hello without a name finds no certificate and fails. */
    mbedtls_ssl_conf_sni(k, on_sni_acme, c);
    return 0;
}

void tls_mbed_acme_conf_free(struct tls_ctx *c)
{
    if (c->acme_conf) {
        mbedtls_ssl_config_free(c->acme_conf);
        free(c->acme_conf);
    }
}

int tls_mbed_acme_hello(struct tls_conn *c)
{
    uint8_t list[512];
    const uint8_t *p = c->b.in.data + c->b.in.rd;
    size_t len = byteq_len(&c->b.in);
    /* mbedTLS 2.28 refuses a ClientHello that is not whole in its first record, so only that
     * record is looked at: waiting for (and re-scanning, at each read) a hello trickled in
     * thousands of tiny records would cost quadratic CPU for a hello doomed anyway. */
    if (len < 5)
        return -EAGAIN;
    size_t first = 5 + ((size_t)p[3] << 8 | p[4]);
    if (first > 5 + 16384) { /* longer than a record may be: mbedTLS refuses it at once */
        c->hello_seen = true;
        return 0;
    }
    if (len < first)
        return -EAGAIN; /* mbedTLS reads nothing before the hello's record is here */
    ssize_t n = tls_peek_alpn(p, first, list, sizeof list);
    c->hello_seen = true;
    /* RFC 8737 3: the ACME server offers "acme-tls/1" alone. Anything else (no ALPN, other
     * protocols as well, a malformed or fragmented hello that mbedTLS will refuse) is an
     * ordinary client. */
    if (n <= 0 || !tls_alpn_only(list, (size_t)n, ACME_ALPN_PROTOCOL))
        return 0;
    struct tls_acme *a = calloc(1, sizeof *a);
    if (!a)
        return -ENOMEM;
    mbedtls_x509_crt_init(&a->crt);
    mbedtls_pk_init(&a->key);
    c->acme = a;
    c->ssl.conf = c->ctx->acme_conf; /* same endpoint and transport: safe before the hello */
    return 0;
}

void tls_mbed_acme_free(struct tls_conn *c)
{
    if (!c->ctx->server || !c->acme)
        return;
    mbedtls_x509_crt_free(&c->acme->crt);
    mbedtls_pk_free(&c->acme->key);
    free(c->acme);
    c->acme = NULL;
}
