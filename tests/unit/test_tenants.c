/*  test_tenants.c -- tier quotas and budgets with the clock in the test's
    hands: exact windows, alerts once per period, refusals and their retry
    hints, snapshots.
*/
#include "tenants.h"
#include "llmq.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T0 1767225600000ull         //  2026-01-01T00:00:00Z, in ms
#define MIN 60000ull
#define HOUR 3600000ull
#define DAY 86400000ull

static int s_alerts[2][2][3];       //  [user/org][day/month][80/90/100]
static int64_t s_last_spent;

static void
s_on_alert (void *arg, const char *kind, const char *name, const char *period, int pct,
            int64_t spent, int64_t budget, uint64_t now_ms)
{
    (void) arg; (void) name; (void) budget; (void) now_ms;
    int k = strcmp (kind, "org") == 0, p = strcmp (period, "month") == 0;
    int i = pct == 80 ? 0 : pct == 90 ? 1 : 2;
    s_alerts[k][p][i]++;
    s_last_spent = spent;
}

static llmq_tenants_t *
s_make (const llmq_user_conf_t *users, size_t nusers, const llmq_org_conf_t *orgs, size_t norgs,
        uint32_t stream_weight, uint64_t large)
{
    const llmq_tier_t *tiers;
    size_t n = llmq_tiers_builtin (&tiers);
    llmq_tenants_opts_t opts = { "free", stream_weight, large };
    llmq_tenants_t *t = llmq_tenants_new (tiers, n, users, nusers, orgs, norgs, &opts);
    ck_assert_ptr_nonnull (t);
    memset (s_alerts, 0, sizeof s_alerts);
    llmq_tenants_on_alert (t, s_on_alert, NULL);
    return t;
}

static int
s_admit (llmq_tenants_t *t, const char *user, uint64_t now, uint64_t *retry)
{
    char why[256];
    return llmq_tenants_admit (t, user, NULL, false, 10, 0, now, retry, why, sizeof why);
}

START_TEST (test_free_tier_minute)
{
    llmq_tenants_t *t = s_make (NULL, 0, NULL, 0, 1, 0);
    uint64_t retry;
    uint64_t now = T0 + 5 * MIN + 13000;        //  12:05:13 of some day
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq (s_admit (t, "ann", now + (uint64_t) i * 1000, &retry), 0);
    }
    char why[256];
    ck_assert_int_eq (llmq_tenants_admit (t, "ann", NULL, false, 10, 0, now + 46999, &retry, why, sizeof why),
                      LLMQ_ERR_QUOTA);
    ck_assert_uint_eq (retry, 1);               //  the minute ends in 1 ms
    ck_assert_str_eq (why, "user ann (tier free): 10 requests a minute used; retry in 1 s");
    /* The first of the next minute is accepted. */
    ck_assert_int_eq (s_admit (t, "ann", now + 47000, &retry), 0);
    /* Another user has its own count; no user, no quota. */
    ck_assert_int_eq (s_admit (t, "bob", now + 46999, &retry), 0);
    for (int i = 0; i < 50; i++) {
        ck_assert_int_eq (s_admit (t, NULL, now, &retry), 0);
    }
    llmq_quota_view_t v;
    llmq_tenants_view (t, "ann", now + 47000, &v);
    ck_assert_str_eq (v.tier, "free");
    ck_assert_uint_eq (v.minute, 1);
    ck_assert_uint_eq (v.hour, 11);
    ck_assert_uint_eq (v.quota_refused, 1);
    uint64_t q, b, a;
    llmq_tenants_totals (t, &q, &b, &a);
    ck_assert_uint_eq (q, 1);
    llmq_tenants_destroy (&t);
}
END_TEST

START_TEST (test_hour_day_and_tokens)
{
    llmq_tenants_t *t = s_make (NULL, 0, NULL, 0, 1, 0);
    uint64_t retry;
    /* 100 an hour: ten minutes of ten. */
    for (uint64_t m = 0; m < 10; m++) {
        for (int i = 0; i < 10; i++) {
            ck_assert_int_eq (s_admit (t, "cy", T0 + m * MIN, &retry), 0);
        }
    }
    ck_assert_int_eq (s_admit (t, "cy", T0 + 10 * MIN, &retry), LLMQ_ERR_QUOTA);
    ck_assert_uint_eq (retry, 50 * MIN);
    ck_assert_int_eq (s_admit (t, "cy", T0 + HOUR, &retry), 0);
    /* Tokens a day: 50,000 on free. */
    char why[256];
    ck_assert_int_eq (llmq_tenants_admit (t, "di", NULL, false, 30000, 0, T0, &retry, why, sizeof why), 0);
    ck_assert_int_eq (llmq_tenants_admit (t, "di", NULL, false, 30000, 0, T0, &retry, why, sizeof why),
                      LLMQ_ERR_QUOTA);
    ck_assert_ptr_nonnull (strstr (why, "30000 of 50000 tokens a day used"));
    ck_assert_uint_eq (retry, DAY);
    /* The job used less than its estimate: room again. */
    llmq_tenants_settle (t, "di", NULL, 30000, 1000, 0, T0);
    ck_assert_int_eq (llmq_tenants_admit (t, "di", NULL, false, 30000, 0, T0, &retry, why, sizeof why), 0);
    llmq_tenants_destroy (&t);
}
END_TEST

START_TEST (test_weights_and_tiers)
{
    llmq_user_conf_t users[] = { { "pro-user", "pro", 0, 0 } };
    llmq_tenants_t *t = s_make (users, 1, NULL, 0, 3, 10000);
    uint64_t retry;
    char why[256];
    /* A streamed job counts 3, one of 25,000 tokens 1 + 2. */
    ck_assert_int_eq (llmq_tenants_admit (t, "eve", NULL, true, 10, 0, T0, &retry, why, sizeof why), 0);
    ck_assert_int_eq (llmq_tenants_admit (t, "eve", NULL, false, 25000, 0, T0, &retry, why, sizeof why), 0);
    llmq_quota_view_t v;
    llmq_tenants_view (t, "eve", T0, &v);
    ck_assert_uint_eq (v.minute, 6);
    ck_assert_int_eq (llmq_tenants_admit (t, "eve", NULL, true, 10, 0, T0, &retry, why, sizeof why), 0);
    ck_assert_int_eq (llmq_tenants_admit (t, "eve", NULL, true, 10, 0, T0, &retry, why, sizeof why),
                      LLMQ_ERR_QUOTA);
    /* A configured pro user: 100 a minute. */
    for (int i = 0; i < 33; i++) {
        ck_assert_int_eq (llmq_tenants_admit (t, "pro-user", NULL, true, 10, 0, T0, &retry, why, sizeof why), 0);
    }
    ck_assert_int_eq (llmq_tenants_admit (t, "pro-user", NULL, true, 10, 0, T0, &retry, why, sizeof why),
                      LLMQ_ERR_QUOTA);
    llmq_tenants_view (t, "pro-user", T0, &v);
    ck_assert_str_eq (v.tier, "pro");
    ck_assert_uint_eq (v.rpm, 100);
    /* Reset by an admin. */
    llmq_tenants_reset (t, "pro-user");
    ck_assert_int_eq (llmq_tenants_admit (t, "pro-user", NULL, true, 10, 0, T0, &retry, why, sizeof why), 0);
    /* Unadmit gives the count back. */
    llmq_tenants_unadmit (t, "pro-user", true, 10, T0);
    llmq_tenants_view (t, "pro-user", T0, &v);
    ck_assert_uint_eq (v.minute, 0);
    llmq_tenants_destroy (&t);
}
END_TEST

START_TEST (test_budget_alerts_once)
{
    llmq_user_conf_t users[] = { { "fay", "enterprise", 1000000, 0 } };        //  $1 a day
    llmq_org_conf_t orgs[] = { { "acme", 0, 2000000 } };                      //  $2 a month
    llmq_tenants_t *t = s_make (users, 1, orgs, 1, 1, 0);
    uint64_t retry;
    char why[300];
    uint64_t now = T0 + 10 * DAY + 3 * HOUR;    //  2026-01-11 03:00
    int64_t costs[] = { 500000, 300000, 50000, 100000, 100000 };    //  50 80 85 95 105 %
    int want80[] = { 0, 1, 1, 1, 1 }, want90[] = { 0, 0, 0, 1, 1 }, want100[] = { 0, 0, 0, 0, 1 };
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq (llmq_tenants_admit (t, "fay", "acme", false, 10, 0, now, &retry, why, sizeof why), 0);
        llmq_tenants_settle (t, "fay", "acme", 10, 10, costs[i], now);
        ck_assert_int_eq (s_alerts[0][0][0], want80[i]);
        ck_assert_int_eq (s_alerts[0][0][1], want90[i]);
        ck_assert_int_eq (s_alerts[0][0][2], want100[i]);
    }
    ck_assert_int_eq (s_last_spent, 1050000);
    /* The org: 1.05 of 2 dollars a month: no alert yet. */
    ck_assert_int_eq (s_alerts[1][1][0], 0);
    /* Spent: refused, until the next day (UTC). */
    ck_assert_int_eq (llmq_tenants_admit (t, "fay", "acme", false, 10, 1, now, &retry, why, sizeof why),
                      LLMQ_ERR_BUDGET);
    ck_assert_uint_eq (retry, 21 * HOUR);
    ck_assert_msg (strstr (why, "user fay: daily budget spent ($1.050000 of $1.000000"), "%s", why);
    /* More cost books, but no alert again this day. */
    llmq_tenants_settle (t, "fay", "acme", 10, 10, 10, now);
    ck_assert_int_eq (s_alerts[0][0][2], 1);
    /* Next day: accepted, and the alerts may fire again. */
    ck_assert_int_eq (llmq_tenants_admit (t, "fay", "acme", false, 10, 0, now + 21 * HOUR, &retry, why,
                                          sizeof why), 0);
    llmq_tenants_settle (t, "fay", "acme", 10, 10, 800000, now + 21 * HOUR);
    ck_assert_int_eq (s_alerts[0][0][0], 2);
    /* The org's month: 1,850,010 of 2,000,000: 80 and 90 %, once each. */
    ck_assert_int_eq (s_alerts[1][1][0], 1);
    ck_assert_int_eq (s_alerts[1][1][1], 1);
    ck_assert_int_eq (s_alerts[1][1][2], 0);
    /* The estimate counts at submit: $0.20 more would pass the org's $2. */
    ck_assert_int_eq (llmq_tenants_admit (t, "fay", "acme", false, 10, 150000, now + 21 * HOUR, &retry, why,
                                          sizeof why), LLMQ_ERR_BUDGET);
    ck_assert_msg (strstr (why, "org acme: monthly budget spent"), "%s", why);
    ck_assert_uint_eq (retry, (T0 + 31 * DAY) - (now + 21 * HOUR));        //  to 2026-02-01
    uint64_t q, b, a;
    llmq_tenants_totals (t, &q, &b, &a);
    ck_assert_uint_eq (b, 2);
    ck_assert_uint_eq (a, 6);
    llmq_tenants_destroy (&t);
}
END_TEST

typedef struct {
    char keys[8][64];
    char json[8][512];
    int n;
} s_saved_t;

static void
s_save (void *arg, const char *key, const char *json)
{
    s_saved_t *s = arg;
    ck_assert_int_lt (s->n, 8);
    snprintf (s->keys[s->n], sizeof s->keys[0], "%s", key);
    snprintf (s->json[s->n], sizeof s->json[0], "%s", json);
    s->n++;
}

START_TEST (test_snapshot)
{
    llmq_user_conf_t users[] = { { "gus", NULL, 1000, 0 } };
    llmq_tenants_t *t = s_make (users, 1, NULL, 0, 1, 0);
    uint64_t retry;
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq (s_admit (t, "gus", T0, &retry), 0);
    }
    llmq_tenants_settle (t, "gus", "org1", 10, 10, 900, T0);
    s_saved_t saved = { .n = 0 };
    llmq_tenants_save (t, s_save, &saved);
    ck_assert_int_eq (saved.n, 2);
    s_saved_t again = { .n = 0 };
    llmq_tenants_save (t, s_save, &again);
    ck_assert_int_eq (again.n, 0);              //  nothing changed since
    llmq_tenants_destroy (&t);

    t = s_make (users, 1, NULL, 0, 1, 0);
    for (int i = 0; i < saved.n; i++) {
        ck_assert_int_eq (llmq_tenants_load (t, saved.keys[i], saved.json[i], strlen (saved.json[i])), 0);
    }
    ck_assert_int_eq (s_admit (t, "gus", T0 + 1000, &retry), LLMQ_ERR_QUOTA);
    llmq_quota_view_t v;
    llmq_tenants_view (t, "gus", T0, &v);
    ck_assert_int_eq (v.spent_day, 900);
    ck_assert_int_eq (v.budget_daily, 1000);    //  from the config, not the snapshot
    llmq_tenants_org_view (t, "org1", T0, &v);
    ck_assert_int_eq (v.spent_month, 900);
    ck_assert_int_eq (llmq_tenants_load (t, "user/x", "not json", 8), -1);
    ck_assert_int_eq (llmq_tenants_load (t, "team/x", "{}", 2), -1);
    llmq_tenants_destroy (&t);
}
END_TEST

int
main (void)
{
    Suite *s = suite_create ("tenants");
    TCase *tc = tcase_create ("tenants");
    tcase_add_test (tc, test_free_tier_minute);
    tcase_add_test (tc, test_hour_day_and_tokens);
    tcase_add_test (tc, test_weights_and_tiers);
    tcase_add_test (tc, test_budget_alerts_once);
    tcase_add_test (tc, test_snapshot);
    suite_add_tcase (s, tc);
    SRunner *sr = srunner_create (s);
    srunner_run_all (sr, CK_NORMAL);
    int failed = srunner_ntests_failed (sr);
    srunner_free (sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
