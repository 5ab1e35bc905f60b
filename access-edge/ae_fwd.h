/* The pure steps of forwarding a request (RFC 3261 §16.6): which transport a Request-URI
 * asks for, what the INVITE/CANCEL transaction table says to do with the request, and the
 * header lines the edge inserts. No I/O, no event loop; ae_proxy.c does the rest. */
#ifndef AE_FWD_H
#define AE_FWD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "access-edge/ae_txn.h"
#include "common/util.h"

/* The transport and port a Request-URI names: sips or transport=tls is TLS (5061 by default),
 * transport=tcp TCP, else UDP (5060). */
uint8_t ae_fwd_uri_transport(bool tcp, bool tls, uint16_t port, uint16_t *port_out);

/* What the transaction table says about a request. */
enum ae_gate {
    AE_GATE_FORWARD = 0,    /* not INVITE/CANCEL/ACK: forward (track it as a non-INVITE) */
    AE_GATE_FORWARD_ACK,    /* ACK: forward, nothing to track */
    AE_GATE_ABSORB_ACK,     /* the ACK of a final answer the edge made itself: ends here */
    AE_GATE_NEW_INVITE,     /* a new INVITE: add a transaction, answer 100, forward */
    AE_GATE_INVITE_RETRANS, /* a retransmitted INVITE: answer 100 again, nothing else */
    AE_GATE_DRAINING,       /* a new INVITE while draining: 503 */
    AE_GATE_CANCEL_UNKNOWN, /* a CANCEL matching no INVITE: 481 */
    AE_GATE_CANCEL_DONE,    /* a CANCEL for a finished or cancelled INVITE: 200 here only */
    AE_GATE_CANCEL_FORWARD, /* a CANCEL for a live INVITE: 200 here, then cancel its branch */
};
enum ae_method { AE_M_OTHER = 0, AE_M_INVITE, AE_M_CANCEL, AE_M_ACK };
enum ae_gate ae_fwd_gate(enum ae_method method, const struct ae_txn *t, bool draining);

/* The lines the edge inserts into a forwarded request, in this order: our Via (with
 * ;alias for a partner connection and ;ae-th=seal when hiding the inside's Vias), the Route
 * lines kept from outside, the rewritten Contacts (hiding), the Record-Route lines, a Path
 * for a REGISTER from outside, the trust marking. Unset slices add nothing. */
struct ae_fwd_ins {
    const char *via_tp;   /* "UDP", "TCP", "TLS", "WS", "WSS" */
    const char *via_host; /* host:port */
    const char *branch;
    bool alias;
    const char *seal; /* NULL: not hiding */
    struct slice routes, contacts, record_route, trust;
    const char *path_tok, *path_uri; /* both set: "Path: <sip:tok@uri>" */
};
/* Writes them to out. Returns the length, or -ENOSPC when they do not fit in cap. */
ssize_t ae_fwd_build_ins(const struct ae_fwd_ins *in, char *out, size_t cap);

/* The two Record-Route lines of an edge that is not hiding anything: first (the interface
 * facing the next hop) on top, each carrying flow token tok when there is one. Returns the
 * length or -ENOSPC. */
ssize_t ae_fwd_record_route(const char *tok, const char *first, const char *second, char *out,
                            size_t cap);

#endif
