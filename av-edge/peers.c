/* The other av-edges and the choice of one to redirect to (see peers.h). */
#include "av-edge/peers.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int av_turn_uri_parse(const char *uri, struct addr *out, int *tcp)
{
    if (strncmp(uri, "turn:", 5) != 0)
        return -EINVAL;
    const char *host = uri + 5, *q = strchr(host, '?');
    size_t hl = q ? (size_t)(q - host) : strlen(host);
    char hp[ADDR_STRLEN];
    if (hl == 0 || hl >= sizeof(hp))
        return -EINVAL;
    memcpy(hp, host, hl);
    hp[hl] = 0;
    *tcp = 0;
    if (q) {
        if (strcmp(q, "?transport=tcp") == 0)
            *tcp = 1;
        else if (strcmp(q, "?transport=udp") != 0)
            return -EINVAL;
    }
    if (addr_parse(out, hp, 0) || !addr_port(out) || addr_is_any(out))
        return -EINVAL;
    return 0;
}

static void take_uris(struct av_alternates *alt, int side, const char (*uris)[ADDR_STRLEN],
                      size_t n)
{
    for (size_t i = 0; i < n && i < CTL_ADDRS_MAX; i++) {
        struct addr a;
        int tcp;
        if (av_turn_uri_parse(uris[i], &a, &tcp) == 0 && !addr_family(&alt->a[side][tcp]))
            alt->a[side][tcp] = a;
    }
}

void av_peers_update(struct av_peers *p, const struct ctl_report *r, uint64_t now_ms)
{
    if (r->role != CTL_ROLE_AV_EDGE || !r->instance_id[0])
        return;
    struct av_peer *e = NULL;
    for (size_t i = 0; i < p->n && !e; i++)
        if (strcmp(p->v[i].instance, r->instance_id) == 0)
            e = &p->v[i];
    if (!e && p->n < AV_PEERS_MAX)
        e = &p->v[p->n++];
    if (!e) { /* full: the one heard from longest ago makes room */
        e = &p->v[0];
        for (size_t i = 1; i < p->n; i++)
            if (p->v[i].seen_ms < e->seen_ms)
                e = &p->v[i];
    }
    memset(e, 0, sizeof(*e));
    snprintf(e->instance, sizeof(e->instance), "%s", r->instance_id);
    e->load_permille = r->load_permille;
    e->allocations = r->allocations;
    e->usable = r->healthy && !r->draining;
    e->seen_ms = now_ms;
    take_uris(&e->addr, AV_SIDE_EXTERNAL, r->external_addrs, r->n_external);
    take_uris(&e->addr, AV_SIDE_INTERNAL, r->internal_addrs, r->n_internal);
}

static bool better(const struct av_peer *x, const struct av_peer *y)
{
    if (x->load_permille != y->load_permille)
        return x->load_permille < y->load_permille;
    if (x->allocations != y->allocations)
        return x->allocations < y->allocations;
    return strcmp(x->instance, y->instance) < 0;
}

void av_peers_best(const struct av_peers *p, uint64_t now_ms, uint64_t max_age_ms,
                   struct av_alternates *out)
{
    memset(out, 0, sizeof(*out));
    for (int side = 0; side < 2; side++) {
        for (int tcp = 0; tcp < 2; tcp++) {
            const struct av_peer *best = NULL;
            for (size_t i = 0; i < p->n; i++) {
                const struct av_peer *e = &p->v[i];
                if (!e->usable || now_ms - e->seen_ms > max_age_ms ||
                    !addr_family(&e->addr.a[side][tcp]))
                    continue;
                if (!best || better(e, best))
                    best = e;
            }
            if (best)
                out->a[side][tcp] = best->addr.a[side][tcp];
        }
    }
}
