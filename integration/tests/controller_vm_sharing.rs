//! Measurement (run on demand): Envoy memory with 10 wasm policies sharing one VM per module
//! digest (what the controller does: `vm_id` = sha256) against one VM per policy (10 distinct
//! digests of the same code, made by appending a custom section to the module).
//!
//! cargo test -p portcullis-integration --test controller_vm_sharing -- --ignored --nocapture

use portcullis_integration::controller::{Controller, KeepAlive, CONVERGE};
use portcullis_integration::echo::EchoServer;
use portcullis_integration::wasm::module;
use std::collections::BTreeMap;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-e2e");
const NODE: &str = "default/gw";
/// The Gateway's listener port; Envoy binds it on port 0 (`Controller::gateway_port`).
const GW_PORT: u16 = 8080;
const POLICIES: usize = 10;

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// The same module with a custom section appended: identical code, different digest.
fn variant(wasm: &[u8], i: usize) -> Vec<u8> {
    let name = b"portcullis-variant";
    let payload = i.to_string().into_bytes();
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(&payload);
    let mut out = wasm.to_vec();
    out.push(0);
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

fn manifests(gw_port: u16, echo_port: u16, policy_urls: &[String]) -> String {
    let mut s = format!(
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
  listeners: [{{name: http, port: {gw_port}, protocol: HTTP}}]
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: echo, namespace: default}}
spec:
  endpoints: [{{ip: {{address: 127.0.0.1, port: {echo_port}}}}}]
"#
    );
    for i in 0..POLICIES {
        s.push_str(&format!(
            r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r{i}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /r{i}}}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: echo}}]
"#
        ));
        if let Some(url) = policy_urls.get(i) {
            s.push_str(&format!(
                r#"---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {{name: p{i}, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r{i}}}]
  wasm:
  - name: ua-block
    rootID: ua_block
    code: {{type: HTTP, http: {{url: "{url}"}}}}
    config: {{deny: {{contains: ["BadBot{i}"]}}, status: 403}}
"#
            ));
        }
    }
    s
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Start a controller with these policies, exercise every route, return (Envoy RSS KiB, wasm stats).
fn measure(label: &str, policy_urls: &[String]) -> (u64, BTreeMap<String, String>) {
    let echo = EchoServer::start().expect("echo");
    let mut c = Controller::builder(BIN)
        .manifest("all.yaml", manifests(GW_PORT, echo.port(), policy_urls))
        .args(["--envoy-concurrency", "2"])
        .start()
        .expect("controller");
    c.wait_status("all modules fetched", |d| {
        let n = d["wasm"]
            .as_array()
            .map(|a| a.iter().filter(|m| m["state"] == "ready").count())
            .unwrap_or(0);
        let want = policy_urls
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if n == want {
            Ok(())
        } else {
            Err(format!("{n}/{want} ready"))
        }
    })
    .expect("fetched");
    c.wait_synced(NODE).expect("synced");
    let gw_port = c.gateway_port(NODE, GW_PORT).expect("listener bound");
    c.process()
        .wait_until("every route filtered or served", CONVERGE, || {
            for i in 0..POLICIES {
                let r = KeepAlive::connect(gw_port)
                    .and_then(|mut k| {
                        k.get(
                            "example.com",
                            &format!("/r{i}"),
                            &[("user-agent", &format!("BadBot{i}"))],
                        )
                    })
                    .map_err(|e| e.to_string())?;
                let want = if i < policy_urls.len() { 403 } else { 200 };
                if r.status != want {
                    return Err(format!("/r{i}: {} want {want}", r.status));
                }
            }
            Ok(())
        })
        .expect("traffic");
    std::thread::sleep(Duration::from_secs(2));
    let doc = c.status().expect("status");
    let pid = doc["envoys"][0]["pid"].as_u64().expect("envoy pid") as u32;
    let admin = doc["envoys"][0]["adminAddr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let stats = reqwest::blocking::get(format!("http://{admin}/stats?filter=^wasm\\."))
        .and_then(|r| r.text())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once(": ")
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let rss = rss_kib(pid);
    println!("{label:<28} Envoy RSS {:>8.1} MiB", rss as f64 / 1024.0);
    (rss, stats)
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn vm_per_digest_uses_less_memory_than_vm_per_policy() {
    let wasm = std::fs::read(module("ua_block").expect("ua_block.wasm")).expect("read");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut app = axum::Router::new();
    for i in 0..POLICIES {
        let bytes = variant(&wasm, i);
        app = app.route(
            &format!("/m{i}.wasm"),
            axum::routing::get(move || async move { bytes }),
        );
    }
    let shared_bytes = wasm.clone();
    app = app.route(
        "/shared.wasm",
        axum::routing::get(move || async move { shared_bytes }),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
        .expect("bind");
    let port = listener.local_addr().expect("origin addr").port();
    rt.spawn(async move { axum::serve(listener, app).await });

    let shared: Vec<String> = (0..POLICIES)
        .map(|_| format!("http://127.0.0.1:{port}/shared.wasm"))
        .collect();
    let distinct: Vec<String> = (0..POLICIES)
        .map(|i| format!("http://127.0.0.1:{port}/m{i}.wasm"))
        .collect();
    println!(
        "ua_block.wasm {} bytes, {POLICIES} routes, Envoy --concurrency 2",
        wasm.len()
    );
    let (base, _) = measure("no policies", &[]);
    let (one_vm, s1) = measure("10 policies, vm_id=digest", &shared);
    let (ten_vm, s10) = measure("10 policies, 10 vm_ids", &distinct);
    for (k, v) in s1
        .iter()
        .filter(|(k, _)| k.contains("active") || k.contains("created"))
    {
        println!("  shared   {k}: {v}");
    }
    for (k, v) in s10
        .iter()
        .filter(|(k, _)| k.contains("active") || k.contains("created"))
    {
        println!("  distinct {k}: {v}");
    }
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "wasm cost over baseline: shared {:.1} MiB, per-policy {:.1} MiB; sharing saves {:.1} MiB ({:.0}%)",
        mib(one_vm.saturating_sub(base)),
        mib(ten_vm.saturating_sub(base)),
        mib(ten_vm.saturating_sub(one_vm)),
        100.0 * (ten_vm.saturating_sub(one_vm)) as f64 / ten_vm.max(1) as f64
    );
    assert!(
        one_vm < ten_vm,
        "one VM per digest uses less memory ({one_vm} KiB) than one per policy ({ten_vm} KiB)"
    );
}
