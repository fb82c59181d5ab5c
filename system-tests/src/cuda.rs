//! The CUDA test programs, built with plain `cc` (no nvcc, no CUDA headers): they `dlopen`
//! libcuda.so.1 at run time and load their kernels as embedded PTX (`cuda/cuda_driver.h`), so
//! they build on every machine and, without a driver or a GPU, answer "no GPU: ..." instead of
//! crashing.
//!
//! - [`CUDA_FN_C`]: functions in the rFaaS C ABI, `saxpy` and `cuda_devices`; see the file's
//!   header for their input and output.
//! - [`CUDA_BUSY_C`]: `cuda_busy`, a "batch" program that keeps part of a GPU busy and reports
//!   how many kernels it completed.
//! - [`FAKE_LIBCUDA_C`]: a CPU stand-in for the driver, for tests and rehearsals without a GPU.
//!   Built with `driver: Some(path)`, the library and `cuda_busy` load it unless
//!   `HARVEST_LIBCUDA` says otherwise (harvestd starts executors with a clean environment).
//!
//! `scripts/gpu-check` compiles the same files with the same `cc` lines.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::fixtures::FUNCTIONS_C;

/// The run-time loader of the CUDA driver API and the PTX of the kernels (`saxpy`, `spin`).
pub const CUDA_DRIVER_H: &str = include_str!("cuda/cuda_driver.h");
/// The CUDA functions in the rFaaS C ABI: `saxpy` and `cuda_devices`.
pub const CUDA_FN_C: &str = include_str!("cuda/cuda_fn.c");
/// The batch busy loop, a program: `cuda_busy [--seconds S] [--fraction F] [--iters N]`.
pub const CUDA_BUSY_C: &str = include_str!("cuda/cuda_busy.c");
/// A CPU stand-in for libcuda.so.1 (`FAKE_CUDA_FAIL=<entry>=<CUresult>` injects errors).
pub const FAKE_LIBCUDA_C: &str = include_str!("cuda/fake_libcuda.c");

fn cc(
    dir: &Path,
    args: &[&str],
    driver: Option<&Path>,
    sources: &[(&str, &str)],
    output: &Path,
) -> Result<()> {
    std::fs::write(dir.join("cuda_driver.h"), CUDA_DRIVER_H)?;
    let mut cmd = Command::new("cc");
    cmd.args(["-O2", "-Wall", "-Werror"]).args(args);
    if let Some(driver) = driver {
        let driver = driver
            .to_str()
            .filter(|p| !p.contains(['"', '\\']))
            .with_context(|| format!("{} cannot be a C string literal", driver.display()))?;
        cmd.arg(format!("-DHARVEST_LIBCUDA_DEFAULT=\"{driver}\""));
    }
    cmd.arg("-o").arg(output);
    for (name, text) in sources {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        cmd.arg(path);
    }
    let out = cmd
        .args(["-ldl", "-lpthread"])
        .output()
        .context("running cc (a C compiler is needed; Debian: apt-get install gcc)")?;
    ensure!(
        out.status.success(),
        "cc failed building {}: {}",
        output.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(output, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Compiles [`CUDA_FN_C`] and the test functions of [`FUNCTIONS_C`] (`whereami`, `open_path`,
/// ...) into one library, `dir/libgpufunctions.so`, readable by every user; `driver`: the
/// library it loads by default instead of libcuda.so.1.
pub fn build_cuda_library(dir: &Path, driver: Option<&Path>) -> Result<PathBuf> {
    let lib = dir.join("libgpufunctions.so");
    cc(
        dir,
        &["-shared", "-fPIC"],
        driver,
        &[("functions.c", FUNCTIONS_C), ("cuda_fn.c", CUDA_FN_C)],
        &lib,
    )?;
    Ok(lib)
}

/// Compiles [`CUDA_BUSY_C`] into `dir/cuda_busy`; `driver` as for [`build_cuda_library`].
pub fn build_cuda_busy(dir: &Path, driver: Option<&Path>) -> Result<PathBuf> {
    let bin = dir.join("cuda_busy");
    cc(dir, &[], driver, &[("cuda_busy.c", CUDA_BUSY_C)], &bin)?;
    Ok(bin)
}

/// Compiles [`FAKE_LIBCUDA_C`] into `dir/libfakecuda.so`, readable by every user.
pub fn build_fake_libcuda(dir: &Path) -> Result<PathBuf> {
    let lib = dir.join("libfakecuda.so");
    cc(
        dir,
        &["-shared", "-fPIC"],
        None,
        &[("fake_libcuda.c", FAKE_LIBCUDA_C)],
        &lib,
    )?;
    Ok(lib)
}
