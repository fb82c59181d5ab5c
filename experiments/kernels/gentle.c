/* Harmless functions for `harvest-experiments interference`, in the rFaaS C ABI, to run beside
 * the thrasher: what most leases on a real node look like to a memory-bound batch job.
 *
 * - spin: about a millisecond of integer arithmetic in registers (no memory traffic beyond L1);
 * - nap:  sleeps 5 ms, then touches 4 KiB (an I/O-bound function: mostly waiting);
 * - noop: returns at once (the cost of harvest's own executor and invocation path).
 *
 * Each returns an 8-byte value so that the work cannot be optimised away. */
#include <stdint.h>
#include <string.h>
#include <time.h>

uint32_t spin(void *in, uint32_t len, void *out) {
    (void)in;
    (void)len;
    uint64_t x = 0x9e3779b97f4a7c15ull, acc = 0;
    for (uint32_t i = 0; i < 400000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc += x;
    }
    memcpy(out, &acc, sizeof acc);
    return sizeof acc;
}

static unsigned char page[4096];

uint32_t nap(void *in, uint32_t len, void *out) {
    (void)in;
    (void)len;
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
    uint64_t sum = 0;
    for (size_t i = 0; i < sizeof page; i += 64) {
        page[i] += 1;
        sum += page[i];
    }
    memcpy(out, &sum, sizeof sum);
    return sizeof sum;
}

uint32_t noop(void *in, uint32_t len, void *out) {
    (void)in;
    (void)len;
    (void)out;
    return 0;
}
