/* Keys, certificate requests and certificates on OpenSSL 3 (common/pki.h), and the
 * self-signed certificates of tls_openssl_ctx.c: everything of the backend that writes
 * X.509, and what a certificate says (pki_chain_inspect, tls_cert_inspect). EVP, X509 and
 * X509_REQ only (no deprecated EC_KEY calls); names go in as typed GENERAL_NAMEs, never
 * through the "DNS:..." config syntax. */
#include "common/pki.h"
#include "common/tls_openssl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/ec.h>

#define PKI_MAX_NAMES 16
#define OID_ACME_ID "1.3.6.1.5.5.7.1.31" /* id-pe-acmeIdentifier (RFC 8737 3) */

/* The OpenSSL error queue as err, and -EIO. */
static int fail(const char *what, char *err, size_t cap)
{
    char e[128];
    tls_errf(err, cap, "%s: %s", what, tls_ossl_str(e, sizeof e));
    return -EIO;
}

static int parse_key(EVP_PKEY **k, const char *key_pem, char *err, size_t cap)
{
    if (!key_pem) {
        tls_errf(err, cap, "no key");
        return -EINVAL;
    }
    return tls_ossl_parse_key((const unsigned char *)key_pem, strlen(key_pem) + 1, "the key", k,
                              err, cap);
}

/* What was written to a memory BIO, as a malloc'd string. */
static char *bio_string(BIO *b)
{
    char *p = NULL;
    long n = BIO_get_mem_data(b, &p);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s) {
        memcpy(s, p, (size_t)n);
        s[n] = '\0';
    }
    return s;
}

/* ---- writing ---- */

/* subjectAltName: dNSName per name, iPAddress for an IP literal. */
static GENERAL_NAMES *san_names(const char *const *names, size_t n)
{
    GENERAL_NAMES *g = GENERAL_NAMES_new();
    for (size_t i = 0; g && i < n; i++) {
        unsigned char ip[16];
        bool v4 = inet_pton(AF_INET, names[i], ip) == 1;
        bool v6 = !v4 && inet_pton(AF_INET6, names[i], ip) == 1;
        GENERAL_NAME *gn = GENERAL_NAME_new();
        ASN1_STRING *s = v4 || v6 ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();
        bool ok = gn && s &&
                  (v4 || v6 ? ASN1_OCTET_STRING_set(s, ip, v4 ? 4 : 16)
                            : ASN1_STRING_set(s, names[i], -1)) == 1;
        if (ok) {
            GENERAL_NAME_set0_value(gn, v4 || v6 ? GEN_IPADD : GEN_DNS, s);
            s = NULL;
            ok = sk_GENERAL_NAME_push(g, gn) > 0;
        }
        ASN1_STRING_free(s);
        if (!ok) {
            GENERAL_NAME_free(gn);
            GENERAL_NAMES_free(g);
            g = NULL;
        }
    }
    return g;
}

/* The critical acmeIdentifier extension: extnValue = OCTET STRING (digest). */
static int add_acme_id(X509 *x, const uint8_t digest[32])
{
    unsigned char v[34] = {V_ASN1_OCTET_STRING, 32};
    memcpy(v + 2, digest, 32);
    ASN1_OBJECT *obj = OBJ_txt2obj(OID_ACME_ID, 1);
    ASN1_OCTET_STRING *val = ASN1_OCTET_STRING_new();
    X509_EXTENSION *e = obj && val && ASN1_OCTET_STRING_set(val, v, sizeof v) == 1
                            ? X509_EXTENSION_create_by_OBJ(NULL, obj, 1, val)
                            : NULL;
    int ok = e && X509_add_ext(x, e, -1) == 1;
    X509_EXTENSION_free(e);
    ASN1_OCTET_STRING_free(val);
    ASN1_OBJECT_free(obj);
    return ok ? 0 : -1;
}

/* A self-signed certificate of k: subject and issuer CN=name, the SAN (the one name), not a
 * CA, a random positive 128-bit serial, valid from now + from_s to now + to_s; with digest,
 * also the critical acmeIdentifier extension of RFC 8737. NULL with the error queued. */
static X509 *self_signed_x509(EVP_PKEY *k, const char *name, long from_s, long to_s,
                              const uint8_t *digest)
{
    X509 *x = X509_new();
    BIGNUM *bn = NULL;
    GENERAL_NAMES *san = san_names(&name, 1);
    BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
    unsigned char rnd[16];
    char label[64];
    const char *cn = tls_cert_cn(&name, 1, label);
    time_t now = time(NULL); /* one clock reading for both dates */
    bool ok = x && san && bc && RAND_bytes(rnd, sizeof rnd) == 1;
    if (ok) {
        rnd[0] = (unsigned char)((rnd[0] & 0x7f) | 0x01);
        bn = BN_bin2bn(rnd, sizeof rnd, NULL);
        X509_NAME *n = X509_get_subject_name(x);
        ok = bn && X509_set_version(x, X509_VERSION_3) == 1 &&
             BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL &&
             X509_time_adj(X509_getm_notBefore(x), from_s, &now) != NULL &&
             X509_time_adj(X509_getm_notAfter(x), to_s, &now) != NULL &&
             X509_set_pubkey(x, k) == 1 &&
             X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                        0) == 1 &&
             X509_set_issuer_name(x, n) == 1 &&
             X509_add1_ext_i2d(x, NID_basic_constraints, bc, 0, X509V3_ADD_DEFAULT) == 1 &&
             X509_add1_ext_i2d(x, NID_subject_alt_name, san, 0, X509V3_ADD_DEFAULT) == 1 &&
             (!digest || add_acme_id(x, digest) == 0) && X509_sign(x, k, EVP_sha256()) > 0;
    }
    BN_free(bn);
    BASIC_CONSTRAINTS_free(bc);
    GENERAL_NAMES_free(san);
    if (!ok) {
        X509_free(x);
        x = NULL;
    }
    return x;
}

int tls_ossl_make_self_signed(struct tls_cert *out, const char *name, char *err, size_t cap)
{
    int rc = tls_check_self_signed_name(name, err, cap);
    if (rc)
        return rc;
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = k ? self_signed_x509(k, name, -86400, 365L * 86400, NULL) : NULL;
    if (!x) {
        fail("cannot generate a self-signed certificate", err, cap);
        EVP_PKEY_free(k);
        return -EIO;
    }
    out->crt = x;
    out->key = k;
    return 0;
}

/* x as PEM into *pem. */
static int x509_pem(X509 *x, char **pem, char *err, size_t cap)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (!b || PEM_write_bio_X509(b, x) != 1) {
        BIO_free(b);
        return fail("cannot write the certificate", err, cap);
    }
    *pem = bio_string(b);
    BIO_free(b);
    if (!*pem) {
        tls_errf(err, cap, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

/* A new P-256 key into *k, its PEM (PKCS#8) into *pem. */
static int new_key(EVP_PKEY **k, char **pem, char *err, size_t cap)
{
    BIO *b = BIO_new(BIO_s_mem());
    *k = EVP_EC_gen("P-256");
    if (!b || !*k || PEM_write_bio_PrivateKey(b, *k, NULL, NULL, 0, NULL, NULL) != 1) {
        BIO_free(b);
        EVP_PKEY_free(*k);
        *k = NULL;
        return fail("cannot generate a key", err, cap);
    }
    *pem = bio_string(b);
    BIO_free(b); /* a memory BIO clears its buffer when freed */
    if (!*pem) {
        EVP_PKEY_free(*k);
        *k = NULL;
        tls_errf(err, cap, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

static void free_secret(char *s)
{
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

int pki_key_generate(char **key_pem, char *err, size_t errcap)
{
    EVP_PKEY *k = NULL;
    int rc = new_key(&k, key_pem, err, errcap);
    EVP_PKEY_free(k);
    return rc;
}

int pki_csr_create(const char *key_pem, const char *const *names, size_t n, uint8_t **der,
                   size_t *der_len, char *err, size_t errcap)
{
    int rc = tls_check_cert_names(names, n, PKI_MAX_NAMES, err, errcap);
    EVP_PKEY *k = NULL;
    if (rc || (rc = parse_key(&k, key_pem, err, errcap)) != 0)
        return rc;
    X509_REQ *req = X509_REQ_new();
    GENERAL_NAMES *san = san_names(names, n);
    STACK_OF(X509_EXTENSION) *exts = NULL;
    const char *cn = tls_cert_cn(names, n, NULL); /* NULL: an empty subject */
    bool ok = req && san && X509_REQ_set_version(req, 0 /* v1 */) == 1 &&
              (!cn || X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_ASC,
                                                 (const unsigned char *)cn, -1, -1, 0) == 1) &&
              X509_REQ_set_pubkey(req, k) == 1 &&
              X509V3_add1_i2d(&exts, NID_subject_alt_name, san, 0, X509V3_ADD_DEFAULT) == 1 &&
              X509_REQ_add_extensions(req, exts) == 1 && X509_REQ_sign(req, k, EVP_sha256()) > 0;
    int len = ok ? i2d_X509_REQ(req, NULL) : -1;
    if (len <= 0) {
        rc = fail("cannot write the request", err, errcap);
    } else if (!(*der = malloc((size_t)len))) {
        tls_errf(err, errcap, "out of memory");
        rc = -ENOMEM;
    } else {
        unsigned char *p = *der;
        *der_len = (size_t)i2d_X509_REQ(req, &p);
    }
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    GENERAL_NAMES_free(san);
    X509_REQ_free(req);
    EVP_PKEY_free(k);
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
    EVP_PKEY *k = NULL;
    if ((rc = parse_key(&k, key_pem, err, errcap)) != 0)
        return rc;
    X509 *x = self_signed_x509(k, name, -3600, -3600 + (long)days * 86400, NULL);
    rc = x ? x509_pem(x, cert_pem, err, errcap) : fail("cannot make the certificate", err, errcap);
    X509_free(x);
    EVP_PKEY_free(k);
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
    EVP_PKEY *k = NULL;
    char *kp = NULL;
    if ((rc = new_key(&k, &kp, err, errcap)) != 0)
        return rc;
    X509 *x = self_signed_x509(k, name, -3600, 7L * 86400, digest);
    rc = x ? x509_pem(x, cert_pem, err, errcap) : fail("cannot make the certificate", err, errcap);
    if (rc == 0)
        *key_pem = kp;
    else
        free_secret(kp);
    X509_free(x);
    EVP_PKEY_free(k);
    return rc;
}

/* ---- ES256 ---- */

/* key_pem as a P-256 key pair. */
static int es256_key(EVP_PKEY **k, const char *key_pem, char *err, size_t cap)
{
    int rc = parse_key(k, key_pem, err, cap);
    if (rc)
        return rc;
    char group[64] = "";
    if (!EVP_PKEY_is_a(*k, "EC") ||
        EVP_PKEY_get_utf8_string_param(*k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, NULL) !=
            1 ||
        strcmp(group, SN_X9_62_prime256v1) != 0) {
        tls_errf(err, cap, "ES256 needs a P-256 key, not %s%s%s", EVP_PKEY_get0_type_name(*k),
                 group[0] ? " " : "", group);
        ERR_clear_error();
        EVP_PKEY_free(*k);
        *k = NULL;
        return -EINVAL;
    }
    return 0;
}

int pki_es256_public(const char *key_pem, uint8_t x[32], uint8_t y[32], char *err, size_t errcap)
{
    EVP_PKEY *k = NULL;
    BIGNUM *bx = NULL, *by = NULL;
    int rc = es256_key(&k, key_pem, err, errcap);
    if (rc == 0 && (EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_EC_PUB_X, &bx) != 1 ||
                    EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_EC_PUB_Y, &by) != 1 ||
                    BN_bn2binpad(bx, x, 32) != 32 || BN_bn2binpad(by, y, 32) != 32))
        rc = fail("cannot read the public key", err, errcap);
    BN_free(bx);
    BN_free(by);
    EVP_PKEY_free(k);
    return rc;
}

int pki_es256_sign(const char *key_pem, const void *data, size_t len, uint8_t sig[64], char *err,
                   size_t errcap)
{
    if (!data && len) {
        tls_errf(err, errcap, "no data");
        return -EINVAL;
    }
    EVP_PKEY *k = NULL;
    int rc = es256_key(&k, key_pem, err, errcap);
    if (rc)
        return rc;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[80]; /* an ECDSA-Sig-Value of P-256 takes at most 72 */
    size_t dlen = sizeof der;
    ECDSA_SIG *es = NULL;
    bool ok = md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k) == 1 &&
              EVP_DigestSign(md, der, &dlen, data ? data : "", len) == 1;
    /* the DER SEQUENCE { r, s } as JWS wants it: r || s, 32 bytes each, zero-padded */
    const unsigned char *p = der;
    if (ok && (es = d2i_ECDSA_SIG(NULL, &p, (long)dlen)) != NULL) {
        const BIGNUM *r, *s;
        ECDSA_SIG_get0(es, &r, &s);
        ok = BN_bn2binpad(r, sig, 32) == 32 && BN_bn2binpad(s, sig + 32, 32) == 32;
    } else {
        ok = false;
    }
    if (!ok)
        rc = fail("cannot sign", err, errcap);
    ECDSA_SIG_free(es);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(k);
    return rc;
}

/* ---- reading ---- */

static int64_t unix_time(const ASN1_TIME *t)
{
    struct tm tm;
    return ASN1_TIME_to_tm(t, &tm) == 1 ? (int64_t)timegm(&tm) : 0;
}

static int crt_info(const X509 *x, struct pki_cert_info *info)
{
    struct tls_peer *pe = tls_ossl_peer_names(x); /* subject, CN, DNS SANs, fingerprint */
    if (!pe)
        return -ENOMEM;
    memset(info, 0, sizeof *info);
    snprintf(info->base.subject, sizeof info->base.subject, "%s", pe->subject);
    const ASN1_INTEGER *sn = X509_get0_serialNumber(x);
    size_t o = 0;
    for (int i = 0; i < sn->length && o + 4 <= sizeof info->base.serial; i++)
        o += (size_t)snprintf(info->base.serial + o, sizeof info->base.serial - o,
                              i ? ":%02X" : "%02X", sn->data[i]);
    info->base.not_after = unix_time(X509_get0_notAfter(x));
    info->not_before = unix_time(X509_get0_notBefore(x));
    snprintf(info->base.fingerprint, sizeof info->base.fingerprint, "%s", pe->fingerprint);
    info->self_signed = X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)) == 0;
    /* the names as copied (a NUL inside one ends it early: such a name matches nothing) */
    const char *const *names = pe->nsans ? pe->sans : &pe->cn;
    size_t n = pe->nsans ? pe->nsans : pe->cn ? 1 : 0;
    const size_t max = sizeof info->names / sizeof info->names[0];
    for (size_t i = 0; i < n && info->n_names < max; i++)
        if (strlen(names[i]) < sizeof info->names[0])
            strcpy(info->names[info->n_names++], names[i]);
    free(pe);
    return 0;
}

int tls_backend_inspect(const unsigned char *crt, size_t crt_len, const char *crt_what,
                        const unsigned char *key, size_t key_len, const char *key_what,
                        struct pki_cert_info *info, char *err, size_t cap)
{
    STACK_OF(X509) *chain = sk_X509_new_null();
    if (!chain)
        return -ENOMEM;
    EVP_PKEY *k = NULL;
    int rc = tls_ossl_parse_certs(crt, crt_len, crt_what, chain, err, cap);
    X509 *x = rc == 0 ? sk_X509_value(chain, 0) : NULL;
    if (rc == 0 && key) {
        rc = tls_ossl_parse_key(key, key_len, key_what, &k, err, cap);
        if (rc == 0 && X509_check_private_key(x, k) != 1) {
            tls_errf(err, cap, "%s does not match the certificate in %s", key_what, crt_what);
            rc = -EKEYREJECTED;
        }
        ERR_clear_error();
    }
    if (rc == 0 && crt_info(x, info) != 0) {
        tls_errf(err, cap, "out of memory");
        rc = -ENOMEM;
    }
    EVP_PKEY_free(k);
    sk_X509_pop_free(chain, X509_free);
    return rc;
}

int pki_chain_check(const char *chain_pem, char *err, size_t errcap)
{
    if (!chain_pem) {
        tls_errf(err, errcap, "no certificate");
        return -EINVAL;
    }
    STACK_OF(X509) *chain = sk_X509_new_null();
    if (!chain)
        return -ENOMEM;
    /* Strict, unlike tls_ossl_parse_certs (which ends a chain quietly at a block that does
     * not parse): every block must be a certificate, the end of input the only stop. */
    int rc = 0;
    BIO *bio = BIO_new_mem_buf(chain_pem, -1);
    X509 *x;
    ERR_clear_error();
    while (bio && (x = PEM_read_bio_X509(bio, NULL, tls_ossl_no_password, NULL)) != NULL)
        if (!sk_X509_push(chain, x)) {
            X509_free(x);
            rc = -ENOMEM;
        }
    unsigned long e = ERR_peek_last_error();
    if (rc == 0 && (!bio || sk_X509_num(chain) == 0 || ERR_GET_LIB(e) != ERR_LIB_PEM ||
                    ERR_GET_REASON(e) != PEM_R_NO_START_LINE)) {
        char es[128];
        tls_errf(err, errcap, "the certificate chain: certificate %d is not valid (%s)",
                 sk_X509_num(chain) + 1, tls_ossl_str(es, sizeof es));
        rc = -EINVAL;
    }
    BIO_free(bio);
    for (int i = 0; rc == 0 && i + 1 < sk_X509_num(chain); i++) {
        X509 *leaf = sk_X509_value(chain, i), *up = sk_X509_value(chain, i + 1);
        /* X509_check_issued: names, key identifiers and the issuer's keyCertSign */
        if (X509_check_issued(up, leaf) != X509_V_OK || X509_check_ca(up) == 0 ||
            X509_verify(leaf, X509_get0_pubkey(up)) != 1) {
            tls_errf(err, errcap,
                     "the certificate chain: certificate %d does not sign certificate %d", i + 2,
                     i + 1);
            rc = -EINVAL;
        }
    }
    ERR_clear_error();
    sk_X509_pop_free(chain, X509_free);
    return rc;
}
