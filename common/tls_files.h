/* The one mapping from a config's certificate files (struct tls_files_config) to a TLS
 * context, used by every daemon at start and on every reload, for its listeners, its
 * outbound links and its control channel: a reload builds new contexts from the new files,
 * new handshakes use them, and established connections keep the context they started with. */
#ifndef COMMON_TLS_FILES_H
#define COMMON_TLS_FILES_H

#include "common/daemon.h"
#include "common/tls.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How the endpoint uses the files. */
struct tls_files_use {
    bool server;
    /* Server: require a client certificate from f->ca (mutual TLS). Client: verify the
     * server against f->ca. */
    bool verify_peer;
    const char *self_signed_name;  /* server without f->cert: a self-signed one for this name */
    uint32_t handshake_timeout_ms; /* 0: stream.c's default */
    const char *const *alpn;       /* NULL-terminated, or NULL */
    struct acme_challenges *acme;  /* server: TLS-ALPN-01 answers (tls_opts.acme), or NULL */
};

/* Builds a context (session tickets on) from f; err says why not. */
int tls_files_ctx(struct tls_ctx **out, const struct tls_files_config *f,
                  const struct tls_files_use *u, char *err, size_t errcap);

#endif
