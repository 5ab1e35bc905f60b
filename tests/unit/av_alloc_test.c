/* The allocation table's teardown (av-edge/alloc.c): av_alloc_clear removes every
 * allocation, however long the bucket chains, through the hooks, and leaves a table that
 * works. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "av-edge/alloc.h"

struct counts {
    size_t freed, resv_freed;
};

static void on_free(struct av_alloc *a, void *arg)
{
    struct counts *c = arg;
    assert_non_null(a->user);
    c->freed++;
}

static void on_resv_free(void *handle, void *arg)
{
    struct counts *c = arg;
    assert_non_null(handle);
    c->resv_freed++;
}

/* n allocations from one client address on n listeners, two users, each with a permission
 * and a channel. */
static void fill(struct av_alloc_table *t, size_t n)
{
    struct addr client, peer;
    assert_int_equal(addr_parse(&client, "192.0.2.7:40000", 0), 0);
    assert_int_equal(addr_parse(&peer, "198.51.100.9:5000", 0), 0);
    for (size_t i = 0; i < n; i++) {
        struct av_alloc *a =
            av_alloc_add(t, &client, (uint16_t)i, AV_TRANSPORT_UDP, i % 2 ? "alice" : "bob");
        assert_non_null(a);
        a->expires_ms = 60000;
        assert_non_null(av_perm_set(t, a, &peer, 60000));
        assert_non_null(av_chan_set(t, a, 0x4000, &peer, 60000));
    }
}

static void clear_removes_every_allocation(void **st)
{
    (void)st;
    struct counts c = {0};
    struct av_alloc_hooks hooks = {on_free, on_resv_free, &c};
    struct av_alloc_table *t;
    assert_int_equal(av_alloc_table_create(&t, &hooks), 0);
    static int handles[3];
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(av_reservation_add(t, 100 + i, &handles[i], 30000), 0);
    fill(t, 1000); /* more than the initial buckets: chains and growth */
    assert_int_equal(av_alloc_count(t), 1000);

    av_alloc_clear(t);
    assert_int_equal(c.freed, 1000);
    assert_int_equal(c.resv_freed, 3);
    size_t allocs, perms, chans;
    av_alloc_counts(t, &allocs, &perms, &chans);
    assert_int_equal(allocs, 0);
    assert_int_equal(perms, 0);
    assert_int_equal(chans, 0);
    assert_null(av_user_find(t, "alice"));
    assert_null(av_user_find(t, "bob"));

    /* the table still works, and destroying it frees what is left */
    fill(t, 10);
    assert_int_equal(av_alloc_count(t), 10);
    av_alloc_table_destroy(t);
    assert_int_equal(c.freed, 1010);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(clear_removes_every_allocation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
