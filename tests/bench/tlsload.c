/* bench-conf load client (OpenSSL, so the client's own cipher work stays cheap):
 *
 *   tlsload bulk HOST PORT up|down SECS [KEY]   one TLS 1.2 connection; with KEY, the
 *                                               conf-edge preamble first (then waits for 200)
 *   tlsload hs HOST PORT full|resumed SECS      sequential handshakes, each then closed
 *
 * Prints one line: "bytes=N secs=S MBps=X" or "handshakes=N secs=S per_s=X resumed=R".
 * The cipher is pinned to ECDHE-ECDSA-CHACHA20-POLY1305 (TLS 1.2) on both proxies so
 * the comparison is like for like. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int dial(const char *host, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* A stalled peer ends the run instead of holding the benchmark lock. */
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("connect");
        exit(1);
    }
    return fd;
}

static SSL_CTX *ctx_new(void)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_cipher_list(c, "ECDHE-ECDSA-CHACHA20-POLY1305");
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
    return c;
}

static SSL *handshake(SSL_CTX *c, const char *host, int port, SSL_SESSION *sess)
{
    SSL *s = SSL_new(c);
    SSL_set_fd(s, dial(host, port));
    if (sess)
        SSL_set_session(s, sess);
    if (SSL_connect(s) != 1) {
        ERR_print_errors_fp(stderr);
        exit(1);
    }
    return s;
}

static void finish(SSL *s)
{
    int fd = SSL_get_fd(s);
    SSL_shutdown(s);
    SSL_free(s);
    close(fd);
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: tlsload bulk HOST PORT up|down SECS [KEY] | tlsload hs HOST PORT "
                        "full|resumed SECS\n");
        return 2;
    }
    const char *host = argv[2];
    int port = atoi(argv[3]);
    double secs = atof(argv[5]);
    SSL_CTX *c = ctx_new();
    if (!strcmp(argv[1], "bulk")) {
        SSL *s = handshake(c, host, port, NULL);
        if (argc > 6) {
            char line[2048];
            int n = snprintf(line, sizeof line, "PSOM-EDGE/1 %s\r\n", argv[6]);
            SSL_write(s, line, n);
            int got = 0;
            while (got < (int)sizeof line - 1) {
                int r = SSL_read(s, line + got, 1);
                if (r <= 0 || line[got] == '\n')
                    break;
                got++;
            }
            line[got] = '\0';
            if (!strstr(line, " 200 ")) {
                fprintf(stderr, "tlsload: not admitted: %s\n", line);
                return 1;
            }
        }
        static char buf[65536];
        memset(buf, 'u', sizeof buf);
        bool up = !strcmp(argv[4], "up");
        double t0 = now(), t1;
        unsigned long long bytes = 0;
        while ((t1 = now()) - t0 < secs) {
            int r = up ? SSL_write(s, buf, 16384) : SSL_read(s, buf, sizeof buf);
            if (r <= 0)
                break;
            bytes += (unsigned)r;
        }
        printf("bytes=%llu secs=%.2f MBps=%.1f cipher=%s\n", bytes, t1 - t0,
               bytes / 1e6 / (t1 - t0), SSL_get_cipher(s));
        int fd = SSL_get_fd(s);
        SSL_free(s);
        close(fd);
        return 0;
    }
    bool resumed = !strcmp(argv[4], "resumed");
    SSL_SESSION *sess = NULL;
    if (resumed) {
        SSL *s = handshake(c, host, port, NULL);
        /* TLS 1.2: the ticket or session id is known once the handshake is over. */
        sess = SSL_get1_session(s);
        finish(s);
    }
    double t0 = now(), t1;
    unsigned long n = 0, reused = 0;
    while ((t1 = now()) - t0 < secs) {
        SSL *s = handshake(c, host, port, sess);
        if (SSL_session_reused(s))
            reused++;
        finish(s);
        n++;
    }
    printf("handshakes=%lu secs=%.2f per_s=%.1f resumed=%lu\n", n, t1 - t0, n / (t1 - t0), reused);
    return 0;
}
