/* Append-only registration store: see regstore.h. */
#include "director/regstore.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REGSTORE_SLACK 1024 /* lines past 2x live before a rewrite */

struct regstore {
    char *path;
    int fd;
    size_t lines; /* in the file now */
};

int regstore_open(const char *path, struct regstore **out)
{
    struct regstore *s = calloc(1, sizeof(*s));
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return -ENOMEM;
    }
    s->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (s->fd < 0) {
        int rc = -errno;
        free(s->path);
        free(s);
        return rc;
    }
    FILE *f = fopen(path, "r");
    for (int ch; f && (ch = getc(f)) != EOF;)
        s->lines += ch == '\n';
    if (f)
        fclose(f);
    *out = s;
    return 0;
}

void regstore_close(struct regstore *s)
{
    if (!s)
        return;
    close(s->fd);
    free(s->path);
    free(s);
}

static bool clean(const char *v)
{
    return v && !strpbrk(v, "\t\r\n");
}

static int format(const struct regstore_entry *e, char *out, size_t cap)
{
    if (!clean(e->user) || !clean(e->contact) || !clean(e->path) || !*e->user)
        return -EINVAL;
    int n = snprintf(out, cap, "B\t%" PRId64 "\t%s\t%s\t%s\n", e->expires_s, e->user, e->contact,
                     *e->path ? e->path : "-");
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : n;
}

int regstore_append(struct regstore *s, const struct regstore_entry *e)
{
    char line[1024];
    int n = format(e, line, sizeof(line));
    if (n < 0)
        return n;
    /* One write(2) of a whole line: with O_APPEND a crash leaves at most a torn last line. */
    if (write(s->fd, line, (size_t)n) != n)
        return -EIO;
    s->lines++;
    return 0;
}

int regstore_wants_compaction(const struct regstore *s, size_t live)
{
    return s->lines > 2 * live + REGSTORE_SLACK;
}

int regstore_rewrite(struct regstore *s, const struct regstore_entry *e, size_t n)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", s->path) >= sizeof(tmp))
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = 0;
    char line[1024];
    for (size_t i = 0; i < n && rc == 0; i++) {
        int len = format(&e[i], line, sizeof(line));
        if (len > 0 && write(fd, line, (size_t)len) != len)
            rc = -EIO;
    }
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    close(fd);
    if (rc == 0 && rename(tmp, s->path) < 0)
        rc = -errno;
    if (rc < 0) {
        unlink(tmp);
        return rc;
    }
    int nfd = open(s->path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (nfd < 0)
        return -errno;
    close(s->fd);
    s->fd = nfd;
    s->lines = n;
    return 0;
}

/* ---- reading back ---- */

struct parsed {
    char *user, *contact, *path;
    int64_t expires_s;
};

static bool parse_line(char *line, struct parsed *p)
{
    char *save = NULL, *f[5];
    for (int i = 0; i < 5; i++)
        if (!(f[i] = strtok_r(i ? NULL : line, "\t", &save)))
            return false;
    if (strcmp(f[0], "B") != 0 || strtok_r(NULL, "\t", &save))
        return false;
    char *end;
    errno = 0;
    p->expires_s = strtoll(f[1], &end, 10);
    if (errno || *end || !*f[2])
        return false;
    p->user = f[2];
    p->contact = f[3];
    p->path = strcmp(f[4], "-") == 0 ? "" : f[4];
    return true;
}

int regstore_load(const char *path, int64_t now_s, regstore_cb cb, void *arg, size_t *bad)
{
    *bad = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return -errno;
    struct parsed *v = NULL;
    char **lines = NULL;
    size_t n = 0, cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    int rc = 0;
    while ((len = getline(&line, &lcap, f)) >= 0) {
        if (len == 0 || line[len - 1] != '\n') { /* torn last write */
            ++*bad;
            continue;
        }
        line[len - 1] = 0;
        struct parsed p;
        char *copy = strdup(line);
        if (!copy) {
            rc = -ENOMEM;
            break;
        }
        if (!parse_line(copy, &p)) {
            free(copy);
            ++*bad;
            continue;
        }
        size_t i = 0; /* the last line for a user replaces its earlier one */
        while (i < n && strcmp(v[i].user, p.user) != 0)
            i++;
        if (i == n) {
            if (n == cap) {
                size_t nc = cap ? 2 * cap : 64;
                struct parsed *nv = realloc(v, nc * sizeof(*v));
                char **nl = nv ? realloc(lines, nc * sizeof(*lines)) : NULL;
                if (nv)
                    v = nv;
                if (nl)
                    lines = nl;
                if (!nv || !nl) {
                    free(copy);
                    rc = -ENOMEM;
                    break;
                }
                cap = nc;
            }
            n++;
        } else {
            free(lines[i]);
        }
        v[i] = p;
        lines[i] = copy;
    }
    free(line);
    fclose(f);
    int live = 0;
    for (size_t i = 0; i < n; i++) {
        if (rc == 0 && v[i].expires_s > now_s) {
            struct regstore_entry e = {v[i].user, v[i].contact, v[i].path, v[i].expires_s};
            cb(&e, arg);
            live++;
        }
        free(lines[i]);
    }
    free(v);
    free(lines);
    return rc < 0 ? rc : live;
}
