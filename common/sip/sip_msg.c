/* SIP message framing and header index (see sip_msg.h): a single bounded pass, no allocation. */
#include "common/sip/sip_msg.h"

#include <errno.h>
#include <strings.h>

static const char *const hdr_names[SIP_H_COUNT] = {
    [SIP_H_OTHER] = "",
    [SIP_H_VIA] = "Via",
    [SIP_H_FROM] = "From",
    [SIP_H_TO] = "To",
    [SIP_H_CALL_ID] = "Call-ID",
    [SIP_H_CSEQ] = "CSeq",
    [SIP_H_MAX_FORWARDS] = "Max-Forwards",
    [SIP_H_CONTENT_LENGTH] = "Content-Length",
    [SIP_H_ROUTE] = "Route",
    [SIP_H_RECORD_ROUTE] = "Record-Route",
    [SIP_H_CONTACT] = "Contact",
    [SIP_H_PATH] = "Path",
    [SIP_H_TRUST] = "ms-edge-proxy-message-trust",
};

const char *sip_hdr_name(enum sip_hdr_id id)
{
    return (unsigned)id < SIP_H_COUNT ? hdr_names[id] : "";
}

static bool name_is(const uint8_t *p, size_t n, const char *s)
{
    return strlen(s) == n && strncasecmp((const char *)p, s, n) == 0;
}

/* Full and compact names (RFC 3261 §7.3.3). */
static enum sip_hdr_id hdr_lookup(const uint8_t *p, size_t n)
{
    if (n == 1) {
        switch (p[0] | 0x20) {
        case 'v':
            return SIP_H_VIA;
        case 'f':
            return SIP_H_FROM;
        case 't':
            return SIP_H_TO;
        case 'i':
            return SIP_H_CALL_ID;
        case 'l':
            return SIP_H_CONTENT_LENGTH;
        case 'm':
            return SIP_H_CONTACT;
        default:
            return SIP_H_OTHER;
        }
    }
    for (int id = SIP_H_VIA; id < SIP_H_COUNT; id++)
        if (name_is(p, n, hdr_names[id]))
            return (enum sip_hdr_id)id;
    return SIP_H_OTHER;
}

static bool is_token_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("-.!%*_+`'~", c) != NULL;
}

/* Offset of the next CRLF at or after i, or len. */
static size_t find_crlf(const uint8_t *p, size_t i, size_t len)
{
    while (i + 1 < len) {
        const uint8_t *q = memchr(p + i, '\r', len - i - 1);
        if (!q)
            return len;
        i = (size_t)(q - p);
        if (p[i + 1] == '\n')
            return i;
        i++;
    }
    return len;
}

/* A Request-URI byte: printable ASCII, none of the delimiters that never appear in one. */
static bool is_uri_char(uint8_t c)
{
    return c > 0x20 && c < 0x7f && c != '<' && c != '>' && c != '"';
}

/* "SIP/" 1*DIGIT "." 1*DIGIT: another version, answered 505 (RFC 3261 §21.5.6). */
static bool other_version(const uint8_t *v, size_t vl)
{
    size_t k = 4, d1, d2;
    if (vl <= 4 || strncasecmp((const char *)v, "SIP/", 4) != 0)
        return false;
    for (d1 = k; k < vl && v[k] >= '0' && v[k] <= '9'; k++)
        ;
    if (k == d1 || k >= vl || v[k] != '.')
        return false;
    for (d2 = ++k; k < vl && v[k] >= '0' && v[k] <= '9'; k++)
        ;
    return k == vl && k > d2;
}

static int parse_start_line(struct sip_msg *m, const uint8_t *p, size_t n)
{
    static const char ver[] = "SIP/2.0";
    if (n > 8 && memcmp(p, ver, 7) == 0 && p[7] == ' ') {
        /* Status-Line: SIP/2.0 SP 3DIGIT SP Reason */
        if (n < 11 || p[8] < '1' || p[8] > '6' || p[9] < '0' || p[9] > '9' || p[10] < '0' ||
            p[10] > '9' || (n > 11 && p[11] != ' '))
            return -EBADMSG;
        m->is_request = false;
        m->status = (p[8] - '0') * 100 + (p[9] - '0') * 10 + (p[10] - '0');
        return 0;
    }
    /* Request-Line: Method SP Request-URI SP SIP-Version (RFC 3261 §25.1: single SPs, no
     * LWS, nothing after the version). Anything that starts with a method and a space is
     * still a request: indexed with a defect, so that it gets its 400 (RFC 4475 §3.1.2). */
    size_t i = 0;
    while (i < n && is_token_char(p[i]))
        i++;
    if (i == 0 || i >= n || p[i] != ' ')
        return -EBADMSG;
    m->method = slice_make(p, i);
    m->is_request = true;
    size_t u = ++i;
    while (i < n && is_uri_char(p[i]))
        i++;
    m->ruri = slice_make(p + u, i - u);
    bool uri_ok = i > u && memchr(p + u, ':', i - u) != NULL;
    if (!uri_ok || i >= n || p[i] != ' ') {
        m->defect = SIP_DEFECT_START_LINE;
        return 0;
    }
    const uint8_t *v = p + i + 1;
    size_t vl = n - i - 1;
    if (vl == 7 && strncasecmp((const char *)v, ver, 7) == 0)
        return 0;
    m->defect = other_version(v, vl) ? SIP_DEFECT_VERSION : SIP_DEFECT_START_LINE;
    return 0;
}

static int parse_content_length(struct slice v, long *out)
{
    if (v.len == 0 || v.len > 9)
        return -EBADMSG;
    long n = 0;
    for (size_t i = 0; i < v.len; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return -EBADMSG;
        n = n * 10 + (v.p[i] - '0');
    }
    *out = n;
    return 0;
}

static void msg_reset(struct sip_msg *m, const uint8_t *data)
{
    m->buf = data;
    m->len = 0;
    m->is_request = false;
    m->method = m->ruri = SLICE_NULL;
    m->status = 0;
    m->content_length = -1;
    m->max_line = 0;
    m->too_many_headers = false;
    m->defect = SIP_DEFECT_NONE;
    m->hdr_end = 0;
    m->nhdr = 0;
    m->body_len = 0;
    memset(m->count, 0, sizeof(m->count));
    memset(m->first, 0xff, sizeof(m->first));
}

/* The header section did not end within what was given: a stream waits for more, unless it
 * is already over the limit; a datagram is all there is. */
static ssize_t incomplete(size_t len, bool datagram, size_t max_hdr_bytes)
{
    if (datagram)
        return -EBADMSG;
    return len < max_hdr_bytes ? -EAGAIN : -EMSGSIZE;
}

/* Indexes one header: name i..i+name_len, value c..vend, the line up to line_end. */
static void add_header(struct sip_msg *m, const uint8_t *data, size_t i, size_t name_len, size_t c,
                       size_t vend, size_t line_end)
{
    enum sip_hdr_id id = hdr_lookup(data + i, name_len);
    if (m->nhdr < SIP_MSG_MAX_HEADERS) {
        struct sip_hdr *h = &m->hdr[m->nhdr];
        h->id = (uint8_t)id;
        h->line_off = (uint32_t)i;
        h->line_end = (uint32_t)line_end;
        h->name_len = (uint32_t)name_len;
        h->val_off = (uint32_t)c;
        h->val_len = (uint32_t)(vend - c);
        if (m->first[id] < 0)
            m->first[id] = (int16_t)m->nhdr;
        m->nhdr++;
    } else {
        m->too_many_headers = true;
    }
    if (m->count[id] < UINT16_MAX)
        m->count[id]++;
    if (id == SIP_H_CONTENT_LENGTH && m->count[id] == 1 &&
        parse_content_length(slice_make(data + c, vend - c), &m->content_length) < 0) {
        m->content_length = -1;
        m->defect = SIP_DEFECT_LENGTH;
    }
}

/* The header line at i with its continuation lines (RFC 3261 §7.3.1 folding): the offset
 * after it, 0 when i is the empty line that ends the section, -EAGAIN when the line does not
 * end within scan_len, -EBADMSG when it is no header. */
static ssize_t scan_header(struct sip_msg *m, const uint8_t *data, size_t i, size_t scan_len)
{
    size_t e = find_crlf(data, i, scan_len);
    if (e == scan_len)
        return -EAGAIN;
    if (e == i)
        return 0;
    size_t line_end = e + 2;
    while (line_end < scan_len && (data[line_end] == ' ' || data[line_end] == '\t')) {
        e = find_crlf(data, line_end, scan_len);
        if (e == scan_len)
            return -EAGAIN;
        line_end = e + 2;
    }
    size_t ll = line_end - 2 - i;
    if (ll > m->max_line)
        m->max_line = (uint32_t)ll;
    size_t c = i;
    while (c < e && is_token_char(data[c]))
        c++;
    size_t name_len = c - i;
    while (c < e && (data[c] == ' ' || data[c] == '\t'))
        c++;
    if (name_len == 0 || c >= line_end - 2 || data[c] != ':')
        return -EBADMSG;
    c++;
    size_t vend = line_end - 2;
    while (c < vend && (data[c] == ' ' || data[c] == '\t' || data[c] == '\r' || data[c] == '\n'))
        c++;
    while (vend > c && (data[vend - 1] == ' ' || data[vend - 1] == '\t'))
        vend--;
    add_header(m, data, i, name_len, c, vend, line_end);
    return (ssize_t)line_end;
}

/* The body after the header section ending at i: the message's length, or -EAGAIN,
 * -EMSGSIZE, -EBADMSG on a stream. */
static ssize_t frame_body(struct sip_msg *m, size_t len, size_t i, bool datagram,
                          size_t max_hdr_bytes)
{
    m->hdr_end = (uint32_t)i;
    if (datagram) {
        /* RFC 3261 §18.3: bytes past the body that Content-Length gives are discarded. */
        size_t body = len - i;
        if (m->content_length >= 0 && body > (size_t)m->content_length)
            body = (size_t)m->content_length;
        m->body_len = (uint32_t)body;
        m->len = i + body;
        return (ssize_t)m->len;
    }
    /* Streams need one Content-Length to frame the body (RFC 3261 §18.3). */
    if (m->content_length < 0 || m->count[SIP_H_CONTENT_LENGTH] > 1 ||
        m->defect == SIP_DEFECT_LENGTH)
        return -EBADMSG;
    if (max_hdr_bytes && i + (size_t)m->content_length > max_hdr_bytes)
        return -EMSGSIZE;
    if (len - i < (size_t)m->content_length)
        return -EAGAIN;
    m->body_len = (uint32_t)m->content_length;
    m->len = i + (size_t)m->content_length;
    return (ssize_t)m->len;
}

ssize_t sip_msg_scan(struct sip_msg *m, const uint8_t *data, size_t len, bool datagram,
                     size_t max_hdr_bytes)
{
    msg_reset(m, data);
    /* Find the end of the header section first, so that a stream knows whether to wait. */
    size_t scan_len = len;
    if (scan_len > max_hdr_bytes && max_hdr_bytes)
        scan_len = max_hdr_bytes;
    size_t e = find_crlf(data, 0, scan_len);
    if (e == scan_len)
        return incomplete(len, datagram, max_hdr_bytes);
    if (parse_start_line(m, data, e) < 0)
        return -EBADMSG;
    m->start_end = (uint32_t)(e + 2);
    size_t i = m->start_end;
    for (;;) {
        ssize_t r = scan_header(m, data, i, scan_len);
        if (r == -EAGAIN)
            return incomplete(len, datagram, max_hdr_bytes);
        if (r < 0)
            return r;
        if (r == 0) { /* the empty line */
            i += 2;
            break;
        }
        i = (size_t)r;
    }
    return frame_body(m, len, i, datagram, max_hdr_bytes);
}

const struct sip_hdr *sip_msg_find(const struct sip_msg *m, enum sip_hdr_id id)
{
    int16_t k = m->first[id];
    return k < 0 ? NULL : &m->hdr[k];
}

size_t sip_value_first_len(struct slice v)
{
    bool quoted = false;
    int angle = 0;
    for (size_t i = 0; i < v.len; i++) {
        uint8_t c = v.p[i];
        if (quoted) {
            if (c == '\\')
                i++;
            else if (c == '"')
                quoted = false;
        } else if (c == '"') {
            quoted = true;
        } else if (c == '<') {
            angle++;
        } else if (c == '>') {
            if (angle)
                angle--;
        } else if (c == ',' && !angle) {
            return i;
        }
    }
    return v.len;
}

bool sip_param_find(struct slice v, const char *name, struct slice *val)
{
    size_t nl = strlen(name);
    size_t end = sip_value_first_len(v);
    size_t i = 0;
    int angle = 0;
    /* Parameters of the header (not of a URI inside <>). */
    while (i < end) {
        uint8_t c = v.p[i];
        if (c == '<')
            angle++;
        else if (c == '>' && angle)
            angle--;
        if (c != ';' || angle) {
            i++;
            continue;
        }
        i++;
        while (i < end && (v.p[i] == ' ' || v.p[i] == '\t'))
            i++;
        size_t s = i;
        while (i < end && v.p[i] != '=' && v.p[i] != ';' && v.p[i] != ' ')
            i++;
        bool match = (i - s == nl) && strncasecmp((const char *)v.p + s, name, nl) == 0;
        while (i < end && v.p[i] == ' ')
            i++;
        size_t vs = i, ve = i;
        if (i < end && v.p[i] == '=') {
            i++;
            while (i < end && v.p[i] == ' ')
                i++;
            vs = i;
            while (i < end && v.p[i] != ';')
                i++;
            ve = i;
            while (ve > vs && (v.p[ve - 1] == ' ' || v.p[ve - 1] == '\t'))
                ve--;
        }
        if (match) {
            if (val)
                *val = slice_make(v.p + vs, ve - vs);
            return true;
        }
    }
    return false;
}

bool sip_via_sent_by(struct slice via, struct slice *host, uint16_t *port)
{
    /* "SIP/2.0/UDP host:port;params" */
    size_t i = 0, end = sip_value_first_len(via);
    while (i < end && via.p[i] != ' ' && via.p[i] != '\t')
        i++;
    while (i < end && (via.p[i] == ' ' || via.p[i] == '\t'))
        i++;
    if (i >= end)
        return false;
    size_t hs = i, he;
    if (via.p[i] == '[') {
        while (i < end && via.p[i] != ']')
            i++;
        if (i >= end)
            return false;
        hs++;
        he = i++;
    } else {
        while (i < end && via.p[i] != ':' && via.p[i] != ';' && via.p[i] != ' ')
            i++;
        he = i;
    }
    if (he == hs)
        return false;
    *host = slice_make(via.p + hs, he - hs);
    *port = 0;
    if (i < end && via.p[i] == ':') {
        unsigned n = 0;
        size_t d = ++i;
        while (i < end && via.p[i] >= '0' && via.p[i] <= '9' && i - d < 6)
            n = n * 10 + (via.p[i++] - '0');
        if (i == d || n == 0 || n > 65535)
            return false;
        *port = (uint16_t)n;
    }
    return true;
}

struct slice sip_cseq_method(const struct sip_msg *m)
{
    const struct sip_hdr *h = sip_msg_find(m, SIP_H_CSEQ);
    if (!h)
        return SLICE_NULL;
    struct slice v = sip_hdr_value(m, h);
    size_t i = 0;
    while (i < v.len && v.p[i] >= '0' && v.p[i] <= '9')
        i++;
    /* LWS, folding included (RFC 3261 §7.3.1: "CSeq: 9\r\n  INVITE"). */
    while (i < v.len && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == '\r' || v.p[i] == '\n'))
        i++;
    size_t s = i;
    while (i < v.len && is_token_char(v.p[i]))
        i++;
    return slice_make(v.p + s, i - s);
}

void sip_values_begin(struct sip_value_iter *it, const struct sip_msg *m, enum sip_hdr_id id)
{
    it->m = m;
    it->id = id;
    it->next_hdr = m->first[id] < 0 ? m->nhdr : (uint16_t)m->first[id];
    it->rest = SLICE_NULL;
}

static struct slice trim_lws(struct slice v)
{
    while (v.len && (v.p[0] == ' ' || v.p[0] == '\t' || v.p[0] == '\r' || v.p[0] == '\n')) {
        v.p++;
        v.len--;
    }
    while (v.len && (v.p[v.len - 1] == ' ' || v.p[v.len - 1] == '\t'))
        v.len--;
    return v;
}

bool sip_values_next(struct sip_value_iter *it, struct slice *v)
{
    while (it->rest.len == 0) {
        const struct sip_msg *m = it->m;
        while (it->next_hdr < m->nhdr && m->hdr[it->next_hdr].id != it->id)
            it->next_hdr++;
        if (it->next_hdr >= m->nhdr)
            return false;
        it->rest = trim_lws(sip_hdr_value(m, &m->hdr[it->next_hdr++]));
    }
    size_t n = sip_value_first_len(it->rest);
    *v = trim_lws(slice_make(it->rest.p, n));
    if (n >= it->rest.len)
        it->rest = SLICE_NULL;
    else
        it->rest = trim_lws(slice_make(it->rest.p + n + 1, it->rest.len - n - 1));
    return true;
}
