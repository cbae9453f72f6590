/*  tenants.c -- tier quotas and budgets: see tenants.h.

    One record per user and per org met so far (configured ones from the
    start), in hash tables by name. A record keeps the index of the
    calendar window its counts belong to; a count read or written in a
    later window starts again from zero. Budget alerts remember, per
    period, which thresholds were already announced.
*/
#include "tenants.h"

#include <czmq.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "llmq.h"

#define S_MINUTE_MS 60000ull
#define S_HOUR_MS   3600000ull
#define S_DAY_MS    86400000ull

size_t
llmq_tiers_builtin (const llmq_tier_t **tiers)
{
    /*  The config module owns the table (a [tier NAME] of a built-in name
        starts from it); this is its view in our type. */
    static llmq_tier_t view[8];
    const llmq_cfg_tier_t *cfg;
    size_t n = llmq_config_builtin_tiers (&cfg);
    for (size_t i = 0; i < n && i < 8; i++) {
        view[i] = (llmq_tier_t) { cfg[i].name, cfg[i].rpm, cfg[i].rph, cfg[i].rpd,
                                  cfg[i].tokens_per_day, cfg[i].weight };
    }
    *tiers = view;
    return n < 8 ? n : 8;
}

/*  Spend against one budget pair, with the alerts already sent. */
typedef struct {
    int64_t daily, monthly;         /* budgets, 0: none */
    uint64_t day, month;            /* period indexes of the spend below */
    int64_t spent_day, spent_month;
    uint8_t alerted_day, alerted_month;     /* bit 0: 80 %, 1: 90 %, 2: 100 % */
} s_budget_t;

typedef struct {
    char *name;
    const llmq_tier_t *tier;
    uint64_t minute_idx, hour_idx, day_idx;
    uint32_t minute, hour, day;
    uint64_t day_tokens;
    s_budget_t budget;
    uint64_t quota_refused, budget_refused;
    bool dirty;
} s_user_t;

typedef struct {
    char *name;
    s_budget_t budget;
    uint64_t budget_refused;
    bool dirty;
} s_org_t;

struct llmq_tenants {
    llmq_tier_t *tiers;
    size_t ntiers;
    const llmq_tier_t *default_tier;
    llmq_tenants_opts_t opts;
    zhashx_t *users;                /* name -> s_user_t */
    zhashx_t *orgs;                 /* name -> s_org_t */
    llmq_budget_alert_fn *on_alert;
    void *alert_arg;
    uint64_t quota_refused, budget_refused, alerts;
};

static void
s_user_free (void **item)
{
    s_user_t *u = (s_user_t *) *item;
    if (u) {
        free (u->name);
        free (u);
    }
    *item = NULL;
}

static void
s_org_free (void **item)
{
    s_org_t *o = (s_org_t *) *item;
    if (o) {
        free (o->name);
        free (o);
    }
    *item = NULL;
}

static const llmq_tier_t *
s_tier (const llmq_tenants_t *self, const char *name)
{
    for (size_t i = 0; name && i < self->ntiers; i++) {
        if (strcmp (self->tiers[i].name, name) == 0) {
            return &self->tiers[i];
        }
    }
    return NULL;
}

llmq_tenants_t *
llmq_tenants_new (const llmq_tier_t *tiers, size_t ntiers, const llmq_user_conf_t *users, size_t nusers,
                  const llmq_org_conf_t *orgs, size_t norgs, const llmq_tenants_opts_t *opts)
{
    llmq_tenants_t *self = (llmq_tenants_t *) calloc (1, sizeof *self);
    if (!self) {
        return NULL;
    }
    self->opts = *opts;
    if (!self->opts.stream_weight) {
        self->opts.stream_weight = 1;
    }
    self->tiers = (llmq_tier_t *) calloc (ntiers ? ntiers : 1, sizeof (llmq_tier_t));
    self->users = zhashx_new ();
    self->orgs = zhashx_new ();
    if (!self->tiers || !self->users || !self->orgs) {
        llmq_tenants_destroy (&self);
        return NULL;
    }
    zhashx_set_destructor (self->users, s_user_free);
    zhashx_set_destructor (self->orgs, s_org_free);
    for (size_t i = 0; i < ntiers; i++) {
        self->tiers[i] = tiers[i];
        self->tiers[i].name = strdup (tiers[i].name);
        if (!self->tiers[i].weight) {
            self->tiers[i].weight = 1;
        }
        self->ntiers = i + 1;
        if (!self->tiers[i].name) {
            llmq_tenants_destroy (&self);
            return NULL;
        }
    }
    self->default_tier = s_tier (self, opts->default_tier ? opts->default_tier : "free");
    if (!self->default_tier) {
        llmq_tenants_destroy (&self);
        return NULL;
    }
    for (size_t i = 0; i < nusers; i++) {
        s_user_t *u = (s_user_t *) calloc (1, sizeof *u);
        if (!u || !(u->name = strdup (users[i].name))) {
            free (u);
            llmq_tenants_destroy (&self);
            return NULL;
        }
        u->tier = s_tier (self, users[i].tier);
        if (!u->tier) {
            u->tier = self->default_tier;
        }
        u->budget.daily = users[i].budget_daily;
        u->budget.monthly = users[i].budget_monthly;
        zhashx_update (self->users, u->name, u);
    }
    for (size_t i = 0; i < norgs; i++) {
        s_org_t *o = (s_org_t *) calloc (1, sizeof *o);
        if (!o || !(o->name = strdup (orgs[i].name))) {
            free (o);
            llmq_tenants_destroy (&self);
            return NULL;
        }
        o->budget.daily = orgs[i].budget_daily;
        o->budget.monthly = orgs[i].budget_monthly;
        zhashx_update (self->orgs, o->name, o);
    }
    return self;
}

void
llmq_tenants_destroy (llmq_tenants_t **self_p)
{
    llmq_tenants_t *self = *self_p;
    if (!self) {
        return;
    }
    for (size_t i = 0; i < self->ntiers; i++) {
        free ((char *) self->tiers[i].name);
    }
    free (self->tiers);
    zhashx_destroy (&self->users);
    zhashx_destroy (&self->orgs);
    free (self);
    *self_p = NULL;
}

void
llmq_tenants_on_alert (llmq_tenants_t *self, llmq_budget_alert_fn *fn, void *arg)
{
    self->on_alert = fn;
    self->alert_arg = arg;
}

/* ------------------------------------------------------------------------
   Calendar
   ------------------------------------------------------------------------ */

/*  Months since 1970-01 (UTC) and the unix ms at which the next begins. */
static uint64_t
s_month (uint64_t now_ms, uint64_t *next_ms)
{
    time_t t = (time_t) (now_ms / 1000);
    struct tm tm;
    gmtime_r (&t, &tm);
    uint64_t idx = (uint64_t) (tm.tm_year - 70) * 12 + (uint64_t) tm.tm_mon;
    if (next_ms) {
        struct tm n = { 0 };
        n.tm_year = tm.tm_mon == 11 ? tm.tm_year + 1 : tm.tm_year;
        n.tm_mon = (tm.tm_mon + 1) % 12;
        n.tm_mday = 1;
        *next_ms = (uint64_t) timegm (&n) * 1000;
    }
    return idx;
}

static void
s_roll_user (s_user_t *u, uint64_t now_ms)
{
    uint64_t m = now_ms / S_MINUTE_MS, h = now_ms / S_HOUR_MS, d = now_ms / S_DAY_MS;
    if (u->minute_idx != m) {
        u->minute_idx = m;
        u->minute = 0;
    }
    if (u->hour_idx != h) {
        u->hour_idx = h;
        u->hour = 0;
    }
    if (u->day_idx != d) {
        u->day_idx = d;
        u->day = 0;
        u->day_tokens = 0;
    }
}

static void
s_roll_budget (s_budget_t *b, uint64_t now_ms)
{
    uint64_t d = now_ms / S_DAY_MS, m = s_month (now_ms, NULL);
    if (b->day != d) {
        b->day = d;
        b->spent_day = 0;
        b->alerted_day = 0;
    }
    if (b->month != m) {
        b->month = m;
        b->spent_month = 0;
        b->alerted_month = 0;
    }
}

/* ------------------------------------------------------------------------
   Admission
   ------------------------------------------------------------------------ */

static s_user_t *
s_user (llmq_tenants_t *self, const char *name, bool create)
{
    if (!name || !*name) {
        return NULL;
    }
    s_user_t *u = (s_user_t *) zhashx_lookup (self->users, name);
    if (!u && create) {
        u = (s_user_t *) calloc (1, sizeof *u);
        if (!u || !(u->name = strdup (name))) {
            free (u);
            return NULL;
        }
        u->tier = self->default_tier;
        zhashx_insert (self->users, u->name, u);
    }
    return u;
}

static s_org_t *
s_org (llmq_tenants_t *self, const char *name, bool create)
{
    if (!name || !*name) {
        return NULL;
    }
    s_org_t *o = (s_org_t *) zhashx_lookup (self->orgs, name);
    if (!o && create) {
        o = (s_org_t *) calloc (1, sizeof *o);
        if (!o || !(o->name = strdup (name))) {
            free (o);
            return NULL;
        }
        zhashx_insert (self->orgs, o->name, o);
    }
    return o;
}

/*  Requests a job counts as. */
static uint32_t
s_weight (const llmq_tenants_t *self, bool stream, uint64_t est_tokens)
{
    uint64_t w = stream ? self->opts.stream_weight : 1;
    if (self->opts.large_tokens) {
        w += est_tokens / self->opts.large_tokens;
    }
    return w > UINT32_MAX / 2 ? UINT32_MAX / 2 : (uint32_t) w;
}

/*  0, or the budget refusal with its retry and reason. */
static int
s_budget_check (const s_budget_t *b, const char *kind, const char *name, int64_t est_cost,
                uint64_t now_ms, uint64_t *retry_after_ms, char *why, size_t whylen)
{
    const char *period = NULL;
    int64_t budget = 0, spent = 0;
    uint64_t until = 0;
    if (b->daily > 0 && b->spent_day + est_cost > b->daily) {
        period = "daily";
        budget = b->daily;
        spent = b->spent_day;
        until = (now_ms / S_DAY_MS + 1) * S_DAY_MS;
    }
    else
    if (b->monthly > 0 && b->spent_month + est_cost > b->monthly) {
        period = "monthly";
        budget = b->monthly;
        spent = b->spent_month;
        s_month (now_ms, &until);
    }
    if (!period) {
        return 0;
    }
    *retry_after_ms = until - now_ms;
    if (why && whylen) {
        snprintf (why, whylen, "%s %s: %s budget spent ($%.6f of $%.6f, this job ~$%.6f); "
                  "new jobs are refused until %s", kind, name, period, (double) spent / 1e6,
                  (double) budget / 1e6, (double) est_cost / 1e6,
                  period[0] == 'd' ? "the next day (UTC)" : "the next month (UTC)");
    }
    return LLMQ_ERR_BUDGET;
}

int
llmq_tenants_admit (llmq_tenants_t *self, const char *user, const char *org, bool stream,
                    uint64_t est_tokens, int64_t est_cost, uint64_t now_ms,
                    uint64_t *retry_after_ms, char *why, size_t whylen)
{
    *retry_after_ms = 0;
    if (why && whylen) {
        why[0] = '\0';
    }
    s_user_t *u = s_user (self, user, true);
    s_org_t *o = s_org (self, org, false);
    if (u) {
        s_roll_user (u, now_ms);
        s_roll_budget (&u->budget, now_ms);
        const llmq_tier_t *t = u->tier;
        uint32_t w = s_weight (self, stream, est_tokens);
        const char *what = NULL;
        uint32_t limit = 0;
        uint64_t until = 0;
        if (t->rpm && u->minute + w > t->rpm) {
            what = "a minute";
            limit = t->rpm;
            until = (now_ms / S_MINUTE_MS + 1) * S_MINUTE_MS;
        }
        else
        if (t->rph && u->hour + w > t->rph) {
            what = "an hour";
            limit = t->rph;
            until = (now_ms / S_HOUR_MS + 1) * S_HOUR_MS;
        }
        else
        if (t->rpd && u->day + w > t->rpd) {
            what = "a day";
            limit = t->rpd;
            until = (now_ms / S_DAY_MS + 1) * S_DAY_MS;
        }
        if (what) {
            *retry_after_ms = until - now_ms;
            if (why && whylen) {
                snprintf (why, whylen, "user %s (tier %s): %u requests %s used; retry in %llu s",
                          u->name, t->name, limit, what,
                          (unsigned long long) ((*retry_after_ms + 999) / 1000));
            }
            u->quota_refused++;
            self->quota_refused++;
            u->dirty = true;
            return LLMQ_ERR_QUOTA;
        }
        if (t->tpd && u->day_tokens > 0 && u->day_tokens + est_tokens > t->tpd) {
            *retry_after_ms = (now_ms / S_DAY_MS + 1) * S_DAY_MS - now_ms;
            if (why && whylen) {
                snprintf (why, whylen, "user %s (tier %s): %llu of %llu tokens a day used, this job "
                          "needs ~%llu; retry in %llu s", u->name, t->name,
                          (unsigned long long) u->day_tokens, (unsigned long long) t->tpd,
                          (unsigned long long) est_tokens,
                          (unsigned long long) ((*retry_after_ms + 999) / 1000));
            }
            u->quota_refused++;
            self->quota_refused++;
            u->dirty = true;
            return LLMQ_ERR_QUOTA;
        }
        int rc = s_budget_check (&u->budget, "user", u->name, est_cost, now_ms, retry_after_ms, why, whylen);
        if (rc) {
            u->budget_refused++;
            self->budget_refused++;
            u->dirty = true;
            return rc;
        }
    }
    if (o) {
        s_roll_budget (&o->budget, now_ms);
        int rc = s_budget_check (&o->budget, "org", o->name, est_cost, now_ms, retry_after_ms, why, whylen);
        if (rc) {
            o->budget_refused++;
            self->budget_refused++;
            o->dirty = true;
            return rc;
        }
    }
    if (u) {
        uint32_t w = s_weight (self, stream, est_tokens);
        u->minute += w;
        u->hour += w;
        u->day += w;
        u->day_tokens += est_tokens;
        u->dirty = true;
    }
    return 0;
}

void
llmq_tenants_unadmit (llmq_tenants_t *self, const char *user, bool stream, uint64_t est_tokens,
                      uint64_t now_ms)
{
    s_user_t *u = s_user (self, user, false);
    if (!u) {
        return;
    }
    s_roll_user (u, now_ms);
    uint32_t w = s_weight (self, stream, est_tokens);
    u->minute = u->minute > w ? u->minute - w : 0;
    u->hour = u->hour > w ? u->hour - w : 0;
    u->day = u->day > w ? u->day - w : 0;
    u->day_tokens = u->day_tokens > est_tokens ? u->day_tokens - est_tokens : 0;
    u->dirty = true;
}

/* ------------------------------------------------------------------------
   Settling
   ------------------------------------------------------------------------ */

static void
s_alerts (llmq_tenants_t *self, const char *kind, const char *name, const char *period,
          int64_t spent, int64_t budget, uint8_t *alerted, uint64_t now_ms)
{
    static const int pcts[] = { 80, 90, 100 };
    if (budget <= 0) {
        return;
    }
    for (int i = 0; i < 3; i++) {
        /* spent >= pct % of budget, in integers */
        if (!(*alerted & (1u << i)) && spent * 100 >= budget * pcts[i]) {
            *alerted |= (uint8_t) (1u << i);
            self->alerts++;
            if (self->on_alert) {
                self->on_alert (self->alert_arg, kind, name, period, pcts[i], spent, budget, now_ms);
            }
        }
    }
}

static void
s_book (llmq_tenants_t *self, s_budget_t *b, const char *kind, const char *name, int64_t cost,
        uint64_t now_ms)
{
    s_roll_budget (b, now_ms);
    b->spent_day += cost;
    b->spent_month += cost;
    s_alerts (self, kind, name, "day", b->spent_day, b->daily, &b->alerted_day, now_ms);
    s_alerts (self, kind, name, "month", b->spent_month, b->monthly, &b->alerted_month, now_ms);
}

void
llmq_tenants_settle (llmq_tenants_t *self, const char *user, const char *org, uint64_t est_tokens,
                     uint64_t tokens, int64_t cost, uint64_t now_ms)
{
    s_user_t *u = s_user (self, user, true);
    if (u) {
        s_roll_user (u, now_ms);
        u->day_tokens = u->day_tokens + tokens > est_tokens ? u->day_tokens + tokens - est_tokens : 0;
        s_book (self, &u->budget, "user", u->name, cost, now_ms);
        u->dirty = true;
    }
    s_org_t *o = s_org (self, org, true);
    if (o) {
        s_book (self, &o->budget, "org", o->name, cost, now_ms);
        o->dirty = true;
    }
}

/* ------------------------------------------------------------------------
   Views, admin, snapshots
   ------------------------------------------------------------------------ */

void
llmq_tenants_view (llmq_tenants_t *self, const char *user, uint64_t now_ms, llmq_quota_view_t *v)
{
    memset (v, 0, sizeof *v);
    s_user_t *u = s_user (self, user, false);
    const llmq_tier_t *t = u ? u->tier : self->default_tier;
    v->tier = t->name;
    v->rpm = t->rpm;
    v->rph = t->rph;
    v->rpd = t->rpd;
    v->tpd = t->tpd;
    if (!u) {
        return;
    }
    s_roll_user (u, now_ms);
    s_roll_budget (&u->budget, now_ms);
    v->minute = u->minute;
    v->hour = u->hour;
    v->day = u->day;
    v->day_tokens = u->day_tokens;
    v->budget_daily = u->budget.daily;
    v->budget_monthly = u->budget.monthly;
    v->spent_day = u->budget.spent_day;
    v->spent_month = u->budget.spent_month;
    v->quota_refused = u->quota_refused;
    v->budget_refused = u->budget_refused;
}

void
llmq_tenants_org_view (llmq_tenants_t *self, const char *org, uint64_t now_ms, llmq_quota_view_t *v)
{
    memset (v, 0, sizeof *v);
    s_org_t *o = s_org (self, org, false);
    if (!o) {
        return;
    }
    s_roll_budget (&o->budget, now_ms);
    v->budget_daily = o->budget.daily;
    v->budget_monthly = o->budget.monthly;
    v->spent_day = o->budget.spent_day;
    v->spent_month = o->budget.spent_month;
    v->budget_refused = o->budget_refused;
}

void
llmq_tenants_reset (llmq_tenants_t *self, const char *user)
{
    s_user_t *u = s_user (self, user, false);
    if (u) {
        u->minute = u->hour = u->day = 0;
        u->day_tokens = 0;
        u->dirty = true;
    }
}

void
llmq_tenants_totals (const llmq_tenants_t *self, uint64_t *quota_refused, uint64_t *budget_refused,
                     uint64_t *alerts)
{
    *quota_refused = self->quota_refused;
    *budget_refused = self->budget_refused;
    *alerts = self->alerts;
}

static json_t *
s_budget_json (const s_budget_t *b)
{
    return json_pack ("{s:I, s:I, s:I, s:I, s:i, s:i}", "day", (json_int_t) b->day,
                      "month", (json_int_t) b->month, "spent_day", (json_int_t) b->spent_day,
                      "spent_month", (json_int_t) b->spent_month, "alerted_day", b->alerted_day,
                      "alerted_month", b->alerted_month);
}

void
llmq_tenants_save (llmq_tenants_t *self, llmq_tenants_save_fn *fn, void *arg)
{
    char key[300];
    for (s_user_t *u = (s_user_t *) zhashx_first (self->users); u; u = (s_user_t *) zhashx_next (self->users)) {
        if (!u->dirty) {
            continue;
        }
        json_t *j = json_pack ("{s:I, s:I, s:I, s:i, s:i, s:i, s:I, s:o, s:I, s:I}",
                               "minute_idx", (json_int_t) u->minute_idx, "hour_idx", (json_int_t) u->hour_idx,
                               "day_idx", (json_int_t) u->day_idx, "minute", (int) u->minute,
                               "hour", (int) u->hour, "day", (int) u->day,
                               "day_tokens", (json_int_t) u->day_tokens, "budget", s_budget_json (&u->budget),
                               "quota_refused", (json_int_t) u->quota_refused,
                               "budget_refused", (json_int_t) u->budget_refused);
        char *text = j ? json_dumps (j, JSON_COMPACT) : NULL;
        json_decref (j);
        if (text) {
            snprintf (key, sizeof key, "user/%s", u->name);
            fn (arg, key, text);
            u->dirty = false;
        }
        free (text);
    }
    for (s_org_t *o = (s_org_t *) zhashx_first (self->orgs); o; o = (s_org_t *) zhashx_next (self->orgs)) {
        if (!o->dirty) {
            continue;
        }
        json_t *j = json_pack ("{s:o, s:I}", "budget", s_budget_json (&o->budget),
                               "budget_refused", (json_int_t) o->budget_refused);
        char *text = j ? json_dumps (j, JSON_COMPACT) : NULL;
        json_decref (j);
        if (text) {
            snprintf (key, sizeof key, "org/%s", o->name);
            fn (arg, key, text);
            o->dirty = false;
        }
        free (text);
    }
}

static void
s_budget_load (s_budget_t *b, const json_t *j)
{
    b->day = (uint64_t) json_integer_value (json_object_get (j, "day"));
    b->month = (uint64_t) json_integer_value (json_object_get (j, "month"));
    b->spent_day = json_integer_value (json_object_get (j, "spent_day"));
    b->spent_month = json_integer_value (json_object_get (j, "spent_month"));
    b->alerted_day = (uint8_t) json_integer_value (json_object_get (j, "alerted_day"));
    b->alerted_month = (uint8_t) json_integer_value (json_object_get (j, "alerted_month"));
}

int
llmq_tenants_load (llmq_tenants_t *self, const char *key, const char *json, size_t len)
{
    json_t *j = json_loadb (json, len, 0, NULL);
    if (!json_is_object (j)) {
        json_decref (j);
        return -1;
    }
    int rc = 0;
    if (strncmp (key, "user/", 5) == 0) {
        s_user_t *u = s_user (self, key + 5, true);
        if (u) {
            u->minute_idx = (uint64_t) json_integer_value (json_object_get (j, "minute_idx"));
            u->hour_idx = (uint64_t) json_integer_value (json_object_get (j, "hour_idx"));
            u->day_idx = (uint64_t) json_integer_value (json_object_get (j, "day_idx"));
            u->minute = (uint32_t) json_integer_value (json_object_get (j, "minute"));
            u->hour = (uint32_t) json_integer_value (json_object_get (j, "hour"));
            u->day = (uint32_t) json_integer_value (json_object_get (j, "day"));
            u->day_tokens = (uint64_t) json_integer_value (json_object_get (j, "day_tokens"));
            u->quota_refused = (uint64_t) json_integer_value (json_object_get (j, "quota_refused"));
            u->budget_refused = (uint64_t) json_integer_value (json_object_get (j, "budget_refused"));
            s_budget_load (&u->budget, json_object_get (j, "budget"));
        }
        else {
            rc = -1;
        }
    }
    else
    if (strncmp (key, "org/", 4) == 0) {
        s_org_t *o = s_org (self, key + 4, true);
        if (o) {
            o->budget_refused = (uint64_t) json_integer_value (json_object_get (j, "budget_refused"));
            s_budget_load (&o->budget, json_object_get (j, "budget"));
        }
        else {
            rc = -1;
        }
    }
    else {
        rc = -1;
    }
    json_decref (j);
    return rc;
}
