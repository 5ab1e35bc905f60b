/* director/acme_sched.c: when an edge needs a certificate, and the backoff with jitter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "director/acme_sched.h"

static struct ctl_cert_status cert(int64_t nb, int64_t na, bool self, const char *a, const char *b)
{
    struct ctl_cert_status s;
    memset(&s, 0, sizeof s);
    s.not_before = nb;
    s.not_after = na;
    s.self_signed = self;
    snprintf(s.names[s.n_names++], sizeof s.names[0], "%s", a);
    if (b)
        snprintf(s.names[s.n_names++], sizeof s.names[0], "%s", b);
    return s;
}

static void needs_follow_the_certificate(void **state)
{
    (void)state;
    const char *names[] = {"sip.lab.test"};
    int64_t due;
    /* 90 days from t=0: due at day 60. */
    const int64_t D = 86400;
    struct ctl_cert_status ok = cert(0, 90 * D, false, "SIP.lab.test", NULL);
    assert_int_equal(acme_sched_need(NULL, names, 1, NULL, 10, &due), ACME_NEED_MISSING);
    assert_int_equal(due, 0);
    struct ctl_cert_status none;
    memset(&none, 0, sizeof none);
    assert_int_equal(acme_sched_need(&none, names, 1, NULL, 10, NULL), ACME_NEED_MISSING);
    assert_int_equal(acme_sched_need(&ok, names, 1, NULL, 59 * D, &due), ACME_NEED_NONE);
    assert_int_equal(due, 60 * D);
    assert_int_equal(acme_sched_need(&ok, names, 1, NULL, 60 * D - 1, NULL), ACME_NEED_NONE);
    assert_int_equal(acme_sched_need(&ok, names, 1, NULL, 60 * D, NULL), ACME_NEED_RENEW);
    assert_int_equal(acme_sched_need(&ok, names, 1, NULL, 90 * D, NULL), ACME_NEED_EXPIRED);
    /* Another name configured than the certificate has. */
    const char *two[] = {"sip.lab.test", "sip2.lab.test"};
    assert_int_equal(acme_sched_need(&ok, two, 2, NULL, 10, NULL), ACME_NEED_NAMES);
    struct ctl_cert_status both = cert(0, 90 * D, false, "sip2.lab.test", "sip.lab.test");
    assert_int_equal(acme_sched_need(&both, two, 2, NULL, 10, NULL), ACME_NEED_NONE);
    /* A name the certificate has beyond the configured ones is fine. */
    assert_int_equal(acme_sched_need(&both, names, 1, NULL, 10, NULL), ACME_NEED_NONE);
    struct ctl_cert_status self = cert(0, 3650 * D, true, "sip.lab.test", NULL);
    assert_int_equal(acme_sched_need(&self, names, 1, NULL, 10, NULL), ACME_NEED_SELF_SIGNED);
    assert_string_equal(acme_need_name(ACME_NEED_SELF_SIGNED), "self-signed");
    assert_string_equal(acme_need_name(ACME_NEED_RENEW), "renew");
    /* Short lifetimes keep 2/3 exactly: 3 s -> due at 2 s. */
    struct ctl_cert_status shrt = cert(100, 103, false, "sip.lab.test", NULL);
    assert_int_equal(acme_sched_need(&shrt, names, 1, NULL, 101, &due), ACME_NEED_NONE);
    assert_int_equal(due, 102);
    struct ctl_cert_status odd = cert(0, 100, false, "sip.lab.test", NULL);
    acme_sched_need(&odd, names, 1, NULL, 0, &due);
    assert_int_equal(due, 66); /* floor(200/3) */
}

static void ari_window_decides_when_given(void **state)
{
    (void)state;
    const char *names[] = {"web.lab.test"};
    const int64_t D = 86400;
    struct ctl_cert_status c = cert(0, 90 * D, false, "web.lab.test", NULL);
    struct acme_renewal_info early = {.start = 10 * D, .end = 11 * D};
    int64_t due;
    assert_int_equal(acme_sched_need(&c, names, 1, &early, 10 * D, &due), ACME_NEED_RENEW);
    assert_int_equal(due, 10 * D);
    struct acme_renewal_info late = {.start = 70 * D, .end = 75 * D};
    assert_int_equal(acme_sched_need(&c, names, 1, &late, 65 * D, &due), ACME_NEED_NONE);
    assert_int_equal(due, 70 * D);
    struct acme_renewal_info bad = {.start = 0, .end = 0}; /* none: 2/3 */
    acme_sched_need(&c, names, 1, &bad, 0, &due);
    assert_int_equal(due, 60 * D);
}

static void backoff_doubles_with_jitter_within_bounds(void **state)
{
    (void)state;
    /* min 1 s, max 60 s */
    assert_int_equal(acme_sched_backoff_ms(1, 1000, 60000, 0), 1000);
    assert_int_equal(acme_sched_backoff_ms(1, 1000, 60000, 12345), 1000);
    for (uint32_t r = 0; r < 5000; r += 7) {
        uint64_t b2 = acme_sched_backoff_ms(2, 1000, 60000, r);
        assert_true(b2 >= 1000 && b2 <= 2000);
        uint64_t b4 = acme_sched_backoff_ms(4, 1000, 60000, r * 2654435761u);
        assert_true(b4 >= 4000 && b4 <= 8000);
        uint64_t b30 = acme_sched_backoff_ms(30, 1000, 60000, r * 2654435761u);
        assert_true(b30 >= 30000 && b30 <= 60000);
        uint64_t big = acme_sched_backoff_ms(1000, 1000, 60000, r);
        assert_true(big >= 30000 && big <= 60000);
    }
    /* rnd 0 gives the low end, a rnd just under the span the high end. */
    assert_int_equal(acme_sched_backoff_ms(3, 1000, 60000, 0), 2000);
    assert_int_equal(acme_sched_backoff_ms(3, 1000, 60000, 2000), 4000);
    /* Jitter spreads: not every rnd gives the same delay. */
    assert_int_not_equal(acme_sched_backoff_ms(5, 1000, 60000, 1),
                         acme_sched_backoff_ms(5, 1000, 60000, 5000));
    /* max below min: min wins. */
    assert_int_equal(acme_sched_backoff_ms(5, 2000, 1000, 99), 2000);
    assert_int_equal(acme_sched_backoff_ms(0, 500, 1000, 99), 500);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(needs_follow_the_certificate),
        cmocka_unit_test(ari_window_decides_when_given),
        cmocka_unit_test(backoff_doubles_with_jitter_within_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
