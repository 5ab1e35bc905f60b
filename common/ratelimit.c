/* Token buckets in an open hash table with an LRU list, so memory stays bounded. */
#include "common/ratelimit.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define RL_KEY_MAX 64

struct bucket {
    uint8_t key[RL_KEY_MAX];
    uint8_t klen;
    bool used;
    double tokens, rate; /* rate 0 = the limiter's default */
    uint64_t last_ms;
    struct bucket *lru_prev, *lru_next, *hnext;
};

struct ratelimit {
    double rate, burst;
    size_t max, n, nbuckets;
    struct bucket *pool;     /* max entries */
    struct bucket **table;   /* nbuckets chains */
    struct bucket *lru_head; /* most recent */
    struct bucket *lru_tail; /* least recent: evicted first */
    struct bucket *free_list;
};

static uint64_t hash(const void *k, size_t n)
{
    return fnv1a(FNV1A_INIT, k, n);
}

int ratelimit_create(struct ratelimit **out, double rate, double burst, size_t max_keys)
{
    if (rate <= 0 || burst < 1 || max_keys == 0)
        return -EINVAL;
    struct ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl)
        return -ENOMEM;
    rl->rate = rate;
    rl->burst = burst;
    rl->max = max_keys;
    rl->nbuckets = 1;
    while (rl->nbuckets < max_keys)
        rl->nbuckets <<= 1;
    rl->pool = calloc(max_keys, sizeof *rl->pool);
    rl->table = calloc(rl->nbuckets, sizeof *rl->table);
    if (!rl->pool || !rl->table) {
        ratelimit_destroy(rl);
        return -ENOMEM;
    }
    for (size_t i = 0; i < max_keys; i++) {
        rl->pool[i].hnext = rl->free_list;
        rl->free_list = &rl->pool[i];
    }
    *out = rl;
    return 0;
}

void ratelimit_destroy(struct ratelimit *rl)
{
    if (!rl)
        return;
    free(rl->pool);
    free(rl->table);
    free(rl);
}

static void lru_unlink(struct ratelimit *rl, struct bucket *b)
{
    if (b->lru_prev)
        b->lru_prev->lru_next = b->lru_next;
    else
        rl->lru_head = b->lru_next;
    if (b->lru_next)
        b->lru_next->lru_prev = b->lru_prev;
    else
        rl->lru_tail = b->lru_prev;
    b->lru_prev = b->lru_next = NULL;
}

static void lru_push_front(struct ratelimit *rl, struct bucket *b)
{
    b->lru_next = rl->lru_head;
    b->lru_prev = NULL;
    if (rl->lru_head)
        rl->lru_head->lru_prev = b;
    rl->lru_head = b;
    if (!rl->lru_tail)
        rl->lru_tail = b;
}

static void table_remove(struct ratelimit *rl, struct bucket *b)
{
    struct bucket **pp = &rl->table[hash(b->key, b->klen) & (rl->nbuckets - 1)];
    while (*pp && *pp != b)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = b->hnext;
}

static struct bucket *lookup(struct ratelimit *rl, const void *key, size_t klen, uint64_t now,
                             bool create)
{
    if (klen > RL_KEY_MAX)
        klen = RL_KEY_MAX;
    size_t idx = hash(key, klen) & (rl->nbuckets - 1);
    for (struct bucket *b = rl->table[idx]; b; b = b->hnext)
        if (b->klen == klen && !memcmp(b->key, key, klen)) {
            lru_unlink(rl, b);
            lru_push_front(rl, b);
            return b;
        }
    if (!create)
        return NULL;
    struct bucket *b = rl->free_list;
    if (b) {
        rl->free_list = b->hnext;
        rl->n++;
    } else {
        b = rl->lru_tail; /* full: forget the least recently seen key */
        lru_unlink(rl, b);
        table_remove(rl, b);
    }
    memset(b, 0, sizeof *b);
    memcpy(b->key, key, klen);
    b->klen = (uint8_t)klen;
    b->used = true;
    b->tokens = rl->burst;
    b->last_ms = now;
    b->hnext = rl->table[idx];
    rl->table[idx] = b;
    lru_push_front(rl, b);
    return b;
}

bool ratelimit_take(struct ratelimit *rl, const void *key, size_t klen, double cost,
                    uint64_t now_ms, uint32_t *retry_after_s)
{
    struct bucket *b = lookup(rl, key, klen, now_ms, true);
    double rate = b->rate > 0 ? b->rate : rl->rate;
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * rate / 1000.0;
        if (b->tokens > rl->burst)
            b->tokens = rl->burst;
        b->last_ms = now_ms;
    }
    if (b->tokens >= cost) {
        b->tokens -= cost;
        return true;
    }
    if (retry_after_s) {
        double need = (cost - b->tokens) / rate;
        *retry_after_s = (uint32_t)ceil(need < 1 ? 1 : need);
    }
    return false;
}

void ratelimit_set_rate(struct ratelimit *rl, const void *key, size_t klen, double rate,
                        uint64_t now_ms)
{
    struct bucket *b = lookup(rl, key, klen, now_ms, true);
    b->rate = rate > 0 ? rate : 0;
}

size_t ratelimit_count(const struct ratelimit *rl)
{
    return rl->n;
}
