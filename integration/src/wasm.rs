//! The filter modules under test, shared by every test: `dist/wasm/<name>.wasm`, and the
//! dynamic module `dist/dynamic/libportcullis.so` ([`dynamic_library`]).
//!
//! `make test` builds them first. When a module is missing (e.g. plain `cargo test`), the
//! first caller runs `make build-wasm` once, under a file lock so parallel test binaries do
//! not build concurrently; the others wait and then reuse the result. Set
//! `PORTCULLIS_NO_BUILD=1` to fail instead of building. A stale module is not rebuilt:
//! run `make build-wasm` after changing a filter.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::process::workspace_root;

/// Errors from locating or building the filter modules.
#[derive(thiserror::Error)]
pub enum Error {
    #[error("{path} is missing and PORTCULLIS_NO_BUILD is set: run `make {target}`")]
    Missing { path: PathBuf, target: String },
    #[error("`make {target}` failed ({status}); run it by hand to see why:\n{output}")]
    BuildFailed {
        target: String,
        status: String,
        output: String,
    },
    #[error("`make {target}` ran but {path} is still missing")]
    StillMissing { path: PathBuf, target: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

// `unwrap()` in tests prints Debug: make it the readable message, with logs unescaped.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// `dist/wasm` under the workspace root.
pub fn dist_dir() -> PathBuf {
    workspace_root().join("dist/wasm")
}

/// The path of filter module `name` (`ua_block`, `headers`), building it if missing.
pub fn module(name: &str) -> Result<PathBuf, Error> {
    ensure(dist_dir().join(format!("{name}.wasm")), "build-wasm")
}

/// `path`, running `make <target>` once (under a lock shared by every test process) if it is
/// missing.
pub fn ensure(path: PathBuf, target: &str) -> Result<PathBuf, Error> {
    if path.is_file() {
        return Ok(path);
    }
    if std::env::var_os("PORTCULLIS_NO_BUILD").is_some_and(|v| v != "0") {
        return Err(Error::Missing {
            path,
            target: target.into(),
        });
    }
    // One build per process at a time, and one across processes via the lock file.
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
    let lock_path = workspace_root().join("target/.portcullis-build-wasm.lock");
    if let Some(parent) = lock_path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::Io {
            what: format!("mkdir {}", parent.display()),
            source: e,
        })?;
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::Io {
            what: format!("open {}", lock_path.display()),
            source: e,
        })?;
    lock.lock().map_err(|e| Error::Io {
        what: format!("lock {}", lock_path.display()),
        source: e,
    })?;
    if path.is_file() {
        return Ok(path); // another process built it while we waited
    }
    eprintln!("{} missing: running `make {target}` once", path.display());
    let out = Command::new("make")
        .arg(target)
        .current_dir(workspace_root())
        .output()
        .map_err(|e| Error::Io {
            what: format!("run make {target}"),
            source: e,
        })?;
    if !out.status.success() {
        return Err(Error::BuildFailed {
            target: target.into(),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::StillMissing {
            path,
            target: target.into(),
        })
    }
}

/// `dist/dynamic/libportcullis.so`: the four filters as one Envoy dynamic module.
pub fn dynamic_library() -> Result<PathBuf, Error> {
    ensure(
        workspace_root().join("dist/dynamic/libportcullis.so"),
        "build-dynamic",
    )
}

/// `dist/dynamic-test/libportcullis.so`: the library with the test-only `panic` filter.
pub fn dynamic_test_library() -> Result<PathBuf, Error> {
    ensure(
        workspace_root().join("dist/dynamic-test/libportcullis.so"),
        "build-dynamic-test",
    )
}
