/* Control channel: what both ends do with a connection's bytes. Reassembly of frames in
 * any split (decoded by ctl_codec.c), the text that says why a frame was refused or left
 * unfinished, and sending one message on a common/stream. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/ctl_int.h"
#include "common/stream.h"

void ctl_framer_init(struct ctl_framer *f)
{
    f->frames = 0;
    memset(&f->in, 0, sizeof f->in);
}

void ctl_framer_reset(struct ctl_framer *f)
{
    f->in.rd = f->in.wr = 0;
    f->frames = 0;
}

void ctl_framer_fini(struct ctl_framer *f)
{
    buf_fini(&f->in);
}

int ctl_framer_feed(struct ctl_framer *f, const uint8_t *data, size_t len, ctl_frame_cb fn,
                    void *arg, const bool *stop)
{
    /* ctl_msg is a few KiB; keep it off the stack of deep libuv callbacks. */
    if (!f->in.data && buf_init(&f->in, CTL_PREFIX + CTL_FRAME_MAX))
        return -ENOMEM;
    struct ctl_msg *m = malloc(sizeof *m);
    if (!m)
        return -ENOMEM;
    int rc = 0;
    while (len > 0 && rc == 0 && !*stop) {
        buf_compact(&f->in);
        size_t n = buf_room(&f->in) < len ? buf_room(&f->in) : len;
        buf_append(&f->in, data, n);
        data += n;
        len -= n;
        while (rc == 0 && !*stop) {
            struct slice s = buf_slice(&f->in);
            ssize_t used = ctl_frame_decode(s.p, s.len, m);
            if (used == -EAGAIN)
                break;
            if (used < 0) {
                rc = (int)used;
                break;
            }
            buf_consume(&f->in, (size_t)used);
            f->frames++;
            rc = fn(m, arg);
        }
    }
    free(m);
    return rc;
}

void ctl_framer_leftover(const struct ctl_framer *f, char *out, size_t cap)
{
    size_t have = buf_len(&f->in);
    if (have == 0) {
        snprintf(out, cap, "%s", "");
        return;
    }
    if (have < CTL_PREFIX) {
        snprintf(out, cap, "truncated frame: %zu of 4 length bytes", have);
        return;
    }
    snprintf(out, cap, "truncated frame: %zu of %u bytes", have - CTL_PREFIX,
             ctl_frame_prefix_len(f->in.data + f->in.rd));
}

void ctl_framer_error_text(int err, const struct ctl_framer *f, char *out, size_t cap)
{
    if (err == -EMSGSIZE) {
        snprintf(out, cap, "oversized frame: length %u exceeds %d",
                 ctl_frame_prefix_len(f->in.data + f->in.rd), CTL_FRAME_MAX);
    } else if (err == -EBADMSG) {
        snprintf(out, cap, "undecodable frame (frame #%zu is not a valid control message)",
                 f->frames + 1);
    } else {
        snprintf(out, cap, "%s", strerror(-err));
    }
}

int ctl_stream_send(struct stream *st, const struct ctl_msg *m)
{
    uint8_t *frame = NULL;
    ssize_t n = ctl_frame_alloc(m, &frame);
    if (n < 0)
        return (int)n;
    int rc = stream_write(st, frame, (size_t)n);
    free(frame);
    return rc < 0 ? rc : 0;
}
