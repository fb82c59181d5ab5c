//! Generates the SPANK FFI declarations from the installed `<slurm/spank.h>` and reads
//! `SLURM_VERSION_NUMBER` from the installed `<slurm/slurm_version.h>`, so that one source tree
//! builds a plugin that the local Slurm release accepts (slurmstepd refuses a plugin whose
//! major.minor differs from its own).
//!
//! `SLURM_INCLUDE_DIR` names the directory that holds `slurm/spank.h` (default `/usr/include`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const DEFAULT_INCLUDE_DIR: &str = "/usr/include";

fn main() -> Result<()> {
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    let include = env::var_os("SLURM_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_INCLUDE_DIR));
    let spank_h = include.join("slurm/spank.h");
    let version_h = include.join("slurm/slurm_version.h");
    for header in [&spank_h, &version_h] {
        if !header.is_file() {
            bail!(
                "{} not found: install Slurm's development headers (Debian: apt-get install \
                 libslurm-dev) or set SLURM_INCLUDE_DIR to the directory that holds slurm/spank.h",
                header.display()
            );
        }
        println!("cargo:rerun-if-changed={}", header.display());
    }

    let version = read_version(&version_h)?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("slurm_version.rs"),
        format!(
            "/// `SLURM_VERSION_NUMBER` of the Slurm headers this plugin was built against \
             ({}.{}.{}).\npub const SLURM_VERSION_NUMBER: u32 = {version:#x};\n",
            version >> 16,
            (version >> 8) & 0xff,
            version & 0xff
        ),
    )?;

    let bindings = bindgen::Builder::default()
        .header_contents("wrapper.h", "#include <slurm/spank.h>\n")
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_function("spank_.*")
        .allowlist_function("slurm_(info|error|debug|verbose|spank_log)")
        .allowlist_type("spank_.*")
        .allowlist_var("ESPANK_.*|SLURM_SUCCESS|SLURM_ERROR")
        .constified_enum_module("spank_context")
        .constified_enum_module("spank_item")
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .context("bindgen could not translate slurm/spank.h (is libclang-dev installed?)")?;
    bindings
        .write_to_file(out.join("spank_sys.rs"))
        .context("writing the generated SPANK bindings")?;
    Ok(())
}

/// The value of `#define SLURM_VERSION_NUMBER 0x......` in `slurm_version.h`.
fn read_version(path: &Path) -> Result<u32> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("#define"))
        .map(str::trim)
        .find_map(|l| l.strip_prefix("SLURM_VERSION_NUMBER"))
        .map(str::trim)
        .with_context(|| format!("no SLURM_VERSION_NUMBER in {}", path.display()))?;
    let hex = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
        .with_context(|| {
            format!(
                "SLURM_VERSION_NUMBER {value:?} in {} is not hex",
                path.display()
            )
        })?;
    u32::from_str_radix(hex, 16).with_context(|| {
        format!(
            "SLURM_VERSION_NUMBER {value:?} in {} is not hex",
            path.display()
        )
    })
}
