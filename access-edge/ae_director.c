/* The access edge's link to the Director: health checks, and what happens when one goes
 * down (the INVITEs it held get their answer at once). */
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

struct addr ae_director_addr(const struct ae_config *cfg, size_t k)
{
    return k == 0 ? cfg->next_hop.address : cfg->next_hop.backups[k - 1];
}

/* Health checks use branches no real transaction has: this prefix XOR the Director index. */

/* Answers the caller of an INVITE the edge forwarded, as if the next hop had: a response
 * made from the copy that went out (our Via on top) takes the ordinary response path, back
 * the way the INVITE came, hidden as it should be. What was sent, and where, in *to and
 * *len (0: nothing). */
static void answer_from_copy(struct ae *ae, const struct ae_retx *r, int status, const char *phrase,
                             const char *extra, struct ae_dest *to, size_t *len)
{
    struct sip_msg *rm = malloc(sizeof(*rm));
    size_t cap = r->len + 512;
    uint8_t *rep = malloc(cap);
    ssize_t n = -1;
    *len = 0;
    if (rm && rep && sip_msg_scan(&ae->msg, r->data, r->len, true, AE_OUT_CAP) > 0)
        n = sip_reply_make(&ae->msg, status, phrase, NULL, slice_str(extra), rep, cap);
    if (n > 0 && sip_msg_scan(rm, rep, (size_t)n, true, AE_OUT_CAP) > 0) {
        struct ae_origin o = {.side = r->dest.side,
                              .tp = r->dest.tp,
                              .conn = ae_conn_get(ae, r->dest.conn_id),
                              .peer = &r->dest.addr,
                              .own = true};
        ae_forward_response_to(ae, &o, rm, to, len);
    }
    free(rep);
    free(rm);
}

/* The answer for an INVITE the edge forwarded and heard nothing back about. */
void ae_fail_forwarded(struct ae *ae, const struct ae_retx *r, int status, const char *phrase,
                       const char *extra)
{
    struct ae_txn *t = ae_txn_find(ae->txns, r->key);
    if (t)
        t->local_final = true;
    struct ae_dest to = {0};
    size_t len = 0;
    answer_from_copy(ae, r, status, phrase, extra, &to, &len);
    /* The caller will not send its INVITE again (it has a 100): over UDP a lost answer is
     * ours to repeat (RFC 3261 §17.2.1), until its ACK or Timer H. */
    if (t && len && to.tp == AE_TP_UDP)
        ae_retx_track_answer(ae, r->key, &to, ae->out, len);
}

/* The caller's deferred 100 Trying (ae_retx.h): no answer came within the delay. */
void ae_trying_forwarded(struct ae *ae, const struct ae_retx *r, struct ae_txn *t)
{
    struct ae_dest to = {0};
    size_t len = 0;
    answer_from_copy(ae, r, 100, "Trying", NULL, &to, &len);
    if (t)
        t->caller_answered = true;
}

bool ae_dest_is_director(const struct ae *ae, const struct ae_dest *d, size_t k)
{
    struct addr a = ae_director_addr(ae->cfg, k);
    return d->side == AE_INT && addr_eq(&d->addr, &a);
}

/* Director k stopped answering (health checks, a failed connect, or an INVITE unanswered
 * for Timer B): said once, and the INVITEs it holds unanswered get 503 now, so their
 * callers try again (on a backup, if one answers) instead of waiting out Timer B. */
void ae_director_down(struct ae *ae, size_t k, const char *why)
{
    if (!ae->dirs[k].up)
        return;
    ae->dirs[k].up = false;
    ae->dirs[k].down_ms = uv_now(ae->loop);
    metric_set(ae->m_dir_up[k], 0);
    struct addr a = ae_director_addr(ae->cfg, k);
    LOGW(ae->log, &a, "sip: Director not answering: down (%s)", why);
    struct dlist *e = ae->retx.next, *next;
    for (; e != &ae->retx; e = next) {
        next = e->next;
        struct ae_retx *r = container_of(e, struct ae_retx, link);
        const struct ae_txn *t = ae_txn_find(ae->txns, r->key);
        if (!ae_dest_is_director(ae, &r->dest, k) || !t || t->answered || t->cancelled)
            continue;
        dl_del(&r->link);
        ae_count_reject(ae, "next_hop_down");
        ae_fail_forwarded(ae, r, 503, "Service Unavailable", "Retry-After: 5\r\n");
        free(r);
    }
}

void ae_director_alive(struct ae *ae, size_t k)
{
    if (!ae->dirs[k].up) {
        struct addr a = ae_director_addr(ae->cfg, k);
        LOGI(ae->log, &a, "sip: Director answering: up");
        metric_set(ae->m_dir_up[k], 1);
    }
    ae->dirs[k].up = true;
    ae->dirs[k].last_ok = uv_now(ae->loop);
}

void ae_on_health(uv_timer_t *t)
{
    struct ae *ae = t->data;
    const struct ae_config *cfg = ae->cfg;
    uint64_t now = uv_now(ae->loop);
    for (size_t k = 0; k < ae->ndirs; k++) {
        /* Two intervals without an answer: down (until it answers again). A next hop that
         * never answered an OPTIONS (a PBX or test UAS that ignores them) is judged by its
         * answers to calls only, and tried again two intervals after a timeout said down. */
        uint64_t iv = 2 * cfg->next_hop.health_interval_ms + 50;
        if (ae->dirs[k].up && ae->dirs[k].probed && now - ae->dirs[k].last_ok > iv)
            ae_director_down(ae, k, "health checks");
        if (!ae->dirs[k].up && !ae->dirs[k].probed && now - ae->dirs[k].down_ms > iv) {
            struct addr a = ae_director_addr(cfg, k);
            LOGI(ae->log, &a, "sip: Director answers no OPTIONS: trying it again");
            ae->dirs[k].up = true;
            ae->dirs[k].last_ok = now;
        }
        metric_set(ae->m_dir_up[k], ae->dirs[k].up);
        struct ae_dest d = {.side = AE_INT,
                            .tp = (uint8_t)cfg->next_hop.transport,
                            .addr = ae_director_addr(cfg, k),
                            .conn_id = ae->dirs[k].conn};
        const struct addr *via = ae_side_addr(ae, AE_INT, d.tp);
        if (!via)
            continue;
        if (d.tp != AE_TP_UDP && !ae_conn_get(ae, d.conn_id)) {
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
                         ds, ae_tp_name(d.tp), hs, br, cfg->fqdn, ds, (unsigned long long)now, hs);
        if (n > 0 && (size_t)n < sizeof(msg))
            ae_send(ae, &d, (const uint8_t *)msg, (size_t)n);
    }
}
