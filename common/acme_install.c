/* The checks and the file replacement of an ACME install: see acme_install.h. */
#include "common/acme_install.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

bool acme_dns_name_ok(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > 253)
        return false;
    const char *p = name;
    if (p[0] == '*' && p[1] == '.')
        p += 2;
    size_t labels = 0;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n == 0 || n > 63 || p[0] == '-' || p[n - 1] == '-')
            return false;
        for (size_t i = 0; i < n; i++) {
            char c = p[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-'))
                return false;
        }
        labels++;
        p += n;
        if (*p == '.' && !*++p)
            return false; /* a trailing dot: not in a certificate */
    }
    return labels >= 2;
}

int acme_names_check(const char (*names)[CTL_DNSNAME_MAX], size_t n, char *err, size_t errcap)
{
    if (n == 0 || n > CTL_DNSNAMES_MAX) {
        snprintf(err, errcap, "%zu names requested (1 to %d)", n, CTL_DNSNAMES_MAX);
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!memchr(names[i], 0, CTL_DNSNAME_MAX) || !acme_dns_name_ok(names[i])) {
            snprintf(err, errcap, "name %zu is not a DNS name", i + 1);
            return -EINVAL;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcasecmp(names[i], names[j])) {
                snprintf(err, errcap, "name %s requested twice", names[i]);
                return -EINVAL;
            }
    }
    return 0;
}

int acme_issued_check(const struct pki_cert_info *info, const char (*names)[CTL_DNSNAME_MAX],
                      size_t n, int64_t now, char *err, size_t errcap)
{
    if (info->self_signed) {
        snprintf(err, errcap, "the certificate is self-signed");
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (size_t j = 0; j < info->n_names && j < 16 && !found; j++)
            found = !strcasecmp(names[i], info->names[j]);
        if (!found) {
            snprintf(err, errcap, "the certificate does not name %s", names[i]);
            return -EINVAL;
        }
    }
    /* and nothing else: the CA signs our CSR's names, so another name means a certificate
     * made for something else (a wrong order, a confused or hostile Director) */
    for (size_t j = 0; j < info->n_names && j < 16; j++) {
        bool asked = false;
        for (size_t i = 0; i < n && !asked; i++)
            asked = !strcasecmp(names[i], info->names[j]);
        if (!asked) {
            snprintf(err, errcap, "the certificate names %s, which was not requested",
                     info->names[j]);
            return -EINVAL;
        }
    }
    if (now >= info->base.not_after) {
        snprintf(err, errcap, "the certificate has expired");
        return -EINVAL;
    }
    if (now < info->not_before - 3600) {
        snprintf(err, errcap, "the certificate is not valid yet");
        return -EINVAL;
    }
    return 0;
}

int acme_chain_shape(const char *pem, char *err, size_t errcap)
{
    static const char begin[] = "-----BEGIN CERTIFICATE-----", end[] = "-----END CERTIFICATE-----";
    int n = 0;
    const char *p = pem;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        if (!*p)
            break;
        if (strncmp(p, begin, sizeof begin - 1) != 0) {
            snprintf(err, errcap, "the chain has %s outside its CERTIFICATE blocks",
                     strncmp(p, "-----BEGIN ", 11) == 0 ? "another PEM block" : "text");
            return -EINVAL;
        }
        const char *e = strstr(p + sizeof begin - 1, end);
        if (!e) {
            snprintf(err, errcap, "the chain has a certificate block without its end line");
            return -EINVAL;
        }
        for (const char *q = p + sizeof begin - 1; q < e; q++)
            if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n",
                        *q)) {
                snprintf(err, errcap, "the chain has a certificate block that is not base64");
                return -EINVAL;
            }
        if (++n > ACME_CHAIN_MAX) {
            snprintf(err, errcap, "the chain has more than %d certificates", ACME_CHAIN_MAX);
            return -EINVAL;
        }
        p = e + sizeof end - 1;
    }
    if (n == 0) {
        snprintf(err, errcap, "the chain has no certificate");
        return -EINVAL;
    }
    return n;
}

void acme_status_fill(const struct pki_cert_info *info, struct ctl_cert_status *st)
{
    memset(st, 0, sizeof *st);
    size_t k = 0;
    for (size_t i = 0; i < info->n_names && i < 16 && k < CTL_DNSNAMES_MAX; i++) {
        /* Only names the control channel can carry (the Director compares them). */
        if (!ctl_text_ok(info->names[i]) || strlen(info->names[i]) >= CTL_DNSNAME_MAX)
            continue;
        snprintf(st->names[k++], CTL_DNSNAME_MAX, "%s", info->names[i]);
    }
    st->n_names = k;
    st->not_before = info->not_before;
    st->not_after = info->base.not_after;
    if (ctl_text_ok(info->base.serial))
        snprintf(st->serial, sizeof st->serial, "%s", info->base.serial);
    st->self_signed = info->self_signed;
}

static int fsync_dir_of(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

int acme_write_file(const char *path, const void *data, size_t len, mode_t mode, char *err,
                    size_t errcap)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path) >= (int)sizeof tmp) {
        snprintf(err, errcap, "%s: path too long", path);
        return -ENAMETOOLONG;
    }
    int fd = mkstemp(tmp); /* same directory: the rename cannot cross file systems */
    if (fd < 0) {
        int e = errno;
        snprintf(err, errcap, "cannot create a file next to %s: %s", path, strerror(e));
        return -e;
    }
    int rc = 0;
    const char *what = "write";
    if (fchmod(fd, mode)) {
        rc = -errno, what = "chmod";
    }
    for (size_t off = 0; rc == 0 && off < len;) {
        ssize_t w = write(fd, (const char *)data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            rc = w < 0 ? -errno : -EIO;
        else
            off += (size_t)w;
    }
    if (rc == 0 && fsync(fd))
        rc = -errno, what = "fsync";
    if (close(fd) && rc == 0)
        rc = -errno, what = "close";
    if (rc == 0 && rename(tmp, path))
        rc = -errno, what = "rename";
    if (rc) {
        unlink(tmp);
        snprintf(err, errcap, "cannot replace %s (%s): %s", path, what, strerror(-rc));
        return rc;
    }
    /* The rename is durable once the directory is; a failure here leaves the new file in
     * place, so it is not reported as a failed install. */
    (void)fsync_dir_of(path);
    return 0;
}
