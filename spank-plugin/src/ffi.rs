//! The ABI shell: the symbols slurmstepd, srun, sbatch and salloc look up, and the SPANK handle
//! behind [`Host`]. Every callback catches panics and answers success, so nothing in harvest can
//! fail a job; the logic lives in [`crate::plugin`].

#![allow(non_upper_case_globals)]

use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::AtomicBool;

use crate::config::Config;
use crate::host::{Context, Host, Item, Level};
use crate::plugin::{self, Warner};
use crate::privilege::AsRoot;
use crate::sys;

include!(concat!(env!("OUT_DIR"), "/slurm_version.rs"));

/// `plugin_name`: also names the option's environment variable (`SLURM_SPANK_OPTION_harvest_…`).
#[unsafe(no_mangle)]
pub static plugin_name: [u8; 8] = *b"harvest\0";
#[unsafe(no_mangle)]
pub static plugin_type: [u8; 6] = *b"spank\0";
/// Slurm loads a SPANK plugin only if this matches its own major.minor: taken from the installed
/// `slurm_version.h` at build time.
#[unsafe(no_mangle)]
pub static plugin_version: u32 = SLURM_VERSION_NUMBER;
#[unsafe(no_mangle)]
pub static spank_plugin_version: u32 = 1;

const SPANK_SUCCESS: c_int = 0;
const OPTION_NAME: &CStr = c"harvest";
const OPTION_ARG: &CStr = c"on|off";
/// The longest job environment value `job_env` returns (the plugin reads no fact from it).
const ENV_BUF: usize = 4096;

/// One warning per process (slurmstepd lives for one step, srun for one command).
static WARNED: AtomicBool = AtomicBool::new(false);

/// Runs a callback body; a panic is logged and swallowed, never unwound into C.
fn guard(name: &str, body: impl FnOnce()) -> c_int {
    if catch_unwind(AssertUnwindSafe(body)).is_err() {
        log(
            Level::Error,
            &format!(
                "harvest: internal error in {name} (a bug; please report it); the job runs unaffected"
            ),
        );
    }
    SPANK_SUCCESS
}

/// The plugin's `plugstack.conf` arguments.
///
/// # Safety
/// `av` points to `ac` valid NUL-terminated strings (or is NULL when `ac` is 0).
unsafe fn args(ac: c_int, av: *mut *mut c_char) -> Vec<String> {
    if av.is_null() {
        return Vec::new();
    }
    (0..usize::try_from(ac).unwrap_or(0))
        .filter_map(|i| {
            // SAFETY: the caller guarantees `av` holds `ac` entries.
            let p = unsafe { *av.add(i) };
            // SAFETY: each non-NULL entry is a NUL-terminated string owned by Slurm for the call.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .collect()
}

fn log(level: Level, msg: &str) {
    let Ok(msg) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: both are valid NUL-terminated strings; "%s" consumes exactly the one argument.
    unsafe {
        match level {
            Level::Error => sys::slurm_error(c"%s".as_ptr(), msg.as_ptr()),
            Level::Info => sys::slurm_info(c"%s".as_ptr(), msg.as_ptr()),
            Level::Debug => sys::slurm_debug(c"%s".as_ptr(), msg.as_ptr()),
        }
    }
}

/// The `--harvest` option as Slurm sees it. Slurm keeps the registered pointer, so the one
/// registered at init is leaked for the life of the process.
fn option(usage: *mut c_char) -> sys::spank_option {
    sys::spank_option {
        name: OPTION_NAME.as_ptr().cast_mut(),
        arginfo: OPTION_ARG.as_ptr().cast_mut(),
        usage,
        has_arg: 1,
        val: 0,
        cb: Some(option_cb),
    }
}

extern "C" fn option_cb(_val: c_int, optarg: *const c_char, remote: c_int) -> c_int {
    let mut rc = SPANK_SUCCESS;
    guard("the --harvest option", || {
        let value = (!optarg.is_null()).then(|| {
            // SAFETY: Slurm passes NULL (checked) or the user's NUL-terminated argument, valid
            // for the call.
            let arg = unsafe { CStr::from_ptr(optarg) };
            arg.to_string_lossy().into_owned()
        });
        if let Err(msg) = plugin::check_option(value.as_deref(), remote != 0) {
            log(Level::Error, &msg);
            rc = -1;
        }
    });
    rc
}

/// A SPANK handle for the duration of one callback.
struct SpankHost(sys::spank_t);

impl Host for SpankHost {
    fn context(&self) -> Context {
        // SAFETY: takes no arguments; valid in every context.
        match unsafe { sys::spank_context() } {
            sys::spank_context::S_CTX_LOCAL => Context::Local,
            sys::spank_context::S_CTX_REMOTE => Context::Remote,
            sys::spank_context::S_CTX_ALLOCATOR => Context::Allocator,
            sys::spank_context::S_CTX_SLURMD => Context::Slurmd,
            sys::spank_context::S_CTX_JOB_SCRIPT => Context::JobScript,
            _ => Context::Unknown,
        }
    }

    fn item(&self, item: Item) -> Option<u32> {
        let which = match item {
            Item::JobId => sys::spank_item::S_JOB_ID,
            Item::StepId => sys::spank_item::S_JOB_STEPID,
            Item::Uid => sys::spank_item::S_JOB_UID,
        };
        let mut value: u32 = 0;
        // SAFETY: the handle is the one Slurm passed to this callback; S_JOB_ID and S_JOB_STEPID
        // take a `uint32_t *`, S_JOB_UID a `uid_t *` (also 32 bits), and `value` outlives the call.
        let rc = unsafe { sys::spank_get_item(self.0, which, &mut value as *mut u32) };
        (rc == sys::ESPANK_SUCCESS).then_some(value)
    }

    fn job_env(&self, name: &str) -> Option<String> {
        let name = CString::new(name).ok()?;
        let mut buf = vec![0u8; ENV_BUF];
        // SAFETY: `buf` is writable for its whole length, which is what we pass; Slurm
        // NUL-terminates what it writes.
        let rc = unsafe {
            sys::spank_getenv(
                self.0,
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                ENV_BUF as c_int,
            )
        };
        if rc != sys::ESPANK_SUCCESS {
            return None;
        }
        let text = CStr::from_bytes_until_nul(&buf).ok()?;
        Some(text.to_string_lossy().into_owned())
    }

    fn process_env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn harvest_option(&self) -> Option<String> {
        let mut opt = option(std::ptr::null_mut());
        let mut arg: *mut c_char = std::ptr::null_mut();
        // SAFETY: Slurm finds the option by name; `opt` and `arg` outlive the call and `arg`
        // is set to a string Slurm owns for the rest of the step (or left NULL).
        let rc = unsafe { sys::spank_option_getopt(self.0, &mut opt, &mut arg) };
        if rc != sys::ESPANK_SUCCESS || arg.is_null() {
            return None;
        }
        // SAFETY: a non-NULL `arg` is the option's NUL-terminated argument.
        Some(
            unsafe { CStr::from_ptr(arg) }
                .to_string_lossy()
                .into_owned(),
        )
    }

    fn log(&self, level: Level, msg: &str) {
        log(level, msg);
    }
}

/// # Safety
/// Called by Slurm with a valid handle and `ac` argument strings in `av`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_init(
    sp: sys::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    guard("slurm_spank_init", || {
        // SAFETY: forwarded from Slurm's call.
        let args = unsafe { args(ac, av) };
        let host = SpankHost(sp);
        if host.context() == Context::Slurmd {
            return;
        }
        let default = Config::parse(args.iter().map(String::as_str))
            .map(|c| if c.default_harvest { "on" } else { "off" })
            .unwrap_or("on");
        let usage = CString::new(format!(
            "Lend this job's idle cores and memory to short serverless functions while it runs \
             (on), or keep its nodes free of them (off). Site default: {default}."
        ))
        .unwrap_or_default();
        let opt = Box::leak(Box::new(option(usage.into_raw())));
        // SAFETY: `opt` is leaked, so it stays valid for as long as Slurm keeps the pointer.
        let rc = unsafe { sys::spank_option_register(sp, opt) };
        if rc != sys::ESPANK_SUCCESS {
            Warner::new(&WARNED).warn(
                &host,
                &format!("cannot register --harvest (SPANK error {rc})"),
            );
        }
    })
}

/// # Safety
/// Called by Slurm with a valid handle and `ac` argument strings in `av`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_user_init(
    sp: sys::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    guard("slurm_spank_user_init", || {
        // SAFETY: forwarded from Slurm's call.
        let args = unsafe { args(ac, av) };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let host = SpankHost(sp);
        // slurmstepd runs user_init as the job's user (seteuid): the agent's socket is root's
        // and the leases' processes are other users'. Root back on this thread, given back on
        // return (or unwind).
        let _root = match AsRoot::take() {
            Ok(r) => Some(r),
            Err(e) => {
                host.log(
                    Level::Error,
                    &format!("harvest: cannot take root back for the step start ({e}); the agent may not hear of it"),
                );
                None
            }
        };
        plugin::user_init(&host, &args, &Warner::new(&WARNED));
    })
}

/// # Safety
/// Called by Slurm with a valid handle and `ac` argument strings in `av`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_exit(
    sp: sys::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    guard("slurm_spank_exit", || {
        // SAFETY: forwarded from Slurm's call.
        let args = unsafe { args(ac, av) };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        plugin::exit(&SpankHost(sp), &args, &Warner::new(&WARNED));
    })
}

/// # Safety
/// Called by Slurm with a valid handle and `ac` argument strings in `av`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_job_epilog(
    sp: sys::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    guard("slurm_spank_job_epilog", || {
        // SAFETY: forwarded from Slurm's call.
        let args = unsafe { args(ac, av) };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        plugin::job_epilog(&SpankHost(sp), &args, &Warner::new(&WARNED));
    })
}
