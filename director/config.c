/* The Director's configuration keys (YAML), defaults following the lab address plan. */
#include <errno.h>
#include <stddef.h>

#include "director/director.h"

static const struct cfg_key ctl_keys[] = {
    {.name = "listen",
     .type = CFG_ADDR,
     .offset = offsetof(struct director_ctl_config, listen),
     .def = "127.0.0.10:7400",
     .min = 7400,
     .restart = true,
     .help = "control channel listener (mutual TLS) the edges connect to"},
    {.name = "heartbeat",
     .type = CFG_DURATION,
     .offset = offsetof(struct director_ctl_config, heartbeat_ms),
     .def = "1s",
     .min = 100,
     .max = 60000,
     .restart = true,
     .help = "heartbeat interval; a peer silent for three is dropped"},
    {.name = "require_cert_role",
     .type = CFG_BOOL,
     .offset = offsetof(struct director_ctl_config, require_cert_role),
     .def = "true",
     .help = "an edge's certificate must name the role it claims (CN or DNS SAN av-edge or "
             "av-edge.<domain>), so one edge cannot ask for another role's secrets"},
    CFG_END,
};

static const struct cfg_key tls_keys[] = {
    {.name = "cert",
     .type = CFG_FILE,
     .offset = offsetof(struct tls_files_config, cert),
     .def = "build/certs/director.crt",
     .help = "the Director's certificate (PEM)"},
    {.name = "key",
     .type = CFG_FILE,
     .offset = offsetof(struct tls_files_config, key),
     .def = "build/certs/director.key",
     .help = "its private key (PEM)"},
    {.name = "ca",
     .type = CFG_FILE,
     .offset = offsetof(struct tls_files_config, ca),
     .def = "build/certs/ca.crt",
     .help = "CA bundle that signs the edges' certificates"},
    CFG_END,
};

static const struct cfg_key secrets_keys[] = {
    {.name = "rotate_interval",
     .type = CFG_DURATION,
     .offset = offsetof(struct director_secrets_config, rotate_interval_ms),
     .def = "1h",
     .min = 1000,
     .max = 30LL * 24 * 3600 * 1000,
     .help = "how often a new relay and conference secret is issued"},
    {.name = "lifetime",
     .type = CFG_DURATION,
     .offset = offsetof(struct director_secrets_config, lifetime_ms),
     .def = "2h",
     .min = 2000,
     .max = 60LL * 24 * 3600 * 1000,
     .help = "how long a secret stays valid (not-after); at least twice rotate_interval"},
    {.name = "length",
     .type = CFG_UINT,
     .offset = offsetof(struct director_secrets_config, length),
     .def = "32",
     .min = 16,
     .max = TOKEN_SECRET_MAX,
     .help = "random bytes per secret"},
    CFG_END,
};

#define CS_OFF(f) offsetof(struct director_confserver_config, f)
static const struct cfg_key confserver_tls_keys[] = {
    {.name = "cert", .type = CFG_FILE, .offset = offsetof(struct tls_files_config, cert),
     .def = "build/certs/confserver.crt", .help = "certificate shown to conf-edge (PEM)"},
    {.name = "key", .type = CFG_FILE, .offset = offsetof(struct tls_files_config, key),
     .def = "build/certs/confserver.key", .help = "its private key (PEM)"},
    {.name = "ca", .type = CFG_FILE, .offset = offsetof(struct tls_files_config, ca),
     .def = "build/certs/ca.crt", .help = "CA bundle that signs conf-edge's certificate"},
    CFG_END,
};

static const struct cfg_key confserver_keys[] = {
    {.name = "enabled", .type = CFG_BOOL, .offset = CS_OFF(enabled), .def = "true",
     .help = "run the conferencing-server stub"},
    {.name = "edges", .type = CFG_ADDRLIST, .offset = CS_OFF(edges), .min = 8057,
     .count_offset = CS_OFF(n_edges),
     .help = "conf-edge internal listeners to dial (default 127.0.0.22:8057)"},
    {.name = "edge_name", .type = CFG_STR, .offset = CS_OFF(edge_name), .def = "conf-edge",
     .help = "name verified on conf-edge's certificate"},
    {.name = "tls", .type = CFG_SECTION, .offset = CS_OFF(tls), .sub = confserver_tls_keys,
     .help = "the conferencing server's client certificate"},
    {.name = "key_ttl", .type = CFG_DURATION, .offset = CS_OFF(key_ttl_ms), .def = "1h",
     .min = 1000, .max = 7LL * 24 * 3600 * 1000, .help = "lifetime of a minted conference key"},
    {.name = "window", .type = CFG_SIZE, .offset = CS_OFF(window), .def = "256k", .min = 16384,
     .max = 64 << 20, .help = "per-stream flow-control window granted to the edge"},
    {.name = "max_buffer", .type = CFG_SIZE, .offset = CS_OFF(max_buffer), .def = "1M",
     .min = 65536, .max = 256 << 20,
     .help = "bytes queued for one participant before it is closed as too slow"},
    CFG_END,
};

static const struct cfg_key credentials_keys[] = {
    {.name = "ttl", .type = CFG_DURATION, .offset = offsetof(struct director_credentials_config, ttl_ms),
     .def = "1h", .min = 60000, .max = 7LL * 24 * 3600 * 1000,
     .help = "lifetime of issued TURN credentials"},
    {.name = "max_ttl", .type = CFG_DURATION,
     .offset = offsetof(struct director_credentials_config, max_ttl_ms), .def = "8h", .min = 60000,
     .max = 30LL * 24 * 3600 * 1000, .help = "longest lifetime a caller may ask for"},
    {.name = "uris", .type = CFG_STRLIST, .offset = offsetof(struct director_credentials_config, uris),
     .count_offset = offsetof(struct director_credentials_config, n_uris),
     .help = "TURN URIs to hand out (default: those the connected av-edges announce)"},
    CFG_END,
};

const struct cfg_key director_config_keys[] = {
    DAEMON_CONFIG_KEYS,
    {.name = "ctl",
     .type = CFG_SECTION,
     .offset = offsetof(struct director_config, ctl),
     .sub = ctl_keys,
     .help = "control channel to the edges"},
    {.name = "tls",
     .type = CFG_SECTION,
     .offset = offsetof(struct director_config, tls),
     .sub = tls_keys,
     .help = "certificates for the control channel"},
    {.name = "secrets",
     .type = CFG_SECTION,
     .offset = offsetof(struct director_config, secrets),
     .sub = secrets_keys,
     .help = "shared secrets issued to the edges"},
    {.name = "sip",
     .type = CFG_SECTION,
     .offset = offsetof(struct director_config, sip),
     .sub = registrar_config_keys,
     .help = "SIP registrar (Digest) and proxy"},
    {.name = "confserver",
     .type = CFG_SECTION,
     .offset = offsetof(struct director_config, confserver),
     .sub = confserver_keys,
     .help = "conferencing-server stub: conference keys and the relay behind conf-edge"},
    {.name = "credentials", .type = CFG_SECTION, .offset = offsetof(struct director_config, credentials),
     .sub = credentials_keys, .help = "the TURN credential endpoint (GET /credentials)"},
    CFG_END,
};

int director_config_validate(const void *cfg, struct cfg_err *err)
{
    const struct director_config *c = cfg;
    /* A credential minted just before a rotation must still verify (as the previous key)
     * until the next one, so a key has to live through two intervals. */
    if (c->secrets.lifetime_ms < 2 * c->secrets.rotate_interval_ms) {
        cfg_errorf(cfg, err, "secrets.lifetime",
                   "lifetime (%llu ms) must be at least twice rotate_interval (%llu ms)",
                   (unsigned long long)c->secrets.lifetime_ms,
                   (unsigned long long)c->secrets.rotate_interval_ms);
        return -EINVAL;
    }
    return 0;
}
