/* Daemon lifecycle: command line, config, admin listener, reload on SIGHUP, drain on SIGTERM. */
#include "common/daemon.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/admin.h"
#include "common/util.h"

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const log_formats[] = {"text", "json", NULL};

static const struct cfg_key log_keys[] = {
    {"level", CFG_ENUM, offsetof(struct daemon_config, log.level) - offsetof(struct daemon_config, log),
     "info", .choices = log_levels, .help = "error, warn, info or debug"},
    {"format", CFG_ENUM, offsetof(struct daemon_config, log.format) - offsetof(struct daemon_config, log),
     "text", .choices = log_formats, .help = "text or json (one JSON object per line)"},
    CFG_END,
};

static const struct cfg_key admin_keys[] = {
    {"listen", CFG_ADDR, 0, NULL, .min = 8080, .required = true,
     .help = "address of the /metrics and /healthz listener (internal side)"},
    CFG_END,
};

const struct cfg_key daemon_config_keys[] = {
    {"instance_id", CFG_STR, offsetof(struct daemon_config, instance_id), NULL,
     .help = "name of this instance in logs and at the Director (default: the program name)"},
    {"log", CFG_SECTION, offsetof(struct daemon_config, log), .sub = log_keys, .help = "logging"},
    {"admin", CFG_SECTION, offsetof(struct daemon_config, admin), .sub = admin_keys,
     .help = "admin listener"},
    {"drain_timeout", CFG_DURATION, offsetof(struct daemon_config, drain_timeout_ms), "30s",
     .min = 0, .max = 3600000, .help = "on SIGTERM, how long in-flight work may take"},
    CFG_END,
};

const struct cfg_key tls_files_keys[] = {
    {"cert", CFG_FILE, offsetof(struct tls_files_config, cert), NULL, .help = "PEM certificate chain"},
    {"key", CFG_FILE, offsetof(struct tls_files_config, key), NULL, .help = "PEM private key"},
    {"ca", CFG_FILE, offsetof(struct tls_files_config, ca), NULL,
     .help = "PEM CA bundle to verify peers"},
    CFG_END,
};

const struct cfg_key director_link_keys[] = {
    {"enabled", CFG_BOOL, offsetof(struct director_link_config, enabled), "true",
     .help = "connect to the Director's control channel"},
    {"address", CFG_ADDR, offsetof(struct director_link_config, address), "127.0.0.10:7400",
     .min = 7400, .help = "the Director's control-channel address"},
    {"server_name", CFG_STR, offsetof(struct director_link_config, server_name), "director",
     .help = "name to verify on the Director's certificate"},
    {"tls", CFG_SECTION, offsetof(struct director_link_config, tls), .sub = tls_files_keys,
     .help = "this edge's client certificate and the CA of the Director"},
    {"report_interval", CFG_DURATION, offsetof(struct director_link_config, report_interval_ms),
     "1s", .min = 100, .max = 600000, .help = "how often load reports are sent"},
    CFG_END,
};

struct daemon {
    const struct daemon_ops *ops;
    const char *config_path;
    void *cfg; /* the role's config; base struct daemon_config first */
    void *state;
    uv_loop_t loop;
    struct logger log;
    struct metrics *metrics;
    struct admin *admin;
    uv_signal_t sig_hup, sig_term, sig_int;
    uv_timer_t drain_timer;
    bool draining, stopped;
    struct metric *m_reload_ok, *m_reload_fail;
};

uv_loop_t *daemon_loop(struct daemon *d)
{
    return &d->loop;
}
const struct logger *daemon_logger(struct daemon *d)
{
    return &d->log;
}
struct metrics *daemon_metrics(struct daemon *d)
{
    return d->metrics;
}
struct admin *daemon_admin(struct daemon *d)
{
    return d->admin;
}
const char *daemon_config_path(struct daemon *d)
{
    return d->config_path;
}
bool daemon_draining(struct daemon *d)
{
    return d->draining;
}

static void usage(const struct daemon_ops *ops, FILE *f)
{
    fprintf(f,
            "usage: %s [-c FILE] [--check] [--version] [--help]\n"
            "%s\n\n"
            "  -c, --config FILE  YAML configuration (default %s)\n"
            "      --check        validate the configuration and exit (0 ok, 1 with file:line:col)\n"
            "      --version      print the version and exit\n"
            "  -h, --help         this text\n\n"
            "Runs in the foreground and logs to stderr. SIGHUP reloads the configuration and\n"
            "certificates (a bad one is refused, the old one stays); SIGTERM drains and exits.\n\n"
            "Configuration keys:\n",
            ops->name, ops->summary, ops->default_config);
    cfg_print_keys(ops->keys, 2, f);
}

static int load_config(const struct daemon_ops *ops, const char *path, void **out,
                       struct cfg_err *err)
{
    void *cfg = NULL;
    int rc = cfg_load(path, ops->keys, ops->config_size, &cfg, err);
    if (rc)
        return rc;
    if (ops->validate && (rc = ops->validate(cfg, err)) != 0) {
        cfg_free(cfg);
        return rc;
    }
    *out = cfg;
    return 0;
}

static void apply_log_config(struct daemon *d, const struct daemon_config *base)
{
    d->log.level = (enum log_level)base->log.level;
    d->log.format = (enum log_format)base->log.format;
}

static void on_closed_noop(uv_handle_t *h)
{
    (void)h;
}

/* Ends the process's work: the role closes its handles, then the loop runs dry. */
static void daemon_finish(struct daemon *d)
{
    if (d->stopped)
        return;
    d->stopped = true;
    if (d->ops->stop)
        d->ops->stop(d, d->state);
    admin_stop(d->admin);
    d->admin = NULL;
    uv_close((uv_handle_t *)&d->sig_hup, on_closed_noop);
    uv_close((uv_handle_t *)&d->sig_term, on_closed_noop);
    uv_close((uv_handle_t *)&d->sig_int, on_closed_noop);
    uv_close((uv_handle_t *)&d->drain_timer, on_closed_noop);
}

void daemon_drained(struct daemon *d)
{
    if (d->draining && !d->stopped) {
        LOGI(&d->log, NULL, "drained: nothing left in flight, exiting");
        daemon_finish(d);
    }
}

static void on_drain_deadline(uv_timer_t *t)
{
    struct daemon *d = container_of(t, struct daemon, drain_timer);
    LOGW(&d->log, NULL, "drain deadline reached: closing what is left and exiting");
    daemon_finish(d);
}

static void on_term(uv_signal_t *s, int signum)
{
    struct daemon *d = s->data;
    if (d->stopped)
        return;
    if (d->draining || signum == SIGINT) {
        LOGI(&d->log, NULL, "%s: stopping now", signum == SIGINT ? "SIGINT" : "second SIGTERM");
        daemon_finish(d);
        return;
    }
    const struct daemon_config *base = d->cfg;
    d->draining = true;
    LOGI(&d->log, NULL, "SIGTERM: draining (no new work; deadline %llu ms)",
         (unsigned long long)base->drain_timeout_ms);
    uv_timer_start(&d->drain_timer, on_drain_deadline, base->drain_timeout_ms, 0);
    if (d->ops->drain)
        d->ops->drain(d, d->state);
    else
        daemon_drained(d);
}

static void on_hup(uv_signal_t *s, int signum)
{
    struct daemon *d = s->data;
    (void)signum;
    struct cfg_err err;
    void *ncfg = NULL;
    if (load_config(d->ops, d->config_path, &ncfg, &err)) {
        LOGE(&d->log, NULL, "reload refused, keeping the running config: %s", err.msg);
        metric_inc(d->m_reload_fail);
        return;
    }
    int rc = d->ops->reload ? d->ops->reload(d, d->state, ncfg) : -ENOTSUP;
    if (rc) {
        LOGE(&d->log, NULL, "reload refused by %s: %s", d->ops->name, strerror(-rc));
        cfg_free(ncfg);
        metric_inc(d->m_reload_fail);
        return;
    }
    void *old = d->cfg;
    d->cfg = ncfg;
    apply_log_config(d, ncfg);
    cfg_free(old);
    metric_inc(d->m_reload_ok);
    LOGI(&d->log, NULL, "reloaded %s", d->config_path);
}

static void metric_name_prefix(const char *name, char *out, size_t cap)
{
    size_t i = 0;
    for (; name[i] && i + 1 < cap; i++)
        out[i] = name[i] == '-' ? '_' : name[i];
    out[i] = '\0';
}

int daemon_main(int argc, char **argv, const struct daemon_ops *ops)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"check", no_argument, NULL, 'k'},
        {"version", no_argument, NULL, 'V'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = ops->default_config;
    bool check = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 'k':
            check = true;
            break;
        case 'V':
            printf("%s %s\n", ops->name, SUITE_VERSION);
            return 0;
        case 'h':
            usage(ops, stdout);
            return 0;
        default:
            usage(ops, stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", ops->name, argv[optind]);
        return 2;
    }

    struct cfg_err err;
    void *cfg = NULL;
    if (load_config(ops, path, &cfg, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    if (check) {
        printf("%s: ok\n", path);
        cfg_free(cfg);
        return 0;
    }

    signal(SIGPIPE, SIG_IGN);
    struct daemon *d = calloc(1, sizeof *d);
    if (!d) {
        cfg_free(cfg);
        return 1;
    }
    d->ops = ops;
    d->config_path = path;
    d->cfg = cfg;
    log_init(&d->log, ops->name);
    apply_log_config(d, cfg);
    uv_loop_init(&d->loop);
    char prefix[64];
    metric_name_prefix(ops->name, prefix, sizeof prefix);
    int rc = metrics_create(&d->metrics, prefix);
    if (rc)
        goto fail;
    d->m_reload_ok = metrics_counter(d->metrics, "config_reloads_total",
                                     "Configuration reloads by result", "result=\"ok\"");
    d->m_reload_fail = metrics_counter(d->metrics, "config_reloads_total",
                                       "Configuration reloads by result", "result=\"refused\"");
    metric_set(metrics_gauge(d->metrics, "start_time_seconds", "Unix time the process started",
                             NULL),
               time_wall_s());

    const struct daemon_config *base = cfg;
    rc = admin_start(&d->loop, &base->admin.listen, d->metrics, &d->log, &d->admin);
    if (rc)
        goto fail;
    uv_signal_init(&d->loop, &d->sig_hup);
    uv_signal_init(&d->loop, &d->sig_term);
    uv_signal_init(&d->loop, &d->sig_int);
    d->sig_hup.data = d->sig_term.data = d->sig_int.data = d;
    uv_signal_start(&d->sig_hup, on_hup, SIGHUP);
    uv_signal_start(&d->sig_term, on_term, SIGTERM);
    uv_signal_start(&d->sig_int, on_term, SIGINT);
    uv_timer_init(&d->loop, &d->drain_timer);

    rc = ops->start(d, d->cfg, &d->state);
    if (rc) {
        LOGE(&d->log, NULL, "start failed: %s", strerror(-rc));
        daemon_finish(d);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        goto fail;
    }
    char as[ADDR_STRLEN];
    LOGI(&d->log, NULL, "%s %s started (config %s, admin http://%s)", ops->name, SUITE_VERSION,
         path, addr_format(&base->admin.listen, as));
    uv_run(&d->loop, UV_RUN_DEFAULT);
    LOGI(&d->log, NULL, "stopped");
    rc = 0;
fail:
    if (d->admin) {
        admin_stop(d->admin);
        uv_run(&d->loop, UV_RUN_DEFAULT);
    }
    if (uv_loop_close(&d->loop) == UV_EBUSY)
        LOGW(&d->log, NULL, "exiting with handles still open");
    metrics_destroy(d->metrics);
    cfg_free(d->cfg);
    free(d);
    return rc ? 1 : 0;
}
