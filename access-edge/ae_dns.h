/* Federation partner lookup: DNS SRV `_sipfederationtls._tcp.<domain>` then the target's
 * address (c-ares on the libuv loop), with a small positive/negative cache. */
#ifndef AE_DNS_H
#define AE_DNS_H

#include <uv.h>

#include "common/addr.h"

struct ae_dns;

/* status 0 and the partner edge's address (and its SRV target name), or a negative errno
 * (-ENOENT: no such record, -ETIMEDOUT, -EIO). */
typedef void (*ae_dns_cb)(int status, const struct addr *to, const char *target, void *arg);

/* servers: "127.0.0.1:5353" style list for c-ares, or NULL for the system resolver. */
int ae_dns_create(uv_loop_t *loop, const char *servers, struct ae_dns **out);
/* Looks up the partner edge of domain; cb runs later from the loop (never inline). */
int ae_dns_partner(struct ae_dns *d, const char *domain, ae_dns_cb cb, void *arg);
/* A cached answer (fresh within ttl_ms): 1 with *to set, 0 if unknown, -ENOENT if known bad. */
int ae_dns_cached(struct ae_dns *d, const char *domain, uint64_t ttl_ms, struct addr *to);
/* Cancels pending lookups (their callbacks run with -ECANCELED) and frees once closed. */
void ae_dns_destroy(struct ae_dns *d);

#endif
