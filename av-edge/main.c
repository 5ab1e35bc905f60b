/* av-edge: the STUN/TURN media relay of the edge suite (daemon wiring: config, workers,
 * TLS, metrics, reload, drain). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "av-edge/av.h"
#include "common/crypto.h"

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
    struct av_worker *w0;
    struct av_thread *threads;
    unsigned n_threads;
};

/* Installs the config's static secret under an id derived from its value, so a reload that
 * changes it rotates (the old one stays valid as the previous key). */
static void set_config_secret(struct av_edge *e, const char *secret)
{
    uint8_t h[SHA1_LEN];
    char id[TOKEN_KEYID_MAX];
    crypto_hmac_sha1("av-edge", 7, secret, strlen(secret), h);
    snprintf(id, sizeof(id), "config-%02x%02x%02x%02x", h[0], h[1], h[2], h[3]);
    av_shared_set_secret(&e->sh, id, secret, strlen(secret), 0);
}

static void thread_main(void *arg)
{
    struct av_thread *t = arg;
    uv_run(&t->loop, UV_RUN_DEFAULT);
}

static int tls_setup(struct av_edge *e, const struct av_config *c)
{
    if (!c->external.n_tls_listen && !c->internal.n_tls_listen)
        return 0;
    struct tls_cert_opts cert = {.cert_file = c->tls.cert, .key_file = c->tls.key};
    struct tls_opts o = {.server = true,
                         .certs = c->tls.cert ? &cert : NULL,
                         .ncerts = c->tls.cert ? 1 : 0,
                         .self_signed_name = "av-edge",
                         .session_tickets = true};
    char err[256] = "";
    int rc = tls_ctx_create(&e->tls, &o, err, sizeof(err));
    if (rc)
        LOGE(daemon_logger(e->d), NULL, "TLS: %s", err[0] ? err : strerror(-rc));
    return rc;
}

static void edge_free(struct av_edge *e)
{
    av_runtime_free(e->rt);
    av_shared_fini(&e->sh);
    tls_ctx_unref(e->tls);
    free(e->threads);
    free(e);
}

static void stop_threads(struct av_edge *e)
{
    for (unsigned i = 0; i < e->n_threads; i++) {
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
}

static void av_stop(struct daemon *d, void *state)
{
    struct av_edge *e = state;
    stop_threads(e);
    if (e->w0)
        av_worker_close(e->w0);
    edge_free(e);
}

static int av_start(struct daemon *d, const void *cfgp, void **state)
{
    const struct av_config *c = cfgp;
    struct av_edge *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->d = d;
    e->cfg = c;
    int rc = av_shared_init(&e->sh);
    if (rc) {
        free(e);
        return rc;
    }
    rc = av_runtime_build(c, &e->rt);
    if (rc)
        goto fail;
    if (c->auth.secret)
        set_config_secret(e, c->auth.secret);
    rc = tls_setup(e, c);
    if (rc)
        goto fail;
    av_metrics_register(&e->mx, daemon_metrics(d));
    struct av_worker_opts o = {.cfg = c, .rt = e->rt, .shared = &e->sh, .metrics = &e->mx,
                               .log = daemon_logger(d), .index = 0, .count = c->workers,
                               .streams = true, .tls = e->tls};
    rc = av_worker_create(daemon_loop(d), &o, &e->w0);
    if (rc)
        goto fail;
    e->threads = calloc(c->workers, sizeof(*e->threads));
    if (!e->threads) {
        rc = -ENOMEM;
        goto fail;
    }
    for (unsigned i = 1; i < c->workers; i++) {
        struct av_thread *t = &e->threads[e->n_threads];
        uv_loop_init(&t->loop);
        e->n_threads++;
        o.index = i;
        o.streams = false;
        rc = av_worker_create(&t->loop, &o, &t->w);
        if (rc)
            goto fail;
        rc = uv_thread_create(&t->th, thread_main, t);
        if (rc)
            goto fail;
        t->started = true;
    }
    char ra[ADDR_STRLEN];
    LOGI(daemon_logger(d), NULL, "relaying on %s ports %u-%u with %u worker(s)",
         addr_format_host(&c->relay.addresses[0], ra), c->relay.port_min, c->relay.port_max,
         c->workers);
    *state = e;
    return 0;
fail:
    stop_threads(e);
    if (e->w0)
        av_worker_close(e->w0);
    edge_free(e);
    return rc;
}

static int av_reload(struct daemon *d, void *state, const void *new_cfg)
{
    struct av_edge *e = state;
    const struct av_config *n = new_cfg, *o = e->cfg;
    /* Sockets stay as they are: listeners, relay range and workers change on restart. */
    if (n->workers != o->workers || n->relay.port_min != o->relay.port_min ||
        n->relay.port_max != o->relay.port_max)
        LOGW(daemon_logger(d), NULL, "workers and the relay port range take effect on restart only");
    struct av_runtime *rt;
    int rc = av_runtime_build(n, &rt);
    if (rc)
        return rc;
    /* The old settings stay allocated until exit: a worker thread may be reading them. */
    rt->older = e->rt;
    e->rt = rt;
    e->cfg = n;
    if (n->auth.secret && (!o->auth.secret || strcmp(n->auth.secret, o->auth.secret) != 0))
        set_config_secret(e, n->auth.secret);
    av_worker_set_runtime(e->w0, rt);
    for (unsigned i = 0; i < e->n_threads; i++)
        av_worker_set_runtime(e->threads[i].w, rt);
    return 0;
}

static void av_drain(struct daemon *d, void *state)
{
    /* Media sessions cannot be finished on demand: clients re-allocate on another edge
     * when this one goes, so there is nothing to wait for. */
    daemon_drained(d);
}

static const struct daemon_ops av_ops = {
    .name = "av-edge",
    .summary = "STUN/TURN media relay with shared-secret credentials and an internal-network guard",
    .default_config = "deploy/config/av-edge.yaml",
    .keys = av_config_keys,
    .config_size = sizeof(struct av_config),
    .validate = av_config_validate,
    .start = av_start,
    .reload = av_reload,
    .drain = av_drain,
    .stop = av_stop,
};

int main(int argc, char **argv)
{
    return daemon_main(argc, argv, &av_ops);
}
