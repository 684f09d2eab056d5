//! High availability in Kubernetes mode: two replicas of `portcullis::kubernetes::run`, in-process,
//! against ONE fake API server (`kube_support::ApiServer::shared`: one store, one log, a kube mock
//! client per replica, every request recorded with the replica's label), and a real Envoy.
//!
//! The requirement: "A Lease decides the leader. Only the leader writes status and creates
//! infrastructure. Every replica serves xDS from its own translation, so Envoys connect to any
//! replica."
//!
//! Asserted:
//! - replica A, started first, creates the Lease with its identity; replica B, started once A
//!   holds it, stays a follower: `/readyz` answers 200 on both, `leader: true` on A and `false` on
//!   B, and both have translated (`/status` lists Gateway `infra/web`);
//! - while A leads, B sends nothing but reads (no status PATCH, no fleet PATCH, no Lease write,
//!   no Secret created); A has written the Gateway's and the HTTPRoute's status and applied the
//!   fleet (ServiceAccount, Secret, ConfigMap, Service, Deployment);
//! - a real Envoy started from the bootstrap ConfigMap and client-certificate Secret that A applied,
//!   with only its xDS port pointed at B (SNI and SAN still `localhost`: B's server certificate
//!   comes from the same CA Secret), gets its config from B (B's xDS status shows the node
//!   connected, A's does not; the wasm fetch URL in Envoy's config is B's wasm endpoint) and
//!   serves: an allowed User-Agent reaches the echo upstream, a denied one gets 403;
//! - failover: A's shutdown returns promptly, having given the Lease up before returning (the
//!   process exits then; answers reach the replicas 25 ms late, as from a real API server); B then
//!   takes it (a PUT from B naming itself), reports `leader: true`, writes the Gateway's and the
//!   HTTPRoute's status (compared against the cluster, not against what it did not write) and
//!   applies the fleet; A writes nothing once it released the Lease;
//! - the Envoy connected to B keeps serving after A is gone;
//! - B shuts down promptly with Envoy still connected, and gives the Lease up.

mod kube_support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube_support::{
    admin_get, admin_get_unix, applies, bind_listeners, cluster, envoy_bootstrap, fleet_paths,
    listener_port, serve_origin, test_config, unb64, ApiServer, Recorded, BAD_UA, CONTROLLER_NS,
    GOOD_UA,
};
use portcullis::kubernetes::KubeRuntimeConfig;
use portcullis_integration::echo::{Echo, EchoServer};
use portcullis_integration::http::{client, get_with_ua};
use portcullis_integration::process::{envoy_bin, Process, ProcessBuilder};
use portcullis_integration::wasm;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::Instrument;

const A: &str = "replica-a";
const B: &str = "replica-b";
const LEASE: &str = "portcullis-leader";

/// How long each API answer takes to reach a replica: a real API server is not in-process, and
/// "the Lease is released before `run` returns" must not hold only because answers are instant.
const API_LATENCY: Duration = Duration::from_millis(25);

/// Slow shared machines: everything waits generously.
const CONVERGE: Duration = Duration::from_secs(120);
/// From A's Lease release to B leading and writing.
const FAILOVER: Duration = Duration::from_secs(30);
/// How long `run` may take to return once shutdown is requested.
const SHUTDOWN: Duration = Duration::from_secs(15);

/// One controller replica running on the test's runtime.
struct Replica {
    name: &'static str,
    xds_port: u16,
    wasm_port: u16,
    admin_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// How `run` ended, should it end before the test stops it (e.g. a listener cannot bind).
    ended: Arc<Mutex<Option<String>>>,
}

impl Replica {
    /// Start `portcullis::kubernetes::run` as `name`, with its own ports and cache, a client of
    /// `api` labelled `name`, and the fleet's certificates expected in `cert_dir`.
    fn start(
        rt: &tokio::runtime::Runtime,
        api: &ApiServer,
        name: &'static str,
        work: &Path,
        cert_dir: &Path,
    ) -> Replica {
        let (listeners, (xds_port, wasm_port, admin_port)) = bind_listeners(rt);
        let cfg = KubeRuntimeConfig {
            lease_name: LEASE.into(),
            // Short, but with room for a loaded machine: only A's release (not expiry) is meant
            // to hand the Lease over.
            lease_duration: Duration::from_secs(8),
            lease_renew: Duration::from_secs(1),
            // The fleet Envoy binds the Gateway listener where the kernel says (read back from
            // its admin): a chosen port may be taken on a busy machine.
            ephemeral_listener_ports: true,
            ..test_config(
                name,
                (xds_port, wasm_port, admin_port),
                &work.join(format!("cache-{name}")),
                cert_dir,
            )
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let task = {
            let _guard = rt.enter();
            let client = api.client_with_latency(name, API_LATENCY);
            let ended = ended.clone();
            rt.spawn(
                async move {
                    let r = portcullis::kubernetes::run_on(cfg, listeners, client, async {
                        let _ = stop_rx.await;
                    })
                    .await;
                    *ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{r:?}"));
                    r
                }
                // Lines `run` logs itself name their replica (not its spawned tasks'). Target
                // not `kube_ha`: the filter's `kube=warn` also matches that.
                .instrument(tracing::info_span!(target: "ha", "replica", id = name)),
            )
        };
        Replica {
            name,
            xds_port,
            wasm_port,
            admin_port,
            stop: Some(stop_tx),
            task: Some(task),
            ended,
        }
    }

    /// Why waiting on this replica is pointless: `run` returned before it was asked to stop.
    fn gone(&self) -> Option<String> {
        // Stopped by the test: ending is expected.
        self.stop.as_ref()?;
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| {
                format!(
                    "{}: portcullis::kubernetes::run returned early: {r}",
                    self.name
                )
            })
    }

    fn get(&self, path: &str) -> Result<(u16, String), String> {
        admin_get(self.admin_port, path)
    }

    fn get_json(&self, path: &str) -> Value {
        let (code, body) = self
            .get(path)
            .unwrap_or_else(|e| panic!("{} {path}: {e}", self.name));
        assert_eq!(code, 200, "{} {path}: {body}", self.name);
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{} {path} is not JSON ({e}): {body}", self.name))
    }

    /// Wait for `/readyz` 200 and return its JSON.
    fn ready(&self, api: &ApiServer) -> Value {
        let start = Instant::now();
        loop {
            match self.get("/readyz") {
                Ok((200, body)) => {
                    return serde_json::from_str(&body).unwrap_or_else(|e| {
                        panic!("{} /readyz is not JSON ({e}): {body}", self.name)
                    })
                }
                other => {
                    if let Some(why) = self.gone() {
                        panic!("{why}\n{}", api.dump());
                    }
                    if start.elapsed() > CONVERGE {
                        panic!(
                            "{} /readyz never answered 200 (last: {other:?})\n{}",
                            self.name,
                            api.dump()
                        );
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Poll `/readyz` until its `leader` is `want`.
    fn wait_leader(&self, api: &ApiServer, want: bool, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            let last = self.get("/readyz");
            if let Ok((_, body)) = &last {
                if let Ok(v) = serde_json::from_str::<Value>(body) {
                    if v["leader"] == want {
                        return v;
                    }
                }
            }
            if start.elapsed() > within {
                panic!(
                    "{} /readyz never said leader: {want} within {within:?} (last: {last:?})\n{}",
                    self.name,
                    api.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait until `/status` lists Gateway `infra/web` among the translated gateways.
    fn wait_translated(&self, api: &ApiServer) -> Value {
        let start = Instant::now();
        loop {
            let status = self.get_json("/status");
            let has_web = status["gateways"].as_array().is_some_and(|g| {
                g.iter()
                    .any(|g| g["namespace"] == "infra" && g["name"] == "web")
            });
            if has_web {
                return status;
            }
            if let Some(why) = self.gone() {
                panic!("{why}\n{}", api.dump());
            }
            if start.elapsed() > CONVERGE {
                panic!(
                    "{} never translated Gateway infra/web; /status: {status:#}\n{}",
                    self.name,
                    api.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Ask `run` to return and wait (bounded) for it; how long it took.
    fn shutdown(&mut self, rt: &tokio::runtime::Runtime, envoy: &Option<Process>) -> Duration {
        let started = Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("replica still running");
        let ended = rt.block_on(async { tokio::time::timeout(SHUTDOWN, task).await });
        match ended {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("{}: run returned an error: {e:#}", self.name),
            Ok(Err(e)) => panic!("{}: run panicked: {e}", self.name),
            Err(_) => panic!(
                "{}: run did not return within {SHUTDOWN:?} of shutdown\nEnvoy log:\n{}",
                self.name,
                envoy_log(envoy)
            ),
        }
        started.elapsed()
    }
}

fn envoy_log(envoy: &Option<Process>) -> String {
    envoy
        .as_ref()
        .map(|p| p.log_tail())
        .unwrap_or_else(|| "(Envoy not started)".into())
}

fn leases_path() -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{CONTROLLER_NS}/leases")
}

fn lease_path() -> String {
    format!("{}/{LEASE}", leases_path())
}

/// A successful Lease write (create or replace) by `client`.
fn is_lease_write(r: &Recorded, client: &str) -> bool {
    r.client == client
        && ((r.method == "POST" && r.path == leases_path() && r.answered == Some(201))
            || (r.method == "PUT" && r.path == lease_path() && r.answered == Some(200)))
}

fn holder(r: &Recorded) -> &Value {
    &r.body["spec"]["holderIdentity"]
}

const GW_STATUS: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/infra/gateways/web/status";
const ROUTE_STATUS: &str =
    "/apis/gateway.networking.k8s.io/v1/namespaces/apps/httproutes/app/status";

fn is_status_patch(r: &Recorded) -> bool {
    r.method == "PATCH" && r.path.ends_with("/status")
}

fn is_fleet_patch(r: &Recorded) -> bool {
    r.method == "PATCH" && fleet_paths().iter().any(|(_, p)| *p == r.path)
}

/// The node's connected xDS streams on a replica (0: never connected, or gone).
fn connected_streams(replica: &Replica, node: &str) -> u64 {
    replica.get_json("/status/xds")["nodes"][node]["connectedStreams"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn two_replicas_one_leader_envoy_served_by_the_follower_and_failover() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,h2=warn,tower=warn,hyper=warn,kube=warn",
        ))
        .try_init();
    let test_started = Instant::now();
    let envoy_path = envoy_bin().unwrap_or_else(|e| panic!("{e}"));
    let module_path = wasm::module("ua_block").unwrap_or_else(|e| panic!("{e}"));
    let module = std::fs::read(&module_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", module_path.display()));
    let sha = hex::encode(Sha256::digest(&module));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let echo = EchoServer::start().expect("echo upstream");
    let origin_port = serve_origin(&rt, module);
    let wasm_url = format!("http://127.0.0.1:{origin_port}/ua_block.wasm");
    // The Gateway's port; Envoy binds its listener on port 0 (`ephemeral_listener_ports`).
    let gw_port = 8080;
    let tmp = tempfile::tempdir().expect("temp dir");
    let cert_dir: PathBuf = tmp.path().join("certs");
    std::fs::create_dir_all(&cert_dir).expect("mkdir certs");

    let api = ApiServer::shared(cluster(gw_port, echo.port(), &wasm_url, &sha));

    // --- A starts alone and takes the Lease.
    let mut a = Replica::start(&rt, &api, A, tmp.path(), &cert_dir);
    let took = api.wait_for_unless(
        "replica-a to take the Lease",
        CONVERGE,
        || a.gone(),
        |reqs| {
            reqs.iter()
                .find(|r| is_lease_write(r, A) && holder(r) == A)
                .map(|r| r.body.clone())
        },
    );
    assert_eq!(took["metadata"]["name"], LEASE, "{took:#}");
    assert_eq!(took["spec"]["leaseDurationSeconds"], 8, "{took:#}");

    // --- B starts once A leads.
    let mut b = Replica::start(&rt, &api, B, tmp.path(), &cert_dir);
    let gone = || a.gone().or_else(|| b.gone());

    let ready_a = a.ready(&api);
    let ready_b = b.ready(&api);
    assert_eq!(ready_a["leader"], true, "replica-a /readyz: {ready_a:#}");
    assert_eq!(ready_b["leader"], false, "replica-b /readyz: {ready_b:#}");
    assert_eq!(ready_a["translated"], true, "{ready_a:#}");
    assert_eq!(ready_b["translated"], true, "{ready_b:#}");
    a.wait_translated(&api);
    b.wait_translated(&api);

    // --- A writes: the statuses and the fleet.
    for path in [GW_STATUS, ROUTE_STATUS] {
        api.wait_for_unless(
            &format!("replica-a's status apply to {path}"),
            CONVERGE,
            gone,
            |reqs| {
                applies(reqs, path)
                    .into_iter()
                    .find(|r| r.client == A && r.answered == Some(200))
                    .map(|_| ())
            },
        );
    }
    let mut fleet: std::collections::BTreeMap<&str, Value> = Default::default();
    for (kind, path) in fleet_paths() {
        let got = api.wait_for_unless(
            &format!("replica-a's apply of the fleet's {kind}"),
            CONVERGE,
            gone,
            |reqs| {
                applies(reqs, &path)
                    .into_iter()
                    .rfind(|r| r.client == A && r.answered == Some(200))
                    .map(|r| r.body.clone())
            },
        );
        assert_eq!(got["kind"], kind);
        fleet.insert(kind, got);
    }

    // --- B only reads while A leads. Let B's election and write loop run a few rounds first
    // (B renews every second): three Lease reads after B translated.
    let b_translated_at = api.requests().len();
    api.wait_for_unless(
        "three Lease reads from replica-b while it follows",
        CONVERGE,
        gone,
        |reqs| {
            let reads = reqs[b_translated_at..]
                .iter()
                .filter(|r| r.client == B && r.method == "GET" && r.path == lease_path())
                .count();
            (reads >= 3).then_some(())
        },
    );
    let ready_b = b.get_json("/readyz");
    assert_eq!(
        ready_b["leader"],
        false,
        "replica-b must still follow: {ready_b:#}\n{}",
        api.dump()
    );
    let reqs = api.requests();
    let from_b: Vec<&Recorded> = reqs.iter().filter(|r| r.client == B).collect();
    assert!(
        !from_b.is_empty(),
        "replica-b sent nothing at all\n{}",
        api.dump()
    );
    let b_status = from_b.iter().filter(|r| is_status_patch(r)).count();
    let b_fleet = from_b.iter().filter(|r| is_fleet_patch(r)).count();
    let b_lease = from_b.iter().filter(|r| is_lease_write(r, B)).count();
    assert_eq!(
        (b_status, b_fleet, b_lease),
        (0, 0, 0),
        "a follower wrote (status PATCHes, fleet PATCHes, Lease writes)\n{}",
        api.dump()
    );
    let b_writes: Vec<String> = from_b
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| r.line())
        .collect();
    assert!(
        b_writes.is_empty(),
        "a follower sends only reads; replica-b sent:\n{}\n{}",
        b_writes.join("\n"),
        api.dump()
    );
    let a_status = reqs
        .iter()
        .filter(|r| r.client == A && is_status_patch(r))
        .count();
    let a_fleet = reqs
        .iter()
        .filter(|r| r.client == A && is_fleet_patch(r))
        .count();
    assert!(a_status >= 2 && a_fleet >= 5, "{}", api.dump());
    eprintln!(
        "while replica-a leads: replica-a sent {a_status} status and {a_fleet} fleet applies; \
         replica-b {} reads and no writes",
        from_b.len()
    );

    // --- A real Envoy from A's fleet, connected to B.
    let secret = &fleet["Secret"];
    for (file, key) in [
        ("tls.crt", "tls.crt"),
        ("tls.key", "tls.key"),
        ("ca.crt", "ca.crt"),
    ] {
        let pem = unb64(&secret["data"][key], &format!("fleet Secret {key}"));
        std::fs::write(cert_dir.join(file), pem).expect("write cert");
    }
    let boot = envoy_bootstrap(&fleet["ConfigMap"], &cert_dir, a.xds_port, b.xds_port);
    let envoy_admin = std::path::PathBuf::from(
        boot["admin"]["address"]["pipe"]["path"]
            .as_str()
            .expect("admin socket"),
    );
    let boot_path = tmp.path().join("bootstrap.json");
    std::fs::write(
        &boot_path,
        serde_json::to_string_pretty(&boot).expect("json"),
    )
    .expect("write bootstrap");
    let mut envoy = Some(
        ProcessBuilder::new("envoy", &envoy_path)
            .arg("-c")
            .arg(&boot_path)
            .args(["--concurrency", "1", "-l", "info", "--disable-hot-restart"])
            .spawn()
            .expect("start Envoy"),
    );
    let http = client();
    let listener = format!("infra/web/{gw_port}");
    // Both user agents, until the allowed one reaches the echo and the denied one gets 403.
    let serves = |envoy: &mut Option<Process>, what: &str, within: Duration| {
        let start = Instant::now();
        let mut last;
        loop {
            if let Some(status) = envoy.as_mut().and_then(|p| p.try_status()) {
                panic!(
                    "Envoy exited ({}) {what}\n{}\nEnvoy log:\n{}",
                    Process::describe_status(&status),
                    api.dump(),
                    envoy_log(envoy)
                );
            }
            let bound = listener_port(&envoy_admin, &listener).ok();
            let url = format!("http://127.0.0.1:{}/hello", bound.unwrap_or(0));
            let good = get_with_ua(&http, &url, Some(GOOD_UA));
            let bad = get_with_ua(&http, &url, Some(BAD_UA));
            match (good, bad) {
                (Ok(g), Ok(bd)) if g.status() == 200 && bd.status() == 403 => {
                    let echo: Echo = g.json().expect("echo JSON");
                    assert_eq!(echo.path, "/hello");
                    assert_eq!(echo.header("user-agent"), Some(GOOD_UA));
                    return;
                }
                (g, bd) => {
                    last = format!(
                        "listener {listener} bound {bound:?}; allowed UA: {:?}, denied UA: {:?}",
                        g.map(|r| r.status()),
                        bd.map(|r| r.status())
                    );
                }
            }
            if start.elapsed() > within {
                let status = b.get("/status").map(|(_, body)| body);
                panic!(
                    "Envoy did not serve {what} (last: {last})\nreplica-b /status: {status:?}\n{}\nEnvoy log:\n{}",
                    api.dump(),
                    envoy_log(envoy)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    serves(
        &mut envoy,
        "the Gateway with the wasm filter from replica-b",
        CONVERGE,
    );

    // It is B that serves it: the node is connected there, not to A, and the wasm module is
    // fetched from B's wasm endpoint (B's own translation).
    assert!(
        connected_streams(&b, "infra/web") >= 1,
        "replica-b /status/xds: {:#}",
        b.get_json("/status/xds")
    );
    assert_eq!(
        connected_streams(&a, "infra/web"),
        0,
        "replica-a /status/xds: {:#}",
        a.get_json("/status/xds")
    );
    let (code, dump) = admin_get_unix(&envoy_admin, "/config_dump").expect("Envoy /config_dump");
    assert_eq!(code, 200, "{dump}");
    let from_b = format!("https://localhost:{}/wasm/{sha}.wasm", b.wasm_port);
    let from_a = format!("https://localhost:{}/wasm/", a.wasm_port);
    assert!(
        dump.contains(&from_b) && !dump.contains(&from_a),
        "Envoy's config fetches the module from replica-b ({from_b}), not replica-a\n{dump}"
    );

    // --- Failover: A stops and gives the Lease up; B takes it and writes.
    let a_stopped_at = api.requests().len();
    let a_took = a.shutdown(&rt, &envoy);
    // Released by the time `run` returns: the process exits right after, taking any task still
    // running with it, and the Lease would then only pass on once it expires.
    let released = api.requests()[a_stopped_at..]
        .iter()
        .position(|r| is_lease_write(r, A) && holder(r).is_null())
        .map(|i| a_stopped_at + i)
        .unwrap_or_else(|| {
            panic!(
                "replica-a's run returned without releasing the Lease\n{}",
                api.dump()
            )
        });
    let takeover = api.wait_for_unless(
        "replica-b to take the Lease over",
        FAILOVER,
        || b.gone(),
        |reqs| {
            reqs[released..]
                .iter()
                .position(|r| is_lease_write(r, B) && holder(r) == B)
                .map(|i| released + i)
        },
    );
    let lease = api.stored(&lease_path()).expect("the Lease is stored");
    assert_eq!(
        lease["spec"]["holderIdentity"], B,
        "the stored Lease: {lease:#}"
    );
    let ready_b = b.wait_leader(&api, true, FAILOVER);
    assert_eq!(ready_b["ready"], true, "{ready_b:#}");
    // The cluster's objects carry no status (the fixtures never change): the new leader, which
    // compares against the cluster and not against what it wrote before, writes them all.
    let new_status = api.wait_for_unless(
        "status applies for the Gateway and the HTTPRoute from replica-b, the new leader",
        FAILOVER,
        || b.gone(),
        |reqs| {
            let written: Vec<&str> = reqs[takeover..]
                .iter()
                .filter(|r| r.client == B && is_status_patch(r) && r.answered == Some(200))
                .map(|r| r.path.as_str())
                .collect();
            (written.contains(&GW_STATUS) && written.contains(&ROUTE_STATUS))
                .then_some(written.len())
        },
    );
    api.wait_for_unless(
        "replica-b, the new leader, to apply the fleet",
        FAILOVER,
        || b.gone(),
        |reqs| {
            let applied: Vec<&str> = reqs[takeover..]
                .iter()
                .filter(|r| r.client == B && is_fleet_patch(r) && r.answered == Some(200))
                .map(|r| r.path.as_str())
                .collect();
            fleet_paths()
                .iter()
                .all(|(_, p)| applied.contains(&p.as_str()))
                .then_some(())
        },
    );
    let reqs = api.requests();
    let a_late: Vec<String> = reqs[released + 1..]
        .iter()
        .filter(|r| r.client == A && r.method != "GET")
        .map(|r| r.line())
        .collect();
    assert!(
        a_late.is_empty(),
        "replica-a wrote after giving the Lease up:\n{}\n{}",
        a_late.join("\n"),
        api.dump()
    );
    eprintln!(
        "failover: replica-a stopped in {a_took:?}; replica-b took the Lease (request {takeover}) \
         and wrote {new_status} statuses"
    );

    // --- The Envoy connected to B keeps serving.
    serves(&mut envoy, "after replica-a stopped", CONVERGE);
    assert!(
        connected_streams(&b, "infra/web") >= 1,
        "replica-b /status/xds: {:#}",
        b.get_json("/status/xds")
    );

    // --- B stops (Envoy still connected) and gives the Lease up.
    let b_stopped_at = api.requests().len();
    let b_took = b.shutdown(&rt, &envoy);
    api.wait_for(
        "replica-b to release the Lease",
        Duration::from_secs(30),
        |reqs| {
            reqs[b_stopped_at..]
                .iter()
                .find(|r| is_lease_write(r, B) && holder(r).is_null())
                .map(|_| ())
        },
    );
    eprintln!(
        "kube HA e2e: {} API requests, replica-b stopped in {b_took:?}, {:?} in all",
        api.requests().len(),
        test_started.elapsed()
    );
    drop(envoy.take());
    drop(echo);
}
