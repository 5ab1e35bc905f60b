/* conf-edge at run time: participants' TLS sessions, conferencing-server links, and the
 * relay between them (see edge.h; the wire formats are in preamble.h and mux.h).
 *
 * A session is one participant's TLS connection. It goes HANDSHAKE -> PREAMBLE (waiting
 * for its key) -> WAITING (admitted, no server yet) -> RELAY (bound to a stream id on one
 * server link) -> ENDING (flushing its last bytes before closing). A link is one mutual-TLS
 * connection a conferencing server dialed in; it carries many sessions as mux streams.
 *
 * Flow control, both directions, per stream: the receiver grants the sender a window of
 * bytes (HELLO, then WINDOW frames). Client -> server: the edge sends DATA only within the
 * server's window and only while the link's write queue takes it; otherwise the bytes wait
 * in the session (at most one read) and the client is not read. Server -> client: bytes go
 * into the client's write queue; the edge returns the window as soon as they are queued,
 * and holds it back (up to one window parked in the session) while the client's queue is
 * over its cap. So a slow reader costs at most client_write + window bytes. */
#include "conf-edge/edge.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/certname.h"
#include "common/map.h"
#include "common/mux.h"
#include "common/stream.h"
#include "common/tls.h"
#include "common/tls_files.h"
#include "common/token.h"
#include "conf-edge/admit.h"
#include "conf-edge/preamble.h"

#define CE_UP_CAP (CE_PREAMBLE_MAX + 16384 + 1024) /* preamble plus one plaintext record */
#define CE_CTLQ_CAP (256 * 1024)
#define CE_LINGER_MS 2000          /* after our close_notify, how long the peer has to close */
#define CE_DISCARD_MAX (64 * 1024) /* bytes read and dropped from an ending session */
#define CE_LINK_IN_CAP (2 * CE_MUX_FRAME_MAX)
/* Bulk relays read up to four TLS records per read(2): a quarter of the syscalls and wakeups
 * of one record per read. The buffer grows to this only while reads fill it (common/stream). */
#define CE_READ_CHUNK (64 * 1024)
/* ... and write what one such read brings in one write(2), in full 16 KiB records. */
#define CE_WRITE_BATCH (64 * 1024)
/* Handshake CPU per loop turn (stream_gate): about one ECDHE+ECDSA flight, so established
 * participants wait at most that long behind a burst of new ones (a flood of 300 handshakes
 * in flight delayed their data by 1.6 s at p99 with handshakes run inline). */
#define CE_HS_BUDGET_US 1000

enum sess_state { S_HANDSHAKE, S_PREAMBLE, S_WAITING, S_RELAY, S_ENDING };

struct ce_link;

struct ce_sess {
    struct ce_edge *edge;
    struct stream *cs; /* NULL once the client stream has closed */
    enum sess_state state;
    struct addr peer;
    char peer_s[ADDR_STRLEN];
    bool counted_addr, counted_conf, counted_key, timer_closed, done;
    uv_timer_t timer;   /* preamble timeout, server wait, linger */
    struct dlist node;  /* edge->sessions */
    struct dlist qnode; /* edge->waiting or link->blocked */
    struct token_claims claims;
    struct ce_map_entry *conf; /* edge->confs entry, once admitted */
    struct ce_map_entry *key;  /* edge->key_sessions entry (its jti), once admitted */
    struct ce_link *link;      /* once bound */
    uint32_t id;               /* stream id on link */
    struct buf up;             /* client bytes not yet sent to the server */
    uint64_t up_credit;        /* bytes the server still accepts on this stream */
    bool up_blocked;           /* in link->blocked, waiting for the link to drain */
    bool client_eof;           /* client closed cleanly: SHUT after up drains */
    struct buf down;           /* server bytes the client's queue refused */
    uint64_t down_owed;        /* bytes delivered, window not yet returned */
    bool server_shut;          /* SHUT from the server: close_notify once down drains */
    uint32_t discard_left;     /* ENDING: client bytes still read (and dropped) */
    struct ce_sess *tmp_next;  /* a batch being closed (revocation, lost server) */
};

struct ce_link {
    struct ce_edge *edge;
    struct stream *st;
    char name[128];
    char peer_s[ADDR_STRLEN];
    bool hello, dead;
    uint64_t peer_window;   /* initial per-stream window the server grants */
    struct buf in;          /* frame reassembly */
    struct buf ctlq;        /* control frames the link's queue refused */
    struct dlist blocked;   /* sessions with DATA waiting for on_drain */
    struct ce_map *streams; /* id -> session */
    uint32_t next_id;
    uint64_t confs;      /* conferences pinned here */
    uint64_t last_rx_ms; /* liveness: PONG or anything else */
    struct dlist node;   /* edge->links */
};

struct ce_metrics {
    struct metric *accepted, *admitted, *active, *relaying, *servers, *conferences;
    struct metric *bytes_up, *bytes_down, *not_tls, *handshake_failed, *per_address, *too_many;
    struct metric *refused[CE_REPLY_COUNT];
    struct metric *revoked_closed, *server_lost_closed, *idle_closed, *replaced_closed;
    struct metric *servers_refused;
    struct metric *servers_connected_total;
};

struct ce_edge {
    uv_loop_t *loop;
    const struct ce_config *cfg;
    const struct logger *log;
    struct tls_ctx *ext_tls, *int_tls;
    struct acme_challenges *acme; /* TLS-ALPN-01 answers on the participants' listener */
    struct stream_gate *hs_gate;  /* participants' TLS handshakes take turns with relaying */
    uv_tcp_t ext_listener, int_listener;
    uv_timer_t ping;
    int handles_open;
    bool stopping, draining;
    void (*drained_cb)(void *arg);
    void *drained_arg;
    struct keyring keys;
    struct ce_revocations *rev;
    struct ce_map *addrs;        /* host -> connection count */
    struct ce_map *confs;        /* conference id -> pinned link, admitted count */
    struct ce_map *key_sessions; /* key id (jti) -> admitted sessions holding it */
    struct dlist sessions, waiting, links;
    uint64_t nsess, nrelay, nlinks_ready;
    uint64_t bytes_up, bytes_down, refused;
    uint64_t ping_seq;
    struct ce_metrics m;
    uint8_t frame[CE_MUX_HDR + CE_MUX_DATA_MAX]; /* scratch for one outgoing frame */
};

static void sess_pump_up(struct ce_sess *s);
static void sess_end(struct ce_sess *s, const char *why, bool tell_server);
static void link_kill(struct ce_link *l, const char *why);
static void edge_maybe_free(struct ce_edge *e);
static void edge_bind_waiting(struct ce_edge *e);

/* ---- small helpers ------------------------------------------------------------------ */

static int64_t now_s(void)
{
    return time_wall_s();
}

static void set_err(char *err, size_t cap, const char *what, const char *detail)
{
    if (err && cap)
        snprintf(err, cap, "%s: %s", what, detail);
}

static int make_tls(struct tls_ctx **out, const struct tls_files_config *f, bool verify,
                    uint64_t hs_ms, const char *self_name, struct acme_challenges *acme, char *err,
                    size_t errcap)
{
    struct tls_files_use u = {.server = true,
                              .verify_peer = verify,
                              .self_signed_name = self_name,
                              .handshake_timeout_ms = (uint32_t)hs_ms,
                              .acme = acme};
    return tls_files_ctx(out, f, &u, err, errcap);
}

/* The participants' listener: its files (acme's when enabled) and the ACME challenges. */
static int make_ext_tls(struct ce_edge *e, const struct ce_config *cfg, struct tls_ctx **out,
                        char *err, size_t errcap)
{
    struct tls_files_config f;
    acme_edge_tls_files(&cfg->acme, &cfg->external.tls, &f);
    return make_tls(out, &f, false, cfg->external.handshake_timeout_ms, "conf-edge", e->acme, err,
                    errcap);
}

static size_t addr_key(const struct addr *a, uint8_t out[16])
{
    if (a->u.sa.sa_family == AF_INET6) {
        memcpy(out, &a->u.in6.sin6_addr, 16);
        return 16;
    }
    memcpy(out, &a->u.in4.sin_addr, 4);
    return 4;
}

/* ---- link output -------------------------------------------------------------------- */

/* Queues a control frame (OPEN, WINDOW, SHUT, CLOSE, PING, HELLO). Control frames are
 * small and never wait for credit; if even the overflow queue is full, the server has
 * stopped reading and the link is dropped. */
static void link_send_ctl(struct ce_link *l, const uint8_t *frame, size_t len)
{
    if (l->dead || !l->st)
        return;
    if (buf_len(&l->ctlq) == 0) {
        int rc = stream_write(l->st, frame, len);
        if (rc == 0)
            return;
        if (rc != -ENOBUFS) {
            link_kill(l, "write failed");
            return;
        }
    }
    if (buf_append(&l->ctlq, frame, len) < 0)
        link_kill(l, "conferencing server does not read (control queue full)");
}

/* Sends one DATA frame from e->frame. -ENOBUFS: the link is congested, try after on_drain. */
static int link_send_data(struct ce_link *l, size_t len)
{
    if (l->dead || !l->st)
        return -EPIPE;
    if (buf_len(&l->ctlq) || !dl_empty(&l->blocked))
        return -ENOBUFS; /* keep frame order: queued frames go first */
    int rc = stream_write(l->st, l->edge->frame, len);
    if (rc < 0 && rc != -ENOBUFS) {
        link_kill(l, "write failed");
        return -EPIPE;
    }
    return rc;
}

static void link_send_simple(struct ce_link *l, enum ce_mux_type t, uint32_t id, const char *txt)
{
    uint8_t f[CE_MUX_HDR + 128];
    size_t n = txt ? strlen(txt) : 0;
    n = n > 128 ? 128 : n;
    ssize_t len = ce_mux_encode(f, sizeof f, t, id, txt, n);
    if (len > 0)
        link_send_ctl(l, f, (size_t)len);
}

static void link_on_drain(struct stream *st, void *arg)
{
    struct ce_link *l = arg;
    while (buf_len(&l->ctlq) && !l->dead) {
        size_t n = buf_len(&l->ctlq);
        n = n > 16384 ? 16384 : n;
        int rc = stream_write(st, l->ctlq.data + l->ctlq.rd, n);
        if (rc == -ENOBUFS)
            return;
        if (rc < 0) {
            link_kill(l, "write failed");
            return;
        }
        buf_consume(&l->ctlq, n);
    }
    /* Sessions blocked on this link, oldest first, until the link is full again. */
    for (int i = 0; i < 100000 && !dl_empty(&l->blocked) && !l->dead; i++) {
        struct ce_sess *s = container_of(l->blocked.next, struct ce_sess, qnode);
        dl_del(&s->qnode);
        s->up_blocked = false;
        sess_pump_up(s);
        if (s->up_blocked)
            break;
    }
}

/* ---- sessions: bookkeeping ---------------------------------------------------------- */

static void sess_free_if_done(struct ce_sess *s)
{
    if (!s->done || s->cs || !s->timer_closed)
        return;
    struct ce_edge *e = s->edge;
    buf_fini(&s->up);
    buf_fini(&s->down);
    free(s);
    e->nsess--;
    metric_set(e->m.active, (int64_t)e->nsess);
    if (e->stopping) {
        edge_maybe_free(e); /* may free e: nothing below may touch it */
        return;
    }
    if (e->draining && e->nsess == 0 && e->drained_cb) {
        void (*cb)(void *) = e->drained_cb;
        e->drained_cb = NULL;
        cb(e->drained_arg);
    }
}

static void sess_on_timer_closed(uv_handle_t *h)
{
    struct ce_sess *s = h->data;
    s->timer_closed = true;
    sess_free_if_done(s);
}

/* Leaves the conference: the pin goes when its last participant leaves. */
static void sess_leave_conf(struct ce_sess *s)
{
    struct ce_edge *e = s->edge;
    if (!s->counted_conf)
        return;
    s->counted_conf = false;
    struct ce_map_entry *c = s->conf;
    s->conf = NULL;
    if (--c->count <= 0) {
        struct ce_link *l = c->val;
        if (l && l->confs)
            l->confs--;
        ce_map_remove(e->confs, c);
        metric_set(e->m.conferences, (int64_t)ce_map_size(e->confs));
    }
}

static void sess_leave_key(struct ce_sess *s)
{
    if (!s->counted_key)
        return;
    s->counted_key = false;
    struct ce_map_entry *k = s->key;
    s->key = NULL;
    if (--k->count <= 0)
        ce_map_remove(s->edge->key_sessions, k);
}

static void sess_unbind(struct ce_sess *s, const char *why, bool tell_server)
{
    struct ce_link *l = s->link;
    if (!l)
        return;
    if (tell_server)
        link_send_simple(l, CE_MUX_CLOSE, s->id, why);
    struct ce_map_entry *me = ce_map_find(l->streams, &s->id, sizeof s->id);
    if (me)
        ce_map_remove(l->streams, me);
    dl_del(&s->qnode);
    s->up_blocked = false;
    s->link = NULL;
    s->edge->nrelay--;
    metric_set(s->edge->m.relaying, (int64_t)s->edge->nrelay);
}

/* Ends the session's ties to servers and conferences; the client stream is closed by the
 * caller's choice (at once, or after a close_notify and a linger). */
static void sess_detach(struct ce_sess *s, const char *why, bool tell_server)
{
    sess_unbind(s, why, tell_server);
    dl_del(&s->qnode);
    sess_leave_conf(s);
    sess_leave_key(s);
}

/* The session is over: close the client now. */
static void sess_end(struct ce_sess *s, const char *why, bool tell_server)
{
    struct ce_edge *e = s->edge;
    if (s->done)
        return;
    s->done = true;
    sess_detach(s, why, tell_server);
    dl_del(&s->node);
    if (!s->timer_closed && !uv_is_closing((uv_handle_t *)&s->timer))
        uv_close((uv_handle_t *)&s->timer, sess_on_timer_closed);
    if (s->cs)
        stream_close(s->cs, 0, why);
    LOGD(e->log, &s->peer, "session ended: %s", why);
    sess_free_if_done(s);
}

static void on_linger(uv_timer_t *t)
{
    struct ce_sess *s = t->data;
    sess_end(s, "linger over", false);
}

/* Ends the session politely: what is queued goes out, then close_notify and FIN; the
 * client has CE_LINGER_MS to close its side before the edge closes the socket. */
static void sess_finish(struct ce_sess *s, const char *why, bool tell_server)
{
    if (s->done || s->state == S_ENDING)
        return;
    s->state = S_ENDING;
    sess_detach(s, why, tell_server);
    if (!s->cs) {
        sess_end(s, why, false);
        return;
    }
    /* The linger exists because closing a socket with unread input sends a reset, which
     * can destroy the answer line (or the last relayed bytes) before the client reads
     * them. So the edge keeps reading, and drops what it reads: the client's close_notify,
     * FIN or reset then ends the session at once and frees its per-address slot. A client
     * that sends on instead of closing is read up to CE_DISCARD_MAX bytes; then reading
     * stops and the linger ends it, as for a client that never closes. */
    s->discard_left = CE_DISCARD_MAX;
    stream_read_start(s->cs);
    /* Server bytes parked for a slow client are given up: the session is over. */
    stream_shutdown(s->cs);
    uv_timer_start(&s->timer, on_linger, CE_LINGER_MS, 0);
}

static void sess_refuse(struct ce_sess *s, enum ce_reply r)
{
    struct ce_edge *e = s->edge;
    e->refused++;
    metric_inc(e->m.refused[r]);
    LOGI(e->log, &s->peer, "client refused: %s%s%s", ce_reply_reason(r),
         s->claims.conf[0] ? " conference " : "", s->claims.conf);
    if (s->cs) {
        const char *line = ce_reply_line(r);
        (void)stream_write(s->cs, line, strlen(line));
    }
    sess_finish(s, ce_reply_reason(r), false);
}

/* ---- sessions: server -> client ----------------------------------------------------- */

static void sess_return_window(struct ce_sess *s, size_t n, bool force)
{
    s->down_owed += n;
    uint64_t threshold = s->edge->cfg->buffers.window / 4;
    if (s->link && s->down_owed && (force || s->down_owed >= threshold)) {
        uint8_t f[CE_MUX_HDR + 4];
        uint32_t inc = s->down_owed > UINT32_MAX ? UINT32_MAX : (uint32_t)s->down_owed;
        if (ce_mux_encode_window(f, sizeof f, s->id, inc) > 0) {
            s->down_owed -= inc;
            link_send_ctl(s->link, f, sizeof f);
        }
    }
}

static void sess_down_flush(struct ce_sess *s)
{
    while (buf_len(&s->down) && s->cs) {
        size_t n = buf_len(&s->down);
        n = n > 16384 ? 16384 : n;
        int rc = stream_write(s->cs, s->down.data + s->down.rd, n);
        if (rc == -ENOBUFS)
            return;
        if (rc < 0)
            return; /* the stream is closing; on_close follows */
        buf_consume(&s->down, n);
        sess_return_window(s, n, false);
    }
    if (buf_len(&s->down) == 0 && s->down.data) {
        buf_fini(&s->down); /* idle sessions hold no parking space */
        memset(&s->down, 0, sizeof s->down);
    }
    if (s->server_shut && s->cs && s->state == S_RELAY)
        stream_shutdown(s->cs);
}

static void sess_down(struct ce_sess *s, struct slice data)
{
    struct ce_edge *e = s->edge;
    if (!s->cs || s->state != S_RELAY || s->server_shut)
        return; /* crossing a CLOSE: dropped */
    e->bytes_down += data.len;
    metric_add(e->m.bytes_down, data.len);
    if (buf_len(&s->down) == 0) {
        int rc = stream_write(s->cs, data.p, data.len);
        if (rc == 0) {
            sess_return_window(s, data.len, false);
            return;
        }
        if (rc != -ENOBUFS)
            return;
    }
    if (!s->down.data && buf_init(&s->down, e->cfg->buffers.window + CE_MUX_PAYLOAD_MAX) < 0) {
        sess_finish(s, "out of memory", true);
        return;
    }
    if (buf_append(&s->down, data.p, data.len) < 0) {
        LOGW(e->log, &s->peer, "conferencing server %s overran the stream window", s->link->name);
        sess_finish(s, "window overrun", true);
    }
}

static void sess_on_drain(struct stream *cs, void *arg)
{
    struct ce_sess *s = arg;
    sess_down_flush(s);
}

/* ---- sessions: client -> server ----------------------------------------------------- */

static void sess_send_shut_close(struct ce_sess *s)
{
    struct ce_link *l = s->link;
    if (!l)
        return;
    link_send_simple(l, CE_MUX_SHUT, s->id, NULL);
    sess_end(s, "client closed", true);
}

static void sess_pump_up(struct ce_sess *s)
{
    struct ce_edge *e = s->edge;
    struct ce_link *l = s->link;
    if (!l || s->state != S_RELAY)
        return;
    for (int i = 0; i < 1024 && buf_len(&s->up); i++) {
        size_t n = buf_len(&s->up);
        n = n > CE_MUX_DATA_MAX ? CE_MUX_DATA_MAX : n;
        n = n > s->up_credit ? (size_t)s->up_credit : n;
        if (n == 0)
            break; /* no window: WINDOW from the server resumes */
        ce_mux_put_header(e->frame, CE_MUX_DATA, s->id, n);
        memcpy(e->frame + CE_MUX_HDR, s->up.data + s->up.rd, n);
        int rc = link_send_data(l, CE_MUX_HDR + n);
        if (rc == -ENOBUFS) {
            if (!s->up_blocked) {
                s->up_blocked = true;
                dl_add(l->blocked.prev, &s->qnode);
            }
            break;
        }
        if (rc < 0 || s->link != l)
            return; /* the link died and took the session with it */
        buf_consume(&s->up, n);
        s->up_credit -= n;
        e->bytes_up += n;
        metric_add(e->m.bytes_up, n);
    }
    if (buf_len(&s->up)) {
        if (s->cs)
            stream_read_stop(s->cs);
        return;
    }
    if (s->up.data) {
        buf_fini(&s->up); /* idle sessions hold no read buffer */
        memset(&s->up, 0, sizeof s->up);
    }
    if (s->client_eof) {
        sess_send_shut_close(s);
        return;
    }
    if (s->cs)
        stream_read_start(s->cs);
}

/* ---- sessions: admission and binding ------------------------------------------------ */

static struct ce_link *pick_link(struct ce_edge *e)
{
    struct ce_link *best = NULL;
    for (struct dlist *n = e->links.next; n != &e->links; n = n->next) {
        struct ce_link *l = container_of(n, struct ce_link, node);
        if (!l->hello || l->dead)
            continue;
        if (!best || l->confs < best->confs ||
            (l->confs == best->confs && ce_map_size(l->streams) < ce_map_size(best->streams)))
            best = l;
    }
    return best;
}

static int sess_bind(struct ce_sess *s)
{
    struct ce_edge *e = s->edge;
    struct ce_map_entry *c = s->conf;
    struct ce_link *l = c->val;
    if (!l || l->dead || !l->hello) {
        l = pick_link(e);
        if (!l)
            return -EAGAIN;
        c->val = l;
        l->confs++;
        LOGI(e->log, NULL, "conference %s pinned to conferencing server %s", s->claims.conf,
             l->name);
    }
    uint32_t id = 0;
    for (int i = 0; i < 16 && !id; i++) {
        uint32_t cand = l->next_id++;
        if (l->next_id == 0)
            l->next_id = 1;
        if (cand && !ce_map_find(l->streams, &cand, sizeof cand))
            id = cand;
    }
    struct ce_map_entry *me = id ? ce_map_get(l->streams, &id, sizeof id) : NULL;
    if (!me)
        return -ENOMEM;
    me->val = s;
    s->link = l;
    s->id = id;
    s->up_credit = l->peer_window;
    s->state = S_RELAY;
    e->nrelay++;
    metric_set(e->m.relaying, (int64_t)e->nrelay);
    uv_timer_stop(&s->timer);
    uint8_t f[CE_MUX_HDR + 5 * 256];
    struct ce_mux_open o = {slice_str(s->peer_s), slice_str(s->claims.conf),
                            slice_str(s->claims.user), slice_str(s->claims.role),
                            slice_str(s->claims.jti)};
    ssize_t n = ce_mux_encode_open(f, sizeof f, id, &o);
    if (n > 0)
        link_send_ctl(l, f, (size_t)n);
    if (s->link != l)
        return -EPIPE;
    const char *ok = ce_reply_line(CE_REPLY_ADMITTED);
    (void)stream_write(s->cs, ok, strlen(ok));
    LOGI(e->log, &s->peer, "admitted: conference %s participant %s role %s -> %s stream %u",
         s->claims.conf, s->claims.user, s->claims.role, l->name, id);
    metric_inc(e->m.admitted);
    sess_pump_up(s);
    return 0;
}

static void on_server_wait(uv_timer_t *t)
{
    struct ce_sess *s = t->data;
    if (s->state == S_WAITING)
        sess_refuse(s, CE_REPLY_NO_SERVER);
}

/* One conference key (its jti) holds at most limits.per_key sessions. Past it, the policy
 * decides: REFUSE answers 429 key-in-use; REPLACE (the default) admits the newcomer and
 * ends the key's oldest sessions. Replacing is what makes a rejoin after a drop work: the
 * old connection may be half-dead (no FIN or reset ever arrives, the path is gone) and
 * nothing the edge can do finds that out quickly, while the newcomer holds the same key.
 * Returns 0 with the key counted, or -1 when s was refused (or out of memory). */
static int sess_take_key(struct ce_sess *s, struct slice key)
{
    struct ce_edge *e = s->edge;
    const struct ce_config *cfg = e->cfg;
    /* A key minted without a jti is told apart by its whole text. */
    struct slice id = s->claims.jti[0] ? slice_str(s->claims.jti) : key;
    struct ce_map_entry *k = ce_map_get(e->key_sessions, id.p, id.len);
    if (!k) {
        sess_finish(s, "out of memory", false);
        return -1;
    }
    uint64_t replace = 0;
    enum ce_reply r = ce_admit_key_cap((uint64_t)k->count, cfg->limits.per_key,
                                       cfg->limits.per_key_policy == CE_KEY_REFUSE, &replace);
    if (r != CE_REPLY_ADMITTED) {
        if (k->count == 0)
            ce_map_remove(e->key_sessions, k);
        sess_refuse(s, r);
        return -1;
    }
    /* Counted first, so the entry outlives the sessions it ends below. The scan is over
     * every session, but it runs only when a key is past its cap, after a full TLS
     * handshake that costs far more. */
    k->count++;
    s->key = k;
    s->counted_key = true;
    for (uint64_t i = 0; i < replace; i++) {
        struct ce_sess *old = NULL;
        for (struct dlist *n = e->sessions.next; n != &e->sessions && !old; n = n->next) {
            struct ce_sess *o = container_of(n, struct ce_sess, node);
            if (o != s && o->counted_key && o->key == k)
                old = o; /* e->sessions is in arrival order: the oldest first */
        }
        if (!old)
            break;
        metric_inc(e->m.replaced_closed);
        LOGI(e->log, &old->peer,
             "session replaced: its key (conference %s participant %s) "
             "rejoined from %s",
             old->claims.conf, old->claims.user, s->peer_s);
        if (old->state == S_WAITING)
            sess_refuse(old, CE_REPLY_KEY_IN_USE); /* still waiting for its answer line */
        else
            sess_finish(old, "replaced", true);
    }
    return 0;
}

static void sess_admit(struct ce_sess *s, struct slice key)
{
    struct ce_edge *e = s->edge;
    enum ce_reply r = ce_admit_check(&e->keys, e->rev, key, now_s(), &s->claims);
    if (r != CE_REPLY_ADMITTED) {
        sess_refuse(s, r);
        return;
    }
    if (e->draining) {
        sess_refuse(s, CE_REPLY_DRAINING);
        return;
    }
    if (sess_take_key(s, key) < 0)
        return;
    struct ce_map_entry *c = ce_map_get(e->confs, s->claims.conf, strlen(s->claims.conf));
    if (!c) {
        sess_finish(s, "out of memory", false);
        return;
    }
    if (c->count >= (int64_t)e->cfg->limits.per_conference) {
        if (c->count == 0)
            ce_map_remove(e->confs, c);
        sess_refuse(s, CE_REPLY_TOO_MANY);
        return;
    }
    c->count++;
    s->conf = c;
    s->counted_conf = true;
    metric_set(e->m.conferences, (int64_t)ce_map_size(e->confs));
    s->state = S_WAITING;
    uv_timer_stop(&s->timer);
    int rc = sess_bind(s);
    if (rc == -EAGAIN) {
        LOGI(e->log, &s->peer, "admitted, waiting for a conferencing server (conference %s)",
             s->claims.conf);
        dl_add(e->waiting.prev, &s->qnode);
        uv_timer_start(&s->timer, on_server_wait, e->cfg->server_wait_ms, 0);
        stream_read_stop(s->cs);
    } else if (rc < 0 && !s->done && s->state != S_ENDING) {
        sess_finish(s, "cannot bind to a server", false);
    }
}

static void edge_bind_waiting(struct ce_edge *e)
{
    for (int i = 0; i < 1000000 && !dl_empty(&e->waiting); i++) {
        struct ce_sess *s = container_of(e->waiting.next, struct ce_sess, qnode);
        dl_del(&s->qnode);
        int rc = sess_bind(s);
        if (rc == -EAGAIN) {
            dl_add(e->waiting.prev, &s->qnode); /* no server after all */
            return;
        }
        if (rc < 0 && !s->done && s->state != S_ENDING)
            sess_finish(s, "cannot bind to a server", false);
    }
}

static void on_preamble_timeout(uv_timer_t *t)
{
    struct ce_sess *s = t->data;
    if (s->state == S_PREAMBLE)
        sess_refuse(s, CE_REPLY_TIMEOUT);
}

/* ---- sessions: stream callbacks ----------------------------------------------------- */

static void sess_on_open(struct stream *cs, void *arg)
{
    struct ce_sess *s = arg;
    s->state = S_PREAMBLE;
    uv_timer_start(&s->timer, on_preamble_timeout, s->edge->cfg->preamble_timeout_ms, 0);
}

static int sess_on_data(struct stream *cs, const uint8_t *data, size_t len, void *arg)
{
    struct ce_sess *s = arg;
    if (s->state == S_ENDING) {
        /* Nothing more goes inside from an ending session: read only to see it close. */
        if (len >= s->discard_left) {
            s->discard_left = 0;
            stream_read_stop(cs);
        } else {
            s->discard_left -= (uint32_t)len;
        }
        return 0;
    }
    if (!s->up.data && buf_init(&s->up, CE_UP_CAP) < 0)
        return -ENOMEM;
    if (buf_append(&s->up, data, len) < 0) {
        LOGW(s->edge->log, &s->peer, "client sent past its read stop");
        return -ENOBUFS;
    }
    if (s->state == S_RELAY) {
        sess_pump_up(s);
        return 0;
    }
    if (s->state == S_WAITING) {
        stream_read_stop(cs); /* kept until a server takes the session */
        return 0;
    }
    struct ce_preamble p;
    ssize_t n = ce_preamble_parse(s->up.data + s->up.rd, buf_len(&s->up), &p);
    if (n == -EAGAIN)
        return 0;
    if (n == -EPROTONOSUPPORT) {
        sess_refuse(s, CE_REPLY_BAD_VERSION);
        return 0;
    }
    if (n < 0) {
        sess_refuse(s, CE_REPLY_MALFORMED);
        return 0;
    }
    /* The line is dropped before admission: what follows it is PSOM, relayed as is. */
    char key[CE_PREAMBLE_MAX];
    memcpy(key, p.key.p, p.key.len);
    struct slice k = slice_make(key, p.key.len);
    buf_consume(&s->up, (size_t)n);
    sess_admit(s, k);
    return 0;
}

static void sess_on_close(struct stream *cs, int err, const char *why, void *arg)
{
    struct ce_sess *s = arg;
    struct ce_edge *e = s->edge;
    s->cs = NULL;
    if (s->counted_addr) {
        s->counted_addr = false;
        uint8_t k[16];
        struct ce_map_entry *a = ce_map_find(e->addrs, k, addr_key(&s->peer, k));
        if (a && --a->count <= 0)
            ce_map_remove(e->addrs, a);
    }
    if (s->state == S_HANDSHAKE) {
        const char *te = why ? why : "";
        if (!strncmp(te, "not TLS", 7)) {
            metric_inc(e->m.not_tls);
            LOGI(e->log, &s->peer, "dropped: not a TLS ClientHello");
        } else if (err) {
            metric_inc(e->m.handshake_failed);
            LOGI(e->log, &s->peer, "TLS handshake failed: %s", te);
        }
    } else if (err == -ETIMEDOUT && s->state == S_RELAY) {
        metric_inc(e->m.idle_closed);
        LOGI(e->log, &s->peer, "idle timeout: session closed");
    }
    if (s->done) {
        sess_free_if_done(s);
        return;
    }
    if (s->state == S_RELAY && err == 0 && !s->done) {
        /* close_notify or FIN from the client: what it sent still goes to the server,
         * then SHUT and CLOSE (a TLS 1.2 close_notify ends both directions). */
        s->client_eof = true;
        if (buf_len(&s->up) == 0)
            sess_send_shut_close(s);
        else
            sess_pump_up(s);
        return;
    }
    if (err && err != -ETIMEDOUT)
        LOGD(e->log, &s->peer, "client connection failed: %s", why ? why : strerror(-err));
    sess_end(s,
             err == -ETIMEDOUT ? "idle timeout"
             : err             ? "client connection failed"
                               : "client closed",
             true);
}

/* ---- external listener -------------------------------------------------------------- */

static void on_client(uv_stream_t *server, int status)
{
    struct ce_edge *e = server->data;
    if (status < 0 || e->stopping)
        return;
    struct ce_sess *s = calloc(1, sizeof *s);
    if (!s)
        return;
    s->edge = e;
    s->state = S_HANDSHAKE;
    dl_init(&s->qnode);
    const struct ce_config *c = e->cfg;
    struct stream_opts o = {
        .tls = e->ext_tls,
        .write_cap = c->buffers.client_write,
        .read_chunk = CE_READ_CHUNK,
        .write_batch = CE_WRITE_BATCH,
        .handshake_timeout_ms = (uint32_t)c->external.handshake_timeout_ms,
        .idle_timeout_ms = (uint32_t)c->idle_timeout_ms,
        .gate = e->hs_gate,
    };
    static const struct stream_cbs cbs = {sess_on_data, sess_on_open, sess_on_drain, sess_on_close};
    if (stream_accept(server, &o, &cbs, s, &s->cs) < 0) {
        free(s);
        return;
    }
    uv_timer_init(e->loop, &s->timer);
    s->timer.data = s;
    dl_add(e->sessions.prev, &s->node);
    e->nsess++;
    metric_inc(e->m.accepted);
    metric_set(e->m.active, (int64_t)e->nsess);
    s->peer = *stream_peer(s->cs);
    addr_format(&s->peer, s->peer_s);
    uint8_t k[16];
    struct ce_map_entry *a = ce_map_get(e->addrs, k, addr_key(&s->peer, k));
    if (!a || a->count >= (int64_t)c->limits.per_address || e->nsess > c->limits.clients ||
        e->draining) {
        metric_inc(e->m.per_address);
        e->refused++;
        if (a && a->count == 0)
            ce_map_remove(e->addrs, a);
        LOGW(e->log, &s->peer, "connection closed at accept: %s",
             e->draining                                       ? "draining"
             : a && a->count >= (int64_t)c->limits.per_address ? "per-address cap reached"
                                                               : "client cap reached");
        sess_end(s, "cap reached", false);
        return;
    }
    a->count++;
    s->counted_addr = true;
}

/* ---- server links ------------------------------------------------------------------- */

static void link_free_if_done(struct ce_link *l)
{
    if (l->st)
        return;
    struct ce_edge *e = l->edge;
    dl_del(&l->node);
    ce_map_destroy(l->streams);
    buf_fini(&l->in);
    buf_fini(&l->ctlq);
    free(l);
    edge_maybe_free(e);
}

static void unbind_one(struct ce_map_entry *me, void *arg)
{
    struct ce_sess *s = me->val;
    struct ce_sess **list = arg;
    /* Collected first: ending a session removes it from the map being walked. */
    s->tmp_next = *list;
    *list = s;
}

/* The link is gone: its clients get a close_notify; its conferences are unpinned. */
static void link_kill(struct ce_link *l, const char *why)
{
    struct ce_edge *e = l->edge;
    if (l->dead)
        return;
    l->dead = true;
    if (l->hello) {
        e->nlinks_ready--;
        metric_set(e->m.servers, (int64_t)e->nlinks_ready);
        LOGW(e->log, NULL, "conferencing server %s (%s) lost: %s; closing its %zu clients", l->name,
             l->peer_s, why, ce_map_size(l->streams));
    }
    struct ce_sess *list = NULL;
    ce_map_foreach(l->streams, unbind_one, &list);
    while (list) {
        struct ce_sess *s = list;
        list = s->tmp_next;
        metric_inc(e->m.server_lost_closed);
        sess_finish(s, "conferencing server lost", false);
    }
    /* Conferences pinned here move to whichever server their next participant finds. */
    for (struct dlist *n = e->sessions.next; n != &e->sessions; n = n->next) {
        struct ce_sess *s = container_of(n, struct ce_sess, node);
        if (s->conf && s->conf->val == l)
            s->conf->val = NULL;
    }
    if (l->st)
        stream_close(l->st, 0, why);
}

static void link_on_close(struct stream *st, int err, const char *why, void *arg)
{
    struct ce_link *l = arg;
    struct ce_edge *e = l->edge;
    if (!l->hello && err)
        LOGW(e->log, NULL, "conferencing server %s: connection failed before HELLO: %s", l->peer_s,
             why ? why : "closed");
    link_kill(l, why ? why : "closed");
    l->st = NULL;
    link_free_if_done(l);
}

/* Is the server's certificate one of internal.allowed_names? Its CN or any DNS SAN, as the
 * README documents, compared without regard to case (certificate names are DNS names:
 * RFC 4343). */
static bool name_allowed(const struct ce_config *c, struct tls_conn *t)
{
    if (c->internal.n_allowed_names == 0)
        return true;
    const char *cn = tls_conn_peer_cn(t);
    for (size_t i = 0; i < c->internal.n_allowed_names; i++) {
        const char *want = c->internal.allowed_names[i];
        size_t wl = strlen(want);
        if (cn && cert_name_match(want, wl, cn, strlen(cn), CERT_NAME_EXACT))
            return true;
        for (size_t j = 0; j < 64; j++) {
            const char *san = tls_conn_peer_san(t, j);
            if (!san)
                break;
            if (cert_name_match(want, wl, san, strlen(san), CERT_NAME_EXACT))
                return true;
        }
    }
    return false;
}

static void link_on_open(struct stream *st, void *arg)
{
    struct ce_link *l = arg;
    struct ce_edge *e = l->edge;
    struct tls_conn *t = stream_tls(st);
    const char *cn = t ? tls_conn_peer_cn(t) : NULL;
    snprintf(l->name, sizeof l->name, "%s", cn && *cn ? cn : l->peer_s);
    if (!t || !tls_conn_peer_verified(t) || !name_allowed(e->cfg, t)) {
        metric_inc(e->m.servers_refused);
        LOGW(e->log, stream_peer(st),
             "conferencing server refused: certificate name '%s' not allowed", cn ? cn : "");
        stream_close(st, -EACCES, "certificate name not allowed");
        return;
    }
    uint8_t f[CE_MUX_HDR + 8 + 1 + 64];
    struct ce_mux_hello h = {
        CE_MUX_VERSION, (uint32_t)e->cfg->buffers.window,
        slice_str(e->cfg->base.instance_id ? e->cfg->base.instance_id : "conf-edge")};
    if (h.name.len > 64)
        h.name.len = 64;
    ssize_t n = ce_mux_encode_hello(f, sizeof f, &h);
    if (n > 0)
        link_send_ctl(l, f, (size_t)n);
}

static int link_handle(struct ce_link *l, const struct ce_mux_frame *f)
{
    struct ce_edge *e = l->edge;
    if (!l->hello && f->type != CE_MUX_HELLO)
        return -EPROTO;
    struct ce_sess *s = NULL;
    if (f->stream) {
        struct ce_map_entry *me = ce_map_find(l->streams, &f->stream, sizeof f->stream);
        s = me ? me->val : NULL;
    }
    switch (f->type) {
    case CE_MUX_HELLO: {
        struct ce_mux_hello h;
        if (l->hello || ce_mux_decode_hello(f->payload, &h) < 0 || h.version != CE_MUX_VERSION ||
            h.window < 1024)
            return -EPROTO;
        l->hello = true;
        l->peer_window = h.window;
        if (h.name.len)
            slice_to_cstr(h.name, l->name, sizeof l->name);
        e->nlinks_ready++;
        metric_set(e->m.servers, (int64_t)e->nlinks_ready);
        metric_inc(e->m.servers_connected_total);
        LOGI(e->log, stream_peer(l->st), "conferencing server %s connected (window %u)", l->name,
             h.window);
        edge_bind_waiting(e);
        return 0;
    }
    case CE_MUX_DATA:
        if (s)
            sess_down(s, f->payload);
        return 0;
    case CE_MUX_WINDOW:
        if (s) {
            s->up_credit += ce_mux_window_increment(f);
            if (!s->up_blocked)
                sess_pump_up(s);
        }
        return 0;
    case CE_MUX_SHUT:
        if (s) {
            s->server_shut = true;
            if (buf_len(&s->down) == 0 && s->cs)
                stream_shutdown(s->cs);
        }
        return 0;
    case CE_MUX_CLOSE:
        if (s) {
            char why[64] = "closed by the conferencing server";
            if (f->payload.len) {
                char r[48];
                slice_to_cstr(f->payload, r, sizeof r);
                snprintf(why, sizeof why, "server: %s", r);
            }
            sess_unbind(s, why, false);
            sess_finish(s, why, false);
        }
        return 0;
    case CE_MUX_PING: {
        uint8_t pf[CE_MUX_HDR + 8];
        if (ce_mux_encode_ping(pf, sizeof pf, CE_MUX_PONG, ce_mux_ping_value(f)) > 0)
            link_send_ctl(l, pf, sizeof pf);
        return 0;
    }
    case CE_MUX_PONG:
        return 0;
    default:
        return -EPROTO; /* OPEN is the edge's to send */
    }
}

static int link_frame(void *arg, const struct ce_mux_frame *f)
{
    struct ce_link *l = arg;
    int rc = link_handle(l, f);
    return rc < 0 ? rc : l->dead ? 1 : 0;
}

static int link_on_data(struct stream *st, const uint8_t *data, size_t len, void *arg)
{
    struct ce_link *l = arg;
    l->last_rx_ms = time_mono_ms();
    if (l->dead)
        return 0;
    int bad = 0;
    int rc = ce_mux_feed(&l->in, data, len, link_frame, l, &bad);
    if (rc == -EPROTO)
        LOGW(l->edge->log, stream_peer(st), "conferencing server %s: protocol error (%s frame)",
             l->name, bad ? ce_mux_type_name((uint8_t)bad) : "bad");
    return rc;
}

static void on_server(uv_stream_t *server, int status)
{
    struct ce_edge *e = server->data;
    if (status < 0 || e->stopping)
        return;
    struct ce_link *l = calloc(1, sizeof *l);
    if (!l)
        return;
    l->edge = e;
    l->next_id = 1;
    l->last_rx_ms = time_mono_ms();
    dl_init(&l->blocked);
    if (ce_map_create(&l->streams) < 0 || buf_init(&l->in, CE_LINK_IN_CAP) < 0 ||
        buf_init(&l->ctlq, CE_CTLQ_CAP) < 0)
        goto fail;
    const struct ce_config *c = e->cfg;
    struct stream_opts o = {
        .tls = e->int_tls,
        .write_cap = c->buffers.server_write,
        .read_chunk = CE_READ_CHUNK,
        .write_batch = CE_WRITE_BATCH,
        .handshake_timeout_ms = (uint32_t)c->internal.handshake_timeout_ms,
    };
    static const struct stream_cbs cbs = {link_on_data, link_on_open, link_on_drain, link_on_close};
    if (stream_accept(server, &o, &cbs, l, &l->st) < 0)
        goto fail;
    addr_format(stream_peer(l->st), l->peer_s);
    snprintf(l->name, sizeof l->name, "%s", l->peer_s);
    dl_add(e->links.prev, &l->node);
    return;
fail:
    ce_map_destroy(l->streams);
    buf_fini(&l->in);
    buf_fini(&l->ctlq);
    free(l);
}

static void on_ping(uv_timer_t *t)
{
    struct ce_edge *e = t->data;
    uint8_t f[CE_MUX_HDR + 8];
    if (ce_mux_encode_ping(f, sizeof f, CE_MUX_PING, ++e->ping_seq) < 0)
        return;
    /* Our own PINGs would keep an idle timer alive, so liveness is what the server sent. */
    uint64_t now = time_mono_ms(), limit = 3 * e->cfg->internal.ping_interval_ms;
    for (struct dlist *n = e->links.next; n != &e->links; n = n->next) {
        struct ce_link *l = container_of(n, struct ce_link, node);
        if (l->dead)
            continue;
        if (now - l->last_rx_ms > limit)
            link_kill(l, "silent for three ping intervals");
        else if (l->hello)
            link_send_ctl(l, f, sizeof f);
    }
}

/* ---- the edge ----------------------------------------------------------------------- */

static void init_metrics(struct ce_edge *e, struct metrics *m)
{
    struct ce_metrics *x = &e->m;
    x->accepted =
        metrics_counter(m, "clients_accepted_total", "Client TCP connections accepted", NULL);
    x->admitted =
        metrics_counter(m, "clients_admitted_total", "Clients admitted with a valid key", NULL);
    x->active = metrics_gauge(m, "clients", "Client connections open, in every state", NULL);
    x->relaying =
        metrics_gauge(m, "clients_relaying", "Clients bound to a conferencing server", NULL);
    x->servers = metrics_gauge(m, "servers", "Conferencing servers connected", NULL);
    x->servers_connected_total = metrics_counter(
        m, "servers_connected_total", "Conferencing server connections that said HELLO", NULL);
    x->servers_refused = metrics_counter(m, "servers_refused_total",
                                         "Internal connections refused (certificate name)", NULL);
    x->conferences = metrics_gauge(m, "conferences", "Conferences with admitted clients", NULL);
    x->bytes_up = metrics_counter(m, "bytes_total", "Relayed bytes", "direction=\"to_server\"");
    x->bytes_down = metrics_counter(m, "bytes_total", "Relayed bytes", "direction=\"to_client\"");
    x->not_tls =
        metrics_counter(m, "clients_dropped_total", "Client connections dropped before admission",
                        "reason=\"not_tls\"");
    x->handshake_failed =
        metrics_counter(m, "clients_dropped_total", "Client connections dropped before admission",
                        "reason=\"handshake\"");
    x->per_address =
        metrics_counter(m, "clients_dropped_total", "Client connections dropped before admission",
                        "reason=\"cap\"");
    for (int r = 1; r < CE_REPLY_COUNT; r++) {
        char lbl[64];
        snprintf(lbl, sizeof lbl, "reason=\"%s\"", ce_reply_reason(r));
        x->refused[r] = metrics_counter(m, "clients_refused_total",
                                        "Clients refused with a one-line answer", lbl);
    }
    x->revoked_closed = metrics_counter(m, "sessions_closed_total",
                                        "Live sessions closed by the edge", "reason=\"revoked\"");
    x->server_lost_closed = metrics_counter(
        m, "sessions_closed_total", "Live sessions closed by the edge", "reason=\"server_lost\"");
    x->idle_closed = metrics_counter(m, "sessions_closed_total", "Live sessions closed by the edge",
                                     "reason=\"idle\"");
    x->replaced_closed = metrics_counter(m, "sessions_closed_total",
                                         "Live sessions closed by the edge", "reason=\"replaced\"");
}

static void on_edge_handle_closed(uv_handle_t *h)
{
    struct ce_edge *e = h->data;
    e->handles_open--;
    edge_maybe_free(e);
}

static void edge_maybe_free(struct ce_edge *e)
{
    if (!e->stopping || e->handles_open || !dl_empty(&e->links) || e->nsess)
        return;
    stream_gate_destroy(e->hs_gate); /* every participant's stream is closed */
    tls_ctx_unref(e->ext_tls);
    tls_ctx_unref(e->int_tls);
    ce_revocations_destroy(e->rev);
    ce_map_destroy(e->addrs);
    ce_map_destroy(e->confs);
    ce_map_destroy(e->key_sessions);
    free(e);
}

static int edge_listen(struct ce_edge *e, uv_tcp_t *h, const struct addr *a, uv_connection_cb cb,
                       const char *what, char *err, size_t errcap)
{
    int rc = stream_listen(e->loop, h, a, 1024, false, cb);
    if (rc < 0) {
        char as[ADDR_STRLEN], msg[ADDR_STRLEN + 64];
        snprintf(msg, sizeof msg, "cannot listen on %s: %s", addr_format(a, as), strerror(-rc));
        set_err(err, errcap, what, msg);
        return rc;
    }
    h->data = e;
    e->handles_open++;
    return 0;
}

int ce_edge_start(uv_loop_t *loop, const struct ce_config *cfg, const struct logger *log,
                  struct metrics *m, struct acme_challenges *acme, struct ce_edge **out, char *err,
                  size_t errcap)
{
    if (!loop || !cfg || !out)
        return -EINVAL;
    struct ce_edge *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->loop = loop;
    e->cfg = cfg;
    e->log = log;
    e->acme = acme;
    dl_init(&e->sessions);
    dl_init(&e->waiting);
    dl_init(&e->links);
    init_metrics(e, m);
    int rc = ce_revocations_create(&e->rev, cfg->revocations_max);
    if (!rc)
        rc = ce_map_create(&e->addrs);
    if (!rc)
        rc = ce_map_create(&e->confs);
    if (!rc)
        rc = ce_map_create(&e->key_sessions);
    if (!rc)
        rc = stream_gate_create(loop, CE_HS_BUDGET_US, &e->hs_gate);
    if (rc)
        goto fail;
    char terr[256] = "";
    rc = make_ext_tls(e, cfg, &e->ext_tls, terr, sizeof terr);
    if (rc) {
        set_err(err, errcap, "external.tls", terr);
        goto fail;
    }
    rc = make_tls(&e->int_tls, &cfg->internal.tls, true, cfg->internal.handshake_timeout_ms,
                  "conf-edge", NULL, terr, sizeof terr);
    if (rc) {
        set_err(err, errcap, "internal.tls", terr);
        goto fail;
    }
    if (cfg->conference_key.id)
        ce_edge_set_key(e, cfg->conference_key.id, cfg->conference_key.secret,
                        strlen(cfg->conference_key.secret), 0);
    rc =
        edge_listen(e, &e->ext_listener, &cfg->external.listen, on_client, "external", err, errcap);
    if (rc)
        goto fail;
    rc =
        edge_listen(e, &e->int_listener, &cfg->internal.listen, on_server, "internal", err, errcap);
    if (rc) {
        e->stopping = true;
        uv_close((uv_handle_t *)&e->ext_listener, on_edge_handle_closed);
        *out = NULL;
        return rc; /* freed once the external listener has closed */
    }
    uv_timer_init(loop, &e->ping);
    e->ping.data = e;
    e->handles_open++;
    uv_timer_start(&e->ping, on_ping, cfg->internal.ping_interval_ms,
                   cfg->internal.ping_interval_ms);
    char a1[ADDR_STRLEN], a2[ADDR_STRLEN];
    LOGI(log, NULL,
         "conf-edge: participants on %s (TLS%s), conferencing servers on %s (mutual TLS)",
         addr_format(&cfg->external.listen, a1),
         cfg->external.tls.cert || cfg->acme.enabled ? "" : ", self-signed",
         addr_format(&cfg->internal.listen, a2));
    if (!cfg->external.tls.cert && !cfg->acme.enabled)
        LOGW(log, NULL, "external.tls has no certificate: self-signed, fingerprint %s",
             tls_ctx_fingerprint(e->ext_tls));
    *out = e;
    return 0;
fail:
    stream_gate_destroy(e->hs_gate);
    tls_ctx_unref(e->ext_tls);
    tls_ctx_unref(e->int_tls);
    ce_revocations_destroy(e->rev);
    ce_map_destroy(e->addrs);
    ce_map_destroy(e->confs);
    ce_map_destroy(e->key_sessions);
    free(e);
    return rc < 0 ? rc : -EINVAL;
}

int ce_edge_reload(struct ce_edge *e, const struct ce_config *cfg)
{
    /* Listen addresses are restart-only keys: common/daemon.c refused a change already. */
    char terr[256];
    struct tls_ctx *x = NULL, *i = NULL;
    if (make_ext_tls(e, cfg, &x, terr, sizeof terr) ||
        make_tls(&i, &cfg->internal.tls, true, cfg->internal.handshake_timeout_ms, "conf-edge",
                 NULL, terr, sizeof terr)) {
        LOGE(e->log, NULL, "reload: %s", terr);
        tls_ctx_unref(x);
        return -EINVAL;
    }
    tls_ctx_unref(e->ext_tls);
    tls_ctx_unref(e->int_tls);
    e->ext_tls = x;
    e->int_tls = i;
    e->cfg = cfg;
    if (cfg->conference_key.id)
        ce_edge_set_key(e, cfg->conference_key.id, cfg->conference_key.secret,
                        strlen(cfg->conference_key.secret), 0);
    uv_timer_start(&e->ping, on_ping, cfg->internal.ping_interval_ms,
                   cfg->internal.ping_interval_ms);
    return 0;
}

int ce_edge_set_key(struct ce_edge *e, const char *id, const void *secret, size_t len,
                    int64_t not_after)
{
    if (!strcmp(e->keys.cur.id, id) && e->keys.cur.secret_len == len &&
        !memcmp(e->keys.cur.secret, secret, len))
        return 0; /* the same key again (a reload, a Welcome after a reconnect) */
    int rc = keyring_rotate(&e->keys, id, secret, len, not_after);
    if (rc == 0)
        LOGI(e->log, NULL, "conference-key signing secret '%s' installed%s%s", id,
             e->keys.prev.secret_len ? "; previous: " : "", e->keys.prev.id);
    return rc;
}

void ce_edge_revoke(struct ce_edge *e, const char *jti, const char *user, int64_t until)
{
    int64_t now = now_s();
    if (ce_revocations_add(e->rev, jti, user, until, now) < 0)
        return;
    LOGI(e->log, NULL, "revoked %s%s%s%s", jti && *jti ? "key " : "", jti ? jti : "",
         user && *user ? " user " : "", user ? user : "");
    /* Close every live session the revocation covers. Collected first: closing unlinks. */
    struct ce_sess *hit = NULL;
    for (struct dlist *n = e->sessions.next; n != &e->sessions; n = n->next) {
        struct ce_sess *s = container_of(n, struct ce_sess, node);
        if ((s->state == S_WAITING || s->state == S_RELAY) &&
            ce_revocations_match(e->rev, &s->claims, now)) {
            s->tmp_next = hit;
            hit = s;
        }
    }
    while (hit) {
        struct ce_sess *s = hit;
        hit = s->tmp_next;
        metric_inc(e->m.revoked_closed);
        LOGI(e->log, &s->peer, "session closed: key revoked (conference %s participant %s)",
             s->claims.conf, s->claims.user);
        sess_end(s, "revoked", true);
    }
}

void ce_edge_drain(struct ce_edge *e, void (*done)(void *arg), void *arg)
{
    e->draining = true;
    e->drained_cb = done;
    e->drained_arg = arg;
    if (!uv_is_closing((uv_handle_t *)&e->ext_listener))
        uv_close((uv_handle_t *)&e->ext_listener, on_edge_handle_closed);
    /* Clients still waiting for a server will not get one in time. */
    for (int i = 0; i < 1000000 && !dl_empty(&e->waiting); i++) {
        struct ce_sess *s = container_of(e->waiting.next, struct ce_sess, qnode);
        dl_del(&s->qnode);
        sess_refuse(s, CE_REPLY_DRAINING);
    }
    if (e->nsess == 0 && e->drained_cb) {
        e->drained_cb = NULL;
        done(arg);
    }
}

void ce_edge_stop(struct ce_edge *e)
{
    if (!e || e->stopping)
        return;
    e->stopping = true;
    e->drained_cb = NULL;
    if (!uv_is_closing((uv_handle_t *)&e->ext_listener))
        uv_close((uv_handle_t *)&e->ext_listener, on_edge_handle_closed);
    uv_close((uv_handle_t *)&e->int_listener, on_edge_handle_closed);
    uv_close((uv_handle_t *)&e->ping, on_edge_handle_closed);
    /* sess_end unlinks s (dl_del), so the head moves on. scan-build cannot follow that
     * relinking and reports a use after free here: the loop is hidden from it. */
#ifndef __clang_analyzer__
    for (int i = 0; i < 10000000 && !dl_empty(&e->sessions); i++) {
        struct ce_sess *s = container_of(e->sessions.next, struct ce_sess, node);
        sess_end(s, "edge stopping", true);
    }
#endif
    for (struct dlist *n = e->links.next; n != &e->links; n = n->next) {
        struct ce_link *l = container_of(n, struct ce_link, node);
        link_kill(l, "edge stopping");
    }
    edge_maybe_free(e);
}

void ce_edge_get_stats(const struct ce_edge *e, struct ce_edge_stats *out)
{
    memset(out, 0, sizeof *out);
    out->clients = e->nsess;
    out->relaying = e->nrelay;
    out->servers = e->nlinks_ready;
    out->conferences = ce_map_size(e->confs);
    out->bytes_up = e->bytes_up;
    out->bytes_down = e->bytes_down;
    out->refused = e->refused;
}

int ce_edge_health(const struct ce_edge *e, char *why, size_t cap)
{
    if (e->draining) {
        snprintf(why, cap, "draining");
        return -1;
    }
    return 0;
}
