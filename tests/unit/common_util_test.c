/* Buffers, addresses, prefixes, metrics rendering, log lines and heap trimming. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/addr.h"
#include "common/log.h"
#include "common/memtrim.h"
#include "common/metrics.h"
#include "common/util.h"

static void buf_is_capped_and_compacts(void **st)
{
    struct buf b;
    assert_int_equal(buf_init(&b, 8), 0);
    assert_int_equal(buf_append(&b, "abcdef", 6), 0);
    assert_int_equal(buf_append(&b, "ghi", 3), -ENOSPC);
    buf_consume(&b, 4);
    assert_int_equal(buf_append(&b, "ghijkl", 6), 0); /* compacts "ef" to the front */
    assert_int_equal(buf_len(&b), 8);
    assert_memory_equal(buf_slice(&b).p, "efghijkl", 8);
    buf_consume(&b, 100);
    assert_int_equal(buf_len(&b), 0);
    buf_fini(&b);
}

static void addr_parse_and_format(void **st)
{
    struct addr a;
    char s[ADDR_STRLEN];
    assert_int_equal(addr_parse(&a, "127.0.0.11:5061", 0), 0);
    assert_string_equal(addr_format(&a, s), "127.0.0.11:5061");
    assert_true(addr_is_loopback(&a));
    assert_int_equal(addr_parse(&a, "[2001:db8::1]:443", 0), 0);
    assert_string_equal(addr_format(&a, s), "[2001:db8::1]:443");
    assert_int_equal(addr_parse(&a, "::1", 3478), 0);
    assert_int_equal(addr_port(&a), 3478);
    assert_int_equal(addr_parse(&a, "10.0.0.1", 80), 0);
    assert_string_equal(addr_format(&a, s), "10.0.0.1:80");
    assert_int_equal(addr_parse(&a, "host.example:80", 0), -EINVAL);
    assert_int_equal(addr_parse(&a, "1.2.3.4:99999", 0), -EINVAL);
    assert_int_equal(addr_parse(&a, "[::1:80", 0), -EINVAL);
}

static void cidr_matches_v4_v6_and_mapped(void **st)
{
    struct cidr c;
    struct addr a;
    assert_int_equal(cidr_parse(&c, "10.0.0.0/8"), 0);
    addr_parse(&a, "10.200.3.4", 0);
    assert_true(cidr_contains(&c, &a));
    addr_parse(&a, "11.0.0.1", 0);
    assert_false(cidr_contains(&c, &a));
    addr_parse(&a, "::ffff:10.1.1.1", 0);
    assert_true(cidr_contains(&c, &a));
    assert_int_equal(cidr_parse(&c, "fe80::/10"), 0);
    addr_parse(&a, "fe80::1", 0);
    assert_true(cidr_contains(&c, &a));
    assert_int_equal(cidr_parse(&c, "172.16.0.0/12"), 0);
    addr_parse(&a, "172.31.255.255", 0);
    assert_true(cidr_contains(&c, &a));
    addr_parse(&a, "172.32.0.0", 0);
    assert_false(cidr_contains(&c, &a));
    assert_int_equal(cidr_parse(&c, "1.2.3.4/40"), -EINVAL);
    struct cidr list[2];
    assert_int_equal(cidr_parse(&list[0], "192.0.2.0/24"), 0);
    assert_int_equal(cidr_parse(&list[1], "2001:db8::/32"), 0);
    addr_parse(&a, "2001:db8::7", 0);
    assert_true(cidr_list_contains(list, 2, &a));
    assert_false(cidr_list_contains(list, 1, &a));
    addr_parse(&a, "198.51.100.1", 0);
    assert_false(cidr_list_contains(list, 2, &a));
    assert_false(cidr_list_contains(NULL, 0, &a));
    size_t n;
    const uint8_t *b = addr_host_bytes(&a, &n);
    assert_int_equal(n, 4);
    assert_memory_equal(b, "\xc6\x33\x64\x01", 4); /* 198.51.100.1 */
    addr_parse(&a, "[2001:db8::7]:5", 0);
    b = addr_host_bytes(&a, &n);
    assert_int_equal(n, 16);
    assert_int_equal(b[0], 0x20);
    assert_int_equal(b[15], 7);
}

static void metrics_render_prometheus_text(void **st)
{
    struct metrics *m;
    assert_int_equal(metrics_create(&m, "av_edge"), 0);
    struct metric *a =
        metrics_counter(m, "auth_failures_total", "Auth failures", "reason=\"stale_nonce\"");
    struct metric *b =
        metrics_counter(m, "auth_failures_total", "Auth failures", "reason=\"bad_mac\"");
    struct metric *g = metrics_gauge(m, "allocations", "Live allocations", NULL);
    assert_ptr_equal(a, metrics_counter(m, "auth_failures_total", "x", "reason=\"stale_nonce\""));
    metric_inc(a);
    metric_add(b, 5);
    metric_set(g, 42);
    size_t len;
    char *text = metrics_render(m, &len);
    assert_string_equal(text, "# HELP av_edge_auth_failures_total Auth failures\n"
                              "# TYPE av_edge_auth_failures_total counter\n"
                              "av_edge_auth_failures_total{reason=\"stale_nonce\"} 1\n"
                              "av_edge_auth_failures_total{reason=\"bad_mac\"} 5\n"
                              "# HELP av_edge_allocations Live allocations\n"
                              "# TYPE av_edge_allocations gauge\n"
                              "av_edge_allocations 42\n");
    assert_int_equal(len, strlen(text));
    free(text);
    metrics_destroy(m);
}

static void log_lines_carry_peer_in_text_and_json(void **st)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    struct logger lg;
    log_init(&lg, "test");
    lg.fd = fds[1];
    struct addr peer;
    addr_parse(&peer, "198.18.0.5:4000", 0);
    LOGW(&lg, &peer, "refused: %s", "stale \"nonce\"");
    LOGD(&lg, NULL, "not shown at info");
    lg.format = LOG_JSON;
    LOGI(&lg, &peer, "allocated %d", 7);
    close(fds[1]);
    char out[2048] = "";
    ssize_t n = read(fds[0], out, sizeof out - 1);
    close(fds[0]);
    assert_true(n > 0);
    out[n] = '\0';
    assert_non_null(strstr(out, "warn  test: [198.18.0.5:4000] refused: stale \"nonce\"\n"));
    assert_null(strstr(out, "not shown"));
    assert_non_null(strstr(out, "\"level\":\"info\",\"component\":\"test\",\"peer\":\"198.18.0.5:"
                                "4000\",\"msg\":\"allocated 7\"}\n"));
}

/* dl_add at head->prev appends; dl_del is safe on an unlinked or already removed link. */
static void dlist_appends_and_removes_idempotently(void **st)
{
    (void)st;
    struct dlist h, a = {0}, b = {0};
    dl_init(&h);
    dl_del(&a); /* never linked */
    dl_add(h.prev, &a);
    dl_add(h.prev, &b);
    assert_ptr_equal(h.next, &a);
    assert_ptr_equal(h.prev, &b);
    dl_del(&a);
    dl_del(&a); /* twice is harmless */
    assert_ptr_equal(h.next, &b);
    assert_ptr_equal(b.prev, &h);
    dl_del(&b);
    assert_true(dl_empty(&h));
}

static void memtrim_waits_for_the_heap_to_move(void **st)
{
    struct memtrim t = {.min_free = 4 << 20, .every_ms = 60000};
    size_t rss = 20 << 20;
    assert_false(memtrim_due(&t, 1 << 20, rss, 1000));          /* too little free to bother */
    assert_true(memtrim_due(&t, 40 << 20, rss, 1000));          /* a burst freed 40 MB */
    t.last_free = 40 << 20, t.last_rss = rss, t.last_ms = 1000; /* trimmed: still free to malloc */
    assert_false(memtrim_due(&t, 41 << 20, rss, 2000));         /* not every tick after that */
    assert_true(memtrim_due(&t, 90 << 20, rss, 3000));          /* another burst */
    assert_true(memtrim_due(&t, 30 << 20, rss, 4000));          /* reused, then freed elsewhere */
    assert_true(memtrim_due(&t, 41 << 20, rss, 61000));         /* and once a minute regardless */
    /* A second burst took the trimmed pages back into use and freed them again: the free
     * total is where the last trim left it, but 32 MB more are resident. */
    assert_true(memtrim_due(&t, 40 << 20, rss + (32 << 20), 5000));
    assert_false(memtrim_due(&t, 40 << 20, rss + (1 << 20), 5000));
    assert_true(memtrim_tick(&(struct memtrim){.min_free = 0, .every_ms = 0}, 5));
    assert_true(memtrim_rss_bytes() > 0);
}

/* byteq_reserve: one allocation of just the room asked for (appends then fit without
 * moving), compacting first when the consumed front makes room; capped by max; and the
 * queue still frees its memory when it empties. */
static void byteq_reserve_allocates_once(void **state)
{
    (void)state;
    struct byteq q = {0};
    assert_int_equal(byteq_reserve(&q, 70000, 0), 0);
    assert_int_equal(q.cap, 70000);
    uint8_t *at = q.data;
    static uint8_t chunk[17500];
    for (int i = 0; i < 4; i++)
        assert_int_equal(byteq_append(&q, chunk, sizeof chunk, 0), 0);
    assert_ptr_equal(q.data, at); /* no realloc on the way */
    byteq_consume(&q, 60000);
    assert_int_equal(byteq_reserve(&q, 50000, 0), 0); /* 10,000 kept + 50,000 fit: compacted */
    assert_ptr_equal(q.data, at);
    assert_int_equal(q.rd, 0);
    assert_int_equal(byteq_len(&q), 10000);
    assert_int_equal(byteq_reserve(&q, 100000, 50000), -ENOSPC);
    assert_int_equal(byteq_reserve(&q, 100000, 0), 0);
    assert_int_equal(q.cap, 110000);
    assert_int_equal(byteq_len(&q), 10000);
    byteq_consume(&q, 10000);
    assert_null(q.data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(buf_is_capped_and_compacts),
        cmocka_unit_test(byteq_reserve_allocates_once),
        cmocka_unit_test(dlist_appends_and_removes_idempotently),
        cmocka_unit_test(addr_parse_and_format),
        cmocka_unit_test(cidr_matches_v4_v6_and_mapped),
        cmocka_unit_test(metrics_render_prometheus_text),
        cmocka_unit_test(log_lines_carry_peer_in_text_and_json),
        cmocka_unit_test(memtrim_waits_for_the_heap_to_move),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
