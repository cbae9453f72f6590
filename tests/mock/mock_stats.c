/*  mock_stats.c -- exact counters and the request timestamp ring.
*/
#include "mock_stats.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

//  Status codes we can count: fail=N accepts 100..599 only
#define STATUS_MIN  100
#define STATUS_MAX  599

struct mock_stats_t {
    atomic_llong requests;          //  chat requests received
    atomic_llong completed;         //  chat responses delivered in full
    atomic_llong streams;           //  chat responses sent as SSE
    atomic_llong faults;            //  requests that had a fault applied
    atomic_llong in_flight;         //  chat requests between arrival and end
    atomic_llong max_in_flight;     //  high-water mark of in_flight
    atomic_llong with_auth;         //  requests with "Authorization: Bearer"
    atomic_llong connections;       //  connections accepted (any route, TLS or not)
    atomic_llong by_status [STATUS_MAX - STATUS_MIN + 1];
    pthread_mutex_t keys_mutex;     //  guards the key table
    struct {
        char last4 [5];             //  the key's last 4 characters
        long long requests;         //  chat requests that carried it
    } keys [MOCK_STATS_KEYS];
    size_t nkeys;
    char *rejected [MOCK_STATS_KEYS];   //  whole keys refused with 401
    size_t nrejected;
    pthread_mutex_t ring_mutex;     //  guards the ring fields
    int64_t *ring;                  //  MOCK_STATS_RING timestamps, circular
    int64_t *ring_tokens;           //  tokens of each slot's reply (0: none)
    uint64_t *ring_seq;             //  which request each slot holds
    uint64_t next_seq;              //  requests ever recorded (never reset)
    size_t ring_next;               //  slot the next timestamp goes to
    size_t ring_count;              //  valid slots, up to MOCK_STATS_RING
};

mock_stats_t *
mock_stats_new (void)
{
    mock_stats_t *self = calloc (1, sizeof (*self));
    if (!self) {
        return NULL;
    }
    self->ring = calloc (MOCK_STATS_RING, sizeof (int64_t));
    self->ring_tokens = calloc (MOCK_STATS_RING, sizeof (int64_t));
    self->ring_seq = calloc (MOCK_STATS_RING, sizeof (uint64_t));
    if (!self->ring || !self->ring_tokens || !self->ring_seq
    ||  pthread_mutex_init (&self->ring_mutex, NULL) != 0) {
        free (self->ring);
        free (self->ring_tokens);
        free (self->ring_seq);
        free (self);
        return NULL;
    }
    if (pthread_mutex_init (&self->keys_mutex, NULL) != 0) {
        pthread_mutex_destroy (&self->ring_mutex);
        free (self->ring);
        free (self->ring_tokens);
        free (self->ring_seq);
        free (self);
        return NULL;
    }
    //  calloc'd memory is a valid zero for atomic_llong on every platform
    //  we build on, but atomic_init says so explicitly
    atomic_init (&self->requests, 0);
    atomic_init (&self->completed, 0);
    atomic_init (&self->streams, 0);
    atomic_init (&self->faults, 0);
    atomic_init (&self->in_flight, 0);
    atomic_init (&self->max_in_flight, 0);
    atomic_init (&self->with_auth, 0);
    atomic_init (&self->connections, 0);
    for (int i = 0; i <= STATUS_MAX - STATUS_MIN; i++) {
        atomic_init (&self->by_status [i], 0);
    }
    return self;
}

void
mock_stats_destroy (mock_stats_t **self_p)
{
    if (!self_p || !*self_p) {
        return;
    }
    mock_stats_t *self = *self_p;
    pthread_mutex_destroy (&self->ring_mutex);
    pthread_mutex_destroy (&self->keys_mutex);
    for (size_t i = 0; i < self->nrejected; i++) {
        free (self->rejected [i]);
    }
    free (self->ring);
    free (self->ring_tokens);
    free (self->ring_seq);
    free (self);
    *self_p = NULL;
}

int64_t
mock_stats_now_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

//  Raise the high-water mark to at least value; a CAS loop because two
//  threads may race to raise it
static void
s_raise_max (atomic_llong *max, long long value)
{
    long long seen = atomic_load (max);
    while (value > seen
       && !atomic_compare_exchange_weak (max, &seen, value)) {
        //  seen was reloaded by the failed exchange; try again
    }
}

uint64_t
mock_stats_request (mock_stats_t *self, bool with_auth, int64_t now_ms)
{
    atomic_fetch_add (&self->requests, 1);
    if (with_auth) {
        atomic_fetch_add (&self->with_auth, 1);
    }
    long long in_flight = atomic_fetch_add (&self->in_flight, 1) + 1;
    s_raise_max (&self->max_in_flight, in_flight);

    pthread_mutex_lock (&self->ring_mutex);
    size_t slot = self->ring_next;
    uint64_t seq = ++self->next_seq;
    self->ring [slot] = now_ms;
    self->ring_tokens [slot] = 0;
    self->ring_seq [slot] = seq;
    self->ring_next = (self->ring_next + 1) % MOCK_STATS_RING;
    if (self->ring_count < MOCK_STATS_RING) {
        self->ring_count++;
    }
    pthread_mutex_unlock (&self->ring_mutex);
    //  The handle names the slot and the request in it, so that a late
    //  mock_stats_tokens never lands on a newer request
    return seq * MOCK_STATS_RING + slot;
}

void
mock_stats_tokens (mock_stats_t *self, uint64_t handle, int64_t tokens)
{
    size_t slot = (size_t) (handle % MOCK_STATS_RING);
    uint64_t seq = handle / MOCK_STATS_RING;
    pthread_mutex_lock (&self->ring_mutex);
    if (seq && self->ring_seq [slot] == seq) {
        self->ring_tokens [slot] = tokens;
    }
    pthread_mutex_unlock (&self->ring_mutex);
}

void
mock_stats_done (mock_stats_t *self, bool completed)
{
    atomic_fetch_sub (&self->in_flight, 1);
    if (completed) {
        atomic_fetch_add (&self->completed, 1);
    }
}

void
mock_stats_status (mock_stats_t *self, int status)
{
    if (status >= STATUS_MIN && status <= STATUS_MAX) {
        atomic_fetch_add (&self->by_status [status - STATUS_MIN], 1);
    }
}

int
mock_stats_reject_key (mock_stats_t *self, const char *key)
{
    if (self->nrejected == MOCK_STATS_KEYS) {
        return -1;
    }
    char *copy = strdup (key);
    if (!copy) {
        return -1;
    }
    self->rejected [self->nrejected++] = copy;
    return 0;
}

bool
mock_stats_key (mock_stats_t *self, const char *key)
{
    if (!key || !*key) {
        return false;
    }
    size_t len = strlen (key);
    const char *last4 = len > 4 ? key + len - 4 : key;
    bool refuse = false;
    pthread_mutex_lock (&self->keys_mutex);
    //  The refused list is written before serving starts; read it here
    //  under the same lock anyway, it costs nothing at these rates
    for (size_t i = 0; i < self->nrejected && !refuse; i++) {
        refuse = strcmp (self->rejected [i], key) == 0;
    }
    size_t i = 0;
    while (i < self->nkeys && strcmp (self->keys [i].last4, last4) != 0) {
        i++;
    }
    if (i == self->nkeys && i < MOCK_STATS_KEYS) {
        snprintf (self->keys [i].last4, sizeof (self->keys [i].last4), "%s", last4);
        self->keys [i].requests = 0;
        self->nkeys++;
    }
    if (i < self->nkeys) {
        self->keys [i].requests++;
    }
    pthread_mutex_unlock (&self->keys_mutex);
    return refuse;
}

void
mock_stats_stream (mock_stats_t *self)
{
    atomic_fetch_add (&self->streams, 1);
}

void
mock_stats_fault (mock_stats_t *self)
{
    atomic_fetch_add (&self->faults, 1);
}

void
mock_stats_connection (mock_stats_t *self)
{
    atomic_fetch_add (&self->connections, 1);
}

void
mock_stats_reset (mock_stats_t *self)
{
    atomic_store (&self->requests, 0);
    atomic_store (&self->completed, 0);
    atomic_store (&self->streams, 0);
    atomic_store (&self->faults, 0);
    atomic_store (&self->with_auth, 0);
    atomic_store (&self->connections, 0);
    atomic_store (&self->max_in_flight, atomic_load (&self->in_flight));
    for (int i = 0; i <= STATUS_MAX - STATUS_MIN; i++) {
        atomic_store (&self->by_status [i], 0);
    }
    pthread_mutex_lock (&self->ring_mutex);
    self->ring_next = 0;
    self->ring_count = 0;
    memset (self->ring_seq, 0, MOCK_STATS_RING * sizeof (uint64_t));
    pthread_mutex_unlock (&self->ring_mutex);
    pthread_mutex_lock (&self->keys_mutex);
    self->nkeys = 0;
    pthread_mutex_unlock (&self->keys_mutex);
}

json_t *
mock_stats_json (mock_stats_t *self)
{
    json_t *by_status = json_object ();
    for (int i = 0; i <= STATUS_MAX - STATUS_MIN; i++) {
        long long n = atomic_load (&self->by_status [i]);
        if (n > 0) {
            char key [8];
            snprintf (key, sizeof (key), "%d", i + STATUS_MIN);
            json_object_set_new (by_status, key, json_integer (n));
        }
    }
    json_t *by_key = json_object ();
    pthread_mutex_lock (&self->keys_mutex);
    for (size_t i = 0; i < self->nkeys; i++) {
        json_object_set_new (by_key, self->keys [i].last4,
                             json_integer ((json_int_t) self->keys [i].requests));
    }
    pthread_mutex_unlock (&self->keys_mutex);
    return json_pack ("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o, s:I}",
        "requests", (json_int_t) atomic_load (&self->requests),
        "completed", (json_int_t) atomic_load (&self->completed),
        "streams", (json_int_t) atomic_load (&self->streams),
        "faults_injected", (json_int_t) atomic_load (&self->faults),
        "in_flight", (json_int_t) atomic_load (&self->in_flight),
        "max_in_flight", (json_int_t) atomic_load (&self->max_in_flight),
        "with_auth", (json_int_t) atomic_load (&self->with_auth),
        "by_status", by_status,
        "by_key", by_key,
        "connections", (json_int_t) atomic_load (&self->connections));
}

json_t *
mock_stats_timestamps_json (mock_stats_t *self, int64_t since_ms)
{
    //  Copy out under the lock, build JSON outside it: building 100,000
    //  JSON integers must not stall the request threads
    int64_t *copy = malloc (MOCK_STATS_RING * sizeof (int64_t));
    int64_t *tokens = malloc (MOCK_STATS_RING * sizeof (int64_t));
    if (!copy || !tokens) {
        free (copy);
        free (tokens);
        return NULL;
    }
    pthread_mutex_lock (&self->ring_mutex);
    size_t count = self->ring_count;
    size_t first = (self->ring_next + MOCK_STATS_RING - count) % MOCK_STATS_RING;
    for (size_t i = 0; i < count; i++) {
        copy [i] = self->ring [(first + i) % MOCK_STATS_RING];
        tokens [i] = self->ring_tokens [(first + i) % MOCK_STATS_RING];
    }
    pthread_mutex_unlock (&self->ring_mutex);

    json_t *array = json_array ();
    json_t *tarray = json_array ();
    for (size_t i = 0; i < count; i++) {
        if (copy [i] >= since_ms) {
            json_array_append_new (array, json_integer (copy [i]));
            json_array_append_new (tarray, json_integer (tokens [i]));
        }
    }
    free (copy);
    free (tokens);
    return json_pack ("{s:o, s:o}", "timestamps_ms", array, "tokens", tarray);
}
