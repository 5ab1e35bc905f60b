/* av-edge: the STUN/TURN media relay of the edge suite. This file is the table of contents:
 * the daemon's start, reload, drain and stop sequences; the steps live in edge.c (state,
 * TLS, secrets), threads.c (the workers), director_link.c and drain.c (see edge.h), the
 * relay itself in worker.c, turn.c, alloc.c, stun.c and tcp_relay.c. */
#include "av-edge/edge.h"

static void av_stop(struct daemon *d, void *state)
{
    struct av_edge *e = state;
    av_drain_stop(e);
    av_director_stop(e);
    av_threads_stop(e);
    av_edge_free(e);
}

static int av_start(struct daemon *d, const void *cfgp, void **state)
{
    const struct av_config *c = cfgp;
    struct av_edge *e;
    int rc = av_edge_new(d, c, &e);
    if (rc)
        return rc;
    /* A config secret serves labs without a Director only: with the link enabled, the
     * Director's secrets are the only ones (a lab secret is known to all). */
    if (c->auth.secret && !c->director.enabled)
        av_edge_set_config_secret(e, c->auth.secret);
    rc = acme_edge_create(daemon_logger(d), daemon_metrics(d), &c->acme, NULL, NULL, &e->acme);
    if (rc == 0)
        rc = av_edge_tls_build(e, c, &e->tls);
    if (rc == 0) {
        av_metrics_register(&e->mx, daemon_metrics(d));
        rc = av_threads_start(e);
    }
    if (rc == 0)
        rc = av_director_start(e);
    if (rc) {
        av_stop(d, e);
        return rc;
    }
    char ra[ADDR_STRLEN];
    LOGI(daemon_logger(d), NULL, "relaying on %s ports %u-%u with %u worker(s)",
         addr_format_host(&c->relay.addresses[0], ra), c->relay.port_min, c->relay.port_max,
         c->workers);
    *state = e;
    return 0;
}

static int av_reload(struct daemon *d, void *state, const void *new_cfg)
{
    struct av_edge *e = state;
    const struct av_config *n = new_cfg;
    /* Sockets stay as they are: listeners, relay range and workers are restart-only keys
     * (common/daemon.c refused a change to them before this is called). New certificates
     * serve the next handshakes (TLS listeners and the Director link); established
     * connections keep the context they started with. */
    struct tls_ctx *tls;
    int rc = av_edge_tls_build(e, n, &tls);
    if (rc)
        return rc;
    struct av_runtime *rt = NULL;
    rc = av_director_reload(e, n);
    if (rc == 0)
        rc = av_runtime_build(n, &rt);
    if (rc) {
        tls_ctx_unref(tls);
        return rc;
    }
    av_edge_swap_config(e, n, rt, tls);
    return 0;
}

static void av_drain(struct daemon *d, void *state)
{
    av_drain_begin(state);
}

static const struct daemon_ops av_ops = {
    .name = "av-edge",
    .summary = "STUN/TURN media relay with shared-secret credentials and an internal-network guard",
    .default_config = "deploy/config/av-edge.yaml",
    .keys = av_config_keys,
    .config_size = sizeof(struct av_config),
    .validate = av_config_validate,
    .warnings = av_config_warnings,
    .start = av_start,
    .reload = av_reload,
    .drain = av_drain,
    .stop = av_stop,
};

int main(int argc, char **argv)
{
    return daemon_main(argc, argv, &av_ops);
}
