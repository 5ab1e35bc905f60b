/* ARI certificate identifiers: the AuthorityKeyIdentifier from a certificate's DER, and the
 * certID built from it and the serial. */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/crypto.h"
#include "director/acme_ari.h"

struct der {
    const uint8_t *p;
    size_t n;
};

/* Takes one TLV off the front of in: its tag and its contents. */
static int der_next(struct der *in, uint8_t *tag, struct der *val)
{
    if (in->n < 2)
        return -EBADMSG;
    *tag = in->p[0];
    size_t len = in->p[1], hdr = 2;
    if (len & 0x80) {
        size_t k = len & 0x7f;
        if (k == 0 || k > 3 || in->n < 2 + k)
            return -EBADMSG; /* indefinite or absurd lengths: not DER we expect */
        len = 0;
        for (size_t i = 0; i < k; i++)
            len = len << 8 | in->p[2 + i];
        hdr += k;
    }
    if (len > in->n - hdr)
        return -EBADMSG;
    val->p = in->p + hdr;
    val->n = len;
    in->p += hdr + len;
    in->n -= hdr + len;
    return 0;
}

int acme_cert_aki_der(const uint8_t *der, size_t n, uint8_t aki[ACME_AKI_MAX], size_t *len)
{
    static const uint8_t oid_aki[] = {0x55, 0x1d, 0x23}; /* 2.5.29.35 */
    struct der in = {der, n}, cert, tbs;
    uint8_t tag;
    if (der_next(&in, &tag, &cert) || tag != 0x30 || der_next(&cert, &tag, &tbs) || tag != 0x30)
        return -EBADMSG;
    while (tbs.n) {
        struct der v;
        if (der_next(&tbs, &tag, &v))
            return -EBADMSG;
        if (tag != 0xa3) /* [3] extensions */
            continue;
        struct der exts;
        if (der_next(&v, &tag, &exts) || tag != 0x30)
            return -EBADMSG;
        while (exts.n) {
            struct der ext, oid, x;
            if (der_next(&exts, &tag, &ext) || tag != 0x30 || der_next(&ext, &tag, &oid) ||
                tag != 0x06)
                return -EBADMSG;
            if (oid.n != sizeof oid_aki || memcmp(oid.p, oid_aki, sizeof oid_aki) != 0)
                continue;
            if (der_next(&ext, &tag, &x))
                return -EBADMSG;
            if (tag == 0x01 && der_next(&ext, &tag, &x)) /* critical BOOLEAN */
                return -EBADMSG;
            struct der seq, ki;
            if (tag != 0x04 || der_next(&x, &tag, &seq) || tag != 0x30)
                return -EBADMSG;
            while (seq.n) {
                if (der_next(&seq, &tag, &ki))
                    return -EBADMSG;
                if (tag == 0x80) { /* [0] IMPLICIT keyIdentifier */
                    if (!ki.n || ki.n > ACME_AKI_MAX)
                        return -EBADMSG;
                    memcpy(aki, ki.p, ki.n);
                    *len = ki.n;
                    return 0;
                }
            }
            return -ENOENT;
        }
        return -ENOENT;
    }
    return -ENOENT;
}

int acme_cert_aki(const char *chain_pem, uint8_t aki[ACME_AKI_MAX], size_t *len)
{
    static const char begin[] = "-----BEGIN CERTIFICATE-----", end[] = "-----END CERTIFICATE-----";
    const char *b = strstr(chain_pem, begin);
    const char *e = b ? strstr(b, end) : NULL;
    if (!b || !e)
        return -EBADMSG;
    b += sizeof begin - 1;
    size_t n = (size_t)(e - b);
    char *txt = malloc(n + 1);
    uint8_t *der = malloc(n);
    int rc = -ENOMEM;
    if (txt && der) {
        size_t t = 0;
        for (size_t i = 0; i < n; i++)
            if (!isspace((unsigned char)b[i]))
                txt[t++] = b[i];
        ssize_t dn = base64_decode(txt, t, der, n);
        rc = dn > 0 ? acme_cert_aki_der(der, (size_t)dn, aki, len) : -EBADMSG;
    }
    free(txt);
    free(der);
    return rc;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

int acme_ari_cert_id(const uint8_t *aki, size_t aki_len, const char *serial_hex, char *out,
                     size_t cap)
{
    uint8_t serial[64];
    size_t n = 1; /* serial[0]: room for the sign byte */
    int hi = -1;
    for (const char *p = serial_hex; *p; p++) {
        if (*p == ':')
            continue;
        int v = hexval(*p);
        if (v < 0)
            return -EINVAL;
        if (hi < 0) {
            hi = v;
            continue;
        }
        if (n == sizeof serial)
            return -EINVAL;
        serial[n++] = (uint8_t)(hi << 4 | v);
        hi = -1;
    }
    if (hi >= 0 || n == 1 || !aki_len || aki_len > ACME_AKI_MAX)
        return -EINVAL;
    /* DER INTEGER contents: no redundant leading zero, a zero before a high bit. */
    size_t s = 1;
    while (n - s > 1 && serial[s] == 0 && !(serial[s + 1] & 0x80))
        s++;
    if (serial[s] & 0x80)
        serial[--s] = 0;
    char a[ACME_AKI_MAX * 2], b[sizeof serial * 2];
    if (base64url_encode(aki, aki_len, a, sizeof a) < 0 ||
        base64url_encode(serial + s, n - s, b, sizeof b) < 0)
        return -EINVAL;
    size_t need = strlen(a) + 1 + strlen(b) + 1;
    if (need > cap)
        return -ENOSPC;
    memcpy(out, a, strlen(a));
    out[strlen(a)] = '.';
    memcpy(out + strlen(a) + 1, b, strlen(b) + 1);
    return 0;
}
