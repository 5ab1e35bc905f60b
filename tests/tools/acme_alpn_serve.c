/* acme-alpn-serve: a TLS listener for tests of ACME TLS-ALPN-01 (RFC 8737), built the way
 * the daemons build theirs (tls_files_ctx with tls_files_use.acme, stream_listen,
 * stream_accept) with a challenge store filled from the command line, since in the daemons
 * only the Director fills it over the control channel. Test-only: not installed.
 *
 *   acme-alpn-serve --listen 127.0.0.1:PORT --cert F --key K [--alpn h2,http/1.1]
 *                   [--challenge NAME:CERT_FILE:KEY_FILE]...
 *
 * Prints "listening" once bound, then one line per connection event on stdout:
 * "open alpn=<protocol or ->" when a connection reaches the user (it then gets "hello\n"
 * and is closed cleanly), "close opened=<0|1> err=<n> why=<text>" when it ends. SIGTERM or
 * SIGINT stops it. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/acme_challenges.h"
#include "common/stream.h"
#include "common/tls_files.h"

struct conn {
    bool opened;
};

struct srv {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_signal_t sigterm, sigint;
    struct tls_ctx *tls;
};

static void on_open(struct stream *s, void *arg)
{
    struct conn *c = arg;
    c->opened = true;
    const char *alpn = tls_conn_alpn(stream_tls(s));
    printf("open alpn=%s\n", alpn ? alpn : "-");
    fflush(stdout);
    stream_write(s, "hello\n", 6);
    stream_shutdown(s);
}

static int on_data(struct stream *s, const uint8_t *data, size_t len, void *arg)
{
    (void)s;
    (void)data;
    (void)len;
    (void)arg;
    return 0;
}

static void on_close(struct stream *s, int err, const char *why, void *arg)
{
    (void)s;
    struct conn *c = arg;
    printf("close opened=%d err=%d why=%s\n", c->opened, err, why ? why : "-");
    fflush(stdout);
    free(c);
}

static void on_conn(uv_stream_t *server, int status)
{
    struct srv *v = server->data;
    if (status < 0)
        return;
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    static const struct stream_cbs cbs = {
        .on_data = on_data, .on_open = on_open, .on_close = on_close};
    struct stream_opts o = {.tls = v->tls, .handshake_timeout_ms = 5000};
    struct stream *s;
    if (stream_accept(server, &o, &cbs, c, &s) < 0)
        free(c);
}

static void on_stop(uv_signal_t *h, int sig)
{
    (void)sig;
    struct srv *v = h->data;
    uv_close((uv_handle_t *)&v->listener, NULL);
    uv_close((uv_handle_t *)&v->sigterm, NULL);
    uv_close((uv_handle_t *)&v->sigint, NULL);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *b = calloc(1, 65536);
    if (b && fread(b, 1, 65535, f) == 0) {
        free(b);
        b = NULL;
    }
    fclose(f);
    return b;
}

/* "NAME:CERT_FILE:KEY_FILE" into the store. */
static int add_challenge(struct acme_challenges *st, char *spec)
{
    char *cert = strchr(spec, ':');
    char *key = cert ? strchr(cert + 1, ':') : NULL;
    if (!key)
        return -EINVAL;
    *cert++ = '\0';
    *key++ = '\0';
    char *cp = read_file(cert), *kp = read_file(key);
    int rc = cp && kp ? acme_challenges_set_alpn(st, spec, cp, kp, (int64_t)time(NULL) + 3600)
                      : -ENOENT;
    free(cp);
    free(kp);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'}, {"cert", required_argument, NULL, 'c'},
        {"key", required_argument, NULL, 'k'},    {"alpn", required_argument, NULL, 'a'},
        {"challenge", required_argument, NULL, 'x'}, {NULL, 0, NULL, 0}};
    const char *listen = NULL;
    struct tls_files_config files = {0};
    const char *alpn[9] = {NULL};
    size_t nalpn = 0;
    struct acme_challenges *store;
    if (acme_challenges_create(&store) != 0)
        return 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'l':
            listen = optarg;
            break;
        case 'c':
            files.cert = optarg;
            break;
        case 'k':
            files.key = optarg;
            break;
        case 'a':
            for (char *t = strtok(optarg, ","); t && nalpn < 8; t = strtok(NULL, ","))
                alpn[nalpn++] = t;
            break;
        case 'x':
            if (add_challenge(store, optarg) != 0) {
                fprintf(stderr, "bad --challenge %s\n", optarg);
                return 2;
            }
            break;
        default:
            return 2;
        }
    }
    struct addr a;
    if (!listen || addr_parse(&a, listen, 0) != 0) {
        fprintf(stderr, "usage: acme-alpn-serve --listen HOST:PORT --cert F --key K "
                        "[--alpn LIST] [--challenge NAME:CERT:KEY]...\n");
        return 2;
    }
    struct srv v = {.loop = uv_default_loop()};
    char err[256];
    struct tls_files_use use = {
        .server = true, .alpn = nalpn ? alpn : NULL, .acme = store};
    if (tls_files_ctx(&v.tls, &files, &use, err, sizeof err) != 0) {
        fprintf(stderr, "TLS: %s\n", err);
        return 1;
    }
    v.listener.data = &v;
    int rc = stream_listen(v.loop, &v.listener, &a, 0, false, on_conn);
    if (rc < 0) {
        fprintf(stderr, "listen %s: %s\n", listen, uv_strerror(rc));
        return 1;
    }
    uv_signal_init(v.loop, &v.sigterm);
    uv_signal_init(v.loop, &v.sigint);
    v.sigterm.data = v.sigint.data = &v;
    uv_signal_start(&v.sigterm, on_stop, SIGTERM);
    uv_signal_start(&v.sigint, on_stop, SIGINT);
    printf("listening\n");
    fflush(stdout);
    uv_run(v.loop, UV_RUN_DEFAULT);
    tls_ctx_unref(v.tls);
    acme_challenges_free(store);
    uv_loop_close(v.loop);
    return 0;
}
