/* Config: YAML (libyaml) into a typed, read-only struct through a key table.
 *
 * Each role declares `static const struct cfg_key my_keys[]` describing its struct:
 * name, type, offsetof, default and bounds (nginx ngx_command_t style). cfg_load()
 * parses the file, applies defaults, checks every value, and rejects unknown keys;
 * every error carries "file:line:col: what is wrong". The result is one heap block
 * (plus owned strings) freed with cfg_free(); code only ever sees it as const. */
#ifndef COMMON_CFG_H
#define COMMON_CFG_H

#include "common/addr.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cfg_type {
    CFG_STR,      /* char *; NULL when absent and no default */
    CFG_INT,      /* int64_t within [min, max] */
    CFG_UINT,     /* uint32_t within [min, max] */
    CFG_PORT,     /* uint16_t, 1..65535 (0 allowed if min == 0) */
    CFG_BOOL,     /* bool: true/false/yes/no/on/off */
    CFG_DURATION, /* uint64_t milliseconds: "30s", "500ms", "5m", "1h", or a bare number of seconds
                   */
    CFG_SIZE,     /* uint64_t bytes: "64k", "16M", "1G" or a number */
    CFG_ADDR,     /* struct addr: "ip:port" or "[ip6]:port"; default_port from min */
    CFG_CIDR,     /* struct cidr */
    CFG_FILE,     /* char *: a path that must exist and be readable */
    CFG_ENUM,     /* int: index into choices[] */
    CFG_SECTION,  /* nested mapping into an embedded struct described by sub */
    CFG_LIST,     /* sequence of mappings: elements of elem_size described by sub;
                   * stores a pointer at offset and a size_t count at count_offset */
    CFG_STRLIST,  /* sequence of strings: char ** at offset, size_t count at count_offset */
    CFG_ADDRLIST, /* sequence of addresses: struct addr * at offset, count at count_offset */
    CFG_CIDRLIST, /* sequence of prefixes: struct cidr * at offset, count at count_offset */
};

struct cfg_key {
    const char *name;
    enum cfg_type type;
    size_t offset;
    const char *def;  /* default as YAML scalar text; NULL = zero/absent */
    int64_t min, max; /* bounds for numbers; for CFG_ADDR, min is the default port */
    bool required;
    const struct cfg_key *sub;  /* CFG_SECTION / CFG_LIST: the element's keys, NULL-terminated */
    size_t elem_size;           /* CFG_LIST */
    size_t count_offset;        /* CFG_LIST / *LIST */
    const char *const *choices; /* CFG_ENUM: NULL-terminated */
    const char *help;           /* one line, for --help and the README */
    /* Only a restart applies this key (a listening address, a worker count): a reload
     * that changes it is refused (cfg_restart_changed). For a section or list, any
     * change within it. */
    bool restart;
};

#define CFG_END                                                                                    \
    {                                                                                              \
        0                                                                                          \
    }

/* Error text: "file:line:col: message" (line/col 1-based), or "file: message". */
struct cfg_err {
    char msg[512];
};

/* Loads path into a new zeroed struct of `size` bytes described by keys.
 * On success *out owns it (free with cfg_free). On failure *out is untouched,
 * err says why, and -EINVAL (bad content) or -ENOENT/-EACCES (file) is returned. */
int cfg_load(const char *path, const struct cfg_key *keys, size_t size, void **out,
             struct cfg_err *err);
/* Same from a string (tests, fuzzing); name is used in error messages. */
int cfg_load_string(const char *name, const char *yaml, size_t len, const struct cfg_key *keys,
                    size_t size, void **out, struct cfg_err *err);
/* A loaded config is one generation, reference counted: cfg_ref takes another reference
 * (a role keeping the generation the daemon validated for as long as something uses it),
 * cfg_free drops one and frees on the last. */
void cfg_free(void *cfg);
const void *cfg_ref(const void *cfg);

/* Reload check: 0 if every key marked .restart has the same value in old_cfg and new_cfg
 * (both loaded with keys); otherwise -EBUSY and err names the first changed key at its
 * file:line in new_cfg ("x.yaml:4:11: listen: can only change with a restart"). */
int cfg_restart_changed(const void *old_cfg, const void *new_cfg, const struct cfg_key *keys,
                        struct cfg_err *err);

/* Calls fn for every certificate/key pair in cfg: each section or list element whose keys
 * include the keys "cert" and "key" (CFG_FILE, or CFG_STR for files written at start) and
 * whose cert is set (key may be NULL). A section with a CFG_BOOL "enabled" that is false
 * is skipped with everything in it. */
void cfg_each_cert_pair(const void *cfg, const struct cfg_key *keys,
                        void (*fn)(const char *cert, const char *key, void *arg), void *arg);

/* Prints the key table as "name (type, default): help" lines, indented for sections. */
void cfg_print_keys(const struct cfg_key *keys, int indent, void *file /* FILE* */);

/* Reports a semantic error found after loading (e.g. "tls.cert needs tls.key") at the
 * position of key path `keypath` ("tls.key", "routes[2].upstream") within cfg. */
void cfg_errorf(const void *cfg, struct cfg_err *err, const char *keypath, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
