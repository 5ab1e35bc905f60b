/* Route matching and path rewriting for the reverse proxy. */
#include "revproxy/route.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool is_dot_segment(const uint8_t *p, size_t n)
{
    /* ".", "..", "%2e", ".%2e", "%2e.", "%2e%2e" (any case) */
    size_t dots = 0, i = 0;
    while (i < n) {
        if (p[i] == '.') {
            i++;
        } else if (i + 3 <= n && p[i] == '%' && p[i + 1] == '2' &&
                   (p[i + 2] == 'e' || p[i + 2] == 'E')) {
            i += 3;
        } else {
            return false;
        }
        dots++;
    }
    return dots == 1 || dots == 2;
}

/* absolute-form (RFC 9112 3.2.2): the authority goes to t->host. Returns where the path
 * starts, end when the target is complete (no path: "/"), or NULL when refused. */
static const uint8_t *target_absolute(struct slice url, struct rp_target *t)
{
    const uint8_t *p = url.p, *end = url.p + url.len;
    size_t skip;
    if (url.len > 7 && strncasecmp((const char *)p, "http://", 7) == 0)
        skip = 7;
    else if (url.len > 8 && strncasecmp((const char *)p, "https://", 8) == 0)
        skip = 8;
    else
        return NULL; /* "*", authority-form, other schemes */
    const uint8_t *h = p + skip, *q = h;
    while (q < end && *q != '/' && *q != '?')
        q++;
    if (q == h)
        return NULL;
    t->host = slice_make(h, (size_t)(q - h));
    if (q == end || *q == '?') {
        t->path = slice_str("/");
        t->query = slice_make(q, (size_t)(end - q));
        return end;
    }
    return q;
}

/* Segment checks: no "." or ".." (also %2e-encoded), no encoded '/', '\' or NUL. */
static bool path_safe(struct slice path)
{
    const uint8_t *s = path.p + 1, *pe = path.p + path.len;
    while (s <= pe) {
        const uint8_t *e = s;
        while (e < pe && *e != '/')
            e++;
        if (is_dot_segment(s, (size_t)(e - s)))
            return false;
        s = e + 1;
    }
    for (const uint8_t *c = path.p; c + 2 < pe; c++)
        if (c[0] == '%' &&
            ((c[1] == '0' && c[2] == '0') || (c[1] == '2' && (c[2] == 'f' || c[2] == 'F')) ||
             (c[1] == '5' && (c[2] == 'c' || c[2] == 'C'))))
            return false;
    return true;
}

int rp_target_parse(struct slice url, struct rp_target *t)
{
    *t = (struct rp_target){SLICE_NULL, SLICE_NULL, SLICE_NULL};
    const uint8_t *p = url.p, *end = url.p + url.len;
    if (url.len == 0)
        return -EBADMSG;
    if (p[0] != '/') {
        p = target_absolute(url, t);
        if (!p)
            return -EBADMSG;
        if (p == end)
            return 0;
    }
    const uint8_t *q = p;
    while (q < end && *q != '?' && *q != '#')
        q++;
    t->path = slice_make(p, (size_t)(q - p));
    const uint8_t *f = q;
    while (f < end && *f != '#')
        f++;
    t->query = slice_make(q, (size_t)(f - q));
    return path_safe(t->path) ? 0 : -EBADMSG;
}

struct slice rp_host_strip_port(struct slice host)
{
    if (host.len && host.p[0] == '[') {
        for (size_t i = 0; i < host.len; i++)
            if (host.p[i] == ']')
                return slice_make(host.p, i + 1);
        return host;
    }
    for (size_t i = 0; i < host.len; i++)
        if (host.p[i] == ':')
            return slice_make(host.p, i);
    return host;
}

static bool host_matches(const char *pattern, struct slice host)
{
    if (!pattern || !pattern[0] || (pattern[0] == '*' && !pattern[1]))
        return true;
    size_t pl = strlen(pattern);
    if (pattern[0] == '*' && pattern[1] == '.') {
        /* "*.example.com" matches "a.example.com", not "example.com". */
        size_t sl = pl - 1;
        return host.len > sl &&
               strncasecmp((const char *)host.p + host.len - sl, pattern + 1, sl) == 0;
    }
    return host.len == pl && strncasecmp((const char *)host.p, pattern, pl) == 0;
}

/* Prefix match on a segment boundary: "/ABS/ext" takes "/ABS/ext" and "/ABS/ext/x",
 * not "/ABS/extra". IIS paths are case-insensitive, and the published URLs vary in case. */
static bool prefix_matches(const char *prefix, struct slice path)
{
    size_t pl = strlen(prefix);
    if (path.len < pl || strncasecmp((const char *)path.p, prefix, pl) != 0)
        return false;
    return path.len == pl || prefix[pl - 1] == '/' || path.p[pl] == '/' || path.p[pl] == '?';
}

int rp_route_match(const struct rp_route *routes, size_t n, struct slice host, struct slice path)
{
    struct slice h = rp_host_strip_port(host);
    int best = -1;
    size_t best_len = 0;
    for (size_t i = 0; i < n; i++) {
        const struct rp_route *r = &routes[i];
        if (!r->prefix || !host_matches(r->host, h) || !prefix_matches(r->prefix, path))
            continue;
        size_t l = strlen(r->prefix);
        if (best < 0 || l > best_len) {
            best = (int)i;
            best_len = l;
        }
    }
    return best;
}

ssize_t rp_route_rewrite(const struct rp_route *r, struct slice path, struct slice query, char *out,
                         size_t cap)
{
    size_t pl = strlen(r->prefix);
    const char *head = r->rewrite ? r->rewrite : r->prefix;
    const uint8_t *rest = path.p + (path.len < pl ? path.len : pl);
    size_t restlen = path.len < pl ? 0 : path.len - pl;
    if (!r->rewrite) {
        /* Unchanged: keep the client's case too. */
        head = "";
        rest = path.p;
        restlen = path.len;
    }
    size_t hl = strlen(head), n = hl + restlen + query.len;
    if (n >= cap)
        return -ENOSPC;
    memcpy(out, head, hl);
    if (restlen)
        memcpy(out + hl, rest, restlen);
    if (query.len)
        memcpy(out + hl + restlen, query.p, query.len);
    out[n] = '\0';
    return (ssize_t)n;
}

ssize_t rp_route_unrewrite(const struct rp_route *r, struct slice path, char *out, size_t cap)
{
    if (!r->rewrite || !prefix_matches(r->rewrite, path))
        return 0;
    size_t rl = strlen(r->rewrite);
    int n =
        snprintf(out, cap, "%s%.*s", r->prefix, (int)(path.len - rl), (const char *)path.p + rl);
    if (n < 0 || (size_t)n >= cap)
        return -ENOSPC;
    return n;
}

/* uri-host [":" port] as a Host header may carry it: an IP-literal in brackets, or a
 * reg-name of letters, digits, '-', '.', '_', '~' (no userinfo, no spaces, no '/'). */
bool rp_host_valid(struct slice host)
{
    size_t i = 0;
    if (host.len == 0 || host.len > 255)
        return false;
    if (host.p[0] == '[') {
        for (i = 1; i < host.len && host.p[i] != ']'; i++)
            if (!isxdigit(host.p[i]) && host.p[i] != ':' && host.p[i] != '.')
                return false;
        if (i == host.len || i == 1)
            return false;
        i++;
    } else {
        for (; i < host.len && host.p[i] != ':'; i++)
            if (!isalnum(host.p[i]) && !(host.p[i] && strchr("-._~", host.p[i])))
                return false;
        if (i == 0)
            return false;
    }
    if (i == host.len)
        return true;
    if (host.p[i] != ':')
        return false;
    for (i++; i < host.len; i++)
        if (!isdigit(host.p[i]))
            return false;
    return true;
}

/* Writes the name to use for host into out: a configured name equal to it, or the host
 * itself (lower case) under a "*.domain" name. */
static int pick_one(const char *name, struct slice host, char *out, size_t cap)
{
    if (!name || !name[0] || (name[0] == '*' && !name[1]) || !host_matches(name, host))
        return -ENOENT;
    if (host.len >= cap)
        return -ENOSPC;
    for (size_t i = 0; i < host.len; i++)
        out[i] = (char)tolower(host.p[i]);
    out[host.len] = '\0';
    return 0;
}

int rp_server_name_pick(char *const *names, size_t nnames, const struct rp_route *routes,
                        size_t nroutes, struct slice host, char *out, size_t cap)
{
    for (size_t i = 0; i < nnames; i++)
        if (pick_one(names[i], host, out, cap) == 0)
            return 0;
    for (size_t i = 0; i < nroutes; i++)
        if (pick_one(routes[i].host, host, out, cap) == 0)
            return 0;
    return -ENOENT;
}
