//! End to end through a real Envoy (when one is available: `PORTCULLIS_ENVOY` or `.bin/envoy`)
//! with the real built-in modules from `dist/wasm`, configured exactly as translated:
//! - a BackendTrafficPolicy per-IP local limit lets exactly `requests` through across 2 workers
//!   and answers 429 after that;
//! - a SecurityPolicy oidc config is accepted by the oidc filter, which guards only its route.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_translator::wasm::source::{WasmCodeType, WasmResolution, WasmResolver, WasmSource};
use portcullis_translator::{
    parse_documents, render_output, translate, OutputFormat, Resources, TranslateOptions,
};
use serde_json::{json, Value};
use sha2::Digest;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn envoy_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PORTCULLIS_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let p = root().join(".bin/envoy");
    p.exists().then_some(p)
}

struct Ready(String);
impl WasmResolver for Ready {
    fn resolve(&self, _: &WasmSource) -> WasmResolution {
        WasmResolution::Ready {
            sha256: self.0.clone(),
            serve_url: "http://127.0.0.1:9/ratelimit.wasm".into(),
        }
    }
}

/// The Gateway's listener port; Envoy binds it on port 0 (`ephemeral_listener_ports`) and the
/// test reads the port it got from the admin.
const GW_PORT: u16 = 8080;

/// A loopback port bound but never listening: connections are refused, and nobody else can
/// take it while the socket lives.
fn closed_port() -> (socket2::Socket, u16) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let port = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .expect("bound port");
    (s, port)
}

/// A tiny upstream answering 200 to every request.
fn upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    port
}

fn get(port: u16) -> Option<u16> {
    request(port, "site.example.test", "").map(|(code, _)| code)
}

/// An admin GET: the head, a blank line and the body (de-chunked).
fn admin_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(out);
    }
    let (mut rest, mut plain) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return Some(format!("{head}\r\n\r\n{plain}"));
        }
        plain.push_str(after.get(..n)?);
        rest = after.get(n + 2..)?;
    }
}

/// One HTTP/1.1 request; the status code and the whole response text.
fn request(port: u16, host: &str, extra_headers: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET / HTTP/1.1\r\nhost: {host}\r\n{extra_headers}connection: close\r\n\r\n")
            .as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out))
}

/// Static bootstrap of one node: RDS inlined, EDS made STATIC, remote wasm code read locally.
fn bootstrap(node: &Value, wasm: &Path) -> Value {
    let strip = |mut v: Value| {
        if let Value::Object(o) = &mut v {
            o.remove("@type");
        }
        v
    };
    let empty = vec![];
    let routes = node["routes"].as_array().unwrap_or(&empty);
    let endpoints = node["endpoints"].as_array().unwrap_or(&empty);
    let mut listeners = Vec::new();
    for l in node["listeners"].as_array().unwrap_or(&empty) {
        let mut l = strip(l.clone());
        for fc in l["filter_chains"].as_array_mut().into_iter().flatten() {
            for f in fc["filters"].as_array_mut().into_iter().flatten() {
                let hcm = &mut f["typed_config"];
                let name = hcm["rds"]["route_config_name"].clone();
                let rc = routes.iter().find(|r| r["name"] == name).cloned();
                if let (Value::Object(o), Some(rc)) = (&mut *hcm, rc) {
                    o.remove("rds");
                    o.insert("route_config".into(), strip(rc));
                }
                for hf in hcm["http_filters"].as_array_mut().into_iter().flatten() {
                    // pointer_mut: indexing would insert keys into other filters' configs.
                    if let Some(code) = hf.pointer_mut("/typed_config/config/vm_config/code") {
                        *code = json!({ "local": { "filename": wasm.display().to_string() } });
                    }
                }
            }
        }
        listeners.push(l);
    }
    let mut clusters = Vec::new();
    for c in node["clusters"].as_array().unwrap_or(&empty) {
        let mut c = strip(c.clone());
        if c["type"] == "EDS" {
            let cla = endpoints
                .iter()
                .find(|e| e["cluster_name"] == c["name"])
                .cloned();
            if let (Value::Object(o), Some(cla)) = (&mut c, cla) {
                o.remove("eds_cluster_config");
                o.insert("type".into(), json!("STATIC"));
                o.insert("load_assignment".into(), strip(cla));
            }
        }
        clusters.push(c);
    }
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": { "listeners": listeners, "clusters": clusters }
    })
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Translates `yaml` with the built-in `module` (read from dist/wasm), writes a static
/// bootstrap for Gateway ns/gw and starts Envoy with 2 workers. `None` when Envoy or the module
/// is not here.
fn start(yaml: &str, module: &str) -> Option<(Kill, u16)> {
    let Some(envoy) = envoy_bin() else {
        eprintln!("skipping: no Envoy (set PORTCULLIS_ENVOY)");
        return None;
    };
    let wasm = root().join(format!("dist/wasm/{module}.wasm"));
    let Ok(bytes) = std::fs::read(&wasm) else {
        eprintln!("skipping: no dist/wasm/{module}.wasm (make build)");
        return None;
    };
    let sha = hex(&sha2::Sha256::digest(&bytes));
    let (res, errs) = parse_documents("e2e", yaml);
    assert!(errs.is_empty(), "{errs:?}");
    let mut opts = TranslateOptions {
        listener_address: "127.0.0.1".into(),
        ephemeral_listener_ports: true,
        session_secret: Some([3u8; 32]),
        // The upstream and the issuer run on loopback here.
        egress: portcullis_translator::egress::EgressPolicy::allowing(["127.0.0.0/8"
            .parse()
            .expect("cidr")]),
        ..TranslateOptions::default()
    };
    opts.builtin_modules.insert(
        module.into(),
        WasmSource {
            code_type: WasmCodeType::Http,
            url: format!("http://127.0.0.1:9/{module}.wasm"),
            sha256: Some(sha.clone()),
            pull_secret: None,
            pull_policy: None,
        },
    );
    let out = translate(&Resources::from_parsed(res), &opts, &Ready(sha));
    let doc: Value =
        serde_json::from_str(&render_output(&out, OutputFormat::Json)).expect("json output");
    let mut boot = bootstrap(&doc["xds"]["ns/gw"], &wasm);
    // The printed output redacts secrets; put the real plugin configs back.
    restore_configs(&mut boot, &out);
    let dir = std::env::temp_dir().join(format!("portcullis-e2e-{module}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("envoy.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&boot).expect("json")).expect("write");
    let admin_file = dir.join("admin-address");
    let _ = std::fs::remove_file(&admin_file);
    let envoy = Kill(
        Command::new(&envoy)
            .args([
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "--log-level",
                "warn",
                "--admin-address-path",
            ])
            .arg(&admin_file)
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start envoy"),
    );
    let port = bound_listener_port(&admin_file, &format!("ns/gw/{GW_PORT}"));
    Some((envoy, port))
}

/// The port Envoy bound for `listener`: its admin address from `admin_file`, then
/// `/listeners?format=json`.
fn bound_listener_port(admin_file: &Path, listener: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let admin = std::fs::read_to_string(admin_file).unwrap_or_default();
        let admin_port = admin
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok());
        if let Some(text) = admin_port.and_then(|p| admin_get(p, "/listeners?format=json")) {
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let doc: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let port = doc["listener_statuses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["name"] == listener)
                .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            if let Some(p) = port {
                return p;
            }
            last = body.to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("Envoy did not bind listener {listener}: {last}");
}

fn restore_configs(boot: &mut Value, out: &portcullis_translator::TranslateOutput) {
    let configs: std::collections::BTreeMap<String, String> = out
        .ir
        .gateways
        .values()
        .flat_map(|g| g.filters.iter())
        .filter_map(|f| match f {
            portcullis_translator::ir::FilterIr::Wasm(w) => {
                Some((w.name.clone(), w.configuration.clone()))
            }
            // This suite runs the wasm builds; the dynamic runtime has its own tests.
            portcullis_translator::ir::FilterIr::Lua(_)
            | portcullis_translator::ir::FilterIr::Dynamic(_) => None,
        })
        .collect();
    let listeners = boot
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut);
    for l in listeners.into_iter().flatten() {
        for fc in l["filter_chains"].as_array_mut().into_iter().flatten() {
            for f in fc["filters"].as_array_mut().into_iter().flatten() {
                let hfs = f
                    .pointer_mut("/typed_config/http_filters")
                    .and_then(Value::as_array_mut);
                for hf in hfs.into_iter().flatten() {
                    let name = hf["name"].as_str().unwrap_or_default().to_string();
                    if let (Some(cfg), Some(v)) = (
                        configs.get(&name),
                        hf.pointer_mut("/typed_config/config/configuration/value"),
                    ) {
                        *v = json!(cfg);
                    }
                }
            }
        }
    }
}

fn gateway_yaml(listen: u16, up: u16, policy: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: pc}}
spec: {{controllerName: portcullis.dev/gatewayclass-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: ns}}
spec:
  gatewayClassName: pc
  listeners: [{{name: http, port: {listen}, protocol: HTTP}}]
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: be, namespace: ns}}
spec: {{endpoints: [{{ip: {{address: 127.0.0.1, port: {up}}}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: ns}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [site.example.test]
  rules: [{{backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: be}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: open, namespace: ns}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [open.example.test]
  rules: [{{backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: be}}]}}]
---
{policy}
"#
    )
}

fn first_answer(port: u16, host: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = request(port, host, "") {
            return r;
        }
        assert!(Instant::now() < deadline, "envoy did not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn btp_per_ip_local_limit_is_exact_through_envoy() {
    let up = upstream();
    let policy = r#"apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: per-ip, namespace: ns}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  rateLimit:
    local:
      rules:
      - clientSelectors: [{sourceCIDR: {type: Distinct, value: 0.0.0.0/0}}]
        limit: {requests: 5, unit: Minute}"#;
    let Some((_envoy, listen)) = start(&gateway_yaml(GW_PORT, up, policy), "ratelimit") else {
        return;
    };
    // The first answer (200 or 429) already counts against the bucket.
    let mut codes = vec![first_answer(listen, "site.example.test").0];
    // Parallel clients over both workers.
    let handles: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || (0..3).filter_map(|_| get(listen)).collect::<Vec<_>>()))
        .collect();
    for h in handles {
        codes.extend(h.join().expect("client"));
    }
    let ok = codes.iter().filter(|c| **c == 200).count();
    let limited = codes.iter().filter(|c| **c == 429).count();
    assert_eq!((ok, limited), (5, codes.len() - 5), "codes: {codes:?}");
    // The route without a policy is not limited.
    for _ in 0..8 {
        assert_eq!(
            request(listen, "open.example.test", "").map(|r| r.0),
            Some(200)
        );
    }
}

/// The oidc filter loads with the translated config: with the provider unreachable, the
/// protected route answers 503 (discovery pending), never a redirect to nowhere; the
/// neighbouring route is untouched.
#[test]
fn securitypolicy_oidc_filter_loads_and_protects_only_its_route() {
    let up = upstream();
    let (_closed, idp) = closed_port(); // connections refused
    let policy = format!(
        r#"apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: sp, namespace: ns}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}}]
  oidc:
    provider: {{issuer: "http://127.0.0.1:{idp}/realms/x"}}
    clientID: app
    clientSecret: {{name: app-oidc}}
    redirectURL: "http://site.example.test/oauth2/callback"
---
apiVersion: v1
kind: Secret
metadata: {{name: app-oidc, namespace: ns}}
stringData: {{client-secret: s3cret}}"#
    );
    let Some((_envoy, listen)) = start(&gateway_yaml(GW_PORT, up, &policy), "oidc") else {
        return;
    };
    assert_eq!(first_answer(listen, "open.example.test").0, 200);
    let (code, text) =
        request(listen, "site.example.test", "accept: text/html\r\n").expect("answer");
    assert_eq!(code, 503, "{text}");
    assert!(!text.to_ascii_lowercase().contains("location:"), "{text}");
    // The filter's own answer, naming the translated issuer.
    assert!(
        text.contains("discovery pending") && text.contains(&format!("127.0.0.1:{idp}")),
        "{text}"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
