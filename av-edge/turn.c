/* TURN server state machine: authentication, Allocate/Refresh/CreatePermission/ChannelBind,
 * Send/Data indications, ChannelData, the peer policy; no sockets, no event loop. */
#include "av-edge/turn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/crypto.h"
#include "common/ratelimit.h"
#include "common/util.h"

#define NONCE_RAW 12
#define NONCE_LEN 16 /* base64url of NONCE_RAW */
#define RESERVATION_MS 30000

struct av_turn {
    const struct av_turn_cfg *cfg;
    struct av_shared *sh;
    struct av_relay_io io;
    const struct logger *log;
    struct av_alloc_table *tab;
    struct keyring kr; /* local copy of sh->kr at generation kr_gen */
    uint64_t kr_gen;
    struct ratelimit *unauth;
    struct av_turn_stats st;
    uint64_t rnd;             /* xorshift state for Data indication transaction ids */
    uint64_t rev_gen;         /* sh->rev_gen last enforced */
    struct av_credit *credit; /* AV_CREDIT_SLOTS, made on first use */
    struct av_keycache *keys; /* AV_KEYCACHE_SLOTS, made on first use */
};

/* Keys derived from TURN REST credentials (an HMAC-SHA1, base64 and MD5 per request
 * otherwise): a credential's Refresh, permissions and channels after its Allocate cost one
 * look-up. Filled only after the key checked out; tagged with the keyring generation and
 * which of its secrets, so a rotation misses; a reload (the realm) clears it. */
#define AV_KEYCACHE_SLOTS 256
struct av_keycache {
    uint64_t gen; /* kr_gen + 1 when filled; 0 = empty */
    int which;
    uint8_t key[16];
    char user[AV_USERNAME_MAX];
};

/* Amplification guard: bytes a UDP source sent us that we have not answered (dropped
 * because the answer would have been larger). A client that retransmits earns its answer
 * once what it sent covers it, so a spoofed victim never receives more than was sent in
 * its name. Direct-mapped: a collision only costs a client one more retransmission. */
#define AV_CREDIT_SLOTS 4096
#define AV_CREDIT_MS 10000
#define AV_CREDIT_MAX 4096
struct av_credit {
    uint64_t key; /* 0 = empty */
    uint64_t at_ms;
    uint32_t bytes;
};

/* One request being answered. */
struct req {
    struct av_turn *t;
    const struct av_turn_in *in;
    const struct stun_msg *m;
    size_t len; /* of the request on the wire */
    struct av_turn_out *out;
    bool authed, sha256, fp;
    bool proved;    /* carried a nonce we made for its IP: it receives at its address */
    int64_t expiry; /* of a TURN REST credential, 0 for a static user */
    uint8_t key[16];
    char user[AV_USERNAME_MAX];
};

static inline void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

const char *av_auth_fail_name(enum av_auth_fail r)
{
    static const char *const n[] = {"missing", "bad_request",   "stale_nonce",       "unknown_user",
                                    "expired", "bad_integrity", "wrong_credentials", "revoked"};
    return (unsigned)r < ARRAY_SIZE(n) ? n[r] : "other";
}

const char *av_deny_name(enum av_deny d)
{
    static const char *const n[] = {"none",       "internal_network", "own_address", "loopback",
                                    "link_local", "multicast",        "unspecified"};
    return (unsigned)d < ARRAY_SIZE(n) ? n[d] : "other";
}

/* ---- shared state ---- */

int av_shared_init(struct av_shared *s)
{
    memset(s, 0, sizeof(*s));
    if (pthread_mutex_init(&s->mu, NULL))
        return -ENOMEM;
    return crypto_random(s->nonce_key, sizeof(s->nonce_key));
}

struct av_user_count {
    struct av_user_count *next;
    uint32_t n;
    struct av_bucket bw; /* bandwidth_per_user, rate 0 until first used */
    char name[AV_USERNAME_MAX];
};

static size_t user_bucket(const char *u)
{
    return (size_t)(fnv1a(FNV1A_INIT, u, strlen(u)) % AV_SHARED_USER_BUCKETS);
}

struct av_shared_resv {
    struct av_shared_resv *next;
    uint64_t token, expires_ms;
    void *handle;
    void (*release)(void *arg, void *handle);
    void *arg;
};

static int resv_add(struct av_shared *s, uint64_t token, void *handle, uint64_t expires_ms,
                    const struct av_relay_io *io)
{
    struct av_shared_resv *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    *r = (struct av_shared_resv){NULL, token, expires_ms, handle, io->release, io->arg};
    pthread_mutex_lock(&s->mu);
    r->next = s->resv;
    s->resv = r;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void *resv_take(struct av_shared *s, uint64_t token, uint64_t now_ms)
{
    void *h = NULL;
    pthread_mutex_lock(&s->mu);
    for (struct av_shared_resv **pp = &s->resv; *pp; pp = &(*pp)->next) {
        if ((*pp)->token == token && (*pp)->expires_ms > now_ms) {
            struct av_shared_resv *r = *pp;
            *pp = r->next;
            h = r->handle;
            free(r);
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return h;
}

/* Releases reservations that expired by now_ms (all of them with UINT64_MAX). */
static void resv_sweep(struct av_shared *s, uint64_t now_ms)
{
    struct av_shared_resv *gone = NULL;
    pthread_mutex_lock(&s->mu);
    for (struct av_shared_resv **pp = &s->resv; *pp;) {
        struct av_shared_resv *r = *pp;
        if (r->expires_ms <= now_ms) {
            *pp = r->next;
            r->next = gone;
            gone = r;
        } else {
            pp = &r->next;
        }
    }
    pthread_mutex_unlock(&s->mu);
    while (gone) {
        struct av_shared_resv *r = gone;
        gone = r->next;
        if (r->release)
            r->release(r->arg, r->handle);
        free(r);
    }
}

void av_shared_fini(struct av_shared *s)
{
    resv_sweep(s, UINT64_MAX);
    free(s->rev);
    for (size_t i = 0; i < AV_SHARED_USER_BUCKETS; i++) {
        while (s->users[i]) {
            struct av_user_count *u = s->users[i];
            s->users[i] = u->next;
            free(u);
        }
    }
    pthread_mutex_destroy(&s->mu);
}

struct av_user_count *av_shared_user_take(struct av_shared *s, const char *user, uint32_t quota)
{
    struct av_user_count *ok = NULL;
    pthread_mutex_lock(&s->mu);
    struct av_user_count **pp = &s->users[user_bucket(user)];
    while (*pp && strcmp((*pp)->name, user) != 0)
        pp = &(*pp)->next;
    if (!*pp) {
        struct av_user_count *u = calloc(1, sizeof(*u));
        if (u) {
            snprintf(u->name, sizeof(u->name), "%s", user);
            *pp = u;
        }
    }
    if (*pp && !(quota && (*pp)->n >= quota)) {
        (*pp)->n++;
        ok = *pp;
    }
    pthread_mutex_unlock(&s->mu);
    return ok;
}

/* The shared bucket follows the configured rate (a reload may change it). */
static struct av_bucket *user_bw_at(struct av_user_count *u, uint64_t rate, uint64_t now_ms)
{
    if (u->bw.rate != rate)
        u->bw = (struct av_bucket){rate, rate, (double)rate, now_ms};
    return &u->bw;
}

uint64_t av_shared_user_lease(struct av_shared *s, struct av_user_count *u, uint64_t rate,
                              uint64_t now_ms, uint64_t want)
{
    pthread_mutex_lock(&s->mu);
    uint64_t got = av_bucket_lease(user_bw_at(u, rate, now_ms), now_ms, want);
    pthread_mutex_unlock(&s->mu);
    return got;
}

uint64_t av_shared_user_charge(struct av_shared *s, struct av_user_count *u, uint64_t rate,
                               uint64_t now_ms, uint64_t n)
{
    pthread_mutex_lock(&s->mu);
    uint64_t wait = av_bucket_charge(user_bw_at(u, rate, now_ms), now_ms, n);
    pthread_mutex_unlock(&s->mu);
    return wait;
}

/* bandwidth_per_user holds across workers: the user's one bucket is shared, and a worker
 * spends bytes it leased from it, 20 ms of the rate at a time, so the relay path takes the
 * shared lock once a slice, not once a packet (and, while the bucket is dry, at most once
 * a millisecond). A worker may sit on one unspent slice. */
bool av_turn_user_take(struct av_turn *t, struct av_user *u, uint64_t now_ms, size_t n)
{
    uint64_t rate = t->cfg->bps_per_user;
    if (!rate)
        return true;
    if (u->lease < n && now_ms >= u->lease_retry_ms) {
        uint64_t slice = rate / 50 > n ? rate / 50 : n;
        u->lease += av_shared_user_lease(t->sh, u->shared, rate, now_ms, slice - u->lease);
        if (u->lease < n)
            u->lease_retry_ms = now_ms + 1;
    }
    if (u->lease < n)
        return false;
    u->lease -= n;
    return true;
}

uint64_t av_turn_user_charge(struct av_turn *t, struct av_user *u, uint64_t now_ms, size_t n)
{
    uint64_t rate = t->cfg->bps_per_user;
    if (!rate)
        return 0;
    uint64_t own = u->lease < n ? u->lease : n;
    u->lease -= own;
    return n > own ? av_shared_user_charge(t->sh, u->shared, rate, now_ms, n - own) : 0;
}

void av_shared_user_give(struct av_shared *s, const char *user)
{
    pthread_mutex_lock(&s->mu);
    struct av_user_count **pp = &s->users[user_bucket(user)];
    while (*pp && strcmp((*pp)->name, user) != 0)
        pp = &(*pp)->next;
    if (*pp && (*pp)->n && --(*pp)->n == 0) {
        struct av_user_count *u = *pp;
        *pp = u->next;
        free(u);
    }
    pthread_mutex_unlock(&s->mu);
}

int av_shared_set_secret(struct av_shared *s, const char *id, const void *secret, size_t len,
                         int64_t not_after)
{
    pthread_mutex_lock(&s->mu);
    int rc = keyring_rotate(&s->kr, id, secret, len, not_after);
    if (rc == 0)
        __atomic_add_fetch(&s->kr_gen, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

const char *av_user_id(const char *username)
{
    const char *c = strchr(username, ':');
    return c ? c + 1 : username;
}

int av_shared_revoke(struct av_shared *s, const char *user, int64_t until, int64_t expiring_by,
                     int64_t now_s)
{
    if (!*user || strlen(user) >= AV_USERNAME_MAX)
        return -EINVAL;
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    size_t w = 0;
    for (size_t i = 0; i < s->rev_n; i++) /* forget the lapsed ones on the way */
        if ((s->rev[i].until > now_s || s->rev[i].expiring_by > now_s) &&
            strcmp(s->rev[i].user, user) != 0)
            s->rev[w++] = s->rev[i];
    s->rev_n = w;
    if (until > now_s || expiring_by > now_s) {
        if (s->rev_n == s->rev_cap) {
            size_t cap = s->rev_cap ? 2 * s->rev_cap : 16;
            struct av_revoked *n = realloc(s->rev, cap * sizeof(*n));
            if (!n)
                rc = -ENOMEM;
            else {
                s->rev = n;
                s->rev_cap = cap;
            }
        }
        if (rc == 0) {
            struct av_revoked *e = &s->rev[s->rev_n++];
            snprintf(e->user, AV_USERNAME_MAX, "%s", user);
            e->until = until;
            e->expiring_by = expiring_by;
        }
    }
    __atomic_store_n(&s->rev_n, s->rev_n, __ATOMIC_RELEASE);
    __atomic_add_fetch(&s->rev_gen, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void av_shared_set_alternates(struct av_shared *s, const struct av_alternates *alt)
{
    pthread_mutex_lock(&s->mu);
    s->alt = *alt;
    pthread_mutex_unlock(&s->mu);
}

bool av_shared_revoked(struct av_shared *s, const char *user, int64_t expiry, int64_t now_s)
{
    if (!__atomic_load_n(&s->rev_n, __ATOMIC_ACQUIRE))
        return false;
    bool hit = false;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->rev_n && !hit; i++) {
        const struct av_revoked *e = &s->rev[i];
        hit = strcmp(e->user, user) == 0 &&
              (e->until > now_s || (expiry && expiry <= e->expiring_by));
    }
    pthread_mutex_unlock(&s->mu);
    return hit;
}

/* ---- peer policy ---- */

/* IPv4-mapped IPv6 peers are judged as the IPv4 address they stand for. */
static void unmap_v4(const struct addr *in, struct addr *out)
{
    *out = *in;
    if (in->u.sa.sa_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&in->u.in6.sin6_addr)) {
        memset(out, 0, sizeof(*out));
        out->u.in4.sin_family = AF_INET;
        out->u.in4.sin_port = in->u.in6.sin6_port;
        memcpy(&out->u.in4.sin_addr, in->u.in6.sin6_addr.s6_addr + 12, 4);
    }
}

enum av_deny av_turn_peer_policy(const struct av_turn_cfg *c, enum av_side side,
                                 const struct addr *peer_in)
{
    struct addr peer;
    unmap_v4(peer_in, &peer);
    bool v4 = peer.u.sa.sa_family == AF_INET;
    uint32_t ip4 = v4 ? ntohl(peer.u.in4.sin_addr.s_addr) : 0;
    const struct in6_addr *ip6 = &peer.u.in6.sin6_addr;

    if (addr_is_any(&peer) || (v4 && ip4 == 0xFFFFFFFFu))
        return AV_DENY_UNSPECIFIED;
    if ((v4 && (ip4 >> 28) == 0xE) || (!v4 && IN6_IS_ADDR_MULTICAST(ip6)))
        return AV_DENY_MULTICAST;
    if (side == AV_SIDE_INTERNAL)
        return AV_DENY_NONE; /* inside, only the owner's own permissions decide */
    for (size_t i = 0; i < c->n_own; i++)
        if (addr_host_eq(&c->own[i], &peer))
            return AV_DENY_OWN_ADDRESS;
    if (cidr_list_contains(c->internal_nets, c->n_internal_nets, &peer))
        return AV_DENY_INTERNAL_NET;
    if (cidr_list_contains(c->allow_peers, c->n_allow_peers, &peer))
        return AV_DENY_NONE;
    if (addr_is_loopback(&peer))
        return AV_DENY_LOOPBACK;
    if ((v4 && (ip4 >> 16) == 0xA9FE) || (!v4 && IN6_IS_ADDR_LINKLOCAL(ip6)))
        return AV_DENY_LINK_LOCAL;
    return AV_DENY_NONE;
}

/* ---- lifecycle ---- */

/* The per-user count's key: the user id (a REST username's part after the colon) in a
 * namespace of its own; the per-credential count is keyed by the whole username. */
static void id_key(const char *username, char out[AV_USERNAME_MAX])
{
    out[0] = '\x01';
    snprintf(out + 1, AV_USERNAME_MAX - 1, "%s", av_user_id(username));
}

static void quota_give(struct av_turn *t, const char *username)
{
    char k[AV_USERNAME_MAX];
    id_key(username, k);
    av_shared_user_give(t->sh, username);
    av_shared_user_give(t->sh, k);
}

static void hook_free(struct av_alloc *a, void *arg)
{
    struct av_turn *t = arg;
    if (t->io.close)
        t->io.close(t->io.arg, a);
    __atomic_sub_fetch(&t->sh->allocs, 1, __ATOMIC_RELAXED);
    quota_give(t, a->user->name);
}

static void hook_resv_free(void *handle, void *arg)
{
    struct av_turn *t = arg;
    if (t->io.release)
        t->io.release(t->io.arg, handle);
}

int av_turn_create(struct av_turn **out, const struct av_turn_cfg *cfg, struct av_shared *shared,
                   const struct av_relay_io *io, const struct logger *log)
{
    if (!out || !cfg || !shared || !io)
        return -EINVAL;
    struct av_turn *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->cfg = cfg;
    t->sh = shared;
    t->io = *io;
    t->log = log;
    t->kr_gen = (uint64_t)-1;
    struct av_alloc_hooks hooks = {hook_free, hook_resv_free, t};
    int rc = av_alloc_table_create(&t->tab, &hooks);
    if (rc) {
        free(t);
        return rc;
    }
    if (crypto_random(&t->rnd, sizeof(t->rnd)) || !t->rnd)
        t->rnd = 0x9E3779B97F4A7C15ull;
    *out = t;
    return 0;
}

void av_turn_destroy(struct av_turn *t)
{
    if (!t)
        return;
    av_alloc_table_destroy(t->tab);
    ratelimit_destroy(t->unauth);
    free(t->credit);
    free(t->keys);
    free(t);
}

void av_turn_set_cfg(struct av_turn *t, const struct av_turn_cfg *cfg)
{
    t->cfg = cfg;
    if (t->keys)
        memset(t->keys, 0, AV_KEYCACHE_SLOTS * sizeof(*t->keys));
}

void av_turn_set_logger(struct av_turn *t, const struct logger *log)
{
    t->log = log;
}

int av_turn_set_unauth_limit(struct av_turn *t, double rate, double burst)
{
    ratelimit_destroy(t->unauth);
    t->unauth = NULL;
    if (rate <= 0)
        return 0;
    return ratelimit_create(&t->unauth, rate, burst, 65536);
}

struct av_alloc_table *av_turn_table(struct av_turn *t)
{
    return t->tab;
}

struct av_turn_stats *av_turn_stats(struct av_turn *t)
{
    return &t->st;
}

struct enforce_ctx {
    struct av_turn *t;
    int64_t now_s;
    struct av_alloc *doomed[64];
    size_t n;
    bool more;
};

static void enforce_one(struct av_alloc *a, void *arg)
{
    struct enforce_ctx *x = arg;
    if (x->n == ARRAY_SIZE(x->doomed)) {
        x->more = true;
        return;
    }
    if (av_shared_revoked(x->t->sh, av_user_id(a->user->name), 0, x->now_s))
        x->doomed[x->n++] = a;
}

size_t av_turn_enforce(struct av_turn *t, int64_t now_s)
{
    uint64_t gen = __atomic_load_n(&t->sh->rev_gen, __ATOMIC_ACQUIRE);
    if (gen == t->rev_gen)
        return 0;
    t->rev_gen = gen;
    size_t removed = 0;
    struct enforce_ctx x = {.t = t, .now_s = now_s};
    do { /* removal while walking the table is not allowed: in rounds of 64 */
        x.n = 0;
        x.more = false;
        av_alloc_foreach(t->tab, enforce_one, &x);
        for (size_t i = 0; i < x.n; i++) {
            LOGI(t->log, &x.doomed[i]->client, "allocation of %s ended: the user was revoked",
                 x.doomed[i]->user->name);
            av_alloc_remove(t->tab, x.doomed[i]);
        }
        removed += x.n;
    } while (x.more && x.n);
    return removed;
}

size_t av_turn_sweep(struct av_turn *t, uint64_t now_ms)
{
    resv_sweep(t->sh, now_ms);
    return av_alloc_sweep(t->tab, now_ms);
}

/* ---- nonces: base64url(expiry(4) | HMAC-SHA1(key, expiry | client IP)[0..8)) ---- */

static const uint8_t *ip_bytes(const struct addr *a, size_t *n)
{
    if (a->u.sa.sa_family == AF_INET6) {
        *n = 16;
        return a->u.in6.sin6_addr.s6_addr;
    }
    *n = 4;
    return (const uint8_t *)&a->u.in4.sin_addr;
}

static void nonce_mac(const struct av_turn *t, const uint8_t exp[4], const struct addr *client,
                      uint8_t out[8])
{
    uint8_t msg[20], mac[SHA1_LEN];
    size_t n;
    const uint8_t *ip = ip_bytes(client, &n);
    memcpy(msg, exp, 4);
    memcpy(msg + 4, ip, n);
    crypto_hmac_sha1(t->sh->nonce_key, sizeof(t->sh->nonce_key), msg, 4 + n, mac);
    memcpy(out, mac, 8);
}

static void nonce_make(const struct av_turn *t, const struct addr *client, int64_t now_s,
                       char out[NONCE_LEN + 1])
{
    uint8_t raw[NONCE_RAW];
    wr32(raw, (uint32_t)(now_s + t->cfg->nonce_lifetime_s));
    nonce_mac(t, raw, client, raw + 4);
    base64url_encode(raw, sizeof(raw), out, NONCE_LEN + 1);
}

/* 1: a nonce we made for this client's IP and still fresh; 0: ours but stale; -1: not ours. */
static int nonce_check(const struct av_turn *t, const struct addr *client, int64_t now_s,
                       struct slice nonce)
{
    uint8_t raw[NONCE_RAW + 4], mac[8];
    if (nonce.len != NONCE_LEN ||
        base64url_decode((const char *)nonce.p, nonce.len, raw, sizeof(raw)) != NONCE_RAW)
        return -1;
    nonce_mac(t, raw, client, mac);
    if (!crypto_ct_eq(mac, raw + 4, 8))
        return -1;
    return (int64_t)rd32(raw) > now_s ? 1 : 0;
}

static uint64_t credit_key(const struct addr *a)
{
    size_t n;
    const uint8_t *ip = ip_bytes(a, &n);
    uint16_t port = addr_port(a);
    const uint8_t pb[2] = {(uint8_t)(port >> 8), (uint8_t)port};
    return fnv1a(fnv1a(FNV1A_INIT, ip, n), pb, 2) | 1; /* never 0 */
}

/* May an unauthenticated UDP answer of want bytes go to the source of a request of len
 * bytes? Yes when it is no larger than len plus the source's unanswered credit, and then
 * the credit pays for the difference; no otherwise, and the request adds to the credit. */
static bool amplification_ok(struct av_turn *t, const struct addr *client, size_t len, size_t want,
                             uint64_t now_ms)
{
    if (want <= len)
        return true;
    if (!t->credit) {
        t->credit = calloc(AV_CREDIT_SLOTS, sizeof(*t->credit));
        if (!t->credit)
            return false;
    }
    uint64_t k = credit_key(client);
    struct av_credit *c = &t->credit[k % AV_CREDIT_SLOTS];
    if (c->key != k || now_ms - c->at_ms > AV_CREDIT_MS)
        *c = (struct av_credit){k, now_ms, 0};
    c->at_ms = now_ms;
    if (want <= len + c->bytes) {
        c->bytes -= (uint32_t)(want - len);
        return true;
    }
    c->bytes = c->bytes + len > AV_CREDIT_MAX ? AV_CREDIT_MAX : c->bytes + (uint32_t)len;
    return false;
}

/* Whether the amplification rule applies to an answer to this request. */
static bool guarded(const struct req *r)
{
    return r->t->cfg->strict_amplification && !r->authed && !r->proved &&
           r->in->transport == AV_TRANSPORT_UDP;
}

/* ---- replies ---- */

static void begin(struct req *r, struct stun_builder *b, enum stun_class cls)
{
    stun_build_init(b, r->out->reply, r->out->reply_cap, r->m->method, cls, r->m->tid);
}

/* The trailer of an answer: SOFTWARE and integrity when authenticated, FINGERPRINT when
 * the request had one. */
static ssize_t seal(const struct av_turn *t, struct stun_builder *b, bool authed, bool sha256,
                    const uint8_t key[16], bool fp)
{
    if (authed) {
        if (t->cfg->software)
            stun_build_attr(b, STUN_A_SOFTWARE, t->cfg->software, strlen(t->cfg->software));
        if (sha256)
            stun_build_integrity_sha256(b, key, 16);
        else
            stun_build_integrity(b, key, 16);
    }
    if (fp)
        stun_build_fingerprint(b);
    return stun_build_finish(b);
}

static void finish(struct req *r, struct stun_builder *b)
{
    bool fp = r->fp;
    if (guarded(r)) {
        /* A source that has not shown it receives at its address gets nothing bigger than
         * it sent (what it sent before, unanswered, counts): a spoofed victim is never
         * the target of an amplified answer. FINGERPRINT is optional in an answer (RFC
         * 8489 14.7): it goes first when space is short. */
        if (fp && b->len + 8 > r->len)
            fp = false;
        if (!amplification_ok(r->t, r->in->client, r->len, b->len, r->in->now_ms)) {
            r->out->reply_len = 0;
            r->t->st.amplification_dropped++;
            return;
        }
    }
    ssize_t n = seal(r->t, b, r->authed, r->sha256, r->key, fp);
    r->out->reply_len = n > 0 ? (size_t)n : 0;
}

/* An error response. Unauthenticated ones carry no reason phrase and no SOFTWARE, to keep
 * them as small as the protocol allows (amplification). */
static int reply_error(struct req *r, int code)
{
    struct av_turn *t = r->t;
    struct stun_builder b;
    begin(r, &b, STUN_ERROR);
    stun_build_error(&b, code, r->authed ? NULL : "");
    if (code == 420)
        stun_build_unknown(&b, r->m->unknown, r->m->n_unknown);
    if (code == 401 || code == 438) {
        char nonce[NONCE_LEN + 1];
        nonce_make(t, r->in->client, r->in->now_s, nonce);
        stun_build_attr(&b, STUN_A_REALM, t->cfg->realm, strlen(t->cfg->realm));
        stun_build_attr(&b, STUN_A_NONCE, nonce, NONCE_LEN);
        r->authed = false; /* these are never integrity-protected */
    }
    finish(r, &b);
    r->out->code = code;
    if (code != 401 && code != 438)
        t->st.errors++;
    LOGD(t->log, r->in->client, "error %d to method 0x%03x", code, r->m->method);
    return 0;
}

static void log_refusal(struct req *r, struct av_alloc *a, int code, const char *why,
                        const struct addr *peer, unsigned bit)
{
    if (a) {
        if (a->denied_logged & (1u << bit))
            return;
        a->denied_logged |= 1u << bit;
    }
    char ps[ADDR_STRLEN] = "-";
    if (peer)
        addr_format(peer, ps);
    LOGW(r->t->log, r->in->client, "refused %s from user %s: %s (peer %s, error %d)",
         r->m ? (r->m->method == STUN_ALLOCATE            ? "Allocate"
                 : r->m->method == STUN_CREATE_PERMISSION ? "CreatePermission"
                 : r->m->method == STUN_CHANNEL_BIND      ? "ChannelBind"
                 : r->m->method == STUN_REFRESH           ? "Refresh"
                 : r->m->method == STUN_CONNECT           ? "Connect"
                 : r->m->method == STUN_CONNECTION_BIND   ? "ConnectionBind"
                                                          : "request")
              : "request",
         r->user[0] ? r->user : "-", why, ps, code);
}

/* ---- authentication ---- */

static void refresh_keyring(struct av_turn *t)
{
    uint64_t gen = __atomic_load_n(&t->sh->kr_gen, __ATOMIC_ACQUIRE);
    if (gen == t->kr_gen)
        return;
    pthread_mutex_lock(&t->sh->mu);
    t->kr = t->sh->kr;
    t->kr_gen = t->sh->kr_gen;
    pthread_mutex_unlock(&t->sh->mu);
}

static struct av_keycache *keycache_slot(struct av_turn *t, const char *user)
{
    if (!t->keys && !(t->keys = calloc(AV_KEYCACHE_SLOTS, sizeof(*t->keys))))
        return NULL;
    return &t->keys[fnv1a(FNV1A_INIT, user, strlen(user)) % AV_KEYCACHE_SLOTS];
}

/* The long-term key of REST username user under secret `which` of the keyring: 0, or -1. */
static int rest_key(struct av_turn *t, int which, const char *user, uint8_t key[16])
{
    struct av_keycache *e = keycache_slot(t, user);
    if (e && e->gen == t->kr_gen + 1 && e->which == which && strcmp(e->user, user) == 0) {
        memcpy(key, e->key, 16);
        return 0;
    }
    const struct token_key *tk = which ? &t->kr.prev : &t->kr.cur;
    char pass[64];
    if (turn_rest_password(tk->secret, tk->secret_len, user, pass, sizeof(pass)))
        return -1;
    stun_key_long_term(slice_str(user), slice_str(t->cfg->realm), slice_str(pass), key);
    return 0;
}

static void rest_key_keep(struct av_turn *t, int which, const char *user, const uint8_t key[16])
{
    struct av_keycache *e = keycache_slot(t, user);
    if (!e)
        return;
    e->gen = t->kr_gen + 1;
    e->which = which;
    memcpy(e->key, key, 16);
    snprintf(e->user, sizeof(e->user), "%s", user);
}

static bool check_key(struct req *r, const uint8_t key[16])
{
    int rc = r->m->mi256_off ? stun_msg_check_integrity_sha256(r->m, key, 16)
                             : stun_msg_check_integrity(r->m, key, 16);
    if (rc == 0)
        memcpy(r->key, key, 16);
    return rc == 0;
}

static int auth_fail(struct req *r, enum av_auth_fail why, int code)
{
    r->t->st.auth_fail[why]++;
    if (why != AV_AUTH_MISSING)
        LOGI(r->t->log, r->in->client, "authentication failed for user %s: %s (error %d)",
             r->user[0] ? r->user : "-", av_auth_fail_name(why), code);
    reply_error(r, code);
    return 1;
}

/* The request's MESSAGE-INTEGRITY under the user's key: a static user's, or a TURN REST
 * credential's under the current or previous secret. 0 (r->key set), or why not. */
static int check_credential(struct req *r, size_t ulen, enum av_auth_fail *why)
{
    struct av_turn *t = r->t;
    *why = AV_AUTH_UNKNOWN_USER;
    for (size_t i = 0; i < t->cfg->n_users; i++) {
        if (strcmp(t->cfg->users[i].name, r->user) == 0) {
            *why = AV_AUTH_BAD_INTEGRITY;
            return check_key(r, t->cfg->users[i].key) ? 0 : -1;
        }
    }
    int64_t expiry;
    if (turn_rest_expiry(r->user, ulen, &expiry) != 0)
        return -1;
    *why = AV_AUTH_EXPIRED;
    if (expiry < r->in->now_s)
        return -1;
    r->expiry = expiry;
    refresh_keyring(t);
    const struct token_key *keys[2] = {&t->kr.cur, &t->kr.prev};
    *why = AV_AUTH_UNKNOWN_USER; /* no secret to check it with */
    for (int k = 0; k < 2; k++) {
        const struct token_key *tk = keys[k];
        if (!tk->secret_len || (tk->not_after && tk->not_after < r->in->now_s))
            continue;
        *why = AV_AUTH_BAD_INTEGRITY;
        uint8_t key[16];
        if (rest_key(t, k, r->user, key))
            continue;
        if (check_key(r, key)) {
            rest_key_keep(t, k, r->user, key);
            return 0;
        }
    }
    return -1;
}

/* 0 when the request is authenticated (r->key, r->user set); 1 when an error reply was
 * produced; negative to drop it (rate limit). */
static int authenticate(struct req *r)
{
    struct av_turn *t = r->t;
    const struct stun_msg *m = r->m;
    if (!m->mi_off && !m->mi256_off) {
        if (t->unauth) {
            size_t n;
            const uint8_t *ip = ip_bytes(r->in->client, &n);
            if (!ratelimit_take(t->unauth, ip, n, 1, r->in->now_ms, NULL)) {
                t->st.unauth_limited++;
                return -EAGAIN;
            }
        }
        return auth_fail(r, AV_AUTH_MISSING, 401);
    }
    const struct stun_attr *u = stun_msg_find(m, STUN_A_USERNAME);
    const struct stun_attr *realm = stun_msg_find(m, STUN_A_REALM);
    const struct stun_attr *nonce = stun_msg_find(m, STUN_A_NONCE);
    if (!u || !realm || !nonce || u->len == 0 || u->len >= AV_USERNAME_MAX)
        return auth_fail(r, AV_AUTH_BAD_REQUEST, u && u->len >= AV_USERNAME_MAX ? 401 : 400);
    memcpy(r->user, m->buf + u->off, u->len);
    r->user[u->len] = 0;
    if (memchr(r->user, 0, u->len))
        return auth_fail(r, AV_AUTH_UNKNOWN_USER, 401);
    int nc = nonce_check(t, r->in->client, r->in->now_s, stun_attr_value(m, nonce));
    r->proved = nc >= 0;
    if (nc <= 0)
        return auth_fail(r, AV_AUTH_STALE_NONCE, 438);
    r->sha256 = m->mi256_off != 0;

    enum av_auth_fail why;
    if (check_credential(r, u->len, &why))
        return auth_fail(r, why, 401);
    r->authed = true;
    /* A revoked user's credentials, old and new, are refused until it is reinstated (403
     * Forbidden, integrity-protected: the credential itself was good). */
    if (av_shared_revoked(t->sh, av_user_id(r->user), r->expiry, r->in->now_s))
        return auth_fail(r, AV_AUTH_REVOKED, 403);
    return 0;
}

/* ---- methods ---- */

static uint32_t desired_lifetime(const struct av_turn_cfg *c, const struct stun_msg *m, bool *zero)
{
    const struct stun_attr *l = stun_msg_find(m, STUN_A_LIFETIME);
    uint32_t v;
    *zero = false;
    if (!l || stun_attr_u32(m, l, &v))
        return c->default_lifetime_s;
    if (v == 0) {
        *zero = true;
        return 0;
    }
    if (v > c->max_lifetime_s)
        v = c->max_lifetime_s;
    return v > c->default_lifetime_s ? v : c->default_lifetime_s;
}

static void alloc_success(struct req *r, struct av_alloc *a, int addr_err_family, int addr_err)
{
    struct stun_builder b;
    begin(r, &b, STUN_SUCCESS);
    for (int i = 0; i < 2; i++)
        if (a->relay[i].addr.u.sa.sa_family)
            stun_build_xaddr(&b, STUN_A_XOR_RELAYED_ADDRESS, &a->relay[i].addr);
    stun_build_u32(&b, STUN_A_LIFETIME, a->lifetime_s);
    if (a->token) {
        uint8_t tok[8];
        for (int i = 0; i < 8; i++)
            tok[i] = (uint8_t)(a->token >> (56 - 8 * i));
        stun_build_attr(&b, STUN_A_RESERVATION_TOKEN, tok, 8);
    }
    stun_build_xaddr(&b, STUN_A_XOR_MAPPED_ADDRESS, r->in->client);
    if (addr_err) {
        const char *reason = stun_reason(addr_err);
        uint8_t v[4 + 64];
        size_t rl = strlen(reason);
        v[0] = addr_err_family == AF_INET6 ? 2 : 1;
        v[1] = 0;
        v[2] = (uint8_t)(addr_err / 100);
        v[3] = (uint8_t)(addr_err % 100);
        memcpy(v + 4, reason, rl);
        stun_build_attr(&b, STUN_A_ADDRESS_ERROR_CODE, v, 4 + rl);
    }
    finish(r, &b);
}

/* new_peers_per_second's bucket: bursts of two seconds' worth (ICE permits all of its
 * candidates at once). */
static struct av_bucket peers_bucket(const struct av_turn_cfg *c, uint64_t now_ms)
{
    return (struct av_bucket){c->new_peers_per_s, 2 * (uint64_t)c->new_peers_per_s,
                              2.0 * c->new_peers_per_s, now_ms};
}

/* 300 Try Alternate with ALTERNATE-SERVER (MAPPED-ADDRESS encoding), integrity-protected. */
static int redirect(struct req *r, const struct addr *to)
{
    uint8_t v[20];
    size_t n;
    const uint8_t *ip = ip_bytes(to, &n);
    v[0] = 0;
    v[1] = n == 16 ? 2 : 1;
    v[2] = (uint8_t)(addr_port(to) >> 8);
    v[3] = (uint8_t)addr_port(to);
    memcpy(v + 4, ip, n);
    struct stun_builder b;
    begin(r, &b, STUN_ERROR);
    stun_build_error(&b, 300, NULL);
    stun_build_attr(&b, STUN_A_ALTERNATE_SERVER, v, 4 + n);
    finish(r, &b);
    r->out->code = 300;
    r->t->st.redirected++;
    char as[ADDR_STRLEN];
    LOGI(r->t->log, r->in->client, "draining: Allocate of %s redirected to %s", r->user,
         addr_format(to, as));
    return 0;
}

/* What an Allocate asks for, its attributes checked. */
struct alloc_ask {
    uint8_t proto;
    bool tcp, dual, df;
    int family;
    int addr_err; /* for the ADDITIONAL-ADDRESS-FAMILY part: 440 when no IPv6 relay */
    const struct stun_attr *tok, *ev;
};

/* An Allocate on a 5-tuple that has one: the same transaction again gets its answer, any
 * other 437. */
static int allocate_again(struct req *r, struct av_alloc *a)
{
    if (memcmp(a->tid, r->m->tid, STUN_TID_LEN) == 0 && strcmp(a->user->name, r->user) == 0) {
        alloc_success(r, a, 0, 0); /* a retransmission */
        return 0;
    }
    log_refusal(r, NULL, 437, "allocation exists for this 5-tuple", NULL, 0);
    return reply_error(r, 437);
}

/* REQUESTED-FAMILY and ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §7.2): 0, or the error code. */
static int allocate_family(struct req *r, struct alloc_ask *k, const struct stun_attr *raf,
                           const struct stun_attr *aaf)
{
    const struct av_turn_cfg *c = r->t->cfg;
    uint8_t f;
    if (raf) {
        if (stun_attr_u8(r->m, raf, &f) || (f != 1 && f != 2))
            return 440;
        k->family = f == 2 ? AF_INET6 : AF_INET;
    }
    if (aaf) {
        if (stun_attr_u8(r->m, aaf, &f) || f != 2)
            return 400;
        k->dual = c->have_v6;
        k->addr_err = c->have_v6 ? 0 : 440;
    }
    if ((k->family == AF_INET && !c->have_v4) || (k->family == AF_INET6 && !c->have_v6)) {
        log_refusal(r, NULL, 440, "address family not configured", NULL, 0);
        return 440;
    }
    return 0;
}

/* Transport, options and family (RFC 8656 §7.2, RFC 6062 §5.1): 0, or the error code. */
static int allocate_ask(struct req *r, struct alloc_ask *k)
{
    const struct stun_msg *m = r->m;
    const struct stun_attr *rt = stun_msg_find(m, STUN_A_REQUESTED_TRANSPORT);
    *k = (struct alloc_ask){.family = AF_INET};
    if (!rt || stun_attr_u8(m, rt, &k->proto))
        return 400;
    /* A TCP relay (RFC 6062) needs a TCP or TLS control connection to announce peers on:
     * asking for one over UDP is a bad request (RFC 6062 §5.1), not an unsupported protocol. */
    k->tcp = k->proto == AV_TRANSPORT_TCP && r->t->cfg->tcp_relay;
    if (k->tcp && r->in->transport != AV_TRANSPORT_TCP) {
        log_refusal(r, NULL, 400, "TCP relay asked over UDP", NULL, 0);
        return 400;
    }
    if (k->proto != AV_TRANSPORT_UDP && !k->tcp) {
        log_refusal(r, NULL, 442, "unsupported relay transport", NULL, 0);
        return 442;
    }
    const struct stun_attr *raf = stun_msg_find(m, STUN_A_REQUESTED_ADDRESS_FAMILY);
    const struct stun_attr *aaf = stun_msg_find(m, STUN_A_ADDITIONAL_ADDRESS_FAMILY);
    k->tok = stun_msg_find(m, STUN_A_RESERVATION_TOKEN);
    k->ev = stun_msg_find(m, STUN_A_EVEN_PORT);
    k->df = stun_msg_find(m, STUN_A_DONT_FRAGMENT) != NULL;
    /* RFC 6062 5.1: these only mean something for UDP relays. */
    if (k->tcp && (k->tok || k->ev || k->df))
        return 400;
    if ((k->tok && (k->ev || raf || aaf)) || (raf && aaf) || (k->tok && k->tok->len != 8) ||
        (k->ev && k->ev->len < 1))
        return 400;
    return allocate_family(r, k, raf, aaf);
}

/* A draining edge takes no new allocations (existing ones keep being served). RFC 8656 has
 * no "shutting down" code: 486 is the per-user quota, 403 would tell the client its
 * credentials are not welcome anywhere; 508 Insufficient Capacity says this server cannot
 * take it now, so the client tries the next relay it was given. The Allocate is redirected
 * to the least-loaded healthy peer the Director told us about (RFC 8489 300 Try Alternate),
 * over the same transport; TLS clients would need ALTERNATE-DOMAIN too, so they and edges
 * without a peer get 508. Returns 508, or -1 when redirected. */
static int allocate_elsewhere(struct req *r)
{
    struct av_turn *t = r->t;
    struct addr alt = {0};
    if (!r->in->secure) {
        pthread_mutex_lock(&t->sh->mu);
        alt = t->sh->alt.a[r->in->side != AV_SIDE_EXTERNAL][r->in->transport == AV_TRANSPORT_TCP];
        pthread_mutex_unlock(&t->sh->mu);
    }
    if (addr_family(&alt)) {
        redirect(r, &alt);
        return -1;
    }
    log_refusal(r, NULL, 508, "draining: no new allocations", NULL, 0);
    return 508;
}

/* Draining and the quotas: 0 with the credential's count taken (*counted), the error code
 * to answer, or -1 when answered already. */
static int allocate_admit(struct req *r, struct av_user_count **counted)
{
    struct av_turn *t = r->t;
    const struct av_turn_cfg *c = t->cfg;
    if (__atomic_load_n(&t->sh->draining, __ATOMIC_RELAXED))
        return allocate_elsewhere(r);
    if (c->total_quota &&
        __atomic_load_n(&t->sh->allocs, __ATOMIC_RELAXED) >= (int64_t)c->total_quota) {
        t->st.quota_total++;
        log_refusal(r, NULL, 508, "total allocation quota reached", NULL, 0);
        return 508;
    }
    /* Counted across workers, per credential (a leaked one opens a few, not hundreds) and
     * per user; given back when the allocation goes (hook_free). */
    *counted = av_shared_user_take(t->sh, r->user, c->cred_quota);
    if (!*counted) {
        t->st.quota_cred++;
        log_refusal(r, NULL, 486, "allocations per credential reached", NULL, 0);
        return 486;
    }
    char idk[AV_USERNAME_MAX];
    id_key(r->user, idk);
    if (!av_shared_user_take(t->sh, idk, c->user_quota)) {
        av_shared_user_give(t->sh, r->user);
        t->st.quota_user++;
        log_refusal(r, NULL, 486, "per-user allocation quota reached", NULL, 0);
        return 486;
    }
    return 0;
}

/* The port a RESERVATION-TOKEN holds (*reserved), if the Allocate has one: 0, or 508 with
 * the quota given back. */
static int allocate_reserved(struct req *r, const struct alloc_ask *k, void **reserved)
{
    *reserved = NULL;
    if (!k->tok)
        return 0;
    const uint8_t *v = r->m->buf + k->tok->off;
    uint64_t token = 0;
    for (int i = 0; i < 8; i++)
        token = token << 8 | v[i];
    *reserved = resv_take(r->t->sh, token, r->in->now_ms);
    if (*reserved)
        return 0;
    quota_give(r->t, r->user);
    log_refusal(r, NULL, 508, "unknown or expired reservation token", NULL, 0);
    return 508;
}

static void allocate_init(struct req *r, struct av_alloc *a, const struct alloc_ask *k,
                          struct av_user_count *counted)
{
    const struct av_turn_cfg *c = r->t->cfg;
    const struct av_turn_in *in = r->in;
    bool zero;
    uint32_t life = desired_lifetime(c, r->m, &zero);
    if (zero)
        life = c->default_lifetime_s;
    a->side = in->side;
    a->relay_transport = k->proto;
    a->conn = in->conn;
    a->lifetime_s = life;
    a->expires_ms = in->now_ms + (uint64_t)life * 1000;
    memcpy(a->key, r->key, 16);
    memcpy(a->tid, r->m->tid, STUN_TID_LEN);
    a->bw = (struct av_bucket){c->bps_per_alloc, c->bps_per_alloc, (double)c->bps_per_alloc,
                               in->now_ms};
    a->peers = peers_bucket(c, in->now_ms);
    a->pkt_tokens = c->pps_per_alloc ? c->pps_per_alloc : UINT32_MAX;
    a->pkt_refill_ms = in->now_ms;
    a->user->shared = counted;
}

/* The relay sockets: the asked family (or the reserved port), an EVEN-PORT reservation of
 * the next port when R is set, and the IPv6 one of a dual allocation (its failure is only
 * reported, as ADDRESS-ERROR-CODE). 0, or 508 with the allocation gone. */
static int allocate_open(struct req *r, struct av_alloc *a, struct alloc_ask *k, void *reserved)
{
    struct av_turn *t = r->t;
    bool reserve = k->ev && (r->m->buf[k->ev->off] & 0x80);
    void *resv_out = NULL;
    int rc = t->io.open(t->io.arg, a, reserved ? AF_INET : k->family, k->ev != NULL, k->df,
                        reserve ? &resv_out : NULL, reserved);
    if (rc) {
        av_alloc_remove(t->tab, a);
        log_refusal(r, NULL, 508, "no relay port available", NULL, 0);
        return 508;
    }
    if (reserve && resv_out) {
        uint64_t token;
        crypto_random(&token, sizeof(token));
        if (!token)
            token = 1;
        if (resv_add(t->sh, token, resv_out, r->in->now_ms + RESERVATION_MS, &t->io) == 0)
            a->token = token;
        else if (t->io.release)
            t->io.release(t->io.arg, resv_out);
    }
    if (k->dual && t->io.open(t->io.arg, a, AF_INET6, false, k->df, NULL, NULL))
        k->addr_err = 508;
    return 0;
}

static int do_allocate(struct req *r)
{
    struct av_turn *t = r->t;
    const struct av_turn_in *in = r->in;
    struct av_alloc *a = av_alloc_find(t->tab, in->client, in->listener, in->transport);
    if (a)
        return allocate_again(r, a);
    struct alloc_ask k;
    struct av_user_count *counted = NULL;
    void *reserved = NULL;
    int code = allocate_ask(r, &k);
    if (!code)
        code = allocate_admit(r, &counted);
    if (!code)
        code = allocate_reserved(r, &k, &reserved);
    if (code)
        return code < 0 ? 0 : reply_error(r, code);
    a = av_alloc_add(t->tab, in->client, in->listener, in->transport, r->user);
    if (!a) {
        quota_give(t, r->user);
        if (reserved && t->io.release)
            t->io.release(t->io.arg, reserved);
        return reply_error(r, 508);
    }
    __atomic_add_fetch(&t->sh->allocs, 1, __ATOMIC_RELAXED);
    allocate_init(r, a, &k, counted);
    if ((code = allocate_open(r, a, &k, reserved)))
        return reply_error(r, code);
    t->st.allocs_ok++;
    char ra[ADDR_STRLEN];
    LOGI(t->log, in->client, "allocation for %s on the %s side: %s relay %s, lifetime %us", r->user,
         in->side == AV_SIDE_EXTERNAL ? "external" : "internal", k.tcp ? "TCP" : "UDP",
         addr_format(a->relay[0].addr.u.sa.sa_family ? &a->relay[0].addr : &a->relay[1].addr, ra),
         a->lifetime_s);
    alloc_success(r, a, AF_INET6, k.addr_err);
    return 0;
}

/* The allocation a later request refers to: 437 when none, 441 when another user's. */
static struct av_alloc *owned_alloc(struct req *r)
{
    struct av_alloc *a = av_alloc_find(r->t->tab, r->in->client, r->in->listener, r->in->transport);
    if (!a) {
        log_refusal(r, NULL, 437, "no allocation for this 5-tuple", NULL, 0);
        reply_error(r, 437);
        return NULL;
    }
    if (strcmp(a->user->name, r->user) != 0) {
        log_refusal(r, NULL, 441, "username differs from the allocation's", NULL, 0);
        reply_error(r, 441);
        return NULL;
    }
    return a;
}

static int do_refresh(struct req *r)
{
    struct av_alloc *a = owned_alloc(r);
    if (!a)
        return 0;
    bool zero;
    uint32_t life = desired_lifetime(r->t->cfg, r->m, &zero);
    struct stun_builder b;
    begin(r, &b, STUN_SUCCESS);
    stun_build_u32(&b, STUN_A_LIFETIME, life);
    finish(r, &b);
    if (zero) {
        LOGI(r->t->log, r->in->client, "allocation of %s deleted by the client", r->user);
        av_alloc_remove(r->t->tab, a);
    } else {
        a->expires_ms = r->in->now_ms + (uint64_t)life * 1000;
    }
    return 0;
}

/* Checks the family and the enterprise rule for a peer; replies 443/403 when refused. */
static bool peer_ok(struct req *r, struct av_alloc *a, const struct addr *peer)
{
    int fi = peer->u.sa.sa_family == AF_INET6 ? 1 : 0;
    if (!a->relay[fi].addr.u.sa.sa_family) {
        log_refusal(r, a, 443, "peer address family differs from the relay's", peer, 8);
        reply_error(r, 443);
        return false;
    }
    enum av_deny d = av_turn_peer_policy(r->t->cfg, (enum av_side)a->side, peer);
    if (d != AV_DENY_NONE) {
        r->t->st.denied[d]++;
        log_refusal(r, a, 403, av_deny_name(d), peer, 9 + d);
        reply_error(r, 403);
        return false;
    }
    return true;
}

/* new_peers_per_second: a scan of many peers from one allocation is refused (508). */
static bool new_peers_ok(struct req *r, struct av_alloc *a, size_t fresh)
{
    if (!fresh || !r->t->cfg->new_peers_per_s)
        return true;
    if (a->peers.rate != r->t->cfg->new_peers_per_s) /* a reload changed it */
        a->peers = peers_bucket(r->t->cfg, r->in->now_ms);
    if (av_bucket_take(&a->peers, r->in->now_ms, fresh))
        return true;
    r->t->st.new_peers_limited++;
    log_refusal(r, a, 508, "too many new peers per second", NULL, 8);
    reply_error(r, 508);
    return false;
}

static int do_create_permission(struct req *r)
{
    struct av_alloc *a = owned_alloc(r);
    if (!a)
        return 0;
    struct addr peers[STUN_MAX_ATTRS];
    size_t n = 0;
    for (unsigned i = 0; i < r->m->n_attrs; i++) {
        if (r->m->attrs[i].type != STUN_A_XOR_PEER_ADDRESS)
            continue;
        if (stun_attr_xaddr(r->m, &r->m->attrs[i], &peers[n]))
            return reply_error(r, 400);
        if (!peer_ok(r, a, &peers[n]))
            return 0;
        n++;
    }
    if (n == 0)
        return reply_error(r, 400);
    const struct av_turn_cfg *c = r->t->cfg;
    size_t fresh = 0;
    for (size_t i = 0; i < n; i++)
        fresh += av_perm_find(r->t->tab, a, &peers[i], r->in->now_ms) == NULL;
    if (c->max_perms && a->n_perms + fresh > c->max_perms) {
        log_refusal(r, a, 508, "too many permissions", NULL, 7);
        return reply_error(r, 508);
    }
    if (!new_peers_ok(r, a, fresh))
        return 0;
    uint64_t exp = r->in->now_ms + (uint64_t)c->perm_lifetime_s * 1000;
    for (size_t i = 0; i < n; i++)
        if (!av_perm_set(r->t->tab, a, &peers[i], exp))
            return reply_error(r, 508);
    struct stun_builder b;
    begin(r, &b, STUN_SUCCESS);
    finish(r, &b);
    return 0;
}

static int do_channel_bind(struct req *r)
{
    struct av_alloc *a = owned_alloc(r);
    if (!a)
        return 0;
    const struct stun_attr *cn = stun_msg_find(r->m, STUN_A_CHANNEL_NUMBER);
    const struct stun_attr *pa = stun_msg_find(r->m, STUN_A_XOR_PEER_ADDRESS);
    uint32_t v;
    struct addr peer;
    if (!cn || stun_attr_u32(r->m, cn, &v) || !pa || stun_attr_xaddr(r->m, pa, &peer))
        return reply_error(r, 400);
    uint16_t num = (uint16_t)(v >> 16);
    /* RFC 6062 6.2: a TCP allocation has no channels. */
    if (num < STUN_CHANNEL_MIN || num > STUN_CHANNEL_MAX || a->relay_transport == AV_TRANSPORT_TCP)
        return reply_error(r, 400);
    if (!peer_ok(r, a, &peer))
        return 0;
    struct av_alloc_table *tab = r->t->tab;
    uint64_t now = r->in->now_ms;
    struct av_chan *c1 = av_chan_by_num(tab, a, num, now);
    struct av_chan *c2 = av_chan_by_peer(tab, a, &peer, now);
    if ((c1 && !addr_eq(&c1->peer, &peer)) || (c2 && c2->num != num)) {
        log_refusal(r, a, 400, "channel or peer already bound otherwise", &peer, 6);
        return reply_error(r, 400);
    }
    const struct av_turn_cfg *c = r->t->cfg;
    if (!c1 && c->max_perms && a->n_chans >= c->max_perms)
        return reply_error(r, 508);
    if (!new_peers_ok(r, a, av_perm_find(tab, a, &peer, now) == NULL))
        return 0;
    if (!av_chan_set(tab, a, num, &peer, now + (uint64_t)c->chan_lifetime_s * 1000) ||
        !av_perm_set(tab, a, &peer, now + (uint64_t)c->perm_lifetime_s * 1000))
        return reply_error(r, 508);
    struct stun_builder b;
    begin(r, &b, STUN_SUCCESS);
    finish(r, &b);
    return 0;
}

/* ---- RFC 6062 TCP relays ---- */

/* Connect: open a TCP connection from the relayed address to a peer that a permission and
 * the enterprise rule both admit; the answer comes from the I/O layer once it is up. */
static int do_connect(struct req *r)
{
    struct av_alloc *a = owned_alloc(r);
    if (!a)
        return 0;
    const struct stun_attr *pa = stun_msg_find(r->m, STUN_A_XOR_PEER_ADDRESS);
    struct addr peer;
    if (a->relay_transport != AV_TRANSPORT_TCP || !pa || stun_attr_xaddr(r->m, pa, &peer))
        return reply_error(r, 400);
    if (!peer_ok(r, a, &peer))
        return 0;
    if (!av_perm_find(r->t->tab, a, &peer, r->in->now_ms)) {
        log_refusal(r, a, 403, "no permission for the peer", &peer, 5);
        return reply_error(r, 403);
    }
    struct av_turn_pending p = {.sha256 = r->sha256, .fp = r->fp};
    memcpy(p.tid, r->m->tid, STUN_TID_LEN);
    memcpy(p.key, r->key, sizeof(p.key));
    int rc = r->t->io.connect ? r->t->io.connect(r->t->io.arg, a, &peer, &p) : -ENOTSUP;
    if (rc == -EEXIST)
        return reply_error(r, 446);
    if (rc == -ENOSPC)
        return reply_error(r, 508);
    if (rc < 0)
        return reply_error(r, 447);
    return 0;
}

/* ConnectionBind on a new client connection: the allocation's owner claims a pending peer
 * connection, and this connection becomes its byte pipe after the success answer. */
static int do_connection_bind(struct req *r)
{
    struct av_turn *t = r->t;
    const struct stun_attr *ca = stun_msg_find(r->m, STUN_A_CONNECTION_ID);
    uint32_t id;
    if (r->in->transport != AV_TRANSPORT_TCP || !ca || stun_attr_u32(r->m, ca, &id) || !id)
        return reply_error(r, 400);
    if (av_alloc_find(t->tab, r->in->client, r->in->listener, r->in->transport)) {
        log_refusal(r, NULL, 400, "ConnectionBind on a control connection", NULL, 0);
        return reply_error(r, 400);
    }
    struct av_alloc *a = t->io.conn_alloc ? t->io.conn_alloc(t->io.arg, id) : NULL;
    if (!a) {
        log_refusal(r, NULL, 400, "unknown or expired CONNECTION-ID", NULL, 0);
        return reply_error(r, 400);
    }
    if (strcmp(a->user->name, r->user) != 0) {
        log_refusal(r, NULL, 441, "username differs from the allocation's", NULL, 0);
        return reply_error(r, 441);
    }
    struct stun_builder b;
    begin(r, &b, STUN_SUCCESS);
    finish(r, &b);
    r->out->bind_id = id;
    return 0;
}

ssize_t av_turn_connect_answer(struct av_turn *t, const struct av_turn_pending *p, int code,
                               uint32_t id, uint8_t *out, size_t cap)
{
    struct stun_builder b;
    stun_build_init(&b, out, cap, STUN_CONNECT, code ? STUN_ERROR : STUN_SUCCESS, p->tid);
    if (code) {
        stun_build_error(&b, code, NULL);
        t->st.errors++;
    } else {
        stun_build_u32(&b, STUN_A_CONNECTION_ID, id);
    }
    return seal(t, &b, true, p->sha256, p->key, p->fp);
}

/* A fresh transaction id for the indications the server sends on its own (xorshift). */
static void next_tid(struct av_turn *t, uint8_t tid[STUN_TID_LEN])
{
    for (int i = 0; i < STUN_TID_LEN; i += 4) {
        t->rnd ^= t->rnd << 13;
        t->rnd ^= t->rnd >> 7;
        t->rnd ^= t->rnd << 17;
        wr32(tid + i, (uint32_t)t->rnd);
    }
}

ssize_t av_turn_connection_attempt(struct av_turn *t, const struct addr *peer, uint32_t id,
                                   uint8_t *out, size_t cap)
{
    uint8_t tid[STUN_TID_LEN];
    next_tid(t, tid);
    struct stun_builder b;
    stun_build_init(&b, out, cap, STUN_CONNECTION_ATTEMPT, STUN_INDICATION, tid);
    stun_build_xaddr(&b, STUN_A_XOR_PEER_ADDRESS, peer);
    stun_build_u32(&b, STUN_A_CONNECTION_ID, id);
    stun_build_fingerprint(&b);
    return stun_build_finish(&b);
}

/* ---- relay paths ---- */

/* packets_per_second, both directions: a budget spent one packet at a time and refilled
 * only when it runs out, so the relay path pays a test and a decrement per packet. */
static bool pkt_refill(struct av_turn *t, struct av_alloc *a, uint64_t now_ms)
{
    uint32_t rate = t->cfg->pps_per_alloc;
    if (!rate) {
        a->pkt_tokens = UINT32_MAX;
        return true;
    }
    uint64_t add = (now_ms - a->pkt_refill_ms) * rate / 1000;
    if (!add) { /* less than one packet's worth since the last refill: keep waiting */
        t->st.dropped_pkt_rate++;
        return false;
    }
    a->pkt_tokens = add > rate ? rate : (uint32_t)add; /* at most one second's worth */
    a->pkt_refill_ms = now_ms;
    return true;
}

static inline bool pkt_take(struct av_turn *t, struct av_alloc *a, uint64_t now_ms)
{
    if (__builtin_expect(!a->pkt_tokens, 0) && !pkt_refill(t, a, now_ms))
        return false;
    a->pkt_tokens--;
    return true;
}

static int relay_to_peer(struct av_turn *t, struct av_alloc *a, const struct addr *peer,
                         struct slice data, uint64_t now_ms, struct av_turn_out *out)
{
    if (a->relay_transport == AV_TRANSPORT_TCP)
        return -ENOTSUP; /* RFC 6062: data goes over the bound data connections */
    if (!av_perm_find(t->tab, a, peer, now_ms)) {
        t->st.dropped_no_perm++;
        return -EPERM;
    }
    if (!pkt_take(t, a, now_ms))
        return -ENOBUFS;
    if (!av_bucket_take(&a->bw, now_ms, data.len) ||
        !av_turn_user_take(t, a->user, now_ms, data.len)) {
        t->st.dropped_bandwidth++;
        return -ENOBUFS;
    }
    out->relay_alloc = a;
    out->relay_peer = *peer;
    out->relay_data = data;
    a->pkts_out++;
    a->bytes_out += data.len;
    t->st.pkts_to_peer++;
    t->st.bytes_to_peer += data.len;
    return 0;
}

static int do_send(struct av_turn *t, const struct av_turn_in *in, const struct stun_msg *m,
                   struct av_turn_out *out)
{
    struct av_alloc *a = av_alloc_find(t->tab, in->client, in->listener, in->transport);
    const struct stun_attr *pa = stun_msg_find(m, STUN_A_XOR_PEER_ADDRESS);
    const struct stun_attr *d = stun_msg_find(m, STUN_A_DATA);
    struct addr peer;
    if (!a || !pa || !d || stun_attr_xaddr(m, pa, &peer))
        return -ENOENT;
    return relay_to_peer(t, a, &peer, stun_attr_value(m, d), in->now_ms, out);
}

static int do_chandata(struct av_turn *t, const struct av_turn_in *in, const uint8_t *p, size_t len,
                       struct av_turn_out *out)
{
    uint16_t ch;
    struct slice data;
    if (stun_chandata_parse(p, len, in->transport != AV_TRANSPORT_UDP, &ch, &data) < 0)
        return -EBADMSG;
    struct av_alloc *a = av_alloc_find(t->tab, in->client, in->listener, in->transport);
    if (!a)
        return -ENOENT;
    struct av_chan *c = av_chan_by_num(t->tab, a, ch, in->now_ms);
    if (!c)
        return -ENOENT;
    return relay_to_peer(t, a, &c->peer, data, in->now_ms, out);
}

int av_turn_peer_input(struct av_turn *t, struct av_alloc *a, const struct addr *peer,
                       uint8_t *data, size_t len, bool stream, uint64_t now_ms, struct slice *frame)
{
    if (!av_perm_find(t->tab, a, peer, now_ms)) {
        t->st.dropped_no_perm++;
        return -EPERM;
    }
    if (!pkt_take(t, a, now_ms))
        return -ENOBUFS;
    if (!av_bucket_take(&a->bw, now_ms, len) || !av_turn_user_take(t, a->user, now_ms, len)) {
        t->st.dropped_bandwidth++;
        return -ENOBUFS;
    }
    size_t pad = (4 - (len & 3)) & 3;
    struct av_chan *c = av_chan_by_peer(t->tab, a, peer, now_ms);
    if (c) {
        uint8_t *h = data - 4;
        stun_chandata_header(h, c->num, len);
        if (stream && pad)
            memset(data + len, 0, pad);
        *frame = slice_make(h, 4 + len + (stream ? pad : 0));
    } else {
        if (len > 0xFFFF - 64)
            return -EMSGSIZE;
        size_t hsz = STUN_HDR_LEN + (peer->u.sa.sa_family == AF_INET6 ? 24 : 12) + 4;
        uint8_t *h = data - hsz;
        uint8_t tid[STUN_TID_LEN];
        next_tid(t, tid);
        struct stun_builder b;
        stun_build_init(&b, h, hsz, STUN_DATA, STUN_INDICATION, tid);
        stun_build_xaddr(&b, STUN_A_XOR_PEER_ADDRESS, peer);
        uint8_t *dh = h + b.len;
        dh[0] = (uint8_t)(STUN_A_DATA >> 8);
        dh[1] = (uint8_t)STUN_A_DATA;
        dh[2] = (uint8_t)(len >> 8);
        dh[3] = (uint8_t)len;
        memset(data + len, 0, pad);
        size_t total = hsz + len + pad;
        h[2] = (uint8_t)((total - STUN_HDR_LEN) >> 8);
        h[3] = (uint8_t)(total - STUN_HDR_LEN);
        *frame = slice_make(h, total);
    }
    a->pkts_in++;
    a->bytes_in += len;
    t->st.pkts_to_client++;
    t->st.bytes_to_client += len;
    return 0;
}

/* ---- dispatch ---- */

static int do_binding(struct req *r)
{
    struct av_turn *t = r->t;
    if (t->unauth) {
        size_t n;
        const uint8_t *ip = ip_bytes(r->in->client, &n);
        if (!ratelimit_take(t->unauth, ip, n, 1, r->in->now_ms, NULL)) {
            t->st.unauth_limited++;
            return -EAGAIN;
        }
    }
    if (r->m->n_unknown)
        return reply_error(r, 420);
    struct stun_builder b;
    begin(r, &b, STUN_SUCCESS);
    stun_build_xaddr(&b, STUN_A_XOR_MAPPED_ADDRESS, r->in->client);
    finish(r, &b);
    t->st.bindings++;
    return 0;
}

int av_turn_input(struct av_turn *t, const struct av_turn_in *in, const uint8_t *p, size_t len,
                  struct av_turn_out *out)
{
    out->reply_len = 0;
    out->code = 0;
    out->relay_alloc = NULL;
    out->bind_id = 0;
    if (stun_is_chandata(p, len))
        return do_chandata(t, in, p, len, out);
    struct stun_msg m;
    if (stun_msg_parse(&m, p, len) < 0) {
        /* RFC 3489 clients (no magic cookie) still get their mapped address. */
        ssize_t n = stun_classic_binding_reply(p, len, in->client, out->reply, out->reply_cap);
        if (n < 0)
            return -EBADMSG;
        if (t->unauth) {
            size_t ipn;
            const uint8_t *ip = ip_bytes(in->client, &ipn);
            if (!ratelimit_take(t->unauth, ip, ipn, 1, in->now_ms, NULL)) {
                t->st.unauth_limited++;
                return -EAGAIN;
            }
        }
        if (t->cfg->strict_amplification && in->transport == AV_TRANSPORT_UDP &&
            !amplification_ok(t, in->client, len, (size_t)n, in->now_ms)) {
            t->st.amplification_dropped++;
            return -EAGAIN;
        }
        out->reply_len = (size_t)n;
        t->st.bindings++;
        return 0;
    }
    if (m.fp_off && stun_msg_check_fingerprint(&m) != 0)
        return -EBADMSG;
    if (m.cls == STUN_INDICATION)
        return m.method == STUN_SEND && !m.n_unknown ? do_send(t, in, &m, out) : -ENOTSUP;
    if (m.cls != STUN_REQUEST)
        return -ENOTSUP;

    struct req r = {.t = t, .in = in, .m = &m, .len = len, .out = out, .fp = m.fp_off != 0};
    switch (m.method) {
    case STUN_BINDING:
        return do_binding(&r);
    case STUN_ALLOCATE:
    case STUN_REFRESH:
    case STUN_CREATE_PERMISSION:
    case STUN_CHANNEL_BIND:
    case STUN_CONNECT:
    case STUN_CONNECTION_BIND:
        break;
    default:
        return reply_error(&r, 400);
    }
    int rc = authenticate(&r);
    if (rc)
        return rc < 0 ? rc : 0;
    if (m.n_unknown) {
        log_refusal(&r, NULL, 420, "unknown comprehension-required attribute", NULL, 0);
        return reply_error(&r, 420);
    }
    switch (m.method) {
    case STUN_ALLOCATE:
        return do_allocate(&r);
    case STUN_REFRESH:
        return do_refresh(&r);
    case STUN_CREATE_PERMISSION:
        return do_create_permission(&r);
    case STUN_CONNECT:
        return do_connect(&r);
    case STUN_CONNECTION_BIND:
        return do_connection_bind(&r);
    default:
        return do_channel_bind(&r);
    }
}
