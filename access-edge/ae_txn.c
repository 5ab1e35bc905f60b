/* INVITE transaction table (see ae_txn.h). */
#include "access-edge/ae_txn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct ae_txn_table {
    struct ae_txn *slots;
    size_t cap;   /* power of two */
    size_t used;  /* live entries */
    size_t dead;  /* tombstones */
    size_t limit; /* live entries allowed (3/4 of cap) */
};

int ae_txn_table_create(struct ae_txn_table **out, size_t cap)
{
    if (!out || cap < 4)
        return -EINVAL;
    size_t c = 8;
    while (c < cap + cap / 3)
        c <<= 1;
    struct ae_txn_table *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->slots = calloc(c, sizeof(*t->slots));
    if (!t->slots) {
        free(t);
        return -ENOMEM;
    }
    t->cap = c;
    t->limit = cap;
    *out = t;
    return 0;
}

void ae_txn_table_destroy(struct ae_txn_table *t)
{
    if (!t)
        return;
    free(t->slots);
    free(t);
}

struct ae_txn *ae_txn_find(struct ae_txn_table *t, uint64_t key)
{
    size_t mask = t->cap - 1;
    for (size_t i = 0, k = key & mask; i < t->cap; i++, k = (k + 1) & mask) {
        struct ae_txn *x = &t->slots[k];
        if (x->state == 0)
            return NULL;
        if (x->state == 1 && x->key == key)
            return x;
    }
    return NULL;
}

/* Rebuilds the table without tombstones when they crowd out empty slots. */
static void compact(struct ae_txn_table *t)
{
    struct ae_txn *old = t->slots;
    struct ae_txn *n = calloc(t->cap, sizeof(*n));
    if (!n)
        return; /* keep working with tombstones; lookups stay correct */
    size_t mask = t->cap - 1;
    for (size_t i = 0; i < t->cap; i++) {
        if (old[i].state != 1)
            continue;
        size_t k = old[i].key & mask;
        while (n[k].state)
            k = (k + 1) & mask;
        n[k] = old[i];
    }
    free(old);
    t->slots = n;
    t->dead = 0;
}

struct ae_txn *ae_txn_add(struct ae_txn_table *t, uint64_t key, uint64_t now_ms)
{
    if (t->used >= t->limit)
        return NULL;
    if (t->used + t->dead >= t->cap - t->cap / 8)
        compact(t);
    size_t mask = t->cap - 1;
    size_t k = key & mask;
    for (size_t i = 0; i < t->cap; i++, k = (k + 1) & mask) {
        struct ae_txn *x = &t->slots[k];
        if (x->state == 1)
            continue;
        if (x->state == 2)
            t->dead--;
        memset(x, 0, sizeof(*x));
        x->state = 1;
        x->key = key;
        x->t_ms = now_ms;
        t->used++;
        return x;
    }
    return NULL;
}

void ae_txn_del(struct ae_txn_table *t, struct ae_txn *x)
{
    if (!x || x->state != 1)
        return;
    x->state = 2;
    t->used--;
    t->dead++;
}

size_t ae_txn_expire(struct ae_txn_table *t, uint64_t now_ms, uint64_t max_ms, uint64_t linger_ms)
{
    size_t n = 0;
    for (size_t i = 0; i < t->cap; i++) {
        struct ae_txn *x = &t->slots[i];
        if (x->state != 1)
            continue;
        uint64_t age = now_ms - x->t_ms;
        bool done = x->noninvite ? age >= AE_TXN_TIMER_F_MS
                                 : age >= max_ms || (x->final && age >= linger_ms);
        if (done) {
            ae_txn_del(t, x);
            n++;
        }
    }
    if (t->dead > t->cap / 4)
        compact(t);
    return n;
}

size_t ae_txn_count(const struct ae_txn_table *t)
{
    return t->used;
}
