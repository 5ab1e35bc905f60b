/* ClientHello sniffing of common/tls.h, without any TLS library or state: is this the
 * start of a ClientHello, and which host name does it ask for (routing before a certificate
 * is chosen, logs)? Both backends share it; fuzzed by tests/fuzz/fuzz_tls_sni.c. */
#include "common/tls.h"
#include "common/tls_shared.h"

#include <errno.h>
#include <string.h>
#include <sys/types.h>

bool tls_looks_like_client_hello(const uint8_t *p, size_t len)
{
    if (!p)
        return false;
    /* Record: type 22 (handshake), version 3.x (x <= 4), length 1..2^14+2048;
     * then handshake type 1 (ClientHello). */
    if (len >= 1 && p[0] != 0x16)
        return false;
    if (len >= 2 && p[1] != 0x03)
        return false;
    if (len >= 3 && p[2] > 0x04)
        return false;
    if (len >= 5) {
        unsigned rl = (unsigned)p[3] << 8 | p[4];
        if (rl < 4 || rl > 16384 + 2048)
            return false;
    }
    if (len >= 6 && p[5] != 0x01)
        return false;
    return true;
}

/* ---- ClientHello peek (no TLS library) ---- */

static uint32_t be(const uint8_t *p, size_t n)
{
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* The host_name of a server_name extension body (RFC 6066 3). */
ssize_t tls_sni_ext_name(const uint8_t *b, size_t n, char *name, size_t cap)
{
    if (!b || !name || cap == 0)
        return -EINVAL;
    name[0] = '\0';
    if (n < 2 || be(b, 2) != n - 2)
        return -EBADMSG;
    for (size_t e = 2; e + 3 <= n;) {
        size_t nl = be(b + e + 1, 2);
        if (e + 3 + nl > n)
            return -EBADMSG;
        if (b[e] == 0) { /* host_name */
            if (nl == 0 || nl > 255)
                return -EBADMSG;
            for (size_t i = 0; i < nl; i++)
                if (b[e + 3 + i] <= 0x20 || b[e + 3 + i] >= 0x7f)
                    return -EBADMSG;
            if (nl >= cap)
                return -ENOSPC;
            memcpy(name, b + e + 3, nl);
            name[nl] = '\0';
            return (ssize_t)nl;
        }
        e += 3 + nl;
    }
    return 0;
}

/* Finds extension type in the body of a ClientHello: 1 with *ext and *elen set, 0 if the
 * hello does not have it, -EBADMSG if the hello is malformed up to it. */
static int hello_ext(const uint8_t *b, size_t n, unsigned type, const uint8_t **ext, size_t *elen)
{
    size_t o = 2 + 32; /* client_version, random */
    if (n < o + 1)
        return -EBADMSG;
    o += 1 + b[o]; /* session_id */
    if (n < o + 2)
        return -EBADMSG;
    o += 2 + be(b + o, 2); /* cipher_suites */
    if (n < o + 1)
        return -EBADMSG;
    o += 1 + b[o]; /* compression_methods */
    if (n == o)
        return 0; /* no extensions */
    if (n < o + 2)
        return -EBADMSG;
    size_t end = o + 2 + be(b + o, 2);
    if (end > n)
        return -EBADMSG;
    for (o += 2; o + 4 <= end;) {
        size_t t = be(b + o, 2), len = be(b + o + 2, 2);
        o += 4;
        if (o + len > end)
            return -EBADMSG;
        if (t == type) {
            *ext = b + o;
            *elen = len;
            return 1;
        }
        o += len;
    }
    return o == end ? 0 : -EBADMSG;
}

/* Gathers the ClientHello at the start of p (it may span several handshake records) into
 * hs (4 + 16384 bytes); its body length, -EAGAIN or -EBADMSG. */
static ssize_t gather_hello(const uint8_t *p, size_t len, uint8_t *hs, size_t hscap)
{
    size_t have = 0, need = 0, off = 0;
    for (;;) {
        if (len - off < 5)
            return tls_looks_like_client_hello(p + off, len - off) || off ? -EAGAIN : -EBADMSG;
        const uint8_t *r = p + off;
        size_t rl = be(r + 3, 2);
        if (r[0] != 0x16 || r[1] != 0x03 || rl == 0 || rl > 16384)
            return -EBADMSG;
        if (len - off < 5 + rl)
            return -EAGAIN;
        size_t take = rl;
        if (have + take > hscap)
            take = hscap - have;
        memcpy(hs + have, r + 5, take);
        have += take;
        off += 5 + rl;
        if (have >= 4 && need == 0) {
            if (hs[0] != 0x01)
                return -EBADMSG;
            need = 4 + be(hs + 1, 3);
            if (need > hscap)
                return -EBADMSG;
        }
        if (need && have >= need)
            return (ssize_t)(need - 4);
    }
}

#define HELLO_MAX (4 + 16384)

ssize_t tls_peek_sni(const uint8_t *p, size_t len, char *name, size_t cap)
{
    uint8_t hs[HELLO_MAX];
    if (!p || !name || cap == 0)
        return -EINVAL;
    name[0] = '\0';
    ssize_t n = gather_hello(p, len, hs, sizeof hs);
    if (n < 0)
        return n;
    const uint8_t *ext;
    size_t elen;
    int rc = hello_ext(hs + 4, (size_t)n, 0 /* server_name */, &ext, &elen);
    return rc <= 0 ? rc : tls_sni_ext_name(ext, elen, name, cap);
}

int tls_alpn_list_check(const uint8_t *b, size_t n)
{
    if (!b || n < 2 || be(b, 2) != n - 2)
        return -EBADMSG;
    size_t k = 0;
    for (size_t o = 2; o < n; o += 1 + (size_t)b[o], k++)
        if (b[o] == 0 || o + 1 + b[o] > n) /* RFC 7301 3.1: no empty names */
            return -EBADMSG;
    return k ? (int)k : -EBADMSG;
}

bool tls_alpn_only(const uint8_t *b, size_t n, const char *proto)
{
    size_t l = proto ? strlen(proto) : 0;
    return tls_alpn_list_check(b, n) == 1 && b[2] == l && l && memcmp(b + 3, proto, l) == 0;
}

ssize_t tls_peek_alpn(const uint8_t *p, size_t len, uint8_t *out, size_t cap)
{
    uint8_t hs[HELLO_MAX];
    if (!p || !out)
        return -EINVAL;
    ssize_t n = gather_hello(p, len, hs, sizeof hs);
    if (n < 0)
        return n;
    const uint8_t *ext;
    size_t elen;
    int rc =
        hello_ext(hs + 4, (size_t)n, 16 /* application_layer_protocol_negotiation */, &ext, &elen);
    if (rc <= 0)
        return rc;
    if (tls_alpn_list_check(ext, elen) < 0)
        return -EBADMSG;
    if (elen > cap)
        return -ENOSPC;
    memcpy(out, ext, elen);
    return (ssize_t)elen;
}
