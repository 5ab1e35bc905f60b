/* The ACME CA's JSON into plain structs (jansson), with limits. */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "director/acme_proto.h"

static const char *const status_names[] = {
    [ACME_ST_UNKNOWN] = "unknown",
    [ACME_ST_PENDING] = "pending",
    [ACME_ST_READY] = "ready",
    [ACME_ST_PROCESSING] = "processing",
    [ACME_ST_VALID] = "valid",
    [ACME_ST_INVALID] = "invalid",
    [ACME_ST_DEACTIVATED] = "deactivated",
    [ACME_ST_EXPIRED] = "expired",
    [ACME_ST_REVOKED] = "revoked",
};

const char *acme_status_name(enum acme_status s)
{
    return (unsigned)s < sizeof status_names / sizeof *status_names ? status_names[s] : "unknown";
}

static enum acme_status status_parse(const char *s)
{
    for (size_t i = 1; i < sizeof status_names / sizeof *status_names; i++)
        if (strcmp(s, status_names[i]) == 0)
            return (enum acme_status)i;
    return ACME_ST_UNKNOWN;
}

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errcap, const char *fmt,
                                                      ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && errcap)
        vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
    return -EBADMSG;
}

/* The JSON object in json, or NULL (err filled). */
static json_t *load_object(const char *json, size_t len, char *err, size_t errcap)
{
    json_error_t je;
    /* JSON_REJECT_DUPLICATES: one meaning per member, whatever a proxy in between thinks. */
    json_t *j = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        if (err && errcap)
            snprintf(err, errcap, "not JSON: %s", je.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        fail(err, errcap, "%s", "not a JSON object");
        return NULL;
    }
    return j;
}

/* Copies member key (a string) into out: 0, 1 when absent (and !required), or -EBADMSG. */
static int get_str(json_t *o, const char *key, bool required, char *out, size_t cap, char *err,
                   size_t errcap)
{
    json_t *v = json_object_get(o, key);
    if (!v) {
        if (out && cap)
            out[0] = '\0';
        return required ? fail(err, errcap, "missing \"%s\"", key) : 1;
    }
    if (!json_is_string(v))
        return fail(err, errcap, "\"%s\" is not a string", key);
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n >= cap || memchr(s, '\0', n))
        return fail(err, errcap, "\"%s\" is too long", key);
    memcpy(out, s, n + 1);
    return 0;
}

static int get_status(json_t *o, bool required, enum acme_status *st, char *err, size_t errcap)
{
    char s[32];
    int rc = get_str(o, "status", required, s, sizeof s, err, errcap);
    if (rc < 0)
        return rc;
    *st = rc == 0 ? status_parse(s) : ACME_ST_UNKNOWN;
    if (rc == 0 && *st == ACME_ST_UNKNOWN)
        return fail(err, errcap, "unknown status \"%s\"", s);
    return 0;
}

static int problem_from(json_t *o, struct acme_problem *p, char *err, size_t errcap)
{
    memset(p, 0, sizeof *p);
    if (!json_is_object(o))
        return fail(err, errcap, "%s", "a problem that is not an object");
    /* Long details are cut, not refused: they are only logged. */
    json_t *d = json_object_get(o, "detail");
    if (json_is_string(d))
        snprintf(p->detail, sizeof p->detail, "%s", json_string_value(d));
    int rc = get_str(o, "type", false, p->type, sizeof p->type, err, errcap);
    if (rc < 0)
        return rc;
    json_t *s = json_object_get(o, "status");
    if (json_is_integer(s) && json_integer_value(s) >= 100 && json_integer_value(s) <= 599)
        p->status = (int)json_integer_value(s);
    return 0;
}

int acme_parse_problem(const char *json, size_t len, struct acme_problem *out, char *err,
                       size_t errcap)
{
    json_t *j = load_object(json, len, err, errcap);
    if (!j)
        return -EBADMSG;
    int rc = problem_from(j, out, err, errcap);
    json_decref(j);
    return rc;
}

int acme_parse_directory(const char *json, size_t len, struct acme_directory *out, char *err,
                         size_t errcap)
{
    memset(out, 0, sizeof *out);
    json_t *j = load_object(json, len, err, errcap);
    if (!j)
        return -EBADMSG;
    int rc = get_str(j, "newNonce", true, out->new_nonce, sizeof out->new_nonce, err, errcap);
    if (rc == 0)
        rc = get_str(j, "newAccount", true, out->new_account, sizeof out->new_account, err, errcap);
    if (rc == 0)
        rc = get_str(j, "newOrder", true, out->new_order, sizeof out->new_order, err, errcap);
    if (rc == 0)
        rc = get_str(j, "renewalInfo", false, out->renewal_info, sizeof out->renewal_info, err,
                     errcap);
    json_t *meta = json_object_get(j, "meta");
    if (rc >= 0 && json_is_object(meta))
        rc = get_str(meta, "termsOfService", false, out->terms_of_service,
                     sizeof out->terms_of_service, err, errcap);
    json_decref(j);
    return rc < 0 ? rc : 0;
}

int acme_parse_account(const char *json, size_t len, struct acme_account *out, char *err,
                       size_t errcap)
{
    memset(out, 0, sizeof *out);
    json_t *j = load_object(json, len, err, errcap);
    if (!j)
        return -EBADMSG;
    int rc = get_status(j, true, &out->status, err, errcap);
    json_decref(j);
    return rc;
}

int acme_parse_order(const char *json, size_t len, struct acme_order *out, char *err, size_t errcap)
{
    memset(out, 0, sizeof *out);
    json_t *j = load_object(json, len, err, errcap);
    if (!j)
        return -EBADMSG;
    int rc = get_status(j, true, &out->status, err, errcap);
    if (rc == 0)
        rc = get_str(j, "finalize", true, out->finalize, sizeof out->finalize, err, errcap);
    if (rc == 0)
        rc = get_str(j, "certificate", false, out->certificate, sizeof out->certificate, err,
                     errcap);
    json_t *ids = json_object_get(j, "identifiers"), *az = json_object_get(j, "authorizations");
    if (rc >= 0 && (!json_is_array(ids) || !json_is_array(az)))
        rc = fail(err, errcap, "%s", "\"identifiers\" or \"authorizations\" is not an array");
    if (rc >= 0 && (json_array_size(ids) > ACME_AUTHZ_MAX || json_array_size(az) > ACME_AUTHZ_MAX))
        rc = fail(err, errcap, "%s", "too many identifiers or authorizations");
    size_t i;
    json_t *v;
    if (rc >= 0)
        json_array_foreach(ids, i, v)
        {
            char type[16];
            if (!json_is_object(v) ||
                (rc = get_str(v, "type", true, type, sizeof type, err, errcap)) < 0 ||
                (rc = get_str(v, "value", true, out->names[i], sizeof out->names[i], err, errcap)) <
                    0) {
                rc = rc < 0 ? rc : fail(err, errcap, "%s", "an identifier is not an object");
                break;
            }
            out->n_names = i + 1;
        }
    if (rc >= 0)
        json_array_foreach(az, i, v)
        {
            if (!json_is_string(v) || json_string_length(v) >= ACME_URL_MAX) {
                rc = fail(err, errcap, "%s", "an authorization URL is not a string or too long");
                break;
            }
            snprintf(out->authz[i], sizeof out->authz[i], "%s", json_string_value(v));
            out->n_authz = i + 1;
        }
    json_t *e = json_object_get(j, "error");
    if (rc >= 0 && e) {
        out->has_error = true;
        rc = problem_from(e, &out->error, err, errcap);
    }
    json_decref(j);
    return rc < 0 ? rc : 0;
}

static int challenge_from(json_t *o, struct acme_challenge *c, char *err, size_t errcap)
{
    memset(c, 0, sizeof *c);
    if (!json_is_object(o))
        return fail(err, errcap, "%s", "a challenge is not an object");
    int rc = get_str(o, "type", true, c->type, sizeof c->type, err, errcap);
    if (rc == 0)
        rc = get_str(o, "url", true, c->url, sizeof c->url, err, errcap);
    if (rc == 0)
        rc = get_status(o, true, &c->status, err, errcap);
    if (rc == 0) /* dns-01 and the rest carry one too; a challenge without one is unusable */
        rc = get_str(o, "token", false, c->token, sizeof c->token, err, errcap);
    json_t *e = json_object_get(o, "error");
    if (rc >= 0 && e) {
        c->has_error = true;
        rc = problem_from(e, &c->error, err, errcap);
    }
    return rc < 0 ? rc : 0;
}

int acme_parse_challenge(const char *json, size_t len, struct acme_challenge *out, char *err,
                         size_t errcap)
{
    json_t *j = load_object(json, len, err, errcap);
    if (!j) {
        memset(out, 0, sizeof *out);
        return -EBADMSG;
    }
    int rc = challenge_from(j, out, err, errcap);
    json_decref(j);
    return rc;
}

int acme_parse_authz(const char *json, size_t len, struct acme_authz *out, char *err, size_t errcap)
{
    memset(out, 0, sizeof *out);
    json_t *j = load_object(json, len, err, errcap);
    if (!j)
        return -EBADMSG;
    int rc = get_status(j, true, &out->status, err, errcap);
    json_t *id = json_object_get(j, "identifier");
    if (rc == 0 && !json_is_object(id))
        rc = fail(err, errcap, "%s", "missing \"identifier\"");
    if (rc == 0)
        rc = get_str(id, "value", true, out->name, sizeof out->name, err, errcap);
    out->wildcard = json_is_true(json_object_get(j, "wildcard"));
    json_t *ch = json_object_get(j, "challenges");
    if (rc == 0 && !json_is_array(ch))
        rc = fail(err, errcap, "%s", "\"challenges\" is not an array");
    if (rc == 0 && json_array_size(ch) > ACME_CHALLENGES_MAX)
        rc = fail(err, errcap, "%s", "too many challenges");
    size_t i;
    json_t *v;
    if (rc == 0)
        json_array_foreach(ch, i, v)
        {
            if ((rc = challenge_from(v, &out->challenges[i], err, errcap)) < 0)
                break;
            out->n_challenges = i + 1;
        }
    json_decref(j);
    return rc < 0 ? rc : 0;
}

const struct acme_challenge *acme_authz_challenge(const struct acme_authz *a, const char *type)
{
    for (size_t i = 0; i < a->n_challenges; i++)
        if (strcmp(a->challenges[i].type, type) == 0)
            return &a->challenges[i];
    return NULL;
}

int acme_parse_time(const char *s, int64_t *out)
{
    /* "YYYY-MM-DDTHH:MM:SS" exactly (sscanf would take signs and blanks too). */
    static const char pat[] = "dddd-dd-ddTdd:dd:dd";
    char b[sizeof pat];
    size_t len = strnlen(s, 64);
    if (len < sizeof pat - 1 || len >= 64)
        return -EINVAL;
    memcpy(b, s, sizeof pat - 1);
    b[sizeof pat - 1] = '\0';
    for (size_t i = 0; i < sizeof pat - 1; i++)
        if (pat[i] == 'd' ? !isdigit((unsigned char)b[i])
                          : b[i] != pat[i] && !(i == 10 && b[i] == 't'))
            return -EINVAL;
#define NUM2(i) ((b[i] - '0') * 10 + (b[(i) + 1] - '0'))
    struct tm tm = {0};
    tm.tm_year = NUM2(0) * 100 + NUM2(2);
    tm.tm_mon = NUM2(5);
    tm.tm_mday = NUM2(8);
    tm.tm_hour = NUM2(11);
    tm.tm_min = NUM2(14);
    tm.tm_sec = NUM2(17);
#undef NUM2
    if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
        tm.tm_min > 59 || tm.tm_sec > 60)
        return -EINVAL;
    const char *p = s + sizeof pat - 1;
    if (*p == '.') /* fractions of a second: dropped */
        for (p++; isdigit((unsigned char)*p); p++)
            ;
    int64_t off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if ((*p == '+' || *p == '-') && isdigit((unsigned char)p[1]) &&
               isdigit((unsigned char)p[2]) && p[3] == ':' && isdigit((unsigned char)p[4]) &&
               isdigit((unsigned char)p[5])) {
        off = ((p[1] - '0') * 10 + (p[2] - '0')) * 3600 + ((p[4] - '0') * 10 + (p[5] - '0')) * 60;
        if (*p == '-')
            off = -off;
        p += 6;
    } else {
        return -EINVAL;
    }
    if (*p)
        return -EINVAL;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    *out = (int64_t)timegm(&tm) - off;
    return 0;
}

int acme_parse_renewal_info(const char *json, size_t len, struct acme_renewal_info *out, char *err,
                            size_t errcap)
{
    memset(out, 0, sizeof *out);
    json_t *j = load_object(json, len, err, errcap);
    if (!j)
        return -EBADMSG;
    json_t *w = json_object_get(j, "suggestedWindow");
    char a[64], b[64];
    int rc = json_is_object(w) ? 0 : fail(err, errcap, "%s", "missing \"suggestedWindow\"");
    if (rc == 0)
        rc = get_str(w, "start", true, a, sizeof a, err, errcap);
    if (rc == 0)
        rc = get_str(w, "end", true, b, sizeof b, err, errcap);
    if (rc == 0 &&
        (acme_parse_time(a, &out->start) || acme_parse_time(b, &out->end) || out->end < out->start))
        rc = fail(err, errcap, "%s", "a bad suggestedWindow");
    json_decref(j);
    return rc;
}

int acme_parse_retry_after(const char *v, int64_t now, int64_t *secs)
{
    while (*v == ' ')
        v++;
    if (isdigit((unsigned char)*v)) {
        char *end;
        long long n = strtoll(v, &end, 10);
        while (*end == ' ' || *end == '\r' || *end == '\n')
            end++;
        if (*end || n < 0)
            return -EINVAL;
        *secs = n > 86400 * 30 ? 86400 * 30 : n;
        return 0;
    }
    struct tm tm = {0};
    const char *e = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!e)
        return -EINVAL;
    int64_t t = (int64_t)timegm(&tm) - now;
    *secs = t < 0 ? 0 : t;
    return 0;
}
