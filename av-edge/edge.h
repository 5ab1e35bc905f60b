/* av-edge's daemon wiring, shared by main.c (the start, reload, drain and stop sequences) and
 * the modules it calls: edge.c (the edge's state, TLS, secrets, the reload's swap), threads.c
 * (the worker threads), director_link.c (the Director link) and drain.c. */
#ifndef AV_EDGE_H
#define AV_EDGE_H

#include "av-edge/av.h"
#include "av-edge/peers.h"
#include "common/ctl.h"

/* A worker on a thread of its own, with its own loop (workers 1..n-1). */
struct av_thread {
    uv_thread_t th;
    uv_loop_t loop;
    struct av_worker *w;
    bool started;
};

struct av_edge {
    struct daemon *d;
    const struct av_config *cfg;
    struct av_runtime *rt;
    struct av_shared sh;
    struct av_metrics mx;
    struct tls_ctx *tls;
    struct av_worker *w0; /* on the daemon's loop, with the stream listeners */
    struct av_thread *threads;
    unsigned n_threads;
    struct ctl_client *ctl;
    struct acme_edge *acme; /* acme: enabled: the certificate from the Director */
    uv_timer_t *drain_poll; /* while draining: exits once no allocation is left */
    struct av_peers peers;  /* the other av-edges, from the reports the Director relays */
};

/* edge.c: the edge's state. av_edge_new allocates it with the shared state and the runtime
 * settings of c; av_edge_free frees it (workers and link stopped first). */
int av_edge_new(struct daemon *d, const struct av_config *c, struct av_edge **out);
void av_edge_free(struct av_edge *e);
/* The lab's static secret, under an id derived from its value (a changed one rotates). */
void av_edge_set_config_secret(struct av_edge *e, const char *secret);
/* The TLS listeners' context from c (*out NULL without a TLS listener). */
int av_edge_tls_build(struct av_edge *e, const struct av_config *c, struct tls_ctx **out);
/* Reload's commit: n, its runtime rt and TLS context tls (NULL: keep the old one) replace
 * the running ones, in every worker. Takes tls's reference and rt. */
void av_edge_swap_config(struct av_edge *e, const struct av_config *n, struct av_runtime *rt,
                         struct tls_ctx *tls);

/* threads.c: worker 0 on the daemon's loop, the others on threads of their own. */
int av_threads_start(struct av_edge *e);
void av_threads_stop(struct av_edge *e); /* and close worker 0 */
void av_threads_set_runtime(struct av_edge *e, const struct av_runtime *rt);
int64_t av_threads_allocations(const struct av_edge *e);

/* director_link.c: secrets, revocations, peers' reports and drain requests from the
 * Director, load reports to it. Nothing without director.enabled. */
int av_director_start(struct av_edge *e);
void av_director_stop(struct av_edge *e);
int av_director_reload(struct av_edge *e, const struct av_config *n);
void av_director_report_now(struct av_edge *e);

/* drain.c: refuse new allocations, tell the daemon once the last one is gone. */
void av_drain_begin(struct av_edge *e);
void av_drain_stop(struct av_edge *e);

#endif
