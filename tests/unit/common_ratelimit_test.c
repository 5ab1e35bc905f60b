/* Token buckets: burst, refill, per-key rate override, bounded memory with LRU eviction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "common/ratelimit.h"

static void burst_then_refuse_then_refill(void **st)
{
    struct ratelimit *rl;
    assert_int_equal(ratelimit_create(&rl, 20, 5, 16), 0);
    for (int i = 0; i < 5; i++)
        assert_true(ratelimit_take(rl, "a", 1, 1, 1000, NULL));
    uint32_t retry = 0;
    assert_false(ratelimit_take(rl, "a", 1, 1, 1000, &retry));
    assert_int_equal(retry, 1);
    assert_true(ratelimit_take(rl, "b", 1, 1, 1000, NULL)); /* other keys unaffected */
    assert_true(ratelimit_take(rl, "a", 1, 1, 1050, NULL)); /* 50 ms at 20/s = one token */
    assert_false(ratelimit_take(rl, "a", 1, 1, 1050, NULL));
    ratelimit_destroy(rl);
}

static void rate_override_slows_one_key(void **st)
{
    struct ratelimit *rl;
    assert_int_equal(ratelimit_create(&rl, 20, 1, 16), 0);
    ratelimit_set_rate(rl, "p", 1, 1, 0);
    assert_true(ratelimit_take(rl, "p", 1, 1, 0, NULL));
    assert_false(ratelimit_take(rl, "p", 1, 1, 100, NULL)); /* 1/s: not back after 100 ms */
    assert_true(ratelimit_take(rl, "p", 1, 1, 1000, NULL));
    ratelimit_destroy(rl);
}

static void table_stays_bounded_and_evicts_least_recent(void **st)
{
    struct ratelimit *rl;
    assert_int_equal(ratelimit_create(&rl, 1, 1, 8), 0);
    assert_true(ratelimit_take(rl, "keep", 4, 1, 0, NULL));
    for (int i = 0; i < 1000; i++) {
        char k[16];
        int n = snprintf(k, sizeof k, "k%d", i);
        ratelimit_take(rl, k, (size_t)n, 1, 0, NULL);
        if (i % 4 == 0)
            ratelimit_take(rl, "keep", 4, 1, 0, NULL); /* stays recent, stays empty */
    }
    assert_int_equal(ratelimit_count(rl), 8);
    assert_false(ratelimit_take(rl, "keep", 4, 1, 0, NULL)); /* not evicted: still limited */
    ratelimit_destroy(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(burst_then_refuse_then_refill),
        cmocka_unit_test(rate_override_slows_one_key),
        cmocka_unit_test(table_stays_bounded_and_evicts_least_recent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
