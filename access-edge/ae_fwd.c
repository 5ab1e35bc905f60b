/* The pure steps of forwarding a request: see ae_fwd.h. */
#include "access-edge/ae_fwd.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "access-edge/ae.h"

uint8_t ae_fwd_uri_transport(bool tcp, bool tls, uint16_t port, uint16_t *port_out)
{
    *port_out = port ? port : (tls ? 5061 : 5060);
    return tls ? AE_TP_TLS : tcp ? AE_TP_TCP : AE_TP_UDP;
}

enum ae_gate ae_fwd_gate(enum ae_method method, const struct ae_txn *t, bool draining)
{
    switch (method) {
    case AE_M_INVITE:
        if (t)
            return AE_GATE_INVITE_RETRANS; /* the 100 we sent was lost, or is on its way */
        return draining ? AE_GATE_DRAINING : AE_GATE_NEW_INVITE;
    case AE_M_CANCEL:
        if (!t)
            return AE_GATE_CANCEL_UNKNOWN;
        return t->final || t->cancelled ? AE_GATE_CANCEL_DONE : AE_GATE_CANCEL_FORWARD;
    case AE_M_ACK:
        return t && t->local_final ? AE_GATE_ABSORB_ACK : AE_GATE_FORWARD_ACK;
    default:
        return AE_GATE_FORWARD;
    }
}

/* Appends to out[*n..cap): -ENOSPC (and *n untouched) when it does not fit. */
__attribute__((format(printf, 4, 5))) static int put(char *out, size_t cap, size_t *n,
                                                     const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(out + *n, cap - *n, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= cap - *n)
        return -ENOSPC;
    *n += (size_t)k;
    return 0;
}

static int put_slice(char *out, size_t cap, size_t *n, struct slice s)
{
    if (s.len == 0)
        return 0; /* an unset slice (no pointer) adds nothing */
    if (s.len >= cap - *n)
        return -ENOSPC;
    memcpy(out + *n, s.p, s.len);
    *n += s.len;
    out[*n] = 0;
    return 0;
}

ssize_t ae_fwd_build_ins(const struct ae_fwd_ins *in, char *out, size_t cap)
{
    size_t n = 0;
    if (cap == 0)
        return -ENOSPC;
    out[0] = 0;
    if (put(out, cap, &n, "Via: SIP/2.0/%s %s;branch=%s%s%s%s\r\n", in->via_tp, in->via_host,
            in->branch, in->alias ? ";alias" : "", in->seal ? ";ae-th=" : "",
            in->seal ? in->seal : "") < 0 ||
        put_slice(out, cap, &n, in->routes) < 0 || put_slice(out, cap, &n, in->contacts) < 0 ||
        put_slice(out, cap, &n, in->record_route) < 0)
        return -ENOSPC;
    if (in->path_tok && *in->path_tok && in->path_uri &&
        put(out, cap, &n, "Path: <sip:%s@%s>\r\n", in->path_tok, in->path_uri) < 0)
        return -ENOSPC;
    if (put_slice(out, cap, &n, in->trust) < 0)
        return -ENOSPC;
    return (ssize_t)n;
}

ssize_t ae_fwd_record_route(const char *tok, const char *first, const char *second, char *out,
                            size_t cap)
{
    size_t n = 0;
    const char *at = *tok ? "@" : "";
    if (cap == 0 ||
        put(out, cap, &n, "Record-Route: <sip:%s%s%s>\r\nRecord-Route: <sip:%s%s%s>\r\n", tok, at,
            first, tok, at, second) < 0)
        return -ENOSPC;
    return (ssize_t)n;
}
