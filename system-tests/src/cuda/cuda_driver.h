/* The CUDA driver API loaded at run time, without nvcc or CUDA's headers: cuda_fn.c (the CUDA
   functions in the rFaaS C ABI) and cuda_busy.c (the "batch" busy loop) include it.

   libcuda.so.1 is dlopen()ed on first use, so what includes this builds with plain `cc` and runs
   on machines without NVIDIA's driver, where it reports "no GPU: libcuda.so.1 not found" instead
   of failing to load. The kernels are PTX text for sm_50 and later, loaded with
   cuModuleLoadDataEx (the driver compiles it for the GPU at hand; its error log is kept).

   Symbols are looked up by their ABI names: cuda.h maps cuMemAlloc to cuMemAlloc_v2 and so on
   with macros, and the unsuffixed symbols take 32-bit device pointers.

   The library loaded: $HARVEST_LIBCUDA, else HARVEST_LIBCUDA_DEFAULT (a -D at build time: a
   rehearsal on a machine without a GPU builds with fake_libcuda.c's path, since harvestd starts
   executors with a clean environment), else libcuda.so.1. */
#ifndef HARVEST_CUDA_DRIVER_H
#define HARVEST_CUDA_DRIVER_H

#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef void *CUmodule;
typedef void *CUfunction;
typedef void *CUstream;
typedef unsigned long long CUdeviceptr;

#ifndef HARVEST_LIBCUDA_DEFAULT
#define HARVEST_LIBCUDA_DEFAULT "libcuda.so.1"
#endif

#define CUDA_SUCCESS 0
#define CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT 16
#define CU_JIT_ERROR_LOG_BUFFER 5
#define CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES 6

/* Two kernels, PTX ISA 6.0 (CUDA 9.0 drivers on), for sm_50 and later:
   saxpy(n, a, x, y): y[i] = a * x[i] + y[i] for i < n, one thread per element;
   spin(iters, out):  iters dependent FMAs per thread (at least one), then out[blockIdx.x] = the
                      result, so the loop is not dead code. */
static const char HARVEST_CUDA_PTX[] =
    ".version 6.0\n"
    ".target sm_50\n"
    ".address_size 64\n"
    "\n"
    ".visible .entry saxpy(\n"
    "    .param .u32 saxpy_n,\n"
    "    .param .f32 saxpy_a,\n"
    "    .param .u64 saxpy_x,\n"
    "    .param .u64 saxpy_y\n"
    ")\n"
    "{\n"
    "    .reg .pred %p<2>;\n"
    "    .reg .b32 %r<6>;\n"
    "    .reg .f32 %f<4>;\n"
    "    .reg .b64 %rd<8>;\n"
    "\n"
    "    ld.param.u32 %r1, [saxpy_n];\n"
    "    ld.param.f32 %f1, [saxpy_a];\n"
    "    ld.param.u64 %rd1, [saxpy_x];\n"
    "    ld.param.u64 %rd2, [saxpy_y];\n"
    "    mov.u32 %r2, %ctaid.x;\n"
    "    mov.u32 %r3, %ntid.x;\n"
    "    mov.u32 %r4, %tid.x;\n"
    "    mad.lo.u32 %r5, %r2, %r3, %r4;\n"
    "    setp.ge.u32 %p1, %r5, %r1;\n"
    "    @%p1 bra SAXPY_DONE;\n"
    "    cvta.to.global.u64 %rd3, %rd1;\n"
    "    cvta.to.global.u64 %rd4, %rd2;\n"
    "    mul.wide.u32 %rd5, %r5, 4;\n"
    "    add.s64 %rd6, %rd3, %rd5;\n"
    "    add.s64 %rd7, %rd4, %rd5;\n"
    "    ld.global.f32 %f2, [%rd6];\n"
    "    ld.global.f32 %f3, [%rd7];\n"
    "    fma.rn.f32 %f3, %f1, %f2, %f3;\n"
    "    st.global.f32 [%rd7], %f3;\n"
    "SAXPY_DONE:\n"
    "    ret;\n"
    "}\n"
    "\n"
    ".visible .entry spin(\n"
    "    .param .u32 spin_iters,\n"
    "    .param .u64 spin_out\n"
    ")\n"
    "{\n"
    "    .reg .pred %p<2>;\n"
    "    .reg .b32 %r<4>;\n"
    "    .reg .f32 %f<4>;\n"
    "    .reg .b64 %rd<5>;\n"
    "\n"
    "    ld.param.u32 %r1, [spin_iters];\n"
    "    ld.param.u64 %rd1, [spin_out];\n"
    "    mov.f32 %f1, 0f3F800000;\n"  /* 1.0 */
    "    mov.f32 %f2, 0f3F7FFFFF;\n"  /* 0.99999994 */
    "    mov.f32 %f3, 0f3A83126F;\n"  /* 0.001 */
    "    mov.u32 %r2, 0;\n"
    "SPIN_LOOP:\n"
    "    fma.rn.f32 %f1, %f1, %f2, %f3;\n"
    "    add.u32 %r2, %r2, 1;\n"
    "    setp.lt.u32 %p1, %r2, %r1;\n"
    "    @%p1 bra SPIN_LOOP;\n"
    "    mov.u32 %r3, %ctaid.x;\n"
    "    cvta.to.global.u64 %rd2, %rd1;\n"
    "    mul.wide.u32 %rd3, %r3, 4;\n"
    "    add.s64 %rd4, %rd2, %rd3;\n"
    "    st.global.f32 [%rd4], %f1;\n"
    "    ret;\n"
    "}\n";

/* The driver entry points used, resolved from the loaded library. */
struct harvest_cuda {
    void *lib;
    CUresult (*Init)(unsigned int flags);
    CUresult (*DeviceGetCount)(int *count);
    CUresult (*DeviceGet)(CUdevice *dev, int ordinal);
    CUresult (*DeviceGetName)(char *name, int len, CUdevice dev);
    CUresult (*DeviceGetAttribute)(int *value, int attribute, CUdevice dev);
    CUresult (*DeviceTotalMem)(size_t *bytes, CUdevice dev);
    CUresult (*DevicePrimaryCtxRetain)(CUcontext *ctx, CUdevice dev);
    CUresult (*CtxSetCurrent)(CUcontext ctx);
    CUresult (*CtxSynchronize)(void);
    CUresult (*ModuleLoadDataEx)(CUmodule *module, const void *image, unsigned int n,
                                 int *options, void **values);
    CUresult (*ModuleGetFunction)(CUfunction *f, CUmodule module, const char *name);
    CUresult (*MemAlloc)(CUdeviceptr *ptr, size_t bytes);
    CUresult (*MemFree)(CUdeviceptr ptr);
    CUresult (*MemcpyHtoD)(CUdeviceptr dst, const void *src, size_t bytes);
    CUresult (*MemcpyDtoH)(void *dst, CUdeviceptr src, size_t bytes);
    CUresult (*LaunchKernel)(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                             unsigned int bx, unsigned int by, unsigned int bz,
                             unsigned int shared_bytes, CUstream stream, void **params,
                             void **extra);
    /* Optional (CUDA 6.0 on): names come from a small table without it. */
    CUresult (*GetErrorName)(CUresult err, const char **name);
};

static void harvest_cuda_fmt(char *err, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

/* A CUresult's name: the driver's own where it has cuGetErrorName, else this table's. */
static const char *harvest_cuda_error_name(const struct harvest_cuda *cu, CUresult r) {
    const char *name = NULL;
    if (cu && cu->GetErrorName && cu->GetErrorName(r, &name) == CUDA_SUCCESS && name) return name;
    switch (r) {
    case 1: return "CUDA_ERROR_INVALID_VALUE";
    case 2: return "CUDA_ERROR_OUT_OF_MEMORY";
    case 3: return "CUDA_ERROR_NOT_INITIALIZED";
    case 4: return "CUDA_ERROR_DEINITIALIZED";
    case 34: return "CUDA_ERROR_STUB_LIBRARY";
    case 46: return "CUDA_ERROR_DEVICE_UNAVAILABLE";
    case 100: return "CUDA_ERROR_NO_DEVICE";
    case 101: return "CUDA_ERROR_INVALID_DEVICE";
    case 200: return "CUDA_ERROR_INVALID_IMAGE";
    case 201: return "CUDA_ERROR_INVALID_CONTEXT";
    case 209: return "CUDA_ERROR_NO_BINARY_FOR_GPU";
    case 218: return "CUDA_ERROR_INVALID_PTX";
    case 222: return "CUDA_ERROR_UNSUPPORTED_PTX_VERSION";
    case 304: return "CUDA_ERROR_OPERATING_SYSTEM";
    case 500: return "CUDA_ERROR_NOT_FOUND";
    case 700: return "CUDA_ERROR_ILLEGAL_ADDRESS";
    case 719: return "CUDA_ERROR_LAUNCH_FAILED";
    case 999: return "CUDA_ERROR_UNKNOWN";
    default: return "unknown CUresult";
    }
}

/* Formats "<what>: <NAME> (<code>)" into err; for cuInit's "no device" answers the message
   starts with "no GPU: " like a missing driver's. Returns r. */
static CUresult harvest_cuda_failed(const struct harvest_cuda *cu, CUresult r, const char *what,
                                    char *err, size_t n) {
    int no_gpu = r == 100 || r == 34 || r == 46;
    harvest_cuda_fmt(err, n, "%s%s: %s (%d)", no_gpu ? "no GPU: " : "", what,
                     harvest_cuda_error_name(cu, r), r);
    return r;
}

/* Loads the driver library and resolves every entry point. 0, or -1 with err set (and the
   library closed). */
static int harvest_cuda_load(struct harvest_cuda *cu, char *err, size_t n) {
    memset(cu, 0, sizeof *cu);
    const char *path = getenv("HARVEST_LIBCUDA");
    if (!path || !*path) path = HARVEST_LIBCUDA_DEFAULT;
    cu->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!cu->lib) {
        const char *why = dlerror();
        harvest_cuda_fmt(err, n, "no GPU: %s not found (%s)", path, why ? why : "dlopen failed");
        return -1;
    }
    struct { const char *name; void **slot; } syms[] = {
        {"cuInit", (void **)&cu->Init},
        {"cuDeviceGetCount", (void **)&cu->DeviceGetCount},
        {"cuDeviceGet", (void **)&cu->DeviceGet},
        {"cuDeviceGetName", (void **)&cu->DeviceGetName},
        {"cuDeviceGetAttribute", (void **)&cu->DeviceGetAttribute},
        {"cuDeviceTotalMem_v2", (void **)&cu->DeviceTotalMem},
        {"cuDevicePrimaryCtxRetain", (void **)&cu->DevicePrimaryCtxRetain},
        {"cuCtxSetCurrent", (void **)&cu->CtxSetCurrent},
        {"cuCtxSynchronize", (void **)&cu->CtxSynchronize},
        {"cuModuleLoadDataEx", (void **)&cu->ModuleLoadDataEx},
        {"cuModuleGetFunction", (void **)&cu->ModuleGetFunction},
        {"cuMemAlloc_v2", (void **)&cu->MemAlloc},
        {"cuMemFree_v2", (void **)&cu->MemFree},
        {"cuMemcpyHtoD_v2", (void **)&cu->MemcpyHtoD},
        {"cuMemcpyDtoH_v2", (void **)&cu->MemcpyDtoH},
        {"cuLaunchKernel", (void **)&cu->LaunchKernel},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        *syms[i].slot = dlsym(cu->lib, syms[i].name);
        if (!*syms[i].slot) {
            harvest_cuda_fmt(err, n, "%s has no %s (a CUDA driver older than 9.0?)", path,
                             syms[i].name);
            dlclose(cu->lib);
            memset(cu, 0, sizeof *cu);
            return -1;
        }
    }
    *(void **)&cu->GetErrorName = dlsym(cu->lib, "cuGetErrorName");
    return 0;
}

/* Everything a kernel launch needs on one device: the library, the device's primary context
   (made current on the calling thread) and the loaded PTX module. */
struct harvest_cuda_device {
    struct harvest_cuda cu;
    CUdevice dev;
    CUcontext ctx;
    CUmodule module;
    char name[256];
    int multiprocessors;
};

/* Loads the driver, initialises it, and opens device `ordinal` (as CUDA_VISIBLE_DEVICES numbers
   them) with the kernels loaded. 0, or a CUresult (-1: the library) with err set. */
static int harvest_cuda_open(struct harvest_cuda_device *d, int ordinal, char *err, size_t n) {
    memset(d, 0, sizeof *d);
    if (harvest_cuda_load(&d->cu, err, n) != 0) return -1;
    struct harvest_cuda *cu = &d->cu;
    CUresult r;
    if ((r = cu->Init(0)) != CUDA_SUCCESS) return harvest_cuda_failed(cu, r, "cuInit", err, n);
    int count = 0;
    if ((r = cu->DeviceGetCount(&count)) != CUDA_SUCCESS)
        return harvest_cuda_failed(cu, r, "cuDeviceGetCount", err, n);
    if (ordinal < 0 || ordinal >= count) {
        harvest_cuda_fmt(err, n, "no GPU: device %d asked for, %d visible (CUDA_VISIBLE_DEVICES=%s)",
                         ordinal, count,
                         getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "unset");
        return 100;
    }
    if ((r = cu->DeviceGet(&d->dev, ordinal)) != CUDA_SUCCESS)
        return harvest_cuda_failed(cu, r, "cuDeviceGet", err, n);
    if (cu->DeviceGetName(d->name, sizeof d->name - 1, d->dev) != CUDA_SUCCESS)
        strcpy(d->name, "?");
    if (cu->DeviceGetAttribute(&d->multiprocessors, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                               d->dev) != CUDA_SUCCESS)
        d->multiprocessors = 1;
    if ((r = cu->DevicePrimaryCtxRetain(&d->ctx, d->dev)) != CUDA_SUCCESS)
        return harvest_cuda_failed(cu, r, "cuDevicePrimaryCtxRetain", err, n);
    if ((r = cu->CtxSetCurrent(d->ctx)) != CUDA_SUCCESS)
        return harvest_cuda_failed(cu, r, "cuCtxSetCurrent", err, n);
    char log[2048] = {0};
    int opts[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void *vals[] = {log, (void *)(uintptr_t)sizeof log};
    if ((r = cu->ModuleLoadDataEx(&d->module, HARVEST_CUDA_PTX, 2, opts, vals)) != CUDA_SUCCESS) {
        harvest_cuda_failed(cu, r, "cuModuleLoadDataEx", err, n);
        size_t used = strlen(err);
        if (log[0] && used + 8 < n) harvest_cuda_fmt(err + used, n - used, "; JIT log: %s", log);
        return r;
    }
    return 0;
}

#endif
