/* The pure steps of forwarding a request (access-edge/ae_fwd.c): the Request-URI's transport,
 * the transaction gate, and the inserted lines (order, formats, overflow). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "access-edge/ae.h"
#include "access-edge/ae_fwd.h"

static void uri_transport(void **st)
{
    uint16_t port;
    assert_int_equal(ae_fwd_uri_transport(false, false, 0, &port), AE_TP_UDP);
    assert_int_equal(port, 5060);
    assert_int_equal(ae_fwd_uri_transport(true, false, 0, &port), AE_TP_TCP);
    assert_int_equal(port, 5060);
    assert_int_equal(ae_fwd_uri_transport(false, true, 0, &port), AE_TP_TLS);
    assert_int_equal(port, 5061);
    assert_int_equal(ae_fwd_uri_transport(true, true, 5081, &port), AE_TP_TLS);
    assert_int_equal(port, 5081);
}

static void gate(void **st)
{
    struct ae_txn live = {0}, done = {.final = true}, cancelled = {.cancelled = true};
    assert_int_equal(ae_fwd_gate(AE_M_INVITE, NULL, false), AE_GATE_NEW_INVITE);
    assert_int_equal(ae_fwd_gate(AE_M_INVITE, NULL, true), AE_GATE_DRAINING);
    assert_int_equal(ae_fwd_gate(AE_M_INVITE, &live, false), AE_GATE_INVITE_RETRANS);
    assert_int_equal(ae_fwd_gate(AE_M_INVITE, &live, true), AE_GATE_INVITE_RETRANS);
    assert_int_equal(ae_fwd_gate(AE_M_CANCEL, NULL, false), AE_GATE_CANCEL_UNKNOWN);
    assert_int_equal(ae_fwd_gate(AE_M_CANCEL, &live, false), AE_GATE_CANCEL_FORWARD);
    assert_int_equal(ae_fwd_gate(AE_M_CANCEL, &live, true), AE_GATE_CANCEL_FORWARD);
    assert_int_equal(ae_fwd_gate(AE_M_CANCEL, &done, false), AE_GATE_CANCEL_DONE);
    assert_int_equal(ae_fwd_gate(AE_M_CANCEL, &cancelled, false), AE_GATE_CANCEL_DONE);
    assert_int_equal(ae_fwd_gate(AE_M_ACK, NULL, true), AE_GATE_FORWARD_ACK);
    assert_int_equal(ae_fwd_gate(AE_M_ACK, &done, false), AE_GATE_FORWARD_ACK);
    /* The ACK of a final answer the edge made itself (its next hop down) ends at the edge. */
    struct ae_txn ours = {.final = true, .local_final = true};
    assert_int_equal(ae_fwd_gate(AE_M_ACK, &ours, false), AE_GATE_ABSORB_ACK);
    assert_int_equal(ae_fwd_gate(AE_M_OTHER, NULL, true), AE_GATE_FORWARD);
}

static void ins_order_and_format(void **st)
{
    char out[1024];
    struct ae_fwd_ins in = {.via_tp = "TLS",
                            .via_host = "192.0.2.1:5061",
                            .branch = "z9hG4bKx",
                            .alias = true,
                            .routes = slice_str("Route: <sip:a;lr>\r\n"),
                            .record_route = slice_str("Record-Route: <sip:rr;lr>\r\n"),
                            .path_tok = "tok",
                            .path_uri = "10.0.0.1;lr;ob",
                            .trust = slice_str("ms-edge-proxy-message-trust: x\r\n")};
    ssize_t n = ae_fwd_build_ins(&in, out, sizeof(out));
    const char *want = "Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bKx;alias\r\n"
                       "Route: <sip:a;lr>\r\n"
                       "Record-Route: <sip:rr;lr>\r\n"
                       "Path: <sip:tok@10.0.0.1;lr;ob>\r\n"
                       "ms-edge-proxy-message-trust: x\r\n";
    assert_int_equal(n, (ssize_t)strlen(want));
    assert_string_equal(out, want);

    struct ae_fwd_ins hide = {.via_tp = "UDP",
                              .via_host = "h:1",
                              .branch = "b",
                              .seal = "SEALED",
                              .contacts = slice_str("Contact: <sip:c>\r\n"),
                              .path_tok = "",
                              .path_uri = "ignored"};
    n = ae_fwd_build_ins(&hide, out, sizeof(out));
    assert_true(n > 0);
    assert_string_equal(out, "Via: SIP/2.0/UDP h:1;branch=b;ae-th=SEALED\r\nContact: <sip:c>\r\n");
}

static void ins_overflow_is_enospc(void **st)
{
    char out[64];
    struct ae_fwd_ins in = {.via_tp = "UDP", .via_host = "h:1", .branch = "b"};
    ssize_t full = ae_fwd_build_ins(&in, out, sizeof(out));
    assert_true(full > 0);
    /* exactly full (no room for the terminator) and every later piece fail, never overrun */
    assert_int_equal(ae_fwd_build_ins(&in, out, (size_t)full), -ENOSPC);
    char big[200];
    memset(big, 'x', sizeof(big));
    struct slice s = slice_make(big, sizeof(big));
    struct ae_fwd_ins r = in, c = in, rr = in, t = in;
    r.routes = s, c.contacts = s, rr.record_route = s, t.trust = s;
    assert_int_equal(ae_fwd_build_ins(&r, out, sizeof(out)), -ENOSPC);
    assert_int_equal(ae_fwd_build_ins(&c, out, sizeof(out)), -ENOSPC);
    assert_int_equal(ae_fwd_build_ins(&rr, out, sizeof(out)), -ENOSPC);
    assert_int_equal(ae_fwd_build_ins(&t, out, sizeof(out)), -ENOSPC);
    struct ae_fwd_ins p = in;
    p.path_uri = "u";
    char tok[60];
    memset(tok, 't', 59);
    tok[59] = 0;
    p.path_tok = tok;
    assert_int_equal(ae_fwd_build_ins(&p, out, sizeof(out)), -ENOSPC);
    assert_int_equal(ae_fwd_build_ins(&in, out, 0), -ENOSPC);
}

static void record_route_pair(void **st)
{
    char out[256];
    ssize_t n = ae_fwd_record_route("T", "int;lr", "ext;lr", out, sizeof(out));
    assert_int_equal(n, (ssize_t)strlen(out));
    assert_string_equal(out, "Record-Route: <sip:T@int;lr>\r\nRecord-Route: <sip:T@ext;lr>\r\n");
    ae_fwd_record_route("", "a", "b", out, sizeof(out));
    assert_string_equal(out, "Record-Route: <sip:a>\r\nRecord-Route: <sip:b>\r\n");
    assert_int_equal(ae_fwd_record_route("T", "a", "b", out, 20), -ENOSPC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(uri_transport),        cmocka_unit_test(gate),
        cmocka_unit_test(ins_order_and_format), cmocka_unit_test(ins_overflow_is_enospc),
        cmocka_unit_test(record_route_pair),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
