/* Contexts for the mbedTLS backend (tls_mbed.h): options to an mbedtls_ssl_config with its
 * certificates, CA, suites, groups, ALPN, session cache and ticket keys; reference counts. */
#include "common/tls_mbed.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Server: picks the certificate for the name the client asked for and records the name. */
static int on_sni(void *arg, mbedtls_ssl_context *ssl, const unsigned char *name, size_t len)
{
    struct tls_ctx *ctx = arg;
    struct tls_conn *c = (struct tls_conn *)ssl; /* ssl is the first member */
    if (len == 0 || len > 255 || memchr(name, 0, len))
        return 0;
    free(c->b.sni);
    c->b.sni = strndup((const char *)name, len);
    for (size_t i = 0; i < ctx->ncerts; i++) {
        if (tls_mbed_crt_matches(&ctx->certs[i].crt, (const char *)name, len))
            return mbedtls_ssl_set_hs_own_cert(ssl, &ctx->certs[i].crt, &ctx->certs[i].key);
    }
    /* Unknown name: the default certificate answers, as most servers do. */
    return 0;
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
    tls_mbed_acme_conf_free(c);
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

/* A zeroed ctx with its mbedTLS parts initialised, so that ctx_free may run at any point. */
static struct tls_ctx *ctx_alloc(const struct tls_opts *o)
{
    struct tls_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
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
    return c;
}

/* The certificates of o (or a self-signed one for a server without any), each checked
 * against its key, and the CA bundle. */
static int ctx_load_certs(struct tls_ctx *c, const struct tls_opts *o, char *err, size_t errcap)
{
    size_t ncerts = o->ncerts;
    bool self = c->server && ncerts == 0;
    c->certs = calloc(self ? 1 : (ncerts ? ncerts : 1), sizeof *c->certs);
    if (!c->certs) {
        tls_errf(err, errcap, "out of memory");
        return -ENOMEM;
    }
    for (size_t i = 0; i < (self ? 1 : ncerts); i++) {
        mbedtls_x509_crt_init(&c->certs[i].crt);
        mbedtls_pk_init(&c->certs[i].key);
        c->ncerts++;
    }
    int rc;
    if (self) {
        rc = tls_mbed_self_signed(&c->drbg, &c->certs[0],
                                  o->self_signed_name ? o->self_signed_name : "localhost", err,
                                  errcap);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < ncerts; i++) {
        const struct tls_cert_opts *co = &o->certs[i];
        if (!co->cert_file || !co->key_file) {
            /* cfg leaves a CFG_FILE key NULL when its default file does not exist. */
            tls_errf(err, errcap,
                     "certificate %zu: no %s (not configured, or its default file is missing)", i,
                     !co->cert_file ? "certificate file" : "key file");
            return -EINVAL;
        }
        rc = tls_mbed_load_crt(&c->certs[i].crt, co->cert_file, false, err, errcap);
        if (rc == 0)
            rc = tls_mbed_load_key(&c->certs[i].key, co->key_file, err, errcap);
        if (rc)
            return rc;
        if (mbedtls_pk_check_pair(&c->certs[i].crt.pk, &c->certs[i].key) != 0) {
            tls_errf(err, errcap, "%s does not match the key in %s", co->cert_file, co->key_file);
            return -EINVAL;
        }
    }
    if (c->ncerts)
        tls_mbed_fingerprint(&c->certs[0].crt, c->fingerprint);

    if (o->ca_file) {
        rc = tls_mbed_load_crt(&c->ca, o->ca_file, true, err, errcap);
        if (rc)
            return rc;
        c->has_ca = true;
    } else if (o->verify_peer) {
        tls_errf(err, errcap, "verify_peer needs a CA bundle (ca_file)");
        return -EINVAL;
    }
    return 0;
}

/* Cipher suites and ECDHE groups: the given lists or the defaults. */
static int ctx_conf_suites(struct tls_ctx *c, const struct tls_opts *o, char *err, size_t errcap)
{
    int rc;
    if (o->ciphers) {
        rc = parse_suites(o->ciphers, &c->suites, err, errcap);
        if (rc)
            return rc;
        mbedtls_ssl_conf_ciphersuites(&c->conf, c->suites);
    } else {
        mbedtls_ssl_conf_ciphersuites(&c->conf, default_suites);
    }
    if (o->groups) {
        rc = parse_groups(o->groups, &c->groups, err, errcap);
        if (rc)
            return rc;
        mbedtls_ssl_conf_curves(&c->conf, c->groups);
    } else {
        mbedtls_ssl_conf_curves(&c->conf, curves);
    }
    return 0;
}

/* The mbedTLS config: TLS 1.2+, suites, groups, no renegotiation, peer verification, our
 * certificate, ALPN. */
static int ctx_configure(struct tls_ctx *c, const struct tls_opts *o, char *err, size_t errcap)
{
    char e[128];
    int rc = mbedtls_ssl_config_defaults(&c->conf,
                                         c->server ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT,
                                         MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc) {
        tls_errf(err, errcap, "TLS config: %s", tls_mbed_str(rc, e, sizeof e));
        return -EINVAL;
    }
    mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &c->drbg);
    mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    if ((rc = ctx_conf_suites(c, o, err, errcap)) != 0)
        return rc;
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
            tls_errf(err, errcap, "TLS config: %s", tls_mbed_str(rc, e, sizeof e));
            return -EINVAL;
        }
    }
    if (o->alpn && o->alpn[0]) {
        rc = copy_alpn(o->alpn, &c->alpn);
        if (rc) {
            tls_errf(err, errcap, "bad ALPN list");
            return rc;
        }
        mbedtls_ssl_conf_alpn_protocols(&c->conf, c->alpn);
    }
    return 0;
}

/* Server: SNI, the session cache and ticket keys. Client: whether to use tickets. */
static int ctx_sessions(struct tls_ctx *c, const struct tls_opts *o, char *err, size_t errcap)
{
    if (!c->server) {
        mbedtls_ssl_conf_session_tickets(&c->conf, o->session_tickets
                                                       ? MBEDTLS_SSL_SESSION_TICKETS_ENABLED
                                                       : MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
        return 0;
    }
    /* Also with one certificate: it records the name the client asked for. */
    mbedtls_ssl_conf_sni(&c->conf, on_sni, c);
    mbedtls_ssl_cache_set_max_entries(&c->cache, o->session_cache_size ? (int)o->session_cache_size
                                                                       : TLS_CACHE_DEFAULT);
    mbedtls_ssl_cache_set_timeout(&c->cache, TLS_CACHE_TIMEOUT_S);
    mbedtls_ssl_conf_session_cache(&c->conf, &c->cache, mbedtls_ssl_cache_get,
                                   mbedtls_ssl_cache_set);
    if (!o->session_tickets)
        return 0;
    mbedtls_ssl_ticket_init(&c->ticket);
    c->tickets = true;
    /* The key is random and rotates every lifetime; two keys are kept so tickets issued just
     * before a rotation still work. */
    int rc = mbedtls_ssl_ticket_setup(&c->ticket, mbedtls_ctr_drbg_random, &c->drbg,
                                      MBEDTLS_CIPHER_AES_256_GCM, TLS_TICKET_LIFETIME_S);
    if (rc) {
        char e[128];
        tls_errf(err, errcap, "session tickets: %s", tls_mbed_str(rc, e, sizeof e));
        return -EIO;
    }
    mbedtls_ssl_conf_session_tickets_cb(&c->conf, mbedtls_ssl_ticket_write,
                                        mbedtls_ssl_ticket_parse, &c->ticket);
    return 0;
}

int tls_ctx_create(struct tls_ctx **out, const struct tls_opts *o, char *err, size_t errcap)
{
    static const char pers[] = "edge-suite tls";
    char e[128];

    if (!out || !o || (o->ncerts && !o->certs)) {
        tls_errf(err, errcap, "invalid TLS options");
        return -EINVAL;
    }
    struct tls_ctx *c = ctx_alloc(o);
    if (!c) {
        tls_errf(err, errcap, "out of memory");
        return -ENOMEM;
    }
    int rc = mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->entropy,
                                   (const unsigned char *)pers, sizeof pers - 1);
    if (rc) {
        tls_errf(err, errcap, "cannot seed the random generator: %s",
                 tls_mbed_str(rc, e, sizeof e));
        rc = -EIO;
    }
    if (rc == 0)
        rc = ctx_load_certs(c, o, err, errcap);
    if (rc == 0)
        rc = ctx_configure(c, o, err, errcap);
    if (rc == 0)
        rc = ctx_sessions(c, o, err, errcap);
    if (rc == 0 && c->server && o->acme)
        rc = tls_mbed_acme_conf(c, o->acme, c->suites ? c->suites : default_suites,
                                c->groups ? c->groups : curves, err, errcap);
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
    return "mbedTLS " MBEDTLS_VERSION_STRING;
}
