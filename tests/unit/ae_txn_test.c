/* INVITE transaction table: find/add/delete, capacity bound (503 upstream), expiry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "access-edge/ae_retx.h"
#include "access-edge/ae_txn.h"
#include <stdlib.h>
#include <string.h>

static void add_find_delete(void **st)
{
    struct ae_txn_table *t;
    assert_int_equal(ae_txn_table_create(&t, 100), 0);
    for (uint64_t k = 1; k <= 100; k++)
        assert_non_null(ae_txn_add(t, k * 0x9e3779b97f4a7c15ULL, 0));
    assert_null(ae_txn_add(t, 12345, 0)); /* full: the caller sheds with 503 */
    assert_int_equal(ae_txn_count(t), 100);
    struct ae_txn *x = ae_txn_find(t, 7 * 0x9e3779b97f4a7c15ULL);
    assert_non_null(x);
    ae_txn_del(t, x);
    assert_null(ae_txn_find(t, 7 * 0x9e3779b97f4a7c15ULL));
    assert_non_null(ae_txn_add(t, 12345, 0));
    assert_non_null(ae_txn_find(t, 12345));
    ae_txn_table_destroy(t);
}

static void expiry_and_linger(void **st)
{
    struct ae_txn_table *t;
    assert_int_equal(ae_txn_table_create(&t, 64), 0);
    struct ae_txn *a = ae_txn_add(t, 1, 0);
    struct ae_txn *b = ae_txn_add(t, 2, 0);
    b->final = true;
    b->t_ms = 1000;
    (void)a;
    assert_int_equal(ae_txn_expire(t, 5000, 180000, 32000), 0);
    assert_int_equal(ae_txn_expire(t, 33000, 180000, 32000), 1); /* b lingered 32 s */
    assert_non_null(ae_txn_find(t, 1));
    assert_int_equal(ae_txn_expire(t, 180000, 180000, 32000), 1); /* a hit the maximum */
    assert_int_equal(ae_txn_count(t), 0);
    /* Churn well past capacity: tombstones are compacted, lookups stay right. */
    for (uint64_t i = 0; i < 10000; i++) {
        struct ae_txn *x = ae_txn_add(t, i + 10, i);
        assert_non_null(x);
        ae_txn_del(t, x);
    }
    assert_int_equal(ae_txn_count(t), 0);
    ae_txn_table_destroy(t);
}

/* A forwarded UDP INVITE with no answer goes again at 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s
 * (Timer A doubling), then Timer B (32 s) gives up. */
static void invite_retransmission_schedule(void **st)
{
    struct ae_dest d = {.side = 1};
    struct ae_retx *r = ae_retx_new(42, &d, "INVITE", 6, false, 1000);
    assert_non_null(r);
    assert_int_equal(r->len, 6);
    assert_memory_equal(r->data, "INVITE", 6);
    assert_false(r->response);
    uint64_t sent[8];
    size_t n = 0;
    uint64_t t;
    for (t = 1000; t < 40000; t += 100) {
        enum ae_retx_step s = ae_retx_step(r, t);
        if (s == AE_RETX_GIVE_UP)
            break;
        if (s == AE_RETX_SEND && n < 8)
            sent[n++] = t - 1000;
    }
    assert_int_equal(n, 6);
    const uint64_t want[6] = {500, 1500, 3500, 7500, 15500, 31500};
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(sent[i], want[i]);
    assert_int_equal(t - 1000, 32000);
    free(r);
}

/* The caller's 100 Trying waits AE_RETX_TRYING_MS (RFC 3261 §17.2.1: none is needed when an
 * answer comes within 200 ms), is due once, and never when the caller was answered first. */
static void deferred_trying_due_once_unless_answered(void **st)
{
    struct ae_dest d = {.side = 1};
    struct ae_retx *r = ae_retx_new(42, &d, "INVITE", 6, false, 1000);
    assert_non_null(r);
    assert_false(ae_retx_trying_due(r, false, 1000));
    assert_false(ae_retx_trying_due(r, false, 1000 + AE_RETX_TRYING_MS - 1));
    assert_true(ae_retx_trying_due(r, false, 1000 + AE_RETX_TRYING_MS));
    assert_int_equal(r->trying_ms, 0);
    assert_false(ae_retx_trying_due(r, false, 1000 + 2 * AE_RETX_TRYING_MS));
    free(r);

    r = ae_retx_new(43, &d, "INVITE", 6, false, 1000);
    assert_non_null(r);
    assert_false(ae_retx_trying_due(r, true, 1000 + AE_RETX_TRYING_MS));
    assert_int_equal(r->trying_ms, 0); /* answered: nothing pending any more */
    assert_false(ae_retx_trying_due(r, false, 1000 + 2 * AE_RETX_TRYING_MS));
    free(r);

    /* The edge's own final answer has no 100 of its own. */
    r = ae_retx_new(44, &d, "SIP/2.0 503", 11, true, 1000);
    assert_non_null(r);
    assert_false(ae_retx_trying_due(r, false, 1000 + AE_RETX_TRYING_MS));
    free(r);
}

/* The edge's own final answer goes again on Timer G (0.5, 1, 2, 4, 4, ... s: capped at T2)
 * until its ACK, and Timer H (32 s) gives up. */
static void own_final_answer_timer_g_schedule(void **st)
{
    struct ae_dest d = {.side = 0};
    struct ae_retx *r = ae_retx_new(42, &d, "SIP/2.0 503", 11, true, 1000);
    assert_non_null(r);
    assert_true(r->response);
    uint64_t sent[16];
    size_t n = 0;
    uint64_t t;
    for (t = 1000; t < 40000; t += 100) {
        enum ae_retx_step s = ae_retx_step(r, t);
        if (s == AE_RETX_GIVE_UP)
            break;
        if (s == AE_RETX_SEND && n < 16)
            sent[n++] = t - 1000;
    }
    const uint64_t want[] = {500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500};
    assert_int_equal(n, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < n; i++)
        assert_int_equal(sent[i], want[i]);
    assert_int_equal(t - 1000, 32000);
    free(r);
}

/* A forwarded INVITE's entry is never taken for the edge's own answer, whatever the memory
 * it lands in held (the flag was left unset, and an INVITE answered 200 went on being sent
 * while its entry waited for an ACK that never comes to the edge). */
static void invite_entry_is_not_an_answer_on_reused_memory(void **st)
{
    size_t size = sizeof(struct ae_retx) + 6;
    for (int i = 0; i < 8; i++) {
        uint8_t *junk = malloc(size);
        assert_non_null(junk);
        memset(junk, 0xa5, size);
        free(junk);
        struct ae_dest d = {.side = 1};
        struct ae_retx *r = ae_retx_new(42, &d, "INVITE", 6, false, 1000);
        assert_non_null(r);
        assert_false(r->response);
        free(r);
    }
}

/* Over TCP or TLS the edge never sends again (the transport does), but still gives up at
 * Timer B, so the caller gets an answer. */
static void reliable_invite_only_waits_for_timer_b(void **st)
{
    struct ae_dest d = {.side = 1, .tp = 2};
    struct ae_retx *r = ae_retx_new(42, &d, "INVITE", 6, false, 1000);
    assert_non_null(r);
    uint64_t t;
    for (t = 1000; t < 40000; t += 100) {
        enum ae_retx_step s = ae_retx_step(r, t);
        assert_int_not_equal(s, AE_RETX_SEND);
        if (s == AE_RETX_GIVE_UP)
            break;
    }
    assert_int_equal(t - 1000, 32000);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(add_find_delete),
        cmocka_unit_test(expiry_and_linger),
        cmocka_unit_test(invite_retransmission_schedule),
        cmocka_unit_test(deferred_trying_due_once_unless_answered),
        cmocka_unit_test(reliable_invite_only_waits_for_timer_b),
        cmocka_unit_test(own_final_answer_timer_g_schedule),
        cmocka_unit_test(invite_entry_is_not_an_answer_on_reused_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
