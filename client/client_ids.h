/*  client_ids.h -- a set of job ids (private to libllmq).

    A handle keeps the ids of the jobs whose results it still expects to be
    pushed (submitted with notify, streamed, or waited for), so that after
    the connection to the broker comes back (a broker restart forgets every
    subscription) it can subscribe to them again with one WAIT.

    Open addressing with linear probing and backward-shift deletion: 8
    bytes per slot, at most half full. Id 0 is never a job id and marks an
    empty slot.
*/
#ifndef LLMQ_CLIENT_IDS_H
#define LLMQ_CLIENT_IDS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t *slots;            /* 0: empty */
    size_t    mask;             /* slots - 1 (slots is a power of two), or 0 before the first add */
    size_t    count;            /* ids held */
} client_ids_t;

/*  An empty set (no memory until the first add). */
void client_ids_init (client_ids_t *set);
void client_ids_clear (client_ids_t *set);
/*  Add an id (0 is ignored). Returns 0, or -1 when out of memory. */
int  client_ids_add (client_ids_t *set, uint64_t id);
void client_ids_remove (client_ids_t *set, uint64_t id);
int  client_ids_has (const client_ids_t *set, uint64_t id);
/*  Copy up to `max` ids, starting at slot *cursor (0 to begin), into `out`;
    returns how many, 0 at the end. */
size_t client_ids_next (const client_ids_t *set, size_t *cursor, uint64_t *out, size_t max);

#endif
