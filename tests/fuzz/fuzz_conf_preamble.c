// fuzz-sources: conf-edge/preamble.c conf-edge/admit.c common/token.c common/crypto.c common/util.c
/* libFuzzer target: the conf-edge client preamble, the key check behind it, and the edge's
 * answer line. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf-edge/admit.h"
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
        struct keyring kr;
        memset(&kr, 0, sizeof kr);
        keyring_rotate(&kr, "k1", "fuzz-secret", 11, 0);
        struct token_claims c;
        (void)ce_admit_check(&kr, NULL, p.key, 1700000000, &c);
    }
    int code;
    (void)ce_reply_parse(copy, size, &code);
    free(copy);
    return 0;
}
