/* TURN server logic (RFC 8656, RFC 8489 long-term credentials, TURN REST credentials) as a
 * state machine without I/O: a message and where it came from go in; a reply, a relay
 * action or nothing come out. Relay sockets are opened through a small I/O interface. */
#ifndef AV_TURN_H
#define AV_TURN_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "av-edge/alloc.h"
#include "av-edge/stun.h"
#include "common/addr.h"
#include "common/log.h"
#include "common/token.h"

/* Bytes the caller leaves writable before relayed data (for the Data indication or
 * ChannelData header) and after it (padding). */
#define AV_HEADROOM 64
#define AV_TAILROOM 4

struct av_static_user {
    const char *name;
    uint8_t key[16]; /* MD5(name:realm:password) */
};

/* Read-only settings, built from the config; swapped whole on reload. */
struct av_turn_cfg {
    const char *realm;
    const char *software; /* NULL: no SOFTWARE attribute */
    uint32_t default_lifetime_s, max_lifetime_s, perm_lifetime_s, chan_lifetime_s;
    uint32_t nonce_lifetime_s;
    uint32_t user_quota, total_quota, max_perms;
    uint32_t cred_quota;      /* allocations per credential (username), 0 = unlimited */
    uint32_t new_peers_per_s; /* new permission peers per second per allocation, 0 = any */
    uint32_t pps_per_alloc;   /* relayed packets per second per allocation, 0 = any */
    uint64_t bps_per_alloc, bps_per_user; /* bytes per second, 0 = unlimited */
    const struct cidr *internal_nets;
    size_t n_internal_nets;
    const struct cidr *allow_peers; /* external-side exceptions (labs); never own/internal */
    size_t n_allow_peers;
    const struct addr *own; /* the edge's own addresses (ports ignored) */
    size_t n_own;
    const struct av_static_user *users;
    size_t n_users;
    bool have_v4, have_v6;     /* relay address families configured */
    bool tcp_relay;            /* RFC 6062 allowed */
    bool strict_amplification; /* UDP: drop unauthenticated answers larger than the request */
};

/* Where a draining edge redirects a client: by its side and transport ([side][0] UDP,
 * [side][1] TCP); family 0 = no alternate (av-edge/peers.c chooses them). */
struct av_alternates {
    struct addr a[2][2];
};

/* Shared between workers: relay secrets (current + previous) that the control channel
 * rotates, and the total allocation count for the global quota. */
#define AV_SHARED_USER_BUCKETS 1024
struct av_user_count;
struct av_shared_resv;
struct av_revoked {
    char user[AV_USERNAME_MAX]; /* the user id: a REST username's part after the colon */
    int64_t until;              /* unix seconds: refused (all credentials) until then */
    int64_t expiring_by;        /* reinstated: credentials expiring by then stay refused */
};
struct av_shared {
    pthread_mutex_t mu;
    struct keyring kr; /* under mu */
    uint64_t kr_gen;   /* bumped under mu, read atomically */
    int64_t allocs;    /* atomic */
    int draining;      /* atomic: set once the edge drains; new allocations are refused */
    uint8_t nonce_key[20];
    /* Users across all workers (under mu): allocations for the per-user quota, and the
     * per-user bandwidth bucket that workers lease from. */
    struct av_user_count *users[AV_SHARED_USER_BUCKETS];
    /* EVEN-PORT reservations (under mu): any worker may redeem a token, since the
     * Allocate that names it may arrive on another worker's socket. */
    struct av_shared_resv *resv;
    /* Users the Director revoked (under mu); rev_n and rev_gen are read atomically so the
     * request path takes the lock only while some revocation exists. */
    struct av_revoked *rev;
    size_t rev_n, rev_cap;
    uint64_t rev_gen;
    struct av_alternates alt; /* under mu: the least-loaded peers, for 300 while draining */
};
int av_shared_init(struct av_shared *s);
void av_shared_fini(struct av_shared *s);
/* Counts one more allocation for user unless quota (0 = none) is reached: the user's shared
 * entry if counted (it lives while the user has allocations), NULL if not. */
struct av_user_count *av_shared_user_take(struct av_shared *s, const char *user, uint32_t quota);
/* Per-user bandwidth (rate bytes/s, the burst one second of it) across workers: moves up to
 * want bytes from the user's shared bucket to the caller; returns how many. */
uint64_t av_shared_user_lease(struct av_shared *s, struct av_user_count *u, uint64_t rate,
                              uint64_t now_ms, uint64_t want);
/* The same for streams, which cannot drop what they read: charges n bytes, into debt if
 * need be; returns the milliseconds until the debt is paid (0 = none). */
uint64_t av_shared_user_charge(struct av_shared *s, struct av_user_count *u, uint64_t rate,
                               uint64_t now_ms, uint64_t n);
void av_shared_user_give(struct av_shared *s, const char *user);
/* Installs a relay secret (the previous current one stays valid). */
int av_shared_set_secret(struct av_shared *s, const char *id, const void *secret, size_t len,
                         int64_t not_after);

/* Revokes user (a user id; until unix seconds) or, with until <= now_s, lifts its
 * revocation, its TURN REST credentials that expire by expiring_by (minted before the
 * revocation) still refused. Workers end the user's allocations on their next tick
 * (av_turn_enforce). */
int av_shared_revoke(struct av_shared *s, const char *user, int64_t until, int64_t expiring_by,
                     int64_t now_s);
/* Installs where a draining edge sends new allocations. */
void av_shared_set_alternates(struct av_shared *s, const struct av_alternates *alt);
/* True if the user id's credential expiring at expiry (0: a static user, or any) is
 * refused at now_s. */
bool av_shared_revoked(struct av_shared *s, const char *user, int64_t expiry, int64_t now_s);
/* The user id of a username: a TURN REST username's part after the first colon, else all. */
const char *av_user_id(const char *username);

/* A request answered later (RFC 6062 Connect waits for the TCP handshake to the peer): what
 * the answer needs from it. */
struct av_turn_pending {
    uint8_t tid[STUN_TID_LEN];
    uint8_t key[16];
    bool sha256, fp;
};

/* The I/O layer's side of relay sockets. */
struct av_relay_io {
    /* Opens a relay socket of family for a and fills a->relay[family == AF_INET6].
     * even: the port must be even; reserve_out non-NULL: also hold the next port and return
     * its handle there; reserved_in: use this previously reserved socket instead.
     * Returns 0, -EADDRNOTAVAIL when the port range is exhausted, or a negative errno. */
    int (*open)(void *arg, struct av_alloc *a, int family, bool even, bool dont_fragment,
                void **reserve_out, void *reserved_in);
    /* Closes a's relay sockets (the allocation is going away). */
    void (*close)(void *arg, struct av_alloc *a);
    /* Drops an unused reservation; may run on any worker's thread (or at shutdown). */
    void (*release)(void *arg, void *reserved);
    void *arg;
    /* RFC 6062, for TCP allocations (a->relay_transport == AV_TRANSPORT_TCP). connect opens a
     * TCP connection from a's relayed address to peer and later writes the answer to p on
     * a's control connection (av_turn_connect_answer). Returns 0 (answer pending), -EEXIST
     * (446: a connection to peer exists), -ENOSPC (508) or another negative errno (447). */
    int (*connect)(void *arg, struct av_alloc *a, const struct addr *peer,
                   const struct av_turn_pending *p);
    /* The allocation owning connection id while it waits for a ConnectionBind, or NULL. */
    struct av_alloc *(*conn_alloc)(void *arg, uint32_t id);
};

enum av_auth_fail {
    AV_AUTH_MISSING, /* no MESSAGE-INTEGRITY: the normal first challenge */
    AV_AUTH_BAD_REQUEST,
    AV_AUTH_STALE_NONCE,
    AV_AUTH_UNKNOWN_USER,
    AV_AUTH_EXPIRED,
    AV_AUTH_BAD_INTEGRITY,
    AV_AUTH_WRONG_CREDENTIALS,
    AV_AUTH_REVOKED, /* the Director revoked the user (403) */
    AV_AUTH_NREASONS
};
const char *av_auth_fail_name(enum av_auth_fail r);

enum av_deny {
    AV_DENY_NONE = 0,
    AV_DENY_INTERNAL_NET,
    AV_DENY_OWN_ADDRESS,
    AV_DENY_LOOPBACK,
    AV_DENY_LINK_LOCAL,
    AV_DENY_MULTICAST,
    AV_DENY_UNSPECIFIED,
    AV_DENY_NREASONS
};
const char *av_deny_name(enum av_deny d);
/* The enterprise rule: may an allocation made on side name peer? */
enum av_deny av_turn_peer_policy(const struct av_turn_cfg *c, enum av_side side,
                                 const struct addr *peer);

/* Per-worker counters, plain integers bumped on the worker's thread and folded into the
 * metrics registry periodically (no atomics on the relay path). */
struct av_turn_stats {
    uint64_t pkts_to_peer, bytes_to_peer, pkts_to_client, bytes_to_client;
    uint64_t dropped_no_perm, dropped_bandwidth;
    uint64_t auth_fail[AV_AUTH_NREASONS];
    uint64_t denied[AV_DENY_NREASONS];
    uint64_t quota_user, quota_total, quota_cred;
    uint64_t new_peers_limited, dropped_pkt_rate;
    uint64_t redirected; /* 300 ALTERNATE-SERVER while draining */
    uint64_t bindings, allocs_ok, errors;
    uint64_t unauth_limited, amplification_dropped;
};

struct av_turn;

/* Creates a worker's TURN state over cfg (borrowed; see av_turn_set_cfg), shared and io. */
int av_turn_create(struct av_turn **out, const struct av_turn_cfg *cfg, struct av_shared *shared,
                   const struct av_relay_io *io, const struct logger *log);
void av_turn_destroy(struct av_turn *t);
void av_turn_set_cfg(struct av_turn *t, const struct av_turn_cfg *cfg);
void av_turn_set_logger(struct av_turn *t, const struct logger *log);
/* Optional rate limit on unauthenticated requests per source IP: rate per second, burst. */
int av_turn_set_unauth_limit(struct av_turn *t, double rate, double burst);
struct av_alloc_table *av_turn_table(struct av_turn *t);
struct av_turn_stats *av_turn_stats(struct av_turn *t);
/* Per-user bandwidth_per_user on the relay path: true if n more bytes of u's may go now. */
bool av_turn_user_take(struct av_turn *t, struct av_user *u, uint64_t now_ms, size_t n);
/* For TCP relays: charges n bytes of u's; the milliseconds to pause reading (0 = none). */
uint64_t av_turn_user_charge(struct av_turn *t, struct av_user *u, uint64_t now_ms, size_t n);

/* Where a message came from. */
struct av_turn_in {
    const struct addr *client; /* source address */
    uint16_t listener;         /* index of the listening socket (server side of the 5-tuple) */
    uint8_t transport;         /* AV_TRANSPORT_UDP or AV_TRANSPORT_TCP */
    uint8_t side;              /* enum av_side */
    void *conn;                /* the stream for TCP/TLS clients */
    uint64_t now_ms;           /* monotonic */
    int64_t now_s;             /* wall clock (REST expiry) */
    bool secure;               /* over TLS (never redirected to a plain listener) */
};

/* What to do. reply/reply_cap are the caller's; relay_alloc non-NULL means "send
 * relay_data from relay_alloc's relay socket to relay_peer". */
struct av_turn_out {
    uint8_t *reply;
    size_t reply_cap;
    size_t reply_len;
    int code; /* the error code sent, 0 for success or nothing */
    struct av_alloc *relay_alloc;
    struct addr relay_peer;
    struct slice relay_data;
    uint32_t bind_id; /* non-zero: a ConnectionBind succeeded; after the reply, this client
                       * connection becomes the byte pipe of connection bind_id */
};

/* Handles one STUN message or ChannelData frame from a client (p/len is exactly one frame).
 * Returns 0 (see out), or a negative errno when the input was dropped. */
int av_turn_input(struct av_turn *t, const struct av_turn_in *in, const uint8_t *p, size_t len,
                  struct av_turn_out *out);

/* A datagram from peer arrived on a's relay socket. data has AV_HEADROOM writable bytes
 * before it and AV_TAILROOM after. On 0, *frame is the ChannelData or Data indication to
 * send to the client (padded to 4 bytes when stream); negative errno when dropped. */
int av_turn_peer_input(struct av_turn *t, struct av_alloc *a, const struct addr *peer,
                       uint8_t *data, size_t len, bool stream, uint64_t now_ms,
                       struct slice *frame);

/* RFC 6062 messages the I/O layer sends on its own. The answer to a pending Connect:
 * success with CONNECTION-ID id when code is 0, else that error. The ConnectionAttempt
 * indication for a peer's incoming connection id. Both return the length or -ENOSPC. */
ssize_t av_turn_connect_answer(struct av_turn *t, const struct av_turn_pending *p, int code,
                               uint32_t id, uint8_t *out, size_t cap);
ssize_t av_turn_connection_attempt(struct av_turn *t, const struct addr *peer, uint32_t id,
                                   uint8_t *out, size_t cap);

/* Removes expired state; returns allocations removed. */
size_t av_turn_sweep(struct av_turn *t, uint64_t now_ms);
/* Ends the allocations of users revoked since the last call (cheap when nothing changed);
 * returns how many were removed. Called from the worker's periodic tick. */
size_t av_turn_enforce(struct av_turn *t, int64_t now_s);

#endif
