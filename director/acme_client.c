/* One ACME order on a worker thread over libcurl (RFC 8555). */
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/crypto.h"
#include "common/pki.h"
#include "common/util.h"
#include "director/acme_client.h"
#include "director/acme_jws.h"

#define BODY_MAX (1 << 20) /* no ACME answer is near this; a chain is a few kB */
#define NONCE_RETRIES 5

struct http_resp {
    long status;
    char *body;
    size_t len;
    bool too_big;
    char nonce[256], location[ACME_URL_MAX], retry_after[64], ctype[128];
};

struct acme_job {
    struct acme_job_req req;
    struct acme_job_cbs cb;
    void *arg;
    uv_async_t async;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* under mu */
    bool place_pending, placed, finished, cancel, done_reported;
    struct acme_place places[ACME_AUTHZ_MAX];
    size_t n_places;
    struct acme_job_result res;
    /* worker only */
    CURL *curl;
    char nonce[256];
    char jwk[ACME_JWK_MAX], thumb[ACME_THUMB_LEN + 1];
    struct acme_directory dir;
    uint64_t deadline_ms;
};

/* ---- worker: HTTP ---- */

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct http_resp *r = arg;
    size_t len = size * n;
    if (r->len + len > BODY_MAX) {
        r->too_big = true;
        return 0;
    }
    char *b = realloc(r->body, r->len + len + 1);
    if (!b)
        return 0;
    memcpy(b + r->len, p, len);
    r->body = b;
    r->len += len;
    b[r->len] = '\0';
    return len;
}

/* Copies the value of header `name` from line into out when the line is that header. */
static void header_value(const char *line, size_t len, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    if (len <= nl + 1 || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
        return;
    const char *v = line + nl + 1;
    size_t vl = len - nl - 1;
    while (vl && (*v == ' ' || *v == '\t'))
        v++, vl--;
    while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
        vl--;
    if (vl < cap) {
        memcpy(out, v, vl);
        out[vl] = '\0';
    }
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct http_resp *r = arg;
    size_t len = size * n;
    header_value(p, len, "Replay-Nonce", r->nonce, sizeof r->nonce);
    header_value(p, len, "Location", r->location, sizeof r->location);
    header_value(p, len, "Retry-After", r->retry_after, sizeof r->retry_after);
    header_value(p, len, "Content-Type", r->ctype, sizeof r->ctype);
    return len;
}

static int on_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    struct acme_job *o = arg;
    pthread_mutex_lock(&o->mu);
    bool stop = o->cancel;
    pthread_mutex_unlock(&o->mu);
    return stop; /* non-zero aborts the transfer */
}

static void resp_free(struct http_resp *r)
{
    free(r->body);
    memset(r, 0, sizeof *r);
}

static void set_error(struct acme_job *o, const char *step, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_error(struct acme_job *o, const char *step, const char *fmt, ...)
{
    snprintf(o->res.step, sizeof o->res.step, "%s", step);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->res.error, sizeof o->res.error, fmt, ap);
    va_end(ap);
}

/* GET (body NULL, head false), HEAD (head true) or POST of a JWS. 0 once an answer came
 * (any status), or a negative errno with the error set for step. */
static int http(struct acme_job *o, const char *step, const char *url, const char *body, bool head,
                const char *accept, struct http_resp *r)
{
    memset(r, 0, sizeof *r);
    CURL *c = o->curl;
    curl_easy_reset(c);
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS,
                     (long)(o->req.http_timeout_ms ? o->req.http_timeout_ms : 10000));
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    if (o->req.ca_file[0])
        curl_easy_setopt(c, CURLOPT_CAINFO, o->req.ca_file);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "edge-suite-director-acme/1");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, o);
    struct curl_slist *h = NULL;
    char acc[96];
    snprintf(acc, sizeof acc, "Accept: %s", accept ? accept : "application/json");
    h = curl_slist_append(h, acc);
    if (body) {
        h = curl_slist_append(h, "Content-Type: application/jose+json");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    } else if (head) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    CURLcode cc = curl_easy_perform(c);
    curl_slist_free_all(h);
    if (cc != CURLE_OK) {
        set_error(o, step, "%s: %s", url,
                  r->too_big  ? "answer too large"
                  : errbuf[0] ? errbuf
                              : curl_easy_strerror(cc));
        resp_free(r);
        return cc == CURLE_ABORTED_BY_CALLBACK ? -ECANCELED : -EIO;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->nonce[0])
        snprintf(o->nonce, sizeof o->nonce, "%s", r->nonce);
    return 0;
}

/* The problem document in an error answer, as "type: detail" into the error for step. */
static int fail_answer(struct acme_job *o, const char *step, const char *url,
                       const struct http_resp *r)
{
    struct acme_problem p;
    char perr[64];
    if (r->body && acme_parse_problem(r->body, r->len, &p, perr, sizeof perr) == 0)
        set_error(o, step, "%ld %s: %s", r->status, p.type, p.detail);
    else
        set_error(o, step, "%s answered %ld", url, r->status);
    return -EPROTO;
}

static int sign_cb(const void *data, size_t len, uint8_t sig[64], void *arg)
{
    struct acme_job *o = arg;
    char err[128];
    return pki_es256_sign(o->req.account_key, data, len, sig, err, sizeof err);
}

static bool is_problem(const struct http_resp *r, const char *type)
{
    struct acme_problem p;
    char perr[64];
    char full[128];
    snprintf(full, sizeof full, "urn:ietf:params:acme:error:%s", type);
    return r->body && acme_parse_problem(r->body, r->len, &p, perr, sizeof perr) == 0 &&
           strcmp(p.type, full) == 0;
}

/* A signed POST to url (payload "" for POST-as-GET), with the account's kid (or its JWK for
 * newAccount). A badNonce answer is retried with the nonce it carried. */
static int post(struct acme_job *o, const char *step, const char *url, const char *payload,
                bool with_jwk, const char *accept, struct http_resp *r)
{
    memset(r, 0, sizeof *r); /* callers free it whatever happened */
    for (int attempt = 0;; attempt++) {
        if (!o->nonce[0]) {
            struct http_resp nr;
            int rc = http(o, step, o->dir.new_nonce, NULL, true, NULL, &nr);
            resp_free(&nr);
            if (rc)
                return rc;
            if (!o->nonce[0]) {
                set_error(o, step, "%s gave no Replay-Nonce", o->dir.new_nonce);
                return -EPROTO;
            }
        }
        char *prot = acme_jws_protected(with_jwk ? o->jwk : NULL,
                                        with_jwk ? NULL : o->res.account_url, o->nonce, url);
        o->nonce[0] = '\0'; /* each nonce is good once */
        char *jws = NULL;
        int rc = prot ? acme_jws_flattened(prot, payload, sign_cb, o, &jws) : -ENOMEM;
        free(prot);
        if (rc) {
            set_error(o, step, "cannot sign the request: %s", strerror(-rc));
            return rc;
        }
        rc = http(o, step, url, jws, false, accept, r);
        free(jws);
        if (rc)
            return rc;
        if (r->status == 400 && is_problem(r, "badNonce") && attempt < NONCE_RETRIES) {
            o->res.nonce_retries++;
            resp_free(r);
            continue;
        }
        return 0;
    }
}

static bool past_deadline(struct acme_job *o)
{
    return time_mono_ms() >= o->deadline_ms;
}

/* Sleeps ms (less near the deadline), waking early on cancel; false when cancelled. */
static bool nap(struct acme_job *o, uint64_t ms)
{
    uint64_t left = o->deadline_ms > time_mono_ms() ? o->deadline_ms - time_mono_ms() : 0;
    if (ms > left)
        ms = left;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&o->mu);
    while (!o->cancel && pthread_cond_timedwait(&o->cv, &o->mu, &ts) == 0)
        ;
    bool ok = !o->cancel;
    pthread_mutex_unlock(&o->mu);
    return ok;
}

/* How long to wait before polling again: Retry-After when the CA gave one (capped). */
static uint64_t poll_delay(const struct http_resp *r, uint64_t dflt)
{
    int64_t s;
    if (r->retry_after[0] && acme_parse_retry_after(r->retry_after, time_wall_s(), &s) == 0)
        return s > 10 ? 10000 : s < 1 ? 200 : (uint64_t)s * 1000;
    return dflt;
}

/* ---- worker: the order's steps ---- */

#define LOGO(o, lvl, ...) log_emit((o)->req.log, (lvl), NULL, __VA_ARGS__)

static int step_directory(struct acme_job *o)
{
    struct http_resp r;
    int rc = http(o, "directory", o->req.directory, NULL, false, NULL, &r);
    if (rc)
        return rc;
    char err[128];
    if (r.status != 200) {
        rc = fail_answer(o, "directory", o->req.directory, &r);
    } else if (acme_parse_directory(r.body ? r.body : "", r.len, &o->dir, err, sizeof err)) {
        set_error(o, "directory", "bad directory: %s", err);
        rc = -EBADMSG;
    }
    o->res.ari = o->dir.renewal_info[0] != '\0';
    snprintf(o->res.renewal_info, sizeof o->res.renewal_info, "%s", o->dir.renewal_info);
    resp_free(&r);
    return rc;
}

static int step_account(struct acme_job *o)
{
    json_t *p = json_pack("{s:b}", "termsOfServiceAgreed", 1);
    if (o->req.contact[0])
        json_object_set_new(p, "contact", json_pack("[s]", o->req.contact));
    char *payload = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    struct http_resp r;
    int rc = payload ? post(o, "account", o->dir.new_account, payload, true, NULL, &r) : -ENOMEM;
    free(payload);
    if (rc)
        return rc;
    /* 201: created; 200: this key's existing account. */
    if (r.status != 200 && r.status != 201) {
        rc = fail_answer(o, "account", o->dir.new_account, &r);
    } else if (!r.location[0]) {
        set_error(o, "account", "no account URL (Location) in the answer");
        rc = -EPROTO;
    } else {
        snprintf(o->res.account_url, sizeof o->res.account_url, "%s", r.location);
        LOGO(o, LOG_INFO, "acme: %s: account %s (%s)", o->req.label, r.location,
             r.status == 201 ? "created" : "existing");
    }
    resp_free(&r);
    return rc;
}

/* A 200/201 answer carrying an order object into *ord. */
static int order_answer(struct acme_job *o, const char *step, const char *url,
                        const struct http_resp *r, struct acme_order *ord)
{
    if (r->status != 200 && r->status != 201)
        return fail_answer(o, step, url, r);
    char err[128];
    if (acme_parse_order(r->body ? r->body : "", r->len, ord, err, sizeof err)) {
        set_error(o, step, "bad order: %s", err);
        return -EBADMSG;
    }
    return 0;
}

static int step_new_order(struct acme_job *o, char *order_url, size_t cap, struct acme_order *ord)
{
    json_t *ids = json_array();
    for (size_t i = 0; i < o->req.n_names; i++)
        json_array_append_new(ids, json_pack("{s:s,s:s}", "type", "dns", "value", o->req.names[i]));
    json_t *p = json_pack("{s:o}", "identifiers", ids);
    char *payload = p ? json_dumps(p, JSON_COMPACT) : NULL;
    json_decref(p);
    struct http_resp r;
    int rc = payload ? post(o, "order", o->dir.new_order, payload, false, NULL, &r) : -ENOMEM;
    free(payload);
    if (rc)
        return rc;
    if (r.status == 400 || r.status == 403 || r.status == 401) {
        /* A CA that forgot the account (pebble restarted) says so: register again once. */
        if (is_problem(&r, "accountDoesNotExist") || is_problem(&r, "unauthorized")) {
            resp_free(&r);
            return -ENOENT;
        }
    }
    rc = order_answer(o, "order", o->dir.new_order, &r, ord);
    if (rc == 0 && !r.location[0]) {
        set_error(o, "order", "no order URL (Location) in the answer");
        rc = -EPROTO;
    }
    if (rc == 0)
        snprintf(order_url, cap, "%s", r.location);
    resp_free(&r);
    return rc;
}

static const char *kind_type(enum ctl_challenge_kind k)
{
    return k == CTL_CHALLENGE_HTTP_01 ? "http-01" : "tls-alpn-01";
}

static int get_authz(struct acme_job *o, const char *url, struct acme_authz *a, struct http_resp *r)
{
    int rc = post(o, "authorization", url, "", false, NULL, r);
    if (rc)
        return rc;
    char err[128];
    if (r->status != 200)
        return fail_answer(o, "authorization", url, r);
    if (acme_parse_authz(r->body ? r->body : "", r->len, a, err, sizeof err)) {
        set_error(o, "authorization", "bad authorization: %s", err);
        return -EBADMSG;
    }
    return 0;
}

/* Hands the challenges to the loop and waits until it says they are in place. */
static int place_and_wait(struct acme_job *o)
{
    uint32_t wait = o->req.place_timeout_ms ? o->req.place_timeout_ms : 10000;
    pthread_mutex_lock(&o->mu);
    o->place_pending = true;
    pthread_mutex_unlock(&o->mu);
    uv_async_send(&o->async);
    uint64_t until = time_mono_ms() + wait;
    pthread_mutex_lock(&o->mu);
    while (!o->placed && !o->cancel && time_mono_ms() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&o->cv, &o->mu, &ts);
    }
    bool placed = o->placed, cancel = o->cancel;
    pthread_mutex_unlock(&o->mu);
    if (cancel)
        return -ECANCELED;
    if (!placed)
        LOGO(o, LOG_WARN,
             "acme: %s: challenges not confirmed in place within %u ms; asking the CA anyway",
             o->req.label, wait);
    return 0;
}

/* Every pending authorization: its challenge placed on the edges, answered, then polled
 * until valid. */
static int step_authorizations(struct acme_job *o, const struct acme_order *ord)
{
    const char *type = kind_type(o->req.kind);
    char urls[ACME_AUTHZ_MAX][ACME_URL_MAX];
    size_t n = 0;
    o->n_places = 0;
    for (size_t i = 0; i < ord->n_authz; i++) {
        struct acme_authz a;
        struct http_resp r;
        int rc = get_authz(o, ord->authz[i], &a, &r);
        resp_free(&r);
        if (rc)
            return rc;
        if (a.status == ACME_ST_VALID)
            continue; /* the CA remembers an earlier validation */
        if (a.status != ACME_ST_PENDING) {
            set_error(o, "authorization", "%s is %s", a.name, acme_status_name(a.status));
            return -EPROTO;
        }
        const struct acme_challenge *c = acme_authz_challenge(&a, type);
        if (!c || !c->token[0]) {
            set_error(o, "authorization", "the CA offers no %s challenge for %s", type, a.name);
            return -EPROTO;
        }
        struct acme_place *p = &o->places[o->n_places];
        memset(p, 0, sizeof *p);
        p->kind = o->req.kind;
        snprintf(p->name, sizeof p->name, "%s", a.name);
        snprintf(p->token, sizeof p->token, "%s", c->token);
        if (acme_key_authorization(c->token, o->thumb, p->key_authorization,
                                   sizeof p->key_authorization)) {
            set_error(o, "authorization", "unusable challenge token for %s", a.name);
            return -EPROTO;
        }
        snprintf(urls[n++], sizeof urls[0], "%s", c->url);
        o->n_places++;
        LOGO(o, LOG_INFO, "acme: %s: %s challenge for %s (token %s)", o->req.label, type, a.name,
             c->token);
    }
    if (!n)
        return 0;
    int rc = place_and_wait(o);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        struct http_resp r;
        rc = post(o, "challenge", urls[i], "{}", false, NULL, &r);
        if (rc == 0 && r.status != 200)
            rc = fail_answer(o, "challenge", urls[i], &r);
        resp_free(&r);
        if (rc)
            return rc;
    }
    /* Poll each authorization until the CA has decided. */
    for (size_t i = 0; i < ord->n_authz; i++) {
        for (;;) {
            struct acme_authz a;
            struct http_resp r;
            rc = get_authz(o, ord->authz[i], &a, &r);
            uint64_t delay = poll_delay(&r, 500);
            resp_free(&r);
            if (rc)
                return rc;
            if (a.status == ACME_ST_VALID)
                break;
            if (a.status != ACME_ST_PENDING) {
                const struct acme_challenge *c = acme_authz_challenge(&a, type);
                set_error(o, "validation", "%s: %s%s%s", a.name, acme_status_name(a.status),
                          c && c->has_error ? ": " : "", c && c->has_error ? c->error.detail : "");
                return -EPROTO;
            }
            if (past_deadline(o)) {
                set_error(o, "validation", "%s still pending at the order's deadline", a.name);
                return -ETIMEDOUT;
            }
            if (!nap(o, delay))
                return -ECANCELED;
        }
        LOGO(o, LOG_INFO, "acme: %s: authorization %zu/%zu valid", o->req.label, i + 1,
             ord->n_authz);
    }
    return 0;
}

/* Polls the order at url until it leaves `while_in` (pending or processing). */
static int poll_order(struct acme_job *o, const char *step, const char *url,
                      enum acme_status while_in, struct acme_order *ord)
{
    while (ord->status == while_in || ord->status == ACME_ST_PROCESSING) {
        if (past_deadline(o)) {
            set_error(o, step, "order still %s at its deadline", acme_status_name(ord->status));
            return -ETIMEDOUT;
        }
        struct http_resp r;
        int rc = post(o, step, url, "", false, NULL, &r);
        uint64_t delay = poll_delay(&r, 500);
        if (rc == 0)
            rc = order_answer(o, step, url, &r, ord);
        resp_free(&r);
        if (rc)
            return rc;
        if ((ord->status == while_in || ord->status == ACME_ST_PROCESSING) && !nap(o, delay))
            return -ECANCELED;
    }
    return 0;
}

static int step_finalize(struct acme_job *o, const char *order_url, struct acme_order *ord)
{
    int rc = poll_order(o, "order", order_url, ACME_ST_PENDING, ord);
    if (rc)
        return rc;
    if (ord->status != ACME_ST_READY) {
        set_error(o, "order", "order is %s%s%s", acme_status_name(ord->status),
                  ord->has_error ? ": " : "", ord->has_error ? ord->error.detail : "");
        return -EPROTO;
    }
    size_t cap = (o->req.csr_len + 2) / 3 * 4 + 1;
    char *csr = malloc(cap);
    if (!csr || base64url_encode(o->req.csr, o->req.csr_len, csr, cap) < 0) {
        free(csr);
        return -ENOMEM;
    }
    json_t *p = json_pack("{s:s}", "csr", csr);
    free(csr);
    char *payload = p ? json_dumps(p, JSON_COMPACT) : NULL;
    json_decref(p);
    struct http_resp r;
    rc = payload ? post(o, "finalize", ord->finalize, payload, false, NULL, &r) : -ENOMEM;
    free(payload);
    if (rc)
        return rc;
    char finalize[ACME_URL_MAX];
    snprintf(finalize, sizeof finalize, "%s", ord->finalize);
    rc = order_answer(o, "finalize", finalize, &r, ord);
    resp_free(&r);
    if (rc == 0)
        rc = poll_order(o, "finalize", order_url, ACME_ST_READY, ord);
    if (rc == 0 && (ord->status != ACME_ST_VALID || !ord->certificate[0])) {
        set_error(o, "finalize", "order is %s%s%s", acme_status_name(ord->status),
                  ord->has_error ? ": " : "", ord->has_error ? ord->error.detail : "");
        rc = -EPROTO;
    }
    return rc;
}

static int step_download(struct acme_job *o, const struct acme_order *ord)
{
    struct http_resp r;
    int rc =
        post(o, "download", ord->certificate, "", false, "application/pem-certificate-chain", &r);
    if (rc)
        return rc;
    if (r.status != 200) {
        rc = fail_answer(o, "download", ord->certificate, &r);
    } else if (!r.body || !strstr(r.body, "-----BEGIN CERTIFICATE-----") ||
               r.len >= CTL_CHAIN_MAX) {
        set_error(o, "download", "not a PEM chain that fits a control message (%zu bytes)", r.len);
        rc = -EBADMSG;
    } else {
        o->res.chain_pem = r.body;
        r.body = NULL;
    }
    resp_free(&r);
    return rc;
}

static int run_order(struct acme_job *o)
{
    uint8_t x[32], y[32];
    char err[128];
    int rc = pki_es256_public(o->req.account_key, x, y, err, sizeof err);
    if (rc) {
        set_error(o, "account", "account key: %s", err);
        return rc;
    }
    if ((rc = acme_jwk(x, y, o->jwk, sizeof o->jwk)) ||
        (rc = acme_jwk_thumbprint(o->jwk, o->thumb)))
        return rc;
    if ((rc = step_directory(o)))
        return rc;
    if (!o->res.account_url[0] && (rc = step_account(o)))
        return rc;
    char order_url[ACME_URL_MAX];
    struct acme_order ord;
    rc = step_new_order(o, order_url, sizeof order_url, &ord);
    if (rc == -ENOENT) {
        LOGO(o, LOG_WARN, "acme: %s: the CA does not know account %s any more; registering again",
             o->req.label, o->res.account_url);
        o->res.account_url[0] = '\0';
        if ((rc = step_account(o)))
            return rc;
        rc = step_new_order(o, order_url, sizeof order_url, &ord);
        if (rc == -ENOENT)
            set_error(o, "order", "the CA refused the new account too");
    }
    if (rc)
        return rc;
    LOGO(o, LOG_INFO, "acme: %s: order %s for %zu name(s), %zu authorization(s)", o->req.label,
         order_url, ord.n_names, ord.n_authz);
    if (ord.status == ACME_ST_PENDING && (rc = step_authorizations(o, &ord)))
        return rc;
    if ((rc = step_finalize(o, order_url, &ord)))
        return rc;
    LOGO(o, LOG_INFO, "acme: %s: order valid, downloading %s", o->req.label, ord.certificate);
    return step_download(o, &ord);
}

/* ARI: the CA's suggested renewal window for one certificate (an unauthenticated GET). */
static int run_ari(struct acme_job *o)
{
    struct http_resp r;
    int rc = http(o, "renewal-info", o->req.ari_url, NULL, false, NULL, &r);
    if (rc)
        return rc;
    char err[128];
    int64_t s;
    if (r.retry_after[0] && acme_parse_retry_after(r.retry_after, time_wall_s(), &s) == 0)
        o->res.retry_after = s;
    if (r.status != 200) {
        rc = fail_answer(o, "renewal-info", o->req.ari_url, &r);
    } else if (acme_parse_renewal_info(r.body ? r.body : "", r.len, &o->res.window, err,
                                       sizeof err)) {
        set_error(o, "renewal-info", "bad renewalInfo: %s", err);
        rc = -EBADMSG;
    }
    resp_free(&r);
    return rc;
}

static void *worker(void *arg)
{
    struct acme_job *o = arg;
    o->deadline_ms = time_mono_ms() + (o->req.order_timeout_ms ? o->req.order_timeout_ms : 120000);
    o->curl = curl_easy_init();
    int rc = !o->curl ? -ENOMEM : o->req.ari_url[0] ? run_ari(o) : run_order(o);
    if (rc && !o->res.error[0])
        set_error(o, o->res.step[0] ? o->res.step : "order", "%s", strerror(-rc));
    if (o->curl)
        curl_easy_cleanup(o->curl);
    o->curl = NULL;
    pthread_mutex_lock(&o->mu);
    o->res.rc = rc;
    o->finished = true;
    pthread_mutex_unlock(&o->mu);
    uv_async_send(&o->async);
    return NULL;
}

/* ---- loop side ---- */

static void job_free(struct acme_job *o)
{
    pthread_mutex_destroy(&o->mu);
    pthread_cond_destroy(&o->cv);
    if (o->req.account_key) {
        memset(o->req.account_key, 0, strlen(o->req.account_key));
        free(o->req.account_key);
    }
    free((void *)o->req.csr);
    free(o->res.chain_pem);
    free(o);
}

static void on_async_closed(uv_handle_t *h)
{
    job_free(h->data);
}

static void on_async(uv_async_t *a)
{
    struct acme_job *o = a->data;
    pthread_mutex_lock(&o->mu);
    bool place = o->place_pending, finished = o->finished && !o->done_reported;
    o->place_pending = false;
    if (finished)
        o->done_reported = true;
    pthread_mutex_unlock(&o->mu);
    if (place && !finished && o->cb.place)
        o->cb.place(o, o->places, o->n_places, o->arg);
    else if (place && !finished)
        acme_job_placed(o);
    if (finished) {
        pthread_join(o->thread, NULL);
        if (o->cb.done)
            o->cb.done(o, &o->res, o->arg);
        uv_close((uv_handle_t *)&o->async, on_async_closed);
    }
}

int acme_job_start(uv_loop_t *loop, const struct acme_job_req *req, const struct acme_job_cbs *cb,
                   void *arg, struct acme_job **out)
{
    struct acme_job *o = calloc(1, sizeof *o);
    if (!o)
        return -ENOMEM;
    o->req = *req;
    o->req.account_key = req->account_key ? strdup(req->account_key) : NULL;
    uint8_t *csr = malloc(req->csr_len ? req->csr_len : 1);
    if (csr && req->csr_len)
        memcpy(csr, req->csr, req->csr_len);
    o->req.csr = csr;
    snprintf(o->res.account_url, sizeof o->res.account_url, "%s", req->account_url);
    o->cb = *cb;
    o->arg = arg;
    if ((req->account_key && !o->req.account_key) || !csr) {
        free(o->req.account_key);
        free(csr);
        free(o);
        return -ENOMEM;
    }
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
    int rc = uv_async_init(loop, &o->async, on_async);
    if (rc) {
        o->res.chain_pem = NULL;
        job_free(o);
        return rc;
    }
    o->async.data = o;
    rc = pthread_create(&o->thread, NULL, worker, o);
    if (rc) {
        uv_close((uv_handle_t *)&o->async, on_async_closed);
        return -rc;
    }
    *out = o;
    return 0;
}

void acme_job_placed(struct acme_job *o)
{
    pthread_mutex_lock(&o->mu);
    o->placed = true;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
}

void acme_job_cancel(struct acme_job *o)
{
    if (!o)
        return;
    pthread_mutex_lock(&o->mu);
    o->cancel = true;
    bool reported = o->done_reported;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
    if (reported)
        return; /* on_async already joined it and is closing */
    pthread_join(o->thread, NULL);
    pthread_mutex_lock(&o->mu);
    o->done_reported = true; /* a pending async must not report it */
    pthread_mutex_unlock(&o->mu);
    uv_close((uv_handle_t *)&o->async, on_async_closed);
}
