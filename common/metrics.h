/* Prometheus metrics: counters and gauges registered once, rendered as text at /metrics.
 *
 * Registration happens at start-up on the loop thread; increments are lock-free relaxed
 * atomics, so worker threads may bump the same counter. Label sets are fixed at
 * registration (bounded cardinality: never a label per user or per address). */
#ifndef COMMON_METRICS_H
#define COMMON_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct metrics;
struct metric; /* one time series: a name plus one fixed label set */

int metrics_create(struct metrics **out, const char *prefix /* e.g. "av_edge" */);
void metrics_destroy(struct metrics *m);

/* labels is NULL or e.g. "reason=\"stale_nonce\"". The pointer returned lives as long
 * as the registry; registering the same name+labels twice returns the same series. */
struct metric *metrics_counter(struct metrics *m, const char *name, const char *help,
                               const char *labels);
struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help,
                             const char *labels);

static inline void metric_add(struct metric *c, uint64_t n);
static inline void metric_inc(struct metric *c)
{
    metric_add(c, 1);
}
void metric_set(struct metric *g, int64_t v);
int64_t metric_get(const struct metric *c);

/* Renders the Prometheus text exposition format into a malloc'd string. */
char *metrics_render(const struct metrics *m, size_t *len_out);

/* Implementation detail kept in the header so that increments inline. */
struct metric {
    int64_t value;
};
static inline void metric_add(struct metric *c, uint64_t n)
{
    if (c)
        __atomic_fetch_add(&c->value, (int64_t)n, __ATOMIC_RELAXED);
}

#endif
