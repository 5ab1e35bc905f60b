/* The other av-edges and the redirect target of a draining edge (av-edge/peers.c); the
 * revocation list shared by the workers (av-edge/turn.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "av-edge/peers.h"

static void uri_parse(void **st)
{
    (void)st;
    struct addr a;
    int tcp = -1;
    assert_int_equal(av_turn_uri_parse("turn:192.0.2.1:3478?transport=udp", &a, &tcp), 0);
    assert_int_equal(tcp, 0);
    assert_int_equal(addr_port(&a), 3478);
    assert_int_equal(av_turn_uri_parse("turn:[2001:db8::1]:443?transport=tcp", &a, &tcp), 0);
    assert_int_equal(tcp, 1);
    assert_int_equal(addr_family(&a), AF_INET6);
    assert_int_equal(av_turn_uri_parse("turn:192.0.2.1:3478", &a, &tcp), 0);
    assert_int_equal(tcp, 0);
    /* TLS, no port, an unspecified address, another transport, junk */
    assert_int_equal(av_turn_uri_parse("turns:192.0.2.1:5349?transport=tcp", &a, &tcp), -EINVAL);
    assert_int_equal(av_turn_uri_parse("turn:192.0.2.1?transport=udp", &a, &tcp), -EINVAL);
    assert_int_equal(av_turn_uri_parse("turn:0.0.0.0:3478", &a, &tcp), -EINVAL);
    assert_int_equal(av_turn_uri_parse("turn:192.0.2.1:3478?transport=sctp", &a, &tcp), -EINVAL);
    assert_int_equal(av_turn_uri_parse("turn:", &a, &tcp), -EINVAL);
    assert_int_equal(av_turn_uri_parse("", &a, &tcp), -EINVAL);
}

static struct ctl_report report(const char *inst, uint32_t load, uint64_t allocs, bool draining,
                                const char *ext_host)
{
    struct ctl_report r;
    memset(&r, 0, sizeof(r));
    r.role = CTL_ROLE_AV_EDGE;
    snprintf(r.instance_id, sizeof(r.instance_id), "%s", inst);
    r.load_permille = load;
    r.allocations = allocs;
    r.healthy = true;
    r.draining = draining;
    snprintf(r.external_addrs[0], ADDR_STRLEN, "turn:%s:3478?transport=udp", ext_host);
    snprintf(r.external_addrs[1], ADDR_STRLEN, "turn:%s:3478?transport=tcp", ext_host);
    snprintf(r.external_addrs[2], ADDR_STRLEN, "turns:%s:5349?transport=tcp", ext_host);
    r.n_external = 3;
    snprintf(r.internal_addrs[0], ADDR_STRLEN, "turn:10.0.0.%s:3478?transport=udp",
             strrchr(ext_host, '.') + 1);
    r.n_internal = 1;
    return r;
}

static void host_is(const struct addr *a, const char *want)
{
    char s[ADDR_STRLEN];
    assert_string_equal(addr_format_host(a, s), want);
}

static void least_loaded_usable_and_fresh(void **st)
{
    (void)st;
    static struct av_peers p;
    memset(&p, 0, sizeof(p));
    struct av_alternates alt;
    av_peers_best(&p, 1000, 3000, &alt);
    assert_int_equal(addr_family(&alt.a[AV_SIDE_EXTERNAL][0]), 0); /* nobody known */

    struct ctl_report r = report("av2", 300, 30, false, "192.0.2.12");
    av_peers_update(&p, &r, 1000);
    r = report("av3", 100, 10, false, "192.0.2.13");
    av_peers_update(&p, &r, 1000);
    r = report("av4", 0, 0, true, "192.0.2.14"); /* draining: never a target */
    av_peers_update(&p, &r, 1000);
    r = report("av5", 0, 0, false, "192.0.2.15");
    r.healthy = false; /* unhealthy: never a target */
    av_peers_update(&p, &r, 1000);
    r = report("conf", 0, 0, false, "192.0.2.16");
    r.role = CTL_ROLE_CONF_EDGE; /* another role: ignored */
    av_peers_update(&p, &r, 1000);
    assert_int_equal(p.n, 4);

    av_peers_best(&p, 1500, 3000, &alt);
    host_is(&alt.a[AV_SIDE_EXTERNAL][0], "192.0.2.13");
    host_is(&alt.a[AV_SIDE_EXTERNAL][1], "192.0.2.13");
    host_is(&alt.a[AV_SIDE_INTERNAL][0], "10.0.0.13");
    assert_int_equal(addr_family(&alt.a[AV_SIDE_INTERNAL][1]), 0); /* no internal TCP URI */

    /* av3 gets busier than av2 */
    r = report("av3", 500, 50, false, "192.0.2.13");
    av_peers_update(&p, &r, 2000);
    av_peers_best(&p, 2000, 3000, &alt);
    host_is(&alt.a[AV_SIDE_EXTERNAL][0], "192.0.2.12");
    /* av2 goes quiet: after max_age only av3 is left */
    av_peers_best(&p, 4500, 3000, &alt);
    host_is(&alt.a[AV_SIDE_EXTERNAL][0], "192.0.2.13");
    /* equal load: fewer allocations, then the instance id */
    r = report("av2", 500, 50, false, "192.0.2.12");
    av_peers_update(&p, &r, 4500);
    av_peers_best(&p, 4500, 3000, &alt);
    host_is(&alt.a[AV_SIDE_EXTERNAL][0], "192.0.2.12");
}

static void revocations(void **st)
{
    (void)st;
    struct av_shared s;
    assert_int_equal(av_shared_init(&s), 0);
    assert_false(av_shared_revoked(&s, "alice", 0, 100));
    assert_int_equal(av_shared_revoke(&s, "alice", 200, 0, 100), 0);
    assert_true(av_shared_revoked(&s, "alice", 0, 100));
    assert_true(av_shared_revoked(&s, "alice", 5000, 100)); /* any credential */
    assert_false(av_shared_revoked(&s, "bob", 0, 100));
    assert_false(av_shared_revoked(&s, "alice", 0, 200)); /* until has passed */
    assert_int_equal(av_shared_revoke(&s, "bob", 300, 0, 100), 0);
    /* alice reinstated: her credentials expiring by 150 were minted before the revocation */
    assert_int_equal(av_shared_revoke(&s, "alice", 1, 150, 100), 0);
    assert_false(av_shared_revoked(&s, "alice", 0, 100)); /* static credentials, new ones */
    assert_true(av_shared_revoked(&s, "alice", 150, 100));
    assert_false(av_shared_revoked(&s, "alice", 151, 100));
    assert_true(av_shared_revoked(&s, "bob", 0, 100));
    assert_int_equal(av_shared_revoke(&s, "", 300, 0, 100), -EINVAL);
    assert_string_equal(av_user_id("1700000000:carol"), "carol");
    assert_string_equal(av_user_id("dave"), "dave");
    av_shared_fini(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(uri_parse),
        cmocka_unit_test(least_loaded_usable_and_fresh),
        cmocka_unit_test(revocations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
