/* SIP over WebSocket framing (see sip_ws.h). */
#include "access-edge/sip_ws.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/crypto.h"

/* ---- SHA-1 (FIPS 180-4), only for Sec-WebSocket-Accept ---- */

static uint32_t rol(uint32_t x, int n)
{
    return (x << n) | (x >> (32 - n));
}

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

void sip_ws_sha1(const void *data, size_t len, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    const uint8_t *p = data;
    size_t n = len;
    while (n >= 64) {
        sha1_block(h, p);
        p += 64;
        n -= 64;
    }
    uint8_t last[128] = {0};
    memcpy(last, p, n);
    last[n] = 0x80;
    size_t total = n + 1 + 8 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        last[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha1_block(h, last);
    if (total == 128)
        sha1_block(h, last + 64);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8);
        out[4 * i + 3] = (uint8_t)h[i];
    }
}

/* ---- handshake ---- */

/* Value of header `name` in the request head, trimmed, or NULL. */
static const char *hdr(const char *head, const char *name, char *val, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = strstr(head, "\r\n");
    while (p && p[2] != '\r') {
        const char *line = p + 2;
        const char *end = strstr(line, "\r\n");
        if (!end)
            return NULL;
        if ((size_t)(end - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            size_t l = (size_t)(end - v);
            while (l && (v[l - 1] == ' ' || v[l - 1] == '\t'))
                l--;
            if (l >= cap)
                l = cap - 1;
            memcpy(val, v, l);
            val[l] = 0;
            return val;
        }
        p = end;
    }
    return NULL;
}

static bool has_token(const char *list, const char *tok)
{
    size_t tl = strlen(tok);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && t[-1] == ' ')
            t--;
        if ((size_t)(t - p) == tl && strncasecmp(p, tok, tl) == 0)
            return true;
        p = e;
    }
    return false;
}

ssize_t sip_ws_handshake(const uint8_t *data, size_t len, char *out, size_t cap, size_t *out_len,
                         bool *ok)
{
    char head[8192];
    size_t n = len < sizeof(head) - 1 ? len : sizeof(head) - 1;
    memcpy(head, data, n);
    head[n] = 0;
    char *end = strstr(head, "\r\n\r\n");
    if (!end)
        return len >= sizeof(head) - 1 ? -EBADMSG : -EAGAIN;
    end[2] = 0; /* keep the last header's CRLF for hdr() */
    end[3] = 0;
    size_t used = (size_t)(end - head) + 4;
    *ok = false;
    if (strncmp(head, "GET ", 4) != 0 || !strstr(head, " HTTP/1.1\r\n"))
        return -EBADMSG;
    char up[64], conn[128], key[64], ver[16], proto[128];
    bool good = hdr(head, "Upgrade", up, sizeof(up)) && strcasecmp(up, "websocket") == 0 &&
                hdr(head, "Connection", conn, sizeof(conn)) && has_token(conn, "upgrade") &&
                hdr(head, "Sec-WebSocket-Key", key, sizeof(key)) && strlen(key) == 24 &&
                hdr(head, "Sec-WebSocket-Version", ver, sizeof(ver)) && strcmp(ver, "13") == 0;
    /* RFC 7118 §4.1: the client must offer the "sip" subprotocol. */
    bool sip = hdr(head, "Sec-WebSocket-Protocol", proto, sizeof(proto)) && has_token(proto, "sip");
    int w;
    if (!good) {
        w = snprintf(out, cap,
                     "HTTP/1.1 400 Bad Request\r\nSec-WebSocket-Version: 13\r\n"
                     "Content-Length: 0\r\nConnection: close\r\n\r\n");
    } else if (!sip) {
        w = snprintf(out, cap,
                     "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Protocol: sip\r\n"
                     "Content-Length: 0\r\nConnection: close\r\n\r\n");
    } else {
        char cat[128];
        snprintf(cat, sizeof(cat), "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
        uint8_t dg[20];
        sip_ws_sha1(cat, strlen(cat), dg);
        char acc[40];
        base64_encode(dg, sizeof(dg), acc, sizeof(acc));
        w = snprintf(out, cap,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                     "Sec-WebSocket-Protocol: sip\r\n\r\n",
                     acc);
        *ok = true;
    }
    *out_len = (w > 0 && (size_t)w < cap) ? (size_t)w : 0;
    return (ssize_t)used;
}

/* ---- frames ---- */

ssize_t sip_ws_decode(uint8_t *data, size_t len, size_t max, struct sip_ws_frame *f)
{
    if (len < 2)
        return -EAGAIN;
    bool fin = data[0] & 0x80;
    uint8_t op = data[0] & 0x0f;
    if (data[0] & 0x70)
        return -EBADMSG; /* no extensions negotiated */
    bool masked = data[1] & 0x80;
    uint64_t pl = data[1] & 0x7f;
    size_t off = 2;
    if (pl == 126) {
        if (len < 4)
            return -EAGAIN;
        pl = (uint64_t)data[2] << 8 | data[3];
        off = 4;
    } else if (pl == 127) {
        if (len < 10)
            return -EAGAIN;
        pl = 0;
        for (int i = 0; i < 8; i++)
            pl = pl << 8 | data[2 + i];
        off = 10;
    }
    if (!masked)
        return -EBADMSG;
    if ((op & 0x8) && (pl > 125 || !fin))
        return -EBADMSG; /* control frames are short and whole */
    if (pl > max)
        return -EMSGSIZE;
    if (len < off + 4 || len - off - 4 < pl)
        return -EAGAIN;
    uint8_t *mask = data + off;
    uint8_t *p = data + off + 4;
    for (size_t i = 0; i < pl; i++)
        p[i] ^= mask[i & 3];
    f->fin = fin;
    f->op = op;
    f->payload = p;
    f->len = (size_t)pl;
    return (ssize_t)(off + 4 + pl);
}

size_t sip_ws_header(uint8_t op, size_t len, uint8_t out[10])
{
    out[0] = (uint8_t)(0x80 | op);
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len < 65536) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    return 10;
}
