/* Connections for the OpenSSL backend (tls_openssl.h): the handshake and records on the
 * conn's byte queues through a custom BIO, errors in words, the peer's names. */
#include "common/acme_challenges.h"
#include "common/tls_openssl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes a record adds to its plaintext, at most: header, explicit nonce, tag, TLS 1.3
 * content type (OpenSSL pads no records unless asked). */
#define TLS_RECORD_SLACK 64

/* ---- errors ---- */

struct tls_conn_base *tls_conn_base(const struct tls_conn *c)
{
    return c ? (struct tls_conn_base *)&c->b : NULL;
}

/* The OpenSSL error queue's oldest entry as text (and clears the queue). */
static void describe_verify(struct tls_conn *c, long vr)
{
    const char *issuer = c->b.vinfo ? c->b.vinfo : "?";
    const char *subject = c->b.vinfo ? c->b.vinfo + strlen(c->b.vinfo) + 1 : "?";
    switch (vr) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_CERT_REJECTED:
        tls_conn_set_err(&c->b, "peer certificate not trusted (issuer: %s, subject: %s)", issuer,
                         subject);
        break;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        tls_conn_set_err(&c->b, "peer certificate name mismatch (subject: %s)", subject);
        break;
    case X509_V_ERR_CERT_HAS_EXPIRED:
        tls_conn_set_err(&c->b, "peer certificate expired (subject: %s)", subject);
        break;
    case X509_V_ERR_CERT_NOT_YET_VALID:
        tls_conn_set_err(&c->b, "peer certificate not yet valid (subject: %s)", subject);
        break;
    default:
        tls_conn_set_err(&c->b, "peer certificate rejected (subject: %s): %s", subject,
                         X509_verify_cert_error_string(vr));
        break;
    }
}

/* Maps a failed SSL call to an errno and a sentence in c->b.err (same sentences as tls.c). */
static int conn_fail(struct tls_conn *c, int sslerr)
{
    int ret = -EPROTO;
    c->b.failed = true;
    unsigned long e = ERR_peek_error();
    int reason = e && ERR_GET_LIB(e) == ERR_LIB_SSL ? ERR_GET_REASON(e) : 0;
    char buf[128];
    if (c->acme && !c->acme_found) {
        tls_conn_set_err(&c->b, "ACME TLS-ALPN-01: no challenge for %s",
                         c->b.sni ? c->b.sni : "a hello without SNI");
    } else if (reason > SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
        unsigned a = (unsigned)(reason - SSL_AD_REASON_OFFSET);
        tls_conn_set_err(&c->b, "peer sent fatal alert %u (%s)", a, tls_alert_name(a));
        ret = -ECONNRESET;
    } else {
        switch (reason) {
        case SSL_R_CERTIFICATE_VERIFY_FAILED:
            describe_verify(c, SSL_get_verify_result(c->ssl));
            break;
        case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
            tls_conn_set_err(&c->b, "peer sent no certificate (mutual TLS required)");
            break;
        case SSL_R_NO_SHARED_CIPHER:
            tls_conn_set_err(&c->b,
                             "no common cipher suite (peer offers no ECDHE AEAD suite we accept)");
            break;
        case SSL_R_NO_SUITABLE_KEY_SHARE:
        case SSL_R_NO_SHARED_GROUPS:
            tls_conn_set_err(&c->b, "no common ECDHE group");
            break;
        case SSL_R_UNSUPPORTED_PROTOCOL:
        case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
            tls_conn_set_err(&c->b, "peer does not speak TLS 1.2 or later");
            break;
        case SSL_R_HTTP_REQUEST:
        case SSL_R_HTTPS_PROXY_REQUEST:
        case SSL_R_WRONG_VERSION_NUMBER:
        case SSL_R_PACKET_LENGTH_TOO_LONG:
        case SSL_R_RECORD_LENGTH_MISMATCH:
            tls_conn_set_err(&c->b, "not TLS: invalid record header");
            break;
        case SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC:
        case SSL_R_DECRYPTION_FAILED:
            tls_conn_set_err(&c->b, "record authentication failed (bad MAC)");
            break;
        case SSL_R_NO_APPLICATION_PROTOCOL:
            tls_conn_set_err(&c->b, "no common application protocol (ALPN)");
            break;
        case ERR_R_MALLOC_FAILURE:
            tls_conn_set_err(&c->b, "out of memory");
            ret = -ENOMEM;
            break;
        default:
            if (e)
                tls_conn_set_err(&c->b, "TLS error: %s", tls_ossl_str(buf, sizeof buf));
            else if (sslerr == SSL_ERROR_SYSCALL)
                tls_conn_set_err(&c->b, "TLS error: unexpected end of input");
            else
                tls_conn_set_err(&c->b, "TLS error: %d", sslerr);
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
    if (byteq_append(&c->b.out, data, (size_t)len, 0) < 0)
        return -1;
    return len;
}

static int bio_read(BIO *b, char *data, int len)
{
    struct tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t n = byteq_len(&c->b.in);
    if (n == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    if (len <= 0)
        return 0;
    if (n > (size_t)len)
        n = (size_t)len;
    memcpy(data, c->b.in.data + c->b.in.rd, n);
    byteq_consume(&c->b.in, n);
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

BIO_METHOD *tls_ossl_bio_method(void)
{
    pthread_once(&bio_once, bio_method_init);
    return bio_method;
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
    BIO *bio = c->ssl ? BIO_new(tls_ossl_bio_method()) : NULL;
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
    if (c->b.done && !c->b.failed)
        SSL_set_shutdown(c->ssl, SSL_get_shutdown(c->ssl) | SSL_SENT_SHUTDOWN);
    SSL_free(c->ssl); /* frees the BIO */
    byteq_free(&c->b.in);
    byteq_free(&c->b.out);
    if (c->b.early.data)
        OPENSSL_cleanse(c->b.early.data, c->b.early.cap);
    byteq_free(&c->b.early);
    free(c->name);
    free(c->b.sni);
    free(c->b.err);
    free(c->b.vinfo);
    free(c->b.peer);
    tls_ctx_unref(c->ctx);
    free(c);
}

int tls_conn_feed(struct tls_conn *c, const uint8_t *data, size_t len)
{
    if (!c || (!data && len))
        return -EINVAL;
    return byteq_append(&c->b.in, data, len, TLS_IN_CAP);
}

static ssize_t write_records(struct tls_conn *c, const uint8_t *data, size_t len)
{
    /* Room for all the records at once: the queue grows by doubling, which for a batch of
     * four full records means a realloc chain ending in 128 KiB (glibc: mmap, page faults). */
    if (byteq_reserve(&c->b.out, len + (len / 16384 + 1) * TLS_RECORD_SLACK, 0) < 0)
        return -ENOMEM;
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
    c->b.done = true;
    c->b.resumed = SSL_session_reused(c->ssl) == 1;
    free(c->b.vinfo);
    c->b.vinfo = NULL;
    X509 *p = SSL_get0_peer_certificate(c->ssl);
    if (p)
        c->b.peer = tls_ossl_peer_names(p);
    c->b.verified = p != NULL && SSL_get_verify_mode(c->ssl) != SSL_VERIFY_NONE &&
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
    if (byteq_len(&c->b.early)) {
        ssize_t w = write_records(c, c->b.early.data + c->b.early.rd, byteq_len(&c->b.early));
        OPENSSL_cleanse(c->b.early.data, c->b.early.cap);
        byteq_free(&c->b.early);
        if (w < 0)
            return (int)w;
    }
    return 0;
}

ssize_t tls_conn_read(struct tls_conn *c, uint8_t *out, size_t cap)
{
    if (!c || (!out && cap))
        return -EINVAL;
    if (c->b.failed)
        return -EPROTO;
    if (!c->b.done) {
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
    if (c->b.failed)
        return -EPROTO;
    if (len == 0)
        return 0;
    if (!c->b.done) {
        int rc = byteq_append(&c->b.early, data, len, 0);
        return rc ? rc : (ssize_t)len;
    }
    return write_records(c, data, len);
}

void tls_conn_close_notify(struct tls_conn *c)
{
    if (c && c->b.done && !c->b.failed) {
        ERR_clear_error();
        SSL_shutdown(c->ssl);
        ERR_clear_error();
    }
}

const char *tls_conn_alpn(const struct tls_conn *c)
{
    if (!c || !c->b.done || (!c->ctx->alpn && !c->acme))
        return NULL;
    const unsigned char *p;
    unsigned int n;
    SSL_get0_alpn_selected(c->ssl, &p, &n);
    if (c->acme)
        return p && n == strlen(ACME_ALPN_PROTOCOL) && memcmp(p, ACME_ALPN_PROTOCOL, n) == 0
                   ? ACME_ALPN_PROTOCOL
                   : NULL;
    /* The protocol is one of ours: hand out our NUL-terminated copy. */
    for (size_t i = 0; p && c->ctx->alpn[i]; i++)
        if (strlen(c->ctx->alpn[i]) == n && memcmp(c->ctx->alpn[i], p, n) == 0)
            return c->ctx->alpn[i];
    return NULL;
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
    return c && c->b.done ? c->cipher : NULL;
}

const char *tls_conn_version(const struct tls_conn *c)
{
    return c && c->b.done ? SSL_get_version(c->ssl) : NULL;
}
