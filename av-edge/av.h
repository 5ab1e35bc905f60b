/* av-edge internals shared by its files: the config struct and key table, the runtime
 * settings derived from it, and the worker (one event loop with its sockets). */
#ifndef AV_AV_H
#define AV_AV_H

#include <uv.h>

#include "av-edge/turn.h"
#include "common/acme_edge.h"
#include "common/cfg.h"
#include "common/daemon.h"
#include "common/metrics.h"
#include "common/stream.h"
#include "common/tls.h"

#define AV_MAX_LISTENERS 16

struct av_user_cfg {
    char *name;
    char *password;
};

struct av_side_cfg {
    struct addr *listen; /* UDP and TCP */
    size_t n_listen;
    struct addr *tcp_listen; /* TCP only */
    size_t n_tcp_listen;
    struct addr *tls_listen;
    size_t n_tls_listen;
    struct cidr *allow_peers; /* external side: exceptions to the loopback/link-local rule */
    size_t n_allow_peers;
};

struct av_config {
    struct daemon_config base;
    struct av_side_cfg external, internal;
    struct {
        struct addr *addresses; /* one IPv4 and optionally one IPv6, port ignored */
        size_t n_addresses;
        uint32_t port_min, port_max;
        uint64_t socket_buffer; /* SO_RCVBUF/SO_SNDBUF of the UDP listeners */
        bool tcp;               /* RFC 6062 TCP relays offered */
    } relay;
    struct cidr *internal_networks;
    size_t n_internal_networks;
    struct {
        char *realm;
        char *secret; /* lab: a static REST secret when there is no Director */
        struct av_user_cfg *users;
        size_t n_users;
        uint64_t nonce_lifetime_ms;
        uint32_t unauth_rate, unauth_burst; /* per source IP, requests per second */
        bool strict_amplification;          /* UDP: no unauthenticated answer above the request */
    } auth;
    struct {
        uint64_t default_lifetime_ms, max_lifetime_ms, permission_lifetime_ms, channel_lifetime_ms;
        uint32_t user_quota, total_quota, max_permissions;
        uint32_t cred_quota, new_peers_per_s, pps_per_alloc;
        uint64_t bandwidth_per_allocation, bandwidth_per_user; /* bytes per second, 0 = none */
    } limits;
    uint32_t workers;
    char *software;
    struct tls_files_config tls;
    struct director_link_config director;
    struct acme_edge_config acme;
};

extern const struct cfg_key av_config_keys[];
int av_config_validate(const void *cfg, struct cfg_err *err);
/* --check's advice: a published auth.secret, a secret ignored because of the Director link. */
size_t av_config_warnings(const void *cfg, char (*out)[256], size_t max);

/* Runtime settings: the TURN view of a config plus the storage it points to. Built from a
 * config, then immutable; replaced whole on reload. */
struct av_runtime {
    struct av_turn_cfg turn;
    struct av_static_user *users;
    size_t n_users;
    struct addr *own;
    char *realm, *software;
    struct cidr *internal_nets, *allow_peers;
    struct av_runtime *older; /* kept until shutdown: workers may still read them */
};
int av_runtime_build(const struct av_config *c, struct av_runtime **out);
void av_runtime_free(struct av_runtime *rt); /* and every older one */

/* Metrics series, registered once. */
struct av_metrics {
    struct metric *allocs, *perms, *chans;
    struct metric *pkts_to_peer, *pkts_to_client, *bytes_to_peer, *bytes_to_client;
    struct metric *dropped_no_perm, *dropped_bandwidth, *unauth_limited, *dropped_send,
        *amplification_dropped;
    struct metric *auth_fail[AV_AUTH_NREASONS];
    struct metric *denied[AV_DENY_NREASONS];
    struct metric *quota_user, *quota_total, *bindings, *allocs_ok, *errors;
    struct metric *quota_cred, *new_peers_limited, *dropped_pkt_rate, *redirected;
    struct metric *tcp_active, *tcp_total, *tcp_failed;
};
void av_metrics_register(struct av_metrics *m, struct metrics *reg);

struct av_worker;

struct av_worker_opts {
    const struct av_config *cfg;
    const struct av_runtime *rt;
    struct av_shared *shared;
    const struct av_metrics *metrics;
    const struct logger *log;
    unsigned index, count; /* this worker's slice of the relay port range */
    bool streams;          /* TCP and TLS listeners (worker 0 only) */
    struct tls_ctx *tls;
};

/* Creates a worker on loop (its sockets, timers); 0 or a negative errno. */
int av_worker_create(uv_loop_t *loop, const struct av_worker_opts *o, struct av_worker **out);
/* Publishes new runtime settings (thread-safe; applied on the worker's loop). */
void av_worker_set_runtime(struct av_worker *w, const struct av_runtime *rt);
void av_worker_set_logger(struct av_worker *w, const struct logger *log);
/* New TLS handshakes use tls (referenced); connections keep theirs. Call on the worker's
 * own loop (worker 0, the one with the stream listeners, runs on the daemon's). */
void av_worker_set_tls(struct av_worker *w, struct tls_ctx *tls);
/* Closes everything on the worker's loop; call from its thread (or via av_worker_stop_async). */
void av_worker_close(struct av_worker *w);
/* Asks a worker on another thread to close; its loop then runs dry. */
void av_worker_stop_async(struct av_worker *w);
/* Allocations held by this worker (approximate when read from another thread). */
int64_t av_worker_allocations(const struct av_worker *w);

#endif
