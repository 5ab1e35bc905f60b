/* TURN state machine and allocation table: every error code a client can see, the
 * relay paths, the enterprise peer rule, REST credentials with rotation, expiry. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "av-edge/turn.h"
#include "common/crypto.h"
#include "common/token.h"

#define NOW_S 1700000000

/* A fake I/O layer: relay ports counted up from 50000, with a cap to test exhaustion; RFC
 * 6062 connects are recorded and answered with connect_rc, and one pending connection id
 * (pending_id, owned by pending_alloc) waits for its ConnectionBind. */
struct fake_io {
    int next_port, max_port, open, reserved;
    int connects, connect_rc;
    struct addr connect_peer;
    struct av_turn_pending connect_req;
    uint32_t pending_id;
    struct av_alloc *pending_alloc;
};

static int fake_open(void *arg, struct av_alloc *a, int family, bool even, bool df,
                     void **reserve_out, void *reserved_in)
{
    struct fake_io *io = arg;
    int port;
    if (reserved_in) {
        port = (int)(intptr_t)reserved_in;
        io->reserved--;
    } else {
        if (even && (io->next_port & 1))
            io->next_port++;
        if (io->next_port > io->max_port)
            return -EADDRNOTAVAIL;
        port = io->next_port++;
        if (reserve_out) {
            *reserve_out = (void *)(intptr_t)io->next_port++;
            io->reserved++;
        }
    }
    int i = family == AF_INET6;
    addr_parse(&a->relay[i].addr, i ? "[::1]:0" : "127.0.0.13:0", 0);
    addr_set_port(&a->relay[i].addr, (uint16_t)port);
    a->relay[i].handle = (void *)1;
    io->open++;
    return 0;
}
static void fake_close(void *arg, struct av_alloc *a)
{
    struct fake_io *io = arg;
    for (int i = 0; i < 2; i++)
        if (a->relay[i].handle)
            io->open--;
}
static void fake_release(void *arg, void *h)
{
    ((struct fake_io *)arg)->reserved--;
}
static int fake_connect(void *arg, struct av_alloc *a, const struct addr *peer,
                        const struct av_turn_pending *p)
{
    struct fake_io *io = arg;
    io->connects++;
    io->connect_peer = *peer;
    io->connect_req = *p;
    io->pending_alloc = a;
    return io->connect_rc;
}
static struct av_alloc *fake_conn_alloc(void *arg, uint32_t id)
{
    struct fake_io *io = arg;
    return id && id == io->pending_id ? io->pending_alloc : NULL;
}

struct fx {
    struct av_shared sh;
    struct av_turn_cfg cfg;
    struct av_static_user users[1];
    struct cidr internal[1], allow[1];
    struct addr own[2];
    struct fake_io io;
    struct av_turn *t;
    uint64_t now_ms;
    int64_t now_s;
    /* the current client */
    struct addr client;
    uint8_t side;
    uint8_t transport; /* AV_TRANSPORT_UDP unless a test says TCP */
    char user[128];
    uint8_t key[16];
    char nonce[64];
    uint8_t tid[12];
    /* the last reply */
    uint8_t reply[1500];
    struct av_turn_out out;
    struct stun_msg resp;
};

static int setup(void **st)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_int_equal(av_shared_init(&f->sh), 0);
    assert_int_equal(av_shared_set_secret(&f->sh, "k1", "secret1", 7, 0), 0);
    f->cfg = (struct av_turn_cfg){.realm = "lab",
                                  .software = "av-edge test",
                                  .default_lifetime_s = 600,
                                  .max_lifetime_s = 3600,
                                  .perm_lifetime_s = 300,
                                  .chan_lifetime_s = 600,
                                  .nonce_lifetime_s = 600,
                                  .user_quota = 3,
                                  .total_quota = 5,
                                  .max_perms = 8,
                                  .have_v4 = true,
                                  .tcp_relay = true};
    f->users[0].name = "alice";
    stun_key_long_term(slice_str("alice"), slice_str("lab"), slice_str("wonder"), f->users[0].key);
    f->cfg.users = f->users;
    f->cfg.n_users = 1;
    cidr_parse(&f->internal[0], "10.0.0.0/8");
    f->cfg.internal_nets = f->internal;
    f->cfg.n_internal_nets = 1;
    addr_parse(&f->own[0], "127.0.0.13:0", 0);
    addr_parse(&f->own[1], "203.0.113.13:0", 0);
    f->cfg.own = f->own;
    f->cfg.n_own = 2;
    f->io = (struct fake_io){50000, 50009, 0, 0};
    struct av_relay_io io = {.open = fake_open,
                             .close = fake_close,
                             .release = fake_release,
                             .arg = &f->io,
                             .connect = fake_connect,
                             .conn_alloc = fake_conn_alloc};
    assert_int_equal(av_turn_create(&f->t, &f->cfg, &f->sh, &io, NULL), 0);
    f->now_ms = 1000000;
    f->now_s = NOW_S;
    addr_parse(&f->client, "198.51.100.7:40000", 0);
    f->transport = AV_TRANSPORT_UDP;
    *st = f;
    return 0;
}

static int teardown(void **st)
{
    struct fx *f = *st;
    av_turn_destroy(f->t);
    assert_int_equal(f->io.open, 0);
    assert_int_equal(f->sh.allocs, 0);
    av_shared_fini(&f->sh);
    assert_int_equal(f->io.reserved, 0);
    free(f);
    return 0;
}

static void use_static(struct fx *f, const char *user, const char *pass)
{
    snprintf(f->user, sizeof(f->user), "%s", user);
    stun_key_long_term(slice_str(user), slice_str("lab"), slice_str(pass), f->key);
}

static void use_rest(struct fx *f, int64_t expiry, const char *who, const char *secret)
{
    char pass[64];
    turn_rest_username(f->user, sizeof(f->user), expiry, who);
    turn_rest_password(secret, strlen(secret), f->user, pass, sizeof(pass));
    stun_key_long_term(slice_str(f->user), slice_str("lab"), slice_str(pass), f->key);
}

typedef void (*add_fn)(struct stun_builder *b, void *arg);

/* Feeds one message; returns the reply's error code, 0 for success, -1 for no reply. */
static int feed(struct fx *f, const uint8_t *p, size_t len)
{
    struct av_turn_in in = {&f->client, 0, f->transport, f->side, NULL, f->now_ms, f->now_s};
    f->out = (struct av_turn_out){.reply = f->reply, .reply_cap = sizeof(f->reply)};
    int rc = av_turn_input(f->t, &in, p, len, &f->out);
    if (rc < 0 || f->out.reply_len == 0)
        return -1;
    assert_true(stun_msg_parse(&f->resp, f->reply, f->out.reply_len) > 0);
    assert_memory_equal(f->resp.tid, p + 8, 12);
    if (f->resp.cls == STUN_SUCCESS)
        return 0;
    const struct stun_attr *n = stun_msg_find(&f->resp, STUN_A_NONCE);
    if (n)
        snprintf(f->nonce, sizeof(f->nonce), "%.*s", n->len, (const char *)f->reply + n->off);
    int code = -1;
    assert_int_equal(
        stun_attr_error(&f->resp, stun_msg_find(&f->resp, STUN_A_ERROR_CODE), &code, NULL), 0);
    return code;
}

static int request(struct fx *f, uint16_t method, add_fn add, void *arg, bool auth)
{
    uint8_t buf[1024];
    struct stun_builder b;
    for (int i = 0; i < 12; i++)
        f->tid[i] = (uint8_t)rand();
    stun_build_init(&b, buf, sizeof(buf), method, STUN_REQUEST, f->tid);
    if (add)
        add(&b, arg);
    if (auth) {
        stun_build_attr(&b, STUN_A_USERNAME, f->user, strlen(f->user));
        stun_build_attr(&b, STUN_A_REALM, "lab", 3);
        stun_build_attr(&b, STUN_A_NONCE, f->nonce, strlen(f->nonce));
        stun_build_integrity(&b, f->key, 16);
    }
    stun_build_fingerprint(&b);
    ssize_t n = stun_build_finish(&b);
    assert_true(n > 0);
    int code = feed(f, buf, (size_t)n);
    if (code >= 0 && auth && code != 401 && code != 438) {
        /* Authenticated answers carry MESSAGE-INTEGRITY with the same key. */
        assert_int_equal(stun_msg_check_integrity(&f->resp, f->key, 16), 0);
    }
    if (code >= 0 && f->resp.fp_off) /* optional in answers: dropped when space is short */
        assert_int_equal(stun_msg_check_fingerprint(&f->resp), 0);
    return code;
}

/* Gets a nonce the way a client does: an unauthenticated request and its 401. */
static void challenge(struct fx *f)
{
    assert_int_equal(request(f, STUN_ALLOCATE, NULL, NULL, false), 401);
    assert_non_null(stun_msg_find(&f->resp, STUN_A_REALM));
    assert_int_equal(strlen(f->nonce), 16);
}

static void add_udp(struct stun_builder *b, void *arg)
{
    stun_build_u32(b, STUN_A_REQUESTED_TRANSPORT, (uint32_t)(arg ? (intptr_t)arg : 17) << 24);
}

static int allocate(struct fx *f)
{
    return request(f, STUN_ALLOCATE, add_udp, NULL, true);
}

static void add_peer(struct stun_builder *b, void *arg)
{
    struct addr a;
    assert_int_equal(addr_parse(&a, arg, 0), 0);
    stun_build_xaddr(b, STUN_A_XOR_PEER_ADDRESS, &a);
}

static int permit(struct fx *f, const char *peer)
{
    return request(f, STUN_CREATE_PERMISSION, add_peer, (void *)peer, true);
}

struct bind_arg {
    uint32_t ch;
    const char *peer;
};
static void add_bind(struct stun_builder *b, void *arg)
{
    struct bind_arg *ba = arg;
    stun_build_u32(b, STUN_A_CHANNEL_NUMBER, ba->ch << 16);
    add_peer(b, (void *)ba->peer);
}

static void binding_answers_mapped_address(void **st)
{
    struct fx *f = *st;
    assert_int_equal(request(f, STUN_BINDING, NULL, NULL, false), 0);
    struct addr a;
    assert_int_equal(
        stun_attr_xaddr(&f->resp, stun_msg_find(&f->resp, STUN_A_XOR_MAPPED_ADDRESS), &a), 0);
    assert_true(addr_eq(&a, &f->client));
    /* 420 for an unknown comprehension-required attribute, with UNKNOWN-ATTRIBUTES. */
    uint8_t buf[64];
    struct stun_builder b;
    stun_build_init(&b, buf, sizeof(buf), STUN_BINDING, STUN_REQUEST, f->tid);
    stun_build_attr(&b, 0x0003, "\0\0\0\0", 4); /* CHANGE-REQUEST: not supported */
    assert_int_equal(feed(f, buf, (size_t)stun_build_finish(&b)), 420);
    const struct stun_attr *u = stun_msg_find(&f->resp, STUN_A_UNKNOWN_ATTRIBUTES);
    assert_non_null(u);
    assert_memory_equal(f->reply + u->off, "\x00\x03", 2);
}

static void error_401_challenge_is_small(void **st)
{
    struct fx *f = *st;
    uint8_t buf[64];
    struct stun_builder b;
    stun_build_init(&b, buf, sizeof(buf), STUN_ALLOCATE, STUN_REQUEST, f->tid);
    add_udp(&b, NULL);
    ssize_t n = stun_build_finish(&b);
    assert_int_equal(feed(f, buf, (size_t)n), 401);
    assert_null(stun_msg_find(&f->resp, STUN_A_MESSAGE_INTEGRITY));
    assert_null(stun_msg_find(&f->resp, STUN_A_SOFTWARE));
    /* header, ERROR-CODE without a phrase, REALM "lab", a 16-byte NONCE */
    assert_int_equal(f->out.reply_len, 20 + 8 + 8 + 20);
    /* wrong password */
    use_static(f, "alice", "nope");
    assert_int_equal(allocate(f), 401);
    /* unknown user */
    use_static(f, "mallory", "x");
    assert_int_equal(allocate(f), 401);
    assert_int_equal(av_turn_stats(f->t)->auth_fail[AV_AUTH_BAD_INTEGRITY], 1);
    assert_int_equal(av_turn_stats(f->t)->auth_fail[AV_AUTH_UNKNOWN_USER], 1);
}

static void allocate_static_user_and_relay(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_static(f, "alice", "wonder");
    assert_int_equal(allocate(f), 0);
    struct addr relay;
    assert_int_equal(
        stun_attr_xaddr(&f->resp, stun_msg_find(&f->resp, STUN_A_XOR_RELAYED_ADDRESS), &relay), 0);
    assert_int_equal(addr_port(&relay), 50000);
    uint32_t life;
    assert_int_equal(stun_attr_u32(&f->resp, stun_msg_find(&f->resp, STUN_A_LIFETIME), &life), 0);
    assert_int_equal(life, 600);
    assert_non_null(stun_msg_find(&f->resp, STUN_A_XOR_MAPPED_ADDRESS));

    /* A retransmitted Allocate (same transaction) gets the same answer; a new one 437. */
    uint8_t tid[12];
    memcpy(tid, f->tid, 12);
    uint8_t buf[256];
    struct stun_builder b;
    stun_build_init(&b, buf, sizeof(buf), STUN_ALLOCATE, STUN_REQUEST, tid);
    add_udp(&b, NULL);
    stun_build_attr(&b, STUN_A_USERNAME, f->user, strlen(f->user));
    stun_build_attr(&b, STUN_A_REALM, "lab", 3);
    stun_build_attr(&b, STUN_A_NONCE, f->nonce, strlen(f->nonce));
    stun_build_integrity(&b, f->key, 16);
    assert_int_equal(feed(f, buf, (size_t)stun_build_finish(&b)), 0);
    assert_int_equal(allocate(f), 437);

    /* Permission, then Send indication goes out, and peer data comes back as Data. */
    assert_int_equal(permit(f, "192.0.2.50:7000"), 0);
    stun_build_init(&b, buf, sizeof(buf), STUN_SEND, STUN_INDICATION, tid);
    add_peer(&b, "192.0.2.50:7000");
    stun_build_attr(&b, STUN_A_DATA, "hello", 5);
    assert_int_equal(feed(f, buf, (size_t)stun_build_finish(&b)), -1);
    assert_non_null(f->out.relay_alloc);
    assert_int_equal(f->out.relay_data.len, 5);
    assert_memory_equal(f->out.relay_data.p, "hello", 5);
    struct av_alloc *a = f->out.relay_alloc;

    /* No permission for another peer: dropped. */
    stun_build_init(&b, buf, sizeof(buf), STUN_SEND, STUN_INDICATION, tid);
    add_peer(&b, "192.0.2.51:7000");
    stun_build_attr(&b, STUN_A_DATA, "hello", 5);
    assert_int_equal(feed(f, buf, (size_t)stun_build_finish(&b)), -1);
    assert_null(f->out.relay_alloc);

    uint8_t pkt[AV_HEADROOM + 16 + AV_TAILROOM];
    memcpy(pkt + AV_HEADROOM, "world", 5);
    struct addr peer;
    addr_parse(&peer, "192.0.2.50:7000", 0);
    struct slice frame;
    assert_int_equal(
        av_turn_peer_input(f->t, a, &peer, pkt + AV_HEADROOM, 5, false, f->now_ms, &frame), 0);
    struct stun_msg m;
    assert_int_equal(stun_msg_parse(&m, frame.p, frame.len), (ssize_t)frame.len);
    assert_int_equal(m.method, STUN_DATA);
    assert_int_equal(m.cls, STUN_INDICATION);
    struct addr got;
    assert_int_equal(stun_attr_xaddr(&m, stun_msg_find(&m, STUN_A_XOR_PEER_ADDRESS), &got), 0);
    assert_true(addr_eq(&got, &peer));
    assert_true(slice_eq_str(stun_attr_value(&m, stun_msg_find(&m, STUN_A_DATA)), "world"));
    /* From an unpermitted peer: dropped. */
    addr_parse(&peer, "192.0.2.99:7000", 0);
    assert_int_equal(
        av_turn_peer_input(f->t, a, &peer, pkt + AV_HEADROOM, 5, false, f->now_ms, &frame), -EPERM);

    /* ChannelBind, then ChannelData both ways. */
    struct bind_arg ba = {0x4001, "192.0.2.50:7000"};
    assert_int_equal(request(f, STUN_CHANNEL_BIND, add_bind, &ba, true), 0);
    uint8_t cd[12] = {0x40, 0x01, 0x00, 0x03, 'a', 'b', 'c', 0};
    assert_int_equal(feed(f, cd, 8), -1);
    assert_ptr_equal(f->out.relay_alloc, a);
    assert_int_equal(f->out.relay_data.len, 3);
    addr_parse(&peer, "192.0.2.50:7000", 0);
    assert_int_equal(
        av_turn_peer_input(f->t, a, &peer, pkt + AV_HEADROOM, 5, true, f->now_ms, &frame), 0);
    assert_int_equal(frame.len, 12); /* 4 + 5, padded to 12 on a stream */
    assert_memory_equal(frame.p, "\x40\x01\x00\x05world\0\0\0", 12);
    cd[1] = 0x02; /* unbound channel: dropped */
    assert_int_equal(feed(f, cd, 8), -1);
    assert_null(f->out.relay_alloc);

    /* 400: the same channel for another peer, the same peer on another channel, bad number. */
    struct bind_arg b2 = {0x4001, "192.0.2.60:7000"};
    assert_int_equal(request(f, STUN_CHANNEL_BIND, add_bind, &b2, true), 400);
    struct bind_arg b3 = {0x4002, "192.0.2.50:7000"};
    assert_int_equal(request(f, STUN_CHANNEL_BIND, add_bind, &b3, true), 400);
    struct bind_arg b4 = {0x3FFF, "192.0.2.61:7000"};
    assert_int_equal(request(f, STUN_CHANNEL_BIND, add_bind, &b4, true), 400);
    /* 400: CreatePermission without a peer. */
    assert_int_equal(request(f, STUN_CREATE_PERMISSION, NULL, NULL, true), 400);

    /* 441: another user on the same 5-tuple. */
    char keep_user[128];
    uint8_t keep_key[16];
    strcpy(keep_user, f->user);
    memcpy(keep_key, f->key, 16);
    use_rest(f, NOW_S + 3600, "bob", "secret1");
    assert_int_equal(permit(f, "192.0.2.50:7000"), 441);
    strcpy(f->user, keep_user);
    memcpy(f->key, keep_key, 16);

    /* A Refresh without LIFETIME gets the default. */
    size_t n_alloc, n_perm, n_chan;
    av_alloc_counts(av_turn_table(f->t), &n_alloc, &n_perm, &n_chan);
    assert_int_equal(n_alloc, 1);
    assert_int_equal(n_perm, 1);
    assert_int_equal(n_chan, 1);
    assert_int_equal(request(f, STUN_REFRESH, NULL, NULL, true), 0);
    assert_int_equal(stun_attr_u32(&f->resp, stun_msg_find(&f->resp, STUN_A_LIFETIME), &life), 0);
    assert_int_equal(life, 600);
}

static void add_lifetime(struct stun_builder *b, void *arg)
{
    stun_build_u32(b, STUN_A_LIFETIME, (uint32_t)(uintptr_t)arg);
}

static void refresh_zero_deletes_then_437(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_static(f, "alice", "wonder");
    assert_int_equal(allocate(f), 0);
    assert_int_equal(request(f, STUN_REFRESH, add_lifetime, (void *)(uintptr_t)100000, true), 0);
    uint32_t life;
    assert_int_equal(stun_attr_u32(&f->resp, stun_msg_find(&f->resp, STUN_A_LIFETIME), &life), 0);
    assert_int_equal(life, 3600);
    assert_int_equal(request(f, STUN_REFRESH, add_lifetime, (void *)0, true), 0);
    assert_int_equal(av_alloc_count(av_turn_table(f->t)), 0);
    assert_int_equal(f->io.open, 0);
    assert_int_equal(request(f, STUN_REFRESH, NULL, NULL, true), 437);
    assert_int_equal(permit(f, "192.0.2.50:1"), 437);
}

static void error_438_stale_nonce(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_static(f, "alice", "wonder");
    f->now_s += 601;
    assert_int_equal(allocate(f), 438);
    /* The 438 brings a fresh nonce that works. */
    assert_int_equal(allocate(f), 0);
    /* A nonce made for another client IP is stale for this one. */
    addr_parse(&f->client, "198.51.100.8:40000", 0);
    assert_int_equal(allocate(f), 438);
    assert_int_equal(allocate(f), 0);
    /* A forged nonce. */
    strcpy(f->nonce, "AAAAAAAAAAAAAAAA");
    assert_int_equal(request(f, STUN_REFRESH, NULL, NULL, true), 438);
}

static void error_400_malformed_requests(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_static(f, "alice", "wonder");
    /* Allocate without REQUESTED-TRANSPORT. */
    assert_int_equal(request(f, STUN_ALLOCATE, NULL, NULL, true), 400);
    /* MESSAGE-INTEGRITY without USERNAME. */
    uint8_t buf[128];
    struct stun_builder b;
    stun_build_init(&b, buf, sizeof(buf), STUN_ALLOCATE, STUN_REQUEST, f->tid);
    add_udp(&b, NULL);
    stun_build_integrity(&b, f->key, 16);
    assert_int_equal(feed(f, buf, (size_t)stun_build_finish(&b)), 400);
    /* An unknown method. */
    stun_build_init(&b, buf, sizeof(buf), 0x0055, STUN_REQUEST, f->tid);
    assert_int_equal(feed(f, buf, (size_t)stun_build_finish(&b)), 400);
}

static void error_420_after_auth(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_static(f, "alice", "wonder");
    uint8_t buf[256];
    struct stun_builder b;
    stun_build_init(&b, buf, sizeof(buf), STUN_ALLOCATE, STUN_REQUEST, f->tid);
    add_udp(&b, NULL);
    stun_build_attr(&b, 0x0031, "zz", 2);
    stun_build_attr(&b, STUN_A_USERNAME, f->user, strlen(f->user));
    stun_build_attr(&b, STUN_A_REALM, "lab", 3);
    stun_build_attr(&b, STUN_A_NONCE, f->nonce, strlen(f->nonce));
    stun_build_integrity(&b, f->key, 16);
    assert_int_equal(feed(f, buf, (size_t)stun_build_finish(&b)), 420);
    assert_int_equal(stun_msg_check_integrity(&f->resp, f->key, 16), 0);
    const struct stun_attr *u = stun_msg_find(&f->resp, STUN_A_UNKNOWN_ATTRIBUTES);
    assert_non_null(u);
    assert_memory_equal(f->reply + u->off, "\x00\x31", 2);
}

static void add_family(struct stun_builder *b, void *arg)
{
    add_udp(b, NULL);
    stun_build_u32(b, STUN_A_REQUESTED_ADDRESS_FAMILY, (uint32_t)(uintptr_t)arg << 24);
}
static void add_additional(struct stun_builder *b, void *arg)
{
    add_udp(b, NULL);
    stun_build_u32(b, STUN_A_ADDITIONAL_ADDRESS_FAMILY, 2u << 24);
}

static void error_440_442_families_and_transport(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_static(f, "alice", "wonder");
    assert_int_equal(request(f, STUN_ALLOCATE, add_udp, (void *)132, true), 442);  /* SCTP */
    assert_int_equal(request(f, STUN_ALLOCATE, add_family, (void *)2, true), 440); /* no v6 relay */
    assert_int_equal(request(f, STUN_ALLOCATE, add_family, (void *)7, true), 440);
    /* ADDITIONAL-ADDRESS-FAMILY without a v6 relay: IPv4 only, ADDRESS-ERROR-CODE 440. */
    assert_int_equal(request(f, STUN_ALLOCATE, add_additional, NULL, true), 0);
    const struct stun_attr *ae = stun_msg_find(&f->resp, STUN_A_ADDRESS_ERROR_CODE);
    assert_non_null(ae);
    assert_memory_equal(f->reply + ae->off, "\x02\x00\x04\x28", 4);
    /* 443 for an IPv6 peer on an IPv4-only allocation. */
    assert_int_equal(permit(f, "[2001:db8::1]:5"), 443);
}

static void dual_stack_allocation(void **st)
{
    struct fx *f = *st;
    f->cfg.have_v6 = true;
    challenge(f);
    use_static(f, "alice", "wonder");
    assert_int_equal(request(f, STUN_ALLOCATE, add_additional, NULL, true), 0);
    int n = 0;
    for (unsigned i = 0; i < f->resp.n_attrs; i++)
        n += f->resp.attrs[i].type == STUN_A_XOR_RELAYED_ADDRESS;
    assert_int_equal(n, 2);
    assert_int_equal(permit(f, "[2001:db8::1]:5"), 0);
    f->client.u.in4.sin_port = htons(40001);
    challenge(f);
    assert_int_equal(request(f, STUN_ALLOCATE, add_family, (void *)2, true), 0);
    struct addr r;
    assert_int_equal(
        stun_attr_xaddr(&f->resp, stun_msg_find(&f->resp, STUN_A_XOR_RELAYED_ADDRESS), &r), 0);
    assert_int_equal(addr_family(&r), AF_INET6);
}

static void error_403_enterprise_rule(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_static(f, "alice", "wonder");
    f->side = AV_SIDE_EXTERNAL;
    assert_int_equal(allocate(f), 0);
    static const char *const denied[] = {"127.0.0.1:80",   "10.1.2.3:5000", "127.0.0.13:50001",
                                         "203.0.113.13:1", "169.254.1.1:9", "224.0.0.1:9",
                                         "0.0.0.0:9",      "[::1]:9",       "[::ffff:127.0.0.1]:9",
                                         "[ff02::1]:9",    "[fe80::1]:9",   "255.255.255.255:9"};
    f->cfg.have_v6 = true;
    for (size_t i = 0; i < ARRAY_SIZE(denied); i++) {
        int code = permit(f, denied[i]);
        if (strchr(denied[i], 0x5b))
            assert_true(code == 403 || code == 443);
        else
            assert_int_equal(code, 403);
    }
    struct bind_arg ba = {0x4000, "10.9.9.9:1"};
    assert_int_equal(request(f, STUN_CHANNEL_BIND, add_bind, &ba, true), 403);
    assert_int_equal(av_alloc_count(av_turn_table(f->t)), 1);
    assert_true(av_turn_stats(f->t)->denied[AV_DENY_LOOPBACK] >= 1);
    assert_true(av_turn_stats(f->t)->denied[AV_DENY_INTERNAL_NET] >= 2);
    /* A public peer is fine, and the allocation keeps serving after the refusals. */
    assert_int_equal(permit(f, "192.0.2.1:9"), 0);

    /* Lab exception: allow_peers lets loopback through, never own addresses or internal nets. */
    struct cidr allow;
    cidr_parse(&allow, "127.0.0.0/8");
    f->cfg.allow_peers = &allow;
    f->cfg.n_allow_peers = 1;
    assert_int_equal(permit(f, "127.0.0.1:80"), 0);
    assert_int_equal(permit(f, "127.0.0.13:50001"), 403);
    f->cfg.n_allow_peers = 0;

    /* An internal user's allocation may admit anyone, including the external relay. */
    f->side = AV_SIDE_INTERNAL;
    f->client.u.in4.sin_port = htons(40002);
    assert_int_equal(allocate(f), 0);
    assert_int_equal(permit(f, "127.0.0.13:50000"), 0);
    assert_int_equal(permit(f, "10.1.2.3:5000"), 0);
    assert_int_equal(permit(f, "224.0.0.1:9"), 403);
}

static void error_486_508_quotas(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_static(f, "alice", "wonder");
    for (int i = 0; i < 3; i++) {
        f->client.u.in4.sin_port = htons((uint16_t)(41000 + i));
        assert_int_equal(allocate(f), 0);
    }
    f->client.u.in4.sin_port = htons(41010);
    assert_int_equal(allocate(f), 486);
    assert_int_equal(av_turn_stats(f->t)->quota_user, 1);
    /* Other users still get allocations until the total quota (5). */
    use_rest(f, NOW_S + 60, "bob", "secret1");
    assert_int_equal(allocate(f), 0);
    f->client.u.in4.sin_port = htons(41011);
    assert_int_equal(allocate(f), 0);
    f->client.u.in4.sin_port = htons(41012);
    assert_int_equal(allocate(f), 508);
    assert_int_equal(av_turn_stats(f->t)->quota_total, 1);
    /* After one is deleted, there is room again. */
    f->client.u.in4.sin_port = htons(41011);
    assert_int_equal(request(f, STUN_REFRESH, add_lifetime, (void *)0, true), 0);
    f->client.u.in4.sin_port = htons(41012);
    assert_int_equal(allocate(f), 0);
}

static void error_508_port_range_exhausted(void **st)
{
    struct fx *f = *st;
    f->cfg.user_quota = 0;
    f->cfg.total_quota = 0;
    f->io.max_port = 50001;
    challenge(f);
    use_static(f, "alice", "wonder");
    for (int i = 0; i < 2; i++) {
        f->client.u.in4.sin_port = htons((uint16_t)(42000 + i));
        assert_int_equal(allocate(f), 0);
    }
    f->client.u.in4.sin_port = htons(42002);
    assert_int_equal(allocate(f), 508);
    assert_int_equal(av_alloc_count(av_turn_table(f->t)), 2);
    assert_int_equal(f->sh.allocs, 2);
}

static void add_even_port(struct stun_builder *b, void *arg)
{
    add_udp(b, NULL);
    uint8_t r = arg ? 0x80 : 0;
    stun_build_attr(b, STUN_A_EVEN_PORT, &r, 1);
}
static void add_token(struct stun_builder *b, void *arg)
{
    add_udp(b, NULL);
    stun_build_attr(b, STUN_A_RESERVATION_TOKEN, arg, 8);
}
static void add_token_and_even(struct stun_builder *b, void *arg)
{
    add_token(b, arg);
    uint8_t r = 0;
    stun_build_attr(b, STUN_A_EVEN_PORT, &r, 1);
}

static void even_port_and_reservation_token(void **st)
{
    struct fx *f = *st;
    f->io.next_port = 50001;
    challenge(f);
    use_static(f, "alice", "wonder");
    assert_int_equal(request(f, STUN_ALLOCATE, add_even_port, (void *)1, true), 0);
    struct addr r;
    assert_int_equal(
        stun_attr_xaddr(&f->resp, stun_msg_find(&f->resp, STUN_A_XOR_RELAYED_ADDRESS), &r), 0);
    assert_int_equal(addr_port(&r), 50002);
    const struct stun_attr *t = stun_msg_find(&f->resp, STUN_A_RESERVATION_TOKEN);
    assert_non_null(t);
    uint8_t token[8];
    memcpy(token, f->reply + t->off, 8);
    assert_int_equal(f->io.reserved, 1);
    /* A token together with EVEN-PORT is a bad request. */
    f->client.u.in4.sin_port = htons(40001);
    assert_int_equal(request(f, STUN_ALLOCATE, add_token_and_even, token, true), 400);
    /* Another client redeems it and gets port + 1. */
    assert_int_equal(request(f, STUN_ALLOCATE, add_token, token, true), 0);
    assert_int_equal(
        stun_attr_xaddr(&f->resp, stun_msg_find(&f->resp, STUN_A_XOR_RELAYED_ADDRESS), &r), 0);
    assert_int_equal(addr_port(&r), 50003);
    /* A token used twice (or unknown): 508. */
    f->client.u.in4.sin_port = htons(40002);
    assert_int_equal(request(f, STUN_ALLOCATE, add_token, token, true), 508);
    /* An unredeemed reservation is released after 30 s. */
    f->client.u.in4.sin_port = htons(40003);
    assert_int_equal(request(f, STUN_ALLOCATE, add_even_port, (void *)1, true), 0);
    assert_int_equal(f->io.reserved, 1);
    f->now_ms += 31000;
    av_turn_sweep(f->t, f->now_ms);
    assert_int_equal(f->io.reserved, 0);
}

/* A key kept from an earlier request is never used once the realm changed (a reload): the
 * client's key under the old realm stops verifying, as it would without the cache. */
static void rest_key_cache_follows_a_realm_change(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_rest(f, NOW_S + 600, "carol", "secret1");
    assert_int_equal(allocate(f), 0);
    assert_int_equal(permit(f, "192.0.2.1:1"), 0); /* from the kept key */
    struct av_turn_cfg changed = f->cfg;
    changed.realm = "other";
    av_turn_set_cfg(f->t, &changed);
    assert_int_equal(permit(f, "192.0.2.2:1"), 401);
    av_turn_set_cfg(f->t, &f->cfg);
    assert_int_equal(permit(f, "192.0.2.3:1"), 0);
}

static void rest_credentials_rotate_and_expire(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_rest(f, NOW_S + 600, "carol", "secret1");
    assert_int_equal(allocate(f), 0);
    /* Rotation: secret1 becomes previous and still verifies; secret2 verifies too. */
    assert_int_equal(av_shared_set_secret(&f->sh, "k2", "secret2", 7, 0), 0);
    assert_int_equal(permit(f, "192.0.2.1:1"), 0);
    f->client.u.in4.sin_port = htons(40001);
    use_rest(f, NOW_S + 600, "carol", "secret2");
    assert_int_equal(allocate(f), 0);
    /* After a second rotation, secret1 is gone. */
    assert_int_equal(av_shared_set_secret(&f->sh, "k3", "secret3", 7, 0), 0);
    f->client.u.in4.sin_port = htons(40002);
    use_rest(f, NOW_S + 600, "carol", "secret1");
    assert_int_equal(allocate(f), 401);
    /* An expired REST username: 401. */
    use_rest(f, NOW_S - 1, "carol", "secret3");
    assert_int_equal(allocate(f), 401);
    assert_int_equal(av_turn_stats(f->t)->auth_fail[AV_AUTH_EXPIRED], 1);
}

static void expiry_of_permissions_channels_allocations(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_static(f, "alice", "wonder");
    assert_int_equal(allocate(f), 0);
    struct bind_arg ba = {0x4005, "192.0.2.50:7000"};
    assert_int_equal(request(f, STUN_CHANNEL_BIND, add_bind, &ba, true), 0);
    size_t na, np, nc;
    /* Permissions last 300 s: the channel stays but relays nothing without one. */
    f->now_ms += 301000;
    av_turn_sweep(f->t, f->now_ms);
    av_alloc_counts(av_turn_table(f->t), &na, &np, &nc);
    assert_int_equal(na, 1);
    assert_int_equal(np, 0);
    assert_int_equal(nc, 1);
    uint8_t cd[8] = {0x40, 0x05, 0x00, 0x03, 'a', 'b', 'c', 0};
    assert_int_equal(feed(f, cd, 8), -1);
    assert_null(f->out.relay_alloc);
    /* Channels last 600 s, allocations 600 s by default. */
    f->now_ms += 300000;
    av_turn_sweep(f->t, f->now_ms);
    av_alloc_counts(av_turn_table(f->t), &na, &np, &nc);
    assert_int_equal(na, 0);
    assert_int_equal(nc, 0);
    assert_int_equal(f->io.open, 0);
}

static void unauthenticated_rate_limit(void **st)
{
    struct fx *f = *st;
    assert_int_equal(av_turn_set_unauth_limit(f->t, 1, 3), 0);
    int answered = 0;
    for (int i = 0; i < 10; i++)
        answered += request(f, STUN_BINDING, NULL, NULL, false) == 0;
    assert_int_equal(answered, 3);
    assert_int_equal(av_turn_stats(f->t)->unauth_limited, 7);
}

/* REQUESTED-TRANSPORT UDP and a SOFTWARE attribute of (intptr_t)arg bytes: a padded request. */
static void add_udp_padded(struct stun_builder *b, void *arg)
{
    static const char pad[128] = "padded client";
    add_udp(b, NULL);
    stun_build_attr(b, STUN_A_SOFTWARE, pad, (size_t)(intptr_t)arg);
}

static void strict_amplification_drops_small_unauthenticated_udp(void **st)
{
    struct fx *f = *st;
    f->cfg.strict_amplification = true;
    /* A 36-byte Allocate: its 401 (56 bytes without FINGERPRINT) is larger. */
    assert_int_equal(request(f, STUN_ALLOCATE, add_udp, NULL, false), -1);
    assert_int_equal(av_turn_stats(f->t)->amplification_dropped, 1);
    /* The retransmission: 72 bytes sent in all now cover it. */
    assert_int_equal(request(f, STUN_ALLOCATE, add_udp, NULL, false), 401);
    assert_int_equal(f->out.reply_len, 56);
    assert_int_equal(f->resp.fp_off, 0);
    /* Whatever a source sends, it never gets back more than it sent. */
    addr_parse(&f->client, "198.51.100.8:40000", 0);
    size_t sent = 0, got = 0, answered = 0;
    for (int i = 0; i < 20; i++) {
        sent += 28; /* a Binding with FINGERPRINT */
        if (request(f, STUN_BINDING, NULL, NULL, false) == 0) {
            got += f->out.reply_len;
            answered++;
        }
        assert_true(got <= sent);
    }
    assert_true(answered >= 10);
    assert_int_equal(request(f, STUN_ALLOCATE, add_udp_padded, (void *)64, false), 401);
    assert_true(f->resp.fp_off != 0); /* room for it */
    assert_int_equal(request(f, STUN_BINDING, add_udp_padded, (void *)16, false), 0);
    /* A request carrying a nonce made for its address proves it receives there. */
    addr_parse(&f->client, "198.51.100.9:40000", 0);
    use_static(f, "alice", "wrong");
    uint64_t dropped = av_turn_stats(f->t)->amplification_dropped;
    assert_int_equal(request(f, STUN_ALLOCATE, add_udp_padded, (void *)64, false), 401);
    assert_int_equal(request(f, STUN_ALLOCATE, add_udp, NULL, true), 401);
    assert_int_equal(av_turn_stats(f->t)->amplification_dropped, dropped);
    f->transport = AV_TRANSPORT_TCP; /* a stream source cannot be spoofed */
    assert_int_equal(request(f, STUN_ALLOCATE, add_udp, NULL, false), 401);
    f->transport = AV_TRANSPORT_UDP;
    f->cfg.strict_amplification = false;
    addr_parse(&f->client, "198.51.100.10:40000", 0);
    assert_int_equal(request(f, STUN_ALLOCATE, add_udp, NULL, false), 401);
    assert_int_equal(av_turn_stats(f->t)->amplification_dropped, dropped);
}

/* Several XOR-PEER-ADDRESS in one CreatePermission: n peers 192.0.2.(first..first+n-1). */
struct peers_arg {
    int first, n;
};
static void add_peers(struct stun_builder *b, void *arg)
{
    struct peers_arg *pa = arg;
    for (int i = 0; i < pa->n; i++) {
        char s[32];
        snprintf(s, sizeof(s), "192.0.2.%d:9", pa->first + i);
        add_peer(b, s);
    }
}

static void revoked_user_refused_and_allocations_ended(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_rest(f, NOW_S + 600, "mallory", "secret1");
    assert_int_equal(allocate(f), 0);
    assert_int_equal(av_turn_enforce(f->t, f->now_s), 0); /* nothing revoked yet */
    assert_int_equal(av_shared_revoke(&f->sh, "mallory", f->now_s + 60, 0, f->now_s), 0);
    assert_int_equal(av_turn_enforce(f->t, f->now_s), 1);
    assert_int_equal(f->sh.allocs, 0);
    assert_int_equal(av_turn_enforce(f->t, f->now_s), 0); /* once per change */
    f->client.u.in4.sin_port = htons(41000);
    assert_int_equal(allocate(f), 403); /* any credential of the user */
    assert_int_equal(av_turn_stats(f->t)->auth_fail[AV_AUTH_REVOKED], 1);
    use_rest(f, NOW_S + 600, "alice2", "secret1");
    assert_int_equal(allocate(f), 0); /* others are unaffected */
    assert_int_equal(request(f, STUN_REFRESH, add_lifetime, (void *)0, true), 0);
    /* reinstated: credentials minted before (expiring by NOW_S + 800) stay refused */
    assert_int_equal(av_shared_revoke(&f->sh, "mallory", 1, NOW_S + 800, f->now_s), 0);
    use_rest(f, NOW_S + 600, "mallory", "secret1");
    assert_int_equal(allocate(f), 403);
    use_rest(f, NOW_S + 900, "mallory", "secret1");
    assert_int_equal(allocate(f), 0);
    assert_int_equal(request(f, STUN_REFRESH, add_lifetime, (void *)0, true), 0);
}

static void per_allocation_limits(void **st)
{
    struct fx *f = *st;
    f->cfg.cred_quota = 2;
    f->cfg.user_quota = 0;
    f->cfg.total_quota = 0;
    f->cfg.new_peers_per_s = 5; /* bursts of 10 */
    f->cfg.pps_per_alloc = 4;
    f->cfg.max_perms = 64;
    challenge(f);
    use_rest(f, NOW_S + 600, "leaky", "secret1");
    for (int i = 0; i < 2; i++) {
        f->client.u.in4.sin_port = htons((uint16_t)(42000 + i));
        assert_int_equal(allocate(f), 0);
    }
    f->client.u.in4.sin_port = htons(42002);
    assert_int_equal(allocate(f), 486); /* a third on the same credential */
    assert_int_equal(av_turn_stats(f->t)->quota_cred, 1);
    use_rest(f, NOW_S + 601, "leaky", "secret1"); /* another credential of the user */
    assert_int_equal(allocate(f), 0);
    /* new peers: a burst of 10, then 5 a second; peers already permitted are free */
    struct peers_arg scan = {1, 11}, ten = {1, 10}, one = {11, 1};
    assert_int_equal(request(f, STUN_CREATE_PERMISSION, add_peers, &scan, true), 508);
    assert_int_equal(av_turn_stats(f->t)->new_peers_limited, 1);
    assert_int_equal(request(f, STUN_CREATE_PERMISSION, add_peers, &ten, true), 0);
    assert_int_equal(request(f, STUN_CREATE_PERMISSION, add_peers, &ten, true), 0);
    assert_int_equal(request(f, STUN_CREATE_PERMISSION, add_peers, &one, true), 508);
    f->now_ms += 200; /* one more peer's worth */
    assert_int_equal(request(f, STUN_CREATE_PERMISSION, add_peers, &one, true), 0);
    /* packets: 4 a second, both directions */
    struct bind_arg ba = {0x4001, "192.0.2.1:9"};
    assert_int_equal(request(f, STUN_CHANNEL_BIND, add_bind, &ba, true), 0);
    uint8_t cd[8] = {0x40, 0x01, 0x00, 0x03, 'a', 'b', 'c', 0};
    int sent = 0;
    for (int i = 0; i < 10; i++) {
        feed(f, cd, 8);
        sent += f->out.relay_alloc != NULL;
    }
    assert_int_equal(sent, 4);
    assert_int_equal(av_turn_stats(f->t)->dropped_pkt_rate, 6);
    f->now_ms += 500; /* two packets' worth */
    sent = 0;
    for (int i = 0; i < 5; i++) {
        feed(f, cd, 8);
        sent += f->out.relay_alloc != NULL;
    }
    assert_int_equal(sent, 2);
}

static void draining_redirects_to_an_alternate(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_static(f, "alice", "wonder");
    f->sh.draining = 1;
    assert_int_equal(allocate(f), 508); /* no peer known */
    struct av_alternates alt;
    memset(&alt, 0, sizeof(alt));
    addr_parse(&alt.a[AV_SIDE_EXTERNAL][0], "192.0.2.99:3478", 0);
    av_shared_set_alternates(&f->sh, &alt);
    assert_int_equal(allocate(f), 300);
    assert_int_equal(stun_msg_check_integrity(&f->resp, f->key, 16), 0);
    const struct stun_attr *as = stun_msg_find(&f->resp, STUN_A_ALTERNATE_SERVER);
    assert_non_null(as);
    assert_int_equal(as->len, 8);
    const uint8_t *v = f->reply + as->off;
    assert_int_equal(v[1], 1);
    assert_int_equal(v[2] << 8 | v[3], 3478);
    assert_int_equal(v[4], 192);
    assert_int_equal(v[7], 99);
    assert_int_equal(av_turn_stats(f->t)->redirected, 1);
    f->transport = AV_TRANSPORT_TCP; /* no TCP alternate: 508 */
    assert_int_equal(allocate(f), 508);
    f->sh.draining = 0;
}

static void bandwidth_cap_per_allocation(void **st)
{
    struct fx *f = *st;
    f->cfg.bps_per_alloc = 1000;
    challenge(f);
    use_static(f, "alice", "wonder");
    assert_int_equal(allocate(f), 0);
    struct bind_arg ba = {0x4001, "192.0.2.50:7000"};
    assert_int_equal(request(f, STUN_CHANNEL_BIND, add_bind, &ba, true), 0);
    uint8_t cd[4 + 400] = {0x40, 0x01, 0x01, 0x90};
    int sent = 0;
    for (int i = 0; i < 5; i++) {
        feed(f, cd, sizeof(cd));
        sent += f->out.relay_alloc != NULL;
    }
    assert_int_equal(sent, 2);
    f->now_ms += 1000;
    feed(f, cd, sizeof(cd));
    assert_non_null(f->out.relay_alloc);
}

/* Feeds n 400-byte ChannelData, alternately to the two workers from their clients; returns
 * how many were relayed. */
static int relay_alternately(struct fx *f, struct av_turn *w[2], const char *client[2], int n)
{
    uint8_t cd[4 + 400] = {0x40, 0x01, 0x01, 0x90};
    int sent = 0;
    for (int k = 0; k < n; k++) {
        f->t = w[k % 2];
        addr_parse(&f->client, client[k % 2], 0);
        feed(f, cd, sizeof(cd));
        sent += f->out.relay_alloc != NULL;
    }
    return sent;
}

/* bandwidth_per_user holds across workers: alice's allocations on two workers (two turns
 * over one av_shared) draw on one bucket of 1000 bytes a second, not 1000 each. */
static void bandwidth_cap_per_user_across_workers(void **st)
{
    struct fx *f = *st;
    f->cfg.bps_per_user = 1000;
    struct av_turn *w1 = f->t, *w2;
    struct av_relay_io io = {.open = fake_open,
                             .close = fake_close,
                             .release = fake_release,
                             .arg = &f->io,
                             .connect = fake_connect,
                             .conn_alloc = fake_conn_alloc};
    assert_int_equal(av_turn_create(&w2, &f->cfg, &f->sh, &io, NULL), 0);
    struct bind_arg ba = {0x4001, "192.0.2.50:7000"};
    struct av_turn *w[2] = {w1, w2};
    const char *client[2] = {"198.51.100.7:40000", "198.51.100.8:40000"};
    for (int i = 0; i < 2; i++) {
        f->t = w[i];
        addr_parse(&f->client, client[i], 0);
        challenge(f);
        use_static(f, "alice", "wonder");
        assert_int_equal(allocate(f), 0);
        assert_int_equal(request(f, STUN_CHANNEL_BIND, add_bind, &ba, true), 0);
    }
    /* 400-byte packets, alternately through each worker: the shared second's 1000 bytes
     * let two through in all (a bucket per worker would have let two through each). */
    assert_int_equal(relay_alternately(f, w, client, 10), 2);
    assert_int_equal(av_turn_stats(w1)->dropped_bandwidth + av_turn_stats(w2)->dropped_bandwidth,
                     8);
    /* A second later the bucket has refilled once for both together: over the two
     * seconds, the burst and one second of rate (2000 bytes) went, five packets in all
     * (the 200 bytes worker 1 leased but could not use go out now, so three this time). */
    f->now_ms += 1000;
    assert_int_equal(relay_alternately(f, w, client, 10), 3);
    f->t = w1;
    av_turn_destroy(w2);
}

/* ---- RFC 6062 ---- */

static void add_conn_id(struct stun_builder *b, void *arg)
{
    stun_build_u32(b, STUN_A_CONNECTION_ID, (uint32_t)(uintptr_t)arg);
}

/* A TCP allocation by alice over a TCP control connection, with a permission for peer. */
static struct av_alloc *tcp_allocation(struct fx *f, const char *peer)
{
    f->transport = AV_TRANSPORT_TCP;
    challenge(f);
    use_static(f, "alice", "wonder");
    assert_int_equal(request(f, STUN_ALLOCATE, add_udp, (void *)6, true), 0);
    struct av_alloc *a = av_alloc_find(av_turn_table(f->t), &f->client, 0, AV_TRANSPORT_TCP);
    assert_non_null(a);
    assert_int_equal(a->relay_transport, AV_TRANSPORT_TCP);
    if (peer)
        assert_int_equal(permit(f, peer), 0);
    return a;
}

static void tcp_allocate_needs_stream_client_and_no_udp_options(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_static(f, "alice", "wonder");
    assert_int_equal(request(f, STUN_ALLOCATE, add_udp, (void *)6, true),
                     400); /* over UDP: RFC 6062 §5.1 */
    f->transport = AV_TRANSPORT_TCP;
    f->cfg.tcp_relay = false;
    assert_int_equal(request(f, STUN_ALLOCATE, add_udp, (void *)6, true), 442); /* turned off */
    f->cfg.tcp_relay = true;
    uint8_t ev = 0;
    struct stun_builder b;
    uint8_t buf[256];
    stun_build_init(&b, buf, sizeof(buf), STUN_ALLOCATE, STUN_REQUEST, f->tid);
    add_udp(&b, (void *)6);
    stun_build_attr(&b, STUN_A_EVEN_PORT, &ev, 1);
    stun_build_attr(&b, STUN_A_USERNAME, f->user, strlen(f->user));
    stun_build_attr(&b, STUN_A_REALM, "lab", 3);
    stun_build_attr(&b, STUN_A_NONCE, f->nonce, strlen(f->nonce));
    stun_build_integrity(&b, f->key, 16);
    assert_int_equal(feed(f, buf, (size_t)stun_build_finish(&b)), 400); /* RFC 6062 5.1 */
    assert_int_equal(request(f, STUN_ALLOCATE, add_udp, (void *)6, true), 0);
    assert_int_equal(f->io.open, 1);
    /* No channels and no Send on a TCP allocation. */
    struct bind_arg ba = {0x4001, "192.0.2.50:7000"};
    assert_int_equal(request(f, STUN_CHANNEL_BIND, add_bind, &ba, true), 400);
    assert_int_equal(permit(f, "192.0.2.50"), 0);
    uint8_t ind[128];
    stun_build_init(&b, ind, sizeof(ind), STUN_SEND, STUN_INDICATION, f->tid);
    add_peer(&b, "192.0.2.50:7000");
    stun_build_attr(&b, STUN_A_DATA, "x", 1);
    feed(f, ind, (size_t)stun_build_finish(&b));
    assert_null(f->out.relay_alloc);
}

static void connect_checks_permission_and_rule_then_answers_later(void **st)
{
    struct fx *f = *st;
    f->cfg.allow_peers = NULL;
    tcp_allocation(f, "192.0.2.50");
    /* 403: no permission; 403: the enterprise rule (internal network, loopback, own). */
    assert_int_equal(request(f, STUN_CONNECT, add_peer, "192.0.2.51:80", true), 403);
    assert_int_equal(request(f, STUN_CONNECT, add_peer, "10.1.2.3:80", true), 403);
    assert_int_equal(request(f, STUN_CONNECT, add_peer, "127.0.0.1:80", true), 403);
    assert_int_equal(request(f, STUN_CONNECT, add_peer, "127.0.0.13:80", true), 403);
    assert_int_equal(av_turn_stats(f->t)->denied[AV_DENY_INTERNAL_NET], 1);
    assert_int_equal(av_turn_stats(f->t)->denied[AV_DENY_LOOPBACK], 1);
    assert_int_equal(av_turn_stats(f->t)->denied[AV_DENY_OWN_ADDRESS], 1);
    assert_int_equal(request(f, STUN_CONNECT, NULL, NULL, true), 400); /* no peer */
    assert_int_equal(f->io.connects, 0);
    /* Admitted: no answer now; the I/O layer answers once the peer is reached. */
    assert_int_equal(request(f, STUN_CONNECT, add_peer, "192.0.2.50:80", true), -1);
    assert_int_equal(f->io.connects, 1);
    struct addr want;
    addr_parse(&want, "192.0.2.50:80", 0);
    assert_true(addr_eq(&f->io.connect_peer, &want));
    uint8_t out[512];
    ssize_t n = av_turn_connect_answer(f->t, &f->io.connect_req, 0, 0xC0FFEE01u, out, sizeof(out));
    assert_true(n > 0);
    struct stun_msg m;
    assert_int_equal(stun_msg_parse(&m, out, (size_t)n), n);
    assert_int_equal(m.method, STUN_CONNECT);
    assert_int_equal(m.cls, STUN_SUCCESS);
    assert_memory_equal(m.tid, f->tid, 12);
    uint32_t id;
    assert_int_equal(stun_attr_u32(&m, stun_msg_find(&m, STUN_A_CONNECTION_ID), &id), 0);
    assert_int_equal(id, 0xC0FFEE01u);
    assert_int_equal(stun_msg_check_integrity(&m, f->key, 16), 0);
    assert_int_equal(stun_msg_check_fingerprint(&m), 0);
    n = av_turn_connect_answer(f->t, &f->io.connect_req, 447, 0, out, sizeof(out));
    assert_int_equal(stun_msg_parse(&m, out, (size_t)n), n);
    int code;
    assert_int_equal(stun_attr_error(&m, stun_msg_find(&m, STUN_A_ERROR_CODE), &code, NULL), 0);
    assert_int_equal(code, 447);
    assert_null(stun_msg_find(&m, STUN_A_CONNECTION_ID));
    /* What the I/O layer refuses at once. */
    f->io.connect_rc = -EEXIST;
    assert_int_equal(request(f, STUN_CONNECT, add_peer, "192.0.2.50:80", true), 446);
    f->io.connect_rc = -ECONNREFUSED;
    assert_int_equal(request(f, STUN_CONNECT, add_peer, "192.0.2.50:81", true), 447);
    f->io.connect_rc = -ENOSPC;
    assert_int_equal(request(f, STUN_CONNECT, add_peer, "192.0.2.50:82", true), 508);
}

static void connect_on_udp_allocation_is_400(void **st)
{
    struct fx *f = *st;
    challenge(f);
    use_static(f, "alice", "wonder");
    assert_int_equal(allocate(f), 0);
    assert_int_equal(permit(f, "192.0.2.50"), 0);
    assert_int_equal(request(f, STUN_CONNECT, add_peer, "192.0.2.50:80", true), 400);
    assert_int_equal(f->io.connects, 0);
}

static void connection_bind_owner_only_on_a_new_connection(void **st)
{
    struct fx *f = *st;
    struct av_alloc *a = tcp_allocation(f, "192.0.2.50");
    f->io.pending_id = 0x1234;
    f->io.pending_alloc = a;
    /* On the control connection itself: 400. */
    assert_int_equal(request(f, STUN_CONNECTION_BIND, add_conn_id, (void *)0x1234, true), 400);
    addr_parse(&f->client, "198.51.100.7:40001", 0); /* a new data connection */
    challenge(f);
    assert_int_equal(request(f, STUN_CONNECTION_BIND, add_conn_id, (void *)0x1235, true), 400);
    assert_int_equal(request(f, STUN_CONNECTION_BIND, NULL, NULL, true), 400);
    assert_int_equal(request(f, STUN_CONNECTION_BIND, add_conn_id, (void *)0x1234, false), 401);
    use_rest(f, NOW_S + 600, "mallory", "secret1"); /* valid credentials, another user */
    assert_int_equal(request(f, STUN_CONNECTION_BIND, add_conn_id, (void *)0x1234, true), 441);
    assert_int_equal(f->out.bind_id, 0);
    use_static(f, "alice", "wonder");
    assert_int_equal(request(f, STUN_CONNECTION_BIND, add_conn_id, (void *)0x1234, true), 0);
    assert_int_equal(f->out.bind_id, 0x1234);
    /* Over UDP there is no data connection to bind. */
    f->transport = AV_TRANSPORT_UDP;
    assert_int_equal(request(f, STUN_CONNECTION_BIND, add_conn_id, (void *)0x1234, true), 400);
}

static void connection_attempt_indication(void **st)
{
    struct fx *f = *st;
    struct addr peer;
    addr_parse(&peer, "192.0.2.50:4242", 0);
    uint8_t out[128];
    ssize_t n = av_turn_connection_attempt(f->t, &peer, 0xABCDEF01u, out, sizeof(out));
    assert_true(n > 0);
    assert_int_equal(out[0] << 8 | out[1], 0x001C); /* method 0x00C, class indication */
    struct stun_msg m;
    assert_int_equal(stun_msg_parse(&m, out, (size_t)n), n);
    assert_int_equal(m.method, STUN_CONNECTION_ATTEMPT);
    assert_int_equal(m.cls, STUN_INDICATION);
    struct addr got;
    assert_int_equal(stun_attr_xaddr(&m, stun_msg_find(&m, STUN_A_XOR_PEER_ADDRESS), &got), 0);
    assert_true(addr_eq(&got, &peer));
    uint32_t id;
    assert_int_equal(stun_attr_u32(&m, stun_msg_find(&m, STUN_A_CONNECTION_ID), &id), 0);
    assert_int_equal(id, 0xABCDEF01u);
    assert_int_equal(stun_msg_check_fingerprint(&m), 0);
    assert_int_equal(av_turn_connection_attempt(f->t, &peer, 1, out, 30), -ENOSPC);
}

static void bucket_charge_pauses_streams_for_the_debt(void **st)
{
    (void)st;
    struct av_bucket b = {1000, 1000, 1000.0, 0};
    assert_int_equal(av_bucket_charge(&b, 0, 600), 0);
    assert_int_equal(av_bucket_charge(&b, 0, 900), 501); /* 500 bytes of debt at 1000 B/s */
    assert_false(av_bucket_take(&b, 100, 1));
    assert_int_equal(av_bucket_charge(&b, 501, 0), 0);
    struct av_bucket none = {0};
    assert_int_equal(av_bucket_charge(&none, 0, 1 << 30), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(binding_answers_mapped_address, setup, teardown),
        cmocka_unit_test_setup_teardown(error_401_challenge_is_small, setup, teardown),
        cmocka_unit_test_setup_teardown(allocate_static_user_and_relay, setup, teardown),
        cmocka_unit_test_setup_teardown(refresh_zero_deletes_then_437, setup, teardown),
        cmocka_unit_test_setup_teardown(error_438_stale_nonce, setup, teardown),
        cmocka_unit_test_setup_teardown(error_400_malformed_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(error_420_after_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(error_440_442_families_and_transport, setup, teardown),
        cmocka_unit_test_setup_teardown(strict_amplification_drops_small_unauthenticated_udp, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(dual_stack_allocation, setup, teardown),
        cmocka_unit_test_setup_teardown(revoked_user_refused_and_allocations_ended, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(per_allocation_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(draining_redirects_to_an_alternate, setup, teardown),
        cmocka_unit_test_setup_teardown(error_403_enterprise_rule, setup, teardown),
        cmocka_unit_test_setup_teardown(error_486_508_quotas, setup, teardown),
        cmocka_unit_test_setup_teardown(error_508_port_range_exhausted, setup, teardown),
        cmocka_unit_test_setup_teardown(even_port_and_reservation_token, setup, teardown),
        cmocka_unit_test_setup_teardown(rest_credentials_rotate_and_expire, setup, teardown),
        cmocka_unit_test_setup_teardown(rest_key_cache_follows_a_realm_change, setup, teardown),
        cmocka_unit_test_setup_teardown(expiry_of_permissions_channels_allocations, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(unauthenticated_rate_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(bandwidth_cap_per_allocation, setup, teardown),
        cmocka_unit_test_setup_teardown(bandwidth_cap_per_user_across_workers, setup, teardown),
        cmocka_unit_test_setup_teardown(tcp_allocate_needs_stream_client_and_no_udp_options, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(connect_checks_permission_and_rule_then_answers_later,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(connect_on_udp_allocation_is_400, setup, teardown),
        cmocka_unit_test_setup_teardown(connection_bind_owner_only_on_a_new_connection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(connection_attempt_indication, setup, teardown),
        cmocka_unit_test(bucket_charge_pauses_streams_for_the_debt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
