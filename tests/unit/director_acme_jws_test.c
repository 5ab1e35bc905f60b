/* director/acme_jws.c: the JWK's canonical form and thumbprint (RFC 7638), key
 * authorizations, protected headers, and flattened JWS whose signature the openssl CLI
 * verifies (the test signs with the openssl CLI as a stand-in for pki_es256_sign). */
#include <errno.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/crypto.h"
#include "director/acme_jws.h"

/* RFC 7515 Appendix A.3's P-256 key. */
static const uint8_t X[32] = {0x7f, 0xcd, 0xce, 0x27, 0x70, 0xf6, 0xc4, 0x5d, 0x41, 0x83, 0xcb,
                              0xee, 0x6f, 0xdb, 0x4b, 0x7b, 0x58, 0x07, 0x33, 0x35, 0x7b, 0xe9,
                              0xef, 0x13, 0xba, 0xcf, 0x6e, 0x3c, 0x7b, 0xd1, 0x54, 0x45};
static const uint8_t Y[32] = {0xc7, 0xf1, 0x44, 0xcd, 0x1b, 0xbd, 0x9b, 0x7e, 0x87, 0x2c, 0xdf,
                              0xed, 0xb9, 0xee, 0xb9, 0xf4, 0xb3, 0x69, 0x5d, 0x6e, 0xa9, 0x0b,
                              0x24, 0xad, 0x8a, 0x46, 0x23, 0x28, 0x85, 0x88, 0xe5, 0xad};

static void jwk_is_canonical_and_thumbprint_matches(void **state)
{
    (void)state;
    char jwk[ACME_JWK_MAX], th[ACME_THUMB_LEN + 1];
    assert_int_equal(acme_jwk(X, Y, jwk, sizeof jwk), 0);
    /* RFC 7638 §3.2: required members only, lexicographic order, no whitespace. */
    assert_string_equal(jwk, "{\"crv\":\"P-256\",\"kty\":\"EC\","
                             "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                             "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}");
    assert_int_equal(acme_jwk_thumbprint(jwk, th), 0);
    /* base64url(SHA-256(jwk)), computed independently (Python hashlib). */
    assert_string_equal(th, "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U");
    char small[40];
    assert_int_equal(acme_jwk(X, Y, small, sizeof small), -ENOSPC);
}

static void key_authorization_is_token_dot_thumbprint(void **state)
{
    (void)state;
    char ka[256];
    assert_int_equal(acme_key_authorization(
                         "tok-EN_1", "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U", ka, sizeof ka),
                     0);
    assert_string_equal(ka, "tok-EN_1.oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U");
    /* Tokens outside the base64url alphabet (a path, a dot) are refused. */
    assert_int_equal(acme_key_authorization("../x", "abc", ka, sizeof ka), -EINVAL);
    assert_int_equal(acme_key_authorization("a.b", "abc", ka, sizeof ka), -EINVAL);
    assert_int_equal(acme_key_authorization("", "abc", ka, sizeof ka), -EINVAL);
    assert_int_equal(acme_key_authorization("abc", "abc", ka, 4), -ENOSPC);
}

static void protected_header_has_jwk_or_kid(void **state)
{
    (void)state;
    char jwk[ACME_JWK_MAX];
    acme_jwk(X, Y, jwk, sizeof jwk);
    char *p = acme_jws_protected(jwk, NULL, "n\"1", "https://ca/new-acct");
    assert_non_null(p);
    assert_string_equal(p, "{\"alg\":\"ES256\",\"jwk\":{\"crv\":\"P-256\",\"kty\":\"EC\","
                           "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                           "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"},"
                           "\"nonce\":\"n\\\"1\",\"url\":\"https://ca/new-acct\"}");
    free(p);
    p = acme_jws_protected(NULL, "https://ca/acct/1", "abc", "https://ca/order");
    assert_non_null(p);
    assert_string_equal(p, "{\"alg\":\"ES256\",\"kid\":\"https://ca/acct/1\",\"nonce\":\"abc\","
                           "\"url\":\"https://ca/order\"}");
    free(p);
    assert_null(acme_jws_protected(jwk, "k", "n", "u"));   /* both */
    assert_null(acme_jws_protected(NULL, NULL, "n", "u")); /* neither */
    assert_null(acme_jws_protected("not json", NULL, "n", "u"));
}

/* ---- signing with the openssl CLI, verifying with it ---- */

static char dir[64];

static int sh(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

static int write_file(const char *name, const void *p, size_t n)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(p, 1, n, f);
    fclose(f);
    return w == n ? 0 : -1;
}

static size_t read_file(const char *name, uint8_t *p, size_t cap)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t n = fread(p, 1, cap, f);
    fclose(f);
    return n;
}

/* DER INTEGER at p: its value as 32 big-endian bytes. */
static const uint8_t *der_int(const uint8_t *p, uint8_t out[32])
{
    assert_int_equal(p[0], 0x02);
    size_t n = p[1];
    const uint8_t *v = p + 2;
    while (n > 32) {
        v++;
        n--;
    }
    memset(out, 0, 32);
    memcpy(out + 32 - n, v, n);
    return p + 2 + p[1];
}

static int cli_sign(const void *data, size_t len, uint8_t sig[64], void *arg)
{
    (void)arg;
    if (write_file("input", data, len))
        return -EIO;
    if (sh("openssl dgst -sha256 -sign %s/key.pem -out %s/sig.der %s/input", dir, dir, dir))
        return -EIO;
    uint8_t der[80];
    size_t n = read_file("sig.der", der, sizeof der);
    assert_true(n > 8 && der[0] == 0x30);
    der_int(der_int(der + 2, sig), sig + 32);
    return 0;
}

/* r || s as a DER ECDSA-Sig-Value. */
static size_t der_sig(const uint8_t sig[64], uint8_t *out)
{
    size_t o = 2;
    for (int i = 0; i < 2; i++) {
        const uint8_t *v = sig + 32 * i;
        size_t n = 32;
        while (n > 1 && *v == 0) {
            v++;
            n--;
        }
        bool pad = *v & 0x80;
        out[o++] = 0x02;
        out[o++] = (uint8_t)(n + pad);
        if (pad)
            out[o++] = 0;
        memcpy(out + o, v, n);
        o += n;
    }
    out[0] = 0x30;
    out[1] = (uint8_t)(o - 2);
    return o;
}

static void flattened_jws_verifies_with_openssl(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/acme-jws-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(
        sh("openssl ecparam -name prime256v1 -genkey -noout -out %s/key.pem && "
           "openssl ec -in %s/key.pem -pubout -out %s/pub.pem 2>/dev/null && "
           "openssl ec -in %s/key.pem -pubout -outform DER -out %s/pub.der 2>/dev/null",
           dir, dir, dir, dir, dir),
        0);
    uint8_t pub[128];
    size_t pn = read_file("pub.der", pub, sizeof pub);
    assert_true(pn > 65 && pub[pn - 65] == 0x04); /* uncompressed point at the end */
    char jwk[ACME_JWK_MAX];
    assert_int_equal(acme_jwk(pub + pn - 64, pub + pn - 32, jwk, sizeof jwk), 0);
    char *prot = acme_jws_protected(jwk, NULL, "nonce-1", "https://ca/new-acct");
    assert_non_null(prot);
    const char *payloads[] = {"{\"termsOfServiceAgreed\":true}", ""};
    for (size_t k = 0; k < 2; k++) {
        char *jws = NULL;
        assert_int_equal(acme_jws_flattened(prot, payloads[k], cli_sign, NULL, &jws), 0);
        json_t *j = json_loads(jws, 0, NULL);
        assert_non_null(j);
        const char *p = json_string_value(json_object_get(j, "protected"));
        const char *b = json_string_value(json_object_get(j, "payload"));
        const char *s = json_string_value(json_object_get(j, "signature"));
        assert_non_null(p);
        assert_non_null(b);
        assert_non_null(s);
        /* The parts decode to what went in. */
        uint8_t buf[1024];
        ssize_t n = base64url_decode(p, strlen(p), buf, sizeof buf);
        assert_int_equal(n, (ssize_t)strlen(prot));
        assert_memory_equal(buf, prot, (size_t)n);
        n = base64url_decode(b, strlen(b), buf, sizeof buf);
        assert_int_equal(n, (ssize_t)strlen(payloads[k]));
        if (k == 1)
            assert_string_equal(b, ""); /* POST-as-GET: empty payload */
        uint8_t sig[64], der[80];
        assert_int_equal(base64url_decode(s, strlen(s), sig, sizeof sig), 64);
        /* openssl verifies the signature over base64url(protected) "." base64url(payload)
         * with the public key the JWK describes. */
        char input[2048];
        snprintf(input, sizeof input, "%s.%s", p, b);
        assert_int_equal(write_file("input2", input, strlen(input)), 0);
        assert_int_equal(write_file("sig2.der", der, der_sig(sig, der)), 0);
        assert_int_equal(sh("openssl dgst -sha256 -verify %s/pub.pem -signature %s/sig2.der "
                            "%s/input2 >/dev/null",
                            dir, dir, dir),
                         0);
        /* ... and not over anything else. */
        input[0] ^= 1;
        assert_int_equal(write_file("input2", input, strlen(input)), 0);
        assert_int_not_equal(sh("openssl dgst -sha256 -verify %s/pub.pem -signature %s/sig2.der "
                                "%s/input2 >/dev/null",
                                dir, dir, dir),
                             0);
        json_decref(j);
        free(jws);
    }
    free(prot);
    sh("rm -rf %s", dir);
}

static int failing_sign(const void *data, size_t len, uint8_t sig[64], void *arg)
{
    return -EKEYREJECTED;
}

static void a_signing_failure_is_returned(void **state)
{
    (void)state;
    char *jws = (char *)1;
    assert_int_equal(acme_jws_flattened("{}", "", failing_sign, NULL, &jws), -EKEYREJECTED);
    assert_null(jws);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(jwk_is_canonical_and_thumbprint_matches),
        cmocka_unit_test(key_authorization_is_token_dot_thumbprint),
        cmocka_unit_test(protected_header_has_jwk_or_kid),
        cmocka_unit_test(flattened_jws_verifies_with_openssl),
        cmocka_unit_test(a_signing_failure_is_returned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
