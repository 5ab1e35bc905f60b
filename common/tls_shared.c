/* Library-independent parts of common/tls (see tls_shared.h): ClientHello sniffing, host
 * name matching, alert names, file reading. */
#include "common/tls_shared.h"
#include "common/tls.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

void tls_errf(char *err, size_t cap, const char *fmt, ...)
{
    if (!err || !cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

const char *tls_alert_name(unsigned a)
{
    switch (a) {
    case 0:
        return "close_notify";
    case 10:
        return "unexpected_message";
    case 20:
        return "bad_record_mac";
    case 40:
        return "handshake_failure";
    case 42:
        return "bad_certificate";
    case 43:
        return "unsupported_certificate";
    case 44:
        return "certificate_revoked";
    case 45:
        return "certificate_expired";
    case 46:
        return "certificate_unknown";
    case 47:
        return "illegal_parameter";
    case 48:
        return "unknown_ca";
    case 50:
        return "decode_error";
    case 51:
        return "decrypt_error";
    case 70:
        return "protocol_version";
    case 71:
        return "insufficient_security";
    case 80:
        return "internal_error";
    case 86:
        return "inappropriate_fallback";
    case 112:
        return "unrecognized_name";
    case 116:
        return "certificate_required";
    case 120:
        return "no_application_protocol";
    default:
        return "unknown alert";
    }
}

bool tls_name_match(const char *pattern, size_t plen, const char *name, size_t nlen)
{
    if (plen == nlen && strncasecmp(pattern, name, nlen) == 0)
        return true;
    /* "*.example.com" matches exactly one leftmost label. */
    if (plen > 2 && pattern[0] == '*' && pattern[1] == '.') {
        const char *dot = memchr(name, '.', nlen);
        if (!dot || dot == name)
            return false;
        size_t rest = nlen - (size_t)(dot - name);
        return rest == plen - 1 && strncasecmp(dot, pattern + 1, rest) == 0;
    }
    return false;
}

int tls_read_file(const char *path, unsigned char **out, size_t *len, char *err, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        tls_errf(err, cap, "cannot read %s: %s", path, strerror(errno));
        return -errno;
    }
    size_t n = 0, room = 4096;
    unsigned char *b = malloc(room + 1);
    int rc = 0;
    while (b) {
        size_t r = fread(b + n, 1, room - n, f);
        n += r;
        if (r == 0)
            break;
        if (n == room) {
            if (room >= (1u << 24)) {
                tls_errf(err, cap, "cannot read %s: file too large", path);
                rc = -EFBIG;
                break;
            }
            unsigned char *nb = realloc(b, room * 2 + 1);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            room *= 2;
        }
    }
    if (!b) {
        fclose(f);
        tls_errf(err, cap, "cannot read %s: out of memory", path);
        return -ENOMEM;
    }
    if (rc == 0 && ferror(f)) {
        tls_errf(err, cap, "cannot read %s: %s", path, strerror(errno ? errno : EIO));
        rc = -EIO;
    }
    fclose(f);
    if (rc) {
        free(b);
        return rc;
    }
    b[n] = '\0';
    *out = b;
    *len = n + 1; /* mbedTLS wants PEM with its terminating NUL counted */
    return 0;
}

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

void tls_hex_fingerprint(const uint8_t h[32], char *out)
{
    for (size_t i = 0; i < 32; i++)
        sprintf(out + 3 * i, "%02X%s", h[i], i < 31 ? ":" : "");
}

int tls_check_self_signed_name(const char *name, char *err, size_t cap)
{
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen > 200 || strpbrk(name, ",=+\"\\<>;")) {
        tls_errf(err, cap, "self_signed_name \"%s\" is not a plain host name", name);
        return -EINVAL;
    }
    return 0;
}

bool tls_peer_has_name(const struct tls_peer *p, const char *name)
{
    if (!p || !name || !*name)
        return false;
    size_t len = strlen(name);
    for (size_t i = 0; i < p->nsans; i++)
        if (tls_name_match(p->sans[i], strlen(p->sans[i]), name, len))
            return true;
    /* RFC 6125 6.4.4: the CN counts only when there is no DNS name. */
    return p->nsans == 0 && p->cn && tls_name_match(p->cn, strlen(p->cn), name, len);
}
