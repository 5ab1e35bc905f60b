// fuzz-sources: access-edge/sip_route.c common/sip/sip_msg.c common/sip/sip_proxy.c access-edge/sip_topo.c common/util.c common/addr.c common/crypto.c -lmbedcrypto
/* Fuzzes the Route policy for requests from outside (access-edge/sip_route.c): the plan an
 * outsider's Route header gets (entry URIs, user parts, flow tokens, ae-rr parameters), the
 * Route line written from what is kept, and the decision. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "access-edge/sip_route.h"
#include "access-edge/sip_topo.h"
#include "common/sip/sip_msg.h"

static enum sip_route_side side(struct slice entry, void *arg)
{
    (void)arg;
    struct slice host;
    uint16_t port;
    if (!sip_uri_host_port(entry, &host, &port))
        return SIP_RS_FOREIGN;
    if (slice_eq_str(host, "127.0.0.11"))
        return SIP_RS_EXT;
    return slice_eq_str(host, "127.0.0.21") ? SIP_RS_INT : SIP_RS_FOREIGN;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct sip_msg m;
    static const uint8_t key[SIP_FLOW_KEY_LEN];
    static char out[70000];
    if (size < 1)
        return 0;
    uint8_t *buf = malloc(size - 1); /* owned copy: reads past the end are caught */
    if (!buf)
        return 0;
    memcpy(buf, data + 1, size - 1);
    if (sip_msg_scan(&m, buf, size - 1, true, 65536) > 0 && m.is_request) {
        struct sip_route_plan p;
        bool in_dialog = data[0] & 1;
        sip_route_plan_ext(&m, in_dialog, key, side, NULL, &p);
        sip_route_write_kept(&p, out, sizeof(out));
        struct sip_route_facts f = {in_dialog, data[0] & 2, data[0] & 4, data[0] & 8};
        sip_route_decide(&m, &f, &p);
        sip_route_signed(key, m.ruri);
    }
    free(buf);
    return 0;
}
