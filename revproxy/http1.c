/* HTTP/1.x message reader: http-parser fed from a bounded head buffer, then straight from
 * the caller's bytes for the body, pausing at head and message ends. */
#include "revproxy/http1.h"

#include <errno.h>
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>

enum { ST_IDLE, ST_HEAD, ST_BODY, ST_DONE };

/* A chunked request body is framed by feed_chunked, not by http-parser: strictly (RFC 9112
 * 7.1, CRLF only), skipping chunk data by count, and with the trailer section told apart
 * so the proxy can drop it. */
enum {
    CK_SIZE,    /* chunk-size digits */
    CK_SIZE_WS, /* BWS after the digits: only ';' or CR may follow */
    CK_EXT,     /* chunk-ext up to CR */
    CK_SIZE_LF, /* CR of the size line seen */
    CK_DATA,    /* chunk data: left bytes */
    CK_DATA_CR,
    CK_DATA_LF,
    CK_TR_START, /* start of a trailer line, or of the final CRLF */
    CK_TR_NAME,  /* trailer field name */
    CK_TR_VALUE, /* trailer field value up to CR */
    CK_TR_LF,    /* CR of a trailer line seen */
    CK_END_LF,   /* CR of the final empty line seen */
};

#define CHUNK_LINE_MAX 4096 /* a chunk-size line with its extensions */
#define CHUNK_DIGITS_MAX 15 /* significant hex digits: sizes below 2^60 */

struct http_reader {
    http_parser hp;
    bool request;
    bool no_body;
    bool paused_head;
    bool paused_done;
    bool field_open; /* the last header callback was a field (name) */
    bool too_many;
    bool fold_sp;               /* an obs-fold ended the value so far: one SP before more text */
    const uint8_t *val_raw_end; /* where the last value fragment ended in the raw bytes */
    int ck;                     /* CK_* while framing a chunked request body */
    uint64_t ck_left;
    uint32_t ck_line, ck_digits;
    size_t ck_trailer;
    const char *why; /* our own reason for a refusal (else http-parser's) */
    int refuse;      /* -errno for a refusal found in a callback */
    int state;
    uint8_t *head; /* head bytes of the current message */
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

/* tchar (RFC 9110 5.6.2): a table, as names are checked byte by byte */
static const uint8_t tchar_tab[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

static inline bool is_tchar(uint8_t c)
{
    return tchar_tab[c];
}

/* field-vchar or SP/HTAB (obs-text included) */
static bool is_field_char(uint8_t c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int refuse(struct http_reader *r, int err, const char *why)
{
    r->refuse = err;
    r->why = why;
    return -1;
}

static int on_field(http_parser *hp, const char *p, size_t len)
{
    struct http_reader *r = reader_of(hp);
    if (r->state == ST_BODY)
        return 0; /* a response's trailers: not kept */
    /* http-parser as Debian builds it (not strict) lets a space into a name. */
    for (size_t i = 0; i < len; i++)
        if (!is_tchar((uint8_t)p[i]))
            return refuse(r, -EBADMSG, "bad header name");
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

/* Value fragments: a value split across feeds comes in pieces that are back to back in
 * the raw head; a value continued by obs-fold (CRLF then SP/HTAB) comes in pieces with the
 * fold between them. Both are joined in place in the head buffer (the bytes between were
 * already parsed), the fold and the whitespace around it becoming one SP (RFC 9112 5.2). */
static int on_value(http_parser *hp, const char *p, size_t len)
{
    struct http_reader *r = reader_of(hp);
    if (r->state == ST_BODY)
        return 0;
    r->field_open = false;
    struct slice *v = &r->h.hdr[r->h.nhdr - 1].value;
    const uint8_t *src = (const uint8_t *)p;
    if (!v->p) {
        /* An empty value ends at a LF; the lenient build also takes any byte after a CR
         * there for the LF ("X:\rY: z"). */
        if (!len && src[-1] != '\n')
            return refuse(r, -EBADMSG, "bare CR");
        *v = slice_make(p, len); /* an empty value keeps a non-NULL pointer */
        r->fold_sp = false;
        r->val_raw_end = src + len;
        return 0;
    }
    if (src != r->val_raw_end) {
        /* obs-fold: trailing whitespace before it goes, one SP stands for it */
        while (v->len && (v->p[v->len - 1] == ' ' || v->p[v->len - 1] == '\t'))
            v->len--;
        r->fold_sp = true;
    }
    r->val_raw_end = src + len;
    if (r->fold_sp) {
        while (len && (*src == ' ' || *src == '\t')) {
            src++;
            len--;
        }
        if (!len)
            return 0;
        if (v->len)
            ((uint8_t *)v->p)[v->len++] = ' ';
        r->fold_sp = false;
    }
    uint8_t *dst = (uint8_t *)v->p + v->len;
    if (dst != src)
        memmove(dst, src, len); /* dst < src: the bytes in between were parsed */
    v->len += len;
    return 0;
}

/* Transfer-Encoding of a request (RFC 9112 6.1, 6.3): the only coding we frame is one
 * chunked, and it is what we forward. 0, or refuses: 501 for a coding we do not know,
 * 400 for chunked twice, not last, a bad list, or on HTTP/1.0. */
static int check_te(struct http_reader *r, const struct http_head *h)
{
    unsigned chunked = 0, other = 0, tes = 0;
    bool last_chunked = false;
    for (size_t i = 0; i < h->nhdr; i++) {
        if (!slice_caseeq_str(h->hdr[i].name, "transfer-encoding"))
            continue;
        tes++;
        struct slice v = h->hdr[i].value;
        size_t j = 0;
        bool any = false;
        if (!v.p) /* an empty value may have no pointer */
            v.len = 0;
        while (j < v.len) {
            while (j < v.len && (v.p[j] == ' ' || v.p[j] == '\t'))
                j++;
            size_t s0 = j;
            while (j < v.len && is_tchar(v.p[j]))
                j++;
            size_t e = j;
            while (j < v.len && (v.p[j] == ' ' || v.p[j] == '\t'))
                j++;
            if (e == s0 || (j < v.len && v.p[j] != ','))
                return refuse(r, -EBADMSG, "bad Transfer-Encoding");
            j++; /* the comma */
            any = true;
            last_chunked = slice_caseeq_str(slice_make(v.p + s0, e - s0), "chunked");
            if (last_chunked)
                chunked++;
            else
                other++;
        }
        if (!any)
            return refuse(r, -EBADMSG, "empty Transfer-Encoding");
    }
    if (!tes)
        return 0;
    if (h->minor == 0)
        return refuse(r, -EBADMSG, "Transfer-Encoding on HTTP/1.0");
    if (chunked > 1 || (chunked && !last_chunked))
        return refuse(r, -EBADMSG, "chunked twice or not last");
    if (other)
        return refuse(r, -ENOSYS, "unknown transfer coding");
    if (!h->chunked)
        return refuse(r, -EBADMSG, "bad Transfer-Encoding");
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
        unsigned hosts = 0;
        bool te = false;
        for (size_t i = 0; i < h->nhdr; i++) {
            struct slice n = h->hdr[i].name;
            hosts += n.len == 4 && slice_caseeq_str(n, "host");
            te |= n.len == 17 && slice_caseeq_str(n, "transfer-encoding");
        }
        if (hosts > 1)
            return refuse(r, -EBADMSG, "two Host headers"); /* RFC 9112 3.2 */
        if (te && check_te(r, h) < 0)
            return -1;
        r->ck = CK_SIZE;
        r->ck_line = r->ck_digits = 0;
        r->ck_left = 0;
        r->ck_trailer = 0;
    }
    bool skip = r->no_body ||
                (!r->request && (h->status / 100 == 1 || h->status == 204 || h->status == 304));
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
    r->fold_sp = false;
    r->val_raw_end = NULL;
    r->why = NULL;
    r->refuse = 0;
    r->paused_head = r->paused_done = false;
    r->state = ST_HEAD;
}

/* Maps a parser failure to the status a client should see. */
static ssize_t fail(struct http_reader *r)
{
    r->err = HTTP_PARSER_ERRNO(&r->hp);
    if (r->refuse)
        return r->refuse;
    if (r->too_many || r->err == HPE_HEADER_OVERFLOW) {
        r->why = "head too large";
        return -EMSGSIZE;
    }
    if ((r->err == HPE_CB_body && r->body_bytes > r->max_body) ||
        (r->err == HPE_CB_headers_complete && r->h.content_length != HTTP_NO_LENGTH &&
         r->h.content_length > r->max_body)) {
        r->why = "body too large";
        return -EFBIG;
    }
    return -EBADMSG;
}

/* The request line ends in " HTTP/1.x" (the lenient build does not check the letters). */
static bool request_line_ok(const struct http_reader *r)
{
    const uint8_t *lf = memchr(r->head, '\n', r->h.head_len);
    if (!lf)
        return false;
    size_t e = (size_t)(lf - r->head);
    if (e && r->head[e - 1] == '\r')
        e--;
    return e >= 10 && memcmp(r->head + e - 9, " HTTP/1.", 8) == 0 &&
           (r->head[e - 1] == '0' || r->head[e - 1] == '1');
}

static ssize_t feed_head(struct http_reader *r, const uint8_t *p, size_t len, unsigned *ev)
{
    size_t room = r->head_cap - r->head_used;
    size_t n = len < room ? len : room;
    if (n == 0) {
        r->why = "head too large";
        return -EMSGSIZE;
    }
    uint8_t *dst = r->head + r->head_used;
    memcpy(dst, p, n);
    size_t used = http_parser_execute(&r->hp, &settings, (const char *)dst, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&r->hp);
    if (e == HPE_PAUSED && r->paused_head && dst[used] != '\n') {
        /* The lenient build took the byte after a CR at the head's end for its LF (RFC
         * 9112 2.2: a bare CR is invalid). A bare CR elsewhere in a request line or
         * header line fails in http-parser itself, and after an empty value in on_value. */
        r->why = "bare CR";
        return -EBADMSG;
    }
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
        if (r->request && !request_line_ok(r)) {
            r->why = "bad request line";
            return -EBADMSG;
        }
        return (ssize_t)(used + 1);
    }
    if (e != HPE_OK)
        return fail(r);
    r->head_used += used;
    if (r->head_used == r->head_cap) {
        r->why = "head too large";
        return -EMSGSIZE;
    }
    return (ssize_t)used;
}

/* What one byte of chunked framing did (or a negative errno, r->why set). */
enum { CK_ON, CK_STOP, CK_END };

static int ck_bad(struct http_reader *r, const char *why)
{
    r->why = why;
    return -EBADMSG;
}

static int bad_size(struct http_reader *r)
{
    return ck_bad(r, "bad chunk size line");
}

/* A byte of a chunk-size's digits, or what ends them. */
static int chunk_size_digit(struct http_reader *r, uint8_t c)
{
    int d = c >= '0' && c <= '9'                     ? c - '0'
            : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10
                                                     : -1;
    if (++r->ck_line > CHUNK_LINE_MAX)
        return bad_size(r);
    if (d >= 0) {
        if (r->ck_left || d)
            r->ck_digits++;
        if (r->ck_digits > CHUNK_DIGITS_MAX)
            return bad_size(r);
        r->ck_left = r->ck_left * 16 + (uint64_t)d;
        return CK_ON;
    }
    if (r->ck_line == 1)
        return bad_size(r); /* no digits */
    if (c == '\r')
        r->ck = CK_SIZE_LF;
    else if (c == ';')
        r->ck = CK_EXT;
    else if (c == ' ' || c == '\t')
        r->ck = CK_SIZE_WS;
    else
        return bad_size(r);
    return CK_ON;
}

/* A chunk-size line's end: the chunk's data, or the last chunk's trailer section. */
static int chunk_size_lf(struct http_reader *r, uint8_t c)
{
    if (c != '\n')
        return bad_size(r);
    r->ck_line = r->ck_digits = 0;
    if (r->ck_left == 0) {
        r->ck = CK_TR_START; /* last-chunk: the trailer section follows */
        return CK_ON;
    }
    if (r->ck_left > r->max_body - r->body_bytes || r->body_bytes > r->max_body) {
        r->why = "chunk over the body limit";
        return -EFBIG;
    }
    r->ck = CK_DATA;
    return CK_ON;
}

/* A byte of a chunk-size line after its digits, or of the CRLF after chunk data. */
static int chunk_line_byte(struct http_reader *r, uint8_t c)
{
    switch (r->ck) {
    case CK_SIZE:
        return chunk_size_digit(r, c);
    case CK_SIZE_WS:
        if (++r->ck_line > CHUNK_LINE_MAX)
            return bad_size(r);
        if (c == ';')
            r->ck = CK_EXT;
        else if (c == '\r')
            r->ck = CK_SIZE_LF;
        else if (c != ' ' && c != '\t')
            return bad_size(r);
        return CK_ON;
    case CK_EXT:
        if (++r->ck_line > CHUNK_LINE_MAX)
            return bad_size(r);
        if (c == '\r')
            r->ck = CK_SIZE_LF;
        else if (!is_field_char(c))
            return bad_size(r);
        return CK_ON;
    case CK_SIZE_LF:
        return chunk_size_lf(r, c);
    case CK_DATA_CR:
        if (c != '\r')
            return ck_bad(r, "chunk data not followed by CRLF");
        r->ck = CK_DATA_LF;
        return CK_ON;
    default: /* CK_DATA_LF */
        if (c != '\n')
            return ck_bad(r, "chunk data not followed by CRLF");
        r->ck = CK_SIZE;
        return CK_ON;
    }
}

/* A byte of the trailer section. drop: this call drops what it reads (field lines), so it
 * stops before the final CRLF, which the next call forwards; a forwarding call stops
 * before a field line. */
static int chunk_trailer_byte(struct http_reader *r, uint8_t c, bool drop, unsigned *ev)
{
    switch (r->ck) {
    case CK_TR_START:
        if (c == '\r') {
            if (drop)
                return CK_STOP;
            r->ck = CK_END_LF;
            return CK_ON;
        }
        if (!drop)
            return CK_STOP;
        if (!is_tchar(c))
            return ck_bad(r, "bad trailer section"); /* obs-fold, bare LF, or no name */
        r->ck = CK_TR_NAME;
        return CK_ON;
    case CK_TR_NAME:
        if (c == ':')
            r->ck = CK_TR_VALUE;
        else if (!is_tchar(c))
            return ck_bad(r, "bad trailer section");
        return CK_ON;
    case CK_TR_VALUE:
        if (c == '\r')
            r->ck = CK_TR_LF;
        else if (!is_field_char(c))
            return ck_bad(r, "bad trailer section");
        return CK_ON;
    case CK_TR_LF:
        if (c != '\n')
            return ck_bad(r, "bad trailer section");
        r->ck = CK_TR_START;
        return CK_ON;
    default: /* CK_END_LF */
        if (c != '\n')
            return ck_bad(r, "bad trailer section");
        r->state = ST_DONE;
        *ev |= HTTP_EV_DONE;
        return CK_END;
    }
}

static bool chunk_in_trailer(const struct http_reader *r)
{
    return r->ck == CK_TR_START || r->ck == CK_TR_NAME || r->ck == CK_TR_VALUE ||
           r->ck == CK_TR_LF || r->ck == CK_END_LF;
}

/* Chunk data: as much of the chunk as there is. */
static size_t chunk_data(struct http_reader *r, size_t avail)
{
    size_t k = avail < r->ck_left ? avail : (size_t)r->ck_left;
    r->ck_left -= k;
    r->body_bytes += k;
    if (!r->ck_left)
        r->ck = CK_DATA_CR;
    return k;
}

/* One step of a chunked request body (see CK_*). Consumes at least one byte; a call
 * either forwards all its bytes or drops all of them (trailer field lines, *ev gets
 * HTTP_EV_DROP), so it stops where one turns into the other. */
static ssize_t feed_chunked(struct http_reader *r, const uint8_t *p, size_t len, unsigned *ev)
{
    bool drop = r->ck == CK_TR_NAME || r->ck == CK_TR_VALUE || r->ck == CK_TR_LF ||
                (r->ck == CK_TR_START && p[0] != '\r');
    size_t i = 0;
    while (i < len) {
        if (r->ck == CK_DATA) {
            i += chunk_data(r, len - i);
            continue;
        }
        int st =
            chunk_in_trailer(r) ? chunk_trailer_byte(r, p[i], drop, ev) : chunk_line_byte(r, p[i]);
        if (st < 0)
            return st;
        if (st == CK_STOP)
            break;
        i++;
        if (st == CK_END)
            break;
        if (drop && ++r->ck_trailer > r->head_cap) {
            r->why = "trailer section too large";
            return -EMSGSIZE;
        }
    }
    if (drop)
        *ev |= HTTP_EV_DROP;
    return (ssize_t)i;
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
    if (r->request && r->h.chunked)
        return feed_chunked(r, p, len, ev);
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
    if (r->request && r->h.chunked)
        return 0; /* truncated */
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
    return r->why ? r->why : http_errno_name(r->err);
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
