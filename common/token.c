/* Conference session keys (HMAC-SHA256 signed tokens) and TURN REST credentials. */
#include "common/token.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/crypto.h"

int keyring_rotate(struct keyring *kr, const char *id, const void *secret, size_t len,
                   int64_t not_after)
{
    if (!id || !*id || strlen(id) >= TOKEN_KEYID_MAX || strchr(id, '.') || len == 0 ||
        len > TOKEN_SECRET_MAX)
        return -EINVAL;
    if (kr->cur.secret_len && strcmp(kr->cur.id, id) != 0)
        kr->prev = kr->cur;
    memset(&kr->cur, 0, sizeof kr->cur);
    snprintf(kr->cur.id, sizeof kr->cur.id, "%s", id);
    memcpy(kr->cur.secret, secret, len);
    kr->cur.secret_len = len;
    kr->cur.not_after = not_after;
    return 0;
}

static bool key_usable(const struct token_key *k, int64_t now)
{
    return k->secret_len && (k->not_after == 0 || now <= k->not_after);
}

const struct token_key *keyring_find(const struct keyring *kr, const char *id, int64_t now)
{
    if (!strcmp(kr->cur.id, id) && key_usable(&kr->cur, now))
        return &kr->cur;
    if (!strcmp(kr->prev.id, id) && key_usable(&kr->prev, now))
        return &kr->prev;
    return NULL;
}

static bool field_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (*s == ';' || *s == '=' || (unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
            return false;
    return true;
}

ssize_t token_mint(const struct keyring *kr, const struct token_claims *c, char *out, size_t cap)
{
    if (!kr->cur.secret_len || !field_ok(c->conf) || !field_ok(c->user) || !field_ok(c->role) ||
        (c->jti[0] && !field_ok(c->jti)))
        return -EINVAL;
    char claims[512], b64[800], mac_b64[64];
    uint8_t mac[SHA256_LEN];
    int n = snprintf(claims, sizeof claims, "conf=%s;user=%s;role=%s;exp=%" PRId64 ";jti=%s",
                     c->conf, c->user, c->role, c->exp, c->jti);
    if (n < 0 || (size_t)n >= sizeof claims)
        return -EINVAL;
    if (base64url_encode(claims, (size_t)n, b64, sizeof b64) < 0)
        return -EINVAL;
    char signed_part[900];
    int sl = snprintf(signed_part, sizeof signed_part, "v1.%s.%s", kr->cur.id, b64);
    crypto_hmac_sha256(kr->cur.secret, kr->cur.secret_len, signed_part, (size_t)sl, mac);
    base64url_encode(mac, sizeof mac, mac_b64, sizeof mac_b64);
    int total = snprintf(out, cap, "%s.%s", signed_part, mac_b64);
    if (total < 0 || (size_t)total >= cap)
        return -ENOSPC;
    return total;
}

/* Copies the value of "name=" from a ';'-separated claims string. */
static int claim(const char *claims, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *p = claims; p && *p; p = strchr(p, ';') ? strchr(p, ';') + 1 : NULL) {
        if (!strncmp(p, name, nl) && p[nl] == '=') {
            const char *v = p + nl + 1, *e = strchr(v, ';');
            size_t vl = e ? (size_t)(e - v) : strlen(v);
            if (vl >= cap)
                return -ENOSPC;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return 0;
        }
    }
    return -ENOENT;
}

enum token_result token_verify(const struct keyring *kr, const char *text, size_t len, int64_t now,
                               struct token_claims *claims)
{
    /* v1.<kid>.<claims_b64>.<mac_b64> */
    if (len < 8 || len > 2048 || memcmp(text, "v1.", 3) != 0)
        return TOKEN_MALFORMED;
    const char *kid = text + 3, *end = text + len;
    const char *d1 = memchr(kid, '.', (size_t)(end - kid));
    if (!d1 || d1 == kid || (size_t)(d1 - kid) >= TOKEN_KEYID_MAX)
        return TOKEN_MALFORMED;
    const char *cl = d1 + 1;
    const char *d2 = memchr(cl, '.', (size_t)(end - cl));
    if (!d2 || d2 == cl || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)))
        return TOKEN_MALFORMED;
    char id[TOKEN_KEYID_MAX];
    memcpy(id, kid, (size_t)(d1 - kid));
    id[d1 - kid] = '\0';
    uint8_t mac_given[64];
    ssize_t ml = base64url_decode(d2 + 1, (size_t)(end - d2 - 1), mac_given, sizeof mac_given);
    if (ml != SHA256_LEN)
        return TOKEN_MALFORMED;
    /* The last base64url character of 32 bytes carries 2 unused bits: accept only the
     * canonical spelling, so one key has exactly one text form. */
    char canon[64];
    if (base64url_encode(mac_given, SHA256_LEN, canon, sizeof canon) != end - d2 - 1 ||
        memcmp(canon, d2 + 1, (size_t)(end - d2 - 1)) != 0)
        return TOKEN_MALFORMED;
    char cbuf[600];
    ssize_t cn = base64url_decode(cl, (size_t)(d2 - cl), (uint8_t *)cbuf, sizeof cbuf - 1);
    if (cn <= 0)
        return TOKEN_MALFORMED;
    cbuf[cn] = '\0';
    if (memchr(cbuf, '\0', (size_t)cn))
        return TOKEN_MALFORMED;
    const struct token_key *k = keyring_find(kr, id, now);
    if (!k)
        return TOKEN_UNKNOWN_KEY;
    uint8_t mac[SHA256_LEN];
    crypto_hmac_sha256(k->secret, k->secret_len, text, (size_t)(d2 - text), mac);
    if (!crypto_ct_eq(mac, mac_given, SHA256_LEN))
        return TOKEN_BAD_SIGNATURE;
    struct token_claims c;
    memset(&c, 0, sizeof c);
    char exp_s[24];
    if (claim(cbuf, "conf", c.conf, sizeof c.conf) || claim(cbuf, "user", c.user, sizeof c.user) ||
        claim(cbuf, "role", c.role, sizeof c.role) || claim(cbuf, "exp", exp_s, sizeof exp_s))
        return TOKEN_MALFORMED;
    claim(cbuf, "jti", c.jti, sizeof c.jti);
    char *e;
    c.exp = strtoll(exp_s, &e, 10);
    if (*e || !*exp_s)
        return TOKEN_MALFORMED;
    if (now > c.exp)
        return TOKEN_EXPIRED;
    if (claims)
        *claims = c;
    return TOKEN_OK;
}

int turn_rest_username(char *out, size_t cap, int64_t expiry, const char *user)
{
    int n = snprintf(out, cap, "%" PRId64 ":%s", expiry, user);
    return (n < 0 || (size_t)n >= cap) ? -ENOSPC : 0;
}

int turn_rest_password(const void *secret, size_t slen, const char *username, char *out, size_t cap)
{
    uint8_t mac[SHA1_LEN];
    crypto_hmac_sha1(secret, slen, username, strlen(username), mac);
    return base64_encode(mac, sizeof mac, out, cap) < 0 ? -ENOSPC : 0;
}

int turn_rest_expiry(const char *username, size_t len, int64_t *expiry)
{
    /* The timestamp comes first, up to the first ':' (coturn's default separator). */
    int64_t v = 0;
    size_t i = 0;
    for (; i < len && username[i] >= '0' && username[i] <= '9'; i++) {
        if (v > (INT64_MAX - 9) / 10)
            return -EINVAL;
        v = v * 10 + (username[i] - '0');
    }
    if (i == 0 || (i < len && username[i] != ':'))
        return -EINVAL;
    *expiry = v;
    return 0;
}
