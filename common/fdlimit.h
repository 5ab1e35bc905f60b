/* The open-file limit (ulimit -n) and the reserve kept below it. At the limit the kernel's
 * accept() fails and libuv resets the connection silently; worse, the daemon can then open
 * nothing (a connection inward, a certificate file on reload). So an accepted connection
 * whose descriptor falls in the last FD_RESERVE numbers (the kernel hands out the lowest free
 * number, so this is the process running out) is refused at once, and the reserve stays free
 * for closing cleanly and serving the connections already accepted. */
#ifndef COMMON_FDLIMIT_H
#define COMMON_FDLIMIT_H

#include <stdbool.h>
#include <stddef.h>

#include "common/log.h"

#define FD_RESERVE 32

/* The soft RLIMIT_NOFILE now (a huge number when unlimited). */
size_t fdlimit_nofile(void);

/* True when descriptor fd eats into the reserve below the limit. */
bool fdlimit_in_reserve(int fd);

/* At start: warns when the limit cannot hold `need` connections (one descriptor each) plus
 * the reserve, naming the key that asks for them. Returns true if it warned. */
bool fdlimit_check(const struct logger *lg, const char *key, size_t need);

#endif
