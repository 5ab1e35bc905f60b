/* bench-conf backend: one program behind both proxies, so they serve the same thing.
 *
 *   ce_backend tcp LISTEN                      plain TCP, behind nginx stream: connections to
 *                                              LISTEN are sinks, to LISTEN+1 sources
 *   ce_backend mux EDGE_INTERNAL CERT KEY CA   dials conf-edge's internal port with mutual
 *                                              TLS like a conferencing server; a stream whose
 *                                              conference is "source" gets endless data, any
 *                                              other is a sink
 * A sink discards what arrives; a source writes 16 KiB blocks as fast as it may. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/map.h"
#include "common/mux.h"
#include "common/stream.h"
#include "common/tls.h"

static uint8_t block[CE_MUX_HDR + CE_MUX_DATA_MAX];

/* ---- plain TCP ---- */

struct tconn {
    struct stream *s;
    bool source;
};

/* Writes until the queue refuses (-ENOBUFS arms on_drain, which resumes); the kernel
 * takes several MiB first on loopback, hence the generous bound. */
static void t_fill(struct tconn *c)
{
    for (int i = 0; i < 1000000; i++)
        if (stream_write(c->s, block, CE_MUX_DATA_MAX) < 0)
            return;
}

static int t_data(struct stream *s, const uint8_t *d, size_t n, void *arg)
{
    return 0;
}
static void t_open(struct stream *s, void *arg)
{
    struct tconn *c = arg;
    if (c->source)
        t_fill(c);
}
static void t_drain(struct stream *s, void *arg)
{
    t_fill(arg);
}
static void t_close(struct stream *s, int err, const char *why, void *arg)
{
    free(arg);
}

static void t_accept(uv_stream_t *srv, int status, bool source)
{
    if (status < 0)
        return;
    struct tconn *c = calloc(1, sizeof *c);
    c->source = source;
    static const struct stream_cbs cbs = {t_data, t_open, t_drain, t_close};
    struct stream_opts o = {.write_cap = 1 << 20, .read_chunk = 65536};
    if (stream_accept(srv, &o, &cbs, c, &c->s) < 0)
        free(c);
}
static void on_sink(uv_stream_t *srv, int status)
{
    t_accept(srv, status, false);
}
static void on_source(uv_stream_t *srv, int status)
{
    t_accept(srv, status, true);
}

/* ---- mux (conferencing server) ---- */

struct mstream {
    uint32_t id;
    uint64_t credit;
    uint64_t owed; /* window not yet returned: sent in batches of a quarter window */
    bool source;
};

struct mlink {
    struct stream *s;
    struct buf in;
    struct ce_map *streams;
    uint64_t window;
    bool blocked;
};

static void m_pump(struct mlink *l, struct mstream *m)
{
    while (m->source && m->credit >= CE_MUX_DATA_RECORD && !l->blocked) {
        ce_mux_put_header(block, CE_MUX_DATA, m->id, CE_MUX_DATA_RECORD);
        int rc = stream_write(l->s, block, CE_MUX_HDR + CE_MUX_DATA_RECORD);
        if (rc == -ENOBUFS) {
            l->blocked = true;
            return;
        }
        if (rc < 0)
            return;
        m->credit -= CE_MUX_DATA_RECORD;
    }
}

static void pump_one(struct ce_map_entry *e, void *arg)
{
    m_pump(arg, e->val);
}

static void m_drain(struct stream *s, void *arg)
{
    struct mlink *l = arg;
    l->blocked = false;
    ce_map_foreach(l->streams, pump_one, l);
}

static void m_send(struct mlink *l, const uint8_t *f, size_t n)
{
    (void)stream_write(l->s, f, n);
}

static int m_frame(struct mlink *l, const struct ce_mux_frame *f)
{
    struct ce_map_entry *e = f->stream ? ce_map_find(l->streams, &f->stream, 4) : NULL;
    struct mstream *m = e ? e->val : NULL;
    uint8_t w[CE_MUX_HDR + 8];
    switch (f->type) {
    case CE_MUX_HELLO: {
        struct ce_mux_hello h;
        if (ce_mux_decode_hello(f->payload, &h) < 0)
            return -EPROTO;
        l->window = h.window;
        return 0;
    }
    case CE_MUX_OPEN: {
        struct ce_mux_open o;
        if (ce_mux_decode_open(f->payload, &o) < 0)
            return -EPROTO;
        m = calloc(1, sizeof *m);
        m->id = f->stream;
        m->credit = l->window;
        m->source = slice_eq_str(o.conf, "source");
        ce_map_get(l->streams, &m->id, 4)->val = m;
        m_pump(l, m);
        return 0;
    }
    case CE_MUX_DATA:
        if (!m)
            return 0;
        m->owed += f->payload.len;
        if (m->owed >= (1u << 20) / 4 &&
            ce_mux_encode_window(w, sizeof w, f->stream, (uint32_t)m->owed) > 0) {
            m_send(l, w, CE_MUX_HDR + 4);
            m->owed = 0;
        }
        return 0;
    case CE_MUX_WINDOW:
        if (m) {
            m->credit += ce_mux_window_increment(f);
            m_pump(l, m);
        }
        return 0;
    case CE_MUX_CLOSE:
        if (e) {
            free(m);
            ce_map_remove(l->streams, e);
        }
        return 0;
    case CE_MUX_PING:
        if (ce_mux_encode_ping(w, sizeof w, CE_MUX_PONG, ce_mux_ping_value(f)) > 0)
            m_send(l, w, sizeof w);
        return 0;
    default:
        return 0;
    }
}

static int m_frame_cb(void *arg, const struct ce_mux_frame *f)
{
    return m_frame(arg, f);
}

static int m_data(struct stream *s, const uint8_t *d, size_t n, void *arg)
{
    struct mlink *l = arg;
    return ce_mux_feed(&l->in, d, n, m_frame_cb, l, NULL);
}

static void m_open(struct stream *s, void *arg)
{
    uint8_t f[64];
    struct ce_mux_hello h = {CE_MUX_VERSION, 1u << 20, slice_str("ce_backend")};
    ssize_t n = ce_mux_encode_hello(f, sizeof f, &h);
    m_send(arg, f, (size_t)n);
}

static void m_close(struct stream *s, int err, const char *why, void *arg)
{
    fprintf(stderr, "ce_backend: link closed: %s\n", why ? why : "");
    exit(err ? 1 : 0);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    memset(block, 'x', sizeof block);
    uv_loop_t *loop = uv_default_loop();
    if (argc == 3 && !strcmp(argv[1], "tcp")) {
        static uv_tcp_t sink, source;
        struct addr a;
        if (addr_parse(&a, argv[2], 0) < 0)
            return 2;
        if (stream_listen(loop, &sink, &a, 1024, false, on_sink) < 0)
            return 1;
        addr_set_port(&a, addr_port(&a) + 1);
        if (stream_listen(loop, &source, &a, 1024, false, on_source) < 0)
            return 1;
    } else if (argc == 6 && !strcmp(argv[1], "mux")) {
        struct addr a;
        if (addr_parse(&a, argv[2], 0) < 0)
            return 2;
        struct tls_cert_opts cert = {argv[3], argv[4]};
        struct tls_opts o = {.certs = &cert, .ncerts = 1, .ca_file = argv[5], .verify_peer = true};
        struct tls_ctx *tls;
        char err[256];
        if (tls_ctx_create(&tls, &o, err, sizeof err) < 0) {
            fprintf(stderr, "ce_backend: %s\n", err);
            return 1;
        }
        static struct mlink l;
        buf_init(&l.in, 2 * CE_MUX_FRAME_MAX);
        ce_map_create(&l.streams);
        static const struct stream_cbs cbs = {m_data, m_open, m_drain, m_close};
        struct stream_opts so = {.tls = tls, .server_name = "conf-edge", .write_cap = 4 << 20};
        if (stream_connect(loop, &a, NULL, &so, &cbs, &l, &l.s) < 0)
            return 1;
    } else {
        fprintf(stderr, "usage: ce_backend tcp LISTEN | ce_backend mux EDGE_INT CERT KEY CA\n");
        return 2;
    }
    return uv_run(loop, UV_RUN_DEFAULT);
}
