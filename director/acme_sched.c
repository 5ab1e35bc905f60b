/* When an edge needs a new certificate, and the backoff between failed orders. */
#include <strings.h>

#include "director/acme_sched.h"

const char *acme_need_name(enum acme_need n)
{
    static const char *const names[] = {"none",        "missing", "names",
                                        "self-signed", "expired", "renew"};
    return (unsigned)n < sizeof names / sizeof *names ? names[n] : "unknown";
}

static bool has_name(const struct ctl_cert_status *st, const char *name)
{
    for (size_t i = 0; i < st->n_names; i++)
        if (strcasecmp(st->names[i], name) == 0) /* DNS names compare without case */
            return true;
    return false;
}

enum acme_need acme_sched_need(const struct ctl_cert_status *st, const char *const *names, size_t n,
                               const struct acme_renewal_info *ari, int64_t now, int64_t *due)
{
    if (due)
        *due = 0;
    if (!st || !st->n_names || st->not_after <= 0)
        return ACME_NEED_MISSING;
    for (size_t i = 0; i < n; i++)
        if (!has_name(st, names[i]))
            return ACME_NEED_NAMES;
    if (st->self_signed)
        return ACME_NEED_SELF_SIGNED;
    if (now >= st->not_after)
        return ACME_NEED_EXPIRED;
    int64_t life = st->not_after - st->not_before;
    int64_t at = life > 0 ? st->not_before + life / 3 * 2 + (life % 3) * 2 / 3 : st->not_after;
    if (ari && ari->end >= ari->start && ari->start > 0)
        at = ari->start;
    if (due)
        *due = at;
    return now >= at ? ACME_NEED_RENEW : ACME_NEED_NONE;
}

uint64_t acme_sched_backoff_ms(unsigned failures, uint64_t min_ms, uint64_t max_ms, uint32_t rnd)
{
    if (max_ms < min_ms)
        max_ms = min_ms;
    uint64_t base = min_ms;
    for (unsigned i = 1; i < failures && base < max_ms; i++)
        base = base > max_ms / 2 ? max_ms : base * 2;
    if (base > max_ms)
        base = max_ms;
    /* Jitter: anywhere in [base/2, base], so edges that failed together retry apart. */
    uint64_t lo = base / 2 < min_ms ? min_ms : base / 2;
    if (lo >= base)
        return base;
    return lo + (uint64_t)rnd % (base - lo + 1);
}
