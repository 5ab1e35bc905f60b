/* The upstream half: connections to internal servers (connect, timeouts, close and what
 * the bound client sees of it) and the response read from them and sent on to the client. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"
#include "revproxy/headers.h"
#include "revproxy/proxy_int.h"

/* ---- connection lifecycle ---- */

static void up_handle_done(struct rp_upconn *u)
{
    if (--u->handles == 0) {
        http_reader_destroy(u->resp);
        buf_fini(&u->in);
        rp_gen_unref(u->gen);
        free(u);
    }
}

static void on_up_handle_closed(uv_handle_t *h)
{
    up_handle_done(h->data);
}

/* Marks u closing and unbinds it from its pool, the server and its client; false if it
 * already was. */
static bool up_detach(struct rp_upconn *u)
{
    if (u->closing)
        return false;
    u->closing = true;
    if (u->state == UP_IDLE) {
        dl_del(&u->link);
        u->be->nidle--;
    }
    dl_del(&u->all);
    u->c = NULL;
    uv_close((uv_handle_t *)&u->timer, on_up_handle_closed);
    return true;
}

void rp_up_close(struct rp_upconn *u, int err, const char *why)
{
    if (u && up_detach(u))
        stream_close(u->s, err, why);
}

static void mark_failed(struct rp_upconn *u)
{
    struct rp_backend *be = u->be;
    be->fails++;
    if (u->pool->cfg->max_fails && be->fails >= u->pool->cfg->max_fails)
        be->down_until = time_mono_ms() + u->pool->cfg->fail_timeout_ms;
}

/* The connection bound to c's exchange closed: finish, cut or retry the exchange. */
static void up_closed_under(struct rp_upconn *u, struct rp_client *c, bool opened, int err,
                            const char *why)
{
    if (!opened) {
        mark_failed(u);
        metric_inc(c->srv->m.up_connect_fail);
        LOGW(c->srv->log, &u->be->addr, "upstream %s: %s%s", u->pool->cfg->name,
             why ? why : "connect failed",
             u->be->down_until ? " (skipped until fail_timeout passes)" : "");
    }
    c->up = NULL;
    if (c->state == C_TUNNEL) {
        rp_client_linger(c);
    } else if (c->resp_started && http_reader_eof(u->resp) == HTTP_EV_DONE) {
        /* A body that ends at close (no length, not chunked): done. */
        rp_access_log(c);
        rp_count_status(c->srv, c->status);
        rp_client_linger(c);
    } else {
        /* Nothing reached the server (connect failed), or a pooled connection was
         * closed by the server as we reused it: another connection may do. */
        bool retryable = !opened || u->reused;
        rp_client_upstream_failed(c, opened ? (err ? err : -ECONNRESET) : err, why ? why : "closed",
                                  retryable);
    }
}

static void up_on_close(struct stream *s, int err, const char *why, void *arg)
{
    struct rp_upconn *u = arg;
    struct rp_client *c = u->c;
    bool opened = u->state != UP_CONNECTING;
    (void)s;
    up_detach(u); /* closed by the peer or by stream.c: unbind before the handle goes */
    if (u->probe) {
        if (!u->reusable) /* reusable marks a passed check */
            u->be->check_down = true;
    } else if (c && c->up == u && c->state == C_HEAD) {
        /* An affinity-bound connection went while the client was between requests:
         * the client's authenticated session is gone with it. */
        c->up = NULL;
        rp_client_close(c, 0, "upstream connection closed (affinity)");
    } else if (c && c->up == u) {
        up_closed_under(u, c, opened, err, why);
    }
    up_handle_done(u);
}

void rp_on_up_timer(uv_timer_t *t)
{
    struct rp_upconn *u = t->data;
    if (!rp_lazy_due(t, &u->deadline, rp_on_up_timer))
        return;
    if (u->state == UP_IDLE) {
        rp_up_close(u, 0, "idle timeout");
        return;
    }
    struct rp_client *c = u->c;
    if (c && c->up == u) {
        c->up = NULL;
        metric_inc(c->srv->m.up_timeout);
        u->c = NULL;
        rp_up_close(u, -ETIMEDOUT, "read timeout");
        rp_client_upstream_failed(c, -ETIMEDOUT, "upstream read timeout", false);
        return;
    }
    rp_up_close(u, -ETIMEDOUT, "timeout");
}

static void up_on_open(struct stream *s, void *arg)
{
    struct rp_upconn *u = arg;
    (void)s;
    if (u->state == UP_CONNECTING)
        u->state = UP_OPEN;
    if (u->probe) {
        rp_health_probe_open(u);
        return;
    }
    struct rp_client *c = u->c;
    if (c && c->up == u && c->state == C_BODY)
        rp_client_resume(c);
}

static size_t up_consume(void *arg, const uint8_t *p, size_t len);
static void up_resume_cb(void *arg);

static struct rp_half up_half(struct rp_upconn *u)
{
    return (struct rp_half){u->s, &u->in, &u->closing, up_consume, up_resume_cb, u};
}

static int up_on_data(struct stream *s, const uint8_t *data, size_t len, void *arg)
{
    struct rp_upconn *u = arg;
    (void)s;
    if (u->closing)
        return 0;
    if (u->probe) {
        rp_health_probe_data(u, data, len);
        return 0;
    }
    if (!u->c) {
        rp_up_close(u, -EPROTO, "data on an idle connection");
        return 0;
    }
    struct rp_half h = up_half(u);
    if (rp_half_data(&h, data, len) < 0)
        rp_up_close(u, -ENOBUFS, "input overflow");
    return 0;
}

static void up_on_drain(struct stream *s, void *arg)
{
    struct rp_upconn *u = arg;
    (void)s;
    if (u->c && u->c->up == u)
        rp_client_resume(u->c);
}

static const struct stream_cbs up_cbs = {
    .on_data = up_on_data,
    .on_open = up_on_open,
    .on_drain = up_on_drain,
    .on_close = up_on_close,
};

static void up_free_unopened(struct rp_upconn *u)
{
    http_reader_destroy(u->resp);
    buf_fini(&u->in);
    free(u);
}

int rp_up_connect(struct rp_pool *p, struct rp_backend *be, bool probe, struct rp_upconn **out)
{
    struct rp_server *srv = p->gen->srv;
    struct rp_upconn *u = calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    int rc = http_reader_create(&u->resp, false, 65536);
    if (rc == 0)
        rc = buf_init(&u->in, RP_UP_READ_CHUNK);
    if (rc) {
        up_free_unopened(u);
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
        .server_name =
            p->cfg->server_name ? p->cfg->server_name : addr_format_host(&be->addr, host),
        .read_chunk = RP_UP_READ_CHUNK,
        .write_cap = RP_WCAP,
        .handshake_timeout_ms = (uint32_t)p->cfg->connect_timeout_ms,
    };
    rc = stream_connect(srv->loop, &be->addr, NULL, &o, &up_cbs, u, &u->s);
    if (rc) {
        up_free_unopened(u);
        return rc;
    }
    rp_gen_ref(p->gen);
    uv_timer_init(srv->loop, &u->timer);
    u->timer.data = u;
    u->handles = 2;
    dl_add(&srv->upconns, &u->all);
    *out = u;
    return 0;
}

/* ---- upstream -> client ---- */

/* Response bytes for the client collect in the server's scratch buffer while one upstream
 * read is handled, so a head and the body bytes that came with it leave in one write. */
static struct rp_sink client_sink(struct rp_client *c)
{
    return (struct rp_sink){c->s, &c->srv->out, c->srv->m.bytes_out};
}

/* A final response head: on to the client as the route rewrites it. */
static void response_head_final(struct rp_client *c, struct rp_upconn *u, const struct http_head *h,
                                const struct http_head *rq)
{
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
    struct buf *b = &c->srv->out;
    size_t mark = b->wr;
    if (http_response_build(h, &back, b) < 0) {
        b->wr = mark;
        rp_sink_flush(&(struct rp_sink){c->s, b, c->srv->m.bytes_out});
        rp_client_upstream_failed(c, -EPROTO, "response head too large", false);
        return;
    }
    if (up101) {
        c->state = C_TUNNEL;
        u->deadline = 0;
        c->deadline = 0;
    }
}

static void on_response_head(struct rp_client *c, struct rp_upconn *u)
{
    const struct http_head *h = http_reader_head(u->resp);
    const struct http_head *rq = http_reader_head(c->req);
    u->be->fails = 0;
    u->be->down_until = 0;
    if (h->status / 100 == 1 && h->status != 101) {
        /* 100 Continue and friends go to HTTP/1.1 clients; the final response follows. */
        if (rq->minor >= 1) {
            struct rp_sink k = client_sink(c);
            rp_sink_put(&k, (const uint8_t *)"HTTP/1.1 100 Continue\r\n\r\n", 25);
        }
        return;
    }
    response_head_final(c, u, h, rq);
}

static void response_invalid(struct rp_upconn *u, struct rp_client *c)
{
    LOGW(c->srv->log, &u->be->addr, "invalid response from upstream: %s",
         http_reader_error(u->resp));
    struct rp_sink k = client_sink(c);
    rp_sink_flush(&k);
    c->up = NULL;
    u->c = NULL;
    rp_up_close(u, -EPROTO, "invalid response");
    rp_client_upstream_failed(c, -EPROTO, "invalid response", false);
}

/* After a step of the response: acts on a head or on the message's end. False when this
 * read is over for u (the rest of its bytes are not wanted). */
static bool response_events(struct rp_upconn *u, struct rp_client *c, unsigned ev, bool more)
{
    if (ev & HTTP_EV_HEAD) {
        on_response_head(c, u);
        if (u->closing || c->closing || c->up != u)
            return false;
        if (c->state == C_TUNNEL)
            return true;
    }
    if (!(ev & HTTP_EV_DONE) || !c->resp_started)
        return true;
    struct rp_sink k = client_sink(c);
    rp_sink_flush(&k);
    if (more)
        u->reusable = false; /* bytes after a response: never reuse */
    if (!c->req_done) {
        /* Early answer while the body still comes: finish now and close both. */
        c->close_after = true;
        u->reusable = false;
    }
    rp_exchange_finish(c);
    return false;
}

enum { STEP_ON, STEP_FULL, STEP_OVER };

/* One step of the response through the pipe half to the client: *used bytes taken.
 * STEP_FULL: the client has no room (its on_drain resumes us); STEP_OVER: this read is
 * over and the caller drops the rest. */
static int response_step(struct rp_upconn *u, struct rp_client *c, const uint8_t *q, size_t n,
                         size_t *used)
{
    struct rp_sink k = client_sink(c);
    struct rp_step st;
    if (c->state == C_TUNNEL) {
        enum rp_flow f = rp_pipe_copy(&k, q, n, &st);
        c->bytes_out += st.used;
        *used = st.used;
        return f == RP_FLOW_FULL ? STEP_FULL : f == RP_FLOW_GONE ? STEP_OVER : STEP_ON;
    }
    bool in_head = !c->resp_started || http_reader_idle(u->resp) || http_reader_in_head(u->resp);
    bool body = !in_head && !c->is_head;
    enum rp_flow f = rp_pipe_feed(&k, u->resp, q, n, in_head ? RP_HEAD_ROOM : 1, body, &st);
    *used = st.used;
    if (f == RP_FLOW_FULL)
        return STEP_FULL;
    if (f == RP_FLOW_BAD) {
        response_invalid(u, c);
        return STEP_OVER;
    }
    if (body)
        c->bytes_out += st.used;
    rp_lazy_set(&u->timer, &u->deadline, rp_on_up_timer, c->read_timeout_ms);
    return response_events(u, c, st.ev, st.used < n) ? STEP_ON : STEP_OVER;
}

static size_t up_consume_inner(struct rp_upconn *u, const uint8_t *p, size_t len)
{
    size_t used = 0;
    while (used < len && !u->closing) {
        struct rp_client *c = u->c;
        if (!c || c->up != u) {
            rp_up_close(u, -EPROTO, "unexpected data");
            return len;
        }
        size_t n;
        int step = response_step(u, c, p + used, len - used, &n);
        if (step == STEP_OVER)
            return len;
        used += n;
        if (step == STEP_FULL)
            return used;
    }
    if (u->c) {
        struct rp_sink k = client_sink(u->c);
        rp_sink_flush(&k);
    }
    return used;
}

/* Takes upstream bytes as far as the client allows; returns how many were used. */
static size_t up_consume(void *arg, const uint8_t *p, size_t len)
{
    struct rp_upconn *u = arg;
    struct rp_client *c = u->c;
    if (!c) {
        rp_up_close(u, -EPROTO, "data on an idle connection");
        return len;
    }
    size_t n = up_consume_inner(u, p, len);
    /* Whatever path ended the call, nothing stays in the scratch buffer. */
    if (c->srv->out.wr) {
        if (!c->closing) {
            struct rp_sink k = client_sink(c);
            rp_sink_flush(&k);
        }
        c->srv->out.wr = 0;
    }
    return n;
}

void rp_up_resume(struct rp_upconn *u)
{
    struct rp_half h = up_half(u);
    if (rp_half_resume(&h))
        stream_read_start(u->s);
}

static void up_resume_cb(void *arg)
{
    rp_up_resume(arg);
}
