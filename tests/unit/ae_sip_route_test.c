/* Route policy for requests from outside: only this hop's entries are removed, only the
 * edge's own signed entries survive, and everything else counts as foreign. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "access-edge/sip_route.h"
#include "common/sip/sip_msg.h"

static const uint8_t key[SIP_FLOW_KEY_LEN] = {9, 8, 7, 6, 5, 4, 3, 2, 1};
static struct sip_msg m;
static char text[8192], tokA[SIP_FLOW_TOKEN_MAX], tokB[SIP_FLOW_TOKEN_MAX];

static void scan(const char *start, const char *hdrs)
{
    snprintf(text, sizeof(text),
             "%s\r\nVia: SIP/2.0/UDP 192.0.2.5;branch=z9hG4bKx\r\nFrom: <sip:a@example.com>;tag=1"
             "\r\nTo: <sip:b@example.com>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n%sContent-Length: 0"
             "\r\n\r\n",
             start, hdrs);
    assert_true(sip_msg_scan(&m, (const uint8_t *)text, strlen(text), true, 65536) > 0);
}

/* The edge: 198.51.100.1 outside, 10.0.0.21 inside. */
static enum sip_route_side side(struct slice e, void *arg)
{
    (void)arg;
    const char *s = (const char *)e.p;
    size_t n = e.len;
    if (memmem(s, n, "198.51.100.1", 12))
        return SIP_RS_EXT;
    if (memmem(s, n, "10.0.0.21", 9))
        return SIP_RS_INT;
    return SIP_RS_FOREIGN;
}

static int setup(void **st)
{
    (void)st;
    struct sip_flow a = {.stream = false, .conn_id = 0}, b = {.stream = true, .conn_id = 7};
    addr_parse(&a.addr, "192.0.2.5", 5062);
    addr_parse(&b.addr, "192.0.2.6", 40000);
    assert_true(sip_flow_encode(key, &a, tokA, sizeof(tokA)) > 0);
    assert_true(sip_flow_encode(key, &b, tokB, sizeof(tokB)) > 0);
    return 0;
}

static struct sip_route_plan plan(const char *start, const char *hdrs, bool in_dialog)
{
    scan(start, hdrs);
    struct sip_route_plan p;
    sip_route_plan_ext(&m, in_dialog, key, side, NULL, &p);
    return p;
}

static void kept_line(const struct sip_route_plan *p, const char *want)
{
    char out[1024];
    ssize_t n = sip_route_write_kept(p, out, sizeof(out));
    assert_true(n >= 0);
    out[n] = 0;
    assert_string_equal(out, want);
}

static void initial_request_keeps_no_route(void **st)
{
    (void)st;
    /* Issue 12: a preloaded Route to an inside host, or through our inside address to
     * anywhere, is foreign; our own outbound-proxy entry at the top is this hop's. */
    struct sip_route_plan p = plan("INVITE sip:b@example.com SIP/2.0",
                                   "Route: <sip:198.51.100.1;lr>, <sip:10.0.0.10:5060;lr>\r\n"
                                   "Route: <sip:10.0.0.21;lr>, <sip:203.0.113.9:5099;lr>\r\n",
                                   false);
    assert_int_equal(p.pop, 1);
    assert_int_equal(p.nkeep, 0);
    assert_int_equal(p.foreign, 3);
    kept_line(&p, "");
    p = plan("MESSAGE sip:b@example.com SIP/2.0", "Route: <sip:10.0.0.10:5060>\r\n", false);
    assert_int_equal(p.pop, 0);
    assert_int_equal(p.foreign, 1);
    p = plan("MESSAGE sip:b@example.com SIP/2.0", "", false);
    assert_int_equal(p.pop + p.foreign + p.nkeep, 0);
}

static void hairpin_pops_only_this_legs_pair(void **st)
{
    (void)st;
    /* The caller's route set through the edge twice (RFC 5658): its own leg's pair, then
     * the callee's leg, which must stay so that the request comes back through the edge. */
    char hdr[1024];
    snprintf(hdr, sizeof(hdr),
             "Route: <sip:%s@198.51.100.1:5060;lr>, <sip:%s@10.0.0.21;lr>\r\n"
             "Route: <sip:%s@10.0.0.21;lr>, <sip:%s@198.51.100.1:5061;lr;transport=tls>\r\n",
             tokA, tokA, tokB, tokB);
    struct sip_route_plan p = plan("BYE sip:b@192.0.2.6:40000 SIP/2.0", hdr, true);
    assert_int_equal(p.pop, 2);
    assert_true(p.hop_signed);
    assert_int_equal(p.nkeep, 2);
    assert_int_equal(p.foreign, 0);
    char want[1024];
    snprintf(want, sizeof(want),
             "Route: <sip:%s@10.0.0.21;lr>, <sip:%s@198.51.100.1:5061;lr;transport=tls>\r\n", tokB,
             tokB);
    kept_line(&p, want);
}

static void in_dialog_drops_foreign_and_unsigned_entries(void **st)
{
    (void)st;
    /* Through the Director, our inside address, then out to anyone: none of it is ours
     * signed, so nothing is kept. */
    struct sip_route_plan p =
        plan("BYE sip:x@203.0.113.9 SIP/2.0",
             "Route: <sip:10.0.0.10;lr>, <sip:10.0.0.21;lr>, <sip:203.0.113.9:5099;lr>\r\n", true);
    assert_int_equal(p.pop, 0);
    assert_int_equal(p.nkeep, 0);
    assert_int_equal(p.foreign, 3);
    /* Our addresses alone, unsigned: this hop's, but not a route set we recorded. */
    p = plan("BYE sip:x@partner.example SIP/2.0",
             "Route: <sip:198.51.100.1;lr>, <sip:10.0.0.21;lr>\r\n", true);
    assert_int_equal(p.pop, 2);
    assert_false(p.hop_signed);
    /* A forged token on our address is not ours. */
    char hdr[512];
    snprintf(
        hdr, sizeof(hdr),
        "Route: <sip:%s@198.51.100.1;lr>, <sip:10.0.0.21;lr>, <sip:forged.%s@10.0.0.21;lr>\r\n",
        tokA, tokB);
    p = plan("BYE sip:x@10.0.0.5 SIP/2.0", hdr, true);
    assert_int_equal(p.pop, 2);
    assert_int_equal(p.nkeep, 0);
    assert_int_equal(p.foreign, 1);
    /* A foreign entry between our pair ends this hop: the rest is judged entry by entry. */
    snprintf(hdr, sizeof(hdr),
             "Route: <sip:%s@198.51.100.1;lr>, <sip:evil.example;lr>, <sip:%s@10.0.0.21;lr>\r\n",
             tokA, tokB);
    p = plan("BYE sip:x@10.0.0.5 SIP/2.0", hdr, true);
    assert_int_equal(p.pop, 1);
    assert_int_equal(p.nkeep, 1);
    assert_int_equal(p.foreign, 1);
}

static void signed_entries(void **st)
{
    (void)st;
    char e[256];
    snprintf(e, sizeof(e), "<sip:%s@10.0.0.21;lr>", tokA);
    assert_true(sip_route_signed(key, slice_str(e)));
    assert_true(sip_route_signed(key, slice_str("<sip:198.51.100.1;lr;ae-rr=QUJD>")));
    assert_false(sip_route_signed(key, slice_str("<sip:10.0.0.21;lr>")));
    assert_false(sip_route_signed(key, slice_str("<sip:bob@10.0.0.21;lr>")));
    static const uint8_t other[SIP_FLOW_KEY_LEN] = {1};
    assert_false(sip_route_signed(other, slice_str(e)));
}

static void decisions(void **st)
{
    (void)st;
    struct sip_route_facts f = {.ruri_own = true};
    struct sip_route_plan p =
        plan("OPTIONS sip:198.51.100.1:5060 SIP/2.0", "Route: <sip:198.51.100.1;lr>\r\n", false);
    /* Item 10: a keep-alive for the edge itself. */
    assert_int_equal(sip_route_decide(&m, &f, &p), SIP_RA_KEEPALIVE);
    f.ruri_own = false;
    f.ruri_ours = true;
    assert_int_equal(sip_route_decide(&m, &f, &p), SIP_RA_FORWARD);
    p = plan("OPTIONS sip:bob@198.51.100.1:5060 SIP/2.0", "", false);
    f = (struct sip_route_facts){.ruri_own = true};
    assert_int_equal(sip_route_decide(&m, &f, &p), SIP_RA_FORWARD);
    p = plan("MESSAGE sip:198.51.100.1:5060 SIP/2.0", "", false);
    assert_int_equal(sip_route_decide(&m, &f, &p), SIP_RA_FORWARD);
    /* In dialog toward a foreign Request-URI: only along a signed hop. */
    f = (struct sip_route_facts){.in_dialog = true};
    p = plan("BYE sip:x@partner.example SIP/2.0",
             "Route: <sip:198.51.100.1;lr>, <sip:10.0.0.21;lr>\r\n", true);
    assert_int_equal(sip_route_decide(&m, &f, &p), SIP_RA_RELAY);
    char hdr[512];
    snprintf(hdr, sizeof(hdr), "Route: <sip:%s@198.51.100.1;lr>, <sip:%s@10.0.0.21;lr>\r\n", tokA,
             tokA);
    p = plan("BYE sip:x@192.0.2.5:5062 SIP/2.0", hdr, true);
    assert_int_equal(sip_route_decide(&m, &f, &p), SIP_RA_FORWARD);
    /* Foreign entries: stripped, or refused under reject. */
    f = (struct sip_route_facts){.ruri_ours = true};
    p = plan("MESSAGE sip:b@example.com SIP/2.0", "Route: <sip:10.0.0.10:5060;lr>\r\n", false);
    assert_int_equal(sip_route_decide(&m, &f, &p), SIP_RA_FORWARD);
    f.reject_foreign = true;
    assert_int_equal(sip_route_decide(&m, &f, &p), SIP_RA_FOREIGN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(initial_request_keeps_no_route),
        cmocka_unit_test(hairpin_pops_only_this_legs_pair),
        cmocka_unit_test(in_dialog_drops_foreign_and_unsigned_entries),
        cmocka_unit_test(signed_entries),
        cmocka_unit_test(decisions),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
