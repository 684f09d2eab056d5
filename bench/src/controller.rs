//! Control-plane benchmark: `portcullis translate` time and peak RSS at 100 / 1,000 / 10,000
//! HTTPRoutes, and the time from a manifest edit under `portcullis run` to every Envoy's ACK.

use crate::filters::{envoy_bin, find_root};
use crate::util::{self, local, median, Guard};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// HTTPRoute counts for `translate`.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000, 10000, 50000])]
    pub routes: Vec<usize>,
    /// HTTPRoute counts for the change → ACK measurement under `portcullis run`.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000, 10000, 50000])]
    pub converge_routes: Vec<usize>,
    /// Gateways the routes are spread over (each gets its own Envoy under `run`).
    #[arg(long, default_value_t = 3)]
    pub gateways: usize,
    /// One EnvoyExtensionPolicy (wasm) per this many routes.
    #[arg(long, default_value_t = 100)]
    pub eep_every: usize,
    /// Translate runs per size (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub translate_runs: usize,
    /// Edits per size under `run` (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub edits: usize,
    /// Edits of one route per size under `run` (the median is reported): the change reaches
    /// only the Envoy serving that route.
    #[arg(long, default_value_t = 5)]
    pub single_edits: usize,
    /// Give up on one convergence after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub converge_timeout: u64,
    /// The `portcullis` binary.
    #[arg(long, default_value = "target/release/portcullis")]
    pub portcullis: PathBuf,
    /// Envoy binary for `portcullis run` (default: `.bin/envoy`, else PATH).
    #[arg(long, env = "PORTCULLIS_ENVOY_BIN")]
    pub envoy: Option<PathBuf>,
    /// Directory with ua_block.wasm and headers.wasm (served over HTTP to the controller).
    #[arg(long, default_value = "dist/wasm")]
    pub wasm_dir: PathBuf,
    #[arg(long, default_value = "target/bench/controller.json")]
    pub out: PathBuf,
    #[arg(long, default_value = "target/bench/controller.md")]
    pub markdown: PathBuf,
    #[arg(long, default_value = "docs/bench")]
    pub charts: PathBuf,
    /// Keep the generated manifests in this directory (default: a temporary one, removed).
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Replace the tables between `<!-- controller:begin/end -->` in BENCHMARKS.md.
    #[arg(long)]
    pub update_benchmarks_md: bool,
    /// The command line to record in the results.
    #[arg(long, default_value = "portcullis-bench controller")]
    pub command: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TranslateResult {
    pub routes: usize,
    pub gateways: usize,
    pub policies: usize,
    pub manifest_kib: f64,
    pub runs_ms: Vec<f64>,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub peak_rss_mib: f64,
    pub output_kib: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ConvergeResult {
    pub routes: usize,
    pub gateways: usize,
    pub initial_sync_ms: f64,
    pub edits_ms: Vec<f64>,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// `lastTranslateMs` from `/status` after the last edit.
    pub last_translate_ms: u64,
    pub controller_peak_rss_mib: f64,
    pub controller_rss_mib: f64,
    pub envoy_rss_mib: Vec<f64>,
    /// Controller CPU seconds (utime + stime) per edit of every route, median.
    pub edit_cpu_s: f64,
    /// Edit of one route's header value -> the Envoy serving it ACKed, each edit.
    pub single_edits_ms: Vec<f64>,
    pub single_median_ms: f64,
    /// Controller CPU seconds per one-route edit, median.
    pub single_cpu_s: f64,
    /// Whether every other Envoy's xDS update counters stayed unchanged across every
    /// one-route edit (`None`: not measured).
    pub single_others_untouched: Option<bool>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControllerReport {
    pub benchmark: &'static str,
    pub date_utc: String,
    pub command: String,
    pub git: String,
    pub machine: util::Machine,
    pub envoy_version: String,
    pub portcullis_version: String,
    pub translate_runs: usize,
    pub edits: usize,
    pub manifest_mix: String,
    pub translate: Vec<TranslateResult>,
    pub convergence: Vec<ConvergeResult>,
    pub reference: Value,
}

struct Modules {
    ua_sha: String,
    headers_sha: String,
}

fn sha256_file(p: &Path) -> Result<String> {
    let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex(&Sha256::digest(&b)))
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The Backend's port in the generated manifests (never connected to).
const NOMINAL_BACKEND_PORT: u16 = 9;

/// GatewayClass, Gateways, the Backend.
fn gateways_yaml(ports: &[u16], backend_port: u16) -> String {
    let mut s = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: portcullis}\nspec: {controllerName: portcullis.dev/gatewayclass-controller}\n",
    );
    for (g, port) in ports.iter().enumerate() {
        let _ = write!(
            s,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw{g}, namespace: default}}\nspec:\n  gatewayClassName: portcullis\n  listeners:\n  - {{name: http, port: {port}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}\n"
        );
    }
    let _ = write!(
        s,
        "---\napiVersion: gateway.envoyproxy.io/v1alpha1\nkind: Backend\nmetadata: {{name: echo, namespace: default}}\nspec:\n  endpoints: [{{ip: {{address: 127.0.0.1, port: {backend_port}}}}}]\n"
    );
    s
}

/// N HTTPRoutes: two hostnames each, a prefix + header match and an exact match, a header
/// modifier (its value is what the convergence edit changes), a catch-all rule.
fn routes_yaml(n: usize, gateways: usize, tag: &str) -> String {
    routes_yaml_tagged(n, gateways, |_| tag)
}

/// [`routes_yaml`] with each route's header value tag chosen by `tag_of(index)`.
fn routes_yaml_tagged<'a>(n: usize, gateways: usize, tag_of: impl Fn(usize) -> &'a str) -> String {
    let mut s = String::with_capacity(n * 900);
    for i in 0..n {
        let tag = tag_of(i);
        let _ = write!(
            s,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: default}}\nspec:\n  parentRefs: [{{name: gw{g}}}]\n  hostnames: [\"app{i}.example.com\", \"app{i}.internal.example.com\"]\n  rules:\n  - matches:\n    - path: {{type: PathPrefix, value: /api/v{v}/svc{i}}}\n      headers: [{{name: x-tenant, value: t{t}}}]\n    - path: {{type: Exact, value: /svc{i}/healthz}}\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        set: [{{name: x-route, value: \"r{i}-{tag}\"}}]\n        remove: [x-debug]\n    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: echo, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: echo, port: 8080}}]\n",
            g = i % gateways,
            v = i % 3 + 1,
            t = i % 50,
        );
    }
    s
}

/// One EnvoyExtensionPolicy per `every` routes, alternating ua-block and headers (wasm over HTTP,
/// pinned by sha256).
fn policies_yaml(n: usize, every: usize, wasm_base: &str, m: &Modules) -> (String, usize) {
    let mut s = String::new();
    let mut count = 0;
    for i in (0..n).step_by(every.max(1)) {
        let (name, root, sha, cfg) = if count % 2 == 0 {
            (
                "ua_block",
                "ua_block",
                &m.ua_sha,
                "{deny: {presets: [ai-crawlers], contains: [python-requests]}, allow: {contains: [Googlebot]}}",
            )
        } else {
            (
                "headers",
                "headers",
                &m.headers_sha,
                "{request: {set: {x-env: prod}, remove: [x-debug]}, security_headers: strict}",
            )
        };
        let _ = write!(
            s,
            "---\napiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\nmetadata: {{name: p{i}, namespace: default}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r{i}}}]\n  wasm:\n  - name: {name}\n    rootID: {root}\n    code:\n      type: HTTP\n      http: {{url: \"{wasm_base}/{name}.wasm\", sha256: \"{sha}\"}}\n    config: {cfg}\n"
        );
        count += 1;
    }
    (s, count)
}

/// Serves `dir`'s files over HTTP/1.1 on 127.0.0.1 (the controller fetches wasm from it).
fn serve_dir(dir: PathBuf) -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding the wasm file server")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let Ok(clone) = c.try_clone() else { return };
                let mut rd = BufReader::new(clone);
                if rd.read_line(&mut line).is_err() {
                    return;
                }
                loop {
                    let mut h = String::new();
                    match rd.read_line(&mut h) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if h == "\r\n" || h == "\n" => break,
                        Ok(_) => {}
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let name = path.trim_start_matches('/');
                let body = if !name.is_empty() && !name.contains("..") && !name.contains('/') {
                    std::fs::read(dir.join(name)).ok()
                } else {
                    None
                };
                let _ = match body {
                    Some(b) => c
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                b.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|_| c.write_all(&b)),
                    None => c.write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    ),
                };
            });
        }
    });
    Ok(port)
}

/// Runs a command to completion and returns (wall ms, peak RSS KiB of the child) via wait4.
fn timed_rusage(cmd: &mut Command) -> Result<(f64, u64, i32)> {
    let t0 = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter; we reap our own child exactly once
    // here (the std Child is dropped without waiting).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    drop(child);
    if r < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((ms, ru.ru_maxrss as u64, code))
}

fn dir_kib(dir: &Path) -> f64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>() as f64
                / 1024.0
        })
        .unwrap_or(0.0)
}

struct Set {
    dir: PathBuf,
    policies: usize,
}

fn write_set(
    base: &Path,
    n: usize,
    args: &ControllerArgs,
    ports: &[u16],
    wasm_base: &str,
    m: &Modules,
) -> Result<Set> {
    let dir = base.join(format!("routes-{n}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("gateways.yaml"),
        // Nothing connects to the Backend in this benchmark: a nominal port.
        gateways_yaml(ports, NOMINAL_BACKEND_PORT),
    )?;
    std::fs::write(dir.join("routes.yaml"), routes_yaml(n, args.gateways, "a"))?;
    let (p, count) = policies_yaml(n, args.eep_every, wasm_base, m);
    std::fs::write(dir.join("policies.yaml"), p)?;
    Ok(Set {
        dir,
        policies: count,
    })
}

fn status(admin: u16) -> Result<Value> {
    get_json(admin, "/status")
}

/// `/status/xds` as `{"xds": ...}`, the shape [`synced`] reads: cheap to poll. The full
/// `/status` carries every resource's conditions (megabytes at 10,000 routes), and polling it
/// every 10 ms took controller CPU from the very translation being timed.
fn xds_status(admin: u16) -> Result<Value> {
    Ok(serde_json::json!({ "xds": get_json(admin, "/status/xds")? }))
}

fn get_json(admin: u16, path: &str) -> Result<Value> {
    let r = util::get(local(admin), path)?;
    if r.status != 200 {
        bail!("{path} answered {}", r.status);
    }
    Ok(serde_json::from_slice(&r.body)?)
}

/// Some(generation) when every one of `gateways` nodes has ACKed the current generation and it
/// is at least `min_gen`.
fn synced(doc: &Value, gateways: usize, min_gen: u64) -> Option<u64> {
    let gen = doc["xds"]["generation"].as_u64()?;
    let nodes = doc["xds"]["nodes"].as_object()?;
    let all = nodes.len() >= gateways
        && nodes
            .values()
            .all(|n| n["syncedGeneration"].as_u64() == Some(gen));
    (gen >= min_gen && all).then_some(gen)
}

/// Whether every Envoy the controller runs is ready and has no listener warming.
fn envoys_quiet(doc: &Value, gateways: usize) -> bool {
    let Some(envoys) = doc["envoys"].as_array() else {
        return false;
    };
    envoys.len() >= gateways
        && envoys.iter().all(|e| {
            let Some(addr) = e["adminAddr"].as_str().and_then(|a| a.parse().ok()) else {
                return false;
            };
            let ready = util::get(addr, "/ready").is_ok_and(|r| r.status == 200);
            let warming = util::get(
                addr,
                "/stats?filter=listener_manager.total_listeners_warming",
            )
            .ok()
            .map(|r| String::from_utf8_lossy(&r.body).to_string())
            .and_then(|b| {
                b.lines()
                    .find_map(|l| l.strip_prefix("listener_manager.total_listeners_warming: "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
            ready && warming == Some(0)
        })
}

/// Waits until the system is settled: every wasm module fetched (a fetch completing re-drives
/// translation and bumps the generation), every Envoy ACKed the current generation, ready and
/// not warming a listener, and neither the generation nor the translation count changed for
/// max(500 ms, 3 × the last translate time). Returns (generation, translations, the moment
/// that state was first seen).
fn settle(
    guard: &mut Guard,
    admin: u16,
    gateways: usize,
    timeout: Duration,
    what: &str,
) -> Result<(u64, u64, Instant)> {
    let mut last = Value::Null;
    let mut seen: Option<((u64, u64), Instant)> = None;
    util::wait_for(what, timeout, || {
        guard.check_alive()?;
        let d = match status(admin) {
            Ok(d) => d,
            Err(_) => return Ok(None),
        };
        let wasm_ready = d["wasm"]
            .as_array()
            .map(|a| a.iter().all(|m| m["state"] == "ready"))
            .unwrap_or(true);
        let translations = d["translations"].as_u64().unwrap_or(0);
        let window =
            Duration::from_millis((3 * d["lastTranslateMs"].as_u64().unwrap_or(0)).max(500));
        let g = synced(&d, gateways, 1)
            .filter(|_| wasm_ready && envoys_quiet(&d, gateways))
            .map(|g| (g, translations));
        last = d;
        match (g, seen) {
            (Some(g), Some((sg, at))) if g == sg => {
                Ok((at.elapsed() >= window).then_some((g.0, g.1, at)))
            }
            (Some(g), _) => {
                seen = Some((g, Instant::now()));
                Ok(None)
            }
            (None, _) => {
                seen = None;
                Ok(None)
            }
        }
    })
    .map_err(|e| {
        anyhow!(
            "{e:#}; last status: xds {} wasm {}",
            last["xds"],
            last["wasm"]
        )
    })
}

fn converge(
    args: &ControllerArgs,
    portcullis: &Path,
    envoy: &Path,
    set: &Set,
    n: usize,
    work: &Path,
) -> Result<ConvergeResult> {
    let run_dir = work.join(format!("run-{n}"));
    std::fs::create_dir_all(&run_dir)?;
    let bound_file = run_dir.join("bound.json");
    let _ = std::fs::remove_file(&bound_file);
    let log = std::fs::File::create(run_dir.join("controller.log"))?;
    let mut cmd = Command::new(portcullis);
    cmd.arg("run")
        .arg("-f")
        .arg(&set.dir)
        .arg("--xds-addr")
        .arg("127.0.0.1:0")
        .arg("--wasm-addr")
        .arg("127.0.0.1:0")
        .args(["--admin-addr", "127.0.0.1:0", "--ephemeral-listener-ports"])
        .arg("--bound-addresses-file")
        .arg(&bound_file)
        .arg("--envoy-bin")
        .arg(envoy)
        .args(["--envoy-concurrency", "1", "--debounce-ms", "0"])
        .arg("--listener-address")
        .arg("127.0.0.1")
        .args(["--allow-backend-cidr", "127.0.0.0/8"])
        .arg("--work-dir")
        .arg(run_dir.join("work"))
        .arg("--cache-dir")
        .arg(run_dir.join("cache"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let t0 = Instant::now();
    let mut guard = Guard::spawn("portcullis run", &mut cmd)?;
    let timeout = Duration::from_secs(args.converge_timeout);
    let admin = util::wait_for("the controller's bound addresses", timeout, || {
        guard.check_alive()?;
        let Ok(text) = std::fs::read_to_string(&bound_file) else {
            return Ok(None);
        };
        let v: Value = serde_json::from_str(&text)?;
        let addr: std::net::SocketAddr = v["admin"]
            .as_str()
            .ok_or_else(|| anyhow!("no admin address in {}", bound_file.display()))?
            .parse()?;
        Ok(Some(addr.port()))
    })?;
    let (_, _, settled_at) = settle(&mut guard, admin, args.gateways, timeout, "initial sync")?;
    let initial_sync_ms = settled_at.duration_since(t0).as_secs_f64() * 1e3;
    let pid = guard.pid();
    let mut edits = vec![];
    let mut edit_cpu = vec![];
    let mut tag = String::from("a");
    for e in 0..args.edits {
        // Every edit starts from a quiet system (no Envoy still compiling wasm or warming).
        let (gen, _, _) = settle(
            &mut guard,
            admin,
            args.gateways,
            timeout,
            "settle before an edit",
        )?;
        tag = format!("edit{e}");
        let text = routes_yaml(n, args.gateways, &tag);
        let (ms, cpu) = edit_and_wait(
            &mut guard,
            admin,
            set,
            &text,
            &format!("ACK of edit {e}"),
            timeout,
            gen,
            |d| synced(d, args.gateways, gen + 1).is_some(),
        )?;
        edits.push(ms);
        edit_cpu.push(cpu);
    }
    let single = single_edits(args, &mut guard, admin, set, n, &tag, timeout)?;
    let doc = status(admin)?;
    let envoy_rss_mib = doc["envoys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["pid"].as_u64())
                .filter_map(|p| util::status_kib(p as u32, "VmRSS:").ok())
                .map(|k| k as f64 / 1024.0)
                .collect()
        })
        .unwrap_or_default();
    let res = ConvergeResult {
        routes: n,
        gateways: args.gateways,
        initial_sync_ms,
        median_ms: median(&edits),
        min_ms: edits.iter().copied().fold(f64::INFINITY, f64::min),
        max_ms: edits.iter().copied().fold(0.0, f64::max),
        edits_ms: edits,
        last_translate_ms: doc["lastTranslateMs"].as_u64().unwrap_or(0),
        controller_peak_rss_mib: util::status_kib(pid, "VmHWM:")? as f64 / 1024.0,
        controller_rss_mib: util::status_kib(pid, "VmRSS:")? as f64 / 1024.0,
        envoy_rss_mib,
        edit_cpu_s: median(&edit_cpu),
        single_median_ms: median(&single.ms),
        single_cpu_s: median(&single.cpu_s),
        single_edits_ms: single.ms,
        single_others_untouched: (args.single_edits > 0).then_some(single.others_untouched),
        error: None,
    };
    guard.stop();
    Ok(res)
}

/// Writes `text` as the routes file (temp file + rename, as editors and `kubectl`-style tools
/// do) and waits until `/status/xds` shows a generation newer than `generation` for which
/// `acked` holds (the system was settled before, so a newer generation comes from this edit).
/// Returns (wall ms, controller CPU seconds) of the edit.
#[allow(clippy::too_many_arguments)]
fn edit_and_wait(
    guard: &mut Guard,
    admin: u16,
    set: &Set,
    text: &str,
    what: &str,
    timeout: Duration,
    generation: u64,
    acked: impl Fn(&Value) -> bool,
) -> Result<(f64, f64)> {
    let pid = guard.pid();
    let cpu0 = util::cpu_seconds(pid)?;
    let t = Instant::now();
    let tmp = set.dir.join(".routes.yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, set.dir.join("routes.yaml"))?;
    let mut last = Value::Null;
    util::wait_for(what, timeout, || {
        guard.check_alive()?;
        let d = match xds_status(admin) {
            Ok(d) => d,
            Err(_) => return Ok(None),
        };
        let newer = d["xds"]["generation"].as_u64().unwrap_or(0) > generation;
        let done = newer && acked(&d);
        last = d;
        Ok(done.then_some(()))
    })
    .map_err(|er| anyhow!("{er:#}; last xds status: {}", last["xds"]))?;
    Ok((
        t.elapsed().as_secs_f64() * 1e3,
        util::cpu_seconds(pid)? - cpu0,
    ))
}

struct SingleEdits {
    ms: Vec<f64>,
    cpu_s: Vec<f64>,
    others_untouched: bool,
}

/// Sum of an Envoy's xDS update counters (LDS, CDS, every RDS): unchanged means no push reached
/// it, not even one it rejected.
fn xds_updates(admin_addr: &str) -> Result<u64> {
    let addr: std::net::SocketAddr = admin_addr.parse()?;
    let r = util::get(addr, "/stats?filter=update_attempt")?;
    Ok(String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.contains("lds.") || l.contains("cds.") || l.contains("rds."))
        .filter_map(|l| {
            l.rsplit_once(": ")
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        })
        .sum())
}

/// Every Envoy's (node id, xDS update counter sum).
fn envoy_updates(doc: &Value) -> Result<Vec<(String, u64)>> {
    let envoys = doc["envoys"].as_array().cloned().unwrap_or_default();
    envoys
        .iter()
        .map(|e| {
            let node = e["nodeId"].as_str().unwrap_or_default().to_string();
            let addr = e["adminAddr"]
                .as_str()
                .ok_or_else(|| anyhow!("Envoy {node} has no admin address"))?;
            Ok((node, xds_updates(addr)?))
        })
        .collect()
}

/// Edits one route (`r0`, on `gw0`) at a time and measures until `gw0`'s Envoy ACKed the new
/// generation; checks that no other Envoy got an xDS update.
fn single_edits(
    args: &ControllerArgs,
    guard: &mut Guard,
    admin: u16,
    set: &Set,
    n: usize,
    base_tag: &str,
    timeout: Duration,
) -> Result<SingleEdits> {
    let target = "default/gw0";
    let mut out = SingleEdits {
        ms: vec![],
        cpu_s: vec![],
        others_untouched: true,
    };
    for e in 0..args.single_edits {
        let (gen, _, _) = settle(
            guard,
            admin,
            args.gateways,
            timeout,
            "settle before a one-route edit",
        )?;
        let before = envoy_updates(&status(admin)?)?;
        let one = format!("one{e}");
        let text = routes_yaml_tagged(n, args.gateways, |i| if i == 0 { &one } else { base_tag });
        let (ms, cpu) = edit_and_wait(
            guard,
            admin,
            set,
            &text,
            &format!("ACK of one-route edit {e}"),
            timeout,
            gen,
            |d| {
                d["xds"]["nodes"][target]["syncedGeneration"]
                    .as_u64()
                    .is_some_and(|g| g > gen)
            },
        )?;
        out.ms.push(ms);
        out.cpu_s.push(cpu);
        // Let every stream finish, then compare the other Envoys' counters.
        settle(
            guard,
            admin,
            args.gateways,
            timeout,
            "settle after a one-route edit",
        )?;
        let after = envoy_updates(&status(admin)?)?;
        for (node, count) in &after {
            if node == target {
                continue;
            }
            let was = before.iter().find(|(b, _)| b == node).map(|(_, c)| *c);
            if was != Some(*count) {
                eprintln!("[bench] one-route edit {e}: Envoy {node} got an xDS update ({was:?} -> {count})");
                out.others_untouched = false;
            }
        }
    }
    Ok(out)
}

/// Runs the benchmark and writes its JSON; `report::publish_controller` writes the views.
pub fn run(args: ControllerArgs) -> Result<ControllerReport> {
    let root = find_root()?;
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        }
    };
    let portcullis = abs(&args.portcullis);
    if !portcullis.exists() {
        bail!(
            "{} missing (cargo build --release -p portcullis)",
            portcullis.display()
        );
    }
    let envoy = envoy_bin(&root, args.envoy.clone());
    let wasm_dir = abs(&args.wasm_dir);
    let m = Modules {
        ua_sha: sha256_file(&wasm_dir.join("ua_block.wasm"))?,
        headers_sha: sha256_file(&wasm_dir.join("headers.wasm"))?,
    };
    let wasm_port = serve_dir(wasm_dir.clone())?;
    let wasm_base = format!("http://127.0.0.1:{wasm_port}");
    let tmp = std::env::temp_dir().join(format!("portcullis-bench-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let base = args
        .manifests
        .clone()
        .unwrap_or_else(|| tmp.join("manifests"));
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let mut sizes: Vec<usize> = args.routes.clone();
    sizes.extend(args.converge_routes.iter().copied());
    sizes.sort_unstable();
    sizes.dedup();
    // Nominal listener ports: `run` binds them on port 0 (`--ephemeral-listener-ports`), and
    // `translate` binds nothing.
    let ports: Vec<u16> = (0..args.gateways).map(|g| 8000 + g as u16).collect();
    let mut sets = std::collections::BTreeMap::new();
    for &n in &sizes {
        sets.insert(n, write_set(&base, n, &args, &ports, &wasm_base, &m)?);
    }

    let mut translate = vec![];
    for &n in &args.routes {
        let set = &sets[&n];
        let mut runs = vec![];
        let mut peak = 0u64;
        let out_path = tmp.join("translate-out.json");
        for _ in 0..args.translate_runs.max(1) {
            let out = std::fs::File::create(&out_path)
                .with_context(|| format!("creating {}", out_path.display()))?;
            let mut cmd = Command::new(&portcullis);
            cmd.arg("translate")
                .arg("-f")
                .arg(&set.dir)
                .args(["-o", "json"])
                .args(["--allow-backend-cidr", "127.0.0.0/8"])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(Stdio::null());
            let (ms, rss, code) = timed_rusage(&mut cmd)?;
            if code != 0 {
                bail!("portcullis translate exited {code} on {} routes", n);
            }
            eprintln!(
                "[bench] translate {n} routes: {ms:.0} ms, peak RSS {:.1} MiB",
                rss as f64 / 1024.0
            );
            runs.push(ms);
            peak = peak.max(rss);
        }
        let output_kib = std::fs::metadata(&out_path)
            .map(|m| m.len() as f64 / 1024.0)
            .unwrap_or(0.0);
        translate.push(TranslateResult {
            routes: n,
            gateways: args.gateways,
            policies: set.policies,
            manifest_kib: dir_kib(&set.dir),
            median_ms: median(&runs),
            min_ms: runs.iter().copied().fold(f64::INFINITY, f64::min),
            max_ms: runs.iter().copied().fold(0.0, f64::max),
            runs_ms: runs,
            peak_rss_mib: peak as f64 / 1024.0,
            output_kib,
        });
    }

    let mut convergence = vec![];
    for &n in &args.converge_routes {
        eprintln!("[bench] portcullis run with {n} routes");
        let r = converge(&args, &portcullis, &envoy, &sets[&n], n, &tmp).unwrap_or_else(|e| {
            eprintln!("[bench] convergence at {n} routes not measured: {e:#}");
            ConvergeResult {
                routes: n,
                gateways: args.gateways,
                error: Some(format!("{e:#}").chars().take(400).collect()),
                ..Default::default()
            }
        });
        if r.error.is_none() {
            eprintln!(
                "[bench] {n} routes: initial sync {:.0} ms, change -> ACK {:?} ms, controller peak RSS {:.1} MiB",
                r.initial_sync_ms, r.edits_ms, r.controller_peak_rss_mib
            );
        }
        convergence.push(r);
    }

    let portcullis_version = Command::new(&portcullis)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let report = ControllerReport {
        benchmark: "controller",
        date_utc: util::now_utc(),
        command: args.command.clone(),
        git: util::git_rev(&root),
        machine: util::machine(),
        envoy_version: util::envoy_version(&envoy),
        portcullis_version,
        translate_runs: args.translate_runs,
        edits: args.edits,
        manifest_mix: format!(
            "1 GatewayClass, {} Gateways (one HTTP listener each), 1 Backend; N HTTPRoutes spread round-robin over the Gateways, each with 2 hostnames, a rule with a PathPrefix+header match and an Exact match plus a RequestHeaderModifier (set + remove), and a catch-all PathPrefix / rule; one wasm EnvoyExtensionPolicy per {} routes (alternating ua-block and headers, HTTP code pinned by sha256)",
            args.gateways, args.eep_every
        ),
        translate,
        convergence,
        reference: serde_json::json!({
            "source": "Envoy Gateway v1.9.0 published benchmark report (their hardware and methodology)",
            "control_plane_memory_mib": {"10_routes": 134, "1000_httproutes": 263}
        }),
    };
    let out = abs(&args.out);
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    eprintln!("[bench] wrote {}", out.display());
    if args.manifests.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_have_the_requested_counts() {
        let r = routes_yaml(10, 3, "a");
        assert_eq!(r.matches("kind: HTTPRoute").count(), 10);
        let m = Modules {
            ua_sha: "00".into(),
            headers_sha: "11".into(),
        };
        let (p, n) = policies_yaml(1000, 100, "http://x", &m);
        assert_eq!(n, 10);
        assert_eq!(p.matches("kind: EnvoyExtensionPolicy").count(), 10);
    }
}
