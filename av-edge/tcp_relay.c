/* RFC 6062 TCP relays: relayed listeners, peer connections, connection ids and the byte
 * pipes between bound client data connections and their peers. */
#include "av-edge/tcp_relay.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/crypto.h"
#include "common/util.h"

#define ID_BUCKETS 256
/* What a full write queue refused, per direction: one read's worth (16 KiB) is all that can
 * arrive before reading stops, so this never fills; memory per pipe stays bounded by the
 * streams' write caps plus this. */
#define HOLD_CAP (64 * 1024)

enum { TO_PEER = 0, TO_CLIENT = 1 };

enum conn_state {
    CONN_CONNECTING, /* outbound: TCP handshake under way, the Connect waits for it */
    CONN_ACCEPTING,  /* inbound: being checked against the permissions */
    CONN_PENDING,    /* up, id given out, waiting for a ConnectionBind; the peer is not read */
    CONN_BOUND,      /* piping bytes */
    CONN_CLOSING,
};

struct av_tcp_relay {
    uv_loop_t *loop;
    struct av_turn *turn;
    struct av_tcp_relay_hooks hooks;
    const struct logger *log;
    struct av_tcp_conn *by_id[ID_BUCKETS];
    struct av_tcp_stats st;
    uint8_t msg[512]; /* Connect answers and ConnectionAttempt indications */
};

struct av_tcp_port {
    uv_tcp_t tcp;
    struct av_tcp_relay *r;
    struct av_alloc *a; /* NULL once the allocation is going */
    struct dlist conns; /* its peer connections (struct av_tcp_conn.link) */
    unsigned n_conns;
};

struct av_tcp_conn {
    struct av_tcp_relay *r;
    struct av_tcp_port *port;    /* NULL once unlinked (closing, or the allocation went) */
    struct dlist link;           /* in port->conns */
    struct av_tcp_conn *next_id; /* in r->by_id while id != 0 */
    uint32_t id;
    enum conn_state state;
    struct addr peer;
    struct stream *ps;         /* peer side, ours */
    struct stream *cs;         /* client data side once bound, the caller's */
    struct av_tcp_conn **slot; /* the caller's pointer to us while cs is set */
    uv_timer_t deadline;       /* ConnectionBind deadline, or linger after a clean close */
    uv_timer_t bw;             /* end of a pause for the bandwidth caps */
    bool bw_wait;
    int handles; /* ps, deadline and bw, until their close callbacks */
    struct av_turn_pending req;
    struct buf hold[2];
};

static const struct stream_cbs peer_cbs;

/* ---- bookkeeping ---- */

int av_tcp_relay_create(uv_loop_t *loop, struct av_turn *turn, const struct av_tcp_relay_hooks *h,
                        const struct logger *log, struct av_tcp_relay **out)
{
    struct av_tcp_relay *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->loop = loop;
    r->turn = turn;
    r->hooks = *h;
    r->log = log;
    *out = r;
    return 0;
}

void av_tcp_relay_destroy(struct av_tcp_relay *r)
{
    free(r);
}

void av_tcp_relay_set_logger(struct av_tcp_relay *r, const struct logger *log)
{
    r->log = log;
}

const struct av_tcp_stats *av_tcp_relay_stats(const struct av_tcp_relay *r)
{
    return &r->st;
}

static struct av_tcp_conn **id_bucket(struct av_tcp_relay *r, uint32_t id)
{
    return &r->by_id[(id * 2654435761u) >> 24];
}

static struct av_tcp_conn *id_find(struct av_tcp_relay *r, uint32_t id)
{
    struct av_tcp_conn *c = *id_bucket(r, id);
    while (c && c->id != id)
        c = c->next_id;
    return c;
}

/* Connection ids are random so that one client cannot guess another's (it would still need
 * the owner's credentials to bind). */
static void id_assign(struct av_tcp_relay *r, struct av_tcp_conn *c)
{
    uint32_t id = 0;
    while (!id || id_find(r, id))
        if (crypto_random(&id, sizeof(id)))
            id = (uint32_t)uv_hrtime() | 1u;
    c->id = id;
    struct av_tcp_conn **b = id_bucket(r, id);
    c->next_id = *b;
    *b = c;
}

static void id_remove(struct av_tcp_relay *r, struct av_tcp_conn *c)
{
    if (!c->id)
        return;
    struct av_tcp_conn **pp = id_bucket(r, c->id);
    while (*pp && *pp != c)
        pp = &(*pp)->next_id;
    if (*pp)
        *pp = c->next_id;
    c->id = 0;
}

static void port_unlink(struct av_tcp_conn *c)
{
    struct av_tcp_port *p = c->port;
    if (!p)
        return;
    dl_del(&c->link);
    p->n_conns--;
    c->port = NULL;
}

static struct av_alloc *conn_alloc(const struct av_tcp_conn *c)
{
    return c->port ? c->port->a : NULL;
}

static void conn_unref(struct av_tcp_conn *c)
{
    if (--c->handles)
        return;
    struct av_tcp_relay *r = c->r;
    buf_fini(&c->hold[TO_PEER]);
    buf_fini(&c->hold[TO_CLIENT]);
    free(c);
    r->st.active--;
    r->hooks.unref(r->hooks.arg);
}

static void timer_closed(uv_handle_t *h)
{
    conn_unref(h->data);
}

static struct av_tcp_conn *conn_new(struct av_tcp_relay *r, struct av_tcp_port *p,
                                    enum conn_state state)
{
    struct av_tcp_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->r = r;
    c->state = state;
    uv_timer_init(r->loop, &c->deadline);
    uv_timer_init(r->loop, &c->bw);
    c->deadline.data = c->bw.data = c;
    c->handles = 3;
    c->port = p;
    dl_add(&p->conns, &c->link);
    p->n_conns++;
    r->st.active++;
    r->hooks.ref(r->hooks.arg);
    return c;
}

/* Writes what a direction still holds, as far as the destination's queue takes it. */
static bool hold_flush(struct av_tcp_conn *c, int d, struct stream *to)
{
    struct buf *h = &c->hold[d];
    if (!buf_len(h))
        return true;
    struct slice s = buf_slice(h);
    if (stream_write(to, s.p, s.len) < 0)
        return false;
    buf_consume(h, s.len);
    return true;
}

/* The client data connection is no longer ours to use: cleanly (err 0) it gets what was
 * held for it and a FIN, else it is closed. */
static void client_detach(struct av_tcp_conn *c, int err, const char *why)
{
    if (!c->cs)
        return;
    if (err == 0) {
        hold_flush(c, TO_CLIENT, c->cs);
        stream_shutdown(c->cs);
    } else {
        stream_close(c->cs, err, why);
    }
    *c->slot = NULL;
    c->slot = NULL;
    c->cs = NULL;
}

/* The peer stream is gone (its on_close, or it was never made): the connection ends. */
static void conn_gone(struct av_tcp_conn *c, int err, const char *why)
{
    struct av_tcp_relay *r = c->r;
    struct av_alloc *a = conn_alloc(c);
    c->ps = NULL;
    if (c->state == CONN_CONNECTING) {
        r->st.failed++;
        LOGI(r->log, &c->peer, "TCP relay: connect failed: %s", why ? why : "-");
        if (a) {
            ssize_t n = av_turn_connect_answer(r->turn, &c->req, 447, 0, r->msg, sizeof(r->msg));
            if (n > 0 && a->conn)
                stream_write(a->conn, r->msg, (size_t)n);
        }
    }
    c->state = CONN_CLOSING;
    id_remove(r, c);
    port_unlink(c);
    client_detach(c, err, why);
    uv_close((uv_handle_t *)&c->deadline, timer_closed);
    uv_close((uv_handle_t *)&c->bw, timer_closed);
    conn_unref(c);
}

/* Up (connected or accepted and admitted): the id goes out and the bind deadline starts.
 * The peer is not read until the bind (RFC 6062 5.2/5.3: its data waits, here in the
 * kernel's socket buffer, which bounds it). */
static void conn_up(struct av_tcp_conn *c);

static void on_deadline(uv_timer_t *t)
{
    struct av_tcp_conn *c = t->data;
    if (!c->ps)
        return;
    if (c->state == CONN_PENDING) {
        c->r->st.failed++;
        LOGI(c->r->log, &c->peer, "TCP relay: connection %08x not bound within %d s", c->id,
             AV_TCP_BIND_TIMEOUT_MS / 1000);
        stream_close(c->ps, -ETIMEDOUT, "no ConnectionBind");
    } else {
        stream_close(c->ps, -ETIMEDOUT, "peer did not close after the client did");
    }
}

static void conn_up(struct av_tcp_conn *c)
{
    id_assign(c->r, c);
    c->state = CONN_PENDING;
    c->r->st.total++;
    uv_timer_start(&c->deadline, on_deadline, AV_TCP_BIND_TIMEOUT_MS, 0);
}

/* ---- the pipe ---- */

static struct stream *pipe_src(const struct av_tcp_conn *c, int d)
{
    return d == TO_PEER ? c->cs : c->ps;
}

static struct stream *pipe_dst(const struct av_tcp_conn *c, int d)
{
    return d == TO_PEER ? c->ps : c->cs;
}

static void pipe_resume(struct av_tcp_conn *c, int d)
{
    if (!c->bw_wait && !buf_len(&c->hold[d]))
        stream_read_start(pipe_src(c, d));
}

static void on_bw_resume(uv_timer_t *t)
{
    struct av_tcp_conn *c = t->data;
    c->bw_wait = false;
    pipe_resume(c, TO_PEER);
    pipe_resume(c, TO_CLIENT);
}

/* Counts n relayed bytes against the allocation's and the user's caps; over them, both
 * directions pause until the debt is paid (a stream cannot drop what it read). */
static void pipe_account(struct av_tcp_conn *c, int d, size_t n)
{
    struct av_tcp_relay *r = c->r;
    struct av_alloc *a = conn_alloc(c);
    if (d == TO_PEER)
        r->st.bytes_to_peer += n;
    else
        r->st.bytes_to_client += n;
    if (!a)
        return;
    if (d == TO_PEER)
        a->bytes_out += n;
    else
        a->bytes_in += n;
    uint64_t now = uv_now(r->loop);
    uint64_t w1 = av_bucket_charge(&a->bw, now, n),
             w2 = av_turn_user_charge(r->turn, a->user, now, n);
    uint64_t wait = w1 > w2 ? w1 : w2;
    if (wait) {
        c->bw_wait = true;
        stream_read_stop(c->cs);
        stream_read_stop(c->ps);
        uv_timer_start(&c->bw, on_bw_resume, wait, 0);
    }
}

static int pipe_forward(struct av_tcp_conn *c, int d, const uint8_t *p, size_t n)
{
    struct stream *to = pipe_dst(c, d);
    if (c->state != CONN_BOUND || !to)
        return 0; /* that side is closing: nothing more goes there */
    size_t left = n;
    if (!buf_len(&c->hold[d])) {
        int rc = stream_write(to, p, n);
        if (rc == 0)
            left = 0;
        else if (rc != -ENOBUFS)
            return rc;
    }
    if (left) {
        /* The other side's queue is full (a slow reader): keep what was read and stop
         * reading this side until that queue drains. */
        if (!c->hold[d].data && buf_init(&c->hold[d], HOLD_CAP) < 0)
            return -ENOMEM;
        if (buf_append(&c->hold[d], p, left) < 0)
            return -ENOBUFS;
        stream_read_stop(pipe_src(c, d));
    }
    pipe_account(c, d, n);
    return 0;
}

static void pipe_drained(struct av_tcp_conn *c, int d)
{
    struct stream *to = pipe_dst(c, d);
    if (to && !hold_flush(c, d, to))
        return; /* refused again: on_drain comes again */
    pipe_resume(c, d);
}

/* ---- peer streams ---- */

static int peer_on_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    UNUSED(s);
    return pipe_forward(arg, TO_CLIENT, p, n);
}

static void peer_on_open(struct stream *s, void *arg)
{
    struct av_tcp_conn *c = arg;
    struct av_tcp_relay *r = c->r;
    struct av_alloc *a = conn_alloc(c);
    if (c->state != CONN_CONNECTING)
        return; /* accepted streams open at once; on_peer_connection handles them */
    if (!a) {
        stream_close(s, -ECANCELED, "allocation gone");
        return;
    }
    conn_up(c);
    char ps[ADDR_STRLEN];
    LOGI(r->log, a->conn ? stream_peer(a->conn) : NULL,
         "TCP relay: connected to peer %s for user %s (connection %08x)", addr_format(&c->peer, ps),
         a->user->name, c->id);
    ssize_t n = av_turn_connect_answer(r->turn, &c->req, 0, c->id, r->msg, sizeof(r->msg));
    if (n > 0 && a->conn)
        stream_write(a->conn, r->msg, (size_t)n);
}

static void peer_on_drain(struct stream *s, void *arg)
{
    UNUSED(s);
    pipe_drained(arg, TO_PEER);
}

static void peer_on_close(struct stream *s, int err, const char *why, void *arg)
{
    UNUSED(s);
    conn_gone(arg, err, why);
}

static const struct stream_cbs peer_cbs = {.on_data = peer_on_data,
                                           .on_open = peer_on_open,
                                           .on_drain = peer_on_drain,
                                           .on_close = peer_on_close};

/* ---- relayed listeners ---- */

static void port_closed(uv_handle_t *h)
{
    struct av_tcp_port *p = container_of((uv_tcp_t *)h, struct av_tcp_port, tcp);
    struct av_tcp_relay *r = p->r;
    free(p);
    r->hooks.unref(r->hooks.arg);
}

static void refuse_pending(uv_stream_t *server)
{
    uv_tcp_t *tmp = malloc(sizeof(*tmp));
    if (!tmp)
        return;
    uv_tcp_init(server->loop, tmp);
    uv_accept(server, (uv_stream_t *)tmp);
    uv_close((uv_handle_t *)tmp, (uv_close_cb)free);
}

/* A peer connects to the relayed address: admitted only if the allocation has a permission
 * for its IP (RFC 6062 5.3), then announced to the client by ConnectionAttempt. */
static void on_peer_connection(uv_stream_t *server, int status)
{
    struct av_tcp_port *p = container_of((uv_tcp_t *)server, struct av_tcp_port, tcp);
    struct av_tcp_relay *r = p->r;
    if (status < 0)
        return;
    struct av_tcp_conn *c = p->a ? conn_new(r, p, CONN_ACCEPTING) : NULL;
    if (!c) {
        refuse_pending(server);
        return;
    }
    struct stream_opts o = {0};
    if (stream_accept(server, &o, &peer_cbs, c, &c->ps) < 0) {
        conn_gone(c, -ECONNABORTED, "accept failed");
        return;
    }
    stream_read_stop(c->ps);
    c->peer = *stream_peer(c->ps);
    struct av_alloc *a = p->a;
    const char *why = NULL;
    if (!av_perm_find(av_turn_table(r->turn), a, &c->peer, uv_now(r->loop)))
        why = "no permission for the peer";
    else if (p->n_conns > AV_TCP_MAX_CONNS)
        why = "too many connections on the allocation";
    else if (!a->conn)
        why = "no control connection";
    if (why) {
        r->st.failed++;
        LOGD(r->log, &c->peer, "TCP relay: refused incoming connection for user %s: %s",
             a->user->name, why);
        stream_close(c->ps, -EPERM, why);
        return;
    }
    conn_up(c);
    LOGI(r->log, &c->peer, "TCP relay: incoming connection for user %s (connection %08x)",
         a->user->name, c->id);
    ssize_t n = av_turn_connection_attempt(r->turn, &c->peer, c->id, r->msg, sizeof(r->msg));
    if (n > 0)
        stream_write(a->conn, r->msg, (size_t)n);
}

int av_tcp_port_open(struct av_tcp_relay *r, struct av_alloc *a, int fd, struct av_tcp_port **out)
{
    struct av_tcp_port *p = calloc(1, sizeof(*p));
    if (!p) {
        close(fd);
        return -ENOMEM;
    }
    dl_init(&p->conns);
    int rc = uv_tcp_init(r->loop, &p->tcp);
    if (rc) {
        free(p);
        close(fd);
        return rc;
    }
    p->r = r;
    r->hooks.ref(r->hooks.arg);
    rc = uv_tcp_open(&p->tcp, fd);
    if (rc)
        close(fd); /* not the handle's yet */
    else
        rc = uv_listen((uv_stream_t *)&p->tcp, 64, on_peer_connection);
    if (rc) {
        uv_close((uv_handle_t *)&p->tcp, port_closed);
        return rc;
    }
    p->a = a;
    *out = p;
    return 0;
}

void av_tcp_port_close(struct av_tcp_port *p)
{
    p->a = NULL;
    while (!dl_empty(&p->conns)) {
        struct av_tcp_conn *c = container_of(p->conns.next, struct av_tcp_conn, link);
        port_unlink(c);
        stream_close(c->ps, -ECANCELED, "allocation gone");
    }
    uv_close((uv_handle_t *)&p->tcp, port_closed);
}

/* ---- Connect and ConnectionBind ---- */

int av_tcp_connect(struct av_tcp_relay *r, struct av_alloc *a, const struct addr *peer,
                   const struct av_turn_pending *req)
{
    int fi = addr_family(peer) == AF_INET6;
    struct av_tcp_port *p = a->relay[fi].handle;
    if (!p)
        return -EAFNOSUPPORT;
    for (struct dlist *e = p->conns.next; e != &p->conns; e = e->next) {
        const struct av_tcp_conn *c = container_of(e, struct av_tcp_conn, link);
        if (c->state != CONN_CLOSING && addr_eq(&c->peer, peer))
            return -EEXIST; /* RFC 6062 5.2: 446 while it is pending or active */
    }
    if (p->n_conns >= AV_TCP_MAX_CONNS)
        return -ENOSPC;
    struct av_tcp_conn *c = conn_new(r, p, CONN_CONNECTING);
    if (!c)
        return -ENOMEM;
    c->peer = *peer;
    c->req = *req;
    /* From the relayed address's IP, so the peer sees the address it was given. */
    struct addr from = a->relay[fi].addr;
    addr_set_port(&from, 0);
    struct stream_opts o = {.handshake_timeout_ms = AV_TCP_CONNECT_TIMEOUT_MS};
    int rc = stream_connect(r->loop, peer, &from, &o, &peer_cbs, c, &c->ps);
    if (rc < 0) {
        c->state = CONN_CLOSING; /* answered by the caller */
        r->st.failed++;
        conn_gone(c, rc, "connect failed");
        return rc;
    }
    stream_read_stop(c->ps);
    return 0;
}

struct av_alloc *av_tcp_pending_alloc(struct av_tcp_relay *r, uint32_t id)
{
    struct av_tcp_conn *c = id ? id_find(r, id) : NULL;
    return c && c->state == CONN_PENDING ? conn_alloc(c) : NULL;
}

struct av_tcp_conn *av_tcp_bind(struct av_tcp_relay *r, uint32_t id, struct stream *cs,
                                struct av_tcp_conn **slot)
{
    struct av_tcp_conn *c = av_tcp_pending_alloc(r, id) ? id_find(r, id) : NULL;
    if (!c)
        return NULL;
    id_remove(r, c); /* bound once: a second ConnectionBind for it is a 400 */
    uv_timer_stop(&c->deadline);
    c->state = CONN_BOUND;
    c->cs = cs;
    c->slot = slot;
    *slot = c;
    stream_read_start(c->ps);
    return c;
}

int av_tcp_conn_client_data(struct av_tcp_conn *c, const uint8_t *p, size_t n)
{
    return pipe_forward(c, TO_PEER, p, n);
}

void av_tcp_conn_client_drained(struct av_tcp_conn *c)
{
    pipe_drained(c, TO_CLIENT);
}

void av_tcp_conn_client_closed(struct av_tcp_conn *c, int err)
{
    c->cs = NULL;
    c->slot = NULL;
    if (!c->ps)
        return;
    if (err) {
        stream_close(c->ps, err, "client data connection closed");
        return;
    }
    /* Cleanly: the peer gets what is held for it and a FIN; its own FIN (read, and what it
     * still sends dropped) then closes the stream, or the deadline does. */
    hold_flush(c, TO_PEER, c->ps);
    stream_shutdown(c->ps);
    stream_read_start(c->ps);
    uv_timer_start(&c->deadline, on_deadline, AV_TCP_BIND_TIMEOUT_MS, 0);
}
