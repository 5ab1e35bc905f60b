// fuzz-sources: revproxy/http1.c revproxy/route.c revproxy/headers.c common/util.c common/addr.c
/* Request head + routing path of the reverse proxy: the input is split into feeds at the
 * positions its first byte picks, parsed as pipelined requests, each head routed,
 * rewritten and rebuilt as the upstream request, the way revproxy/exchange.c does it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "revproxy/headers.h"
#include "revproxy/http1.h"
#include "revproxy/route.h"

static struct rp_route routes[] = {
    {.prefix = "/ABS/ext", .rewrite = "/ABS/int", .upstream = "web", .max_body = 1 << 20},
    {.prefix = "/etc/place/null", .upstream = "web", .max_body = 1 << 20},
    {.prefix = "/GroupExpansion/ext/service.asmx",
     .rewrite = "/GroupExpansion/int/service.asmx",
     .upstream = "web",
     .host_header = "web.lab",
     .max_body = 1 << 20},
    {.host = "*.example.com", .prefix = "/", .upstream = "web", .max_body = 100},
};

static void on_head(struct http_reader *r)
{
    const struct http_head *h = http_reader_head(r);
    struct rp_target t;
    if (rp_target_parse(h->url, &t) < 0)
        return;
    struct slice host = t.host.len ? t.host : http_head_get(h, "host");
    if (host.len && !rp_host_valid(host))
        return;
    if (host.len) {
        static char *const names[] = {"revproxy", "*.lab.example"};
        char name[256];
        if (rp_server_name_pick(names, 2, routes, sizeof routes / sizeof routes[0],
                                rp_host_strip_port(host), name, sizeof name) == 0 &&
            !rp_host_valid(slice_str(name)))
            __builtin_trap(); /* the redirect only ever names a valid host */
    }
    int ri = rp_route_match(routes, sizeof routes / sizeof routes[0], host, t.path);
    if (ri < 0)
        return;
    http_reader_set_max_body(r, routes[ri].max_body);
    char target[4096];
    if (rp_route_rewrite(&routes[ri], t.path, t.query, target, sizeof target) < 0)
        return;
    struct addr a;
    addr_parse(&a, "127.0.0.1:1234", 0);
    struct http_fwd f = {.client = &a,
                         .tls = true,
                         .host = host,
                         .host_header = routes[ri].host_header,
                         .fallback_host = "web",
                         .target = target,
                         .upgrade = h->upgrade};
    uint8_t mem[8192];
    struct buf b = {mem, sizeof mem, 0, 0};
    http_request_build(h, &f, &b);
    char loc[512];
    static const char *const internal[] = {"web.lab", NULL};
    struct http_back bk = {.route = &routes[ri], .client_host = host, .internal = internal};
    for (size_t i = 0; i < h->nhdr; i++)
        http_location_rewrite(h->hdr[i].value, &bk, loc, sizeof loc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = data[0] ? data[0] : size;
    uint8_t *copy = malloc(size - 1);
    if (!copy && size > 1)
        return 0;
    memcpy(copy, data + 1, size - 1);
    struct http_reader *r;
    if (http_reader_create(&r, true, 2048) == 0) {
        size_t off = 0, n = size - 1;
        for (int guard = 0; off < n && guard < 100000; guard++) {
            size_t len = n - off < step ? n - off : step;
            unsigned ev;
            ssize_t used = http_reader_feed(r, copy + off, len, &ev);
            if (used < 0)
                break;
            /* dropped bytes are whole trailer field lines: never the final CRLF */
            if ((ev & HTTP_EV_DROP) && (ev & HTTP_EV_DONE))
                __builtin_trap();
            off += (size_t)used;
            if (used == 0 && !ev)
                break;
            if (ev & HTTP_EV_HEAD)
                on_head(r);
        }
        http_reader_destroy(r);
    }
    free(copy);
    return 0;
}
