/* Control channel: length-prefixed protobuf frames over mutual TLS between each edge and
 * the Director. Only ctl_codec.c sees the generated protobuf code; daemons use these C
 * types. The codec is ctl_codec.c, the client ctl_client.c, the server ctl_server.c, and
 * what both ends do with a connection's bytes ctl_framer.c (shared parts: ctl_int.h).
 *
 * Client (edges): connects, sends Hello, receives Welcome and updates, sends periodic
 * Reports, answers heartbeats, and reconnects with exponential backoff and jitter,
 * re-sending its Hello. Server (Director): accepts edges, tracks them, relays Reports to
 * subscribers, pushes SecretUpdate/Revoke/Drain.
 *
 * A Director that closes a connection on purpose (refused Hello, duplicate instance,
 * protocol error, shutdown) first sends a Goodbye with the reason, which the edge logs.
 *
 * Heartbeats: both sides send a Ping every heartbeat interval (the Director's, announced
 * in Welcome) and answer a Ping with a Pong; any frame counts as a sign of life. A side
 * that hears nothing for three intervals closes the connection. */
#ifndef COMMON_CTL_H
#define COMMON_CTL_H

#include "common/addr.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/tls.h"
#include "common/util.h"
#include <uv.h>

/* Largest Envelope accepted or sent (the 4-byte length prefix is not counted). */
#define CTL_FRAME_MAX (64 * 1024)

enum ctl_role {
    CTL_ROLE_UNKNOWN = 0,
    CTL_ROLE_DIRECTOR,
    CTL_ROLE_ACCESS_EDGE,
    CTL_ROLE_CONF_EDGE,
    CTL_ROLE_AV_EDGE,
    CTL_ROLE_REVPROXY,
};
#define CTL_ROLE_COUNT 6
/* "director", "access-edge", "conf-edge", "av-edge", "revproxy", or "unknown". */
const char *ctl_role_name(enum ctl_role r);
/* Parses one of the names above (not "unknown"); -EINVAL otherwise. */
int ctl_role_parse(const char *s, enum ctl_role *out);

enum ctl_secret_kind {
    CTL_SECRET_UNKNOWN = 0,
    CTL_SECRET_RELAY = 1,      /* TURN REST shared secret */
    CTL_SECRET_CONFERENCE = 2, /* conference key signing secret */
};
/* "relay", "conference" or "unknown". */
const char *ctl_secret_kind_name(enum ctl_secret_kind k);

#define CTL_ID_MAX 64
#define CTL_VERSION_MAX 32
#define CTL_ADDRS_MAX 8
#define CTL_SUBSCRIBE_MAX 8
#define CTL_NOTES_MAX 8
#define CTL_NOTE_MAX 128
#define CTL_USER_MAX 128
#define CTL_SECRET_MAX 64
#define CTL_SECRETS_MAX 8

struct ctl_secret {
    enum ctl_secret_kind kind;
    char key_id[CTL_ID_MAX];
    uint8_t secret[CTL_SECRET_MAX];
    size_t secret_len;
    int64_t not_after; /* unix seconds; 0 = none */
};

struct ctl_hello {
    enum ctl_role role;
    char instance_id[CTL_ID_MAX];
    char version[CTL_VERSION_MAX];
    char external_addrs[CTL_ADDRS_MAX][ADDR_STRLEN];
    size_t n_external;
    char internal_addrs[CTL_ADDRS_MAX][ADDR_STRLEN];
    size_t n_internal;
    enum ctl_role subscribe[CTL_SUBSCRIBE_MAX]; /* roles whose reports this edge wants */
    size_t n_subscribe;
};

struct ctl_welcome {
    char director_id[CTL_ID_MAX];
    uint32_t heartbeat_ms;
    struct ctl_secret secrets[CTL_SECRETS_MAX];
    size_t n_secrets;
};

struct ctl_report {
    enum ctl_role role;           /* set by the Director when relaying */
    char instance_id[CTL_ID_MAX]; /* set by the Director when relaying */
    uint64_t connections, allocations, bytes_in, bytes_out, errors;
    uint32_t load_permille;
    bool healthy, draining;
    char notes[CTL_NOTES_MAX][CTL_NOTE_MAX];
    size_t n_notes;
    /* Set by the Director when relaying: the sender's Hello addresses (TURN URIs). */
    char external_addrs[CTL_ADDRS_MAX][ADDR_STRLEN];
    size_t n_external;
    char internal_addrs[CTL_ADDRS_MAX][ADDR_STRLEN];
    size_t n_internal;
};

struct ctl_revoke {
    char conference_key_id[CTL_ID_MAX];
    char user[CTL_USER_MAX];
    int64_t until;
    /* A user reinstated (until in the past): its credentials expiring by then stay refused. */
    int64_t expiring_by;
};

/* ACME messages (proto/control.proto explains the exchange). */
#define CTL_DNSNAME_MAX 256
#define CTL_DNSNAMES_MAX 16
#define CTL_TOKEN_MAX 128
#define CTL_KEYAUTH_MAX 256
#define CTL_CSR_MAX 4096
#define CTL_CHAIN_MAX 16384

struct ctl_cert_status {
    char names[CTL_DNSNAMES_MAX][CTL_DNSNAME_MAX];
    size_t n_names;
    int64_t not_before, not_after;
    char serial[100];
    bool self_signed;
    char error[CTL_NOTE_MAX];
};

struct ctl_csr_request {
    char order_id[CTL_ID_MAX];
    char names[CTL_DNSNAMES_MAX][CTL_DNSNAME_MAX];
    size_t n_names;
};

struct ctl_csr {
    char order_id[CTL_ID_MAX];
    uint8_t der[CTL_CSR_MAX];
    size_t der_len;
    char error[CTL_NOTE_MAX];
};

struct ctl_cert_issued {
    char order_id[CTL_ID_MAX];
    char chain_pem[CTL_CHAIN_MAX];
};

enum ctl_challenge_kind {
    CTL_CHALLENGE_UNKNOWN = 0,
    CTL_CHALLENGE_HTTP_01 = 1,
    CTL_CHALLENGE_TLS_ALPN_01 = 2,
};

struct ctl_challenge {
    enum ctl_challenge_kind kind;
    char name[CTL_DNSNAME_MAX];
    char token[CTL_TOKEN_MAX];
    char key_authorization[CTL_KEYAUTH_MAX];
    bool remove;
    int64_t expires;
};

struct ctl_challenge_ready {
    char token[CTL_TOKEN_MAX];
    char error[CTL_NOTE_MAX];
};

/* ---- frame codec (pure: no I/O; fuzzed) ---- */

enum ctl_msg_type {
    CTL_MSG_HELLO = 1,
    CTL_MSG_WELCOME,
    CTL_MSG_REPORT,
    CTL_MSG_SECRET, /* SecretUpdate */
    CTL_MSG_REVOKE,
    CTL_MSG_DRAIN,
    CTL_MSG_PING,
    CTL_MSG_PONG,
    CTL_MSG_GOODBYE,         /* Director -> edge: why it is about to close the connection */
    CTL_MSG_CERT_STATUS,     /* edge -> Director */
    CTL_MSG_CSR_REQUEST,     /* Director -> edge */
    CTL_MSG_CSR,             /* edge -> Director */
    CTL_MSG_CERT_ISSUED,     /* Director -> edge */
    CTL_MSG_CHALLENGE,       /* Director -> edge */
    CTL_MSG_CHALLENGE_READY, /* edge -> Director */
};

/* One decoded control message, a plain value (no pointers, nothing to free). */
struct ctl_msg {
    enum ctl_msg_type type;
    union {
        struct ctl_hello hello;
        struct ctl_welcome welcome;
        struct ctl_report report;
        struct ctl_secret secret;
        struct ctl_revoke revoke;
        uint32_t drain_deadline_ms;
        uint64_t seq;              /* ping, pong */
        char reason[CTL_NOTE_MAX]; /* goodbye */
        struct ctl_cert_status cert_status;
        struct ctl_csr_request csr_request;
        struct ctl_csr csr;
        struct ctl_cert_issued cert_issued;
        struct ctl_challenge challenge;
        struct ctl_challenge_ready challenge_ready;
    } u;
};

/* Splits one frame off the front of data into *msg: returns bytes used (>0), -EAGAIN if
 * the frame is incomplete, -EMSGSIZE if its length prefix exceeds CTL_FRAME_MAX, or
 * -EBADMSG if the body is not a valid Envelope (undecodable, no message, a string or
 * list longer than the limits above). */
ssize_t ctl_frame_decode(const uint8_t *data, size_t len, struct ctl_msg *msg);
/* Writes m as one frame (prefix + Envelope) into out: returns the frame's length,
 * -ENOSPC if cap is too small, -EMSGSIZE if the Envelope exceeds CTL_FRAME_MAX, or
 * -EINVAL for an unknown type. */
ssize_t ctl_frame_encode(const struct ctl_msg *m, uint8_t *out, size_t cap);
/* True if s may travel in a control message: valid UTF-8 without control characters
 * (decoding refuses other strings with -EBADMSG; ctl_client_start with -EINVAL). */
bool ctl_text_ok(const char *s);
/* Describes a negative result of ctl_frame_decode for logs ("oversized frame", ...). */
const char *ctl_frame_strerror(ssize_t err);

/* ---- client (edges) ---- */
struct ctl_client;

/* Every callback is optional. None runs after ctl_client_stop. */
struct ctl_client_cbs {
    void (*on_connected)(const char *director_id, void *arg); /* Welcome received */
    void (*on_disconnected)(const char *why, void *arg);      /* after a Welcome only */
    /* From Welcome (oldest first) and each SecretUpdate (a new current key): installing each
     * with keyring_rotate() in arrival order keeps the edge's keyring equal to the Director's. */
    void (*on_secret)(const struct ctl_secret *s, void *arg);
    void (*on_report)(const struct ctl_report *r, void *arg); /* another edge's report */
    void (*on_revoke)(const struct ctl_revoke *r, void *arg);
    void (*on_drain)(uint32_t deadline_ms, void *arg);
};

/* ACME (common/acme_edge.c registers itself here, so no daemon handles these): on is
 * called with a CTL_MSG_WELCOME message after each Welcome (send CertStatus then) and with
 * every CTL_MSG_CSR_REQUEST, CTL_MSG_CERT_ISSUED and CTL_MSG_CHALLENGE received. */
void ctl_client_set_acme_handler(struct ctl_client *c,
                                 void (*on)(const struct ctl_msg *m, void *arg), void *arg);
/* Sends any edge -> Director message (CertStatus, Csr, ChallengeReady); -ENOTCONN until
 * the next Welcome. */
int ctl_client_send(struct ctl_client *c, const struct ctl_msg *m);

struct ctl_client_opts {
    struct addr director;
    /* Either a client TLS context (referenced) ... */
    struct tls_ctx *tls;
    /* ... or, when tls is NULL, the files to build one from (mutual TLS: all three). */
    const char *cert_file, *key_file, *ca_file;
    const char *director_name; /* name to verify on the Director's certificate (copied) */
    struct ctl_hello hello;
    uint32_t report_interval_ms;             /* 0 = 1000 */
    uint32_t backoff_min_ms, backoff_max_ms; /* 0 = 100 / 5000 */
    uint32_t welcome_timeout_ms;             /* TLS handshake + Welcome; 0 = 5000 */
    const struct logger *log;                /* must outlive the client */
    /* Optional: registers ctl_connected (gauge), ctl_connection_failures_total and
     * ctl_reports_sent_total; must outlive the client. */
    struct metrics *metrics;
};

/* Starts connecting at once; returns 0 or a negative errno (bad options, unreadable
 * certificates: logged, no memory). Edges usually call ctl_client_start_link below with
 * their `director:` config section instead, then ctl_client_set_report_source. */
int ctl_client_start(uv_loop_t *loop, const struct ctl_client_opts *o,
                     const struct ctl_client_cbs *cb, void *arg, struct ctl_client **out);
/* The same from an edge's `director:` config section (struct director_link_config in
 * common/daemon.h): address, server_name, tls files and report_interval come from link,
 * the rest from hello. With `enabled: false` it starts nothing: *out = NULL, returns 0.
 *
 *     struct ctl_hello h = {.role = CTL_ROLE_AV_EDGE, .subscribe = {CTL_ROLE_AV_EDGE},
 *                           .n_subscribe = 1};
 *     snprintf(h.instance_id, sizeof h.instance_id, "%s", cfg->base.instance_id);
 *     snprintf(h.version, sizeof h.version, "%s", SUITE_VERSION); // from version.h
 *     rc = ctl_client_start_link(daemon_loop(d), &cfg->director, &h, daemon_logger(d),
 *                                daemon_metrics(d), &av_ctl_cbs, av, &av->ctl);
 *     if (rc == 0 && av->ctl)
 *         ctl_client_set_report_source(av->ctl, av_fill_report, av);
 */
struct director_link_config;
int ctl_client_start_link(uv_loop_t *loop, const struct director_link_config *link,
                          const struct ctl_hello *hello, const struct logger *log,
                          struct metrics *metrics, const struct ctl_client_cbs *cb, void *arg,
                          struct ctl_client **out);
/* The client calls fill before each periodic report (and right after each Welcome). */
typedef void (*ctl_report_fill_cb)(struct ctl_report *r, void *arg);
void ctl_client_set_report_source(struct ctl_client *c, ctl_report_fill_cb fill, void *arg);
/* Sends a report now (e.g. a watch-list change); -ENOTCONN until the next Welcome. */
int ctl_client_send_report(struct ctl_client *c, const struct ctl_report *r);
bool ctl_client_connected(const struct ctl_client *c);
/* Uses tls from the next connection on (certificate reload on SIGHUP); referenced. */
void ctl_client_set_tls(struct ctl_client *c, struct tls_ctx *tls);
/* On reload: a new client context from the link's (new) certificate files, for the next
 * connection (the one up keeps its own). 0 when c is NULL or the link disabled; a negative
 * errno with err otherwise, and the old context stays. */
int ctl_client_reload_link(struct ctl_client *c, const struct director_link_config *link, char *err,
                           size_t errcap);
/* Closes the connection and every handle; frees asynchronously. NULL is a no-op. */
void ctl_client_stop(struct ctl_client *c);

/* ---- server (Director) ---- */
struct ctl_server;
struct ctl_peer; /* one connected edge; valid until on_gone for it returns */

/* None runs after ctl_server_stop. */
struct ctl_server_cbs {
    /* An edge said Hello: fill up to max secrets for its Welcome and return how many,
     * or a negative errno to refuse the edge (the connection is closed). */
    int (*on_hello)(struct ctl_peer *p, const struct ctl_hello *h, struct ctl_secret *secrets,
                    size_t max, void *arg);
    /* A report from p (role and instance_id already filled in from its Hello). */
    void (*on_report)(struct ctl_peer *p, const struct ctl_report *r, void *arg);
    /* p, which had said Hello, is gone; p is freed after this returns. */
    void (*on_gone)(struct ctl_peer *p, const char *why, void *arg);
    /* ACME messages from p: CTL_MSG_CERT_STATUS, CTL_MSG_CSR, CTL_MSG_CHALLENGE_READY. */
    void (*on_acme)(struct ctl_peer *p, const struct ctl_msg *m, void *arg);
};

struct ctl_server_opts {
    struct addr listen;
    struct tls_ctx *tls;      /* server ctx requiring client certificates; referenced */
    uint32_t heartbeat_ms;    /* 0 = 1000; a peer silent for 3 heartbeats is dropped */
    const char *director_id;  /* copied */
    size_t max_peers;         /* open connections at most (0 = 1024); more are refused */
    const struct logger *log; /* must outlive the server */
    /* Optional: registers ctl_refused_total{reason="tls|frame|hello|overload"} and
     * ctl_heartbeat_timeouts_total; must outlive the server. */
    struct metrics *metrics;
};

int ctl_server_start(uv_loop_t *loop, const struct ctl_server_opts *o,
                     const struct ctl_server_cbs *cb, void *arg, struct ctl_server **out);
/* Closes the listener and every peer; frees asynchronously. NULL is a no-op. */
void ctl_server_stop(struct ctl_server *s);
/* Uses tls for connections accepted from now on (certificate reload); peers keep theirs. */
void ctl_server_set_tls(struct ctl_server *s, struct tls_ctx *tls);
/* The address the listener is bound to (useful when listening on port 0). */
int ctl_server_local_addr(const struct ctl_server *s, struct addr *out);
/* Connected peers that said Hello. */
size_t ctl_server_peer_count(const struct ctl_server *s);
/* Calls fn for each connected peer that said Hello. fn may send to p, not close it. */
void ctl_server_foreach(struct ctl_server *s, void (*fn)(struct ctl_peer *p, void *arg), void *arg);

const struct ctl_hello *ctl_peer_hello(const struct ctl_peer *p);
const struct addr *ctl_peer_addr(const struct ctl_peer *p);
/* Subject CN of the peer's (verified) certificate, or "". */
const char *ctl_peer_cert_name(const struct ctl_peer *p);
/* True if the peer's certificate names `name` (its CN or a DNS subjectAltName), exactly or
 * as the first label ("av-edge" matches "av-edge" and "av-edge.example.net"). */
bool ctl_peer_cert_names(const struct ctl_peer *p, const char *name);
/* Each returns 0, -ENOTCONN if the peer is closing, or -ENOBUFS (then the peer is closed:
 * an edge that does not read its control channel is dropped). */
int ctl_peer_send_secret(struct ctl_peer *p, const struct ctl_secret *s);
int ctl_peer_send_revoke(struct ctl_peer *p, const struct ctl_revoke *r);
/* Another edge's last report (role, instance_id and addresses filled in), e.g. for an edge
 * that has just subscribed and would otherwise wait a report interval to hear of it. */
int ctl_peer_send_report(struct ctl_peer *p, const struct ctl_report *r);
int ctl_peer_send_drain(struct ctl_peer *p, uint32_t deadline_ms);
/* Any Director -> edge message (CsrRequest, CertIssued, Challenge); results as above. */
int ctl_peer_send(struct ctl_peer *p, const struct ctl_msg *m);
/* Says Goodbye with why and closes p; on_gone follows from the loop. */
void ctl_peer_close(struct ctl_peer *p, const char *why);

#endif
