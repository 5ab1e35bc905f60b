/* TLS on byte buffers. Two backends behind this interface, chosen at build time: mbedTLS
 * 2.28 (common/tls_mbed_*.c, the default: TLS 1.2) and OpenSSL 3 (common/tls_openssl_*.c,
 * make TLS=openssl: TLS 1.3 and 1.2, 0-RTT off); no library type leaves those files.
 *
 * A tls_ctx holds certificates, the CA bundle, ALPN list, session cache and ticket keys;
 * it is built from options once and replaced whole on reload (connections keep the ctx
 * they started with: it is reference counted). A tls_conn never touches a socket: the
 * caller feeds ciphertext in and takes ciphertext out (see common/stream.h for the
 * libuv binding). TLS 1.2+ only; ChaCha20-Poly1305 first in the server's preference. */
#ifndef COMMON_TLS_H
#define COMMON_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct tls_ctx;
struct tls_conn;
struct acme_challenges;

struct tls_cert_opts {
    const char *cert_file; /* PEM chain */
    const char *key_file;  /* PEM key */
};

struct tls_opts {
    bool server;
    /* Certificates: the first is the default; others are picked by SNI against their DNS
     * SANs (CN if none; "*.x.y" wildcards: certname.h), the default answering unknown
     * names. With none on a server, a self-signed ECDSA P-256 certificate for
     * self_signed_name ("localhost" if NULL) is generated at start: log
     * tls_ctx_fingerprint(). A client uses certs[0] as its certificate for mutual TLS. */
    const struct tls_cert_opts *certs;
    size_t ncerts;
    const char *self_signed_name;
    /* CA bundle to verify the peer: a PEM file or a directory of them (a system bundle
     * such as /etc/ssl/certs/ca-certificates.crt is fine). */
    const char *ca_file;
    /* Server: require a client certificate signed by ca_file (mutual TLS). Client: refuse a
     * server whose certificate ca_file did not sign or whose name is not server_name.
     * With ca_file but without verify_peer, the peer is checked but not refused: see
     * tls_conn_peer_verified() (a server then asks browsers for a certificate: avoid). */
    bool verify_peer;
    const char *const *alpn;       /* NULL-terminated protocol list, or NULL; copied */
    uint32_t handshake_timeout_ms; /* for stream.c, when its own option is 0 */
    bool session_tickets;          /* server: issue tickets; client: offer/accept them. Configs
                                    * default it to on; a zeroed struct leaves it off. */
    size_t session_cache_size;     /* server: entries; 0 = default (4096) */
    /* Cipher suites in preference order, ':'-separated mbedTLS/IANA names
     * ("TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256", '_' or '-'); NULL = ChaCha20-Poly1305,
     * then AES-GCM, ECDHE-ECDSA and ECDHE-RSA only. OpenSSL: TLS 1.3 suites are named the
     * same way ("TLS-AES-128-GCM-SHA256"); a list without one turns TLS 1.3 off. */
    const char *ciphers;
    /* ECDHE groups in preference order, ':'-separated ("x25519:secp256r1:secp384r1");
     * NULL = that default. */
    const char *groups;
    /* Server: ACME TLS-ALPN-01 (RFC 8737). A ClientHello offering only "acme-tls/1" for a
     * name with a challenge in this store gets the challenge certificate and that protocol,
     * and the connection ends after the handshake (stream.c: the daemon never sees it);
     * without such a challenge the handshake fails. A hello offering other protocols too
     * is an ordinary client; ordinary clients see no difference. Not owned; must outlive
     * the ctx. */
    struct acme_challenges *acme;
};

/* Builds a context with one reference; err gets a human message on failure (e.g. "cannot
 * read /x.pem: No such file or directory") and *out is left untouched. Reload: build a new
 * ctx, use it for new connections and tls_ctx_unref the old one; live connections keep
 * theirs. Server ctxs hold a session cache and ticket keys of their own (tickets valid 12 h;
 * a new random key every 12 h, each kept 24 h), so a reload also starts those afresh. */
int tls_ctx_create(struct tls_ctx **out, const struct tls_opts *o, char *err, size_t errcap);
void tls_ctx_ref(struct tls_ctx *c);
void tls_ctx_unref(struct tls_ctx *c); /* frees on the last reference */
/* The handshake timeout given in the options (stream.c uses it when its own is 0). */
uint32_t tls_ctx_handshake_timeout(const struct tls_ctx *c);
bool tls_ctx_is_server(const struct tls_ctx *c);
/* Fingerprint (SHA-256, hex with colons) of the default certificate, for logs. */
const char *tls_ctx_fingerprint(const struct tls_ctx *c);

/* A connection holds a reference on ctx until tls_conn_destroy.
 * server_name: client side SNI and name to verify (NULL = none). An IP literal is checked
 * against the certificate's iPAddress SANs and not sent as SNI. A client resumes the last
 * session its ctx made with the same server_name. The client's ClientHello is pending
 * (tls_conn_pending) as soon as this returns. */
int tls_conn_create(struct tls_conn **out, struct tls_ctx *ctx, const char *server_name);
void tls_conn_destroy(struct tls_conn *c);

/* Memory: an established connection with nothing buffered gives back the library's record
 * buffers until the next record (heap per idle server connection, make bench-tls: mbedTLS
 * about 2 KB, OpenSSL about 14 KB, 21 KB with a client certificate). */

/* Feeds received ciphertext (copied). Returns 0 or -ENOSPC past 72 KiB unread. */
int tls_conn_feed(struct tls_conn *c, const uint8_t *data, size_t len);
/* Advances the handshake / decrypts. Returns plaintext bytes written to out (>0),
 * -EAGAIN when more input is needed, 0 on clean close_notify, or -EPROTO / -ECONNRESET
 * on failure (tls_conn_error tells why). Call until -EAGAIN after each feed. */
ssize_t tls_conn_read(struct tls_conn *c, uint8_t *out, size_t cap);
/* Encrypts plaintext into the outgoing ciphertext buffer. Returns len or a negative errno.
 * Before the handshake completes, data is queued and sent when it does. */
ssize_t tls_conn_write(struct tls_conn *c, const uint8_t *data, size_t len);
/* Queues close_notify (after the handshake only). */
void tls_conn_close_notify(struct tls_conn *c);
/* Ciphertext waiting to be sent: take a view, send it, then consume what was sent. */
size_t tls_conn_pending(const struct tls_conn *c, const uint8_t **p);
void tls_conn_consume(struct tls_conn *c, size_t n);

bool tls_conn_handshake_done(const struct tls_conn *c);
bool tls_conn_resumed(const struct tls_conn *c);
const char *tls_conn_error(const struct tls_conn *c); /* last failure, human-readable */
const char *tls_conn_sni(const struct tls_conn *c);   /* server: name the client asked for */
const char *tls_conn_alpn(const struct tls_conn *c);  /* negotiated protocol or NULL */
/* IANA name with '-' ("TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256",
 * "TLS-CHACHA20-POLY1305-SHA256" for TLS 1.3), once established. */
const char *tls_conn_cipher(const struct tls_conn *c);
const char *tls_conn_version(const struct tls_conn *c); /* "TLSv1.2", "TLSv1.3" once established */
/* Peer certificate, after the handshake: subject CN and DNS SANs (copied; the parsed
 * certificate itself is dropped to save memory). Trust them only if
 * tls_conn_peer_verified(): true when the peer showed a certificate that the CA bundle
 * signed (and, on a client, that matches server_name). */
const char *tls_conn_peer_cn(const struct tls_conn *c);
/* i-th DNS subjectAltName of the peer, or NULL past the end. */
const char *tls_conn_peer_san(const struct tls_conn *c, size_t i);
bool tls_conn_peer_verified(const struct tls_conn *c);
/* Subject DN ("CN=partner,O=Example") and SHA-256 fingerprint (hex with colons) of the
 * peer certificate, for logs and for forwarding a verified client certificate. */
const char *tls_conn_peer_subject(const struct tls_conn *c);
const char *tls_conn_peer_fingerprint(const struct tls_conn *c);
/* Federation: true if the peer was verified and its certificate names this domain (DNS
 * SANs with RFC 6125 wildcards "*.example.com"; the CN only when there is no DNS SAN).
 * Use it to match a partner's certificate to the SIP From domain. */
bool tls_conn_peer_has_name(const struct tls_conn *c, const char *name);

/* What a certificate file says, for logs and expiry metrics (certificate reload). */
struct tls_cert_info {
    char subject[256]; /* "CN=edge,O=Example" */
    char serial[100];  /* hex with colons, as openssl x509 -serial prints it but with ':' */
    int64_t not_after; /* Unix time (UTC) */
    char fingerprint[96];
};
/* Reads the first certificate of cert_file into *info. With key_file, also checks that the
 * private key there matches it (a pair half renewed, key written but not yet the cert, is
 * -EKEYREJECTED). Returns 0, or a negative errno with err saying why. */
int tls_cert_inspect(const char *cert_file, const char *key_file, struct tls_cert_info *info,
                     char *err, size_t errcap);

/* The backend built in and its library version: "mbedTLS 2.28.3", "OpenSSL 3.0.19". */
const char *tls_backend(void);

/* Quick check on the first bytes of a connection: true if they can start a TLS
 * ClientHello (record type 22, version 3.0-3.4, record length 4..18432, handshake type 1).
 * len may be short (then: true if a prefix of one). */
bool tls_looks_like_client_hello(const uint8_t *p, size_t len);

/* Reads the SNI host name from a ClientHello at the start of p without any TLS state
 * (routing before a certificate is chosen, logs). The hello may span several records.
 * Returns the name's length (name NUL-terminated), 0 if the hello has no host name,
 * -EAGAIN if more bytes are needed, -EBADMSG if p does not start with a ClientHello,
 * -ENOSPC if the name does not fit cap. */
ssize_t tls_peek_sni(const uint8_t *p, size_t len, char *name, size_t cap);
/* Copies the ALPN protocol_name_list of that ClientHello (RFC 7301 3.1: a 2-byte length,
 * then names each with a 1-byte length) into out. Returns its length, 0 if the hello offers
 * no ALPN, -EAGAIN, -EBADMSG (as tls_peek_sni; also a malformed list), -ENOSPC. */
ssize_t tls_peek_alpn(const uint8_t *p, size_t len, uint8_t *out, size_t cap);

#endif
