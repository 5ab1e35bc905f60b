/* Unit tests for conf-edge/preamble.c: the client preamble and the edge's answer lines. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "conf-edge/preamble.h"

static ssize_t parse(const char *s, struct ce_preamble *p)
{
    return ce_preamble_parse((const uint8_t *)s, strlen(s), p);
}

static void test_key_with_crlf_is_parsed(void **st)
{
    struct ce_preamble p;
    const char *in = "PSOM-EDGE/1 v1.k1.Y29uZj1h.c2ln\r\nPSOMDATA";
    assert_int_equal(parse(in, &p), 33);
    assert_int_equal(p.version, 1);
    assert_true(slice_eq_str(p.key, "v1.k1.Y29uZj1h.c2ln"));
}

static void test_bare_lf_and_extra_blanks_accepted(void **st)
{
    struct ce_preamble p;
    assert_int_equal(parse("PSOM-EDGE/1   abc  \n", &p), 20);
    assert_true(slice_eq_str(p.key, "abc"));
}

static void test_missing_key_gives_empty_key(void **st)
{
    struct ce_preamble p;
    assert_int_equal(parse("PSOM-EDGE/1\r\n", &p), 13);
    assert_int_equal(p.key.len, 0);
    assert_int_equal(parse("PSOM-EDGE/1 \r\n", &p), 14);
    assert_int_equal(p.key.len, 0);
}

static void test_incomplete_line_needs_more(void **st)
{
    struct ce_preamble p;
    assert_int_equal(parse("", &p), -EAGAIN);
    assert_int_equal(parse("PSOM", &p), -EAGAIN);
    assert_int_equal(parse("PSOM-EDGE/1 v1.abc", &p), -EAGAIN);
    assert_int_equal(parse("PSOM-EDGE/1 v1.abc\r", &p), -EAGAIN);
}

static void test_garbage_refused_before_line_end(void **st)
{
    struct ce_preamble p;
    assert_int_equal(parse("GET / HTTP/1.1", &p), -EBADMSG);
    assert_int_equal(parse("PSOM-EDGE/1 a\x01", &p), -EBADMSG);
    assert_int_equal(parse("psom-edge/1 key\r\n", &p), -EBADMSG);
}

static void test_two_words_or_bad_version_refused(void **st)
{
    struct ce_preamble p;
    assert_int_equal(parse("PSOM-EDGE/1 a b\r\n", &p), -EBADMSG);
    assert_int_equal(parse("PSOM-EDGE/ key\r\n", &p), -EBADMSG);
    assert_int_equal(parse("PSOM-EDGE/1x key\r\n", &p), -EBADMSG);
    assert_int_equal(parse("PSOM-EDGE/\r\n", &p), -EBADMSG);
    assert_int_equal(parse("PSOM-EDGE/12345 k\r\n", &p), -EBADMSG);
}

static void test_other_version_is_unsupported(void **st)
{
    struct ce_preamble p;
    assert_int_equal(parse("PSOM-EDGE/2 key\r\n", &p), -EPROTONOSUPPORT);
    assert_int_equal(p.version, 2);
}

static void test_line_longer_than_max_refused(void **st)
{
    char big[CE_PREAMBLE_MAX + 10];
    memcpy(big, "PSOM-EDGE/1 ", 12);
    memset(big + 12, 'a', sizeof big - 12);
    struct ce_preamble p;
    assert_int_equal(ce_preamble_parse((uint8_t *)big, sizeof big, &p), -EBADMSG);
    /* Exactly at the limit, the terminator included, is fine. */
    big[CE_PREAMBLE_MAX - 2] = '\r';
    big[CE_PREAMBLE_MAX - 1] = '\n';
    assert_int_equal(ce_preamble_parse((uint8_t *)big, sizeof big, &p), CE_PREAMBLE_MAX);
    assert_int_equal(p.key.len, CE_PREAMBLE_MAX - 14);
}

static void test_reply_lines_are_documented_text(void **st)
{
    assert_string_equal(ce_reply_line(CE_REPLY_EXPIRED_KEY), "PSOM-EDGE/1 403 expired-key\r\n");
    assert_string_equal(ce_reply_line(CE_REPLY_ADMITTED), "PSOM-EDGE/1 200 admitted\r\n");
    assert_string_equal(ce_reply_line(CE_REPLY_MISSING_KEY), "PSOM-EDGE/1 401 missing-key\r\n");
    assert_string_equal(ce_reply_reason(CE_REPLY_REVOKED_KEY), "revoked-key");
    assert_string_equal(ce_reply_line(CE_REPLY_KEY_IN_USE), "PSOM-EDGE/1 429 key-in-use\r\n");
    for (int r = 0; r < CE_REPLY_COUNT; r++) {
        const char *l = ce_reply_line(r);
        int code = 0;
        assert_int_equal(ce_reply_parse((const uint8_t *)l, strlen(l), &code), (ssize_t)strlen(l));
        assert_int_equal(code, ce_reply_code(r));
    }
}

static void test_reply_parse_partial_and_garbage(void **st)
{
    int code;
    assert_int_equal(ce_reply_parse((const uint8_t *)"PSOM-EDGE/1 20", 14, &code), -EAGAIN);
    assert_int_equal(ce_reply_parse((const uint8_t *)"HTTP/1.1 200 OK\r\n", 17, &code), -EBADMSG);
    assert_int_equal(ce_reply_parse((const uint8_t *)"PSOM-EDGE/1 2x0 a\r\n", 19, &code), -EBADMSG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_with_crlf_is_parsed),
        cmocka_unit_test(test_bare_lf_and_extra_blanks_accepted),
        cmocka_unit_test(test_missing_key_gives_empty_key),
        cmocka_unit_test(test_incomplete_line_needs_more),
        cmocka_unit_test(test_garbage_refused_before_line_end),
        cmocka_unit_test(test_two_words_or_bad_version_refused),
        cmocka_unit_test(test_other_version_is_unsupported),
        cmocka_unit_test(test_line_longer_than_max_refused),
        cmocka_unit_test(test_reply_lines_are_documented_text),
        cmocka_unit_test(test_reply_parse_partial_and_garbage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
