/* Counter and gauge registry rendered in the Prometheus text format. */
#include "common/metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct series {
    struct metric m; /* first: a struct metric * is a struct series * */
    char *name, *help, *labels;
    bool gauge;
};

struct metrics {
    char *prefix;
    struct series **v;
    size_t n, cap;
};

int metrics_create(struct metrics **out, const char *prefix)
{
    struct metrics *m = calloc(1, sizeof *m);
    if (!m || !(m->prefix = strdup(prefix ? prefix : ""))) {
        free(m);
        return -ENOMEM;
    }
    *out = m;
    return 0;
}

void metrics_destroy(struct metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++) {
        free(m->v[i]->name);
        free(m->v[i]->help);
        free(m->v[i]->labels);
        free(m->v[i]);
    }
    free(m->v);
    free(m->prefix);
    free(m);
}

static struct metric *reg(struct metrics *m, const char *name, const char *help, const char *labels,
                          bool gauge)
{
    if (!m)
        return NULL;
    labels = labels ? labels : "";
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->v[i]->name, name) && !strcmp(m->v[i]->labels, labels))
            return &m->v[i]->m;
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 32;
        struct series **nv = realloc(m->v, nc * sizeof *nv);
        if (!nv)
            return NULL;
        m->v = nv;
        m->cap = nc;
    }
    struct series *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->name = strdup(name);
    s->help = strdup(help ? help : "");
    s->labels = strdup(labels);
    s->gauge = gauge;
    if (!s->name || !s->help || !s->labels) {
        free(s->name);
        free(s->help);
        free(s->labels);
        free(s);
        return NULL;
    }
    m->v[m->n++] = s;
    return &s->m;
}

struct metric *metrics_counter(struct metrics *m, const char *name, const char *help,
                               const char *labels)
{
    return reg(m, name, help, labels, false);
}

struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help,
                             const char *labels)
{
    return reg(m, name, help, labels, true);
}

void metric_set(struct metric *g, int64_t v)
{
    if (g)
        __atomic_store_n(&g->value, v, __ATOMIC_RELAXED);
}

int64_t metric_get(const struct metric *c)
{
    return c ? __atomic_load_n(&c->value, __ATOMIC_RELAXED) : 0;
}

char *metrics_render(const struct metrics *m, size_t *len_out)
{
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    out[0] = '\0';
    for (size_t i = 0; i < m->n; i++) {
        const struct series *s = m->v[i];
        bool first = true;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(m->v[j]->name, s->name))
                first = false;
        if (!first)
            continue; /* rendered with the first series of that name */
        for (size_t j = i; j < m->n; j++) {
            const struct series *t = m->v[j];
            if (strcmp(t->name, s->name))
                continue;
            for (;;) {
                int n;
                size_t room = cap - len;
                const char *sep = m->prefix[0] ? "_" : "";
                if (j == i)
                    n = snprintf(out + len, room,
                                 "# HELP %s%s%s %s\n# TYPE %s%s%s %s\n%s%s%s%s%s%s %" PRId64 "\n",
                                 m->prefix, sep, t->name, t->help, m->prefix, sep, t->name,
                                 t->gauge ? "gauge" : "counter", m->prefix, sep, t->name,
                                 t->labels[0] ? "{" : "", t->labels, t->labels[0] ? "}" : "",
                                 metric_get(&t->m));
                else
                    n = snprintf(out + len, room, "%s%s%s%s%s%s %" PRId64 "\n", m->prefix, sep,
                                 t->name, t->labels[0] ? "{" : "", t->labels,
                                 t->labels[0] ? "}" : "", metric_get(&t->m));
                if (n >= 0 && (size_t)n < room) {
                    len += (size_t)n;
                    break;
                }
                char *no = realloc(out, cap * 2);
                if (!no) {
                    free(out);
                    return NULL;
                }
                out = no;
                cap *= 2;
            }
        }
    }
    if (len_out)
        *len_out = len;
    return out;
}
