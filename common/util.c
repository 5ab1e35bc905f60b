/* Slices, fixed-capacity buffers and clocks. */
#include "common/util.h"

#include <errno.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

bool slice_eq(struct slice a, struct slice b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

bool slice_eq_str(struct slice a, const char *s)
{
    return slice_eq(a, slice_str(s));
}

bool slice_caseeq_str(struct slice a, const char *s)
{
    size_t n = strlen(s);
    return a.len == n && (n == 0 || strncasecmp((const char *)a.p, s, n) == 0);
}

int slice_to_cstr(struct slice s, char *out, size_t cap)
{
    if (cap == 0)
        return -ENOSPC;
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n)
        memcpy(out, s.p, n);
    out[n] = '\0';
    return n == s.len ? 0 : -ENOSPC;
}

int buf_init(struct buf *b, size_t cap)
{
    b->data = cap ? malloc(cap) : NULL;
    if (cap && !b->data)
        return -ENOMEM;
    b->cap = cap;
    b->rd = b->wr = 0;
    return 0;
}

void buf_fini(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->cap = b->rd = b->wr = 0;
}

void buf_compact(struct buf *b)
{
    if (b->rd == 0)
        return;
    size_t n = b->wr - b->rd;
    if (n)
        memmove(b->data, b->data + b->rd, n);
    b->rd = 0;
    b->wr = n;
}

int buf_reserve(struct buf *b, size_t min, struct slice *room_out)
{
    if (buf_room(b) < min)
        buf_compact(b);
    if (buf_room(b) < min)
        return -ENOSPC;
    if (room_out)
        *room_out = slice_make(b->data + b->wr, b->cap - b->wr);
    return 0;
}

int buf_append(struct buf *b, const void *p, size_t len)
{
    int rc = buf_reserve(b, len, NULL);
    if (rc)
        return rc;
    memcpy(b->data + b->wr, p, len);
    b->wr += len;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    if (n > b->wr - b->rd)
        n = b->wr - b->rd;
    b->rd += n;
    if (b->rd == b->wr)
        b->rd = b->wr = 0; /* empty: start over so reserve rarely moves bytes */
}

void byteq_free(struct byteq *q)
{
    free(q->data);
    q->data = NULL;
    q->cap = q->rd = q->wr = 0;
}

int byteq_append(struct byteq *q, const void *p, size_t len, size_t max)
{
    if (len == 0)
        return 0;
    if (q->rd == q->wr)
        q->rd = q->wr = 0;
    if (q->cap - q->wr < len && q->rd) {
        memmove(q->data, q->data + q->rd, q->wr - q->rd);
        q->wr -= q->rd;
        q->rd = 0;
    }
    if (q->cap - q->wr < len) {
        size_t need = q->wr + len;
        if (max && need > max)
            return -ENOSPC;
        size_t ncap = q->cap ? q->cap : 1024;
        while (ncap < need)
            ncap *= 2;
        if (max && ncap > max)
            ncap = max;
        uint8_t *n = realloc(q->data, ncap);
        if (!n)
            return -ENOMEM;
        q->data = n;
        q->cap = ncap;
    }
    memcpy(q->data + q->wr, p, len);
    q->wr += len;
    return 0;
}

int byteq_reserve(struct byteq *q, size_t len, size_t max)
{
    if (q->cap - q->wr >= len)
        return 0;
    size_t have = q->wr - q->rd;
    if (q->rd && q->cap - have >= len) {
        memmove(q->data, q->data + q->rd, have);
        q->wr = have;
        q->rd = 0;
        return 0;
    }
    if (max && have + len > max)
        return -ENOSPC;
    uint8_t *n = malloc(have + len);
    if (!n)
        return -ENOMEM;
    if (have)
        memcpy(n, q->data + q->rd, have);
    free(q->data);
    q->data = n;
    q->cap = have + len;
    q->rd = 0;
    q->wr = have;
    return 0;
}

void byteq_consume(struct byteq *q, size_t n)
{
    if (n > byteq_len(q))
        n = byteq_len(q);
    q->rd += n;
    if (q->rd == q->wr)
        byteq_free(q);
}

uint64_t time_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int64_t time_wall_s(void)
{
    return (int64_t)time(NULL);
}

uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * FNV1A_PRIME;
    return h;
}
