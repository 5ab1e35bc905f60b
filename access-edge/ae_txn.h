/* Transaction table of the access edge. INVITE entries absorb retransmissions, match
 * CANCELs to the INVITE they cancel, and bound the work in flight (a full table sheds new
 * INVITEs with 503). Non-INVITE entries only say that a forwarded request still awaits its
 * final answer, so that a drain waits for it; they go with that answer, or at Timer F.
 * Keyed by the 64-bit branch hash (sip_branch_hash). Pure: the caller passes the clock.
 * Open addressing with tombstones; fixed capacity. */
#ifndef AE_TXN_H
#define AE_TXN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/addr.h"

/* Where the INVITE went: a CANCEL follows the same way (RFC 3261 §16.10). */
struct ae_dest {
    uint8_t side;     /* 0 external, 1 internal */
    uint8_t tp;       /* 0 UDP, 1 TCP, 2 TLS */
    uint32_t conn_id; /* stream connection, 0 for UDP or not yet connected */
    struct addr addr;
};

struct ae_txn {
    uint64_t key;
    uint64_t t_ms;    /* created, then time of the final response */
    uint8_t state;    /* internal: 0 empty, 1 used, 2 deleted */
    bool final;       /* a final response went upstream */
    bool cancelled;   /* a CANCEL was answered by us */
    bool answered;    /* the next hop sent a response (even 100): retransmissions stop */
    bool noninvite;   /* a non-INVITE awaiting its final answer (only drain looks at it) */
    bool local_final; /* the edge answered it itself (next hop down or silent): the ACK ends
                         it here, and the answer is sent again until then */
    bool acked;
    bool caller_answered; /* INVITE: the caller has had a response (a forwarded one, or our
                             100 Trying), so no deferred 100 of ours is due (ae_retx.h) */
    struct ae_dest dest;
};

struct ae_txn_table;

int ae_txn_table_create(struct ae_txn_table **out, size_t cap);
void ae_txn_table_destroy(struct ae_txn_table *t);
struct ae_txn *ae_txn_find(struct ae_txn_table *t, uint64_t key);
/* A new entry for key (zeroed except key and t_ms), or NULL when the table is full. */
struct ae_txn *ae_txn_add(struct ae_txn_table *t, uint64_t key, uint64_t now_ms);
void ae_txn_del(struct ae_txn_table *t, struct ae_txn *x);
/* Removes transactions older than max_ms, or final for longer than linger_ms, and non-INVITE
 * ones older than Timer F. Returns how many went. */
#define AE_TXN_TIMER_F_MS 32000u
size_t ae_txn_expire(struct ae_txn_table *t, uint64_t now_ms, uint64_t max_ms, uint64_t linger_ms);
size_t ae_txn_count(const struct ae_txn_table *t);

#endif
