/* A small hash map keyed by byte strings: conf-edge's tables (connections per address,
 * conferences, streams per server link). */
#ifndef CONF_EDGE_MAP_H
#define CONF_EDGE_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ce_map;

struct ce_map_entry {
    struct ce_map_entry *next;
    uint64_t hash;
    void *val;     /* the user's */
    int64_t count; /* the user's */
    size_t klen;
    uint8_t key[];
};

int ce_map_create(struct ce_map **out);
/* Frees the map and its entries (not what val points to). NULL is a no-op. */
void ce_map_destroy(struct ce_map *m);
struct ce_map_entry *ce_map_find(const struct ce_map *m, const void *key, size_t klen);
/* Finds or adds (val NULL, count 0) the entry for key; NULL only when out of memory. */
struct ce_map_entry *ce_map_get(struct ce_map *m, const void *key, size_t klen);
/* Removes and frees e, which must be in m. */
void ce_map_remove(struct ce_map *m, struct ce_map_entry *e);
size_t ce_map_size(const struct ce_map *m);
/* Calls fn for each entry; fn must not add or remove entries. */
void ce_map_foreach(const struct ce_map *m, void (*fn)(struct ce_map_entry *e, void *arg),
                    void *arg);

#endif
