/* Test functions in the rFaaS C ABI, shared by the system tests (fixtures.rs). */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

uint32_t echo(void *in, uint32_t len, void *out) { memcpy(out, in, len); return len; }

uint32_t crash(void *in, uint32_t len, void *out) { (void)in; (void)len; (void)out; *(volatile int *)0 = 1; return 0; }

uint32_t spin(void *in, uint32_t len, void *out) { (void)in; (void)len; (void)out; for (volatile unsigned long i = 0;; i++) {} return 0; }

uint32_t hog(void *in, uint32_t len, void *out) {
    char buf[32] = {0};
    memcpy(buf, in, len < 31 ? len : 31);
    size_t mib = strtoul(buf, NULL, 10);
    char *p = malloc(mib << 20);
    if (!p) return (uint32_t)sprintf(out, "malloc failed");
    for (size_t i = 0; i < (mib << 20); i += 4096) p[i] = 1;
    return (uint32_t)sprintf(out, "touched %zu MiB", mib);
}

/* exe=..., cpus=a,b, uid=N, then /proc/self/cgroup. */
uint32_t whereami(void *in, uint32_t len, void *out) {
    (void)in; (void)len;
    char *o = out, exe[4096];
    size_t n = 0;
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[k < 0 ? 0 : k] = 0;
    n += sprintf(o + n, "exe=%s\ncpus=", exe);
    cpu_set_t set;
    CPU_ZERO(&set);
    sched_getaffinity(0, sizeof set, &set);
    const char *sep = "";
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &set)) { n += sprintf(o + n, "%s%d", sep, i); sep = ","; }
    n += sprintf(o + n, "\nuid=%u\n", (unsigned)getuid());
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (f) { n += fread(o + n, 1, 16384, f); fclose(f); }
    return (uint32_t)n;
}

/* Busy for the number of milliseconds in the input, then "done". */
uint32_t burn(void *in, uint32_t len, void *out) {
    char buf[32] = {0};
    memcpy(buf, in, len < 31 ? len : 31);
    long ms = strtol(buf, NULL, 10);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        for (volatile int i = 0; i < 10000; i++) {}
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < ms);
    return (uint32_t)sprintf(out, "done");
}

/* Touches the number of MiB in the input and holds them, spinning, until killed. */
uint32_t hold(void *in, uint32_t len, void *out) {
    (void)out;
    char buf[32] = {0};
    memcpy(buf, in, len < 31 ? len : 31);
    size_t mib = strtoul(buf, NULL, 10);
    volatile char *p = malloc(mib << 20);
    if (!p) return 0;
    for (size_t i = 0; i < (mib << 20); i += 4096) p[i] = 1;
    for (volatile unsigned long i = 0;; i++) {}
    return 0;
}
