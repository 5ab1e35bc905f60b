/* The Director's ACME glue: which edge needs a certificate (acme_sched.c), the exchange with
 * the edge over the control channel (CsrRequest -> Csr, Challenge -> ChallengeReady,
 * CertIssued -> CertStatus), the order itself on a worker thread (acme_client.c), retries
 * with backoff, GET /acme, POST /acme/renew and the metrics. Loop thread only. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/crypto.h"
#include "common/json.h"
#include "common/pki.h"
#include "director/acme_ari.h"
#include "director/acme_client.h"
#include "director/acme_sched.h"
#include "director/director.h"

#define ACME_EDGES_MAX 64
#define ACME_PENDING_MAX 256
#define TICK_MS 250
#define CSR_TIMEOUT_MS 30000
#define INSTALL_TIMEOUT_MS 60000

enum edge_state { ST_IDLE, ST_WAIT_CSR, ST_ORDERING, ST_WAIT_INSTALL, ST_BACKOFF };
static const char *const state_names[] = {"idle", "csr", "ordering", "installing", "backoff"};

/* One edge that sent CertStatus (so it runs acme_edge and answers challenges). */
struct acme;
struct acme_edge {
    struct acme *owner;
    bool used;
    enum ctl_role role;
    char instance[CTL_ID_MAX];
    struct ctl_peer *peer; /* NULL while disconnected */
    int entry;             /* index in cfg certificates, or -1: only answers challenges */
    bool has_status;
    struct ctl_cert_status status;
    enum edge_state state;
    bool force;
    char order_id[CTL_ID_MAX];
    struct acme_job *job;
    uint64_t since_ms; /* mono: entered the current state */
    unsigned failures;
    uint64_t next_attempt_ms; /* mono, in ST_BACKOFF */
    int64_t next_attempt_wall;
    char last_error[320];
    int64_t last_issued;
    uint64_t issued, failed;
    /* Challenges placed for the running order: sent to these peers, these tokens. */
    struct acme_place places[ACME_AUTHZ_MAX];
    size_t n_places;
    uint64_t place_deadline_ms;
    bool placing;
    /* ARI: the certID of the certificate the Director last issued to it (known only for
     * those: the AuthorityKeyIdentifier comes from the chain), and the CA's window for it. */
    char cert_id[ACME_CERT_ID_MAX];
    char cert_id_serial[100];
    bool has_ari;
    struct acme_renewal_info ari;
    uint64_t ari_next_ms;
    struct acme_job *ari_job;
    char ari_error[200];
};

struct acme_pending { /* a Challenge sent, its ChallengeReady awaited */
    struct ctl_peer *peer;
    struct acme_edge *for_edge;
    char token[CTL_TOKEN_MAX];
};

struct acme {
    struct director *d;
    const struct director_config *cfg; /* referenced: acme is a restart-only section */
    const struct director_acme_config *c;
    char *account_key;
    char account_url[ACME_URL_MAX];
    int ari; /* -1 unknown, 0 no, 1 the directory offers renewalInfo */
    char renewal_info[ACME_URL_MAX];
    struct acme_edge edges[ACME_EDGES_MAX];
    struct acme_pending pending[ACME_PENDING_MAX];
    size_t n_pending;
    uv_timer_t tick;
    uint64_t last_check_ms, seq;
    struct metric *m_issued, *m_failed, *m_backoff, *m_nonce_retries, *m_bad;
    struct metric **m_not_after; /* per certificates[] entry */
};

static const char *edge_label(const struct acme_edge *e, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s", ctl_role_name(e->role), e->instance);
    return buf;
}

static void set_state(struct acme_edge *e, enum edge_state st)
{
    e->state = st;
    e->since_ms = time_mono_ms();
}

static int entry_for(const struct acme *a, enum ctl_role role, const char *instance)
{
    for (size_t i = 0; i < a->c->n_certificates; i++) /* an instance id wins over a role */
        if (strcmp(a->c->certificates[i].edge, instance) == 0)
            return (int)i;
    for (size_t i = 0; i < a->c->n_certificates; i++)
        if (strcmp(a->c->certificates[i].edge, ctl_role_name(role)) == 0)
            return (int)i;
    return -1;
}

static struct acme_edge *edge_by_peer(struct acme *a, const struct ctl_peer *p)
{
    for (size_t i = 0; i < ACME_EDGES_MAX; i++)
        if (a->edges[i].used && a->edges[i].peer == p)
            return &a->edges[i];
    return NULL;
}

/* The edge (role, instance), registered now if new. */
static struct acme_edge *edge_for(struct acme *a, struct ctl_peer *p)
{
    const struct ctl_hello *h = ctl_peer_hello(p);
    struct acme_edge *free_slot = NULL;
    for (size_t i = 0; i < ACME_EDGES_MAX; i++) {
        struct acme_edge *e = &a->edges[i];
        if (e->used && e->role == h->role && strcmp(e->instance, h->instance_id) == 0) {
            e->peer = p;
            return e;
        }
        if (!e->used && !free_slot)
            free_slot = e;
    }
    if (!free_slot) /* reuse a disconnected idle one */
        for (size_t i = 0; i < ACME_EDGES_MAX && !free_slot; i++)
            if (!a->edges[i].peer && !a->edges[i].job && !a->edges[i].ari_job)
                free_slot = &a->edges[i];
    if (!free_slot)
        return NULL;
    memset(free_slot, 0, sizeof *free_slot);
    free_slot->owner = a;
    free_slot->used = true;
    free_slot->role = h->role;
    snprintf(free_slot->instance, sizeof free_slot->instance, "%s", h->instance_id);
    free_slot->peer = p;
    free_slot->entry = entry_for(a, h->role, h->instance_id);
    set_state(free_slot, ST_IDLE);
    return free_slot;
}

static void update_backoff_gauge(struct acme *a)
{
    int64_t n = 0;
    for (size_t i = 0; i < ACME_EDGES_MAX; i++)
        n += a->edges[i].used && a->edges[i].state == ST_BACKOFF;
    metric_set(a->m_backoff, n);
}

static void order_failed(struct acme *a, struct acme_edge *e, const char *step, const char *why)
{
    char lb[128];
    e->failures++;
    e->failed++;
    uint32_t rnd = 0;
    crypto_random(&rnd, sizeof rnd);
    uint64_t delay =
        acme_sched_backoff_ms(e->failures, a->c->retry_min_ms, a->c->retry_max_ms, rnd);
    e->next_attempt_ms = time_mono_ms() + delay;
    e->next_attempt_wall = time_wall_s() + (int64_t)(delay + 999) / 1000;
    snprintf(e->last_error, sizeof e->last_error, "%s: %s", step, why);
    e->job = NULL; /* a forced renewal stays forced until it succeeds */
    set_state(e, ST_BACKOFF);
    metric_inc(a->m_failed);
    update_backoff_gauge(a);
    LOGW(a->d->log, NULL, "acme: %s: order %s failed at %s: %s; attempt %u failed, next in %.1f s",
         edge_label(e, lb, sizeof lb), e->order_id, step, why, e->failures, (double)delay / 1000.0);
}

/* The CA's renewal window for the certificate the edge serves, when known. */
static const struct acme_renewal_info *edge_ari(const struct acme_edge *e)
{
    return e->has_ari && strcmp(e->cert_id_serial, e->status.serial) == 0 ? &e->ari : NULL;
}

/* ---- challenges on the edges ---- */

static void send_challenge(struct acme *a, struct ctl_peer *p, const struct acme_place *pl,
                           bool remove)
{
    struct ctl_msg m;
    memset(&m, 0, sizeof m);
    m.type = CTL_MSG_CHALLENGE;
    m.u.challenge.kind = pl->kind;
    snprintf(m.u.challenge.name, sizeof m.u.challenge.name, "%s", pl->name);
    snprintf(m.u.challenge.token, sizeof m.u.challenge.token, "%s", pl->token);
    snprintf(m.u.challenge.key_authorization, sizeof m.u.challenge.key_authorization, "%s",
             pl->key_authorization);
    m.u.challenge.remove = remove;
    m.u.challenge.expires = time_wall_s() + (int64_t)(a->c->order_timeout_ms / 1000) + 60;
    ctl_peer_send(p, &m);
}

/* Which connected edges answer a challenge of kind: HTTP-01 revproxy's plain-HTTP
 * listener, TLS-ALPN-01 every edge's TLS listeners (the name may resolve to any). */
static bool answers(const struct acme_edge *o, enum ctl_challenge_kind kind)
{
    return o->used && o->peer &&
           (kind == CTL_CHALLENGE_TLS_ALPN_01 || o->role == CTL_ROLE_REVPROXY);
}

static void pending_drop_edge(struct acme *a, const struct acme_edge *e)
{
    size_t w = 0;
    for (size_t i = 0; i < a->n_pending; i++)
        if (a->pending[i].for_edge != e)
            a->pending[w++] = a->pending[i];
    a->n_pending = w;
}

static bool pending_any(const struct acme *a, const struct acme_edge *e)
{
    for (size_t i = 0; i < a->n_pending; i++)
        if (a->pending[i].for_edge == e)
            return true;
    return false;
}

static void placing_done(struct acme *a, struct acme_edge *e, bool all)
{
    char lb[128];
    if (!e->placing)
        return;
    e->placing = false;
    pending_drop_edge(a, e);
    LOGI(a->d->log, NULL, "acme: %s: %s; asking the CA to validate", edge_label(e, lb, sizeof lb),
         all ? "every edge confirmed its challenges" : "challenge confirmation timed out");
    if (e->job)
        acme_job_placed(e->job);
}

static void on_place(struct acme_job *job, const struct acme_place *c, size_t n, void *arg)
{
    struct acme_edge *e = arg;
    struct acme *a = e->owner;
    char lb[128];
    e->n_places = n < ACME_AUTHZ_MAX ? n : ACME_AUTHZ_MAX;
    memcpy(e->places, c, e->n_places * sizeof *c);
    size_t sent = 0;
    for (size_t k = 0; k < e->n_places; k++)
        for (size_t i = 0; i < ACME_EDGES_MAX; i++) {
            struct acme_edge *o = &a->edges[i];
            if (!answers(o, c[k].kind) || a->n_pending >= ACME_PENDING_MAX)
                continue;
            send_challenge(a, o->peer, &c[k], false);
            struct acme_pending *pd = &a->pending[a->n_pending++];
            pd->peer = o->peer;
            pd->for_edge = e;
            snprintf(pd->token, sizeof pd->token, "%s", c[k].token);
            sent++;
        }
    e->placing = true;
    e->place_deadline_ms = time_mono_ms() + a->c->challenge_timeout_ms;
    LOGI(a->d->log, NULL, "acme: %s: %zu challenge(s) sent to the edges (%zu messages)",
         edge_label(e, lb, sizeof lb), e->n_places, sent);
    if (!sent)
        placing_done(a, e, false);
}

static void remove_challenges(struct acme *a, struct acme_edge *e)
{
    for (size_t k = 0; k < e->n_places; k++)
        for (size_t i = 0; i < ACME_EDGES_MAX; i++)
            if (answers(&a->edges[i], e->places[k].kind))
                send_challenge(a, a->edges[i].peer, &e->places[k], true);
    e->n_places = 0;
    e->placing = false;
    pending_drop_edge(a, e);
}

/* ---- the order ---- */

static void on_done(struct acme_job *job, struct acme_job_result *r, void *arg)
{
    struct acme_edge *e = arg;
    struct acme *a = e->owner;
    char lb[128];
    e->job = NULL;
    remove_challenges(a, e);
    if (r->account_url[0])
        snprintf(a->account_url, sizeof a->account_url, "%s", r->account_url);
    if (strcmp(r->step, "directory") != 0) { /* the directory was read */
        a->ari = r->ari;
        snprintf(a->renewal_info, sizeof a->renewal_info, "%s", r->renewal_info);
    }
    metric_add(a->m_nonce_retries, r->nonce_retries);
    if (r->rc) {
        order_failed(a, e, r->step[0] ? r->step : "order", r->error);
        return;
    }
    if (!e->peer) {
        order_failed(a, e, "install", "the edge disconnected during the order");
        return;
    }
    struct ctl_msg m;
    memset(&m, 0, sizeof m);
    m.type = CTL_MSG_CERT_ISSUED;
    snprintf(m.u.cert_issued.order_id, sizeof m.u.cert_issued.order_id, "%s", e->order_id);
    snprintf(m.u.cert_issued.chain_pem, sizeof m.u.cert_issued.chain_pem, "%s", r->chain_pem);
    struct pki_cert_info info;
    char err[128];
    memset(&info, 0, sizeof info);
    pki_chain_inspect(r->chain_pem, NULL, &info, err, sizeof err);
    int rc = ctl_peer_send(e->peer, &m);
    if (rc) {
        order_failed(a, e, "install", "the control connection failed");
        return;
    }
    /* ARI asks about a certificate by its issuer's key id and its serial. */
    uint8_t aki[ACME_AKI_MAX];
    size_t aki_len = 0;
    e->has_ari = false;
    e->ari_next_ms = 0;
    if (acme_cert_aki(r->chain_pem, aki, &aki_len) == 0 &&
        acme_ari_cert_id(aki, aki_len, info.base.serial, e->cert_id, sizeof e->cert_id) == 0)
        snprintf(e->cert_id_serial, sizeof e->cert_id_serial, "%s", info.base.serial);
    else
        e->cert_id[0] = '\0';
    set_state(e, ST_WAIT_INSTALL);
    LOGI(a->d->log, NULL,
         "acme: %s: order %s: certificate issued (serial %s, not after %" PRId64
         "); sent to the edge",
         edge_label(e, lb, sizeof lb), e->order_id, info.base.serial, info.base.not_after);
}

static void start_order(struct acme *a, struct acme_edge *e, const struct ctl_csr *csr)
{
    const struct director_acme_cert *ce = &a->c->certificates[e->entry];
    struct acme_job_req req;
    memset(&req, 0, sizeof req);
    snprintf(req.directory, sizeof req.directory, "%s", a->c->directory);
    snprintf(req.ca_file, sizeof req.ca_file, "%s", a->c->ca ? a->c->ca : "");
    snprintf(req.contact, sizeof req.contact, "%s", a->c->contact ? a->c->contact : "");
    req.account_key = a->account_key;
    snprintf(req.account_url, sizeof req.account_url, "%s", a->account_url);
    for (size_t i = 0; i < ce->n_names && i < CTL_DNSNAMES_MAX; i++)
        snprintf(req.names[req.n_names++], sizeof req.names[0], "%s", ce->names[i]);
    req.kind =
        ce->challenge == ACME_CHOICE_HTTP_01 ? CTL_CHALLENGE_HTTP_01 : CTL_CHALLENGE_TLS_ALPN_01;
    req.csr = csr->der;
    req.csr_len = csr->der_len;
    req.order_timeout_ms = (uint32_t)a->c->order_timeout_ms;
    req.place_timeout_ms = (uint32_t)a->c->challenge_timeout_ms + 2000;
    edge_label(e, req.label, sizeof req.label);
    req.log = a->d->log;
    static const struct acme_job_cbs cbs = {.place = on_place, .done = on_done};
    int rc = acme_job_start(a->d->loop, &req, &cbs, e, &e->job);
    if (rc) {
        e->job = NULL;
        order_failed(a, e, "order", strerror(-rc));
        return;
    }
    set_state(e, ST_ORDERING);
    LOGI(a->d->log, NULL, "acme: %s: order %s started with %s (%zu name(s), %s)", req.label,
         e->order_id, a->c->directory, req.n_names,
         req.kind == CTL_CHALLENGE_HTTP_01 ? "http-01" : "tls-alpn-01");
}

/* Asks the edge for a CSR when its certificate needs replacing (or a renewal was forced). */
static void evaluate(struct acme *a, struct acme_edge *e)
{
    if (!e->used || e->entry < 0 || !e->peer || !e->has_status)
        return;
    if (e->state != ST_IDLE && e->state != ST_BACKOFF)
        return;
    uint64_t now = time_mono_ms();
    if (e->state == ST_BACKOFF && now < e->next_attempt_ms)
        return;
    const struct director_acme_cert *ce = &a->c->certificates[e->entry];
    enum acme_need need = acme_sched_need(&e->status, (const char *const *)ce->names, ce->n_names,
                                          edge_ari(e), time_wall_s(), NULL);
    if (need == ACME_NEED_NONE && !e->force) {
        if (e->state == ST_BACKOFF) { /* it got a good certificate some other way */
            set_state(e, ST_IDLE);
            update_backoff_gauge(a);
        }
        return;
    }
    char lb[128];
    struct ctl_msg m;
    memset(&m, 0, sizeof m);
    m.type = CTL_MSG_CSR_REQUEST;
    snprintf(e->order_id, sizeof e->order_id, "%s-%" PRIu64, e->instance, ++a->seq);
    snprintf(m.u.csr_request.order_id, sizeof m.u.csr_request.order_id, "%s", e->order_id);
    for (size_t i = 0; i < ce->n_names && i < CTL_DNSNAMES_MAX; i++)
        snprintf(m.u.csr_request.names[m.u.csr_request.n_names++], CTL_DNSNAME_MAX, "%s",
                 ce->names[i]);
    if (ctl_peer_send(e->peer, &m) < 0)
        return; /* the peer is closing: on_gone follows */
    set_state(e, ST_WAIT_CSR);
    update_backoff_gauge(a);
    LOGI(a->d->log, NULL, "acme: %s: certificate needs replacing (%s%s); CsrRequest for order %s",
         edge_label(e, lb, sizeof lb),
         e->force && need == ACME_NEED_NONE ? "forced" : acme_need_name(need),
         e->failures ? ", retry" : "", e->order_id);
}

static void on_cert_status(struct acme *a, struct acme_edge *e, const struct ctl_cert_status *st)
{
    char lb[128];
    e->status = *st;
    e->has_status = true;
    LOGI(a->d->log, NULL, "acme: %s: serves %s%s (serial %s, not after %" PRId64 ")%s%s",
         edge_label(e, lb, sizeof lb), st->n_names ? st->names[0] : "no certificate",
         st->self_signed ? " self-signed" : "", st->serial, st->not_after,
         st->error[0] ? "; error: " : "", st->error);
    if (e->entry >= 0 && a->m_not_after)
        metric_set(a->m_not_after[e->entry], st->not_after);
    if (e->state == ST_WAIT_INSTALL) {
        if (st->error[0]) {
            order_failed(a, e, "install", st->error);
            return;
        }
        e->failures = 0;
        e->force = false;
        e->last_error[0] = '\0';
        e->last_issued = time_wall_s();
        e->issued++;
        metric_inc(a->m_issued);
        set_state(e, ST_IDLE);
        update_backoff_gauge(a);
        LOGI(a->d->log, NULL, "acme: %s: order %s done: the edge serves serial %s", lb, e->order_id,
             st->serial);
        return;
    }
    evaluate(a, e);
}

static void on_csr(struct acme *a, struct acme_edge *e, const struct ctl_csr *csr)
{
    char lb[128];
    if (e->state != ST_WAIT_CSR || strcmp(csr->order_id, e->order_id) != 0) {
        metric_inc(a->m_bad);
        LOGW(a->d->log, NULL, "acme: %s: unexpected Csr for order \"%s\" (state %s, order %s)",
             edge_label(e, lb, sizeof lb), csr->order_id, state_names[e->state], e->order_id);
        return;
    }
    if (csr->error[0] || !csr->der_len) {
        order_failed(a, e, "csr", csr->error[0] ? csr->error : "empty CSR");
        return;
    }
    LOGI(a->d->log, NULL, "acme: %s: Csr for order %s (%zu bytes)", edge_label(e, lb, sizeof lb),
         e->order_id, csr->der_len);
    start_order(a, e, csr);
}

static void on_ready(struct acme *a, struct ctl_peer *p, const struct ctl_challenge_ready *r)
{
    struct acme_edge *owner = NULL;
    bool found = false;
    for (size_t i = 0; i < a->n_pending; i++) {
        if (a->pending[i].peer == p && strcmp(a->pending[i].token, r->token) == 0) {
            owner = a->pending[i].for_edge;
            a->pending[i] = a->pending[--a->n_pending];
            found = true;
            break;
        }
    }
    const struct ctl_hello *h = ctl_peer_hello(p);
    if (!found) {
        metric_inc(a->m_bad);
        LOGD(a->d->log, NULL, "acme: ChallengeReady for unknown token %s from %s/%s", r->token,
             ctl_role_name(h->role), h->instance_id);
        return;
    }
    if (r->error[0])
        LOGW(a->d->log, NULL, "acme: %s/%s could not place challenge %s: %s",
             ctl_role_name(h->role), h->instance_id, r->token, r->error);
    if (!pending_any(a, owner))
        placing_done(a, owner, true);
}

void acme_on_ctl(struct director *d, struct ctl_peer *p, const struct ctl_msg *m)
{
    struct acme *a = d->acme;
    if (!a)
        return;
    if (m->type == CTL_MSG_CHALLENGE_READY) {
        on_ready(a, p, &m->u.challenge_ready);
        return;
    }
    struct acme_edge *e = m->type == CTL_MSG_CERT_STATUS ? edge_for(a, p) : edge_by_peer(a, p);
    if (!e) {
        metric_inc(a->m_bad);
        return;
    }
    if (m->type == CTL_MSG_CERT_STATUS)
        on_cert_status(a, e, &m->u.cert_status);
    else if (m->type == CTL_MSG_CSR)
        on_csr(a, e, &m->u.csr);
}

void acme_on_gone(struct director *d, struct ctl_peer *p)
{
    struct acme *a = d->acme;
    if (!a)
        return;
    size_t w = 0;
    for (size_t i = 0; i < a->n_pending; i++)
        if (a->pending[i].peer != p)
            a->pending[w++] = a->pending[i];
    a->n_pending = w;
    /* An order waiting only for this edge's confirmations need not wait for the timeout. */
    for (size_t i = 0; i < ACME_EDGES_MAX; i++)
        if (a->edges[i].used && a->edges[i].placing && !pending_any(a, &a->edges[i]))
            placing_done(a, &a->edges[i], false);
    struct acme_edge *e = edge_by_peer(a, p);
    if (!e)
        return;
    e->peer = NULL;
    if (e->state == ST_WAIT_CSR || e->state == ST_WAIT_INSTALL)
        set_state(e, ST_IDLE); /* asked again after its next CertStatus */
}

/* ---- ARI: the CA's renewal window for each certificate the Director issued ---- */

static void on_ari_done(struct acme_job *job, struct acme_job_result *r, void *arg)
{
    struct acme_edge *e = arg;
    struct acme *a = e->owner;
    char lb[128];
    e->ari_job = NULL;
    uint64_t again = a->c->check_interval_ms;
    if (r->retry_after > 0 && (uint64_t)r->retry_after * 1000 > again)
        again = (uint64_t)r->retry_after * 1000;
    e->ari_next_ms = time_mono_ms() + again;
    if (r->rc) {
        if (strcmp(e->ari_error, r->error) != 0) /* once per new reason, not every check */
            LOGW(a->d->log, NULL, "acme: %s: renewalInfo for %s: %s", edge_label(e, lb, sizeof lb),
                 e->cert_id, r->error);
        snprintf(e->ari_error, sizeof e->ari_error, "%s", r->error);
        return;
    }
    e->ari_error[0] = '\0';
    if (!e->has_ari || e->ari.start != r->window.start || e->ari.end != r->window.end)
        LOGI(a->d->log, NULL,
             "acme: %s: the CA suggests renewing serial %s between %" PRId64 " and %" PRId64
             " (ARI)",
             edge_label(e, lb, sizeof lb), e->cert_id_serial, r->window.start, r->window.end);
    e->ari = r->window;
    e->has_ari = true;
    evaluate(a, e);
}

static void start_ari(struct acme *a, struct acme_edge *e)
{
    struct acme_job_req req;
    memset(&req, 0, sizeof req);
    snprintf(req.ari_url, sizeof req.ari_url, "%s/%s", a->renewal_info, e->cert_id);
    snprintf(req.ca_file, sizeof req.ca_file, "%s", a->c->ca ? a->c->ca : "");
    edge_label(e, req.label, sizeof req.label);
    req.log = a->d->log;
    static const struct acme_job_cbs cbs = {.done = on_ari_done};
    if (acme_job_start(a->d->loop, &req, &cbs, e, &e->ari_job)) {
        e->ari_job = NULL;
        e->ari_next_ms = time_mono_ms() + a->c->check_interval_ms;
    }
}

/* ---- timer: challenge confirmations, CSR/install timeouts, backoff, periodic checks ---- */

static void on_tick(uv_timer_t *t)
{
    struct acme *a = t->data;
    uint64_t now = time_mono_ms();
    bool check = now - a->last_check_ms >= a->c->check_interval_ms;
    if (check)
        a->last_check_ms = now;
    for (size_t i = 0; i < ACME_EDGES_MAX; i++) {
        struct acme_edge *e = &a->edges[i];
        if (!e->used)
            continue;
        if (e->placing && now >= e->place_deadline_ms)
            placing_done(a, e, false);
        if (e->state == ST_WAIT_CSR && now - e->since_ms >= CSR_TIMEOUT_MS)
            order_failed(a, e, "csr", "the edge sent no Csr");
        else if (e->state == ST_WAIT_INSTALL && now - e->since_ms >= INSTALL_TIMEOUT_MS)
            order_failed(a, e, "install", "the edge did not confirm the new certificate");
        else if ((e->state == ST_BACKOFF && now >= e->next_attempt_ms) || check)
            evaluate(a, e);
        if (e->state == ST_IDLE && e->peer && e->cert_id[0] && a->renewal_info[0] && !e->ari_job &&
            now >= e->ari_next_ms)
            start_ari(a, e);
    }
}

/* ---- admin: GET /acme, POST /acme/renew?edge=X ---- */

static void jb_edge(struct acme *a, struct json_buf *j, const struct acme_edge *e)
{
    const struct director_acme_cert *ce = &a->c->certificates[e->entry];
    json_printf(j, "{\"edge\":");
    json_str(j, ce->edge);
    json_printf(j, ",\"role\":");
    json_str(j, ctl_role_name(e->role));
    json_printf(j, ",\"instance\":");
    json_str(j, e->instance);
    json_printf(j, ",\"connected\":%s,\"state\":\"%s\",\"challenge\":\"%s\",\"names\":[",
                e->peer ? "true" : "false", state_names[e->state],
                ce->challenge == ACME_CHOICE_HTTP_01 ? "http-01" : "tls-alpn-01");
    for (size_t i = 0; i < ce->n_names; i++) {
        json_printf(j, i ? "," : "");
        json_str(j, ce->names[i]);
    }
    json_printf(j, "],\"order\":");
    json_str(j, e->order_id);
    if (e->has_status) {
        int64_t due = 0;
        enum acme_need need = acme_sched_need(&e->status, (const char *const *)ce->names,
                                              ce->n_names, edge_ari(e), time_wall_s(), &due);
        json_printf(
            j, ",\"need\":\"%s\",\"renew_at\":%" PRId64 ",\"serial\":", acme_need_name(need), due);
        json_str(j, e->status.serial);
        json_printf(j,
                    ",\"not_before\":%" PRId64 ",\"not_after\":%" PRId64
                    ",\"self_signed\":%s,\"serving\":[",
                    e->status.not_before, e->status.not_after,
                    e->status.self_signed ? "true" : "false");
        for (size_t i = 0; i < e->status.n_names; i++) {
            json_printf(j, i ? "," : "");
            json_str(j, e->status.names[i]);
        }
        json_printf(j, "],\"edge_error\":");
        json_str(j, e->status.error);
    }
    json_printf(j, ",\"cert_id\":");
    json_str(j, e->cert_id);
    if (edge_ari(e))
        json_printf(j, ",\"ari\":{\"start\":%" PRId64 ",\"end\":%" PRId64 "}", e->ari.start,
                    e->ari.end);
    else
        json_printf(j, ",\"ari\":null");
    json_printf(j, ",\"failures\":%u,\"next_attempt\":", e->failures);
    if (e->state == ST_BACKOFF)
        json_printf(j, "%" PRId64, e->next_attempt_wall);
    else
        json_printf(j, "null");
    json_printf(j, ",\"last_error\":");
    json_str(j, e->last_error);
    json_printf(j, ",\"last_issued\":%" PRId64 ",\"issued\":%" PRIu64 ",\"failed\":%" PRIu64 "}",
                e->last_issued, e->issued, e->failed);
}

static void get_status(struct acme *a, struct admin_reply *reply)
{
    struct json_buf j = {0};
    json_printf(&j, "{\"enabled\":true,\"directory\":");
    json_str(&j, a->c->directory);
    json_printf(&j, ",\"account\":");
    json_str(&j, a->account_url);
    json_printf(&j, ",\"renewal_info\":%s,\"certificates\":[",
                a->ari < 0 ? "null"
                : a->ari   ? "true"
                           : "false");
    bool first = true;
    for (size_t i = 0; i < ACME_EDGES_MAX; i++) {
        const struct acme_edge *e = &a->edges[i];
        if (!e->used || e->entry < 0)
            continue;
        json_printf(&j, first ? "" : ",");
        first = false;
        jb_edge(a, &j, e);
    }
    /* Configured edges that never connected. */
    json_printf(&j, "],\"waiting\":[");
    first = true;
    for (size_t k = 0; k < a->c->n_certificates; k++) {
        bool seen = false;
        for (size_t i = 0; i < ACME_EDGES_MAX && !seen; i++)
            seen = a->edges[i].used && a->edges[i].entry == (int)k;
        if (seen)
            continue;
        json_printf(&j, first ? "" : ",");
        first = false;
        json_str(&j, a->c->certificates[k].edge);
    }
    json_printf(&j, "]}");
    admin_reply_json(reply, 200, &j);
}

static void post_renew(struct acme *a, const char *query, const char *body, size_t body_len,
                       struct admin_reply *reply)
{
    char which[CTL_ID_MAX];
    int rc = admin_query_get(query, strlen(query), "edge", which, sizeof which);
    if (rc == 0 && body && body_len)
        rc = admin_query_get(body, body_len, "edge", which, sizeof which);
    if (rc != 1 || !which[0]) {
        admin_reply_json_error(reply, 400, "need edge=ROLE|INSTANCE");
        return;
    }
    struct json_buf j = {0};
    json_printf(&j, "{\"renewing\":[");
    size_t n = 0, busy = 0;
    for (size_t i = 0; i < ACME_EDGES_MAX; i++) {
        struct acme_edge *e = &a->edges[i];
        if (!e->used || e->entry < 0 ||
            (strcmp(which, e->instance) && strcmp(which, ctl_role_name(e->role)) &&
             strcmp(which, a->c->certificates[e->entry].edge)))
            continue;
        if (e->state != ST_IDLE && e->state != ST_BACKOFF) {
            busy++;
            continue;
        }
        e->force = true;
        if (e->state == ST_BACKOFF)
            e->next_attempt_ms = 0;
        evaluate(a, e);
        json_printf(&j, n++ ? "," : "");
        json_str(&j, e->instance);
    }
    json_printf(&j, "],\"in_progress\":%zu}", busy);
    LOGI(a->d->log, NULL, "acme: renewal forced for %s: %zu edge(s), %zu already in progress",
         which, n, busy);
    if (!n && !busy) {
        free(j.p);
        admin_reply_json_error(reply, 404, "no connected edge with an ACME certificate matches");
        return;
    }
    admin_reply_json(reply, 200, &j);
}

static void acme_admin(const char *method, const char *path, const char *query, const char *body,
                       size_t body_len, struct admin_reply *reply, void *arg)
{
    struct director *d = arg;
    struct acme *a = d->acme;
    query = query ? query : "";
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    if (!a)
        admin_reply_json_error(reply, 503, "stopping");
    else if (strcmp(path, "/acme") == 0 && get)
        get_status(a, reply);
    else if (strcmp(path, "/acme/renew") == 0 && post)
        post_renew(a, query, body, body_len, reply);
    else if (strcmp(path, "/acme") == 0 || strcmp(path, "/acme/renew") == 0)
        admin_reply_json_error(reply, 405, "method not allowed");
    else
        admin_reply_json_error(reply, 404, "not found");
}

/* ---- account key ---- */

static int load_account_key(struct acme *a, char **out)
{
    const char *path = a->c->account_key;
    FILE *f = fopen(path, "r");
    if (f) {
        char *buf = calloc(1, 16384);
        size_t n = buf ? fread(buf, 1, 16383, f) : 0;
        fclose(f);
        struct stat st;
        if (stat(path, &st) == 0 && (st.st_mode & 077))
            LOGW(a->d->log, NULL, "acme: account key %s is readable by others (mode %03o)", path,
                 st.st_mode & 0777);
        uint8_t x[32], y[32];
        char err[128];
        if (!buf || !n || pki_es256_public(buf, x, y, err, sizeof err)) {
            LOGE(a->d->log, NULL, "acme: account key %s is not a P-256 key: %s", path,
                 buf && n ? err : "empty");
            free(buf);
            return -EINVAL;
        }
        *out = buf;
        LOGI(a->d->log, NULL, "acme: account key %s", path);
        return 0;
    }
    if (errno != ENOENT) {
        int rc = -errno;
        LOGE(a->d->log, NULL, "acme: cannot read the account key %s: %s", path, strerror(-rc));
        return rc;
    }
    char err[128];
    char *pem = NULL;
    int rc = pki_key_generate(&pem, err, sizeof err);
    if (rc) {
        LOGE(a->d->log, NULL, "acme: cannot make an account key: %s", err);
        return rc;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    size_t len = strlen(pem);
    if (fd < 0 || write(fd, pem, len) != (ssize_t)len || fsync(fd) != 0) {
        rc = -errno;
        LOGE(a->d->log, NULL, "acme: cannot write the account key %s: %s", path, strerror(-rc));
        if (fd >= 0) {
            close(fd);
            unlink(path);
        }
        free(pem);
        return rc;
    }
    close(fd);
    LOGI(a->d->log, NULL, "acme: created account key %s (P-256, mode 0600)", path);
    *out = pem;
    return 0;
}

/* ---- lifecycle ---- */

static void register_metrics(struct acme *a, struct metrics *m)
{
    a->m_issued =
        metrics_counter(m, "acme_orders_total", "ACME orders by result", "result=\"issued\"");
    a->m_failed =
        metrics_counter(m, "acme_orders_total", "ACME orders by result", "result=\"failed\"");
    a->m_backoff = metrics_gauge(m, "acme_edges_backing_off",
                                 "edges whose last order failed, waiting to retry", NULL);
    a->m_nonce_retries =
        metrics_counter(m, "acme_bad_nonce_retries_total", "requests retried after badNonce", NULL);
    a->m_bad = metrics_counter(m, "acme_unexpected_messages_total",
                               "ACME control messages out of turn (unknown order, token)", NULL);
    a->m_not_after =
        calloc(a->c->n_certificates ? a->c->n_certificates : 1, sizeof *a->m_not_after);
    for (size_t i = 0; a->m_not_after && i < a->c->n_certificates; i++) {
        char labels[128];
        snprintf(labels, sizeof labels, "edge=\"%s\"", a->c->certificates[i].edge);
        a->m_not_after[i] =
            metrics_gauge(m, "acme_certificate_not_after_seconds",
                          "not_after of the certificate the edge serves (unix s)", labels);
    }
}

int acme_start(struct director *d)
{
    const struct director_acme_config *c = &d->cfg->acme;
    if (!c->enabled)
        return 0;
    struct acme *a = calloc(1, sizeof *a);
    if (!a)
        return -ENOMEM;
    a->d = d;
    a->cfg = cfg_ref(d->cfg);
    a->c = &a->cfg->acme;
    a->ari = -1;
    int rc = load_account_key(a, &a->account_key);
    if (rc) {
        cfg_free((void *)a->cfg);
        free(a);
        return rc;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (d->metrics)
        register_metrics(a, d->metrics);
    if (d->admin && ((rc = admin_route(d->admin, "/acme", acme_admin, d)))) {
        LOGE(d->log, NULL, "acme: cannot register the admin endpoints: %s", strerror(-rc));
        free(a->account_key);
        free(a->m_not_after);
        cfg_free((void *)a->cfg);
        free(a);
        return rc;
    }
    uv_timer_init(d->loop, &a->tick);
    a->tick.data = a;
    a->last_check_ms = time_mono_ms();
    uv_timer_start(&a->tick, on_tick, TICK_MS, TICK_MS);
    d->acme = a;
    LOGI(d->log, NULL,
         "acme: directory %s, %zu certificate(s), check every %llu ms, retry %llu..%llu ms",
         c->directory, c->n_certificates, (unsigned long long)c->check_interval_ms,
         (unsigned long long)c->retry_min_ms, (unsigned long long)c->retry_max_ms);
    return 0;
}

static void on_tick_closed(uv_handle_t *h)
{
    struct acme *a = h->data;
    if (a->account_key) {
        memset(a->account_key, 0, strlen(a->account_key));
        free(a->account_key);
    }
    free(a->m_not_after);
    cfg_free((void *)a->cfg);
    free(a);
    curl_global_cleanup();
}

void acme_stop(struct director *d)
{
    struct acme *a = d->acme;
    if (!a)
        return;
    d->acme = NULL;
    for (size_t i = 0; i < ACME_EDGES_MAX; i++) {
        acme_job_cancel(a->edges[i].job);
        a->edges[i].job = NULL;
        acme_job_cancel(a->edges[i].ari_job);
        a->edges[i].ari_job = NULL;
    }
    uv_close((uv_handle_t *)&a->tick, on_tick_closed);
}

/* ---- config ---- */

static bool dns_name_ok(const char *s)
{
    size_t n = strlen(s), label = 0;
    if (!n || n > 253)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '.') {
            if (!label || s[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || (ch == '-' && label > 0);
        if (!ok || ++label > 63)
            return false;
    }
    return label > 0 && strchr(s, '.') != NULL; /* a CA issues for FQDNs only */
}

int acme_config_validate(const struct director_config *cfg, struct cfg_err *err)
{
    const struct director_acme_config *c = &cfg->acme;
    if (c->retry_min_ms > c->retry_max_ms) {
        cfg_errorf(cfg, err, "acme.retry_min",
                   "retry_min (%llu ms) is longer than retry_max (%llu ms)",
                   (unsigned long long)c->retry_min_ms, (unsigned long long)c->retry_max_ms);
        return -EINVAL;
    }
    for (size_t i = 0; i < c->n_certificates; i++) {
        const struct director_acme_cert *ce = &c->certificates[i];
        char path[64];
        enum ctl_role role;
        snprintf(path, sizeof path, "acme.certificates[%zu].edge", i);
        if (!ce->edge[0] || strlen(ce->edge) >= CTL_ID_MAX ||
            (ctl_role_parse(ce->edge, &role) == 0 && role == CTL_ROLE_DIRECTOR)) {
            cfg_errorf(cfg, err, path, "edge must be an edge role or an instance id");
            return -EINVAL;
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(c->certificates[k].edge, ce->edge) == 0) {
                cfg_errorf(cfg, err, path, "edge \"%s\" is listed twice", ce->edge);
                return -EINVAL;
            }
        snprintf(path, sizeof path, "acme.certificates[%zu].names", i);
        if (ce->n_names < 1 || ce->n_names > CTL_DNSNAMES_MAX) {
            cfg_errorf(cfg, err, path, "a certificate needs 1 to %d names", CTL_DNSNAMES_MAX);
            return -EINVAL;
        }
        for (size_t k = 0; k < ce->n_names; k++)
            if (!dns_name_ok(ce->names[k])) {
                cfg_errorf(cfg, err, path,
                           "\"%s\" is not a DNS name a CA issues for (no wildcards)", ce->names[k]);
                return -EINVAL;
            }
    }
    if (!c->enabled)
        return 0;
    if (!c->directory || strncmp(c->directory, "https://", 8) != 0 ||
        strlen(c->directory) >= ACME_URL_MAX) {
        cfg_errorf(
            cfg, err, c->directory ? "acme.directory" : "acme",
            "an enabled acme section needs directory: https://... (the CA's ACME directory)");
        return -EINVAL;
    }
    if (!c->n_certificates) {
        cfg_errorf(cfg, err, "acme", "an enabled acme section needs certificates: [{edge, names}]");
        return -EINVAL;
    }
    if (c->contact && strncmp(c->contact, "mailto:", 7) != 0) {
        cfg_errorf(cfg, err, "acme.contact", "contact must be a mailto: URL");
        return -EINVAL;
    }
    if (!c->account_key || !c->account_key[0]) {
        cfg_errorf(cfg, err, "acme", "an enabled acme section needs account_key");
        return -EINVAL;
    }
    return 0;
}
