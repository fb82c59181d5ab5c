/* Test functions in the rFaaS C ABI, shared by the system tests (fixtures.rs). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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

/* A thread bomb that reports: creates threads (64 KiB stacks, each parked on a pipe) until
   pthread_create fails or 4096 exist (far below pid_max, so a missing limit is seen without
   exhausting the node), holds them for the number of milliseconds in the input, then releases
   and joins them. "threads=N errno=E" (E: pthread_create's error, 0 if none failed). */
static void *parked(void *fd) { char c; (void)!read((int)(intptr_t)fd, &c, 1); return NULL; }

uint32_t threads(void *in, uint32_t len, void *out) {
    char buf[32] = {0};
    memcpy(buf, in, len < 31 ? len : 31);
    long hold_ms = strtol(buf, NULL, 10);
    static pthread_t ids[4096];
    int p[2];
    if (pipe(p) != 0) return (uint32_t)sprintf(out, "pipe failed errno=%d", errno);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    int n = 0, err = 0;
    while (n < 4096 && (err = pthread_create(&ids[n], &attr, parked, (void *)(intptr_t)p[0])) == 0) n++;
    struct timespec t = {hold_ms / 1000, (hold_ms % 1000) * 1000000};
    nanosleep(&t, NULL);
    close(p[1]);
    for (int i = 0; i < n; i++) pthread_join(ids[i], NULL);
    close(p[0]);
    return (uint32_t)sprintf(out, "threads=%d errno=%d", n, err);
}

/* Opens the path in the input read-only: "opened" or "errno=N" (EPERM, 1, from a devices cgroup). */
uint32_t open_path(void *in, uint32_t len, void *out) {
    char path[4096] = {0};
    memcpy(path, in, len < sizeof path - 1 ? len : sizeof path - 1);
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) return (uint32_t)sprintf(out, "errno=%d", errno);
    close(fd);
    return (uint32_t)sprintf(out, "opened");
}

/* Writes the number of KiB in the input to stdout (the executor's log), then "written". */
uint32_t chatter(void *in, uint32_t len, void *out) {
    char buf[32] = {0}, line[1024];
    memcpy(buf, in, len < 31 ? len : 31);
    long kib = strtol(buf, NULL, 10);
    memset(line, 'x', sizeof line - 1);
    line[sizeof line - 1] = '\n';
    for (long i = 0; i < kib; i++)
        if (write(1, line, sizeof line) < 0) return (uint32_t)sprintf(out, "errno=%d", errno);
    return (uint32_t)sprintf(out, "written");
}
