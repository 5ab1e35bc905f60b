/* The other av-edges, as the Director relays their load reports (with the TURN URIs of
 * their Hello): where a draining edge sends new allocations (300 ALTERNATE-SERVER). Pure:
 * reports and a clock in, the least-loaded healthy peer's address out. */
#ifndef AV_PEERS_H
#define AV_PEERS_H

#include <stdbool.h>
#include <stdint.h>

#include "av-edge/turn.h"
#include "common/addr.h"
#include "common/ctl.h"

#define AV_PEERS_MAX 64

struct av_peer {
    char instance[CTL_ID_MAX];
    uint32_t load_permille;
    uint64_t allocations;
    bool usable; /* healthy and not draining */
    uint64_t seen_ms;
    struct av_alternates addr; /* its own TURN addresses */
};

struct av_peers {
    struct av_peer v[AV_PEERS_MAX];
    size_t n;
};

/* "turn:1.2.3.4:3478?transport=udp" into an address and 0 (UDP) or 1 (TCP); -EINVAL for
 * anything else (turns:, no port, another transport). */
int av_turn_uri_parse(const char *uri, struct addr *out, int *tcp);
/* Records an av-edge's report (relayed by the Director); others are ignored. */
void av_peers_update(struct av_peers *p, const struct ctl_report *r, uint64_t now_ms);
/* The least-loaded usable peer heard from within max_age_ms, per side and transport: load
 * permille, then allocations, then instance id, as the Director orders them. */
void av_peers_best(const struct av_peers *p, uint64_t now_ms, uint64_t max_age_ms,
                   struct av_alternates *out);

#endif
