//! `examples/local` (what `make run` serves) under `portcullis run` with real Envoy 1.40:
//! ua-block applies to HTTPRoute `api` and not to its neighbour `web`, which gets the headers
//! filter instead. Ports are swapped for free ones; dist/wasm is served by an in-test origin.

use portcullis_integration::controller::{Controller, KeepAlive, RawResponse, CONVERGE};
use portcullis_integration::echo::{Echo, EchoServer};
use portcullis_integration::process::{free_port, workspace_root};
use portcullis_integration::wasm::module;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-e2e");
const GPTBOT: &str = "Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot)";

fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<RawResponse, String> {
    KeepAlive::connect(port)
        .and_then(|mut k| k.get("127.0.0.1", path, headers))
        .map_err(|e| e.to_string())
}

#[test]
fn quickstart_policies_apply_per_route() {
    // Both modules, served over HTTP like `make run` does with dist/wasm.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let origin_port = free_port().expect("port");
    let mut app = axum::Router::new();
    for name in ["ua_block", "headers"] {
        let bytes = std::fs::read(module(name).expect("module (make build-wasm)")).expect("read");
        app = app.route(
            &format!("/{name}.wasm"),
            axum::routing::get(move || async move { bytes }),
        );
    }
    let l = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", origin_port)))
        .expect("bind");
    rt.spawn(async move { axum::serve(l, app).await });

    let echo = EchoServer::start().expect("echo");
    let gw_port = free_port().expect("port");
    let mut b = Controller::builder(BIN);
    for f in [
        "gateway.yaml",
        "backend.yaml",
        "routes.yaml",
        "policies.yaml",
    ] {
        let text = std::fs::read_to_string(workspace_root().join("examples/local").join(f))
            .expect("example");
        let text = text
            .replace("10080", &gw_port.to_string())
            .replace("18081", &origin_port.to_string())
            .replace("18080", &echo.port().to_string());
        b = b.manifest(f, text);
    }
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
