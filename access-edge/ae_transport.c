/* The access edge's transports: the connection table, sending, UDP sockets, TCP/TLS and
 * WebSocket connections (accept, connect, framing, message reassembly). */
#include "access-edge/ae_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "access-edge/ae_dns.h"
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

/* Metric labels for each rejection reason (fixed set: bounded cardinality). */
const char *const ae_reject_reasons[] = {
    "too_large",
    "too_many_headers",
    "line_too_long",
    "missing_header",
    "duplicate_header",
    "content_length",
    "method",
    "cseq",
    "max_forwards",
    "uri_scheme",
    "relay",
    "from_domain",
    "loop",
    "no_target",
    "rate_limited",
    "overload",
    "no_flow",
    "blocked",
    "unroutable",
    "watchlist",
    "tampered",
    "route",
    "fd_limit",
    "malformed",
    "version",
    "extension",
    "next_hop_down",
    NULL,
};
_Static_assert(ARRAY_SIZE(ae_reject_reasons) == AE_REJECT_REASONS, "AE_REJECT_REASONS");

void ae_count_reject(struct ae *ae, const char *reason)
{
    for (size_t i = 0; ae_reject_reasons[i]; i++)
        if (strcmp(ae_reject_reasons[i], reason) == 0) {
            metric_inc(ae->m_reject[i]);
            return;
        }
}

/* ---- connection table ---- */

struct ae_conn *ae_conn_get(struct ae *ae, uint32_t id)
{
    if (id == 0)
        return NULL;
    struct ae_conn *c = ae->conns[id & (ae->conn_cap - 1)];
    return (c && c->id == id) ? c : NULL;
}

static int conn_register(struct ae *ae, struct ae_conn *c)
{
    if (ae->nconns >= ae->cfg->limits.max_connections)
        return -EMFILE;
    for (size_t i = 0; i < ae->conn_cap; i++) {
        uint32_t id = ++ae->next_id;
        if (id == 0)
            id = ++ae->next_id;
        size_t k = id & (ae->conn_cap - 1);
        if (!ae->conns[k]) {
            c->id = id;
            ae->conns[k] = c;
            ae->nconns++;
            metric_set(ae->m_conns, (int64_t)ae->nconns);
            return 0;
        }
    }
    return -EMFILE;
}

static void conn_unregister(struct ae *ae, struct ae_conn *c)
{
    size_t k = c->id & (ae->conn_cap - 1);
    if (ae->conns[k] == c) {
        ae->conns[k] = NULL;
        ae->nconns--;
        metric_set(ae->m_conns, (int64_t)ae->nconns);
    }
    for (size_t i = 0; i < ae->ndirs; i++)
        if (ae->dirs[i].conn == c->id) {
            ae->dirs[i].conn = 0;
            if (!c->open) /* never connected: down now, not at the next check */
                ae_director_down(ae, i, "connect failed");
        }
}

static size_t conns_from(struct ae *ae, const struct addr *a)
{
    size_t n = 0;
    for (size_t i = 0; i < ae->conn_cap; i++)
        if (ae->conns[i] && !ae->conns[i]->outbound && addr_host_eq(&ae->conns[i]->peer, a))
            n++;
    return n;
}

/* ---- sending ---- */

static struct ae_udp *udp_for(struct ae *ae, uint8_t side, int family)
{
    struct ae_udp *any = NULL;
    for (size_t i = 0; i < ae->nudp; i++) {
        if (ae->udp[i].side != side)
            continue;
        if (addr_family(&ae->udp[i].local) == family)
            return &ae->udp[i];
        if (!any)
            any = &ae->udp[i];
    }
    return any;
}

int ae_conn_send(struct ae_conn *c, const uint8_t *p, size_t n)
{
    if (c->ws) {
        /* One SIP message per WebSocket message, as text (RFC 7118 §5). */
        uint8_t h[10];
        size_t hl = sip_ws_header(SIP_WS_TEXT, n, h);
        int r = stream_write(c->s, h, hl);
        if (r < 0)
            return r;
    }
    int rc = stream_write(c->s, p, n);
    if (rc == -ENOBUFS) {
        /* The peer does not read: shed this message, keep the connection (a slow
         * client must not take the edge's memory). */
        metric_inc(c->ae->m_dropped);
        return rc;
    }
    return rc;
}

/* Sends to a destination: a UDP address from the side's socket, or a stream connection
 * (opened on demand for the Director and static targets). */
int ae_send(struct ae *ae, struct ae_dest *d, const uint8_t *p, size_t n)
{
    metric_inc(ae->m_out[d->side]);
    if (d->tp == AE_TP_UDP) {
        struct ae_udp *u = udp_for(ae, d->side, addr_family(&d->addr));
        return u ? ae_udp_send(u, &d->addr, p, n) : -ENETUNREACH;
    }
    struct ae_conn *c = ae_conn_get(ae, d->conn_id);
    if (!c) {
        if (d->conn_id)
            return -ENOTCONN; /* the flow is gone */
        int rc = ae_connect(ae, d->side, d->tp, &d->addr, NULL, &c);
        if (rc < 0)
            return rc;
        d->conn_id = c->id;
    }
    return ae_conn_send(c, p, n);
}

/* The address this side advertises for a transport (Via sent-by, Record-Route). */
const struct addr *ae_side_addr(const struct ae *ae, uint8_t side, uint8_t tp)
{
    const struct ae_side_config *s = side == AE_EXT ? &ae->cfg->external : &ae->cfg->internal;
    if (tp == AE_TP_UDP && s->nudp)
        return &s->udp[0];
    if (tp == AE_TP_TCP && s->ntcp)
        return &s->tcp[0];
    if (tp == AE_TP_TLS && side == AE_INT && s->nmtls)
        return &s->mtls[0];
    if (tp == AE_TP_TLS && s->ntls)
        return &s->tls[0];
    if (tp == AE_TP_TLS && s->nmtls)
        return &s->mtls[0];
    if (s->nudp)
        return &s->udp[0];
    return s->ntcp ? &s->tcp[0] : NULL;
}

const char *ae_tp_name(uint8_t tp)
{
    return tp == AE_TP_UDP ? "UDP" : tp == AE_TP_TCP ? "TCP" : "TLS";
}

/* ---- UDP ---- */

void ae_udp_input(struct ae_udp *u, const struct sockaddr *from, const uint8_t *p, size_t len)
{
    struct ae *ae = u->ae;
    struct addr peer;
    if (addr_from_sockaddr(&peer, from) < 0)
        return;
    /* A keep-alive (RFC 5626 §4.4.1 uses STUN on UDP; CRLF is common): ignore it. */
    size_t k = 0;
    while (k < len && (p[k] == '\r' || p[k] == '\n'))
        k++;
    if (k == len)
        return;
    size_t cap =
        u->side == AE_EXT ? ae->cfg->limits.max_client_message : ae->cfg->limits.max_server_message;
    ssize_t r = sip_msg_scan(&ae->msg, p + k, len - k, true, cap);
    struct ae_origin o = {u->side, AE_TP_UDP, u, NULL, &peer};
    if (r < 0) {
        metric_inc(ae->m_unparseable);
        if (ae_noise_ok(ae))
            LOGI(ae->log, &peer, "sip: unparseable datagram (%zu bytes) dropped", len);
        return;
    }
    ae_handle(ae, &o, &ae->msg);
}

/* ---- streams ---- */

/* WebSocket connections: the upgrade, then one SIP message per data frame. */
static int on_ws_data(struct ae_conn *c)
{
    struct ae *ae = c->ae;
    size_t cap = ae->cfg->limits.max_client_message;
    for (int guard = 0; guard < 1024 && buf_len(&c->rb) > 0; guard++) {
        uint8_t *p = c->rb.data + c->rb.rd;
        size_t len = buf_len(&c->rb);
        if (!c->ws_open) {
            char resp[512];
            size_t rl = 0;
            bool ok = false;
            ssize_t n = sip_ws_handshake(p, len, resp, sizeof(resp), &rl, &ok);
            if (n == -EAGAIN)
                return 0;
            if (n < 0) {
                LOGI(ae->log, &c->peer, "sip: not a WebSocket upgrade, closing");
                return -EBADMSG;
            }
            stream_write(c->s, resp, rl);
            buf_consume(&c->rb, (size_t)n);
            if (!ok) {
                LOGI(ae->log, &c->peer, "sip: WebSocket upgrade refused");
                stream_shutdown(c->s);
                return 0;
            }
            c->ws_open = true;
            continue;
        }
        struct sip_ws_frame f;
        ssize_t n = sip_ws_decode(p, len, cap, &f);
        if (n == -EAGAIN)
            return 0;
        if (n < 0) {
            metric_inc(ae->m_unparseable);
            LOGI(ae->log, &c->peer, "sip: bad WebSocket frame, closing");
            return (int)n;
        }
        int rc = 0;
        if (f.op == SIP_WS_PING) {
            uint8_t h[10];
            size_t hl = sip_ws_header(SIP_WS_PONG, f.len, h);
            stream_write(c->s, h, hl);
            stream_write(c->s, f.payload, f.len);
        } else if (f.op == SIP_WS_CLOSE) {
            uint8_t h[10];
            size_t hl = sip_ws_header(SIP_WS_CLOSE, 0, h);
            stream_write(c->s, h, hl);
            stream_shutdown(c->s);
        } else if ((f.op == SIP_WS_TEXT || f.op == SIP_WS_BINARY) && f.fin) {
            ssize_t r = sip_msg_scan(&ae->msg, f.payload, f.len, true, cap);
            if (r < 0) {
                metric_inc(ae->m_unparseable);
                LOGI(ae->log, &c->peer, "sip: unparseable WebSocket message, closing");
                return -EBADMSG;
            }
            struct ae_origin o = {c->side, c->tp, NULL, c, &c->peer};
            rc = ae_handle(ae, &o, &ae->msg);
        } else if (f.op != SIP_WS_PONG) {
            /* Fragmented SIP messages are not expected from SIP clients (RFC 7118 §5). */
            LOGI(ae->log, &c->peer, "sip: fragmented WebSocket message, closing");
            return -EBADMSG;
        }
        buf_consume(&c->rb, (size_t)n);
        if (rc < 0)
            return rc;
        if (!ae_conn_get(ae, c->id))
            break;
    }
    return 0;
}

/* A stream message the edge will not take (too large, or its length unusable): answer it
 * when its header section was indexed, then half-close; what else arrives is ignored, and
 * the sweep closes the connection if the peer does not (RFC 3261 §18.3: the stream cannot
 * be framed past it). */
static void conn_refuse(struct ae_conn *c, const struct sip_verdict *v)
{
    struct ae *ae = c->ae;
    struct ae_origin o = {c->side, c->tp, NULL, c, &c->peer};
    if (ae->msg.hdr_end && ae->msg.is_request && ae->msg.count[SIP_H_VIA]) {
        ae_reject(ae, &o, &ae->msg, v, NULL);
    } else {
        ae_count_reject(ae, v->reason);
        LOGI(ae->log, &c->peer, "sip: %s, closing", v->text);
    }
    c->refused = true;
    c->msg_started = uv_now(ae->loop);
    buf_consume(&c->rb, buf_len(&c->rb));
    stream_shutdown(c->s);
}

/* Frames and handles what rb holds. Returns 0, or a negative errno when the connection
 * must close. */
static int conn_messages(struct ae_conn *c)
{
    struct ae *ae = c->ae;
    struct stream *s = c->s;
    size_t cap = c->src == SIP_SRC_REMOTE_USER ? ae->cfg->limits.max_client_message
                                               : ae->cfg->limits.max_server_message;
    for (int guard = 0; guard < 1024 && buf_len(&c->rb) > 0; guard++) {
        struct slice in = buf_slice(&c->rb);
        /* RFC 5626 §4.4.1: a double CRLF is a ping; answer with a single CRLF (pong). */
        size_t k = 0;
        while (k < in.len && (in.p[k] == '\r' || in.p[k] == '\n'))
            k++;
        if (k) {
            if (k >= 4 && memcmp(in.p, "\r\n\r\n", 4) == 0)
                stream_write(s, "\r\n", 2);
            buf_consume(&c->rb, k);
            continue;
        }
        ssize_t r = sip_msg_scan(&ae->msg, in.p, in.len, false, cap);
        if (r == -EAGAIN)
            break;
        if (r == -EMSGSIZE) {
            struct sip_verdict v = {513, "Message Too Large", "too_large", "Message too large"};
            conn_refuse(c, &v);
            return 0;
        }
        if (r < 0) {
            metric_inc(ae->m_unparseable);
            struct sip_verdict v = {400, "Bad Request", "content_length",
                                    "Content-Length missing or invalid on a stream"};
            if (ae->msg.hdr_end && ae->msg.is_request && ae->msg.count[SIP_H_VIA]) {
                conn_refuse(c, &v);
                return 0;
            }
            LOGI(ae->log, &c->peer, "sip: unparseable stream data, closing");
            return -EBADMSG;
        }
        struct ae_origin o = {c->side, c->tp, NULL, c, &c->peer};
        int rc = ae_handle(ae, &o, &ae->msg);
        buf_consume(&c->rb, (size_t)r);
        if (rc < 0)
            return rc;
        if (!ae_conn_get(ae, c->id))
            break;
    }
    return 0;
}

static int on_conn_data(struct stream *s, const uint8_t *data, size_t len, void *arg)
{
    struct ae_conn *c = arg;
    struct ae *ae = c->ae;
    (void)s;
    bool progressed = false;
    /* A read may hold more than rb has room for: take what fits, frame it, repeat. */
    while (len > 0 && !c->refused) {
        size_t room = c->rb.cap - buf_len(&c->rb), n = len < room ? len : room;
        if (n == 0) {
            /* Full, and no message could be taken from it: index what came, so that the
             * 513 can name the request. */
            struct sip_verdict v = {513, "Message Too Large", "too_large", "Message too large"};
            struct slice in = buf_slice(&c->rb);
            if (c->ws)
                ae->msg.hdr_end = 0;
            else
                (void)sip_msg_scan(&ae->msg, in.p, in.len, false, in.len);
            conn_refuse(c, &v);
            return 0;
        }
        if (buf_append(&c->rb, data, n) < 0)
            return -ENOMEM;
        data += n;
        len -= n;
        size_t held = buf_len(&c->rb);
        int rc = c->ws ? on_ws_data(c) : conn_messages(c);
        if (rc < 0 || !ae_conn_get(ae, c->id))
            return rc;
        if (buf_len(&c->rb) < held)
            progressed = true; /* a message (or a keep-alive) was taken */
    }
    if (c->refused)
        return 0;
    /* The clock of limits.message_timeout runs from the first byte of a message. */
    if (buf_len(&c->rb) == 0)
        c->msg_started = 0;
    else if (progressed || !c->msg_started)
        c->msg_started = uv_now(ae->loop);
    return 0;
}

static void on_conn_open(struct stream *s, void *arg)
{
    struct ae_conn *c = arg;
    c->open = true;
    struct tls_conn *t = stream_tls(s);
    if (!t || !c->mtls)
        return;
    /* Names the peer's verified certificate vouches for (federation From check). */
    const char *cn = tls_conn_peer_cn(t);
    if (cn && c->nnames < AE_NAMES_MAX)
        snprintf(c->names[c->nnames++], sizeof(c->names[0]), "%s", cn);
    for (size_t i = 0; c->nnames < AE_NAMES_MAX; i++) {
        const char *san = tls_conn_peer_san(t, i);
        if (!san)
            break;
        snprintf(c->names[c->nnames++], sizeof(c->names[0]), "%s", san);
    }
    for (size_t i = 0; i < c->nnames; i++)
        c->name_ptrs[i] = c->names[i];
    if (c->side == AE_EXT) {
        const struct ae_federation_config *fc = &c->ae->cfg->federation;
        bool allowed = false;
        /* A blocked partner keeps its connection: each request gets 403 (ae_policy). */
        for (size_t i = 0; i < fc->nallow; i++)
            if (sip_cert_matches_domain(c->name_ptrs, c->nnames, fc->allow[i]))
                allowed = true;
        c->src = allowed ? SIP_SRC_PARTNER : SIP_SRC_DISCOVERED;
        if (!allowed && !fc->discovery) {
            LOGI(c->ae->log, &c->peer, "sip: partner %s not on the allow list",
                 c->nnames ? c->names[0] : "?");
            stream_close(s, -EACCES, "partner not allowed");
        }
    }
}

static void conn_free(struct ae_conn *c)
{
    struct ae *ae = c->ae;
    conn_unregister(ae, c);
    buf_fini(&c->rb);
    free(c);
    ae_unref(ae);
}

/* How long a partner edge that could not be reached is passed over for the domain's next
 * SRV target (a failed target must not fail every later request to that domain). */
#define AE_PARTNER_HOLD_MS 30000

static void on_conn_close(struct stream *s, int err, const char *why, void *arg)
{
    struct ae_conn *c = arg;
    struct ae *ae = c->ae;
    if (c->outbound && c->side == AE_EXT && !c->open && err && ae->dns) {
        LOGW(ae->log, &c->peer,
             "sip: partner edge unreachable (%s): its domains use their "
             "next SRV target for %d s",
             why ? why : strerror(-err), AE_PARTNER_HOLD_MS / 1000);
        ae_dns_target_failed(ae->dns, &c->peer, AE_PARTNER_HOLD_MS);
    }
    LOGD(ae->log, &c->peer, "sip: connection closed (%s)", why ? why : "");
    conn_free(c);
}

static const struct stream_cbs conn_cbs = {on_conn_data, on_conn_open, NULL, on_conn_close};

static struct ae_conn *conn_new(struct ae *ae, uint8_t side, uint8_t tp, bool mtls)
{
    struct ae_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    size_t cap =
        side == AE_EXT ? ae->cfg->limits.max_client_message : ae->cfg->limits.max_server_message;
    if (buf_init(&c->rb, cap + 4096) < 0) {
        free(c);
        return NULL;
    }
    c->ae = ae;
    c->side = side;
    c->tp = tp;
    c->mtls = mtls;
    c->src = side == AE_INT ? SIP_SRC_INTERNAL : SIP_SRC_REMOTE_USER;
    c->partner = -1;
    if (conn_register(ae, c) < 0) {
        buf_fini(&c->rb);
        free(c);
        return NULL;
    }
    ae->open_handles++;
    return c;
}

/* A connection refused at the open-file limit (common/fdlimit.h): logged at most every 10 s. */
static void refused_fd_limit(struct ae *ae)
{
    uint64_t held;
    ae_count_reject(ae, "fd_limit");
    if (log_limit_pass(&ae->fd_log, uv_now(ae->loop), 10000, &held))
        LOGW(ae->log, NULL,
             "sip: connection refused: open-file limit %zu reached (%" PRIu64 " more since the "
             "last line); raise ulimit -n",
             fdlimit_nofile(), held);
}

void ae_on_accept(uv_stream_t *server, int status)
{
    struct ae_listener *l = server->data;
    struct ae *ae = l->ae;
    if (status < 0)
        return;
    struct ae_conn *c = ae->draining ? NULL : conn_new(ae, l->side, l->tp, l->mtls);
    struct stream_opts so = {
        .tls = l->tp == AE_TP_TLS ? (l->side == AE_EXT ? (l->mtls ? ae->tls_ext_mtls : ae->tls_ext)
                                                       : ae->tls_int_server)
                                  : NULL,
        .write_cap = 256 * 1024,
        .handshake_timeout_ms = (uint32_t)ae->cfg->limits.handshake_timeout_ms,
        .idle_timeout_ms = (uint32_t)ae->cfg->limits.idle_timeout_ms,
        .gate = ae->hs_gate,
        /* A burst of requests or relayed responses: one write (one TLS record) per turn. */
        .write_batch = AE_WRITE_BATCH,
        .read_scratch = ae->rscratch,
        .read_scratch_len = sizeof(ae->rscratch),
    };
    if (!c) {
        /* Over the connection cap (or draining): accept and drop, so the backlog empties. */
        uv_tcp_t *t = malloc(sizeof(*t));
        if (t && uv_tcp_init(ae->loop, t) == 0) {
            if (uv_accept(server, (uv_stream_t *)t) == 0)
                LOGI(ae->log, NULL, "sip: connection refused (limit)");
            uv_close((uv_handle_t *)t, (uv_close_cb)free);
        } else {
            free(t);
        }
        ae_count_reject(ae, "overload");
        return;
    }
    c->local = l->local;
    c->ws = l->ws;
    int rc = stream_accept(server, &so, &conn_cbs, c, &c->s);
    if (rc < 0) {
        conn_free(c);
        if (rc == -EMFILE)
            refused_fd_limit(ae);
        return;
    }
    c->peer = *stream_peer(c->s);
    if (l->side == AE_EXT && !ae_exempt(ae, &c->peer) &&
        conns_from(ae, &c->peer) > ae->cfg->limits.max_connections_per_address) {
        LOGI(ae->log, &c->peer, "sip: too many connections from this address");
        ae_count_reject(ae, "overload");
        stream_close(c->s, -EMFILE, "per-address connection limit");
    }
}

int ae_connect(struct ae *ae, uint8_t side, uint8_t tp, const struct addr *to,
               const char *server_name, struct ae_conn **out)
{
    struct ae_conn *c = conn_new(ae, side, tp, tp == AE_TP_TLS);
    if (!c)
        return -EMFILE;
    c->outbound = true;
    c->peer = *to;
    const struct addr *la = ae_side_addr(ae, side, tp);
    if (la)
        c->local = *la;
    struct stream_opts so = {
        .tls = tp == AE_TP_TLS ? (side == AE_INT ? ae->tls_int_client : ae->tls_ext_client) : NULL,
        .server_name = server_name,
        .write_cap = 4 * 1024 * 1024,
        .handshake_timeout_ms = (uint32_t)ae->cfg->limits.handshake_timeout_ms,
        .write_batch = AE_WRITE_BATCH,
        .read_scratch = ae->rscratch,
        .read_scratch_len = sizeof(ae->rscratch),
    };
    if (tp == AE_TP_TLS && !so.tls) {
        conn_free(c);
        return -ENOTSUP;
    }
    /* Connect from this side's own address, so the peer sees the interface it expects. */
    struct addr from;
    const struct addr *bind_from = NULL;
    if (la && addr_family(la) == addr_family(to)) {
        from = *la;
        addr_set_port(&from, 0);
        bind_from = &from;
    }
    int rc = stream_connect(ae->loop, to, bind_from, &so, &conn_cbs, c, &c->s);
    if (rc < 0) {
        conn_free(c);
        return rc;
    }
    *out = c;
    return 0;
}
