/* The edge's side of ACME: see acme_edge.h. Everything here runs on the daemon's loop;
 * key generation and the fsync'd writes block it for a few milliseconds, once per order. */
#include "common/acme_edge.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/acme_challenges.h"
#include "common/acme_install.h"
#include "common/crypto.h"
#include "common/pki.h"
#include "common/tls_shared.h"

#define PLACEHOLDER_DAYS 90
#define CHALLENGE_TTL_S 3600 /* when the Director gives no expiry */
#define ACTIVE_MAX 64        /* the store's capacity */

const struct cfg_key acme_edge_keys[] = {
    {"enabled", CFG_BOOL, offsetof(struct acme_edge_config, enabled), "false",
     .help = "let the Director obtain and renew the certificate (needs director: enabled)"},
    /* Strings, not files: they need not exist yet (a placeholder is written at start). */
    {"cert", CFG_STR, offsetof(struct acme_edge_config, cert), NULL,
     .help = "certificate chain file the edge writes and its external listeners serve"},
    {"key", CFG_STR, offsetof(struct acme_edge_config, key), NULL,
     .help = "private key file the edge writes (mode 0600)"},
    CFG_END,
};

struct active {
    char id[CTL_DNSNAME_MAX]; /* token (HTTP-01) or name (TLS-ALPN-01) */
    int64_t expires;
};

struct acme_edge {
    const struct logger *log;
    char *cert, *key;
    struct acme_challenges *store;
    bool own_store;
    struct ctl_client *ctl;
    /* The order whose CSR was sent: its key stays here until its CertIssued. */
    char pending_order[CTL_ID_MAX];
    char pending_names[CTL_DNSNAMES_MAX][CTL_DNSNAME_MAX];
    size_t n_pending;
    char *pending_key;
    struct active active[ACTIVE_MAX];
    struct metric *m_csr_ok, *m_csr_fail, *m_installed, *m_install_fail, *m_chal_http, *m_chal_alpn,
        *m_chal_fail, *m_active;
};

/* ---- config ---- */

static int check_dir(const void *cfg, const char *keypath, const char *file, struct cfg_err *err)
{
    char dir[4096];
    const char *slash = strrchr(file, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - file) : 1, slash ? file : ".");
    if (!dir[0])
        snprintf(dir, sizeof dir, "/");
    if (access(dir, W_OK | X_OK)) {
        cfg_errorf(cfg, err, keypath, "cannot write in %s: %s", dir, strerror(errno));
        return -EINVAL;
    }
    if (access(file, F_OK) == 0 && access(file, R_OK)) {
        cfg_errorf(cfg, err, keypath, "cannot read %s: %s", file, strerror(errno));
        return -EINVAL;
    }
    return 0;
}

int acme_edge_config_check(const void *cfg, const struct acme_edge_config *a,
                           const char *listener_cert_path, const char *listener_cert,
                           const char *listener_key, struct cfg_err *err)
{
    if (!a->enabled)
        return 0;
    if (!a->cert || !a->key) {
        cfg_errorf(cfg, err, "acme.enabled", "acme needs cert and key (the files to write)");
        return -EINVAL;
    }
    if (!strcmp(a->cert, a->key)) {
        cfg_errorf(cfg, err, "acme.key", "the key must be a file of its own, not acme.cert");
        return -EINVAL;
    }
    if (check_dir(cfg, "acme.cert", a->cert, err) || check_dir(cfg, "acme.key", a->key, err))
        return -EINVAL;
    if (listener_cert &&
        (strcmp(listener_cert, a->cert) || (listener_key && strcmp(listener_key, a->key)))) {
        cfg_errorf(cfg, err, listener_cert_path,
                   "with acme enabled the listeners serve acme.cert and acme.key: leave this "
                   "out or name the same files");
        return -EINVAL;
    }
    return 0;
}

void acme_edge_tls_files(const struct acme_edge_config *a, const struct tls_files_config *in,
                         struct tls_files_config *out)
{
    *out = *in;
    if (a && a->enabled) {
        out->cert = a->cert;
        out->key = a->key;
    }
}

/* ---- files ---- */

static char *read_text(const char *path, char *err, size_t errcap)
{
    unsigned char *b;
    size_t n;
    return tls_read_file(path, &b, &n, err, errcap) ? NULL : (char *)b;
}

/* The certificate file inspected (with the key file when key_path is given). */
static int inspect_files(const char *cert_path, const char *key_path, struct pki_cert_info *info,
                         char *err, size_t errcap)
{
    char *chain = read_text(cert_path, err, errcap);
    if (!chain)
        return -ENOENT;
    char *key = NULL;
    if (key_path && !(key = read_text(key_path, err, errcap))) {
        free(chain);
        return -ENOENT;
    }
    int rc = pki_chain_inspect(chain, key, info, err, errcap);
    free(chain);
    free(key);
    return rc;
}

/* Writes key then certificate; if the certificate cannot be written, the old key goes back
 * (a new key beside the old certificate would be a pair that never loads). */
static int install_pair(struct acme_edge *e, const char *key_pem, const char *cert_pem, char *err,
                        size_t errcap)
{
    char ignore[256];
    char *old_key = read_text(e->key, ignore, sizeof ignore);
    int rc = acme_write_file(e->key, key_pem, strlen(key_pem), 0600, err, errcap);
    if (rc == 0) {
        rc = acme_write_file(e->cert, cert_pem, strlen(cert_pem), 0644, err, errcap);
        if (rc && old_key)
            acme_write_file(e->key, old_key, strlen(old_key), 0600, ignore, sizeof ignore);
    }
    if (old_key) {
        explicit_bzero(old_key, strlen(old_key));
        free(old_key);
    }
    return rc;
}

static void free_key(char **key)
{
    if (*key) {
        explicit_bzero(*key, strlen(*key));
        free(*key);
        *key = NULL;
    }
}

/* The placeholder: when either file is missing or they are not a pair (a crash between
 * the two renames of an install leaves a new key beside the old certificate). */
static int write_placeholder(struct acme_edge *e, const char *name)
{
    char err[256];
    struct pki_cert_info info;
    bool have = access(e->cert, F_OK) == 0 || access(e->key, F_OK) == 0;
    if (have && inspect_files(e->cert, e->key, &info, err, sizeof err) == 0)
        return 0;
    if (have)
        LOGW(e->log, NULL, "acme: %s and %s are not a usable pair (%s): writing a placeholder",
             e->cert, e->key, err);
    char *key = NULL, *cert = NULL;
    int rc = pki_key_generate(&key, err, sizeof err);
    if (rc == 0)
        rc = pki_self_signed(key, name, PLACEHOLDER_DAYS, &cert, err, sizeof err);
    if (rc == 0)
        rc = install_pair(e, key, cert, err, sizeof err);
    if (rc == 0)
        LOGI(e->log, NULL,
             "acme: wrote a self-signed placeholder for %s to %s (the Director replaces it)", name,
             e->cert);
    else
        LOGE(e->log, NULL, "acme: cannot write a placeholder certificate: %s", err);
    free_key(&key);
    free(cert);
    return rc;
}

/* ---- challenges in place, for the gauge ---- */

static void active_update(struct acme_edge *e, const char *id, bool add, int64_t expires)
{
    int64_t now = (int64_t)time(NULL);
    struct active *slot = NULL;
    for (size_t i = 0; i < ACTIVE_MAX; i++) {
        struct active *a = &e->active[i];
        if (a->id[0] && (a->expires <= now || !strcmp(a->id, id)))
            a->id[0] = '\0';
        if (!a->id[0] && !slot)
            slot = a;
    }
    if (add && slot) {
        snprintf(slot->id, sizeof slot->id, "%s", id);
        slot->expires = expires;
    }
    int64_t n = 0;
    for (size_t i = 0; i < ACTIVE_MAX; i++)
        n += e->active[i].id[0] != '\0';
    metric_set(e->m_active, n);
}

/* ---- messages ---- */

typedef int (*send_fn)(const struct ctl_msg *m, void *arg);

static void send_status(struct acme_edge *e, const char *error, send_fn send, void *arg)
{
    struct ctl_msg *m = calloc(1, sizeof *m);
    if (!m)
        return;
    m->type = CTL_MSG_CERT_STATUS;
    struct pki_cert_info info;
    char err[256];
    if (inspect_files(e->cert, NULL, &info, err, sizeof err) == 0)
        acme_status_fill(&info, &m->u.cert_status);
    else if (!error || !*error)
        error = err; /* no usable certificate: the Director asks for one */
    if (error)
        snprintf(m->u.cert_status.error, sizeof m->u.cert_status.error, "%s", error);
    if (!ctl_text_ok(m->u.cert_status.error))
        snprintf(m->u.cert_status.error, sizeof m->u.cert_status.error, "refused");
    send(m, arg);
    free(m);
}

static void on_csr_request(struct acme_edge *e, const struct ctl_csr_request *r, send_fn send,
                           void *arg)
{
    struct ctl_msg *m = calloc(1, sizeof *m);
    if (!m)
        return;
    m->type = CTL_MSG_CSR;
    snprintf(m->u.csr.order_id, sizeof m->u.csr.order_id, "%s", r->order_id);
    char err[256] = "";
    char *key = NULL;
    uint8_t *der = NULL;
    size_t der_len = 0;
    const char *names[CTL_DNSNAMES_MAX];
    int rc = acme_names_check(r->names, r->n_names, err, sizeof err);
    for (size_t i = 0; rc == 0 && i < r->n_names; i++)
        names[i] = r->names[i];
    if (rc == 0)
        rc = pki_key_generate(&key, err, sizeof err);
    if (rc == 0)
        rc = pki_csr_create(key, names, r->n_names, &der, &der_len, err, sizeof err);
    if (rc == 0 && der_len > CTL_CSR_MAX) {
        snprintf(err, sizeof err, "the request is %zu bytes (at most %d)", der_len, CTL_CSR_MAX);
        rc = -EMSGSIZE;
    }
    if (rc == 0) {
        memcpy(m->u.csr.der, der, der_len);
        m->u.csr.der_len = der_len;
        free_key(&e->pending_key); /* a new request replaces the old one */
        e->pending_key = key;
        key = NULL;
        snprintf(e->pending_order, sizeof e->pending_order, "%s", r->order_id);
        memcpy(e->pending_names, r->names, sizeof e->pending_names);
        e->n_pending = r->n_names;
        metric_inc(e->m_csr_ok);
        LOGI(e->log, NULL, "acme: order %s: new key, certificate request for %s%s", r->order_id,
             r->names[0], r->n_names > 1 ? " and more" : "");
    } else {
        snprintf(m->u.csr.error, sizeof m->u.csr.error, "%s", ctl_text_ok(err) ? err : "refused");
        metric_inc(e->m_csr_fail);
        LOGW(e->log, NULL, "acme: order %s: no certificate request: %s", r->order_id, err);
    }
    send(m, arg);
    free_key(&key);
    free(der);
    free(m);
}

static void on_cert_issued(struct acme_edge *e, const struct ctl_cert_issued *c, send_fn send,
                           void *arg)
{
    char err[256] = "";
    struct pki_cert_info info;
    int rc = 0;
    if (!e->pending_key || strcmp(c->order_id, e->pending_order)) {
        snprintf(err, sizeof err, "no certificate request pending for order %s", c->order_id);
        rc = -ENOENT;
    }
    if (rc == 0 && (rc = acme_chain_shape(c->chain_pem, err, sizeof err)) > 0)
        rc = 0;
    if (rc == 0)
        rc = pki_chain_inspect(c->chain_pem, e->pending_key, &info, err, sizeof err);
    if (rc == 0) /* a chain clients cannot follow would be an outage once installed */
        rc = pki_chain_check(c->chain_pem, err, sizeof err);
    if (rc == 0)
        rc = acme_issued_check(&info, e->pending_names, e->n_pending, (int64_t)time(NULL), err,
                               sizeof err);
    if (rc == 0)
        rc = install_pair(e, e->pending_key, c->chain_pem, err, sizeof err);
    if (rc) {
        metric_inc(e->m_install_fail);
        LOGW(e->log, NULL, "acme: order %s: certificate refused: %s", c->order_id, err);
        send_status(e, err, send, arg);
        return;
    }
    free_key(&e->pending_key);
    e->pending_order[0] = '\0';
    metric_inc(e->m_installed);
    char na[32];
    time_t t = (time_t)info.base.not_after;
    struct tm tm;
    strftime(na, sizeof na, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    LOGI(e->log, NULL,
         "acme: order %s: installed certificate %s (serial %s, notAfter %s) in %s; reloading "
         "when the pair is seen",
         c->order_id, info.base.subject, info.base.serial, na, e->cert);
    send_status(e, "", send, arg);
}

static void on_challenge(struct acme_edge *e, const struct ctl_challenge *c, send_fn send,
                         void *arg)
{
    bool http = c->kind == CTL_CHALLENGE_HTTP_01;
    const char *id = http ? c->token : c->name;
    if (c->remove) {
        acme_challenges_remove(e->store, id);
        active_update(e, id, false, 0);
        LOGD(e->log, NULL, "acme: challenge for %s removed", id);
        return;
    }
    int64_t now = (int64_t)time(NULL);
    int64_t expires = c->expires > now ? c->expires : now + CHALLENGE_TTL_S;
    char err[256] = "";
    int rc;
    if (c->kind == CTL_CHALLENGE_HTTP_01) {
        rc = acme_challenges_set_http(e->store, c->token, c->key_authorization, expires);
        if (rc)
            snprintf(err, sizeof err, "cannot keep the HTTP-01 challenge: %s", strerror(-rc));
    } else if (c->kind == CTL_CHALLENGE_TLS_ALPN_01) {
        uint8_t digest[SHA256_LEN];
        crypto_sha256(c->key_authorization, strlen(c->key_authorization), digest);
        char *cert = NULL, *key = NULL;
        rc = acme_dns_name_ok(c->name) ? 0 : -EINVAL;
        if (rc)
            snprintf(err, sizeof err, "not a DNS name");
        if (rc == 0 && c->name[0] == '*') {
            rc = -EINVAL;
            snprintf(err, sizeof err, "TLS-ALPN-01 does not validate a wildcard name (RFC 8737 3)");
        }
        if (rc == 0)
            rc = pki_alpn_challenge_cert(c->name, digest, &cert, &key, err, sizeof err);
        if (rc == 0 && (rc = acme_challenges_set_alpn(e->store, c->name, cert, key, expires)))
            snprintf(err, sizeof err, "cannot keep the TLS-ALPN-01 challenge: %s", strerror(-rc));
        free_key(&key);
        free(cert);
    } else {
        rc = -EINVAL;
        snprintf(err, sizeof err, "unknown challenge kind");
    }
    if (rc == 0) {
        active_update(e, id, true, expires);
        metric_inc(http ? e->m_chal_http : e->m_chal_alpn);
        LOGI(e->log, NULL, "acme: %s challenge for %s in place", http ? "HTTP-01" : "TLS-ALPN-01",
             http ? c->name : id);
    } else {
        metric_inc(e->m_chal_fail);
        LOGW(e->log, NULL, "acme: challenge for %s refused: %s", c->name, err);
    }
    struct ctl_msg *m = calloc(1, sizeof *m);
    if (!m)
        return;
    m->type = CTL_MSG_CHALLENGE_READY;
    snprintf(m->u.challenge_ready.token, sizeof m->u.challenge_ready.token, "%s", c->token);
    snprintf(m->u.challenge_ready.error, sizeof m->u.challenge_ready.error, "%s",
             ctl_text_ok(err) ? err : "refused");
    send(m, arg);
    free(m);
}

void acme_edge_handle(struct acme_edge *e, const struct ctl_msg *m, send_fn send, void *arg)
{
    switch (m->type) {
    case CTL_MSG_WELCOME:
        send_status(e, "", send, arg);
        break;
    case CTL_MSG_CSR_REQUEST:
        on_csr_request(e, &m->u.csr_request, send, arg);
        break;
    case CTL_MSG_CERT_ISSUED:
        on_cert_issued(e, &m->u.cert_issued, send, arg);
        break;
    case CTL_MSG_CHALLENGE:
        on_challenge(e, &m->u.challenge, send, arg);
        break;
    default:
        break;
    }
}

/* ---- the control channel ---- */

static int send_ctl(const struct ctl_msg *m, void *arg)
{
    struct acme_edge *e = arg;
    int rc = ctl_client_send(e->ctl, m);
    if (rc)
        LOGW(e->log, NULL, "acme: cannot answer the Director: %s", strerror(-rc));
    return rc;
}

static void on_ctl(const struct ctl_msg *m, void *arg)
{
    acme_edge_handle(arg, m, send_ctl, arg);
}

void acme_edge_attach(struct acme_edge *e, struct ctl_client *ctl)
{
    if (!e || !ctl)
        return;
    e->ctl = ctl;
    ctl_client_set_acme_handler(ctl, on_ctl, e);
}

int acme_edge_create(const struct logger *log, struct metrics *metrics,
                     const struct acme_edge_config *a, const char *name,
                     struct acme_challenges *store, struct acme_edge **out)
{
    *out = NULL;
    if (!a->enabled)
        return 0;
    if (!a->cert || !a->key)
        return -EINVAL;
    struct acme_edge *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->log = log;
    e->store = store;
    e->own_store = !store;
    e->cert = strdup(a->cert);
    e->key = strdup(a->key);
    if (!e->cert || !e->key || (!store && acme_challenges_create(&e->store))) {
        acme_edge_free(e);
        return -ENOMEM;
    }
    int rc = write_placeholder(e, name && *name ? name : "localhost");
    if (rc) {
        acme_edge_free(e);
        return rc;
    }
    if (metrics) {
        static const char csr_help[] = "Certificate requests made for the Director, by result";
        e->m_csr_ok = metrics_counter(metrics, "acme_csr_total", csr_help, "result=\"ok\"");
        e->m_csr_fail = metrics_counter(metrics, "acme_csr_total", csr_help, "result=\"error\"");
        e->m_installed = metrics_counter(metrics, "acme_certificates_installed_total",
                                         "Certificates from the Director written in place", NULL);
        e->m_install_fail =
            metrics_counter(metrics, "acme_install_failures_total",
                            "Certificates from the Director refused or not written", NULL);
        static const char chal_help[] = "ACME challenges put in place, by kind or error";
        e->m_chal_http =
            metrics_counter(metrics, "acme_challenges_total", chal_help, "kind=\"http-01\"");
        e->m_chal_alpn =
            metrics_counter(metrics, "acme_challenges_total", chal_help, "kind=\"tls-alpn-01\"");
        e->m_chal_fail =
            metrics_counter(metrics, "acme_challenges_total", chal_help, "kind=\"error\"");
        e->m_active = metrics_gauge(metrics, "acme_challenges_active",
                                    "ACME challenges this edge answers now", NULL);
        static const char hello_help[] =
            "TLS hellos offering just acme-tls/1, by whether their name has a challenge";
        acme_challenges_count_alpn(
            e->store,
            metrics_counter(metrics, "acme_tls_alpn_hellos_total", hello_help, "result=\"served\""),
            metrics_counter(metrics, "acme_tls_alpn_hellos_total", hello_help,
                            "result=\"unknown_name\""));
    }
    *out = e;
    return 0;
}

struct acme_challenges *acme_edge_store(const struct acme_edge *e)
{
    return e ? e->store : NULL;
}

void acme_edge_free(struct acme_edge *e)
{
    if (!e)
        return;
    if (e->own_store)
        acme_challenges_free(e->store);
    free_key(&e->pending_key);
    free(e->cert);
    free(e->key);
    free(e);
}
