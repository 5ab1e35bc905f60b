/* Chained hash map keyed by byte strings (FNV-1a), doubling when the load passes 1. */
#include "common/map.h"
#include "common/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct ce_map {
    struct ce_map_entry **b;
    size_t nb, n;
};

int ce_map_create(struct ce_map **out)
{
    struct ce_map *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->nb = 64;
    m->b = calloc(m->nb, sizeof *m->b);
    if (!m->b) {
        free(m);
        return -ENOMEM;
    }
    *out = m;
    return 0;
}

void ce_map_destroy(struct ce_map *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nb; i++) {
        struct ce_map_entry *e = m->b[i];
        while (e) {
            struct ce_map_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(m->b);
    free(m);
}

struct ce_map_entry *ce_map_find(const struct ce_map *m, const void *key, size_t klen)
{
    uint64_t h = fnv1a(FNV1A_INIT, key, klen);
    for (struct ce_map_entry *e = m->b[h & (m->nb - 1)]; e; e = e->next)
        if (e->hash == h && e->klen == klen && !memcmp(e->key, key, klen))
            return e;
    return NULL;
}

static void grow(struct ce_map *m)
{
    size_t nb = m->nb * 2;
    struct ce_map_entry **b = calloc(nb, sizeof *b);
    if (!b)
        return; /* a longer chain is still correct */
    for (size_t i = 0; i < m->nb; i++) {
        struct ce_map_entry *e = m->b[i];
        while (e) {
            struct ce_map_entry *next = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
}

struct ce_map_entry *ce_map_get(struct ce_map *m, const void *key, size_t klen)
{
    struct ce_map_entry *e = ce_map_find(m, key, klen);
    if (e)
        return e;
    e = calloc(1, sizeof *e + klen);
    if (!e)
        return NULL;
    e->hash = fnv1a(FNV1A_INIT, key, klen);
    e->klen = klen;
    memcpy(e->key, key, klen);
    if (m->n >= m->nb)
        grow(m);
    size_t i = e->hash & (m->nb - 1);
    e->next = m->b[i];
    m->b[i] = e;
    m->n++;
    return e;
}

void ce_map_remove(struct ce_map *m, struct ce_map_entry *e)
{
    struct ce_map_entry **pp = &m->b[e->hash & (m->nb - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->next;
    if (!*pp)
        return;
    *pp = e->next;
    m->n--;
    free(e);
}

size_t ce_map_size(const struct ce_map *m)
{
    return m ? m->n : 0;
}

void ce_map_foreach(const struct ce_map *m, void (*fn)(struct ce_map_entry *e, void *arg),
                    void *arg)
{
    for (size_t i = 0; i < m->nb; i++)
        for (struct ce_map_entry *e = m->b[i]; e; e = e->next)
            fn(e, arg);
}
