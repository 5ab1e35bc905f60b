/* director/acme_proto.c: the CA's JSON (as pebble and Let's Encrypt send it) into structs,
 * and refusals of what is not what it should be. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "director/acme_proto.h"

#define P(s) s, strlen(s)

static void directory_with_and_without_ari(void **state)
{
    (void)state;
    struct acme_directory d;
    char err[128];
    const char *peb =
        "{\"keyChange\":\"https://ca/rollover\",\"meta\":{\"externalAccountRequired\":"
        "false,\"termsOfService\":\"data:text/plain,Do%20what%20thou%20wilt\"},"
        "\"newAccount\":\"https://ca/sign-me-up\",\"newNonce\":\"https://ca/nonce-plz\","
        "\"newOrder\":\"https://ca/order-plz\",\"revokeCert\":\"https://ca/revoke\"}";
    assert_int_equal(acme_parse_directory(P(peb), &d, err, sizeof err), 0);
    assert_string_equal(d.new_nonce, "https://ca/nonce-plz");
    assert_string_equal(d.new_account, "https://ca/sign-me-up");
    assert_string_equal(d.new_order, "https://ca/order-plz");
    assert_string_equal(d.renewal_info, "");
    assert_string_equal(d.terms_of_service, "data:text/plain,Do%20what%20thou%20wilt");
    const char *le = "{\"newNonce\":\"n\",\"newAccount\":\"a\",\"newOrder\":\"o\","
                     "\"renewalInfo\":\"https://ca/ari\"}";
    assert_int_equal(acme_parse_directory(P(le), &d, err, sizeof err), 0);
    assert_string_equal(d.renewal_info, "https://ca/ari");
    assert_int_equal(
        acme_parse_directory(P("{\"newNonce\":\"n\",\"newAccount\":\"a\"}"), &d, err, sizeof err),
        -EBADMSG);
    assert_string_equal(err, "missing \"newOrder\"");
    assert_int_equal(
        acme_parse_directory(P("{\"newNonce\":1,\"newAccount\":\"a\",\"newOrder\":\"o\"}"), &d, err,
                             sizeof err),
        -EBADMSG);
    assert_int_equal(acme_parse_directory(P("[]"), &d, err, sizeof err), -EBADMSG);
    assert_int_equal(
        acme_parse_directory(P("{\"newNonce\":\"a\",\"newNonce\":\"b\"}"), &d, err, sizeof err),
        -EBADMSG); /* duplicate members */
    char big[2000];
    snprintf(big, sizeof big, "{\"newNonce\":\"%0600d\",\"newAccount\":\"a\",\"newOrder\":\"o\"}",
             0);
    assert_int_equal(acme_parse_directory(P(big), &d, err, sizeof err), -EBADMSG);
    assert_string_equal(err, "\"newNonce\" is too long");
}

static void order_pending_then_valid(void **state)
{
    (void)state;
    struct acme_order o;
    char err[128];
    const char *pend =
        "{\"status\":\"pending\",\"expires\":\"2026-12-08T13:40:42Z\",\"identifiers\":[{\"type\":"
        "\"dns\",\"value\":\"sip.lab.test\"}],\"finalize\":\"https://ca/finalize/1\","
        "\"authorizations\":[\"https://ca/authz/a\"]}";
    assert_int_equal(acme_parse_order(P(pend), &o, err, sizeof err), 0);
    assert_int_equal(o.status, ACME_ST_PENDING);
    assert_int_equal(o.n_names, 1);
    assert_string_equal(o.names[0], "sip.lab.test");
    assert_int_equal(o.n_authz, 1);
    assert_string_equal(o.authz[0], "https://ca/authz/a");
    assert_string_equal(o.finalize, "https://ca/finalize/1");
    assert_string_equal(o.certificate, "");
    assert_false(o.has_error);
    const char *valid = "{\"status\":\"valid\",\"identifiers\":[],\"finalize\":\"f\","
                        "\"authorizations\":[],\"certificate\":\"https://ca/cert/9\"}";
    assert_int_equal(acme_parse_order(P(valid), &o, err, sizeof err), 0);
    assert_int_equal(o.status, ACME_ST_VALID);
    assert_string_equal(o.certificate, "https://ca/cert/9");
    const char *inval = "{\"status\":\"invalid\",\"identifiers\":[],\"finalize\":\"f\","
                        "\"authorizations\":[],\"error\":{\"type\":\"urn:ietf:params:acme:error:"
                        "unauthorized\",\"detail\":\"no\",\"status\":403}}";
    assert_int_equal(acme_parse_order(P(inval), &o, err, sizeof err), 0);
    assert_true(o.has_error);
    assert_int_equal(o.error.status, 403);
    assert_string_equal(o.error.detail, "no");
    assert_int_equal(
        acme_parse_order(P("{\"status\":\"weird\",\"identifiers\":[],\"finalize\":\"f\","
                           "\"authorizations\":[]}"),
                         &o, err, sizeof err),
        -EBADMSG);
    /* More authorizations than the limit. */
    char many[4096] =
        "{\"status\":\"pending\",\"identifiers\":[],\"finalize\":\"f\",\"authorizations\":[";
    for (int i = 0; i < ACME_AUTHZ_MAX + 1; i++)
        strcat(many, i ? ",\"u\"" : "\"u\"");
    strcat(many, "]}");
    assert_int_equal(acme_parse_order(P(many), &o, err, sizeof err), -EBADMSG);
    assert_int_equal(acme_parse_order(P("{\"status\":\"pending\",\"identifiers\":[1],\"finalize\":"
                                        "\"f\",\"authorizations\":[]}"),
                                      &o, err, sizeof err),
                     -EBADMSG);
}

static void authz_and_its_challenges(void **state)
{
    (void)state;
    struct acme_authz a;
    char err[128];
    const char *j =
        "{\"status\":\"pending\",\"identifier\":{\"type\":\"dns\",\"value\":\"web.lab.test\"},"
        "\"challenges\":[{\"type\":\"dns-01\",\"url\":\"https://ca/c/1\",\"token\":\"t1\","
        "\"status\":\"pending\"},{\"type\":\"http-01\",\"url\":\"https://ca/c/2\",\"token\":"
        "\"t2\",\"status\":\"pending\"},{\"type\":\"tls-alpn-01\",\"url\":\"https://ca/c/3\","
        "\"token\":\"t3\",\"status\":\"invalid\",\"error\":{\"type\":\"urn:ietf:params:acme:"
        "error:connection\",\"detail\":\"refused\"}}],\"expires\":\"2026-12-08T00:00:00Z\"}";
    assert_int_equal(acme_parse_authz(P(j), &a, err, sizeof err), 0);
    assert_int_equal(a.status, ACME_ST_PENDING);
    assert_string_equal(a.name, "web.lab.test");
    assert_int_equal(a.n_challenges, 3);
    const struct acme_challenge *c = acme_authz_challenge(&a, "http-01");
    assert_non_null(c);
    assert_string_equal(c->token, "t2");
    assert_string_equal(c->url, "https://ca/c/2");
    c = acme_authz_challenge(&a, "tls-alpn-01");
    assert_non_null(c);
    assert_int_equal(c->status, ACME_ST_INVALID);
    assert_true(c->has_error);
    assert_string_equal(c->error.detail, "refused");
    assert_null(acme_authz_challenge(&a, "tkauth-01"));
    assert_int_equal(
        acme_parse_authz(P("{\"status\":\"valid\",\"challenges\":[]}"), &a, err, sizeof err),
        -EBADMSG);
    struct acme_challenge ch;
    assert_int_equal(acme_parse_challenge(P("{\"type\":\"http-01\",\"url\":\"u\",\"status\":"
                                            "\"processing\",\"token\":\"t\"}"),
                                          &ch, err, sizeof err),
                     0);
    assert_int_equal(ch.status, ACME_ST_PROCESSING);
}

static void problems_accounts_and_times(void **state)
{
    (void)state;
    struct acme_problem p;
    char err[128];
    assert_int_equal(acme_parse_problem(P("{\"type\":\"urn:ietf:params:acme:error:badNonce\","
                                          "\"detail\":\"JWS has an invalid anti-replay nonce\","
                                          "\"status\":400}"),
                                        &p, err, sizeof err),
                     0);
    assert_string_equal(p.type, "urn:ietf:params:acme:error:badNonce");
    assert_int_equal(p.status, 400);
    assert_int_equal(acme_parse_problem(P("not json"), &p, err, sizeof err), -EBADMSG);
    struct acme_account acct;
    assert_int_equal(
        acme_parse_account(P("{\"status\":\"valid\",\"orders\":\"x\"}"), &acct, err, sizeof err),
        0);
    assert_int_equal(acct.status, ACME_ST_VALID);
    int64_t t;
    assert_int_equal(acme_parse_time("2026-12-07T13:40:42Z", &t), 0);
    assert_int_equal(t, 1796650842);
    assert_int_equal(acme_parse_time("2026-12-07T13:40:42.123456789Z", &t), 0);
    assert_int_equal(t, 1796650842);
    assert_int_equal(acme_parse_time("2026-12-07T14:40:42+01:00", &t), 0);
    assert_int_equal(t, 1796650842);
    assert_int_equal(acme_parse_time("2026-12-07 13:40:42", &t), -EINVAL);
    assert_int_equal(acme_parse_time("2026-13-07T13:40:42Z", &t), -EINVAL);
    struct acme_renewal_info ri;
    assert_int_equal(acme_parse_renewal_info(P("{\"suggestedWindow\":{\"start\":\"2026-12-07T13:40:"
                                               "42Z\",\"end\":\"2026-12-08T13:40:42Z\"}}"),
                                             &ri, err, sizeof err),
                     0);
    assert_int_equal(ri.start, 1796650842);
    assert_int_equal(ri.end, 1796650842 + 86400);
    assert_int_equal(acme_parse_renewal_info(P("{\"suggestedWindow\":{\"start\":\"2026-12-08T13:40:"
                                               "42Z\",\"end\":\"2026-12-07T13:40:42Z\"}}"),
                                             &ri, err, sizeof err),
                     -EBADMSG);
    int64_t s;
    assert_int_equal(acme_parse_retry_after("3", 0, &s), 0);
    assert_int_equal(s, 3);
    assert_int_equal(acme_parse_retry_after("Mon, 07 Dec 2026 13:40:52 GMT", 1796650842, &s), 0);
    assert_int_equal(s, 10);
    assert_int_equal(acme_parse_retry_after("soon", 0, &s), -EINVAL);
    assert_int_equal(acme_parse_retry_after("-1", 0, &s), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(directory_with_and_without_ari),
        cmocka_unit_test(order_pending_then_valid),
        cmocka_unit_test(authz_and_its_challenges),
        cmocka_unit_test(problems_accounts_and_times),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
