//! The function library: a shared object whose exported C functions are invoked by name.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};

/// The rFaaS function ABI: `uint32_t fn(void *in, uint32_t in_len, void *out)`, returning the
/// number of bytes written to `out`.
pub type FunctionPtr = unsafe extern "C" fn(*mut c_void, u32, *mut c_void) -> u32;

/// A library that could not be loaded, or a function that cannot be looked up.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("cannot load function library {path}: {source}")]
    Load {
        path: PathBuf,
        source: libloading::Error,
    },
    #[error("invalid function name {0:?}: use a C identifier ([A-Za-z_][A-Za-z0-9_]*)")]
    BadName(String),
    #[error("the library has no function {0:?}")]
    NotFound(String),
}

/// A loaded library, with the functions looked up so far cached.
#[derive(Debug)]
pub struct FunctionLibrary {
    path: PathBuf,
    lib: libloading::Library,
    cache: HashMap<String, FunctionPtr>,
}

impl FunctionLibrary {
    /// Loads the shared object at `path` (its constructors run now, in this process).
    pub fn load(path: &Path) -> Result<Self, LibraryError> {
        // SAFETY: loading a library runs its initialisers. That is the point of an executor: the
        // lease's user ships the code, and it runs as that user, confined to the lease's cgroup.
        let lib =
            unsafe { libloading::Library::new(path) }.map_err(|source| LibraryError::Load {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            lib,
            cache: HashMap::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The function called `name`.
    pub fn get(&mut self, name: &str) -> Result<FunctionPtr, LibraryError> {
        if let Some(f) = self.cache.get(name) {
            return Ok(*f);
        }
        if !is_c_identifier(name) {
            return Err(LibraryError::BadName(name.to_owned()));
        }
        let mut symbol = Vec::with_capacity(name.len() + 1);
        symbol.extend_from_slice(name.as_bytes());
        symbol.push(0);
        // SAFETY: the symbol is NUL-terminated, and the ABI of exported functions is the
        // documented contract of a function library; a library that exports a data symbol under
        // that name crashes the worker, which the supervisor reports as a crash.
        let f = unsafe { self.lib.get::<FunctionPtr>(&symbol) }
            .map(|s| *s)
            .map_err(|_| LibraryError::NotFound(name.to_owned()))?;
        self.cache.insert(name.to_owned(), f);
        Ok(f)
    }
}

fn is_c_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 255
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_c_identifier("echo"));
        assert!(is_c_identifier("_f2"));
        assert!(!is_c_identifier(""));
        assert!(!is_c_identifier("2f"));
        assert!(!is_c_identifier("a-b"));
        assert!(!is_c_identifier("a\0b"));
    }

    #[test]
    fn missing_library_names_the_path() {
        let err = FunctionLibrary::load(Path::new("/nonexistent/libf.so")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/libf.so"), "{err}");
    }
}
