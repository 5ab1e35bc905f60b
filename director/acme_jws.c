/* JWS for ACME: JWK, thumbprint, key authorization, protected header, flattened JSON. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/crypto.h"
#include "director/acme_jws.h"

/* base64url of n bytes into a new string. */
static char *b64u(const void *p, size_t n)
{
    size_t cap = (n + 2) / 3 * 4 + 1;
    char *s = malloc(cap);
    if (s && base64url_encode(p, n, s, cap) < 0) {
        free(s);
        s = NULL;
    }
    return s;
}

int acme_jwk(const uint8_t x[32], const uint8_t y[32], char *out, size_t cap)
{
    char xs[48], ys[48];
    if (base64url_encode(x, 32, xs, sizeof xs) < 0 || base64url_encode(y, 32, ys, sizeof ys) < 0)
        return -EINVAL;
    int n =
        snprintf(out, cap, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", xs, ys);
    return n < 0 || (size_t)n >= cap ? -ENOSPC : 0;
}

int acme_jwk_thumbprint(const char *jwk, char out[ACME_THUMB_LEN + 1])
{
    uint8_t d[SHA256_LEN];
    crypto_sha256(jwk, strlen(jwk), d);
    char tmp[48]; /* the encoder needs room for the padding it then strips */
    if (base64url_encode(d, sizeof d, tmp, sizeof tmp) != ACME_THUMB_LEN)
        return -EINVAL;
    memcpy(out, tmp, ACME_THUMB_LEN + 1);
    return 0;
}

static bool b64u_text(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_'))
            return false;
    return true;
}

int acme_key_authorization(const char *token, const char *thumbprint, char *out, size_t cap)
{
    /* The token lands in a URL path and in a challenge certificate: only its alphabet. */
    if (!b64u_text(token) || !b64u_text(thumbprint))
        return -EINVAL;
    int n = snprintf(out, cap, "%s.%s", token, thumbprint);
    return n < 0 || (size_t)n >= cap ? -ENOSPC : 0;
}

char *acme_jws_protected(const char *jwk, const char *kid, const char *nonce, const char *url)
{
    if (!jwk == !kid || !nonce || !url)
        return NULL;
    json_t *h = json_object();
    json_object_set_new(h, "alg", json_string("ES256"));
    if (jwk) {
        json_t *k = json_loads(jwk, 0, NULL);
        if (!k || !json_is_object(k)) {
            json_decref(k);
            json_decref(h);
            return NULL;
        }
        json_object_set_new(h, "jwk", k);
    } else {
        json_object_set_new(h, "kid", json_string(kid));
    }
    json_object_set_new(h, "nonce", json_string(nonce));
    json_object_set_new(h, "url", json_string(url));
    char *s = json_dumps(h, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(h);
    return s;
}

int acme_jws_flattened(const char *protected_json, const char *payload, acme_sign_fn sign,
                       void *sign_arg, char **out)
{
    *out = NULL;
    char *p = b64u(protected_json, strlen(protected_json));
    char *b = b64u(payload, strlen(payload));
    char *input = NULL, *sig_s = NULL;
    int rc = -ENOMEM;
    if (!p || !b)
        goto done;
    size_t n = strlen(p) + 1 + strlen(b);
    input = malloc(n + 1);
    if (!input)
        goto done;
    snprintf(input, n + 1, "%s.%s", p, b);
    uint8_t sig[64];
    rc = sign(input, n, sig, sign_arg);
    if (rc)
        goto done;
    rc = -ENOMEM;
    sig_s = b64u(sig, sizeof sig);
    if (!sig_s)
        goto done;
    json_t *j = json_pack("{s:s, s:s, s:s}", "protected", p, "payload", b, "signature", sig_s);
    *out = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    rc = *out ? 0 : -ENOMEM;
done:
    free(p);
    free(b);
    free(input);
    free(sig_s);
    return rc;
}
