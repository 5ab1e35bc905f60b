/* tls: a client and a server tls_conn pumped into each other in memory. */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "common/acme_challenges.h"
#include "common/tls.h"

#define CERTS "build/test-certs"

/* make TLS=openssl: TLS 1.3 by default (the mbedTLS backend speaks TLS 1.2 only). */
static bool openssl_backend(void)
{
    return strncmp(tls_backend(), "OpenSSL ", 8) == 0;
}

struct side {
    struct tls_conn *c;
    uint8_t *got;
    size_t len, cap;
    ssize_t last; /* last tls_conn_read result that ended a pump round */
    bool closed;
};

struct pair {
    struct side cli, srv;
};

static int certs_setup(void **state)
{
    (void)state;
    return system("deploy/certs.sh " CERTS " >/dev/null 2>&1") == 0 ? 0 : -1;
}

static struct tls_ctx *ctx_new(const struct tls_opts *o)
{
    char err[256] = "";
    struct tls_ctx *c = NULL;
    int rc = tls_ctx_create(&c, o, err, sizeof err);
    if (rc)
        fprintf(stderr, "tls_ctx_create: %s\n", err);
    assert_int_equal(rc, 0);
    assert_non_null(c);
    return c;
}

static struct tls_ctx *server_ctx(const char *role, const char *ca, bool verify, bool tickets)
{
    char crt[128], key[128];
    snprintf(crt, sizeof crt, CERTS "/%s.crt", role);
    snprintf(key, sizeof key, CERTS "/%s.key", role);
    struct tls_cert_opts co = {crt, key};
    struct tls_opts o = {.server = true,
                         .certs = &co,
                         .ncerts = 1,
                         .ca_file = ca,
                         .verify_peer = verify,
                         .session_tickets = tickets};
    return ctx_new(&o);
}

static struct tls_ctx *client_ctx(const char *role, bool tickets)
{
    char crt[128], key[128];
    snprintf(crt, sizeof crt, CERTS "/%s.crt", role ? role : "");
    snprintf(key, sizeof key, CERTS "/%s.key", role ? role : "");
    struct tls_cert_opts co = {crt, key};
    struct tls_opts o = {.server = false,
                         .certs = role ? &co : NULL,
                         .ncerts = role ? 1 : 0,
                         .ca_file = CERTS "/ca.crt",
                         .verify_peer = true,
                         .session_tickets = tickets};
    return ctx_new(&o);
}

static void side_take(struct side *s, const uint8_t *p, size_t n)
{
    if (s->len + n > s->cap) {
        s->cap = (s->len + n) * 2;
        s->got = realloc(s->got, s->cap);
        assert_non_null(s->got);
    }
    memcpy(s->got + s->len, p, n);
    s->len += n;
}

/* Moves ciphertext from one side to the other and reads; returns true if anything moved. */
static bool step(struct side *from, struct side *to)
{
    bool moved = false;
    const uint8_t *p;
    size_t n;
    while ((n = tls_conn_pending(from->c, &p)) > 0) {
        size_t chunk = n > 7000 ? 7000 : n; /* split records across feeds */
        assert_int_equal(tls_conn_feed(to->c, p, chunk), 0);
        tls_conn_consume(from->c, chunk);
        moved = true;
        uint8_t buf[4096];
        ssize_t r;
        while ((r = tls_conn_read(to->c, buf, sizeof buf)) > 0)
            side_take(to, buf, (size_t)r);
        to->last = r;
        if (r == 0)
            to->closed = true;
        if (r != -EAGAIN && r != 0)
            return moved; /* failure: stop feeding this side */
    }
    return moved;
}

static void pump(struct pair *p)
{
    for (int i = 0; i < 10000; i++) {
        bool a = step(&p->cli, &p->srv);
        bool b = step(&p->srv, &p->cli);
        if (!a && !b)
            return;
    }
    fail_msg("pump did not settle");
}

static void pair_open(struct pair *p, struct tls_ctx *cctx, struct tls_ctx *sctx, const char *name)
{
    memset(p, 0, sizeof *p);
    p->cli.last = p->srv.last = -EAGAIN;
    assert_int_equal(tls_conn_create(&p->cli.c, cctx, name), 0);
    assert_int_equal(tls_conn_create(&p->srv.c, sctx, NULL), 0);
    pump(p);
}

static void pair_close(struct pair *p)
{
    tls_conn_destroy(p->cli.c);
    tls_conn_destroy(p->srv.c);
    free(p->cli.got);
    free(p->srv.got);
}

static void test_handshake_and_data(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("director", NULL, false, true);
    struct tls_ctx *c = client_ctx(NULL, true);
    struct pair p;
    pair_open(&p, c, s, "director");
    assert_true(tls_conn_handshake_done(p.cli.c));
    assert_true(tls_conn_handshake_done(p.srv.c));
    assert_false(tls_conn_resumed(p.cli.c));
    if (openssl_backend()) {
        assert_string_equal(tls_conn_cipher(p.srv.c), "TLS-CHACHA20-POLY1305-SHA256");
        assert_string_equal(tls_conn_version(p.cli.c), "TLSv1.3");
    } else {
        assert_string_equal(tls_conn_cipher(p.srv.c),
                            "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256");
        assert_string_equal(tls_conn_version(p.cli.c), "TLSv1.2");
    }
    assert_true(tls_conn_peer_verified(p.cli.c));
    assert_string_equal(tls_conn_peer_cn(p.cli.c), "director");
    assert_string_equal(tls_conn_peer_san(p.cli.c, 0), "director");
    assert_string_equal(tls_conn_peer_san(p.cli.c, 1), "director.lab");
    assert_string_equal(tls_conn_peer_san(p.cli.c, 2), "localhost");
    assert_null(tls_conn_peer_san(p.cli.c, 3));
    assert_string_equal(tls_conn_sni(p.srv.c), "director");
    assert_false(tls_conn_peer_verified(p.srv.c)); /* no client certificate asked */
    assert_null(tls_conn_error(p.cli.c));

    assert_int_equal(tls_conn_write(p.cli.c, (const uint8_t *)"ping", 4), 4);
    pump(&p);
    assert_int_equal(p.srv.len, 4);
    assert_memory_equal(p.srv.got, "ping", 4);
    assert_int_equal(tls_conn_write(p.srv.c, (const uint8_t *)"pong!", 5), 5);
    pump(&p);
    assert_int_equal(p.cli.len, 5);
    assert_memory_equal(p.cli.got, "pong!", 5);

    /* close_notify reads as a clean end of stream. */
    tls_conn_close_notify(p.cli.c);
    pump(&p);
    assert_true(p.srv.closed);
    assert_int_equal(p.srv.last, 0);
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

static void test_large_data_both_ways(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("director", NULL, false, false);
    struct tls_ctx *c = client_ctx(NULL, false);
    struct pair p;
    pair_open(&p, c, s, "director");
    size_t n = 1 << 20;
    uint8_t *big = malloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = (uint8_t)(i * 31 + (i >> 8));
    assert_int_equal(tls_conn_write(p.cli.c, big, n), (ssize_t)n);
    assert_int_equal(tls_conn_write(p.srv.c, big, n / 2), (ssize_t)(n / 2));
    pump(&p);
    assert_int_equal(p.srv.len, n);
    assert_memory_equal(p.srv.got, big, n);
    assert_int_equal(p.cli.len, n / 2);
    assert_memory_equal(p.cli.got, big, n / 2);
    free(big);
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

/* Idle connections free their record buffers and get them back on the next record: the
 * sequence numbers must survive every cycle, in both directions. */
static void test_idle_buffers_survive_many_cycles(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("director", CERTS "/ca.crt", true, true);
    struct tls_ctx *c = client_ctx("av-edge", true);
    struct pair p;
    pair_open(&p, c, s, "director");
    size_t want_srv = 0, want_cli = 0;
    for (int i = 0; i < 300; i++) {
        char msg[32];
        int n = snprintf(msg, sizeof msg, "message %d", i);
        struct side *from = i % 3 ? &p.cli : &p.srv;
        assert_int_equal(tls_conn_write(from->c, (const uint8_t *)msg, (size_t)n), n);
        if (i % 7 == 0) /* two records in one flight */
            assert_int_equal(tls_conn_write(from->c, (const uint8_t *)msg, (size_t)n), n);
        size_t k = (size_t)n * (i % 7 == 0 ? 2 : 1);
        if (from == &p.cli)
            want_srv += k;
        else
            want_cli += k;
        pump(&p);
        assert_int_equal(p.srv.len, want_srv);
        assert_int_equal(p.cli.len, want_cli);
    }
    assert_memory_equal(p.srv.got + want_srv - 11, "message 299", 11);
    tls_conn_close_notify(p.srv.c);
    pump(&p);
    assert_true(p.cli.closed);
    /* Destroyed halfway through a record, holding a pooled pair of buffers. */
    assert_int_equal(tls_conn_write(p.cli.c, (const uint8_t *)"half a record", 13), 13);
    const uint8_t *q;
    size_t n = tls_conn_pending(p.cli.c, &q);
    assert_int_equal(tls_conn_feed(p.srv.c, q, n / 2), 0);
    uint8_t b[64];
    assert_int_equal(tls_conn_read(p.srv.c, b, sizeof b), -EAGAIN);
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

static void test_write_before_handshake_is_sent_after(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("director", NULL, false, false);
    struct tls_ctx *c = client_ctx(NULL, false);
    struct pair p;
    memset(&p, 0, sizeof p);
    assert_int_equal(tls_conn_create(&p.cli.c, c, "director"), 0);
    assert_int_equal(tls_conn_create(&p.srv.c, s, NULL), 0);
    assert_int_equal(tls_conn_write(p.cli.c, (const uint8_t *)"early", 5), 5);
    assert_false(tls_conn_handshake_done(p.cli.c));
    pump(&p);
    assert_int_equal(p.srv.len, 5);
    assert_memory_equal(p.srv.got, "early", 5);
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

static void test_mutual_tls_accepts_lab_ca(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("director", CERTS "/ca.crt", true, false);
    struct tls_ctx *c = client_ctx("access-edge", false);
    struct pair p;
    pair_open(&p, c, s, "director");
    assert_true(tls_conn_handshake_done(p.srv.c));
    assert_true(tls_conn_peer_verified(p.srv.c));
    assert_string_equal(tls_conn_peer_cn(p.srv.c), "access-edge");
    assert_string_equal(tls_conn_peer_san(p.srv.c, 0), "access-edge");
    assert_string_equal(tls_conn_peer_subject(p.srv.c), "CN=access-edge");
    assert_true(tls_conn_peer_has_name(p.srv.c, "access-edge"));
    assert_true(tls_conn_peer_has_name(p.srv.c, "ACCESS-EDGE.lab"));
    assert_false(tls_conn_peer_has_name(p.srv.c, "director"));
    assert_false(tls_conn_peer_has_name(p.srv.c, "x.access-edge.lab"));
    assert_int_equal(strlen(tls_conn_peer_fingerprint(p.srv.c)), 95);
    /* The client's view of the server matches the server's own fingerprint. */
    assert_string_equal(tls_conn_peer_fingerprint(p.cli.c), tls_ctx_fingerprint(s));
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

static void test_mutual_tls_refuses_rogue_cert(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("director", CERTS "/ca.crt", true, false);
    struct tls_ctx *c = client_ctx("rogue", false);
    struct pair p;
    pair_open(&p, c, s, "director");
    assert_false(tls_conn_handshake_done(p.srv.c));
    assert_int_equal(p.srv.last, -EPROTO);
    const char *e = tls_conn_error(p.srv.c);
    assert_non_null(e);
    assert_non_null(strstr(e, "peer certificate not trusted"));
    assert_non_null(strstr(e, "rogue CA"));
    /* The client hears why from the alert. */
    assert_int_equal(p.cli.last, -ECONNRESET);
    assert_non_null(strstr(tls_conn_error(p.cli.c), "alert"));
    assert_false(tls_conn_peer_verified(p.srv.c));
    /* A failed connection stays failed. */
    uint8_t b[16];
    assert_int_equal(tls_conn_read(p.srv.c, b, sizeof b), -EPROTO);
    assert_true(tls_conn_write(p.srv.c, b, 1) < 0);
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

/* Federation: a partner's wildcard certificate names the domains under it, one label deep;
 * an unverified certificate names nothing. */
static void test_peer_has_name_wildcard(void **state)
{
    (void)state;
    int rc = system(
        "cd " CERTS " && [ -f wild.crt ] || ("
        "openssl ecparam -name prime256v1 -genkey -noout -out wild.key && "
        "openssl req -new -key wild.key -subj /CN=partner.example -out wild.csr && "
        "printf 'subjectAltName=DNS:*.partner.example,DNS:partner.example\\n' > wild.ext && "
        "openssl x509 -req -in wild.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 "
        "-sha256 -extfile wild.ext -out wild.crt && rm -f wild.csr wild.ext) >/dev/null 2>&1");
    assert_int_equal(rc, 0);
    struct tls_ctx *s = server_ctx("director", CERTS "/ca.crt", true, false);
    struct tls_ctx *c = client_ctx("wild", false);
    struct pair p;
    pair_open(&p, c, s, "director");
    assert_true(tls_conn_peer_verified(p.srv.c));
    assert_true(tls_conn_peer_has_name(p.srv.c, "partner.example"));
    assert_true(tls_conn_peer_has_name(p.srv.c, "sip.partner.example"));
    assert_false(tls_conn_peer_has_name(p.srv.c, "a.b.partner.example"));
    assert_false(tls_conn_peer_has_name(p.srv.c, "evilpartner.example"));
    assert_false(tls_conn_peer_has_name(p.srv.c, ".partner.example"));
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);

    /* SNI picks the wildcard certificate for a name under it. */
    struct tls_cert_opts two[] = {{CERTS "/director.crt", CERTS "/director.key"},
                                  {CERTS "/wild.crt", CERTS "/wild.key"}};
    struct tls_opts so = {.server = true, .certs = two, .ncerts = 2};
    s = ctx_new(&so);
    c = client_ctx(NULL, false);
    pair_open(&p, c, s, "conf.partner.example");
    assert_true(tls_conn_peer_verified(p.cli.c));
    assert_string_equal(tls_conn_peer_cn(p.cli.c), "partner.example");
    pair_close(&p);
    pair_open(&p, c, s, "a.b.partner.example"); /* one label only: the default answers */
    assert_false(tls_conn_handshake_done(p.cli.c));
    assert_non_null(strstr(tls_conn_error(p.cli.c), "name mismatch"));
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);

    /* Not verified: no name counts, even the right one. */
    struct tls_opts lax = {.server = false};
    c = ctx_new(&lax);
    s = server_ctx("director", NULL, false, false);
    pair_open(&p, c, s, "director");
    assert_string_equal(tls_conn_peer_cn(p.cli.c), "director");
    assert_false(tls_conn_peer_has_name(p.cli.c, "director"));
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

static void test_mutual_tls_refuses_no_cert(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("director", CERTS "/ca.crt", true, false);
    struct tls_ctx *c = client_ctx(NULL, false);
    struct pair p;
    pair_open(&p, c, s, "director");
    assert_false(tls_conn_handshake_done(p.srv.c));
    assert_int_equal(p.srv.last, -EPROTO);
    assert_non_null(strstr(tls_conn_error(p.srv.c), "no certificate"));
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

static void test_client_refuses_untrusted_server(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("rogue", NULL, false, false);
    struct tls_ctx *c = client_ctx(NULL, false);
    struct pair p;
    pair_open(&p, c, s, "av-edge");
    assert_false(tls_conn_handshake_done(p.cli.c));
    assert_int_equal(p.cli.last, -EPROTO);
    assert_non_null(strstr(tls_conn_error(p.cli.c), "not trusted (issuer: CN=rogue CA"));
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

static void test_client_checks_server_name(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("director", NULL, false, false);
    struct tls_ctx *c = client_ctx(NULL, false);
    struct pair p;
    pair_open(&p, c, s, "wrong.example");
    assert_false(tls_conn_handshake_done(p.cli.c));
    assert_non_null(strstr(tls_conn_error(p.cli.c), "name mismatch"));
    pair_close(&p);
    /* IP literals are checked against iPAddress SANs (and not sent as SNI). */
    pair_open(&p, c, s, "127.0.0.10");
    assert_true(tls_conn_handshake_done(p.cli.c));
    assert_true(tls_conn_peer_verified(p.cli.c));
    assert_null(tls_conn_sni(p.srv.c));
    pair_close(&p);
    pair_open(&p, c, s, "127.0.0.99");
    assert_false(tls_conn_handshake_done(p.cli.c));
    assert_non_null(strstr(tls_conn_error(p.cli.c), "name mismatch"));
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

static void test_sni_picks_certificate(void **state)
{
    (void)state;
    struct tls_cert_opts certs[] = {
        {CERTS "/director.crt", CERTS "/director.key"},
        {CERTS "/web.crt", CERTS "/web.key"},
        {CERTS "/revproxy.crt", CERTS "/revproxy.key"},
    };
    struct tls_opts o = {.server = true, .certs = certs, .ncerts = 3};
    struct tls_ctx *s = ctx_new(&o);
    struct tls_ctx *c = client_ctx(NULL, false);
    struct tls_opts lax = {.server = false};
    struct tls_ctx *cl = ctx_new(&lax);
    struct pair p;
    const char *names[] = {"web", "revproxy.lab", "director"};
    const char *cns[] = {"web", "revproxy", "director"};
    for (size_t i = 0; i < 3; i++) {
        pair_open(&p, c, s, names[i]);
        assert_true(tls_conn_handshake_done(p.cli.c));
        assert_string_equal(tls_conn_peer_cn(p.cli.c), cns[i]);
        assert_string_equal(tls_conn_sni(p.srv.c), names[i]);
        pair_close(&p);
    }
    /* An unknown name gets the default (first) certificate. */
    pair_open(&p, cl, s, "unknown.example");
    assert_true(tls_conn_handshake_done(p.cli.c));
    assert_string_equal(tls_conn_peer_cn(p.cli.c), "director");
    assert_false(tls_conn_peer_verified(p.cli.c));
    pair_close(&p);
    tls_ctx_unref(cl);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

static void test_alpn_negotiated(void **state)
{
    (void)state;
    const char *sp[] = {"h2", "http/1.1", NULL};
    const char *cp[] = {"sip", "http/1.1", NULL};
    struct tls_cert_opts co = {CERTS "/revproxy.crt", CERTS "/revproxy.key"};
    struct tls_opts so = {.server = true, .certs = &co, .ncerts = 1, .alpn = sp};
    struct tls_opts cop = {
        .server = false, .ca_file = CERTS "/ca.crt", .verify_peer = true, .alpn = cp};
    struct tls_ctx *s = ctx_new(&so);
    struct tls_ctx *c = ctx_new(&cop);
    struct pair p;
    pair_open(&p, c, s, "revproxy");
    assert_true(tls_conn_handshake_done(p.cli.c));
    assert_string_equal(tls_conn_alpn(p.cli.c), "http/1.1");
    assert_string_equal(tls_conn_alpn(p.srv.c), "http/1.1");
    pair_close(&p);
    tls_ctx_unref(c);
    /* A client without ALPN gets none. */
    c = client_ctx(NULL, false);
    pair_open(&p, c, s, "revproxy");
    assert_true(tls_conn_handshake_done(p.cli.c));
    assert_null(tls_conn_alpn(p.srv.c));
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

static void resumption(bool tickets)
{
    struct tls_ctx *s = server_ctx("director", CERTS "/ca.crt", true, tickets);
    struct tls_ctx *c = client_ctx("conf-edge", tickets);
    struct pair p;
    pair_open(&p, c, s, "director");
    assert_true(tls_conn_handshake_done(p.srv.c));
    assert_false(tls_conn_resumed(p.srv.c));
    assert_false(tls_conn_resumed(p.cli.c));
    pair_close(&p);
    for (int i = 0; i < 2; i++) {
        pair_open(&p, c, s, "director");
        assert_true(tls_conn_handshake_done(p.srv.c));
        assert_true(tls_conn_resumed(p.srv.c));
        assert_true(tls_conn_resumed(p.cli.c));
        /* The peer identity survives resumption. */
        assert_string_equal(tls_conn_peer_cn(p.srv.c), "conf-edge");
        assert_true(tls_conn_peer_verified(p.srv.c));
        assert_int_equal(tls_conn_write(p.cli.c, (const uint8_t *)"x", 1), 1);
        pump(&p);
        assert_int_equal(p.srv.len, 1);
        pair_close(&p);
    }
    /* Another name does not reuse the session. */
    pair_open(&p, c, s, "localhost");
    assert_true(tls_conn_handshake_done(p.srv.c));
    assert_false(tls_conn_resumed(p.srv.c));
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

static void test_resumption_via_ticket(void **state)
{
    (void)state;
    resumption(true);
}

static void test_resumption_via_cache(void **state)
{
    (void)state;
    resumption(false);
}

static void test_garbage_is_eproto(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("director", NULL, false, false);
    struct tls_conn *c;
    assert_int_equal(tls_conn_create(&c, s, NULL), 0);
    const char *req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(tls_conn_feed(c, (const uint8_t *)req, strlen(req)), 0);
    uint8_t b[64];
    assert_int_equal(tls_conn_read(c, b, sizeof b), -EPROTO);
    assert_non_null(tls_conn_error(c));
    assert_true(strlen(tls_conn_error(c)) > 5);
    tls_conn_destroy(c);

    /* A handshake record with a nonsense body. */
    assert_int_equal(tls_conn_create(&c, s, NULL), 0);
    uint8_t bad[64] = {0x16, 0x03, 0x01, 0x00, 59, 0x01, 0x00, 0x00, 55, 0x03, 0x03};
    memset(bad + 11, 0xee, sizeof bad - 11);
    assert_int_equal(tls_conn_feed(c, bad, sizeof bad), 0);
    assert_int_equal(tls_conn_read(c, b, sizeof b), -EPROTO);
    assert_non_null(tls_conn_error(c));
    tls_conn_destroy(c);

    /* Too much input before anything is read. */
    assert_int_equal(tls_conn_create(&c, s, NULL), 0);
    uint8_t *junk = calloc(1, 1 << 20);
    assert_int_equal(tls_conn_feed(c, junk, 1 << 20), -ENOSPC);
    free(junk);
    tls_conn_destroy(c);
    tls_ctx_unref(s);
}

static void test_self_signed_and_fingerprint(void **state)
{
    (void)state;
    struct tls_opts so = {.server = true, .self_signed_name = "lab.test", .session_tickets = true};
    struct tls_ctx *s = ctx_new(&so);
    const char *fp = tls_ctx_fingerprint(s);
    assert_non_null(fp);
    assert_int_equal(strlen(fp), 95);
    for (size_t i = 0; i < 95; i++) {
        if (i % 3 == 2)
            assert_int_equal(fp[i], ':');
        else
            assert_non_null(strchr("0123456789ABCDEF", fp[i]));
    }
    /* Two generations give two different certificates. */
    struct tls_ctx *s2 = ctx_new(&so);
    assert_string_not_equal(tls_ctx_fingerprint(s2), fp);
    tls_ctx_unref(s2);

    struct tls_opts co = {.server = false};
    struct tls_ctx *c = ctx_new(&co);
    struct pair p;
    pair_open(&p, c, s, "lab.test");
    assert_true(tls_conn_handshake_done(p.cli.c));
    assert_string_equal(tls_conn_peer_cn(p.cli.c), "lab.test");
    assert_string_equal(tls_conn_peer_san(p.cli.c, 0), "lab.test");
    pair_close(&p);
    tls_ctx_unref(c);

    /* A self-signed certificate for an IP literal carries it as an iPAddress. */
    struct tls_opts ipo = {.server = true, .self_signed_name = "127.0.0.13"};
    struct tls_ctx *sip = ctx_new(&ipo);
    struct tls_opts lax = {.server = false};
    struct tls_ctx *cl = ctx_new(&lax);
    pair_open(&p, cl, sip, "127.0.0.13");
    assert_true(tls_conn_handshake_done(p.cli.c));
    assert_string_equal(tls_conn_peer_cn(p.cli.c), "127.0.0.13");
    assert_null(tls_conn_peer_san(p.cli.c, 0)); /* no DNS name */
    pair_close(&p);
    tls_ctx_unref(cl);
    tls_ctx_unref(sip);

    /* A verifying client refuses it. */
    c = client_ctx(NULL, false);
    pair_open(&p, c, s, "lab.test");
    assert_false(tls_conn_handshake_done(p.cli.c));
    assert_non_null(strstr(tls_conn_error(p.cli.c), "not trusted (issuer: CN=lab.test"));
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

static void test_ctx_errors_are_clear(void **state)
{
    (void)state;
    char err[256];
    struct tls_ctx *c = (struct tls_ctx *)0x1;
    struct tls_cert_opts co = {"/nonexistent/x.pem", CERTS "/director.key"};
    struct tls_opts o = {.server = true, .certs = &co, .ncerts = 1};
    assert_int_equal(tls_ctx_create(&c, &o, err, sizeof err), -ENOENT);
    assert_string_equal(err, "cannot read /nonexistent/x.pem: No such file or directory");
    assert_ptr_equal(c, (struct tls_ctx *)0x1); /* untouched on failure */

    struct tls_cert_opts mism = {CERTS "/director.crt", CERTS "/web.key"};
    o.certs = &mism;
    assert_int_equal(tls_ctx_create(&c, &o, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "does not match"));

    struct tls_cert_opts notpem = {CERTS "/ca.key", CERTS "/director.key"};
    o.certs = &notpem;
    assert_int_equal(tls_ctx_create(&c, &o, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "not a valid certificate"));

    FILE *f = fopen(CERTS "/empty.pem", "w");
    fclose(f);
    struct tls_opts empty = {.server = false, .ca_file = CERTS "/empty.pem"};
    assert_int_equal(tls_ctx_create(&c, &empty, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "empty.pem: not a valid certificate"));

    struct tls_opts v = {.server = false, .verify_peer = true};
    assert_int_equal(tls_ctx_create(&c, &v, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "ca_file"));

    struct tls_opts bad = {.server = false, .ciphers = "TLS-NOPE"};
    assert_int_equal(tls_ctx_create(&c, &bad, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "TLS-NOPE"));
}

/* Certificate reload reads subject, serial and notAfter, and refuses a half-renewed pair. */
static void test_cert_inspect(void **state)
{
    (void)state;
    char err[256];
    struct tls_cert_info ci;
    assert_int_equal(
        tls_cert_inspect(CERTS "/director.crt", CERTS "/director.key", &ci, err, sizeof err), 0);
    assert_non_null(strstr(ci.subject, "CN=director"));
    assert_true(strlen(ci.serial) >= 2);
    assert_true(ci.not_after > 1600000000);
    /* the same serial and date as openssl prints */
    char cmd[512], want[160] = "";
    snprintf(cmd, sizeof cmd,
             "openssl x509 -noout -serial -in " CERTS "/director.crt | cut -d= -f2 | "
             "sed 's/../&:/g; s/:$//'");
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(want, sizeof want, p));
    pclose(p);
    want[strcspn(want, "\n")] = '\0';
    assert_string_equal(ci.serial, want);
    snprintf(cmd, sizeof cmd,
             "date -d \"$(openssl x509 -noout -enddate -in " CERTS
             "/director.crt | cut -d= -f2)\" +%%s");
    p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(want, sizeof want, p));
    pclose(p);
    assert_int_equal(ci.not_after, strtoll(want, NULL, 10));

    assert_int_equal(tls_cert_inspect(CERTS "/director.crt", NULL, &ci, err, sizeof err), 0);
    assert_int_equal(
        tls_cert_inspect(CERTS "/director.crt", CERTS "/web.key", &ci, err, sizeof err),
        -EKEYREJECTED);
    assert_non_null(strstr(err, "does not match"));
    assert_int_equal(tls_cert_inspect("/nonexistent.crt", NULL, &ci, err, sizeof err), -ENOENT);
}

/* Upstream clients trust the system CA bundle, as a file or as a directory. */
static void test_ca_bundle_file_or_directory(void **state)
{
    (void)state;
    const char *paths[] = {"/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs", CERTS};
    for (size_t i = 0; i < 3; i++) {
        struct tls_opts o = {.server = false, .ca_file = paths[i], .verify_peer = true};
        struct tls_ctx *c = ctx_new(&o);
        tls_ctx_unref(c);
    }
    /* The test-certs directory holds the lab CA: a server of the lab is trusted. */
    struct tls_opts o = {.server = false, .ca_file = CERTS, .verify_peer = true};
    struct tls_ctx *c = ctx_new(&o);
    struct tls_ctx *s = server_ctx("web", NULL, false, false);
    struct pair p;
    pair_open(&p, c, s, "web");
    assert_true(tls_conn_handshake_done(p.cli.c));
    assert_true(tls_conn_peer_verified(p.cli.c));
    pair_close(&p);
    tls_ctx_unref(s);
    tls_ctx_unref(c);
}

static void test_ctx_outlives_unref_while_conns_use_it(void **state)
{
    (void)state;
    /* A reload drops the daemon's reference; connections still hold theirs. */
    struct tls_ctx *s = server_ctx("director", NULL, false, false);
    struct tls_ctx *c = client_ctx(NULL, false);
    struct pair p;
    memset(&p, 0, sizeof p);
    assert_int_equal(tls_conn_create(&p.cli.c, c, "director"), 0);
    assert_int_equal(tls_conn_create(&p.srv.c, s, NULL), 0);
    tls_ctx_unref(s);
    tls_ctx_unref(c);
    pump(&p);
    assert_true(tls_conn_handshake_done(p.srv.c));
    pair_close(&p);
}

static void test_cipher_choice(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("director", NULL, false, false);
    const char *want[] = {"TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256",
                          "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384"};
    for (size_t i = 0; i < 2; i++) {
        struct tls_opts o = {.server = false, .ciphers = want[i]};
        struct tls_ctx *c = ctx_new(&o);
        struct pair p;
        pair_open(&p, c, s, "director");
        assert_string_equal(tls_conn_cipher(p.cli.c), want[i]);
        assert_string_equal(tls_conn_version(p.srv.c), "TLSv1.2"); /* a TLS 1.2 suite list */
        pair_close(&p);
        tls_ctx_unref(c);
    }
    /* A client preferring AES still gets ChaCha20 first: server preference. */
    struct tls_opts o = {.server = false,
                         .ciphers = "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256:"
                                    "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256"};
    struct tls_ctx *c = ctx_new(&o);
    struct pair p;
    pair_open(&p, c, s, "director");
    assert_string_equal(tls_conn_cipher(p.cli.c), "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256");
    pair_close(&p);
    tls_ctx_unref(c);
    if (openssl_backend()) { /* the same in TLS 1.3 */
        struct tls_opts o13 = {.server = false,
                               .ciphers = "TLS-AES-128-GCM-SHA256:TLS_CHACHA20_POLY1305_SHA256"};
        c = ctx_new(&o13);
        pair_open(&p, c, s, "director");
        assert_string_equal(tls_conn_version(p.cli.c), "TLSv1.3");
        assert_string_equal(tls_conn_cipher(p.cli.c), "TLS-CHACHA20-POLY1305-SHA256");
        pair_close(&p);
        tls_ctx_unref(c);
    }
    tls_ctx_unref(s);
}

/* A server with a CA bundle but without verify_peer asks for a certificate and checks it,
 * but lets clients without one (or with a foreign one) in, unverified: optional client
 * certificates, as a reverse proxy forwarding them wants. */
static void test_optional_client_certificate(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("revproxy", CERTS "/ca.crt", false, false);
    const char *roles[] = {"partner", NULL, "rogue"};
    for (size_t i = 0; i < 3; i++) {
        struct tls_ctx *c = client_ctx(roles[i], false);
        struct pair p;
        pair_open(&p, c, s, "revproxy");
        assert_true(tls_conn_handshake_done(p.srv.c));
        assert_int_equal(tls_conn_peer_verified(p.srv.c), i == 0);
        if (i == 0)
            assert_string_equal(tls_conn_peer_subject(p.srv.c), "CN=partner");
        if (i == 1)
            assert_null(tls_conn_peer_cn(p.srv.c));
        if (i == 2) /* names of an unverified certificate are there, but name nothing */
            assert_false(tls_conn_peer_has_name(p.srv.c, "av-edge"));
        pair_close(&p);
        tls_ctx_unref(c);
    }
    tls_ctx_unref(s);
}

/* ECDHE groups can be chosen; a client with no suite the server accepts is refused with a
 * sentence, and so is a record tampered with in transit. */
static void test_groups_suites_and_tampering(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("director", NULL, false, false);
    struct tls_opts go = {.server = false, .groups = "x25519,secp256r1"};
    struct tls_ctx *c = ctx_new(&go);
    struct pair p;
    pair_open(&p, c, s, "director");
    assert_true(tls_conn_handshake_done(p.cli.c));

    /* Flip one bit of an application record: the MAC check fails. */
    assert_int_equal(tls_conn_write(p.cli.c, (const uint8_t *)"secret", 6), 6);
    const uint8_t *q;
    size_t n = tls_conn_pending(p.cli.c, &q);
    uint8_t *bad = malloc(n);
    memcpy(bad, q, n);
    bad[n - 3] ^= 0x01;
    tls_conn_consume(p.cli.c, n);
    assert_int_equal(tls_conn_feed(p.srv.c, bad, n), 0);
    uint8_t b[64];
    assert_int_equal(tls_conn_read(p.srv.c, b, sizeof b), -EPROTO);
    assert_non_null(strstr(tls_conn_error(p.srv.c), "bad MAC"));
    free(bad);
    pair_close(&p);
    tls_ctx_unref(c);

    struct tls_opts cbc = {.server = false, .ciphers = "TLS-ECDHE-ECDSA-WITH-AES-128-CBC-SHA256"};
    c = ctx_new(&cbc);
    pair_open(&p, c, s, "director");
    assert_false(tls_conn_handshake_done(p.srv.c));
    assert_non_null(strstr(tls_conn_error(p.srv.c), "no common cipher suite"));
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);

    char err[256];
    struct tls_opts bg = {.server = false, .groups = "x25519:curve9"};
    assert_int_equal(tls_ctx_create(&c, &bg, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "curve9"));
    const char *empty_alpn[] = {"", NULL};
    struct tls_opts ba = {.server = false, .alpn = empty_alpn};
    assert_int_equal(tls_ctx_create(&c, &ba, err, sizeof err), -EINVAL);
    struct tls_opts bs = {.server = true, .self_signed_name = "a,b=c"};
    assert_int_equal(tls_ctx_create(&c, &bs, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "self_signed_name"));
    struct tls_cert_opts nokey = {CERTS "/director.crt", NULL};
    struct tls_opts bk = {.server = true, .certs = &nokey, .ncerts = 1};
    assert_int_equal(tls_ctx_create(&c, &bk, err, sizeof err), -EINVAL);
    struct tls_cert_opts badkey = {CERTS "/director.crt", CERTS "/director.crt"};
    bk.certs = &badkey;
    assert_int_equal(tls_ctx_create(&c, &bk, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "not a valid private key"));
}

static void test_looks_like_client_hello(void **state)
{
    (void)state;
    struct tls_ctx *c = client_ctx(NULL, false);
    struct tls_conn *cc;
    assert_int_equal(tls_conn_create(&cc, c, "director"), 0);
    const uint8_t *p;
    size_t n = tls_conn_pending(cc, &p);
    assert_true(n > 50);
    for (size_t i = 0; i <= 8; i++)
        assert_true(tls_looks_like_client_hello(p, i));
    assert_true(tls_looks_like_client_hello(p, n));
    tls_conn_destroy(cc);
    tls_ctx_unref(c);

    const uint8_t sip[] = "OPTIONS sip:x SIP/2.0\r\n";
    assert_false(tls_looks_like_client_hello(sip, sizeof sip - 1));
    const uint8_t stun[] = {0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42};
    assert_false(tls_looks_like_client_hello(stun, sizeof stun));
    const uint8_t badver[] = {0x16, 0x02, 0x00, 0x00, 0x40, 0x01};
    assert_false(tls_looks_like_client_hello(badver, sizeof badver));
    const uint8_t zerolen[] = {0x16, 0x03, 0x01, 0x00, 0x00, 0x01};
    assert_false(tls_looks_like_client_hello(zerolen, sizeof zerolen));
    const uint8_t huge[] = {0x16, 0x03, 0x01, 0xff, 0xff, 0x01};
    assert_false(tls_looks_like_client_hello(huge, sizeof huge));
    const uint8_t notch[] = {0x16, 0x03, 0x03, 0x00, 0x40, 0x02};
    assert_false(tls_looks_like_client_hello(notch, sizeof notch));
    assert_false(tls_looks_like_client_hello(NULL, 0));
}

static void test_peek_sni(void **state)
{
    (void)state;
    struct tls_ctx *c = client_ctx(NULL, true);
    struct tls_conn *cc;
    const uint8_t *p;
    char name[256];
    assert_int_equal(tls_conn_create(&cc, c, "access-edge.lab"), 0);
    size_t n = tls_conn_pending(cc, &p);
    assert_int_equal(tls_peek_sni(p, n, name, sizeof name), 15);
    assert_string_equal(name, "access-edge.lab");
    for (size_t i = 0; i < n; i++)
        assert_int_equal(tls_peek_sni(p, i, name, sizeof name), -EAGAIN);
    assert_int_equal(tls_peek_sni(p, n, name, 10), -ENOSPC);

    /* The same hello cut into two records. */
    size_t body = n - 5, cut = body / 3;
    uint8_t *two = malloc(n + 5);
    memcpy(two, p, 5 + cut);
    two[3] = (uint8_t)(cut >> 8);
    two[4] = (uint8_t)cut;
    memcpy(two + 5 + cut, p, 3);
    two[5 + cut + 3] = (uint8_t)((body - cut) >> 8);
    two[5 + cut + 4] = (uint8_t)(body - cut);
    memcpy(two + 10 + cut, p + 5 + cut, body - cut);
    assert_int_equal(tls_peek_sni(two, n + 5, name, sizeof name), 15);
    assert_string_equal(name, "access-edge.lab");
    assert_int_equal(tls_peek_sni(two, n + 4, name, sizeof name), -EAGAIN);
    free(two);
    tls_conn_destroy(cc);

    /* An IP literal sends no SNI. */
    assert_int_equal(tls_conn_create(&cc, c, "127.0.0.1"), 0);
    n = tls_conn_pending(cc, &p);
    assert_int_equal(tls_peek_sni(p, n, name, sizeof name), 0);
    assert_string_equal(name, "");
    tls_conn_destroy(cc);
    tls_ctx_unref(c);

    const uint8_t http[] = "GET / HTTP/1.1\r\n\r\n";
    assert_int_equal(tls_peek_sni(http, sizeof http - 1, name, sizeof name), -EBADMSG);
    const uint8_t sh[] = {0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00};
    assert_int_equal(tls_peek_sni(sh, sizeof sh, name, sizeof name), -EBADMSG);
    /* A hello whose lengths point past its end. */
    const uint8_t bad[] = {0x16, 0x03, 0x01, 0x00, 0x29, 0x01, 0x00, 0x00, 0x25, 0x03, 0x03, 1,
                           2,    3,    4,    5,    6,    7,    8,    9,    10,   11,   12,   13,
                           14,   15,   16,   17,   18,   19,   20,   21,   22,   23,   24,   25,
                           26,   27,   28,   29,   30,   31,   32,   0xff, 0,    0};
    assert_int_equal(tls_peek_sni(bad, sizeof bad, name, sizeof name), -EBADMSG);
}

/* Worker threads (the relay runs one loop per core) share one server and one client ctx:
 * the random generator, session cache, ticket keys and saved session are locked inside. */
struct thread_arg {
    struct tls_ctx *s, *c;
    int ok, resumed;
};

static void *handshake_thread(void *p)
{
    struct thread_arg *a = p;
    for (int i = 0; i < 12; i++) {
        struct pair pr;
        pair_open(&pr, a->c, a->s, "director");
        if (tls_conn_handshake_done(pr.srv.c) && tls_conn_handshake_done(pr.cli.c)) {
            a->ok++;
            a->resumed += tls_conn_resumed(pr.srv.c);
        }
        pair_close(&pr);
    }
    return NULL;
}

static void test_ctx_shared_by_threads(void **state)
{
    (void)state;
    struct tls_ctx *s = server_ctx("director", CERTS "/ca.crt", true, true);
    struct tls_ctx *c = client_ctx("av-edge", true);
    struct thread_arg args[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        args[i] = (struct thread_arg){.s = s, .c = c};
        assert_int_equal(pthread_create(&th[i], NULL, handshake_thread, &args[i]), 0);
    }
    int ok = 0, resumed = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].ok;
        resumed += args[i].resumed;
    }
    assert_int_equal(ok, 36);
    assert_true(resumed >= 30); /* all but the first few, which race for the first session */
    tls_ctx_unref(c);
    tls_ctx_unref(s);
}

/* Heap held per idle server connection after a handshake (mutual TLS, the largest case) and
 * one small record: the record buffers must go back (mbedTLS ~2.3 KB, OpenSSL ~21 KB with
 * SSL_MODE_RELEASE_BUFFERS, ~54 KB without). Not under ASan, whose allocator mallinfo2 does
 * not see. */
static void test_idle_connection_memory(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    skip();
#endif
    enum { N = 50 };
    /* Also with an ACME challenge store, as the edges' external listeners have: an
     * ordinary connection costs the same. */
    struct acme_challenges *store;
    assert_int_equal(acme_challenges_create(&store), 0);
    size_t per[2];
    for (int k = 0; k < 2; k++) {
        char crt[128], key[128];
        snprintf(crt, sizeof crt, CERTS "/%s.crt", "director");
        snprintf(key, sizeof key, CERTS "/%s.key", "director");
        struct tls_cert_opts co = {crt, key};
        struct tls_opts so = {.server = true,
                              .certs = &co,
                              .ncerts = 1,
                              .ca_file = CERTS "/ca.crt",
                              .verify_peer = true,
                              .session_tickets = true,
                              .acme = k ? store : NULL};
        struct tls_ctx *s = ctx_new(&so);
        struct tls_ctx *c = client_ctx("av-edge", true);
        struct tls_conn *srv[N];
        struct pair p;
        pair_open(&p, c, s, "director"); /* the client's saved session: once, not per conn */
        pair_close(&p);
        malloc_trim(0);
        size_t before = mallinfo2().uordblks;
        for (int i = 0; i < N; i++) {
            pair_open(&p, c, s, "director");
            assert_true(tls_conn_handshake_done(p.srv.c));
            assert_int_equal(
                tls_conn_write(p.cli.c, (const uint8_t *)"OPTIONS sip:x SIP/2.0\r\n\r\n", 25), 25);
            pump(&p);
            assert_int_equal(p.srv.len, 25);
            srv[i] = p.srv.c;
            tls_conn_destroy(p.cli.c);
            free(p.cli.got);
            free(p.srv.got);
        }
        per[k] = (mallinfo2().uordblks - before) / N;
        fprintf(stderr, "idle server connection (%s, mutual TLS%s): %zu bytes\n", tls_backend(),
                k ? ", ACME store" : "", per[k]);
        assert_true(per[k] < (openssl_backend() ? 32 * 1024 : 8 * 1024));
        for (int i = 0; i < N; i++)
            tls_conn_destroy(srv[i]);
        tls_ctx_unref(c);
        tls_ctx_unref(s);
    }
    assert_true(per[1] <= per[0] + 256);
    acme_challenges_free(store);
}

/* ---- ACME TLS-ALPN-01 (RFC 8737) ---- */

/* A challenge certificate for name as the CA would want it (the acmeIdentifier extension
 * with a digest), made by the openssl CLI; *cert and *key are malloc'd PEMs. */
static void challenge_pem(const char *name, char **cert, char **key)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
             "-subj /CN=%s -addext subjectAltName=DNS:%s "
             "-addext 1.3.6.1.5.5.7.1.31=critical,DER:0420%064d "
             "-keyout " CERTS "/acme-%s.key -out " CERTS "/acme-%s.crt >/dev/null 2>&1 && "
             "openssl x509 -in " CERTS "/acme-%s.crt -outform DER -out " CERTS "/acme-%s.der",
             name, name, 7, name, name, name, name);
    assert_int_equal(system(cmd), 0);
    char path[256];
    char **out[2] = {cert, key};
    const char *ext[2] = {"crt", "key"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, CERTS "/acme-%s.%s", name, ext[i]);
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        *out[i] = calloc(1, 8192);
        assert_non_null(*out[i]);
        assert_true(fread(*out[i], 1, 8191, f) > 0);
        fclose(f);
    }
}

/* The server's first flight to a client's hello: in TLS 1.2 (mbedTLS) the ServerHello and
 * Certificate are in clear. mbedTLS as a client cannot take a challenge certificate (it
 * refuses the unknown critical acmeIdentifier extension), so the mbedTLS build checks what
 * the server sent; the OpenSSL build's client takes it whole. */
static bool flight_has(struct tls_ctx *cctx, struct tls_ctx *sctx, const char *name,
                       const uint8_t *what, size_t wlen)
{
    struct tls_conn *cc, *sc;
    const uint8_t *p;
    uint8_t buf[256];
    assert_int_equal(tls_conn_create(&cc, cctx, name), 0);
    assert_int_equal(tls_conn_create(&sc, sctx, NULL), 0);
    size_t n = tls_conn_pending(cc, &p);
    assert_int_equal(tls_conn_feed(sc, p, n), 0);
    assert_int_equal(tls_conn_read(sc, buf, sizeof buf), -EAGAIN);
    n = tls_conn_pending(sc, &p);
    bool found = n >= wlen && memmem(p, n, what, wlen) != NULL;
    tls_conn_destroy(cc);
    tls_conn_destroy(sc);
    return found;
}

static uint8_t *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint8_t *b = malloc(8192);
    assert_non_null(b);
    *n = fread(b, 1, 8192, f);
    fclose(f);
    return b;
}

/* A client that trusts nothing (the ACME server checks the certificate itself). */
static struct tls_ctx *acme_client(const char *const *alpn)
{
    struct tls_opts o = {.server = false, .alpn = alpn};
    return ctx_new(&o);
}

static void test_acme_tls_alpn(void **state)
{
    (void)state;
    struct acme_challenges *store;
    assert_int_equal(acme_challenges_create(&store), 0);
    char *cert, *key;
    challenge_pem("chal.lab", &cert, &key);
    assert_int_equal(acme_challenges_set_alpn(store, "chal.lab", cert, key, time(NULL) + 600), 0);
    const char *sp[] = {"h2", "http/1.1", NULL};
    struct tls_cert_opts co = {CERTS "/revproxy.crt", CERTS "/revproxy.key"};
    struct tls_opts so = {.server = true,
                          .certs = &co,
                          .ncerts = 1,
                          .alpn = sp,
                          .session_tickets = true,
                          .acme = store};
    struct tls_ctx *s = ctx_new(&so);
    const char *acme[] = {"acme-tls/1", NULL};
    struct tls_ctx *ca = acme_client(acme);
    struct pair p;

    /* The challenge certificate and the protocol for a name with a challenge. */
    if (openssl_backend()) {
        pair_open(&p, ca, s, "CHAL.lab");
        assert_true(tls_conn_handshake_done(p.cli.c));
        assert_true(tls_conn_handshake_done(p.srv.c));
        assert_string_equal(tls_conn_alpn(p.srv.c), "acme-tls/1");
        assert_string_equal(tls_conn_alpn(p.cli.c), "acme-tls/1");
        assert_string_equal(tls_conn_peer_cn(p.cli.c), "chal.lab");
        assert_string_equal(tls_conn_peer_san(p.cli.c, 0), "chal.lab");
        assert_null(tls_conn_peer_san(p.cli.c, 1));
        assert_string_equal(tls_conn_sni(p.srv.c), "CHAL.lab");
        pair_close(&p);
        /* Again (no resumption into the challenge: the certificate is what is checked). */
        pair_open(&p, ca, s, "chal.lab");
        assert_string_equal(tls_conn_peer_cn(p.cli.c), "chal.lab");
        pair_close(&p);
    } else {
        size_t dlen;
        uint8_t *der = read_all(CERTS "/acme-chal.lab.der", &dlen);
        const uint8_t ext[] = "\x00\x10\x00\x0d\x00\x0b\x0a"
                              "acme-tls/1";
        assert_true(flight_has(ca, s, "CHAL.lab", der, dlen));
        assert_true(flight_has(ca, s, "chal.lab", ext, sizeof ext - 1));
        /* An ordinary client's flight has neither. */
        struct tls_ctx *plain = acme_client(NULL);
        assert_false(flight_has(plain, s, "chal.lab", der, dlen));
        assert_false(flight_has(plain, s, "chal.lab", ext, sizeof ext - 1));
        tls_ctx_unref(plain);
        free(der);
    }

    /* A name without a challenge, or no name: the handshake fails. */
    pair_open(&p, ca, s, "revproxy");
    assert_false(tls_conn_handshake_done(p.srv.c));
    assert_false(tls_conn_handshake_done(p.cli.c));
    assert_non_null(tls_conn_error(p.srv.c));
    pair_close(&p);
    pair_open(&p, ca, s, NULL);
    assert_false(tls_conn_handshake_done(p.srv.c));
    pair_close(&p);
    /* Removed, or expired: fails too. */
    acme_challenges_set_alpn(store, "gone.lab", cert, key, time(NULL) - 1);
    pair_open(&p, ca, s, "gone.lab");
    assert_false(tls_conn_handshake_done(p.srv.c));
    pair_close(&p);
    acme_challenges_remove(store, "chal.lab");
    pair_open(&p, ca, s, "chal.lab");
    assert_false(tls_conn_handshake_done(p.srv.c));
    pair_close(&p);
    acme_challenges_set_alpn(store, "chal.lab", cert, key, time(NULL) + 600);
    tls_ctx_unref(ca);

    /* Ordinary clients on the same ctx: the normal certificate and their protocol, also
     * for the challenge name and when they offer acme-tls/1 among others. */
    const char *h2[] = {"h2", "http/1.1", NULL};
    const char *mixed[] = {"acme-tls/1", "http/1.1", NULL};
    const char *const *lists[] = {NULL, h2, mixed};
    const char *want[] = {NULL, "h2", "http/1.1"};
    for (int i = 0; i < 3; i++) {
        struct tls_ctx *c = acme_client(lists[i]);
        pair_open(&p, c, s, "chal.lab");
        assert_true(tls_conn_handshake_done(p.srv.c));
        assert_string_equal(tls_conn_peer_cn(p.cli.c), "revproxy");
        if (want[i])
            assert_string_equal(tls_conn_alpn(p.srv.c), want[i]);
        else
            assert_null(tls_conn_alpn(p.srv.c));
        pair_close(&p);
        tls_ctx_unref(c);
    }
    tls_ctx_unref(s);

    /* A ctx without ALPN of its own and with a store: ordinary clients offering some
     * protocol still get through (with none), challenges are still answered. */
    so.alpn = NULL;
    s = ctx_new(&so);
    struct tls_ctx *c = acme_client(h2);
    pair_open(&p, c, s, "chal.lab");
    assert_true(tls_conn_handshake_done(p.srv.c));
    assert_null(tls_conn_alpn(p.srv.c));
    assert_string_equal(tls_conn_peer_cn(p.cli.c), "revproxy");
    pair_close(&p);
    tls_ctx_unref(c);
    ca = acme_client(acme);
    if (openssl_backend()) {
        pair_open(&p, ca, s, "chal.lab");
        assert_true(tls_conn_handshake_done(p.srv.c));
        assert_string_equal(tls_conn_alpn(p.srv.c), "acme-tls/1");
        assert_string_equal(tls_conn_peer_cn(p.cli.c), "chal.lab");
        pair_close(&p);
    } else {
        const uint8_t ext[] = "\x00\x10\x00\x0d\x00\x0b\x0a"
                              "acme-tls/1";
        assert_true(flight_has(ca, s, "chal.lab", ext, sizeof ext - 1));
    }
    tls_ctx_unref(s);

    /* A mutual-TLS ctx: the validating CA shows no client certificate and still passes. */
    so.verify_peer = true;
    so.ca_file = CERTS "/ca.crt";
    s = ctx_new(&so);
    if (openssl_backend()) {
        pair_open(&p, ca, s, "chal.lab");
        assert_true(tls_conn_handshake_done(p.srv.c));
        assert_string_equal(tls_conn_alpn(p.srv.c), "acme-tls/1");
        pair_close(&p);
    } else {
        const uint8_t ext[] = "\x00\x10\x00\x0d\x00\x0b\x0a"
                              "acme-tls/1";
        assert_true(flight_has(ca, s, "chal.lab", ext, sizeof ext - 1));
        /* No CertificateRequest: its body starts with the certificate types (rsa_sign,
         * ecdsa_sign) and the signature algorithms (sha256 with rsa, with ecdsa, ...). */
        const uint8_t cert_req[] = {0x02, 0x01, 0x40, 0x00, 0x08, 0x04, 0x01, 0x04, 0x03};
        struct tls_ctx *plain_cli = acme_client(NULL);
        assert_true(flight_has(plain_cli, s, "chal.lab", cert_req, sizeof cert_req));
        assert_false(flight_has(ca, s, "chal.lab", cert_req, sizeof cert_req));
        tls_ctx_unref(plain_cli);
    }
    tls_ctx_unref(s);
    so.verify_peer = false;
    so.ca_file = NULL;

    /* A ctx without a store refuses acme-tls/1 as any protocol it does not speak. */
    so.acme = NULL;
    so.alpn = sp;
    s = ctx_new(&so);
    pair_open(&p, ca, s, "chal.lab");
    assert_false(tls_conn_handshake_done(p.srv.c));
    pair_close(&p);
    tls_ctx_unref(s);
    tls_ctx_unref(ca);
    acme_challenges_free(store);
    free(cert);
    free(key);
}

/* A ClientHello record longer than TLS allows, to a ctx with a challenge store: refused at
 * its header, not waited for (mbedTLS's peek would wait for the whole record otherwise). */
static void test_acme_oversized_hello_record(void **state)
{
    (void)state;
    struct acme_challenges *store;
    assert_int_equal(acme_challenges_create(&store), 0);
    struct tls_cert_opts co = {CERTS "/revproxy.crt", CERTS "/revproxy.key"};
    struct tls_opts so = {.server = true, .certs = &co, .ncerts = 1, .acme = store};
    struct tls_ctx *s = ctx_new(&so);
    struct tls_conn *sc;
    assert_int_equal(tls_conn_create(&sc, s, NULL), 0);
    const uint8_t head[] = {0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00, 0xff, 0xfb};
    assert_int_equal(tls_conn_feed(sc, head, sizeof head), 0);
    uint8_t buf[64];
    ssize_t r = tls_conn_read(sc, buf, sizeof buf);
    assert_true(r < 0 && r != -EAGAIN);
    tls_conn_destroy(sc);
    tls_ctx_unref(s);
    acme_challenges_free(store);
}

/* OpenSSL's, resolved only in the OpenSSL build (the client's SSL is the first member of its
 * struct tls_conn there): lets a client drop its ALPN between its two hellos. */
int SSL_set_alpn_protos(void *ssl, const unsigned char *protos, unsigned int len)
    __attribute__((weak));

/* TLS 1.3 HelloRetryRequest: a first hello offering just acme-tls/1 for a name with a
 * challenge, a second hello (after HRR) offering no ALPN at all. The second hello must not
 * make an ordinary connection out of the challenge set-up (challenge certificate, no client
 * certificate asked for on a mutual-TLS ctx): the handshake fails. */
static void test_acme_hrr_changes_hello(void **state)
{
    (void)state;
    if (!openssl_backend() || !SSL_set_alpn_protos)
        skip(); /* mbedTLS 2.28 servers speak TLS 1.2: no HelloRetryRequest */
    struct acme_challenges *store;
    assert_int_equal(acme_challenges_create(&store), 0);
    char *cert, *key;
    challenge_pem("chal.lab", &cert, &key);
    assert_int_equal(acme_challenges_set_alpn(store, "chal.lab", cert, key, time(NULL) + 600), 0);
    struct tls_cert_opts co = {CERTS "/revproxy.crt", CERTS "/revproxy.key"};
    struct tls_opts so = {.server = true,
                          .certs = &co,
                          .ncerts = 1,
                          .ca_file = CERTS "/ca.crt",
                          .verify_peer = true,
                          .groups = "secp256r1",
                          .acme = store};
    struct tls_ctx *s = ctx_new(&so);
    const char *acme[] = {"acme-tls/1", NULL};
    /* a key share for P-384 only: the server, P-256 only, answers HelloRetryRequest */
    struct tls_opts co_ = {.server = false, .alpn = acme, .groups = "secp384r1:secp256r1"};
    struct tls_ctx *c = ctx_new(&co_);
    struct pair p;
    memset(&p, 0, sizeof p);
    p.cli.last = p.srv.last = -EAGAIN;
    assert_int_equal(tls_conn_create(&p.cli.c, c, "chal.lab"), 0);
    assert_int_equal(tls_conn_create(&p.srv.c, s, NULL), 0);
    assert_true(step(&p.cli, &p.srv)); /* ClientHello 1 */
    const uint8_t *hrr;
    size_t n = tls_conn_pending(p.srv.c, &hrr);
    assert_true(n > 0 && hrr[0] == 0x16); /* the HelloRetryRequest, a handshake record */
    assert_int_equal(SSL_set_alpn_protos(*(void **)p.cli.c, NULL, 0), 0);
    pump(&p); /* ClientHello 2 without ALPN, and what follows */
    assert_false(tls_conn_handshake_done(p.srv.c));
    assert_non_null(tls_conn_error(p.srv.c));
    pair_close(&p);
    /* The same HelloRetryRequest with acme-tls/1 in both hellos: the challenge is answered. */
    pair_open(&p, c, s, "chal.lab");
    assert_true(tls_conn_handshake_done(p.srv.c));
    assert_string_equal(tls_conn_alpn(p.srv.c), "acme-tls/1");
    assert_string_equal(tls_conn_peer_cn(p.cli.c), "chal.lab");
    pair_close(&p);
    tls_ctx_unref(c);
    tls_ctx_unref(s);
    acme_challenges_free(store);
    free(cert);
    free(key);
}

/* The ALPN list of a ClientHello, read without TLS state. */
static void test_peek_alpn(void **state)
{
    (void)state;
    const char *cp[] = {"h2", "acme-tls/1", NULL};
    struct tls_ctx *c = acme_client(cp);
    struct tls_conn *cc;
    const uint8_t *p;
    uint8_t out[64];
    assert_int_equal(tls_conn_create(&cc, c, "x.lab"), 0);
    size_t n = tls_conn_pending(cc, &p);
    const uint8_t want[] = "\x00\x0e\x02h2\x0a"
                           "acme-tls/1";
    assert_int_equal(tls_peek_alpn(p, n, out, sizeof out), 16);
    assert_memory_equal(out, want, 16);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(tls_peek_alpn(p, i, out, sizeof out), -EAGAIN);
    assert_int_equal(tls_peek_alpn(p, n, out, 15), -ENOSPC);
    tls_conn_destroy(cc);
    tls_ctx_unref(c);
    c = acme_client(NULL);
    assert_int_equal(tls_conn_create(&cc, c, "x.lab"), 0);
    n = tls_conn_pending(cc, &p);
    assert_int_equal(tls_peek_alpn(p, n, out, sizeof out), 0);
    tls_conn_destroy(cc);
    tls_ctx_unref(c);
    const uint8_t http[] = "GET / HTTP/1.1\r\n\r\n";
    assert_int_equal(tls_peek_alpn(http, sizeof http - 1, out, sizeof out), -EBADMSG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_and_data),
        cmocka_unit_test(test_large_data_both_ways),
        cmocka_unit_test(test_idle_buffers_survive_many_cycles),
        cmocka_unit_test(test_write_before_handshake_is_sent_after),
        cmocka_unit_test(test_mutual_tls_accepts_lab_ca),
        cmocka_unit_test(test_mutual_tls_refuses_rogue_cert),
        cmocka_unit_test(test_peer_has_name_wildcard),
        cmocka_unit_test(test_mutual_tls_refuses_no_cert),
        cmocka_unit_test(test_client_refuses_untrusted_server),
        cmocka_unit_test(test_client_checks_server_name),
        cmocka_unit_test(test_sni_picks_certificate),
        cmocka_unit_test(test_alpn_negotiated),
        cmocka_unit_test(test_resumption_via_ticket),
        cmocka_unit_test(test_resumption_via_cache),
        cmocka_unit_test(test_garbage_is_eproto),
        cmocka_unit_test(test_self_signed_and_fingerprint),
        cmocka_unit_test(test_ctx_errors_are_clear),
        cmocka_unit_test(test_ca_bundle_file_or_directory),
        cmocka_unit_test(test_ctx_outlives_unref_while_conns_use_it),
        cmocka_unit_test(test_cipher_choice),
        cmocka_unit_test(test_optional_client_certificate),
        cmocka_unit_test(test_groups_suites_and_tampering),
        cmocka_unit_test(test_looks_like_client_hello),
        cmocka_unit_test(test_peek_sni),
        cmocka_unit_test(test_ctx_shared_by_threads),
        cmocka_unit_test(test_idle_connection_memory),
        cmocka_unit_test(test_cert_inspect),
        cmocka_unit_test(test_acme_tls_alpn),
        cmocka_unit_test(test_acme_hrr_changes_hello),
        cmocka_unit_test(test_acme_oversized_hello_record),
        cmocka_unit_test(test_peek_alpn),
    };
    return cmocka_run_group_tests(tests, certs_setup, NULL);
}
