/* TLS on byte buffers: the mbedTLS 2.28 backend of common/tls.h (the default build; make
 * TLS=openssl builds common/tls_openssl.c instead). The only file that includes mbedTLS SSL
 * headers; what does not depend on the library is in tls_shared.c. */
#include "common/tls.h"
#include "common/tls_shared.h"
#include "common/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
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
#endif

#define TLS_BUF_IN MBEDTLS_SSL_IN_BUFFER_LEN
#define TLS_BUF_PAIR (MBEDTLS_SSL_IN_BUFFER_LEN + MBEDTLS_SSL_OUT_BUFFER_LEN)
#define TLS_POOL_MAX 32 /* spare buffer pairs per ctx: at most ~1 MiB */

/* TLS_TICKET_LIFETIME_S (tls_shared.h): mbedTLS starts a new random ticket key every period
 * and keeps the previous one for another period (key lifetime = 2 x ticket lifetime). */

struct tls_cert {
    mbedtls_x509_crt crt;
    mbedtls_pk_context key;
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
    struct byteq in;    /* ciphertext fed, not yet consumed by mbedTLS */
    struct byteq out;   /* ciphertext produced, not yet taken by the caller */
    struct byteq early; /* plaintext written before the handshake finished */
    bool done;       /* handshake finished */
    bool resumed;
    bool failed;
    bool verified;
    bool asleep;    /* record buffers given back while idle */
    bool pooled;    /* the record buffers are one block from the ctx pool */
    size_t in_used; /* bytes of in_buf written since it was taken: wiped on release */
    uint8_t ctr_in[8], ctr_out[8]; /* record sequence numbers while asleep */
    bool ip_name; /* client: server_name is an IP literal, checked against IP SANs */
    uint8_t ip[16];
    size_t iplen;
    char *sni;
    struct tls_peer *peer; /* names of the peer certificate, copied at handshake end */
    char *vinfo;           /* issuer and subject of the peer certificate during the handshake */
    char *err;             /* allocated on the first failure: most connections never have one */
};

/* ---- errors ---- */

static void set_err(struct tls_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(struct tls_conn *c, const char *fmt, ...)
{
    if (!c->err && !(c->err = malloc(TLS_ERR_LEN)))
        return; /* tls_conn_error then says "out of memory" */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, TLS_ERR_LEN, fmt, ap);
    va_end(ap);
}

static const char *mbed_str(int rc, char *out, size_t cap)
{
    mbedtls_strerror(rc, out, cap);
    return out;
}

/* Describes a failed certificate verification in one line. */
static void describe_verify(struct tls_conn *c, uint32_t flags)
{
    /* mbedTLS drops a rejected peer certificate, so on_verify kept its names. */
    const char *issuer = c->vinfo ? c->vinfo : "?";
    const char *subject = c->vinfo ? c->vinfo + strlen(c->vinfo) + 1 : "?";
    if (!c->vinfo)
        set_err(c, "peer sent no certificate");
    else if (flags & (MBEDTLS_X509_BADCERT_NOT_TRUSTED | MBEDTLS_X509_BADCERT_MISSING))
        set_err(c, "peer certificate not trusted (issuer: %s, subject: %s)", issuer, subject);
    else if (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH)
        set_err(c, "peer certificate name mismatch (subject: %s)", subject);
    else if (flags & MBEDTLS_X509_BADCERT_EXPIRED)
        set_err(c, "peer certificate expired (subject: %s)", subject);
    else if (flags & MBEDTLS_X509_BADCERT_FUTURE)
        set_err(c, "peer certificate not yet valid (subject: %s)", subject);
    else {
        char info[160];
        if (mbedtls_x509_crt_verify_info(info, sizeof info, "", flags) < 0)
            strcpy(info, "?");
        size_t n = strlen(info);
        while (n && info[n - 1] == '\n')
            info[--n] = '\0';
        set_err(c, "peer certificate rejected (subject: %s): %s", subject, info);
    }
}

/* Maps an mbedTLS failure to an errno and a sentence in c->err. */
static int conn_fail(struct tls_conn *c, int rc)
{
    char buf[128];
    int ret = -EPROTO;
    c->failed = true;
    switch (rc) {
    case MBEDTLS_ERR_X509_CERT_VERIFY_FAILED:
        describe_verify(c, mbedtls_ssl_get_verify_result(&c->ssl));
        break;
    case MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE:
        set_err(c, "peer sent no certificate (mutual TLS required)");
        break;
    case MBEDTLS_ERR_SSL_PEER_VERIFY_FAILED:
        set_err(c, "peer certificate rejected");
        break;
    case MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE: {
        unsigned a = c->ssl.in_msg ? c->ssl.in_msg[1] : 0;
        set_err(c, "peer sent fatal alert %u (%s)", a, tls_alert_name(a));
        ret = -ECONNRESET;
        break;
    }
    case MBEDTLS_ERR_SSL_NO_CIPHER_CHOSEN:
    case MBEDTLS_ERR_SSL_NO_USABLE_CIPHERSUITE:
        set_err(c, "no common cipher suite (peer offers no ECDHE AEAD suite we accept)");
        break;
    case MBEDTLS_ERR_SSL_BAD_HS_PROTOCOL_VERSION:
        set_err(c, "peer does not speak TLS 1.2 or later");
        break;
    case MBEDTLS_ERR_SSL_INVALID_RECORD:
        set_err(c, "not TLS: invalid record header");
        break;
    case MBEDTLS_ERR_SSL_BAD_HS_CLIENT_HELLO:
        set_err(c, "bad ClientHello");
        break;
    case MBEDTLS_ERR_SSL_INVALID_MAC:
        set_err(c, "record authentication failed (bad MAC)");
        break;
    case MBEDTLS_ERR_SSL_ALLOC_FAILED:
        set_err(c, "out of memory");
        ret = -ENOMEM;
        break;
    default:
        set_err(c, "TLS error: %s", mbed_str(rc, buf, sizeof buf));
        break;
    }
    return ret;
}

/* ---- BIO on the buffers ---- */

static int bio_send(void *p, const unsigned char *data, size_t len)
{
    struct tls_conn *c = p;
    if (byteq_append(&c->out, data, len, 0) < 0)
        return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    return (int)len;
}

static int bio_recv(void *p, unsigned char *data, size_t len)
{
    struct tls_conn *c = p;
    size_t n = byteq_len(&c->in);
    if (n == 0)
        return MBEDTLS_ERR_SSL_WANT_READ;
    if (n > len)
        n = len;
    memcpy(data, c->in.data + c->in.rd, n);
    if (c->ssl.in_buf && data >= c->ssl.in_buf) {
        size_t end = (size_t)(data - c->ssl.in_buf) + n;
        if (end > c->in_used)
            c->in_used = end;
    }
    byteq_consume(&c->in, n);
    return (int)n;
}

/* ---- names in certificates ---- */

static const mbedtls_x509_buf *crt_cn(const mbedtls_x509_crt *crt)
{
    for (const mbedtls_x509_name *n = &crt->subject; n; n = n->next)
        if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0)
            return &n->val;
    return NULL;
}

#define SAN_DNS (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2)
#define SAN_IP (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7)

static bool crt_matches(const mbedtls_x509_crt *crt, const char *name, size_t len)
{
    bool has_dns = false;
    for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s && s->buf.p; s = s->next) {
        if (s->buf.tag != SAN_DNS)
            continue;
        has_dns = true;
        if (tls_name_match((const char *)s->buf.p, s->buf.len, name, len))
            return true;
    }
    if (has_dns)
        return false; /* RFC 6125 6.4.4: the CN is only a fallback */
    const mbedtls_x509_buf *cn = crt_cn(crt);
    return cn && tls_name_match((const char *)cn->p, cn->len, name, len);
}

static bool crt_has_ip(const mbedtls_x509_crt *crt, const uint8_t *ip, size_t len)
{
    for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s && s->buf.p; s = s->next)
        if (s->buf.tag == SAN_IP && s->buf.len == len && memcmp(s->buf.p, ip, len) == 0)
            return true;
    return false;
}

/* ---- server callbacks ---- */

static int on_sni(void *arg, mbedtls_ssl_context *ssl, const unsigned char *name, size_t len)
{
    struct tls_ctx *ctx = arg;
    struct tls_conn *c = (struct tls_conn *)ssl; /* ssl is the first member */
    if (len == 0 || len > 255 || memchr(name, 0, len))
        return 0;
    free(c->sni);
    c->sni = strndup((const char *)name, len);
    for (size_t i = 0; i < ctx->ncerts; i++) {
        if (crt_matches(&ctx->certs[i].crt, (const char *)name, len))
            return mbedtls_ssl_set_hs_own_cert(ssl, &ctx->certs[i].crt, &ctx->certs[i].key);
    }
    /* Unknown name: the default certificate answers, as most servers do. */
    return 0;
}

/* Client: verification of an IP literal against iPAddress SANs (mbedTLS 2.28 only checks
 * DNS names). Runs for each certificate of the chain; depth 0 is the peer's. */
static int on_verify(void *arg, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    struct tls_conn *c = arg;
    if (depth != 0)
        return 0;
    if (c->ip_name && !crt_has_ip(crt, c->ip, c->iplen))
        *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
    char issuer[128], subject[128];
    if (mbedtls_x509_dn_gets(issuer, sizeof issuer, &crt->issuer) < 0)
        strcpy(issuer, "?");
    if (mbedtls_x509_dn_gets(subject, sizeof subject, &crt->subject) < 0)
        strcpy(subject, "?");
    size_t li = strlen(issuer) + 1, ls = strlen(subject) + 1;
    free(c->vinfo);
    c->vinfo = malloc(li + ls);
    if (c->vinfo) {
        memcpy(c->vinfo, issuer, li);
        memcpy(c->vinfo + li, subject, ls);
    }
    return 0;
}

/* ---- context ---- */

/* Loads a PEM (or DER) certificate file. A CA bundle (bundle = true) may also be a
 * directory of certificates, and may hold a few certificates mbedTLS cannot parse (system
 * bundles do): it is accepted if at least one certificate loads. */
static int load_crt(mbedtls_x509_crt *crt, const char *path, bool bundle, char *err, size_t cap)
{
    char e[128];
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
    unsigned char *b;
    size_t n;
    rc = tls_read_file(path, &b, &n, err, cap);
    if (rc)
        return rc;
    rc = mbedtls_x509_crt_parse(crt, b, n);
    free(b);
    if (rc == 0 || (rc > 0 && bundle && crt->raw.p != NULL))
        return 0;
    if (rc > 0 || (rc < 0 && crt->raw.p == NULL && n <= 1))
        tls_errf(err, cap, "%s: not a valid certificate (%s)", path,
             rc > 0 ? "some certificates failed to parse" : "empty file");
    else
        tls_errf(err, cap, "%s: not a valid certificate (%s)", path, mbed_str(rc, e, sizeof e));
    return -EINVAL;
}

static int load_key(mbedtls_pk_context *pk, const char *path, char *err, size_t cap)
{
    unsigned char *b;
    size_t n;
    int rc = tls_read_file(path, &b, &n, err, cap);
    if (rc)
        return rc;
    rc = mbedtls_pk_parse_key(pk, b, n, NULL, 0);
    mbedtls_platform_zeroize(b, n);
    free(b);
    if (rc != 0) {
        char e[128];
        tls_errf(err, cap, "%s: not a valid private key (%s)", path, mbed_str(rc, e, sizeof e));
        return -EINVAL;
    }
    return 0;
}

static void fingerprint(const mbedtls_x509_crt *crt, char *out)
{
    unsigned char h[32];
    mbedtls_sha256_ret(crt->raw.p, crt->raw.len, h, 0);
    tls_hex_fingerprint(h, out);
}

/* Writes the length of a DER element. */
static size_t der_len(uint8_t *p, size_t n)
{
    if (n < 128) {
        p[0] = (uint8_t)n;
        return 1;
    }
    p[0] = 0x81;
    p[1] = (uint8_t)n;
    return 2;
}

/* Generates an ECDSA P-256 key and a self-signed certificate for name, valid for a year,
 * with name as CN and dNSName. */
static int make_self_signed(struct tls_ctx *ctx, struct tls_cert *out, const char *name, char *err,
                            size_t cap)
{
    char e[128], subj[300], nb[16], na[16];
    unsigned char der[1024], san[300];
    mbedtls_x509write_cert w;
    mbedtls_mpi serial;
    int rc;
    size_t nlen = strlen(name);

    if ((rc = tls_check_self_signed_name(name, err, cap)) != 0)
        return rc;
    mbedtls_x509write_crt_init(&w);
    mbedtls_mpi_init(&serial);
    rc = mbedtls_pk_setup(&out->key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
    if (rc == 0)
        rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(out->key),
                                 mbedtls_ctr_drbg_random, &ctx->drbg);
    if (rc)
        goto fail;

    unsigned char rnd[16];
    rc = mbedtls_ctr_drbg_random(&ctx->drbg, rnd, sizeof rnd);
    rnd[0] &= 0x7f;
    rnd[0] |= 0x01;
    if (rc == 0)
        rc = mbedtls_mpi_read_binary(&serial, rnd, sizeof rnd);
    time_t now = time(NULL);
    struct tm tb, ta;
    time_t before = now - 86400, after = now + 365 * 86400;
    gmtime_r(&before, &tb);
    gmtime_r(&after, &ta);
    strftime(nb, sizeof nb, "%Y%m%d%H%M%S", &tb);
    strftime(na, sizeof na, "%Y%m%d%H%M%S", &ta);
    snprintf(subj, sizeof subj, "CN=%s", name);

    mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(&w, &out->key);
    mbedtls_x509write_crt_set_issuer_key(&w, &out->key);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_serial(&w, &serial);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_validity(&w, nb, na);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_subject_name(&w, subj);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_issuer_name(&w, subj);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_basic_constraints(&w, 0, -1);
    if (rc == 0) {
        /* subjectAltName ::= SEQUENCE { [2] dNSName } or { [7] iPAddress } for an IP
         * literal (no writer for it in mbedTLS 2.28). */
        uint8_t ip[16], inner[4];
        const uint8_t *val = (const uint8_t *)name;
        size_t vlen = nlen;
        uint8_t tag = 0x82;
        if (inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1) {
            val = ip;
            vlen = strchr(name, ':') ? 16 : 4;
            tag = 0x87;
        }
        size_t il = der_len(inner, vlen);
        size_t seq = 1 + il + vlen, o = 0;
        san[o++] = 0x30;
        o += der_len(san + o, seq);
        san[o++] = tag;
        memcpy(san + o, inner, il);
        o += il;
        memcpy(san + o, val, vlen);
        o += vlen;
        rc = mbedtls_x509write_crt_set_extension(&w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                                 MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0,
                                                 san, o);
    }
    if (rc)
        goto fail;
    rc = mbedtls_x509write_crt_der(&w, der, sizeof der, mbedtls_ctr_drbg_random, &ctx->drbg);
    if (rc < 0)
        goto fail;
    rc = mbedtls_x509_crt_parse_der(&out->crt, der + sizeof der - rc, (size_t)rc);
    if (rc)
        goto fail;
    mbedtls_x509write_crt_free(&w);
    mbedtls_mpi_free(&serial);
    return 0;
fail:
    tls_errf(err, cap, "cannot generate a self-signed certificate: %s", mbed_str(rc, e, sizeof e));
    mbedtls_x509write_crt_free(&w);
    mbedtls_mpi_free(&serial);
    return -EIO;
}

static const int default_suites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    0,
};

/* secp256r1 first: mbedTLS 2.28 does it faster than x25519 (see make bench-tls). */
static const mbedtls_ecp_group_id curves[] = {
    MBEDTLS_ECP_DP_SECP256R1,
    MBEDTLS_ECP_DP_CURVE25519,
    MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_NONE,
};

static const int sig_hashes[] = {MBEDTLS_MD_SHA256, MBEDTLS_MD_SHA384, MBEDTLS_MD_SHA512,
                                 MBEDTLS_MD_NONE};

/* Parses "NAME:NAME..." (mbedTLS or IANA spelling) into a 0-terminated suite list. */
static int parse_suites(const char *spec, int **out, char *err, size_t cap)
{
    size_t n = 1;
    for (const char *p = spec; *p; p++)
        n += *p == ':' || *p == ',';
    int *s = calloc(n + 1, sizeof *s);
    if (!s)
        return -ENOMEM;
    size_t k = 0;
    const char *p = spec;
    while (*p) {
        size_t l = strcspn(p, ":,");
        char name[96];
        if (l == 0 || l >= sizeof name)
            goto bad;
        memcpy(name, p, l);
        name[l] = '\0';
        for (char *q = name; *q; q++)
            if (*q == '_')
                *q = '-';
        int id = mbedtls_ssl_get_ciphersuite_id(name);
        if (id == 0) {
            tls_errf(err, cap, "unknown cipher suite \"%s\"", name);
            free(s);
            return -EINVAL;
        }
        s[k++] = id;
        p += l;
        if (*p)
            p++;
    }
    if (k == 0)
        goto bad;
    *out = s;
    return 0;
bad:
    tls_errf(err, cap, "bad cipher suite list \"%s\"", spec);
    free(s);
    return -EINVAL;
}

/* Parses "x25519:secp256r1" into a NONE-terminated group list. */
static int parse_groups(const char *spec, mbedtls_ecp_group_id **out, char *err, size_t cap)
{
    size_t n = 1;
    for (const char *p = spec; *p; p++)
        n += *p == ':' || *p == ',';
    mbedtls_ecp_group_id *g = calloc(n + 1, sizeof *g);
    if (!g)
        return -ENOMEM;
    size_t k = 0;
    for (const char *p = spec; *p;) {
        size_t l = strcspn(p, ":,");
        char name[32];
        if (l == 0 || l >= sizeof name) {
            tls_errf(err, cap, "bad group list \"%s\"", spec);
            free(g);
            return -EINVAL;
        }
        memcpy(name, p, l);
        name[l] = '\0';
        const mbedtls_ecp_curve_info *ci = mbedtls_ecp_curve_info_from_name(name);
        if (!ci && strcasecmp(name, "p-256") == 0)
            ci = mbedtls_ecp_curve_info_from_grp_id(MBEDTLS_ECP_DP_SECP256R1);
        if (!ci) {
            tls_errf(err, cap, "unknown ECDHE group \"%s\"", name);
            free(g);
            return -EINVAL;
        }
        g[k++] = ci->grp_id;
        p += l;
        if (*p)
            p++;
    }
    g[k] = MBEDTLS_ECP_DP_NONE;
    *out = g;
    return 0;
}

static int copy_alpn(const char *const *alpn, const char ***out)
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
    if (!v)
        return -ENOMEM;
    char *s = (char *)(v + n + 1);
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(alpn[i]) + 1;
        memcpy(s, alpn[i], l);
        v[i] = s;
        s += l;
    }
    v[n] = NULL;
    *out = v;
    return 0;
}

static void ctx_free(struct tls_ctx *c)
{
    if (c->tickets)
        mbedtls_ssl_ticket_free(&c->ticket);
    if (c->server)
        mbedtls_ssl_cache_free(&c->cache);
    mbedtls_ssl_config_free(&c->conf);
    for (size_t i = 0; i < c->ncerts; i++) {
        mbedtls_x509_crt_free(&c->certs[i].crt);
        mbedtls_pk_free(&c->certs[i].key);
    }
    free(c->certs);
    mbedtls_x509_crt_free(&c->ca);
    mbedtls_ssl_session_free(&c->session);
    for (size_t i = 0; i < c->npool; i++)
        free(c->pool[i]);
    pthread_mutex_destroy(&c->lock);
    mbedtls_ctr_drbg_free(&c->drbg);
    mbedtls_entropy_free(&c->entropy);
    free(c->alpn);
    free(c->suites);
    free(c->groups);
    free(c);
}

int tls_ctx_create(struct tls_ctx **out, const struct tls_opts *o, char *err, size_t errcap)
{
    static const char pers[] = "edge-suite tls";
    char e[128];
    int rc;

    if (!out || !o || (o->ncerts && !o->certs)) {
        tls_errf(err, errcap, "invalid TLS options");
        return -EINVAL;
    }
    struct tls_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        tls_errf(err, errcap, "out of memory");
        return -ENOMEM;
    }
    c->refs = 1;
    c->server = o->server;
    c->verify_peer = o->verify_peer;
    c->handshake_timeout_ms = o->handshake_timeout_ms;
    mbedtls_entropy_init(&c->entropy);
    mbedtls_ctr_drbg_init(&c->drbg);
    mbedtls_ssl_config_init(&c->conf);
    mbedtls_x509_crt_init(&c->ca);
    mbedtls_ssl_session_init(&c->session);
    pthread_mutex_init(&c->lock, NULL);
    if (c->server)
        mbedtls_ssl_cache_init(&c->cache);

    rc = mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->entropy,
                               (const unsigned char *)pers, sizeof pers - 1);
    if (rc) {
        tls_errf(err, errcap, "cannot seed the random generator: %s", mbed_str(rc, e, sizeof e));
        rc = -EIO;
        goto fail;
    }

    /* Certificates. */
    size_t ncerts = o->ncerts;
    bool self = c->server && ncerts == 0;
    c->certs = calloc(self ? 1 : (ncerts ? ncerts : 1), sizeof *c->certs);
    if (!c->certs) {
        rc = -ENOMEM;
        tls_errf(err, errcap, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < (self ? 1 : ncerts); i++) {
        mbedtls_x509_crt_init(&c->certs[i].crt);
        mbedtls_pk_init(&c->certs[i].key);
        c->ncerts++;
    }
    if (self) {
        rc = make_self_signed(c, &c->certs[0],
                              o->self_signed_name ? o->self_signed_name : "localhost", err, errcap);
        if (rc)
            goto fail;
    }
    for (size_t i = 0; i < ncerts; i++) {
        const struct tls_cert_opts *co = &o->certs[i];
        if (!co->cert_file || !co->key_file) {
            /* cfg leaves a CFG_FILE key NULL when its default file does not exist. */
            tls_errf(err, errcap, "certificate %zu: no %s (not configured, or its default file is missing)",
                 i, !co->cert_file ? "certificate file" : "key file");
            rc = -EINVAL;
            goto fail;
        }
        rc = load_crt(&c->certs[i].crt, co->cert_file, false, err, errcap);
        if (rc == 0)
            rc = load_key(&c->certs[i].key, co->key_file, err, errcap);
        if (rc)
            goto fail;
        if (mbedtls_pk_check_pair(&c->certs[i].crt.pk, &c->certs[i].key) != 0) {
            tls_errf(err, errcap, "%s does not match the key in %s", co->cert_file, co->key_file);
            rc = -EINVAL;
            goto fail;
        }
    }
    if (c->ncerts)
        fingerprint(&c->certs[0].crt, c->fingerprint);

    if (o->ca_file) {
        rc = load_crt(&c->ca, o->ca_file, true, err, errcap);
        if (rc)
            goto fail;
        c->has_ca = true;
    } else if (o->verify_peer) {
        tls_errf(err, errcap, "verify_peer needs a CA bundle (ca_file)");
        rc = -EINVAL;
        goto fail;
    }

    /* Config. */
    rc = mbedtls_ssl_config_defaults(&c->conf,
                                     c->server ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT,
                                     MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc) {
        tls_errf(err, errcap, "TLS config: %s", mbed_str(rc, e, sizeof e));
        rc = -EINVAL;
        goto fail;
    }
    mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &c->drbg);
    mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    if (o->ciphers) {
        rc = parse_suites(o->ciphers, &c->suites, err, errcap);
        if (rc)
            goto fail;
        mbedtls_ssl_conf_ciphersuites(&c->conf, c->suites);
    } else {
        mbedtls_ssl_conf_ciphersuites(&c->conf, default_suites);
    }
    if (o->groups) {
        rc = parse_groups(o->groups, &c->groups, err, errcap);
        if (rc)
            goto fail;
        mbedtls_ssl_conf_curves(&c->conf, c->groups);
    } else {
        mbedtls_ssl_conf_curves(&c->conf, curves);
    }
    mbedtls_ssl_conf_sig_hashes(&c->conf, sig_hashes);
    mbedtls_ssl_conf_renegotiation(&c->conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);

    if (c->has_ca)
        mbedtls_ssl_conf_ca_chain(&c->conf, &c->ca, NULL);
    if (o->verify_peer)
        mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    else if (c->has_ca)
        mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_OPTIONAL);
    else
        mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_NONE);

    if (c->ncerts) {
        rc = mbedtls_ssl_conf_own_cert(&c->conf, &c->certs[0].crt, &c->certs[0].key);
        if (rc) {
            tls_errf(err, errcap, "TLS config: %s", mbed_str(rc, e, sizeof e));
            rc = -EINVAL;
            goto fail;
        }
    }
    if (o->alpn && o->alpn[0]) {
        rc = copy_alpn(o->alpn, &c->alpn);
        if (rc) {
            tls_errf(err, errcap, "bad ALPN list");
            goto fail;
        }
        mbedtls_ssl_conf_alpn_protocols(&c->conf, c->alpn);
    }

    if (c->server) {
        /* Also with one certificate: it records the name the client asked for. */
        mbedtls_ssl_conf_sni(&c->conf, on_sni, c);
        mbedtls_ssl_cache_set_max_entries(
            &c->cache, o->session_cache_size ? (int)o->session_cache_size : TLS_CACHE_DEFAULT);
        mbedtls_ssl_cache_set_timeout(&c->cache, TLS_CACHE_TIMEOUT_S);
        mbedtls_ssl_conf_session_cache(&c->conf, &c->cache, mbedtls_ssl_cache_get,
                                       mbedtls_ssl_cache_set);
        if (o->session_tickets) {
            mbedtls_ssl_ticket_init(&c->ticket);
            c->tickets = true;
            /* The key is random and rotates every lifetime; two keys are kept so tickets
             * issued just before a rotation still work. */
            rc = mbedtls_ssl_ticket_setup(&c->ticket, mbedtls_ctr_drbg_random, &c->drbg,
                                          MBEDTLS_CIPHER_AES_256_GCM, TLS_TICKET_LIFETIME_S);
            if (rc) {
                tls_errf(err, errcap, "session tickets: %s", mbed_str(rc, e, sizeof e));
                rc = -EIO;
                goto fail;
            }
            mbedtls_ssl_conf_session_tickets_cb(&c->conf, mbedtls_ssl_ticket_write,
                                                mbedtls_ssl_ticket_parse, &c->ticket);
        }
    } else {
        mbedtls_ssl_conf_session_tickets(&c->conf, o->session_tickets
                                                       ? MBEDTLS_SSL_SESSION_TICKETS_ENABLED
                                                       : MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
    }
    *out = c;
    return 0;
fail:
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

#if TLS_CAN_SLEEP
/* Wipes what records may have left in plaintext (they are decrypted in place in in_buf;
 * out_buf holds ciphertext once a record is written, encryption being in place too) and
 * hands the buffers back: a pooled block to the pool, mbedTLS's own pair to free(). */
static void conn_release_bufs(struct tls_conn *c)
{
    mbedtls_ssl_context *s = &c->ssl;
    mbedtls_platform_zeroize(s->in_buf, c->in_used < TLS_BUF_IN ? c->in_used : TLS_BUF_IN);
    if (c->pooled) {
        struct tls_ctx *ctx = c->ctx;
        unsigned char *blk = s->in_buf;
        pthread_mutex_lock(&ctx->lock);
        if (ctx->npool < TLS_POOL_MAX) {
            ctx->pool[ctx->npool++] = blk;
            blk = NULL;
        }
        pthread_mutex_unlock(&ctx->lock);
        free(blk);
    } else {
        free(s->in_buf);
        free(s->out_buf);
    }
    s->in_buf = s->out_buf = NULL;
    c->pooled = false;
    c->in_used = 0;
}
#endif

/* Gives back the record buffers of an established, idle connection. */
static void conn_sleep(struct tls_conn *c)
{
#if TLS_CAN_SLEEP
    mbedtls_ssl_context *s = &c->ssl;
    if (!c->done || c->failed || c->asleep || s->in_left || s->in_msglen || s->in_offt ||
        s->in_hslen || s->out_left || s->keep_current_message || !s->in_buf || !s->out_buf)
        return;
    memcpy(c->ctr_in, s->in_ctr, 8);
    memcpy(c->ctr_out, s->out_ctr, 8);
    conn_release_bufs(c);
    s->in_ctr = s->in_hdr = s->in_len = s->in_iv = s->in_msg = NULL;
    s->out_ctr = s->out_hdr = s->out_len = s->out_iv = s->out_msg = NULL;
    c->asleep = true;
#else
    (void)c;
#endif
}

/* Gives a sleeping connection a pair of record buffers again. */
static int conn_wake(struct tls_conn *c)
{
#if TLS_CAN_SLEEP
    if (!c->asleep)
        return 0;
    mbedtls_ssl_context *s = &c->ssl;
    struct tls_ctx *ctx = c->ctx;
    unsigned char *blk = NULL;
    pthread_mutex_lock(&ctx->lock);
    if (ctx->npool)
        blk = ctx->pool[--ctx->npool];
    pthread_mutex_unlock(&ctx->lock);
    /* The content before use does not matter to mbedTLS. */
    if (!blk && !(blk = malloc(TLS_BUF_PAIR))) {
        set_err(c, "out of memory");
        return -ENOMEM;
    }
    s->in_buf = blk;
    s->out_buf = blk + TLS_BUF_IN;
    c->pooled = true;
    c->in_used = 0;
    mbedtls_ssl_reset_in_out_pointers(s);
    mbedtls_ssl_update_out_pointers(s, s->transform_out); /* room for the explicit IV */
    memcpy(s->in_ctr, c->ctr_in, 8);
    memcpy(s->out_ctr, c->ctr_out, 8);
    c->asleep = false;
#else
    (void)c;
#endif
    return 0;
}

static void conn_free_peer(struct tls_conn *c)
{
    free(c->peer);
    c->peer = NULL;
}

/* Copies the names of the peer certificate so the API can hand out C strings after the
 * parsed certificate is dropped. */
static void conn_take_peer(struct tls_conn *c)
{
    const mbedtls_x509_crt *p = mbedtls_ssl_get_peer_cert(&c->ssl);
    if (!p)
        return;
    char subject[256];
    if (mbedtls_x509_dn_gets(subject, sizeof subject, &p->subject) < 0)
        subject[0] = '\0';
    const mbedtls_x509_buf *cn = crt_cn(p);
    size_t n = 0, bytes = strlen(subject) + 1 + (cn ? cn->len + 1 : 0);
    for (const mbedtls_x509_sequence *s = &p->subject_alt_names; s && s->buf.p; s = s->next)
        if (s->buf.tag == SAN_DNS) {
            n++;
            bytes += s->buf.len + 1;
        }
    struct tls_peer *pe = malloc(sizeof *pe + (n + 1) * sizeof pe->sans[0] + bytes);
    if (!pe)
        return;
    char *d = (char *)&pe->sans[n + 1];
    pe->subject = strcpy(d, subject);
    d += strlen(subject) + 1;
    pe->cn = NULL;
    if (cn) {
        memcpy(d, cn->p, cn->len);
        d[cn->len] = '\0';
        pe->cn = d;
        d += cn->len + 1;
    }
    pe->nsans = 0;
    for (const mbedtls_x509_sequence *s = &p->subject_alt_names; s && s->buf.p; s = s->next)
        if (s->buf.tag == SAN_DNS) {
            memcpy(d, s->buf.p, s->buf.len);
            d[s->buf.len] = '\0';
            pe->sans[pe->nsans++] = d;
            d += s->buf.len + 1;
        }
    pe->sans[pe->nsans] = NULL;
    fingerprint(p, pe->fingerprint);
    c->peer = pe;
}

int tls_conn_create(struct tls_conn **out, struct tls_ctx *ctx, const char *server_name)
{
    if (!out || !ctx)
        return -EINVAL;
    struct tls_conn *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    mbedtls_ssl_init(&c->ssl);
    int rc = mbedtls_ssl_setup(&c->ssl, &ctx->conf);
    if (rc) {
        mbedtls_ssl_free(&c->ssl);
        free(c);
        return -ENOMEM;
    }
    c->ctx = ctx;
    tls_ctx_ref(ctx);
    mbedtls_ssl_set_bio(&c->ssl, c, bio_send, bio_recv, NULL);
    mbedtls_ssl_set_verify(&c->ssl, on_verify, c);

    if (!ctx->server) {
        if (server_name && *server_name) {
            if (inet_pton(AF_INET, server_name, c->ip) == 1)
                c->iplen = 4;
            else if (inet_pton(AF_INET6, server_name, c->ip) == 1)
                c->iplen = 16;
            if (c->iplen) {
                /* RFC 6066 3: no IP literals in SNI; the IP is checked against iPAddress. */
                c->ip_name = true;
            } else if (mbedtls_ssl_set_hostname(&c->ssl, server_name) != 0) {
                tls_conn_destroy(c);
                return -EINVAL;
            }
        }
        pthread_mutex_lock(&ctx->lock);
        if (ctx->has_session && server_name && strcmp(ctx->session_name, server_name) == 0)
            mbedtls_ssl_set_session(&c->ssl, &ctx->session);
        pthread_mutex_unlock(&ctx->lock);
        /* The client speaks first: put the ClientHello in the outgoing buffer now. */
        rc = mbedtls_ssl_handshake(&c->ssl);
        if (rc != MBEDTLS_ERR_SSL_WANT_READ && rc != 0) {
            conn_fail(c, rc);
            tls_conn_destroy(c);
            return -EPROTO;
        }
    }
    *out = c;
    return 0;
}

void tls_conn_destroy(struct tls_conn *c)
{
    if (!c)
        return;
#if TLS_CAN_SLEEP
    /* A pooled block is one allocation that mbedTLS would free as two. */
    if (c->pooled)
        conn_release_bufs(c);
#endif
    mbedtls_ssl_free(&c->ssl);
    byteq_free(&c->in);
    byteq_free(&c->out);
    if (c->early.data)
        mbedtls_platform_zeroize(c->early.data, c->early.cap);
    byteq_free(&c->early);
    free(c->sni);
    free(c->err);
    free(c->vinfo);
    conn_free_peer(c);
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
        int rc = mbedtls_ssl_write(&c->ssl, data + off, len - off);
        if (rc < 0) {
            if (rc == MBEDTLS_ERR_SSL_WANT_WRITE || rc == MBEDTLS_ERR_SSL_WANT_READ)
                continue; /* cannot happen with our BIO, which always accepts */
            return conn_fail(c, rc);
        }
        off += (size_t)rc;
    }
    return (ssize_t)len;
}

static void handshake_finished(struct tls_conn *c)
{
    c->done = true;
    free(c->vinfo);
    c->vinfo = NULL;
    conn_take_peer(c);
    c->verified = mbedtls_ssl_get_peer_cert(&c->ssl) != NULL &&
                  c->ssl.conf->authmode != MBEDTLS_SSL_VERIFY_NONE &&
                  mbedtls_ssl_get_verify_result(&c->ssl) == 0;
    struct tls_ctx *ctx = c->ctx;
    const char *host = c->ssl.hostname;
    if (!ctx->server) {
        char ipname[64] = "";
        if (c->ip_name)
            inet_ntop(c->iplen == 4 ? AF_INET : AF_INET6, c->ip, ipname, sizeof ipname);
        const char *name = c->ip_name ? ipname : host;
        if (name && strlen(name) < sizeof ctx->session_name) {
            pthread_mutex_lock(&ctx->lock);
            mbedtls_ssl_session_free(&ctx->session);
            mbedtls_ssl_session_init(&ctx->session);
            ctx->has_session = mbedtls_ssl_get_session(&c->ssl, &ctx->session) == 0;
            snprintf(ctx->session_name, sizeof ctx->session_name, "%s", name);
            pthread_mutex_unlock(&ctx->lock);
        }
    }
    /* The names are copied, the session is cached or saved: the parsed peer certificate
     * (1-2 KiB) has no further use, renegotiation being off. */
    mbedtls_ssl_session *sess = c->ssl.session;
    if (sess && sess->peer_cert) {
        mbedtls_x509_crt_free(sess->peer_cert);
        free(sess->peer_cert);
        sess->peer_cert = NULL;
    }
}

/* Drives the handshake as far as the buffered input allows. */
static int conn_handshake(struct tls_conn *c)
{
    while (c->ssl.state != MBEDTLS_SSL_HANDSHAKE_OVER) {
        /* mbedTLS 2.28 has no getter for this; the flag lives until the handshake ends. */
        if (c->ssl.handshake && c->ssl.handshake->resume)
            c->resumed = true;
        int rc = mbedtls_ssl_handshake_step(&c->ssl);
        if (c->ssl.handshake && c->ssl.handshake->resume)
            c->resumed = true;
        if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
            return -EAGAIN;
        if (rc)
            return conn_fail(c, rc);
    }
    handshake_finished(c);
    if (byteq_len(&c->early)) {
        ssize_t w = write_records(c, c->early.data + c->early.rd, byteq_len(&c->early));
        mbedtls_platform_zeroize(c->early.data, c->early.cap);
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
    if (c->asleep) {
        if (byteq_len(&c->in) == 0 || cap == 0)
            return -EAGAIN;
        int rc = conn_wake(c);
        if (rc)
            return rc;
    }
    if (!c->done) {
        int rc = conn_handshake(c);
        if (rc)
            return rc;
    }
    if (cap == 0)
        return -EAGAIN;
    for (;;) {
        int rc = mbedtls_ssl_read(&c->ssl, out, cap);
        if (rc > 0)
            return rc;
        if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
            conn_sleep(c);
            return -EAGAIN;
        }
        if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || rc == 0)
            return 0;
        if (rc == MBEDTLS_ERR_SSL_CLIENT_RECONNECT)
            continue;
        return conn_fail(c, rc);
    }
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
    int rc = conn_wake(c);
    if (rc)
        return rc;
    ssize_t w = write_records(c, data, len);
    conn_sleep(c);
    return w;
}

void tls_conn_close_notify(struct tls_conn *c)
{
    if (c && c->done && !c->failed && conn_wake(c) == 0) {
        mbedtls_ssl_close_notify(&c->ssl);
        conn_sleep(c);
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
    return c && c->done ? mbedtls_ssl_get_alpn_protocol(&c->ssl) : NULL;
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
    return c && c->done ? mbedtls_ssl_get_ciphersuite(&c->ssl) : NULL;
}

const char *tls_conn_version(const struct tls_conn *c)
{
    return c && c->done ? mbedtls_ssl_get_version(&c->ssl) : NULL;
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

static void serial_hex(const unsigned char *p, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && o + 4 <= cap; i++)
        o += (size_t)snprintf(out + o, cap - o, i ? ":%02X" : "%02X", p[i]);
}

int tls_cert_inspect(const char *cert_file, const char *key_file, struct tls_cert_info *info,
                     char *err, size_t errcap)
{
    mbedtls_x509_crt crt;
    mbedtls_x509_crt_init(&crt);
    int rc = load_crt(&crt, cert_file, false, err, errcap);
    if (rc == 0 && key_file) {
        mbedtls_pk_context pk;
        mbedtls_pk_init(&pk);
        rc = load_key(&pk, key_file, err, errcap);
        if (rc == 0 && mbedtls_pk_check_pair(&crt.pk, &pk) != 0) {
            tls_errf(err, errcap, "%s does not match the certificate in %s", key_file, cert_file);
            rc = -EKEYREJECTED;
        }
        mbedtls_pk_free(&pk);
    }
    if (rc == 0) {
        memset(info, 0, sizeof *info);
        if (mbedtls_x509_dn_gets(info->subject, sizeof info->subject, &crt.subject) < 0)
            info->subject[0] = '\0';
        serial_hex(crt.serial.p, crt.serial.len, info->serial, sizeof info->serial);
        struct tm tm = {.tm_year = crt.valid_to.year - 1900, .tm_mon = crt.valid_to.mon - 1,
                        .tm_mday = crt.valid_to.day, .tm_hour = crt.valid_to.hour,
                        .tm_min = crt.valid_to.min, .tm_sec = crt.valid_to.sec};
        info->not_after = (int64_t)timegm(&tm);
        fingerprint(&crt, info->fingerprint);
    }
    mbedtls_x509_crt_free(&crt);
    return rc;
}

const char *tls_backend(void)
{
    return "mbedTLS " MBEDTLS_VERSION_STRING;
}
