/* Route policy for requests from outside (RFC 3261 §16.4, RFC 5658): which of the Route
 * entries an external request carries the edge honours. The edge alone decides where an
 * external request goes (the Director); its Route header may only name hops the edge itself
 * recorded. Pure: no I/O.
 *
 * - The entries at the top that name the edge are this hop's, and are removed: for an
 *   in-dialog request the external entry (or entries) and then one internal entry, the pair
 *   RFC 5658 double Record-Route put in for the leg being traversed; for an initial request
 *   every one at the top (a preloaded outbound-proxy Route).
 * - After that, an in-dialog request keeps only the edge's own entries that are signed (a
 *   flow token in the user part, or a sealed topology-hiding set): the next leg of a hairpin
 *   call through the edge twice. An initial request keeps nothing.
 * - Everything else is foreign: removed (policy strip) or the reason to refuse (reject). */
#ifndef AE_SIP_ROUTE_H
#define AE_SIP_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "common/sip/sip_msg.h"
#include "common/sip/sip_proxy.h"

/* What a Route entry names. */
enum sip_route_side { SIP_RS_FOREIGN = 0, SIP_RS_EXT, SIP_RS_INT };
typedef enum sip_route_side (*sip_route_side_cb)(struct slice entry, void *arg);

#define SIP_ROUTE_KEEP_MAX 8

struct sip_route_plan {
    unsigned pop;    /* entries at the top for this hop, removed */
    bool hop_signed; /* one of them is signed: the request follows a route set we recorded */
    unsigned nkeep;  /* entries kept (signed ones of ours), in order */
    struct slice keep[SIP_ROUTE_KEEP_MAX];
    unsigned foreign; /* entries removed that were not this hop's (foreign or unsigned) */
};

/* Is entry (a name-addr) signed by the edge: its user part a valid flow token under key,
 * or it carries a sealed route set (ae-rr)? */
bool sip_route_signed(const uint8_t key[SIP_FLOW_KEY_LEN], struct slice entry);

/* The plan for request m from outside. side says what each entry names. */
void sip_route_plan_ext(const struct sip_msg *m, bool in_dialog,
                        const uint8_t key[SIP_FLOW_KEY_LEN], sip_route_side_cb side, void *arg,
                        struct sip_route_plan *p);

/* The kept entries as one "Route: a, b\r\n" line (nothing if none). Returns the length or
 * -ENOSPC. */
ssize_t sip_route_write_kept(const struct sip_route_plan *p, char *out, size_t cap);

/* What to do with request m from outside, given its plan. */
enum sip_route_action {
    SIP_RA_FORWARD = 0, /* on to the Director, with the kept entries as Route */
    SIP_RA_KEEPALIVE,   /* an OPTIONS for the edge itself: answer 200 here */
    SIP_RA_RELAY,       /* in dialog, Request-URI outside our domains, no signed hop: 403 */
    SIP_RA_FOREIGN,     /* foreign entries under route_policy reject: 403 */
};
struct sip_route_facts {
    bool in_dialog;
    bool ruri_own;       /* the Request-URI names one of the edge's addresses */
    bool ruri_ours;      /* ... or one of our SIP domains */
    bool reject_foreign; /* route_policy: reject */
};
enum sip_route_action sip_route_decide(const struct sip_msg *m, const struct sip_route_facts *f,
                                       const struct sip_route_plan *p);

#endif
