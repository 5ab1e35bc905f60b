/* INVITEs the edge forwarded and has not heard back about (RFC 3261 §17.1.1.2, Timer A/B).
 *
 * The edge answers an INVITE with its own 100 Trying, which stops the sender's
 * retransmissions: from then on a datagram lost on the next hop is the edge's to repeat,
 * and a next hop that never answers is the edge's to report. Each forwarded INVITE keeps a
 * copy here until any response comes back (the caller drops it) or Timer B (64*T1) passes;
 * over UDP it is sent again on Timer A, over TCP/TLS (reliable) only waited for. At Timer
 * B, or when the next hop is found down, the copy is what the edge builds its 408 or 503
 * to the caller from.
 *
 * The edge's 100 Trying is deferred (RFC 3261 §17.2.1: a server transaction must send one
 * only when no provisional answer will come within 200 ms): most next hops answer at once,
 * with a 180 or a 407 that stops the caller's retransmissions as well, and then the 100
 * would be one more message on the outside link for nothing. The copy says when it is due;
 * the edge builds it from the copy as it builds a 408. Pure: the caller passes the clock
 * and sends. */
#ifndef AE_RETX_H
#define AE_RETX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "access-edge/ae_txn.h"
#include "common/util.h"

#define AE_RETX_T1_MS 500u
#define AE_RETX_TIMER_B_MS (64u * AE_RETX_T1_MS) /* Timer H is the same 64*T1 */
#define AE_RETX_T2_MS 4000u
/* A deferred 100 is due this long after the INVITE; the edge's 100 ms tick sends it within
 * 200 ms. */
#define AE_RETX_TRYING_MS 100u

struct ae_retx {
    struct dlist link;
    uint64_t key; /* the INVITE transaction's branch hash */
    struct ae_dest dest;
    uint64_t started_ms, next_ms;
    uint64_t trying_ms; /* when the caller's deferred 100 Trying is due; 0: none pending */
    uint32_t interval_ms;
    bool reliable; /* TCP/TLS: no retransmissions, only Timer B */
    bool response; /* the edge's own final answer to the INVITE, sent again until its ACK
                      (RFC 3261 §17.2.1: Timer G, capped at T2; Timer H gives up) */
    size_t len;
    uint8_t data[];
};

enum ae_retx_step { AE_RETX_WAIT, AE_RETX_SEND, AE_RETX_GIVE_UP };

/* A copy of the forwarded bytes (a request, or with response the edge's own final answer),
 * first retransmission due T1 after now, and for a request the caller's 100 Trying due
 * AE_RETX_TRYING_MS after now; NULL if no memory. */
struct ae_retx *ae_retx_new(uint64_t key, const struct ae_dest *d, const void *data, size_t len,
                            bool response, uint64_t now_ms);
/* What is due at now: SEND (and the interval doubles; never when reliable), WAIT, or
 * GIVE_UP once Timer B has passed with no response. */
enum ae_retx_step ae_retx_step(struct ae_retx *r, uint64_t now_ms);
/* Whether the deferred 100 Trying is to be sent now: true once, when it is due and the
 * caller has had no response yet (answered: it has). Either way it is then no longer
 * pending when answered or sent. */
bool ae_retx_trying_due(struct ae_retx *r, bool answered, uint64_t now_ms);

#endif
