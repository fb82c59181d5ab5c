//! The two NVML calls `nvml-wrapper` 0.13 does not wrap: a MIG device's GPU instance id and
//! compute instance id (`nvmlDeviceGetGpuInstanceId`, `nvmlDeviceGetComputeInstanceId`). They
//! name a MIG instance's access files, which the devices cgroup must allow for the instance to
//! be usable ([`crate::cgroup::devices`]). The only `unsafe` code of harvestd: two calls through
//! the function pointers `nvml-wrapper` already resolved, on a handle it gave out.
#![allow(unsafe_code)]

use nvml_wrapper::{Device, Nvml};

/// `NVML_SUCCESS`.
const NVML_SUCCESS: u32 = 0;

/// The GPU instance id and compute instance id of a MIG device handle; `None` for each that
/// NVML does not give (an older driver, or a handle that is not a MIG device's).
pub fn instance_ids(nvml: &Nvml, mig: &Device<'_>) -> (Option<u32>, Option<u32>) {
    let lib = nvml.lib();
    // SAFETY: `handle` is a live handle from `mig_device_by_index` on this `Nvml`, which `mig`
    // borrows, so the library is still loaded and initialised; NVML only reads it.
    let handle = unsafe { mig.handle() };
    let call = |f: Option<&unsafe extern "C" fn(_, *mut std::ffi::c_uint) -> u32>| {
        let f = f?;
        let mut id: std::ffi::c_uint = 0;
        // SAFETY: `f` is the NVML entry point of that name resolved by `nvml-wrapper` from the
        // loaded library, with the C signature `nvmlReturn_t (nvmlDevice_t, unsigned int *)`;
        // `id` is a live local the call writes one `unsigned int` to.
        let rc = unsafe { f(handle, &mut id) };
        (rc == NVML_SUCCESS).then_some(id)
    };
    (
        call(lib.nvmlDeviceGetGpuInstanceId.as_ref().ok()),
        call(lib.nvmlDeviceGetComputeInstanceId.as_ref().ok()),
    )
}
