// fuzz-sources: conf-edge/preamble.c common/util.c
/* libFuzzer target: the conf-edge client preamble and the edge's answer line. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf-edge/preamble.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    struct ce_preamble p;
    ssize_t n = ce_preamble_parse(copy, size, &p);
    if (n > 0) {
        if ((size_t)n > size || p.key.len > (size_t)n)
            abort();
        if (p.key.len && (p.key.p < copy || p.key.p + p.key.len > copy + n))
            abort();
    }
    int code;
    (void)ce_reply_parse(copy, size, &code);
    free(copy);
    return 0;
}
