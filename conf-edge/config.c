/* conf-edge's key table (see config.h for the struct and README.md for the keys). */
#include "conf-edge/config.h"

#include <errno.h>
#include <stddef.h>

#define OFF(f) offsetof(struct ce_config, f)
#define SUB(s, f) (offsetof(struct ce_config, s.f) - offsetof(struct ce_config, s))

static const struct cfg_key external_keys[] = {
    {"listen", CFG_ADDR, SUB(external, listen), "127.0.0.12:443", .min = 443, .restart = true,
     .help = "TLS listener for meeting participants"},
    {"tls", CFG_SECTION, SUB(external, tls), .sub = tls_files_keys,
     .help = "server certificate (none: self-signed, labs only)"},
    {"handshake_timeout", CFG_DURATION, SUB(external, handshake_timeout_ms), "10s", .min = 100,
     .max = 120000, .help = "time a client has to finish the TLS handshake"},
    CFG_END,
};

static const struct cfg_key internal_keys[] = {
    {"listen", CFG_ADDR, SUB(internal, listen), "127.0.0.22:8057", .min = 8057, .restart = true,
     .help = "mutual-TLS listener the conferencing servers dial into"},
    {"tls", CFG_SECTION, SUB(internal, tls), .sub = tls_files_keys,
     .help = "this edge's certificate and the CA that signs conferencing servers"},
    {"allowed_names", CFG_STRLIST, SUB(internal, allowed_names), NULL,
     .count_offset = SUB(internal, n_allowed_names),
     .help = "certificate names (CN or DNS SAN) accepted as conferencing servers; empty: any"},
    {"handshake_timeout", CFG_DURATION, SUB(internal, handshake_timeout_ms), "10s", .min = 100,
     .max = 120000, .help = "time a conferencing server has to finish the TLS handshake"},
    {"ping_interval", CFG_DURATION, SUB(internal, ping_interval_ms), "5s", .min = 100,
     .max = 600000, .help = "PING period; a server silent for 3 periods is dropped"},
    CFG_END,
};

static const char *const key_policies[] = {"replace", "refuse", NULL};

static const struct cfg_key limits_keys[] = {
    {"per_address", CFG_UINT, SUB(limits, per_address), "64", .min = 1, .max = 1000000,
     .help = "connections from one client address (more are closed at accept)"},
    {"per_conference", CFG_UINT, SUB(limits, per_conference), "1000", .min = 1, .max = 1000000,
     .help = "admitted clients in one conference (more get 429)"},
    {"clients", CFG_UINT, SUB(limits, clients), "20000", .min = 1, .max = 10000000,
     .help = "client connections in all (more are closed at accept)"},
    {"per_key", CFG_UINT, SUB(limits, per_key), "1", .min = 1, .max = 1000000,
     .help = "live sessions of one conference key (one jti)"},
    {"per_key_policy", CFG_ENUM, SUB(limits, per_key_policy), "replace", .choices = key_policies,
     .help = "a connection past per_key: replace (it wins, the key's oldest session ends) "
             "or refuse (429 key-in-use)"},
    CFG_END,
};

static const struct cfg_key buffer_keys[] = {
    {"client_write", CFG_SIZE, SUB(buffers, client_write), "256k", .min = 16384, .max = 64 << 20,
     .help = "bytes queued towards one client before reading from the server stops"},
    {"window", CFG_SIZE, SUB(buffers, window), "256k", .min = 16384, .max = 64 << 20,
     .help = "per-stream flow-control window on the server link, each direction"},
    {"server_write", CFG_SIZE, SUB(buffers, server_write), "1M", .min = 65536, .max = 256 << 20,
     .help = "bytes queued towards one conferencing server"},
    CFG_END,
};

static const struct cfg_key key_keys[] = {
    {"id", CFG_STR, SUB(conference_key, id), NULL, .help = "key id of the lab signing secret"},
    {"secret", CFG_STR, SUB(conference_key, secret), NULL,
     .help = "lab signing secret (production: it arrives from the Director)"},
    CFG_END,
};

const struct cfg_key ce_config_keys[] = {
    DAEMON_CONFIG_KEYS,
    {"external", CFG_SECTION, OFF(external), .sub = external_keys,
     .help = "the participants' side"},
    {"internal", CFG_SECTION, OFF(internal), .sub = internal_keys,
     .help = "the conferencing servers' side"},
    {"preamble_timeout", CFG_DURATION, OFF(preamble_timeout_ms), "5s", .min = 100, .max = 120000,
     .help = "time a client has after the handshake to send its preamble"},
    {"idle_timeout", CFG_DURATION, OFF(idle_timeout_ms), "5m", .min = 1000, .max = 86400000,
     .help = "a session with no traffic either way for this long is closed"},
    {"server_wait", CFG_DURATION, OFF(server_wait_ms), "10s", .min = 0, .max = 600000,
     .help = "how long an admitted client waits for a conferencing server to connect"},
    {"limits", CFG_SECTION, OFF(limits), .sub = limits_keys, .help = "connection caps"},
    {"buffers", CFG_SECTION, OFF(buffers), .sub = buffer_keys, .help = "queue caps"},
    {"conference_key", CFG_SECTION, OFF(conference_key), .sub = key_keys,
     .help = "labs only: a conference-key signing secret"},
    {"revocations_max", CFG_UINT, OFF(revocations_max), "65536", .min = 1, .max = 10000000,
     .help = "revoked keys and users remembered at most"},
    {"director", CFG_SECTION, OFF(director), .sub = director_link_keys,
     .help = "control channel to the Director (secrets, revocations, reports)"},
    ACME_EDGE_CONFIG_KEY(struct ce_config, acme),
    CFG_END,
};

int ce_config_validate(const void *p, struct cfg_err *err)
{
    const struct ce_config *c = p;
    if (!!c->external.tls.cert != !!c->external.tls.key) {
        cfg_errorf(c, err, c->external.tls.cert ? "external.tls.cert" : "external.tls.key",
                   "external.tls needs both cert and key");
        return -EINVAL;
    }
    if (!c->internal.tls.cert || !c->internal.tls.key || !c->internal.tls.ca) {
        cfg_errorf(c, err, "internal", "internal.tls needs cert, key and ca (mutual TLS)");
        return -EINVAL;
    }
    if (!!c->conference_key.id != !!c->conference_key.secret) {
        cfg_errorf(c, err, "conference_key", "conference_key needs both id and secret");
        return -EINVAL;
    }
    if (c->director.enabled &&
        (!c->director.tls.cert || !c->director.tls.key || !c->director.tls.ca)) {
        cfg_errorf(c, err, "director", "director.tls needs cert, key and ca (or enabled: false)");
        return -EINVAL;
    }
    return acme_edge_config_check(c, &c->acme, "external.tls.cert", c->external.tls.cert,
                                  c->external.tls.key, err);
}
