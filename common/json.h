/* A growable JSON text for admin answers (every daemon). Appends never fail midway: on
 * out-of-memory the buffer is marked oom and further appends do nothing, so a handler
 * builds the whole answer and checks oom once. The caller frees p. */
#ifndef COMMON_JSON_H
#define COMMON_JSON_H

#include <stdbool.h>
#include <stddef.h>

struct json_buf {
    char *p; /* NUL-terminated once anything was appended */
    size_t len, cap;
    bool oom;
};

void json_printf(struct json_buf *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string literal, quotes included: quotes, backslashes, control bytes and DEL are
 * escaped, and non-ASCII bytes too unless the string is valid UTF-8. */
void json_str(struct json_buf *j, const char *s);

#endif
