/* Proxy surgery: forwarded requests and responses keep every byte they should and change
 * only what RFC 3261 §16.6/§16.7 says; branches, flow tokens and replies round-trip. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "common/sip/sip_msg.h"
#include "common/sip/sip_proxy.h"

static struct sip_msg m;
static uint8_t out[8192];

static const char req[] =
    "INVITE sip:bob@example.com SIP/2.0\r\n"
    "Route: <sip:127.0.0.11:5060;lr>, <sip:tok@127.0.0.21:5060;lr>, <sip:next.example;lr>\r\n"
    "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKabc;rport\r\n"
    "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
    "Call-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    "ms-edge-proxy-message-trust: ms-source-type=AuthorizedServer\r\n"
    "Content-Length: 3\r\n\r\nabc";

static void scan(const char *t)
{
    assert_true(sip_msg_scan(&m, (const uint8_t *)t, strlen(t), true, 65536) > 0);
}

static void forwarded_request_gets_via_pops_routes_strips_trust(void **st)
{
    scan(req);
    struct addr src;
    addr_parse(&src, "198.51.100.7:40000", 0);
    static const char ins[] = "Via: SIP/2.0/UDP 127.0.0.21:5060;branch=z9hG4bKx.0\r\n";
    struct sip_fwd_opts o = {.insert = slice_make(ins, sizeof(ins) - 1),
                             .pop_routes = 2,
                             .src = &src,
                             .drop = SIP_HDR_BIT(SIP_H_TRUST)};
    ssize_t n = sip_fwd_request(&m, &o, out, sizeof(out));
    assert_true(n > 0);
    out[n] = 0;
    const char *s = (const char *)out;
    assert_non_null(strstr(s, "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.21"));
    assert_non_null(strstr(s, "Route: <sip:next.example;lr>\r\n"));
    assert_null(strstr(s, "tok@"));
    assert_non_null(strstr(s, "branch=z9hG4bKabc;rport=40000;received=198.51.100.7\r\n"));
    assert_non_null(strstr(s, "Max-Forwards: 69\r\n"));
    assert_null(strstr(s, "ms-edge-proxy-message-trust"));
    assert_non_null(strstr(s, "\r\n\r\nabc"));
    /* The result is itself a well-formed message. */
    assert_true(sip_msg_scan(&m, out, (size_t)n, true, 65536) > 0);
    assert_int_equal(m.count[SIP_H_VIA], 2);
}

/* RFC 3261 §16.6 step 3: a request with no Max-Forwards (RFC 2543's) leaves with one of 70. */
static void forwarded_request_without_max_forwards_gets_one(void **st)
{
    static const char old[] = "INVITE sip:bob@example.com SIP/2.0\r\n"
                              "Via: SIP/2.0/UDP gw.example.com\r\n"
                              "From: <sip:a@example.com>\r\nTo: <sip:bob@example.com>\r\n"
                              "Call-ID: c2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    scan(old);
    static const char ins[] = "Via: SIP/2.0/UDP 127.0.0.21:5060;branch=z9hG4bKx.0\r\n";
    struct sip_fwd_opts o = {.insert = slice_make(ins, sizeof(ins) - 1)};
    ssize_t n = sip_fwd_request(&m, &o, out, sizeof(out));
    assert_true(n > 0);
    out[n] = 0;
    assert_non_null(strstr((const char *)out, "\r\nMax-Forwards: 70\r\n"));
    assert_true(sip_msg_scan(&m, out, (size_t)n, true, 65536) > 0);
    assert_int_equal(m.count[SIP_H_MAX_FORWARDS], 1);
}

static void forwarded_response_drops_our_via_and_routes_by_next(void **st)
{
    const char *r =
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP 127.0.0.21:5060;branch=z9hG4bK0123456789abcdef.1f, "
        "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKabc;rport=40000;received=198.51.100.7\r\n"
        "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>;tag=2\r\n"
        "Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    scan(r);
    uint64_t h;
    uint32_t cid;
    assert_true(sip_branch_parse(sip_top_branch(&m), &h, &cid));
    assert_int_equal(h, 0x0123456789abcdefULL);
    assert_int_equal(cid, 0x1f);
    struct addr to;
    assert_int_equal(sip_response_next_hop(&m, &to), 0);
    char b[ADDR_STRLEN];
    assert_string_equal(addr_format(&to, b), "198.51.100.7:40000");
    ssize_t n = sip_fwd_response(&m, SLICE_NULL, SIP_HDR_BIT(SIP_H_TRUST), out, sizeof(out));
    assert_true(n > 0);
    out[n] = 0;
    assert_non_null(strstr((char *)out, "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;"));
    assert_null(strstr((char *)out, "127.0.0.21"));
}

static void branch_is_stable_for_retransmission_and_cancel(void **st)
{
    scan(req);
    uint64_t a = sip_branch_hash(42, &m);
    char cancel[1024];
    snprintf(cancel, sizeof(cancel), "%s",
             "CANCEL sip:bob@example.com SIP/2.0\r\n"
             "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKabc;rport\r\n"
             "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
             "Call-ID: c1\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    scan(cancel);
    assert_true(sip_branch_hash(42, &m) == a);
    assert_false(sip_branch_hash(43, &m) == a);
    char br[SIP_BRANCH_MAX];
    size_t l = sip_branch_format(a, 7, br);
    uint64_t h;
    uint32_t c;
    assert_true(sip_branch_parse(slice_make(br, l), &h, &c));
    assert_true(h == a);
    assert_int_equal(c, 7);
    assert_false(sip_branch_parse(slice_str("z9hG4bKabc"), &h, &c));
}

static void flow_token_round_trips_and_rejects_forgery(void **st)
{
    uint8_t key[SIP_FLOW_KEY_LEN] = {1, 2, 3};
    struct sip_flow f = {.stream = true, .conn_id = 77}, g;
    addr_parse(&f.addr, "203.0.113.9:5099", 0);
    char tok[SIP_FLOW_TOKEN_MAX];
    int n = sip_flow_encode(key, &f, tok, sizeof(tok));
    assert_true(n > 0);
    assert_int_equal(sip_flow_decode(key, slice_make(tok, (size_t)n), &g), 0);
    assert_true(g.stream);
    assert_int_equal(g.conn_id, 77);
    assert_true(addr_eq(&g.addr, &f.addr));
    tok[1] = tok[1] == '4' ? '5' : '4'; /* another connection id */
    assert_int_equal(sip_flow_decode(key, slice_make(tok, (size_t)n), &g), -EACCES);
}

static void reply_copies_dialog_headers_and_adds_tag(void **st)
{
    scan(req);
    ssize_t n = sip_reply_make(&m, 403, "Forbidden", "t1",
                               slice_str("Warning: 399 edge \"no\"\r\n"), out, sizeof(out));
    assert_true(n > 0);
    out[n] = 0;
    const char *s = (const char *)out;
    assert_non_null(strstr(s, "SIP/2.0 403 Forbidden\r\n"));
    assert_non_null(strstr(s, "To: <sip:bob@example.com>;tag=t1\r\n"));
    assert_non_null(strstr(s, "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKabc;rport\r\n"));
    assert_non_null(strstr(s, "Warning: 399 edge \"no\"\r\nContent-Length: 0\r\n\r\n"));
    assert_null(strstr(s, "Route:"));
    assert_int_equal(sip_reply_make(&m, 403, NULL, "t1", SLICE_NULL, out, 20), -ENOSPC);
    /* The edge's own answers fill rport/received as forwarded ones do (RFC 3581 §4). */
    struct addr src;
    addr_parse(&src, "203.0.113.9:40001", 5060);
    n = sip_reply_make_src(&m, &src, 483, NULL, "t1", SLICE_NULL, out, sizeof(out));
    assert_true(n > 0);
    out[n] = 0;
    assert_non_null(strstr((const char *)out, "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKabc;"
                                              "rport=40001;received=203.0.113.9\r\n"));
}

static void seal_round_trips_and_detects_tampering(void **st)
{
    uint8_t key[SIP_FLOW_KEY_LEN] = {9};
    const char *vias = "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa\r\nVia: SIP/2.0/UDP 10.0.0.2\r\n";
    char tok[1024];
    ssize_t n = sip_seal(key, 7, slice_str(vias), tok, sizeof(tok));
    assert_true(n > 0);
    assert_null(strstr(tok, "10.0.0"));
    uint8_t back[1024];
    ssize_t m2 = sip_unseal(key, slice_make(tok, (size_t)n), back, sizeof(back));
    assert_int_equal(m2, (ssize_t)strlen(vias));
    assert_memory_equal(back, vias, strlen(vias));
    tok[10] = tok[10] == 'A' ? 'B' : 'A';
    assert_int_equal(sip_unseal(key, slice_make(tok, (size_t)n), back, sizeof(back)), -EACCES);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(forwarded_request_gets_via_pops_routes_strips_trust),
        cmocka_unit_test(forwarded_request_without_max_forwards_gets_one),
        cmocka_unit_test(forwarded_response_drops_our_via_and_routes_by_next),
        cmocka_unit_test(branch_is_stable_for_retransmission_and_cancel),
        cmocka_unit_test(flow_token_round_trips_and_rejects_forgery),
        cmocka_unit_test(reply_copies_dialog_headers_and_adds_tag),
        cmocka_unit_test(seal_round_trips_and_detects_tampering),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
