/* The access edge daemon: configuration and the SIP server that carries traffic across
 * the perimeter (ae_server.c and its parts, see ae_int.h). */
#ifndef AE_AE_H
#define AE_AE_H

#include <uv.h>

#include "common/acme_edge.h"
#include "common/admin.h"
#include "common/cfg.h"
#include "common/daemon.h"

/* One side's listeners. Empty lists disable a transport. */
struct ae_side_config {
    struct addr *udp;
    size_t nudp;
    struct addr *tcp;
    size_t ntcp;
    struct addr *tls; /* server-authenticated TLS (remote users: 443, 5061) */
    size_t ntls;
    struct addr *mtls; /* mutual TLS (federation outside; the Director inside) */
    size_t nmtls;
    struct addr *ws; /* SIP over WebSocket, plain (labs, or behind a TLS terminator) */
    size_t nws;
    struct addr *wss; /* SIP over secure WebSocket (RFC 7118), browser clients */
    size_t nwss;
    struct tls_files_config certs;
};

enum ae_transport { AE_TP_UDP = 0, AE_TP_TCP = 1, AE_TP_TLS = 2 };
/* What a request from outside with foreign Route entries gets (access-edge/sip_route.h). */
enum ae_route_policy { AE_ROUTE_STRIP = 0, AE_ROUTE_REJECT = 1 };

struct ae_next_hop_config {
    struct addr address;
    int transport; /* enum ae_transport */
    char *server_name;
    struct addr *backups; /* other Directors, tried in order when the first is down */
    size_t nbackups;
    uint64_t health_interval_ms; /* OPTIONS to each Director this often */
};

struct ae_limits_config {
    uint64_t max_client_message;
    uint64_t max_server_message;
    uint32_t max_headers;
    uint32_t max_line;
    uint32_t max_connections;
    uint32_t max_connections_per_address;
    uint64_t idle_timeout_ms;
    uint64_t handshake_timeout_ms;
    uint64_t message_timeout_ms; /* a stream message begun must be complete this soon */
    uint32_t rate;               /* requests per second per external address */
    uint32_t burst;
    uint32_t reject_rate; /* 503s per second to one over-limit UDP source; the rest dropped */
    uint32_t max_transactions;
    uint64_t overload_lag_ms; /* loop lag that makes new dialogs get 503 (0 = never) */
    struct cidr *exempt;      /* external addresses spared the per-address limits */
    size_t nexempt;
};

struct ae_static_route {
    char *domain;
    struct addr address; /* the partner's edge, mutual TLS */
};

struct ae_federation_config {
    struct ae_static_route *routes; /* partners reached without DNS */
    size_t nroutes;
    char **allow;
    size_t nallow;
    char **block;
    size_t nblock;
    bool discovery;
    uint32_t discovered_rate; /* messages/s per discovered partner */
    uint32_t suspicious_rate; /* when its failure ratio is suspicious */
    uint32_t max_contacts;    /* distinct users before the watch list */
    char *dns_servers;        /* "127.0.0.1:5353" for c-ares, or NULL: system resolver */
};

struct ae_config {
    struct daemon_config base;
    struct director_link_config director;
    char **domains;
    size_t ndomains;
    char *fqdn;
    bool topology_hiding; /* inside Vias leave sealed in ours (restored on responses) */
    int route_policy;     /* enum ae_route_policy: foreign Route entries from outside */
    struct ae_side_config external;
    struct ae_side_config internal;
    struct ae_next_hop_config next_hop;
    struct ae_limits_config limits;
    struct ae_federation_config federation;
    struct acme_edge_config acme;
};

extern const struct cfg_key ae_config_keys[];
int ae_config_validate(const void *cfg, struct cfg_err *err);

struct ae;
/* Starts every listener of cfg on loop; acme (the ACME challenges the external TLS
 * listeners answer, or NULL) must outlive ae. */
int ae_start(uv_loop_t *loop, const struct ae_config *cfg, const struct logger *log,
             struct metrics *m, struct admin *admin, struct acme_challenges *acme, struct ae **out);
/* Takes a new config for policy, limits and the next hop (listeners stay as they are). */
int ae_reload(struct ae *ae, const struct ae_config *cfg);
/* Stops accepting new connections and INVITEs; calls done(arg) once no INVITE transaction
 * is left (checked every second), or at once if none is. */
void ae_drain(struct ae *ae, void (*done)(void *arg), void *arg);
/* Open TCP/TLS connections and INVITE transactions in flight (for load reports). */
size_t ae_connection_count(const struct ae *ae);
size_t ae_transaction_count(const struct ae *ae);
/* Closes everything; frees once the handles are closed. */
void ae_stop(struct ae *ae);

#endif
