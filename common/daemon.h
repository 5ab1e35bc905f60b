/* Daemon lifecycle shared by every binary: command line (-c, --check, --version, --help),
 * config loading, SIGHUP reload (validate first, keep the old config on error), SIGTERM
 * drain (stop accepting, finish in-flight work, exit by a deadline). */
#ifndef COMMON_DAEMON_H
#define COMMON_DAEMON_H

#include "common/cfg.h"
#include "common/log.h"
#include "common/metrics.h"
#include <uv.h>

struct daemon;

/* What a role supplies. The role's config struct must begin with struct daemon_config. */
struct daemon_ops {
    const char *name;           /* "av-edge" */
    const char *summary;        /* one line for --help */
    const char *default_config; /* "deploy/config/av-edge.yaml" */
    const struct cfg_key *keys; /* must include DAEMON_CONFIG_KEYS */
    size_t config_size;
    /* Extra semantic checks after the key table passed (cross-field rules). 0 or -EINVAL with err.
     */
    int (*validate)(const void *cfg, struct cfg_err *err);
    /* Optional: advice on a valid config (a published lab secret, a key that is ignored),
     * printed by --check and logged at start. Fills up to max lines; returns how many. */
    size_t (*warnings)(const void *cfg, char (*out)[256], size_t max);
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

/* Keys every daemon shares; embed first in the role's struct as `struct daemon_config base;`.
 * YAML:   instance_id: av1
 *         log: { level: info, format: text }
 *         admin: { listen: 127.0.0.23:8080 }
 *         drain_timeout: 30s                                                              */
struct daemon_config {
    char *instance_id;
    struct {
        int level;  /* enum log_level */
        int format; /* enum log_format */
    } log;
    struct {
        struct addr listen;
    } admin;
    uint64_t drain_timeout_ms;
};
extern const struct cfg_key daemon_config_keys[];
/* First entry of the role's key table: flattens the shared keys into the top level. */
#define DAEMON_CONFIG_KEYS                                                                         \
    {                                                                                              \
        .name = "", .type = CFG_SECTION, .offset = 0, .sub = daemon_config_keys                    \
    }

/* Certificate files of one TLS endpoint. YAML: { cert: x.crt, key: x.key, ca: ca.crt }.
 * With no cert on a server, a self-signed one is generated (labs). */
struct tls_files_config {
    char *cert, *key, *ca;
};
extern const struct cfg_key tls_files_keys[];

/* The link every edge keeps to the Director. YAML section `director:`
 *   { enabled: true, address: 127.0.0.10:7400, server_name: director,
 *     tls: { cert: build/certs/av-edge.crt, key: ..., ca: build/certs/ca.crt }, report_interval: 1s
 * } */
struct director_link_config {
    bool enabled;
    struct addr address;
    char *server_name;
    struct tls_files_config tls;
    uint64_t report_interval_ms;
};
extern const struct cfg_key director_link_keys[];

/* Runs the whole program: parses argv, loads config, starts, runs the loop, exits. */
int daemon_main(int argc, char **argv, const struct daemon_ops *ops);

/* "0.1.0+g<commit>": for Hello messages and banners. */
const char *daemon_version(void);
uv_loop_t *daemon_loop(struct daemon *d);
const struct logger *daemon_logger(struct daemon *d);
struct metrics *daemon_metrics(struct daemon *d);
struct admin *daemon_admin(struct daemon *d);
const char *daemon_config_path(struct daemon *d);
/* Starts draining as SIGTERM does (ops->drain, exit on daemon_drained or at the deadline:
 * drain_timeout, or deadline_ms when shorter and not 0); a no-op when already draining.
 * For roles told to drain over their control channel. */
void daemon_drain(struct daemon *d, uint64_t deadline_ms);
/* The role calls this when draining finished early. */
void daemon_drained(struct daemon *d);
bool daemon_draining(struct daemon *d);

#endif
