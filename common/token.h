/* Signed tokens (conference session keys) and TURN REST credentials, with key rotation.
 *
 * A keyring holds the current and the previous secret of one kind, each with a key id;
 * both verify, only the current one signs, so secrets rotate without a flag day. */
#ifndef COMMON_TOKEN_H
#define COMMON_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TOKEN_SECRET_MAX 64
#define TOKEN_KEYID_MAX 32

struct token_key {
    char id[TOKEN_KEYID_MAX];
    uint8_t secret[TOKEN_SECRET_MAX];
    size_t secret_len;
    int64_t not_after; /* unix seconds; 0 = no limit */
};

struct keyring {
    struct token_key cur, prev; /* prev.secret_len == 0 when absent */
};

/* Installs a new current key; the old current becomes previous. Same id = replace. */
int keyring_rotate(struct keyring *kr, const char *id, const void *secret, size_t len,
                   int64_t not_after);
const struct token_key *keyring_find(const struct keyring *kr, const char *id, int64_t now);

/* --- Conference session keys ---------------------------------------------------
 * Text form: "v1.<kid>.<base64url(claims)>.<base64url(HMAC-SHA256(secret,
 * 'v1.'+kid+'.'+claims_b64))>" claims:
 * "conf=<id>;user=<participant>;role=<role>;exp=<unix>;jti=<unique id>" (values URL-safe, no ';' or
 * '='). */
#define TOKEN_FIELD_MAX 128
struct token_claims {
    char conf[TOKEN_FIELD_MAX];
    char user[TOKEN_FIELD_MAX];
    char role[32];
    char jti[40];
    int64_t exp;
};

enum token_result {
    TOKEN_OK = 0,
    TOKEN_MALFORMED = -1,
    TOKEN_UNKNOWN_KEY = -2, /* foreign or rotated-out key id */
    TOKEN_BAD_SIGNATURE = -3,
    TOKEN_EXPIRED = -4,
};

/* Mints a token with the keyring's current key into out; returns length or -ENOSPC/-EINVAL. */
ssize_t token_mint(const struct keyring *kr, const struct token_claims *c, char *out, size_t cap);
/* Verifies text (not NUL-terminated) at time now; fills claims on TOKEN_OK. Constant-time MAC
 * check. */
enum token_result token_verify(const struct keyring *kr, const char *text, size_t len, int64_t now,
                               struct token_claims *claims);

/* --- TURN REST credentials (coturn use-auth-secret) ---------------------------
 * username = "<expiry>:<user>", password = base64(HMAC-SHA1(secret, username)). */
int turn_rest_username(char *out, size_t cap, int64_t expiry, const char *user);
int turn_rest_password(const void *secret, size_t slen, const char *username, char *out,
                       size_t cap);
/* Parses the expiry out of a REST username; -EINVAL if it has none. */
int turn_rest_expiry(const char *username, size_t len, int64_t *expiry);

#endif
