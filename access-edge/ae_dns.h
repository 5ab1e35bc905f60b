/* Federation partner lookup: DNS SRV `_sipfederationtls._tcp.<domain>` then the addresses
 * of its first targets in RFC 2782 order (c-ares on the libuv loop), with a small
 * positive/negative cache that skips a target whose connection failed. */
#ifndef AE_DNS_H
#define AE_DNS_H

#include <uv.h>

#include "common/addr.h"

struct ae_dns;

/* status 0 and the partner edge's address (the first SRV target found, and its name), or a negative
 * errno
 * (-ENOENT: no such record, -ETIMEDOUT, -EIO). */
typedef void (*ae_dns_cb)(int status, const struct addr *to, const char *target, void *arg);

/* servers: "127.0.0.1:5353" style list for c-ares, or NULL for the system resolver. */
int ae_dns_create(uv_loop_t *loop, const char *servers, struct ae_dns **out);
/* Looks up the partner edge of domain; cb runs later from the loop (never inline). */
int ae_dns_partner(struct ae_dns *d, const char *domain, ae_dns_cb cb, void *arg);
/* A cached answer (fresh within ttl_ms): 1 with *to set, 0 if unknown, -ENOENT if known bad. */
int ae_dns_cached(struct ae_dns *d, const char *domain, uint64_t ttl_ms, struct addr *to);
/* A connection to to (a partner edge found by SRV) failed: the lookups of ae_dns_cached skip
 * it for hold_ms and answer with the domain's next SRV target. */
void ae_dns_target_failed(struct ae_dns *d, const struct addr *to, uint64_t hold_ms);
/* Cancels pending lookups (their callbacks run with -ECANCELED) and frees once closed. */
void ae_dns_destroy(struct ae_dns *d);

#endif
