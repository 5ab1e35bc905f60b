/* The Director's TURN credential endpoint: GET /credentials?user=<id>[&location=internet|
 * intranet][&ttl=<s>] answers {"username","password","ttl","uris"} with TURN REST
 * credentials minted from the current relay secret (the one the av-edges verify), and the
 * TURN URIs of the connected av-edges (external ones for internet users, internal ones for
 * intranet users, least loaded edge first, draining and unhealthy ones left out) or the
 * configured list.
 *
 * It is served on the Director's internal admin listener: the caller is the internal
 * service that has authenticated the user (the registrar, a web portal). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "director/director.h"
#include "director/json.h"

struct credentials {
    struct director *d;
    struct metric *issued, *refused;
};

/* name=value from a query string, percent-decoded; 1 found, 0 absent, -EINVAL bad. */
static int query_param(const char *q, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);
    const char *end = q + strlen(q);
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        if ((size_t)(pe - q) > nlen && memcmp(q, name, nlen) == 0 && q[nlen] == '=') {
            size_t n = 0;
            for (const char *v = q + nlen + 1; v < pe; v++) {
                int c = (unsigned char)*v;
                if (c == '%') {
                    unsigned x;
                    if (pe - v < 3 || sscanf(v + 1, "%2x", &x) != 1)
                        return -EINVAL;
                    c = (int)x;
                    v += 2;
                } else if (c == '+') {
                    c = ' ';
                }
                if (c == 0 || n + 1 >= cap)
                    return -EINVAL;
                out[n++] = (char)c;
            }
            out[n] = 0;
            return 1;
        }
        q = amp ? amp + 1 : end;
    }
    return 0;
}

/* A user id goes into "<expiry>:<user>": no separators, no spaces, bounded. */
static bool user_ok(const char *u)
{
    if (!*u)
        return false;
    for (; *u; u++) {
        char c = *u;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("@._-+", c)))
            return false;
    }
    return true;
}

/* Relays listed in one answer at most. */
#define CRED_RELAYS_MAX 64

/* The TURN URIs of the relays the hub offers, least loaded edge first. */
static void add_edge_uris(struct director *d, struct json_buf *j, bool internal)
{
    struct hub_relay r[CRED_RELAYS_MAX];
    size_t nr = hub_relays(d, r, CRED_RELAYS_MAX);
    bool first = true;
    for (size_t k = 0; k < nr; k++) {
        const struct ctl_hello *h = r[k].hello;
        size_t n = internal ? h->n_internal : h->n_external;
        for (size_t i = 0; i < n; i++) {
            const char *u = internal ? h->internal_addrs[i] : h->external_addrs[i];
            if (strncmp(u, "turn:", 5) != 0 && strncmp(u, "turns:", 6) != 0)
                continue;
            if (!first)
                json_printf(j, ",");
            first = false;
            json_str(j, u);
        }
    }
}

static void reply_err(struct credentials *c, struct admin_reply *r, int status, const char *why)
{
    metric_inc(c->refused);
    admin_reply_printf(r, status, "application/json", "{\"error\":\"%s\"}\n", why);
}

static void on_credentials(const char *method, const char *path, const char *query,
                           const char *body, size_t body_len, struct admin_reply *reply, void *arg)
{
    struct credentials *c = arg;
    struct director *d = c->d;
    const struct director_credentials_config *cc = &d->cfg->credentials;
    if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
        return reply_err(c, reply, 405, "use GET");
    char user[96], loc[16] = "internet", ttl_s[16];
    if (query_param(query, "user", user, sizeof(user)) != 1 || !user_ok(user))
        return reply_err(c, reply, 400, "user= is required: letters, digits and @._-+ only");
    if (hub_user_revoked(d, user))
        return reply_err(c, reply, 403, "user revoked");
    if (query_param(query, "location", loc, sizeof(loc)) < 0 ||
        (strcmp(loc, "internet") != 0 && strcmp(loc, "intranet") != 0))
        return reply_err(c, reply, 400, "location is internet or intranet");
    uint64_t ttl = cc->ttl_ms / 1000;
    if (query_param(query, "ttl", ttl_s, sizeof(ttl_s)) == 1) {
        char *end;
        unsigned long long v = strtoull(ttl_s, &end, 10);
        if (*end || v == 0)
            return reply_err(c, reply, 400, "ttl is a number of seconds");
        ttl = v;
    }
    if (ttl > cc->max_ttl_ms / 1000)
        ttl = cc->max_ttl_ms / 1000;
    const struct token_key *k = &d->relay_keys.cur;
    if (!k->secret_len)
        return reply_err(c, reply, 503, "no relay secret yet");
    /* A reinstated user's new credentials outlive the window of its revoked ones, which
     * the av-edges tell apart by expiry. */
    int64_t now = (int64_t)time(NULL), min_expiry = hub_user_min_expiry(d, user);
    if (min_expiry > now + (int64_t)ttl)
        ttl = (uint64_t)(min_expiry - now);
    char username[160], password[64];
    if (turn_rest_username(username, sizeof(username), now + (int64_t)ttl, user) ||
        turn_rest_password(k->secret, k->secret_len, username, password, sizeof(password)))
        return reply_err(c, reply, 500, "cannot mint");
    struct json_buf j = {0};
    json_printf(&j, "{\"username\":");
    json_str(&j, username);
    json_printf(&j, ",\"password\":");
    json_str(&j, password);
    json_printf(&j, ",\"ttl\":%" PRIu64 ",\"uris\":[", ttl);
    bool internal = strcmp(loc, "intranet") == 0;
    if (cc->n_uris) {
        for (size_t i = 0; i < cc->n_uris; i++) {
            if (i)
                json_printf(&j, ",");
            json_str(&j, cc->uris[i]);
        }
    } else {
        add_edge_uris(d, &j, internal);
    }
    json_printf(&j, "]}\n");
    if (j.oom) {
        free(j.p);
        return reply_err(c, reply, 500, "out of memory");
    }
    metric_inc(c->issued);
    LOGI(d->log, NULL, "credentials: issued relay credentials to %s (%s, ttl %" PRIu64 " s)", user,
         loc, ttl);
    reply->status = 200;
    reply->content_type = "application/json";
    reply->body = j.p;
    reply->body_len = j.len;
}

int credentials_start(struct director *d)
{
    struct credentials *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->d = d;
    c->issued = metrics_counter(d->metrics, "relay_credentials_total",
                                "TURN credentials requests, by result", "result=\"issued\"");
    c->refused = metrics_counter(d->metrics, "relay_credentials_total",
                                 "TURN credentials requests, by result", "result=\"refused\"");
    int rc = d->admin ? admin_route(d->admin, "/credentials", on_credentials, c) : 0;
    if (rc) {
        free(c);
        return rc;
    }
    d->credentials = c;
    return 0;
}

void credentials_stop(struct director *d)
{
    free(d->credentials);
    d->credentials = NULL;
}
