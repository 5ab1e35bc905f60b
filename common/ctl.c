/* Control channel: the frame codec (protobuf-c Envelope behind a 4-byte length) and, on
 * top of common/stream, the edge's client and the Director's server. */
#include "common/ctl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/control.pb-c.h"

#define CTL_PREFIX 4

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
    default:
        return -EBADMSG; /* an empty Envelope or a message this build does not know */
    }
}

ssize_t ctl_frame_decode(const uint8_t *data, size_t len, struct ctl_msg *msg)
{
    if ((!data && len) || !msg)
        return -EINVAL;
    if (len < CTL_PREFIX)
        return -EAGAIN;
    uint32_t n = (uint32_t)data[0] << 24 | (uint32_t)data[1] << 16 | (uint32_t)data[2] << 8 |
                 (uint32_t)data[3];
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
    } m;
    Edgectl__Secret secrets[CTL_SECRETS_MAX];
    Edgectl__Secret *secret_ptrs[CTL_SECRETS_MAX];
    char *strs[3][CTL_ADDRS_MAX > CTL_NOTES_MAX ? CTL_ADDRS_MAX : CTL_NOTES_MAX];
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

/* Refuses what the peer would refuse to decode, so a bad note fails one send (-EINVAL)
 * instead of costing the whole connection. */
static bool msg_strings_ok(const struct ctl_msg *m)
{
    switch (m->type) {
    case CTL_MSG_HELLO: {
        const struct ctl_hello *h = &m->u.hello;
        if (!FIELD_OK(h->instance_id) || !FIELD_OK(h->version))
            return false;
        for (size_t i = 0; i < h->n_external && i < CTL_ADDRS_MAX; i++)
            if (!FIELD_OK(h->external_addrs[i]))
                return false;
        for (size_t i = 0; i < h->n_internal && i < CTL_ADDRS_MAX; i++)
            if (!FIELD_OK(h->internal_addrs[i]))
                return false;
        return true;
    }
    case CTL_MSG_WELCOME:
        if (!FIELD_OK(m->u.welcome.director_id))
            return false;
        for (size_t i = 0; i < m->u.welcome.n_secrets && i < CTL_SECRETS_MAX; i++)
            if (!FIELD_OK(m->u.welcome.secrets[i].key_id))
                return false;
        return true;
    case CTL_MSG_REPORT:
        if (!FIELD_OK(m->u.report.instance_id))
            return false;
        for (size_t i = 0; i < m->u.report.n_notes && i < CTL_NOTES_MAX; i++)
            if (!FIELD_OK(m->u.report.notes[i]))
                return false;
        for (size_t i = 0; i < m->u.report.n_external && i < CTL_ADDRS_MAX; i++)
            if (!FIELD_OK(m->u.report.external_addrs[i]))
                return false;
        for (size_t i = 0; i < m->u.report.n_internal && i < CTL_ADDRS_MAX; i++)
            if (!FIELD_OK(m->u.report.internal_addrs[i]))
                return false;
        return true;
    case CTL_MSG_SECRET:
        return FIELD_OK(m->u.secret.key_id);
    case CTL_MSG_REVOKE:
        return FIELD_OK(m->u.revoke.conference_key_id) && FIELD_OK(m->u.revoke.user);
    case CTL_MSG_GOODBYE:
        return FIELD_OK(m->u.reason);
    default:
        return true;
    }
}

static int msg_to_pb(struct pb_scratch *x, const struct ctl_msg *m)
{
    if (!msg_strings_ok(m))
        return -EINVAL;
    edgectl__envelope__init(&x->env);
    switch (m->type) {
    case CTL_MSG_HELLO: {
        const struct ctl_hello *h = &m->u.hello;
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
    case CTL_MSG_WELCOME: {
        const struct ctl_welcome *w = &m->u.welcome;
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
    case CTL_MSG_REPORT: {
        const struct ctl_report *r = &m->u.report;
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
        edgectl__heartbeat__init(&x->m.hb);
        x->m.hb.seq = m->u.seq;
        if (m->type == CTL_MSG_PING) {
            x->env.msg_case = EDGECTL__ENVELOPE__MSG_PING;
            x->env.ping = &x->m.hb;
        } else {
            x->env.msg_case = EDGECTL__ENVELOPE__MSG_PONG;
            x->env.pong = &x->m.hb;
        }
        return 0;
    case CTL_MSG_GOODBYE:
        edgectl__goodbye__init(&x->m.bye);
        x->m.bye.reason = (char *)m->u.reason;
        x->env.msg_case = EDGECTL__ENVELOPE__MSG_GOODBYE;
        x->env.goodbye = &x->m.bye;
        return 0;
    }
    return -EINVAL;
}

ssize_t ctl_frame_encode(const struct ctl_msg *m, uint8_t *out, size_t cap)
{
    if (!m || (!out && cap))
        return -EINVAL;
    struct pb_scratch x;
    int rc = msg_to_pb(&x, m);
    if (rc)
        return rc;
    size_t n = edgectl__envelope__get_packed_size(&x.env);
    if (n > CTL_FRAME_MAX)
        return -EMSGSIZE;
    if (cap < CTL_PREFIX + n)
        return -ENOSPC;
    out[0] = (uint8_t)(n >> 24);
    out[1] = (uint8_t)(n >> 16);
    out[2] = (uint8_t)(n >> 8);
    out[3] = (uint8_t)n;
    edgectl__envelope__pack(&x.env, out + CTL_PREFIX);
    return (ssize_t)(CTL_PREFIX + n);
}

#ifndef FUZZING
/* The fuzz target needs only the codec above; everything below binds it to libuv. */
#include "common/daemon.h"
#include "common/stream.h"
#include "common/tls_files.h"

/* Encodes m into a malloc'd frame; the caller frees *out. */
static ssize_t frame_alloc(const struct ctl_msg *m, uint8_t **out)
{
    struct pb_scratch x;
    int rc = msg_to_pb(&x, m);
    if (rc)
        return rc;
    size_t n = edgectl__envelope__get_packed_size(&x.env);
    if (n > CTL_FRAME_MAX)
        return -EMSGSIZE;
    uint8_t *p = malloc(CTL_PREFIX + n);
    if (!p)
        return -ENOMEM;
    p[0] = (uint8_t)(n >> 24);
    p[1] = (uint8_t)(n >> 16);
    p[2] = (uint8_t)(n >> 8);
    p[3] = (uint8_t)n;
    edgectl__envelope__pack(&x.env, p + CTL_PREFIX);
    *out = p;
    return (ssize_t)(CTL_PREFIX + n);
}

/* Reassembly shared by both ends: bytes arrive in any split; whole frames come out.
 * The buffer holds at most one frame, so a peer cannot make us hold more. */
typedef int (*frame_cb)(const struct ctl_msg *m, void *arg);

struct framer {
    struct buf in;
    size_t frames; /* decoded so far, for the "closed mid-frame" log */
};

/* The buffer is allocated on the first byte, so connections that never get past the TLS
 * handshake cost no frame buffer. */
static void framer_init(struct framer *f)
{
    f->frames = 0;
    memset(&f->in, 0, sizeof f->in);
}

/* Feeds bytes; calls fn for each complete frame while it returns 0. Returns 0, a decode
 * error (-EMSGSIZE, -EBADMSG) or fn's error. *stop is polled after each frame: a handler
 * that closed the connection sets it. */
static int framer_feed(struct framer *f, const uint8_t *data, size_t len, frame_cb fn, void *arg,
                       const bool *stop)
{
    /* ctl_msg is a few KiB; keep it off the stack of deep libuv callbacks. */
    if (!f->in.data && buf_init(&f->in, CTL_PREFIX + CTL_FRAME_MAX))
        return -ENOMEM;
    struct ctl_msg *m = malloc(sizeof *m);
    if (!m)
        return -ENOMEM;
    int rc = 0;
    while (len > 0 && rc == 0 && !*stop) {
        buf_compact(&f->in);
        size_t n = buf_room(&f->in) < len ? buf_room(&f->in) : len;
        buf_append(&f->in, data, n);
        data += n;
        len -= n;
        while (rc == 0 && !*stop) {
            struct slice s = buf_slice(&f->in);
            ssize_t used = ctl_frame_decode(s.p, s.len, m);
            if (used == -EAGAIN)
                break;
            if (used < 0) {
                rc = (int)used;
                break;
            }
            buf_consume(&f->in, (size_t)used);
            f->frames++;
            rc = fn(m, arg);
        }
    }
    free(m);
    return rc;
}

/* Describes what is left in the buffer when the connection ends. */
static void framer_leftover(const struct framer *f, char *out, size_t cap)
{
    size_t have = buf_len(&f->in);
    if (have == 0) {
        snprintf(out, cap, "%s", "");
        return;
    }
    const uint8_t *p = f->in.data + f->in.rd;
    if (have < CTL_PREFIX) {
        snprintf(out, cap, "truncated frame: %zu of 4 length bytes", have);
        return;
    }
    uint32_t n = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    snprintf(out, cap, "truncated frame: %zu of %u bytes", have - CTL_PREFIX, n);
}

static void frame_error_text(int err, const struct framer *f, char *out, size_t cap)
{
    if (err == -EMSGSIZE) {
        const uint8_t *p = f->in.data + f->in.rd;
        uint32_t n = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        snprintf(out, cap, "oversized frame: length %u exceeds %d", n, CTL_FRAME_MAX);
    } else if (err == -EBADMSG) {
        snprintf(out, cap, "undecodable frame (frame #%zu is not a valid control message)",
                 f->frames + 1);
    } else {
        snprintf(out, cap, "%s", strerror(-err));
    }
}

/* Per-side jitter source: xorshift64*, seeded per object (no global state). */
static uint32_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

static int stream_send_msg(struct stream *st, const struct ctl_msg *m)
{
    uint8_t *frame;
    ssize_t n = frame_alloc(m, &frame);
    if (n < 0)
        return (int)n;
    int rc = stream_write(st, frame, (size_t)n);
    free(frame);
    return rc < 0 ? rc : 0;
}

/* ================================ client ================================ */

enum client_state { CL_IDLE, CL_CONNECTING, CL_ESTABLISHED };

struct ctl_client {
    uv_loop_t *loop;
    struct ctl_client_opts o;
    char director_name[256];
    struct ctl_client_cbs cb;
    void *arg;
    ctl_report_fill_cb fill;
    void *fill_arg;

    struct stream *st;
    enum client_state state;
    bool stopping, closing_stream;
    struct framer fr;
    uv_timer_t retry, report, hb;
    int open_handles;
    uint32_t backoff_ms, heartbeat_ms;
    uint64_t attempt_start, last_rx, ping_seq, rng;
    char director_id[CTL_ID_MAX];
    char last_fail[160];             /* last reason a connection attempt failed, logged once */
    char goodbye[CTL_NOTE_MAX + 48]; /* the Director's reason for closing this connection */
    struct metric *m_connected, *m_failures, *m_reports;
};

static void client_connect(struct ctl_client *c);

static void client_maybe_free(struct ctl_client *c)
{
    if (c->stopping && c->open_handles == 0 && !c->st) {
        if (c->o.tls)
            tls_ctx_unref(c->o.tls);
        buf_fini(&c->fr.in);
        free(c);
    }
}

static void client_on_timer_closed(uv_handle_t *h)
{
    struct ctl_client *c = h->data;
    c->open_handles--;
    client_maybe_free(c);
}

static void client_close_stream(struct ctl_client *c, int err, const char *why)
{
    if (c->st && !c->closing_stream) {
        c->closing_stream = true;
        stream_close(c->st, err, why);
    }
}

static int client_send(struct ctl_client *c, const struct ctl_msg *m)
{
    if (!c->st || c->closing_stream)
        return -ENOTCONN;
    int rc = stream_send_msg(c->st, m);
    if (rc < 0) {
        LOGW(c->o.log, &c->o.director, "ctl: cannot send to the Director (%s); reconnecting",
             strerror(-rc));
        client_close_stream(c, rc, "write failed");
    }
    return rc;
}

static void client_send_periodic_report(struct ctl_client *c)
{
    if (c->state != CL_ESTABLISHED || !c->fill)
        return;
    struct ctl_msg *m = calloc(1, sizeof *m);
    if (!m)
        return;
    m->type = CTL_MSG_REPORT;
    c->fill(&m->u.report, c->fill_arg);
    if (client_send(c, m) == 0)
        metric_inc(c->m_reports);
    free(m);
}

static void client_on_report_timer(uv_timer_t *t)
{
    client_send_periodic_report(t->data);
}

static void client_on_hb_timer(uv_timer_t *t)
{
    struct ctl_client *c = t->data;
    uint64_t now = uv_now(c->loop);
    if (!c->st || c->closing_stream)
        return;
    if (c->state != CL_ESTABLISHED) {
        if (now - c->attempt_start > c->o.welcome_timeout_ms) {
            LOGW(c->o.log, &c->o.director, "ctl: no Welcome from the Director within %u ms",
                 c->o.welcome_timeout_ms);
            client_close_stream(c, -ETIMEDOUT, "no Welcome");
        }
        return;
    }
    if (now - c->last_rx > 3ull * c->heartbeat_ms) {
        LOGW(c->o.log, &c->o.director,
             "ctl: heartbeat timeout: the Director was silent for %llu ms; reconnecting",
             (unsigned long long)(now - c->last_rx));
        client_close_stream(c, -ETIMEDOUT, "heartbeat timeout");
        return;
    }
    struct ctl_msg m = {.type = CTL_MSG_PING, .u.seq = ++c->ping_seq};
    client_send(c, &m);
}

static void client_on_retry_timer(uv_timer_t *t)
{
    client_connect(t->data);
}

static void client_schedule_retry(struct ctl_client *c)
{
    /* "Equal jitter": half the backoff fixed, half random, so a Director restart does not
     * see every edge at once yet none waits much longer than the backoff. */
    uint32_t b = c->backoff_ms;
    uint32_t delay = b / 2 + (b / 2 ? rng_next(&c->rng) % (b / 2 + 1) : 0);
    uint32_t next = b * 2;
    c->backoff_ms = next > c->o.backoff_max_ms ? c->o.backoff_max_ms : next;
    LOGD(c->o.log, &c->o.director, "ctl: reconnecting in %u ms", delay);
    uv_timer_start(&c->retry, client_on_retry_timer, delay, 0);
}

static int client_on_frame(const struct ctl_msg *m, void *arg)
{
    struct ctl_client *c = arg;
    c->last_rx = uv_now(c->loop);
    if (m->type == CTL_MSG_GOODBYE) {
        snprintf(c->goodbye, sizeof c->goodbye, "the Director closed the connection: %s",
                 m->u.reason);
        client_close_stream(c, -ECONNABORTED, c->goodbye);
        return 0;
    }
    if (c->state != CL_ESTABLISHED && m->type != CTL_MSG_WELCOME) {
        LOGW(c->o.log, &c->o.director, "ctl: message type %d from the Director before Welcome",
             (int)m->type);
        return -EPROTO;
    }
    switch (m->type) {
    case CTL_MSG_WELCOME: {
        const struct ctl_welcome *w = &m->u.welcome;
        c->state = CL_ESTABLISHED;
        c->backoff_ms = c->o.backoff_min_ms;
        c->last_fail[0] = '\0';
        metric_set(c->m_connected, 1);
        /* Bounded whatever the Director says: no busy loop, no week-long silence. */
        c->heartbeat_ms = w->heartbeat_ms < 100     ? (w->heartbeat_ms ? 100 : 1000)
                          : w->heartbeat_ms > 60000 ? 60000
                                                    : w->heartbeat_ms;
        snprintf(c->director_id, sizeof c->director_id, "%s", w->director_id);
        LOGI(c->o.log, &c->o.director, "ctl: registered with Director %s as %s/%s (%zu secrets)",
             w->director_id, ctl_role_name(c->o.hello.role), c->o.hello.instance_id, w->n_secrets);
        uv_timer_start(&c->hb, client_on_hb_timer, c->heartbeat_ms, c->heartbeat_ms);
        if (c->cb.on_connected)
            c->cb.on_connected(w->director_id, c->arg);
        for (size_t i = 0; i < w->n_secrets && !c->stopping; i++)
            if (c->cb.on_secret && w->secrets[i].kind != CTL_SECRET_UNKNOWN)
                c->cb.on_secret(&w->secrets[i], c->arg);
        if (!c->stopping) {
            client_send_periodic_report(c);
            uv_timer_start(&c->report, client_on_report_timer, c->o.report_interval_ms,
                           c->o.report_interval_ms);
        }
        return 0;
    }
    case CTL_MSG_SECRET:
        if (c->cb.on_secret && m->u.secret.kind != CTL_SECRET_UNKNOWN)
            c->cb.on_secret(&m->u.secret, c->arg);
        return 0;
    case CTL_MSG_REPORT:
        if (c->cb.on_report)
            c->cb.on_report(&m->u.report, c->arg);
        return 0;
    case CTL_MSG_REVOKE:
        if (c->cb.on_revoke)
            c->cb.on_revoke(&m->u.revoke, c->arg);
        return 0;
    case CTL_MSG_DRAIN:
        LOGI(c->o.log, &c->o.director, "ctl: the Director asks to drain within %u ms",
             m->u.drain_deadline_ms);
        if (c->cb.on_drain)
            c->cb.on_drain(m->u.drain_deadline_ms, c->arg);
        return 0;
    case CTL_MSG_PING: {
        struct ctl_msg pong = {.type = CTL_MSG_PONG, .u.seq = m->u.seq};
        client_send(c, &pong);
        return 0;
    }
    case CTL_MSG_PONG:
        return 0;
    default:
        LOGW(c->o.log, &c->o.director, "ctl: unexpected message type %d from the Director",
             (int)m->type);
        return -EPROTO;
    }
}

static int client_on_data(struct stream *s, const uint8_t *data, size_t len, void *arg)
{
    struct ctl_client *c = arg;
    int rc = framer_feed(&c->fr, data, len, client_on_frame, c, &c->closing_stream);
    if (rc == -EMSGSIZE || rc == -EBADMSG) {
        char why[160];
        frame_error_text(rc, &c->fr, why, sizeof why);
        LOGW(c->o.log, &c->o.director, "ctl: closing the connection to the Director: %s", why);
        c->fr.in.rd = c->fr.in.wr = 0;
    }
    return c->stopping ? -ECANCELED : rc;
}

static void client_on_open(struct stream *s, void *arg)
{
    struct ctl_client *c = arg;
    c->last_rx = uv_now(c->loop);
    struct ctl_msg *m = calloc(1, sizeof *m);
    if (!m) {
        client_close_stream(c, -ENOMEM, "out of memory");
        return;
    }
    m->type = CTL_MSG_HELLO;
    m->u.hello = c->o.hello;
    client_send(c, m);
    free(m);
}

static void client_on_close(struct stream *s, int err, const char *why, void *arg)
{
    struct ctl_client *c = arg;
    bool was_established = c->state == CL_ESTABLISHED;
    c->st = NULL;
    c->closing_stream = false;
    c->state = CL_IDLE;
    metric_set(c->m_connected, 0);
    uv_timer_stop(&c->report);
    uv_timer_stop(&c->hb);
    if (c->stopping) {
        client_maybe_free(c);
        return;
    }
    char left[96];
    framer_leftover(&c->fr, left, sizeof left);
    const char *reason = c->goodbye[0] ? c->goodbye
                         : why && *why ? why
                         : err         ? strerror(-err)
                                       : "closed by the Director";
    if (was_established) {
        LOGW(c->o.log, &c->o.director, "ctl: lost the Director: %s%s%s", reason, *left ? "; " : "",
             left);
        if (c->cb.on_disconnected)
            c->cb.on_disconnected(reason, c->arg);
    } else if (strcmp(reason, c->last_fail) != 0) {
        /* Say why once (a refused certificate, a Director that is down); repeats of the
         * same failure while retrying go to debug. */
        LOGW(c->o.log, &c->o.director, "ctl: cannot reach the Director: %s (retrying)", reason);
        snprintf(c->last_fail, sizeof c->last_fail, "%s", reason);
    } else {
        LOGD(c->o.log, &c->o.director, "ctl: cannot reach the Director: %s", reason);
    }
    metric_inc(c->m_failures);
    if (!c->stopping)
        client_schedule_retry(c);
}

static void client_connect(struct ctl_client *c)
{
    static const struct stream_cbs cbs = {
        .on_data = client_on_data,
        .on_open = client_on_open,
        .on_close = client_on_close,
    };
    struct stream_opts so = {
        .tls = c->o.tls,
        .server_name = c->director_name[0] ? c->director_name : NULL,
        .handshake_timeout_ms = c->o.welcome_timeout_ms,
        .write_cap = 4 * CTL_FRAME_MAX,
    };
    if (c->stopping || c->st)
        return;
    c->fr.in.rd = c->fr.in.wr = 0;
    c->fr.frames = 0;
    c->goodbye[0] = '\0';
    c->state = CL_CONNECTING;
    c->attempt_start = uv_now(c->loop);
    int rc = stream_connect(c->loop, &c->o.director, NULL, &so, &cbs, c, &c->st);
    if (rc < 0) {
        c->st = NULL;
        c->state = CL_IDLE;
        LOGW(c->o.log, &c->o.director, "ctl: cannot connect to the Director: %s", strerror(-rc));
        client_schedule_retry(c);
        return;
    }
    /* Until the Welcome, the heartbeat timer watches the handshake's deadline. */
    uv_timer_start(&c->hb, client_on_hb_timer, 250, 250);
}

int ctl_client_start(uv_loop_t *loop, const struct ctl_client_opts *o,
                     const struct ctl_client_cbs *cb, void *arg, struct ctl_client **out)
{
    if (!loop || !o || !out || (!o->tls && (!o->cert_file || !o->key_file || !o->ca_file)) ||
        o->hello.role == CTL_ROLE_UNKNOWN || !o->hello.instance_id[0] ||
        o->hello.n_external > CTL_ADDRS_MAX || o->hello.n_internal > CTL_ADDRS_MAX ||
        o->hello.n_subscribe > CTL_SUBSCRIBE_MAX)
        return -EINVAL;
    struct ctl_msg *hm = malloc(sizeof *hm);
    if (!hm)
        return -ENOMEM;
    hm->type = CTL_MSG_HELLO;
    hm->u.hello = o->hello;
    bool hello_ok = msg_strings_ok(hm);
    free(hm);
    if (!hello_ok) {
        LOGE(o->log, NULL, "ctl: the Hello's strings must be UTF-8 without control characters");
        return -EINVAL;
    }
    struct tls_ctx *tls = o->tls;
    if (tls) {
        tls_ctx_ref(tls);
    } else {
        struct tls_files_config f = {(char *)o->cert_file, (char *)o->key_file,
                                     (char *)o->ca_file};
        char err[256] = "";
        int rc = tls_files_ctx(&tls, &f, &(struct tls_files_use){.verify_peer = true}, err,
                               sizeof err);
        if (rc) {
            LOGE(o->log, NULL, "ctl: client TLS: %s", err[0] ? err : strerror(-rc));
            return rc;
        }
    }
    struct ctl_client *c = calloc(1, sizeof *c);
    if (!c) {
        tls_ctx_unref(tls);
        return -ENOMEM;
    }
    framer_init(&c->fr);
    c->loop = loop;
    c->o = *o;
    c->o.tls = tls;
    c->o.cert_file = c->o.key_file = c->o.ca_file = NULL;
    if (o->director_name)
        snprintf(c->director_name, sizeof c->director_name, "%s", o->director_name);
    c->o.director_name = NULL;
    if (!c->o.report_interval_ms)
        c->o.report_interval_ms = 1000;
    if (!c->o.backoff_min_ms)
        c->o.backoff_min_ms = 100;
    if (!c->o.backoff_max_ms)
        c->o.backoff_max_ms = 5000;
    if (c->o.backoff_max_ms < c->o.backoff_min_ms)
        c->o.backoff_max_ms = c->o.backoff_min_ms;
    if (!c->o.welcome_timeout_ms)
        c->o.welcome_timeout_ms = 5000;
    if (cb)
        c->cb = *cb;
    c->arg = arg;
    c->backoff_ms = c->o.backoff_min_ms;
    c->heartbeat_ms = 1000;
    c->m_connected =
        metrics_gauge(o->metrics, "ctl_connected", "1 while registered with the Director", NULL);
    c->m_failures = metrics_counter(o->metrics, "ctl_connection_failures_total",
                                    "control connections that failed or were lost", NULL);
    c->m_reports = metrics_counter(o->metrics, "ctl_reports_sent_total",
                                   "load reports sent to the Director", NULL);
    c->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)c ^ 0x9E3779B97F4A7C15ULL;
    if (!c->rng)
        c->rng = 1;
    uv_timer_t *timers[] = {&c->retry, &c->report, &c->hb};
    for (size_t i = 0; i < ARRAY_SIZE(timers); i++) {
        uv_timer_init(loop, timers[i]);
        timers[i]->data = c;
        c->open_handles++;
    }
    *out = c;
    client_connect(c);
    return 0;
}

int ctl_client_start_link(uv_loop_t *loop, const struct director_link_config *link,
                          const struct ctl_hello *hello, const struct logger *log,
                          struct metrics *metrics, const struct ctl_client_cbs *cb, void *arg,
                          struct ctl_client **out)
{
    if (!link || !hello || !out)
        return -EINVAL;
    if (!link->enabled) {
        *out = NULL;
        return 0;
    }
    struct ctl_client_opts o;
    memset(&o, 0, sizeof o);
    o.director = link->address;
    o.director_name = link->server_name;
    o.cert_file = link->tls.cert;
    o.key_file = link->tls.key;
    o.ca_file = link->tls.ca;
    o.hello = *hello;
    o.report_interval_ms =
        link->report_interval_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)link->report_interval_ms;
    o.log = log;
    o.metrics = metrics;
    if (!o.cert_file || !o.key_file || !o.ca_file) {
        LOGE(log, NULL, "ctl: director.tls needs cert, key and ca (mutual TLS)");
        return -EINVAL;
    }
    return ctl_client_start(loop, &o, cb, arg, out);
}

void ctl_client_set_report_source(struct ctl_client *c, ctl_report_fill_cb fill, void *arg)
{
    if (!c)
        return;
    c->fill = fill;
    c->fill_arg = arg;
}

int ctl_client_send_report(struct ctl_client *c, const struct ctl_report *r)
{
    if (!c || !r)
        return -EINVAL;
    if (c->state != CL_ESTABLISHED || c->stopping)
        return -ENOTCONN;
    struct ctl_msg *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->type = CTL_MSG_REPORT;
    m->u.report = *r;
    int rc = client_send(c, m);
    free(m);
    if (rc == 0)
        metric_inc(c->m_reports);
    return rc;
}

void ctl_client_set_tls(struct ctl_client *c, struct tls_ctx *tls)
{
    if (!c || !tls || c->stopping)
        return;
    tls_ctx_ref(tls);
    tls_ctx_unref(c->o.tls);
    c->o.tls = tls;
}

int ctl_client_reload_link(struct ctl_client *c, const struct director_link_config *link,
                           char *err, size_t errcap)
{
    if (!c || !link->enabled)
        return 0;
    struct tls_ctx *tls;
    int rc = tls_files_ctx(&tls, &link->tls, &(struct tls_files_use){.verify_peer = true}, err,
                           errcap);
    if (rc)
        return rc;
    ctl_client_set_tls(c, tls);
    tls_ctx_unref(tls);
    return 0;
}

bool ctl_client_connected(const struct ctl_client *c)
{
    return c && c->state == CL_ESTABLISHED;
}

void ctl_client_stop(struct ctl_client *c)
{
    if (!c || c->stopping)
        return;
    c->stopping = true;
    uv_handle_t *hs[] = {(uv_handle_t *)&c->retry, (uv_handle_t *)&c->report,
                         (uv_handle_t *)&c->hb};
    for (size_t i = 0; i < ARRAY_SIZE(hs); i++)
        uv_close(hs[i], client_on_timer_closed);
    client_close_stream(c, 0, "stopping");
}

/* ================================ server ================================ */

struct ctl_peer {
    struct ctl_server *srv;
    struct stream *st;
    struct ctl_peer *next, *prev;
    struct addr addr;
    struct framer fr;
    struct ctl_hello hello;
    bool opened, said_hello;
    bool closing;       /* no more frames in or out */
    bool stream_closed; /* stream_close called; on_close follows */
    int close_err;
    char close_why[160];
    char cert_name[128];
    uint64_t accepted_at, last_rx, ping_seq, goodbye_at;
};

/* How long a peer that got a Goodbye has to close its side before we cut it off. */
#define CTL_GOODBYE_GRACE_MS 1000

struct ctl_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t hb;
    struct ctl_server_cbs cb;
    void *arg;
    struct tls_ctx *tls;
    const struct logger *log;
    uint32_t heartbeat_ms;
    char director_id[CTL_ID_MAX];
    struct ctl_peer *peers;
    size_t npeers, nhello, max_peers;
    uint64_t last_reject_log;
    struct metric *m_refused_tls, *m_refused_frame, *m_refused_hello, *m_refused_overload;
    struct metric *m_hb_timeouts;
    int open_handles;
    bool stopping;
};

static void server_maybe_free(struct ctl_server *s)
{
    if (s->stopping && s->open_handles == 0 && !s->peers) {
        tls_ctx_unref(s->tls);
        free(s);
    }
}

static void server_on_handle_closed(uv_handle_t *h)
{
    struct ctl_server *s = h->data;
    s->open_handles--;
    server_maybe_free(s);
}

/* Closes p now, with a reason that on_close will log (the first reason wins). */
static void peer_close(struct ctl_peer *p, int err, const char *why)
{
    if (p->stream_closed)
        return;
    if (!p->closing) {
        p->closing = true;
        p->close_err = err;
        snprintf(p->close_why, sizeof p->close_why, "%s", why);
    }
    p->stream_closed = true;
    stream_close(p->st, p->close_err, p->close_why);
}

/* Tells p why we close (a Goodbye), then half-closes so the edge reads it before EOF;
 * the heartbeat timer cuts the connection if the edge does not close within the grace. */
static void peer_goodbye(struct ctl_peer *p, int err, const char *why)
{
    if (p->closing)
        return;
    if (!p->opened) {
        peer_close(p, err, why);
        return;
    }
    struct ctl_msg m = {.type = CTL_MSG_GOODBYE};
    snprintf(m.u.reason, sizeof m.u.reason, "%s", why);
    p->closing = true;
    p->close_err = err;
    snprintf(p->close_why, sizeof p->close_why, "%s", why);
    p->goodbye_at = uv_now(p->srv->loop);
    if (stream_send_msg(p->st, &m) < 0) {
        peer_close(p, err, why);
        return;
    }
    stream_shutdown(p->st);
}

static int peer_send(struct ctl_peer *p, const struct ctl_msg *m)
{
    if (!p || p->closing)
        return -ENOTCONN;
    int rc = stream_send_msg(p->st, m);
    if (rc < 0)
        peer_close(p, rc, rc == -ENOBUFS ? "write queue full (edge not reading)" : "write failed");
    return rc;
}

static int peer_send_frame(struct ctl_peer *p, const uint8_t *frame, size_t len)
{
    if (p->closing)
        return -ENOTCONN;
    int rc = stream_write(p->st, frame, len);
    if (rc < 0) {
        peer_close(p, rc, rc == -ENOBUFS ? "write queue full (edge not reading)" : "write failed");
        return rc;
    }
    return 0;
}

static struct ctl_peer *server_find(struct ctl_server *s, enum ctl_role role, const char *id,
                                    const struct ctl_peer *except)
{
    for (struct ctl_peer *p = s->peers; p; p = p->next)
        if (p != except && p->said_hello && !p->closing && p->hello.role == role &&
            strcmp(p->hello.instance_id, id) == 0)
            return p;
    return NULL;
}

static int peer_on_hello(struct ctl_peer *p, const struct ctl_hello *h)
{
    struct ctl_server *s = p->srv;
    if (h->role == CTL_ROLE_UNKNOWN || h->role == CTL_ROLE_DIRECTOR || !h->instance_id[0]) {
        LOGW(s->log, &p->addr, "ctl: refusing Hello with role %s and instance \"%s\"",
             ctl_role_name(h->role), h->instance_id);
        metric_inc(s->m_refused_hello);
        peer_goodbye(p, -EPROTO, "invalid Hello: an edge role and an instance id are required");
        return -EPROTO;
    }
    /* Two live connections for one instance are a misconfiguration (or an impostor): keep
     * the first. An edge that restarted gets in once its old connection is gone (at once
     * when the old process closed it, else after three silent heartbeats), so replacing
     * the old one would only make two edges with the same id take turns kicking each
     * other out. */
    struct ctl_peer *old = server_find(s, h->role, h->instance_id, p);
    if (old) {
        char a[ADDR_STRLEN], why[160];
        snprintf(why, sizeof why, "%s/%s is already connected from %s", ctl_role_name(h->role),
                 h->instance_id, addr_format(&old->addr, a));
        LOGW(s->log, &p->addr, "ctl: refusing Hello: %s", why);
        metric_inc(s->m_refused_hello);
        peer_goodbye(p, -EEXIST, why);
        return -EEXIST;
    }
    p->hello = *h;
    struct ctl_msg *m = calloc(1, sizeof *m);
    if (!m) {
        peer_close(p, -ENOMEM, "out of memory");
        return -ENOMEM;
    }
    m->type = CTL_MSG_WELCOME;
    int n =
        s->cb.on_hello ? s->cb.on_hello(p, h, m->u.welcome.secrets, CTL_SECRETS_MAX, s->arg) : 0;
    if (n < 0) {
        LOGW(s->log, &p->addr, "ctl: %s/%s refused: %s", ctl_role_name(h->role), h->instance_id,
             strerror(-n));
        free(m);
        char why[96];
        snprintf(why, sizeof why, "refused by the Director: %s", strerror(-n));
        metric_inc(s->m_refused_hello);
        peer_goodbye(p, n, why);
        return n;
    }
    p->said_hello = true;
    s->nhello++;
    m->u.welcome.n_secrets = (size_t)n > CTL_SECRETS_MAX ? CTL_SECRETS_MAX : (size_t)n;
    snprintf(m->u.welcome.director_id, sizeof m->u.welcome.director_id, "%s", s->director_id);
    m->u.welcome.heartbeat_ms = s->heartbeat_ms;
    LOGI(s->log, &p->addr, "ctl: edge registered: %s/%s version %s (certificate \"%s\")",
         ctl_role_name(h->role), h->instance_id, h->version[0] ? h->version : "?", p->cert_name);
    int rc = peer_send(p, m);
    free(m);
    return rc;
}

static bool peer_subscribes(const struct ctl_peer *p, enum ctl_role r)
{
    for (size_t i = 0; i < p->hello.n_subscribe; i++)
        if (p->hello.subscribe[i] == r)
            return true;
    return false;
}

static void peer_on_report(struct ctl_peer *p, const struct ctl_report *in)
{
    struct ctl_server *s = p->srv;
    struct ctl_msg *m = malloc(sizeof *m);
    if (!m)
        return;
    m->type = CTL_MSG_REPORT;
    m->u.report = *in;
    /* The Director, not the edge, says who sent it: an edge cannot speak for another. */
    m->u.report.role = p->hello.role;
    snprintf(m->u.report.instance_id, sizeof m->u.report.instance_id, "%s", p->hello.instance_id);
    memcpy(m->u.report.external_addrs, p->hello.external_addrs, sizeof p->hello.external_addrs);
    m->u.report.n_external = p->hello.n_external;
    memcpy(m->u.report.internal_addrs, p->hello.internal_addrs, sizeof p->hello.internal_addrs);
    m->u.report.n_internal = p->hello.n_internal;
    uint8_t *frame = NULL;
    ssize_t n = -1;
    for (struct ctl_peer *q = s->peers; q; q = q->next) {
        if (q == p || !q->said_hello || q->closing || !peer_subscribes(q, p->hello.role))
            continue;
        if (!frame && (n = frame_alloc(m, &frame)) < 0)
            break;
        peer_send_frame(q, frame, (size_t)n);
    }
    free(frame);
    if (s->cb.on_report)
        s->cb.on_report(p, &m->u.report, s->arg);
    free(m);
}

static int peer_on_frame(const struct ctl_msg *m, void *arg)
{
    struct ctl_peer *p = arg;
    struct ctl_server *s = p->srv;
    p->last_rx = uv_now(s->loop);
    if (!p->said_hello && m->type != CTL_MSG_HELLO) {
        LOGW(s->log, &p->addr, "ctl: closing: message type %d before Hello", (int)m->type);
        peer_goodbye(p, -EPROTO, "protocol error: a message before Hello");
        return 0;
    }
    switch (m->type) {
    case CTL_MSG_HELLO:
        if (p->said_hello) {
            LOGW(s->log, &p->addr, "ctl: closing: second Hello from %s/%s",
                 ctl_role_name(p->hello.role), p->hello.instance_id);
            peer_goodbye(p, -EPROTO, "protocol error: a second Hello");
            return 0;
        }
        peer_on_hello(p, &m->u.hello);
        return 0;
    case CTL_MSG_REPORT:
        peer_on_report(p, &m->u.report);
        return 0;
    case CTL_MSG_PING: {
        struct ctl_msg pong = {.type = CTL_MSG_PONG, .u.seq = m->u.seq};
        peer_send(p, &pong);
        return 0;
    }
    case CTL_MSG_PONG:
        return 0;
    default:
        LOGW(s->log, &p->addr, "ctl: closing: an edge may not send message type %d", (int)m->type);
        peer_goodbye(p, -EPROTO, "protocol error: a message an edge may not send");
        return 0;
    }
}

static int peer_on_data(struct stream *st, const uint8_t *data, size_t len, void *arg)
{
    struct ctl_peer *p = arg;
    int rc = framer_feed(&p->fr, data, len, peer_on_frame, p, &p->closing);
    if (rc < 0) {
        char why[160];
        frame_error_text(rc, &p->fr, why, sizeof why);
        if (p->said_hello)
            LOGW(p->srv->log, &p->addr, "ctl: closing control connection of %s/%s: %s",
                 ctl_role_name(p->hello.role), p->hello.instance_id, why);
        else
            LOGW(p->srv->log, &p->addr, "ctl: closing control connection: %s", why);
        p->fr.in.rd = p->fr.in.wr = 0;
        metric_inc(p->srv->m_refused_frame);
        peer_goodbye(p, rc, why);
    }
    return 0;
}

static void peer_on_open(struct stream *st, void *arg)
{
    struct ctl_peer *p = arg;
    struct tls_conn *t = stream_tls(st);
    p->opened = true;
    p->last_rx = uv_now(p->srv->loop);
    if (t) {
        const char *cn = tls_conn_peer_cn(t);
        snprintf(p->cert_name, sizeof p->cert_name, "%s", cn ? cn : "");
        if (!tls_conn_peer_verified(t)) {
            /* The TLS context should already have refused it; never trust an unverified peer. */
            LOGW(p->srv->log, &p->addr,
                 "ctl: refused control connection: the peer's certificate is not signed by our CA");
            peer_close(p, -EACCES, "unverified certificate");
            return;
        }
    }
    LOGD(p->srv->log, &p->addr, "ctl: TLS up (certificate \"%s\")", p->cert_name);
}

static void peer_on_close(struct stream *st, int err, const char *why, void *arg)
{
    struct ctl_peer *p = arg;
    struct ctl_server *s = p->srv;
    if (p->prev)
        p->prev->next = p->next;
    else
        s->peers = p->next;
    if (p->next)
        p->next->prev = p->prev;
    s->npeers--;
    if (p->said_hello)
        s->nhello--;
    const char *reason = p->close_why[0] ? p->close_why
                         : why && *why   ? why
                         : err           ? strerror(-err)
                                         : "closed by the edge";
    if (!s->stopping) {
        char left[96];
        framer_leftover(&p->fr, left, sizeof left);
        if (!p->opened && err == 0) {
            LOGI(s->log, &p->addr, "ctl: connection closed before the TLS handshake finished");
        } else if (!p->opened) {
            metric_inc(s->m_refused_tls);
            LOGW(s->log, &p->addr, "ctl: refused control connection: TLS handshake failed: %s",
                 reason);
        } else if (p->said_hello) {
            LOGI(s->log, &p->addr, "ctl: edge gone: %s/%s: %s%s%s", ctl_role_name(p->hello.role),
                 p->hello.instance_id, reason, *left ? "; " : "", left);
            if (s->cb.on_gone)
                s->cb.on_gone(p, reason, s->arg);
        } else {
            LOGI(s->log, &p->addr, "ctl: control connection closed before Hello: %s%s%s", reason,
                 *left ? "; " : "", left);
        }
    }
    buf_fini(&p->fr.in);
    free(p);
    server_maybe_free(s);
}

static void server_on_rejected_closed(uv_handle_t *h)
{
    free(h);
}

/* Accepts and closes at once: libuv stops watching a listener whose connection is not
 * taken. Logged at most once a second, as this is what a connection flood looks like. */
static void server_reject(struct ctl_server *s, uv_stream_t *l, const char *why)
{
    uv_tcp_t *t = malloc(sizeof *t);
    if (t) {
        uv_tcp_init(s->loop, t);
        uv_accept(l, (uv_stream_t *)t);
        uv_close((uv_handle_t *)t, server_on_rejected_closed);
    }
    uint64_t now = uv_now(s->loop);
    metric_inc(s->m_refused_overload);
    if (now - s->last_reject_log >= 1000 || !s->last_reject_log) {
        s->last_reject_log = now;
        LOGW(s->log, NULL, "ctl: refusing a control connection: %s (%zu open)", why, s->npeers);
    }
}

static void server_on_conn(uv_stream_t *l, int status)
{
    static const struct stream_cbs cbs = {
        .on_data = peer_on_data,
        .on_open = peer_on_open,
        .on_close = peer_on_close,
    };
    struct ctl_server *s = l->data;
    if (status < 0) {
        LOGW(s->log, NULL, "ctl: accept failed: %s", uv_strerror(status));
        return;
    }
    struct ctl_peer *p = NULL;
    if (s->npeers >= s->max_peers || !(p = calloc(1, sizeof *p))) {
        server_reject(s, l, p ? "out of memory" : "too many control connections");
        return;
    }
    framer_init(&p->fr);
    p->srv = s;
    struct stream_opts so = {
        .tls = s->tls,
        .handshake_timeout_ms = 5000,
        .write_cap = 4 * CTL_FRAME_MAX,
    };
    int rc = stream_accept(l, &so, &cbs, p, &p->st);
    if (rc < 0) {
        LOGW(s->log, NULL, "ctl: accept failed: %s", strerror(-rc));
        buf_fini(&p->fr.in);
        free(p);
        return;
    }
    p->addr = *stream_peer(p->st);
    p->accepted_at = p->last_rx = uv_now(s->loop);
    p->next = s->peers;
    if (s->peers)
        s->peers->prev = p;
    s->peers = p;
    s->npeers++;
}

static void server_on_hb(uv_timer_t *t)
{
    struct ctl_server *s = t->data;
    uint64_t now = uv_now(s->loop);
    uint64_t limit = 3ull * s->heartbeat_ms;
    for (struct ctl_peer *p = s->peers; p; p = p->next) {
        if (p->closing) {
            if (!p->stream_closed && now - p->goodbye_at > CTL_GOODBYE_GRACE_MS)
                peer_close(p, p->close_err, p->close_why);
            continue;
        }
        if (!p->opened)
            continue;
        if (now - p->last_rx > limit) {
            char why[96];
            snprintf(why, sizeof why, "heartbeat timeout: silent for %llu ms",
                     (unsigned long long)(now - p->last_rx));
            metric_inc(s->m_hb_timeouts);
            peer_close(p, -ETIMEDOUT, p->said_hello ? why : "no Hello in time");
            continue;
        }
        if (p->said_hello) {
            struct ctl_msg m = {.type = CTL_MSG_PING, .u.seq = ++p->ping_seq};
            peer_send(p, &m);
        }
    }
}

int ctl_server_start(uv_loop_t *loop, const struct ctl_server_opts *o,
                     const struct ctl_server_cbs *cb, void *arg, struct ctl_server **out)
{
    if (!loop || !o || !o->tls || !out)
        return -EINVAL;
    struct ctl_server *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    if (cb)
        s->cb = *cb;
    s->arg = arg;
    s->log = o->log;
    s->heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : 1000;
    s->max_peers = o->max_peers ? o->max_peers : 1024;
    static const char *const help = "control connections refused, by reason";
    s->m_refused_tls = metrics_counter(o->metrics, "ctl_refused_total", help, "reason=\"tls\"");
    s->m_refused_frame = metrics_counter(o->metrics, "ctl_refused_total", help, "reason=\"frame\"");
    s->m_refused_hello = metrics_counter(o->metrics, "ctl_refused_total", help, "reason=\"hello\"");
    s->m_refused_overload =
        metrics_counter(o->metrics, "ctl_refused_total", help, "reason=\"overload\"");
    s->m_hb_timeouts = metrics_counter(o->metrics, "ctl_heartbeat_timeouts_total",
                                       "peers dropped after three silent heartbeats", NULL);
    snprintf(s->director_id, sizeof s->director_id, "%s", o->director_id ? o->director_id : "");
    s->tls = o->tls;
    tls_ctx_ref(s->tls);
    int rc = stream_listen(loop, &s->listener, &o->listen, 128, false, server_on_conn);
    if (rc < 0) {
        char a[ADDR_STRLEN];
        LOGE(o->log, NULL, "ctl: cannot listen on %s: %s", addr_format(&o->listen, a),
             uv_strerror(rc));
        s->stopping = true;
        if (uv_is_closing((uv_handle_t *)&s->listener)) {
            /* stream_listen got as far as libuv and closed the handle itself (with no
             * callback): s must outlive that close, so free it from the close callback. */
            s->listener.data = s;
            s->listener.close_cb = server_on_handle_closed;
            s->open_handles = 1;
        } else {
            server_maybe_free(s);
        }
        return rc;
    }
    s->listener.data = s;
    uv_timer_init(loop, &s->hb);
    s->hb.data = s;
    s->open_handles = 2;
    uv_timer_start(&s->hb, server_on_hb, s->heartbeat_ms, s->heartbeat_ms);
    *out = s;
    return 0;
}

void ctl_server_stop(struct ctl_server *s)
{
    if (!s || s->stopping)
        return;
    s->stopping = true;
    uv_close((uv_handle_t *)&s->listener, server_on_handle_closed);
    uv_close((uv_handle_t *)&s->hb, server_on_handle_closed);
    struct ctl_msg bye = {.type = CTL_MSG_GOODBYE, .u.reason = "the Director is stopping"};
    for (struct ctl_peer *p = s->peers; p; p = p->next) {
        /* Best effort: stream_close gives queued bytes one non-blocking write. */
        if (p->opened && !p->closing)
            stream_send_msg(p->st, &bye);
        peer_close(p, 0, "Director stopping");
    }
}

void ctl_server_set_tls(struct ctl_server *s, struct tls_ctx *tls)
{
    if (!s || !tls || s->stopping)
        return;
    tls_ctx_ref(tls);
    tls_ctx_unref(s->tls);
    s->tls = tls;
}

int ctl_server_local_addr(const struct ctl_server *s, struct addr *out)
{
    if (!s || !out)
        return -EINVAL;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    int rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
    return rc < 0 ? rc : addr_from_sockaddr(out, (struct sockaddr *)&ss);
}

size_t ctl_server_peer_count(const struct ctl_server *s)
{
    return s ? s->nhello : 0;
}

void ctl_server_foreach(struct ctl_server *s, void (*fn)(struct ctl_peer *p, void *arg), void *arg)
{
    if (!s || !fn)
        return;
    for (struct ctl_peer *p = s->peers; p; p = p->next)
        if (p->said_hello && !p->closing)
            fn(p, arg);
}

const struct ctl_hello *ctl_peer_hello(const struct ctl_peer *p)
{
    return &p->hello;
}

const struct addr *ctl_peer_addr(const struct ctl_peer *p)
{
    return &p->addr;
}

const char *ctl_peer_cert_name(const struct ctl_peer *p)
{
    return p->cert_name;
}

static bool name_matches(const char *have, const char *want)
{
    size_t n = strlen(want);
    return have && strncasecmp(have, want, n) == 0 && (have[n] == '\0' || have[n] == '.');
}

bool ctl_peer_cert_names(const struct ctl_peer *p, const char *name)
{
    if (!p || !name || !*name || p->stream_closed)
        return false;
    struct tls_conn *t = stream_tls(p->st);
    if (!t || !tls_conn_peer_verified(t))
        return false;
    if (name_matches(tls_conn_peer_cn(t), name))
        return true;
    for (size_t i = 0; i < 64; i++) {
        const char *san = tls_conn_peer_san(t, i);
        if (!san)
            break;
        if (name_matches(san, name))
            return true;
    }
    return false;
}

int ctl_peer_send_secret(struct ctl_peer *p, const struct ctl_secret *sec)
{
    if (!p || !sec)
        return -EINVAL;
    struct ctl_msg *m = malloc(sizeof *m);
    if (!m)
        return -ENOMEM;
    m->type = CTL_MSG_SECRET;
    m->u.secret = *sec;
    int rc = peer_send(p, m);
    free(m);
    return rc;
}

int ctl_peer_send_revoke(struct ctl_peer *p, const struct ctl_revoke *r)
{
    if (!p || !r)
        return -EINVAL;
    struct ctl_msg *m = malloc(sizeof *m);
    if (!m)
        return -ENOMEM;
    m->type = CTL_MSG_REVOKE;
    m->u.revoke = *r;
    int rc = peer_send(p, m);
    free(m);
    return rc;
}

int ctl_peer_send_report(struct ctl_peer *p, const struct ctl_report *r)
{
    if (!p || !r)
        return -EINVAL;
    struct ctl_msg *m = malloc(sizeof *m);
    if (!m)
        return -ENOMEM;
    m->type = CTL_MSG_REPORT;
    m->u.report = *r;
    int rc = peer_send(p, m);
    free(m);
    return rc;
}

int ctl_peer_send_drain(struct ctl_peer *p, uint32_t deadline_ms)
{
    if (!p)
        return -EINVAL;
    struct ctl_msg m = {.type = CTL_MSG_DRAIN, .u.drain_deadline_ms = deadline_ms};
    return peer_send(p, &m);
}

void ctl_peer_close(struct ctl_peer *p, const char *why)
{
    if (p)
        peer_goodbye(p, -ECONNABORTED, why ? why : "closed by the Director");
}

#endif /* !FUZZING */
