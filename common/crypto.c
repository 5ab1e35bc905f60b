/* HMAC, hashes, CRC-32, randomness and base64 on mbedTLS (the TLS library boundary). */
#include "common/crypto.h"

#include <errno.h>
#include <mbedtls/base64.h>
#include <mbedtls/md.h>
#include <mbedtls/md5.h>
#include <mbedtls/sha1.h>
#include <mbedtls/sha256.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

static void hmac(mbedtls_md_type_t t, const void *key, size_t klen, const void *msg, size_t mlen,
                 uint8_t *out)
{
    mbedtls_md_hmac(mbedtls_md_info_from_type(t), key, klen, msg, mlen, out);
}

void crypto_hmac_sha1(const void *key, size_t klen, const void *msg, size_t mlen,
                      uint8_t out[SHA1_LEN])
{
    hmac(MBEDTLS_MD_SHA1, key, klen, msg, mlen, out);
}

void crypto_hmac_sha256(const void *key, size_t klen, const void *msg, size_t mlen,
                        uint8_t out[SHA256_LEN])
{
    hmac(MBEDTLS_MD_SHA256, key, klen, msg, mlen, out);
}

void crypto_md5(const void *msg, size_t len, uint8_t out[MD5_LEN])
{
    mbedtls_md5_ret(msg, len, out);
}

void crypto_sha256(const void *msg, size_t len, uint8_t out[SHA256_LEN])
{
    mbedtls_sha256_ret(msg, len, out, 0);
}

void crypto_sha1(const void *msg, size_t len, uint8_t out[SHA1_LEN])
{
    mbedtls_sha1_ret(msg, len, out);
}

uint32_t crypto_crc32(const void *msg, size_t len)
{
    /* Bitwise reflected CRC-32 with a nibble table: small, and fast enough for STUN. */
    static const uint32_t t[16] = {
        0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4,
        0x4db26158, 0x5005713c, 0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c,
        0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c,
    };
    const uint8_t *p = msg;
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < len; i++) {
        c ^= p[i];
        c = (c >> 4) ^ t[c & 15];
        c = (c >> 4) ^ t[c & 15];
    }
    return c ^ 0xffffffffu;
}

int crypto_random(void *out, size_t len)
{
    uint8_t *p = out;
    while (len) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -EIO;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

bool crypto_ct_eq(const void *a, const void *b, size_t len)
{
    const volatile uint8_t *x = a, *y = b;
    uint8_t d = 0;
    for (size_t i = 0; i < len; i++)
        d |= x[i] ^ y[i];
    return d == 0;
}

ssize_t base64_encode(const void *in, size_t len, char *out, size_t cap)
{
    size_t olen = 0;
    if (mbedtls_base64_encode((unsigned char *)out, cap, &olen, in, len))
        return -ENOSPC;
    return (ssize_t)olen;
}

ssize_t base64_decode(const char *in, size_t len, uint8_t *out, size_t cap)
{
    size_t olen = 0;
    int rc = mbedtls_base64_decode(out, cap, &olen, (const unsigned char *)in, len);
    if (rc == MBEDTLS_ERR_BASE64_BUFFER_TOO_SMALL)
        return -ENOSPC;
    if (rc)
        return -EINVAL;
    return (ssize_t)olen;
}

ssize_t base64url_encode(const void *in, size_t len, char *out, size_t cap)
{
    ssize_t n = base64_encode(in, len, out, cap);
    if (n < 0)
        return n;
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (ssize_t i = 0; i < n; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    return n;
}

ssize_t base64url_decode(const char *in, size_t len, uint8_t *out, size_t cap)
{
    char tmp[4096];
    if (len + 3 >= sizeof tmp)
        return -ENOSPC;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '+' || c == '/' || c == '=')
            return -EINVAL; /* only the URL alphabet, unpadded */
        tmp[i] = c == '-' ? '+' : c == '_' ? '/' : c;
    }
    size_t n = len;
    if (n % 4 == 1)
        return -EINVAL;
    while (n % 4)
        tmp[n++] = '=';
    return base64_decode(tmp, n, out, cap);
}

void hex_encode(const void *in, size_t len, char *out)
{
    static const char hx[] = "0123456789abcdef";
    const uint8_t *p = in;
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hx[p[i] >> 4];
        out[2 * i + 1] = hx[p[i] & 15];
    }
    out[2 * len] = '\0';
}
