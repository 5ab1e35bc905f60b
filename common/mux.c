/* Encoder and decoder for the edge <-> conferencing-server framing (see mux.h). */
#include "common/mux.h"

#include <errno.h>
#include <string.h>

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

const char *ce_mux_type_name(uint8_t type)
{
    static const char *const names[] = {"?",     "HELLO",  "OPEN", "DATA", "SHUT",
                                        "CLOSE", "WINDOW", "PING", "PONG"};
    return type < ARRAY_SIZE(names) ? names[type] : "?";
}

/* Per type: does it address a stream, and which payload sizes are valid. */
static int check_frame(const struct ce_mux_frame *f)
{
    size_t n = f->payload.len;
    switch (f->type) {
    case CE_MUX_HELLO:
        return f->stream == 0 && n >= 8 ? 0 : -EBADMSG;
    case CE_MUX_PING:
    case CE_MUX_PONG:
        return f->stream == 0 && n == 8 ? 0 : -EBADMSG;
    case CE_MUX_OPEN:
    case CE_MUX_DATA:
    case CE_MUX_SHUT:
    case CE_MUX_CLOSE:
        return f->stream != 0 ? 0 : -EBADMSG;
    case CE_MUX_WINDOW:
        return f->stream != 0 && n == 4 ? 0 : -EBADMSG;
    default:
        return -EBADMSG;
    }
}

ssize_t ce_mux_decode(const uint8_t *p, size_t len, struct ce_mux_frame *f)
{
    if (!p || !f)
        return -EINVAL;
    if (len < CE_MUX_HDR)
        return -EAGAIN;
    size_t plen = (size_t)p[2] << 8 | p[3];
    if (plen > CE_MUX_PAYLOAD_MAX)
        return -EMSGSIZE;
    struct ce_mux_frame fr = {.type = p[0], .flags = p[1], .stream = get32(p + 4)};
    fr.payload = slice_make(p + CE_MUX_HDR, plen);
    /* Check the header before waiting for the payload: garbage fails fast. */
    if (fr.type < CE_MUX_HELLO || fr.type > CE_MUX_PONG)
        return -EBADMSG;
    if (len < CE_MUX_HDR + plen)
        return -EAGAIN;
    int rc = check_frame(&fr);
    if (rc < 0)
        return rc;
    *f = fr;
    return (ssize_t)(CE_MUX_HDR + plen);
}

void ce_mux_put_header(uint8_t out[CE_MUX_HDR], enum ce_mux_type type, uint32_t stream, size_t len)
{
    out[0] = (uint8_t)type;
    out[1] = 0;
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    put32(out + 4, stream);
}

ssize_t ce_mux_encode(uint8_t *out, size_t cap, enum ce_mux_type type, uint32_t stream,
                      const void *payload, size_t len)
{
    if (len > CE_MUX_PAYLOAD_MAX)
        return -EMSGSIZE;
    if (!out || cap < CE_MUX_HDR + len)
        return -ENOSPC;
    ce_mux_put_header(out, type, stream, len);
    if (len)
        memcpy(out + CE_MUX_HDR, payload, len);
    return (ssize_t)(CE_MUX_HDR + len);
}

/* Appends a length-prefixed string at *at; false if it does not fit. */
static bool put_str(uint8_t *out, size_t cap, size_t *at, struct slice s)
{
    if (s.len > CE_MUX_STR_MAX || *at + 1 + s.len > cap)
        return false;
    out[(*at)++] = (uint8_t)s.len;
    if (s.len)
        memcpy(out + *at, s.p, s.len);
    *at += s.len;
    return true;
}

static bool get_str(struct slice *in, struct slice *s)
{
    if (in->len < 1 || in->len < 1u + in->p[0])
        return false;
    *s = slice_make(in->p + 1, in->p[0]);
    in->p += 1 + s->len;
    in->len -= 1 + s->len;
    return true;
}

ssize_t ce_mux_encode_hello(uint8_t *out, size_t cap, const struct ce_mux_hello *h)
{
    if (!out || !h)
        return -EINVAL;
    size_t at = CE_MUX_HDR;
    if (cap < at + 8)
        return -ENOSPC;
    out[at] = (uint8_t)(h->version >> 8);
    out[at + 1] = (uint8_t)h->version;
    out[at + 2] = out[at + 3] = 0;
    put32(out + at + 4, h->window);
    at += 8;
    if (!put_str(out, cap, &at, h->name))
        return -ENOSPC;
    ce_mux_put_header(out, CE_MUX_HELLO, 0, at - CE_MUX_HDR);
    return (ssize_t)at;
}

int ce_mux_decode_hello(struct slice in, struct ce_mux_hello *h)
{
    if (in.len < 8)
        return -EBADMSG;
    h->version = (uint16_t)(in.p[0] << 8 | in.p[1]);
    h->window = get32(in.p + 4);
    h->name = SLICE_NULL;
    in.p += 8;
    in.len -= 8;
    /* The name is optional; later versions may append more after it. */
    if (in.len && !get_str(&in, &h->name))
        return -EBADMSG;
    return 0;
}

ssize_t ce_mux_encode_open(uint8_t *out, size_t cap, uint32_t stream, const struct ce_mux_open *o)
{
    if (!out || !o || stream == 0)
        return -EINVAL;
    size_t at = CE_MUX_HDR;
    cap = cap < CE_MUX_HDR + CE_MUX_PAYLOAD_MAX ? cap : CE_MUX_HDR + CE_MUX_PAYLOAD_MAX;
    if (!put_str(out, cap, &at, o->client) || !put_str(out, cap, &at, o->conf) ||
        !put_str(out, cap, &at, o->user) || !put_str(out, cap, &at, o->role) ||
        !put_str(out, cap, &at, o->key_id))
        return -ENOSPC;
    ce_mux_put_header(out, CE_MUX_OPEN, stream, at - CE_MUX_HDR);
    return (ssize_t)at;
}

int ce_mux_decode_open(struct slice in, struct ce_mux_open *o)
{
    struct ce_mux_open v;
    if (!get_str(&in, &v.client) || !get_str(&in, &v.conf) || !get_str(&in, &v.user) ||
        !get_str(&in, &v.role) || !get_str(&in, &v.key_id) || in.len != 0)
        return -EBADMSG;
    *o = v;
    return 0;
}

ssize_t ce_mux_encode_window(uint8_t *out, size_t cap, uint32_t stream, uint32_t increment)
{
    uint8_t v[4];
    put32(v, increment);
    return ce_mux_encode(out, cap, CE_MUX_WINDOW, stream, v, 4);
}

uint32_t ce_mux_window_increment(const struct ce_mux_frame *f)
{
    return f->payload.len == 4 ? get32(f->payload.p) : 0;
}

ssize_t ce_mux_encode_ping(uint8_t *out, size_t cap, enum ce_mux_type type, uint64_t v)
{
    uint8_t b[8];
    put64(b, v);
    return ce_mux_encode(out, cap, type, 0, b, 8);
}

uint64_t ce_mux_ping_value(const struct ce_mux_frame *f)
{
    if (f->payload.len != 8)
        return 0;
    return (uint64_t)get32(f->payload.p) << 32 | get32(f->payload.p + 4);
}

int ce_mux_feed(struct buf *in, const uint8_t *data, size_t len, ce_mux_frame_cb cb, void *arg,
                int *bad)
{
    for (size_t off = 0; off < len;) {
        struct slice room;
        size_t want = len - off;
        if (buf_reserve(in, want > 16384 ? 16384 : want, &room) < 0)
            return -ENOBUFS;
        size_t n = want < room.len ? want : room.len;
        memcpy((uint8_t *)room.p, data + off, n);
        in->wr += n;
        off += n;
        for (;;) {
            struct ce_mux_frame f;
            ssize_t used = ce_mux_decode(in->data + in->rd, buf_len(in), &f);
            if (used == -EAGAIN)
                break;
            int rc = used < 0 ? -EBADMSG : cb(arg, &f);
            if (rc < 0) {
                if (bad)
                    *bad = used < 0 ? 0 : f.type;
                return -EPROTO;
            }
            buf_consume(in, (size_t)used);
            if (rc > 0)
                return 0;
        }
    }
    return 0;
}
