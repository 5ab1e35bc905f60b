/* STUN/TURN message codec: parse and build RFC 8489/8656/6062 messages and ChannelData. */
#include "av-edge/stun.h"

#include <errno.h>
#include <string.h>

#include "common/crypto.h"

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}
static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Comprehension-required attributes (type < 0x8000) this server understands; any other
 * one in a request earns a 420 (RFC 8489 7.3.1). */
static bool known_required(uint16_t t)
{
    switch (t) {
    case STUN_A_MAPPED_ADDRESS:
    case STUN_A_USERNAME:
    case STUN_A_MESSAGE_INTEGRITY:
    case STUN_A_ERROR_CODE:
    case STUN_A_UNKNOWN_ATTRIBUTES:
    case STUN_A_CHANNEL_NUMBER:
    case STUN_A_LIFETIME:
    case STUN_A_XOR_PEER_ADDRESS:
    case STUN_A_DATA:
    case STUN_A_REALM:
    case STUN_A_NONCE:
    case STUN_A_XOR_RELAYED_ADDRESS:
    case STUN_A_REQUESTED_ADDRESS_FAMILY:
    case STUN_A_EVEN_PORT:
    case STUN_A_REQUESTED_TRANSPORT:
    case STUN_A_DONT_FRAGMENT:
    case STUN_A_MESSAGE_INTEGRITY_SHA256:
    case STUN_A_PASSWORD_ALGORITHM:
    case STUN_A_USERHASH:
    case STUN_A_XOR_MAPPED_ADDRESS:
    case STUN_A_RESERVATION_TOKEN:
    case STUN_A_PRIORITY:
    case STUN_A_USE_CANDIDATE:
    case STUN_A_CONNECTION_ID:
        return true;
    default:
        return false;
    }
}

/* Indexes attribute at (value length al, header at off): 1 when indexed, 0 when ignored
 * (after the integrity attributes), -EBADMSG when out of place or malformed. */
static int attr_index(struct stun_msg *m, uint16_t at, uint16_t al, size_t off)
{
    if (m->fp_off)
        return -EBADMSG; /* FINGERPRINT must be last */
    bool after_mi = m->mi_off != 0 || m->mi256_off != 0;
    if (at == STUN_A_FINGERPRINT) {
        if (al != 4)
            return -EBADMSG;
        m->fp_off = (uint16_t)off;
    } else if (at == STUN_A_MESSAGE_INTEGRITY && !after_mi) {
        if (al != SHA1_LEN)
            return -EBADMSG;
        m->mi_off = (uint16_t)off;
    } else if (at == STUN_A_MESSAGE_INTEGRITY_SHA256 && !m->mi256_off) {
        if (al < 16 || al > 32 || (al & 3))
            return -EBADMSG;
        m->mi256_off = (uint16_t)off;
    } else if (after_mi) {
        /* Anything else after the integrity attributes is ignored. */
        return 0;
    }
    if (at < 0x8000 && !known_required(at)) {
        if (m->n_unknown < STUN_MAX_UNKNOWN)
            m->unknown[m->n_unknown++] = at;
    }
    if (m->n_attrs >= STUN_MAX_ATTRS)
        return -EBADMSG;
    m->attrs[m->n_attrs++] = (struct stun_attr){at, al, (uint16_t)(off + 4)};
    return 1;
}

ssize_t stun_msg_parse(struct stun_msg *m, const uint8_t *p, size_t len)
{
    if (len < STUN_HDR_LEN)
        return -EAGAIN;
    if ((p[0] & 0xC0) != 0 || rd32(p + 4) != STUN_MAGIC)
        return -EBADMSG;
    size_t blen = rd16(p + 2);
    if (blen & 3)
        return -EBADMSG;
    if (len < STUN_HDR_LEN + blen)
        return -EAGAIN;
    uint16_t t = rd16(p);
    m->buf = p;
    m->len = STUN_HDR_LEN + blen;
    m->method = (uint16_t)(((t & 0x3E00) >> 2) | ((t & 0x00E0) >> 1) | (t & 0x000F));
    m->cls = (uint8_t)(((t >> 7) & 2) | ((t >> 4) & 1));
    m->tid = p + 8;
    m->n_attrs = 0;
    m->mi_off = m->mi256_off = m->fp_off = 0;
    m->n_unknown = 0;

    size_t off = STUN_HDR_LEN, end = m->len;
    while (off < end) {
        if (end - off < 4)
            return -EBADMSG;
        uint16_t at = rd16(p + off), al = rd16(p + off + 2);
        size_t padded = ((size_t)al + 3) & ~(size_t)3;
        if (end - off - 4 < padded)
            return -EBADMSG;
        int rc = attr_index(m, at, al, off);
        if (rc < 0)
            return rc;
        off += 4 + padded;
    }
    return (ssize_t)m->len;
}

const struct stun_attr *stun_msg_find(const struct stun_msg *m, uint16_t type)
{
    for (unsigned i = 0; i < m->n_attrs; i++)
        if (m->attrs[i].type == type)
            return &m->attrs[i];
    return NULL;
}

static int decode_addr(const struct stun_msg *m, const struct stun_attr *a, bool xor,
                       struct addr *out)
{
    const uint8_t *v = m->buf + a->off;
    if (a->len < 4)
        return -EBADMSG;
    uint16_t port = rd16(v + 2);
    if (xor)
        port ^= (uint16_t)(STUN_MAGIC >> 16);
    memset(out, 0, sizeof(*out));
    if (v[1] == 0x01 && a->len == 8) {
        uint32_t ip = rd32(v + 4);
        if (xor)
            ip ^= STUN_MAGIC;
        out->u.in4.sin_family = AF_INET;
        out->u.in4.sin_port = htons(port);
        out->u.in4.sin_addr.s_addr = htonl(ip);
        return 0;
    }
    if (v[1] == 0x02 && a->len == 20) {
        uint8_t *ip = out->u.in6.sin6_addr.s6_addr;
        memcpy(ip, v + 4, 16);
        if (xor) {
            uint8_t mask[16];
            wr32(mask, STUN_MAGIC);
            memcpy(mask + 4, m->tid, STUN_TID_LEN);
            for (int i = 0; i < 16; i++)
                ip[i] ^= mask[i];
        }
        out->u.in6.sin6_family = AF_INET6;
        out->u.in6.sin6_port = htons(port);
        return 0;
    }
    return -EBADMSG;
}

int stun_attr_xaddr(const struct stun_msg *m, const struct stun_attr *a, struct addr *out)
{
    return decode_addr(m, a, true, out);
}

int stun_attr_addr(const struct stun_msg *m, const struct stun_attr *a, struct addr *out)
{
    return decode_addr(m, a, false, out);
}

int stun_attr_u32(const struct stun_msg *m, const struct stun_attr *a, uint32_t *out)
{
    if (a->len != 4)
        return -EBADMSG;
    *out = rd32(m->buf + a->off);
    return 0;
}

int stun_attr_u8(const struct stun_msg *m, const struct stun_attr *a, uint8_t *out)
{
    if (a->len < 1)
        return -EBADMSG;
    *out = m->buf[a->off];
    return 0;
}

int stun_attr_error(const struct stun_msg *m, const struct stun_attr *a, int *code,
                    struct slice *reason)
{
    if (a->len < 4)
        return -EBADMSG;
    const uint8_t *v = m->buf + a->off;
    int cls = v[2] & 7, num = v[3];
    if (cls < 3 || cls > 6 || num > 99)
        return -EBADMSG;
    *code = cls * 100 + num;
    if (reason)
        *reason = slice_make(v + 4, a->len - 4u);
    return 0;
}

/* Integrity covers the message up to the attribute, with the header length field set as
 * if the attribute were the last one (RFC 8489 14.5). Messages carrying integrity are
 * small requests; bigger ones are refused rather than copied. */
#define STUN_MI_SPAN_MAX 4096

static int check_mac(const struct stun_msg *m, uint16_t at_off, size_t mac_len, bool sha256,
                     const void *key, size_t klen)
{
    uint8_t tmp[STUN_MI_SPAN_MAX];
    if (at_off > sizeof(tmp))
        return -EBADMSG;
    memcpy(tmp, m->buf, at_off);
    wr16(tmp + 2, (uint16_t)(at_off + 4 + mac_len - STUN_HDR_LEN));
    uint8_t mac[SHA256_LEN];
    if (sha256)
        crypto_hmac_sha256(key, klen, tmp, at_off, mac);
    else
        crypto_hmac_sha1(key, klen, tmp, at_off, mac);
    return crypto_ct_eq(mac, m->buf + at_off + 4, mac_len) ? 0 : -EBADMSG;
}

int stun_msg_check_integrity(const struct stun_msg *m, const void *key, size_t klen)
{
    if (!m->mi_off)
        return -ENOENT;
    return check_mac(m, m->mi_off, SHA1_LEN, false, key, klen);
}

int stun_msg_check_integrity_sha256(const struct stun_msg *m, const void *key, size_t klen)
{
    if (!m->mi256_off)
        return -ENOENT;
    return check_mac(m, m->mi256_off, rd16(m->buf + m->mi256_off + 2), true, key, klen);
}

int stun_msg_check_fingerprint(const struct stun_msg *m)
{
    if (!m->fp_off)
        return -ENOENT;
    uint32_t crc = crypto_crc32(m->buf, m->fp_off) ^ STUN_FP_XOR;
    return crc == rd32(m->buf + m->fp_off + 4) ? 0 : -EBADMSG;
}

void stun_key_long_term(struct slice user, struct slice realm, struct slice pass, uint8_t out[16])
{
    uint8_t tmp[3 * 256 + 2];
    size_t n = 0;
    struct slice parts[3] = {user, realm, pass};
    for (int i = 0; i < 3; i++) {
        size_t l = parts[i].len < 256 ? parts[i].len : 256;
        if (l)
            memcpy(tmp + n, parts[i].p, l);
        n += l;
        if (i < 2)
            tmp[n++] = ':';
    }
    crypto_md5(tmp, n, out);
}

/* ---- builder ---- */

void stun_build_init(struct stun_builder *b, void *buf, size_t cap, uint16_t method,
                     enum stun_class cls, const uint8_t tid[STUN_TID_LEN])
{
    b->p = buf;
    b->cap = cap;
    b->len = 0;
    b->err = 0;
    if (cap < STUN_HDR_LEN) {
        b->err = -ENOSPC;
        return;
    }
    uint16_t t = (uint16_t)(((method & 0xF80) << 2) | ((method & 0x070) << 1) | (method & 0xF) |
                            ((cls & 2) << 7) | ((cls & 1) << 4));
    wr16(b->p, t);
    wr16(b->p + 2, 0);
    wr32(b->p + 4, STUN_MAGIC);
    memcpy(b->p + 8, tid, STUN_TID_LEN);
    b->len = STUN_HDR_LEN;
}

static uint8_t *reserve(struct stun_builder *b, uint16_t type, size_t len)
{
    size_t padded = (len + 3) & ~(size_t)3;
    if (b->err || len > 0xFFFF || b->cap - b->len < 4 + padded ||
        b->len + 4 + padded - STUN_HDR_LEN > 0xFFFF) {
        b->err = -ENOSPC;
        return NULL;
    }
    uint8_t *a = b->p + b->len;
    wr16(a, type);
    wr16(a + 2, (uint16_t)len);
    memset(a + 4 + len, 0, padded - len);
    b->len += 4 + padded;
    wr16(b->p + 2, (uint16_t)(b->len - STUN_HDR_LEN));
    return a + 4;
}

void stun_build_attr(struct stun_builder *b, uint16_t type, const void *v, size_t len)
{
    uint8_t *d = reserve(b, type, len);
    if (d && len)
        memcpy(d, v, len);
}

void stun_build_u32(struct stun_builder *b, uint16_t type, uint32_t v)
{
    uint8_t *d = reserve(b, type, 4);
    if (d)
        wr32(d, v);
}

void stun_build_xaddr(struct stun_builder *b, uint16_t type, const struct addr *a)
{
    if (b->err)
        return;
    if (a->u.sa.sa_family == AF_INET) {
        uint8_t *d = reserve(b, type, 8);
        if (!d)
            return;
        d[0] = 0;
        d[1] = 1;
        wr16(d + 2, ntohs(a->u.in4.sin_port) ^ (uint16_t)(STUN_MAGIC >> 16));
        wr32(d + 4, ntohl(a->u.in4.sin_addr.s_addr) ^ STUN_MAGIC);
    } else if (a->u.sa.sa_family == AF_INET6) {
        uint8_t *d = reserve(b, type, 20);
        if (!d)
            return;
        d[0] = 0;
        d[1] = 2;
        wr16(d + 2, ntohs(a->u.in6.sin6_port) ^ (uint16_t)(STUN_MAGIC >> 16));
        uint8_t mask[16];
        wr32(mask, STUN_MAGIC);
        memcpy(mask + 4, b->p + 8, STUN_TID_LEN);
        for (int i = 0; i < 16; i++)
            d[4 + i] = a->u.in6.sin6_addr.s6_addr[i] ^ mask[i];
    } else {
        b->err = -EAFNOSUPPORT;
    }
}

void stun_build_error(struct stun_builder *b, int code, const char *reason)
{
    if (!reason)
        reason = stun_reason(code);
    size_t rl = strlen(reason);
    uint8_t *d = reserve(b, STUN_A_ERROR_CODE, 4 + rl);
    if (!d)
        return;
    d[0] = d[1] = 0;
    d[2] = (uint8_t)(code / 100);
    d[3] = (uint8_t)(code % 100);
    memcpy(d + 4, reason, rl);
}

void stun_build_unknown(struct stun_builder *b, const uint16_t *types, size_t n)
{
    uint8_t *d = reserve(b, STUN_A_UNKNOWN_ATTRIBUTES, 2 * n);
    if (!d)
        return;
    for (size_t i = 0; i < n; i++)
        wr16(d + 2 * i, types[i]);
}

static void build_mac(struct stun_builder *b, uint16_t type, size_t mac_len, bool sha256,
                      const void *key, size_t klen)
{
    if (b->err)
        return;
    size_t covered = b->len;
    uint8_t *d = reserve(b, type, mac_len);
    if (!d)
        return;
    uint8_t mac[SHA256_LEN];
    /* The length field already counts this attribute, as the MAC requires. */
    if (sha256)
        crypto_hmac_sha256(key, klen, b->p, covered, mac);
    else
        crypto_hmac_sha1(key, klen, b->p, covered, mac);
    memcpy(d, mac, mac_len);
}

void stun_build_integrity(struct stun_builder *b, const void *key, size_t klen)
{
    build_mac(b, STUN_A_MESSAGE_INTEGRITY, SHA1_LEN, false, key, klen);
}

void stun_build_integrity_sha256(struct stun_builder *b, const void *key, size_t klen)
{
    build_mac(b, STUN_A_MESSAGE_INTEGRITY_SHA256, SHA256_LEN, true, key, klen);
}

void stun_build_fingerprint(struct stun_builder *b)
{
    if (b->err)
        return;
    size_t covered = b->len;
    uint8_t *d = reserve(b, STUN_A_FINGERPRINT, 4);
    if (d)
        wr32(d, crypto_crc32(b->p, covered) ^ STUN_FP_XOR);
}

ssize_t stun_build_finish(struct stun_builder *b)
{
    return b->err ? b->err : (ssize_t)b->len;
}

const char *stun_reason(int code)
{
    switch (code) {
    case 300:
        return "Try Alternate";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 405:
        return "Mobility Forbidden";
    case 420:
        return "Unknown Attribute";
    case 437:
        return "Allocation Mismatch";
    case 438:
        return "Stale Nonce";
    case 440:
        return "Address Family not Supported";
    case 441:
        return "Wrong Credentials";
    case 442:
        return "Unsupported Transport Protocol";
    case 443:
        return "Peer Address Family Mismatch";
    case 446:
        return "Connection Already Exists";
    case 447:
        return "Connection Timeout or Failure";
    case 486:
        return "Allocation Quota Reached";
    case 500:
        return "Server Error";
    case 508:
        return "Insufficient Capacity";
    default:
        return "Error";
    }
}

ssize_t stun_chandata_parse(const uint8_t *p, size_t len, bool stream, uint16_t *channel,
                            struct slice *data)
{
    if (len < 4)
        return stream ? -EAGAIN : -EBADMSG;
    uint16_t ch = rd16(p);
    if (ch < STUN_CHANNEL_MIN || ch > STUN_CHANNEL_MAX)
        return -EBADMSG;
    size_t dlen = rd16(p + 2);
    size_t need = 4 + dlen;
    if (stream)
        need = (need + 3) & ~(size_t)3;
    if (len < 4 + dlen)
        return stream ? -EAGAIN : -EBADMSG;
    if (stream && len < need)
        return -EAGAIN;
    *channel = ch;
    *data = slice_make(p + 4, dlen);
    return (ssize_t)(stream ? need : 4 + dlen);
}

ssize_t stun_frame_len(const uint8_t *p, size_t len)
{
    if (len < 4)
        return -EAGAIN;
    if ((p[0] & 0xC0) == 0) {
        size_t blen = rd16(p + 2);
        if (blen & 3)
            return -EBADMSG;
        if (len >= 8 && rd32(p + 4) != STUN_MAGIC)
            return -EBADMSG;
        return (ssize_t)(STUN_HDR_LEN + blen);
    }
    if ((p[0] & 0xC0) == 0x40)
        return (ssize_t)((4 + (size_t)rd16(p + 2) + 3) & ~(size_t)3);
    return -EBADMSG;
}

ssize_t stun_classic_binding_reply(const uint8_t *req, size_t len, const struct addr *client,
                                   uint8_t *out, size_t cap)
{
    if (len < STUN_HDR_LEN || rd16(req) != 0x0001 || rd32(req + 4) == STUN_MAGIC)
        return -EBADMSG;
    size_t blen = rd16(req + 2);
    if ((blen & 3) || STUN_HDR_LEN + blen != len)
        return -EBADMSG;
    for (size_t off = STUN_HDR_LEN; off + 4 <= len;) {
        uint16_t at = rd16(req + off), al = rd16(req + off + 2);
        if (off + 4 + al > len)
            return -EBADMSG;
        if (at == 0x0003 && al == 4 && (rd32(req + off + 4) & 0x6))
            return -EPERM;
        off += 4 + (((size_t)al + 3) & ~(size_t)3);
    }
    if (client->u.sa.sa_family != AF_INET || cap < STUN_HDR_LEN + 12)
        return -EBADMSG;
    wr16(out, 0x0101);
    wr16(out + 2, 12);
    memcpy(out + 4, req + 4, 16);
    wr16(out + 20, STUN_A_MAPPED_ADDRESS);
    wr16(out + 22, 8);
    out[24] = 0;
    out[25] = 1;
    wr16(out + 26, ntohs(client->u.in4.sin_port));
    memcpy(out + 28, &client->u.in4.sin_addr, 4);
    return STUN_HDR_LEN + 12;
}
