/* Small value types and helpers shared by every module: slices, owned buffers, clocks. */
#ifndef COMMON_UTIL_H
#define COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define UNUSED(x) ((void)(x))

/* A borrowed view of bytes; valid as long as whatever it points into. */
struct slice {
    const uint8_t *p;
    size_t len;
};

#define SLICE_NULL ((struct slice){NULL, 0})
static inline struct slice slice_make(const void *p, size_t len)
{
    return (struct slice){(const uint8_t *)p, len};
}
static inline struct slice slice_str(const char *s)
{
    return slice_make(s, s ? strlen(s) : 0);
}
bool slice_eq(struct slice a, struct slice b);
bool slice_eq_str(struct slice a, const char *s);
bool slice_caseeq_str(struct slice a, const char *s);
/* Copies into a NUL-terminated string of at most cap-1 bytes; returns -ENOSPC if cut. */
int slice_to_cstr(struct slice s, char *out, size_t cap);

/* An owned byte buffer: data[rd..wr) is readable, data[wr..cap) is free. cap is fixed
 * at init (from config): writers that do not fit get -ENOSPC, never a silent grow. */
struct buf {
    uint8_t *data;
    size_t cap, rd, wr;
};

int buf_init(struct buf *b, size_t cap);
void buf_fini(struct buf *b);
static inline size_t buf_len(const struct buf *b)
{
    return b->wr - b->rd;
}
static inline size_t buf_room(const struct buf *b)
{
    return b->cap - b->wr;
}
static inline struct slice buf_slice(const struct buf *b)
{
    return slice_make(b->data + b->rd, b->wr - b->rd);
}
/* Makes at least min bytes free at the tail (compacting if needed); -ENOSPC if cap is too small. */
int buf_reserve(struct buf *b, size_t min, struct slice *room_out);
int buf_append(struct buf *b, const void *p, size_t len);
void buf_consume(struct buf *b, size_t n);
void buf_compact(struct buf *b);

/* A growable byte queue whose memory is freed whenever it empties, so an idle connection
 * holds none (unlike struct buf, whose capacity is fixed and kept). data[rd..wr) is readable. */
struct byteq {
    uint8_t *data;
    size_t cap, rd, wr;
};

static inline size_t byteq_len(const struct byteq *q)
{
    return q->wr - q->rd;
}
void byteq_free(struct byteq *q);
/* Appends len bytes, growing by doubling; -ENOSPC if that would pass max (0: no limit). */
int byteq_append(struct byteq *q, const void *p, size_t len, size_t max);
/* Makes room for len more bytes in one allocation of just the size needed (no doubling),
 * for a caller that knows how much a batch will take: no realloc chain, and no allocation
 * twice the batch (which glibc serves by mmap from 128 KiB, page faults and all). -ENOSPC
 * past max (0: no limit), -ENOMEM. */
int byteq_reserve(struct byteq *q, size_t len, size_t max);
/* Drops up to n bytes from the front; frees the memory when nothing is left. */
void byteq_consume(struct byteq *q, size_t n);

/* Monotonic milliseconds and wall-clock seconds. */
/* FNV-1a, 64-bit: h = fnv1a(FNV1A_INIT, p, n), or continue from an earlier h. Cheap and good
 * enough for spreading keys over tables (not against chosen collisions: salt the start). */
#define FNV1A_INIT 0xcbf29ce484222325ULL
#define FNV1A_PRIME 0x100000001b3ULL
uint64_t fnv1a(uint64_t h, const void *p, size_t n);

uint64_t time_mono_ms(void);
int64_t time_wall_s(void);

/* Intrusive circular doubly linked list: a head whose ends point at itself when empty,
 * and a link inside each element (find the element with container_of). A link not on a
 * list has next == NULL, so dl_del is safe to repeat. */
struct dlist {
    struct dlist *prev, *next;
};

static inline void dl_init(struct dlist *l)
{
    l->prev = l->next = l;
}

/* Inserts e right after at: dl_add(head, e) puts it first, dl_add(head->prev, e) last. */
static inline void dl_add(struct dlist *at, struct dlist *e)
{
    e->next = at->next;
    e->prev = at;
    at->next->prev = e;
    at->next = e;
}

static inline void dl_del(struct dlist *e)
{
    if (e->next) {
        e->prev->next = e->next;
        e->next->prev = e->prev;
    }
    e->next = e->prev = NULL;
}

static inline bool dl_empty(const struct dlist *l)
{
    return l->next == l;
}

#endif
