/* Proxy message surgery by splicing lines (see sip_proxy.h). */
#include "common/sip/sip_proxy.h"

#include <errno.h>
#include <stdio.h>
#include <strings.h>

#include "common/crypto.h"

/* ---- branches ---- */

struct slice sip_top_branch(const struct sip_msg *m)
{
    const struct sip_hdr *h = sip_msg_find(m, SIP_H_VIA);
    struct slice b = SLICE_NULL;
    if (h)
        sip_param_find(sip_hdr_value(m, h), "branch", &b);
    return b;
}

uint64_t sip_branch_hash(uint64_t salt, const struct sip_msg *m)
{
    uint64_t h = FNV1A_INIT ^ salt;
    const struct sip_hdr *via = sip_msg_find(m, SIP_H_VIA);
    struct slice b = sip_top_branch(m);
    if (b.len > 7 && memcmp(b.p, "z9hG4bK", 7) == 0) {
        /* RFC 3261 §17.2.3: branch plus sent-by identify the client transaction. */
        struct slice host = SLICE_NULL;
        uint16_t port = 0;
        if (via)
            sip_via_sent_by(sip_hdr_value(m, via), &host, &port);
        h = fnv1a(h, b.p, b.len);
        h = fnv1a(h, host.p ? host.p : (const uint8_t *)"", host.len);
        h = fnv1a(h, (const uint8_t *)&port, sizeof(port));
    } else {
        /* RFC 2543 peers: Call-ID, CSeq number, From tag, Request-URI. */
        static const enum sip_hdr_id ids[] = {SIP_H_CALL_ID, SIP_H_FROM};
        for (size_t i = 0; i < ARRAY_SIZE(ids); i++) {
            const struct sip_hdr *x = sip_msg_find(m, ids[i]);
            if (x)
                h = fnv1a(h, m->buf + x->val_off, x->val_len);
        }
        const struct sip_hdr *cs = sip_msg_find(m, SIP_H_CSEQ);
        if (cs) {
            struct slice v = sip_hdr_value(m, cs);
            size_t k = 0;
            while (k < v.len && v.p[k] >= '0' && v.p[k] <= '9')
                k++;
            h = fnv1a(h, v.p, k);
        }
        h = fnv1a(h, m->ruri.p ? m->ruri.p : (const uint8_t *)"", m->ruri.len);
    }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 32;
    return h;
}

size_t sip_branch_format(uint64_t h, uint32_t conn_id, char out[SIP_BRANCH_MAX])
{
    int n = snprintf(out, SIP_BRANCH_MAX, "z9hG4bK%016llx.%x", (unsigned long long)h, conn_id);
    return (size_t)n;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

bool sip_branch_parse(struct slice b, uint64_t *h, uint32_t *conn_id)
{
    if (b.len < 7 + 16 + 2 || b.len > 7 + 16 + 1 + 8 || memcmp(b.p, "z9hG4bK", 7) != 0 ||
        b.p[23] != '.')
        return false;
    uint64_t x = 0;
    for (size_t i = 7; i < 23; i++) {
        int d = hexval(b.p[i]);
        if (d < 0)
            return false;
        x = (x << 4) | (uint64_t)d;
    }
    uint32_t c = 0;
    for (size_t i = 24; i < b.len; i++) {
        int d = hexval(b.p[i]);
        if (d < 0)
            return false;
        c = (c << 4) | (uint32_t)d;
    }
    *h = x;
    *conn_id = c;
    return true;
}

/* ---- flow tokens ---- */

int sip_flow_encode(const uint8_t key[SIP_FLOW_KEY_LEN], const struct sip_flow *f, char *out,
                    size_t cap)
{
    char host[ADDR_STRLEN], hex[2 * 16 + 1] = "";
    const uint8_t *ip;
    size_t iplen;
    if (addr_family(&f->addr) == AF_INET6) {
        ip = (const uint8_t *)&f->addr.u.in6.sin6_addr;
        iplen = 16;
    } else {
        ip = (const uint8_t *)&f->addr.u.in4.sin_addr;
        iplen = 4;
    }
    hex_encode(ip, iplen, hex);
    (void)host;
    char body[SIP_FLOW_TOKEN_MAX];
    int n = snprintf(body, sizeof(body), "%c%x.%s.%x", f->stream ? 't' : 'u', f->conn_id, hex,
                     addr_port(&f->addr));
    if (n < 0 || (size_t)n >= sizeof(body))
        return -ENOSPC;
    uint8_t mac[SHA256_LEN];
    crypto_hmac_sha256(key, SIP_FLOW_KEY_LEN, body, (size_t)n, mac);
    char machex[17];
    hex_encode(mac, 8, machex);
    int m = snprintf(out, cap, "%s.%s", body, machex);
    return (m < 0 || (size_t)m >= cap) ? -ENOSPC : m;
}

int sip_flow_decode(const uint8_t key[SIP_FLOW_KEY_LEN], struct slice tok, struct sip_flow *f)
{
    if (tok.len < 8 || tok.len >= SIP_FLOW_TOKEN_MAX)
        return -EINVAL;
    size_t dot = tok.len;
    while (dot > 0 && tok.p[dot - 1] != '.')
        dot--;
    if (dot == 0 || tok.len - dot != 16)
        return -EINVAL;
    uint8_t mac[SHA256_LEN];
    crypto_hmac_sha256(key, SIP_FLOW_KEY_LEN, tok.p, dot - 1, mac);
    char machex[17];
    hex_encode(mac, 8, machex);
    if (!crypto_ct_eq(machex, tok.p + dot, 16))
        return -EACCES;
    char body[SIP_FLOW_TOKEN_MAX];
    memcpy(body, tok.p, dot - 1);
    body[dot - 1] = 0;
    char kind = body[0];
    unsigned conn = 0, port = 0;
    char iphex[33];
    if ((kind != 't' && kind != 'u') ||
        sscanf(body + 1, "%x.%32[0-9a-f].%x", &conn, iphex, &port) != 3 || port == 0 ||
        port > 65535)
        return -EINVAL;
    size_t hl = strlen(iphex);
    uint8_t ip[16];
    if (hl != 8 && hl != 32)
        return -EINVAL;
    for (size_t i = 0; i < hl / 2; i++) {
        int hi = hexval((uint8_t)iphex[2 * i]), lo = hexval((uint8_t)iphex[2 * i + 1]);
        if (hi < 0 || lo < 0) /* sscanf let only hex digits through: cannot happen */
            return -EINVAL;
        ip[i] = (uint8_t)(hi << 4 | lo);
    }
    memset(f, 0, sizeof(*f));
    if (hl == 8) {
        f->addr.u.in4.sin_family = AF_INET;
        memcpy(&f->addr.u.in4.sin_addr, ip, 4);
    } else {
        f->addr.u.in6.sin6_family = AF_INET6;
        memcpy(&f->addr.u.in6.sin6_addr, ip, 16);
    }
    addr_set_port(&f->addr, (uint16_t)port);
    f->stream = kind == 't';
    f->conn_id = conn;
    return 0;
}

/* ---- forwarding ---- */

/* Writes the first Via value with received/rport added for a request that came from src
 * (RFC 3261 §18.2.1, RFC 3581 §4). */
static void put_top_via(struct sip_out *w, const struct sip_msg *m, const struct sip_hdr *h,
                        const struct addr *src)
{
    struct slice v = sip_hdr_value(m, h);
    size_t first = sip_value_first_len(v);
    struct slice fv = slice_make(v.p, first);
    while (fv.len && (fv.p[fv.len - 1] == ' ' || fv.p[fv.len - 1] == '\t'))
        fv.len--;
    char ip[ADDR_STRLEN];
    addr_format_host(src, ip);
    struct slice host;
    uint16_t port;
    bool need_received = !sip_via_sent_by(v, &host, &port) || !slice_caseeq_str(host, ip);
    struct slice rport;
    bool want_rport = sip_param_find(fv, "rport", &rport) && rport.len == 0;
    struct slice dummy;
    if (sip_param_find(fv, "received", &dummy))
        need_received = false; /* someone already set it; leave theirs (rare) */
    sip_out_put(w, m->buf + h->line_off, h->val_off - h->line_off);
    if (want_rport) {
        /* rport with no value: fill it in place. */
        size_t at = (size_t)(rport.p - fv.p);
        sip_out_put(w, fv.p, at);
        char pb[16];
        snprintf(pb, sizeof(pb), "=%u", addr_port(src));
        sip_out_str(w, pb);
        sip_out_put(w, fv.p + at, fv.len - at);
        need_received = true;
    } else {
        sip_out_slice(w, fv);
    }
    if (need_received) {
        sip_out_str(w, ";received=");
        sip_out_str(w, ip);
    }
    sip_out_put(w, v.p + fv.len, (size_t)(m->buf + h->line_end - (v.p + fv.len)));
}

/* What follows the first comma-separated value of v (empty if nothing does). */
static struct slice after_first_value(struct slice v)
{
    size_t n = sip_value_first_len(v);
    if (n >= v.len)
        return SLICE_NULL;
    v.p += n + 1;
    v.len -= n + 1;
    while (v.len && (v.p[0] == ' ' || v.p[0] == '\t' || v.p[0] == '\r' || v.p[0] == '\n')) {
        v.p++;
        v.len--;
    }
    return v;
}

/* Writes the Route header lines minus the first `pop` entries. */
static unsigned put_route(struct sip_out *w, const struct sip_msg *m, const struct sip_hdr *h,
                          unsigned pop)
{
    struct slice v = sip_hdr_value(m, h);
    for (; pop > 0 && v.len > 0; pop--)
        v = after_first_value(v);
    if (v.len == 0)
        return pop;
    sip_out_str(w, "Route: ");
    sip_out_slice(w, v);
    sip_out_str(w, "\r\n");
    return pop;
}

static void put_max_forwards(struct sip_out *w, const struct sip_msg *m, const struct sip_hdr *h)
{
    struct slice v = sip_hdr_value(m, h);
    unsigned n = 0;
    for (size_t i = 0; i < v.len && i < 4 && v.p[i] >= '0' && v.p[i] <= '9'; i++)
        n = n * 10 + (unsigned)(v.p[i] - '0');
    char line[32];
    snprintf(line, sizeof(line), "Max-Forwards: %u\r\n", n > 0 ? n - 1 : 0);
    sip_out_str(w, line);
}

ssize_t sip_fwd_request(const struct sip_msg *m, const struct sip_fwd_opts *o, uint8_t *out,
                        size_t cap)
{
    struct sip_out w = sip_out_make(out, cap);
    if (o->ruri.len) {
        sip_out_slice(&w, m->method);
        sip_out_str(&w, " ");
        sip_out_slice(&w, o->ruri);
        sip_out_str(&w, " SIP/2.0\r\n");
    } else {
        sip_out_put(&w, m->buf, m->start_end);
    }
    sip_out_slice(&w, o->insert);
    /* RFC 3261 §16.6 step 3: a request without Max-Forwards (RFC 2543's) gets one. */
    if (!m->count[SIP_H_MAX_FORWARDS])
        sip_out_str(&w, "Max-Forwards: 70\r\n");
    unsigned pop = o->pop_routes;
    bool first_via = true;
    for (uint16_t i = 0; i < m->nhdr; i++) {
        const struct sip_hdr *h = &m->hdr[i];
        if (o->drop & SIP_HDR_BIT(h->id))
            continue;
        switch (h->id) {
        case SIP_H_MAX_FORWARDS:
            put_max_forwards(&w, m, h);
            continue;
        case SIP_H_VIA:
            if (first_via && o->src) {
                first_via = false;
                put_top_via(&w, m, h, o->src);
                continue;
            }
            first_via = false;
            break;
        case SIP_H_ROUTE:
            if (pop > 0) {
                pop = put_route(&w, m, h, pop);
                continue;
            }
            break;
        default:
            break;
        }
        sip_out_put(&w, m->buf + h->line_off, h->line_end - h->line_off);
    }
    sip_out_put(&w, m->buf + m->hdr_end - 2, 2 + m->body_len);
    return sip_out_done(&w);
}

ssize_t sip_fwd_response(const struct sip_msg *m, struct slice insert, uint32_t drop, uint8_t *out,
                         size_t cap)
{
    struct sip_out w = sip_out_make(out, cap);
    sip_out_put(&w, m->buf, m->start_end);
    sip_out_slice(&w, insert);
    bool first_via = true;
    for (uint16_t i = 0; i < m->nhdr; i++) {
        const struct sip_hdr *h = &m->hdr[i];
        if (drop & SIP_HDR_BIT(h->id))
            continue;
        if (h->id == SIP_H_VIA && first_via) {
            first_via = false;
            struct slice rest = after_first_value(sip_hdr_value(m, h));
            if (rest.len == 0)
                continue; /* the line held only our Via */
            sip_out_str(&w, "Via: ");
            sip_out_slice(&w, rest);
            sip_out_str(&w, "\r\n");
            continue;
        }
        sip_out_put(&w, m->buf + h->line_off, h->line_end - h->line_off);
    }
    sip_out_put(&w, m->buf + m->hdr_end - 2, 2 + m->body_len);
    return sip_out_done(&w);
}

static const char *default_phrase(int status)
{
    switch (status) {
    case 100:
        return "Trying";
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 430:
        return "Flow Failed";
    case 481:
        return "Call/Transaction Does Not Exist";
    case 482:
        return "Loop Detected";
    case 483:
        return "Too Many Hops";
    case 487:
        return "Request Terminated";
    case 500:
        return "Server Internal Error";
    case 503:
        return "Service Unavailable";
    case 513:
        return "Message Too Large";
    default:
        return "Unknown";
    }
}

ssize_t sip_reply_make(const struct sip_msg *m, int status, const char *phrase, const char *to_tag,
                       struct slice extra, uint8_t *out, size_t cap)
{
    return sip_reply_make_src(m, NULL, status, phrase, to_tag, extra, out, cap);
}

ssize_t sip_reply_make_src(const struct sip_msg *m, const struct addr *src, int status,
                           const char *phrase, const char *to_tag, struct slice extra, uint8_t *out,
                           size_t cap)
{
    struct sip_out w = sip_out_make(out, cap);
    bool first_via = true;
    char sl[64];
    snprintf(sl, sizeof(sl), "SIP/2.0 %03d ", status);
    sip_out_str(&w, sl);
    sip_out_str(&w, phrase ? phrase : default_phrase(status));
    sip_out_str(&w, "\r\n");
    for (uint16_t i = 0; i < m->nhdr; i++) {
        const struct sip_hdr *h = &m->hdr[i];
        switch (h->id) {
        case SIP_H_VIA:
            if (first_via && src) {
                first_via = false;
                put_top_via(&w, m, h, src);
                break;
            }
            first_via = false;
            sip_out_put(&w, m->buf + h->line_off, h->line_end - h->line_off);
            break;
        case SIP_H_FROM:
        case SIP_H_CALL_ID:
        case SIP_H_CSEQ:
            sip_out_put(&w, m->buf + h->line_off, h->line_end - h->line_off);
            break;
        case SIP_H_TO: {
            struct slice v = sip_hdr_value(m, h);
            sip_out_put(&w, m->buf + h->line_off, h->val_off + h->val_len - h->line_off);
            if (status > 100 && to_tag && !sip_param_find(v, "tag", NULL)) {
                sip_out_str(&w, ";tag=");
                sip_out_str(&w, to_tag);
            }
            sip_out_str(&w, "\r\n");
            break;
        }
        default:
            break;
        }
    }
    sip_out_slice(&w, extra);
    sip_out_str(&w, "Content-Length: 0\r\n\r\n");
    return sip_out_done(&w);
}

/* The k-th Via value (0-based) across all Via lines. */
static bool via_value(const struct sip_msg *m, unsigned k, struct slice *out)
{
    struct sip_value_iter it;
    sip_values_begin(&it, m, SIP_H_VIA);
    while (sip_values_next(&it, out))
        if (k-- == 0)
            return true;
    return false;
}

int sip_response_next_hop(const struct sip_msg *m, struct addr *to)
{
    return sip_response_hop_at(m, 1, to);
}

int sip_response_hop_at(const struct sip_msg *m, unsigned k, struct addr *to)
{
    struct slice v, host, rec, rport;
    uint16_t port;
    if (!via_value(m, k, &v) || !sip_via_sent_by(v, &host, &port))
        return -EINVAL;
    if (sip_param_find(v, "received", &rec) && rec.len)
        host = rec;
    if (sip_param_find(v, "rport", &rport) && rport.len) {
        unsigned n = 0;
        for (size_t i = 0; i < rport.len && i < 6; i++) {
            if (rport.p[i] < '0' || rport.p[i] > '9')
                return -EINVAL;
            n = n * 10 + (unsigned)(rport.p[i] - '0');
        }
        if (n == 0 || n > 65535)
            return -EINVAL;
        port = (uint16_t)n;
    }
    char h[ADDR_STRLEN];
    if (slice_to_cstr(host, h, sizeof(h)) < 0)
        return -EINVAL;
    if (addr_parse(to, h, port ? port : 5060) < 0)
        return -EINVAL;
    if (port)
        addr_set_port(to, port);
    return 0;
}

/* ---- topology hiding seal ---- */

static void keystream_xor(const uint8_t key[SIP_FLOW_KEY_LEN], uint64_t nonce, uint8_t *p, size_t n)
{
    uint8_t blk[SHA256_LEN], in[1 + 8 + 4];
    in[0] = 'k';
    memcpy(in + 1, &nonce, 8);
    for (uint32_t ctr = 0; (size_t)ctr * SHA256_LEN < n; ctr++) {
        memcpy(in + 9, &ctr, 4);
        crypto_hmac_sha256(key, SIP_FLOW_KEY_LEN, in, sizeof(in), blk);
        size_t off = (size_t)ctr * SHA256_LEN;
        for (size_t i = 0; i < SHA256_LEN && off + i < n; i++)
            p[off + i] ^= blk[i];
    }
}

static void seal_tag(const uint8_t key[SIP_FLOW_KEY_LEN], const uint8_t *p, size_t n,
                     uint8_t tag[12])
{
    /* A different key for the MAC than for the keystream: HMAC under the key with a label. */
    uint8_t k2[SHA256_LEN];
    crypto_hmac_sha256(key, SIP_FLOW_KEY_LEN, "seal-mac", 8, k2);
    uint8_t full[SHA256_LEN];
    crypto_hmac_sha256(k2, sizeof(k2), p, n, full);
    memcpy(tag, full, 12);
}

ssize_t sip_seal(const uint8_t key[SIP_FLOW_KEY_LEN], uint64_t nonce, struct slice text, char *out,
                 size_t cap)
{
    uint8_t buf[4096];
    if (text.len + 8 + 12 > sizeof(buf))
        return -ENOSPC;
    memcpy(buf, &nonce, 8);
    memcpy(buf + 8, text.p, text.len);
    keystream_xor(key, nonce, buf + 8, text.len);
    seal_tag(key, buf, 8 + text.len, buf + 8 + text.len);
    ssize_t n = base64url_encode(buf, 8 + text.len + 12, out, cap);
    return n < 0 ? -ENOSPC : n;
}

ssize_t sip_unseal(const uint8_t key[SIP_FLOW_KEY_LEN], struct slice token, uint8_t *out,
                   size_t cap)
{
    uint8_t buf[4096];
    ssize_t n = base64url_decode((const char *)token.p, token.len, buf, sizeof(buf));
    if (n < 8 + 12)
        return -EACCES;
    uint8_t tag[12];
    seal_tag(key, buf, (size_t)n - 12, tag);
    if (!crypto_ct_eq(tag, buf + n - 12, 12))
        return -EACCES;
    size_t len = (size_t)n - 8 - 12;
    if (len > cap)
        return -ENOSPC;
    uint64_t nonce;
    memcpy(&nonce, buf, 8);
    memcpy(out, buf + 8, len);
    keystream_xor(key, nonce, out, len);
    return (ssize_t)len;
}
