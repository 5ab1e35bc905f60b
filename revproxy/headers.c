/* Builds the heads the proxy sends: upstream requests with forwarding headers, client
 * responses with internal names rewritten, and the proxy's own small responses. */
#include "revproxy/headers.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int put(struct buf *b, const void *p, size_t n)
{
    return buf_append(b, p, n);
}

static int puts_(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

static int put_slice(struct buf *b, struct slice s)
{
    return s.len ? buf_append(b, s.p, s.len) : 0;
}

static int put_header(struct buf *b, struct slice name, struct slice value)
{
    int rc = put_slice(b, name);
    rc = rc ? rc : put(b, ": ", 2);
    rc = rc ? rc : put_slice(b, value);
    return rc ? rc : put(b, "\r\n", 2);
}

bool http_is_hop_by_hop(struct slice name, struct slice connection)
{
    static const struct {
        const char *s;
        size_t len;
    } hop[] = {{"connection", 10},
               {"keep-alive", 10},
               {"proxy-connection", 16},
               {"te", 2},
               {"trailer", 7},
               {"upgrade", 7},
               {"proxy-authorization", 19},
               {"proxy-authenticate", 18}};
    for (size_t i = 0; i < ARRAY_SIZE(hop); i++)
        if (name.len == hop[i].len && strncasecmp((const char *)name.p, hop[i].s, name.len) == 0)
            return true;
    if (connection.len == 0 || name.len >= 64)
        return false;
    char n[64];
    memcpy(n, name.p, name.len);
    n[name.len] = '\0';
    /* Framing headers are ours to keep even if a peer lists them in Connection. */
    if (!strcasecmp(n, "transfer-encoding") || !strcasecmp(n, "content-length") ||
        !strcasecmp(n, "host"))
        return false;
    return http_list_has(connection, n);
}

static struct slice connection_of(const struct http_head *h)
{
    struct slice c = http_head_get(h, "connection");
    return c.p ? c : SLICE_NULL;
}

/* Compares a header name with a lower-case name, '_' in the header taken as '-'. */
static bool name_is(struct slice n, const char *lower, size_t len)
{
    if (n.len != len)
        return false;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = n.p[i];
        c = c == '_' ? '-' : (c >= 'A' && c <= 'Z') ? (uint8_t)(c | 0x20) : c;
        if (c != (uint8_t)lower[i])
            return false;
    }
    return true;
}

bool http_is_forwarding(struct slice n)
{
    static const char *const names[] = {
        "forwarded",        "forwarded-for",    "x-forwarded",      "x-real-ip",
        "client-ip",        "true-client-ip",   "x-client-ip",      "x-cluster-client-ip",
        "cf-connecting-ip", "fastly-client-ip", "x-originating-ip", "x-remote-ip",
        "x-remote-addr",    "x-host",           "x-original-host",  "x-original-url",
        "x-rewrite-url",    "x-proxyuser-ip",
    };
    if (n.len > 12 && name_is(slice_make(n.p, 12), "x-forwarded-", 12))
        return true;
    for (size_t i = 0; i < ARRAY_SIZE(names); i++)
        if (name_is(n, names[i], strlen(names[i])))
            return true;
    return false;
}

/* The request line and Host: the route's host, else the client's, else the upstream's name. */
static int put_request_line(struct buf *out, const struct http_head *h, const struct http_fwd *f)
{
    int rc = put_slice(out, h->method_name);
    rc = rc ? rc : put(out, " ", 1);
    rc = rc ? rc : puts_(out, f->target);
    rc = rc ? rc : puts_(out, h->minor == 0 ? " HTTP/1.0\r\nHost: " : " HTTP/1.1\r\nHost: ");
    if (!rc && f->host_header)
        rc = puts_(out, f->host_header);
    else if (!rc && f->host.len)
        rc = put_slice(out, f->host);
    else if (!rc && f->fallback_host)
        rc = puts_(out, f->fallback_host);
    return rc ? rc : put(out, "\r\n", 2);
}

/* The reader checked the framing; what goes upstream is ours, once. */
static int put_framing(struct buf *out, const struct http_head *h)
{
    if (h->chunked)
        return puts_(out, "Transfer-Encoding: chunked\r\n");
    if (h->content_length == HTTP_NO_LENGTH)
        return 0;
    char cl[40];
    int k =
        snprintf(cl, sizeof cl, "Content-Length: %llu\r\n", (unsigned long long)h->content_length);
    return put(out, cl, (size_t)k);
}

/* What a trusted proxy before us already said, extended rather than repeated. */
struct fwd_seen {
    struct slice xff, fwd;
    bool proto, host;
    bool framed;
};

/* A client's own forwarding headers are not believed (USERS.md: only from trusted
 * proxies); a trusted proxy's are extended. Spellings with '_' are nobody's own: dropped.
 * True when header n goes on as it is. */
static bool forwarding_keep(const struct http_fwd *f, struct slice n, struct slice v,
                            struct fwd_seen *seen)
{
    if (!f->trusted || memchr(n.p, '_', n.len))
        return false;
    if (slice_caseeq_str(n, "x-forwarded-for")) {
        seen->xff = v;
        return false;
    }
    if (slice_caseeq_str(n, "forwarded")) {
        seen->fwd = v;
        return false;
    }
    seen->proto |= slice_caseeq_str(n, "x-forwarded-proto");
    seen->host |= slice_caseeq_str(n, "x-forwarded-host");
    return true;
}

/* The client's header fields, less hop-by-hop ones and Host, framing rebuilt. */
static int put_fields(struct buf *out, const struct http_head *h, const struct http_fwd *f,
                      struct fwd_seen *seen)
{
    struct slice conn = connection_of(h);
    int rc = 0;
    for (size_t i = 0; i < h->nhdr && !rc; i++) {
        struct slice n = h->hdr[i].name;
        if (slice_caseeq_str(n, "host") || http_is_hop_by_hop(n, conn))
            continue;
        if (slice_caseeq_str(n, "content-length") || slice_caseeq_str(n, "transfer-encoding")) {
            if (!seen->framed)
                rc = put_framing(out, h);
            seen->framed = true;
            continue;
        }
        if (http_is_forwarding(n) && !forwarding_keep(f, n, h->hdr[i].value, seen))
            continue;
        rc = put_header(out, n, h->hdr[i].value);
    }
    return rc;
}

/* X-Forwarded-For/-Proto/-Host (the last two unless a trusted proxy set them). */
static int put_x_forwarded(struct buf *out, const struct http_fwd *f, const char *ip,
                           const struct fwd_seen *seen)
{
    int rc = puts_(out, "X-Forwarded-For: ");
    if (!rc && seen->xff.len) {
        rc = put_slice(out, seen->xff);
        rc = rc ? rc : put(out, ", ", 2);
    }
    rc = rc ? rc : puts_(out, ip);
    if (!rc && !seen->proto)
        rc = puts_(out, f->tls ? "\r\nX-Forwarded-Proto: https" : "\r\nX-Forwarded-Proto: http");
    if (!rc && !seen->host && f->host.len) {
        rc = puts_(out, "\r\nX-Forwarded-Host: ");
        rc = rc ? rc : put_slice(out, f->host);
    }
    return rc;
}

/* Forwarded (RFC 7239), without its line end. */
static int put_forwarded(struct buf *out, const struct http_fwd *f, const char *ip,
                         const struct fwd_seen *seen)
{
    bool v6 = addr_family(f->client) == AF_INET6;
    int rc = puts_(out, "\r\nForwarded: ");
    if (!rc && seen->fwd.len) {
        rc = put_slice(out, seen->fwd);
        rc = rc ? rc : put(out, ", ", 2);
    }
    /* RFC 7239 section 6: an IPv6 node is quoted and bracketed. */
    rc = rc ? rc : puts_(out, v6 ? "for=\"[" : "for=");
    rc = rc ? rc : puts_(out, ip);
    rc = rc ? rc : puts_(out, v6 ? "]\";proto=" : ";proto=");
    rc = rc ? rc : puts_(out, f->tls ? "https" : "http");
    if (rc || !f->host.len)
        return rc;
    for (size_t i = 0; i < f->host.len; i++)
        if (f->host.p[i] == '"' || f->host.p[i] == '\\' || f->host.p[i] < 0x20)
            return 0;
    rc = puts_(out, ";host=\"");
    rc = rc ? rc : put_slice(out, f->host);
    return rc ? rc : put(out, "\"", 1);
}

int http_request_build(const struct http_head *h, const struct http_fwd *f, struct buf *out)
{
    char ipbuf[ADDR_STRLEN];
    const char *ip = f->client_ip ? f->client_ip : addr_format_host(f->client, ipbuf);
    struct fwd_seen seen = {SLICE_NULL, SLICE_NULL, false, false, false};
    int rc = put_request_line(out, h, f);
    rc = rc ? rc : put_fields(out, h, f, &seen);
    rc = rc ? rc : put_x_forwarded(out, f, ip, &seen);
    rc = rc ? rc : put_forwarded(out, f, ip, &seen);
    if (!rc && f->upgrade) {
        rc = puts_(out, "\r\nConnection: upgrade\r\nUpgrade: ");
        rc = rc ? rc : put_slice(out, http_head_get(h, "upgrade"));
        rc = rc ? rc : puts_(out, "\r\n\r\n");
    } else if (!rc) {
        rc = puts_(out, f->close ? "\r\nConnection: close\r\n\r\n"
                                 : "\r\nConnection: keep-alive\r\n\r\n");
    }
    return rc;
}

static bool is_internal(const struct http_back *b, struct slice host)
{
    for (size_t i = 0; b->internal && b->internal[i]; i++)
        if (slice_caseeq_str(host, b->internal[i]))
            return true;
    return false;
}

ssize_t http_location_rewrite(struct slice v, const struct http_back *b, char *out, size_t cap)
{
    struct slice path = v;
    bool absolute = false;
    size_t skip = 0;
    if (v.len > 7 && strncasecmp((const char *)v.p, "http://", 7) == 0)
        skip = 7;
    else if (v.len > 8 && strncasecmp((const char *)v.p, "https://", 8) == 0)
        skip = 8;
    if (skip) {
        const uint8_t *a = v.p + skip, *e = v.p + v.len, *q = a;
        while (q < e && *q != '/' && *q != '?' && *q != '#')
            q++;
        struct slice host = rp_host_strip_port(slice_make(a, (size_t)(q - a)));
        if (!is_internal(b, host))
            return 0;
        absolute = true;
        path = slice_make(q, (size_t)(e - q));
    } else if (v.len == 0 || v.p[0] != '/') {
        return 0; /* relative references keep working as they are */
    }
    char p2[2048];
    ssize_t pl = b->route ? rp_route_unrewrite(b->route, path, p2, sizeof p2) : 0;
    if (pl < 0)
        return 0;
    if (pl == 0 && !absolute)
        return 0;
    struct slice np = pl ? slice_make(p2, (size_t)pl) : path;
    int n;
    if (absolute)
        n = snprintf(out, cap, "%s://%.*s%.*s", b->tls ? "https" : "http", (int)b->client_host.len,
                     (const char *)b->client_host.p, (int)np.len, (const char *)np.p);
    else
        n = snprintf(out, cap, "%.*s", (int)np.len, (const char *)np.p);
    if (n <= 0 || (size_t)n >= cap)
        return 0;
    return n;
}

int http_response_build(const struct http_head *h, const struct http_back *b, struct buf *out)
{
    char line[16] = "HTTP/1.1 000 ";
    struct slice conn = connection_of(h);
    int st = h->status < 1000 ? h->status : 999;
    line[9] = (char)('0' + st / 100);
    line[10] = (char)('0' + st / 10 % 10);
    line[11] = (char)('0' + st % 10);
    int rc = put(out, line, 13);
    rc = rc ? rc : put_slice(out, h->reason);
    rc = rc ? rc : put(out, "\r\n", 2);
    for (size_t i = 0; i < h->nhdr && !rc; i++) {
        struct slice nm = h->hdr[i].name, v = h->hdr[i].value;
        if (http_is_hop_by_hop(nm, conn))
            continue;
        if (slice_caseeq_str(nm, "location") || slice_caseeq_str(nm, "content-location")) {
            char buf[2048];
            ssize_t l = http_location_rewrite(v, b, buf, sizeof buf);
            if (l > 0)
                v = slice_make(buf, (size_t)l);
            rc = put_header(out, nm, v);
            continue;
        }
        rc = put_header(out, nm, v);
    }
    if (rc)
        return rc;
    if (b->upgrade) {
        rc = puts_(out, "Connection: upgrade\r\nUpgrade: ");
        rc = rc ? rc : put_slice(out, http_head_get(h, "upgrade"));
        return rc ? rc : puts_(out, "\r\n\r\n");
    }
    if (b->close)
        return puts_(out, "Connection: close\r\n\r\n");
    if (b->http10_client)
        return puts_(out, "Connection: keep-alive\r\n\r\n");
    return puts_(out, "\r\n");
}

const char *http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 301:
        return "Moved Permanently";
    case 308:
        return "Permanent Redirect";
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
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 417:
        return "Expectation Failed";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

int http_simple_response(struct buf *out, int status, const char *extra, const char *body,
                         bool close, bool head_only)
{
    char line[256];
    size_t bl = body ? strlen(body) : 0;
    int n = snprintf(line, sizeof line,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %zu\r\n%s",
                     status, http_reason(status), bl, close ? "Connection: close\r\n" : "");
    int rc = put(out, line, (size_t)n);
    rc = rc ? rc : (extra ? puts_(out, extra) : 0);
    rc = rc ? rc : put(out, "\r\n", 2);
    return rc ? rc : (head_only || !bl ? 0 : put(out, body, bl));
}
