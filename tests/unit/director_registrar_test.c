/* Digest responses against the RFC 7616 §3.9.1 examples (MD5 and SHA-256, qop=auth). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "director/registrar.h"

static const char *nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
static const char *cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

static void rfc7616_md5(void **st)
{
    char out[65];
    assert_int_equal(registrar_digest("MD5", "Mufasa", "http-auth@example.org", "Circle of Life",
                                      "GET", "/dir/index.html", nonce, "00000001", cnonce, "auth",
                                      out),
                     0);
    assert_string_equal(out, "8ca523f5e9506fed4657c9700eebdbec");
}

static void rfc7616_sha256(void **st)
{
    char out[65];
    assert_int_equal(registrar_digest("SHA-256", "Mufasa", "http-auth@example.org",
                                      "Circle of Life", "GET", "/dir/index.html", nonce,
                                      "00000001", cnonce, "auth", out),
                     0);
    assert_string_equal(out, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1");
}

static void unknown_algorithm_refused(void **st)
{
    char out[65];
    assert_int_equal(registrar_digest("SHA-512-256", "u", "r", "p", "REGISTER", "sip:x", "n",
                                      NULL, NULL, NULL, out),
                     -22);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc7616_md5),
        cmocka_unit_test(rfc7616_sha256),
        cmocka_unit_test(unknown_algorithm_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
