/* common/acme_edge.c without a loop: the placeholder pair at start, CertStatus, a CSR the
 * openssl CLI verifies and a test CA (openssl CLI) signs, the install of the result, the
 * CertIssued it refuses (wrong order, another key, missing names), and challenges into
 * the store. Answers are captured instead of sent. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/acme_challenges.h"
#include "common/acme_edge.h"
#include "common/pki.h"
#include "common/tls_shared.h"

struct fixture {
    char dir[64], cert[128], key[128];
    struct logger log;
    struct metrics *metrics;
    struct acme_challenges *store;
    struct acme_edge *e;
    struct ctl_msg *replies[8];
    size_t n;
};

static int capture(const struct ctl_msg *m, void *arg)
{
    struct fixture *f = arg;
    assert_true(f->n < 8);
    f->replies[f->n] = malloc(sizeof *m);
    *f->replies[f->n++] = *m;
    return 0;
}

static struct ctl_msg *one_reply(struct fixture *f, enum ctl_msg_type type)
{
    assert_int_equal(f->n, 1);
    assert_int_equal(f->replies[0]->type, type);
    f->n = 0;
    return f->replies[0];
}

static void handle(struct fixture *f, const struct ctl_msg *m)
{
    acme_edge_handle(f->e, m, capture, f);
}

static char *slurp(const char *path)
{
    unsigned char *b;
    size_t n;
    char err[256];
    return tls_read_file(path, &b, &n, err, sizeof err) ? NULL : (char *)b;
}

static int run(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    strcpy(f->dir, "/tmp/acme-edge-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->cert, sizeof f->cert, "%s/edge.crt", f->dir);
    snprintf(f->key, sizeof f->key, "%s/edge.key", f->dir);
    log_init(&f->log, "acme-test");
    f->log.level = LOG_ERROR;
    if (metrics_create(&f->metrics, "t") || acme_challenges_create(&f->store))
        return -1;
    /* A test CA for what the Director would get from the ACME CA. */
    if (run("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
            "-keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca >/dev/null 2>&1",
            f->dir))
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    acme_edge_free(f->e);
    acme_challenges_free(f->store);
    metrics_destroy(f->metrics);
    run("rm -rf %s", f->dir);
    free(f);
    return 0;
}

static int64_t metric(struct fixture *f, const char *line)
{
    size_t len;
    char *text = metrics_render(f->metrics, &len);
    char want[160];
    snprintf(want, sizeof want, "\n%s", line); /* the sample, not its # HELP line */
    char *p = strstr(text, want);
    int64_t v = p ? strtoll(p + strlen(want), NULL, 10) : -1;
    free(text);
    return v;
}

/* Signs the DER request in f->dir/req.der with the test CA for names (a SAN list), into
 * f->dir/chain.pem (leaf then CA); returns the chain. */
static char *sign(struct fixture *f, const struct ctl_csr *csr, const char *san)
{
    char path[160];
    snprintf(path, sizeof path, "%s/req.der", f->dir);
    FILE *o = fopen(path, "wb");
    fwrite(csr->der, 1, csr->der_len, o);
    fclose(o);
    assert_int_equal(run("cd %s && openssl req -inform DER -in req.der -verify -noout "
                         ">/dev/null 2>&1",
                         f->dir),
                     0);
    assert_int_equal(run("cd %s && printf 'subjectAltName=%s\\n' > ext.cnf && "
                         "openssl x509 -req -inform DER -in req.der -CA ca.crt -CAkey ca.key "
                         "-CAcreateserial -days 1 -extfile ext.cnf -out leaf.pem >/dev/null 2>&1 "
                         "&& cat leaf.pem ca.crt > chain.pem",
                         f->dir, san),
                     0);
    snprintf(path, sizeof path, "%s/chain.pem", f->dir);
    return slurp(path);
}

static struct ctl_msg *csr_request(struct fixture *f, const char *order, const char *name)
{
    struct ctl_msg *m = calloc(1, sizeof *m);
    m->type = CTL_MSG_CSR_REQUEST;
    strcpy(m->u.csr_request.order_id, order);
    strcpy(m->u.csr_request.names[0], name);
    m->u.csr_request.n_names = 1;
    handle(f, m);
    free(m);
    return one_reply(f, CTL_MSG_CSR);
}

static struct ctl_msg *cert_issued(struct fixture *f, const char *order, const char *chain)
{
    struct ctl_msg *m = calloc(1, sizeof *m);
    m->type = CTL_MSG_CERT_ISSUED;
    strcpy(m->u.cert_issued.order_id, order);
    snprintf(m->u.cert_issued.chain_pem, sizeof m->u.cert_issued.chain_pem, "%s", chain);
    handle(f, m);
    free(m);
    return one_reply(f, CTL_MSG_CERT_STATUS);
}

static void placeholder_request_install(void **state)
{
    struct fixture *f = *state;
    struct acme_edge_config a = {.enabled = true, .cert = f->cert, .key = f->key};
    assert_int_equal(acme_edge_create(&f->log, f->metrics, &a, "web.lab.test", f->store, &f->e), 0);
    /* The placeholder: a self-signed pair for the daemon's name, the key private. */
    struct stat st;
    assert_int_equal(stat(f->key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    struct tls_cert_info ti;
    char err[256];
    assert_int_equal(tls_cert_inspect(f->cert, f->key, &ti, err, sizeof err), 0);
    assert_string_equal(ti.subject, "CN=web.lab.test");

    struct ctl_msg welcome = {.type = CTL_MSG_WELCOME};
    handle(f, &welcome);
    struct ctl_msg *r = one_reply(f, CTL_MSG_CERT_STATUS);
    assert_true(r->u.cert_status.self_signed);
    assert_int_equal(r->u.cert_status.n_names, 1);
    assert_string_equal(r->u.cert_status.names[0], "web.lab.test");
    assert_string_equal(r->u.cert_status.error, "");
    char placeholder_serial[100];
    strcpy(placeholder_serial, r->u.cert_status.serial);
    free(r);

    /* A request: the CSR verifies; the CA signs it; the install follows. */
    r = csr_request(f, "o1", "web.lab.test");
    assert_string_equal(r->u.csr.order_id, "o1");
    assert_string_equal(r->u.csr.error, "");
    assert_true(r->u.csr.der_len > 100);
    char *chain = sign(f, &r->u.csr, "DNS:web.lab.test");
    free(r);
    assert_non_null(chain);

    /* The wrong order is refused, the files stay. */
    r = cert_issued(f, "o0", chain);
    assert_string_equal(r->u.cert_status.error, "no certificate request pending for order o0");
    assert_string_equal(r->u.cert_status.serial, placeholder_serial);
    free(r);
    assert_int_equal(metric(f, "t_acme_install_failures_total "), 1);

    r = cert_issued(f, "o1", chain);
    assert_string_equal(r->u.cert_status.error, "");
    assert_false(r->u.cert_status.self_signed);
    assert_string_not_equal(r->u.cert_status.serial, placeholder_serial);
    assert_string_equal(r->u.cert_status.names[0], "web.lab.test");
    free(r);
    assert_int_equal(tls_cert_inspect(f->cert, f->key, &ti, err, sizeof err), 0);
    assert_string_equal(ti.subject, "CN=web.lab.test");
    assert_int_equal(stat(f->key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(metric(f, "t_acme_certificates_installed_total "), 1);
    assert_int_equal(metric(f, "t_acme_csr_total{result=\"ok\"} "), 1);

    /* The same chain again: its order is over, nothing pending. */
    r = cert_issued(f, "o1", chain);
    assert_non_null(strstr(r->u.cert_status.error, "no certificate request pending"));
    free(r);

    /* A new order, answered with the old chain (another key): refused, files kept. */
    char *before = slurp(f->cert);
    r = csr_request(f, "o2", "web.lab.test");
    free(r);
    r = cert_issued(f, "o2", chain);
    assert_string_not_equal(r->u.cert_status.error, "");
    free(r);
    char *after = slurp(f->cert);
    assert_string_equal(before, after);
    free(after);
    assert_int_equal(tls_cert_inspect(f->cert, f->key, &ti, err, sizeof err), 0);

    /* A chain for other names than requested: refused. */
    r = csr_request(f, "o3", "www.lab.test");
    char *other = sign(f, &r->u.csr, "DNS:other.lab.test");
    free(r);
    r = cert_issued(f, "o3", other);
    assert_string_equal(r->u.cert_status.error, "the certificate does not name www.lab.test");
    free(r);
    after = slurp(f->cert);
    assert_string_equal(before, after);
    free(after);
    free(before);
    free(other);
    free(chain);
    assert_int_equal(metric(f, "t_acme_install_failures_total "), 4);
}

static void bad_requests_get_an_error(void **state)
{
    struct fixture *f = *state;
    struct acme_edge_config a = {.enabled = true, .cert = f->cert, .key = f->key};
    assert_int_equal(acme_edge_create(&f->log, f->metrics, &a, NULL, f->store, &f->e), 0);
    struct tls_cert_info ti;
    char err[256];
    assert_int_equal(tls_cert_inspect(f->cert, f->key, &ti, err, sizeof err), 0);
    assert_string_equal(ti.subject, "CN=localhost");
    struct ctl_msg *r = csr_request(f, "o1", "not a name");
    assert_int_equal(r->u.csr.der_len, 0);
    assert_string_equal(r->u.csr.error, "name 1 is not a DNS name");
    free(r);
    assert_int_equal(metric(f, "t_acme_csr_total{result=\"error\"} "), 1);
}

/* A key written without its certificate (a crash between the two renames) is not a pair:
 * the next start writes a new placeholder instead of failing to load. */
static void a_broken_pair_is_replaced_at_start(void **state)
{
    struct fixture *f = *state;
    struct acme_edge_config a = {.enabled = true, .cert = f->cert, .key = f->key};
    assert_int_equal(acme_edge_create(&f->log, NULL, &a, "a.test", f->store, &f->e), 0);
    acme_edge_free(f->e);
    f->e = NULL;
    char *key = NULL;
    char err[256];
    assert_int_equal(pki_key_generate(&key, err, sizeof err), 0);
    FILE *o = fopen(f->key, "w");
    fputs(key, o);
    fclose(o);
    free(key);
    struct tls_cert_info ti;
    assert_int_equal(tls_cert_inspect(f->cert, f->key, &ti, err, sizeof err), -EKEYREJECTED);
    assert_int_equal(acme_edge_create(&f->log, NULL, &a, "a.test", f->store, &f->e), 0);
    assert_int_equal(tls_cert_inspect(f->cert, f->key, &ti, err, sizeof err), 0);
    /* An intact pair is left alone. */
    char *before = slurp(f->cert);
    acme_edge_free(f->e);
    assert_int_equal(acme_edge_create(&f->log, NULL, &a, "a.test", f->store, &f->e), 0);
    char *after = slurp(f->cert);
    assert_string_equal(before, after);
    free(before);
    free(after);
    /* Disabled: nothing. */
    acme_edge_free(f->e);
    a.enabled = false;
    f->e = (struct acme_edge *)&a;
    assert_int_equal(acme_edge_create(&f->log, NULL, &a, "a.test", f->store, &f->e), 0);
    assert_null(f->e);
    /* A directory that cannot be written: the start fails. */
    a.enabled = true;
    a.cert = "/nonexistent/edge.crt";
    a.key = "/nonexistent/edge.key";
    assert_int_equal(acme_edge_create(&f->log, NULL, &a, "a.test", f->store, &f->e), -ENOENT);
    assert_null(f->e);
}

static struct ctl_msg *challenge(struct fixture *f, enum ctl_challenge_kind kind, const char *name,
                                 const char *token, bool remove)
{
    struct ctl_msg *m = calloc(1, sizeof *m);
    m->type = CTL_MSG_CHALLENGE;
    m->u.challenge.kind = kind;
    strcpy(m->u.challenge.name, name);
    strcpy(m->u.challenge.token, token);
    snprintf(m->u.challenge.key_authorization, sizeof m->u.challenge.key_authorization,
             "%s.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI", token);
    m->u.challenge.remove = remove;
    handle(f, m);
    free(m);
    if (remove) {
        assert_int_equal(f->n, 0); /* not answered */
        return NULL;
    }
    return one_reply(f, CTL_MSG_CHALLENGE_READY);
}

static void challenges_go_into_the_store(void **state)
{
    struct fixture *f = *state;
    struct acme_edge_config a = {.enabled = true, .cert = f->cert, .key = f->key};
    assert_int_equal(acme_edge_create(&f->log, f->metrics, &a, "x.test", f->store, &f->e), 0);
    struct ctl_msg *r = challenge(f, CTL_CHALLENGE_HTTP_01, "web.lab.test", "tokA", false);
    assert_string_equal(r->u.challenge_ready.token, "tokA");
    assert_string_equal(r->u.challenge_ready.error, "");
    free(r);
    char ka[300];
    assert_true(acme_challenges_http(f->store, "tokA", ka, sizeof ka) > 0);
    assert_string_equal(ka, "tokA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI");

    r = challenge(f, CTL_CHALLENGE_TLS_ALPN_01, "conf.lab.test", "tokB", false);
    assert_string_equal(r->u.challenge_ready.token, "tokB");
    assert_string_equal(r->u.challenge_ready.error, "");
    free(r);
    char *cert = NULL, *key = NULL;
    assert_int_equal(acme_challenges_alpn(f->store, "conf.lab.test", &cert, &key), 0);
    /* the acmeIdentifier holds SHA-256 of the key authorization */
    char path[160];
    snprintf(path, sizeof path, "%s/chal.pem", f->dir);
    FILE *o = fopen(path, "w");
    fputs(cert, o);
    fclose(o);
    free(cert);
    free(key);
    assert_int_equal(
        run("cd %s && openssl x509 -in chal.pem -noout -text | grep -q 'DNS:conf.lab.test' && "
            "openssl asn1parse -in chal.pem | grep -A2 '1.3.6.1.5.5.7.1.31' | tr -d ' \\n' | "
            "grep -qi $(printf %%s 'tokB.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI' | "
            "openssl dgst -sha256 -r | cut -c1-64)",
            f->dir),
        0);
    assert_int_equal(metric(f, "t_acme_challenges_active "), 2);

    challenge(f, CTL_CHALLENGE_HTTP_01, "web.lab.test", "tokA", true);
    assert_int_equal(acme_challenges_http(f->store, "tokA", ka, sizeof ka), -ENOENT);
    challenge(f, CTL_CHALLENGE_TLS_ALPN_01, "conf.lab.test", "tokB", true);
    assert_int_equal(acme_challenges_alpn(f->store, "conf.lab.test", &cert, &key), -ENOENT);
    assert_int_equal(metric(f, "t_acme_challenges_active "), 0);

    r = challenge(f, CTL_CHALLENGE_UNKNOWN, "web.lab.test", "tokC", false);
    assert_string_equal(r->u.challenge_ready.error, "unknown challenge kind");
    free(r);
    r = challenge(f, CTL_CHALLENGE_TLS_ALPN_01, "bad name", "tokD", false);
    assert_string_equal(r->u.challenge_ready.error, "not a DNS name");
    free(r);
    r = challenge(f, CTL_CHALLENGE_HTTP_01, "web.lab.test", "bad token!", false);
    assert_string_not_equal(r->u.challenge_ready.error, "");
    free(r);
    /* RFC 8737 3: TLS-ALPN-01 cannot validate a wildcard; said so, and no key made for it */
    r = challenge(f, CTL_CHALLENGE_TLS_ALPN_01, "*.lab.test", "tokE", false);
    assert_string_equal(r->u.challenge_ready.error,
                        "TLS-ALPN-01 does not validate a wildcard name (RFC 8737 3)");
    free(r);
    assert_int_equal(metric(f, "t_acme_challenges_total{kind=\"error\"} "), 4);
}

static void config_checks(void **state)
{
    struct fixture *f = *state;
    struct {
        struct daemon_config base;
        struct acme_edge_config acme;
        struct tls_files_config tls;
    } * c;
    static const struct cfg_key tkeys[] = {
        DAEMON_CONFIG_KEYS,
        {"acme", CFG_SECTION, 0, .sub = acme_edge_keys},
        {"tls", CFG_SECTION, 0, .sub = tls_files_keys},
        CFG_END,
    };
    struct cfg_key keys[4];
    memcpy(keys, tkeys, sizeof keys);
    keys[1].offset = offsetof(__typeof__(*c), acme);
    keys[2].offset = offsetof(__typeof__(*c), tls);
    struct cfg_err err;
    char yaml[512];
    snprintf(yaml, sizeof yaml,
             "admin: {listen: 127.0.0.1:8080}\nacme:\n  enabled: true\n  cert: %s\n", f->cert);
    assert_int_equal(
        cfg_load_string("t.yaml", yaml, strlen(yaml), keys, sizeof *c, (void **)&c, &err), 0);
    assert_int_equal(acme_edge_config_check(c, &c->acme, "tls.cert", NULL, NULL, &err), -EINVAL);
    assert_string_equal(err.msg,
                        "t.yaml:3:12: acme.enabled: acme needs cert and key (the files to write)");
    cfg_free(c);
    snprintf(yaml, sizeof yaml,
             "admin: {listen: 127.0.0.1:8080}\nacme:\n  enabled: true\n  cert: /nonexistent/a\n"
             "  key: %s\n",
             f->key);
    assert_int_equal(
        cfg_load_string("t.yaml", yaml, strlen(yaml), keys, sizeof *c, (void **)&c, &err), 0);
    assert_int_equal(acme_edge_config_check(c, &c->acme, "tls.cert", NULL, NULL, &err), -EINVAL);
    assert_string_equal(err.msg, "t.yaml:4:9: acme.cert: cannot write in /nonexistent: No such "
                                 "file or directory");
    cfg_free(c);
    /* The listeners name other files than acme's: refused; the same files: fine. */
    snprintf(yaml, sizeof yaml,
             "admin: {listen: 127.0.0.1:8080}\nacme: {enabled: true, cert: %s, key: %s}\n"
             "tls: {cert: %s/ca.crt, key: %s/ca.key}\n",
             f->cert, f->key, f->dir, f->dir);
    assert_int_equal(
        cfg_load_string("t.yaml", yaml, strlen(yaml), keys, sizeof *c, (void **)&c, &err), 0);
    assert_int_equal(acme_edge_config_check(c, &c->acme, "tls.cert", c->tls.cert, c->tls.key, &err),
                     -EINVAL);
    assert_non_null(strstr(err.msg, "t.yaml:3:13: tls.cert: with acme enabled"));
    assert_int_equal(acme_edge_config_check(c, &c->acme, "tls.cert", f->cert, f->key, &err), 0);
    struct tls_files_config out;
    acme_edge_tls_files(&c->acme, &c->tls, &out);
    assert_string_equal(out.cert, f->cert);
    assert_string_equal(out.key, f->key);
    c->acme.enabled = false;
    acme_edge_tls_files(&c->acme, &c->tls, &out);
    assert_ptr_equal(out.cert, c->tls.cert);
    assert_int_equal(acme_edge_config_check(c, &c->acme, "tls.cert", c->tls.cert, NULL, &err), 0);
    cfg_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(placeholder_request_install, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_requests_get_an_error, setup, teardown),
        cmocka_unit_test_setup_teardown(a_broken_pair_is_replaced_at_start, setup, teardown),
        cmocka_unit_test_setup_teardown(challenges_go_into_the_store, setup, teardown),
        cmocka_unit_test_setup_teardown(config_checks, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
