/* Unit tests for conf-edge/admit.c: conference key checks and the revocation list. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "conf-edge/admit.h"

#define NOW 1700000000

static void ring(struct keyring *kr, const char *id, const char *secret)
{
    memset(kr, 0, sizeof *kr);
    assert_int_equal(keyring_rotate(kr, id, secret, strlen(secret), 0), 0);
}

static size_t mint(const struct keyring *kr, const char *conf, const char *user, const char *jti,
                   int64_t exp, char *out, size_t cap)
{
    struct token_claims c = {.exp = exp};
    snprintf(c.conf, sizeof c.conf, "%s", conf);
    snprintf(c.user, sizeof c.user, "%s", user);
    snprintf(c.role, sizeof c.role, "attendee");
    snprintf(c.jti, sizeof c.jti, "%s", jti);
    ssize_t n = token_mint(kr, &c, out, cap);
    assert_true(n > 0);
    return (size_t)n;
}

static void test_valid_key_admitted_with_claims(void **st)
{
    struct keyring kr;
    ring(&kr, "k1", "lab-secret");
    char t[1024];
    size_t n = mint(&kr, "conf-a", "alice", "j1", NOW + 60, t, sizeof t);
    struct token_claims c;
    assert_int_equal(ce_admit_check(&kr, NULL, slice_make(t, n), NOW, &c), CE_REPLY_ADMITTED);
    assert_string_equal(c.conf, "conf-a");
    assert_string_equal(c.user, "alice");
    assert_string_equal(c.jti, "j1");
}

static void test_each_bad_key_gets_its_refusal(void **st)
{
    struct keyring kr, other;
    ring(&kr, "k1", "lab-secret");
    ring(&other, "k9", "another-secret");
    char t[1024];
    struct token_claims c;
    assert_int_equal(ce_admit_check(&kr, NULL, SLICE_NULL, NOW, &c), CE_REPLY_MISSING_KEY);
    size_t n = mint(&kr, "conf-a", "alice", "j1", NOW - 1, t, sizeof t);
    assert_int_equal(ce_admit_check(&kr, NULL, slice_make(t, n), NOW, &c), CE_REPLY_EXPIRED_KEY);
    n = mint(&other, "conf-a", "alice", "j1", NOW + 60, t, sizeof t);
    assert_int_equal(ce_admit_check(&kr, NULL, slice_make(t, n), NOW, &c), CE_REPLY_UNKNOWN_KEY);
    n = mint(&kr, "conf-a", "alice", "j1", NOW + 60, t, sizeof t);
    t[n - 2] = t[n - 2] == 'A' ? 'B' : 'A'; /* tampered signature */
    assert_int_equal(ce_admit_check(&kr, NULL, slice_make(t, n), NOW, &c), CE_REPLY_INVALID_KEY);
    assert_int_equal(ce_admit_check(&kr, NULL, slice_str("hello"), NOW, &c), CE_REPLY_INVALID_KEY);
    struct keyring empty;
    memset(&empty, 0, sizeof empty);
    n = mint(&kr, "conf-a", "alice", "j1", NOW + 60, t, sizeof t);
    assert_int_equal(ce_admit_check(&empty, NULL, slice_make(t, n), NOW, &c), CE_REPLY_UNKNOWN_KEY);
}

static void test_previous_key_still_admits_after_rotation(void **st)
{
    struct keyring kr;
    ring(&kr, "k1", "old");
    char t[1024];
    size_t n = mint(&kr, "conf-a", "alice", "j1", NOW + 60, t, sizeof t);
    assert_int_equal(keyring_rotate(&kr, "k2", "new", 3, 0), 0);
    struct token_claims c;
    assert_int_equal(ce_admit_check(&kr, NULL, slice_make(t, n), NOW, &c), CE_REPLY_ADMITTED);
    assert_int_equal(keyring_rotate(&kr, "k3", "newer", 5, 0), 0);
    assert_int_equal(ce_admit_check(&kr, NULL, slice_make(t, n), NOW, &c), CE_REPLY_UNKNOWN_KEY);
}

static void test_revoked_by_jti_or_user(void **st)
{
    struct keyring kr;
    ring(&kr, "k1", "lab-secret");
    struct ce_revocations *rev;
    assert_int_equal(ce_revocations_create(&rev, 4), 0);
    char t[1024];
    struct token_claims c;
    size_t n = mint(&kr, "conf-a", "alice", "j1", NOW + 60, t, sizeof t);
    assert_int_equal(ce_revocations_add(rev, "j1", NULL, NOW + 60, NOW), 0);
    assert_int_equal(ce_admit_check(&kr, rev, slice_make(t, n), NOW, &c), CE_REPLY_REVOKED_KEY);
    n = mint(&kr, "conf-a", "alice", "j2", NOW + 60, t, sizeof t);
    assert_int_equal(ce_admit_check(&kr, rev, slice_make(t, n), NOW, &c), CE_REPLY_ADMITTED);
    assert_int_equal(ce_revocations_add(rev, NULL, "alice", NOW + 60, NOW), 0);
    assert_int_equal(ce_admit_check(&kr, rev, slice_make(t, n), NOW, &c), CE_REPLY_REVOKED_KEY);
    /* Forgotten after `until`. */
    assert_int_equal(ce_admit_check(&kr, rev, slice_make(t, n), NOW + 61, &c),
                     CE_REPLY_EXPIRED_KEY);
    assert_false(ce_revocations_match(rev, &c, NOW + 61));
    assert_int_equal(ce_revocations_add(rev, NULL, NULL, 0, NOW), -EINVAL);
    ce_revocations_destroy(rev);
}

static void test_key_cap_replaces_the_oldest_or_refuses(void **st)
{
    uint64_t n = 99;
    /* under the cap: admitted, nothing ends */
    assert_int_equal(ce_admit_key_cap(0, 1, false, &n), CE_REPLY_ADMITTED);
    assert_int_equal(n, 0);
    assert_int_equal(ce_admit_key_cap(1, 2, true, &n), CE_REPLY_ADMITTED);
    assert_int_equal(n, 0);
    /* at the cap: the newcomer wins over the oldest one, or is refused */
    assert_int_equal(ce_admit_key_cap(1, 1, false, &n), CE_REPLY_ADMITTED);
    assert_int_equal(n, 1);
    assert_int_equal(ce_admit_key_cap(1, 1, true, &n), CE_REPLY_KEY_IN_USE);
    assert_int_equal(n, 0);
    /* past it (the cap was lowered by a reload): back down to the cap */
    assert_int_equal(ce_admit_key_cap(5, 2, false, &n), CE_REPLY_ADMITTED);
    assert_int_equal(n, 4);
    assert_int_equal(ce_admit_key_cap(5, 2, true, &n), CE_REPLY_KEY_IN_USE);
}

static void test_revocation_list_stays_bounded(void **st)
{
    struct ce_revocations *rev;
    assert_int_equal(ce_revocations_create(&rev, 3), 0);
    char j[16];
    for (int i = 0; i < 100; i++) {
        snprintf(j, sizeof j, "j%d", i);
        assert_int_equal(ce_revocations_add(rev, j, NULL, NOW + 1000 + i, NOW), 0);
        assert_true(ce_revocations_count(rev) <= 3);
    }
    /* The latest revocations are the ones kept (the earliest-expiring are evicted). */
    struct token_claims c = {0};
    snprintf(c.jti, sizeof c.jti, "j99");
    assert_true(ce_revocations_match(rev, &c, NOW));
    snprintf(c.jti, sizeof c.jti, "j0");
    assert_false(ce_revocations_match(rev, &c, NOW));
    /* Same entry twice is one entry. */
    assert_int_equal(ce_revocations_add(rev, "j99", NULL, NOW + 5000, NOW), 0);
    assert_int_equal(ce_revocations_count(rev), 3);
    ce_revocations_destroy(rev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_key_admitted_with_claims),
        cmocka_unit_test(test_each_bad_key_gets_its_refusal),
        cmocka_unit_test(test_previous_key_still_admits_after_rotation),
        cmocka_unit_test(test_revoked_by_jti_or_user),
        cmocka_unit_test(test_revocation_list_stays_bounded),
        cmocka_unit_test(test_key_cap_replaces_the_oldest_or_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
