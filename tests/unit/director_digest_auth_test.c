/* Digest authentication (director/digest_auth.c): responses against the RFC 7616 §3.9.1
 * examples, signed nonces, nonce-count replay checking with a bounded table, and the per-user
 * guess throttle with its known-address bucket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
// clang-format off: cmocka.h needs the headers above first
#include <cmocka.h>
// clang-format on

#include "director/digest_auth.h"

static const char *rfc_nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
static const char *rfc_cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

static void rfc7616_md5(void **st)
{
    char out[65];
    assert_int_equal(da_digest("MD5", "Mufasa", "http-auth@example.org", "Circle of Life", "GET",
                               "/dir/index.html", rfc_nonce, "00000001", rfc_cnonce, "auth", out),
                     0);
    assert_string_equal(out, "8ca523f5e9506fed4657c9700eebdbec");
}

static void rfc7616_sha256(void **st)
{
    char out[65];
    assert_int_equal(da_digest("SHA-256", "Mufasa", "http-auth@example.org", "Circle of Life",
                               "GET", "/dir/index.html", rfc_nonce, "00000001", rfc_cnonce, "auth",
                               out),
                     0);
    assert_string_equal(out, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1");
}

static void unknown_algorithm_refused(void **st)
{
    char out[65];
    assert_int_equal(
        da_digest("SHA-512-256", "u", "r", "p", "REGISTER", "sip:x", "n", NULL, NULL, NULL, out),
        -22);
}

/* ---- a little client ---- */

#define REALM "example.com"
static const struct da_limits LIM = {.nonce_lifetime_ms = 300000,
                                     .guess_burst = 10,
                                     .guesses_per_hour = 50,
                                     .known_burst = 5,
                                     .known_per_hour = 25};

struct answer {
    char nonce[DA_NONCE_LEN + 1], nc[9], resp[65];
    struct da_creds c;
};

static void answer(struct answer *a, const char *nonce, uint32_t nc, const char *user,
                   const char *pw)
{
    snprintf(a->nonce, sizeof(a->nonce), "%s", nonce);
    snprintf(a->nc, sizeof(a->nc), "%08x", nc);
    da_digest("MD5", user, REALM, pw, "REGISTER", "sip:example.com", a->nonce, a->nc, "cn", "auth",
              a->resp);
    a->c = (struct da_creds){.username = user,
                             .realm = REALM,
                             .nonce = a->nonce,
                             .uri = "sip:example.com",
                             .response = a->resp,
                             .algorithm = "MD5",
                             .cnonce = "cn",
                             .qop = "auth",
                             .nc = a->nc};
}

static enum da_result check(struct da_state *s, const struct answer *a, const char *user,
                            const char *pw, uint32_t client, uint64_t now, struct da_verdict *vo)
{
    uint8_t host[4] = {10, (uint8_t)(client >> 16), (uint8_t)(client >> 8), (uint8_t)client};
    struct da_request r = {.method = "REGISTER",
                           .user = user,
                           .password = pw,
                           .c = a ? &a->c : NULL,
                           .client = host,
                           .client_len = 4,
                           .now_ms = now};
    struct da_verdict v;
    da_check(s, &LIM, REALM, &r, &v);
    if (vo)
        *vo = v;
    return v.result;
}

static int setup(void **st)
{
    struct da_state *s;
    assert_int_equal(da_create(&s), 0);
    *st = s;
    return 0;
}

static int teardown(void **st)
{
    da_destroy(*st);
    return 0;
}

static void right_answer_ok_then_replay_is_stale(void **st)
{
    struct da_state *s = *st;
    char n[DA_NONCE_LEN + 1];
    da_nonce_make(s, 1000, n);
    assert_int_equal(strlen(n), DA_NONCE_LEN);
    struct answer a;
    answer(&a, n, 1, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 1, 2000, NULL), DA_OK);
    /* The same answer again, from anywhere: stale (RFC 7616 §3.3 nc must increase). */
    assert_int_equal(check(s, &a, "alice", "pw", 2, 2500, NULL), DA_STALE);
    /* The owner may reuse the nonce with the next nc; an older nc is refused. */
    answer(&a, n, 2, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 1, 3000, NULL), DA_OK);
    answer(&a, n, 2, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 1, 3100, NULL), DA_STALE);
}

static void nonces_of_one_millisecond_differ(void **st)
{
    struct da_state *s = *st;
    char n1[DA_NONCE_LEN + 1], n2[DA_NONCE_LEN + 1];
    da_nonce_make(s, 1000, n1);
    da_nonce_make(s, 1000, n2);
    assert_string_not_equal(n1, n2);
    struct answer a;
    answer(&a, n1, 1, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 1, 1001, NULL), DA_OK);
    answer(&a, n2, 1, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 1, 1001, NULL), DA_OK);
}

static void expired_or_forged_nonce(void **st)
{
    struct da_state *s = *st;
    char n[DA_NONCE_LEN + 1];
    da_nonce_make(s, 1000, n);
    struct answer a;
    answer(&a, n, 1, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 1, 1000 + LIM.nonce_lifetime_ms + 1, NULL),
                     DA_STALE);
    n[3] ^= 1; /* another issue time under the same MAC */
    answer(&a, n, 1, "alice", "pw");
    struct da_verdict v;
    assert_int_equal(check(s, &a, "alice", "pw", 1, 1500, &v), DA_CHALLENGE);
    assert_false(v.checked);
    /* No qop (RFC 2069 style): no nc, so no replay check: refused. */
    da_nonce_make(s, 1000, n);
    answer(&a, n, 1, "alice", "pw");
    a.c.qop = NULL;
    assert_int_equal(check(s, &a, "alice", "pw", 1, 1500, NULL), DA_CHALLENGE);
    /* Credentials for another user than the request claims. */
    answer(&a, n, 1, "bob", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 1, 1500, NULL), DA_CHALLENGE);
}

static void evicted_nonce_cannot_be_replayed(void **st)
{
    struct da_state *s = *st;
    char first[DA_NONCE_LEN + 1];
    da_nonce_make(s, 1000, first);
    struct answer a;
    answer(&a, first, 1, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 1, 1001, NULL), DA_OK);
    /* Many more used nonces than the table holds, all within the lifetime. */
    for (uint32_t i = 0; i < 4 * DA_NC_ENTRIES; i++) {
        char n[DA_NONCE_LEN + 1];
        da_nonce_make(s, 2000 + i, n);
        answer(&a, n, 1, "alice", "pw");
        assert_int_equal(check(s, &a, "alice", "pw", 1, 2000 + i, NULL), DA_OK);
    }
    answer(&a, first, 1, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 1, 200000, NULL), DA_STALE);
    answer(&a, first, 2, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 1, 200000, NULL), DA_STALE);
    /* A nonce issued now still works. */
    char n[DA_NONCE_LEN + 1];
    da_nonce_make(s, 200001, n);
    answer(&a, n, 1, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 1, 200002, NULL), DA_OK);
}

/* An hour of guesses, one a second, each from a new address: how many are checked. */
static unsigned guesses_checked_in(struct da_state *s, const char *user, const char *pw,
                                   uint64_t t0, uint64_t ms, uint32_t client0, unsigned *throttled)
{
    unsigned checked = 0;
    for (uint64_t t = t0; t < t0 + ms; t += 1000) {
        char n[DA_NONCE_LEN + 1];
        da_nonce_make(s, t, n);
        struct answer a;
        answer(&a, n, 1, user, "guess");
        struct da_verdict v;
        check(s, &a, user, pw, client0 + (uint32_t)(t / 1000), t + 10, &v);
        checked += v.checked;
        if (throttled)
            *throttled += v.result == DA_THROTTLED;
        assert_true(v.result == DA_CHALLENGE || v.result == DA_THROTTLED);
    }
    return checked;
}

static void guesses_per_user_hour_bounded_over_many_addresses(void **st)
{
    struct da_state *s = *st;
    unsigned throttled = 0;
    unsigned first = guesses_checked_in(s, "alice", "pw", 1000, 3600 * 1000, 1, &throttled);
    /* The bound: burst + refill; the last refilled token falls due at the hour's end. */
    assert_true(first <= LIM.guess_burst + LIM.guesses_per_hour);
    assert_true(first >= LIM.guess_burst + LIM.guesses_per_hour - 1);
    assert_true(throttled > 3000);
    /* The next hour: the refill only. */
    unsigned second =
        guesses_checked_in(s, "alice", "pw", 1000 + 3600 * 1000, 3600 * 1000, 100000, NULL);
    assert_true(second <= LIM.guesses_per_hour + 1);
    assert_true(second >= LIM.guesses_per_hour - 1);
}

static void throttle_start_reported_once(void **st)
{
    struct da_state *s = *st;
    unsigned started = 0;
    for (unsigned i = 0; i < 30; i++) {
        char n[DA_NONCE_LEN + 1];
        da_nonce_make(s, 1000 + i, n);
        struct answer a;
        answer(&a, n, 1, "alice", "guess");
        struct da_verdict v;
        check(s, &a, "alice", "pw", i, 1000 + i, &v);
        started += v.throttle_started;
        if (i >= LIM.guess_burst) {
            assert_int_equal(v.result, DA_THROTTLED);
            assert_true(v.retry_after_s >= 1 && v.retry_after_s <= 3600 / LIM.guesses_per_hour);
        }
    }
    assert_int_equal(started, 1);
}

static void real_user_from_known_address_not_locked_out(void **st)
{
    struct da_state *s = *st;
    char n[DA_NONCE_LEN + 1];
    da_nonce_make(s, 1000, n);
    struct answer a;
    answer(&a, n, 1, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 7, 1001, NULL), DA_OK);
    /* An attacker elsewhere empties alice's bucket. */
    guesses_checked_in(s, "alice", "pw", 2000, 698 * 1000, 1000, NULL);
    da_nonce_make(s, 699011, n);
    answer(&a, n, 1, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 99999, 699011, NULL), DA_THROTTLED);
    /* The real user, from where she logged in before, still gets in. */
    struct da_verdict v;
    answer(&a, n, 2, "alice", "pw");
    assert_int_equal(check(s, &a, "alice", "pw", 7, 699012, &v), DA_OK);
    assert_true(v.known_address);
}

static void unknown_user_answers_like_a_real_one(void **st)
{
    struct da_state *s = *st;
    for (unsigned i = 0; i < 40; i++) {
        char n[DA_NONCE_LEN + 1];
        da_nonce_make(s, 1000 + i, n);
        struct answer a, b;
        answer(&a, n, 1, "alice", "guess");
        answer(&b, n, 1, "nosuchuser", "guess");
        struct da_verdict va, vb;
        check(s, &a, "alice", "pw", i, 1000 + i, &va);
        check(s, &b, "nosuchuser", NULL, i, 1000 + i, &vb);
        assert_int_equal(va.result, vb.result);
        assert_int_equal(va.retry_after_s, vb.retry_after_s);
    }
}

static void own_proxy_authorization_stripped(void **st)
{
    char m[] = "MESSAGE sip:bob@example.com SIP/2.0\r\n"
               "Via: SIP/2.0/UDP 10.0.0.1\r\n"
               "Proxy-Authorization: Digest username=\"alice\", realm=\"example.com\",\r\n"
               " nonce=\"n\", response=\"r\"\r\n"
               "proxy-authorization : Digest realm=\"other.example\", response=\"x\"\r\n"
               "PROXY-AUTHORIZATION:Digest realm=\"example.com\"\r\n"
               "To: <sip:bob@example.com>\r\n"
               "Content-Length: 41\r\n"
               "\r\n"
               "Proxy-Authorization: realm=\"example.com\"";
    size_t n = da_strip_credentials((uint8_t *)m, strlen(m), "example.com");
    m[n] = 0;
    assert_string_equal(m,
                        "MESSAGE sip:bob@example.com SIP/2.0\r\n"
                        "Via: SIP/2.0/UDP 10.0.0.1\r\n"
                        "proxy-authorization : Digest realm=\"other.example\", response=\"x\"\r\n"
                        "To: <sip:bob@example.com>\r\n"
                        "Content-Length: 41\r\n"
                        "\r\n"
                        "Proxy-Authorization: realm=\"example.com\"");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc7616_md5),
        cmocka_unit_test(rfc7616_sha256),
        cmocka_unit_test(unknown_algorithm_refused),
        cmocka_unit_test(own_proxy_authorization_stripped),
        cmocka_unit_test_setup_teardown(right_answer_ok_then_replay_is_stale, setup, teardown),
        cmocka_unit_test_setup_teardown(nonces_of_one_millisecond_differ, setup, teardown),
        cmocka_unit_test_setup_teardown(expired_or_forged_nonce, setup, teardown),
        cmocka_unit_test_setup_teardown(evicted_nonce_cannot_be_replayed, setup, teardown),
        cmocka_unit_test_setup_teardown(guesses_per_user_hour_bounded_over_many_addresses, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(throttle_start_reported_once, setup, teardown),
        cmocka_unit_test_setup_teardown(real_user_from_known_address_not_locked_out, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(unknown_user_answers_like_a_real_one, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
