/* Logging: one line per event to stderr, text or JSON lines, with the peer's address. */
#ifndef COMMON_LOG_H
#define COMMON_LOG_H

#include "common/addr.h"
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };
enum log_format { LOG_TEXT, LOG_JSON };

/* A logger is a value owned by the daemon (or a test); it is read-only while the
 * loop runs and swapped whole on reload, like the config. Thread-safe: each event is
 * one write(2). A NULL logger drops everything (tests, fuzzers). */
struct logger {
    enum log_level level;
    enum log_format format;
    const char *component; /* "av-edge", "director", ... */
    int fd;                /* 2 unless a test captures it */
};

void log_init(struct logger *lg, const char *component);

/* Writes one event. peer may be NULL. msg is printf-style. */
void log_emit(const struct logger *lg, enum log_level lvl, const struct addr *peer, const char *fmt,
              ...) __attribute__((format(printf, 4, 5)));
void log_vemit(const struct logger *lg, enum log_level lvl, const struct addr *peer,
               const char *fmt, va_list ap);

static inline int log_enabled(const struct logger *lg, enum log_level lvl)
{
    return lg && lvl <= lg->level;
}

/* At most one line (or burst lines) per interval for an event that can repeat per packet or
 * connection: the one rate-limited log line helper. log_limit_pass says whether to log now;
 * *held gets how many were held back since the last line, to say in it. The owner keeps the
 * struct (zeroed to start). */
struct log_limit {
    uint64_t next_ms;  /* when the current interval ends */
    uint64_t start_ms; /* when it began */
    uint64_t held;
    unsigned used; /* lines let through in this interval */
};
bool log_limit_pass(struct log_limit *l, uint64_t now_ms, uint64_t interval_ms, uint64_t *held);
/* The same with up to burst lines per interval; *held counts what the earlier intervals held
 * back (0 within an interval). */
bool log_limit_pass_n(struct log_limit *l, uint64_t now_ms, uint64_t interval_ms, unsigned burst,
                      uint64_t *held);
/* For a summary line from a timer: once the interval is over, returns true with *held > 0 and
 * *span_ms (how long it covered) when lines were held back, and starts afresh. */
bool log_limit_flush(struct log_limit *l, uint64_t now_ms, uint64_t *held, uint64_t *span_ms);

#define LOGE(lg, peer, ...) log_emit((lg), LOG_ERROR, (peer), __VA_ARGS__)
#define LOGW(lg, peer, ...) log_emit((lg), LOG_WARN, (peer), __VA_ARGS__)
#define LOGI(lg, peer, ...) log_emit((lg), LOG_INFO, (peer), __VA_ARGS__)
#define LOGD(lg, peer, ...)                                                                        \
    do {                                                                                           \
        if (log_enabled((lg), LOG_DEBUG))                                                          \
            log_emit((lg), LOG_DEBUG, (peer), __VA_ARGS__);                                        \
    } while (0)

#endif
