/* The access edge's configuration keys (YAML), defaults following the lab address plan. */
#include <errno.h>
#include <stddef.h>

#include "access-edge/ae.h"

#define SIDE(f) offsetof(struct ae_side_config, f)

static const struct cfg_key ext_keys[] = {
    {"udp", CFG_ADDRLIST, SIDE(udp), NULL, .restart = true, .min = 5060, .count_offset = SIDE(nudp),
     .help = "SIP over UDP listeners (remote users)"},
    {"tcp", CFG_ADDRLIST, SIDE(tcp), NULL, .restart = true, .min = 5060, .count_offset = SIDE(ntcp),
     .help = "SIP over TCP listeners (remote users)"},
    {"tls", CFG_ADDRLIST, SIDE(tls), NULL, .restart = true, .min = 443, .count_offset = SIDE(ntls),
     .help = "SIP over TLS listeners for remote users (443, 5061)"},
    {"mtls", CFG_ADDRLIST, SIDE(mtls), NULL, .restart = true, .min = 5061,
     .count_offset = SIDE(nmtls), .help = "SIP over mutual TLS listeners for federated partners"},
    {"ws", CFG_ADDRLIST, SIDE(ws), NULL, .restart = true, .min = 80, .count_offset = SIDE(nws),
     .help = "SIP over WebSocket listeners (plain; labs or behind a TLS terminator)"},
    {"wss", CFG_ADDRLIST, SIDE(wss), NULL, .restart = true, .min = 8443, .count_offset = SIDE(nwss),
     .help = "SIP over secure WebSocket listeners (RFC 7118) for browser clients"},
    {"certs", CFG_SECTION, SIDE(certs), .sub = tls_files_keys,
     .help = "the edge's external certificate; ca verifies partners"},
    CFG_END,
};

static const struct cfg_key int_keys[] = {
    {"udp", CFG_ADDRLIST, SIDE(udp), NULL, .restart = true, .min = 5060, .count_offset = SIDE(nudp),
     .help = "SIP over UDP listeners facing the Director"},
    {"tcp", CFG_ADDRLIST, SIDE(tcp), NULL, .restart = true, .min = 5060, .count_offset = SIDE(ntcp),
     .help = "SIP over TCP listeners facing the Director"},
    {"tls", CFG_ADDRLIST, SIDE(tls), NULL, .restart = true, .min = 5061, .count_offset = SIDE(ntls),
     .help = "SIP over TLS listeners facing the Director"},
    {"mtls", CFG_ADDRLIST, SIDE(mtls), NULL, .restart = true, .min = 5061,
     .count_offset = SIDE(nmtls), .help = "SIP over mutual TLS listeners facing the Director"},
    {"certs", CFG_SECTION, SIDE(certs), .sub = tls_files_keys,
     .help = "the edge's internal certificate, key, and the CA of the Director"},
    CFG_END,
};

static const char *const transports[] = {"udp", "tcp", "tls", NULL};

static const struct cfg_key next_hop_keys[] = {
    {"address", CFG_ADDR, offsetof(struct ae_next_hop_config, address), "127.0.0.10:5061",
     .min = 5060, .help = "the Director's SIP address"},
    {"transport", CFG_ENUM, offsetof(struct ae_next_hop_config, transport), "tls",
     .choices = transports, .help = "udp, tcp or tls (mutual TLS with internal.certs)"},
    {"server_name", CFG_STR, offsetof(struct ae_next_hop_config, server_name), "director",
     .help = "name to verify on the Director's certificate"},
    {"backups", CFG_ADDRLIST, offsetof(struct ae_next_hop_config, backups), NULL, .min = 5060,
     .count_offset = offsetof(struct ae_next_hop_config, nbackups),
     .help = "other Directors (same transport), used in order while the first is down"},
    {"health_interval", CFG_DURATION, offsetof(struct ae_next_hop_config, health_interval_ms), "1s",
     .min = 100, .max = 3600000,
     .help = "OPTIONS to each Director this often; two unanswered intervals mark it down"},
    CFG_END,
};

#define LIM(f) offsetof(struct ae_limits_config, f)
static const struct cfg_key limit_keys[] = {
    {"max_client_message", CFG_SIZE, LIM(max_client_message), "64k", .min = 512, .max = 1 << 20,
     .help = "largest message from a remote user (513 above)"},
    {"max_server_message", CFG_SIZE, LIM(max_server_message), "64k", .min = 512, .max = 1 << 20,
     .help = "largest message from a partner or the inside (513 above)"},
    {"max_headers", CFG_UINT, LIM(max_headers), "64", .min = 8, .max = 256,
     .help = "header lines per message (400 above)"},
    {"max_line", CFG_UINT, LIM(max_line), "1024", .min = 128, .max = 65536,
     .help = "longest header line (400 above)"},
    {"max_connections", CFG_UINT, LIM(max_connections), "10000", .min = 1, .max = 1000000,
     .help = "TCP/TLS connections in total"},
    {"max_connections_per_address", CFG_UINT, LIM(max_connections_per_address), "64", .min = 1,
     .max = 1000000, .help = "TCP/TLS connections per external address"},
    {"idle_timeout", CFG_DURATION, LIM(idle_timeout_ms), "5m", .min = 1000,
     .help = "close a connection silent this long (CRLF keep-alives count)"},
    {"handshake_timeout", CFG_DURATION, LIM(handshake_timeout_ms), "10s", .min = 100,
     .help = "TLS handshake deadline"},
    {"message_timeout", CFG_DURATION, LIM(message_timeout_ms), "10s", .min = 100, .max = 3600000,
     .help = "a message begun on TCP/TLS/WS must be complete this soon (else closed)"},
    {"rate", CFG_UINT, LIM(rate), "200", .min = 1, .max = 10000000,
     .help = "requests per second per external address (503 with Retry-After above)"},
    {"burst", CFG_UINT, LIM(burst), "400", .min = 1, .max = 10000000,
     .help = "burst allowance for the per-address rate"},
    {"reject_rate", CFG_UINT, LIM(reject_rate), "2", .min = 1, .max = 1000,
     .help = "503s a second to one UDP source over the rate (burst twice that); the rest "
             "are dropped unanswered, so a spoofed source cannot use the edge as a reflector"},
    {"exempt", CFG_CIDRLIST, LIM(exempt), NULL, .count_offset = LIM(nexempt),
     .help =
         "external addresses or prefixes spared the per-address rate and connection "
         "limits (a PBX or carrier with many users behind one address); the totals still apply"},
    {"max_transactions", CFG_UINT, LIM(max_transactions), "65536", .min = 16, .max = 4000000,
     .help = "INVITE transactions in flight (503 above)"},
    /* On by default: a loop this late cannot answer before a UDP client's first
     * retransmission (T1 = 500 ms), so taking new dialogs then only delays the calls in
     * progress. Two ticks in a row must be late, so a one-off scheduling stall is not it. */
    {"overload_lag", CFG_DURATION, LIM(overload_lag_ms), "300ms", .min = 0, .max = 60000,
     .help = "when the event loop runs this late twice in a row (20 ms ticks), new "
             "INVITE/REGISTER/SUBSCRIBE get 503 for 0.5 s (connections, in-dialog requests and "
             "responses still flow); 0 turns it off"},
    CFG_END,
};

static const struct cfg_key route_keys[] = {
    {"domain", CFG_STR, offsetof(struct ae_static_route, domain), NULL, .required = true,
     .help = "partner SIP domain"},
    {"address", CFG_ADDR, offsetof(struct ae_static_route, address), NULL, .min = 5061,
     .required = true, .help = "the partner edge's mutual TLS address"},
    CFG_END,
};

static const struct cfg_key fed_keys[] = {
    {"routes", CFG_LIST, offsetof(struct ae_federation_config, routes), NULL, .sub = route_keys,
     .elem_size = sizeof(struct ae_static_route),
     .count_offset = offsetof(struct ae_federation_config, nroutes),
     .help = "static routes to partners (no DNS); the domain must also be allowed"},
    {"allow", CFG_STRLIST, offsetof(struct ae_federation_config, allow), NULL,
     .count_offset = offsetof(struct ae_federation_config, nallow),
     .help = "partner domains allowed over mutual TLS"},
    {"block", CFG_STRLIST, offsetof(struct ae_federation_config, block), NULL,
     .count_offset = offsetof(struct ae_federation_config, nblock),
     .help = "domains always refused (403)"},
    {"discovery", CFG_BOOL, offsetof(struct ae_federation_config, discovery), "false",
     .help = "accept partners not on the allow list (rate limited)"},
    {"discovered_rate", CFG_UINT, offsetof(struct ae_federation_config, discovered_rate), "20",
     .min = 1, .max = 100000, .help = "messages per second from a discovered partner (503 above)"},
    {"suspicious_rate", CFG_UINT, offsetof(struct ae_federation_config, suspicious_rate), "1",
     .min = 1, .max = 100000,
     .help = "messages per second once most of a discovered partner's requests fail"},
    {"max_contacts", CFG_UINT, offsetof(struct ae_federation_config, max_contacts), "1000",
     .min = 1, .max = 1000000,
     .help = "distinct users a discovered partner may address before it goes on the watch list"},
    {"dns_servers", CFG_STR, offsetof(struct ae_federation_config, dns_servers), NULL,
     .help = "DNS servers for _sipfederationtls._tcp SRV lookups (host:port,...); "
             "default: the system resolver"},
    CFG_END,
};

static const char *const route_policies[] = {"strip", "reject", NULL};

const struct cfg_key ae_config_keys[] = {
    DAEMON_CONFIG_KEYS,
    {"director", CFG_SECTION, offsetof(struct ae_config, director), .sub = director_link_keys,
     .help = "control channel to the Director"},
    ACME_EDGE_CONFIG_KEY(struct ae_config, acme),
    {"domains", CFG_STRLIST, offsetof(struct ae_config, domains), NULL,
     .count_offset = offsetof(struct ae_config, ndomains),
     .help = "SIP domains served inside (requests from outside for others get 403)"},
    {"fqdn", CFG_STR, offsetof(struct ae_config, fqdn), "edge.example.com",
     .help = "the edge's name, in Warning and trust headers"},
    {"topology_hiding", CFG_BOOL, offsetof(struct ae_config, topology_hiding), "false",
     .help = "toward the Internet, seal the inside's Via headers into the edge's own"},
    {"route_policy", CFG_ENUM, offsetof(struct ae_config, route_policy), "strip",
     .choices = route_policies,
     .help = "Route entries from outside that are not the edge's own: strip (remove them) or "
             "reject (403)"},
    {"external", CFG_SECTION, offsetof(struct ae_config, external), .sub = ext_keys,
     .help = "listeners facing the Internet"},
    {"internal", CFG_SECTION, offsetof(struct ae_config, internal), .sub = int_keys,
     .help = "listeners facing the Director"},
    {"next_hop", CFG_SECTION, offsetof(struct ae_config, next_hop), .sub = next_hop_keys,
     .help = "where requests from outside go (the Director)"},
    {"limits", CFG_SECTION, offsetof(struct ae_config, limits), .sub = limit_keys,
     .help = "message, connection and rate limits"},
    {"federation", CFG_SECTION, offsetof(struct ae_config, federation), .sub = fed_keys,
     .help = "federation policy"},
    CFG_END,
};

int ae_config_validate(const void *cfg, struct cfg_err *err)
{
    const struct ae_config *c = cfg;
    if (c->ndomains == 0) {
        cfg_errorf(cfg, err, "domains", "at least one SIP domain is needed");
        return -EINVAL;
    }
    if (c->external.nudp + c->external.ntcp + c->external.ntls + c->external.nmtls +
            c->external.nws + c->external.nwss ==
        0) {
        cfg_errorf(cfg, err, "external", "no external listener");
        return -EINVAL;
    }
    if ((c->external.ntls || c->external.nmtls || c->external.nwss) && !c->external.certs.cert &&
        !c->acme.enabled) {
        cfg_errorf(cfg, err, "external.certs.cert", "TLS listeners need a certificate");
        return -EINVAL;
    }
    if (c->external.nmtls && !c->external.certs.ca) {
        cfg_errorf(cfg, err, "external.certs.ca", "mutual TLS needs a CA to verify partners");
        return -EINVAL;
    }
    static const char *const tpkey[] = {"internal.udp", "internal.tcp", "internal.tls"};
    size_t have[] = {c->internal.nudp, c->internal.ntcp, c->internal.ntls + c->internal.nmtls};
    if (have[c->next_hop.transport] == 0) {
        cfg_errorf(cfg, err, tpkey[c->next_hop.transport],
                   "next_hop.transport needs an internal listener of that transport");
        return -EINVAL;
    }
    if (c->next_hop.transport == AE_TP_TLS && (!c->internal.certs.cert || !c->internal.certs.ca)) {
        cfg_errorf(cfg, err, "internal.certs", "mutual TLS to the Director needs cert, key and ca");
        return -EINVAL;
    }
    return acme_edge_config_check(cfg, &c->acme, "external.certs.cert", c->external.certs.cert,
                                  c->external.certs.key, err);
}
