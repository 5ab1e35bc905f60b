/* SIP framing and validation: every rejection rule gives its exact status, reason and label. */
#include <errno.h>
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "access-edge/sip_validate.h"
#include "common/sip/sip_msg.h"
#include "common/sip/sip_osip.h"

static const char *const domains[] = {"example.com"};
static struct addr own[2];
static struct sip_policy pol;
static struct sip_msg msg;

static int setup(void **st)
{
    addr_parse(&own[0], "127.0.0.11:5060", 5060);
    addr_parse(&own[1], "127.0.0.21:5060", 5060);
    pol = (struct sip_policy){domains, 1, own, 2, 4096, 65536, 64, 1024};
    return 0;
}

#define BASE_HDRS                                                                                  \
    "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK776asdhds;rport\r\n"                            \
    "From: Alice <sip:alice@example.com>;tag=1928301774\r\n"                                       \
    "To: Bob <sip:bob@example.com>\r\n"                                                            \
    "Call-ID: a84b4c76e66710\r\n"                                                                  \
    "CSeq: 314159 INVITE\r\n"

static const char invite[] =
    "INVITE sip:bob@example.com SIP/2.0\r\n" BASE_HDRS "Max-Forwards: 70\r\n"
    "Contact: <sip:alice@192.0.2.1:5062>\r\n"
    "Content-Length: 4\r\n\r\nv=0\n";

static int check(const char *text, enum sip_source src, struct sip_verdict *v, struct sip_route *r)
{
    struct sip_peer peer = {.src = src};
    return sip_check_bytes(&pol, &peer, (const uint8_t *)text, strlen(text), true, &msg, v, r);
}

static void expect(const char *text, enum sip_source src, int status, const char *reason,
                   const char *needle)
{
    struct sip_verdict v;
    struct sip_route r;
    int rc = check(text, src, &v, &r);
    assert_int_equal(rc, 1);
    assert_int_equal(v.status, status);
    assert_string_equal(v.reason, reason);
    if (needle && !strstr(v.text, needle)) {
        printf("text: %s\n", v.text);
        fail();
    }
}

static void good_invite_goes_to_director(void **st)
{
    struct sip_verdict v;
    struct sip_route r;
    assert_int_equal(check(invite, SIP_SRC_REMOTE_USER, &v, &r), 0);
    assert_int_equal(r.kind, SIP_ROUTE_DIRECTOR);
    assert_false(r.in_dialog);
    assert_true(msg.is_request);
    assert_int_equal(msg.count[SIP_H_VIA], 1);
    assert_int_equal(msg.body_len, 4);
}

static void scan_frames_stream_by_content_length(void **st)
{
    char two[2048];
    snprintf(two, sizeof(two), "%s%s", invite, invite);
    ssize_t n = sip_msg_scan(&msg, (const uint8_t *)two, strlen(two), false, 65536);
    assert_int_equal(n, (ssize_t)strlen(invite));
    assert_int_equal(sip_msg_scan(&msg, (const uint8_t *)invite, strlen(invite) - 2, false, 65536),
                     -EAGAIN);
    assert_int_equal(sip_msg_scan(&msg, (const uint8_t *)invite, 20, false, 65536), -EAGAIN);
    assert_int_equal(sip_msg_scan(&msg, (const uint8_t *)"garbage\r\n\r\n", 11, true, 65536),
                     -EBADMSG);
}

static void compact_forms_count(void **st)
{
    const char *t = "MESSAGE sip:bob@example.com SIP/2.0\r\n"
                    "v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\n"
                    "f: <sip:alice@example.com>;tag=1\r\nt: <sip:bob@example.com>\r\n"
                    "i: abc\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nl: 0\r\n\r\n";
    struct sip_verdict v;
    struct sip_route r;
    assert_int_equal(check(t, SIP_SRC_REMOTE_USER, &v, &r), 0);
    assert_int_equal(msg.count[SIP_H_CALL_ID], 1);
    assert_int_equal(msg.content_length, 0);
}

static void replace(char *out, size_t cap, const char *in, const char *from, const char *to)
{
    const char *p = strstr(in, from);
    assert_non_null(p);
    snprintf(out, cap, "%.*s%s%s", (int)(p - in), in, to, p + strlen(from));
}

static void missing_each_mandatory_header_is_400_naming_it(void **st)
{
    static const char *const lines[][2] = {
        {"Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK776asdhds;rport\r\n", "Via"},
        {"From: Alice <sip:alice@example.com>;tag=1928301774\r\n", "From"},
        {"To: Bob <sip:bob@example.com>\r\n", "To"},
        {"Call-ID: a84b4c76e66710\r\n", "Call-ID"},
        {"CSeq: 314159 INVITE\r\n", "CSeq"},
    };
    char buf[2048], want[64];
    for (size_t i = 0; i < 5; i++) {
        replace(buf, sizeof(buf), invite, lines[i][0], "");
        snprintf(want, sizeof(want), "Missing header: %s", lines[i][1]);
        expect(buf, SIP_SRC_REMOTE_USER, 400, "missing_header", want);
    }
    /* RFC 3261 §16.3 step 3: no Max-Forwards (RFC 2543's INVITE) passes; forwarding adds one. */
    replace(buf, sizeof(buf), invite, "Max-Forwards: 70\r\n", "");
    struct sip_verdict v;
    struct sip_route r;
    assert_int_equal(check(buf, SIP_SRC_REMOTE_USER, &v, &r), 0);
    assert_int_equal(r.kind, SIP_ROUTE_DIRECTOR);
}

static void duplicate_single_header_is_400(void **st)
{
    char buf[2048];
    replace(buf, sizeof(buf), invite, "Call-ID: a84b4c76e66710\r\n",
            "Call-ID: a84b4c76e66710\r\nCall-ID: other\r\n");
    expect(buf, SIP_SRC_REMOTE_USER, 400, "duplicate_header", "Duplicate header: Call-ID");
    replace(buf, sizeof(buf), invite, "CSeq: 314159 INVITE\r\n",
            "CSeq: 314159 INVITE\r\nf: <sip:eve@evil.example>;tag=2\r\n");
    expect(buf, SIP_SRC_REMOTE_USER, 400, "duplicate_header", "Duplicate header: From");
}

static void content_length_mismatch_is_400(void **st)
{
    char buf[2048];
    replace(buf, sizeof(buf), invite, "Content-Length: 4", "Content-Length: 40");
    expect(buf, SIP_SRC_REMOTE_USER, 400, "content_length", "Content-Length");
}

static void oversized_client_message_is_513(void **st)
{
    char buf[8192], body[5000];
    memset(body, 'x', sizeof(body) - 1);
    body[sizeof(body) - 1] = 0;
    char hdr[64];
    snprintf(hdr, sizeof(hdr), "Content-Length: %zu\r\n\r\n", strlen(body));
    replace(buf, sizeof(buf), invite, "Content-Length: 4\r\n\r\nv=0\n", hdr);
    strcat(buf, body);
    expect(buf, SIP_SRC_REMOTE_USER, 513, "too_large", "client");
    /* The same message from the inside is within the server limit. */
    struct sip_verdict v;
    struct sip_route r;
    assert_int_not_equal(check(buf, SIP_SRC_INTERNAL, &v, &r), 1);
}

static void too_many_headers_and_long_lines_are_400(void **st)
{
    char buf[8192];
    char many[4096] = "";
    for (int i = 0; i < 70; i++)
        strcat(many, "X-Pad: 1\r\n");
    replace(buf, sizeof(buf), invite, "Max-Forwards: 70\r\n", many);
    strcat(many, "");
    char buf2[8192];
    replace(buf2, sizeof(buf2), buf, "X-Pad: 1\r\n", "Max-Forwards: 70\r\nX-Pad: 1\r\n");
    expect(buf2, SIP_SRC_REMOTE_USER, 400, "too_many_headers", "Too many");
    char longl[1200];
    memset(longl, 'a', sizeof(longl));
    memcpy(longl, "Subject: ", 9);
    strcpy(longl + 1100, "\r\n");
    char line[1300];
    snprintf(line, sizeof(line), "Max-Forwards: 70\r\n%s", longl);
    replace(buf, sizeof(buf), invite, "Max-Forwards: 70\r\n", line);
    expect(buf, SIP_SRC_REMOTE_USER, 400, "line_too_long", "too long");
}

static void method_allow_list_per_source(void **st)
{
    char buf[2048];
    replace(buf, sizeof(buf), invite, "INVITE sip:", "REGISTER sip:");
    char buf2[2048];
    replace(buf2, sizeof(buf2), buf, "CSeq: 314159 INVITE", "CSeq: 314159 REGISTER");
    struct sip_verdict v;
    struct sip_route r;
    assert_int_equal(check(buf2, SIP_SRC_REMOTE_USER, &v, &r), 0);
    struct sip_peer peer = {.src = SIP_SRC_PARTNER};
    assert_int_equal(
        sip_check_bytes(&pol, &peer, (const uint8_t *)buf2, strlen(buf2), true, &msg, &v, &r), 1);
    assert_int_equal(v.status, 405);
    assert_string_equal(v.reason, "method");
    replace(buf, sizeof(buf), invite, "INVITE sip:", "FROBNICATE sip:");
    replace(buf2, sizeof(buf2), buf, "CSeq: 314159 INVITE", "CSeq: 314159 FROBNICATE");
    expect(buf2, SIP_SRC_REMOTE_USER, 405, "method", "FROBNICATE");
    assert_false(sip_method_allowed(SIP_SRC_DISCOVERED, slice_str("SERVICE")));
    assert_true(sip_method_allowed(SIP_SRC_DISCOVERED, slice_str("MESSAGE")));
}

static void max_forwards_zero_is_483(void **st)
{
    char buf[2048];
    replace(buf, sizeof(buf), invite, "Max-Forwards: 70", "Max-Forwards: 0");
    expect(buf, SIP_SRC_REMOTE_USER, 483, "max_forwards", NULL);
    replace(buf, sizeof(buf), invite, "Max-Forwards: 70", "Max-Forwards: lots");
    expect(buf, SIP_SRC_REMOTE_USER, 400, "max_forwards", NULL);
}

static void own_via_from_outside_is_482(void **st)
{
    char buf[2048];
    replace(buf, sizeof(buf), invite, "Via: ",
            "Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKa\r\nVia: SIP/2.0/UDP "
            "127.0.0.21:5060;branch=z9hG4bKb\r\nVia: ");
    expect(buf, SIP_SRC_REMOTE_USER, 482, "loop", NULL);
}

static void foreign_domain_from_outside_is_403(void **st)
{
    char buf[2048];
    replace(buf, sizeof(buf), invite, "INVITE sip:bob@example.com",
            "INVITE sip:bob@victim.example");
    expect(buf, SIP_SRC_REMOTE_USER, 403, "relay", "victim.example");
}

static void partner_from_domain_must_match_certificate(void **st)
{
    static const char *const names[] = {"sip.partner.example"};
    char buf[2048];
    replace(buf, sizeof(buf), invite, "alice@example.com", "alice@partner.example");
    struct sip_peer peer = {.src = SIP_SRC_PARTNER, .cert_names = names, .ncert_names = 1};
    struct sip_verdict v;
    struct sip_route r;
    assert_int_equal(
        sip_check_bytes(&pol, &peer, (const uint8_t *)buf, strlen(buf), true, &msg, &v, &r), 0);
    replace(buf, sizeof(buf), invite, "alice@example.com", "alice@other.example");
    assert_int_equal(
        sip_check_bytes(&pol, &peer, (const uint8_t *)buf, strlen(buf), true, &msg, &v, &r), 1);
    assert_int_equal(v.status, 403);
    assert_string_equal(v.reason, "from_domain");
    assert_false(sip_cert_matches_domain(names, 1, "example"));
    assert_false(sip_cert_matches_domain(names, 1, "rtner.example"));
}

/* The certificate names are matched by common/certname.h's domain-suffix rule: a wildcard
 * or malformed name is no host inside the domain, and case does not matter. */
static void partner_certificate_names_that_are_no_hosts_vouch_for_nothing(void **st)
{
    (void)st;
    static const char *const hosts[] = {"SIP.Partner.Example"};
    assert_true(sip_cert_matches_domain(hosts, 1, "partner.example"));
    assert_true(sip_cert_matches_domain(hosts, 1, "sip.partner.EXAMPLE"));
    static const char *const odd[] = {"a.*.partner.example", "x..partner.example",
                                      "*.partner.example", NULL};
    assert_false(sip_cert_matches_domain(odd, 4, "partner.example"));
    assert_false(sip_cert_matches_domain(odd, 4, "*.partner.example"));
}

static void internal_request_routes_by_flow_or_uri(void **st)
{
    const char *t =
        "MESSAGE sip:alice@192.0.2.1:5062 SIP/2.0\r\n"
        "Route: <sip:tok123@127.0.0.21:5060;lr>\r\n"
        "Via: SIP/2.0/UDP 127.0.0.10;branch=z9hG4bKd\r\n"
        "From: <sip:bob@example.com>;tag=9\r\nTo: <sip:alice@example.com>\r\n"
        "Call-ID: x\r\nCSeq: 2 MESSAGE\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n";
    struct sip_peer peer = {.src = SIP_SRC_INTERNAL};
    struct sip_verdict v;
    struct sip_route r;
    struct sip_parsed *sp = NULL;
    assert_true(sip_msg_scan(&msg, (const uint8_t *)t, strlen(t), true, 65536) > 0);
    /* Parsed in an arena, as the edge does: the flow slice points into the tree, and the
     * tree's whole arena is free again once the caller is done. */
    struct sip_osip_arena arena;
    assert_int_equal(sip_osip_arena_init(&arena, 65536), 0);
    assert_int_equal(sip_validate(&pol, &peer, &msg, &arena, &v, &r, &sp), 0);
    assert_int_equal(r.kind, SIP_ROUTE_FLOW);
    assert_int_equal(r.pop, 1);
    assert_true(slice_eq_str(r.flow, "tok123"));
    assert_true(arena.used > 0);
    sip_parsed_free(sp);
    assert_int_equal(arena.used, 0);
    sip_osip_arena_free(&arena);
    const char *u =
        "MESSAGE sip:alice@192.0.2.1:5062;transport=tcp SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.10;branch=z9hG4bKd\r\n"
        "From: <sip:bob@example.com>;tag=9\r\nTo: <sip:alice@example.com>\r\n"
        "Call-ID: x\r\nCSeq: 2 MESSAGE\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(check(u, SIP_SRC_INTERNAL, &v, &r), 0);
    assert_int_equal(r.kind, SIP_ROUTE_URI);
    assert_string_equal(r.host, "192.0.2.1");
    assert_int_equal(r.port, 5062);
    assert_true(r.tcp);
}

static void unparseable_is_dropped(void **st)
{
    struct sip_verdict v;
    struct sip_route r;
    assert_int_equal(check("INVITE sip:bob@example.com SIP/2.0\r\nVia: \r\n\r\n",
                           SIP_SRC_REMOTE_USER, &v, &r) < 0 ||
                         v.status == 400,
                     1);
    assert_int_equal(check("\x16\x03\x01\x00garbage", SIP_SRC_REMOTE_USER, &v, &r), -EBADMSG);
}

/* A request from BASE_HDRS with its own request line, CSeq and extra lines. */
static const char *req(char *out, size_t cap, const char *line, const char *cseq, const char *extra)
{
    snprintf(out, cap,
             "%s\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK776asdhds;rport\r\n"
             "From: <sip:alice@example.com>;tag=1928301774\r\nTo: <sip:bob@example.com>\r\n"
             "Call-ID: a84b4c76e66710\r\nCSeq: %s\r\nMax-Forwards: 70\r\n%s"
             "Content-Length: 0\r\n\r\n",
             line, cseq, extra);
    return out;
}

/* RFC 3261 §18.3, RFC 4475 §3.1.1.8: bytes after the body of a datagram are discarded. */
static void datagram_discards_bytes_after_the_body(void **st)
{
    char two[2048];
    snprintf(two, sizeof(two), "%sINVITE sip:x@example.com SIP/2.0\r\n\r\n", invite);
    struct sip_verdict v;
    struct sip_route r;
    assert_int_equal(check(two, SIP_SRC_REMOTE_USER, &v, &r), 0);
    assert_int_equal(msg.len, strlen(invite));
    assert_int_equal(msg.body_len, 4);
}

/* RFC 4475 §3.1.1.1: LWS (folding, tabs) between the CSeq number and method. */
static void cseq_with_folding_or_tab_is_valid(void **st)
{
    char b[1024];
    struct sip_verdict v;
    struct sip_route r;
    assert_int_equal(
        check(req(b, sizeof(b), "OPTIONS sip:bob@example.com SIP/2.0", "0009\r\n  OPTIONS", ""),
              SIP_SRC_REMOTE_USER, &v, &r),
        0);
    assert_int_equal(
        check(req(b, sizeof(b), "OPTIONS sip:bob@example.com SIP/2.0", "1\tOPTIONS", ""),
              SIP_SRC_REMOTE_USER, &v, &r),
        0);
}

/* RFC 4475 §3.1.2.7-10, §3.1.2.16: a malformed request line is answered, not dropped. */
static void malformed_request_lines_are_answered(void **st)
{
    static const char *const bad[] = {
        "INVITE  sip:bob@example.com SIP/2.0",    /* two SP */
        "INVITE sip:bob@example.com SIP/2.0  ",   /* trailing SP */
        "INVITE <sip:bob@example.com> SIP/2.0",   /* <> */
        "INVITE sip:bob@example.com; lr SIP/2.0", /* LWS in the URI */
        "INVITE bob SIP/2.0",                     /* no scheme */
        "INVITE sip:bob@example.com SIP/2.0 x",
    };
    char b[1024];
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        expect(req(b, sizeof(b), bad[i], "1 INVITE", ""), SIP_SRC_REMOTE_USER, 400, "malformed",
               "Request-Line");
    expect(req(b, sizeof(b), "OPTIONS sip:bob@example.com SIP/7.0", "1 OPTIONS", ""),
           SIP_SRC_REMOTE_USER, 505, "version", NULL);
    /* Lower case is the same version (RFC 5234 strings are case-insensitive). */
    struct sip_verdict v;
    struct sip_route r;
    assert_int_equal(
        check(req(b, sizeof(b), "OPTIONS sip:bob@example.com sip/2.0", "1 OPTIONS", ""),
              SIP_SRC_REMOTE_USER, &v, &r),
        0);
    /* Nothing to answer to: noise, dropped. */
    assert_int_equal(check("GET / HTTP/1.1\r\nHost: x\r\n\r\n", SIP_SRC_REMOTE_USER, &v, &r),
                     -EBADMSG);
    /* A response with a status over 699 is dropped (RFC 4475 §3.1.2.19). */
    assert_int_equal(check("SIP/2.0 4294967301 x\r\n" BASE_HDRS "Content-Length: 0\r\n\r\n",
                           SIP_SRC_REMOTE_USER, &v, &r),
                     -EBADMSG);
}

/* A response from the inside (the Director's answer) is checked on the raw index only:
 * one osip2 would refuse goes on from there, and is dropped from outside; one missing a
 * mandatory header, or with a status out of range, is dropped from either side. */
static void inside_responses_are_checked_on_the_raw_index(void **st)
{
    struct sip_verdict v;
    struct sip_route r;
    const char *odd = "SIP/2.0 200 OK\r\n"
                      "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK776asdhds;rport\r\n"
                      "From: Alice <sip:alice@example.com;tag=1928301774\r\n"
                      "To: Bob <sip:bob@example.com>;tag=9\r\nCall-ID: a84b4c76e66710\r\n"
                      "CSeq: 314159 INVITE\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(check(odd, SIP_SRC_REMOTE_USER, &v, &r), -EBADMSG);
    assert_int_equal(check(odd, SIP_SRC_PARTNER, &v, &r), -EBADMSG);
    assert_int_equal(check(odd, SIP_SRC_INTERNAL, &v, &r), 0);
    const char *no_to = "SIP/2.0 200 OK\r\n"
                        "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK776asdhds;rport\r\n"
                        "From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
                        "Call-ID: a84b4c76e66710\r\nCSeq: 314159 INVITE\r\n"
                        "Content-Length: 0\r\n\r\n";
    assert_int_equal(check(no_to, SIP_SRC_INTERNAL, &v, &r), 1);
    assert_string_equal(v.reason, "missing_header");
    assert_int_equal(check("SIP/2.0 4294967301 x\r\n" BASE_HDRS "Content-Length: 0\r\n\r\n",
                           SIP_SRC_INTERNAL, &v, &r),
                     -EBADMSG);
    /* Requests from the inside are parsed as before. */
    assert_int_equal(check("OPTIONS sip:bob@192.0.2.9 SIP/2.0\r\n"
                           "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK776asdhds\r\n"
                           "From: Alice <sip:alice@example.com;tag=1\r\n"
                           "To: Bob <sip:bob@example.com>\r\nCall-ID: a\r\n"
                           "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                           SIP_SRC_INTERNAL, &v, &r),
                     1);
}

static void request_uri_scheme_and_headers(void **st)
{
    char b[1024];
    expect(req(b, sizeof(b), "OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0", "1 OPTIONS", ""),
           SIP_SRC_REMOTE_USER, 416, "uri_scheme", NULL);
    expect(req(b, sizeof(b), "OPTIONS tel:+15551234 SIP/2.0", "1 OPTIONS", ""), SIP_SRC_REMOTE_USER,
           416, "uri_scheme", NULL);
    expect(req(b, sizeof(b), "INVITE sip:bob@example.com?Route=%3Csip:example.com%3E SIP/2.0",
               "1 INVITE", ""),
           SIP_SRC_REMOTE_USER, 400, "malformed", "Request-URI");
    /* A '?' in the user part is not a header (RFC 4475 §3.1.1.2). */
    struct sip_verdict v;
    struct sip_route r;
    assert_int_equal(
        check(req(b, sizeof(b), "OPTIONS sip:crazy?,/;;*@example.com SIP/2.0", "1 OPTIONS", ""),
              SIP_SRC_REMOTE_USER, &v, &r),
        0);
}

/* RFC 3261 §16.3 step 5, RFC 4475 §3.3.5: the edge supports no proxy extension. */
static void proxy_require_is_420_with_unsupported(void **st)
{
    char b[1024];
    struct sip_verdict v;
    struct sip_route r;
    req(b, sizeof(b), "OPTIONS sip:bob@example.com SIP/2.0", "1 OPTIONS",
        "Require: uasOnly\r\nProxy-Require: noProxiesSupportThis, nor\r\n this\r\n");
    assert_int_equal(check(b, SIP_SRC_REMOTE_USER, &v, &r), 1);
    assert_int_equal(v.status, 420);
    assert_string_equal(v.reason, "extension");
    assert_string_equal(v.extra, "Unsupported: noProxiesSupportThis, nor   this\r\n");
    /* Require is for the UAS: a proxy passes it on. */
    req(b, sizeof(b), "OPTIONS sip:bob@example.com SIP/2.0", "1 OPTIONS", "Require: x\r\n");
    assert_int_equal(check(b, SIP_SRC_REMOTE_USER, &v, &r), 0);
}

static void cseq_range_and_method(void **st)
{
    char b[1024];
    expect(req(b, sizeof(b), "OPTIONS sip:bob@example.com SIP/2.0", "2147483648 OPTIONS", ""),
           SIP_SRC_REMOTE_USER, 400, "malformed", "CSeq");
    expect(req(b, sizeof(b), "OPTIONS sip:bob@example.com SIP/2.0", "36893488147419103232 OPTIONS",
               ""),
           SIP_SRC_REMOTE_USER, 400, "malformed", "CSeq");
    struct sip_verdict v;
    struct sip_route r;
    assert_int_equal(
        check(req(b, sizeof(b), "OPTIONS sip:bob@example.com SIP/2.0", "2147483647 OPTIONS", ""),
              SIP_SRC_REMOTE_USER, &v, &r),
        0);
    /* An unknown method whose CSeq differs: the mismatch first (RFC 4475 §3.1.2.18). */
    expect(req(b, sizeof(b), "NEWMETHOD sip:bob@example.com SIP/2.0", "8 INVITE", ""),
           SIP_SRC_REMOTE_USER, 400, "cseq", NULL);
    expect(req(b, sizeof(b), "NEWMETHOD sip:bob@example.com SIP/2.0", "8 NEWMETHOD", ""),
           SIP_SRC_REMOTE_USER, 405, "method", NULL);
}

/* Content-Length faults: a datagram is answered 400; a stream cannot be framed past them,
 * and says so with the header section indexed, so that the caller can answer first. */
static void content_length_faults(void **st)
{
    const char *neg = "INVITE sip:bob@example.com SIP/2.0\r\n" BASE_HDRS
                      "Max-Forwards: 70\r\nContent-Length: -999\r\n\r\nv=0\n";
    expect(neg, SIP_SRC_REMOTE_USER, 400, "content_length", NULL);
    assert_int_equal(sip_msg_scan(&msg, (const uint8_t *)neg, strlen(neg), false, 65536), -EBADMSG);
    assert_true(msg.hdr_end > 0);
    const char *two = "INVITE sip:bob@example.com SIP/2.0\r\n" BASE_HDRS
                      "Max-Forwards: 70\r\nContent-Length: 4\r\nl: 5\r\n\r\nv=0\n";
    assert_int_equal(sip_msg_scan(&msg, (const uint8_t *)two, strlen(two), false, 65536), -EBADMSG);
    assert_true(msg.hdr_end > 0);
    /* Too large: known as soon as the header section is in, before the body arrives. */
    const char *big = "INVITE sip:bob@example.com SIP/2.0\r\n" BASE_HDRS
                      "Max-Forwards: 70\r\nContent-Length: 100000\r\n\r\nv=0\n";
    assert_int_equal(sip_msg_scan(&msg, (const uint8_t *)big, strlen(big), false, 65536),
                     -EMSGSIZE);
    assert_true(msg.hdr_end > 0);
    assert_true(msg.is_request);
    /* A header section past the limit: nothing indexed to answer with. */
    char hdrs[800];
    memset(hdrs, 'a', sizeof(hdrs));
    memcpy(hdrs, "INVITE sip:b@example.com SIP/2.0\r\nX: ", 37);
    assert_int_equal(sip_msg_scan(&msg, (const uint8_t *)hdrs, sizeof(hdrs), false, 512),
                     -EMSGSIZE);
    assert_int_equal(msg.hdr_end, 0);
}

/* osip2 leaks a multipart body part with two Content-Types (fuzz_sip_msg found it): the
 * edge hands it the header section only, so validating such a message costs nothing lasting.
 * Heap in use (mallinfo2) is compared over 2,000 messages; under ASan, LeakSanitizer says. */
static void multipart_body_with_doubled_part_content_type_leaks_nothing(void **st)
{
    static const char mp[] =
        "MESSAGE sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKmp1;rport\r\n"
        "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
        "Call-ID: mp1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
        "Content-Type: multipart/mixed;boundary=b1\r\nContent-Length: 71\r\n\r\n"
        "--b1\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\n\r\nhi\r\n--b1--\r\n";
    struct sip_verdict v;
    struct sip_route r;
    assert_int_equal(check(mp, SIP_SRC_REMOTE_USER, &v, &r), 0);
    struct mallinfo2 before = mallinfo2();
    for (int i = 0; i < 2000; i++)
        check(mp, SIP_SRC_REMOTE_USER, &v, &r);
    struct mallinfo2 after = mallinfo2();
#ifndef __SANITIZE_ADDRESS__
    assert_true(after.uordblks < before.uordblks + 16384);
#else
    (void)before, (void)after;
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(multipart_body_with_doubled_part_content_type_leaks_nothing),
        cmocka_unit_test(good_invite_goes_to_director),
        cmocka_unit_test(scan_frames_stream_by_content_length),
        cmocka_unit_test(compact_forms_count),
        cmocka_unit_test(missing_each_mandatory_header_is_400_naming_it),
        cmocka_unit_test(duplicate_single_header_is_400),
        cmocka_unit_test(content_length_mismatch_is_400),
        cmocka_unit_test(oversized_client_message_is_513),
        cmocka_unit_test(too_many_headers_and_long_lines_are_400),
        cmocka_unit_test(method_allow_list_per_source),
        cmocka_unit_test(max_forwards_zero_is_483),
        cmocka_unit_test(own_via_from_outside_is_482),
        cmocka_unit_test(foreign_domain_from_outside_is_403),
        cmocka_unit_test(partner_from_domain_must_match_certificate),
        cmocka_unit_test(partner_certificate_names_that_are_no_hosts_vouch_for_nothing),
        cmocka_unit_test(internal_request_routes_by_flow_or_uri),
        cmocka_unit_test(unparseable_is_dropped),
        cmocka_unit_test(datagram_discards_bytes_after_the_body),
        cmocka_unit_test(cseq_with_folding_or_tab_is_valid),
        cmocka_unit_test(malformed_request_lines_are_answered),
        cmocka_unit_test(request_uri_scheme_and_headers),
        cmocka_unit_test(proxy_require_is_420_with_unsupported),
        cmocka_unit_test(cseq_range_and_method),
        cmocka_unit_test(content_length_faults),
        cmocka_unit_test(inside_responses_are_checked_on_the_raw_index),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
