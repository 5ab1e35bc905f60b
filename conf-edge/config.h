/* conf-edge's configuration: one read-only struct loaded from YAML through a key table and
 * swapped whole on reload. */
#ifndef CONF_EDGE_CONFIG_H
#define CONF_EDGE_CONFIG_H

#include "common/acme_edge.h"
#include "common/cfg.h"
#include "common/daemon.h"
#include <stdint.h>

struct ce_config {
    struct daemon_config base;
    struct {
        struct addr listen;
        struct tls_files_config tls; /* no cert: a self-signed one (labs) */
        uint64_t handshake_timeout_ms;
    } external;
    struct {
        struct addr listen;
        struct tls_files_config tls; /* cert, key and the CA that signs conferencing servers */
        char **allowed_names;        /* certificate names accepted as conferencing servers */
        size_t n_allowed_names;
        uint64_t handshake_timeout_ms;
        uint64_t ping_interval_ms;
    } internal;
    uint64_t preamble_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t server_wait_ms;
    struct {
        uint32_t per_address;
        uint32_t per_conference;
        uint32_t clients;
        uint32_t per_key;   /* live sessions one conference key (jti) may hold */
        int per_key_policy; /* enum ce_key_policy: what a connection past per_key gets */
    } limits;
    struct {
        uint64_t client_write; /* bytes queued towards one client before it counts as slow */
        uint64_t window;       /* per-stream flow-control window, each direction */
        uint64_t server_write; /* bytes queued towards one conferencing server */
    } buffers;
    struct {
        char *id;
        char *secret;
    } conference_key; /* labs: a signing secret without the Director */
    uint32_t revocations_max;
    struct director_link_config director;
    struct acme_edge_config acme;
};

/* limits.per_key_policy. REPLACE: the new connection wins and the key's oldest session
 * ends (a rejoin after a drop works even while the old connection is half-dead). REFUSE:
 * the new connection gets "429 key-in-use". */
enum ce_key_policy { CE_KEY_REPLACE = 0, CE_KEY_REFUSE = 1 };

extern const struct cfg_key ce_config_keys[];
/* Cross-field rules (cert needs key, internal side needs a CA). */
int ce_config_validate(const void *cfg, struct cfg_err *err);

#endif
