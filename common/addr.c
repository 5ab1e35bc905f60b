/* Numeric socket addresses: parsing, formatting, comparison and prefix matching. */
#include "common/addr.h"
#include "common/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_port(const char *s, uint16_t *out)
{
    char *end;
    if (!*s)
        return -EINVAL;
    long v = strtol(s, &end, 10);
    if (*end || v < 0 || v > 65535)
        return -EINVAL;
    *out = (uint16_t)v;
    return 0;
}

int addr_parse(struct addr *out, const char *text, uint16_t default_port)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *port_s = NULL;
    struct addr a;
    memset(&a, 0, sizeof a);
    if (!text || !*text)
        return -EINVAL;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || (size_t)(close - text - 1) >= sizeof host)
            return -EINVAL;
        memcpy(host, text + 1, close - text - 1);
        host[close - text - 1] = '\0';
        if (close[1] == ':')
            port_s = close + 2;
        else if (close[1])
            return -EINVAL;
    } else {
        const char *colon = strchr(text, ':');
        if (colon && strchr(colon + 1, ':')) {
            colon = NULL; /* bare IPv6 without brackets: no port */
        }
        size_t hl = colon ? (size_t)(colon - text) : strlen(text);
        if (hl >= sizeof host)
            return -EINVAL;
        memcpy(host, text, hl);
        host[hl] = '\0';
        if (colon)
            port_s = colon + 1;
    }
    uint16_t port = default_port;
    if (port_s && parse_port(port_s, &port))
        return -EINVAL;
    if (inet_pton(AF_INET, host, &a.u.in4.sin_addr) == 1) {
        a.u.in4.sin_family = AF_INET;
        a.u.in4.sin_port = htons(port);
    } else if (inet_pton(AF_INET6, host, &a.u.in6.sin6_addr) == 1) {
        a.u.in6.sin6_family = AF_INET6;
        a.u.in6.sin6_port = htons(port);
    } else {
        return -EINVAL;
    }
    *out = a;
    return 0;
}

int addr_from_sockaddr(struct addr *out, const struct sockaddr *sa)
{
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET)
        memcpy(&out->u.in4, sa, sizeof out->u.in4);
    else if (sa->sa_family == AF_INET6)
        memcpy(&out->u.in6, sa, sizeof out->u.in6);
    else
        return -EAFNOSUPPORT;
    return 0;
}

socklen_t addr_len(const struct addr *a)
{
    return a->u.sa.sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

int addr_family(const struct addr *a)
{
    return a->u.sa.sa_family;
}

uint16_t addr_port(const struct addr *a)
{
    return ntohs(a->u.sa.sa_family == AF_INET6 ? a->u.in6.sin6_port : a->u.in4.sin_port);
}

void addr_set_port(struct addr *a, uint16_t port)
{
    if (a->u.sa.sa_family == AF_INET6)
        a->u.in6.sin6_port = htons(port);
    else
        a->u.in4.sin_port = htons(port);
}

const char *addr_format_host(const struct addr *a, char *out)
{
    if (a->u.sa.sa_family == AF_INET6)
        inet_ntop(AF_INET6, &a->u.in6.sin6_addr, out, INET6_ADDRSTRLEN);
    else if (a->u.sa.sa_family == AF_INET)
        inet_ntop(AF_INET, &a->u.in4.sin_addr, out, ADDR_STRLEN);
    else
        snprintf(out, ADDR_STRLEN, "-");
    return out;
}

const char *addr_format(const struct addr *a, char *out)
{
    char host[ADDR_STRLEN];
    addr_format_host(a, host);
    host[INET6_ADDRSTRLEN - 1] = '\0'; /* bounds the length for the compiler */
    if (a->u.sa.sa_family == AF_INET6)
        snprintf(out, ADDR_STRLEN, "[%.46s]:%u", host, addr_port(a));
    else if (a->u.sa.sa_family == AF_INET)
        snprintf(out, ADDR_STRLEN, "%.46s:%u", host, addr_port(a));
    else
        snprintf(out, ADDR_STRLEN, "-");
    return out;
}

const void *addr_host_bytes(const struct addr *a, size_t *len)
{
    if (a->u.sa.sa_family == AF_INET6) {
        *len = 16;
        return &a->u.in6.sin6_addr;
    }
    *len = 4;
    return &a->u.in4.sin_addr;
}

bool addr_host_eq(const struct addr *a, const struct addr *b)
{
    if (a->u.sa.sa_family != b->u.sa.sa_family)
        return false;
    if (a->u.sa.sa_family == AF_INET)
        return a->u.in4.sin_addr.s_addr == b->u.in4.sin_addr.s_addr;
    if (a->u.sa.sa_family == AF_INET6)
        return memcmp(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr, 16) == 0;
    return false;
}

bool addr_eq(const struct addr *a, const struct addr *b)
{
    return addr_host_eq(a, b) && addr_port(a) == addr_port(b);
}

bool addr_is_loopback(const struct addr *a)
{
    if (a->u.sa.sa_family == AF_INET)
        return (ntohl(a->u.in4.sin_addr.s_addr) >> 24) == 127;
    if (a->u.sa.sa_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&a->u.in6.sin6_addr) ||
               (IN6_IS_ADDR_V4MAPPED(&a->u.in6.sin6_addr) && a->u.in6.sin6_addr.s6_addr[12] == 127);
    return false;
}

bool addr_is_any(const struct addr *a)
{
    if (a->u.sa.sa_family == AF_INET)
        return a->u.in4.sin_addr.s_addr == 0;
    if (a->u.sa.sa_family == AF_INET6)
        return IN6_IS_ADDR_UNSPECIFIED(&a->u.in6.sin6_addr);
    return false;
}

uint64_t addr_hash(const struct addr *a, bool with_port)
{
    /* FNV-1a over the host bytes (and port): cheap and good enough for table spreading. */
    const uint8_t *p;
    size_t n;
    if (a->u.sa.sa_family == AF_INET6) {
        p = a->u.in6.sin6_addr.s6_addr;
        n = 16;
    } else {
        p = (const uint8_t *)&a->u.in4.sin_addr;
        n = 4;
    }
    uint64_t h = fnv1a(FNV1A_INIT, p, n);
    if (with_port)
        h = (h ^ addr_port(a)) * FNV1A_PRIME;
    return h;
}

int cidr_parse(struct cidr *out, const char *text)
{
    char host[ADDR_STRLEN];
    const char *slash = strchr(text, '/');
    size_t hl = slash ? (size_t)(slash - text) : strlen(text);
    if (hl >= sizeof host)
        return -EINVAL;
    memcpy(host, text, hl);
    host[hl] = '\0';
    struct cidr c;
    if (addr_parse(&c.base, host, 0))
        return -EINVAL;
    int maxbits = addr_family(&c.base) == AF_INET6 ? 128 : 32;
    long bits = maxbits;
    if (slash) {
        char *end;
        bits = strtol(slash + 1, &end, 10);
        if (!slash[1] || *end || bits < 0 || bits > maxbits)
            return -EINVAL;
    }
    c.bits = (uint8_t)bits;
    *out = c;
    return 0;
}

static bool prefix_match(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned full = bits / 8, rest = bits % 8;
    if (memcmp(a, b, full))
        return false;
    if (!rest)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (b[full] & mask);
}

bool cidr_contains(const struct cidr *c, const struct addr *a)
{
    int cf = addr_family(&c->base), af = addr_family(a);
    if (cf == AF_INET && af == AF_INET)
        return prefix_match((const uint8_t *)&c->base.u.in4.sin_addr,
                            (const uint8_t *)&a->u.in4.sin_addr, c->bits);
    if (cf == AF_INET6 && af == AF_INET6)
        return prefix_match(c->base.u.in6.sin6_addr.s6_addr, a->u.in6.sin6_addr.s6_addr, c->bits);
    if (cf == AF_INET && af == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&a->u.in6.sin6_addr))
        return prefix_match((const uint8_t *)&c->base.u.in4.sin_addr,
                            a->u.in6.sin6_addr.s6_addr + 12, c->bits);
    return false;
}

bool cidr_list_contains(const struct cidr *list, size_t n, const struct addr *a)
{
    for (size_t i = 0; i < n; i++)
        if (cidr_contains(&list[i], a))
            return true;
    return false;
}
