/* The Director's registrar and stateless proxy (see registrar.h). Message framing and
 * splicing come from the access edge's sip_msg/sip_proxy modules; osip2 parses. */
#include "director/registrar.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <osipparser2/osip_parser.h>

#include "common/crypto.h"
#include "common/sip/sip_msg.h"
#include "common/sip/sip_osip.h"
#include "common/sip/sip_proxy.h"
#include "common/stream.h"
#include "director/digest_auth.h"
#include "director/director.h"
#include "director/regstore.h"

#define RG_UDP_MAX 4
#define RG_LST_MAX 8
#define RG_CONNS 1024
#define RG_BINDINGS 4096
#define RG_SEEN 256
#define RG_OUT_CAP (256 * 1024)

static const char *const default_algs[] = {"SHA-256", "MD5"};

#define SC(f) offsetof(struct director_sip_config, f)
static const struct cfg_key user_keys[] = {
    {"name", CFG_STR, offsetof(struct director_sip_user, name), NULL, .required = true,
     .help = "user part of the address of record"},
    {"password", CFG_STR, offsetof(struct director_sip_user, password), NULL, .required = true,
     .help = "Digest password"},
    CFG_END,
};
const struct cfg_key registrar_config_keys[] = {
    {"enabled", CFG_BOOL, SC(enabled), "false", .help = "run the SIP registrar and proxy"},
    {"udp", CFG_ADDRLIST, SC(udp), NULL, .min = 5060, .count_offset = SC(nudp),
     .help = "SIP over UDP listeners"},
    {"tcp", CFG_ADDRLIST, SC(tcp), NULL, .min = 5060, .count_offset = SC(ntcp),
     .help = "SIP over TCP listeners"},
    {"mtls", CFG_ADDRLIST, SC(mtls), NULL, .min = 5061, .count_offset = SC(nmtls),
     .help = "SIP over mutual TLS listeners (tls: certificates), for the access edge"},
    {"domains", CFG_STRLIST, SC(domains), NULL, .count_offset = SC(ndomains),
     .help = "SIP domains this Director is the registrar for"},
    {"realm", CFG_STR, SC(realm), "example.com", .help = "Digest realm"},
    {"algorithms", CFG_STRLIST, SC(algorithms), NULL, .count_offset = SC(nalgorithms),
     .help = "Digest algorithms offered, in order (default SHA-256, MD5)"},
    {"users", CFG_LIST, SC(users), NULL, .sub = user_keys,
     .elem_size = sizeof(struct director_sip_user), .count_offset = SC(nusers),
     .help = "users and their Digest passwords"},
    {"edge", CFG_ADDR, SC(edge), "127.0.0.21:5060", .min = 5060,
     .help = "the access edge's internal SIP address (requests for other domains)"},
    {"store", CFG_STR, SC(store), NULL,
     .help = "file that keeps registrations across a restart (append-only, compacted); "
             "without it they live in memory and a restart loses them"},
    {"max_expires", CFG_UINT, SC(max_expires_s), "3600", .min = 60, .max = 86400,
     .help = "longest registration granted, seconds"},
    {"nonce_lifetime", CFG_DURATION, SC(nonce_lifetime_ms), "5m", .min = 1000, .max = 3600 * 1000,
     .help = "how long a Digest nonce stays valid"},
    {"authenticate_remote", CFG_BOOL, SC(authenticate_remote), "true",
     .help = "challenge (407) every out-of-dialog request the edge marks as from a remote "
             "user; federated partners the edge verified are not challenged"},
    {"guess_burst", CFG_UINT, SC(guess_burst), "10", .min = 1, .max = 1000,
     .help = "wrong Digest answers for one user before back-off (from addresses the user "
             "never authenticated from)"},
    {"guesses_per_hour", CFG_UINT, SC(guesses_per_hour), "50", .min = 1, .max = 100000,
     .help = "wrong answers per user per hour allowed after that burst"},
    {"known_guess_burst", CFG_UINT, SC(known_guess_burst), "5", .min = 1, .max = 1000,
     .help = "the same, for addresses the user authenticated from in the last 30 days (so an "
             "attacker elsewhere cannot lock the user out)"},
    {"known_guesses_per_hour", CFG_UINT, SC(known_guesses_per_hour), "25", .min = 1, .max = 100000,
     .help = "refill of the known-address allowance, per user per hour"},
    CFG_END,
};

struct rg_binding {
    char user[64];
    char contact[256]; /* the Contact URI */
    char path[512];    /* Path header values, or "" */
    uint64_t expires_ms;
};

struct rg_udp {
    uv_udp_t h;
    struct registrar *rg;
    struct addr local;
};

struct rg_listener {
    uv_tcp_t h;
    struct registrar *rg;
    bool tls;
};

struct rg_conn {
    struct registrar *rg;
    struct stream *s;
    uint32_t id;
    struct addr peer;
    struct buf rb;
};

struct registrar {
    struct director *d;
    struct rg_udp udp[RG_UDP_MAX];
    size_t nudp;
    struct rg_listener lst[RG_LST_MAX];
    size_t nlst;
    struct rg_conn *conns[RG_CONNS];
    uint32_t next_id;
    struct rg_binding *bindings;
    size_t nbindings;
    struct addr seen[RG_SEEN]; /* inside clients that sent requests directly (a ring) */
    size_t nseen, seen_next;
    uint64_t salt;
    uint8_t tag_key[32];
    struct da_state *da;
    struct regstore *store;        /* NULL: bindings only in memory */
    struct log_limit throttle_log; /* "throttled" lines: one a second, the rest counted */
    int open_handles;
    bool stopping;
    struct metric *m_in, *m_options, *m_reg_ok, *m_challenge, *m_auth_fail, *m_fwd, *m_404;
    struct metric *m_proxy_challenge, *m_proxy_auth_ok, *m_stale, *m_throttled, *m_users_throttled,
        *m_absorbed;
    struct sip_msg msg;
    uint8_t out[RG_OUT_CAP];
    uint8_t rbuf[65536];
};

static void unquote(const char *in, char *out, size_t cap)
{
    if (!in) {
        out[0] = 0;
        return;
    }
    size_t n = strlen(in);
    if (n >= 2 && in[0] == '"' && in[n - 1] == '"') {
        in++;
        n -= 2;
    }
    if (n >= cap)
        n = cap - 1;
    memcpy(out, in, n);
    out[n] = 0;
}

static const struct director_sip_user *user_find(const struct director_sip_config *c,
                                                 const char *name)
{
    for (size_t i = 0; i < c->nusers; i++)
        if (name && strcmp(c->users[i].name, name) == 0)
            return &c->users[i];
    return NULL;
}

/* ---- sending ---- */

static struct rg_conn *conn_get(struct registrar *rg, uint32_t id)
{
    struct rg_conn *c = id ? rg->conns[id % RG_CONNS] : NULL;
    return c && c->id == id ? c : NULL;
}

static struct rg_conn *conn_by_host(struct registrar *rg, const struct addr *a)
{
    for (size_t i = 0; i < RG_CONNS; i++)
        if (rg->conns[i] && addr_host_eq(&rg->conns[i]->peer, a))
            return rg->conns[i];
    return NULL;
}

/* Sends over connection id, or UDP to `to`. */
static int rg_send(struct registrar *rg, uint32_t conn_id, const struct addr *to, bool stream,
                   const uint8_t *p, size_t n)
{
    struct rg_conn *c = conn_get(rg, conn_id);
    if (!c && stream)
        c = conn_by_host(rg, to); /* reuse the peer's connection (RFC 5923 spirit) */
    if (c)
        return stream_write(c->s, p, n);
    if (rg->nudp == 0)
        return -ENOTCONN;
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int rc = uv_udp_try_send(&rg->udp[0].h, &b, 1, &to->u.sa);
    return rc < 0 ? rc : 0;
}

struct rg_origin {
    uint32_t conn_id;
    const struct addr *peer;
};

/* The To tag of the Director's own answers: a MAC of Call-ID and From, so the ACK of a
 * non-2xx we sent (a 407 to an INVITE) is recognised and absorbed here, whatever branch it
 * comes with, and no other UA's tag can look like ours. */
static void own_tag(const struct registrar *rg, const struct sip_msg *m, char out[18])
{
    const struct sip_hdr *ci = sip_msg_find(m, SIP_H_CALL_ID), *fr = sip_msg_find(m, SIP_H_FROM);
    struct slice a = ci ? sip_hdr_value(m, ci) : SLICE_NULL;
    struct slice b = fr ? sip_hdr_value(m, fr) : SLICE_NULL;
    char in[1024];
    int n = snprintf(in, sizeof(in), "%.*s\n%.*s", (int)a.len, (const char *)a.p, (int)b.len,
                     (const char *)b.p);
    if (n < 0 || (size_t)n >= sizeof(in))
        n = (int)sizeof(in) - 1;
    uint8_t mac[SHA256_LEN];
    crypto_hmac_sha256(rg->tag_key, sizeof(rg->tag_key), in, (size_t)n, mac);
    out[0] = 'd';
    hex_encode(mac, 8, out + 1);
    out[17] = 0;
}

static void rg_reply(struct registrar *rg, const struct rg_origin *o, const struct sip_msg *m,
                     int status, const char *phrase, const char *extra)
{
    if (slice_eq_str(m->method, "ACK"))
        return;
    char tag[18];
    own_tag(rg, m, tag);
    ssize_t n =
        sip_reply_make(m, status, phrase, tag, slice_str(extra ? extra : ""), rg->out, RG_OUT_CAP);
    if (n > 0)
        rg_send(rg, o->conn_id, o->peer, false, rg->out, (size_t)n);
}

/* ---- authentication (director/digest_auth.c does the checking) ---- */

struct rg_creds {
    char username[128], realm[128], nonce[128], uri[512], response[160], algorithm[32], cnonce[160],
        qop[16], nc[16];
    struct da_creds c;
};

/* The credentials for our realm among a request's Authorization (proxy: Proxy-Authorization)
 * headers; NULL if none. */
static const struct da_creds *creds_get(osip_message_t *msg, bool proxy, const char *realm,
                                        struct rg_creds *rc)
{
    for (int i = 0; i < 8; i++) {
        osip_authorization_t *a = NULL;
        if (proxy)
            osip_message_get_proxy_authorization(msg, i, &a);
        else
            osip_message_get_authorization(msg, i, &a);
        if (!a)
            return NULL;
        unquote(a->realm, rc->realm, sizeof(rc->realm));
        if (strcmp(rc->realm, realm) != 0)
            continue;
        unquote(a->username, rc->username, sizeof(rc->username));
        unquote(a->nonce, rc->nonce, sizeof(rc->nonce));
        unquote(a->uri, rc->uri, sizeof(rc->uri));
        unquote(a->response, rc->response, sizeof(rc->response));
        unquote(a->algorithm, rc->algorithm, sizeof(rc->algorithm));
        unquote(a->cnonce, rc->cnonce, sizeof(rc->cnonce));
        unquote(a->message_qop, rc->qop, sizeof(rc->qop));
        unquote(a->nonce_count, rc->nc, sizeof(rc->nc));
        rc->c = (struct da_creds){rc->username,  rc->realm,  rc->nonce, rc->uri, rc->response,
                                  rc->algorithm, rc->cnonce, rc->qop,   rc->nc};
        return &rc->c;
    }
    return NULL;
}

/* The edge's trust marking, if the request came through it. */
static bool trust_of(const struct sip_msg *m, struct slice *v)
{
    const struct sip_hdr *h = sip_msg_find(m, SIP_H_TRUST);
    if (!h)
        return false;
    /* Parameters start at the first ';' (the value opens with ms-source-type=...). */
    struct slice all = sip_hdr_value(m, h);
    const uint8_t *semi = memchr(all.p, ';', all.len);
    *v = semi ? slice_make(semi, all.len - (size_t)(semi - all.p)) : SLICE_NULL;
    return true;
}

/* Where the client is: the address the edge saw (its trust marking names it), else the
 * sender of the request. Used as the key for the known-address allowance. false: through an
 * edge that does not say (its own address would make every remote client "known"). */
static bool client_of(const struct rg_origin *o, const struct sip_msg *m, struct addr *out)
{
    struct slice t, v;
    char host[64];
    *out = *o->peer;
    if (!trust_of(m, &t))
        return true;
    return sip_param_find(t, "ms-source-address", &v) &&
           slice_to_cstr(v, host, sizeof(host)) == 0 && addr_parse(out, host, 0) == 0;
}

static void log_throttled(struct registrar *rg, const struct addr *client, const char *user,
                          const struct director_sip_user *u, const struct da_verdict *v)
{
    metric_inc(rg->m_users_throttled);
    uint64_t held;
    if (!log_limit_pass(&rg->throttle_log, uv_now(rg->d->loop), 1000, &held))
        return;
    const struct director_sip_config *c = &rg->d->cfg->sip;
    LOGW(rg->d->log, client,
         "sip: authentication for %s%s throttled: too many wrong passwords from %s addresses; "
         "next answer checked in %u s (limit %u + %u/h)%s",
         u ? "user " : "", u ? u->name : "an unknown user name",
         v->known_address ? "its known" : "unknown", v->retry_after_s,
         v->known_address ? (unsigned)c->known_guess_burst : (unsigned)c->guess_burst,
         v->known_address ? (unsigned)c->known_guesses_per_hour : (unsigned)c->guesses_per_hour,
         held ? " (and more users since the last line)" : "");
}

/* Checks the request's Digest credentials for user (u: its config entry, NULL if no such
 * user). true: authenticated. false: answered (401/407 challenge, stale, or 403 throttled). */
static bool authenticate(struct registrar *rg, const struct rg_origin *o, const struct sip_msg *m,
                         osip_message_t *msg, bool proxy, const char *user,
                         const struct director_sip_user *u)
{
    const struct director_sip_config *c = &rg->d->cfg->sip;
    uint64_t now = uv_now(rg->d->loop);
    struct rg_creds rc;
    struct addr client;
    size_t hl = 0;
    const void *hb = client_of(o, m, &client) ? addr_host_bytes(&client, &hl) : NULL;
    /* The digest-uri is not compared with the Request-URI: sipp, for one, answers with the
     * proxy's address there. Replay is stopped by the nonce-count instead. */
    struct da_request r = {.method = msg->sip_method,
                           .user = user,
                           .password = u ? u->password : NULL,
                           .c = creds_get(msg, proxy, c->realm, &rc),
                           .client = hb,
                           .client_len = hb ? hl : 0,
                           .now_ms = now};
    struct da_limits lim = {c->nonce_lifetime_ms, (uint32_t)c->guess_burst,
                            (uint32_t)c->guesses_per_hour, (uint32_t)c->known_guess_burst,
                            (uint32_t)c->known_guesses_per_hour};
    struct da_verdict v;
    da_check(rg->da, &lim, c->realm, &r, &v);
    if (v.result == DA_OK)
        return true;
    if (v.checked && v.result == DA_CHALLENGE)
        metric_inc(rg->m_auth_fail);
    if (v.throttle_started)
        log_throttled(rg, &client, user, u, &v);
    if (v.result == DA_THROTTLED) {
        metric_inc(rg->m_throttled);
        char hdrs[256];
        snprintf(hdrs, sizeof(hdrs),
                 "Retry-After: %u\r\nWarning: 399 director \"Too many failed authentications; "
                 "try again later\"\r\n",
                 v.retry_after_s);
        rg_reply(rg, o, m, 403, "Forbidden", hdrs);
        return false;
    }
    if (v.result == DA_STALE)
        metric_inc(rg->m_stale);
    metric_inc(proxy ? rg->m_proxy_challenge : rg->m_challenge);
    char hdrs[1024] = "", nonce[DA_NONCE_LEN + 1];
    da_nonce_make(rg->da, now, nonce);
    size_t n = 0;
    size_t na = c->nalgorithms ? c->nalgorithms : ARRAY_SIZE(default_algs);
    for (size_t i = 0; i < na && n < sizeof(hdrs); i++) {
        const char *alg = c->nalgorithms ? c->algorithms[i] : default_algs[i];
        n += (size_t)snprintf(hdrs + n, sizeof(hdrs) - n,
                              "%s: Digest realm=\"%s\", nonce=\"%s\", algorithm=%s, "
                              "qop=\"auth\"%s\r\n",
                              proxy ? "Proxy-Authenticate" : "WWW-Authenticate", c->realm, nonce,
                              alg, v.result == DA_STALE ? ", stale=true" : "");
    }
    if (proxy)
        rg_reply(rg, o, m, 407, "Proxy Authentication Required", hdrs);
    else
        rg_reply(rg, o, m, 401, "Unauthorized", hdrs);
    return false;
}

/* ---- registrar ---- */

static struct rg_binding *binding_find(struct registrar *rg, const char *user, uint64_t now)
{
    for (size_t i = 0; i < rg->nbindings; i++) {
        struct rg_binding *b = &rg->bindings[i];
        if (strcmp(b->user, user) == 0)
            return b->expires_ms > now ? b : NULL;
    }
    return NULL;
}

/* ---- persistence (director/regstore.h) ---- */

static struct regstore_entry entry_of(const struct rg_binding *b, int64_t expires_s)
{
    return (struct regstore_entry){b->user, b->contact, b->path, expires_s};
}

/* Writes a binding change through to the store, and compacts it when it has grown. */
static void store_binding(struct registrar *rg, const struct rg_binding *b, long expires)
{
    if (!rg->store)
        return;
    int64_t wall = time_wall_s();
    struct regstore_entry e = entry_of(b, expires ? wall + expires : 0);
    int rc = regstore_append(rg->store, &e);
    if (rc < 0) {
        LOGW(rg->d->log, NULL, "sip: registration of %s not stored: %s", b->user, strerror(-rc));
        return;
    }
    uint64_t now = uv_now(rg->d->loop);
    size_t live = 0;
    for (size_t i = 0; i < rg->nbindings; i++)
        live += rg->bindings[i].expires_ms > now;
    if (!regstore_wants_compaction(rg->store, live))
        return;
    struct regstore_entry *all = calloc(live ? live : 1, sizeof(*all));
    size_t n = 0;
    for (size_t i = 0; all && i < rg->nbindings; i++) {
        const struct rg_binding *x = &rg->bindings[i];
        if (x->expires_ms > now)
            all[n++] = entry_of(x, wall + (int64_t)((x->expires_ms - now) / 1000) + 1);
    }
    rc = all ? regstore_rewrite(rg->store, all, n) : -ENOMEM;
    if (rc < 0)
        LOGW(rg->d->log, NULL, "sip: registration store not compacted: %s", strerror(-rc));
    free(all);
}

static void on_stored(const struct regstore_entry *e, void *arg)
{
    struct registrar *rg = arg;
    if (rg->nbindings == RG_BINDINGS)
        return;
    struct rg_binding *b = &rg->bindings[rg->nbindings++];
    snprintf(b->user, sizeof(b->user), "%s", e->user);
    snprintf(b->contact, sizeof(b->contact), "%s", e->contact);
    snprintf(b->path, sizeof(b->path), "%s", e->path);
    b->expires_ms = uv_now(rg->d->loop) + (uint64_t)(e->expires_s - time_wall_s()) * 1000;
}

/* Reads the store back into the binding table, then opens it for appending. */
static int restore_bindings(struct registrar *rg, const char *path)
{
    size_t bad = 0;
    int n = regstore_load(path, time_wall_s(), on_stored, rg, &bad);
    if (n < 0 && n != -ENOENT) {
        LOGE(rg->d->log, NULL, "sip: registration store %s: %s", path, strerror(-n));
        return n;
    }
    if (n > 0 || bad)
        LOGI(rg->d->log, NULL, "sip: %d registrations restored from %s (%zu lines skipped)",
             n < 0 ? 0 : n, path, bad);
    int rc = regstore_open(path, &rg->store);
    if (rc < 0)
        LOGE(rg->d->log, NULL, "sip: registration store %s: %s", path, strerror(-rc));
    return rc;
}

static void do_register(struct registrar *rg, const struct rg_origin *o, const struct sip_msg *m,
                        osip_message_t *msg)
{
    const struct director_sip_config *c = (&rg->d->cfg->sip);
    uint64_t now = uv_now(rg->d->loop);
    const char *user = msg->to && msg->to->url ? msg->to->url->username : NULL;
    const struct director_sip_user *u = user_find(c, user);
    if (!authenticate(rg, o, m, msg, false, user, u))
        return;
    /* Store (or remove) the binding: one contact per user in this stub. */
    osip_contact_t *ct = NULL;
    osip_message_get_contact(msg, 0, &ct);
    long expires = 3600;
    osip_header_t *eh = NULL;
    osip_message_get_expires(msg, 0, &eh);
    if (eh && eh->hvalue)
        expires = strtol(eh->hvalue, NULL, 10);
    if (ct) {
        osip_generic_param_t *ep = NULL;
        osip_contact_param_get_byname(ct, "expires", &ep);
        if (ep && ep->gvalue)
            expires = strtol(ep->gvalue, NULL, 10);
    }
    if (expires < 0)
        expires = 0;
    if ((uint64_t)expires > c->max_expires_s)
        expires = (long)c->max_expires_s;
    struct rg_binding *b = NULL;
    for (size_t i = 0; i < rg->nbindings; i++)
        if (strcmp(rg->bindings[i].user, u->name) == 0)
            b = &rg->bindings[i];
    if (!b && rg->nbindings < RG_BINDINGS)
        b = &rg->bindings[rg->nbindings++];
    char *curi = NULL;
    if (ct && ct->url)
        osip_uri_to_str(ct->url, &curi);
    if (b && curi) {
        snprintf(b->user, sizeof(b->user), "%s", u->name);
        snprintf(b->contact, sizeof(b->contact), "%s", curi);
        b->path[0] = 0;
        const struct sip_hdr *ph = sip_msg_find(m, SIP_H_PATH);
        for (uint16_t i = 0; ph && i < m->nhdr; i++) {
            if (m->hdr[i].id != SIP_H_PATH)
                continue;
            struct slice v = sip_hdr_value(m, &m->hdr[i]);
            size_t l = strlen(b->path);
            snprintf(b->path + l, sizeof(b->path) - l, "%s%.*s", l ? ", " : "", (int)v.len,
                     (const char *)v.p);
        }
        b->expires_ms = expires ? now + (uint64_t)expires * 1000 : 0;
        store_binding(rg, b, expires);
    }
    char hdrs[1024];
    snprintf(hdrs, sizeof(hdrs), "Contact: <%s>;expires=%ld\r\n", curi ? curi : "", expires);
    osip_free(curi);
    metric_inc(rg->m_reg_ok);
    LOGI(rg->d->log, o->peer, "sip: %s registered for %lds", u->name, expires);
    rg_reply(rg, o, m, 200, "OK", hdrs);
}

/* ---- proxy ---- */

static bool has_domain(const struct director_sip_config *c, const char *host)
{
    for (size_t i = 0; host && i < c->ndomains; i++)
        if (strcasecmp(c->domains[i], host) == 0)
            return true;
    return false;
}

static bool is_own(struct registrar *rg, const osip_uri_t *u)
{
    if (!u || !u->host)
        return false;
    struct addr a;
    uint16_t port = u->port ? (uint16_t)atoi(u->port) : 5060;
    if (addr_parse(&a, u->host, port) < 0)
        return false;
    addr_set_port(&a, port);
    const struct director_sip_config *c = (&rg->d->cfg->sip);
    for (size_t i = 0; i < c->nudp; i++)
        if (addr_eq(&c->udp[i], &a))
            return true;
    for (size_t i = 0; i < c->ntcp; i++)
        if (addr_eq(&c->tcp[i], &a))
            return true;
    for (size_t i = 0; i < c->nmtls; i++)
        if (addr_eq(&c->mtls[i], &a))
            return true;
    return false;
}

/* Every Route entry names the Director itself (an inside client with the Director as its
 * outbound proxy preloads one): nothing to forward along. */
static bool routes_all_own(struct registrar *rg, osip_message_t *msg)
{
    for (int i = 0; i < osip_list_size(&msg->routes); i++) {
        osip_route_t *rt = osip_list_get(&msg->routes, i);
        if (!rt || !is_own(rg, rt->url))
            return false;
    }
    return true;
}

static int uri_target(const osip_uri_t *u, struct addr *to, bool *stream)
{
    if (!u || !u->host)
        return -EINVAL;
    osip_uri_param_t *t = NULL;
    osip_uri_param_get_byname((osip_list_t *)&u->url_params, "transport", &t);
    *stream = t && t->gvalue && strcasecmp(t->gvalue, "udp") != 0;
    uint16_t port = u->port ? (uint16_t)atoi(u->port) : 5060;
    if (addr_parse(to, u->host, port) < 0)
        return -EINVAL;
    addr_set_port(to, port);
    return 0;
}

/* The address a URI string (a binding's Contact, or the first Path entry) names. */
static bool uri_str_addr(const char *s, bool name_addr, struct addr *a)
{
    bool stream, ok = false;
    if (name_addr) {
        osip_route_t *rt = NULL;
        char first[512];
        snprintf(first, sizeof(first), "%.*s", (int)sip_value_first_len(slice_str(s)), s);
        if (osip_route_init(&rt) == 0 && osip_route_parse(rt, first) == 0)
            ok = uri_target(rt->url, a, &stream) == 0;
        osip_route_free(rt);
        return ok;
    }
    osip_uri_t *u = NULL;
    if (osip_uri_init(&u) == 0 && osip_uri_parse(u, s) == 0)
        ok = uri_target(u, a, &stream) == 0;
    osip_uri_free(u);
    return ok;
}

/* Defence in depth (issue 12): a request the edge sent in goes only to an address the
 * Director learned itself, never to one an outsider wrote in a Route or Request-URI: the
 * edge (config, or the connection it opened), a live registration's Contact or Path, or an
 * inside client that sent the Director a request directly. */
static bool target_known(struct registrar *rg, const struct addr *to, bool stream)
{
    const struct director_sip_config *c = (&rg->d->cfg->sip);
    if (addr_eq(to, &c->edge) || (stream && addr_host_eq(to, &c->edge) && conn_by_host(rg, to)))
        return true;
    for (size_t i = 0; i < rg->nseen; i++)
        if (addr_eq(to, &rg->seen[i]))
            return true;
    uint64_t now = uv_now(rg->d->loop);
    for (size_t i = 0; i < rg->nbindings; i++) {
        const struct rg_binding *b = &rg->bindings[i];
        struct addr a;
        if (b->expires_ms <= now)
            continue;
        if ((uri_str_addr(b->contact, false, &a) && addr_eq(&a, to)) ||
            (b->path[0] && uri_str_addr(b->path, true, &a) && addr_eq(&a, to)))
            return true;
    }
    return false;
}

static void seen_add(struct registrar *rg, const struct addr *a)
{
    for (size_t i = 0; i < rg->nseen; i++)
        if (addr_eq(&rg->seen[i], a))
            return;
    rg->seen[rg->seen_next] = *a;
    rg->seen_next = (rg->seen_next + 1) % RG_SEEN;
    if (rg->nseen < RG_SEEN)
        rg->nseen++;
}

/* Where a forwarded request goes, and what it carries to get there. */
struct rg_fwd {
    struct addr to;
    bool stream;
    char ruri[300]; /* a new Request-URI, or "" */
    char ins[1024]; /* a Route line to insert, or "" */
};

/* A request for one of our users goes to the contact it registered; its stored Path becomes
 * the route set (RFC 3327 §5.3), so the request goes back through the edge over the user's
 * flow. Returns 0, or 1 when answered. */
static int retarget_to_binding(struct registrar *rg, const struct rg_origin *o,
                               const struct sip_msg *m, osip_message_t *msg, struct rg_fwd *f)
{
    const char *user = msg->req_uri->username;
    struct rg_binding *b = user ? binding_find(rg, user, uv_now(rg->d->loop)) : NULL;
    if (!b) {
        /* The same answer whether or not the user exists, so nobody outside can tell
         * (404 for one and 480 for the other listed the users). */
        metric_inc(rg->m_404);
        rg_reply(rg, o, m, 480, "Temporarily Unavailable", NULL);
        return 1;
    }
    snprintf(f->ruri, sizeof(f->ruri), "%s", b->contact);
    osip_uri_t *target = NULL;
    osip_uri_init(&target);
    int prc;
    if (b->path[0]) {
        snprintf(f->ins, sizeof(f->ins), "Route: %s\r\n", b->path);
        osip_route_t *pr = NULL;
        osip_route_init(&pr);
        char first[512];
        snprintf(first, sizeof(first), "%.*s", (int)sip_value_first_len(slice_str(b->path)),
                 b->path);
        prc = osip_route_parse(pr, first);
        if (prc == 0)
            prc = uri_target(pr->url, &f->to, &f->stream);
        osip_route_free(pr);
    } else {
        prc = osip_uri_parse(target, b->contact);
        if (prc == 0)
            prc = uri_target(target, &f->to, &f->stream);
    }
    osip_uri_free(target);
    if (prc < 0) {
        rg_reply(rg, o, m, 404, "Not Found", NULL);
        return 1;
    }
    return 0;
}

/* Answers 404 (counted and logged) for a request the Director will not forward. */
static int refuse_404(struct registrar *rg, const struct rg_origin *o, const struct sip_msg *m,
                      const char *why)
{
    metric_inc(rg->m_404);
    LOGI(rg->d->log, o->peer, "sip: %s: 404", why);
    rg_reply(rg, o, m, 404, "Not Found", NULL);
    return 1;
}

/* The target: the next Route after ours, one of our users' bindings, or the Request-URI
 * (another domain goes out through the edge). Returns 0, or 1 when answered. */
static int pick_target(struct registrar *rg, const struct rg_origin *o, const struct sip_msg *m,
                       osip_message_t *msg, unsigned pop, struct rg_fwd *f)
{
    const struct director_sip_config *c = (&rg->d->cfg->sip);
    bool check = false;
    bool from_edge = addr_host_eq(o->peer, &c->edge);
    if (!from_edge)
        seen_add(rg, o->peer);
    osip_route_t *next = osip_list_get(&msg->routes, (int)pop);
    if (next && (int)pop < osip_list_size(&msg->routes)) {
        if (uri_target(next->url, &f->to, &f->stream) < 0) {
            rg_reply(rg, o, m, 404, "Not Found", NULL);
            return 1;
        }
        check = from_edge;
    } else if (has_domain(c, msg->req_uri->host) || is_own(rg, msg->req_uri)) {
        if (retarget_to_binding(rg, o, m, msg, f))
            return 1;
    } else if (uri_target(msg->req_uri, &f->to, &f->stream) < 0) {
        /* Another domain: federation goes out through the edge; never a request that came
         * in from the edge (an outsider's, routed back out by its Request-URI). */
        if (from_edge)
            return refuse_404(rg, o, m, "request from the edge for another domain");
        f->to = c->edge;
        f->stream = false;
    } else {
        check = from_edge;
    }
    if (check && !target_known(rg, &f->to, f->stream))
        return refuse_404(rg, o, m, "request from the edge to an address never learned");
    return 0;
}

static void do_forward(struct registrar *rg, const struct rg_origin *o, const struct sip_msg *m,
                       osip_message_t *msg, bool strip_creds)
{
    const struct director_sip_config *c = (&rg->d->cfg->sip);
    unsigned pop = 0;
    int nr = osip_list_size(&msg->routes);
    while ((int)pop < nr) {
        osip_route_t *rt = osip_list_get(&msg->routes, (int)pop);
        if (!rt || !is_own(rg, rt->url))
            break;
        pop++;
    }
    struct rg_fwd f = {0};
    if (pick_target(rg, o, m, msg, pop, &f))
        return;
    /* Our Via, then the route set we add. */
    char br[SIP_BRANCH_MAX], hs[ADDR_STRLEN];
    sip_branch_format(sip_branch_hash(rg->salt, m), o->conn_id, br);
    struct rg_conn *oc = f.stream ? conn_by_host(rg, &f.to) : NULL;
    const struct addr *local = oc ? stream_local(oc->s) : rg->nudp ? &rg->udp[0].local : NULL;
    if (!local) {
        rg_reply(rg, o, m, 503, "Service Unavailable", NULL);
        return;
    }
    addr_format(local, hs);
    char via[256];
    int vl =
        snprintf(via, sizeof(via), "Via: SIP/2.0/%s %s;branch=%s\r\n", oc ? "TLS" : "UDP", hs, br);
    char all[1400];
    int al = snprintf(all, sizeof(all), "%.*s%s", vl, via, f.ins);
    if (al < 0 || (size_t)al >= sizeof(all))
        return;
    struct sip_fwd_opts fo = {.insert = slice_make(all, (size_t)al),
                              .pop_routes = pop,
                              .src = o->conn_id ? NULL : o->peer,
                              .ruri = slice_str(f.ruri)};
    ssize_t len = sip_fwd_request(m, &fo, rg->out, RG_OUT_CAP);
    if (len < 0)
        return;
    if (strip_creds)
        len = (ssize_t)da_strip_credentials(rg->out, (size_t)len, c->realm);
    metric_inc(rg->m_fwd);
    if (rg_send(rg, oc ? oc->id : 0, &f.to, f.stream, rg->out, (size_t)len) < 0 && !oc && f.stream)
        rg_reply(rg, o, m, 503, "Service Unavailable", NULL);
}

static void rg_response(struct registrar *rg, const struct sip_msg *m)
{
    uint64_t h;
    uint32_t cid;
    if (!sip_branch_parse(sip_top_branch(m), &h, &cid))
        return;
    struct addr to;
    if (sip_response_next_hop(m, &to) < 0 && !cid)
        return;
    ssize_t len = sip_fwd_response(m, SLICE_NULL, 0, rg->out, RG_OUT_CAP);
    if (len > 0)
        rg_send(rg, cid, &to, false, rg->out, (size_t)len);
}

static bool is_own_ack(const struct registrar *rg, const struct sip_msg *m, osip_message_t *msg)
{
    osip_generic_param_t *t = NULL;
    if (!slice_eq_str(m->method, "ACK") || osip_to_get_tag(msg->to, &t) != 0 || !t || !t->gvalue)
        return false;
    char mine[18];
    own_tag(rg, m, mine);
    return strcmp(t->gvalue, mine) == 0;
}

/* Out of dialog, from a remote user: the edge marked it and did not verify the sender (a
 * partner it verified by mutual TLS and the allow list says ms-source-verified-user=verified).
 * ACK and CANCEL cannot be challenged (RFC 3261 §22.1); REGISTER has its own 401. */
static bool needs_auth(struct registrar *rg, const struct sip_msg *m, osip_message_t *msg)
{
    struct slice t, v;
    osip_generic_param_t *tag = NULL;
    if (!rg->d->cfg->sip.authenticate_remote || !trust_of(m, &t) ||
        slice_eq_str(m->method, "ACK") || slice_eq_str(m->method, "CANCEL"))
        return false;
    if (sip_param_find(t, "ms-source-verified-user", &v) && slice_eq_str(v, "verified"))
        return false;
    /* In dialog (a To tag) and sent to a remote target: the dialog was set up through a
     * challenge. A To tag on a request for one of our users' addresses of record (what the
     * registrar looks up) proves nothing: anyone can write one. */
    bool aor = msg->req_uri->username &&
               (has_domain(&rg->d->cfg->sip, msg->req_uri->host) || is_own(rg, msg->req_uri));
    return aor || osip_to_get_tag(msg->to, &tag) != 0 || !tag;
}

/* A remote user's request: From must be one of our users, proven by Proxy-Authorization. */
static bool authenticate_sender(struct registrar *rg, const struct rg_origin *o,
                                const struct sip_msg *m, osip_message_t *msg)
{
    const struct director_sip_config *c = &rg->d->cfg->sip;
    const osip_uri_t *f = msg->from ? msg->from->url : NULL;
    if (!f || !f->host || !has_domain(c, f->host)) {
        metric_inc(rg->m_auth_fail);
        rg_reply(rg, o, m, 403, "Forbidden",
                 "Warning: 399 director \"From is not a user of this domain\"\r\n");
        return false;
    }
    return authenticate(rg, o, m, msg, true, f->username, user_find(c, f->username));
}

static void rg_handle(struct registrar *rg, const struct rg_origin *o, const struct sip_msg *m)
{
    if (!m->is_request) {
        metric_inc(rg->m_in);
        rg_response(rg, m);
        return;
    }
    osip_message_t *msg = NULL;
    if (osip_message_init(&msg) != 0)
        return;
    if (sip_osip_parse(msg, m) != 0 || !msg->req_uri || !msg->req_uri->host || !msg->to ||
        !msg->cseq) {
        metric_inc(rg->m_in);
        LOGI(rg->d->log, o->peer, "sip: unparseable request dropped");
        osip_message_free(msg);
        return;
    }
    if (slice_eq_str(m->method, "OPTIONS") && is_own(rg, msg->req_uri) && !msg->req_uri->username) {
        /* A keep-alive probe for the Director itself (the edge's health check). */
        metric_inc(rg->m_options);
        rg_reply(rg, o, m, 200, "OK", NULL);
        osip_message_free(msg);
        return;
    }
    metric_inc(rg->m_in);
    osip_header_t *mf = NULL;
    osip_message_get_max_forwards(msg, 0, &mf);
    if (mf && mf->hvalue && atoi(mf->hvalue) <= 0) {
        rg_reply(rg, o, m, 483, "Too Many Hops", NULL);
    } else if (slice_eq_str(m->method, "REGISTER") && routes_all_own(rg, msg) &&
               (has_domain((&rg->d->cfg->sip), msg->req_uri->host) || is_own(rg, msg->req_uri))) {
        do_register(rg, o, m, msg);
    } else if (is_own_ack(rg, m, msg)) {
        metric_inc(rg->m_absorbed); /* the ACK of our own 407/480/...: it ends here */
    } else if (!needs_auth(rg, m, msg)) {
        do_forward(rg, o, m, msg, false);
    } else if (authenticate_sender(rg, o, m, msg)) {
        metric_inc(rg->m_proxy_auth_ok);
        do_forward(rg, o, m, msg, true);
    }
    osip_message_free(msg);
}

/* ---- I/O ---- */

static void on_udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    struct rg_udp *u = h->data;
    *b = uv_buf_init((char *)u->rg->rbuf, sizeof(u->rg->rbuf));
}

static void on_udp_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *b, const struct sockaddr *from,
                        unsigned flags)
{
    struct rg_udp *u = h->data;
    struct registrar *rg = u->rg;
    struct addr peer;
    if (n <= 0 || !from || addr_from_sockaddr(&peer, from) < 0)
        return;
    const uint8_t *p = (const uint8_t *)b->base;
    size_t k = 0;
    while (k < (size_t)n && (p[k] == '\r' || p[k] == '\n'))
        k++;
    if (k == (size_t)n || sip_msg_scan(&rg->msg, p + k, (size_t)n - k, true, 65536) < 0)
        return;
    struct rg_origin o = {0, &peer};
    rg_handle(rg, &o, &rg->msg);
}

static void rg_unref(struct registrar *rg);

static int on_conn_data(struct stream *s, const uint8_t *data, size_t len, void *arg)
{
    struct rg_conn *c = arg;
    struct registrar *rg = c->rg;
    if (buf_append(&c->rb, data, len) < 0)
        return -EMSGSIZE;
    for (int guard = 0; guard < 1024 && buf_len(&c->rb); guard++) {
        struct slice in = buf_slice(&c->rb);
        size_t k = 0;
        while (k < in.len && (in.p[k] == '\r' || in.p[k] == '\n'))
            k++;
        if (k) {
            if (k >= 4)
                stream_write(s, "\r\n", 2);
            buf_consume(&c->rb, k);
            continue;
        }
        ssize_t r = sip_msg_scan(&rg->msg, in.p, in.len, false, 65536);
        if (r == -EAGAIN)
            break;
        if (r < 0)
            return -EBADMSG;
        struct rg_origin o = {c->id, &c->peer};
        rg_handle(rg, &o, &rg->msg);
        buf_consume(&c->rb, (size_t)r);
    }
    return 0;
}

static void on_conn_close(struct stream *s, int err, const char *why, void *arg)
{
    struct rg_conn *c = arg;
    struct registrar *rg = c->rg;
    if (rg->conns[c->id % RG_CONNS] == c)
        rg->conns[c->id % RG_CONNS] = NULL;
    buf_fini(&c->rb);
    free(c);
    rg_unref(rg);
}

static const struct stream_cbs conn_cbs = {on_conn_data, NULL, NULL, on_conn_close};

static void on_accept(uv_stream_t *server, int status)
{
    struct rg_listener *l = server->data;
    struct registrar *rg = l->rg;
    if (status < 0)
        return;
    struct rg_conn *c = calloc(1, sizeof(*c));
    size_t slot = RG_CONNS;
    for (size_t i = 0; c && i < RG_CONNS; i++) {
        uint32_t id = ++rg->next_id ? rg->next_id : ++rg->next_id;
        if (!rg->conns[id % RG_CONNS]) {
            c->id = id;
            slot = id % RG_CONNS;
            break;
        }
    }
    /* The Director's mutual-TLS context, rebuilt on every reload: new handshakes get the
     * renewed certificate, established connections keep theirs. */
    struct stream_opts so = {.tls = l->tls ? rg->d->ctl_tls : NULL, .handshake_timeout_ms = 10000};
    if (!c || slot == RG_CONNS || buf_init(&c->rb, 128 * 1024) < 0) {
        free(c);
        uv_tcp_t *t = malloc(sizeof(*t));
        if (t && uv_tcp_init(rg->d->loop, t) == 0) {
            uv_accept(server, (uv_stream_t *)t);
            uv_close((uv_handle_t *)t, (uv_close_cb)free);
        } else {
            free(t);
        }
        return;
    }
    c->rg = rg;
    if (stream_accept(server, &so, &conn_cbs, c, &c->s) < 0) {
        buf_fini(&c->rb);
        free(c);
        return;
    }
    c->peer = *stream_peer(c->s);
    rg->conns[slot] = c;
    rg->open_handles++;
}

static void rg_unref(struct registrar *rg)
{
    if (--rg->open_handles == 0) {
        da_destroy(rg->da);
        regstore_close(rg->store);
        free(rg->bindings);
        free(rg);
    }
}

static void on_closed(uv_handle_t *h)
{
    rg_unref(h->data);
}

static void make_metrics(struct registrar *rg, struct director *d)
{
    rg->m_in = metrics_counter(d->metrics, "sip_messages_in_total", "SIP messages received", NULL);
    rg->m_options = metrics_counter(d->metrics, "sip_options_answered_total",
                                    "OPTIONS probes for the Director itself, answered 200", NULL);
    rg->m_reg_ok =
        metrics_counter(d->metrics, "sip_registrations_total", "successful REGISTERs", NULL);
    rg->m_challenge =
        metrics_counter(d->metrics, "sip_challenges_total", "401 challenges sent", NULL);
    rg->m_auth_fail = metrics_counter(d->metrics, "sip_auth_failures_total",
                                      "Digest answers with a wrong password (REGISTER or 407), "
                                      "or a remote From not of our domains",
                                      NULL);
    rg->m_proxy_challenge = metrics_counter(d->metrics, "sip_proxy_challenges_total",
                                            "407 challenges to remote users' requests", NULL);
    rg->m_proxy_auth_ok =
        metrics_counter(d->metrics, "sip_proxy_authenticated_total",
                        "remote users' requests that passed the 407 challenge", NULL);
    rg->m_stale =
        metrics_counter(d->metrics, "sip_auth_stale_total",
                        "right answers on an expired or replayed nonce (stale=true)", NULL);
    rg->m_throttled = metrics_counter(d->metrics, "sip_auth_throttled_total",
                                      "Digest answers refused unchecked (403): too many wrong "
                                      "ones for that user lately",
                                      NULL);
    rg->m_users_throttled = metrics_counter(d->metrics, "sip_auth_throttle_started_total",
                                            "times a user name ran out of password guesses", NULL);
    rg->m_absorbed = metrics_counter(d->metrics, "sip_acks_absorbed_total",
                                     "ACKs of the Director's own non-2xx answers", NULL);
    rg->m_fwd = metrics_counter(d->metrics, "sip_forwarded_total", "requests proxied", NULL);
    rg->m_404 = metrics_counter(d->metrics, "sip_not_found_total",
                                "requests for users not registered", NULL);
}

static int listen_udp(struct registrar *rg, struct director *d, const struct director_sip_config *c)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < c->nudp && rg->nudp < RG_UDP_MAX; i++) {
        struct rg_udp *u = &rg->udp[rg->nudp];
        u->rg = rg;
        u->local = c->udp[i];
        rc = uv_udp_init(d->loop, &u->h);
        if (rc < 0)
            break;
        rg->nudp++;
        rg->open_handles++;
        u->h.data = u;
        rc = uv_udp_bind(&u->h, &c->udp[i].u.sa, UV_UDP_REUSEADDR);
        if (rc == 0)
            rc = uv_udp_recv_start(&u->h, on_udp_alloc, on_udp_recv);
        if (rc < 0)
            LOGE(d->log, &c->udp[i], "sip: cannot listen (UDP): %s", uv_strerror(rc));
    }
    return rc;
}

/* TCP, then mutual-TLS listeners. */
static int listen_streams(struct registrar *rg, struct director *d,
                          const struct director_sip_config *c)
{
    int rc = 0;
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        const struct addr *list = pass ? c->mtls : c->tcp;
        size_t cnt = pass ? c->nmtls : c->ntcp;
        for (size_t i = 0; rc == 0 && i < cnt && rg->nlst < RG_LST_MAX; i++) {
            struct rg_listener *l = &rg->lst[rg->nlst];
            l->rg = rg;
            l->tls = pass == 1;
            rc = stream_listen(d->loop, &l->h, &list[i], 256, false, on_accept);
            if (rc < 0) {
                LOGE(d->log, &list[i], "sip: cannot listen: %s", uv_strerror(rc));
                break;
            }
            l->h.data = l;
            rg->nlst++;
            rg->open_handles++;
        }
    }
    return rc;
}

int registrar_start(struct director *d)
{
    const struct director_sip_config *c = &d->cfg->sip;
    if (!c->enabled)
        return 0;
    struct registrar *rg = calloc(1, sizeof(*rg));
    if (!rg)
        return -ENOMEM;
    rg->d = d;
    sip_osip_init();      /* osip2's header table, its traces kept out of the log */
    rg->open_handles = 1; /* held until registrar_stop */
    rg->bindings = calloc(RG_BINDINGS, sizeof(*rg->bindings));
    int rc = rg->bindings ? 0 : -ENOMEM;
    if (rc == 0 && (crypto_random(&rg->salt, sizeof(rg->salt)) < 0 ||
                    crypto_random(rg->tag_key, sizeof(rg->tag_key)) < 0))
        rc = -EIO;
    if (rc == 0)
        rc = da_create(&rg->da);
    if (rc == 0 && c->store && *c->store)
        rc = restore_bindings(rg, c->store);
    d->registrar = rg;
    make_metrics(rg, d);
    if (rc == 0)
        rc = listen_udp(rg, d, c);
    if (rc == 0)
        rc = listen_streams(rg, d, c);
    if (rc < 0) {
        registrar_stop(d);
        return rc;
    }
    LOGI(d->log, NULL, "sip: registrar up (%zu users, %zu domains)", c->nusers, c->ndomains);
    return 0;
}

void registrar_stop(struct director *d)
{
    struct registrar *rg = d->registrar;
    if (!rg || rg->stopping)
        return;
    rg->stopping = true;
    d->registrar = NULL;
    for (size_t i = 0; i < RG_CONNS; i++)
        if (rg->conns[i])
            stream_close(rg->conns[i]->s, 0, "shutdown");
    for (size_t i = 0; i < rg->nudp; i++) {
        rg->udp[i].h.data = rg;
        uv_close((uv_handle_t *)&rg->udp[i].h, on_closed);
    }
    for (size_t i = 0; i < rg->nlst; i++) {
        rg->lst[i].h.data = rg;
        uv_close((uv_handle_t *)&rg->lst[i].h, on_closed);
    }
    rg_unref(rg);
}
