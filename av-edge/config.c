/* av-edge configuration keys (lab defaults from the address plan), validation, the runtime
 * settings derived from a config, and the metrics series. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "av-edge/av.h"

#define OFF(f) offsetof(struct av_config, f)

static const struct cfg_key user_keys[] = {
    {.name = "name",
     .type = CFG_STR,
     .offset = offsetof(struct av_user_cfg, name),
     .required = true,
     .help = "user name"},
    {.name = "password",
     .type = CFG_STR,
     .offset = offsetof(struct av_user_cfg, password),
     .required = true,
     .help = "password (long-term credential)"},
    CFG_END,
};

static const struct cfg_key external_keys[] = {
    {.name = "listen",
     .type = CFG_ADDRLIST,
     .restart = true,
     .offset = offsetof(struct av_side_cfg, listen),
     .count_offset = offsetof(struct av_side_cfg, n_listen),
     .def = "127.0.0.13:3478",
     .min = 3478,
     .help = "STUN/TURN over UDP and TCP for external users"},
    {.name = "tcp_listen",
     .type = CFG_ADDRLIST,
     .restart = true,
     .offset = offsetof(struct av_side_cfg, tcp_listen),
     .count_offset = offsetof(struct av_side_cfg, n_tcp_listen),
     .def = "127.0.0.13:443",
     .min = 443,
     .help = "TURN over TCP only (port 443 for clients behind strict firewalls)"},
    {.name = "tls_listen",
     .type = CFG_ADDRLIST,
     .restart = true,
     .offset = offsetof(struct av_side_cfg, tls_listen),
     .count_offset = offsetof(struct av_side_cfg, n_tls_listen),
     .def = "127.0.0.13:5349",
     .min = 5349,
     .help = "TURN over TLS for external users"},
    {.name = "allow_peers",
     .type = CFG_CIDRLIST,
     .offset = offsetof(struct av_side_cfg, allow_peers),
     .count_offset = offsetof(struct av_side_cfg, n_allow_peers),
     .help = "peers exempt from the loopback/link-local rule (labs); never own addresses or "
             "internal networks"},
    CFG_END,
};

static const struct cfg_key internal_keys[] = {
    {.name = "listen",
     .type = CFG_ADDRLIST,
     .restart = true,
     .offset = offsetof(struct av_side_cfg, listen),
     .count_offset = offsetof(struct av_side_cfg, n_listen),
     .def = "127.0.0.23:3478",
     .min = 3478,
     .help = "STUN/TURN over UDP and TCP for internal users"},
    {.name = "tcp_listen",
     .type = CFG_ADDRLIST,
     .restart = true,
     .offset = offsetof(struct av_side_cfg, tcp_listen),
     .count_offset = offsetof(struct av_side_cfg, n_tcp_listen),
     .min = 443,
     .help = "TURN over TCP only"},
    {.name = "tls_listen",
     .type = CFG_ADDRLIST,
     .restart = true,
     .offset = offsetof(struct av_side_cfg, tls_listen),
     .count_offset = offsetof(struct av_side_cfg, n_tls_listen),
     .min = 5349,
     .help = "TURN over TLS for internal users"},
    CFG_END,
};

static const struct cfg_key relay_keys[] = {
    {.name = "addresses",
     .type = CFG_ADDRLIST,
     .restart = true,
     .offset = OFF(relay.addresses) - OFF(relay),
     .count_offset = OFF(relay.n_addresses) - OFF(relay),
     .def = "127.0.0.13",
     .min = 1,
     .help = "relayed transport addresses (external side): one IPv4, optionally one IPv6"},
    {.name = "port_min",
     .type = CFG_UINT,
     .restart = true,
     .offset = OFF(relay.port_min) - OFF(relay),
     .def = "50000",
     .min = 1024,
     .max = 65535,
     .help = "first relay port"},
    {.name = "port_max",
     .type = CFG_UINT,
     .restart = true,
     .offset = OFF(relay.port_max) - OFF(relay),
     .def = "59999",
     .min = 1024,
     .max = 65535,
     .help = "last relay port"},
    {.name = "socket_buffer",
     .type = CFG_SIZE,
     .offset = OFF(relay.socket_buffer) - OFF(relay),
     .def = "4M",
     .min = 0,
     .max = 1LL << 30,
     .help = "SO_RCVBUF/SO_SNDBUF of the UDP listeners (capped by net.core.rmem_max)"},
    {.name = "tcp",
     .type = CFG_BOOL,
     .offset = OFF(relay.tcp) - OFF(relay),
     .def = "true",
     .help = "TCP relays (RFC 6062) for clients on TCP/TLS control connections; false: an "
             "Allocate for one gets 442, like coturn's no-tcp-relay"},
    CFG_END,
};

static const struct cfg_key auth_keys[] = {
    {.name = "realm",
     .type = CFG_STR,
     .offset = OFF(auth.realm) - OFF(auth),
     .def = "edge.lab",
     .help = "long-term credential realm"},
    {.name = "secret",
     .type = CFG_STR,
     .offset = OFF(auth.secret) - OFF(auth),
     .help = "static TURN REST shared secret for labs without a Director (used only with "
             "director.enabled false)"},
    {.name = "users",
     .type = CFG_LIST,
     .offset = OFF(auth.users) - OFF(auth),
     .count_offset = OFF(auth.n_users) - OFF(auth),
     .sub = user_keys,
     .elem_size = sizeof(struct av_user_cfg),
     .help = "static users (labs)"},
    {.name = "nonce_lifetime",
     .type = CFG_DURATION,
     .offset = OFF(auth.nonce_lifetime_ms) - OFF(auth),
     .def = "10m",
     .min = 1000,
     .max = 86400000,
     .help = "a nonce goes stale (438) after this"},
    {.name = "unauth_rate",
     .type = CFG_UINT,
     .offset = OFF(auth.unauth_rate) - OFF(auth),
     .def = "50",
     .min = 0,
     .max = 1000000,
     .help = "unauthenticated requests per second per source IP (0 = unlimited)"},
    {.name = "unauth_burst",
     .type = CFG_UINT,
     .offset = OFF(auth.unauth_burst) - OFF(auth),
     .def = "200",
     .min = 1,
     .max = 1000000,
     .help = "burst for unauth_rate"},
    {.name = "strict_amplification",
     .type = CFG_BOOL,
     .offset = OFF(auth.strict_amplification) - OFF(auth),
     .def = "true",
     .help = "over UDP, no unauthenticated answer larger than what the source sent: a request "
             "too small for its answer (a 401 carries REALM and NONCE) is answered once the "
             "client's retransmissions cover it, at once when it carries a nonce made for its "
             "address; false: answer every request at once (amplification up to 3x)"},
    CFG_END,
};

static const struct cfg_key limit_keys[] = {
    {.name = "default_lifetime",
     .type = CFG_DURATION,
     .offset = OFF(limits.default_lifetime_ms) - OFF(limits),
     .def = "600s",
     .min = 1000,
     .max = 86400000,
     .help = "allocation lifetime when the client asks for less"},
    {.name = "max_lifetime",
     .type = CFG_DURATION,
     .offset = OFF(limits.max_lifetime_ms) - OFF(limits),
     .def = "3600s",
     .min = 1000,
     .max = 86400000,
     .help = "longest allocation lifetime"},
    {.name = "permission_lifetime",
     .type = CFG_DURATION,
     .offset = OFF(limits.permission_lifetime_ms) - OFF(limits),
     .def = "300s",
     .min = 1000,
     .max = 86400000,
     .help = "permission lifetime (RFC 8656: 300 s)"},
    {.name = "channel_lifetime",
     .type = CFG_DURATION,
     .offset = OFF(limits.channel_lifetime_ms) - OFF(limits),
     .def = "600s",
     .min = 1000,
     .max = 86400000,
     .help = "channel binding lifetime (RFC 8656: 600 s)"},
    {.name = "user_quota",
     .type = CFG_UINT,
     .offset = OFF(limits.user_quota) - OFF(limits),
     .def = "100",
     .min = 0,
     .max = 10000000,
     .help = "allocations per user, all its credentials together (486; 0 = unlimited)"},
    {.name = "allocations_per_credential",
     .type = CFG_UINT,
     .offset = OFF(limits.cred_quota) - OFF(limits),
     .def = "10",
     .min = 0,
     .max = 10000000,
     .help = "allocations per credential (username), so a leaked one cannot open hundreds "
             "(486; 0 = unlimited)"},
    {.name = "new_peers_per_second",
     .type = CFG_UINT,
     .offset = OFF(limits.new_peers_per_s) - OFF(limits),
     .def = "10",
     .min = 0,
     .max = 1000000,
     .help = "new peer addresses (permissions) per second per allocation, bursts of two "
             "seconds' worth (508; 0 = unlimited)"},
    {.name = "packets_per_second",
     .type = CFG_UINT,
     .offset = OFF(limits.pps_per_alloc) - OFF(limits),
     .def = "10000",
     .min = 0,
     .max = 100000000,
     .help = "relayed packets per second per allocation, both directions, bursts of one "
             "second's worth; more are dropped (0 = unlimited)"},
    {.name = "total_quota",
     .type = CFG_UINT,
     .offset = OFF(limits.total_quota) - OFF(limits),
     .def = "10000",
     .min = 0,
     .max = 10000000,
     .help = "allocations in total (0 = unlimited)"},
    {.name = "max_permissions",
     .type = CFG_UINT,
     .offset = OFF(limits.max_permissions) - OFF(limits),
     .def = "64",
     .min = 0,
     .max = 100000,
     .help = "permissions (and channels) per allocation (0 = unlimited)"},
    {.name = "bandwidth_per_allocation",
     .type = CFG_SIZE,
     .offset = OFF(limits.bandwidth_per_allocation) - OFF(limits),
     .def = "0",
     .min = 0,
     .max = 1LL << 40,
     .help = "bytes per second per allocation, each direction counted (0 = no cap)"},
    {.name = "bandwidth_per_user",
     .type = CFG_SIZE,
     .offset = OFF(limits.bandwidth_per_user) - OFF(limits),
     .def = "0",
     .min = 0,
     .max = 1LL << 40,
     .help = "bytes per second per user (0 = no cap)"},
    CFG_END,
};

static const struct cfg_key tls_keys[] = {
    {.name = "cert",
     .type = CFG_FILE,
     .offset = offsetof(struct tls_files_config, cert),
     .help = "certificate for TURN over TLS (PEM); none: a self-signed one (labs)"},
    {.name = "key",
     .type = CFG_FILE,
     .offset = offsetof(struct tls_files_config, key),
     .help = "its private key (PEM)"},
    CFG_END,
};

const struct cfg_key av_config_keys[] = {
    DAEMON_CONFIG_KEYS,
    {.name = "external",
     .type = CFG_SECTION,
     .offset = OFF(external),
     .sub = external_keys,
     .help = "the external (Internet) side"},
    {.name = "internal",
     .type = CFG_SECTION,
     .offset = OFF(internal),
     .sub = internal_keys,
     .help = "the internal (enterprise) side"},
    {.name = "relay",
     .type = CFG_SECTION,
     .offset = OFF(relay),
     .sub = relay_keys,
     .help = "relayed addresses and ports"},
    {.name = "internal_networks",
     .type = CFG_CIDRLIST,
     .offset = OFF(internal_networks),
     .count_offset = OFF(n_internal_networks),
     .def = "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7",
     .help = "networks external allocations may never reach (403)"},
    {.name = "auth",
     .type = CFG_SECTION,
     .offset = OFF(auth),
     .sub = auth_keys,
     .help = "long-term credentials"},
    {.name = "limits",
     .type = CFG_SECTION,
     .offset = OFF(limits),
     .sub = limit_keys,
     .help = "lifetimes, quotas and bandwidth caps"},
    {.name = "workers",
     .type = CFG_UINT,
     .restart = true,
     .offset = OFF(workers),
     .def = "1",
     .min = 1,
     .max = 64,
     .help = "UDP worker threads, each with its own loop and SO_REUSEPORT sockets"},
    {.name = "software",
     .type = CFG_STR,
     .offset = OFF(software),
     .help = "SOFTWARE attribute in authenticated responses (none by default)"},
    {.name = "tls",
     .type = CFG_SECTION,
     .offset = OFF(tls),
     .sub = tls_keys,
     .help = "certificate for the TLS listeners"},
    {.name = "director",
     .type = CFG_SECTION,
     .offset = OFF(director),
     .sub = director_link_keys,
     .help = "control channel to the Director (relay secret, load reports)"},
    ACME_EDGE_CONFIG_KEY(struct av_config, acme),
    CFG_END,
};

int av_config_validate(const void *cfg, struct cfg_err *err)
{
    const struct av_config *c = cfg;
    if (c->relay.port_min > c->relay.port_max) {
        cfg_errorf(cfg, err, "relay.port_min", "port_min (%u) is above port_max (%u)",
                   c->relay.port_min, c->relay.port_max);
        return -EINVAL;
    }
    if (c->relay.port_max - c->relay.port_min + 1 < 2 * c->workers) {
        cfg_errorf(cfg, err, "relay.port_max", "the relay port range is too small for %u workers",
                   c->workers);
        return -EINVAL;
    }
    int fams = 0;
    for (size_t i = 0; i < c->relay.n_addresses; i++) {
        int bit = addr_family(&c->relay.addresses[i]) == AF_INET6 ? 2 : 1;
        if (fams & bit) {
            cfg_errorf(cfg, err, "relay.addresses", "at most one IPv4 and one IPv6 address");
            return -EINVAL;
        }
        if (addr_is_any(&c->relay.addresses[i])) {
            cfg_errorf(cfg, err, "relay.addresses", "a relay address must be a concrete address");
            return -EINVAL;
        }
        fams |= bit;
    }
    if (!fams) {
        cfg_errorf(cfg, err, "relay.addresses", "at least one relay address is needed");
        return -EINVAL;
    }
    if (c->limits.default_lifetime_ms > c->limits.max_lifetime_ms) {
        cfg_errorf(cfg, err, "limits.default_lifetime", "default_lifetime exceeds max_lifetime");
        return -EINVAL;
    }
    if (c->external.n_listen + c->external.n_tls_listen + c->external.n_tcp_listen +
            c->internal.n_listen + c->internal.n_tls_listen + c->internal.n_tcp_listen >
        AV_MAX_LISTENERS / 2) {
        cfg_errorf(cfg, err, "external.listen", "too many listeners (at most %d)",
                   AV_MAX_LISTENERS / 2);
        return -EINVAL;
    }
    if ((c->tls.cert == NULL) != (c->tls.key == NULL)) {
        cfg_errorf(cfg, err, c->tls.cert ? "tls.key" : "tls.cert",
                   "tls.cert and tls.key go together");
        return -EINVAL;
    }
    return acme_edge_config_check(cfg, &c->acme, "tls.cert", c->tls.cert, c->tls.key, err);
}

/* Secrets that anyone who reads the repository knows (the lab configs in deploy/). */
static const char *const published_secrets[] = {"lab-relay-secret", NULL};

size_t av_config_warnings(const void *cfg, char (*out)[256], size_t max)
{
    const struct av_config *c = cfg;
    size_t n = 0;
    const char *s = c->auth.secret;
    if (s && n < max) {
        for (const char *const *p = published_secrets; *p; p++)
            if (strcmp(s, *p) == 0)
                snprintf(out[n++], 256,
                         "auth.secret \"%s\" is published (deploy/config): anyone can mint "
                         "credentials with it; use the Director's secrets or a secret of your own",
                         s);
    }
    if (s && c->director.enabled && n < max)
        snprintf(out[n++], 256,
                 "auth.secret is ignored while director.enabled is true: only the Director's "
                 "relay secrets are accepted");
    return n;
}

/* Copies n elements of size sz (NULL for none); *ok goes false when memory runs out. */
static void *memdup(const void *p, size_t n, size_t sz, bool *ok)
{
    if (!n)
        return NULL;
    void *q = malloc(n * sz);
    if (!q)
        *ok = false;
    else
        memcpy(q, p, n * sz);
    return q;
}

static char *strdup_ok(const char *s, bool *ok)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *ok = false;
    return d;
}

/* The addresses the edge is reached at, denied as peers, into own; returns how many. */
static size_t own_addresses(const struct av_config *c, struct addr *own)
{
    size_t k = 0;
    const struct av_side_cfg *sides[2] = {&c->external, &c->internal};
    for (size_t i = 0; i < c->relay.n_addresses; i++)
        own[k++] = c->relay.addresses[i];
    for (int s = 0; s < 2; s++) {
        for (size_t i = 0; i < sides[s]->n_listen; i++)
            own[k++] = sides[s]->listen[i];
        for (size_t i = 0; i < sides[s]->n_tls_listen; i++)
            own[k++] = sides[s]->tls_listen[i];
        for (size_t i = 0; i < sides[s]->n_tcp_listen; i++)
            own[k++] = sides[s]->tcp_listen[i];
    }
    /* Every address the edge listens on is a denied peer, the admin listener's and the
     * control channel's (the Director it talks to) included, not only the TURN ones. */
    if (addr_family(&c->base.admin.listen) && !addr_is_any(&c->base.admin.listen))
        own[k++] = c->base.admin.listen;
    if (c->director.enabled && !addr_is_any(&c->director.address))
        own[k++] = c->director.address;
    return k;
}

/* The TURN view of c, pointing into rt's copies; n_own addresses in rt->own. */
static void turn_cfg_fill(const struct av_config *c, struct av_runtime *rt, size_t n_own)
{
    struct av_turn_cfg *t = &rt->turn;
    t->realm = rt->realm;
    t->software = rt->software;
    t->default_lifetime_s = (uint32_t)(c->limits.default_lifetime_ms / 1000);
    t->max_lifetime_s = (uint32_t)(c->limits.max_lifetime_ms / 1000);
    t->perm_lifetime_s = (uint32_t)(c->limits.permission_lifetime_ms / 1000);
    t->chan_lifetime_s = (uint32_t)(c->limits.channel_lifetime_ms / 1000);
    t->nonce_lifetime_s = (uint32_t)(c->auth.nonce_lifetime_ms / 1000);
    t->user_quota = c->limits.user_quota;
    t->total_quota = c->limits.total_quota;
    t->max_perms = c->limits.max_permissions;
    t->cred_quota = c->limits.cred_quota;
    t->new_peers_per_s = c->limits.new_peers_per_s;
    t->pps_per_alloc = c->limits.pps_per_alloc;
    t->bps_per_alloc = c->limits.bandwidth_per_allocation;
    t->bps_per_user = c->limits.bandwidth_per_user;
    t->internal_nets = rt->internal_nets;
    t->n_internal_nets = c->n_internal_networks;
    t->allow_peers = rt->allow_peers;
    t->n_allow_peers = c->external.n_allow_peers;
    t->own = rt->own;
    t->n_own = n_own;
    t->users = rt->users;
    t->n_users = c->auth.n_users;
    t->tcp_relay = c->relay.tcp; /* RFC 6062, for clients on TCP/TLS control connections */
    t->strict_amplification = c->auth.strict_amplification;
    for (size_t i = 0; i < c->relay.n_addresses; i++) {
        if (addr_family(&c->relay.addresses[i]) == AF_INET6)
            t->have_v6 = true;
        else
            t->have_v4 = true;
    }
}

int av_runtime_build(const struct av_config *c, struct av_runtime **out)
{
    /* Everything is copied: the config is freed after a reload while workers on other
     * threads may still read the previous runtime. */
    struct av_runtime *rt = calloc(1, sizeof(*rt));
    if (!rt)
        return -ENOMEM;
    bool ok = true;
    size_t n_own = c->relay.n_addresses + c->external.n_listen + c->external.n_tls_listen +
                   c->external.n_tcp_listen + c->internal.n_listen + c->internal.n_tls_listen +
                   c->internal.n_tcp_listen + 2;
    rt->own = calloc(n_own ? n_own : 1, sizeof(*rt->own));
    rt->users = calloc(c->auth.n_users ? c->auth.n_users : 1, sizeof(*rt->users));
    rt->n_users = c->auth.n_users;
    rt->realm = strdup_ok(c->auth.realm ? c->auth.realm : "", &ok);
    rt->software = strdup_ok(c->software, &ok);
    rt->internal_nets =
        memdup(c->internal_networks, c->n_internal_networks, sizeof(struct cidr), &ok);
    rt->allow_peers =
        memdup(c->external.allow_peers, c->external.n_allow_peers, sizeof(struct cidr), &ok);
    if (!rt->own || !rt->users || !ok) {
        av_runtime_free(rt);
        return -ENOMEM;
    }
    size_t k = own_addresses(c, rt->own);
    for (size_t i = 0; i < c->auth.n_users; i++) {
        rt->users[i].name = strdup_ok(c->auth.users[i].name, &ok);
        stun_key_long_term(slice_str(c->auth.users[i].name), slice_str(rt->realm),
                           slice_str(c->auth.users[i].password), rt->users[i].key);
    }
    if (!ok) {
        av_runtime_free(rt);
        return -ENOMEM;
    }
    turn_cfg_fill(c, rt, k);
    *out = rt;
    return 0;
}

void av_runtime_free(struct av_runtime *rt)
{
    while (rt) {
        struct av_runtime *older = rt->older;
        for (size_t i = 0; rt->users && i < rt->n_users; i++)
            free((char *)rt->users[i].name);
        free(rt->users);
        free(rt->own);
        free(rt->realm);
        free(rt->software);
        free(rt->internal_nets);
        free(rt->allow_peers);
        free(rt);
        rt = older;
    }
}

void av_metrics_register(struct av_metrics *m, struct metrics *reg)
{
    memset(m, 0, sizeof(*m));
    m->allocs = metrics_gauge(reg, "allocations", "Current TURN allocations", NULL);
    m->perms = metrics_gauge(reg, "permissions", "Current TURN permissions", NULL);
    m->chans = metrics_gauge(reg, "channels", "Current TURN channel bindings", NULL);
    const char *hp = "Packets relayed, by direction";
    const char *hb = "Payload bytes relayed, by direction";
    m->pkts_to_peer = metrics_counter(reg, "relayed_packets_total", hp, "direction=\"to_peer\"");
    m->pkts_to_client =
        metrics_counter(reg, "relayed_packets_total", hp, "direction=\"to_client\"");
    m->bytes_to_peer = metrics_counter(reg, "relayed_bytes_total", hb, "direction=\"to_peer\"");
    m->bytes_to_client = metrics_counter(reg, "relayed_bytes_total", hb, "direction=\"to_client\"");
    const char *hd = "Packets dropped on the relay path, by reason";
    m->dropped_no_perm =
        metrics_counter(reg, "dropped_packets_total", hd, "reason=\"no_permission\"");
    m->dropped_bandwidth =
        metrics_counter(reg, "dropped_packets_total", hd, "reason=\"bandwidth\"");
    m->unauth_limited = metrics_counter(reg, "dropped_packets_total", hd, "reason=\"rate_limit\"");
    m->amplification_dropped =
        metrics_counter(reg, "dropped_packets_total", hd, "reason=\"amplification\"");
    m->dropped_send = metrics_counter(reg, "dropped_packets_total", hd, "reason=\"send_failed\"");
    char labels[64];
    for (int i = 0; i < AV_AUTH_NREASONS; i++) {
        snprintf(labels, sizeof(labels), "reason=\"%s\"", av_auth_fail_name((enum av_auth_fail)i));
        m->auth_fail[i] = metrics_counter(
            reg, "auth_failures_total", "Authentication failures (401/438/400), by reason", labels);
    }
    for (int i = 1; i < AV_DENY_NREASONS; i++) {
        snprintf(labels, sizeof(labels), "reason=\"%s\"", av_deny_name((enum av_deny)i));
        m->denied[i] =
            metrics_counter(reg, "denied_peers_total",
                            "Peers refused by the enterprise rule (403), by reason", labels);
    }
    m->quota_user = metrics_counter(reg, "quota_refusals_total", "Allocations refused by quota",
                                    "quota=\"user\"");
    m->quota_total = metrics_counter(reg, "quota_refusals_total", "Allocations refused by quota",
                                     "quota=\"total\"");
    m->quota_cred = metrics_counter(reg, "quota_refusals_total", "Allocations refused by quota",
                                    "quota=\"credential\"");
    m->new_peers_limited = metrics_counter(reg, "limit_refusals_total",
                                           "Requests refused by a per-allocation rate limit (508)",
                                           "limit=\"new_peers\"");
    m->redirected = metrics_counter(reg, "redirected_allocations_total",
                                    "Allocates answered 300 ALTERNATE-SERVER while draining", NULL);
    m->dropped_pkt_rate =
        metrics_counter(reg, "dropped_packets_total", hd, "reason=\"packet_rate\"");
    m->bindings =
        metrics_counter(reg, "binding_requests_total", "STUN Binding requests answered", NULL);
    m->allocs_ok = metrics_counter(reg, "allocations_total", "Allocations granted", NULL);
    m->errors = metrics_counter(reg, "error_responses_total",
                                "Error responses other than authentication challenges", NULL);
    m->tcp_active = metrics_gauge(reg, "tcp_connections",
                                  "Current RFC 6062 peer connections (pending or bound)", NULL);
    m->tcp_total =
        metrics_counter(reg, "tcp_connections_total",
                        "RFC 6062 peer connections established (Connect or incoming)", NULL);
    m->tcp_failed = metrics_counter(reg, "tcp_connections_failed_total",
                                    "RFC 6062 peer connections that failed: connect error or "
                                    "timeout, no permission, or no ConnectionBind within 30 s",
                                    NULL);
}
