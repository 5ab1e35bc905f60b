/* The framing between conf-edge and a conferencing server over the mutual-TLS connection
 * the server dialed in: many client streams share it (pure codec: no I/O; fuzzed).
 *
 * Every frame: an 8-byte header, then `length` payload bytes.
 *   byte 0     type (enum ce_mux_type)
 *   byte 1     flags (0; receivers ignore unknown bits)
 *   bytes 2-3  payload length, big-endian (at most CE_MUX_PAYLOAD_MAX)
 *   bytes 4-7  stream id, big-endian (0 for connection-level frames: HELLO, PING, PONG)
 * conf-edge/README.md describes the exchange (HELLO first, credit-based flow control). */
#ifndef CONF_EDGE_MUX_H
#define CONF_EDGE_MUX_H

#include "common/util.h"
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CE_MUX_HDR 8
#define CE_MUX_PAYLOAD_MAX 32768 /* decoders refuse more */
#define CE_MUX_DATA_MAX 16384    /* senders cut DATA at this size */
/* A DATA frame with this payload fills one 16 KiB TLS record exactly: bulk senders use it
 * so the receiver decrypts one record per frame, not a full one and a tiny one. */
#define CE_MUX_DATA_RECORD (16384 - CE_MUX_HDR)
#define CE_MUX_VERSION 1
#define CE_MUX_STR_MAX 255
#define CE_MUX_FRAME_MAX (CE_MUX_HDR + CE_MUX_PAYLOAD_MAX)

enum ce_mux_type {
    CE_MUX_HELLO = 1,  /* both ways, first frame: version, initial per-stream window, name */
    CE_MUX_OPEN = 2,   /* edge -> server: a new admitted client (who, which conference) */
    CE_MUX_DATA = 3,   /* both ways: stream bytes; counts against the receiver's window */
    CE_MUX_SHUT = 4,   /* both ways: the sender sends no more DATA on this stream (half-close) */
    CE_MUX_CLOSE = 5,  /* both ways: the stream is gone (payload: a reason text) */
    CE_MUX_WINDOW = 6, /* both ways: u32 more bytes of DATA the sender of WINDOW accepts */
    CE_MUX_PING = 7,   /* both ways, stream 0: u64 echoed in PONG */
    CE_MUX_PONG = 8,
};

struct ce_mux_frame {
    uint8_t type, flags;
    uint32_t stream;
    struct slice payload; /* points into the decoded input */
};

/* Splits one frame off the front of p. Returns bytes used, -EAGAIN if incomplete, -EMSGSIZE
 * if the length exceeds CE_MUX_PAYLOAD_MAX, or -EBADMSG for an unknown type, a stream id
 * that does not fit the type, or a fixed-size payload of the wrong size. */
ssize_t ce_mux_decode(const uint8_t *p, size_t len, struct ce_mux_frame *f);

/* Writes the 8-byte header for a frame with a payload of len bytes. */
void ce_mux_put_header(uint8_t out[CE_MUX_HDR], enum ce_mux_type type, uint32_t stream, size_t len);
/* Writes a whole frame into out: returns its length, -ENOSPC if cap is too small, or
 * -EMSGSIZE if len exceeds CE_MUX_PAYLOAD_MAX. */
ssize_t ce_mux_encode(uint8_t *out, size_t cap, enum ce_mux_type type, uint32_t stream,
                      const void *payload, size_t len);

struct ce_mux_hello {
    uint16_t version;
    uint32_t window; /* initial window for every stream, in bytes */
    struct slice name;
};
ssize_t ce_mux_encode_hello(uint8_t *out, size_t cap, const struct ce_mux_hello *h);
int ce_mux_decode_hello(struct slice payload, struct ce_mux_hello *h);

/* OPEN's payload: five strings, each a length byte then the bytes, in this order. */
struct ce_mux_open {
    struct slice client; /* "203.0.113.5:50123" or "[2001:db8::1]:443" */
    struct slice conf;   /* conference id */
    struct slice user;   /* participant */
    struct slice role;   /* "attendee", "presenter", ... */
    struct slice key_id; /* the key's unique id (jti), for revocations */
};
ssize_t ce_mux_encode_open(uint8_t *out, size_t cap, uint32_t stream, const struct ce_mux_open *o);
/* -EBADMSG if the strings do not fill the payload exactly. */
int ce_mux_decode_open(struct slice payload, struct ce_mux_open *o);

ssize_t ce_mux_encode_window(uint8_t *out, size_t cap, uint32_t stream, uint32_t increment);
uint32_t ce_mux_window_increment(const struct ce_mux_frame *f); /* f is a decoded WINDOW */
ssize_t ce_mux_encode_ping(uint8_t *out, size_t cap, enum ce_mux_type type, uint64_t v);
uint64_t ce_mux_ping_value(const struct ce_mux_frame *f);

const char *ce_mux_type_name(uint8_t type);

/* The reader every end of a mux link shares: appends data (len bytes) to in, then hands
 * each whole frame to cb in order and consumes it. cb returns 0 to go on, 1 to stop (the
 * link is gone), or a negative errno to fail. Returns 0, -ENOBUFS when in cannot hold the
 * data, or -EPROTO for a frame that does not decode or that cb refused; then *bad (if not
 * NULL) is the frame's type, or 0 when it did not decode. */
typedef int (*ce_mux_frame_cb)(void *arg, const struct ce_mux_frame *f);
int ce_mux_feed(struct buf *in, const uint8_t *data, size_t len, ce_mux_frame_cb cb, void *arg,
                int *bad);

#endif
