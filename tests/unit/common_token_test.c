/* Token module against fixed vectors computed independently (Python hmac/hashlib). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common/crypto.h"
#include "common/token.h"

static const char SECRET[] = "0123456789abcdef0123456789abcdef";
static const char VECTOR[] =
    "v1.k1.Y29uZj1jMTt1c2VyPWJvYjtyb2xlPWF0dGVuZGVlO2V4cD0yMDAwMDAwMDAwO2p0aT1qMQ."
    "T5KzAeETafAmomt5Fs5wzqcAAblx4FiWN8i2e0WWpzc";

static void turn_rest_password_matches_known_vector(void **st)
{
    char user[64], pw[64];
    assert_int_equal(turn_rest_username(user, sizeof user, 1700000000, "alice"), 0);
    assert_string_equal(user, "1700000000:alice");
    assert_int_equal(turn_rest_password("north", 5, user, pw, sizeof pw), 0);
    assert_string_equal(pw, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
    assert_int_equal(turn_rest_password("coturn-secret", 13, "1433895918:user1", pw, sizeof pw), 0);
    assert_string_equal(pw, "GVcF7dzr1URGDRjULNdae07G410=");
}

static void turn_rest_expiry_parses_timestamp_prefix(void **st)
{
    int64_t e = 0;
    assert_int_equal(turn_rest_expiry("1700000000:alice", 16, &e), 0);
    assert_int_equal(e, 1700000000);
    assert_int_equal(turn_rest_expiry("alice", 5, &e), -EINVAL);
    assert_int_equal(turn_rest_expiry(":alice", 6, &e), -EINVAL);
}

static struct keyring ring(void)
{
    struct keyring kr;
    memset(&kr, 0, sizeof kr);
    assert_int_equal(keyring_rotate(&kr, "k1", SECRET, strlen(SECRET), 0), 0);
    return kr;
}

static void token_mint_matches_known_vector(void **st)
{
    struct keyring kr = ring();
    struct token_claims c = {
        .conf = "c1", .user = "bob", .role = "attendee", .jti = "j1", .exp = 2000000000};
    char out[512];
    ssize_t n = token_mint(&kr, &c, out, sizeof out);
    assert_int_equal(n, (ssize_t)strlen(VECTOR));
    assert_string_equal(out, VECTOR);
}

static void token_verify_accepts_vector_and_fills_claims(void **st)
{
    struct keyring kr = ring();
    struct token_claims c;
    assert_int_equal(token_verify(&kr, VECTOR, strlen(VECTOR), 1900000000, &c), TOKEN_OK);
    assert_string_equal(c.conf, "c1");
    assert_string_equal(c.user, "bob");
    assert_string_equal(c.role, "attendee");
    assert_string_equal(c.jti, "j1");
    assert_int_equal(c.exp, 2000000000);
}

static void token_verify_refuses_expired(void **st)
{
    struct keyring kr = ring();
    assert_int_equal(token_verify(&kr, VECTOR, strlen(VECTOR), 2000000001, NULL), TOKEN_EXPIRED);
}

static void token_verify_refuses_tampered_claims_and_mac(void **st)
{
    struct keyring kr = ring();
    char t[512];
    strcpy(t, VECTOR);
    t[10] = t[10] == 'A' ? 'B' : 'A'; /* inside the claims, still base64url */
    assert_int_equal(token_verify(&kr, t, strlen(t), 1900000000, NULL), TOKEN_BAD_SIGNATURE);
    strcpy(t, VECTOR);
    t[strlen(t) - 3] = t[strlen(t) - 3] == 'A' ? 'B' : 'A'; /* inside the MAC */
    assert_int_equal(token_verify(&kr, t, strlen(t), 1900000000, NULL), TOKEN_BAD_SIGNATURE);
}

static void token_verify_refuses_non_canonical_mac_spelling(void **st)
{
    /* "...Wpzc": the final 'c' carries 2 unused bits; 'd', 'e', 'f' decode to the same
     * MAC. Only the canonical text is the key (found by the lab's forged-key test). */
    struct keyring kr = ring();
    char t[512];
    strcpy(t, VECTOR);
    size_t n = strlen(t);
    assert_int_equal(t[n - 1], 'c');
    for (char c = 'd'; c <= 'f'; c++) {
        t[n - 1] = c;
        assert_int_equal(token_verify(&kr, t, n, 1900000000, NULL), TOKEN_MALFORMED);
    }
}

static void token_verify_refuses_foreign_key_and_garbage(void **st)
{
    struct keyring other;
    memset(&other, 0, sizeof other);
    keyring_rotate(&other, "k9", "x", 1, 0);
    assert_int_equal(token_verify(&other, VECTOR, strlen(VECTOR), 1900000000, NULL),
                     TOKEN_UNKNOWN_KEY);
    struct keyring kr = ring();
    const char *bad[] = {
        "", "v1.", "v2.k1.a.b", "v1.k1.abc", "v1.k1..x", "v1.k1.a.b.c", "garbage garbage garbage"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(token_verify(&kr, bad[i], strlen(bad[i]), 0, NULL), TOKEN_MALFORMED);
}

static void keyring_accepts_previous_key_after_rotation_only(void **st)
{
    struct keyring kr = ring();
    struct token_claims c = {.conf = "c", .user = "u", .role = "r", .exp = 100};
    char t1[512], t2[512];
    assert_true(token_mint(&kr, &c, t1, sizeof t1) > 0);
    assert_int_equal(keyring_rotate(&kr, "k2", "another secret", 14, 0), 0);
    assert_true(token_mint(&kr, &c, t2, sizeof t2) > 0);
    assert_non_null(strstr(t2, "v1.k2."));
    assert_int_equal(token_verify(&kr, t1, strlen(t1), 50, NULL), TOKEN_OK);
    assert_int_equal(token_verify(&kr, t2, strlen(t2), 50, NULL), TOKEN_OK);
    assert_int_equal(keyring_rotate(&kr, "k3", "third", 5, 0), 0);
    assert_int_equal(token_verify(&kr, t1, strlen(t1), 50, NULL), TOKEN_UNKNOWN_KEY);
    assert_int_equal(token_verify(&kr, t2, strlen(t2), 50, NULL), TOKEN_OK);
}

static void keyring_key_past_not_after_is_refused(void **st)
{
    struct keyring kr;
    memset(&kr, 0, sizeof kr);
    keyring_rotate(&kr, "k1", SECRET, strlen(SECRET), 1950000000);
    assert_int_equal(token_verify(&kr, VECTOR, strlen(VECTOR), 1940000000, NULL), TOKEN_OK);
    assert_int_equal(token_verify(&kr, VECTOR, strlen(VECTOR), 1960000000, NULL),
                     TOKEN_UNKNOWN_KEY);
}

static void crypto_crc32_and_base64url_round_trip(void **st)
{
    assert_int_equal(crypto_crc32("123456789", 9), 0xcbf43926u);
    uint8_t in[40], back[40];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (uint8_t)(i * 37);
    for (size_t n = 0; n <= sizeof in; n++) {
        char enc[80];
        ssize_t e = base64url_encode(in, n, enc, sizeof enc);
        assert_true(e >= 0);
        assert_null(strchr(enc, '='));
        assert_int_equal(base64url_decode(enc, (size_t)e, back, sizeof back), (ssize_t)n);
        assert_memory_equal(in, back, n);
    }
    assert_true(crypto_ct_eq("abc", "abc", 3));
    assert_false(crypto_ct_eq("abc", "abd", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(turn_rest_password_matches_known_vector),
        cmocka_unit_test(turn_rest_expiry_parses_timestamp_prefix),
        cmocka_unit_test(token_mint_matches_known_vector),
        cmocka_unit_test(token_verify_accepts_vector_and_fills_claims),
        cmocka_unit_test(token_verify_refuses_expired),
        cmocka_unit_test(token_verify_refuses_tampered_claims_and_mac),
        cmocka_unit_test(token_verify_refuses_non_canonical_mac_spelling),
        cmocka_unit_test(token_verify_refuses_foreign_key_and_garbage),
        cmocka_unit_test(keyring_accepts_previous_key_after_rotation_only),
        cmocka_unit_test(keyring_key_past_not_after_is_refused),
        cmocka_unit_test(crypto_crc32_and_base64url_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
