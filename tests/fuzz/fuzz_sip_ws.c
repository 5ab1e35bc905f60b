// fuzz-sources: access-edge/sip_ws.c common/crypto.c common/util.c -lmbedcrypto
/* Fuzzes SIP over WebSocket (access-edge/sip_ws.c): the upgrade handshake a client sends
 * (parsed with http-parser), and the frames that follow (decoded and unmasked in place). The
 * first byte picks which, and the frame size limit. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "access-edge/sip_ws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t *buf = malloc(size - 1); /* owned copy: reads past the end are caught */
    if (!buf)
        return 0;
    memcpy(buf, data + 1, size - 1);
    size_t len = size - 1;
    if (data[0] & 1) {
        char out[512];
        size_t out_len = 0;
        bool ok;
        ssize_t used = sip_ws_handshake(buf, len, out, sizeof(out), &out_len, &ok);
        if (used > (ssize_t)len || out_len >= sizeof(out))
            abort();
    } else {
        size_t max = (size_t)(data[0] >> 1) * 64;
        for (size_t off = 0; off < len;) {
            struct sip_ws_frame f;
            ssize_t used = sip_ws_decode(buf + off, len - off, max, &f);
            if (used <= 0)
                break;
            if ((size_t)used > len - off || f.len > max || f.payload + f.len > buf + len)
                abort();
            off += (size_t)used;
        }
        uint8_t h[10];
        if (sip_ws_header(data[0] & 0x0f, len, h) > 10)
            abort();
    }
    free(buf);
    return 0;
}
