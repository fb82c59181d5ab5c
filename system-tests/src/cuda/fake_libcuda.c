/* A CPU stand-in for libcuda.so.1, for tests and rehearsals on machines without a GPU
   (system-tests/tests/cuda_function.rs loads it through HARVEST_LIBCUDA; `scripts/gpu-check
   --rehearse` builds the functions with it as their default driver): it runs the saxpy kernel's
   arithmetic on the host with the grid and parameters it is launched with, so the functions'
   host side (argument order and sizes, copies, grid size, output format, freeing) is checked
   without a GPU. The PTX itself is checked by ptxas where it is installed.
     cc -shared -fPIC -O2 -o libfakecuda.so fake_libcuda.c

   FAKE_CUDA_FAIL=<entry point>=<CUresult> makes that entry point fail (cuInit=100). It has no
   cuGetErrorName, so the callers' own table names the errors. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

static int live_allocations;
static char saxpy_tag, spin_tag, context_tag, module_tag;

/* Read by the test's caller: device allocations not yet freed. */
int fake_cuda_live_allocations(void) { return live_allocations; }

static CUresult injected(const char *entry) {
    const char *f = getenv("FAKE_CUDA_FAIL");
    size_t n = strlen(entry);
    if (f && !strncmp(f, entry, n) && f[n] == '=') return atoi(f + n + 1);
    return 0;
}
#define FAIL_IF_ASKED(entry) do { CUresult r_ = injected(entry); if (r_) return r_; } while (0)

CUresult cuInit(unsigned int flags) { FAIL_IF_ASKED("cuInit"); return flags ? 1 : 0; }
CUresult cuDeviceGetCount(int *count) { FAIL_IF_ASKED("cuDeviceGetCount"); *count = 1; return 0; }
CUresult cuDeviceGet(int *dev, int ordinal) { *dev = ordinal; return ordinal == 0 ? 0 : 101; }
CUresult cuDeviceGetName(char *name, int len, int dev) {
    snprintf(name, (size_t)len, "Fake CPU GPU %d", dev);
    return 0;
}
CUresult cuDeviceGetAttribute(int *value, int attribute, int dev) {
    (void)dev;
    *value = attribute == 16 ? 8 : 0;
    return 0;
}
CUresult cuDeviceTotalMem_v2(size_t *bytes, int dev) { (void)dev; *bytes = 1ull << 30; return 0; }
CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) { (void)dev; *ctx = &context_tag; return 0; }
CUresult cuCtxSetCurrent(void *ctx) { return ctx == &context_tag ? 0 : 201; }
CUresult cuCtxSynchronize(void) { FAIL_IF_ASKED("cuCtxSynchronize"); return 0; }
CUresult cuModuleLoadDataEx(void **module, const void *image, unsigned int n, int *options,
                            void **values) {
    FAIL_IF_ASKED("cuModuleLoadDataEx");
    /* The error log buffer comes with its size, as the driver expects them. */
    if (n != 2 || options[0] != 5 || options[1] != 6 || !values[0] || (uintptr_t)values[1] < 64)
        return 1;
    const char *ptx = image;
    if (strncmp(ptx, ".version ", 9) || !strstr(ptx, ".entry saxpy(") || !strstr(ptx, ".entry spin("))
        return 218;
    *module = &module_tag;
    return 0;
}
CUresult cuModuleGetFunction(void **f, void *module, const char *name) {
    if (module != &module_tag) return 400;
    if (!strcmp(name, "saxpy")) *f = &saxpy_tag;
    else if (!strcmp(name, "spin")) *f = &spin_tag;
    else return 500;
    return 0;
}
CUresult cuMemAlloc_v2(CUdeviceptr *ptr, size_t bytes) {
    FAIL_IF_ASKED("cuMemAlloc_v2");
    void *p = malloc(bytes ? bytes : 1);
    if (!p) return 2;
    *ptr = (uintptr_t)p;
    live_allocations++;
    return 0;
}
CUresult cuMemFree_v2(CUdeviceptr ptr) {
    if (!ptr) return 1;
    free((void *)(uintptr_t)ptr);
    live_allocations--;
    return 0;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t bytes) {
    FAIL_IF_ASKED("cuMemcpyHtoD_v2");
    memcpy((void *)(uintptr_t)dst, src, bytes);
    return 0;
}
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t bytes) {
    memcpy(dst, (const void *)(uintptr_t)src, bytes);
    return 0;
}
CUresult cuLaunchKernel(void *f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared,
                        void *stream, void **params, void **extra) {
    FAIL_IF_ASKED("cuLaunchKernel");
    (void)stream;
    if (gy != 1 || gz != 1 || by != 1 || bz != 1 || shared || extra || !gx || !bx || bx > 1024)
        return 1;
    if (f == &saxpy_tag) {
        /* saxpy(u32 n, f32 a, u64 x, u64 y): one thread per element, the rest do nothing. */
        uint32_t n = *(uint32_t *)params[0];
        float a = *(float *)params[1];
        float *x = (float *)(uintptr_t) * (CUdeviceptr *)params[2];
        float *y = (float *)(uintptr_t) * (CUdeviceptr *)params[3];
        for (uint64_t i = 0; i < (uint64_t)gx * bx; i++)
            if (i < n) y[i] = a * x[i] + y[i];
        return 0;
    }
    if (f == &spin_tag) {
        /* spin(u32 iters, u64 out): out[block] for every block. */
        uint32_t iters = *(uint32_t *)params[0];
        float *out = (float *)(uintptr_t) * (CUdeviceptr *)params[1];
        if (!iters) return 1;
        for (unsigned int b = 0; b < gx; b++) out[b] = 1.0f;
        return 0;
    }
    return 400;
}
