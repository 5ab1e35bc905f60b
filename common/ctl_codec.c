/* Control channel: the frame codec, a protobuf-c Envelope behind a 4-byte big-endian
 * length. Pure (no I/O), and the only file that sees the generated protobuf code: the
 * rest of the channel and the daemons use the plain C values of ctl.h. Fuzzed as it is
 * (tests/fuzz/fuzz_ctl_frame.c). */
#include "common/ctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/ctl_int.h"
#include "proto/control.pb-c.h"

static const char *const role_names[CTL_ROLE_COUNT] = {
    "unknown", "director", "access-edge", "conf-edge", "av-edge", "revproxy",
};

const char *ctl_role_name(enum ctl_role r)
{
    return (unsigned)r < CTL_ROLE_COUNT ? role_names[r] : "unknown";
}

int ctl_role_parse(const char *s, enum ctl_role *out)
{
    if (!s || !out)
        return -EINVAL;
    for (int i = 1; i < CTL_ROLE_COUNT; i++)
        if (strcmp(s, role_names[i]) == 0) {
            *out = (enum ctl_role)i;
            return 0;
        }
    return -EINVAL;
}

const char *ctl_secret_kind_name(enum ctl_secret_kind k)
{
    switch (k) {
    case CTL_SECRET_RELAY:
        return "relay";
    case CTL_SECRET_CONFERENCE:
        return "conference";
    default:
        return "unknown";
    }
}

const char *ctl_frame_strerror(ssize_t err)
{
    switch (err) {
    case -EAGAIN:
        return "incomplete frame";
    case -EMSGSIZE:
        return "oversized frame";
    case -EBADMSG:
        return "undecodable frame";
    default:
        return "frame error";
    }
}

/* ---- decoding: protobuf-c structs into the fixed-size C values of ctl.h ---- */

bool ctl_text_ok(const char *s)
{
    /* proto3 strings are UTF-8; we also refuse control characters, as these strings end
     * up in log lines and JSON. Overlong forms and surrogates are refused too. */
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        size_t n;
        uint32_t cp;
        if (c < 0x20 || c == 0x7f)
            return false;
        if (c < 0x80) {
            p++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 1, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3, cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (p[i] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp < 0xa0))
            return false;
        p += n + 1;
    }
    return true;
}

static int copy_str(char *out, size_t cap, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n >= cap || (s && !ctl_text_ok(s)))
        return -EBADMSG;
    memcpy(out, s ? s : "", n);
    out[n] = '\0';
    return 0;
}

static enum ctl_role role_from_pb(Edgectl__Role r)
{
    return (unsigned)r < CTL_ROLE_COUNT ? (enum ctl_role)r : CTL_ROLE_UNKNOWN;
}

static int strs_from_pb(char (*out)[ADDR_STRLEN], size_t *n_out, char **in, size_t n)
{
    if (n > CTL_ADDRS_MAX)
        return -EBADMSG;
    for (size_t i = 0; i < n; i++)
        if (copy_str(out[i], ADDR_STRLEN, in[i]))
            return -EBADMSG;
    *n_out = n;
    return 0;
}

static int hello_from_pb(struct ctl_hello *h, const Edgectl__Hello *pb)
{
    h->role = role_from_pb(pb->role);
    if (copy_str(h->instance_id, sizeof h->instance_id, pb->instance_id) ||
        copy_str(h->version, sizeof h->version, pb->version) ||
        strs_from_pb(h->external_addrs, &h->n_external, pb->external_addrs, pb->n_external_addrs) ||
        strs_from_pb(h->internal_addrs, &h->n_internal, pb->internal_addrs, pb->n_internal_addrs))
        return -EBADMSG;
    if (pb->n_subscribe > CTL_SUBSCRIBE_MAX)
        return -EBADMSG;
    for (size_t i = 0; i < pb->n_subscribe; i++)
        h->subscribe[i] = role_from_pb(pb->subscribe[i]);
    h->n_subscribe = pb->n_subscribe;
    return 0;
}

static int secret_from_pb(struct ctl_secret *s, const Edgectl__Secret *pb)
{
    if (!pb || pb->secret.len > sizeof s->secret)
        return -EBADMSG;
    s->kind = (pb->kind == EDGECTL__SECRET_KIND__SECRET_RELAY_CREDENTIALS ||
               pb->kind == EDGECTL__SECRET_KIND__SECRET_CONFERENCE_KEYS)
                  ? (enum ctl_secret_kind)pb->kind
                  : CTL_SECRET_UNKNOWN;
    if (copy_str(s->key_id, sizeof s->key_id, pb->key_id))
        return -EBADMSG;
    if (pb->secret.len)
        memcpy(s->secret, pb->secret.data, pb->secret.len);
    s->secret_len = pb->secret.len;
    s->not_after = pb->not_after;
    return 0;
}

static int welcome_from_pb(struct ctl_welcome *w, const Edgectl__Welcome *pb)
{
    if (copy_str(w->director_id, sizeof w->director_id, pb->director_id) ||
        pb->n_secrets > CTL_SECRETS_MAX)
        return -EBADMSG;
    w->heartbeat_ms = pb->heartbeat_ms;
    for (size_t i = 0; i < pb->n_secrets; i++)
        if (secret_from_pb(&w->secrets[i], pb->secrets[i]))
            return -EBADMSG;
    w->n_secrets = pb->n_secrets;
    return 0;
}

static int report_from_pb(struct ctl_report *r, const Edgectl__Report *pb)
{
    r->role = role_from_pb(pb->role);
    if (copy_str(r->instance_id, sizeof r->instance_id, pb->instance_id) ||
        pb->n_notes > CTL_NOTES_MAX)
        return -EBADMSG;
    r->connections = pb->connections;
    r->allocations = pb->allocations;
    r->bytes_in = pb->bytes_in;
    r->bytes_out = pb->bytes_out;
    r->errors = pb->errors;
    r->load_permille = pb->load_permille;
    r->healthy = pb->healthy;
    r->draining = pb->draining;
    for (size_t i = 0; i < pb->n_notes; i++)
        if (copy_str(r->notes[i], sizeof r->notes[i], pb->notes[i]))
            return -EBADMSG;
    r->n_notes = pb->n_notes;
    if (strs_from_pb(r->external_addrs, &r->n_external, pb->external_addrs, pb->n_external_addrs) ||
        strs_from_pb(r->internal_addrs, &r->n_internal, pb->internal_addrs, pb->n_internal_addrs))
        return -EBADMSG;
    return 0;
}

/* ---- ACME messages ---- */

/* A PEM chain: printable ASCII and line ends, nothing else (it is written to disk and
 * parsed by the TLS backend; no NUL, no escape sequences). */
static bool pem_text_ok(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p < 0x20 || *p > 0x7e) && *p != '\n' && *p != '\r')
            return false;
    return true;
}

static int names_from_pb(char (*out)[CTL_DNSNAME_MAX], size_t *n_out, char **in, size_t n)
{
    if (n > CTL_DNSNAMES_MAX)
        return -EBADMSG;
    for (size_t i = 0; i < n; i++)
        if (copy_str(out[i], CTL_DNSNAME_MAX, in[i]))
            return -EBADMSG;
    *n_out = n;
    return 0;
}

static int cert_status_from_pb(struct ctl_cert_status *c, const Edgectl__CertStatus *pb)
{
    if (names_from_pb(c->names, &c->n_names, pb->names, pb->n_names) ||
        copy_str(c->serial, sizeof c->serial, pb->serial) ||
        copy_str(c->error, sizeof c->error, pb->error))
        return -EBADMSG;
    c->not_before = pb->not_before;
    c->not_after = pb->not_after;
    c->self_signed = pb->self_signed;
    return 0;
}

static int csr_request_from_pb(struct ctl_csr_request *r, const Edgectl__CsrRequest *pb)
{
    if (copy_str(r->order_id, sizeof r->order_id, pb->order_id) ||
        names_from_pb(r->names, &r->n_names, pb->names, pb->n_names))
        return -EBADMSG;
    return 0;
}

static int csr_from_pb(struct ctl_csr *c, const Edgectl__Csr *pb)
{
    if (pb->der.len > sizeof c->der || copy_str(c->order_id, sizeof c->order_id, pb->order_id) ||
        copy_str(c->error, sizeof c->error, pb->error))
        return -EBADMSG;
    if (pb->der.len)
        memcpy(c->der, pb->der.data, pb->der.len);
    c->der_len = pb->der.len;
    return 0;
}

static int cert_issued_from_pb(struct ctl_cert_issued *c, const Edgectl__CertIssued *pb)
{
    size_t n = pb->chain_pem ? strlen(pb->chain_pem) : 0;
    if (copy_str(c->order_id, sizeof c->order_id, pb->order_id) || n >= sizeof c->chain_pem ||
        (n && !pem_text_ok(pb->chain_pem)))
        return -EBADMSG;
    memcpy(c->chain_pem, n ? pb->chain_pem : "", n);
    c->chain_pem[n] = '\0';
    return 0;
}

static int challenge_from_pb(struct ctl_challenge *c, const Edgectl__Challenge *pb)
{
    c->kind = (pb->kind == EDGECTL__CHALLENGE_KIND__CHALLENGE_HTTP_01 ||
               pb->kind == EDGECTL__CHALLENGE_KIND__CHALLENGE_TLS_ALPN_01)
                  ? (enum ctl_challenge_kind)pb->kind
                  : CTL_CHALLENGE_UNKNOWN;
    if (copy_str(c->name, sizeof c->name, pb->name) ||
        copy_str(c->token, sizeof c->token, pb->token) ||
        copy_str(c->key_authorization, sizeof c->key_authorization, pb->key_authorization))
        return -EBADMSG;
    c->remove = pb->remove;
    c->expires = pb->expires;
    return 0;
}

static int challenge_ready_from_pb(struct ctl_challenge_ready *c, const Edgectl__ChallengeReady *pb)
{
    if (copy_str(c->token, sizeof c->token, pb->token) ||
        copy_str(c->error, sizeof c->error, pb->error))
        return -EBADMSG;
    return 0;
}

static int msg_from_pb(struct ctl_msg *m, const Edgectl__Envelope *env)
{
    memset(m, 0, sizeof *m);
    switch (env->msg_case) {
    case EDGECTL__ENVELOPE__MSG_HELLO:
        m->type = CTL_MSG_HELLO;
        return hello_from_pb(&m->u.hello, env->hello);
    case EDGECTL__ENVELOPE__MSG_WELCOME:
        m->type = CTL_MSG_WELCOME;
        return welcome_from_pb(&m->u.welcome, env->welcome);
    case EDGECTL__ENVELOPE__MSG_REPORT:
        m->type = CTL_MSG_REPORT;
        return report_from_pb(&m->u.report, env->report);
    case EDGECTL__ENVELOPE__MSG_SECRET_UPDATE:
        m->type = CTL_MSG_SECRET;
        return secret_from_pb(&m->u.secret, env->secret_update->secret);
    case EDGECTL__ENVELOPE__MSG_REVOKE:
        m->type = CTL_MSG_REVOKE;
        if (copy_str(m->u.revoke.conference_key_id, sizeof m->u.revoke.conference_key_id,
                     env->revoke->conference_key_id) ||
            copy_str(m->u.revoke.user, sizeof m->u.revoke.user, env->revoke->user))
            return -EBADMSG;
        m->u.revoke.until = env->revoke->until;
        m->u.revoke.expiring_by = env->revoke->expiring_by;
        return 0;
    case EDGECTL__ENVELOPE__MSG_DRAIN:
        m->type = CTL_MSG_DRAIN;
        m->u.drain_deadline_ms = env->drain->deadline_ms;
        return 0;
    case EDGECTL__ENVELOPE__MSG_PING:
        m->type = CTL_MSG_PING;
        m->u.seq = env->ping->seq;
        return 0;
    case EDGECTL__ENVELOPE__MSG_PONG:
        m->type = CTL_MSG_PONG;
        m->u.seq = env->pong->seq;
        return 0;
    case EDGECTL__ENVELOPE__MSG_GOODBYE:
        m->type = CTL_MSG_GOODBYE;
        return copy_str(m->u.reason, sizeof m->u.reason, env->goodbye->reason);
    case EDGECTL__ENVELOPE__MSG_CERT_STATUS:
        m->type = CTL_MSG_CERT_STATUS;
        return cert_status_from_pb(&m->u.cert_status, env->cert_status);
    case EDGECTL__ENVELOPE__MSG_CSR_REQUEST:
        m->type = CTL_MSG_CSR_REQUEST;
        return csr_request_from_pb(&m->u.csr_request, env->csr_request);
    case EDGECTL__ENVELOPE__MSG_CSR:
        m->type = CTL_MSG_CSR;
        return csr_from_pb(&m->u.csr, env->csr);
    case EDGECTL__ENVELOPE__MSG_CERT_ISSUED:
        m->type = CTL_MSG_CERT_ISSUED;
        return cert_issued_from_pb(&m->u.cert_issued, env->cert_issued);
    case EDGECTL__ENVELOPE__MSG_CHALLENGE:
        m->type = CTL_MSG_CHALLENGE;
        return challenge_from_pb(&m->u.challenge, env->challenge);
    case EDGECTL__ENVELOPE__MSG_CHALLENGE_READY:
        m->type = CTL_MSG_CHALLENGE_READY;
        return challenge_ready_from_pb(&m->u.challenge_ready, env->challenge_ready);
    default:
        return -EBADMSG; /* an empty Envelope or a message this build does not know */
    }
}

uint32_t ctl_frame_prefix_len(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

ssize_t ctl_frame_decode(const uint8_t *data, size_t len, struct ctl_msg *msg)
{
    if ((!data && len) || !msg)
        return -EINVAL;
    if (len < CTL_PREFIX)
        return -EAGAIN;
    uint32_t n = ctl_frame_prefix_len(data);
    if (n > CTL_FRAME_MAX)
        return -EMSGSIZE;
    if (len - CTL_PREFIX < n)
        return -EAGAIN;
    Edgectl__Envelope *env = edgectl__envelope__unpack(NULL, n, data + CTL_PREFIX);
    if (!env)
        return -EBADMSG;
    int rc = msg_from_pb(msg, env);
    edgectl__envelope__free_unpacked(env, NULL);
    return rc ? rc : (ssize_t)(CTL_PREFIX + n);
}

/* ---- encoding: the C values into protobuf-c structs that point into them ---- */

/* Scratch space for one Envelope being packed; lives on the caller's stack. */
struct pb_scratch {
    Edgectl__Envelope env;
    union {
        Edgectl__Hello hello;
        Edgectl__Welcome welcome;
        Edgectl__Report report;
        Edgectl__SecretUpdate update;
        Edgectl__Revoke revoke;
        Edgectl__Drain drain;
        Edgectl__Heartbeat hb;
        Edgectl__Goodbye bye;
        Edgectl__CertStatus cert_status;
        Edgectl__CsrRequest csr_request;
        Edgectl__Csr csr;
        Edgectl__CertIssued cert_issued;
        Edgectl__Challenge challenge;
        Edgectl__ChallengeReady challenge_ready;
    } m;
    Edgectl__Secret secrets[CTL_SECRETS_MAX];
    Edgectl__Secret *secret_ptrs[CTL_SECRETS_MAX];
    char *strs[3][CTL_ADDRS_MAX > CTL_NOTES_MAX ? CTL_ADDRS_MAX : CTL_NOTES_MAX];
    char *names[CTL_DNSNAMES_MAX];
    Edgectl__Role roles[CTL_SUBSCRIBE_MAX];
};

static void secret_to_pb(Edgectl__Secret *pb, const struct ctl_secret *s)
{
    edgectl__secret__init(pb);
    pb->kind = (Edgectl__SecretKind)s->kind;
    pb->key_id = (char *)s->key_id;
    pb->secret.data = (uint8_t *)s->secret;
    pb->secret.len = s->secret_len <= CTL_SECRET_MAX ? s->secret_len : CTL_SECRET_MAX;
    pb->not_after = s->not_after;
}

/* A string field is terminated within its array and passes ctl_text_ok. */
#define FIELD_OK(f) (memchr((f), 0, sizeof(f)) && ctl_text_ok(f))

static bool addrs_ok(const char (*a)[ADDR_STRLEN], size_t n)
{
    for (size_t i = 0; i < n && i < CTL_ADDRS_MAX; i++)
        if (!FIELD_OK(a[i]))
            return false;
    return true;
}

static bool hello_strings_ok(const struct ctl_hello *h)
{
    return FIELD_OK(h->instance_id) && FIELD_OK(h->version) &&
           addrs_ok(h->external_addrs, h->n_external) && addrs_ok(h->internal_addrs, h->n_internal);
}

static bool welcome_strings_ok(const struct ctl_welcome *w)
{
    if (!FIELD_OK(w->director_id))
        return false;
    for (size_t i = 0; i < w->n_secrets && i < CTL_SECRETS_MAX; i++)
        if (!FIELD_OK(w->secrets[i].key_id))
            return false;
    return true;
}

static bool report_strings_ok(const struct ctl_report *r)
{
    if (!FIELD_OK(r->instance_id))
        return false;
    for (size_t i = 0; i < r->n_notes && i < CTL_NOTES_MAX; i++)
        if (!FIELD_OK(r->notes[i]))
            return false;
    return addrs_ok(r->external_addrs, r->n_external) && addrs_ok(r->internal_addrs, r->n_internal);
}

static bool names_ok(const char (*a)[CTL_DNSNAME_MAX], size_t n)
{
    for (size_t i = 0; i < n && i < CTL_DNSNAMES_MAX; i++)
        if (!FIELD_OK(a[i]))
            return false;
    return true;
}

static bool acme_strings_ok(const struct ctl_msg *m)
{
    switch (m->type) {
    case CTL_MSG_CERT_STATUS: {
        const struct ctl_cert_status *c = &m->u.cert_status;
        return names_ok(c->names, c->n_names) && FIELD_OK(c->serial) && FIELD_OK(c->error);
    }
    case CTL_MSG_CSR_REQUEST:
        return FIELD_OK(m->u.csr_request.order_id) &&
               names_ok(m->u.csr_request.names, m->u.csr_request.n_names);
    case CTL_MSG_CSR:
        return FIELD_OK(m->u.csr.order_id) && FIELD_OK(m->u.csr.error);
    case CTL_MSG_CERT_ISSUED:
        return FIELD_OK(m->u.cert_issued.order_id) &&
               memchr(m->u.cert_issued.chain_pem, 0, sizeof m->u.cert_issued.chain_pem) &&
               pem_text_ok(m->u.cert_issued.chain_pem);
    case CTL_MSG_CHALLENGE:
        return FIELD_OK(m->u.challenge.name) && FIELD_OK(m->u.challenge.token) &&
               FIELD_OK(m->u.challenge.key_authorization);
    case CTL_MSG_CHALLENGE_READY:
        return FIELD_OK(m->u.challenge_ready.token) && FIELD_OK(m->u.challenge_ready.error);
    default:
        return true;
    }
}

/* Refuses what the peer would refuse to decode, so a bad note fails one send (-EINVAL)
 * instead of costing the whole connection. */
bool ctl_msg_strings_ok(const struct ctl_msg *m)
{
    switch (m->type) {
    case CTL_MSG_HELLO:
        return hello_strings_ok(&m->u.hello);
    case CTL_MSG_WELCOME:
        return welcome_strings_ok(&m->u.welcome);
    case CTL_MSG_REPORT:
        return report_strings_ok(&m->u.report);
    case CTL_MSG_SECRET:
        return FIELD_OK(m->u.secret.key_id);
    case CTL_MSG_REVOKE:
        return FIELD_OK(m->u.revoke.conference_key_id) && FIELD_OK(m->u.revoke.user);
    case CTL_MSG_GOODBYE:
        return FIELD_OK(m->u.reason);
    default:
        return acme_strings_ok(m);
    }
}

static int hello_to_pb(struct pb_scratch *x, const struct ctl_hello *h)
{
    if (h->n_external > CTL_ADDRS_MAX || h->n_internal > CTL_ADDRS_MAX ||
        h->n_subscribe > CTL_SUBSCRIBE_MAX)
        return -EINVAL;
    edgectl__hello__init(&x->m.hello);
    x->m.hello.role = (Edgectl__Role)h->role;
    x->m.hello.instance_id = (char *)h->instance_id;
    x->m.hello.version = (char *)h->version;
    for (size_t i = 0; i < h->n_external; i++)
        x->strs[0][i] = (char *)h->external_addrs[i];
    for (size_t i = 0; i < h->n_internal; i++)
        x->strs[1][i] = (char *)h->internal_addrs[i];
    x->m.hello.n_external_addrs = h->n_external;
    x->m.hello.external_addrs = x->strs[0];
    x->m.hello.n_internal_addrs = h->n_internal;
    x->m.hello.internal_addrs = x->strs[1];
    for (size_t i = 0; i < h->n_subscribe; i++)
        x->roles[i] = (Edgectl__Role)h->subscribe[i];
    x->m.hello.n_subscribe = h->n_subscribe;
    x->m.hello.subscribe = x->roles;
    x->env.msg_case = EDGECTL__ENVELOPE__MSG_HELLO;
    x->env.hello = &x->m.hello;
    return 0;
}

static int welcome_to_pb(struct pb_scratch *x, const struct ctl_welcome *w)
{
    if (w->n_secrets > CTL_SECRETS_MAX)
        return -EINVAL;
    edgectl__welcome__init(&x->m.welcome);
    x->m.welcome.director_id = (char *)w->director_id;
    x->m.welcome.heartbeat_ms = w->heartbeat_ms;
    for (size_t i = 0; i < w->n_secrets; i++) {
        secret_to_pb(&x->secrets[i], &w->secrets[i]);
        x->secret_ptrs[i] = &x->secrets[i];
    }
    x->m.welcome.n_secrets = w->n_secrets;
    x->m.welcome.secrets = x->secret_ptrs;
    x->env.msg_case = EDGECTL__ENVELOPE__MSG_WELCOME;
    x->env.welcome = &x->m.welcome;
    return 0;
}

static int report_to_pb(struct pb_scratch *x, const struct ctl_report *r)
{
    if (r->n_notes > CTL_NOTES_MAX || r->n_external > CTL_ADDRS_MAX ||
        r->n_internal > CTL_ADDRS_MAX)
        return -EINVAL;
    Edgectl__Report *pb = &x->m.report;
    edgectl__report__init(pb);
    pb->role = (Edgectl__Role)r->role;
    pb->instance_id = (char *)r->instance_id;
    pb->connections = r->connections;
    pb->allocations = r->allocations;
    pb->bytes_in = r->bytes_in;
    pb->bytes_out = r->bytes_out;
    pb->errors = r->errors;
    pb->load_permille = r->load_permille;
    pb->healthy = r->healthy;
    pb->draining = r->draining;
    for (size_t i = 0; i < r->n_notes; i++)
        x->strs[0][i] = (char *)r->notes[i];
    pb->n_notes = r->n_notes;
    pb->notes = x->strs[0];
    for (size_t i = 0; i < r->n_external; i++)
        x->strs[1][i] = (char *)r->external_addrs[i];
    for (size_t i = 0; i < r->n_internal; i++)
        x->strs[2][i] = (char *)r->internal_addrs[i];
    pb->n_external_addrs = r->n_external;
    pb->external_addrs = x->strs[1];
    pb->n_internal_addrs = r->n_internal;
    pb->internal_addrs = x->strs[2];
    x->env.msg_case = EDGECTL__ENVELOPE__MSG_REPORT;
    x->env.report = pb;
    return 0;
}

static void heartbeat_to_pb(struct pb_scratch *x, const struct ctl_msg *m)
{
    edgectl__heartbeat__init(&x->m.hb);
    x->m.hb.seq = m->u.seq;
    if (m->type == CTL_MSG_PING) {
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_PING;
        x->env.ping = &x->m.hb;
    } else {
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_PONG;
        x->env.pong = &x->m.hb;
    }
}

static void names_to_pb(struct pb_scratch *x, const char (*names)[CTL_DNSNAME_MAX], size_t n,
                        char ***out, size_t *n_out)
{
    for (size_t i = 0; i < n; i++)
        x->names[i] = (char *)names[i];
    *out = x->names;
    *n_out = n;
}

/* ACME messages; counts are checked here, strings by ctl_msg_strings_ok. */
static int acme_to_pb(struct pb_scratch *x, const struct ctl_msg *m)
{
    switch (m->type) {
    case CTL_MSG_CERT_STATUS: {
        const struct ctl_cert_status *c = &m->u.cert_status;
        Edgectl__CertStatus *pb = &x->m.cert_status;
        if (c->n_names > CTL_DNSNAMES_MAX)
            return -EINVAL;
        edgectl__cert_status__init(pb);
        names_to_pb(x, c->names, c->n_names, &pb->names, &pb->n_names);
        pb->not_before = c->not_before;
        pb->not_after = c->not_after;
        pb->serial = (char *)c->serial;
        pb->self_signed = c->self_signed;
        pb->error = (char *)c->error;
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_CERT_STATUS;
        x->env.cert_status = pb;
        return 0;
    }
    case CTL_MSG_CSR_REQUEST: {
        const struct ctl_csr_request *r = &m->u.csr_request;
        Edgectl__CsrRequest *pb = &x->m.csr_request;
        if (r->n_names > CTL_DNSNAMES_MAX)
            return -EINVAL;
        edgectl__csr_request__init(pb);
        pb->order_id = (char *)r->order_id;
        names_to_pb(x, r->names, r->n_names, &pb->names, &pb->n_names);
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_CSR_REQUEST;
        x->env.csr_request = pb;
        return 0;
    }
    case CTL_MSG_CSR: {
        const struct ctl_csr *c = &m->u.csr;
        Edgectl__Csr *pb = &x->m.csr;
        if (c->der_len > CTL_CSR_MAX)
            return -EINVAL;
        edgectl__csr__init(pb);
        pb->order_id = (char *)c->order_id;
        pb->der.data = (uint8_t *)c->der;
        pb->der.len = c->der_len;
        pb->error = (char *)c->error;
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_CSR;
        x->env.csr = pb;
        return 0;
    }
    case CTL_MSG_CERT_ISSUED:
        edgectl__cert_issued__init(&x->m.cert_issued);
        x->m.cert_issued.order_id = (char *)m->u.cert_issued.order_id;
        x->m.cert_issued.chain_pem = (char *)m->u.cert_issued.chain_pem;
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_CERT_ISSUED;
        x->env.cert_issued = &x->m.cert_issued;
        return 0;
    case CTL_MSG_CHALLENGE: {
        const struct ctl_challenge *c = &m->u.challenge;
        Edgectl__Challenge *pb = &x->m.challenge;
        edgectl__challenge__init(pb);
        pb->kind = (Edgectl__ChallengeKind)c->kind;
        pb->name = (char *)c->name;
        pb->token = (char *)c->token;
        pb->key_authorization = (char *)c->key_authorization;
        pb->remove = c->remove;
        pb->expires = c->expires;
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_CHALLENGE;
        x->env.challenge = pb;
        return 0;
    }
    case CTL_MSG_CHALLENGE_READY:
        edgectl__challenge_ready__init(&x->m.challenge_ready);
        x->m.challenge_ready.token = (char *)m->u.challenge_ready.token;
        x->m.challenge_ready.error = (char *)m->u.challenge_ready.error;
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_CHALLENGE_READY;
        x->env.challenge_ready = &x->m.challenge_ready;
        return 0;
    default:
        return -EINVAL;
    }
}

static int msg_to_pb(struct pb_scratch *x, const struct ctl_msg *m)
{
    if (!ctl_msg_strings_ok(m))
        return -EINVAL;
    edgectl__envelope__init(&x->env);
    switch (m->type) {
    case CTL_MSG_HELLO:
        return hello_to_pb(x, &m->u.hello);
    case CTL_MSG_WELCOME:
        return welcome_to_pb(x, &m->u.welcome);
    case CTL_MSG_REPORT:
        return report_to_pb(x, &m->u.report);
    case CTL_MSG_SECRET:
        edgectl__secret_update__init(&x->m.update);
        secret_to_pb(&x->secrets[0], &m->u.secret);
        x->m.update.secret = &x->secrets[0];
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_SECRET_UPDATE;
        x->env.secret_update = &x->m.update;
        return 0;
    case CTL_MSG_REVOKE:
        edgectl__revoke__init(&x->m.revoke);
        x->m.revoke.conference_key_id = (char *)m->u.revoke.conference_key_id;
        x->m.revoke.user = (char *)m->u.revoke.user;
        x->m.revoke.until = m->u.revoke.until;
        x->m.revoke.expiring_by = m->u.revoke.expiring_by;
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_REVOKE;
        x->env.revoke = &x->m.revoke;
        return 0;
    case CTL_MSG_DRAIN:
        edgectl__drain__init(&x->m.drain);
        x->m.drain.deadline_ms = m->u.drain_deadline_ms;
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_DRAIN;
        x->env.drain = &x->m.drain;
        return 0;
    case CTL_MSG_PING:
    case CTL_MSG_PONG:
        heartbeat_to_pb(x, m);
        return 0;
    case CTL_MSG_GOODBYE:
        edgectl__goodbye__init(&x->m.bye);
        x->m.bye.reason = (char *)m->u.reason;
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_GOODBYE;
        x->env.goodbye = &x->m.bye;
        return 0;
    case CTL_MSG_CERT_STATUS:
    case CTL_MSG_CSR_REQUEST:
    case CTL_MSG_CSR:
    case CTL_MSG_CERT_ISSUED:
    case CTL_MSG_CHALLENGE:
    case CTL_MSG_CHALLENGE_READY:
        return acme_to_pb(x, m);
    }
    return -EINVAL;
}

/* Fills x from m: the frame's length (prefix included), or a negative errno. */
static ssize_t frame_prepare(struct pb_scratch *x, const struct ctl_msg *m)
{
    int rc = msg_to_pb(x, m);
    if (rc < 0)
        return rc;
    size_t n = edgectl__envelope__get_packed_size(&x->env);
    if (n > CTL_FRAME_MAX)
        return -EMSGSIZE;
    return (ssize_t)(CTL_PREFIX + n);
}

/* Writes the prefix and the Envelope frame_prepare sized: len bytes into out. */
static void frame_pack(const struct pb_scratch *x, uint8_t *out, size_t len)
{
    size_t n = len - CTL_PREFIX;
    out[0] = (uint8_t)(n >> 24);
    out[1] = (uint8_t)(n >> 16);
    out[2] = (uint8_t)(n >> 8);
    out[3] = (uint8_t)n;
    edgectl__envelope__pack(&x->env, out + CTL_PREFIX);
}

ssize_t ctl_frame_encode(const struct ctl_msg *m, uint8_t *out, size_t cap)
{
    if (!m || (!out && cap))
        return -EINVAL;
    struct pb_scratch x;
    ssize_t len = frame_prepare(&x, m);
    if (len < 0)
        return len;
    if (cap < (size_t)len)
        return -ENOSPC;
    frame_pack(&x, out, (size_t)len);
    return len;
}

ssize_t ctl_frame_alloc(const struct ctl_msg *m, uint8_t **out)
{
    /* Set on every path, so no caller can use an unwritten pointer (scan-build's finding
     * at the old ctl.c:598 was a caller that could not tell frame_alloc had failed). */
    *out = NULL;
    struct pb_scratch x;
    ssize_t len = frame_prepare(&x, m);
    if (len < 0)
        return len;
    uint8_t *p = malloc((size_t)len);
    if (!p)
        return -ENOMEM;
    frame_pack(&x, p, (size_t)len);
    *out = p;
    return len;
}
