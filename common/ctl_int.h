/* What the parts of the control channel share: ctl_codec.c (the only file that sees the
 * generated protobuf code), ctl_framer.c (reassembly and sending, both ends), ctl_client.c
 * (edges) and ctl_server.c (Director). Not for use outside common/ctl*.c. */
#ifndef COMMON_CTL_INT_H
#define COMMON_CTL_INT_H

#include "common/ctl.h"
#include "common/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes of the big-endian length in front of each Envelope. */
#define CTL_PREFIX 4

/* ---- ctl_codec.c ---- */

/* The Envelope length a frame's prefix announces; p holds at least CTL_PREFIX bytes. */
uint32_t ctl_frame_prefix_len(const uint8_t *p);
/* Encodes m into a malloc'd frame: returns its length and sets *out (the caller frees it),
 * or returns a negative errno as ctl_frame_encode does (or -ENOMEM) and sets *out to NULL. */
ssize_t ctl_frame_alloc(const struct ctl_msg *m, uint8_t **out);
/* False if a string of m would make the peer refuse the frame (unterminated, not UTF-8,
 * control characters): encoding fails with -EINVAL then, so a bad note costs one send
 * instead of the whole connection. */
bool ctl_msg_strings_ok(const struct ctl_msg *m);

/* ---- ctl_framer.c ---- */
struct stream;

/* Reassembly shared by both ends: bytes arrive in any split; whole frames come out.
 * The buffer holds at most one frame, so a peer cannot make us hold more. */
struct ctl_framer {
    struct buf in;
    size_t frames; /* decoded so far, for the "closed mid-frame" log */
};

typedef int (*ctl_frame_cb)(const struct ctl_msg *m, void *arg);

/* The buffer is allocated on the first byte, so connections that never get past the TLS
 * handshake cost no frame buffer. */
void ctl_framer_init(struct ctl_framer *f);
/* Forgets a partial frame (a new connection, or one closed for a bad frame). */
void ctl_framer_reset(struct ctl_framer *f);
void ctl_framer_fini(struct ctl_framer *f);
/* Feeds bytes; calls fn for each complete frame while it returns 0. Returns 0, a decode
 * error (-EMSGSIZE, -EBADMSG) or fn's error. *stop is polled after each frame: a handler
 * that closed the connection sets it. */
int ctl_framer_feed(struct ctl_framer *f, const uint8_t *data, size_t len, ctl_frame_cb fn,
                    void *arg, const bool *stop);
/* Describes what is left in the buffer when the connection ends ("" if nothing). */
void ctl_framer_leftover(const struct ctl_framer *f, char *out, size_t cap);
/* Describes an error ctl_framer_feed returned, for the log and the Goodbye. */
void ctl_framer_error_text(int err, const struct ctl_framer *f, char *out, size_t cap);
/* Encodes m and queues it on st: 0 or a negative errno (the frame's or stream_write's). */
int ctl_stream_send(struct stream *st, const struct ctl_msg *m);

#endif
