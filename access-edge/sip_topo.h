/* Topology hiding (PROTOCOLS.md §1.4): what the edge rewrites in messages leaving toward the
 * Internet so that no inside host shows in Record-Route or Contact, and how it puts them back
 * when in-dialog traffic returns. Stateless, in the manner of Kamailio's topoh: what the edge
 * needs later travels sealed (sip_seal: encrypted and MAC-protected under the per-instance
 * key) inside the edge's own URIs, so an outsider can neither read nor forge inside targets.
 *
 * - A Contact from inside becomes <sip:ae-c.TOKEN@edge-external-address>; an in-dialog
 *   request whose Request-URI is that URI gets the original back.
 * - The inside's Record-Route entries collapse into the edge's external entry as the URI
 *   parameter ae-rr=TOKEN; an in-dialog request routed through that entry gets them back as
 *   Route, and a response coming in gets them back as Record-Route.
 *
 * Pure: no I/O. Outputs are whole header lines ending in CRLF, to splice into a message. */
#ifndef AE_SIP_TOPO_H
#define AE_SIP_TOPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/sip/sip_msg.h"
#include "common/sip/sip_proxy.h"

/* Does this Route/Record-Route entry (a name-addr value) name the edge? For the side
 * concerned: "ours on the external side" or "ours on either side". */
typedef bool (*sip_topo_own_cb)(struct slice entry, void *arg);

struct sip_topo {
    const uint8_t *key; /* SIP_FLOW_KEY_LEN bytes: the per-instance secret */
    uint64_t nonce;     /* fresh per message */
    struct slice ext;   /* "host:port;transport=tcp": the edge's external URI for Contacts */
};

/* Contact lines for m with every URI replaced by an encoded one on t->ext (display names
 * and header parameters such as expires are kept; "*" passes). 0 if m has no Contact.
 * Returns the length written, or -ENOSPC. */
ssize_t sip_topo_hide_contacts(const struct sip_topo *t, const struct sip_msg *m, char *out,
                               size_t cap);

/* If uri (a Request-URI) is an encoded Contact, writes the original URI into out and
 * returns its length; 0 if uri is not one; -EACCES if its token is forged or damaged. */
ssize_t sip_topo_contact_open(const uint8_t *key, struct slice uri, char *out, size_t cap);

/* The value of the ae-rr parameter for the edge's external Record-Route entry on a request
 * going out: seals own_int (the edge's internal entry, "<sip:...>") followed by m's own
 * Record-Route entries (the inside's, in order). Returns the length, or -ENOSPC. */
ssize_t sip_topo_seal_request_rr(const struct sip_topo *t, struct slice own_int,
                                 const struct sip_msg *m, char *out, size_t cap);

/* Record-Route lines for a response going out: the entries above the last one is_ext
 * accepts (the inside's, the edge's internal entry, and a hairpin call's other leg through
 * the edge) are sealed into that entry; the ones
 * below it (the outside's) stay. Without an external entry of ours, no line is written (the
 * inside's entries are dropped). Returns the length, or -ENOSPC. */
ssize_t sip_topo_hide_response_rr(const struct sip_topo *t, const struct sip_msg *m,
                                  sip_topo_own_cb is_ext, void *arg, char *out, size_t cap);

/* Record-Route lines for a response coming in, with every sealed set put back where it was
 * taken from. Returns the length (0 if m has nothing sealed: keep its lines), -EACCES if a
 * token is forged, or -ENOSPC. */
ssize_t sip_topo_open_response_rr(const uint8_t *key, const struct sip_msg *m, char *out,
                                  size_t cap);

/* A Route line for an in-dialog request from outside whose first n Route entries are ours:
 * the entries sealed in them, minus the first if is_own accepts it (the edge's internal entry
 * for this hop; entries of ours further down, a hairpin call's next leg, stay). Returns the
 * length (0 if nothing was sealed), -EACCES if a token is forged, or -ENOSPC. */
ssize_t sip_topo_open_routes(const uint8_t *key, const struct sip_msg *m, unsigned n,
                             sip_topo_own_cb is_own, void *arg, char *out, size_t cap);

/* Host and port (0 if absent) of the URI in a name-addr or addr-spec value. */
bool sip_uri_host_port(struct slice entry, struct slice *host, uint16_t *port);

#endif
