/* av-probe: validates an av-edge deployment end to end with SRTP media.
 *
 * For each stream it makes an internal-side allocation (the internal user) and an
 * external-side allocation (the external user), admits the external user with the internal
 * user's CreatePermission + ChannelBind, and sends SRTP (AES-128-CM / HMAC-SHA1-80,
 * libsrtp2) both ways through the internal user's relayed address: external host ->
 * relay -> internal user, and back. Under the enterprise rule the external allocation may
 * not name the edge's own relay, so the media pair is external host <-> internal relay, as
 * ICE would pick. Every packet must arrive, authenticate and decrypt; it prints loss,
 * jitter (RFC 3550) and the one-way latency added by the relay.
 *
 *   av-probe --external HOST:PORT --internal HOST:PORT (--secret S | --user U --password P)
 *            [--streams 1] [--rate 50] [--seconds 5] [--size 160]
 *            [--external-user U --external-password P] [--external-netns NAME]
 *            [--permission-lifetime 300] [--channel-lifetime 600]
 * The external user uses the internal user's credentials unless given its own; with
 * --external-netns its sockets are made in that network namespace (/run/netns/NAME, needs
 * CAP_SYS_ADMIN), so one process can place the external allocation from behind a NAT.
 *
 * A probe runs as long as it is asked to: it refreshes each allocation at half the lifetime
 * the server granted, and each permission and channel binding at half of
 * --permission-lifetime (default 300 s) and --channel-lifetime (600 s), the RFC 8656
 * lifetimes, which the server does not announce. Refreshes go out between media packets
 * and their answers are picked out of the media; a 401 or 438 (stale nonce) is answered
 * with the new nonce, for refreshes and for the final release (LIFETIME 0) alike.
 * Exit status: 0 when nothing was lost or failed authentication, 1 otherwise, 2 on setup errors. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <srtp2/srtp.h>

#include "av-edge/stun.h"
#include "common/crypto.h"
#include "common/token.h"

#define CHANNEL 0x4001

struct opts {
    struct addr ext, in;
    const char *secret, *user, *password;
    const char *ext_user, *ext_password; /* the external user's own credentials, if given */
    const char *ext_netns;               /* network namespace of the external sockets */
    int streams, rate, size;
    double seconds;
    double perm_lifetime, chan_lifetime; /* what the server grants (it does not say) */
};

/* A refresh in flight (at most one per client: answers are matched by transaction id). */
enum job { JOB_NONE, JOB_ALLOCATION, JOB_PERMISSION, JOB_CHANNEL, JOB_COUNT };

/* One TURN client on its own UDP socket. */
struct client {
    int fd;
    struct addr server, relay, mapped;
    char user[128], pass[64], realm[128], nonce[128];
    uint8_t key[16];
    uint32_t lifetime; /* allocation lifetime the server granted (s) */
    bool has_peer;     /* permission and channel for peer (the internal user) */
    struct addr peer;
    double due[JOB_COUNT]; /* when each refresh is due (monotonic s) */
    enum job job;          /* in flight */
    uint8_t job_tid[12];
    double job_sent;
    int job_tries, job_challenges;
    uint64_t refreshes, refresh_failures;
};

/* Direction statistics. */
struct dir {
    srtp_t tx, rx;
    uint16_t seq;
    uint32_t ssrc;
    uint64_t sent, received, auth_fail, bad;
    double lat_sum, lat_max, jitter, last_transit;
    bool have_transit;
};

struct stream {
    struct client ext, in;
    struct dir out_in; /* external -> internal */
    struct dir in_out; /* internal -> external */
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "av-probe: %s\n", what);
    exit(2);
}

/* A UDP socket in the named network namespace (/run/netns/NAME, as `ip netns` makes them),
 * or in ours when netns is NULL: a socket stays in the namespace it was made in, so one
 * process can be the external user (behind its NAT) and the internal user at once. */
static int socket_in(const char *netns, int family)
{
    if (!netns)
        return socket(family, SOCK_DGRAM, 0);
    char path[256];
    snprintf(path, sizeof(path), "/run/netns/%s", netns);
    int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    int target = open(path, O_RDONLY | O_CLOEXEC);
    int fd = -1, err = 0;
    if (self < 0 || target < 0 || setns(target, CLONE_NEWNET) != 0) {
        err = errno;
    } else {
        fd = socket(family, SOCK_DGRAM, 0);
        err = errno;
        if (setns(self, CLONE_NEWNET) != 0)
            die("cannot return to the original network namespace");
    }
    if (self >= 0)
        close(self);
    if (target >= 0)
        close(target);
    errno = err;
    return fd;
}

static int client_open(struct client *c, const struct addr *server, const struct opts *o, int id,
                       bool external)
{
    c->server = *server;
    c->fd = socket_in(external ? o->ext_netns : NULL, addr_family(server));
    if (c->fd < 0)
        return -errno;
    int sz = 1 << 20;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    if (external && o->ext_user) {
        snprintf(c->user, sizeof(c->user), "%s", o->ext_user);
        snprintf(c->pass, sizeof(c->pass), "%s", o->ext_password);
    } else if (o->secret) {
        char who[32];
        snprintf(who, sizeof(who), "probe%d", id);
        turn_rest_username(c->user, sizeof(c->user), time(NULL) + 3600, who);
        turn_rest_password(o->secret, strlen(o->secret), c->user, c->pass, sizeof(c->pass));
    } else {
        snprintf(c->user, sizeof(c->user), "%s", o->user);
        snprintf(c->pass, sizeof(c->pass), "%s", o->password);
    }
    return 0;
}

/* Builds and sends one request (authenticated once the client holds a nonce).
 * lifetime < 0: no LIFETIME attribute. */
static void send_request(struct client *c, uint16_t method, const struct addr *peer, int channel,
                         long lifetime, const uint8_t tid[12])
{
    uint8_t buf[512];
    struct stun_builder b;
    stun_build_init(&b, buf, sizeof(buf), method, STUN_REQUEST, tid);
    if (method == STUN_ALLOCATE)
        stun_build_u32(&b, STUN_A_REQUESTED_TRANSPORT, 17u << 24);
    if (lifetime >= 0)
        stun_build_u32(&b, STUN_A_LIFETIME, (uint32_t)lifetime);
    if (channel)
        stun_build_u32(&b, STUN_A_CHANNEL_NUMBER, (uint32_t)channel << 16);
    if (peer)
        stun_build_xaddr(&b, STUN_A_XOR_PEER_ADDRESS, peer);
    if (c->nonce[0]) {
        stun_build_attr(&b, STUN_A_USERNAME, c->user, strlen(c->user));
        stun_build_attr(&b, STUN_A_REALM, c->realm, strlen(c->realm));
        stun_build_attr(&b, STUN_A_NONCE, c->nonce, strlen(c->nonce));
        stun_build_integrity(&b, c->key, 16);
    } else {
        /* Room for the 401 in the request itself: a server that answers nothing larger than
         * a request over UDP (amplification) challenges us at once. */
        static const char pad[40] = "av-probe: padded so its 401 fits";
        stun_build_attr(&b, STUN_A_SOFTWARE, pad, sizeof(pad));
    }
    ssize_t n = stun_build_finish(&b);
    if (n > 0)
        sendto(c->fd, buf, (size_t)n, 0, &c->server.u.sa, addr_len(&c->server));
}

/* The error code of an answer (0 = success). */
static int answer_code(const struct stun_msg *m)
{
    int code = 0;
    if (m->cls == STUN_ERROR) {
        const struct stun_attr *e = stun_msg_find(m, STUN_A_ERROR_CODE);
        if (!e || stun_attr_error(m, e, &code, NULL))
            code = 500;
    }
    return code;
}

/* A 401 or 438 carries the REALM and NONCE to use from now on: takes them (and the key
 * they make). false when the answer lacks them. */
static bool take_challenge(struct client *c, const struct stun_msg *m, const uint8_t *resp)
{
    const struct stun_attr *ra = stun_msg_find(m, STUN_A_REALM);
    const struct stun_attr *na = stun_msg_find(m, STUN_A_NONCE);
    if (!ra || !na)
        return false;
    snprintf(c->realm, sizeof(c->realm), "%.*s", ra->len, (const char *)resp + ra->off);
    snprintf(c->nonce, sizeof(c->nonce), "%.*s", na->len, (const char *)resp + na->off);
    stun_key_long_term(slice_str(c->user), slice_str(c->realm), slice_str(c->pass), c->key);
    return true;
}

/* Sends a request and waits for its answer (setup and release: no media flows meanwhile);
 * takes REALM/NONCE from a 401 or 438 and sends again. Each try waits wait_s; after
 * `silent` tries without any answer it gives up. Returns the error code (0 = success,
 * -1 = no answer) and leaves the answer in resp. */
static int transact(struct client *c, uint16_t method, const struct addr *peer, int channel,
                    long lifetime, double wait_s, int silent, uint8_t *resp, size_t cap,
                    struct stun_msg *m)
{
    for (int attempt = 0, quiet = 0; attempt < 4 && quiet < silent; attempt++) {
        uint8_t tid[12];
        crypto_random(tid, sizeof(tid));
        send_request(c, method, peer, channel, lifetime, tid);
        struct pollfd p = {c->fd, POLLIN, 0};
        double deadline = now_s() + wait_s;
        int code = -1;
        while (now_s() < deadline && poll(&p, 1, 100) >= 0) {
            if (!(p.revents & POLLIN))
                continue;
            ssize_t r = recv(c->fd, resp, cap, 0);
            if (r < 20 || stun_msg_parse(m, resp, (size_t)r) < 0 || memcmp(m->tid, tid, 12))
                continue;
            code = answer_code(m);
            break;
        }
        if (code == 401 || code == 438) {
            if ((code == 401 && c->nonce[0] && attempt > 1) || !take_challenge(c, m, resp))
                return code;
            continue;
        }
        if (code >= 0)
            return code;
        quiet++;
    }
    return -1;
}

static int client_allocate(struct client *c)
{
    uint8_t resp[1500];
    struct stun_msg m;
    int code = transact(c, STUN_ALLOCATE, NULL, 0, -1, 1.0, 4, resp, sizeof(resp), &m);
    if (code)
        return code;
    const struct stun_attr *r = stun_msg_find(&m, STUN_A_XOR_RELAYED_ADDRESS);
    const struct stun_attr *x = stun_msg_find(&m, STUN_A_XOR_MAPPED_ADDRESS);
    if (!r || !x || stun_attr_xaddr(&m, r, &c->relay) || stun_attr_xaddr(&m, x, &c->mapped))
        return 500;
    const struct stun_attr *l = stun_msg_find(&m, STUN_A_LIFETIME);
    if (!l || stun_attr_u32(&m, l, &c->lifetime) || c->lifetime == 0)
        c->lifetime = 600; /* RFC 8656's default */
    c->due[JOB_ALLOCATION] = now_s() + c->lifetime / 2.0;
    return 0;
}

/* Releases the allocation (Refresh with LIFETIME 0; a stale nonce is answered, so the
 * allocation does not outlive the probe). Returns true when the server confirmed. */
static bool client_release(struct client *c)
{
    uint8_t resp[1500];
    struct stun_msg m;
    /* A server that does not answer at all is not waited for: the probe is ending. */
    int code = transact(c, STUN_REFRESH, NULL, 0, 0, 0.3, 1, resp, sizeof(resp), &m);
    close(c->fd);
    return code == 0;
}

/* ---- refreshes while media flows ---------------------------------------------------- */

static const char *const job_name[JOB_COUNT] = {"", "allocation", "permission", "channel"};

/* The next refresh of a job at half its lifetime: a lost answer or two still leave time. */
static void job_schedule(struct client *c, enum job j, double now, const struct opts *o)
{
    double life = j == JOB_ALLOCATION   ? (double)c->lifetime
                  : j == JOB_PERMISSION ? o->perm_lifetime
                                        : o->chan_lifetime;
    c->due[j] = now + life / 2.0;
}

static void job_send(struct client *c)
{
    crypto_random(c->job_tid, sizeof(c->job_tid));
    c->job_sent = now_s();
    switch (c->job) {
    case JOB_ALLOCATION:
        send_request(c, STUN_REFRESH, NULL, 0, c->lifetime, c->job_tid);
        break;
    case JOB_PERMISSION:
        send_request(c, STUN_CREATE_PERMISSION, &c->peer, 0, -1, c->job_tid);
        break;
    case JOB_CHANNEL:
        send_request(c, STUN_CHANNEL_BIND, &c->peer, CHANNEL, -1, c->job_tid);
        break;
    default:
        break;
    }
}

/* A refresh that failed is tried again in a second: its lifetime is not over yet. */
static void job_failed(struct client *c, const char *why, int code)
{
    c->refresh_failures++;
    fprintf(stderr, "av-probe: %s refresh failed: %s %d\n", job_name[c->job], why, code);
    c->due[c->job] = now_s() + 1.0;
    c->job = JOB_NONE;
}

/* Starts the refresh that is due (one at a time), or sends again one that got no answer
 * within 500 ms (a fixed interval suits a probe on a known path). */
static void client_tick(struct client *c, double now)
{
    if (c->job != JOB_NONE) {
        if (now - c->job_sent < 0.5)
            return;
        if (++c->job_tries >= 7) {
            job_failed(c, "no answer", 0);
            return;
        }
        job_send(c);
        return;
    }
    for (int j = JOB_ALLOCATION; j < JOB_COUNT; j++) {
        if ((j != JOB_ALLOCATION && !c->has_peer) || now < c->due[j])
            continue;
        c->job = (enum job)j;
        c->job_tries = 0;
        c->job_challenges = 0;
        job_send(c);
        return;
    }
}

/* A STUN answer that arrived between media packets: the in-flight refresh's, or stale. */
static void client_answer(struct client *c, const uint8_t *p, size_t len, const struct opts *o)
{
    struct stun_msg m;
    if (c->job == JOB_NONE || stun_msg_parse(&m, p, len) < 0 || memcmp(m.tid, c->job_tid, 12))
        return;
    int code = answer_code(&m);
    if ((code == 401 || code == 438) && c->job_challenges < 3 && take_challenge(c, &m, p)) {
        c->job_challenges++;
        job_send(c); /* the same refresh with the new nonce */
        return;
    }
    if (code) {
        job_failed(c, "error", code);
        return;
    }
    if (c->job == JOB_ALLOCATION) {
        uint32_t life;
        const struct stun_attr *l = stun_msg_find(&m, STUN_A_LIFETIME);
        if (l && !stun_attr_u32(&m, l, &life) && life)
            c->lifetime = life;
    }
    c->refreshes++;
    job_schedule(c, c->job, now_s(), o);
    c->job = JOB_NONE;
}

static void srtp_pair(struct dir *d, uint32_t ssrc)
{
    uint8_t key[30];
    crypto_random(key, sizeof(key));
    srtp_policy_t p;
    memset(&p, 0, sizeof(p));
    srtp_crypto_policy_set_rtp_default(&p.rtp);
    srtp_crypto_policy_set_rtcp_default(&p.rtcp);
    p.key = key;
    p.window_size = 1024;
    p.ssrc.type = ssrc_specific;
    p.ssrc.value = ssrc;
    if (srtp_create(&d->tx, &p) != srtp_err_status_ok ||
        srtp_create(&d->rx, &p) != srtp_err_status_ok)
        die("srtp_create failed");
    d->ssrc = ssrc;
}

/* Builds and protects the next RTP packet of d into buf; returns its length. */
static int rtp_next(struct dir *d, uint8_t *buf, int payload)
{
    uint16_t seq = d->seq++;
    uint32_t ts = (uint32_t)seq * 160;
    buf[0] = 0x80;
    buf[1] = 111;
    buf[2] = (uint8_t)(seq >> 8);
    buf[3] = (uint8_t)seq;
    memcpy(buf + 4, &(uint32_t){htonl(ts)}, 4);
    memcpy(buf + 8, &(uint32_t){htonl(d->ssrc)}, 4);
    double t = now_s();
    memset(buf + 12, 0xA5, (size_t)payload);
    memcpy(buf + 12, &t, sizeof(t));
    int len = 12 + payload;
    if (srtp_protect(d->tx, buf, &len) != srtp_err_status_ok)
        die("srtp_protect failed");
    d->sent++;
    return len;
}

static void rtp_received(struct dir *d, uint8_t *p, int len, int rate)
{
    if (len < 12 + 8 + 10 || (p[0] & 0xC0) != 0x80) {
        d->bad++;
        return;
    }
    if (srtp_unprotect(d->rx, p, &len) != srtp_err_status_ok) {
        d->auth_fail++;
        return;
    }
    double sent;
    memcpy(&sent, p + 12, sizeof(sent));
    double lat = now_s() - sent;
    d->received++;
    d->lat_sum += lat;
    if (lat > d->lat_max)
        d->lat_max = lat;
    /* RFC 3550 6.4.1 interarrival jitter, with the exact send time in place of the RTP
     * timestamp: the variation the relay adds, not the sender's scheduling (in ms). */
    double transit = lat * 1000.0;
    (void)rate;
    if (d->have_transit) {
        double dd = fabs(transit - d->last_transit);
        d->jitter += (dd - d->jitter) / 16.0;
    }
    d->last_transit = transit;
    d->have_transit = true;
}

static void usage(void)
{
    fprintf(stderr, "usage: av-probe --external HOST:PORT --internal HOST:PORT "
                    "(--secret S | --user U --password P) [--streams N] [--rate PPS] "
                    "[--seconds S] [--size BYTES] [--external-user U --external-password P] "
                    "[--external-netns NAME] [--permission-lifetime S] [--channel-lifetime S]\n"
                    "  --external-user/--external-password: the external user's own credentials "
                    "(default: the same as the internal user's)\n"
                    "  --external-netns NAME: make the external user's sockets in network "
                    "namespace NAME (/run/netns/NAME)\n"
                    "  --permission-lifetime/--channel-lifetime: what the server grants (RFC 8656: "
                    "300 and 600 s); each is refreshed at half of it\n");
    exit(2);
}

/* av-probe's options: see usage(). */
static const struct option long_opts[] = {{"external", 1, 0, 'e'},
                                          {"internal", 1, 0, 'i'},
                                          {"secret", 1, 0, 's'},
                                          {"user", 1, 0, 'u'},
                                          {"password", 1, 0, 'p'},
                                          {"streams", 1, 0, 'n'},
                                          {"rate", 1, 0, 'r'},
                                          {"seconds", 1, 0, 't'},
                                          {"size", 1, 0, 'z'},
                                          {"help", 0, 0, 'h'},
                                          {"external-user", 1, 0, 'U'},
                                          {"external-password", 1, 0, 'P'},
                                          {"external-netns", 1, 0, 'N'},
                                          {"permission-lifetime", 1, 0, 'L'},
                                          {"channel-lifetime", 1, 0, 'C'},
                                          {0, 0, 0, 0}};

/* The options are all there and in range, and the external user's credentials come in
 * pairs. */
static bool opts_valid(const struct opts *o)
{
    if (!o->secret && (!o->user || !o->password))
        return false;
    if (o->streams < 1 || o->streams > 500 || o->rate < 1 || o->rate > 1000 || o->seconds <= 0 ||
        o->seconds > 3600 || o->size < 16 || o->size > 1200)
        return false;
    if (!o->ext_user != !o->ext_password || o->perm_lifetime < 1 || o->chan_lifetime < 1)
        return false;
    return true;
}

/* The command line into o; usage() (exit 2) on anything missing or out of range. */
static void parse_opts(int argc, char **argv, struct opts *o)
{
    bool have_ext = false, have_in = false;
    for (int c; (c = getopt_long(argc, argv, "e:i:s:u:p:n:r:t:z:h", long_opts, NULL)) != -1;) {
        switch (c) {
        case 'e':
            have_ext = addr_parse(&o->ext, optarg, 3478) == 0;
            break;
        case 'i':
            have_in = addr_parse(&o->in, optarg, 3478) == 0;
            break;
        case 's':
            o->secret = optarg;
            break;
        case 'u':
            o->user = optarg;
            break;
        case 'p':
            o->password = optarg;
            break;
        case 'n':
            o->streams = atoi(optarg);
            break;
        case 'r':
            o->rate = atoi(optarg);
            break;
        case 't':
            o->seconds = atof(optarg);
            break;
        case 'z':
            o->size = atoi(optarg);
            break;
        case 'U':
            o->ext_user = optarg;
            break;
        case 'P':
            o->ext_password = optarg;
            break;
        case 'N':
            o->ext_netns = optarg;
            break;
        case 'L':
            o->perm_lifetime = atof(optarg);
            break;
        case 'C':
            o->chan_lifetime = atof(optarg);
            break;
        default:
            usage();
        }
    }
    if (!have_ext || !have_in || !opts_valid(o))
        usage();
}

/* Stream i's two allocations, the internal user's permission and channel for the external
 * user's address, and its SRTP sessions; exits 2 on any failure. */
static void stream_setup(struct stream *s, int i, const struct opts *o)
{
    if (client_open(&s->in, &o->in, o, 2 * i, false) ||
        client_open(&s->ext, &o->ext, o, 2 * i + 1, true))
        die(o->ext_netns ? "socket failed (is the --external-netns namespace there?)"
                         : "socket failed");
    int code = client_allocate(&s->in);
    if (code)
        fprintf(stderr, "av-probe: internal Allocate failed: %d\n", code), exit(2);
    code = client_allocate(&s->ext);
    if (code)
        fprintf(stderr, "av-probe: external Allocate failed: %d\n", code), exit(2);
    /* The internal user admits the external user's address. */
    uint8_t resp[1500];
    struct stun_msg m;
    code = transact(&s->in, STUN_CREATE_PERMISSION, &s->ext.mapped, 0, -1, 1.0, 4, resp,
                    sizeof(resp), &m);
    if (!code)
        code = transact(&s->in, STUN_CHANNEL_BIND, &s->ext.mapped, CHANNEL, -1, 1.0, 4, resp,
                        sizeof(resp), &m);
    if (code)
        fprintf(stderr, "av-probe: permission for the external user failed: %d\n", code), exit(2);
    s->in.has_peer = true;
    s->in.peer = s->ext.mapped;
    job_schedule(&s->in, JOB_PERMISSION, now_s(), o);
    job_schedule(&s->in, JOB_CHANNEL, now_s(), o);
    srtp_pair(&s->out_in, 0x10000000u + (uint32_t)i);
    srtp_pair(&s->in_out, 0x20000000u + (uint32_t)i);
    if (i == 0) {
        char a1[ADDR_STRLEN], a2[ADDR_STRLEN];
        printf("stream 0: internal relay %s, external relay %s (media: external host <-> "
               "internal relay)\n",
               addr_format(&s->in.relay, a1), addr_format(&s->ext.relay, a2));
    }
}

/* One packet each way on every stream. */
static void media_send(struct stream *st, const struct opts *o, uint8_t *buf)
{
    for (int i = 0; i < o->streams; i++) {
        struct stream *s = &st[i];
        /* external host -> internal user's relay */
        int n = rtp_next(&s->out_in, buf, o->size);
        sendto(s->ext.fd, buf, (size_t)n, 0, &s->in.relay.u.sa, addr_len(&s->in.relay));
        /* internal user -> ChannelData -> relay -> external host */
        n = rtp_next(&s->in_out, buf + 4, o->size);
        stun_chandata_header(buf, CHANNEL, (size_t)n);
        sendto(s->in.fd, buf, (size_t)n + 4, 0, &s->in.server.u.sa, addr_len(&s->in.server));
    }
}

/* Every packet sent has arrived (or failed authentication, which counts as in). */
static bool media_all_in(const struct stream *st, const struct opts *o)
{
    uint64_t sent = 0, got = 0;
    for (int i = 0; i < o->streams; i++)
        sent += st[i].out_in.sent + st[i].in_out.sent,
            got += st[i].out_in.received + st[i].in_out.received + st[i].out_in.auth_fail +
                   st[i].in_out.auth_fail;
    return got >= sent;
}

/* Reads what socket i of stream s holds: even i is the external host's, odd the internal
 * user's. */
static void media_receive(struct stream *s, int i, int fd, const struct opts *o, uint8_t *buf,
                          size_t cap)
{
    ssize_t r;
    while ((r = recv(fd, buf, cap, MSG_DONTWAIT)) > 0) {
        /* The first two bits tell STUN (00) from RTP (10) and ChannelData (01). */
        if ((buf[0] & 0xC0) == 0) {
            client_answer(i % 2 == 0 ? &s->ext : &s->in, buf, (size_t)r, o);
        } else if (i % 2 == 0) {
            rtp_received(&s->in_out, buf, (int)r, o->rate);
        } else if (stun_is_chandata(buf, (size_t)r)) {
            uint16_t ch;
            struct slice d;
            if (stun_chandata_parse(buf, (size_t)r, false, &ch, &d) > 0)
                rtp_received(&s->out_in, (uint8_t *)d.p, (int)d.len, o->rate);
        } else {
            s->out_in.bad++;
        }
    }
}

/* Media both ways at o->rate for o->seconds, with the refreshes in between, then up to 3 s
 * more for stragglers. */
static void media_run(struct stream *st, const struct opts *o)
{
    struct pollfd *pf = calloc((size_t)o->streams * 2, sizeof(*pf));
    if (!pf)
        die("out of memory");
    for (int i = 0; i < o->streams; i++) {
        pf[2 * i] = (struct pollfd){st[i].ext.fd, POLLIN, 0};
        pf[2 * i + 1] = (struct pollfd){st[i].in.fd, POLLIN, 0};
    }
    double t0 = now_s(), interval = 1.0 / o->rate, end = t0 + o->seconds;
    /* Ticks are counted, not summed in floating point (150 additions of 0.02 can stay
     * short of the end and send a 151st). */
    long ticks = lround(o->rate * o->seconds), tick = 0;
    uint8_t buf[2048];
    for (;;) {
        double t = now_s();
        for (int i = 0; i < o->streams; i++) {
            client_tick(&st[i].in, t);
            client_tick(&st[i].ext, t);
        }
        /* Catch up on ticks a slow iteration missed, so each stream sends exactly
         * rate x seconds packets. */
        for (; tick < ticks && t >= t0 + (double)tick * interval; tick++)
            media_send(st, o, buf);
        /* After the last send, wait for stragglers (up to 3 s) until everything is in. */
        if (t >= end && (media_all_in(st, o) || t >= end + 3.0))
            break;
        int wait_ms = tick < ticks ? (int)((t0 + (double)tick * interval - now_s()) * 1000) : 50;
        if (poll(pf, (nfds_t)o->streams * 2, wait_ms < 0 ? 0 : wait_ms) <= 0)
            continue;
        for (int i = 0; i < o->streams * 2; i++)
            if (pf[i].revents & POLLIN)
                media_receive(&st[i / 2], i, pf[i].fd, o, buf, sizeof(buf));
    }
    free(pf);
}

/* Releases the allocations, frees the SRTP sessions and prints the totals; the exit status. */
static int report(struct stream *st, const struct opts *o)
{
    uint64_t sent = 0, got = 0, auth = 0, bad = 0, refreshes = 0, refresh_failures = 0;
    int released = 0;
    double lat = 0, lat_max = 0, jit = 0;
    for (int i = 0; i < o->streams; i++) {
        struct dir *ds[2] = {&st[i].out_in, &st[i].in_out};
        for (int k = 0; k < 2; k++) {
            sent += ds[k]->sent;
            got += ds[k]->received;
            auth += ds[k]->auth_fail;
            bad += ds[k]->bad;
            lat += ds[k]->lat_sum;
            if (ds[k]->lat_max > lat_max)
                lat_max = ds[k]->lat_max;
            jit += ds[k]->jitter;
            srtp_dealloc(ds[k]->tx);
            srtp_dealloc(ds[k]->rx);
        }
        refreshes += st[i].in.refreshes + st[i].ext.refreshes;
        refresh_failures += st[i].in.refresh_failures + st[i].ext.refresh_failures;
        released += client_release(&st[i].in);
        released += client_release(&st[i].ext);
    }
    double loss = sent ? 100.0 * (double)(sent - got) / (double)sent : 0;
    printf("streams=%d rate=%d secs=%.1f sent=%llu received=%llu loss_pct=%.3f auth_failures=%llu "
           "malformed=%llu jitter_ms=%.3f added_latency_ms_avg=%.3f added_latency_ms_max=%.3f "
           "refreshes=%llu refresh_failures=%llu released=%d/%d\n",
           o->streams, o->rate, o->seconds, (unsigned long long)sent, (unsigned long long)got, loss,
           (unsigned long long)auth, (unsigned long long)bad, jit / (2.0 * o->streams),
           got ? 1000.0 * lat / (double)got : 0, 1000.0 * lat_max, (unsigned long long)refreshes,
           (unsigned long long)refresh_failures, released, 2 * o->streams);
    return (sent == got && auth == 0 && bad == 0) ? 0 : 1;
}

int main(int argc, char **argv)
{
    struct opts o = {.streams = 1,
                     .rate = 50,
                     .seconds = 5,
                     .size = 160,
                     .perm_lifetime = 300,
                     .chan_lifetime = 600};
    parse_opts(argc, argv, &o);
    if (srtp_init() != srtp_err_status_ok)
        die("srtp_init failed");
    struct stream *st = calloc((size_t)o.streams, sizeof(*st));
    if (!st)
        die("out of memory");
    for (int i = 0; i < o.streams; i++)
        stream_setup(&st[i], i, &o);
    media_run(st, &o);
    int status = report(st, &o);
    free(st);
    srtp_shutdown();
    return status;
}
