// fuzz-sources: common/mux.c common/util.c
/* libFuzzer target: the conf-edge <-> conferencing-server frame decoder, frame after frame. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/mux.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    size_t at = 0;
    for (int i = 0; i < 4096 && at < size; i++) {
        struct ce_mux_frame f;
        ssize_t n = ce_mux_decode(copy + at, size - at, &f);
        if (n <= 0)
            break;
        if ((size_t)n > size - at)
            abort();
        if (f.type == CE_MUX_OPEN) {
            struct ce_mux_open o;
            if (ce_mux_decode_open(f.payload, &o) == 0) {
                uint8_t out[CE_MUX_FRAME_MAX];
                ssize_t m = ce_mux_encode_open(out, sizeof out, f.stream, &o);
                if (m != n || memcmp(out, copy + at + 0, 1) != 0)
                    abort();
            }
        } else if (f.type == CE_MUX_HELLO) {
            struct ce_mux_hello h;
            (void)ce_mux_decode_hello(f.payload, &h);
        } else if (f.type == CE_MUX_WINDOW) {
            (void)ce_mux_window_increment(&f);
        }
        at += (size_t)n;
    }
    free(copy);
    return 0;
}
