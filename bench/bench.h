/*  bench.h -- llmq-bench's shared pieces: options, the per-thread run
    record, a small id -> timestamp map, the request body, percentiles.

    llmq-bench runs the same load two ways: through llmq (bench_llmq.c) and
    straight at an HTTP endpoint with libcurl (bench_direct.c), and prints
    one report for either (llmq_bench.c). Each mode splits its load over
    `handles` threads; a thread owns one bench_run_t and nothing is shared
    between threads but the read-only options, so no locking is needed.
*/
#ifndef LLMQ_BENCH_H
#define LLMQ_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define BENCH_MAX_PER_MESSAGE 4096  //  jobs in one llmq_send(), at most
#define BENCH_MAX_HANDLES     64    //  threads (and handles) at most
#define BENCH_LATE_NS   10000000    //  --rate: a send this far behind schedule is late

typedef enum {
    BENCH_MODE_LLMQ,                //  through the broker
    BENCH_MODE_DIRECT               //  straight to the provider URL
} bench_mode_t;

//  Command line, read-only once parsed
typedef struct {
    bench_mode_t mode;
    const char *broker;             //  llmq: client endpoint
    const char *model;              //  llmq: model group; direct: "model" in the body
    const char *url;                //  direct: chat-completions URL
    uint64_t jobs;                  //  -n: jobs to run
    unsigned concurrency;           //  -c: most jobs outstanding at once (all threads)
    size_t size;                    //  --size: approximate body bytes
    double rate;                    //  --rate: offered jobs/s, 0 = closed loop
    double duration_max;            //  --duration-max: seconds, hard bound
    unsigned per_message;           //  llmq: most jobs per llmq_send()
    unsigned handles;               //  threads, each with its own handle / curl multi
    bool json;                      //  report as one JSON line
    unsigned stream_chunks;         //  llmq: stream each job in this many chunks (0: no)
    uint64_t cache_ttl_ms;          //  llmq: jobs ask the response cache for this TTL
                                    //  (0: no), after one untimed warm-up job per thread
    int timeout_ms;                 //  connect (llmq) / whole transfer (direct)
} bench_options_t;

//  One thread's share of the load and what it measured
typedef struct {
    const bench_options_t *options;
    const char *body;               //  the request body, shared, read-only
    int64_t start_ns;               //  common start (CLOCK_MONOTONIC), set before threads run
    int64_t deadline_ns;            //  start + duration_max
    uint64_t jobs;                  //  this thread's share of -n
    unsigned concurrency;           //  this thread's share of -c
    double rate;                    //  this thread's share of --rate (0: closed loop)
    int64_t *latency_ns;            //  submit -> result of each ok job; `jobs` slots
    uint64_t ok;                    //  jobs that ended done (entries in latency_ns)
    uint64_t errors;                //  jobs refused, failed, or answered non-2xx
    uint64_t cached;                //  llmq: ok jobs answered from the response cache
    uint64_t sent;                  //  jobs handed to the socket / curl
    uint64_t messages;              //  llmq_send() calls (llmq mode)
    uint64_t stalls;                //  sends refused because the socket queue was full
    int64_t first_send_ns;          //  0 if nothing was sent
    int64_t last_done_ns;           //  time of the last result
    int64_t lag_max_ns;             //  --rate: worst delay of a send behind schedule
    uint64_t late;                  //  --rate: jobs sent over BENCH_LATE_NS behind
    char fatal [256];               //  non-empty: the thread stopped on this error
    char note [256];                //  first non-fatal problem (a rejection, an HTTP error)
    void *ctx;                      //  the mode's own state (handle, curl multi)
} bench_run_t;

//  What a mode does. setup() and teardown() run on the main thread, one
//  run after the other; loop() runs on the run's own thread, all at once,
//  after the common start time is set.
typedef struct {
    const char *name;
    int  (*global_init) (void);     //  once before any setup; 0 / -1
    void (*global_fini) (void);
    int  (*setup) (bench_run_t *run);   //  0, or -1 with run->fatal set
    void *(*loop) (void *run);      //  a pthread start routine; returns NULL
    void (*teardown) (bench_run_t *run);
} bench_mode_ops_t;

extern const bench_mode_ops_t bench_llmq_ops;
extern const bench_mode_ops_t bench_direct_ops;

//  A map from a nonzero 64-bit key (job id, ticket) to a time and a count;
//  open addressing with linear probing, grows as needed.
typedef struct {
    uint64_t key;                   //  0 = empty slot
    int64_t t_ns;                   //  a CLOCK_MONOTONIC time
    uint32_t n;                     //  jobs in a send; ok flag for an early result
} bench_slot_t;

typedef struct {
    bench_slot_t *slots;
    size_t cap;                     //  power of two
    size_t count;                   //  keys held
} bench_map_t;

//  Now, CLOCK_MONOTONIC, in ns
static inline int64_t
bench_now_ns (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

//  Map: 0 / -1 (out of memory). put() replaces an existing key.
int  bench_map_init (bench_map_t *map, size_t expected);
void bench_map_fini (bench_map_t *map);
int  bench_map_put (bench_map_t *map, uint64_t key, int64_t t_ns, uint32_t n);
//  Removes key and copies its entry to *out; false if absent
bool bench_map_take (bench_map_t *map, uint64_t key, bench_slot_t *out);

//  A chat-completions body of about `size` bytes: one user message padded
//  with text; "model" is included when `model` is not NULL. Free with free().
//  The request body: about `size` bytes, naming `model` if not NULL, its
//  user message starting with `prefix` if not NULL (mock directives).
char *bench_body_new (size_t size, const char *model, const char *prefix);

//  Split `total` over `parts` as evenly as possible; share of part `i`
uint64_t bench_share (uint64_t total, unsigned parts, unsigned i);

//  Jobs due by `now` under an open-loop rate, counting from `start`
uint64_t bench_due (double rate, int64_t start_ns, int64_t now_ns);

//  Notes how far behind schedule `n` jobs from number `run->sent` on were
//  sent at `now` (open loop only)
void bench_lag (bench_run_t *run, int64_t now_ns, uint64_t n);

//  Time the next job after `sent` is due
int64_t bench_due_time (double rate, int64_t start_ns, uint64_t sent);

//  Records the end of a job in `run`: an ok job's latency, or an error
void bench_record (bench_run_t *run, int64_t sent_ns, int64_t done_ns, bool ok);

#endif
