/* A relay worker: one event loop with its UDP listeners, relay sockets, TCP/TLS clients,
 * batched receive (recvmmsg) and batched send (sendmmsg), expiry and metrics timers.
 *
 * The sockets are raw non-blocking fds watched by uv_poll_t rather than uv_udp_t: each
 * readiness costs one recvmmsg (libuv's UDP reader loops until EAGAIN, an extra syscall per
 * wakeup, and asks alloc_cb per read), and sends are queued during a loop iteration and
 * leave in sendmmsg batches per socket from a uv_check handle, after all reads of the
 * iteration. Nothing on the packet path allocates or logs. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "av-edge/av.h"
#include "av-edge/tcp_relay.h"

#define RX_BATCH 32
#define RX_ROUNDS 4 /* batches per readiness before yielding to other sockets */
#define SLOT 2048
#define TXQ 256
#define STREAM_BUF (64 * 1024 + 1024)
/* Plain UDP relay sockets kept bound, per address family, for the next allocation: an
 * allocation then costs no socket, bind, poll set-up and close (about ten system calls and
 * most of the kernel time of an Allocate/Refresh(0) cycle). */
#define IDLE_RELAYS 64

struct av_udp_listener {
    uv_poll_t poll;
    int fd;
    uint16_t id;
    uint8_t side;
    struct av_worker *w;
};

struct av_tcp_listener {
    uv_tcp_t tcp;
    uint16_t id;
    uint8_t side;
    bool tls;
    struct av_worker *w;
};

struct av_relay_sock {
    uv_poll_t poll;
    int fd;
    struct av_alloc *a; /* NULL while only reserved, or idle (what arrives is dropped) */
    struct av_worker *w;
    struct addr bound;
    bool plain;   /* UDP, no DONT-FRAGMENT, not from a reservation: fit for reuse */
    bool polling; /* uv_poll_start done */
    struct av_relay_sock *next_idle;
};

struct av_sconn {
    struct stream *s;
    struct av_worker *w;
    struct addr peer;
    uint16_t id;
    uint8_t side;
    bool tls;
    struct buf in;
    struct av_sconn *next, *prev;
    /* RFC 6062 data connection: after its ConnectionBind it only carries the bytes of
     * this peer connection (NULL again once that is gone). */
    struct av_tcp_conn *pipe;
    bool piped;
};

struct av_tx {
    int fd;
    struct addr to;
};

struct av_worker {
    uv_loop_t *loop;
    struct av_turn *turn;
    struct av_tcp_relay *tcp_relay;
    uint32_t port_min, port_max;
    uint64_t socket_buffer;
    const struct av_runtime *rt;
    const struct av_runtime *pending_rt; /* atomic */
    const struct logger *pending_log;    /* atomic */
    const struct logger *log;
    struct av_shared *sh;
    const struct av_metrics *mx;
    unsigned index, count;
    uint32_t port_cursor;
    struct addr relay_addr[2];

    struct av_udp_listener udp[AV_MAX_LISTENERS];
    size_t n_udp;
    struct av_tcp_listener tcp[AV_MAX_LISTENERS];
    size_t n_tcp;
    struct tls_ctx *tls;
    struct av_sconn *conns;
    struct av_relay_sock *idle[2]; /* per family (IDLE_RELAYS) */
    unsigned n_idle[2];

    uv_check_t check;
    uv_timer_t tick;
    uv_async_t async;
    bool stop_requested; /* atomic */
    bool closing;
    int open_handles;

    struct av_turn_stats folded;
    struct av_tcp_stats tcp_folded;
    int64_t g_allocs, g_perms, g_chans, allocs_now;
    uint64_t tx_dropped, tx_dropped_folded;

    struct mmsghdr rx_msg[RX_BATCH];
    struct iovec rx_iov[RX_BATCH];
    struct addr rx_addr[RX_BATCH];
    uint8_t rx_buf[RX_BATCH][SLOT];

    size_t n_tx;
    struct av_tx tx[TXQ];
    struct mmsghdr tx_msg[TXQ];
    struct iovec tx_iov[TXQ];
    uint8_t tx_buf[TXQ][SLOT];
    struct mmsghdr tx_batch[TXQ];
    struct iovec tx_iov2[TXQ];
    uint64_t tx_ctl[TXQ][4]; /* room for one UDP_SEGMENT cmsg each */
    bool gso;

    uint8_t reply[1500];
};

/* ---- sending ---- */

/* Consecutive datagrams of equal size from one socket to one destination leave as one
 * UDP GSO send (UDP_SEGMENT): one pass through the stack for up to 64 datagrams. */
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define GSO_MAX_SEGS 64
#define GSO_MAX_BYTES 60000

static void tx_send_plain(struct av_worker *w, int fd, struct mmsghdr *m)
{
    /* One merged message went wrong: send its datagrams one by one. */
    for (size_t i = 0; i < m->msg_hdr.msg_iovlen; i++) {
        struct msghdr h = {.msg_name = m->msg_hdr.msg_name,
                           .msg_namelen = m->msg_hdr.msg_namelen,
                           .msg_iov = &m->msg_hdr.msg_iov[i],
                           .msg_iovlen = 1};
        if (sendmsg(fd, &h, MSG_DONTWAIT) < 0)
            w->tx_dropped++;
    }
}

static void tx_flush(struct av_worker *w)
{
    size_t n = w->n_tx;
    if (!n)
        return;
    /* Send runs of messages per socket; order within a socket is kept. */
    bool done[TXQ] = {false};
    for (size_t i = 0; i < n; i++) {
        if (done[i])
            continue;
        int fd = w->tx[i].fd;
        size_t k = 0, vi = 0, seg_len = 0, bytes = 0;
        for (size_t j = i; j < n; j++) {
            if (done[j] || w->tx[j].fd != fd)
                continue;
            done[j] = true;
            size_t len = w->tx_iov[j].iov_len;
            struct mmsghdr *prev = k ? &w->tx_batch[k - 1] : NULL;
            w->tx_iov2[vi] = w->tx_iov[j];
            if (w->gso && prev && len == seg_len && prev->msg_hdr.msg_iovlen < GSO_MAX_SEGS &&
                bytes + len <= GSO_MAX_BYTES &&
                addr_eq((const struct addr *)prev->msg_hdr.msg_name, &w->tx[j].to)) {
                prev->msg_hdr.msg_iovlen++;
                bytes += len;
            } else {
                w->tx_batch[k] = w->tx_msg[j];
                w->tx_batch[k].msg_hdr.msg_iov = &w->tx_iov2[vi];
                w->tx_batch[k].msg_hdr.msg_iovlen = 1;
                w->tx_batch[k].msg_hdr.msg_control = NULL;
                w->tx_batch[k].msg_hdr.msg_controllen = 0;
                seg_len = len;
                bytes = len;
                k++;
            }
            vi++;
        }
        for (size_t b = 0; b < k; b++) {
            struct msghdr *h = &w->tx_batch[b].msg_hdr;
            if (h->msg_iovlen < 2)
                continue;
            union {
                char buf[CMSG_SPACE(sizeof(uint16_t))];
                struct cmsghdr align;
            } *ctl = (void *)w->tx_ctl[b];
            h->msg_control = ctl->buf;
            h->msg_controllen = sizeof(ctl->buf);
            struct cmsghdr *cm = CMSG_FIRSTHDR(h);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = (uint16_t)h->msg_iov[0].iov_len;
            memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
        }
        size_t sent = 0;
        while (sent < k) {
            int r = sendmmsg(fd, w->tx_batch + sent, (unsigned)(k - sent), MSG_DONTWAIT);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                struct mmsghdr *m = &w->tx_batch[sent];
                if (m->msg_hdr.msg_iovlen > 1) {
                    /* No GSO here (old kernel, device, or socket option): stop merging. */
                    if (errno == EINVAL || errno == EIO || errno == ENOPROTOOPT)
                        w->gso = false;
                    tx_send_plain(w, fd, m);
                } else {
                    /* A full socket buffer or a peer's ICMP error: this datagram is lost,
                     * the rest of the run still goes. */
                    w->tx_dropped++;
                }
                sent++;
                continue;
            }
            sent += (size_t)r;
        }
    }
    w->n_tx = 0;
}

/* Datagrams queued on fd leave before it closes. */
static void tx_flush_fd(struct av_worker *w, int fd)
{
    for (size_t i = 0; i < w->n_tx; i++) {
        if (w->tx[i].fd == fd) {
            tx_flush(w);
            return;
        }
    }
}

static void tx_enqueue(struct av_worker *w, int fd, const struct addr *to, const uint8_t *p,
                       size_t len)
{
    if (len > SLOT) {
        w->tx_dropped++;
        return;
    }
    if (w->n_tx == TXQ)
        tx_flush(w);
    size_t i = w->n_tx++;
    w->tx[i].fd = fd;
    memcpy(&w->tx[i].to, to, addr_len(to));
    memcpy(w->tx_buf[i], p, len);
    w->tx_iov[i].iov_len = len;
    w->tx_msg[i].msg_hdr.msg_namelen = addr_len(to);
}

static void relay_send(struct av_worker *w, struct av_alloc *a, const struct addr *peer,
                       struct slice data)
{
    struct av_relay_sock *rs = a->relay[addr_family(peer) == AF_INET6].handle;
    if (rs)
        tx_enqueue(w, rs->fd, peer, data.p, data.len);
}

static void to_client(struct av_worker *w, struct av_alloc *a, struct slice frame)
{
    if (a->conn) {
        if (stream_write(a->conn, frame.p, frame.len) < 0)
            w->tx_dropped++;
        return;
    }
    for (size_t i = 0; i < w->n_udp; i++) {
        if (w->udp[i].id == a->listener) {
            tx_enqueue(w, w->udp[i].fd, &a->client, frame.p, frame.len);
            return;
        }
    }
}

static void on_check(uv_check_t *h)
{
    tx_flush(container_of(h, struct av_worker, check));
}

/* ---- receiving ---- */

static int rx_batch(struct av_worker *w, int fd)
{
    for (int i = 0; i < RX_BATCH; i++)
        w->rx_msg[i].msg_hdr.msg_namelen = sizeof(w->rx_addr[i].u);
    int n = recvmmsg(fd, w->rx_msg, RX_BATCH, MSG_DONTWAIT, NULL);
    return n;
}

static void on_udp_readable(uv_poll_t *p, int status, int events)
{
    struct av_udp_listener *l = container_of(p, struct av_udp_listener, poll);
    struct av_worker *w = l->w;
    if (status < 0)
        return;
    for (int round = 0; round < RX_ROUNDS; round++) {
        int n = rx_batch(w, l->fd);
        if (n <= 0)
            break;
        uint64_t now_ms = uv_now(w->loop);
        struct av_turn_in in = {NULL, l->id, AV_TRANSPORT_UDP, l->side, NULL, now_ms, time(NULL)};
        for (int i = 0; i < n; i++) {
            if (w->rx_msg[i].msg_hdr.msg_flags & MSG_TRUNC)
                continue;
            in.client = &w->rx_addr[i];
            struct av_turn_out out = {.reply = w->reply, .reply_cap = sizeof(w->reply)};
            av_turn_input(w->turn, &in, w->rx_buf[i] + AV_HEADROOM, w->rx_msg[i].msg_len, &out);
            if (out.reply_len)
                tx_enqueue(w, l->fd, in.client, out.reply, out.reply_len);
            if (out.relay_alloc)
                relay_send(w, out.relay_alloc, &out.relay_peer, out.relay_data);
        }
        if (n < RX_BATCH)
            break;
    }
}

static void on_relay_readable(uv_poll_t *p, int status, int events)
{
    struct av_relay_sock *rs = container_of(p, struct av_relay_sock, poll);
    struct av_worker *w = rs->w;
    if (status < 0)
        return;
    for (int round = 0; round < RX_ROUNDS; round++) {
        int n = rx_batch(w, rs->fd);
        if (n <= 0)
            break;
        uint64_t now_ms = uv_now(w->loop);
        for (int i = 0; i < n && rs->a; i++) {
            if (w->rx_msg[i].msg_hdr.msg_flags & MSG_TRUNC)
                continue;
            struct slice frame;
            struct av_alloc *a = rs->a;
            if (av_turn_peer_input(w->turn, a, &w->rx_addr[i], w->rx_buf[i] + AV_HEADROOM,
                                   w->rx_msg[i].msg_len, a->conn != NULL, now_ms, &frame) == 0)
                to_client(w, a, frame);
        }
        if (n < RX_BATCH)
            break;
    }
}

/* ---- relay sockets ---- */

static void worker_unref(struct av_worker *w)
{
    if (--w->open_handles == 0 && w->closing) {
        av_tcp_relay_destroy(w->tcp_relay);
        av_turn_destroy(w->turn);
        tls_ctx_unref(w->tls);
        free(w);
    }
}

static void relay_closed(uv_handle_t *h)
{
    struct av_relay_sock *rs = container_of((uv_poll_t *)h, struct av_relay_sock, poll);
    struct av_worker *w = rs->w;
    if (rs->fd >= 0)
        close(rs->fd);
    free(rs);
    worker_unref(w);
}

static void relay_sock_close(struct av_relay_sock *rs)
{
    rs->a = NULL;
    tx_flush_fd(rs->w, rs->fd);
    uv_close((uv_handle_t *)&rs->poll, relay_closed);
}

/* An allocation's UDP relay socket is done with: kept for the next one when fit, else closed. */
static void relay_sock_release(struct av_worker *w, struct av_relay_sock *rs)
{
    int fi = addr_family(&rs->bound) == AF_INET6;
    if (!rs->plain || w->closing || w->n_idle[fi] >= IDLE_RELAYS) {
        relay_sock_close(rs);
        return;
    }
    rs->a = NULL;
    rs->next_idle = w->idle[fi];
    w->idle[fi] = rs;
    w->n_idle[fi]++;
}

static struct av_relay_sock *relay_sock_reuse(struct av_worker *w, int fi)
{
    struct av_relay_sock *rs = w->idle[fi];
    if (rs) {
        w->idle[fi] = rs->next_idle;
        w->n_idle[fi]--;
        rs->next_idle = NULL;
    }
    return rs;
}

/* The port range ran out while idle sockets hold ports of it: they go now (closed at once,
 * not at the loop's close phase, so their ports can be bound again). Returns how many. */
static unsigned relay_idle_drop(struct av_worker *w, int fi)
{
    unsigned n = 0;
    struct av_relay_sock *rs;
    while ((rs = relay_sock_reuse(w, fi))) {
        tx_flush_fd(w, rs->fd);
        uv_poll_stop(&rs->poll);
        close(rs->fd);
        rs->fd = -1;
        uv_close((uv_handle_t *)&rs->poll, relay_closed);
        n++;
    }
    return n;
}

static void relay_idle_close_all(struct av_worker *w)
{
    for (int fi = 0; fi < 2; fi++) {
        struct av_relay_sock *rs;
        while ((rs = relay_sock_reuse(w, fi)))
            relay_sock_close(rs);
    }
}

/* A relay socket on port: UDP, or for RFC 6062 a listening TCP socket. */
static int relay_bind(struct av_worker *w, int fi, uint16_t port, bool df, bool tcp, int *fd_out)
{
    struct addr a = w->relay_addr[fi];
    addr_set_port(&a, port);
    int fd =
        socket(addr_family(&a), (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (tcp) {
        /* A port whose last allocation's connections sit in TIME_WAIT is still free. */
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (fi == 1)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    }
    if (df) {
        int v = IP_PMTUDISC_DO;
        if (fi == 0)
            setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &v, sizeof(v));
        else
            setsockopt(fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, &v, sizeof(v));
    }
    if (bind(fd, &a.u.sa, addr_len(&a)) < 0 || (tcp && listen(fd, 64) < 0)) {
        int e = -errno;
        close(fd);
        return e;
    }
    *fd_out = fd;
    return 0;
}

static int relay_sock_new(struct av_worker *w, int fd, struct av_relay_sock **out)
{
    struct av_relay_sock *rs = calloc(1, sizeof(*rs));
    if (!rs)
        return -ENOMEM;
    rs->fd = fd;
    rs->w = w;
    int rc = uv_poll_init(w->loop, &rs->poll, fd);
    if (rc) {
        free(rs);
        return rc;
    }
    w->open_handles++;
    *out = rs;
    return 0;
}

/* This worker's ports: pairs (2k, 2k+1) of the range go round-robin to the workers, so an
 * even port and its successor (EVEN-PORT reservations) belong to the same worker. */
static uint32_t worker_port(const struct av_worker *w, uint32_t j)
{
    return w->port_min + 2 * (w->index + (j / 2) * w->count) + (j % 2);
}

static uint32_t worker_port_count(const struct av_worker *w)
{
    uint32_t range = w->port_max - w->port_min + 1;
    uint32_t pairs = range / 2;
    uint32_t mine = pairs / w->count + (w->index < pairs % w->count);
    return mine * 2;
}

static int tcp_port_open(struct av_worker *w, struct av_alloc *a, int fi, int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    struct av_tcp_port *p;
    int rc = av_tcp_port_open(w->tcp_relay, a, fd, &p);
    if (rc)
        return rc;
    addr_from_sockaddr(&a->relay[fi].addr, (struct sockaddr *)&ss);
    a->relay[fi].handle = p;
    return 0;
}

/* A free port of this worker's slice, bound (*fd), and with reserve its successor too
 * (*fd2): 0, or -EADDRNOTAVAIL when the slice has none. */
static int relay_port_find(struct av_worker *w, int fi, bool even, bool reserve, bool df, bool tcp,
                           int *fd, int *fd2)
{
    uint32_t n = worker_port_count(w);
    *fd = *fd2 = -1;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t j = (w->port_cursor + k) % n;
        uint32_t port = worker_port(w, j);
        if (((even || reserve) && (port & 1)) || port > w->port_max)
            continue;
        if (relay_bind(w, fi, (uint16_t)port, df, tcp, fd) < 0) {
            *fd = -1;
            continue;
        }
        if (reserve && (port + 1 > w->port_max ||
                        relay_bind(w, fi, (uint16_t)(port + 1), df, false, fd2) < 0)) {
            close(*fd);
            *fd = *fd2 = -1;
            continue;
        }
        w->port_cursor = (j + 1) % n;
        return 0;
    }
    return -EADDRNOTAVAIL;
}

static int io_open(void *arg, struct av_alloc *a, int family, bool even, bool df,
                   void **reserve_out, void *reserved_in)
{
    struct av_worker *w = arg;
    int fi = family == AF_INET6;
    bool tcp = a->relay_transport == AV_TRANSPORT_TCP;
    struct av_relay_sock *rs = NULL;
    if (reserved_in) {
        /* A reservation is a bare bound fd (fd + 1 as the handle), so whichever worker
         * receives the Allocate with the token can take it into its own loop. */
        int rc = relay_sock_new(w, (int)((intptr_t)reserved_in - 1), &rs);
        if (rc)
            return rc;
    } else if (!tcp && !even && !reserve_out && !df && (rs = relay_sock_reuse(w, fi))) {
        /* bound and polled already */
    } else {
        if (!w->relay_addr[fi].u.sa.sa_family)
            return -EAFNOSUPPORT;
        int fd = -1, fd2 = -1;
        int rc = relay_port_find(w, fi, even, reserve_out != NULL, df, tcp, &fd, &fd2);
        if (rc && relay_idle_drop(w, fi)) /* idle sockets held the ports: look again */
            rc = relay_port_find(w, fi, even, reserve_out != NULL, df, tcp, &fd, &fd2);
        if (rc)
            return rc;
        if (tcp)
            return tcp_port_open(w, a, fi, fd);
        rc = relay_sock_new(w, fd, &rs);
        if (rc) {
            close(fd);
            if (fd2 >= 0)
                close(fd2);
            return rc;
        }
        if (reserve_out)
            *reserve_out = (void *)(intptr_t)(fd2 + 1);
        rs->plain = !df;
    }
    if (!addr_family(&rs->bound)) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        getsockname(rs->fd, (struct sockaddr *)&ss, &sl);
        addr_from_sockaddr(&rs->bound, (struct sockaddr *)&ss);
    }
    a->relay[fi].addr = rs->bound;
    a->relay[fi].handle = rs;
    rs->a = a;
    if (!rs->polling) {
        uv_poll_start(&rs->poll, UV_READABLE, on_relay_readable);
        rs->polling = true;
    }
    return 0;
}

static void io_close(void *arg, struct av_alloc *a)
{
    struct av_worker *w = arg;
    for (int i = 0; i < 2; i++) {
        if (!a->relay[i].handle)
            continue;
        if (a->relay_transport == AV_TRANSPORT_TCP)
            av_tcp_port_close(a->relay[i].handle); /* and its peer connections */
        else
            relay_sock_release(w, a->relay[i].handle);
        a->relay[i].handle = NULL;
    }
    /* A TCP/TLS client's connection outlives its allocation (the Refresh answer is still to
     * be written, and the client may allocate again on it). */
}

static void io_release(void *arg, void *reserved)
{
    close((int)((intptr_t)reserved - 1));
}

static int io_connect(void *arg, struct av_alloc *a, const struct addr *peer,
                      const struct av_turn_pending *p)
{
    struct av_worker *w = arg;
    return av_tcp_connect(w->tcp_relay, a, peer, p);
}

static struct av_alloc *io_conn_alloc(void *arg, uint32_t id)
{
    struct av_worker *w = arg;
    return av_tcp_pending_alloc(w->tcp_relay, id);
}

static void worker_ref(void *arg)
{
    struct av_worker *w = arg;
    w->open_handles++;
}

static void worker_unref_cb(void *arg)
{
    worker_unref(arg);
}

/* ---- TCP and TLS clients ---- */

/* After a ConnectionBind: the bytes left behind it go to the peer, and so does everything
 * after them; the STUN input buffer is no longer needed. */
static int sconn_start_pipe(struct av_sconn *c, struct stream *s, uint32_t id)
{
    if (!av_tcp_bind(c->w->tcp_relay, id, s, &c->pipe))
        return -ECONNRESET;
    c->piped = true;
    struct slice rest = buf_slice(&c->in);
    int rc = rest.len ? av_tcp_conn_client_data(c->pipe, rest.p, rest.len) : 0;
    buf_fini(&c->in);
    return rc;
}

static int sconn_on_data(struct stream *s, const uint8_t *data, size_t len, void *arg)
{
    struct av_sconn *c = arg;
    struct av_worker *w = c->w;
    if (c->piped)
        return c->pipe ? av_tcp_conn_client_data(c->pipe, data, len) : -ECONNRESET;
    if (buf_append(&c->in, data, len) < 0)
        return -EMSGSIZE;
    for (;;) {
        struct slice b = buf_slice(&c->in);
        ssize_t need = stun_frame_len(b.p, b.len);
        if (need == -EAGAIN)
            break;
        if (need < 0)
            return -EBADMSG;
        if ((size_t)need > c->in.cap)
            return -EMSGSIZE;
        if (b.len < (size_t)need)
            break;
        uint64_t now_ms = uv_now(w->loop);
        struct av_turn_in in = {&c->peer, c->id,  AV_TRANSPORT_TCP, c->side,
                                s,        now_ms, time(NULL),       c->tls};
        struct av_turn_out out = {.reply = w->reply, .reply_cap = sizeof(w->reply)};
        av_turn_input(w->turn, &in, b.p, (size_t)need, &out);
        if (out.reply_len && stream_write(s, out.reply, out.reply_len) < 0)
            w->tx_dropped++;
        if (out.relay_alloc)
            relay_send(w, out.relay_alloc, &out.relay_peer, out.relay_data);
        buf_consume(&c->in, (size_t)need);
        if (out.bind_id)
            return sconn_start_pipe(c, s, out.bind_id);
    }
    buf_compact(&c->in);
    return 0;
}

static void sconn_on_drain(struct stream *s, void *arg)
{
    struct av_sconn *c = arg;
    if (c->pipe)
        av_tcp_conn_client_drained(c->pipe);
}

static void sconn_on_close(struct stream *s, int err, const char *why, void *arg)
{
    struct av_sconn *c = arg;
    struct av_worker *w = c->w;
    if (c->pipe)
        av_tcp_conn_client_closed(c->pipe, err);
    /* RFC 8656 3.1: the allocation of a TCP/TLS client ends with its connection. */
    struct av_alloc *a = av_alloc_find(av_turn_table(w->turn), &c->peer, c->id, AV_TRANSPORT_TCP);
    if (a) {
        a->conn = NULL;
        av_alloc_remove(av_turn_table(w->turn), a);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    buf_fini(&c->in);
    free(c);
    worker_unref(w);
}

static void on_tcp_connection(uv_stream_t *server, int status)
{
    struct av_tcp_listener *l = container_of((uv_tcp_t *)server, struct av_tcp_listener, tcp);
    struct av_worker *w = l->w;
    if (status < 0)
        return;
    struct av_sconn *c = calloc(1, sizeof(*c));
    if (!c || buf_init(&c->in, STREAM_BUF) < 0) {
        free(c);
        uv_tcp_t tmp;
        uv_tcp_init(w->loop, &tmp);
        if (uv_accept(server, (uv_stream_t *)&tmp) == 0)
            uv_close((uv_handle_t *)&tmp, NULL);
        return;
    }
    c->w = w;
    c->id = l->id;
    c->side = l->side;
    c->tls = l->tls;
    struct stream_opts o = {
        .tls = l->tls ? w->tls : NULL, .handshake_timeout_ms = 10000, .idle_timeout_ms = 0};
    static const struct stream_cbs cbs = {
        .on_data = sconn_on_data, .on_drain = sconn_on_drain, .on_close = sconn_on_close};
    if (stream_accept(server, &o, &cbs, c, &c->s) < 0) {
        buf_fini(&c->in);
        free(c);
        return;
    }
    w->open_handles++;
    c->peer = *stream_peer(c->s);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
}

/* ---- timers, async, lifecycle ---- */

static void fold_stats(struct av_worker *w)
{
    const struct av_metrics *m = w->mx;
    struct av_turn_stats *s = av_turn_stats(w->turn), *f = &w->folded;
#define FOLD(field, metric)                                                                        \
    do {                                                                                           \
        metric_add(m->metric, s->field - f->field);                                                \
        f->field = s->field;                                                                       \
    } while (0)
    FOLD(pkts_to_peer, pkts_to_peer);
    FOLD(pkts_to_client, pkts_to_client);
    FOLD(bytes_to_peer, bytes_to_peer);
    FOLD(bytes_to_client, bytes_to_client);
    FOLD(dropped_no_perm, dropped_no_perm);
    FOLD(dropped_bandwidth, dropped_bandwidth);
    FOLD(unauth_limited, unauth_limited);
    FOLD(amplification_dropped, amplification_dropped);
    FOLD(quota_user, quota_user);
    FOLD(quota_total, quota_total);
    FOLD(quota_cred, quota_cred);
    FOLD(new_peers_limited, new_peers_limited);
    FOLD(dropped_pkt_rate, dropped_pkt_rate);
    FOLD(redirected, redirected);
    FOLD(bindings, bindings);
    FOLD(allocs_ok, allocs_ok);
    FOLD(errors, errors);
    for (int i = 0; i < AV_AUTH_NREASONS; i++)
        FOLD(auth_fail[i], auth_fail[i]);
    for (int i = 1; i < AV_DENY_NREASONS; i++)
        FOLD(denied[i], denied[i]);
#undef FOLD
    const struct av_tcp_stats *ts = av_tcp_relay_stats(w->tcp_relay);
    struct av_tcp_stats *tf = &w->tcp_folded;
    metric_add(m->tcp_active, (uint64_t)(ts->active - tf->active));
    metric_add(m->tcp_total, ts->total - tf->total);
    metric_add(m->tcp_failed, ts->failed - tf->failed);
    metric_add(m->bytes_to_peer, ts->bytes_to_peer - tf->bytes_to_peer);
    metric_add(m->bytes_to_client, ts->bytes_to_client - tf->bytes_to_client);
    *tf = *ts;
    metric_add(m->dropped_send, w->tx_dropped - w->tx_dropped_folded);
    w->tx_dropped_folded = w->tx_dropped;
    size_t na, np, nc;
    av_alloc_counts(av_turn_table(w->turn), &na, &np, &nc);
    metric_add(m->allocs, (uint64_t)((int64_t)na - w->g_allocs));
    metric_add(m->perms, (uint64_t)((int64_t)np - w->g_perms));
    metric_add(m->chans, (uint64_t)((int64_t)nc - w->g_chans));
    w->g_allocs = (int64_t)na;
    w->g_perms = (int64_t)np;
    w->g_chans = (int64_t)nc;
    __atomic_store_n(&w->allocs_now, (int64_t)na, __ATOMIC_RELAXED);
}

static void on_tick(uv_timer_t *t)
{
    struct av_worker *w = container_of(t, struct av_worker, tick);
    av_turn_sweep(w->turn, uv_now(w->loop));
    av_turn_enforce(w->turn, time_wall_s()); /* revocations: within a tick (250 ms) */
    fold_stats(w);
}

static void handle_closed(uv_handle_t *h)
{
    worker_unref(h->data);
}

static void udp_closed(uv_handle_t *h)
{
    struct av_udp_listener *l = container_of((uv_poll_t *)h, struct av_udp_listener, poll);
    close(l->fd);
    worker_unref(l->w);
}

static void worker_close_all(struct av_worker *w)
{
    if (w->closing)
        return;
    w->closing = true;
    tx_flush(w);
    fold_stats(w);
    /* Allocations go first (their relay sockets close through io_close). */
    av_alloc_clear(av_turn_table(w->turn));
    relay_idle_close_all(w);
    for (struct av_sconn *c = w->conns; c; c = c->next)
        stream_close(c->s, -ECANCELED, "shutting down");
    for (size_t i = 0; i < w->n_udp; i++) {
        uv_close((uv_handle_t *)&w->udp[i].poll, udp_closed);
    }
    for (size_t i = 0; i < w->n_tcp; i++) {
        w->tcp[i].tcp.data = w;
        uv_close((uv_handle_t *)&w->tcp[i].tcp, handle_closed);
    }
    uv_close((uv_handle_t *)&w->check, handle_closed);
    uv_close((uv_handle_t *)&w->tick, handle_closed);
    uv_close((uv_handle_t *)&w->async, handle_closed);
}

static void on_async(uv_async_t *h)
{
    struct av_worker *w = container_of(h, struct av_worker, async);
    const struct av_runtime *rt = __atomic_load_n(&w->pending_rt, __ATOMIC_ACQUIRE);
    if (rt && rt != w->rt) {
        w->rt = rt;
        av_turn_set_cfg(w->turn, &rt->turn);
    }
    const struct logger *lg = __atomic_load_n(&w->pending_log, __ATOMIC_ACQUIRE);
    if (lg && lg != w->log) {
        w->log = lg;
        av_turn_set_logger(w->turn, lg);
        av_tcp_relay_set_logger(w->tcp_relay, lg);
    }
    if (__atomic_load_n(&w->stop_requested, __ATOMIC_ACQUIRE))
        worker_close_all(w);
}

static int udp_listen(struct av_worker *w, const struct addr *a, uint16_t id, uint8_t side)
{
    if (w->n_udp >= AV_MAX_LISTENERS)
        return -ENOSPC;
    int fd = socket(addr_family(a), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1, rc = 0;
    int sz = (int)w->socket_buffer;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (w->count > 1 && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        rc = -errno;
    if (sz > 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    }
    if (addr_family(a) == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (rc == 0 && bind(fd, &a->u.sa, addr_len(a)) < 0)
        rc = -errno;
    struct av_udp_listener *l = &w->udp[w->n_udp];
    if (rc == 0)
        rc = uv_poll_init(w->loop, &l->poll, fd);
    if (rc) {
        close(fd);
        return rc;
    }
    l->fd = fd;
    l->id = id;
    l->side = side;
    l->w = w;
    w->n_udp++;
    w->open_handles++;
    uv_poll_start(&l->poll, UV_READABLE, on_udp_readable);
    return 0;
}

static int tcp_listen(struct av_worker *w, const struct addr *a, uint16_t id, uint8_t side,
                      bool tls)
{
    if (w->n_tcp >= AV_MAX_LISTENERS)
        return -ENOSPC;
    struct av_tcp_listener *l = &w->tcp[w->n_tcp];
    l->id = id;
    l->side = side;
    l->tls = tls;
    l->w = w;
    int rc = stream_listen(w->loop, &l->tcp, a, 511, false, on_tcp_connection);
    if (rc)
        return rc;
    w->n_tcp++;
    w->open_handles++;
    return 0;
}

static int open_listeners(struct av_worker *w, const struct av_worker_opts *o)
{
    const struct av_side_cfg *sides[2] = {&o->cfg->external, &o->cfg->internal};
    uint16_t id = 0;
    char as[ADDR_STRLEN];
    for (int s = 0; s < 2; s++) {
        const struct av_side_cfg *sc = sides[s];
        for (size_t i = 0; i < sc->n_listen; i++, id++) {
            int rc = udp_listen(w, &sc->listen[i], id, (uint8_t)s);
            if (!rc && o->streams)
                rc = tcp_listen(w, &sc->listen[i], (uint16_t)(id + AV_MAX_LISTENERS), (uint8_t)s,
                                false);
            if (rc) {
                LOGE(w->log, NULL, "cannot listen on %s: %s", addr_format(&sc->listen[i], as),
                     uv_strerror(rc));
                return rc;
            }
        }
        for (size_t i = 0; o->streams && i < sc->n_tcp_listen; i++, id++) {
            int rc = tcp_listen(w, &sc->tcp_listen[i], (uint16_t)(id + AV_MAX_LISTENERS),
                                (uint8_t)s, false);
            if (rc) {
                LOGE(w->log, NULL, "cannot listen on TCP %s: %s",
                     addr_format(&sc->tcp_listen[i], as), uv_strerror(rc));
                return rc;
            }
        }
        for (size_t i = 0; o->streams && w->tls && i < sc->n_tls_listen; i++, id++) {
            int rc = tcp_listen(w, &sc->tls_listen[i], (uint16_t)(id + AV_MAX_LISTENERS),
                                (uint8_t)s, true);
            if (rc) {
                LOGE(w->log, NULL, "cannot listen on TLS %s: %s",
                     addr_format(&sc->tls_listen[i], as), uv_strerror(rc));
                return rc;
            }
        }
    }
    return 0;
}

int av_worker_create(uv_loop_t *loop, const struct av_worker_opts *o, struct av_worker **out)
{
    struct av_worker *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->loop = loop;
    /* The config is freed on reload: keep what the sockets need by value. */
    w->port_min = o->cfg->relay.port_min;
    w->port_max = o->cfg->relay.port_max;
    w->socket_buffer = o->cfg->relay.socket_buffer;
    w->rt = o->rt;
    w->sh = o->shared;
    w->mx = o->metrics;
    w->log = o->log;
    w->index = o->index;
    w->count = o->count;
    w->port_cursor = 0;
    w->gso = getenv("AV_EDGE_NO_GSO") == NULL;
    if (o->tls) {
        tls_ctx_ref(o->tls);
        w->tls = o->tls;
    }
    for (size_t i = 0; i < o->cfg->relay.n_addresses; i++) {
        const struct addr *ra = &o->cfg->relay.addresses[i];
        w->relay_addr[addr_family(ra) == AF_INET6] = *ra;
    }
    for (int i = 0; i < RX_BATCH; i++) {
        w->rx_iov[i] = (struct iovec){w->rx_buf[i] + AV_HEADROOM, SLOT - AV_HEADROOM - AV_TAILROOM};
        w->rx_msg[i].msg_hdr = (struct msghdr){.msg_name = &w->rx_addr[i].u,
                                               .msg_namelen = sizeof(w->rx_addr[i].u),
                                               .msg_iov = &w->rx_iov[i],
                                               .msg_iovlen = 1};
    }
    for (int i = 0; i < TXQ; i++) {
        w->tx_iov[i].iov_base = w->tx_buf[i];
        w->tx_msg[i].msg_hdr =
            (struct msghdr){.msg_name = &w->tx[i].to.u, .msg_iov = &w->tx_iov[i], .msg_iovlen = 1};
    }
    struct av_relay_io io = {.open = io_open,
                             .close = io_close,
                             .release = io_release,
                             .arg = w,
                             .connect = io_connect,
                             .conn_alloc = io_conn_alloc};
    int rc = av_turn_create(&w->turn, &o->rt->turn, o->shared, &io, o->log);
    struct av_tcp_relay_hooks hooks = {worker_ref, worker_unref_cb, w};
    if (!rc) {
        rc = av_tcp_relay_create(loop, w->turn, &hooks, o->log, &w->tcp_relay);
        if (rc)
            av_turn_destroy(w->turn);
    }
    if (rc) {
        tls_ctx_unref(w->tls);
        free(w);
        return rc;
    }
    if (o->cfg->auth.unauth_rate)
        av_turn_set_unauth_limit(w->turn, o->cfg->auth.unauth_rate, o->cfg->auth.unauth_burst);
    uv_check_init(loop, &w->check);
    uv_timer_init(loop, &w->tick);
    uv_async_init(loop, &w->async, on_async);
    w->check.data = w->tick.data = w->async.data = w;
    w->open_handles += 3;
    uv_check_start(&w->check, on_check);
    uv_timer_start(&w->tick, on_tick, 250, 250);
    rc = open_listeners(w, o);
    if (rc) {
        worker_close_all(w);
        return rc;
    }
    *out = w;
    return 0;
}

void av_worker_set_runtime(struct av_worker *w, const struct av_runtime *rt)
{
    __atomic_store_n(&w->pending_rt, rt, __ATOMIC_RELEASE);
    uv_async_send(&w->async);
}

void av_worker_set_tls(struct av_worker *w, struct tls_ctx *tls)
{
    if (!w->tls || !tls)
        return; /* no TLS listener: nothing to swap */
    tls_ctx_ref(tls);
    tls_ctx_unref(w->tls);
    w->tls = tls;
}

void av_worker_set_logger(struct av_worker *w, const struct logger *log)
{
    __atomic_store_n(&w->pending_log, log, __ATOMIC_RELEASE);
    uv_async_send(&w->async);
}

void av_worker_close(struct av_worker *w)
{
    worker_close_all(w);
}

void av_worker_stop_async(struct av_worker *w)
{
    __atomic_store_n(&w->stop_requested, true, __ATOMIC_RELEASE);
    uv_async_send(&w->async);
}

int64_t av_worker_allocations(const struct av_worker *w)
{
    return __atomic_load_n(&w->allocs_now, __ATOMIC_RELAXED);
}
