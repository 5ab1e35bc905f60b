/* osip2 set-up shared by the access edge and the Director: the parser's header tables, and
 * its trace output silenced. osip2 prints "| ERROR |" lines for each parse error it meets,
 * whatever the trace levels say; the daemons log (and count) their own verdicts instead,
 * and a flood of bad packets must not become a flood of log lines. */
#ifndef AE_SIP_OSIP_H
#define AE_SIP_OSIP_H

/* Idempotent and thread-safe; call before the first osip2 parse. */
void sip_osip_init(void);

#endif
