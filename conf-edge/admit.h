/* Admission of a conferencing client: the conference session key's signature, key id and
 * expiry (common/token.h) and the revocation list the Director pushes (pure: no I/O).
 *
 * The revocation list is bounded: entries are forgotten after their `until`, and when it is
 * full the entry that expires first is dropped to make room. */
#ifndef CONF_EDGE_ADMIT_H
#define CONF_EDGE_ADMIT_H

#include "common/token.h"
#include "common/util.h"
#include "conf-edge/preamble.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ce_revocations;

/* max: entries kept at most (>= 1). */
int ce_revocations_create(struct ce_revocations **out, size_t max);
void ce_revocations_destroy(struct ce_revocations *r);
/* Revokes one key (by its jti) or every key of a user, until the unix time `until`
 * (0 = a day from now). Either string may be NULL or empty, not both (-EINVAL).
 * Revoking an already revoked key or user extends the entry. */
int ce_revocations_add(struct ce_revocations *r, const char *jti, const char *user, int64_t until,
                       int64_t now);
bool ce_revocations_match(const struct ce_revocations *r, const struct token_claims *c,
                          int64_t now);
size_t ce_revocations_count(const struct ce_revocations *r);

/* Checks a key from the preamble at time now. Returns CE_REPLY_ADMITTED and fills *claims,
 * or the refusal to send: MISSING_KEY, INVALID_KEY (malformed or bad signature),
 * UNKNOWN_KEY (foreign or rotated-out key id, or no key installed yet), EXPIRED_KEY,
 * REVOKED_KEY. */
enum ce_reply ce_admit_check(const struct keyring *kr, const struct ce_revocations *rev,
                             struct slice key, int64_t now, struct token_claims *claims);

/* The per-key cap: a key (one jti) already holds `held` sessions and admits at most `cap`.
 * Returns CE_REPLY_ADMITTED with *replace = how many of its oldest sessions end to make room
 * (0 while under the cap), or CE_REPLY_KEY_IN_USE when refuse is set and the cap is full. */
enum ce_reply ce_admit_key_cap(uint64_t held, uint32_t cap, bool refuse, uint64_t *replace);

#endif
