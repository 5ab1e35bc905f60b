/* Topology hiding: encoded Contacts and sealed Record-Route sets carry no inside host, come
 * back exactly as they were, and a changed token is refused. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "access-edge/sip_topo.h"
#include "common/sip/sip_msg.h"

static const uint8_t key[SIP_FLOW_KEY_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
static const struct sip_topo topo = {
    key, 42, {(const uint8_t *)"198.51.100.1:5060;transport=tcp", 31}};
static struct sip_msg m;
static char text[8192], out[8192];

/* Scans a message made of start line, the given header lines and an empty body. */
static void scan(const char *start, const char *hdrs)
{
    snprintf(text, sizeof(text),
             "%s\r\nVia: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKx\r\nFrom: <sip:a@example.com>;tag=1"
             "\r\nTo: <sip:b@example.com>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n%sContent-Length: 0"
             "\r\n\r\n",
             start, hdrs);
    assert_true(sip_msg_scan(&m, (const uint8_t *)text, strlen(text), true, 65536) > 0);
}

/* The edge's own addresses in these tests: 198.51.100.1 outside, 10.0.0.21 inside. */
static bool is_own(struct slice e, void *arg)
{
    struct slice host;
    uint16_t port;
    return sip_uri_host_port(e, &host, &port) &&
           (slice_eq_str(host, "198.51.100.1") || slice_eq_str(host, "10.0.0.21"));
}
static bool is_ext(struct slice e, void *arg)
{
    struct slice host;
    uint16_t port;
    return sip_uri_host_port(e, &host, &port) && slice_eq_str(host, "198.51.100.1");
}

/* Scans start + hdr, opens what is sealed in it (its first Route entry for a request, its
 * Record-Route set for a response) and compares the lines that come out with want. */
static void expect_opened(const char *start, const char *hdr, const char *want)
{
    scan(start, hdr);
    char got[8192];
    ssize_t n = m.is_request ? sip_topo_open_routes(key, &m, 1, is_own, NULL, got, sizeof(got))
                             : sip_topo_open_response_rr(key, &m, got, sizeof(got));
    assert_true(n > 0);
    got[n] = 0;
    assert_string_equal(got, want);
}

/* Our external entry (with its token) as an outside request's Route gives the inside route
 * set back; as a response's Record-Route (followed by rr_tail) it gives want_rr. */
static void expect_both_ways(const char *entry, const char *rr_tail, const char *want_rr)
{
    char hdr[4400];
    snprintf(hdr, sizeof(hdr), "Route: %s\r\n", entry);
    expect_opened("BYE sip:ae-c.x@198.51.100.1 SIP/2.0", hdr,
                  "Route: <sip:dir1.inside;lr>, <sip:10.0.0.9;lr>\r\n");
    snprintf(hdr, sizeof(hdr), "Record-Route: %s%s\r\n", entry, rr_tail);
    expect_opened("SIP/2.0 200 OK", hdr, want_rr);
}

static void contact_encoded_keeps_params_and_round_trips(void **st)
{
    scan("INVITE sip:b@example.com SIP/2.0",
         "Contact: \"Bob\" <sip:bob@10.0.0.5:5070;transport=udp>;expires=60, sip:x@10.0.0.6\r\n");
    ssize_t n = sip_topo_hide_contacts(&topo, &m, out, sizeof(out));
    assert_true(n > 0);
    out[n] = 0;
    assert_null(strstr(out, "10.0.0."));
    assert_non_null(strstr(out, "Contact: \"Bob\" <sip:ae-c."));
    assert_non_null(strstr(out, "@198.51.100.1:5060;transport=tcp>;expires=60\r\n"));
    /* The first encoded URI, as an in-dialog Request-URI, opens to the original. */
    char *u = strstr(out, "sip:ae-c.");
    *strchr(u, '>') = 0;
    char orig[512];
    n = sip_topo_contact_open(key, slice_str(u), orig, sizeof(orig));
    assert_int_equal(n, strlen("sip:bob@10.0.0.5:5070;transport=udp"));
    assert_string_equal(orig, "sip:bob@10.0.0.5:5070;transport=udp");
    /* One changed character in the token: refused. */
    u[12] = u[12] == 'A' ? 'B' : 'A';
    assert_int_equal(sip_topo_contact_open(key, slice_str(u), orig, sizeof(orig)), -EACCES);
    assert_int_equal(sip_topo_contact_open(key, slice_str("sip:bob@10.0.0.5"), orig, 512), 0);
}

static void request_route_set_sealed_then_restored_as_route(void **st)
{
    /* The inside's INVITE going out, record-routed by two inside proxies. */
    scan("INVITE sip:b@example.com SIP/2.0",
         "Record-Route: <sip:dir1.inside;lr>\r\nRecord-Route: <sip:10.0.0.9;lr>\r\n");
    char tok[4096];
    ssize_t n =
        sip_topo_seal_request_rr(&topo, slice_str("<sip:10.0.0.21:5060;lr>"), &m, tok, sizeof(tok));
    assert_true(n > 0);
    assert_null(strstr(tok, "10.0.0"));
    /* The outside's BYE comes back through our external entry; the 200 coming back in gets
     * the whole set back in Record-Route order. */
    char entry[4300];
    snprintf(entry, sizeof(entry), "<sip:t1@198.51.100.1:5060;lr;ae-rr=%s>", tok);
    expect_both_ways(entry, "",
                     "Record-Route: <sip:t1@198.51.100.1:5060;lr>, <sip:10.0.0.21:5060;lr>, "
                     "<sip:dir1.inside;lr>, <sip:10.0.0.9;lr>\r\n");
}

static void response_route_set_collapsed_into_external_entry(void **st)
{
    /* The inside's 200 to an INVITE from outside: two inside entries, our two, one outside. */
    scan("SIP/2.0 200 OK", "Record-Route: <sip:10.0.0.9;lr>, <sip:dir1.inside;lr>\r\n"
                           "Record-Route: <sip:10.0.0.21;lr>, <sip:t1@198.51.100.1;lr>\r\n"
                           "Record-Route: <sip:proxy.outside.example;lr>\r\n");
    ssize_t n = sip_topo_hide_response_rr(&topo, &m, is_ext, NULL, out, sizeof(out));
    assert_true(n > 0);
    out[n] = 0;
    assert_null(strstr(out, "10.0.0"));
    assert_null(strstr(out, "inside"));
    assert_memory_equal(out, "Record-Route: <sip:t1@198.51.100.1;lr;ae-rr=", 44);
    assert_non_null(strstr(out, ">, <sip:proxy.outside.example;lr>\r\n"));
    /* The caller's in-dialog request walks the set bottom-up: ours, then the inside's; a
     * response carrying it back in gets the original order. */
    char *rr = out + strlen("Record-Route: ");
    *strstr(rr, ", <sip:proxy") = 0;
    expect_both_ways(rr, ", <sip:proxy.outside.example;lr>",
                     "Record-Route: <sip:10.0.0.9;lr>, <sip:dir1.inside;lr>, <sip:10.0.0.21;lr>, "
                     "<sip:t1@198.51.100.1;lr>, <sip:proxy.outside.example;lr>\r\n");
}

static void hairpin_legs_both_hidden(void **st)
{
    /* Issue 12: a call between two outside users crosses the edge twice. The 200 going back
     * to the caller carries the callee leg's entries (ours too) above the caller leg's
     * external entry: all of them are sealed into that last external entry. */
    scan("SIP/2.0 200 OK", "Record-Route: <sip:tB@198.51.100.1;lr>, <sip:tB@10.0.0.21;lr>, "
                           "<sip:tA@10.0.0.21;lr>, <sip:tA@198.51.100.1;lr>\r\n");
    ssize_t n = sip_topo_hide_response_rr(&topo, &m, is_ext, NULL, out, sizeof(out));
    assert_true(n > 0);
    out[n] = 0;
    assert_null(strstr(out, "10.0.0."));
    assert_memory_equal(out, "Record-Route: <sip:tA@198.51.100.1;lr;ae-rr=", 44);
    /* The caller's in-dialog request through it: its own leg's internal entry goes, the
     * callee leg's pair stays (for the edge to take it out again). */
    char route[4400];
    snprintf(route, sizeof(route), "Route: %.*s\r\n", (int)(strlen(out) - 16), out + 14);
    expect_opened("BYE sip:ae-c.x@198.51.100.1 SIP/2.0", route,
                  "Route: <sip:tB@10.0.0.21;lr>, <sip:tB@198.51.100.1;lr>\r\n");
}

static void forged_route_token_refused(void **st)
{
    scan("BYE sip:b@198.51.100.1 SIP/2.0",
         "Route: <sip:198.51.100.1;lr;ae-rr=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA>\r\n");
    assert_int_equal(sip_topo_open_routes(key, &m, 1, is_own, NULL, out, sizeof(out)), -EACCES);
    scan("SIP/2.0 200 OK", "Record-Route: <sip:198.51.100.1;lr;ae-rr=zz>\r\n");
    assert_int_equal(sip_topo_open_response_rr(key, &m, out, sizeof(out)), -EACCES);
    /* Nothing sealed: nothing to do. */
    scan("SIP/2.0 200 OK", "Record-Route: <sip:198.51.100.1;lr>\r\n");
    assert_int_equal(sip_topo_open_response_rr(key, &m, out, sizeof(out)), 0);
}

static void uri_host_port_of_entries(void **st)
{
    struct slice h;
    uint16_t p;
    assert_true(sip_uri_host_port(slice_str("<sip:tok@10.0.0.21:5061;lr>"), &h, &p));
    assert_true(slice_eq_str(h, "10.0.0.21") && p == 5061);
    assert_true(sip_uri_host_port(slice_str("\"x\" <sips:[2001:db8::1]:5061;lr>;p"), &h, &p));
    assert_true(slice_eq_str(h, "2001:db8::1") && p == 5061);
    assert_true(sip_uri_host_port(slice_str("sip:host.example;lr"), &h, &p));
    assert_true(slice_eq_str(h, "host.example") && p == 0);
    assert_false(sip_uri_host_port(slice_str("<nothing>"), &h, &p));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(contact_encoded_keeps_params_and_round_trips),
        cmocka_unit_test(request_route_set_sealed_then_restored_as_route),
        cmocka_unit_test(response_route_set_collapsed_into_external_entry),
        cmocka_unit_test(hairpin_legs_both_hidden),
        cmocka_unit_test(forged_route_token_refused),
        cmocka_unit_test(uri_host_port_of_entries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
