/* revproxy/http1.c: heads, limits, framing, pipelining and refusals of non-HTTP input. */
#include <errno.h>
#include <http_parser.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "revproxy/http1.h"

static struct http_reader *req(size_t max_head)
{
    struct http_reader *r;
    assert_int_equal(http_reader_create(&r, true, max_head), 0);
    return r;
}

/* Feeds all of s in one go, returning bytes used and the events. */
static ssize_t feed(struct http_reader *r, const char *s, unsigned *ev)
{
    return http_reader_feed(r, (const uint8_t *)s, strlen(s), ev);
}

static void request_head_parsed_and_stops_at_head(void **st)
{
    struct http_reader *r = req(4096);
    const char *m = "GET /ABS/ext/x?y=1 HTTP/1.1\r\nHost: edge.example.com\r\nX-Empty:\r\n"
                    "Accept: */*\r\n\r\n";
    unsigned ev;
    assert_int_equal(feed(r, m, &ev), (ssize_t)strlen(m));
    assert_int_equal(ev, HTTP_EV_HEAD | HTTP_EV_DONE);
    const struct http_head *h = http_reader_head(r);
    assert_int_equal(h->method, HTTP_GET);
    assert_true(slice_eq_str(h->url, "/ABS/ext/x?y=1"));
    assert_int_equal(h->nhdr, 3);
    assert_true(slice_eq_str(http_head_get(h, "HOST"), "edge.example.com"));
    assert_true(slice_eq_str(h->hdr[1].name, "X-Empty"));
    assert_true(slice_eq_str(h->hdr[2].name, "Accept"));
    assert_true(h->keep_alive);
    assert_false(h->has_body);
    assert_int_equal(h->head_len, strlen(m));
    http_reader_destroy(r);
}

static void head_split_byte_by_byte(void **st)
{
    struct http_reader *r = req(4096);
    const char *m = "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    size_t hl = strlen(m) - 5, i = 0;
    unsigned ev = 0;
    for (; i < hl; i++) {
        ssize_t n = http_reader_feed(r, (const uint8_t *)m + i, 1, &ev);
        assert_int_equal(n, 1);
        if (ev)
            break;
    }
    assert_int_equal(i, hl - 1);
    assert_int_equal(ev, HTTP_EV_HEAD);
    const struct http_head *h = http_reader_head(r);
    assert_true(slice_eq_str(http_head_get(h, "host"), "a"));
    assert_true(slice_eq_str(h->url, "/p"));
    assert_int_equal(h->content_length, 5);
    assert_true(h->has_body);
    ssize_t n = http_reader_feed(r, (const uint8_t *)m + hl, 5, &ev);
    assert_int_equal(n, 5);
    assert_int_equal(ev, HTTP_EV_DONE);
    http_reader_destroy(r);
}

static void pipelined_requests_one_at_a_time(void **st)
{
    struct http_reader *r = req(4096);
    const char *m = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    unsigned ev;
    ssize_t n = feed(r, m, &ev);
    assert_int_equal(n, strlen(m) / 2);
    assert_int_equal(ev, HTTP_EV_HEAD | HTTP_EV_DONE);
    assert_true(slice_eq_str(http_reader_head(r)->url, "/a"));
    n = http_reader_feed(r, (const uint8_t *)m + n, strlen(m) / 2, &ev);
    assert_int_equal(n, strlen(m) / 2);
    assert_true(slice_eq_str(http_reader_head(r)->url, "/b"));
    http_reader_destroy(r);
}

static void chunked_body_framed_raw_and_counted(void **st)
{
    struct http_reader *r = req(4096);
    const char *h = "POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    const char *b = "5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n";
    unsigned ev;
    assert_int_equal(feed(r, h, &ev), (ssize_t)strlen(h));
    assert_true(http_reader_head(r)->chunked);
    /* raw bytes, chunk framing included, up to the trailer field, which is dropped, then
     * the final CRLF */
    size_t tr = strstr(b, "Trailer") - b;
    ssize_t n = feed(r, b, &ev);
    assert_int_equal(n, (ssize_t)tr);
    assert_int_equal(ev, 0);
    n = feed(r, b + tr, &ev);
    assert_int_equal(n, (ssize_t)strlen("Trailer: t\r\n"));
    assert_int_equal(ev, HTTP_EV_DROP);
    n = feed(r, "\r\n", &ev);
    assert_int_equal(n, 2);
    assert_int_equal(ev, HTTP_EV_DONE);
    assert_int_equal(http_reader_body_bytes(r), 8);
    http_reader_destroy(r);
}

static void bad_chunk_encoding_is_400(void **st)
{
    struct http_reader *r = req(4096);
    unsigned ev;
    feed(r, "POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", &ev);
    assert_int_equal(feed(r, "zz\r\nhello\r\n", &ev), -EBADMSG);
    http_reader_destroy(r);
}

static void oversized_head_is_431(void **st)
{
    struct http_reader *r = req(1024);
    char big[2048];
    memset(big, 'a', sizeof big);
    memcpy(big, "GET /", 5);
    unsigned ev;
    ssize_t n = http_reader_feed(r, (const uint8_t *)big, sizeof big, &ev);
    assert_int_equal(n, -EMSGSIZE);
    http_reader_destroy(r);
    /* The same over many small feeds. */
    r = req(1024);
    n = http_reader_feed(r, (const uint8_t *)"GET / HTTP/1.1\r\n", 16, &ev);
    for (int i = 0; i < 200 && n >= 0; i++)
        n = feed(r, "X-Filler: 0123456789\r\n", &ev);
    assert_int_equal(n, -EMSGSIZE);
    http_reader_destroy(r);
}

static void too_many_headers_is_431(void **st)
{
    struct http_reader *r = req(65536);
    unsigned ev;
    ssize_t n = feed(r, "GET / HTTP/1.1\r\n", &ev);
    for (int i = 0; i < HTTP_MAX_HEADERS + 1 && n >= 0; i++)
        n = feed(r, "A: b\r\n", &ev);
    if (n >= 0)
        n = feed(r, "\r\n", &ev);
    assert_int_equal(n, -EMSGSIZE);
    http_reader_destroy(r);
}

static void body_over_limit_is_413(void **st)
{
    struct http_reader *r = req(4096);
    unsigned ev;
    http_reader_set_max_body(r, 4);
    assert_int_equal(feed(r, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", &ev),
                     -EFBIG);
    http_reader_destroy(r);
    r = req(4096);
    http_reader_set_max_body(r, 4);
    feed(r, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", &ev);
    assert_int_equal(feed(r, "5\r\nhello\r\n", &ev), -EFBIG);
    http_reader_destroy(r);
}

static void sip_and_tls_are_400(void **st)
{
    static const char *bad[] = {
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS x\r\n\r\n",
        "OPTIONS sip:x SIP/2.0\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct http_reader *r = req(4096);
        unsigned ev;
        ssize_t n = http_reader_feed(r, (const uint8_t *)bad[i], strlen(bad[i]), &ev);
        assert_int_equal(n, -EBADMSG);
        http_reader_destroy(r);
    }
}

static void expect_continue_and_upgrade_flags(void **st)
{
    struct http_reader *r = req(4096);
    unsigned ev;
    feed(r, "PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", &ev);
    assert_true(http_reader_head(r)->expect_continue);
    http_reader_destroy(r);
    r = req(4096);
    feed(r, "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
         &ev);
    assert_int_equal(ev, HTTP_EV_HEAD | HTTP_EV_DONE);
    assert_true(http_reader_head(r)->upgrade);
    http_reader_destroy(r);
}

static void response_framings(void **st)
{
    struct http_reader *r;
    unsigned ev;
    assert_int_equal(http_reader_create(&r, false, 4096), 0);
    const char *c100 = "HTTP/1.1 100 Continue\r\n\r\n";
    assert_int_equal(feed(r, c100, &ev), (ssize_t)strlen(c100));
    assert_int_equal(ev, HTTP_EV_HEAD | HTTP_EV_DONE);
    assert_int_equal(http_reader_head(r)->status, 100);
    /* HEAD answer with a length but no body. */
    http_reader_set_no_body(r, true);
    const char *hd = "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
    assert_int_equal(feed(r, hd, &ev), (ssize_t)strlen(hd));
    assert_int_equal(ev, HTTP_EV_HEAD | HTTP_EV_DONE);
    http_reader_set_no_body(r, false);
    /* Body until close. */
    const char *eof = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc";
    assert_int_equal(feed(r, eof, &ev), (ssize_t)strlen(eof) - 3); /* stops after the head */
    assert_int_equal(ev, HTTP_EV_HEAD);
    assert_int_equal(feed(r, "abc", &ev), 3);
    assert_int_equal(http_reader_eof(r), HTTP_EV_DONE);
    http_reader_destroy(r);
    /* A truncated length-delimited body is not complete at EOF. */
    assert_int_equal(http_reader_create(&r, false, 4096), 0);
    feed(r, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", &ev);
    assert_int_not_equal(http_reader_eof(r), HTTP_EV_DONE);
    http_reader_destroy(r);
}

static void list_tokens(void **st)
{
    assert_true(http_list_has(slice_str("keep-alive, Upgrade"), "upgrade"));
    assert_false(http_list_has(slice_str("upgrades"), "upgrade"));
    assert_true(http_list_has(slice_str(" close "), "close"));
}

/* Feeds all of m in pieces of step bytes (as the reads may cut it); returns the first
 * error or the last feed's result, with the events of all feeds. */
static ssize_t feed_steps(struct http_reader *r, const char *m, size_t step, unsigned *evs)
{
    size_t off = 0, n = strlen(m);
    ssize_t rc = 0;
    *evs = 0;
    while (off < n) {
        unsigned ev;
        size_t k = n - off < step ? n - off : step;
        rc = http_reader_feed(r, (const uint8_t *)m + off, k, &ev);
        if (rc < 0)
            return rc;
        *evs |= ev;
        off += (size_t)rc;
        if (ev & HTTP_EV_DONE)
            break;
    }
    return rc;
}

static void obs_fold_becomes_one_space_at_any_split(void **st)
{
    static const struct {
        const char *head, *want;
    } cases[] = {
        {"X-Foo: a\r\n b\r\n", "a b"},      {"X-Foo: a \r\n\t b\r\n  c\r\n", "a b c"},
        {"X-Foo:\r\n b\r\n", "b"},          {"X-Foo: abc\r\n def\r\n", "abc def"},
        {"X-Foo: a\r\n \r\n b\r\n", "a b"}, {"X-Foo: a\n b\n", "a b"},
    };
    for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
        char m[256];
        snprintf(m, sizeof m, "GET / HTTP/1.1\r\nHost: h\r\n%sX-Next: n\r\n\r\n", cases[c].head);
        for (size_t step = 1; step <= strlen(m); step++) {
            struct http_reader *r = req(4096);
            unsigned ev;
            assert_true(feed_steps(r, m, step, &ev) > 0);
            assert_true(ev & HTTP_EV_HEAD);
            const struct http_head *h = http_reader_head(r);
            struct slice v = http_head_get(h, "x-foo");
            if (!slice_eq_str(v, cases[c].want))
                fail_msg("case %zu step %zu: got '%.*s'", c, step, (int)v.len, (const char *)v.p);
            assert_true(slice_eq_str(http_head_get(h, "x-next"), "n"));
            assert_true(slice_eq_str(http_head_get(h, "host"), "h"));
            http_reader_destroy(r);
        }
    }
}

static void head_refusals(void **st)
{
    static const struct {
        const char *m;
        ssize_t err;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", -EBADMSG},
        {"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", -EBADMSG},
        {"GET / HTTP/1.1\rHost: a\r\n\r\n", -EBADMSG},
        {"GET / HTTP/1.1\r\nHost: a\r\n\rX", -EBADMSG},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", -EBADMSG},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-A:\rb\r\n\r\n", -EBADMSG},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-A: \rY: b\r\n\r\n", -EBADMSG},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-A:\r\n\rY: b\r\n\r\n", -EBADMSG},
        {"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", -EBADMSG},
        {"GET / HTTP/1.1\r\r\nHost: a\r\n\r\n", -EBADMSG},
        {"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", -EBADMSG},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n \rb\r\n\r\n", -EBADMSG},
        {"GET / HTTP/1.1\r\n X-A: a\r\nHost: a\r\n\r\n", -EBADMSG},
        {"GET / XTTP/1.1\r\nHost: a\r\n\r\n", -EBADMSG},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", -EBADMSG},
        {"GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n", -EBADMSG},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", -EBADMSG},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", -EBADMSG},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\n\r\n", -EBADMSG},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
         -EBADMSG},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", -ENOSYS},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", -ENOSYS},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", -EBADMSG},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", -EBADMSG},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
         "Transfer-Encoding: identity\r\n\r\n",
         -EBADMSG},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
         "Transfer-Encoding: chunked\r\n\r\n",
         -EBADMSG},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", -EBADMSG},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n", -EBADMSG},
        {"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", -EBADMSG},
    };
    for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
        for (size_t step = 1; step <= strlen(cases[c].m); step++) {
            struct http_reader *r = req(4096);
            unsigned ev;
            ssize_t rc = feed_steps(r, cases[c].m, step, &ev);
            if (rc != cases[c].err)
                fail_msg("case %zu step %zu: %zd (%s)", c, step, rc, http_reader_error(r));
            http_reader_destroy(r);
        }
    }
}

static void transfer_encoding_accepted_forms(void **st)
{
    /* (a trailing HTAB is OWS too, but http-parser takes it for a coding: refused) */
    static const char *const tes[] = {"chunked", "Chunked", "\tchunked ", " chunked  "};
    for (size_t c = 0; c < ARRAY_SIZE(tes); c++) {
        char m[256];
        snprintf(m, sizeof m,
                 "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:%s\r\n\r\n"
                 "1\r\nx\r\n0\r\n\r\n",
                 tes[c]);
        struct http_reader *r = req(4096);
        unsigned ev;
        ssize_t rc = feed_steps(r, m, strlen(m), &ev);
        if (rc < 0 || !(ev & HTTP_EV_DONE))
            fail_msg("'%s': %zd (%s)", tes[c], rc, http_reader_error(r));
        http_reader_destroy(r);
    }
}

/* Chunked bodies after a good head: accepted or refused, fed whole and byte by byte. */
static void chunked_framing_matrix(void **st)
{
    static const struct {
        const char *body;
        ssize_t err; /* 0 = accepted */
    } cases[] = {
        {"5\r\nhello\r\n0\r\n\r\n", 0},
        {"0005\r\nhello\r\n000\r\n\r\n", 0},
        {"a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n", 0},
        {"5;a=b ; q=\"x y\"\r\nhello\r\n0;e\r\n\r\n", 0},
        {"5 ;a\r\nhello\r\n0\r\n\r\n", 0},
        {"00000000000000000000000000001\r\nx\r\n0\r\n\r\n", 0},
        {"0x5\r\nhello\r\n0\r\n\r\n", -EBADMSG},
        {"-5\r\nhello\r\n0\r\n\r\n", -EBADMSG},
        {"+5\r\nhello\r\n0\r\n\r\n", -EBADMSG},
        {"\r\nhello\r\n0\r\n\r\n", -EBADMSG},
        {";a\r\nhello\r\n0\r\n\r\n", -EBADMSG},
        {"1000000000000000\r\n", -EBADMSG},
        {"FFFFFFFFFFFFFFFFFF\r\n", -EBADMSG},
        {"5 junk\r\nhello\r\n0\r\n\r\n", -EBADMSG},
        {"5\nhello\r\n0\r\n\r\n", -EBADMSG},
        {"5\rhello\r\n0\r\n\r\n", -EBADMSG},
        {"5\r\nhello\n0\r\n\r\n", -EBADMSG},
        {"5\r\nhelloXX0\r\n\r\n", -EBADMSG},
        {"5\r\nhello\rX0\r\n\r\n", -EBADMSG},
        {"3\r\nhello\r\n0\r\n\r\n", -EBADMSG},
        {"5;a\nb\r\nhello\r\n0\r\n\r\n", -EBADMSG},
        {"5;a\rb\r\nhello\r\n0\r\n\r\n", -EBADMSG},
        {"5;a\x01\r\nhello\r\n0\r\n\r\n", -EBADMSG},
        {"5\r\nhello\r\n0\n\r\n", -EBADMSG},
        {"5\r\nhello\r\n0\r\n\n", -EBADMSG},
        {"5\r\nhello\r\n0\r\n\rX", -EBADMSG},
        {"0\r\nX-A: a\r\n b\r\n\r\n", -EBADMSG},
        {"0\r\nno colon\r\n\r\n", -EBADMSG},
        {"0\r\n: v\r\n\r\n", -EBADMSG},
        {"0\r\nX-A: a\nX-B: b\r\n\r\n", -EBADMSG},
        {"0\r\nX-A: a\x7f\r\n\r\n", -EBADMSG},
        {"40000\r\n", -EFBIG}, /* over max_body before any data */
    };
    const char *head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
        for (size_t step = 1; step <= 64; step = step < 8 ? step + 1 : step * 2) {
            struct http_reader *r = req(4096);
            unsigned ev;
            assert_int_equal(feed(r, head, &ev), (ssize_t)strlen(head));
            http_reader_set_max_body(r, 0x3ffff);
            ssize_t rc = feed_steps(r, cases[c].body, step, &ev);
            if (cases[c].err ? rc != cases[c].err : (rc < 0 || !(ev & HTTP_EV_DONE)))
                fail_msg("case %zu ('%s') step %zu: %zd ev %u (%s)", c, cases[c].body, step, rc, ev,
                         http_reader_error(r));
            http_reader_destroy(r);
        }
    }
}

/* Whatever the reads, the forwarded bytes are the body without its trailer fields. */
static void trailers_dropped_at_any_split(void **st)
{
    const char *head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    const char *body = "5\r\nhello\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nHost: evil\r\n\r\n"
                       "GET /next HTTP/1.1\r\n";
    const char *want = "5\r\nhello\r\n0\r\n\r\n";
    for (size_t step = 1; step <= strlen(body); step++) {
        struct http_reader *r = req(4096);
        unsigned ev;
        assert_int_equal(feed(r, head, &ev), (ssize_t)strlen(head));
        char out[256];
        size_t off = 0, on = 0, n = strlen(body);
        for (;;) {
            size_t k = n - off < step ? n - off : step;
            ssize_t rc = http_reader_feed(r, (const uint8_t *)body + off, k, &ev);
            assert_true(rc > 0);
            if (!(ev & HTTP_EV_DROP)) {
                memcpy(out + on, body + off, (size_t)rc);
                on += (size_t)rc;
            }
            off += (size_t)rc;
            if (ev & HTTP_EV_DONE)
                break;
        }
        out[on] = '\0';
        if (strcmp(out, want))
            fail_msg("step %zu: forwarded '%s'", step, out);
        assert_int_equal(off, strlen(body) - strlen("GET /next HTTP/1.1\r\n"));
        http_reader_destroy(r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(request_head_parsed_and_stops_at_head),
        cmocka_unit_test(head_split_byte_by_byte),
        cmocka_unit_test(pipelined_requests_one_at_a_time),
        cmocka_unit_test(chunked_body_framed_raw_and_counted),
        cmocka_unit_test(obs_fold_becomes_one_space_at_any_split),
        cmocka_unit_test(head_refusals),
        cmocka_unit_test(transfer_encoding_accepted_forms),
        cmocka_unit_test(chunked_framing_matrix),
        cmocka_unit_test(trailers_dropped_at_any_split),
        cmocka_unit_test(bad_chunk_encoding_is_400),
        cmocka_unit_test(oversized_head_is_431),
        cmocka_unit_test(too_many_headers_is_431),
        cmocka_unit_test(body_over_limit_is_413),
        cmocka_unit_test(sip_and_tls_are_400),
        cmocka_unit_test(expect_continue_and_upgrade_flags),
        cmocka_unit_test(response_framings),
        cmocka_unit_test(list_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
