/* Validation of messages crossing the access edge, and the route decision (see sip_validate.h). */
#include "access-edge/sip_validate.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include <osipparser2/osip_parser.h>

#include "common/certname.h"
#include "common/sip/sip_osip.h"

struct sip_parsed {
    osip_message_t *msg;
    struct sip_osip_arena *arena; /* NULL: the tree is on the heap */
    struct sip_osip_mark mark;    /* in arena: where the tree begins */
};

const char *sip_source_name(enum sip_source s)
{
    switch (s) {
    case SIP_SRC_INTERNAL:
        return "AuthorizedServer";
    case SIP_SRC_REMOTE_USER:
        return "InternetUser";
    case SIP_SRC_PARTNER:
        return "DirectPartner";
    case SIP_SRC_DISCOVERED:
        return "AutoFederation";
    }
    return "InternetUser";
}

/* PROTOCOLS.md §1.3: the full set for remote users, federation without REGISTER/SERVICE. */
static const char *const methods_remote[] = {
    "REGISTER", "SUBSCRIBE", "NOTIFY",  "BENOTIFY", "SERVICE", "INVITE", "ACK",     "BYE", "CANCEL",
    "MESSAGE",  "INFO",      "OPTIONS", "REFER",    "PRACK",   "UPDATE", "PUBLISH", NULL,
};

bool sip_method_allowed(enum sip_source src, struct slice method)
{
    if (src == SIP_SRC_INTERNAL)
        return true;
    for (size_t i = 0; methods_remote[i]; i++) {
        if (!slice_eq_str(method, methods_remote[i]))
            continue;
        if (src != SIP_SRC_REMOTE_USER &&
            (slice_eq_str(method, "REGISTER") || slice_eq_str(method, "SERVICE")))
            return false;
        return true;
    }
    return false;
}

const char *sip_allow_list(enum sip_source src)
{
    if (src == SIP_SRC_REMOTE_USER || src == SIP_SRC_INTERNAL)
        return "REGISTER, SUBSCRIBE, NOTIFY, BENOTIFY, SERVICE, INVITE, ACK, BYE, CANCEL, "
               "MESSAGE, INFO, OPTIONS, REFER, PRACK, UPDATE, PUBLISH";
    return "SUBSCRIBE, NOTIFY, BENOTIFY, INVITE, ACK, BYE, CANCEL, MESSAGE, INFO, OPTIONS, "
           "REFER, PRACK, UPDATE, PUBLISH";
}

bool sip_policy_has_domain(const struct sip_policy *p, const char *domain, size_t len)
{
    for (size_t i = 0; i < p->ndomains; i++)
        if (strlen(p->domains[i]) == len && strncasecmp(p->domains[i], domain, len) == 0)
            return true;
    return false;
}

bool sip_policy_is_own(const struct sip_policy *p, const char *host, uint16_t port)
{
    struct addr a;
    if (!host || addr_parse(&a, host, port ? port : 5060) < 0)
        return false;
    if (port)
        addr_set_port(&a, port);
    for (size_t i = 0; i < p->nown; i++)
        if (addr_eq(&p->own[i], &a))
            return true;
    return false;
}

bool sip_cert_matches_domain(const char *const *names, size_t n, const char *domain)
{
    /* common/certname.h's domain suffix: the domain itself or a host inside it, labels
     * aligned; never a bare top-level label (every certificate would be "inside" it), never
     * a wildcard name (no host). */
    size_t dl = strlen(domain);
    for (size_t i = 0; i < n; i++)
        if (names[i] &&
            cert_name_match(domain, dl, names[i], strlen(names[i]), CERT_NAME_DOMAIN_SUFFIX))
            return true;
    return false;
}

/* Warning text is prefix followed by arg (a header name, a domain) when there is one. */
static int reject(struct sip_verdict *v, int status, const char *phrase, const char *reason,
                  const char *prefix, const char *arg)
{
    v->status = status;
    v->phrase = phrase;
    v->reason = reason;
    snprintf(v->text, sizeof(v->text), "%s%s", prefix, arg ? arg : "");
    return 1;
}

static uint16_t port_of(const char *s)
{
    if (!s || !*s)
        return 0;
    char *end;
    long n = strtol(s, &end, 10);
    return (*end || n <= 0 || n > 65535) ? 0 : (uint16_t)n;
}

/* Each Via value's sent-protocol names SIP (RFC 3261 §20.42: "SIP" SLASH "2.0" SLASH
 * transport, with LWS allowed around the slashes). osip2 skips the protocol name unread, so
 * "Via: Via: SIP/2.0/UDP ..." would pass; it is malformed. */
static bool via_protocols_ok(const struct sip_msg *m)
{
    for (uint16_t i = 0; i < m->nhdr; i++) {
        if (m->hdr[i].id != SIP_H_VIA)
            continue;
        struct slice v = sip_hdr_value(m, &m->hdr[i]);
        while (v.len) {
            size_t k = 0;
            while (k < v.len &&
                   (v.p[k] == ' ' || v.p[k] == '\t' || v.p[k] == '\r' || v.p[k] == '\n'))
                k++;
            size_t t = k;
            while (t < v.len && v.p[t] != '/' && v.p[t] != ' ' && v.p[t] != '\t' &&
                   v.p[t] != '\r' && v.p[t] != '\n')
                t++;
            if (t - k != 3 || strncasecmp((const char *)v.p + k, "SIP", 3) != 0)
                return false;
            size_t first = sip_value_first_len(v);
            if (first >= v.len)
                break;
            v = slice_make(v.p + first + 1, v.len - first - 1); /* past the comma */
        }
    }
    return true;
}

/* Checks that need only the raw index: sizes, header counts, mandatory headers, length. */
/* The headers every message carries once (Via at least once; Max-Forwards may be absent:
 * RFC 3261 §16.3 step 3, forwarding adds one, but never doubled), and one Content-Length. */
static int check_counts(const struct sip_msg *m, struct sip_verdict *v)
{
    static const enum sip_hdr_id single[] = {SIP_H_FROM, SIP_H_TO, SIP_H_CALL_ID, SIP_H_CSEQ,
                                             SIP_H_MAX_FORWARDS};
    if (m->count[SIP_H_VIA] == 0)
        return reject(v, 400, "Bad Request", "missing_header", "Missing header: ", "Via");
    if (!via_protocols_ok(m))
        return reject(v, 400, "Bad Request", "malformed", "Malformed Via", NULL);
    for (size_t i = 0; i < ARRAY_SIZE(single); i++) {
        enum sip_hdr_id id = single[i];
        if (m->count[id] == 0 && id == SIP_H_MAX_FORWARDS)
            continue;
        if (m->count[id] == 0)
            return reject(v, 400, "Bad Request", "missing_header",
                          "Missing header: ", sip_hdr_name(id));
        if (m->count[id] > 1)
            return reject(v, 400, "Bad Request", "duplicate_header",
                          "Duplicate header: ", sip_hdr_name(id));
    }
    if (m->count[SIP_H_CONTENT_LENGTH] > 1)
        return reject(v, 400, "Bad Request", "duplicate_header",
                      "Duplicate header: ", "Content-Length");
    return 0;
}

static int check_raw(const struct sip_policy *p, const struct sip_peer *peer,
                     const struct sip_msg *m, struct sip_verdict *v)
{
    size_t cap = peer->src == SIP_SRC_REMOTE_USER ? p->max_client_msg : p->max_server_msg;
    if (cap && m->len > cap)
        return reject(v, 513, "Message Too Large", "too_large", "Message larger than ",
                      peer->src == SIP_SRC_REMOTE_USER ? "the client limit" : "the server limit");
    if (m->too_many_headers || (p->max_headers && m->nhdr > p->max_headers))
        return reject(v, 400, "Bad Request", "too_many_headers", "Too many header fields", NULL);
    if (p->max_line && m->max_line > p->max_line)
        return reject(v, 400, "Bad Request", "line_too_long", "Header line too long", NULL);
    int rc = check_counts(m, v);
    if (rc)
        return rc;
    /* RFC 3261 §8.1.1.5: a CSeq number is below 2^31 (RFC 4475 §3.1.2.4, §3.1.2.5). */
    struct slice cv = sip_hdr_value(m, sip_msg_find(m, SIP_H_CSEQ));
    uint64_t seq = 0;
    size_t d = 0;
    while (d < cv.len && cv.p[d] >= '0' && cv.p[d] <= '9' && seq <= 0x7fffffffu)
        seq = seq * 10 + (uint64_t)(cv.p[d++] - '0');
    if (d == 0 || seq > 0x7fffffffu)
        return reject(v, 400, "Bad Request", "malformed", "Invalid CSeq", NULL);
    if (m->content_length >= 0 && (size_t)m->content_length != m->body_len)
        return reject(v, 400, "Bad Request", "content_length",
                      "Content-Length does not match the body", NULL);
    return 0;
}

/* Checks on a request that need only the raw index, made before osip2 parses it, so that
 * a message osip2 cannot parse still gets the answer its first fault calls for (RFC 4475
 * §3.1.2, §3.3). Returns 1 with *v set, or 0. */
static int check_request_raw(const struct sip_peer *peer, const struct sip_msg *m,
                             struct sip_verdict *v)
{
    if (!(slice_eq_str(m->method, "ACK") || slice_eq_str(m->method, "CANCEL")) &&
        !slice_eq(sip_cseq_method(m), m->method))
        return reject(v, 400, "Bad Request", "cseq", "CSeq method does not match", NULL);
    if (!sip_method_allowed(peer->src, m->method)) {
        char meth[32];
        slice_to_cstr(m->method, meth, sizeof(meth));
        return reject(v, 405, "Method Not Allowed", "method", "Method not allowed here: ", meth);
    }
    /* RFC 3261 §19.1.1: "sip:" or "sips:"; anything else this proxy cannot route. */
    struct slice u = m->ruri;
    const uint8_t *colon = memchr(u.p, ':', u.len);
    size_t sl = colon ? (size_t)(colon - u.p) : 0;
    if (!colon || !((sl == 3 && strncasecmp((const char *)u.p, "sip", 3) == 0) ||
                    (sl == 4 && strncasecmp((const char *)u.p, "sips", 4) == 0)))
        return reject(v, 416, "Unsupported URI Scheme", "uri_scheme", "Unsupported URI scheme",
                      NULL);
    /* RFC 3261 §19.1.5: headers ("?Route=...") have no place in a Request-URI (RFC 4475
     * §3.1.2.11); a '?' before the '@' is part of the user name. */
    size_t at = 0;
    for (size_t i = 0; i < u.len; i++)
        if (u.p[i] == '@')
            at = i;
    if (memchr(u.p + at, '?', u.len - at))
        return reject(v, 400, "Bad Request", "malformed", "Headers in the Request-URI", NULL);
    /* RFC 3261 §16.3 step 5: the edge supports no proxy extension. */
    for (uint16_t i = 0; i < m->nhdr; i++) {
        const struct sip_hdr *h = &m->hdr[i];
        if (h->id != SIP_H_OTHER || h->name_len != 13 ||
            strncasecmp((const char *)m->buf + h->line_off, "Proxy-Require", 13) != 0)
            continue;
        struct slice pv = sip_hdr_value(m, h);
        int n = snprintf(v->extra, sizeof(v->extra), "Unsupported: %.*s\r\n",
                         (int)(pv.len < sizeof(v->extra) - 20 ? pv.len : sizeof(v->extra) - 20),
                         (const char *)pv.p);
        /* The value may span folded lines: keep the answer on one. */
        for (int k = 0; k < n - 2; k++)
            if (v->extra[k] == '\r' || v->extra[k] == '\n')
                v->extra[k] = ' ';
        return reject(v, 420, "Bad Extension", "extension", "Unsupported Proxy-Require", NULL);
    }
    return 0;
}

/* Counts our own Route entries at the top (loose routes we put there, RFC 3261 §16.4) and
 * picks up a flow token from their user part. */
static void own_routes(const struct sip_policy *p, osip_message_t *msg, struct sip_route *r)
{
    int n = osip_list_size(&msg->routes);
    for (int i = 0; i < n && i < 4; i++) {
        osip_route_t *rt = osip_list_get(&msg->routes, i);
        if (!rt || !rt->url || !rt->url->host ||
            !sip_policy_is_own(p, rt->url->host, port_of(rt->url->port)))
            break;
        r->pop++;
        if (rt->url->username && *rt->url->username)
            r->flow = slice_str(rt->url->username);
    }
}

static void target_from_uri(struct sip_route *r, const osip_uri_t *u)
{
    if (!u || !u->host)
        return;
    snprintf(r->host, sizeof(r->host), "%s", u->host);
    r->port = port_of(u->port);
    if (u->scheme && strcasecmp(u->scheme, "sips") == 0)
        r->tls = true;
    osip_uri_param_t *t = NULL;
    osip_uri_param_get_byname((osip_list_t *)&u->url_params, "transport", &t);
    if (t && t->gvalue) {
        if (strcasecmp(t->gvalue, "tcp") == 0)
            r->tcp = true;
        else if (strcasecmp(t->gvalue, "tls") == 0)
            r->tls = true;
    }
}

/* Faults found while framing. A request line nobody could answer (no Via) is noise. */
static int check_framing(const struct sip_msg *m, struct sip_verdict *v)
{
    if (m->defect == SIP_DEFECT_START_LINE && m->count[SIP_H_VIA] == 0)
        return -EBADMSG;
    if (m->defect == SIP_DEFECT_START_LINE)
        return reject(v, 400, "Bad Request", "malformed", "Malformed Request-Line", NULL);
    if (m->defect == SIP_DEFECT_VERSION)
        return reject(v, 505, "Version Not Supported", "version", "SIP version not supported",
                      NULL);
    if (m->defect == SIP_DEFECT_LENGTH)
        return reject(v, 400, "Bad Request", "content_length", "Invalid Content-Length", NULL);
    return 0;
}

/* Drops a tree parse() made. */
static void tree_free(struct sip_osip_arena *arena, const struct sip_osip_mark *mark,
                      osip_message_t *msg)
{
    if (arena)
        sip_osip_arena_drop(arena, mark);
    else
        osip_message_free(msg);
}

/* osip2's parse of m into *out (in arena, from mark, when there is one), with the headers
 * every message needs. */
static int parse(const struct sip_msg *m, struct sip_osip_arena *arena,
                 const struct sip_osip_mark *mark, struct sip_verdict *v, osip_message_t **out)
{
    sip_osip_init();
    osip_message_t *msg = NULL;
    int prc;
    if (arena) {
        prc = sip_osip_parse_in(arena, m, &msg);
        if (prc == -ENOMEM)
            return prc;
    } else {
        if (osip_message_init(&msg) != 0)
            return -ENOMEM;
        prc = sip_osip_parse(msg, m);
    }
    if (prc != 0 || !msg->cseq || !msg->cseq->method || !msg->call_id || !msg->from || !msg->to ||
        osip_list_size(&msg->vias) == 0) {
        if (msg)
            tree_free(arena, mark, msg);
        /* A request that frames and has every mandatory header but does not parse is
         * answered (RFC 3261 §21.4.1); a response is dropped (§18.1.2). */
        if (m->is_request)
            return reject(v, 400, "Bad Request", "malformed", "Malformed message", NULL);
        return -EBADMSG;
    }
    *out = msg;
    return 0;
}

/* Loop detection (RFC 3261 §16.3 step 4, simplified for a two-sided edge): a request from
 * outside never carries our Via; from inside it may once (a hairpin through the Director),
 * never twice. */
static int check_loop(const struct sip_policy *p, bool external, osip_message_t *msg,
                      struct sip_verdict *v)
{
    int own = 0, nv = osip_list_size(&msg->vias);
    for (int i = 0; i < nv && i < 64; i++) {
        osip_via_t *via = osip_list_get(&msg->vias, i);
        if (via && sip_policy_is_own(p, via->host, port_of(via->port)))
            own++;
    }
    if (own > (external ? 0 : 1))
        return reject(v, 482, "Loop Detected", "loop", "Loop detected", NULL);
    return 0;
}

/* Max-Forwards and the Request-URI's scheme. RFC 3261 §16.3 step 3: no Max-Forwards passes
 * (an RFC 2543 request: RFC 4475's inv2543); forwarding adds one (sip_fwd_request). */
static int check_request_line(osip_message_t *msg, struct sip_verdict *v)
{
    osip_header_t *mf = NULL;
    osip_message_get_max_forwards(msg, 0, &mf);
    char *end = NULL;
    long hops = mf && mf->hvalue ? strtol(mf->hvalue, &end, 10) : 70;
    if (mf && (!mf->hvalue || end == mf->hvalue || *end || hops < 0 || hops > 255))
        return reject(v, 400, "Bad Request", "max_forwards", "Invalid Max-Forwards", NULL);
    if (hops == 0)
        return reject(v, 483, "Too Many Hops", "max_forwards", "Max-Forwards reached zero", NULL);
    if (!msg->req_uri || !msg->req_uri->scheme || !msg->req_uri->host ||
        (strcasecmp(msg->req_uri->scheme, "sip") != 0 &&
         strcasecmp(msg->req_uri->scheme, "sips") != 0))
        return reject(v, 416, "Unsupported URI Scheme", "uri_scheme", "Unsupported URI scheme",
                      NULL);
    return 0;
}

/* A request from outside goes to the Director, if it may go at all. */
static int route_external(const struct sip_policy *p, const struct sip_peer *peer,
                          osip_message_t *msg, struct sip_verdict *v, struct sip_route *r)
{
    /* No open relay: an initial request from outside must be for one of our domains.
     * In-dialog requests come back through the Record-Route we inserted, so they carry
     * our own Route entry instead, and their Request-URI is the peer's Contact. */
    bool ours = sip_policy_has_domain(p, msg->req_uri->host, strlen(msg->req_uri->host)) ||
                sip_policy_is_own(p, msg->req_uri->host, port_of(msg->req_uri->port));
    if (!ours && !(r->in_dialog && r->pop > 0))
        return reject(v, 403, "Forbidden", "relay", "Relaying denied for domain ",
                      msg->req_uri->host);
    if (peer->src == SIP_SRC_PARTNER || peer->src == SIP_SRC_DISCOVERED) {
        const char *fd = msg->from->url ? msg->from->url->host : NULL;
        if (!fd || !sip_cert_matches_domain(peer->cert_names, peer->ncert_names, fd))
            return reject(v, 403, "Forbidden", "from_domain",
                          "From domain does not match the peer certificate: ", fd);
    }
    r->kind = SIP_ROUTE_DIRECTOR;
    return 0;
}

/* From the inside: our own Route entries name the flow; then the next Route or the
 * Request-URI decide (RFC 3261 §16.5, §16.12). */
static int route_internal(const struct sip_policy *p, osip_message_t *msg, struct sip_verdict *v,
                          struct sip_route *r)
{
    if (r->flow.len) {
        r->kind = SIP_ROUTE_FLOW;
        return 0;
    }
    osip_route_t *next = osip_list_get(&msg->routes, (int)r->pop);
    r->kind = SIP_ROUTE_URI;
    target_from_uri(r, next ? next->url : msg->req_uri);
    if (!r->host[0])
        return reject(v, 400, "Bad Request", "no_target", "No usable target", NULL);
    if (sip_policy_is_own(p, r->host, r->port))
        return reject(v, 482, "Loop Detected", "loop", "Request addressed to the edge itself",
                      NULL);
    return 0;
}

/* Everything after the parse: the loop check, then for requests the request line and
 * where the request goes. */
static int decide(const struct sip_policy *p, const struct sip_peer *peer, const struct sip_msg *m,
                  osip_message_t *msg, struct sip_verdict *v, struct sip_route *r)
{
    bool external = peer->src != SIP_SRC_INTERNAL;
    int rc = m->is_request ? check_loop(p, external, msg, v) : 0;
    if (rc || !m->is_request)
        return rc; /* responses are routed by Via; nothing else to decide here */
    rc = check_request_line(msg, v);
    if (rc)
        return rc;
    own_routes(p, msg, r);
    if (msg->from->url && msg->from->url->host)
        snprintf(r->from_domain, sizeof(r->from_domain), "%s", msg->from->url->host);
    snprintf(r->ruri_domain, sizeof(r->ruri_domain), "%s", msg->req_uri->host);
    return external ? route_external(p, peer, msg, v, r) : route_internal(p, msg, v, r);
}

int sip_validate(const struct sip_policy *p, const struct sip_peer *peer, const struct sip_msg *m,
                 struct sip_osip_arena *arena, struct sip_verdict *v, struct sip_route *r,
                 struct sip_parsed **parsed)
{
    memset(v, 0, sizeof(*v));
    memset(r, 0, sizeof(*r));
    int rc = check_framing(m, v);
    if (rc)
        return rc;
    rc = check_raw(p, peer, m, v);
    if (rc)
        return rc;
    if (m->is_request) {
        rc = check_request_raw(peer, m, v);
        if (rc)
            return rc;
    }
    if (!m->is_request && peer->src == SIP_SRC_INTERNAL) {
        /* The Director's answers go out on the raw index alone: framing, size, the
         * mandatory headers, Via and CSeq are checked above, and forwarding a response reads
         * nothing else. osip2's deep parse is for what comes from outside. */
        if (parsed)
            *parsed = NULL;
        return 0;
    }
    struct sip_osip_mark mark = arena ? sip_osip_arena_mark(arena) : (struct sip_osip_mark){0};
    osip_message_t *msg = NULL;
    rc = parse(m, arena, &mark, v, &msg);
    if (rc)
        return rc;
    osip_generic_param_t *tag = NULL;
    osip_to_get_tag(msg->to, &tag);
    r->in_dialog = tag != NULL;
    rc = decide(p, peer, m, msg, v, r);
    struct sip_parsed *sp = NULL;
    if (rc == 0 && parsed)
        sp = arena ? sip_osip_arena_alloc(arena, sizeof(*sp)) : malloc(sizeof(*sp));
    if (sp) {
        *sp = (struct sip_parsed){msg, arena, mark};
        *parsed = sp; /* the flow slice points into the parse tree, which the caller now owns */
        return rc;
    }
    tree_free(arena, &mark, msg);
    r->flow = SLICE_NULL;
    return rc == 0 && parsed ? -ENOMEM : rc;
}

void sip_parsed_free(struct sip_parsed *p)
{
    if (!p)
        return;
    if (p->arena) {
        struct sip_osip_mark mark = p->mark; /* p itself is in the arena */
        sip_osip_arena_drop(p->arena, &mark);
        return;
    }
    osip_message_free(p->msg);
    free(p);
}

int sip_check_bytes(const struct sip_policy *policy, const struct sip_peer *peer,
                    const uint8_t *data, size_t len, bool datagram, struct sip_msg *scratch,
                    struct sip_verdict *v, struct sip_route *route)
{
    ssize_t n = sip_msg_scan(scratch, data, len, datagram, 65536);
    if (n < 0)
        return (int)n;
    struct sip_parsed *sp = NULL;
    int rc = sip_validate(policy, peer, scratch, NULL, v, route, &sp);
    sip_parsed_free(sp);
    return rc;
}
