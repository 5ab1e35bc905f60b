/* Certificates for the mbedTLS backend (tls_mbed.h): loading files, the names a
 * certificate carries, fingerprints, self-signed certificates, tls_cert_inspect. */
#include "common/certname.h"
#include "common/tls_mbed.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

const char *tls_mbed_str(int rc, char *out, size_t cap)
{
    mbedtls_strerror(rc, out, cap);
    return out;
}

const mbedtls_x509_buf *tls_mbed_crt_cn(const mbedtls_x509_crt *crt)
{
    for (const mbedtls_x509_name *n = &crt->subject; n; n = n->next)
        if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0)
            return &n->val;
    return NULL;
}

bool tls_mbed_crt_matches(const mbedtls_x509_crt *crt, const char *name, size_t len)
{
    bool has_dns = false;
    for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s && s->buf.p; s = s->next) {
        if (s->buf.tag != SAN_DNS)
            continue;
        has_dns = true;
        if (cert_name_match((const char *)s->buf.p, s->buf.len, name, len,
                            CERT_NAME_WILDCARD_FIRST_LABEL))
            return true;
    }
    if (has_dns)
        return false; /* RFC 6125 6.4.4: the CN is only a fallback */
    const mbedtls_x509_buf *cn = tls_mbed_crt_cn(crt);
    return cn &&
           cert_name_match((const char *)cn->p, cn->len, name, len, CERT_NAME_WILDCARD_FIRST_LABEL);
}

/* Loads a PEM (or DER) certificate file. A CA bundle (bundle = true) may also be a
 * directory of certificates, and may hold a few certificates mbedTLS cannot parse (system
 * bundles do): it is accepted if at least one certificate loads. */
int tls_mbed_load_crt(mbedtls_x509_crt *crt, const char *path, bool bundle, char *err, size_t cap)
{
    char e[128];
    struct stat st;
    int rc;
    if (bundle && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        rc = mbedtls_x509_crt_parse_path(crt, path);
        if (rc < 0 || crt->raw.p == NULL) {
            tls_errf(err, cap, "%s: no certificate could be loaded from this directory", path);
            return -EINVAL;
        }
        return 0;
    }
    unsigned char *b = NULL;
    size_t n = 0;
    rc = tls_read_file(path, &b, &n, err, cap);
    if (rc)
        return rc;
    rc = mbedtls_x509_crt_parse(crt, b, n);
    free(b);
    if (rc == 0 || (rc > 0 && bundle && crt->raw.p != NULL))
        return 0;
    if (rc > 0 || (rc < 0 && crt->raw.p == NULL && n <= 1))
        tls_errf(err, cap, "%s: not a valid certificate (%s)", path,
                 rc > 0 ? "some certificates failed to parse" : "empty file");
    else
        tls_errf(err, cap, "%s: not a valid certificate (%s)", path, tls_mbed_str(rc, e, sizeof e));
    return -EINVAL;
}

int tls_mbed_load_key(mbedtls_pk_context *pk, const char *path, char *err, size_t cap)
{
    unsigned char *b = NULL;
    size_t n = 0;
    int rc = tls_read_file(path, &b, &n, err, cap);
    if (rc)
        return rc;
    rc = mbedtls_pk_parse_key(pk, b, n, NULL, 0);
    mbedtls_platform_zeroize(b, n);
    free(b);
    if (rc != 0) {
        char e[128];
        tls_errf(err, cap, "%s: not a valid private key (%s)", path, tls_mbed_str(rc, e, sizeof e));
        return -EINVAL;
    }
    return 0;
}

void tls_mbed_fingerprint(const mbedtls_x509_crt *crt, char *out)
{
    unsigned char h[32];
    mbedtls_sha256_ret(crt->raw.p, crt->raw.len, h, 0);
    tls_hex_fingerprint(h, out);
}

/* Writes the length of a DER element. */
static size_t der_len(uint8_t *p, size_t n)
{
    if (n < 128) {
        p[0] = (uint8_t)n;
        return 1;
    }
    p[0] = 0x81;
    p[1] = (uint8_t)n;
    return 2;
}

/* subjectAltName ::= SEQUENCE { [2] dNSName } or { [7] iPAddress } for an IP literal (no
 * writer for it in mbedTLS 2.28), DER into san (300 bytes); returns its length. */
static size_t san_der(const char *name, unsigned char *san)
{
    uint8_t ip[16], inner[4];
    const uint8_t *val = (const uint8_t *)name;
    size_t vlen = strlen(name);
    uint8_t tag = 0x82;
    if (inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1) {
        val = ip;
        vlen = strchr(name, ':') ? 16 : 4;
        tag = 0x87;
    }
    size_t il = der_len(inner, vlen);
    size_t seq = 1 + il + vlen, o = 0;
    san[o++] = 0x30;
    o += der_len(san + o, seq);
    san[o++] = tag;
    memcpy(san + o, inner, il);
    o += il;
    memcpy(san + o, val, vlen);
    o += vlen;
    return o;
}

/* A random positive 128-bit serial number. */
static int random_serial(mbedtls_ctr_drbg_context *drbg, mbedtls_mpi *serial)
{
    unsigned char rnd[16];
    int rc = mbedtls_ctr_drbg_random(drbg, rnd, sizeof rnd);
    rnd[0] &= 0x7f;
    rnd[0] |= 0x01;
    return rc ? rc : mbedtls_mpi_read_binary(serial, rnd, sizeof rnd);
}

/* Fills the fields of a self-signed certificate for name with key, valid from a day ago for
 * a year: subject and issuer CN=name, the SAN, no CA. */
static int self_signed_fields(mbedtls_x509write_cert *w, mbedtls_pk_context *key,
                              const mbedtls_mpi *serial, const char *name)
{
    char subj[300], nb[16], na[16];
    unsigned char san[300];
    time_t now = time(NULL);
    struct tm tb, ta;
    time_t before = now - 86400, after = now + 365 * 86400;
    gmtime_r(&before, &tb);
    gmtime_r(&after, &ta);
    strftime(nb, sizeof nb, "%Y%m%d%H%M%S", &tb);
    strftime(na, sizeof na, "%Y%m%d%H%M%S", &ta);
    snprintf(subj, sizeof subj, "CN=%s", name);

    mbedtls_x509write_crt_set_version(w, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(w, key);
    mbedtls_x509write_crt_set_issuer_key(w, key);
    int rc = mbedtls_x509write_crt_set_serial(w, serial);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_validity(w, nb, na);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_subject_name(w, subj);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_issuer_name(w, subj);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_basic_constraints(w, 0, -1);
    if (rc == 0) {
        size_t o = san_der(name, san);
        rc = mbedtls_x509write_crt_set_extension(w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                                 MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0,
                                                 san, o);
    }
    return rc;
}

int tls_mbed_self_signed(mbedtls_ctr_drbg_context *drbg, struct tls_cert *out, const char *name,
                         char *err, size_t cap)
{
    char e[128];
    unsigned char der[1024];
    mbedtls_x509write_cert w;
    mbedtls_mpi serial;
    int rc;

    if ((rc = tls_check_self_signed_name(name, err, cap)) != 0)
        return rc;
    mbedtls_x509write_crt_init(&w);
    mbedtls_mpi_init(&serial);
    rc = mbedtls_pk_setup(&out->key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
    if (rc == 0)
        rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(out->key),
                                 mbedtls_ctr_drbg_random, drbg);
    if (rc == 0)
        rc = random_serial(drbg, &serial);
    if (rc == 0)
        rc = self_signed_fields(&w, &out->key, &serial, name);
    if (rc == 0)
        rc = mbedtls_x509write_crt_der(&w, der, sizeof der, mbedtls_ctr_drbg_random, drbg);
    if (rc > 0)
        rc = mbedtls_x509_crt_parse_der(&out->crt, der + sizeof der - rc, (size_t)rc);
    else if (rc == 0)
        rc = MBEDTLS_ERR_X509_BUFFER_TOO_SMALL; /* not seen: an empty DER certificate */
    mbedtls_x509write_crt_free(&w);
    mbedtls_mpi_free(&serial);
    if (rc) {
        tls_errf(err, cap, "cannot generate a self-signed certificate: %s",
                 tls_mbed_str(rc, e, sizeof e));
        return -EIO;
    }
    return 0;
}

static void serial_hex(const unsigned char *p, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && o + 4 <= cap; i++)
        o += (size_t)snprintf(out + o, cap - o, i ? ":%02X" : "%02X", p[i]);
}

int tls_cert_inspect(const char *cert_file, const char *key_file, struct tls_cert_info *info,
                     char *err, size_t errcap)
{
    mbedtls_x509_crt crt;
    mbedtls_x509_crt_init(&crt);
    int rc = tls_mbed_load_crt(&crt, cert_file, false, err, errcap);
    if (rc == 0 && key_file) {
        mbedtls_pk_context pk;
        mbedtls_pk_init(&pk);
        rc = tls_mbed_load_key(&pk, key_file, err, errcap);
        if (rc == 0 && mbedtls_pk_check_pair(&crt.pk, &pk) != 0) {
            tls_errf(err, errcap, "%s does not match the certificate in %s", key_file, cert_file);
            rc = -EKEYREJECTED;
        }
        mbedtls_pk_free(&pk);
    }
    if (rc == 0) {
        memset(info, 0, sizeof *info);
        if (mbedtls_x509_dn_gets(info->subject, sizeof info->subject, &crt.subject) < 0)
            info->subject[0] = '\0';
        serial_hex(crt.serial.p, crt.serial.len, info->serial, sizeof info->serial);
        struct tm tm = {.tm_year = crt.valid_to.year - 1900,
                        .tm_mon = crt.valid_to.mon - 1,
                        .tm_mday = crt.valid_to.day,
                        .tm_hour = crt.valid_to.hour,
                        .tm_min = crt.valid_to.min,
                        .tm_sec = crt.valid_to.sec};
        info->not_after = (int64_t)timegm(&tm);
        tls_mbed_fingerprint(&crt, info->fingerprint);
    }
    mbedtls_x509_crt_free(&crt);
    return rc;
}
