/* log_limit: the one rate-limited log line helper (fd-limit lines, access-edge's lines about
 * bad input, the registrar's throttle lines). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/log.h"

static void one_per_interval(void **st)
{
    struct log_limit l = {0};
    uint64_t held = 99;
    assert_true(log_limit_pass(&l, 5, 1000, &held)); /* the first passes at once */
    assert_int_equal(held, 0);
    assert_false(log_limit_pass(&l, 500, 1000, &held));
    assert_false(log_limit_pass(&l, 1004, 1000, &held));
    assert_true(log_limit_pass(&l, 1005, 1000, &held));
    assert_int_equal(held, 2);
}

static void burst_then_summary(void **st)
{
    struct log_limit l = {0};
    uint64_t held, span;
    int passed = 0;
    for (int i = 0; i < 25; i++)
        passed += log_limit_pass_n(&l, 100 + (uint64_t)i, 1000, 10, &held);
    assert_int_equal(passed, 10);
    assert_false(log_limit_flush(&l, 900, &held, &span)); /* the second is not over */
    assert_true(log_limit_flush(&l, 1100, &held, &span));
    assert_int_equal(held, 15);
    assert_int_equal(span, 1000);
    assert_false(log_limit_flush(&l, 5000, &held, &span)); /* nothing held since */
    assert_true(log_limit_pass_n(&l, 5001, 1000, 10, &held));
    assert_int_equal(held, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(one_per_interval),
        cmocka_unit_test(burst_then_summary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
