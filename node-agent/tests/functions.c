/* Test functions in the rFaaS C ABI: uint32_t fn(void *in, uint32_t in_len, void *out). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

uint32_t echo(void *in, uint32_t len, void *out) { memcpy(out, in, len); return len; }

uint32_t crash(void *in, uint32_t len, void *out) {
    (void)in; (void)len; (void)out;
    volatile int *p = (volatile int *)0;
    *p = 1;
    return 0;
}

uint32_t spin(void *in, uint32_t len, void *out) {
    (void)in; (void)len; (void)out;
    for (volatile unsigned long i = 0;; i++) {}
    return 0;
}

/* Allocates and touches the number of MiB given as decimal input. */
uint32_t hog(void *in, uint32_t len, void *out) {
    char buf[32] = {0};
    memcpy(buf, in, len < 31 ? len : 31);
    size_t mib = strtoul(buf, NULL, 10);
    char *p = malloc(mib << 20);
    if (!p) return (uint32_t)sprintf(out, "malloc failed");
    for (size_t i = 0; i < (mib << 20); i += 4096) p[i] = 1;
    return (uint32_t)sprintf(out, "touched %zu MiB", mib);
}

/* Where am I: "exe=... uid=... gid=... groups=N cpus=a,b\n" then /proc/self/cgroup. */
uint32_t whereami(void *in, uint32_t len, void *out) {
    (void)in; (void)len;
    char exe[512] = {0};
    if (readlink("/proc/self/exe", exe, sizeof exe - 1) < 0) exe[0] = 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    sched_getaffinity(0, sizeof set, &set);
    char cpus[256] = {0};
    size_t at = 0;
    for (int c = 0; c < CPU_SETSIZE && at < sizeof cpus - 8; c++)
        if (CPU_ISSET(c, &set)) at += (size_t)sprintf(cpus + at, at ? ",%d" : "%d", c);
    int n = sprintf(out, "exe=%s uid=%d gid=%d groups=%d cpus=%s\n", exe, (int)getuid(), (int)getgid(),
                    getgroups(0, NULL), cpus);
    int fd = open("/proc/self/cgroup", O_RDONLY);
    if (fd >= 0) {
        ssize_t r = read(fd, (char *)out + n, 4096);
        if (r > 0) n += (int)r;
        close(fd);
    }
    return (uint32_t)n;
}
