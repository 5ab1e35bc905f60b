/* When an edge needs a new certificate, and how long to wait after a failed order. Pure. */
#ifndef DIRECTOR_ACME_SCHED_H
#define DIRECTOR_ACME_SCHED_H

#include "common/ctl.h"
#include "director/acme_proto.h"
#include <stdint.h>

enum acme_need {
    ACME_NEED_NONE = 0,    /* valid for every name, not yet due */
    ACME_NEED_MISSING,     /* no certificate reported (or it names nothing) */
    ACME_NEED_NAMES,       /* it lacks a configured name */
    ACME_NEED_SELF_SIGNED, /* the edge's placeholder */
    ACME_NEED_EXPIRED,     /* past not_after */
    ACME_NEED_RENEW,       /* in its renewal window */
};
/* "none", "missing", "names", "self-signed", "expired", "renew". */
const char *acme_need_name(enum acme_need n);

/* Whether the certificate st describes (NULL: the edge has reported none) needs replacing
 * by one for names[0..n) at unix time now. Renewal is due at not_before + 2/3 of the
 * lifetime, or at the start of the CA's ARI window when ari is given (a window the CA
 * moved earlier, e.g. for a revocation, counts). *due (optional) gets when it is (or
 * was) due; 0 when it needs replacing for another reason. */
enum acme_need acme_sched_need(const struct ctl_cert_status *st, const char *const *names, size_t n,
                               const struct acme_renewal_info *ari, int64_t now, int64_t *due);

/* Delay before attempt number failures + 1 after `failures` (>= 1) failed orders in a row:
 * min * 2^(failures-1), at most max, with jitter taking it down to no less than half of
 * that (and never under min). rnd: a random number (the caller's; tests pass fixed ones). */
uint64_t acme_sched_backoff_ms(unsigned failures, uint64_t min_ms, uint64_t max_ms, uint32_t rnd);

#endif
