/* The conferencing data edge at run time: the external TLS listener for participants, the
 * internal mutual-TLS listener conferencing servers dial into, admission, and the relay
 * between the two over the mux framing (common/mux.h). Runs on one libuv loop. */
#ifndef CONF_EDGE_EDGE_H
#define CONF_EDGE_EDGE_H

#include "common/log.h"
#include "common/metrics.h"
#include "conf-edge/config.h"
#include <uv.h>

struct ce_edge;

struct ce_edge_stats {
    uint64_t clients;     /* client connections open, in every state */
    uint64_t relaying;    /* admitted and bound to a server */
    uint64_t servers;     /* conferencing servers connected (HELLO done) */
    uint64_t conferences; /* conferences with at least one admitted client */
    uint64_t bytes_up, bytes_down;
    uint64_t refused;
};

/* Binds both listeners and starts. cfg, log, m and acme (the ACME challenges the
 * participants' listener answers, or NULL) must outlive the edge (cfg until the next
 * ce_edge_reload). Returns 0 or a negative errno; err gets a message. */
int ce_edge_start(uv_loop_t *loop, const struct ce_config *cfg, const struct logger *log,
                  struct metrics *m, struct acme_challenges *acme, struct ce_edge **out, char *err,
                  size_t errcap);
/* Takes a new config: new certificates, limits and timeouts apply to new connections.
 * -EINVAL (keeping the old one) if a listen address changed: that needs a restart. */
int ce_edge_reload(struct ce_edge *e, const struct ce_config *cfg);
/* Installs a conference-key signing secret (from the Director or the lab config); the
 * previous one keeps verifying. */
int ce_edge_set_key(struct ce_edge *e, const char *id, const void *secret, size_t len,
                    int64_t not_after);
/* Revokes a key (jti) or a user until `until` and closes the matching live sessions. */
void ce_edge_revoke(struct ce_edge *e, const char *jti, const char *user, int64_t until);
/* Stops accepting; done(arg) runs once the last client session has ended. */
void ce_edge_drain(struct ce_edge *e, void (*done)(void *arg), void *arg);
/* Closes everything; the edge frees itself once every handle is closed. */
void ce_edge_stop(struct ce_edge *e);
void ce_edge_get_stats(const struct ce_edge *e, struct ce_edge_stats *out);
/* 0 when healthy; else why (no signing key yet). */
int ce_edge_health(const struct ce_edge *e, char *why, size_t cap);

#endif
