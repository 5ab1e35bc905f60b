/* The Director's registration store: last line per user wins, expired and removed bindings
 * are dropped, a torn last line is skipped, a rewrite keeps exactly the live set. */
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

#include "director/regstore.h"

struct seen {
    char text[2048];
    int n;
};

static void collect(const struct regstore_entry *e, void *arg)
{
    struct seen *s = arg;
    size_t l = strlen(s->text);
    snprintf(s->text + l, sizeof(s->text) - l, "%s=%s|%s|%lld;", e->user, e->contact, e->path,
             (long long)e->expires_s);
    s->n++;
}

static char *tmp_path(void)
{
    static char p[64];
    snprintf(p, sizeof(p), "/tmp/regstore-test-%d", (int)getpid());
    unlink(p);
    return p;
}

static void last_line_per_user_wins_and_expired_ones_go(void **st)
{
    char *path = tmp_path();
    struct regstore *s;
    size_t bad;
    struct seen seen = {0};
    assert_int_equal(regstore_load(path, 1000, collect, &seen, &bad), -ENOENT);
    assert_int_equal(regstore_open(path, &s), 0);
    assert_int_equal(regstore_append(s, &(struct regstore_entry){"alice", "sip:a@1", "", 2000}), 0);
    assert_int_equal(
        regstore_append(s, &(struct regstore_entry){"bob", "sip:b@1", "<sip:e;lr>", 1500}), 0);
    assert_int_equal(regstore_append(s, &(struct regstore_entry){"alice", "sip:a@2", "", 3000}), 0);
    assert_int_equal(regstore_append(s, &(struct regstore_entry){"carol", "sip:c@1", "", 900}), 0);
    assert_int_equal(regstore_append(s, &(struct regstore_entry){"dave", "sip:d@1", "", 5000}), 0);
    assert_int_equal(regstore_append(s, &(struct regstore_entry){"dave", "sip:d@1", "", 0}), 0);
    /* A value with a newline would forge a line: refused, nothing written. */
    assert_int_equal(
        regstore_append(s, &(struct regstore_entry){"eve", "sip:x\nB\t9\tmallory", "", 9000}),
        -EINVAL);
    regstore_close(s);
    assert_int_equal(regstore_load(path, 1000, collect, &seen, &bad), 2);
    assert_string_equal(seen.text, "alice=sip:a@2||3000;bob=sip:b@1|<sip:e;lr>|1500;");
    assert_int_equal(bad, 0);
    unlink(path);
}

static void a_torn_last_line_is_skipped(void **st)
{
    char *path = tmp_path();
    FILE *f = fopen(path, "w");
    fputs("B\t2000\talice\tsip:a@1\t-\nB\t2000\tbob\tsip:b", f);
    fclose(f);
    struct seen seen = {0};
    size_t bad;
    assert_int_equal(regstore_load(path, 1000, collect, &seen, &bad), 1);
    assert_string_equal(seen.text, "alice=sip:a@1||2000;");
    assert_int_equal(bad, 1);
    unlink(path);
}

static void rewrite_keeps_exactly_the_live_set(void **st)
{
    char *path = tmp_path();
    struct regstore *s;
    assert_int_equal(regstore_open(path, &s), 0);
    for (int i = 0; i < 1100; i++)
        assert_int_equal(
            regstore_append(s, &(struct regstore_entry){"alice", "sip:a@1", "", 2000 + i}), 0);
    assert_true(regstore_wants_compaction(s, 1));
    struct regstore_entry live[] = {{"alice", "sip:a@1", "", 4000}};
    assert_int_equal(regstore_rewrite(s, live, 1), 0);
    assert_false(regstore_wants_compaction(s, 1));
    assert_int_equal(regstore_append(s, &(struct regstore_entry){"bob", "sip:b@1", "", 4000}), 0);
    regstore_close(s);
    struct seen seen = {0};
    size_t bad;
    assert_int_equal(regstore_load(path, 1000, collect, &seen, &bad), 2);
    assert_string_equal(seen.text, "alice=sip:a@1||4000;bob=sip:b@1||4000;");
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(last_line_per_user_wins_and_expired_ones_go),
        cmocka_unit_test(a_torn_last_line_is_skipped),
        cmocka_unit_test(rewrite_keeps_exactly_the_live_set),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
