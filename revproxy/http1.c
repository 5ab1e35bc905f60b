/* HTTP/1.x message reader: http-parser fed from a bounded head buffer, then straight from
 * the caller's bytes for the body, pausing at head and message ends. */
#include "revproxy/http1.h"

#include <errno.h>
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>

enum { ST_IDLE, ST_HEAD, ST_BODY, ST_DONE };

struct http_reader {
    http_parser hp;
    bool request;
    bool no_body;
    bool paused_head;
    bool paused_done;
    bool field_open; /* the last header callback was a field (name) */
    bool too_many;
    int state;
    uint8_t *head;   /* head bytes of the current message */
    size_t head_cap, head_used;
    uint64_t body_bytes, max_body;
    struct http_head h;
    enum http_errno err;
};

static struct http_reader *reader_of(http_parser *hp)
{
    return container_of(hp, struct http_reader, hp);
}

/* Extends s with [p, p+len) when contiguous (a token split across two feeds lands
 * back to back in the head buffer), else starts it at p. */
static void grow(struct slice *s, const char *p, size_t len)
{
    if (s->p && s->p + s->len == (const uint8_t *)p)
        s->len += len;
    else
        *s = slice_make(p, len);
}

static int on_url(http_parser *hp, const char *p, size_t len)
{
    grow(&reader_of(hp)->h.url, p, len);
    return 0;
}

static int on_status(http_parser *hp, const char *p, size_t len)
{
    grow(&reader_of(hp)->h.reason, p, len);
    return 0;
}

static int on_field(http_parser *hp, const char *p, size_t len)
{
    struct http_reader *r = reader_of(hp);
    struct slice *cur = r->h.nhdr ? &r->h.hdr[r->h.nhdr - 1].name : NULL;
    /* A name split across two feeds is contiguous; after an empty value (which may get
     * no value callback) the next name is not. */
    if (!r->field_open || !cur || cur->p + cur->len != (const uint8_t *)p) {
        if (r->h.nhdr == HTTP_MAX_HEADERS) {
            r->too_many = true;
            return -1;
        }
        r->h.nhdr++;
        r->h.hdr[r->h.nhdr - 1] = (struct http_header){SLICE_NULL, SLICE_NULL};
        r->field_open = true;
    }
    grow(&r->h.hdr[r->h.nhdr - 1].name, p, len);
    return 0;
}

static int on_value(http_parser *hp, const char *p, size_t len)
{
    struct http_reader *r = reader_of(hp);
    r->field_open = false;
    struct slice *v = &r->h.hdr[r->h.nhdr - 1].value;
    if (!v->p)
        *v = slice_make(p, len); /* an empty value keeps a non-NULL pointer */
    else
        grow(v, p, len);
    return 0;
}

static int on_headers_complete(http_parser *hp)
{
    struct http_reader *r = reader_of(hp);
    struct http_head *h = &r->h;
    h->major = (uint8_t)hp->http_major;
    h->minor = (uint8_t)hp->http_minor;
    h->method = hp->method;
    h->status = hp->status_code;
    h->chunked = (hp->flags & F_CHUNKED) != 0;
    h->content_length = (hp->flags & F_CONTENTLENGTH) ? hp->content_length : HTTP_NO_LENGTH;
    h->keep_alive = http_should_keep_alive(hp) != 0;
    h->upgrade = hp->upgrade != 0;
    if (r->request) {
        const char *m = http_method_str((enum http_method)hp->method);
        h->method_name = slice_str(m);
        struct slice e = http_head_get(h, "expect");
        h->expect_continue = e.p && slice_caseeq_str(e, "100-continue");
    }
    bool skip = r->no_body || (!r->request && (h->status / 100 == 1 || h->status == 204 ||
                                               h->status == 304));
    if (skip)
        h->has_body = false;
    else if (h->chunked)
        h->has_body = true;
    else if (h->content_length != HTTP_NO_LENGTH)
        h->has_body = h->content_length > 0;
    else
        h->has_body = !r->request && !(hp->flags & F_CONTENTLENGTH) && !h->upgrade;
    if (h->content_length != HTTP_NO_LENGTH && h->content_length > r->max_body)
        return -1; /* reported as -EFBIG by the caller, which checks the same */
    http_parser_pause(hp, 1);
    r->paused_head = true;
    return skip ? 1 : 0;
}

static int on_body(http_parser *hp, const char *p, size_t len)
{
    struct http_reader *r = reader_of(hp);
    (void)p;
    r->body_bytes += len;
    return r->body_bytes > r->max_body ? -1 : 0;
}

static int on_message_complete(http_parser *hp)
{
    struct http_reader *r = reader_of(hp);
    http_parser_pause(hp, 1);
    r->paused_done = true;
    return 0;
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_status = on_status,
    .on_header_field = on_field,
    .on_header_value = on_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

int http_reader_create(struct http_reader **out, bool request, size_t max_head)
{
    if (!out || max_head < 64)
        return -EINVAL;
    struct http_reader *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->head = malloc(max_head);
    if (!r->head) {
        free(r);
        return -ENOMEM;
    }
    r->head_cap = max_head;
    r->request = request;
    r->max_body = UINT64_MAX;
    r->state = ST_IDLE;
    *out = r;
    return 0;
}

void http_reader_destroy(struct http_reader *r)
{
    if (!r)
        return;
    free(r->head);
    free(r);
}

static void begin_message(struct http_reader *r)
{
    http_parser_init(&r->hp, r->request ? HTTP_REQUEST : HTTP_RESPONSE);
    memset(&r->h, 0, sizeof r->h);
    r->h.content_length = HTTP_NO_LENGTH;
    r->head_used = 0;
    r->body_bytes = 0;
    r->field_open = false;
    r->too_many = false;
    r->paused_head = r->paused_done = false;
    r->state = ST_HEAD;
}

/* Maps a parser failure to the status a client should see. */
static ssize_t fail(struct http_reader *r)
{
    r->err = HTTP_PARSER_ERRNO(&r->hp);
    if (r->too_many || r->err == HPE_HEADER_OVERFLOW)
        return -EMSGSIZE;
    if ((r->err == HPE_CB_body && r->body_bytes > r->max_body) ||
        (r->err == HPE_CB_headers_complete && r->h.content_length != HTTP_NO_LENGTH &&
         r->h.content_length > r->max_body))
        return -EFBIG;
    return -EBADMSG;
}

static ssize_t feed_head(struct http_reader *r, const uint8_t *p, size_t len, unsigned *ev)
{
    size_t room = r->head_cap - r->head_used;
    size_t n = len < room ? len : room;
    if (n == 0)
        return -EMSGSIZE;
    uint8_t *dst = r->head + r->head_used;
    memcpy(dst, p, n);
    size_t used = http_parser_execute(&r->hp, &settings, (const char *)dst, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&r->hp);
    if (e == HPE_PAUSED && r->paused_head) {
        /* Paused on headers_complete, just before its final LF: feed that LF so the
         * parser enters the body (or completes a bodiless message). */
        r->h.head_len = r->head_used + used + 1;
        r->head_used += used + 1;
        http_parser_pause(&r->hp, 0);
        size_t one = http_parser_execute(&r->hp, &settings, (const char *)dst + used, 1);
        e = HTTP_PARSER_ERRNO(&r->hp);
        if (one != 1 || (e != HPE_OK && e != HPE_PAUSED))
            return fail(r);
        if (e == HPE_PAUSED)
            http_parser_pause(&r->hp, 0);
        *ev |= HTTP_EV_HEAD;
        if (r->paused_done) {
            *ev |= HTTP_EV_DONE;
            r->state = ST_DONE;
        } else {
            r->state = ST_BODY;
        }
        if (r->h.major != 1)
            return -EBADMSG;
        return (ssize_t)(used + 1);
    }
    if (e != HPE_OK)
        return fail(r);
    r->head_used += used;
    if (r->head_used == r->head_cap)
        return -EMSGSIZE;
    return (ssize_t)used;
}

ssize_t http_reader_feed(struct http_reader *r, const uint8_t *p, size_t len, unsigned *ev)
{
    *ev = 0;
    if (r->state == ST_DONE || r->state == ST_IDLE) {
        if (len == 0)
            return 0;
        begin_message(r);
    }
    if (r->state == ST_HEAD)
        return feed_head(r, p, len, ev);
    if (len == 0)
        return 0;
    size_t used = http_parser_execute(&r->hp, &settings, (const char *)p, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&r->hp);
    if (e == HPE_PAUSED && r->paused_done) {
        http_parser_pause(&r->hp, 0);
        *ev |= HTTP_EV_DONE;
        r->state = ST_DONE;
        return (ssize_t)used;
    }
    if (e != HPE_OK)
        return fail(r);
    return (ssize_t)used;
}

int http_reader_eof(struct http_reader *r)
{
    if (r->state != ST_BODY)
        return r->state == ST_HEAD ? 0 : HTTP_EV_DONE;
    http_parser_execute(&r->hp, &settings, NULL, 0);
    enum http_errno e = HTTP_PARSER_ERRNO(&r->hp);
    if (r->paused_done) {
        http_parser_pause(&r->hp, 0);
        r->state = ST_DONE;
        return HTTP_EV_DONE;
    }
    return e == HPE_OK ? 0 : -EBADMSG;
}

const struct http_head *http_reader_head(const struct http_reader *r)
{
    return &r->h;
}

void http_reader_set_max_body(struct http_reader *r, uint64_t max)
{
    r->max_body = max;
}

void http_reader_set_no_body(struct http_reader *r, bool no_body)
{
    r->no_body = no_body;
}

bool http_reader_idle(const struct http_reader *r)
{
    return r->state == ST_IDLE || r->state == ST_DONE;
}

bool http_reader_in_head(const struct http_reader *r)
{
    return r->state == ST_HEAD && r->head_used > 0;
}

uint64_t http_reader_body_bytes(const struct http_reader *r)
{
    return r->body_bytes;
}

const char *http_reader_error(const struct http_reader *r)
{
    return http_errno_name(r->err);
}

struct slice http_head_get(const struct http_head *h, const char *name)
{
    for (size_t i = 0; i < h->nhdr; i++)
        if (slice_caseeq_str(h->hdr[i].name, name))
            return h->hdr[i].value;
    return SLICE_NULL;
}

bool http_list_has(struct slice list, const char *token)
{
    size_t tl = strlen(token), i = 0;
    while (i < list.len) {
        while (i < list.len && (list.p[i] == ' ' || list.p[i] == '\t' || list.p[i] == ','))
            i++;
        size_t s = i;
        while (i < list.len && list.p[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (list.p[e - 1] == ' ' || list.p[e - 1] == '\t'))
            e--;
        if (e - s == tl && slice_caseeq_str(slice_make(list.p + s, e - s), token))
            return true;
    }
    return false;
}
