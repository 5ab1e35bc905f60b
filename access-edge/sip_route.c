/* Route policy for requests from outside (see sip_route.h). */
#include "access-edge/sip_route.h"

#include <errno.h>
#include <string.h>

/* The URI inside a name-addr ("<...>"), or the addr-spec up to its header parameters. */
static struct slice entry_uri(struct slice e)
{
    const uint8_t *lt = memchr(e.p, '<', e.len);
    if (lt) {
        size_t off = (size_t)(lt - e.p) + 1;
        const uint8_t *gt = memchr(e.p + off, '>', e.len - off);
        return slice_make(e.p + off, gt ? (size_t)(gt - (e.p + off)) : e.len - off);
    }
    const uint8_t *sc = memchr(e.p, ';', e.len);
    return slice_make(e.p, sc ? (size_t)(sc - e.p) : e.len);
}

/* The user part of a sip:/sips: URI (empty if none). */
static struct slice uri_user(struct slice u)
{
    const uint8_t *colon = memchr(u.p, ':', u.len);
    if (!colon)
        return SLICE_NULL;
    size_t off = (size_t)(colon - u.p) + 1;
    for (size_t i = off; i < u.len; i++) {
        if (u.p[i] == '@')
            return slice_make(u.p + off, i - off);
        if (u.p[i] == ';' || u.p[i] == '?' || u.p[i] == '>')
            break;
    }
    return SLICE_NULL;
}

bool sip_route_signed(const uint8_t key[SIP_FLOW_KEY_LEN], struct slice entry)
{
    struct slice u = entry_uri(entry);
    struct slice sealed;
    /* A sealed set is checked when it is opened (sip_topo_open_routes: forged = 403). */
    if (sip_param_find(u, "ae-rr", &sealed) && sealed.len)
        return true;
    struct slice user = uri_user(u);
    struct sip_flow f;
    return user.len && sip_flow_decode(key, user, &f) == 0;
}

void sip_route_plan_ext(const struct sip_msg *m, bool in_dialog,
                        const uint8_t key[SIP_FLOW_KEY_LEN], sip_route_side_cb side, void *arg,
                        struct sip_route_plan *p)
{
    memset(p, 0, sizeof(*p));
    struct sip_value_iter it;
    struct slice v;
    sip_values_begin(&it, m, SIP_H_ROUTE);
    bool top = true; /* still in this hop's entries */
    while (sip_values_next(&it, &v)) {
        enum sip_route_side s = side(v, arg);
        if (top && s != SIP_RS_FOREIGN && !p->hop_signed)
            p->hop_signed = sip_route_signed(key, v);
        if (top && s == SIP_RS_EXT) {
            p->pop++;
            continue;
        }
        if (top && s == SIP_RS_INT) {
            p->pop++;
            /* RFC 5658: the internal entry closes the pair for this leg; below it the next
             * leg begins (a hairpin call), unless this is an initial request (nothing of ours
             * below can be legitimate there). */
            top = !in_dialog;
            continue;
        }
        top = false;
        if (in_dialog && s != SIP_RS_FOREIGN && p->nkeep < SIP_ROUTE_KEEP_MAX &&
            sip_route_signed(key, v)) {
            p->keep[p->nkeep++] = v;
            continue;
        }
        p->foreign++;
    }
}

ssize_t sip_route_write_kept(const struct sip_route_plan *p, char *out, size_t cap)
{
    struct sip_out o = sip_out_make(out, cap);
    for (unsigned i = 0; i < p->nkeep; i++) {
        sip_out_str(&o, i ? ", " : "Route: ");
        sip_out_slice(&o, p->keep[i]);
    }
    if (p->nkeep)
        sip_out_str(&o, "\r\n");
    return sip_out_done(&o);
}

enum sip_route_action sip_route_decide(const struct sip_msg *m, const struct sip_route_facts *f,
                                       const struct sip_route_plan *p)
{
    /* A keep-alive: out of dialog, Request-URI on the edge with no user part, and no Route
     * entry left for another hop. */
    if (slice_eq_str(m->method, "OPTIONS") && !f->in_dialog && f->ruri_own &&
        uri_user(m->ruri).len == 0 && p->nkeep == 0)
        return SIP_RA_KEEPALIVE;
    /* Our bare addresses can be written by anyone: only a route set the edge recorded may
     * take an in-dialog request to a Request-URI outside our domains. */
    if (f->in_dialog && !p->hop_signed && !f->ruri_own && !f->ruri_ours)
        return SIP_RA_RELAY;
    if (p->foreign && f->reject_foreign)
        return SIP_RA_FOREIGN;
    return SIP_RA_FORWARD;
}
