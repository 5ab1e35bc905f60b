/* ACME TLS-ALPN-01 (RFC 8737) for the OpenSSL backend (tls_openssl.h): a server ctx with a
 * challenge store installs a ClientHello callback. A hello offering just "acme-tls/1" gets
 * the challenge certificate for its SNI name (or a failed handshake), no client
 * certificate request, no resumption and no ticket; on_alpn then selects "acme-tls/1" for
 * it. Every other hello goes on untouched. */
#include "common/acme_challenges.h"
#include "common/tls_openssl.h"

#include <stdlib.h>
#include <string.h>

/* The challenge certificate and key of a store entry into ssl. */
static bool use_challenge(SSL *ssl, const char *cert, const char *key)
{
    BIO *cb = BIO_new_mem_buf(cert, -1), *kb = BIO_new_mem_buf(key, -1);
    X509 *x = cb ? PEM_read_bio_X509(cb, NULL, tls_ossl_no_password, NULL) : NULL;
    EVP_PKEY *k = kb ? PEM_read_bio_PrivateKey(kb, NULL, tls_ossl_no_password, NULL) : NULL;
    bool ok = x && k;
    if (ok) {
        SSL_certs_clear(ssl);
        ok = SSL_use_cert_and_key(ssl, x, k, NULL, 1) == 1; /* checks they match */
    }
    X509_free(x);
    EVP_PKEY_free(k);
    BIO_free(cb);
    BIO_free(kb);
    return ok;
}

int tls_ossl_acme_hello(SSL *ssl, int *alert, void *arg)
{
    static const unsigned char sid_ctx[] = ACME_ALPN_PROTOCOL;
    struct tls_ctx *ctx = arg;
    struct tls_conn *c = SSL_get_app_data(ssl);
    const unsigned char *ext;
    size_t len;
    bool acme = c &&
                SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation,
                                          &ext, &len) &&
                tls_alpn_only(ext, len, ACME_ALPN_PROTOCOL);
    if (c && c->acme && !acme) {
        /* A second hello (after HelloRetryRequest) that no longer offers just acme-tls/1:
         * the first one's challenge set-up (its certificate, no client certificate asked
         * for) must not become an ordinary connection. on_alpn cannot catch it when the
         * second hello has no ALPN at all. */
        *alert = SSL_AD_ILLEGAL_PARAMETER;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (!acme)
        return SSL_CLIENT_HELLO_SUCCESS; /* an ordinary client */
    c->acme = true;
    char name[256];
    if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &len) ||
        tls_sni_ext_name(ext, len, name, sizeof name) <= 0) {
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }
    free(c->b.sni);
    c->b.sni = strdup(name);
    char *cert = NULL, *key = NULL;
    bool ok =
        acme_challenges_alpn(ctx->acme, name, &cert, &key) == 0 && use_challenge(ssl, cert, key);
    if (key)
        OPENSSL_cleanse(key, strlen(key));
    free(key);
    free(cert);
    ERR_clear_error();
    if (!ok) {
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }
    c->acme_found = true;
    /* The validating CA shows no client certificate, and its certificate check needs a
     * full handshake: a session of another context id is not resumed. */
    SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
    SSL_set_session_id_context(ssl, sid_ctx, sizeof sid_ctx - 1);
    SSL_set_num_tickets(ssl, 0);
    return SSL_CLIENT_HELLO_SUCCESS;
}
