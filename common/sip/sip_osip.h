/* osip2 set-up shared by the access edge and the Director: the parser's header tables, and
 * its trace output silenced. osip2 prints "| ERROR |" lines for each parse error it meets,
 * whatever the trace levels say; the daemons log (and count) their own verdicts instead,
 * and a flood of bad packets must not become a flood of log lines. */
#ifndef AE_SIP_OSIP_H
#define AE_SIP_OSIP_H

#include <stddef.h>
#include <stdint.h>

#include <osipparser2/osip_message.h>

#include "common/sip/sip_msg.h"
#include "common/util.h"

/* Idempotent and thread-safe; call before the first osip2 parse. */
void sip_osip_init(void);

/* osip_message_parse() of the message m frames (m->len bytes), with HTAB read as SP in its
 * header section: osip2 takes only SP as LWS in places ("CSeq: 1<TAB>INVITE" fails it),
 * while RFC 3261 §25.1 allows HTAB wherever SP is. Only the parse tree sees the change (it
 * is only read; forwarding splices the bytes received). Returns osip2's result, or -ENOMEM. */
int sip_osip_parse(osip_message_t *msg, const struct sip_msg *m);

/* A bump arena for osip2 parse trees. osip2 allocates a node, a string, a list cell at a
 * time, and frees them one by one again: about a third of a parse went to malloc and free.
 * Parsed into an arena, a tree costs no malloc, and is dropped whole. Its trees are only
 * read, never changed (a change would allocate outside it), and are dropped newest first.
 * What the buffer has no room for spills to the heap, and goes with its tree. */
struct sip_osip_arena {
    uint8_t *buf;
    size_t cap, used;
    struct dlist spills; /* struct sip_osip_spill, newest first; the arena stays put */
    uint64_t spill_seq;
};
/* Where a tree begins: sip_osip_arena_drop() frees everything allocated since. */
struct sip_osip_mark {
    size_t used;
    uint64_t spill_seq;
};

int sip_osip_arena_init(struct sip_osip_arena *a, size_t cap);
void sip_osip_arena_free(struct sip_osip_arena *a);
struct sip_osip_mark sip_osip_arena_mark(const struct sip_osip_arena *a);
void *sip_osip_arena_alloc(struct sip_osip_arena *a, size_t n);
void sip_osip_arena_drop(struct sip_osip_arena *a, const struct sip_osip_mark *mark);
/* osip_message_init() and sip_osip_parse() of m with every allocation in a. Returns
 * sip_osip_parse's result; on 0 *out is the tree, else nothing is left allocated. */
int sip_osip_parse_in(struct sip_osip_arena *a, const struct sip_msg *m, osip_message_t **out);

#endif
