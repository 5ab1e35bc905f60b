/* The client half: accepted connections, their timers and close, and the request read from
 * them (head, body, tunnel bytes) and sent on to the bound upstream connection. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/metrics.h"
#include "revproxy/proxy_int.h"

/* ---- lifecycle ---- */

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
    rp_gen_unref(c->gen);
    free(c);
    rp_server_maybe_drained(srv);
}

static void on_client_handle_closed(uv_handle_t *h)
{
    client_handle_done(h->data);
}

/* Marks c closing and lets its upstream connection go; false if it already was. */
static bool client_detach(struct rp_client *c, int err)
{
    if (c->closing)
        return false;
    c->closing = true;
    c->state = C_CLOSING;
    if (c->up) {
        struct rp_upconn *u = c->up;
        c->up = NULL;
        rp_up_close(u, err ? err : -ECONNABORTED, "client went away");
    }
    uv_close((uv_handle_t *)&c->timer, on_client_handle_closed);
    return true;
}

void rp_client_close(struct rp_client *c, int err, const char *why)
{
    if (client_detach(c, err))
        stream_close(c->s, err, why);
}

static void client_on_close(struct stream *s, int err, const char *why, void *arg)
{
    struct rp_client *c = arg;
    (void)err;
    LOGD(c->srv->log, stream_peer(s), "client closed: %s", why ? why : "");
    client_detach(c, 0);
    client_handle_done(c);
}

void rp_client_linger(struct rp_client *c)
{
    c->state = C_CLOSING;
    stream_shutdown(c->s);
    /* Bounded: a client that neither reads nor closes goes after RP_LINGER_MS. */
    rp_lazy_set(&c->timer, &c->deadline, rp_on_client_timer, RP_LINGER_MS);
}

void rp_on_client_timer(uv_timer_t *t)
{
    struct rp_client *c = t->data;
    if (!rp_lazy_due(t, &c->deadline, rp_on_client_timer))
        return;
    switch (c->state) {
    case C_HEAD:
        if (http_reader_in_head(c->req)) {
            metric_inc(c->srv->m.timeout_408);
            rp_client_reply(c, 408, "request head not received in time\n", false);
        } else {
            rp_client_close(c, 0, "keep-alive timeout");
        }
        break;
    case C_BODY:
        metric_inc(c->srv->m.timeout_408);
        if (c->resp_started)
            rp_client_close(c, -ETIMEDOUT, "request body timeout");
        else
            rp_client_reply(c, 408, "request body not received in time\n", false);
        break;
    default:
        rp_client_close(c, -ETIMEDOUT, "linger timeout");
    }
}

/* ---- client -> upstream ---- */

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
    rp_client_reply(c, st,
                    st == 431   ? "431 Request Header Fields Too Large\n"
                    : st == 413 ? "413 Content Too Large\n"
                    : st == 501 ? "501 Not Implemented: only chunked is a known transfer coding\n"
                                : "400 Bad Request\n",
                    false);
}

/* Returns of the per-state steps: bytes taken, or one of these. */
#define TAKE_WAIT SIZE_MAX      /* nothing more now: keep the rest for later */
#define TAKE_ALL (SIZE_MAX - 1) /* the rest is not wanted (refused or closing) */

static size_t feed_head(struct rp_client *c, const uint8_t *q, size_t n)
{
    unsigned ev = 0;
    bool was_idle = !http_reader_in_head(c->req);
    ssize_t r = http_reader_feed(c->req, q, n, &ev);
    if (r < 0) {
        client_parse_error(c, r);
        return TAKE_ALL;
    }
    if (was_idle && !(ev & HTTP_EV_HEAD))
        rp_lazy_set(&c->timer, &c->deadline, rp_on_client_timer,
                    c->gen->cfg->client.header_timeout_ms);
    if (ev & HTTP_EV_HEAD) {
        c->req_done = (ev & HTTP_EV_DONE) != 0;
        rp_on_request_head(c);
    }
    return (size_t)r;
}

/* Request body bytes through the pipe half to the upstream connection. */
static size_t feed_body(struct rp_client *c, const uint8_t *q, size_t n)
{
    struct rp_upconn *u = c->up;
    if (!u || u->state == UP_CONNECTING)
        return TAKE_WAIT;
    struct rp_sink k = {u->s, NULL};
    struct rp_step st;
    switch (rp_pipe_feed(&k, c->req, q, n, 1, true, &st)) {
    case RP_FLOW_FULL:
        return TAKE_WAIT;
    case RP_FLOW_BAD:
        client_parse_error(c, st.err);
        return TAKE_ALL;
    case RP_FLOW_GONE:
        return TAKE_ALL; /* the upstream is closing: its on_close answers */
    case RP_FLOW_MOVED:
        break;
    }
    rp_lazy_set(&c->timer, &c->deadline, rp_on_client_timer, c->gen->cfg->client.body_timeout_ms);
    rp_lazy_set(&u->timer, &u->deadline, rp_on_up_timer, c->read_timeout_ms);
    if (st.ev & HTTP_EV_DONE) {
        c->req_done = true;
        c->deadline = 0;
        c->state = C_WAIT;
    }
    return st.used;
}

static size_t feed_tunnel(struct rp_client *c, const uint8_t *q, size_t n)
{
    if (!c->up)
        return TAKE_ALL;
    struct rp_sink k = {c->up->s, NULL};
    struct rp_step st;
    switch (rp_pipe_copy(&k, q, n, &st)) {
    case RP_FLOW_MOVED:
        return st.used;
    case RP_FLOW_FULL:
        return TAKE_WAIT;
    default:
        return TAKE_ALL;
    }
}

/* Takes client bytes as far as the exchange allows; returns how many were used. */
static size_t client_consume(void *arg, const uint8_t *p, size_t len)
{
    struct rp_client *c = arg;
    size_t used = 0;
    while (used < len && !c->closing) {
        size_t k;
        switch (c->state) {
        case C_HEAD:
            k = feed_head(c, p + used, len - used);
            break;
        case C_BODY:
            k = feed_body(c, p + used, len - used);
            break;
        case C_TUNNEL:
            k = feed_tunnel(c, p + used, len - used);
            break;
        case C_WAIT:
            return used; /* pipelined: waits for the response before it */
        default:
            return len; /* closing: drop */
        }
        if (k == TAKE_WAIT)
            return used;
        if (k == TAKE_ALL)
            return len;
        used += k;
    }
    return used;
}

static void client_resume_cb(void *arg);

static struct rp_half client_half(struct rp_client *c)
{
    return (struct rp_half){c->s, &c->in, &c->closing, client_consume, client_resume_cb, c};
}

void rp_client_resume(struct rp_client *c)
{
    struct rp_half h = client_half(c);
    if (rp_half_resume(&h) && c->state != C_CLOSING)
        stream_read_start(c->s);
}

static void client_resume_cb(void *arg)
{
    rp_client_resume(arg);
}

static int client_on_data(struct stream *s, const uint8_t *data, size_t len, void *arg)
{
    struct rp_client *c = arg;
    (void)s;
    if (c->closing || c->state == C_CLOSING)
        return 0;
    metric_add(c->srv->m.bytes_in, len);
    struct rp_half h = client_half(c);
    if (rp_half_data(&h, data, len) < 0)
        rp_client_close(c, -ENOBUFS, "input overflow");
    return 0;
}

static void client_on_drain(struct stream *s, void *arg)
{
    struct rp_client *c = arg;
    (void)s;
    if (c->up)
        rp_up_resume(c->up);
}

static void client_on_open(struct stream *s, void *arg)
{
    struct rp_client *c = arg;
    (void)s;
    if (!c->handles)
        return; /* plain TCP opens inside stream_accept; rp_client_accept arms the timer */
    rp_lazy_set(&c->timer, &c->deadline, rp_on_client_timer, c->gen->cfg->client.header_timeout_ms);
}

static const struct stream_cbs client_cbs = {
    .on_data = client_on_data,
    .on_open = client_on_open,
    .on_drain = client_on_drain,
    .on_close = client_on_close,
};

/* ---- accept ---- */

static void client_free_unopened(struct rp_client *c)
{
    http_reader_destroy(c->req);
    buf_fini(&c->in);
    buf_fini(&c->uphead);
    free(c);
}

int rp_client_accept(struct rp_server *srv, const struct rp_listener *l, uv_stream_t *server)
{
    struct rp_gen *g = srv->gen;
    struct rp_client *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->srv = srv;
    c->lst = l;
    c->tls = l->tls;
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
        client_free_unopened(c);
        return rc;
    }
    rp_gen_ref(g);
    uv_timer_init(srv->loop, &c->timer);
    c->timer.data = c;
    c->handles = 2;
    dl_add(&srv->clients, &c->link);
    srv->nclients++;
    metric_inc(srv->m.conns_total);
    metric_set(srv->m.conns, (int64_t)srv->nclients);
    if (srv->nclients > g->cfg->client.max_connections) {
        metric_inc(srv->m.rejected_cap);
        rp_client_close(c, -EMFILE, "connection cap");
        return 0;
    }
    if (!c->tls)
        rp_lazy_set(&c->timer, &c->deadline, rp_on_client_timer, g->cfg->client.header_timeout_ms);
    return 0;
}
