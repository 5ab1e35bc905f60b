/* Conference session key checks and the bounded revocation list (see admit.h). */
#include "conf-edge/admit.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CE_REVOKE_DEFAULT_S (24 * 3600)

struct ce_revocation {
    char jti[sizeof(((struct token_claims *)0)->jti)];
    char user[TOKEN_FIELD_MAX];
    int64_t until;
};

struct ce_revocations {
    size_t max, n;
    struct ce_revocation *e;
};

int ce_revocations_create(struct ce_revocations **out, size_t max)
{
    if (!out || max == 0)
        return -EINVAL;
    struct ce_revocations *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->e = calloc(max, sizeof *r->e);
    if (!r->e) {
        free(r);
        return -ENOMEM;
    }
    r->max = max;
    *out = r;
    return 0;
}

void ce_revocations_destroy(struct ce_revocations *r)
{
    if (!r)
        return;
    free(r->e);
    free(r);
}

static void purge_expired(struct ce_revocations *r, int64_t now)
{
    size_t w = 0;
    for (size_t i = 0; i < r->n; i++)
        if (r->e[i].until >= now)
            r->e[w++] = r->e[i];
    r->n = w;
}

int ce_revocations_add(struct ce_revocations *r, const char *jti, const char *user, int64_t until,
                       int64_t now)
{
    jti = jti ? jti : "";
    user = user ? user : "";
    if (!r || (!*jti && !*user) || strlen(jti) >= sizeof r->e[0].jti ||
        strlen(user) >= sizeof r->e[0].user)
        return -EINVAL;
    if (until <= 0)
        until = now + CE_REVOKE_DEFAULT_S;
    for (size_t i = 0; i < r->n; i++) {
        if (!strcmp(r->e[i].jti, jti) && !strcmp(r->e[i].user, user)) {
            if (until > r->e[i].until)
                r->e[i].until = until;
            return 0;
        }
    }
    if (r->n == r->max)
        purge_expired(r, now);
    if (r->n == r->max) {
        size_t first = 0;
        for (size_t i = 1; i < r->n; i++)
            if (r->e[i].until < r->e[first].until)
                first = i;
        r->e[first] = r->e[--r->n];
    }
    struct ce_revocation *e = &r->e[r->n++];
    memset(e, 0, sizeof *e);
    memcpy(e->jti, jti, strlen(jti));
    memcpy(e->user, user, strlen(user));
    e->until = until;
    return 0;
}

bool ce_revocations_match(const struct ce_revocations *r, const struct token_claims *c, int64_t now)
{
    if (!r || !c)
        return false;
    for (size_t i = 0; i < r->n; i++) {
        const struct ce_revocation *e = &r->e[i];
        if (e->until < now)
            continue;
        if (e->jti[0] && !strcmp(e->jti, c->jti))
            return true;
        if (!e->jti[0] && e->user[0] && !strcmp(e->user, c->user))
            return true;
    }
    return false;
}

size_t ce_revocations_count(const struct ce_revocations *r)
{
    return r ? r->n : 0;
}

enum ce_reply ce_admit_key_cap(uint64_t held, uint32_t cap, bool refuse, uint64_t *replace)
{
    *replace = 0;
    if (held < cap)
        return CE_REPLY_ADMITTED;
    if (refuse)
        return CE_REPLY_KEY_IN_USE;
    /* The newcomer wins: what is past the cap once it is in goes, oldest first. */
    *replace = held + 1 - (cap ? cap : 1);
    return CE_REPLY_ADMITTED;
}

enum ce_reply ce_admit_check(const struct keyring *kr, const struct ce_revocations *rev,
                             struct slice key, int64_t now, struct token_claims *claims)
{
    if (key.len == 0)
        return CE_REPLY_MISSING_KEY;
    switch (token_verify(kr, (const char *)key.p, key.len, now, claims)) {
    case TOKEN_OK:
        break;
    case TOKEN_EXPIRED:
        return CE_REPLY_EXPIRED_KEY;
    case TOKEN_UNKNOWN_KEY:
        return CE_REPLY_UNKNOWN_KEY;
    case TOKEN_MALFORMED:
    case TOKEN_BAD_SIGNATURE:
    default:
        return CE_REPLY_INVALID_KEY;
    }
    if (ce_revocations_match(rev, claims, now))
        return CE_REPLY_REVOKED_KEY;
    return CE_REPLY_ADMITTED;
}
