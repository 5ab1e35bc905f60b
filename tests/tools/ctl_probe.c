/* ctl-probe: an edge stand-in for tests. It connects to the Director's control channel
 * with the ctl client API (as every edge does), prints each event it receives as one JSON
 * line on stdout, and sends a report whenever it reads a line on stdin.
 *
 * stdin lines: "connections=5 allocations=2 bytes_in=1 bytes_out=2 errors=0 load=300
 * healthy=1 draining=0 note=watch:partner.example" (any subset; values persist and are
 * also sent in the periodic reports), or "quit". EOF on stdin also quits. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/ctl.h"

struct probe {
    uv_loop_t *loop;
    struct ctl_client *client;
    struct logger log;
    uv_pipe_t in;
    uv_signal_t sigint, sigterm;
    bool in_open, stopping;
    char line[4096], rd[4096];
    size_t line_len;
    struct ctl_report report; /* what the probe says about itself */
};

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void on_connected(const char *director_id, void *arg)
{
    printf("{\"event\":\"welcome\",\"director\":");
    json_str(stdout, director_id);
    printf("}\n");
    fflush(stdout);
}

static void on_disconnected(const char *why, void *arg)
{
    printf("{\"event\":\"disconnected\",\"why\":");
    json_str(stdout, why);
    printf("}\n");
    fflush(stdout);
}

static void on_secret(const struct ctl_secret *s, void *arg)
{
    char hex[2 * CTL_SECRET_MAX + 1];
    for (size_t i = 0; i < s->secret_len; i++)
        snprintf(hex + 2 * i, 3, "%02x", s->secret[i]);
    hex[2 * s->secret_len] = '\0';
    printf("{\"event\":\"secret\",\"kind\":\"%s\",\"key_id\":", ctl_secret_kind_name(s->kind));
    json_str(stdout, s->key_id);
    printf(",\"secret\":\"%s\",\"not_after\":%" PRId64 "}\n", hex, s->not_after);
    fflush(stdout);
}

static void on_report(const struct ctl_report *r, void *arg)
{
    printf("{\"event\":\"report\",\"role\":\"%s\",\"instance\":", ctl_role_name(r->role));
    json_str(stdout, r->instance_id);
    printf(",\"connections\":%" PRIu64 ",\"allocations\":%" PRIu64 ",\"bytes_in\":%" PRIu64
           ",\"bytes_out\":%" PRIu64 ",\"errors\":%" PRIu64
           ",\"load_permille\":%u,\"healthy\":%s,\"draining\":%s,\"notes\":[",
           r->connections, r->allocations, r->bytes_in, r->bytes_out, r->errors, r->load_permille,
           r->healthy ? "true" : "false", r->draining ? "true" : "false");
    for (size_t i = 0; i < r->n_notes; i++) {
        if (i)
            putchar(',');
        json_str(stdout, r->notes[i]);
    }
    printf("]}\n");
    fflush(stdout);
}

static void on_revoke(const struct ctl_revoke *r, void *arg)
{
    printf("{\"event\":\"revoke\",\"conference_key\":");
    json_str(stdout, r->conference_key_id);
    printf(",\"user\":");
    json_str(stdout, r->user);
    printf(",\"until\":%" PRId64 "}\n", r->until);
    fflush(stdout);
}

static void on_drain(uint32_t deadline_ms, void *arg)
{
    printf("{\"event\":\"drain\",\"deadline_ms\":%u}\n", deadline_ms);
    fflush(stdout);
}

static void fill_report(struct ctl_report *r, void *arg)
{
    struct probe *p = arg;
    *r = p->report;
}

static void probe_handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void probe_stop(struct probe *p)
{
    if (p->stopping)
        return;
    p->stopping = true;
    ctl_client_stop(p->client);
    p->client = NULL;
    if (p->in_open)
        uv_close((uv_handle_t *)&p->in, probe_handle_closed);
    uv_close((uv_handle_t *)&p->sigint, probe_handle_closed);
    uv_close((uv_handle_t *)&p->sigterm, probe_handle_closed);
}

/* Applies "key=value ..." to the probe's report; returns false on a word it does not know. */
static bool parse_line(struct probe *p, char *line)
{
    struct ctl_report *r = &p->report;
    bool notes_reset = false;
    for (char *save = NULL, *w = strtok_r(line, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
        char *eq = strchr(w, '=');
        if (!eq)
            return false;
        *eq = '\0';
        const char *k = w, *v = eq + 1;
        unsigned long long n = strtoull(v, NULL, 10);
        if (!strcmp(k, "connections"))
            r->connections = n;
        else if (!strcmp(k, "allocations"))
            r->allocations = n;
        else if (!strcmp(k, "bytes_in"))
            r->bytes_in = n;
        else if (!strcmp(k, "bytes_out"))
            r->bytes_out = n;
        else if (!strcmp(k, "errors"))
            r->errors = n;
        else if (!strcmp(k, "load"))
            r->load_permille = (uint32_t)n;
        else if (!strcmp(k, "healthy"))
            r->healthy = n != 0;
        else if (!strcmp(k, "draining"))
            r->draining = n != 0;
        else if (!strcmp(k, "note")) {
            if (!notes_reset) {
                r->n_notes = 0;
                notes_reset = true;
            }
            if (r->n_notes < CTL_NOTES_MAX)
                snprintf(r->notes[r->n_notes++], CTL_NOTE_MAX, "%s", v);
        } else
            return false;
    }
    return true;
}

static void handle_line(struct probe *p, char *line)
{
    if (!strcmp(line, "quit")) {
        probe_stop(p);
        return;
    }
    if (!parse_line(p, line)) {
        printf("{\"event\":\"error\",\"why\":\"cannot parse the stdin line\"}\n");
        fflush(stdout);
        return;
    }
    int rc = ctl_client_send_report(p->client, &p->report);
    printf("{\"event\":\"sent\",\"ok\":%s", rc == 0 ? "true" : "false");
    if (rc)
        printf(",\"why\":\"%s\"", strerror(-rc));
    printf("}\n");
    fflush(stdout);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    struct probe *p = h->data;
    (void)hint;
    b->base = p->rd;
    b->len = sizeof p->rd;
}

static void on_stdin(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct probe *p = s->data;
    if (n < 0) {
        probe_stop(p); /* EOF: the test is done with us */
        return;
    }
    for (ssize_t i = 0; i < n && !p->stopping; i++) {
        char c = b->base[i];
        if (c == '\n') {
            p->line[p->line_len] = '\0';
            if (p->line_len && p->line[p->line_len - 1] == '\r')
                p->line[p->line_len - 1] = '\0';
            p->line_len = 0;
            if (p->line[0])
                handle_line(p, p->line);
        } else if (p->line_len + 1 < sizeof p->line) {
            p->line[p->line_len++] = c;
        }
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    probe_stop(s->data);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: ctl-probe --director HOST:PORT --role ROLE --instance ID --cert F --key F "
               "--ca F\n"
               "                 [--name DIRECTOR-NAME] [--subscribe ROLE,...] "
               "[--report-interval MS]\n"
               "                 [--backoff-max MS] [--external ADDR] [--internal ADDR] [-v]\n");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"director", required_argument, NULL, 'd'}, {"role", required_argument, NULL, 'r'},
        {"instance", required_argument, NULL, 'i'}, {"cert", required_argument, NULL, 'c'},
        {"key", required_argument, NULL, 'k'},      {"ca", required_argument, NULL, 'a'},
        {"name", required_argument, NULL, 'n'},     {"subscribe", required_argument, NULL, 's'},
        {"report-interval", required_argument, NULL, 'R'},
        {"backoff-max", required_argument, NULL, 'B'},
        {"external", required_argument, NULL, 'E'}, {"internal", required_argument, NULL, 'I'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    struct probe p;
    memset(&p, 0, sizeof p);
    struct ctl_client_opts o;
    memset(&o, 0, sizeof o);
    const char *director = NULL, *cert = NULL, *key = NULL, *ca = NULL, *name = "director";
    bool verbose = false;
    int opt;
    log_init(&p.log, "ctl-probe");
    snprintf(o.hello.version, sizeof o.hello.version, "ctl-probe %s", SUITE_VERSION);
    while ((opt = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'd':
            director = optarg;
            break;
        case 'r':
            if (ctl_role_parse(optarg, &o.hello.role)) {
                fprintf(stderr, "ctl-probe: unknown role %s\n", optarg);
                return 2;
            }
            break;
        case 'i':
            snprintf(o.hello.instance_id, sizeof o.hello.instance_id, "%s", optarg);
            break;
        case 'c':
            cert = optarg;
            break;
        case 'k':
            key = optarg;
            break;
        case 'a':
            ca = optarg;
            break;
        case 'n':
            name = optarg;
            break;
        case 's':
            for (char *save = NULL, *t = strtok_r(optarg, ",", &save); t;
                 t = strtok_r(NULL, ",", &save)) {
                if (o.hello.n_subscribe >= CTL_SUBSCRIBE_MAX ||
                    ctl_role_parse(t, &o.hello.subscribe[o.hello.n_subscribe])) {
                    fprintf(stderr, "ctl-probe: bad --subscribe role %s\n", t);
                    return 2;
                }
                o.hello.n_subscribe++;
            }
            break;
        case 'R':
            o.report_interval_ms = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'B':
            o.backoff_max_ms = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'E':
            if (o.hello.n_external < CTL_ADDRS_MAX)
                snprintf(o.hello.external_addrs[o.hello.n_external++], ADDR_STRLEN, "%s", optarg);
            break;
        case 'I':
            if (o.hello.n_internal < CTL_ADDRS_MAX)
                snprintf(o.hello.internal_addrs[o.hello.n_internal++], ADDR_STRLEN, "%s", optarg);
            break;
        case 'v':
            verbose = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!director || !cert || !key || !ca || o.hello.role == CTL_ROLE_UNKNOWN ||
        !o.hello.instance_id[0]) {
        usage(stderr);
        return 2;
    }
    if (verbose)
        p.log.level = LOG_DEBUG;
    if (addr_parse(&o.director, director, 7400)) {
        fprintf(stderr, "ctl-probe: bad --director address %s\n", director);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    p.loop = uv_default_loop();
    p.report.healthy = true;
    o.cert_file = cert;
    o.key_file = key;
    o.ca_file = ca;
    o.director_name = name;
    o.log = &p.log;
    static const struct ctl_client_cbs cbs = {
        .on_connected = on_connected,
        .on_disconnected = on_disconnected,
        .on_secret = on_secret,
        .on_report = on_report,
        .on_revoke = on_revoke,
        .on_drain = on_drain,
    };
    int rc = ctl_client_start(p.loop, &o, &cbs, &p, &p.client);
    if (rc) {
        fprintf(stderr, "ctl-probe: %s\n", strerror(-rc));
        return 1;
    }
    ctl_client_set_report_source(p.client, fill_report, &p);
    uv_signal_init(p.loop, &p.sigint);
    uv_signal_init(p.loop, &p.sigterm);
    p.sigint.data = p.sigterm.data = &p;
    uv_signal_start(&p.sigint, on_signal, SIGINT);
    uv_signal_start(&p.sigterm, on_signal, SIGTERM);
    if (uv_guess_handle(0) == UV_NAMED_PIPE && uv_pipe_init(p.loop, &p.in, 0) == 0) {
        p.in.data = &p;
        if (uv_pipe_open(&p.in, 0) == 0 && uv_read_start((uv_stream_t *)&p.in, on_alloc, on_stdin) == 0)
            p.in_open = true;
        else
            uv_close((uv_handle_t *)&p.in, probe_handle_closed);
    }
    uv_run(p.loop, UV_RUN_DEFAULT);
    uv_loop_close(p.loop);
    return 0;
}
