/* What the pieces of the reverse proxy share: the server, its config generations and
 * upstream pools (gen.c), upstream connections (upstream.c), client connections (client.c),
 * the exchange between them (exchange.c), the one-direction pipe helper (pipe.c) and the
 * listeners and lifecycle (server.c). Only those six include it; main.c sees
 * revproxy/proxy.h. */
#ifndef RP_PROXY_INT_H
#define RP_PROXY_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

#include "common/addr.h"
#include "common/log.h"
#include "common/stream.h"
#include "common/util.h"
#include "revproxy/config.h"
#include "revproxy/http1.h"
#include "revproxy/proxy.h"

/* Each direction queues at most RP_WCAP bytes in the writer before the reader stops.
 * Body bytes are only forwarded within that cap, which leaves RP_HEAD_ROOM for a head. */
#define RP_WCAP (256 * 1024)
#define RP_HEAD_ROOM (72 * 1024)
#define RP_IN_CAP (128 * 1024)
#define RP_READ_CHUNK (64 * 1024)
/* Plain upstream reads: a CPU-bound TLS client side then encrypts and writes in batches
 * this large, so the reader at the other end (and the upstream, on our window updates) is
 * woken a quarter as often per byte; each wakeup is a costly IPI on a virtual machine. */
#define RP_UP_READ_CHUNK (256 * 1024)
#define RP_LINGER_MS 5000
/* Handshake CPU per loop turn (stream_gate). One mbedTLS ECDHE+ECDSA flight is ~2 ms here,
 * so this lets one flight through per turn: established clients wait about that long at
 * most behind a burst of new ones. */
#define RP_HS_BUDGET_US 1000

struct rp_gen;
struct rp_client;
struct ratelimit;
struct ctl_client;
struct stream_gate;
struct metric;

/* One server of a pool: passive health state and its idle connections. */
struct rp_backend {
    struct addr addr;
    char name[ADDR_STRLEN];
    uint32_t fails;
    uint64_t down_until; /* monotonic ms */
    bool check_down;     /* the last active check failed */
    struct dlist idle;
    size_t nidle;
};

struct rp_pool {
    struct rp_gen *gen;
    const struct rp_upstream *cfg;
    struct tls_ctx *tls;
    struct rp_backend *be;
    size_t nbe, rr;
    uv_timer_t health;
    const char *internal[8]; /* names to hide in Location (NULL-terminated) */
};

/* Everything derived from one config: read-only while requests use it. */
struct rp_gen {
    int refs;
    struct rp_server *srv;
    struct rp_config *cfg; /* our own copy */
    struct tls_ctx *tls;   /* server certificates */
    struct rp_pool *pools;
    size_t npools;
    struct ratelimit **limits; /* per route with a rate, by client address (NULL = none) */
    size_t nlimits;
    bool retired;
};

enum { UP_CONNECTING, UP_OPEN, UP_IDLE };

struct rp_upconn {
    struct rp_pool *pool;
    struct rp_backend *be;
    struct rp_gen *gen;
    struct stream *s;
    struct rp_client *c; /* bound client, NULL when idle in the pool */
    struct http_reader *resp;
    struct buf in;
    uv_timer_t timer;  /* read timeout while bound; idle timeout in the pool */
    uint64_t deadline; /* loop ms; 0 = none */
    struct dlist link; /* server's list of all, or the backend's idle list */
    struct dlist all;
    int handles;
    int state;
    bool reused;
    bool reusable;
    bool closing;
    bool probe; /* an active health check, not a pooled connection */
};

enum { C_HEAD, C_BODY, C_WAIT, C_TUNNEL, C_CLOSING };

struct rp_client {
    struct rp_server *srv;
    struct rp_gen *gen;
    struct stream *s;
    const struct rp_listener *lst;
    struct http_reader *req;
    struct buf in;
    uv_timer_t timer;
    uint64_t deadline; /* loop ms; 0 = none */
    struct dlist link;
    int handles;
    int state;
    bool closing;
    bool tls;
    char ip[ADDR_STRLEN];
    /* The current exchange. */
    struct rp_upconn *up;
    int route;
    bool req_done, resp_started, resp_head_pending, close_after;
    bool is_head, upgrade, retried, affinity, up_reused;
    struct buf uphead; /* the upstream request head, kept for one retry */
    char host[256];
    char method[16];
    char path[512];
    int status;
    uint64_t bytes_out, t0_ms;
    uint64_t read_timeout_ms;
};

struct rp_listen {
    uv_tcp_t tcp;
    struct rp_server *srv;
    const struct rp_listener *cfg; /* from the first generation: listeners need a restart */
    bool open;
};

struct rp_server {
    struct daemon *d;
    uv_loop_t *loop;
    const struct logger *log;
    struct rp_gen *gen;
    struct rp_config *listen_cfg; /* the config the listeners came from */
    struct rp_listen *lsn;
    size_t nlsn;
    int lsn_open;
    struct dlist clients, upconns;
    size_t nclients;
    bool draining, stopping;
    int access_fd;
    int access_format;
    struct ctl_client *ctl;
    struct acme_edge *acme;      /* acme: enabled: certificate and HTTP-01 from the Director */
    struct buf out;              /* response bytes collected during one upstream read */
    struct stream_gate *hs_gate; /* client TLS handshakes take turns */
    struct {
        struct metric *conns, *conns_total, *rejected_cap, *req_total;
        struct metric *status[6];
        struct metric *not_http, *too_large, *body_too_large, *timeout_408, *not_found;
        struct metric *unknown_host;
        struct metric *up_connect_fail, *up_timeout, *up_reset, *up_reused, *up_new;
        struct metric *bytes_in, *bytes_out, *rate_limited, *fd_limit;
        struct metric *acme_served, *acme_unknown;
    } m;
    struct log_limit fd_log; /* connections refused at the open-file limit */
};

/* ---- pipe.c: lazy deadlines and one direction of a pipe ---- */

/* Moving a deadline later only stores it; a timer that fires early re-arms itself for
 * the rest. This saves several timer-heap updates per proxied request. */
void rp_lazy_set(uv_timer_t *t, uint64_t *deadline, uv_timer_cb cb, uint64_t ms);
/* In a timer callback: true if the deadline has really passed (and clears it). */
bool rp_lazy_due(uv_timer_t *t, uint64_t *deadline, uv_timer_cb cb);

/* Where one direction writes: a stream, and optionally a staging buffer (the server's
 * scratch) whose bytes leave in one write at the next flush, so that a response head and
 * the body bytes read with it go out together. */
struct rp_sink {
    struct stream *s;
    struct buf *stage;   /* NULL: bytes go straight to s */
    struct metric *sent; /* bytes written to s, or NULL */
};

void rp_sink_flush(const struct rp_sink *k);
/* Staged bytes leave with the next flush (what does not fit goes out at once, and a refused
 * write is left to the stream's on_close); without a stage, stream_write's result. */
int rp_sink_put(const struct rp_sink *k, const uint8_t *p, size_t n);
/* Room for more bytes: the stream's write cap less what is queued and staged. With less
 * than need (at least 1), flushes the stage, arms the stream's on_drain (the reader resumes from
 * there) and returns 0. */
size_t rp_sink_room(const struct rp_sink *k, size_t need);

enum rp_flow {
    RP_FLOW_MOVED, /* st->used bytes went through (st->ev: the reader's events) */
    RP_FLOW_FULL,  /* the sink has no room: its on_drain is armed, wait for it */
    RP_FLOW_BAD,   /* the reader refused the bytes (st->err) */
    RP_FLOW_GONE,  /* the sink's stream refused a write: it is closing */
};

struct rp_step {
    size_t used;
    unsigned ev;
    ssize_t err;
};

/* Tunnel bytes (an upgraded connection): as many of p as the sink has room for. */
enum rp_flow rp_pipe_copy(const struct rp_sink *k, const uint8_t *p, size_t n, struct rp_step *st);
/* Message bytes through reader r and on to the sink, within the sink's room (need: the
 * room a head requires before it is read). forward false reads without forwarding (the
 * body of a response to HEAD); a request's trailer fields (HTTP_EV_DROP) never go on. */
enum rp_flow rp_pipe_feed(const struct rp_sink *k, struct http_reader *r, const uint8_t *p,
                          size_t n, size_t need, bool forward, struct rp_step *st);

/* The reading end: bytes its consumer cannot take yet wait in `in` and the stream stops
 * reading until the consumer resumes. consume returns the bytes it took. */
typedef size_t (*rp_consume_cb)(void *owner, const uint8_t *p, size_t len);

struct rp_half {
    struct stream *s;
    struct buf *in;
    const bool *closing; /* the owner's flag: a closing owner keeps nothing */
    rp_consume_cb consume;
    void (*resume)(void *owner); /* the owner's resume: rp_half_resume, then read again */
    void *owner;
};

/* on_data: feeds the consumer, keeps the rest. Returns 0 or -ENOBUFS (the owner closes). */
int rp_half_data(const struct rp_half *h, const uint8_t *data, size_t len);
/* Feeds what waits; true when nothing does and the owner is open (it may read again). */
bool rp_half_resume(const struct rp_half *h);

/* ---- gen.c: generations, pools, health checks ---- */

void rp_gen_ref(struct rp_gen *g);
void rp_gen_unref(struct rp_gen *g);
/* The generation gets no new work: idle connections close, health checks stop. */
void rp_gen_retire(struct rp_gen *g);
int rp_gen_create(struct rp_server *srv, struct rp_config *cfg, struct rp_gen **out, char *err,
                  size_t errcap);
/* A pooled or new connection to a server of p not marked down (-EHOSTUNREACH: none). */
int rp_pool_get(struct rp_pool *p, struct rp_upconn **out);
/* The exchange on u ended cleanly: pool it or close it. */
void rp_up_release(struct rp_upconn *u);
void rp_health_probe_open(struct rp_upconn *u);
void rp_health_probe_data(struct rp_upconn *u, const uint8_t *data, size_t len);

/* ---- upstream.c: upstream connections and the response half ---- */

int rp_up_connect(struct rp_pool *p, struct rp_backend *be, bool probe, struct rp_upconn **out);
void rp_up_close(struct rp_upconn *u, int err, const char *why);
void rp_up_resume(struct rp_upconn *u);
void rp_on_up_timer(uv_timer_t *t);

/* ---- client.c: client connections and the request half ---- */

/* A new connection on listener l (closed at once over the cap). Returns 0 or a negative
 * errno (-EMFILE: the open-file limit). */
int rp_client_accept(struct rp_server *srv, const struct rp_listener *l, uv_stream_t *server);
void rp_client_close(struct rp_client *c, int err, const char *why);
void rp_client_resume(struct rp_client *c);
/* Ends the connection once the response is out: shutdown, then at most RP_LINGER_MS. */
void rp_client_linger(struct rp_client *c);
void rp_on_client_timer(uv_timer_t *t);

/* ---- exchange.c: one request and its response ---- */

void rp_on_request_head(struct rp_client *c);
/* A small response from the proxy itself, with extra header lines (each ending CRLF; may
 * be NULL). Anything but keep closes the connection once it is written; a response already
 * under way is cut instead (the client sees it short). */
void rp_client_reply_with(struct rp_client *c, int status, const char *extra, const char *body,
                          bool keep);
void rp_client_reply(struct rp_client *c, int status, const char *body, bool keep);
void rp_client_upstream_failed(struct rp_client *c, int err, const char *why, bool retryable);
void rp_exchange_reset(struct rp_client *c);
/* The response and the request are both complete. */
void rp_exchange_finish(struct rp_client *c);
void rp_access_log(struct rp_client *c);
void rp_count_status(struct rp_server *srv, int status);

/* ---- server.c ---- */

void rp_server_maybe_drained(struct rp_server *srv);

#endif
