// fuzz-sources: director/acme_proto.c director/acme_ari.c common/crypto.c
/* Fuzzes the Director's parsing of the ACME CA's JSON (director/acme_proto.c): the first
 * byte picks the document (directory, problem, account, order, authorization, challenge,
 * renewalInfo, Retry-After, RFC 3339 time, a certificate's DER for its AuthorityKeyIdentifier,
 * a serial for the ARI certID), the rest is the body. Every parse must
 * return 0 or -EBADMSG/-EINVAL and leave NUL-terminated strings within their limits. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "director/acme_ari.h"
#include "director/acme_proto.h"

#define TERMINATED(a) (memchr((a), '\0', sizeof(a)) != NULL)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    char err[128];
    int rc = 0;
    switch (data[0] % 11) {
    case 0: {
        struct acme_directory d;
        rc = acme_parse_directory(p, n, &d, err, sizeof err);
        if (rc == 0 && (!TERMINATED(d.new_nonce) || !TERMINATED(d.renewal_info)))
            abort();
        break;
    }
    case 1: {
        struct acme_problem pr;
        rc = acme_parse_problem(p, n, &pr, err, sizeof err);
        break;
    }
    case 2: {
        struct acme_account a;
        rc = acme_parse_account(p, n, &a, err, sizeof err);
        break;
    }
    case 3: {
        struct acme_order *o = malloc(sizeof *o);
        rc = acme_parse_order(p, n, o, err, sizeof err);
        if (rc == 0 && (o->n_authz > ACME_AUTHZ_MAX || o->n_names > ACME_AUTHZ_MAX))
            abort();
        for (size_t i = 0; rc == 0 && i < o->n_authz; i++)
            if (!TERMINATED(o->authz[i]))
                abort();
        free(o);
        break;
    }
    case 4: {
        struct acme_authz *a = malloc(sizeof *a);
        rc = acme_parse_authz(p, n, a, err, sizeof err);
        if (rc == 0 && a->n_challenges > ACME_CHALLENGES_MAX)
            abort();
        if (rc == 0)
            acme_authz_challenge(a, "http-01");
        free(a);
        break;
    }
    case 5: {
        struct acme_challenge c;
        rc = acme_parse_challenge(p, n, &c, err, sizeof err);
        break;
    }
    case 6: {
        struct acme_renewal_info r;
        rc = acme_parse_renewal_info(p, n, &r, err, sizeof err);
        if (rc == 0 && r.end < r.start)
            abort();
        break;
    }
    case 9: {
        uint8_t aki[ACME_AKI_MAX];
        size_t len = 0;
        rc = acme_cert_aki_der(data + 1, n, aki, &len);
        if (rc == 0 && (len == 0 || len > ACME_AKI_MAX))
            abort();
        if (rc == -ENOENT)
            rc = 0;
        break;
    }
    case 10: {
        char s[256], id[ACME_CERT_ID_MAX];
        size_t m = n < sizeof s - 1 ? n : sizeof s - 1;
        memcpy(s, p, m);
        s[m] = '\0';
        static const uint8_t aki[4] = {1, 2, 3, 4};
        rc = acme_ari_cert_id(aki, sizeof aki, s, id, sizeof id);
        if (rc == 0 && !strchr(id, '.'))
            abort();
        if (rc == -ENOSPC)
            rc = 0;
        break;
    }
    default: {
        char s[256];
        size_t m = n < sizeof s - 1 ? n : sizeof s - 1;
        memcpy(s, p, m);
        s[m] = '\0';
        int64_t v;
        rc = data[0] % 11 == 7 ? acme_parse_retry_after(s, 1796650842, &v) : acme_parse_time(s, &v);
        if (rc == 0 && data[0] % 11 == 7 && v < 0)
            abort();
        break;
    }
    }
    if (rc != 0 && rc != -EBADMSG && rc != -EINVAL)
        abort();
    return 0;
}
