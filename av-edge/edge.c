/* av-edge's state: created and freed, the TLS listeners' context, the lab's static secret,
 * and the swap that commits a reload. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "av-edge/edge.h"
#include "common/crypto.h"
#include "common/tls_files.h"

int av_edge_new(struct daemon *d, const struct av_config *c, struct av_edge **out)
{
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
    if (rc) {
        av_edge_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

void av_edge_free(struct av_edge *e)
{
    av_runtime_free(e->rt);
    av_shared_fini(&e->sh);
    tls_ctx_unref(e->tls);
    acme_edge_free(e->acme);
    free(e->threads);
    free(e);
}

/* Installs the config's static secret under an id derived from its value, so a reload that
 * changes it rotates (the old one stays valid as the previous key). */
void av_edge_set_config_secret(struct av_edge *e, const char *secret)
{
    uint8_t h[SHA1_LEN];
    char id[TOKEN_KEYID_MAX];
    crypto_hmac_sha1("av-edge", 7, secret, strlen(secret), h);
    snprintf(id, sizeof(id), "config-%02x%02x%02x%02x", h[0], h[1], h[2], h[3]);
    av_shared_set_secret(&e->sh, id, secret, strlen(secret), 0);
}

int av_edge_tls_build(struct av_edge *e, const struct av_config *c, struct tls_ctx **out)
{
    *out = NULL;
    if (!c->external.n_tls_listen && !c->internal.n_tls_listen)
        return 0;
    char err[256] = "";
    struct tls_files_config files;
    acme_edge_tls_files(&c->acme, &c->tls, &files);
    int rc = tls_files_ctx(out, &files,
                           &(struct tls_files_use){.server = true,
                                                   .self_signed_name = "av-edge",
                                                   .acme = acme_edge_store(e->acme)},
                           err, sizeof(err));
    if (rc)
        LOGE(daemon_logger(e->d), NULL, "TLS: %s", err[0] ? err : strerror(-rc));
    return rc;
}

void av_edge_swap_config(struct av_edge *e, const struct av_config *n, struct av_runtime *rt,
                         struct tls_ctx *tls)
{
    const struct av_config *o = e->cfg;
    if (tls) {
        av_worker_set_tls(e->w0, tls);
        tls_ctx_unref(e->tls);
        e->tls = tls;
    }
    /* The old settings stay allocated until exit: a worker thread may be reading them. */
    rt->older = e->rt;
    e->rt = rt;
    e->cfg = n;
    if (n->auth.secret && !n->director.enabled &&
        (!o->auth.secret || strcmp(n->auth.secret, o->auth.secret) != 0))
        av_edge_set_config_secret(e, n->auth.secret);
    av_threads_set_runtime(e, rt);
}
