/* What an edge checks and writes when the Director hands it a certificate (common/acme_edge.c
 * is the event-driven side): the names asked for, whether an issued certificate answers the
 * request, the CertStatus it reports, and replacing a file so that a reader sees the old
 * content or the new, never a part. Pure apart from acme_write_file; no event loop. */
#ifndef COMMON_ACME_INSTALL_H
#define COMMON_ACME_INSTALL_H

#include "common/ctl.h"
#include "common/pki.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* True if name may go into a certificate request: a DNS name of 1..253 bytes, labels of
 * 1..63 letters, digits and inner hyphens, at least two labels, optionally "*." first. */
bool acme_dns_name_ok(const char *name);

/* A CsrRequest's names: 1..CTL_DNSNAMES_MAX, each acme_dns_name_ok, no duplicates
 * (case-insensitive). 0, or -EINVAL with err saying which. */
int acme_names_check(const char (*names)[CTL_DNSNAME_MAX], size_t n, char *err, size_t errcap);

/* Whether an issued certificate (its first certificate inspected into info, already checked
 * against the pending key) answers a request for names at time now: every name requested
 * is one of its dNSNames and it has no other (case-insensitive), it is not self-signed, and now is
 * within [not_before - 1 h, not_after) (an hour of clock skew allowed). 0, or -EINVAL with err. */
int acme_issued_check(const struct pki_cert_info *info, const char (*names)[CTL_DNSNAME_MAX],
                      size_t n, int64_t now, char *err, size_t errcap);

/* At most this many certificates in an issued chain (the leaf and its intermediates; real
 * ACME CAs send 2 or 3). */
#define ACME_CHAIN_MAX 5

/* Whether an issued chain has the shape RFC 8555 9.1 gives application/pem-certificate-chain:
 * nothing but "CERTIFICATE" PEM blocks, whitespace between them (no explanatory text, no
 * other block: a key would land in a world-readable file), 1..ACME_CHAIN_MAX of them. The
 * number of certificates, or -EINVAL with err. Pure: the blocks' content is pki's job. */
int acme_chain_shape(const char *pem, char *err, size_t errcap);

/* The CertStatus for a certificate inspected into info (error left empty). */
void acme_status_fill(const struct pki_cert_info *info, struct ctl_cert_status *st);

/* Replaces path with data atomically: a temporary file in the same directory, written in
 * full with mode, fsync'd, renamed over path, and the directory fsync'd, so a crash or a
 * concurrent reader sees the old file or the new one. 0, or a negative errno with err
 * (the temporary file is removed). */
int acme_write_file(const char *path, const void *data, size_t len, mode_t mode, char *err,
                    size_t errcap);

#endif
