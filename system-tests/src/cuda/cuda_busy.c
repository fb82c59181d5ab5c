/* A "batch" CUDA busy loop: launches the spin kernel (cuda_driver.h) on part of one GPU, back to
   back, for a given time, and reports how many kernels completed. Built with plain cc:
     cc -O2 -o cuda_busy cuda_busy.c -ldl

   cuda_busy [--seconds S] [--fraction F] [--iters N] [--device D]
     --seconds   how long to measure, after the set-up (default 10)
     --fraction  the share of the GPU's multiprocessors given one block each (default 0.5)
     --iters     dependent FMAs per thread per kernel (default 200000: about a millisecond)
     --device    the device ordinal, as CUDA_VISIBLE_DEVICES numbers them (default 0)

   Prints "ready" on stdout once the GPU is set up and the first kernel ran (the measurement
   starts then), and at the end one JSON line:
     {"kernels":K,"seconds":S,"kernels_per_s":R,"launch_ms_p50":..,"launch_ms_p99":..,
      "blocks":B,"iters":N,"device":"<name>"}
   or {"error":"<what failed>"} with exit status 2 (no driver, no GPU, a CUDA error); a bad
   command line is exit status 64. */
#include <time.h>

#include "cuda_driver.h"

#define MAX_SAMPLES 1000000

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Prints the error as JSON (quotes and control characters escaped) and returns 2. */
static int report_error(const char *err) {
    fputs("{\"error\":\"", stdout);
    for (const char *c = err; *c; c++) {
        if (*c == '"' || *c == '\\') printf("\\%c", *c);
        else if ((unsigned char)*c < 0x20) printf("\\u%04x", (unsigned char)*c);
        else putchar(*c);
    }
    puts("\"}");
    fprintf(stderr, "cuda_busy: %s\n", err);
    return 2;
}

static int usage(const char *why) {
    fprintf(stderr, "cuda_busy: %s\nusage: cuda_busy [--seconds S] [--fraction F] [--iters N] "
                    "[--device D]\n", why);
    return 64;
}

int main(int argc, char **argv) {
    double seconds = 10, fraction = 0.5;
    long iters = 200000, ordinal = 0;
    for (int i = 1; i < argc; i++) {
        char *end = NULL;
        if (i + 1 >= argc) return usage("every option takes a value");
        const char *opt = argv[i], *val = argv[++i];
        if (!strcmp(opt, "--seconds")) seconds = strtod(val, &end);
        else if (!strcmp(opt, "--fraction")) fraction = strtod(val, &end);
        else if (!strcmp(opt, "--iters")) iters = strtol(val, &end, 10);
        else if (!strcmp(opt, "--device")) ordinal = strtol(val, &end, 10);
        else return usage("unknown option");
        if (!end || *end || end == val) return usage("a value is not a number");
    }
    if (!(seconds > 0 && seconds <= 3600) || !(fraction > 0 && fraction <= 1) || iters < 1 ||
        iters > 2000000000L || ordinal < 0 || ordinal > 255)
        return usage("out of range: 0 < seconds <= 3600, 0 < fraction <= 1, 1 <= iters, "
                     "0 <= device <= 255");

    char err[3072];
    struct harvest_cuda_device d;
    if (harvest_cuda_open(&d, (int)ordinal, err, sizeof err) != 0) return report_error(err);
    struct harvest_cuda *cu = &d.cu;
    CUfunction spin;
    CUresult r = cu->ModuleGetFunction(&spin, d.module, "spin");
    if (r != CUDA_SUCCESS) {
        harvest_cuda_failed(cu, r, "cuModuleGetFunction(spin)", err, sizeof err);
        return report_error(err);
    }
    unsigned int blocks = (unsigned int)(d.multiprocessors * fraction);
    if (blocks < 1) blocks = 1;
    CUdeviceptr sink;
    if ((r = cu->MemAlloc(&sink, 4 * (size_t)blocks)) != CUDA_SUCCESS) {
        harvest_cuda_failed(cu, r, "cuMemAlloc", err, sizeof err);
        return report_error(err);
    }
    unsigned int n = (unsigned int)iters;
    void *params[] = {&n, &sink};
    double *samples = malloc(sizeof(double) * MAX_SAMPLES);
    if (!samples) return report_error("malloc failed");
    /* One kernel before the clock starts: the first launch pays for lazy loading. */
    for (int warm = 1; warm >= 0; warm--) {
        double start = now_s(), t = start;
        long kernels = 0;
        do {
            double t0 = now_s();
            r = cu->LaunchKernel(spin, blocks, 1, 1, 128, 1, 1, 0, NULL, params, NULL);
            if (r != CUDA_SUCCESS) {
                harvest_cuda_failed(cu, r, "cuLaunchKernel", err, sizeof err);
                return report_error(err);
            }
            if ((r = cu->CtxSynchronize()) != CUDA_SUCCESS) {
                harvest_cuda_failed(cu, r, "cuCtxSynchronize", err, sizeof err);
                return report_error(err);
            }
            t = now_s();
            if (!warm && kernels < MAX_SAMPLES) samples[kernels] = (t - t0) * 1e3;
            kernels++;
        } while (!warm && t - start < seconds);
        if (warm) {
            puts("ready");
            fflush(stdout);
            continue;
        }
        long kept = kernels < MAX_SAMPLES ? kernels : MAX_SAMPLES;
        qsort(samples, (size_t)kept, sizeof(double), cmp_double);
        double elapsed = t - start;
        printf("{\"kernels\":%ld,\"seconds\":%.3f,\"kernels_per_s\":%.2f,\"launch_ms_p50\":%.4f,"
               "\"launch_ms_p99\":%.4f,\"blocks\":%u,\"iters\":%ld,\"device\":\"",
               kernels, elapsed, (double)kernels / elapsed, samples[kept / 2],
               samples[kept * 99 / 100], blocks, iters);
        for (const char *c = d.name; *c; c++)
            if (*c != '"' && *c != '\\' && (unsigned char)*c >= 0x20) putchar(*c);
        puts("\"}");
    }
    cu->MemFree(sink);
    free(samples);
    return 0;
}
