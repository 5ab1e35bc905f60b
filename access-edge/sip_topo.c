/* Topology hiding rewrites (see sip_topo.h). */
#include "access-edge/sip_topo.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/crypto.h"

#define CONTACT_USER "ae-c."
#define RR_PARAM ";ae-rr="
/* Which way a sealed route set sits around the edge's external Record-Route entry: after it
 * (a request the inside sent out) or before it, listed bottom-up (a response going out). In
 * both the entries are in the order an in-dialog request from outside walks them. */
#define SET_AFTER 'd'
#define SET_BEFORE 'u'
#define SET_MAX 3000

/* A list of header values written as one line: "Name: a, b, c\r\n" (nothing if empty). */
struct line {
    struct sip_out *o;
    const char *name;
    bool open;
};
static void line_add(struct line *l, struct slice v)
{
    sip_out_str(l->o, l->open ? ", " : l->name);
    if (!l->open)
        sip_out_str(l->o, ": ");
    l->open = true;
    sip_out_slice(l->o, v);
}
static void line_end(struct line *l)
{
    if (l->open)
        sip_out_str(l->o, "\r\n");
    l->open = false;
}

/* Synthetic nonce: the per-message one mixed with a MAC of the text, so two seals in one
 * message never share a keystream. */
static ssize_t seal(const struct sip_topo *t, struct slice text, char *out, size_t cap)
{
    uint8_t mac[SHA256_LEN];
    crypto_hmac_sha256(t->key, SIP_FLOW_KEY_LEN, text.p, text.len, mac);
    uint64_t n;
    memcpy(&n, mac, sizeof(n));
    return sip_seal(t->key, t->nonce ^ n, text, out, cap);
}

static size_t find(struct slice s, const char *needle)
{
    size_t nl = strlen(needle);
    for (size_t i = 0; i + nl <= s.len; i++)
        if (memcmp(s.p + i, needle, nl) == 0)
            return i;
    return s.len;
}

/* The URI of a name-addr ("<...>") or addr-spec value, and what surrounds it. */
struct uri_parts {
    struct slice before, uri, after;
};
static struct uri_parts split_uri(struct slice v)
{
    struct uri_parts p = {SLICE_NULL, v, SLICE_NULL};
    size_t lt = find(v, "<");
    if (lt < v.len) {
        size_t gt = lt + find(slice_make(v.p + lt, v.len - lt), ">");
        p.before = slice_make(v.p, lt + 1);
        p.uri = slice_make(v.p + lt + 1, (gt < v.len ? gt : v.len) - lt - 1);
        p.after = slice_make(v.p + p.before.len + p.uri.len, v.len - p.before.len - p.uri.len);
    } else {
        /* addr-spec: what follows the first ';' are header parameters (RFC 3261 §20.10). */
        size_t sc = find(v, ";");
        p.uri = slice_make(v.p, sc);
        p.after = slice_make(v.p + sc, v.len - sc);
    }
    return p;
}

bool sip_uri_host_port(struct slice entry, struct slice *host, uint16_t *port)
{
    struct slice u = split_uri(entry).uri;
    size_t i = find(u, ":");
    if (i >= u.len)
        return false;
    struct slice rest = slice_make(u.p + i + 1, u.len - i - 1);
    size_t at = find(rest, "@");
    if (at < rest.len)
        rest = slice_make(rest.p + at + 1, rest.len - at - 1);
    size_t e = 0;
    if (rest.len && rest.p[0] == '[') {
        e = find(rest, "]");
        if (e >= rest.len)
            return false;
        *host = slice_make(rest.p + 1, e - 1);
        e++;
    } else {
        while (e < rest.len && rest.p[e] != ':' && rest.p[e] != ';' && rest.p[e] != '?')
            e++;
        *host = slice_make(rest.p, e);
    }
    *port = 0;
    if (e < rest.len && rest.p[e] == ':') {
        unsigned n = 0;
        size_t d = ++e;
        while (e < rest.len && rest.p[e] >= '0' && rest.p[e] <= '9' && e - d < 6)
            n = n * 10 + (unsigned)(rest.p[e++] - '0');
        if (e == d || n == 0 || n > 65535)
            return false;
        *port = (uint16_t)n;
    }
    return host->len > 0;
}

/* ---- Contact ---- */

ssize_t sip_topo_hide_contacts(const struct sip_topo *t, const struct sip_msg *m, char *out,
                               size_t cap)
{
    struct sip_out o = sip_out_make(out, cap);
    struct sip_value_iter it;
    struct slice v;
    sip_values_begin(&it, m, SIP_H_CONTACT);
    while (sip_values_next(&it, &v)) {
        sip_out_str(&o, "Contact: ");
        if (slice_eq_str(v, "*")) {
            sip_out_str(&o, "*\r\n");
            continue;
        }
        struct uri_parts p = split_uri(v);
        char tok[1024];
        ssize_t n = seal(t, p.uri, tok, sizeof(tok));
        if (n < 0)
            return -ENOSPC;
        sip_out_slice(&o, p.before);
        if (!p.before.len)
            sip_out_str(&o, "<");
        sip_out_str(&o, "sip:" CONTACT_USER);
        sip_out_put(&o, tok, (size_t)n);
        sip_out_str(&o, "@");
        sip_out_slice(&o, t->ext);
        if (!p.before.len)
            sip_out_str(&o, ">");
        sip_out_slice(&o, p.after);
        sip_out_str(&o, "\r\n");
    }
    return sip_out_done(&o);
}

ssize_t sip_topo_contact_open(const uint8_t *key, struct slice uri, char *out, size_t cap)
{
    size_t c = find(uri, ":");
    if (c >= uri.len)
        return 0;
    struct slice user = slice_make(uri.p + c + 1, uri.len - c - 1);
    size_t pl = strlen(CONTACT_USER);
    if (user.len < pl || memcmp(user.p, CONTACT_USER, pl) != 0)
        return 0;
    size_t at = find(user, "@");
    if (at >= user.len)
        return -EACCES;
    if (cap == 0)
        return -ENOSPC;
    ssize_t n = sip_unseal(key, slice_make(user.p + pl, at - pl), (uint8_t *)out, cap - 1);
    if (n == -ENOSPC)
        return n;
    if (n <= 0)
        return -EACCES;
    out[n] = 0;
    return n;
}

/* ---- Record-Route and Route ---- */

/* The ae-rr token inside an entry's URI, and the entry without it. */
static bool rr_token(struct slice entry, struct slice *tok, struct slice *head, struct slice *tail)
{
    struct slice u = split_uri(entry).uri;
    size_t at = find(u, RR_PARAM);
    if (at >= u.len)
        return false;
    const uint8_t *s = u.p + at + strlen(RR_PARAM);
    size_t n = 0;
    while (s + n < u.p + u.len && s[n] != ';')
        n++;
    *tok = slice_make(s, n);
    *head = slice_make(entry.p, (size_t)(u.p + at - entry.p));
    *tail = slice_make(s + n, (size_t)(entry.p + entry.len - (s + n)));
    return true;
}

/* Opens a sealed set: its orientation and its comma-joined entries (into buf). */
static int open_set(const uint8_t *key, struct slice tok, char *buf, size_t cap, char *dir,
                    struct slice *entries)
{
    ssize_t n = sip_unseal(key, tok, (uint8_t *)buf, cap);
    if (n < 1 || (buf[0] != SET_AFTER && buf[0] != SET_BEFORE))
        return -EACCES;
    *dir = buf[0];
    *entries = slice_make(buf + 1, (size_t)n - 1);
    return 0;
}

/* Values of a comma-joined list, walked with the same quoting rules as headers. */
static bool list_next(struct slice *rest, struct slice *v)
{
    if (rest->len == 0)
        return false;
    size_t n = sip_value_first_len(*rest);
    *v = slice_make(rest->p, n);
    *rest = n >= rest->len ? SLICE_NULL : slice_make(rest->p + n + 1, rest->len - n - 1);
    return true;
}

ssize_t sip_topo_seal_request_rr(const struct sip_topo *t, struct slice own_int,
                                 const struct sip_msg *m, char *out, size_t cap)
{
    char set[SET_MAX];
    struct sip_out o = sip_out_make(set, sizeof(set));
    sip_out_put(&o, &(char){SET_AFTER}, 1);
    sip_out_slice(&o, own_int);
    struct sip_value_iter it;
    struct slice v;
    sip_values_begin(&it, m, SIP_H_RECORD_ROUTE);
    while (sip_values_next(&it, &v)) {
        sip_out_str(&o, ",");
        sip_out_slice(&o, v);
    }
    if (o.full)
        return -ENOSPC;
    return seal(t, slice_make(set, o.len), out, cap);
}

ssize_t sip_topo_hide_response_rr(const struct sip_topo *t, const struct sip_msg *m,
                                  sip_topo_own_cb is_ext, void *arg, char *out, size_t cap)
{
    struct slice vals[SIP_MSG_MAX_HEADERS];
    size_t n = 0, ext = SIZE_MAX;
    struct sip_value_iter it;
    sip_values_begin(&it, m, SIP_H_RECORD_ROUTE);
    while (n < SIP_MSG_MAX_HEADERS && sip_values_next(&it, &vals[n])) {
        /* The last of our external entries is the one for the leg this response leaves on;
         * above it may be a hairpin call's other leg, which is ours too but inside. */
        if (is_ext(vals[n], arg))
            ext = n;
        n++;
    }
    if (ext == SIZE_MAX)
        return 0;
    char set[SET_MAX];
    struct sip_out s = sip_out_make(set, sizeof(set));
    sip_out_put(&s, &(char){SET_BEFORE}, 1);
    for (size_t i = ext; i-- > 0;) {
        sip_out_slice(&s, vals[i]);
        if (i)
            sip_out_str(&s, ",");
    }
    char tok[4096];
    ssize_t tl = s.full ? -ENOSPC : seal(t, slice_make(set, s.len), tok, sizeof(tok));
    if (tl < 0)
        return tl;
    struct sip_out o = sip_out_make(out, cap);
    struct uri_parts p = split_uri(vals[ext]);
    sip_out_str(&o, "Record-Route: ");
    sip_out_put(&o, vals[ext].p, p.before.len + p.uri.len);
    sip_out_str(&o, RR_PARAM);
    sip_out_put(&o, tok, (size_t)tl);
    sip_out_slice(&o, p.after);
    for (size_t i = ext + 1; i < n; i++) {
        sip_out_str(&o, ", ");
        sip_out_slice(&o, vals[i]);
    }
    sip_out_str(&o, "\r\n");
    return sip_out_done(&o);
}

ssize_t sip_topo_open_response_rr(const uint8_t *key, const struct sip_msg *m, char *out,
                                  size_t cap)
{
    struct sip_out o = sip_out_make(out, cap);
    struct line l = {&o, "Record-Route", false};
    bool any = false;
    struct sip_value_iter it;
    struct slice v;
    sip_values_begin(&it, m, SIP_H_RECORD_ROUTE);
    while (sip_values_next(&it, &v)) {
        struct slice tok, head, tail, entries, e;
        if (!rr_token(v, &tok, &head, &tail)) {
            line_add(&l, v);
            continue;
        }
        char set[SET_MAX], dir;
        if (open_set(key, tok, set, sizeof(set), &dir, &entries) < 0)
            return -EACCES;
        any = true;
        if (dir == SET_BEFORE) {
            /* Listed bottom-up: put back top-down above our entry. */
            struct slice list[64];
            size_t k = 0;
            while (k < 64 && list_next(&entries, &e))
                list[k++] = e;
            while (k-- > 0)
                line_add(&l, list[k]);
        }
        line_add(&l, head);
        sip_out_slice(&o, tail);
        if (dir == SET_AFTER)
            while (list_next(&entries, &e))
                line_add(&l, e);
    }
    line_end(&l);
    return any ? sip_out_done(&o) : 0;
}

ssize_t sip_topo_open_routes(const uint8_t *key, const struct sip_msg *m, unsigned n,
                             sip_topo_own_cb is_own, void *arg, char *out, size_t cap)
{
    struct sip_out o = sip_out_make(out, cap);
    struct line l = {&o, "Route", false};
    struct sip_value_iter it;
    struct slice v;
    sip_values_begin(&it, m, SIP_H_ROUTE);
    for (unsigned i = 0; i < n && sip_values_next(&it, &v); i++) {
        struct slice tok, head, tail, entries, e;
        if (!rr_token(v, &tok, &head, &tail))
            continue;
        char set[SET_MAX], dir;
        if (open_set(key, tok, set, sizeof(set), &dir, &entries) < 0)
            return -EACCES;
        /* The set starts with the edge's own internal entry for this hop (dropped); an entry
         * of ours further down is a hairpin call's next leg and stays. */
        bool first = true;
        while (list_next(&entries, &e)) {
            if (!(first && is_own(e, arg)))
                line_add(&l, e);
            first = false;
        }
    }
    line_end(&l);
    return sip_out_done(&o);
}
