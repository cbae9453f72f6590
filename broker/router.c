/*  router.c -- breakers, rate limits, balancing: see router.h.

    Per deployment:
    * the rate window is a deque of grants (time, tokens) in time order,
      trimmed from the front as they age out: requests in the window = its
      length, tokens = a running sum, so a check is O(1) amortised and the
      limit holds in every sliding window, not only in fixed ones;
    * the breaker counts calls and failures in 10 buckets over its window;
    * latency samples of successful calls sit in a ring of 256, sorted
      every 8 new samples for p50/p95.
    A grant id packs the deployment index, a probe bit and the grant's
    sequence number in its deployment, so an outcome finds its grant in the
    deque (to correct the token estimate) without a search.
*/
#include "router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"

#define S_BUCKETS       10          /* breaker window */
#define S_BUDGET_SLOTS  6           /* retry budget: 6 x 10 s */
#define S_BUDGET_SLOT_MS 10000
#define S_SAMPLES       256         /* latency ring */
#define S_MIN_SAMPLES   20          /* before the adaptive timeout applies */
#define S_SAVE_BUCKETS  64          /* rate window in a snapshot */
#define S_DEP_BITS      16
#define S_MAX_DEPS      (1u << (S_DEP_BITS - 1))

typedef struct {
    uint64_t t_ms;
    uint64_t tokens;
} s_grant_t;

typedef struct {
    uint64_t start_ms;
    uint32_t calls, failures;
} s_bucket_t;

typedef struct {
    uint64_t start_ms;
    uint32_t calls, retries;
} s_budget_t;

typedef struct {
    llmq_dep_policy_t p;
    char *name;
    /* rate window */
    s_grant_t *q;
    size_t qcap, qhead, qlen;
    uint64_t qtokens;
    uint64_t head_seq;              /* sequence number of q[qhead] */
    uint64_t next_seq;
    /* breaker */
    int state;
    uint64_t open_until_ms;
    uint32_t probes_in_flight;
    uint32_t half_successes;
    s_bucket_t buckets[S_BUCKETS];
    /* pause after a 429 or an exhausted quota */
    uint64_t paused_until_ms;
    /* concurrency */
    uint32_t in_flight;
    /* latency */
    uint32_t lat[S_SAMPLES];
    uint32_t nlat, lat_pos, lat_unsorted;
    uint64_t p50_ms, p95_ms, ewma_ms;
    /* retry budget */
    s_budget_t budget[S_BUDGET_SLOTS];
    /* weighted round robin */
    int64_t wrr_current;
    /* totals */
    uint64_t calls, failures, retries, retries_refused, probes;
    uint64_t last_grant_ms;         /* health probes go to deployments idle since */
    bool dirty;
} s_dep_t;

typedef struct {
    char *name;
    int strategy;
    size_t *deps;
    size_t ndeps;
    int fallback;
    size_t rr;                      /* round robin position */
} s_group_t;

struct llmq_router {
    s_dep_t *deps;
    size_t ndeps;
    s_group_t *groups;
    size_t ngroups;
    llmq_router_event_fn *on_event;
    void *event_arg;
    /* the candidates of the last pick, for the weighted strategy's grant */
    size_t *avail;
    size_t navail;
    size_t avail_group;
};

static const char *s_strategies[] = {
    "order", "round_robin", "weighted", "least_in_flight", "lowest_latency", "cheapest"
};

int
llmq_strategy_parse (const char *name)
{
    for (int i = 0; name && i < (int) (sizeof s_strategies / sizeof s_strategies[0]); i++) {
        if (strcmp (name, s_strategies[i]) == 0) {
            return i;
        }
    }
    return -1;
}

const char *
llmq_strategy_name (int strategy)
{
    return strategy >= 0 && strategy < (int) (sizeof s_strategies / sizeof s_strategies[0])
         ? s_strategies[strategy] : NULL;
}

const char *
llmq_breaker_state_name (int state)
{
    switch (state) {
        case LLMQ_BREAKER_CLOSED:    return "closed";
        case LLMQ_BREAKER_OPEN:      return "open";
        case LLMQ_BREAKER_HALF_OPEN: return "half_open";
        default:                     return "?";
    }
}

void
llmq_dep_policy_defaults (llmq_dep_policy_t *p)
{
    memset (p, 0, sizeof *p);
    p->rate_window_ms = 60000;
    p->rate_margin_ms = 0;
    p->weight = 1;
    p->breaker_failures = 5;
    p->breaker_min_calls = 5;
    p->breaker_window_ms = 60000;
    p->breaker_open_ms = 60000;
    p->breaker_probes = 1;
    p->breaker_successes = 2;
    p->timeout_ms = 60000;
    p->timeout_min_ms = 1000;
    p->timeout_max_ms = 600000;
    p->adaptive_timeout = true;
    p->retry_budget_pct = 20;
    p->retry_budget_min = 10;
}

llmq_router_t *
llmq_router_new (const llmq_dep_policy_t *deps, size_t ndeps,
                 const llmq_group_policy_t *groups, size_t ngroups)
{
    if (ndeps >= S_MAX_DEPS) {
        return NULL;
    }
    llmq_router_t *self = (llmq_router_t *) calloc (1, sizeof *self);
    if (!self) {
        return NULL;
    }
    self->deps = (s_dep_t *) calloc (ndeps ? ndeps : 1, sizeof (s_dep_t));
    self->groups = (s_group_t *) calloc (ngroups ? ngroups : 1, sizeof (s_group_t));
    self->avail = (size_t *) calloc (ndeps ? ndeps : 1, sizeof (size_t));
    if (!self->deps || !self->groups || !self->avail) {
        llmq_router_destroy (&self);
        return NULL;
    }
    self->ndeps = ndeps;
    for (size_t i = 0; i < ndeps; i++) {
        s_dep_t *d = &self->deps[i];
        d->p = deps[i];
        d->name = strdup (deps[i].name ? deps[i].name : "");
        d->p.name = d->name;
        if (d->p.rate_window_ms == 0) {
            d->p.rate_window_ms = 60000;
        }
        if (d->p.breaker_window_ms < S_BUCKETS) {
            d->p.breaker_window_ms = S_BUCKETS;
        }
        if (d->p.breaker_probes == 0) {
            d->p.breaker_probes = 1;
        }
        if (d->p.weight == 0) {
            d->p.weight = 1;
        }
        if (!d->name) {
            llmq_router_destroy (&self);
            return NULL;
        }
    }
    self->ngroups = ngroups;
    for (size_t i = 0; i < ngroups; i++) {
        s_group_t *g = &self->groups[i];
        g->name = strdup (groups[i].name ? groups[i].name : "");
        g->strategy = groups[i].strategy;
        g->fallback = groups[i].fallback;
        g->ndeps = groups[i].ndeps;
        g->deps = (size_t *) calloc (g->ndeps ? g->ndeps : 1, sizeof (size_t));
        if (!g->name || !g->deps) {
            llmq_router_destroy (&self);
            return NULL;
        }
        for (size_t j = 0; j < g->ndeps; j++) {
            g->deps[j] = groups[i].deps[j] < ndeps ? groups[i].deps[j] : 0;
        }
    }
    return self;
}

void
llmq_router_destroy (llmq_router_t **self_p)
{
    llmq_router_t *self = *self_p;
    if (!self) {
        return;
    }
    for (size_t i = 0; self->deps && i < self->ndeps; i++) {
        free (self->deps[i].name);
        free (self->deps[i].q);
    }
    for (size_t i = 0; self->groups && i < self->ngroups; i++) {
        free (self->groups[i].name);
        free (self->groups[i].deps);
    }
    free (self->deps);
    free (self->groups);
    free (self->avail);
    free (self);
    *self_p = NULL;
}

void
llmq_router_on_event (llmq_router_t *self, llmq_router_event_fn *fn, void *arg)
{
    self->on_event = fn;
    self->event_arg = arg;
}

/* ------------------------------------------------------------------------
   Rate window
   ------------------------------------------------------------------------ */

static uint64_t
s_rate_span (const s_dep_t *d)
{
    return d->p.rate_window_ms + d->p.rate_margin_ms;
}

static s_grant_t *
s_q_at (s_dep_t *d, size_t i)
{
    return &d->q[(d->qhead + i) % d->qcap];
}

/*  Forget grants that left the window. */
static void
s_q_trim (s_dep_t *d, uint64_t now_ms)
{
    uint64_t span = s_rate_span (d);
    while (d->qlen > 0) {
        s_grant_t *g = s_q_at (d, 0);
        if (g->t_ms + span > now_ms) {
            break;
        }
        d->qtokens -= g->tokens;
        d->qhead = (d->qhead + 1) % d->qcap;
        d->qlen--;
        d->head_seq++;
        d->dirty = true;
    }
}

static int
s_q_push (s_dep_t *d, uint64_t t_ms, uint64_t tokens)
{
    if (d->qlen == d->qcap) {
        size_t cap = d->qcap ? d->qcap * 2 : 64;
        s_grant_t *q = (s_grant_t *) malloc (cap * sizeof *q);
        if (!q) {
            return -1;
        }
        for (size_t i = 0; i < d->qlen; i++) {
            q[i] = *s_q_at (d, i);
        }
        free (d->q);
        d->q = q;
        d->qcap = cap;
        d->qhead = 0;
    }
    *s_q_at (d, d->qlen) = (s_grant_t) { t_ms, tokens };
    d->qlen++;
    d->qtokens += tokens;
    return 0;
}

/*  When the rate window lets one more call of `tokens` through: now_ms if
    it does now. */
static uint64_t
s_rate_free_at (s_dep_t *d, uint64_t tokens, uint64_t now_ms)
{
    s_q_trim (d, now_ms);
    uint64_t span = s_rate_span (d);
    uint64_t at = now_ms;
    if (d->p.rpm && d->qlen >= d->p.rpm) {
        uint64_t t = s_q_at (d, d->qlen - d->p.rpm)->t_ms + span;
        at = t > at ? t : at;
    }
    if (d->p.tpm && d->qlen > 0 && d->qtokens + tokens > d->p.tpm) {
        /*  The oldest grants must leave until it fits; one bigger than
            the whole budget goes alone into an empty window. */
        uint64_t sum = d->qtokens;
        size_t i = 0;
        while (i < d->qlen && (sum + tokens > d->p.tpm || tokens > d->p.tpm)) {
            sum -= s_q_at (d, i)->tokens;
            i++;
        }
        uint64_t t = s_q_at (d, i - 1)->t_ms + span;
        at = t > at ? t : at;
    }
    return at;
}

/* ------------------------------------------------------------------------
   Breaker
   ------------------------------------------------------------------------ */

static void
s_set_state (llmq_router_t *self, size_t di, int to, const char *reason, uint64_t now_ms)
{
    s_dep_t *d = &self->deps[di];
    int from = d->state;
    if (from == to) {
        return;
    }
    d->state = to;
    d->dirty = true;
    if (to == LLMQ_BREAKER_CLOSED) {
        memset (d->buckets, 0, sizeof d->buckets);
    }
    if (to == LLMQ_BREAKER_HALF_OPEN) {
        d->half_successes = 0;
    }
    if (self->on_event) {
        self->on_event (self->event_arg, di, from, to, reason, now_ms);
    }
}

static s_bucket_t *
s_bucket (s_dep_t *d, uint64_t now_ms)
{
    uint64_t width = d->p.breaker_window_ms / S_BUCKETS;
    uint64_t start = now_ms - now_ms % width;
    s_bucket_t *b = &d->buckets[(start / width) % S_BUCKETS];
    if (b->start_ms != start) {
        *b = (s_bucket_t) { start, 0, 0 };
    }
    return b;
}

static void
s_window_counts (const s_dep_t *d, uint64_t now_ms, uint32_t *calls, uint32_t *failures)
{
    *calls = *failures = 0;
    for (int i = 0; i < S_BUCKETS; i++) {
        const s_bucket_t *b = &d->buckets[i];
        if (b->start_ms + d->p.breaker_window_ms > now_ms && b->start_ms <= now_ms) {
            *calls += b->calls;
            *failures += b->failures;
        }
    }
}

/*  Open ran out: half-open. */
static void
s_breaker_tick (llmq_router_t *self, size_t di, uint64_t now_ms)
{
    s_dep_t *d = &self->deps[di];
    if (d->state == LLMQ_BREAKER_OPEN && now_ms >= d->open_until_ms) {
        s_set_state (self, di, LLMQ_BREAKER_HALF_OPEN, "open timeout over: probing", now_ms);
    }
}

static void
s_breaker_open (llmq_router_t *self, size_t di, const char *reason, uint64_t now_ms)
{
    s_dep_t *d = &self->deps[di];
    d->open_until_ms = now_ms + d->p.breaker_open_ms;
    s_set_state (self, di, LLMQ_BREAKER_OPEN, reason, now_ms);
}

static bool
s_counts_as_failure (int ec)
{
    return ec == LLMQ_EC_SERVER || ec == LLMQ_EC_TIMEOUT || ec == LLMQ_EC_CONNECTION
        || ec == LLMQ_EC_BAD_RESPONSE;
}

/* ------------------------------------------------------------------------
   Picking
   ------------------------------------------------------------------------ */

/*  When `d` could take a call of `tokens`: now_ms if now. `blocker` names
    what holds it back otherwise. */
typedef enum { S_FREE, S_OPEN, S_PROBING, S_PAUSED, S_RATE, S_BUSY } s_block_t;

static uint64_t
s_free_at (llmq_router_t *self, size_t di, uint64_t tokens, uint64_t now_ms, s_block_t *blocker)
{
    s_dep_t *d = &self->deps[di];
    s_breaker_tick (self, di, now_ms);
    *blocker = S_FREE;
    if (d->state == LLMQ_BREAKER_OPEN) {
        *blocker = S_OPEN;
        return d->open_until_ms;
    }
    if (d->state == LLMQ_BREAKER_HALF_OPEN && d->probes_in_flight >= d->p.breaker_probes) {
        *blocker = S_PROBING;
        return 0;
    }
    if (d->paused_until_ms > now_ms) {
        *blocker = S_PAUSED;
        return d->paused_until_ms;
    }
    if (d->p.max_concurrent && d->in_flight >= d->p.max_concurrent) {
        *blocker = S_BUSY;
        return 0;
    }
    uint64_t at = s_rate_free_at (d, tokens, now_ms);
    if (at > now_ms) {
        *blocker = S_RATE;
    }
    return at;
}

static bool
s_better (const llmq_router_t *self, const s_group_t *g, size_t a, size_t b)
{
    const s_dep_t *da = &self->deps[a], *db = &self->deps[b];
    switch (g->strategy) {
        case LLMQ_STRATEGY_ORDER:
            return da->p.order < db->p.order;
        case LLMQ_STRATEGY_LEAST_IN_FLIGHT:
            return da->in_flight < db->in_flight;
        case LLMQ_STRATEGY_LOWEST_LATENCY:
            /* untried first, so that every deployment gets measured */
            if ((da->nlat == 0) != (db->nlat == 0)) {
                return da->nlat == 0;
            }
            return da->ewma_ms < db->ewma_ms;
        case LLMQ_STRATEGY_CHEAPEST:
            return da->p.price < db->p.price;
        case LLMQ_STRATEGY_WEIGHTED:
            return da->wrr_current + da->p.weight > db->wrr_current + db->p.weight;
        default:
            return false;           /* round robin: the first found */
    }
}

static void
s_fmt_time (uint64_t ms, char *out, size_t len)
{
    time_t t = (time_t) (ms / 1000);
    struct tm tm;
    localtime_r (&t, &tm);
    strftime (out, len, "%H:%M:%S", &tm);
}

/*  Why nothing of group `g` can take a job. */
static void
s_explain (llmq_router_t *self, const s_group_t *g, uint64_t tokens, uint64_t now_ms,
           char *why, size_t whylen)
{
    bool all_open = g->ndeps > 0;
    uint64_t until = 0;
    for (size_t j = 0; j < g->ndeps; j++) {
        s_block_t b;
        uint64_t at = s_free_at (self, g->deps[j], tokens, now_ms, &b);
        if (b != S_OPEN) {
            all_open = false;
        }
        if (at > until) {
            until = at;
        }
    }
    if (g->ndeps == 0) {
        snprintf (why, whylen, "group %s has no deployments", g->name);
        return;
    }
    char hm[16];
    if (all_open) {
        uint64_t first = UINT64_MAX;
        for (size_t j = 0; j < g->ndeps; j++) {
            uint64_t u = self->deps[g->deps[j]].open_until_ms;
            first = u < first ? u : first;
        }
        s_fmt_time (first, hm, sizeof hm);
        snprintf (why, whylen, "all deployments of group %s open until %s", g->name, hm);
        return;
    }
    size_t off = (size_t) snprintf (why, whylen, "no deployment of group %s free:", g->name);
    for (size_t j = 0; j < g->ndeps && off < whylen; j++) {
        const s_dep_t *d = &self->deps[g->deps[j]];
        s_block_t b;
        uint64_t at = s_free_at (self, g->deps[j], tokens, now_ms, &b);
        s_fmt_time (at, hm, sizeof hm);
        const char *sep = j ? "," : "";
        int n = 0;
        switch (b) {
            case S_OPEN:    n = snprintf (why + off, whylen - off, "%s %s open until %s", sep, d->name, hm); break;
            case S_PROBING: n = snprintf (why + off, whylen - off, "%s %s half-open, probing", sep, d->name); break;
            case S_PAUSED:  n = snprintf (why + off, whylen - off, "%s %s rate limited by the provider until %s",
                                          sep, d->name, hm); break;
            case S_RATE:    n = snprintf (why + off, whylen - off, "%s %s at its rate limit until %s",
                                          sep, d->name, hm); break;
            case S_BUSY:    n = snprintf (why + off, whylen - off, "%s %s at max_concurrent %u",
                                          sep, d->name, d->p.max_concurrent); break;
            default:        n = snprintf (why + off, whylen - off, "%s %s free", sep, d->name); break;
        }
        off += n > 0 ? (size_t) n : 0;
    }
}

/*  Pick in one group; -1 if none is free (until: earliest known time). */
static int
s_pick_group (llmq_router_t *self, size_t gi, uint64_t tokens, size_t avoid, uint64_t now_ms,
              size_t *dep, uint64_t *until_ms)
{
    s_group_t *g = &self->groups[gi];
    self->navail = 0;
    self->avail_group = gi;
    uint64_t earliest = UINT64_MAX;
    bool unknown = false;
    for (size_t k = 0; k < g->ndeps; k++) {
        size_t di = g->deps[(g->rr + k) % g->ndeps];
        s_block_t b;
        uint64_t at = s_free_at (self, di, tokens, now_ms, &b);
        if (b == S_FREE) {
            self->avail[self->navail++] = di;
        }
        else
        if (at == 0) {
            unknown = true;
        }
        else
        if (at < earliest) {
            earliest = at;
        }
    }
    if (self->navail == 0) {
        *until_ms = unknown || earliest == UINT64_MAX ? 0 : earliest;
        return -1;
    }
    size_t best = SIZE_MAX;
    for (size_t k = 0; k < self->navail; k++) {
        size_t di = self->avail[k];
        if (di == avoid && self->navail > 1) {
            continue;               /* a retry goes elsewhere if it can */
        }
        if (best == SIZE_MAX || s_better (self, g, di, best)) {
            best = di;
        }
    }
    *dep = best;
    return 0;
}

int
llmq_router_pick (llmq_router_t *self, size_t group, uint64_t tokens, size_t avoid,
                  uint64_t now_ms, llmq_pick_t *pick, uint64_t *until_ms, char *why, size_t whylen)
{
    *until_ms = 0;
    if (why && whylen) {
        why[0] = '\0';
    }
    if (group >= self->ngroups) {
        if (why && whylen) {
            snprintf (why, whylen, "unknown group");
        }
        return -1;
    }
    size_t gi = group;
    uint64_t first_until = 0;
    for (int hop = 0; hop < 4; hop++) {
        size_t dep;
        uint64_t until;
        if (s_pick_group (self, gi, tokens, avoid, now_ms, &dep, &until) == 0) {
            pick->dep = dep;
            pick->group = gi;
            pick->degraded = hop > 0;
            pick->probe = self->deps[dep].state == LLMQ_BREAKER_HALF_OPEN;
            return 0;
        }
        if (hop == 0) {
            first_until = until;
        }
        int fb = self->groups[gi].fallback;
        if (fb < 0 || (size_t) fb >= self->ngroups || (size_t) fb == group) {
            break;
        }
        gi = (size_t) fb;
    }
    *until_ms = first_until;
    if (why && whylen) {
        s_explain (self, &self->groups[group], tokens, now_ms, why, whylen);
    }
    return -1;
}

bool
llmq_router_all_open (const llmq_router_t *self, size_t group)
{
    if (group >= self->ngroups || self->groups[group].ndeps == 0) {
        return false;
    }
    const s_group_t *g = &self->groups[group];
    for (size_t k = 0; k < g->ndeps; k++) {
        if (self->deps[g->deps[k]].state != LLMQ_BREAKER_OPEN) {
            return false;
        }
    }
    return true;
}

uint64_t
llmq_router_grant (llmq_router_t *self, const llmq_pick_t *pick, uint64_t tokens, bool retry,
                   uint64_t now_ms)
{
    s_dep_t *d = &self->deps[pick->dep];
    s_group_t *g = &self->groups[pick->group];
    /* balancing state */
    for (size_t k = 0; k < g->ndeps; k++) {
        if (g->deps[k] == pick->dep) {
            g->rr = (k + 1) % g->ndeps;
            break;
        }
    }
    if (g->strategy == LLMQ_STRATEGY_WEIGHTED && self->avail_group == pick->group) {
        int64_t total = 0;
        for (size_t k = 0; k < self->navail; k++) {
            s_dep_t *a = &self->deps[self->avail[k]];
            a->wrr_current += a->p.weight;
            total += a->p.weight;
        }
        d->wrr_current -= total;
    }
    /* limits */
    s_q_trim (d, now_ms);
    uint64_t seq = d->head_seq + d->qlen;
    if (s_q_push (d, now_ms, tokens) != 0) {
        seq = UINT64_MAX >> (S_DEP_BITS + 1);  /* not tracked: estimate kept */
    }
    d->in_flight++;
    d->calls++;
    d->last_grant_ms = now_ms;
    d->dirty = true;
    bool probe = d->state == LLMQ_BREAKER_HALF_OPEN;
    if (probe) {
        d->probes_in_flight++;
        d->probes++;
    }
    s_budget_t *b = &d->budget[(now_ms / S_BUDGET_SLOT_MS) % S_BUDGET_SLOTS];
    uint64_t start = now_ms - now_ms % S_BUDGET_SLOT_MS;
    if (b->start_ms != start) {
        *b = (s_budget_t) { start, 0, 0 };
    }
    b->calls++;
    (void) retry;
    return (seq << (S_DEP_BITS + 1)) | ((uint64_t) probe << S_DEP_BITS) | pick->dep;
}

/* ------------------------------------------------------------------------
   Outcomes
   ------------------------------------------------------------------------ */

static int
s_cmp_u32 (const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;
    return x < y ? -1 : x > y;
}

static void
s_percentiles (s_dep_t *d)
{
    uint32_t sorted[S_SAMPLES];
    memcpy (sorted, d->lat, d->nlat * sizeof (uint32_t));
    qsort (sorted, d->nlat, sizeof (uint32_t), s_cmp_u32);
    d->p50_ms = sorted[(d->nlat - 1) / 2];
    d->p95_ms = sorted[(d->nlat * 95 + 99) / 100 - 1];
    d->lat_unsorted = 0;
}

static void
s_latency (s_dep_t *d, uint64_t ms)
{
    uint32_t v = ms > UINT32_MAX ? UINT32_MAX : (uint32_t) ms;
    d->lat[d->lat_pos] = v;
    d->lat_pos = (d->lat_pos + 1) % S_SAMPLES;
    if (d->nlat < S_SAMPLES) {
        d->nlat++;
    }
    d->ewma_ms = d->nlat == 1 ? v : (d->ewma_ms * 4 + v) / 5;
    if (++d->lat_unsorted >= 8 || d->nlat <= S_MIN_SAMPLES) {
        s_percentiles (d);
    }
}

void
llmq_router_outcome (llmq_router_t *self, uint64_t grant, const llmq_outcome_t *o, uint64_t now_ms)
{
    size_t di = (size_t) (grant & ((1u << S_DEP_BITS) - 1));
    if (di >= self->ndeps) {
        return;
    }
    bool probe = (grant >> S_DEP_BITS) & 1;
    uint64_t seq = grant >> (S_DEP_BITS + 1);
    s_dep_t *d = &self->deps[di];
    d->dirty = true;
    if (d->in_flight > 0) {
        d->in_flight--;
    }
    if (probe && d->probes_in_flight > 0) {
        d->probes_in_flight--;
    }
    /* the token estimate becomes what was used */
    if (o->tokens && seq >= d->head_seq && seq < d->head_seq + d->qlen) {
        s_grant_t *g = s_q_at (d, (size_t) (seq - d->head_seq));
        d->qtokens = d->qtokens - g->tokens + o->tokens;
        g->tokens = o->tokens;
    }
    /* the provider's view of its quota */
    if (o->reset_ms && (o->remaining_requests == 0 || o->remaining_tokens == 0)
        && now_ms + o->reset_ms > d->paused_until_ms) {
        d->paused_until_ms = now_ms + o->reset_ms;
    }
    int ec = o->error_class;
    if (ec == LLMQ_EC_CANCELLED) {
        return;
    }
    if (ec == LLMQ_EC_RATE_LIMITED) {
        uint64_t ms = o->retry_after_ms ? o->retry_after_ms : 1000;
        if (now_ms + ms > d->paused_until_ms) {
            d->paused_until_ms = now_ms + ms;
        }
        return;
    }
    bool failed = s_counts_as_failure (ec);
    if (!failed && ec != LLMQ_EC_NONE) {
        return;                     /* the request's fault, not the deployment's */
    }
    if (failed) {
        d->failures++;
    }
    else if (o->latency_ms) {
        s_latency (d, o->latency_ms);
    }
    s_breaker_tick (self, di, now_ms);
    if (d->state == LLMQ_BREAKER_HALF_OPEN) {
        if (!probe) {
            return;                 /* a call from before it opened */
        }
        if (failed) {
            s_breaker_open (self, di, "probe failed", now_ms);
        }
        else
        if (++d->half_successes >= d->p.breaker_successes) {
            s_set_state (self, di, LLMQ_BREAKER_CLOSED, "probes succeeded", now_ms);
        }
        return;
    }
    if (d->state == LLMQ_BREAKER_OPEN) {
        return;                     /* late outcomes of calls made before it opened */
    }
    s_bucket_t *b = s_bucket (d, now_ms);
    b->calls++;
    if (!failed) {
        return;
    }
    b->failures++;
    uint32_t calls, failures;
    s_window_counts (d, now_ms, &calls, &failures);
    bool open = d->p.breaker_failure_pct
              ? calls >= d->p.breaker_min_calls && failures * 100 >= d->p.breaker_failure_pct * calls
              : failures >= d->p.breaker_failures && calls >= d->p.breaker_min_calls;
    if (open) {
        char reason[96];
        snprintf (reason, sizeof reason, "%u of %u calls failed in %llu ms", failures, calls,
                  (unsigned long long) d->p.breaker_window_ms);
        s_breaker_open (self, di, reason, now_ms);
    }
}

int
llmq_router_probe_wanted (llmq_router_t *self, size_t dep, uint64_t now_ms, uint64_t idle_ms)
{
    if (dep >= self->ndeps) {
        return 0;
    }
    s_dep_t *d = &self->deps[dep];
    s_block_t b;
    if (s_free_at (self, dep, 1, now_ms, &b) > now_ms || b != S_FREE) {
        return 0;
    }
    if (d->state == LLMQ_BREAKER_HALF_OPEN) {
        return 1;
    }
    if (d->last_grant_ms == 0) {
        d->last_grant_ms = now_ms;  /* idle counts from the first look */
        return 0;
    }
    return idle_ms && d->last_grant_ms + idle_ms <= now_ms ? 2 : 0;
}

bool
llmq_router_retry_allowed (llmq_router_t *self, size_t dep, uint64_t now_ms)
{
    if (dep >= self->ndeps) {
        return true;
    }
    s_dep_t *d = &self->deps[dep];
    uint64_t calls = 0, retries = 0;
    for (int i = 0; i < S_BUDGET_SLOTS; i++) {
        const s_budget_t *b = &d->budget[i];
        if (b->start_ms + S_BUDGET_SLOTS * S_BUDGET_SLOT_MS > now_ms) {
            calls += b->calls;
            retries += b->retries;
        }
    }
    uint64_t allowed = calls * d->p.retry_budget_pct / 100;
    if (allowed < d->p.retry_budget_min) {
        allowed = d->p.retry_budget_min;
    }
    if (retries + 1 > allowed) {
        d->retries_refused++;
        return false;
    }
    s_budget_t *b = &d->budget[(now_ms / S_BUDGET_SLOT_MS) % S_BUDGET_SLOTS];
    uint64_t start = now_ms - now_ms % S_BUDGET_SLOT_MS;
    if (b->start_ms != start) {
        *b = (s_budget_t) { start, 0, 0 };
    }
    b->retries++;
    d->retries++;
    return true;
}

uint64_t
llmq_router_timeout_ms (llmq_router_t *self, size_t dep)
{
    if (dep >= self->ndeps) {
        return 60000;
    }
    s_dep_t *d = &self->deps[dep];
    if (!d->p.adaptive_timeout || d->nlat < S_MIN_SAMPLES) {
        return d->p.timeout_ms;
    }
    uint64_t t = d->p95_ms * 3 / 2;
    if (t < d->p.timeout_min_ms) {
        t = d->p.timeout_min_ms;
    }
    if (t > d->p.timeout_max_ms) {
        t = d->p.timeout_max_ms;
    }
    return t;
}

void
llmq_router_reset (llmq_router_t *self, size_t dep, uint64_t now_ms)
{
    if (dep >= self->ndeps) {
        return;
    }
    s_dep_t *d = &self->deps[dep];
    d->paused_until_ms = 0;
    d->open_until_ms = 0;
    memset (d->buckets, 0, sizeof d->buckets);
    s_set_state (self, dep, LLMQ_BREAKER_CLOSED, "reset by an operator", now_ms);
    d->dirty = true;
}

void
llmq_router_view (llmq_router_t *self, size_t dep, uint64_t now_ms, llmq_dep_view_t *v)
{
    memset (v, 0, sizeof *v);
    if (dep >= self->ndeps) {
        return;
    }
    s_dep_t *d = &self->deps[dep];
    s_breaker_tick (self, dep, now_ms);
    s_q_trim (d, now_ms);
    v->breaker = d->state;
    v->open_until_ms = d->state == LLMQ_BREAKER_OPEN ? d->open_until_ms : 0;
    v->paused_until_ms = d->paused_until_ms > now_ms ? d->paused_until_ms : 0;
    v->in_flight = d->in_flight;
    v->window_requests = (uint32_t) d->qlen;
    v->window_tokens = d->qtokens;
    s_window_counts (d, now_ms, &v->window_calls, &v->window_failures);
    v->calls = d->calls;
    v->failures = d->failures;
    v->retries = d->retries;
    v->retries_refused = d->retries_refused;
    v->probes = d->probes;
    v->latency_ewma_ms = d->ewma_ms;
    v->p50_ms = d->p50_ms;
    v->p95_ms = d->p95_ms;
    v->samples = d->nlat;
    v->timeout_ms = llmq_router_timeout_ms (self, dep);
}

/* ------------------------------------------------------------------------
   Snapshots
   ------------------------------------------------------------------------ */

#define S_SNAP_VERSION 1

typedef struct {
    uint32_t version;
    int32_t  state;
    uint64_t open_until_ms;
    uint64_t paused_until_ms;
    uint32_t half_successes;
    uint32_t nlat, lat_pos;
    uint32_t pad;
    uint64_t saved_ms;              /* the rate buckets end here */
    uint64_t bucket_ms;             /* width of one rate bucket */
    uint64_t ewma_ms;
    uint64_t calls, failures, retries, retries_refused, probes;
    s_bucket_t buckets[S_BUCKETS];
    s_budget_t budget[S_BUDGET_SLOTS];
    uint32_t rate_count[S_SAVE_BUCKETS];
    uint64_t rate_tokens[S_SAVE_BUCKETS];
    uint32_t lat[S_SAMPLES];
} s_snap_t;

size_t
llmq_router_save_size (void)
{
    return sizeof (s_snap_t);
}

bool
llmq_router_dirty (const llmq_router_t *self, size_t dep)
{
    return dep < self->ndeps && self->deps[dep].dirty;
}

size_t
llmq_router_save (llmq_router_t *self, size_t dep, void *buf, size_t cap)
{
    if (dep >= self->ndeps || cap < sizeof (s_snap_t)) {
        return 0;
    }
    s_dep_t *d = &self->deps[dep];
    s_snap_t *s = (s_snap_t *) calloc (1, sizeof *s);
    if (!s) {
        return 0;
    }
    s->version = S_SNAP_VERSION;
    s->state = d->state;
    s->open_until_ms = d->open_until_ms;
    s->paused_until_ms = d->paused_until_ms;
    s->half_successes = d->half_successes;
    s->nlat = d->nlat;
    s->lat_pos = d->lat_pos;
    s->ewma_ms = d->ewma_ms;
    s->calls = d->calls;
    s->failures = d->failures;
    s->retries = d->retries;
    s->retries_refused = d->retries_refused;
    s->probes = d->probes;
    memcpy (s->buckets, d->buckets, sizeof s->buckets);
    memcpy (s->budget, d->budget, sizeof s->budget);
    memcpy (s->lat, d->lat, sizeof s->lat);
    /*  Rate window: bucket k ends at saved - (63 - k) * width. */
    uint64_t last = d->qlen ? s_q_at (d, d->qlen - 1)->t_ms : 0;
    uint64_t span = s_rate_span (d);
    s->bucket_ms = span / S_SAVE_BUCKETS + 1;
    s->saved_ms = last;
    for (size_t i = 0; i < d->qlen; i++) {
        const s_grant_t *g = s_q_at (d, i);
        uint64_t back = (last - g->t_ms) / s->bucket_ms;
        size_t k = back >= S_SAVE_BUCKETS ? 0 : S_SAVE_BUCKETS - 1 - (size_t) back;
        s->rate_count[k]++;
        s->rate_tokens[k] += g->tokens;
    }
    memcpy (buf, s, sizeof *s);
    free (s);
    d->dirty = false;
    return sizeof (s_snap_t);
}

int
llmq_router_load (llmq_router_t *self, size_t dep, const void *buf, size_t len, uint64_t now_ms)
{
    if (dep >= self->ndeps || len != sizeof (s_snap_t)) {
        return -1;
    }
    s_snap_t *s = (s_snap_t *) malloc (sizeof *s);
    if (!s) {
        return -1;
    }
    memcpy (s, buf, sizeof *s);
    if (s->version != S_SNAP_VERSION || s->nlat > S_SAMPLES || s->lat_pos >= S_SAMPLES
        || s->state < 0 || s->state > LLMQ_BREAKER_HALF_OPEN || s->bucket_ms == 0) {
        free (s);
        return -1;
    }
    s_dep_t *d = &self->deps[dep];
    /* A half-open breaker's probes died with the broker: open it again
       for a fresh round of probes at once. */
    d->state = s->state == LLMQ_BREAKER_HALF_OPEN ? LLMQ_BREAKER_OPEN : s->state;
    d->open_until_ms = s->state == LLMQ_BREAKER_HALF_OPEN ? now_ms : s->open_until_ms;
    d->paused_until_ms = s->paused_until_ms;
    d->half_successes = 0;
    d->probes_in_flight = 0;
    d->in_flight = 0;
    d->nlat = s->nlat;
    d->lat_pos = s->lat_pos;
    d->ewma_ms = s->ewma_ms;
    d->calls = s->calls;
    d->failures = s->failures;
    d->retries = s->retries;
    d->retries_refused = s->retries_refused;
    d->probes = s->probes;
    memcpy (d->buckets, s->buckets, sizeof d->buckets);
    memcpy (d->budget, s->budget, sizeof d->budget);
    memcpy (d->lat, s->lat, sizeof d->lat);
    if (d->nlat > 0) {
        s_percentiles (d);
    }
    /* each bucket's grants as made at its end: holds back at least as long */
    d->qhead = d->qlen = 0;
    d->qtokens = 0;
    for (size_t k = 0; k < S_SAVE_BUCKETS; k++) {
        uint64_t end = s->saved_ms - (S_SAVE_BUCKETS - 1 - k) * s->bucket_ms;
        for (uint32_t i = 0; i < s->rate_count[k]; i++) {
            if (s_q_push (d, end, i == 0 ? s->rate_tokens[k] : 0) != 0) {
                free (s);
                return -1;
            }
        }
    }
    d->head_seq = 0;
    free (s);
    s_q_trim (d, now_ms);
    d->dirty = false;
    return 0;
}
