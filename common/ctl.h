/* Control channel: length-prefixed protobuf frames over mutual TLS between each edge and
 * the Director. Only ctl.c sees the generated protobuf code; daemons use these C types.
 *
 * Client (edges): connects, sends Hello, receives Welcome and updates, sends periodic
 * Reports, answers heartbeats, and reconnects with exponential backoff and jitter,
 * re-sending its Hello. Server (Director): accepts edges, tracks them, relays Reports to
 * subscribers, pushes SecretUpdate/Revoke/Drain. */
#ifndef COMMON_CTL_H
#define COMMON_CTL_H

#include <uv.h>
#include "common/addr.h"
#include "common/log.h"
#include "common/tls.h"
#include "common/util.h"

#define CTL_FRAME_MAX (64 * 1024)

enum ctl_role {
    CTL_ROLE_UNKNOWN = 0,
    CTL_ROLE_DIRECTOR,
    CTL_ROLE_ACCESS_EDGE,
    CTL_ROLE_CONF_EDGE,
    CTL_ROLE_AV_EDGE,
    CTL_ROLE_REVPROXY,
};
const char *ctl_role_name(enum ctl_role r);
int ctl_role_parse(const char *s, enum ctl_role *out);

enum ctl_secret_kind {
    CTL_SECRET_RELAY = 1,      /* TURN REST shared secret */
    CTL_SECRET_CONFERENCE = 2, /* conference key signing secret */
};

#define CTL_ID_MAX 64
#define CTL_ADDRS_MAX 8
#define CTL_NOTES_MAX 8

struct ctl_secret {
    enum ctl_secret_kind kind;
    char key_id[CTL_ID_MAX];
    uint8_t secret[64];
    size_t secret_len;
    int64_t not_after;
};

struct ctl_hello {
    enum ctl_role role;
    char instance_id[CTL_ID_MAX];
    char version[32];
    char external_addrs[CTL_ADDRS_MAX][ADDR_STRLEN];
    size_t n_external;
    char internal_addrs[CTL_ADDRS_MAX][ADDR_STRLEN];
    size_t n_internal;
    enum ctl_role subscribe[6];
    size_t n_subscribe;
};

struct ctl_report {
    enum ctl_role role;            /* set by the Director when relaying */
    char instance_id[CTL_ID_MAX];  /* set by the Director when relaying */
    uint64_t connections, allocations, bytes_in, bytes_out, errors;
    uint32_t load_permille;
    bool healthy, draining;
    char notes[CTL_NOTES_MAX][128];
    size_t n_notes;
};

struct ctl_revoke {
    char conference_key_id[CTL_ID_MAX];
    char user[128];
    int64_t until;
};

/* ---- client (edges) ---- */
struct ctl_client;

struct ctl_client_cbs {
    void (*on_connected)(void *arg);                       /* Welcome received */
    void (*on_disconnected)(const char *why, void *arg);
    void (*on_secret)(const struct ctl_secret *s, void *arg); /* from Welcome and updates */
    void (*on_report)(const struct ctl_report *r, void *arg); /* another edge's report */
    void (*on_revoke)(const struct ctl_revoke *r, void *arg);
    void (*on_drain)(uint32_t deadline_ms, void *arg);
};

struct ctl_client_opts {
    struct addr director;
    struct tls_ctx *tls;            /* client ctx with cert, key and CA (mutual TLS) */
    const char *director_name;      /* name to verify on the Director's certificate */
    struct ctl_hello hello;
    uint32_t report_interval_ms;    /* 0 = 1000 */
    uint32_t backoff_min_ms, backoff_max_ms; /* 0 = 100 / 5000 */
    const struct logger *log;
};

int ctl_client_start(uv_loop_t *loop, const struct ctl_client_opts *o,
                     const struct ctl_client_cbs *cb, void *arg, struct ctl_client **out);
/* The client calls this before each periodic report to fill in the numbers. */
typedef void (*ctl_report_fill_cb)(struct ctl_report *r, void *arg);
void ctl_client_set_report_source(struct ctl_client *c, ctl_report_fill_cb fill, void *arg);
/* Sends a report now (e.g. a watch-list change); -ENOTCONN while disconnected. */
int ctl_client_send_report(struct ctl_client *c, const struct ctl_report *r);
bool ctl_client_connected(const struct ctl_client *c);
void ctl_client_stop(struct ctl_client *c); /* frees asynchronously */

/* ---- server (Director) ---- */
struct ctl_server;
struct ctl_peer; /* one connected edge */

struct ctl_server_cbs {
    /* An edge said Hello; fill the secrets to send in Welcome (up to max). Return count. */
    size_t (*on_hello)(struct ctl_peer *p, const struct ctl_hello *h, struct ctl_secret *secrets,
                       size_t max, void *arg);
    void (*on_report)(struct ctl_peer *p, const struct ctl_report *r, void *arg);
    void (*on_gone)(struct ctl_peer *p, const char *why, void *arg);
};

struct ctl_server_opts {
    struct addr listen;
    struct tls_ctx *tls;            /* server ctx requiring client certificates */
    uint32_t heartbeat_ms;          /* 0 = 1000; a peer silent for 3 heartbeats is dropped */
    const char *director_id;
    const struct logger *log;
};

int ctl_server_start(uv_loop_t *loop, const struct ctl_server_opts *o,
                     const struct ctl_server_cbs *cb, void *arg, struct ctl_server **out);
void ctl_server_stop(struct ctl_server *s);
const struct ctl_hello *ctl_peer_hello(const struct ctl_peer *p);
const struct addr *ctl_peer_addr(const struct ctl_peer *p);
int ctl_peer_send_secret(struct ctl_peer *p, const struct ctl_secret *s);
int ctl_peer_send_revoke(struct ctl_peer *p, const struct ctl_revoke *r);
int ctl_peer_send_drain(struct ctl_peer *p, uint32_t deadline_ms);
/* Calls fn for each connected peer that said Hello. */
void ctl_server_foreach(struct ctl_server *s, void (*fn)(struct ctl_peer *p, void *arg), void *arg);

/* ---- frame codec (pure; fuzzed) ----
 * Splits one frame off the front of data: returns bytes used (>0), -EAGAIN if incomplete,
 * -EMSGSIZE if the length prefix exceeds CTL_FRAME_MAX, -EBADMSG if the body does not decode.
 * On success *msg is a decoded message to free with ctl_msg_free. */
struct ctl_msg;
ssize_t ctl_frame_decode(const uint8_t *data, size_t len, struct ctl_msg **msg);
void ctl_msg_free(struct ctl_msg *m);

#endif
