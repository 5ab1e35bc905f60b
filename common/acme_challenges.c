/* The ACME challenges a daemon answers (acme_challenges.h): a small table under a mutex.
 * At most 64 entries (an order has a handful of names; the Director removes what it is
 * done with, and what it forgets expires), so a linear scan is the whole lookup. */
#include "common/acme_challenges.h"
#include "common/metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define ACME_MAX_ENTRIES 64
#define ACME_TOKEN_MAX 128
#define ACME_KEY_AUTHZ_MAX 256
#define ACME_NAME_MAX 253
#define ACME_PEM_MAX (64 * 1024)

enum kind { KIND_FREE = 0, KIND_HTTP, KIND_ALPN };

struct entry {
    enum kind kind;
    int64_t expires;
    char key[ACME_NAME_MAX + 1]; /* token (HTTP-01) or DNS name (TLS-ALPN-01) */
    char *a;                     /* key authorization, or the certificate PEM */
    char *b;                     /* NULL, or the key PEM */
};

struct acme_challenges {
    pthread_mutex_t lock;
    struct entry e[ACME_MAX_ENTRIES];
    struct metric *alpn_served, *alpn_unknown; /* answered challenges are no failed
                                                  handshakes and no sessions: counted here */
};

int acme_challenges_create(struct acme_challenges **out)
{
    if (!out)
        return -EINVAL;
    struct acme_challenges *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    if (pthread_mutex_init(&s->lock, NULL) != 0) {
        free(s);
        return -ENOMEM;
    }
    *out = s;
    return 0;
}

/* Key material: wiped before it goes back to the heap. */
static void wipe_free(char *p)
{
    if (!p)
        return;
    size_t n = strlen(p);
    volatile char *v = p;
    while (n--)
        v[n] = 0;
    free(p);
}

static void entry_clear(struct entry *e)
{
    free(e->a);
    wipe_free(e->b);
    memset(e, 0, sizeof *e);
}

void acme_challenges_free(struct acme_challenges *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < ACME_MAX_ENTRIES; i++)
        entry_clear(&s->e[i]);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static bool is_b64url(const char *p, size_t n, bool dot)
{
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || (dot && c == '.')))
            return false;
    }
    return true;
}

/* A DNS name as a certificate carries it: letters, digits, '-', '.', no empty label. */
static bool is_dns_name(const char *p)
{
    size_t n = strnlen(p, ACME_NAME_MAX + 1);
    if (n == 0 || n > ACME_NAME_MAX || p[0] == '.' || p[n - 1] == '.' || strstr(p, ".."))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.'))
            return false;
    }
    return true;
}

static bool is_pem(const char *p)
{
    size_t n = strnlen(p, ACME_PEM_MAX + 1);
    return n > 0 && n <= ACME_PEM_MAX && strstr(p, "-----BEGIN ") != NULL;
}

static bool expired(const struct entry *e, int64_t now)
{
    return e->kind != KIND_FREE && e->expires <= now;
}

/* The live entry of this kind and key, or NULL. Call with the lock held. */
static struct entry *find(struct acme_challenges *s, enum kind k, const char *key)
{
    for (size_t i = 0; i < ACME_MAX_ENTRIES; i++) {
        struct entry *e = &s->e[i];
        if (e->kind != k)
            continue;
        if (k == KIND_HTTP ? strcmp(e->key, key) == 0 : strcasecmp(e->key, key) == 0)
            return e;
    }
    return NULL;
}

/* Puts a (and b, both owned now) under key: over the same key, else into a free or expired
 * slot. Takes the lock. */
static int store(struct acme_challenges *s, enum kind k, const char *key, char *a, char *b,
                 int64_t expires)
{
    int64_t now = (int64_t)time(NULL);
    pthread_mutex_lock(&s->lock);
    struct entry *e = find(s, k, key);
    for (size_t i = 0; !e && i < ACME_MAX_ENTRIES; i++)
        if (s->e[i].kind == KIND_FREE || expired(&s->e[i], now))
            e = &s->e[i];
    if (e) {
        entry_clear(e);
        e->kind = k;
        e->expires = expires;
        strcpy(e->key, key); /* length checked by the caller */
        e->a = a;
        e->b = b;
    }
    pthread_mutex_unlock(&s->lock);
    if (!e) {
        free(a);
        wipe_free(b);
        return -ENOSPC;
    }
    return 0;
}

int acme_challenges_set_http(struct acme_challenges *s, const char *token, const char *key_authz,
                             int64_t expires)
{
    if (!s || !token || !key_authz)
        return -EINVAL;
    size_t tl = strnlen(token, ACME_TOKEN_MAX + 1), kl = strnlen(key_authz, ACME_KEY_AUTHZ_MAX + 1);
    if (tl == 0 || tl > ACME_TOKEN_MAX || !is_b64url(token, tl, false) || kl == 0 ||
        kl > ACME_KEY_AUTHZ_MAX || !is_b64url(key_authz, kl, true))
        return -EINVAL;
    char *a = strdup(key_authz);
    if (!a)
        return -ENOMEM;
    return store(s, KIND_HTTP, token, a, NULL, expires);
}

int acme_challenges_http(struct acme_challenges *s, const char *token, char *out, size_t cap)
{
    if (!s || !token || (!out && cap))
        return -EINVAL;
    int rc = -ENOENT;
    pthread_mutex_lock(&s->lock);
    struct entry *e = find(s, KIND_HTTP, token);
    if (e && !expired(e, (int64_t)time(NULL))) {
        size_t n = strlen(e->a);
        if (n >= cap) {
            rc = -ENOSPC;
        } else {
            memcpy(out, e->a, n + 1);
            rc = (int)n;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int acme_challenges_set_alpn(struct acme_challenges *s, const char *name, const char *cert_pem,
                             const char *key_pem, int64_t expires)
{
    if (!s || !name || !cert_pem || !key_pem || !is_dns_name(name) || !is_pem(cert_pem) ||
        !is_pem(key_pem))
        return -EINVAL;
    char *a = strdup(cert_pem), *b = strdup(key_pem);
    if (!a || !b) {
        free(a);
        wipe_free(b);
        return -ENOMEM;
    }
    return store(s, KIND_ALPN, name, a, b, expires);
}

int acme_challenges_alpn(struct acme_challenges *s, const char *name, char **cert_pem,
                         char **key_pem)
{
    if (!s || !name || !cert_pem || !key_pem)
        return -EINVAL;
    *cert_pem = *key_pem = NULL;
    if (strnlen(name, ACME_NAME_MAX + 1) > ACME_NAME_MAX)
        return -ENOENT;
    char *a = NULL, *b = NULL;
    int rc = -ENOENT;
    pthread_mutex_lock(&s->lock);
    struct entry *e = find(s, KIND_ALPN, name);
    if (e && !expired(e, (int64_t)time(NULL))) {
        a = strdup(e->a);
        b = strdup(e->b);
        rc = a && b ? 0 : -ENOMEM;
    }
    pthread_mutex_unlock(&s->lock);
    metric_inc(rc == -ENOENT ? s->alpn_unknown : s->alpn_served);
    if (rc) {
        free(a);
        wipe_free(b);
        return rc;
    }
    *cert_pem = a;
    *key_pem = b;
    return 0;
}

void acme_challenges_count_alpn(struct acme_challenges *s, struct metric *served,
                                struct metric *unknown)
{
    if (s) {
        s->alpn_served = served;
        s->alpn_unknown = unknown;
    }
}

void acme_challenges_remove(struct acme_challenges *s, const char *token_or_name)
{
    if (!s || !token_or_name)
        return;
    pthread_mutex_lock(&s->lock);
    struct entry *e = find(s, KIND_HTTP, token_or_name);
    if (e)
        entry_clear(e);
    if ((e = find(s, KIND_ALPN, token_or_name)) != NULL)
        entry_clear(e);
    pthread_mutex_unlock(&s->lock);
}
