/* Director hub and config: key table defaults and checks, which roles get which secrets,
 * issuing and rotating secrets (current + previous), and a clean stop. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "director/director.h"

#define CERTS "build/test-certs"

static int certs_setup(void **state)
{
    (void)state;
    return system("deploy/certs.sh " CERTS " >/dev/null 2>&1") == 0 ? 0 : -1;
}

static const char *const base_yaml =
    "admin: {listen: 127.0.0.1:1}\n"
    "tls: {cert: " CERTS "/director.crt, key: " CERTS "/director.key, ca: " CERTS "/ca.crt}\n";

static struct director_config *load(const char *extra, struct cfg_err *err, int *rc)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml, "%s%s", base_yaml, extra);
    void *cfg = NULL;
    *rc = cfg_load_string("director.yaml", yaml, strlen(yaml), director_config_keys,
                          sizeof(struct director_config), &cfg, err);
    if (*rc == 0)
        *rc = director_config_validate(cfg, err);
    return cfg;
}

static void defaults_follow_the_lab_plan(void **state)
{
    (void)state;
    struct cfg_err err = {{0}};
    int rc;
    struct director_config *c = load("", &err, &rc);
    assert_int_equal(rc, 0);
    char a[ADDR_STRLEN];
    assert_string_equal(addr_format(&c->ctl.listen, a), "127.0.0.10:7400");
    assert_int_equal(c->ctl.heartbeat_ms, 1000);
    assert_int_equal(c->secrets.rotate_interval_ms, 3600 * 1000);
    assert_int_equal(c->secrets.lifetime_ms, 2 * 3600 * 1000);
    assert_int_equal(c->secrets.length, 32);
    cfg_free(c);
}

static void lifetime_shorter_than_two_intervals_is_an_error(void **state)
{
    (void)state;
    struct cfg_err err = {{0}};
    int rc;
    struct director_config *c =
        load("secrets:\n  rotate_interval: 1h\n  lifetime: 90m\n", &err, &rc);
    assert_int_equal(rc, -EINVAL);
    assert_non_null(strstr(err.msg, "secrets.lifetime"));
    assert_non_null(strstr(err.msg, "twice"));
    cfg_free(c);
    c = load("secrets:\n  lenght: 32\n", &err, &rc);
    assert_int_equal(rc, -EINVAL);
    assert_non_null(strstr(err.msg, "lenght"));
    assert_null(c);
    c = load("ctl:\n  heartbeat: 10ms\n", &err, &rc);
    assert_int_equal(rc, -EINVAL);
    assert_null(c);
}

static void each_role_needs_its_own_kind_only(void **state)
{
    (void)state;
    assert_int_equal(hub_role_secret_kinds(CTL_ROLE_AV_EDGE), 1u << CTL_SECRET_RELAY);
    assert_int_equal(hub_role_secret_kinds(CTL_ROLE_CONF_EDGE), 1u << CTL_SECRET_CONFERENCE);
    assert_int_equal(hub_role_secret_kinds(CTL_ROLE_ACCESS_EDGE), 0);
    assert_int_equal(hub_role_secret_kinds(CTL_ROLE_REVPROXY), 0);
    assert_int_equal(hub_role_secret_kinds(CTL_ROLE_UNKNOWN), 0);
}

static void on_stopped(void *arg)
{
    (*(int *)arg)++;
}

static void secrets_are_issued_at_start_and_rotate_into_previous(void **state)
{
    (void)state;
    struct cfg_err err = {{0}};
    int rc, stopped = 0;
    struct director_config *cfg = load("ctl: {listen: 127.0.0.1:0}\n", &err, &rc);
    assert_int_equal(rc, 0);
    struct director *d = calloc(1, sizeof *d);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct logger lg;
    log_init(&lg, "director-test");
    lg.level = LOG_ERROR;
    d->loop = &loop;
    d->log = &lg;
    d->cfg = cfg;
    struct tls_cert_opts co = {.cert_file = cfg->tls.cert, .key_file = cfg->tls.key};
    struct tls_opts to = {
        .server = true, .certs = &co, .ncerts = 1, .ca_file = cfg->tls.ca, .verify_peer = true};
    char msg[256];
    assert_int_equal(tls_ctx_create(&d->ctl_tls, &to, msg, sizeof msg), 0);

    assert_int_equal(hub_start(d), 0);
    assert_non_null(d->ctl);
    int64_t now = (int64_t)time(NULL);
    const struct keyring *r = &d->relay_keys, *k = &d->conf_keys;
    assert_int_equal(r->cur.secret_len, 32);
    assert_int_equal(k->cur.secret_len, 32);
    assert_int_equal(r->prev.secret_len, 0);
    assert_true(r->cur.id[0] == 'r' && k->cur.id[0] == 'c');
    assert_memory_not_equal(r->cur.secret, k->cur.secret, 32);
    assert_in_range(r->cur.not_after, now + 7200 - 5, now + 7200 + 5);

    struct token_key old = r->cur;
    assert_int_equal(hub_rotate(d, CTL_SECRET_RELAY), 0);
    assert_string_equal(r->prev.id, old.id);
    assert_memory_equal(r->prev.secret, old.secret, 32);
    assert_string_not_equal(r->cur.id, old.id);
    assert_memory_not_equal(r->cur.secret, old.secret, 32);
    assert_non_null(keyring_find(r, old.id, now));
    assert_int_equal(hub_rotate(d, CTL_SECRET_UNKNOWN), -EINVAL);

    hub_stop(d, on_stopped, &stopped);
    assert_null(d->ctl);
    assert_null(d->hub);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(stopped, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
    tls_ctx_unref(d->ctl_tls);
    free(d);
    cfg_free(cfg);
}

static void a_busy_port_fails_the_start_cleanly(void **state)
{
    (void)state;
    struct cfg_err err = {{0}};
    int rc;
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_tcp_t busy;
    uv_tcp_init(&loop, &busy);
    struct addr a;
    addr_parse(&a, "127.0.0.1:0", 0);
    assert_int_equal(uv_tcp_bind(&busy, &a.u.sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&busy, 1, NULL), 0);
    int len = sizeof a.u.ss;
    uv_tcp_getsockname(&busy, &a.u.sa, &len);
    char yaml[128], host[ADDR_STRLEN];
    snprintf(yaml, sizeof yaml, "ctl: {listen: \"%s\"}\n", addr_format(&a, host));
    struct director_config *cfg = load(yaml, &err, &rc);
    assert_int_equal(rc, 0);
    struct director *d = calloc(1, sizeof *d);
    struct logger lg;
    log_init(&lg, "director-test");
    lg.fd = -1; /* the expected "cannot listen" goes nowhere */
    d->loop = &loop;
    d->log = &lg;
    d->cfg = cfg;
    struct tls_cert_opts co = {.cert_file = cfg->tls.cert, .key_file = cfg->tls.key};
    struct tls_opts to = {
        .server = true, .certs = &co, .ncerts = 1, .ca_file = cfg->tls.ca, .verify_peer = true};
    char msg[256];
    assert_int_equal(tls_ctx_create(&d->ctl_tls, &to, msg, sizeof msg), 0);
    assert_int_equal(hub_start(d), -EADDRINUSE);
    assert_null(d->hub);
    uv_close((uv_handle_t *)&busy, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    tls_ctx_unref(d->ctl_tls);
    free(d);
    cfg_free(cfg);
}

static void relays_come_least_loaded_first(void **state)
{
    (void)state;
    struct ctl_hello h[4] = {0};
    const char *ids[4] = {"av-c", "av-a", "av-b", "av-d"};
    for (int i = 0; i < 4; i++)
        snprintf(h[i].instance_id, sizeof h[i].instance_id, "%s", ids[i]);
    struct hub_relay v[4] = {
        {&h[0], 500, 10}, /* busiest */
        {&h[1], 100, 7},  /* same load as av-b, more allocations */
        {&h[2], 100, 3},
        {&h[3], 0, 0}, /* idle */
    };
    hub_relay_sort(v, 4);
    assert_string_equal(v[0].hello->instance_id, "av-d");
    assert_string_equal(v[1].hello->instance_id, "av-b");
    assert_string_equal(v[2].hello->instance_id, "av-a");
    assert_string_equal(v[3].hello->instance_id, "av-c");
    hub_relay_sort(v, 0); /* nothing to do, no crash */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_follow_the_lab_plan),
        cmocka_unit_test(lifetime_shorter_than_two_intervals_is_an_error),
        cmocka_unit_test(each_role_needs_its_own_kind_only),
        cmocka_unit_test(secrets_are_issued_at_start_and_rotate_into_previous),
        cmocka_unit_test(a_busy_port_fails_the_start_cleanly),
        cmocka_unit_test(relays_come_least_loaded_first),
    };
    return cmocka_run_group_tests(tests, certs_setup, NULL);
}
