//! Measurement (run on demand, not a timed test): `portcullis run` with N HTTPRoutes over two
//! Gateways, each with its own Envoy. Prints translate time, the controller's peak RSS and the
//! time from a file change until every Envoy has ACKed the new snapshot.
//!
//! PORTCULLIS_BENCH_ROUTES=100,1000,10000 PORTCULLIS_BIN=dist/bin/portcullis \
//!   cargo test -p portcullis-integration --test controller_bench -- --ignored --nocapture

use portcullis_integration::controller::{Controller, KeepAlive, CONVERGE};
use portcullis_integration::echo::EchoServer;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-e2e");
const GATEWAYS: usize = 2;

fn gateways(ports: &[u16], echo_port: u16) -> String {
    let mut s = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: portcullis}\nspec: {controllerName: portcullis.dev/gatewayclass-controller}\n",
    );
    for (g, port) in ports.iter().enumerate() {
        let _ = write!(
            s,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw{g}, namespace: default}}\nspec:\n  gatewayClassName: portcullis\n  listeners: [{{name: http, port: {port}, protocol: HTTP}}]\n"
        );
    }
    let _ = write!(
        s,
        "---\napiVersion: gateway.envoyproxy.io/v1alpha1\nkind: Backend\nmetadata: {{name: echo, namespace: default}}\nspec:\n  endpoints: [{{ip: {{address: 127.0.0.1, port: {echo_port}}}}}]\n"
    );
    s
}

fn routes(n: usize, tag: &str) -> String {
    let mut s = String::new();
    for i in 0..n {
        let _ = write!(
            s,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: default}}\nspec:\n  parentRefs: [{{name: gw{}}}]\n  hostnames: [\"h{i}.example.com\"]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /r{i}}}}}]\n    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-tag, value: \"{tag}\"}}]}}}}]\n    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: echo}}]\n",
            i % GATEWAYS
        );
    }
    s
}

fn vm_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `doc` is `/status/xds`.
fn all_synced(doc: &serde_json::Value, min_gen: u64) -> Result<u64, String> {
    let gen = doc["generation"].as_u64().unwrap_or(0);
    let nodes = doc["nodes"].as_object().ok_or("no nodes")?;
    let synced = nodes.len() == GATEWAYS
        && nodes
            .values()
            .all(|n| n["syncedGeneration"].as_u64() == Some(gen));
    if gen >= min_gen && synced {
        Ok(gen)
    } else {
        Err(format!("generation {gen}: {}", doc["nodes"]))
    }
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn change_to_ack_latency_by_route_count() {
    let sizes: Vec<usize> = std::env::var("PORTCULLIS_BENCH_ROUTES")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("| HTTPRoutes | Gateways | translate (ms) | change -> all Envoys ACKed (ms) | controller peak RSS (MiB) |");
    println!("|---:|---:|---:|---:|---:|");
    for n in sizes {
        let echo = EchoServer::start().expect("echo");
        // The Gateways' listener ports; Envoy binds them on port 0 (`Controller::gateway_port`).
        let ports: Vec<u16> = (0..GATEWAYS).map(|g| 8080 + g as u16).collect();
        let mut c = Controller::builder(BIN)
            .manifest("gateways.yaml", gateways(&ports, echo.port()))
            .manifest("routes.yaml", routes(n, "a"))
            .args(["--debounce-ms", "0"])
            .start()
            .expect("controller");
        // Poll only /status/xds: serializing every resource's status would skew the peak RSS.
        for g in 0..GATEWAYS {
            c.wait_synced(&format!("default/gw{g}"))
                .expect("initial sync");
        }
        let gen = all_synced(&c.xds_status().expect("status"), 1).expect("synced");
        let t0 = Instant::now();
        c.write_manifest("routes.yaml", &routes(n, "b"))
            .expect("edit");
        loop {
            let d = c.xds_status().expect("status");
            match all_synced(&d, gen + 1) {
                Ok(_) => break,
                Err(e) => assert!(t0.elapsed() < CONVERGE * 5, "no ACK: {e}"),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let ack_ms = t0.elapsed().as_millis();
        let doc = c.status().expect("status");
        let translate_ms = doc["lastTranslateMs"].as_u64().unwrap_or(0);
        let gw1 = c
            .gateway_port("default/gw1", ports[1])
            .expect("listener bound");
        let r = KeepAlive::connect(gw1)
            .and_then(|mut k| k.get("h1.example.com", "/r1", &[]))
            .expect("request");
        assert_eq!(r.header("x-tag"), Some("b"), "the edit is live");
        let peak = vm_kib(c.process().pid(), "VmHWM:");
        println!(
            "| {n} | {GATEWAYS} | {translate_ms} | {ack_ms} | {:.1} |",
            peak as f64 / 1024.0
        );
    }
}
