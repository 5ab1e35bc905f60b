/* A TCP connection on libuv with optional TLS: the one place sockets meet tls_conn.
 *
 * Owns a uv_tcp_t, read and write buffers with caps, an idle timer and a handshake
 * timer. The user sees plaintext only: on_data with bytes, on_close once with the reason.
 * Backpressure: stream_write() queues up to write_cap bytes; when the queue passes it,
 * stream_write returns -ENOBUFS and on_drain is called once it falls below half.
 * -ENOBUFS means nothing was queued: keep the data and write it again from on_drain. A
 * write into an empty queue is always taken, however large. With TLS the queue counts
 * ciphertext, and writes before the handshake finishes wait in the TLS layer.
 * The peer's end of stream (FIN, or TLS close_notify) closes the stream with err 0 once
 * the write queue has drained.
 * ACME TLS-ALPN-01 (RFC 8737): a TLS stream whose handshake negotiated "acme-tls/1" (a
 * CA validating a challenge, tls_opts.acme) never opens: no on_open, no on_data; its last
 * flight and close_notify go out and on_close gets err 0 and "ACME TLS-ALPN-01 challenge
 * answered". This holds for every server TLS path (stream_accept, stream_start_tls). */
#ifndef COMMON_STREAM_H
#define COMMON_STREAM_H

#include "common/addr.h"
#include "common/tls.h"
#include "common/util.h"
#include <uv.h>

struct stream;
struct stream_gate;

struct stream_cbs {
    /* Plaintext arrived. Return 0 to go on, or a negative errno to close the stream.
     * The data is only valid during the call; consume it or copy it. */
    int (*on_data)(struct stream *s, const uint8_t *data, size_t len, void *arg);
    /* The TLS handshake finished (or immediately after connect/accept for plain TCP). */
    void (*on_open)(struct stream *s, void *arg);
    /* Write queue fell below half of write_cap after -ENOBUFS. */
    void (*on_drain)(struct stream *s, void *arg);
    /* The stream is closed: err 0 = peer closed cleanly, else a negative errno.
     * The stream is freed right after this returns. */
    void (*on_close)(struct stream *s, int err, const char *why, void *arg);
    /* Optional, plain TCP only: the peer half-closed (FIN). The stream stays open for
     * writing; answer, then stream_shutdown (the stream closes once both FINs are out) or
     * stream_close. Without it (and always with TLS, whose close_notify ends the
     * connection: RFC 5246 7.2.1) the peer's end closes the stream once writes drain. */
    void (*on_eof)(struct stream *s, void *arg);
};

struct stream_opts {
    struct tls_ctx *tls;           /* NULL = plain TCP; the stream takes a reference */
    const char *server_name;       /* client: SNI and name to verify */
    size_t read_chunk;             /* bytes per read (default 16 KiB) */
    size_t write_cap;              /* queued bytes before -ENOBUFS (default 256 KiB) */
    uint32_t handshake_timeout_ms; /* 0 = none */
    uint32_t idle_timeout_ms;      /* 0 = none; reset by any read or write */
    struct stream_gate *gate;      /* TLS: handshakes take turns through it (NULL = inline) */
    /* 0 = off. Writes gather up to this many bytes, else until the end of the loop turn (a
     * zero timer, which runs before the loop next polls, so nothing waits on I/O) or until
     * the write in flight completes. With TLS the plaintext gathers and is sealed in whole
     * records. A bulk relay sends full records in large writes, and a proxy answering many
     * messages per wakeup one write per turn, not a record, a syscall and a wakeup per
     * stream_write. Counted by stream_queued; stream_close tries once to send them. */
    size_t write_batch;
    /* Optional: the caller's buffer every read of its streams on this loop goes into (reads
     * run one at a time, and on_data's data is only valid during the call). Saves each
     * stream a read buffer of its own, and the malloc and free of one per read of a stream
     * that is not moving bulk data (a 16 KiB malloc also makes glibc consolidate its fast
     * bins each time). Must outlive the streams. read_scratch_len bytes are read at most. */
    uint8_t *read_scratch;
    size_t read_scratch_len;
};

/* A handshake gate spreads TLS handshake work over loop turns. A full handshake costs a few
 * milliseconds of ECDHE and ECDSA in mbedTLS; when many clients connect at once, running
 * every flight as it arrives holds the loop for the whole batch while established streams
 * wait with their requests already read. Through a gate, a turn spends at most budget_us
 * on handshakes; the rest wait in arrival order and run at the end of later turns, after
 * the I/O of established streams (uv_check), the loop polling without blocking meanwhile.
 * One gate per loop, shared by the streams given it in stream_opts; it holds no reference
 * on them. Returns 0 or -ENOMEM; *out is untouched on failure. */
int stream_gate_create(uv_loop_t *loop, uint32_t budget_us, struct stream_gate **out);
/* Frees the gate once its handles are closed. Every stream that uses it must have been
 * closed (stream_close) before. NULL is a no-op. */
void stream_gate_destroy(struct stream_gate *g);

/* Takes an accepted connection from server (uv_accept inside). With TLS, the first bytes
 * must start a ClientHello or the stream closes at once with -EPROTO ("not TLS").
 * -EMFILE when the connection's descriptor falls in the reserve below the open-file limit
 * (common/fdlimit.h): it is closed, and the caller logs and counts it.
 * On failure *out is untouched and on_close is never called. */
int stream_accept(uv_stream_t *server, const struct stream_opts *o, const struct stream_cbs *cb,
                  void *arg, struct stream **out);
/* Connects out to addr; on_open fires when connected (and handshaken), on_close on failure
 * (also connect errors: "connect failed: ..."). handshake_timeout_ms then also bounds the
 * TCP connect. A synchronous failure returns a negative errno with no callback. */
int stream_connect(uv_loop_t *loop, const struct addr *to, const struct addr *bind_from,
                   const struct stream_opts *o, const struct stream_cbs *cb, void *arg,
                   struct stream **out);

/* Copies data into the write queue (encrypting if TLS). */
int stream_write(struct stream *s, const void *data, size_t len);
/* Bytes queued for the socket (ciphertext with TLS), in flight or waiting. */
size_t stream_queued(const struct stream *s);
/* Backpressure: stop delivering on_data (and reading the socket) until read_start.
 * Plaintext already decrypted waits and is delivered from the loop after read_start; with
 * TLS the socket is read again only once that is done (the TLS input buffer stays bounded). */
void stream_read_stop(struct stream *s);
void stream_read_start(struct stream *s);
/* Half-close: flush, then shutdown(SHUT_WR) (TLS: close_notify first). */
void stream_shutdown(struct stream *s);
/* Closes (idempotent; the first err and why win); on_close runs later from the loop. With
 * err 0 an established TLS stream sends close_notify first (best effort: what the socket
 * takes now). Queued writes are dropped: use stream_shutdown for a graceful end. */
void stream_close(struct stream *s, int err, const char *why);

/* Turns an open plain stream into a TLS one (server ctx: accept; client ctx: connect with
 * server_name). prefix holds bytes already received that belong to TLS (e.g. the data
 * passed to on_data that tls_looks_like_client_hello() recognised); they are copied.
 * Callable from on_data (processing resumes when it returns). on_open fires again once
 * the handshake is done. -EBUSY if writes are still queued, -EALREADY if already TLS. */
int stream_start_tls(struct stream *s, struct tls_ctx *ctx, const char *server_name,
                     const uint8_t *prefix, size_t len);

/* Addresses of the two ends (valid for the stream's life; local is set once connected). */
const struct addr *stream_peer(const struct stream *s);
const struct addr *stream_local(const struct stream *s);
struct tls_conn *stream_tls(struct stream *s); /* NULL for plain TCP */
/* Changes the idle timeout (0 = none) and restarts it, e.g. after an upgrade to WebSocket
 * or once a SIP flow has registered with its keep-alive period. */
void stream_set_idle_timeout(struct stream *s, uint32_t ms);
uv_loop_t *stream_loop(const struct stream *s);

/* Binds and listens on addr (SO_REUSEADDR; SO_REUSEPORT if asked, so N worker loops can
 * each own a listener on the same port; IPv6 addresses are v6-only). backlog <= 0 means
 * 511. On failure (negative errno, e.g. -EADDRINUSE) server was not initialised, except if
 * uv_listen itself fails: then it is being closed and must stay valid for one loop turn.
 * The caller owns server and uv_close()s it. */
int stream_listen(uv_loop_t *loop, uv_tcp_t *server, const struct addr *addr, int backlog,
                  bool reuseport, uv_connection_cb on_conn);

#endif
