/* Unit tests for the control-channel frame codec (common/ctl_codec.c): round trips, the wire
 * format, and what happens to truncated, oversized and garbage frames. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/ctl.h"
#include "common/ctl_int.h"

static struct ctl_msg *roundtrip(const struct ctl_msg *in)
{
    static uint8_t frame[CTL_FRAME_MAX + 4];
    ssize_t n = ctl_frame_encode(in, frame, sizeof frame);
    assert_true(n > 4);
    struct ctl_msg *out = malloc(sizeof *out);
    assert_non_null(out);
    assert_int_equal(ctl_frame_decode(frame, (size_t)n, out), n);
    assert_int_equal(out->type, in->type);
    return out;
}

static void role_names_round_trip(void **state)
{
    (void)state;
    for (int r = CTL_ROLE_DIRECTOR; r < CTL_ROLE_COUNT; r++) {
        enum ctl_role back;
        assert_int_equal(ctl_role_parse(ctl_role_name((enum ctl_role)r), &back), 0);
        assert_int_equal(back, r);
    }
    enum ctl_role x;
    assert_int_equal(ctl_role_parse("av-edge", &x), 0);
    assert_int_equal(x, CTL_ROLE_AV_EDGE);
    assert_int_equal(ctl_role_parse("unknown", &x), -EINVAL);
    assert_int_equal(ctl_role_parse("AV-EDGE", &x), -EINVAL);
    assert_string_equal(ctl_role_name((enum ctl_role)99), "unknown");
    assert_string_equal(ctl_secret_kind_name(CTL_SECRET_RELAY), "relay");
    assert_string_equal(ctl_secret_kind_name(CTL_SECRET_CONFERENCE), "conference");
}

static void hello_round_trips(void **state)
{
    (void)state;
    struct ctl_msg *in = calloc(1, sizeof *in);
    in->type = CTL_MSG_HELLO;
    struct ctl_hello *h = &in->u.hello;
    h->role = CTL_ROLE_AV_EDGE;
    strcpy(h->instance_id, "av-1");
    strcpy(h->version, "1.2.3");
    strcpy(h->external_addrs[0], "127.0.0.13:3478");
    strcpy(h->external_addrs[1], "[::1]:3478");
    h->n_external = 2;
    strcpy(h->internal_addrs[0], "127.0.0.23:3478");
    h->n_internal = 1;
    h->subscribe[0] = CTL_ROLE_AV_EDGE;
    h->subscribe[1] = CTL_ROLE_CONF_EDGE;
    h->n_subscribe = 2;
    struct ctl_msg *out = roundtrip(in);
    assert_memory_equal(&out->u.hello, h, sizeof *h);
    free(out);
    free(in);
}

static void welcome_with_secrets_round_trips(void **state)
{
    (void)state;
    struct ctl_msg *in = calloc(1, sizeof *in);
    in->type = CTL_MSG_WELCOME;
    struct ctl_welcome *w = &in->u.welcome;
    strcpy(w->director_id, "director-1");
    w->heartbeat_ms = 1500;
    for (int i = 0; i < 4; i++) {
        struct ctl_secret *s = &w->secrets[i];
        s->kind = i < 2 ? CTL_SECRET_RELAY : CTL_SECRET_CONFERENCE;
        snprintf(s->key_id, sizeof s->key_id, "k%d", i);
        s->secret_len = 32;
        memset(s->secret, 0xa0 + i, 32);
        s->not_after = 1700000000 + i;
    }
    w->n_secrets = 4;
    struct ctl_msg *out = roundtrip(in);
    assert_string_equal(out->u.welcome.director_id, "director-1");
    assert_int_equal(out->u.welcome.heartbeat_ms, 1500);
    assert_int_equal(out->u.welcome.n_secrets, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(out->u.welcome.secrets[i].kind, w->secrets[i].kind);
        assert_string_equal(out->u.welcome.secrets[i].key_id, w->secrets[i].key_id);
        assert_int_equal(out->u.welcome.secrets[i].secret_len, 32);
        assert_memory_equal(out->u.welcome.secrets[i].secret, w->secrets[i].secret, 32);
        assert_int_equal(out->u.welcome.secrets[i].not_after, w->secrets[i].not_after);
    }
    free(out);
    free(in);
}

static void report_round_trips(void **state)
{
    (void)state;
    struct ctl_msg *in = calloc(1, sizeof *in);
    in->type = CTL_MSG_REPORT;
    struct ctl_report *r = &in->u.report;
    r->role = CTL_ROLE_CONF_EDGE;
    strcpy(r->instance_id, "conf-7");
    r->connections = 12;
    r->allocations = 3;
    r->bytes_in = 1ull << 40;
    r->bytes_out = 99;
    r->errors = 1;
    r->load_permille = 250;
    r->healthy = true;
    r->draining = true;
    strcpy(r->notes[0], "watch:partner.example");
    strcpy(r->notes[1], "unwatch:old.example");
    r->n_notes = 2;
    strcpy(r->external_addrs[0], "turn:192.0.2.13:3478?transport=udp");
    r->n_external = 1;
    strcpy(r->internal_addrs[0], "turn:10.0.0.13:3478?transport=udp");
    strcpy(r->internal_addrs[1], "turn:10.0.0.13:3478?transport=tcp");
    r->n_internal = 2;
    struct ctl_msg *out = roundtrip(in);
    assert_memory_equal(&out->u.report, r, sizeof *r);
    free(out);
    free(in);
}

static void small_messages_round_trip(void **state)
{
    (void)state;
    struct ctl_msg in;
    memset(&in, 0, sizeof in);
    in.type = CTL_MSG_SECRET;
    in.u.secret.kind = CTL_SECRET_CONFERENCE;
    strcpy(in.u.secret.key_id, "c-42");
    in.u.secret.secret_len = 64;
    memset(in.u.secret.secret, 7, 64);
    struct ctl_msg *out = roundtrip(&in);
    assert_memory_equal(&out->u.secret, &in.u.secret, sizeof in.u.secret);
    free(out);

    memset(&in, 0, sizeof in);
    in.type = CTL_MSG_REVOKE;
    strcpy(in.u.revoke.conference_key_id, "jti-1");
    strcpy(in.u.revoke.user, "alice@example.com");
    in.u.revoke.until = 123;
    in.u.revoke.expiring_by = 456;
    out = roundtrip(&in);
    assert_memory_equal(&out->u.revoke, &in.u.revoke, sizeof in.u.revoke);
    free(out);

    memset(&in, 0, sizeof in);
    in.type = CTL_MSG_DRAIN;
    in.u.drain_deadline_ms = 30000;
    out = roundtrip(&in);
    assert_int_equal(out->u.drain_deadline_ms, 30000);
    free(out);

    in.type = CTL_MSG_PONG;
    in.u.seq = 77;
    out = roundtrip(&in);
    assert_int_equal(out->u.seq, 77);
    free(out);

    memset(&in, 0, sizeof in);
    in.type = CTL_MSG_GOODBYE;
    strcpy(in.u.reason, "av-edge/av1 is already connected from 127.0.0.1:5000");
    out = roundtrip(&in);
    assert_string_equal(out->u.reason, in.u.reason);
    free(out);
}

/* The wire format is pinned: a Ping with seq 1 is Envelope field 7 holding field 1 = 1. */
static void ping_has_the_documented_wire_form(void **state)
{
    (void)state;
    static const uint8_t want[] = {0, 0, 0, 4, 0x3a, 0x02, 0x08, 0x01};
    struct ctl_msg m = {.type = CTL_MSG_PING, .u.seq = 1};
    uint8_t out[64];
    assert_int_equal(ctl_frame_encode(&m, out, sizeof out), sizeof want);
    assert_memory_equal(out, want, sizeof want);
    struct ctl_msg back;
    assert_int_equal(ctl_frame_decode(want, sizeof want, &back), sizeof want);
    assert_int_equal(back.type, CTL_MSG_PING);
    assert_int_equal(back.u.seq, 1);
}

static void every_truncation_needs_more(void **state)
{
    (void)state;
    struct ctl_msg *in = calloc(1, sizeof *in), *out = malloc(sizeof *out);
    in->type = CTL_MSG_REPORT;
    strcpy(in->u.report.notes[0], "a note");
    in->u.report.n_notes = 1;
    in->u.report.connections = 5;
    uint8_t frame[512];
    ssize_t n = ctl_frame_encode(in, frame, sizeof frame);
    assert_true(n > 8);
    for (ssize_t cut = 0; cut < n; cut++)
        assert_int_equal(ctl_frame_decode(frame, (size_t)cut, out), -EAGAIN);
    assert_int_equal(ctl_frame_decode(frame, (size_t)n, out), n);
    free(in);
    free(out);
}

static void back_to_back_frames_split_one_at_a_time(void **state)
{
    (void)state;
    uint8_t buf[256];
    struct ctl_msg a = {.type = CTL_MSG_PING, .u.seq = 5};
    struct ctl_msg b = {.type = CTL_MSG_DRAIN, .u.drain_deadline_ms = 9};
    ssize_t na = ctl_frame_encode(&a, buf, sizeof buf);
    ssize_t nb = ctl_frame_encode(&b, buf + na, sizeof buf - (size_t)na);
    assert_true(na > 0 && nb > 0);
    struct ctl_msg m;
    assert_int_equal(ctl_frame_decode(buf, (size_t)(na + nb), &m), na);
    assert_int_equal(m.type, CTL_MSG_PING);
    assert_int_equal(ctl_frame_decode(buf + na, (size_t)nb, &m), nb);
    assert_int_equal(m.type, CTL_MSG_DRAIN);
    assert_int_equal(m.u.drain_deadline_ms, 9);
}

static void oversized_length_is_refused_from_the_prefix_alone(void **state)
{
    (void)state;
    struct ctl_msg m;
    uint32_t n = CTL_FRAME_MAX + 1;
    uint8_t p[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    assert_int_equal(ctl_frame_decode(p, 4, &m), -EMSGSIZE);
    uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
    assert_int_equal(ctl_frame_decode(huge, 4, &m), -EMSGSIZE);
    /* Exactly the maximum is allowed: it is only incomplete. */
    n = CTL_FRAME_MAX;
    uint8_t max[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    assert_int_equal(ctl_frame_decode(max, 4, &m), -EAGAIN);
    /* An HTTP request or a TLS record sent in clear reads as a huge length. */
    assert_int_equal(ctl_frame_decode((const uint8_t *)"GET / HTTP/1.1\r\n", 16, &m), -EMSGSIZE);
}

static void garbage_body_is_badmsg(void **state)
{
    (void)state;
    struct ctl_msg m;
    static const uint8_t junk[] = {0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(ctl_frame_decode(junk, sizeof junk, &m), -EBADMSG);
    /* A frame that decodes as an empty Envelope carries no message. */
    static const uint8_t empty[] = {0, 0, 0, 0};
    assert_int_equal(ctl_frame_decode(empty, sizeof empty, &m), -EBADMSG);
    /* A field number this build does not know (Envelope field 16). */
    static const uint8_t unknown[] = {0, 0, 0, 3, 0x80, 0x01, 0x01};
    assert_int_equal(ctl_frame_decode(unknown, sizeof unknown, &m), -EBADMSG);
    /* A length that runs past the frame's end. */
    static const uint8_t cut[] = {0, 0, 0, 3, 0x0a, 0x10, 0x08};
    assert_int_equal(ctl_frame_decode(cut, sizeof cut, &m), -EBADMSG);
}

static void too_long_string_is_badmsg(void **state)
{
    (void)state;
    /* Hello (Envelope field 1) whose instance_id (field 2) is 100 bytes: over CTL_ID_MAX. */
    uint8_t f[4 + 2 + 2 + 100];
    f[0] = 0, f[1] = 0, f[2] = 0, f[3] = 104;
    f[4] = 0x0a, f[5] = 102, f[6] = 0x12, f[7] = 100;
    memset(f + 8, 'a', 100);
    struct ctl_msg *m = malloc(sizeof *m);
    assert_int_equal(ctl_frame_decode(f, sizeof f, m), -EBADMSG);
    /* The same with 63 bytes fits. */
    f[3] = 67, f[5] = 65, f[7] = 63;
    assert_int_equal(ctl_frame_decode(f, 4 + 67, m), 4 + 67);
    assert_int_equal(m->type, CTL_MSG_HELLO);
    assert_int_equal(strlen(m->u.hello.instance_id), 63);
    free(m);
}

static void too_many_secrets_is_badmsg(void **state)
{
    (void)state;
    /* Welcome (field 2) with CTL_SECRETS_MAX + 1 empty secrets (field 3, length 0). */
    uint8_t f[64];
    size_t k = CTL_SECRETS_MAX + 1, body = 2 * k;
    f[0] = 0, f[1] = 0, f[2] = 0, f[3] = (uint8_t)(2 + body);
    f[4] = 0x12, f[5] = (uint8_t)body;
    for (size_t i = 0; i < k; i++)
        f[6 + 2 * i] = 0x1a, f[7 + 2 * i] = 0;
    struct ctl_msg *m = malloc(sizeof *m);
    assert_int_equal(ctl_frame_decode(f, 6 + body, m), -EBADMSG);
    free(m);
}

static void encode_checks_space_and_limits(void **state)
{
    (void)state;
    struct ctl_msg m = {.type = CTL_MSG_PING, .u.seq = 1};
    uint8_t out[8];
    assert_int_equal(ctl_frame_encode(&m, out, 7), -ENOSPC);
    assert_int_equal(ctl_frame_encode(&m, out, 8), 8);
    struct ctl_msg bad = {.type = (enum ctl_msg_type)99};
    assert_int_equal(ctl_frame_encode(&bad, out, sizeof out), -EINVAL);
    struct ctl_msg *r = calloc(1, sizeof *r);
    r->type = CTL_MSG_REPORT;
    r->u.report.n_notes = CTL_NOTES_MAX + 1;
    uint8_t big[4096];
    assert_int_equal(ctl_frame_encode(r, big, sizeof big), -EINVAL);
    free(r);
    assert_int_equal(ctl_frame_decode(NULL, 4, &m), -EINVAL);
}

static void text_must_be_utf8_without_controls(void **state)
{
    (void)state;
    assert_true(ctl_text_ok(""));
    assert_true(ctl_text_ok("av-edge 1 \"q\" \\ <x>"));
    assert_true(ctl_text_ok("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
    assert_false(ctl_text_ok("line\nbreak"));
    assert_false(ctl_text_ok("tab\t"));
    assert_false(ctl_text_ok("del\x7f"));
    assert_false(ctl_text_ok("\xc3"));             /* cut sequence */
    assert_false(ctl_text_ok("\xc0\xaf"));         /* overlong */
    assert_false(ctl_text_ok("\xed\xa0\x80"));     /* surrogate */
    assert_false(ctl_text_ok("\xf4\x90\x80\x80")); /* above U+10FFFF */
    assert_false(ctl_text_ok("\xc2\x85"));         /* C1 control (NEL) */
    assert_false(ctl_text_ok("\xff"));
}

static void bad_strings_fail_one_message_not_the_connection(void **state)
{
    (void)state;
    uint8_t out[4096];
    struct ctl_msg *m = calloc(1, sizeof *m);
    m->type = CTL_MSG_REPORT;
    strcpy(m->u.report.notes[0], "watch:\nforged log line");
    m->u.report.n_notes = 1;
    assert_int_equal(ctl_frame_encode(m, out, sizeof out), -EINVAL);
    m->u.report.n_notes = 0; /* the bad note is not sent: fine */
    assert_true(ctl_frame_encode(m, out, sizeof out) > 0);
    memset(m->u.report.instance_id, 'x', sizeof m->u.report.instance_id); /* unterminated */
    assert_int_equal(ctl_frame_encode(m, out, sizeof out), -EINVAL);
    /* On the wire, a Hello whose instance id carries a newline does not decode. */
    static const uint8_t f[] = {0, 0, 0, 7, 0x0a, 0x05, 0x12, 0x03, 'a', '\n', 'b'};
    assert_int_equal(ctl_frame_decode(f, sizeof f, m), -EBADMSG);
    free(m);
}

/* The senders' malloc'd frame is byte for byte ctl_frame_encode's, and a failed one leaves
 * no pointer to use (scan-build's finding: a caller sent an unwritten frame pointer). */
static void alloc_frame_matches_encode_and_fails_cleanly(void **state)
{
    (void)state;
    static uint8_t want[CTL_FRAME_MAX + 4];
    struct ctl_msg *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->type = CTL_MSG_REPORT;
    strcpy(m->u.report.instance_id, "av-1");
    strcpy(m->u.report.notes[0], "watch: 2 numbers");
    m->u.report.n_notes = 1;
    m->u.report.connections = 7;
    ssize_t n = ctl_frame_encode(m, want, sizeof want);
    assert_true(n > CTL_PREFIX);
    assert_int_equal(ctl_frame_prefix_len(want), (uint32_t)(n - CTL_PREFIX));
    uint8_t *got = (uint8_t *)&n; /* poisoned: must be overwritten */
    assert_int_equal(ctl_frame_alloc(m, &got), n);
    assert_non_null(got);
    assert_memory_equal(got, want, (size_t)n);
    free(got);
    m->u.report.n_notes = CTL_NOTES_MAX + 1;
    got = (uint8_t *)&n;
    assert_int_equal(ctl_frame_alloc(m, &got), -EINVAL);
    assert_null(got);
    m->u.report.n_notes = 1;
    strcpy(m->u.report.notes[0], "bad\x01note");
    got = (uint8_t *)&n;
    assert_int_equal(ctl_frame_alloc(m, &got), -EINVAL);
    assert_null(got);
    free(m);
}

/* ---- ACME messages ---- */

static void acme_messages_round_trip(void **state)
{
    (void)state;
    struct ctl_msg *in = calloc(1, sizeof *in), *out;

    in->type = CTL_MSG_CERT_STATUS;
    struct ctl_cert_status *cs = &in->u.cert_status;
    strcpy(cs->names[0], "web.lab.test");
    strcpy(cs->names[1], "www.lab.test");
    cs->n_names = 2;
    cs->not_before = 1700000000;
    cs->not_after = 1707776000;
    strcpy(cs->serial, "01:ab:CD");
    cs->self_signed = true;
    strcpy(cs->error, "the chain does not match the pending key");
    out = roundtrip(in);
    assert_memory_equal(&out->u.cert_status, cs, sizeof *cs);
    free(out);

    memset(in, 0, sizeof *in);
    in->type = CTL_MSG_CSR_REQUEST;
    strcpy(in->u.csr_request.order_id, "order-7");
    for (int i = 0; i < CTL_DNSNAMES_MAX; i++)
        snprintf(in->u.csr_request.names[i], CTL_DNSNAME_MAX, "n%d.lab.test", i);
    in->u.csr_request.n_names = CTL_DNSNAMES_MAX;
    out = roundtrip(in);
    assert_memory_equal(&out->u.csr_request, &in->u.csr_request, sizeof in->u.csr_request);
    free(out);

    memset(in, 0, sizeof *in);
    in->type = CTL_MSG_CSR;
    strcpy(in->u.csr.order_id, "order-7");
    for (size_t i = 0; i < CTL_CSR_MAX; i++)
        in->u.csr.der[i] = (uint8_t)(i * 7);
    in->u.csr.der_len = CTL_CSR_MAX;
    out = roundtrip(in);
    assert_memory_equal(&out->u.csr, &in->u.csr, sizeof in->u.csr);
    free(out);

    memset(in, 0, sizeof *in);
    in->type = CTL_MSG_CERT_ISSUED;
    strcpy(in->u.cert_issued.order_id, "order-7");
    /* The longest chain there is room for, line ends included. */
    char *pem = in->u.cert_issued.chain_pem;
    for (size_t i = 0; i < CTL_CHAIN_MAX - 1; i++)
        pem[i] = i % 65 == 64 ? '\n' : (char)('A' + i % 26);
    pem[CTL_CHAIN_MAX - 3] = '\r';
    out = roundtrip(in);
    assert_memory_equal(&out->u.cert_issued, &in->u.cert_issued, sizeof in->u.cert_issued);
    free(out);

    memset(in, 0, sizeof *in);
    in->type = CTL_MSG_CHALLENGE;
    in->u.challenge.kind = CTL_CHALLENGE_TLS_ALPN_01;
    strcpy(in->u.challenge.name, "conf.lab.test");
    strcpy(in->u.challenge.token, "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA");
    strcpy(
        in->u.challenge.key_authorization,
        "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI");
    in->u.challenge.remove = true;
    in->u.challenge.expires = 1700003600;
    out = roundtrip(in);
    assert_memory_equal(&out->u.challenge, &in->u.challenge, sizeof in->u.challenge);
    free(out);

    memset(in, 0, sizeof *in);
    in->type = CTL_MSG_CHALLENGE_READY;
    strcpy(in->u.challenge_ready.token, "tok");
    strcpy(in->u.challenge_ready.error, "no such name here");
    out = roundtrip(in);
    assert_memory_equal(&out->u.challenge_ready, &in->u.challenge_ready,
                        sizeof in->u.challenge_ready);
    free(out);
    free(in);
}

/* Appends a protobuf varint. */
static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    do {
        p[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            p[n] |= 0x80;
        n++;
    } while (v);
    return n;
}

/* A frame holding Envelope field env_field = a message with one length-delimited field
 * inner_field, repeated `times`, each holding len bytes of fill (or of data when given). */
static size_t make_frame(uint8_t *f, unsigned env_field, unsigned inner_field, size_t times,
                         const void *data, size_t len, int fill)
{
    static uint8_t inner[CTL_FRAME_MAX];
    size_t n = 0;
    for (size_t t = 0; t < times; t++) {
        n += put_varint(inner + n, inner_field << 3 | 2);
        n += put_varint(inner + n, len);
        if (data)
            memcpy(inner + n, data, len);
        else
            memset(inner + n, fill, len);
        n += len;
    }
    size_t k = 4;
    k += put_varint(f + k, env_field << 3 | 2);
    k += put_varint(f + k, n);
    memcpy(f + k, inner, n);
    k += n;
    uint32_t body = (uint32_t)(k - 4);
    f[0] = (uint8_t)(body >> 24), f[1] = (uint8_t)(body >> 16);
    f[2] = (uint8_t)(body >> 8), f[3] = (uint8_t)body;
    return k;
}

/* Each limit of ctl.h holds on the wire: exactly at the limit decodes, one past is
 * -EBADMSG (strings keep a byte for the NUL). */
static void acme_limits_are_enforced_when_decoding(void **state)
{
    (void)state;
    static uint8_t f[CTL_FRAME_MAX];
    struct ctl_msg *m = malloc(sizeof *m);
    size_t n;
    struct {
        unsigned env, field;
        size_t max; /* longest accepted */
        enum ctl_msg_type type;
    } strs[] = {
        {10, 1, CTL_DNSNAME_MAX - 1, CTL_MSG_CERT_STATUS},   /* names[] */
        {10, 4, 99, CTL_MSG_CERT_STATUS},                    /* serial */
        {10, 6, CTL_NOTE_MAX - 1, CTL_MSG_CERT_STATUS},      /* error */
        {11, 1, CTL_ID_MAX - 1, CTL_MSG_CSR_REQUEST},        /* order_id */
        {11, 2, CTL_DNSNAME_MAX - 1, CTL_MSG_CSR_REQUEST},   /* names[] */
        {12, 1, CTL_ID_MAX - 1, CTL_MSG_CSR},                /* order_id */
        {12, 2, CTL_CSR_MAX, CTL_MSG_CSR},                   /* der (bytes: no NUL) */
        {12, 3, CTL_NOTE_MAX - 1, CTL_MSG_CSR},              /* error */
        {13, 1, CTL_ID_MAX - 1, CTL_MSG_CERT_ISSUED},        /* order_id */
        {13, 2, CTL_CHAIN_MAX - 1, CTL_MSG_CERT_ISSUED},     /* chain_pem */
        {14, 2, CTL_DNSNAME_MAX - 1, CTL_MSG_CHALLENGE},     /* name */
        {14, 3, CTL_TOKEN_MAX - 1, CTL_MSG_CHALLENGE},       /* token */
        {14, 4, CTL_KEYAUTH_MAX - 1, CTL_MSG_CHALLENGE},     /* key_authorization */
        {15, 1, CTL_TOKEN_MAX - 1, CTL_MSG_CHALLENGE_READY}, /* token */
        {15, 2, CTL_NOTE_MAX - 1, CTL_MSG_CHALLENGE_READY},  /* error */
    };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        n = make_frame(f, strs[i].env, strs[i].field, 1, NULL, strs[i].max, 'a');
        assert_int_equal(ctl_frame_decode(f, n, m), (ssize_t)n);
        assert_int_equal(m->type, strs[i].type);
        n = make_frame(f, strs[i].env, strs[i].field, 1, NULL, strs[i].max + 1, 'a');
        assert_int_equal(ctl_frame_decode(f, n, m), -EBADMSG);
    }
    /* Lists of names: CTL_DNSNAMES_MAX fit, one more does not. */
    n = make_frame(f, 10, 1, CTL_DNSNAMES_MAX, NULL, 10, 'x');
    assert_int_equal(ctl_frame_decode(f, n, m), (ssize_t)n);
    assert_int_equal(m->u.cert_status.n_names, CTL_DNSNAMES_MAX);
    n = make_frame(f, 10, 1, CTL_DNSNAMES_MAX + 1, NULL, 10, 'x');
    assert_int_equal(ctl_frame_decode(f, n, m), -EBADMSG);
    n = make_frame(f, 11, 2, CTL_DNSNAMES_MAX + 1, NULL, 10, 'x');
    assert_int_equal(ctl_frame_decode(f, n, m), -EBADMSG);
    free(m);
}

static void acme_text_is_checked_when_decoding(void **state)
{
    (void)state;
    static uint8_t f[1024];
    struct ctl_msg *m = malloc(sizeof *m);
    size_t n;
    /* A name, token or error with a control character does not decode ... */
    n = make_frame(f, 11, 2, 1, "a.test\nx", 8, 0);
    assert_int_equal(ctl_frame_decode(f, n, m), -EBADMSG);
    n = make_frame(f, 14, 3, 1, "t\x1b[1m", 5, 0);
    assert_int_equal(ctl_frame_decode(f, n, m), -EBADMSG);
    n = make_frame(f, 15, 2, 1, "\xc3", 1, 0);
    assert_int_equal(ctl_frame_decode(f, n, m), -EBADMSG);
    /* ... while a PEM chain has line ends, and only printable ASCII besides. */
    static const char pem[] = "-----BEGIN CERTIFICATE-----\r\nMIIB\n-----END CERTIFICATE-----\n";
    n = make_frame(f, 13, 2, 1, pem, sizeof pem - 1, 0);
    assert_int_equal(ctl_frame_decode(f, n, m), (ssize_t)n);
    assert_string_equal(m->u.cert_issued.chain_pem, pem);
    n = make_frame(f, 13, 2, 1, "MIIB\tx\n", 7, 0);
    assert_int_equal(ctl_frame_decode(f, n, m), -EBADMSG);
    n = make_frame(f, 13, 2, 1, "caf\xc3\xa9\n", 6, 0);
    assert_int_equal(ctl_frame_decode(f, n, m), -EBADMSG);
    /* An unknown challenge kind decodes as unknown (the edge answers it with an error). */
    static const uint8_t kind9[] = {0, 0, 0, 4, 0x72, 0x02, 0x08, 0x09};
    assert_int_equal(ctl_frame_decode(kind9, sizeof kind9, m), sizeof kind9);
    assert_int_equal(m->type, CTL_MSG_CHALLENGE);
    assert_int_equal(m->u.challenge.kind, CTL_CHALLENGE_UNKNOWN);
    /* A message field sent with the wrong wire type is garbage. */
    static const uint8_t wrong[] = {0, 0, 0, 2, 0x68, 0x01};
    assert_int_equal(ctl_frame_decode(wrong, sizeof wrong, m), -EBADMSG);
    free(m);
}

static void acme_encode_refuses_what_would_not_decode(void **state)
{
    (void)state;
    static uint8_t out[CTL_FRAME_MAX + 4];
    struct ctl_msg *m = calloc(1, sizeof *m);
    m->type = CTL_MSG_CERT_STATUS;
    m->u.cert_status.n_names = CTL_DNSNAMES_MAX + 1;
    assert_int_equal(ctl_frame_encode(m, out, sizeof out), -EINVAL);
    m->u.cert_status.n_names = 1;
    strcpy(m->u.cert_status.names[0], "bad\nname");
    assert_int_equal(ctl_frame_encode(m, out, sizeof out), -EINVAL);
    strcpy(m->u.cert_status.names[0], "ok.test");
    memset(m->u.cert_status.serial, '1', sizeof m->u.cert_status.serial); /* unterminated */
    assert_int_equal(ctl_frame_encode(m, out, sizeof out), -EINVAL);

    memset(m, 0, sizeof *m);
    m->type = CTL_MSG_CSR_REQUEST;
    m->u.csr_request.n_names = CTL_DNSNAMES_MAX + 1;
    assert_int_equal(ctl_frame_encode(m, out, sizeof out), -EINVAL);

    memset(m, 0, sizeof *m);
    m->type = CTL_MSG_CSR;
    m->u.csr.der_len = CTL_CSR_MAX + 1;
    assert_int_equal(ctl_frame_encode(m, out, sizeof out), -EINVAL);

    memset(m, 0, sizeof *m);
    m->type = CTL_MSG_CERT_ISSUED;
    memset(m->u.cert_issued.chain_pem, 'A', sizeof m->u.cert_issued.chain_pem);
    assert_int_equal(ctl_frame_encode(m, out, sizeof out), -EINVAL);
    strcpy(m->u.cert_issued.chain_pem, "A\x01");
    assert_int_equal(ctl_frame_encode(m, out, sizeof out), -EINVAL);

    memset(m, 0, sizeof *m);
    m->type = CTL_MSG_CHALLENGE;
    strcpy(m->u.challenge.key_authorization, "tok.\x7f");
    assert_int_equal(ctl_frame_encode(m, out, sizeof out), -EINVAL);

    memset(m, 0, sizeof *m);
    m->type = CTL_MSG_CHALLENGE_READY;
    strcpy(m->u.challenge_ready.error, "tab\there");
    assert_int_equal(ctl_frame_encode(m, out, sizeof out), -EINVAL);
    strcpy(m->u.challenge_ready.error, "");
    assert_true(ctl_frame_encode(m, out, sizeof out) > 0);
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(role_names_round_trip),
        cmocka_unit_test(hello_round_trips),
        cmocka_unit_test(welcome_with_secrets_round_trips),
        cmocka_unit_test(report_round_trips),
        cmocka_unit_test(small_messages_round_trip),
        cmocka_unit_test(ping_has_the_documented_wire_form),
        cmocka_unit_test(every_truncation_needs_more),
        cmocka_unit_test(back_to_back_frames_split_one_at_a_time),
        cmocka_unit_test(oversized_length_is_refused_from_the_prefix_alone),
        cmocka_unit_test(garbage_body_is_badmsg),
        cmocka_unit_test(too_long_string_is_badmsg),
        cmocka_unit_test(too_many_secrets_is_badmsg),
        cmocka_unit_test(encode_checks_space_and_limits),
        cmocka_unit_test(text_must_be_utf8_without_controls),
        cmocka_unit_test(bad_strings_fail_one_message_not_the_connection),
        cmocka_unit_test(alloc_frame_matches_encode_and_fails_cleanly),
        cmocka_unit_test(acme_messages_round_trip),
        cmocka_unit_test(acme_limits_are_enforced_when_decoding),
        cmocka_unit_test(acme_text_is_checked_when_decoding),
        cmocka_unit_test(acme_encode_refuses_what_would_not_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
