/* Digest verification, nonce state and guess throttling (see digest_auth.h). */
#include "director/digest_auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/crypto.h"

#define DA_NC_WAYS 4
#define DA_NC_SETS (DA_NC_ENTRIES / DA_NC_WAYS)
#define HOUR_MS 3600000ULL

struct da_nc {
    uint8_t tag[12]; /* the nonce's MAC, truncated: which nonce this is */
    uint32_t nc;     /* highest nonce-count accepted */
    uint64_t issued; /* 0: free */
};

struct da_bucket {
    uint64_t milli; /* tokens x 1000 */
    uint64_t at_ms; /* when milli was last brought up to date; 0: never used (full) */
};

struct da_known {
    uint8_t host[16];
    uint8_t len; /* 0: free */
    uint64_t seen_ms;
};

struct da_slot {
    struct da_bucket unknown, known;
    struct da_known addr[DA_KNOWN];
};

struct da_state {
    uint8_t key[32];
    uint64_t watermark; /* nonces issued at or before this and not in the table are stale */
    uint64_t serial;    /* makes nonces issued in the same millisecond differ */
    struct da_nc *nc;
    struct da_slot *slots;
};

int da_create(struct da_state **out)
{
    struct da_state *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->nc = calloc(DA_NC_ENTRIES, sizeof(*s->nc));
    s->slots = calloc(DA_SLOTS, sizeof(*s->slots));
    if (!s->nc || !s->slots) {
        da_destroy(s);
        return -ENOMEM;
    }
    if (crypto_random(s->key, sizeof(s->key)) < 0 ||
        crypto_random(&s->serial, sizeof(s->serial)) < 0) {
        da_destroy(s);
        return -EIO;
    }
    *out = s;
    return 0;
}

void da_destroy(struct da_state *s)
{
    if (!s)
        return;
    free(s->nc);
    free(s->slots);
    memset(s->key, 0, sizeof(s->key));
    free(s);
}

/* ---- digest ---- */

static void hash_hex(bool sha, const char *p, char out[65])
{
    uint8_t d[SHA256_LEN];
    if (sha) {
        crypto_sha256(p, strlen(p), d);
        hex_encode(d, SHA256_LEN, out);
    } else {
        crypto_md5(p, strlen(p), d);
        hex_encode(d, MD5_LEN, out);
    }
}

int da_digest(const char *algorithm, const char *user, const char *realm, const char *password,
              const char *method, const char *uri, const char *nonce, const char *nc,
              const char *cnonce, const char *qop, char out[65])
{
    bool sha;
    if (!algorithm || strcasecmp(algorithm, "MD5") == 0)
        sha = false;
    else if (strcasecmp(algorithm, "SHA-256") == 0)
        sha = true;
    else
        return -EINVAL;
    char buf[1024], ha1[65], ha2[65];
    snprintf(buf, sizeof(buf), "%s:%s:%s", user, realm, password);
    hash_hex(sha, buf, ha1);
    snprintf(buf, sizeof(buf), "%s:%s", method, uri);
    hash_hex(sha, buf, ha2);
    if (qop && *qop)
        snprintf(buf, sizeof(buf), "%s:%s:%s:%s:%s:%s", ha1, nonce, nc ? nc : "",
                 cnonce ? cnonce : "", qop, ha2);
    else
        snprintf(buf, sizeof(buf), "%s:%s:%s", ha1, nonce, ha2);
    hash_hex(sha, buf, out);
    memset(buf, 0, sizeof(buf));
    return 0;
}

/* ---- nonces ---- */

/* MAC over the time and serial (the first 32 characters). */
static void nonce_mac(const struct da_state *s, const char t[32], uint8_t mac[SHA256_LEN])
{
    char in[40];
    memcpy(in, "nonce:", 6);
    memcpy(in + 6, t, 32);
    crypto_hmac_sha256(s->key, sizeof(s->key), in, 38, mac);
}

void da_nonce_make(struct da_state *s, uint64_t now_ms, char out[DA_NONCE_LEN + 1])
{
    char t[33];
    snprintf(t, sizeof(t), "%016llx%016llx", (unsigned long long)now_ms,
             (unsigned long long)s->serial++);
    uint8_t mac[SHA256_LEN];
    nonce_mac(s, t, mac);
    memcpy(out, t, 32);
    hex_encode(mac, 16, out + 32);
    out[DA_NONCE_LEN] = 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Ours and unaltered: fills its issue time and MAC bytes. */
static bool nonce_parse(const struct da_state *s, const char *n, uint64_t *issued, uint8_t tag[12])
{
    if (!n || strlen(n) != DA_NONCE_LEN)
        return false;
    uint64_t t = 0;
    for (int i = 0; i < 16; i++) {
        int v = hexval(n[i]);
        if (v < 0)
            return false;
        t = t << 4 | (uint64_t)v;
    }
    uint8_t mac[SHA256_LEN];
    nonce_mac(s, n, mac);
    char mh[33];
    hex_encode(mac, 16, mh);
    if (!crypto_ct_eq(mh, n + 32, 32))
        return false;
    *issued = t;
    memcpy(tag, mac, 12);
    return true;
}

/* nc: exactly 8 hex digits (RFC 7616 §3.4), not zero. */
static bool nc_parse(const char *nc, uint32_t *out)
{
    if (!nc || strlen(nc) != 8)
        return false;
    uint32_t v = 0;
    for (int i = 0; i < 8; i++) {
        int h = hexval(nc[i] >= 'A' && nc[i] <= 'F' ? (char)(nc[i] - 'A' + 'a') : nc[i]);
        if (h < 0)
            return false;
        v = v << 4 | (uint32_t)h;
    }
    *out = v;
    return v != 0;
}

/* Accepts nc for the nonce (issued, tag) if above every nc seen for it; records it. */
static bool nc_accept(struct da_state *s, const struct da_limits *lim, uint64_t issued,
                      const uint8_t tag[12], uint32_t nc, uint64_t now)
{
    size_t set = ((size_t)tag[0] | (size_t)tag[1] << 8) % DA_NC_SETS;
    struct da_nc *e = &s->nc[set * DA_NC_WAYS];
    for (int i = 0; i < DA_NC_WAYS; i++)
        if (e[i].issued == issued && memcmp(e[i].tag, tag, 12) == 0) {
            if (nc <= e[i].nc)
                return false; /* replayed, or out of order */
            e[i].nc = nc;
            return true;
        }
    if (issued <= s->watermark)
        return false; /* its entry may have been pushed out: cannot tell a replay */
    /* A free or expired way, else push out the oldest and raise the watermark. */
    int victim = 0;
    for (int i = 0; i < DA_NC_WAYS; i++) {
        if (!e[i].issued || e[i].issued + lim->nonce_lifetime_ms < now) {
            victim = i;
            goto put;
        }
        if (e[i].issued < e[victim].issued)
            victim = i;
    }
    if (e[victim].issued > s->watermark)
        s->watermark = e[victim].issued;
put:
    memcpy(e[victim].tag, tag, 12);
    e[victim].issued = issued;
    e[victim].nc = nc;
    return true;
}

/* ---- throttle ---- */

static struct da_slot *slot_of(struct da_state *s, const char *user)
{
    uint8_t mac[SHA256_LEN];
    char in[160];
    int n = snprintf(in, sizeof(in), "user:%s", user ? user : "");
    if (n < 0 || (size_t)n >= sizeof(in))
        n = (int)sizeof(in) - 1;
    crypto_hmac_sha256(s->key, sizeof(s->key), in, (size_t)n, mac);
    uint32_t h = (uint32_t)mac[0] | (uint32_t)mac[1] << 8 | (uint32_t)mac[2] << 16;
    return &s->slots[h % DA_SLOTS];
}

static void bucket_refill(struct da_bucket *b, uint32_t burst, uint32_t per_hour, uint64_t now)
{
    uint64_t cap = (uint64_t)burst * 1000;
    if (!b->at_ms) {
        b->milli = cap;
        b->at_ms = now ? now : 1;
        return;
    }
    if (now > b->at_ms) {
        uint64_t add = (now - b->at_ms) * per_hour * 1000 / HOUR_MS;
        if (add) {
            b->milli = b->milli + add > cap ? cap : b->milli + add;
            /* Keep the remainder: move the clock only by what was credited. */
            b->at_ms =
                b->milli == cap ? now : b->at_ms + add * HOUR_MS / ((uint64_t)per_hour * 1000);
        }
    }
}

static struct da_known *known_find(struct da_slot *sl, const struct da_request *r)
{
    if (!r->client || !r->client_len || r->client_len > 16)
        return NULL;
    for (int i = 0; i < DA_KNOWN; i++) {
        struct da_known *k = &sl->addr[i];
        if (k->len == r->client_len && memcmp(k->host, r->client, k->len) == 0 &&
            k->seen_ms + DA_KNOWN_TTL_MS >= r->now_ms)
            return k;
    }
    return NULL;
}

static void known_add(struct da_slot *sl, const struct da_request *r)
{
    if (!r->client || !r->client_len || r->client_len > 16)
        return;
    struct da_known *k = known_find(sl, r);
    if (!k) {
        k = &sl->addr[0];
        for (int i = 1; i < DA_KNOWN; i++)
            if (sl->addr[i].seen_ms < k->seen_ms)
                k = &sl->addr[i];
        memcpy(k->host, r->client, r->client_len);
        k->len = (uint8_t)r->client_len;
    }
    k->seen_ms = r->now_ms;
}

/* ---- the check ---- */

/* The answer names this user and realm, with qop=auth (without nc a captured answer could be
 * replayed for the nonce's life), a cnonce, a uri and a response. */
static bool well_formed(const struct da_creds *c, const struct da_request *r, const char *realm)
{
    return c && c->username && r->user && strcmp(c->username, r->user) == 0 && c->realm &&
           strcmp(c->realm, realm) == 0 && c->qop && strcasecmp(c->qop, "auth") == 0 && c->cnonce &&
           *c->cnonce && c->uri && c->response;
}

/* The guess budget b (burst, per_hour) has no guess left: THROTTLED with its Retry-After. */
static bool throttled(struct da_bucket *b, uint32_t burst, uint32_t per_hour, uint64_t now_ms,
                      struct da_verdict *v)
{
    bucket_refill(b, burst, per_hour, now_ms);
    if (b->milli >= 1000)
        return false;
    v->result = DA_THROTTLED;
    uint64_t need = 1000 - b->milli;
    v->retry_after_s =
        per_hour ? (uint32_t)((need * HOUR_MS / ((uint64_t)per_hour * 1000) + 999) / 1000) : 3600;
    if (!v->retry_after_s)
        v->retry_after_s = 1;
    return true;
}

void da_check(struct da_state *s, const struct da_limits *lim, const char *realm,
              const struct da_request *r, struct da_verdict *v)
{
    memset(v, 0, sizeof(*v));
    v->result = DA_CHALLENGE;
    const struct da_creds *c = r->c;
    uint64_t issued;
    uint8_t tag[12];
    uint32_t nc;
    /* Nothing before the digest compares with the password, so none of it counts as a guess. */
    if (!well_formed(c, r, realm) || !nc_parse(c->nc, &nc) ||
        !nonce_parse(s, c->nonce, &issued, tag))
        return;
    struct da_slot *sl = slot_of(s, r->user);
    struct da_known *kn = known_find(sl, r);
    struct da_bucket *b = kn ? &sl->known : &sl->unknown;
    v->known_address = kn != NULL;
    if (throttled(b, kn ? lim->known_burst : lim->guess_burst,
                  kn ? lim->known_per_hour : lim->guesses_per_hour, r->now_ms, v))
        return;
    /* An unknown user is checked against a password no answer can match, the same way. */
    char want[65];
    if (da_digest(c->algorithm && *c->algorithm ? c->algorithm : "MD5", r->user, realm,
                  r->password ? r->password : "\x01no such user\x01", r->method, c->uri, c->nonce,
                  c->nc, c->cnonce, c->qop, want) < 0)
        return;
    v->checked = true;
    size_t wl = strlen(want);
    if (!r->password || strlen(c->response) != wl || !crypto_ct_eq(c->response, want, wl)) {
        b->milli -= 1000;
        v->throttle_started = b->milli < 1000;
        return;
    }
    /* Right password. A stale answer tells only its sender, who knew it, that it was right. */
    if (issued > r->now_ms || r->now_ms - issued > lim->nonce_lifetime_ms ||
        !nc_accept(s, lim, issued, tag, nc, r->now_ms)) {
        v->result = DA_STALE;
        return;
    }
    known_add(sl, r);
    v->result = DA_OK;
}

/* ---- forwarding ---- */

size_t da_strip_credentials(uint8_t *p, size_t len, const char *realm)
{
    static const char name[] = "proxy-authorization";
    char want[160];
    int wl = snprintf(want, sizeof(want), "realm=\"%s\"", realm);
    size_t i = 0;
    while (i < len) {
        const uint8_t *eol = memchr(p + i, '\n', len - i);
        if (!eol)
            break;
        size_t end = (size_t)(eol - p) + 1;
        if (end - i <= 2) /* the blank line: end of headers */
            break;
        /* The header's extent, with folded continuation lines. */
        while (end < len && (p[end] == ' ' || p[end] == '\t')) {
            const uint8_t *e2 = memchr(p + end, '\n', len - end);
            end = e2 ? (size_t)(e2 - p) + 1 : len;
        }
        size_t k = 0;
        while (k < sizeof(name) - 1 && i + k < end && (p[i + k] | 0x20) == name[k])
            k++;
        size_t j = i + k;
        while (j < end && (p[j] == ' ' || p[j] == '\t'))
            j++;
        bool ours = false;
        if (k == sizeof(name) - 1 && j < end && p[j] == ':' && wl > 0)
            for (size_t q = j; q + (size_t)wl <= end && !ours; q++)
                ours = memcmp(p + q, want, (size_t)wl) == 0;
        if (ours) {
            memmove(p + i, p + end, len - end);
            len -= end - i;
            continue;
        }
        i = end;
    }
    return len;
}
