/* Giving freed heap back to the kernel. glibc keeps what a burst freed (10,000 TLS handshakes
 * leave ~100 MB of free chunks in the heap) until something at the top of the heap is freed,
 * which with long-lived connections may be never. The daemon calls memtrim_tick() once a
 * second; it trims only when enough is free and the heap has moved since the last trim. */
#ifndef COMMON_MEMTRIM_H
#define COMMON_MEMTRIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct memtrim {
    size_t min_free;   /* free bytes worth a walk over the heap */
    size_t last_free;  /* free bytes just after the last trim */
    size_t last_rss;   /* resident bytes just after the last trim */
    uint64_t last_ms;  /* when it was */
    uint64_t every_ms; /* a trim at most this often when the free total has not moved */
};

/* Once, at start: allocations of 1 MiB and more always get pages of their own (mmap), given
 * back the moment they are freed. glibc otherwise raises that threshold after each large
 * free, and a table rebuilt now and then (access-edge's transaction table is 21 MB) then
 * comes from the heap and stays there. */
/* The heap's top is given back on free only past 1 MiB (memtrim_tick does the rest). */
void memtrim_init(void);

/* Free bytes malloc holds in all arenas (av-edge's workers have arenas of their own). */
size_t memtrim_free_bytes(void);

/* Resident bytes of this process (/proc/self/statm), 0 if unknown. */
size_t memtrim_rss_bytes(void);

/* Whether a trim is due: free is what malloc holds now, rss the resident size. Pure, for
 * tests. Trimmed pages stay free chunks to malloc, so the free total alone would ask for a
 * trim every tick: trim when it moved by min_free since the last trim, or when the process
 * is min_free more resident than just after it (a second burst took the trimmed pages back
 * into use and freed them again: the free total ends where the last trim left it), or, if
 * neither, every every_ms. */
bool memtrim_due(const struct memtrim *t, size_t free, size_t rss, uint64_t now_ms);

/* Trims (malloc_trim) when due; returns true if it did. */
bool memtrim_tick(struct memtrim *t, uint64_t now_ms);

#endif
