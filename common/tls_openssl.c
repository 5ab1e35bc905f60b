/* TLS on byte buffers: the OpenSSL 3 backend of common/tls.h (make TLS=openssl; the default
 * build uses common/tls.c, mbedTLS). TLS 1.3 and 1.2, TLS 1.3 0-RTT off, renegotiation
 * off. The only file that includes OpenSSL headers; what does not depend on the library is
 * in tls_shared.c.
 *
 * Memory: SSL_MODE_RELEASE_BUFFERS gives the record buffers back whenever a connection has
 * nothing buffered, and a custom BIO writes straight into the conn's byte queues (no
 * memory BIOs), so an idle connection holds the SSL object, its session and the peer
 * certificate only (see make bench-tls). */
#include "common/tls.h"
#include "common/tls_shared.h"
#include "common/util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* Server preference: ChaCha20-Poly1305, then AES-GCM; ECDHE only, AEAD only. */
#define TLS12_DEFAULT                                                                              \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:"     \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
#define TLS13_DEFAULT "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"
/* X25519 first: OpenSSL does it fastest (mbedTLS 2.28 is faster at P-256, see tls.c). */
#define GROUPS_DEFAULT "X25519:P-256:P-384"

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
    const char **alpn; /* owned, NULL-terminated, strings in the same block */
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
    struct byteq in;    /* ciphertext fed, not yet read by OpenSSL */
    struct byteq out;   /* ciphertext produced, not yet taken by the caller */
    struct byteq early; /* plaintext written before the handshake finished */
    bool done;
    bool resumed;
    bool failed;
    bool verified;
    char *name;            /* client: server_name as given (the saved session's key) */
    char *sni;             /* server: name the client asked for */
    struct tls_peer *peer; /* names of the peer certificate, copied at handshake end */
    char *vinfo;           /* issuer and subject of the peer certificate during the handshake */
    char *err;             /* allocated on the first failure */
    char cipher[64];
};

/* ---- errors ---- */

static void set_err(struct tls_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(struct tls_conn *c, const char *fmt, ...)
{
    if (!c->err && !(c->err = malloc(TLS_ERR_LEN)))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, TLS_ERR_LEN, fmt, ap);
    va_end(ap);
}

/* The OpenSSL error queue's oldest entry as text (and clears the queue). */
static const char *ossl_str(char *out, size_t cap)
{
    unsigned long e = ERR_peek_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(out, cap, "%s", r ? r : e ? "unknown error" : "no details");
    ERR_clear_error();
    return out;
}

static void describe_verify(struct tls_conn *c, long vr)
{
    const char *issuer = c->vinfo ? c->vinfo : "?";
    const char *subject = c->vinfo ? c->vinfo + strlen(c->vinfo) + 1 : "?";
    switch (vr) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_CERT_REJECTED:
        set_err(c, "peer certificate not trusted (issuer: %s, subject: %s)", issuer, subject);
        break;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        set_err(c, "peer certificate name mismatch (subject: %s)", subject);
        break;
    case X509_V_ERR_CERT_HAS_EXPIRED:
        set_err(c, "peer certificate expired (subject: %s)", subject);
        break;
    case X509_V_ERR_CERT_NOT_YET_VALID:
        set_err(c, "peer certificate not yet valid (subject: %s)", subject);
        break;
    default:
        set_err(c, "peer certificate rejected (subject: %s): %s", subject,
                X509_verify_cert_error_string(vr));
        break;
    }
}

/* Maps a failed SSL call to an errno and a sentence in c->err (same sentences as tls.c). */
static int conn_fail(struct tls_conn *c, int sslerr)
{
    int ret = -EPROTO;
    c->failed = true;
    unsigned long e = ERR_peek_error();
    int reason = e && ERR_GET_LIB(e) == ERR_LIB_SSL ? ERR_GET_REASON(e) : 0;
    char buf[128];
    if (reason > SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
        unsigned a = (unsigned)(reason - SSL_AD_REASON_OFFSET);
        set_err(c, "peer sent fatal alert %u (%s)", a, tls_alert_name(a));
        ret = -ECONNRESET;
    } else {
        switch (reason) {
        case SSL_R_CERTIFICATE_VERIFY_FAILED:
            describe_verify(c, SSL_get_verify_result(c->ssl));
            break;
        case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
            set_err(c, "peer sent no certificate (mutual TLS required)");
            break;
        case SSL_R_NO_SHARED_CIPHER:
            set_err(c, "no common cipher suite (peer offers no ECDHE AEAD suite we accept)");
            break;
        case SSL_R_NO_SUITABLE_KEY_SHARE:
        case SSL_R_NO_SHARED_GROUPS:
            set_err(c, "no common ECDHE group");
            break;
        case SSL_R_UNSUPPORTED_PROTOCOL:
        case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
            set_err(c, "peer does not speak TLS 1.2 or later");
            break;
        case SSL_R_HTTP_REQUEST:
        case SSL_R_HTTPS_PROXY_REQUEST:
        case SSL_R_WRONG_VERSION_NUMBER:
        case SSL_R_PACKET_LENGTH_TOO_LONG:
        case SSL_R_RECORD_LENGTH_MISMATCH:
            set_err(c, "not TLS: invalid record header");
            break;
        case SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC:
        case SSL_R_DECRYPTION_FAILED:
            set_err(c, "record authentication failed (bad MAC)");
            break;
        case SSL_R_NO_APPLICATION_PROTOCOL:
            set_err(c, "no common application protocol (ALPN)");
            break;
        case ERR_R_MALLOC_FAILURE:
            set_err(c, "out of memory");
            ret = -ENOMEM;
            break;
        default:
            if (e)
                set_err(c, "TLS error: %s", ossl_str(buf, sizeof buf));
            else if (sslerr == SSL_ERROR_SYSCALL)
                set_err(c, "TLS error: unexpected end of input");
            else
                set_err(c, "TLS error: %d", sslerr);
            break;
        }
    }
    ERR_clear_error();
    return ret;
}

/* ---- BIO on the byte queues ---- */

static int bio_write(BIO *b, const char *data, int len)
{
    struct tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    if (byteq_append(&c->out, data, (size_t)len, 0) < 0)
        return -1;
    return len;
}

static int bio_read(BIO *b, char *data, int len)
{
    struct tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t n = byteq_len(&c->in);
    if (n == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    if (len <= 0)
        return 0;
    if (n > (size_t)len)
        n = (size_t)len;
    memcpy(data, c->in.data + c->in.rd, n);
    byteq_consume(&c->in, n);
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
    case BIO_CTRL_DUP:
        return 1;
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static void bio_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "edge byteq");
    if (m && BIO_meth_set_write(m, bio_write) && BIO_meth_set_read(m, bio_read) &&
        BIO_meth_set_ctrl(m, bio_ctrl) && BIO_meth_set_create(m, bio_create))
        bio_method = m;
}

/* ---- names in certificates ---- */

/* Subject or issuer as mbedTLS prints it ("CN=partner, O=Example"), so logs and forwarded
 * headers read the same with either backend. Control characters become '?'. */
static void dn_string(const X509_NAME *n, char *out, size_t cap)
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

static void fingerprint(const X509 *x, char *out)
{
    unsigned char h[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (X509_digest(x, EVP_sha256(), h, &n) == 1 && n == 32)
        tls_hex_fingerprint(h, out);
    else
        out[0] = '\0';
}

/* Copies the names of the peer certificate (DNS SANs, CN, subject, fingerprint). */
static struct tls_peer *peer_names(const X509 *p)
{
    char subject[256];
    dn_string(X509_get_subject_name(p), subject, sizeof subject);
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
    fingerprint(p, pe->fingerprint);
    return pe;
}

static bool cert_matches(const struct tls_cert *tc, const char *name, size_t len)
{
    for (size_t i = 0; i < tc->nnames; i++)
        if (tls_name_match(tc->names[i], strlen(tc->names[i]), name, len))
            return true;
    return false;
}

/* The names SNI is matched against: DNS SANs, the CN only when there is none. */
static int cert_names(struct tls_cert *tc)
{
    struct tls_peer *p = peer_names(tc->crt);
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

/* ---- callbacks ---- */

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    struct tls_ctx *ctx = arg;
    struct tls_conn *c = SSL_get_app_data(ssl);
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!c || !name || !*name)
        return SSL_TLSEXT_ERR_OK;
    size_t len = strlen(name);
    if (len > 255)
        return SSL_TLSEXT_ERR_OK;
    free(c->sni);
    c->sni = strdup(name);
    for (size_t i = 0; i < ctx->ncerts; i++) {
        if (!cert_matches(&ctx->certs[i], name, len))
            continue;
        if (i > 0) { /* only this certificate, not the default next to it */
            SSL_certs_clear(ssl);
            if (SSL_use_cert_and_key(ssl, ctx->certs[i].crt, ctx->certs[i].key, ctx->certs[i].chain,
                                     1) != 1) {
                *alert = SSL_AD_INTERNAL_ERROR;
                return SSL_TLSEXT_ERR_ALERT_FATAL;
            }
        }
        break;
    }
    /* Unknown name: the default certificate answers, as most servers do. */
    return SSL_TLSEXT_ERR_OK;
}

/* Keeps the issuer and subject of the peer certificate for the error message; with a CA
 * but without verify_peer, a failure is recorded (tls_conn_peer_verified) but not fatal. */
static int on_verify(int ok, X509_STORE_CTX *xs)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct tls_conn *c = ssl ? SSL_get_app_data(ssl) : NULL;
    if (!c)
        return ok;
    X509 *leaf = X509_STORE_CTX_get0_cert(xs);
    if (!c->vinfo && leaf) {
        char issuer[128], subject[128];
        dn_string(X509_get_issuer_name(leaf), issuer, sizeof issuer);
        dn_string(X509_get_subject_name(leaf), subject, sizeof subject);
        size_t li = strlen(issuer) + 1, ls = strlen(subject) + 1;
        c->vinfo = malloc(li + ls);
        if (c->vinfo) {
            memcpy(c->vinfo, issuer, li);
            memcpy(c->vinfo + li, subject, ls);
        }
    }
    return c->ctx->verify_peer ? ok : 1;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    struct tls_ctx *ctx = arg;
    /* Our order of preference, as mbedTLS does. */
    for (size_t i = 0; ctx->alpn[i]; i++) {
        size_t l = strlen(ctx->alpn[i]);
        for (unsigned o = 0; o < inlen; o += 1u + in[o]) {
            if (o + 1u + in[o] > inlen)
                break;
            if (in[o] == l && memcmp(in + o + 1, ctx->alpn[i], l) == 0) {
                *out = in + o + 1;
                *outlen = in[o];
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL; /* no_application_protocol */
}

/* Client: keeps the newest session (TLS 1.3 tickets come after the handshake). */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct tls_conn *c = SSL_get_app_data(ssl);
    if (!c || !c->name || strlen(c->name) >= sizeof c->ctx->session_name ||
        !SSL_SESSION_is_resumable(sess))
        return 0;
    struct tls_ctx *ctx = c->ctx;
    pthread_mutex_lock(&ctx->lock);
    SSL_SESSION *old = ctx->session;
    ctx->session = sess;
    snprintf(ctx->session_name, sizeof ctx->session_name, "%s", c->name);
    pthread_mutex_unlock(&ctx->lock);
    SSL_SESSION_free(old);
    return 1; /* we keep the reference */
}

static int new_ticket_key(struct ticket_key *k, time_t now)
{
    if (RAND_bytes(k->name, sizeof k->name) != 1 || RAND_bytes(k->aes, sizeof k->aes) != 1 ||
        RAND_bytes(k->hmac, sizeof k->hmac) != 1)
        return -EIO;
    k->born = now;
    return 0;
}

/* Session ticket keys: random, a new one every TLS_TICKET_LIFETIME_S, the previous one
 * still accepted for another period (as the mbedTLS backend does). */
static int on_ticket_key(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *ectx,
                         EVP_MAC_CTX *hctx, int enc)
{
    struct tls_ctx *ctx = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    struct ticket_key k;
    int found = -1;
    time_t now = time(NULL);
    pthread_mutex_lock(&ctx->lock);
    if (now - ctx->keys[0].born >= TLS_TICKET_LIFETIME_S) {
        ctx->keys[1] = now - ctx->keys[0].born < 2 * TLS_TICKET_LIFETIME_S
                           ? ctx->keys[0]
                           : (struct ticket_key){.born = 0};
        if (new_ticket_key(&ctx->keys[0], now) != 0)
            ctx->keys[0].born = 0;
    }
    for (int i = 0; i < 2; i++) {
        if (ctx->keys[i].born && (enc || memcmp(ctx->keys[i].name, name, 16) == 0)) {
            k = ctx->keys[i];
            found = i;
            break;
        }
    }
    pthread_mutex_unlock(&ctx->lock);
    if (found < 0)
        return enc ? -1 : 0; /* unknown key: a full handshake */
    /* 2: accepted, and a new ticket replaces it (TLS 1.3 tickets are best used once, and a
     * client keeps only its newest). */
    int rc = enc ? 1 : 2;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof k.hmac),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end()};
    if (enc) {
        memcpy(name, k.name, 16);
        if (RAND_bytes(iv, 16) != 1 ||
            EVP_EncryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k.aes, iv) != 1)
            rc = -1;
    } else if (EVP_DecryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k.aes, iv) != 1) {
        rc = -1;
    }
    if (rc > 0 && EVP_MAC_CTX_set_params(hctx, params) != 1)
        rc = -1;
    OPENSSL_cleanse(&k, sizeof k);
    return rc;
}

static int no_password(char *buf, int size, int rw, void *u)
{
    (void)buf;
    (void)size;
    (void)rw;
    (void)u;
    return 0;
}

/* ---- context ---- */

/* Reads the certificates of a PEM (or DER) file. A CA bundle (bundle = true) may hold a few
 * certificates that do not parse: it is accepted if at least one loads. */
static int load_certs(const char *path, bool bundle, STACK_OF(X509) * out, char *err, size_t cap)
{
    unsigned char *b;
    size_t n;
    int rc = tls_read_file(path, &b, &n, err, cap);
    if (rc)
        return rc;
    BIO *bio = BIO_new_mem_buf(b, (int)(n - 1));
    int got = 0;
    X509 *x;
    while (bio && (x = PEM_read_bio_X509(bio, NULL, no_password, NULL)) != NULL) {
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
    free(b);
    if (got > 0) {
        ERR_clear_error();
        return 0;
    }
    char e[128];
    tls_errf(err, cap, "%s: not a valid certificate (%s)", path,
             n <= 1 ? "empty file" : ossl_str(e, sizeof e));
    return -EINVAL;
}

static int load_key(EVP_PKEY **out, const char *path, char *err, size_t cap)
{
    unsigned char *b;
    size_t n;
    int rc = tls_read_file(path, &b, &n, err, cap);
    if (rc)
        return rc;
    BIO *bio = BIO_new_mem_buf(b, (int)(n - 1));
    EVP_PKEY *k = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL) : NULL;
    BIO_free(bio);
    if (!k && n > 1) {
        const unsigned char *p = b;
        k = d2i_AutoPrivateKey(NULL, &p, (long)(n - 1));
    }
    OPENSSL_cleanse(b, n);
    free(b);
    if (!k) {
        char e[128];
        tls_errf(err, cap, "%s: not a valid private key (%s)", path, ossl_str(e, sizeof e));
        return -EINVAL;
    }
    ERR_clear_error();
    *out = k;
    return 0;
}

/* The CA bundle into the context's store (a file, or every file of a directory). A server
 * also names the CAs in its CertificateRequest, as mbedTLS does. */
static int load_ca(struct tls_ctx *c, const char *path, char *err, size_t cap)
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

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v;
    X509V3_set_ctx_nodb(&v);
    X509V3_set_ctx(&v, x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v, nid, value);
    int ok = e && X509_add_ext(x, e, -1) == 1;
    X509_EXTENSION_free(e);
    return ok ? 0 : -1;
}

/* An ECDSA P-256 key and a self-signed certificate for name, valid for a year, with name as
 * CN and dNSName (iPAddress for an IP literal). */
static int make_self_signed(struct tls_cert *out, const char *name, char *err, size_t cap)
{
    int rc = tls_check_self_signed_name(name, err, cap);
    if (rc)
        return rc;
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    BIGNUM *bn = NULL;
    unsigned char rnd[16], ip[16];
    char san[256];
    bool isip = inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1;
    snprintf(san, sizeof san, "%s:%s", isip ? "IP" : "DNS", name);
    bool ok = k && x && RAND_bytes(rnd, sizeof rnd) == 1;
    if (ok) {
        rnd[0] = (unsigned char)((rnd[0] & 0x7f) | 0x01);
        bn = BN_bin2bn(rnd, sizeof rnd, NULL);
        X509_NAME *n = X509_get_subject_name(x);
        ok = bn && X509_set_version(x, X509_VERSION_3) == 1 &&
             BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL &&
             X509_gmtime_adj(X509_getm_notBefore(x), -86400) != NULL &&
             X509_gmtime_adj(X509_getm_notAfter(x), 365L * 86400) != NULL &&
             X509_set_pubkey(x, k) == 1 &&
             X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1,
                                        0) == 1 &&
             X509_set_issuer_name(x, n) == 1 &&
             add_ext(x, NID_basic_constraints, "CA:FALSE") == 0 &&
             add_ext(x, NID_subject_alt_name, san) == 0 && X509_sign(x, k, EVP_sha256()) > 0;
    }
    BN_free(bn);
    if (!ok) {
        char e[128];
        tls_errf(err, cap, "cannot generate a self-signed certificate: %s", ossl_str(e, sizeof e));
        EVP_PKEY_free(k);
        X509_free(x);
        return -EIO;
    }
    out->crt = x;
    out->key = k;
    return 0;
}

/* "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256:TLS-AES-128-GCM-SHA256" (mbedTLS/IANA names, '-'
 * or '_') into OpenSSL's TLS 1.2 cipher list and TLS 1.3 suite list. */
static int parse_suites(const char *spec, char **l12, char **l13, char *err, size_t cap)
{
    SSL_CTX *all = SSL_CTX_new(TLS_method());
    STACK_OF(SSL_CIPHER) *sk = NULL;
    size_t room = strlen(spec) * 2 + 64;
    char *a = calloc(1, room), *b = calloc(1, room);
    int rc = -ENOMEM;
    if (!all || !a || !b || SSL_CTX_set_cipher_list(all, "ALL:COMPLEMENTOFALL:@SECLEVEL=0") != 1)
        goto out;
    sk = SSL_CTX_get_ciphers(all);
    rc = -EINVAL;
    for (const char *p = spec; *p;) {
        size_t l = strcspn(p, ":,");
        char name[96];
        if (l == 0 || l >= sizeof name) {
            tls_errf(err, cap, "bad cipher suite list \"%s\"", spec);
            goto out;
        }
        memcpy(name, p, l);
        name[l] = '\0';
        for (char *q = name; *q; q++)
            if (*q == '-')
                *q = '_';
        const SSL_CIPHER *found = NULL;
        for (int i = 0; i < sk_SSL_CIPHER_num(sk) && !found; i++) {
            const SSL_CIPHER *ci = sk_SSL_CIPHER_value(sk, i);
            const char *std = SSL_CIPHER_standard_name(ci);
            if (std && strcasecmp(std, name) == 0)
                found = ci;
        }
        if (!found) {
            for (char *q = name; *q; q++)
                if (*q == '_')
                    *q = '-';
            tls_errf(err, cap, "unknown cipher suite \"%s\"", name);
            goto out;
        }
        bool v13 = SSL_CIPHER_get_kx_nid(found) == NID_kx_any; /* TLS 1.3 suites */
        char *dst = v13 ? b : a;
        const char *nm = v13 ? SSL_CIPHER_standard_name(found) : SSL_CIPHER_get_name(found);
        size_t dl = strlen(dst);
        snprintf(dst + dl, room - dl, "%s%s", dl ? ":" : "", nm);
        p += l;
        if (*p)
            p++;
    }
    if (!a[0] && !b[0]) {
        tls_errf(err, cap, "bad cipher suite list \"%s\"", spec);
        goto out;
    }
    *l12 = a;
    *l13 = b;
    a = b = NULL;
    rc = 0;
out:
    if (rc == -ENOMEM)
        tls_errf(err, cap, "out of memory");
    free(a);
    free(b);
    SSL_CTX_free(all);
    ERR_clear_error();
    return rc;
}

/* "x25519:secp256r1" (mbedTLS names, ':' or ',') into OpenSSL's group list. */
static int set_groups(SSL_CTX *s, const char *spec, char *err, size_t cap)
{
    static const struct {
        const char *ours, *ossl;
    } alias[] = {{"x25519", "X25519"},   {"x448", "X448"},       {"secp256r1", "P-256"},
                 {"p-256", "P-256"},     {"secp384r1", "P-384"}, {"p-384", "P-384"},
                 {"secp521r1", "P-521"}, {"p-521", "P-521"}};
    char list[512] = "";
    size_t o = 0;
    for (const char *p = spec; *p;) {
        size_t l = strcspn(p, ":,");
        char name[32];
        if (l == 0 || l >= sizeof name) {
            tls_errf(err, cap, "bad group list \"%s\"", spec);
            return -EINVAL;
        }
        memcpy(name, p, l);
        name[l] = '\0';
        const char *g = name;
        for (size_t i = 0; i < sizeof alias / sizeof alias[0]; i++)
            if (strcasecmp(name, alias[i].ours) == 0)
                g = alias[i].ossl;
        if (SSL_CTX_set1_groups_list(s, g) != 1) {
            ERR_clear_error();
            tls_errf(err, cap, "unknown ECDHE group \"%s\"", name);
            return -EINVAL;
        }
        int w = snprintf(list + o, sizeof list - o, "%s%s", o ? ":" : "", g);
        if (w < 0 || (size_t)w >= sizeof list - o) {
            tls_errf(err, cap, "bad group list \"%s\"", spec);
            return -EINVAL;
        }
        o += (size_t)w;
        p += l;
        if (*p)
            p++;
    }
    if (!o || SSL_CTX_set1_groups_list(s, list) != 1) {
        ERR_clear_error();
        tls_errf(err, cap, "bad group list \"%s\"", spec);
        return -EINVAL;
    }
    return 0;
}

static int copy_alpn(struct tls_ctx *c, const char *const *alpn)
{
    size_t n = 0, bytes = 0;
    while (alpn[n]) {
        size_t l = strlen(alpn[n]);
        if (l == 0 || l > 255)
            return -EINVAL;
        bytes += l + 1;
        n++;
    }
    const char **v = malloc((n + 1) * sizeof *v + bytes);
    c->alpn_wire = malloc(bytes);
    if (!v || !c->alpn_wire) {
        free(v);
        return -ENOMEM;
    }
    char *s = (char *)(v + n + 1);
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(alpn[i]);
        memcpy(s, alpn[i], l + 1);
        v[i] = s;
        s += l + 1;
        c->alpn_wire[w++] = (unsigned char)l;
        memcpy(c->alpn_wire + w, alpn[i], l);
        w += l;
    }
    v[n] = NULL;
    c->alpn = v;
    c->alpn_wire_len = w;
    return 0;
}

static void ctx_free(struct tls_ctx *c)
{
    SSL_CTX_free(c->ssl);
    for (size_t i = 0; i < c->ncerts; i++) {
        X509_free(c->certs[i].crt);
        sk_X509_pop_free(c->certs[i].chain, X509_free);
        EVP_PKEY_free(c->certs[i].key);
        for (size_t k = 0; k < c->certs[i].nnames; k++)
            free(c->certs[i].names[k]);
        free(c->certs[i].names);
    }
    free(c->certs);
    SSL_SESSION_free(c->session);
    OPENSSL_cleanse(c->keys, sizeof c->keys);
    pthread_mutex_destroy(&c->lock);
    free(c->alpn);
    free(c->alpn_wire);
    free(c);
}

/* Loads certificate i (PEM chain and key) and checks that they belong together. */
static int load_cert(struct tls_cert *tc, const struct tls_cert_opts *co, size_t i, char *err,
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

int tls_ctx_create(struct tls_ctx **out, const struct tls_opts *o, char *err, size_t errcap)
{
    static const unsigned char sid_ctx[] = "edge-suite";
    char e[128];
    int rc;

    if (!out || !o || (o->ncerts && !o->certs)) {
        tls_errf(err, errcap, "invalid TLS options");
        return -EINVAL;
    }
    pthread_once(&bio_once, bio_method_init);
    struct tls_ctx *c = calloc(1, sizeof *c);
    if (!c || !bio_method) {
        free(c);
        tls_errf(err, errcap, "out of memory");
        return -ENOMEM;
    }
    c->refs = 1;
    c->server = o->server;
    c->verify_peer = o->verify_peer;
    c->handshake_timeout_ms = o->handshake_timeout_ms;
    pthread_mutex_init(&c->lock, NULL);
    ERR_clear_error();
    c->ssl = SSL_CTX_new(o->server ? TLS_server_method() : TLS_client_method());
    if (!c->ssl) {
        tls_errf(err, errcap, "TLS config: %s", ossl_str(e, sizeof e));
        rc = -ENOMEM;
        goto fail;
    }
    SSL_CTX_set_app_data(c->ssl, c);

    /* Certificates. */
    size_t ncerts = o->ncerts;
    bool self = c->server && ncerts == 0;
    c->certs = calloc(self ? 1 : (ncerts ? ncerts : 1), sizeof *c->certs);
    if (!c->certs) {
        rc = -ENOMEM;
        tls_errf(err, errcap, "out of memory");
        goto fail;
    }
    if (self) {
        c->ncerts = 1;
        rc = make_self_signed(&c->certs[0], o->self_signed_name ? o->self_signed_name : "localhost",
                              err, errcap);
        if (rc)
            goto fail;
    }
    for (size_t i = 0; i < ncerts; i++) {
        c->ncerts++;
        rc = load_cert(&c->certs[i], &o->certs[i], i, err, errcap);
        if (rc)
            goto fail;
    }
    for (size_t i = 0; i < c->ncerts; i++) {
        if ((rc = cert_names(&c->certs[i])) != 0) {
            tls_errf(err, errcap, "out of memory");
            goto fail;
        }
    }
    if (c->ncerts) {
        fingerprint(c->certs[0].crt, c->fingerprint);
        if (SSL_CTX_use_cert_and_key(c->ssl, c->certs[0].crt, c->certs[0].key, c->certs[0].chain,
                                     1) != 1) {
            tls_errf(err, errcap, "TLS config: %s", ossl_str(e, sizeof e));
            rc = -EINVAL;
            goto fail;
        }
    }

    if (o->ca_file) {
        rc = load_ca(c, o->ca_file, err, errcap);
        if (rc)
            goto fail;
        c->has_ca = true;
    } else if (o->verify_peer) {
        tls_errf(err, errcap, "verify_peer needs a CA bundle (ca_file)");
        rc = -EINVAL;
        goto fail;
    }

    /* Protocol: TLS 1.2 and 1.3, AEAD ECDHE suites, no renegotiation, no 0-RTT. */
    SSL_CTX_set_min_proto_version(c->ssl, TLS1_2_VERSION);
    SSL_CTX_set_options(c->ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                    SSL_OP_NO_COMPRESSION |
                                    (o->session_tickets ? 0 : SSL_OP_NO_TICKET));
    SSL_CTX_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_max_early_data(c->ssl, 0);
    const char *l12 = TLS12_DEFAULT, *l13 = TLS13_DEFAULT;
    char *p12 = NULL, *p13 = NULL;
    if (o->ciphers) {
        rc = parse_suites(o->ciphers, &p12, &p13, err, errcap);
        if (rc)
            goto fail;
        l12 = p12;
        l13 = p13;
        /* A list names every suite allowed: no TLS 1.3 suite in it, no TLS 1.3. */
        if (!*l13)
            SSL_CTX_set_max_proto_version(c->ssl, TLS1_2_VERSION);
        if (!*l12)
            SSL_CTX_set_min_proto_version(c->ssl, TLS1_3_VERSION);
    }
    bool ok = (!*l12 || SSL_CTX_set_cipher_list(c->ssl, l12) == 1) &&
              (!*l13 || SSL_CTX_set_ciphersuites(c->ssl, l13) == 1);
    free(p12);
    free(p13);
    if (!ok) {
        tls_errf(err, errcap, "cipher suites: %s", ossl_str(e, sizeof e));
        rc = -EINVAL;
        goto fail;
    }
    rc = set_groups(c->ssl, o->groups ? o->groups : GROUPS_DEFAULT, err, errcap);
    if (rc)
        goto fail;

    int mode = SSL_VERIFY_NONE;
    if (o->verify_peer)
        mode = SSL_VERIFY_PEER | (c->server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0);
    else if (c->has_ca)
        mode = SSL_VERIFY_PEER;
    SSL_CTX_set_verify(c->ssl, mode, on_verify);

    if (o->alpn && o->alpn[0]) {
        rc = copy_alpn(c, o->alpn);
        if (rc) {
            tls_errf(err, errcap, "bad ALPN list");
            goto fail;
        }
        if (c->server)
            SSL_CTX_set_alpn_select_cb(c->ssl, on_alpn, c);
        else if (SSL_CTX_set_alpn_protos(c->ssl, c->alpn_wire, (unsigned)c->alpn_wire_len) != 0) {
            tls_errf(err, errcap, "bad ALPN list");
            rc = -EINVAL;
            goto fail;
        }
    }

    if (c->server) {
        /* Also with one certificate: it records the name the client asked for. */
        SSL_CTX_set_tlsext_servername_callback(c->ssl, on_servername);
        SSL_CTX_set_tlsext_servername_arg(c->ssl, c);
        SSL_CTX_set_session_id_context(c->ssl, sid_ctx, sizeof sid_ctx - 1);
        SSL_CTX_set_session_cache_mode(c->ssl, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(c->ssl, o->session_cache_size ? (long)o->session_cache_size
                                                                  : TLS_CACHE_DEFAULT);
        SSL_CTX_set_timeout(c->ssl, TLS_CACHE_TIMEOUT_S);
        SSL_CTX_set_num_tickets(c->ssl, 1);
        if (o->session_tickets) {
            if (new_ticket_key(&c->keys[0], time(NULL)) != 0 ||
                SSL_CTX_set_tlsext_ticket_key_evp_cb(c->ssl, on_ticket_key) != 1) {
                tls_errf(err, errcap, "session tickets: cannot make a key");
                rc = -EIO;
                goto fail;
            }
        }
    } else {
        SSL_CTX_set_session_cache_mode(c->ssl,
                                       SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(c->ssl, on_new_session);
    }
    ERR_clear_error();
    *out = c;
    return 0;
fail:
    ERR_clear_error();
    ctx_free(c);
    return rc;
}

void tls_ctx_ref(struct tls_ctx *c)
{
    if (c)
        __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}

void tls_ctx_unref(struct tls_ctx *c)
{
    if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
        ctx_free(c);
}

uint32_t tls_ctx_handshake_timeout(const struct tls_ctx *c)
{
    return c ? c->handshake_timeout_ms : 0;
}

bool tls_ctx_is_server(const struct tls_ctx *c)
{
    return c && c->server;
}

const char *tls_ctx_fingerprint(const struct tls_ctx *c)
{
    return c && c->fingerprint[0] ? c->fingerprint : NULL;
}

/* ---- connection ---- */

int tls_conn_create(struct tls_conn **out, struct tls_ctx *ctx, const char *server_name)
{
    if (!out || !ctx)
        return -EINVAL;
    struct tls_conn *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    ERR_clear_error();
    c->ssl = SSL_new(ctx->ssl);
    BIO *bio = c->ssl ? BIO_new(bio_method) : NULL;
    if (!bio) {
        SSL_free(c->ssl);
        free(c);
        ERR_clear_error();
        return -ENOMEM;
    }
    BIO_set_data(bio, c);
    SSL_set_bio(c->ssl, bio, bio); /* one reference, for both directions */
    SSL_set_app_data(c->ssl, c);
    c->ctx = ctx;
    tls_ctx_ref(ctx);
    if (ctx->server) {
        SSL_set_accept_state(c->ssl);
        *out = c;
        return 0;
    }
    SSL_set_connect_state(c->ssl);
    if (server_name && *server_name) {
        uint8_t ip[16];
        size_t iplen = 0;
        if (inet_pton(AF_INET, server_name, ip) == 1)
            iplen = 4;
        else if (inet_pton(AF_INET6, server_name, ip) == 1)
            iplen = 16;
        bool ok = (c->name = strdup(server_name)) != NULL;
        if (ok && iplen) /* RFC 6066 3: no IP literals in SNI; checked against iPAddress */
            ok = X509_VERIFY_PARAM_set1_ip(SSL_get0_param(c->ssl), ip, iplen) == 1;
        else if (ok)
            ok = SSL_set_tlsext_host_name(c->ssl, server_name) == 1 &&
                 SSL_set1_host(c->ssl, server_name) == 1;
        if (!ok) {
            tls_conn_destroy(c);
            return -EINVAL;
        }
        SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        pthread_mutex_lock(&ctx->lock);
        if (ctx->session && strcmp(ctx->session_name, server_name) == 0)
            SSL_set_session(c->ssl, ctx->session);
        pthread_mutex_unlock(&ctx->lock);
    }
    /* The client speaks first: put the ClientHello in the outgoing buffer now. */
    int rc = SSL_do_handshake(c->ssl);
    int e = SSL_get_error(c->ssl, rc);
    if (rc != 1 && e != SSL_ERROR_WANT_READ) {
        conn_fail(c, e);
        tls_conn_destroy(c);
        return -EPROTO;
    }
    *out = c;
    return 0;
}

void tls_conn_destroy(struct tls_conn *c)
{
    if (!c)
        return;
    /* A connection that ends without close_notify is not a bad session: OpenSSL would
     * take its session out of the cache (and make the client's saved copy unusable). */
    if (c->done && !c->failed)
        SSL_set_shutdown(c->ssl, SSL_get_shutdown(c->ssl) | SSL_SENT_SHUTDOWN);
    SSL_free(c->ssl); /* frees the BIO */
    byteq_free(&c->in);
    byteq_free(&c->out);
    if (c->early.data)
        OPENSSL_cleanse(c->early.data, c->early.cap);
    byteq_free(&c->early);
    free(c->name);
    free(c->sni);
    free(c->err);
    free(c->vinfo);
    free(c->peer);
    tls_ctx_unref(c->ctx);
    free(c);
}

int tls_conn_feed(struct tls_conn *c, const uint8_t *data, size_t len)
{
    if (!c || (!data && len))
        return -EINVAL;
    return byteq_append(&c->in, data, len, TLS_IN_CAP);
}

static ssize_t write_records(struct tls_conn *c, const uint8_t *data, size_t len)
{
    size_t off = 0;
    while (off < len) {
        size_t w = 0;
        ERR_clear_error();
        int rc = SSL_write_ex(c->ssl, data + off, len - off, &w);
        if (rc != 1) {
            int e = SSL_get_error(c->ssl, rc);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                continue; /* cannot happen with our BIO, which always accepts */
            return conn_fail(c, e);
        }
        off += w;
    }
    return (ssize_t)len;
}

static void handshake_finished(struct tls_conn *c)
{
    c->done = true;
    c->resumed = SSL_session_reused(c->ssl) == 1;
    free(c->vinfo);
    c->vinfo = NULL;
    X509 *p = SSL_get0_peer_certificate(c->ssl);
    if (p)
        c->peer = peer_names(p);
    c->verified = p != NULL && SSL_get_verify_mode(c->ssl) != SSL_VERIFY_NONE &&
                  SSL_get_verify_result(c->ssl) == X509_V_OK;
    const SSL_CIPHER *ci = SSL_get_current_cipher(c->ssl);
    const char *std = ci ? SSL_CIPHER_standard_name(ci) : NULL;
    snprintf(c->cipher, sizeof c->cipher, "%s", std ? std : "?");
    for (char *q = c->cipher; *q; q++)
        if (*q == '_')
            *q = '-';
}

static int conn_handshake(struct tls_conn *c)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(c->ssl);
    if (rc != 1) {
        int e = SSL_get_error(c->ssl, rc);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return -EAGAIN;
        return conn_fail(c, e);
    }
    handshake_finished(c);
    if (byteq_len(&c->early)) {
        ssize_t w = write_records(c, c->early.data + c->early.rd, byteq_len(&c->early));
        OPENSSL_cleanse(c->early.data, c->early.cap);
        byteq_free(&c->early);
        if (w < 0)
            return (int)w;
    }
    return 0;
}

ssize_t tls_conn_read(struct tls_conn *c, uint8_t *out, size_t cap)
{
    if (!c || (!out && cap))
        return -EINVAL;
    if (c->failed)
        return -EPROTO;
    if (!c->done) {
        int rc = conn_handshake(c);
        if (rc)
            return rc;
    }
    if (cap == 0)
        return -EAGAIN;
    size_t got = 0;
    ERR_clear_error();
    int rc = SSL_read_ex(c->ssl, out, cap, &got);
    if (rc == 1)
        return (ssize_t)got;
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return -EAGAIN;
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    return conn_fail(c, e);
}

ssize_t tls_conn_write(struct tls_conn *c, const uint8_t *data, size_t len)
{
    if (!c || (!data && len))
        return -EINVAL;
    if (c->failed)
        return -EPROTO;
    if (len == 0)
        return 0;
    if (!c->done) {
        int rc = byteq_append(&c->early, data, len, 0);
        return rc ? rc : (ssize_t)len;
    }
    return write_records(c, data, len);
}

void tls_conn_close_notify(struct tls_conn *c)
{
    if (c && c->done && !c->failed) {
        ERR_clear_error();
        SSL_shutdown(c->ssl);
        ERR_clear_error();
    }
}

size_t tls_conn_pending(const struct tls_conn *c, const uint8_t **p)
{
    if (!c || byteq_len(&c->out) == 0) {
        if (p)
            *p = NULL;
        return 0;
    }
    if (p)
        *p = c->out.data + c->out.rd;
    return byteq_len(&c->out);
}

void tls_conn_consume(struct tls_conn *c, size_t n)
{
    if (c)
        byteq_consume(&c->out, n);
}

bool tls_conn_handshake_done(const struct tls_conn *c)
{
    return c && c->done;
}

bool tls_conn_resumed(const struct tls_conn *c)
{
    return c && c->done && c->resumed;
}

const char *tls_conn_error(const struct tls_conn *c)
{
    if (!c || (!c->err && !c->failed))
        return NULL;
    return c->err ? c->err : "out of memory";
}

const char *tls_conn_sni(const struct tls_conn *c)
{
    return c ? c->sni : NULL;
}

const char *tls_conn_alpn(const struct tls_conn *c)
{
    if (!c || !c->done || !c->ctx->alpn)
        return NULL;
    const unsigned char *p;
    unsigned int n;
    SSL_get0_alpn_selected(c->ssl, &p, &n);
    /* The protocol is one of ours: hand out our NUL-terminated copy. */
    for (size_t i = 0; p && c->ctx->alpn[i]; i++)
        if (strlen(c->ctx->alpn[i]) == n && memcmp(c->ctx->alpn[i], p, n) == 0)
            return c->ctx->alpn[i];
    return NULL;
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
    return c && c->done ? c->cipher : NULL;
}

const char *tls_conn_version(const struct tls_conn *c)
{
    return c && c->done ? SSL_get_version(c->ssl) : NULL;
}

const char *tls_conn_peer_cn(const struct tls_conn *c)
{
    return c && c->peer ? c->peer->cn : NULL;
}

const char *tls_conn_peer_san(const struct tls_conn *c, size_t i)
{
    return c && c->peer && i < c->peer->nsans ? c->peer->sans[i] : NULL;
}

const char *tls_conn_peer_subject(const struct tls_conn *c)
{
    return c && c->peer ? c->peer->subject : NULL;
}

const char *tls_conn_peer_fingerprint(const struct tls_conn *c)
{
    return c && c->peer ? c->peer->fingerprint : NULL;
}

bool tls_conn_peer_has_name(const struct tls_conn *c, const char *name)
{
    return c && c->verified && tls_peer_has_name(c->peer, name);
}

bool tls_conn_peer_verified(const struct tls_conn *c)
{
    return c && c->verified;
}

int tls_cert_inspect(const char *cert_file, const char *key_file, struct tls_cert_info *info,
                     char *err, size_t errcap)
{
    STACK_OF(X509) *chain = sk_X509_new_null();
    if (!chain)
        return -ENOMEM;
    EVP_PKEY *k = NULL;
    int rc = load_certs(cert_file, false, chain, err, errcap);
    X509 *x = rc == 0 ? sk_X509_value(chain, 0) : NULL;
    if (rc == 0 && key_file) {
        rc = load_key(&k, key_file, err, errcap);
        if (rc == 0 && X509_check_private_key(x, k) != 1) {
            tls_errf(err, errcap, "%s does not match the certificate in %s", key_file, cert_file);
            rc = -EKEYREJECTED;
        }
        ERR_clear_error();
    }
    if (rc == 0) {
        memset(info, 0, sizeof *info);
        dn_string(X509_get_subject_name(x), info->subject, sizeof info->subject);
        const ASN1_INTEGER *sn = X509_get0_serialNumber(x);
        size_t o = 0;
        for (int i = 0; i < sn->length && o + 4 <= sizeof info->serial; i++)
            o += (size_t)snprintf(info->serial + o, sizeof info->serial - o, i ? ":%02X" : "%02X",
                                  sn->data[i]);
        struct tm tm;
        if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
            info->not_after = (int64_t)timegm(&tm);
        fingerprint(x, info->fingerprint);
    }
    EVP_PKEY_free(k);
    sk_X509_pop_free(chain, X509_free);
    return rc;
}

const char *tls_backend(void)
{
    return "OpenSSL " OPENSSL_VERSION_STR;
}
