/* av-edge's drain: new allocations are refused (or redirected to a peer), the existing ones
 * are relayed until they expire or are released, and the daemon is told once none is left
 * (or its drain deadline ends it). */
#include <stdlib.h>

#include "av-edge/edge.h"

/* Allocations live in the workers' threads; their shared count says when the last one
 * has expired or been released. Polled: draining is rare and a tenth of a second late is
 * no matter, while a cross-thread wake-up on every allocation's end would be. */
#define AV_DRAIN_POLL_MS 100

static void on_drain_poll(uv_timer_t *t)
{
    struct av_edge *e = t->data;
    if (__atomic_load_n(&e->sh.allocs, __ATOMIC_RELAXED) == 0) {
        uv_timer_stop(t);
        daemon_drained(e->d);
    }
}

void av_drain_begin(struct av_edge *e)
{
    /* Refuse new allocations, keep relaying for the existing ones until they expire or
     * are released (or the drain deadline passes), and tell the Director at once so it
     * stops handing out this edge. */
    __atomic_store_n(&e->sh.draining, 1, __ATOMIC_RELAXED);
    av_director_report_now(e);
    if (__atomic_load_n(&e->sh.allocs, __ATOMIC_RELAXED) == 0) {
        daemon_drained(e->d);
        return;
    }
    LOGI(daemon_logger(e->d), NULL, "draining: %lld allocation(s) still served, no new ones",
         (long long)__atomic_load_n(&e->sh.allocs, __ATOMIC_RELAXED));
    if (!e->drain_poll) {
        e->drain_poll = malloc(sizeof *e->drain_poll);
        if (!e->drain_poll)
            return; /* the drain deadline still ends it */
        uv_timer_init(daemon_loop(e->d), e->drain_poll);
        e->drain_poll->data = e;
    }
    uv_timer_start(e->drain_poll, on_drain_poll, AV_DRAIN_POLL_MS, AV_DRAIN_POLL_MS);
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

void av_drain_stop(struct av_edge *e)
{
    if (e->drain_poll)
        uv_close((uv_handle_t *)e->drain_poll, free_handle);
    e->drain_poll = NULL;
}
