/* Calls a function of a library the way harvest-executor does (dlopen, dlsym, the rFaaS C ABI
   with a 1 MiB output buffer), CALLS times with the input read from stdin, and writes the last
   output to stdout. With HARVEST_LIBCUDA naming the fake driver, it then prints
   "live_allocations=N" on stderr (device memory the functions did not free).
     call_fn LIB FUNCTION CALLS < input > output */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: call_fn LIB FUNCTION CALLS < input\n"); return 64; }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "call_fn: %s\n", dlerror()); return 1; }
    uint32_t (*fn)(void *, uint32_t, void *);
    *(void **)&fn = dlsym(lib, argv[2]);
    if (!fn) { fprintf(stderr, "call_fn: no %s\n", argv[2]); return 1; }
    size_t cap = 4 << 20, len = 0;
    char *in = malloc(cap), *out = malloc(1 << 20);
    if (!in || !out) return 1;
    ssize_t k;
    while (len < cap && (k = read(0, in + len, cap - len)) > 0) len += (size_t)k;
    uint32_t n = 0;
    for (long i = 0; i < atol(argv[3]); i++) n = fn(in, (uint32_t)len, out);
    fwrite(out, 1, n, stdout);
    const char *fake = getenv("HARVEST_LIBCUDA");
    void *driver = fake ? dlopen(fake, RTLD_NOW | RTLD_NOLOAD) : NULL;
    int (*live)(void) = NULL;
    if (driver) *(void **)&live = dlsym(driver, "fake_cuda_live_allocations");
    if (live) fprintf(stderr, "live_allocations=%d\n", live());
    return 0;
}
