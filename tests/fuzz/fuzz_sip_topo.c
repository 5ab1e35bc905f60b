// fuzz-sources: access-edge/sip_topo.c common/sip/sip_msg.c common/sip/sip_proxy.c common/util.c common/addr.c common/crypto.c -lmbedcrypto
/* Fuzzes topology hiding and flow tokens (access-edge/sip_topo.c, common/sip/sip_proxy.c):
 * what an outsider can send back to the edge: flow tokens, sealed tokens, encoded Contacts,
 * and messages carrying ae-rr Record-Route/Route entries. Forged input must be refused
 * (the key is fixed here, so the MAC stops it); and so the decoders behind the MAC are reached
 * too, the input is also sealed under the key and opened again, which must give it back. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "access-edge/sip_topo.h"
#include "common/sip/sip_msg.h"
#include "common/sip/sip_proxy.h"

static const uint8_t key[SIP_FLOW_KEY_LEN] = {1, 2, 3};

static bool own(struct slice entry, void *arg)
{
    (void)arg;
    struct slice host;
    uint16_t port;
    return sip_uri_host_port(entry, &host, &port) && slice_eq_str(host, "127.0.0.11");
}

static void round_trips(const uint8_t *data, size_t size)
{
    static char sealed[80000];
    static uint8_t opened[70000];
    ssize_t n = sip_seal(key, size, slice_make(data, size), sealed, sizeof(sealed));
    if (n > 0) {
        ssize_t o = sip_unseal(key, slice_make(sealed, (size_t)n), opened, sizeof(opened));
        if (o != (ssize_t)size || memcmp(opened, data, size) != 0)
            abort();
    }
    if (size >= 7) {
        struct sip_flow f = {.stream = data[0] & 1}, g;
        memcpy(&f.conn_id, data + 1, 4);
        char ip[32];
        snprintf(ip, sizeof(ip), "10.%u.%u.1", data[5], data[6]);
        addr_parse(&f.addr, ip, 5060);
        char tok[SIP_FLOW_TOKEN_MAX];
        if (sip_flow_encode(key, &f, tok, sizeof(tok)) < 0 ||
            sip_flow_decode(key, slice_str(tok), &g) < 0 || g.stream != f.stream ||
            (f.stream && g.conn_id != f.conn_id) || !addr_eq(&g.addr, &f.addr))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct sip_msg m;
    static char out[70000];
    static uint8_t raw[70000];
    if (size < 1)
        return 0;
    uint8_t *buf = malloc(size - 1); /* owned copy: reads past the end are caught */
    if (!buf)
        return 0;
    memcpy(buf, data + 1, size - 1);
    struct slice in = slice_make(buf, size - 1);
    struct sip_flow f;
    sip_flow_decode(key, in, &f);
    sip_unseal(key, in, raw, sizeof(raw));
    sip_topo_contact_open(key, in, out, sizeof(out));
    round_trips(buf, size - 1);
    if (sip_msg_scan(&m, buf, size - 1, true, 65536) > 0) {
        struct sip_topo t = {key, 7, slice_str("127.0.0.11:5060")};
        if (m.is_request) {
            sip_topo_open_routes(key, &m, data[0] & 7, own, NULL, out, sizeof(out));
            sip_topo_hide_contacts(&t, &m, out, sizeof(out));
            sip_topo_seal_request_rr(&t, slice_str("<sip:127.0.0.21;lr>"), &m, out, sizeof(out));
            sip_topo_contact_open(key, m.ruri, out, sizeof(out));
        } else {
            sip_topo_open_response_rr(key, &m, out, sizeof(out));
            sip_topo_hide_response_rr(&t, &m, own, NULL, out, sizeof(out));
        }
    }
    free(buf);
    return 0;
}
