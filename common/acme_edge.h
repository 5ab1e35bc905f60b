/* The edge's side of ACME (proto/control.proto explains the exchange): the Director obtains
 * and renews the certificate of an edge's external TLS listeners; the private key never
 * leaves the edge.
 *
 * - At start (acme_edge_create), with `acme: {enabled: true}` and its files missing (or
 *   not a pair), a self-signed placeholder pair is written there, so the listeners start.
 * - After each Welcome: CertStatus (what the certificate file holds).
 * - CsrRequest: a new P-256 key kept in memory as pending for that order (a new request
 *   replaces it), and Csr (or Csr with error).
 * - CertIssued: the chain must match the pending key, name every name requested, not be
 *   self-signed or expired; then the key and the certificate are written atomically (key
 *   first, mode 0600; the old key is put back if the certificate cannot be written), and
 *   CertStatus follows (with error when refused). The daemon's certwatch sees the new pair
 *   and reloads as SIGHUP would: new handshakes get the new certificate, established
 *   connections keep theirs.
 * - Challenge: TLS-ALPN-01 -> a challenge certificate (pki_alpn_challenge_cert) in the
 *   daemon's acme_challenges store; HTTP-01 -> the key authorization there; answered by
 *   ChallengeReady{token, error}. A Challenge with remove forgets it (no answer).
 *
 * Metrics: acme_csr_total{result}, acme_certificates_installed_total,
 * acme_install_failures_total, acme_challenges_total{kind}, acme_challenges_active. */
#ifndef COMMON_ACME_EDGE_H
#define COMMON_ACME_EDGE_H

#include "common/cfg.h"
#include "common/ctl.h"
#include "common/daemon.h"
#include "common/log.h"
#include "common/metrics.h"

struct acme_challenges;

/* An edge's `acme:` section. YAML: acme: { enabled: true, cert: F, key: K }. F and K need
 * not exist (the placeholder is written at start); they are the certificate and key of
 * the edge's external TLS listeners, whose own cert/key may then be left out (or must name
 * the same files). Restart only. */
struct acme_edge_config {
    bool enabled;
    char *cert, *key;
};
extern const struct cfg_key acme_edge_keys[];
/* The entry for a role's key table: ACME_EDGE_CONFIG_KEY(struct av_config, acme). */
#define ACME_EDGE_CONFIG_KEY(type, field)                                                          \
    {                                                                                              \
        "acme", CFG_SECTION, offsetof(type, field),                                                \
            .sub = acme_edge_keys, .restart = true,                                                \
            .help = "certificate of the external TLS listeners obtained by the Director (ACME)"    \
    }

/* For the role's validate: with acme enabled, cert and key are set and their directories
 * exist and are writable; when listener_cert (the key path of the listeners' own cert, e.g.
 * "external.certs.cert", whose value is given) names a file, it is acme.cert and its key
 * acme.key. 0, or -EINVAL with err at file:line:col. */
int acme_edge_config_check(const void *cfg, const struct acme_edge_config *a,
                           const char *listener_cert_path, const char *listener_cert,
                           const char *listener_key, struct cfg_err *err);

/* The files the external listeners use: *in, with acme's cert and key when enabled. */
void acme_edge_tls_files(const struct acme_edge_config *a, const struct tls_files_config *in,
                         struct tls_files_config *out);

struct acme_edge;

/* With a->enabled false: *out = NULL and 0. Otherwise writes the placeholder pair when
 * needed (for name, or "localhost" when NULL; logged) and registers the metrics. store is
 * where challenges go (not owned; must outlive the edge), or NULL: the edge makes its own
 * (acme_edge_store). Call before the listeners load the files. Returns 0 or a negative
 * errno (logged: e.g. the placeholder could not be written). */
int acme_edge_create(const struct logger *log, struct metrics *metrics,
                     const struct acme_edge_config *a, const char *name,
                     struct acme_challenges *store, struct acme_edge **out);
/* The store for tls_files_use.acme / tls_opts.acme: NULL when e is NULL (acme off). */
struct acme_challenges *acme_edge_store(const struct acme_edge *e);
/* Handles the ACME messages of ctl. NULL e or ctl is a no-op. */
void acme_edge_attach(struct acme_edge *e, struct ctl_client *ctl);
/* Frees e (and the store it made). Call after ctl_client_stop of the client it is attached
 * to (no callback runs after that) and after the TLS contexts using its store are closed.
 * NULL is a no-op. */
void acme_edge_free(struct acme_edge *e);

/* For tests and the control handler: handles one message as received from the Director
 * (CTL_MSG_WELCOME, _CSR_REQUEST, _CERT_ISSUED, _CHALLENGE); answers go through send. */
void acme_edge_handle(struct acme_edge *e, const struct ctl_msg *m,
                      int (*send)(const struct ctl_msg *reply, void *arg), void *arg);

#endif
