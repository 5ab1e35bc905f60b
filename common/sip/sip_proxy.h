/* Proxy message surgery (RFC 3261 §16.6, §16.7): build the forwarded request or response
 * by splicing lines into the received bytes instead of re-serializing, build the edge's own
 * replies, compute branch IDs, and encode flow tokens. Pure: no I/O. */
#ifndef AE_SIP_PROXY_H
#define AE_SIP_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/addr.h"
#include "common/sip/sip_msg.h"

/* Branch IDs: "z9hG4bK" + 16 hex digits of a keyed hash of the incoming transaction (the
 * top Via's branch and sent-by), so retransmissions, the ACK of a non-2xx and a CANCEL map
 * to the branch of the INVITE they belong to (a stateless proxy's rule, RFC 3261 §16.11),
 * then "." and the id of the connection the request came on (0 for UDP), so the response
 * finds its way back without state. */
#define SIP_BRANCH_MAX 48
uint64_t sip_branch_hash(uint64_t salt, const struct sip_msg *m);
/* Writes the branch for hash h and connection conn_id; returns its length. */
size_t sip_branch_format(uint64_t h, uint32_t conn_id, char out[SIP_BRANCH_MAX]);
/* Parses one of our branches; false if it is not ours. */
bool sip_branch_parse(struct slice branch, uint64_t *h, uint32_t *conn_id);

/* A flow (RFC 5626): how to reach a remote user again, carried in the user part of our
 * Path and Record-Route URIs, authenticated by a truncated HMAC so it cannot be forged. */
struct sip_flow {
    bool stream; /* TCP/TLS connection conn_id; else UDP to addr */
    uint32_t conn_id;
    struct addr addr; /* the peer's address (UDP destination; for streams, a check) */
};
#define SIP_FLOW_KEY_LEN 32
#define SIP_FLOW_TOKEN_MAX 96
int sip_flow_encode(const uint8_t key[SIP_FLOW_KEY_LEN], const struct sip_flow *f, char *out,
                    size_t cap);
int sip_flow_decode(const uint8_t key[SIP_FLOW_KEY_LEN], struct slice tok, struct sip_flow *f);

/* What to change on a forwarded request. */
struct sip_fwd_opts {
    struct slice insert;    /* lines to put right after the start line (our Via first,
                             * then Record-Route, Path, trust), each ending in CRLF */
    unsigned pop_routes;    /* our own Route entries to remove from the top */
    const struct addr *src; /* non-NULL: add received (and rport if asked) to the top Via */
    uint32_t drop;          /* SIP_HDR_BITs of received headers to leave out: the trust
                             * marking; for topology hiding also Via, Record-Route, Contact,
                             * whose replacements are in insert */
    struct slice ruri;      /* non-empty: the new Request-URI (a registrar's retarget) */
};

/* Forwarded request into out; Max-Forwards is decremented. Returns the length or -ENOSPC. */
ssize_t sip_fwd_request(const struct sip_msg *m, const struct sip_fwd_opts *o, uint8_t *out,
                        size_t cap);
/* Forwarded response: our top Via value removed, `insert` added after the status line,
 * headers whose SIP_HDR_BIT is in drop left out. Returns the length or -ENOSPC. */
ssize_t sip_fwd_response(const struct sip_msg *m, struct slice insert, uint32_t drop, uint8_t *out,
                         size_t cap);
/* The edge's own response to request m: Via/From/To/Call-ID/CSeq copied (a To tag added
 * for status > 100 if absent), then `extra` lines (Warning, Allow, ...), Content-Length 0. */
ssize_t sip_reply_make(const struct sip_msg *m, int status, const char *phrase, const char *to_tag,
                       struct slice extra, uint8_t *out, size_t cap);
/* The same for a request that came from src: its top Via gets received (and rport's value
 * when it asked for one), as on a forwarded request (RFC 3261 §18.2.1, RFC 3581 §4), so
 * the answer reads the same whether the edge or the next hop made it. */
ssize_t sip_reply_make_src(const struct sip_msg *m, const struct addr *src, int status,
                           const char *phrase, const char *to_tag, struct slice extra, uint8_t *out,
                           size_t cap);

/* Where a response goes: the sent-by of the Via value after ours, with received/rport
 * (RFC 3261 §18.2.2, RFC 3581). Returns 0 or -EINVAL (no second Via or a name, not an
 * address: we never resolve names for responses). */
int sip_response_next_hop(const struct sip_msg *m, struct addr *to);

/* The same for the k-th Via value (0 = top). */
int sip_response_hop_at(const struct sip_msg *m, unsigned k, struct addr *to);

/* Topology hiding: seals text (the Via lines of a request going out) into a token of
 * base64url characters (nonce, HMAC-SHA256 keystream, 96-bit tag) and opens it again.
 * Returns the length written or -ENOSPC / -EACCES (tampered). */
ssize_t sip_seal(const uint8_t key[SIP_FLOW_KEY_LEN], uint64_t nonce, struct slice text, char *out,
                 size_t cap);
ssize_t sip_unseal(const uint8_t key[SIP_FLOW_KEY_LEN], struct slice token, uint8_t *out,
                   size_t cap);

/* The top Via's branch parameter (empty slice if none). */
struct slice sip_top_branch(const struct sip_msg *m);

#endif
