/* Library-independent parts of common/tls (see tls_shared.h): errors, alert names, file
 * reading, fingerprints, the peer's names. */
#include "common/tls_shared.h"
#include "common/certname.h"
#include "common/pki.h"
#include "common/tls.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

void tls_errf(char *err, size_t cap, const char *fmt, ...)
{
    if (!err || !cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

const char *tls_alert_name(unsigned a)
{
    switch (a) {
    case 0:
        return "close_notify";
    case 10:
        return "unexpected_message";
    case 20:
        return "bad_record_mac";
    case 40:
        return "handshake_failure";
    case 42:
        return "bad_certificate";
    case 43:
        return "unsupported_certificate";
    case 44:
        return "certificate_revoked";
    case 45:
        return "certificate_expired";
    case 46:
        return "certificate_unknown";
    case 47:
        return "illegal_parameter";
    case 48:
        return "unknown_ca";
    case 50:
        return "decode_error";
    case 51:
        return "decrypt_error";
    case 70:
        return "protocol_version";
    case 71:
        return "insufficient_security";
    case 80:
        return "internal_error";
    case 86:
        return "inappropriate_fallback";
    case 112:
        return "unrecognized_name";
    case 116:
        return "certificate_required";
    case 120:
        return "no_application_protocol";
    default:
        return "unknown alert";
    }
}

int tls_read_file(const char *path, unsigned char **out, size_t *len, char *err, size_t cap)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno; /* read once; never 0: the callers read *out on 0 */
        if (e == 0)
            e = EIO;
        tls_errf(err, cap, "cannot read %s: %s", path, strerror(e));
        return -e;
    }
    size_t n = 0, room = 4096;
    unsigned char *b = malloc(room + 1);
    int rc = 0;
    while (b) {
        size_t r = fread(b + n, 1, room - n, f);
        n += r;
        if (r == 0)
            break;
        if (n == room) {
            if (room >= (1u << 24)) {
                tls_errf(err, cap, "cannot read %s: file too large", path);
                rc = -EFBIG;
                break;
            }
            unsigned char *nb = realloc(b, room * 2 + 1);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            room *= 2;
        }
    }
    if (!b) {
        fclose(f);
        tls_errf(err, cap, "cannot read %s: out of memory", path);
        return -ENOMEM;
    }
    if (rc == 0 && ferror(f)) {
        tls_errf(err, cap, "cannot read %s: %s", path, strerror(errno ? errno : EIO));
        rc = -EIO;
    }
    fclose(f);
    if (rc) {
        free(b);
        return rc;
    }
    b[n] = '\0';
    *out = b;
    *len = n + 1; /* mbedTLS wants PEM with its terminating NUL counted */
    return 0;
}

void tls_hex_fingerprint(const uint8_t h[32], char *out)
{
    for (size_t i = 0; i < 32; i++)
        sprintf(out + 3 * i, "%02X%s", h[i], i < 31 ? ":" : "");
}

int tls_check_self_signed_name(const char *name, char *err, size_t cap)
{
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen > 200 || strpbrk(name, ",=+\"\\<>;")) {
        tls_errf(err, cap, "self_signed_name \"%s\" is not a plain host name", name);
        return -EINVAL;
    }
    return 0;
}

/* A host name: labels of 1 to 63 letters, digits, '-' and '_', the first may be "*"; or an
 * IP literal. */
static bool host_name_ok(const char *s)
{
    unsigned char ip[16];
    if (inet_pton(AF_INET, s, ip) == 1 || inet_pton(AF_INET6, s, ip) == 1)
        return true;
    size_t label = 0;
    for (const char *c = s;; c++) {
        if (*c == '.' || *c == '\0') {
            if (label == 0 || label > 63)
                return false;
            if (*c == '\0')
                return true;
            label = 0;
        } else if (*c == '*') {
            if (c != s || c[1] != '.')
                return false;
            label++;
        } else if (isalnum((unsigned char)*c) || *c == '-' || *c == '_') {
            label++;
        } else {
            return false;
        }
    }
}

int tls_check_cert_names(const char *const *names, size_t n, size_t max, char *err, size_t cap)
{
    if (!names || n == 0 || n > max) {
        tls_errf(err, cap, "%zu names: a certificate names 1 to %zu", names ? n : 0, max);
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || names[i][0] == '\0') {
            tls_errf(err, cap, "name %zu is empty", i);
            return -EINVAL;
        }
        if (strlen(names[i]) > 253 || !host_name_ok(names[i])) {
            tls_errf(err, cap, "\"%.64s\" is not a host name", names[i]);
            return -EINVAL;
        }
    }
    return 0;
}

const char *tls_cert_cn(const char *const *names, size_t n, char *label)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(names[i]) <= 64)
            return names[i];
    if (!label)
        return NULL;
    size_t l = strcspn(names[0], ".");
    snprintf(label, 64, "%.*s", (int)(l < 63 ? l : 63), names[0]);
    return label;
}

bool tls_peer_has_name(const struct tls_peer *p, const char *name)
{
    return p && cert_names_match(p->cn, p->sans, p->nsans, name, CERT_NAME_WILDCARD_FIRST_LABEL);
}

int tls_cert_inspect(const char *cert_file, const char *key_file, struct tls_cert_info *info,
                     char *err, size_t errcap)
{
    unsigned char *c = NULL, *k = NULL;
    size_t cn = 0, kn = 0;
    struct pki_cert_info pi;
    int rc = tls_read_file(cert_file, &c, &cn, err, errcap);
    if (rc == 0 && key_file)
        rc = tls_read_file(key_file, &k, &kn, err, errcap);
    if (rc == 0)
        rc = tls_backend_inspect(c, cn, cert_file, k, kn, key_file, &pi, err, errcap);
    if (rc == 0)
        *info = pi.base;
    free(c);
    if (k)
        explicit_bzero(k, kn);
    free(k);
    return rc;
}

int pki_chain_inspect(const char *chain_pem, const char *key_pem, struct pki_cert_info *info,
                      char *err, size_t errcap)
{
    if (!chain_pem || !info) {
        tls_errf(err, errcap, "no certificate");
        return -EINVAL;
    }
    return tls_backend_inspect((const unsigned char *)chain_pem, strlen(chain_pem) + 1,
                               "the certificate chain", (const unsigned char *)key_pem,
                               key_pem ? strlen(key_pem) + 1 : 0, "the key", info, err, errcap);
}

/* ---- what either backend's connection says (struct tls_conn_base) ---- */

void tls_conn_set_err(struct tls_conn_base *b, const char *fmt, ...)
{
    if (!b->err && !(b->err = malloc(TLS_ERR_LEN)))
        return; /* tls_conn_error then says "out of memory" */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err, TLS_ERR_LEN, fmt, ap);
    va_end(ap);
}

size_t tls_conn_pending(const struct tls_conn *c, const uint8_t **p)
{
    const struct tls_conn_base *b = tls_conn_base(c);
    size_t n = b ? byteq_len(&b->out) : 0;
    if (p)
        *p = n ? b->out.data + b->out.rd : NULL;
    return n;
}

void tls_conn_consume(struct tls_conn *c, size_t n)
{
    struct tls_conn_base *b = tls_conn_base(c);
    if (b)
        byteq_consume(&b->out, n);
}

bool tls_conn_handshake_done(const struct tls_conn *c)
{
    const struct tls_conn_base *b = tls_conn_base(c);
    return b && b->done;
}

bool tls_conn_resumed(const struct tls_conn *c)
{
    const struct tls_conn_base *b = tls_conn_base(c);
    return b && b->done && b->resumed;
}

const char *tls_conn_error(const struct tls_conn *c)
{
    const struct tls_conn_base *b = tls_conn_base(c);
    if (!b || (!b->err && !b->failed))
        return NULL;
    return b->err ? b->err : "out of memory";
}

const char *tls_conn_sni(const struct tls_conn *c)
{
    const struct tls_conn_base *b = tls_conn_base(c);
    return b ? b->sni : NULL;
}

static const struct tls_peer *peer_of(const struct tls_conn *c)
{
    const struct tls_conn_base *b = tls_conn_base(c);
    return b ? b->peer : NULL;
}

const char *tls_conn_peer_cn(const struct tls_conn *c)
{
    const struct tls_peer *p = peer_of(c);
    return p ? p->cn : NULL;
}

const char *tls_conn_peer_san(const struct tls_conn *c, size_t i)
{
    const struct tls_peer *p = peer_of(c);
    return p && i < p->nsans ? p->sans[i] : NULL;
}

const char *tls_conn_peer_subject(const struct tls_conn *c)
{
    const struct tls_peer *p = peer_of(c);
    return p ? p->subject : NULL;
}

const char *tls_conn_peer_fingerprint(const struct tls_conn *c)
{
    const struct tls_peer *p = peer_of(c);
    return p ? p->fingerprint : NULL;
}

bool tls_conn_peer_has_name(const struct tls_conn *c, const char *name)
{
    const struct tls_conn_base *b = tls_conn_base(c);
    return b && b->verified && tls_peer_has_name(b->peer, name);
}

bool tls_conn_peer_verified(const struct tls_conn *c)
{
    const struct tls_conn_base *b = tls_conn_base(c);
    return b && b->verified;
}
