/* The Director's SIP side: a registrar with Digest authentication (RFC 3261 §22, RFC 8760
 * SHA-256 and MD5; users from the YAML config) and a stateless proxy (RFC 3261 §16.11)
 * that routes between registered users, follows Path back through the access edge, and
 * sends requests for other domains to the edge. Out-of-dialog requests the edge marks as from
 * a remote user are challenged with 407 under the same Digest rules (director/digest_auth.h:
 * nonce-count replay checking, the per-user guess throttle). */
#ifndef DIRECTOR_REGISTRAR_H
#define DIRECTOR_REGISTRAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/addr.h"
#include "common/cfg.h"

struct director_sip_user {
    char *name;
    char *password;
};

/* YAML section `sip:` of the Director. */
struct director_sip_config {
    bool enabled;
    struct addr *udp;
    size_t nudp;
    struct addr *tcp;
    size_t ntcp;
    struct addr *mtls; /* mutual TLS with the tls: certificates (the edge connects here) */
    size_t nmtls;
    char **domains;
    size_t ndomains;
    char *realm;
    char **algorithms; /* offered in this order: "SHA-256", "MD5" */
    size_t nalgorithms;
    struct director_sip_user *users;
    size_t nusers;
    struct addr edge; /* where requests for other domains go (the edge's internal side) */
    char *store;      /* registrations kept across restarts (director/regstore.h), or NULL */
    uint64_t max_expires_s;
    uint64_t nonce_lifetime_ms;
    bool authenticate_remote;               /* 407 for remote users' out-of-dialog requests */
    uint32_t guess_burst, guesses_per_hour; /* wrong answers per user (see */
    uint32_t known_guess_burst, known_guesses_per_hour; /* director/digest_auth.h) */
};

extern const struct cfg_key registrar_config_keys[];

struct director;
int registrar_start(struct director *d);
void registrar_stop(struct director *d);

#endif
