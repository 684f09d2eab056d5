//! Host infrastructure: one Envoy process per Gateway on this machine.
//!
//! Each Envoy gets a bootstrap with node id `namespace/name`, an admin listener on a free port
//! (Envoy picks it and writes it to `--admin-address-path`) and ADS over gRPC (HTTP/2) to the
//! controller. A supervisor task restarts it with backoff when it dies, and drains it (graceful
//! listener drain, then `/quitquitquit`) when its Gateway disappears or the controller stops.

use crate::metrics::{GatewayLabel, Metrics};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdsMode {
    /// State of the World ADS.
    Sotw,
    /// Incremental (Delta) ADS.
    Delta,
}

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub envoy_bin: PathBuf,
    pub xds_addr: SocketAddr,
    pub xds_mode: XdsMode,
    /// Per-Envoy bootstrap and log files live under here.
    pub work_dir: PathBuf,
    pub concurrency: Option<u32>,
    pub log_level: String,
    pub drain_timeout: Duration,
    pub restart_backoff_max: Duration,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyStatus {
    pub node_id: String,
    pub state: String,
    pub pid: Option<u32>,
    pub admin_addr: Option<String>,
    pub starts: u32,
    pub last_exit: Option<String>,
    pub log_path: String,
}

struct Managed {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    status: Arc<Mutex<EnvoyStatus>>,
}

pub struct HostInfra {
    cfg: HostConfig,
    envoys: Mutex<BTreeMap<String, Managed>>,
    stopping: Mutex<Vec<JoinHandle<()>>>,
    metrics: Metrics,
    http: reqwest::Client,
}

impl std::fmt::Debug for HostInfra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostInfra")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot create {path}: {source}")]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Find Envoy: an explicit path, else `envoy` on PATH.
pub fn find_envoy(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HostInfra {
    pub fn new(cfg: HostConfig, metrics: Metrics) -> Result<Self, HostError> {
        std::fs::create_dir_all(&cfg.work_dir).map_err(|source| HostError::WorkDir {
            path: cfg.work_dir.clone(),
            source,
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(HostInfra {
            cfg,
            envoys: Mutex::new(BTreeMap::new()),
            stopping: Mutex::new(Vec::new()),
            metrics,
            http,
        })
    }

    /// Run exactly one Envoy per node id in `wanted`: start missing ones, drain and stop the rest.
    pub fn reconcile(&self, wanted: &[String]) {
        let mut envoys = lock(&self.envoys);
        let gone: Vec<String> = envoys
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for node in gone {
            if let Some(m) = envoys.remove(&node) {
                tracing::info!(node, "Gateway gone: draining its Envoy");
                let _ = m.stop.send(true);
                lock(&self.stopping).push(m.task);
            }
        }
        for node in wanted {
            if envoys.contains_key(node) {
                continue;
            }
            let dir = self.cfg.work_dir.join(sanitize(node));
            let status = Arc::new(Mutex::new(EnvoyStatus {
                node_id: node.clone(),
                state: "starting".into(),
                pid: None,
                admin_addr: None,
                starts: 0,
                last_exit: None,
                log_path: dir.join("envoy.log").display().to_string(),
            }));
            let (stop, stop_rx) = watch::channel(false);
            let sup = Supervisor {
                cfg: self.cfg.clone(),
                node: node.clone(),
                dir,
                status: status.clone(),
                metrics: self.metrics.clone(),
                http: self.http.clone(),
            };
            let task = tokio::spawn(sup.run(stop_rx));
            envoys.insert(node.clone(), Managed { stop, task, status });
        }
    }

    pub fn status(&self) -> Vec<EnvoyStatus> {
        lock(&self.envoys)
            .values()
            .map(|m| lock(&m.status).clone())
            .collect()
    }

    /// Drain and stop every Envoy; returns when all have exited.
    pub async fn shutdown(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut envoys = lock(&self.envoys);
            let mut tasks: Vec<_> = std::mem::take(&mut *envoys)
                .into_values()
                .map(|m| {
                    let _ = m.stop.send(true);
                    m.task
                })
                .collect();
            tasks.append(&mut lock(&self.stopping));
            tasks
        };
        for t in tasks {
            let _ = t.await;
        }
    }
}

fn sanitize(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Envoy bootstrap for one Gateway: plain ADS to the controller on this host, admin on a
/// loopback port Envoy picks. The translator's typed builder, shared with Kubernetes fleets.
pub fn bootstrap(
    node_id: &str,
    xds: SocketAddr,
    mode: XdsMode,
) -> Result<serde_json::Value, portcullis_translator::xds::render::RenderError> {
    use portcullis_translator::xds::bootstrap::{self, AdminAddress, BootstrapSpec, XdsUpstream};
    bootstrap::json(&BootstrapSpec {
        node_id: node_id.to_string(),
        xds: XdsUpstream::Static {
            ip: xds.ip(),
            port: xds.port(),
        },
        delta: mode == XdsMode::Delta,
        admin: AdminAddress::LoopbackEphemeral,
        ready_port: None,
    })
}

struct Supervisor {
    cfg: HostConfig,
    node: String,
    dir: PathBuf,
    status: Arc<Mutex<EnvoyStatus>>,
    metrics: Metrics,
    http: reqwest::Client,
}

impl Supervisor {
    fn set(&self, f: impl FnOnce(&mut EnvoyStatus)) {
        f(&mut lock(&self.status));
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            if *stop.borrow() {
                break;
            }
            let started = Instant::now();
            let mut child = match self.spawn().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(node = %self.node, error = %e, "cannot start Envoy");
                    self.set(|s| {
                        s.state = "failed".into();
                        s.last_exit = Some(format!("cannot start: {e}"));
                    });
                    if wait_or_stop(&mut stop, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(self.cfg.restart_backoff_max);
                    continue;
                }
            };
            self.metrics
                .envoy_starts
                .get_or_create(&GatewayLabel {
                    gateway: self.node.clone(),
                })
                .inc();
            self.metrics.envoys_running.inc();
            let pid = child.id();
            self.set(|s| {
                s.state = "running".into();
                s.pid = pid;
                s.starts += 1;
            });
            tracing::info!(node = %self.node, pid, "Envoy started");
            tokio::select! {
                exit = child.wait() => {
                    self.metrics.envoys_running.dec();
                    let what = match exit {
                        Ok(st) => st.to_string(),
                        Err(e) => format!("wait failed: {e}"),
                    };
                    tracing::warn!(node = %self.node, exit = %what, log = %self.dir.join("envoy.log").display(), "Envoy exited; restarting");
                    self.set(|s| {
                        s.state = "restarting".into();
                        s.pid = None;
                        s.admin_addr = None;
                        s.last_exit = Some(what);
                    });
                    // A long healthy run resets the backoff.
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff = Duration::from_millis(500);
                    }
                    if wait_or_stop(&mut stop, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(self.cfg.restart_backoff_max);
                }
                _ = stop.changed() => {
                    self.set(|s| s.state = "draining".into());
                    self.drain_and_stop(&mut child).await;
                    self.metrics.envoys_running.dec();
                    break;
                }
            }
        }
        self.set(|s| {
            s.state = "stopped".into();
            s.pid = None;
        });
    }

    async fn spawn(&self) -> std::io::Result<Child> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let boot = bootstrap(&self.node, self.cfg.xds_addr, self.cfg.xds_mode)
            .map_err(std::io::Error::other)?;
        let boot_path = self.dir.join("bootstrap.json");
        tokio::fs::write(
            &boot_path,
            serde_json::to_vec_pretty(&boot).map_err(std::io::Error::other)?,
        )
        .await?;
        let admin_path = self.dir.join("admin-address");
        let _ = tokio::fs::remove_file(&admin_path).await;
        let mut cmd = Command::new(&self.cfg.envoy_bin);
        cmd.arg("-c")
            .arg(&boot_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--disable-hot-restart")
            .arg("--drain-time-s")
            .arg(self.cfg.drain_timeout.as_secs().max(1).to_string())
            .arg("--log-level")
            .arg(&self.cfg.log_level);
        if let Some(c) = self.cfg.concurrency {
            cmd.arg("--concurrency").arg(c.to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it only makes the kernel signal Envoy if the
        // controller dies without draining it (e.g. SIGKILL), so no Envoy is ever orphaned.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("envoy.log"))
            .await?;
        let log = Arc::new(tokio::sync::Mutex::new(log));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_log(out, self.node.clone(), log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_log(err, self.node.clone(), log));
        }
        // Learn the admin address once Envoy has bound it.
        let status = self.status.clone();
        tokio::spawn(async move {
            if let Some(a) = read_admin_address(&admin_path, Duration::from_secs(30)).await {
                lock(&status).admin_addr = Some(a);
            }
        });
        Ok(child)
    }

    /// Graceful listener drain, wait for open HTTP connections to finish (bounded by the drain
    /// timeout), then ask Envoy to quit; SIGTERM, then SIGKILL, if it does not.
    async fn drain_and_stop(&self, child: &mut Child) {
        let mut admin = lock(&self.status).admin_addr.clone();
        if admin.is_none() {
            // Stopped right after a start: Envoy may not have written its admin address yet.
            admin =
                read_admin_address(&self.dir.join("admin-address"), Duration::from_secs(3)).await;
        }
        if let Some(admin) = admin {
            let base = format!("http://{admin}");
            match self
                .http
                .post(format!("{base}/drain_listeners?graceful"))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(node = %self.node, "draining Envoy listeners");
                    let deadline = Instant::now() + self.cfg.drain_timeout;
                    while Instant::now() < deadline {
                        match self.active_connections(&base).await {
                            Some(0) | None => break,
                            Some(n) => {
                                tracing::debug!(node = %self.node, active = n, "waiting for connections to drain")
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Ok(r) => {
                    tracing::warn!(node = %self.node, status = %r.status(), "drain_listeners refused")
                }
                Err(e) => {
                    tracing::warn!(node = %self.node, error = %e, "cannot reach Envoy admin to drain")
                }
            }
            let _ = self.http.post(format!("{base}/quitquitquit")).send().await;
            if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                tracing::info!(node = %self.node, exit = %st, "Envoy stopped");
                return;
            }
        }
        if let Some(pid) = child.id() {
            tracing::warn!(node = %self.node, pid, "Envoy did not quit through its admin API: sending SIGTERM");
            // SAFETY: kill(2) on our own child, which has not been reaped (id() is Some).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
            if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                tracing::info!(node = %self.node, exit = %st, "Envoy stopped");
                return;
            }
        }
        tracing::warn!(node = %self.node, "Envoy did not stop in time: killing it");
        let _ = child.kill().await;
    }

    /// Open downstream connections of every HTTP connection manager.
    async fn active_connections(&self, base: &str) -> Option<u64> {
        let text = self
            .http
            .get(format!("{base}/stats?filter=downstream_cx_active"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("http.") && !l.starts_with("http.admin."))
                .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
                .sum(),
        )
    }
}

async fn read_admin_address(path: &Path, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(a) = tokio::fs::read_to_string(path).await {
            if !a.trim().is_empty() {
                return Some(a.trim().to_string());
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait `d` unless a stop comes first (returns true on stop).
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}

/// Copy Envoy's output to its log file; surface warnings and errors through tracing.
async fn forward_log(
    stream: impl tokio::io::AsyncRead + Unpin,
    node: String,
    file: Arc<tokio::sync::Mutex<tokio::fs::File>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        {
            let mut f = file.lock().await;
            let _ = f.write_all(line.as_bytes()).await;
            let _ = f.write_all(b"\n").await;
        }
        if line.contains("][critical]") || line.contains("][error]") {
            tracing::error!(target: "envoy", node = %node, "{line}");
        } else if line.contains("][warning]") {
            tracing::warn!(target: "envoy", node = %node, "{line}");
        } else {
            tracing::debug!(target: "envoy", node = %node, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_points_at_the_controller() {
        let b = bootstrap(
            "ns/gw",
            "127.0.0.1:18000".parse().expect("addr"),
            XdsMode::Delta,
        )
        .expect("renders");
        assert_eq!(b["node"]["id"], "ns/gw");
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        let clusters = b["static_resources"]["clusters"]
            .as_array()
            .expect("clusters");
        assert_eq!(
            clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"]["port_value"],
            18000
        );
        assert!(
            clusters[0]["typed_extension_protocol_options"].is_object(),
            "xDS cluster speaks HTTP/2"
        );
    }

    #[test]
    fn sanitize_keeps_node_dirs_flat() {
        assert_eq!(sanitize("default/my-gw"), "default_my-gw");
        assert_eq!(sanitize("../x"), ".._x");
    }
}
