/* The access edge's UDP sockets: raw non-blocking sockets on uv_poll_t rather than uv_udp_t.
 *
 * Receiving: one recvmmsg per readiness, and another only when the batch came back full
 * (epoll is level-triggered: what is left wakes the loop again). libuv's UDP reader reads
 * until EAGAIN, a system call that returns nothing after every batch.
 * Sending: datagrams queue during the loop turn and leave in one sendmmsg per socket from a
 * uv_idle flush that runs before the loop next polls (so nothing waits on I/O). A full
 * socket buffer keeps the rest queued and waits for the socket to be writable; past
 * AE_UDPQ_MSGS or AE_UDPQ_BYTES a datagram is dropped and counted (sip_dropped_total), as
 * a lost datagram is on the wire (SIP over UDP retransmits). A datagram the kernel refuses
 * at the flush (e.g. no route) is dropped and counted: the sender no longer hears of it. */
#include "access-edge/ae_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/metrics.h"

static void udp_flush(struct ae_udp *u);

static void on_flush_idle(uv_idle_t *h)
{
    struct ae_udp *u = h->data;
    uv_idle_stop(h);
    udp_flush(u);
}

static void udp_watch(struct ae_udp *u, bool writable);

static void on_udp_poll(uv_poll_t *p, int status, int events)
{
    struct ae_udp *u = p->data;
    struct ae *ae = u->ae;
    if (status < 0)
        return;
    if (events & UV_WRITABLE)
        udp_flush(u);
    if (!(events & UV_READABLE))
        return;
    for (int round = 0; round < AE_UDP_RX_ROUNDS; round++) {
        for (int i = 0; i < AE_UDP_RX_BATCH; i++) {
            ae->rx_iov[i].iov_base = ae->mmsg + (size_t)i * (AE_MMSG_BUF / AE_UDP_RX_BATCH);
            ae->rx_iov[i].iov_len = AE_MMSG_BUF / AE_UDP_RX_BATCH;
            ae->rx_msg[i].msg_hdr = (struct msghdr){.msg_name = &ae->rx_from[i],
                                                    .msg_namelen = sizeof ae->rx_from[i],
                                                    .msg_iov = &ae->rx_iov[i],
                                                    .msg_iovlen = 1};
        }
        int n = recvmmsg(u->fd, ae->rx_msg, AE_UDP_RX_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            break;
        for (int i = 0; i < n && !u->closed; i++)
            if (!(ae->rx_msg[i].msg_hdr.msg_flags & MSG_TRUNC))
                ae_udp_input(u, (const struct sockaddr *)&ae->rx_from[i],
                             (const uint8_t *)ae->rx_iov[i].iov_base, ae->rx_msg[i].msg_len);
        if (n < AE_UDP_RX_BATCH || u->closed)
            break;
    }
}

static void udp_watch(struct ae_udp *u, bool writable)
{
    if (u->closed || writable == u->want_write)
        return;
    u->want_write = writable;
    uv_poll_start(&u->poll, UV_READABLE | (writable ? UV_WRITABLE : 0), on_udp_poll);
}

/* Sends what is queued; on a full socket buffer, keeps the rest for when it is writable. */
static void udp_flush(struct ae_udp *u)
{
    size_t sent = 0;
    while (sent < u->nq) {
        for (size_t i = sent; i < u->nq; i++) {
            struct ae_udp_out *o = &u->q[i];
            u->iov[i] = (struct iovec){u->qbuf + o->off, o->len};
            u->mh[i].msg_hdr = (struct msghdr){.msg_name = &o->to.u.sa,
                                               .msg_namelen = addr_len(&o->to),
                                               .msg_iov = &u->iov[i],
                                               .msg_iovlen = 1};
        }
        int r = sendmmsg(u->fd, u->mh + sent, (unsigned)(u->nq - sent), MSG_DONTWAIT);
        if (r > 0) {
            sent += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS))
            break;
        /* This datagram cannot go (e.g. an address the kernel refuses): drop it alone. */
        metric_inc(u->ae->m_dropped);
        sent++;
    }
    if (sent == u->nq) {
        u->nq = 0;
        u->qused = 0;
    } else if (sent > 0) {
        size_t base = u->q[sent].off;
        memmove(u->qbuf, u->qbuf + base, u->qused - base);
        u->qused -= base;
        memmove(u->q, u->q + sent, (u->nq - sent) * sizeof u->q[0]);
        u->nq -= sent;
        for (size_t i = 0; i < u->nq; i++)
            u->q[i].off -= base;
    }
    udp_watch(u, u->nq > 0);
}

int ae_udp_send(struct ae_udp *u, const struct addr *to, const uint8_t *p, size_t n)
{
    if (u->closed)
        return -EPIPE;
    /* The one failure known before the kernel sees the datagram: the caller still hears it
     * (a flow over the other family gets its 430). An IPv6 socket is dual-stack: it takes
     * IPv4 destinations. */
    if (addr_family(to) == AF_INET6 && addr_family(&u->local) == AF_INET)
        return -EAFNOSUPPORT;
    if (u->nq == AE_UDPQ_MSGS || u->qused + n > AE_UDPQ_BYTES)
        udp_flush(u); /* a large burst: what is queued goes now */
    if (n > AE_UDPQ_BYTES || u->nq == AE_UDPQ_MSGS || u->qused + n > AE_UDPQ_BYTES) {
        metric_inc(u->ae->m_dropped);
        return -ENOBUFS;
    }
    struct ae_udp_out *o = &u->q[u->nq++];
    o->to = *to;
    o->off = u->qused;
    o->len = n;
    memcpy(u->qbuf + u->qused, p, n);
    u->qused += n;
    if (!u->want_write)
        uv_idle_start(&u->flush, on_flush_idle);
    return 0;
}

int ae_udp_open(struct ae *ae, struct ae_udp *u, uint8_t side, const struct addr *a)
{
    memset(u, 0, sizeof *u);
    u->ae = ae;
    u->side = side;
    u->local = *a;
    int fd = socket(addr_family(a), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1, sz = 4 * 1024 * 1024, rc = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, &a->u.sa, addr_len(a)) < 0)
        rc = -errno;
    if (rc == 0) {
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
        u->qbuf = malloc(AE_UDPQ_BYTES);
        if (!u->qbuf)
            rc = -ENOMEM;
    }
    if (rc == 0)
        rc = uv_poll_init_socket(ae->loop, &u->poll, fd);
    if (rc < 0) {
        free(u->qbuf);
        u->qbuf = NULL;
        close(fd);
        return rc;
    }
    u->fd = fd;
    uv_idle_init(ae->loop, &u->flush);
    u->poll.data = u->flush.data = u;
    rc = uv_poll_start(&u->poll, UV_READABLE, on_udp_poll);
    return rc;
}

/* What is queued goes (best effort), then both handles close; the caller counts them. */
void ae_udp_close(struct ae_udp *u, uv_close_cb cb, void *data)
{
    if (u->closed)
        return;
    udp_flush(u);
    u->closed = true;
    uv_poll_stop(&u->poll);
    u->poll.data = u->flush.data = data;
    uv_close((uv_handle_t *)&u->poll, cb);
    uv_close((uv_handle_t *)&u->flush, cb);
    close(u->fd); /* the poll is stopped: libuv no longer watches it */
    u->fd = -1;
    free(u->qbuf);
    u->qbuf = NULL;
    u->nq = u->qused = 0;
}
