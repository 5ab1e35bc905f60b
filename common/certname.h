/* Certificate name matching, one rule for every caller (RFC 6125, RFC 4343): does a name
 * presented in a certificate (a DNS subjectAltName or the subject CN) stand for the name
 * we want (a host, a SIP domain, an allowed peer)? Pure: no TLS library, no state. */
#ifndef COMMON_CERTNAME_H
#define COMMON_CERTNAME_H

#include <stdbool.h>
#include <stddef.h>

/* Every mode compares ASCII letters without regard to case (RFC 4343) and matches nothing
 * when either side is empty or holds a NUL byte. */
enum cert_name_mode {
    /* pattern and name are the same string ('*' is an ordinary character). */
    CERT_NAME_EXACT,
    /* RFC 6125 6.4.3: as EXACT, or pattern is "*." followed by a name of at least two
     * labels ("*.example.com", not "*.com") and name is one non-empty label followed by
     * that name: "*" stands for exactly one whole left-most label. No partial-label
     * wildcards ("f*o.example.com", "*oo.example.com" match nothing), no '*' elsewhere, no
     * '*' in name, no empty labels on either side. */
    CERT_NAME_WILDCARD_FIRST_LABEL,
    /* pattern is a domain of at least two labels ("partner.example"), name a host inside it
     * or the domain itself ("sip.partner.example", "partner.example"; not
     * "evilpartner.example"); labels aligned, no empty labels, no '*' on either side (a
     * wildcard name is no host). */
    CERT_NAME_DOMAIN_SUFFIX,
    /* name is the pattern's leading labels, whole: "av-edge" is named by "av-edge" and
     * "av-edge.lab.example", not by "av-edge2.lab.example" (a role named in an edge's
     * certificate, for the control channel); no empty labels, no '*' on either side. */
    CERT_NAME_LEADING_LABELS,
};

bool cert_name_match(const char *pattern, size_t plen, const char *name, size_t nlen,
                     enum cert_name_mode mode);

/* RFC 6125 6.4.4: do a certificate's names stand for `name`? The DNS SANs (sans[0..nsans),
 * NULL entries skipped) are checked, the CN (may be NULL) only when there is no DNS SAN.
 * In EXACT and WILDCARD_FIRST_LABEL modes the certificate's names are the patterns; in
 * DOMAIN_SUFFIX mode `name` is the domain and the certificate's names must lie inside it. */
bool cert_names_match(const char *cn, const char *const *sans, size_t nsans, const char *name,
                      enum cert_name_mode mode);

#endif
