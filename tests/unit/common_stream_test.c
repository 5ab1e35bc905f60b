/* stream: a real libuv loop on 127.0.0.1, plain TCP and TLS. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "common/stream.h"

#define CERTS "build/test-certs"

/* One test's world: a listener, the server-side stream and a client stream. */
struct world {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_timer_t guard;
    struct addr addr;
    struct stream_opts sopts, copts;
    struct stream_cbs scbs, ccbs;
    struct stream *srv, *cli;
    /* what happened */
    int srv_open, cli_open, srv_closed, cli_closed, drains;
    int srv_err, cli_err;
    char srv_why[160], cli_why[160];
    uint8_t got[1 << 16];
    size_t got_len;
    size_t srv_got;
    size_t written;
    bool echo;
    bool srv_pause;
    bool saw_enobufs;
    int accept_rc;
    struct tls_ctx *sniff; /* server: start TLS when the first bytes look like a ClientHello */
};

static int certs_setup(void **state)
{
    (void)state;
    return system("deploy/certs.sh " CERTS " >/dev/null 2>&1") == 0 ? 0 : -1;
}

static void stop_all(struct world *w)
{
    if (!uv_is_closing((uv_handle_t *)&w->listener))
        uv_close((uv_handle_t *)&w->listener, NULL);
    if (!uv_is_closing((uv_handle_t *)&w->guard))
        uv_close((uv_handle_t *)&w->guard, NULL);
}

static void maybe_done(struct world *w)
{
    if (w->srv_closed && w->cli_closed)
        stop_all(w);
}

static int srv_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct world *w = arg;
    if (w->sniff && !stream_tls(s) && tls_looks_like_client_hello(p, n)) {
        assert_int_equal(stream_start_tls(s, w->sniff, NULL, p, n), 0);
        assert_int_equal(stream_start_tls(s, w->sniff, NULL, p, n), -EALREADY);
        return 0;
    }
    w->srv_got += n;
    if (w->echo)
        assert_int_equal(stream_write(s, p, n), 0);
    return 0;
}

static void srv_open(struct stream *s, void *arg)
{
    struct world *w = arg;
    w->srv_open++;
    if (w->srv_pause)
        stream_read_stop(s);
}

static void srv_close(struct stream *s, int err, const char *why, void *arg)
{
    struct world *w = arg;
    w->srv_closed++;
    w->srv_err = err;
    snprintf(w->srv_why, sizeof w->srv_why, "%s", why ? why : "");
    w->srv = NULL;
    maybe_done(w);
}

static int cli_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct world *w = arg;
    assert_true(w->got_len + n <= sizeof w->got);
    memcpy(w->got + w->got_len, p, n);
    w->got_len += n;
    if (w->got_len == 5 && !w->saw_enobufs)
        stream_close(s, 0, "done");
    return 0;
}

static void cli_open(struct stream *s, void *arg)
{
    struct world *w = arg;
    w->cli_open++;
    assert_int_equal(stream_write(s, "hello", 5), 0);
}

static void cli_close(struct stream *s, int err, const char *why, void *arg)
{
    struct world *w = arg;
    w->cli_closed++;
    w->cli_err = err;
    snprintf(w->cli_why, sizeof w->cli_why, "%s", why ? why : "");
    w->cli = NULL;
    maybe_done(w);
}

static void on_conn(uv_stream_t *l, int status)
{
    struct world *w = l->data;
    assert_int_equal(status, 0);
    w->accept_rc = stream_accept(l, &w->sopts, &w->scbs, w, &w->srv);
    assert_int_equal(w->accept_rc, 0);
}

static void on_guard(uv_timer_t *t)
{
    struct world *w = t->data;
    if (w->cli)
        stream_close(w->cli, -ETIMEDOUT, "test guard");
    if (w->srv)
        stream_close(w->srv, -ETIMEDOUT, "test guard");
    stop_all(w);
}

static void world_init(struct world *w)
{
    memset(w, 0, sizeof *w);
    assert_int_equal(uv_loop_init(&w->loop), 0);
    assert_int_equal(addr_parse(&w->addr, "127.0.0.1:0", 0), 0);
    assert_int_equal(stream_listen(&w->loop, &w->listener, &w->addr, 16, false, on_conn), 0);
    w->listener.data = w;
    int len = sizeof w->addr.u.ss;
    assert_int_equal(uv_tcp_getsockname(&w->listener, &w->addr.u.sa, &len), 0);
    assert_true(addr_port(&w->addr) != 0);
    uv_timer_init(&w->loop, &w->guard);
    w->guard.data = w;
    uv_timer_start(&w->guard, on_guard, 5000, 0);
    w->scbs = (struct stream_cbs){.on_data = srv_data, .on_open = srv_open, .on_close = srv_close};
    w->ccbs = (struct stream_cbs){.on_data = cli_data, .on_open = cli_open, .on_close = cli_close};
}

static void world_run(struct world *w)
{
    assert_int_equal(stream_connect(&w->loop, &w->addr, NULL, &w->copts, &w->ccbs, w, &w->cli), 0);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w->loop), 0);
}

static struct tls_ctx *mk_ctx(bool server)
{
    struct tls_cert_opts co = {CERTS "/director.crt", CERTS "/director.key"};
    struct tls_opts o = {.server = server,
                         .certs = server ? &co : NULL,
                         .ncerts = server,
                         .ca_file = CERTS "/ca.crt",
                         .verify_peer = !server};
    char err[256];
    struct tls_ctx *c = NULL;
    assert_int_equal(tls_ctx_create(&c, &o, err, sizeof err), 0);
    return c;
}

static void test_echo_plain(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.echo = true;
    world_run(&w);
    assert_int_equal(w.cli_open, 1);
    assert_int_equal(w.srv_open, 1);
    assert_int_equal(w.got_len, 5);
    assert_memory_equal(w.got, "hello", 5);
    assert_int_equal(w.cli_closed, 1);
    assert_int_equal(w.cli_err, 0);
    assert_string_equal(w.cli_why, "done");
    /* The server sees the client's FIN as a clean close. */
    assert_int_equal(w.srv_closed, 1);
    assert_int_equal(w.srv_err, 0);
}

static void test_echo_tls(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.echo = true;
    w.sopts.tls = mk_ctx(true);
    w.copts.tls = mk_ctx(false);
    w.copts.server_name = "director";
    w.sopts.handshake_timeout_ms = 2000;
    world_run(&w);
    tls_ctx_unref(w.sopts.tls);
    tls_ctx_unref(w.copts.tls);
    assert_int_equal(w.cli_open, 1);
    assert_int_equal(w.srv_open, 1);
    assert_int_equal(w.got_len, 5);
    assert_memory_equal(w.got, "hello", 5);
    assert_int_equal(w.srv_closed, 1);
    assert_int_equal(w.srv_err, 0);
    assert_int_equal(w.cli_closed, 1);
}

static void test_tls_failure_closes_with_reason(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.sopts.tls = mk_ctx(true);
    w.copts.tls = mk_ctx(false);
    w.copts.server_name = "not-the-director";
    world_run(&w);
    tls_ctx_unref(w.sopts.tls);
    tls_ctx_unref(w.copts.tls);
    assert_int_equal(w.cli_open, 0);
    assert_int_equal(w.srv_open, 0);
    assert_int_equal(w.cli_closed, 1);
    assert_int_equal(w.cli_err, -EPROTO);
    assert_non_null(strstr(w.cli_why, "name mismatch"));
    assert_int_equal(w.srv_closed, 1);
    assert_true(w.srv_err < 0);
}

static void test_connect_refused(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    struct addr to = w.addr;
    uv_close((uv_handle_t *)&w.listener, NULL);
    w.srv_closed = 1; /* there will be no server stream */
    assert_int_equal(stream_connect(&w.loop, &to, NULL, &w.copts, &w.ccbs, &w, &w.cli), 0);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w.loop), 0);
    assert_int_equal(w.cli_closed, 1);
    assert_int_equal(w.cli_err, UV_ECONNREFUSED);
    assert_non_null(strstr(w.cli_why, "connect failed"));
}

/* Backpressure: the server stops reading, the client writes until -ENOBUFS, then the
 * server resumes and the client hears on_drain. */
static void bp_resume(uv_timer_t *t)
{
    struct world *w = t->data;
    stream_read_start(w->srv);
    uv_close((uv_handle_t *)t, NULL);
}

static void bp_fill(struct world *w, struct stream *s)
{
    static uint8_t chunk[16384];
    for (int i = 0; i < 100000; i++) {
        int rc = stream_write(s, chunk, sizeof chunk);
        if (rc == -ENOBUFS) {
            w->saw_enobufs = true;
            return;
        }
        assert_int_equal(rc, 0);
        w->written += sizeof chunk;
    }
    fail_msg("never saw -ENOBUFS");
}

static uv_timer_t bp_timer;

static void bp_cli_open(struct stream *s, void *arg)
{
    struct world *w = arg;
    w->cli_open++;
    bp_fill(w, s);
    assert_true(stream_queued(s) > 0);
    uv_timer_init(&w->loop, &bp_timer);
    bp_timer.data = w;
    uv_timer_start(&bp_timer, bp_resume, 50, 0);
}

static void bp_cli_drain(struct stream *s, void *arg)
{
    struct world *w = arg;
    w->drains++;
    assert_true(stream_queued(s) < 64 * 1024 / 2);
    stream_shutdown(s);
}

static void backpressure(bool tls)
{
    struct world w;
    world_init(&w);
    w.srv_pause = true;
    w.copts.write_cap = 64 * 1024;
    w.ccbs.on_open = bp_cli_open;
    w.ccbs.on_drain = bp_cli_drain;
    if (tls) {
        w.sopts.tls = mk_ctx(true);
        w.copts.tls = mk_ctx(false);
        w.copts.server_name = "director";
    }
    world_run(&w);
    tls_ctx_unref(w.sopts.tls);
    tls_ctx_unref(w.copts.tls);
    assert_true(w.saw_enobufs);
    assert_int_equal(w.drains, 1);
    /* Everything accepted was delivered, then the half-close ended both sides cleanly. */
    assert_int_equal(w.srv_got, w.written);
    assert_int_equal(w.srv_err, 0);
    assert_int_equal(w.cli_err, 0);
    assert_int_equal(w.srv_closed, 1);
    assert_int_equal(w.cli_closed, 1);
}

static void test_backpressure_plain(void **state)
{
    (void)state;
    backpressure(false);
}

static void test_backpressure_tls(void **state)
{
    (void)state;
    backpressure(true);
}

/* The server pauses reading before the TLS handshake is over: the handshake still
 * completes, data waits, and arrives once reading resumes. */
static void pause_resume(uv_timer_t *t)
{
    struct world *w = t->data;
    assert_int_equal(w->srv_got, 0);
    stream_read_start(w->srv);
    uv_close((uv_handle_t *)t, NULL);
}

static uv_timer_t pause_timer;

static void pause_srv_open(struct stream *s, void *arg)
{
    struct world *w = arg;
    w->srv_open++;
    uv_timer_init(&w->loop, &pause_timer);
    pause_timer.data = w;
    uv_timer_start(&pause_timer, pause_resume, 50, 0);
}

static void test_read_stop_before_handshake(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.echo = true;
    w.sopts.tls = mk_ctx(true);
    w.copts.tls = mk_ctx(false);
    w.copts.server_name = "director";
    w.scbs.on_open = pause_srv_open;
    assert_int_equal(stream_connect(&w.loop, &w.addr, NULL, &w.copts, &w.ccbs, &w, &w.cli), 0);
    /* Run until the server stream exists, then pause it before its handshake is done. */
    while (!w.srv)
        uv_run(&w.loop, UV_RUN_ONCE);
    stream_read_stop(w.srv);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w.loop), 0);
    tls_ctx_unref(w.sopts.tls);
    tls_ctx_unref(w.copts.tls);
    assert_int_equal(w.srv_open, 1);
    assert_int_equal(w.got_len, 5);
    assert_memory_equal(w.got, "hello", 5);
    assert_int_equal(w.srv_err, 0);
    assert_int_equal(w.cli_err, 0);
}

/* One port for plain and TLS: the server looks at the first bytes and starts TLS. */
static void test_start_tls_after_sniffing(void **state)
{
    (void)state;
    for (int tls = 0; tls < 2; tls++) {
        struct world w;
        world_init(&w);
        w.echo = true;
        w.sniff = mk_ctx(true);
        if (tls) {
            w.copts.tls = mk_ctx(false);
            w.copts.server_name = "director";
        }
        world_run(&w);
        tls_ctx_unref(w.sniff);
        tls_ctx_unref(w.copts.tls);
        assert_int_equal(w.got_len, 5);
        assert_memory_equal(w.got, "hello", 5);
        assert_int_equal(w.srv_open, tls ? 2 : 1); /* plain open, then TLS open */
        assert_int_equal(w.srv_got, 5);
        assert_int_equal(w.srv_err, 0);
    }
}

/* Many TLS clients at once, each sending 256 KiB of a known pattern in odd-sized writes;
 * the server echoes; every client checks every byte. Records get split across reads, and
 * idle connections give back and take again their record buffers all the time. */
#define STRESS_CLIENTS 12
#define STRESS_BYTES (256 * 1024)

struct stress_cli {
    struct world *w;
    size_t sent, got;
    bool bad;
};

static uint8_t stress_byte(size_t i, int who)
{
    return (uint8_t)(i * 7 + (i >> 9) + (size_t)who * 13);
}

static int stress_who(const struct stress_cli *c);
static struct stress_cli stress[STRESS_CLIENTS];
static int stress_done;

static int stress_who(const struct stress_cli *c)
{
    return (int)(c - stress);
}

static void stress_send(struct stream *s, struct stress_cli *c)
{
    uint8_t buf[5000];
    while (c->sent < STRESS_BYTES) {
        size_t n = 1 + (c->sent * 31 + 17) % sizeof buf;
        if (n > STRESS_BYTES - c->sent)
            n = STRESS_BYTES - c->sent;
        for (size_t i = 0; i < n; i++)
            buf[i] = stress_byte(c->sent + i, stress_who(c));
        int rc = stream_write(s, buf, n);
        if (rc == -ENOBUFS)
            return; /* on_drain resumes */
        assert_int_equal(rc, 0);
        c->sent += n;
    }
}

static void stress_open(struct stream *s, void *arg)
{
    stress_send(s, arg);
}

static void stress_drain(struct stream *s, void *arg)
{
    stress_send(s, arg);
}

static int stress_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct stress_cli *c = arg;
    for (size_t i = 0; i < n; i++)
        if (p[i] != stress_byte(c->got + i, stress_who(c)))
            c->bad = true;
    c->got += n;
    if (c->got == STRESS_BYTES)
        stream_close(s, 0, "done");
    return 0;
}

static void stress_close(struct stream *s, int err, const char *why, void *arg)
{
    struct stress_cli *c = arg;
    if (err)
        fprintf(stderr, "stress client closed: %s\n", why ? why : "?");
    if (++stress_done == STRESS_CLIENTS)
        stop_all(c->w);
}

static void stress_srv_close(struct stream *s, int err, const char *why, void *arg)
{
    struct world *w = arg;
    if (err)
        fprintf(stderr, "stress server end closed: %s\n", why ? why : "?");
    w->srv_closed++;
    w->srv_err |= err;
}

/* STRESS_CLIENTS TLS clients connect at once and each echoes STRESS_BYTES; the server
 * ends take their handshakes through gate if one is given. */
static void many_tls_echo(uint32_t gate_budget_us, bool gated)
{
    struct world w;
    world_init(&w);
    w.echo = true;
    w.sopts.tls = mk_ctx(true);
    w.sopts.write_cap = 8 << 20; /* the echo never has to wait */
    if (gated)
        assert_int_equal(stream_gate_create(&w.loop, gate_budget_us, &w.sopts.gate), 0);
    w.copts.tls = mk_ctx(false);
    w.copts.server_name = "director";
    w.copts.read_chunk = 3000; /* records arrive in pieces */
    w.scbs.on_close = stress_srv_close;
    struct stream_cbs cbs = {.on_data = stress_data,
                             .on_open = stress_open,
                             .on_drain = stress_drain,
                             .on_close = stress_close};
    memset(stress, 0, sizeof stress);
    stress_done = 0;
    uv_timer_start(&w.guard, on_guard, 20000, 0);
    for (int i = 0; i < STRESS_CLIENTS; i++) {
        struct stream *s;
        stress[i].w = &w;
        assert_int_equal(stream_connect(&w.loop, &w.addr, NULL, &w.copts, &cbs, &stress[i], &s), 0);
    }
    uv_run(&w.loop, UV_RUN_DEFAULT);
    stream_gate_destroy(w.sopts.gate);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w.loop), 0);
    tls_ctx_unref(w.sopts.tls);
    tls_ctx_unref(w.copts.tls);
    for (int i = 0; i < STRESS_CLIENTS; i++) {
        assert_int_equal(stress[i].got, STRESS_BYTES);
        assert_false(stress[i].bad);
    }
    assert_int_equal(w.srv_closed, STRESS_CLIENTS);
    assert_int_equal(w.srv_err, 0);
}

static void test_many_tls_streams_echo(void **state)
{
    (void)state;
    many_tls_echo(0, false);
}

/* A gate with no budget still lets one handshake flight through per loop turn: every
 * client of a burst gets its handshake and its echo, and the gate frees itself. */
static void test_handshake_gate_burst_all_served(void **state)
{
    (void)state;
    many_tls_echo(0, true);
    many_tls_echo(2000, true);
}

/* Bad arguments are refused with the out-parameter untouched; destroying NULL is a no-op. */
static void test_handshake_gate_destroy_null(void **state)
{
    (void)state;
    stream_gate_destroy(NULL);
    struct stream_gate *g = NULL;
    assert_int_equal(stream_gate_create(NULL, 1000, &g), -EINVAL);
    assert_null(g);
}

/* Pausing and resuming a client before its connect completes is harmless. */
static void test_read_pause_before_connect(void **state)
{
    (void)state;
    for (int tls = 0; tls < 2; tls++) {
        struct world w;
        world_init(&w);
        w.echo = true;
        if (tls) {
            w.sopts.tls = mk_ctx(true);
            w.copts.tls = mk_ctx(false);
            w.copts.server_name = "director";
        }
        assert_int_equal(stream_connect(&w.loop, &w.addr, NULL, &w.copts, &w.ccbs, &w, &w.cli), 0);
        stream_read_stop(w.cli);
        stream_read_start(w.cli);
        uv_run(&w.loop, UV_RUN_DEFAULT);
        assert_int_equal(uv_loop_close(&w.loop), 0);
        tls_ctx_unref(w.sopts.tls);
        tls_ctx_unref(w.copts.tls);
        assert_int_equal(w.got_len, 5);
        assert_int_equal(w.cli_err, 0);
        assert_string_equal(w.cli_why, "done");
    }
}

/* A plaintext client on a TLS port is closed at its first bytes, with a clear reason. */
static void test_plaintext_on_tls_port_is_refused(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.sopts.tls = mk_ctx(true);
    w.sopts.handshake_timeout_ms = 3000;
    world_run(&w); /* the plain client writes "hello" */
    tls_ctx_unref(w.sopts.tls);
    assert_int_equal(w.srv_open, 0);
    assert_int_equal(w.srv_closed, 1);
    assert_int_equal(w.srv_err, -EPROTO);
    assert_non_null(strstr(w.srv_why, "not TLS"));
    assert_int_equal(w.cli_closed, 1);
}

/* SIGHUP: the daemon swaps in a new ctx (new certificate) and drops its reference to the
 * old one. A connection made before keeps working on the old ctx; a new one gets the new
 * certificate. */
struct swap {
    struct world *w;
    struct tls_ctx *next;
    struct stream *first;
    int phase;
    char cn[2][32];
    size_t got[2];
};

static void swap_second_open(struct stream *s, void *arg);
static int swap_cli_data(struct stream *s, const uint8_t *p, size_t n, void *arg);
static void swap_cli_close(struct stream *s, int err, const char *why, void *arg) {}

static void swap_cli_open(struct stream *s, void *arg)
{
    struct swap *sw = arg;
    snprintf(sw->cn[0], sizeof sw->cn[0], "%s", tls_conn_peer_cn(stream_tls(s)));
    sw->first = s;
    assert_int_equal(stream_write(s, "one", 3), 0);
}

static int swap_cli_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct swap *sw = arg;
    struct world *w = sw->w;
    if (s == sw->first) {
        sw->got[0] += n;
        if (sw->phase == 0 && sw->got[0] == 3) {
            /* Reload: new certificate for new connections; the old ctx goes. */
            sw->phase = 1;
            tls_ctx_unref(w->sopts.tls);
            w->sopts.tls = sw->next;
            static const struct stream_cbs cbs = {
                .on_data = swap_cli_data, .on_open = swap_second_open, .on_close = swap_cli_close};
            struct stream *s2;
            assert_int_equal(stream_connect(&w->loop, &w->addr, NULL, &w->copts, &cbs, sw, &s2), 0);
        } else if (sw->phase == 2 && sw->got[0] == 6) {
            stream_close(s, 0, "done");
            stop_all(w);
        }
    } else {
        sw->got[1] += n;
        if (sw->got[1] == 3) {
            /* The old connection still echoes, on the old ctx. */
            sw->phase = 2;
            assert_int_equal(stream_write(sw->first, "two", 3), 0);
            stream_close(s, 0, "done");
        }
    }
    return 0;
}

static void swap_second_open(struct stream *s, void *arg)
{
    struct swap *sw = arg;
    snprintf(sw->cn[1], sizeof sw->cn[1], "%s", tls_conn_peer_cn(stream_tls(s)));
    assert_int_equal(stream_write(s, "new", 3), 0);
}

static void test_ctx_swap_keeps_old_connections(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.echo = true;
    w.sopts.tls = mk_ctx(true);
    struct tls_cert_opts co = {CERTS "/web.crt", CERTS "/web.key"};
    struct tls_opts o = {.server = true, .certs = &co, .ncerts = 1};
    char err[256];
    struct swap sw = {.w = &w};
    assert_int_equal(tls_ctx_create(&sw.next, &o, err, sizeof err), 0);
    struct tls_opts lax = {.server = false};
    assert_int_equal(tls_ctx_create(&w.copts.tls, &lax, err, sizeof err), 0);
    w.scbs.on_close = stress_srv_close; /* counts, no stop */
    struct stream_cbs cbs = {
        .on_data = swap_cli_data, .on_open = swap_cli_open, .on_close = swap_cli_close};
    struct stream *s1;
    assert_int_equal(stream_connect(&w.loop, &w.addr, NULL, &w.copts, &cbs, &sw, &s1), 0);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w.loop), 0);
    tls_ctx_unref(w.sopts.tls);
    tls_ctx_unref(w.copts.tls);
    assert_string_equal(sw.cn[0], "director");
    assert_string_equal(sw.cn[1], "web");
    assert_int_equal(sw.got[0], 6);
    assert_int_equal(sw.got[1], 3);
    assert_int_equal(w.srv_closed, 2);
}

/* on_data returning an error closes the stream with it. */
static int refuse_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct world *w = arg;
    w->srv_got += n;
    return -EBADMSG;
}

static void test_handler_error_closes(void **state)
{
    (void)state;
    for (int tls = 0; tls < 2; tls++) {
        struct world w;
        world_init(&w);
        w.scbs.on_data = refuse_data;
        if (tls) {
            w.sopts.tls = mk_ctx(true);
            w.copts.tls = mk_ctx(false);
            w.copts.server_name = "director";
        }
        world_run(&w);
        tls_ctx_unref(w.sopts.tls);
        tls_ctx_unref(w.copts.tls);
        assert_int_equal(w.srv_got, 5);
        assert_int_equal(w.srv_err, -EBADMSG);
        assert_string_equal(w.srv_why, "closed by handler");
        assert_int_equal(w.cli_closed, 1);
    }
}

/* A client that starts a ClientHello and hangs up. */
static void half_hello_open(struct stream *s, void *arg)
{
    struct world *w = arg;
    w->cli_open++;
    const uint8_t part[] = {0x16, 0x03, 0x01, 0x00, 0x80, 0x01, 0x00};
    assert_int_equal(stream_write(s, part, sizeof part), 0);
    stream_shutdown(s);
}

static void test_eof_during_handshake(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.sopts.tls = mk_ctx(true);
    w.ccbs.on_open = half_hello_open;
    world_run(&w);
    tls_ctx_unref(w.sopts.tls);
    assert_int_equal(w.srv_open, 0);
    assert_int_equal(w.srv_err, -ECONNRESET);
    assert_string_equal(w.srv_why, "peer closed during the handshake");
    assert_int_equal(stream_write(NULL, "x", 1), -EINVAL);
}

/* Connecting from a chosen local address; both ends agree on who is who. */
static struct addr seen_local, seen_peer;

static void addr_open(struct stream *s, void *arg)
{
    struct world *w = arg;
    w->cli_open++;
    seen_local = *stream_local(s);
    assert_int_equal(stream_write(s, "hello", 5), 0);
}

static void addr_srv_open(struct stream *s, void *arg)
{
    struct world *w = arg;
    w->srv_open++;
    seen_peer = *stream_peer(s);
}

static void test_bind_from_and_addresses(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.echo = true;
    w.ccbs.on_open = addr_open;
    w.scbs.on_open = addr_srv_open;
    struct addr from;
    assert_int_equal(addr_parse(&from, "127.0.0.2:0", 0), 0);
    assert_int_equal(stream_connect(&w.loop, &w.addr, &from, &w.copts, &w.ccbs, &w, &w.cli), 0);
    assert_true(addr_eq(stream_peer(w.cli), &w.addr));
    assert_ptr_equal(stream_loop(w.cli), &w.loop);
    assert_null(stream_tls(w.cli));
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w.loop), 0);
    char a[ADDR_STRLEN];
    assert_string_equal(addr_format_host(&seen_local, a), "127.0.0.2");
    assert_true(addr_eq(&seen_local, &seen_peer));
    assert_int_equal(w.got_len, 5);

    /* A local address that is not ours fails at once, with no callback. */
    world_init(&w);
    w.srv_closed = 1;
    uv_close((uv_handle_t *)&w.listener, NULL);
    assert_int_equal(addr_parse(&from, "192.0.2.1:0", 0), 0);
    struct stream *never = NULL;
    int rc = stream_connect(&w.loop, &w.addr, &from, &w.copts, &w.ccbs, &w, &never);
    assert_int_equal(rc, -EADDRNOTAVAIL);
    assert_null(never);
    uv_close((uv_handle_t *)&w.guard, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w.loop), 0);
    assert_int_equal(w.cli_closed, 0);
}

/* TCP half-close: the client sends its request and shuts down its side; the server, told
 * of the FIN, answers later and shuts down too; both ends then close cleanly. */
static uv_timer_t late_timer;

static void late_answer(uv_timer_t *t)
{
    struct world *w = t->data;
    assert_int_equal(stream_write(w->srv, "late", 4), 0);
    stream_shutdown(w->srv);
    uv_close((uv_handle_t *)t, NULL);
}

static void srv_eof(struct stream *s, void *arg)
{
    struct world *w = arg;
    w->drains++; /* counts EOFs here */
    uv_timer_init(&w->loop, &late_timer);
    late_timer.data = w;
    uv_timer_start(&late_timer, late_answer, 30, 0);
}

static void half_close_open(struct stream *s, void *arg)
{
    struct world *w = arg;
    w->cli_open++;
    assert_int_equal(stream_write(s, "hello", 5), 0);
    stream_shutdown(s);
    assert_int_equal(stream_write(s, "more", 4), -EPIPE);
}

static int half_cli_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct world *w = arg;
    memcpy(w->got + w->got_len, p, n);
    w->got_len += n;
    return 0;
}

static void test_half_close_answer_after_eof(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.scbs.on_eof = srv_eof;
    w.ccbs.on_open = half_close_open;
    w.ccbs.on_data = half_cli_data;
    world_run(&w);
    assert_int_equal(w.drains, 1);
    assert_int_equal(w.srv_got, 5);
    assert_int_equal(w.got_len, 4);
    assert_memory_equal(w.got, "late", 4);
    assert_int_equal(w.srv_err, 0);
    assert_string_equal(w.srv_why, "closed by both ends");
    assert_int_equal(w.cli_err, 0);
    assert_string_equal(w.cli_why, "closed by both ends");
}

static void silent_open(struct stream *s, void *arg)
{
    struct world *w = arg;
    w->cli_open++;
}

static void test_idle_timeout_closes(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.sopts.idle_timeout_ms = 100;
    w.ccbs.on_open = silent_open;
    uint64_t t0 = uv_hrtime();
    world_run(&w);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(w.srv_closed, 1);
    assert_int_equal(w.srv_err, -ETIMEDOUT);
    assert_string_equal(w.srv_why, "idle timeout");
    assert_true(ms >= 90 && ms < 2000);
    assert_int_equal(w.cli_closed, 1);
    assert_int_equal(w.cli_err, 0); /* the client just sees the server go */
}

static void shorten_idle(struct stream *s, void *arg)
{
    struct world *w = arg;
    w->srv_open++;
    stream_set_idle_timeout(s, 60); /* from "none" to 60 ms */
}

static void test_idle_timeout_can_be_changed(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.scbs.on_open = shorten_idle;
    w.ccbs.on_open = silent_open;
    world_run(&w);
    assert_int_equal(w.srv_closed, 1);
    assert_int_equal(w.srv_err, -ETIMEDOUT);
    assert_string_equal(w.srv_why, "idle timeout");
}

static void test_handshake_timeout_closes_silent_client(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.sopts.tls = mk_ctx(true);
    w.sopts.handshake_timeout_ms = 100;
    w.ccbs.on_open = silent_open; /* plain TCP client that never says hello */
    world_run(&w);
    tls_ctx_unref(w.sopts.tls);
    assert_int_equal(w.srv_open, 0);
    assert_int_equal(w.srv_closed, 1);
    assert_int_equal(w.srv_err, -ETIMEDOUT);
    assert_string_equal(w.srv_why, "TLS handshake timeout");
    assert_int_equal(w.cli_closed, 1);
}

/* With no timeout in the stream options, the one in the TLS options applies. */
static void test_handshake_timeout_from_tls_opts(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    struct tls_cert_opts co = {CERTS "/director.crt", CERTS "/director.key"};
    struct tls_opts o = {.server = true, .certs = &co, .ncerts = 1, .handshake_timeout_ms = 80};
    char err[256];
    assert_int_equal(tls_ctx_create(&w.sopts.tls, &o, err, sizeof err), 0);
    w.ccbs.on_open = silent_open;
    world_run(&w);
    tls_ctx_unref(w.sopts.tls);
    assert_int_equal(w.srv_closed, 1);
    assert_int_equal(w.srv_err, -ETIMEDOUT);
    assert_string_equal(w.srv_why, "TLS handshake timeout");
}

static void test_close_is_idempotent(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    w.srv_closed = 1;
    uv_close((uv_handle_t *)&w.listener, NULL);
    struct addr to;
    assert_int_equal(addr_parse(&to, "127.0.0.1:9", 0), 0);
    /* A server ctx cannot connect out. */
    struct stream_opts bad = {.tls = mk_ctx(true)};
    struct stream *never = NULL;
    assert_int_equal(stream_connect(&w.loop, &to, NULL, &bad, &w.ccbs, &w, &never), -EINVAL);
    assert_null(never);
    tls_ctx_unref(bad.tls);
    assert_int_equal(stream_connect(&w.loop, &to, NULL, &w.copts, &w.ccbs, &w, &w.cli), 0);
    stream_close(w.cli, -ECANCELED, "first");
    stream_close(w.cli, -EIO, "second");
    assert_int_equal(stream_write(w.cli, "x", 1), -EPIPE);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w.loop), 0);
    assert_int_equal(w.cli_closed, 1);
    assert_int_equal(w.cli_err, -ECANCELED);
    assert_string_equal(w.cli_why, "first");
}

static void test_listen_reuseport_and_errors(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_tcp_t a, b, c;
    struct addr ad;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(addr_parse(&ad, "127.0.0.1:0", 0), 0);
    assert_int_equal(stream_listen(&loop, &a, &ad, 8, true, on_conn), 0);
    int len = sizeof ad.u.ss;
    uv_tcp_getsockname(&a, &ad.u.sa, &len);
    /* A second listener on the same port works with SO_REUSEPORT ... */
    assert_int_equal(stream_listen(&loop, &b, &ad, 8, true, on_conn), 0);
    /* ... and fails without, leaving no handle behind. */
    assert_int_equal(stream_listen(&loop, &c, &ad, 8, false, on_conn), -EADDRINUSE);
    uv_close((uv_handle_t *)&a, NULL);
    uv_close((uv_handle_t *)&b, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Bulk TLS (16 MiB) with 64 KiB reads while the reader pauses after every delivery and resumes just
 * before the loop polls (uv_prepare): what a pause leaves in the TLS input buffer must be
 * delivered before the next socket read adds to it (a 64 KiB read on top of it overflowed
 * the buffer and closed the stream). Every byte arrives, once, in order, under the
 * writer's backpressure. */
#define BULK_TOTAL (16u << 20) /* past what the loopback socket buffers take (tcp_wmem: 4 MiB) */
static uv_prepare_t bulk_prep;
static size_t bulk_sent;

static uint8_t bulk_byte(size_t i)
{
    return (uint8_t)(i * 131u + (i >> 13));
}

static void bulk_send(struct stream *s)
{
    static uint8_t chunk[40000]; /* not a record multiple: writes straddle records */
    while (bulk_sent < BULK_TOTAL) {
        size_t n = BULK_TOTAL - bulk_sent < sizeof chunk ? BULK_TOTAL - bulk_sent : sizeof chunk;
        for (size_t i = 0; i < n; i++)
            chunk[i] = bulk_byte(bulk_sent + i);
        int rc = stream_write(s, chunk, n);
        if (rc == -ENOBUFS)
            return; /* on_drain goes on */
        assert_int_equal(rc, 0);
        bulk_sent += n;
    }
    stream_shutdown(s);
}

static void bulk_cli_open(struct stream *s, void *arg)
{
    ((struct world *)arg)->cli_open++;
    bulk_send(s);
}

static void bulk_cli_drain(struct stream *s, void *arg)
{
    ((struct world *)arg)->drains++;
    bulk_send(s);
}

static void bulk_resume(uv_prepare_t *h)
{
    struct world *w = h->data;
    uv_prepare_stop(h);
    if (w->srv)
        stream_read_start(w->srv);
}

static int bulk_srv_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct world *w = arg;
    for (size_t i = 0; i < n; i++)
        if (p[i] != bulk_byte(w->srv_got + i))
            fail_msg("byte %zu out of order", w->srv_got + i);
    w->srv_got += n;
    stream_read_stop(s);
    uv_prepare_start(&bulk_prep, bulk_resume);
    return 0;
}

static void tls_bulk(size_t write_batch)
{
    struct world w;
    world_init(&w);
    bulk_sent = 0;
    w.scbs.on_data = bulk_srv_data;
    w.sopts.read_chunk = 64 * 1024;
    w.copts.write_cap = 256 * 1024;
    w.copts.write_batch = write_batch;
    w.ccbs.on_open = bulk_cli_open;
    w.ccbs.on_drain = bulk_cli_drain;
    w.sopts.tls = mk_ctx(true);
    w.copts.tls = mk_ctx(false);
    w.copts.server_name = "director";
    /* A small receive buffer (inherited by the accepted socket) so the writer meets its
     * write_cap whatever the loopback's buffer autotuning would allow. */
    uv_os_fd_t lfd;
    int rcvbuf = 64 * 1024;
    assert_int_equal(uv_fileno((uv_handle_t *)&w.listener, &lfd), 0);
    assert_int_equal(setsockopt(lfd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    uv_prepare_init(&w.loop, &bulk_prep);
    bulk_prep.data = &w;
    uv_unref((uv_handle_t *)&bulk_prep);
    assert_int_equal(stream_connect(&w.loop, &w.addr, NULL, &w.copts, &w.ccbs, &w, &w.cli), 0);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&bulk_prep, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w.loop), 0);
    tls_ctx_unref(w.sopts.tls);
    tls_ctx_unref(w.copts.tls);
    assert_string_equal(w.srv_why, "peer closed");
    assert_true(w.drains > 0); /* the writer did meet backpressure */
    assert_int_equal(w.srv_err, 0);
    assert_int_equal(w.srv_got, BULK_TOTAL);
    assert_int_equal(w.cli_closed, 1);
}

static void test_tls_bulk_large_reads_with_pauses(void **state)
{
    (void)state;
    tls_bulk(0);
}

/* The same through write_batch: writes of 40,000 bytes gathered and sealed in whole records
 * (the batch's tail at the end of each turn, and before close_notify on shutdown). */
static void test_tls_bulk_batched_writes(void **state)
{
    (void)state;
    tls_bulk(64 * 1024);
}

/* Gathered writes (stream_opts.write_batch) of small messages: every write of a loop turn waits and
 * leaves with the others once the turn's callbacks are done; many messages arrive whole and in
 * order, both when written from a stream's own callback and from a timer (which runs before the
 * loop polls: the flush must not wait for the next I/O). */
#define CO_MSGS 300
#define CO_LEN 12 /* "msg 00000\r\n" + '\0' written as CO_LEN-1 bytes */

static uv_timer_t co_timer;

static void co_write_batch(struct world *w, struct stream *s, int first)
{
    char m[CO_LEN];
    for (int i = first; i < first + CO_MSGS / 2; i++) {
        snprintf(m, sizeof m, "msg %05d\r\n", i);
        assert_int_equal(stream_write(s, m, CO_LEN - 1), 0);
    }
    /* Held for the end of the turn, not written one by one. */
    assert_int_equal(stream_queued(s) > 0, 1);
    w->written += (size_t)(CO_MSGS / 2) * (CO_LEN - 1);
}

static void co_on_timer(uv_timer_t *t)
{
    struct world *w = t->data;
    if (w->srv)
        co_write_batch(w, w->srv, CO_MSGS / 2);
    uv_close((uv_handle_t *)t, NULL);
}

static int co_srv_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct world *w = arg;
    (void)p;
    w->srv_got += n;
    if (w->srv_got == 5) {
        co_write_batch(w, s, 0);
        uv_timer_init(&w->loop, &co_timer);
        co_timer.data = w;
        uv_timer_start(&co_timer, co_on_timer, 20, 0);
    }
    return 0;
}

static int co_cli_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct world *w = arg;
    assert_true(w->got_len + n <= sizeof w->got);
    memcpy(w->got + w->got_len, p, n);
    w->got_len += n;
    if (w->got_len == (size_t)CO_MSGS * (CO_LEN - 1))
        stream_close(s, 0, "done");
    return 0;
}

/* A client and a server whose writes gather (write_batch), over TLS or plain TCP, with these
 * data callbacks, run to the end. */
static void run_batched(struct world *w, bool tls,
                        int (*on_srv)(struct stream *, const uint8_t *, size_t, void *),
                        int (*on_cli)(struct stream *, const uint8_t *, size_t, void *))
{
    world_init(w);
    w->sopts.write_batch = 65536;
    if (tls) {
        w->sopts.tls = mk_ctx(true);
        w->copts.tls = mk_ctx(false);
        w->copts.server_name = "director";
    }
    w->scbs.on_data = on_srv;
    w->ccbs.on_data = on_cli;
    world_run(w);
    tls_ctx_unref(w->sopts.tls);
    tls_ctx_unref(w->copts.tls);
}

static void small_batches(bool tls)
{
    struct world w;
    run_batched(&w, tls, co_srv_data, co_cli_data);
    assert_int_equal(w.got_len, (size_t)CO_MSGS * (CO_LEN - 1));
    for (int i = 0; i < CO_MSGS; i++) {
        char m[CO_LEN];
        snprintf(m, sizeof m, "msg %05d\r\n", i);
        assert_memory_equal(w.got + (size_t)i * (CO_LEN - 1), m, CO_LEN - 1);
    }
    assert_int_equal(w.cli_closed, 1);
    assert_int_equal(w.cli_err, 0);
    assert_string_equal(w.cli_why, "done");
    assert_int_equal(w.srv_closed, 1);
    assert_int_equal(w.srv_err, 0);
}

static void test_write_batch_plain_order_and_completeness(void **state)
{
    (void)state;
    small_batches(false);
}

static void test_write_batch_tls_order_and_completeness(void **state)
{
    (void)state;
    small_batches(true);
}

/* A stream closed with an error in the turn it wrote (a refusal, then the close) still sends
 * what it wrote: gathered writes are sealed and sent, not dropped, plain and TLS alike. */
static const char refusal[] = "SIP/2.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n";

static int ec_srv_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct world *w = arg;
    (void)p;
    w->srv_got += n;
    if (w->srv_got == 5) {
        assert_int_equal(stream_write(s, refusal, sizeof(refusal) - 1), 0);
        stream_close(s, -EPROTO, "refused");
    }
    return 0;
}

static int ec_cli_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct world *w = arg;
    (void)s;
    assert_true(w->got_len + n <= sizeof w->got);
    memcpy(w->got + w->got_len, p, n);
    w->got_len += n;
    return 0;
}

static void error_close_after_write(bool tls)
{
    struct world w;
    run_batched(&w, tls, ec_srv_data, ec_cli_data);
    assert_int_equal(w.srv_closed, 1);
    assert_int_equal(w.srv_err, -EPROTO);
    assert_int_equal(w.cli_closed, 1);
    assert_int_equal(w.got_len, sizeof(refusal) - 1);
    assert_memory_equal(w.got, refusal, sizeof(refusal) - 1);
}

static void test_write_batch_plain_error_close_sends_writes(void **state)
{
    (void)state;
    error_close_after_write(false);
}

static void test_write_batch_tls_error_close_sends_writes(void **state)
{
    (void)state;
    error_close_after_write(true);
}

/* stream_opts.read_scratch: every read of the server's stream lands in the caller's buffer
 * (no buffer of its own per read), plain and TLS, and the bytes are intact. */
static uint8_t scratch_buf[16384];

static int scratch_srv_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct world *w = arg;
    if (!stream_tls(s)) /* plain: on_data sees the read itself */
        assert_true(p >= scratch_buf && p + n <= scratch_buf + sizeof scratch_buf);
    w->srv_got += n;
    assert_int_equal(stream_write(s, p, n), 0);
    return 0;
}

static int scratch_feed_seen;

static void scratch_world(bool tls)
{
    struct world w;
    world_init(&w);
    memset(scratch_buf, 0, sizeof scratch_buf);
    w.sopts.read_scratch = scratch_buf;
    w.sopts.read_scratch_len = sizeof scratch_buf;
    if (tls) {
        w.sopts.tls = mk_ctx(true);
        w.copts.tls = mk_ctx(false);
        w.copts.server_name = "director";
    }
    w.scbs.on_data = scratch_srv_data;
    world_run(&w);
    tls_ctx_unref(w.sopts.tls);
    tls_ctx_unref(w.copts.tls);
    assert_int_equal(w.got_len, 5);
    assert_memory_equal(w.got, "hello", 5);
    assert_int_equal(w.srv_closed, 1);
    assert_int_equal(w.srv_err, 0);
    /* TLS: the handshake and the record went through the scratch buffer (a ClientHello
     * starts with a handshake record, 0x16 0x03). */
    if (tls)
        scratch_feed_seen =
            scratch_buf[0] == 0x16 || scratch_buf[0] == 0x17 || scratch_buf[0] == 0x15;
}

static void test_read_scratch_plain(void **state)
{
    (void)state;
    scratch_world(false);
}

static void test_read_scratch_tls(void **state)
{
    (void)state;
    scratch_feed_seen = 0;
    scratch_world(true);
    assert_true(scratch_feed_seen);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as daemon_main does: a peer's close must not kill us */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_plain),
        cmocka_unit_test(test_echo_tls),
        cmocka_unit_test(test_tls_failure_closes_with_reason),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_backpressure_plain),
        cmocka_unit_test(test_backpressure_tls),
        cmocka_unit_test(test_tls_bulk_large_reads_with_pauses),
        cmocka_unit_test(test_tls_bulk_batched_writes),
        cmocka_unit_test(test_read_stop_before_handshake),
        cmocka_unit_test(test_start_tls_after_sniffing),
        cmocka_unit_test(test_many_tls_streams_echo),
        cmocka_unit_test(test_handshake_gate_burst_all_served),
        cmocka_unit_test(test_handshake_gate_destroy_null),
        cmocka_unit_test(test_read_pause_before_connect),
        cmocka_unit_test(test_plaintext_on_tls_port_is_refused),
        cmocka_unit_test(test_ctx_swap_keeps_old_connections),
        cmocka_unit_test(test_handler_error_closes),
        cmocka_unit_test(test_eof_during_handshake),
        cmocka_unit_test(test_bind_from_and_addresses),
        cmocka_unit_test(test_half_close_answer_after_eof),
        cmocka_unit_test(test_idle_timeout_closes),
        cmocka_unit_test(test_idle_timeout_can_be_changed),
        cmocka_unit_test(test_handshake_timeout_closes_silent_client),
        cmocka_unit_test(test_handshake_timeout_from_tls_opts),
        cmocka_unit_test(test_close_is_idempotent),
        cmocka_unit_test(test_listen_reuseport_and_errors),
        cmocka_unit_test(test_write_batch_plain_order_and_completeness),
        cmocka_unit_test(test_write_batch_tls_order_and_completeness),
        cmocka_unit_test(test_write_batch_plain_error_close_sends_writes),
        cmocka_unit_test(test_write_batch_tls_error_close_sends_writes),
        cmocka_unit_test(test_read_scratch_plain),
        cmocka_unit_test(test_read_scratch_tls),
    };
    return cmocka_run_group_tests(tests, certs_setup, NULL);
}
