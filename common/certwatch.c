/* Certificate file watching: see certwatch.h. */
#include "common/certwatch.h"
#include "common/tls.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CW_MAX_PAIRS 32
#define CW_MAX_DIRS 16
#define CW_SETTLE_MS 200 /* a burst of renames settles before the files are read */
#define CW_RETRY_MS 250  /* an inconsistent pair is looked at again this often ... */
#define CW_RETRIES 40    /* ... for up to 10 s, then left until the next change */

struct cw_pair {
    char *cert, *key;
    char fingerprint[96]; /* of the certificate the running generation loaded */
};

struct cw_dir {
    uv_fs_event_t ev;
    struct certwatch *w;
    char path[4096];
    bool active;
};

struct certwatch {
    uv_loop_t *loop;
    const struct logger *log;
    struct metrics *metrics;
    void (*on_change)(void *arg);
    void *arg;
    struct cw_pair pairs[CW_MAX_PAIRS];
    size_t npairs;
    struct cw_dir *dirs[CW_MAX_DIRS];
    size_t ndirs;
    uv_timer_t timer;
    unsigned retries;
    unsigned open_handles;
    bool closing;
};

static void cw_unref(struct certwatch *w)
{
    if (--w->open_handles == 0 && w->closing) {
        for (size_t i = 0; i < w->npairs; i++) {
            free(w->pairs[i].cert);
            free(w->pairs[i].key);
        }
        free(w);
    }
}

static void dir_closed(uv_handle_t *h)
{
    struct cw_dir *d = h->data;
    struct certwatch *w = d->w;
    free(d);
    cw_unref(w);
}

static void timer_closed(uv_handle_t *h)
{
    cw_unref(h->data);
}

static void iso_time(int64_t t, char *out, size_t cap)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The gauge of one certificate file (paths that would break the label are left out). */
static void set_gauge(struct certwatch *w, const char *file, int64_t not_after)
{
    if (strpbrk(file, "\"\\\n") || strlen(file) > 400)
        return;
    char labels[448];
    snprintf(labels, sizeof labels, "file=\"%s\"", file);
    metric_set(metrics_gauge(w->metrics, "tls_certificate_not_after_seconds",
                             "notAfter (Unix time) of each configured certificate file", labels),
               not_after);
}

static void on_timer(uv_timer_t *t)
{
    struct certwatch *w = t->data;
    struct tls_cert_info info[CW_MAX_PAIRS];
    char err[300];
    for (size_t i = 0; i < w->npairs; i++) {
        int rc = tls_cert_inspect(w->pairs[i].cert, w->pairs[i].key, &info[i], err, sizeof err);
        if (rc) {
            if (++w->retries < CW_RETRIES) {
                LOGD(w->log, NULL, "certificate change: waiting for a consistent pair (%s)", err);
                uv_timer_start(&w->timer, on_timer, CW_RETRY_MS, 0);
            } else {
                LOGE(w->log, NULL, "certificate change not loaded, keeping the running one: %s",
                     err);
                w->retries = 0;
            }
            return;
        }
    }
    w->retries = 0;
    bool changed = false;
    for (size_t i = 0; i < w->npairs; i++) {
        if (!strcmp(info[i].fingerprint, w->pairs[i].fingerprint))
            continue;
        char na[32];
        iso_time(info[i].not_after, na, sizeof na);
        LOGI(w->log, NULL, "certificate %s changed: subject %s, serial %s, notAfter %s",
             w->pairs[i].cert, info[i].subject, info[i].serial, na);
        changed = true;
    }
    if (changed)
        w->on_change(w->arg); /* reloads, then certwatch_set records what was loaded */
}

/* True if name (an entry of dir) is one of the watched files: other files there (logs,
 * editors' temporaries) do not count. */
static bool watched_name(const struct certwatch *w, const char *dir, const char *name)
{
    size_t dl = strlen(dir), nl = strlen(name);
    for (size_t i = 0; i < w->npairs; i++) {
        const char *f[2] = {w->pairs[i].cert, w->pairs[i].key};
        for (size_t j = 0; j < 2; j++) {
            if (!f[j])
                continue;
            size_t fl = strlen(f[j]);
            const char *base = strrchr(f[j], '/');
            base = base ? base + 1 : f[j];
            bool same_dir = base == f[j]
                                ? !strcmp(dir, ".")
                                : (size_t)(base - f[j]) - 1 == dl && !strncmp(f[j], dir, dl);
            if (same_dir && fl - (size_t)(base - f[j]) == nl && !strcmp(base, name))
                return true;
        }
    }
    return false;
}

static void on_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    struct cw_dir *d = h->data;
    (void)events;
    if (status < 0 || d->w->closing || (filename && !watched_name(d->w, d->path, filename)))
        return;
    d->w->retries = 0;
    uv_timer_start(&d->w->timer, on_timer, CW_SETTLE_MS, 0);
}

int certwatch_create(uv_loop_t *loop, const struct logger *log, struct metrics *metrics,
                     void (*on_change)(void *arg), void *arg, struct certwatch **out)
{
    struct certwatch *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->loop = loop;
    w->log = log;
    w->metrics = metrics;
    w->on_change = on_change;
    w->arg = arg;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    w->open_handles = 1;
    *out = w;
    return 0;
}

static void add_pair(const char *cert, const char *key, void *arg)
{
    struct certwatch *w = arg;
    if (w->npairs == CW_MAX_PAIRS)
        return;
    for (size_t i = 0; i < w->npairs; i++)
        if (!strcmp(w->pairs[i].cert, cert) &&
            ((!key && !w->pairs[i].key) ||
             (key && w->pairs[i].key && !strcmp(key, w->pairs[i].key))))
            return;
    struct cw_pair *p = &w->pairs[w->npairs];
    p->cert = strdup(cert);
    p->key = key ? strdup(key) : NULL;
    if (!p->cert || (key && !p->key)) {
        free(p->cert);
        free(p->key);
        return;
    }
    p->fingerprint[0] = '\0';
    w->npairs++;
}

static void watch_dir_of(struct certwatch *w, const char *file, bool *keep)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", file);
    const char *dir = dirname(tmp);
    for (size_t i = 0; i < w->ndirs; i++)
        if (!strcmp(w->dirs[i]->path, dir)) {
            keep[i] = true;
            return;
        }
    if (w->ndirs == CW_MAX_DIRS)
        return;
    struct cw_dir *d = calloc(1, sizeof *d);
    if (!d)
        return;
    d->w = w;
    snprintf(d->path, sizeof d->path, "%s", dir);
    uv_fs_event_init(w->loop, &d->ev);
    d->ev.data = d;
    w->open_handles++;
    int rc = uv_fs_event_start(&d->ev, on_event, d->path, 0);
    if (rc) {
        LOGW(w->log, NULL, "cannot watch %s for certificate renewals: %s (SIGHUP still reloads)",
             d->path, uv_strerror(rc));
        uv_close((uv_handle_t *)&d->ev, dir_closed);
        return;
    }
    keep[w->ndirs] = true;
    w->dirs[w->ndirs++] = d;
}

void certwatch_set(struct certwatch *w, const void *cfg, const struct cfg_key *keys)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->npairs; i++) {
        free(w->pairs[i].cert);
        free(w->pairs[i].key);
    }
    w->npairs = 0;
    cfg_each_cert_pair(cfg, keys, add_pair, w);
    bool keep[CW_MAX_DIRS] = {false};
    for (size_t i = 0; i < w->npairs; i++) {
        struct tls_cert_info info;
        char err[300];
        /* What the reload just loaded (it validated the files a moment ago). */
        if (tls_cert_inspect(w->pairs[i].cert, NULL, &info, err, sizeof err) == 0) {
            snprintf(w->pairs[i].fingerprint, sizeof w->pairs[i].fingerprint, "%s",
                     info.fingerprint);
            set_gauge(w, w->pairs[i].cert, info.not_after);
        }
        watch_dir_of(w, w->pairs[i].cert, keep);
        if (w->pairs[i].key)
            watch_dir_of(w, w->pairs[i].key, keep);
    }
    /* Directories no longer named by the config are let go. */
    size_t n = 0;
    for (size_t i = 0; i < w->ndirs; i++) {
        if (keep[i]) {
            w->dirs[n++] = w->dirs[i];
        } else {
            uv_fs_event_stop(&w->dirs[i]->ev);
            uv_close((uv_handle_t *)&w->dirs[i]->ev, dir_closed);
        }
    }
    w->ndirs = n;
}

void certwatch_close(struct certwatch *w)
{
    if (!w || w->closing)
        return;
    w->closing = true;
    for (size_t i = 0; i < w->ndirs; i++) {
        uv_fs_event_stop(&w->dirs[i]->ev);
        uv_close((uv_handle_t *)&w->dirs[i]->ev, dir_closed);
    }
    w->ndirs = 0;
    uv_close((uv_handle_t *)&w->timer, timer_closed);
}
