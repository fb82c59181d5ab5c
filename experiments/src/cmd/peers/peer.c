/* compare-peers' work, the same for every system.
 *
 * Built twice: as a function library in rFaaS's C ABI (harvest: `echo`, `kernel`), and with
 * -DPEER_MAIN as a program for `srun` steps (`peer-task echo|kernel`, stdin to stdout). Parsl
 * runs the same two in Python (python/bench/peers.py): `echo` returns its input, `kernel` spins
 * on the monotonic clock for 10 ms, then returns its input. */
#include <stdint.h>
#include <string.h>
#include <time.h>

static void spin_10ms(void) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 10000000L);
}

uint32_t echo(void *in, uint32_t len, void *out) {
    memcpy(out, in, len);
    return len;
}

uint32_t kernel(void *in, uint32_t len, void *out) {
    spin_10ms();
    memcpy(out, in, len);
    return len;
}

#ifdef PEER_MAIN
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "echo") && strcmp(argv[1], "kernel"))) {
        fprintf(stderr, "usage: peer-task echo|kernel (stdin to stdout)\n");
        return 2;
    }
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    while (buf && (n = fread(buf + len, 1, cap - len, stdin)) > 0) {
        len += n;
        if (len == cap) buf = realloc(buf, cap *= 2);
    }
    if (!buf) return 1;
    if (!strcmp(argv[1], "kernel")) spin_10ms();
    fwrite(buf, 1, len, stdout);
    return 0;
}
#endif
