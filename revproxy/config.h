/* The reverse proxy's configuration: key table, structs and cross-field checks. */
#ifndef RP_CONFIG_H
#define RP_CONFIG_H

#include "common/acme_edge.h"
#include "common/cfg.h"
#include "common/daemon.h"
#include "revproxy/route.h"

struct rp_listener {
    struct addr address;
    bool tls;      /* HTTPS (terminates TLS with the tls: certificates) */
    bool redirect; /* answer everything with a redirect to https:// (port 80), except
                    * ACME HTTP-01 challenges when acme: is enabled */
};

struct rp_cert {
    char *cert, *key;
};

struct rp_tls {
    struct rp_cert *certs; /* the first is the default; others by SNI */
    size_t ncerts;
    char *self_signed_name;
    bool session_tickets;
    uint32_t session_cache;
    uint64_t handshake_timeout_ms;
};

struct rp_upstream {
    char *name;
    struct addr *servers;
    size_t nservers;
    bool tls; /* HTTPS to the servers, verified against ca */
    char *ca;
    char *server_name;  /* name to verify and send as SNI (default: the address) */
    uint32_t keepalive; /* idle connections kept per server */
    uint64_t connect_timeout_ms, read_timeout_ms, idle_timeout_ms;
    uint32_t max_fails;
    uint64_t fail_timeout_ms;
    char *health_path; /* active check: GET this path (NULL = passive only) */
    uint64_t health_interval_ms;
};

enum { RP_LOG_OFF, RP_LOG_COMBINED, RP_LOG_JSON };

struct rp_config {
    struct daemon_config base;
    struct rp_listener *listeners;
    size_t nlisteners;
    struct rp_tls tls;
    struct rp_upstream *upstreams;
    size_t nupstreams;
    struct rp_route *routes;
    size_t nroutes;
    char **server_names; /* names the port-80 redirect may send clients to */
    size_t nserver_names;
    struct cidr *trusted;
    size_t ntrusted;
    struct {
        uint64_t max_head;
        uint64_t header_timeout_ms, body_timeout_ms, keepalive_timeout_ms;
        uint32_t max_connections;
    } client;
    struct {
        char *path; /* file, "stderr", or NULL = off */
        int format;
    } access_log;
    struct director_link_config director;
    struct acme_edge_config acme;
};

extern const struct cfg_key rp_config_keys[];
int rp_config_validate(const void *cfg, struct cfg_err *err);
/* Index of the upstream called name, or -1. */
int rp_config_upstream(const struct rp_config *c, const char *name);

#endif
