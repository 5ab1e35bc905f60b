/* The client exchange: one request, from its head (checked, routed, rate-limited, rewritten
 * into an upstream head) to its end (the response finished, or the proxy's own answer),
 * with the access log line and the status counters. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <http_parser.h>

#include "common/acme_challenges.h"
#include "common/metrics.h"
#include "common/ratelimit.h"
#include "revproxy/headers.h"
#include "revproxy/proxy_int.h"
#include "revproxy/route.h"

/* ---- access log and counters ---- */

/* Path and host were checked by the parser (no control bytes or quotes in a valid request
 * target); escape quotes and backslashes anyway. */
static void json_path(const char *in, char *out, size_t cap)
{
    size_t j = 0;
    for (size_t i = 0; in[i] && j + 2 < cap; i++) {
        char ch = in[i];
        if (ch == '"' || ch == '\\')
            out[j++] = '\\';
        out[j++] = (ch >= 0x20 && ch < 0x7f) ? ch : '?';
    }
    out[j] = '\0';
}

void rp_access_log(struct rp_client *c)
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
        char path[1100];
        json_path(c->path, path, sizeof path);
        n = snprintf(line, sizeof line,
                     "{\"ts\":\"%s\",\"client\":\"%s\",\"tls\":%s,\"method\":\"%s\","
                     "\"path\":\"%s\",\"status\":%d,\"bytes\":%llu,\"ms\":%llu,"
                     "\"upstream\":\"%s\"}\n",
                     ts, ip, c->tls ? "true" : "false", c->method, path, c->status,
                     (unsigned long long)c->bytes_out, (unsigned long long)ms, up);
    } else {
        strftime(ts, sizeof ts, "%d/%b/%Y:%H:%M:%S +0000", &tm);
        n = snprintf(line, sizeof line,
                     "%s - - [%s] \"%s %s HTTP/1.1\" %d %llu \"-\" \"-\" %llums %s\n", ip, ts,
                     c->method, c->path, c->status, (unsigned long long)c->bytes_out,
                     (unsigned long long)ms, up);
    }
    if (n > 0)
        (void)!write(srv->access_fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

void rp_count_status(struct rp_server *srv, int status)
{
    int k = status / 100;
    metric_inc(srv->m.req_total);
    if (k >= 1 && k <= 5)
        metric_inc(srv->m.status[k]);
}

/* ---- the proxy's own answers ---- */

void rp_client_reply_with(struct rp_client *c, int status, const char *extra, const char *body,
                          bool keep)
{
    if (c->closing || c->state == C_CLOSING)
        return;
    if (c->resp_started) {
        rp_client_close(c, -EPROTO, "aborted mid-response");
        return;
    }
    if (c->up) {
        struct rp_upconn *u = c->up;
        c->up = NULL;
        rp_up_close(u, 0, "exchange abandoned");
    }
    if (c->srv->draining)
        keep = false;
    uint8_t tmp[1024];
    struct buf b = {tmp, sizeof tmp, 0, 0};
    http_simple_response(&b, status, extra, body, !keep, c->is_head);
    if (stream_write(c->s, b.data, b.wr) >= 0)
        metric_add(c->srv->m.bytes_out, (double)b.wr);
    c->status = status;
    c->bytes_out = body && !c->is_head ? strlen(body) : 0;
    rp_count_status(c->srv, status);
    if (c->method[0])
        rp_access_log(c);
    if (keep) {
        rp_exchange_reset(c);
        c->state = C_HEAD;
        rp_lazy_set(&c->timer, &c->deadline, rp_on_client_timer,
                    c->gen->cfg->client.keepalive_timeout_ms);
        return;
    }
    rp_client_linger(c);
}

void rp_client_reply(struct rp_client *c, int status, const char *body, bool keep)
{
    rp_client_reply_with(c, status, NULL, body, keep);
}

static void exchange_start_upstream(struct rp_client *c);

void rp_client_upstream_failed(struct rp_client *c, int err, const char *why, bool retryable)
{
    if (c->closing)
        return;
    if (c->resp_started) {
        /* Mid-body: flush what arrived, then close, so the client sees a short body
         * (curl: exit 18) instead of waiting. */
        metric_inc(c->srv->m.up_reset);
        LOGW(c->srv->log, stream_peer(c->s), "upstream failed mid-response (%s): cutting %s", why,
             c->path);
        rp_client_linger(c);
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
        rp_client_reply(c, 504, "504 Gateway Timeout: the internal server did not answer in time\n",
                        false);
    else
        rp_client_reply(c, 502,
                        "502 Bad Gateway: the internal server could not be reached or "
                        "closed the connection\n",
                        false);
}

/* ---- the exchange's start and end ---- */

void rp_exchange_reset(struct rp_client *c)
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

void rp_exchange_finish(struct rp_client *c)
{
    struct rp_upconn *u = c->up;
    rp_access_log(c);
    rp_count_status(c->srv, c->status);
    if (u) {
        u->deadline = 0;
        if (c->affinity && u->reusable && !c->close_after) {
            u->c = c; /* stays bound to this client for its next request */
        } else {
            c->up = NULL;
            rp_up_release(u);
        }
    }
    if (c->close_after || c->srv->draining) {
        if (c->up) {
            struct rp_upconn *b = c->up;
            c->up = NULL;
            rp_up_close(b, 0, "client closing");
        }
        rp_client_linger(c);
        return;
    }
    rp_exchange_reset(c);
    c->state = C_HEAD;
    rp_lazy_set(&c->timer, &c->deadline, rp_on_client_timer,
                c->gen->cfg->client.keepalive_timeout_ms);
    rp_client_resume(c);
}

/* Sends the kept request head on a pooled or new upstream connection. */
static void exchange_start_upstream(struct rp_client *c)
{
    const struct rp_config *cfg = c->gen->cfg;
    struct rp_pool *pool = &c->gen->pools[rp_config_upstream(cfg, cfg->routes[c->route].upstream)];
    struct rp_upconn *u = c->up;
    if (u && u->pool != pool) {
        c->up = NULL; /* affinity-bound to another pool: this route goes elsewhere */
        rp_up_close(u, 0, "route changed");
        u = NULL;
    }
    if (!u) {
        int rc = rp_pool_get(pool, &u);
        if (rc) {
            LOGW(c->srv->log, stream_peer(c->s), "no upstream for %s: %s", c->path,
                 rc == -EHOSTUNREACH ? "every server is marked down" : strerror(-rc));
            rp_client_reply(c, 502, "502 Bad Gateway: no internal server is available\n", false);
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
        rp_up_close(u, -EIO, "write failed");
        rp_client_reply(c, 502, "502 Bad Gateway: the internal server could not be reached\n",
                        false);
        return;
    }
    rp_lazy_set(&u->timer, &u->deadline, rp_on_up_timer, c->read_timeout_ms);
}

/* ---- the request head ---- */

/* The port-80 redirect names only a configured server name (server_names, or a route's
 * host): the client's Host picks one, it is never copied into Location (open redirect). */
static void redirect_reply(struct rp_client *c, const struct http_head *h, struct slice url)
{
    const struct rp_config *cfg = c->gen->cfg;
    struct slice host = http_head_get(h, "host");
    struct rp_target t;
    char extra[1200], name[256];
    if (rp_target_parse(url, &t) < 0) {
        rp_client_reply(c, 400, "400 Bad Request\n", false);
        return;
    }
    if (t.host.len)
        host = t.host; /* absolute-form: its authority is the host (RFC 9112 3.2.2) */
    if (!host.p || !rp_host_valid(host)) {
        metric_inc(c->srv->m.not_http);
        rp_client_reply(c, 400, "400 Bad Request: bad Host\n", false);
        return;
    }
    if (rp_server_name_pick(cfg->server_names, cfg->nserver_names, cfg->routes, cfg->nroutes,
                            rp_host_strip_port(host), name, sizeof name) < 0) {
        metric_inc(c->srv->m.unknown_host);
        LOGI(c->srv->log, stream_peer(c->s), "redirect refused: unknown host %.*s",
             (int)(host.len < 64 ? host.len : 64), (const char *)host.p);
        rp_client_reply(c, 400, "400 Bad Request: unknown host\n", false);
        return;
    }
    snprintf(extra, sizeof extra, "Location: https://%s%.*s%.*s\r\n", name, (int)t.path.len,
             (const char *)t.path.p, (int)t.query.len, (const char *)t.query.p);
    if (strpbrk(extra + 10, "\r\n") != extra + strlen(extra) - 2) {
        rp_client_reply(c, 400, "400 Bad Request\n", false);
        return;
    }
    uint8_t tmp[2048];
    struct buf b = {tmp, sizeof tmp, 0, 0};
    http_simple_response(&b, 301, extra, "Moved to HTTPS\n", true, c->is_head);
    if (stream_write(c->s, b.data, b.wr) >= 0)
        metric_add(c->srv->m.bytes_out, (double)b.wr);
    c->status = 301;
    rp_count_status(c->srv, 301);
    rp_access_log(c);
    rp_client_linger(c);
}

/* ACME HTTP-01 (RFC 8555 8.3) on the port-80 listener: GET or HEAD of
 * /.well-known/acme-challenge/<token> answers the token's key authorization from the
 * challenge store, or 404. False for any other request (it gets the redirect). */
static bool acme_challenge_reply(struct rp_client *c, const struct http_head *h)
{
    static const char prefix[] = "/.well-known/acme-challenge/";
    struct acme_challenges *store = acme_edge_store(c->srv->acme);
    struct rp_target t;
    if (!store || (h->method != HTTP_GET && h->method != HTTP_HEAD) ||
        rp_target_parse(h->url, &t) < 0 || t.path.len < sizeof prefix - 1 ||
        memcmp(t.path.p, prefix, sizeof prefix - 1))
        return false;
    char token[CTL_TOKEN_MAX], ka[CTL_KEYAUTH_MAX + 1];
    size_t n = t.path.len - (sizeof prefix - 1);
    int rc = -ENOENT;
    if (n > 0 && n < sizeof token) {
        memcpy(token, (const char *)t.path.p + sizeof prefix - 1, n);
        token[n] = '\0';
        rc = acme_challenges_http(store, token, ka, sizeof ka); /* checks the token's form */
    }
    bool keep = !h->has_body && h->keep_alive;
    if (rc < 0) {
        metric_inc(c->srv->m.acme_unknown);
        rp_client_reply(c, 404, "404 Not Found: no such challenge\n", keep);
        return true;
    }
    metric_inc(c->srv->m.acme_served);
    LOGI(c->srv->log, stream_peer(c->s), "acme: HTTP-01 challenge %s answered", token);
    rp_client_reply(c, 200, ka, keep);
    return true;
}

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
    rp_client_reply_with(c, 429, extra, "429 Too Many Requests\n", !h->has_body && h->keep_alive);
    return false;
}

/* The request's host: the target's authority, else Host. False when refused (answered). */
static bool request_host(struct rp_client *c, const struct http_head *h, const struct rp_target *t,
                         struct slice *out)
{
    struct slice host = t->host.len ? t->host : http_head_get(h, "host");
    if ((!host.p || host.len == 0) && h->minor >= 1) {
        rp_client_reply(c, 400, "400 Bad Request: Host is required\n", false);
        return false;
    }
    if (host.len && !rp_host_valid(host)) {
        metric_inc(c->srv->m.not_http);
        rp_client_reply(c, 400, "400 Bad Request: bad Host\n", false);
        return false;
    }
    if (host.len >= sizeof c->host) {
        rp_client_reply(c, 400, "400 Bad Request: Host too long\n", false);
        return false;
    }
    slice_to_cstr(host, c->host, sizeof c->host);
    *out = host;
    return true;
}

/* The route for host and path, within its rate and body limit: its index, or -1 when the
 * request was refused (answered). */
static int request_route(struct rp_client *c, const struct http_head *h, struct slice host,
                         struct slice path)
{
    const struct rp_config *cfg = c->gen->cfg;
    struct rp_server *srv = c->srv;
    int ri = rp_route_match(cfg->routes, cfg->nroutes, host, path);
    if (ri < 0) {
        metric_inc(srv->m.not_found);
        rp_client_reply(c, 404, "404 Not Found\n", !h->has_body && h->keep_alive);
        return -1;
    }
    const struct rp_route *r = &cfg->routes[ri];
    c->route = ri;
    if (c->gen->limits[ri] && !client_within_rate(c, c->gen->limits[ri])) {
        metric_inc(srv->m.rate_limited);
        return -1;
    }
    if (h->content_length != HTTP_NO_LENGTH && h->content_length > r->max_body) {
        metric_inc(srv->m.body_too_large);
        rp_client_reply(c, 413, "413 Content Too Large\n", false);
        return -1;
    }
    http_reader_set_max_body(c->req, r->max_body);
    return ri;
}

/* The upstream request head for route r into c->uphead. False when refused (answered). */
static bool request_build(struct rp_client *c, const struct http_head *h, const struct rp_route *r,
                          struct slice host, const struct rp_target *t)
{
    const struct rp_config *cfg = c->gen->cfg;
    char target[4096];
    if (rp_route_rewrite(r, t->path, t->query, target, sizeof target) < 0) {
        rp_client_reply(c, 414, "414 URI Too Long\n", false);
        return false;
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
        .trusted = cidr_list_contains(cfg->trusted, cfg->ntrusted, stream_peer(c->s)),
        .host = host,
        .host_header = r->host_header,
        .fallback_host = fallback,
        .target = target,
        .upgrade = c->upgrade,
        .close = h->minor == 0,
    };
    c->uphead.rd = c->uphead.wr = 0;
    if (http_request_build(h, &f, &c->uphead) < 0) {
        rp_client_reply(c, 431, "431 Request Header Fields Too Large\n", false);
        return false;
    }
    return true;
}

/* A request head arrived: check it, route it, start the upstream side. */
void rp_on_request_head(struct rp_client *c)
{
    struct rp_server *srv = c->srv;
    if (c->gen != srv->gen && !c->up) {
        rp_gen_unref(c->gen); /* a reload happened: new requests use the new routes */
        c->gen = srv->gen;
        rp_gen_ref(c->gen);
    }
    const struct rp_config *cfg = c->gen->cfg;
    const struct http_head *h = http_reader_head(c->req);
    c->t0_ms = time_mono_ms();
    c->is_head = h->method == HTTP_HEAD;
    slice_to_cstr(h->method_name, c->method, sizeof c->method);
    slice_to_cstr(h->url, c->path, sizeof c->path);
    if (c->lst->redirect) {
        if (!acme_challenge_reply(c, h))
            redirect_reply(c, h, h->url);
        return;
    }
    if (h->method == HTTP_CONNECT) {
        rp_client_reply(c, 405, "405 Method Not Allowed\n", false);
        return;
    }
    struct rp_target t;
    if (rp_target_parse(h->url, &t) < 0) {
        metric_inc(srv->m.not_http);
        rp_client_reply(c, 400, "400 Bad Request: request target refused\n", false);
        return;
    }
    struct slice host;
    if (!request_host(c, h, &t, &host))
        return;
    int ri = request_route(c, h, host, t.path);
    if (ri < 0 || !request_build(c, h, &cfg->routes[ri], host, &t))
        return;
    c->state = h->has_body ? C_BODY : C_WAIT;
    if (c->state == C_BODY)
        rp_lazy_set(&c->timer, &c->deadline, rp_on_client_timer, cfg->client.body_timeout_ms);
    else
        c->deadline = 0;
    exchange_start_upstream(c);
}
