//! Kubernetes mode scoped with `--watch-namespace` (the chart's `watchNamespaces`), against the
//! fake API server of `kube_support` (kube's mock client): the controller must work with only
//! the chart's namespaced Roles, so
//! - no namespaced kind is ever listed or watched cluster-wide (every such request names one of
//!   the watched namespaces), and Namespace objects are read only by name (a `metadata.name`
//!   field selector, which RBAC `resourceNames` authorizes);
//! - nothing is read or written in any other namespace, and objects there are ignored: the
//!   fixtures put a Gateway of our class, an HTTPRoute attached to the watched Gateway and a
//!   Secret in namespace `other`, also served from the cluster-wide collections (a provider that
//!   listed those would see them); none gets a status or a fleet, and the watched Gateway counts
//!   only the route from a watched namespace;
//! - the fleet (with its NetworkPolicy, `--fleet-network-policy`) and the statuses are written
//!   as without the flag.
//!
//! No Envoy runs here (see `kube_mode` for the data path).

mod kube_support;

use std::collections::BTreeSet;
use std::time::Duration;

use kube_support::{
    admin_get, applies, cluster, test_config, with_namespaced_paths, Recorded, Running,
    CONTROLLER_NS,
};
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(120);

/// Plurals of every namespaced kind the controller touches.
const NAMESPACED: [&str; 17] = [
    "gateways",
    "httproutes",
    "referencegrants",
    "backendtlspolicies",
    "services",
    "endpointslices",
    "secrets",
    "configmaps",
    "envoyextensionpolicies",
    "securitypolicies",
    "backendtrafficpolicies",
    "backends",
    "envoyproxies",
    "leases",
    "deployments",
    "serviceaccounts",
    "networkpolicies",
];

/// `/api/v1/<plural>` or `/apis/<group>/<version>/<plural>`: a cluster-wide collection.
fn cluster_wide_plural(path: &str) -> Option<&str> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", _, plural] | ["apis", _, _, plural] => Some(plural),
        _ => None,
    }
}

/// The namespace in `.../namespaces/<ns>/...` (or the Namespace object `/api/v1/namespaces/<ns>`).
fn namespace_of(path: &str) -> Option<&str> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    segs.iter()
        .position(|s| *s == "namespaces")
        .and_then(|i| segs.get(i + 1).copied())
}

fn other_namespace_objects() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/apis/gateway.networking.k8s.io/v1/gateways",
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "edge", "namespace": "other", "uid": "gw-other",
                                "generation": 1, "resourceVersion": "21"},
                   "spec": {"gatewayClassName": "portcullis",
                            "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}}),
        ),
        (
            "/apis/gateway.networking.k8s.io/v1/httproutes",
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                   "metadata": {"name": "leak", "namespace": "other", "uid": "route-other",
                                "generation": 1, "resourceVersion": "22"},
                   "spec": {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                            "name": "web", "namespace": "infra", "sectionName": "http"}],
                            "rules": [{"backendRefs": [{"name": "app", "port": 8080}]}]}}),
        ),
        (
            "/api/v1/secrets",
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "not-yours", "namespace": "other", "resourceVersion": "23"},
                   "data": {"k": "dg=="}}),
        ),
        (
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "other", "uid": "ns-other", "resourceVersion": "5",
                                "labels": {"kubernetes.io/metadata.name": "other"}}}),
        ),
    ]
}

#[test]
fn watch_namespaces_never_list_cluster_wide_and_ignore_other_namespaces() {
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
    // No Envoy runs here: the Gateway and echo ports are only numbers in the manifests.
    let mut lists = cluster(
        8080,
        9,
        // Never fetched successfully: the wasm fetch failing is isolated to the policy.
        "http://127.0.0.1:9/ua_block.wasm",
        &"0".repeat(64),
    );
    for (path, obj) in other_namespace_objects() {
        lists.entry(path.to_string()).or_default().push(obj);
    }
    let lists = with_namespaced_paths(lists);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config("scoped-0", (0, 0, 0), &tmp.path().join("cache"), tmp.path());
    cfg.watch_namespaces = vec!["infra".into(), "apps".into()];
    cfg.fleet_network_policy = true;
    let mut ctl = Running::start(&rt, cfg, lists, vec![]);
    let admin = ctl.admin_port;
    let api = ctl.api.clone();
    let gone = || ctl.gone();

    // The fleet, its NetworkPolicy included, and the statuses are written as usual.
    let deployment = "/apis/apps/v1/namespaces/infra/deployments/portcullis-web";
    let netpol = "/apis/networking.k8s.io/v1/namespaces/infra/networkpolicies/portcullis-web";
    let gw_status = "/apis/gateway.networking.k8s.io/v1/namespaces/infra/gateways/web/status";
    let route_status = "/apis/gateway.networking.k8s.io/v1/namespaces/apps/httproutes/app/status";
    for path in [deployment, netpol, route_status] {
        api.wait_for_unless(&format!("PATCH {path}"), CONVERGE, gone, |reqs| {
            applies(reqs, path).last().map(|_| ())
        });
    }
    // The Gateway counts only the route in a watched namespace (the one in `other` is unseen).
    let gw = api.wait_for_unless("the Gateway's status", CONVERGE, gone, |reqs| {
        applies(reqs, gw_status)
            .last()
            .filter(|r| r.body["status"]["listeners"][0]["attachedRoutes"].is_number())
            .map(|r| r.body.clone())
    });
    assert_eq!(
        gw["status"]["listeners"][0]["attachedRoutes"], 1,
        "only apps/app attaches: {gw}"
    );
    let np = applies(&api.requests(), netpol)
        .last()
        .map(|r| r.body.clone())
        .expect("NetworkPolicy");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));

    // Readiness lists the watches per namespace.
    let (code, body) = api.wait_for_unless("/readyz 200", CONVERGE, gone, |_| {
        admin_get(admin, "/readyz").ok().filter(|(c, _)| *c == 200)
    });
    assert_eq!(code, 200);
    let ready: Value = serde_json::from_str(&body).expect("readyz JSON");
    let watches: BTreeSet<String> = ready["watches"]
        .as_object()
        .expect("watches")
        .keys()
        .cloned()
        .collect();
    for w in [
        "GatewayClass",
        "Gateway/infra",
        "Gateway/apps",
        "Secret/apps",
        "Namespace/infra",
    ] {
        assert!(watches.contains(w), "{w} in {watches:?}");
    }
    assert!(
        !watches.contains("Gateway") && !watches.contains("Secret"),
        "{watches:?}"
    );
    assert_eq!(watches.len(), 1 + 2 * 14, "{watches:?}");

    // Let later passes (resync, status retries) happen too before judging every request.
    std::thread::sleep(Duration::from_secs(2));
    let (code, status) = admin_get(admin, "/status").expect("/status");
    assert_eq!(code, 200);
    ctl.stop(&rt);
    let reqs: Vec<Recorded> = api.requests();
    let dump = api.dump();
    let allowed_ns = ["infra", "apps", CONTROLLER_NS];
    for r in &reqs {
        if let Some(plural) = cluster_wide_plural(&r.path) {
            assert!(
                !NAMESPACED.contains(&plural),
                "cluster-wide request for namespaced {plural}: {}\n{dump}",
                r.line()
            );
        }
        if r.path == "/api/v1/namespaces" {
            assert!(
                ["infra", "apps"]
                    .iter()
                    .any(|ns| r.query_has(&format!("fieldSelector=metadata.name%3D{ns}"))),
                "Namespaces read without a name: {}\n{dump}",
                r.line()
            );
        }
        if let Some(ns) = namespace_of(&r.path) {
            assert!(
                allowed_ns.contains(&ns),
                "request outside the watched and the controller's namespaces: {}\n{dump}",
                r.line()
            );
        }
        // The controller's own namespace: only its Secrets and its Lease.
        if namespace_of(&r.path) == Some(CONTROLLER_NS) && r.path != "/api/v1/namespaces" {
            assert!(
                r.path.contains("/secrets") || r.path.contains("/leases"),
                "{}",
                r.line()
            );
        }
        // Nothing is read back that the Roles do not grant (no GET of fleet objects).
        assert!(
            !(r.method == "GET"
                && (r.path.contains("/deployments") || r.path.contains("/serviceaccounts"))),
            "{}",
            r.line()
        );
    }
    // Both watched namespaces were listed and watched for every namespaced kind.
    for ns in ["infra", "apps"] {
        for plural in &NAMESPACED[..13] {
            assert!(
                reqs.iter().any(|r| r.method == "GET"
                    && r.path.ends_with(&format!("/namespaces/{ns}/{plural}"))
                    && r.is_watch()),
                "no watch of {plural} in {ns}\n{dump}"
            );
        }
    }
    assert!(
        !status.contains("not-yours")
            && !status.contains("\"leak\"")
            && !status.contains("\"edge\""),
        "objects of namespace other reached translation: {status}"
    );
    assert!(
        reqs.iter()
            .filter(|r| r.method == "PATCH" && r.path.contains("/gatewayclasses/"))
            .all(|r| r.body["spec"].is_null()),
        "GatewayClass: status only"
    );
}
