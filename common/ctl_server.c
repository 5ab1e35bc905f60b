/* Control channel, the Director's end: accepts edges over mutual TLS, refuses bad or
 * duplicate Hellos with a Goodbye, relays each Report to the edges that subscribe to its
 * role, pushes SecretUpdate/Revoke/Drain, and drops peers silent for three heartbeats. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/certname.h"
#include "common/ctl_int.h"
#include "common/stream.h"

struct ctl_peer {
    struct ctl_server *srv;
    struct stream *st;
    struct ctl_peer *next, *prev;
    struct addr addr;
    struct ctl_framer fr;
    struct ctl_hello hello;
    bool opened, said_hello;
    bool closing;       /* no more frames in or out */
    bool stream_closed; /* stream_close called; on_close follows */
    int close_err;
    char close_why[160];
    char cert_name[128];
    uint64_t accepted_at, last_rx, ping_seq, goodbye_at;
};

/* How long a peer that got a Goodbye has to close its side before we cut it off. */
#define CTL_GOODBYE_GRACE_MS 1000

struct ctl_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t hb;
    struct ctl_server_cbs cb;
    void *arg;
    struct tls_ctx *tls;
    const struct logger *log;
    uint32_t heartbeat_ms;
    char director_id[CTL_ID_MAX];
    struct ctl_peer *peers;
    size_t npeers, nhello, max_peers;
    uint64_t last_reject_log;
    struct metric *m_refused_tls, *m_refused_frame, *m_refused_hello, *m_refused_overload;
    struct metric *m_hb_timeouts;
    int open_handles;
    bool stopping;
};

static void server_maybe_free(struct ctl_server *s)
{
    if (s->stopping && s->open_handles == 0 && !s->peers) {
        tls_ctx_unref(s->tls);
        free(s);
    }
}

static void server_on_handle_closed(uv_handle_t *h)
{
    struct ctl_server *s = h->data;
    s->open_handles--;
    server_maybe_free(s);
}

/* Closes p now, with a reason that on_close will log (the first reason wins). */
static void peer_close(struct ctl_peer *p, int err, const char *why)
{
    if (p->stream_closed)
        return;
    if (!p->closing) {
        p->closing = true;
        p->close_err = err;
        snprintf(p->close_why, sizeof p->close_why, "%s", why);
    }
    p->stream_closed = true;
    stream_close(p->st, p->close_err, p->close_why);
}

/* Tells p why we close (a Goodbye), then half-closes so the edge reads it before EOF;
 * the heartbeat timer cuts the connection if the edge does not close within the grace. */
static void peer_goodbye(struct ctl_peer *p, int err, const char *why)
{
    if (p->closing)
        return;
    if (!p->opened) {
        peer_close(p, err, why);
        return;
    }
    struct ctl_msg m = {.type = CTL_MSG_GOODBYE};
    snprintf(m.u.reason, sizeof m.u.reason, "%s", why);
    p->closing = true;
    p->close_err = err;
    snprintf(p->close_why, sizeof p->close_why, "%s", why);
    p->goodbye_at = uv_now(p->srv->loop);
    if (ctl_stream_send(p->st, &m) < 0) {
        peer_close(p, err, why);
        return;
    }
    stream_shutdown(p->st);
}

static int peer_send(struct ctl_peer *p, const struct ctl_msg *m)
{
    if (!p || p->closing)
        return -ENOTCONN;
    int rc = ctl_stream_send(p->st, m);
    if (rc < 0)
        peer_close(p, rc, rc == -ENOBUFS ? "write queue full (edge not reading)" : "write failed");
    return rc;
}

static int peer_send_frame(struct ctl_peer *p, const uint8_t *frame, size_t len)
{
    if (p->closing)
        return -ENOTCONN;
    int rc = stream_write(p->st, frame, len);
    if (rc < 0) {
        peer_close(p, rc, rc == -ENOBUFS ? "write queue full (edge not reading)" : "write failed");
        return rc;
    }
    return 0;
}

static struct ctl_peer *server_find(struct ctl_server *s, enum ctl_role role, const char *id,
                                    const struct ctl_peer *except)
{
    for (struct ctl_peer *p = s->peers; p; p = p->next)
        if (p != except && p->said_hello && !p->closing && p->hello.role == role &&
            strcmp(p->hello.instance_id, id) == 0)
            return p;
    return NULL;
}

static int peer_on_hello(struct ctl_peer *p, const struct ctl_hello *h)
{
    struct ctl_server *s = p->srv;
    if (h->role == CTL_ROLE_UNKNOWN || h->role == CTL_ROLE_DIRECTOR || !h->instance_id[0]) {
        LOGW(s->log, &p->addr, "ctl: refusing Hello with role %s and instance \"%s\"",
             ctl_role_name(h->role), h->instance_id);
        metric_inc(s->m_refused_hello);
        peer_goodbye(p, -EPROTO, "invalid Hello: an edge role and an instance id are required");
        return -EPROTO;
    }
    /* Two live connections for one instance are a misconfiguration (or an impostor): keep
     * the first. An edge that restarted gets in once its old connection is gone (at once
     * when the old process closed it, else after three silent heartbeats), so replacing
     * the old one would only make two edges with the same id take turns kicking each
     * other out. */
    struct ctl_peer *old = server_find(s, h->role, h->instance_id, p);
    if (old) {
        char a[ADDR_STRLEN], why[160];
        snprintf(why, sizeof why, "%s/%s is already connected from %s", ctl_role_name(h->role),
                 h->instance_id, addr_format(&old->addr, a));
        LOGW(s->log, &p->addr, "ctl: refusing Hello: %s", why);
        metric_inc(s->m_refused_hello);
        peer_goodbye(p, -EEXIST, why);
        return -EEXIST;
    }
    p->hello = *h;
    struct ctl_msg *m = calloc(1, sizeof *m);
    if (!m) {
        peer_close(p, -ENOMEM, "out of memory");
        return -ENOMEM;
    }
    m->type = CTL_MSG_WELCOME;
    int n =
        s->cb.on_hello ? s->cb.on_hello(p, h, m->u.welcome.secrets, CTL_SECRETS_MAX, s->arg) : 0;
    if (n < 0) {
        LOGW(s->log, &p->addr, "ctl: %s/%s refused: %s", ctl_role_name(h->role), h->instance_id,
             strerror(-n));
        free(m);
        char why[96];
        snprintf(why, sizeof why, "refused by the Director: %s", strerror(-n));
        metric_inc(s->m_refused_hello);
        peer_goodbye(p, n, why);
        return n;
    }
    p->said_hello = true;
    s->nhello++;
    m->u.welcome.n_secrets = (size_t)n > CTL_SECRETS_MAX ? CTL_SECRETS_MAX : (size_t)n;
    snprintf(m->u.welcome.director_id, sizeof m->u.welcome.director_id, "%s", s->director_id);
    m->u.welcome.heartbeat_ms = s->heartbeat_ms;
    LOGI(s->log, &p->addr, "ctl: edge registered: %s/%s version %s (certificate \"%s\")",
         ctl_role_name(h->role), h->instance_id, h->version[0] ? h->version : "?", p->cert_name);
    int rc = peer_send(p, m);
    free(m);
    return rc;
}

static bool peer_subscribes(const struct ctl_peer *p, enum ctl_role r)
{
    for (size_t i = 0; i < p->hello.n_subscribe; i++)
        if (p->hello.subscribe[i] == r)
            return true;
    return false;
}

static void peer_on_report(struct ctl_peer *p, const struct ctl_report *in)
{
    struct ctl_server *s = p->srv;
    struct ctl_msg *m = malloc(sizeof *m);
    if (!m)
        return;
    m->type = CTL_MSG_REPORT;
    m->u.report = *in;
    /* The Director, not the edge, says who sent it: an edge cannot speak for another. */
    m->u.report.role = p->hello.role;
    snprintf(m->u.report.instance_id, sizeof m->u.report.instance_id, "%s", p->hello.instance_id);
    memcpy(m->u.report.external_addrs, p->hello.external_addrs, sizeof p->hello.external_addrs);
    m->u.report.n_external = p->hello.n_external;
    memcpy(m->u.report.internal_addrs, p->hello.internal_addrs, sizeof p->hello.internal_addrs);
    m->u.report.n_internal = p->hello.n_internal;
    uint8_t *frame = NULL;
    ssize_t n = -1;
    for (struct ctl_peer *q = s->peers; q; q = q->next) {
        if (q == p || !q->said_hello || q->closing || !peer_subscribes(q, p->hello.role))
            continue;
        if (!frame && (n = ctl_frame_alloc(m, &frame)) < 0)
            break;
        peer_send_frame(q, frame, (size_t)n);
    }
    free(frame);
    if (s->cb.on_report)
        s->cb.on_report(p, &m->u.report, s->arg);
    free(m);
}

static int peer_on_frame(const struct ctl_msg *m, void *arg)
{
    struct ctl_peer *p = arg;
    struct ctl_server *s = p->srv;
    p->last_rx = uv_now(s->loop);
    if (!p->said_hello && m->type != CTL_MSG_HELLO) {
        LOGW(s->log, &p->addr, "ctl: closing: message type %d before Hello", (int)m->type);
        peer_goodbye(p, -EPROTO, "protocol error: a message before Hello");
        return 0;
    }
    switch (m->type) {
    case CTL_MSG_HELLO:
        if (p->said_hello) {
            LOGW(s->log, &p->addr, "ctl: closing: second Hello from %s/%s",
                 ctl_role_name(p->hello.role), p->hello.instance_id);
            peer_goodbye(p, -EPROTO, "protocol error: a second Hello");
            return 0;
        }
        peer_on_hello(p, &m->u.hello);
        return 0;
    case CTL_MSG_REPORT:
        peer_on_report(p, &m->u.report);
        return 0;
    case CTL_MSG_CERT_STATUS:
    case CTL_MSG_CSR:
    case CTL_MSG_CHALLENGE_READY:
        if (s->cb.on_acme)
            s->cb.on_acme(p, m, s->arg);
        return 0;
    case CTL_MSG_PING: {
        struct ctl_msg pong = {.type = CTL_MSG_PONG, .u.seq = m->u.seq};
        peer_send(p, &pong);
        return 0;
    }
    case CTL_MSG_PONG:
        return 0;
    default:
        LOGW(s->log, &p->addr, "ctl: closing: an edge may not send message type %d", (int)m->type);
        peer_goodbye(p, -EPROTO, "protocol error: a message an edge may not send");
        return 0;
    }
}

static int peer_on_data(struct stream *st, const uint8_t *data, size_t len, void *arg)
{
    struct ctl_peer *p = arg;
    int rc = ctl_framer_feed(&p->fr, data, len, peer_on_frame, p, &p->closing);
    if (rc < 0) {
        char why[160];
        ctl_framer_error_text(rc, &p->fr, why, sizeof why);
        if (p->said_hello)
            LOGW(p->srv->log, &p->addr, "ctl: closing control connection of %s/%s: %s",
                 ctl_role_name(p->hello.role), p->hello.instance_id, why);
        else
            LOGW(p->srv->log, &p->addr, "ctl: closing control connection: %s", why);
        ctl_framer_reset(&p->fr);
        metric_inc(p->srv->m_refused_frame);
        peer_goodbye(p, rc, why);
    }
    return 0;
}

static void peer_on_open(struct stream *st, void *arg)
{
    struct ctl_peer *p = arg;
    struct tls_conn *t = stream_tls(st);
    p->opened = true;
    p->last_rx = uv_now(p->srv->loop);
    if (t) {
        const char *cn = tls_conn_peer_cn(t);
        snprintf(p->cert_name, sizeof p->cert_name, "%s", cn ? cn : "");
        if (!tls_conn_peer_verified(t)) {
            /* The TLS context should already have refused it; never trust an unverified peer. */
            LOGW(p->srv->log, &p->addr,
                 "ctl: refused control connection: the peer's certificate is not signed by our CA");
            peer_close(p, -EACCES, "unverified certificate");
            return;
        }
    }
    LOGD(p->srv->log, &p->addr, "ctl: TLS up (certificate \"%s\")", p->cert_name);
}

static void peer_on_close(struct stream *st, int err, const char *why, void *arg)
{
    struct ctl_peer *p = arg;
    struct ctl_server *s = p->srv;
    if (p->prev)
        p->prev->next = p->next;
    else
        s->peers = p->next;
    if (p->next)
        p->next->prev = p->prev;
    s->npeers--;
    if (p->said_hello)
        s->nhello--;
    const char *reason = p->close_why[0] ? p->close_why
                         : why && *why   ? why
                         : err           ? strerror(-err)
                                         : "closed by the edge";
    if (!s->stopping) {
        char left[96];
        ctl_framer_leftover(&p->fr, left, sizeof left);
        if (!p->opened && err == 0) {
            LOGI(s->log, &p->addr, "ctl: connection closed before the TLS handshake finished");
        } else if (!p->opened) {
            metric_inc(s->m_refused_tls);
            LOGW(s->log, &p->addr, "ctl: refused control connection: TLS handshake failed: %s",
                 reason);
        } else if (p->said_hello) {
            LOGI(s->log, &p->addr, "ctl: edge gone: %s/%s: %s%s%s", ctl_role_name(p->hello.role),
                 p->hello.instance_id, reason, *left ? "; " : "", left);
            if (s->cb.on_gone)
                s->cb.on_gone(p, reason, s->arg);
        } else {
            LOGI(s->log, &p->addr, "ctl: control connection closed before Hello: %s%s%s", reason,
                 *left ? "; " : "", left);
        }
    }
    ctl_framer_fini(&p->fr);
    free(p);
    server_maybe_free(s);
}

static void server_on_rejected_closed(uv_handle_t *h)
{
    free(h);
}

/* Accepts and closes at once: libuv stops watching a listener whose connection is not
 * taken. Logged at most once a second, as this is what a connection flood looks like. */
static void server_reject(struct ctl_server *s, uv_stream_t *l, const char *why)
{
    uv_tcp_t *t = malloc(sizeof *t);
    if (t) {
        uv_tcp_init(s->loop, t);
        uv_accept(l, (uv_stream_t *)t);
        uv_close((uv_handle_t *)t, server_on_rejected_closed);
    }
    uint64_t now = uv_now(s->loop);
    metric_inc(s->m_refused_overload);
    if (now - s->last_reject_log >= 1000 || !s->last_reject_log) {
        s->last_reject_log = now;
        LOGW(s->log, NULL, "ctl: refusing a control connection: %s (%zu open)", why, s->npeers);
    }
}

static void server_on_conn(uv_stream_t *l, int status)
{
    static const struct stream_cbs cbs = {
        .on_data = peer_on_data,
        .on_open = peer_on_open,
        .on_close = peer_on_close,
    };
    struct ctl_server *s = l->data;
    if (status < 0) {
        LOGW(s->log, NULL, "ctl: accept failed: %s", uv_strerror(status));
        return;
    }
    struct ctl_peer *p = NULL;
    if (s->npeers >= s->max_peers || !(p = calloc(1, sizeof *p))) {
        server_reject(s, l, p ? "out of memory" : "too many control connections");
        return;
    }
    ctl_framer_init(&p->fr);
    p->srv = s;
    struct stream_opts so = {
        .tls = s->tls,
        .handshake_timeout_ms = 5000,
        .write_cap = 4 * CTL_FRAME_MAX,
    };
    int rc = stream_accept(l, &so, &cbs, p, &p->st);
    if (rc < 0) {
        LOGW(s->log, NULL, "ctl: accept failed: %s", strerror(-rc));
        ctl_framer_fini(&p->fr);
        free(p);
        return;
    }
    p->addr = *stream_peer(p->st);
    p->accepted_at = p->last_rx = uv_now(s->loop);
    p->next = s->peers;
    if (s->peers)
        s->peers->prev = p;
    s->peers = p;
    s->npeers++;
}

static void server_on_hb(uv_timer_t *t)
{
    struct ctl_server *s = t->data;
    uint64_t now = uv_now(s->loop);
    uint64_t limit = 3ull * s->heartbeat_ms;
    for (struct ctl_peer *p = s->peers; p; p = p->next) {
        if (p->closing) {
            if (!p->stream_closed && now - p->goodbye_at > CTL_GOODBYE_GRACE_MS)
                peer_close(p, p->close_err, p->close_why);
            continue;
        }
        if (!p->opened)
            continue;
        if (now - p->last_rx > limit) {
            char why[96];
            snprintf(why, sizeof why, "heartbeat timeout: silent for %llu ms",
                     (unsigned long long)(now - p->last_rx));
            metric_inc(s->m_hb_timeouts);
            peer_close(p, -ETIMEDOUT, p->said_hello ? why : "no Hello in time");
            continue;
        }
        if (p->said_hello) {
            struct ctl_msg m = {.type = CTL_MSG_PING, .u.seq = ++p->ping_seq};
            peer_send(p, &m);
        }
    }
}

int ctl_server_start(uv_loop_t *loop, const struct ctl_server_opts *o,
                     const struct ctl_server_cbs *cb, void *arg, struct ctl_server **out)
{
    if (!loop || !o || !o->tls || !out)
        return -EINVAL;
    struct ctl_server *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    if (cb)
        s->cb = *cb;
    s->arg = arg;
    s->log = o->log;
    s->heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : 1000;
    s->max_peers = o->max_peers ? o->max_peers : 1024;
    static const char *const help = "control connections refused, by reason";
    s->m_refused_tls = metrics_counter(o->metrics, "ctl_refused_total", help, "reason=\"tls\"");
    s->m_refused_frame = metrics_counter(o->metrics, "ctl_refused_total", help, "reason=\"frame\"");
    s->m_refused_hello = metrics_counter(o->metrics, "ctl_refused_total", help, "reason=\"hello\"");
    s->m_refused_overload =
        metrics_counter(o->metrics, "ctl_refused_total", help, "reason=\"overload\"");
    s->m_hb_timeouts = metrics_counter(o->metrics, "ctl_heartbeat_timeouts_total",
                                       "peers dropped after three silent heartbeats", NULL);
    snprintf(s->director_id, sizeof s->director_id, "%s", o->director_id ? o->director_id : "");
    s->tls = o->tls;
    tls_ctx_ref(s->tls);
    int rc = stream_listen(loop, &s->listener, &o->listen, 128, false, server_on_conn);
    if (rc < 0) {
        char a[ADDR_STRLEN];
        LOGE(o->log, NULL, "ctl: cannot listen on %s: %s", addr_format(&o->listen, a),
             uv_strerror(rc));
        s->stopping = true;
        if (uv_is_closing((uv_handle_t *)&s->listener)) {
            /* stream_listen got as far as libuv and closed the handle itself (with no
             * callback): s must outlive that close, so free it from the close callback. */
            s->listener.data = s;
            s->listener.close_cb = server_on_handle_closed;
            s->open_handles = 1;
        } else {
            server_maybe_free(s);
        }
        return rc;
    }
    s->listener.data = s;
    uv_timer_init(loop, &s->hb);
    s->hb.data = s;
    s->open_handles = 2;
    uv_timer_start(&s->hb, server_on_hb, s->heartbeat_ms, s->heartbeat_ms);
    *out = s;
    return 0;
}

void ctl_server_stop(struct ctl_server *s)
{
    if (!s || s->stopping)
        return;
    s->stopping = true;
    uv_close((uv_handle_t *)&s->listener, server_on_handle_closed);
    uv_close((uv_handle_t *)&s->hb, server_on_handle_closed);
    struct ctl_msg bye = {.type = CTL_MSG_GOODBYE, .u.reason = "the Director is stopping"};
    for (struct ctl_peer *p = s->peers; p; p = p->next) {
        /* Best effort: stream_close gives queued bytes one non-blocking write. */
        if (p->opened && !p->closing)
            ctl_stream_send(p->st, &bye);
        peer_close(p, 0, "Director stopping");
    }
}

void ctl_server_set_tls(struct ctl_server *s, struct tls_ctx *tls)
{
    if (!s || !tls || s->stopping)
        return;
    tls_ctx_ref(tls);
    tls_ctx_unref(s->tls);
    s->tls = tls;
}

int ctl_server_local_addr(const struct ctl_server *s, struct addr *out)
{
    if (!s || !out)
        return -EINVAL;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    int rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
    return rc < 0 ? rc : addr_from_sockaddr(out, (struct sockaddr *)&ss);
}

size_t ctl_server_peer_count(const struct ctl_server *s)
{
    return s ? s->nhello : 0;
}

void ctl_server_foreach(struct ctl_server *s, void (*fn)(struct ctl_peer *p, void *arg), void *arg)
{
    if (!s || !fn)
        return;
    for (struct ctl_peer *p = s->peers; p; p = p->next)
        if (p->said_hello && !p->closing)
            fn(p, arg);
}

const struct ctl_hello *ctl_peer_hello(const struct ctl_peer *p)
{
    return &p->hello;
}

const struct addr *ctl_peer_addr(const struct ctl_peer *p)
{
    return &p->addr;
}

const char *ctl_peer_cert_name(const struct ctl_peer *p)
{
    return p->cert_name;
}

static bool name_matches(const char *have, const char *want)
{
    return have &&
           cert_name_match(have, strlen(have), want, strlen(want), CERT_NAME_LEADING_LABELS);
}

bool ctl_peer_cert_names(const struct ctl_peer *p, const char *name)
{
    if (!p || !name || !*name || p->stream_closed)
        return false;
    struct tls_conn *t = stream_tls(p->st);
    if (!t || !tls_conn_peer_verified(t))
        return false;
    if (name_matches(tls_conn_peer_cn(t), name))
        return true;
    for (size_t i = 0; i < 64; i++) {
        const char *san = tls_conn_peer_san(t, i);
        if (!san)
            break;
        if (name_matches(san, name))
            return true;
    }
    return false;
}

int ctl_peer_send_secret(struct ctl_peer *p, const struct ctl_secret *sec)
{
    if (!p || !sec)
        return -EINVAL;
    struct ctl_msg *m = malloc(sizeof *m);
    if (!m)
        return -ENOMEM;
    m->type = CTL_MSG_SECRET;
    m->u.secret = *sec;
    int rc = peer_send(p, m);
    free(m);
    return rc;
}

int ctl_peer_send_revoke(struct ctl_peer *p, const struct ctl_revoke *r)
{
    if (!p || !r)
        return -EINVAL;
    struct ctl_msg *m = malloc(sizeof *m);
    if (!m)
        return -ENOMEM;
    m->type = CTL_MSG_REVOKE;
    m->u.revoke = *r;
    int rc = peer_send(p, m);
    free(m);
    return rc;
}

int ctl_peer_send_report(struct ctl_peer *p, const struct ctl_report *r)
{
    if (!p || !r)
        return -EINVAL;
    struct ctl_msg *m = malloc(sizeof *m);
    if (!m)
        return -ENOMEM;
    m->type = CTL_MSG_REPORT;
    m->u.report = *r;
    int rc = peer_send(p, m);
    free(m);
    return rc;
}

int ctl_peer_send_drain(struct ctl_peer *p, uint32_t deadline_ms)
{
    if (!p)
        return -EINVAL;
    struct ctl_msg m = {.type = CTL_MSG_DRAIN, .u.drain_deadline_ms = deadline_ms};
    return peer_send(p, &m);
}

int ctl_peer_send(struct ctl_peer *p, const struct ctl_msg *m)
{
    if (!p || !m)
        return -EINVAL;
    if (m->type != CTL_MSG_CSR_REQUEST && m->type != CTL_MSG_CERT_ISSUED &&
        m->type != CTL_MSG_CHALLENGE)
        return -EINVAL;
    /* Encoded first: a message that cannot be (a bad string) fails alone and leaves the
     * connection up, as a failed write would not. */
    uint8_t *frame;
    ssize_t n = ctl_frame_alloc(m, &frame);
    if (n < 0)
        return (int)n;
    int rc = peer_send_frame(p, frame, (size_t)n);
    free(frame);
    return rc;
}

void ctl_peer_close(struct ctl_peer *p, const char *why)
{
    if (p)
        peer_goodbye(p, -ECONNABORTED, why ? why : "closed by the Director");
}
