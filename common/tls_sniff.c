/* ClientHello sniffing of common/tls.h, without any TLS library or state: is this the
 * start of a ClientHello, and which host name does it ask for (routing before a certificate
 * is chosen, logs)? Both backends share it; fuzzed by tests/fuzz/fuzz_tls_sni.c. */
#include "common/tls.h"

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

/* Walks the body of a ClientHello for the host_name in server_name (RFC 6066 3). */
static ssize_t hello_sni(const uint8_t *b, size_t n, char *name, size_t cap)
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
        size_t type = be(b + o, 2), len = be(b + o + 2, 2);
        o += 4;
        if (o + len > end)
            return -EBADMSG;
        if (type == 0) {
            if (len < 2 || be(b + o, 2) != len - 2)
                return -EBADMSG;
            for (size_t e = o + 2; e + 3 <= o + len;) {
                size_t nl = be(b + e + 1, 2);
                if (e + 3 + nl > o + len)
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
        o += len;
    }
    return o == end ? 0 : -EBADMSG;
}

ssize_t tls_peek_sni(const uint8_t *p, size_t len, char *name, size_t cap)
{
    uint8_t hs[4 + 16384];
    size_t have = 0, need = 0, off = 0;
    if (!p || !name || cap == 0)
        return -EINVAL;
    name[0] = '\0';
    /* The ClientHello may span several handshake records; gather its bytes. */
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
        if (have + take > sizeof hs)
            take = sizeof hs - have;
        memcpy(hs + have, r + 5, take);
        have += take;
        off += 5 + rl;
        if (have >= 4 && need == 0) {
            if (hs[0] != 0x01)
                return -EBADMSG;
            need = 4 + be(hs + 1, 3);
            if (need > sizeof hs)
                return -EBADMSG;
        }
        if (need && have >= need)
            return hello_sni(hs + 4, need - 4, name, cap);
    }
}
