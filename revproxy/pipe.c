/* One direction of the proxy's pipe, shared by the request half (client to upstream) and
 * the response half (upstream to client): bytes go on only as far as the writer has room,
 * the reader stops while they wait, and lazy deadlines keep timers cheap. */
#include <errno.h>
#include <string.h>

#include "revproxy/proxy_int.h"

void rp_lazy_set(uv_timer_t *t, uint64_t *deadline, uv_timer_cb cb, uint64_t ms)
{
    *deadline = uv_now(t->loop) + ms;
    if (!uv_is_active((uv_handle_t *)t) || uv_timer_get_due_in(t) > ms)
        uv_timer_start(t, cb, ms, 0);
}

bool rp_lazy_due(uv_timer_t *t, uint64_t *deadline, uv_timer_cb cb)
{
    if (*deadline == 0)
        return false;
    uint64_t now = uv_now(t->loop);
    if (now < *deadline) {
        uv_timer_start(t, cb, *deadline - now, 0);
        return false;
    }
    *deadline = 0;
    return true;
}

/* Asks s for on_drain once its queue falls below half. stream_write refuses (and arms
 * on_drain) before it looks at the data whenever bytes are queued and len exceeds the
 * room, so the oversized length is never read. */
static void arm_drain(struct stream *s)
{
    static const uint8_t none;
    if (stream_queued(s))
        (void)stream_write(s, &none, RP_WCAP + 1);
}

static int sink_write(const struct rp_sink *k, const uint8_t *p, size_t n)
{
    int rc = stream_write(k->s, p, n);
    if (rc >= 0 && k->sent)
        metric_add(k->sent, (double)n);
    return rc;
}

void rp_sink_flush(const struct rp_sink *k)
{
    struct buf *o = k->stage;
    if (o && o->wr) {
        sink_write(k, o->data, o->wr);
        o->rd = o->wr = 0;
    }
}

int rp_sink_put(const struct rp_sink *k, const uint8_t *p, size_t n)
{
    struct buf *o = k->stage;
    if (!o)
        return sink_write(k, p, n);
    if (buf_room(o) < n) {
        rp_sink_flush(k);
        sink_write(k, p, n); /* a closing client: its on_close ends the exchange */
        return 0;
    }
    memcpy(o->data + o->wr, p, n);
    o->wr += n;
    return 0;
}

size_t rp_sink_room(const struct rp_sink *k, size_t need)
{
    size_t q = stream_queued(k->s);
    size_t room = q >= RP_WCAP ? 0 : RP_WCAP - q;
    size_t staged = k->stage ? k->stage->wr : 0;
    room = room > staged ? room - staged : 0;
    if (room >= need)
        return room;
    rp_sink_flush(k);
    arm_drain(k->s);
    return 0;
}

enum rp_flow rp_pipe_copy(const struct rp_sink *k, const uint8_t *p, size_t n, struct rp_step *st)
{
    *st = (struct rp_step){0};
    size_t room = rp_sink_room(k, 1);
    rp_sink_flush(k);
    if (room == 0)
        return RP_FLOW_FULL;
    size_t take = n < room ? n : room;
    if (sink_write(k, p, take) < 0)
        return RP_FLOW_GONE;
    st->used = take;
    return RP_FLOW_MOVED;
}

enum rp_flow rp_pipe_feed(const struct rp_sink *k, struct http_reader *r, const uint8_t *p,
                          size_t n, size_t need, bool forward, struct rp_step *st)
{
    *st = (struct rp_step){0};
    size_t room = rp_sink_room(k, need);
    if (room == 0)
        return RP_FLOW_FULL;
    /* A head is read whole (it has its room: need); body bytes only within the room. */
    size_t take = need > 1 || n < room ? n : room;
    ssize_t got = http_reader_feed(r, p, take, &st->ev);
    if (got < 0) {
        st->err = got;
        return RP_FLOW_BAD;
    }
    st->used = (size_t)got;
    if (got > 0 && forward && !(st->ev & HTTP_EV_DROP) && rp_sink_put(k, p, (size_t)got) < 0)
        return RP_FLOW_GONE;
    return RP_FLOW_MOVED;
}

int rp_half_data(const struct rp_half *h, const uint8_t *data, size_t len)
{
    if (buf_len(h->in)) {
        if (buf_append(h->in, data, len) < 0)
            return -ENOBUFS;
        h->resume(h->owner);
        if (buf_len(h->in) && !*h->closing)
            stream_read_stop(h->s);
        return 0;
    }
    size_t n = h->consume(h->owner, data, len);
    if (n < len && !*h->closing) {
        if (buf_append(h->in, data + n, len - n) < 0)
            return -ENOBUFS;
        stream_read_stop(h->s);
    }
    return 0;
}

bool rp_half_resume(const struct rp_half *h)
{
    if (*h->closing)
        return false;
    if (buf_len(h->in)) {
        size_t n = h->consume(h->owner, h->in->data + h->in->rd, buf_len(h->in));
        if (*h->closing)
            return false;
        buf_consume(h->in, n);
    }
    return buf_len(h->in) == 0;
}
