/*  admin.c -- the broker's admin operations: see admin.h. */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"

typedef json_t *(s_op_fn) (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen);

static json_t *
s_fail (int *code, int rc, char *why, size_t whylen, const char *text)
{
    *code = rc;
    snprintf (why, whylen, "%s", text);
    return NULL;
}

/*  "breaker.reset" {"deployment": NAME} or {} for all: force closed. */
static json_t *
s_breaker_reset (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    if (!ctx->router) {
        return s_fail (code, LLMQ_ERR_STATE, why, whylen, "no router");
    }
    const char *name = json_string_value (json_object_get (req, "deployment"));
    json_t *done = json_array ();
    for (size_t i = 0; i < ctx->config->ndeployments; i++) {
        if (!name || strcmp (name, ctx->config->deployments[i].name) == 0) {
            llmq_router_reset (ctx->router, i, ctx->now_us / 1000);
            json_array_append_new (done, json_string (ctx->config->deployments[i].name));
        }
    }
    if (name && json_array_size (done) == 0) {
        json_decref (done);
        *code = LLMQ_ERR_NOT_FOUND;
        snprintf (why, whylen, "no deployment named '%s'", name);
        return NULL;
    }
    if (ctx->changed) {
        ctx->changed (ctx->changed_arg);
    }
    return json_pack ("{s:o}", "reset", done);
}

/*  "breaker.history" {}: the last state changes, oldest first. */
static json_t *
s_breaker_history (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    (void) req; (void) code; (void) why; (void) whylen;
    return json_pack ("{s:O}", "history", ctx->history ? (json_t *) ctx->history : json_array ());
}

/* ------------------------------------------------------------------------
   Dead letters (store.h, llmq_store_dead_*)
   ------------------------------------------------------------------------ */

/*  Jobs one "all" request requeues or purges, at most: one loop turn of
    the broker does them, so a million dead letters take a hundred
    requests (the answer says "more") rather than one long stall. */
#define S_BULK_MAX 10000

/*  Optional unsigned integer field; false (with the reason set) if present
    and not one, or outside [min, max]. */
static bool
s_uint_arg (const json_t *req, const char *key, uint64_t min, uint64_t max, uint64_t *out, int *code,
            char *why, size_t whylen)
{
    const json_t *v = json_object_get (req, key);
    if (!v) {
        return true;
    }
    if (!json_is_integer (v) || json_integer_value (v) < 0 || (uint64_t) json_integer_value (v) < min
    ||  (uint64_t) json_integer_value (v) > max) {
        *code = LLMQ_ERR_INVALID;
        snprintf (why, whylen, "field '%s': expected an integer from %llu to %llu", key,
                  (unsigned long long) min, (unsigned long long) max);
        return false;
    }
    *out = (uint64_t) json_integer_value (v);
    return true;
}

/*  Optional string field "model"; *model NULL when absent. */
static bool
s_model_arg (const json_t *req, const char **model, int *code, char *why, size_t whylen)
{
    const json_t *v = json_object_get (req, "model");
    *model = NULL;
    if (!v || json_is_null (v)) {
        return true;
    }
    if (!json_is_string (v) || !*json_string_value (v)) {
        *code = LLMQ_ERR_INVALID;
        snprintf (why, whylen, "field 'model': expected a model group name");
        return false;
    }
    *model = json_string_value (v);
    return true;
}

/*  Why `id` is not a dead letter: a job in another state, or none. */
static json_t *
s_not_dead (llmq_admin_t *ctx, uint64_t id, int *code, char *why, size_t whylen)
{
    llmq_result_t res;
    if (llmq_store_status (ctx->store, id, &res, ctx->arena) == 0) {
        *code = LLMQ_ERR_STATE;
        snprintf (why, whylen, "job %llu is %s, not dead-lettered", (unsigned long long) id,
                  llmq_state_name (res.state));
    }
    else {
        *code = LLMQ_ERR_NOT_FOUND;
        snprintf (why, whylen, "no dead job %llu (no such job, or its result expired)", (unsigned long long) id);
    }
    return NULL;
}

/*  The target of a requeue or purge: {"id": N} or {"all": true}. */
static bool
s_target_args (const json_t *req, uint64_t *id, bool *all, const char **model, int *code, char *why,
               size_t whylen)
{
    const json_t *a = json_object_get (req, "all");
    *id = 0;
    *all = false;
    if (a && !json_is_boolean (a)) {
        *code = LLMQ_ERR_INVALID;
        snprintf (why, whylen, "field 'all': expected true or false");
        return false;
    }
    *all = json_is_true (a);
    if (!s_uint_arg (req, "id", 1, INT64_MAX, id, code, why, whylen)
    ||  !s_model_arg (req, model, code, why, whylen)) {
        return false;
    }
    if (*all == (*id != 0)) {
        *code = LLMQ_ERR_INVALID;
        snprintf (why, whylen, *all ? "field 'id': not with \"all\": one job or all of them"
                                    : "field 'id': expected a job id (or \"all\": true)");
        return false;
    }
    if (*model && !*all) {
        *code = LLMQ_ERR_INVALID;
        snprintf (why, whylen, "field 'model': only with \"all\": true");
        return false;
    }
    return true;
}

/*  A stored JSON text as JSON (the body and meta are JSON), or as a string
    if it does not parse. */
static json_t *
s_json_text (const char *text)
{
    if (!text) {
        return json_null ();
    }
    json_t *v = json_loads (text, JSON_DECODE_ANY, NULL);
    return v ? v : json_string (text);
}

static json_t *
s_str_or_null (const char *s)
{
    return s ? json_string (s) : json_null ();
}

/*  One dead letter as the list shows it. */
static json_t *
s_dead_summary (const llmq_dead_t *d)
{
    const llmq_result_t *r = &d->result;
    return json_pack ("{s:I, s:o, s:I, s:o, s:s, s:i, s:I, s:o, s:o}",
                      "id", (json_int_t) d->job.id,
                      "model", s_str_or_null (d->job.model),
                      "attempts", (json_int_t) r->attempts,
                      "error", s_str_or_null (r->error),
                      "error_class", llmq_error_class_name (r->error_class),
                      "http_status", (int) r->http_status,
                      "finished_us", (json_int_t) r->finished_us,
                      "batch", s_str_or_null (d->job.batch_id),
                      "custom_id", s_str_or_null (d->job.custom_id));
}

/*  "dead.list" {"after": ID, "limit": N, "model": M}: a page of dead
    letters in id order; "next" is the cursor for the next page. */
static json_t *
s_dead_list (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    uint64_t after = 0, limit = LLMQ_STORE_DEAD_PAGE;
    const char *model;
    if (!s_uint_arg (req, "after", 0, INT64_MAX, &after, code, why, whylen)
    ||  !s_uint_arg (req, "limit", 1, LLMQ_STORE_DEAD_PAGE_MAX, &limit, code, why, whylen)
    ||  !s_model_arg (req, &model, code, why, whylen)) {
        return NULL;
    }
    llmq_dead_t *jobs;
    size_t n;
    uint64_t next;
    bool more;
    int rc = llmq_store_dead_list (ctx->store, model, after, (uint32_t) limit, &jobs, &n, &next, &more,
                                   ctx->arena);
    if (rc) {
        *code = rc;
        snprintf (why, whylen, "cannot list dead jobs: %s", llmq_strerror (rc));
        return NULL;
    }
    json_t *list = json_array ();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new (list, s_dead_summary (&jobs[i]));
    }
    return json_pack ("{s:o, s:I, s:b}", "jobs", list, "next", (json_int_t) next, "more", more);
}

/*  "dead.show" {"id": ID}: everything about one dead letter, body too. */
static json_t *
s_dead_show (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    uint64_t id = 0;
    if (!s_uint_arg (req, "id", 1, INT64_MAX, &id, code, why, whylen)) {
        return NULL;
    }
    if (!id) {
        return s_fail (code, LLMQ_ERR_INVALID, why, whylen, "field 'id': expected a job id");
    }
    llmq_dead_t d;
    int rc = llmq_store_dead_get (ctx->store, id, &d, ctx->arena);
    if (rc == LLMQ_ERR_NOT_FOUND) {
        return s_not_dead (ctx, id, code, why, whylen);
    }
    if (rc) {
        *code = rc;
        snprintf (why, whylen, "cannot read dead job %llu: %s", (unsigned long long) id, llmq_strerror (rc));
        return NULL;
    }
    const llmq_job_t *j = &d.job;
    const llmq_result_t *r = &d.result;
    json_t *out = s_dead_summary (&d);
    json_t *more = json_pack ("{s:s, s:s, s:I, s:o, s:I, s:I, s:I, s:o, s:o, s:o, s:o, s:b, s:b, s:o, s:o}",
                              "state", llmq_state_name (r->state),
                              "priority", llmq_priority_name (j->priority),
                              "max_attempts", (json_int_t) j->max_attempts,
                              "deployment", s_str_or_null (r->deployment),
                              "enqueued_us", (json_int_t) j->enqueued_us,
                              "started_us", (json_int_t) r->started_us,
                              "expires_us", (json_int_t) d.expire_at_us,
                              "idempotency_key", s_str_or_null (j->idem_key),
                              "user", s_str_or_null (j->user),
                              "org", s_str_or_null (j->org),
                              "request_id", s_str_or_null (r->request_id),
                              "stream", j->stream,
                              "restart", j->restart,
                              "body", s_json_text (j->body),
                              "meta", s_json_text (j->meta));
    if (!out || !more || json_object_update (out, more) != 0) {
        json_decref (out);
        json_decref (more);
        return s_fail (code, LLMQ_ERR_NOMEM, why, whylen, "out of memory");
    }
    json_decref (more);
    return out;
}

/*  Is `model` a group of the configuration? Jobs of a group that is gone
    would wait in the queue for nothing. */
static bool
s_group_known (llmq_admin_t *ctx, const char *model)
{
    return !ctx->config || (model && llmq_config_group (ctx->config, model) != NULL);
}

static json_t *
s_unknown_group (const char *model, int *code, char *why, size_t whylen)
{
    *code = LLMQ_ERR_UNKNOWN_MODEL;
    snprintf (why, whylen, "no model group '%s' in the broker's configuration: its jobs cannot run",
              model ? model : "");
    return NULL;
}

/*  "dead.requeue" {"id": ID} or {"all": true[, "model": M]}: back in the
    queue as fresh jobs. "all" without a model takes the groups of the
    configuration one by one: jobs of a group no longer configured stay
    dead (name it to be told). */
static json_t *
s_dead_requeue (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    uint64_t id;
    bool all;
    const char *model;
    if (!s_target_args (req, &id, &all, &model, code, why, whylen)) {
        return NULL;
    }
    size_t n = 0;
    bool more = false;
    int rc = 0;
    if (!all) {
        llmq_dead_t d;
        rc = llmq_store_dead_get (ctx->store, id, &d, ctx->arena);
        if (rc == LLMQ_ERR_NOT_FOUND) {
            return s_not_dead (ctx, id, code, why, whylen);
        }
        if (rc == 0 && !s_group_known (ctx, d.job.model)) {
            return s_unknown_group (d.job.model, code, why, whylen);
        }
        if (rc == 0) {
            rc = llmq_store_dead_requeue (ctx->store, id, ctx->now_us);
        }
        n = rc == 0 ? 1 : 0;
    }
    else
    if (model || !ctx->config) {
        if (model && !s_group_known (ctx, model)) {
            return s_unknown_group (model, code, why, whylen);
        }
        rc = llmq_store_dead_requeue_all (ctx->store, model, ctx->now_us, S_BULK_MAX, &n, &more);
    }
    else {
        for (size_t i = 0; rc == 0 && i < ctx->config->ngroups; i++) {
            if (n == S_BULK_MAX) {
                more = true;        /* perhaps: the next request says */
                break;
            }
            size_t got = 0;
            bool left = false;
            rc = llmq_store_dead_requeue_all (ctx->store, ctx->config->groups[i].name, ctx->now_us,
                                              S_BULK_MAX - n, &got, &left);
            n += got;
            more = more || left;
            if (rc == LLMQ_ERR_STORE_FULL && n) {
                rc = 0;             /* what is done stays done */
                more = true;
                break;
            }
        }
    }
    if (n && ctx->changed) {
        ctx->changed (ctx->changed_arg);
    }
    if (rc) {
        *code = rc;
        snprintf (why, whylen, "%s", rc == LLMQ_ERR_STORE_FULL
                  ? "no room in the broker's store to queue the job(s) again now: retry shortly"
                  : llmq_strerror (rc));
        return NULL;
    }
    return json_pack ("{s:I, s:b}", "requeued", (json_int_t) n, "more", more);
}

/*  "dead.purge" {"id": ID} or {"all": true[, "model": M]}: deleted now. */
static json_t *
s_dead_purge (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    uint64_t id;
    bool all;
    const char *model;
    if (!s_target_args (req, &id, &all, &model, code, why, whylen)) {
        return NULL;
    }
    size_t n = 0;
    bool more = false;
    int rc;
    if (all) {
        rc = llmq_store_dead_purge_all (ctx->store, model, S_BULK_MAX, &n, &more);
    }
    else {
        rc = llmq_store_dead_purge (ctx->store, id);
        if (rc == LLMQ_ERR_NOT_FOUND) {
            return s_not_dead (ctx, id, code, why, whylen);
        }
        n = rc == 0 ? 1 : 0;
    }
    if (rc) {
        *code = rc;
        snprintf (why, whylen, "%s", llmq_strerror (rc));
        return NULL;
    }
    return json_pack ("{s:I, s:b}", "purged", (json_int_t) n, "more", more);
}

/*  "YYYY-MM-DD" (UTC) as unix days; -1 if not a date. */
static int64_t
s_day (const char *text)
{
    int y, m, d;
    char tail;
    if (!text || sscanf (text, "%4d-%2d-%2d%c", &y, &m, &d, &tail) != 3 || m < 1 || m > 12 || d < 1 || d > 31) {
        return -1;
    }
    struct tm tm = { 0 };
    tm.tm_year = y - 1900;
    tm.tm_mon = m - 1;
    tm.tm_mday = d;
    time_t t = timegm (&tm);
    struct tm back;
    gmtime_r (&t, &back);
    if (back.tm_mday != d) {
        return -1;                  /* 2026-02-30 */
    }
    return (int64_t) (t / 86400);
}

typedef struct {
    const char *by;                 /* org, user, model, day */
    json_t *rows;                   /* key -> {requests, failed, prompt_tokens, ...} */
} s_report_t;

static void
s_add (json_t *row, const char *field, uint64_t v)
{
    json_object_set_new (row, field, json_integer (json_integer_value (json_object_get (row, field))
                                                   + (json_int_t) v));
}

static void
s_report_row (void *arg, const llmq_usage_t *u)
{
    s_report_t *r = (s_report_t *) arg;
    char day[16];
    const char *key;
    if (strcmp (r->by, "user") == 0) {
        key = u->user;
    }
    else
    if (strcmp (r->by, "model") == 0) {
        key = u->model;
    }
    else
    if (strcmp (r->by, "day") == 0) {
        time_t t = (time_t) u->day * 86400;
        struct tm tm;
        gmtime_r (&t, &tm);
        strftime (day, sizeof day, "%Y-%m-%d", &tm);
        key = day;
    }
    else {
        key = u->org;
    }
    json_t *row = json_object_get (r->rows, key);
    if (!row) {
        row = json_object ();
        json_object_set_new (r->rows, key, row);
    }
    s_add (row, "requests", u->requests);
    s_add (row, "failed", u->failed);
    s_add (row, "prompt_tokens", u->prompt_tokens);
    s_add (row, "completion_tokens", u->completion_tokens);
    s_add (row, "cost_micro", u->cost_micro);
}

/*  "usage.report" {"from": DAY, "to": DAY, "by": org|user|model|day}:
    requests, tokens and cost per row, days inclusive (UTC). */
static json_t *
s_usage_report (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    int64_t from = s_day (json_string_value (json_object_get (req, "from")));
    int64_t to = s_day (json_string_value (json_object_get (req, "to")));
    const char *by = json_string_value (json_object_get (req, "by"));
    by = by ? by : "org";
    if (from < 0 || to < 0) {
        return s_fail (code, LLMQ_ERR_INVALID, why, whylen,
                       "\"from\" and \"to\" must be dates as YYYY-MM-DD (UTC)");
    }
    if (to < from) {
        return s_fail (code, LLMQ_ERR_INVALID, why, whylen, "\"to\" is before \"from\"");
    }
    if (strcmp (by, "org") && strcmp (by, "user") && strcmp (by, "model") && strcmp (by, "day")) {
        return s_fail (code, LLMQ_ERR_INVALID, why, whylen, "\"by\" must be org, user, model or day");
    }
    s_report_t r = { by, json_object () };
    if (llmq_store_usage_each (ctx->store, (uint32_t) from, (uint32_t) to, s_report_row, &r) != 0) {
        json_decref (r.rows);
        return s_fail (code, LLMQ_ERR_STORE, why, whylen, "cannot read the usage records");
    }
    /*  Rows as an array sorted by key, and the totals. */
    json_t *rows = json_array (), *total = json_object ();
    const char **keys = (const char **) calloc (json_object_size (r.rows) + 1, sizeof *keys);
    size_t n = 0;
    const char *key;
    json_t *row;
    json_object_foreach (r.rows, key, row) {
        keys[n++] = key;
    }
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0 && strcmp (keys[j - 1], keys[j]) > 0; j--) {
            const char *t = keys[j];
            keys[j] = keys[j - 1];
            keys[j - 1] = t;
        }
    }
    static const char *fields[] = { "requests", "failed", "prompt_tokens", "completion_tokens", "cost_micro" };
    for (size_t i = 0; i < n; i++) {
        json_t *src = json_object_get (r.rows, keys[i]);
        json_t *out = json_pack ("{s:s}", "key", keys[i]);
        for (size_t f = 0; f < 5; f++) {
            json_t *v = json_object_get (src, fields[f]);
            json_object_set (out, fields[f], v ? v : json_integer (0));
            s_add (total, fields[f], (uint64_t) json_integer_value (v));
        }
        json_array_append_new (rows, out);
    }
    free (keys);
    json_decref (r.rows);
    return json_pack ("{s:s, s:s, s:s, s:o, s:o}", "from", json_string_value (json_object_get (req, "from")),
                      "to", json_string_value (json_object_get (req, "to")), "by", by, "rows", rows,
                      "total", total);
}

/*  "quota.show" {"user": NAME} or {"org": NAME}: limits, usage, budgets. */
static json_t *
s_quota_show (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    const char *user = json_string_value (json_object_get (req, "user"));
    const char *org = json_string_value (json_object_get (req, "org"));
    if (!ctx->tenants || (!user && !org)) {
        return s_fail (code, LLMQ_ERR_INVALID, why, whylen, "quota.show needs \"user\" or \"org\"");
    }
    llmq_quota_view_t v;
    if (user) {
        llmq_tenants_view (ctx->tenants, user, ctx->now_us / 1000, &v);
        return json_pack ("{s:s, s:s, s:{s:i, s:i, s:i, s:I}, s:{s:i, s:i, s:i, s:I}, "
                          "s:{s:I, s:I, s:I, s:I}, s:I, s:I}",
                          "user", user, "tier", v.tier,
                          "limits", "rpm", (int) v.rpm, "rph", (int) v.rph, "rpd", (int) v.rpd,
                          "tokens_per_day", (json_int_t) v.tpd,
                          "used", "minute", (int) v.minute, "hour", (int) v.hour, "day", (int) v.day,
                          "tokens_today", (json_int_t) v.day_tokens,
                          "budget_micro", "daily", (json_int_t) v.budget_daily,
                          "monthly", (json_int_t) v.budget_monthly, "spent_today", (json_int_t) v.spent_day,
                          "spent_this_month", (json_int_t) v.spent_month,
                          "quota_refused", (json_int_t) v.quota_refused,
                          "budget_refused", (json_int_t) v.budget_refused);
    }
    llmq_tenants_org_view (ctx->tenants, org, ctx->now_us / 1000, &v);
    return json_pack ("{s:s, s:{s:I, s:I, s:I, s:I}, s:I}", "org", org,
                      "budget_micro", "daily", (json_int_t) v.budget_daily,
                      "monthly", (json_int_t) v.budget_monthly, "spent_today", (json_int_t) v.spent_day,
                      "spent_this_month", (json_int_t) v.spent_month,
                      "budget_refused", (json_int_t) v.budget_refused);
}

/*  "quota.reset" {"user": NAME}: zero the user's request and token counts. */
static json_t *
s_quota_reset (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    const char *user = json_string_value (json_object_get (req, "user"));
    if (!ctx->tenants || !user) {
        return s_fail (code, LLMQ_ERR_INVALID, why, whylen, "quota.reset needs \"user\"");
    }
    llmq_tenants_reset (ctx->tenants, user);
    return json_pack ("{s:s}", "reset", user);
}

/*  "budget.show" {"user": NAME} or {"org": NAME}: quota.show's budget
    part, {"user"|"org", "budget_micro": {...}, "budget_refused"}. */
static json_t *
s_budget_show (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    const char *user = json_string_value (json_object_get (req, "user"));
    const char *org = json_string_value (json_object_get (req, "org"));
    if (!ctx->tenants || (!user && !org)) {
        return s_fail (code, LLMQ_ERR_INVALID, why, whylen, "budget.show needs \"user\" or \"org\"");
    }
    json_t *q = s_quota_show (ctx, req, code, why, whylen);
    const char *kind = user ? "user" : "org";
    json_t *rep = q ? json_pack ("{s:s, s:O, s:O}", kind, user ? user : org,
                                 "budget_micro", json_object_get (q, "budget_micro"),
                                 "budget_refused", json_object_get (q, "budget_refused")) : NULL;
    json_decref (q);
    if (!rep && q) {
        return s_fail (code, LLMQ_ERR_NOMEM, why, whylen, "out of memory");
    }
    return rep;
}

static const struct {
    const char *name;
    s_op_fn *fn;
} s_ops[] = {
    { "breaker.reset",   s_breaker_reset },
    { "breaker.history", s_breaker_history },
    { "dead.list",       s_dead_list },
    { "dead.show",       s_dead_show },
    { "dead.requeue",    s_dead_requeue },
    { "dead.purge",      s_dead_purge },
    { "usage.report",    s_usage_report },
    { "quota.show",      s_quota_show },
    { "quota.reset",     s_quota_reset },
    { "budget.show",     s_budget_show },
};

json_t *
llmq_admin_run (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    const char *op = json_string_value (json_object_get (req, "op"));
    if (!op) {
        return s_fail (code, LLMQ_ERR_INVALID, why, whylen, "admin request without \"op\"");
    }
    for (size_t i = 0; i < sizeof s_ops / sizeof s_ops[0]; i++) {
        if (strcmp (op, s_ops[i].name) == 0) {
            return s_ops[i].fn (ctx, req, code, why, whylen);
        }
    }
    *code = LLMQ_ERR_INVALID;
    snprintf (why, whylen, "unknown admin op '%s'", op);
    return NULL;
}
