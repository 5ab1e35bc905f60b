/* The access edge's federation and policy: partner discovery (DNS), the per-partner
 * accounting and watch list, and the allow/block decision on each request. */
#include "access-edge/ae_int.h"
#include "common/json.h"

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
    struct ae_conn *c = pk->conn_id ? ae_conn_get(ae, pk->conn_id) : NULL;
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
int ae_federation_target(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
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
    uint64_t h = FNV1A_INIT;
    for (size_t i = 0; i < m->ruri.len && m->ruri.p[i] != ';'; i++) {
        uint8_t c = (uint8_t)(m->ruri.p[i] | 0x20); /* case-folded, parameters left out */
        h = fnv1a(h, &c, 1);
    }
    return h;
}

/* Federation policy on a validated request: Block list, watch list, discovered-partner
 * rate. Returns 0 to go on, 1 when the request was answered. */
int ae_policy(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
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
void ae_partner_account(struct ae *ae, struct ae_conn *c, int status)
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

/* GET /watchlist: the discovered partners as JSON. Returns a malloc'd text (its length in
 * *len), or NULL when out of memory. */
char *ae_watchlist_render(const struct ae_partner *partners, size_t np, size_t *len)
{
    struct json_buf j = {0};
    json_printf(&j, "{\"partners\":[");
    for (size_t i = 0; i < np; i++) {
        const struct ae_partner *p = &partners[i];
        json_printf(&j, "%s{\"domain\":", i ? "," : "");
        json_str(&j, p->domain); /* from a peer's certificate: escaped */
        json_printf(&j,
                    ",\"distinct_users\":%u,\"ok\":%u,\"failed\":%u,\"suspicious\":%s,"
                    "\"watched\":%s,\"since\":%lld}",
                    p->nusers, p->ok, p->fail, p->suspicious ? "true" : "false",
                    p->watched ? "true" : "false", (long long)p->watched_at);
    }
    json_printf(&j, "]}\n");
    if (j.oom) {
        free(j.p);
        return NULL;
    }
    *len = j.len;
    return j.p;
}

void ae_on_admin_watchlist(const char *method, const char *path, const char *query,
                           const char *body, size_t body_len, struct admin_reply *reply, void *arg)
{
    struct ae *ae = arg;
    size_t n;
    char *out = ae_watchlist_render(ae->partners, ae->npartners, &n);
    if (!out) {
        admin_reply_printf(reply, 500, "text/plain", "out of memory\n");
        return;
    }
    reply->status = 200;
    reply->content_type = "application/json";
    reply->body = out;
    reply->body_len = n;
}

/* limits.exempt: an address many users share (a PBX, a carrier's NAT) is not one abuser. */
bool ae_exempt(const struct ae *ae, const struct addr *peer)
{
    return cidr_list_contains(ae->cfg->limits.exempt, ae->cfg->limits.nexempt, peer);
}

/* One framed message from origin o (m already scanned). Returns -EBADMSG when the sender
 * must be cut off (stream) or ignored (UDP). */
