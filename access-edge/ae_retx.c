/* INVITE retransmission timers (see ae_retx.h). */
#include "access-edge/ae_retx.h"

#include <stdlib.h>
#include <string.h>

struct ae_retx *ae_retx_new(uint64_t key, const struct ae_dest *d, const void *data, size_t len,
                            bool response, uint64_t now_ms)
{
    struct ae_retx *r = malloc(sizeof(*r) + len);
    if (!r)
        return NULL;
    r->link.prev = r->link.next = NULL;
    r->key = key;
    r->dest = *d;
    r->started_ms = now_ms;
    r->interval_ms = AE_RETX_T1_MS;
    r->next_ms = now_ms + AE_RETX_T1_MS;
    r->reliable = d->tp != 0; /* anything but UDP */
    r->response = response;
    r->trying_ms = response ? 0 : now_ms + AE_RETX_TRYING_MS;
    r->len = len;
    memcpy(r->data, data, len);
    return r;
}

enum ae_retx_step ae_retx_step(struct ae_retx *r, uint64_t now_ms)
{
    if (now_ms - r->started_ms >= AE_RETX_TIMER_B_MS)
        return AE_RETX_GIVE_UP;
    if (r->reliable || now_ms < r->next_ms)
        return AE_RETX_WAIT;
    /* Timer A doubles with no T2 cap for INVITE: 0.5, 1, 2, 4, 8, 16 s; Timer G for a final
     * answer stops at T2: 0.5, 1, 2, 4, 4, ... s. */
    r->interval_ms *= 2;
    if (r->response && r->interval_ms > AE_RETX_T2_MS)
        r->interval_ms = AE_RETX_T2_MS;
    r->next_ms = now_ms + r->interval_ms;
    return AE_RETX_SEND;
}

bool ae_retx_trying_due(struct ae_retx *r, bool answered, uint64_t now_ms)
{
    if (!r->trying_ms || answered) {
        r->trying_ms = 0;
        return false;
    }
    if (now_ms < r->trying_ms)
        return false;
    r->trying_ms = 0;
    return true;
}
