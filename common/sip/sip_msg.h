/* SIP message framing and header index: one pass over the raw bytes that finds the start
 * line, every header line (with its well-known name resolved, compact forms included) and
 * the body, so validation can count headers and the proxy can splice lines without
 * re-serializing. Pure: no I/O, no allocation; osip2 does the deep parse (sip_validate.c). */
#ifndef AE_SIP_MSG_H
#define AE_SIP_MSG_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "common/util.h"

/* Headers the edge looks at; everything else is SIP_H_OTHER and passes through. */
enum sip_hdr_id {
    SIP_H_OTHER = 0,
    SIP_H_VIA,
    SIP_H_FROM,
    SIP_H_TO,
    SIP_H_CALL_ID,
    SIP_H_CSEQ,
    SIP_H_MAX_FORWARDS,
    SIP_H_CONTENT_LENGTH,
    SIP_H_ROUTE,
    SIP_H_RECORD_ROUTE,
    SIP_H_CONTACT,
    SIP_H_PATH,
    SIP_H_TRUST, /* ms-edge-proxy-message-trust: only this edge may add it */
    SIP_H_COUNT
};

/* A set of header kinds, as a bit mask (for "drop these"). */
#define SIP_HDR_BIT(id) (1u << (id))

/* Hard bound on header lines per message; the configured cap is at most this. */
#define SIP_MSG_MAX_HEADERS 256

struct sip_hdr {
    uint8_t id;        /* enum sip_hdr_id */
    uint32_t line_off; /* start of the header line */
    uint32_t line_end; /* one past its CRLF (continuation lines included) */
    uint32_t name_len;
    uint32_t val_off, val_len; /* value, trimmed */
};

/* What is wrong with a message that frames (its header section is indexed) but that the
 * edge must refuse: the validator answers 400 (505 for the version); on a stream a bad
 * length also means the rest of the connection cannot be framed. */
enum sip_defect {
    SIP_DEFECT_NONE = 0,
    SIP_DEFECT_START_LINE, /* a request line that is not Method SP URI SP SIP/2.0 exactly */
    SIP_DEFECT_VERSION,    /* SIP/x.y other than 2.0 (505) */
    SIP_DEFECT_LENGTH,     /* Content-Length not a number, or several that differ */
};

/* The index of one message. Slices point into the caller's bytes. */
struct sip_msg {
    const uint8_t *buf;
    size_t len; /* whole message: headers + body */
    bool is_request;
    struct slice method; /* request: "INVITE" */
    struct slice ruri;   /* request: the Request-URI text */
    int status;          /* response: 100..699 */
    uint32_t start_end;  /* one past the start line's CRLF */
    uint32_t hdr_end;    /* offset of the body (after the empty line) */
    uint32_t body_len;
    long content_length;   /* -1 when absent */
    uint32_t max_line;     /* longest header line seen, without CRLF */
    bool too_many_headers; /* more lines than SIP_MSG_MAX_HEADERS (the rest are not indexed) */
    uint8_t defect;        /* enum sip_defect */
    uint16_t nhdr;
    uint16_t count[SIP_H_COUNT];
    int16_t first[SIP_H_COUNT]; /* index in hdr[] of the first line of each kind, -1 if none */
    struct sip_hdr hdr[SIP_MSG_MAX_HEADERS];
};

/* Frames and indexes one message at the front of data.
 * datagram: the message is data up to hdr_end + Content-Length; bytes after it are
 * discarded (RFC 3261 §18.3: m->len may be less than len), a body shorter than
 * Content-Length is left for the validator to refuse. stream: the message ends at
 * hdr_end + Content-Length. Returns the bytes the message takes, -EAGAIN if a stream needs
 * more (with max_hdr_bytes the longest message tolerated: a longer header section is
 * -EMSGSIZE, and so is a Content-Length that takes the message past it, returned as soon
 * as the header section is in), or -EBADMSG. A request line that is malformed but still
 * looks like one is indexed with m->defect set, not refused, so that it can be answered.
 * After -EMSGSIZE or -EBADMSG, m->hdr_end != 0 says the header section was indexed (the
 * message can be answered before the connection is closed). */
ssize_t sip_msg_scan(struct sip_msg *m, const uint8_t *data, size_t len, bool datagram,
                     size_t max_hdr_bytes);

static inline struct slice sip_hdr_value(const struct sip_msg *m, const struct sip_hdr *h)
{
    return slice_make(m->buf + h->val_off, h->val_len);
}
/* First header of a kind, or NULL. */
const struct sip_hdr *sip_msg_find(const struct sip_msg *m, enum sip_hdr_id id);
/* Canonical name of a header kind ("Call-ID"). */
const char *sip_hdr_name(enum sip_hdr_id id);

/* Finds param `name` in a header value's ";a=b;c" tail (case-insensitive names). Returns
 * true if present; *val is its value (len 0 for a bare flag). Stops at a comma. */
bool sip_param_find(struct slice v, const char *name, struct slice *val);
/* The sent-by of the first Via value: host (without brackets) and port (0 if absent). */
bool sip_via_sent_by(struct slice via, struct slice *host, uint16_t *port);
/* Length of the first comma-separated element of a header value (quotes and <> honoured). */
size_t sip_value_first_len(struct slice v);
/* A bounded writer for the messages and header lines the edge builds: a write that does
 * not fit marks it full (and writes nothing more), and sip_out_done() then says -ENOSPC. */
struct sip_out {
    uint8_t *p;
    size_t len, cap;
    bool full;
};
static inline struct sip_out sip_out_make(void *p, size_t cap)
{
    return (struct sip_out){(uint8_t *)p, 0, cap, false};
}
static inline void sip_out_put(struct sip_out *o, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (o->full || n > o->cap - o->len) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->len, p, n);
    o->len += n;
}
static inline void sip_out_str(struct sip_out *o, const char *s)
{
    sip_out_put(o, s, strlen(s));
}
static inline void sip_out_slice(struct sip_out *o, struct slice s)
{
    sip_out_put(o, s.p, s.len);
}
/* The length written, or -ENOSPC if something did not fit. */
static inline ssize_t sip_out_done(const struct sip_out *o)
{
    return o->full ? -ENOSPC : (ssize_t)o->len;
}

/* Walks the comma-separated values of every header of one kind, in message order
 * (RFC 3261 §7.3.1: several lines of a kind equal one comma-joined line). */
struct sip_value_iter {
    const struct sip_msg *m;
    enum sip_hdr_id id;
    uint16_t next_hdr; /* the header line to read once rest is used up */
    struct slice rest; /* what is left of the current line's value */
};
void sip_values_begin(struct sip_value_iter *it, const struct sip_msg *m, enum sip_hdr_id id);
/* The next value (trimmed), or false at the end. */
bool sip_values_next(struct sip_value_iter *it, struct slice *v);

/* The CSeq method, or an empty slice. */
struct slice sip_cseq_method(const struct sip_msg *m);

#endif
