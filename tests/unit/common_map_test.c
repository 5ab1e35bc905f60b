/* Unit tests for common/map.c: the byte-keyed hash map and the intrusive list. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "common/map.h"

static void count_fn(struct ce_map_entry *e, void *arg)
{
    *(int64_t *)arg += e->count;
}

static void test_get_find_remove_across_growth(void **st)
{
    struct ce_map *m;
    assert_int_equal(ce_map_create(&m), 0);
    char k[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(k, sizeof k, "conf-%d", i);
        struct ce_map_entry *e = ce_map_get(m, k, strlen(k));
        assert_non_null(e);
        e->count = i;
    }
    assert_int_equal(ce_map_size(m), 1000);
    assert_ptr_equal(ce_map_get(m, "conf-7", 6), ce_map_find(m, "conf-7", 6));
    assert_int_equal(ce_map_find(m, "conf-999", 8)->count, 999);
    assert_null(ce_map_find(m, "conf-1000", 9));
    int64_t sum = 0;
    ce_map_foreach(m, count_fn, &sum);
    assert_int_equal(sum, 999 * 1000 / 2);
    for (int i = 0; i < 1000; i += 2) {
        snprintf(k, sizeof k, "conf-%d", i);
        ce_map_remove(m, ce_map_find(m, k, strlen(k)));
    }
    assert_int_equal(ce_map_size(m), 500);
    assert_null(ce_map_find(m, "conf-8", 6));
    assert_non_null(ce_map_find(m, "conf-9", 6));
    ce_map_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_find_remove_across_growth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
