/* The Director's conferencing-server stub: it mints conference session keys (POST
 * /conference-keys on the admin listener), dials each configured conf-edge's internal port
 * with mutual TLS, and serves the admitted streams: each participant's bytes go to the
 * other participants of the same conference. Wire format: common/mux.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/admin.h"
#include "common/crypto.h"
#include "common/json.h"
#include "common/map.h"
#include "common/mux.h"
#include "common/stream.h"
#include "common/tls_files.h"
#include "director/director.h"

#define CS_BACKOFF_MIN_MS 100
#define CS_BACKOFF_MAX_MS 3000
#define CS_EDGES_MAX 8

struct cs_link;

struct cs_stream {
    struct cs_link *link;
    uint32_t id;
    char conf[TOKEN_FIELD_MAX], user[TOKEN_FIELD_MAX], client[ADDR_STRLEN], jti[40];
    uint64_t credit; /* bytes the edge still accepts on this stream */
    uint64_t owed;   /* bytes taken from the edge, window not yet returned */
    struct buf out;  /* bytes for this participant waiting for credit */
    bool closed;
    struct dlist node; /* confserver->streams */
};

struct cs_link {
    struct confserver *cs;
    struct addr edge;
    char edge_s[ADDR_STRLEN];
    struct stream *st;
    uv_timer_t retry;
    uint32_t backoff_ms;
    bool hello, up_logged, failing_logged, timer_closed;
    uint64_t edge_window;
    struct buf in;
    struct ce_map *streams; /* id -> cs_stream */
};

struct confserver {
    struct director *d;
    struct tls_ctx *tls;
    struct cs_link links[CS_EDGES_MAX];
    size_t nlinks;
    struct dlist streams;
    int64_t nstreams;
    bool stopping;
    int open_handles;
    struct metric *m_keys, *m_streams, *m_links, *m_relayed, *m_slow;
    uint8_t frame[CE_MUX_HDR + CE_MUX_DATA_MAX];
};

static void link_connect(struct cs_link *l);

static const struct director_confserver_config *ccfg(const struct confserver *cs)
{
    return &cs->d->cfg->confserver;
}

static void cs_maybe_free(struct confserver *cs)
{
    if (!cs->stopping || cs->open_handles)
        return;
    for (size_t i = 0; i < cs->nlinks; i++) {
        ce_map_destroy(cs->links[i].streams);
        buf_fini(&cs->links[i].in);
    }
    tls_ctx_unref(cs->tls);
    free(cs);
}

/* ---- output ---- */

static void link_send(struct cs_link *l, const void *p, size_t n)
{
    if (!l->st)
        return;
    int rc = stream_write(l->st, p, n);
    if (rc == -ENOBUFS) {
        /* The edge does not read its link: per-stream windows should make this impossible,
         * so the link is reset rather than buffered without bound. */
        stream_close(l->st, -ENOBUFS, "edge link write queue full");
    }
}

static void stream_flush_out(struct cs_stream *s)
{
    struct confserver *cs = s->link->cs;
    for (int i = 0; i < 4096 && buf_len(&s->out) && s->credit && !s->closed && s->link->st; i++) {
        size_t n = buf_len(&s->out);
        n = n > CE_MUX_DATA_RECORD ? CE_MUX_DATA_RECORD : n;
        n = n > s->credit ? (size_t)s->credit : n;
        ssize_t f = ce_mux_encode(cs->frame, sizeof cs->frame, CE_MUX_DATA, s->id,
                                  s->out.data + s->out.rd, n);
        if (f < 0)
            return;
        link_send(s->link, cs->frame, (size_t)f);
        buf_consume(&s->out, n);
        s->credit -= n;
    }
}

static void stream_free(struct cs_stream *s)
{
    struct cs_link *l = s->link;
    struct ce_map_entry *me = ce_map_find(l->streams, &s->id, sizeof s->id);
    if (me)
        ce_map_remove(l->streams, me);
    dl_del(&s->node);
    buf_fini(&s->out);
    free(s);
    metric_set(l->cs->m_streams, --l->cs->nstreams);
}

static void stream_close_send(struct cs_stream *s, const char *why)
{
    uint8_t f[CE_MUX_HDR + 64];
    ssize_t n = ce_mux_encode(f, sizeof f, CE_MUX_CLOSE, s->id, why, strlen(why));
    if (n > 0)
        link_send(s->link, f, (size_t)n);
    stream_free(s);
}

/* Copies one participant's bytes to every other participant of the conference. */
static void relay(struct confserver *cs, struct cs_stream *from, struct slice data)
{
    struct cs_stream *slow[64];
    size_t nslow = 0;
    for (struct dlist *n = cs->streams.next; n != &cs->streams; n = n->next) {
        struct cs_stream *to = container_of(n, struct cs_stream, node);
        if (to == from || to->closed || strcmp(to->conf, from->conf))
            continue;
        if (buf_append(&to->out, data.p, data.len) < 0) {
            if (nslow < ARRAY_SIZE(slow))
                slow[nslow++] = to;
            continue;
        }
        metric_add(cs->m_relayed, data.len);
        stream_flush_out(to);
    }
    for (size_t i = 0; i < nslow; i++) {
        metric_inc(cs->m_slow);
        LOGW(cs->d->log, NULL, "confserver: participant %s of %s does not keep up: closed",
             slow[i]->user, slow[i]->conf);
        stream_close_send(slow[i], "slow participant");
    }
}

/* ---- input ---- */

static int on_open_frame(struct cs_link *l, const struct ce_mux_frame *f)
{
    struct confserver *cs = l->cs;
    struct ce_mux_open o;
    if (ce_mux_decode_open(f->payload, &o) < 0 || ce_map_find(l->streams, &f->stream, 4))
        return -EPROTO;
    struct cs_stream *s = calloc(1, sizeof *s);
    if (!s || buf_init(&s->out, ccfg(cs)->max_buffer) < 0) {
        free(s);
        return -ENOMEM;
    }
    struct ce_map_entry *me = ce_map_get(l->streams, &f->stream, sizeof f->stream);
    if (!me) {
        buf_fini(&s->out);
        free(s);
        return -ENOMEM;
    }
    me->val = s;
    s->link = l;
    s->id = f->stream;
    s->credit = l->edge_window;
    slice_to_cstr(o.conf, s->conf, sizeof s->conf);
    slice_to_cstr(o.user, s->user, sizeof s->user);
    slice_to_cstr(o.client, s->client, sizeof s->client);
    slice_to_cstr(o.key_id, s->jti, sizeof s->jti);
    dl_add(cs->streams.prev, &s->node);
    metric_set(cs->m_streams, ++cs->nstreams);
    LOGI(cs->d->log, NULL, "confserver: %s joined conference %s from %s via %s (stream %u)",
         s->user, s->conf, s->client, l->edge_s, s->id);
    return 0;
}

static int handle(struct cs_link *l, const struct ce_mux_frame *f)
{
    struct confserver *cs = l->cs;
    struct ce_map_entry *me = f->stream ? ce_map_find(l->streams, &f->stream, 4) : NULL;
    struct cs_stream *s = me ? me->val : NULL;
    uint8_t w[CE_MUX_HDR + 8];
    switch (f->type) {
    case CE_MUX_HELLO: {
        struct ce_mux_hello h;
        if (ce_mux_decode_hello(f->payload, &h) < 0 || h.version != CE_MUX_VERSION)
            return -EPROTO;
        l->hello = true;
        l->edge_window = h.window;
        l->backoff_ms = CS_BACKOFF_MIN_MS;
        l->failing_logged = false;
        LOGI(cs->d->log, NULL, "confserver: serving conf-edge %s", l->edge_s);
        return 0;
    }
    case CE_MUX_OPEN:
        return on_open_frame(l, f);
    case CE_MUX_DATA:
        if (!s)
            return 0;
        relay(cs, s, f->payload);
        /* Everything was copied out (or its slow receivers dropped): the window goes back
         * in batches of a quarter, so bulk transfers do not cost a frame per frame. */
        s->owed += f->payload.len;
        if (s->owed >= ccfg(cs)->window / 4 &&
            ce_mux_encode_window(w, sizeof w, s->id, (uint32_t)s->owed) > 0) {
            link_send(l, w, CE_MUX_HDR + 4);
            s->owed = 0;
        }
        return 0;
    case CE_MUX_WINDOW:
        if (s) {
            s->credit += ce_mux_window_increment(f);
            stream_flush_out(s);
        }
        return 0;
    case CE_MUX_SHUT:
        return 0; /* the participant sends no more; others may still write to it */
    case CE_MUX_CLOSE:
        if (s) {
            LOGI(cs->d->log, NULL, "confserver: %s left conference %s", s->user, s->conf);
            stream_free(s);
        }
        return 0;
    case CE_MUX_PING:
        if (ce_mux_encode_ping(w, sizeof w, CE_MUX_PONG, ce_mux_ping_value(f)) > 0)
            link_send(l, w, sizeof w);
        return 0;
    case CE_MUX_PONG:
        return 0;
    default:
        return -EPROTO;
    }
}

static int link_frame(void *arg, const struct ce_mux_frame *f)
{
    struct cs_link *l = arg;
    int rc = handle(l, f);
    return rc < 0 ? rc : l->st ? 0 : 1;
}

static int link_on_data(struct stream *st, const uint8_t *data, size_t len, void *arg)
{
    struct cs_link *l = arg;
    if (!l->st)
        return 0;
    int rc = ce_mux_feed(&l->in, data, len, link_frame, l, NULL);
    if (rc == -EPROTO)
        LOGW(l->cs->d->log, NULL, "confserver: protocol error from conf-edge %s", l->edge_s);
    return rc;
}

static void link_on_open(struct stream *st, void *arg)
{
    struct cs_link *l = arg;
    struct confserver *cs = l->cs;
    uint8_t f[CE_MUX_HDR + 8 + 1 + 64];
    const char *name = cs->d->cfg->base.instance_id ? cs->d->cfg->base.instance_id : "director";
    struct ce_mux_hello h = {CE_MUX_VERSION, (uint32_t)ccfg(cs)->window, slice_str(name)};
    if (h.name.len > 64)
        h.name.len = 64;
    ssize_t n = ce_mux_encode_hello(f, sizeof f, &h);
    if (n > 0)
        link_send(l, f, (size_t)n);
}

static void on_retry(uv_timer_t *t)
{
    link_connect(t->data);
}

static void link_on_close(struct stream *st, int err, const char *why, void *arg)
{
    struct cs_link *l = arg;
    struct confserver *cs = l->cs;
    l->st = NULL;
    if (cs->stopping) { /* the Director may be gone already: touch nothing of it */
        cs->open_handles--;
        cs_maybe_free(cs);
        return;
    }
    if (l->hello)
        LOGW(cs->d->log, NULL, "confserver: lost conf-edge %s: %s", l->edge_s,
             why ? why : "closed");
    else if (!l->failing_logged && !cs->stopping)
        LOGI(cs->d->log, NULL, "confserver: cannot reach conf-edge %s yet (%s); retrying",
             l->edge_s, why ? why : "closed");
    l->failing_logged = true;
    l->hello = false;
    /* The edge closes its clients when a server goes: forget their streams. */
    for (struct dlist *n = cs->streams.next; n != &cs->streams;) {
        struct cs_stream *s = container_of(n, struct cs_stream, node);
        n = n->next;
        if (s->link == l)
            stream_free(s);
    }
    buf_consume(&l->in, buf_len(&l->in));
    cs->open_handles--;
    uv_timer_start(&l->retry, on_retry, l->backoff_ms, 0);
    l->backoff_ms = l->backoff_ms * 2 > CS_BACKOFF_MAX_MS ? CS_BACKOFF_MAX_MS : l->backoff_ms * 2;
}

static void link_connect(struct cs_link *l)
{
    struct confserver *cs = l->cs;
    if (cs->stopping || l->st)
        return;
    static const struct stream_cbs cbs = {link_on_data, link_on_open, NULL, link_on_close};
    struct stream_opts o = {
        .tls = cs->tls,
        .server_name = ccfg(cs)->edge_name,
        .write_cap = 4 << 20,
        .handshake_timeout_ms = 5000,
    };
    if (stream_connect(cs->d->loop, &l->edge, NULL, &o, &cbs, l, &l->st) == 0) {
        cs->open_handles++;
        return;
    }
    l->st = NULL;
    uv_timer_start(&l->retry, on_retry, CS_BACKOFF_MAX_MS, 0);
}

/* ---- key minting ---- */

/* POST /conference-keys?conf=ID&user=NAME[&role=attendee][&ttl=SECONDS]: a conference
 * session key signed with the current conference secret, as the lab's stand-in for the
 * MCU's addUser response. Answers {"key": ..., "conf": ..., "user": ..., "jti": ..., "exp": ...}.
 */
static void on_keys(const char *method, const char *path, const char *query, const char *body,
                    size_t body_len, struct admin_reply *r, void *arg)
{
    struct confserver *cs = arg;
    if (strcmp(method, "POST")) {
        admin_reply_printf(r, 405, "application/json", "{\"error\":\"use POST\"}\n");
        return;
    }
    struct token_claims c;
    memset(&c, 0, sizeof c);
    char ttl_s[16];
    size_t ql = strlen(query);
    if (admin_query_get(query, ql, "conf", c.conf, sizeof c.conf) != 1 ||
        admin_query_get(query, ql, "user", c.user, sizeof c.user) != 1 ||
        admin_query_get(query, ql, "role", c.role, sizeof c.role) < 0 ||
        admin_query_get(query, ql, "ttl", ttl_s, sizeof ttl_s) < 0) {
        admin_reply_printf(r, 400, "application/json",
                           "{\"error\":\"need conf=ID and user=NAME (role=, ttl= optional)\"}\n");
        return;
    }
    if (!c.role[0])
        snprintf(c.role, sizeof c.role, "attendee");
    int64_t ttl = ttl_s[0] ? strtoll(ttl_s, NULL, 10) : (int64_t)(ccfg(cs)->key_ttl_ms / 1000);
    if (ttl < -86400 || ttl > 7 * 86400)
        ttl = (int64_t)(ccfg(cs)->key_ttl_ms / 1000);
    c.exp = time_wall_s() + ttl; /* a negative ttl mints an expired key, for tests */
    uint8_t rnd[12];
    if (crypto_random(rnd, sizeof rnd) < 0) {
        admin_reply_printf(r, 500, "application/json", "{\"error\":\"no randomness\"}\n");
        return;
    }
    hex_encode(rnd, sizeof rnd, c.jti);
    char key[1024];
    ssize_t n = token_mint(&cs->d->conf_keys, &c, key, sizeof key);
    if (n < 0) {
        admin_reply_printf(r, 400, "application/json",
                           "{\"error\":\"cannot mint: conf, user and role must be URL-safe without "
                           "';' or '='\"}\n");
        return;
    }
    metric_inc(cs->m_keys);
    struct json_buf j = {0};
    const char *names[] = {"key", "conf", "user", "role", "jti"};
    const char *vals[] = {key, c.conf, c.user, c.role, c.jti};
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        json_printf(&j, "%s\"%s\":", i ? "," : "{", names[i]);
        json_str(&j, vals[i]);
    }
    json_printf(&j, ",\"exp\":%" PRId64 "}\n", c.exp);
    if (j.oom)
        admin_reply_printf(r, 500, "application/json", "{\"error\":\"out of memory\"}\n");
    else
        admin_reply_printf(r, 200, "application/json", "%s", j.p);
    free(j.p);
}

/* ---- module hooks ---- */

int confserver_start(struct director *d)
{
    const struct director_confserver_config *cc = &d->cfg->confserver;
    if (!cc->enabled)
        return 0;
    struct confserver *cs = calloc(1, sizeof *cs);
    if (!cs)
        return -ENOMEM;
    cs->d = d;
    dl_init(&cs->streams);
    char err[256] = "";
    int rc = tls_files_ctx(&cs->tls, &cc->tls, &(struct tls_files_use){.verify_peer = true}, err,
                           sizeof err);
    if (rc) {
        LOGE(d->log, NULL, "confserver: TLS: %s", err);
        free(cs);
        return rc;
    }
    struct addr def;
    addr_parse(&def, "127.0.0.22:8057", 8057);
    size_t n = cc->n_edges ? cc->n_edges : 1;
    for (size_t i = 0; i < n && i < CS_EDGES_MAX; i++) {
        struct cs_link *l = &cs->links[cs->nlinks++];
        l->cs = cs;
        l->edge = cc->n_edges ? cc->edges[i] : def;
        addr_format(&l->edge, l->edge_s);
        l->backoff_ms = CS_BACKOFF_MIN_MS;
        if (ce_map_create(&l->streams) < 0 || buf_init(&l->in, 2 * CE_MUX_FRAME_MAX) < 0) {
            cs->stopping = true;
            cs_maybe_free(cs);
            return -ENOMEM;
        }
        uv_timer_init(d->loop, &l->retry);
        l->retry.data = l;
        cs->open_handles++;
    }
    cs->m_keys = metrics_counter(d->metrics, "conference_keys_minted_total",
                                 "Conference session keys minted", NULL);
    cs->m_streams =
        metrics_gauge(d->metrics, "confserver_participants", "Participants served", NULL);
    cs->m_relayed = metrics_counter(d->metrics, "confserver_relayed_bytes_total",
                                    "Bytes relayed between participants", NULL);
    cs->m_slow = metrics_counter(d->metrics, "confserver_slow_closed_total",
                                 "Participants closed for not keeping up", NULL);
    admin_route(d->admin, "/conference-keys", on_keys, cs);
    d->confserver = cs;
    for (size_t i = 0; i < cs->nlinks; i++)
        link_connect(&cs->links[i]);
    LOGI(d->log, NULL, "confserver: dialing %zu conf-edge internal port(s), first %s", cs->nlinks,
         cs->links[0].edge_s);
    return 0;
}

static void on_retry_closed(uv_handle_t *h)
{
    struct cs_link *l = h->data;
    l->cs->open_handles--;
    cs_maybe_free(l->cs);
}

void confserver_stop(struct director *d)
{
    struct confserver *cs = d->confserver;
    if (!cs)
        return;
    d->confserver = NULL;
    cs->stopping = true;
    for (struct dlist *n = cs->streams.next; n != &cs->streams;) {
        struct cs_stream *s = container_of(n, struct cs_stream, node);
        n = n->next;
        stream_free(s);
    }
    for (size_t i = 0; i < cs->nlinks; i++) {
        struct cs_link *l = &cs->links[i];
        uv_close((uv_handle_t *)&l->retry, on_retry_closed);
        if (l->st)
            stream_close(l->st, 0, "director stopping");
    }
}
