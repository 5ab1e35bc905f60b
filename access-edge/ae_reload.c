/* access-edge's TLS contexts per generation: see ae_reload.h. */
#include "access-edge/ae_reload.h"
#include "common/tls_files.h"

#include <errno.h>
#include <string.h>

int ae_tls_build(const struct ae_config *cfg, const struct logger *log,
                 struct acme_challenges *acme, struct tls_ctx **const ctx[AE_TLS_COUNT])
{
    const struct ae_side_config *ex = &cfg->external, *in = &cfg->internal;
    struct tls_files_config ext;
    acme_edge_tls_files(&cfg->acme, &ex->certs, &ext);
    /* Users' listeners (TLS, WSS) ask for no client certificate: users have none, and a
     * certificate request makes browsers abandon the WebSocket handshake (headless Chromium
     * did). Only the mutual-TLS listener names the partners' CA. */
    struct tls_files_config users = ext;
    users.ca = NULL;
    struct {
        bool needed;
        const struct tls_files_config *files;
        struct tls_files_use use;
    } want[AE_TLS_COUNT] = {
        [AE_TLS_EXT] = {ex->ntls || ex->nwss, &users, {.server = true, .acme = acme}},
        [AE_TLS_EXT_MTLS] = {ex->nmtls > 0,
                             &ext,
                             {.server = true, .verify_peer = true, .acme = acme}},
        [AE_TLS_INT_SERVER] = {in->ntls || in->nmtls,
                               &in->certs,
                               {.server = true, .verify_peer = in->nmtls > 0}},
        [AE_TLS_INT_CLIENT] = {cfg->next_hop.transport == AE_TP_TLS,
                               &in->certs,
                               {.verify_peer = true}},
        [AE_TLS_EXT_CLIENT] = {ext.cert && ext.ca, &ext, {.verify_peer = true}},
    };
    struct tls_ctx *made[AE_TLS_COUNT] = {NULL};
    for (size_t i = 0; i < AE_TLS_COUNT; i++) {
        if (!want[i].needed)
            continue;
        want[i].use.self_signed_name = cfg->fqdn;
        char err[256] = "";
        int rc = tls_files_ctx(&made[i], want[i].files, &want[i].use, err, sizeof err);
        if (rc < 0) {
            LOGE(log, NULL, "sip: TLS setup failed: %s", err[0] ? err : strerror(-rc));
            for (size_t j = 0; j < i; j++)
                tls_ctx_unref(made[j]);
            return rc;
        }
    }
    for (size_t i = 0; i < AE_TLS_COUNT; i++) {
        tls_ctx_unref(*ctx[i]);
        *ctx[i] = made[i];
    }
    return 0;
}
