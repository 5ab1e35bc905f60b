/* One ACME order (RFC 8555 §7) run on a worker thread over libcurl: directory, nonce,
 * account (created, or found again for the same key), order, authorizations, challenges,
 * polling (Retry-After), finalize with the edge's CSR, certificate download. badNonce is
 * retried with the fresh nonce. The thread never touches the event loop: challenge
 * placement and the result come back to the loop thread through a uv_async. */
#ifndef DIRECTOR_ACME_CLIENT_H
#define DIRECTOR_ACME_CLIENT_H

#include "common/ctl.h"
#include "common/log.h"
#include "director/acme_proto.h"
#include <uv.h>

struct acme_job_req {
    char directory[ACME_URL_MAX];
    char ca_file[512];              /* CA bundle for the CA's HTTPS; "" = the system's */
    char contact[256];              /* "mailto:..." or "" */
    char *account_key;              /* PEM (copied) */
    char account_url[ACME_URL_MAX]; /* the kid from an earlier order, or "" */
    char names[CTL_DNSNAMES_MAX][CTL_DNSNAME_MAX];
    size_t n_names;
    enum ctl_challenge_kind kind;
    const uint8_t *csr; /* DER (copied) */
    size_t csr_len;
    uint32_t http_timeout_ms;  /* per request; 0 = 10 s */
    uint32_t order_timeout_ms; /* the whole order; 0 = 120 s */
    uint32_t place_timeout_ms; /* waiting for the loop to place challenges; 0 = 10 s */
    /* Instead of an order: GET this renewalInfo URL (ARI, RFC 9773: the directory's
     * renewalInfo "/" certID) into the result's window. */
    char ari_url[ACME_URL_MAX + 200];
    char label[96];           /* the edge, for logs */
    const struct logger *log; /* must outlive the order; written from the worker thread */
};

struct acme_place {
    enum ctl_challenge_kind kind;
    char name[CTL_DNSNAME_MAX];
    char token[CTL_TOKEN_MAX];
    char key_authorization[CTL_KEYAUTH_MAX];
};

struct acme_job_result {
    int rc;        /* 0: chain_pem holds the certificate */
    char step[32]; /* where it failed: "directory", "account", "order", ... */
    char error[256];
    char *chain_pem; /* malloc'd; the callee takes it (set to NULL) or it is freed */
    char account_url[ACME_URL_MAX];
    bool ari;                        /* the directory offers renewalInfo ... */
    char renewal_info[ACME_URL_MAX]; /* ... here */
    struct acme_renewal_info window; /* ARI mode: the suggested window */
    int64_t retry_after;             /* ARI mode: seconds until asking again (0: not said) */
    uint64_t nonce_retries;
};

struct acme_job;
struct acme_job_cbs {
    /* Loop thread: put these challenges in place, then call acme_job_placed (at once
     * or later; the worker gives up after place_timeout_ms). Not called when every
     * authorization is already valid. */
    void (*place)(struct acme_job *o, const struct acme_place *c, size_t n, void *arg);
    /* Loop thread: the order is over; o is freed after this returns. */
    void (*done)(struct acme_job *o, struct acme_job_result *r, void *arg);
};

/* Starts the worker; 0 or a negative errno. curl_global_init must have run. */
int acme_job_start(uv_loop_t *loop, const struct acme_job_req *req, const struct acme_job_cbs *cb,
                   void *arg, struct acme_job **out);
/* The challenges handed to place are ready (ok) or could not all be placed (then the
 * worker tries anyway: the CA decides). Loop thread. */
void acme_job_placed(struct acme_job *o);
/* Stops the worker (aborting its transfer), waits for it, frees o; done is not called. */
void acme_job_cancel(struct acme_job *o);

#endif
