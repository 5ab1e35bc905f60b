/* access-edge: the SIP edge proxy between the Internet and the Director. */
#include <stdlib.h>

#include "access-edge/ae.h"
#include "common/daemon.h"

static int ae_op_start(struct daemon *d, const void *cfg, void **state)
{
    struct ae *ae;
    int rc = ae_start(daemon_loop(d), cfg, daemon_logger(d), daemon_metrics(d), daemon_admin(d),
                      &ae);
    if (rc == 0)
        *state = ae;
    return rc;
}

static int ae_op_reload(struct daemon *d, void *state, const void *cfg)
{
    return ae_reload(state, cfg);
}

static void ae_on_drained(void *arg)
{
    daemon_drained(arg);
}

static void ae_op_drain(struct daemon *d, void *state)
{
    ae_drain(state, ae_on_drained, d);
}

static void ae_op_stop(struct daemon *d, void *state)
{
    ae_stop(state);
}

static const struct daemon_ops ops = {
    .name = "access-edge",
    .summary = "SIP access edge: validates and forwards SIP between the Internet and the Director",
    .default_config = "deploy/config/access-edge.yaml",
    .keys = ae_config_keys,
    .config_size = sizeof(struct ae_config),
    .validate = ae_config_validate,
    .start = ae_op_start,
    .reload = ae_op_reload,
    .drain = ae_op_drain,
    .stop = ae_op_stop,
};

int main(int argc, char **argv)
{
    return daemon_main(argc, argv, &ops);
}
