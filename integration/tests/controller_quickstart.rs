//! `examples/local` (what `make run` serves) under `portcullis run` with real Envoy 1.40:
//! ua-block applies to HTTPRoute `api` and not to its neighbour `web`, which gets the headers
//! filter instead, from the dynamic module (`EnvoyProxy` registry written as `make run` writes
//! it). Ports are swapped for free ones; dist/ is served by an in-test origin.

use portcullis_integration::controller::{Controller, KeepAlive, RawResponse, CONVERGE};
use portcullis_integration::echo::{Echo, EchoServer};
use portcullis_integration::process::workspace_root;
use portcullis_integration::wasm::{dynamic_library, module};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-e2e");
const GPTBOT: &str = "Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot)";

fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<RawResponse, String> {
    KeepAlive::connect(port)
        .and_then(|mut k| k.get("127.0.0.1", path, headers))
        .map_err(|e| e.to_string())
}

#[test]
fn quickstart_policies_apply_per_route() {
    // ua_block.wasm and libportcullis.so, served over HTTP like `make run` does with dist/.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ua = std::fs::read(module("ua_block").expect("module (make build-wasm)")).expect("read");
    let lib = std::fs::read(dynamic_library().expect("libportcullis.so (make build-dynamic)"))
        .expect("read");
    let lib_sha = hex::encode(Sha256::digest(&lib));
    let app = axum::Router::new()
        .route(
            "/wasm/ua_block.wasm",
            axum::routing::get(move || async move { ua }),
        )
        .route(
            "/dynamic/libportcullis.so",
            axum::routing::get(move || async move { lib }),
        );
    let l = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
        .expect("bind");
    let origin_port = l.local_addr().expect("origin addr").port();
    rt.spawn(async move { axum::serve(l, app).await });

    let echo = EchoServer::start().expect("echo");
    let mut b = Controller::builder(BIN);
    for f in [
        "gateway.yaml",
        "backend.yaml",
        "routes.yaml",
        "policies.yaml",
    ] {
        let text = std::fs::read_to_string(workspace_root().join("examples/local").join(f))
            .expect("example");
        // The Gateway keeps its 10080: Envoy binds it on port 0 (`Controller::gateway_port`).
        let text = text
            .replace("18081", &origin_port.to_string())
            .replace("18080", &echo.port().to_string());
        b = b.manifest(f, text);
    }
    // What scripts/quickstart.sh writes beside examples/local.
    b = b.manifest(
        "envoyproxy.yaml",
        quickstart_envoy_proxy(origin_port, &lib_sha),
    );
    let mut c = b.start().expect("controller");
    c.wait_status("both modules ready", |d| {
        let ready = d["wasm"]
            .as_array()
            .map(|a| a.iter().filter(|m| m["state"] == "ready").count())
            .unwrap_or(0);
        if ready == 2 {
            Ok(())
        } else {
            Err(d["wasm"].to_string())
        }
    })
    .expect("modules");
    c.wait_synced("default/quickstart").expect("synced");
    let gw_port = c
        .gateway_port("default/quickstart", 10080)
        .expect("listener bound");

    c.process()
        .wait_until("ua-block on /api only", CONVERGE, || {
            let api_bot = get(gw_port, "/api", &[("user-agent", GPTBOT)])?.status;
            let api_ok = get(gw_port, "/api", &[("user-agent", "Mozilla/5.0")])?.status;
            let web_bot = get(gw_port, "/", &[("user-agent", GPTBOT)])?.status;
            if (api_bot, api_ok, web_bot) == (403, 200, 200) {
                Ok(())
            } else {
                Err(format!("{api_bot} {api_ok} {web_bot}"))
            }
        })
        .expect("ua-block");

    // headers on `web`: request rewritten, response hardened.
    let r = get(
        gw_port,
        "/hello",
        &[
            ("user-agent", "Mozilla/5.0"),
            ("x-debug", "1"),
            ("x-internal-token", "s3cret"),
        ],
    )
    .expect("web");
    assert_eq!(r.status, 200);
    let seen: Echo = serde_json::from_str(&r.body).expect("echo");
    assert_eq!(seen.header("x-env"), Some("local"));
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header("x-internal-token"), None);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    // ...and not on `api`.
    let r = get(
        gw_port,
        "/api",
        &[("user-agent", "Mozilla/5.0"), ("x-debug", "1")],
    )
    .expect("api");
    let seen: Echo = serde_json::from_str(&r.body).expect("echo");
    assert_eq!(seen.header("x-debug"), Some("1"));
    assert_eq!(r.header("x-frame-options"), None);
}

/// The EnvoyProxy `scripts/quickstart.sh` writes (kept in step with it by
/// `quickstart_script_writes_the_same_envoy_proxy`).
fn quickstart_envoy_proxy(origin_port: u16, sha: &str) -> String {
    format!(
        r#"apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata:
  name: quickstart-modules
  namespace: default
spec:
  dynamicModules:
    - name: portcullis
      source:
        type: Remote
        remote:
          url: http://127.0.0.1:{origin_port}/dynamic/libportcullis.so
          sha256: {sha}
"#
    )
}

#[test]
fn quickstart_script_writes_the_same_envoy_proxy() {
    let script = std::fs::read_to_string(workspace_root().join("scripts/quickstart.sh"))
        .expect("quickstart.sh");
    let expected = quickstart_envoy_proxy(18081, "SHA")
        .replace("18081", "$WASM_ORIGIN_PORT")
        .replace("SHA", "$LIB_SHA");
    let body: String = script
        .lines()
        .skip_while(|l| !l.starts_with("apiVersion: gateway.envoyproxy.io/v1alpha1"))
        .take_while(|l| *l != "YAML")
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(body, expected);
}
