/* access-edge's TLS contexts from a config generation: built the same way at start and on
 * every reload (SIGHUP, a renewed certificate), so new handshakes use the new certificates
 * while established connections keep theirs. */
#ifndef AE_RELOAD_H
#define AE_RELOAD_H

#include "access-edge/ae.h"
#include "common/log.h"
#include "common/tls.h"

/* Which context serves what. */
enum ae_tls_role {
    AE_TLS_EXT,        /* external TLS and WSS listeners: server auth for remote users */
    AE_TLS_EXT_MTLS,   /* external mutual-TLS listeners (federated partners) */
    AE_TLS_INT_SERVER, /* internal listeners */
    AE_TLS_INT_CLIENT, /* toward the Director (next_hop over TLS) */
    AE_TLS_EXT_CLIENT, /* toward federated partners */
    AE_TLS_COUNT
};

/* Builds every context cfg needs; on success drops those in ctx[] and puts the new ones
 * there (NULL where cfg needs none). On failure ctx[] is untouched and the reason logged.
 * The external server contexts answer ACME TLS-ALPN-01 from acme (or NULL); with acme:
 * enabled, the external side's certificate is acme's. */
int ae_tls_build(const struct ae_config *cfg, const struct logger *log,
                 struct acme_challenges *acme, struct tls_ctx **const ctx[AE_TLS_COUNT]);

#endif
