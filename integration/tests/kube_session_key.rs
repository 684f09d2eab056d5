//! The OIDC session key in Kubernetes mode (security finding 6, Kubernetes half): the controller
//! never serves with the translator's public placeholder key. `portcullis::kubernetes::run`
//! against the fake API server of `kube_support` (kube's mock client), with a SecurityPolicy
//! `apps/sso` (OIDC) on the HTTPRoute of Gateway `infra/web`; the cookie key the OIDC filter gets
//! is read from the xDS the controller serves (an ADS client over mutual TLS with the fleet's own
//! client certificate, as the Gateway's Envoy would connect):
//! - an existing Secret's key is used: the filter's cookie secret is the one that key derives
//!   (not the placeholder's), the Secret is not rewritten, and no status says "Placeholder";
//! - a malformed Secret (key of the wrong length, or no `data.session-key`) stops start-up:
//!   `/readyz` answers 503 naming the Secret and what is wrong, nothing is watched, translated or
//!   written, and the Secret is not replaced; once fixed, the controller starts with that key;
//! - a missing Secret is created with 32 random bytes, and cookies derive from those.

mod kube_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use kube_support::{admin_get, applies, cluster, test_config, unb64, Running, CONTROLLER_NS};
use portcullis_translator::gatewayapi::security::{cookie_secret, PLACEHOLDER_SESSION_KEY};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(120);
const SESSION: &str = "portcullis-session";
const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn session_path() -> String {
    format!("/api/v1/namespaces/{CONTROLLER_NS}/secrets/{SESSION}")
}

fn session_secret(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": SESSION, "namespace": CONTROLLER_NS, "resourceVersion": "7"},
           "type": "Opaque", "data": data})
}

/// The `kube_support` cluster with an OIDC SecurityPolicy (and its client Secret) on the route
/// instead of the wasm EnvoyExtensionPolicy.
fn lists() -> BTreeMap<String, Vec<Value>> {
    // No Envoy runs here: the Gateway and echo ports are only numbers in the manifests.
    let mut lists = cluster(8080, 9, "http://127.0.0.1:9/unused.wasm", &"0".repeat(64));
    lists.insert(
        "/apis/gateway.envoyproxy.io/v1alpha1/envoyextensionpolicies".into(),
        vec![],
    );
    lists.insert(
        "/apis/gateway.envoyproxy.io/v1alpha1/securitypolicies".into(),
        vec![json!({
            "apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": "sso", "namespace": "apps", "uid": "sp-0001",
                         "generation": 1, "resourceVersion": "16"},
            "spec": {
                "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "app"}],
                "oidc": {"provider": {"issuer": "https://idp.example.com/realms/x"},
                         "clientID": "app", "clientSecret": {"name": "sso-client"},
                         "redirectURL": "https://app.example.com/oauth2/callback"}
            }
        })],
    );
    lists.insert(
        "/api/v1/secrets".into(),
        vec![json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "sso-client", "namespace": "apps", "resourceVersion": "17"},
                    "type": "Opaque", "data": {"client-secret": b64(b"s3cr3t")}})],
    );
    lists
}

struct Env {
    rt: tokio::runtime::Runtime,
    ctl: Running,
    xds_port: u16,
    admin_port: u16,
    _tmp: tempfile::TempDir,
}

fn start(seed: Vec<(String, Value)>) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,h2=warn,tower=warn,hyper=warn,kube=warn",
        ))
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    // The built-in OIDC module: the controller only stores and serves it (no Envoy loads it).
    let builtin = tmp.path().join("wasm");
    std::fs::create_dir_all(&builtin).expect("mkdir");
    std::fs::write(builtin.join("oidc.wasm"), b"\0asm\x01\0\0\0").expect("oidc.wasm");
    let mut cfg = test_config(
        "session-0",
        (0, 0, 0),
        &tmp.path().join("cache"),
        tmp.path(),
    );
    cfg.builtin_wasm_dir = Some(builtin);
    let ctl = Running::start(&rt, cfg, lists(), seed);
    Env {
        rt,
        xds_port: ctl.xds_port,
        admin_port: ctl.admin_port,
        ctl,
        _tmp: tmp,
    }
}

/// The resources (Listeners and RouteConfigurations, raw protobuf) the controller serves to the
/// node `infra/web`, fetched over mutual TLS with the fleet's client certificate Secret.
async fn served_config(xds_port: u16, fleet_secret: &Value) -> Result<Vec<Vec<u8>>, String> {
    let pem = |k: &str| unb64(&fleet_secret["data"][k], k);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem("ca.crt").as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pem("tls.crt").as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
    let key =
        PrivateKeyDer::from_pem_slice(pem("tls.key").as_bytes()).map_err(|e| e.to_string())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = Arc::new(tls);
    let connector = tower::service_fn(move |_: http::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", xds_port)).await?;
            let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let mut out = Vec::new();
    for type_url in [LISTENER_TYPE, ROUTE_TYPE] {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let req = DiscoveryRequest {
            node: Some(Node {
                id: "infra/web".into(),
                cluster: "portcullis".into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            ..Default::default()
        };
        tx.send(req).await.map_err(|e| e.to_string())?;
        let mut stream = client
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("ADS: {e}"))?
            .into_inner();
        let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .map_err(|_| format!("no {type_url} response within 5s"))?
            .map_err(|e| format!("ADS: {e}"))?
            .ok_or("ADS stream ended")?;
        out.extend(resp.resources.into_iter().map(|r| r.value));
        drop(tx);
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

impl Env {
    fn gone(&self) -> Option<String> {
        self.ctl.gone()
    }

    /// Wait until the xDS served to `infra/web` carries the OIDC filter's cookie secret, and
    /// return it (as one of `candidates`, which the config must name exactly one of).
    fn served_cookie_secret(&self, candidates: &[(&str, String)]) -> String {
        let api = &self.ctl.api;
        let fleet_secret = api.wait_for_unless(
            "the fleet's client certificate Secret",
            CONVERGE,
            || self.gone(),
            |reqs| {
                applies(reqs, "/api/v1/namespaces/infra/secrets/portcullis-web-xds")
                    .last()
                    .map(|r| r.body.clone())
            },
        );
        let start = Instant::now();
        loop {
            let last;
            match self
                .rt
                .block_on(served_config(self.xds_port, &fleet_secret))
            {
                Ok(resources) => {
                    let found: Vec<&(&str, String)> = candidates
                        .iter()
                        .filter(|(_, c)| resources.iter().any(|r| contains(r, c)))
                        .collect();
                    match found.as_slice() {
                        [(name, secret)] => {
                            eprintln!("served cookie secret derives from the {name} key");
                            return secret.clone();
                        }
                        [] => {
                            last = format!("{} resources, no known cookie secret", resources.len())
                        }
                        many => panic!("several cookie secrets served: {many:?}"),
                    }
                }
                Err(e) => last = e,
            }
            if let Some(why) = self.gone() {
                panic!("{why}");
            }
            assert!(
                start.elapsed() < CONVERGE,
                "no OIDC cookie secret in the served xDS: {last}\n{}",
                api.dump()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The SecurityPolicy's written status: must not report the placeholder key.
    fn assert_no_placeholder_status(&self) {
        let path =
            "/apis/gateway.envoyproxy.io/v1alpha1/namespaces/apps/securitypolicies/sso/status";
        let status = self.ctl.api.wait_for_unless(
            "the SecurityPolicy status",
            CONVERGE,
            || self.gone(),
            |reqs| applies(reqs, path).last().map(|r| r.body.clone()),
        );
        let text = status.to_string();
        assert!(
            !text.contains("Placeholder") && !text.contains("placeholder"),
            "{text}"
        );
        assert!(text.contains("\"Accepted\""), "{text}");
    }

    /// `/readyz` (503 and `null` while the admin endpoint is not up yet).
    fn readyz(&self) -> (u16, Value) {
        match admin_get(self.admin_port, "/readyz") {
            Ok((code, body)) => (code, serde_json::from_str(&body).unwrap_or(Value::Null)),
            Err(_) => (503, Value::Null),
        }
    }
}

fn candidates(key: &[u8; 32], name: &'static str) -> Vec<(&'static str, String)> {
    vec![
        (name, cookie_secret(key, "apps", "sso")),
        (
            "placeholder",
            cookie_secret(&PLACEHOLDER_SESSION_KEY, "apps", "sso"),
        ),
    ]
}

#[test]
fn an_existing_session_key_secret_is_what_cookies_derive_from() {
    let key = [0x5au8; 32];
    let mut env = start(vec![(
        session_path(),
        session_secret(json!({"session-key": b64(&key)})),
    )]);
    let served = env.served_cookie_secret(&candidates(&key, "Secret's"));
    assert_eq!(served, cookie_secret(&key, "apps", "sso"));
    env.assert_no_placeholder_status();
    let reqs = env.ctl.api.requests();
    assert!(
        !reqs
            .iter()
            .any(|r| r.method != "GET" && r.path.contains(SESSION)
                || r.method == "POST" && r.body["metadata"]["name"] == SESSION),
        "the existing Secret is neither replaced nor recreated\n{}",
        env.ctl.api.dump()
    );
    let rt = &env.rt;
    env.ctl.stop(rt);
}

#[test]
fn a_malformed_session_key_secret_stops_start_up_until_fixed() {
    for (what, data, want) in [
        (
            "wrong length",
            json!({"session-key": b64(b"short")}),
            "must be exactly 32 bytes, not 5",
        ),
        (
            "missing field",
            json!({"other": b64(&[1u8; 32])}),
            "no data.session-key",
        ),
    ] {
        let mut env = start(vec![(session_path(), session_secret(data))]);
        // /readyz names the Secret and the problem.
        let body = env.ctl.api.wait_for_unless(
            &format!("{what}: /readyz naming the Secret"),
            CONVERGE,
            || env.gone(),
            |_| {
                let (code, body) = env.readyz();
                (code == 503 && body["error"].as_str().is_some_and(|e| e.contains(want)))
                    .then_some(body)
            },
        );
        let err = body["error"].as_str().unwrap_or_default();
        assert!(
            err.contains(&format!("{CONTROLLER_NS}/{SESSION}")) && err.contains("session-key"),
            "{what}: {err}"
        );
        // It keeps retrying (a fix is picked up), and meanwhile does nothing else.
        env.ctl.api.wait_for_unless(
            &format!("{what}: the Secret read again"),
            CONVERGE,
            || env.gone(),
            |reqs| {
                (reqs
                    .iter()
                    .filter(|r| r.method == "GET" && r.path == session_path())
                    .count()
                    >= 3)
                    .then_some(())
            },
        );
        let reqs = env.ctl.api.requests();
        for r in &reqs {
            assert!(
                r.path
                    .starts_with(&format!("/api/v1/namespaces/{CONTROLLER_NS}/secrets")),
                "{what}: nothing but the controller's Secrets before the key loads: {}\n{}",
                r.line(),
                env.ctl.api.dump()
            );
            assert!(
                !(r.path.contains(SESSION) || r.body["metadata"]["name"] == SESSION)
                    || r.method == "GET",
                "{what}: the malformed Secret is not replaced: {}",
                r.line()
            );
        }
        let (code, status) = admin_get(env.admin_port, "/status").expect("/status");
        assert_eq!(code, 200);
        let status: Value = serde_json::from_str(&status).expect("status JSON");
        assert_eq!(status["translations"], 0, "{what}: nothing translated");

        // Fixed by hand: the controller starts, with the key put there.
        let key = [0x33u8; 32];
        env.ctl.api.put(
            &session_path(),
            session_secret(json!({"session-key": b64(&key)})),
        );
        let served = env.served_cookie_secret(&candidates(&key, "fixed Secret's"));
        assert_eq!(served, cookie_secret(&key, "apps", "sso"), "{what}");
        let (code, body) = env.readyz();
        assert!(body["error"].is_null(), "{what}: {code} {body}");
        let rt = &env.rt;
        env.ctl.stop(rt);
    }
}

#[test]
fn a_missing_session_key_secret_is_created_with_a_random_key() {
    let mut env = start(vec![]);
    let created = env.ctl.api.wait_for_unless(
        "the session key Secret to be created",
        CONVERGE,
        || env.gone(),
        |reqs| {
            reqs.iter()
                .find(|r| {
                    r.method == "POST"
                        && r.path == format!("/api/v1/namespaces/{CONTROLLER_NS}/secrets")
                        && r.body["metadata"]["name"] == SESSION
                        && r.answered == Some(201)
                })
                .map(|r| r.body.clone())
        },
    );
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(created["data"]["session-key"].as_str().unwrap_or_default())
        .expect("base64")
        .try_into()
        .expect("32 bytes");
    assert_ne!(key, PLACEHOLDER_SESSION_KEY, "random, not the placeholder");
    assert!(
        key.iter().collect::<std::collections::BTreeSet<_>>().len() > 8,
        "random: {key:?}"
    );
    let served = env.served_cookie_secret(&candidates(&key, "created Secret's"));
    assert_eq!(served, cookie_secret(&key, "apps", "sso"));
    env.assert_no_placeholder_status();
    let rt = &env.rt;
    env.ctl.stop(rt);
}
