/* Contexts for the OpenSSL backend (tls_openssl.h): options to an SSL_CTX with its
 * certificates, CA, suites, groups, ALPN, session cache and rotating ticket keys, and the
 * callbacks it installs; reference counts. */
#include "common/acme_challenges.h"
#include "common/tls_openssl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Server preference: ChaCha20-Poly1305, then AES-GCM; ECDHE only, AEAD only. */
#define TLS12_DEFAULT                                                                              \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:"     \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
#define TLS13_DEFAULT "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"
/* X25519 first: OpenSSL does it fastest (mbedTLS 2.28 is faster at P-256, see tls.c). */
#define GROUPS_DEFAULT "X25519:P-256:P-384"

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
    if (c->acme)
        return SSL_TLSEXT_ERR_OK; /* the challenge certificate is in place */
    free(c->b.sni);
    c->b.sni = strdup(name);
    for (size_t i = 0; i < ctx->ncerts; i++) {
        if (!tls_ossl_cert_matches(&ctx->certs[i], name, len))
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
    if (!c->b.vinfo && leaf) {
        char issuer[128], subject[128];
        tls_ossl_dn_string(X509_get_issuer_name(leaf), issuer, sizeof issuer);
        tls_ossl_dn_string(X509_get_subject_name(leaf), subject, sizeof subject);
        size_t li = strlen(issuer) + 1, ls = strlen(subject) + 1;
        c->b.vinfo = malloc(li + ls);
        if (c->b.vinfo) {
            memcpy(c->b.vinfo, issuer, li);
            memcpy(c->b.vinfo + li, subject, ls);
        }
    }
    return c->ctx->verify_peer ? ok : 1;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    struct tls_ctx *ctx = arg;
    struct tls_conn *c = SSL_get_app_data(ssl);
    if (c && c->acme) { /* tls_ossl_acme_hello saw it is the only protocol offered */
        size_t l = strlen(ACME_ALPN_PROTOCOL);
        if (inlen != 1 + l || in[0] != l || memcmp(in + 1, ACME_ALPN_PROTOCOL, l) != 0)
            return SSL_TLSEXT_ERR_ALERT_FATAL; /* a second hello (after HRR) that changed it */
        *out = in + 1;
        *outlen = in[0];
        return SSL_TLSEXT_ERR_OK;
    }
    if (!ctx->alpn) /* only a store made us look: as without a callback */
        return SSL_TLSEXT_ERR_NOACK;
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
static struct tls_ctx *ctx_alloc(const struct tls_opts *o)
{
    struct tls_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->refs = 1;
    c->server = o->server;
    c->verify_peer = o->verify_peer;
    c->handshake_timeout_ms = o->handshake_timeout_ms;
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

/* The certificates of o (or a self-signed one for a server without any) with their names,
 * the first as the default, and the CA bundle. */
static int ctx_load_certs(struct tls_ctx *c, const struct tls_opts *o, char *err, size_t errcap)
{
    char e[128];
    int rc;
    size_t ncerts = o->ncerts;
    bool self = c->server && ncerts == 0;
    c->certs = calloc(self ? 1 : (ncerts ? ncerts : 1), sizeof *c->certs);
    if (!c->certs) {
        tls_errf(err, errcap, "out of memory");
        return -ENOMEM;
    }
    if (self) {
        c->ncerts = 1;
        rc = tls_ossl_make_self_signed(
            &c->certs[0], o->self_signed_name ? o->self_signed_name : "localhost", err, errcap);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < ncerts; i++) {
        c->ncerts++;
        rc = tls_ossl_load_cert(&c->certs[i], &o->certs[i], i, err, errcap);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < c->ncerts; i++) {
        if ((rc = tls_ossl_cert_names(&c->certs[i])) != 0) {
            tls_errf(err, errcap, "out of memory");
            return rc;
        }
    }
    if (c->ncerts) {
        tls_ossl_fingerprint(c->certs[0].crt, c->fingerprint);
        if (SSL_CTX_use_cert_and_key(c->ssl, c->certs[0].crt, c->certs[0].key, c->certs[0].chain,
                                     1) != 1) {
            tls_errf(err, errcap, "TLS config: %s", tls_ossl_str(e, sizeof e));
            return -EINVAL;
        }
    }
    if (o->ca_file) {
        rc = tls_ossl_load_ca(c, o->ca_file, err, errcap);
        if (rc)
            return rc;
        c->has_ca = true;
    } else if (o->verify_peer) {
        tls_errf(err, errcap, "verify_peer needs a CA bundle (ca_file)");
        return -EINVAL;
    }
    return 0;
}

/* Protocol: TLS 1.2 and 1.3, AEAD ECDHE suites, no renegotiation, no 0-RTT. */
static int ctx_protocol(struct tls_ctx *c, const struct tls_opts *o, char *err, size_t errcap)
{
    char e[128];
    SSL_CTX_set_min_proto_version(c->ssl, TLS1_2_VERSION);
    SSL_CTX_set_options(c->ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                    SSL_OP_NO_COMPRESSION |
                                    (o->session_tickets ? 0 : SSL_OP_NO_TICKET));
    SSL_CTX_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_max_early_data(c->ssl, 0);
    const char *l12 = TLS12_DEFAULT, *l13 = TLS13_DEFAULT;
    char *p12 = NULL, *p13 = NULL;
    if (o->ciphers) {
        int rc = parse_suites(o->ciphers, &p12, &p13, err, errcap);
        if (rc)
            return rc;
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
        tls_errf(err, errcap, "cipher suites: %s", tls_ossl_str(e, sizeof e));
        return -EINVAL;
    }
    return set_groups(c->ssl, o->groups ? o->groups : GROUPS_DEFAULT, err, errcap);
}

/* Peer verification and ALPN. */
static int ctx_verify_alpn(struct tls_ctx *c, const struct tls_opts *o, char *err, size_t errcap)
{
    int mode = SSL_VERIFY_NONE;
    if (o->verify_peer)
        mode = SSL_VERIFY_PEER | (c->server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0);
    else if (c->has_ca)
        mode = SSL_VERIFY_PEER;
    SSL_CTX_set_verify(c->ssl, mode, on_verify);

    if (c->server && o->acme) {
        c->acme = o->acme;
        SSL_CTX_set_client_hello_cb(c->ssl, tls_ossl_acme_hello, c);
        SSL_CTX_set_alpn_select_cb(c->ssl, on_alpn, c);
    }
    if (!o->alpn || !o->alpn[0])
        return 0;
    int rc = copy_alpn(c, o->alpn);
    if (rc) {
        tls_errf(err, errcap, "bad ALPN list");
        return rc;
    }
    if (c->server)
        SSL_CTX_set_alpn_select_cb(c->ssl, on_alpn, c);
    else if (SSL_CTX_set_alpn_protos(c->ssl, c->alpn_wire, (unsigned)c->alpn_wire_len) != 0) {
        tls_errf(err, errcap, "bad ALPN list");
        return -EINVAL;
    }
    return 0;
}

/* Server: SNI, the session cache and ticket keys. Client: sessions saved for reconnects. */
static int ctx_sessions(struct tls_ctx *c, const struct tls_opts *o, char *err, size_t errcap)
{
    static const unsigned char sid_ctx[] = "edge-suite";
    if (!c->server) {
        SSL_CTX_set_session_cache_mode(c->ssl,
                                       SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(c->ssl, on_new_session);
        return 0;
    }
    /* Also with one certificate: it records the name the client asked for. */
    SSL_CTX_set_tlsext_servername_callback(c->ssl, on_servername);
    SSL_CTX_set_tlsext_servername_arg(c->ssl, c);
    SSL_CTX_set_session_id_context(c->ssl, sid_ctx, sizeof sid_ctx - 1);
    SSL_CTX_set_session_cache_mode(c->ssl, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(c->ssl, o->session_cache_size ? (long)o->session_cache_size
                                                              : TLS_CACHE_DEFAULT);
    SSL_CTX_set_timeout(c->ssl, TLS_CACHE_TIMEOUT_S);
    SSL_CTX_set_num_tickets(c->ssl, 1);
    if (o->session_tickets && (new_ticket_key(&c->keys[0], time(NULL)) != 0 ||
                               SSL_CTX_set_tlsext_ticket_key_evp_cb(c->ssl, on_ticket_key) != 1)) {
        tls_errf(err, errcap, "session tickets: cannot make a key");
        return -EIO;
    }
    return 0;
}

int tls_ctx_create(struct tls_ctx **out, const struct tls_opts *o, char *err, size_t errcap)
{
    char e[128];
    int rc = 0;

    if (!out || !o || (o->ncerts && !o->certs)) {
        tls_errf(err, errcap, "invalid TLS options");
        return -EINVAL;
    }
    struct tls_ctx *c = tls_ossl_bio_method() ? ctx_alloc(o) : NULL;
    if (!c) {
        tls_errf(err, errcap, "out of memory");
        return -ENOMEM;
    }
    ERR_clear_error();
    c->ssl = SSL_CTX_new(o->server ? TLS_server_method() : TLS_client_method());
    if (!c->ssl) {
        tls_errf(err, errcap, "TLS config: %s", tls_ossl_str(e, sizeof e));
        rc = -ENOMEM;
    } else {
        SSL_CTX_set_app_data(c->ssl, c);
    }
    if (rc == 0)
        rc = ctx_load_certs(c, o, err, errcap);
    if (rc == 0)
        rc = ctx_protocol(c, o, err, errcap);
    if (rc == 0)
        rc = ctx_verify_alpn(c, o, err, errcap);
    if (rc == 0)
        rc = ctx_sessions(c, o, err, errcap);
    ERR_clear_error();
    if (rc) {
        ctx_free(c);
        return rc;
    }
    *out = c;
    return 0;
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

const char *tls_backend(void)
{
    return "OpenSSL " OPENSSL_VERSION_STR;
}
