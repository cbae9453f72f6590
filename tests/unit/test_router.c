/*  test_router.c -- the broker's dispatch decisions, with the clock in the
    test's hands: breakers, rate windows, pauses, balancing strategies,
    fallback, adaptive timeouts, retry budget and snapshots.
*/
#include "router.h"
#include "codec.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T0 1767225600000ull         //  2026-01-01T00:00:00Z, in ms

static llmq_dep_policy_t s_deps[8];
static llmq_group_policy_t s_groups[4];
static size_t s_members[4][8];
static int s_events[3][3];          //  [from][to] breaker transitions seen

static void
s_on_event (void *arg, size_t dep, int from, int to, const char *reason, uint64_t now_ms)
{
    (void) arg; (void) dep; (void) reason; (void) now_ms;
    s_events[from][to]++;
}

/*  n deployments d0..d(n-1) in one group "g" with `strategy`. */
static void
s_router (size_t n, int strategy)
{
    static char names[8][24];
    memset (s_events, 0, sizeof s_events);
    for (size_t i = 0; i < n; i++) {
        llmq_dep_policy_defaults (&s_deps[i]);
        snprintf (names[i], sizeof names[i], "d%zu", i);
        s_deps[i].name = names[i];
        s_members[0][i] = i;
    }
    s_groups[0] = (llmq_group_policy_t) { "g", strategy, s_members[0], n, -1 };
}

static llmq_router_t *
s_make (size_t n, size_t ngroups)
{
    llmq_router_t *r = llmq_router_new (s_deps, n, s_groups, ngroups);
    ck_assert_ptr_nonnull (r);
    llmq_router_on_event (r, s_on_event, NULL);
    return r;
}

/*  Pick in group 0 and grant; returns the deployment, or -1. */
static int
s_take (llmq_router_t *r, uint64_t now, uint64_t tokens, uint64_t *grant)
{
    llmq_pick_t p;
    uint64_t until;
    if (llmq_router_pick (r, 0, tokens, SIZE_MAX, now, &p, &until, NULL, 0) != 0) {
        return -1;
    }
    *grant = llmq_router_grant (r, &p, tokens, false, now);
    return (int) p.dep;
}

static void
s_end (llmq_router_t *r, uint64_t grant, int ec, uint64_t now)
{
    llmq_outcome_t o = { .error_class = ec, .latency_ms = 100, .remaining_requests = -1,
                         .remaining_tokens = -1 };
    llmq_router_outcome (r, grant, &o, now);
}

START_TEST (test_breaker_cycle)
{
    s_router (2, LLMQ_STRATEGY_ORDER);
    s_deps[1].order = 1;
    s_deps[0].breaker_open_ms = 10000;
    s_deps[0].breaker_probes = 2;
    s_deps[0].breaker_successes = 3;
    llmq_router_t *r = s_make (2, 1);
    uint64_t g, now = T0;
    /* Client errors never count against a deployment. */
    for (int i = 0; i < 20; i++) {
        ck_assert_int_eq (s_take (r, now, 10, &g), 0);
        s_end (r, g, LLMQ_EC_INVALID_REQUEST, now);
    }
    /* Exactly five server errors open it; until then it is first. */
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq (s_take (r, now, 10, &g), 0);
        s_end (r, g, LLMQ_EC_SERVER, ++now);
    }
    ck_assert_int_eq (s_events[LLMQ_BREAKER_CLOSED][LLMQ_BREAKER_OPEN], 1);
    llmq_dep_view_t v;
    llmq_router_view (r, 0, now, &v);
    ck_assert_int_eq (v.breaker, LLMQ_BREAKER_OPEN);
    ck_assert_uint_eq (v.open_until_ms, now + 10000);
    /* Open: everything fails over to d1. */
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq (s_take (r, now + 9999, 10, &g), 1);
        s_end (r, g, 0, now + 9999);
    }
    /* Half-open: exactly two probes at once, then d1 again. */
    now += 10000;
    uint64_t p1, p2;
    ck_assert_int_eq (s_take (r, now, 10, &p1), 0);
    ck_assert_int_eq (s_take (r, now, 10, &p2), 0);
    ck_assert_int_eq (s_take (r, now, 10, &g), 1);
    s_end (r, g, 0, now);
    /* A failed probe opens it again for a full open time. */
    s_end (r, p1, LLMQ_EC_TIMEOUT, now);
    llmq_router_view (r, 0, now, &v);
    ck_assert_int_eq (v.breaker, LLMQ_BREAKER_OPEN);
    ck_assert_uint_eq (v.probes, 2);
    s_end (r, p2, 0, now);          //  late: changes nothing
    llmq_router_view (r, 0, now, &v);
    ck_assert_int_eq (v.breaker, LLMQ_BREAKER_OPEN);
    /* Healed: three successful probes close it. */
    now += 10000;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq (s_take (r, now, 10, &g), 0);
        llmq_router_view (r, 0, now, &v);
        ck_assert_int_eq (v.breaker, LLMQ_BREAKER_HALF_OPEN);
        s_end (r, g, 0, now);
    }
    llmq_router_view (r, 0, now, &v);
    ck_assert_int_eq (v.breaker, LLMQ_BREAKER_CLOSED);
    ck_assert_int_eq (s_events[LLMQ_BREAKER_HALF_OPEN][LLMQ_BREAKER_CLOSED], 1);
    ck_assert_int_eq (s_events[LLMQ_BREAKER_HALF_OPEN][LLMQ_BREAKER_OPEN], 1);
    /* Closed again with a clean window: four failures do not open it. */
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq (s_take (r, now, 10, &g), 0);
        s_end (r, g, LLMQ_EC_CONNECTION, now);
    }
    ck_assert_int_eq (s_take (r, now, 10, &g), 0);
    s_end (r, g, 0, now);
    llmq_router_destroy (&r);
}
END_TEST

START_TEST (test_breaker_window_and_percentage)
{
    s_router (1, LLMQ_STRATEGY_ORDER);
    s_deps[0].breaker_window_ms = 10000;
    llmq_router_t *r = s_make (1, 1);
    uint64_t g, now = T0;
    /* Four failures, then the window moves on: they are forgotten. */
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq (s_take (r, now, 1, &g), 0);
        s_end (r, g, LLMQ_EC_SERVER, now);
    }
    now += 11000;
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq (s_take (r, now, 1, &g), 0);
        s_end (r, g, LLMQ_EC_SERVER, now);
    }
    llmq_dep_view_t v;
    llmq_router_view (r, 0, now, &v);
    ck_assert_int_eq (v.breaker, LLMQ_BREAKER_CLOSED);
    ck_assert_uint_eq (v.window_failures, 4);
    llmq_router_destroy (&r);

    /* Percentage: 50 % once 10 calls were seen. */
    s_router (1, LLMQ_STRATEGY_ORDER);
    s_deps[0].breaker_failure_pct = 50;
    s_deps[0].breaker_min_calls = 10;
    r = s_make (1, 1);
    for (int i = 0; i < 9; i++) {
        ck_assert_int_eq (s_take (r, now, 1, &g), 0);
        s_end (r, g, i % 2 ? 0 : LLMQ_EC_SERVER, now);      //  5 of 9 failed
    }
    llmq_router_view (r, 0, now, &v);
    ck_assert_int_eq (v.breaker, LLMQ_BREAKER_CLOSED);
    ck_assert_int_eq (s_take (r, now, 1, &g), 0);
    s_end (r, g, LLMQ_EC_SERVER, now);                      //  6 of 10
    llmq_router_view (r, 0, now, &v);
    ck_assert_int_eq (v.breaker, LLMQ_BREAKER_OPEN);
    llmq_router_destroy (&r);
}
END_TEST

/*  Requests and tokens never exceed the limit in ANY sliding window. */
START_TEST (test_rate_window_slides)
{
    s_router (1, LLMQ_STRATEGY_ORDER);
    s_deps[0].rpm = 7;
    s_deps[0].tpm = 500;
    s_deps[0].rate_window_ms = 1000;
    llmq_router_t *r = s_make (1, 1);
    uint64_t times[4000], tokens[4000];
    size_t n = 0;
    uint64_t now = T0;
    unsigned seed = 12345;
    for (int step = 0; step < 20000 && n < 4000; step++) {
        now += (uint64_t) (rand_r (&seed) % 40);
        uint64_t want = 10 + (uint64_t) (rand_r (&seed) % 90);
        llmq_pick_t p;
        uint64_t until;
        if (llmq_router_pick (r, 0, want, SIZE_MAX, now, &p, &until, NULL, 0) == 0) {
            uint64_t g = llmq_router_grant (r, &p, want, false, now);
            times[n] = now;
            tokens[n] = want;
            n++;
            /* usage below the estimate, reported at once */
            llmq_outcome_t o = { .tokens = want / 2, .remaining_requests = -1, .remaining_tokens = -1 };
            llmq_router_outcome (r, g, &o, now);
            tokens[n - 1] = want / 2;
        }
        else {
            ck_assert_uint_gt (until, now);
        }
    }
    ck_assert_uint_gt (n, 100);
    for (size_t i = 0; i < n; i++) {
        unsigned count = 0;
        uint64_t sum = 0;
        for (size_t j = i; j < n && times[j] < times[i] + 1000; j++) {
            count++;
            sum += tokens[j];
        }
        ck_assert_uint_le (count, 7);
        ck_assert_uint_le (sum, 500);
    }
    llmq_router_destroy (&r);
}
END_TEST

START_TEST (test_rate_limit_until_and_margin)
{
    s_router (1, LLMQ_STRATEGY_ORDER);
    s_deps[0].rpm = 2;
    s_deps[0].rate_window_ms = 1000;
    s_deps[0].rate_margin_ms = 50;
    llmq_router_t *r = s_make (1, 1);
    uint64_t g;
    ck_assert_int_eq (s_take (r, T0, 1, &g), 0);
    ck_assert_int_eq (s_take (r, T0 + 100, 1, &g), 0);
    llmq_pick_t p;
    uint64_t until;
    char why[256];
    ck_assert_int_eq (llmq_router_pick (r, 0, 1, SIZE_MAX, T0 + 200, &p, &until, why, sizeof why), -1);
    ck_assert_uint_eq (until, T0 + 1050);
    ck_assert_ptr_nonnull (strstr (why, "d0 at its rate limit until"));
    ck_assert_int_eq (llmq_router_pick (r, 0, 1, SIZE_MAX, T0 + 1049, &p, &until, NULL, 0), -1);
    ck_assert_int_eq (llmq_router_pick (r, 0, 1, SIZE_MAX, T0 + 1050, &p, &until, NULL, 0), 0);
    llmq_router_destroy (&r);
}
END_TEST

START_TEST (test_pause_and_quota_headers)
{
    s_router (2, LLMQ_STRATEGY_ORDER);
    s_deps[1].order = 1;
    llmq_router_t *r = s_make (2, 1);
    uint64_t g;
    ck_assert_int_eq (s_take (r, T0, 1, &g), 0);
    llmq_outcome_t o = { .error_class = LLMQ_EC_RATE_LIMITED, .retry_after_ms = 2000,
                         .remaining_requests = -1, .remaining_tokens = -1 };
    llmq_router_outcome (r, g, &o, T0);
    /* Paused 2 s, and a 429 is no failure for the breaker. */
    ck_assert_int_eq (s_take (r, T0 + 1999, 1, &g), 1);
    s_end (r, g, 0, T0 + 1999);
    ck_assert_int_eq (s_take (r, T0 + 2000, 1, &g), 0);
    /* A success saying the quota is spent pauses it until the reset. */
    llmq_outcome_t spent = { .remaining_requests = 0, .remaining_tokens = 900, .reset_ms = 3000 };
    llmq_router_outcome (r, g, &spent, T0 + 2000);
    ck_assert_int_eq (s_take (r, T0 + 4999, 1, &g), 1);
    ck_assert_int_eq (s_take (r, T0 + 5000, 1, &g), 0);
    llmq_dep_view_t v;
    llmq_router_view (r, 0, T0 + 5000, &v);
    ck_assert_int_eq (v.breaker, LLMQ_BREAKER_CLOSED);
    llmq_router_destroy (&r);
}
END_TEST

START_TEST (test_max_concurrent)
{
    s_router (1, LLMQ_STRATEGY_ORDER);
    s_deps[0].max_concurrent = 3;
    llmq_router_t *r = s_make (1, 1);
    uint64_t g[4];
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq (s_take (r, T0, 1, &g[i]), 0);
    }
    ck_assert_int_eq (s_take (r, T0, 1, &g[3]), -1);
    s_end (r, g[1], LLMQ_EC_CANCELLED, T0);
    ck_assert_int_eq (s_take (r, T0, 1, &g[3]), 0);
    llmq_router_destroy (&r);
}
END_TEST

START_TEST (test_strategies)
{
    uint64_t g;
    int count[4] = { 0 };
    /* Round robin: in turn. */
    s_router (3, LLMQ_STRATEGY_ROUND_ROBIN);
    llmq_router_t *r = s_make (3, 1);
    for (int i = 0; i < 9; i++) {
        int d = s_take (r, T0, 1, &g);
        ck_assert_int_eq (d, i % 3);
        s_end (r, g, 0, T0);
    }
    llmq_router_destroy (&r);
    /* Weighted 3:1, smoothly. */
    s_router (2, LLMQ_STRATEGY_WEIGHTED);
    s_deps[0].weight = 3;
    r = s_make (2, 1);
    for (int i = 0; i < 400; i++) {
        count[s_take (r, T0, 1, &g)]++;
        s_end (r, g, 0, T0);
    }
    ck_assert_int_eq (count[0], 300);
    ck_assert_int_eq (count[1], 100);
    llmq_router_destroy (&r);
    /* Least in flight. */
    s_router (3, LLMQ_STRATEGY_LEAST_IN_FLIGHT);
    r = s_make (3, 1);
    uint64_t held[6];
    memset (count, 0, sizeof count);
    for (int i = 0; i < 6; i++) {
        count[s_take (r, T0, 1, &held[i])]++;
    }
    ck_assert (count[0] == 2 && count[1] == 2 && count[2] == 2);
    llmq_router_destroy (&r);
    /* Lowest latency: each tried once, then the fastest. */
    s_router (3, LLMQ_STRATEGY_LOWEST_LATENCY);
    r = s_make (3, 1);
    uint64_t lat[3] = { 300, 100, 200 };
    for (int i = 0; i < 3; i++) {
        int d = s_take (r, T0, 1, &g);
        llmq_outcome_t o = { .latency_ms = lat[d], .remaining_requests = -1, .remaining_tokens = -1 };
        llmq_router_outcome (r, g, &o, T0);
    }
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq (s_take (r, T0, 1, &g), 1);
        llmq_outcome_t o = { .latency_ms = 100, .remaining_requests = -1, .remaining_tokens = -1 };
        llmq_router_outcome (r, g, &o, T0);
    }
    llmq_router_destroy (&r);
    /* Cheapest; and a retry avoids the deployment that failed. */
    s_router (3, LLMQ_STRATEGY_CHEAPEST);
    s_deps[0].price = 5;
    s_deps[1].price = 0.5;
    s_deps[2].price = 1;
    r = s_make (3, 1);
    ck_assert_int_eq (s_take (r, T0, 1, &g), 1);
    llmq_pick_t p;
    uint64_t until;
    ck_assert_int_eq (llmq_router_pick (r, 0, 1, 1, T0, &p, &until, NULL, 0), 0);
    ck_assert_uint_eq (p.dep, 2);
    llmq_router_destroy (&r);
    ck_assert_int_eq (llmq_strategy_parse ("weighted"), LLMQ_STRATEGY_WEIGHTED);
    ck_assert_int_eq (llmq_strategy_parse ("fastest"), -1);
    ck_assert_str_eq (llmq_strategy_name (LLMQ_STRATEGY_CHEAPEST), "cheapest");
}
END_TEST

START_TEST (test_fallback_and_why)
{
    s_router (2, LLMQ_STRATEGY_ORDER);
    s_members[0][0] = 0;
    s_members[1][0] = 1;
    s_groups[0] = (llmq_group_policy_t) { "big", LLMQ_STRATEGY_ORDER, s_members[0], 1, 1 };
    s_groups[1] = (llmq_group_policy_t) { "small", LLMQ_STRATEGY_ORDER, s_members[1], 1, -1 };
    llmq_router_t *r = s_make (2, 2);
    llmq_pick_t p;
    uint64_t until, g;
    ck_assert_int_eq (llmq_router_pick (r, 0, 1, SIZE_MAX, T0, &p, &until, NULL, 0), 0);
    ck_assert (!p.degraded);
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq (llmq_router_pick (r, 0, 1, SIZE_MAX, T0, &p, &until, NULL, 0), 0);
        g = llmq_router_grant (r, &p, 1, false, T0);
        s_end (r, g, LLMQ_EC_SERVER, T0);
    }
    ck_assert_int_eq (llmq_router_pick (r, 0, 1, SIZE_MAX, T0, &p, &until, NULL, 0), 0);
    ck_assert (p.degraded);
    ck_assert_uint_eq (p.dep, 1);
    ck_assert_uint_eq (p.group, 1);
    /* Without the fallback: nothing, with the reason and when. */
    char why[256];
    ck_assert_int_eq (llmq_router_pick (r, 1, 1, SIZE_MAX, T0, &p, &until, why, sizeof why), 0);
    llmq_router_destroy (&r);
    s_groups[0].fallback = -1;
    r = s_make (2, 2);
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq (llmq_router_pick (r, 0, 1, SIZE_MAX, T0, &p, &until, NULL, 0), 0);
        g = llmq_router_grant (r, &p, 1, false, T0);
        s_end (r, g, LLMQ_EC_SERVER, T0);
    }
    ck_assert_int_eq (llmq_router_pick (r, 0, 1, SIZE_MAX, T0, &p, &until, why, sizeof why), -1);
    ck_assert_uint_eq (until, T0 + 60000);
    ck_assert_msg (strncmp (why, "all deployments of group big open until ", 40) == 0, "%s", why);
    llmq_router_destroy (&r);
}
END_TEST

START_TEST (test_adaptive_timeout)
{
    s_router (1, LLMQ_STRATEGY_ORDER);
    s_deps[0].timeout_ms = 30000;
    s_deps[0].timeout_min_ms = 500;
    s_deps[0].timeout_max_ms = 20000;
    llmq_router_t *r = s_make (1, 1);
    uint64_t g;
    for (int i = 1; i <= 19; i++) {
        s_take (r, T0, 1, &g);
        llmq_outcome_t o = { .latency_ms = 1000, .remaining_requests = -1, .remaining_tokens = -1 };
        llmq_router_outcome (r, g, &o, T0);
        ck_assert_uint_eq (llmq_router_timeout_ms (r, 0), 30000);
    }
    /* 20 samples: 1..20 x 100 ms -> p95 = 1900 ms -> 2850 ms. */
    llmq_router_destroy (&r);
    r = s_make (1, 1);
    for (int i = 1; i <= 20; i++) {
        s_take (r, T0, 1, &g);
        llmq_outcome_t o = { .latency_ms = (uint64_t) i * 100, .remaining_requests = -1,
                             .remaining_tokens = -1 };
        llmq_router_outcome (r, g, &o, T0);
    }
    ck_assert_uint_eq (llmq_router_timeout_ms (r, 0), 2850);
    /* Clamped. */
    for (int i = 0; i < 256; i++) {
        s_take (r, T0, 1, &g);
        llmq_outcome_t o = { .latency_ms = 10, .remaining_requests = -1, .remaining_tokens = -1 };
        llmq_router_outcome (r, g, &o, T0);
    }
    ck_assert_uint_eq (llmq_router_timeout_ms (r, 0), 500);
    llmq_router_destroy (&r);
}
END_TEST

START_TEST (test_retry_budget)
{
    s_router (1, LLMQ_STRATEGY_ORDER);
    s_deps[0].breaker_failures = 1000000;
    s_deps[0].retry_budget_min = 3;
    llmq_router_t *r = s_make (1, 1);
    uint64_t g;
    /* The minimum holds with few calls. */
    ck_assert (llmq_router_retry_allowed (r, 0, T0));
    ck_assert (llmq_router_retry_allowed (r, 0, T0));
    ck_assert (llmq_router_retry_allowed (r, 0, T0));
    ck_assert (!llmq_router_retry_allowed (r, 0, T0));
    /* 100 calls: 20 retries in the minute, the 3 above included. */
    for (int i = 0; i < 100; i++) {
        s_take (r, T0, 1, &g);
        s_end (r, g, LLMQ_EC_SERVER, T0);
    }
    int allowed = 0;
    for (int i = 0; i < 50; i++) {
        allowed += llmq_router_retry_allowed (r, 0, T0 + 1000);
    }
    ck_assert_int_eq (allowed, 17);
    /* A minute later the budget is back to its minimum. */
    ck_assert (llmq_router_retry_allowed (r, 0, T0 + 61000));
    llmq_router_destroy (&r);
}
END_TEST

START_TEST (test_snapshot)
{
    s_router (1, LLMQ_STRATEGY_ORDER);
    s_deps[0].rpm = 5;
    s_deps[0].rate_window_ms = 10000;
    llmq_router_t *r = s_make (1, 1);
    uint64_t g;
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq (s_take (r, T0 + (uint64_t) i * 100, 1, &g), 0);
        s_end (r, g, LLMQ_EC_SERVER, T0 + (uint64_t) i * 100);
    }
    ck_assert (llmq_router_dirty (r, 0));
    size_t size = llmq_router_save_size ();
    char *buf = malloc (size);
    ck_assert_uint_eq (llmq_router_save (r, 0, buf, size), size);
    ck_assert (!llmq_router_dirty (r, 0));
    llmq_router_destroy (&r);

    /* A new broker: still open, and the window still full. */
    r = s_make (1, 1);
    ck_assert_int_eq (llmq_router_load (r, 0, buf, size, T0 + 1000), 0);
    llmq_dep_view_t v;
    llmq_router_view (r, 0, T0 + 1000, &v);
    ck_assert_int_eq (v.breaker, LLMQ_BREAKER_OPEN);
    ck_assert_uint_eq (v.open_until_ms, T0 + 400 + 60000);
    ck_assert_uint_eq (v.window_requests, 5);
    ck_assert_uint_eq (v.failures, 5);
    llmq_router_reset (r, 0, T0 + 1000);
    llmq_pick_t p;
    uint64_t until;
    ck_assert_int_eq (llmq_router_pick (r, 0, 1, SIZE_MAX, T0 + 1000, &p, &until, NULL, 0), -1);
    /* held back at least until the last grant + window */
    ck_assert_uint_ge (until, T0 + 10000);
    ck_assert_uint_le (until, T0 + 400 + 10000 + 10000 / 64 + 1);
    ck_assert_int_eq (llmq_router_load (r, 0, buf, size - 1, T0), -1);
    free (buf);
    llmq_router_destroy (&r);
}
END_TEST

int
main (void)
{
    Suite *s = suite_create ("router");
    TCase *tc = tcase_create ("router");
    tcase_add_test (tc, test_breaker_cycle);
    tcase_add_test (tc, test_breaker_window_and_percentage);
    tcase_add_test (tc, test_rate_window_slides);
    tcase_add_test (tc, test_rate_limit_until_and_margin);
    tcase_add_test (tc, test_pause_and_quota_headers);
    tcase_add_test (tc, test_max_concurrent);
    tcase_add_test (tc, test_strategies);
    tcase_add_test (tc, test_fallback_and_why);
    tcase_add_test (tc, test_adaptive_timeout);
    tcase_add_test (tc, test_retry_budget);
    tcase_add_test (tc, test_snapshot);
    suite_add_tcase (s, tc);
    SRunner *sr = srunner_create (s);
    srunner_run_all (sr, CK_NORMAL);
    int failed = srunner_ntests_failed (sr);
    srunner_free (sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
