//! Wasm delivery under `portcullis run` with real Envoy 1.40: the controller fetches an HTTP
//! code source, checks its sha256, caches it and serves it to Envoy pinned by sha256. While the
//! URL is unreachable, only the targeted routes are affected (failOpen false: error; failOpen
//! true: unfiltered); once it comes back, the retry re-drives translation with no restart.
//!
//! Dynamic modules (`EnvoyProxy.spec.dynamicModules` `Remote`) take the same path: fetched,
//! verified and served by the controller (`/dynamic/<sha256>.so`), loaded by Envoy with
//! `nack_on_cache_miss`. A wrong sha256 is rejected, the last good configuration keeps serving
//! and the policy status says why.

use portcullis_integration::controller::{
    conditions_of, resource, Controller, KeepAlive, RawResponse, CONVERGE,
};
use portcullis_integration::echo::EchoServer;
use portcullis_integration::wasm::module;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-e2e");
const NODE: &str = "default/gw";
/// The Gateway's listener port; Envoy binds it on port 0 (`Controller::gateway_port`).
const GW_PORT: u16 = 8080;
const BAD_UA: &str = "BadBot/1.0";

/// An HTTP origin for the module that can be switched off (answers 503) and on.
struct Origin {
    port: u16,
    up: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl Origin {
    fn start(wasm: Vec<u8>) -> Origin {
        Self::serve("/ua_block.wasm", wasm, false)
    }

    /// Serves `body` at `path`; `up` says whether it answers 200 (else 503) from the start.
    fn serve(path: &str, wasm: Vec<u8>, up: bool) -> Origin {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let up = Arc::new(AtomicBool::new(up));
        let hits = Arc::new(AtomicUsize::new(0));
        let (u, h) = (up.clone(), hits.clone());
        let app = axum::Router::new().route(
            path,
            axum::routing::get(move || {
                let (u, h, wasm) = (u.clone(), h.clone(), wasm.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    if u.load(Ordering::SeqCst) {
                        (axum::http::StatusCode::OK, wasm)
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            b"down".to_vec(),
                        )
                    }
                }
            }),
        );
        // Port 0: the kernel picks a free port and the listener is kept (no bind race).
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .expect("bind origin");
        let port = listener.local_addr().expect("origin addr").port();
        rt.spawn(async move { axum::serve(listener, app).await });
        Origin {
            port,
            up,
            hits,
            _rt: rt,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ua_block.wasm", self.port)
    }
}

fn manifests(gw_port: u16, echo_port: u16, url: &str, sha: &str) -> String {
    let route = |name: &str, prefix: &str| {
        format!(
            r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: echo}}]
"#
        )
    };
    let policy = |name: &str, target: &str, fail_open: bool| {
        format!(
            r#"---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {target}}}]
  wasm:
  - name: ua-block
    rootID: ua_block
    code:
      type: HTTP
      http: {{url: "{url}", sha256: "{sha}"}}
    failOpen: {fail_open}
    config:
      deny: {{contains: ["BadBot"]}}
      status: 403
"#
        )
    };
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
  endpoints: [{{ip: {{address: 127.0.0.1, port: {echo_port}}}}}]
{}{}{}{}{}"#,
        route("closed", "/closed"),
        route("open", "/open"),
        route("plain", "/plain"),
        policy("closed-policy", "closed", false),
        policy("open-policy", "open", true),
    )
}

fn get(port: u16, path: &str, ua: &str) -> Result<RawResponse, String> {
    KeepAlive::connect(port)
        .and_then(|mut k| k.get("example.com", path, &[("user-agent", ua)]))
        .map_err(|e| e.to_string())
}

/// Wait until every `(path, user agent, expected status)` holds.
fn wait_statuses(c: &mut Controller, port: u16, what: &str, expect: &[(&str, &str, u16)]) {
    c.process()
        .wait_until(what, CONVERGE, || {
            for (path, ua, want) in expect {
                let r = get(port, path, ua)?;
                if r.status != *want {
                    return Err(format!(
                        "{path} as {ua}: HTTP {} (want {want}) {}",
                        r.status, r.body
                    ));
                }
            }
            Ok(())
        })
        .expect(what);
}

#[test]
fn unreachable_wasm_url_is_isolated_and_recovers_without_restart() {
    let wasm = std::fs::read(module("ua_block").expect("ua_block.wasm (make build-wasm)"))
        .expect("read module");
    let sha = hex::encode(Sha256::digest(&wasm));
    let origin = Origin::start(wasm);
    let echo = EchoServer::start().expect("echo");
    let mut c = Controller::builder(BIN)
        .manifest(
            "all.yaml",
            manifests(GW_PORT, echo.port(), &origin.url(), &sha),
        )
        .args([
            "--wasm-retry-initial-ms",
            "200",
            "--wasm-retry-max-ms",
            "1000",
        ])
        .start()
        .expect("controller");
    let gw_port = c.gateway_port(NODE, GW_PORT).expect("listener bound");

    // Origin down: the policy says which URL failed and how; only its routes are affected.
    let url = origin.url();
    let doc = c
        .wait_status("policy reports the failed fetch", |d| {
            let p = resource(d, "EnvoyExtensionPolicy", Some("default"), "closed-policy")
                .ok_or("no policy status")?;
            let acc = conditions_of(&p["status"], "Accepted");
            if acc
                .iter()
                .any(|(s, _, m)| s == "False" && m.contains(&url) && m.contains("503"))
            {
                Ok(d.clone())
            } else {
                Err(format!("{acc:?}"))
            }
        })
        .expect("failed fetch reported");
    assert!(
        doc["wasm"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["state"] == "failed"),
        "{}",
        doc["wasm"]
    );
    c.wait_synced(NODE).expect("synced");
    wait_statuses(
        &mut c,
        gw_port,
        "fail-closed route errors, fail-open route passes, neighbour works",
        &[
            ("/plain", BAD_UA, 200),
            ("/open", BAD_UA, 200),
            ("/open", "curl/8", 200),
        ],
    );
    let closed = get(gw_port, "/closed", "curl/8").expect("closed route answers");
    assert!(
        closed.status >= 500,
        "failOpen false answers an error while the module is missing, got {}",
        closed.status
    );
    let envoy_pid = c.envoy_pids();

    // Origin back: a retry fetches it and re-drives translation; the filter now runs.
    origin.up.store(true, Ordering::SeqCst);
    wait_statuses(
        &mut c,
        gw_port,
        "filter active on both policy routes after recovery",
        &[
            ("/closed", BAD_UA, 403),
            ("/closed", "curl/8", 200),
            ("/open", BAD_UA, 403),
            ("/plain", BAD_UA, 200),
        ],
    );
    let doc = c.status().expect("status");
    let p = resource(
        &doc,
        "EnvoyExtensionPolicy",
        Some("default"),
        "closed-policy",
    )
    .expect("policy");
    assert!(
        conditions_of(&p["status"], "Accepted")
            .iter()
            .all(|(s, _, _)| s == "True"),
        "{p}"
    );
    let module = doc["wasm"]
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_default();
    assert_eq!(module["state"], "ready");
    assert_eq!(module["sha256"], sha.as_str());
    assert!(
        c.cache_dir().join(format!("{sha}.wasm")).is_file(),
        "module cached on disk by digest"
    );

    // Envoy loaded it from the controller, not the origin: the origin saw only the controller's
    // fetches (one per attempt), and Envoy was never restarted.
    let attempts = module["attempts"].as_u64().unwrap_or(0) as usize;
    assert_eq!(
        origin.hits.load(Ordering::SeqCst),
        attempts,
        "every origin hit is a controller fetch attempt"
    );
    assert_eq!(c.envoy_pids(), envoy_pid, "no Envoy restart");

    // The serving endpoint hands out exactly the cached bytes, by digest only.
    let served =
        reqwest::blocking::get(format!("http://127.0.0.1:{}/wasm/{sha}.wasm", c.wasm_port))
            .expect("wasm endpoint");
    assert_eq!(served.status(), 200);
    assert_eq!(
        hex::encode(Sha256::digest(served.bytes().expect("body"))),
        sha
    );
    let bad = reqwest::blocking::get(format!(
        "http://127.0.0.1:{}/wasm/..%2f..%2fetc%2fpasswd",
        c.wasm_port
    ))
    .expect("wasm endpoint");
    assert_eq!(bad.status(), 404);
}

/// Gateway, echo backend, an EnvoyProxy registering the Remote module `portcullis` (`url`,
/// `sha`) through the GatewayClass, and an EnvoyExtensionPolicy running its `ua_block` filter
/// with `deny` on route `/guarded` (route `/plain` has none); no policy when `deny` is None.
fn dynamic_manifests(
    gw_port: u16,
    echo_port: u16,
    url: &str,
    sha: &str,
    deny: Option<&str>,
) -> String {
    let policy = match deny {
        Some(deny) => format!(
            r#"---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {{name: ua-block, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: guarded}}]
  dynamicModule:
  - name: portcullis
    filterName: ua_block
    config:
      deny: {{contains: ["{deny}"]}}
      status: 403
"#
        ),
        None => String::new(),
    };
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec:
  controllerName: portcullis.dev/gatewayclass-controller
  parametersRef: {{group: gateway.envoyproxy.io, kind: EnvoyProxy, namespace: default, name: modules}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata: {{name: modules, namespace: default}}
spec:
  dynamicModules:
  - name: portcullis
    source:
      type: Remote
      remote: {{url: "{url}", sha256: "{sha}"}}
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
  endpoints: [{{ip: {{address: 127.0.0.1, port: {echo_port}}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: guarded, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /guarded}}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: echo}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: plain, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /plain}}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: echo}}]
{policy}"#
    )
}

#[test]
fn remote_dynamic_module_is_served_by_the_controller_and_a_wrong_sha_keeps_the_last_good_config() {
    let lib = std::fs::read(
        portcullis_integration::wasm::dynamic_library()
            .expect("libportcullis.so (make build-dynamic)"),
    )
    .expect("read library");
    let sha = hex::encode(Sha256::digest(&lib));
    let origin = Origin::serve("/libportcullis.so", lib, true);
    let url = format!("http://127.0.0.1:{}/libportcullis.so", origin.port);
    let echo = EchoServer::start().expect("echo");
    let mut c = Controller::builder(BIN)
        .manifest(
            "all.yaml",
            dynamic_manifests(GW_PORT, echo.port(), &url, &sha, None),
        )
        .start()
        .expect("controller");
    let gw_port = c.gateway_port(NODE, GW_PORT).expect("listener bound");
    wait_statuses(
        &mut c,
        gw_port,
        "gateway serving",
        &[("/guarded", BAD_UA, 200)],
    );
    c.wait_synced(NODE).expect("synced");

    // The policy arrives while Envoy runs: Envoy rejects the listener (module not cached,
    // background fetch), the controller sends it again, and the filter runs.
    c.write_manifest(
        "all.yaml",
        &dynamic_manifests(GW_PORT, echo.port(), &url, &sha, Some("BadBot")),
    )
    .expect("edit");
    wait_statuses(
        &mut c,
        gw_port,
        "dynamic ua_block active on /guarded only",
        &[
            ("/guarded", BAD_UA, 403),
            ("/guarded", "curl/8", 200),
            ("/plain", BAD_UA, 200),
        ],
    );
    c.wait_synced(NODE).expect("synced");
    // Envoy may have loaded it before the controller's own fetch re-drove translation.
    c.wait_status("policy accepted once the module is fetched", |d| {
        let p = resource(d, "EnvoyExtensionPolicy", Some("default"), "ua-block")
            .ok_or("no policy status")?;
        let acc = conditions_of(&p["status"], "Accepted");
        if !acc.is_empty() && acc.iter().all(|(s, _, _)| s == "True") {
            Ok(())
        } else {
            Err(format!("{acc:?}"))
        }
    })
    .expect("accepted");
    assert!(
        c.cache_dir().join(format!("{sha}.wasm")).is_file(),
        "module cached on disk by digest"
    );
    let served =
        reqwest::blocking::get(format!("http://127.0.0.1:{}/dynamic/{sha}.so", c.wasm_port))
            .expect("module endpoint");
    assert_eq!(served.status(), 200);
    assert_eq!(
        hex::encode(Sha256::digest(served.bytes().expect("body"))),
        sha
    );
    let fetched_by_controller = origin.hits.load(Ordering::SeqCst);
    assert_eq!(
        fetched_by_controller, 1,
        "Envoy fetched from the controller, not the origin"
    );

    // A wrong sha256, with a new deny list in the same edit: the fetch fails verification, the
    // policy says so, Envoy rejects the update, and the last good filter (BadBot) keeps serving.
    let wrong = "0".repeat(64);
    c.write_manifest(
        "all.yaml",
        &dynamic_manifests(GW_PORT, echo.port(), &url, &wrong, Some("EvilBot")),
    )
    .expect("edit");
    c.wait_status("policy reports the sha256 mismatch", |d| {
        let p = resource(d, "EnvoyExtensionPolicy", Some("default"), "ua-block")
            .ok_or("no policy status")?;
        let acc = conditions_of(&p["status"], "Accepted");
        if acc
            .iter()
            .any(|(s, _, m)| s == "False" && m.contains("sha256 mismatch") && m.contains(&wrong))
        {
            Ok(())
        } else {
            Err(format!("{acc:?}"))
        }
    })
    .expect("mismatch reported");
    let xds_url = c.admin_url("/status/xds");
    c.process()
        .wait_until("Envoy rejects the update", CONVERGE, || {
            let x: serde_json::Value = reqwest::blocking::get(&xds_url)
                .and_then(|r| r.json())
                .map_err(|e| e.to_string())?;
            let nack = x["nodes"][NODE]["types"]["Listener"]["nack"]["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if nack.contains(&wrong) || nack.contains("background fetch") {
                eprintln!("listener NACK: {nack}");
                Ok(())
            } else {
                Err(format!("no listener NACK yet: {x}"))
            }
        })
        .expect("NACK");
    for _ in 0..3 {
        assert_eq!(
            get(gw_port, "/guarded", BAD_UA).expect("get").status,
            403,
            "last good filter"
        );
        assert_eq!(
            get(gw_port, "/guarded", "EvilBot/2").expect("get").status,
            200,
            "new config not applied"
        );
        assert_eq!(get(gw_port, "/plain", BAD_UA).expect("get").status, 200);
    }

    // The right sha256 again: the new deny list applies.
    c.write_manifest(
        "all.yaml",
        &dynamic_manifests(GW_PORT, echo.port(), &url, &sha, Some("EvilBot")),
    )
    .expect("edit");
    wait_statuses(
        &mut c,
        gw_port,
        "fixed sha: new config applies",
        &[
            ("/guarded", "EvilBot/2", 403),
            ("/guarded", BAD_UA, 200),
            ("/plain", "EvilBot/2", 200),
        ],
    );
}
