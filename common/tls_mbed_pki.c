/* Keys, certificate requests and certificates on mbedTLS 2.28 (common/pki.h), and the
 * self-signed certificates of tls_mbed_ctx.c: everything of the backend that writes X.509,
 * and what a certificate says (pki_chain_inspect, tls_cert_inspect). mbedTLS 2.28 has no
 * subjectAltName writer: that extension is built with mbedtls_asn1_write_*. Each call seeds
 * a DRBG of its own: these run a few times a day, and share no state. */
#include "common/pki.h"
#include "common/tls_mbed.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/x509_csr.h>

#define PKI_MAX_NAMES 16
#define CRT_BUF 8192 /* a CSR or certificate with 16 names of 253 bytes fits */

struct rng {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
};

static int rng_init(struct rng *r, char *err, size_t cap)
{
    static const char pers[] = "edge-pki";
    mbedtls_entropy_init(&r->entropy);
    mbedtls_ctr_drbg_init(&r->drbg);
    int rc = mbedtls_ctr_drbg_seed(&r->drbg, mbedtls_entropy_func, &r->entropy,
                                   (const unsigned char *)pers, sizeof pers - 1);
    if (rc) {
        char e[128];
        tls_errf(err, cap, "cannot seed the random generator: %s", tls_mbed_str(rc, e, sizeof e));
        return -EIO;
    }
    return 0;
}

static void rng_free(struct rng *r)
{
    mbedtls_ctr_drbg_free(&r->drbg);
    mbedtls_entropy_free(&r->entropy);
}

/* An mbedTLS failure as err and -EIO (-ENOMEM when it says so). */
static int fail(int rc, const char *what, char *err, size_t cap)
{
    char e[128];
    tls_errf(err, cap, "%s: %s", what, tls_mbed_str(rc, e, sizeof e));
    return rc == MBEDTLS_ERR_PK_ALLOC_FAILED || rc == MBEDTLS_ERR_X509_ALLOC_FAILED ||
                   rc == MBEDTLS_ERR_ASN1_ALLOC_FAILED || rc == MBEDTLS_ERR_MPI_ALLOC_FAILED
               ? -ENOMEM
               : -EIO;
}

static int parse_key(mbedtls_pk_context *pk, const char *key_pem, char *err, size_t cap)
{
    if (!key_pem) {
        tls_errf(err, cap, "no key");
        return -EINVAL;
    }
    return tls_mbed_parse_key(pk, (const unsigned char *)key_pem, strlen(key_pem) + 1, "the key",
                              err, cap);
}

static char *dup_str(const unsigned char *s)
{
    return strdup((const char *)s);
}

/* ---- writing ---- */

/* subjectAltName ::= SEQUENCE OF GeneralName: dNSName [2] per name, iPAddress [7] for an IP
 * literal. Written backwards to end at buf + cap (mbedtls_asn1_write_*): returns its
 * length, *start where it begins, or a negative mbedTLS error. */
static int san_der(const char *const *names, size_t n, unsigned char *buf, size_t cap,
                   unsigned char **start)
{
    unsigned char *p = buf + cap;
    size_t len = 0;
    int ret;
    for (size_t i = n; i-- > 0;) {
        unsigned char ip[16];
        const unsigned char *v = (const unsigned char *)names[i];
        size_t vlen = strlen(names[i]), l = 0;
        unsigned char tag = SAN_DNS;
        if (inet_pton(AF_INET, names[i], ip) == 1 || inet_pton(AF_INET6, names[i], ip) == 1) {
            v = ip;
            vlen = strchr(names[i], ':') ? 16 : 4;
            tag = SAN_IP;
        }
        MBEDTLS_ASN1_CHK_ADD(l, mbedtls_asn1_write_raw_buffer(&p, buf, v, vlen));
        MBEDTLS_ASN1_CHK_ADD(l, mbedtls_asn1_write_len(&p, buf, l));
        MBEDTLS_ASN1_CHK_ADD(l, mbedtls_asn1_write_tag(&p, buf, tag));
        len += l;
    }
    MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, len));
    MBEDTLS_ASN1_CHK_ADD(
        len, mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
    *start = p;
    return (int)len;
}

/* A random positive 128-bit serial number. */
static int random_serial(mbedtls_ctr_drbg_context *drbg, mbedtls_mpi *serial)
{
    unsigned char rnd[16];
    int rc = mbedtls_ctr_drbg_random(drbg, rnd, sizeof rnd);
    rnd[0] &= 0x7f;
    rnd[0] |= 0x01;
    return rc ? rc : mbedtls_mpi_read_binary(serial, rnd, sizeof rnd);
}

static void x509_time(time_t t, char out[16])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 16, "%Y%m%d%H%M%S", &tm);
}

/* Fills w for a self-signed certificate of key: subject and issuer CN=name, the SAN (the
 * one name), not a CA, a random serial, valid from not_before to not_after; with digest,
 * also the critical acmeIdentifier extension of RFC 8737. */
static int self_signed_fields(mbedtls_x509write_cert *w, mbedtls_pk_context *key, const char *name,
                              time_t not_before, time_t not_after, const uint8_t *digest,
                              mbedtls_ctr_drbg_context *drbg)
{
    char subj[80], label[64], nb[16], na[16];
    unsigned char san[300], *s = NULL;
    mbedtls_mpi serial;
    x509_time(not_before, nb);
    x509_time(not_after, na);
    snprintf(subj, sizeof subj, "CN=%s", tls_cert_cn(&name, 1, label));

    mbedtls_x509write_crt_set_version(w, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(w, key);
    mbedtls_x509write_crt_set_issuer_key(w, key);
    mbedtls_mpi_init(&serial);
    int rc = random_serial(drbg, &serial);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_serial(w, &serial); /* copies */
    mbedtls_mpi_free(&serial);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_validity(w, nb, na);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_subject_name(w, subj);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_issuer_name(w, subj);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_basic_constraints(w, 0, -1);
    int len = rc == 0 ? san_der(&name, 1, san, sizeof san, &s) : rc;
    if (len < 0)
        return len;
    rc = mbedtls_x509write_crt_set_extension(w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                             MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0, s,
                                             (size_t)len);
    if (rc == 0 && digest) {
        uint8_t v[34] = {MBEDTLS_ASN1_OCTET_STRING, 32}; /* extnValue holds OCTET STRING */
        memcpy(v + 2, digest, 32);
        rc = mbedtls_x509write_crt_set_extension(w, TLS_OID_ACME_ID, sizeof TLS_OID_ACME_ID - 1, 1,
                                                 v, sizeof v);
    }
    return rc;
}

int tls_mbed_self_signed(mbedtls_ctr_drbg_context *drbg, struct tls_cert *out, const char *name,
                         char *err, size_t cap)
{
    unsigned char der[1024];
    mbedtls_x509write_cert w;
    int rc;

    if ((rc = tls_check_self_signed_name(name, err, cap)) != 0)
        return rc;
    mbedtls_x509write_crt_init(&w);
    rc = mbedtls_pk_setup(&out->key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
    if (rc == 0)
        rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(out->key),
                                 mbedtls_ctr_drbg_random, drbg);
    time_t now = time(NULL);
    if (rc == 0)
        rc = self_signed_fields(&w, &out->key, name, now - 86400, now + 365 * 86400, NULL, drbg);
    if (rc == 0)
        rc = mbedtls_x509write_crt_der(&w, der, sizeof der, mbedtls_ctr_drbg_random, drbg);
    if (rc > 0)
        rc = mbedtls_x509_crt_parse_der(&out->crt, der + sizeof der - rc, (size_t)rc);
    else if (rc == 0)
        rc = MBEDTLS_ERR_X509_BUFFER_TOO_SMALL; /* not seen: an empty DER certificate */
    mbedtls_x509write_crt_free(&w);
    if (rc) {
        fail(rc, "cannot generate a self-signed certificate", err, cap);
        return -EIO;
    }
    return 0;
}

/* A new P-256 key into pk, and its PEM into *pem when pem is set. */
static int new_key(mbedtls_pk_context *pk, struct rng *r, char **pem, char *err, size_t cap)
{
    unsigned char buf[1024];
    int rc = mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
    if (rc == 0)
        rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk),
                                 mbedtls_ctr_drbg_random, &r->drbg);
    if (rc == 0 && pem)
        rc = mbedtls_pk_write_key_pem(pk, buf, sizeof buf);
    if (rc)
        return fail(rc, "cannot generate a key", err, cap);
    if (pem && !(*pem = dup_str(buf)))
        rc = -ENOMEM;
    mbedtls_platform_zeroize(buf, sizeof buf);
    if (rc)
        tls_errf(err, cap, "out of memory");
    return rc;
}

/* A self-signed certificate of key for name, PEM. */
static int self_signed_pem(mbedtls_pk_context *key, struct rng *r, const char *name,
                           time_t not_before, time_t not_after, const uint8_t *digest,
                           char **cert_pem, char *err, size_t cap)
{
    mbedtls_x509write_cert w;
    unsigned char *buf = malloc(CRT_BUF);
    if (!buf) {
        tls_errf(err, cap, "out of memory");
        return -ENOMEM;
    }
    mbedtls_x509write_crt_init(&w);
    int rc = self_signed_fields(&w, key, name, not_before, not_after, digest, &r->drbg);
    if (rc == 0)
        rc = mbedtls_x509write_crt_pem(&w, buf, CRT_BUF, mbedtls_ctr_drbg_random, &r->drbg);
    mbedtls_x509write_crt_free(&w);
    if (rc)
        rc = fail(rc, "cannot write the certificate", err, cap);
    else if (!(*cert_pem = dup_str(buf)))
        rc = -ENOMEM;
    if (rc == -ENOMEM)
        tls_errf(err, cap, "out of memory");
    free(buf);
    return rc;
}

int pki_key_generate(char **key_pem, char *err, size_t errcap)
{
    struct rng r;
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    int rc = rng_init(&r, err, errcap);
    if (rc == 0)
        rc = new_key(&pk, &r, key_pem, err, errcap);
    mbedtls_pk_free(&pk);
    rng_free(&r);
    return rc;
}

int pki_csr_create(const char *key_pem, const char *const *names, size_t n, uint8_t **der,
                   size_t *der_len, char *err, size_t errcap)
{
    int rc = tls_check_cert_names(names, n, PKI_MAX_NAMES, err, errcap);
    if (rc)
        return rc;
    struct rng r;
    mbedtls_pk_context pk;
    mbedtls_x509write_csr w;
    char subj[80];
    unsigned char *buf = malloc(CRT_BUF), *san = NULL;
    mbedtls_pk_init(&pk);
    mbedtls_x509write_csr_init(&w);
    if ((rc = rng_init(&r, err, errcap)) != 0 || (rc = parse_key(&pk, key_pem, err, errcap)) != 0)
        goto out;
    if (!buf) {
        tls_errf(err, errcap, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    const char *cn = tls_cert_cn(names, n, NULL);
    mbedtls_x509write_csr_set_key(&w, &pk);
    mbedtls_x509write_csr_set_md_alg(&w, MBEDTLS_MD_SHA256);
    snprintf(subj, sizeof subj, "CN=%s", cn ? cn : "");
    int len = cn ? mbedtls_x509write_csr_set_subject_name(&w, subj) : 0; /* else an empty one */
    if (len == 0)
        len = san_der(names, n, buf, CRT_BUF, &san);
    if (len > 0)
        len = mbedtls_x509write_csr_set_extension(&w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                                  MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME),
                                                  san, (size_t)len);
    if (len == 0) /* the extension is copied: buf is free again */
        len = mbedtls_x509write_csr_der(&w, buf, CRT_BUF, mbedtls_ctr_drbg_random, &r.drbg);
    if (len <= 0) {
        rc = fail(len ? len : MBEDTLS_ERR_X509_BUFFER_TOO_SMALL, "cannot write the request", err,
                  errcap);
        goto out;
    }
    /* written at the end of buf */
    if (!(*der = malloc((size_t)len))) {
        tls_errf(err, errcap, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    memcpy(*der, buf + CRT_BUF - len, (size_t)len);
    *der_len = (size_t)len;
out:
    rng_free(&r);
    free(buf);
    mbedtls_x509write_csr_free(&w);
    mbedtls_pk_free(&pk);
    return rc;
}

int pki_self_signed(const char *key_pem, const char *name, unsigned days, char **cert_pem,
                    char *err, size_t errcap)
{
    int rc = tls_check_cert_names(&name, 1, 1, err, errcap);
    if (rc)
        return rc;
    if (days == 0 || days > 36500) {
        tls_errf(err, errcap, "%u days: a certificate is valid 1 to 36500 days", days);
        return -EINVAL;
    }
    struct rng r;
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    if ((rc = rng_init(&r, err, errcap)) == 0 && (rc = parse_key(&pk, key_pem, err, errcap)) == 0) {
        time_t from = time(NULL) - 3600;
        rc = self_signed_pem(&pk, &r, name, from, from + (time_t)days * 86400, NULL, cert_pem, err,
                             errcap);
    }
    mbedtls_pk_free(&pk);
    rng_free(&r);
    return rc;
}

int pki_alpn_challenge_cert(const char *name, const uint8_t digest[32], char **cert_pem,
                            char **key_pem, char *err, size_t errcap)
{
    int rc = tls_check_cert_names(&name, 1, 1, err, errcap);
    if (rc)
        return rc;
    if (!digest) {
        tls_errf(err, errcap, "no digest");
        return -EINVAL;
    }
    struct rng r;
    mbedtls_pk_context pk;
    char *k = NULL;
    mbedtls_pk_init(&pk);
    if ((rc = rng_init(&r, err, errcap)) == 0 && (rc = new_key(&pk, &r, &k, err, errcap)) == 0) {
        time_t now = time(NULL);
        rc = self_signed_pem(&pk, &r, name, now - 3600, now + 7 * 86400, digest, cert_pem, err,
                             errcap);
    }
    if (rc == 0) {
        *key_pem = k;
    } else if (k) {
        mbedtls_platform_zeroize(k, strlen(k));
        free(k);
    }
    mbedtls_pk_free(&pk);
    rng_free(&r);
    return rc;
}

/* ---- ES256 ---- */

/* key_pem as a P-256 key pair. */
static int es256_key(mbedtls_pk_context *pk, const char *key_pem, char *err, size_t cap)
{
    int rc = parse_key(pk, key_pem, err, cap);
    if (rc)
        return rc;
    if (!mbedtls_pk_can_do(pk, MBEDTLS_PK_ECDSA) ||
        mbedtls_pk_ec(*pk)->grp.id != MBEDTLS_ECP_DP_SECP256R1) {
        tls_errf(err, cap, "ES256 needs a P-256 key, not %s", mbedtls_pk_get_name(pk));
        return -EINVAL;
    }
    return 0;
}

int pki_es256_public(const char *key_pem, uint8_t x[32], uint8_t y[32], char *err, size_t errcap)
{
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    int rc = es256_key(&pk, key_pem, err, errcap);
    if (rc == 0) {
        const mbedtls_ecp_point *q = &mbedtls_pk_ec(pk)->Q;
        int m = mbedtls_mpi_write_binary(&q->X, x, 32); /* big-endian, zero-padded */
        if (m == 0)
            m = mbedtls_mpi_write_binary(&q->Y, y, 32);
        if (m)
            rc = fail(m, "cannot read the public key", err, errcap);
    }
    mbedtls_pk_free(&pk);
    return rc;
}

int pki_es256_sign(const char *key_pem, const void *data, size_t len, uint8_t sig[64], char *err,
                   size_t errcap)
{
    if (!data && len) {
        tls_errf(err, errcap, "no data");
        return -EINVAL;
    }
    struct rng r;
    mbedtls_pk_context pk;
    mbedtls_mpi rr, s;
    unsigned char h[32];
    mbedtls_pk_init(&pk);
    mbedtls_mpi_init(&rr);
    mbedtls_mpi_init(&s);
    int rc = rng_init(&r, err, errcap);
    if (rc == 0)
        rc = es256_key(&pk, key_pem, err, errcap);
    if (rc == 0) {
        mbedtls_ecp_keypair *ec = mbedtls_pk_ec(pk);
        /* r and s as they are, not DER: JWS wants each as 32 bytes */
        int m = mbedtls_sha256_ret(data, len, h, 0);
        if (m == 0)
            m = mbedtls_ecdsa_sign(&ec->grp, &rr, &s, &ec->d, h, sizeof h, mbedtls_ctr_drbg_random,
                                   &r.drbg);
        if (m == 0)
            m = mbedtls_mpi_write_binary(&rr, sig, 32);
        if (m == 0)
            m = mbedtls_mpi_write_binary(&s, sig + 32, 32);
        if (m)
            rc = fail(m, "cannot sign", err, errcap);
    }
    mbedtls_mpi_free(&rr);
    mbedtls_mpi_free(&s);
    mbedtls_pk_free(&pk);
    rng_free(&r);
    return rc;
}

/* ---- reading ---- */

static int64_t unix_time(const mbedtls_x509_time *t)
{
    struct tm tm = {.tm_year = t->year - 1900,
                    .tm_mon = t->mon - 1,
                    .tm_mday = t->day,
                    .tm_hour = t->hour,
                    .tm_min = t->min,
                    .tm_sec = t->sec};
    return (int64_t)timegm(&tm);
}

/* The serial's magnitude as openssl x509 -serial prints it (tls.h): without the 00 byte DER
 * puts before a first byte of 0x80 or more. */
static void serial_hex(const unsigned char *p, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    while (n > 1 && p[0] == 0) {
        p++;
        n--;
    }
    for (size_t i = 0; i < n && o + 4 <= cap; i++)
        o += (size_t)snprintf(out + o, cap - o, i ? ":%02X" : "%02X", p[i]);
}

/* A name of the certificate into info->names, unless it holds a NUL (no host name does) or
 * there is no room. */
static void add_name(struct pki_cert_info *info, const unsigned char *p, size_t len)
{
    if (info->n_names >= sizeof info->names / sizeof info->names[0] ||
        len >= sizeof info->names[0] || memchr(p, 0, len))
        return;
    memcpy(info->names[info->n_names], p, len);
    info->names[info->n_names++][len] = '\0';
}

static void crt_info(const mbedtls_x509_crt *crt, struct pki_cert_info *info)
{
    memset(info, 0, sizeof *info);
    if (mbedtls_x509_dn_gets(info->base.subject, sizeof info->base.subject, &crt->subject) < 0)
        info->base.subject[0] = '\0';
    serial_hex(crt->serial.p, crt->serial.len, info->base.serial, sizeof info->base.serial);
    info->base.not_after = unix_time(&crt->valid_to);
    info->not_before = unix_time(&crt->valid_from);
    tls_mbed_fingerprint(crt, info->base.fingerprint);
    info->self_signed = crt->issuer_raw.len == crt->subject_raw.len &&
                        memcmp(crt->issuer_raw.p, crt->subject_raw.p, crt->issuer_raw.len) == 0;
    for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s && s->buf.p; s = s->next)
        if (s->buf.tag == SAN_DNS)
            add_name(info, s->buf.p, s->buf.len);
    const mbedtls_x509_buf *cn = info->n_names ? NULL : tls_mbed_crt_cn(crt);
    if (cn)
        add_name(info, cn->p, cn->len);
}

int tls_backend_inspect(const unsigned char *crt, size_t crt_len, const char *crt_what,
                        const unsigned char *key, size_t key_len, const char *key_what,
                        struct pki_cert_info *info, char *err, size_t cap)
{
    mbedtls_x509_crt c;
    mbedtls_x509_crt_init(&c);
    int rc = tls_mbed_parse_crt(&c, crt, crt_len, false, crt_what, err, cap);
    if (rc == 0 && key) {
        mbedtls_pk_context pk;
        mbedtls_pk_init(&pk);
        rc = tls_mbed_parse_key(&pk, key, key_len, key_what, err, cap);
        if (rc == 0 && mbedtls_pk_check_pair(&c.pk, &pk) != 0) {
            tls_errf(err, cap, "%s does not match the certificate in %s", key_what, crt_what);
            rc = -EKEYREJECTED;
        }
        mbedtls_pk_free(&pk);
    }
    if (rc == 0)
        crt_info(&c, info);
    mbedtls_x509_crt_free(&c);
    return rc;
}

/* Whether child's signature verifies with parent's key (what mbedTLS's own path check does). */
static bool mbed_signed_by(const mbedtls_x509_crt *child, const mbedtls_x509_crt *parent)
{
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(child->sig_md);
    unsigned char hash[MBEDTLS_MD_MAX_SIZE];
    if (!md || mbedtls_md(md, child->tbs.p, child->tbs.len, hash) != 0)
        return false;
    return mbedtls_pk_verify_ext(child->sig_pk, child->sig_opts, (mbedtls_pk_context *)&parent->pk,
                                 child->sig_md, hash, mbedtls_md_get_size(md), child->sig.p,
                                 child->sig.len) == 0;
}

int pki_chain_check(const char *chain_pem, char *err, size_t errcap)
{
    if (!chain_pem) {
        tls_errf(err, errcap, "no certificate");
        return -EINVAL;
    }
    mbedtls_x509_crt c;
    mbedtls_x509_crt_init(&c);
    int rc = tls_mbed_parse_crt(&c, (const unsigned char *)chain_pem, strlen(chain_pem) + 1, false,
                                "the certificate chain", err, errcap);
    int i = 1;
    for (const mbedtls_x509_crt *x = &c; rc == 0 && x->next && x->next->raw.p; x = x->next, i++) {
        const mbedtls_x509_crt *up = x->next;
        if (x->issuer_raw.len != up->subject_raw.len ||
            memcmp(x->issuer_raw.p, up->subject_raw.p, up->subject_raw.len) != 0 ||
            !up->ca_istrue || !mbed_signed_by(x, up)) {
            tls_errf(err, errcap,
                     "the certificate chain: certificate %d does not sign certificate %d", i + 1,
                     i);
            rc = -EINVAL;
        }
    }
    mbedtls_x509_crt_free(&c);
    return rc;
}
