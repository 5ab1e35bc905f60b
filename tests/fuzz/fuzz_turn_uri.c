// fuzz-sources: av-edge/peers.c common/addr.c common/util.c
/* Fuzzes the TURN URI parser a draining av-edge uses on its peers' Hello addresses, and the
 * peer table those reports feed. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "av-edge/peers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct av_peers peers;
    char uri[ADDR_STRLEN];
    size_t n = size < sizeof(uri) - 1 ? size : sizeof(uri) - 1;
    memcpy(uri, data, n);
    uri[n] = 0;
    struct addr a;
    int tcp;
    if (av_turn_uri_parse(uri, &a, &tcp) == 0 && (tcp != 0 && tcp != 1))
        __builtin_trap();
    struct ctl_report r;
    memset(&r, 0, sizeof(r));
    r.role = CTL_ROLE_AV_EDGE;
    snprintf(r.instance_id, sizeof(r.instance_id), "e%zu", size % 97);
    memcpy(r.external_addrs[0], uri, n + 1);
    r.n_external = 1;
    memcpy(r.internal_addrs[0], uri, n + 1);
    r.n_internal = 1;
    r.healthy = size & 1;
    r.load_permille = (uint32_t)size;
    av_peers_update(&peers, &r, size);
    struct av_alternates alt;
    av_peers_best(&peers, size, 1000, &alt);
    return 0;
}
