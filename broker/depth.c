/*  depth.c -- queued jobs per tenant: see depth.h. */
#include "depth.h"

#include <czmq.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t queued;
    bool doomed;                    /* at zero, to be dropped by settle */
    char name[];
} s_entry_t;

typedef struct {
    s_entry_t *entry;
    int delta;
} s_change_t;

struct llmq_depth {
    zhashx_t *map;                  /* tenant -> s_entry_t (owned) */
    s_change_t *journal;
    size_t njournal, cap;
};

static void
s_free (void **item)
{
    free (*item);
    *item = NULL;
}

llmq_depth_t *
llmq_depth_new (void)
{
    llmq_depth_t *self = (llmq_depth_t *) calloc (1, sizeof *self);
    if (!self || !(self->map = zhashx_new ())) {
        free (self);
        return NULL;
    }
    zhashx_set_destructor (self->map, s_free);
    return self;
}

void
llmq_depth_destroy (llmq_depth_t **self_p)
{
    llmq_depth_t *self = *self_p;
    if (self) {
        zhashx_destroy (&self->map);
        free (self->journal);
        free (self);
        *self_p = NULL;
    }
}

const char *
llmq_depth_tenant (char *buf, size_t len, const char *user, const char *org)
{
    if (org && *org) {
        snprintf (buf, len, "org:%s", org);
    }
    else if (user && *user) {
        snprintf (buf, len, "user:%s", user);
    }
    else {
        snprintf (buf, len, "-");
    }
    return buf;
}

int
llmq_depth_add (llmq_depth_t *self, const char *user, const char *org, int delta)
{
    char name[300];
    llmq_depth_tenant (name, sizeof name, user, org);
    if (self->njournal == self->cap) {
        size_t cap = self->cap ? self->cap * 2 : 64;
        s_change_t *j = (s_change_t *) realloc (self->journal, cap * sizeof *j);
        if (!j) {
            return -1;
        }
        self->journal = j;
        self->cap = cap;
    }
    s_entry_t *e = (s_entry_t *) zhashx_lookup (self->map, name);
    /*  A count never goes below zero: a job that was never counted must
        not wrap the gauge around. */
    if (delta < 0 && (!e || e->queued == 0)) {
        return 0;
    }
    if (!e) {
        size_t n = strlen (name) + 1;
        if (!(e = (s_entry_t *) calloc (1, sizeof *e + n))) {
            return -1;
        }
        memcpy (e->name, name, n);
        if (zhashx_insert (self->map, e->name, e) != 0) {
            free (e);
            return -1;
        }
    }
    e->queued += (uint64_t) (int64_t) delta;
    self->journal[self->njournal++] = (s_change_t) { e, delta };
    return 0;
}

size_t
llmq_depth_mark (llmq_depth_t *self)
{
    return self->njournal;
}

void
llmq_depth_undo (llmq_depth_t *self, size_t mark)
{
    while (self->njournal > mark) {
        s_change_t *c = &self->journal[--self->njournal];
        c->entry->queued -= (uint64_t) (int64_t) c->delta;
    }
}

void
llmq_depth_settle (llmq_depth_t *self)
{
    /*  Entries at zero that this transaction touched, each once, then
        dropped (the journal's pointers die with it). */
    size_t ndoomed = 0;
    for (size_t i = 0; i < self->njournal; i++) {
        s_entry_t *e = self->journal[i].entry;
        if (e->queued == 0 && !e->doomed) {
            e->doomed = true;
            self->journal[ndoomed++].entry = e;
        }
    }
    for (size_t i = 0; i < ndoomed; i++) {
        zhashx_delete (self->map, self->journal[i].entry->name);
    }
    self->njournal = 0;
}

static int
s_deeper (const void *a, const void *b)
{
    const llmq_depth_entry_t *x = (const llmq_depth_entry_t *) a, *y = (const llmq_depth_entry_t *) b;
    if (x->queued != y->queued) {
        return x->queued > y->queued ? -1 : 1;
    }
    return strcmp (x->tenant, y->tenant);
}

size_t
llmq_depth_top (llmq_depth_t *self, llmq_depth_entry_t *out, size_t max, size_t *tenants, uint64_t *rest)
{
    size_t n = 0, all = zhashx_size (self->map);
    llmq_depth_entry_t *v = (llmq_depth_entry_t *) malloc ((all ? all : 1) * sizeof *v);
    *tenants = 0;
    *rest = 0;
    if (!v) {
        return 0;
    }
    for (s_entry_t *e = (s_entry_t *) zhashx_first (self->map); e; e = (s_entry_t *) zhashx_next (self->map)) {
        if (e->queued) {
            v[n++] = (llmq_depth_entry_t) { e->name, e->queued };
        }
    }
    qsort (v, n, sizeof *v, s_deeper);
    size_t k = n < max ? n : max;
    memcpy (out, v, k * sizeof *v);
    for (size_t i = k; i < n; i++) {
        *rest += v[i].queued;
    }
    *tenants = n;
    free (v);
    return k;
}
