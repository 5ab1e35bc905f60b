/* Admin listener: a small HTTP/1.1 server (http-parser) on the internal side serving
 * /metrics and /healthz, plus JSON endpoints a daemon registers (GET /edges, ...). */
#ifndef COMMON_ADMIN_H
#define COMMON_ADMIN_H

#include "common/addr.h"
#include "common/log.h"
#include "common/metrics.h"
#include <uv.h>

struct admin;

/* A handler's answer. body is malloc'd and taken by the admin server. */
struct admin_reply {
    int status;               /* 200, 404, ... */
    const char *content_type; /* static string */
    char *body;
    size_t body_len;
};

/* method "GET"/"POST", path without query, query string (may be ""), request body. */
typedef void (*admin_handler_cb)(const char *method, const char *path, const char *query,
                                 const char *body, size_t body_len, struct admin_reply *reply,
                                 void *arg);
/* Health: return 0 if healthy, else fill why (shown with 503). */
typedef int (*admin_health_cb)(char *why, size_t cap, void *arg);

int admin_start(uv_loop_t *loop, const struct addr *listen, struct metrics *m,
                const struct logger *lg, struct admin **out);
/* Routes requests whose path starts with prefix to cb. */
int admin_route(struct admin *a, const char *prefix, admin_handler_cb cb, void *arg);
void admin_set_health(struct admin *a, admin_health_cb cb, void *arg);
void admin_stop(struct admin *a); /* closes the listener and connections; frees asynchronously */

/* Helper for handlers: reply with a printf-formatted body. */
void admin_reply_printf(struct admin_reply *r, int status, const char *ctype, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* JSON answers built with common/json.h: takes j's buffer as the body (a 500 instead when j
 * ran out of memory), ending it with a newline; the error form is {"error": msg}. */
struct json_buf;
void admin_reply_json(struct admin_reply *r, int status, struct json_buf *j);
void admin_reply_json_error(struct admin_reply *r, int status, const char *msg);

/* Finds name=value in a query string or form body "a=1&b=2" of qlen bytes and percent-decodes
 * it ('+' is a space) into out. Returns 1 if found, 0 if absent, -EINVAL if the value does
 * not fit in cap, is malformed or decodes to a NUL. The one query parser for every daemon. */
int admin_query_get(const char *q, size_t qlen, const char *name, char *out, size_t cap);

#endif
