/*  tenants.h -- users, orgs, tier quotas and budgets, held by the broker.

    At submit, llmq_tenants_admit() checks a job against its user's tier
    (requests per minute, hour and day, tokens per day) and against the
    user's and the org's budgets (daily and monthly, in micro-dollars),
    and counts it. When the job ends, llmq_tenants_settle() books what it
    really used and cost, and fires the budget alerts (80 %, 90 %, 100 %,
    each once per period).

    Windows are calendar windows in UTC (the minute, the hour, the day, the
    month), so "the 11th request in a minute is refused and the first of
    the next minute accepted" holds exactly. Pure logic over an injected
    clock (unix ms); not thread-safe (the broker is one thread).
*/
#ifndef LLMQ_TENANTS_H
#define LLMQ_TENANTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *name;
    uint32_t rpm, rph, rpd;         /* requests per minute, hour, day (0: none) */
    uint64_t tpd;                   /* tokens per day (0: none) */
    uint32_t weight;                /* fair share weight (1) */
} llmq_tier_t;

/*  The built-in tiers: free, basic, pro, enterprise (config may override). */
size_t llmq_tiers_builtin (const llmq_tier_t **tiers);

typedef struct {
    const char *name;
    const char *tier;               /* NULL: the default tier */
    int64_t budget_daily;           /* micro-dollars, 0: none */
    int64_t budget_monthly;
} llmq_user_conf_t;

typedef struct {
    const char *name;
    int64_t budget_daily;           /* micro-dollars, 0: none */
    int64_t budget_monthly;
} llmq_org_conf_t;

typedef struct {
    const char *default_tier;       /* for users not configured ("free") */
    uint32_t stream_weight;         /* a streamed job counts as this many requests (1) */
    uint64_t large_tokens;          /* a job estimated at N x this many tokens counts
                                       N more requests (0: off) */
} llmq_tenants_opts_t;

typedef struct llmq_tenants llmq_tenants_t;

/*  Copies what it needs. Tiers named by users must exist (checked by the
    config loader); an unknown one falls back to the default tier. NULL on
    out of memory or if the default tier is unknown. */
llmq_tenants_t *llmq_tenants_new (const llmq_tier_t *tiers, size_t ntiers,
                                  const llmq_user_conf_t *users, size_t nusers,
                                  const llmq_org_conf_t *orgs, size_t norgs,
                                  const llmq_tenants_opts_t *opts);
void llmq_tenants_destroy (llmq_tenants_t **self_p);

/*  Check and count one job of `user` (NULL or "": no quota) in `org`
    (NULL or "": no org budget). Returns 0 (counted), LLMQ_ERR_QUOTA or
    LLMQ_ERR_BUDGET with *retry_after_ms (until the window or period that
    refuses ends) and `why` ("user alice (tier free): 10 requests a minute
    used; retry in 23 s"). Nothing is counted when it refuses. */
int  llmq_tenants_admit (llmq_tenants_t *self, const char *user, const char *org, bool stream,
                         uint64_t est_tokens, int64_t est_cost, uint64_t now_ms,
                         uint64_t *retry_after_ms, char *why, size_t whylen);

/*  Undo an admit whose job was not stored after all (the SUBMIT failed). */
void llmq_tenants_unadmit (llmq_tenants_t *self, const char *user, bool stream,
                           uint64_t est_tokens, uint64_t now_ms);

/*  A budget alert: `kind` "user" or "org", `period` "day" or "month",
    `pct` 80, 90 or 100. Called from llmq_tenants_settle(). */
typedef void (llmq_budget_alert_fn) (void *arg, const char *kind, const char *name,
                                     const char *period, int pct, int64_t spent,
                                     int64_t budget, uint64_t now_ms);
void llmq_tenants_on_alert (llmq_tenants_t *self, llmq_budget_alert_fn *fn, void *arg);

/*  A job ended: its real tokens replace the estimate in the day's count,
    its cost is booked to the user's and the org's budgets. */
void llmq_tenants_settle (llmq_tenants_t *self, const char *user, const char *org,
                          uint64_t est_tokens, uint64_t tokens, int64_t cost, uint64_t now_ms);

/*  Limits and usage of one user, for `llmq quota USER`. */
typedef struct {
    const char *tier;
    uint32_t rpm, rph, rpd;
    uint64_t tpd;
    uint32_t minute, hour, day;     /* requests counted in the current windows */
    uint64_t day_tokens;
    int64_t  budget_daily, budget_monthly, spent_day, spent_month;
    uint64_t quota_refused;         /* submits refused, all time */
    uint64_t budget_refused;
} llmq_quota_view_t;
void llmq_tenants_view (llmq_tenants_t *self, const char *user, uint64_t now_ms, llmq_quota_view_t *v);
/*  An org's budgets and spend (only budget fields and refusals are set). */
void llmq_tenants_org_view (llmq_tenants_t *self, const char *org, uint64_t now_ms, llmq_quota_view_t *v);

/*  Admin: zero a user's request and token counts (not its spend). */
void llmq_tenants_reset (llmq_tenants_t *self, const char *user);

/*  Totals for stats. */
void llmq_tenants_totals (const llmq_tenants_t *self, uint64_t *quota_refused,
                          uint64_t *budget_refused, uint64_t *alerts);

/*  Snapshots, to store with each commit and load at start: each entity
    whose counts changed since its last save, as JSON text under a key
    ("user/NAME", "org/NAME"). `fn` is called per dirty entity. */
typedef void (llmq_tenants_save_fn) (void *arg, const char *key, const char *json);
void llmq_tenants_save (llmq_tenants_t *self, llmq_tenants_save_fn *fn, void *arg);
int  llmq_tenants_load (llmq_tenants_t *self, const char *key, const char *json, size_t len);

#endif
