// fuzz-sources: common/certname.c
/* Fuzzes the certificate-name matcher (common/certname.h), which sees names from peer
 * certificates, SNI and SIP From domains. Input: a mode byte, then pattern and name split at
 * the first '|'. Checks the rules that must hold whatever the bytes. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/certname.h"

static bool has(const char *s, size_t n, char c)
{
    return memchr(s, c, n) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 600)
        return 0;
    enum cert_name_mode mode = (enum cert_name_mode)(data[0] % 3);
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    const char *bar = memchr(s, '|', n);
    const char *p = s, *q = bar ? bar + 1 : s;
    size_t plen = bar ? (size_t)(bar - s) : n, qlen = bar ? n - plen - 1 : n;

    bool r = cert_name_match(p, plen, q, qlen, mode);
    bool ex = cert_name_match(p, plen, q, qlen, CERT_NAME_EXACT);
    /* Exact is symmetric and never matches empty or NUL-holding names. */
    if (ex != cert_name_match(q, qlen, p, plen, CERT_NAME_EXACT))
        __builtin_trap();
    if (r && (plen == 0 || qlen == 0 || has(p, plen, '\0') || has(q, qlen, '\0')))
        __builtin_trap();
    if (r && mode == CERT_NAME_WILDCARD_FIRST_LABEL) {
        /* No '*' in the name; a pattern without '*' matched exactly. */
        if (has(q, qlen, '*') || (!has(p, plen, '*') && !ex))
            __builtin_trap();
    }
    if (r && mode == CERT_NAME_DOMAIN_SUFFIX) {
        /* The name ends with the domain, after a dot unless it is the domain. */
        if (qlen < plen || has(q, qlen, '*') ||
            !cert_name_match(p, plen, q + qlen - plen, plen, CERT_NAME_EXACT) ||
            (qlen > plen && q[qlen - plen - 1] != '.'))
            __builtin_trap();
    }

    /* The list form on NUL-terminated copies. */
    char a[600], b[600];
    memcpy(a, p, plen);
    a[plen] = '\0';
    memcpy(b, q, qlen);
    b[qlen] = '\0';
    const char *const sans[] = {a};
    (void)cert_names_match(a, sans, data[0] & 0x80 ? 1 : 0, b, mode);
    return 0;
}
