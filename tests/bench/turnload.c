/* turnload: a batching STUN/TURN load generator for bench-av (UDP, REST credentials).
 *
 *   turnload relay <ip> <port> <secret> <realm> <clients> <len> <secs>
 *       clients allocate, bind a channel to a local sink and send ChannelData as fast as
 *       sendmmsg goes; the sink counts what the server relayed.
 *   turnload stun  <ip> <port> <secs> <sockets> <window>   Binding requests, windowed
 *   turnload alloc <ip> <port> <secret> <realm> <secs> <concurrency>
 *       Allocate (401, then authenticated) + Refresh 0, again and again
 *   turnload hold  <ip> <port> <secret> <realm> <n> <secs>  hold n allocations
 *
 * With SERVER_PID set, the server's CPU time (utime+stime from /proc) is measured around
 * the loaded phase and per-CPU-second figures are printed. Every phase is bounded in time. */
#include <arpa/inet.h>
#include <netinet/udp.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "av-edge/stun.h"
#include "common/token.h"

#define BATCH 32

static double mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double server_cpu(void)
{
    const char *pid = getenv("SERVER_PID");
    if (!pid)
        return -1;
    char path[64], buf[2048];
    snprintf(path, sizeof(path), "/proc/%s/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long long ut = 0, st = 0;
    /* after ") ": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static struct sockaddr_in sin_of(const char *ip, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static int udp_socket(int bufsz)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("socket");
        exit(1);
    }
    if (bufsz) {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz));
    }
    return fd;
}

/* Each client gets its own source address in 127.64.0.0/10 so 5-tuples never repeat
 * across runs and SO_REUSEPORT spreads them. */
static int client_socket(unsigned id, const struct sockaddr_in *srv)
{
    static unsigned base;
    if (!base)
        base = ((unsigned)getpid() * 2654435761u) & 0x3FFFFF;
    unsigned k = (base + id) & 0x3FFFFF;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.%u.%u.%u", 64 + ((k >> 16) & 63), (k >> 8) & 255, (k & 255) | 1);
    int fd = udp_socket(1 << 21);
    struct sockaddr_in a = sin_of(ip, 0);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        perror("bind client");
    connect(fd, (const struct sockaddr *)srv, sizeof(*srv));
    return fd;
}

/* ---- a TURN client session (blocking setup) ---- */

struct sess {
    int fd;
    char user[96], pass[64], realm[128], nonce[128];
    uint8_t key[16];
    int state;
    double t;
};

static const char *g_secret;

static void sess_creds(struct sess *s, unsigned id)
{
    char who[32];
    snprintf(who, sizeof(who), "load%u", id);
    turn_rest_username(s->user, sizeof(s->user), time(NULL) + 3600, who);
    turn_rest_password(g_secret, strlen(g_secret), s->user, s->pass, sizeof(s->pass));
}

static void tid_rand(uint8_t tid[12])
{
    for (int i = 0; i < 12; i++)
        tid[i] = (uint8_t)rand();
}

static void sess_send(struct sess *s, uint16_t method, bool auth, uint16_t channel,
                      const struct sockaddr_in *peer, int lifetime)
{
    uint8_t buf[512], tid[12];
    struct stun_builder b;
    tid_rand(tid);
    stun_build_init(&b, buf, sizeof(buf), method, STUN_REQUEST, tid);
    if (method == STUN_ALLOCATE)
        stun_build_u32(&b, STUN_A_REQUESTED_TRANSPORT, 17u << 24);
    if (method == STUN_CHANNEL_BIND) {
        struct addr pa;
        addr_from_sockaddr(&pa, (const struct sockaddr *)peer);
        stun_build_u32(&b, STUN_A_CHANNEL_NUMBER, (uint32_t)channel << 16);
        stun_build_xaddr(&b, STUN_A_XOR_PEER_ADDRESS, &pa);
    }
    if (lifetime >= 0)
        stun_build_u32(&b, STUN_A_LIFETIME, (uint32_t)lifetime);
    if (auth) {
        stun_build_attr(&b, STUN_A_USERNAME, s->user, strlen(s->user));
        stun_build_attr(&b, STUN_A_REALM, s->realm, strlen(s->realm));
        stun_build_attr(&b, STUN_A_NONCE, s->nonce, strlen(s->nonce));
        stun_build_integrity(&b, s->key, 16);
    }
    ssize_t n = stun_build_finish(&b);
    if (n > 0)
        send(s->fd, buf, (size_t)n, 0);
}

/* The class+method of a reply (or -1), taking REALM/NONCE from a 401/438. */
static int sess_take(struct sess *s, const uint8_t *p, ssize_t n)
{
    struct stun_msg m;
    if (n < 20 || stun_msg_parse(&m, p, (size_t)n) < 0)
        return -1;
    const struct stun_attr *r = stun_msg_find(&m, STUN_A_REALM), *no = stun_msg_find(&m, STUN_A_NONCE);
    if (m.cls == STUN_ERROR && r && no) {
        snprintf(s->realm, sizeof(s->realm), "%.*s", r->len, (const char *)p + r->off);
        snprintf(s->nonce, sizeof(s->nonce), "%.*s", no->len, (const char *)p + no->off);
        stun_key_long_term(slice_str(s->user), slice_str(s->realm), slice_str(s->pass), s->key);
    }
    return m.cls << 12 | m.method;
}

static int sess_wait(struct sess *s, int ms)
{
    struct pollfd p = {s->fd, POLLIN, 0};
    uint8_t b[1500];
    while (poll(&p, 1, ms) > 0) {
        ssize_t n = recv(s->fd, b, sizeof(b), 0);
        int t = sess_take(s, b, n);
        if (t >= 0)
            return t;
    }
    return -1;
}

#define T(cls, method) ((cls) << 12 | (method))

static int sess_allocate(struct sess *s, unsigned id, const struct sockaddr_in *srv)
{
    s->fd = client_socket(id, srv);
    sess_creds(s, id);
    int t = -1;
    for (int i = 0; i < 3 && t != T(STUN_ERROR, STUN_ALLOCATE); i++) {
        sess_send(s, STUN_ALLOCATE, false, 0, NULL, -1);
        t = sess_wait(s, 1000);
    }
    if (t != T(STUN_ERROR, STUN_ALLOCATE))
        return -1;
    sess_send(s, STUN_ALLOCATE, true, 0, NULL, -1);
    return sess_wait(s, 2000) == T(STUN_SUCCESS, STUN_ALLOCATE) ? 0 : -1;
}

static void sess_release(struct sess *s)
{
    for (int i = 0; i < 3; i++) {
        sess_send(s, STUN_REFRESH, true, 0, NULL, 0);
        int t = sess_wait(s, 300);
        if (t == T(STUN_SUCCESS, STUN_REFRESH) || t == T(STUN_ERROR, STUN_REFRESH))
            break;
    }
    close(s->fd);
}

/* ---- relay ---- */

struct sink {
    int fd;
    volatile int stop;
    volatile uint64_t pkts;
};

static void *sink_main(void *arg)
{
    struct sink *k = arg;
    static uint8_t rb[64][2048];
    struct mmsghdr m[64];
    struct iovec io[64];
    for (int j = 0; j < 64; j++) {
        io[j] = (struct iovec){rb[j], sizeof(rb[j])};
        m[j] = (struct mmsghdr){.msg_hdr = {.msg_iov = &io[j], .msg_iovlen = 1}};
    }
    struct timespec to = {0, 50 * 1000 * 1000};
    while (!k->stop) {
        int r = recvmmsg(k->fd, m, 64, MSG_WAITFORONE, &to);
        if (r > 0)
            __atomic_add_fetch(&k->pkts, (uint64_t)r, __ATOMIC_RELAXED);
    }
    return NULL;
}

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

/* Sends the BATCH datagrams of m (laid back to back in pkts, seg bytes each) on a
 * connected socket; returns how many went. With *gso, as one UDP GSO send: the kernel
 * splits it before the server's socket (no server here asks for UDP_GRO), so a server
 * receives the very datagrams sendmmsg would have sent, while the generator pays one pass
 * through the stack per batch and stays ahead of the faster server. A kernel without GSO
 * turns *gso off for good. */
static int send_batch(int fd, struct mmsghdr *m, uint8_t *pkts, size_t seg, bool *gso)
{
    if (*gso) {
        union {
            struct cmsghdr h;
            uint8_t b[CMSG_SPACE(sizeof(uint16_t))];
        } ctl = {0};
        struct iovec io = {pkts, seg * BATCH};
        struct msghdr mh = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl.b,
                            .msg_controllen = sizeof(ctl.b)};
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t sz = (uint16_t)seg;
        memcpy(CMSG_DATA(cm), &sz, sizeof(sz));
        ssize_t w = sendmsg(fd, &mh, MSG_DONTWAIT);
        if (w >= 0)
            return (int)((size_t)w / seg);
        if (errno != EINVAL && errno != EIO && errno != ENOPROTOOPT)
            return -1;
        *gso = false;
    }
    return sendmmsg(fd, m, BATCH, MSG_DONTWAIT);
}

static int mode_relay(char **av)
{
    struct sockaddr_in srv = sin_of(av[2], atoi(av[3]));
    g_secret = av[4];
    int nc = atoi(av[6]), len = atoi(av[7]);
    double secs = atof(av[8]);
    if (nc < 1 || len < 1 || len > 1400 || secs <= 0 || secs > 120)
        return fprintf(stderr, "bad arguments\n"), 2;
    struct sink k = {.fd = udp_socket(8 << 20)};
    struct sockaddr_in sa = sin_of("127.0.0.1", 0);
    socklen_t sl = sizeof(sa);
    bind(k.fd, (struct sockaddr *)&sa, sizeof(sa));
    getsockname(k.fd, (struct sockaddr *)&sa, &sl);
    struct timeval tv = {0, 100000};
    setsockopt(k.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

    struct sess *s = calloc((size_t)nc, sizeof(*s));
    double t_setup = mono();
    for (int i = 0; i < nc; i++) {
        if (sess_allocate(&s[i], (unsigned)i, &srv) < 0)
            return fprintf(stderr, "allocation %d failed\n", i), 1;
        sess_send(&s[i], STUN_CHANNEL_BIND, true, 0x4000, &sa, -1);
        if (sess_wait(&s[i], 2000) != T(STUN_SUCCESS, STUN_CHANNEL_BIND))
            return fprintf(stderr, "channel bind %d failed\n", i), 1;
    }
    t_setup = mono() - t_setup;

    /* BATCH copies of one ChannelData datagram, back to back: one GSO send, or sendmmsg. */
    const size_t seg = (size_t)len + 4;
    static uint8_t pkts[BATCH * 1408];
    memset(pkts, 0x5A, sizeof(pkts));
    for (int j = 0; j < BATCH; j++)
        stun_chandata_header(pkts + (size_t)j * seg, 0x4000, (size_t)len);
    struct mmsghdr m[BATCH];
    struct iovec io[BATCH];
    for (int j = 0; j < BATCH; j++) {
        io[j] = (struct iovec){pkts + (size_t)j * seg, seg};
        m[j] = (struct mmsghdr){.msg_hdr = {.msg_iov = &io[j], .msg_iovlen = 1}};
    }
    bool gso = !getenv("TURNLOAD_NO_GSO");
    pthread_t th;
    pthread_create(&th, NULL, sink_main, &k);
    usleep(200000);
    __atomic_store_n(&k.pkts, 0, __ATOMIC_RELAXED);
    /* Closed loop: at most WINDOW datagrams in flight, so the sink (sharing the generator's
     * CPU) keeps up and what the server relays is counted; in-flight datagrams that make
     * no progress for 50 ms are written off as lost. */
    const uint64_t window = getenv("WINDOW") ? strtoull(getenv("WINDOW"), NULL, 10) : 2048;
    uint64_t sent = 0, written_off = 0, seen = 0;
    double c0 = server_cpu(), t0 = mono(), el, progress = t0;
    for (int ci = 0; (el = mono() - t0) < secs;) {
        uint64_t got = __atomic_load_n(&k.pkts, __ATOMIC_RELAXED);
        if (got != seen) {
            seen = got;
            progress = t0 + el;
        }
        if (sent - got - written_off + BATCH > window) {
            if (t0 + el - progress > 0.05) {
                written_off = sent - got;
                progress = t0 + el;
            } else {
                struct timespec z = {0, 20000};
                nanosleep(&z, NULL);
            }
            continue;
        }
        int r = send_batch(s[ci].fd, m, pkts, seg, &gso);
        if (r > 0)
            sent += (uint64_t)r;
        ci = (ci + 1) % nc;
    }
    usleep(300000); /* let the relay drain what is queued */
    double c1 = server_cpu();
    uint64_t got = __atomic_load_n(&k.pkts, __ATOMIC_RELAXED);
    k.stop = 1;
    pthread_join(th, NULL);
    double cpu = c1 - c0;
    printf("RELAY clients=%d len=%d gso=%d secs=%.2f setup_s=%.2f sent=%llu relayed=%llu "
           "loss_pct=%.2f relayed_pps=%.0f srv_cpu_s=%.2f srv_cpu_pct=%.1f pkts_per_cpu_s=%.0f\n",
           nc, len, gso, el, t_setup, (unsigned long long)sent, (unsigned long long)got,
           sent ? 100.0 * ((double)sent - (double)got) / (double)sent : 0, (double)got / el, cpu,
           100 * cpu / (el + 0.3), cpu > 0 ? (double)got / cpu : 0);
    for (int i = 0; i < nc; i++)
        sess_release(&s[i]);
    free(s);
    return 0;
}

/* ---- stun ---- */

static int mode_stun(char **av)
{
    struct sockaddr_in srv = sin_of(av[2], atoi(av[3]));
    double secs = atof(av[4]);
    int ns = atoi(av[5]), win = atoi(av[6]);
    if (ns < 1 || ns > 1024 || win < 1 || secs <= 0 || secs > 120)
        return fprintf(stderr, "bad arguments\n"), 2;
    int *fd = calloc((size_t)ns, sizeof(int)), *out = calloc((size_t)ns, sizeof(int));
    double *last = calloc((size_t)ns, sizeof(double));
    for (int i = 0; i < ns; i++)
        fd[i] = client_socket((unsigned)(100000 + i), &srv);
    static uint8_t sb[BATCH][20], rb[BATCH][256];
    struct mmsghdr sm[BATCH], rm[BATCH];
    struct iovec si[BATCH], ri[BATCH];
    for (int j = 0; j < BATCH; j++) {
        struct stun_builder b;
        uint8_t tid[12];
        tid_rand(tid);
        stun_build_init(&b, sb[j], 20, STUN_BINDING, STUN_REQUEST, tid);
        si[j] = (struct iovec){sb[j], 20};
        ri[j] = (struct iovec){rb[j], sizeof(rb[j])};
        sm[j] = (struct mmsghdr){.msg_hdr = {.msg_iov = &si[j], .msg_iovlen = 1}};
        rm[j] = (struct mmsghdr){.msg_hdr = {.msg_iov = &ri[j], .msg_iovlen = 1}};
    }
    uint64_t sent = 0, got = 0, lost = 0;
    double c0 = server_cpu(), t0 = mono(), tn;
    while ((tn = mono()) - t0 < secs) {
        for (int i = 0; i < ns; i++) {
            int k = win - out[i];
            if (k > BATCH)
                k = BATCH;
            if (k > 0) {
                int r = sendmmsg(fd[i], sm, (unsigned)k, MSG_DONTWAIT);
                if (r > 0) {
                    sent += (uint64_t)r;
                    out[i] += r;
                }
            }
        }
        for (int i = 0; i < ns; i++) {
            int r = recvmmsg(fd[i], rm, BATCH, MSG_DONTWAIT, NULL);
            if (r > 0) {
                for (int j = 0; j < r; j++)
                    got += rb[j][0] == 0x01 && rb[j][1] == 0x01;
                out[i] = out[i] > r ? out[i] - r : 0;
                last[i] = tn;
            } else if (out[i] > 0 && tn - last[i] > 0.05) {
                lost += (uint64_t)out[i];
                out[i] = 0;
                last[i] = tn;
            }
        }
    }
    double el = mono() - t0, cpu = server_cpu() - c0;
    printf("STUN secs=%.2f sent=%llu answered=%llu lost=%llu answers_per_s=%.0f srv_cpu_s=%.2f "
           "srv_cpu_pct=%.1f answers_per_cpu_s=%.0f\n",
           el, (unsigned long long)sent, (unsigned long long)got, (unsigned long long)lost,
           (double)got / el, cpu, 100 * cpu / el, cpu > 0 ? (double)got / cpu : 0);
    return 0;
}

/* ---- alloc ---- */

static int mode_alloc(char **av)
{
    struct sockaddr_in srv = sin_of(av[2], atoi(av[3]));
    g_secret = av[4];
    double secs = atof(av[6]);
    int C = atoi(av[7]);
    if (C < 1 || C > 1024 || secs <= 0 || secs > 120)
        return fprintf(stderr, "bad arguments\n"), 2;
    struct sess *s = calloc((size_t)C, sizeof(*s));
    struct pollfd *p = calloc((size_t)C, sizeof(*p));
    unsigned id = 200000;
    uint64_t done = 0, fail = 0, tmo = 0;
    double t0 = mono(), tn;
    for (int i = 0; i < C; i++) {
        s[i].fd = client_socket(id, &srv);
        sess_creds(&s[i], id++);
        sess_send(&s[i], STUN_ALLOCATE, false, 0, NULL, -1);
        s[i].state = 1;
        s[i].t = t0;
    }
    double c0 = server_cpu();
    uint8_t b[1500];
    while (mono() - t0 < secs) {
        for (int i = 0; i < C; i++)
            p[i] = (struct pollfd){s[i].fd, POLLIN, 0};
        poll(p, (nfds_t)C, 10);
        tn = mono();
        for (int i = 0; i < C; i++) {
            bool restart = false;
            if (p[i].revents & POLLIN) {
                ssize_t n = recv(s[i].fd, b, sizeof(b), 0);
                int t = sess_take(&s[i], b, n);
                if (s[i].state == 1 && t == T(STUN_ERROR, STUN_ALLOCATE)) {
                    sess_send(&s[i], STUN_ALLOCATE, true, 0, NULL, -1);
                    s[i].state = 2;
                    s[i].t = tn;
                } else if (s[i].state == 2 && t == T(STUN_SUCCESS, STUN_ALLOCATE)) {
                    done++;
                    sess_send(&s[i], STUN_REFRESH, true, 0, NULL, 0);
                    s[i].state = 3;
                    s[i].t = tn;
                } else if (s[i].state == 3 && t == T(STUN_SUCCESS, STUN_REFRESH)) {
                    restart = true;
                } else {
                    fail++;
                    restart = true;
                }
            } else if (tn - s[i].t > 1.0) {
                tmo++;
                restart = true;
            }
            if (restart) {
                close(s[i].fd);
                s[i].fd = client_socket(id, &srv);
                sess_creds(&s[i], id++);
                sess_send(&s[i], STUN_ALLOCATE, false, 0, NULL, -1);
                s[i].state = 1;
                s[i].t = tn;
            }
        }
    }
    double el = mono() - t0, cpu = server_cpu() - c0;
    printf("ALLOC secs=%.2f concurrency=%d allocations=%llu fail=%llu timeouts=%llu "
           "allocs_per_s=%.0f srv_cpu_s=%.2f srv_cpu_pct=%.1f allocs_per_cpu_s=%.0f\n",
           el, C, (unsigned long long)done, (unsigned long long)fail, (unsigned long long)tmo,
           (double)done / el, cpu, 100 * cpu / el, cpu > 0 ? (double)done / cpu : 0);
    for (int i = 0; i < C; i++) {
        if (s[i].state >= 2)
            sess_send(&s[i], STUN_REFRESH, true, 0, NULL, 0);
        close(s[i].fd);
    }
    free(s);
    free(p);
    return 0;
}

/* ---- hold ---- */

static int mode_hold(char **av)
{
    struct sockaddr_in srv = sin_of(av[2], atoi(av[3]));
    g_secret = av[4];
    int n = atoi(av[6]), hold = atoi(av[7]);
    if (n < 1 || n > 20000 || hold < 0 || hold > 600)
        return fprintf(stderr, "bad arguments\n"), 2;
    struct sess *s = calloc((size_t)n, sizeof(*s));
    int ok = 0;
    double t0 = mono();
    for (int i = 0; i < n; i++) {
        if (sess_allocate(&s[i], (unsigned)(300000 + i), &srv) == 0)
            ok++;
        else
            close(s[i].fd), s[i].fd = -1;
    }
    printf("HOLD allocated=%d of %d in %.2fs\n", ok, n, mono() - t0);
    fflush(stdout);
    sleep((unsigned)hold);
    for (int i = 0; i < n; i++)
        if (s[i].fd >= 0)
            sess_release(&s[i]);
    printf("HOLD released\n");
    return 0;
}

int main(int argc, char **argv)
{
    srand((unsigned)(getpid() ^ time(NULL)));
    if (argc >= 9 && !strcmp(argv[1], "relay"))
        return mode_relay(argv);
    if (argc >= 7 && !strcmp(argv[1], "stun"))
        return mode_stun(argv);
    if (argc >= 8 && !strcmp(argv[1], "alloc"))
        return mode_alloc(argv);
    if (argc >= 8 && !strcmp(argv[1], "hold"))
        return mode_hold(argv);
    fprintf(stderr, "usage: see tests/bench/turnload.c\n");
    return 2;
}
