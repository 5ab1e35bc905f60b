/* Daemon lifecycle shared by every binary: command line (-c, --check, --version, --help),
 * config loading, SIGHUP reload (validate first, keep the old config on error), SIGTERM
 * drain (stop accepting, finish in-flight work, exit by a deadline). */
#ifndef COMMON_DAEMON_H
#define COMMON_DAEMON_H

#include <uv.h>
#include "common/cfg.h"
#include "common/log.h"
#include "common/metrics.h"

struct daemon;

/* What a role supplies. The role's config struct must begin with struct daemon_config. */
struct daemon_ops {
    const char *name;          /* "av-edge" */
    const char *summary;       /* one line for --help */
    const char *default_config;/* "deploy/config/av-edge.yaml" */
    const struct cfg_key *keys;/* must include DAEMON_CONFIG_KEYS */
    size_t config_size;
    /* Extra semantic checks after the key table passed (cross-field rules). 0 or -EINVAL with err. */
    int (*validate)(const void *cfg, struct cfg_err *err);
    /* Starts the role on d's loop with cfg. Returns 0 or a negative errno. */
    int (*start)(struct daemon *d, const void *cfg, void **state);
    /* A new, validated config: the role takes it (returning 0) or refuses it (negative
     * errno; the daemon keeps the old one). The daemon frees the old config afterwards. */
    int (*reload)(struct daemon *d, void *state, const void *new_cfg);
    /* Stop taking new work; call daemon_drained(d) when nothing is left (or let the
     * deadline expire). */
    void (*drain)(struct daemon *d, void *state);
    /* Close everything; after this the loop must run dry. */
    void (*stop)(struct daemon *d, void *state);
};

/* Keys every daemon shares; embed first in the role's struct as `struct daemon_config base;`. */
struct daemon_config {
    char *instance_id;
    int log_level;  /* enum log_level */
    int log_format; /* enum log_format */
    struct addr admin_listen;
    uint64_t drain_timeout_ms;
};
extern const struct cfg_key daemon_config_keys[];
/* Use in the role's key table: { "daemon-keys", ... } expands the shared ones. */
#define DAEMON_CONFIG_KEYS                                                                         \
    {.name = "", .type = CFG_SECTION, .offset = 0, .sub = daemon_config_keys}

/* Runs the whole program: parses argv, loads config, starts, runs the loop, exits. */
int daemon_main(int argc, char **argv, const struct daemon_ops *ops);

uv_loop_t *daemon_loop(struct daemon *d);
const struct logger *daemon_logger(struct daemon *d);
struct metrics *daemon_metrics(struct daemon *d);
struct admin *daemon_admin(struct daemon *d);
const char *daemon_config_path(struct daemon *d);
/* The role calls this when draining finished early. */
void daemon_drained(struct daemon *d);
bool daemon_draining(struct daemon *d);

#endif
