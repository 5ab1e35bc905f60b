/* Socket addresses: parse "host:port" / "[v6]:port", format, compare, CIDR match. */
#ifndef COMMON_ADDR_H
#define COMMON_ADDR_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct addr {
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
        struct sockaddr_storage ss;
    } u;
};

/* "1.2.3.4:5", "[::1]:5", or a bare host with default_port. Numeric only (no DNS). */
int addr_parse(struct addr *out, const char *text, uint16_t default_port);
int addr_from_sockaddr(struct addr *out, const struct sockaddr *sa);
socklen_t addr_len(const struct addr *a);
uint16_t addr_port(const struct addr *a);
void addr_set_port(struct addr *a, uint16_t port);
int addr_family(const struct addr *a);
/* "1.2.3.4:5" or "[::1]:5" into out (>= ADDR_STRLEN); returns out. */
#define ADDR_STRLEN 64
const char *addr_format(const struct addr *a, char *out);
/* Host part only, no port. */
const char *addr_format_host(const struct addr *a, char *out);
bool addr_eq(const struct addr *a, const struct addr *b);      /* host and port */
bool addr_host_eq(const struct addr *a, const struct addr *b); /* host only */
/* The host's raw bytes (4 for IPv4, 16 for IPv6) and their count: a key for per-address
 * tables such as rate limits. */
const void *addr_host_bytes(const struct addr *a, size_t *len);
bool addr_is_loopback(const struct addr *a);
bool addr_is_any(const struct addr *a);
/* Hash of host (and port if with_port) for tables. */
uint64_t addr_hash(const struct addr *a, bool with_port);

/* A network prefix: "10.0.0.0/8", "fd00::/8", or a single host. */
struct cidr {
    struct addr base;
    uint8_t bits;
};
int cidr_parse(struct cidr *out, const char *text);
bool cidr_contains(const struct cidr *c, const struct addr *a);
/* True if any of the n prefixes contains a. */
bool cidr_list_contains(const struct cidr *list, size_t n, const struct addr *a);

#endif
