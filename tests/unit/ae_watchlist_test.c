/* GET /watchlist's JSON (ae_watchlist_render): every partner listed whole, whatever the
 * length of its domain, and the domain escaped (it comes from a peer's certificate). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "access-edge/ae_int.h"

static void long_domains_are_listed_whole(void **st)
{
    enum { N = 8 };
    struct ae_partner p[N];
    memset(p, 0, sizeof(p));
    for (int i = 0; i < N; i++) {
        memset(p[i].domain, 'a' + i, sizeof(p[i].domain) - 1);
        p[i].nusers = p[i].ok = p[i].fail = 4000000000u;
        p[i].suspicious = p[i].watched = true;
        p[i].watched_at = -9000000000000000000LL;
    }
    size_t len = 0;
    char *out = ae_watchlist_render(p, N, &len);
    assert_non_null(out);
    assert_int_equal(len, strlen(out));
    for (int i = 0; i < N; i++) {
        char want[200];
        snprintf(want, sizeof(want), "\"domain\":\"%s\"", p[i].domain);
        assert_non_null(strstr(out, want));
    }
    assert_string_equal(out + len - 3, "]}\n");
    free(out);
}

static void domain_is_escaped(void **st)
{
    struct ae_partner p = {0};
    strcpy(p.domain, "evil\",\"watched\":false,\"x\":\"\\");
    size_t len = 0;
    char *out = ae_watchlist_render(&p, 1, &len);
    assert_non_null(out);
    assert_non_null(
        strstr(out, "\"domain\":\"evil\\\",\\\"watched\\\":false,\\\"x\\\":\\\"\\\\\""));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(long_domains_are_listed_whole),
        cmocka_unit_test(domain_is_escaped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
