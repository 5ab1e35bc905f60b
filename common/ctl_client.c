/* Control channel, the edge's end: connects to the Director over mutual TLS, says Hello,
 * hands Welcome and updates to the daemon's callbacks, sends periodic Reports, answers
 * heartbeats and reconnects with exponential backoff and jitter. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/ctl_int.h"
#include "common/daemon.h"
#include "common/stream.h"
#include "common/tls_files.h"

/* Per-side jitter source: xorshift64*, seeded per object (no global state). */
static uint32_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

enum client_state { CL_IDLE, CL_CONNECTING, CL_ESTABLISHED };

struct ctl_client {
    uv_loop_t *loop;
    struct ctl_client_opts o;
    char director_name[256];
    struct ctl_client_cbs cb;
    void *arg;
    ctl_report_fill_cb fill;
    void *fill_arg;
    void (*on_acme)(const struct ctl_msg *m, void *arg);
    void *acme_arg;

    struct stream *st;
    enum client_state state;
    bool stopping, closing_stream;
    struct ctl_framer fr;
    uv_timer_t retry, report, hb;
    int open_handles;
    uint32_t backoff_ms, heartbeat_ms;
    uint64_t attempt_start, last_rx, ping_seq, rng;
    char director_id[CTL_ID_MAX];
    char last_fail[160];             /* last reason a connection attempt failed, logged once */
    char goodbye[CTL_NOTE_MAX + 48]; /* the Director's reason for closing this connection */
    struct metric *m_connected, *m_failures, *m_reports;
};

static void client_connect(struct ctl_client *c);

static void client_maybe_free(struct ctl_client *c)
{
    if (c->stopping && c->open_handles == 0 && !c->st) {
        if (c->o.tls)
            tls_ctx_unref(c->o.tls);
        ctl_framer_fini(&c->fr);
        free(c);
    }
}

static void client_on_timer_closed(uv_handle_t *h)
{
    struct ctl_client *c = h->data;
    c->open_handles--;
    client_maybe_free(c);
}

static void client_close_stream(struct ctl_client *c, int err, const char *why)
{
    if (c->st && !c->closing_stream) {
        c->closing_stream = true;
        stream_close(c->st, err, why);
    }
}

static int client_send(struct ctl_client *c, const struct ctl_msg *m)
{
    if (!c->st || c->closing_stream)
        return -ENOTCONN;
    int rc = ctl_stream_send(c->st, m);
    if (rc < 0) {
        LOGW(c->o.log, &c->o.director, "ctl: cannot send to the Director (%s); reconnecting",
             strerror(-rc));
        client_close_stream(c, rc, "write failed");
    }
    return rc;
}

/* Sends a frame encoded beforehand, so a message that cannot be encoded (a bad string, too
 * big) fails alone instead of closing the connection as a failed write does. */
static int client_send_encoded(struct ctl_client *c, const struct ctl_msg *m)
{
    uint8_t *frame;
    ssize_t n = ctl_frame_alloc(m, &frame);
    if (n < 0)
        return (int)n;
    if (!c->st || c->closing_stream) {
        free(frame);
        return -ENOTCONN;
    }
    int rc = stream_write(c->st, frame, (size_t)n);
    free(frame);
    if (rc < 0) {
        LOGW(c->o.log, &c->o.director, "ctl: cannot send to the Director (%s); reconnecting",
             strerror(-rc));
        client_close_stream(c, rc, "write failed");
        return rc;
    }
    return 0;
}

/* An ACME message for an edge that does not manage its certificate through the Director:
 * say so at once, so the Director does not wait for an answer that never comes. */
static void client_refuse_acme(struct ctl_client *c, const struct ctl_msg *m)
{
    static const char why[] = "this edge has no acme section enabled";
    struct ctl_msg *r = calloc(1, sizeof *r);
    if (!r)
        return;
    if (m->type == CTL_MSG_CSR_REQUEST) {
        r->type = CTL_MSG_CSR;
        snprintf(r->u.csr.order_id, sizeof r->u.csr.order_id, "%s", m->u.csr_request.order_id);
        snprintf(r->u.csr.error, sizeof r->u.csr.error, "%s", why);
    } else if (m->type == CTL_MSG_CHALLENGE && !m->u.challenge.remove) {
        r->type = CTL_MSG_CHALLENGE_READY;
        snprintf(r->u.challenge_ready.token, sizeof r->u.challenge_ready.token, "%s",
                 m->u.challenge.token);
        snprintf(r->u.challenge_ready.error, sizeof r->u.challenge_ready.error, "%s", why);
    }
    if (r->type)
        client_send_encoded(c, r);
    free(r);
}

static void client_on_acme(struct ctl_client *c, const struct ctl_msg *m)
{
    if (c->on_acme) {
        c->on_acme(m, c->acme_arg);
        return;
    }
    if (m->type == CTL_MSG_WELCOME)
        return;
    LOGD(c->o.log, &c->o.director, "ctl: ACME message type %d ignored: acme not enabled",
         (int)m->type);
    client_refuse_acme(c, m);
}

static void client_send_periodic_report(struct ctl_client *c)
{
    if (c->state != CL_ESTABLISHED || !c->fill)
        return;
    struct ctl_msg *m = calloc(1, sizeof *m);
    if (!m)
        return;
    m->type = CTL_MSG_REPORT;
    c->fill(&m->u.report, c->fill_arg);
    if (client_send(c, m) == 0)
        metric_inc(c->m_reports);
    free(m);
}

static void client_on_report_timer(uv_timer_t *t)
{
    client_send_periodic_report(t->data);
}

static void client_on_hb_timer(uv_timer_t *t)
{
    struct ctl_client *c = t->data;
    uint64_t now = uv_now(c->loop);
    if (!c->st || c->closing_stream)
        return;
    if (c->state != CL_ESTABLISHED) {
        if (now - c->attempt_start > c->o.welcome_timeout_ms) {
            LOGW(c->o.log, &c->o.director, "ctl: no Welcome from the Director within %u ms",
                 c->o.welcome_timeout_ms);
            client_close_stream(c, -ETIMEDOUT, "no Welcome");
        }
        return;
    }
    if (now - c->last_rx > 3ull * c->heartbeat_ms) {
        LOGW(c->o.log, &c->o.director,
             "ctl: heartbeat timeout: the Director was silent for %llu ms; reconnecting",
             (unsigned long long)(now - c->last_rx));
        client_close_stream(c, -ETIMEDOUT, "heartbeat timeout");
        return;
    }
    struct ctl_msg m = {.type = CTL_MSG_PING, .u.seq = ++c->ping_seq};
    client_send(c, &m);
}

static void client_on_retry_timer(uv_timer_t *t)
{
    client_connect(t->data);
}

static void client_schedule_retry(struct ctl_client *c)
{
    /* "Equal jitter": half the backoff fixed, half random, so a Director restart does not
     * see every edge at once yet none waits much longer than the backoff. */
    uint32_t b = c->backoff_ms;
    uint32_t delay = b / 2 + (b / 2 ? rng_next(&c->rng) % (b / 2 + 1) : 0);
    uint32_t next = b * 2;
    c->backoff_ms = next > c->o.backoff_max_ms ? c->o.backoff_max_ms : next;
    LOGD(c->o.log, &c->o.director, "ctl: reconnecting in %u ms", delay);
    uv_timer_start(&c->retry, client_on_retry_timer, delay, 0);
}

static void client_on_welcome(struct ctl_client *c, const struct ctl_welcome *w)
{
    c->state = CL_ESTABLISHED;
    c->backoff_ms = c->o.backoff_min_ms;
    c->last_fail[0] = '\0';
    metric_set(c->m_connected, 1);
    /* Bounded whatever the Director says: no busy loop, no week-long silence. */
    c->heartbeat_ms = w->heartbeat_ms < 100     ? (w->heartbeat_ms ? 100 : 1000)
                      : w->heartbeat_ms > 60000 ? 60000
                                                : w->heartbeat_ms;
    snprintf(c->director_id, sizeof c->director_id, "%s", w->director_id);
    LOGI(c->o.log, &c->o.director, "ctl: registered with Director %s as %s/%s (%zu secrets)",
         w->director_id, ctl_role_name(c->o.hello.role), c->o.hello.instance_id, w->n_secrets);
    uv_timer_start(&c->hb, client_on_hb_timer, c->heartbeat_ms, c->heartbeat_ms);
    if (c->cb.on_connected)
        c->cb.on_connected(w->director_id, c->arg);
    for (size_t i = 0; i < w->n_secrets && !c->stopping; i++)
        if (c->cb.on_secret && w->secrets[i].kind != CTL_SECRET_UNKNOWN)
            c->cb.on_secret(&w->secrets[i], c->arg);
    if (!c->stopping) {
        client_send_periodic_report(c);
        uv_timer_start(&c->report, client_on_report_timer, c->o.report_interval_ms,
                       c->o.report_interval_ms);
    }
}

static int client_on_frame(const struct ctl_msg *m, void *arg)
{
    struct ctl_client *c = arg;
    c->last_rx = uv_now(c->loop);
    if (m->type == CTL_MSG_GOODBYE) {
        snprintf(c->goodbye, sizeof c->goodbye, "the Director closed the connection: %s",
                 m->u.reason);
        client_close_stream(c, -ECONNABORTED, c->goodbye);
        return 0;
    }
    if (c->state != CL_ESTABLISHED && m->type != CTL_MSG_WELCOME) {
        LOGW(c->o.log, &c->o.director, "ctl: message type %d from the Director before Welcome",
             (int)m->type);
        return -EPROTO;
    }
    switch (m->type) {
    case CTL_MSG_WELCOME:
        client_on_welcome(c, &m->u.welcome);
        if (!c->stopping && !c->closing_stream)
            client_on_acme(c, m);
        return 0;
    case CTL_MSG_CSR_REQUEST:
    case CTL_MSG_CERT_ISSUED:
    case CTL_MSG_CHALLENGE:
        client_on_acme(c, m);
        return 0;
    case CTL_MSG_SECRET:
        if (c->cb.on_secret && m->u.secret.kind != CTL_SECRET_UNKNOWN)
            c->cb.on_secret(&m->u.secret, c->arg);
        return 0;
    case CTL_MSG_REPORT:
        if (c->cb.on_report)
            c->cb.on_report(&m->u.report, c->arg);
        return 0;
    case CTL_MSG_REVOKE:
        if (c->cb.on_revoke)
            c->cb.on_revoke(&m->u.revoke, c->arg);
        return 0;
    case CTL_MSG_DRAIN:
        LOGI(c->o.log, &c->o.director, "ctl: the Director asks to drain within %u ms",
             m->u.drain_deadline_ms);
        if (c->cb.on_drain)
            c->cb.on_drain(m->u.drain_deadline_ms, c->arg);
        return 0;
    case CTL_MSG_PING: {
        struct ctl_msg pong = {.type = CTL_MSG_PONG, .u.seq = m->u.seq};
        client_send(c, &pong);
        return 0;
    }
    case CTL_MSG_PONG:
        return 0;
    default:
        LOGW(c->o.log, &c->o.director, "ctl: unexpected message type %d from the Director",
             (int)m->type);
        return -EPROTO;
    }
}

static int client_on_data(struct stream *s, const uint8_t *data, size_t len, void *arg)
{
    struct ctl_client *c = arg;
    int rc = ctl_framer_feed(&c->fr, data, len, client_on_frame, c, &c->closing_stream);
    if (rc == -EMSGSIZE || rc == -EBADMSG) {
        char why[160];
        ctl_framer_error_text(rc, &c->fr, why, sizeof why);
        LOGW(c->o.log, &c->o.director, "ctl: closing the connection to the Director: %s", why);
        ctl_framer_reset(&c->fr);
    }
    return c->stopping ? -ECANCELED : rc;
}

static void client_on_open(struct stream *s, void *arg)
{
    struct ctl_client *c = arg;
    c->last_rx = uv_now(c->loop);
    struct ctl_msg *m = calloc(1, sizeof *m);
    if (!m) {
        client_close_stream(c, -ENOMEM, "out of memory");
        return;
    }
    m->type = CTL_MSG_HELLO;
    m->u.hello = c->o.hello;
    client_send(c, m);
    free(m);
}

static void client_on_close(struct stream *s, int err, const char *why, void *arg)
{
    struct ctl_client *c = arg;
    bool was_established = c->state == CL_ESTABLISHED;
    c->st = NULL;
    c->closing_stream = false;
    c->state = CL_IDLE;
    metric_set(c->m_connected, 0);
    uv_timer_stop(&c->report);
    uv_timer_stop(&c->hb);
    if (c->stopping) {
        client_maybe_free(c);
        return;
    }
    char left[96];
    ctl_framer_leftover(&c->fr, left, sizeof left);
    const char *reason = c->goodbye[0] ? c->goodbye
                         : why && *why ? why
                         : err         ? strerror(-err)
                                       : "closed by the Director";
    if (was_established) {
        LOGW(c->o.log, &c->o.director, "ctl: lost the Director: %s%s%s", reason, *left ? "; " : "",
             left);
        if (c->cb.on_disconnected)
            c->cb.on_disconnected(reason, c->arg);
    } else if (strcmp(reason, c->last_fail) != 0) {
        /* Say why once (a refused certificate, a Director that is down); repeats of the
         * same failure while retrying go to debug. */
        LOGW(c->o.log, &c->o.director, "ctl: cannot reach the Director: %s (retrying)", reason);
        snprintf(c->last_fail, sizeof c->last_fail, "%s", reason);
    } else {
        LOGD(c->o.log, &c->o.director, "ctl: cannot reach the Director: %s", reason);
    }
    metric_inc(c->m_failures);
    if (!c->stopping)
        client_schedule_retry(c);
}

static void client_connect(struct ctl_client *c)
{
    static const struct stream_cbs cbs = {
        .on_data = client_on_data,
        .on_open = client_on_open,
        .on_close = client_on_close,
    };
    struct stream_opts so = {
        .tls = c->o.tls,
        .server_name = c->director_name[0] ? c->director_name : NULL,
        .handshake_timeout_ms = c->o.welcome_timeout_ms,
        .write_cap = 4 * CTL_FRAME_MAX,
    };
    if (c->stopping || c->st)
        return;
    ctl_framer_reset(&c->fr);
    c->goodbye[0] = '\0';
    c->state = CL_CONNECTING;
    c->attempt_start = uv_now(c->loop);
    int rc = stream_connect(c->loop, &c->o.director, NULL, &so, &cbs, c, &c->st);
    if (rc < 0) {
        c->st = NULL;
        c->state = CL_IDLE;
        LOGW(c->o.log, &c->o.director, "ctl: cannot connect to the Director: %s", strerror(-rc));
        client_schedule_retry(c);
        return;
    }
    /* Until the Welcome, the heartbeat timer watches the handshake's deadline. */
    uv_timer_start(&c->hb, client_on_hb_timer, 250, 250);
}

/* The options' Hello is one an edge may send and the Director will decode: 0 or -EINVAL. */
static int client_hello_check(const struct ctl_client_opts *o)
{
    if (o->hello.role == CTL_ROLE_UNKNOWN || !o->hello.instance_id[0] ||
        o->hello.n_external > CTL_ADDRS_MAX || o->hello.n_internal > CTL_ADDRS_MAX ||
        o->hello.n_subscribe > CTL_SUBSCRIBE_MAX)
        return -EINVAL;
    struct ctl_msg *hm = malloc(sizeof *hm);
    if (!hm)
        return -ENOMEM;
    hm->type = CTL_MSG_HELLO;
    hm->u.hello = o->hello;
    bool hello_ok = ctl_msg_strings_ok(hm);
    free(hm);
    if (!hello_ok) {
        LOGE(o->log, NULL, "ctl: the Hello's strings must be UTF-8 without control characters");
        return -EINVAL;
    }
    return 0;
}

/* The client's TLS context: the one given (referenced) or one built from the files. */
static int client_tls(const struct ctl_client_opts *o, struct tls_ctx **out)
{
    if (o->tls) {
        tls_ctx_ref(o->tls);
        *out = o->tls;
        return 0;
    }
    struct tls_files_config f = {(char *)o->cert_file, (char *)o->key_file, (char *)o->ca_file};
    char err[256] = "";
    int rc = tls_files_ctx(out, &f, &(struct tls_files_use){.verify_peer = true}, err, sizeof err);
    if (rc)
        LOGE(o->log, NULL, "ctl: client TLS: %s", err[0] ? err : strerror(-rc));
    return rc;
}

/* Copies the options into c (nothing that points into the caller's memory but log and
 * metrics) with the defaults of ctl.h for what is 0. */
static void client_set_opts(struct ctl_client *c, const struct ctl_client_opts *o,
                            struct tls_ctx *tls)
{
    c->o = *o;
    c->o.tls = tls;
    c->o.cert_file = c->o.key_file = c->o.ca_file = NULL;
    if (o->director_name)
        snprintf(c->director_name, sizeof c->director_name, "%s", o->director_name);
    c->o.director_name = NULL;
    if (!c->o.report_interval_ms)
        c->o.report_interval_ms = 1000;
    if (!c->o.backoff_min_ms)
        c->o.backoff_min_ms = 100;
    if (!c->o.backoff_max_ms)
        c->o.backoff_max_ms = 5000;
    if (c->o.backoff_max_ms < c->o.backoff_min_ms)
        c->o.backoff_max_ms = c->o.backoff_min_ms;
    if (!c->o.welcome_timeout_ms)
        c->o.welcome_timeout_ms = 5000;
}

static void client_init_metrics(struct ctl_client *c, struct metrics *metrics)
{
    c->m_connected =
        metrics_gauge(metrics, "ctl_connected", "1 while registered with the Director", NULL);
    c->m_failures = metrics_counter(metrics, "ctl_connection_failures_total",
                                    "control connections that failed or were lost", NULL);
    c->m_reports = metrics_counter(metrics, "ctl_reports_sent_total",
                                   "load reports sent to the Director", NULL);
}

int ctl_client_start(uv_loop_t *loop, const struct ctl_client_opts *o,
                     const struct ctl_client_cbs *cb, void *arg, struct ctl_client **out)
{
    if (!loop || !o || !out || (!o->tls && (!o->cert_file || !o->key_file || !o->ca_file)))
        return -EINVAL;
    int rc = client_hello_check(o);
    if (rc)
        return rc;
    struct tls_ctx *tls;
    rc = client_tls(o, &tls);
    if (rc)
        return rc;
    struct ctl_client *c = calloc(1, sizeof *c);
    if (!c) {
        tls_ctx_unref(tls);
        return -ENOMEM;
    }
    ctl_framer_init(&c->fr);
    c->loop = loop;
    client_set_opts(c, o, tls);
    if (cb)
        c->cb = *cb;
    c->arg = arg;
    c->backoff_ms = c->o.backoff_min_ms;
    c->heartbeat_ms = 1000;
    client_init_metrics(c, o->metrics);
    c->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)c ^ 0x9E3779B97F4A7C15ULL;
    if (!c->rng)
        c->rng = 1;
    uv_timer_t *timers[] = {&c->retry, &c->report, &c->hb};
    for (size_t i = 0; i < ARRAY_SIZE(timers); i++) {
        uv_timer_init(loop, timers[i]);
        timers[i]->data = c;
        c->open_handles++;
    }
    *out = c;
    client_connect(c);
    return 0;
}

int ctl_client_start_link(uv_loop_t *loop, const struct director_link_config *link,
                          const struct ctl_hello *hello, const struct logger *log,
                          struct metrics *metrics, const struct ctl_client_cbs *cb, void *arg,
                          struct ctl_client **out)
{
    if (!link || !hello || !out)
        return -EINVAL;
    if (!link->enabled) {
        *out = NULL;
        return 0;
    }
    struct ctl_client_opts o;
    memset(&o, 0, sizeof o);
    o.director = link->address;
    o.director_name = link->server_name;
    o.cert_file = link->tls.cert;
    o.key_file = link->tls.key;
    o.ca_file = link->tls.ca;
    o.hello = *hello;
    o.report_interval_ms =
        link->report_interval_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)link->report_interval_ms;
    o.log = log;
    o.metrics = metrics;
    if (!o.cert_file || !o.key_file || !o.ca_file) {
        LOGE(log, NULL, "ctl: director.tls needs cert, key and ca (mutual TLS)");
        return -EINVAL;
    }
    return ctl_client_start(loop, &o, cb, arg, out);
}

void ctl_client_set_report_source(struct ctl_client *c, ctl_report_fill_cb fill, void *arg)
{
    if (!c)
        return;
    c->fill = fill;
    c->fill_arg = arg;
}

int ctl_client_send_report(struct ctl_client *c, const struct ctl_report *r)
{
    if (!c || !r)
        return -EINVAL;
    if (c->state != CL_ESTABLISHED || c->stopping)
        return -ENOTCONN;
    struct ctl_msg *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->type = CTL_MSG_REPORT;
    m->u.report = *r;
    int rc = client_send(c, m);
    free(m);
    if (rc == 0)
        metric_inc(c->m_reports);
    return rc;
}

void ctl_client_set_acme_handler(struct ctl_client *c,
                                 void (*on)(const struct ctl_msg *m, void *arg), void *arg)
{
    if (!c)
        return;
    c->on_acme = on;
    c->acme_arg = arg;
}

int ctl_client_send(struct ctl_client *c, const struct ctl_msg *m)
{
    if (!c || !m)
        return -EINVAL;
    if (m->type != CTL_MSG_CERT_STATUS && m->type != CTL_MSG_CSR &&
        m->type != CTL_MSG_CHALLENGE_READY)
        return -EINVAL;
    if (c->state != CL_ESTABLISHED || c->stopping)
        return -ENOTCONN;
    return client_send_encoded(c, m);
}

void ctl_client_set_tls(struct ctl_client *c, struct tls_ctx *tls)
{
    if (!c || !tls || c->stopping)
        return;
    tls_ctx_ref(tls);
    tls_ctx_unref(c->o.tls);
    c->o.tls = tls;
}

int ctl_client_reload_link(struct ctl_client *c, const struct director_link_config *link, char *err,
                           size_t errcap)
{
    if (!c || !link->enabled)
        return 0;
    struct tls_ctx *tls;
    int rc =
        tls_files_ctx(&tls, &link->tls, &(struct tls_files_use){.verify_peer = true}, err, errcap);
    if (rc)
        return rc;
    ctl_client_set_tls(c, tls);
    tls_ctx_unref(tls);
    return 0;
}

bool ctl_client_connected(const struct ctl_client *c)
{
    return c && c->state == CL_ESTABLISHED;
}

void ctl_client_stop(struct ctl_client *c)
{
    if (!c || c->stopping)
        return;
    c->stopping = true;
    uv_handle_t *hs[] = {(uv_handle_t *)&c->retry, (uv_handle_t *)&c->report,
                         (uv_handle_t *)&c->hb};
    for (size_t i = 0; i < ARRAY_SIZE(hs); i++)
        uv_close(hs[i], client_on_timer_closed);
    client_close_stream(c, 0, "stopping");
}
