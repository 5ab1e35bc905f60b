/* Idle heap trimming: see memtrim.h. */
#include "common/memtrim.h"

#include <malloc.h>
#include <stdio.h>
#include <unistd.h>

void memtrim_init(void)
{
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    /* Setting the mmap threshold fixes the trim threshold at 128 KiB: a bulk relay whose
     * 64 KiB buffers come and go at the top of the heap then shrinks and grows it with brk
     * several thousand times a second, each growth paid again in page faults. memtrim_tick
     * gives free memory back once a second anyway. */
    mallopt(M_TRIM_THRESHOLD, 1 << 20);
}

size_t memtrim_free_bytes(void)
{
    struct mallinfo2 mi = mallinfo2(); /* sums every arena */
    return mi.fordblks + mi.fsmblks;
}

size_t memtrim_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

bool memtrim_due(const struct memtrim *t, size_t free, size_t rss, uint64_t now_ms)
{
    if (free < t->min_free)
        return false;
    size_t moved = free > t->last_free ? free - t->last_free : t->last_free - free;
    bool grew = rss > t->last_rss && rss - t->last_rss >= t->min_free;
    return moved >= t->min_free || grew || now_ms - t->last_ms >= t->every_ms;
}

bool memtrim_tick(struct memtrim *t, uint64_t now_ms)
{
    if (!memtrim_due(t, memtrim_free_bytes(), memtrim_rss_bytes(), now_ms))
        return false;
    malloc_trim(0); /* also madvises whole free pages in the middle of each arena away */
    t->last_free = memtrim_free_bytes();
    t->last_rss = memtrim_rss_bytes();
    t->last_ms = now_ms;
    return true;
}
