/* The ACME CA's JSON (RFC 8555 §7.1, problem documents RFC 7807) into plain structs with
 * limits. Pure: no I/O. Each parser returns 0, or -EBADMSG for something that is not the
 * object it should be (not JSON, a missing or mistyped required member, a value longer
 * than its limit, too many entries), with err saying which. Unknown members are ignored. */
#ifndef DIRECTOR_ACME_PROTO_H
#define DIRECTOR_ACME_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ACME_URL_MAX 512
#define ACME_NAME_MAX 256
#define ACME_TOKEN_MAX 128
#define ACME_DETAIL_MAX 256
#define ACME_AUTHZ_MAX 16
#define ACME_CHALLENGES_MAX 8

struct acme_directory {
    char new_nonce[ACME_URL_MAX], new_account[ACME_URL_MAX], new_order[ACME_URL_MAX];
    char renewal_info[ACME_URL_MAX]; /* ARI (draft-ietf-acme-ari), "" when not offered */
    char terms_of_service[ACME_URL_MAX];
};

/* An RFC 7807 problem ("urn:ietf:params:acme:error:badNonce", ...). */
struct acme_problem {
    char type[128];
    char detail[ACME_DETAIL_MAX];
    int status;
};

enum acme_status {
    ACME_ST_UNKNOWN = 0,
    ACME_ST_PENDING,
    ACME_ST_READY,
    ACME_ST_PROCESSING,
    ACME_ST_VALID,
    ACME_ST_INVALID,
    ACME_ST_DEACTIVATED,
    ACME_ST_EXPIRED,
    ACME_ST_REVOKED,
};
const char *acme_status_name(enum acme_status s);

struct acme_account {
    enum acme_status status;
};

struct acme_order {
    enum acme_status status;
    char names[ACME_AUTHZ_MAX][ACME_NAME_MAX]; /* dns identifiers */
    size_t n_names;
    char authz[ACME_AUTHZ_MAX][ACME_URL_MAX];
    size_t n_authz;
    char finalize[ACME_URL_MAX];
    char certificate[ACME_URL_MAX]; /* once valid */
    bool has_error;
    struct acme_problem error;
};

struct acme_challenge {
    char type[32]; /* "http-01", "tls-alpn-01", "dns-01", ... */
    char url[ACME_URL_MAX];
    char token[ACME_TOKEN_MAX];
    enum acme_status status;
    bool has_error;
    struct acme_problem error;
};

struct acme_authz {
    enum acme_status status;
    char name[ACME_NAME_MAX]; /* identifier value (type dns) */
    bool wildcard;
    struct acme_challenge challenges[ACME_CHALLENGES_MAX];
    size_t n_challenges;
};

/* ARI renewalInfo: the window the CA suggests renewing in (unix seconds). */
struct acme_renewal_info {
    int64_t start, end;
};

int acme_parse_directory(const char *json, size_t len, struct acme_directory *out, char *err,
                         size_t errcap);
int acme_parse_problem(const char *json, size_t len, struct acme_problem *out, char *err,
                       size_t errcap);
int acme_parse_account(const char *json, size_t len, struct acme_account *out, char *err,
                       size_t errcap);
int acme_parse_order(const char *json, size_t len, struct acme_order *out, char *err,
                     size_t errcap);
int acme_parse_authz(const char *json, size_t len, struct acme_authz *out, char *err,
                     size_t errcap);
int acme_parse_challenge(const char *json, size_t len, struct acme_challenge *out, char *err,
                         size_t errcap);
int acme_parse_renewal_info(const char *json, size_t len, struct acme_renewal_info *out, char *err,
                            size_t errcap);
/* The challenge of type in a, or NULL. */
const struct acme_challenge *acme_authz_challenge(const struct acme_authz *a, const char *type);
/* RFC 3339 ("2026-12-07T13:40:42Z", fractions and offsets allowed) to unix seconds; -EINVAL. */
int acme_parse_time(const char *s, int64_t *out);
/* Retry-After (RFC 9110 §10.2.3): delay-seconds or an HTTP-date, as seconds from now
 * (clamped to >= 0); -EINVAL when neither. */
int acme_parse_retry_after(const char *v, int64_t now, int64_t *secs);

#endif
