//! Built-in filter modules (`oidc`, `ratelimit`) and the OIDC session secret.
//!
//! The translator runs the built-in modules for Envoy Gateway's SecurityPolicy `oidc` and
//! BackendTrafficPolicy `rateLimit` ([`TranslateOptions::builtin_modules`]). The controller
//! finds them in a directory (`--builtin-wasm-dir`, default `dist/wasm` under the current
//! directory, else `../wasm` beside the executable) or at a URL (`--builtin-wasm-url`).
//!
//! With the dynamic module `libportcullis.so` (`--dynamic-module-dir`, default `dist/dynamic`,
//! else the executable's own directory or `../dynamic` beside it) the same policies run on it
//! instead ([`choose_runtime`]); `--builtin-runtime wasm|dynamic` chooses explicitly.
//!
//! [`TranslateOptions::builtin_modules`]: portcullis_translator::TranslateOptions::builtin_modules

use anyhow::Context;
use portcullis_translator::wasm::source::{WasmCodeType, WasmSource};
use portcullis_translator::BuiltinRuntime;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Names of the built-in modules; the file in a builtin directory is `<name>.wasm`.
pub const BUILTIN_NAMES: [&str; 2] = ["oidc", "ratelimit"];

/// File name of the generated session secret inside the wasm cache directory.
pub const SESSION_SECRET_FILE: &str = "session-secret";

/// A built-in module read from disk.
#[derive(Debug, Clone)]
pub struct LocalModule {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: Vec<u8>,
}

/// `dist/wasm` under the current directory, else `<exe dir>/../wasm` (the `dist/bin`,
/// `dist/wasm` layout): the first that holds a built-in module file.
pub fn default_builtin_dir() -> Option<PathBuf> {
    let has_module = |d: &Path| {
        BUILTIN_NAMES
            .iter()
            .any(|n| d.join(format!("{n}.wasm")).is_file())
    };
    let local = PathBuf::from("dist/wasm");
    if has_module(&local) {
        return Some(local);
    }
    let exe = std::env::current_exe().ok()?;
    let beside = exe.parent()?.join("../wasm");
    has_module(&beside).then_some(beside)
}

/// Reads `<dir>/<name>.wasm` for every built-in name present. A missing file is skipped (its
/// policies report "not configured"); a file that is not a wasm module is an error.
pub fn read_builtin_dir(dir: &Path) -> anyhow::Result<Vec<LocalModule>> {
    if !dir.is_dir() {
        anyhow::bail!("built-in wasm directory {} does not exist", dir.display());
    }
    let mut out = Vec::new();
    for name in BUILTIN_NAMES {
        let path = dir.join(format!("{name}.wasm"));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(module = name, path = %path.display(), "built-in wasm module not found; policies that need it will not be programmed");
                continue;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", path.display()));
            }
        };
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            anyhow::bail!("{} is not a wasm module (bad magic number)", path.display());
        }
        let path = std::path::absolute(&path).unwrap_or(path);
        out.push(LocalModule {
            name: name.to_string(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            path,
            bytes,
        });
    }
    Ok(out)
}

/// File name of the dynamic module in a `--dynamic-module-dir`.
pub const DYNAMIC_MODULE_FILE: &str = "libportcullis.so";

/// `dist/dynamic` under the current directory, else the executable's directory, else
/// `<exe dir>/../dynamic` (the `dist/bin`, `dist/dynamic` layout): the first holding
/// `libportcullis.so`.
pub fn default_dynamic_module_dir() -> Option<PathBuf> {
    let has = |d: &Path| d.join(DYNAMIC_MODULE_FILE).is_file();
    let local = PathBuf::from("dist/dynamic");
    if has(&local) {
        return Some(local);
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.to_path_buf(), dir.join("../dynamic")]
        .into_iter()
        .find(|d| has(d))
}

/// Reads `<dir>/libportcullis.so`. `Ok(None)`: the directory has none. A file that is not an
/// ELF shared library is an error.
pub fn read_dynamic_module(dir: &Path) -> anyhow::Result<Option<LocalModule>> {
    let path = dir.join(DYNAMIC_MODULE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if bytes.len() < 8 || &bytes[..4] != b"\x7fELF" {
        anyhow::bail!(
            "{} is not a shared library (bad ELF magic number)",
            path.display()
        );
    }
    let path = std::path::absolute(&path).unwrap_or(path);
    Ok(Some(LocalModule {
        name: "dynamic".into(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        path,
        bytes,
    }))
}

/// The runtime of the built-in filters: the one asked for, else the dynamic module when the
/// controller has the library, else wasm. Asking for `dynamic` without the library is an error.
pub fn choose_runtime(
    asked: Option<BuiltinRuntime>,
    have_library: bool,
) -> anyhow::Result<BuiltinRuntime> {
    match (asked, have_library) {
        (Some(BuiltinRuntime::Dynamic), false) => anyhow::bail!(
            "--builtin-runtime dynamic needs {DYNAMIC_MODULE_FILE} (--dynamic-module-dir, dist/dynamic, or beside the executable); run `make build-dynamic`"
        ),
        (Some(r), _) => Ok(r),
        (None, true) => Ok(BuiltinRuntime::Dynamic),
        (None, false) => Ok(BuiltinRuntime::Wasm),
    }
}

/// Source for offline `portcullis translate`: the library as the controller would serve it
/// (`<wasm_base>/dynamic/<sha256>.so`), pinned by its sha256.
pub fn offline_dynamic_source(m: &LocalModule, wasm_base: &str) -> WasmSource {
    WasmSource {
        code_type: WasmCodeType::DynamicModule,
        url: format!(
            "{}/dynamic/{}.so",
            wasm_base.trim_end_matches('/'),
            m.sha256
        ),
        sha256: Some(m.sha256.clone()),
        pull_secret: None,
        pull_policy: None,
    }
}

/// Parses `NAME=URL[@sha256]` (`--builtin-wasm-url`).
pub fn parse_builtin_url(s: &str) -> Result<(String, WasmSource), String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=URL[@sha256]"))?;
    if !BUILTIN_NAMES.contains(&name) {
        return Err(format!(
            "unknown built-in module {name:?} (expected one of {})",
            BUILTIN_NAMES.join(", ")
        ));
    }
    let (url, sha) = match rest.rsplit_once('@') {
        Some((u, pin)) if is_pin(pin) => (u, Some(canonical_pin(pin))),
        _ => (rest, None),
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url:?}: the URL must be http:// or https://"));
    }
    Ok((
        name.to_string(),
        WasmSource {
            code_type: WasmCodeType::Http,
            url: url.to_string(),
            sha256: sha,
            pull_secret: None,
            pull_policy: None,
        },
    ))
}

/// Checks `HOST:PORT` (`--ratelimit-service`; IPv6 as `[addr]:port`).
pub fn parse_host_port(s: &str) -> Result<String, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: invalid port {port:?}"))?;
    if host.trim_matches(['[', ']']).is_empty() || port == 0 {
        return Err(format!("{s:?} is not HOST:PORT"));
    }
    Ok(s.to_string())
}

fn canonical_pin(pin: &str) -> String {
    pin.trim_start_matches("sha256:").to_ascii_lowercase()
}

fn is_pin(pin: &str) -> bool {
    let p = canonical_pin(pin);
    p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Sources for offline `portcullis translate`: each module as the controller would serve it
/// from `wasm_base` (`<wasm_base>/wasm/<sha256>.wasm`), pinned by its sha256. Deterministic:
/// depends only on the files' contents.
pub fn offline_sources(modules: &[LocalModule], wasm_base: &str) -> BTreeMap<String, WasmSource> {
    modules
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                WasmSource {
                    code_type: WasmCodeType::Http,
                    url: format!("{}/wasm/{}.wasm", wasm_base.trim_end_matches('/'), m.sha256),
                    sha256: Some(m.sha256.clone()),
                    pull_secret: None,
                    pull_policy: None,
                },
            )
        })
        .collect()
}

/// The 32-byte key OIDC session secrets derive from: read from `path`, or created there (random,
/// mode 0600) when the file does not exist. The file holds 64 hex characters (or 32 raw bytes).
pub fn load_or_create_session_secret(path: &Path) -> anyhow::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => {
            parse_secret(&bytes).with_context(|| format!("session secret file {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::getrandom(&mut key)
                .map_err(|e| anyhow::anyhow!("cannot generate a session secret: {e}"))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            write_private(path, format!("{}\n", hex::encode(key)).as_bytes())
                .with_context(|| format!("writing session secret {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a new OIDC session secret");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading session secret {}", path.display())),
    }
}

fn parse_secret(bytes: &[u8]) -> anyhow::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    let text = std::str::from_utf8(bytes).map(str::trim).unwrap_or("");
    if text.len() == 64 && hex::decode_to_slice(text, &mut key).is_ok() {
        return Ok(key);
    }
    if bytes.len() == 32 {
        key.copy_from_slice(bytes);
        return Ok(key);
    }
    anyhow::bail!("expected 64 hex characters or 32 raw bytes")
}

/// Create `path` with mode 0600 (never replacing an existing file) and write `data`.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The built-in modules: files of the builtin directory registered in the cache (served from
/// it by sha256), then `--builtin-wasm-url` sources, which win.
pub(crate) fn builtin_modules(
    dir: Option<&std::path::Path>,
    urls: &BTreeMap<String, WasmSource>,
    cache: &crate::wasm::cache::WasmCache,
) -> anyhow::Result<BTreeMap<String, WasmSource>> {
    let mut out = BTreeMap::new();
    if let Some(dir) = dir {
        for m in read_builtin_dir(dir)? {
            let src = cache.add_local(&m.path, &m.bytes).with_context(|| {
                format!(
                    "storing built-in module {} in the wasm cache",
                    m.path.display()
                )
            })?;
            tracing::info!(module = %m.name, path = %m.path.display(), sha256 = %m.sha256, "built-in wasm module");
            out.insert(m.name, src);
        }
    }
    out.extend(urls.clone());
    Ok(out)
}

/// The runtime of the built-in filters and, when the controller has `libportcullis.so`, the
/// library registered in the cache (served to Envoy from it by sha256, like the wasm modules).
pub(crate) fn builtin_dynamic_module(
    dir: Option<&std::path::Path>,
    asked: Option<BuiltinRuntime>,
    cache: &crate::wasm::cache::WasmCache,
) -> anyhow::Result<(BuiltinRuntime, Option<WasmSource>)> {
    let module = match dir {
        Some(d) => read_dynamic_module(d)?,
        None => None,
    };
    let runtime = choose_runtime(asked, module.is_some())?;
    let source = match module {
        Some(m) => {
            let src = cache
                .add_local_as(WasmCodeType::DynamicModule, &m.path, &m.bytes)
                .with_context(|| format!("storing {} in the module cache", m.path.display()))?;
            tracing::info!(path = %m.path.display(), sha256 = %m.sha256, "built-in dynamic module");
            Some(src)
        }
        None => None,
    };
    tracing::info!(runtime = ?runtime, "built-in filters (SecurityPolicy oidc, BackendTrafficPolicy rateLimit) run on this runtime");
    Ok((runtime, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_secret_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/secret");
        let a = load_or_create_session_secret(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create_session_secret(&path).expect("reuse");
        assert_eq!(a, b);
        assert_ne!(a, [0u8; 32]);
        std::fs::write(&path, "short").expect("write");
        assert!(load_or_create_session_secret(&path).is_err());
        std::fs::write(&path, [7u8; 32]).expect("write");
        assert_eq!(
            load_or_create_session_secret(&path).expect("raw"),
            [7u8; 32]
        );
    }

    #[test]
    fn builtin_dir_and_urls() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("oidc.wasm"), b"\0asm\x01\0\0\0").expect("write");
        let mods = read_builtin_dir(dir.path()).expect("read");
        assert_eq!(mods.len(), 1);
        assert_eq!(mods[0].name, "oidc");
        let srcs = offline_sources(&mods, "http://127.0.0.1:18002/");
        let oidc = &srcs["oidc"];
        assert_eq!(oidc.sha256.as_deref(), Some(mods[0].sha256.as_str()));
        assert_eq!(
            oidc.url,
            format!("http://127.0.0.1:18002/wasm/{}.wasm", mods[0].sha256)
        );
        std::fs::write(dir.path().join("ratelimit.wasm"), b"nope").expect("write");
        assert!(read_builtin_dir(dir.path()).is_err());
        assert!(read_builtin_dir(&dir.path().join("missing")).is_err());

        let pin = "A".repeat(64);
        let (n, s) =
            parse_builtin_url(&format!("ratelimit=https://h/rl.wasm@sha256:{pin}")).expect("parse");
        assert_eq!(n, "ratelimit");
        assert_eq!(s.url, "https://h/rl.wasm");
        assert_eq!(s.sha256, Some("a".repeat(64)));
        let (_, s) = parse_builtin_url("oidc=http://u@h/o.wasm").expect("parse");
        assert_eq!((s.url.as_str(), s.sha256), ("http://u@h/o.wasm", None));
        assert!(parse_builtin_url("nope=http://h/x.wasm").is_err());
        assert!(parse_builtin_url("oidc=file:///x.wasm").is_err());
        assert!(parse_builtin_url("oidc").is_err());

        assert!(parse_host_port("ratelimit.svc:8081").is_ok());
        assert!(parse_host_port("[::1]:8081").is_ok());
        assert!(parse_host_port("host").is_err());
        assert!(parse_host_port(":80").is_err());
        assert!(parse_host_port("h:0").is_err());
    }
}
