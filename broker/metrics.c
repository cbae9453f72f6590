/*  metrics.c -- the broker's Prometheus metrics. See metrics.h, and
    docs/metrics.md for the list of names.

    Deployment-indexed series use one slot per deployment up to
    LLMQ_METRICS_MAX_LABELS, then one "other" slot summing the rest (a
    breaker state folds to the worst of them). Models are learnt as jobs
    finish, bounded the same way.
*/
#include "metrics.h"
#include "codec.h"

#include <czmq.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_NEC     11                /* error classes: LLMQ_EC_NONE .. LLMQ_EC_BAD_RESPONSE */
#define S_NSTATE  3                 /* breaker states */
#define S_NBUCKET 10                /* finite bucket bounds; +Inf is implicit */

static const double s_latency_bounds[S_NBUCKET] = { 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 };
/*  Waits are longer than calls: a low-priority job waits 2 minutes by
    design (its [priority] offset). */
static const double s_wait_bounds[S_NBUCKET] = { 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300 };
/*  Commits: a group commit with fsync takes about a millisecond on an SSD,
    without fsync tens of microseconds. */
static const double s_commit_bounds[S_NBUCKET] = { 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
                                                   0.1, 0.5 };
static const char *s_prio_names[LLMQ_NPRIO] = { "urgent", "high", "normal", "low" };

typedef struct {
    uint64_t buckets[S_NBUCKET + 1];    /* per bucket, not cumulative; last is +Inf */
    uint64_t count;
    double sum;                         /* seconds */
} s_hist_t;

/*  One org's usage within a model. */
typedef struct {
    size_t org;                         /* index in org_names */
    uint64_t prompt, completion, cost_micro;
} s_org_usage_t;

typedef struct {
    char *name;
    s_org_usage_t *orgs;                /* in order of first use */
    size_t norgs, orgs_cap;
} s_model_t;

struct llmq_metrics {
    const llmq_config_t *config;
    size_t nslots;                      /* deployments kept apart, plus "other" if any */
    uint64_t (*calls)[S_NEC];           /* [slot][error class] */
    s_hist_t *latency;                  /* [slot] */
    s_hist_t *ttfc;                     /* [slot]: dispatch to first chunk */
    size_t ngslots;                     /* groups kept apart, plus "other" if any */
    uint64_t *failovers;                /* [group slot] */
    uint64_t (*transitions)[S_NSTATE];  /* [slot][to] */
    s_hist_t wait[LLMQ_NPRIO];
    s_hist_t commit;                    /* store commit time */
    s_model_t *models;                  /* in order of first use; the last may be "other" */
    size_t nmodels;
    zhashx_t *model_index;              /* name -> index + 1 */
    char *org_names[LLMQ_METRICS_MAX_ORGS + 1];  /* in order of first use; the last may be "other" */
    size_t norg_names;
    size_t last_len;                    /* the last exposition's length */
    uint64_t (*blocked)[2];             /* [group slot][0 limits, 1 open] */
    uint64_t *rate_paused;              /* [slot] */
};

static size_t
s_slot (const llmq_metrics_t *self, size_t dep)
{
    (void) self;
    return dep < LLMQ_METRICS_MAX_LABELS ? dep : LLMQ_METRICS_MAX_LABELS;
}

static const char *
s_slot_name (const llmq_metrics_t *self, size_t slot)
{
    return slot < LLMQ_METRICS_MAX_LABELS ? self->config->deployments[slot].name : "other";
}

static void
s_hist_add (s_hist_t *h, const double *bounds, double v)
{
    size_t i = 0;
    while (i < S_NBUCKET && v > bounds[i]) {
        i++;
    }
    h->buckets[i]++;
    h->count++;
    h->sum += v;
}

llmq_metrics_t *
llmq_metrics_new (const llmq_config_t *config)
{
    llmq_metrics_t *self = (llmq_metrics_t *) calloc (1, sizeof *self);
    if (!self) {
        return NULL;
    }
    self->config = config;
    size_t n = config->ndeployments;
    self->nslots = n <= LLMQ_METRICS_MAX_LABELS ? n : LLMQ_METRICS_MAX_LABELS + 1;
    size_t alloc = self->nslots ? self->nslots : 1;
    self->calls = calloc (alloc, sizeof *self->calls);
    self->latency = (s_hist_t *) calloc (alloc, sizeof *self->latency);
    self->transitions = calloc (alloc, sizeof *self->transitions);
    self->ttfc = (s_hist_t *) calloc (alloc, sizeof *self->ttfc);
    size_t ng = config->ngroups;
    self->ngslots = ng <= LLMQ_METRICS_MAX_LABELS ? ng : LLMQ_METRICS_MAX_LABELS + 1;
    self->failovers = (uint64_t *) calloc (self->ngslots ? self->ngslots : 1, sizeof *self->failovers);
    self->blocked = calloc (self->ngslots ? self->ngslots : 1, sizeof *self->blocked);
    self->rate_paused = (uint64_t *) calloc (alloc, sizeof *self->rate_paused);
    self->models = (s_model_t *) calloc (LLMQ_METRICS_MAX_LABELS + 1, sizeof *self->models);
    self->model_index = zhashx_new ();
    if (!self->calls || !self->latency || !self->transitions || !self->ttfc || !self->failovers
        || !self->blocked || !self->rate_paused || !self->models || !self->model_index) {
        llmq_metrics_destroy (&self);
        return NULL;
    }
    return self;
}

void
llmq_metrics_destroy (llmq_metrics_t **self_p)
{
    if (self_p && *self_p) {
        llmq_metrics_t *self = *self_p;
        free (self->calls);
        free (self->latency);
        free (self->transitions);
        free (self->ttfc);
        free (self->failovers);
        free (self->blocked);
        free (self->rate_paused);
        if (self->models) {
            for (size_t i = 0; i < self->nmodels; i++) {
                free (self->models[i].name);
                free (self->models[i].orgs);
            }
            free (self->models);
        }
        for (size_t i = 0; i < self->norg_names; i++) {
            free (self->org_names[i]);
        }
        zhashx_destroy (&self->model_index);
        free (self);
        *self_p = NULL;
    }
}

void
llmq_metrics_call (llmq_metrics_t *self, size_t dep, int error_class, uint64_t latency_us)
{
    if (!self || dep >= self->config->ndeployments) {
        return;
    }
    size_t s = s_slot (self, dep);
    int ec = error_class >= 0 && error_class < S_NEC ? error_class : LLMQ_EC_INTERNAL;
    self->calls[s][ec]++;
    s_hist_add (&self->latency[s], s_latency_bounds, (double) latency_us / 1e6);
}

void
llmq_metrics_wait (llmq_metrics_t *self, int priority, uint64_t wait_us)
{
    if (!self) {
        return;
    }
    int p = priority >= 0 && priority < LLMQ_NPRIO ? priority : LLMQ_NPRIO - 1;
    s_hist_add (&self->wait[p], s_wait_bounds, (double) wait_us / 1e6);
}

void
llmq_metrics_commit (llmq_metrics_t *self, uint64_t us)
{
    if (self) {
        s_hist_add (&self->commit, s_commit_bounds, (double) us / 1e6);
    }
}

void
llmq_metrics_transition (llmq_metrics_t *self, size_t dep, int to)
{
    if (!self || dep >= self->config->ndeployments || to < 0 || to >= S_NSTATE) {
        return;
    }
    self->transitions[s_slot (self, dep)][to]++;
}

void
llmq_metrics_first_chunk (llmq_metrics_t *self, size_t dep, uint64_t ttfc_us)
{
    if (!self || dep >= self->config->ndeployments) {
        return;
    }
    s_hist_add (&self->ttfc[s_slot (self, dep)], s_latency_bounds, (double) ttfc_us / 1e6);
}

void
llmq_metrics_failover (llmq_metrics_t *self, size_t group)
{
    if (!self || group >= self->config->ngroups) {
        return;
    }
    self->failovers[group < LLMQ_METRICS_MAX_LABELS ? group : LLMQ_METRICS_MAX_LABELS]++;
}

void
llmq_metrics_blocked (llmq_metrics_t *self, size_t group, bool all_open)
{
    if (!self || group >= self->config->ngroups) {
        return;
    }
    self->blocked[group < LLMQ_METRICS_MAX_LABELS ? group : LLMQ_METRICS_MAX_LABELS][all_open ? 1 : 0]++;
}

void
llmq_metrics_rate_paused (llmq_metrics_t *self, size_t dep)
{
    if (!self || dep >= self->config->ndeployments) {
        return;
    }
    self->rate_paused[s_slot (self, dep)]++;
}

/*  A JSON number as a non-negative count (0 when missing or not one). */
static uint64_t
s_count (const json_t *o, const char *key)
{
    const json_t *v = json_object_get (o, key);
    double d = json_is_number (v) ? json_number_value (v) : 0;
    return d > 0 && d < 1.8e19 ? (uint64_t) d : 0;
}

int
llmq_metrics_figures_parse (const char *json, llmq_worker_figures_t *out)
{
    json_t *o = json ? json_loads (json, JSON_REJECT_DUPLICATES, NULL) : NULL;
    if (!json_is_object (o)) {
        json_decref (o);
        return -1;
    }
    const json_t *cpu = json_object_get (o, "cpu_seconds");
    out->known = true;
    out->calls = s_count (o, "calls");
    out->calls_failed = s_count (o, "calls_failed");
    out->cpu_seconds = json_is_number (cpu) && json_number_value (cpu) > 0 ? json_number_value (cpu) : 0;
    out->in_flight = s_count (o, "in_flight");
    out->slots = s_count (o, "slots");
    json_decref (o);
    return 0;
}

/*  The index in org_names of `org` ("" or NULL: "none"), learnt on first
    use; past LLMQ_METRICS_MAX_ORGS names, "other". SIZE_MAX on out of memory. */
static size_t
s_org_index (llmq_metrics_t *self, const char *org)
{
    const char *name = org && *org ? org : "none";
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < self->norg_names; i++) {
            if (strcmp (self->org_names[i], name) == 0) {
                return i;
            }
        }
        if (self->norg_names < LLMQ_METRICS_MAX_ORGS) {
            break;
        }
        name = "other";             /* the table is full: fold it */
    }
    if (self->norg_names > LLMQ_METRICS_MAX_ORGS) {
        return SIZE_MAX;            /* cannot happen: "other" is found above */
    }
    char *copy = strdup (name);
    if (!copy) {
        return SIZE_MAX;
    }
    self->org_names[self->norg_names] = copy;
    return self->norg_names++;
}

void
llmq_metrics_usage (llmq_metrics_t *self, const char *model, const char *org, uint64_t prompt_tokens,
                    uint64_t completion_tokens, uint64_t cost_micro)
{
    if (!self) {
        return;
    }
    size_t oi = s_org_index (self, org);
    if (oi == SIZE_MAX) {
        return;
    }
    const char *name = model && *model ? model : "unknown";
    size_t i = (size_t) (uintptr_t) zhashx_lookup (self->model_index, name);
    if (i) {
        i--;
    }
    else {
        if (self->nmodels >= LLMQ_METRICS_MAX_LABELS) {
            name = "other";
        }
        i = (size_t) (uintptr_t) zhashx_lookup (self->model_index, name);
        if (i) {
            i--;
        }
        else {
            char *copy = strdup (name);
            if (!copy) {
                return;
            }
            i = self->nmodels++;
            self->models[i].name = copy;
            zhashx_insert (self->model_index, copy, (void *) (uintptr_t) (i + 1));
        }
    }
    s_model_t *mo = &self->models[i];
    size_t k = 0;
    while (k < mo->norgs && mo->orgs[k].org != oi) {
        k++;
    }
    if (k == mo->norgs) {
        if (mo->norgs == mo->orgs_cap) {
            size_t cap = mo->orgs_cap ? mo->orgs_cap * 2 : 4;
            s_org_usage_t *grown = (s_org_usage_t *) realloc (mo->orgs, cap * sizeof *grown);
            if (!grown) {
                return;
            }
            mo->orgs = grown;
            mo->orgs_cap = cap;
        }
        mo->orgs[k] = (s_org_usage_t) { .org = oi };
        mo->norgs++;
    }
    mo->orgs[k].prompt += prompt_tokens;
    mo->orgs[k].completion += completion_tokens;
    mo->orgs[k].cost_micro += cost_micro;
}

char *
llmq_metrics_escape (const char *value, char *out, size_t len)
{
    size_t o = 0;
    for (const char *p = value ? value : ""; *p && o + 3 < len; p++) {
        if (*p == '\\' || *p == '"') {
            out[o++] = '\\';
            out[o++] = *p;
        }
        else if (*p == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        }
        else {
            out[o++] = *p;
        }
    }
    if (len) {
        out[o < len ? o : len - 1] = '\0';
    }
    return out;
}

/* ------------------------------------------------------------------------
   Rendering
   ------------------------------------------------------------------------ */

static void
s_head (FILE *f, const char *name, const char *type, const char *help)
{
    fprintf (f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/*  One counter or gauge without labels. */
static void
s_plain (FILE *f, const char *name, const char *type, const char *help, uint64_t value)
{
    s_head (f, name, type, help);
    fprintf (f, "%s %llu\n", name, (unsigned long long) value);
}

/*  The per-deployment series are most of the text (about 45 lines per
    deployment): they are assembled here with memcpy and a digit loop, one
    fwrite per block, instead of an fprintf per line, which parsed its
    format and formatted the bucket bounds as floats every time (two
    thirds of a scrape's CPU with 1,000 deployments). */
typedef struct {
    FILE *f;
    size_t n;
    char b[16384];
} s_out_t;

static void
s_flush (s_out_t *o)
{
    if (o->n) {
        fwrite (o->b, 1, o->n, o->f);
        o->n = 0;
    }
}

static void
s_put (s_out_t *o, const char *text, size_t len)
{
    if (o->n + len > sizeof o->b) {
        s_flush (o);
        if (len > sizeof o->b) {
            fwrite (text, 1, len, o->f);
            return;
        }
    }
    memcpy (o->b + o->n, text, len);
    o->n += len;
}

static void
s_puts (s_out_t *o, const char *text)
{
    s_put (o, text, strlen (text));
}

static void
s_putu (s_out_t *o, uint64_t v)
{
    char t[24];
    size_t i = sizeof t;
    do {
        t[--i] = (char) ('0' + v % 10);
        v /= 10;
    } while (v);
    s_put (o, t + i, sizeof t - i);
}

/*  One sample line: NAME{LABELS} VALUE (labels already escaped, "" for
    none). */
static void
s_sample (s_out_t *o, const char *name, const char *labels, uint64_t value)
{
    s_puts (o, name);
    if (*labels) {
        s_put (o, "{", 1);
        s_puts (o, labels);
        s_put (o, "}", 1);
    }
    s_put (o, " ", 1);
    s_putu (o, value);
    s_put (o, "\n", 1);
}

/*  A histogram's samples for one label (name=value, value unescaped), or
    for none (label NULL). */
static void
s_hist (FILE *f, const char *name, const char *label, const char *value, const double *bounds,
        const s_hist_t *h)
{
    static s_out_t o;               /* one thread renders (metrics.h) */
    o.f = f;
    o.n = 0;
    char esc[512], lv[600];         /* 'label="value"' or "" */
    lv[0] = '\0';
    if (label) {
        snprintf (lv, sizeof lv, "%s=\"%s\"", label, llmq_metrics_escape (value, esc, sizeof esc));
    }
    /*  The bounds as text, formatted once per table (histograms of one
        name come one after the other). */
    static const double *formatted;
    static char les[S_NBUCKET + 1][32];
    if (formatted != bounds) {
        for (size_t i = 0; i < S_NBUCKET; i++) {
            snprintf (les[i], sizeof les[i], "%g", bounds[i]);
        }
        snprintf (les[S_NBUCKET], sizeof les[S_NBUCKET], "+Inf");
        formatted = bounds;
    }
    uint64_t cum = 0;
    for (size_t i = 0; i <= S_NBUCKET; i++) {
        const char *le = les[i];
        cum = i < S_NBUCKET ? cum + h->buckets[i] : h->count;
        s_puts (&o, name);
        s_put (&o, "_bucket{", 8);
        if (*lv) {
            s_puts (&o, lv);
            s_put (&o, ",", 1);
        }
        s_put (&o, "le=\"", 4);
        s_puts (&o, le);
        s_put (&o, "\"} ", 3);
        s_putu (&o, cum);
        s_put (&o, "\n", 1);
    }
    char sum[40];
    int sl = h->sum == 0 ? snprintf (sum, sizeof sum, "0") : snprintf (sum, sizeof sum, "%.9g", h->sum);
    s_puts (&o, name);
    s_put (&o, "_sum", 4);
    if (*lv) {
        s_put (&o, "{", 1);
        s_puts (&o, lv);
        s_put (&o, "}", 1);
    }
    s_put (&o, " ", 1);
    s_put (&o, sum, (size_t) sl);
    s_put (&o, "\n", 1);
    char cname[128];
    snprintf (cname, sizeof cname, "%s_count", name);
    s_sample (&o, cname, lv, h->count);
    s_flush (&o);
}

typedef struct {
    int breaker;                    /* worst state of the slot */
    uint64_t in_flight, window_requests, window_tokens;
} s_dep_gauges_t;

static void
s_render_queue (FILE *f, const llmq_metrics_src_t *src)
{
    const llmq_route_stats_t *rs;
    size_t nr = llmq_store_routes (src->store, &rs);
    size_t kept = nr < LLMQ_METRICS_MAX_LABELS ? nr : LLMQ_METRICS_MAX_LABELS;
    uint64_t other_ready[LLMQ_NPRIO] = { 0 }, other_delayed = 0, other_running = 0;
    for (size_t i = kept; i < nr; i++) {
        for (int p = 0; p < LLMQ_NPRIO; p++) {
            other_ready[p] += rs[i].ready[p];
        }
        other_delayed += rs[i].delayed;
        other_running += rs[i].running;
    }
    char esc[512];
    s_head (f, "llmq_queue_depth", "gauge", "Ready jobs waiting for dispatch, by model group and priority.");
    for (size_t i = 0; i < kept; i++) {
        llmq_metrics_escape (rs[i].name, esc, sizeof esc);
        for (int p = 0; p < LLMQ_NPRIO; p++) {
            fprintf (f, "llmq_queue_depth{group=\"%s\",priority=\"%s\"} %llu\n", esc, s_prio_names[p],
                     (unsigned long long) rs[i].ready[p]);
        }
    }
    if (nr > kept) {
        for (int p = 0; p < LLMQ_NPRIO; p++) {
            fprintf (f, "llmq_queue_depth{group=\"other\",priority=\"%s\"} %llu\n", s_prio_names[p],
                     (unsigned long long) other_ready[p]);
        }
    }
    s_head (f, "llmq_queue_delayed", "gauge", "Jobs waiting for a retry backoff or a not_before time, by model group.");
    for (size_t i = 0; i < kept; i++) {
        fprintf (f, "llmq_queue_delayed{group=\"%s\"} %llu\n", llmq_metrics_escape (rs[i].name, esc, sizeof esc),
                 (unsigned long long) rs[i].delayed);
    }
    if (nr > kept) {
        fprintf (f, "llmq_queue_delayed{group=\"other\"} %llu\n", (unsigned long long) other_delayed);
    }
    s_head (f, "llmq_queue_running", "gauge", "Jobs leased to a worker, by model group.");
    for (size_t i = 0; i < kept; i++) {
        fprintf (f, "llmq_queue_running{group=\"%s\"} %llu\n", llmq_metrics_escape (rs[i].name, esc, sizeof esc),
                 (unsigned long long) rs[i].running);
    }
    if (nr > kept) {
        fprintf (f, "llmq_queue_running{group=\"other\"} %llu\n", (unsigned long long) other_running);
    }
    /*  The head of the ready index is the next job to go (smallest virtual
        deadline): its age says how stale the queue's front is. */
    uint64_t now_us = src->now_ms * 1000, other_age = 0;
    s_head (f, "llmq_queue_oldest_age_seconds", "gauge",
            "Age of the head of each model group's ready queue (0 when empty).");
    for (size_t i = 0; i < nr; i++) {
        uint64_t enq = 0, age = 0;
        if (llmq_store_head_enqueued (src->store, rs[i].number, &enq) == 0 && now_us > enq) {
            age = now_us - enq;
        }
        if (i >= kept) {
            other_age = age > other_age ? age : other_age;
            continue;
        }
        fprintf (f, "llmq_queue_oldest_age_seconds{group=\"%s\"} %.3f\n",
                 llmq_metrics_escape (rs[i].name, esc, sizeof esc), (double) age / 1e6);
    }
    if (nr > kept) {
        fprintf (f, "llmq_queue_oldest_age_seconds{group=\"other\"} %.3f\n", (double) other_age / 1e6);
    }
    /*  Per tenant: the deepest LLMQ_METRICS_MAX_ORGS, the rest summed. */
    llmq_depth_entry_t top[LLMQ_METRICS_MAX_ORGS];
    size_t ntenants;
    uint64_t rest;
    size_t nt = llmq_store_tenants (src->store, top, LLMQ_METRICS_MAX_ORGS, &ntenants, &rest);
    s_head (f, "llmq_queue_tenant_depth", "gauge",
            "Queued and delayed jobs per tenant (org:NAME, user:NAME or -), the deepest 100; the rest as other.");
    for (size_t i = 0; i < nt; i++) {
        fprintf (f, "llmq_queue_tenant_depth{tenant=\"%s\"} %llu\n",
                 llmq_metrics_escape (top[i].tenant, esc, sizeof esc), (unsigned long long) top[i].queued);
    }
    if (ntenants > nt) {
        fprintf (f, "llmq_queue_tenant_depth{tenant=\"other\"} %llu\n", (unsigned long long) rest);
    }
    s_plain (f, "llmq_dead_letters", "gauge", "Dead-lettered jobs held (llmq dead list).",
             llmq_store_dead_count (src->store));
}

/*  Breaker severity, to fold several breakers into one "other" value. */
static int
s_severity (int state)
{
    return state == LLMQ_BREAKER_OPEN ? 2 : state == LLMQ_BREAKER_HALF_OPEN ? 1 : 0;
}

/*  One gauge per deployment slot: field `k` of s_dep_gauges_t (0 breaker,
    1 in flight, 2 window requests, 3 window tokens). */
static void
s_dep_gauge (llmq_metrics_t *self, s_out_t *o, const char *name, const char *help, const s_dep_gauges_t *g,
             int k)
{
    char esc[512], labels[600];
    s_head (o->f, name, "gauge", help);
    for (size_t s = 0; s < self->nslots; s++) {
        snprintf (labels, sizeof labels, "deployment=\"%s\"",
                  llmq_metrics_escape (s_slot_name (self, s), esc, sizeof esc));
        uint64_t v = k == 0 ? (uint64_t) g[s].breaker : k == 1 ? g[s].in_flight
                   : k == 2 ? g[s].window_requests : g[s].window_tokens;
        s_sample (o, name, labels, v);
    }
    s_flush (o);
}

static void
s_render_deployments (llmq_metrics_t *self, FILE *f, const llmq_metrics_src_t *src)
{
    size_t ns = self->nslots;
    s_dep_gauges_t *g = (s_dep_gauges_t *) calloc (ns ? ns : 1, sizeof *g);
    if (!g) {
        return;
    }
    for (size_t i = 0; i < self->config->ndeployments; i++) {
        llmq_dep_view_t v;
        llmq_router_view (src->router, i, src->now_ms, &v);
        s_dep_gauges_t *d = &g[s_slot (self, i)];
        if (s_severity (v.breaker) > s_severity (d->breaker)) {
            d->breaker = v.breaker;
        }
        d->in_flight += v.in_flight;
        d->window_requests += v.window_requests;
        d->window_tokens += v.window_tokens;
    }
    char esc[512], labels[700];
    static s_out_t o;               /* one thread renders (metrics.h) */
    o.f = f;
    o.n = 0;
    s_head (f, "llmq_provider_calls_total", "counter",
            "Provider calls reported by workers, by deployment and outcome (ok or the error class).");
    for (size_t s = 0; s < ns; s++) {
        llmq_metrics_escape (s_slot_name (self, s), esc, sizeof esc);
        for (int ec = 0; ec < S_NEC; ec++) {
            snprintf (labels, sizeof labels, "deployment=\"%s\",outcome=\"%s\"", esc,
                      ec == LLMQ_EC_NONE ? "ok" : llmq_error_class_name (ec));
            s_sample (&o, "llmq_provider_calls_total", labels, self->calls[s][ec]);
        }
    }
    s_flush (&o);
    s_head (f, "llmq_provider_latency_seconds", "histogram",
            "Provider call latency reported by workers (done and failed calls), by deployment.");
    for (size_t s = 0; s < ns; s++) {
        s_hist (f, "llmq_provider_latency_seconds", "deployment", s_slot_name (self, s), s_latency_bounds,
                &self->latency[s]);
    }
    s_head (f, "llmq_time_to_first_chunk_seconds", "histogram",
            "Time from dispatch to the first chunk of a streamed attempt, by deployment.");
    for (size_t s = 0; s < ns; s++) {
        s_hist (f, "llmq_time_to_first_chunk_seconds", "deployment", s_slot_name (self, s), s_latency_bounds,
                &self->ttfc[s]);
    }
    s_dep_gauge (self, &o, "llmq_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open.", g, 0);
    s_head (f, "llmq_breaker_transitions_total", "counter",
            "Circuit breaker state changes, by deployment and new state.");
    for (size_t s = 0; s < ns; s++) {
        llmq_metrics_escape (s_slot_name (self, s), esc, sizeof esc);
        for (int to = 0; to < S_NSTATE; to++) {
            snprintf (labels, sizeof labels, "deployment=\"%s\",to=\"%s\"", esc, llmq_breaker_state_name (to));
            s_sample (&o, "llmq_breaker_transitions_total", labels, self->transitions[s][to]);
        }
    }
    s_flush (&o);
    s_dep_gauge (self, &o, "llmq_deployment_in_flight", "Provider calls granted and not yet reported, by deployment.",
                 g, 1);
    s_dep_gauge (self, &o, "llmq_rate_window_requests", "Requests granted in the current rate window, by deployment.",
                 g, 2);
    s_dep_gauge (self, &o, "llmq_rate_window_tokens", "Tokens counted in the current rate window, by deployment.",
                 g, 3);
    free (g);
}

static void
s_render_models (llmq_metrics_t *self, FILE *f)
{
    char esc[512], oesc[512];
    s_head (f, "llmq_tokens_total", "counter",
            "Tokens of finished jobs, by model group, org and kind (prompt or completion).");
    for (size_t i = 0; i < self->nmodels; i++) {
        llmq_metrics_escape (self->models[i].name, esc, sizeof esc);
        for (size_t k = 0; k < self->models[i].norgs; k++) {
            const s_org_usage_t *u = &self->models[i].orgs[k];
            llmq_metrics_escape (self->org_names[u->org], oesc, sizeof oesc);
            fprintf (f, "llmq_tokens_total{model=\"%s\",org=\"%s\",kind=\"prompt\"} %llu\n", esc, oesc,
                     (unsigned long long) u->prompt);
            fprintf (f, "llmq_tokens_total{model=\"%s\",org=\"%s\",kind=\"completion\"} %llu\n", esc, oesc,
                     (unsigned long long) u->completion);
        }
    }
    s_head (f, "llmq_cost_usd_total", "counter",
            "Cost of finished jobs in USD at the deployments' prices, by model group and org.");
    for (size_t i = 0; i < self->nmodels; i++) {
        llmq_metrics_escape (self->models[i].name, esc, sizeof esc);
        for (size_t k = 0; k < self->models[i].norgs; k++) {
            const s_org_usage_t *u = &self->models[i].orgs[k];
            fprintf (f, "llmq_cost_usd_total{model=\"%s\",org=\"%s\"} %.6f\n", esc,
                     llmq_metrics_escape (self->org_names[u->org], oesc, sizeof oesc),
                     (double) u->cost_micro / 1e6);
        }
    }
}

/*  The workers' own figures (their last HEARTBEAT), one series per
    connected worker; zeros until its first HEARTBEAT with figures. */
static void
s_render_workers (FILE *f, const llmq_metrics_src_t *src)
{
    static const struct { const char *name, *type, *help; } m[] = {
        { "llmq_worker_calls_total", "counter", "Provider calls a worker reported since it started." },
        { "llmq_worker_cpu_seconds_total", "counter", "CPU time (user + system) a worker used since it started." },
        { "llmq_worker_in_flight", "gauge", "Provider calls a worker runs now." },
        { "llmq_worker_slots", "gauge", "Slots a worker has (concurrent calls)." },
    };
    size_t n = src->nworker_list, kept = n < LLMQ_METRICS_MAX_LABELS ? n : LLMQ_METRICS_MAX_LABELS;
    for (size_t k = 0; k < sizeof m / sizeof m[0]; k++) {
        s_head (f, m[k].name, m[k].type, m[k].help);
        double other = 0;
        for (size_t i = 0; i < n; i++) {
            const llmq_worker_figures_t *fg = src->worker_list[i].figures;
            double v = !fg ? 0 : k == 0 ? (double) fg->calls : k == 1 ? fg->cpu_seconds
                     : k == 2 ? (double) fg->in_flight : (double) fg->slots;
            if (i >= kept) {
                other += v;
                continue;
            }
            char id[128], host[512];
            fprintf (f, "%s{worker=\"%s\",host=\"%s\"} %.*f\n", m[k].name,
                     llmq_metrics_escape (src->worker_list[i].id, id, sizeof id),
                     llmq_metrics_escape (src->worker_list[i].host, host, sizeof host), k == 1 ? 6 : 0, v);
        }
        if (n > kept) {
            fprintf (f, "%s{worker=\"other\",host=\"\"} %.*f\n", m[k].name, k == 1 ? 6 : 0, other);
        }
    }
}

static void s_render (llmq_metrics_t *self, FILE *f, const llmq_metrics_src_t *src);

char *
llmq_metrics_render (llmq_metrics_t *self, const llmq_metrics_src_t *src, size_t *len)
{
    /*  Into a buffer sized from the last exposition (a memory stream that
        grows by doubling copies the text twice over); too small, once
        more with twice the room. */
    size_t cap = self->last_len + self->last_len / 4 + 65536;
    for (;; cap *= 2) {
        char *text = (char *) malloc (cap);
        FILE *f = text ? fmemopen (text, cap, "w") : NULL;
        if (!f) {
            free (text);
            return NULL;
        }
        s_render (self, f, src);
        long size = ftell (f);
        if (fclose (f) != 0 || size < 0 || (size_t) size + 1 >= cap) {
            free (text);
            continue;
        }
        text[size] = '\0';
        self->last_len = (size_t) size;
        if (len) {
            *len = (size_t) size;
        }
        return text;
    }
}

static void
s_render (llmq_metrics_t *self, FILE *f, const llmq_metrics_src_t *src)
{
    s_plain (f, "llmq_jobs_submitted_total", "counter", "Jobs accepted since the broker started.", src->submitted);
    s_head (f, "llmq_jobs_finished_total", "counter", "Jobs that reached a final state, by state.");
    const struct { const char *state; uint64_t n; } fin[] = {
        { "done", src->done }, { "failed", src->failed }, { "cancelled", src->cancelled },
        { "expired", src->expired }, { "dead", src->dead }
    };
    for (size_t i = 0; i < sizeof fin / sizeof fin[0]; i++) {
        fprintf (f, "llmq_jobs_finished_total{state=\"%s\"} %llu\n", fin[i].state, (unsigned long long) fin[i].n);
    }
    s_plain (f, "llmq_jobs_retried_total", "counter", "Failed attempts put back in the queue for a retry.", src->retried);
    s_plain (f, "llmq_jobs_restarted_total", "counter", "Broken streams started over (RESET sent).", src->restarted);
    s_plain (f, "llmq_jobs_degraded_total", "counter", "Dispatches served by a fallback group.", src->degraded);
    s_render_queue (f, src);
    s_head (f, "llmq_queue_wait_seconds", "histogram", "Time from enqueue to dispatch, observed at dispatch, by priority.");
    for (int p = 0; p < LLMQ_NPRIO; p++) {
        s_hist (f, "llmq_queue_wait_seconds", "priority", s_prio_names[p], s_wait_bounds, &self->wait[p]);
    }
    s_render_deployments (self, f, src);
    s_head (f, "llmq_failovers_total", "counter",
            "Retries dispatched to another deployment than the one their last attempt failed on, by group.");
    for (size_t g = 0; g < self->ngslots; g++) {
        char esc[512];
        fprintf (f, "llmq_failovers_total{group=\"%s\"} %llu\n",
                 llmq_metrics_escape (g < LLMQ_METRICS_MAX_LABELS ? self->config->groups[g].name : "other",
                                      esc, sizeof esc),
                 (unsigned long long) self->failovers[g]);
    }
    s_head (f, "llmq_dispatch_blocked_total", "counter",
            "Dispatch turns a group with ready jobs could not be served, by group and reason (open or limits).");
    for (size_t g = 0; g < self->ngslots; g++) {
        char esc[512];
        llmq_metrics_escape (g < LLMQ_METRICS_MAX_LABELS ? self->config->groups[g].name : "other", esc, sizeof esc);
        fprintf (f, "llmq_dispatch_blocked_total{group=\"%s\",reason=\"open\"} %llu\n", esc,
                 (unsigned long long) self->blocked[g][1]);
        fprintf (f, "llmq_dispatch_blocked_total{group=\"%s\",reason=\"limits\"} %llu\n", esc,
                 (unsigned long long) self->blocked[g][0]);
    }
    s_head (f, "llmq_rate_limited_pauses_total", "counter",
            "Rate-limited outcomes (429/529) that paused a deployment, by deployment.");
    for (size_t s = 0; s < self->nslots; s++) {
        char esc[512];
        fprintf (f, "llmq_rate_limited_pauses_total{deployment=\"%s\"} %llu\n",
                 llmq_metrics_escape (s_slot_name (self, s), esc, sizeof esc),
                 (unsigned long long) self->rate_paused[s]);
    }
    s_plain (f, "llmq_retry_budget_refused_total", "counter", "Retries refused because the deployment's retry budget was spent.",
             src->retry_budget_refused);
    s_plain (f, "llmq_probes_total", "counter", "Active health probes completed.", src->probes);
    llmq_store_cache_stats_t cs;
    memset (&cs, 0, sizeof cs);
    llmq_store_cache_stats (src->store, &cs);
    s_plain (f, "llmq_cache_hits_total", "counter", "Submits answered from the response cache.", src->cache_hits);
    s_plain (f, "llmq_cache_misses_total", "counter", "Cacheable submits not found in the response cache.", src->cache_misses);
    s_plain (f, "llmq_cache_entries", "gauge", "Entries held in the response cache.", cs.entries);
    uint64_t quota_refused = 0, budget_refused = 0, alerts = 0;
    if (src->tenants) {
        llmq_tenants_totals (src->tenants, &quota_refused, &budget_refused, &alerts);
    }
    s_plain (f, "llmq_quota_refused_total", "counter", "Submits refused by a tier quota.", quota_refused);
    s_plain (f, "llmq_budget_refused_total", "counter", "Submits refused by a spent budget.", budget_refused);
    s_plain (f, "llmq_budget_alerts_total", "counter", "Budget alerts raised.", alerts);
    s_render_models (self, f);
    s_plain (f, "llmq_workers", "gauge", "Workers connected.", src->workers);
    s_plain (f, "llmq_worker_slots_free", "gauge", "Jobs the connected workers may still be sent.", src->slots_free);
    s_render_workers (f, src);
    uint64_t used = 0, map = 0, max = 0;
    llmq_store_space (src->store, &used, &map, &max);
    s_plain (f, "llmq_store_used_bytes", "gauge", "Bytes of the store's map in use.", used);
    s_plain (f, "llmq_store_map_bytes", "gauge", "Current size of the store's map.", map);
    s_plain (f, "llmq_store_max_bytes", "gauge", "Limit the store's map may grow to.", max);
    s_plain (f, "llmq_commits_total", "counter", "Store commits (one per loop turn).", src->commits);
    s_head (f, "llmq_commit_seconds_total", "counter", "Time spent in store commits, sync included.");
    fprintf (f, "llmq_commit_seconds_total %.6f\n", (double) src->commit_us / 1e6);
    s_head (f, "llmq_commit_duration_seconds", "histogram", "Time of each store commit, sync included.");
    s_hist (f, "llmq_commit_duration_seconds", NULL, NULL, s_commit_bounds, &self->commit);
}
