/* The access edge's SIP server: UDP sockets and TCP/TLS connections on both sides, and
 * the proxy core that validates, marks and forwards each message (RFC 3261 §16). One
 * libuv loop; every message is parsed once and forwarded by splicing its bytes. */
#include "access-edge/ae.h"

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
#include "access-edge/sip_msg.h"
#include "access-edge/sip_proxy.h"
#include "access-edge/sip_route.h"
#include "access-edge/sip_topo.h"
#include "access-edge/sip_validate.h"
#include "access-edge/sip_ws.h"
#include "common/crypto.h"
#include "common/fdlimit.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/ratelimit.h"
#include "common/stream.h"
#include "common/tls.h"

enum { AE_EXT = 0, AE_INT = 1 };

#define AE_UDP_MAX 8
#define AE_LST_MAX 16
#define AE_NAMES_MAX 6
#define AE_OUT_CAP (1024 * 1024 + 8192)
#define AE_MMSG_BUF (16 * 65536)

struct ae_udp {
    uv_udp_t h;
    struct ae *ae;
    uint8_t side;
    struct addr local;
};

struct ae_listener {
    uv_tcp_t h;
    struct ae *ae;
    uint8_t side, tp;
    bool mtls, ws;
    struct addr local;
};

struct ae_conn {
    struct ae *ae;
    struct stream *s;
    uint32_t id;
    uint8_t side, tp;
    bool mtls, open, outbound;
    bool ws, ws_open; /* RFC 7118: WebSocket framing, after the upgrade */
    enum sip_source src;
    int partner; /* index in ae->partners for a discovered partner, -1 before its first request */
    struct addr peer;
    struct addr alias; /* RFC 5923: the peer's listening address, from ;alias in its Via */
    bool has_alias;
    struct addr local; /* the listener (or our address) the peer talks to */
    struct buf rb;
    uint64_t msg_started; /* loop ms when the unfinished message in rb began, 0 if none */
    bool refused;         /* answered and shut down: ignore what else comes */
    char names[AE_NAMES_MAX][128];
    const char *name_ptrs[AE_NAMES_MAX];
    size_t nnames;
};

/* A loop turn spends at most this on TLS handshakes (at least one flight): a handshake costs
 * 3-5 ms of ECDHE and ECDSA (12 ms with a client certificate), and a burst of them run as they
 * arrive held every other user's SIP for the whole burst. */
#define AE_HS_BUDGET_US 1000

/* Metric labels for each rejection reason (fixed set: bounded cardinality). */
static const char *const reject_reasons[] = {
    "too_large", "too_many_headers", "line_too_long", "missing_header", "duplicate_header",
    "content_length", "method", "cseq", "max_forwards", "uri_scheme", "relay", "from_domain",
    "loop", "no_target", "rate_limited", "overload", "no_flow", "blocked", "unroutable",
    "watchlist", "tampered", "route", "fd_limit", "malformed", "version", "extension",
    "next_hop_down", NULL,
};

#define AE_PARTNERS_MAX 1024

/* A discovered federation partner (RFC-less OCS policy, PROTOCOLS.md §1.2): the distinct
 * users it addressed, its success/failure counts, and whether it is on the watch list. */
struct ae_partner {
    char domain[128];
    uint64_t *users; /* hashes of distinct Request-URIs, up to max_contacts + 1 */
    uint32_t nusers, cap;
    uint32_t ok, fail;
    bool suspicious, watched;
    int64_t watched_at;
};

struct ae {
    uv_loop_t *loop;
    const struct ae_config *cfg;
    const struct logger *log;
    struct metrics *metrics;
    struct sip_policy policy;
    struct addr *own;
    size_t nown, nown_ext; /* own[0..nown_ext) are the external side's */
    const char **domains;

    struct ae_udp udp[AE_UDP_MAX];
    size_t nudp;
    struct ae_listener lst[AE_LST_MAX];
    size_t nlst;
    struct tls_ctx *tls_ext, *tls_ext_mtls, *tls_int_server, *tls_int_client, *tls_ext_client;
    struct stream_gate *hs_gate; /* accepted TLS handshakes take turns with SIP work */
    struct ae_dns *dns;

    struct ae_conn **conns; /* by id & (conn_cap - 1) */
    size_t conn_cap, nconns;
    uint32_t next_id;
#define AE_DIRECTORS_MAX 8
    struct {
        uint32_t conn;      /* stream connection to it, 0 if none */
        uint64_t last_ok;   /* when it last answered (ms) */
        bool up;
    } dirs[AE_DIRECTORS_MAX];
    size_t ndirs;
    uv_timer_t health;
    uv_timer_t lag;          /* fires every 20 ms; lateness measures saturation */
    uint64_t lag_expected;   /* uv_hrtime ns when it should fire */
    uint64_t overloaded_until; /* ms (loop clock) */
    struct log_limit fd_log;   /* connections refused at the open-file limit */
    unsigned late_ticks;       /* consecutive lag ticks at least overload_lag late */
    struct metric *m_dir_up[AE_DIRECTORS_MAX];

    struct ae_txn_table *txns;
    uv_timer_t sweep;
    uv_timer_t retx_timer; /* runs while retx holds INVITEs awaiting a first answer */
    struct dlist retx;     /* struct ae_retx, forwarded over UDP */
    struct ratelimit *rl;
    struct ratelimit *reject_rl; /* 503s to over-limit UDP sources (reflection bound) */
    struct ratelimit *fed_rl; /* per discovered partner domain */
    struct ae_partner *partners;
    size_t npartners;
    struct admin *admin;
    uint64_t salt;
    uint8_t flow_key[SIP_FLOW_KEY_LEN];
    bool draining, stopping;
    void (*drained)(void *arg);
    void *drained_arg;
    int open_handles;

    struct metric *m_watch;
    struct metric *m_in[2], *m_out[2], *m_unparseable, *m_dropped, *m_conns, *m_txns;
    struct metric *m_retx, *m_retx_timeout;
    struct metric *m_route_stripped;
    struct metric *m_slow; /* connections closed for a message slower than message_timeout */
    struct metric *m_silent; /* over-limit UDP requests dropped without a 503 */
    /* Log lines about bad input are bounded (AE_NOISE_LINES a second); the rest are counted
     * and summed up in one line. */
    uint64_t noise_window; /* loop ms when the current second began */
    uint32_t noise_lines, noise_suppressed;
    struct metric *m_reject[ARRAY_SIZE(reject_reasons)];

    struct sip_msg msg;
    struct sip_msg msg2; /* a message the edge built, when it must read it back */
    uint8_t out[AE_OUT_CAP];
    uint8_t mmsg[AE_MMSG_BUF];
};

/* Where a message came from. */
struct ae_origin {
    uint8_t side, tp;
    struct ae_udp *udp;    /* UDP: the socket it arrived on */
    struct ae_conn *conn;  /* stream: its connection */
    const struct addr *peer;
};

static void ae_count_reject(struct ae *ae, const char *reason)
{
    for (size_t i = 0; reject_reasons[i]; i++)
        if (strcmp(reject_reasons[i], reason) == 0) {
            metric_inc(ae->m_reject[i]);
            return;
        }
}

/* ---- connection table ---- */

static struct ae_conn *conn_get(struct ae *ae, uint32_t id)
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

static void director_down(struct ae *ae, size_t k, const char *why);

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
                director_down(ae, i, "connect failed");
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

struct udp_send_req {
    uv_udp_send_t req;
    size_t len;
    uint8_t data[];
};

static void on_udp_sent(uv_udp_send_t *req, int status)
{
    free(container_of(req, struct udp_send_req, req));
}

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

static int udp_send(struct ae_udp *u, const struct addr *to, const uint8_t *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int rc = uv_udp_try_send(&u->h, &b, 1, &to->u.sa);
    if (rc >= 0)
        return 0;
    if (rc != UV_EAGAIN && rc != UV_ENOSYS)
        return rc;
    /* The socket buffer is full: queue a copy. */
    struct udp_send_req *r = malloc(sizeof(*r) + n);
    if (!r)
        return -ENOMEM;
    memcpy(r->data, p, n);
    r->len = n;
    b = uv_buf_init((char *)r->data, (unsigned)n);
    rc = uv_udp_send(&r->req, &u->h, &b, 1, &to->u.sa, on_udp_sent);
    if (rc < 0)
        free(r);
    return rc;
}

static int conn_send(struct ae_conn *c, const uint8_t *p, size_t n)
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

static int ae_connect(struct ae *ae, uint8_t side, uint8_t tp, const struct addr *to,
                      const char *server_name, struct ae_conn **out);
static void ae_unref(struct ae *ae);
static void retx_track(struct ae *ae, uint64_t key, const struct ae_dest *d, const uint8_t *p,
                       size_t n);

/* Sends to a destination: a UDP address from the side's socket, or a stream connection
 * (opened on demand for the Director and static targets). */
static int ae_send(struct ae *ae, struct ae_dest *d, const uint8_t *p, size_t n)
{
    metric_inc(ae->m_out[d->side]);
    if (d->tp == AE_TP_UDP) {
        struct ae_udp *u = udp_for(ae, d->side, addr_family(&d->addr));
        return u ? udp_send(u, &d->addr, p, n) : -ENETUNREACH;
    }
    struct ae_conn *c = conn_get(ae, d->conn_id);
    if (!c) {
        if (d->conn_id)
            return -ENOTCONN; /* the flow is gone */
        int rc = ae_connect(ae, d->side, d->tp, &d->addr, NULL, &c);
        if (rc < 0)
            return rc;
        d->conn_id = c->id;
    }
    return conn_send(c, p, n);
}

/* The address this side advertises for a transport (Via sent-by, Record-Route). */
static const struct addr *side_addr(const struct ae *ae, uint8_t side, uint8_t tp)
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

static const char *tp_name(uint8_t tp)
{
    return tp == AE_TP_UDP ? "UDP" : tp == AE_TP_TCP ? "TCP" : "TLS";
}

/* ---- log lines about bad input ---- */

#define AE_NOISE_LINES 10

/* Says what was held back in the second that ended (at most one line a second). */
static void noise_flush(struct ae *ae, uint64_t now)
{
    if (now - ae->noise_window < 1000)
        return;
    if (ae->noise_suppressed)
        LOGI(ae->log, NULL, "sip: %u more lines about bad input suppressed in the last %llu ms",
             ae->noise_suppressed, (unsigned long long)(now - ae->noise_window));
    ae->noise_window = now;
    ae->noise_lines = 0;
    ae->noise_suppressed = 0;
}

/* May a line about bad input (unparseable, rejected) be written now? A flood of bad
 * packets must not become a flood of log lines: beyond AE_NOISE_LINES a second they are
 * only counted (the metrics count each one). */
static bool noise_ok(struct ae *ae)
{
    noise_flush(ae, uv_now(ae->loop));
    if (ae->noise_lines < AE_NOISE_LINES) {
        ae->noise_lines++;
        return true;
    }
    ae->noise_suppressed++;
    return false;
}

/* ---- replies ---- */

static void ae_reply(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                     int status, const char *phrase, const char *warning, const char *extra)
{
    if (!m->is_request || slice_eq_str(m->method, "ACK"))
        return; /* never answer an ACK or a response */
    char lines[768] = "";
    size_t n = 0;
    if (warning && *warning) {
        /* RFC 3261 §20.43 Warning, and the diagnostics header OCS clients look for. */
        n = (size_t)snprintf(lines, sizeof(lines),
                             "Warning: 399 %s \"%s\"\r\nms-diagnostics: %d;reason=\"%s\";"
                             "source=\"%s\"\r\n",
                             ae->cfg->fqdn, warning, 1000 + status, warning, ae->cfg->fqdn);
    }
    if (extra && n < sizeof(lines))
        snprintf(lines + n, sizeof(lines) - n, "%s", extra);
    char tag[24];
    snprintf(tag, sizeof(tag), "ae%08x", (unsigned)(sip_branch_hash(ae->salt, m) & 0xffffffffu));
    ssize_t len = sip_reply_make_src(m, o->peer, status, phrase, tag, slice_str(lines), ae->out,
                                     AE_OUT_CAP);
    if (len < 0)
        return;
    if (o->conn)
        conn_send(o->conn, ae->out, (size_t)len);
    else if (o->udp)
        udp_send(o->udp, o->peer, ae->out, (size_t)len);
}

static void ae_reject(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                      const struct sip_verdict *v, const char *extra)
{
    ae_count_reject(ae, v->reason);
    if (noise_ok(ae))
        LOGI(ae->log, o->peer, "sip: %d %s (%s)", v->status, v->phrase, v->text);
    ae_reply(ae, o, m, v->status, v->phrase, v->text, extra);
}

/* ---- the proxy core ---- */

static bool method_is(const struct sip_msg *m, const char *s)
{
    return slice_eq_str(m->method, s);
}

static bool creates_dialog(const struct sip_msg *m)
{
    return method_is(m, "INVITE") || method_is(m, "SUBSCRIBE") || method_is(m, "REFER");
}

static void fmt_uri_host(const struct addr *a, uint8_t tp, char *out, size_t cap, bool ob)
{
    char h[ADDR_STRLEN];
    addr_format(a, h);
    snprintf(out, cap, "%s;lr%s%s", h,
             tp == AE_TP_TCP ? ";transport=tcp" : tp == AE_TP_TLS ? ";transport=tls" : "",
             ob ? ";ob" : "");
}

/* The flow of an external peer: its connection, or its UDP address. */
static int flow_token(struct ae *ae, const struct ae_dest *d, char *out, size_t cap)
{
    struct sip_flow f = {.stream = d->tp != AE_TP_UDP, .conn_id = d->conn_id, .addr = d->addr};
    return sip_flow_encode(ae->flow_key, &f, out, cap);
}

static void trust_line(struct ae *ae, const struct ae_origin *o, char *out, size_t cap)
{
    enum sip_source src = o->conn ? o->conn->src : SIP_SRC_REMOTE_USER;
    bool fed = src == SIP_SRC_PARTNER || src == SIP_SRC_DISCOVERED;
    /* ms-source-address: the sender's address as the edge saw it (not its Via, which it
     * writes itself); the Director keys its known-address guess allowance on it. */
    char host[ADDR_STRLEN] = "-";
    if (o->peer)
        addr_format_host(o->peer, host);
    snprintf(out, cap,
             "ms-edge-proxy-message-trust: ms-source-type=%s;ms-ep-fqdn=%s;"
             "ms-source-verified-user=%s;ms-source-network=%s;ms-source-address=%s%s%s\r\n",
             sip_source_name(src), ae->cfg->fqdn, fed ? "verified" : "unverified",
             fed ? "federation" : "publiccloud", host,
             fed && o->conn->nnames ? ";ms-remote-fqdn=" : "",
             fed && o->conn->nnames ? o->conn->names[0] : "");
}

static int ae_handle(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m);

/* A request parked while DNS finds its partner; replayed from the bytes when it answers. */
struct ae_parked {
    struct ae *ae;
    uint8_t side, tp;
    uint32_t conn_id;
    int udp;
    struct addr peer;
    size_t len;
    uint8_t data[];
};

static void on_partner_found(int status, const struct addr *to, const char *target, void *arg)
{
    struct ae_parked *pk = arg;
    struct ae *ae = pk->ae;
    if (status == -ECANCELED || ae->stopping) {
        free(pk);
        return;
    }
    LOGI(ae->log, to, "sip: federation lookup: %s", status == 0 ? target : strerror(-status));
    struct ae_conn *c = pk->conn_id ? conn_get(ae, pk->conn_id) : NULL;
    if (!pk->conn_id || c) {
        struct ae_origin o = {pk->side, pk->tp, pk->udp >= 0 ? &ae->udp[pk->udp] : NULL, c,
                              c ? &c->peer : &pk->peer};
        if (sip_msg_scan(&ae->msg, pk->data, pk->len, !c, pk->len + 1) > 0)
            ae_handle(ae, &o, &ae->msg);
    }
    free(pk);
}

/* Federation target for domain: 0 with *to set (cached), 1 if the request was answered or
 * parked for a DNS lookup. */
static int ae_federation_target(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                                const char *domain, struct addr *to)
{
    const struct ae_federation_config *fc = &ae->cfg->federation;
    bool allowed = false;
    for (size_t i = 0; i < fc->nallow; i++)
        if (strcasecmp(fc->allow[i], domain) == 0)
            allowed = true;
    if (!allowed && !fc->discovery) {
        struct sip_verdict v = {403, "Forbidden", "blocked", ""};
        snprintf(v.text, sizeof(v.text), "Federation not allowed with %s", domain);
        ae_reject(ae, o, m, &v, NULL);
        return 1;
    }
    for (size_t i = 0; i < fc->nroutes; i++)
        if (strcasecmp(fc->routes[i].domain, domain) == 0) {
            *to = fc->routes[i].address;
            return 0;
        }
    int c = ae->dns ? ae_dns_cached(ae->dns, domain, 60000, to) : -ENOENT;
    if (c == 1)
        return 0;
    if (c < 0) {
        struct sip_verdict v = {404, "Not Found", "unroutable", ""};
        snprintf(v.text, sizeof(v.text), "No federation route to %s", domain);
        ae_reject(ae, o, m, &v, NULL);
        return 1;
    }
    struct ae_parked *pk = malloc(sizeof(*pk) + m->len);
    if (!pk)
        return 1;
    pk->ae = ae;
    pk->side = o->side;
    pk->tp = o->tp;
    pk->conn_id = o->conn ? o->conn->id : 0;
    pk->udp = o->udp ? (int)(o->udp - ae->udp) : -1;
    pk->peer = *o->peer;
    pk->len = m->len;
    memcpy(pk->data, m->buf, m->len);
    if (ae_dns_partner(ae->dns, domain, on_partner_found, pk) < 0)
        free(pk);
    return 1;
}

static struct addr director_addr(const struct ae_config *cfg, size_t k)
{
    return k == 0 ? cfg->next_hop.address : cfg->next_hop.backups[k - 1];
}

/* Health checks use branches no real transaction has: this prefix XOR the Director index. */
#define AE_HEALTH_MAGIC 0x4ea1700000000000ULL

static void ae_forward_response(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m);

/* Answers the caller of an INVITE the edge forwarded and heard nothing back about, as if the
 * next hop had: a response made from the copy that went out (our Via on top) takes the
 * ordinary response path, back the way the INVITE came, hidden as it should be. */
static void fail_forwarded(struct ae *ae, const struct ae_retx *r, int status, const char *phrase,
                           const char *extra)
{
    struct sip_msg *rm = malloc(sizeof(*rm));
    size_t cap = r->len + 512;
    uint8_t *rep = malloc(cap);
    ssize_t n = -1;
    if (rm && rep && sip_msg_scan(&ae->msg, r->data, r->len, true, AE_OUT_CAP) > 0)
        n = sip_reply_make(&ae->msg, status, phrase, NULL, slice_str(extra), rep, cap);
    if (n > 0 && sip_msg_scan(rm, rep, (size_t)n, true, AE_OUT_CAP) > 0) {
        struct ae_origin o = {.side = r->dest.side, .tp = r->dest.tp,
                              .conn = conn_get(ae, r->dest.conn_id), .peer = &r->dest.addr};
        ae_forward_response(ae, &o, rm);
    }
    free(rep);
    free(rm);
}

static bool dest_is_director(const struct ae *ae, const struct ae_dest *d, size_t k)
{
    struct addr a = director_addr(ae->cfg, k);
    return d->side == AE_INT && addr_eq(&d->addr, &a);
}

/* Director k stopped answering (health checks, a failed connect, or an INVITE unanswered
 * for Timer B): said once, and the INVITEs it holds unanswered get 503 now, so their
 * callers try again (on a backup, if one answers) instead of waiting out Timer B. */
static void director_down(struct ae *ae, size_t k, const char *why)
{
    if (!ae->dirs[k].up)
        return;
    ae->dirs[k].up = false;
    metric_set(ae->m_dir_up[k], 0);
    struct addr a = director_addr(ae->cfg, k);
    LOGW(ae->log, &a, "sip: Director not answering: down (%s)", why);
    struct dlist *e = ae->retx.next, *next;
    for (; e != &ae->retx; e = next) {
        next = e->next;
        struct ae_retx *r = container_of(e, struct ae_retx, link);
        const struct ae_txn *t = ae_txn_find(ae->txns, r->key);
        if (!dest_is_director(ae, &r->dest, k) || !t || t->answered || t->cancelled)
            continue;
        dl_del(&r->link);
        ae_count_reject(ae, "next_hop_down");
        fail_forwarded(ae, r, 503, "Service Unavailable", "Retry-After: 5\r\n");
        free(r);
    }
}

static void on_health(uv_timer_t *t)
{
    struct ae *ae = t->data;
    const struct ae_config *cfg = ae->cfg;
    uint64_t now = uv_now(ae->loop);
    for (size_t k = 0; k < ae->ndirs; k++) {
        /* Two intervals without an answer: down (until it answers again). */
        if (ae->dirs[k].up && now - ae->dirs[k].last_ok > 2 * cfg->next_hop.health_interval_ms + 50)
            director_down(ae, k, "health checks");
        metric_set(ae->m_dir_up[k], ae->dirs[k].up);
        struct ae_dest d = {.side = AE_INT, .tp = (uint8_t)cfg->next_hop.transport,
                            .addr = director_addr(cfg, k), .conn_id = ae->dirs[k].conn};
        const struct addr *via = side_addr(ae, AE_INT, d.tp);
        if (!via)
            continue;
        if (d.tp != AE_TP_UDP && !conn_get(ae, d.conn_id)) {
            struct ae_conn *c;
            if (ae_connect(ae, AE_INT, d.tp, &d.addr, cfg->next_hop.server_name, &c) < 0)
                continue;
            ae->dirs[k].conn = d.conn_id = c->id;
        }
        char hs[ADDR_STRLEN], ds[ADDR_STRLEN], br[SIP_BRANCH_MAX];
        addr_format(via, hs);
        addr_format(&d.addr, ds);
        sip_branch_format(AE_HEALTH_MAGIC ^ k, 0, br);
        char msg[768];
        int n = snprintf(msg, sizeof(msg),
                         "OPTIONS sip:%s SIP/2.0\r\nVia: SIP/2.0/%s %s;branch=%s\r\n"
                         "From: <sip:%s>;tag=health\r\nTo: <sip:%s>\r\nCall-ID: health-%llu@%s\r\n"
                         "CSeq: 1 OPTIONS\r\nMax-Forwards: 1\r\nContent-Length: 0\r\n\r\n",
                         ds, tp_name(d.tp), hs, br, cfg->fqdn, ds, (unsigned long long)now, hs);
        if (n > 0 && (size_t)n < sizeof(msg))
            ae_send(ae, &d, (const uint8_t *)msg, (size_t)n);
    }
}

/* ---- topology hiding glue (the rewriting itself is sip_topo.c) ---- */

struct own_check {
    const struct ae *ae;
    bool ext_only;
};

/* sip_topo_own_cb: does a Route/Record-Route entry name the edge (or its external side)? */
static bool entry_is_own(struct slice entry, void *arg)
{
    const struct own_check *c = arg;
    struct slice host;
    uint16_t port;
    char hb[ADDR_STRLEN];
    if (!sip_uri_host_port(entry, &host, &port) || slice_to_cstr(host, hb, sizeof(hb)) < 0)
        return false;
    struct sip_policy p = c->ae->policy;
    if (c->ext_only)
        p.nown = c->ae->nown_ext;
    return sip_policy_is_own(&p, hb, port);
}

/* sip_route_side_cb: which of the edge's sides a Route entry names, if any. */
static enum sip_route_side route_side(struct slice entry, void *arg)
{
    struct own_check ext = {arg, true}, any = {arg, false};
    if (entry_is_own(entry, &ext))
        return SIP_RS_EXT;
    return entry_is_own(entry, &any) ? SIP_RS_INT : SIP_RS_FOREIGN;
}

/* Where encoded Contacts point: the external address that reaches us over tp. */
static void topo_init(struct ae *ae, uint64_t nonce, uint8_t tp, struct sip_topo *t, char *ext,
                      size_t cap)
{
    const struct addr *a = side_addr(ae, AE_EXT, tp);
    char h[ADDR_STRLEN];
    snprintf(ext, cap, "%s%s", a ? addr_format(a, h) : ae->cfg->fqdn,
             tp == AE_TP_TCP ? ";transport=tcp" : tp == AE_TP_TLS ? ";transport=tls" : "");
    *t = (struct sip_topo){ae->flow_key, nonce, slice_str(ext)};
}

/* The edge's one Record-Route entry toward the Internet: the external one, carrying the
 * internal entry and the inside's own Record-Routes sealed (sip_topo.h). Returns the new
 * length of ins (cap when it does not fit). */
static size_t hidden_record_route(const struct sip_topo *t, const struct sip_msg *m,
                                  const char *tok, const char *ext_u, const char *int_u,
                                  char *ins, size_t n, size_t cap)
{
    char own_int[300], sealed[4096];
    snprintf(own_int, sizeof(own_int), "<sip:%s%s%s>", tok, *tok ? "@" : "", int_u);
    ssize_t sl = sip_topo_seal_request_rr(t, slice_str(own_int), m, sealed, sizeof(sealed));
    if (sl < 0)
        return cap;
    int k = snprintf(ins + n, cap - n, "Record-Route: <sip:%s%s%s;ae-rr=%s>\r\n", tok,
                     *tok ? "@" : "", ext_u, sealed);
    return k < 0 || (size_t)k >= cap - n ? cap : n + (size_t)k;
}

static void reject_tampered(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m)
{
    struct sip_verdict v = {403, "Forbidden", "tampered", "Forged topology-hiding token"};
    ae_reject(ae, o, m, &v, NULL);
}

/* The Route policy for a request from outside (sip_route.h): the edge alone decides where it
 * goes. Fills the Request-URI and Route lines to forward with (what topology hiding sealed put
 * back, and the signed entries of a hairpin call's next leg). Returns 0 to forward, 1 when
 * the request was answered. */
static int ext_routes(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                      const struct sip_route *r, char *ruri, size_t ruri_cap, ssize_t *ruri_len,
                      char *routes, size_t routes_cap, ssize_t *routes_len)
{
    struct own_check any_side = {ae, false};
    struct sip_route_plan plan;
    sip_route_plan_ext(m, r->in_dialog, ae->flow_key, route_side, ae, &plan);
    struct sip_route_facts f = {
        .in_dialog = r->in_dialog,
        .ruri_own = entry_is_own(m->ruri, &any_side),
        .ruri_ours = sip_policy_has_domain(&ae->policy, r->ruri_domain, strlen(r->ruri_domain)),
        .reject_foreign = ae->cfg->route_policy == AE_ROUTE_REJECT,
    };
    struct sip_verdict v = {403, "Forbidden", "route", "Route not allowed"};
    switch (sip_route_decide(m, &f, &plan)) {
    case SIP_RA_KEEPALIVE: {
        char allow[320];
        snprintf(allow, sizeof(allow), "Allow: %s\r\nAccept: application/sdp\r\n",
                 sip_allow_list(o->conn ? o->conn->src : SIP_SRC_REMOTE_USER));
        ae_reply(ae, o, m, 200, "OK", NULL, allow);
        return 1;
    }
    case SIP_RA_RELAY:
        v.reason = "relay";
        snprintf(v.text, sizeof(v.text), "Relaying denied for domain %s", r->ruri_domain);
        ae_reject(ae, o, m, &v, NULL);
        return 1;
    case SIP_RA_FOREIGN:
        ae_reject(ae, o, m, &v, NULL);
        return 1;
    case SIP_RA_FORWARD:
        break;
    }
    if (plan.foreign) {
        metric_add(ae->m_route_stripped, plan.foreign);
        LOGD(ae->log, o->peer, "sip: %u foreign Route entries removed", plan.foreign);
    }
    /* What topology hiding sealed comes back (even with hiding now off: the dialog started
     * with it on). Only a Request-URI on our own address can be one of our Contacts. */
    if (f.ruri_own)
        *ruri_len = sip_topo_contact_open(ae->flow_key, m->ruri, ruri, ruri_cap);
    if (*ruri_len >= 0)
        *routes_len = sip_topo_open_routes(ae->flow_key, m, plan.pop, entry_is_own, &any_side,
                                           routes, routes_cap);
    if (*ruri_len < 0 || *routes_len < 0) {
        reject_tampered(ae, o, m);
        return 1;
    }
    ssize_t kl = sip_route_write_kept(&plan, routes + *routes_len,
                                      routes_cap - (size_t)*routes_len);
    if (kl < 0) {
        struct sip_verdict tl = {513, "Message Too Large", "too_large", "Route too long"};
        ae_reject(ae, o, m, &tl, NULL);
        return 1;
    }
    *routes_len += kl;
    return 0;
}

/* A forwarded non-INVITE awaits its final answer: a drain waits for it (for those in flight
 * when it began: later ones are still forwarded, but do not hold it). Kept out of the second
 * half of the table, which stays for INVITEs (calls are what a full table sheds). */
static void track_noninvite(struct ae *ae, uint64_t h, uint64_t now)
{
    if (ae->draining || ae_txn_find(ae->txns, h) ||
        ae_txn_count(ae->txns) >= ae->cfg->limits.max_transactions / 2)
        return;
    struct ae_txn *t = ae_txn_add(ae->txns, h, now);
    if (t)
        t->noninvite = true;
}

static void ae_forward_request(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                               const struct sip_route *r)
{
    char ruri[1024], routes[4096];
    ssize_t ruri_len = 0, routes_len = 0;
    if (o->side == AE_EXT && ext_routes(ae, o, m, r, ruri, sizeof(ruri), &ruri_len, routes,
                                        sizeof(routes), &routes_len) != 0)
        return;
    struct ae_dest dest = {0};
    const struct ae_config *cfg = ae->cfg;
    /* Where it goes. */
    if (r->kind == SIP_ROUTE_DIRECTOR) {
        /* The first Director that answers its health checks, in configured order. */
        size_t k = 0;
        while (k < ae->ndirs && !ae->dirs[k].up)
            k++;
        if (k == ae->ndirs) {
            /* None answers: say so now rather than let the caller time out. */
            struct sip_verdict v = {503, "Service Unavailable", "next_hop_down",
                                    "Next hop unreachable"};
            ae_reject(ae, o, m, &v, "Retry-After: 5\r\n");
            return;
        }
        dest.side = AE_INT;
        dest.tp = (uint8_t)cfg->next_hop.transport;
        dest.addr = director_addr(cfg, k);
        dest.conn_id = dest.tp == AE_TP_UDP ? 0 : ae->dirs[k].conn;
        if (dest.tp != AE_TP_UDP && !conn_get(ae, dest.conn_id)) {
            struct ae_conn *c;
            if (ae_connect(ae, AE_INT, dest.tp, &dest.addr, cfg->next_hop.server_name, &c) < 0) {
                struct sip_verdict v = {503, "Service Unavailable", "unroutable",
                                        "Next hop unreachable"};
                ae_reject(ae, o, m, &v, "Retry-After: 5\r\n");
                return;
            }
            ae->dirs[k].conn = dest.conn_id = c->id;
        }
    } else if (r->kind == SIP_ROUTE_FLOW) {
        struct sip_flow f;
        struct ae_conn *c = NULL;
        if (sip_flow_decode(ae->flow_key, r->flow, &f) < 0 ||
            (f.stream && (!(c = conn_get(ae, f.conn_id)) || !addr_eq(&c->peer, &f.addr)))) {
            /* RFC 5626 §5.3: the flow is gone. */
            struct sip_verdict v = {430, "Flow Failed", "no_flow", "Flow failed"};
            ae_reject(ae, o, m, &v, NULL);
            return;
        }
        dest.side = AE_EXT;
        dest.tp = c ? c->tp : AE_TP_UDP;
        dest.conn_id = c ? c->id : 0;
        dest.addr = f.addr;
    } else {
        char port[8];
        snprintf(port, sizeof(port), "%u", r->port);
        dest.side = AE_EXT;
        dest.tp = r->tls ? AE_TP_TLS : r->tcp ? AE_TP_TCP : AE_TP_UDP;
        if (addr_parse(&dest.addr, r->host, r->port ? r->port : (r->tls ? 5061 : 5060)) < 0) {
            /* A domain: federation, found by DNS SRV over mutual TLS. */
            int fr = ae_federation_target(ae, o, m, r->host, &dest.addr);
            if (fr != 0)
                return; /* answered, or parked until DNS answers */
            dest.tp = AE_TP_TLS;
        }
        /* Reuse a connection the peer opened to us (RFC 5923 spirit) before dialing. */
        if (dest.tp != AE_TP_UDP) {
            for (size_t i = 0; i < ae->conn_cap; i++) {
                struct ae_conn *c = ae->conns[i];
                if (c && c->side == AE_EXT &&
                    (addr_eq(&c->peer, &dest.addr) || (c->has_alias && addr_eq(&c->alias, &dest.addr)))) {
                    dest.conn_id = c->id;
                    dest.tp = c->tp;
                    break;
                }
            }
        }
    }

    uint64_t now = uv_now(ae->loop);
    uint64_t h = sip_branch_hash(ae->salt, m);
    uint32_t cid = o->conn ? o->conn->id : 0;
    bool is_invite = method_is(m, "INVITE");
    if (is_invite || method_is(m, "CANCEL")) {
        struct ae_txn *t = ae_txn_find(ae->txns, h);
        if (is_invite && t) {
            /* A retransmission: the 100 we sent was lost, or is on its way. */
            ae_reply(ae, o, m, 100, "Trying", NULL, NULL);
            return;
        }
        if (!is_invite) {
            if (!t) {
                struct sip_verdict v = {481, "Call/Transaction Does Not Exist", "no_target",
                                        "No matching INVITE"};
                ae_reject(ae, o, m, &v, NULL);
                return;
            }
            /* RFC 3261 §16.10: answer the CANCEL here, then cancel the branch we opened. */
            ae_reply(ae, o, m, 200, "OK", NULL, NULL);
            if (t->final || t->cancelled)
                return;
            t->cancelled = true;
            dest = t->dest;
        } else {
            if (ae->draining) {
                struct sip_verdict v = {503, "Service Unavailable", "overload", "Draining"};
                ae_reject(ae, o, m, &v, "Retry-After: 30\r\n");
                return;
            }
            t = ae_txn_add(ae->txns, h, now);
            if (!t) {
                struct sip_verdict v = {503, "Service Unavailable", "overload",
                                        "Too many calls in progress"};
                ae_reject(ae, o, m, &v, "Retry-After: 2\r\n");
                return;
            }
            t->dest = dest;
            ae_reply(ae, o, m, 100, "Trying", NULL, NULL);
        }
    } else if (!method_is(m, "ACK")) {
        track_noninvite(ae, h, now);
    }

    /* The lines we add: our Via, Record-Route on both interfaces (RFC 5658), Path for a
     * REGISTER from outside (RFC 3327), the trust marking for the inside. */
    char ins[8192];
    size_t n = 0;
    struct ae_conn *dc = conn_get(ae, dest.conn_id);
    /* RFC 5923: offer our partner connections for reuse in the other direction, naming the
     * federation (mutual TLS) listener as our sent-by. */
    bool alias = dest.side == AE_EXT && dest.tp == AE_TP_TLS && (!dc || dc->mtls) &&
                 !(dc && dc->ws) && cfg->external.nmtls > 0;
    const struct addr *via_a = alias ? &cfg->external.mtls[0] : side_addr(ae, dest.side, dest.tp);
    if (!via_a)
        return;
    char hs[ADDR_STRLEN], br[SIP_BRANCH_MAX];
    addr_format(via_a, hs);
    sip_branch_format(h, cid, br);
    const char *vtp = dc && dc->ws ? (dc->tp == AE_TP_TLS ? "WSS" : "WS") : tp_name(dest.tp);
    /* Topology hiding toward the Internet: the inside's Vias travel sealed in ours. */
    bool hide = cfg->topology_hiding && o->side != AE_EXT && dest.side == AE_EXT;
    char seal[6000] = "";
    if (hide) {
        char vias[4096];
        size_t vl = 0;
        bool fits = true;
        for (uint16_t i = 0; i < m->nhdr && fits; i++) {
            const struct sip_hdr *vh = &m->hdr[i];
            size_t ll = vh->line_end - vh->line_off;
            if (vh->id != SIP_H_VIA)
                continue;
            fits = vl + ll <= sizeof(vias);
            if (fits) {
                memcpy(vias + vl, m->buf + vh->line_off, ll);
                vl += ll;
            }
        }
        if (!fits || sip_seal(ae->flow_key, uv_hrtime() ^ h, slice_make(vias, vl), seal,
                              sizeof(seal)) < 0) {
            struct sip_verdict v = {513, "Message Too Large", "too_large",
                                    "Too many Vias to hide"};
            ae_reject(ae, o, m, &v, NULL);
            return;
        }
    }
    n += (size_t)snprintf(ins + n, sizeof(ins) - n, "Via: SIP/2.0/%s %s;branch=%s%s%s%s\r\n", vtp,
                          hs, br, alias ? ";alias" : "", hide ? ";ae-th=" : "", hide ? seal : "");
    if (routes_len > 0 && n + (size_t)routes_len < sizeof(ins)) {
        memcpy(ins + n, routes, (size_t)routes_len);
        n += (size_t)routes_len;
    }
    struct sip_topo topo = {0};
    char topo_ext[160];
    if (hide) {
        topo_init(ae, uv_hrtime() ^ h, dest.tp, &topo, topo_ext, sizeof(topo_ext));
        ssize_t cl = sip_topo_hide_contacts(&topo, m, ins + n, sizeof(ins) - n);
        n = cl < 0 ? sizeof(ins) : n + (size_t)cl;
    }
    bool from_ext = o->side == AE_EXT;
    struct ae_dest ext_peer = {0};
    if (from_ext) {
        ext_peer.tp = o->tp;
        ext_peer.conn_id = cid;
        ext_peer.addr = *o->peer;
    } else {
        ext_peer = dest;
    }
    char tok[SIP_FLOW_TOKEN_MAX] = "";
    if ((creates_dialog(m) && !r->in_dialog) || (from_ext && method_is(m, "REGISTER")))
        if (flow_token(ae, &ext_peer, tok, sizeof(tok)) < 0)
            tok[0] = 0;
    if (creates_dialog(m) && !r->in_dialog) {
        char ext_u[160], int_u[160];
        const struct addr *ea = from_ext ? (o->conn ? &o->conn->local : &o->udp->local)
                                         : side_addr(ae, AE_EXT, dest.tp);
        uint8_t itp = from_ext ? dest.tp : o->tp;
        const struct addr *ia = side_addr(ae, AE_INT, itp);
        if (ea && ia) {
            fmt_uri_host(ea, from_ext ? o->tp : dest.tp, ext_u, sizeof(ext_u), false);
            struct ae_conn *wc = from_ext ? o->conn : dc;
            if (wc && wc->ws) {
                char h2[ADDR_STRLEN];
                snprintf(ext_u, sizeof(ext_u), "%s;lr;transport=%s", addr_format(ea, h2),
                         wc->tp == AE_TP_TLS ? "wss" : "ws");
            }
            fmt_uri_host(ia, itp, int_u, sizeof(int_u), false);
            /* The interface facing the next hop goes on top. */
            /* Both entries carry the signed flow token: an in-dialog request from outside
             * keeps only the edge's signed entries (sip_route.h), so the internal entry of
             * a hairpin call's other leg must be verifiable too. */
            const char *at = *tok ? "@" : "";
            if (from_ext)
                n += (size_t)snprintf(ins + n, sizeof(ins) - n,
                                      "Record-Route: <sip:%s%s%s>\r\nRecord-Route: <sip:%s%s%s>\r\n",
                                      tok, at, int_u, tok, at, ext_u);
            else if (!hide)
                n += (size_t)snprintf(ins + n, sizeof(ins) - n,
                                      "Record-Route: <sip:%s%s%s>\r\nRecord-Route: <sip:%s%s%s>\r\n",
                                      tok, at, ext_u, tok, at, int_u);
            else
                n = hidden_record_route(&topo, m, tok, ext_u, int_u, ins, n, sizeof(ins));
        }
    }
    if (from_ext && method_is(m, "REGISTER") && *tok && n < sizeof(ins)) {
        char int_u[160];
        const struct addr *ia = side_addr(ae, AE_INT, dest.tp);
        if (ia) {
            fmt_uri_host(ia, dest.tp, int_u, sizeof(int_u), true);
            n += (size_t)snprintf(ins + n, sizeof(ins) - n, "Path: <sip:%s@%s>\r\n", tok, int_u);
        }
    }
    if (from_ext && n < sizeof(ins)) {
        trust_line(ae, o, ins + n, sizeof(ins) - n);
        n += strlen(ins + n);
    }
    if (n >= sizeof(ins)) {
        struct sip_verdict v = {513, "Message Too Large", "too_large", "Message too large"};
        ae_reject(ae, o, m, &v, NULL);
        return;
    }
    /* Hiding: the received Vias, Record-Routes and Contacts leave; ins has what replaces
     * them. A Path never leaves (it names the inside). */
    uint32_t hidden = SIP_HDR_BIT(SIP_H_VIA) | SIP_HDR_BIT(SIP_H_RECORD_ROUTE) |
                      SIP_HDR_BIT(SIP_H_CONTACT) | SIP_HDR_BIT(SIP_H_PATH);
    /* From outside, the received Route lines all go: what is kept of them is in ins. */
    uint32_t routes_drop = o->side == AE_EXT ? SIP_HDR_BIT(SIP_H_ROUTE) : 0;
    struct sip_fwd_opts fo = {.insert = slice_make(ins, n),
                              .pop_routes = o->side == AE_EXT ? 0 : r->pop,
                              .src = hide ? NULL : o->peer,
                              .drop = SIP_HDR_BIT(SIP_H_TRUST) | routes_drop | (hide ? hidden : 0),
                              .ruri = slice_make(ruri, ruri_len > 0 ? (size_t)ruri_len : 0)};
    ssize_t len = sip_fwd_request(m, &fo, ae->out, AE_OUT_CAP);
    if (len < 0) {
        struct sip_verdict v = {513, "Message Too Large", "too_large", "Message too large"};
        ae_reject(ae, o, m, &v, NULL);
        return;
    }
    int rc = ae_send(ae, &dest, ae->out, (size_t)len);
    if (is_invite && (rc >= 0 || rc == -ENOBUFS))
        retx_track(ae, h, &dest, ae->out, (size_t)len);
    if (rc < 0 && rc != -ENOBUFS) {
        LOGD(ae->log, &dest.addr, "sip: send failed: %s", uv_strerror(rc));
        if (r->kind == SIP_ROUTE_FLOW || rc == -ENOTCONN) {
            struct sip_verdict v = {430, "Flow Failed", "no_flow", "Flow failed"};
            ae_reject(ae, o, m, &v, NULL);
        }
    }
}

static void partner_account(struct ae *ae, struct ae_conn *c, int status);

/* Which received lines a response loses to topo_response()'s replacements. */
static uint32_t topo_response_drops(const struct ae_origin *o, const struct sip_msg *m)
{
    if (o->side == AE_EXT)
        return SIP_HDR_BIT(SIP_H_RECORD_ROUTE);
    uint32_t d = SIP_HDR_BIT(SIP_H_RECORD_ROUTE) | SIP_HDR_BIT(SIP_H_PATH);
    /* A REGISTER's 200 lists the outside user's own bindings: not ours to hide. */
    if (!slice_eq_str(sip_cseq_method(m), "REGISTER"))
        d |= SIP_HDR_BIT(SIP_H_CONTACT);
    return d;
}

/* Topology hiding on a response (sip_topo.h): going out, the replacement Record-Route and
 * Contact lines; coming in, the Record-Route set with what we sealed put back. Writes them
 * to out and returns the length, -EACCES (a forged token) or -ENOSPC. */
static ssize_t topo_response(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                             uint64_t h, uint32_t cid, char *out, size_t cap)
{
    if (o->side == AE_EXT) {
        ssize_t n = m->count[SIP_H_RECORD_ROUTE]
                        ? sip_topo_open_response_rr(ae->flow_key, m, out, cap)
                        : 0;
        return n == -ENOSPC ? -EACCES : n;
    }
    if (!ae->cfg->topology_hiding)
        return 0;
    struct sip_topo t;
    char ext[160];
    struct own_check ext_side = {ae, true};
    /* Contacts point at the transport the response leaves on, as the request came. */
    struct ae_conn *c = conn_get(ae, cid);
    topo_init(ae, uv_hrtime() ^ h, c ? c->tp : AE_TP_UDP, &t, ext, sizeof(ext));
    ssize_t rl = sip_topo_hide_response_rr(&t, m, entry_is_own, &ext_side, out, cap);
    ssize_t cl = 0;
    if (rl >= 0 && (topo_response_drops(o, m) & SIP_HDR_BIT(SIP_H_CONTACT)))
        cl = sip_topo_hide_contacts(&t, m, out + rl, cap - (size_t)rl);
    return rl < 0 || cl < 0 ? -ENOSPC : rl + cl;
}

static void ae_forward_response(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m)
{
    /* RFC 3261 §16.7: the top Via must be ours; it is removed and the response follows
     * the next one. Our branch names the connection the request came on. */
    const struct sip_hdr *vh = sip_msg_find(m, SIP_H_VIA);
    struct slice host;
    uint16_t port;
    uint64_t h;
    uint32_t cid;
    char hb[ADDR_STRLEN];
    if (!sip_via_sent_by(sip_hdr_value(m, vh), &host, &port) ||
        slice_to_cstr(host, hb, sizeof(hb)) < 0 || !sip_policy_is_own(&ae->policy, hb, port) ||
        !sip_branch_parse(sip_top_branch(m), &h, &cid)) {
        metric_inc(ae->m_dropped);
        LOGD(ae->log, o->peer, "sip: response not for us, dropped");
        return;
    }
    struct slice cm = sip_cseq_method(m);
    if ((h & ~0xffULL) == AE_HEALTH_MAGIC && cid == 0 && slice_eq_str(cm, "OPTIONS")) {
        size_t k = (size_t)(h & 0xff);
        if (k < ae->ndirs) {
            if (!ae->dirs[k].up)
                LOGI(ae->log, o->peer, "sip: Director answering: up");
            ae->dirs[k].up = true;
            ae->dirs[k].last_ok = uv_now(ae->loop);
        }
        return; /* any answer proves it alive; it goes no further */
    }
    if (slice_eq_str(cm, "INVITE")) {
        struct ae_txn *t = ae_txn_find(ae->txns, h);
        if (t)
            t->answered = true; /* the INVITE got there: no more retransmissions */
        if (m->status == 100)
            return; /* hop by hop: we sent our own */
        if (t && m->status >= 200 && !t->final) {
            t->final = true;
            t->t_ms = uv_now(ae->loop);
        }
    } else if (slice_eq_str(cm, "CANCEL")) {
        struct ae_txn *t = ae_txn_find(ae->txns, h);
        if (t && t->cancelled)
            return; /* we answered the CANCEL ourselves */
    } else if (m->status >= 200) {
        struct ae_txn *t = ae_txn_find(ae->txns, h);
        if (t && t->noninvite)
            ae_txn_del(ae->txns, t); /* after the answer is sent: check_drained below */
    }
    /* Topology hiding: the Vias we sealed into ours come back in the order they were. */
    char ins[16384];
    size_t il = 0;
    struct slice sealed;
    bool restored = false;
    if (o->side == AE_EXT && sip_param_find(sip_hdr_value(m, vh), "ae-th", &sealed)) {
        ssize_t r = sip_unseal(ae->flow_key, sealed, (uint8_t *)ins, 4096);
        if (r < 0) {
            ae_count_reject(ae, "tampered");
            LOGI(ae->log, o->peer, "sip: response with a forged topology-hiding seal dropped");
            return;
        }
        il = (size_t)r;
        restored = true;
    }
    ssize_t tl = topo_response(ae, o, m, h, cid, ins + il, sizeof(ins) - il - 1);
    if (tl < 0) {
        ae_count_reject(ae, tl == -EACCES ? "tampered" : "too_large");
        LOGI(ae->log, o->peer, "sip: response dropped: %s",
             tl == -EACCES ? "forged Record-Route token" : "too large to hide");
        return;
    }
    /* Coming in, only a restored set replaces the received lines; going out with hiding on,
     * the inside's lines always go (tl may be 0: nothing of theirs is left to show). */
    uint32_t drop = SIP_HDR_BIT(SIP_H_TRUST);
    if (o->side == AE_EXT ? tl > 0 : ae->cfg->topology_hiding)
        drop |= topo_response_drops(o, m);
    il += (size_t)tl;
    ins[il] = 0;
    if (o->side == AE_EXT)
        trust_line(ae, o, ins + il, sizeof(ins) - il);
    ssize_t len = sip_fwd_response(m, slice_str(ins), drop, ae->out, AE_OUT_CAP);
    if (len <= 0)
        return;
    struct ae_dest dest = {0};
    dest.side = o->side == AE_EXT ? AE_INT : AE_EXT;
    if (cid) {
        struct ae_conn *c = conn_get(ae, cid);
        if (!c) {
            metric_inc(ae->m_dropped);
            return;
        }
        partner_account(ae, c, m->status);
        dest.tp = c->tp;
        dest.conn_id = cid;
        dest.addr = c->peer;
    } else {
        dest.tp = AE_TP_UDP;
        int hr;
        if (restored) {
            /* The next hop is the first restored Via of the message we built. */
            hr = sip_msg_scan(&ae->msg2, ae->out, (size_t)len, true, AE_OUT_CAP) > 0
                     ? sip_response_hop_at(&ae->msg2, 0, &dest.addr)
                     : -EINVAL;
        } else {
            hr = sip_response_next_hop(m, &dest.addr);
        }
        if (hr < 0) {
            metric_inc(ae->m_dropped);
            return;
        }
    }
    ae_send(ae, &dest, ae->out, (size_t)len);
}

static bool domain_listed(char *const *list, size_t n, const char *domain)
{
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(list[i], domain) == 0)
            return true;
    return false;
}

static struct ae_partner *partner_get(struct ae *ae, const char *domain, int *index)
{
    for (size_t i = 0; i < ae->npartners; i++)
        if (strcasecmp(ae->partners[i].domain, domain) == 0) {
            *index = (int)i;
            return &ae->partners[i];
        }
    if (ae->npartners >= AE_PARTNERS_MAX)
        return NULL;
    struct ae_partner *p = &ae->partners[ae->npartners];
    memset(p, 0, sizeof(*p));
    snprintf(p->domain, sizeof(p->domain), "%s", domain);
    *index = (int)ae->npartners++;
    return p;
}

static uint64_t ruri_hash(const struct sip_msg *m)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < m->ruri.len && m->ruri.p[i] != ';'; i++) {
        h ^= (uint8_t)(m->ruri.p[i] | 0x20);
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Federation policy on a validated request: Block list, watch list, discovered-partner
 * rate. Returns 0 to go on, 1 when the request was answered. */
static int ae_policy(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                     const struct sip_route *r, enum sip_source src)
{
    const struct ae_federation_config *fc = &ae->cfg->federation;
    const char *peer_domain = o->side == AE_EXT ? r->from_domain : r->ruri_domain;
    if (fc->nblock && domain_listed(fc->block, fc->nblock, peer_domain)) {
        struct sip_verdict v = {403, "Forbidden", "blocked", ""};
        snprintf(v.text, sizeof(v.text), "Domain blocked: %s", peer_domain);
        ae_reject(ae, o, m, &v, NULL);
        return 1;
    }
    if (src != SIP_SRC_DISCOVERED || !o->conn)
        return 0;
    int idx;
    struct ae_partner *p = partner_get(ae, r->from_domain, &idx);
    if (!p) {
        struct sip_verdict v = {503, "Service Unavailable", "overload", "Too many partners"};
        ae_reject(ae, o, m, &v, "Retry-After: 60\r\n");
        return 1;
    }
    o->conn->partner = idx;
    if (!p->watched && !r->in_dialog) {
        uint64_t h = ruri_hash(m);
        bool seen = false;
        for (uint32_t i = 0; i < p->nusers && !seen; i++)
            seen = p->users[i] == h;
        if (!seen) {
            if (p->nusers == p->cap) {
                uint32_t ncap = p->cap ? p->cap * 2 : 16;
                uint64_t *n = realloc(p->users, ncap * sizeof(*n));
                if (n) {
                    p->users = n;
                    p->cap = ncap;
                }
            }
            if (p->nusers < p->cap)
                p->users[p->nusers++] = h;
            if (p->nusers > fc->max_contacts) {
                /* PROTOCOLS.md §1.2: more distinct users than allowed: watch list. */
                p->watched = true;
                p->watched_at = time_wall_s();
                metric_inc(ae->m_watch);
                LOGW(ae->log, o->peer, "sip: partner %s addressed %u distinct users: watch list",
                     p->domain, p->nusers);
            }
        }
    }
    if (p->watched) {
        struct sip_verdict v = {403, "Forbidden", "watchlist", ""};
        snprintf(v.text, sizeof(v.text), "Partner on the watch list: %s", p->domain);
        ae_reject(ae, o, m, &v, NULL);
        return 1;
    }
    uint32_t retry = 1;
    if (!ratelimit_take(ae->fed_rl, p->domain, strlen(p->domain), 1, uv_now(ae->loop), &retry)) {
        char ra[40];
        snprintf(ra, sizeof(ra), "Retry-After: %u\r\n", retry ? retry : 1);
        struct sip_verdict v = {503, "Service Unavailable", "rate_limited",
                                "Partner rate limit exceeded"};
        ae_reject(ae, o, m, &v, ra);
        return 1;
    }
    return 0;
}

/* A final response going back to a discovered partner: judge its failure ratio. */
static void partner_account(struct ae *ae, struct ae_conn *c, int status)
{
    if (!c || c->src != SIP_SRC_DISCOVERED || c->partner < 0 ||
        (size_t)c->partner >= ae->npartners || status < 200)
        return;
    struct ae_partner *p = &ae->partners[c->partner];
    if (status < 300)
        p->ok++;
    else
        p->fail++;
    if (!p->suspicious && p->fail >= 10 && p->fail > 2 * p->ok) {
        p->suspicious = true;
        ratelimit_set_rate(ae->fed_rl, p->domain, strlen(p->domain),
                           ae->cfg->federation.suspicious_rate, uv_now(ae->loop));
        LOGW(ae->log, &c->peer, "sip: partner %s looks suspicious (%u failed, %u ok): %u/s",
             p->domain, p->fail, p->ok, ae->cfg->federation.suspicious_rate);
    }
}

static void on_admin_watchlist(const char *method, const char *path, const char *query,
                               const char *body, size_t body_len, struct admin_reply *reply,
                               void *arg)
{
    struct ae *ae = arg;
    size_t cap = 64 + ae->npartners * 256, n = 0;
    char *out = malloc(cap);
    if (!out) {
        admin_reply_printf(reply, 500, "text/plain", "out of memory\n");
        return;
    }
    n += (size_t)snprintf(out + n, cap - n, "{\"partners\":[");
    for (size_t i = 0; i < ae->npartners; i++) {
        const struct ae_partner *p = &ae->partners[i];
        n += (size_t)snprintf(out + n, cap - n,
                              "%s{\"domain\":\"%s\",\"distinct_users\":%u,\"ok\":%u,"
                              "\"failed\":%u,\"suspicious\":%s,\"watched\":%s,\"since\":%lld}",
                              i ? "," : "", p->domain, p->nusers, p->ok, p->fail,
                              p->suspicious ? "true" : "false", p->watched ? "true" : "false",
                              (long long)p->watched_at);
    }
    n += (size_t)snprintf(out + n, cap - n, "]}\n");
    reply->status = 200;
    reply->content_type = "application/json";
    reply->body = out;
    reply->body_len = n;
}

/* limits.exempt: an address many users share (a PBX, a carrier's NAT) is not one abuser. */
static bool ae_exempt(const struct ae *ae, const struct addr *peer)
{
    return cidr_list_contains(ae->cfg->limits.exempt, ae->cfg->limits.nexempt, peer);
}

/* One framed message from origin o (m already scanned). Returns -EBADMSG when the sender
 * must be cut off (stream) or ignored (UDP). */
static int ae_handle(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m)
{
    metric_inc(ae->m_in[o->side]);
    enum sip_source src = o->conn ? o->conn->src : (o->side == AE_EXT ? SIP_SRC_REMOTE_USER
                                                                       : SIP_SRC_INTERNAL);
    if (o->side == AE_EXT && m->is_request && !method_is(m, "ACK") && !ae_exempt(ae, o->peer)) {
        uint32_t retry = 1;
        size_t klen;
        const void *key = addr_host_bytes(o->peer, &klen);
        if (!ratelimit_take(ae->rl, key, klen, 1, uv_now(ae->loop), &retry)) {
            char ra[40];
            snprintf(ra, sizeof(ra), "Retry-After: %u\r\n", retry ? retry : 1);
            struct sip_verdict v = {503, "Service Unavailable", "rate_limited",
                                    "Rate limit exceeded"};
            ae_count_reject(ae, v.reason);
            /* A UDP source may be spoofed, and a 503 is larger than most requests: answer
             * only a few a second per source (limits.reject_rate), drop the rest. */
            if (o->udp && !ratelimit_take(ae->reject_rl, key, klen, 1, uv_now(ae->loop), NULL)) {
                metric_inc(ae->m_silent);
                return 0;
            }
            ae_reply(ae, o, m, 503, v.phrase, v.text, ra);
            return 0;
        }
    }
    if (o->conn && o->conn->mtls && o->side == AE_EXT && m->is_request && !o->conn->has_alias) {
        const struct sip_hdr *vh = sip_msg_find(m, SIP_H_VIA);
        struct slice host, av;
        uint16_t port;
        char hb[ADDR_STRLEN];
        if (vh && sip_param_find(sip_hdr_value(m, vh), "alias", &av) &&
            sip_via_sent_by(sip_hdr_value(m, vh), &host, &port) &&
            slice_to_cstr(host, hb, sizeof(hb)) == 0 &&
            addr_parse(&o->conn->alias, hb, port ? port : 5061) == 0 &&
            addr_host_eq(&o->conn->alias, o->peer)) {
            /* Only for the address the connection really comes from (RFC 5923 §5 asks for
             * the certificate to vouch; mutual TLS already did). */
            if (port)
                addr_set_port(&o->conn->alias, port);
            o->conn->has_alias = true;
        }
    }
    /* Past saturation: new dialogs and registrations get 503 at once (cheap, and the
     * connection stays up); what is in progress (in-dialog, responses) still flows. */
    const struct sip_hdr *toh = sip_msg_find(m, SIP_H_TO);
    if (m->is_request && ae->overloaded_until > uv_now(ae->loop) && toh &&
        (method_is(m, "INVITE") || method_is(m, "REGISTER") || method_is(m, "SUBSCRIBE")) &&
        !sip_param_find(sip_hdr_value(m, toh), "tag", NULL) &&
        !ae_txn_find(ae->txns, sip_branch_hash(ae->salt, m))) {
        struct sip_verdict v = {503, "Service Unavailable", "overload", "Overloaded"};
        ae_count_reject(ae, v.reason);
        ae_reply(ae, o, m, 503, v.phrase, v.text, "Retry-After: 2\r\n");
        return 0;
    }
    struct sip_peer peer = {src, o->peer, o->conn ? o->conn->name_ptrs : NULL,
                            o->conn ? o->conn->nnames : 0};
    struct sip_verdict v;
    struct sip_route r;
    struct sip_parsed *sp = NULL;
    int rc = sip_validate(&ae->policy, &peer, m, &v, &r, &sp);
    if (rc < 0) {
        metric_inc(ae->m_unparseable);
        if (noise_ok(ae))
            LOGI(ae->log, o->peer, "sip: unparseable %s dropped",
                 m->is_request ? "request" : "response");
        return -EBADMSG;
    }
    if (rc == 1) {
        if (m->is_request) {
            const char *extra = v.extra[0] ? v.extra : NULL;
            char allow[300];
            if (v.status == 405) {
                snprintf(allow, sizeof(allow), "Allow: %s\r\n", sip_allow_list(src));
                extra = allow;
            }
            ae_reject(ae, o, m, &v, extra);
        } else {
            ae_count_reject(ae, v.reason);
        }
        return 0;
    }
    if (m->is_request && ae_policy(ae, o, m, &r, src) != 0) {
        sip_parsed_free(sp);
        return 0;
    }
    if (m->is_request)
        ae_forward_request(ae, o, m, &r);
    else
        ae_forward_response(ae, o, m);
    sip_parsed_free(sp);
    return 0;
}

/* ---- UDP ---- */

static void on_udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    struct ae_udp *u = h->data;
    /* One static buffer: recvmmsg fills it in 64 KiB slots, each processed before the next
     * read (libuv calls back synchronously for every slot). */
    *b = uv_buf_init((char *)u->ae->mmsg, sizeof(u->ae->mmsg));
}

static void on_udp_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *b, const struct sockaddr *from,
                        unsigned flags)
{
    struct ae_udp *u = h->data;
    struct ae *ae = u->ae;
    if (n <= 0 || !from)
        return;
    struct addr peer;
    if (addr_from_sockaddr(&peer, from) < 0)
        return;
    const uint8_t *p = (const uint8_t *)b->base;
    size_t len = (size_t)n;
    /* A keep-alive (RFC 5626 §4.4.1 uses STUN on UDP; CRLF is common): ignore it. */
    size_t k = 0;
    while (k < len && (p[k] == '\r' || p[k] == '\n'))
        k++;
    if (k == len)
        return;
    size_t cap = u->side == AE_EXT ? ae->cfg->limits.max_client_message
                                   : ae->cfg->limits.max_server_message;
    ssize_t r = sip_msg_scan(&ae->msg, p + k, len - k, true, cap);
    struct ae_origin o = {u->side, AE_TP_UDP, u, NULL, &peer};
    if (r < 0) {
        metric_inc(ae->m_unparseable);
        if (noise_ok(ae))
            LOGI(ae->log, &peer, "sip: unparseable datagram (%zd bytes) dropped", n);
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
        if (!conn_get(ae, c->id))
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
        if (!conn_get(ae, c->id))
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
        if (rc < 0 || !conn_get(ae, c->id))
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
        LOGW(ae->log, &c->peer, "sip: partner edge unreachable (%s): its domains use their "
             "next SRV target for %d s", why ? why : strerror(-err), AE_PARTNER_HOLD_MS / 1000);
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
    size_t cap = side == AE_EXT ? ae->cfg->limits.max_client_message
                                : ae->cfg->limits.max_server_message;
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

static void on_accept(uv_stream_t *server, int status)
{
    struct ae_listener *l = server->data;
    struct ae *ae = l->ae;
    if (status < 0)
        return;
    struct ae_conn *c = ae->draining ? NULL : conn_new(ae, l->side, l->tp, l->mtls);
    struct stream_opts so = {
        .tls = l->tp == AE_TP_TLS
                   ? (l->side == AE_EXT ? (l->mtls ? ae->tls_ext_mtls : ae->tls_ext)
                                        : ae->tls_int_server)
                   : NULL,
        .write_cap = 256 * 1024,
        .handshake_timeout_ms = (uint32_t)ae->cfg->limits.handshake_timeout_ms,
        .idle_timeout_ms = (uint32_t)ae->cfg->limits.idle_timeout_ms,
        .gate = ae->hs_gate,
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

static int ae_connect(struct ae *ae, uint8_t side, uint8_t tp, const struct addr *to,
                      const char *server_name, struct ae_conn **out)
{
    struct ae_conn *c = conn_new(ae, side, tp, tp == AE_TP_TLS);
    if (!c)
        return -EMFILE;
    c->outbound = true;
    c->peer = *to;
    const struct addr *la = side_addr(ae, side, tp);
    if (la)
        c->local = *la;
    struct stream_opts so = {
        .tls = tp == AE_TP_TLS ? (side == AE_INT ? ae->tls_int_client : ae->tls_ext_client) : NULL,
        .server_name = server_name,
        .write_cap = 4 * 1024 * 1024,
        .handshake_timeout_ms = (uint32_t)ae->cfg->limits.handshake_timeout_ms,
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

/* ---- lifecycle ---- */

static void check_drained(struct ae *ae);

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

/* Timer A for INVITEs forwarded over UDP (ae_retx.h): each waits for its first answer. */
static void on_retx(uv_timer_t *timer)
{
    struct ae *ae = timer->data;
    uint64_t now = uv_now(ae->loop);
    struct dlist *e = ae->retx.next, *next;
    for (; e != &ae->retx; e = next) {
        next = e->next;
        struct ae_retx *r = container_of(e, struct ae_retx, link);
        const struct ae_txn *t = ae_txn_find(ae->txns, r->key);
        bool waiting = t && !t->answered && !t->cancelled;
        enum ae_retx_step step = waiting ? ae_retx_step(r, now) : AE_RETX_GIVE_UP;
        if (step == AE_RETX_SEND) {
            metric_inc(ae->m_retx);
            (void)ae_send(ae, &r->dest, r->data, r->len);
            continue;
        }
        if (step == AE_RETX_WAIT)
            continue;
        dl_del(&r->link);
        if (waiting) {
            metric_inc(ae->m_retx_timeout);
            LOGI(ae->log, &r->dest.addr, "sip: no answer to a forwarded INVITE in %u s",
                 AE_RETX_TIMER_B_MS / 1000);
            fail_forwarded(ae, r, 408, "Request Timeout", NULL);
            for (size_t k = 0; k < ae->ndirs; k++)
                if (dest_is_director(ae, &r->dest, k))
                    director_down(ae, k, "an INVITE unanswered");
        }
        free(r);
    }
    if (dl_empty(&ae->retx))
        uv_timer_stop(timer);
}

static void retx_track(struct ae *ae, uint64_t key, const struct ae_dest *d, const uint8_t *p,
                       size_t n)
{
    struct ae_retx *r = ae_retx_new(key, d, p, n, uv_now(ae->loop));
    if (!r)
        return; /* the sender's own timers are what is left */
    if (dl_empty(&ae->retx) && !ae->stopping)
        uv_timer_start(&ae->retx_timer, on_retx, 100, 100);
    dl_add(ae->retx.prev, &r->link);
}

static void retx_free_all(struct ae *ae)
{
    while (!dl_empty(&ae->retx)) {
        struct dlist *e = ae->retx.next;
        dl_del(e);
        free(container_of(e, struct ae_retx, link));
    }
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
    noise_flush(ae, now);
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
    check_drained(ae);
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
static void ae_unref(struct ae *ae)
{
    if (--ae->open_handles == 0) {
        retx_free_all(ae);
        tls_ctx_unref(ae->tls_ext);
        tls_ctx_unref(ae->tls_ext_mtls);
        tls_ctx_unref(ae->tls_int_server);
        tls_ctx_unref(ae->tls_int_client);
        tls_ctx_unref(ae->tls_ext_client);
        ae_txn_table_destroy(ae->txns);
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
    struct ae_udp *u = &ae->udp[ae->nudp];
    u->ae = ae;
    u->side = side;
    u->local = *a;
    int rc = uv_udp_init_ex(ae->loop, &u->h, (unsigned)addr_family(a) | UV_UDP_RECVMMSG);
    if (rc < 0)
        return rc;
    ae->nudp++;
    ae->open_handles++;
    u->h.data = u;
    rc = uv_udp_bind(&u->h, &a->u.sa, UV_UDP_REUSEADDR);
    if (rc == 0) {
        int sz = 4 * 1024 * 1024;
        uv_recv_buffer_size((uv_handle_t *)&u->h, &sz);
        sz = 4 * 1024 * 1024;
        uv_send_buffer_size((uv_handle_t *)&u->h, &sz);
        rc = uv_udp_recv_start(&u->h, on_udp_alloc, on_udp_recv);
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
    int rc = stream_listen(ae->loop, &l->h, a, 1024, false, on_accept);
    if (rc < 0)
        return rc;
    l->h.data = l;
    ae->nlst++;
    ae->open_handles++;
    return 0;
}

int ae_start(uv_loop_t *loop, const struct ae_config *cfg, const struct logger *log,
             struct metrics *m, struct admin *admin, struct ae **out)
{
    struct ae *ae = calloc(1, sizeof(*ae));
    if (!ae)
        return -ENOMEM;
    ae->loop = loop;
    ae->cfg = cfg;
    ae->log = log;
    ae->metrics = m;
    dl_init(&ae->retx);
    fdlimit_check(log, "limits.max_connections", cfg->limits.max_connections);
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
        ratelimit_destroy(ae->rl);
        ratelimit_destroy(ae->reject_rl);
        ratelimit_destroy(ae->fed_rl);
        free(ae->partners);
        free(ae->conns);
        free(ae->own);
        free(ae->domains);
        free(ae);
        return rc;
    }

    static const char *const side_l[2] = {"side=\"external\"", "side=\"internal\""};
    for (int s = 0; s < 2; s++) {
        ae->m_in[s] = metrics_counter(m, "sip_messages_in_total", "SIP messages received",
                                      side_l[s]);
        ae->m_out[s] = metrics_counter(m, "sip_messages_out_total", "SIP messages sent",
                                       side_l[s]);
    }
    ae->m_silent = metrics_counter(m, "sip_rate_limited_silent_total",
                                   "over-limit UDP requests dropped without a 503 (beyond "
                                   "limits.reject_rate)", NULL);
    ae->m_slow = metrics_counter(m, "sip_slow_messages_total",
                                 "stream connections closed: a message took longer than "
                                 "limits.message_timeout", NULL);
    ae->m_unparseable = metrics_counter(m, "sip_unparseable_total",
                                        "messages dropped (UDP) or connections closed because "
                                        "they did not parse", NULL);
    ae->m_dropped = metrics_counter(m, "sip_dropped_total",
                                    "messages dropped (stray responses, full queues)", NULL);
    ae->m_conns = metrics_gauge(m, "sip_connections", "open TCP/TLS connections", NULL);
    ae->m_watch = metrics_counter(m, "sip_watchlist_additions_total",
                                  "discovered partners put on the watch list", NULL);
    ae->admin = admin;
    if (admin)
        admin_route(admin, "/watchlist", on_admin_watchlist, ae);
    ae->m_txns = metrics_gauge(m, "sip_transactions",
                               "transactions in flight (INVITE, and non-INVITE awaiting their "
                               "final answer)", NULL);
    ae->m_retx = metrics_counter(m, "sip_invite_retransmissions_total",
                                 "INVITEs sent again over UDP for want of an answer (Timer A)",
                                 NULL);
    ae->m_retx_timeout = metrics_counter(m, "sip_invite_timeouts_total",
                                         "forwarded UDP INVITEs never answered (Timer B)", NULL);
    ae->m_route_stripped = metrics_counter(m, "sip_routes_stripped_total",
                                           "Route entries from outside removed because they were "
                                           "not the edge's own (route_policy: strip)", NULL);
    for (size_t i = 0; reject_reasons[i]; i++) {
        char l[64];
        snprintf(l, sizeof(l), "reason=\"%s\"", reject_reasons[i]);
        ae->m_reject[i] = metrics_counter(m, "sip_rejected_total",
                                          "messages refused by the edge, by reason", l);
    }

    /* TLS contexts: server-auth for remote users, mutual for partners and the inside. */
    rc = ae_tls_build(cfg, log, ae_tls_slots(ae));
    if (rc == 0 && (rc = ae_dns_create(loop, cfg->federation.dns_servers, &ae->dns)) < 0)
        LOGE(log, NULL, "sip: DNS resolver setup failed (dns_servers %s)",
             cfg->federation.dns_servers ? cfg->federation.dns_servers : "system");

    const struct ae_side_config *sides[2] = {&cfg->external, &cfg->internal};
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
    ae->ndirs = 1 + cfg->next_hop.nbackups;
    if (ae->ndirs > AE_DIRECTORS_MAX)
        ae->ndirs = AE_DIRECTORS_MAX;
    for (size_t k = 0; k < ae->ndirs; k++) {
        char l[64];
        snprintf(l, sizeof(l), "director=\"%zu\"", k);
        ae->m_dir_up[k] = metrics_gauge(m, "sip_director_up",
                                        "1 while the Director answers its health checks", l);
        ae->dirs[k].up = k == 0; /* optimistic for the first until checks say otherwise */
        ae->dirs[k].last_ok = uv_now(loop);
    }
    uv_timer_init(loop, &ae->lag);
    ae->open_handles++;
    ae->lag.data = ae;
    ae->lag_expected = uv_hrtime() + 20 * 1000000ULL;
    uv_timer_start(&ae->lag, on_lag, 20, 20);
    uv_timer_init(loop, &ae->health);
    ae->open_handles++;
    ae->health.data = ae;
    uv_timer_start(&ae->health, on_health, 10, cfg->next_hop.health_interval_ms);
    uv_timer_init(loop, &ae->sweep);
    ae->open_handles++;
    ae->sweep.data = ae;
    uv_timer_start(&ae->sweep, on_sweep, 1000, 1000);
    uv_timer_init(loop, &ae->retx_timer);
    ae->open_handles++;
    ae->retx_timer.data = ae;
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
    int rc = ae_tls_build(cfg, ae->log, ae_tls_slots(ae));
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

static void check_drained(struct ae *ae)
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
    check_drained(ae);
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
    for (size_t i = 0; i < ae->nudp; i++) {
        uv_udp_recv_stop(&ae->udp[i].h);
        close_handle(ae, (uv_handle_t *)&ae->udp[i].h);
    }
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
