/* revproxy/route.c and headers.c: the published routes, rewrites, target checks, and the
 * headers the proxy sends each way. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "revproxy/headers.h"
#include "revproxy/http1.h"
#include "revproxy/route.h"

static struct rp_route routes[] = {
    {.prefix = "/ABS/ext", .rewrite = "/ABS/int", .upstream = "web"},
    {.prefix = "/etc/place/null", .upstream = "web"},
    {.prefix = "/GroupExpansion/ext/service.asmx",
     .rewrite = "/GroupExpansion/int/service.asmx",
     .upstream = "web"},
    {.host = "meet.example.com", .prefix = "/", .upstream = "meet"},
    {.host = "*.example.org", .prefix = "/x/", .upstream = "org"},
};
#define NR (sizeof routes / sizeof routes[0])

static int match(const char *host, const char *path)
{
    return rp_route_match(routes, NR, slice_str(host), slice_str(path));
}

static void published_paths_route_and_others_404(void **st)
{
    assert_int_equal(match("edge.example.com", "/ABS/ext"), 0);
    assert_int_equal(match("edge.example.com", "/ABS/Ext/Handler"), 0); /* R2 spelling */
    assert_int_equal(match("edge.example.com:443", "/etc/place/null/abc.dat"), 1);
    assert_int_equal(match("edge.example.com", "/GroupExpansion/ext/service.asmx"), 2);
    assert_int_equal(match("edge.example.com", "/ABS/extra"), -1);
    assert_int_equal(match("edge.example.com", "/"), -1);
    assert_int_equal(match("edge.example.com", "/etc/passwd"), -1);
    assert_int_equal(match("meet.example.com", "/anything"), 3);
    assert_int_equal(match("MEET.example.com:443", "/ABS/ext/x"), 0); /* longer prefix wins */
    assert_int_equal(match("a.example.org", "/x/y"), 4);
    assert_int_equal(match("example.org", "/x/y"), -1);
}

static void rewrite_and_back(void **st)
{
    char out[256];
    ssize_t n = rp_route_rewrite(&routes[0], slice_str("/ABS/ext/Handler/f.lsabs"),
                                 slice_str("?a=1"), out, sizeof out);
    assert_int_equal(n, strlen("/ABS/int/Handler/f.lsabs?a=1"));
    assert_string_equal(out, "/ABS/int/Handler/f.lsabs?a=1");
    rp_route_rewrite(&routes[1], slice_str("/etc/place/null/X"), slice_str(""), out, sizeof out);
    assert_string_equal(out, "/etc/place/null/X");
    n = rp_route_unrewrite(&routes[0], slice_str("/ABS/int/y?q"), out, sizeof out);
    assert_true(n > 0);
    assert_string_equal(out, "/ABS/ext/y?q");
    assert_int_equal(rp_route_unrewrite(&routes[0], slice_str("/other"), out, sizeof out), 0);
    assert_int_equal(
        rp_route_rewrite(&routes[0], slice_str("/ABS/ext/long"), slice_str(""), out, 8), -ENOSPC);
}

static void targets_checked(void **st)
{
    struct rp_target t;
    assert_int_equal(rp_target_parse(slice_str("/a/b?c=d#f"), &t), 0);
    assert_true(slice_eq_str(t.path, "/a/b"));
    assert_true(slice_eq_str(t.query, "?c=d"));
    assert_int_equal(rp_target_parse(slice_str("http://h.example:8/p?q"), &t), 0);
    assert_true(slice_eq_str(t.host, "h.example:8"));
    assert_true(slice_eq_str(t.path, "/p"));
    assert_int_equal(rp_target_parse(slice_str("https://h?q"), &t), 0);
    assert_true(slice_eq_str(t.path, "/"));
    static const char *bad[] = {"/ABS/ext/../../etc/passwd",
                                "/ABS/ext/%2e%2E/x",
                                "/a/./b",
                                "/a/..",
                                "/a%2fb",
                                "/a%00",
                                "*",
                                "sip:bob@x",
                                "example.com:443",
                                ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(rp_target_parse(slice_str(bad[i]), &t), -EBADMSG);
    assert_int_equal(rp_target_parse(slice_str("/a/...b/.c"), &t), 0);
}

static struct http_reader *parse(bool request, const char *m)
{
    struct http_reader *r;
    assert_int_equal(http_reader_create(&r, request, 8192), 0);
    unsigned ev;
    assert_true(http_reader_feed(r, (const uint8_t *)m, strlen(m), &ev) > 0);
    assert_true(ev & HTTP_EV_HEAD);
    return r;
}

static char *built(struct buf *b)
{
    assert_int_equal(buf_append(b, "", 1), 0);
    return (char *)b->data;
}

static void upstream_request_headers(void **st)
{
    struct http_reader *r = parse(true, "GET /ABS/ext/x HTTP/1.1\r\nHost: edge.example.com\r\n"
                                        "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
                                        "Keep-Alive: 5\r\nTE: trailers\r\n"
                                        "X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n"
                                        "Authorization: NTLM abc\r\n\r\n");
    struct addr a;
    addr_parse(&a, "127.0.0.99:5555", 0);
    struct http_fwd f = {.client = &a,
                         .tls = true,
                         .host = slice_str("edge.example.com"),
                         .host_header = "web.lab",
                         .target = "/ABS/int/x"};
    struct buf b;
    buf_init(&b, 4096);
    assert_int_equal(http_request_build(http_reader_head(r), &f, &b), 0);
    const char *s = built(&b);
    assert_non_null(strstr(s, "GET /ABS/int/x HTTP/1.1\r\nHost: web.lab\r\n"));
    assert_non_null(strstr(s, "Authorization: NTLM abc\r\n"));
    assert_null(strstr(s, "X-Secret"));
    assert_null(strstr(s, "Keep-Alive"));
    assert_null(strstr(s, "TE:"));
    assert_null(strstr(s, "6.6.6.6")); /* the client's own claims are dropped */
    assert_non_null(strstr(s, "X-Forwarded-For: 127.0.0.99\r\n"));
    assert_non_null(strstr(s, "X-Forwarded-Proto: https\r\n"));
    assert_non_null(strstr(s, "X-Forwarded-Host: edge.example.com\r\n"));
    assert_non_null(
        strstr(s, "Forwarded: for=127.0.0.99;proto=https;host=\"edge.example.com\"\r\n"));
    assert_non_null(strstr(s, "Connection: keep-alive\r\n\r\n"));
    /* A trusted proxy's chain is extended; IPv6 is quoted (RFC 7239 section 6). */
    b.rd = b.wr = 0;
    addr_parse(&a, "[::1]:5555", 0);
    f.trusted = true;
    f.host_header = NULL;
    assert_int_equal(http_request_build(http_reader_head(r), &f, &b), 0);
    s = built(&b);
    assert_non_null(strstr(s, "Host: edge.example.com\r\n"));
    assert_non_null(strstr(s, "X-Forwarded-For: 6.6.6.6, ::1\r\n"));
    assert_non_null(strstr(s, "Forwarded: for=6.6.6.6, for=\"[::1]\";proto=https"));
    buf_fini(&b);
    http_reader_destroy(r);
}

static void response_location_rewritten(void **st)
{
    struct http_reader *r =
        parse(false, "HTTP/1.1 302 Found\r\nLocation: https://web.lab:443/ABS/int/y?z\r\n"
                     "Content-Location: /ABS/int/c\r\nConnection: close\r\n"
                     "Keep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n");
    static const char *const internal[] = {"web.lab", NULL};
    struct http_back bk = {.route = &routes[0],
                           .client_host = slice_str("edge.example.com"),
                           .tls = true,
                           .internal = internal};
    struct buf b;
    buf_init(&b, 4096);
    assert_int_equal(http_response_build(http_reader_head(r), &bk, &b), 0);
    const char *s = built(&b);
    assert_non_null(strstr(s, "HTTP/1.1 302 Found\r\n"));
    assert_non_null(strstr(s, "Location: https://edge.example.com/ABS/ext/y?z\r\n"));
    assert_non_null(strstr(s, "Content-Location: /ABS/ext/c\r\n"));
    assert_null(strstr(s, "Keep-Alive"));
    assert_null(strstr(s, "Connection: close"));
    assert_int_equal(strcmp(s + strlen(s) - 4, "\r\n\r\n"), 0);
    /* An outside URL stays as it is. */
    char out[256];
    assert_int_equal(
        http_location_rewrite(slice_str("https://login.example.net/x"), &bk, out, sizeof out), 0);
    buf_fini(&b);
    http_reader_destroy(r);
}

static void simple_responses(void **st)
{
    struct buf b;
    buf_init(&b, 1024);
    assert_int_equal(http_simple_response(&b, 404, NULL, "nope\n", false, false), 0);
    const char *s = built(&b);
    assert_non_null(strstr(s, "HTTP/1.1 404 Not Found\r\n"));
    assert_non_null(strstr(s, "Content-Length: 5\r\n\r\nnope\n"));
    b.rd = b.wr = 0;
    http_simple_response(&b, 431, NULL, "x", true, false);
    s = built(&b);
    assert_non_null(strstr(s, "431 Request Header Fields Too Large"));
    assert_non_null(strstr(s, "Connection: close\r\n"));
    buf_fini(&b);
}

static void client_address_headers_dropped_unless_trusted(void **st)
{
    struct http_reader *r = parse(true, "GET /ABS/ext/x HTTP/1.1\r\nHost: h\r\n"
                                        "X-Real-IP: 6.6.6.1\r\nClient-IP: 6.6.6.2\r\n"
                                        "True-Client-IP: 6.6.6.3\r\nCF-Connecting-IP: 6.6.6.4\r\n"
                                        "X-Forwarded-Port: 6666\r\nX-Forwarded-Server: 6.6.6.5\r\n"
                                        "X-Real_IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.7\r\n"
                                        "X-Original-URL: /admin\r\nX-Keep: 1\r\n\r\n");
    struct addr a;
    addr_parse(&a, "127.0.0.99:5555", 0);
    struct http_fwd f = {.client = &a, .host = slice_str("h"), .target = "/x"};
    struct buf b;
    buf_init(&b, 4096);
    assert_int_equal(http_request_build(http_reader_head(r), &f, &b), 0);
    const char *s = built(&b);
    assert_null(strstr(s, "6.6.6."));
    assert_null(strstr(s, "6666"));
    assert_null(strstr(s, "/admin"));
    assert_non_null(strstr(s, "\r\nX-Keep: 1\r\n"));
    /* from a trusted proxy they pass, except the '_' spellings */
    b.rd = b.wr = 0;
    f.trusted = true;
    assert_int_equal(http_request_build(http_reader_head(r), &f, &b), 0);
    s = built(&b);
    assert_non_null(strstr(s, "X-Real-IP: 6.6.6.1\r\n"));
    assert_non_null(strstr(s, "X-Forwarded-Port: 6666\r\n"));
    assert_null(strstr(s, "6.6.6.6"));
    assert_null(strstr(s, "6.6.6.7"));
    assert_true(http_is_forwarding(slice_str("x-forwarded-anything")));
    assert_true(http_is_forwarding(slice_str("TRUE_CLIENT_IP")));
    assert_false(http_is_forwarding(slice_str("x-forwarded-")));
    assert_false(http_is_forwarding(slice_str("authorization")));
    buf_fini(&b);
    http_reader_destroy(r);
}

static void framing_and_host_are_the_proxys(void **st)
{
    struct addr a;
    addr_parse(&a, "127.0.0.99:5555", 0);
    struct http_fwd f = {.client = &a, .target = "/x", .fallback_host = "web"};
    struct buf b;
    buf_init(&b, 4096);
    struct http_reader *r = parse(true, "POST /x HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n"
                                        "Transfer-Encoding:\tChunked \r\nX-B: 2\r\n\r\n");
    f.host = slice_str("h");
    assert_int_equal(http_request_build(http_reader_head(r), &f, &b), 0);
    assert_non_null(strstr(built(&b), "\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nX-B: 2\r\n"));
    http_reader_destroy(r);
    b.rd = b.wr = 0;
    r = parse(true, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 007 \r\n\r\n");
    assert_int_equal(http_request_build(http_reader_head(r), &f, &b), 0);
    assert_non_null(strstr(built(&b), "\r\nContent-Length: 7\r\n"));
    http_reader_destroy(r);
    /* HTTP/1.0 without Host: the upstream's name */
    b.rd = b.wr = 0;
    r = parse(true, "GET /x HTTP/1.0\r\n\r\n");
    f.host = SLICE_NULL;
    assert_int_equal(http_request_build(http_reader_head(r), &f, &b), 0);
    assert_non_null(strstr(built(&b), "GET /x HTTP/1.0\r\nHost: web\r\n"));
    http_reader_destroy(r);
    buf_fini(&b);
}

static void hosts_and_redirect_names(void **st)
{
    static const char *const good[] = {"a",     "a.b-c.example", "a:443", "127.0.0.1:80",
                                       "[::1]", "[::1]:8443",    "x_y~z"};
    static const char *const bad[] = {"",     "a b", "x evil.example", "a@b", "a/b",  "a:b",
                                      "[::1", "[]",  "[zz]",           ":80", "a\tb", "a,b",
                                      "a%2e"};
    for (size_t i = 0; i < ARRAY_SIZE(good); i++)
        if (!rp_host_valid(slice_str(good[i])))
            fail_msg("refused '%s'", good[i]);
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        if (rp_host_valid(slice_str(bad[i])))
            fail_msg("accepted '%s'", bad[i]);
    assert_false(rp_host_valid(slice_make("a\0b", 3)));
    char *names[] = {"revproxy", "*.lab.example"};
    char out[64];
    assert_int_equal(
        rp_server_name_pick(names, 2, routes, NR, slice_str("REVPROXY"), out, sizeof out), 0);
    assert_string_equal(out, "revproxy");
    assert_int_equal(
        rp_server_name_pick(names, 2, routes, NR, slice_str("w.Lab.example"), out, sizeof out), 0);
    assert_string_equal(out, "w.lab.example");
    /* route hosts count; "*" routes do not */
    assert_int_equal(
        rp_server_name_pick(names, 2, routes, NR, slice_str("meet.example.com"), out, sizeof out),
        0);
    assert_int_equal(
        rp_server_name_pick(names, 2, routes, NR, slice_str("a.example.org"), out, sizeof out), 0);
    assert_int_equal(
        rp_server_name_pick(names, 2, routes, NR, slice_str("lab.example"), out, sizeof out),
        -ENOENT);
    assert_int_equal(
        rp_server_name_pick(names, 2, routes, NR, slice_str("evil.example"), out, sizeof out),
        -ENOENT);
    assert_int_equal(
        rp_server_name_pick(NULL, 0, routes, 3, slice_str("evil.example"), out, sizeof out),
        -ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(published_paths_route_and_others_404),
        cmocka_unit_test(rewrite_and_back),
        cmocka_unit_test(targets_checked),
        cmocka_unit_test(upstream_request_headers),
        cmocka_unit_test(client_address_headers_dropped_unless_trusted),
        cmocka_unit_test(framing_and_host_are_the_proxys),
        cmocka_unit_test(hosts_and_redirect_names),
        cmocka_unit_test(response_location_rewritten),
        cmocka_unit_test(simple_responses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
