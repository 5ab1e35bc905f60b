/* STUN/TURN message codec (RFC 8489, RFC 8656, RFC 6062) on bytes only: parse, check
 * integrity and fingerprint, build; ChannelData framing. Never touches the event loop. */
#ifndef AV_STUN_H
#define AV_STUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/addr.h"
#include "common/util.h"

#define STUN_HDR_LEN 20
#define STUN_MAGIC 0x2112A442u
#define STUN_TID_LEN 12
#define STUN_MAX_ATTRS 40
#define STUN_MAX_UNKNOWN 8
#define STUN_FP_XOR 0x5354554Eu
/* Channel numbers: RFC 8656 uses 0x4000-0x4FFF; RFC 5766 allowed up to 0x7FFF and
 * deployed clients still pick from there, so both are accepted. */
#define STUN_CHANNEL_MIN 0x4000
#define STUN_CHANNEL_MAX 0x7FFF

/* Classes (the C1 C0 bits). */
enum stun_class {
    STUN_REQUEST = 0,
    STUN_INDICATION = 1,
    STUN_SUCCESS = 2,
    STUN_ERROR = 3,
};

enum stun_method {
    STUN_BINDING = 0x001,
    STUN_ALLOCATE = 0x003,
    STUN_REFRESH = 0x004,
    STUN_SEND = 0x006,
    STUN_DATA = 0x007,
    STUN_CREATE_PERMISSION = 0x008,
    STUN_CHANNEL_BIND = 0x009,
    STUN_CONNECT = 0x00A,
    STUN_CONNECTION_BIND = 0x00B,
    STUN_CONNECTION_ATTEMPT = 0x00C,
};

enum stun_attr_type {
    STUN_A_MAPPED_ADDRESS = 0x0001,
    STUN_A_USERNAME = 0x0006,
    STUN_A_MESSAGE_INTEGRITY = 0x0008,
    STUN_A_ERROR_CODE = 0x0009,
    STUN_A_UNKNOWN_ATTRIBUTES = 0x000A,
    STUN_A_CHANNEL_NUMBER = 0x000C,
    STUN_A_LIFETIME = 0x000D,
    STUN_A_XOR_PEER_ADDRESS = 0x0012,
    STUN_A_DATA = 0x0013,
    STUN_A_REALM = 0x0014,
    STUN_A_NONCE = 0x0015,
    STUN_A_XOR_RELAYED_ADDRESS = 0x0016,
    STUN_A_REQUESTED_ADDRESS_FAMILY = 0x0017,
    STUN_A_EVEN_PORT = 0x0018,
    STUN_A_REQUESTED_TRANSPORT = 0x0019,
    STUN_A_DONT_FRAGMENT = 0x001A,
    STUN_A_MESSAGE_INTEGRITY_SHA256 = 0x001C,
    STUN_A_PASSWORD_ALGORITHM = 0x001D,
    STUN_A_USERHASH = 0x001E,
    STUN_A_XOR_MAPPED_ADDRESS = 0x0020,
    STUN_A_RESERVATION_TOKEN = 0x0022,
    STUN_A_PRIORITY = 0x0024,
    STUN_A_USE_CANDIDATE = 0x0025,
    STUN_A_CONNECTION_ID = 0x002A,
    STUN_A_ADDITIONAL_ADDRESS_FAMILY = 0x8000,
    STUN_A_ADDRESS_ERROR_CODE = 0x8001,
    STUN_A_PASSWORD_ALGORITHMS = 0x8002,
    STUN_A_ALTERNATE_DOMAIN = 0x8003,
    STUN_A_ICMP = 0x8004,
    STUN_A_SOFTWARE = 0x8022,
    STUN_A_ALTERNATE_SERVER = 0x8023,
    STUN_A_FINGERPRINT = 0x8028,
    STUN_A_ICE_CONTROLLED = 0x8029,
    STUN_A_ICE_CONTROLLING = 0x802A,
};

/* One attribute: type, value length and the offset of its value in the message. */
struct stun_attr {
    uint16_t type;
    uint16_t len;
    uint16_t off;
};

/* A parsed message: a view over the caller's bytes (valid as long as they are). */
struct stun_msg {
    const uint8_t *buf;
    size_t len; /* header + body */
    uint16_t method;
    uint8_t cls;
    const uint8_t *tid; /* 12 bytes inside buf */
    uint16_t n_attrs;
    struct stun_attr attrs[STUN_MAX_ATTRS];
    /* Offsets of the integrity attributes' headers (0 = absent), for the checks. */
    uint16_t mi_off, mi256_off, fp_off;
    uint8_t n_unknown; /* comprehension-required attributes we do not know */
    uint16_t unknown[STUN_MAX_UNKNOWN];
};

/* Quick test for the first byte demultiplex (RFC 7983): 0..3 STUN, 64..79 ChannelData
 * (64..127 accepted: RFC 5766 clients such as coturn's use channels up to 0x7FFF). */
static inline bool stun_is_stun(const uint8_t *p, size_t len)
{
    return len >= STUN_HDR_LEN && (p[0] & 0xC0) == 0 && p[4] == 0x21 && p[5] == 0x12 &&
           p[6] == 0xA4 && p[7] == 0x42;
}
static inline bool stun_is_chandata(const uint8_t *p, size_t len)
{
    return len >= 4 && (p[0] & 0xC0) == 0x40;
}

/* Parses one message at p. Returns the message length (bytes used), -EAGAIN when the
 * buffer holds less than the header announces (streams), or -EBADMSG. Attributes after
 * FINGERPRINT make the message invalid; attributes after MESSAGE-INTEGRITY other than
 * MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are ignored (RFC 8489 14.5). */
ssize_t stun_msg_parse(struct stun_msg *m, const uint8_t *p, size_t len);

/* First attribute of the type, or NULL. */
const struct stun_attr *stun_msg_find(const struct stun_msg *m, uint16_t type);
static inline struct slice stun_attr_value(const struct stun_msg *m, const struct stun_attr *a)
{
    return slice_make(m->buf + a->off, a->len);
}
/* Decoders: 0 or -EBADMSG (wrong length or family). xaddr applies the XOR with the
 * cookie and transaction id; addr is the plain form (MAPPED-ADDRESS). */
int stun_attr_xaddr(const struct stun_msg *m, const struct stun_attr *a, struct addr *out);
int stun_attr_addr(const struct stun_msg *m, const struct stun_attr *a, struct addr *out);
int stun_attr_u32(const struct stun_msg *m, const struct stun_attr *a, uint32_t *out);
int stun_attr_u8(const struct stun_msg *m, const struct stun_attr *a,
                 uint8_t *out); /* first byte */
int stun_attr_error(const struct stun_msg *m, const struct stun_attr *a, int *code,
                    struct slice *reason);

/* Integrity checks on a parsed message with the key (long-term: MD5(user:realm:pass)).
 * 0 if it matches, -ENOENT if the attribute is absent, -EBADMSG if it does not match. */
int stun_msg_check_integrity(const struct stun_msg *m, const void *key, size_t klen);
int stun_msg_check_integrity_sha256(const struct stun_msg *m, const void *key, size_t klen);
/* 0 if FINGERPRINT is present and right, -ENOENT if absent, -EBADMSG if wrong. */
int stun_msg_check_fingerprint(const struct stun_msg *m);

/* Long-term key MD5(username ":" realm ":" password); no SASLprep (ASCII credentials). */
void stun_key_long_term(struct slice user, struct slice realm, struct slice pass, uint8_t out[16]);

/* Builder: writes into caller's memory; the first overflow is remembered and
 * stun_build_finish() reports -ENOSPC. */
struct stun_builder {
    uint8_t *p;
    size_t cap, len;
    int err;
};
void stun_build_init(struct stun_builder *b, void *buf, size_t cap, uint16_t method,
                     enum stun_class cls, const uint8_t tid[STUN_TID_LEN]);
void stun_build_attr(struct stun_builder *b, uint16_t type, const void *v, size_t len);
void stun_build_u32(struct stun_builder *b, uint16_t type, uint32_t v);
void stun_build_xaddr(struct stun_builder *b, uint16_t type, const struct addr *a);
void stun_build_error(struct stun_builder *b, int code, const char *reason);
void stun_build_unknown(struct stun_builder *b, const uint16_t *types, size_t n);
void stun_build_integrity(struct stun_builder *b, const void *key, size_t klen);
void stun_build_integrity_sha256(struct stun_builder *b, const void *key, size_t klen);
void stun_build_fingerprint(struct stun_builder *b);
/* Returns the message length or -ENOSPC. */
ssize_t stun_build_finish(struct stun_builder *b);

/* Standard reason phrase for an error code ("Bad Request", ...). */
const char *stun_reason(int code);

/* RFC 3489 (classic STUN, no magic cookie) Binding request: writes a Binding response with
 * MAPPED-ADDRESS (plain) for client into out. Returns its length, -EBADMSG if req is not
 * a classic Binding request, or -EPERM if it asks for a changed IP or port (CHANGE-REQUEST
 * flags), which a single-address server cannot honour (no answer is the RFC 3489 way). */
ssize_t stun_classic_binding_reply(const uint8_t *req, size_t len, const struct addr *client,
                                   uint8_t *out, size_t cap);

/* ChannelData (RFC 8656 12.4). Parses one frame: channel number and a slice of the data.
 * stream: the frame is padded to a multiple of 4 (TCP/TLS), and the return value counts
 * the padding. Returns bytes used, -EAGAIN (incomplete) or -EBADMSG. Over UDP, trailing
 * bytes after the announced length are allowed (padding may or may not be sent). */
ssize_t stun_chandata_parse(const uint8_t *p, size_t len, bool stream, uint16_t *channel,
                            struct slice *data);
/* Writes the 4-byte header for len data bytes into hdr. */
static inline void stun_chandata_header(uint8_t hdr[4], uint16_t channel, size_t len)
{
    hdr[0] = (uint8_t)(channel >> 8);
    hdr[1] = (uint8_t)channel;
    hdr[2] = (uint8_t)(len >> 8);
    hdr[3] = (uint8_t)len;
}
/* On a stream: how many bytes the next frame (STUN or ChannelData) needs, or -EAGAIN
 * if fewer than 4 bytes are there, or -EBADMSG if the first bytes fit neither. */
ssize_t stun_frame_len(const uint8_t *p, size_t len);

#endif
