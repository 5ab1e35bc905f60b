/* Unit tests for common/mux.c: the edge <-> conferencing-server framing. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "common/mux.h"

static void test_data_frame_round_trips(void **st)
{
    uint8_t buf[64];
    ssize_t n = ce_mux_encode(buf, sizeof buf, CE_MUX_DATA, 7, "hello", 5);
    assert_int_equal(n, 13);
    static const uint8_t hdr[8] = {3, 0, 0, 5, 0, 0, 0, 7};
    assert_memory_equal(buf, hdr, 8);
    struct ce_mux_frame f;
    assert_int_equal(ce_mux_decode(buf, (size_t)n, &f), 13);
    assert_int_equal(f.type, CE_MUX_DATA);
    assert_int_equal(f.stream, 7);
    assert_true(slice_eq_str(f.payload, "hello"));
}

static void test_partial_frames_need_more(void **st)
{
    uint8_t buf[64];
    ssize_t n = ce_mux_encode(buf, sizeof buf, CE_MUX_DATA, 1, "abcdef", 6);
    struct ce_mux_frame f;
    for (ssize_t i = 0; i < n; i++)
        assert_int_equal(ce_mux_decode(buf, (size_t)i, &f), -EAGAIN);
}

static void test_two_frames_back_to_back(void **st)
{
    uint8_t buf[64];
    ssize_t a = ce_mux_encode_window(buf, sizeof buf, 3, 65536);
    ssize_t b = ce_mux_encode(buf + a, sizeof buf - (size_t)a, CE_MUX_SHUT, 3, NULL, 0);
    struct ce_mux_frame f;
    assert_int_equal(ce_mux_decode(buf, (size_t)(a + b), &f), a);
    assert_int_equal(f.type, CE_MUX_WINDOW);
    assert_int_equal(ce_mux_window_increment(&f), 65536);
    assert_int_equal(ce_mux_decode(buf + a, (size_t)b, &f), b);
    assert_int_equal(f.type, CE_MUX_SHUT);
}

static void test_bad_frames_refused(void **st)
{
    struct ce_mux_frame f;
    uint8_t unknown[8] = {9, 0, 0, 0, 0, 0, 0, 1};
    assert_int_equal(ce_mux_decode(unknown, 8, &f), -EBADMSG);
    uint8_t data0[8] = {CE_MUX_DATA, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(ce_mux_decode(data0, 8, &f), -EBADMSG);
    uint8_t ping_on_stream[16] = {CE_MUX_PING, 0, 0, 8, 0, 0, 0, 1};
    assert_int_equal(ce_mux_decode(ping_on_stream, 16, &f), -EBADMSG);
    uint8_t short_window[10] = {CE_MUX_WINDOW, 0, 0, 2, 0, 0, 0, 1};
    assert_int_equal(ce_mux_decode(short_window, 10, &f), -EBADMSG);
    uint8_t huge[8] = {CE_MUX_DATA, 0, 0xff, 0xff, 0, 0, 0, 1};
    assert_int_equal(ce_mux_decode(huge, 8, &f), -EMSGSIZE);
}

static void test_hello_round_trips(void **st)
{
    uint8_t buf[128];
    struct ce_mux_hello h = {.version = 1, .window = 262144, .name = slice_str("confserver-1")};
    ssize_t n = ce_mux_encode_hello(buf, sizeof buf, &h);
    assert_true(n > 0);
    struct ce_mux_frame f;
    assert_int_equal(ce_mux_decode(buf, (size_t)n, &f), n);
    struct ce_mux_hello g;
    assert_int_equal(ce_mux_decode_hello(f.payload, &g), 0);
    assert_int_equal(g.version, 1);
    assert_int_equal(g.window, 262144);
    assert_true(slice_eq_str(g.name, "confserver-1"));
}

static void test_open_round_trips_and_rejects_trailing_bytes(void **st)
{
    uint8_t buf[512];
    struct ce_mux_open o = {slice_str("127.0.0.1:5000"), slice_str("conf-a"), slice_str("alice"),
                            slice_str("presenter"), slice_str("jti-1")};
    ssize_t n = ce_mux_encode_open(buf, sizeof buf, 42, &o);
    assert_true(n > 0);
    struct ce_mux_frame f;
    assert_int_equal(ce_mux_decode(buf, (size_t)n, &f), n);
    assert_int_equal(f.stream, 42);
    struct ce_mux_open p;
    assert_int_equal(ce_mux_decode_open(f.payload, &p), 0);
    assert_true(slice_eq_str(p.client, "127.0.0.1:5000"));
    assert_true(slice_eq_str(p.conf, "conf-a"));
    assert_true(slice_eq_str(p.user, "alice"));
    assert_true(slice_eq_str(p.role, "presenter"));
    assert_true(slice_eq_str(p.key_id, "jti-1"));
    struct slice longer = slice_make(f.payload.p, f.payload.len + 1);
    buf[n] = 0;
    assert_int_equal(ce_mux_decode_open(longer, &p), -EBADMSG);
    struct slice shorter = slice_make(f.payload.p, f.payload.len - 1);
    assert_int_equal(ce_mux_decode_open(shorter, &p), -EBADMSG);
}

static void test_encode_refuses_small_buffers(void **st)
{
    uint8_t buf[10];
    assert_int_equal(ce_mux_encode(buf, sizeof buf, CE_MUX_DATA, 1, "abc", 3), -ENOSPC);
    struct ce_mux_open o = {slice_str("127.0.0.1:1"), slice_str("c"), slice_str("u"),
                            slice_str("r"), slice_str("j")};
    assert_int_equal(ce_mux_encode_open(buf, sizeof buf, 1, &o), -ENOSPC);
}

static void test_ping_value_round_trips(void **st)
{
    uint8_t buf[16];
    assert_int_equal(ce_mux_encode_ping(buf, sizeof buf, CE_MUX_PONG, 0x0102030405060708ull), 16);
    struct ce_mux_frame f;
    assert_int_equal(ce_mux_decode(buf, 16, &f), 16);
    assert_int_equal(f.type, CE_MUX_PONG);
    assert_true(ce_mux_ping_value(&f) == 0x0102030405060708ull);
}

struct seen {
    int n, stop_at, fail_at;
    uint32_t streams[8];
};

static int on_frame(void *arg, const struct ce_mux_frame *f)
{
    struct seen *s = arg;
    s->streams[s->n++] = f->stream;
    return s->n == s->fail_at ? -EPROTO : s->n == s->stop_at ? 1 : 0;
}

/* ce_mux_feed: frames cut anywhere arrive whole and in order; the callback can stop or fail. */
static void test_feed_reassembles_stops_and_fails(void **st)
{
    uint8_t w[64];
    size_t n = 0;
    for (uint32_t id = 1; id <= 3; id++)
        n += (size_t)ce_mux_encode(w + n, sizeof w - n, CE_MUX_DATA, id, "abc", 3);
    struct buf in;
    assert_int_equal(buf_init(&in, 1024), 0);
    struct seen s = {0};
    for (size_t i = 0; i < n; i++) /* one byte at a time */
        assert_int_equal(ce_mux_feed(&in, w + i, 1, on_frame, &s, NULL), 0);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.streams[2], 3);
    assert_int_equal(buf_len(&in), 0);

    struct seen stop = {.stop_at = 2};
    assert_int_equal(ce_mux_feed(&in, w, n, on_frame, &stop, NULL), 0);
    assert_int_equal(stop.n, 2); /* the third waits: the link is gone */
    buf_consume(&in, buf_len(&in));

    struct seen fail = {.fail_at = 1};
    int bad = -1;
    assert_int_equal(ce_mux_feed(&in, w, n, on_frame, &fail, &bad), -EPROTO);
    assert_int_equal(bad, CE_MUX_DATA);
    buf_consume(&in, buf_len(&in));

    uint8_t junk[CE_MUX_HDR] = {0x7f};
    struct seen none = {0};
    assert_int_equal(ce_mux_feed(&in, junk, sizeof junk, on_frame, &none, &bad), -EPROTO);
    assert_int_equal(bad, 0);
    assert_int_equal(none.n, 0);
    buf_fini(&in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_frame_round_trips),
        cmocka_unit_test(test_partial_frames_need_more),
        cmocka_unit_test(test_two_frames_back_to_back),
        cmocka_unit_test(test_bad_frames_refused),
        cmocka_unit_test(test_hello_round_trips),
        cmocka_unit_test(test_open_round_trips_and_rejects_trailing_bytes),
        cmocka_unit_test(test_encode_refuses_small_buffers),
        cmocka_unit_test(test_ping_value_round_trips),
        cmocka_unit_test(test_feed_reassembles_stops_and_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
