/* osip2 set-up shared by the access edge and the Director: the parser's header tables, and
 * its trace output silenced. osip2 prints "| ERROR |" lines for each parse error it meets,
 * whatever the trace levels say; the daemons log (and count) their own verdicts instead,
 * and a flood of bad packets must not become a flood of log lines. */
#ifndef AE_SIP_OSIP_H
#define AE_SIP_OSIP_H

#include <osipparser2/osip_message.h>

#include "common/sip/sip_msg.h"

/* Idempotent and thread-safe; call before the first osip2 parse. */
void sip_osip_init(void);

/* osip_message_parse() of the message m frames (m->len bytes), with HTAB read as SP in its
 * header section: osip2 takes only SP as LWS in places ("CSeq: 1<TAB>INVITE" fails it),
 * while RFC 3261 §25.1 allows HTAB wherever SP is. Only the parse tree sees the change (it
 * is only read; forwarding splices the bytes received). Returns osip2's result, or -ENOMEM. */
int sip_osip_parse(osip_message_t *msg, const struct sip_msg *m);

#endif
