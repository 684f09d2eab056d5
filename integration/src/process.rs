//! Child processes for tests: spawn, capture logs, wait until ready, kill on drop.
//!
//! ```no_run
//! use std::time::Duration;
//! use portcullis_integration::process::ProcessBuilder;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let socket = dir.path().join("redis.sock");
//! // No port is chosen up front: a unix socket here, port 0 (read back) elsewhere.
//! let mut server = ProcessBuilder::new("redis", "redis-server")
//!     .args(["--port", "0", "--unixsocket"])
//!     .arg(&socket)
//!     .args(["--save", ""])
//!     .spawn()
//!     .unwrap();
//! server
//!     .wait_until("redis accepts connections", Duration::from_secs(30), || {
//!         std::os::unix::net::UnixStream::connect(&socket).map(|_| ())
//!     })
//!     .unwrap();
//! // `server` is killed (its whole process group) when it goes out of scope, even on panic;
//! // if the test is failing, its log is printed to stderr first.
//! ```
//!
//! - Each process runs in its own process group, so helpers it forks die with it.
//! - stdout and stderr go to one log file in a per-process temp dir ([`Process::dir`]),
//!   which is kept (and its path printed) when the test fails.
//! - Set `PORTCULLIS_TEST_LOGS=1` to print every process log on drop, failing or not.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::fs::{self, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How many trailing log lines go into error messages.
const LOG_TAIL_LINES: usize = 200;

/// Errors from starting, waiting on and locating test processes.
#[derive(thiserror::Error)]
pub enum Error {
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("timed out after {after:?} waiting for {what}; last check: {last}{logs}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
        /// Formatted log tail of the process being waited on (empty for free waits).
        logs: String,
    },
    #[error("{name} exited with {status} while waiting for {what}{logs}")]
    Exited {
        name: String,
        what: String,
        status: ExitStatus,
        logs: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "Envoy binary not found (tried {tried}); run `make setup` or set ENVOY_BIN to an Envoy 1.40 binary"
    )]
    EnvoyNotFound { tried: String },
}

// `unwrap()` in tests prints Debug: make it the readable message, with logs unescaped.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// An [`Error::Io`] with a description of what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// The workspace root: `$PORTCULLIS_ROOT` if set, else the parent of this crate's manifest dir.
pub fn workspace_root() -> PathBuf {
    if let Some(root) = std::env::var_os("PORTCULLIS_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The Envoy binary for tests: `$ENVOY_BIN`, else `$PORTCULLIS_ROOT/.bin/envoy`, else the
/// workspace's `.bin/envoy` (installed by `make setup`).
pub fn envoy_bin() -> Result<PathBuf, Error> {
    let mut candidates = Vec::new();
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|b| !b.is_empty()) {
        candidates.push(PathBuf::from(bin));
    }
    if let Some(root) = std::env::var_os("PORTCULLIS_ROOT").filter(|r| !r.is_empty()) {
        candidates.push(Path::new(&root).join(".bin/envoy"));
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    candidates.push(manifest.parent().unwrap_or(manifest).join(".bin/envoy"));
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    Err(Error::EnvoyNotFound {
        tried: candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A loopback TCP port that is bound but never listens: connections to it are refused, and no
/// other program can take the port while this value lives. For "nothing listens there" cases
/// (a provider or registry that is down) without guessing a free port.
#[derive(Debug)]
pub struct ClosedPort {
    _socket: socket2::Socket,
    port: u16,
}

impl ClosedPort {
    pub fn new() -> Result<Self, Error> {
        use socket2::{Domain, Socket, Type};
        let io = |e| Error::io("bind a closed port on 127.0.0.1", e);
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(io)?;
        socket
            .bind(&std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .map_err(io)?;
        let port = socket
            .local_addr()
            .map_err(io)?
            .as_socket()
            .map(|a| a.port())
            .ok_or_else(|| io(std::io::Error::other("not an inet socket")))?;
        Ok(Self {
            _socket: socket,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Polls `check` every 50 ms (backing off to 250 ms) until it returns `Ok`, or fails with
/// [`Error::Timeout`] naming `what` and the last error `check` returned.
///
/// Use [`Process::wait_until`] instead when waiting on a process: it also fails fast if the
/// process exits, and puts the process log in the error.
pub fn wait_until<T, E: Display>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, Error> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= timeout => {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    after: timeout,
                    last: e.to_string(),
                    logs: String::new(),
                })
            }
            Err(_) => {}
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// Builds and spawns a [`Process`].
#[derive(Debug, Clone)]
pub struct ProcessBuilder {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    env: BTreeMap<OsString, Option<OsString>>,
    cwd: Option<PathBuf>,
}

impl ProcessBuilder {
    /// `name` labels logs and errors (e.g. "envoy", "registry"); `program` is what runs.
    pub fn new(name: impl Into<String>, program: impl AsRef<OsStr>) -> Self {
        Self {
            name: name.into(),
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable for the child (the rest of the environment is inherited).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.insert(
            key.as_ref().to_os_string(),
            Some(value.as_ref().to_os_string()),
        );
        self
    }

    /// Removes an inherited environment variable from the child.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.insert(key.as_ref().to_os_string(), None);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Spawns in a fresh temp dir (see [`Process::dir`]) with stdin closed and stdout+stderr
    /// appended to [`Process::log_path`].
    pub fn spawn(self) -> Result<Process, Error> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("portcullis-{}-", sanitize(&self.name)))
            .tempdir()
            .map_err(|e| Error::io("create temp dir", e))?;
        self.spawn_in(dir)
    }

    /// Like [`spawn`](Self::spawn) but in a temp dir the caller already filled (config files).
    pub fn spawn_in(self, dir: tempfile::TempDir) -> Result<Process, Error> {
        let log_path = dir.path().join(format!("{}.log", sanitize(&self.name)));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("open {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("clone log file handle", e))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        // A test run started in the background (`cargo test &`, CI wrappers) inherits SIGINT
        // and SIGQUIT ignored, and a shell cannot trap a signal ignored on entry: give every
        // child the default dispositions, as from a terminal, so Ctrl-C handling is testable.
        // SAFETY: signal(2) is async-signal-safe; it only runs in the forked child before exec.
        unsafe {
            cmd.pre_exec(|| {
                for sig in [libc::SIGINT, libc::SIGQUIT] {
                    if libc::signal(sig, libc::SIG_DFL) == libc::SIG_ERR {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            name: self.name.clone(),
            program: self.program.to_string_lossy().into_owned(),
            source,
        })?;
        tracing::debug!(name = %self.name, pid = child.id(), log = %log_path.display(), "spawned");
        Ok(Process {
            name: self.name,
            child,
            log_path,
            dir: Some(dir),
            exit: None,
        })
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A running child process; killed with its whole process group on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log_path: PathBuf,
    dir: Option<tempfile::TempDir>,
    exit: Option<ExitStatus>,
}

impl Process {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The per-process temp dir (config files, the log). Removed on drop unless the test failed.
    pub fn dir(&self) -> &Path {
        match &self.dir {
            Some(d) => d.path(),
            None => self.log_path.parent().unwrap_or(Path::new("/")),
        }
    }

    /// The file holding the process's combined stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote so far (lossy UTF-8).
    pub fn logs(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// The last lines of the log, framed for an error message.
    pub fn log_tail(&self) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "\n----- {} log (last {} of {} lines, {}) -----\n{}\n----- end of {} log -----",
            self.name,
            lines.len() - skip,
            lines.len(),
            self.log_path.display(),
            lines[skip..].join("\n"),
            self.name
        )
    }

    /// The exit status if the process has exited (reaps it), else `None`.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
            }
        }
        self.exit
    }

    /// Like [`wait_until`], but fails fast with [`Error::Exited`] if the process exits, and
    /// both errors carry the tail of this process's log.
    pub fn wait_until<T, E: Display>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<T, E>,
    ) -> Result<T, Error> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let last = match check() {
                Ok(v) => return Ok(v),
                Err(e) => e.to_string(),
            };
            if let Some(status) = self.try_status() {
                return Err(Error::Exited {
                    name: self.name.clone(),
                    what: what.to_string(),
                    status,
                    logs: self.log_tail(),
                });
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    after: timeout,
                    last,
                    logs: self.log_tail(),
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// Waits for the process to exit on its own (for commands expected to finish or fail).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, Error> {
        let what = format!("{} to exit", self.name);
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_status() {
                return Ok(st);
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what,
                    after: timeout,
                    last: "still running".into(),
                    logs: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) to the process itself, not its group: for testing
    /// how a program shuts down its own children.
    pub fn signal(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill only sends a signal, to our own child.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// SIGTERM to the process group, then SIGKILL after a grace period; reaps the child.
    /// Idempotent. Returns the exit status if it could be collected.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(st) = self.try_status() {
            // The leader is gone, but helpers it forked may still hold the group.
            signal_group(self.child.id(), libc::SIGKILL);
            return Some(st);
        }
        signal_group(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(st) = self.try_status() {
                signal_group(self.child.id(), libc::SIGKILL);
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(self.child.id(), libc::SIGKILL);
        let st = self.child.wait().ok();
        self.exit = st;
        st
    }

    /// Human-readable description of an exit status ("exit code 1", "signal 11").
    pub fn describe_status(status: &ExitStatus) -> String {
        match (status.code(), status.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => status.to_string(),
        }
    }
}

fn signal_group(pgid: u32, sig: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: killpg only sends a signal; the group id is our own child's (process_group(0)).
    unsafe {
        libc::killpg(pgid, sig);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        let always = std::env::var_os("PORTCULLIS_TEST_LOGS").is_some_and(|v| v != "0");
        self.kill();
        if failing || always {
            eprintln!("{}", self.log_tail());
        }
        if failing {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("(kept {} for inspection)", kept.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_refuses_connections() {
        let closed = ClosedPort::new().unwrap();
        let err = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, closed.port())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        // Held: nobody else can listen there meanwhile.
        assert!(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, closed.port())).is_err());
    }

    #[test]
    fn captures_logs_and_reports_exit() {
        let mut p = ProcessBuilder::new("sh", "sh")
            .args(["-c", "echo out-line; echo err-line >&2; exit 3"])
            .spawn()
            .unwrap();
        let st = p.wait_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(st.code(), Some(3));
        let logs = p.logs();
        assert!(
            logs.contains("out-line") && logs.contains("err-line"),
            "{logs}"
        );
    }

    #[test]
    fn wait_fails_fast_when_process_exits() {
        let mut p = ProcessBuilder::new("sh", "sh")
            .args(["-c", "echo dying; exit 7"])
            .spawn()
            .unwrap();
        let err = p
            .wait_until("never", Duration::from_secs(60), || Err::<(), _>("not yet"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Exited { .. }), "{msg}");
        assert!(msg.contains("dying"), "{msg}");
    }

    #[test]
    fn timeout_names_the_wait_and_last_error() {
        let err = wait_until("the thing", Duration::from_millis(100), || {
            Err::<(), _>("nope")
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("the thing") && msg.contains("nope"), "{msg}");
    }

    #[test]
    fn drop_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let mut p = ProcessBuilder::new("sh", "sh")
            .args(["-c", &script])
            .spawn()
            .unwrap();
        let grandchild: i32 = p
            .wait_until("pid file", Duration::from_secs(10), || {
                fs::read_to_string(&pidfile)
                    .map_err(|e| e.to_string())
                    .and_then(|s| s.trim().parse::<i32>().map_err(|e| e.to_string()))
            })
            .unwrap();
        drop(p);
        // The grandchild was reparented; once killed it is gone or a zombie awaiting init.
        wait_until("grandchild to die", Duration::from_secs(10), || {
            let status =
                fs::read_to_string(format!("/proc/{grandchild}/status")).unwrap_or_default();
            let alive = status
                .lines()
                .any(|l| l.starts_with("State:") && !l.contains("Z (zombie)"));
            if alive {
                Err("still alive")
            } else {
                Ok(())
            }
        })
        .unwrap();
    }

    #[test]
    fn panicking_test_still_kills_and_keeps_the_log_dir() {
        let mut seen: Option<(u32, PathBuf)> = None;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let p = ProcessBuilder::new("sleeper", "sh")
                .args(["-c", "echo started; exec sleep 300"])
                .spawn()
                .unwrap();
            seen = Some((p.pid(), p.dir().to_path_buf()));
            panic!("test failure with a live child");
        }));
        assert!(result.is_err());
        let (pid, dir) = seen.unwrap();
        // Reaped by Drop: no process (not even a zombie) with that pid is left.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} survived"
        );
        let log = dir.join("sleeper.log");
        assert!(fs::read_to_string(&log).unwrap().contains("started"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
