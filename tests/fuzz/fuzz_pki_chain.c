// fuzz-sources: common/tls.c common/tls_shared.c common/tls_sniff.c common/certname.c common/util.c common/acme_challenges.c common/acme_install.c common/ctl_codec.c build/gen/proto/control.pb-c.c
/* Fuzzes what common/pki.h reads: a certificate chain as the edge gets it in CertIssued
 * (pki_chain_inspect, the code of tls_cert_inspect too: PEM blocks, DER, the acmeIdentifier
 * callback of the mbedTLS backend), with or without a key to match, its shape
 * (acme_chain_shape) and its signatures (pki_chain_check); and names as a
 * CsrRequest brings them (tls_check_cert_names, pki_csr_create). Input: a mode byte (0: chain,
 * 1: chain and a key it cannot match, 2: names one a line), then the bytes. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/acme_install.h"
#include "common/pki.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char *key;
    char err[256] = "";
    if (size < 1 || size > 32768)
        return 0;
    if (!key && pki_key_generate(&key, err, sizeof err) != 0)
        abort();
    char *s = malloc(size);
    if (!s)
        return 0;
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    int rc;
    if (data[0] % 3 < 2) {
        struct pki_cert_info ci;
        rc = pki_chain_inspect(s, data[0] % 3 ? key : NULL, &ci, err, sizeof err);
        if (rc == 0) {
            if (ci.n_names > 16)
                abort();
            for (size_t i = 0; i < ci.n_names; i++)
                if (strlen(ci.names[i]) >= sizeof ci.names[i])
                    abort();
        } else if (rc > 0 || err[0] == '\0') {
            abort();
        }
        err[0] = '\0';
        rc = acme_chain_shape(s, err, sizeof err);
        if (rc == 0 || rc > ACME_CHAIN_MAX || (rc < 0 && (rc != -EINVAL || err[0] == '\0')))
            abort();
        err[0] = '\0';
        rc = pki_chain_check(s, err, sizeof err);
        if (rc > 0 || (rc < 0 && err[0] == '\0'))
            abort();
    } else {
        const char *names[20];
        size_t n = 0;
        for (char *p = s, *nl; n < 20; p = nl + 1) {
            names[n++] = p;
            if ((nl = strchr(p, '\n')) == NULL)
                break;
            *nl = '\0';
        }
        uint8_t *der = NULL;
        size_t len = 0;
        rc = pki_csr_create(key, names, n, &der, &len, err, sizeof err);
        if ((rc == 0) != (der != NULL) || (rc && (rc != -EINVAL || err[0] == '\0')))
            abort();
        if (rc == 0 && (n > 16 || len < 100 || der[0] != 0x30))
            abort();
        free(der);
    }
    free(s);
    return 0;
}
