/*  bench_util.c -- llmq-bench helpers: the id map, the request body, load
    splitting and the open-loop schedule. See bench.h.
*/
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Map hashing: ids and tickets are mostly consecutive numbers, so mix
//  them (a 64-bit finaliser) before masking or every probe run would be
//  a long straight line.
static size_t
s_hash (uint64_t key, size_t mask)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t) key & mask;
}

int
bench_map_init (bench_map_t *map, size_t expected)
{
    size_t cap = 16;
    while (cap < expected * 2) {
        cap *= 2;
    }
    map->slots = calloc (cap, sizeof (bench_slot_t));
    map->cap = cap;
    map->count = 0;
    return map->slots ? 0 : -1;
}

void
bench_map_fini (bench_map_t *map)
{
    free (map->slots);
    map->slots = NULL;
    map->cap = map->count = 0;
}

static int
s_map_grow (bench_map_t *map)
{
    bench_map_t bigger;
    if (bench_map_init (&bigger, map->cap)) {
        return -1;
    }
    for (size_t i = 0; i < map->cap; i++) {
        if (map->slots [i].key) {
            bench_map_put (&bigger, map->slots [i].key, map->slots [i].t_ns, map->slots [i].n);
        }
    }
    free (map->slots);
    *map = bigger;
    return 0;
}

int
bench_map_put (bench_map_t *map, uint64_t key, int64_t t_ns, uint32_t n)
{
    //  Keep the load under a half so probe runs stay short
    if ((map->count + 1) * 2 > map->cap && s_map_grow (map)) {
        return -1;
    }
    size_t mask = map->cap - 1;
    size_t i = s_hash (key, mask);
    while (map->slots [i].key && map->slots [i].key != key) {
        i = (i + 1) & mask;
    }
    if (!map->slots [i].key) {
        map->count++;
    }
    map->slots [i] = (bench_slot_t) { .key = key, .t_ns = t_ns, .n = n };
    return 0;
}

bool
bench_map_take (bench_map_t *map, uint64_t key, bench_slot_t *out)
{
    if (!map->slots || !key) {
        return false;
    }
    size_t mask = map->cap - 1;
    size_t i = s_hash (key, mask);
    while (map->slots [i].key != key) {
        if (!map->slots [i].key) {
            return false;
        }
        i = (i + 1) & mask;
    }
    *out = map->slots [i];
    map->slots [i].key = 0;
    map->count--;
    //  Backward-shift deletion: move up any later entry of the run whose
    //  home slot is not between the hole and itself, so that lookups can
    //  still stop at the first empty slot (no tombstones).
    size_t hole = i;
    size_t j = (i + 1) & mask;
    while (map->slots [j].key) {
        size_t home = s_hash (map->slots [j].key, mask);
        bool stays = hole <= j ? (hole < home && home <= j)
                               : (hole < home || home <= j);
        if (!stays) {
            map->slots [hole] = map->slots [j];
            map->slots [j].key = 0;
            hole = j;
        }
        j = (j + 1) & mask;
    }
    return true;
}

char *
bench_body_new (size_t size, const char *model, const char *prefix)
{
    //  {"model":"M","messages":[{"role":"user","content":"xxx..."}],"max_tokens":16}
    const char *model_head = "{\"model\":\"";
    const char *model_tail = "\",";
    const char *head = "\"messages\":[{\"role\":\"user\",\"content\":\"";
    const char *tail = "\"}],\"max_tokens\":16}";
    size_t model_part = model ? strlen (model_head) + strlen (model) + strlen (model_tail) : 1;
    size_t fixed = model_part + strlen (head) + strlen (tail) + (prefix ? strlen (prefix) : 0);
    //  At least a few words of content, however small the size asked
    size_t pad = size > fixed + 8 ? size - fixed : 8;
    char *body = malloc (fixed + pad + 1);
    if (!body) {
        return NULL;
    }
    char *p = body;
    if (model) {
        p = stpcpy (stpcpy (stpcpy (p, model_head), model), model_tail);
    }
    else {
        *p++ = '{';
    }
    p = stpcpy (p, head);
    if (prefix) {
        p = stpcpy (p, prefix);
    }
    //  Words of 7 letters and a space, so echo and tokenisers see text
    for (size_t i = 0; i < pad; i++) {
        *p++ = (i % 8 == 7) ? ' ' : (char) ('a' + (i / 8) % 26);
    }
    strcpy (p, tail);
    return body;
}

uint64_t
bench_share (uint64_t total, unsigned parts, unsigned i)
{
    return total / parts + (i < total % parts ? 1 : 0);
}

uint64_t
bench_due (double rate, int64_t start_ns, int64_t now_ns)
{
    if (now_ns < start_ns) {
        return 0;
    }
    //  Job k (from 0) is due at start + k / rate, so by now jobs
    //  0 .. floor(elapsed * rate) are due
    return (uint64_t) ((double) (now_ns - start_ns) * 1e-9 * rate) + 1;
}

int64_t
bench_due_time (double rate, int64_t start_ns, uint64_t sent)
{
    return start_ns + (int64_t) ((double) sent / rate * 1e9);
}

void
bench_lag (bench_run_t *run, int64_t now_ns, uint64_t n)
{
    //  The first job of the lot is the most behind; the others count as
    //  late if they are too
    for (uint64_t k = 0; k < n; k++) {
        int64_t lag = now_ns - bench_due_time (run->rate, run->start_ns, run->sent + k);
        if (lag > run->lag_max_ns) {
            run->lag_max_ns = lag;
        }
        if (lag <= BENCH_LATE_NS) {
            break;
        }
        run->late++;
    }
}

void
bench_record (bench_run_t *run, int64_t sent_ns, int64_t done_ns, bool ok)
{
    if (ok && run->ok < run->jobs) {
        run->latency_ns [run->ok++] = done_ns - sent_ns;
    }
    else {
        run->errors++;
    }
    if (done_ns > run->last_done_ns) {
        run->last_done_ns = done_ns;
    }
}
