// fuzz-sources: common/tls.c common/tls_shared.c common/tls_sniff.c common/certname.c common/util.c common/acme_challenges.c
/* Fuzzes the ClientHello peek (tls_peek_sni, tls_peek_alpn, tls_looks_like_client_hello)
 * and a server tls_conn fed the same bytes as its first flight (SNI, ALPN, ticket and cache
 * lookups, and ACME TLS-ALPN-01: the server has a challenge for "fuzz.lab").
 * An input starting with 0xff is instead fed to an established server connection after a
 * real record (resumed handshake with an in-process client): the record layer and the
 * release and retake of idle record buffers. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/acme_challenges.h"
#include "common/tls.h"
#include "common/tls_shared.h"

/* A TLS-ALPN-01 challenge certificate for fuzz.lab (openssl req, valid 100 years). */
static const char challenge_crt[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBxjCCAW2gAwIBAgIUAJXESkLpg6rF9M/Z/YOLa4C1wHcwCgYIKoZIzj0EAwIw\n"
    "EzERMA8GA1UEAwwIZnV6ei5sYWIwIBcNMjYxMjA3MTM0NTU0WhgPMjEyNjExMTMx\n"
    "MzQ1NTRaMBMxETAPBgNVBAMMCGZ1enoubGFiMFkwEwYHKoZIzj0CAQYIKoZIzj0D\n"
    "AQcDQgAEWMf7mAEsWfDQ8YREdlr4Jxrw3aJ1tjqivDTENrCf2AI53StY3/Icefvr\n"
    "zCtcBKzLmxRi/U0BAozN0uZmF/vaSaOBnDCBmTAdBgNVHQ4EFgQUgt7iRe55X+Pk\n"
    "frJQ/O6llKXHfiYwHwYDVR0jBBgwFoAUgt7iRe55X+PkfrJQ/O6llKXHfiYwDwYD\n"
    "VR0TAQH/BAUwAwEB/zATBgNVHREEDDAKgghmdXp6LmxhYjAxBggrBgEFBQcBHwEB\n"
    "/wQiBCAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAATAKBggqhkjOPQQD\n"
    "AgNHADBEAiAcPngsRPiDaB4th2TW935opRSdUUbtaSQB8E7s+WEzuQIgXL7DiJnL\n"
    "I/9oFrKyd8g479gu2aiK5pUVEa/wEfef6nY=\n"
    "-----END CERTIFICATE-----\n";
static const char challenge_key[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgnFteSh3WF9BpgaQm\n"
    "qKiJn21LH3697IQ50x6JJteIhZuhRANCAARYx/uYASxZ8NDxhER2WvgnGvDdonW2\n"
    "OqK8NMQ2sJ/YAjndK1jf8hx5++vMK1wErMubFGL9TQECjM3S5mYX+9pJ\n"
    "-----END PRIVATE KEY-----\n";

/* Built once: a self-signed server with SNI, ALPN, tickets, a cache and an ACME challenge
 * store, like an edge. */
static struct tls_ctx *server(void)
{
    static struct tls_ctx *ctx;
    static struct acme_challenges *store;
    if (!ctx) {
        static const char *alpn[] = {"h2", "http/1.1", "sip", NULL};
        if (acme_challenges_create(&store) != 0 ||
            acme_challenges_set_alpn(store, "fuzz.lab", challenge_crt, challenge_key, INT64_MAX) !=
                0)
            abort();
        struct tls_opts o = {.server = true,
                             .self_signed_name = "fuzz.lab",
                             .alpn = alpn,
                             .session_tickets = true,
                             .session_cache_size = 64,
                             .acme = store};
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
    uint8_t alpn[1024];
    ssize_t an = tls_peek_alpn(copy, size, alpn, sizeof alpn);
    if (an > 0 && tls_alpn_list_check(alpn, (size_t)an) < 1)
        abort();
    if (an > 0)
        (void)tls_alpn_only(alpn, (size_t)an, "acme-tls/1");

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
