/* Message validation and route decision for the access edge: what may cross the perimeter.
 *
 * Input is a message framed by sip_msg_scan(); osip2 does the structural parse. The result
 * is a verdict (accept, reject with a status and reason, or drop as unparseable) and, for
 * accepted requests, where the request goes. Pure: no I/O, no clock, no allocation beyond
 * osip2's own parse tree, which the caller frees with sip_parsed_free(). */
#ifndef AE_SIP_VALIDATE_H
#define AE_SIP_VALIDATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/addr.h"
#include "common/sip/sip_msg.h"

/* Who sent the message, as the transport established it. */
enum sip_source {
    SIP_SRC_INTERNAL = 0, /* the Director side (trusted) */
    SIP_SRC_REMOTE_USER,  /* a client on the external side */
    SIP_SRC_PARTNER,      /* a federated server on the Allow list (mutual TLS) */
    SIP_SRC_DISCOVERED,   /* a federated server found by DNS (mutual TLS) */
};
const char *sip_source_name(enum sip_source s); /* "InternetUser", "DirectPartner", ... */

struct sip_policy {
    const char *const *domains; /* SIP domains we serve; lower case */
    size_t ndomains;
    const struct addr *own; /* our listening addresses (both sides) */
    size_t nown;
    size_t max_client_msg; /* bytes; remote users */
    size_t max_server_msg; /* bytes; partners and the inside */
    unsigned max_headers;
    unsigned max_line;
};

struct sip_peer {
    enum sip_source src;
    const struct addr *addr;
    /* Names from the peer's verified certificate (CN and DNS SANs), for federation. */
    const char *const *cert_names;
    size_t ncert_names;
};

/* Why a message was refused: the status to answer, its reason phrase, a Warning text,
 * and the metric label it is counted under. status 0 means accepted. */
struct sip_verdict {
    int status;
    const char *phrase;
    const char *reason; /* metric label, e.g. "missing_header" */
    char text[112];     /* "Missing header: Call-ID" */
    char extra[160];    /* a header line for the answer ("Unsupported: x\r\n"), or "" */
};

enum sip_route_kind {
    SIP_ROUTE_NONE = 0,
    SIP_ROUTE_DIRECTOR, /* external -> the configured next hop inside */
    SIP_ROUTE_FLOW,     /* to a remote user's flow named by our own Route/Path entry */
    SIP_ROUTE_URI,      /* to host:port of the next Route or the Request-URI */
};

struct sip_route {
    enum sip_route_kind kind;
    unsigned pop;          /* our own Route entries at the top, to remove */
    struct slice flow;     /* user part of our Route entry (a flow token), if any */
    bool in_dialog;        /* To tag present */
    char from_domain[128]; /* host of the From URI (requests) */
    char ruri_domain[128]; /* host of the Request-URI (requests) */
    char host[256];
    uint16_t port; /* 0 = default for the transport */
    bool tcp, tls; /* transport=tcp / sips or transport=tls */
};

struct sip_parsed;     /* osip2 parse tree */
struct sip_osip_arena; /* common/sip/sip_osip.h */

/* Validates m (already framed) from peer under policy. Returns 0 and fills *route when the
 * message may be forwarded (responses: route->kind NONE), 1 with *v set when it must be
 * answered with v->status (requests) or dropped (responses), or -EBADMSG when osip2 cannot
 * parse it (drop it / close the connection). On 0 the caller owns *parsed (may be NULL'd by
 * passing parsed = NULL; NULL for a response from the inside, which osip2 does not parse:
 * only the checks on the raw index apply to it). The parse tree is made in arena (sip_osip.h) when
 * it is not NULL: then parsed trees are freed newest first. */
int sip_validate(const struct sip_policy *policy, const struct sip_peer *peer,
                 const struct sip_msg *m, struct sip_osip_arena *arena, struct sip_verdict *v,
                 struct sip_route *route, struct sip_parsed **parsed);
void sip_parsed_free(struct sip_parsed *p);

/* Is host:port (port 0 = 5060) one of policy->own? */
bool sip_policy_is_own(const struct sip_policy *policy, const char *host, uint16_t port);
/* Is domain one of ours (case-insensitive)? */
bool sip_policy_has_domain(const struct sip_policy *policy, const char *domain, size_t len);
/* Does a verified certificate naming `names` vouch for SIP domain `domain`? Exact match, or
 * a name that is a host inside the domain ("sip.partner.example" for "partner.example"),
 * case-insensitive; CERT_NAME_DOMAIN_SUFFIX of common/certname.h. */
bool sip_cert_matches_domain(const char *const *names, size_t n, const char *domain);
/* Is the method allowed from this source? */
bool sip_method_allowed(enum sip_source src, struct slice method);
/* The Allow header value for a source. */
const char *sip_allow_list(enum sip_source src);

/* Framing + validation + route decision in one call (the fuzz entry point). */
int sip_check_bytes(const struct sip_policy *policy, const struct sip_peer *peer,
                    const uint8_t *data, size_t len, bool datagram, struct sip_msg *scratch,
                    struct sip_verdict *v, struct sip_route *route);

#endif
