/* Certificates for the OpenSSL backend (tls_openssl.h): loading files, the names a
 * certificate carries, fingerprints, tls_cert_inspect (tls_openssl_pki.c writes certificates
 * and reads what they say). */
#include "common/certname.h"
#include "common/pki.h"
#include "common/tls_openssl.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

const char *tls_ossl_str(char *out, size_t cap)
{
    unsigned long e = ERR_peek_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(out, cap, "%s", r ? r : e ? "unknown error" : "no details");
    ERR_clear_error();
    return out;
}

/* ---- names in certificates ---- */

/* Subject or issuer as mbedTLS prints it ("CN=partner, O=Example"), so logs and forwarded
 * headers read the same with either backend. Control characters become '?'. */
void tls_ossl_dn_string(const X509_NAME *n, char *out, size_t cap)
{
    size_t o = 0;
    int prev_set = -1;
    out[0] = '\0';
    for (int i = 0; i < X509_NAME_entry_count(n) && o + 1 < cap; i++) {
        const X509_NAME_ENTRY *e = X509_NAME_get_entry(n, i);
        int nid = OBJ_obj2nid(X509_NAME_ENTRY_get_object(e));
        const char *sn = nid != NID_undef ? OBJ_nid2sn(nid) : "??";
        const ASN1_STRING *v = X509_NAME_ENTRY_get_data(e);
        int set = X509_NAME_ENTRY_set(e);
        int w = snprintf(out + o, cap - o, "%s%s=",
                         i == 0            ? ""
                         : set == prev_set ? " + "
                                           : ", ",
                         sn);
        prev_set = set;
        if (w < 0 || (size_t)w >= cap - o)
            break;
        o += (size_t)w;
        const unsigned char *d = ASN1_STRING_get0_data(v);
        for (int k = 0; k < ASN1_STRING_length(v) && o + 1 < cap; k++) {
            unsigned char ch = d[k];
            out[o++] = (ch < 32 || ch == 127 || (ch > 128 && ch < 160)) ? '?' : (char)ch;
        }
        out[o] = '\0';
    }
}

/* The CN's raw bytes, or NULL. */
static const ASN1_STRING *crt_cn(const X509 *x)
{
    const X509_NAME *n = X509_get_subject_name(x);
    int i = X509_NAME_get_index_by_NID((X509_NAME *)n, NID_commonName, -1);
    return i < 0 ? NULL : X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i));
}

void tls_ossl_fingerprint(const X509 *x, char *out)
{
    unsigned char h[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (X509_digest(x, EVP_sha256(), h, &n) == 1 && n == 32)
        tls_hex_fingerprint(h, out);
    else
        out[0] = '\0';
}

/* Copies the names of the peer certificate (DNS SANs, CN, subject, tls_ossl_fingerprint). */
struct tls_peer *tls_ossl_peer_names(const X509 *p)
{
    char subject[256];
    tls_ossl_dn_string(X509_get_subject_name(p), subject, sizeof subject);
    const ASN1_STRING *cn = crt_cn(p);
    GENERAL_NAMES *gens = X509_get_ext_d2i(p, NID_subject_alt_name, NULL, NULL);
    size_t n = 0, bytes = strlen(subject) + 1 + (cn ? (size_t)ASN1_STRING_length(cn) + 1 : 0);
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type == GEN_DNS) {
            n++;
            bytes += (size_t)ASN1_STRING_length(g->d.dNSName) + 1;
        }
    }
    struct tls_peer *pe = malloc(sizeof *pe + (n + 1) * sizeof pe->sans[0] + bytes);
    if (!pe) {
        GENERAL_NAMES_free(gens);
        return NULL;
    }
    char *d = (char *)&pe->sans[n + 1];
    pe->subject = strcpy(d, subject);
    d += strlen(subject) + 1;
    pe->cn = NULL;
    if (cn) {
        size_t l = (size_t)ASN1_STRING_length(cn);
        memcpy(d, ASN1_STRING_get0_data(cn), l);
        d[l] = '\0';
        pe->cn = d;
        d += l + 1;
    }
    pe->nsans = 0;
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type != GEN_DNS)
            continue;
        size_t l = (size_t)ASN1_STRING_length(g->d.dNSName);
        memcpy(d, ASN1_STRING_get0_data(g->d.dNSName), l);
        d[l] = '\0';
        pe->sans[pe->nsans++] = d;
        d += l + 1;
    }
    pe->sans[pe->nsans] = NULL;
    GENERAL_NAMES_free(gens);
    tls_ossl_fingerprint(p, pe->fingerprint);
    return pe;
}

bool tls_ossl_cert_matches(const struct tls_cert *tc, const char *name, size_t len)
{
    for (size_t i = 0; i < tc->nnames; i++)
        if (cert_name_match(tc->names[i], strlen(tc->names[i]), name, len,
                            CERT_NAME_WILDCARD_FIRST_LABEL))
            return true;
    return false;
}

/* The names SNI is matched against: DNS SANs, the CN only when there is none. */
int tls_ossl_cert_names(struct tls_cert *tc)
{
    struct tls_peer *p = tls_ossl_peer_names(tc->crt);
    if (!p)
        return -ENOMEM;
    size_t n = p->nsans ? p->nsans : p->cn ? 1 : 0;
    tc->names = calloc(n + 1, sizeof *tc->names);
    for (size_t i = 0; tc->names && i < n; i++) {
        if (!(tc->names[tc->nnames] = strdup(p->nsans ? p->sans[i] : p->cn)))
            break;
        tc->nnames++;
    }
    bool ok = tc->names && tc->nnames == n;
    free(p);
    return ok ? 0 : -ENOMEM;
}

int tls_ossl_no_password(char *buf, int size, int rw, void *u)
{
    (void)buf;
    (void)size;
    (void)rw;
    (void)u;
    return 0;
}

/* ---- context ---- */

int tls_ossl_parse_certs(const unsigned char *b, size_t n, const char *what, STACK_OF(X509) * out,
                         char *err, size_t cap)
{
    BIO *bio = n > 1 ? BIO_new_mem_buf(b, (int)(n - 1)) : NULL;
    int got = 0;
    X509 *x;
    while (bio && (x = PEM_read_bio_X509(bio, NULL, tls_ossl_no_password, NULL)) != NULL) {
        if (!sk_X509_push(out, x))
            X509_free(x);
        else
            got++;
    }
    BIO_free(bio);
    if (got == 0 && n > 1) { /* DER */
        const unsigned char *p = b;
        if ((x = d2i_X509(NULL, &p, (long)(n - 1))) != NULL) {
            if (!sk_X509_push(out, x))
                X509_free(x);
            else
                got++;
        }
    }
    if (got > 0) {
        ERR_clear_error();
        return 0;
    }
    char e[128];
    tls_errf(err, cap, "%s: not a valid certificate (%s)", what,
             n <= 1 ? "empty file" : tls_ossl_str(e, sizeof e));
    return -EINVAL;
}

/* Reads the certificates of a PEM (or DER) file. A CA bundle (bundle = true) may hold a few
 * certificates that do not parse: it is accepted if at least one loads. */
static int load_certs(const char *path, bool bundle, STACK_OF(X509) * out, char *err, size_t cap)
{
    unsigned char *b;
    size_t n;
    int rc = tls_read_file(path, &b, &n, err, cap);
    if (rc)
        return rc;
    (void)bundle; /* a bundle is read as a chain: up to its first bad certificate */
    rc = tls_ossl_parse_certs(b, n, path, out, err, cap);
    free(b);
    return rc;
}

int tls_ossl_parse_key(const unsigned char *b, size_t n, const char *what, EVP_PKEY **out,
                       char *err, size_t cap)
{
    BIO *bio = n > 1 ? BIO_new_mem_buf(b, (int)(n - 1)) : NULL;
    EVP_PKEY *k = bio ? PEM_read_bio_PrivateKey(bio, NULL, tls_ossl_no_password, NULL) : NULL;
    BIO_free(bio);
    if (!k && n > 1) {
        const unsigned char *p = b;
        k = d2i_AutoPrivateKey(NULL, &p, (long)(n - 1));
    }
    if (!k) {
        char e[128];
        tls_errf(err, cap, "%s: not a valid private key (%s)", what,
                 n <= 1 ? "empty" : tls_ossl_str(e, sizeof e));
        return -EINVAL;
    }
    ERR_clear_error();
    *out = k;
    return 0;
}

static int load_key(EVP_PKEY **out, const char *path, char *err, size_t cap)
{
    unsigned char *b;
    size_t n;
    int rc = tls_read_file(path, &b, &n, err, cap);
    if (rc)
        return rc;
    rc = tls_ossl_parse_key(b, n, path, out, err, cap);
    OPENSSL_cleanse(b, n);
    free(b);
    return rc;
}

/* The CA bundle into the context's store (a file, or every file of a directory). A server
 * also names the CAs in its CertificateRequest, as mbedTLS does. */
int tls_ossl_load_ca(struct tls_ctx *c, const char *path, char *err, size_t cap)
{
    X509_STORE *st = SSL_CTX_get_cert_store(c->ssl);
    STACK_OF(X509) *all = sk_X509_new_null();
    if (!all)
        return -ENOMEM;
    struct stat sb;
    int rc = 0;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *de;
        while (d && (de = readdir(d)) != NULL) {
            char f[4096];
            struct stat fs;
            if (de->d_name[0] == '.' ||
                snprintf(f, sizeof f, "%s/%s", path, de->d_name) >= (int)sizeof f ||
                stat(f, &fs) != 0 || !S_ISREG(fs.st_mode))
                continue;
            (void)load_certs(f, true, all, NULL, 0);
        }
        if (d)
            closedir(d);
        ERR_clear_error();
        if (sk_X509_num(all) == 0) {
            tls_errf(err, cap, "%s: no certificate could be loaded from this directory", path);
            rc = -EINVAL;
        }
    } else {
        rc = load_certs(path, true, all, err, cap);
    }
    for (int i = 0; rc == 0 && i < sk_X509_num(all); i++) {
        X509 *x = sk_X509_value(all, i);
        X509_STORE_add_cert(st, x); /* a duplicate is not an error */
        if (c->server)
            SSL_CTX_add_client_CA(c->ssl, x);
    }
    ERR_clear_error();
    sk_X509_pop_free(all, X509_free);
    return rc;
}

/* "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256:TLS-AES-128-GCM-SHA256" (mbedTLS/IANA names, '-'
 * or '_') into OpenSSL's TLS 1.2 cipher list and TLS 1.3 suite list. */
int tls_ossl_load_cert(struct tls_cert *tc, const struct tls_cert_opts *co, size_t i, char *err,
                       size_t cap)
{
    if (!co->cert_file || !co->key_file) {
        tls_errf(err, cap,
                 "certificate %zu: no %s (not configured, or its default file is missing)", i,
                 !co->cert_file ? "certificate file" : "key file");
        return -EINVAL;
    }
    STACK_OF(X509) *sk = sk_X509_new_null();
    if (!sk)
        return -ENOMEM;
    int rc = load_certs(co->cert_file, false, sk, err, cap);
    if (rc) {
        sk_X509_free(sk);
        return rc;
    }
    tc->crt = sk_X509_shift(sk);
    tc->chain = sk;
    rc = load_key(&tc->key, co->key_file, err, cap);
    if (rc)
        return rc;
    if (X509_check_private_key(tc->crt, tc->key) != 1) {
        ERR_clear_error();
        tls_errf(err, cap, "%s does not match the key in %s", co->cert_file, co->key_file);
        return -EINVAL;
    }
    return 0;
}
