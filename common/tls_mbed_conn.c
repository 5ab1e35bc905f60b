/* Connections for the mbedTLS backend (tls_mbed.h): the handshake and records on byte
 * queues, errors in words, the peer's names, and giving record buffers back while idle. */
#include "common/tls_mbed.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors ---- */

struct tls_conn_base *tls_conn_base(const struct tls_conn *c)
{
    return c ? (struct tls_conn_base *)&c->b : NULL;
}

/* Describes a failed certificate verification in one line. */
static void describe_verify(struct tls_conn *c, uint32_t flags)
{
    /* mbedTLS drops a rejected peer certificate, so on_verify kept its names. */
    const char *issuer = c->b.vinfo ? c->b.vinfo : "?";
    const char *subject = c->b.vinfo ? c->b.vinfo + strlen(c->b.vinfo) + 1 : "?";
    if (!c->b.vinfo)
        tls_conn_set_err(&c->b, "peer sent no certificate");
    else if (flags & (MBEDTLS_X509_BADCERT_NOT_TRUSTED | MBEDTLS_X509_BADCERT_MISSING))
        tls_conn_set_err(&c->b, "peer certificate not trusted (issuer: %s, subject: %s)", issuer,
                         subject);
    else if (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH)
        tls_conn_set_err(&c->b, "peer certificate name mismatch (subject: %s)", subject);
    else if (flags & MBEDTLS_X509_BADCERT_EXPIRED)
        tls_conn_set_err(&c->b, "peer certificate expired (subject: %s)", subject);
    else if (flags & MBEDTLS_X509_BADCERT_FUTURE)
        tls_conn_set_err(&c->b, "peer certificate not yet valid (subject: %s)", subject);
    else {
        char info[160];
        if (mbedtls_x509_crt_verify_info(info, sizeof info, "", flags) < 0)
            strcpy(info, "?");
        size_t n = strlen(info);
        while (n && info[n - 1] == '\n')
            info[--n] = '\0';
        tls_conn_set_err(&c->b, "peer certificate rejected (subject: %s): %s", subject, info);
    }
}

/* Maps an mbedTLS failure to an errno and a sentence in c->b.err. */
static int conn_fail(struct tls_conn *c, int rc)
{
    char buf[128];
    int ret = -EPROTO;
    c->b.failed = true;
    if (c->ctx->server && c->acme && !c->acme->found && rc != MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE) {
        tls_conn_set_err(&c->b, "ACME TLS-ALPN-01: no challenge for %s",
                         c->b.sni ? c->b.sni : "a hello without SNI");
        return ret;
    }
    switch (rc) {
    case MBEDTLS_ERR_X509_CERT_VERIFY_FAILED:
        describe_verify(c, mbedtls_ssl_get_verify_result(&c->ssl));
        break;
    case MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE:
        tls_conn_set_err(&c->b, "peer sent no certificate (mutual TLS required)");
        break;
    case MBEDTLS_ERR_SSL_PEER_VERIFY_FAILED:
        tls_conn_set_err(&c->b, "peer certificate rejected");
        break;
    case MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE: {
        unsigned a = c->ssl.in_msg ? c->ssl.in_msg[1] : 0;
        tls_conn_set_err(&c->b, "peer sent fatal alert %u (%s)", a, tls_alert_name(a));
        ret = -ECONNRESET;
        break;
    }
    case MBEDTLS_ERR_SSL_NO_CIPHER_CHOSEN:
    case MBEDTLS_ERR_SSL_NO_USABLE_CIPHERSUITE:
        tls_conn_set_err(&c->b,
                         "no common cipher suite (peer offers no ECDHE AEAD suite we accept)");
        break;
    case MBEDTLS_ERR_SSL_BAD_HS_PROTOCOL_VERSION:
        tls_conn_set_err(&c->b, "peer does not speak TLS 1.2 or later");
        break;
    case MBEDTLS_ERR_SSL_INVALID_RECORD:
        tls_conn_set_err(&c->b, "not TLS: invalid record header");
        break;
    case MBEDTLS_ERR_SSL_BAD_HS_CLIENT_HELLO:
        tls_conn_set_err(&c->b, "bad ClientHello");
        break;
    case MBEDTLS_ERR_SSL_INVALID_MAC:
        tls_conn_set_err(&c->b, "record authentication failed (bad MAC)");
        break;
    case MBEDTLS_ERR_SSL_ALLOC_FAILED:
        tls_conn_set_err(&c->b, "out of memory");
        ret = -ENOMEM;
        break;
    default:
        tls_conn_set_err(&c->b, "TLS error: %s", tls_mbed_str(rc, buf, sizeof buf));
        break;
    }
    return ret;
}

/* ---- BIO on the buffers ---- */

static int bio_send(void *p, const unsigned char *data, size_t len)
{
    struct tls_conn *c = p;
    if (byteq_append(&c->b.out, data, len, 0) < 0)
        return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    return (int)len;
}

static int bio_recv(void *p, unsigned char *data, size_t len)
{
    struct tls_conn *c = p;
    size_t n = byteq_len(&c->b.in);
    if (n == 0)
        return MBEDTLS_ERR_SSL_WANT_READ;
    if (n > len)
        n = len;
    memcpy(data, c->b.in.data + c->b.in.rd, n);
    if (c->ssl.in_buf && data >= c->ssl.in_buf) {
        size_t end = (size_t)(data - c->ssl.in_buf) + n;
        if (end > c->in_used)
            c->in_used = end;
    }
    byteq_consume(&c->b.in, n);
    return (int)n;
}

/* ---- names in certificates ---- */

static bool crt_has_ip(const mbedtls_x509_crt *crt, const uint8_t *ip, size_t len)
{
    for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s && s->buf.p; s = s->next)
        if (s->buf.tag == SAN_IP && s->buf.len == len && memcmp(s->buf.p, ip, len) == 0)
            return true;
    return false;
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
    free(c->b.vinfo);
    c->b.vinfo = malloc(li + ls);
    if (c->b.vinfo) {
        memcpy(c->b.vinfo, issuer, li);
        memcpy(c->b.vinfo + li, subject, ls);
    }
    return 0;
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
    if (!c->b.done || c->b.failed || c->asleep || s->in_left || s->in_msglen || s->in_offt ||
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
        tls_conn_set_err(&c->b, "out of memory");
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
    free(c->b.peer);
    c->b.peer = NULL;
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
    const mbedtls_x509_buf *cn = tls_mbed_crt_cn(p);
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
    tls_mbed_fingerprint(p, pe->fingerprint);
    c->b.peer = pe;
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
    tls_mbed_acme_free(c);
    byteq_free(&c->b.in);
    byteq_free(&c->b.out);
    if (c->b.early.data)
        mbedtls_platform_zeroize(c->b.early.data, c->b.early.cap);
    byteq_free(&c->b.early);
    free(c->b.sni);
    free(c->b.err);
    free(c->b.vinfo);
    conn_free_peer(c);
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
    c->b.done = true;
    free(c->b.vinfo);
    c->b.vinfo = NULL;
    conn_take_peer(c);
    c->b.verified = mbedtls_ssl_get_peer_cert(&c->ssl) != NULL &&
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
    if (c->ctx->acme_conf && !c->hello_seen) {
        int rc = tls_mbed_acme_hello(c);
        if (rc == -ENOMEM) {
            c->b.failed = true;
            tls_conn_set_err(&c->b, "out of memory");
        }
        if (rc)
            return rc;
    }
    while (c->ssl.state != MBEDTLS_SSL_HANDSHAKE_OVER) {
        /* mbedTLS 2.28 has no getter for this; the flag lives until the handshake ends. */
        if (c->ssl.handshake && c->ssl.handshake->resume)
            c->b.resumed = true;
        int rc = mbedtls_ssl_handshake_step(&c->ssl);
        if (c->ssl.handshake && c->ssl.handshake->resume)
            c->b.resumed = true;
        if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
            return -EAGAIN;
        if (rc)
            return conn_fail(c, rc);
    }
    handshake_finished(c);
    if (byteq_len(&c->b.early)) {
        ssize_t w = write_records(c, c->b.early.data + c->b.early.rd, byteq_len(&c->b.early));
        mbedtls_platform_zeroize(c->b.early.data, c->b.early.cap);
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
    if (c->asleep) {
        if (byteq_len(&c->b.in) == 0 || cap == 0)
            return -EAGAIN;
        int rc = conn_wake(c);
        if (rc)
            return rc;
    }
    if (!c->b.done) {
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
    if (c->b.failed)
        return -EPROTO;
    if (len == 0)
        return 0;
    if (!c->b.done) {
        int rc = byteq_append(&c->b.early, data, len, 0);
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
    if (c && c->b.done && !c->b.failed && conn_wake(c) == 0) {
        mbedtls_ssl_close_notify(&c->ssl);
        conn_sleep(c);
    }
}

const char *tls_conn_alpn(const struct tls_conn *c)
{
    return c && c->b.done ? mbedtls_ssl_get_alpn_protocol(&c->ssl) : NULL;
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
    return c && c->b.done ? mbedtls_ssl_get_ciphersuite(&c->ssl) : NULL;
}

const char *tls_conn_version(const struct tls_conn *c)
{
    return c && c->b.done ? mbedtls_ssl_get_version(&c->ssl) : NULL;
}
