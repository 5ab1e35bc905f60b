/* The server: listeners (plain, TLS, the port-80 redirect) and what they accept, metrics,
 * the Director link, the access log file, and the lifecycle: start, reload (a new
 * generation), drain and stop. The public API of revproxy/proxy.h. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/admin.h"
#include "common/ctl.h"
#include "common/fdlimit.h"
#include "common/metrics.h"
#include "revproxy/proxy_int.h"

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
    if (rp_client_accept(srv, l->cfg, server) == -EMFILE)
        refused_fd_limit(srv);
}

static void on_listen_closed(uv_handle_t *h)
{
    struct rp_listen *l = h->data;
    struct rp_server *srv = l->srv;
    srv->lsn_open--;
    rp_server_maybe_drained(srv);
}

static void close_listeners(struct rp_server *srv)
{
    /* No table (its allocation failed during start): nothing was opened. */
    for (size_t i = 0; srv->lsn && i < srv->nlsn; i++)
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
    acme_edge_free(srv->acme); /* every client is gone, and the control channel */
    free(srv);
}

void rp_server_maybe_drained(struct rp_server *srv)
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
    srv->m.conns_total =
        metrics_counter(m, "client_connections_total", "Accepted client connections", NULL);
    srv->m.rejected_cap = metrics_counter(m, "refused_total", "Requests or connections refused",
                                          "reason=\"connection_cap\"");
    srv->m.not_http = metrics_counter(m, "refused_total", "Requests or connections refused",
                                      "reason=\"bad_request\"");
    srv->m.too_large = metrics_counter(m, "refused_total", "Requests or connections refused",
                                       "reason=\"head_too_large\"");
    srv->m.body_too_large = metrics_counter(m, "refused_total", "Requests or connections refused",
                                            "reason=\"body_too_large\"");
    srv->m.timeout_408 = metrics_counter(m, "refused_total", "Requests or connections refused",
                                         "reason=\"client_timeout\"");
    srv->m.not_found = metrics_counter(m, "refused_total", "Requests or connections refused",
                                       "reason=\"not_routed\"");
    srv->m.unknown_host = metrics_counter(m, "refused_total", "Requests or connections refused",
                                          "reason=\"unknown_host\"");
    srv->m.rate_limited = metrics_counter(m, "refused_total", "Requests or connections refused",
                                          "reason=\"rate_limited\"");
    srv->m.fd_limit = metrics_counter(m, "refused_total", "Requests or connections refused",
                                      "reason=\"fd_limit\"");
    srv->m.req_total = metrics_counter(m, "requests_total", "Requests answered", NULL);
    static const char *const cls[] = {
        NULL, "class=\"1xx\"", "class=\"2xx\"", "class=\"3xx\"", "class=\"4xx\"", "class=\"5xx\""};
    for (int i = 1; i <= 5; i++)
        srv->m.status[i] =
            metrics_counter(m, "responses_total", "Responses by status class", cls[i]);
    srv->m.up_connect_fail =
        metrics_counter(m, "upstream_errors_total", "Upstream failures", "kind=\"connect\"");
    srv->m.up_timeout =
        metrics_counter(m, "upstream_errors_total", "Upstream failures", "kind=\"timeout\"");
    srv->m.up_reset =
        metrics_counter(m, "upstream_errors_total", "Upstream failures", "kind=\"mid_response\"");
    srv->m.up_reused = metrics_counter(m, "upstream_connections_total", "Upstream connections used",
                                       "kind=\"reused\"");
    srv->m.up_new = metrics_counter(m, "upstream_connections_total", "Upstream connections used",
                                    "kind=\"new\"");
    srv->m.bytes_in = metrics_counter(m, "client_bytes_received_total", "Bytes from clients", NULL);
    srv->m.bytes_out = metrics_counter(m, "client_bytes_sent_total",
                                       "Bytes to clients (relayed responses and our own)", NULL);
    static const char acme_help[] = "ACME HTTP-01 requests on the port-80 listener, by result";
    srv->m.acme_served =
        metrics_counter(m, "acme_http_requests_total", acme_help, "result=\"served\"");
    srv->m.acme_unknown =
        metrics_counter(m, "acme_http_requests_total", acme_help, "result=\"unknown_token\"");
}

static void ctl_fill_report(struct ctl_report *r, void *arg)
{
    struct rp_server *srv = arg;
    r->connections = srv->nclients;
    r->bytes_in = (uint64_t)metric_get(srv->m.bytes_in);
    r->bytes_out = (uint64_t)metric_get(srv->m.bytes_out);
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
    int rc = ctl_client_start_link(srv->loop, &cfg->director, &h, srv->log, daemon_metrics(srv->d),
                                   &cbs, srv, &srv->ctl);
    if (rc == 0 && srv->ctl)
        ctl_client_set_report_source(srv->ctl, ctl_fill_report, srv);
    acme_edge_attach(srv->acme, srv->ctl);
    return rc;
}

/* The placeholder certificate's name: the first public name, else the self-signed one's. */
static const char *acme_name(const struct rp_config *cfg)
{
    for (size_t i = 0; i < cfg->nserver_names; i++)
        if (cfg->server_names[i][0] != '*')
            return cfg->server_names[i];
    return cfg->tls.self_signed_name;
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

/* The server without a generation yet: loop, metrics, scratch buffer, handshake gate. */
static int server_alloc(struct daemon *d, const struct rp_config *cfg, struct rp_server **out)
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
    int rc = buf_init(&srv->out, RP_HEAD_ROOM + RP_READ_CHUNK);
    if (rc == 0 && (rc = stream_gate_create(srv->loop, RP_HS_BUDGET_US, &srv->hs_gate)) < 0)
        buf_fini(&srv->out);
    if (rc) {
        free(srv);
        return rc;
    }
    *out = srv;
    return 0;
}

/* Opens every listener of lcfg; rp_server_stop closes those that opened. */
static int listeners_open(struct rp_server *srv, const struct rp_config *lcfg)
{
    srv->lsn = calloc(lcfg->nlisteners, sizeof *srv->lsn);
    if (!srv->lsn)
        return -ENOMEM;
    srv->nlsn = lcfg->nlisteners;
    for (size_t i = 0; i < lcfg->nlisteners; i++) {
        struct rp_listen *l = &srv->lsn[i];
        l->srv = srv;
        l->cfg = &lcfg->listeners[i];
        l->tcp.data = l;
        char as[ADDR_STRLEN];
        int rc = stream_listen(srv->loop, &l->tcp, &l->cfg->address, 4096, false, on_connection);
        if (rc) {
            LOGE(srv->log, NULL, "cannot listen on %s: %s", addr_format(&l->cfg->address, as),
                 uv_strerror(rc));
            return rc;
        }
        l->tcp.data = l;
        l->open = true;
        srv->lsn_open++;
        LOGI(srv->log, NULL, "listening on %s (%s)", addr_format(&l->cfg->address, as),
             l->cfg->redirect ? "redirect to https"
             : l->cfg->tls    ? "https"
                              : "http");
    }
    return 0;
}

int rp_server_start(struct daemon *d, const struct rp_config *cfg, struct rp_server **out)
{
    struct rp_server *srv;
    int rc = server_alloc(d, cfg, &srv);
    if (rc)
        return rc;
    struct rp_config *own = gen_cfg_ref(cfg);
    struct rp_config *lcfg = gen_cfg_ref(cfg);
    srv->listen_cfg = lcfg;
    char err[256] = "";
    rc =
        acme_edge_create(srv->log, daemon_metrics(d), &cfg->acme, acme_name(cfg), NULL, &srv->acme);
    if (rc == 0 && (rc = rp_gen_create(srv, own, &srv->gen, err, sizeof err)) != 0)
        LOGE(srv->log, NULL, "cannot start: %s", err);
    if (rc) {
        cfg_free(own);
        cfg_free(lcfg);
        buf_fini(&srv->out);
        stream_gate_destroy(srv->hs_gate);
        acme_edge_free(srv->acme);
        free(srv);
        return rc;
    }
    rc = open_access_log(srv, own);
    if (rc) {
        LOGE(srv->log, NULL, "cannot open access log %s: %s", own->access_log.path, strerror(-rc));
        goto fail;
    }
    if ((rc = listeners_open(srv, lcfg)) != 0)
        goto fail;
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
    int rc = rp_gen_create(srv, own, &g, err, sizeof err);
    if (rc) {
        LOGE(srv->log, NULL, "reload refused: %s", err);
        cfg_free(own);
        return rc;
    }
    open_access_log(srv, own);
    struct rp_gen *old = srv->gen;
    srv->gen = g;
    rp_gen_retire(old);
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
            rp_client_close(c, 0, "draining");
    }
    rp_server_maybe_drained(srv);
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
        rp_client_close(c, 0, "stopping");
    }
    stream_gate_destroy(srv->hs_gate); /* every client stream is closed */
    srv->hs_gate = NULL;
    if (srv->gen) {
        struct rp_gen *g = srv->gen;
        srv->gen = NULL;
        rp_gen_retire(g);
    }
    e = srv->upconns.next;
    while (e != &srv->upconns) {
        struct rp_upconn *u = container_of(e, struct rp_upconn, all);
        e = e->next;
        rp_up_close(u, 0, "stopping");
    }
    rp_server_maybe_drained(srv);
}
