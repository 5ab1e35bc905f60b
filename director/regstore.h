/* Registrations that survive a Director restart: an append-only file of binding changes.
 *
 * Each REGISTER that changes a binding appends one line; at start the file is read back and
 * the last line for each user wins (an expired or removed binding is dropped). When the file
 * holds many more lines than live bindings, it is rewritten (temp file, fsync, rename), so
 * it stays about the size of the table. Expiry is wall-clock time, so a binding keeps the
 * lifetime it was granted across the restart. No event loop: plain file I/O, tested alone.
 *
 * Line format (tab-separated, one binding, values never hold tab or newline):
 *   B <expires unix s> <user> <contact URI> <path or "-">                                 */
#ifndef DIRECTOR_REGSTORE_H
#define DIRECTOR_REGSTORE_H

#include <stddef.h>
#include <stdint.h>

struct regstore_entry {
    const char *user, *contact, *path; /* path "" for none */
    int64_t expires_s;                 /* unix time; <= now means removed */
};

struct regstore;

/* Opens (creating) path for appending. 0 or a negative errno. */
int regstore_open(const char *path, struct regstore **out);
void regstore_close(struct regstore *s);

/* Reads path back: cb once per user whose last line is live at now_s, in file order of that
 * last line. Lines that do not parse (a torn last write) are skipped and counted in *bad.
 * Returns how many entries were passed to cb, or a negative errno (-ENOENT: no file yet). */
typedef void (*regstore_cb)(const struct regstore_entry *e, void *arg);
int regstore_load(const char *path, int64_t now_s, regstore_cb cb, void *arg, size_t *bad);

/* Appends one change. -EINVAL if a value holds a tab or newline (nothing written). */
int regstore_append(struct regstore *s, const struct regstore_entry *e);

/* Whether the file has grown past 2x the live count (plus slack) and should be rewritten. */
int regstore_wants_compaction(const struct regstore *s, size_t live);

/* Rewrites the file with exactly the given entries (atomically: temp, fsync, rename). */
int regstore_rewrite(struct regstore *s, const struct regstore_entry *e, size_t n);

#endif
