/* revproxy: the HTTPS reverse proxy of the edge suite (see revproxy/proxy.h). */
#include "common/daemon.h"
#include "revproxy/config.h"
#include "revproxy/proxy.h"

static int rp_start(struct daemon *d, const void *cfg, void **state)
{
    struct rp_server *s;
    int rc = rp_server_start(d, cfg, &s);
    if (rc == 0)
        *state = s;
    return rc;
}

static int rp_reload(struct daemon *d, void *state, const void *cfg)
{
    (void)d;
    return rp_server_reload(state, cfg);
}

static void rp_drain(struct daemon *d, void *state)
{
    (void)d;
    rp_server_drain(state);
}

static void rp_stop(struct daemon *d, void *state)
{
    (void)d;
    rp_server_stop(state);
}

static const struct daemon_ops ops = {
    .name = "revproxy",
    .summary = "HTTPS reverse proxy for the published web services (address book, meeting "
               "content, distribution lists)",
    .default_config = "deploy/config/revproxy.yaml",
    .keys = rp_config_keys,
    .config_size = sizeof(struct rp_config),
    .validate = rp_config_validate,
    .start = rp_start,
    .reload = rp_reload,
    .drain = rp_drain,
    .stop = rp_stop,
};

int main(int argc, char **argv)
{
    return daemon_main(argc, argv, &ops);
}
