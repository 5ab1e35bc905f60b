/* The Director's acme section: off by default, and what an enabled one must have, each
 * error at its file:line:col. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "director/director.h"

#define CERTS "build/test-certs"

static int certs_setup(void **state)
{
    (void)state;
    return system("deploy/certs.sh " CERTS " >/dev/null 2>&1") == 0 ? 0 : -1;
}

static struct director_config *load(const char *extra, struct cfg_err *err, int *rc)
{
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             "admin: {listen: 127.0.0.1:1}\n"
             "tls: {cert: " CERTS "/director.crt, key: " CERTS "/director.key, ca: " CERTS
             "/ca.crt}\n%s",
             extra);
    void *cfg = NULL;
    *rc = cfg_load_string("director.yaml", yaml, strlen(yaml), director_config_keys,
                          sizeof(struct director_config), &cfg, err);
    if (*rc == 0)
        *rc = director_config_validate(cfg, err);
    if (*rc && cfg) {
        cfg_free(cfg);
        cfg = NULL;
    }
    return cfg;
}

static void off_by_default(void **state)
{
    (void)state;
    struct cfg_err err = {{0}};
    int rc;
    struct director_config *c = load("", &err, &rc);
    assert_int_equal(rc, 0);
    assert_false(c->acme.enabled);
    assert_int_equal(c->acme.n_certificates, 0);
    assert_int_equal(c->acme.retry_min_ms, 60000);
    assert_int_equal(c->acme.challenge_timeout_ms, 5000);
    cfg_free(c);
}

static void a_lab_section_loads(void **state)
{
    (void)state;
    struct cfg_err err = {{0}};
    int rc;
    struct director_config *c = load("acme:\n"
                                     "  enabled: true\n"
                                     "  directory: https://127.0.0.1:14000/dir\n"
                                     "  ca: " CERTS "/ca.crt\n"
                                     "  contact: mailto:ops@lab.test\n"
                                     "  account_key: /tmp/x.key\n"
                                     "  retry_min: 1s\n"
                                     "  retry_max: 8s\n"
                                     "  certificates:\n"
                                     "    - {edge: access-edge, names: [sip.lab.test]}\n"
                                     "    - {edge: rp-1, names: [web.lab.test, www.lab.test], "
                                     "challenge: http-01}\n",
                                     &err, &rc);
    assert_int_equal(rc, 0);
    assert_true(c->acme.enabled);
    assert_int_equal(c->acme.n_certificates, 2);
    assert_string_equal(c->acme.certificates[0].edge, "access-edge");
    assert_int_equal(c->acme.certificates[0].challenge, ACME_CHOICE_TLS_ALPN_01);
    assert_int_equal(c->acme.certificates[1].challenge, ACME_CHOICE_HTTP_01);
    assert_int_equal(c->acme.certificates[1].n_names, 2);
    assert_int_equal(c->acme.retry_max_ms, 8000);
    cfg_free(c);
}

static void expect_error(const char *extra, const char *needle)
{
    struct cfg_err err = {{0}};
    int rc;
    struct director_config *c = load(extra, &err, &rc);
    assert_null(c);
    assert_int_equal(rc, -EINVAL);
    if (!strstr(err.msg, needle))
        fail_msg("error \"%s\" does not contain \"%s\"", err.msg, needle);
}

static void bad_sections_are_refused_where_they_are(void **state)
{
    (void)state;
    expect_error(
        "acme:\n  enabled: true\n  certificates: [{edge: av-edge, names: [av.lab.test]}]\n",
        "needs directory");
    expect_error("acme:\n  enabled: true\n  directory: http://ca/dir\n"
                 "  certificates: [{edge: av-edge, names: [av.lab.test]}]\n",
                 "director.yaml:5:14: ");
    expect_error("acme:\n  enabled: true\n  directory: https://ca/dir\n", "needs certificates");
    expect_error("acme:\n  certificates:\n    - {edge: av-edge, names: [av.lab.test]}\n"
                 "    - {edge: av-edge, names: [x.lab.test]}\n",
                 "director.yaml:6:") /* the second entry's edge */;
    expect_error("acme:\n  certificates:\n    - {edge: av-edge, names: [\"*.lab.test\"]}\n",
                 "not a DNS name");
    expect_error("acme:\n  certificates:\n    - {edge: av-edge, names: [localhost]}\n",
                 "not a DNS name");
    expect_error("acme:\n  certificates:\n    - {edge: av-edge, names: []}\n", "1 to 16 names");
    expect_error("acme:\n  certificates:\n    - {edge: director, names: [a.b]}\n",
                 "an edge role or an instance id");
    expect_error("acme:\n  certificates:\n    - {edge: av-edge, names: [a.b], challenge: dns-01}\n",
                 "dns-01");
    expect_error("acme:\n  retry_min: 10s\n  retry_max: 1s\n", "longer than retry_max");
    expect_error("acme:\n  enabled: true\n  directory: https://ca/dir\n  contact: ops@x\n"
                 "  certificates: [{edge: av-edge, names: [av.lab.test]}]\n",
                 "mailto:");
    expect_error("acme:\n  directroy: https://ca/dir\n", "directroy");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(off_by_default),
        cmocka_unit_test(a_lab_section_loads),
        cmocka_unit_test(bad_sections_are_refused_where_they_are),
    };
    return cmocka_run_group_tests(tests, certs_setup, NULL);
}
