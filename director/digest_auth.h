/* Digest authentication for the Director's SIP side (RFC 3261 §22, RFC 7616, RFC 8760), kept
 * apart from I/O: stateless signed nonces, nonce-count replay checking in a table of fixed
 * size, and per-user throttling of password guesses. Pure: time comes in as an argument.
 *
 * Nonces are "<16 hex issue time in ms><16 hex serial><32 hex HMAC-SHA256(key, both)[:16]>"
 * (the serial tells apart nonces of the same millisecond): any nonce the
 * Director hands out can be checked without having been stored, so asking for nonces costs
 * the Director nothing. Only nonces that carried a correct answer enter the nc table
 * (DA_NC_ENTRIES entries, set-associative); when an entry is pushed out before its nonce
 * expired, every nonce issued at or before it becomes stale (a watermark), so an evicted
 * nonce can never be replayed: its owner is asked again with stale=true.
 *
 * Guesses are counted per user name (any name, existing or not, so the answers cannot tell
 * which exist) in DA_SLOTS slots chosen by a keyed hash of the name: a wrong answer costs a
 * token from the slot's bucket; an empty bucket refuses further answers unchecked until it
 * refills. Addresses a user authenticated from before (up to DA_KNOWN per user, forgotten after
 * DA_KNOWN_TTL_MS) draw on a second bucket, so an attacker elsewhere who empties the first
 * does not lock the real user out. In any hour at most
 *     guess_burst + guesses_per_hour + known_burst + known_per_hour
 * answers for one user are checked against the password, from however many addresses. */
#ifndef DIRECTOR_DIGEST_AUTH_H
#define DIRECTOR_DIGEST_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DA_NONCE_LEN 64
#define DA_NC_ENTRIES 4096 /* nonce-count table: 4096 x 32 bytes, allocated once */
#define DA_SLOTS 4096      /* throttle slots, allocated once */
#define DA_KNOWN 4         /* remembered good addresses per slot */
#define DA_KNOWN_TTL_MS (30ULL * 24 * 3600 * 1000)

struct da_limits {
    uint64_t nonce_lifetime_ms;
    uint32_t guess_burst;      /* wrong answers in a row before back-off (unknown addresses) */
    uint32_t guesses_per_hour; /* refill of that bucket */
    uint32_t known_burst;      /* the same for addresses the user authenticated from before */
    uint32_t known_per_hour;
};

/* Credentials as sent (Authorization or Proxy-Authorization), unquoted; NULL when absent. */
struct da_creds {
    const char *username, *realm, *nonce, *uri, *response, *algorithm, *cnonce, *qop, *nc;
};

enum da_result {
    DA_OK,        /* right answer, fresh nonce, nc above any seen for it */
    DA_CHALLENGE, /* no or wrong credentials: challenge again */
    DA_STALE,     /* right answer on an expired, replayed or forgotten nonce: stale=true */
    DA_THROTTLED, /* too many wrong answers for this user lately: not checked */
};

struct da_verdict {
    enum da_result result;
    bool checked;           /* the answer was compared with the password */
    bool throttle_started;  /* this wrong answer emptied the bucket (log it once) */
    bool known_address;     /* counted against the known-address bucket */
    uint32_t retry_after_s; /* DA_THROTTLED: when the next answer will be checked */
};

struct da_request {
    const char *method;       /* REGISTER, INVITE, ... (part of the digest) */
    const char *user;         /* the user the request claims to be (To or From user) */
    const char *password;     /* that user's password; NULL: no such user */
    const struct da_creds *c; /* NULL: no credentials for our realm */
    const void *client;       /* the client's address bytes (its host), for known addresses */
    size_t client_len;
    uint64_t now_ms;
};

struct da_state;

/* Allocates the tables (their size is fixed: DA_NC_ENTRIES, DA_SLOTS). 0 or -ENOMEM/-EIO. */
int da_create(struct da_state **out);
void da_destroy(struct da_state *s);

/* A fresh nonce for a challenge (DA_NONCE_LEN characters and a NUL). */
void da_nonce_make(struct da_state *s, uint64_t now_ms, char out[DA_NONCE_LEN + 1]);

/* Checks a request's credentials against realm and the user's password, updating the nc table
 * and the throttle. */
void da_check(struct da_state *s, const struct da_limits *lim, const char *realm,
              const struct da_request *r, struct da_verdict *v);

/* Digest response (RFC 7616 §3.4.1) as lower-case hex into out (65 bytes). algorithm is
 * "MD5" or "SHA-256"; qop NULL or "auth". Returns 0 or -EINVAL. */
int da_digest(const char *algorithm, const char *user, const char *realm, const char *password,
              const char *method, const char *uri, const char *nonce, const char *nc,
              const char *cnonce, const char *qop, char out[65]);

/* Removes the Proxy-Authorization lines (folded ones whole) carrying realm="<realm>" from the
 * header section of the SIP message in p: credentials meant for us go no further (the next hop
 * must not get a user's Digest answer to attack offline; other realms' pass, RFC 3261 §22.3).
 * Returns the new length. */
size_t da_strip_credentials(uint8_t *p, size_t len, const char *realm);

#endif
