/* The reverse proxy: accepts clients (plain or TLS), reads request heads with limits,
 * routes them, streams requests to pooled upstream connections and responses back with
 * backpressure both ways, and answers with the exact error a client should see. */
#include "revproxy/proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <http_parser.h>

#include "common/admin.h"
#include "common/ctl.h"
#include "common/fdlimit.h"
#include "common/metrics.h"
#include "common/ratelimit.h"
#include "common/stream.h"
#include "common/tls.h"
#include "revproxy/headers.h"
#include "revproxy/http1.h"
#include "revproxy/route.h"

/* Each direction queues at most RP_WCAP bytes in the writer before the reader stops.
 * Body bytes are only forwarded within that cap, which leaves RP_HEAD_ROOM for a head. */
#define RP_WCAP (256 * 1024)
#define RP_HEAD_ROOM (72 * 1024)
#define RP_IN_CAP (128 * 1024)
#define RP_READ_CHUNK (64 * 1024)
/* Plain upstream reads: a CPU-bound TLS client side then encrypts and writes in batches
 * this large, so the reader at the other end (and the upstream, on our window updates) is
 * woken a quarter as often per byte; each wakeup is a costly IPI on a virtual machine. */
#define RP_UP_READ_CHUNK (256 * 1024)
#define RP_LINGER_MS 5000
/* Handshake CPU per loop turn (stream_gate). One mbedTLS ECDHE+ECDSA flight is ~2 ms here,
 * so this lets one flight through per turn: established clients wait about that long at
 * most behind a burst of new ones. */
#define RP_HS_BUDGET_US 1000

struct rp_gen;
struct rp_client;

/* One server of a pool: passive health state and its idle connections. */
struct rp_backend {
    struct addr addr;
    char name[ADDR_STRLEN];
    uint32_t fails;
    uint64_t down_until; /* monotonic ms */
    bool check_down;     /* the last active check failed */
    struct dlist idle;
    size_t nidle;
};

struct rp_pool {
    struct rp_gen *gen;
    const struct rp_upstream *cfg;
    struct tls_ctx *tls;
    struct rp_backend *be;
    size_t nbe, rr;
    uv_timer_t health;
    const char *internal[8]; /* names to hide in Location (NULL-terminated) */
};

/* Everything derived from one config: read-only while requests use it. */
struct rp_gen {
    int refs;
    struct rp_server *srv;
    struct rp_config *cfg; /* our own copy */
    struct tls_ctx *tls;   /* server certificates */
    struct rp_pool *pools;
    size_t npools;
    struct ratelimit **limits; /* per route with a rate, by client address (NULL = none) */
    size_t nlimits;
    bool retired;
};

enum { UP_CONNECTING, UP_OPEN, UP_IDLE };

struct rp_upconn {
    struct rp_pool *pool;
    struct rp_backend *be;
    struct rp_gen *gen;
    struct stream *s;
    struct rp_client *c; /* bound client, NULL when idle in the pool */
    struct http_reader *resp;
    struct buf in;
    uv_timer_t timer; /* read timeout while bound; idle timeout in the pool */
    uint64_t deadline; /* loop ms; 0 = none */
    struct dlist link; /* server's list of all, or the backend's idle list */
    struct dlist all;
    int handles;
    int state;
    bool reused;
    bool reusable;
    bool closing;
    bool probe;       /* an active health check, not a pooled connection */
};

enum { C_HEAD, C_BODY, C_WAIT, C_TUNNEL, C_CLOSING };

struct rp_client {
    struct rp_server *srv;
    struct rp_gen *gen;
    struct stream *s;
    const struct rp_listener *lst;
    struct http_reader *req;
    struct buf in;
    uv_timer_t timer;
    uint64_t deadline; /* loop ms; 0 = none */
    struct dlist link;
    int handles;
    int state;
    bool closing;
    bool tls;
    char ip[ADDR_STRLEN];
    /* The current exchange. */
    struct rp_upconn *up;
    int route;
    bool req_done, resp_started, resp_head_pending, close_after;
    bool is_head, upgrade, retried, affinity, up_reused;
    struct buf uphead; /* the upstream request head, kept for one retry */
    char host[256];
    char method[16];
    char path[512];
    int status;
    uint64_t bytes_out, t0_ms;
    uint64_t read_timeout_ms;
};

struct rp_listen {
    uv_tcp_t tcp;
    struct rp_server *srv;
    const struct rp_listener *cfg; /* from the first generation: listeners need a restart */
    bool open;
};

struct rp_server {
    struct daemon *d;
    uv_loop_t *loop;
    const struct logger *log;
    struct rp_gen *gen;
    struct rp_config *listen_cfg; /* the config the listeners came from */
    struct rp_listen *lsn;
    size_t nlsn;
    int lsn_open;
    struct dlist clients, upconns;
    size_t nclients;
    bool draining, stopping;
    int access_fd;
    int access_format;
    struct ctl_client *ctl;
    struct buf out; /* response bytes collected during one upstream read */
    struct stream_gate *hs_gate; /* client TLS handshakes take turns */
    struct {
        struct metric *conns, *conns_total, *rejected_cap, *req_total;
        struct metric *status[6];
        struct metric *not_http, *too_large, *body_too_large, *timeout_408, *not_found;
        struct metric *unknown_host;
        struct metric *up_connect_fail, *up_timeout, *up_reset, *up_reused, *up_new;
        struct metric *bytes_in, *bytes_out, *rate_limited, *fd_limit;
    } m;
    struct log_limit fd_log; /* connections refused at the open-file limit */
};

static void client_close(struct rp_client *c, int err, const char *why);
static void client_resume(struct rp_client *c);
static void client_reply(struct rp_client *c, int status, const char *body, bool keep);
static void up_close(struct rp_upconn *u, int err, const char *why);
static void up_resume(struct rp_upconn *u);
static void up_release(struct rp_upconn *u);
static size_t client_consume(struct rp_client *c, const uint8_t *p, size_t len);
static size_t up_consume(struct rp_upconn *u, const uint8_t *p, size_t len);
static void exchange_start_upstream(struct rp_client *c);
static void server_maybe_drained(struct rp_server *srv);
static void on_client_timer(uv_timer_t *t);

/* ---- flow control ---- */

static size_t room_of(struct stream *s)
{
    size_t q = stream_queued(s);
    return q >= RP_WCAP ? 0 : RP_WCAP - q;
}

/* Asks s for on_drain once its queue falls below half. stream_write refuses (and arms
 * on_drain) before it looks at the data whenever bytes are queued and len exceeds the
 * room, so the oversized length is never read. */
static void arm_drain(struct stream *s)
{
    static const uint8_t none;
    if (stream_queued(s))
        (void)stream_write(s, &none, RP_WCAP + 1);
}

/* ---- lazy deadline timers ---- */

/* Moving a deadline later only stores it; a timer that fires early re-arms itself for
 * the rest. This saves several timer-heap updates per proxied request. */
static void lazy_set(uv_timer_t *t, uint64_t *deadline, uv_timer_cb cb, uint64_t ms)
{
    *deadline = uv_now(t->loop) + ms;
    if (!uv_is_active((uv_handle_t *)t) || uv_timer_get_due_in(t) > ms)
        uv_timer_start(t, cb, ms, 0);
}

/* In a timer callback: true if the deadline has really passed (and clears it). */
static bool lazy_due(uv_timer_t *t, uint64_t *deadline, uv_timer_cb cb)
{
    if (*deadline == 0)
        return false;
    uint64_t now = uv_now(t->loop);
    if (now < *deadline) {
        uv_timer_start(t, cb, *deadline - now, 0);
        return false;
    }
    *deadline = 0;
    return true;
}

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

static void gen_unref(struct rp_gen *g)
{
    if (g && --g->refs == 0)
        gen_free(g);
}

static void gen_ref(struct rp_gen *g)
{
    g->refs++;
}

static void on_health_closed(uv_handle_t *h)
{
    struct rp_pool *p = h->data;
    gen_unref(p->gen);
}

/* The generation gets no new work: idle connections close, health checks stop. */
static void gen_retire(struct rp_gen *g)
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
                up_close(u, 0, "pool retired");
            }
        }
        uv_close((uv_handle_t *)&p->health, on_health_closed);
    }
    gen_unref(g);
}

static void health_run(uv_timer_t *t);

static int gen_create(struct rp_server *srv, struct rp_config *cfg, struct rp_gen **out,
                      char *err, size_t errcap)
{
    struct rp_gen *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->refs = 1;
    g->srv = srv;
    g->cfg = cfg;
    bool any_tls = false;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        any_tls |= cfg->listeners[i].tls;
    int rc = 0;
    if (any_tls) {
        struct tls_cert_opts certs[16];
        size_t n = cfg->tls.ncerts < 16 ? cfg->tls.ncerts : 16;
        for (size_t i = 0; i < n; i++)
            certs[i] = (struct tls_cert_opts){cfg->tls.certs[i].cert, cfg->tls.certs[i].key};
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
        };
        rc = tls_ctx_create(&g->tls, &o, err, errcap);
        if (rc)
            goto fail;
    }
    g->pools = calloc(cfg->nupstreams, sizeof *g->pools);
    if (!g->pools) {
        rc = -ENOMEM;
        goto fail;
    }
    g->npools = cfg->nupstreams;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct rp_upstream *uc = &cfg->upstreams[i];
        struct rp_pool *p = &g->pools[i];
        p->gen = g;
        p->cfg = uc;
        p->be = calloc(uc->nservers, sizeof *p->be);
        if (!p->be) {
            rc = -ENOMEM;
            goto fail;
        }
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
        if (uc->tls) {
            struct tls_opts o = {.server = false, .ca_file = uc->ca, .verify_peer = true};
            rc = tls_ctx_create(&p->tls, &o, err, errcap);
            if (rc)
                goto fail;
        }
    }
    /* Rate limits start afresh with each generation (a reload). */
    g->limits = calloc(cfg->nroutes ? cfg->nroutes : 1, sizeof *g->limits);
    if (!g->limits) {
        rc = -ENOMEM;
        goto fail;
    }
    g->nlimits = cfg->nroutes;
    for (size_t r = 0; r < cfg->nroutes; r++) {
        const struct rp_route *rt = &cfg->routes[r];
        if (rt->rate && (rc = ratelimit_create(&g->limits[r], rt->rate,
                                               rt->burst ? rt->burst : rt->rate, 65536)) < 0)
            goto fail;
    }
    for (size_t i = 0; i < g->npools; i++) {
        struct rp_pool *p = &g->pools[i];
        uv_timer_init(srv->loop, &p->health);
        p->health.data = p;
        gen_ref(g);
        if (p->cfg->health_path)
            uv_timer_start(&p->health, health_run, 10, p->cfg->health_interval_ms);
    }
    *out = g;
    return 0;
fail:
    g->cfg = NULL; /* the caller still owns cfg on failure */
    gen_free(g);
    return rc;
}

/* ---- access log ---- */

static void access_log(struct rp_client *c)
{
    struct rp_server *srv = c->srv;
    if (srv->access_fd < 0 || srv->access_format == RP_LOG_OFF)
        return;
    char ip[ADDR_STRLEN], line[2048], ts[64];
    addr_format_host(stream_peer(c->s), ip);
    uint64_t ms = time_mono_ms() - c->t0_ms;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    int n;
    const char *up = c->up ? c->up->be->name : "-";
    if (srv->access_format == RP_LOG_JSON) {
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
        /* Path and host were checked by the parser (no control bytes or quotes in a
         * valid request target); escape quotes and backslashes anyway. */
        char path[1100];
        size_t j = 0;
        for (size_t i = 0; c->path[i] && j + 2 < sizeof path; i++) {
            char ch = c->path[i];
            if (ch == '"' || ch == '\\')
                path[j++] = '\\';
            path[j++] = (ch >= 0x20 && ch < 0x7f) ? ch : '?';
        }
        path[j] = '\0';
        n = snprintf(line, sizeof line,
                     "{\"ts\":\"%s\",\"client\":\"%s\",\"tls\":%s,\"method\":\"%s\","
                     "\"path\":\"%s\",\"status\":%d,\"bytes\":%llu,\"ms\":%llu,"
                     "\"upstream\":\"%s\"}\n",
                     ts, ip, c->tls ? "true" : "false", c->method, path, c->status,
                     (unsigned long long)c->bytes_out, (unsigned long long)ms, up);
    } else {
        strftime(ts, sizeof ts, "%d/%b/%Y:%H:%M:%S +0000", &tm);
        n = snprintf(line, sizeof line, "%s - - [%s] \"%s %s HTTP/1.1\" %d %llu \"-\" \"-\" %llums %s\n",
                     ip, ts, c->method, c->path, c->status, (unsigned long long)c->bytes_out,
                     (unsigned long long)ms, up);
    }
    if (n > 0)
        (void)!write(srv->access_fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static void count_status(struct rp_server *srv, int status)
{
    int k = status / 100;
    metric_inc(srv->m.req_total);
    if (k >= 1 && k <= 5)
        metric_inc(srv->m.status[k]);
}

/* ---- upstream connections ---- */

static void up_handle_done(struct rp_upconn *u)
{
    if (--u->handles == 0) {
        http_reader_destroy(u->resp);
        buf_fini(&u->in);
        gen_unref(u->gen);
        free(u);
    }
}

static void on_up_handle_closed(uv_handle_t *h)
{
    up_handle_done(h->data);
}

static void up_close(struct rp_upconn *u, int err, const char *why)
{
    if (!u || u->closing)
        return;
    u->closing = true;
    if (u->state == UP_IDLE) {
        dl_del(&u->link);
        u->be->nidle--;
    }
    dl_del(&u->all);
    u->c = NULL;
    uv_close((uv_handle_t *)&u->timer, on_up_handle_closed);
    stream_close(u->s, err, why);
}

static void mark_failed(struct rp_upconn *u)
{
    struct rp_backend *be = u->be;
    be->fails++;
    if (u->pool->cfg->max_fails && be->fails >= u->pool->cfg->max_fails)
        be->down_until = time_mono_ms() + u->pool->cfg->fail_timeout_ms;
}

static void client_upstream_failed(struct rp_client *c, int err, const char *why,
                                   bool retryable);
static void count_status(struct rp_server *srv, int status);
static void exchange_reset(struct rp_client *c);

static void up_on_close(struct stream *s, int err, const char *why, void *arg)
{
    struct rp_upconn *u = arg;
    struct rp_client *c = u->c;
    bool opened = u->state != UP_CONNECTING;
    if (!u->closing) {
        /* Closed by the peer or by stream.c: unbind before the handle goes. */
        u->closing = true;
        if (u->state == UP_IDLE) {
            dl_del(&u->link);
            u->be->nidle--;
        }
        dl_del(&u->all);
        u->c = NULL;
        uv_close((uv_handle_t *)&u->timer, on_up_handle_closed);
    }
    if (u->probe) {
        if (!u->reusable) /* reusable marks a passed check */
            u->be->check_down = true;
    } else if (c && c->up == u && c->state == C_HEAD) {
        /* An affinity-bound connection went while the client was between requests:
         * the client's authenticated session is gone with it. */
        c->up = NULL;
        client_close(c, 0, "upstream connection closed (affinity)");
    } else if (c && c->up == u) {
        if (!opened) {
            mark_failed(u);
            metric_inc(c->srv->m.up_connect_fail);
            LOGW(c->srv->log, &u->be->addr, "upstream %s: %s%s", u->pool->cfg->name,
                 why ? why : "connect failed",
                 u->be->down_until ? " (skipped until fail_timeout passes)" : "");
        }
        if (c->state == C_TUNNEL) {
            c->up = NULL;
            stream_shutdown(c->s);
            c->state = C_CLOSING;
            lazy_set(&c->timer, &c->deadline, on_client_timer, RP_LINGER_MS);
        } else if (c->resp_started && http_reader_eof(u->resp) == HTTP_EV_DONE) {
            /* A body that ends at close (no length, not chunked): done. */
            c->up = NULL;
            access_log(c);
            count_status(c->srv, c->status);
            stream_shutdown(c->s);
            c->state = C_CLOSING;
            lazy_set(&c->timer, &c->deadline, on_client_timer, RP_LINGER_MS);
        } else {
            /* Nothing reached the server (connect failed), or a pooled connection was
             * closed by the server as we reused it: another connection may do. */
            bool retryable = !opened || u->reused;
            c->up = NULL;
            client_upstream_failed(c, opened ? (err ? err : -ECONNRESET) : err,
                                   why ? why : "closed", retryable);
        }
    }
    (void)s;
    up_handle_done(u);
}

static void on_up_timer(uv_timer_t *t)
{
    struct rp_upconn *u = t->data;
    if (!lazy_due(t, &u->deadline, on_up_timer))
        return;
    if (u->state == UP_IDLE) {
        up_close(u, 0, "idle timeout");
        return;
    }
    struct rp_client *c = u->c;
    if (c && c->up == u) {
        c->up = NULL;
        metric_inc(c->srv->m.up_timeout);
        u->c = NULL;
        up_close(u, -ETIMEDOUT, "read timeout");
        client_upstream_failed(c, -ETIMEDOUT, "upstream read timeout", false);
        return;
    }
    up_close(u, -ETIMEDOUT, "timeout");
}

static void health_probe_open(struct stream *s, void *arg);

static void up_on_open(struct stream *s, void *arg)
{
    struct rp_upconn *u = arg;
    if (u->state == UP_CONNECTING)
        u->state = UP_OPEN;
    if (u->probe) {
        health_probe_open(s, u);
        return;
    }
    struct rp_client *c = u->c;
    if (c && c->up == u && c->state == C_BODY)
        client_resume(c);
}

static int up_on_data(struct stream *s, const uint8_t *data, size_t len, void *arg)
{
    struct rp_upconn *u = arg;
    (void)s;
    if (u->closing)
        return 0;
    if (u->probe) {
        unsigned ev;
        ssize_t n = http_reader_feed(u->resp, data, len, &ev);
        if (n < 0 || (ev & HTTP_EV_HEAD)) {
            int st = n < 0 ? 0 : http_reader_head(u->resp)->status;
            u->reusable = st >= 200 && st < 500;
            u->be->check_down = !u->reusable;
            if (u->reusable)
                u->be->fails = 0, u->be->down_until = 0;
            up_close(u, 0, "health check done");
        }
        return 0;
    }
    if (!u->c) {
        up_close(u, -EPROTO, "data on an idle connection");
        return 0;
    }
    if (buf_len(&u->in)) {
        if (buf_append(&u->in, data, len) < 0) {
            up_close(u, -ENOBUFS, "input overflow");
            return 0;
        }
        up_resume(u);
        return 0;
    }
    size_t n = up_consume(u, data, len);
    if (n < len && !u->closing) {
        if (buf_append(&u->in, data + n, len - n) < 0) {
            up_close(u, -ENOBUFS, "input overflow");
            return 0;
        }
        stream_read_stop(u->s);
    }
    return 0;
}

static void up_on_drain(struct stream *s, void *arg)
{
    struct rp_upconn *u = arg;
    (void)s;
    if (u->c && u->c->up == u)
        client_resume(u->c);
}

static const struct stream_cbs up_cbs = {
    .on_data = up_on_data,
    .on_open = up_on_open,
    .on_drain = up_on_drain,
    .on_close = up_on_close,
};

static int up_connect(struct rp_pool *p, struct rp_backend *be, bool probe,
                      struct rp_upconn **out)
{
    struct rp_server *srv = p->gen->srv;
    struct rp_upconn *u = calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    int rc = http_reader_create(&u->resp, false, 65536);
    if (rc == 0)
        rc = buf_init(&u->in, RP_UP_READ_CHUNK);
    if (rc) {
        http_reader_destroy(u->resp);
        free(u);
        return rc;
    }
    u->pool = p;
    u->be = be;
    u->gen = p->gen;
    u->probe = probe;
    u->state = UP_CONNECTING;
    char host[ADDR_STRLEN];
    struct stream_opts o = {
        .tls = p->tls,
        .server_name = p->cfg->server_name ? p->cfg->server_name : addr_format_host(&be->addr, host),
        .read_chunk = RP_UP_READ_CHUNK,
        .write_cap = RP_WCAP,
        .handshake_timeout_ms = (uint32_t)p->cfg->connect_timeout_ms,
    };
    rc = stream_connect(srv->loop, &be->addr, NULL, &o, &up_cbs, u, &u->s);
    if (rc) {
        http_reader_destroy(u->resp);
        buf_fini(&u->in);
        free(u);
        return rc;
    }
    gen_ref(p->gen);
    uv_timer_init(srv->loop, &u->timer);
    u->timer.data = u;
    u->handles = 2;
    dl_add(&srv->upconns, &u->all);
    *out = u;
    return 0;
}

/* Round robin over servers not marked down; with all down, the least recently failed. */
static struct rp_backend *pool_pick(struct rp_pool *p)
{
    uint64_t now = time_mono_ms();
    for (size_t i = 0; i < p->nbe; i++) {
        struct rp_backend *be = &p->be[(p->rr + i) % p->nbe];
        if (be->down_until <= now && !be->check_down) {
            p->rr = (p->rr + i + 1) % p->nbe;
            return be;
        }
    }
    return NULL;
}

static int pool_get(struct rp_pool *p, struct rp_upconn **out)
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
    return up_connect(p, be, false, out);
}

/* The exchange on u ended cleanly: pool it, keep it bound (affinity), or close it. */
static void up_release(struct rp_upconn *u)
{
    struct rp_backend *be = u->be;
    u->c = NULL;
    u->deadline = 0;
    if (!u->reusable || u->closing || u->gen->retired || be->nidle >= u->pool->cfg->keepalive ||
        buf_len(&u->in)) {
        up_close(u, 0, "not reusable");
        return;
    }
    u->state = UP_IDLE;
    dl_add(&be->idle, &u->link);
    be->nidle++;
    stream_read_start(u->s); /* to notice the server closing it */
    lazy_set(&u->timer, &u->deadline, on_up_timer, u->pool->cfg->idle_timeout_ms);
}

static void health_probe_open(struct stream *s, void *arg)
{
    struct rp_upconn *u = arg;
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: revproxy-health\r\nConnection: close\r\n\r\n",
                     u->pool->cfg->health_path,
                     u->pool->cfg->server_name ? u->pool->cfg->server_name : u->be->name);
    u->state = UP_OPEN;
    if (n > 0)
        stream_write(s, req, (size_t)n);
}

static void health_run(uv_timer_t *t)
{
    struct rp_pool *p = t->data;
    if (p->gen->retired)
        return;
    for (size_t i = 0; i < p->nbe; i++) {
        struct rp_upconn *u;
        if (up_connect(p, &p->be[i], true, &u) == 0) {
            /* Probes share up_cbs and are told apart by u->probe. */
            lazy_set(&u->timer, &u->deadline, on_up_timer, p->cfg->connect_timeout_ms + p->cfg->read_timeout_ms);
        } else {
            p->be[i].check_down = true;
        }
    }
}

/* ---- client side ---- */

static void client_handle_done(struct rp_client *c)
{
    if (--c->handles > 0)
        return;
    struct rp_server *srv = c->srv;
    dl_del(&c->link);
    srv->nclients--;
    metric_set(srv->m.conns, (int64_t)srv->nclients);
    http_reader_destroy(c->req);
    buf_fini(&c->in);
    buf_fini(&c->uphead);
    gen_unref(c->gen);
    free(c);
    server_maybe_drained(srv);
}

static void on_client_handle_closed(uv_handle_t *h)
{
    client_handle_done(h->data);
}

static void client_close(struct rp_client *c, int err, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    c->state = C_CLOSING;
    if (c->up) {
        struct rp_upconn *u = c->up;
        c->up = NULL;
        up_close(u, err ? err : -ECONNABORTED, "client went away");
    }
    uv_close((uv_handle_t *)&c->timer, on_client_handle_closed);
    stream_close(c->s, err, why);
}

static void client_on_close(struct stream *s, int err, const char *why, void *arg)
{
    struct rp_client *c = arg;
    struct rp_server *srv = c->srv;
    (void)s;
    LOGD(srv->log, stream_peer(s), "client closed: %s", why ? why : "");
    (void)err;
    if (!c->closing) {
        c->closing = true;
        c->state = C_CLOSING;
        if (c->up) {
            struct rp_upconn *u = c->up;
            c->up = NULL;
            up_close(u, -ECONNABORTED, "client went away");
        }
        uv_close((uv_handle_t *)&c->timer, on_client_handle_closed);
    }
    client_handle_done(c);
}

static void on_client_timer(uv_timer_t *t)
{
    struct rp_client *c = t->data;
    if (!lazy_due(t, &c->deadline, on_client_timer))
        return;
    switch (c->state) {
    case C_HEAD:
        if (http_reader_in_head(c->req)) {
            metric_inc(c->srv->m.timeout_408);
            client_reply(c, 408, "request head not received in time\n", false);
        } else {
            client_close(c, 0, "keep-alive timeout");
        }
        break;
    case C_BODY:
        metric_inc(c->srv->m.timeout_408);
        if (c->resp_started)
            client_close(c, -ETIMEDOUT, "request body timeout");
        else
            client_reply(c, 408, "request body not received in time\n", false);
        break;
    default:
        client_close(c, -ETIMEDOUT, "linger timeout");
    }
}

/* A small response from the proxy itself, with extra header lines (each ending CRLF; may
 * be NULL). Anything but keep closes the connection once it is written; a response already
 * under way is cut instead (the client sees it short). */
static void client_reply_with(struct rp_client *c, int status, const char *extra,
                              const char *body, bool keep)
{
    if (c->closing || c->state == C_CLOSING)
        return;
    if (c->resp_started) {
        client_close(c, -EPROTO, "aborted mid-response");
        return;
    }
    if (c->up) {
        struct rp_upconn *u = c->up;
        c->up = NULL;
        up_close(u, 0, "exchange abandoned");
    }
    if (c->srv->draining)
        keep = false;
    uint8_t tmp[1024];
    struct buf b = {tmp, sizeof tmp, 0, 0};
    http_simple_response(&b, status, extra, body, !keep, c->is_head);
    stream_write(c->s, b.data, b.wr);
    c->status = status;
    c->bytes_out = body && !c->is_head ? strlen(body) : 0;
    count_status(c->srv, status);
    if (c->method[0])
        access_log(c);
    if (keep) {
        exchange_reset(c);
        c->state = C_HEAD;
        lazy_set(&c->timer, &c->deadline, on_client_timer, c->gen->cfg->client.keepalive_timeout_ms);
        return;
    }
    c->state = C_CLOSING;
    stream_shutdown(c->s);
    /* Bounded: a client that neither reads nor closes goes after RP_LINGER_MS. */
    lazy_set(&c->timer, &c->deadline, on_client_timer, RP_LINGER_MS);
}

static void client_reply(struct rp_client *c, int status, const char *body, bool keep)
{
    client_reply_with(c, status, NULL, body, keep);
}

static void client_upstream_failed(struct rp_client *c, int err, const char *why,
                                   bool retryable)
{
    if (c->closing)
        return;
    if (c->resp_started) {
        /* Mid-body: flush what arrived, then close, so the client sees a short body
         * (curl: exit 18) instead of waiting. */
        metric_inc(c->srv->m.up_reset);
        LOGW(c->srv->log, stream_peer(c->s), "upstream failed mid-response (%s): cutting %s",
             why, c->path);
        c->state = C_CLOSING;
        stream_shutdown(c->s);
        lazy_set(&c->timer, &c->deadline, on_client_timer, RP_LINGER_MS);
        return;
    }
    /* Once more on another connection (and, the failed server now being marked down,
     * possibly another server), if the request had no body to replay. */
    if (retryable && !c->retried && c->uphead.wr && err != -ETIMEDOUT && c->req_done &&
        !http_reader_head(c->req)->has_body && c->route >= 0) {
        c->retried = true;
        exchange_start_upstream(c);
        return;
    }
    LOGW(c->srv->log, stream_peer(c->s), "upstream for %s failed: %s", c->path, why);
    if (err == -ETIMEDOUT)
        client_reply(c, 504, "504 Gateway Timeout: the internal server did not answer in time\n",
                     false);
    else
        client_reply(c, 502, "502 Bad Gateway: the internal server could not be reached or "
                             "closed the connection\n",
                     false);
}

static void exchange_reset(struct rp_client *c)
{
    c->req_done = c->resp_started = c->close_after = false;
    c->is_head = c->upgrade = c->retried = false;
    c->resp_head_pending = false;
    c->route = -1;
    c->status = 0;
    c->bytes_out = 0;
    c->uphead.rd = c->uphead.wr = 0;
    c->method[0] = '\0';
}

/* The response and the request are both complete. */
static void exchange_finish(struct rp_client *c)
{
    struct rp_upconn *u = c->up;
    access_log(c);
    count_status(c->srv, c->status);
    if (u) {
        u->deadline = 0;
        if (c->affinity && u->reusable && !c->close_after) {
            u->c = c; /* stays bound to this client for its next request */
        } else {
            c->up = NULL;
            up_release(u);
        }
    }
    if (c->close_after || c->srv->draining) {
        if (c->up) {
            struct rp_upconn *b = c->up;
            c->up = NULL;
            up_close(b, 0, "client closing");
        }
        c->state = C_CLOSING;
        stream_shutdown(c->s);
        lazy_set(&c->timer, &c->deadline, on_client_timer, RP_LINGER_MS);
        return;
    }
    exchange_reset(c);
    c->state = C_HEAD;
    lazy_set(&c->timer, &c->deadline, on_client_timer, c->gen->cfg->client.keepalive_timeout_ms);
    client_resume(c);
}

/* Sends the kept request head on a pooled or new upstream connection. */
static void exchange_start_upstream(struct rp_client *c)
{
    struct rp_pool *pool = &c->gen->pools[rp_config_upstream(c->gen->cfg,
                                                              c->gen->cfg->routes[c->route].upstream)];
    struct rp_upconn *u = c->up;
    if (u && u->pool != pool) {
        c->up = NULL; /* affinity-bound to another pool: this route goes elsewhere */
        up_close(u, 0, "route changed");
        u = NULL;
    }
    if (!u) {
        int rc = pool_get(pool, &u);
        if (rc) {
            LOGW(c->srv->log, stream_peer(c->s), "no upstream for %s: %s", c->path,
                 rc == -EHOSTUNREACH ? "every server is marked down" : strerror(-rc));
            client_reply(c, 502, "502 Bad Gateway: no internal server is available\n", false);
            return;
        }
        c->up = u;
    }
    u->c = c;
    u->reusable = false;
    c->up_reused = u->reused;
    http_reader_set_no_body(u->resp, c->is_head);
    if (stream_write(u->s, c->uphead.data, c->uphead.wr) < 0) {
        c->up = NULL;
        up_close(u, -EIO, "write failed");
        client_reply(c, 502, "502 Bad Gateway: the internal server could not be reached\n",
                     false);
        return;
    }
    lazy_set(&u->timer, &u->deadline, on_up_timer, c->read_timeout_ms);
}

static bool peer_trusted(const struct rp_config *cfg, const struct addr *a)
{
    return cidr_list_contains(cfg->trusted, cfg->ntrusted, a);
}

/* The port-80 redirect names only a configured server name (server_names, or a route's
 * host): the client's Host picks one, it is never copied into Location (open redirect). */
static void redirect_reply(struct rp_client *c, const struct http_head *h, struct slice url)
{
    const struct rp_config *cfg = c->gen->cfg;
    struct slice host = http_head_get(h, "host");
    struct rp_target t;
    char extra[1200], name[256];
    if (rp_target_parse(url, &t) < 0) {
        client_reply(c, 400, "400 Bad Request\n", false);
        return;
    }
    if (t.host.len)
        host = t.host; /* absolute-form: its authority is the host (RFC 9112 3.2.2) */
    if (!host.p || !rp_host_valid(host)) {
        metric_inc(c->srv->m.not_http);
        client_reply(c, 400, "400 Bad Request: bad Host\n", false);
        return;
    }
    if (rp_server_name_pick(cfg->server_names, cfg->nserver_names, cfg->routes, cfg->nroutes,
                            rp_host_strip_port(host), name, sizeof name) < 0) {
        metric_inc(c->srv->m.unknown_host);
        LOGI(c->srv->log, stream_peer(c->s), "redirect refused: unknown host %.*s",
             (int)(host.len < 64 ? host.len : 64), (const char *)host.p);
        client_reply(c, 400, "400 Bad Request: unknown host\n", false);
        return;
    }
    snprintf(extra, sizeof extra, "Location: https://%s%.*s%.*s\r\n", name,
             (int)t.path.len, (const char *)t.path.p, (int)t.query.len, (const char *)t.query.p);
    if (strpbrk(extra + 10, "\r\n") != extra + strlen(extra) - 2) {
        client_reply(c, 400, "400 Bad Request\n", false);
        return;
    }
    uint8_t tmp[2048];
    struct buf b = {tmp, sizeof tmp, 0, 0};
    http_simple_response(&b, 301, extra, "Moved to HTTPS\n", true, c->is_head);
    stream_write(c->s, b.data, b.wr);
    c->status = 301;
    count_status(c->srv, 301);
    access_log(c);
    c->state = C_CLOSING;
    stream_shutdown(c->s);
    lazy_set(&c->timer, &c->deadline, on_client_timer, RP_LINGER_MS);
}

/* A request head arrived: check it, route it, start the upstream side. */
/* A route's rate, per client address: false (and 429 with Retry-After sent) when spent. */
static bool client_within_rate(struct rp_client *c, struct ratelimit *rl)
{
    size_t klen;
    const void *key = addr_host_bytes(stream_peer(c->s), &klen);
    uint32_t retry = 1;
    if (ratelimit_take(rl, key, klen, 1, uv_now(c->srv->loop), &retry))
        return true;
    char extra[40];
    snprintf(extra, sizeof extra, "Retry-After: %u\r\n", retry ? retry : 1);
    const struct http_head *h = http_reader_head(c->req);
    client_reply_with(c, 429, extra, "429 Too Many Requests\n", !h->has_body && h->keep_alive);
    return false;
}

static void on_request_head(struct rp_client *c)
{
    struct rp_server *srv = c->srv;
    if (c->gen != srv->gen && !c->up) {
        gen_unref(c->gen); /* a reload happened: new requests use the new routes */
        c->gen = srv->gen;
        gen_ref(c->gen);
    }
    const struct rp_config *cfg = c->gen->cfg;
    const struct http_head *h = http_reader_head(c->req);
    c->t0_ms = time_mono_ms();
    c->is_head = h->method == HTTP_HEAD;
    slice_to_cstr(h->method_name, c->method, sizeof c->method);
    slice_to_cstr(h->url, c->path, sizeof c->path);
    if (c->lst->redirect) {
        redirect_reply(c, h, h->url);
        return;
    }
    if (h->method == HTTP_CONNECT) {
        client_reply(c, 405, "405 Method Not Allowed\n", false);
        return;
    }
    struct rp_target t;
    if (rp_target_parse(h->url, &t) < 0) {
        metric_inc(srv->m.not_http);
        client_reply(c, 400, "400 Bad Request: request target refused\n", false);
        return;
    }
    struct slice host = t.host.len ? t.host : http_head_get(h, "host");
    if ((!host.p || host.len == 0) && h->minor >= 1) {
        client_reply(c, 400, "400 Bad Request: Host is required\n", false);
        return;
    }
    if (host.len && !rp_host_valid(host)) {
        metric_inc(srv->m.not_http);
        client_reply(c, 400, "400 Bad Request: bad Host\n", false);
        return;
    }
    if (host.len >= sizeof c->host) {
        client_reply(c, 400, "400 Bad Request: Host too long\n", false);
        return;
    }
    slice_to_cstr(host, c->host, sizeof c->host);
    int ri = rp_route_match(cfg->routes, cfg->nroutes, host, t.path);
    if (ri < 0) {
        metric_inc(srv->m.not_found);
        client_reply(c, 404, "404 Not Found\n", !h->has_body && h->keep_alive);
        return;
    }
    const struct rp_route *r = &cfg->routes[ri];
    c->route = ri;
    if (c->gen->limits[ri] && !client_within_rate(c, c->gen->limits[ri])) {
        metric_inc(srv->m.rate_limited);
        return;
    }
    if (h->content_length != HTTP_NO_LENGTH && h->content_length > r->max_body) {
        metric_inc(srv->m.body_too_large);
        client_reply(c, 413, "413 Content Too Large\n", false);
        return;
    }
    http_reader_set_max_body(c->req, r->max_body);
    char target[4096];
    if (rp_route_rewrite(r, t.path, t.query, target, sizeof target) < 0) {
        client_reply(c, 414, "414 URI Too Long\n", false);
        return;
    }
    struct slice up = http_head_get(h, "upgrade");
    c->upgrade = h->upgrade && r->websocket && up.p && http_list_has(up, "websocket");
    c->affinity = r->affinity;
    c->close_after = !h->keep_alive || h->minor == 0;
    const struct rp_upstream *uc = &cfg->upstreams[rp_config_upstream(cfg, r->upstream)];
    c->read_timeout_ms = r->read_timeout_ms ? r->read_timeout_ms : uc->read_timeout_ms;
    if (!c->ip[0])
        addr_format_host(stream_peer(c->s), c->ip);
    /* HTTP/1.0 without Host: the upstream's own name, never an empty Host */
    char up_host[ADDR_STRLEN];
    const char *fallback = uc->server_name;
    if (!fallback)
        fallback = addr_format(&uc->servers[0], up_host);
    struct http_fwd f = {
        .client = stream_peer(c->s),
        .client_ip = c->ip,
        .tls = c->tls,
        .trusted = peer_trusted(cfg, stream_peer(c->s)),
        .host = host,
        .host_header = r->host_header,
        .fallback_host = fallback,
        .target = target,
        .upgrade = c->upgrade,
        .close = h->minor == 0,
    };
    c->uphead.rd = c->uphead.wr = 0;
    if (http_request_build(h, &f, &c->uphead) < 0) {
        client_reply(c, 431, "431 Request Header Fields Too Large\n", false);
        return;
    }
    c->state = h->has_body ? C_BODY : C_WAIT;
    if (c->state == C_BODY)
        lazy_set(&c->timer, &c->deadline, on_client_timer, cfg->client.body_timeout_ms);
    else
        c->deadline = 0;
    exchange_start_upstream(c);
}

static int status_for(ssize_t err)
{
    return err == -EMSGSIZE ? 431 : err == -EFBIG ? 413 : err == -ENOSYS ? 501 : 400;
}

static void client_parse_error(struct rp_client *c, ssize_t err)
{
    struct rp_server *srv = c->srv;
    int st = status_for(err);
    if (st == 431)
        metric_inc(srv->m.too_large);
    else if (st == 413)
        metric_inc(srv->m.body_too_large);
    else
        metric_inc(srv->m.not_http);
    LOGI(srv->log, stream_peer(c->s), "refused request (%d): %s", st, http_reader_error(c->req));
    if (!c->method[0])
        snprintf(c->method, sizeof c->method, "-");
    client_reply(c, st,
                 st == 431   ? "431 Request Header Fields Too Large\n"
                 : st == 413 ? "413 Content Too Large\n"
                 : st == 501 ? "501 Not Implemented: only chunked is a known transfer coding\n"
                             : "400 Bad Request\n",
                 false);
}

/* Takes client bytes as far as the exchange allows; returns how many were used. */
static size_t client_consume(struct rp_client *c, const uint8_t *p, size_t len)
{
    size_t used = 0;
    while (used < len && !c->closing) {
        const uint8_t *q = p + used;
        size_t n = len - used;
        unsigned ev = 0;
        ssize_t r;
        switch (c->state) {
        case C_HEAD: {
            bool was_idle = !http_reader_in_head(c->req);
            r = http_reader_feed(c->req, q, n, &ev);
            if (r < 0) {
                client_parse_error(c, r);
                return len;
            }
            used += (size_t)r;
            if (was_idle && !(ev & HTTP_EV_HEAD))
                lazy_set(&c->timer, &c->deadline, on_client_timer, c->gen->cfg->client.header_timeout_ms);
            if (ev & HTTP_EV_HEAD) {
                c->req_done = (ev & HTTP_EV_DONE) != 0;
                on_request_head(c);
            }
            break;
        }
        case C_BODY: {
            struct rp_upconn *u = c->up;
            if (!u || u->state == UP_CONNECTING)
                return used;
            size_t room = room_of(u->s);
            if (room == 0) {
                arm_drain(u->s);
                return used;
            }
            r = http_reader_feed(c->req, q, n < room ? n : room, &ev);
            if (r < 0) {
                client_parse_error(c, r);
                return len;
            }
            /* a request's trailer fields are dropped (HTTP_EV_DROP): never forwarded */
            if (r > 0 && !(ev & HTTP_EV_DROP) && stream_write(u->s, q, (size_t)r) < 0)
                return len; /* the upstream is closing: its on_close answers */
            used += (size_t)r;
            lazy_set(&c->timer, &c->deadline, on_client_timer, c->gen->cfg->client.body_timeout_ms);
            lazy_set(&u->timer, &u->deadline, on_up_timer, c->read_timeout_ms);
            if (ev & HTTP_EV_DONE) {
                c->req_done = true;
                c->deadline = 0;
                c->state = C_WAIT;
            }
            break;
        }
        case C_TUNNEL: {
            struct rp_upconn *u = c->up;
            if (!u)
                return len;
            size_t room = room_of(u->s);
            if (room == 0) {
                arm_drain(u->s);
                return used;
            }
            size_t k = n < room ? n : room;
            if (stream_write(u->s, q, k) < 0)
                return len;
            used += k;
            break;
        }
        case C_WAIT:
            return used; /* pipelined: waits for the response before it */
        default:
            return len; /* closing: drop */
        }
    }
    return used;
}

static void client_resume(struct rp_client *c)
{
    if (c->closing)
        return;
    if (buf_len(&c->in)) {
        size_t n = client_consume(c, c->in.data + c->in.rd, buf_len(&c->in));
        if (c->closing)
            return;
        buf_consume(&c->in, n);
    }
    if (!buf_len(&c->in) && c->state != C_CLOSING)
        stream_read_start(c->s);
}

static int client_on_data(struct stream *s, const uint8_t *data, size_t len, void *arg)
{
    struct rp_client *c = arg;
    (void)s;
    if (c->closing || c->state == C_CLOSING)
        return 0;
    metric_add(c->srv->m.bytes_in, len);
    if (buf_len(&c->in)) {
        if (buf_append(&c->in, data, len) < 0) {
            client_close(c, -ENOBUFS, "input overflow");
            return 0;
        }
        client_resume(c);
        if (buf_len(&c->in) && !c->closing)
            stream_read_stop(c->s);
        return 0;
    }
    size_t n = client_consume(c, data, len);
    if (n < len && !c->closing && c->state != C_CLOSING) {
        if (buf_append(&c->in, data + n, len - n) < 0) {
            client_close(c, -ENOBUFS, "input overflow");
            return 0;
        }
        stream_read_stop(c->s);
    }
    return 0;
}

static void client_on_drain(struct stream *s, void *arg)
{
    struct rp_client *c = arg;
    (void)s;
    if (c->up)
        up_resume(c->up);
}

static void client_on_open(struct stream *s, void *arg)
{
    struct rp_client *c = arg;
    (void)s;
    if (!c->handles)
        return; /* plain TCP opens inside stream_accept; on_connection arms the timer */
    lazy_set(&c->timer, &c->deadline, on_client_timer, c->gen->cfg->client.header_timeout_ms);
}

static const struct stream_cbs client_cbs = {
    .on_data = client_on_data,
    .on_open = client_on_open,
    .on_drain = client_on_drain,
    .on_close = client_on_close,
};

/* ---- upstream -> client ---- */

/* Response bytes for the client collect in the server's scratch buffer while one upstream
 * read is handled, so a head and the body bytes that came with it leave in one write. */
static void out_flush(struct rp_client *c)
{
    struct buf *o = &c->srv->out;
    if (o->wr) {
        stream_write(c->s, o->data, o->wr);
        o->rd = o->wr = 0;
    }
}

static void out_put(struct rp_client *c, const uint8_t *p, size_t n)
{
    struct buf *o = &c->srv->out;
    if (buf_room(o) < n) {
        out_flush(c);
        stream_write(c->s, p, n);
        return;
    }
    memcpy(o->data + o->wr, p, n);
    o->wr += n;
}

static void on_response_head(struct rp_client *c, struct rp_upconn *u)
{
    const struct http_head *h = http_reader_head(u->resp);
    const struct http_head *rq = http_reader_head(c->req);
    struct buf *b = &c->srv->out;
    u->be->fails = 0;
    u->be->down_until = 0;
    if (h->status / 100 == 1 && h->status != 101) {
        /* 100 Continue and friends go to HTTP/1.1 clients; the final response follows. */
        if (rq->minor >= 1)
            out_put(c, (const uint8_t *)"HTTP/1.1 100 Continue\r\n\r\n", 25);
        return;
    }
    c->resp_started = true;
    c->status = h->status;
    bool up101 = h->status == 101 && c->upgrade;
    if (!up101 && h->has_body && !h->chunked && h->content_length == HTTP_NO_LENGTH)
        c->close_after = true; /* the body ends at the server's close: so must ours */
    if (!c->req_done)
        c->close_after = true; /* an early answer: the rest of the body cannot be skipped */
    u->reusable = h->keep_alive && !up101;
    const struct rp_route *r = &c->gen->cfg->routes[c->route];
    struct http_back back = {
        .route = r,
        .client_host = slice_str(c->host),
        .tls = c->tls,
        .internal = u->pool->internal,
        .close = c->close_after || c->srv->draining,
        .upgrade = up101,
        .http10_client = rq->minor == 0,
    };
    size_t mark = b->wr;
    if (http_response_build(h, &back, b) < 0) {
        b->wr = mark;
        out_flush(c);
        client_upstream_failed(c, -EPROTO, "response head too large", false);
        return;
    }
    if (up101) {
        c->state = C_TUNNEL;
        u->deadline = 0;
        c->deadline = 0;
    }
}

static size_t up_consume_inner(struct rp_upconn *u, const uint8_t *p, size_t len)
{
    size_t used = 0;
    while (used < len && !u->closing) {
        struct rp_client *c = u->c;
        if (!c || c->up != u) {
            up_close(u, -EPROTO, "unexpected data");
            return len;
        }
        const uint8_t *q = p + used;
        size_t n = len - used;
        size_t room = room_of(c->s);
        size_t pend = c->srv->out.wr;
        room = room > pend ? room - pend : 0;
        if (c->state == C_TUNNEL) {
            out_flush(c);
            if (room == 0) {
                arm_drain(c->s);
                return used;
            }
            size_t k = n < room ? n : room;
            stream_write(c->s, q, k);
            c->bytes_out += k;
            used += k;
            continue;
        }
        bool in_head = !c->resp_started || http_reader_idle(u->resp) ||
                       http_reader_in_head(u->resp);
        unsigned ev = 0;
        ssize_t r;
        if (in_head) {
            if (room < RP_HEAD_ROOM) {
                out_flush(c);
                arm_drain(c->s);
                return used;
            }
            r = http_reader_feed(u->resp, q, n, &ev);
        } else {
            if (room == 0) {
                out_flush(c);
                arm_drain(c->s);
                return used;
            }
            r = http_reader_feed(u->resp, q, n < room ? n : room, &ev);
            if (r > 0 && !c->is_head) {
                out_put(c, q, (size_t)r);
                c->bytes_out += (size_t)r;
            }
        }
        if (r < 0) {
            LOGW(c->srv->log, &u->be->addr, "invalid response from upstream: %s",
                 http_reader_error(u->resp));
            out_flush(c);
            c->up = NULL;
            u->c = NULL;
            up_close(u, -EPROTO, "invalid response");
            client_upstream_failed(c, -EPROTO, "invalid response", false);
            return len;
        }
        used += (size_t)r;
        lazy_set(&u->timer, &u->deadline, on_up_timer, c->read_timeout_ms);
        if (ev & HTTP_EV_HEAD) {
            on_response_head(c, u);
            if (u->closing || c->closing || c->up != u)
                return len;
            if (c->state == C_TUNNEL)
                continue;
        }
        if ((ev & HTTP_EV_DONE) && c->resp_started) {
            out_flush(c);
            if (used < len)
                u->reusable = false; /* bytes after a response: never reuse */
            if (!c->req_done) {
                /* Early answer while the body still comes: finish now and close both. */
                c->close_after = true;
                u->reusable = false;
            }
            exchange_finish(c);
            return len;
        }
    }
    if (u->c)
        out_flush(u->c);
    return used;
}

static size_t up_consume(struct rp_upconn *u, const uint8_t *p, size_t len)
{
    struct rp_client *c = u->c;
    if (!c) {
        up_close(u, -EPROTO, "data on an idle connection");
        return len;
    }
    size_t n = up_consume_inner(u, p, len);
    /* Whatever path ended the call, nothing stays in the scratch buffer. */
    if (c->srv->out.wr) {
        if (!c->closing)
            out_flush(c);
        c->srv->out.wr = 0;
    }
    return n;
}

static void up_resume(struct rp_upconn *u)
{
    if (u->closing)
        return;
    if (buf_len(&u->in)) {
        size_t n = up_consume(u, u->in.data + u->in.rd, buf_len(&u->in));
        if (u->closing)
            return;
        buf_consume(&u->in, n);
    }
    if (!buf_len(&u->in))
        stream_read_start(u->s);
}

/* ---- listeners ---- */

/* A connection refused at the open-file limit (common/fdlimit.h): logged at most every 10 s. */
static void refused_fd_limit(struct rp_server *srv)
{
    uint64_t held;
    metric_inc(srv->m.fd_limit);
    if (log_limit_pass(&srv->fd_log, uv_now(srv->loop), 10000, &held))
        LOGW(srv->log, NULL,
             "connection refused: open-file limit %zu reached (%" PRIu64 " more since the last "
             "line); raise ulimit -n",
             fdlimit_nofile(), held);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct rp_listen *l = container_of((uv_tcp_t *)server, struct rp_listen, tcp);
    struct rp_server *srv = l->srv;
    if (status < 0 || srv->draining)
        return;
    struct rp_gen *g = srv->gen;
    struct rp_client *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->srv = srv;
    c->lst = l->cfg;
    c->tls = l->cfg->tls;
    c->route = -1;
    int rc = http_reader_create(&c->req, true, g->cfg->client.max_head);
    if (rc == 0)
        rc = buf_init(&c->in, RP_IN_CAP);
    if (rc == 0)
        rc = buf_init(&c->uphead, g->cfg->client.max_head + 4096);
    struct stream_opts o = {
        .tls = c->tls ? g->tls : NULL,
        .read_chunk = RP_READ_CHUNK,
        .write_cap = RP_WCAP,
        .handshake_timeout_ms = (uint32_t)g->cfg->tls.handshake_timeout_ms,
        .gate = srv->hs_gate,
    };
    c->gen = g;
    if (rc == 0)
        rc = stream_accept(server, &o, &client_cbs, c, &c->s);
    if (rc) {
        http_reader_destroy(c->req);
        buf_fini(&c->in);
        buf_fini(&c->uphead);
        free(c);
        if (rc == -EMFILE)
            refused_fd_limit(srv);
        return;
    }
    gen_ref(g);
    uv_timer_init(srv->loop, &c->timer);
    c->timer.data = c;
    c->handles = 2;
    dl_add(&srv->clients, &c->link);
    srv->nclients++;
    metric_inc(srv->m.conns_total);
    metric_set(srv->m.conns, (int64_t)srv->nclients);
    if (srv->nclients > g->cfg->client.max_connections) {
        metric_inc(srv->m.rejected_cap);
        client_close(c, -EMFILE, "connection cap");
        return;
    }
    if (!c->tls)
        lazy_set(&c->timer, &c->deadline, on_client_timer, g->cfg->client.header_timeout_ms);
}

static void on_listen_closed(uv_handle_t *h)
{
    struct rp_listen *l = h->data;
    struct rp_server *srv = l->srv;
    srv->lsn_open--;
    server_maybe_drained(srv);
}

static void close_listeners(struct rp_server *srv)
{
    for (size_t i = 0; i < srv->nlsn; i++)
        if (srv->lsn[i].open) {
            srv->lsn[i].open = false;
            uv_close((uv_handle_t *)&srv->lsn[i].tcp, on_listen_closed);
        }
}

static void server_free(struct rp_server *srv)
{
    if (srv->access_fd > 2)
        close(srv->access_fd);
    free(srv->lsn);
    buf_fini(&srv->out);
    cfg_free(srv->listen_cfg);
    free(srv);
}

static void server_maybe_drained(struct rp_server *srv)
{
    if (srv->stopping) {
        if (srv->nclients == 0 && srv->lsn_open == 0 && dl_empty(&srv->upconns) && !srv->gen)
            server_free(srv);
        return;
    }
    if (srv->draining && srv->nclients == 0)
        daemon_drained(srv->d);
}

/* ---- metrics and admin ---- */

static void register_metrics(struct rp_server *srv)
{
    struct metrics *m = daemon_metrics(srv->d);
    srv->m.conns = metrics_gauge(m, "client_connections", "Open client connections", NULL);
    srv->m.conns_total = metrics_counter(m, "client_connections_total", "Accepted client connections", NULL);
    srv->m.rejected_cap = metrics_counter(m, "refused_total", "Requests or connections refused", "reason=\"connection_cap\"");
    srv->m.not_http = metrics_counter(m, "refused_total", "Requests or connections refused", "reason=\"bad_request\"");
    srv->m.too_large = metrics_counter(m, "refused_total", "Requests or connections refused", "reason=\"head_too_large\"");
    srv->m.body_too_large = metrics_counter(m, "refused_total", "Requests or connections refused", "reason=\"body_too_large\"");
    srv->m.timeout_408 = metrics_counter(m, "refused_total", "Requests or connections refused", "reason=\"client_timeout\"");
    srv->m.not_found = metrics_counter(m, "refused_total", "Requests or connections refused", "reason=\"not_routed\"");
    srv->m.unknown_host = metrics_counter(m, "refused_total", "Requests or connections refused", "reason=\"unknown_host\"");
    srv->m.rate_limited = metrics_counter(m, "refused_total", "Requests or connections refused", "reason=\"rate_limited\"");
    srv->m.fd_limit = metrics_counter(m, "refused_total", "Requests or connections refused", "reason=\"fd_limit\"");
    srv->m.req_total = metrics_counter(m, "requests_total", "Requests answered", NULL);
    static const char *const cls[] = {NULL, "class=\"1xx\"", "class=\"2xx\"", "class=\"3xx\"", "class=\"4xx\"", "class=\"5xx\""};
    for (int i = 1; i <= 5; i++)
        srv->m.status[i] = metrics_counter(m, "responses_total", "Responses by status class", cls[i]);
    srv->m.up_connect_fail = metrics_counter(m, "upstream_errors_total", "Upstream failures", "kind=\"connect\"");
    srv->m.up_timeout = metrics_counter(m, "upstream_errors_total", "Upstream failures", "kind=\"timeout\"");
    srv->m.up_reset = metrics_counter(m, "upstream_errors_total", "Upstream failures", "kind=\"mid_response\"");
    srv->m.up_reused = metrics_counter(m, "upstream_connections_total", "Upstream connections used", "kind=\"reused\"");
    srv->m.up_new = metrics_counter(m, "upstream_connections_total", "Upstream connections used", "kind=\"new\"");
    srv->m.bytes_in = metrics_counter(m, "client_bytes_received_total", "Bytes from clients", NULL);
}

static void ctl_fill_report(struct ctl_report *r, void *arg)
{
    struct rp_server *srv = arg;
    r->connections = srv->nclients;
    r->bytes_in = (uint64_t)metric_get(srv->m.bytes_in);
    r->errors = (uint64_t)(metric_get(srv->m.up_connect_fail) + metric_get(srv->m.up_timeout) +
                           metric_get(srv->m.up_reset));
    r->healthy = !srv->draining;
    r->draining = srv->draining;
}

static void ctl_on_drain(uint32_t deadline_ms, void *arg)
{
    struct rp_server *srv = arg;
    LOGI(srv->log, NULL, "the Director asks for a drain (deadline %u ms)", deadline_ms);
    rp_server_drain(srv);
}

static int ctl_start(struct rp_server *srv, const struct rp_config *cfg)
{
    static const struct ctl_client_cbs cbs = {.on_drain = ctl_on_drain};
    struct ctl_hello h = {.role = CTL_ROLE_REVPROXY};
    snprintf(h.instance_id, sizeof h.instance_id, "%s",
             cfg->base.instance_id ? cfg->base.instance_id : "revproxy");
    snprintf(h.version, sizeof h.version, "%s", daemon_version());
    for (size_t i = 0; i < cfg->nlisteners && h.n_external < CTL_ADDRS_MAX; i++)
        addr_format(&cfg->listeners[i].address, h.external_addrs[h.n_external++]);
    addr_format(&cfg->base.admin.listen, h.internal_addrs[h.n_internal++]);
    int rc = ctl_client_start_link(srv->loop, &cfg->director, &h, srv->log,
                                   daemon_metrics(srv->d), &cbs, srv, &srv->ctl);
    if (rc == 0 && srv->ctl)
        ctl_client_set_report_source(srv->ctl, ctl_fill_report, srv);
    return rc;
}

static int health_cb(char *why, size_t cap, void *arg)
{
    struct rp_server *srv = arg;
    if (srv->draining) {
        snprintf(why, cap, "draining");
        return -1;
    }
    return 0;
}

static int open_access_log(struct rp_server *srv, const struct rp_config *cfg)
{
    srv->access_format = cfg->access_log.path ? cfg->access_log.format : RP_LOG_OFF;
    int old = srv->access_fd;
    if (!cfg->access_log.path) {
        srv->access_fd = -1;
    } else if (!strcmp(cfg->access_log.path, "stderr")) {
        srv->access_fd = 2;
    } else {
        int fd = open(cfg->access_log.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd < 0)
            return -errno;
        srv->access_fd = fd;
    }
    if (old > 2)
        close(old);
    return 0;
}

/* A reference on the generation the daemon validated: routes and pools keep theirs for as
 * long as a request uses them (the daemon drops its own after a reload). */
static struct rp_config *gen_cfg_ref(const struct rp_config *cfg)
{
    return (struct rp_config *)cfg_ref(cfg);
}

int rp_server_start(struct daemon *d, const struct rp_config *cfg, struct rp_server **out)
{
    struct rp_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return -ENOMEM;
    srv->d = d;
    srv->loop = daemon_loop(d);
    srv->log = daemon_logger(d);
    fdlimit_check(srv->log, "client.max_connections", cfg->client.max_connections);
    srv->access_fd = -1;
    dl_init(&srv->clients);
    dl_init(&srv->upconns);
    register_metrics(srv);
    struct rp_config *own = NULL, *lcfg = NULL;
    int rc = buf_init(&srv->out, RP_HEAD_ROOM + RP_READ_CHUNK);
    if (rc == 0 && (rc = stream_gate_create(srv->loop, RP_HS_BUDGET_US, &srv->hs_gate)) < 0)
        buf_fini(&srv->out);
    if (rc) {
        free(srv);
        return rc;
    }
    own = gen_cfg_ref(cfg);
    lcfg = gen_cfg_ref(cfg);
    srv->listen_cfg = lcfg;
    char err[256] = "";
    rc = gen_create(srv, own, &srv->gen, err, sizeof err);
    if (rc) {
        LOGE(srv->log, NULL, "cannot start: %s", err);
        cfg_free(own);
        cfg_free(lcfg);
        buf_fini(&srv->out);
        stream_gate_destroy(srv->hs_gate);
        free(srv);
        return rc;
    }
    rc = open_access_log(srv, own);
    if (rc) {
        LOGE(srv->log, NULL, "cannot open access log %s: %s", own->access_log.path, strerror(-rc));
        goto fail;
    }
    srv->lsn = calloc(lcfg->nlisteners, sizeof *srv->lsn);
    if (!srv->lsn) {
        rc = -ENOMEM;
        goto fail;
    }
    srv->nlsn = lcfg->nlisteners;
    for (size_t i = 0; i < lcfg->nlisteners; i++) {
        struct rp_listen *l = &srv->lsn[i];
        l->srv = srv;
        l->cfg = &lcfg->listeners[i];
        l->tcp.data = l;
        char as[ADDR_STRLEN];
        rc = stream_listen(srv->loop, &l->tcp, &l->cfg->address, 4096, false, on_connection);
        if (rc) {
            LOGE(srv->log, NULL, "cannot listen on %s: %s", addr_format(&l->cfg->address, as),
                 uv_strerror(rc));
            goto fail;
        }
        l->tcp.data = l;
        l->open = true;
        srv->lsn_open++;
        LOGI(srv->log, NULL, "listening on %s (%s)", addr_format(&l->cfg->address, as),
             l->cfg->redirect ? "redirect to https" : l->cfg->tls ? "https" : "http");
    }
    admin_set_health(daemon_admin(d), health_cb, srv);
    rc = ctl_start(srv, own);
    if (rc) {
        LOGE(srv->log, NULL, "cannot start the control channel: %s", strerror(-rc));
        goto fail;
    }
    *out = srv;
    return 0;
fail:
    rp_server_stop(srv);
    return rc;
}

int rp_server_reload(struct rp_server *srv, const struct rp_config *cfg)
{
    struct rp_config *own = gen_cfg_ref(cfg);
    char err[256] = "";
    struct rp_gen *g;
    int rc = gen_create(srv, own, &g, err, sizeof err);
    if (rc) {
        LOGE(srv->log, NULL, "reload refused: %s", err);
        cfg_free(own);
        return rc;
    }
    open_access_log(srv, own);
    struct rp_gen *old = srv->gen;
    srv->gen = g;
    gen_retire(old);
    return 0;
}

void rp_server_drain(struct rp_server *srv)
{
    if (srv->draining)
        return;
    srv->draining = true;
    close_listeners(srv);
    /* Idle keep-alive clients go now; busy ones close after their response. */
    struct dlist *e = srv->clients.next;
    while (e != &srv->clients) {
        struct rp_client *c = container_of(e, struct rp_client, link);
        e = e->next;
        if (c->state == C_HEAD && !http_reader_in_head(c->req) && !buf_len(&c->in))
            client_close(c, 0, "draining");
    }
    server_maybe_drained(srv);
}

void rp_server_stop(struct rp_server *srv)
{
    if (!srv || srv->stopping)
        return;
    srv->stopping = true;
    srv->draining = true;
    ctl_client_stop(srv->ctl);
    srv->ctl = NULL;
    close_listeners(srv);
    struct dlist *e = srv->clients.next;
    while (e != &srv->clients) {
        struct rp_client *c = container_of(e, struct rp_client, link);
        e = e->next;
        client_close(c, 0, "stopping");
    }
    stream_gate_destroy(srv->hs_gate); /* every client stream is closed */
    srv->hs_gate = NULL;
    if (srv->gen) {
        struct rp_gen *g = srv->gen;
        srv->gen = NULL;
        gen_retire(g);
    }
    e = srv->upconns.next;
    while (e != &srv->upconns) {
        struct rp_upconn *u = container_of(e, struct rp_upconn, all);
        e = e->next;
        up_close(u, 0, "stopping");
    }
    server_maybe_drained(srv);
}
