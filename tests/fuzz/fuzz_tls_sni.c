// fuzz-sources: common/tls.c common/util.c
/* Fuzzes the ClientHello peek (tls_peek_sni, tls_looks_like_client_hello) and a server
 * tls_conn fed the same bytes as its first flight (SNI, ALPN, ticket and cache lookups). */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/tls.h"

/* Built once: a self-signed server with SNI, ALPN, tickets and a cache, like an edge. */
static struct tls_ctx *server(void)
{
    static struct tls_ctx *ctx;
    if (!ctx) {
        static const char *alpn[] = {"h2", "http/1.1", "sip", NULL};
        struct tls_opts o = {.server = true,
                             .self_signed_name = "fuzz.lab",
                             .alpn = alpn,
                             .session_tickets = true,
                             .session_cache_size = 64};
        char err[256];
        if (tls_ctx_create(&ctx, &o, err, sizeof err) != 0)
            abort();
    }
    return ctx;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    (void)tls_looks_like_client_hello(copy, size);
    char name[256];
    ssize_t sn = tls_peek_sni(copy, size, name, sizeof name);
    if (sn > 0 && strlen(name) != (size_t)sn)
        abort();

    struct tls_conn *c;
    if (tls_conn_create(&c, server(), NULL) != 0) {
        free(copy);
        return 0;
    }
    /* Feed in two pieces so partial records are exercised too. */
    size_t half = size / 2;
    uint8_t out[512];
    size_t parts[2][2] = {{0, half}, {half, size - half}};
    for (int i = 0; i < 2; i++) {
        if (tls_conn_feed(c, copy + parts[i][0], parts[i][1]) != 0)
            break;
        ssize_t r;
        while ((r = tls_conn_read(c, out, sizeof out)) > 0)
            ;
        const uint8_t *p;
        size_t n = tls_conn_pending(c, &p);
        tls_conn_consume(c, n);
        if (r != -EAGAIN)
            break;
    }
    (void)tls_conn_sni(c);
    (void)tls_conn_alpn(c);
    (void)tls_conn_error(c);
    tls_conn_destroy(c);
    free(copy);
    return 0;
}
