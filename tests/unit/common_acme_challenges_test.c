/* Unit tests for common/acme_challenges.c: the HTTP-01 and TLS-ALPN-01 challenge store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/acme_challenges.h"
#include "common/metrics.h"

#define CERT "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
#define KEY "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n"

static int64_t later(void)
{
    return (int64_t)time(NULL) + 600;
}

static void test_http_set_get_replace_remove(void **st)
{
    (void)st;
    struct acme_challenges *s;
    assert_int_equal(acme_challenges_create(&s), 0);
    char out[300];
    assert_int_equal(acme_challenges_http(s, "tok_1", out, sizeof out), -ENOENT);
    assert_int_equal(acme_challenges_set_http(s, "tok_1", "tok_1.thumb-print", later()), 0);
    assert_int_equal(acme_challenges_http(s, "tok_1", out, sizeof out), 17);
    assert_string_equal(out, "tok_1.thumb-print");
    /* Tokens are case-sensitive (base64url). */
    assert_int_equal(acme_challenges_http(s, "TOK_1", out, sizeof out), -ENOENT);
    /* Same token: replaced, not a second entry. */
    assert_int_equal(acme_challenges_set_http(s, "tok_1", "tok_1.other", later()), 0);
    assert_int_equal(acme_challenges_http(s, "tok_1", out, sizeof out), 11);
    assert_string_equal(out, "tok_1.other");
    /* Too small a buffer: no truncated answer. */
    assert_int_equal(acme_challenges_http(s, "tok_1", out, 11), -ENOSPC);
    assert_int_equal(acme_challenges_http(s, "tok_1", out, 12), 11);
    acme_challenges_remove(s, "tok_1");
    assert_int_equal(acme_challenges_http(s, "tok_1", out, sizeof out), -ENOENT);
    acme_challenges_remove(s, "tok_1"); /* absent: no-op */
    acme_challenges_free(s);
    acme_challenges_free(NULL);
}

static void test_alpn_set_get_replace_remove(void **st)
{
    (void)st;
    struct acme_challenges *s;
    assert_int_equal(acme_challenges_create(&s), 0);
    char *c = NULL, *k = NULL;
    assert_int_equal(acme_challenges_alpn(s, "web.lab.test", &c, &k), -ENOENT);
    assert_null(c);
    assert_null(k);
    assert_int_equal(acme_challenges_set_alpn(s, "web.lab.test", CERT, KEY, later()), 0);
    /* Names compare case-insensitively. */
    assert_int_equal(acme_challenges_alpn(s, "WEB.Lab.Test", &c, &k), 0);
    assert_string_equal(c, CERT);
    assert_string_equal(k, KEY);
    free(c);
    free(k);
    assert_int_equal(acme_challenges_set_alpn(s, "WEB.lab.test", CERT "x", KEY "y", later()), 0);
    assert_int_equal(acme_challenges_alpn(s, "web.lab.test", &c, &k), 0);
    assert_string_equal(c, CERT "x");
    assert_string_equal(k, KEY "y");
    free(c);
    free(k);
    /* An HTTP-01 token and a name do not shadow each other. */
    assert_int_equal(acme_challenges_set_http(s, "conf", "conf.t", later()), 0);
    assert_int_equal(acme_challenges_set_alpn(s, "conf", CERT, KEY, later()), 0);
    char out[64];
    assert_int_equal(acme_challenges_http(s, "conf", out, sizeof out), 6);
    acme_challenges_remove(s, "web.LAB.test");
    assert_int_equal(acme_challenges_alpn(s, "web.lab.test", &c, &k), -ENOENT);
    acme_challenges_remove(s, "conf"); /* both kinds */
    assert_int_equal(acme_challenges_alpn(s, "conf", &c, &k), -ENOENT);
    assert_int_equal(acme_challenges_http(s, "conf", out, sizeof out), -ENOENT);
    acme_challenges_free(s);
}

/* Challenge hellos are counted: served (the name has a challenge) or unknown_name. */
static void test_alpn_lookups_counted(void **st)
{
    (void)st;
    struct acme_challenges *s;
    struct metrics *m;
    assert_int_equal(acme_challenges_create(&s), 0);
    assert_int_equal(metrics_create(&m, "t"), 0);
    struct metric *served = metrics_counter(m, "h", "h", "result=\"served\""),
                  *unknown = metrics_counter(m, "h", "h", "result=\"unknown_name\"");
    char *c = NULL, *k = NULL;
    assert_int_equal(acme_challenges_alpn(s, "a.lab", &c, &k), -ENOENT); /* not counted yet */
    acme_challenges_count_alpn(s, served, unknown);
    assert_int_equal(acme_challenges_set_alpn(s, "a.lab", "-----BEGIN CERTIFICATE-----\n",
                                              "-----BEGIN PRIVATE KEY-----\n", time(NULL) + 60),
                     0);
    assert_int_equal(acme_challenges_alpn(s, "A.lab", &c, &k), 0);
    free(c);
    free(k);
    assert_int_equal(acme_challenges_alpn(s, "b.lab", &c, &k), -ENOENT);
    assert_int_equal(acme_challenges_alpn(s, "c.lab", &c, &k), -ENOENT);
    assert_int_equal(metric_get(served), 1);
    assert_int_equal(metric_get(unknown), 2);
    acme_challenges_free(s);
    metrics_destroy(m);
}

static void test_expiry(void **st)
{
    (void)st;
    struct acme_challenges *s;
    assert_int_equal(acme_challenges_create(&s), 0);
    int64_t now = (int64_t)time(NULL);
    char *c, *k, out[64];
    assert_int_equal(acme_challenges_set_alpn(s, "old.lab.test", CERT, KEY, now - 1), 0);
    assert_int_equal(acme_challenges_alpn(s, "old.lab.test", &c, &k), -ENOENT);
    assert_int_equal(acme_challenges_set_http(s, "old", "old.t", now), 0);
    assert_int_equal(acme_challenges_http(s, "old", out, sizeof out), -ENOENT);
    /* Renewed: found again. */
    assert_int_equal(acme_challenges_set_http(s, "old", "old.t", later()), 0);
    assert_int_equal(acme_challenges_http(s, "old", out, sizeof out), 5);
    acme_challenges_free(s);
}

static void test_limits(void **st)
{
    (void)st;
    struct acme_challenges *s;
    assert_int_equal(acme_challenges_create(&s), 0);
    char name[64];
    for (int i = 0; i < 64; i++) {
        snprintf(name, sizeof name, "n%d.lab.test", i);
        assert_int_equal(acme_challenges_set_alpn(s, name, CERT, KEY, later()), 0);
    }
    assert_int_equal(acme_challenges_set_alpn(s, "n64.lab.test", CERT, KEY, later()), -ENOSPC);
    assert_int_equal(acme_challenges_set_http(s, "t64", "t64.x", later()), -ENOSPC);
    /* A full table still takes a replacement of an entry it has. */
    assert_int_equal(acme_challenges_set_alpn(s, "n5.lab.test", CERT, KEY, later()), 0);
    /* A removed or expired entry's slot is taken again. */
    acme_challenges_remove(s, "n0.lab.test");
    assert_int_equal(acme_challenges_set_http(s, "t64", "t64.x", later()), 0);
    assert_int_equal(acme_challenges_set_alpn(s, "n1.lab.test", CERT, KEY, 1), 0);
    assert_int_equal(acme_challenges_set_alpn(s, "n64.lab.test", CERT, KEY, later()), 0);
    char *c, *k;
    assert_int_equal(acme_challenges_alpn(s, "n64.lab.test", &c, &k), 0);
    free(c);
    free(k);
    assert_int_equal(acme_challenges_alpn(s, "n1.lab.test", &c, &k), -ENOENT);
    acme_challenges_free(s);

    /* Largest token and key authorization taken, one more refused. */
    assert_int_equal(acme_challenges_create(&s), 0);
    char tok[130], ka[258], out[300];
    memset(tok, 'a', 128);
    tok[128] = '\0';
    memset(ka, 'b', 256);
    ka[256] = '\0';
    assert_int_equal(acme_challenges_set_http(s, tok, ka, later()), 0);
    assert_int_equal(acme_challenges_http(s, tok, out, sizeof out), 256);
    tok[128] = 'a';
    tok[129] = '\0';
    assert_int_equal(acme_challenges_set_http(s, tok, "x", later()), -EINVAL);
    assert_int_equal(acme_challenges_http(s, tok, out, sizeof out), -ENOENT);
    ka[256] = 'b';
    ka[257] = '\0';
    assert_int_equal(acme_challenges_set_http(s, "t", ka, later()), -EINVAL);
    char big[300];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(acme_challenges_set_alpn(s, big, CERT, KEY, later()), -EINVAL);
    acme_challenges_free(s);
}

static void test_bad_input(void **st)
{
    (void)st;
    struct acme_challenges *s;
    assert_int_equal(acme_challenges_create(NULL), -EINVAL);
    assert_int_equal(acme_challenges_create(&s), 0);
    char out[64], *c, *k;
    int64_t t = later();
    assert_int_equal(acme_challenges_set_http(NULL, "t", "t.x", t), -EINVAL);
    assert_int_equal(acme_challenges_set_http(s, NULL, "t.x", t), -EINVAL);
    assert_int_equal(acme_challenges_set_http(s, "t", NULL, t), -EINVAL);
    assert_int_equal(acme_challenges_set_http(s, "", "t.x", t), -EINVAL);
    assert_int_equal(acme_challenges_set_http(s, "t", "", t), -EINVAL);
    /* Not base64url: a path or a header could be smuggled through these. */
    assert_int_equal(acme_challenges_set_http(s, "../etc", "t.x", t), -EINVAL);
    assert_int_equal(acme_challenges_set_http(s, "t/x", "t.x", t), -EINVAL);
    assert_int_equal(acme_challenges_set_http(s, "t", "t.x\r\nX: y", t), -EINVAL);
    assert_int_equal(acme_challenges_set_http(s, "t=", "t.x", t), -EINVAL);
    assert_int_equal(acme_challenges_http(NULL, "t", out, sizeof out), -EINVAL);
    assert_int_equal(acme_challenges_http(s, NULL, out, sizeof out), -EINVAL);
    assert_int_equal(acme_challenges_http(s, "t", NULL, 4), -EINVAL);

    assert_int_equal(acme_challenges_set_alpn(NULL, "a.b", CERT, KEY, t), -EINVAL);
    assert_int_equal(acme_challenges_set_alpn(s, NULL, CERT, KEY, t), -EINVAL);
    assert_int_equal(acme_challenges_set_alpn(s, "a.b", NULL, KEY, t), -EINVAL);
    assert_int_equal(acme_challenges_set_alpn(s, "a.b", CERT, NULL, t), -EINVAL);
    assert_int_equal(acme_challenges_set_alpn(s, "", CERT, KEY, t), -EINVAL);
    assert_int_equal(acme_challenges_set_alpn(s, "*.a.b", CERT, KEY, t), -EINVAL);
    assert_int_equal(acme_challenges_set_alpn(s, "a..b", CERT, KEY, t), -EINVAL);
    assert_int_equal(acme_challenges_set_alpn(s, ".a.b", CERT, KEY, t), -EINVAL);
    assert_int_equal(acme_challenges_set_alpn(s, "a b", CERT, KEY, t), -EINVAL);
    assert_int_equal(acme_challenges_set_alpn(s, "a.b", "not a pem", KEY, t), -EINVAL);
    assert_int_equal(acme_challenges_set_alpn(s, "a.b", CERT, "", t), -EINVAL);
    assert_int_equal(acme_challenges_alpn(s, "a.b", NULL, &k), -EINVAL);
    assert_int_equal(acme_challenges_alpn(s, "a.b", &c, NULL), -EINVAL);
    assert_int_equal(acme_challenges_alpn(s, NULL, &c, &k), -EINVAL);
    assert_int_equal(acme_challenges_alpn(NULL, "a.b", &c, &k), -EINVAL);
    acme_challenges_remove(NULL, "a");
    acme_challenges_remove(s, NULL);
    acme_challenges_free(s);
}

/* Readers (as av-edge's workers in handshakes) while writers set, replace and remove: each
 * answer is a whole pair from one set, never a torn or freed one (ASan, make SAN=1). */
struct mt {
    struct acme_challenges *s;
    int id;
    int found;
};

static void *writer(void *arg)
{
    struct mt *m = arg;
    char name[32], cert[128], key[128];
    for (int i = 0; i < 3000; i++) {
        snprintf(name, sizeof name, "n%d.lab.test", i % 8);
        snprintf(cert, sizeof cert, "-----BEGIN CERTIFICATE-----\n%d-%d\n", m->id, i);
        snprintf(key, sizeof key, "-----BEGIN PRIVATE KEY-----\n%d-%d\n", m->id, i);
        int rc = acme_challenges_set_alpn(m->s, name, cert, key, later());
        if (rc != 0 && rc != -ENOSPC)
            return (void *)1;
        if (i % 5 == 0)
            acme_challenges_remove(m->s, name);
    }
    return NULL;
}

static void *reader(void *arg)
{
    struct mt *m = arg;
    char name[32];
    for (int i = 0; i < 6000; i++) {
        char *c, *k;
        snprintf(name, sizeof name, "n%d.lab.test", i % 8);
        int rc = acme_challenges_alpn(m->s, name, &c, &k);
        if (rc == -ENOENT)
            continue;
        if (rc != 0)
            return (void *)1;
        /* The same writer and round in both halves. */
        bool same = strcmp(c + strlen("-----BEGIN CERTIFICATE-----\n"),
                           k + strlen("-----BEGIN PRIVATE KEY-----\n")) == 0;
        free(c);
        free(k);
        if (!same)
            return (void *)2;
        m->found++;
    }
    return NULL;
}

static void test_threads(void **st)
{
    (void)st;
    struct acme_challenges *s;
    assert_int_equal(acme_challenges_create(&s), 0);
    pthread_t t[4];
    struct mt m[4];
    for (int i = 0; i < 4; i++) {
        m[i] = (struct mt){.s = s, .id = i};
        assert_int_equal(pthread_create(&t[i], NULL, i < 2 ? writer : reader, &m[i]), 0);
    }
    int found = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        assert_int_equal(pthread_join(t[i], &r), 0);
        assert_null(r);
        found += m[i].found;
    }
    /* The last round of each writer leaves its names in place. */
    for (int i = 0; i < 8; i++) {
        char name[32], *c, *k;
        snprintf(name, sizeof name, "n%d.lab.test", i);
        int rc = acme_challenges_alpn(s, name, &c, &k);
        if (rc == 0) {
            found++;
            free(c);
            free(k);
        }
    }
    assert_true(found > 0);
    acme_challenges_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_set_get_replace_remove),
        cmocka_unit_test(test_alpn_set_get_replace_remove),
        cmocka_unit_test(test_alpn_lookups_counted),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
