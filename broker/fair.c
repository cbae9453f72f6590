/*  fair.c -- start-time fair queueing: see fair.h. */
#include "fair.h"

#include <czmq.h>
#include <stdio.h>
#include <stdlib.h>

struct llmq_fair {
    zhashx_t *vtime;                /* "route/prio" -> uint64_t* V */
    zhashx_t *finish;               /* "route/prio/tenant" -> uint64_t* last finish */
};

static void
s_free (void **item)
{
    free (*item);
    *item = NULL;
}

llmq_fair_t *
llmq_fair_new (void)
{
    llmq_fair_t *self = (llmq_fair_t *) calloc (1, sizeof *self);
    if (!self || !(self->vtime = zhashx_new ()) || !(self->finish = zhashx_new ())) {
        llmq_fair_destroy (&self);
        return NULL;
    }
    zhashx_set_destructor (self->vtime, s_free);
    zhashx_set_destructor (self->finish, s_free);
    return self;
}

void
llmq_fair_destroy (llmq_fair_t **self_p)
{
    llmq_fair_t *self = *self_p;
    if (self) {
        zhashx_destroy (&self->vtime);
        zhashx_destroy (&self->finish);
        free (self);
        *self_p = NULL;
    }
}

static uint64_t *
s_slot (zhashx_t *map, const char *key, uint64_t init)
{
    uint64_t *v = (uint64_t *) zhashx_lookup (map, key);
    if (!v && (v = (uint64_t *) malloc (sizeof *v))) {
        *v = init;
        zhashx_insert (map, key, v);
    }
    return v;
}

uint64_t
llmq_fair_tag (llmq_fair_t *self, uint32_t route, int prio, const char *tenant, uint32_t weight,
               uint64_t now_us, bool idle)
{
    char key[320];
    snprintf (key, sizeof key, "%u/%d", route, prio);
    uint64_t *v = s_slot (self->vtime, key, now_us);
    if (!v) {
        return now_us;
    }
    if (idle && *v < now_us) {
        *v = now_us;                /* nothing waits: time moves on */
    }
    snprintf (key, sizeof key, "%u/%d/%s", route, prio, tenant ? tenant : "");
    uint64_t *f = s_slot (self->finish, key, 0);
    uint64_t start = f && *f > *v ? *f : *v;
    if (f) {
        uint64_t step = LLMQ_FAIR_QUANTUM_US / (weight ? weight : 1);
        *f = start + (step ? step : 1);
    }
    return start;
}

void
llmq_fair_dispatched (llmq_fair_t *self, uint32_t route, int prio, uint64_t tag)
{
    char key[64];
    snprintf (key, sizeof key, "%u/%d", route, prio);
    uint64_t *v = (uint64_t *) zhashx_lookup (self->vtime, key);
    if (v && tag > *v) {
        *v = tag;
    }
}
