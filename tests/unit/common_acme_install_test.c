/* Unit tests for common/acme_install.c: the names an edge accepts in a CsrRequest, whether
 * an issued certificate answers the request, the CertStatus it reports, and the atomic file
 * replacement the install relies on. */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/acme_install.h"

static void dns_names(void **state)
{
    (void)state;
    assert_true(acme_dns_name_ok("web.lab.test"));
    assert_true(acme_dns_name_ok("*.lab.test"));
    assert_true(acme_dns_name_ok("a-1.B2.example"));
    assert_false(acme_dns_name_ok(""));
    assert_false(acme_dns_name_ok("localhost"));     /* one label */
    assert_false(acme_dns_name_ok("web.lab.test.")); /* trailing dot */
    assert_false(acme_dns_name_ok(".lab.test"));
    assert_false(acme_dns_name_ok("a..test"));
    assert_false(acme_dns_name_ok("-a.test"));
    assert_false(acme_dns_name_ok("a-.test"));
    assert_false(acme_dns_name_ok("a_b.test"));
    assert_false(acme_dns_name_ok("a.*.test"));
    assert_false(acme_dns_name_ok("**.test"));
    assert_false(acme_dns_name_ok("127.0.0.1:80"));
    assert_false(acme_dns_name_ok("a b.test"));
    char label[80];
    memset(label, 'a', 64);
    strcpy(label + 64, ".test");
    assert_false(acme_dns_name_ok(label));    /* a 64-byte label */
    assert_true(acme_dns_name_ok(label + 1)); /* a 63-byte label */
    char longname[300];
    for (int i = 0; i < 127; i++)
        memcpy(longname + 2 * i, "a.", 2);
    strcpy(longname + 254, "t");
    assert_false(acme_dns_name_ok(longname)); /* 255 bytes */
}

static void names_of_a_request(void **state)
{
    (void)state;
    char names[CTL_DNSNAMES_MAX + 1][CTL_DNSNAME_MAX];
    memset(names, 0, sizeof names);
    char err[128];
    assert_int_equal(acme_names_check(names, 0, err, sizeof err), -EINVAL);
    assert_string_equal(err, "0 names requested (1 to 16)");
    strcpy(names[0], "web.lab.test");
    strcpy(names[1], "www.lab.test");
    assert_int_equal(acme_names_check(names, 2, err, sizeof err), 0);
    strcpy(names[2], "WEB.lab.test");
    assert_int_equal(acme_names_check(names, 3, err, sizeof err), -EINVAL);
    assert_string_equal(err, "name WEB.lab.test requested twice");
    strcpy(names[2], "bad name");
    assert_int_equal(acme_names_check(names, 3, err, sizeof err), -EINVAL);
    assert_string_equal(err, "name 3 is not a DNS name");
    for (int i = 0; i <= CTL_DNSNAMES_MAX; i++)
        snprintf(names[i], CTL_DNSNAME_MAX, "n%d.lab.test", i);
    assert_int_equal(acme_names_check(names, CTL_DNSNAMES_MAX, err, sizeof err), 0);
    assert_int_equal(acme_names_check(names, CTL_DNSNAMES_MAX + 1, err, sizeof err), -EINVAL);
    memset(names[0], 'a', CTL_DNSNAME_MAX); /* unterminated */
    assert_int_equal(acme_names_check(names, 1, err, sizeof err), -EINVAL);
}

static struct pki_cert_info issued(void)
{
    struct pki_cert_info i;
    memset(&i, 0, sizeof i);
    strcpy(i.base.subject, "CN=web.lab.test");
    strcpy(i.base.serial, "0a:0b");
    i.not_before = 1000000;
    i.base.not_after = 2000000;
    strcpy(i.names[0], "web.lab.test");
    strcpy(i.names[1], "www.lab.test");
    i.n_names = 2;
    return i;
}

static void an_issued_certificate_must_answer_the_request(void **state)
{
    (void)state;
    char names[2][CTL_DNSNAME_MAX] = {"www.lab.test", "WEB.lab.test"};
    struct pki_cert_info i = issued();
    char err[128];
    assert_int_equal(acme_issued_check(&i, names, 2, 1500000, err, sizeof err), 0);
    /* an hour of clock skew before notBefore is fine, more is not */
    assert_int_equal(acme_issued_check(&i, names, 2, 1000000 - 3600, err, sizeof err), 0);
    assert_int_equal(acme_issued_check(&i, names, 2, 1000000 - 3601, err, sizeof err), -EINVAL);
    assert_string_equal(err, "the certificate is not valid yet");
    assert_int_equal(acme_issued_check(&i, names, 2, 2000000, err, sizeof err), -EINVAL);
    assert_string_equal(err, "the certificate has expired");
    i.n_names = 1; /* www missing */
    assert_int_equal(acme_issued_check(&i, names, 2, 1500000, err, sizeof err), -EINVAL);
    assert_string_equal(err, "the certificate does not name www.lab.test");
    i = issued();
    i.self_signed = true;
    assert_int_equal(acme_issued_check(&i, names, 2, 1500000, err, sizeof err), -EINVAL);
    assert_string_equal(err, "the certificate is self-signed");
    /* a name that was not asked for: not this request's certificate */
    i = issued();
    strcpy(i.names[2], "evil.example");
    i.n_names = 3;
    assert_int_equal(acme_issued_check(&i, names, 2, 1500000, err, sizeof err), -EINVAL);
    assert_string_equal(err, "the certificate names evil.example, which was not requested");
}

static void status_from_a_certificate(void **state)
{
    (void)state;
    struct pki_cert_info i = issued();
    strcpy(i.names[1], "bad\nname"); /* cannot travel: left out */
    strcpy(i.names[2], "www.lab.test");
    i.n_names = 3;
    struct ctl_cert_status st;
    memset(&st, 0x55, sizeof st);
    acme_status_fill(&i, &st);
    assert_int_equal(st.n_names, 2);
    assert_string_equal(st.names[0], "web.lab.test");
    assert_string_equal(st.names[1], "www.lab.test");
    assert_int_equal(st.not_before, 1000000);
    assert_int_equal(st.not_after, 2000000);
    assert_string_equal(st.serial, "0a:0b");
    assert_false(st.self_signed);
    assert_string_equal(st.error, "");
    /* and it encodes */
    struct ctl_msg m = {.type = CTL_MSG_CERT_STATUS, .u.cert_status = st};
    uint8_t frame[8192];
    assert_true(ctl_frame_encode(&m, frame, sizeof frame) > 0);
}

static size_t entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static void files_are_replaced_whole(void **state)
{
    (void)state;
    char dir[] = "/tmp/acme-install-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], err[256], buf[64];
    snprintf(path, sizeof path, "%s/edge.key", dir);
    assert_int_equal(acme_write_file(path, "first", 5, 0600, err, sizeof err), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_size, 5);
    /* a reader holding the old file keeps reading the old content */
    FILE *old = fopen(path, "r");
    assert_non_null(old);
    assert_int_equal(acme_write_file(path, "second!", 7, 0644, err, sizeof err), 0);
    assert_int_equal(fread(buf, 1, sizeof buf, old), 5);
    assert_memory_equal(buf, "first", 5);
    fclose(old);
    FILE *f = fopen(path, "r");
    assert_int_equal(fread(buf, 1, sizeof buf, f), 7);
    assert_memory_equal(buf, "second!", 7);
    fclose(f);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(entries(dir), 1); /* no temporary file left */
    /* a directory that does not exist: an error, nothing written */
    char missing[160];
    snprintf(missing, sizeof missing, "%s/nope/edge.crt", dir);
    assert_int_equal(acme_write_file(missing, "x", 1, 0644, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "cannot create a file next to"));
    /* a target that cannot be replaced (a directory): the temporary file is removed */
    char sub[160];
    snprintf(sub, sizeof sub, "%s/adir", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    assert_true(acme_write_file(sub, "x", 1, 0644, err, sizeof err) < 0);
    assert_non_null(strstr(err, "(rename)"));
    assert_int_equal(entries(dir), 2);
    rmdir(sub);
    unlink(path);
    rmdir(dir);
}

/* acme_chain_shape: CERTIFICATE blocks and whitespace only (RFC 8555 9.1), 1..ACME_CHAIN_MAX. */
static void chain_shape(void **state)
{
    (void)state;
    char err[128], big[4096] = "";
    const char *c = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n";
    char two[256];
    snprintf(two, sizeof two, "%s\r\n%s", c, c);
    assert_int_equal(acme_chain_shape(c, err, sizeof err), 1);
    assert_int_equal(acme_chain_shape(two, err, sizeof err), 2);
    for (int i = 0; i < ACME_CHAIN_MAX; i++)
        strcat(big, c);
    assert_int_equal(acme_chain_shape(big, err, sizeof err), ACME_CHAIN_MAX);
    strcat(big, c);
    assert_int_equal(acme_chain_shape(big, err, sizeof err), -EINVAL);
    assert_string_equal(err, "the chain has more than 5 certificates");
    struct {
        const char *pem, *err;
    } bad[] = {
        {"", "the chain has no certificate"},
        {" \n\t", "the chain has no certificate"},
        {"junk\n-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n",
         "the chain has text outside its CERTIFICATE blocks"},
        {"-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\njunk",
         "the chain has text outside its CERTIFICATE blocks"},
        {"-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n"
         "-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----\n",
         "the chain has another PEM block outside its CERTIFICATE blocks"},
        {"-----BEGIN CERTIFICATE-----\nQUJD\n",
         "the chain has a certificate block without its end line"},
        {"-----BEGIN CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nQUJD\n-----END "
         "CERTIFICATE-----\n",
         "the chain has a certificate block that is not base64"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(acme_chain_shape(bad[i].pem, err, sizeof err), -EINVAL);
        assert_string_equal(err, bad[i].err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dns_names),
        cmocka_unit_test(names_of_a_request),
        cmocka_unit_test(an_issued_certificate_must_answer_the_request),
        cmocka_unit_test(status_from_a_certificate),
        cmocka_unit_test(files_are_replaced_whole),
        cmocka_unit_test(chain_shape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
