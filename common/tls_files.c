/* Certificate files to a TLS context: see tls_files.h. */
#include "common/tls_files.h"

int tls_files_ctx(struct tls_ctx **out, const struct tls_files_config *f,
                  const struct tls_files_use *u, char *err, size_t errcap)
{
    struct tls_cert_opts co = {f->cert, f->key};
    struct tls_opts o = {
        .server = u->server,
        .certs = f->cert ? &co : NULL,
        .ncerts = f->cert ? 1 : 0,
        .self_signed_name = u->self_signed_name,
        .ca_file = f->ca,
        .verify_peer = u->verify_peer,
        .alpn = u->alpn,
        .handshake_timeout_ms = u->handshake_timeout_ms,
        .session_tickets = true,
        .acme = u->server ? u->acme : NULL,
    };
    return tls_ctx_create(out, &o, err, errcap);
}
