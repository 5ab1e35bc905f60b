/* RFC 6062 TCP relays on the event loop: a TCP allocation's relayed listening socket, its
 * peer connections (opened by Connect, or accepted and announced by ConnectionAttempt), the
 * connection ids waiting 30 s for a ConnectionBind, and the byte pipe between a bound client
 * data connection and its peer, with backpressure and the allocation's bandwidth caps. The
 * STUN side (checks and answers) is turn.c's; this module moves bytes and keeps the state. */
#ifndef AV_TCP_RELAY_H
#define AV_TCP_RELAY_H

#include <uv.h>

#include "av-edge/turn.h"
#include "common/log.h"
#include "common/stream.h"

/* How long a peer connection waits for its ConnectionBind (RFC 6062 5.2, 5.3), and how long
 * the server tries to reach a peer before answering 447. */
#define AV_TCP_BIND_TIMEOUT_MS 30000
#define AV_TCP_CONNECT_TIMEOUT_MS 30000
/* Peer connections per allocation (Connect beyond: 508; incoming beyond: refused). */
#define AV_TCP_MAX_CONNS 64

struct av_tcp_relay; /* one per worker */
struct av_tcp_port;  /* a TCP allocation's relayed listener: its a->relay[i].handle */
struct av_tcp_conn;  /* one peer connection */

/* Per-worker counters, folded into /metrics by the worker. */
struct av_tcp_stats {
    int64_t active;         /* peer connections alive, pending or bound */
    uint64_t total, failed; /* established; failed, refused or never bound */
    uint64_t bytes_to_peer, bytes_to_client;
};

/* Every port and connection holds a reference on its owner (the worker) until its last
 * libuv handle is closed. */
struct av_tcp_relay_hooks {
    void (*ref)(void *arg);
    void (*unref)(void *arg);
    void *arg;
};

/* Creates the worker's relay state over loop and turn (borrowed). 0 or -ENOMEM. */
int av_tcp_relay_create(uv_loop_t *loop, struct av_turn *turn, const struct av_tcp_relay_hooks *h,
                        const struct logger *log, struct av_tcp_relay **out);
/* Frees it; every port and connection must be gone (after their close callbacks). */
void av_tcp_relay_destroy(struct av_tcp_relay *r);
void av_tcp_relay_set_logger(struct av_tcp_relay *r, const struct logger *log);
const struct av_tcp_stats *av_tcp_relay_stats(const struct av_tcp_relay *r);

/* Listens on fd (a bound, listening TCP socket it takes over, closed on failure too) for
 * the peers of allocation a. 0 or a negative errno. */
int av_tcp_port_open(struct av_tcp_relay *r, struct av_alloc *a, int fd, struct av_tcp_port **out);
/* The allocation is going: closes its listener and every one of its connections, bound
 * client data connections included. */
void av_tcp_port_close(struct av_tcp_port *p);

/* Starts a Connect (see av_relay_io.connect for the returns). */
int av_tcp_connect(struct av_tcp_relay *r, struct av_alloc *a, const struct addr *peer,
                   const struct av_turn_pending *req);
/* The allocation whose connection id waits for a ConnectionBind, or NULL. */
struct av_alloc *av_tcp_pending_alloc(struct av_tcp_relay *r, uint32_t id);

/* Binds the client data connection cs to pending connection id, once its ConnectionBind
 * answer is queued on cs. The caller keeps owning cs and the pointer *slot, which holds
 * the connection while it lives and is set to NULL when it goes; it forwards cs's events
 * with the av_tcp_conn_client_* calls below. Returns the connection or NULL. */
struct av_tcp_conn *av_tcp_bind(struct av_tcp_relay *r, uint32_t id, struct stream *cs,
                                struct av_tcp_conn **slot);
/* Bytes the client sent on its data connection: 0, or a negative errno to close it. */
int av_tcp_conn_client_data(struct av_tcp_conn *c, const uint8_t *p, size_t n);
/* cs's write queue drained after it refused a write (stream on_drain). */
void av_tcp_conn_client_drained(struct av_tcp_conn *c);
/* cs closed (err 0: cleanly); the peer side is shut down after its queue drains. */
void av_tcp_conn_client_closed(struct av_tcp_conn *c, int err);

#endif
