// fuzz-sources: access-edge/sip_validate.c common/certname.c common/sip/sip_osip.c common/sip/sip_msg.c common/sip/sip_proxy.c access-edge/sip_ws.c access-edge/sip_topo.c common/util.c common/addr.c common/crypto.c -lmbedcrypto
/* Fuzzes the access edge's message path: framing, osip2 parse, validation, the route
 * decision, the splicing of the forwarded request/response, for each source type, and the
 * topology-hiding tokens an outsider sends back (Request-URI, Route, Record-Route). */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "access-edge/sip_topo.h"
#include "access-edge/sip_validate.h"
#include "access-edge/sip_ws.h"
#include "common/sip/sip_msg.h"
#include "common/sip/sip_osip.h"
#include "common/sip/sip_proxy.h"

static bool any_own(struct slice entry, void *arg)
{
    struct slice host;
    uint16_t port;
    return sip_uri_host_port(entry, &host, &port) && slice_eq_str(host, "127.0.0.21");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const domains[] = {"example.com"};
    static const char *const names[] = {"sip.partner.example"};
    static struct sip_msg m;
    static uint8_t out[70000];
    static const uint8_t key[SIP_FLOW_KEY_LEN];
    if (size < 1)
        return 0;
    struct addr own[2];
    addr_parse(&own[0], "127.0.0.11:5060", 5060);
    addr_parse(&own[1], "127.0.0.21:5060", 5060);
    struct sip_policy pol = {domains, 1, own, 2, 4096, 65536, 64, 1024};
    struct addr src;
    addr_parse(&src, "192.0.2.7:5062", 0);
    /* Owned copy so that reads past the end are caught. */
    uint8_t *buf = malloc(size - 1);
    if (!buf)
        return 0;
    memcpy(buf, data + 1, size - 1);
    struct sip_peer peer = {
        .src = (enum sip_source)(data[0] % 4), .addr = &src, .cert_names = names, .ncert_names = 1};
    bool datagram = data[0] & 0x10;
    if (data[0] & 0x20) {
        /* The WebSocket layer in front of the same path (RFC 7118). */
        char resp[512];
        size_t rl;
        bool ok;
        sip_ws_handshake(buf, size - 1, resp, sizeof(resp), &rl, &ok);
        struct sip_ws_frame f;
        if (sip_ws_decode(buf, size - 1, 65536, &f) > 0 && f.len)
            sip_msg_scan(&m, f.payload, f.len, true, 65536);
        free(buf);
        return 0;
    }
    ssize_t n = sip_msg_scan(&m, buf, size - 1, datagram, 65536);
    if (n < 0 && n != -EAGAIN && m.hdr_end && m.is_request) {
        /* A stream message refused after its header section was indexed is answered. */
        sip_reply_make_src(&m, &src, 513, NULL, "abc", SLICE_NULL, out, sizeof(out));
        sip_branch_hash(1, &m);
    }
    if (n > 0) {
        struct sip_verdict v;
        struct sip_route r;
        struct sip_parsed *sp = NULL;
        /* Half the inputs parse into an arena, as the edge does, half onto the heap. */
        static struct sip_osip_arena arena;
        if (!arena.buf && sip_osip_arena_init(&arena, 4096) < 0)
            return 0;
        int rc = sip_validate(&pol, &peer, &m, (size & 1) ? &arena : NULL, &v, &r, &sp);
        if (rc == 0 && m.is_request) {
            static const char ins[] = "Via: SIP/2.0/UDP 127.0.0.21:5060;branch=z9hG4bKx.0\r\n";
            struct sip_fwd_opts o = {.insert = slice_make(ins, sizeof(ins) - 1),
                                     .pop_routes = r.pop,
                                     .src = &src,
                                     .drop = SIP_HDR_BIT(SIP_H_TRUST)};
            sip_fwd_request(&m, &o, out, sizeof(out));
            struct sip_flow f;
            sip_flow_decode(key, r.flow, &f);
            char t[4096];
            sip_topo_contact_open(key, m.ruri, t, sizeof(t));
            sip_topo_open_routes(key, &m, r.pop, any_own, NULL, t, sizeof(t));
            struct sip_topo th = {key, 7, slice_str("127.0.0.11:5060")};
            sip_topo_hide_contacts(&th, &m, (char *)out, sizeof(out));
            sip_topo_seal_request_rr(&th, slice_str("<sip:127.0.0.21;lr>"), &m, t, sizeof(t));
        } else if (rc == 0) {
            sip_fwd_response(&m, SLICE_NULL, SIP_HDR_BIT(SIP_H_TRUST), out, sizeof(out));
            struct addr to;
            sip_response_next_hop(&m, &to);
            uint64_t h;
            uint32_t c;
            sip_branch_parse(sip_top_branch(&m), &h, &c);
            sip_topo_open_response_rr(key, &m, (char *)out, sizeof(out));
            struct sip_topo th = {key, 7, slice_str("127.0.0.11:5060")};
            sip_topo_hide_response_rr(&th, &m, any_own, NULL, (char *)out, sizeof(out));
        } else if (rc == 1 && m.is_request) {
            sip_reply_make_src(&m, &src, v.status, v.phrase, "abc", slice_str(v.extra), out,
                               sizeof(out));
        }
        sip_branch_hash(1, &m);
        sip_parsed_free(sp);
    }
    free(buf);
    return 0;
}
