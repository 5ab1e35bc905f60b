/* Admin HTTP listener: /metrics, /healthz and JSON routes registered by the daemon. */
#include "common/admin.h"
#include "common/json.h"
#include "common/util.h"

#include <errno.h>
#include <http_parser.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ADMIN_REQ_MAX (64 * 1024)
#define ADMIN_ROUTES_MAX 32

struct admin_route {
    char *prefix;
    admin_handler_cb cb;
    void *arg;
};

struct admin {
    uv_tcp_t listener;
    struct metrics *metrics;
    const struct logger *log;
    struct admin_route routes[ADMIN_ROUTES_MAX];
    size_t nroutes;
    admin_health_cb health;
    void *health_arg;
    struct admin_conn *conns;
    bool stopping;
    char rbuf[16384];
};

struct admin_conn {
    uv_tcp_t tcp;
    struct admin *a;
    struct admin_conn *next, **pprev;
    http_parser parser;
    char url[2048];
    size_t url_len;
    char *body;
    size_t body_len;
    size_t total;
    bool done, closing, keep_alive;
};

static void conn_close(struct admin_conn *c);

static void conn_closed(uv_handle_t *h)
{
    struct admin_conn *c = container_of(h, struct admin_conn, tcp);
    free(c->body);
    free(c);
}

static void conn_close(struct admin_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->pprev) {
        *c->pprev = c->next;
        if (c->next)
            c->next->pprev = c->pprev;
        c->pprev = NULL;
    }
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

struct write_req {
    uv_write_t req;
    char *data;
    bool close_after;
};

static void on_written(uv_write_t *req, int status)
{
    struct write_req *w = container_of(req, struct write_req, req);
    struct admin_conn *c = req->data;
    if (w->close_after || status < 0)
        conn_close(c);
    free(w->data);
    free(w);
}

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Status";
    }
}

static void send_reply(struct admin_conn *c, struct admin_reply *r)
{
    char head[256];
    int hl =
        snprintf(head, sizeof head,
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n", r->status,
                 reason(r->status), r->content_type ? r->content_type : "text/plain; charset=utf-8",
                 r->body_len, c->keep_alive ? "" : "Connection: close\r\n");
    struct write_req *w = calloc(1, sizeof *w);
    char *data = malloc((size_t)hl + r->body_len);
    if (!w || !data) {
        free(w);
        free(data);
        free(r->body);
        conn_close(c);
        return;
    }
    memcpy(data, head, (size_t)hl);
    if (r->body_len && r->body)
        memcpy(data + hl, r->body, r->body_len);
    free(r->body);
    w->data = data;
    w->close_after = !c->keep_alive;
    w->req.data = c;
    uv_buf_t b = uv_buf_init(data, (unsigned)(hl + (int)r->body_len));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
        free(data);
        free(w);
        conn_close(c);
    }
}

void admin_reply_printf(struct admin_reply *r, int status, const char *ctype, const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    r->status = status;
    r->content_type = ctype;
    r->body = malloc((size_t)n + 1);
    if (r->body) {
        vsnprintf(r->body, (size_t)n + 1, fmt, ap2);
        r->body_len = (size_t)n;
    } else {
        r->body_len = 0;
    }
    va_end(ap2);
}

static void dispatch(struct admin_conn *c)
{
    struct admin *a = c->a;
    struct admin_reply r = {.status = 404};
    const char *method = http_method_str((enum http_method)c->parser.method);
    char path[2048], *query;
    snprintf(path, sizeof path, "%.*s", (int)c->url_len, c->url);
    query = strchr(path, '?');
    if (query)
        *query++ = '\0';
    else
        query = path + strlen(path);

    if (!strcmp(path, "/metrics")) {
        r.status = 200;
        r.content_type = "text/plain; version=0.0.4";
        r.body = metrics_render(a->metrics, &r.body_len);
        if (!r.body)
            r.status = 500;
    } else if (!strcmp(path, "/healthz")) {
        char why[256] = "";
        int bad = a->health ? a->health(why, sizeof why, a->health_arg) : 0;
        admin_reply_printf(&r, bad ? 503 : 200, NULL, "%s\n", bad ? why : "ok");
    } else {
        const struct admin_route *best = NULL;
        for (size_t i = 0; i < a->nroutes; i++) {
            size_t pl = strlen(a->routes[i].prefix);
            if (!strncmp(path, a->routes[i].prefix, pl) && (!best || pl > strlen(best->prefix)))
                best = &a->routes[i];
        }
        if (best) {
            best->cb(method, path, query, c->body ? c->body : "", c->body_len, &r, best->arg);
        } else {
            admin_reply_printf(&r, 404, NULL, "no such endpoint: %s\n", path);
        }
    }
    send_reply(c, &r);
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct admin_conn *c = p->data;
    if (c->url_len + len >= sizeof c->url)
        return -1;
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct admin_conn *c = p->data;
    char *nb = realloc(c->body, c->body_len + len + 1);
    if (!nb)
        return -1;
    c->body = nb;
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    c->body[c->body_len] = '\0';
    return 0;
}

static int on_message_begin(http_parser *p)
{
    struct admin_conn *c = p->data;
    c->url_len = 0;
    free(c->body);
    c->body = NULL;
    c->body_len = 0;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct admin_conn *c = p->data;
    c->keep_alive = http_should_keep_alive(p) && !c->a->stopping;
    dispatch(c);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    /* Reads are parsed at once and never kept, so one buffer per listener serves all. */
    struct admin_conn *c = container_of((uv_tcp_t *)h, struct admin_conn, tcp);
    (void)hint;
    *b = uv_buf_init(c->a->rbuf, sizeof c->a->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct admin_conn *c = container_of((uv_tcp_t *)s, struct admin_conn, tcp);
    if (n < 0) {
        conn_close(c);
        return;
    }
    if (n == 0)
        return;
    c->total += (size_t)n;
    size_t used = http_parser_execute(&c->parser, &parser_settings, b->base, (size_t)n);
    if (c->parser.http_errno != HPE_OK || used != (size_t)n || c->total > ADMIN_REQ_MAX) {
        struct admin_reply r;
        admin_reply_printf(&r, 400, NULL, "bad request: %s\n",
                           http_errno_description(HTTP_PARSER_ERRNO(&c->parser)));
        c->keep_alive = false;
        uv_read_stop(s);
        send_reply(c, &r);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    struct admin *a = container_of((uv_tcp_t *)server, struct admin, listener);
    if (status < 0)
        return;
    struct admin_conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->a = a;
    uv_tcp_init(server->loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        uv_close((uv_handle_t *)&c->tcp, conn_closed);
        return;
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->next = a->conns;
    if (a->conns)
        a->conns->pprev = &c->next;
    a->conns = c;
    c->pprev = &a->conns;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int admin_start(uv_loop_t *loop, const struct addr *listen, struct metrics *m,
                const struct logger *lg, struct admin **out)
{
    struct admin *a = calloc(1, sizeof *a);
    if (!a)
        return -ENOMEM;
    a->metrics = m;
    a->log = lg;
    uv_tcp_init(loop, &a->listener);
    int rc = uv_tcp_bind(&a->listener, &listen->u.sa, 0);
    if (!rc)
        rc = uv_listen((uv_stream_t *)&a->listener, 64, on_connection);
    if (rc) {
        char as[ADDR_STRLEN];
        LOGE(lg, NULL, "admin listener on %s: %s", addr_format(listen, as), uv_strerror(rc));
        uv_close((uv_handle_t *)&a->listener, (uv_close_cb)free);
        return rc;
    }
    *out = a;
    return 0;
}

int admin_route(struct admin *a, const char *prefix, admin_handler_cb cb, void *arg)
{
    if (a->nroutes == ADMIN_ROUTES_MAX)
        return -ENOSPC;
    struct admin_route *r = &a->routes[a->nroutes];
    r->prefix = strdup(prefix); /* freed in admin_stop */
    if (!r->prefix)
        return -ENOMEM;
    r->cb = cb;
    r->arg = arg;
    a->nroutes++;
    return 0;
}

void admin_set_health(struct admin *a, admin_health_cb cb, void *arg)
{
    a->health = cb;
    a->health_arg = arg;
}

static void admin_closed(uv_handle_t *h)
{
    struct admin *a = container_of((uv_tcp_t *)h, struct admin, listener);
    for (size_t i = 0; i < a->nroutes; i++)
        free(a->routes[i].prefix);
    free(a);
}

void admin_stop(struct admin *a)
{
    if (!a || a->stopping)
        return;
    a->stopping = true;
    while (a->conns)
        conn_close(a->conns);
    uv_close((uv_handle_t *)&a->listener, admin_closed);
}

int admin_query_get(const char *q, size_t qlen, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);
    const char *end = q + qlen;
    if (cap)
        out[0] = '\0';
    while (q && q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        if ((size_t)(pe - q) > nlen && memcmp(q, name, nlen) == 0 && q[nlen] == '=') {
            size_t n = 0;
            for (const char *v = q + nlen + 1; v < pe; v++) {
                int c = (unsigned char)*v;
                if (c == '+') {
                    c = ' ';
                } else if (c == '%') {
                    unsigned x;
                    if (pe - v < 3 || sscanf(v + 1, "%2x", &x) != 1)
                        return -EINVAL;
                    c = (int)x;
                    v += 2;
                }
                if (c == 0 || n + 1 >= cap)
                    return -EINVAL;
                out[n++] = (char)c;
            }
            out[n] = '\0';
            return 1;
        }
        q = amp ? amp + 1 : end;
    }
    return 0;
}

void admin_reply_json(struct admin_reply *r, int status, struct json_buf *j)
{
    if (j->oom) {
        free(j->p);
        admin_reply_printf(r, 500, "application/json", "{\"error\":\"out of memory\"}\n");
        return;
    }
    json_printf(j, "\n");
    r->status = status;
    r->content_type = "application/json";
    r->body = j->p;
    r->body_len = j->len;
}

void admin_reply_json_error(struct admin_reply *r, int status, const char *msg)
{
    struct json_buf j = {0};
    json_printf(&j, "{\"error\":");
    json_str(&j, msg);
    json_printf(&j, "}");
    admin_reply_json(r, status, &j);
}
