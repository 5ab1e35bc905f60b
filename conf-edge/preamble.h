/* The versioned preamble a conferencing client sends right after the TLS handshake, and the
 * one-line answers the edge gives (pure code: no I/O; fuzzed).
 *
 * Client -> edge, once, before any PSOM byte:   "PSOM-EDGE/1 <conference-session-key>\r\n"
 * Edge -> client, one line:                     "PSOM-EDGE/1 <code> <reason>\r\n"
 * 200 means admitted: every byte after that line is the relayed PSOM stream. Any other code
 * is a refusal and the edge closes the connection after the line. A bare "\n" ends the line
 * too. The whole line (terminator included) is at most CE_PREAMBLE_MAX bytes. */
#ifndef CONF_EDGE_PREAMBLE_H
#define CONF_EDGE_PREAMBLE_H

#include "common/util.h"
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CE_PREAMBLE_MAX 1024
#define CE_PREAMBLE_MAGIC "PSOM-EDGE/"
#define CE_PREAMBLE_VERSION 1

struct ce_preamble {
    unsigned version;
    struct slice key; /* points into the parsed input; len 0 when the client sent no key */
};

/* Parses one preamble line at the start of p. Returns the bytes it used (the line and its
 * terminator; the rest belongs to the relayed stream), -EAGAIN if the line is incomplete
 * and may still become valid, -EBADMSG if it is not a preamble (wrong magic, bad
 * characters, more than one key, too long), or -EPROTONOSUPPORT for a version other
 * than 1 (out->version says which). */
ssize_t ce_preamble_parse(const uint8_t *p, size_t len, struct ce_preamble *out);

/* Why the edge answers what it answers. */
enum ce_reply {
    CE_REPLY_ADMITTED = 0, /* 200 admitted */
    CE_REPLY_MALFORMED,    /* 400 malformed-preamble */
    CE_REPLY_MISSING_KEY,  /* 401 missing-key */
    CE_REPLY_INVALID_KEY,  /* 403 invalid-key: malformed token or bad signature */
    CE_REPLY_UNKNOWN_KEY,  /* 403 unknown-key-id: foreign or rotated-out signing key */
    CE_REPLY_EXPIRED_KEY,  /* 403 expired-key */
    CE_REPLY_REVOKED_KEY,  /* 403 revoked-key */
    CE_REPLY_TIMEOUT,      /* 408 preamble-timeout */
    CE_REPLY_TOO_MANY,     /* 429 too-many-connections: per-address or per-conference cap */
    CE_REPLY_KEY_IN_USE,   /* 429 key-in-use: the key has limits.per_key sessions (refuse policy) */
    CE_REPLY_NO_SERVER,    /* 503 no-conferencing-server */
    CE_REPLY_DRAINING,     /* 503 draining */
    CE_REPLY_BAD_VERSION,  /* 505 unsupported-version */
    CE_REPLY_COUNT
};

/* The full line for r, "PSOM-EDGE/1 403 expired-key\r\n" (static storage). */
const char *ce_reply_line(enum ce_reply r);
/* The reason token alone ("expired-key"), for logs and metric labels. */
const char *ce_reply_reason(enum ce_reply r);
int ce_reply_code(enum ce_reply r);

/* Client side (tests, load tools): parses an answer line. Returns bytes used, -EAGAIN or
 * -EBADMSG; *code gets the status (200 = admitted). */
ssize_t ce_reply_parse(const uint8_t *p, size_t len, int *code);

#endif
