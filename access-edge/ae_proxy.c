/* The access edge's proxy core (RFC 3261 §16): validates, marks and forwards each message,
 * requests and responses, with topology hiding. Every message is parsed once and forwarded
 * by splicing its bytes. */
#include "access-edge/ae_fwd.h"
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

/* ---- log lines about bad input ---- */

#define AE_NOISE_LINES 10

/* Says what was held back in the second that ended (at most one line a second). */
void ae_noise_flush(struct ae *ae, uint64_t now)
{
    uint64_t held, span;
    if (log_limit_flush(&ae->noise_log, now, &held, &span))
        LOGI(ae->log, NULL, "sip: %llu more lines about bad input suppressed in the last %llu ms",
             (unsigned long long)held, (unsigned long long)span);
}

/* May a line about bad input (unparseable, rejected) be written now? A flood of bad
 * packets must not become a flood of log lines: beyond AE_NOISE_LINES a second they are
 * only counted (the metrics count each one). */
bool ae_noise_ok(struct ae *ae)
{
    uint64_t now = uv_now(ae->loop), held;
    ae_noise_flush(ae, now);
    return log_limit_pass_n(&ae->noise_log, now, 1000, AE_NOISE_LINES, &held);
}

/* ---- replies ---- */

static void ae_reply(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m, int status,
                     const char *phrase, const char *warning, const char *extra)
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
    ssize_t len =
        sip_reply_make_src(m, o->peer, status, phrase, tag, slice_str(lines), ae->out, AE_OUT_CAP);
    if (len < 0)
        return;
    if (o->conn)
        ae_conn_send(o->conn, ae->out, (size_t)len);
    else if (o->udp)
        ae_udp_send(o->udp, o->peer, ae->out, (size_t)len);
}

void ae_reject(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
               const struct sip_verdict *v, const char *extra)
{
    if (m->is_request && slice_eq_str(m->method, "ACK"))
        return; /* never answered, and the ACK of our own refusal is no second refusal */
    ae_count_reject(ae, v->reason);
    if (ae_noise_ok(ae))
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
             tp == AE_TP_TCP   ? ";transport=tcp"
             : tp == AE_TP_TLS ? ";transport=tls"
                               : "",
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
    const struct addr *a = ae_side_addr(ae, AE_EXT, tp);
    char h[ADDR_STRLEN];
    snprintf(ext, cap, "%s%s", a ? addr_format(a, h) : ae->cfg->fqdn,
             tp == AE_TP_TCP   ? ";transport=tcp"
             : tp == AE_TP_TLS ? ";transport=tls"
                               : "");
    *t = (struct sip_topo){ae->flow_key, nonce, slice_str(ext)};
}

/* The edge's one Record-Route entry toward the Internet: the external one, carrying the
 * internal entry and the inside's own Record-Routes sealed (sip_topo.h). Returns the new
 * length of ins (cap when it does not fit). */
static size_t hidden_record_route(const struct sip_topo *t, const struct sip_msg *m,
                                  const char *tok, const char *ext_u, const char *int_u, char *ins,
                                  size_t n, size_t cap)
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
    ssize_t kl =
        sip_route_write_kept(&plan, routes + *routes_len, routes_cap - (size_t)*routes_len);
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

/* The first Director that answers its health checks, in configured order, connected if
 * it is reached over a stream. Returns 0, or 1 when the request was answered. */
static int dest_director(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                         struct ae_dest *dest)
{
    const struct ae_config *cfg = ae->cfg;
    size_t k = 0;
    while (k < ae->ndirs && !ae->dirs[k].up)
        k++;
    if (k == ae->ndirs) {
        /* None answers: say so now rather than let the caller time out. */
        struct sip_verdict v = {503, "Service Unavailable", "next_hop_down",
                                "Next hop unreachable"};
        ae_reject(ae, o, m, &v, "Retry-After: 5\r\n");
        return 1;
    }
    dest->side = AE_INT;
    dest->tp = (uint8_t)cfg->next_hop.transport;
    dest->addr = ae_director_addr(cfg, k);
    dest->conn_id = dest->tp == AE_TP_UDP ? 0 : ae->dirs[k].conn;
    if (dest->tp != AE_TP_UDP && !ae_conn_get(ae, dest->conn_id)) {
        struct ae_conn *c;
        if (ae_connect(ae, AE_INT, dest->tp, &dest->addr, cfg->next_hop.server_name, &c) < 0) {
            struct sip_verdict v = {503, "Service Unavailable", "unroutable",
                                    "Next hop unreachable"};
            ae_reject(ae, o, m, &v, "Retry-After: 5\r\n");
            return 1;
        }
        ae->dirs[k].conn = dest->conn_id = c->id;
    }
    return 0;
}

/* The external flow a signed Route entry names. Returns 0, or 1 when answered (430). */
static int dest_flow(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                     const struct sip_route *r, struct ae_dest *dest)
{
    struct sip_flow f;
    struct ae_conn *c = NULL;
    if (sip_flow_decode(ae->flow_key, r->flow, &f) < 0 ||
        (f.stream && (!(c = ae_conn_get(ae, f.conn_id)) || !addr_eq(&c->peer, &f.addr)))) {
        /* RFC 5626 §5.3: the flow is gone. */
        struct sip_verdict v = {430, "Flow Failed", "no_flow", "Flow failed"};
        ae_reject(ae, o, m, &v, NULL);
        return 1;
    }
    dest->side = AE_EXT;
    dest->tp = c ? c->tp : AE_TP_UDP;
    dest->conn_id = c ? c->id : 0;
    dest->addr = f.addr;
    return 0;
}

/* The Request-URI's host: an address, or a partner domain found by DNS SRV over mutual
 * TLS. Returns 0, or 1 when answered or parked until DNS answers. */
static int dest_uri(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                    const struct sip_route *r, struct ae_dest *dest)
{
    uint16_t port;
    dest->side = AE_EXT;
    dest->tp = ae_fwd_uri_transport(r->tcp, r->tls, r->port, &port);
    if (addr_parse(&dest->addr, r->host, port) < 0) {
        if (ae_federation_target(ae, o, m, r->host, &dest->addr) != 0)
            return 1;
        dest->tp = AE_TP_TLS;
    }
    /* Reuse a connection the peer opened to us (RFC 5923 spirit) before dialing. */
    if (dest->tp == AE_TP_UDP)
        return 0;
    for (size_t i = 0; i < ae->conn_cap; i++) {
        struct ae_conn *c = ae->conns[i];
        if (c && c->side == AE_EXT &&
            (addr_eq(&c->peer, &dest->addr) || (c->has_alias && addr_eq(&c->alias, &dest->addr)))) {
            dest->conn_id = c->id;
            dest->tp = c->tp;
            return 0;
        }
    }
    /* None: dial now, not at the send, so that the Record-Route flow token names the
     * connection the dialog will use (it named connection 0, and the inside's BYE got 430). */
    struct ae_conn *c;
    if (ae_connect(ae, dest->side, dest->tp, &dest->addr, NULL, &c) == 0)
        dest->conn_id = c->id;
    return 0;
}

static enum ae_method method_of(const struct sip_msg *m)
{
    return method_is(m, "INVITE")   ? AE_M_INVITE
           : method_is(m, "CANCEL") ? AE_M_CANCEL
           : method_is(m, "ACK")    ? AE_M_ACK
                                    : AE_M_OTHER;
}

/* Answers m here with status (and counts reason). */
static void answer(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m, int status,
                   const char *phrase, const char *reason, const char *text, const char *extra)
{
    struct sip_verdict v = {status, phrase, reason, "", ""};
    snprintf(v.text, sizeof(v.text), "%s", text);
    ae_reject(ae, o, m, &v, extra);
}

/* Acts on what the transaction table says (ae_fwd_gate). Returns 0 to forward (a CANCEL
 * to *dest, its INVITE's), or 1 when the request was answered here. */
static int txn_gate(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m, uint64_t h,
                    uint64_t now, struct ae_dest *dest)
{
    enum ae_method meth = method_of(m);
    struct ae_txn *t = meth != AE_M_OTHER ? ae_txn_find(ae->txns, h) : NULL;
    enum ae_gate g = ae_fwd_gate(meth, t, ae->draining);
    switch (g) {
    case AE_GATE_INVITE_RETRANS:
        ae_reply(ae, o, m, 100, "Trying", NULL, NULL);
        if (t) /* always: only a known INVITE is a retransmission */
            t->caller_answered = true;
        return 1;
    case AE_GATE_DRAINING:
        answer(ae, o, m, 503, "Service Unavailable", "overload", "Draining", "Retry-After: 30\r\n");
        return 1;
    case AE_GATE_NEW_INVITE:
        t = ae_txn_add(ae->txns, h, now);
        if (!t) {
            answer(ae, o, m, 503, "Service Unavailable", "overload", "Too many calls in progress",
                   "Retry-After: 2\r\n");
            return 1;
        }
        t->dest = *dest; /* its 100 Trying is deferred: fwd_send */
        return 0;
    case AE_GATE_CANCEL_UNKNOWN:
        answer(ae, o, m, 481, "Call/Transaction Does Not Exist", "no_target", "No matching INVITE",
               NULL);
        return 1;
    case AE_GATE_CANCEL_DONE:
    case AE_GATE_CANCEL_FORWARD:
        /* RFC 3261 §16.10: answer the CANCEL here, then cancel the branch we opened. */
        ae_reply(ae, o, m, 200, "OK", NULL, NULL);
        if (g == AE_GATE_CANCEL_DONE || !t) /* the gate gives these only with t */
            return 1;
        t->cancelled = true;
        *dest = t->dest;
        return 0;
    case AE_GATE_FORWARD:
        track_noninvite(ae, h, now);
        return 0;
    case AE_GATE_FORWARD_ACK:
        break;
    case AE_GATE_ABSORB_ACK:
        if (t)
            t->acked = true; /* on_retx stops sending the answer */
        return 1;
    }
    return 0;
}

/* Topology hiding toward the Internet: the inside's Vias, sealed into seal. Returns 0 or
 * -ENOSPC when they do not fit. */
static int seal_vias(struct ae *ae, const struct sip_msg *m, uint64_t h, char *seal, size_t cap)
{
    char vias[4096];
    size_t vl = 0;
    for (uint16_t i = 0; i < m->nhdr; i++) {
        const struct sip_hdr *vh = &m->hdr[i];
        size_t ll = vh->line_end - vh->line_off;
        if (vh->id != SIP_H_VIA)
            continue;
        if (vl + ll > sizeof(vias))
            return -ENOSPC;
        memcpy(vias + vl, m->buf + vh->line_off, ll);
        vl += ll;
    }
    return sip_seal(ae->flow_key, uv_hrtime() ^ h, slice_make(vias, vl), seal, cap) < 0 ? -ENOSPC
                                                                                        : 0;
}

/* What a forwarded request needs to build its inserted lines. */
struct fwd_ctx {
    struct ae *ae;
    const struct ae_origin *o;
    const struct sip_msg *m;
    const struct sip_route *r;
    const struct ae_dest *dest;
    struct ae_conn *dc; /* the connection it leaves on, if any */
    bool from_ext, hide;
    struct sip_topo topo;
    char topo_ext[160];
    char tok[SIP_FLOW_TOKEN_MAX];
};

/* The Record-Route lines of a dialog-creating request (RFC 5658: one per interface), into
 * out. Returns the length (0: none), or -ENOSPC. */
static ssize_t record_route(struct fwd_ctx *x, char *out, size_t cap)
{
    struct ae *ae = x->ae;
    const struct ae_origin *o = x->o;
    char ext_u[160], int_u[160];
    const struct addr *ea = x->from_ext ? (o->conn ? &o->conn->local : &o->udp->local)
                                        : ae_side_addr(ae, AE_EXT, x->dest->tp);
    uint8_t itp = x->from_ext ? x->dest->tp : o->tp;
    const struct addr *ia = ae_side_addr(ae, AE_INT, itp);
    if (!ea || !ia)
        return 0;
    fmt_uri_host(ea, x->from_ext ? o->tp : x->dest->tp, ext_u, sizeof(ext_u), false);
    struct ae_conn *wc = x->from_ext ? o->conn : x->dc;
    if (wc && wc->ws) {
        char h2[ADDR_STRLEN];
        snprintf(ext_u, sizeof(ext_u), "%s;lr;transport=%s", addr_format(ea, h2),
                 wc->tp == AE_TP_TLS ? "wss" : "ws");
    }
    fmt_uri_host(ia, itp, int_u, sizeof(int_u), false);
    /* The interface facing the next hop goes on top. Both entries carry the signed flow
     * token: an in-dialog request from outside keeps only the edge's signed entries
     * (sip_route.h), so the internal entry of a hairpin call's other leg must be verifiable
     * too. */
    if (x->from_ext)
        return ae_fwd_record_route(x->tok, int_u, ext_u, out, cap);
    if (!x->hide)
        return ae_fwd_record_route(x->tok, ext_u, int_u, out, cap);
    size_t n = hidden_record_route(&x->topo, x->m, x->tok, ext_u, int_u, out, 0, cap);
    return n >= cap ? -ENOSPC : (ssize_t)n;
}

/* Our Via: its transport, sent-by and branch. RFC 5923: partner connections are offered for
 * reuse in the other direction (;alias), naming the federation (mutual TLS) listener as our
 * sent-by. Returns 0, or -EADDRNOTAVAIL when the edge has no address to name. */
static int via_fields(struct fwd_ctx *x, uint64_t h, uint32_t cid, struct ae_fwd_ins *in,
                      char hs[ADDR_STRLEN], char br[SIP_BRANCH_MAX])
{
    const struct ae_config *cfg = x->ae->cfg;
    const struct ae_dest *dest = x->dest;
    struct ae_conn *dc = x->dc;
    in->alias = dest->side == AE_EXT && dest->tp == AE_TP_TLS && (!dc || dc->mtls) &&
                !(dc && dc->ws) && cfg->external.nmtls > 0;
    const struct addr *via_a =
        in->alias ? &cfg->external.mtls[0] : ae_side_addr(x->ae, dest->side, dest->tp);
    if (!via_a)
        return -EADDRNOTAVAIL;
    in->via_host = addr_format(via_a, hs);
    sip_branch_format(h, cid, br);
    in->branch = br;
    in->via_tp = dc && dc->ws ? (dc->tp == AE_TP_TLS ? "WSS" : "WS") : ae_tp_name(dest->tp);
    return 0;
}

/* The lines the edge inserts (ae_fwd_build_ins) into ins. Returns the length, -ENOSPC when
 * they are too large, -E2BIG when the inside's Vias are too many to seal, or -EADDRNOTAVAIL
 * when the edge has no address to name in its Via. */
static ssize_t build_ins(struct fwd_ctx *x, uint64_t h, uint32_t cid, struct slice routes,
                         char *ins, size_t cap)
{
    struct ae *ae = x->ae;
    const struct ae_dest *dest = x->dest;
    struct ae_fwd_ins in = {.routes = routes};
    char hs[ADDR_STRLEN], br[SIP_BRANCH_MAX], seal[6000] = "";
    if (via_fields(x, h, cid, &in, hs, br) < 0)
        return -EADDRNOTAVAIL;
    if (x->hide && seal_vias(ae, x->m, h, seal, sizeof(seal)) < 0)
        return -E2BIG;
    in.seal = x->hide ? seal : NULL;
    char contacts[8192], rr[8192], trust[1024];
    if (x->hide) {
        topo_init(ae, uv_hrtime() ^ h, dest->tp, &x->topo, x->topo_ext, sizeof(x->topo_ext));
        ssize_t cl = sip_topo_hide_contacts(&x->topo, x->m, contacts, sizeof(contacts));
        if (cl < 0)
            return -ENOSPC;
        in.contacts = slice_make(contacts, (size_t)cl);
    }
    bool dialog = creates_dialog(x->m) && !x->r->in_dialog;
    bool reg = x->from_ext && method_is(x->m, "REGISTER");
    struct ae_dest ext_peer = *dest;
    if (x->from_ext)
        ext_peer = (struct ae_dest){.tp = x->o->tp, .conn_id = cid, .addr = *x->o->peer};
    if ((dialog || reg) && flow_token(ae, &ext_peer, x->tok, sizeof(x->tok)) < 0)
        x->tok[0] = 0;
    if (dialog) {
        ssize_t rl = record_route(x, rr, sizeof(rr));
        if (rl < 0)
            return -ENOSPC;
        in.record_route = slice_make(rr, (size_t)rl);
    }
    char path_u[160];
    const struct addr *pa = reg && *x->tok ? ae_side_addr(ae, AE_INT, dest->tp) : NULL;
    if (pa) {
        fmt_uri_host(pa, dest->tp, path_u, sizeof(path_u), true);
        in.path_tok = x->tok;
        in.path_uri = path_u;
    }
    if (x->from_ext) {
        trust_line(ae, x->o, trust, sizeof(trust));
        in.trust = slice_str(trust);
    }
    return ae_fwd_build_ins(&in, ins, cap);
}

/* Sends the spliced request to dest, tracking an INVITE for retransmission, Timer B and its
 * deferred 100 Trying; one that cannot be tracked has its 100 now. */
static void fwd_send(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                     const struct sip_route *r, struct ae_dest *dest, uint64_t h, size_t len)
{
    int rc = ae_send(ae, dest, ae->out, len);
    if (method_is(m, "INVITE") &&
        !((rc >= 0 || rc == -ENOBUFS) && ae_retx_track(ae, h, dest, ae->out, len))) {
        struct ae_txn *t = ae_txn_find(ae->txns, h);
        if (t && !t->caller_answered) {
            t->caller_answered = true;
            ae_reply(ae, o, m, 100, "Trying", NULL, NULL);
        }
    }
    if (rc < 0 && rc != -ENOBUFS) {
        LOGD(ae->log, &dest->addr, "sip: send failed: %s", uv_strerror(rc));
        if (r->kind == SIP_ROUTE_FLOW || rc == -ENOTCONN)
            answer(ae, o, m, 430, "Flow Failed", "no_flow", "Flow failed", NULL);
    }
}

/* The ACK of a final answer the edge made itself ends here, before any next hop is chosen:
 * that next hop is down, most likely, which is why the edge answered. */
static bool absorb_ack(struct ae *ae, const struct sip_msg *m, uint64_t h)
{
    if (method_of(m) != AE_M_ACK)
        return false;
    struct ae_txn *t = ae_txn_find(ae->txns, h);
    if (ae_fwd_gate(AE_M_ACK, t, ae->draining) != AE_GATE_ABSORB_ACK)
        return false;
    t->acked = true; /* on_retx stops sending the answer */
    return true;
}

static void ae_forward_request(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                               const struct sip_route *r)
{
    uint64_t h = sip_branch_hash(ae->salt, m);
    if (absorb_ack(ae, m, h))
        return;
    char ruri[1024], routes[4096];
    ssize_t ruri_len = 0, routes_len = 0;
    if (o->side == AE_EXT && ext_routes(ae, o, m, r, ruri, sizeof(ruri), &ruri_len, routes,
                                        sizeof(routes), &routes_len) != 0)
        return;
    struct ae_dest dest = {0};
    int picked = r->kind == SIP_ROUTE_DIRECTOR ? dest_director(ae, o, m, &dest)
                 : r->kind == SIP_ROUTE_FLOW   ? dest_flow(ae, o, m, r, &dest)
                                               : dest_uri(ae, o, m, r, &dest);
    if (picked != 0)
        return; /* answered, or parked until DNS answers */
    if (txn_gate(ae, o, m, h, uv_now(ae->loop), &dest) != 0)
        return;
    struct fwd_ctx x = {.ae = ae,
                        .o = o,
                        .m = m,
                        .r = r,
                        .dest = &dest,
                        .dc = ae_conn_get(ae, dest.conn_id),
                        .from_ext = o->side == AE_EXT};
    x.hide = ae->cfg->topology_hiding && o->side != AE_EXT && dest.side == AE_EXT;
    char ins[8192];
    ssize_t n =
        build_ins(&x, h, o->conn ? o->conn->id : 0,
                  slice_make(routes, routes_len > 0 ? (size_t)routes_len : 0), ins, sizeof(ins));
    if (n == -EADDRNOTAVAIL)
        return;
    if (n == -E2BIG) {
        answer(ae, o, m, 513, "Message Too Large", "too_large", "Too many Vias to hide", NULL);
        return;
    }
    /* Hiding: the received Vias, Record-Routes and Contacts leave; ins has what replaces
     * them. A Path never leaves (it names the inside). From outside, the received Route
     * lines all go: what is kept of them is in ins. */
    uint32_t hidden = SIP_HDR_BIT(SIP_H_VIA) | SIP_HDR_BIT(SIP_H_RECORD_ROUTE) |
                      SIP_HDR_BIT(SIP_H_CONTACT) | SIP_HDR_BIT(SIP_H_PATH);
    uint32_t routes_drop = o->side == AE_EXT ? SIP_HDR_BIT(SIP_H_ROUTE) : 0;
    struct sip_fwd_opts fo = {.insert = slice_make(ins, n > 0 ? (size_t)n : 0),
                              .pop_routes = o->side == AE_EXT ? 0 : r->pop,
                              .src = x.hide ? NULL : o->peer,
                              .drop =
                                  SIP_HDR_BIT(SIP_H_TRUST) | routes_drop | (x.hide ? hidden : 0),
                              .ruri = slice_make(ruri, ruri_len > 0 ? (size_t)ruri_len : 0)};
    ssize_t len = n < 0 ? n : sip_fwd_request(m, &fo, ae->out, AE_OUT_CAP);
    if (len < 0) {
        answer(ae, o, m, 513, "Message Too Large", "too_large", "Message too large", NULL);
        return;
    }
    fwd_send(ae, o, m, r, &dest, h, (size_t)len);
}

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
        ssize_t n =
            m->count[SIP_H_RECORD_ROUTE] ? sip_topo_open_response_rr(ae->flow_key, m, out, cap) : 0;
        return n == -ENOSPC ? -EACCES : n;
    }
    if (!ae->cfg->topology_hiding)
        return 0;
    struct sip_topo t;
    char ext[160];
    struct own_check ext_side = {ae, true};
    /* Contacts point at the transport the response leaves on, as the request came. */
    struct ae_conn *c = ae_conn_get(ae, cid);
    topo_init(ae, uv_hrtime() ^ h, c ? c->tp : AE_TP_UDP, &t, ext, sizeof(ext));
    ssize_t rl = sip_topo_hide_response_rr(&t, m, entry_is_own, &ext_side, out, cap);
    ssize_t cl = 0;
    if (rl >= 0 && (topo_response_drops(o, m) & SIP_HDR_BIT(SIP_H_CONTACT)))
        cl = sip_topo_hide_contacts(&t, m, out + rl, cap - (size_t)rl);
    return rl < 0 || cl < 0 ? -ENOSPC : rl + cl;
}

/* RFC 3261 §16.7: the top Via must be ours; it is removed and the response follows the
 * next one. Our branch names the connection the request came on (*cid). */
static bool response_is_ours(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                             uint64_t *h, uint32_t *cid)
{
    const struct sip_hdr *vh = sip_msg_find(m, SIP_H_VIA);
    struct slice host;
    uint16_t port;
    char hb[ADDR_STRLEN];
    if (!sip_via_sent_by(sip_hdr_value(m, vh), &host, &port) ||
        slice_to_cstr(host, hb, sizeof(hb)) < 0 || !sip_policy_is_own(&ae->policy, hb, port) ||
        !sip_branch_parse(sip_top_branch(m), h, cid)) {
        metric_inc(ae->m_dropped);
        LOGD(ae->log, o->peer, "sip: response not for us, dropped");
        return false;
    }
    return true;
}

/* An answer to a health check: any answer proves the Director alive (and able to answer
 * them, so its silence to them counts from now on). Any other answer from a Director counts
 * as much. */
static bool health_answer(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                          uint64_t h, uint32_t cid)
{
    if ((h & ~0xffULL) != AE_HEALTH_MAGIC || cid != 0 ||
        !slice_eq_str(sip_cseq_method(m), "OPTIONS")) {
        /* The edge's own answers, made as if from the Director, prove nothing. */
        for (size_t k = 0; o->side == AE_INT && !o->own && k < ae->ndirs; k++) {
            struct addr a = ae_director_addr(ae->cfg, k);
            if (addr_eq(o->peer, &a))
                ae_director_alive(ae, k);
        }
        return false;
    }
    size_t k = (size_t)(h & 0xff);
    if (k < ae->ndirs) {
        ae->dirs[k].probed = true;
        ae_director_alive(ae, k);
    }
    return true;
}

/* What the response means for its transaction. Returns true when it goes no further. */
static bool response_txn(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                         uint64_t h)
{
    struct slice cm = sip_cseq_method(m);
    struct ae_txn *t = ae_txn_find(ae->txns, h);
    if (slice_eq_str(cm, "INVITE")) {
        if (t && !o->own)
            t->answered = true; /* the INVITE got there: no more retransmissions */
        if (m->status == 100 && !o->own)
            return true; /* hop by hop: ours is our own (deferred: ae_retx.h) */
        if (t)
            t->caller_answered = true;
        if (t && m->status >= 200 && !t->final) {
            t->final = true;
            t->t_ms = uv_now(ae->loop);
        }
    } else if (slice_eq_str(cm, "CANCEL")) {
        if (t && t->cancelled)
            return true; /* we answered the CANCEL ourselves */
    } else if (m->status >= 200) {
        if (t && t->noninvite)
            ae_txn_del(ae->txns, t); /* after the answer is sent: ae_check_drained below */
    }
    return false;
}

/* Where the response (built in ae->out, len bytes) goes: the connection cid, or over UDP the
 * next Via (the first restored one when hiding). Returns 0 or -ENOENT (drop it). */
static int response_dest(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                         uint32_t cid, bool restored, size_t len, struct ae_dest *dest)
{
    dest->side = o->side == AE_EXT ? AE_INT : AE_EXT;
    if (cid) {
        struct ae_conn *c = ae_conn_get(ae, cid);
        if (!c)
            return -ENOENT;
        ae_partner_account(ae, c, m->status);
        dest->tp = c->tp;
        dest->conn_id = cid;
        dest->addr = c->peer;
        return 0;
    }
    dest->tp = AE_TP_UDP;
    int hr;
    if (restored) {
        /* The next hop is the first restored Via of the message we built. */
        hr = sip_msg_scan(&ae->msg2, ae->out, len, true, AE_OUT_CAP) > 0
                 ? sip_response_hop_at(&ae->msg2, 0, &dest->addr)
                 : -EINVAL;
    } else {
        hr = sip_response_next_hop(m, &dest->addr);
    }
    return hr < 0 ? -ENOENT : 0;
}

void ae_forward_response_to(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                            struct ae_dest *sent, size_t *sent_len)
{
    uint64_t h;
    uint32_t cid;
    if (!response_is_ours(ae, o, m, &h, &cid) || health_answer(ae, o, m, h, cid) ||
        response_txn(ae, o, m, h))
        return;
    const struct sip_hdr *vh = sip_msg_find(m, SIP_H_VIA);
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
    if (response_dest(ae, o, m, cid, restored, (size_t)len, &dest) < 0) {
        metric_inc(ae->m_dropped);
        return;
    }
    ae_send(ae, &dest, ae->out, (size_t)len);
    if (sent) {
        *sent = dest;
        *sent_len = (size_t)len;
    }
}

void ae_forward_response(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m)
{
    ae_forward_response_to(ae, o, m, NULL, NULL);
}

/* The per-source rate limit on requests from outside. Returns true when m was answered
 * (503) or dropped. */
static bool rate_limited(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m)
{
    if (o->side != AE_EXT || !m->is_request || method_is(m, "ACK") || ae_exempt(ae, o->peer))
        return false;
    uint32_t retry = 1;
    size_t klen;
    const void *key = addr_host_bytes(o->peer, &klen);
    if (!ratelimit_take(ae->rl, key, klen, 1, uv_now(ae->loop), &retry)) {
        char ra[40];
        snprintf(ra, sizeof(ra), "Retry-After: %u\r\n", retry ? retry : 1);
        struct sip_verdict v = {503, "Service Unavailable", "rate_limited", "Rate limit exceeded"};
        ae_count_reject(ae, v.reason);
        /* A UDP source may be spoofed, and a 503 is larger than most requests: answer
         * only a few a second per source (limits.reject_rate), drop the rest. */
        if (o->udp && !ratelimit_take(ae->reject_rl, key, klen, 1, uv_now(ae->loop), NULL)) {
            metric_inc(ae->m_silent);
            return true;
        }
        ae_reply(ae, o, m, 503, v.phrase, v.text, ra);
        return true;
    }
    return false;
}

/* RFC 5923: a partner's ;alias in its Via offers its connection for reuse toward it. */
static void learn_alias(const struct ae_origin *o, const struct sip_msg *m)
{
    if (!o->conn || !o->conn->mtls || o->side != AE_EXT || !m->is_request || o->conn->has_alias)
        return;
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

static bool overloaded(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m)
{
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
        return true;
    }
    return false;
}

/* A message sip_validate refused (rc 1): requests are answered, responses dropped. */
static void refused(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                    struct sip_verdict *v, enum sip_source src)
{
    if (!m->is_request) {
        ae_count_reject(ae, v->reason);
        return;
    }
    const char *extra = v->extra[0] ? v->extra : NULL;
    char allow[300];
    if (v->status == 405) {
        snprintf(allow, sizeof(allow), "Allow: %s\r\n", sip_allow_list(src));
        extra = allow;
    }
    ae_reject(ae, o, m, v, extra);
}

int ae_handle(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m)
{
    metric_inc(ae->m_in[o->side]);
    enum sip_source src =
        o->conn ? o->conn->src : (o->side == AE_EXT ? SIP_SRC_REMOTE_USER : SIP_SRC_INTERNAL);
    if (rate_limited(ae, o, m))
        return 0;
    learn_alias(o, m);
    if (overloaded(ae, o, m))
        return 0;
    struct sip_peer peer = {src, o->peer, o->conn ? o->conn->name_ptrs : NULL,
                            o->conn ? o->conn->nnames : 0};
    struct sip_verdict v;
    struct sip_route r;
    struct sip_parsed *sp = NULL;
    int rc = sip_validate(&ae->policy, &peer, m, &ae->osip_arena, &v, &r, &sp);
    if (rc < 0) {
        metric_inc(ae->m_unparseable);
        if (ae_noise_ok(ae))
            LOGI(ae->log, o->peer, "sip: unparseable %s dropped",
                 m->is_request ? "request" : "response");
        return -EBADMSG;
    }
    if (rc == 1) {
        refused(ae, o, m, &v, src);
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
