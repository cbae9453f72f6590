/*  client_ids.c -- a set of job ids (see client_ids.h). */
#include <stdlib.h>
#include <string.h>

#include "client_ids.h"

#define S_MIN_SLOTS 64

/*  Fibonacci hashing spreads consecutive ids (the common case) evenly. */
static size_t
s_home (const client_ids_t *set, uint64_t id)
{
    int bits = __builtin_popcountll ((unsigned long long) set->mask);
    return (size_t) ((id * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

void
client_ids_init (client_ids_t *set)
{
    memset (set, 0, sizeof (*set));
}

void
client_ids_clear (client_ids_t *set)
{
    free (set->slots);
    client_ids_init (set);
}

/*  Slot of `id`, or of the empty slot where it would go. */
static size_t
s_find (const client_ids_t *set, uint64_t id)
{
    size_t i = s_home (set, id);
    while (set->slots[i] && set->slots[i] != id) {
        i = (i + 1) & set->mask;
    }
    return i;
}

static int
s_resize (client_ids_t *set, size_t slots)
{
    client_ids_t bigger = { calloc (slots, sizeof (uint64_t)), slots - 1, 0 };
    if (!bigger.slots) {
        return -1;
    }
    for (size_t i = 0; set->slots && i <= set->mask; i++) {
        if (set->slots[i]) {
            bigger.slots[s_find (&bigger, set->slots[i])] = set->slots[i];
            bigger.count++;
        }
    }
    free (set->slots);
    *set = bigger;
    return 0;
}

int
client_ids_add (client_ids_t *set, uint64_t id)
{
    if (id == 0) {
        return 0;
    }
    if (!set->slots || (set->count + 1) * 2 > set->mask + 1) {
        if (s_resize (set, set->slots ? (set->mask + 1) * 2 : S_MIN_SLOTS) != 0) {
            return -1;
        }
    }
    size_t i = s_find (set, id);
    if (!set->slots[i]) {
        set->slots[i] = id;
        set->count++;
    }
    return 0;
}

int
client_ids_has (const client_ids_t *set, uint64_t id)
{
    return id != 0 && set->slots && set->slots[s_find (set, id)] == id;
}

void
client_ids_remove (client_ids_t *set, uint64_t id)
{
    if (!client_ids_has (set, id)) {
        return;
    }
    size_t hole = s_find (set, id);
    size_t j = hole;
    /* Backward shift: move up every later id of the run that may not
       stay behind the hole, so lookups never stop early. */
    for (;;) {
        j = (j + 1) & set->mask;
        uint64_t other = set->slots[j];
        if (!other) {
            break;
        }
        size_t home = s_home (set, other);
        /* `other` may move into the hole unless its home lies cyclically
           in (hole, j]. */
        int stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            set->slots[hole] = other;
            hole = j;
        }
    }
    set->slots[hole] = 0;
    set->count--;
}

size_t
client_ids_next (const client_ids_t *set, size_t *cursor, uint64_t *out, size_t max)
{
    size_t n = 0;
    while (set->slots && *cursor <= set->mask && n < max) {
        uint64_t id = set->slots[(*cursor)++];
        if (id) {
            out[n++] = id;
        }
    }
    return n;
}
