/* The reverse proxy on libuv: listeners, client connections, upstream pools, and the
 * exchange that streams a request up and its response back. */
#ifndef RP_PROXY_H
#define RP_PROXY_H

#include "common/daemon.h"
#include "revproxy/config.h"

struct rp_server;

/* Starts listeners and pools for cfg on d's loop. cfg stays owned by the daemon; the
 * server keeps its own copy loaded from the same file so that requests in flight keep
 * the routes they started with after a reload. Returns 0 or a negative errno. */
int rp_server_start(struct daemon *d, const struct rp_config *cfg, struct rp_server **out);
/* Takes a new validated config: new routes, pools and certificates for new requests. */
int rp_server_reload(struct rp_server *s, const struct rp_config *cfg);
/* Stops accepting; closes idle connections; calls daemon_drained when the last goes. */
void rp_server_drain(struct rp_server *s);
/* Closes everything; frees the server once the loop has run its close callbacks. */
void rp_server_stop(struct rp_server *s);

#endif
