// fuzz-sources: common/cfg.c common/addr.c common/util.c common/daemon.c common/admin.c common/json.c common/metrics.c common/log.c common/memtrim.c common/certwatch.c common/tls.c common/tls_shared.c common/tls_sniff.c common/certname.c common/crypto.c common/acme_challenges.c common/ctl_codec.c build/gen/proto/control.pb-c.c -lyaml -lprotobuf-c
/* Fuzzes the YAML config loader with a key table that uses every value type. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/cfg.h"
#include "common/daemon.h"

struct item {
    char *name;
    struct addr to;
};

struct fz_cfg {
    struct daemon_config base;
    char *s;
    int64_t i;
    uint32_t u;
    uint16_t port;
    bool b;
    uint64_t dur, size;
    struct cidr net;
    struct item *items;
    size_t nitems;
    char **strs;
    size_t nstrs;
    struct addr *addrs;
    size_t naddrs;
    struct tls_files_config tls;
};

static const struct cfg_key item_keys[] = {
    {"name", CFG_STR, offsetof(struct item, name), NULL, .required = true},
    {"to", CFG_ADDR, offsetof(struct item, to), "127.0.0.1:1"},
    CFG_END,
};

static const struct cfg_key keys[] = {
    DAEMON_CONFIG_KEYS,
    {"s", CFG_STR, offsetof(struct fz_cfg, s), "x"},
    {"i", CFG_INT, offsetof(struct fz_cfg, i), "0", .min = -5, .max = 5},
    {"u", CFG_UINT, offsetof(struct fz_cfg, u), "1"},
    {"port", CFG_PORT, offsetof(struct fz_cfg, port), "1"},
    {"b", CFG_BOOL, offsetof(struct fz_cfg, b), "no"},
    {"dur", CFG_DURATION, offsetof(struct fz_cfg, dur), "1s"},
    {"size", CFG_SIZE, offsetof(struct fz_cfg, size), "1k"},
    {"net", CFG_CIDR, offsetof(struct fz_cfg, net), "10.0.0.0/8"},
    {"items", CFG_LIST, offsetof(struct fz_cfg, items), .sub = item_keys,
     .elem_size = sizeof(struct item), .count_offset = offsetof(struct fz_cfg, nitems)},
    {"strs", CFG_STRLIST, offsetof(struct fz_cfg, strs), "a,b",
     .count_offset = offsetof(struct fz_cfg, nstrs)},
    {"addrs", CFG_ADDRLIST, offsetof(struct fz_cfg, addrs), NULL, .min = 80,
     .count_offset = offsetof(struct fz_cfg, naddrs)},
    {"tls", CFG_SECTION, offsetof(struct fz_cfg, tls), .sub = tls_files_keys},
    CFG_END,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size + 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';
    void *cfg = NULL;
    struct cfg_err err;
    if (cfg_load_string("fuzz.yaml", copy, size, keys, sizeof(struct fz_cfg), &cfg, &err) == 0) {
        cfg_errorf(cfg, &err, "items[0].name", "probe");
        cfg_free(cfg);
    }
    free(copy);
    return 0;
}
