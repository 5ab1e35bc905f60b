/* Token buckets keyed by a short byte string (an address, a domain), with bounded
 * memory: when the table is full the least recently used bucket is evicted. */
#ifndef COMMON_RATELIMIT_H
#define COMMON_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ratelimit;

/* rate: tokens per second; burst: bucket size; max_keys: table bound. */
int ratelimit_create(struct ratelimit **out, double rate, double burst, size_t max_keys);
void ratelimit_destroy(struct ratelimit *rl);
/* Takes cost tokens from key's bucket at time now_ms; true if allowed.
 * retry_after_s (may be NULL) gets the seconds until enough tokens return. */
bool ratelimit_take(struct ratelimit *rl, const void *key, size_t klen, double cost,
                    uint64_t now_ms, uint32_t *retry_after_s);
/* Per-key override of the rate (e.g. suspicious partners): 0 restores the default. */
void ratelimit_set_rate(struct ratelimit *rl, const void *key, size_t klen, double rate,
                        uint64_t now_ms);
size_t ratelimit_count(const struct ratelimit *rl);

#endif
