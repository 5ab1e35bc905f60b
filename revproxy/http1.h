/* HTTP/1.x message reader on http-parser: heads with limits, bodies counted and framed,
 * pure (no libuv), so the proxy, the unit tests and the fuzzer drive it the same way. */
#ifndef RP_HTTP1_H
#define RP_HTTP1_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/util.h"

#define HTTP_MAX_HEADERS 64
#define HTTP_NO_LENGTH UINT64_MAX

struct http_header {
    struct slice name, value;
};

/* A parsed head. Slices point into the reader's head buffer and stay valid until the
 * next message starts (the next http_reader_feed after HTTP_EV_DONE). */
struct http_head {
    int method; /* enum http_method; requests only */
    struct slice method_name;
    struct slice url; /* request target as sent */
    int status;       /* responses only */
    struct slice reason;
    uint8_t major, minor;
    struct http_header hdr[HTTP_MAX_HEADERS];
    size_t nhdr;
    uint64_t content_length; /* HTTP_NO_LENGTH when absent */
    bool chunked;
    bool keep_alive; /* http-parser's view of Connection / version */
    bool upgrade;    /* a complete Upgrade request, or a 101 response */
    bool expect_continue;
    bool has_body;   /* chunked, Content-Length > 0, or read-until-close */
    size_t head_len; /* raw bytes of the head, CRLFCRLF included */
};

enum http_ev {
    HTTP_EV_HEAD = 1, /* the head just finished: stop, act on it, feed the rest */
    HTTP_EV_DONE = 2, /* the message just finished (possibly together with its head) */
    HTTP_EV_DROP = 4, /* the bytes used are a request's trailer fields: do not forward them */
};

struct http_reader;

/* A reader for requests (request = true) or responses. max_head bounds the request
 * line / status line plus headers (exceeding it gives -EMSGSIZE, i.e. 431).
 * Returns 0 or -ENOMEM; *out owns the reader (http_reader_destroy). */
int http_reader_create(struct http_reader **out, bool request, size_t max_head);
void http_reader_destroy(struct http_reader *r);

/* Parses up to len bytes of p. Returns the bytes used; *ev gets HTTP_EV_* bits. It stops
 * right after a head (HEAD) and right after a message (DONE), so pipelined messages are
 * never read ahead. Bytes used while in the body are the raw framed body (chunk sizes
 * included), ready to forward as they are, except a request's trailer field lines: a call
 * returns either only those (with HTTP_EV_DROP) or none of them, so dropping them leaves
 * "0\r\n" ... "\r\n", an empty trailer section.
 * Requests are held to RFC 9112: CRLF (or a bare LF) ends a head line, a bare CR is
 * refused; header names are tokens; obs-fold becomes one SP; one Host at most; a
 * Transfer-Encoding must be exactly one chunked (not on HTTP/1.0); chunked framing is
 * strict (1*HEXDIG below 2^60, extensions without controls, CRLF after each line and
 * chunk). Errors: -EBADMSG (not HTTP, bad framing: 400), -EMSGSIZE (head too large or too
 * many headers: 431), -EFBIG (body over the limit: 413), -ENOSYS (a transfer coding other
 * than chunked: 501). After DONE the next call starts a new message. */
ssize_t http_reader_feed(struct http_reader *r, const uint8_t *p, size_t len, unsigned *ev);

/* The peer closed: completes a read-until-close body. Returns HTTP_EV_DONE, 0 if the
 * message was not finished (truncated), or -EBADMSG. */
int http_reader_eof(struct http_reader *r);

/* The head of the current message (valid after HTTP_EV_HEAD). */
const struct http_head *http_reader_head(const struct http_reader *r);
/* Decoded body bytes allowed for the current message (UINT64_MAX = unbounded). */
void http_reader_set_max_body(struct http_reader *r, uint64_t max);
/* The next response answers a HEAD request: it has no body whatever its headers say. */
void http_reader_set_no_body(struct http_reader *r, bool no_body);
/* Between messages (nothing of the next one read yet). */
bool http_reader_idle(const struct http_reader *r);
/* Inside a head (some bytes of it read). */
bool http_reader_in_head(const struct http_reader *r);
/* Decoded body bytes so far. */
uint64_t http_reader_body_bytes(const struct http_reader *r);
/* Why the last feed failed (ours, else http-parser's error name; for logs). */
const char *http_reader_error(const struct http_reader *r);

/* Header lookup (case-insensitive); returns the first value or SLICE_NULL (p == NULL). */
struct slice http_head_get(const struct http_head *h, const char *name);
/* True if a comma-separated header value list contains token (case-insensitive). */
bool http_list_has(struct slice list, const char *token);

#endif
