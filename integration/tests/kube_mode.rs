//! Kubernetes mode end to end: `portcullis::kubernetes::run` in-process, with everything real
//! except the kube-apiserver. kube's mock client (`tower_test::mock::pair`) stands in for it: a
//! small in-test server (`kube_support`) answers every request generically (lists from fixtures,
//! watches held open, creates/replaces/applies stored and echoed) and records them. No admission,
//! no server-side-apply merging, no RBAC, and no watch events for the controller's own writes.
//!
//! Real: the provider (list + watch of every kind), leader election, the xDS CA and session key
//! Secrets, translation, the status and fleet writes, the mutual-TLS xDS and wasm endpoints, the
//! wasm fetch from an HTTP origin, and a real Envoy started from the bootstrap ConfigMap and
//! client-certificate Secret the controller applied for the Gateway's fleet. Only what cannot
//! run outside a pod is changed in that bootstrap: the certificate directory (the Secret's mount
//! point), and the admin/readiness ports (fixed in a pod, free ports here). The xDS address, SNI
//! and SAN matcher are used as applied: `--xds-service localhost` makes them name this process.
//!
//! Asserted:
//! - the Lease is created with our identity; the CA and session-key Secrets are created;
//! - status applies for the Gateway and the HTTPRoute carry Accepted/Programmed (resp. Accepted/
//!   ResolvedRefs) conditions with `observedGeneration`, the route's parent entry names our
//!   controller, and every status written validates against the CRD's status schema;
//! - the fleet (ServiceAccount, Secret, ConfigMap, Service, Deployment) is applied with an owner
//!   reference to the Gateway's uid;
//! - the real Envoy gets its config over mTLS xDS and fetches the wasm module over mTLS from the
//!   controller: an allowed User-Agent reaches the echo upstream, a denied one gets 403 from the
//!   ua-block filter;
//! - the wasm endpoint refuses a client without a certificate and one from another CA, and serves
//!   the module (right sha256) to the fleet's certificate;
//! - `/healthz` and `/readyz` (JSON naming every watch) answer 200 once synced;
//! - shutdown (with Envoy still connected) makes `run` return promptly, and the Lease is given up.

mod kube_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use kube_support::{
    admin_get, admin_get_unix, applies, bind_listeners, cluster, envoy_bootstrap, fleet_paths,
    free_local_ports, listener_port, replace_prefix, serve_origin, test_config, unb64, ApiServer,
    Crds, BAD_UA, CONTROLLER_NS, GOOD_UA, GW_GENERATION, GW_UID, OURS, ROUTE_GENERATION,
};
use portcullis::kubernetes::KubeRuntimeConfig;
use portcullis_integration::echo::{Echo, EchoServer};
use portcullis_integration::http::{client, get_with_ua};
use portcullis_integration::process::{envoy_bin, Process, ProcessBuilder};
use portcullis_integration::wasm;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const IDENTITY: &str = "portcullis-test-0";

/// Slow shared machines: everything waits generously.
const CONVERGE: Duration = Duration::from_secs(120);
/// How long `run` may take to return once shutdown is requested ("a few seconds", with slack
/// for a loaded machine).
const SHUTDOWN: Duration = Duration::from_secs(15);

fn condition<'a>(conds: &'a Value, ty: &str) -> Option<&'a Value> {
    conds
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

/// A blocking client that trusts only the controller's CA, optionally presenting a certificate.
fn mtls_client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM"));
    if let Some((cert, key)) = identity {
        b = b.identity(
            reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes())
                .expect("client identity PEM"),
        );
    }
    b.build().expect("TLS client")
}

fn envoy_log(envoy: &Option<Process>) -> String {
    envoy
        .as_ref()
        .map(|p| p.log_tail())
        .unwrap_or_else(|| "(Envoy not started)".into())
}

#[test]
fn kubernetes_mode_end_to_end_with_a_real_envoy() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,h2=warn,tower=warn,hyper=warn,kube=warn",
        ))
        .try_init();
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
    let origin_port = serve_origin(&rt, module.clone());
    let wasm_url = format!("http://127.0.0.1:{origin_port}/ua_block.wasm");
    // The Gateway's port; the fleet Envoy binds it on port 0 (`ephemeral_listener_ports`).
    let gw_port = 8080;
    let (listeners, (xds_port, wasm_port, admin_port)) = bind_listeners(&rt);
    let tmp = tempfile::tempdir().expect("temp dir");
    let cert_dir = tmp.path().join("certs");
    std::fs::create_dir_all(&cert_dir).expect("mkdir certs");

    // The fixtures are what a cluster with the real CRDs would accept.
    let lists = cluster(gw_port, echo.port(), &wasm_url, &sha);
    let crds = Crds::load();
    for obj in lists.values().flatten() {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        if api_version.starts_with("gateway.") {
            let problems = crds.check_object(obj);
            assert!(
                problems.is_empty(),
                "fixture {} {} fails its CRD: {problems:#?}",
                obj["kind"],
                obj["metadata"]["name"]
            );
        }
    }

    let cfg = KubeRuntimeConfig {
        ephemeral_listener_ports: true,
        ..test_config(
            IDENTITY,
            (xds_port, wasm_port, admin_port),
            &tmp.path().join("cache"),
            &cert_dir,
        )
    };

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // How `run` ended, should it end before the test stops it (e.g. a listener cannot bind).
    let ended_early: Arc<Mutex<Option<String>>> = Arc::default();
    let (api, controller) = rt.block_on(async {
        let (client, api) = ApiServer::start(lists);
        let ended = ended_early.clone();
        let controller = tokio::spawn(async move {
            let r = portcullis::kubernetes::run_on(cfg, listeners, client, async {
                let _ = stop_rx.await;
            })
            .await;
            *ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{r:?}"));
            r
        });
        (api, controller)
    });
    let gone = || {
        ended_early
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| format!("portcullis::kubernetes::run returned early: {r}"))
    };

    // --- Lease and Secrets in the controller's namespace.
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{CONTROLLER_NS}/leases");
    let lease = api.wait_for_unless("the Lease to be created", CONVERGE, gone, |reqs| {
        reqs.iter()
            .find(|r| r.method == "POST" && r.path == leases && r.answered == Some(201))
            .map(|r| r.body.clone())
    });
    assert_eq!(lease["metadata"]["name"], "portcullis-leader");
    assert_eq!(
        lease["spec"]["holderIdentity"], IDENTITY,
        "Lease held by cfg.identity"
    );
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
    let secrets = format!("/api/v1/namespaces/{CONTROLLER_NS}/secrets");
    let created_secret = |name: &'static str| {
        let secrets = secrets.clone();
        api.wait_for_unless(
            &format!("Secret {name} to be created"),
            CONVERGE,
            gone,
            move |reqs| {
                reqs.iter()
                    .find(|r| {
                        r.method == "POST"
                            && r.path == secrets
                            && r.body["metadata"]["name"] == name
                    })
                    .map(|r| r.body.clone())
            },
        )
    };
    let ca_secret = created_secret("portcullis-xds-ca");
    let ca_pem = unb64(&ca_secret["data"]["ca.crt"], "CA Secret ca.crt");
    assert!(ca_pem.contains("BEGIN CERTIFICATE"), "{ca_pem}");
    assert!(ca_secret["data"]["ca.key"].is_string(), "CA key stored");
    let session = created_secret("portcullis-session");
    let key = base64::engine::general_purpose::STANDARD
        .decode(session["data"]["session-key"].as_str().unwrap_or_default())
        .expect("session key base64");
    assert_eq!(key.len(), 32, "32-byte session key");

    // --- The fleet, applied with an owner reference to the Gateway.
    let fleet_paths = fleet_paths();
    let mut fleet: BTreeMap<&str, Value> = BTreeMap::new();
    for (kind, path) in &fleet_paths {
        let got = api.wait_for_unless(
            &format!("the fleet's {kind} apply"),
            CONVERGE,
            gone,
            |reqs| applies(reqs, path).last().map(|r| (*r).clone()),
        );
        assert_eq!(
            got.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{kind}: server-side apply"
        );
        assert!(
            got.query_has("fieldManager=portcullis.dev%2Fcontroller")
                && got.query_has("force=true"),
            "{kind}: {}",
            got.query
        );
        assert_eq!(got.body["kind"], *kind);
        assert_eq!(
            got.body["metadata"]["ownerReferences"],
            json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                    "name": "web", "uid": GW_UID, "controller": true}]),
            "{kind}: owned by the Gateway"
        );
        fleet.insert(kind, got.body);
    }
    let svc_ports: Vec<i64> = fleet["Service"]["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert_eq!(
        svc_ports,
        [i64::from(gw_port)],
        "the Gateway listener's port"
    );
    let fleet_secret = &fleet["Secret"];
    assert_eq!(fleet_secret["type"], "kubernetes.io/tls");
    let tls_crt = unb64(&fleet_secret["data"]["tls.crt"], "fleet tls.crt");
    let tls_key = unb64(&fleet_secret["data"]["tls.key"], "fleet tls.key");
    let fleet_ca = unb64(&fleet_secret["data"]["ca.crt"], "fleet ca.crt");
    assert_eq!(
        fleet_ca, ca_pem,
        "the fleet trusts the CA from the CA Secret"
    );

    // --- Statuses: written with observedGeneration, valid for the CRDs.
    let gw_status_path = "/apis/gateway.networking.k8s.io/v1/namespaces/infra/gateways/web/status";
    let gw_status = api.wait_for_unless(
        "a Gateway status with Accepted=True and Programmed",
        CONVERGE,
        gone,
        |reqs| {
            applies(reqs, gw_status_path)
                .last()
                .map(|r| r.body["status"].clone())
                .filter(|s| {
                    condition(&s["conditions"], "Accepted").is_some_and(|c| c["status"] == "True")
                        && condition(&s["conditions"], "Programmed").is_some()
                })
        },
    );
    for ty in ["Accepted", "Programmed"] {
        let c = condition(&gw_status["conditions"], ty).expect("condition");
        assert_eq!(
            c["observedGeneration"], GW_GENERATION,
            "Gateway {ty}: {gw_status:#}"
        );
        assert!(c["lastTransitionTime"].is_string(), "{c}");
    }
    // The fleet Service never shows up in this fake API server's watches, so the Gateway has no
    // address: Gateway API wants Programmed=False/AddressNotAssigned then, not True.
    let programmed = condition(&gw_status["conditions"], "Programmed").expect("Programmed");
    assert_eq!(
        (&programmed["status"], &programmed["reason"]),
        (&json!("False"), &json!("AddressNotAssigned")),
        "{gw_status:#}"
    );
    let listener = &gw_status["listeners"][0];
    assert_eq!(listener["name"], "http", "{gw_status:#}");
    assert_eq!(listener["attachedRoutes"], 1, "{gw_status:#}");

    let route_status_path =
        "/apis/gateway.networking.k8s.io/v1/namespaces/apps/httproutes/app/status";
    let route_status = api.wait_for_unless(
        "an HTTPRoute status with our parent Accepted and ResolvedRefs",
        CONVERGE,
        gone,
        |reqs| {
            applies(reqs, route_status_path)
                .last()
                .map(|r| r.body["status"].clone())
                .filter(|s| {
                    let c = &s["parents"][0]["conditions"];
                    condition(c, "Accepted").is_some_and(|c| c["status"] == "True")
                        && condition(c, "ResolvedRefs").is_some_and(|c| c["status"] == "True")
                })
        },
    );
    let parents = route_status["parents"].as_array().expect("parents");
    assert_eq!(parents.len(), 1, "{route_status:#}");
    assert_eq!(parents[0]["controllerName"], OURS);
    assert_eq!(parents[0]["parentRef"]["name"], "web");
    assert_eq!(parents[0]["parentRef"]["namespace"], "infra");
    for c in parents[0]["conditions"].as_array().expect("conditions") {
        assert_eq!(
            c["observedGeneration"], ROUTE_GENERATION,
            "route condition {c}"
        );
    }

    // --- The wasm endpoint: mutual TLS only.
    let serve_url = format!("https://localhost:{wasm_port}/wasm/{sha}.wasm");
    let fleet_client = mtls_client(&ca_pem, Some((&tls_crt, &tls_key)));
    let start = Instant::now();
    let served = loop {
        // The controller fetches the module from the origin in the background.
        match fleet_client.get(&serve_url).send() {
            Ok(r) if r.status() == 200 => break r.bytes().expect("module bytes"),
            other if start.elapsed() > CONVERGE => panic!(
                "the wasm endpoint never served {sha} to the fleet certificate: {other:?}\n{}",
                api.dump()
            ),
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    assert_eq!(
        hex::encode(Sha256::digest(&served)),
        sha,
        "served module matches its sha256"
    );
    let anonymous = mtls_client(&ca_pem, None);
    match anonymous.get(&serve_url).send() {
        Ok(r) => panic!(
            "a client without a certificate was served: HTTP {}",
            r.status()
        ),
        Err(e) => eprintln!("no client certificate: refused as expected ({e:?})"),
    }
    let foreign_ca =
        portcullis_kube::certs::CertAuthority::generate(time::OffsetDateTime::now_utc())
            .expect("another CA");
    let foreign = foreign_ca
        .issue_client(
            "infra",
            "web",
            time::OffsetDateTime::now_utc(),
            portcullis_kube::certs::LEAF_VALIDITY,
        )
        .expect("client cert from another CA");
    match mtls_client(&ca_pem, Some((&foreign.cert_pem, &foreign.key_pem)))
        .get(&serve_url)
        .send()
    {
        Ok(r) => panic!(
            "a certificate from another CA was served: HTTP {}",
            r.status()
        ),
        Err(e) => eprintln!("certificate from another CA: refused as expected ({e:?})"),
    }

    // --- Probes.
    let (code, body) = admin_get(admin_port, "/healthz").expect("/healthz");
    assert_eq!(code, 200, "/healthz: {body}");
    let start = Instant::now();
    let ready: Value = loop {
        match admin_get(admin_port, "/readyz") {
            Ok((200, body)) => break serde_json::from_str(&body).expect("/readyz JSON"),
            other if start.elapsed() > CONVERGE => panic!("/readyz never 200: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    let watches = ready["watches"].as_object().expect("watches in /readyz");
    assert_eq!(watches.len(), 15, "{ready:#}");
    for kind in [
        "GatewayClass",
        "Gateway",
        "HTTPRoute",
        "Service",
        "EndpointSlice",
        "EnvoyExtensionPolicy",
    ] {
        assert_eq!(watches.get(kind), Some(&json!(true)), "{kind}: {ready:#}");
    }
    assert_eq!(ready["leader"], true, "{ready:#}");
    assert_eq!(ready["translated"], true, "{ready:#}");

    // --- A real Envoy from the applied bootstrap and Secret.
    for (file, pem) in [
        ("tls.crt", &tls_crt),
        ("tls.key", &tls_key),
        ("ca.crt", &fleet_ca),
    ] {
        std::fs::write(cert_dir.join(file), pem).expect("write cert");
    }
    let boot = envoy_bootstrap(&fleet["ConfigMap"], &cert_dir, xds_port, xds_port);
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
    let envoy_admin = std::path::PathBuf::from(
        boot["admin"]["address"]["pipe"]["path"]
            .as_str()
            .expect("admin socket"),
    );
    let listener = format!("infra/web/{gw_port}");
    let start = Instant::now();
    let mut last;
    loop {
        if let Some(status) = envoy.as_mut().and_then(|p| p.try_status()) {
            panic!(
                "Envoy exited ({}) before serving\n{}\n{}",
                Process::describe_status(&status),
                envoy_log(&envoy),
                api.dump()
            );
        }
        let bound = listener_port(&envoy_admin, &listener);
        let url = format!("http://127.0.0.1:{}/hello", bound.clone().unwrap_or(0));
        let good = get_with_ua(&http, &url, Some(GOOD_UA));
        let bad = get_with_ua(&http, &url, Some(BAD_UA));
        match (good, bad) {
            (Ok(g), Ok(b)) if g.status() == 200 && b.status() == 403 => {
                let echo: Echo = g.json().expect("echo JSON");
                assert_eq!(echo.path, "/hello");
                assert_eq!(echo.header("user-agent"), Some(GOOD_UA));
                break;
            }
            (g, b) => {
                last = format!(
                    "listener {listener}: {bound:?}; allowed UA: {:?}, denied UA: {:?}",
                    g.map(|r| r.status()),
                    b.map(|r| r.status())
                );
            }
        }
        if start.elapsed() > CONVERGE {
            let status = admin_get(admin_port, "/status").map(|(_, b)| b);
            panic!(
                "Envoy never served the Gateway with the wasm filter (last: {last})\ncontroller /status: {status:?}\n{}\nEnvoy log:\n{}",
                api.dump(),
                envoy_log(&envoy)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // --- The admin is a unix socket (no TCP port a tenant's Backend could name); the readiness
    // listener reaches it through the bootstrap's pipe cluster, and so does a direct client.
    let socket = std::path::PathBuf::from(
        boot["admin"]["address"]["pipe"]["path"]
            .as_str()
            .expect("admin socket"),
    );
    let ready_port = listener_port(&socket, "portcullis_ready").expect("readiness port");
    let ready = http
        .get(format!("http://127.0.0.1:{ready_port}/ready"))
        .send()
        .expect("GET /ready");
    assert_eq!(ready.status(), 200, "/ready through the admin socket");
    assert_eq!(ready.text().expect("body").trim(), "LIVE");
    let (code, body) = admin_get_unix(&socket, "/ready").expect("admin over its socket");
    assert_eq!(
        (code, body.trim()),
        (200, "LIVE"),
        "Envoy's admin on its socket"
    );

    // --- A fleet certificate only opens its own Gateway's node: an Envoy presenting another
    // Gateway's (valid) client certificate while asking for infra/web's config is refused.
    let ca = portcullis_kube::certs::CertAuthority::from_pem(
        &ca_pem,
        &unb64(&ca_secret["data"]["ca.key"], "CA Secret ca.key"),
    )
    .expect("CA from its Secret");
    let other = ca
        .issue_client(
            "infra",
            "other",
            time::OffsetDateTime::now_utc(),
            portcullis_kube::certs::LEAF_VALIDITY,
        )
        .expect("client certificate for infra/other");
    // The module store is shared, but a fleet gets only the modules its own Gateway's
    // configuration references (security finding, Low): infra/other references none.
    let r = mtls_client(&ca_pem, Some((&other.cert_pem, &other.key_pem)))
        .get(&serve_url)
        .send()
        .expect("another Gateway's certificate completes the handshake");
    assert_eq!(r.status(), 403, "infra/other fetched infra/web's module");
    assert!(
        fleet_client
            .get(&serve_url)
            .send()
            .is_ok_and(|r| r.status() == 200),
        "the module's own fleet still gets it"
    );
    let other_dir = tmp.path().join("other-certs");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    for (file, pem) in [
        ("tls.crt", &other.cert_pem),
        ("tls.key", &other.key_pem),
        ("ca.crt", &ca_pem),
    ] {
        std::fs::write(other_dir.join(file), pem).expect("write cert");
    }
    let mut boot2 = boot.clone();
    let moved = replace_prefix(
        &mut boot2,
        &format!("{}/", cert_dir.display()),
        &format!("{}/", other_dir.display()),
    );
    assert_eq!(moved, 3);
    free_local_ports(&mut boot2, &other_dir);
    let boot2_path = tmp.path().join("bootstrap-other.json");
    std::fs::write(
        &boot2_path,
        serde_json::to_string_pretty(&boot2).expect("json"),
    )
    .expect("write bootstrap");
    let intruder = ProcessBuilder::new("envoy-other-cert", &envoy_path)
        .arg("-c")
        .arg(&boot2_path)
        .args(["--concurrency", "1", "-l", "info", "--disable-hot-restart"])
        .args(["--base-id", "7"])
        .spawn()
        .expect("start the second Envoy");
    let start = Instant::now();
    loop {
        let log = intruder.logs();
        // gRPC status 7 (PERMISSION_DENIED); Envoy logs the message percent-encoded.
        if log.contains("config stream to portcullis_xds closed: 7,") {
            assert!(
                log.contains("does%20not%20match%20the%20client%20certificate")
                    && log.contains("infra/other"),
                "{log}"
            );
            break;
        }
        assert!(
            start.elapsed() < CONVERGE,
            "the Envoy with infra/other's certificate was not refused infra/web's config\n{log}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(intruder);

    // --- Every status written validates against its CRD's status schema.
    let reqs = api.requests();
    let mut checked = 0;
    for r in reqs
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
    {
        let api_version = r.body["apiVersion"].as_str().unwrap_or_default();
        let kind = r.body["kind"].as_str().unwrap_or_default();
        let problems = crds.check_status(api_version, kind, &r.body["status"]);
        assert!(
            problems.is_empty(),
            "status written to {} fails the CRD schema: {problems:#?}\n{:#}",
            r.path,
            r.body
        );
        checked += 1;
    }
    assert!(checked >= 2, "statuses checked: {checked}");
    // Nothing the mock server refused (4xx/5xx other than the expected 404 lookups).
    for r in &reqs {
        if let Some(code) = r.answered {
            assert!(
                code < 400 || (code == 404 && r.method == "GET"),
                "request refused: {}\n{}",
                r.line(),
                api.dump()
            );
        }
    }

    // --- Shutdown, with Envoy still connected over xDS.
    let started = Instant::now();
    let _ = stop_tx.send(());
    let ended = rt.block_on(async { tokio::time::timeout(SHUTDOWN, controller).await });
    let took = started.elapsed();
    match ended {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => panic!("run returned an error: {e:#}"),
        Ok(Err(e)) => panic!("run panicked: {e}"),
        Err(_) => panic!(
            "run did not return within {SHUTDOWN:?} of shutdown\nEnvoy log:\n{}",
            envoy_log(&envoy)
        ),
    }
    // The elector gives the Lease up on stop, so another replica takes over at once.
    let lease_path = format!("{leases}/portcullis-leader");
    api.wait_for(
        "the Lease to be released",
        Duration::from_secs(30),
        |reqs| {
            reqs.iter()
                .rev()
                .find(|r| r.method == "PUT" && r.path == lease_path && r.answered == Some(200))
                .filter(|r| r.body["spec"]["holderIdentity"].is_null())
                .map(|_| ())
        },
    );
    eprintln!(
        "kube mode e2e: {} API requests, shutdown in {took:?}",
        api.requests().len()
    );
    drop(envoy.take());
    drop(echo);
}
