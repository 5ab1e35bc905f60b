/* osip2 set-up (see sip_osip.h). */
#include "common/sip/sip_osip.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <osipparser2/osip_parser.h>
#include <osipparser2/osip_port.h>

/* Where osip2's traces go: nowhere. */
static void trace_discard(const char *file, int line, osip_trace_level_t level, const char *fmt,
                          va_list ap)
{
    (void)file;
    (void)line;
    (void)level;
    (void)fmt;
    (void)ap;
}

/* ---- the arena behind osip2's allocator hooks ---- */

struct sip_osip_spill {
    struct dlist link;
    size_t size;
    uint64_t seq;
    max_align_t data[];
};

#define ARENA_ALIGN sizeof(max_align_t)

/* The arena a parse on this thread is allocating in, or NULL (libc). osip2's hooks are one
 * set per process and take no context, so the context is per thread. */
static __thread struct sip_osip_arena *current;

static bool in_buf(const struct sip_osip_arena *a, const void *p)
{
    return (const uint8_t *)p >= a->buf && (const uint8_t *)p < a->buf + a->cap;
}

static void *spill_alloc(struct sip_osip_arena *a, size_t n)
{
    struct sip_osip_spill *s = malloc(sizeof(*s) + n);
    if (!s)
        return NULL;
    *s = (struct sip_osip_spill){.size = n, .seq = a->spill_seq++};
    dl_add(&a->spills, &s->link);
    return s->data;
}

static struct sip_osip_spill *spill_find(struct sip_osip_arena *a, const void *p)
{
    for (struct dlist *e = a->spills.next; e != &a->spills; e = e->next) {
        struct sip_osip_spill *s = container_of(e, struct sip_osip_spill, link);
        if ((const void *)s->data == p)
            return s;
    }
    return NULL;
}

static void spill_free(struct sip_osip_spill *s)
{
    dl_del(&s->link);
    free(s);
}

void *sip_osip_arena_alloc(struct sip_osip_arena *a, size_t n)
{
    size_t need = (n + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (need == 0 || need < n)
        need = n ? n : ARENA_ALIGN;
    if (need <= a->cap - a->used) {
        void *p = a->buf + a->used;
        a->used += need;
        return p;
    }
    return spill_alloc(a, n);
}

static void *hook_malloc(size_t n)
{
    return current ? sip_osip_arena_alloc(current, n) : malloc(n);
}

static void hook_free(void *p)
{
    struct sip_osip_arena *a = current;
    if (!a) {
        free(p);
        return;
    }
    if (in_buf(a, p))
        return; /* goes with its tree */
    struct sip_osip_spill *s = spill_find(a, p);
    if (s)
        spill_free(s);
    else
        free(p); /* allocated before the parse began */
}

static void *hook_realloc(void *p, size_t n)
{
    struct sip_osip_arena *a = current;
    if (!a)
        return realloc(p, n);
    if (!p)
        return sip_osip_arena_alloc(a, n);
    size_t old;
    struct sip_osip_spill *s = NULL;
    if (in_buf(a, p))
        old = (size_t)(a->buf + a->used - (uint8_t *)p); /* at most what follows it */
    else if ((s = spill_find(a, p)) != NULL)
        old = s->size;
    else
        return realloc(p, n);
    void *q = sip_osip_arena_alloc(a, n);
    if (q) {
        memcpy(q, p, old < n ? old : n);
        if (s)
            spill_free(s);
    }
    return q;
}

int sip_osip_arena_init(struct sip_osip_arena *a, size_t cap)
{
    *a = (struct sip_osip_arena){.buf = malloc(cap), .cap = cap};
    dl_init(&a->spills);
    return a->buf ? 0 : -ENOMEM;
}

void sip_osip_arena_free(struct sip_osip_arena *a)
{
    struct sip_osip_mark start = {0, 0};
    sip_osip_arena_drop(a, &start);
    free(a->buf);
    *a = (struct sip_osip_arena){0};
    dl_init(&a->spills);
}

struct sip_osip_mark sip_osip_arena_mark(const struct sip_osip_arena *a)
{
    return (struct sip_osip_mark){a->used, a->spill_seq};
}

void sip_osip_arena_drop(struct sip_osip_arena *a, const struct sip_osip_mark *mark)
{
    /* Next taken before each free (the analyzer cannot follow dl_del's relinking). */
    for (struct dlist *e = a->spills.next, *nx; e != &a->spills; e = nx) {
        nx = e->next;
        struct sip_osip_spill *s = container_of(e, struct sip_osip_spill, link);
        if (s->seq < mark->spill_seq)
            break;
        spill_free(s);
    }
    if (mark->used < a->used)
        a->used = mark->used;
}

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void setup(void)
{
    /* Outside sip_osip_parse_in the hooks are libc's malloc, realloc and free. */
    osip_set_allocators(hook_malloc, hook_realloc, hook_free);
    parser_init();
    /* A trace function of our own takes every trace osip2 emits (level 0: none enabled),
     * so none is printed to stdout, which is the daemon's log. */
    osip_trace_initialize_func((osip_trace_level_t)0, trace_discard);
    for (int l = 0; l < END_TRACE_LEVEL; l++)
        osip_trace_disable_level((osip_trace_level_t)l);
}

void sip_osip_init(void)
{
    pthread_once(&once, setup);
}

int sip_osip_parse(osip_message_t *msg, const struct sip_msg *m)
{
    /* osip2 is given a copy of the header section alone, its Content-Length values zeroed:
     * nothing here reads a body, and osip2's MIME body parser leaks a multipart part that
     * carries two Content-Types (fuzz_sip_msg found it: 63 bytes a message, an attacker's
     * to repeat). Tabs become spaces, which osip2 does not take for LWS everywhere. */
    size_t hdr = m->hdr_end && m->hdr_end <= m->len ? m->hdr_end : m->len;
    char stack[4096];
    char *copy = hdr <= sizeof(stack) ? stack : malloc(hdr);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, m->buf, hdr);
    for (size_t i = 0; i < hdr; i++)
        if (copy[i] == '\t')
            copy[i] = ' ';
    for (uint16_t i = 0; i < m->nhdr; i++)
        if (m->hdr[i].id == SIP_H_CONTENT_LENGTH && m->hdr[i].val_len &&
            m->hdr[i].val_off + m->hdr[i].val_len <= hdr) {
            memset(copy + m->hdr[i].val_off, ' ', m->hdr[i].val_len);
            copy[m->hdr[i].val_off] = '0';
        }
    int rc = osip_message_parse(msg, copy, hdr);
    if (copy != stack)
        free(copy);
    return rc;
}

int sip_osip_parse_in(struct sip_osip_arena *a, const struct sip_msg *m, osip_message_t **out)
{
    sip_osip_init();
    struct sip_osip_mark mark = sip_osip_arena_mark(a);
    struct sip_osip_arena *outer = current;
    current = a;
    osip_message_t *msg = NULL;
    int rc = osip_message_init(&msg) != 0 ? -ENOMEM : sip_osip_parse(msg, m);
    current = outer;
    if (rc != 0)
        sip_osip_arena_drop(a, &mark);
    *out = rc == 0 ? msg : NULL;
    return rc;
}
