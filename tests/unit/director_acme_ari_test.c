/* director/acme_ari.c: RFC 9773's certID example, serial forms, and the
 * AuthorityKeyIdentifier read from certificates the openssl CLI makes (and compares). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "director/acme_ari.h"

static const uint8_t RFC_AKI[] = {0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3,
                                  0x7B, 0x84, 0x7B, 0xA0, 0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4};

static void cert_id_follows_the_rfc(void **state)
{
    (void)state;
    char id[ACME_CERT_ID_MAX];
    /* RFC 9773 §4.1: serial 0x0087654321 (a DER INTEGER needs the zero before 0x87). */
    assert_int_equal(acme_ari_cert_id(RFC_AKI, sizeof RFC_AKI, "00:87:65:43:21", id, sizeof id), 0);
    assert_string_equal(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
    /* The serial as printed without the sign byte (openssl x509 -serial, tls_cert_info). */
    assert_int_equal(acme_ari_cert_id(RFC_AKI, sizeof RFC_AKI, "87654321", id, sizeof id), 0);
    assert_string_equal(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
    /* A redundant leading zero goes. */
    assert_int_equal(acme_ari_cert_id(RFC_AKI, sizeof RFC_AKI, "00:00:12", id, sizeof id), 0);
    assert_string_equal(strchr(id, '.'), ".Eg");
    assert_int_equal(acme_ari_cert_id(RFC_AKI, sizeof RFC_AKI, "8", id, sizeof id), -EINVAL);
    assert_int_equal(acme_ari_cert_id(RFC_AKI, sizeof RFC_AKI, "zz", id, sizeof id), -EINVAL);
    assert_int_equal(acme_ari_cert_id(RFC_AKI, sizeof RFC_AKI, "", id, sizeof id), -EINVAL);
    assert_int_equal(acme_ari_cert_id(RFC_AKI, 0, "12", id, sizeof id), -EINVAL);
    assert_int_equal(acme_ari_cert_id(RFC_AKI, sizeof RFC_AKI, "12", id, 10), -ENOSPC);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *b = calloc(1, 65536);
    size_t n = fread(b, 1, 65535, f);
    fclose(f);
    b[n] = '\0';
    return b;
}

static void aki_matches_openssl(void **state)
{
    (void)state;
    char dir[] = "/tmp/acme-ari-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[2048];
    /* A CA and a leaf it signs (with AKI), and a leaf without any extension. */
    snprintf(
        cmd, sizeof cmd,
        "cd %s && openssl ecparam -name prime256v1 -genkey -noout -out ca.key && "
        "openssl req -x509 -key ca.key -subj /CN=ca -days 2 -out ca.pem && "
        "openssl ecparam -name prime256v1 -genkey -noout -out l.key && "
        "openssl req -new -key l.key -subj /CN=leaf -out l.csr && "
        "printf 'subjectAltName=DNS:a.lab.test\\nauthorityKeyIdentifier=keyid\\n' > ext && "
        "openssl x509 -req -in l.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
        "-extfile ext -out leaf.pem 2>/dev/null && cat leaf.pem ca.pem > chain.pem && "
        "openssl x509 -in leaf.pem -noout -ext authorityKeyIdentifier | tail -1 | tr -d ' :\\n' "
        "> aki.txt && openssl x509 -req -in l.csr -signkey l.key -out bare.pem 2>/dev/null",
        dir);
    assert_int_equal(system(cmd), 0);
    char path[128];
    snprintf(path, sizeof path, "%s/chain.pem", dir);
    char *chain = slurp(path);
    snprintf(path, sizeof path, "%s/aki.txt", dir);
    char *want = slurp(path);
    assert_non_null(chain);
    assert_non_null(want);
    uint8_t aki[ACME_AKI_MAX];
    size_t n = 0;
    assert_int_equal(acme_cert_aki(chain, aki, &n), 0);
    char hex[ACME_AKI_MAX * 2 + 1];
    for (size_t i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02X", aki[i]);
    assert_string_equal(hex, want);
    snprintf(path, sizeof path, "%s/bare.pem", dir);
    char *bare = slurp(path);
    assert_int_equal(acme_cert_aki(bare, aki, &n), -ENOENT);
    assert_int_equal(acme_cert_aki("no certificate here", aki, &n), -EBADMSG);
    assert_int_equal(
        acme_cert_aki("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", aki, &n),
        -EBADMSG);
    /* Truncated DER: refused, never read past. */
    const uint8_t cut[] = {0x30, 0x82, 0x01, 0x00, 0x30, 0x05};
    assert_int_equal(acme_cert_aki_der(cut, sizeof cut, aki, &n), -EBADMSG);
    free(chain);
    free(want);
    free(bare);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cert_id_follows_the_rfc),
        cmocka_unit_test(aki_matches_openssl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
