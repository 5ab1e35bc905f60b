/* The access edge's lifecycle: start (listeners, TLS, policy, timers), reload, drain and
 * stop, with the timers that drive retransmission, sweeping and the overload signal. */
#include "access-edge/ae_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "access-edge/ae_dns.h"
#include "access-edge/ae_reload.h"
#include "access-edge/ae_retx.h"
#include "access-edge/ae_txn.h"
#include "access-edge/sip_route.h"
#include "access-edge/sip_topo.h"
#include "access-edge/sip_validate.h"
#include "access-edge/sip_ws.h"
#include "common/crypto.h"
#include "common/fdlimit.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/ratelimit.h"
#include "common/sip/sip_msg.h"
#include "common/sip/sip_proxy.h"
#include "common/stream.h"

/* ---- lifecycle ---- */

static void on_lag(uv_timer_t *t)
{
    struct ae *ae = t->data;
    uint64_t now = uv_hrtime();
    uint64_t late_ms = now > ae->lag_expected ? (now - ae->lag_expected) / 1000000 : 0;
    /* One late tick is the process being descheduled (a shared or throttled host: 300 ms
     * stalls were seen on the 2-core test machine under sanitizers); a saturated loop makes
     * every tick late. */
    bool late = ae->cfg->limits.overload_lag_ms && late_ms >= ae->cfg->limits.overload_lag_ms;
    ae->late_ticks = late ? ae->late_ticks + 1 : 0;
    if (ae->late_ticks >= 2) {
        if (ae->overloaded_until < uv_now(ae->loop))
            LOGW(ae->log, NULL, "sip: event loop %llu ms late: shedding new dialogs with 503",
                 (unsigned long long)late_ms);
        ae->overloaded_until = uv_now(ae->loop) + 500;
    }
    ae->lag_expected = now + 20 * 1000000ULL;
}

/* Timer A for INVITEs forwarded over UDP (ae_retx.h): each waits for its first answer.
 * Their callers' deferred 100 Trying go from here too. */
static void on_retx(uv_timer_t *timer)
{
    struct ae *ae = timer->data;
    uint64_t now = uv_now(ae->loop);
    struct dlist *e = ae->retx.next, *next;
    for (; e != &ae->retx; e = next) {
        next = e->next;
        struct ae_retx *r = container_of(e, struct ae_retx, link);
        struct ae_txn *t = ae_txn_find(ae->txns, r->key);
        if (ae_retx_trying_due(r, !t || t->caller_answered, now))
            ae_trying_forwarded(ae, r, t);
        bool waiting = r->response ? t && !t->acked : t && !t->answered && !t->cancelled;
        enum ae_retx_step step = waiting ? ae_retx_step(r, now) : AE_RETX_GIVE_UP;
        if (step == AE_RETX_GIVE_UP && !waiting && r->trying_ms)
            continue; /* kept until its 100 is sent or answered for */
        if (step == AE_RETX_SEND) {
            metric_inc(ae->m_retx);
            (void)ae_send(ae, &r->dest, r->data, r->len);
            continue;
        }
        if (step == AE_RETX_WAIT)
            continue;
        dl_del(&r->link);
        if (waiting && !r->response) {
            metric_inc(ae->m_retx_timeout);
            LOGI(ae->log, &r->dest.addr, "sip: no answer to a forwarded INVITE in %u s",
                 AE_RETX_TIMER_B_MS / 1000);
            ae_fail_forwarded(ae, r, 408, "Request Timeout", NULL);
            for (size_t k = 0; k < ae->ndirs; k++)
                if (ae_dest_is_director(ae, &r->dest, k))
                    ae_director_down(ae, k, "an INVITE unanswered");
        }
        free(r);
    }
    if (dl_empty(&ae->retx))
        uv_timer_stop(timer);
}

bool ae_retx_track(struct ae *ae, uint64_t key, const struct ae_dest *d, const uint8_t *p, size_t n)
{
    struct ae_retx *r = ae_retx_new(key, d, p, n, false, uv_now(ae->loop));
    if (!r)
        return false; /* the sender's own timers are what is left */
    if (dl_empty(&ae->retx) && !ae->stopping)
        uv_timer_start(&ae->retx_timer, on_retx, 100, 100);
    dl_add(ae->retx.prev, &r->link);
    return true;
}

void ae_retx_track_answer(struct ae *ae, uint64_t key, const struct ae_dest *d, const uint8_t *p,
                          size_t n)
{
    struct ae_retx *r = ae_retx_new(key, d, p, n, true, uv_now(ae->loop));
    if (!r)
        return;
    if (dl_empty(&ae->retx) && !ae->stopping)
        uv_timer_start(&ae->retx_timer, on_retx, 100, 100);
    dl_add(ae->retx.prev, &r->link);
}

static void retx_free_all(struct ae *ae)
{
    /* Next taken before each free (the analyzer cannot follow dl_del's relinking). */
    for (struct dlist *e = ae->retx.next, *nx; e != &ae->retx; e = nx) {
        nx = e->next;
        free(container_of(e, struct ae_retx, link));
    }
    dl_init(&ae->retx);
}

static void on_sweep(uv_timer_t *t)
{
    struct ae *ae = t->data;
    /* Timer C (RFC 3261 §16.8) is 3 min; our entries only absorb retransmissions, so a
     * final response ends them after 32 s at most (64*T1). */
    ae_txn_expire(ae->txns, uv_now(ae->loop), 180000, ae->draining ? 0 : 32000);
    /* Slow senders: a message begun must be complete within limits.message_timeout (a
     * byte now and then would otherwise hold a connection for the whole idle timeout). */
    uint64_t now = uv_now(ae->loop), limit = ae->cfg->limits.message_timeout_ms;
    ae_noise_flush(ae, now);
    for (size_t i = 0; i < ae->conn_cap; i++) {
        struct ae_conn *c = ae->conns[i];
        if (!c || !c->msg_started || now - c->msg_started < (c->refused ? 1000 : limit))
            continue;
        c->msg_started = 0;
        if (!c->refused) {
            metric_inc(ae->m_slow);
            LOGI(ae->log, &c->peer, "sip: message not complete within %llu ms, closing",
                 (unsigned long long)limit);
        }
        stream_close(c->s, c->refused ? 0 : -ETIMEDOUT,
                     c->refused ? "refused message" : "message too slow");
    }
    metric_set(ae->m_txns, (int64_t)ae_txn_count(ae->txns));
    ae_check_drained(ae);
}

static int build_policy(struct ae *ae, const struct ae_config *cfg)
{
    const struct ae_side_config *sides[2] = {&cfg->external, &cfg->internal};
    size_t n = 0;
    for (int s = 0; s < 2; s++)
        n += sides[s]->nudp + sides[s]->ntcp + sides[s]->ntls + sides[s]->nmtls + sides[s]->nws +
             sides[s]->nwss;
    struct addr *own = calloc(n ? n : 1, sizeof(*own));
    const char **doms = calloc(cfg->ndomains, sizeof(*doms));
    if (!own || !doms) {
        free(own);
        free(doms);
        return -ENOMEM;
    }
    size_t k = 0;
    for (int s = 0; s < 2; s++) {
        const struct ae_side_config *sc = sides[s];
        for (size_t i = 0; i < sc->nudp; i++)
            own[k++] = sc->udp[i];
        for (size_t i = 0; i < sc->ntcp; i++)
            own[k++] = sc->tcp[i];
        for (size_t i = 0; i < sc->ntls; i++)
            own[k++] = sc->tls[i];
        for (size_t i = 0; i < sc->nmtls; i++)
            own[k++] = sc->mtls[i];
        for (size_t i = 0; i < sc->nws; i++)
            own[k++] = sc->ws[i];
        for (size_t i = 0; i < sc->nwss; i++)
            own[k++] = sc->wss[i];
        if (s == 0)
            ae->nown_ext = k;
    }
    for (size_t i = 0; i < cfg->ndomains; i++)
        doms[i] = cfg->domains[i];
    free(ae->own);
    free(ae->domains);
    ae->own = own;
    ae->nown = k;
    ae->domains = doms;
    ae->policy = (struct sip_policy){
        .domains = doms,
        .ndomains = cfg->ndomains,
        .own = own,
        .nown = k,
        .max_client_msg = cfg->limits.max_client_message,
        .max_server_msg = cfg->limits.max_server_message,
        .max_headers = cfg->limits.max_headers,
        .max_line = cfg->limits.max_line,
    };
    return 0;
}

/* Where ae_tls_build puts each context. */
#define ae_tls_slots(ae)                                                                           \
    ((struct tls_ctx **const[AE_TLS_COUNT]){[AE_TLS_EXT] = &(ae)->tls_ext,                         \
                                            [AE_TLS_EXT_MTLS] = &(ae)->tls_ext_mtls,               \
                                            [AE_TLS_INT_SERVER] = &(ae)->tls_int_server,           \
                                            [AE_TLS_INT_CLIENT] = &(ae)->tls_int_client,           \
                                            [AE_TLS_EXT_CLIENT] = &(ae)->tls_ext_client})

/* Drops one reference of the edge's handles and connections; the last frees it. */
void ae_unref(struct ae *ae)
{
    if (--ae->open_handles == 0) {
        retx_free_all(ae);
        tls_ctx_unref(ae->tls_ext);
        tls_ctx_unref(ae->tls_ext_mtls);
        tls_ctx_unref(ae->tls_int_server);
        tls_ctx_unref(ae->tls_int_client);
        tls_ctx_unref(ae->tls_ext_client);
        ae_txn_table_destroy(ae->txns);
        sip_osip_arena_free(&ae->osip_arena);
        ratelimit_destroy(ae->rl);
        ratelimit_destroy(ae->reject_rl);
        ratelimit_destroy(ae->fed_rl);
        for (size_t i = 0; i < ae->npartners; i++)
            free(ae->partners[i].users);
        free(ae->partners);
        free(ae->conns);
        free(ae->own);
        free(ae->domains);
        free(ae);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    ae_unref(h->data);
}

static void close_handle(struct ae *ae, uv_handle_t *h)
{
    h->data = ae;
    uv_close(h, on_handle_closed);
}

static int listen_udp(struct ae *ae, uint8_t side, const struct addr *a)
{
    if (ae->nudp >= AE_UDP_MAX)
        return -ENOSPC;
    int rc = ae_udp_open(ae, &ae->udp[ae->nudp], side, a);
    if (rc == 0) {
        ae->nudp++;
        ae->open_handles += 2;
    }
    return rc;
}

static int listen_tcp(struct ae *ae, uint8_t side, uint8_t tp, bool mtls, const struct addr *a,
                      bool ws)
{
    if (ae->nlst >= AE_LST_MAX)
        return -ENOSPC;
    struct ae_listener *l = &ae->lst[ae->nlst];
    l->ae = ae;
    l->side = side;
    l->tp = tp;
    l->mtls = mtls;
    l->ws = ws;
    l->local = *a;
    l->h.data = l;
    int rc = stream_listen(ae->loop, &l->h, a, 1024, false, ae_on_accept);
    if (rc < 0)
        return rc;
    l->h.data = l;
    ae->nlst++;
    ae->open_handles++;
    return 0;
}

/* The tables, rate limiters and keys. On failure frees what it made (and ae). */
static int make_tables(struct ae *ae, const struct ae_config *cfg)
{
    uv_loop_t *loop = ae->loop;
    fdlimit_check(ae->log, "limits.max_connections", cfg->limits.max_connections);
    int rc = build_policy(ae, cfg);
    size_t cap = 64;
    while (cap < 2 * (size_t)cfg->limits.max_connections)
        cap <<= 1;
    ae->conn_cap = cap;
    ae->conns = calloc(cap, sizeof(*ae->conns));
    if (rc == 0 && !ae->conns)
        rc = -ENOMEM;
    if (rc == 0)
        rc = ae_txn_table_create(&ae->txns, cfg->limits.max_transactions);
    if (rc == 0)
        rc = sip_osip_arena_init(&ae->osip_arena, AE_OSIP_ARENA);
    if (rc == 0)
        rc = stream_gate_create(loop, AE_HS_BUDGET_US, &ae->hs_gate);
    if (rc == 0)
        rc = ratelimit_create(&ae->rl, cfg->limits.rate, cfg->limits.burst, 65536);
    if (rc == 0)
        rc = ratelimit_create(&ae->reject_rl, cfg->limits.reject_rate,
                              2.0 * cfg->limits.reject_rate, 65536);
    if (rc == 0)
        rc = ratelimit_create(&ae->fed_rl, cfg->federation.discovered_rate,
                              cfg->federation.discovered_rate, AE_PARTNERS_MAX);
    ae->partners = calloc(AE_PARTNERS_MAX, sizeof(*ae->partners));
    if (rc == 0 && !ae->partners)
        rc = -ENOMEM;
    if (rc == 0 && (crypto_random(&ae->salt, sizeof(ae->salt)) < 0 ||
                    crypto_random(ae->flow_key, sizeof(ae->flow_key)) < 0))
        rc = -EIO;
    if (rc < 0) {
        stream_gate_destroy(ae->hs_gate);
        ae_txn_table_destroy(ae->txns);
        sip_osip_arena_free(&ae->osip_arena);
        ratelimit_destroy(ae->rl);
        ratelimit_destroy(ae->reject_rl);
        ratelimit_destroy(ae->fed_rl);
        free(ae->partners);
        free(ae->conns);
        free(ae->own);
        free(ae->domains);
        free(ae);
    }
    return rc;
}

static void make_metrics(struct ae *ae, struct metrics *m)
{
    static const char *const side_l[2] = {"side=\"external\"", "side=\"internal\""};
    for (int s = 0; s < 2; s++) {
        ae->m_in[s] =
            metrics_counter(m, "sip_messages_in_total", "SIP messages received", side_l[s]);
        ae->m_out[s] = metrics_counter(m, "sip_messages_out_total", "SIP messages sent", side_l[s]);
    }
    ae->m_silent = metrics_counter(m, "sip_rate_limited_silent_total",
                                   "over-limit UDP requests dropped without a 503 (beyond "
                                   "limits.reject_rate)",
                                   NULL);
    ae->m_slow = metrics_counter(m, "sip_slow_messages_total",
                                 "stream connections closed: a message took longer than "
                                 "limits.message_timeout",
                                 NULL);
    ae->m_unparseable = metrics_counter(m, "sip_unparseable_total",
                                        "messages dropped (UDP) or connections closed because "
                                        "they did not parse",
                                        NULL);
    ae->m_dropped = metrics_counter(m, "sip_dropped_total",
                                    "messages dropped (stray responses, full queues)", NULL);
    ae->m_conns = metrics_gauge(m, "sip_connections", "open TCP/TLS connections", NULL);
    ae->m_watch = metrics_counter(m, "sip_watchlist_additions_total",
                                  "discovered partners put on the watch list", NULL);
    ae->m_txns = metrics_gauge(m, "sip_transactions",
                               "transactions in flight (INVITE, and non-INVITE awaiting their "
                               "final answer)",
                               NULL);
    ae->m_retx =
        metrics_counter(m, "sip_invite_retransmissions_total",
                        "INVITEs sent again over UDP for want of an answer (Timer A)", NULL);
    ae->m_retx_timeout = metrics_counter(m, "sip_invite_timeouts_total",
                                         "forwarded UDP INVITEs never answered (Timer B)", NULL);
    ae->m_route_stripped = metrics_counter(m, "sip_routes_stripped_total",
                                           "Route entries from outside removed because they were "
                                           "not the edge's own (route_policy: strip)",
                                           NULL);
    for (size_t i = 0; ae_reject_reasons[i]; i++) {
        char l[64];
        snprintf(l, sizeof(l), "reason=\"%s\"", ae_reject_reasons[i]);
        ae->m_reject[i] =
            metrics_counter(m, "sip_rejected_total", "messages refused by the edge, by reason", l);
    }
}

/* TLS contexts and the DNS resolver. */
static int make_contexts(struct ae *ae, const struct ae_config *cfg)
{
    /* TLS contexts: server-auth for remote users, mutual for partners and the inside. */
    int rc = ae_tls_build(cfg, ae->log, ae->acme, ae_tls_slots(ae));
    if (rc == 0 && (rc = ae_dns_create(ae->loop, cfg->federation.dns_servers, &ae->dns)) < 0)
        LOGE(ae->log, NULL, "sip: DNS resolver setup failed (dns_servers %s)",
             cfg->federation.dns_servers ? cfg->federation.dns_servers : "system");
    return rc;
}

static int listen_all(struct ae *ae, const struct ae_config *cfg)
{
    int rc = 0;
    const struct logger *log = ae->log;
    const struct ae_side_config *ex = &cfg->external, *in = &cfg->internal;
    const struct ae_side_config *sides[2] = {ex, in};
    for (uint8_t s = 0; s < 2 && rc == 0; s++) {
        const struct ae_side_config *sc = sides[s];
        for (size_t i = 0; i < sc->nudp && rc == 0; i++)
            if ((rc = listen_udp(ae, s, &sc->udp[i])) < 0)
                LOGE(log, &sc->udp[i], "sip: cannot listen (UDP): %s", uv_strerror(rc));
        for (size_t i = 0; i < sc->ntcp && rc == 0; i++)
            if ((rc = listen_tcp(ae, s, AE_TP_TCP, false, &sc->tcp[i], false)) < 0)
                LOGE(log, &sc->tcp[i], "sip: cannot listen (TCP): %s", uv_strerror(rc));
        for (size_t i = 0; i < sc->ntls && rc == 0; i++)
            if ((rc = listen_tcp(ae, s, AE_TP_TLS, false, &sc->tls[i], false)) < 0)
                LOGE(log, &sc->tls[i], "sip: cannot listen (TLS): %s", uv_strerror(rc));
        for (size_t i = 0; i < sc->nws && rc == 0; i++)
            if ((rc = listen_tcp(ae, s, AE_TP_TCP, false, &sc->ws[i], true)) < 0)
                LOGE(log, &sc->ws[i], "sip: cannot listen (WS): %s", uv_strerror(rc));
        for (size_t i = 0; i < sc->nwss && rc == 0; i++)
            if ((rc = listen_tcp(ae, s, AE_TP_TLS, false, &sc->wss[i], true)) < 0)
                LOGE(log, &sc->wss[i], "sip: cannot listen (WSS): %s", uv_strerror(rc));
        for (size_t i = 0; i < sc->nmtls && rc == 0; i++)
            if ((rc = listen_tcp(ae, s, AE_TP_TLS, true, &sc->mtls[i], false)) < 0)
                LOGE(log, &sc->mtls[i], "sip: cannot listen (mTLS): %s", uv_strerror(rc));
    }
    return rc;
}

/* The Directors' health state and the timers (lag, health, sweep, retransmission). */
static void start_timers(struct ae *ae, const struct ae_config *cfg, struct metrics *m)
{
    uv_loop_t *loop = ae->loop;
    ae->ndirs = 1 + cfg->next_hop.nbackups;
    if (ae->ndirs > AE_DIRECTORS_MAX)
        ae->ndirs = AE_DIRECTORS_MAX;
    for (size_t k = 0; k < ae->ndirs; k++) {
        char l[64];
        snprintf(l, sizeof(l), "director=\"%zu\"", k);
        ae->m_dir_up[k] = metrics_gauge(m, "sip_director_up",
                                        "1 while the Director answers its health checks", l);
        ae->dirs[k].up = k == 0; /* optimistic for the first until checks say otherwise */
        ae->dirs[k].last_ok = ae->dirs[k].down_ms = uv_now(loop);
    }
    uv_timer_init(loop, &ae->lag);
    ae->open_handles++;
    ae->lag.data = ae;
    ae->lag_expected = uv_hrtime() + 20 * 1000000ULL;
    uv_timer_start(&ae->lag, on_lag, 20, 20);
    uv_timer_init(loop, &ae->health);
    ae->open_handles++;
    ae->health.data = ae;
    uv_timer_start(&ae->health, ae_on_health, 10, cfg->next_hop.health_interval_ms);
    uv_timer_init(loop, &ae->sweep);
    ae->open_handles++;
    ae->sweep.data = ae;
    uv_timer_start(&ae->sweep, on_sweep, 1000, 1000);
    uv_timer_init(loop, &ae->retx_timer);
    ae->open_handles++;
    ae->retx_timer.data = ae;
}

int ae_start(uv_loop_t *loop, const struct ae_config *cfg, const struct logger *log,
             struct metrics *m, struct admin *admin, struct acme_challenges *acme, struct ae **out)
{
    struct ae *ae = calloc(1, sizeof(*ae));
    if (!ae)
        return -ENOMEM;
    ae->acme = acme;
    ae->loop = loop;
    ae->cfg = cfg;
    ae->log = log;
    ae->metrics = m;
    dl_init(&ae->retx);
    int rc = make_tables(ae, cfg);
    if (rc < 0)
        return rc;
    make_metrics(ae, m);
    ae->admin = admin;
    if (admin)
        admin_route(admin, "/watchlist", ae_on_admin_watchlist, ae);
    rc = make_contexts(ae, cfg);
    if (rc == 0)
        rc = listen_all(ae, cfg);
    start_timers(ae, cfg, m);
    if (rc < 0) {
        ae_stop(ae);
        return rc;
    }
    LOGI(log, NULL, "sip: access edge up (%zu UDP, %zu stream listeners)", ae->nudp, ae->nlst);
    *out = ae;
    return 0;
}

int ae_reload(struct ae *ae, const struct ae_config *cfg)
{
    /* New certificates for new handshakes (access-edge/ae_reload.c); first, as it changes
     * nothing when it fails, while the policy points into cfg once built. */
    int rc = ae_tls_build(cfg, ae->log, ae->acme, ae_tls_slots(ae));
    if (rc < 0)
        return rc;
    if ((rc = build_policy(ae, cfg)) < 0)
        return rc;
    ae->cfg = cfg;
    /* Directors added by the reload start down until they answer; metrics for indexes past
     * those registered at start are not created (bounded cardinality). */
    size_t n = 1 + cfg->next_hop.nbackups;
    for (size_t k = ae->ndirs; k < n && k < AE_DIRECTORS_MAX; k++)
        memset(&ae->dirs[k], 0, sizeof(ae->dirs[k]));
    ae->ndirs = n < AE_DIRECTORS_MAX ? n : AE_DIRECTORS_MAX;
    return 0;
}

void ae_check_drained(struct ae *ae)
{
    if (ae->draining && ae->drained && ae_txn_count(ae->txns) == 0) {
        void (*cb)(void *) = ae->drained;
        ae->drained = NULL;
        cb(ae->drained_arg);
    }
}

size_t ae_connection_count(const struct ae *ae)
{
    return ae->nconns;
}

size_t ae_transaction_count(const struct ae *ae)
{
    return ae_txn_count(ae->txns);
}

void ae_drain(struct ae *ae, void (*done)(void *arg), void *arg)
{
    ae->draining = true;
    ae->drained = done;
    ae->drained_arg = arg;
    /* Finished INVITE transactions only absorb retransmissions: let them go now. */
    ae_txn_expire(ae->txns, uv_now(ae->loop), 180000, 0);
    ae_check_drained(ae);
}

void ae_stop(struct ae *ae)
{
    if (!ae || ae->stopping)
        return;
    ae->stopping = true;
    for (size_t i = 0; i < ae->conn_cap; i++)
        if (ae->conns[i])
            stream_close(ae->conns[i]->s, 0, "shutdown");
    stream_gate_destroy(ae->hs_gate); /* every accepted stream is closed */
    ae->hs_gate = NULL;
    for (size_t i = 0; i < ae->nudp; i++)
        ae_udp_close(&ae->udp[i], on_handle_closed, ae);
    for (size_t i = 0; i < ae->nlst; i++)
        close_handle(ae, (uv_handle_t *)&ae->lst[i].h);
    uv_timer_stop(&ae->sweep);
    close_handle(ae, (uv_handle_t *)&ae->sweep);
    uv_timer_stop(&ae->retx_timer);
    close_handle(ae, (uv_handle_t *)&ae->retx_timer);
    uv_timer_stop(&ae->health);
    close_handle(ae, (uv_handle_t *)&ae->health);
    uv_timer_stop(&ae->lag);
    close_handle(ae, (uv_handle_t *)&ae->lag);
    ae_dns_destroy(ae->dns);
    ae->dns = NULL;
}
