/* TURN allocation table: allocations by 5-tuple, permissions by peer IP, channels by number
 * and by peer, reservations by token; all O(1) hash lookups, expiry by a periodic sweep.
 * One table per worker thread; nothing here is shared or locked. */
#ifndef AV_ALLOC_H
#define AV_ALLOC_H

#include <stdbool.h>
#include <stdint.h>

#include "common/addr.h"

#define AV_USERNAME_MAX 128
#define AV_TRANSPORT_UDP 17
#define AV_TRANSPORT_TCP 6

enum av_side { AV_SIDE_EXTERNAL = 0, AV_SIDE_INTERNAL = 1 };

/* Intrusive hash node; the owner embeds it and compares its own key. */
struct av_hnode {
    struct av_hnode *next;
    uint64_t h;
};

struct av_user;       /* per-username accounting in one worker */
struct av_user_count; /* the same user across workers (turn.h's av_shared) */

/* Token bucket in bytes; rate 0 = unlimited. */
struct av_bucket {
    uint64_t rate, burst; /* bytes per second, bucket size */
    double tokens;
    uint64_t last_ms;
};
bool av_bucket_take(struct av_bucket *b, uint64_t now_ms, size_t bytes);
/* Takes up to want bytes, as many as the bucket holds; returns how many. */
uint64_t av_bucket_lease(struct av_bucket *b, uint64_t now_ms, uint64_t want);
/* For streams, which cannot drop what they already read: takes bytes even into debt and
 * returns the milliseconds until the debt is paid (0 = none), for the caller to pause. */
uint64_t av_bucket_charge(struct av_bucket *b, uint64_t now_ms, size_t bytes);

/* One relayed transport address of an allocation (IPv4 and optionally IPv6). */
struct av_relay {
    struct addr addr; /* family 0 = none */
    void *handle;     /* the I/O layer's socket object */
};

/* An allocation. The table owns it; the I/O layer reads the fields it needs on the relay path. */
struct av_alloc {
    struct av_hnode node;    /* by 5-tuple */
    struct addr client;      /* the client's address as seen by the server */
    uint16_t listener;       /* the server side of the 5-tuple: index of the listening socket */
    uint8_t transport;       /* AV_TRANSPORT_UDP / AV_TRANSPORT_TCP (client side) */
    uint8_t side;            /* enum av_side */
    uint8_t relay_transport; /* AV_TRANSPORT_UDP, or AV_TRANSPORT_TCP (RFC 6062) */
    void *conn;              /* stream for TCP/TLS clients, NULL for UDP */
    uint64_t expires_ms;
    struct av_relay relay[2]; /* [0] IPv4, [1] IPv6 */
    struct av_user *user;
    uint8_t key[16];     /* long-term key (MD5) the allocation was made with */
    uint8_t tid[12];     /* Allocate transaction id, to answer retransmissions */
    uint32_t lifetime_s; /* granted in the Allocate response */
    uint64_t token;      /* RESERVATION-TOKEN returned, 0 = none */
    uint32_t n_perms, n_chans;
    uint32_t denied_logged; /* bit per denial reason already logged for this allocation */
    struct av_perm *perms;  /* list for sweeping and teardown */
    struct av_chan *chans;
    struct av_bucket bw;
    struct av_bucket peers; /* new_peers_per_second (in peers, not bytes) */
    uint32_t pkt_tokens;    /* packets_per_second: packets left until the next refill */
    uint64_t pkt_refill_ms;
    uint64_t pkts_in, pkts_out, bytes_in, bytes_out;
};

struct av_perm {
    struct av_hnode node; /* by (alloc, peer IP) */
    struct av_perm *next; /* in the allocation's list */
    struct av_alloc *alloc;
    struct addr peer; /* port ignored */
    uint64_t expires_ms;
};

struct av_chan {
    struct av_hnode by_num, by_peer;
    struct av_chan *next;
    struct av_alloc *alloc;
    uint16_t num;
    struct addr peer;
    uint64_t expires_ms;
};

struct av_user {
    struct av_hnode node;
    uint32_t n_allocs;
    struct av_user_count *shared; /* set by the Allocate; lives while n_allocs > 0 */
    uint64_t lease;               /* per-user bandwidth: bytes leased from shared, unspent */
    uint64_t lease_retry_ms;      /* the shared bucket ran dry: not asked again before this */
    char name[AV_USERNAME_MAX];
};

struct av_alloc_table;

/* Called for every allocation removed by expiry, refresh to 0 or teardown, before it is
 * freed, so the I/O layer closes its relay sockets; and for expired reservations. */
struct av_alloc_hooks {
    void (*on_free)(struct av_alloc *a, void *arg);
    void (*on_reservation_free)(void *handle, void *arg);
    void *arg;
};

int av_alloc_table_create(struct av_alloc_table **out, const struct av_alloc_hooks *hooks);
/* Frees every allocation (through on_free) and the table. NULL is a no-op. */
void av_alloc_table_destroy(struct av_alloc_table *t);
/* Removes every allocation and reservation (through the hooks). */
void av_alloc_clear(struct av_alloc_table *t);

struct av_alloc *av_alloc_find(struct av_alloc_table *t, const struct addr *client,
                               uint16_t listener, uint8_t transport);
/* Creates an allocation for the 5-tuple, charged to user (created on first use); the caller
 * fills the relay and lifetime. NULL on -ENOMEM. */
struct av_alloc *av_alloc_add(struct av_alloc_table *t, const struct addr *client,
                              uint16_t listener, uint8_t transport, const char *user);
void av_alloc_remove(struct av_alloc_table *t, struct av_alloc *a);
size_t av_alloc_count(const struct av_alloc_table *t);
struct av_user *av_user_find(struct av_alloc_table *t, const char *user);

/* Permission for the peer's IP, if installed and not expired at now_ms. */
struct av_perm *av_perm_find(struct av_alloc_table *t, struct av_alloc *a, const struct addr *peer,
                             uint64_t now_ms);
/* Installs or refreshes the permission until expires_ms. NULL on -ENOMEM. */
struct av_perm *av_perm_set(struct av_alloc_table *t, struct av_alloc *a, const struct addr *peer,
                            uint64_t expires_ms);

struct av_chan *av_chan_by_num(struct av_alloc_table *t, struct av_alloc *a, uint16_t num,
                               uint64_t now_ms);
struct av_chan *av_chan_by_peer(struct av_alloc_table *t, struct av_alloc *a,
                                const struct addr *peer, uint64_t now_ms);
/* Binds or refreshes; the caller has checked the number/peer pairing rules. */
struct av_chan *av_chan_set(struct av_alloc_table *t, struct av_alloc *a, uint16_t num,
                            const struct addr *peer, uint64_t expires_ms);

/* Reservations (EVEN-PORT R bit): a held relay socket for 30 s, keyed by a token. */
int av_reservation_add(struct av_alloc_table *t, uint64_t token, void *handle, uint64_t expires_ms);
/* Takes the reservation out of the table: returns its handle, or NULL. */
void *av_reservation_take(struct av_alloc_table *t, uint64_t token, uint64_t now_ms);

/* Removes what expired at now_ms: allocations (with their permissions and channels),
 * permissions, channels, reservations. Returns the number of allocations removed. */
size_t av_alloc_sweep(struct av_alloc_table *t, uint64_t now_ms);

/* Totals for the gauges. */
void av_alloc_counts(const struct av_alloc_table *t, size_t *allocs, size_t *perms, size_t *chans);

/* Visits every allocation (for teardown and reports); fn must not modify the table. */
void av_alloc_foreach(struct av_alloc_table *t, void (*fn)(struct av_alloc *a, void *arg),
                      void *arg);

#endif
