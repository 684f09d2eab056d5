//! A real Redis (Debian `redis-server`) on a unix socket in its temp dir (`--port 0`: no TCP
//! listener at all, so no port to pick), no persistence, killed on drop.
//!
//! ```no_run
//! let redis = portcullis_integration::redis::Redis::start().unwrap();
//! let url = redis.url(); // unix:///tmp/portcullis-redis-.../redis.sock
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{Error, Process, ProcessBuilder};

/// How long Redis may take to answer PING.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `redis-server` binary: `$REDIS_SERVER_BIN`, else `redis-server` on `PATH`.
pub fn redis_bin() -> String {
    std::env::var("REDIS_SERVER_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "redis-server".to_string())
}

pub struct Redis {
    process: Process,
    socket: PathBuf,
}

impl Redis {
    /// Starts `redis-server --port 0 --unixsocket <dir>/redis.sock --save '' --appendonly no`
    /// and waits for PING → PONG on the socket.
    pub fn start() -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-redis-")
            .tempdir()
            .map_err(|e| Error::io("create temp dir", e))?;
        let socket = dir.path().join("redis.sock");
        let mut process = ProcessBuilder::new("redis", redis_bin())
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .spawn_in(dir)?;
        process.wait_until("redis to answer PING", READY_TIMEOUT, || {
            command(&socket, &["PING"]).and_then(|r| if r == "+PONG" { Ok(()) } else { Err(r) })
        })?;
        Ok(Self { process, socket })
    }

    /// The unix socket Redis listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix://<socket>` (redis-rs, hence ratelimit-server, reads it).
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs one command and returns the first reply line (e.g. `+PONG`, `:42`, `$-1`).
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        command(&self.socket, args)
    }

    /// Every key (`redis-cli --scan`), sorted.
    pub fn keys(&self) -> Result<Vec<String>, String> {
        let mut keys: Vec<String> = self
            .cli(&["--scan"])?
            .lines()
            .map(str::to_string)
            .filter(|k| !k.is_empty())
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Milliseconds to live of a key (-1: no expiry, -2: no such key).
    pub fn pttl(&self, key: &str) -> Result<i64, String> {
        let out = self.cli(&["pttl", key])?;
        out.trim()
            .parse()
            .map_err(|e| format!("pttl {key}: {out:?}: {e}"))
    }

    /// `redis-cli -s <socket> ARGS...` (raw output), for replies [`command`](Self::command)
    /// does not parse.
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .arg("--raw")
            .args(args)
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// One RESP command over a fresh connection; the first line of the reply.
fn command(socket: &Path, args: &[&str]) -> Result<String, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim_end().to_string())
}
