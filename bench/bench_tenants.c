/*  bench_tenants.c -- llmq-bench-tenants: what quota, budget and cache
    checks add to a submit in the broker.

        llmq-bench-tenants [--users N] [--submits N] [--runs N]

    N users (default 10,000) on the pro tier, each with daily and monthly
    budgets, in 100 orgs with budgets. A submit is llmq_tenants_admit()
    for a random user and its org (the token estimate and cost passed in,
    as the broker computes them), with the clock advancing 1 µs per submit;
    every tenth admitted job is settled, as jobs end. Then the response
    cache's key of a 1 KiB body (llmq_cache_key): for a body seen before
    (the memo) and for a new one. Prints ns per submit per run, then the
    medians.
*/
#include "cache.h"
#include "tenants.h"
#include <stdbool.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t
s_ns (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static int
s_cmp (const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return x < y ? -1 : x > y;
}

static const char s_usage[] =
    "Usage: llmq-bench-tenants [--users N] [--submits N] [--runs N]\n"
    "Times the broker's quota and budget check of one submit (llmq_tenants_admit)\n"
    "over N users (default 10,000) in 100 orgs, 1,000,000 submits, 5 runs.\n"
    "Prints ns per submit per run, then the median.\n";

int
main (int argc, char **argv)
{
    size_t nusers = 10000, submits = 1000000;
    int runs = 5;
    static const struct option options[] = {
        { "users",   required_argument, NULL, 'u' },
        { "submits", required_argument, NULL, 'n' },
        { "runs",    required_argument, NULL, 'r' },
        { "help",    no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    int opt;
    while ((opt = getopt_long (argc, argv, "u:n:r:h", options, NULL)) != -1) {
        switch (opt) {
            case 'u': nusers = strtoul (optarg, NULL, 10); break;
            case 'n': submits = strtoul (optarg, NULL, 10); break;
            case 'r': runs = atoi (optarg); break;
            case 'h': fputs (s_usage, stdout); return 0;
            default: fputs (s_usage, stderr); return 2;
        }
    }
    if (nusers == 0 || nusers > 10000000 || submits == 0 || runs < 1 || runs > 100) {
        fputs (s_usage, stderr);
        return 2;
    }
    char (*names)[32] = calloc (nusers, sizeof *names);
    char (*orgs)[32] = calloc (100, sizeof *orgs);
    llmq_user_conf_t *users = calloc (nusers, sizeof *users);
    llmq_org_conf_t *org_conf = calloc (100, sizeof *org_conf);
    double *results = calloc ((size_t) runs, sizeof *results);
    if (!names || !orgs || !users || !org_conf || !results) {
        return 1;
    }
    for (size_t i = 0; i < nusers; i++) {
        snprintf (names[i], sizeof names[i], "user-%zu", i);
        users[i] = (llmq_user_conf_t) { names[i], "pro", 5000000, 100000000 };
    }
    for (size_t i = 0; i < 100; i++) {
        snprintf (orgs[i], sizeof orgs[i], "org-%zu", i);
        org_conf[i] = (llmq_org_conf_t) { orgs[i], 500000000, 10000000000 };
    }
    const llmq_tier_t *tiers;
    size_t ntiers = llmq_tiers_builtin (&tiers);
    llmq_tenants_opts_t opts = { "free", 2, 8000 };
    for (int run = 0; run < runs; run++) {
        llmq_tenants_t *t = llmq_tenants_new (tiers, ntiers, users, nusers, org_conf, 100, &opts);
        if (!t) {
            return 1;
        }
        unsigned seed = 42;
        uint64_t now = 1767225600000000ull;
        size_t refused = 0;
        uint64_t t0 = s_ns ();
        for (size_t n = 0; n < submits; n++) {
            now += 1;
            size_t u = (size_t) rand_r (&seed) % nusers;
            uint64_t retry;
            int rc = llmq_tenants_admit (t, names[u], orgs[u % 100], n % 8 == 0, 300, 45, now / 1000,
                                         &retry, NULL, 0);
            if (rc) {
                refused++;
            }
            else
            if (n % 10 == 0) {
                llmq_tenants_settle (t, names[u], orgs[u % 100], 300, 280, 40, now / 1000);
            }
        }
        uint64_t t1 = s_ns ();
        results[run] = (double) (t1 - t0) / (double) submits;
        printf ("run %d: %.0f ns per submit (%zu users, %zu of %zu refused)\n", run + 1, results[run],
                nusers, refused, submits);
        llmq_tenants_destroy (&t);
    }
    qsort (results, (size_t) runs, sizeof *results, s_cmp);
    printf ("median: %.0f ns per submit (quota and budget)\n", results[runs / 2]);
    /*  The cache key of a 1 KiB body: repeated, then always new. */
    char body[1200], msg[900];
    memset (msg, 'a', sizeof msg - 1);
    msg[sizeof msg - 1] = '\0';
    for (size_t i = 0; i < sizeof msg - 1; i += 7) {
        msg[i] = ' ';
    }
    double repeat[100] = { 0 }, fresh[100] = { 0 };
    for (int run = 0; run < runs; run++) {
        uint8_t key[LLMQ_CACHE_KEY_LEN];
        bool tz;
        snprintf (body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],"
                  "\"temperature\":0,\"max_tokens\":100}", msg);
        uint64_t t0 = s_ns ();
        for (int n = 0; n < 100000; n++) {
            llmq_cache_key ("gpt", body, key, &tz);
        }
        uint64_t t1 = s_ns ();
        repeat[run] = (double) (t1 - t0) / 100000.0;
        for (int n = 0; n < 20000; n++) {
            snprintf (body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"%d %s\"}],"
                      "\"temperature\":0,\"max_tokens\":100}", n + run * 20000, msg);
            uint64_t a = s_ns ();
            llmq_cache_key ("gpt", body, key, &tz);
            fresh[run] += (double) (s_ns () - a);
        }
        fresh[run] /= 20000.0;
        printf ("run %d: cache key %.0f ns for a body seen before, %.0f ns for a new one (%zu bytes)\n",
                run + 1, repeat[run], fresh[run], strlen (body));
    }
    qsort (repeat, (size_t) runs, sizeof *repeat, s_cmp);
    qsort (fresh, (size_t) runs, sizeof *fresh, s_cmp);
    printf ("median: cache key %.0f ns (seen before), %.0f ns (new body)\n", repeat[runs / 2], fresh[runs / 2]);
    free (names);
    free (orgs);
    free (users);
    free (org_conf);
    free (results);
    return 0;
}
