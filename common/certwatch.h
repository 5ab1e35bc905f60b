/* Certificate files watched for renewal: the directories of every configured certificate
 * and key are watched (inotify through uv_fs_event: renewal tools rename new files over the
 * old ones, which a watch on the file itself would miss). After a change, once every pair
 * is consistent (the key matches its certificate: a key written before its certificate is
 * retried shortly, never loaded) and some certificate differs from the running one, the
 * change is logged (subject, serial, notAfter) and the callback reloads as SIGHUP would.
 * A gauge per certificate file gives its notAfter: tls_certificate_not_after_seconds. */
#ifndef COMMON_CERTWATCH_H
#define COMMON_CERTWATCH_H

#include "common/cfg.h"
#include "common/log.h"
#include "common/metrics.h"
#include <uv.h>

struct certwatch;

/* on_change runs on loop after a consistent change. */
int certwatch_create(uv_loop_t *loop, const struct logger *log, struct metrics *metrics,
                     void (*on_change)(void *arg), void *arg, struct certwatch **out);
/* The running generation's pairs (cfg_each_cert_pair over cfg): remembered as loaded, their
 * gauges set, their directories watched. Call at start and after every reload. */
void certwatch_set(struct certwatch *w, const void *cfg, const struct cfg_key *keys);
/* Closes the handles; frees asynchronously. NULL is a no-op. */
void certwatch_close(struct certwatch *w);

#endif
