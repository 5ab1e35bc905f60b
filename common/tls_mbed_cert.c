/* Certificates for the mbedTLS backend (tls_mbed.h): loading files, the names a
 * certificate carries, fingerprints, tls_cert_inspect (tls_mbed_pki.c writes certificates and
 * reads what they say). */
#include "common/certname.h"
#include "common/pki.h"
#include "common/tls_mbed.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

const char *tls_mbed_str(int rc, char *out, size_t cap)
{
    mbedtls_strerror(rc, out, cap);
    return out;
}

const mbedtls_x509_buf *tls_mbed_crt_cn(const mbedtls_x509_crt *crt)
{
    for (const mbedtls_x509_name *n = &crt->subject; n; n = n->next)
        if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0)
            return &n->val;
    return NULL;
}

bool tls_mbed_crt_matches(const mbedtls_x509_crt *crt, const char *name, size_t len)
{
    bool has_dns = false;
    for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s && s->buf.p; s = s->next) {
        if (s->buf.tag != SAN_DNS)
            continue;
        has_dns = true;
        if (cert_name_match((const char *)s->buf.p, s->buf.len, name, len,
                            CERT_NAME_WILDCARD_FIRST_LABEL))
            return true;
    }
    if (has_dns)
        return false; /* RFC 6125 6.4.4: the CN is only a fallback */
    const mbedtls_x509_buf *cn = tls_mbed_crt_cn(crt);
    return cn &&
           cert_name_match((const char *)cn->p, cn->len, name, len, CERT_NAME_WILDCARD_FIRST_LABEL);
}

/* The critical id-pe-acmeIdentifier of a TLS-ALPN-01 challenge certificate (RFC 8737 3),
 * unknown to mbedTLS, which would refuse the certificate for it: accepted when it holds an
 * OCTET STRING of 32 bytes (p: the extnValue's content). Any other unknown extension is not. */
static int acme_ext(void *ctx, const mbedtls_x509_crt *crt, const mbedtls_x509_buf *oid,
                    int critical, const unsigned char *p, const unsigned char *end)
{
    (void)ctx;
    (void)crt;
    (void)critical;
    bool acme = oid->len == sizeof TLS_OID_ACME_ID - 1 &&
                memcmp(oid->p, TLS_OID_ACME_ID, oid->len) == 0 && end - p == 34 &&
                p[0] == MBEDTLS_ASN1_OCTET_STRING && p[1] == 32;
    return acme ? 0 : MBEDTLS_ERR_X509_INVALID_EXTENSIONS + MBEDTLS_ERR_ASN1_UNEXPECTED_TAG;
}

/* Every certificate of a PEM text (NUL-terminated), or one DER certificate, or an mbedTLS
 * error: mbedtls_x509_crt_parse, all or nothing, with acme_ext. */
static int parse_all(mbedtls_x509_crt *crt, const unsigned char *b, size_t n)
{
    if (n == 0 || b[n - 1] != '\0' || !strstr((const char *)b, "-----BEGIN CERTIFICATE-----"))
        return mbedtls_x509_crt_parse_der_with_ext_cb(crt, b, n, 1, acme_ext, NULL);
    int rc = 0, got = 0;
    for (const unsigned char *p = b; rc == 0;) {
        mbedtls_pem_context pem;
        size_t used = 0;
        mbedtls_pem_init(&pem);
        rc = mbedtls_pem_read_buffer(&pem, "-----BEGIN CERTIFICATE-----",
                                     "-----END CERTIFICATE-----", p, NULL, 0, &used);
        if (rc == 0)
            rc =
                mbedtls_x509_crt_parse_der_with_ext_cb(crt, pem.buf, pem.buflen, 1, acme_ext, NULL);
        mbedtls_pem_free(&pem);
        if (rc == MBEDTLS_ERR_PEM_NO_HEADER_FOOTER_PRESENT && got > 0)
            return 0; /* past the last one */
        p += used;
        got++;
    }
    return rc;
}

int tls_mbed_parse_crt(mbedtls_x509_crt *crt, const unsigned char *b, size_t n, bool bundle,
                       const char *what, char *err, size_t cap)
{
    char e[128];
    /* a CA bundle may hold a few certificates mbedTLS cannot parse; a chain may not */
    int rc = bundle ? mbedtls_x509_crt_parse(crt, b, n) : parse_all(crt, b, n);
    if (rc == 0 || (rc > 0 && bundle && crt->raw.p != NULL))
        return 0;
    if (rc > 0 || (rc < 0 && crt->raw.p == NULL && n <= 1))
        tls_errf(err, cap, "%s: not a valid certificate (%s)", what,
                 rc > 0 ? "some certificates failed to parse" : "empty file");
    else
        tls_errf(err, cap, "%s: not a valid certificate (%s)", what, tls_mbed_str(rc, e, sizeof e));
    return -EINVAL;
}

/* Loads a PEM (or DER) certificate file. A CA bundle (bundle = true) may also be a
 * directory of certificates, and may hold a few certificates mbedTLS cannot parse (system
 * bundles do): it is accepted if at least one certificate loads. */
int tls_mbed_load_crt(mbedtls_x509_crt *crt, const char *path, bool bundle, char *err, size_t cap)
{
    struct stat st;
    int rc;
    if (bundle && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        rc = mbedtls_x509_crt_parse_path(crt, path);
        if (rc < 0 || crt->raw.p == NULL) {
            tls_errf(err, cap, "%s: no certificate could be loaded from this directory", path);
            return -EINVAL;
        }
        return 0;
    }
    unsigned char *b = NULL;
    size_t n = 0;
    rc = tls_read_file(path, &b, &n, err, cap);
    if (rc)
        return rc;
    rc = tls_mbed_parse_crt(crt, b, n, bundle, path, err, cap);
    free(b);
    return rc;
}

int tls_mbed_parse_key(mbedtls_pk_context *pk, const unsigned char *b, size_t n, const char *what,
                       char *err, size_t cap)
{
    int rc = mbedtls_pk_parse_key(pk, b, n, NULL, 0);
    if (rc != 0) {
        char e[128];
        tls_errf(err, cap, "%s: not a valid private key (%s)", what, tls_mbed_str(rc, e, sizeof e));
        return -EINVAL;
    }
    return 0;
}

int tls_mbed_load_key(mbedtls_pk_context *pk, const char *path, char *err, size_t cap)
{
    unsigned char *b = NULL;
    size_t n = 0;
    int rc = tls_read_file(path, &b, &n, err, cap);
    if (rc)
        return rc;
    rc = tls_mbed_parse_key(pk, b, n, path, err, cap);
    mbedtls_platform_zeroize(b, n);
    free(b);
    return rc;
}

void tls_mbed_fingerprint(const mbedtls_x509_crt *crt, char *out)
{
    unsigned char h[32];
    mbedtls_sha256_ret(crt->raw.p, crt->raw.len, h, 0);
    tls_hex_fingerprint(h, out);
}
