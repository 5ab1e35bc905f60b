/* Routes: client Host + path prefix -> upstream pool, with an optional prefix rewrite.
 * Pure functions over the config's route table (no libuv). */
#ifndef RP_ROUTE_H
#define RP_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util.h"

/* One element of `routes:` in the YAML. */
struct rp_route {
    char *host;               /* client Host to match ("" or "*" = any, "*.example.com" = suffix) */
    char *prefix;             /* path prefix, matched on a segment boundary, case-insensitively */
    char *rewrite;            /* replaces prefix in the upstream path (NULL = unchanged) */
    char *upstream;           /* pool name */
    char *host_header;        /* Host sent upstream (NULL = the client's) */
    uint64_t max_body;        /* request body limit in bytes (413 beyond) */
    bool affinity;            /* one client connection <-> one upstream connection (NTLM) */
    bool websocket;           /* pass Upgrade: websocket through */
    uint64_t read_timeout_ms; /* 0 = the upstream's */
    uint32_t rate, burst;     /* requests per second per client address (0 = no limit), bucket */
};

/* The request target, split (from origin-form "/p?q" or absolute-form "http://h/p?q"). */
struct rp_target {
    struct slice path;  /* "/p" (no query) */
    struct slice query; /* "?q" with its '?', or empty */
    struct slice host;  /* from absolute-form, else empty */
};

/* Splits and checks a request target: origin-form or absolute-form http(s) only; a path
 * with dot segments (also percent-encoded) or a NUL is refused. 0 or -EBADMSG. */
int rp_target_parse(struct slice url, struct rp_target *t);

/* The route for host (port ignored) and path: the longest matching prefix among routes
 * whose host matches. Returns its index or -1 (404). */
int rp_route_match(const struct rp_route *routes, size_t n, struct slice host, struct slice path);

/* Writes the upstream path+query for path under route r into out (NUL-terminated).
 * Returns the length or -ENOSPC. */
ssize_t rp_route_rewrite(const struct rp_route *r, struct slice path, struct slice query, char *out,
                         size_t cap);
/* The reverse, for Location headers: an upstream path under r's rewrite goes back under
 * its prefix. Returns the length written, 0 if path is not under the rewrite, or -ENOSPC. */
ssize_t rp_route_unrewrite(const struct rp_route *r, struct slice path, char *out, size_t cap);

/* True if host is a plausible uri-host [":" port] (RFC 9110 7.2): a bracketed IP
 * literal or a reg-name of letters, digits, "-._~"; nothing else (no spaces, '@', '/'). */
bool rp_host_valid(struct slice host);

/* The name the port-80 redirect may send a client to for host (port stripped, already
 * rp_host_valid): one of names (exact or "*.domain"), else a route's host that is not
 * "*". Writes it (lower case) to out; -ENOENT if none matches, -ENOSPC. */
int rp_server_name_pick(char *const *names, size_t nnames, const struct rp_route *routes,
                        size_t nroutes, struct slice host, char *out, size_t cap);

/* The host of a Host header value without its port ("[::1]:8" -> "[::1]"). */
struct slice rp_host_strip_port(struct slice host);

#endif
