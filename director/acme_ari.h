/* ACME Renewal Information (ARI, RFC 9773): the certificate identifier the CA's
 * renewalInfo resource is asked about. Pure: no I/O. */
#ifndef DIRECTOR_ACME_ARI_H
#define DIRECTOR_ACME_ARI_H

#include <stddef.h>
#include <stdint.h>

#define ACME_AKI_MAX 64
#define ACME_CERT_ID_MAX 160

/* The keyIdentifier of the AuthorityKeyIdentifier extension of the first certificate of
 * a PEM chain: 0 with *len bytes in aki, -ENOENT when it has none, -EBADMSG for something
 * that is not a certificate. */
int acme_cert_aki(const char *chain_pem, uint8_t aki[ACME_AKI_MAX], size_t *len);
/* The same from one certificate's DER. */
int acme_cert_aki_der(const uint8_t *der, size_t n, uint8_t aki[ACME_AKI_MAX], size_t *len);

/* certID = base64url(keyIdentifier) "." base64url(serial's DER INTEGER content bytes), from
 * the serial as hex with or without colons ("00:87:65:43:21", "87654321"). -EINVAL for a
 * bad serial, -ENOSPC when out is too small. */
int acme_ari_cert_id(const uint8_t *aki, size_t aki_len, const char *serial_hex, char *out,
                     size_t cap);

#endif
