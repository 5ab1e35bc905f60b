/* pki (common/pki.h) on the TLS backend built in, checked from outside with the openssl
 * CLI: keys, CSRs, TLS-ALPN-01 challenge certificates, ES256 signatures, placeholders and
 * pki_chain_inspect on a chain a CA made from our CSR. */
#include <ctype.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include <cmocka.h>

#include "common/pki.h"

static char dir[64];

static int dir_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/pki_test.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int dir_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* dir/name, written with len bytes of data (strlen when len is 0). */
static const char *put(const char *name, const void *data, size_t len)
{
    static char path[8][128];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, 128, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    if (!len)
        len = strlen(data);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    return p;
}

/* Runs a shell command in dir (stderr too) into out; returns its exit status. */
static int run(char *out, size_t cap, const char *fmt, ...)
{
    char cmd[2048];
    int o = snprintf(cmd, sizeof cmd, "cd %s && (", dir);
    va_list ap;
    va_start(ap, fmt);
    o += vsnprintf(cmd + o, sizeof cmd - (size_t)o, fmt, ap);
    va_end(ap);
    snprintf(cmd + o, sizeof cmd - (size_t)o, ") 2>&1");
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static char *new_key(void)
{
    char err[256] = "", *k = NULL;
    assert_int_equal(pki_key_generate(&k, err, sizeof err), 0);
    assert_non_null(k);
    return k;
}

/* The public key of a PEM file (key or certificate, openssl CLI), as PEM into out. */
static void pubkey_of(const char *cmd, char *out, size_t cap)
{
    assert_int_equal(run(out, cap, "%s", cmd), 0);
    assert_non_null(strstr(out, "BEGIN PUBLIC KEY"));
}

static void key_is_p256(void **st)
{
    (void)st;
    char *a = new_key(), *b = new_key(), out[4096];
    assert_string_not_equal(a, b);
    put("k.pem", a, 0);
    assert_int_equal(run(out, sizeof out, "openssl pkey -in k.pem -noout -text"), 0);
    assert_non_null(strstr(out, "NIST CURVE: P-256"));
    assert_non_null(strstr(out, "Private-Key: (256 bit"));
    free(a);
    free(b);
}

static void csr_verifies_and_names_every_san(void **st)
{
    (void)st;
    char err[256] = "", out[8192], want[4096];
    char *key = new_key();
    const char *names[] = {"a.lab.test", "b.lab.test", "*.c.lab.test"};
    uint8_t *der = NULL;
    size_t len = 0;
    assert_int_equal(pki_csr_create(key, names, 3, &der, &len, err, sizeof err), 0);
    assert_true(len > 100 && der[0] == 0x30);
    put("csr.der", der, len);
    put("k.pem", key, 0);
    assert_int_equal(
        run(out, sizeof out, "openssl req -inform DER -in csr.der -verify -noout -text"), 0);
    assert_non_null(strstr(out, "verify OK"));
    assert_non_null(strstr(out, "Subject: CN = a.lab.test\n"));
    assert_non_null(strstr(out, "DNS:a.lab.test, DNS:b.lab.test, DNS:*.c.lab.test\n"));
    assert_int_equal(count(out, "DNS:"), 3);
    /* signed by (and carrying) our key */
    pubkey_of("openssl req -inform DER -in csr.der -noout -pubkey", out, sizeof out);
    pubkey_of("openssl pkey -in k.pem -pubout", want, sizeof want);
    assert_string_equal(out, want);
    free(der);

    /* 16 long names: the most a request carries */
    char many[16][80];
    const char *m[16];
    for (int i = 0; i < 16; i++) {
        snprintf(many[i], sizeof many[i], "host%02d.%s", i,
                 "a-rather-long-label-to-fill-the-request.lab.test");
        m[i] = many[i];
    }
    assert_int_equal(pki_csr_create(key, m, 16, &der, &len, err, sizeof err), 0);
    put("csr16.der", der, len);
    assert_int_equal(
        run(out, sizeof out, "openssl req -inform DER -in csr16.der -verify -noout -text"), 0);
    assert_int_equal(count(out, "DNS:host"), 16);
    assert_non_null(strstr(out, "DNS:host15.a-rather-long-label-to-fill-the-request.lab.test\n"));
    assert_non_null(strstr(out, "Subject: CN = host00.a-rather"));
    free(der);
    free(key);
}

/* X.520 bounds a CN to 64 bytes, a DNS name may have 253: a longer first name goes in the
 * SAN only, and the CN is the first name that fits (none: no CN, which CAs accept). A
 * certificate needs a subject: a long name's first label stands in. */
static void long_names_go_in_the_san(void **st)
{
    (void)st;
    char err[256] = "", out[8192], *key = new_key(), *cert = NULL, lng[120], lng2[120];
    snprintf(lng, sizeof lng, "%s.%s.lab.test",
             "label-of-fifty-bytes-0123456789-0123456789-0123456", "another-label-of-forty-bytes");
    snprintf(lng2, sizeof lng2, "x%s", lng);
    assert_true(strlen(lng) > 64);
    const char *names[] = {lng, "short.lab.test"}, *two_long[] = {lng, lng2};
    uint8_t *der = NULL;
    size_t len = 0;
    assert_int_equal(pki_csr_create(key, names, 2, &der, &len, err, sizeof err), 0);
    put("long.der", der, len);
    free(der);
    assert_int_equal(
        run(out, sizeof out, "openssl req -inform DER -in long.der -verify -noout -text"), 0);
    assert_non_null(strstr(out, "verify OK"));
    assert_non_null(strstr(out, "Subject: CN = short.lab.test\n"));
    assert_non_null(strstr(out, lng));
    assert_int_equal(pki_csr_create(key, two_long, 2, &der, &len, err, sizeof err), 0);
    put("long2.der", der, len);
    free(der);
    assert_int_equal(
        run(out, sizeof out, "openssl req -inform DER -in long2.der -verify -noout -text"), 0);
    assert_non_null(strstr(out, "verify OK"));
    assert_null(strstr(out, "CN ="));
    assert_int_equal(count(out, "DNS:"), 2);

    assert_int_equal(pki_self_signed(key, lng, 3, &cert, err, sizeof err), 0);
    struct pki_cert_info ci;
    assert_int_equal(pki_chain_inspect(cert, key, &ci, err, sizeof err), 0);
    assert_string_equal(ci.base.subject, "CN=label-of-fifty-bytes-0123456789-0123456789-0123456");
    assert_int_equal(ci.n_names, 1);
    assert_string_equal(ci.names[0], lng);
    free(cert);
    char *ck = NULL;
    uint8_t digest[32] = {1};
    assert_int_equal(pki_alpn_challenge_cert(lng, digest, &cert, &ck, err, sizeof err), 0);
    assert_int_equal(pki_chain_inspect(cert, ck, &ci, err, sizeof err), 0);
    assert_string_equal(ci.names[0], lng);
    free(cert);
    free(ck);
    free(key);
}

static void csr_refuses_bad_input(void **st)
{
    (void)st;
    char err[256], *key = new_key();
    const char *ok[17], *empty[] = {"a.lab.test", ""}, *nul[] = {"a.lab.test", NULL};
    const char *space[] = {"a b.lab.test"}, *comma[] = {"a.lab.test,O=Evil"};
    const char *dots[] = {"a..lab.test"}, *mid[] = {"a.*.lab.test"}, *star[] = {"*"};
    const char *label64[] = {
        "a234567890123456789012345678901234567890123456789012345678901234.test"};
    for (int i = 0; i < 17; i++)
        ok[i] = "x.lab.test";
    uint8_t *der = NULL;
    size_t len = 0;
    struct {
        const char *key;
        const char *const *names;
        size_t n;
        const char *says;
    } bad[] = {
        {key, ok, 0, "1 to 16"},
        {key, ok, 17, "1 to 16"},
        {key, NULL, 1, "1 to 16"},
        {key, empty, 2, "empty"},
        {key, nul, 2, "empty"},
        {key, space, 1, "not a host name"},
        {key, comma, 1, "not a host name"},
        {key, dots, 1, "not a host name"},
        {key, mid, 1, "not a host name"},
        {key, label64, 1, "not a host name"},
        {key, star, 1, "not a host name"},
        {"garbage", ok, 1, "not a valid private key"},
        {"", ok, 1, "not a valid private key"},
        {NULL, ok, 1, "no key"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(
            pki_csr_create(bad[i].key, bad[i].names, bad[i].n, &der, &len, err, sizeof err),
            -EINVAL);
        if (!strstr(err, bad[i].says))
            fail_msg("case %zu: \"%s\" does not say \"%s\"", i, err, bad[i].says);
        assert_null(der);
    }
    free(key);
}

/* RFC 8737 3: the critical id-pe-acmeIdentifier extension holds OCTET STRING (the digest),
 * and the certificate names exactly the one name. */
static void alpn_challenge_cert_carries_digest(void **st)
{
    (void)st;
    char err[256] = "", *cert = NULL, *key = NULL, out[8192], want[4096], hex[80];
    uint8_t digest[32];
    for (int i = 0; i < 32; i++)
        digest[i] = (uint8_t)(i * 7 + 1);
    digest[0] = 0; /* a leading zero byte stays */
    assert_int_equal(pki_alpn_challenge_cert("web.lab.test", digest, &cert, &key, err, sizeof err),
                     0);
    put("c.pem", cert, 0);
    put("ck.pem", key, 0);
    assert_int_equal(run(out, sizeof out, "openssl x509 -in c.pem -noout -text"), 0);
    assert_int_equal(count(out, "DNS:"), 1);
    assert_non_null(strstr(out, "DNS:web.lab.test\n"));
    assert_non_null(strstr(out, "Subject: CN = web.lab.test\n"));
    /* the extension: OID, critical (BOOLEAN 255), then the value's DER as one hex dump */
    assert_int_equal(run(out, sizeof out, "openssl asn1parse -in c.pem"), 0);
    const char *oid = strstr(out, ":1.3.6.1.5.5.7.1.31\n");
    if (!oid)
        oid = strstr(out, ":id-pe-acmeIdentifier\n"); /* an OpenSSL that knows its name */
    assert_non_null(oid);
    const char *crit = strstr(oid, "BOOLEAN"), *val = strstr(oid, "OCTET STRING");
    assert_non_null(crit);
    assert_non_null(val);
    assert_true(crit < val);
    assert_non_null(strstr(crit, ":255"));
    int o = snprintf(hex, sizeof hex, "[HEX DUMP]:0420");
    for (int i = 0; i < 32; i++)
        o += snprintf(hex + o, sizeof hex - (size_t)o, "%02X", digest[i]);
    assert_true(strncmp(strstr(val, "[HEX DUMP]:"), hex, strlen(hex)) == 0);
    assert_true(strstr(val, "[HEX DUMP]:")[strlen(hex)] == '\n');
    assert_int_equal(count(out, "1.3.6.1.5.5.7.1.31") + count(out, "id-pe-acmeIdentifier"), 1);
    /* the key given back is the certificate's */
    pubkey_of("openssl x509 -in c.pem -noout -pubkey", out, sizeof out);
    pubkey_of("openssl pkey -in ck.pem -pubout", want, sizeof want);
    assert_string_equal(out, want);
    /* valid now, for 7 days */
    struct pki_cert_info ci;
    time_t now = time(NULL);
    assert_int_equal(pki_chain_inspect(cert, key, &ci, err, sizeof err), 0);
    assert_true(ci.self_signed);
    assert_true(ci.not_before <= now && ci.not_before >= now - 3700);
    assert_true(ci.base.not_after >= now + 7 * 86400 - 60 &&
                ci.base.not_after <= now + 7 * 86400 + 60);
    assert_int_equal(ci.n_names, 1);
    assert_string_equal(ci.names[0], "web.lab.test");
    free(cert);
    free(key);

    cert = key = NULL;
    assert_int_equal(pki_alpn_challenge_cert("", digest, &cert, &key, err, sizeof err), -EINVAL);
    assert_int_equal(pki_alpn_challenge_cert(NULL, digest, &cert, &key, err, sizeof err), -EINVAL);
    assert_int_equal(pki_alpn_challenge_cert("a,b", digest, &cert, &key, err, sizeof err), -EINVAL);
    assert_int_equal(pki_alpn_challenge_cert("a.test", NULL, &cert, &key, err, sizeof err),
                     -EINVAL);
    assert_null(cert);
    assert_null(key);
}

/* The DER the CLI verifies: SEQUENCE { INTEGER r, INTEGER s } from 32-byte r || s. */
static size_t der_int(uint8_t *out, const uint8_t *v)
{
    size_t i = 0;
    while (i < 31 && v[i] == 0)
        i++;
    size_t pad = v[i] & 0x80 ? 1 : 0, n = 32 - i;
    out[0] = 0x02;
    out[1] = (uint8_t)(n + pad);
    out[2] = 0;
    memcpy(out + 2 + pad, v + i, n);
    return 2 + pad + n;
}

static size_t sig_der(const uint8_t sig[64], uint8_t out[72])
{
    uint8_t body[70];
    size_t n = der_int(body, sig);
    n += der_int(body + n, sig + 32);
    out[0] = 0x30;
    out[1] = (uint8_t)n;
    memcpy(out + 2, body, n);
    return n + 2;
}

/* SubjectPublicKeyInfo of a P-256 point, DER. */
static void spki_der(const uint8_t x[32], const uint8_t y[32], uint8_t out[91])
{
    static const uint8_t head[] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
                                   0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                   0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04};
    memcpy(out, head, sizeof head);
    memcpy(out + 27, x, 32);
    memcpy(out + 59, y, 32);
}

/* The signature of data by key verifies (openssl dgst) against the public key made from
 * pki_es256_public's x, y; returns the CLI's verdict. */
static bool cli_verifies(const uint8_t x[32], const uint8_t y[32], const char *data,
                         const uint8_t sig[64])
{
    uint8_t spki[91], der[72];
    char out[1024];
    spki_der(x, y, spki);
    put("pub.der", spki, sizeof spki);
    put("sig.der", der, sig_der(sig, der));
    put("data.bin", data, 0);
    int rc = run(out, sizeof out,
                 "openssl dgst -sha256 -verify pub.der -keyform DER -signature sig.der data.bin");
    assert_true(rc != 0 || strstr(out, "Verified OK"));
    return rc == 0;
}

/* x, y as `openssl ec -text` prints the public point: 04 || x || y, in hex pairs with ':'
 * over a few lines between "pub:" and "ASN1 OID:". */
static void cli_point(const char *key_file, uint8_t point[65])
{
    char out[4096];
    assert_int_equal(run(out, sizeof out, "openssl ec -in %s -noout -text", key_file), 0);
    const char *p = strstr(out, "pub:"), *end = strstr(out, "ASN1 OID:");
    assert_non_null(p);
    assert_non_null(end);
    size_t n = 0;
    unsigned v;
    for (p += 4; p < end; p++)
        if (isxdigit((unsigned char)p[0]) && isxdigit((unsigned char)p[1]) &&
            sscanf(p, "%2x", &v) == 1) {
            assert_true(n < 65);
            point[n++] = (uint8_t)v;
            p++;
        }
    assert_int_equal(n, 65);
}

static void es256_signature_verifies(void **st)
{
    (void)st;
    char err[256] = "", *key = new_key();
    uint8_t x[32], y[32], sig[64], point[65];
    put("k.pem", key, 0);
    assert_int_equal(pki_es256_public(key, x, y, err, sizeof err), 0);
    cli_point("k.pem", point);
    assert_int_equal(point[0], 4);
    assert_memory_equal(point + 1, x, 32);
    assert_memory_equal(point + 33, y, 32);

    const char *data = "eyJhbGciOiJFUzI1NiJ9.eyJwYXlsb2FkIjoxfQ";
    assert_int_equal(pki_es256_sign(key, data, strlen(data), sig, err, sizeof err), 0);
    assert_true(cli_verifies(x, y, data, sig));
    assert_false(cli_verifies(x, y, "eyJhbGciOiJFUzI1NiJ9.eyJwYXlsb2FkIjoyfQ", sig));
    uint8_t other[64];
    memcpy(other, sig, 64);
    other[63] ^= 1;
    assert_false(cli_verifies(x, y, data, other));

    /* r or s with a leading zero byte (about 1 in 128): still 32 bytes each, zero-padded */
    bool found = false;
    char msg[32];
    for (int i = 0; i < 4000 && !found; i++) {
        snprintf(msg, sizeof msg, "m%d", i);
        assert_int_equal(pki_es256_sign(key, msg, strlen(msg), sig, err, sizeof err), 0);
        found = sig[0] == 0 || sig[32] == 0;
    }
    assert_true(found);
    assert_true(cli_verifies(x, y, msg, sig));

    /* empty data, and a key the CLI made (SEC1 PEM) */
    assert_int_equal(pki_es256_sign(key, NULL, 0, sig, err, sizeof err), 0);
    assert_true(cli_verifies(x, y, "", sig));
    char out[4096];
    assert_int_equal(run(out, sizeof out,
                         "openssl ecparam -name prime256v1 -genkey -noout -out sec1.pem && "
                         "cat sec1.pem"),
                     0);
    assert_non_null(strstr(out, "BEGIN EC PRIVATE KEY"));
    assert_int_equal(pki_es256_public(out, x, y, err, sizeof err), 0);
    cli_point("sec1.pem", point);
    assert_memory_equal(point + 1, x, 32);
    assert_memory_equal(point + 33, y, 32);
    assert_int_equal(pki_es256_sign(out, data, strlen(data), sig, err, sizeof err), 0);
    assert_true(cli_verifies(x, y, data, sig));
    free(key);
}

static void es256_refuses_other_keys(void **st)
{
    (void)st;
    char err[256], out[8192];
    uint8_t x[32], y[32], sig[64];
    assert_int_equal(
        run(out, sizeof out, "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024"), 0);
    err[0] = '\0';
    assert_int_equal(pki_es256_public(out, x, y, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "P-256"));
    assert_int_equal(pki_es256_sign(out, "a", 1, sig, err, sizeof err), -EINVAL);
    assert_int_equal(
        run(out, sizeof out, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384"), 0);
    err[0] = '\0';
    assert_int_equal(pki_es256_public(out, x, y, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "P-256"));
    assert_int_equal(pki_es256_sign(out, "a", 1, sig, err, sizeof err), -EINVAL);
    const char *bad[] = {"garbage", "", NULL,
                         "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"};
    for (size_t i = 0; i < 4; i++) {
        err[0] = '\0';
        assert_int_equal(pki_es256_public(bad[i], x, y, err, sizeof err), -EINVAL);
        assert_true(err[0] != '\0');
        err[0] = '\0';
        assert_int_equal(pki_es256_sign(bad[i], "a", 1, sig, err, sizeof err), -EINVAL);
        assert_true(err[0] != '\0');
    }
    char *key = new_key();
    assert_int_equal(pki_es256_sign(key, NULL, 1, sig, err, sizeof err), -EINVAL);
    free(key);
}

static int64_t cli_date(const char *which, const char *file)
{
    char out[256];
    assert_int_equal(run(out, sizeof out,
                         "date -d \"$(openssl x509 -noout -%sdate -in %s | cut -d= -f2)\" +%%s",
                         which, file),
                     0);
    return strtoll(out, NULL, 10);
}

static void self_signed_placeholder_inspects(void **st)
{
    (void)st;
    char err[256] = "", *key = new_key(), *cert = NULL, out[4096];
    time_t now = time(NULL);
    assert_int_equal(pki_self_signed(key, "sip.lab.test", 30, &cert, err, sizeof err), 0);
    const char *cf = put("s.pem", cert, 0);
    const char *kf = put("sk.pem", key, 0);
    struct pki_cert_info ci;
    memset(&ci, 0xa5, sizeof ci);
    assert_int_equal(pki_chain_inspect(cert, key, &ci, err, sizeof err), 0);
    assert_true(ci.self_signed);
    assert_int_equal(ci.n_names, 1);
    assert_string_equal(ci.names[0], "sip.lab.test");
    assert_string_equal(ci.base.subject, "CN=sip.lab.test");
    /* from an hour ago, for 30 days */
    assert_true(ci.not_before >= now - 3600 - 5 && ci.not_before <= now - 3600 + 5);
    assert_int_equal(ci.base.not_after - ci.not_before, 30 * 86400);
    assert_int_equal(ci.not_before, cli_date("start", "s.pem"));
    assert_int_equal(ci.base.not_after, cli_date("end", "s.pem"));
    /* serial and fingerprint as the CLI prints them */
    assert_int_equal(run(out, sizeof out,
                         "openssl x509 -noout -serial -in s.pem | cut -d= -f2 | "
                         "sed 's/../&:/g; s/:$//'"),
                     0);
    out[strcspn(out, "\n")] = '\0';
    assert_string_equal(ci.base.serial, out);
    assert_int_equal(
        run(out, sizeof out, "openssl x509 -noout -fingerprint -sha256 -in s.pem | cut -d= -f2"),
        0);
    out[strcspn(out, "\n")] = '\0';
    assert_string_equal(ci.base.fingerprint, out);
    assert_int_equal(run(out, sizeof out, "openssl x509 -noout -text -in s.pem"), 0);
    assert_non_null(strstr(out, "DNS:sip.lab.test\n"));
    assert_non_null(strstr(out, "CA:FALSE"));
    /* tls_cert_inspect reads the same from the files */
    struct tls_cert_info ti;
    assert_int_equal(tls_cert_inspect(cf, kf, &ti, err, sizeof err), 0);
    assert_memory_equal(&ti, &ci.base, sizeof ti);

    /* an IP literal is an iPAddress SAN (and no DNS name) */
    free(cert);
    assert_int_equal(pki_self_signed(key, "127.0.0.11", 1, &cert, err, sizeof err), 0);
    put("ip.pem", cert, 0);
    assert_int_equal(run(out, sizeof out, "openssl x509 -noout -text -in ip.pem"), 0);
    assert_non_null(strstr(out, "IP Address:127.0.0.11\n"));
    assert_int_equal(pki_chain_inspect(cert, NULL, &ci, err, sizeof err), 0);
    assert_int_equal(ci.n_names, 1); /* the CN, as there is no DNS SAN */
    assert_string_equal(ci.names[0], "127.0.0.11");
    free(cert);

    cert = NULL;
    assert_int_equal(pki_self_signed(key, "sip.lab.test", 0, &cert, err, sizeof err), -EINVAL);
    assert_int_equal(pki_self_signed(key, "", 30, &cert, err, sizeof err), -EINVAL);
    assert_int_equal(pki_self_signed(key, NULL, 30, &cert, err, sizeof err), -EINVAL);
    assert_int_equal(pki_self_signed("junk", "a.test", 30, &cert, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "not a valid private key"));
    assert_null(cert);
    free(key);
}

/* The issuance path: our CSR, signed by a CA (the CLI), comes back as leaf + CA; it matches
 * the pending key and no other. */
static void chain_from_ca_matches_pending_key(void **st)
{
    (void)st;
    char err[256] = "", out[8192], chain[8192];
    char *key = new_key(), *other = new_key();
    const char *names[] = {"conf.lab.test", "av.lab.test"};
    uint8_t *der = NULL;
    size_t len = 0;
    assert_int_equal(pki_csr_create(key, names, 2, &der, &len, err, sizeof err), 0);
    put("leaf.csr", der, len);
    free(der);
    assert_int_equal(
        run(out, sizeof out,
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key "
            "-out ca.crt -subj /CN=lab-ca -days 2 && "
            "openssl x509 -req -inform DER -in leaf.csr -CA ca.crt -CAkey ca.key "
            "-set_serial 0x00f1e2 -days 10 -copy_extensions copy -out leaf.crt && "
            "cat leaf.crt ca.crt > chain.pem"),
        0);
    assert_int_equal(run(chain, sizeof chain, "cat chain.pem"), 0);

    struct pki_cert_info ci;
    assert_int_equal(pki_chain_inspect(chain, key, &ci, err, sizeof err), 0);
    assert_false(ci.self_signed);
    assert_string_equal(ci.base.subject, "CN=conf.lab.test");
    /* as openssl x509 -serial prints it: no 00 sign byte before F1 (tls.h) */
    assert_string_equal(ci.base.serial, "F1:E2");
    assert_int_equal(ci.n_names, 2);
    assert_string_equal(ci.names[0], "conf.lab.test");
    assert_string_equal(ci.names[1], "av.lab.test");
    assert_int_equal(ci.not_before, cli_date("start", "leaf.crt"));
    assert_int_equal(ci.base.not_after, cli_date("end", "leaf.crt"));
    assert_int_equal(pki_chain_inspect(chain, NULL, &ci, err, sizeof err), 0);

    err[0] = '\0';
    assert_int_equal(pki_chain_inspect(chain, other, &ci, err, sizeof err), -EKEYREJECTED);
    assert_non_null(strstr(err, "does not match"));
    /* the CA's key matches the CA, not the first certificate */
    assert_int_equal(run(out, sizeof out, "cat ca.key"), 0);
    assert_int_equal(pki_chain_inspect(chain, out, &ci, err, sizeof err), -EKEYREJECTED);
    /* the CA alone: self-signed */
    assert_int_equal(run(out, sizeof out, "cat ca.crt"), 0);
    assert_int_equal(pki_chain_inspect(out, NULL, &ci, err, sizeof err), 0);
    assert_true(ci.self_signed);
    assert_int_equal(ci.n_names, 1);
    assert_string_equal(ci.names[0], "lab-ca");
    free(key);
    free(other);
}

/* pki_chain_check: a chain clients can follow (each certificate signed by the next, which is
 * a CA) passes; an unrelated CA after the leaf, a leaf after its CA, or a non-CA issuer fail. */
static void chain_check_follows_signatures(void **st)
{
    (void)st;
    char err[256] = "", out[8192], chain[8192];
    char *key = new_key();
    const char *names[] = {"conf.lab.test"};
    uint8_t *der = NULL;
    size_t len = 0;
    assert_int_equal(pki_csr_create(key, names, 1, &der, &len, err, sizeof err), 0);
    put("cc.csr", der, len);
    free(der);
    assert_int_equal(
        run(out, sizeof out,
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout cca.key "
            "-out cca.crt -subj /CN=cc-ca -days 2 && "
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ccb.key "
            "-out ccb.crt -subj /CN=cc-other -days 2 && "
            "openssl x509 -req -inform DER -in cc.csr -CA cca.crt -CAkey cca.key "
            "-set_serial 7 -days 2 -out ccleaf.crt && "
            "openssl req -x509 -key ccb.key -out ccnotca.crt -subj /CN=cc-ca -days 2 "
            "-addext basicConstraints=critical,CA:FALSE"),
        0);
    assert_int_equal(run(chain, sizeof chain, "cat ccleaf.crt cca.crt"), 0);
    assert_int_equal(pki_chain_check(chain, err, sizeof err), 0);
    assert_int_equal(run(chain, sizeof chain, "cat ccleaf.crt"), 0);
    assert_int_equal(pki_chain_check(chain, err, sizeof err), 0); /* the leaf alone */
    assert_int_equal(run(chain, sizeof chain, "cat ccleaf.crt cca.crt cca.crt"), 0);
    assert_int_equal(pki_chain_check(chain, err, sizeof err), 0); /* a root signs itself */
    const char *bad[] = {"cat ccleaf.crt ccb.crt", "cat cca.crt ccleaf.crt",
                         "cat ccleaf.crt ccnotca.crt"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(run(chain, sizeof chain, bad[i]), 0);
        assert_int_equal(pki_chain_check(chain, err, sizeof err), -EINVAL);
        assert_non_null(strstr(err, "certificate 2 does not sign certificate 1"));
    }
    /* a block that does not parse after a good leaf (OpenSSL's reader would stop there) */
    assert_int_equal(run(chain, sizeof chain,
                         "cat ccleaf.crt; printf -- '-----BEGIN CERTIFICATE-----\\nQUJDRA==\\n"
                         "-----END CERTIFICATE-----\\n'"),
                     0);
    assert_int_equal(pki_chain_check(chain, err, sizeof err), -EINVAL);
    assert_int_equal(pki_chain_check("garbage", err, sizeof err), -EINVAL);
    assert_int_equal(pki_chain_check(NULL, err, sizeof err), -EINVAL);
    free(key);
}

static void inspect_refuses_garbage(void **st)
{
    (void)st;
    char err[256], *key = new_key(), *cert = NULL;
    struct pki_cert_info ci;
    assert_int_equal(pki_self_signed(key, "a.lab.test", 2, &cert, err, sizeof err), 0);
    const char *bad[] = {
        "",
        "garbage",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIQ\n-----END CERTIFICATE-----\n",
        key, /* a key is no certificate */
        NULL,
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        int rc = pki_chain_inspect(bad[i], NULL, &ci, err, sizeof err);
        if (rc != -EINVAL || err[0] == '\0')
            fail_msg("case %zu: %d \"%s\"", i, rc, err);
    }
    /* a good certificate with a garbage key */
    err[0] = '\0';
    assert_int_equal(pki_chain_inspect(cert, "junk", &ci, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "not a valid private key"));
    /* a truncated certificate */
    size_t n = strlen(cert);
    cert[n / 2] = '\0';
    assert_int_equal(pki_chain_inspect(cert, NULL, &ci, err, sizeof err), -EINVAL);
    free(cert);
    free(key);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(key_is_p256),
        cmocka_unit_test(csr_verifies_and_names_every_san),
        cmocka_unit_test(long_names_go_in_the_san),
        cmocka_unit_test(csr_refuses_bad_input),
        cmocka_unit_test(alpn_challenge_cert_carries_digest),
        cmocka_unit_test(es256_signature_verifies),
        cmocka_unit_test(es256_refuses_other_keys),
        cmocka_unit_test(self_signed_placeholder_inspects),
        cmocka_unit_test(chain_from_ca_matches_pending_key),
        cmocka_unit_test(chain_check_follows_signatures),
        cmocka_unit_test(inspect_refuses_garbage),
    };
    return cmocka_run_group_tests(tests, dir_setup, dir_teardown);
}
