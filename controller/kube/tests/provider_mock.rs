//! The provider against kube's mock client: which kinds it lists and watches, relevance, and
//! that a burst of 1,000 watch events becomes a few snapshots, not 1,000.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use portcullis_kube::provider::{Provider, ProviderConfig, WATCHED_KINDS};
use serde_json::{json, Value};

const OURS: &str = "portcullis.dev/gatewayclass-controller";
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";

fn expected_paths() -> BTreeSet<String> {
    [
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses",
        "/apis/gateway.networking.k8s.io/v1/gateways",
        ROUTES,
        "/apis/gateway.networking.k8s.io/v1/referencegrants",
        "/apis/gateway.networking.k8s.io/v1/backendtlspolicies",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/secrets",
        "/api/v1/configmaps",
        "/api/v1/namespaces",
        "/apis/gateway.envoyproxy.io/v1alpha1/envoyextensionpolicies",
        "/apis/gateway.envoyproxy.io/v1alpha1/securitypolicies",
        "/apis/gateway.envoyproxy.io/v1alpha1/backendtrafficpolicies",
        "/apis/gateway.envoyproxy.io/v1alpha1/backends",
        "/apis/gateway.envoyproxy.io/v1alpha1/envoyproxies",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn list_for(path: &str) -> Value {
    let items = match path {
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses" => json!([
            {"metadata": {"name": "pc", "resourceVersion": "1"}, "spec": {"controllerName": OURS}},
            {"metadata": {"name": "eg", "resourceVersion": "1"}, "spec": {"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"}}
        ]),
        "/apis/gateway.networking.k8s.io/v1/gateways" => json!([
            {"metadata": {"name": "web", "namespace": "infra", "resourceVersion": "1"},
             "spec": {"gatewayClassName": "pc", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}},
            {"metadata": {"name": "other", "namespace": "infra", "resourceVersion": "1"},
             "spec": {"gatewayClassName": "eg", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}
        ]),
        // A field unknown to every binding, and an unknown enum value: carried, not fatal.
        "/apis/gateway.envoyproxy.io/v1alpha1/envoyextensionpolicies" => json!([
            {"metadata": {"name": "ua", "namespace": "infra", "resourceVersion": "1"},
             "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web"}],
                      "wasm": [{"name": "ua", "code": {"type": "FutureType"}}], "futureField": 1}}
        ]),
        _ => json!([]),
    };
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items})
}

fn route_events(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        // Every tenth route belongs to the other controller's Gateway.
        let parent = if i % 10 == 0 { "other" } else { "web" };
        let ev = json!({"type": "ADDED", "object": {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": format!("r{i:04}"), "namespace": "apps", "resourceVersion": format!("{}", i + 2)},
            "spec": {"parentRefs": [{"name": parent, "namespace": "infra"}]}}});
        out.extend(serde_json::to_vec(&ev).expect("json"));
        out.push(b'\n');
    }
    out
}

#[tokio::test]
async fn watches_every_kind_and_batches_a_burst_of_1000_events() {
    let (client, mut server) = common::client();
    let cfg = ProviderConfig {
        controller_name: OURS.into(),
        debounce: Duration::from_millis(150),
        max_delay: Duration::from_secs(3),
        namespaces: Vec::new(),
    };
    let mut handle = Provider::new(client, cfg).start();
    assert_eq!(WATCHED_KINDS.len(), 15);

    let (mut lists, mut watches) = (BTreeSet::new(), BTreeSet::new());
    let mut pending = Vec::new();
    let mut route_watch = None;
    while lists.len() < 15 || watches.len() < 15 {
        let got = server.next().await;
        assert_eq!(got.method, http::Method::GET);
        if got.query_has("watch=true") {
            assert!(
                watches.insert(got.path.clone()),
                "second watch on {} before the burst",
                got.path
            );
            assert!(
                got.query.contains("resourceVersion=1"),
                "{}: watch resumes from the list",
                got.query
            );
            if got.path == ROUTES {
                route_watch = Some(got);
            } else {
                pending.push(got); // an open watch with nothing to say
            }
        } else {
            assert!(lists.insert(got.path.clone()), "listed {} twice", got.path);
            let body = list_for(&got.path);
            got.ok(body);
        }
    }
    assert_eq!(lists, expected_paths(), "lists exactly the 14 kinds");
    assert_eq!(watches, expected_paths(), "watches exactly the 14 kinds");

    // First the snapshot of the initial lists ...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.health.snapshots_emitted() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no initial snapshot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handle.snapshots.borrow().of_kind("HTTPRoute").count(), 0);
    assert!(handle.snapshots.borrow().of_kind("Gateway").count() == 1);
    // ... then the burst, on the open HTTPRoute watch.
    route_watch
        .expect("HTTPRoute watch")
        .respond_raw(200, route_events(1000));

    // The route stream ends after the burst: the watcher re-watches; keep that open too.
    let rewatch = server.next().await;
    assert_eq!(rewatch.path, ROUTES);
    assert!(rewatch.query_has("watch=true"));
    pending.push(rewatch);

    // Wait for the burst to land in a snapshot.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let routes = handle.snapshots.borrow().of_kind("HTTPRoute").count();
        if routes == 900 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "burst never reached a snapshot ({routes} routes)"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), handle.snapshots.changed()).await;
    }
    // Let any trailing batch out, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(handle.health.all_synced());
    assert_eq!(handle.health.events_seen(), 1000);
    let emitted = handle.health.snapshots_emitted();
    // One for the initial lists, one or two for the burst (max_delay may cut it once).
    assert!(
        (2..=3).contains(&emitted),
        "1,000 events gave {} snapshots",
        emitted - 1
    );

    let snap = handle.snapshots.borrow().clone();
    let names: BTreeSet<String> = snap.iter().map(|(k, _)| k.to_string()).collect();
    assert!(names.contains("GatewayClass pc") && !names.contains("GatewayClass eg"));
    assert!(names.contains("Gateway infra/web") && !names.contains("Gateway infra/other"));
    assert!(
        !names.contains("HTTPRoute apps/r0000"),
        "route of another controller's Gateway"
    );
    assert!(names.contains("HTTPRoute apps/r0001"));
    let eep = snap
        .of_kind("EnvoyExtensionPolicy")
        .next()
        .expect("policy kept");
    assert_eq!(eep["apiVersion"], "gateway.envoyproxy.io/v1alpha1");
    assert_eq!(eep["spec"]["futureField"], 1, "unknown fields carried");
    assert_eq!(eep["spec"]["wasm"][0]["code"]["type"], "FutureType");
    let gwc = snap.of_kind("GatewayClass").next().expect("class");
    assert_eq!(
        gwc["apiVersion"], "gateway.networking.k8s.io/v1",
        "apiVersion/kind set on list items"
    );
    drop(pending);
}

#[tokio::test]
async fn kinds_whose_crd_is_missing_do_not_block_snapshots() {
    let (client, mut server) = common::client();
    let cfg = ProviderConfig {
        controller_name: OURS.into(),
        debounce: Duration::from_millis(50),
        max_delay: Duration::from_secs(1),
        namespaces: Vec::new(),
    };
    let handle = Provider::new(client, cfg).start();
    let eg = "/apis/gateway.envoyproxy.io/";
    let mut pending = Vec::new();
    let mut refused = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.health.snapshots_emitted() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot while EG CRDs are missing"
        );
        let Some(got) = server.try_next(50).await else {
            continue;
        };
        if got.path.starts_with(eg) && !got.query_has("watch=true") && !refused.contains(&got.path)
        {
            refused.insert(got.path.clone());
            got.status(404, "NotFound");
        } else if got.query_has("watch=true") || refused.contains(&got.path) {
            pending.push(got); // open watch, or a retried list of a missing kind
        } else {
            let body = list_for(&got.path);
            got.ok(body);
        }
    }
    assert_eq!(refused.len(), 5);
    assert!(handle.health.all_synced());
    let (ready, body) =
        portcullis_kube::readiness(&handle.health, &portcullis_kube::LeaderState::follower());
    assert!(ready, "{body}");
    assert_eq!(body["leader"], false);
    assert_eq!(body["watches"].as_object().map(|m| m.len()), Some(15));
    let absent: Vec<String> = handle.health.absent().into_iter().collect();
    assert_eq!(
        absent,
        [
            "Backend",
            "BackendTrafficPolicy",
            "EnvoyExtensionPolicy",
            "EnvoyProxy",
            "SecurityPolicy"
        ]
    );
    let snap = handle.snapshots.borrow().clone();
    assert_eq!(snap.of_kind("Gateway").count(), 1);
    drop(pending);
}

/// The collections the provider lists and watches when scoped to `namespaces`: GatewayClass
/// cluster-wide, every namespaced kind once per namespace, Namespace cluster-wide but by name.
fn scoped_paths(namespaces: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::from([
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses".to_string(),
        "/api/v1/namespaces".to_string(),
    ]);
    for ns in namespaces {
        for (prefix, plural) in [
            ("/apis/gateway.networking.k8s.io/v1", "gateways"),
            ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
            ("/apis/gateway.networking.k8s.io/v1", "referencegrants"),
            ("/apis/gateway.networking.k8s.io/v1", "backendtlspolicies"),
            ("/api/v1", "services"),
            ("/apis/discovery.k8s.io/v1", "endpointslices"),
            ("/api/v1", "secrets"),
            ("/api/v1", "configmaps"),
            (
                "/apis/gateway.envoyproxy.io/v1alpha1",
                "envoyextensionpolicies",
            ),
            ("/apis/gateway.envoyproxy.io/v1alpha1", "securitypolicies"),
            (
                "/apis/gateway.envoyproxy.io/v1alpha1",
                "backendtrafficpolicies",
            ),
            ("/apis/gateway.envoyproxy.io/v1alpha1", "backends"),
            ("/apis/gateway.envoyproxy.io/v1alpha1", "envoyproxies"),
        ] {
            out.insert(format!("{prefix}/namespaces/{ns}/{plural}"));
        }
    }
    out
}

#[tokio::test]
async fn scoped_to_namespaces_nothing_namespaced_is_listed_cluster_wide() {
    let (client, mut server) = common::client();
    let cfg = ProviderConfig {
        controller_name: OURS.into(),
        debounce: Duration::from_millis(50),
        max_delay: Duration::from_secs(1),
        // Duplicates are watched once.
        namespaces: vec!["infra".into(), "apps".into(), "infra".into()],
    };
    let handle = Provider::new(client, cfg).start();
    let want = scoped_paths(&["infra", "apps"]);
    // 1 + 2 x 13 namespaced kinds + 2 Namespace watches (one per name).
    let (mut lists, mut watches) = (Vec::new(), Vec::new());
    let mut pending = Vec::new();
    while lists.len() < 29 || watches.len() < 29 {
        let got = server.next().await;
        assert_eq!(got.method, http::Method::GET);
        assert!(
            want.contains(&got.path),
            "{} {}: not one of the scoped collections",
            got.path,
            got.query
        );
        let entry = (got.path.clone(), got.query_has("watch=true"));
        if got.path == "/api/v1/namespaces" {
            // Read by name only: RBAC resourceNames can authorize exactly this.
            let by_name = ["infra", "apps"]
                .iter()
                .any(|ns| got.query_has(&format!("fieldSelector=metadata.name%3D{ns}")));
            assert!(
                by_name,
                "Namespace read without a name selector: {}",
                got.query
            );
        }
        if entry.1 {
            watches.push(entry);
            pending.push(got);
            continue;
        }
        lists.push(entry);
        let items = match got.path.as_str() {
            "/apis/gateway.networking.k8s.io/v1/gatewayclasses" => json!([
                {"metadata": {"name": "pc", "resourceVersion": "1"}, "spec": {"controllerName": OURS}}
            ]),
            "/apis/gateway.networking.k8s.io/v1/namespaces/infra/gateways" => json!([
                {"metadata": {"name": "web", "namespace": "infra", "resourceVersion": "1"},
                 "spec": {"gatewayClassName": "pc", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}
            ]),
            "/api/v1/namespaces" => {
                let ns = if got.query.contains("infra") {
                    "infra"
                } else {
                    "apps"
                };
                json!([{"metadata": {"name": ns, "resourceVersion": "1",
                                     "labels": {"kubernetes.io/metadata.name": ns}}}])
            }
            _ => json!([]),
        };
        got.ok(json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}));
    }
    let listed: BTreeSet<String> = lists.iter().map(|(p, _)| p.clone()).collect();
    let watched: BTreeSet<String> = watches.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(listed, want, "lists exactly the scoped collections");
    assert_eq!(watched, want, "watches exactly the scoped collections");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.health.snapshots_emitted() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no snapshot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kinds = handle.health.kinds();
    assert_eq!(kinds.len(), 29, "{kinds:?}");
    assert!(kinds.contains_key("GatewayClass") && kinds.contains_key("Secret/apps"));
    let snap = handle.snapshots.borrow().clone();
    let names: BTreeSet<String> = snap.iter().map(|(k, _)| k.to_string()).collect();
    assert!(names.contains("Gateway infra/web"), "{names:?}");
    assert!(names.contains("Namespace infra") && names.contains("Namespace apps"));
    drop(pending);
}
