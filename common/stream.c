/* A TCP connection on libuv with optional TLS: reads feed tls_conn, plaintext goes to
 * on_data, writes are encrypted and batched into uv_write with a capped queue. */
#include "common/stream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/acme_challenges.h"
#include "common/fdlimit.h"

#define STREAM_READ_CHUNK 16384
#define STREAM_READ_MAX (256 * 1024)
/* A TLS read goes whole into the TLS input buffer, which takes a few records at most. */
#define STREAM_TLS_READ_MAX 65536
#define STREAM_WRITE_CAP (256 * 1024)
#define STREAM_PLAIN_CHUNK 16384
#define STREAM_TLS_RECORD 16384 /* the most plaintext one TLS record carries */
#define STREAM_ACME_WHY "ACME TLS-ALPN-01 challenge answered"

/* One uv_write in flight: the bytes stay here until write_cb. */
struct stream_wreq {
    uv_write_t req;
    size_t len;
    uint8_t data[];
};

struct stream {
    uv_tcp_t tcp;
    uv_timer_t idle;
    /* Before on_open: handshake/connect timeout. After: a zero-delay kick that resumes
     * delivery of plaintext left in the TLS buffers when reading was stopped. */
    uv_timer_t kick;
    uv_loop_t *loop;
    struct tls_conn *tls;
    struct stream_cbs cb;
    void *arg;
    size_t read_chunk, write_cap;
    size_t write_batch; /* writes gathered up to this, or to the end of the turn (0 = off) */
    uint32_t hs_timeout_ms, idle_timeout_ms;
    uint8_t *rbuf;    /* between alloc_cb and read_cb; kept while reads fill it */
    uint8_t *scratch; /* stream_opts.read_scratch: reads go there, rbuf stays NULL */
    size_t scratch_len;
    size_t rsize;       /* size of the next read: grows up to read_chunk while reads fill it */
    struct byteq plain; /* plain TCP bytes not yet handed to libuv */
    struct byteq batch; /* TLS with write_batch: plaintext not yet sealed into records */
    struct stream_wreq *inflight;
    struct addr peer, local;
    struct stream_gate *gate;
    struct dlist glink; /* in the gate's queue (next != NULL) */
    int open_handles;
    bool connected; /* the socket can be written */
    bool opened;
    bool closing;
    bool silent;  /* constructor failed: free without on_close */
    bool reading; /* the user wants data */
    bool want_drain;
    bool want_shutdown;
    bool shut_sent;
    bool eof;       /* peer finished: close once the write queue is empty */
    bool half_open; /* plain TCP with on_eof: the user writes on after the peer's FIN */
    bool shut_done; /* our FIN is out */
    bool in_process;
    bool in_read;  /* inside on_read: a TLS start waits for the user's on_data to return */
    bool accepted; /* server side: the first bytes must start a TLS ClientHello */
    bool seen_bytes;
    bool reading_now; /* inside on_read: rbuf is in use */
    bool acme;        /* an ACME TLS-ALPN-01 validation: ends once its handshake is out */
    bool resume;      /* the kick resumes reading (else it only seals and sends the batch) */
    int close_err;
    char *close_why; /* allocated when closing */
};

static void stream_process(struct stream *s);
static void stream_flush(struct stream *s);
static void send_sealed(struct stream *s);

/* ---- handshake gate ---- */

struct stream_gate {
    uv_idle_t idle;   /* active while streams wait: the next poll must not block */
    uv_check_t check; /* end of each turn: run waiting handshakes, then a new budget */
    uint64_t budget_ns, spent_ns;
    struct dlist waiting; /* streams by arrival, through their glink */
    int open_handles;
};

static bool gate_waiting(const struct stream_gate *g)
{
    return !dl_empty(&g->waiting);
}

static void gate_unlink(struct stream *s)
{
    if (!s->glink.next)
        return;
    dl_del(&s->glink);
    if (!gate_waiting(s->gate))
        uv_idle_stop(&s->gate->idle);
}

static void gate_noop(uv_idle_t *h)
{
    (void)h;
}

static int start_reading(struct stream *s);

/* A waiting stream stops reading its socket: a TLS 1.3 client sends data right after its
 * Finished, and that must wait in the socket, not overflow the TLS input buffer. */
static void gate_enqueue(struct stream *s)
{
    struct stream_gate *g = s->gate;
    if (s->glink.next)
        return;
    dl_add(g->waiting.prev, &s->glink);
    uv_idle_start(&g->idle, gate_noop);
    uv_read_stop((uv_stream_t *)&s->tcp);
}

/* Handshake work for s now, charged to this turn's budget. */
static void gate_run(struct stream *s)
{
    struct stream_gate *g = s->gate;
    uint64_t t0 = uv_hrtime();
    stream_process(s);
    g->spent_ns += uv_hrtime() - t0;
    if (!s->closing && !s->eof && (!s->opened || s->reading) && start_reading(s) < 0)
        stream_close(s, -EIO, "cannot read");
}

static void gate_on_check(uv_check_t *h)
{
    struct stream_gate *g = container_of(h, struct stream_gate, check);
    /* At least one per turn, so a budget the inline work used up still lets the queue move. */
    bool first = true;
    while (gate_waiting(g) && (first || g->spent_ns < g->budget_ns)) {
        first = false;
        struct stream *s = container_of(g->waiting.next, struct stream, glink);
        gate_unlink(s);
        gate_run(s);
    }
    g->spent_ns = 0;
}

int stream_gate_create(uv_loop_t *loop, uint32_t budget_us, struct stream_gate **out)
{
    if (!loop || !out)
        return -EINVAL;
    struct stream_gate *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->budget_ns = (uint64_t)budget_us * 1000;
    dl_init(&g->waiting);
    uv_idle_init(loop, &g->idle);
    uv_check_init(loop, &g->check);
    g->open_handles = 2;
    /* Neither handle keeps the loop alive: the streams' sockets do. */
    uv_unref((uv_handle_t *)&g->idle);
    uv_unref((uv_handle_t *)&g->check);
    uv_check_start(&g->check, gate_on_check);
    *out = g;
    return 0;
}

static void gate_on_closed(uv_handle_t *h)
{
    struct stream_gate *g = h->data;
    if (--g->open_handles == 0)
        free(g);
}

void stream_gate_destroy(struct stream_gate *g)
{
    if (!g)
        return;
    while (gate_waiting(g))
        gate_unlink(container_of(g->waiting.next, struct stream, glink));
    g->idle.data = g->check.data = g;
    uv_close((uv_handle_t *)&g->idle, gate_on_closed);
    uv_close((uv_handle_t *)&g->check, gate_on_closed);
}

/* Bytes waiting to go to the socket, from the TLS buffer or the plain queue. */
static size_t out_pending(const struct stream *s, const uint8_t **p)
{
    if (s->tls)
        return tls_conn_pending(s->tls, p);
    *p = s->plain.data + s->plain.rd;
    return byteq_len(&s->plain);
}

static void out_consume(struct stream *s, size_t n)
{
    if (s->tls)
        tls_conn_consume(s->tls, n);
    else
        byteq_consume(&s->plain, n);
}

/* Encrypts the gathered plaintext (write_batch); with whole_records, only a multiple of the
 * largest record, so a batch cut at its threshold does not end in a tiny record. */
static int seal_batch(struct stream *s, bool whole_records)
{
    size_t n = byteq_len(&s->batch);
    if (whole_records)
        n -= n % STREAM_TLS_RECORD;
    if (!s->tls || n == 0)
        return 0;
    ssize_t w = tls_conn_write(s->tls, s->batch.data + s->batch.rd, n);
    byteq_consume(&s->batch, n);
    if (w < 0) {
        stream_close(s, (int)w, tls_conn_error(s->tls));
        return (int)w;
    }
    return 0;
}

/* ---- close ---- */

static void on_handle_closed(uv_handle_t *h)
{
    struct stream *s = h->data;
    if (--s->open_handles > 0)
        return;
    if (!s->silent && s->cb.on_close)
        s->cb.on_close(s, s->close_err, s->close_why, s->arg);
    tls_conn_destroy(s->tls);
    byteq_free(&s->plain);
    byteq_free(&s->batch);
    free(s->rbuf);
    free(s->close_why);
    free(s);
}

void stream_close(struct stream *s, int err, const char *why)
{
    if (!s || s->closing)
        return;
    s->closing = true;
    gate_unlink(s);
    s->close_err = err;
    if (why || err)
        s->close_why = strdup(why ? why : uv_strerror(err));
    /* Writes gathered for the end of this turn (write_batch) would have been out by now,
     * whatever the close's reason (a refusal, then the close): sealed here (seal_batch would
     * close). A clean close of an established TLS stream says so (close_notify). */
    if (s->tls && s->opened) {
        if (byteq_len(&s->batch))
            tls_conn_write(s->tls, s->batch.data + s->batch.rd, byteq_len(&s->batch));
        if (err == 0)
            tls_conn_close_notify(s->tls);
    }
    /* Those writes, and a TLS alert explaining a failure, are worth one non-blocking
     * attempt. */
    if ((s->tls || s->write_batch) && !s->inflight && s->connected) {
        const uint8_t *p;
        size_t n = out_pending(s, &p);
        if (n && uv_is_writable((uv_stream_t *)&s->tcp)) {
            uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
            uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
        }
    }
    uv_close((uv_handle_t *)&s->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&s->idle, on_handle_closed);
    uv_close((uv_handle_t *)&s->kick, on_handle_closed);
}

/* ---- timers ---- */

static void on_idle_timeout(uv_timer_t *t)
{
    struct stream *s = t->data;
    stream_close(s, -ETIMEDOUT, "idle timeout");
}

static void on_kick(uv_timer_t *t)
{
    struct stream *s = t->data;
    if (!s->opened) {
        stream_close(s, -ETIMEDOUT, s->tls ? "TLS handshake timeout" : "connect timeout");
        return;
    }
    /* A batch waiting for the end of the turn goes out now (stream_process flushes too). */
    if (!s->reading || !s->resume) {
        stream_flush(s);
        return;
    }
    s->resume = false;
    stream_process(s);
    /* Resumed TLS reading: the socket is read again only now that what the pause left in
     * the TLS input buffer is delivered, so a large read cannot overflow it. */
    if (s->reading && !s->closing && !s->eof && s->connected && start_reading(s) < 0)
        stream_close(s, -EIO, "cannot read");
}

static void touch(struct stream *s)
{
    if (s->idle_timeout_ms && !s->closing)
        uv_timer_start(&s->idle, on_idle_timeout, s->idle_timeout_ms, 0);
}

/* ---- writing ---- */

static void maybe_drain(struct stream *s)
{
    if (s->want_drain && !s->closing && stream_queued(s) < s->write_cap / 2) {
        s->want_drain = false;
        if (s->cb.on_drain)
            s->cb.on_drain(s, s->arg);
    }
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct stream *s = req->data;
    free(req);
    if (status < 0 && status != UV_ECANCELED) {
        stream_close(s, status, "shutdown failed");
        return;
    }
    s->shut_done = true;
    if (s->eof && !s->closing)
        stream_close(s, 0, "closed by both ends");
}

static void maybe_finish(struct stream *s)
{
    if (s->closing || s->inflight)
        return;
    const uint8_t *p;
    if (out_pending(s, &p) || byteq_len(&s->batch))
        return;
    if (s->acme) { /* the handshake and close_notify are out */
        stream_close(s, 0, STREAM_ACME_WHY);
        return;
    }
    if (s->want_shutdown && !s->shut_sent && s->opened) {
        s->shut_sent = true;
        uv_shutdown_t *req = malloc(sizeof *req);
        int rc = req ? 0 : -ENOMEM;
        if (req) {
            req->data = s;
            rc = uv_shutdown(req, (uv_stream_t *)&s->tcp, on_shutdown);
            if (rc < 0)
                free(req);
        }
        if (rc < 0)
            stream_close(s, rc, "shutdown failed");
    }
    if (s->eof && !s->closing && !s->half_open)
        stream_close(s, 0, s->shut_done ? "closed by both ends" : "peer closed");
}

static void on_write(uv_write_t *req, int status)
{
    struct stream_wreq *w = container_of(req, struct stream_wreq, req);
    struct stream *s = req->data;
    s->inflight = NULL;
    free(w);
    if (s->closing)
        return;
    if (status < 0) {
        stream_close(s, status, "write failed");
        return;
    }
    stream_flush(s);
    maybe_drain(s);
}

/* Sends what is pending: straight to the socket if it takes it, the rest in one uv_write.
 * While a write is in flight, new ciphertext collects in the TLS buffer and goes out as
 * one batch when it completes. */
static void send_sealed(struct stream *s)
{
    if (s->closing || s->inflight || !s->connected)
        return;
    const uint8_t *p;
    size_t n = out_pending(s, &p);
    if (n == 0) {
        maybe_finish(s);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int w = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
    if (w < 0 && w != UV_EAGAIN && w != UV_ENOSYS) {
        stream_close(s, w, "write failed");
        return;
    }
    if (w > 0) {
        out_consume(s, (size_t)w);
        touch(s);
        n = out_pending(s, &p);
        if (n == 0) {
            maybe_finish(s);
            return;
        }
    }
    struct stream_wreq *wr = malloc(sizeof *wr + n);
    if (!wr) {
        stream_close(s, -ENOMEM, "out of memory");
        return;
    }
    memcpy(wr->data, p, n);
    wr->len = n;
    wr->req.data = s;
    out_consume(s, n);
    b = uv_buf_init((char *)wr->data, (unsigned)n);
    int rc = uv_write(&wr->req, (uv_stream_t *)&s->tcp, &b, 1, on_write);
    if (rc < 0) {
        free(wr);
        stream_close(s, rc, "write failed");
        return;
    }
    s->inflight = wr;
    touch(s);
}

/* Seals the whole batch (write_batch), then sends. */
static void stream_flush(struct stream *s)
{
    if (!s->closing && seal_batch(s, false) == 0)
        send_sealed(s);
}

size_t stream_queued(const struct stream *s)
{
    if (!s)
        return 0;
    const uint8_t *p;
    return (s->inflight ? s->inflight->len : 0) + out_pending(s, &p) + byteq_len(&s->batch);
}

int stream_write(struct stream *s, const void *data, size_t len)
{
    if (!s || (!data && len))
        return -EINVAL;
    if (s->closing || s->want_shutdown)
        return -EPIPE;
    if (len == 0)
        return 0;
    size_t q = stream_queued(s);
    if (q > 0 && q + len > s->write_cap) {
        s->want_drain = true;
        return -ENOBUFS;
    }
    if (s->tls && s->write_batch && s->opened) {
        /* Gathered, then sealed in whole records: once a batch's worth is here, or at the
         * end of this loop turn (the kick), or when the write in flight completes. */
        /* Bulk: room for the whole batch at once, not a doubling per record; small
         * messages (SIP) let the queue grow as usual. */
        if (!s->batch.data && len >= STREAM_TLS_RECORD &&
            byteq_reserve(&s->batch, s->write_batch + STREAM_TLS_RECORD, 0))
            return -ENOMEM;
        if (byteq_append(&s->batch, data, len, 0) < 0)
            return -ENOMEM;
        if (byteq_len(&s->batch) >= s->write_batch && seal_batch(s, true) < 0)
            return -EPIPE;
        /* The rest of a record waits for more, at most until the end of this turn. */
        if (byteq_len(&s->batch) && !uv_is_active((uv_handle_t *)&s->kick))
            uv_timer_start(&s->kick, on_kick, 0, 0);
        send_sealed(s);
        return 0;
    } else if (s->tls) {
        ssize_t w = tls_conn_write(s->tls, data, len);
        if (w < 0) {
            stream_close(s, (int)w, tls_conn_error(s->tls));
            return (int)w;
        }
    } else {
        /* Plain TCP with nothing queued: hand the bytes to the socket first, so the common
         * case costs one write(2) and no copy or allocation (the proxy's hot path). With
         * write_batch the bytes gather instead and leave together at the end of the turn. */
        bool gather = s->write_batch && s->opened;
        if (q == 0 && s->connected && !gather) {
            uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
            int w = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
            if (w < 0 && w != UV_EAGAIN && w != UV_ENOSYS) {
                stream_close(s, w, "write failed");
                return w;
            }
            if (w > 0) {
                touch(s);
                data = (const uint8_t *)data + w;
                len -= (size_t)w;
                if (len == 0)
                    return 0;
            }
        }
        if (byteq_append(&s->plain, data, len, 0) < 0)
            return -ENOMEM;
        if (gather && byteq_len(&s->plain) < s->write_batch) {
            if (!uv_is_active((uv_handle_t *)&s->kick))
                uv_timer_start(&s->kick, on_kick, 0, 0);
            return 0;
        }
    }
    stream_flush(s);
    return 0;
}

void stream_shutdown(struct stream *s)
{
    if (!s || s->closing || s->want_shutdown)
        return;
    s->want_shutdown = true;
    if (s->tls && seal_batch(s, false) < 0)
        return;
    if (s->tls)
        tls_conn_close_notify(s->tls);
    stream_flush(s);
}

/* ---- reading ---- */

static void open_now(struct stream *s)
{
    s->opened = true;
    uv_timer_stop(&s->kick);
    if (s->want_shutdown && s->tls)
        tls_conn_close_notify(s->tls);
    if (s->cb.on_open)
        s->cb.on_open(s, s->arg);
}

static bool is_acme(const char *alpn)
{
    return alpn && strcmp(alpn, ACME_ALPN_PROTOCOL) == 0;
}

/* Runs the TLS engine over buffered input and delivers plaintext while the user reads. */
static void stream_process(struct stream *s)
{
    uint8_t pt[16384];
    if (s->in_process || s->acme)
        return;
    s->in_process = true;
    while (!s->closing) {
        bool was_done = tls_conn_handshake_done(s->tls);
        if (was_done && !s->reading) {
            /* Paused during the handshake: stop the socket too, now that it is done. */
            uv_read_stop((uv_stream_t *)&s->tcp);
            break;
        }
        /* Paused: finish the handshake but leave data (TLS 1.3 sends it with the client's
         * Finished) in the TLS buffers until reading resumes. */
        ssize_t n = tls_conn_read(s->tls, pt, s->reading ? sizeof pt : 0);
        if (!was_done && tls_conn_handshake_done(s->tls) && !s->opened &&
            is_acme(tls_conn_alpn(s->tls))) {
            /* RFC 8737 3: the validation is the handshake itself. The user never sees the
             * connection (no on_open, no data); on_close says why with err 0. */
            s->acme = true;
            tls_conn_close_notify(s->tls);
            break; /* flushed below, then closed by maybe_finish */
        }
        if (!was_done && tls_conn_handshake_done(s->tls) && !s->opened) {
            stream_flush(s); /* Finished goes out before any reply the user writes */
            open_now(s);
            if (s->closing)
                break;
        }
        if (n > 0) {
            int rc = s->cb.on_data ? s->cb.on_data(s, pt, (size_t)n, s->arg) : 0;
            if (rc < 0)
                stream_close(s, rc, "closed by handler");
            continue;
        }
        if (n == -EAGAIN)
            break;
        if (n == 0) {
            s->eof = true;
            uv_read_stop((uv_stream_t *)&s->tcp);
            break;
        }
        const char *e = tls_conn_error(s->tls);
        stream_flush(s); /* the alert that tells the peer why */
        stream_close(s, (int)n, e ? e : "TLS failure");
        break;
    }
    s->in_process = false;
    if (!s->closing) {
        stream_flush(s);
        maybe_finish(s);
    }
}

/* Idle connections hold no read buffer: it goes after a read that did not fill it. A
 * stream whose reads fill the buffer is moving bulk data: it keeps the buffer for the next
 * read and doubles it up to read_chunk, so large reads cost neither a malloc and free each
 * (which glibc may serve by mmap or by growing and trimming the heap, at 256 KiB) nor more
 * syscalls and wakeups than needed. */
static void read_done(struct stream *s, ssize_t n)
{
    if (s->scratch)
        return;
    size_t base = s->read_chunk < STREAM_READ_CHUNK ? s->read_chunk : STREAM_READ_CHUNK;
    size_t got = n > 0 ? (size_t)n : 0;
    /* Bulk: the read took a good part of the buffer. A full one doubles the next; a reader
     * paused by backpressure keeps its size for when it resumes, but not the memory. */
    bool bulk = got >= s->rsize / 4 && got >= base;
    size_t next = !bulk                          ? base
                  : got < s->rsize               ? s->rsize
                  : s->rsize * 2 < s->read_chunk ? s->rsize * 2
                                                 : s->read_chunk;
    if (bulk && next == s->rsize && !s->closing && s->reading)
        return;
    free(s->rbuf);
    s->rbuf = NULL;
    s->rsize = next;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out)
{
    struct stream *s = h->data;
    if (s->scratch) {
        *out = uv_buf_init((char *)s->scratch, (unsigned)s->scratch_len);
        return;
    }
    if (!s->rbuf)
        s->rbuf = malloc(s->rsize);
    *out = uv_buf_init((char *)s->rbuf, s->rbuf ? (unsigned)s->rsize : 0);
}

static void on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b)
{
    struct stream *s = h->data;
    s->reading_now = true;
    if (n == 0 || s->closing)
        goto out;
    if (n < 0) {
        if (n == UV_EOF) {
            s->eof = true;
            uv_read_stop(h);
            if (s->acme) {
                stream_close(s, 0, STREAM_ACME_WHY);
            } else if (!s->opened) {
                stream_close(s, -ECONNRESET, "peer closed during the handshake");
            } else if (!s->tls && s->cb.on_eof) {
                /* TCP half-close: the user answers, then shuts down or closes. */
                s->half_open = !s->shut_done;
                s->cb.on_eof(s, s->arg);
                if (!s->closing && s->shut_done)
                    stream_close(s, 0, "closed by both ends");
            } else {
                maybe_finish(s);
            }
        } else {
            stream_close(s, (int)n, NULL);
        }
        goto out;
    }
    touch(s);
    if (!s->tls) {
        s->in_read = true;
        int rc = s->cb.on_data ? s->cb.on_data(s, (const uint8_t *)b->base, (size_t)n, s->arg) : 0;
        s->in_read = false;
        if (rc < 0)
            stream_close(s, rc, "closed by handler");
        else if (s->tls) /* stream_start_tls() was called from on_data */
            stream_process(s);
        goto out;
    }
    /* A server checks the very first bytes itself: a plaintext client (HTTP, a PSOM
     * preamble sent in clear) is closed at once and reported as "not TLS", where mbedTLS
     * would wait for a whole record header or report a bad ClientHello. */
    if (s->accepted && !s->seen_bytes) {
        s->seen_bytes = true;
        if (!tls_looks_like_client_hello((const uint8_t *)b->base, (size_t)n)) {
            stream_close(s, -EPROTO, "not TLS: the first bytes are not a ClientHello");
            goto out;
        }
    }
    if (s->acme) /* whatever the validator sends after its handshake goes nowhere */
        goto out;
    int rc = tls_conn_feed(s->tls, (const uint8_t *)b->base, (size_t)n);
    if (rc < 0) {
        stream_close(s, -ENOBUFS, "TLS input buffer overflow");
        goto out;
    }
    if (s->gate && !s->opened) {
        /* Behind other handshakes, or this turn has had its share: wait for the check. */
        if (gate_waiting(s->gate) || s->gate->spent_ns >= s->gate->budget_ns)
            gate_enqueue(s);
        else
            gate_run(s);
        goto out;
    }
    stream_process(s);
out:
    s->reading_now = false;
    read_done(s, n);
}

static int start_reading(struct stream *s)
{
    int rc = uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read);
    return rc == UV_EALREADY ? 0 : rc;
}

void stream_read_stop(struct stream *s)
{
    if (!s || s->closing || !s->reading)
        return;
    s->reading = false;
    /* During the handshake the TLS engine must keep reading; data waits in its buffers. */
    if (!s->tls || s->opened)
        uv_read_stop((uv_stream_t *)&s->tcp);
    if (!s->reading_now) { /* a bulk reader's kept buffer; inside on_read, read_done does it */
        free(s->rbuf);
        s->rbuf = NULL;
    }
}

void stream_read_start(struct stream *s)
{
    if (!s || s->closing || s->reading)
        return;
    s->reading = true;
    /* Plaintext may be waiting in the TLS buffers: deliver it from the loop, not from
     * inside the caller; the kick reads the socket again once they are drained. */
    if (s->tls && s->opened) {
        s->resume = true;
        uv_timer_start(&s->kick, on_kick, 0, 0);
        return;
    }
    /* Before connect completes there is no socket to read yet: on_connect starts it. */
    if (s->connected && !s->eof && start_reading(s) < 0)
        stream_close(s, -EIO, "cannot read");
}

/* ---- setup ---- */

static int stream_new(uv_loop_t *loop, const struct stream_opts *o, const struct stream_cbs *cb,
                      void *arg, struct stream **out, const char *server_name)
{
    struct stream *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    if (cb)
        s->cb = *cb;
    s->arg = arg;
    s->read_chunk = o && o->read_chunk ? o->read_chunk : STREAM_READ_CHUNK;
    if (s->read_chunk > STREAM_READ_MAX)
        s->read_chunk = STREAM_READ_MAX;
    if (o && o->tls && s->read_chunk > STREAM_TLS_READ_MAX)
        s->read_chunk = STREAM_TLS_READ_MAX;
    s->rsize = s->read_chunk < STREAM_READ_CHUNK ? s->read_chunk : STREAM_READ_CHUNK;
    s->write_cap = o && o->write_cap ? o->write_cap : STREAM_WRITE_CAP;
    s->write_batch = o ? o->write_batch : 0;
    s->hs_timeout_ms = o ? o->handshake_timeout_ms : 0;
    s->idle_timeout_ms = o ? o->idle_timeout_ms : 0;
    s->gate = o && o->tls ? o->gate : NULL;
    if (o && o->read_scratch && o->read_scratch_len) {
        s->scratch = o->read_scratch;
        s->scratch_len = o->read_scratch_len;
    }
    s->reading = true;
    if (o && o->tls) {
        int rc = tls_conn_create(&s->tls, o->tls, server_name);
        if (rc < 0) {
            free(s);
            return rc;
        }
        if (!s->hs_timeout_ms)
            s->hs_timeout_ms = tls_ctx_handshake_timeout(o->tls);
    }
    uv_tcp_init(loop, &s->tcp);
    uv_timer_init(loop, &s->idle);
    uv_timer_init(loop, &s->kick);
    s->tcp.data = s->idle.data = s->kick.data = s;
    s->open_handles = 3;
    *out = s;
    return 0;
}

/* Frees a stream whose constructor failed, without calling on_close. */
static void stream_abort(struct stream *s, int err)
{
    s->silent = true;
    stream_close(s, err, NULL);
}

static void start_timers(struct stream *s)
{
    if (s->hs_timeout_ms)
        uv_timer_start(&s->kick, on_kick, s->hs_timeout_ms, 0);
    touch(s);
}

static void fill_addrs(struct stream *s)
{
    int len = sizeof s->peer.u.ss;
    uv_tcp_getpeername(&s->tcp, &s->peer.u.sa, &len);
    len = sizeof s->local.u.ss;
    uv_tcp_getsockname(&s->tcp, &s->local.u.sa, &len);
}

int stream_accept(uv_stream_t *server, const struct stream_opts *o, const struct stream_cbs *cb,
                  void *arg, struct stream **out)
{
    if (!server || !out || (o && o->tls && !tls_ctx_is_server(o->tls)))
        return -EINVAL;
    struct stream *s;
    int rc = stream_new(server->loop, o, cb, arg, &s, NULL);
    if (rc < 0)
        return rc;
    rc = uv_accept(server, (uv_stream_t *)&s->tcp);
    uv_os_fd_t fd;
    if (rc == 0 && uv_fileno((uv_handle_t *)&s->tcp, &fd) == 0 && fdlimit_in_reserve(fd))
        rc = -EMFILE;
    if (rc == 0)
        rc = start_reading(s);
    if (rc < 0) {
        stream_abort(s, rc);
        return rc;
    }
    uv_tcp_nodelay(&s->tcp, 1);
    fill_addrs(s);
    s->connected = true;
    s->accepted = true;
    *out = s;
    if (!s->tls) {
        touch(s);
        open_now(s);
    } else {
        start_timers(s);
    }
    return 0;
}

static void on_connect(uv_connect_t *req, int status)
{
    struct stream *s = req->data;
    free(req);
    if (s->closing)
        return;
    if (status < 0) {
        char why[128];
        snprintf(why, sizeof why, "connect failed: %s", uv_strerror(status));
        stream_close(s, status, why);
        return;
    }
    uv_tcp_nodelay(&s->tcp, 1);
    fill_addrs(s);
    s->connected = true;
    /* TLS reads for its handshake even if the user paused; plain TCP honours the pause. */
    int rc = s->reading || s->tls ? start_reading(s) : 0;
    if (rc < 0) {
        stream_close(s, rc, "cannot read");
        return;
    }
    touch(s);
    if (!s->tls) {
        open_now(s);
        if (!s->closing)
            stream_flush(s);
        return;
    }
    /* The ClientHello is already in the TLS buffer; send it. */
    stream_flush(s);
}

int stream_connect(uv_loop_t *loop, const struct addr *to, const struct addr *bind_from,
                   const struct stream_opts *o, const struct stream_cbs *cb, void *arg,
                   struct stream **out)
{
    if (!loop || !to || !out || (o && o->tls && tls_ctx_is_server(o->tls)))
        return -EINVAL;
    struct stream *s;
    int rc = stream_new(loop, o, cb, arg, &s, o ? o->server_name : NULL);
    if (rc < 0)
        return rc;
    if (bind_from)
        rc = uv_tcp_bind(&s->tcp, &bind_from->u.sa, 0);
    uv_connect_t *req = NULL;
    if (rc == 0 && !(req = malloc(sizeof *req)))
        rc = -ENOMEM;
    if (rc == 0) {
        req->data = s;
        rc = uv_tcp_connect(req, &s->tcp, &to->u.sa, on_connect);
        if (rc < 0)
            free(req);
    }
    if (rc < 0) {
        stream_abort(s, rc);
        return rc;
    }
    s->peer = *to;
    start_timers(s);
    *out = s;
    return 0;
}

int stream_start_tls(struct stream *s, struct tls_ctx *ctx, const char *server_name,
                     const uint8_t *prefix, size_t len)
{
    if (!s || !ctx || (!prefix && len))
        return -EINVAL;
    if (s->closing)
        return -EPIPE;
    if (s->tls || !s->opened)
        return -EALREADY;
    if (stream_queued(s) > 0 || s->want_shutdown || s->eof)
        return -EBUSY;
    struct tls_conn *t;
    int rc = tls_conn_create(&t, ctx, server_name);
    if (rc < 0)
        return rc;
    if (len && (rc = tls_conn_feed(t, prefix, len)) < 0) {
        tls_conn_destroy(t);
        return rc;
    }
    byteq_free(&s->plain);
    s->tls = t;
    s->seen_bytes = true; /* the caller sniffed the first bytes and chose TLS */
    s->opened = false;    /* on_open fires again when the handshake is done */
    uint32_t to = s->hs_timeout_ms ? s->hs_timeout_ms : tls_ctx_handshake_timeout(ctx);
    if (to)
        uv_timer_start(&s->kick, on_kick, to, 0);
    /* From on_data, the bytes are processed once it returns; otherwise now. */
    if (!s->in_read)
        stream_process(s);
    return 0;
}

const struct addr *stream_peer(const struct stream *s)
{
    return s ? &s->peer : NULL;
}

const struct addr *stream_local(const struct stream *s)
{
    return s ? &s->local : NULL;
}

struct tls_conn *stream_tls(struct stream *s)
{
    return s ? s->tls : NULL;
}

void stream_set_idle_timeout(struct stream *s, uint32_t ms)
{
    if (!s || s->closing)
        return;
    s->idle_timeout_ms = ms;
    if (ms)
        touch(s);
    else
        uv_timer_stop(&s->idle);
}

uv_loop_t *stream_loop(const struct stream *s)
{
    return s ? s->loop : NULL;
}

int stream_listen(uv_loop_t *loop, uv_tcp_t *server, const struct addr *addr, int backlog,
                  bool reuseport, uv_connection_cb on_conn)
{
    if (!loop || !server || !addr || !on_conn)
        return -EINVAL;
    int fam = addr->u.sa.sa_family;
    /* The socket is bound and listening before libuv sees it, so a failure leaves no
     * handle to close. */
    int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1, rc = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        rc = -errno;
    if (rc == 0 && reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        rc = -errno;
    if (rc == 0 && fam == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one))
        rc = -errno;
    if (rc == 0 && bind(fd, &addr->u.sa, addr_len(addr)) < 0)
        rc = -errno;
    if (rc == 0 && listen(fd, backlog > 0 ? backlog : 511) < 0)
        rc = -errno;
    if (rc < 0) {
        close(fd);
        return rc;
    }
    uv_tcp_init(loop, server);
    rc = uv_tcp_open(server, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)server, backlog > 0 ? backlog : 511, on_conn);
    if (rc < 0) {
        /* The handle must stay valid until this close completes (documented). */
        uv_close((uv_handle_t *)server, NULL);
        return rc;
    }
    return 0;
}
