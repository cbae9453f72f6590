/*  clock.h -- time sources. Wall clock in unix µs for anything stored or
    sent; monotonic ms for timers. */
#ifndef LLMQ_CLOCK_H
#define LLMQ_CLOCK_H
#include <stdint.h>
#include <time.h>

static inline uint64_t
llmq_now_us (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static inline uint64_t
llmq_mono_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

static inline uint64_t
llmq_mono_us (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}
#endif
