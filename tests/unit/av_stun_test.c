/* STUN codec: RFC 5769 test vectors, builder round trips, unknown attributes, ChannelData,
 * the RFC 6062 message types and CONNECTION-ID. */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "av-edge/stun.h"

/* RFC 5769 2.1: Binding request with short-term credentials. */
static const uint8_t req_2_1[] = {
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf};

/* RFC 5769 2.2: IPv4 response. */
static const uint8_t resp_2_2[] = {
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96};

/* RFC 5769 2.3: IPv6 response. */
static const uint8_t resp_2_3[] = {
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa,
    0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14,
    0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75,
    0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c};

/* RFC 5769 2.4: request with long-term credentials. */
static const uint8_t req_2_4[] = {
    0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72,
    0xc0, 0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88,
    0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00,
    0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36,
    0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73,
    0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72,
    0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02,
    0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66};

static const char short_pw[] = "VOkJxbRl1RmTxUk/WvJxBt";

static void rfc5769_request_short_term(void **st)
{
    struct stun_msg m;
    assert_int_equal(stun_msg_parse(&m, req_2_1, sizeof(req_2_1)), sizeof(req_2_1));
    assert_int_equal(m.method, STUN_BINDING);
    assert_int_equal(m.cls, STUN_REQUEST);
    const struct stun_attr *u = stun_msg_find(&m, STUN_A_USERNAME);
    assert_non_null(u);
    assert_true(slice_eq_str(stun_attr_value(&m, u), "evtj:h6vY"));
    assert_int_equal(stun_msg_check_integrity(&m, short_pw, strlen(short_pw)), 0);
    assert_int_equal(stun_msg_check_integrity(&m, "wrong", 5), -EBADMSG);
    assert_int_equal(stun_msg_check_fingerprint(&m), 0);
    assert_int_equal(m.n_unknown, 0);
}

static void rfc5769_ipv4_response(void **st)
{
    struct stun_msg m;
    assert_int_equal(stun_msg_parse(&m, resp_2_2, sizeof(resp_2_2)), sizeof(resp_2_2));
    assert_int_equal(m.cls, STUN_SUCCESS);
    struct addr a, want;
    assert_int_equal(stun_attr_xaddr(&m, stun_msg_find(&m, STUN_A_XOR_MAPPED_ADDRESS), &a), 0);
    assert_int_equal(addr_parse(&want, "192.0.2.1:32853", 0), 0);
    assert_true(addr_eq(&a, &want));
    assert_int_equal(stun_msg_check_integrity(&m, short_pw, strlen(short_pw)), 0);
    assert_int_equal(stun_msg_check_fingerprint(&m), 0);

    /* Our builder encodes the same XOR-MAPPED-ADDRESS bytes. */
    uint8_t out[128];
    struct stun_builder b;
    stun_build_init(&b, out, sizeof(out), STUN_BINDING, STUN_SUCCESS, m.tid);
    stun_build_xaddr(&b, STUN_A_XOR_MAPPED_ADDRESS, &want);
    assert_int_equal(stun_build_finish(&b), 32);
    assert_memory_equal(out + 20, resp_2_2 + 36, 12);
    assert_memory_equal(out, "\x01\x01\x00\x0c", 4);
}

static void rfc5769_ipv6_response(void **st)
{
    struct stun_msg m;
    assert_int_equal(stun_msg_parse(&m, resp_2_3, sizeof(resp_2_3)), sizeof(resp_2_3));
    struct addr a, want;
    assert_int_equal(stun_attr_xaddr(&m, stun_msg_find(&m, STUN_A_XOR_MAPPED_ADDRESS), &a), 0);
    assert_int_equal(addr_parse(&want, "[2001:db8:1234:5678:11:2233:4455:6677]:32853", 0), 0);
    assert_true(addr_eq(&a, &want));
    assert_int_equal(stun_msg_check_integrity(&m, short_pw, strlen(short_pw)), 0);
    assert_int_equal(stun_msg_check_fingerprint(&m), 0);
    uint8_t out[128];
    struct stun_builder b;
    stun_build_init(&b, out, sizeof(out), STUN_BINDING, STUN_SUCCESS, m.tid);
    stun_build_xaddr(&b, STUN_A_XOR_MAPPED_ADDRESS, &want);
    assert_int_equal(stun_build_finish(&b), 44);
    assert_memory_equal(out + 20, resp_2_3 + 36, 24);
}

static void rfc5769_long_term(void **st)
{
    struct stun_msg m;
    assert_int_equal(stun_msg_parse(&m, req_2_4, sizeof(req_2_4)), sizeof(req_2_4));
    const struct stun_attr *u = stun_msg_find(&m, STUN_A_USERNAME);
    const struct stun_attr *r = stun_msg_find(&m, STUN_A_REALM);
    const struct stun_attr *n = stun_msg_find(&m, STUN_A_NONCE);
    assert_non_null(u);
    assert_non_null(r);
    assert_non_null(n);
    assert_true(slice_eq_str(stun_attr_value(&m, r), "example.org"));
    assert_true(slice_eq_str(stun_attr_value(&m, n), "f//499k954d6OL34oL9FSTvy64sA"));
    /* The password after SASLprep is "TheMatrIX". */
    uint8_t key[16];
    stun_key_long_term(stun_attr_value(&m, u), stun_attr_value(&m, r), slice_str("TheMatrIX"), key);
    assert_int_equal(stun_msg_check_integrity(&m, key, 16), 0);
    stun_key_long_term(stun_attr_value(&m, u), stun_attr_value(&m, r), slice_str("TheMatrix"), key);
    assert_int_equal(stun_msg_check_integrity(&m, key, 16), -EBADMSG);
}

static void build_roundtrip_integrity_fingerprint(void **st)
{
    uint8_t tid[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    uint8_t out[256];
    struct stun_builder b;
    stun_build_init(&b, out, sizeof(out), STUN_ALLOCATE, STUN_ERROR, tid);
    stun_build_error(&b, 438, NULL);
    stun_build_attr(&b, STUN_A_REALM, "lab", 3);
    stun_build_integrity(&b, "key", 3);
    stun_build_integrity_sha256(&b, "key", 3);
    stun_build_fingerprint(&b);
    ssize_t n = stun_build_finish(&b);
    assert_true(n > 0);
    struct stun_msg m;
    assert_int_equal(stun_msg_parse(&m, out, (size_t)n), n);
    assert_int_equal(m.method, STUN_ALLOCATE);
    assert_int_equal(m.cls, STUN_ERROR);
    int code;
    struct slice reason;
    assert_int_equal(stun_attr_error(&m, stun_msg_find(&m, STUN_A_ERROR_CODE), &code, &reason), 0);
    assert_int_equal(code, 438);
    assert_true(slice_eq_str(reason, "Stale Nonce"));
    assert_int_equal(stun_msg_check_integrity(&m, "key", 3), 0);
    assert_int_equal(stun_msg_check_integrity_sha256(&m, "key", 3), 0);
    assert_int_equal(stun_msg_check_integrity_sha256(&m, "kez", 3), -EBADMSG);
    assert_int_equal(stun_msg_check_fingerprint(&m), 0);
    out[n - 1] ^= 1;
    assert_int_equal(stun_msg_check_fingerprint(&m), -EBADMSG);

    /* Every TURN method and class survives the type encoding. */
    static const uint16_t methods[] = {STUN_BINDING,
                                       STUN_ALLOCATE,
                                       STUN_REFRESH,
                                       STUN_SEND,
                                       STUN_DATA,
                                       STUN_CREATE_PERMISSION,
                                       STUN_CHANNEL_BIND,
                                       STUN_CONNECT,
                                       STUN_CONNECTION_BIND,
                                       STUN_CONNECTION_ATTEMPT};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        for (int c = 0; c < 4; c++) {
            stun_build_init(&b, out, sizeof(out), methods[i], (enum stun_class)c, tid);
            n = stun_build_finish(&b);
            assert_int_equal(stun_msg_parse(&m, out, (size_t)n), 20);
            assert_int_equal(m.method, methods[i]);
            assert_int_equal(m.cls, c);
        }
    }
}

static void builder_overflow_is_enospc(void **st)
{
    uint8_t tid[12] = {0};
    uint8_t out[40];
    struct stun_builder b;
    stun_build_init(&b, out, sizeof(out), STUN_BINDING, STUN_SUCCESS, tid);
    stun_build_attr(&b, STUN_A_SOFTWARE, "0123456789abcdef0123", 20);
    assert_int_equal(stun_build_finish(&b), -ENOSPC);
}

static void unknown_comprehension_required(void **st)
{
    uint8_t tid[12] = {0};
    uint8_t out[128];
    struct stun_builder b;
    stun_build_init(&b, out, sizeof(out), STUN_ALLOCATE, STUN_REQUEST, tid);
    stun_build_attr(&b, 0x7777, "x", 1); /* unknown, comprehension-required */
    stun_build_attr(&b, 0xC001, "y", 1); /* unknown, optional: ignored */
    stun_build_u32(&b, STUN_A_REQUESTED_TRANSPORT, 17u << 24);
    ssize_t n = stun_build_finish(&b);
    struct stun_msg m;
    assert_int_equal(stun_msg_parse(&m, out, (size_t)n), n);
    assert_int_equal(m.n_unknown, 1);
    assert_int_equal(m.unknown[0], 0x7777);
    uint8_t rt;
    assert_int_equal(stun_attr_u8(&m, stun_msg_find(&m, STUN_A_REQUESTED_TRANSPORT), &rt), 0);
    assert_int_equal(rt, 17);
}

/* RFC 6062: Connect, ConnectionBind and ConnectionAttempt on the wire, and CONNECTION-ID as
 * a known comprehension-required attribute (a 420 for it would break every TCP client). */
static void rfc6062_types_and_connection_id(void **st)
{
    static const struct {
        uint16_t method;
        enum stun_class cls;
        uint16_t wire;
    } types[] = {
        {STUN_CONNECT, STUN_REQUEST, 0x000A},
        {STUN_CONNECT, STUN_SUCCESS, 0x010A},
        {STUN_CONNECT, STUN_ERROR, 0x011A},
        {STUN_CONNECTION_BIND, STUN_REQUEST, 0x000B},
        {STUN_CONNECTION_BIND, STUN_SUCCESS, 0x010B},
        {STUN_CONNECTION_ATTEMPT, STUN_INDICATION, 0x001C},
    };
    uint8_t tid[12] = {1, 2, 3};
    uint8_t out[128];
    struct stun_builder b;
    struct stun_msg m;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        stun_build_init(&b, out, sizeof(out), types[i].method, types[i].cls, tid);
        stun_build_u32(&b, STUN_A_CONNECTION_ID, 0xDEADBEEFu);
        stun_build_fingerprint(&b);
        ssize_t n = stun_build_finish(&b);
        assert_int_equal(out[0] << 8 | out[1], types[i].wire);
        assert_int_equal(stun_msg_parse(&m, out, (size_t)n), n);
        assert_int_equal(m.method, types[i].method);
        assert_int_equal(m.cls, types[i].cls);
        assert_int_equal(m.n_unknown, 0);
        uint32_t id = 0;
        assert_int_equal(stun_attr_u32(&m, stun_msg_find(&m, STUN_A_CONNECTION_ID), &id), 0);
        assert_int_equal(id, 0xDEADBEEFu);
    }
    /* A CONNECTION-ID that is not 4 bytes does not decode. */
    stun_build_init(&b, out, sizeof(out), STUN_CONNECTION_BIND, STUN_REQUEST, tid);
    stun_build_attr(&b, STUN_A_CONNECTION_ID, "\1\2", 2);
    ssize_t n = stun_build_finish(&b);
    assert_int_equal(stun_msg_parse(&m, out, (size_t)n), n);
    uint32_t id;
    assert_int_equal(stun_attr_u32(&m, stun_msg_find(&m, STUN_A_CONNECTION_ID), &id), -EBADMSG);
    assert_string_equal(stun_reason(446), "Connection Already Exists");
    assert_string_equal(stun_reason(447), "Connection Timeout or Failure");
}

static void malformed_messages(void **st)
{
    struct stun_msg m;
    uint8_t b[64];
    memcpy(b, req_2_1, 20);
    assert_int_equal(stun_msg_parse(&m, b, 10), -EAGAIN);
    b[2] = 0, b[3] = 3; /* length not a multiple of 4 */
    assert_int_equal(stun_msg_parse(&m, b, 23), -EBADMSG);
    b[3] = 8; /* attribute runs past the end */
    memcpy(b + 20,
           "\x00\x06\x00\x09"
           "abcd",
           8);
    assert_int_equal(stun_msg_parse(&m, b, 28), -EBADMSG);
    b[3] = 4; /* truncated body on a stream */
    assert_int_equal(stun_msg_parse(&m, b, 22), -EAGAIN);
    /* Attribute after FINGERPRINT. */
    b[3] = 16;
    memcpy(b + 20,
           "\x80\x28\x00\x04"
           "abcd"
           "\x00\x06\x00\x00"
           "",
           12);
    memset(b + 32, 0, 4);
    assert_int_equal(stun_msg_parse(&m, b, 36), -EBADMSG);
    b[0] = 0x80; /* top bits set */
    assert_int_equal(stun_msg_parse(&m, b, 36), -EBADMSG);
}

static void chandata_framing(void **st)
{
    uint8_t f[12] = {0x40, 0x01, 0x00, 0x05, 'h', 'e', 'l', 'l', 'o', 0, 0, 0};
    uint16_t ch;
    struct slice d;
    assert_int_equal(stun_chandata_parse(f, 9, false, &ch, &d), 9);
    assert_int_equal(ch, 0x4001);
    assert_int_equal(d.len, 5);
    assert_int_equal(stun_chandata_parse(f, 8, false, &ch, &d), -EBADMSG);
    /* Over a stream the frame is padded to 8 bytes. */
    assert_int_equal(stun_chandata_parse(f, 9, true, &ch, &d), -EAGAIN);
    assert_int_equal(stun_chandata_parse(f, 12, true, &ch, &d), 12);
    assert_int_equal(stun_frame_len(f, 12), 12);
    assert_int_equal(stun_frame_len(f, 3), -EAGAIN);
    assert_int_equal(stun_frame_len(req_2_1, sizeof(req_2_1)), sizeof(req_2_1));
    f[0] = 0x80;
    assert_int_equal(stun_chandata_parse(f, 12, false, &ch, &d), -EBADMSG);
    assert_int_equal(stun_frame_len(f, 12), -EBADMSG);
}

static void classic_rfc3489_binding(void **st)
{
    /* RFC 3489 request: no magic cookie, a 16-byte transaction id, CHANGE-REQUEST 0. */
    uint8_t req[28] = {0x00, 0x01, 0x00, 0x08, 1,  2,  3,    4,    5,    6,    7, 8, 9, 10,
                       11,   12,   13,   14,   15, 16, 0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0};
    struct addr c;
    addr_parse(&c, "192.0.2.9:4242", 0);
    uint8_t out[64];
    assert_int_equal(stun_classic_binding_reply(req, sizeof(req), &c, out, sizeof(out)), 32);
    assert_memory_equal(out, "\x01\x01\x00\x0c", 4);
    assert_memory_equal(out + 4, req + 4, 16);
    assert_memory_equal(out + 20, "\x00\x01\x00\x08\x00\x01\x10\x92\xc0\x00\x02\x09", 12);
    req[27] = 6; /* change IP and port: cannot be honoured, no answer */
    assert_int_equal(stun_classic_binding_reply(req, sizeof(req), &c, out, sizeof(out)), -EPERM);
    assert_int_equal(stun_classic_binding_reply(req_2_1, sizeof(req_2_1), &c, out, sizeof(out)),
                     -EBADMSG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc5769_request_short_term),
        cmocka_unit_test(rfc5769_ipv4_response),
        cmocka_unit_test(rfc5769_ipv6_response),
        cmocka_unit_test(rfc5769_long_term),
        cmocka_unit_test(build_roundtrip_integrity_fingerprint),
        cmocka_unit_test(builder_overflow_is_enospc),
        cmocka_unit_test(unknown_comprehension_required),
        cmocka_unit_test(malformed_messages),
        cmocka_unit_test(rfc6062_types_and_connection_id),
        cmocka_unit_test(chandata_framing),
        cmocka_unit_test(classic_rfc3489_binding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
