/* bench-tls: the TLS library's own ceiling on this machine, measured in-process through a
 * pair of tls_conn pumped into each other (no sockets): handshakes and bulk throughput per
 * CPU-second, and heap bytes per idle connection. Every TLS figure of the suite is read
 * against these. Usage: tls_bench [seconds-per-case, default 1.2] */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/stream.h"
#include "common/tls.h"

#define RECORD 16384

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds spent on each side, so the server's share can be read on its own. */
struct meter {
    double cli, srv;
};

static struct tls_ctx *ctx_or_die(const struct tls_opts *o)
{
    char err[256];
    struct tls_ctx *c;
    if (tls_ctx_create(&c, o, err, sizeof err) != 0) {
        fprintf(stderr, "tls_bench: %s\n", err);
        exit(1);
    }
    return c;
}

/* Moves ciphertext from a to b, then lets b process it; returns bytes moved. */
static size_t hop(struct tls_conn *a, struct tls_conn *b, double *bcpu, size_t *plain)
{
    static uint8_t sink[RECORD + 256];
    const uint8_t *p;
    size_t n = tls_conn_pending(a, &p), moved = 0;
    while (n) {
        size_t k = n > 4 * RECORD ? 4 * RECORD : n;
        double t0 = cpu_now();
        if (tls_conn_feed(b, p, k) != 0) {
            fprintf(stderr, "tls_bench: feed overflow\n");
            exit(1);
        }
        tls_conn_consume(a, k);
        ssize_t r;
        while ((r = tls_conn_read(b, sink, sizeof sink)) > 0)
            if (plain)
                *plain += (size_t)r;
        *bcpu += cpu_now() - t0;
        if (r != -EAGAIN) {
            fprintf(stderr, "tls_bench: %s\n", tls_conn_error(b) ? tls_conn_error(b) : "closed");
            exit(1);
        }
        moved += k;
        n = tls_conn_pending(a, &p);
    }
    return moved;
}

static void handshake(struct tls_ctx *cctx, struct tls_ctx *sctx, struct meter *m,
                      struct tls_conn **cli, struct tls_conn **srv)
{
    double t0 = cpu_now();
    if (tls_conn_create(cli, cctx, "bench.lab") != 0)
        exit(1);
    double t1 = cpu_now();
    if (tls_conn_create(srv, sctx, NULL) != 0)
        exit(1);
    double t2 = cpu_now();
    m->cli += t1 - t0;
    m->srv += t2 - t1;
    for (int i = 0; i < 20; i++) {
        size_t a = hop(*cli, *srv, &m->srv, NULL);
        size_t b = hop(*srv, *cli, &m->cli, NULL);
        if (!a && !b)
            break;
    }
    if (!tls_conn_handshake_done(*cli) || !tls_conn_handshake_done(*srv)) {
        fprintf(stderr, "tls_bench: handshake did not finish\n");
        exit(1);
    }
}

static void destroy_pair(struct tls_conn *a, struct tls_conn *b, struct meter *m)
{
    double t0 = cpu_now();
    tls_conn_destroy(a);
    double t1 = cpu_now();
    tls_conn_destroy(b);
    m->cli += t1 - t0;
    m->srv += cpu_now() - t1;
}

/* Each figure is the best of ROUNDS short rounds: on a machine shared with other work the
 * best round is the nearest to the library's own ceiling. */
#define ROUNDS 3

/* Full or resumed handshakes for about secs of CPU. */
static void bench_handshakes(const char *label, struct tls_ctx *sctx, const char *groups,
                             bool tickets, bool resume, double secs)
{
    struct tls_opts co = {.server = false, .groups = groups, .session_tickets = tickets};
    struct tls_ctx *cctx = NULL;
    struct tls_conn *c, *s;
    if (resume) { /* one full handshake to get a session */
        struct meter warm = {0, 0};
        cctx = ctx_or_die(&co);
        handshake(cctx, sctx, &warm, &c, &s);
        destroy_pair(c, s, &warm);
    }
    double best_srv = 0, best_pair = 0;
    for (int r = 0; r < ROUNDS; r++) {
        struct meter m = {0, 0};
        size_t n = 0, resumed = 0;
        double start = cpu_now();
        while (cpu_now() - start < secs / ROUNDS) {
            /* Without resumption, a fresh client context each time: nothing to resume. */
            struct tls_ctx *cc = resume ? cctx : ctx_or_die(&co);
            handshake(cc, sctx, &m, &c, &s);
            resumed += tls_conn_resumed(s);
            destroy_pair(c, s, &m);
            if (!resume)
                tls_ctx_unref(cc);
            n++;
        }
        if (resume && resumed != n) {
            fprintf(stderr, "tls_bench: only %zu of %zu handshakes resumed\n", resumed, n);
            exit(1);
        }
        if (n / m.srv > best_srv) {
            best_srv = n / m.srv;
            best_pair = n / (m.srv + m.cli);
        }
    }
    tls_ctx_unref(cctx);
    printf("  %-44s %9.0f %9.0f %9.3f\n", label, best_srv, best_pair, 1e3 / best_srv);
}

/* Bulk: 16 KiB records client -> server. */
static void bench_bulk(struct tls_ctx *sctx, const char *suite, double secs)
{
    struct tls_opts co = {.server = false, .ciphers = suite};
    struct tls_ctx *cctx = ctx_or_die(&co);
    struct meter m = {0, 0};
    struct tls_conn *c, *s;
    handshake(cctx, sctx, &m, &c, &s);
    if (strcmp(tls_conn_cipher(s), suite) != 0) {
        fprintf(stderr, "tls_bench: got %s, wanted %s\n", tls_conn_cipher(s), suite);
        exit(1);
    }
    static uint8_t data[RECORD];
    memset(data, 0x5a, sizeof data);
    double best_both = 0, best_enc = 0, best_dec = 0;
    for (int r = 0; r < ROUNDS; r++) {
        double enc = 0, dec = 0;
        size_t bytes = 0, got = 0;
        double start = cpu_now();
        while (cpu_now() - start < secs / ROUNDS) {
            for (int i = 0; i < 64; i++) {
                double t0 = cpu_now();
                if (tls_conn_write(c, data, sizeof data) != (ssize_t)sizeof data)
                    exit(1);
                enc += cpu_now() - t0;
                hop(c, s, &dec, &got);
                bytes += sizeof data;
            }
        }
        if (got != bytes) {
            fprintf(stderr, "tls_bench: lost data (%zu of %zu)\n", got, bytes);
            exit(1);
        }
        double mb = bytes / 1e6;
        if (mb / (enc + dec) > best_both)
            best_both = mb / (enc + dec);
        if (mb / enc > best_enc)
            best_enc = mb / enc;
        if (mb / dec > best_dec)
            best_dec = mb / dec;
    }
    const char *short_name = strstr(suite, "WITH-") ? strstr(suite, "WITH-") + 5 : suite;
    printf("  %-30s %12.0f %12.0f %12.0f\n", short_name, best_both, best_enc, best_dec);
    destroy_pair(c, s, &m);
    tls_ctx_unref(cctx);
}

/* Small messages (a SIP request is a few hundred bytes): one record each way per
 * exchange, the per-record cost of the glue included. */
static void bench_small(struct tls_ctx *sctx, size_t size, double secs)
{
    struct tls_opts co = {.server = false};
    struct tls_ctx *cctx = ctx_or_die(&co);
    struct meter m = {0, 0};
    struct tls_conn *c, *s;
    handshake(cctx, sctx, &m, &c, &s);
    uint8_t msg[2048];
    memset(msg, 'x', sizeof msg);
    double best = 0;
    for (int r = 0; r < ROUNDS; r++) {
        double cpu = 0;
        size_t n = 0, got = 0;
        double start = cpu_now();
        while (cpu_now() - start < secs / ROUNDS) {
            for (int i = 0; i < 256; i++) {
                double t0 = cpu_now();
                tls_conn_write(c, msg, size);
                cpu += cpu_now() - t0;
                hop(c, s, &cpu, &got);
                t0 = cpu_now();
                tls_conn_write(s, msg, size);
                cpu += cpu_now() - t0;
                hop(s, c, &cpu, &got);
                n += 2;
            }
        }
        if (got != n * size) {
            fprintf(stderr, "tls_bench: lost data\n");
            exit(1);
        }
        if (n / cpu > best)
            best = n / cpu;
    }
    char label[64];
    snprintf(label, sizeof label, "%zu-byte messages (encrypt + decrypt)", size);
    printf("  %-44s %9.0f\n", label, best);
    destroy_pair(c, s, &m);
    tls_ctx_unref(cctx);
}

/* Heap held per idle server connection after a handshake (glibc arena bytes in use). */
static void bench_idle_memory(struct tls_ctx *sctx, bool mtls, const char *label)
{
    enum { N = 200 };
    struct tls_conn *srv[N];
    struct tls_opts co = {.server = false};
    struct tls_cert_opts cert = {"build/bench-certs/access-edge.crt",
                                 "build/bench-certs/access-edge.key"};
    if (mtls) {
        co.certs = &cert;
        co.ncerts = 1;
    }
    struct tls_ctx *cctx = ctx_or_die(&co);
    struct meter m = {0, 0};
    malloc_trim(0);
    size_t before = mallinfo2().uordblks;
    for (int i = 0; i < N; i++) {
        struct tls_conn *c;
        handshake(cctx, sctx, &m, &c, &srv[i]);
        /* A little traffic, as a live connection has seen. */
        tls_conn_write(c, (const uint8_t *)"OPTIONS sip:x SIP/2.0\r\n\r\n", 25);
        hop(c, srv[i], &m.srv, NULL);
        tls_conn_destroy(c);
    }
    tls_ctx_unref(cctx);
    size_t after = mallinfo2().uordblks;
    printf("  %-44s %9zu bytes\n", label, (after - before) / N);
    for (int i = 0; i < N; i++)
        tls_conn_destroy(srv[i]);
}

/* Heap per idle TLS stream (libuv handles + stream + TLS) over real loopback sockets:
 * N client/server pairs connect, handshake and exchange one message; the heap delta is
 * divided by 2N (client and server ends cost about the same). */
struct mem_world {
    uv_loop_t loop;
    uv_tcp_t listener;
    struct stream_opts so;
    struct stream *ends[2 * 200];
    int nends, opened, got;
};

static int mem_data(struct stream *s, const uint8_t *p, size_t n, void *arg)
{
    struct mem_world *w = stream_loop(s)->data;
    w->got++;
    if (w->got == 200)
        uv_stop(&w->loop);
    return 0;
}

static void mem_open(struct stream *s, void *arg)
{
    if (arg) /* client end */
        stream_write(s, "OPTIONS sip:x SIP/2.0\r\n\r\n", 25);
}

static void mem_close(struct stream *s, int err, const char *why, void *arg)
{
    if (err)
        fprintf(stderr, "tls_bench: stream closed: %s\n", why ? why : "?");
}

static const struct stream_cbs mem_cbs = {
    .on_data = mem_data, .on_open = mem_open, .on_close = mem_close};

static void mem_conn(uv_stream_t *l, int status)
{
    struct mem_world *w = l->loop->data;
    if (status == 0 && stream_accept(l, &w->so, &mem_cbs, NULL, &w->ends[w->nends]) == 0)
        w->nends++;
}

static void bench_idle_streams(struct tls_ctx *sctx)
{
    enum { N = 200 };
    struct mem_world *w = calloc(1, sizeof *w);
    struct tls_opts co = {.server = false};
    struct tls_ctx *cctx = ctx_or_die(&co);
    struct addr a;
    uv_loop_init(&w->loop);
    w->loop.data = w;
    addr_parse(&a, "127.0.0.1:0", 0);
    if (stream_listen(&w->loop, &w->listener, &a, 256, false, mem_conn) != 0)
        exit(1);
    int len = sizeof a.u.ss;
    uv_tcp_getsockname(&w->listener, &a.u.sa, &len);
    w->so.tls = sctx;
    struct stream_opts cso = {.tls = cctx, .server_name = "bench.lab"};
    malloc_trim(0);
    size_t before = mallinfo2().uordblks;
    for (int i = 0; i < N; i++)
        if (stream_connect(&w->loop, &a, NULL, &cso, &mem_cbs, w, &w->ends[w->nends++]) != 0)
            exit(1);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    size_t after = mallinfo2().uordblks;
    if (w->got != N) {
        fprintf(stderr, "tls_bench: only %d of %d streams delivered\n", w->got, N);
        exit(1);
    }
    printf("  %-44s %9zu bytes\n", "TLS stream (libuv + stream + TLS), one end",
           (after - before) / (2 * N));
    for (int i = 0; i < w->nends; i++)
        stream_close(w->ends[i], 0, NULL);
    uv_close((uv_handle_t *)&w->listener, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    tls_ctx_unref(cctx);
    free(w);
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 1.2;
    if (secs <= 0)
        secs = 1.2;
    if (system("deploy/certs.sh build/bench-certs >/dev/null 2>&1") != 0) {
        fprintf(stderr, "tls_bench: deploy/certs.sh failed (run from the repository root)\n");
        return 1;
    }
    struct tls_cert_opts cert = {"build/bench-certs/director.crt",
                                 "build/bench-certs/director.key"};
    struct tls_opts so = {.server = true, .certs = &cert, .ncerts = 1, .session_tickets = true};
    struct tls_ctx *srv = ctx_or_die(&so);
    struct tls_opts so_cache = so;
    so_cache.session_tickets = false;
    struct tls_ctx *srv_cache = ctx_or_die(&so_cache);
    struct tls_opts so_mtls = so;
    so_mtls.ca_file = "build/bench-certs/ca.crt";
    so_mtls.verify_peer = true;
    struct tls_ctx *srv_mtls = ctx_or_die(&so_mtls);

    bool ossl = strncmp(tls_backend(), "OpenSSL", 7) == 0;
    printf("bench-tls: %s through common/tls, in-process, %s, ECDSA P-256 server "
           "certificate; best of %d rounds\n\n",
           tls_backend(), ossl ? "TLS 1.3 (bulk: TLS 1.2 and 1.3)" : "TLS 1.2", ROUNDS);
    printf("handshakes                                     per server  per pair  server ms\n"
           "                                               CPU-second  CPU-sec   each\n");
    bench_handshakes("full, ECDHE secp256r1", srv, "secp256r1", false, false, secs);
    bench_handshakes("full, ECDHE x25519", srv, "x25519:secp256r1", false, false, secs);
    bench_handshakes("resumed, session ticket", srv, NULL, true, true, secs / 2);
    bench_handshakes("resumed, session cache (id)", srv_cache, NULL, false, true, secs / 2);

    printf("\nbulk, 16 KiB records                MB per CPU-second\n"
           "  cipher (ECDHE-ECDSA-WITH-..., TLS-... is TLS 1.3)  enc+dec  encrypt  decrypt\n");
    bench_bulk(srv, "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256", secs);
    bench_bulk(srv, "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256", secs);
    bench_bulk(srv, "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384", secs);
    if (ossl) { /* TLS 1.3 suites */
        bench_bulk(srv, "TLS-CHACHA20-POLY1305-SHA256", secs);
        bench_bulk(srv, "TLS-AES-128-GCM-SHA256", secs);
        bench_bulk(srv, "TLS-AES-256-GCM-SHA384", secs);
    }

    printf("\nsmall records, ChaCha20-Poly1305                 per CPU-second\n");
    bench_small(srv, 200, secs / 2);
    bench_small(srv, 1400, secs / 2);

    printf("\nheap per idle server connection after handshake (200 connections, mallinfo2)\n");
    bench_idle_memory(srv, false, "server, tickets");
    bench_idle_memory(srv_cache, false, "server, session cache (entry included)");
    bench_idle_memory(srv_mtls, true, "server, mutual TLS");
    bench_idle_streams(srv);

    tls_ctx_unref(srv);
    tls_ctx_unref(srv_cache);
    tls_ctx_unref(srv_mtls);
    return 0;
}
