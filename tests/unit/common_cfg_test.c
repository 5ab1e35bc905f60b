/* Config loader: typed values, defaults, lists, and errors that name file:line:col. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "common/cfg.h"
#include "common/daemon.h"

struct route {
    char *prefix;
    struct addr upstream;
};

struct test_cfg {
    struct daemon_config base;
    char *name;
    uint16_t port;
    bool flag;
    uint64_t timeout_ms, max_body;
    struct {
        struct addr listen;
        struct tls_files_config tls;
    } ext;
    struct route *routes;
    size_t nroutes;
    char **domains;
    size_t ndomains;
    struct cidr *internal;
    size_t ninternal;
    int mode;
};

static const char *const modes[] = {"fast", "safe", NULL};

static const struct cfg_key route_keys[] = {
    {"prefix", CFG_STR, offsetof(struct route, prefix), NULL, .required = true},
    {"upstream", CFG_ADDR, offsetof(struct route, upstream), NULL, .min = 443, .required = true},
    CFG_END,
};

#define EXT(f) (offsetof(struct test_cfg, ext.f) - offsetof(struct test_cfg, ext))
static const struct cfg_key ext_keys[] = {
    {"listen", CFG_ADDR, EXT(listen), "127.0.0.1:5061", .restart = true},
    {"tls", CFG_SECTION, EXT(tls), .sub = tls_files_keys},
    CFG_END,
};

static const struct cfg_key keys[] = {
    DAEMON_CONFIG_KEYS,
    {"name", CFG_STR, offsetof(struct test_cfg, name), "edge"},
    {"port", CFG_PORT, offsetof(struct test_cfg, port), "3478"},
    {"flag", CFG_BOOL, offsetof(struct test_cfg, flag), "false"},
    {"timeout", CFG_DURATION, offsetof(struct test_cfg, timeout_ms), "30s"},
    {"max_body", CFG_SIZE, offsetof(struct test_cfg, max_body), "1M", .max = 1 << 30},
    {"external", CFG_SECTION, offsetof(struct test_cfg, ext), .sub = ext_keys},
    {"routes", CFG_LIST, offsetof(struct test_cfg, routes), .sub = route_keys,
     .elem_size = sizeof(struct route), .count_offset = offsetof(struct test_cfg, nroutes)},
    {"domains", CFG_STRLIST, offsetof(struct test_cfg, domains), "example.com", .restart = true,
     .count_offset = offsetof(struct test_cfg, ndomains)},
    {"internal", CFG_CIDRLIST, offsetof(struct test_cfg, internal), "10.0.0.0/8, 192.168.0.0/16",
     .count_offset = offsetof(struct test_cfg, ninternal)},
    {"mode", CFG_ENUM, offsetof(struct test_cfg, mode), "safe", .choices = modes},
    CFG_END,
};

static int load(const char *yaml, struct test_cfg **out, struct cfg_err *err)
{
    return cfg_load_string("t.yaml", yaml, strlen(yaml), keys, sizeof(struct test_cfg),
                           (void **)out, err);
}

static void full_config_loads_typed_values(void **st)
{
    struct test_cfg *c;
    struct cfg_err err = {""};
    const char *y = "admin:\n  listen: 127.0.0.23:9090\n"
                    "log: {level: debug, format: json}\n"
                    "name: av1\nport: 5349\nflag: yes\ntimeout: 250ms\nmax_body: 64k\n"
                    "external:\n  listen: '[::1]:443'\n"
                    "routes:\n  - prefix: /ABS/ext\n    upstream: 127.0.0.24\n"
                    "  - prefix: /x\n    upstream: 127.0.0.24:8443\n"
                    "domains: [a.example, b.example]\n"
                    "internal: [172.16.0.0/12]\nmode: fast\n";
    assert_int_equal(load(y, &c, &err), 0);
    assert_int_equal(addr_port(&c->base.admin.listen), 9090);
    assert_int_equal(c->base.log.level, 3);
    assert_int_equal(c->base.log.format, 1);
    assert_int_equal(c->base.drain_timeout_ms, 30000); /* default */
    assert_string_equal(c->name, "av1");
    assert_int_equal(c->port, 5349);
    assert_true(c->flag);
    assert_int_equal(c->timeout_ms, 250);
    assert_int_equal(c->max_body, 65536);
    char a[ADDR_STRLEN];
    assert_string_equal(addr_format(&c->ext.listen, a), "[::1]:443");
    assert_int_equal(c->nroutes, 2);
    assert_string_equal(c->routes[0].prefix, "/ABS/ext");
    assert_int_equal(addr_port(&c->routes[0].upstream), 443); /* default port */
    assert_int_equal(addr_port(&c->routes[1].upstream), 8443);
    assert_int_equal(c->ndomains, 2);
    assert_string_equal(c->domains[1], "b.example");
    assert_int_equal(c->ninternal, 1);
    assert_int_equal(c->mode, 0);
    cfg_free(c);
}

static void defaults_fill_absent_keys_and_lists(void **st)
{
    struct test_cfg *c;
    struct cfg_err err = {""};
    assert_int_equal(load("admin: {listen: 127.0.0.1:8080}\n", &c, &err), 0);
    assert_string_equal(c->name, "edge");
    assert_int_equal(c->port, 3478);
    assert_int_equal(c->timeout_ms, 30000);
    assert_int_equal(c->max_body, 1 << 20);
    assert_int_equal(addr_port(&c->ext.listen), 5061);
    assert_null(c->ext.tls.cert);
    assert_int_equal(c->nroutes, 0);
    assert_int_equal(c->ndomains, 1);
    assert_string_equal(c->domains[0], "example.com");
    assert_int_equal(c->ninternal, 2);
    struct addr x;
    addr_parse(&x, "192.168.1.1", 0);
    assert_true(cidr_contains(&c->internal[1], &x));
    assert_int_equal(c->mode, 1);
    cfg_free(c);
}

static void expect_error(const char *yaml, const char *want)
{
    struct test_cfg *c = NULL;
    struct cfg_err err = {""};
    assert_int_equal(load(yaml, &c, &err), -EINVAL);
    assert_null(c);
    if (!strstr(err.msg, want))
        fail_msg("error '%s' does not contain '%s'", err.msg, want);
}

static void unknown_key_names_line_and_column(void **st)
{
    expect_error("admin: {listen: 127.0.0.1:8080}\nname: x\n  \nlisten_port: 5\n",
                 "t.yaml:4:1: unknown key 'listen_port'");
    expect_error("admin: {listen: 127.0.0.1:8080}\nexternal:\n  bind: 1.2.3.4:5\n",
                 "t.yaml:3:3: unknown key 'bind' in external");
}

static void port_out_of_range_names_value_position(void **st)
{
    expect_error("admin: {listen: 127.0.0.1:8080}\nport: 70000\n",
                 "t.yaml:2:7: port: port 70000 out of range (1..65535)");
    expect_error("admin: {listen: 127.0.0.1:8080}\nport: abc\n", "t.yaml:2:7: port: 'abc' is not");
}

static void bad_indent_is_a_yaml_syntax_error_with_position(void **st)
{
    expect_error("admin: {listen: 127.0.0.1:8080}\nexternal:\n  listen: 1.2.3.4:5\n tls: x\n",
                 "t.yaml:4:");
    expect_error("admin: {listen: 127.0.0.1:8080}\nexternal:\n  listen: 1.2.3.4:5\n tls: x\n",
                 "YAML syntax");
}

static void missing_certificate_file_is_named(void **st)
{
    expect_error(
        "admin: {listen: 127.0.0.1:8080}\nexternal:\n  tls:\n    cert: /nonexistent/edge.crt\n",
        "t.yaml:4:11: external.tls.cert: cannot read '/nonexistent/edge.crt': No such file");
}

static void required_and_typed_errors(void **st)
{
    expect_error("name: x\n", "missing required key 'admin.listen'");
    expect_error("admin: {listen: 127.0.0.1:8080}\nroutes:\n  - prefix: /a\n",
                 "t.yaml:3:5: missing required key 'routes[0].upstream'");
    expect_error("admin: {listen: 127.0.0.1:8080}\ntimeout: soon\n",
                 "t.yaml:2:10: timeout: 'soon' is not a duration");
    expect_error("admin: {listen: 127.0.0.1:8080}\nmode: turbo\n",
                 "'turbo' is not one of: fast safe");
    expect_error("admin: {listen: 127.0.0.1:8080}\nname: a\nname: b\n",
                 "t.yaml:3:1: key 'name' appears twice");
    expect_error("admin: {listen: 127.0.0.1:8080}\nexternal: [1]\n",
                 "'external' must be a mapping");
    expect_error("admin: {listen: 127.0.0.1:8080}\ninternal: [10.0.0.0/33]\n",
                 "internal[0]: '10.0.0.0/33' is not a network");
    expect_error("- a\n- b\n", "the top level must be a mapping");
}

static void missing_file_is_reported(void **st)
{
    void *c = NULL;
    struct cfg_err err;
    assert_int_equal(cfg_load("/nonexistent/x.yaml", keys, sizeof(struct test_cfg), &c, &err),
                     -ENOENT);
    assert_string_equal(err.msg, "/nonexistent/x.yaml: cannot open: No such file or directory");
}

static void semantic_error_points_at_key(void **st)
{
    struct test_cfg *c;
    struct cfg_err err = {""};
    assert_int_equal(load("admin: {listen: 127.0.0.1:8080}\n\nflag: true\n", &c, &err), 0);
    cfg_errorf(c, &err, "flag", "needs %s", "name");
    assert_string_equal(err.msg, "t.yaml:3:7: flag: needs name");
    cfg_free(c);
}

/* A reload that changes a restart-only key is refused at the key's position; others pass. */
static void restart_only_change_is_named(void **st)
{
    (void)st;
    struct test_cfg *a, *b, *c, *d;
    struct cfg_err err = {""};
    assert_int_equal(
        load("admin: {listen: 127.0.0.1:8080}\nexternal: {listen: 127.0.0.1:5061}\n", &a, &err), 0);
    assert_int_equal(load("admin: {listen: 127.0.0.1:8080}\nname: other\nflag: true\n"
                          "external:\n  listen: 127.0.0.1:5061\n  tls: {cert: /dev/null}\n",
                          &b, &err),
                     0);
    assert_int_equal(cfg_restart_changed(a, b, keys, &err), 0);
    assert_int_equal(
        load("admin: {listen: 127.0.0.1:8080}\nexternal:\n  listen: 127.0.0.1:5062\n", &c, &err),
        0);
    assert_int_equal(cfg_restart_changed(a, c, keys, &err), -EBUSY);
    assert_string_equal(err.msg, "t.yaml:3:11: external.listen: can only change with a restart");
    /* the shared admin.listen and a list are restart-only too; a default counts as a value */
    assert_int_equal(load("admin: {listen: 127.0.0.1:8081}\n", &d, &err), 0);
    assert_int_equal(cfg_restart_changed(a, d, keys, &err), -EBUSY);
    assert_string_equal(err.msg, "t.yaml:1:17: admin.listen: can only change with a restart");
    cfg_free(d);
    assert_int_equal(
        load("admin: {listen: 127.0.0.1:8080}\ndomains: [example.com, b.example]\n", &d, &err), 0);
    assert_int_equal(cfg_restart_changed(a, d, keys, &err), -EBUSY);
    assert_string_equal(err.msg, "t.yaml:2:10: domains: can only change with a restart");
    cfg_free(a);
    cfg_free(b);
    cfg_free(c);
    cfg_free(d);
}

static void count_pair(const char *cert, const char *key, void *arg)
{
    char *out = arg;
    snprintf(out + strlen(out), 256 - strlen(out), "%s+%s;", cert, key ? key : "-");
}

/* The certificate watcher finds every cert/key pair through the key table. */
static void cert_pairs_are_found_by_the_key_table(void **st)
{
    (void)st;
    struct test_cfg *c;
    struct cfg_err err = {""};
    char seen[256] = "";
    assert_int_equal(load("admin: {listen: 127.0.0.1:8080}\n", &c, &err), 0);
    cfg_each_cert_pair(c, keys, count_pair, seen);
    assert_string_equal(seen, ""); /* no cert configured: nothing to watch */
    cfg_free(c);
    assert_int_equal(load("admin: {listen: 127.0.0.1:8080}\n"
                          "external: {tls: {cert: /dev/null, key: /dev/zero}}\n",
                          &c, &err),
                     0);
    cfg_each_cert_pair(c, keys, count_pair, seen);
    assert_string_equal(seen, "/dev/null+/dev/zero;");
    /* a reference keeps the generation after the loader's owner lets go */
    cfg_ref(c);
    cfg_free(c);
    assert_string_equal(c->ext.tls.cert, "/dev/null");
    cfg_free(c);
}

/* A section whose cert/key are strings (files written at start, as acme: has) is watched
 * too; one with `enabled: false` is not, with everything in it. */
struct files_cfg {
    struct daemon_config base;
    struct {
        bool enabled;
        char *cert, *key;
    } acme;
    struct {
        bool enabled;
        struct tls_files_config tls;
    } link;
};
static const struct cfg_key acme_like_keys[] = {
    {"enabled", CFG_BOOL, 0, "false"},
    {"cert", CFG_STR, offsetof(struct files_cfg, acme.cert) - offsetof(struct files_cfg, acme)},
    {"key", CFG_STR, offsetof(struct files_cfg, acme.key) - offsetof(struct files_cfg, acme)},
    CFG_END,
};
static const struct cfg_key link_like_keys[] = {
    {"enabled", CFG_BOOL, 0, "true"},
    {"tls", CFG_SECTION, offsetof(struct files_cfg, link.tls) - offsetof(struct files_cfg, link),
     .sub = tls_files_keys},
    CFG_END,
};
static const struct cfg_key files_keys[] = {
    DAEMON_CONFIG_KEYS,
    {"acme", CFG_SECTION, offsetof(struct files_cfg, acme), .sub = acme_like_keys},
    {"link", CFG_SECTION, offsetof(struct files_cfg, link), .sub = link_like_keys},
    CFG_END,
};

static void disabled_sections_and_string_pairs(void **st)
{
    (void)st;
    struct cfg_err err = {""};
    void *c;
    char seen[256] = "";
    static const char on[] = "admin: {listen: 127.0.0.1:8080}\n"
                             "acme: {enabled: true, cert: /nonexistent/a.crt, key: /x/a.key}\n"
                             "link: {tls: {cert: /dev/null, key: /dev/zero}}\n";
    assert_int_equal(
        cfg_load_string("t.yaml", on, strlen(on), files_keys, sizeof(struct files_cfg), &c, &err),
        0);
    cfg_each_cert_pair(c, files_keys, count_pair, seen);
    assert_string_equal(seen, "/nonexistent/a.crt+/x/a.key;/dev/null+/dev/zero;");
    cfg_free(c);
    seen[0] = '\0';
    static const char off[] = "admin: {listen: 127.0.0.1:8080}\n"
                              "acme: {enabled: false, cert: /nonexistent/a.crt, key: /x/a.key}\n"
                              "link: {enabled: false, tls: {cert: /dev/null, key: /dev/zero}}\n";
    assert_int_equal(
        cfg_load_string("t.yaml", off, strlen(off), files_keys, sizeof(struct files_cfg), &c, &err),
        0);
    cfg_each_cert_pair(c, files_keys, count_pair, seen);
    assert_string_equal(seen, "");
    cfg_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(full_config_loads_typed_values),
        cmocka_unit_test(defaults_fill_absent_keys_and_lists),
        cmocka_unit_test(unknown_key_names_line_and_column),
        cmocka_unit_test(port_out_of_range_names_value_position),
        cmocka_unit_test(bad_indent_is_a_yaml_syntax_error_with_position),
        cmocka_unit_test(missing_certificate_file_is_named),
        cmocka_unit_test(required_and_typed_errors),
        cmocka_unit_test(missing_file_is_reported),
        cmocka_unit_test(semantic_error_points_at_key),
        cmocka_unit_test(restart_only_change_is_named),
        cmocka_unit_test(cert_pairs_are_found_by_the_key_table),
        cmocka_unit_test(disabled_sections_and_string_pairs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
