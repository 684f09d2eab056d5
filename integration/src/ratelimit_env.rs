//! Test environment for the rate-limit filter: an Envoy whose bootstrap `envoy.rs` cannot
//! express (an HTTP/2 cluster for the rate-limit service, `use_remote_address`, several
//! workers), and `portcullis ratelimit-server` replicas run in-process on free ports. The
//! filter runs on either [`Runtime`]: the proxy-wasm module or the dynamic module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::envoy::READY_TIMEOUT;
use crate::process::{envoy_bin, workspace_root, Error, Process, ProcessBuilder};
use crate::runtime::Runtime;

/// `dist/wasm/ratelimit.wasm`, built (cargo + wasm-opt) if missing.
pub fn module() -> Result<PathBuf, Error> {
    let path = workspace_root().join("dist/wasm/ratelimit.wasm");
    if path.is_file() {
        return Ok(path);
    }
    crate::wasm::module("ratelimit").map_err(|e| Error::Io {
        what: "build dist/wasm/ratelimit.wasm".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// `dist/dynamic/libportcullis.so` (the `ratelimit` filter is one of its filters), built if
/// missing.
pub fn dynamic_library() -> Result<PathBuf, Error> {
    crate::wasm::dynamic_library().map_err(|e| Error::Io {
        what: "build dist/dynamic/libportcullis.so".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// One Envoy with the rate-limit filter in front of a `direct_response` 200.
#[derive(Debug, Clone)]
pub struct RateLimitEnvoy {
    pub runtime: Runtime,
    pub config: Value,
    pub concurrency: u32,
    /// Address of the rate-limit service (cluster `ratelimit`, HTTP/2).
    pub rls: Option<SocketAddr>,
    pub use_remote_address: bool,
}

impl RateLimitEnvoy {
    pub fn new(runtime: Runtime, config: Value) -> Self {
        Self {
            runtime,
            config,
            concurrency: 1,
            rls: None,
            use_remote_address: true,
        }
    }

    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn rls(mut self, addr: SocketAddr) -> Self {
        self.rls = Some(addr);
        self
    }

    /// The rate-limit `HttpFilter` on this runtime, with this config.
    pub fn http_filter(&self) -> Result<Value, Error> {
        let filter = match self.runtime {
            Runtime::Wasm => crate::runtime::wasm_filter(
                &module()?,
                "ratelimit",
                "ratelimit",
                &self.config.to_string(),
            ),
            Runtime::Dynamic => crate::runtime::dynamic_filter(
                &dynamic_library()?,
                "ratelimit",
                &self.config.to_string(),
            ),
        };
        Ok(filter)
    }

    /// The bootstrap for these ports with `filter` (see [`http_filter`](Self::http_filter)).
    pub fn bootstrap(&self, filter: Value, http_port: u16, admin_port: u16) -> Value {
        let mut clusters = Vec::new();
        if let Some(addr) = self.rls {
            clusters.push(json!({
                "name": "ratelimit",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": {
                    "cluster_name": "ratelimit",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": addr.ip().to_string(), "port_value": addr.port()
                    }}}}]}]
                }
            }));
        }
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {
                "listeners": [{
                    "name": "http",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": http_port}},
                    // Spread connections evenly over the workers: the contention tests need
                    // every worker busy, and the kernel alone may hand all of them to one.
                    "connection_balance_config": {"exact_balance": {}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "http",
                            "codec_type": "AUTO",
                            // Envoy appends the peer to X-Forwarded-For: what an edge proxy does.
                            "use_remote_address": self.use_remote_address,
                            "route_config": {
                                "name": "local",
                                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                                    "match": {"prefix": "/"},
                                    "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}
                                }]}]
                            },
                            "http_filters": [
                                filter,
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                                }
                            ]
                        }
                    }]}]
                }],
                "clusters": clusters
            }
        })
    }

    /// Spawns Envoy with its listener and admin on port 0; returns the process and the
    /// `--admin-address-path` file.
    fn spawn(&self) -> Result<(Process, PathBuf), Error> {
        let filter = self.http_filter()?;
        let dir = tempfile::Builder::new()
            .prefix("portcullis-rl-envoy-")
            .tempdir()
            .map_err(|e| Error::Io {
                what: "create envoy temp dir".into(),
                source: e,
            })?;
        let path = dir.path().join("envoy.json");
        let admin_address_path = dir.path().join(crate::envoy::ADMIN_ADDRESS_FILE);
        let text =
            serde_json::to_string_pretty(&self.bootstrap(filter, 0, 0)).map_err(|e| Error::Io {
                what: "serialize bootstrap".into(),
                source: e.into(),
            })?;
        std::fs::write(&path, text).map_err(|e| Error::Io {
            what: format!("write {}", path.display()),
            source: e,
        })?;
        let process = ProcessBuilder::new("envoy", envoy_bin()?)
            .arg("-c")
            .arg(&path)
            .arg("--admin-address-path")
            .arg(&admin_address_path)
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["-l", "info"])
            .arg("--disable-hot-restart")
            .spawn_in(dir)?;
        Ok((process, admin_address_path))
    }

    /// Starts Envoy and waits for admin `/ready` = LIVE.
    pub fn start(&self) -> Result<Envoy, Error> {
        let (mut process, admin_address_path) = self.spawn()?;
        let client = reqwest::blocking::Client::new();
        let admin_port = crate::envoy::wait_live(&mut process, &admin_address_path, &client)?;
        let http_port = crate::envoy::listener_ports(&client, admin_port)?
            .get("http")
            .copied()
            .ok_or_else(|| {
                Error::io(
                    "read Envoy's listener ports",
                    std::io::Error::other("no listener \"http\" in /listeners"),
                )
            })?;
        Ok(Envoy {
            process,
            http_port,
            admin_port,
        })
    }

    /// Starts Envoy expecting it to refuse the config; returns its log once it exited.
    pub fn start_expect_exit(&self) -> Result<String, Error> {
        let (mut process, _) = self.spawn()?;
        process.wait_exit(READY_TIMEOUT)?;
        Ok(process.logs())
    }
}

pub struct Envoy {
    process: Process,
    http_port: u16,
    admin_port: u16,
}

impl Envoy {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Every stat containing `filter`, name → value (integers only).
    pub fn stats(&self, filter: &str) -> std::collections::BTreeMap<String, u64> {
        let url = format!("http://127.0.0.1:{}/stats?filter={filter}", self.admin_port);
        let body = reqwest::blocking::get(&url)
            .and_then(|r| r.text())
            .unwrap_or_default();
        body.lines()
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(": ")?;
                Some((k.trim().to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// A filter counter (`portcullis_ratelimit_*_total`, prefixed by Envoy); 0 if not seen yet.
    pub fn counter(&self, name: &str) -> u64 {
        self.stats(name)
            .iter()
            .filter(|(k, _)| k.ends_with(name))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Connections accepted per worker, from `listener.<addr>.worker_N.downstream_cx_total`.
    pub fn connections_per_worker(&self) -> Vec<u64> {
        self.stats("downstream_cx_total")
            .iter()
            .filter(|(k, _)| k.starts_with("listener.127.0.0.1_") && k.contains(".worker_"))
            .map(|(_, v)| *v)
            .collect()
    }

    /// Resident memory of the Envoy process (kB, `VmRSS`).
    pub fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

/// The domain whose descriptor `limit` overrides [`RlsServer`] accepts (the filter's
/// `global.domain` in the tests, and the domain BackendTrafficPolicy translation uses).
pub const RLS_OVERRIDE_DOMAIN: &str = "portcullis";

/// A `portcullis ratelimit-server` replica, in-process on a free port; stopped on drop.
pub struct RlsServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl RlsServer {
    pub fn start(
        redis_url: &str,
        algorithm: portcullis_ratelimit_server::Algorithm,
        config: Option<PathBuf>,
    ) -> Result<Self, Error> {
        // Bound here on port 0 and handed to the server: no port is chosen first.
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::io("bind ratelimit-server on 127.0.0.1:0", e))?;
        let addr: SocketAddr = std_listener
            .local_addr()
            .map_err(|e| Error::io("ratelimit-server listener address", e))?;
        let mut args = portcullis_ratelimit_server::Args::new(redis_url);
        args.addr = addr;
        args.config = config;
        args.algorithm = algorithm;
        // The filter always sends its rule's limit as the descriptor's override, for the domain
        // in its `global.domain` (every test here uses `portcullis`): opt in for that domain.
        args.allow_limit_override = vec![RLS_OVERRIDE_DOMAIN.into()];
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener)?;
                portcullis_ratelimit_server::serve_on(args, listener, async {
                    let _ = rx.await;
                })
                .await
            })
        });
        let mut server = Self {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        };
        crate::process::wait_until(
            "ratelimit-server to listen",
            Duration::from_secs(30),
            || {
                if server.thread.as_ref().is_some_and(|t| t.is_finished()) {
                    return Ok(false);
                }
                std::net::TcpStream::connect(addr).map(|_| true)
            },
        )
        .and_then(|listening| {
            if listening {
                Ok(())
            } else {
                let why = server.join_error();
                Err(Error::Io {
                    what: "ratelimit-server exited".into(),
                    source: std::io::Error::other(why),
                })
            }
        })?;
        Ok(server)
    }

    fn join_error(&mut self) -> String {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => format!("{e:#}"),
            Some(Err(_)) => "panicked".into(),
            _ => "stopped".into(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and waits until its port is closed.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RlsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
