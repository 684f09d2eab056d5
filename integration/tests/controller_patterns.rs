//! The seed patterns in `examples/patterns/` work under `portcullis run` with real Envoy 1.40,
//! all at once (one folder, four Gateways, four Envoys): HTTPS redirect, TLS termination with
//! SNI, two hostnames, canary by header and weight, prefix rewrite. Ports are swapped for free
//! ones and every backend for its own named upstream, so each answer says who served it.

use portcullis_integration::controller::{conditions_of, Controller, KeepAlive, CONVERGE};
use portcullis_integration::process::workspace_root;
use std::collections::BTreeMap;
use std::net::SocketAddr;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-e2e");

/// Upstreams answering `{"server": NAME, "path": PATH}`, one per backend name.
struct Upstreams {
    ports: BTreeMap<&'static str, u16>,
    _rt: tokio::runtime::Runtime,
}

impl Upstreams {
    fn start(names: &[&'static str]) -> Upstreams {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let mut ports = BTreeMap::new();
        for &name in names {
            let app = axum::Router::new().fallback(move |uri: axum::http::Uri| async move {
                axum::Json(serde_json::json!({"server": name, "path": uri.path()}))
            });
            let l = rt
                .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
                .expect("bind");
            let port = l.local_addr().expect("upstream addr").port();
            rt.spawn(async move { axum::serve(l, app).await });
            ports.insert(name, port);
        }
        Upstreams { ports, _rt: rt }
    }
}

/// Point each backend (by metadata.name) at its own upstream. The listener ports stay: Envoy
/// binds them on port 0 (`Controller::gateway_port`).
fn rewrite(yaml: &str, backends: &BTreeMap<&str, u16>) -> String {
    let mut docs = Vec::new();
    for doc in yaml.split("\n---\n") {
        let mut d = doc.to_string();
        let name = serde_yaml::from_str::<serde_yaml::Value>(&d)
            .ok()
            .and_then(|v| v["metadata"]["name"].as_str().map(String::from))
            .unwrap_or_default();
        if let Some(port) = backends.get(name.as_str()) {
            d = d.replace("18080", &port.to_string());
        }
        docs.push(d);
    }
    docs.join("\n---\n")
}

fn body(r: &portcullis_integration::controller::RawResponse) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_default()
}

fn get(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<portcullis_integration::controller::RawResponse, String> {
    KeepAlive::connect(port)
        .and_then(|mut k| k.get(host, path, headers))
        .map_err(|e| e.to_string())
}

#[test]
fn seed_patterns_work_under_portcullis_run() {
    let up = Upstreams::start(&["app", "blog", "shop", "stable", "canary", "legacy"]);
    let backends: BTreeMap<&str, u16> = [
        ("app", up.ports["app"]),
        ("blog", up.ports["blog"]),
        ("shop", up.ports["shop"]),
        ("app-stable-1", up.ports["stable"]),
        ("app-canary-1", up.ports["canary"]),
        ("legacy", up.ports["legacy"]),
    ]
    .into();
    let mut builder = Controller::builder(BIN);
    for f in [
        "https-gateway.yaml",
        "two-hostnames.yaml",
        "canary.yaml",
        "rewrite.yaml",
    ] {
        let text = std::fs::read_to_string(workspace_root().join("examples/patterns").join(f))
            .expect("pattern");
        builder = builder.manifest(f, rewrite(&text, &backends));
    }
    let mut c = builder.start().expect("controller");

    let doc = c
        .wait_status("four Envoys in sync", |d| {
            let gen = d["xds"]["generation"].as_u64().unwrap_or(0);
            let nodes = d["xds"]["nodes"].as_object().ok_or("no nodes")?;
            let synced = nodes
                .values()
                .filter(|n| n["syncedGeneration"].as_u64() == Some(gen))
                .count();
            if synced == 4 {
                Ok(d.clone())
            } else {
                Err(format!("{synced}/4 synced: {}", d["envoys"]))
            }
        })
        .expect("synced");
    assert_eq!(
        doc["loadErrors"].as_array().map(Vec::len),
        Some(0),
        "{}",
        doc["loadErrors"]
    );
    for r in doc["resources"].as_array().into_iter().flatten() {
        for (s, reason, msg) in conditions_of(&r["status"], "Accepted")
            .into_iter()
            .chain(conditions_of(&r["status"], "ResolvedRefs"))
        {
            assert_eq!(s, "True", "{} {}: {reason} {msg}", r["kind"], r["metadata"]);
        }
    }

    let mut port = |node: &str, gateway_port: u16| {
        c.gateway_port(node, gateway_port)
            .unwrap_or_else(|e| panic!("{node} listener {gateway_port}: {e}"))
    };
    let (http, https, hosts, canary, rewrite_port) = (
        port("gateway/edge", 10081),
        port("gateway/edge", 10443),
        port("default/hosts", 10082),
        port("default/canary", 10083),
        port("default/rewrite", 10084),
    );

    // HTTP listener: everything redirects to https on the HTTPS listener's port (the Gateway's
    // 10443; this Envoy bound it elsewhere).
    c.process()
        .wait_until("redirect", CONVERGE, || {
            let r = get(http, "app.example.test", "/x?q=1", &[])?;
            let want = "https://app.example.test:10443/x?q=1";
            if r.status == 301 && r.header("location") == Some(want) {
                Ok(())
            } else {
                Err(format!("{} {:?}", r.status, r.header("location")))
            }
        })
        .expect("redirect");

    // HTTPS with SNI: the wildcard listener serves app.example.test; other names get no TLS.
    let https_addr: SocketAddr = format!("127.0.0.1:{https}").parse().expect("addr");
    let tls = |host: &str| {
        reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .resolve(host, https_addr)
            .build()
            .expect("client")
            .get(format!("https://{host}:{https}/tls"))
            .send()
    };
    c.process()
        .wait_until("HTTPS app.example.test", CONVERGE, || {
            let r = tls("app.example.test").map_err(|e| e.to_string())?;
            let v: serde_json::Value = r.json().map_err(|e| e.to_string())?;
            if v["server"] == "app" && v["path"] == "/tls" {
                Ok(())
            } else {
                Err(v.to_string())
            }
        })
        .expect("https");
    assert!(
        tls("other.invalid").is_err(),
        "no certificate for a name outside *.example.test"
    );

    // Two hostnames, two backends; an unknown host is a 404.
    c.process()
        .wait_until("two hostnames", CONVERGE, || {
            let blog = body(&get(hosts, "blog.example.test", "/", &[])?);
            let shop = body(&get(hosts, "shop.example.test", "/", &[])?);
            if blog["server"] == "blog" && shop["server"] == "shop" {
                Ok(())
            } else {
                Err(format!("{blog} {shop}"))
            }
        })
        .expect("hosts");
    assert_eq!(
        get(hosts, "nope.example.test", "/", &[])
            .expect("unknown host")
            .status,
        404
    );

    // Canary: the header always wins; otherwise a 90/10 split.
    c.process()
        .wait_until("canary by header", CONVERGE, || {
            let r = body(&get(
                canary,
                "example.test",
                "/",
                &[("x-canary", "always")],
            )?);
            if r["server"] == "canary" {
                Ok(())
            } else {
                Err(r.to_string())
            }
        })
        .expect("canary header");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut conn = KeepAlive::connect(canary).expect("connect");
    for _ in 0..300 {
        let r = body(&conn.get("example.test", "/", &[]).expect("split request"));
        *seen
            .entry(r["server"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let (stable, canary_hits) = (
        seen.get("stable").copied().unwrap_or(0),
        seen.get("canary").copied().unwrap_or(0),
    );
    assert!(
        canary_hits > 0 && stable > canary_hits * 3,
        "90/10 split, got {seen:?}"
    );

    // Prefix rewrite: the legacy backend sees the path without /app.
    let r = body(&get(rewrite_port, "example.test", "/app/hello", &[]).expect("rewrite"));
    assert_eq!(
        (r["server"].as_str(), r["path"].as_str()),
        (Some("legacy"), Some("/hello"))
    );
}
