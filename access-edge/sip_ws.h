/* SIP over WebSocket (RFC 7118) framing for the access edge: the HTTP/1.1 upgrade
 * handshake (RFC 6455 §4, subprotocol "sip") and frame decode/encode. Pure: bytes in,
 * bytes out, no I/O. Each WebSocket message carries exactly one SIP message. */
#ifndef AE_SIP_WS_H
#define AE_SIP_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Parses a client's upgrade request at the front of data. Returns the bytes it takes and
 * writes the 101 response (or a 400/426 refusal, *ok = false) into out; -EAGAIN if the
 * request is not complete yet (up to 8 KiB), -EBADMSG if it is not HTTP. */
ssize_t sip_ws_handshake(const uint8_t *data, size_t len, char *out, size_t cap, size_t *out_len,
                         bool *ok);

enum sip_ws_op {
    SIP_WS_CONT = 0x0,
    SIP_WS_TEXT = 0x1,
    SIP_WS_BINARY = 0x2,
    SIP_WS_CLOSE = 0x8,
    SIP_WS_PING = 0x9,
    SIP_WS_PONG = 0xA,
};

struct sip_ws_frame {
    bool fin;
    uint8_t op;
    uint8_t *payload; /* unmasked in place */
    size_t len;
};

/* Decodes one frame at the front of data (unmasking its payload in place). Client frames
 * must be masked (RFC 6455 §5.1). Returns the bytes used, -EAGAIN, -EMSGSIZE (over max) or
 * -EBADMSG. */
ssize_t sip_ws_decode(uint8_t *data, size_t len, size_t max, struct sip_ws_frame *f);
/* Writes an unmasked server frame header for a payload of len; returns its size (<= 10). */
size_t sip_ws_header(uint8_t op, size_t len, uint8_t out[10]);

#endif
