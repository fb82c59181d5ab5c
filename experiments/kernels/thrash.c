/* An aggressive function for `harvest-experiments interference`, in the rFaaS C ABI: each call
 * reads and writes every cache line of a 64 MiB buffer (kept across calls), so it competes for
 * the last-level cache and memory bandwidth with whatever runs beside it. Returns an 8-byte
 * checksum. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BUF_BYTES (64u << 20)

static unsigned char *buf;

uint32_t thrash(void *in, uint32_t len, void *out) {
    (void)in;
    (void)len;
    if (!buf) {
        buf = malloc(BUF_BYTES);
        if (!buf) return 0;
        memset(buf, 1, BUF_BYTES);
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < BUF_BYTES; i += 64) {
        sum += buf[i];
        buf[i] = (unsigned char)sum;
    }
    memcpy(out, &sum, sizeof sum);
    return sizeof sum;
}
