/* Key table and cross-field checks for revproxy.yaml. */
#include "revproxy/config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define L(f) offsetof(struct rp_listener, f)
static const struct cfg_key listener_keys[] = {
    {"address", CFG_ADDR, L(address), NULL, .min = 443, .required = true,
     .help = "ip:port to listen on (external side)"},
    {"tls", CFG_BOOL, L(tls), "false", .help = "HTTPS with the tls: certificates"},
    {"redirect", CFG_BOOL, L(redirect), "false",
     .help = "answer every request with 301 to https:// (port 80); with acme enabled, "
             "GET /.well-known/acme-challenge/<token> gets the key authorization (or 404)"},
    CFG_END,
};
#undef L

static const struct cfg_key cert_keys[] = {
    {"cert", CFG_FILE, offsetof(struct rp_cert, cert), NULL, .required = true,
     .help = "PEM certificate chain"},
    {"key", CFG_FILE, offsetof(struct rp_cert, key), NULL, .required = true,
     .help = "PEM private key"},
    CFG_END,
};

#define T(f) offsetof(struct rp_tls, f)
static const struct cfg_key tls_keys[] = {
    {"certs", CFG_LIST, T(certs), .sub = cert_keys, .elem_size = sizeof(struct rp_cert),
     .count_offset = T(ncerts), .help = "certificates; the first is the default, others by SNI"},
    {"self_signed_name", CFG_STR, T(self_signed_name), "revproxy",
     .help = "with no certs: generate a self-signed one for this name (labs)"},
    {"session_tickets", CFG_BOOL, T(session_tickets), "true", .help = "issue session tickets"},
    {"session_cache", CFG_UINT, T(session_cache), "10000", .min = 0, .max = 10000000,
     .help = "server-side session cache entries (0 = off)"},
    {"handshake_timeout", CFG_DURATION, T(handshake_timeout_ms), "10s", .min = 100, .max = 600000,
     .help = "TLS handshake deadline"},
    CFG_END,
};
#undef T

#define U(f) offsetof(struct rp_upstream, f)
static const struct cfg_key upstream_keys[] = {
    {"name", CFG_STR, U(name), NULL, .required = true, .help = "pool name used by routes"},
    {"servers", CFG_ADDRLIST, U(servers), NULL, .min = 443, .required = true,
     .count_offset = U(nservers), .help = "ip:port of each server (round robin)"},
    {"tls", CFG_BOOL, U(tls), "true", .help = "HTTPS to the servers (verified against ca)"},
    {"ca", CFG_FILE, U(ca), NULL, .help = "CA bundle that signed the servers' certificates"},
    {"server_name", CFG_STR, U(server_name), NULL,
     .help = "name verified on the servers' certificates and sent as SNI"},
    {"keepalive", CFG_UINT, U(keepalive), "32", .min = 0, .max = 100000,
     .help = "idle connections kept per server"},
    {"connect_timeout", CFG_DURATION, U(connect_timeout_ms), "5s", .min = 10, .max = 600000,
     .help = "connect (and TLS handshake) deadline: 504 after it"},
    {"read_timeout", CFG_DURATION, U(read_timeout_ms), "60s", .min = 10, .max = 86400000,
     .help = "longest silence from a server during a request: 504 after it"},
    {"idle_timeout", CFG_DURATION, U(idle_timeout_ms), "60s", .min = 10, .max = 86400000,
     .help = "idle kept-alive connections are closed after this"},
    {"max_fails", CFG_UINT, U(max_fails), "1", .min = 0, .max = 1000,
     .help = "failed connects before a server is skipped (0 = never)"},
    {"fail_timeout", CFG_DURATION, U(fail_timeout_ms), "10s", .min = 0, .max = 3600000,
     .help = "how long a failed server is skipped (with every server skipped, the first to come "
             "back is tried)"},
    {"health_path", CFG_STR, U(health_path), NULL,
     .help = "active check: GET this path; 2xx-4xx is healthy (unset = passive only)"},
    {"health_interval", CFG_DURATION, U(health_interval_ms), "5s", .min = 100, .max = 3600000,
     .help = "active check period"},
    CFG_END,
};
#undef U

#define R(f) offsetof(struct rp_route, f)
static const struct cfg_key route_keys[] = {
    {"host", CFG_STR, R(host), NULL,
     .help = "client Host to match (unset or * = any; *.example.com = subdomains)"},
    {"prefix", CFG_STR, R(prefix), NULL, .required = true,
     .help = "path prefix (segment boundary, case-insensitive)"},
    {"rewrite", CFG_STR, R(rewrite), NULL, .help = "replaces the prefix upstream (/ext -> /int)"},
    {"upstream", CFG_STR, R(upstream), NULL, .required = true, .help = "upstream pool name"},
    {"host_header", CFG_STR, R(host_header), NULL,
     .help = "Host sent upstream (unset = the client's)"},
    {"max_body", CFG_SIZE, R(max_body), "100M", .min = 0, .max = INT64_MAX,
     .help = "largest request body: 413 beyond"},
    {"affinity", CFG_BOOL, R(affinity), "false",
     .help = "one client connection <-> one upstream connection (NTLM/Negotiate)"},
    {"websocket", CFG_BOOL, R(websocket), "false", .help = "pass WebSocket upgrades through"},
    {"read_timeout", CFG_DURATION, R(read_timeout_ms), "0", .min = 0, .max = 86400000,
     .help = "overrides the upstream's read_timeout (long polls)"},
    {"rate", CFG_UINT, R(rate), "0", .min = 0, .max = 1000000,
     .help = "requests per second per client address on this route (429 with Retry-After "
             "above; for sign-in and lookup paths); 0 = no limit"},
    {"burst", CFG_UINT, R(burst), "0", .min = 0, .max = 1000000,
     .help = "requests a client may make at once before rate applies (0 = rate)"},
    CFG_END,
};
#undef R

static const char *const log_formats[] = {"off", "combined", "json", NULL};

#define C(f) offsetof(struct rp_config, f)
const struct cfg_key rp_config_keys[] = {
    DAEMON_CONFIG_KEYS,
    {"listeners", CFG_LIST, C(listeners), .sub = listener_keys,
     .elem_size = sizeof(struct rp_listener), .count_offset = C(nlisteners), .required = true,
     .restart = true, .help = "external listeners"},
    {"tls", CFG_SECTION, C(tls), .sub = tls_keys, .help = "server certificates"},
    {"upstreams", CFG_LIST, C(upstreams), .sub = upstream_keys,
     .elem_size = sizeof(struct rp_upstream), .count_offset = C(nupstreams), .required = true,
     .help = "internal server pools"},
    {"routes", CFG_LIST, C(routes), .sub = route_keys, .elem_size = sizeof(struct rp_route),
     .count_offset = C(nroutes), .required = true,
     .help = "published host + path prefixes; anything else gets 404"},
    {"server_names", CFG_STRLIST, C(server_names), NULL, .count_offset = C(nserver_names),
     .help = "public names (exact or *.domain) the port-80 redirect sends clients to; a Host "
             "that is none of them nor a route's host gets 400 (unset: route hosts only)"},
    {"trusted_proxies", CFG_CIDRLIST, C(trusted), NULL, .count_offset = C(ntrusted),
     .help = "peers whose forwarding headers (X-Forwarded-*, Forwarded, X-Real-IP, ...) are "
             "kept and extended; from anyone else they are dropped"},
    {"max_head", CFG_SIZE, C(client.max_head), "16k", .min = 1024, .max = 1048576,
     .help = "request line + headers: 431 beyond"},
    {"header_timeout", CFG_DURATION, C(client.header_timeout_ms), "10s", .min = 10, .max = 3600000,
     .help = "time to send a whole request head: 408 after it"},
    {"body_timeout", CFG_DURATION, C(client.body_timeout_ms), "30s", .min = 10, .max = 3600000,
     .help = "longest silence inside a request body: 408 after it"},
    {"keepalive_timeout", CFG_DURATION, C(client.keepalive_timeout_ms), "60s", .min = 10,
     .max = 3600000, .help = "idle client connections are closed after this"},
    {"max_connections", CFG_UINT, C(client.max_connections), "10000", .min = 1, .max = 1000000,
     .help = "client connections at once; more are closed at accept"},
    {"access_log", CFG_STR, C(access_log.path), NULL,
     .help = "access log file, or stderr (unset = off)"},
    {"access_log_format", CFG_ENUM, C(access_log.format), "combined", .choices = log_formats,
     .help = "off, combined or json"},
    {"director", CFG_SECTION, C(director), .sub = director_link_keys,
     .help = "control channel to the Director (Hello, load reports, Drain)"},
    ACME_EDGE_CONFIG_KEY(struct rp_config, acme),
    CFG_END,
};
#undef C

int rp_config_upstream(const struct rp_config *c, const char *name)
{
    for (size_t i = 0; i < c->nupstreams; i++)
        if (!strcmp(c->upstreams[i].name, name))
            return (int)i;
    return -1;
}

int rp_config_validate(const void *cfgp, struct cfg_err *err)
{
    const struct rp_config *c = cfgp;
    char kp[64];
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct rp_route *r = &c->routes[i];
        if (rp_config_upstream(c, r->upstream) < 0) {
            snprintf(kp, sizeof kp, "routes[%zu].upstream", i);
            cfg_errorf(c, err, kp, "no upstream named '%s'", r->upstream);
            return -EINVAL;
        }
        if (r->prefix[0] != '/' || (r->rewrite && r->rewrite[0] != '/')) {
            snprintf(kp, sizeof kp, "routes[%zu].prefix", i);
            cfg_errorf(c, err, kp, "prefix and rewrite must start with '/'");
            return -EINVAL;
        }
    }
    for (size_t i = 0; i < c->nupstreams; i++) {
        const struct rp_upstream *u = &c->upstreams[i];
        if (u->nservers == 0) {
            snprintf(kp, sizeof kp, "upstreams[%zu].servers", i);
            cfg_errorf(c, err, kp, "needs at least one server");
            return -EINVAL;
        }
        if (u->tls && !u->ca) {
            snprintf(kp, sizeof kp, "upstreams[%zu].ca", i);
            cfg_errorf(c, err, kp, "an HTTPS upstream needs a CA bundle to verify it");
            return -EINVAL;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(c->upstreams[j].name, u->name)) {
                snprintf(kp, sizeof kp, "upstreams[%zu].name", i);
                cfg_errorf(c, err, kp, "duplicate upstream name '%s'", u->name);
                return -EINVAL;
            }
    }
    /* tls.certs may list more certificates for SNI: acme's becomes the default (first). */
    return acme_edge_config_check(c, &c->acme, NULL, NULL, NULL, err);
}
