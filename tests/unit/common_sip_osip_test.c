/* osip2 parses into an arena (sip_osip.h): the tree reads as a heap parse does, spills past
 * the buffer, and a drop to a mark frees exactly what came after it. Run under ASan (make
 * SAN=1 test), a spill that leaked or a node freed twice fails here. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <osipparser2/osip_parser.h>

#include "common/sip/sip_msg.h"
#include "common/sip/sip_osip.h"

static const char invite[] =
    "INVITE sip:bob@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bKabc;rport\r\n"
    "Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKdef\r\n"
    "From: \"Alice\" <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
    "Call-ID: c1@192.0.2.1\r\nCSeq: 7 INVITE\r\nMax-Forwards: 70\r\n"
    "Contact: <sip:alice@192.0.2.1:5061;transport=tls>\r\n"
    "Content-Length: 0\r\n\r\n";

static void scan(struct sip_msg *m, const char *t)
{
    assert_true(sip_msg_scan(m, (const uint8_t *)t, strlen(t), true, 65536) > 0);
}

static void check_invite(osip_message_t *msg)
{
    assert_non_null(msg);
    assert_string_equal(msg->sip_method, "INVITE");
    assert_string_equal(msg->req_uri->host, "example.com");
    assert_int_equal(osip_list_size(&msg->vias), 2);
    osip_via_t *v = osip_list_get(&msg->vias, 1);
    assert_string_equal(v->host, "192.0.2.9");
    assert_string_equal(msg->cseq->number, "7");
    assert_string_equal(msg->call_id->number, "c1");
    assert_string_equal(msg->from->displayname, "\"Alice\"");
}

static void parse_in_arena_reads_as_heap_parse_and_drops_whole(void **st)
{
    struct sip_osip_arena a;
    assert_int_equal(sip_osip_arena_init(&a, 65536), 0);
    struct sip_msg m;
    scan(&m, invite);
    osip_message_t *msg = NULL;
    assert_int_equal(sip_osip_parse_in(&a, &m, &msg), 0);
    check_invite(msg);
    assert_true(a.used > 0);
    assert_true(dl_empty(&a.spills));
    struct sip_osip_mark start = {0, 0};
    sip_osip_arena_drop(&a, &start);
    assert_int_equal(a.used, 0);
    /* Outside the arena osip2 allocates from the heap as before. */
    osip_message_t *heap = NULL;
    assert_int_equal(osip_message_init(&heap), 0);
    assert_int_equal(sip_osip_parse(heap, &m), 0);
    check_invite(heap);
    osip_message_free(heap);
    assert_int_equal(a.used, 0);
    sip_osip_arena_free(&a);
}

/* A tree larger than the buffer spills to the heap; the drop frees the spills (ASan's leak
 * check sees any left behind). */
static void large_tree_spills_and_the_spills_go_with_it(void **st)
{
    struct sip_osip_arena a;
    assert_int_equal(sip_osip_arena_init(&a, 512), 0);
    char big[16384];
    size_t n = (size_t)snprintf(big, sizeof(big), "%.*s",
                                (int)(strstr(invite, "Content-Length") - invite), invite);
    for (int i = 0; i < 60; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, "X-Extra-%d: value number %d\r\n", i, i);
    n += (size_t)snprintf(big + n, sizeof(big) - n, "Content-Length: 0\r\n\r\n");
    struct sip_msg m;
    scan(&m, big);
    osip_message_t *msg = NULL;
    assert_int_equal(sip_osip_parse_in(&a, &m, &msg), 0);
    check_invite(msg);
    osip_message_t *heap = NULL; /* the same message parsed on the heap, to compare */
    assert_int_equal(osip_message_init(&heap), 0);
    assert_int_equal(sip_osip_parse(heap, &m), 0);
    int nh = osip_list_size(&heap->headers);
    assert_true(nh >= 60);
    assert_int_equal(osip_list_size(&msg->headers), nh);
    osip_header_t *h = osip_list_get(&msg->headers, nh - 1);
    assert_string_equal(h->hname, "x-extra-59");
    assert_string_equal(h->hvalue, "value number 59");
    osip_message_free(heap);
    assert_false(dl_empty(&a.spills));
    struct sip_osip_mark start = {0, 0};
    sip_osip_arena_drop(&a, &start);
    assert_true(dl_empty(&a.spills));
    assert_int_equal(a.used, 0);
    sip_osip_arena_free(&a);
}

/* Two trees at once: dropping the newer leaves the older readable. */
static void drop_to_a_mark_keeps_the_older_tree(void **st)
{
    struct sip_osip_arena a;
    assert_int_equal(sip_osip_arena_init(&a, 65536), 0);
    struct sip_msg m;
    scan(&m, invite);
    osip_message_t *first = NULL, *second = NULL;
    assert_int_equal(sip_osip_parse_in(&a, &m, &first), 0);
    struct sip_osip_mark mark = sip_osip_arena_mark(&a);
    assert_int_equal(sip_osip_parse_in(&a, &m, &second), 0);
    check_invite(second);
    sip_osip_arena_drop(&a, &mark);
    assert_int_equal(a.used, mark.used);
    check_invite(first);
    sip_osip_arena_free(&a);
}

/* A message osip2 refuses leaves nothing allocated. */
static void failed_parse_leaves_nothing(void **st)
{
    struct sip_osip_arena a;
    assert_int_equal(sip_osip_arena_init(&a, 65536), 0);
    const char *bad = "INVITE sip:bob@example.com SIP/2.0\r\n"
                      "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\n"
                      "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
                      "Call-ID: c\r\nCSeq: notanumber\r\nContent-Length: 0\r\n\r\n";
    struct sip_msg m;
    scan(&m, bad);
    osip_message_t *msg = (osip_message_t *)&a; /* overwritten either way */
    int rc = sip_osip_parse_in(&a, &m, &msg);
    assert_int_not_equal(rc, 0);
    assert_null(msg);
    assert_int_equal(a.used, 0);
    assert_true(dl_empty(&a.spills));
    sip_osip_arena_free(&a);
}

int main(void)
{
    sip_osip_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_in_arena_reads_as_heap_parse_and_drops_whole),
        cmocka_unit_test(large_tree_spills_and_the_spills_go_with_it),
        cmocka_unit_test(drop_to_a_mark_keeps_the_older_tree),
        cmocka_unit_test(failed_parse_leaves_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
