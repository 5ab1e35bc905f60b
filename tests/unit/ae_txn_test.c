/* INVITE transaction table: find/add/delete, capacity bound (503 upstream), expiry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "access-edge/ae_txn.h"

static void add_find_delete(void **st)
{
    struct ae_txn_table *t;
    assert_int_equal(ae_txn_table_create(&t, 100), 0);
    for (uint64_t k = 1; k <= 100; k++)
        assert_non_null(ae_txn_add(t, k * 0x9e3779b97f4a7c15ULL, 0));
    assert_null(ae_txn_add(t, 12345, 0)); /* full: the caller sheds with 503 */
    assert_int_equal(ae_txn_count(t), 100);
    struct ae_txn *x = ae_txn_find(t, 7 * 0x9e3779b97f4a7c15ULL);
    assert_non_null(x);
    ae_txn_del(t, x);
    assert_null(ae_txn_find(t, 7 * 0x9e3779b97f4a7c15ULL));
    assert_non_null(ae_txn_add(t, 12345, 0));
    assert_non_null(ae_txn_find(t, 12345));
    ae_txn_table_destroy(t);
}

static void expiry_and_linger(void **st)
{
    struct ae_txn_table *t;
    assert_int_equal(ae_txn_table_create(&t, 64), 0);
    struct ae_txn *a = ae_txn_add(t, 1, 0);
    struct ae_txn *b = ae_txn_add(t, 2, 0);
    b->final = true;
    b->t_ms = 1000;
    (void)a;
    assert_int_equal(ae_txn_expire(t, 5000, 180000, 32000), 0);
    assert_int_equal(ae_txn_expire(t, 33000, 180000, 32000), 1); /* b lingered 32 s */
    assert_non_null(ae_txn_find(t, 1));
    assert_int_equal(ae_txn_expire(t, 180000, 180000, 32000), 1); /* a hit the maximum */
    assert_int_equal(ae_txn_count(t), 0);
    /* Churn well past capacity: tombstones are compacted, lookups stay right. */
    for (uint64_t i = 0; i < 10000; i++) {
        struct ae_txn *x = ae_txn_add(t, i + 10, i);
        assert_non_null(x);
        ae_txn_del(t, x);
    }
    assert_int_equal(ae_txn_count(t), 0);
    ae_txn_table_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(add_find_delete),
        cmocka_unit_test(expiry_and_linger),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
