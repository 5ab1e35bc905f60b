/* A growable JSON text for admin answers (GET /edges, /watchlist, ...). */
#include "common/json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/ctl.h"

void json_printf(struct json_buf *j, const char *fmt, ...)
{
    if (j->oom)
        return;
    for (int tries = 0; tries < 2; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(j->p ? j->p + j->len : NULL, j->p ? j->cap - j->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            j->oom = true;
            return;
        }
        if (j->p && j->len + (size_t)n < j->cap) {
            j->len += (size_t)n;
            return;
        }
        size_t cap = j->cap ? j->cap : 1024;
        while (cap <= j->len + (size_t)n)
            cap *= 2;
        char *np = realloc(j->p, cap);
        if (!np) {
            j->oom = true;
            return;
        }
        j->p = np;
        j->cap = cap;
    }
}

/* A JSON string literal, quotes included; control bytes and non-ASCII are escaped so
 * whatever an edge calls itself cannot break the document. */
void json_str(struct json_buf *j, const char *s)
{
    /* Edges' strings are checked UTF-8 (ctl_text_ok) and pass as they are; anything else
     * (a certificate's CN) has its non-ASCII bytes escaped one by one. */
    bool utf8 = ctl_text_ok(s);
    json_printf(j, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            json_printf(j, "\\%c", c);
        else if (c < 0x20 || c == 0x7f || (c > 0x7f && !utf8))
            json_printf(j, "\\u%04x", c);
        else
            json_printf(j, "%c", c);
    }
    json_printf(j, "\"");
}
