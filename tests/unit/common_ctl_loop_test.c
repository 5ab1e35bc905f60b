/* ctl client and server on a real loop over mutual TLS on 127.0.0.1: registration,
 * secrets, report relay by subscription, reconnect after a server restart, the backoff
 * schedule, and stopping at any point without leaks (run with SAN=1). */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/ctl.h"
#include "common/daemon.h"

#define CERTS "build/test-certs"

static int certs_setup(void **state)
{
    (void)state;
    return system("deploy/certs.sh " CERTS " >/dev/null 2>&1") == 0 ? 0 : -1;
}

struct edge {
    struct world *w;
    struct ctl_client *c;
    int welcomes, disconnects, secrets, reports, drains;
    struct ctl_secret last_secret;
    struct ctl_report last_report;
};

struct world {
    uv_loop_t loop;
    uv_timer_t guard, step;
    struct logger log;
    struct tls_ctx *srv_tls;
    struct ctl_server *srv;
    struct addr addr;
    struct edge e[2];
    int hellos, gone, srv_reports;
    /* ACME exchange: what each side received, in order */
    enum ctl_msg_type srv_acme[8], edge_acme[8];
    int n_srv_acme, n_edge_acme;
    struct ctl_msg *last_srv_acme;
    int phase;
    bool timed_out;
};

static int on_hello(struct ctl_peer *p, const struct ctl_hello *h, struct ctl_secret *s, size_t max,
                    void *arg)
{
    struct world *w = arg;
    w->hellos++;
    assert_true(max >= 1);
    memset(s, 0, sizeof *s);
    s->kind = CTL_SECRET_RELAY;
    snprintf(s->key_id, sizeof s->key_id, "k%d", w->hellos);
    s->secret_len = 16;
    memset(s->secret, 0x42, 16);
    assert_string_equal(ctl_peer_cert_name(p), "av-edge");
    return 1;
}

static void on_srv_report(struct ctl_peer *p, const struct ctl_report *r, void *arg)
{
    struct world *w = arg;
    w->srv_reports++;
    assert_int_equal(r->role, CTL_ROLE_AV_EDGE);
    assert_string_equal(r->instance_id, ctl_peer_hello(p)->instance_id);
}

static void on_gone(struct ctl_peer *p, const char *why, void *arg)
{
    ((struct world *)arg)->gone++;
}

static void e_connected(const char *id, void *arg)
{
    struct edge *e = arg;
    e->welcomes++;
    assert_string_equal(id, "dir-test");
}

static void e_disconnected(const char *why, void *arg)
{
    ((struct edge *)arg)->disconnects++;
}

static void e_secret(const struct ctl_secret *s, void *arg)
{
    struct edge *e = arg;
    e->secrets++;
    e->last_secret = *s;
}

static void e_report(const struct ctl_report *r, void *arg)
{
    struct edge *e = arg;
    e->reports++;
    e->last_report = *r;
}

static void e_fill(struct ctl_report *r, void *arg)
{
    struct edge *e = arg;
    memset(r, 0, sizeof *r);
    r->connections = (uint64_t)(e - e->w->e) + 100;
    r->healthy = true;
}

static const struct ctl_client_cbs edge_cbs = {
    .on_connected = e_connected,
    .on_disconnected = e_disconnected,
    .on_secret = e_secret,
    .on_report = e_report,
};

static void on_srv_acme(struct ctl_peer *p, const struct ctl_msg *m, void *arg);

static int server_start(struct world *w)
{
    static const struct ctl_server_cbs cbs = {.on_hello = on_hello,
                                              .on_report = on_srv_report,
                                              .on_gone = on_gone,
                                              .on_acme = on_srv_acme};
    struct ctl_server_opts o = {.listen = w->addr,
                                .tls = w->srv_tls,
                                .heartbeat_ms = 100,
                                .director_id = "dir-test",
                                .log = &w->log};
    int rc = ctl_server_start(&w->loop, &o, &cbs, w, &w->srv);
    if (rc == 0)
        ctl_server_local_addr(w->srv, &w->addr);
    return rc;
}

static void edge_start(struct world *w, int i, const char *instance, bool subscribe)
{
    struct ctl_client_opts o = {.director = w->addr,
                                .cert_file = CERTS "/av-edge.crt",
                                .key_file = CERTS "/av-edge.key",
                                .ca_file = CERTS "/ca.crt",
                                .director_name = "director",
                                .report_interval_ms = 100,
                                .backoff_min_ms = 20,
                                .backoff_max_ms = 100,
                                .log = &w->log};
    o.hello.role = CTL_ROLE_AV_EDGE;
    snprintf(o.hello.instance_id, sizeof o.hello.instance_id, "%s", instance);
    if (subscribe) {
        o.hello.subscribe[0] = CTL_ROLE_AV_EDGE;
        o.hello.n_subscribe = 1;
    }
    w->e[i].w = w;
    assert_int_equal(ctl_client_start(&w->loop, &o, &edge_cbs, &w->e[i], &w->e[i].c), 0);
    ctl_client_set_report_source(w->e[i].c, e_fill, &w->e[i]);
}

static void on_guard(uv_timer_t *t)
{
    struct world *w = t->data;
    w->timed_out = true;
    uv_stop(&w->loop);
}

static void world_init(struct world *w)
{
    memset(w, 0, sizeof *w);
    assert_int_equal(uv_loop_init(&w->loop), 0);
    log_init(&w->log, "ctl-test");
    w->log.level = LOG_ERROR;
    struct tls_cert_opts co = {.cert_file = CERTS "/director.crt",
                               .key_file = CERTS "/director.key"};
    struct tls_opts to = {
        .server = true, .certs = &co, .ncerts = 1, .ca_file = CERTS "/ca.crt", .verify_peer = true};
    char err[256];
    assert_int_equal(tls_ctx_create(&w->srv_tls, &to, err, sizeof err), 0);
    assert_int_equal(addr_parse(&w->addr, "127.0.0.1:0", 0), 0);
    uv_timer_init(&w->loop, &w->guard);
    uv_timer_init(&w->loop, &w->step);
    w->guard.data = w->step.data = w;
    uv_timer_start(&w->guard, on_guard, 10000, 0);
}

/* Stops whatever is left and runs the loop dry: every handle must close. */
static void world_fini(struct world *w)
{
    ctl_client_stop(w->e[0].c);
    ctl_client_stop(w->e[1].c);
    ctl_server_stop(w->srv);
    uv_close((uv_handle_t *)&w->guard, NULL);
    uv_close((uv_handle_t *)&w->step, NULL);
    for (int i = 0; i < 100 && uv_run(&w->loop, UV_RUN_NOWAIT); i++)
        usleep(1000);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    tls_ctx_unref(w->srv_tls);
}

/* Polls the world every 10 ms and moves the scenario along. */
static void scenario_step(uv_timer_t *t)
{
    struct world *w = t->data;
    struct edge *a = &w->e[0], *b = &w->e[1];
    switch (w->phase) {
    case 0: /* both registered, got their secret, and a relayed b's report */
        if (a->welcomes == 1 && b->welcomes == 1 && a->secrets >= 1 && b->secrets >= 1 &&
            a->reports >= 1 && w->srv_reports >= 2) {
            assert_int_equal(ctl_server_peer_count(w->srv), 2);
            assert_true(ctl_client_connected(a->c));
            assert_int_equal(a->last_secret.kind, CTL_SECRET_RELAY);
            assert_int_equal(a->last_secret.secret_len, 16);
            assert_string_equal(a->last_report.instance_id, "b");
            assert_int_equal(a->last_report.connections, 101);
            assert_int_equal(b->reports, 0); /* b subscribed to nothing */
            ctl_server_stop(w->srv);         /* the Director goes away */
            w->srv = NULL;
            w->phase = 1;
        }
        break;
    case 1: /* both notice */
        if (a->disconnects == 1 && b->disconnects == 1) {
            assert_false(ctl_client_connected(a->c));
            assert_int_equal(ctl_client_send_report(a->c, &a->last_report), -ENOTCONN);
            assert_int_equal(server_start(w), 0); /* same address again */
            w->phase = 2;
        }
        break;
    case 2: /* both come back and say Hello again */
        if (a->welcomes == 2 && b->welcomes == 2 && w->hellos == 4) {
            w->phase = 3;
            uv_stop(&w->loop);
        }
        break;
    }
}

static void edges_register_relay_and_come_back_after_a_restart(void **state)
{
    (void)state;
    struct world *w = malloc(sizeof *w);
    world_init(w);
    assert_int_equal(server_start(w), 0);
    edge_start(w, 0, "a", true);
    edge_start(w, 1, "b", false);
    uv_timer_start(&w->step, scenario_step, 10, 10);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_false(w->timed_out);
    assert_int_equal(w->phase, 3);
    world_fini(w);
    free(w);
}

/* The client's debug log says "reconnecting in N ms"; read the schedule back from it. */
static void backoff_doubles_with_jitter_up_to_the_cap(void **state)
{
    (void)state;
    struct world *w = malloc(sizeof *w);
    world_init(w);
    char path[] = "/tmp/ctl-backoff-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    w->log.fd = fd;
    w->log.level = LOG_DEBUG;
    /* A port nobody listens on: every attempt is refused at once. */
    uv_tcp_t probe;
    uv_tcp_init(&w->loop, &probe);
    struct addr any;
    addr_parse(&any, "127.0.0.1:0", 0);
    assert_int_equal(uv_tcp_bind(&probe, &any.u.sa, 0), 0);
    int len = sizeof w->addr.u.ss;
    uv_tcp_getsockname(&probe, &w->addr.u.sa, &len);
    uv_close((uv_handle_t *)&probe, NULL); /* bound, never listening: refused */
    edge_start(w, 0, "a", false);
    uv_timer_start(&w->guard, on_guard, 900, 0);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    char text[16384];
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    assert_true(n > 0);
    text[n] = '\0';
    close(fd);
    w->log.fd = 2;
    unsigned want_max[] = {20, 40, 80, 100, 100, 100, 100};
    int seen = 0;
    for (char *p = strstr(text, "reconnecting in "); p; p = strstr(p + 1, "reconnecting in ")) {
        unsigned d = (unsigned)strtoul(p + 16, NULL, 10);
        unsigned hi = want_max[seen < 6 ? seen : 6];
        assert_in_range(d, hi / 2, hi);
        seen++;
    }
    /* 900 ms at 10 + 20 + 40 + 50 + 50 ... ms at least, 20 + 40 + 80 + 100 ... at most. */
    assert_in_range(seen, 8, 25);
    w->timed_out = false;
    world_fini(w);
    free(w);
}

static void stop_while_connecting_frees_everything(void **state)
{
    (void)state;
    struct world *w = malloc(sizeof *w);
    world_init(w);
    assert_int_equal(server_start(w), 0);
    edge_start(w, 0, "a", false);
    uv_run(&w->loop, UV_RUN_NOWAIT); /* connect in flight, no Welcome yet */
    ctl_client_stop(w->e[0].c);
    w->e[0].c = NULL;
    world_fini(w);
    assert_int_equal(w->e[0].welcomes, 0);
    free(w);
}

static void until_welcomed(uv_timer_t *t)
{
    struct world *w = t->data;
    if (w->e[0].welcomes == 1 && w->e[0].secrets == 1)
        uv_stop(&w->loop);
}

static void starts_from_an_edge_director_section(void **state)
{
    (void)state;
    struct world *w = malloc(sizeof *w);
    world_init(w);
    assert_int_equal(server_start(w), 0);
    struct director_link_config link = {
        .enabled = false,
        .address = w->addr,
        .server_name = "director",
        .tls = {.cert = CERTS "/av-edge.crt", .key = CERTS "/av-edge.key", .ca = CERTS "/ca.crt"},
        .report_interval_ms = 100,
    };
    struct ctl_hello h = {.role = CTL_ROLE_AV_EDGE, .instance_id = "linked"};
    struct ctl_client *c = (struct ctl_client *)&link; /* must be overwritten */
    assert_int_equal(
        ctl_client_start_link(&w->loop, &link, &h, &w->log, NULL, &edge_cbs, &w->e[0], &c), 0);
    assert_null(c); /* enabled: false starts nothing */
    link.enabled = true;
    w->e[0].w = w;
    assert_int_equal(
        ctl_client_start_link(&w->loop, &link, &h, &w->log, NULL, &edge_cbs, &w->e[0], &w->e[0].c),
        0);
    uv_timer_start(&w->step, until_welcomed, 10, 10);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_false(w->timed_out);
    assert_int_equal(w->hellos, 1);
    world_fini(w);
    free(w);
}

static void bad_options_are_refused(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct ctl_client *c = NULL;
    struct ctl_client_opts o;
    memset(&o, 0, sizeof o);
    o.hello.role = CTL_ROLE_AV_EDGE;
    strcpy(o.hello.instance_id, "x");
    assert_int_equal(ctl_client_start(&loop, &o, NULL, NULL, &c), -EINVAL); /* no TLS */
    o.cert_file = "/nonexistent.crt";
    o.key_file = "/nonexistent.key";
    o.ca_file = "/nonexistent-ca.crt";
    assert_true(ctl_client_start(&loop, &o, NULL, NULL, &c) < 0);
    o.cert_file = CERTS "/av-edge.crt";
    o.key_file = CERTS "/av-edge.key";
    o.ca_file = CERTS "/ca.crt";
    o.hello.role = CTL_ROLE_UNKNOWN;
    assert_int_equal(ctl_client_start(&loop, &o, NULL, NULL, &c), -EINVAL);
    assert_null(c);
    ctl_client_stop(NULL);
    ctl_server_stop(NULL);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- ACME plumbing: the edge's handler after Welcome, both directions of the exchange,
 * and an edge without a handler answering for itself ---- */

static void on_srv_acme(struct ctl_peer *p, const struct ctl_msg *m, void *arg)
{
    struct world *w = arg;
    if (w->n_srv_acme < 8)
        w->srv_acme[w->n_srv_acme++] = m->type;
    if (!w->last_srv_acme)
        w->last_srv_acme = malloc(sizeof *w->last_srv_acme);
    *w->last_srv_acme = *m;
    struct ctl_msg *r = calloc(1, sizeof *r);
    if (m->type == CTL_MSG_CERT_STATUS) {
        assert_string_equal(m->u.cert_status.names[0], "av.lab.test");
        /* Director -> edge types only; an edge -> Director type is refused. */
        r->type = CTL_MSG_CSR;
        assert_int_equal(ctl_peer_send(p, r), -EINVAL);
        /* A string the edge would refuse fails this send alone. */
        r->type = CTL_MSG_CSR_REQUEST;
        strcpy(r->u.csr_request.order_id, "o\n1");
        assert_int_equal(ctl_peer_send(p, r), -EINVAL);
        strcpy(r->u.csr_request.order_id, "o1");
        strcpy(r->u.csr_request.names[0], "av.lab.test");
        r->u.csr_request.n_names = 1;
        assert_int_equal(ctl_peer_send(p, r), 0);
    } else if (m->type == CTL_MSG_CSR && m->u.csr.der_len) {
        assert_string_equal(m->u.csr.order_id, "o1");
        r->type = CTL_MSG_CHALLENGE;
        r->u.challenge.kind = CTL_CHALLENGE_HTTP_01;
        strcpy(r->u.challenge.token, "tok");
        assert_int_equal(ctl_peer_send(p, r), 0);
    }
    free(r);
}

static void edge_acme(const struct ctl_msg *m, void *arg)
{
    struct edge *e = arg;
    struct world *w = e->w;
    if (w->n_edge_acme < 8)
        w->edge_acme[w->n_edge_acme++] = m->type;
    struct ctl_msg *r = calloc(1, sizeof *r);
    if (m->type == CTL_MSG_WELCOME) {
        r->type = CTL_MSG_CSR_REQUEST; /* not an edge -> Director type */
        assert_int_equal(ctl_client_send(e->c, r), -EINVAL);
        r->type = CTL_MSG_CERT_STATUS;
        strcpy(r->u.cert_status.names[0], "bad\x01");
        r->u.cert_status.n_names = 1;
        assert_int_equal(ctl_client_send(e->c, r), -EINVAL); /* and the connection stays */
        strcpy(r->u.cert_status.names[0], "av.lab.test");
        assert_int_equal(ctl_client_send(e->c, r), 0);
    } else if (m->type == CTL_MSG_CSR_REQUEST) {
        r->type = CTL_MSG_CSR;
        strcpy(r->u.csr.order_id, m->u.csr_request.order_id);
        r->u.csr.der_len = 3;
        assert_int_equal(ctl_client_send(e->c, r), 0);
    } else if (m->type == CTL_MSG_CHALLENGE) {
        /* Unregister: the next message (acme_step's) is answered by the client itself. */
        ctl_client_set_acme_handler(e->c, NULL, NULL);
    }
    free(r);
}

static void send_to_each(struct ctl_peer *p, void *arg)
{
    struct ctl_msg *m = arg;
    assert_int_equal(ctl_peer_send(p, m), 0);
}

static void acme_step(uv_timer_t *t)
{
    struct world *w = t->data;
    if (w->phase == 0 && w->n_edge_acme == 3) {
        /* The handler is gone: a CsrRequest is refused by the client with a Csr error. */
        struct ctl_msg *m = calloc(1, sizeof *m);
        m->type = CTL_MSG_CSR_REQUEST;
        strcpy(m->u.csr_request.order_id, "o2");
        ctl_server_foreach(w->srv, send_to_each, m);
        free(m);
        w->phase = 1;
    } else if (w->phase == 1 && w->n_srv_acme == 3) {
        w->phase = 2;
        uv_stop(&w->loop);
    }
}

static void acme_messages_flow_both_ways(void **state)
{
    (void)state;
    struct world *w = malloc(sizeof *w);
    world_init(w);
    assert_int_equal(server_start(w), 0);
    edge_start(w, 0, "a", false);
    struct ctl_msg m = {.type = CTL_MSG_CHALLENGE_READY};
    assert_int_equal(ctl_client_send(w->e[0].c, &m), -ENOTCONN); /* before Welcome */
    ctl_client_set_acme_handler(w->e[0].c, edge_acme, &w->e[0]);
    uv_timer_start(&w->step, acme_step, 10, 10);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_false(w->timed_out);
    assert_int_equal(w->phase, 2);
    assert_int_equal(w->n_edge_acme, 3);
    assert_int_equal(w->edge_acme[0], CTL_MSG_WELCOME);
    assert_int_equal(w->edge_acme[1], CTL_MSG_CSR_REQUEST);
    assert_int_equal(w->edge_acme[2], CTL_MSG_CHALLENGE);
    assert_int_equal(w->n_srv_acme, 3);
    assert_int_equal(w->srv_acme[0], CTL_MSG_CERT_STATUS);
    assert_int_equal(w->srv_acme[1], CTL_MSG_CSR);
    assert_int_equal(w->srv_acme[2], CTL_MSG_CSR);
    assert_string_equal(w->last_srv_acme->u.csr.order_id, "o2");
    assert_int_equal(w->last_srv_acme->u.csr.der_len, 0);
    assert_string_equal(w->last_srv_acme->u.csr.error, "this edge has no acme section enabled");
    assert_int_equal(w->hellos, 1); /* one connection throughout: no send closed it */
    assert_int_equal(w->e[0].disconnects, 0);
    free(w->last_srv_acme);
    world_fini(w);
    free(w);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as daemon_main does: a peer's close must not kill us */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(edges_register_relay_and_come_back_after_a_restart),
        cmocka_unit_test(backoff_doubles_with_jitter_up_to_the_cap),
        cmocka_unit_test(stop_while_connecting_frees_everything),
        cmocka_unit_test(starts_from_an_edge_director_section),
        cmocka_unit_test(bad_options_are_refused),
        cmocka_unit_test(acme_messages_flow_both_ways),
    };
    return cmocka_run_group_tests(tests, certs_setup, NULL);
}
