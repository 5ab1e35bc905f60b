/* Header rewriting between client and upstream: hop-by-hop stripping, X-Forwarded-* and
 * Forwarded (RFC 7239), Host rewrite, Location/Content-Location rewrite. Pure. */
#ifndef RP_HEADERS_H
#define RP_HEADERS_H

#include <stdbool.h>

#include "common/addr.h"
#include "common/util.h"
#include "revproxy/http1.h"
#include "revproxy/route.h"

/* What the proxy knows about a request when it builds the upstream head. */
struct http_fwd {
    const struct addr *client; /* the TCP peer */
    const char *client_ip;     /* its host part as text, if the caller has it (else formatted) */
    bool tls;                  /* client came over HTTPS */
    bool trusted;              /* peer is a trusted proxy: keep and append its X-Forwarded-For */
    struct slice host;         /* the client's Host (or absolute-form host) */
    const char *host_header;   /* Host to send instead (NULL = host) */
    const char *fallback_host; /* Host when neither (HTTP/1.0 without Host): the upstream's */
    const char *target;        /* rewritten path + query */
    bool upgrade;              /* pass Upgrade/Connection: upgrade */
    bool close;                /* ask the upstream to close after this response */
};

/* Appends the upstream request head for h to out. Framing is the proxy's: one
 * "Content-Length: N" or "Transfer-Encoding: chunked" (where the client's first one was),
 * never the client's bytes. Forwarding and client-address headers (X-Forwarded-*,
 * Forwarded, X-Real-IP, True-Client-IP, ...; '_' taken as '-') are believed only from a
 * trusted proxy; the proxy's own always follow. Returns 0 or -ENOSPC. */
int http_request_build(const struct http_head *h, const struct http_fwd *f, struct buf *out);

/* What the proxy knows when it builds the client's response head. */
struct http_back {
    const struct rp_route *route; /* for the reverse path rewrite (may be NULL) */
    struct slice client_host;     /* the client's Host: the public name */
    bool tls;                     /* scheme for rewritten URLs */
    const char *const *internal;  /* upstream host names (NULL-terminated) to hide */
    bool close;                   /* Connection: close to the client */
    bool upgrade;                 /* 101: pass Upgrade/Connection through */
    bool http10_client;           /* the client speaks HTTP/1.0 */
};

/* Appends the client's response head for the upstream head h to out. 0 or -ENOSPC. */
int http_response_build(const struct http_head *h, const struct http_back *b, struct buf *out);

/* Rewrites one Location / Content-Location value into out (NUL-terminated): absolute URLs
 * on an internal host become scheme://client_host/..., and paths under the route's rewrite
 * go back under its prefix. Returns the length, or 0 when the value stays as it is. */
ssize_t http_location_rewrite(struct slice value, const struct http_back *b, char *out, size_t cap);

/* True for headers that claim a client's address or the original request (X-Forwarded-*,
 * Forwarded, X-Real-IP, Client-IP, True-Client-IP, CF-Connecting-IP, ...), compared with
 * '_' as '-' since some frameworks map both to the same variable. */
bool http_is_forwarding(struct slice name);

/* True for hop-by-hop headers (RFC 7230 6.1) and headers named by Connection. */
bool http_is_hop_by_hop(struct slice name, struct slice connection);

/* A complete small response (errors, redirects): status line, Content-Type text/plain,
 * Content-Length, Connection: close if close, extra header lines (each ending CRLF, may be
 * NULL), and body. Returns 0 or -ENOSPC. */
int http_simple_response(struct buf *out, int status, const char *extra, const char *body,
                         bool close, bool head_only);
const char *http_reason(int status);

#endif
