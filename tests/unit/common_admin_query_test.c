/* admin_query_get: the one query-string / form-body parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "common/admin.h"

static int get(const char *q, const char *name, char *out, size_t cap)
{
    return admin_query_get(q, strlen(q), name, out, cap);
}

static void finds_and_decodes(void **st)
{
    char v[32];
    assert_int_equal(get("a=1&user=bob%40x&b=2", "user", v, sizeof v), 1);
    assert_string_equal(v, "bob@x");
    assert_int_equal(get("role=a+b", "role", v, sizeof v), 1);
    assert_string_equal(v, "a b");
    assert_int_equal(get("xuser=1&user=2", "user", v, sizeof v), 1);
    assert_string_equal(v, "2");
    assert_int_equal(get("user=", "user", v, sizeof v), 1); /* present, empty */
    assert_string_equal(v, "");
    assert_int_equal(get("user", "user", v, sizeof v), 0);
    assert_int_equal(get("", "user", v, sizeof v), 0);
    assert_string_equal(v, "");
}

static void refuses_what_does_not_fit(void **st)
{
    char v[4];
    assert_int_equal(get("k=1234", "k", v, sizeof v), -EINVAL);
    assert_int_equal(get("k=123", "k", v, sizeof v), 1);
    assert_int_equal(get("k=%zz", "k", v, sizeof v), -EINVAL);
    assert_int_equal(get("k=%4", "k", v, sizeof v), -EINVAL);
    assert_int_equal(get("k=a%00", "k", v, sizeof v), -EINVAL);
    /* the length bounds the scan: nothing past qlen is read */
    assert_int_equal(admin_query_get("k=1&j=2", 3, "j", v, sizeof v), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(finds_and_decodes),
        cmocka_unit_test(refuses_what_does_not_fit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
