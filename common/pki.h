/* Keys, certificate requests and certificates for ACME (RFC 8555, RFC 8737), on the TLS
 * backend built in (common/tls_mbed_pki.c or common/tls_openssl_pki.c): what an edge needs
 * to ask for a certificate without its key ever leaving it, and what the Director needs to
 * sign its ACME requests. Pure: PEM or DER in memory, no files, no event loop. Results
 * are malloc'd and the caller frees them; errors are negative errnos, err says why. */
#ifndef COMMON_PKI_H
#define COMMON_PKI_H

#include "common/tls.h"
#include <stddef.h>
#include <stdint.h>

/* A new ECDSA P-256 private key, PEM. */
int pki_key_generate(char **key_pem, char *err, size_t errcap);

/* A PKCS#10 request (DER) signed by key_pem: subject CN = names[0], a subjectAltName
 * extension with every name as dNSName (iPAddress for an IP literal). 1 <= n <= 16, each
 * a host name ("*." first label allowed) or IP literal. A CN holds 64 bytes at most
 * (X.520): when names[0] is longer, the CN is the first name that fits, or there is none. */
int pki_csr_create(const char *key_pem, const char *const *names, size_t n, uint8_t **der,
                   size_t *der_len, char *err, size_t errcap);

/* A self-signed certificate (PEM) for key_pem naming `name` (CN and dNSName SAN), valid
 * from an hour ago for `days` (1 to 36500): an edge's placeholder until its first ACME
 * certificate. A name over 64 bytes is in the SAN only, its first label the CN. */
int pki_self_signed(const char *key_pem, const char *name, unsigned days, char **cert_pem,
                    char *err, size_t errcap);

/* RFC 8737 TLS-ALPN-01: a fresh P-256 key and a self-signed certificate (PEM) with the one
 * dNSName `name` and the critical id-pe-acmeIdentifier extension (1.3.6.1.5.5.7.1.31)
 * holding OCTET STRING digest = SHA-256 of the key authorization. Valid 7 days. */
int pki_alpn_challenge_cert(const char *name, const uint8_t digest[32], char **cert_pem,
                            char **key_pem, char *err, size_t errcap);

/* JWS ES256 (RFC 7518 §3.4) with a P-256 key: the public key's affine coordinates, 32
 * bytes each, big-endian (base64url them for the JWK), and the signature of data as the
 * 64-byte r || s (not DER). */
int pki_es256_public(const char *key_pem, uint8_t x[32], uint8_t y[32], char *err, size_t errcap);
int pki_es256_sign(const char *key_pem, const void *data, size_t len, uint8_t sig[64], char *err,
                   size_t errcap);

/* What the first certificate of a PEM chain says (tls_cert_info), with its notBefore and
 * whether it is self-signed (issuer == subject). With key_pem, -EKEYREJECTED unless the
 * key matches that certificate. */
struct pki_cert_info {
    struct tls_cert_info base; /* subject, serial, not_after, fingerprint */
    int64_t not_before;
    bool self_signed;
    char names[16][256]; /* dNSName SANs (CN when none), n_names of them */
    size_t n_names;
};
int pki_chain_inspect(const char *chain_pem, const char *key_pem, struct pki_cert_info *info,
                      char *err, size_t errcap);

/* Whether a PEM chain is a path a client can follow: every certificate parses, and each is
 * issued by the one after it (issuer == next subject, the next is a CA, and its key
 * verifies the signature). The last one need not be a root. 0, or -EINVAL with err naming
 * the first certificate that fails (1 = the leaf). Shape (PEM blocks only, how many) is
 * acme_chain_shape's job (common/acme_install.h). */
int pki_chain_check(const char *chain_pem, char *err, size_t errcap);

#endif
