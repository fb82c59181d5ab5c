/* CUDA functions in the rFaaS C ABI, built with plain cc (no nvcc, no CUDA headers):
     cc -shared -fPIC -O2 -o libcudafns.so cuda_fn.c -ldl -lpthread
   They load libcuda.so.1 at run time (cuda_driver.h), so the library loads everywhere; without
   a driver or a visible GPU a call answers "error: no GPU: ..." and never crashes.

   Every output starts with one text line, "ok ..." or "error: <what failed>", then the payload:
     saxpy        input: float32 a, then n float32 x, then n float32 y (little-endian, n >= 1,
                  n <= SAXPY_MAX); output: "ok n=<n>\n" then n float32 a*x[i]+y[i] from the GPU.
     cuda_devices input: ignored; output: "ok count=<n>\n", one line per visible device
                  ("<ordinal> <name> memory_mib=<m>") and "CUDA_VISIBLE_DEVICES=<value>".

   The first call in a process initialises the driver and the device's primary context (a few
   hundred ms); later calls reuse them. Calls are serialised by a mutex. */
#include <pthread.h>

#include "cuda_driver.h"

/* Most elements one saxpy call takes: its output (4 bytes each) then fits the executor's default
   1 MiB output buffer. */
#define SAXPY_MAX ((1u << 20) / 4 - 64)

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static struct harvest_cuda_device device;
static CUfunction saxpy_kernel;
static int opened;

static uint32_t fail(void *out, const char *fmt, const char *what) {
    return (uint32_t)sprintf(out, fmt, what);
}

/* Opens device 0 once per process; 0 or -1 with err set. Later failures retry from scratch. */
static int ready(char *err, size_t n) {
    if (opened) {
        CUresult r = device.cu.CtxSetCurrent(device.ctx);
        if (r != CUDA_SUCCESS) {
            harvest_cuda_failed(&device.cu, r, "cuCtxSetCurrent", err, n);
            return -1;
        }
        return 0;
    }
    if (harvest_cuda_open(&device, 0, err, n) != 0) return -1;
    CUresult r = device.cu.ModuleGetFunction(&saxpy_kernel, device.module, "saxpy");
    if (r != CUDA_SUCCESS) {
        harvest_cuda_failed(&device.cu, r, "cuModuleGetFunction(saxpy)", err, n);
        return -1;
    }
    opened = 1;
    return 0;
}

static uint32_t saxpy_locked(const unsigned char *in, uint32_t len, char *out) {
    char err[3072];
    if (len < 12 || (len - 4) % 8 != 0)
        return (uint32_t)sprintf(out, "error: the input must be float32 a, then n x, then n y "
                                      "(4 + 8n bytes, n >= 1); got %u bytes\n", len);
    uint32_t n = (len - 4) / 8;
    if (n > SAXPY_MAX)
        return (uint32_t)sprintf(out, "error: %u elements, at most %u per call\n", n, SAXPY_MAX);
    if (ready(err, sizeof err) != 0) return fail(out, "error: %s\n", err);
    struct harvest_cuda *cu = &device.cu;
    float a;
    memcpy(&a, in, 4);
    const unsigned char *x = in + 4, *y = in + 4 + 4 * (size_t)n;
    size_t bytes = 4 * (size_t)n;
    CUdeviceptr dx = 0, dy = 0;
    CUresult r;
    const char *what;
    if ((r = cu->MemAlloc(&dx, bytes)) != CUDA_SUCCESS) { what = "cuMemAlloc"; goto failed; }
    if ((r = cu->MemAlloc(&dy, bytes)) != CUDA_SUCCESS) { what = "cuMemAlloc"; goto failed; }
    if ((r = cu->MemcpyHtoD(dx, x, bytes)) != CUDA_SUCCESS) { what = "cuMemcpyHtoD"; goto failed; }
    if ((r = cu->MemcpyHtoD(dy, y, bytes)) != CUDA_SUCCESS) { what = "cuMemcpyHtoD"; goto failed; }
    void *params[] = {&n, &a, &dx, &dy};
    unsigned int threads = 256, blocks = (n + threads - 1) / threads;
    r = cu->LaunchKernel(saxpy_kernel, blocks, 1, 1, threads, 1, 1, 0, NULL, params, NULL);
    if (r != CUDA_SUCCESS) { what = "cuLaunchKernel"; goto failed; }
    if ((r = cu->CtxSynchronize()) != CUDA_SUCCESS) { what = "cuCtxSynchronize"; goto failed; }
    int head = sprintf(out, "ok n=%u\n", n);
    if ((r = cu->MemcpyDtoH(out + head, dy, bytes)) != CUDA_SUCCESS) { what = "cuMemcpyDtoH"; goto failed; }
    cu->MemFree(dx);
    cu->MemFree(dy);
    return (uint32_t)(head + bytes);
failed:
    harvest_cuda_failed(cu, r, what, err, sizeof err);
    if (dx) cu->MemFree(dx);
    if (dy) cu->MemFree(dy);
    return fail(out, "error: %s\n", err);
}

uint32_t saxpy(void *in, uint32_t len, void *out) {
    pthread_mutex_lock(&state_lock);
    uint32_t n = saxpy_locked(in, len, out);
    pthread_mutex_unlock(&state_lock);
    return n;
}

static uint32_t cuda_devices_locked(char *out) {
    char err[3072];
    if (ready(err, sizeof err) != 0) return fail(out, "error: %s\n", err);
    struct harvest_cuda *cu = &device.cu;
    int count = 0;
    CUresult r = cu->DeviceGetCount(&count);
    if (r != CUDA_SUCCESS) {
        harvest_cuda_failed(cu, r, "cuDeviceGetCount", err, sizeof err);
        return fail(out, "error: %s\n", err);
    }
    int w = sprintf(out, "ok count=%d\n", count);
    for (int i = 0; i < count && i < 64; i++) {
        CUdevice dev;
        char name[256] = "?";
        size_t mem = 0;
        if (cu->DeviceGet(&dev, i) != CUDA_SUCCESS) continue;
        if (cu->DeviceGetName(name, sizeof name - 1, dev) != CUDA_SUCCESS) strcpy(name, "?");
        cu->DeviceTotalMem(&mem, dev);
        w += sprintf(out + w, "%d %s memory_mib=%zu\n", i, name, mem >> 20);
    }
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    w += snprintf(out + w, 512, "CUDA_VISIBLE_DEVICES=%s\n", visible ? visible : "(unset)");
    return (uint32_t)w;
}

uint32_t cuda_devices(void *in, uint32_t len, void *out) {
    (void)in;
    (void)len;
    pthread_mutex_lock(&state_lock);
    uint32_t n = cuda_devices_locked(out);
    pthread_mutex_unlock(&state_lock);
    return n;
}
