/*  bench_router.c -- llmq-bench-router: the time of one dispatch decision
    (breaker + limiter + balancer) in the broker's router.

        llmq-bench-router [--deployments N] [--decisions N] [--runs N]
                          [--strategy NAME]

    N deployments (default 100) in one group, each with an RPM, a TPM and
    a concurrency limit, all their breakers closed except every tenth,
    open. A decision is llmq_router_pick() + llmq_router_grant(), and the
    call's outcome is fed back at once, as the broker does when the
    worker reports. Each run times `decisions` decisions with the clock
    advancing 10 µs per decision (so limits fill and windows slide), and
    prints ns per decision; the median of the runs is the last line.
*/
#include "router.h"
#include "codec.h"

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
    "Usage: llmq-bench-router [--deployments N] [--decisions N] [--runs N] [--strategy NAME]\n"
    "Times one dispatch decision (pick + grant, outcome fed back) of the broker's\n"
    "router over N deployments in one group (default 100, 1,000,000 decisions,\n"
    "5 runs, strategy least_in_flight). Prints ns per decision per run, then the\n"
    "median.\n";

int
main (int argc, char **argv)
{
    size_t ndeps = 100, decisions = 1000000;
    int runs = 5;
    int strategy = LLMQ_STRATEGY_LEAST_IN_FLIGHT;
    static const struct option options[] = {
        { "deployments", required_argument, NULL, 'd' },
        { "decisions",   required_argument, NULL, 'n' },
        { "runs",        required_argument, NULL, 'r' },
        { "strategy",    required_argument, NULL, 's' },
        { "help",        no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    int opt;
    while ((opt = getopt_long (argc, argv, "d:n:r:s:h", options, NULL)) != -1) {
        switch (opt) {
            case 'd': ndeps = strtoul (optarg, NULL, 10); break;
            case 'n': decisions = strtoul (optarg, NULL, 10); break;
            case 'r': runs = atoi (optarg); break;
            case 's':
                strategy = llmq_strategy_parse (optarg);
                if (strategy < 0) {
                    fprintf (stderr, "llmq-bench-router: unknown strategy '%s'\n", optarg);
                    return 2;
                }
                break;
            case 'h': fputs (s_usage, stdout); return 0;
            default: fputs (s_usage, stderr); return 2;
        }
    }
    if (ndeps == 0 || ndeps > 10000 || decisions == 0 || runs < 1 || runs > 100) {
        fputs (s_usage, stderr);
        return 2;
    }
    llmq_dep_policy_t *deps = calloc (ndeps, sizeof *deps);
    size_t *members = calloc (ndeps, sizeof *members);
    char (*names)[32] = calloc (ndeps, sizeof *names);
    double *results = calloc ((size_t) runs, sizeof *results);
    if (!deps || !members || !names || !results) {
        return 1;
    }
    for (size_t i = 0; i < ndeps; i++) {
        llmq_dep_policy_defaults (&deps[i]);
        snprintf (names[i], sizeof names[i], "dep%zu", i);
        deps[i].name = names[i];
        deps[i].rpm = 10000;
        deps[i].tpm = 2000000;
        deps[i].max_concurrent = 64;
        deps[i].weight = 1 + (uint32_t) (i % 3);
        deps[i].price = (double) (i % 7);
        members[i] = i;
    }
    llmq_group_policy_t group = { "g", strategy, members, ndeps, -1 };
    uint64_t now = 1767225600000000ull;     /* µs */
    for (int run = 0; run < runs; run++) {
        llmq_router_t *r = llmq_router_new (deps, ndeps, &group, 1);
        if (!r) {
            return 1;
        }
        /* every tenth deployment open */
        for (size_t i = 0; i < ndeps; i += 10) {
            llmq_pick_t p = { .dep = i, .group = 0 };
            for (int k = 0; k < 5; k++) {
                uint64_t g = llmq_router_grant (r, &p, 100, false, now / 1000);
                llmq_outcome_t o = { .error_class = LLMQ_EC_SERVER, .remaining_requests = -1,
                                     .remaining_tokens = -1 };
                llmq_router_outcome (r, g, &o, now / 1000);
            }
        }
        size_t blocked = 0;
        uint64_t t0 = s_ns ();
        for (size_t n = 0; n < decisions; n++) {
            now += 10;
            llmq_pick_t p;
            uint64_t until;
            if (llmq_router_pick (r, 0, 500, SIZE_MAX, now / 1000, &p, &until, NULL, 0) != 0) {
                blocked++;
                continue;
            }
            uint64_t g = llmq_router_grant (r, &p, 500, false, now / 1000);
            llmq_outcome_t o = { .tokens = 400, .latency_ms = 100 + n % 50,
                                 .remaining_requests = -1, .remaining_tokens = -1 };
            llmq_router_outcome (r, g, &o, now / 1000);
        }
        uint64_t t1 = s_ns ();
        results[run] = (double) (t1 - t0) / (double) decisions;
        printf ("run %d: %.0f ns per decision (%zu deployments, %s, %zu of %zu blocked)\n", run + 1,
                results[run], ndeps, llmq_strategy_name (strategy), blocked, decisions);
        llmq_router_destroy (&r);
    }
    qsort (results, (size_t) runs, sizeof *results, s_cmp);
    printf ("median: %.0f ns per decision\n", results[runs / 2]);
    free (deps);
    free (members);
    free (names);
    free (results);
    return 0;
}
