/* conf-edge: the conferencing data edge daemon (TLS-only PSOM relay that admits only
 * holders of a valid conference session key). Wiring of config, edge and control channel. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/admin.h"
#include "common/ctl.h"
#include "common/daemon.h"
#include "common/json.h"
#include "conf-edge/config.h"
#include "conf-edge/edge.h"

struct ce_main {
    struct daemon *d;
    struct ce_edge *edge;
    struct ctl_client *ctl;
    struct acme_edge *acme; /* acme: enabled: the participants' certificate from the Director */
};

/* ---- control channel: signing secrets in, revocations in, load reports out ---- */

static void on_ctl_secret(const struct ctl_secret *s, void *arg)
{
    struct ce_main *m = arg;
    if (s->kind == CTL_SECRET_CONFERENCE)
        ce_edge_set_key(m->edge, s->key_id, s->secret, s->secret_len, s->not_after);
}

static void on_ctl_revoke(const struct ctl_revoke *r, void *arg)
{
    struct ce_main *m = arg;
    ce_edge_revoke(m->edge, r->conference_key_id, r->user, r->until);
}

static void on_ctl_drain(uint32_t deadline_ms, void *arg)
{
    struct ce_main *m = arg;
    LOGI(daemon_logger(m->d), NULL, "the Director asks to drain (deadline %u ms)", deadline_ms);
    ce_edge_drain(m->edge, NULL, NULL);
}

static void fill_report(struct ctl_report *r, void *arg)
{
    struct ce_main *m = arg;
    struct ce_edge_stats st;
    ce_edge_get_stats(m->edge, &st);
    r->connections = st.clients;
    r->allocations = st.relaying;
    r->bytes_in = st.bytes_up;
    r->bytes_out = st.bytes_down;
    r->errors = st.refused;
    r->healthy = st.servers > 0;
    r->draining = daemon_draining(m->d);
    r->n_notes = 0;
    snprintf(r->notes[r->n_notes++], CTL_NOTE_MAX, "servers:%llu conferences:%llu",
             (unsigned long long)st.servers, (unsigned long long)st.conferences);
}

static int start_ctl(struct ce_main *m, const struct ce_config *cfg)
{
    static const struct ctl_client_cbs cbs = {
        .on_secret = on_ctl_secret, .on_revoke = on_ctl_revoke, .on_drain = on_ctl_drain};
    struct ctl_hello h = {.role = CTL_ROLE_CONF_EDGE};
    snprintf(h.version, sizeof h.version, "%s", daemon_version());
    snprintf(h.instance_id, sizeof h.instance_id, "%s",
             cfg->base.instance_id ? cfg->base.instance_id : "conf-edge");
    addr_format(&cfg->external.listen, h.external_addrs[h.n_external++]);
    addr_format(&cfg->internal.listen, h.internal_addrs[h.n_internal++]);
    int rc = ctl_client_start_link(daemon_loop(m->d), &cfg->director, &h, daemon_logger(m->d),
                                   daemon_metrics(m->d), &cbs, m, &m->ctl);
    if (rc == 0 && m->ctl)
        ctl_client_set_report_source(m->ctl, fill_report, m);
    return rc;
}

static int health(char *why, size_t cap, void *arg)
{
    struct ce_main *m = arg;
    return m->edge ? ce_edge_health(m->edge, why, cap) : 0;
}

/* POST /revoke?jti=<key id> (or conference_key=)&user=<participant>[&until=<unix>]: as a Revoke
 * from the Director, for labs and operators on the internal admin listener. */
static void on_revoke_route(const char *method, const char *path, const char *query,
                            const char *body, size_t body_len, struct admin_reply *r, void *arg)
{
    struct ce_main *m = arg;
    if (strcmp(method, "POST")) {
        admin_reply_printf(r, 405, "text/plain", "use POST\n");
        return;
    }
    char jti[64], user[128], until[24];
    size_t ql = strlen(query);
    int bad = admin_query_get(query, ql, "jti", jti, sizeof jti) < 0;
    if (!jti[0]) /* the Director's name for it */
        bad |= admin_query_get(query, ql, "conference_key", jti, sizeof jti) < 0;
    bad |= admin_query_get(query, ql, "user", user, sizeof user) < 0;
    bad |= admin_query_get(query, ql, "until", until, sizeof until) < 0;
    if (bad) {
        admin_reply_printf(r, 400, "text/plain", "bad parameter (too long or malformed)\n");
        return;
    }
    if (!jti[0] && !user[0]) {
        admin_reply_printf(r, 400, "text/plain", "need jti= or user=\n");
        return;
    }
    ce_edge_revoke(m->edge, jti, user, strtoll(until, NULL, 10));
    struct json_buf j = {0};
    json_printf(&j, "{\"revoked\": {\"jti\": ");
    json_str(&j, jti);
    json_printf(&j, ", \"user\": ");
    json_str(&j, user);
    json_printf(&j, "}}\n");
    if (j.oom)
        admin_reply_printf(r, 500, "text/plain", "out of memory\n");
    else
        admin_reply_printf(r, 200, "application/json", "%s", j.p);
    free(j.p);
}

/* GET /stats: the edge's counters as JSON. */
static void on_stats_route(const char *method, const char *path, const char *query,
                           const char *body, size_t body_len, struct admin_reply *r, void *arg)
{
    struct ce_main *m = arg;
    struct ce_edge_stats st;
    ce_edge_get_stats(m->edge, &st);
    admin_reply_printf(
        r, 200, "application/json",
        "{\"clients\": %llu, \"relaying\": %llu, \"servers\": %llu, "
        "\"conferences\": %llu, \"bytes_to_server\": %llu, \"bytes_to_client\": %llu, "
        "\"refused\": %llu}\n",
        (unsigned long long)st.clients, (unsigned long long)st.relaying,
        (unsigned long long)st.servers, (unsigned long long)st.conferences,
        (unsigned long long)st.bytes_up, (unsigned long long)st.bytes_down,
        (unsigned long long)st.refused);
}

static int ce_start(struct daemon *d, const void *cfgp, void **state)
{
    const struct ce_config *cfg = cfgp;
    struct ce_main *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->d = d;
    char err[512] = "";
    int rc =
        acme_edge_create(daemon_logger(d), daemon_metrics(d), &cfg->acme, NULL, NULL, &m->acme);
    if (rc == 0)
        rc = ce_edge_start(daemon_loop(d), cfg, daemon_logger(d), daemon_metrics(d),
                           acme_edge_store(m->acme), &m->edge, err, sizeof err);
    if (rc) {
        LOGE(daemon_logger(d), NULL, "%s", err[0] ? err : strerror(-rc));
        acme_edge_free(m->acme);
        free(m);
        return rc;
    }
    if (cfg->director.enabled && (rc = start_ctl(m, cfg)) < 0) {
        LOGE(daemon_logger(d), NULL, "control channel: %s", strerror(-rc));
        ce_edge_stop(m->edge);
        acme_edge_free(m->acme);
        free(m);
        return rc;
    }
    acme_edge_attach(m->acme, m->ctl);
    admin_set_health(daemon_admin(d), health, m);
    admin_route(daemon_admin(d), "/revoke", on_revoke_route, m);
    admin_route(daemon_admin(d), "/stats", on_stats_route, m);
    *state = m;
    return 0;
}

static int ce_reload(struct daemon *d, void *state, const void *cfg)
{
    struct ce_main *m = state;
    const struct ce_config *c = cfg;
    char err[256];
    int rc = ctl_client_reload_link(m->ctl, &c->director, err, sizeof err);
    if (rc) {
        LOGE(daemon_logger(d), NULL, "reload: director.tls: %s", err);
        return rc;
    }
    return ce_edge_reload(m->edge, cfg);
}

static void on_drained(void *arg)
{
    struct ce_main *m = arg;
    daemon_drained(m->d);
}

static void ce_drain(struct daemon *d, void *state)
{
    struct ce_main *m = state;
    ce_edge_drain(m->edge, on_drained, m);
}

static void ce_stop(struct daemon *d, void *state)
{
    struct ce_main *m = state;
    if (!m)
        return;
    ctl_client_stop(m->ctl);
    ce_edge_stop(m->edge);
    acme_edge_free(m->acme); /* after the listener: its contexts point at the store */
    free(m);
}

int main(int argc, char **argv)
{
    static const struct daemon_ops ops = {
        .name = "conf-edge",
        .summary = "conferencing data edge: TLS-only relay that admits holders of a conference key",
        .default_config = "deploy/config/conf-edge.yaml",
        .keys = ce_config_keys,
        .config_size = sizeof(struct ce_config),
        .validate = ce_config_validate,
        .start = ce_start,
        .reload = ce_reload,
        .drain = ce_drain,
        .stop = ce_stop,
    };
    return daemon_main(argc, argv, &ops);
}
