/* TURN allocation table: intrusive chained hash tables keyed by 5-tuple, (allocation, peer IP),
 * (allocation, channel), (allocation, peer address), username and reservation token. */
#include "av-edge/alloc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

struct av_htab {
    struct av_hnode **b;
    size_t mask, n;
};

struct av_resv {
    struct av_hnode node;
    struct av_resv *next;
    uint64_t token;
    void *handle;
    uint64_t expires_ms;
};

struct av_alloc_table {
    struct av_htab allocs, perms, chans_num, chans_peer, users, resvs;
    size_t n_perms, n_chans;
    struct av_alloc_hooks hooks;
    struct av_resv *resv_list;
};

/* ---- generic intrusive hash ---- */

static uint64_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static int htab_init(struct av_htab *t, size_t n)
{
    t->b = calloc(n, sizeof(*t->b));
    t->mask = n - 1;
    t->n = 0;
    return t->b ? 0 : -ENOMEM;
}

static void htab_fini(struct av_htab *t)
{
    free(t->b);
    t->b = NULL;
}

static void htab_grow(struct av_htab *t)
{
    size_t nn = (t->mask + 1) * 2;
    struct av_hnode **nb = calloc(nn, sizeof(*nb));
    if (!nb)
        return; /* keep working with longer chains */
    for (size_t i = 0; i <= t->mask; i++) {
        struct av_hnode *e = t->b[i];
        while (e) {
            struct av_hnode *next = e->next;
            size_t j = e->h & (nn - 1);
            e->next = nb[j];
            nb[j] = e;
            e = next;
        }
    }
    free(t->b);
    t->b = nb;
    t->mask = nn - 1;
}

static void htab_insert(struct av_htab *t, struct av_hnode *e, uint64_t h)
{
    if (t->n >= t->mask + 1)
        htab_grow(t);
    e->h = h;
    size_t i = h & t->mask;
    e->next = t->b[i];
    t->b[i] = e;
    t->n++;
}

static void htab_remove(struct av_htab *t, struct av_hnode *e)
{
    struct av_hnode **pp = &t->b[e->h & t->mask];
    while (*pp && *pp != e)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = e->next;
        t->n--;
    }
}

static inline struct av_hnode *htab_first(const struct av_htab *t, uint64_t h)
{
    return t->b[h & t->mask];
}

/* ---- keys ---- */

static uint64_t hash_5tuple(const struct addr *c, uint16_t listener, uint8_t transport)
{
    return mix(addr_hash(c, true) ^ ((uint64_t)listener << 40) ^ ((uint64_t)transport << 56));
}
static uint64_t hash_perm(const struct av_alloc *a, const struct addr *peer)
{
    return mix(addr_hash(peer, false) ^ (uint64_t)(uintptr_t)a);
}
static uint64_t hash_chan_num(const struct av_alloc *a, uint16_t num)
{
    return mix((uint64_t)(uintptr_t)a * 31 + num);
}
static uint64_t hash_chan_peer(const struct av_alloc *a, const struct addr *peer)
{
    return mix(addr_hash(peer, true) ^ ((uint64_t)(uintptr_t)a << 1));
}
static uint64_t hash_str(const char *s)
{
    return mix(fnv1a(FNV1A_INIT, s, strlen(s)));
}

static void bucket_refill(struct av_bucket *b, uint64_t now_ms)
{
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * (double)b->rate / 1000.0;
        if (b->tokens > (double)b->burst)
            b->tokens = (double)b->burst;
        b->last_ms = now_ms;
    }
}

bool av_bucket_take(struct av_bucket *b, uint64_t now_ms, size_t bytes)
{
    if (!b->rate)
        return true;
    bucket_refill(b, now_ms);
    if (b->tokens < (double)bytes)
        return false;
    b->tokens -= (double)bytes;
    return true;
}

uint64_t av_bucket_lease(struct av_bucket *b, uint64_t now_ms, uint64_t want)
{
    bucket_refill(b, now_ms);
    uint64_t have = b->tokens > 0 ? (uint64_t)b->tokens : 0;
    uint64_t got = have < want ? have : want;
    b->tokens -= (double)got;
    return got;
}

uint64_t av_bucket_charge(struct av_bucket *b, uint64_t now_ms, size_t bytes)
{
    if (!b->rate)
        return 0;
    bucket_refill(b, now_ms);
    b->tokens -= (double)bytes;
    if (b->tokens >= 0)
        return 0;
    return (uint64_t)(-b->tokens * 1000.0 / (double)b->rate) + 1;
}

int av_alloc_table_create(struct av_alloc_table **out, const struct av_alloc_hooks *hooks)
{
    struct av_alloc_table *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    if (hooks)
        t->hooks = *hooks;
    if (htab_init(&t->allocs, 256) || htab_init(&t->perms, 256) || htab_init(&t->chans_num, 256) ||
        htab_init(&t->chans_peer, 256) || htab_init(&t->users, 64) || htab_init(&t->resvs, 16))
        goto fail;
    *out = t;
    return 0;
fail:
    htab_fini(&t->allocs);
    htab_fini(&t->perms);
    htab_fini(&t->chans_num);
    htab_fini(&t->chans_peer);
    htab_fini(&t->users);
    htab_fini(&t->resvs);
    free(t);
    return -ENOMEM;
}

struct av_alloc *av_alloc_find(struct av_alloc_table *t, const struct addr *client,
                               uint16_t listener, uint8_t transport)
{
    uint64_t h = hash_5tuple(client, listener, transport);
    for (struct av_hnode *e = htab_first(&t->allocs, h); e; e = e->next) {
        if (e->h != h)
            continue;
        struct av_alloc *a = container_of(e, struct av_alloc, node);
        if (a->listener == listener && a->transport == transport && addr_eq(&a->client, client))
            return a;
    }
    return NULL;
}

struct av_user *av_user_find(struct av_alloc_table *t, const char *user)
{
    uint64_t h = hash_str(user);
    for (struct av_hnode *e = htab_first(&t->users, h); e; e = e->next) {
        struct av_user *u = container_of(e, struct av_user, node);
        if (e->h == h && strcmp(u->name, user) == 0)
            return u;
    }
    return NULL;
}

struct av_alloc *av_alloc_add(struct av_alloc_table *t, const struct addr *client,
                              uint16_t listener, uint8_t transport, const char *user)
{
    struct av_user *u = av_user_find(t, user);
    if (!u) {
        u = calloc(1, sizeof(*u));
        if (!u)
            return NULL;
        snprintf(u->name, sizeof(u->name), "%s", user);
        htab_insert(&t->users, &u->node, hash_str(u->name));
    }
    struct av_alloc *a = calloc(1, sizeof(*a));
    if (!a) {
        if (!u->n_allocs) {
            htab_remove(&t->users, &u->node);
            free(u);
        }
        return NULL;
    }
    a->client = *client;
    a->listener = listener;
    a->transport = transport;
    a->user = u;
    u->n_allocs++;
    htab_insert(&t->allocs, &a->node, hash_5tuple(client, listener, transport));
    return a;
}

static void perm_free(struct av_alloc_table *t, struct av_perm *p)
{
    htab_remove(&t->perms, &p->node);
    p->alloc->n_perms--;
    t->n_perms--;
    free(p);
}

static void chan_free(struct av_alloc_table *t, struct av_chan *c)
{
    htab_remove(&t->chans_num, &c->by_num);
    htab_remove(&t->chans_peer, &c->by_peer);
    c->alloc->n_chans--;
    t->n_chans--;
    free(c);
}

void av_alloc_remove(struct av_alloc_table *t, struct av_alloc *a)
{
    if (t->hooks.on_free)
        t->hooks.on_free(a, t->hooks.arg);
    while (a->perms) {
        struct av_perm *p = a->perms;
        a->perms = p->next;
        perm_free(t, p);
    }
    while (a->chans) {
        struct av_chan *c = a->chans;
        a->chans = c->next;
        chan_free(t, c);
    }
    htab_remove(&t->allocs, &a->node);
    struct av_user *u = a->user;
    if (u && --u->n_allocs == 0) {
        htab_remove(&t->users, &u->node);
        free(u);
    }
    free(a);
}

size_t av_alloc_count(const struct av_alloc_table *t)
{
    return t->allocs.n;
}

struct av_perm *av_perm_find(struct av_alloc_table *t, struct av_alloc *a, const struct addr *peer,
                             uint64_t now_ms)
{
    uint64_t h = hash_perm(a, peer);
    for (struct av_hnode *e = htab_first(&t->perms, h); e; e = e->next) {
        if (e->h != h)
            continue;
        struct av_perm *p = container_of(e, struct av_perm, node);
        if (p->alloc == a && addr_host_eq(&p->peer, peer))
            return p->expires_ms > now_ms ? p : NULL;
    }
    return NULL;
}

struct av_perm *av_perm_set(struct av_alloc_table *t, struct av_alloc *a, const struct addr *peer,
                            uint64_t expires_ms)
{
    struct av_perm *p = av_perm_find(t, a, peer, 0);
    if (p) {
        p->expires_ms = expires_ms;
        return p;
    }
    p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->alloc = a;
    p->peer = *peer;
    addr_set_port(&p->peer, 0);
    p->expires_ms = expires_ms;
    p->next = a->perms;
    a->perms = p;
    a->n_perms++;
    t->n_perms++;
    htab_insert(&t->perms, &p->node, hash_perm(a, peer));
    return p;
}

struct av_chan *av_chan_by_num(struct av_alloc_table *t, struct av_alloc *a, uint16_t num,
                               uint64_t now_ms)
{
    uint64_t h = hash_chan_num(a, num);
    for (struct av_hnode *e = htab_first(&t->chans_num, h); e; e = e->next) {
        if (e->h != h)
            continue;
        struct av_chan *c = container_of(e, struct av_chan, by_num);
        if (c->alloc == a && c->num == num)
            return c->expires_ms > now_ms ? c : NULL;
    }
    return NULL;
}

struct av_chan *av_chan_by_peer(struct av_alloc_table *t, struct av_alloc *a,
                                const struct addr *peer, uint64_t now_ms)
{
    uint64_t h = hash_chan_peer(a, peer);
    for (struct av_hnode *e = htab_first(&t->chans_peer, h); e; e = e->next) {
        if (e->h != h)
            continue;
        struct av_chan *c = container_of(e, struct av_chan, by_peer);
        if (c->alloc == a && addr_eq(&c->peer, peer))
            return c->expires_ms > now_ms ? c : NULL;
    }
    return NULL;
}

struct av_chan *av_chan_set(struct av_alloc_table *t, struct av_alloc *a, uint16_t num,
                            const struct addr *peer, uint64_t expires_ms)
{
    struct av_chan *c = av_chan_by_num(t, a, num, 0);
    if (c) {
        /* A binding that expired may be rebound to another peer after its lifetime. */
        if (!addr_eq(&c->peer, peer)) {
            htab_remove(&t->chans_peer, &c->by_peer);
            c->peer = *peer;
            htab_insert(&t->chans_peer, &c->by_peer, hash_chan_peer(a, peer));
        }
        c->expires_ms = expires_ms;
        return c;
    }
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->alloc = a;
    c->num = num;
    c->peer = *peer;
    c->expires_ms = expires_ms;
    c->next = a->chans;
    a->chans = c;
    a->n_chans++;
    t->n_chans++;
    htab_insert(&t->chans_num, &c->by_num, hash_chan_num(a, num));
    htab_insert(&t->chans_peer, &c->by_peer, hash_chan_peer(a, peer));
    return c;
}

int av_reservation_add(struct av_alloc_table *t, uint64_t token, void *handle, uint64_t expires_ms)
{
    struct av_resv *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->token = token;
    r->handle = handle;
    r->expires_ms = expires_ms;
    r->next = t->resv_list;
    t->resv_list = r;
    htab_insert(&t->resvs, &r->node, mix(token));
    return 0;
}

static void resv_unlink(struct av_alloc_table *t, struct av_resv *r)
{
    struct av_resv **pp = &t->resv_list;
    while (*pp && *pp != r)
        pp = &(*pp)->next;
    if (*pp)
        *pp = r->next;
    htab_remove(&t->resvs, &r->node);
}

void *av_reservation_take(struct av_alloc_table *t, uint64_t token, uint64_t now_ms)
{
    uint64_t h = mix(token);
    for (struct av_hnode *e = htab_first(&t->resvs, h); e; e = e->next) {
        struct av_resv *r = container_of(e, struct av_resv, node);
        if (e->h == h && r->token == token && r->expires_ms > now_ms) {
            void *handle = r->handle;
            resv_unlink(t, r);
            free(r);
            return handle;
        }
    }
    return NULL;
}

size_t av_alloc_sweep(struct av_alloc_table *t, uint64_t now_ms)
{
    size_t removed = 0;
    for (size_t i = 0; i <= t->allocs.mask; i++) {
        struct av_hnode *e = t->allocs.b[i];
        while (e) {
            struct av_hnode *next = e->next;
            struct av_alloc *a = container_of(e, struct av_alloc, node);
            if (a->expires_ms <= now_ms) {
                av_alloc_remove(t, a);
                removed++;
            } else {
                for (struct av_perm **pp = &a->perms; *pp;) {
                    struct av_perm *p = *pp;
                    if (p->expires_ms <= now_ms) {
                        *pp = p->next;
                        perm_free(t, p);
                    } else {
                        pp = &p->next;
                    }
                }
                for (struct av_chan **cp = &a->chans; *cp;) {
                    struct av_chan *c = *cp;
                    if (c->expires_ms <= now_ms) {
                        *cp = c->next;
                        chan_free(t, c);
                    } else {
                        cp = &c->next;
                    }
                }
            }
            e = next;
        }
    }
    for (struct av_resv *r = t->resv_list, *next; r; r = next) {
        next = r->next;
        if (r->expires_ms <= now_ms) {
            void *h = r->handle;
            resv_unlink(t, r);
            free(r);
            if (t->hooks.on_reservation_free)
                t->hooks.on_reservation_free(h, t->hooks.arg);
        }
    }
    return removed;
}

void av_alloc_counts(const struct av_alloc_table *t, size_t *allocs, size_t *perms, size_t *chans)
{
    *allocs = t->allocs.n;
    *perms = t->n_perms;
    *chans = t->n_chans;
}

void av_alloc_foreach(struct av_alloc_table *t, void (*fn)(struct av_alloc *a, void *arg),
                      void *arg)
{
    for (size_t i = 0; i <= t->allocs.mask; i++)
        for (struct av_hnode *e = t->allocs.b[i]; e; e = e->next)
            fn(container_of(e, struct av_alloc, node), arg);
}

void av_alloc_clear(struct av_alloc_table *t)
{
    /* By the saved next node: the on_free hook removes no other allocation, and the chain's
     * head is not read again once its allocation is freed (the analyzer cannot tell that
     * av_alloc_remove unlinked it from this very bucket). */
    for (size_t i = 0; i <= t->allocs.mask; i++) {
        struct av_hnode *n = t->allocs.b[i];
        while (n) {
            struct av_hnode *next = n->next;
            av_alloc_remove(t, container_of(n, struct av_alloc, node));
            n = next;
        }
    }
    while (t->resv_list) {
        struct av_resv *r = t->resv_list;
        void *h = r->handle;
        resv_unlink(t, r);
        free(r);
        if (t->hooks.on_reservation_free)
            t->hooks.on_reservation_free(h, t->hooks.arg);
    }
}

void av_alloc_table_destroy(struct av_alloc_table *t)
{
    if (!t)
        return;
    av_alloc_clear(t);
    htab_fini(&t->allocs);
    htab_fini(&t->perms);
    htab_fini(&t->chans_num);
    htab_fini(&t->chans_peer);
    htab_fini(&t->users);
    htab_fini(&t->resvs);
    free(t);
}
