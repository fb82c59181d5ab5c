/* Test functions in the rFaaS C ABI: uint32_t fn(void *in, uint32_t in_len, void *out). */
#define _GNU_SOURCE
#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

uint32_t echo(void *in, uint32_t len, void *out) { memcpy(out, in, len); return len; }

uint32_t noop(void *in, uint32_t len, void *out) { (void)in; (void)len; (void)out; return 0; }

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

/* Writes far past any output buffer: must hit the guard page, not corrupt the worker. */
uint32_t overflow(void *in, uint32_t len, void *out) {
    (void)in; (void)len;
    memset(out, 'x', 256u << 20);
    return 1;
}

/* Claims more output than it could have written. */
uint32_t liar(void *in, uint32_t len, void *out) { (void)in; (void)len; (void)out; return 0xffffffffu; }

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

/* Where am I: process name (argv[0] via /proc/self/exe), pid, uid, allowed CPUs. */
uint32_t whereami(void *in, uint32_t len, void *out) {
    (void)in; (void)len;
    char exe[512] = {0};
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n < 0) exe[0] = 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    sched_getaffinity(0, sizeof set, &set);
    char cpus[256] = {0};
    size_t at = 0;
    for (int c = 0; c < CPU_SETSIZE && at < sizeof cpus - 8; c++)
        if (CPU_ISSET(c, &set)) at += (size_t)sprintf(cpus + at, at ? ",%d" : "%d", c);
    return (uint32_t)sprintf(out, "exe=%s pid=%d uid=%d cpus=%s", exe, (int)getpid(), (int)getuid(), cpus);
}

/* Appends one byte to the file named by the input: a side effect a refused call must not have. */
uint32_t count(void *in, uint32_t len, void *out) {
    char path[512] = {0};
    memcpy(path, in, len < 511 ? len : 511);
    FILE *f = fopen(path, "a");
    if (!f) return (uint32_t)sprintf(out, "cannot open %s", path);
    fputc('x', f);
    fclose(f);
    return (uint32_t)sprintf(out, "counted");
}

/* Writes as many bytes as the decimal input says and claims them all. */
uint32_t fill(void *in, uint32_t len, void *out) {
    char buf[32] = {0};
    memcpy(buf, in, len < 31 ? len : 31);
    size_t n = strtoul(buf, NULL, 10);
    memset(out, 'f', n);
    return (uint32_t)n;
}

/* A crash by signal rather than by fault: the worker must die of it, not return. */
uint32_t raise_segv(void *in, uint32_t len, void *out) {
    (void)in; (void)len; (void)out;
    raise(SIGSEGV);
    return (uint32_t)sprintf(out, "survived SIGSEGV");
}

/* Ends the worker in the middle of the invocation. */
uint32_t exit3(void *in, uint32_t len, void *out) { (void)in; (void)len; (void)out; _exit(3); }

/* What the process may do: no_new_privs, core and open-file limits, signal dispositions and
 * mask, and whether the lease secret is in the environment. */
uint32_t limits(void *in, uint32_t len, void *out) {
    (void)in; (void)len;
    struct rlimit core, files;
    getrlimit(RLIMIT_CORE, &core);
    getrlimit(RLIMIT_NOFILE, &files);
    struct sigaction segv, pipe;
    sigaction(SIGSEGV, NULL, &segv);
    sigaction(SIGPIPE, NULL, &pipe);
    sigset_t mask;
    sigprocmask(SIG_SETMASK, NULL, &mask);
    int blocked = 0;
    for (int s = 1; s < 32; s++) blocked += sigismember(&mask, s) == 1;
    const char *secret = getenv("HARVEST_LEASE_SECRET");
    return (uint32_t)sprintf(out,
        "nnp=%d core=%llu/%llu nofile=%llu/%llu segv=%s pipe=%s blocked=%d secret=%s",
        prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
        (unsigned long long)core.rlim_cur, (unsigned long long)core.rlim_max,
        (unsigned long long)files.rlim_cur, (unsigned long long)files.rlim_max,
        segv.sa_handler == SIG_DFL ? "default" : "handled",
        pipe.sa_handler == SIG_DFL ? "default" : "changed",
        blocked, secret ? "inherited" : "unset");
}

/* How many sockets this process holds (a worker should hold its own connection only). */
uint32_t sockets(void *in, uint32_t len, void *out) {
    (void)in; (void)len;
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *e;
    char path[64], target[64];
    while (d && (e = readdir(d))) {
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t k = readlink(path, target, sizeof target - 1);
        if (k > 0) { target[k] = 0; n += strncmp(target, "socket:", 7) == 0; }
    }
    if (d) closedir(d);
    return (uint32_t)sprintf(out, "%d", n);
}
