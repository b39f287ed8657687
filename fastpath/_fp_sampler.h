/*
 * fastpath C runtime: the per-thread sampler (xorshift64*) behind sampling_rate.
 */
#ifndef FASTPATH_SAMPLER_H
#define FASTPATH_SAMPLER_H

#include "_fp_common.h"
#include "_fp_clock.h"

/* xorshift64* (Vigna): 64-bit state, the multiply scrambles the low-quality
 * low bits; we compare the whole 64-bit output against p * 2**64, which is
 * decided by the (good) high bits. */
static __thread uint64_t fp_rng_state = 0;
static uint64_t fp_rng_seed_counter = 0;

static inline uint64_t fp_splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static uint64_t fp_rng_seed(void)
{
    uint64_t n = __atomic_add_fetch(&fp_rng_seed_counter, 1, __ATOMIC_RELAXED);
    uint64_t s = fp_splitmix64(n ^ ((uint64_t)pthread_self() << 1) ^ (uint64_t)fp_now_ns()
                               ^ ((uint64_t)getpid() << 32));
    return s ? s : 0x853C49E6748FEA9BULL;
}

static inline uint64_t fp_rng_next(void)
{
    uint64_t x = fp_rng_state;
    if (FP_UNLIKELY(x == 0))
        x = fp_rng_seed();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    fp_rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Re-seed this thread's generator (tests use it to prove per-thread state). */
static inline void fp_rng_reseed(uint64_t seed)
{
    fp_rng_state = seed ? fp_splitmix64(seed) | 1 : fp_rng_seed();
}

#endif /* FASTPATH_SAMPLER_H */
