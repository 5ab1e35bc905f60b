/* Certificate name matching (certname.h): RFC 6125 with ASCII case folding (RFC 4343). */
#include "common/certname.h"

#include <string.h>

static unsigned char fold(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

/* ASCII case-insensitive equality of n bytes (not strncasecmp: it stops at a NUL and
 * follows the locale). */
static bool same(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fold((unsigned char)a[i]) != fold((unsigned char)b[i]))
            return false;
    return true;
}

/* Number of labels of a well-formed name: non-empty, no NUL, no empty label (no leading,
 * trailing or doubled dot), no '*' unless star; 0 if not well-formed. */
static size_t labels(const char *s, size_t n, bool star)
{
    size_t k = 1, len = 0;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\0' || (s[i] == '*' && !star))
            return 0;
        if (s[i] == '.') {
            if (len == 0)
                return 0;
            k++;
            len = 0;
        } else {
            len++;
        }
    }
    return len ? k : 0;
}

static bool match_exact(const char *p, size_t plen, const char *n, size_t nlen)
{
    return plen && plen == nlen && !memchr(p, '\0', plen) && same(p, n, nlen);
}

static bool match_wildcard(const char *p, size_t plen, const char *n, size_t nlen)
{
    if (labels(n, nlen, false) == 0)
        return false;
    if (plen < 2 || p[0] != '*' || p[1] != '.')
        return labels(p, plen, false) && match_exact(p, plen, n, nlen);
    /* "*." then a name of two labels at least: never "*.com". */
    const char *base = p + 2;
    size_t blen = plen - 2;
    if (labels(base, blen, false) < 2)
        return false;
    const char *dot = memchr(n, '.', nlen);
    if (!dot) /* labels() > 0: the first label is non-empty */
        return false;
    size_t rest = nlen - (size_t)(dot - n) - 1;
    return rest == blen && same(dot + 1, base, blen);
}

static bool match_suffix(const char *p, size_t plen, const char *n, size_t nlen)
{
    if (labels(p, plen, false) < 2 || labels(n, nlen, false) == 0)
        return false;
    if (nlen == plen)
        return same(p, n, nlen);
    return nlen > plen + 1 && n[nlen - plen - 1] == '.' && same(n + nlen - plen, p, plen);
}

static bool match_leading(const char *p, size_t plen, const char *n, size_t nlen)
{
    if (labels(p, plen, false) == 0 || labels(n, nlen, false) == 0)
        return false;
    if (plen == nlen)
        return same(p, n, nlen);
    return plen > nlen + 1 && p[nlen] == '.' && same(p, n, nlen);
}

bool cert_name_match(const char *pattern, size_t plen, const char *name, size_t nlen,
                     enum cert_name_mode mode)
{
    if (!pattern || !name)
        return false;
    switch (mode) {
    case CERT_NAME_EXACT:
        return match_exact(pattern, plen, name, nlen);
    case CERT_NAME_WILDCARD_FIRST_LABEL:
        return match_wildcard(pattern, plen, name, nlen);
    case CERT_NAME_DOMAIN_SUFFIX:
        return match_suffix(pattern, plen, name, nlen);
    case CERT_NAME_LEADING_LABELS:
        return match_leading(pattern, plen, name, nlen);
    }
    return false;
}

/* One certificate name against the wanted name, in the roles the mode gives them. */
static bool one(const char *cert, const char *name, size_t nlen, enum cert_name_mode mode)
{
    size_t clen = strlen(cert);
    if (mode == CERT_NAME_DOMAIN_SUFFIX)
        return cert_name_match(name, nlen, cert, clen, mode);
    return cert_name_match(cert, clen, name, nlen, mode);
}

bool cert_names_match(const char *cn, const char *const *sans, size_t nsans, const char *name,
                      enum cert_name_mode mode)
{
    if (!name || !*name)
        return false;
    size_t nlen = strlen(name);
    bool has_dns = false;
    for (size_t i = 0; sans && i < nsans; i++) {
        if (!sans[i])
            continue;
        has_dns = true;
        if (one(sans[i], name, nlen, mode))
            return true;
    }
    /* RFC 6125 6.4.4: the CN counts only when there is no DNS name. */
    return !has_dns && cn && one(cn, name, nlen, mode);
}
