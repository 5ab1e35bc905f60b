/* The client preamble parser and the edge's one-line answers (see preamble.h). */
#include "conf-edge/preamble.h"

#include <errno.h>
#include <string.h>

static bool is_key_char(uint8_t c)
{
    return c > 0x20 && c < 0x7f;
}

static bool is_blank(uint8_t c)
{
    return c == ' ' || c == '\t';
}

/* Checks the bytes of a line that has no terminator yet: anything that cannot start a
 * valid preamble is refused now rather than after CE_PREAMBLE_MAX bytes. */
static ssize_t check_partial(const uint8_t *p, size_t len)
{
    size_t mlen = sizeof CE_PREAMBLE_MAGIC - 1;
    size_t n = len < mlen ? len : mlen;
    if (memcmp(p, CE_PREAMBLE_MAGIC, n) != 0)
        return -EBADMSG;
    for (size_t i = n; i < len; i++)
        if (!is_key_char(p[i]) && !is_blank(p[i]) && !(p[i] == '\r' && i + 1 == len))
            return -EBADMSG;
    return len >= CE_PREAMBLE_MAX ? -EBADMSG : -EAGAIN;
}

ssize_t ce_preamble_parse(const uint8_t *p, size_t len, struct ce_preamble *out)
{
    if (!p || !out)
        return -EINVAL;
    out->version = 0;
    out->key = SLICE_NULL;
    size_t scan = len < CE_PREAMBLE_MAX ? len : CE_PREAMBLE_MAX;
    const uint8_t *nl = memchr(p, '\n', scan);
    if (!nl)
        return check_partial(p, len);
    size_t used = (size_t)(nl - p) + 1;
    size_t end = used - 1;
    if (end > 0 && p[end - 1] == '\r')
        end--;
    size_t mlen = sizeof CE_PREAMBLE_MAGIC - 1;
    if (end < mlen + 1 || memcmp(p, CE_PREAMBLE_MAGIC, mlen) != 0)
        return -EBADMSG;
    size_t i = mlen;
    unsigned version = 0;
    size_t digits = 0;
    while (i < end && p[i] >= '0' && p[i] <= '9' && digits < 4) {
        version = version * 10 + (unsigned)(p[i] - '0');
        i++;
        digits++;
    }
    if (digits == 0 || (i < end && !is_blank(p[i])))
        return -EBADMSG;
    out->version = version;
    while (i < end && is_blank(p[i]))
        i++;
    size_t kstart = i;
    while (i < end && is_key_char(p[i]))
        i++;
    size_t kend = i;
    while (i < end && is_blank(p[i]))
        i++;
    if (i != end)
        return -EBADMSG; /* a control character, or a second word */
    if (version != CE_PREAMBLE_VERSION)
        return -EPROTONOSUPPORT;
    out->key = slice_make(p + kstart, kend - kstart);
    return (ssize_t)used;
}

static const struct {
    int code;
    const char *reason;
    const char *line;
} replies[CE_REPLY_COUNT] = {
#define R(e, c, r) [e] = {c, r, "PSOM-EDGE/1 " #c " " r "\r\n"}
    R(CE_REPLY_ADMITTED, 200, "admitted"),
    R(CE_REPLY_MALFORMED, 400, "malformed-preamble"),
    R(CE_REPLY_MISSING_KEY, 401, "missing-key"),
    R(CE_REPLY_INVALID_KEY, 403, "invalid-key"),
    R(CE_REPLY_UNKNOWN_KEY, 403, "unknown-key-id"),
    R(CE_REPLY_EXPIRED_KEY, 403, "expired-key"),
    R(CE_REPLY_REVOKED_KEY, 403, "revoked-key"),
    R(CE_REPLY_TIMEOUT, 408, "preamble-timeout"),
    R(CE_REPLY_TOO_MANY, 429, "too-many-connections"),
    R(CE_REPLY_KEY_IN_USE, 429, "key-in-use"),
    R(CE_REPLY_NO_SERVER, 503, "no-conferencing-server"),
    R(CE_REPLY_DRAINING, 503, "draining"),
    R(CE_REPLY_BAD_VERSION, 505, "unsupported-version"),
#undef R
};

const char *ce_reply_line(enum ce_reply r)
{
    return (unsigned)r < CE_REPLY_COUNT ? replies[r].line : replies[CE_REPLY_MALFORMED].line;
}

const char *ce_reply_reason(enum ce_reply r)
{
    return (unsigned)r < CE_REPLY_COUNT ? replies[r].reason : "unknown";
}

int ce_reply_code(enum ce_reply r)
{
    return (unsigned)r < CE_REPLY_COUNT ? replies[r].code : 0;
}

ssize_t ce_reply_parse(const uint8_t *p, size_t len, int *code)
{
    if (!p || !code)
        return -EINVAL;
    static const char head[] = "PSOM-EDGE/1 ";
    size_t hl = sizeof head - 1;
    size_t scan = len < 128 ? len : 128;
    if (memcmp(p, head, scan < hl ? scan : hl) != 0)
        return -EBADMSG;
    const uint8_t *nl = memchr(p, '\n', scan);
    if (!nl)
        return len >= 128 ? -EBADMSG : -EAGAIN;
    size_t used = (size_t)(nl - p) + 1;
    if (used < hl + 4)
        return -EBADMSG;
    int c = 0;
    for (size_t i = hl; i < hl + 3; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -EBADMSG;
        c = c * 10 + (p[i] - '0');
    }
    if (p[hl + 3] != ' ' && p[hl + 3] != '\r' && p[hl + 3] != '\n')
        return -EBADMSG;
    *code = c;
    return (ssize_t)used;
}
