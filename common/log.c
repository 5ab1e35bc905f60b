/* One line per event on stderr, as text or JSON lines; each event is a single write(2). */
#include "common/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_init(struct logger *lg, const char *component)
{
    lg->level = LOG_INFO;
    lg->format = LOG_TEXT;
    lg->component = component;
    lg->fd = 2;
}

/* Appends s to out as JSON string content (without quotes). */
static size_t json_escape(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

void log_vemit(const struct logger *lg, enum log_level lvl, const struct addr *peer,
               const char *fmt, va_list ap)
{
    if (!log_enabled(lg, lvl))
        return;
    char msg[1536], line[4096], ts[40], peer_s[ADDR_STRLEN] = "";
    vsnprintf(msg, sizeof msg, fmt, ap);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t tl = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + tl, sizeof ts - tl, ".%03ldZ", (long)(tv.tv_usec / 1000));
    if (peer)
        addr_format(peer, peer_s);
    int n;
    if (lg->format == LOG_JSON) {
        char esc[3200];
        json_escape(esc, sizeof esc, msg);
        n = snprintf(line, sizeof line,
                     "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":\"%s\"%s%s%s,\"msg\":\"%s\"}\n",
                     ts, level_names[lvl], lg->component, peer ? ",\"peer\":\"" : "", peer_s,
                     peer ? "\"" : "", esc);
    } else {
        n = snprintf(line, sizeof line, "%s %-5s %s: %s%s%s\n", ts, level_names[lvl], lg->component,
                     peer ? "[" : "", peer ? peer_s : "", peer ? "] " : "");
        if (n > 0 && (size_t)n < sizeof line) {
            /* Message after the prefix, newline-terminated, cut to fit. */
            n--;
            int m = snprintf(line + n, sizeof line - (size_t)n, "%s\n", msg);
            n = (size_t)(n + m) >= sizeof line ? (int)sizeof line - 1 : n + m;
            line[n - 1] = '\n';
        }
    }
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line) {
        n = sizeof line - 1;
        line[n - 1] = '\n';
    }
    ssize_t w = write(lg->fd, line, (size_t)n);
    (void)w;
}

void log_emit(const struct logger *lg, enum log_level lvl, const struct addr *peer, const char *fmt,
              ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vemit(lg, lvl, peer, fmt, ap);
    va_end(ap);
}

bool log_limit_pass_n(struct log_limit *l, uint64_t now_ms, uint64_t interval_ms, unsigned burst,
                      uint64_t *held)
{
    if (now_ms >= l->next_ms) { /* a new interval */
        *held = l->held;
        l->held = 0;
        l->used = 0;
        l->start_ms = now_ms;
        l->next_ms = now_ms + interval_ms;
    } else {
        *held = 0;
    }
    if (l->used < burst) {
        l->used++;
        return true;
    }
    l->held++;
    return false;
}

bool log_limit_pass(struct log_limit *l, uint64_t now_ms, uint64_t interval_ms, uint64_t *held)
{
    return log_limit_pass_n(l, now_ms, interval_ms, 1, held);
}

bool log_limit_flush(struct log_limit *l, uint64_t now_ms, uint64_t *held, uint64_t *span_ms)
{
    if (now_ms < l->next_ms || !l->held)
        return false;
    *held = l->held;
    *span_ms = now_ms - l->start_ms;
    l->held = 0;
    l->used = 0;
    l->next_ms = 0; /* the next line starts a new interval */
    return true;
}
