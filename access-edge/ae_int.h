/* Internal to access-edge: the server's state (struct ae) and the functions its parts call
 * across files. The parts: ae_transport.c (sockets, connections, WebSocket), ae_proxy.c
 * (the proxy core), ae_policy.c (federation and policy), ae_director.c (the Director link),
 * ae_server.c (lifecycle). Nothing outside access-edge/ includes this. */
#ifndef AE_INT_H
#define AE_INT_H

#include "access-edge/ae.h"

#include <sys/socket.h>
#include <uv.h>

#include "access-edge/ae_dns.h"
#include "access-edge/ae_retx.h"
#include "access-edge/ae_txn.h"
#include "access-edge/sip_route.h"
#include "access-edge/sip_topo.h"
#include "access-edge/sip_validate.h"
#include "access-edge/sip_ws.h"
#include "common/admin.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/ratelimit.h"
#include "common/sip/sip_msg.h"
#include "common/sip/sip_osip.h"
#include "common/sip/sip_proxy.h"
#include "common/stream.h"
#include "common/tls.h"
#include "common/util.h"

enum { AE_EXT = 0, AE_INT = 1 };

#define AE_UDP_MAX 8
#define AE_LST_MAX 16
#define AE_NAMES_MAX 6
#define AE_OUT_CAP (1024 * 1024 + 8192)
#define AE_MMSG_BUF (16 * 65536)
/* The osip2 parse tree of one message: a few KB for an ordinary one; larger trees spill. */
#define AE_OSIP_ARENA 65536
/* SIP streams gather a turn's writes (stream_opts.write_batch) up to this before sending. */
#define AE_WRITE_BATCH (16 * 1024)

/* UDP (ae_udp.c): received in batches of AE_UDP_RX_BATCH (64 KiB slots of ae->mmsg), at most
 * AE_UDP_RX_ROUNDS batches per readiness; sent through a per-socket queue flushed once a turn. */
#define AE_UDP_RX_BATCH 16
#define AE_UDP_RX_ROUNDS 4
#define AE_UDPQ_MSGS 256
#define AE_UDPQ_BYTES (1024 * 1024)

struct ae_udp_out {
    struct addr to;
    size_t off, len; /* in qbuf */
};

struct ae_udp {
    uv_poll_t poll;
    uv_idle_t flush; /* active while datagrams wait for the end of the turn */
    int fd;
    struct ae *ae;
    uint8_t side;
    bool want_write; /* the queue waits for the socket to take more */
    bool closed;
    struct addr local;
    struct ae_udp_out q[AE_UDPQ_MSGS];
    struct mmsghdr mh[AE_UDPQ_MSGS];
    struct iovec iov[AE_UDPQ_MSGS];
    size_t nq, qused;
    uint8_t *qbuf; /* AE_UDPQ_BYTES */
};

struct ae_listener {
    uv_tcp_t h;
    struct ae *ae;
    uint8_t side, tp;
    bool mtls, ws;
    struct addr local;
};

struct ae_conn {
    struct ae *ae;
    struct stream *s;
    uint32_t id;
    uint8_t side, tp;
    bool mtls, open, outbound;
    bool ws, ws_open; /* RFC 7118: WebSocket framing, after the upgrade */
    enum sip_source src;
    int partner; /* index in ae->partners for a discovered partner, -1 before its first request */
    struct addr peer;
    struct addr alias; /* RFC 5923: the peer's listening address, from ;alias in its Via */
    bool has_alias;
    struct addr local; /* the listener (or our address) the peer talks to */
    struct buf rb;
    uint64_t msg_started; /* loop ms when the unfinished message in rb began, 0 if none */
    bool refused;         /* answered and shut down: ignore what else comes */
    char names[AE_NAMES_MAX][128];
    const char *name_ptrs[AE_NAMES_MAX];
    size_t nnames;
};

/* A loop turn spends at most this on TLS handshakes (at least one flight): a handshake costs
 * 3-5 ms of ECDHE and ECDSA (12 ms with a client certificate), and a burst of them run as they
 * arrive held every other user's SIP for the whole burst. */
#define AE_HS_BUDGET_US 1000

/* Metric labels for each rejection reason (fixed set: bounded cardinality). */
extern const char *const ae_reject_reasons[];
#define AE_REJECT_REASONS 28 /* entries of ae_reject_reasons, NULL included */

#define AE_PARTNERS_MAX 1024

/* A discovered federation partner (RFC-less OCS policy, PROTOCOLS.md §1.2): the distinct
 * users it addressed, its success/failure counts, and whether it is on the watch list. */
struct ae_partner {
    char domain[128];
    uint64_t *users; /* hashes of distinct Request-URIs, up to max_contacts + 1 */
    uint32_t nusers, cap;
    uint32_t ok, fail;
    bool suspicious, watched;
    int64_t watched_at;
};

struct ae {
    uv_loop_t *loop;
    const struct ae_config *cfg;
    const struct logger *log;
    struct metrics *metrics;
    struct sip_policy policy;
    struct addr *own;
    size_t nown, nown_ext; /* own[0..nown_ext) are the external side's */
    const char **domains;

    struct ae_udp udp[AE_UDP_MAX];
    size_t nudp;
    struct ae_listener lst[AE_LST_MAX];
    size_t nlst;
    struct tls_ctx *tls_ext, *tls_ext_mtls, *tls_int_server, *tls_int_client, *tls_ext_client;
    struct acme_challenges *acme; /* TLS-ALPN-01 answers on the external TLS listeners */
    struct stream_gate *hs_gate;  /* accepted TLS handshakes take turns with SIP work */
    struct ae_dns *dns;

    struct ae_conn **conns; /* by id & (conn_cap - 1) */
    size_t conn_cap, nconns;
    uint32_t next_id;
#define AE_DIRECTORS_MAX 8
    struct {
        uint32_t conn;    /* stream connection to it, 0 if none */
        uint64_t last_ok; /* when it last answered anything (ms) */
        uint64_t down_ms; /* when it was marked down */
        bool probed;      /* it has answered a health OPTIONS: silence to them counts */
        bool up;
    } dirs[AE_DIRECTORS_MAX];
    size_t ndirs;
    uv_timer_t health;
    uv_timer_t lag;            /* fires every 20 ms; lateness measures saturation */
    uint64_t lag_expected;     /* uv_hrtime ns when it should fire */
    uint64_t overloaded_until; /* ms (loop clock) */
    struct log_limit fd_log;   /* connections refused at the open-file limit */
    unsigned late_ticks;       /* consecutive lag ticks at least overload_lag late */
    struct metric *m_dir_up[AE_DIRECTORS_MAX];

    struct ae_txn_table *txns;
    uv_timer_t sweep;
    uv_timer_t retx_timer; /* runs while retx holds INVITEs awaiting a first answer */
    struct dlist retx;     /* struct ae_retx, forwarded over UDP */
    struct ratelimit *rl;
    struct ratelimit *reject_rl; /* 503s to over-limit UDP sources (reflection bound) */
    struct ratelimit *fed_rl;    /* per discovered partner domain */
    struct ae_partner *partners;
    size_t npartners;
    struct admin *admin;
    uint64_t salt;
    uint8_t flow_key[SIP_FLOW_KEY_LEN];
    bool draining, stopping;
    void (*drained)(void *arg);
    void *drained_arg;
    int open_handles;

    struct metric *m_watch;
    struct metric *m_in[2], *m_out[2], *m_unparseable, *m_dropped, *m_conns, *m_txns;
    struct metric *m_retx, *m_retx_timeout;
    struct metric *m_route_stripped;
    struct metric *m_slow;   /* connections closed for a message slower than message_timeout */
    struct metric *m_silent; /* over-limit UDP requests dropped without a 503 */
    /* Log lines about bad input are bounded (AE_NOISE_LINES a second); the rest are counted
     * and summed up in one line. */
    struct log_limit noise_log;
    struct metric *m_reject[AE_REJECT_REASONS];

    struct sip_msg msg;
    struct sip_msg msg2; /* a message the edge built, when it must read it back */
    uint8_t out[AE_OUT_CAP];
    uint8_t mmsg[AE_MMSG_BUF];
    uint8_t rscratch[16384];          /* every stream read goes here (stream_opts.read_scratch) */
    struct sip_osip_arena osip_arena; /* the parse tree of the message in hand */
    struct mmsghdr rx_msg[AE_UDP_RX_BATCH];
    struct iovec rx_iov[AE_UDP_RX_BATCH];
    struct sockaddr_storage rx_from[AE_UDP_RX_BATCH];
};

/* Where a message came from. */
struct ae_origin {
    uint8_t side, tp;
    struct ae_udp *udp;   /* UDP: the socket it arrived on */
    struct ae_conn *conn; /* stream: its connection */
    const struct addr *peer;
    bool own; /* an answer the edge made itself, as if from this next hop (ae_director.c) */
};

#define AE_HEALTH_MAGIC 0x4ea1700000000000ULL

void ae_count_reject(struct ae *ae, const char *reason);
struct ae_conn *ae_conn_get(struct ae *ae, uint32_t id);
int ae_udp_send(struct ae_udp *u, const struct addr *to, const uint8_t *p, size_t n);
int ae_conn_send(struct ae_conn *c, const uint8_t *p, size_t n);
int ae_send(struct ae *ae, struct ae_dest *d, const uint8_t *p, size_t n);
const struct addr *ae_side_addr(const struct ae *ae, uint8_t side, uint8_t tp);
const char *ae_tp_name(uint8_t tp);
void ae_noise_flush(struct ae *ae, uint64_t now);
bool ae_noise_ok(struct ae *ae);
void ae_reject(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
               const struct sip_verdict *v, const char *extra);
int ae_federation_target(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                         const char *domain, struct addr *to);
struct addr ae_director_addr(const struct ae_config *cfg, size_t k);
void ae_trying_forwarded(struct ae *ae, const struct ae_retx *r, struct ae_txn *t);
void ae_fail_forwarded(struct ae *ae, const struct ae_retx *r, int status, const char *phrase,
                       const char *extra);
bool ae_dest_is_director(const struct ae *ae, const struct ae_dest *d, size_t k);
void ae_director_down(struct ae *ae, size_t k, const char *why);
/* Director k answered something: up again if it was down, said once. */
void ae_director_alive(struct ae *ae, size_t k);
void ae_on_health(uv_timer_t *t);
void ae_forward_response(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m);
/* The same, saying where it went: *sent and *sent_len (the bytes are in ae->out) once sent. */
void ae_forward_response_to(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
                            struct ae_dest *sent, size_t *sent_len);
int ae_policy(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m,
              const struct sip_route *r, enum sip_source src);
void ae_partner_account(struct ae *ae, struct ae_conn *c, int status);
void ae_on_admin_watchlist(const char *method, const char *path, const char *query,
                           const char *body, size_t body_len, struct admin_reply *reply, void *arg);
char *ae_watchlist_render(const struct ae_partner *partners, size_t np, size_t *len);
bool ae_exempt(const struct ae *ae, const struct addr *peer);
int ae_handle(struct ae *ae, const struct ae_origin *o, const struct sip_msg *m);
/* A datagram arrived on u (ae_transport.c). */
void ae_udp_input(struct ae_udp *u, const struct sockaddr *from, const uint8_t *p, size_t len);
/* Binds a UDP socket on a and starts reading (ae_udp.c). */
int ae_udp_open(struct ae *ae, struct ae_udp *u, uint8_t side, const struct addr *a);
/* Sends what is queued, then closes u's two handles with cb and their data set to data. */
void ae_udp_close(struct ae_udp *u, uv_close_cb cb, void *data);
void ae_on_accept(uv_stream_t *server, int status);
int ae_connect(struct ae *ae, uint8_t side, uint8_t tp, const struct addr *to,
               const char *server_name, struct ae_conn **out);
/* The edge's own final answer to INVITE key, sent over UDP to d: sent again on Timer G until
 * the ACK comes (ae_fwd_gate's ABSORB_ACK) or Timer H passes. */
void ae_retx_track_answer(struct ae *ae, uint64_t key, const struct ae_dest *d, const uint8_t *p,
                          size_t n);
/* A forwarded INVITE, kept for Timer A/B and its caller's deferred 100 (ae_retx.h). False
 * when it could not be kept (no memory): then nothing is deferred. */
bool ae_retx_track(struct ae *ae, uint64_t key, const struct ae_dest *d, const uint8_t *p,
                   size_t n);
void ae_unref(struct ae *ae);
void ae_check_drained(struct ae *ae);

#endif
