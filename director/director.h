/* The Director: the internal-side hub every edge reports to. This header is the context
 * its modules share (hub.c today; registrar.c, credentials.c, confserver.c later).
 *
 * Adding a module: give it a section in struct director_config (and a key table entry in
 * director/config.c), a pointer in struct director, and a line in the module table in
 * director/main.c with its `<module>_start(struct director *)` / `<module>_stop` hooks.
 * Modules run on d->loop, log through d->log, register metrics on d->metrics and JSON
 * endpoints with admin_route(d->admin, ...). They read secrets from d->relay_keys and
 * d->conf_keys, which the hub rotates (see hub_rotate). */
#ifndef DIRECTOR_DIRECTOR_H
#define DIRECTOR_DIRECTOR_H

#include "common/admin.h"
#include "common/cfg.h"
#include "common/ctl.h"
#include "common/daemon.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/tls.h"
#include "common/token.h"
#include "director/registrar.h"
#include <uv.h>

struct director_ctl_config {
    struct addr listen;     /* control channel, mutual TLS */
    uint64_t heartbeat_ms;  /* a peer silent for three of these is dropped */
    bool require_cert_role; /* an edge's certificate must name the role it claims */
};

struct director_secrets_config {
    uint64_t rotate_interval_ms; /* a new secret of each kind this often */
    uint64_t lifetime_ms;        /* not-after = issue time + this; >= 2 x rotate_interval */
    uint32_t length;             /* bytes of randomness per secret */
};

/* The TURN credential endpoint (director/credentials.c). */
struct director_credentials_config {
    uint64_t ttl_ms;     /* default lifetime of issued credentials */
    uint64_t max_ttl_ms; /* cap on a requested ttl */
    char **uris;         /* TURN URIs to hand out; empty: those of the connected av-edges */
    size_t n_uris;
};

/* The conferencing-server stub (director/confserver.c): dials conf-edge internal ports. */
struct director_confserver_config {
    bool enabled;
    struct addr *edges; /* conf-edge internal listeners; none: 127.0.0.22:8057 */
    size_t n_edges;
    char *edge_name; /* name verified on the edges' certificates */
    struct tls_files_config tls;
    uint64_t key_ttl_ms; /* lifetime of a minted conference key */
    uint64_t window;     /* per-stream window granted to the edge */
    uint64_t max_buffer; /* bytes queued for one participant before it is closed as slow */
};

/* ACME (director/acme.c): the edges' certificates from an ACME CA. */
enum acme_challenge_choice { ACME_CHOICE_TLS_ALPN_01 = 0, ACME_CHOICE_HTTP_01 = 1 };
struct director_acme_cert {
    char *edge; /* a role name (every edge of that role) or an instance id */
    char **names;
    size_t n_names;
    int challenge; /* enum acme_challenge_choice */
};
struct director_acme_config {
    bool enabled;
    char *directory;   /* the CA's directory URL (https://) */
    char *ca;          /* CA bundle trusted for the CA's HTTPS; none: the system's */
    char *contact;     /* "mailto:..." for the account, or none */
    char *account_key; /* PEM file; created (P-256, mode 0600) when missing */
    uint64_t retry_min_ms, retry_max_ms, check_interval_ms;
    uint64_t challenge_timeout_ms, order_timeout_ms;
    struct director_acme_cert *certificates;
    size_t n_certificates;
};

/* The whole configuration; read-only once loaded (a reload builds a new one). */
struct director_config {
    struct daemon_config base; /* instance-id, log, admin listener, drain timeout */
    struct director_ctl_config ctl;
    struct tls_files_config tls; /* the Director's certificate, key, and the edges' CA */
    struct director_secrets_config secrets;
    struct director_credentials_config credentials;
    struct director_sip_config sip; /* registrar.c */
    struct director_confserver_config confserver;
    struct director_acme_config acme;
};

/* Key table for cfg_load (director/config.c). */
extern const struct cfg_key director_config_keys[];
/* Cross-field checks after the key table passed. */
int director_config_validate(const void *cfg, struct cfg_err *err);

struct hub;
struct registrar;   /* director/registrar.c (SIP), later */
struct credentials; /* director/credentials.c (TURN credential endpoint), later */
struct confserver;  /* director/confserver.c (conferencing server stub), later */
struct acme;        /* director/acme.c */

struct director {
    struct daemon *daemon;
    uv_loop_t *loop;
    const struct logger *log;
    struct metrics *metrics;
    struct admin *admin;
    const struct director_config *cfg; /* swapped on reload */

    struct tls_ctx *ctl_tls; /* server context for the control channel (mutual TLS) */
    struct ctl_server *ctl;
    struct hub *hub;

    /* Shared secrets the Director issues: current + previous of each kind. */
    struct keyring relay_keys; /* TURN REST credentials (av-edge) */
    struct keyring conf_keys;  /* conference session keys (conf-edge) */

    struct registrar *registrar;
    struct credentials *credentials;
    struct confserver *confserver;
    struct acme *acme;
};

/* ---- hub.c: registry of edges, secret issuance, admin endpoints ---- */

/* Creates the hub, issues the first secrets, starts the rotation timer and the control
 * server on d->cfg->ctl.listen with d->ctl_tls, and registers GET /edges, POST /revoke,
 * POST /drain and POST /rotate on d->admin. Returns 0 or a negative errno (logged). */
int hub_start(struct director *d);
/* Applies a new config (rotation interval). */
void hub_reload(struct director *d);
/* Stops the control server and the timer; done(arg) runs once every handle is closed. */
void hub_stop(struct director *d, void (*done)(void *arg), void *arg);
/* Issues a new secret of kind now and pushes it to every connected edge that needs it. */
int hub_rotate(struct director *d, enum ctl_secret_kind kind);
/* True while user is revoked (POST /revoke?user=, until POST /reinstate or its until). */
bool hub_user_revoked(struct director *d, const char *user);
/* For a user reinstated recently: the earliest expiry its new credentials may have (those
 * expiring earlier could have been minted before the revocation), else 0. */
int64_t hub_user_min_expiry(struct director *d, const char *user);
/* Which secret kinds an edge of role needs (bit 1 << kind). */
unsigned hub_role_secret_kinds(enum ctl_role role);

/* One relay (av-edge) a user may be sent to, with what it last reported. */
struct hub_relay {
    const struct ctl_hello *hello; /* points into the hub: valid until the loop runs again */
    uint32_t load_permille;
    uint64_t allocations;
};
/* Orders v least loaded first: load_permille ascending, then fewer allocations, then
 * instance id (so equal edges come out in the same order every time). Pure. */
void hub_relay_sort(struct hub_relay *v, size_t n);
/* Fills out with the connected av-edges a user may be sent to, least loaded first: edges
 * whose last report says draining or not healthy are left out; an edge that has not
 * reported yet counts as idle. Returns how many were written (at most max). */
size_t hub_relays(struct director *d, struct hub_relay *out, size_t max);

/* ---- confserver.c: conferencing-server stub (conference keys, relay between participants) ---- */

/* Registers POST /conference-keys and dials every configured conf-edge (reconnecting with
 * backoff). 0 when disabled. */
int confserver_start(struct director *d);
void confserver_stop(struct director *d);

/* ---- acme.c: the edges' certificates from an ACME CA (RFC 8555) ---- */

/* Loads or creates the account key and registers GET /acme and POST /acme/renew; 0 when
 * disabled. */
int acme_start(struct director *d);
void acme_stop(struct director *d);
/* From the hub's control server: CertStatus, Csr, ChallengeReady from p; p gone. */
void acme_on_ctl(struct director *d, struct ctl_peer *p, const struct ctl_msg *m);
void acme_on_gone(struct director *d, struct ctl_peer *p);
/* Checks the acme section (called by director_config_validate). */
int acme_config_validate(const struct director_config *c, struct cfg_err *err);

/* ---- credentials.c: GET /credentials (TURN REST credentials for a user) ---- */
int credentials_start(struct director *d);
void credentials_stop(struct director *d);

#endif
