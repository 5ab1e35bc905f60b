/* Config generations and upstream pools: everything built from one config (server
 * certificates, pools, rate limits), counted by the requests and connections that use it,
 * retired on reload; the pools' idle connections, server choice and active health checks. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"
#include "common/ratelimit.h"
#include "common/tls.h"
#include "revproxy/proxy_int.h"

/* ---- generations ---- */

static void gen_free(struct rp_gen *g)
{
    for (size_t i = 0; i < g->npools; i++) {
        tls_ctx_unref(g->pools[i].tls);
        free(g->pools[i].be);
    }
    free(g->pools);
    for (size_t i = 0; i < g->nlimits; i++)
        ratelimit_destroy(g->limits[i]);
    free(g->limits);
    tls_ctx_unref(g->tls);
    cfg_free(g->cfg);
    free(g);
}

void rp_gen_unref(struct rp_gen *g)
{
    if (g && --g->refs == 0)
        gen_free(g);
}

void rp_gen_ref(struct rp_gen *g)
{
    g->refs++;
}

static void on_health_closed(uv_handle_t *h)
{
    struct rp_pool *p = h->data;
    rp_gen_unref(p->gen);
}

void rp_gen_retire(struct rp_gen *g)
{
    if (g->retired)
        return;
    g->retired = true;
    for (size_t i = 0; i < g->npools; i++) {
        struct rp_pool *p = &g->pools[i];
        for (size_t j = 0; j < p->nbe; j++) {
            struct rp_backend *be = &p->be[j];
            while (!dl_empty(&be->idle)) {
                struct rp_upconn *u = container_of(be->idle.next, struct rp_upconn, link);
                dl_del(&u->link);
                be->nidle--;
                rp_up_close(u, 0, "pool retired");
            }
        }
        uv_close((uv_handle_t *)&p->health, on_health_closed);
    }
    rp_gen_unref(g);
}

/* The server certificates, when any listener speaks TLS. */
static int gen_tls_create(struct rp_gen *g, const struct rp_config *cfg, char *err, size_t errcap)
{
    bool any_tls = false;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        any_tls |= cfg->listeners[i].tls;
    if (!any_tls)
        return 0;
    struct tls_cert_opts certs[17];
    size_t n = 0;
    if (cfg->acme.enabled) /* the Director's certificate is the default; the others by SNI */
        certs[n++] = (struct tls_cert_opts){cfg->acme.cert, cfg->acme.key};
    for (size_t i = 0; i < cfg->tls.ncerts && i < 16; i++)
        if (!cfg->acme.enabled || strcmp(cfg->tls.certs[i].cert, cfg->acme.cert))
            certs[n++] = (struct tls_cert_opts){cfg->tls.certs[i].cert, cfg->tls.certs[i].key};
    static const char *const alpn[] = {"http/1.1", NULL};
    struct tls_opts o = {
        .server = true,
        .certs = certs,
        .ncerts = n,
        .self_signed_name = cfg->tls.self_signed_name,
        .alpn = alpn,
        .handshake_timeout_ms = (uint32_t)cfg->tls.handshake_timeout_ms,
        .session_tickets = cfg->tls.session_tickets,
        .session_cache_size = cfg->tls.session_cache,
        .acme = acme_edge_store(g->srv->acme),
    };
    return tls_ctx_create(&g->tls, &o, err, errcap);
}

/* Pool p for upstream uc: its servers, the names Location must not leak, its client TLS. */
static int pool_init(struct rp_gen *g, struct rp_pool *p, const struct rp_upstream *uc, char *err,
                     size_t errcap)
{
    const struct rp_config *cfg = g->cfg;
    p->gen = g;
    p->cfg = uc;
    p->be = calloc(uc->nservers, sizeof *p->be);
    if (!p->be)
        return -ENOMEM;
    p->nbe = uc->nservers;
    size_t ni = 0;
    if (uc->server_name)
        p->internal[ni++] = uc->server_name;
    for (size_t j = 0; j < uc->nservers; j++) {
        p->be[j].addr = uc->servers[j];
        addr_format(&uc->servers[j], p->be[j].name);
        dl_init(&p->be[j].idle);
    }
    for (size_t r = 0; r < cfg->nroutes && ni + 1 < ARRAY_SIZE(p->internal); r++)
        if (cfg->routes[r].host_header && !strcmp(cfg->routes[r].upstream, uc->name))
            p->internal[ni++] = cfg->routes[r].host_header;
    if (!uc->tls)
        return 0;
    struct tls_opts o = {.server = false, .ca_file = uc->ca, .verify_peer = true};
    return tls_ctx_create(&p->tls, &o, err, errcap);
}

/* Rate limits start afresh with each generation (a reload). */
static int gen_limits_create(struct rp_gen *g, const struct rp_config *cfg)
{
    g->limits = calloc(cfg->nroutes ? cfg->nroutes : 1, sizeof *g->limits);
    if (!g->limits)
        return -ENOMEM;
    g->nlimits = cfg->nroutes;
    for (size_t r = 0; r < cfg->nroutes; r++) {
        const struct rp_route *rt = &cfg->routes[r];
        int rc;
        if (rt->rate && (rc = ratelimit_create(&g->limits[r], rt->rate,
                                               rt->burst ? rt->burst : rt->rate, 65536)) < 0)
            return rc;
    }
    return 0;
}

static void health_run(uv_timer_t *t);

/* Each pool's health timer holds a reference until it is closed. */
static void gen_start_health(struct rp_gen *g)
{
    for (size_t i = 0; i < g->npools; i++) {
        struct rp_pool *p = &g->pools[i];
        uv_timer_init(g->srv->loop, &p->health);
        p->health.data = p;
        rp_gen_ref(g);
        if (p->cfg->health_path)
            uv_timer_start(&p->health, health_run, 10, p->cfg->health_interval_ms);
    }
}

int rp_gen_create(struct rp_server *srv, struct rp_config *cfg, struct rp_gen **out, char *err,
                  size_t errcap)
{
    struct rp_gen *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->refs = 1;
    g->srv = srv;
    g->cfg = cfg;
    int rc = gen_tls_create(g, cfg, err, errcap);
    if (rc)
        goto fail;
    g->pools = calloc(cfg->nupstreams, sizeof *g->pools);
    if (!g->pools) {
        rc = -ENOMEM;
        goto fail;
    }
    g->npools = cfg->nupstreams;
    for (size_t i = 0; i < cfg->nupstreams; i++)
        if ((rc = pool_init(g, &g->pools[i], &cfg->upstreams[i], err, errcap)) != 0)
            goto fail;
    if ((rc = gen_limits_create(g, cfg)) != 0)
        goto fail;
    gen_start_health(g);
    *out = g;
    return 0;
fail:
    g->cfg = NULL; /* the caller still owns cfg on failure */
    gen_free(g);
    return rc;
}

/* ---- pools ---- */

/* Round robin over servers not marked down. With every server skipped after failed
 * connects, the one whose skip ends first is tried anyway (a lone server is never left
 * out, as in nginx): answering 502 without trying would turn one lost connect into
 * fail_timeout of errors. Only servers an active health check failed stay out. */
static struct rp_backend *pool_pick(struct rp_pool *p)
{
    uint64_t now = time_mono_ms();
    struct rp_backend *soonest = NULL;
    for (size_t i = 0; i < p->nbe; i++) {
        struct rp_backend *be = &p->be[(p->rr + i) % p->nbe];
        if (be->check_down)
            continue;
        if (be->down_until <= now) {
            p->rr = (p->rr + i + 1) % p->nbe;
            return be;
        }
        if (!soonest || be->down_until < soonest->down_until)
            soonest = be;
    }
    return soonest;
}

int rp_pool_get(struct rp_pool *p, struct rp_upconn **out)
{
    struct rp_backend *be = pool_pick(p);
    if (!be)
        return -EHOSTUNREACH;
    struct rp_server *srv = p->gen->srv;
    while (!dl_empty(&be->idle)) {
        struct rp_upconn *u = container_of(be->idle.next, struct rp_upconn, link);
        dl_del(&u->link);
        be->nidle--;
        u->state = UP_OPEN;
        u->deadline = 0;
        stream_read_start(u->s);
        u->reused = true;
        metric_inc(srv->m.up_reused);
        *out = u;
        return 0;
    }
    metric_inc(srv->m.up_new);
    return rp_up_connect(p, be, false, out);
}

void rp_up_release(struct rp_upconn *u)
{
    struct rp_backend *be = u->be;
    u->c = NULL;
    u->deadline = 0;
    if (!u->reusable || u->closing || u->gen->retired || be->nidle >= u->pool->cfg->keepalive ||
        buf_len(&u->in)) {
        rp_up_close(u, 0, "not reusable");
        return;
    }
    u->state = UP_IDLE;
    dl_add(&be->idle, &u->link);
    be->nidle++;
    stream_read_start(u->s); /* to notice the server closing it */
    rp_lazy_set(&u->timer, &u->deadline, rp_on_up_timer, u->pool->cfg->idle_timeout_ms);
}

/* ---- active health checks: one probe connection per server and interval ---- */

void rp_health_probe_open(struct rp_upconn *u)
{
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: revproxy-health\r\nConnection: "
                     "close\r\n\r\n",
                     u->pool->cfg->health_path,
                     u->pool->cfg->server_name ? u->pool->cfg->server_name : u->be->name);
    u->state = UP_OPEN;
    if (n > 0)
        stream_write(u->s, req, (size_t)n);
}

/* A status below 500 passes (reusable marks a passed check for up_on_close). */
void rp_health_probe_data(struct rp_upconn *u, const uint8_t *data, size_t len)
{
    unsigned ev;
    ssize_t n = http_reader_feed(u->resp, data, len, &ev);
    if (n < 0 || (ev & HTTP_EV_HEAD)) {
        int st = n < 0 ? 0 : http_reader_head(u->resp)->status;
        u->reusable = st >= 200 && st < 500;
        u->be->check_down = !u->reusable;
        if (u->reusable)
            u->be->fails = 0, u->be->down_until = 0;
        rp_up_close(u, 0, "health check done");
    }
}

static void health_run(uv_timer_t *t)
{
    struct rp_pool *p = t->data;
    if (p->gen->retired)
        return;
    for (size_t i = 0; i < p->nbe; i++) {
        struct rp_upconn *u;
        if (rp_up_connect(p, &p->be[i], true, &u) == 0) {
            /* Probes share the upstream callbacks and are told apart by u->probe. */
            rp_lazy_set(&u->timer, &u->deadline, rp_on_up_timer,
                        p->cfg->connect_timeout_ms + p->cfg->read_timeout_ms);
        } else {
            p->be[i].check_down = true;
        }
    }
}
