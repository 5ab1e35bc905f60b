/* av-edge's workers: worker 0 on the daemon's loop (it owns the TCP and TLS listeners), the
 * others each on a thread and loop of their own, with a slice of the relay port range. */
#include <errno.h>
#include <stdlib.h>

#include "av-edge/edge.h"

static void thread_main(void *arg)
{
    struct av_thread *t = arg;
    uv_run(&t->loop, UV_RUN_DEFAULT);
}

int av_threads_start(struct av_edge *e)
{
    const struct av_config *c = e->cfg;
    struct av_worker_opts o = {.cfg = c,
                               .rt = e->rt,
                               .shared = &e->sh,
                               .metrics = &e->mx,
                               .log = daemon_logger(e->d),
                               .index = 0,
                               .count = c->workers,
                               .streams = true,
                               .tls = e->tls};
    int rc = av_worker_create(daemon_loop(e->d), &o, &e->w0);
    if (rc)
        return rc;
    e->threads = calloc(c->workers, sizeof(*e->threads));
    if (!e->threads)
        return -ENOMEM;
    for (unsigned i = 1; i < c->workers; i++) {
        struct av_thread *t = &e->threads[e->n_threads];
        uv_loop_init(&t->loop);
        e->n_threads++;
        o.index = i;
        o.streams = false;
        rc = av_worker_create(&t->loop, &o, &t->w);
        if (rc)
            return rc;
        rc = uv_thread_create(&t->th, thread_main, t);
        if (rc)
            return rc;
        t->started = true;
    }
    return 0;
}

void av_threads_stop(struct av_edge *e)
{
    /* No array, no thread: av_threads_start failed before it or was not called. */
    for (unsigned i = 0; e->threads && i < e->n_threads; i++) {
        struct av_thread *t = &e->threads[i];
        if (t->w)
            av_worker_stop_async(t->w);
        if (t->started)
            uv_thread_join(&t->th);
        else if (t->w)
            uv_run(&t->loop, UV_RUN_DEFAULT);
        uv_loop_close(&t->loop);
    }
    e->n_threads = 0;
    if (e->w0)
        av_worker_close(e->w0);
    e->w0 = NULL;
}

void av_threads_set_runtime(struct av_edge *e, const struct av_runtime *rt)
{
    av_worker_set_runtime(e->w0, rt);
    for (unsigned i = 0; i < e->n_threads; i++)
        av_worker_set_runtime(e->threads[i].w, rt);
}

int64_t av_threads_allocations(const struct av_edge *e)
{
    int64_t allocs = av_worker_allocations(e->w0);
    for (unsigned i = 0; i < e->n_threads; i++)
        allocs += av_worker_allocations(e->threads[i].w);
    return allocs;
}
