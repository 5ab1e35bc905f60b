// fuzz-sources: director/digest_auth.c common/crypto.c common/util.c
/* Fuzzes the Director's Digest checking (director/digest_auth.c): the input is up to nine
 * newline-separated credential fields (username, realm, nonce, uri, response, algorithm,
 * cnonce, qop, nc; a nonce field "*" is replaced by a freshly issued one, so the nc table and
 * the throttle get exercised past the nonce check), checked against a fixed user; then the whole
 * input is run through da_strip_credentials as a SIP message. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "director/digest_auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct da_state *s;
    static uint64_t now = 1000;
    if (!s && da_create(&s) != 0)
        abort();
    if (size > 4096)
        return 0;
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    const char *f[9] = {0};
    char *p = buf;
    for (int i = 0; i < 9 && p; i++) {
        f[i] = p;
        p = strchr(p, '\n');
        if (p)
            *p++ = 0;
    }
    char nonce[DA_NONCE_LEN + 1];
    if (f[2] && strcmp(f[2], "*") == 0) {
        da_nonce_make(s, now, nonce);
        f[2] = nonce;
    }
    struct da_creds c = {f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]};
    static const struct da_limits lim = {300000, 10, 50, 5, 25};
    struct da_request r = {.method = "REGISTER",
                           .user = (size & 1) ? "alice" : f[0],
                           .password = (size & 2) ? "pw" : NULL,
                           .c = f[0] ? &c : NULL,
                           .client = data,
                           .client_len = size < 16 ? size : 16,
                           .now_ms = now};
    struct da_verdict v;
    da_check(s, &lim, "example.com", &r, &v);
    now += 997;
    memcpy(buf, data, size);
    size_t n = da_strip_credentials((uint8_t *)buf, size, "example.com");
    if (n > size)
        abort();
    free(buf);
    return 0;
}
