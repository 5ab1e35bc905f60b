// fuzz-sources: av-edge/stun.c common/util.c common/crypto.c common/addr.c
/* Fuzzes the STUN/TURN message parser, its attribute decoders and integrity checks, and the
 * ChannelData / stream framing parsers; RFC 6062 answers are rebuilt from what was parsed. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "av-edge/stun.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *p = malloc(size ? size : 1);
    if (!p)
        return 0;
    memcpy(p, data, size);
    struct stun_msg m;
    if (stun_msg_parse(&m, p, size) > 0) {
        for (unsigned i = 0; i < m.n_attrs; i++) {
            struct addr a;
            uint32_t u;
            uint8_t b;
            int code;
            struct slice r;
            (void)stun_attr_xaddr(&m, &m.attrs[i], &a);
            (void)stun_attr_addr(&m, &m.attrs[i], &a);
            (void)stun_attr_u32(&m, &m.attrs[i], &u);
            (void)stun_attr_u8(&m, &m.attrs[i], &b);
            (void)stun_attr_error(&m, &m.attrs[i], &code, &r);
        }
        (void)stun_msg_check_integrity(&m, "k", 1);
        (void)stun_msg_check_integrity_sha256(&m, "k", 1);
        (void)stun_msg_check_fingerprint(&m);
        /* Rebuild a reply from what was parsed, as the server would. */
        uint8_t out[512];
        struct stun_builder bl;
        stun_build_init(&bl, out, sizeof(out), m.method, STUN_ERROR, m.tid);
        stun_build_unknown(&bl, m.unknown, m.n_unknown);
        stun_build_error(&bl, 420, NULL);
        stun_build_fingerprint(&bl);
        (void)stun_build_finish(&bl);
        /* RFC 6062: a ConnectionAttempt as the server builds it from a peer and an id. */
        const struct stun_attr *ca = stun_msg_find(&m, STUN_A_CONNECTION_ID);
        const struct stun_attr *pa = stun_msg_find(&m, STUN_A_XOR_PEER_ADDRESS);
        uint32_t id;
        struct addr peer;
        if (ca && pa && stun_attr_u32(&m, ca, &id) == 0 && stun_attr_xaddr(&m, pa, &peer) == 0) {
            stun_build_init(&bl, out, sizeof(out), STUN_CONNECTION_ATTEMPT, STUN_INDICATION, m.tid);
            stun_build_xaddr(&bl, STUN_A_XOR_PEER_ADDRESS, &peer);
            stun_build_u32(&bl, STUN_A_CONNECTION_ID, id);
            stun_build_fingerprint(&bl);
            ssize_t n = stun_build_finish(&bl);
            struct stun_msg again;
            if (n > 0 && stun_msg_parse(&again, out, (size_t)n) != n)
                __builtin_trap();
        }
    }
    uint16_t ch;
    struct slice d;
    (void)stun_chandata_parse(p, size, false, &ch, &d);
    (void)stun_chandata_parse(p, size, true, &ch, &d);
    (void)stun_frame_len(p, size);
    free(p);
    return 0;
}
