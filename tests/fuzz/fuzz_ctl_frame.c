// fuzz-sources: common/ctl_codec.c common/util.c build/gen/proto/control.pb-c.c
/* Fuzzes the control-channel frame decoder: whatever decodes must re-encode to a frame
 * that decodes to the same message, and splitting a buffer into frames must terminate. */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/ctl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An owned copy, so reads past the end are caught by ASan. */
    uint8_t *in = malloc(size ? size : 1);
    if (!in)
        return 0;
    if (size)
        memcpy(in, data, size);
    struct ctl_msg *m = malloc(sizeof *m), *back = malloc(sizeof *back);
    uint8_t *frame = malloc(CTL_FRAME_MAX + 4);
    size_t off = 0;
    for (int frames = 0; frames < 64 && off < size; frames++) {
        ssize_t n = ctl_frame_decode(in + off, size - off, m);
        if (n < 0) {
            assert(n == -EAGAIN || n == -EMSGSIZE || n == -EBADMSG);
            break;
        }
        assert(n >= 4 && (size_t)n <= size - off);
        off += (size_t)n;
        ssize_t w = ctl_frame_encode(m, frame, CTL_FRAME_MAX + 4);
        assert(w > 0);
        memset(back, 0x5a, sizeof *back);
        assert(ctl_frame_decode(frame, (size_t)w, back) == w);
        assert(memcmp(m, back, sizeof *m) == 0);
    }
    free(frame);
    free(back);
    free(m);
    free(in);
    return 0;
}
