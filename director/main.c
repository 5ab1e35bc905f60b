/* The Director daemon: the control-plane hub for the edges (director/hub.c) and, later,
 * the registrar, the credential endpoint and the conferencing stub. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/tls_files.h"
#include "director/director.h"

/* Modules beyond the hub: each adds one line here (see director/director.h). */
struct director_module {
    const char *name;
    int (*start)(struct director *d);
    void (*stop)(struct director *d);
};
static const struct director_module director_modules[] = {
    {"registrar", registrar_start, registrar_stop},
    {"confserver", confserver_start, confserver_stop},
    {"credentials", credentials_start, credentials_stop},
    {"acme", acme_start, acme_stop},
};

static int director_tls_create(const struct director_config *cfg, const struct logger *lg,
                               struct tls_ctx **out)
{
    /* mutual TLS: every edge shows a certificate our CA signed */
    struct tls_files_use u = {.server = true, .verify_peer = true};
    char err[256] = "";
    int rc = tls_files_ctx(out, &cfg->tls, &u, err, sizeof err);
    if (rc)
        LOGE(lg, NULL, "director: control-channel TLS: %s", err[0] ? err : strerror(-rc));
    return rc;
}

static void director_free(void *arg)
{
    struct director *d = arg;
    tls_ctx_unref(d->ctl_tls);
    memset(&d->relay_keys, 0, sizeof d->relay_keys);
    memset(&d->conf_keys, 0, sizeof d->conf_keys);
    free(d);
}

static void director_stop(struct daemon *dm, void *state)
{
    struct director *d = state;
    for (size_t i = ARRAY_SIZE(director_modules); i-- > 0;)
        if (director_modules[i].stop)
            director_modules[i].stop(d);
    hub_stop(d, director_free, d);
}

static int director_start(struct daemon *dm, const void *cfg, void **state)
{
    struct director *d = calloc(1, sizeof *d);
    if (!d)
        return -ENOMEM;
    d->daemon = dm;
    d->loop = daemon_loop(dm);
    d->log = daemon_logger(dm);
    d->metrics = daemon_metrics(dm);
    d->admin = daemon_admin(dm);
    d->cfg = cfg;
    int rc = director_tls_create(d->cfg, d->log, &d->ctl_tls);
    if (rc) {
        free(d);
        return rc;
    }
    rc = hub_start(d);
    if (rc) {
        tls_ctx_unref(d->ctl_tls);
        free(d);
        return rc;
    }
    for (size_t i = 0; i < ARRAY_SIZE(director_modules); i++) {
        if (!director_modules[i].start)
            continue;
        rc = director_modules[i].start(d);
        if (rc) {
            LOGE(d->log, NULL, "director: module %s failed to start: %s", director_modules[i].name,
                 strerror(-rc));
            while (i-- > 0)
                if (director_modules[i].stop)
                    director_modules[i].stop(d);
            hub_stop(d, director_free, d);
            return rc;
        }
    }
    *state = d;
    return 0;
}

static int director_reload(struct daemon *dm, void *state, const void *new_cfg)
{
    struct director *d = state;
    const struct director_config *n = new_cfg;
    struct tls_ctx *tls = NULL;
    int rc = director_tls_create(n, d->log, &tls);
    if (rc)
        return rc; /* keep the old config and certificates */
    ctl_server_set_tls(d->ctl, tls);
    tls_ctx_unref(d->ctl_tls);
    d->ctl_tls = tls;
    d->cfg = n;
    d->log = daemon_logger(dm);
    hub_reload(d);
    return 0;
}

static void director_drain(struct daemon *dm, void *state)
{
    /* Nothing is in flight on the Director's side: the edges reconnect to another one. */
    daemon_drained(dm);
}

static const struct daemon_ops director_ops = {
    .name = "director",
    .summary = "control-plane hub for the edges: registry, shared secrets, reports",
    .default_config = "deploy/config/director.yaml",
    .keys = director_config_keys,
    .config_size = sizeof(struct director_config),
    .validate = director_config_validate,
    .start = director_start,
    .reload = director_reload,
    .drain = director_drain,
    .stop = director_stop,
};

int main(int argc, char **argv)
{
    return daemon_main(argc, argv, &director_ops);
}
