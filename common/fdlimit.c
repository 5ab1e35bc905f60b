/* Open-file limit and reserve: see fdlimit.h. */
#include "common/fdlimit.h"

#include <stdint.h>
#include <sys/resource.h>

size_t fdlimit_nofile(void)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY || r.rlim_cur > SIZE_MAX)
        return SIZE_MAX;
    return (size_t)r.rlim_cur;
}

bool fdlimit_in_reserve(int fd)
{
    size_t lim = fdlimit_nofile();
    return fd >= 0 && lim != SIZE_MAX && (size_t)fd + FD_RESERVE >= lim;
}

bool fdlimit_check(const struct logger *lg, const char *key, size_t need)
{
    size_t lim = fdlimit_nofile();
    if (lim == SIZE_MAX || need + 2 * FD_RESERVE <= lim)
        return false;
    LOGW(lg, NULL,
         "open-file limit (ulimit -n) is %zu, below the %zu that %s: %zu needs; connections "
         "past about %zu will be refused (raise LimitNOFILE or ulimit -n)",
         lim, need + 2 * FD_RESERVE, key, need, lim > 2 * FD_RESERVE ? lim - 2 * FD_RESERVE : 0);
    return true;
}
