//! Shared by the server's tests: a real `redis-server` (Debian package) on a unix socket in a
//! temporary directory (no TCP port at all), the server in-process on a listener bound to
//! 127.0.0.1:0, a gRPC client, and a log capture.

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::{Entry, RateLimitOverride},
    RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use portcullis_ratelimit_server::Args;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub const OK: i32 = 1;
pub const OVER_LIMIT: i32 = 2;
/// `envoy.type.v3.RateLimitUnit.DAY`.
pub const DAY: i32 = 4;

/// `redis-server --port 0 --unixsocket <tmp>/redis.sock`, killed on drop.
pub struct Redis {
    child: Child,
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    password: Option<String>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// With `requirepass`.
    pub fn start_with(password: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("redis.sock");
        let bin = std::env::var("REDIS_SERVER_BIN")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "redis-server".into());
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin} (apt-get install redis-server): {e}"));
        let redis = Self {
            child,
            _dir: dir,
            socket,
            password: password.map(str::to_string),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while redis.command(&["PING"]).as_deref() != Ok("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// `unix://<socket>` (with `?pass=` when the server has a password).
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("unix://{}?pass={p}", self.socket.display()),
            None => format!("unix://{}", self.socket.display()),
        }
    }

    /// One command over RESP (after AUTH where needed); the first reply line.
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        let mut s = UnixStream::connect(&self.socket).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut push = |args: &[&str]| {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
            }
        };
        if let Some(p) = &self.password {
            push(&["AUTH", p]);
        }
        push(args);
        s.write_all(&out).map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        let want_lines = if self.password.is_some() { 2 } else { 1 };
        loop {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            if text.matches("\r\n").count() >= want_lines {
                break;
            }
        }
        let text = String::from_utf8_lossy(&reply).to_string();
        let mut lines = text.split("\r\n");
        if self.password.is_some() {
            lines.next();
        }
        Ok(lines.next().unwrap_or_default().to_string())
    }

    /// Every key (`KEYS *`), sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut s = UnixStream::connect(&self.socket).expect("connect redis");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if let Some(p) = &self.password {
            s.write_all(format!("AUTH {p}\r\n").as_bytes()).unwrap();
        }
        s.write_all(b"KEYS *\r\nPING\r\n").unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        while !String::from_utf8_lossy(&reply).ends_with("+PONG\r\n") {
            let n = s.read(&mut buf).expect("read redis");
            assert!(n > 0, "redis closed");
            reply.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&reply).to_string();
        let mut lines = text.split("\r\n");
        let mut keys = Vec::new();
        while let Some(l) = lines.next() {
            if l.starts_with('$') {
                keys.push(lines.next().unwrap_or_default().to_string());
            }
        }
        keys.sort();
        keys
    }

    /// `PTTL key`.
    pub fn pttl(&self, key: &str) -> i64 {
        let r = self.command(&["PTTL", key]).expect("PTTL");
        r.trim_start_matches(':').parse().expect("PTTL reply")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server in-process on 127.0.0.1:0; stopped on drop.
pub struct Rls {
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Rls {
    pub async fn start(args: Args) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(portcullis_ratelimit_server::serve_on(
            args,
            listener,
            async {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Runs the server and returns its startup error (it must fail before serving).
    pub async fn start_err(args: Args) -> anyhow::Error {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            portcullis_ratelimit_server::serve_on(args, listener, std::future::pending()),
        )
        .await
        .expect("the server should have failed at startup");
        r.expect_err("the server should have failed at startup")
    }

    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }
}

impl Drop for Rls {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Args for this Redis with the CLI's defaults.
pub fn args(redis: &Redis) -> Args {
    Args::new(redis.url())
}

/// One descriptor from `(key, value)` pairs, with `limit` as its override when given.
pub fn descriptor(entries: &[(&str, &str)], limit: Option<u32>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        limit: limit.map(|n| RateLimitOverride {
            requests_per_unit: n,
            unit: DAY,
        }),
        ..Default::default()
    }
}

pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

/// Overall code of one call, or the gRPC status code when it failed.
pub async fn code(
    c: &mut RateLimitServiceClient<Channel>,
    req: RateLimitRequest,
) -> Result<i32, tonic::Status> {
    c.should_rate_limit(req)
        .await
        .map(|r| r.into_inner().overall_code)
}

/// Log lines written on this thread while the guard lives (use a current-thread runtime, so
/// the server's tasks run here too). One global subscriber routes every thread's events to that
/// thread's capture: per-thread subscribers (`set_default`) race with callsite interest caching
/// when tests run in parallel, and then drop events.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CURRENT: std::cell::RefCell<Option<Logs>> = const { std::cell::RefCell::new(None) };
}

pub struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

impl Logs {
    pub fn capture() -> (Self, CaptureGuard) {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            let sub = tracing_subscriber::fmt()
                .with_writer(ThreadWriter)
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish();
            tracing::subscriber::set_global_default(sub).expect("global subscriber");
        });
        let logs = Self::default();
        CURRENT.with(|c| *c.borrow_mut() = Some(logs.clone()));
        (logs, CaptureGuard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

/// Appends to this thread's capture, if any.
pub struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CURRENT.with(|c| {
            if let Some(l) = c.borrow().as_ref() {
                l.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ThreadWriter {
    type Writer = ThreadWriter;
    fn make_writer(&'a self) -> Self::Writer {
        ThreadWriter
    }
}
