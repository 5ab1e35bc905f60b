/* Partner lookup with c-ares driven by libuv poll handles and one timer (see ae_dns.h). */
#include "access-edge/ae_dns.h"

#include <ares.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DNS_SOCKS 8
#define DNS_CACHE 256
#define DNS_TARGETS 4 /* SRV targets kept per domain, in RFC 2782 order */

struct dns_sock {
    uv_poll_t poll;
    ares_socket_t fd;
    bool used;
    struct ae_dns *d;
};

struct dns_cache {
    char domain[128];
    int status;
    struct addr to[DNS_TARGETS];
    uint64_t down_until[DNS_TARGETS]; /* a connection to it failed: skipped until then */
    size_t nto;
    uint64_t at_ms;
};

struct ae_dns {
    uv_loop_t *loop;
    ares_channel ch;
    uv_timer_t timer;
    struct dns_sock socks[DNS_SOCKS];
    struct dns_cache cache[DNS_CACHE];
    size_t ncache;
    int open_handles;
    bool closing;
};

/* One SRV target being resolved to its address. */
struct dns_target {
    struct dns_q *q;
    char host[256];
    uint16_t port;
    struct addr addr; /* family 0 until resolved */
};

struct dns_q {
    struct ae_dns *d;
    char domain[128];
    struct dns_target t[DNS_TARGETS];
    size_t nt, pending;
    int status; /* of the last address lookup that failed */
    ae_dns_cb cb;
    void *arg;
};

static void on_timer(uv_timer_t *t);

static void rearm(struct ae_dns *d)
{
    struct timeval tv, *tvp = ares_timeout(d->ch, NULL, &tv);
    if (tvp)
        uv_timer_start(&d->timer, on_timer, (uint64_t)tvp->tv_sec * 1000 + tvp->tv_usec / 1000 + 1,
                       0);
    else
        uv_timer_stop(&d->timer);
}

static void on_timer(uv_timer_t *t)
{
    struct ae_dns *d = t->data;
    ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    rearm(d);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct dns_sock *s = p->data;
    struct ae_dns *d = s->d;
    ares_socket_t fd = s->fd;
    if (status < 0)
        ares_process_fd(d->ch, fd, fd);
    else
        ares_process_fd(d->ch, (events & UV_READABLE) ? fd : ARES_SOCKET_BAD,
                        (events & UV_WRITABLE) ? fd : ARES_SOCKET_BAD);
    rearm(d);
}

static void on_closed(uv_handle_t *h)
{
    struct ae_dns *d = h->data;
    if (--d->open_handles == 0)
        free(d);
}

static void on_sock_closed(uv_handle_t *h)
{
    struct dns_sock *s = h->data;
    s->used = false;
    struct ae_dns *d = s->d;
    if (--d->open_handles == 0)
        free(d);
}

/* c-ares tells us which sockets to watch. */
static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct ae_dns *d = data;
    struct dns_sock *s = NULL;
    for (size_t i = 0; i < DNS_SOCKS; i++)
        if (d->socks[i].used && d->socks[i].fd == fd)
            s = &d->socks[i];
    if (!readable && !writable) {
        if (s && !uv_is_closing((uv_handle_t *)&s->poll)) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, on_sock_closed);
        }
        return;
    }
    if (!s) {
        for (size_t i = 0; i < DNS_SOCKS && !s; i++)
            if (!d->socks[i].used)
                s = &d->socks[i];
        if (!s || uv_poll_init_socket(d->loop, &s->poll, fd) < 0)
            return; /* c-ares times the query out */
        s->used = true;
        s->fd = fd;
        s->d = d;
        s->poll.data = s;
        d->open_handles++;
    }
    uv_poll_start(&s->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), on_poll);
}

int ae_dns_create(uv_loop_t *loop, const char *servers, struct ae_dns **out)
{
    struct ae_dns *d = calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    d->loop = loop;
    struct ares_options o = {0};
    o.sock_state_cb = sock_state;
    o.sock_state_cb_data = d;
    o.timeout = 1000;
    o.tries = 2;
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
    if (ares_init_options(&d->ch, &o, mask) != ARES_SUCCESS) {
        free(d);
        return -EIO;
    }
    if (servers && *servers && ares_set_servers_ports_csv(d->ch, servers) != ARES_SUCCESS) {
        ares_destroy(d->ch);
        free(d);
        return -EINVAL;
    }
    uv_timer_init(loop, &d->timer);
    d->timer.data = d;
    d->open_handles = 1;
    *out = d;
    return 0;
}

static void cache_put(struct ae_dns *d, const char *domain, int status, const struct addr *to,
                      size_t nto)
{
    struct dns_cache *c = NULL;
    for (size_t i = 0; i < d->ncache && !c; i++)
        if (strcasecmp(d->cache[i].domain, domain) == 0)
            c = &d->cache[i];
    if (!c)
        c = &d->cache[d->ncache < DNS_CACHE ? d->ncache++ : (size_t)(uv_now(d->loop) % DNS_CACHE)];
    memset(c, 0, sizeof(*c));
    snprintf(c->domain, sizeof(c->domain), "%s", domain);
    c->status = status;
    for (size_t i = 0; i < nto && i < DNS_TARGETS; i++)
        c->to[c->nto++] = to[i];
    c->at_ms = uv_now(d->loop);
}

/* The first target not marked down; if all are, the one that comes back soonest. */
static const struct addr *cache_pick(const struct dns_cache *c, uint64_t now)
{
    size_t best = 0;
    for (size_t i = 0; i < c->nto; i++) {
        if (c->down_until[i] <= now)
            return &c->to[i];
        if (c->down_until[i] < c->down_until[best])
            best = i;
    }
    return c->nto ? &c->to[best] : NULL;
}

int ae_dns_cached(struct ae_dns *d, const char *domain, uint64_t ttl_ms, struct addr *to)
{
    uint64_t now = uv_now(d->loop);
    for (size_t i = 0; i < d->ncache; i++) {
        struct dns_cache *c = &d->cache[i];
        if (strcasecmp(c->domain, domain) != 0 || now - c->at_ms > ttl_ms)
            continue;
        const struct addr *a = c->status < 0 ? NULL : cache_pick(c, now);
        if (!a)
            return -ENOENT;
        *to = *a;
        return 1;
    }
    return 0;
}

void ae_dns_target_failed(struct ae_dns *d, const struct addr *to, uint64_t hold_ms)
{
    uint64_t until = uv_now(d->loop) + hold_ms;
    for (size_t i = 0; i < d->ncache; i++)
        for (size_t k = 0; k < d->cache[i].nto; k++)
            if (addr_eq(&d->cache[i].to[k], to))
                d->cache[i].down_until[k] = until;
}

static int map_status(int st)
{
    switch (st) {
    case ARES_SUCCESS:
        return 0;
    case ARES_ENODATA:
    case ARES_ENOTFOUND:
        return -ENOENT;
    case ARES_ETIMEOUT:
        return -ETIMEDOUT;
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION:
        return -ECANCELED;
    default:
        return -EIO;
    }
}

/* Every target's address lookup is back: the ones found, in SRV order, are the answer. */
static void finish(struct dns_q *q)
{
    struct addr to[DNS_TARGETS];
    size_t n = 0, first = 0;
    for (size_t i = 0; i < q->nt; i++)
        if (addr_family(&q->t[i].addr)) {
            if (!n)
                first = i;
            to[n++] = q->t[i].addr;
        }
    int status = n ? 0 : q->status;
    if (status != -ECANCELED)
        cache_put(q->d, q->domain, status, to, n);
    q->cb(status, n ? &to[0] : NULL, n ? q->t[first].host : "", q->arg);
    free(q);
}

/* One lookup of q fewer outstanding; the last one finishes q. */
static void settle(struct dns_q *q)
{
    if (--q->pending == 0)
        finish(q);
}

static void on_host(void *arg, int status, int timeouts, struct hostent *h)
{
    struct dns_target *t = arg;
    struct dns_q *q = t->q;
    if (status != ARES_SUCCESS || !h || !h->h_addr_list || !h->h_addr_list[0]) {
        q->status = map_status(status != ARES_SUCCESS ? status : ARES_ENODATA);
    } else if (h->h_addrtype == AF_INET) {
        t->addr.u.in4.sin_family = AF_INET;
        memcpy(&t->addr.u.in4.sin_addr, h->h_addr_list[0], 4);
        addr_set_port(&t->addr, t->port);
    } else {
        t->addr.u.in6.sin6_family = AF_INET6;
        memcpy(&t->addr.u.in6.sin6_addr, h->h_addr_list[0], 16);
        addr_set_port(&t->addr, t->port);
    }
    settle(q);
}

/* RFC 2782 order: lowest priority first, the heaviest first among equals (a partner's
 * edges are a few hosts, so no weighted random pick). */
static bool srv_before(const struct ares_srv_reply *a, const struct ares_srv_reply *b)
{
    return a->priority < b->priority || (a->priority == b->priority && a->weight > b->weight);
}

static void on_srv(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct dns_q *q = arg;
    struct ares_srv_reply *srv = NULL;
    if (status == ARES_SUCCESS)
        status = ares_parse_srv_reply(abuf, alen, &srv);
    if (status != ARES_SUCCESS || !srv) {
        q->status = map_status(status != ARES_SUCCESS ? status : ARES_ENODATA);
        finish(q);
        return;
    }
    /* Sorted (insertion sort, stable; a domain has a handful), the first DNS_TARGETS kept. */
    const struct ares_srv_reply *v[32];
    size_t n = 0;
    for (const struct ares_srv_reply *r = srv; r && n < 32; r = r->next) {
        size_t k = n++;
        for (; k > 0 && srv_before(r, v[k - 1]); k--)
            v[k] = v[k - 1];
        v[k] = r;
    }
    for (size_t i = 0; i < n && q->nt < DNS_TARGETS; i++) {
        struct dns_target *t = &q->t[q->nt++];
        t->q = q;
        snprintf(t->host, sizeof(t->host), "%s", v[i]->host);
        t->port = v[i]->port;
    }
    ares_free_data(srv);
    /* One hold for this loop, so a lookup answered at once cannot finish q under it. */
    struct ae_dns *d = q->d;
    q->pending = q->nt + 1;
    for (size_t i = 0; i < q->nt; i++)
        ares_gethostbyname(d->ch, q->t[i].host, AF_INET, on_host, &q->t[i]);
    settle(q);
    rearm(d);
}

int ae_dns_partner(struct ae_dns *d, const char *domain, ae_dns_cb cb, void *arg)
{
    if (!d || d->closing || !domain || strlen(domain) > 100)
        return -EINVAL;
    struct dns_q *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->d = d;
    q->cb = cb;
    q->arg = arg;
    snprintf(q->domain, sizeof(q->domain), "%s", domain);
    char name[160];
    snprintf(name, sizeof(name), "_sipfederationtls._tcp.%s", domain);
    ares_query(d->ch, name, ns_c_in, ns_t_srv, on_srv, q);
    rearm(d);
    return 0;
}

void ae_dns_destroy(struct ae_dns *d)
{
    if (!d || d->closing)
        return;
    d->closing = true;
    ares_destroy(d->ch); /* pending callbacks run with ARES_EDESTRUCTION */
    uv_timer_stop(&d->timer);
    uv_close((uv_handle_t *)&d->timer, on_closed);
}
