/* The Director's registrar and stateless proxy (see registrar.h). Message framing and
 * splicing come from the access edge's sip_msg/sip_proxy modules; osip2 parses. */
#include "director/registrar.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <osipparser2/osip_parser.h>

#include "access-edge/sip_msg.h"
#include "access-edge/sip_osip.h"
#include "access-edge/sip_proxy.h"
#include "common/crypto.h"
#include "common/stream.h"
#include "director/director.h"

#define RG_UDP_MAX 4
#define RG_LST_MAX 8
#define RG_CONNS 1024
#define RG_BINDINGS 4096
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
    {"max_expires", CFG_UINT, SC(max_expires_s), "3600", .min = 60, .max = 86400,
     .help = "longest registration granted, seconds"},
    {"nonce_lifetime", CFG_DURATION, SC(nonce_lifetime_ms), "5m", .min = 1000,
     .help = "how long a Digest nonce stays valid"},
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
    struct tls_ctx *tls;
    struct rg_conn *conns[RG_CONNS];
    uint32_t next_id;
    struct rg_binding *bindings;
    size_t nbindings;
    uint64_t salt;
    uint8_t nonce_key[32];
    int open_handles;
    bool stopping;
    struct metric *m_in, *m_options, *m_reg_ok, *m_challenge, *m_auth_fail, *m_fwd, *m_404;
    struct sip_msg msg;
    uint8_t out[RG_OUT_CAP];
    uint8_t rbuf[65536];
};

/* ---- digest ---- */

static void hash_hex(bool sha, const char *s, char out[65])
{
    uint8_t d[SHA256_LEN];
    if (sha) {
        crypto_sha256(s, strlen(s), d);
        hex_encode(d, SHA256_LEN, out);
    } else {
        crypto_md5(s, strlen(s), d);
        hex_encode(d, MD5_LEN, out);
    }
}

int registrar_digest(const char *algorithm, const char *user, const char *realm,
                     const char *password, const char *method, const char *uri,
                     const char *nonce, const char *nc, const char *cnonce, const char *qop,
                     char out[65])
{
    bool sha;
    if (!algorithm || strcasecmp(algorithm, "MD5") == 0)
        sha = false;
    else if (strcasecmp(algorithm, "SHA-256") == 0)
        sha = true;
    else
        return -EINVAL;
    char buf[1024], ha1[65], ha2[65];
    snprintf(buf, sizeof(buf), "%s:%s:%s", user, realm, password);
    hash_hex(sha, buf, ha1);
    snprintf(buf, sizeof(buf), "%s:%s", method, uri);
    hash_hex(sha, buf, ha2);
    if (qop && *qop)
        snprintf(buf, sizeof(buf), "%s:%s:%s:%s:%s:%s", ha1, nonce, nc ? nc : "",
                 cnonce ? cnonce : "", qop, ha2);
    else
        snprintf(buf, sizeof(buf), "%s:%s:%s", ha1, nonce, ha2);
    hash_hex(sha, buf, out);
    return 0;
}

/* Stateless nonce: issue time and a MAC of it, so any Director instance with the key (and
 * a restart within the lifetime, never) can check it without a table. */
static void nonce_make(struct registrar *rg, uint64_t now_ms, char out[64])
{
    char t[20];
    snprintf(t, sizeof(t), "%016llx", (unsigned long long)now_ms);
    uint8_t mac[SHA256_LEN];
    crypto_hmac_sha256(rg->nonce_key, sizeof(rg->nonce_key), t, 16, mac);
    char mh[33];
    hex_encode(mac, 16, mh);
    snprintf(out, 64, "%s%s", t, mh);
}

static bool nonce_ok(struct registrar *rg, const char *n, uint64_t now_ms)
{
    if (strlen(n) != 48)
        return false;
    uint8_t mac[SHA256_LEN];
    crypto_hmac_sha256(rg->nonce_key, sizeof(rg->nonce_key), n, 16, mac);
    char mh[33];
    hex_encode(mac, 16, mh);
    if (!crypto_ct_eq(mh, n + 16, 32))
        return false;
    char t[17];
    memcpy(t, n, 16);
    t[16] = 0;
    uint64_t issued = strtoull(t, NULL, 16);
    return issued <= now_ms && now_ms - issued <= (&rg->d->cfg->sip)->nonce_lifetime_ms;
}

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

static void rg_reply(struct registrar *rg, const struct rg_origin *o, const struct sip_msg *m,
                     int status, const char *phrase, const char *extra)
{
    if (slice_eq_str(m->method, "ACK"))
        return;
    char tag[24];
    snprintf(tag, sizeof(tag), "d%08x", (unsigned)(sip_branch_hash(rg->salt, m) & 0xffffffffu));
    ssize_t n = sip_reply_make(m, status, phrase, tag, slice_str(extra ? extra : ""), rg->out,
                               RG_OUT_CAP);
    if (n > 0)
        rg_send(rg, o->conn_id, o->peer, false, rg->out, (size_t)n);
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

static void do_register(struct registrar *rg, const struct rg_origin *o, const struct sip_msg *m,
                        osip_message_t *msg)
{
    const struct director_sip_config *c = (&rg->d->cfg->sip);
    uint64_t now = uv_now(rg->d->loop);
    const char *user = msg->to && msg->to->url ? msg->to->url->username : NULL;
    const struct director_sip_user *u = user_find(c, user);
    osip_authorization_t *auth = NULL;
    osip_message_get_authorization(msg, 0, &auth);
    bool ok = false, stale = false;
    if (auth && u) {
        char un[128], realm[128], nonce[128], uri[512], resp[128], alg[32], cnonce[128], qop[16],
            nc[16];
        unquote(auth->username, un, sizeof(un));
        unquote(auth->realm, realm, sizeof(realm));
        unquote(auth->nonce, nonce, sizeof(nonce));
        unquote(auth->uri, uri, sizeof(uri));
        unquote(auth->response, resp, sizeof(resp));
        unquote(auth->algorithm, alg, sizeof(alg));
        unquote(auth->cnonce, cnonce, sizeof(cnonce));
        unquote(auth->message_qop, qop, sizeof(qop));
        unquote(auth->nonce_count, nc, sizeof(nc));
        char want[65];
        if (strcmp(un, u->name) == 0 && strcmp(realm, c->realm) == 0 &&
            registrar_digest(alg[0] ? alg : "MD5", u->name, c->realm, u->password,
                             msg->sip_method, uri, nonce, nc, cnonce, qop, want) == 0 &&
            strlen(resp) == strlen(want) && crypto_ct_eq(resp, want, strlen(want))) {
            ok = nonce_ok(rg, nonce, now);
            stale = !ok;
        }
    }
    if (!ok) {
        metric_inc(auth ? rg->m_auth_fail : rg->m_challenge);
        char hdrs[1024] = "", nonce[64];
        nonce_make(rg, now, nonce);
        size_t n = 0;
        size_t na = c->nalgorithms ? c->nalgorithms : ARRAY_SIZE(default_algs);
        for (size_t i = 0; i < na && n < sizeof(hdrs); i++) {
            const char *alg = c->nalgorithms ? c->algorithms[i] : default_algs[i];
            n += (size_t)snprintf(hdrs + n, sizeof(hdrs) - n,
                                  "WWW-Authenticate: Digest realm=\"%s\", nonce=\"%s\", "
                                  "algorithm=%s, qop=\"auth\"%s\r\n",
                                  c->realm, nonce, alg, stale ? ", stale=true" : "");
        }
        rg_reply(rg, o, m, 401, "Unauthorized", hdrs);
        return;
    }
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

static void do_forward(struct registrar *rg, const struct rg_origin *o, const struct sip_msg *m,
                       osip_message_t *msg)
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
    struct addr to;
    bool stream = false;
    char ruri[300] = "", ins[1024] = "";
    size_t n = 0;
    osip_route_t *next = osip_list_get(&msg->routes, (int)pop);
    if (next && (int)pop < nr) {
        if (uri_target(next->url, &to, &stream) < 0) {
            rg_reply(rg, o, m, 404, "Not Found", NULL);
            return;
        }
    } else if (has_domain(c, msg->req_uri->host) || is_own(rg, msg->req_uri)) {
        const char *user = msg->req_uri->username;
        struct rg_binding *b = user ? binding_find(rg, user, uv_now(rg->d->loop)) : NULL;
        if (!b) {
            metric_inc(rg->m_404);
            rg_reply(rg, o, m, user_find(c, user) ? 480 : 404,
                     user_find(c, user) ? "Temporarily Unavailable" : "Not Found", NULL);
            return;
        }
        /* Retarget to the registered contact; the stored Path becomes the route set
         * (RFC 3327 §5.3) so the request goes back through the edge over the user's flow. */
        snprintf(ruri, sizeof(ruri), "%s", b->contact);
        osip_uri_t *target = NULL;
        osip_uri_init(&target);
        int prc;
        if (b->path[0]) {
            n += (size_t)snprintf(ins + n, sizeof(ins) - n, "Route: %s\r\n", b->path);
            osip_route_t *pr = NULL;
            osip_route_init(&pr);
            char first[512];
            snprintf(first, sizeof(first), "%.*s",
                     (int)sip_value_first_len(slice_str(b->path)), b->path);
            prc = osip_route_parse(pr, first);
            if (prc == 0)
                prc = uri_target(pr->url, &to, &stream);
            osip_route_free(pr);
        } else {
            prc = osip_uri_parse(target, b->contact);
            if (prc == 0)
                prc = uri_target(target, &to, &stream);
        }
        osip_uri_free(target);
        if (prc < 0) {
            rg_reply(rg, o, m, 404, "Not Found", NULL);
            return;
        }
    } else if (uri_target(msg->req_uri, &to, &stream) < 0) {
        /* Another domain: federation goes out through the edge. */
        to = c->edge;
        stream = false;
    }
    /* Our Via, then the route set we add. */
    char br[SIP_BRANCH_MAX], hs[ADDR_STRLEN];
    sip_branch_format(sip_branch_hash(rg->salt, m), o->conn_id, br);
    struct rg_conn *oc = stream ? conn_by_host(rg, &to) : NULL;
    const struct addr *local = oc ? stream_local(oc->s) : rg->nudp ? &rg->udp[0].local : NULL;
    if (!local) {
        rg_reply(rg, o, m, 503, "Service Unavailable", NULL);
        return;
    }
    addr_format(local, hs);
    char via[256];
    int vl = snprintf(via, sizeof(via), "Via: SIP/2.0/%s %s;branch=%s\r\n", oc ? "TLS" : "UDP",
                      hs, br);
    char all[1400];
    int al = snprintf(all, sizeof(all), "%.*s%s", vl, via, ins);
    if (al < 0 || (size_t)al >= sizeof(all))
        return;
    struct sip_fwd_opts fo = {.insert = slice_make(all, (size_t)al), .pop_routes = pop,
                              .src = o->conn_id ? NULL : o->peer,
                              .ruri = slice_str(ruri)};
    ssize_t len = sip_fwd_request(m, &fo, rg->out, RG_OUT_CAP);
    if (len < 0)
        return;
    metric_inc(rg->m_fwd);
    if (rg_send(rg, oc ? oc->id : 0, &to, stream, rg->out, (size_t)len) < 0 && !oc && stream)
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
    if (sip_osip_parse(msg, m) != 0 || !msg->req_uri ||
        !msg->req_uri->host || !msg->to || !msg->cseq) {
        metric_inc(rg->m_in);
        LOGI(rg->d->log, o->peer, "sip: unparseable request dropped");
        osip_message_free(msg);
        return;
    }
    if (slice_eq_str(m->method, "OPTIONS") && is_own(rg, msg->req_uri) &&
        !msg->req_uri->username) {
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
    } else if (slice_eq_str(m->method, "REGISTER") && osip_list_size(&msg->routes) == 0 &&
               (has_domain((&rg->d->cfg->sip), msg->req_uri->host) || is_own(rg, msg->req_uri))) {
        do_register(rg, o, m, msg);
    } else {
        do_forward(rg, o, m, msg);
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
    struct stream_opts so = {.tls = l->tls ? rg->tls : NULL, .handshake_timeout_ms = 10000};
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
        tls_ctx_unref(rg->tls);
        free(rg->bindings);
        free(rg);
    }
}

static void on_closed(uv_handle_t *h)
{
    rg_unref(h->data);
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
    sip_osip_init(); /* osip2's header table, its traces kept out of the log */
    rg->open_handles = 1; /* held until registrar_stop */
    rg->bindings = calloc(RG_BINDINGS, sizeof(*rg->bindings));
    int rc = rg->bindings ? 0 : -ENOMEM;
    if (rc == 0 && (crypto_random(&rg->salt, sizeof(rg->salt)) < 0 ||
                    crypto_random(rg->nonce_key, sizeof(rg->nonce_key)) < 0))
        rc = -EIO;
    if (rc == 0 && c->nmtls) {
        struct tls_cert_opts co = {d->cfg->tls.cert, d->cfg->tls.key};
        struct tls_opts to = {.server = true, .certs = &co, .ncerts = 1,
                              .ca_file = d->cfg->tls.ca, .verify_peer = true,
                              .session_tickets = true};
        char err[256];
        rc = tls_ctx_create(&rg->tls, &to, err, sizeof(err));
        if (rc < 0)
            LOGE(d->log, NULL, "sip: TLS: %s", err);
    }
    d->registrar = rg;
    rg->m_in = metrics_counter(d->metrics, "sip_messages_in_total", "SIP messages received",
                               NULL);
    rg->m_options = metrics_counter(d->metrics, "sip_options_answered_total",
                                    "OPTIONS probes for the Director itself, answered 200", NULL);
    rg->m_reg_ok = metrics_counter(d->metrics, "sip_registrations_total",
                                   "successful REGISTERs", NULL);
    rg->m_challenge = metrics_counter(d->metrics, "sip_challenges_total",
                                      "401 challenges sent", NULL);
    rg->m_auth_fail = metrics_counter(d->metrics, "sip_auth_failures_total",
                                      "REGISTERs with wrong or stale credentials", NULL);
    rg->m_fwd = metrics_counter(d->metrics, "sip_forwarded_total", "requests proxied", NULL);
    rg->m_404 = metrics_counter(d->metrics, "sip_not_found_total",
                                "requests for users not registered", NULL);
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
