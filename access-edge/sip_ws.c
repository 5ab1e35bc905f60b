/* SIP over WebSocket framing (see sip_ws.h). */
#include "access-edge/sip_ws.h"

#include <errno.h>
#include <http_parser.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/crypto.h"

/* ---- handshake ---- */

/* The request head as http-parser sees it: the headers the upgrade needs (the first of
 * each, trimmed, cut to fit). */
enum { WS_UPGRADE, WS_CONNECTION, WS_KEY, WS_VERSION, WS_PROTOCOL, WS_NHDR };
static const char *const ws_names[WS_NHDR] = {"Upgrade", "Connection", "Sec-WebSocket-Key",
                                              "Sec-WebSocket-Version", "Sec-WebSocket-Protocol"};
struct ws_head {
    char val[WS_NHDR][128];
    bool seen[WS_NHDR];
    int cur;        /* the header whose value comes next, or -1 */
    char field[64]; /* the field name being read */
    size_t field_len;
    bool in_value, done;
};

static int on_field(http_parser *p, const char *at, size_t len)
{
    struct ws_head *h = p->data;
    if (h->in_value) { /* a new field begins */
        h->field_len = 0;
        h->in_value = false;
    }
    size_t room = sizeof(h->field) - 1 - h->field_len;
    size_t n = len < room ? len : room;
    memcpy(h->field + h->field_len, at, n);
    h->field_len += n;
    h->field[h->field_len] = 0;
    return 0;
}

static int on_value(http_parser *p, const char *at, size_t len)
{
    struct ws_head *h = p->data;
    if (!h->in_value) {
        h->in_value = true;
        h->cur = -1;
        for (int i = 0; i < WS_NHDR; i++)
            if (!h->seen[i] && strcasecmp(h->field, ws_names[i]) == 0) {
                h->cur = i;
                h->seen[i] = true;
            }
    }
    if (h->cur < 0)
        return 0;
    char *v = h->val[h->cur];
    size_t have = strlen(v), room = sizeof(h->val[0]) - 1 - have;
    size_t n = len < room ? len : room;
    memcpy(v + have, at, n);
    v[have + n] = 0;
    return 0;
}

static int on_headers_done(http_parser *p)
{
    struct ws_head *h = p->data;
    h->done = true;
    return 0;
}

static void trim(char *v)
{
    size_t l = strlen(v), s = strspn(v, " \t");
    while (l > s && (v[l - 1] == ' ' || v[l - 1] == '\t'))
        l--;
    memmove(v, v + s, l - s);
    v[l - s] = 0;
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

/* Parses the head (up to and including its blank line) with http-parser. Returns 0, or
 * -EBADMSG when it is not an HTTP/1.1 GET. */
static int parse_head(const uint8_t *data, size_t used, struct ws_head *h)
{
    static const http_parser_settings cbs = {.on_header_field = on_field,
                                             .on_header_value = on_value,
                                             .on_headers_complete = on_headers_done};
    http_parser p;
    http_parser_init(&p, HTTP_REQUEST);
    memset(h, 0, sizeof(*h));
    h->cur = -1;
    p.data = h;
    size_t n = http_parser_execute(&p, &cbs, (const char *)data, used);
    if ((n != used && !p.upgrade) || HTTP_PARSER_ERRNO(&p) != HPE_OK || !h->done ||
        p.method != HTTP_GET || p.http_major != 1 || p.http_minor != 1)
        return -EBADMSG;
    for (int i = 0; i < WS_NHDR; i++)
        trim(h->val[i]);
    return 0;
}

ssize_t sip_ws_handshake(const uint8_t *data, size_t len, char *out, size_t cap, size_t *out_len,
                         bool *ok)
{
    /* The head ends at its blank line, within 8 KiB. */
    const size_t max = 8191;
    size_t scan = len < max ? len : max;
    const uint8_t *end = memmem(data, scan, "\r\n\r\n", 4);
    if (!end)
        return len >= max ? -EBADMSG : -EAGAIN;
    size_t used = (size_t)(end - data) + 4;
    *ok = false;
    struct ws_head h;
    if (parse_head(data, used, &h) < 0)
        return -EBADMSG;
    bool good = h.seen[WS_UPGRADE] && strcasecmp(h.val[WS_UPGRADE], "websocket") == 0 &&
                h.seen[WS_CONNECTION] && has_token(h.val[WS_CONNECTION], "upgrade") &&
                h.seen[WS_KEY] && strlen(h.val[WS_KEY]) == 24 && h.seen[WS_VERSION] &&
                strcmp(h.val[WS_VERSION], "13") == 0;
    /* RFC 7118 §4.1: the client must offer the "sip" subprotocol. */
    bool sip = h.seen[WS_PROTOCOL] && has_token(h.val[WS_PROTOCOL], "sip");
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
        snprintf(cat, sizeof(cat), "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", h.val[WS_KEY]);
        uint8_t dg[SHA1_LEN];
        crypto_sha1(cat, strlen(cat), dg);
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
