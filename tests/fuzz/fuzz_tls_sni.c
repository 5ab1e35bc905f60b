// fuzz-sources: common/tls.c common/tls_shared.c common/tls_sniff.c common/certname.c common/util.c
/* Fuzzes the ClientHello peek (tls_peek_sni, tls_looks_like_client_hello) and a server
 * tls_conn fed the same bytes as its first flight (SNI, ALPN, ticket and cache lookups).
 * An input starting with 0xff is instead fed to an established server connection after a
 * real record (resumed handshake with an in-process client): the record layer and the
 * release and retake of idle record buffers. */
#include <errno.h>
#include <stdbool.h>
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

static struct tls_ctx *client(void)
{
    static struct tls_ctx *ctx;
    if (!ctx) {
        struct tls_opts o = {.server = false, .session_tickets = true};
        char err[256];
        if (tls_ctx_create(&ctx, &o, err, sizeof err) != 0)
            abort();
    }
    return ctx;
}

/* Moves ciphertext from a to b and lets b read; returns false once b failed. */
static bool hop(struct tls_conn *a, struct tls_conn *b)
{
    const uint8_t *p;
    size_t n = tls_conn_pending(a, &p);
    if (n && tls_conn_feed(b, p, n) != 0)
        return false;
    tls_conn_consume(a, n);
    uint8_t out[512];
    ssize_t r;
    while ((r = tls_conn_read(b, out, sizeof out)) > 0)
        ;
    return r == -EAGAIN;
}

static void after_handshake(const uint8_t *data, size_t size)
{
    struct tls_conn *c, *s;
    if (tls_conn_create(&c, client(), "fuzz.lab") != 0)
        abort();
    if (tls_conn_create(&s, server(), NULL) != 0)
        abort();
    for (int i = 0; i < 8 && !(tls_conn_handshake_done(c) && tls_conn_handshake_done(s)); i++)
        if (!hop(c, s) || !hop(s, c))
            abort();
    if (!tls_conn_handshake_done(s))
        abort();
    tls_conn_write(c, (const uint8_t *)"hello", 5);
    if (!hop(c, s))
        abort();
    size_t half = size / 2;
    if (tls_conn_feed(s, data, half) == 0 && hop(c, s) &&
        tls_conn_feed(s, data + half, size - half) == 0)
        hop(c, s);
    tls_conn_write(s, (const uint8_t *)"bye", 3);
    tls_conn_close_notify(s);
    tls_conn_destroy(c);
    tls_conn_destroy(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size && data[0] == 0xff) {
        uint8_t *copy = malloc(size);
        if (!copy)
            return 0;
        memcpy(copy, data + 1, size - 1);
        after_handshake(copy, size - 1);
        free(copy);
        return 0;
    }
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
