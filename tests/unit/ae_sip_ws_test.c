/* WebSocket for SIP: RFC 6455 handshake example, subprotocol refusal, frame codec. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "access-edge/sip_ws.h"
#include "common/crypto.h"

static void rfc6455_accept_key(void **st)
{
    const char *req =
        "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
        "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Protocol: sip\r\nSec-WebSocket-Version: 13\r\n\r\nrest";
    char out[512];
    size_t ol;
    bool ok;
    ssize_t n = sip_ws_handshake((const uint8_t *)req, strlen(req), out, sizeof(out), &ol, &ok);
    assert_int_equal(n, (ssize_t)strlen(req) - 4);
    assert_true(ok);
    assert_non_null(strstr(out, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_int_equal(sip_ws_handshake((const uint8_t *)req, 30, out, sizeof(out), &ol, &ok),
                     -EAGAIN);
}

static void no_sip_subprotocol_426(void **st)
{
    const char *req =
        "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    char out[512];
    size_t ol;
    bool ok = true;
    assert_true(sip_ws_handshake((const uint8_t *)req, strlen(req), out, sizeof(out), &ol, &ok) >
                0);
    assert_false(ok);
    assert_memory_equal(out, "HTTP/1.1 426", 12);
}

static void masked_frame_decodes_and_unmasked_is_refused(void **st)
{
    /* RFC 6455 §5.7: a masked "Hello". */
    uint8_t f1[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
    struct sip_ws_frame f;
    assert_int_equal(sip_ws_decode(f1, sizeof(f1), 1000, &f), (ssize_t)sizeof(f1));
    assert_int_equal(f.op, SIP_WS_TEXT);
    assert_int_equal(f.len, 5);
    assert_memory_equal(f.payload, "Hello", 5);
    uint8_t f2[] = {0x81, 0x05, 'H', 'e', 'l', 'l', 'o'};
    assert_int_equal(sip_ws_decode(f2, sizeof(f2), 1000, &f), -EBADMSG);
    assert_int_equal(sip_ws_decode(f1, 5, 1000, &f), -EAGAIN);
    uint8_t h[10];
    assert_int_equal(sip_ws_header(SIP_WS_TEXT, 300, h), 4);
    assert_int_equal(h[1], 126);
}

static void sha1_vector(void **st)
{
    uint8_t d[20];
    crypto_sha1("abc", 3, d);
    static const uint8_t want[20] = {0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e,
                                     0x25, 0x71, 0x78, 0x50, 0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d};
    assert_memory_equal(d, want, 20);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc6455_accept_key),
        cmocka_unit_test(no_sip_subprotocol_426),
        cmocka_unit_test(masked_frame_decodes_and_unmasked_is_refused),
        cmocka_unit_test(sha1_vector),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
