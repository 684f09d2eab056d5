//! `portcullis run` under test: admin, xDS and wasm on port 0 (the bound addresses read back
//! from `--bound-addresses-file`), a temp manifest dir, a temp wasm cache, real Envoy.
//!
//! ```no_run
//! use portcullis_integration::controller::Controller;
//! let mut c = Controller::builder(env!("CARGO_BIN_EXE_portcullis-e2e"))
//!     .manifest("gw.yaml", "...")
//!     .start()
//!     .unwrap();
//! c.wait_synced("default/gw").unwrap();
//! let doc = c.status().unwrap();
//! ```
//!
//! The controller runs in its own process group (see [`crate::process`]), so its Envoys die
//! with it when a test ends or panics. [`Controller::terminate`] sends SIGTERM to the
//! controller alone, to test its own drain-and-exit path.

use crate::process::{envoy_bin, Error, Process, ProcessBuilder};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

/// Generous bound for readiness and convergence waits (never a timing assertion).
pub const CONVERGE: Duration = Duration::from_secs(60);

pub struct ControllerBuilder {
    bin: PathBuf,
    manifests: Vec<(String, String)>,
    args: Vec<String>,
}

pub struct Controller {
    process: Process,
    manifest_dir: tempfile::TempDir,
    cache_dir: tempfile::TempDir,
    _run_dir: tempfile::TempDir,
    pub admin_port: u16,
    pub xds_port: u16,
    pub wasm_port: u16,
    http: reqwest::blocking::Client,
}

impl ControllerBuilder {
    /// A manifest file (relative path under the manifest dir) written before start.
    pub fn manifest(mut self, name: &str, yaml: impl Into<String>) -> Self {
        self.manifests.push((name.to_string(), yaml.into()));
        self
    }

    /// Extra `portcullis run` flags, e.g. `["--xds-mode", "delta"]`.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Start and wait until the admin endpoint says the first translation is done.
    pub fn start(self) -> Result<Controller, Error> {
        let manifest_dir = tempfile::Builder::new()
            .prefix("portcullis-manifests-")
            .tempdir()
            .map_err(|e| Error::io("manifest dir", e))?;
        let cache_dir = tempfile::Builder::new()
            .prefix("portcullis-wasm-cache-")
            .tempdir()
            .map_err(|e| Error::io("cache dir", e))?;
        for (name, yaml) in &self.manifests {
            write_atomic(&manifest_dir.path().join(name), yaml)?;
        }
        let run_dir = tempfile::Builder::new()
            .prefix("portcullis-run-")
            .tempdir()
            .map_err(|e| Error::io("run dir", e))?;
        let bound_file = run_dir.path().join("bound-addresses.json");
        let envoy = envoy_bin()?;
        let bin = std::env::var_os("PORTCULLIS_BIN")
            .filter(|b| !b.is_empty())
            .map(PathBuf::from)
            .unwrap_or(self.bin);
        // Test defaults, unless the test sets the flag itself.
        let mut defaults: Vec<String> = Vec::new();
        for (flag, value) in [
            ("--listener-address", "127.0.0.1"),
            ("--envoy-concurrency", "1"),
            ("--drain-timeout", "2"),
            ("--envoy-log-level", "info"),
            // Tests pick the built-in runtime explicitly; the default depends on what is built.
            ("--builtin-runtime", "wasm"),
            // The upstreams the tests run are local; the controller refuses loopback otherwise.
            ("--allow-backend-cidr", "127.0.0.0/8"),
        ] {
            if !self.args.iter().any(|a| a == flag) {
                defaults.extend([flag.to_string(), value.to_string()]);
            }
        }
        let mut process = ProcessBuilder::new("portcullis", &bin)
            .arg("run")
            .arg("-f")
            .arg(manifest_dir.path())
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--xds-addr", "127.0.0.1:0"])
            .args(["--wasm-addr", "127.0.0.1:0"])
            // Envoy binds the Gateway listeners on port 0: see `Controller::gateway_port`.
            .arg("--ephemeral-listener-ports")
            .arg("--bound-addresses-file")
            .arg(&bound_file)
            .arg("--envoy-bin")
            .arg(&envoy)
            .arg("--cache-dir")
            .arg(cache_dir.path())
            .args(&defaults)
            .args(&self.args)
            .env(
                "RUST_LOG",
                "info,portcullis=debug,h2=warn,tower=warn,hyper=warn",
            )
            .spawn()?;
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::io("http client", std::io::Error::other(e)))?;
        let bound: Value = process.wait_until(
            "controller to write --bound-addresses-file",
            CONVERGE,
            || {
                let text = std::fs::read_to_string(&bound_file).map_err(|e| e.to_string())?;
                serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())
            },
        )?;
        let port = |key: &str| -> Result<u16, Error> {
            bound[key]
                .as_str()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.port())
                .ok_or_else(|| {
                    Error::io(
                        "read --bound-addresses-file",
                        std::io::Error::other(format!("no {key} address in {bound}")),
                    )
                })
        };
        let (admin_port, xds_port, wasm_port) = (port("admin")?, port("xds")?, port("wasm")?);
        let ready = format!("http://127.0.0.1:{admin_port}/readyz");
        process.wait_until("controller ready (/readyz)", CONVERGE, || {
            http.get(&ready)
                .send()
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    if r.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("HTTP {}", r.status()))
                    }
                })
        })?;
        Ok(Controller {
            process,
            manifest_dir,
            cache_dir,
            _run_dir: run_dir,
            admin_port,
            xds_port,
            wasm_port,
            http,
        })
    }
}

fn write_atomic(path: &Path, content: &str) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
    }
    // Write beside, then rename: the watcher never sees a half-written file.
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, content).map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("rename to {}", path.display()), e))
}

impl Controller {
    pub fn builder(bin: impl Into<PathBuf>) -> ControllerBuilder {
        ControllerBuilder {
            bin: bin.into(),
            manifests: Vec::new(),
            args: Vec::new(),
        }
    }

    pub fn manifest_dir(&self) -> &Path {
        self.manifest_dir.path()
    }

    pub fn cache_dir(&self) -> &Path {
        self.cache_dir.path()
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Write (or replace) a manifest; the controller picks it up live.
    pub fn write_manifest(&self, name: &str, yaml: &str) -> Result<(), Error> {
        write_atomic(&self.manifest_dir.path().join(name), yaml)
    }

    pub fn remove_manifest(&self, name: &str) -> Result<(), Error> {
        let p = self.manifest_dir.path().join(name);
        std::fs::remove_file(&p).map_err(|e| Error::io(format!("remove {}", p.display()), e))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    fn get_text(&self, path: &str) -> Result<String, String> {
        let r = self
            .http
            .get(self.admin_url(path))
            .send()
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("{path}: HTTP {}", r.status()));
        }
        r.text().map_err(|e| e.to_string())
    }

    /// The `/status` document.
    pub fn status(&self) -> Result<Value, String> {
        let text = self.get_text("/status")?;
        serde_json::from_str(&text).map_err(|e| format!("/status is not JSON: {e}"))
    }

    pub fn metrics(&self) -> Result<String, String> {
        self.get_text("/metrics")
    }

    /// Poll `/status` until `check` accepts it (fails fast if the controller exits).
    pub fn wait_status<T>(
        &mut self,
        what: &str,
        mut check: impl FnMut(&Value) -> Result<T, String>,
    ) -> Result<T, Error> {
        let http = self.http.clone();
        let url = self.admin_url("/status");
        self.process.wait_until(what, CONVERGE, || {
            let doc: Value = http
                .get(&url)
                .send()
                .and_then(|r| r.json())
                .map_err(|e| e.to_string())?;
            check(&doc)
        })
    }

    /// The admin address (`host:port`) of the Envoy the controller runs for `node`, once it has
    /// bound it.
    pub fn envoy_admin(&mut self, node: &str) -> Result<String, Error> {
        self.wait_status(&format!("Envoy admin address of {node}"), |doc| {
            doc["envoys"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["nodeId"] == node)
                .and_then(|e| e["adminAddr"].as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("no admin address yet: {}", doc["envoys"]))
        })
    }

    /// The port the Envoy for `node` bound for the Gateway listener(s) on `gateway_port` (the
    /// harness runs `--ephemeral-listener-ports`), once Envoy has the listener.
    pub fn gateway_port(&mut self, node: &str, gateway_port: u16) -> Result<u16, Error> {
        let admin = self.envoy_admin(node)?;
        let url = format!("http://{admin}/listeners?format=json");
        let listener = format!("{node}/{gateway_port}");
        let http = self.http.clone();
        self.process.wait_until(
            &format!("Envoy {node} to bind listener {listener}"),
            CONVERGE,
            || {
                let doc: Value = http
                    .get(&url)
                    .send()
                    .and_then(|r| r.json())
                    .map_err(|e| format!("{url}: {e}"))?;
                crate::envoy::bound_listener_port(&doc, &listener)
                    .ok_or_else(|| format!("no bound listener {listener} in {doc}"))
            },
        )
    }

    /// `/config_dump` of the Envoy for `node`.
    pub fn envoy_config_dump(&mut self, node: &str) -> Result<String, String> {
        let admin = self.envoy_admin(node).map_err(|e| e.to_string())?;
        self.http
            .get(format!("http://{admin}/config_dump"))
            .send()
            .and_then(|r| r.text())
            .map_err(|e| e.to_string())
    }

    /// The `/status/xds` document: generation and per-node ACK/NACK state only.
    pub fn xds_status(&self) -> Result<Value, String> {
        let text = self.get_text("/status/xds")?;
        serde_json::from_str(&text).map_err(|e| format!("/status/xds is not JSON: {e}"))
    }

    /// Wait until Envoy for `node` has ACKed every type of the current snapshot generation.
    pub fn wait_synced(&mut self, node: &str) -> Result<u64, Error> {
        let http = self.http.clone();
        let url = self.admin_url("/status/xds");
        let node = node.to_string();
        self.process.wait_until(
            &format!("Envoy {node} in sync with the xDS snapshot"),
            CONVERGE,
            || {
                let x: Value = http
                    .get(&url)
                    .send()
                    .and_then(|r| r.json())
                    .map_err(|e| e.to_string())?;
                let gen = x["generation"].as_u64().unwrap_or(0);
                let synced = x["nodes"][&node]["syncedGeneration"].as_u64();
                if gen > 0 && synced == Some(gen) {
                    Ok(gen)
                } else {
                    Err(format!("generation {gen}, node synced at {synced:?}"))
                }
            },
        )
    }

    /// PIDs of the Envoys the controller reports running.
    pub fn envoy_pids(&self) -> Vec<u32> {
        self.status()
            .ok()
            .and_then(|d| d["envoys"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["pid"].as_u64().map(|p| p as u32))
            .collect()
    }

    /// SIGTERM to the controller only (not its process group) and wait for it to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, Error> {
        let pid = self.process.pid() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        self.process.wait_exit(timeout)
    }
}

/// Status block of one resource in a `/status` document.
pub fn resource<'a>(
    doc: &'a Value,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> Option<&'a Value> {
    doc["resources"].as_array()?.iter().find(|r| {
        r["kind"] == kind
            && r["metadata"]["name"] == name
            && r["metadata"]["namespace"].as_str() == namespace
    })
}

/// Every condition of `type` anywhere in `v` (Gateway conditions, listeners, route parents,
/// policy ancestors), as `(status, reason, message)`.
pub fn conditions_of(v: &Value, ty: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    fn walk(v: &Value, ty: &str, out: &mut Vec<(String, String, String)>) {
        match v {
            Value::Object(m) => {
                if m.get("type").and_then(Value::as_str) == Some(ty) && m.contains_key("status") {
                    let s = |k: &str| {
                        m.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    out.push((s("status"), s("reason"), s("message")));
                }
                m.values().for_each(|c| walk(c, ty, out));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, ty, out)),
            _ => {}
        }
    }
    walk(v, ty, &mut out);
    out
}

/// True if the process with this pid is gone (or a zombie nobody reaped).
pub fn pid_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .map(|rest| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => true,
    }
}

/// One HTTP/1.1 keep-alive connection, raw, so a test can prove several requests travel on
/// the same TCP connection (e.g. across a live config change).
pub struct KeepAlive {
    stream: std::io::BufReader<std::net::TcpStream>,
    pub local_addr: std::net::SocketAddr,
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl KeepAlive {
    pub fn connect(port: u16) -> std::io::Result<Self> {
        let s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let local_addr = s.local_addr()?;
        Ok(KeepAlive {
            stream: std::io::BufReader::new(s),
            local_addr,
        })
    }

    /// GET `path` with `Host: host` plus `headers`, on this connection.
    pub fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<RawResponse> {
        use std::io::{BufRead, Read, Write};
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.get_mut().write_all(req.as_bytes())?;
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let mut line = String::new();
        if self.stream.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v): &(String, String)| v.clone())
        };
        let mut body = Vec::new();
        if let Some(len) = find("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| bad(format!("content-length {len}")))?;
            body.resize(len, 0);
            self.stream.read_exact(&mut body)?;
        } else if find("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            loop {
                line.clear();
                self.stream.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                    .map_err(|_| bad(format!("chunk size {line:?}")))?;
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        }
        Ok(RawResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Our GatewayClass, Gateway `default/gw` with one HTTP listener on `gw_port`, and a Backend
/// `default/echo` at 127.0.0.1:`echo_port`: the base most controller tests add routes to.
pub fn gateway_with_echo_backend(gw_port: u16, echo_port: u16) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec: {{controllerName: portcullis.dev/gatewayclass-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: portcullis
  listeners:
  - {{name: http, port: {gw_port}, protocol: HTTP}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: echo, namespace: default}}
spec:
  endpoints:
  - ip: {{address: 127.0.0.1, port: {echo_port}}}
"#
    )
}
