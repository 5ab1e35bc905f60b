/* The one certificate-name matcher (common/certname.h): RFC 6125 wildcards, RFC 4343 case,
 * domain suffixes, and the SAN-before-CN rule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h> /* after the headers it needs */

#include "common/certname.h"

static bool m(const char *pattern, const char *name, enum cert_name_mode mode)
{
    return cert_name_match(pattern, strlen(pattern), name, strlen(name), mode);
}

static void exact_ignores_ascii_case_only(void **st)
{
    (void)st;
    assert_true(m("confserver", "confserver", CERT_NAME_EXACT));
    assert_true(m("ConfServer", "confserver", CERT_NAME_EXACT)); /* RFC 4343 */
    assert_true(m("confserver", "CONFSERVER", CERT_NAME_EXACT));
    assert_true(m("Edge.Example.COM", "edge.example.com", CERT_NAME_EXACT));
    assert_false(m("confserver", "confserve", CERT_NAME_EXACT));
    assert_false(m("confserver", "confserver2", CERT_NAME_EXACT));
    assert_false(m("", "", CERT_NAME_EXACT));
    assert_false(m("*.example.com", "a.example.com", CERT_NAME_EXACT)); /* no wildcards */
    /* Only ASCII letters fold: 0xC9 ('É' in Latin-1) is not 0xE9. */
    assert_false(m("\xc9", "\xe9", CERT_NAME_EXACT));
    /* A NUL inside a certificate's name (a classic spoof) matches nothing. */
    assert_false(cert_name_match("a\0b", 3, "a\0b", 3, CERT_NAME_EXACT));
    assert_false(cert_name_match("good.example\0.evil", 18, "good.example", 12, CERT_NAME_EXACT));
    assert_false(cert_name_match(NULL, 0, "a", 1, CERT_NAME_EXACT));
}

static void wildcard_is_one_whole_leftmost_label(void **st)
{
    (void)st;
    const enum cert_name_mode w = CERT_NAME_WILDCARD_FIRST_LABEL;
    assert_true(m("*.partner.example", "sip.partner.example", w));
    assert_true(m("*.Partner.Example", "SIP.partner.example", w));
    assert_true(m("partner.example", "PARTNER.example", w)); /* no '*': exact */
    assert_false(m("*.partner.example", "partner.example", w));
    assert_false(m("*.partner.example", "a.b.partner.example", w)); /* one label only */
    assert_false(m("*.partner.example", ".partner.example", w));
    assert_false(m("*.partner.example", "evilpartner.example", w));
    assert_false(m("*.partner.example", "sip.partner.example.evil", w));
    /* Not in a public-suffix-ish position: two labels at least after the wildcard. */
    assert_false(m("*.com", "example.com", w));
    assert_false(m("*", "localhost", w));
    assert_false(m("*.", "a.", w));
    assert_true(m("*.example.com", "foo.example.com", w));
    /* No partial-label wildcards, no wildcard beyond the first label. */
    assert_false(m("f*o.example.com", "foo.example.com", w));
    assert_false(m("*o.example.com", "foo.example.com", w));
    assert_false(m("f*.example.com", "foo.example.com", w));
    assert_false(m("foo.*.example.com", "foo.bar.example.com", w));
    assert_false(m("*.*.example.com", "a.b.example.com", w));
    /* Empty labels and '*' in the name are refused. */
    assert_false(m("*.example..com", "a.example..com", w));
    assert_false(m("*.example.com", "*.example.com", w));
    assert_false(m("example.com.", "example.com.", w));
}

static void domain_suffix_is_label_aligned(void **st)
{
    (void)st;
    const enum cert_name_mode d = CERT_NAME_DOMAIN_SUFFIX;
    assert_true(m("partner.example", "partner.example", d));
    assert_true(m("partner.example", "sip.partner.example", d));
    assert_true(m("partner.example", "a.b.PARTNER.example", d));
    assert_true(m("Partner.Example", "sip.partner.example", d));
    assert_false(m("partner.example", "evilpartner.example", d));
    assert_false(m("rtner.example", "sip.partner.example", d));
    assert_false(m("partner.example", "partner.example.evil", d));
    assert_false(m("partner.example", ".partner.example", d));
    assert_false(m("partner.example", "*.partner.example", d)); /* a pattern is no host */
    assert_false(m("example", "sip.partner.example", d));       /* bare top-level label */
    assert_false(m("example", "example", d));
    assert_false(m("", "x.example", d));
}

/* The control channel's role check: the wanted role is the certificate name's leading
 * labels, whole (it was a prefix compare that stopped at '.'). */
static void leading_labels_are_whole_labels(void **st)
{
    (void)st;
    const enum cert_name_mode mode = CERT_NAME_LEADING_LABELS;
    assert_true(m("av-edge", "av-edge", mode));
    assert_true(m("AV-Edge.lab.example", "av-edge", mode));
    assert_true(m("av-edge.lab.example", "av-edge.lab", mode));
    assert_false(m("av-edge2.lab.example", "av-edge", mode));
    assert_false(m("av-edge", "av-edge.lab", mode));
    assert_false(m("av-edge..lab", "av-edge", mode));
    assert_false(m("*.lab.example", "av-edge", mode));
    assert_false(m("av-edge.lab", "", mode));
    assert_false(m("", "av-edge", mode));
}

static void san_list_before_cn(void **st)
{
    (void)st;
    const enum cert_name_mode w = CERT_NAME_WILDCARD_FIRST_LABEL;
    const char *const sans[] = {"access-edge.lab", "*.partner.example", NULL};
    assert_true(cert_names_match("ignored", sans, 2, "ACCESS-EDGE.lab", w));
    assert_true(cert_names_match("ignored", sans, 2, "sip.partner.example", w));
    /* RFC 6125 6.4.4: with a DNS SAN present the CN does not count. */
    assert_false(cert_names_match("ignored", sans, 2, "ignored", w));
    assert_true(cert_names_match("access-edge", NULL, 0, "Access-Edge", w));
    assert_true(cert_names_match("access-edge", sans + 2, 1, "access-edge", w)); /* NULL SAN */
    assert_false(cert_names_match(NULL, NULL, 0, "access-edge", w));
    assert_false(cert_names_match("access-edge", NULL, 0, "", w));
    assert_false(cert_names_match("access-edge", NULL, 0, NULL, w));
    /* Domain suffix: the certificate's names must lie inside the domain. */
    const char *const hosts[] = {"sip.partner.example"};
    assert_true(cert_names_match(NULL, hosts, 1, "partner.example", CERT_NAME_DOMAIN_SUFFIX));
    assert_false(cert_names_match(NULL, hosts, 1, "other.example", CERT_NAME_DOMAIN_SUFFIX));
    assert_true(cert_names_match("confserver", NULL, 0, "CONFSERVER", CERT_NAME_EXACT));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(exact_ignores_ascii_case_only),
        cmocka_unit_test(wildcard_is_one_whole_leftmost_label),
        cmocka_unit_test(domain_suffix_is_label_aligned),
        cmocka_unit_test(san_list_before_cn),
        cmocka_unit_test(leading_labels_are_whole_labels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
