/* The Director's control-plane hub: which edges are connected (by role, with their last
 * report), the shared secrets it issues and rotates, and the admin endpoints over both. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/crypto.h"
#include "director/director.h"
#include "director/json.h"

/* Edges remembered at most; disconnected ones are forgotten first (oldest first). */
#define HUB_EDGES_MAX 256

struct hub_edge {
    struct ctl_hello hello;
    struct ctl_peer *peer; /* NULL once gone */
    char peer_addr[ADDR_STRLEN];
    char cert_name[128];
    char gone_why[96];
    struct ctl_report report;
    bool has_report;
    uint64_t reports;
    int64_t registered_ms; /* wall clock, ms */
    int64_t last_seen_ms;  /* wall clock, ms: Hello, reports, disconnection */
};

/* A user cut off by POST /revoke: no credentials for it until POST /reinstate (or until,
 * when the caller gave one). */
struct hub_revoked {
    char user[CTL_USER_MAX];
    int64_t until;      /* unix seconds; INT64_MAX: until reinstated */
    int64_t edge_until; /* what the edges were told (they forget it then) */
    int64_t revoked_at;
    /* Reinstated: credentials expiring by expiring_by were minted before the revocation
     * and stay refused; new ones are minted to expire after it. */
    bool lifted;
    int64_t expiring_by;
};
#define HUB_REVOKED_MAX 4096

struct hub {
    struct director *d;
    struct hub_revoked *revoked;
    size_t nrevoked;
    uv_timer_t rotate;
    uint64_t rotate_interval_ms;
    struct hub_edge edges[HUB_EDGES_MAX];
    size_t nedges;
    void (*done)(void *arg);
    void *done_arg;
    struct metric *m_connected[CTL_ROLE_COUNT];
    struct metric *m_reports, *m_registrations, *m_rotations[3], *m_pushes;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

unsigned hub_role_secret_kinds(enum ctl_role role)
{
    switch (role) {
    case CTL_ROLE_AV_EDGE:
        return 1u << CTL_SECRET_RELAY;
    case CTL_ROLE_CONF_EDGE:
        return 1u << CTL_SECRET_CONFERENCE;
    default:
        return 0; /* access-edge and revproxy verify no Director-issued tokens */
    }
}

static struct keyring *hub_keyring(struct director *d, enum ctl_secret_kind kind)
{
    return kind == CTL_SECRET_RELAY ? &d->relay_keys : &d->conf_keys;
}

static void key_to_secret(const struct token_key *k, enum ctl_secret_kind kind,
                          struct ctl_secret *s)
{
    memset(s, 0, sizeof *s);
    s->kind = kind;
    snprintf(s->key_id, sizeof s->key_id, "%s", k->id);
    s->secret_len = k->secret_len < sizeof s->secret ? k->secret_len : sizeof s->secret;
    memcpy(s->secret, k->secret, s->secret_len);
    s->not_after = k->not_after;
}

/* ---- registry ---- */

static struct hub_edge *hub_find_peer(struct hub *h, const struct ctl_peer *p)
{
    for (size_t i = 0; i < h->nedges; i++)
        if (h->edges[i].peer == p)
            return &h->edges[i];
    return NULL;
}

static struct hub_edge *hub_find(struct hub *h, enum ctl_role role, const char *instance)
{
    for (size_t i = 0; i < h->nedges; i++)
        if ((role == CTL_ROLE_UNKNOWN || h->edges[i].hello.role == role) &&
            strcmp(h->edges[i].hello.instance_id, instance) == 0)
            return &h->edges[i];
    return NULL;
}

static void hub_update_gauges(struct hub *h)
{
    int64_t n[CTL_ROLE_COUNT] = {0};
    for (size_t i = 0; i < h->nedges; i++)
        if (h->edges[i].peer && (unsigned)h->edges[i].hello.role < CTL_ROLE_COUNT)
            n[h->edges[i].hello.role]++;
    for (int r = 0; r < CTL_ROLE_COUNT; r++)
        metric_set(h->m_connected[r], n[r]);
}

/* A slot for (role, instance): the existing one, a free one, or the oldest disconnected. */
static struct hub_edge *hub_slot(struct hub *h, const struct ctl_hello *hello)
{
    struct hub_edge *e = hub_find(h, hello->role, hello->instance_id);
    if (e)
        return e;
    if (h->nedges < HUB_EDGES_MAX)
        return &h->edges[h->nedges++];
    struct hub_edge *oldest = NULL;
    for (size_t i = 0; i < h->nedges; i++)
        if (!h->edges[i].peer && (!oldest || h->edges[i].last_seen_ms < oldest->last_seen_ms))
            oldest = &h->edges[i];
    return oldest;
}

static int hub_on_hello(struct ctl_peer *p, const struct ctl_hello *hello,
                        struct ctl_secret *secrets, size_t max, void *arg)
{
    struct director *d = arg;
    struct hub *h = d->hub;
    /* Secrets go by role, so the role must be one the CA vouched for, not only one the
     * edge claims. */
    if (d->cfg->ctl.require_cert_role && !ctl_peer_cert_names(p, ctl_role_name(hello->role))) {
        LOGW(d->log, ctl_peer_addr(p),
             "hub: refusing %s/%s: its certificate (CN \"%s\") does not name the role %s",
             ctl_role_name(hello->role), hello->instance_id, ctl_peer_cert_name(p),
             ctl_role_name(hello->role));
        return -EACCES;
    }
    struct hub_edge *e = hub_slot(h, hello);
    if (!e) {
        LOGW(d->log, ctl_peer_addr(p), "hub: registry full (%d edges connected); refusing %s/%s",
             HUB_EDGES_MAX, ctl_role_name(hello->role), hello->instance_id);
        return -ENOSPC;
    }
    memset(e, 0, sizeof *e);
    e->hello = *hello;
    e->peer = p;
    addr_format(ctl_peer_addr(p), e->peer_addr);
    snprintf(e->cert_name, sizeof e->cert_name, "%s", ctl_peer_cert_name(p));
    e->registered_ms = e->last_seen_ms = wall_ms();
    metric_inc(h->m_registrations);
    hub_update_gauges(h);

    size_t n = 0;
    unsigned kinds = hub_role_secret_kinds(hello->role);
    int64_t now = time_wall_s();
    for (int k = CTL_SECRET_RELAY; k <= CTL_SECRET_CONFERENCE; k++) {
        if (!(kinds & (1u << k)))
            continue;
        /* Oldest first: an edge that rotates each into its keyring in order ends with the
         * Director's current key as its current one. */
        const struct keyring *kr = hub_keyring(d, (enum ctl_secret_kind)k);
        if (kr->prev.secret_len && (!kr->prev.not_after || kr->prev.not_after > now) && n < max)
            key_to_secret(&kr->prev, (enum ctl_secret_kind)k, &secrets[n++]);
        if (kr->cur.secret_len && n < max)
            key_to_secret(&kr->cur, (enum ctl_secret_kind)k, &secrets[n++]);
    }
    return (int)n;
}

static void hub_send_revocations(struct hub *h, struct ctl_peer *p);

/* The last report of each connected edge of the roles e subscribes to, so that it knows its
 * peers at once (a draining av-edge redirects to them) rather than a report interval later. */
static void hub_send_last_reports(struct hub *h, const struct hub_edge *e)
{
    for (size_t i = 0; i < h->nedges; i++) {
        const struct hub_edge *o = &h->edges[i];
        if (o == e || !o->peer || !o->has_report)
            continue;
        for (size_t k = 0; k < e->hello.n_subscribe; k++)
            if (e->hello.subscribe[k] == o->hello.role &&
                ctl_peer_send_report(e->peer, &o->report) < 0)
                return;
    }
}

static void hub_on_report(struct ctl_peer *p, const struct ctl_report *r, void *arg)
{
    struct director *d = arg;
    struct hub_edge *e = hub_find_peer(d->hub, p);
    metric_inc(d->hub->m_reports);
    if (!e)
        return;
    if (!e->reports) { /* the first report follows the Welcome: now it may hear more */
        hub_send_revocations(d->hub, p);
        hub_send_last_reports(d->hub, e);
    }
    e->report = *r;
    e->has_report = true;
    e->reports++;
    e->last_seen_ms = wall_ms();
}

static void hub_on_gone(struct ctl_peer *p, const char *why, void *arg)
{
    struct director *d = arg;
    acme_on_gone(d, p);
    struct hub_edge *e = hub_find_peer(d->hub, p);
    if (!e)
        return; /* replaced by a newer connection of the same edge */
    e->peer = NULL;
    e->last_seen_ms = wall_ms();
    snprintf(e->gone_why, sizeof e->gone_why, "%s", why ? why : "");
    hub_update_gauges(d->hub);
}

/* ACME messages belong to director/acme.c (a no-op while it is disabled). */
static void hub_on_acme(struct ctl_peer *p, const struct ctl_msg *m, void *arg)
{
    acme_on_ctl(arg, p, m);
}

/* ---- relays for users, least loaded first ---- */

static int relay_cmp(const void *a, const void *b)
{
    const struct hub_relay *x = a, *y = b;
    if (x->load_permille != y->load_permille)
        return x->load_permille < y->load_permille ? -1 : 1;
    if (x->allocations != y->allocations)
        return x->allocations < y->allocations ? -1 : 1;
    return strcmp(x->hello->instance_id, y->hello->instance_id);
}

void hub_relay_sort(struct hub_relay *v, size_t n)
{
    if (n > 1)
        qsort(v, n, sizeof *v, relay_cmp);
}

size_t hub_relays(struct director *d, struct hub_relay *out, size_t max)
{
    struct hub *h = d->hub;
    size_t n = 0;
    if (!h)
        return 0;
    /* e->peer is cleared when the control server drops a connection, including one
     * silent for three heartbeats, so a dead edge leaves this list with it. */
    for (size_t i = 0; i < h->nedges && n < max; i++) {
        const struct hub_edge *e = &h->edges[i];
        if (!e->peer || e->hello.role != CTL_ROLE_AV_EDGE)
            continue;
        if (e->has_report && (e->report.draining || !e->report.healthy))
            continue;
        out[n++] = (struct hub_relay){.hello = &e->hello,
                                      .load_permille = e->has_report ? e->report.load_permille : 0,
                                      .allocations = e->has_report ? e->report.allocations : 0};
    }
    hub_relay_sort(out, n);
    return n;
}

/* ---- secrets ---- */

int hub_rotate(struct director *d, enum ctl_secret_kind kind)
{
    if (kind != CTL_SECRET_RELAY && kind != CTL_SECRET_CONFERENCE)
        return -EINVAL;
    struct hub *h = d->hub;
    uint8_t secret[TOKEN_SECRET_MAX], rnd[4];
    size_t len = d->cfg->secrets.length;
    if (len > sizeof secret)
        len = sizeof secret;
    int rc = crypto_random(secret, len);
    if (rc == 0)
        rc = crypto_random(rnd, sizeof rnd);
    if (rc) {
        LOGE(d->log, NULL, "hub: no randomness for a new %s secret: %s", ctl_secret_kind_name(kind),
             strerror(-rc));
        return rc;
    }
    char id[TOKEN_KEYID_MAX], hex[9];
    hex_encode(rnd, sizeof rnd, hex);
    snprintf(id, sizeof id, "%c%" PRId64 "-%s", kind == CTL_SECRET_RELAY ? 'r' : 'c', time_wall_s(),
             hex);
    int64_t not_after = time_wall_s() + (int64_t)(d->cfg->secrets.lifetime_ms / 1000);
    struct keyring *kr = hub_keyring(d, kind);
    rc = keyring_rotate(kr, id, secret, len, not_after);
    memset(secret, 0, sizeof secret);
    if (rc) {
        LOGE(d->log, NULL, "hub: cannot install the new %s secret: %s", ctl_secret_kind_name(kind),
             strerror(-rc));
        return rc;
    }
    metric_inc(h->m_rotations[kind]);
    struct ctl_secret s;
    key_to_secret(&kr->cur, kind, &s);
    size_t pushed = 0;
    for (size_t i = 0; i < h->nedges; i++) {
        struct hub_edge *e = &h->edges[i];
        if (e->peer && (hub_role_secret_kinds(e->hello.role) & (1u << kind)) &&
            ctl_peer_send_secret(e->peer, &s) == 0)
            pushed++;
    }
    memset(&s, 0, sizeof s);
    metric_add(h->m_pushes, pushed);
    LOGI(d->log, NULL, "hub: new %s secret %s (valid until %" PRId64 "), pushed to %zu edge(s)",
         ctl_secret_kind_name(kind), id, not_after, pushed);
    return 0;
}

static void hub_on_rotate(uv_timer_t *t)
{
    struct hub *h = t->data;
    hub_rotate(h->d, CTL_SECRET_RELAY);
    hub_rotate(h->d, CTL_SECRET_CONFERENCE);
}

/* ---- JSON for the admin endpoints (director/json.h) ---- */

static void jb_strs(struct json_buf *j, const char (*v)[ADDR_STRLEN], size_t n)
{
    json_printf(j, "[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            json_printf(j, ",");
        json_str(j, v[i]);
    }
    json_printf(j, "]");
}

static void jb_report(struct json_buf *j, const struct ctl_report *r)
{
    json_printf(j,
                "{\"connections\":%" PRIu64 ",\"allocations\":%" PRIu64 ",\"bytes_in\":%" PRIu64
                ",\"bytes_out\":%" PRIu64 ",\"errors\":%" PRIu64
                ",\"load_permille\":%u,\"healthy\":%s,\"draining\":%s,\"notes\":[",
                r->connections, r->allocations, r->bytes_in, r->bytes_out, r->errors,
                r->load_permille, r->healthy ? "true" : "false", r->draining ? "true" : "false");
    for (size_t i = 0; i < r->n_notes; i++) {
        if (i)
            json_printf(j, ",");
        json_str(j, r->notes[i]);
    }
    json_printf(j, "]}");
}

static void jb_edge(struct json_buf *j, const struct hub_edge *e, int64_t now_ms)
{
    json_printf(j, "{\"role\":");
    json_str(j, ctl_role_name(e->hello.role));
    json_printf(j, ",\"instance\":");
    json_str(j, e->hello.instance_id);
    json_printf(j, ",\"version\":");
    json_str(j, e->hello.version);
    json_printf(j, ",\"connected\":%s,\"peer\":", e->peer ? "true" : "false");
    json_str(j, e->peer_addr);
    json_printf(j, ",\"certificate\":");
    json_str(j, e->cert_name);
    json_printf(j, ",\"external\":");
    jb_strs(j, e->hello.external_addrs, e->hello.n_external);
    json_printf(j, ",\"internal\":");
    jb_strs(j, e->hello.internal_addrs, e->hello.n_internal);
    json_printf(j, ",\"subscribe\":[");
    for (size_t i = 0; i < e->hello.n_subscribe; i++) {
        if (i)
            json_printf(j, ",");
        json_str(j, ctl_role_name(e->hello.subscribe[i]));
    }
    json_printf(j,
                "],\"registered\":%.3f,\"last_seen\":%.3f,\"last_seen_ago_ms\":%" PRId64
                ",\"reports\":%" PRIu64 ",\"report\":",
                (double)e->registered_ms / 1000.0, (double)e->last_seen_ms / 1000.0,
                now_ms - e->last_seen_ms, e->reports);
    if (e->has_report)
        jb_report(j, &e->report);
    else
        json_printf(j, "null");
    if (!e->peer) {
        json_printf(j, ",\"gone\":");
        json_str(j, e->gone_why);
    }
    json_printf(j, "}");
}

/* Looks a parameter up in the query string, then in a form-encoded body. */
static int param_get(const char *query, const char *body, size_t body_len, const char *name,
                     char *out, size_t cap)
{
    int rc = admin_query_get(query, query ? strlen(query) : 0, name, out, cap);
    if (rc == 0 && body && body_len)
        rc = admin_query_get(body, body_len, name, out, cap);
    return rc;
}

static void hub_get_edges(struct director *d, const char *query, struct admin_reply *reply)
{
    struct hub *h = d->hub;
    char role_s[32];
    enum ctl_role role = CTL_ROLE_UNKNOWN;
    int rc = admin_query_get(query, strlen(query), "role", role_s, sizeof role_s);
    if (rc < 0 || (rc == 1 && ctl_role_parse(role_s, &role) < 0)) {
        admin_reply_json_error(reply, 400, "unknown role");
        return;
    }
    int64_t now = wall_ms();
    struct json_buf j = {0};
    json_printf(&j, "{\"director\":");
    json_str(&j, d->cfg->base.instance_id ? d->cfg->base.instance_id : "director");
    json_printf(&j, ",\"connected\":%zu,\"edges\":[", ctl_server_peer_count(d->ctl));
    bool first = true;
    for (size_t i = 0; i < h->nedges; i++) {
        if (role != CTL_ROLE_UNKNOWN && h->edges[i].hello.role != role)
            continue;
        if (!first)
            json_printf(&j, ",");
        first = false;
        jb_edge(&j, &h->edges[i], now);
    }
    json_printf(&j, "],\"secrets\":[");
    first = true;
    for (int k = CTL_SECRET_RELAY; k <= CTL_SECRET_CONFERENCE; k++) {
        const struct keyring *kr = hub_keyring(d, (enum ctl_secret_kind)k);
        const struct token_key *keys[2] = {&kr->cur, &kr->prev};
        for (int i = 0; i < 2; i++) {
            if (!keys[i]->secret_len)
                continue;
            /* Key ids and expiry only: the secrets themselves never leave over HTTP. */
            json_printf(&j, "%s{\"kind\":\"%s\",\"key_id\":", first ? "" : ",",
                        ctl_secret_kind_name((enum ctl_secret_kind)k));
            json_str(&j, keys[i]->id);
            json_printf(&j, ",\"current\":%s,\"not_after\":%" PRId64 "}", i ? "false" : "true",
                        keys[i]->not_after);
            first = false;
        }
    }
    json_printf(&j, "]}");
    admin_reply_json(reply, 200, &j);
}

/* ---- revoked users ---- */

static bool hub_revoked_live(const struct hub_revoked *v, int64_t now)
{
    return v->lifted ? v->expiring_by > now : v->until > now;
}

/* The user's entry: revoked now (lifted false) or reinstated within its window. */
static struct hub_revoked *hub_revoked_find(struct hub *h, const char *user)
{
    int64_t now = time_wall_s();
    for (size_t i = 0; i < h->nrevoked; i++)
        if (strcmp(h->revoked[i].user, user) == 0 && hub_revoked_live(&h->revoked[i], now))
            return &h->revoked[i];
    return NULL;
}

static int hub_revoked_add(struct hub *h, const char *user, int64_t until, int64_t edge_until)
{
    struct hub_revoked *e = hub_revoked_find(h, user);
    if (!e) {
        int64_t now = time_wall_s();
        size_t w = 0;
        for (size_t i = 0; i < h->nrevoked; i++)
            if (hub_revoked_live(&h->revoked[i], now))
                h->revoked[w++] = h->revoked[i];
        h->nrevoked = w;
        if (h->nrevoked == HUB_REVOKED_MAX)
            return -ENOSPC;
        if (!h->revoked) {
            h->revoked = calloc(HUB_REVOKED_MAX, sizeof *h->revoked);
            if (!h->revoked)
                return -ENOMEM;
        }
        e = &h->revoked[h->nrevoked++];
        snprintf(e->user, sizeof e->user, "%s", user);
    }
    e->until = until;
    e->edge_until = edge_until;
    e->revoked_at = time_wall_s();
    e->lifted = false;
    e->expiring_by = 0;
    return 0;
}

bool hub_user_revoked(struct director *d, const char *user)
{
    const struct hub_revoked *v = d->hub ? hub_revoked_find(d->hub, user) : NULL;
    return v && !v->lifted;
}

int64_t hub_user_min_expiry(struct director *d, const char *user)
{
    const struct hub_revoked *v = d->hub ? hub_revoked_find(d->hub, user) : NULL;
    return v && v->lifted ? v->expiring_by + 1 : 0;
}

/* What the edges are told about an entry: a revocation, or a lifted one. */
static void hub_revoke_msg(const struct hub_revoked *v, struct ctl_revoke *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->user, sizeof r->user, "%s", v->user);
    r->until = v->lifted ? 1 : v->edge_until; /* 1: in the past, lifted */
    r->expiring_by = v->lifted ? v->expiring_by : 0;
}

/* The revocations still in force, to an edge that just connected (it may have missed them). */
static void hub_send_revocations(struct hub *h, struct ctl_peer *p)
{
    int64_t now = time_wall_s();
    bool av = ctl_peer_hello(p)->role == CTL_ROLE_AV_EDGE;
    for (size_t i = 0; i < h->nrevoked; i++) {
        const struct hub_revoked *v = &h->revoked[i];
        if (!hub_revoked_live(v, now) || (!v->lifted && v->edge_until <= now) || (v->lifted && !av))
            continue;
        struct ctl_revoke r;
        hub_revoke_msg(v, &r);
        if (ctl_peer_send_revoke(p, &r) < 0)
            return;
    }
}

static void hub_post_revoke(struct director *d, const char *query, const char *body,
                            size_t body_len, struct admin_reply *reply)
{
    struct ctl_revoke r;
    memset(&r, 0, sizeof r);
    char until_s[24] = "";
    int a = param_get(query, body, body_len, "conference_key", r.conference_key_id,
                      sizeof r.conference_key_id);
    int b = param_get(query, body, body_len, "user", r.user, sizeof r.user);
    int c = param_get(query, body, body_len, "until", until_s, sizeof until_s);
    if (a < 0 || b < 0 || c < 0 || (a == 0 && b == 0)) {
        admin_reply_json_error(
            reply, 400, "need conference_key=ID and/or user=NAME (and optionally until=UNIX)");
        return;
    }
    char *end = NULL;
    r.until = c == 1 ? strtoll(until_s, &end, 10) : 0;
    if (c == 1 && (!end || *end || r.until < 0)) {
        admin_reply_json_error(reply, 400, "until must be unix seconds");
        return;
    }
    if (!r.until) /* by default, as long as any key that could have signed it lives */
        r.until = time_wall_s() + (int64_t)(d->cfg->secrets.lifetime_ms / 1000);
    struct hub *h = d->hub;
    if (b == 1 && hub_revoked_add(h, r.user, c == 1 ? r.until : INT64_MAX, r.until) < 0) {
        admin_reply_json_error(reply, 503, "too many revoked users");
        return;
    }
    size_t sent = 0;
    for (size_t i = 0; i < h->nedges; i++)
        if (h->edges[i].peer && ctl_peer_send_revoke(h->edges[i].peer, &r) == 0)
            sent++;
    LOGI(d->log, NULL, "hub: revoked%s%s%s%s until %" PRId64 "; sent to %zu edge(s)",
         a ? " conference key " : "", a ? r.conference_key_id : "", b ? " user " : "",
         b ? r.user : "", r.until, sent);
    struct json_buf j = {0};
    json_printf(&j, "{\"sent\":%zu,\"until\":%" PRId64 "}", sent, r.until);
    admin_reply_json(reply, 200, &j);
}

/* POST /reinstate?user=X: credentials are issued to X again, and the av-edges lift the
 * revocation (a Revoke whose until has passed; older edges simply let theirs lapse). */
static void hub_post_reinstate(struct director *d, const char *query, const char *body,
                               size_t body_len, struct admin_reply *reply)
{
    struct ctl_revoke r;
    memset(&r, 0, sizeof r);
    if (param_get(query, body, body_len, "user", r.user, sizeof r.user) != 1 || !r.user[0]) {
        admin_reply_json_error(reply, 400, "need user=NAME");
        return;
    }
    struct hub *h = d->hub;
    struct hub_revoked *v = hub_revoked_find(h, r.user);
    if (!v || v->lifted) {
        admin_reply_json_error(reply, 404, "user is not revoked");
        return;
    }
    /* Credentials minted before the revocation expire by then: they were capped at max_ttl
     * and die with the secret that signed them. New ones are minted to expire after it. */
    int64_t ttl = (int64_t)(d->cfg->credentials.max_ttl_ms / 1000),
            life = (int64_t)(d->cfg->secrets.lifetime_ms / 1000);
    v->lifted = true;
    v->expiring_by = v->revoked_at + (ttl < life ? ttl : life);
    hub_revoke_msg(v, &r);
    size_t sent = 0;
    for (size_t i = 0; i < h->nedges; i++)
        if (h->edges[i].peer && h->edges[i].hello.role == CTL_ROLE_AV_EDGE &&
            ctl_peer_send_revoke(h->edges[i].peer, &r) == 0)
            sent++;
    LOGI(d->log, NULL,
         "hub: reinstated user %s (its credentials expiring by %" PRId64 " stay refused); "
         "sent to %zu av-edge(s)",
         r.user, r.expiring_by, sent);
    struct json_buf j = {0};
    json_printf(&j, "{\"reinstated\":");
    json_str(&j, r.user);
    json_printf(&j, ",\"sent\":%zu}", sent);
    admin_reply_json(reply, 200, &j);
}

static void hub_post_drain(struct director *d, const char *query, const char *body, size_t body_len,
                           struct admin_reply *reply)
{
    char inst[CTL_ID_MAX], role_s[32], dl[16];
    enum ctl_role role = CTL_ROLE_UNKNOWN;
    int a = param_get(query, body, body_len, "instance", inst, sizeof inst);
    int b = param_get(query, body, body_len, "role", role_s, sizeof role_s);
    int c = param_get(query, body, body_len, "deadline_ms", dl, sizeof dl);
    if (a != 1 || b < 0 || c < 0 || (b == 1 && ctl_role_parse(role_s, &role) < 0)) {
        admin_reply_json_error(reply, 400,
                               "need instance=ID (optionally role=ROLE, deadline_ms=N)");
        return;
    }
    char *end = NULL;
    unsigned long deadline = c == 1 ? strtoul(dl, &end, 10) : d->cfg->base.drain_timeout_ms;
    if (c == 1 && (!end || *end || deadline > UINT32_MAX)) {
        admin_reply_json_error(reply, 400, "deadline_ms must be a number of milliseconds");
        return;
    }
    if (!deadline)
        deadline = 30000;
    struct hub_edge *e = hub_find(d->hub, role, inst);
    if (!e || !e->peer) {
        admin_reply_json_error(reply, 404, "no such connected edge");
        return;
    }
    int rc = ctl_peer_send_drain(e->peer, (uint32_t)deadline);
    if (rc < 0) {
        admin_reply_json_error(reply, 502, "the edge's control connection failed");
        return;
    }
    LOGI(d->log, NULL, "hub: asked %s/%s to drain within %lu ms", ctl_role_name(e->hello.role),
         e->hello.instance_id, deadline);
    struct json_buf j = {0};
    json_printf(&j, "{\"drained\":");
    json_str(&j, inst);
    json_printf(&j, ",\"deadline_ms\":%lu}", deadline);
    admin_reply_json(reply, 200, &j);
}

static void hub_post_rotate(struct director *d, const char *query, const char *body,
                            size_t body_len, struct admin_reply *reply)
{
    char kind_s[16];
    int k = param_get(query, body, body_len, "kind", kind_s, sizeof kind_s);
    bool relay = k != 1 || strcmp(kind_s, "relay") == 0;
    bool conf = k != 1 || strcmp(kind_s, "conference") == 0;
    if (k < 0 || (!relay && !conf)) {
        admin_reply_json_error(reply, 400, "kind must be relay or conference");
        return;
    }
    int rc = 0;
    if (relay)
        rc = hub_rotate(d, CTL_SECRET_RELAY);
    if (conf && rc == 0)
        rc = hub_rotate(d, CTL_SECRET_CONFERENCE);
    if (rc) {
        admin_reply_json_error(reply, 500, "rotation failed");
        return;
    }
    struct json_buf j = {0};
    json_printf(&j, "{\"rotated\":[");
    if (relay) {
        json_printf(&j, "{\"kind\":\"relay\",\"key_id\":");
        json_str(&j, d->relay_keys.cur.id);
        json_printf(&j, "}");
    }
    if (conf) {
        json_printf(&j, "%s{\"kind\":\"conference\",\"key_id\":", relay ? "," : "");
        json_str(&j, d->conf_keys.cur.id);
        json_printf(&j, "}");
    }
    json_printf(&j, "]}");
    admin_reply_json(reply, 200, &j);
}

static void hub_admin(const char *method, const char *path, const char *query, const char *body,
                      size_t body_len, struct admin_reply *reply, void *arg)
{
    struct director *d = arg;
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    query = query ? query : "";
    if (!d->hub)
        admin_reply_json_error(reply, 503, "stopping");
    else if (strcmp(path, "/edges") == 0 && get)
        hub_get_edges(d, query, reply);
    else if (strcmp(path, "/revoke") == 0 && post)
        hub_post_revoke(d, query, body, body_len, reply);
    else if (strcmp(path, "/reinstate") == 0 && post)
        hub_post_reinstate(d, query, body, body_len, reply);
    else if (strcmp(path, "/drain") == 0 && post)
        hub_post_drain(d, query, body, body_len, reply);
    else if (strcmp(path, "/rotate") == 0 && post)
        hub_post_rotate(d, query, body, body_len, reply);
    else if (!strcmp(path, "/edges") || !strcmp(path, "/revoke") || !strcmp(path, "/drain") ||
             !strcmp(path, "/rotate") || !strcmp(path, "/reinstate"))
        admin_reply_json_error(reply, 405, "method not allowed");
    else
        admin_reply_json_error(reply, 404, "not found");
}

/* ---- lifecycle ---- */

static void hub_register_metrics(struct hub *h, struct metrics *m)
{
    for (int r = CTL_ROLE_ACCESS_EDGE; r < CTL_ROLE_COUNT; r++) {
        char labels[48];
        snprintf(labels, sizeof labels, "role=\"%s\"", ctl_role_name((enum ctl_role)r));
        h->m_connected[r] = metrics_gauge(m, "ctl_edges_connected",
                                          "edges connected on the control channel", labels);
    }
    h->m_reports = metrics_counter(m, "ctl_reports_total", "load reports received", NULL);
    h->m_registrations =
        metrics_counter(m, "ctl_registrations_total", "Hellos accepted from edges", NULL);
    h->m_rotations[CTL_SECRET_RELAY] =
        metrics_counter(m, "secret_rotations_total", "secrets issued", "kind=\"relay\"");
    h->m_rotations[CTL_SECRET_CONFERENCE] =
        metrics_counter(m, "secret_rotations_total", "secrets issued", "kind=\"conference\"");
    h->m_pushes = metrics_counter(m, "secret_pushes_total", "SecretUpdates sent to edges", NULL);
}

int hub_start(struct director *d)
{
    static const struct ctl_server_cbs cbs = {
        .on_hello = hub_on_hello,
        .on_report = hub_on_report,
        .on_gone = hub_on_gone,
        .on_acme = hub_on_acme,
    };
    struct hub *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    h->d = d;
    d->hub = h;
    if (d->metrics)
        hub_register_metrics(h, d->metrics);
    int rc = hub_rotate(d, CTL_SECRET_RELAY);
    if (rc == 0)
        rc = hub_rotate(d, CTL_SECRET_CONFERENCE);
    if (rc)
        goto fail;
    struct ctl_server_opts so = {
        .listen = d->cfg->ctl.listen,
        .tls = d->ctl_tls,
        .heartbeat_ms = (uint32_t)d->cfg->ctl.heartbeat_ms,
        .director_id = d->cfg->base.instance_id,
        .log = d->log,
        .metrics = d->metrics,
    };
    rc = ctl_server_start(d->loop, &so, &cbs, d, &d->ctl);
    if (rc)
        goto fail;
    if (d->admin) {
        const char *paths[] = {"/edges", "/revoke", "/reinstate", "/drain", "/rotate"};
        for (size_t i = 0; i < ARRAY_SIZE(paths) && rc == 0; i++)
            rc = admin_route(d->admin, paths[i], hub_admin, d);
        if (rc) {
            LOGE(d->log, NULL, "hub: cannot register the admin endpoints: %s", strerror(-rc));
            ctl_server_stop(d->ctl);
            d->ctl = NULL;
            goto fail;
        }
    }
    uv_timer_init(d->loop, &h->rotate);
    h->rotate.data = h;
    h->rotate_interval_ms = d->cfg->secrets.rotate_interval_ms;
    uv_timer_start(&h->rotate, hub_on_rotate, h->rotate_interval_ms, h->rotate_interval_ms);
    char a[ADDR_STRLEN];
    LOGI(d->log, NULL, "hub: control channel on %s (mutual TLS), heartbeat %llu ms",
         addr_format(&d->cfg->ctl.listen, a), (unsigned long long)d->cfg->ctl.heartbeat_ms);
    return 0;
fail:
    d->hub = NULL;
    free(h);
    return rc;
}

void hub_reload(struct director *d)
{
    struct hub *h = d->hub;
    if (h && h->rotate_interval_ms != d->cfg->secrets.rotate_interval_ms) {
        h->rotate_interval_ms = d->cfg->secrets.rotate_interval_ms;
        uv_timer_start(&h->rotate, hub_on_rotate, h->rotate_interval_ms, h->rotate_interval_ms);
        LOGI(d->log, NULL, "hub: secrets now rotate every %llu ms",
             (unsigned long long)h->rotate_interval_ms);
    }
}

static void hub_on_timer_closed(uv_handle_t *t)
{
    struct hub *h = t->data;
    void (*done)(void *) = h->done;
    void *arg = h->done_arg;
    free(h->revoked);
    free(h);
    if (done)
        done(arg);
}

void hub_stop(struct director *d, void (*done)(void *arg), void *arg)
{
    ctl_server_stop(d->ctl);
    d->ctl = NULL;
    struct hub *h = d->hub;
    if (!h) {
        if (done)
            done(arg);
        return;
    }
    d->hub = NULL;
    h->done = done;
    h->done_arg = arg;
    uv_close((uv_handle_t *)&h->rotate, hub_on_timer_closed);
}
