//! The bridge the runtime uses: a provider snapshot (objects as the watch delivers them) ->
//! `Snapshot::to_yaml` -> the translator's `parse_values` / `translate` -> its statuses ->
//! `StatusRecord` -> the status writer's server-side apply requests (kube's mock client).

mod common;

use k8s_openapi::jiff::Timestamp;
use portcullis_kube::snapshot::relevant;
use portcullis_kube::{LeaderState, Snapshot, StatusRecord, StatusWriter};
use portcullis_translator::wasm::source::OfflineResolver;
use portcullis_translator::{parse_values, translate, Resources, TranslateOptions};
use serde_json::{json, Value};

const OURS: &str = "portcullis.dev/gatewayclass-controller";

/// Objects shaped like list/watch results: server-set metadata, empty statuses.
fn cluster() -> Vec<Value> {
    let meta = |ns: Option<&str>, name: &str| {
        let mut m = json!({"name": name, "uid": format!("uid-{name}"), "generation": 2, "resourceVersion": "77",
                           "creationTimestamp": "2026-01-01T00:00:00Z"});
        if let Some(ns) = ns {
            m["namespace"] = json!(ns);
        }
        m
    };
    vec![
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": meta(None, "portcullis"),
               "spec": {"controllerName": OURS}, "status": {}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": meta(None, "eg"),
               "spec": {"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": meta(Some("infra"), "web"),
               "spec": {"gatewayClassName": "portcullis",
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "Same"}}}]},
               "status": {}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": meta(Some("infra"), "app"),
               "spec": {"parentRefs": [{"name": "web"}], "hostnames": ["app.example.com"],
                        "rules": [{"backendRefs": [{"name": "app", "port": 8080}]}]},
               "status": {"parents": []}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(Some("infra"), "app"),
               "spec": {"ports": [{"port": 8080, "protocol": "TCP"}], "selector": {"app": "app"}, "clusterIP": "10.96.0.9", "type": "ClusterIP"}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {
                   "name": "app-x1", "namespace": "infra", "labels": {"kubernetes.io/service-name": "app"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true}}],
               "ports": [{"port": 8080, "protocol": "TCP"}]}),
        json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyExtensionPolicy", "metadata": meta(Some("infra"), "ua"),
               "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "app"}],
                        "wasm": [{"name": "ua-block", "code": {"type": "HTTP", "http": {
                            "url": "https://wasm.example.com/ua_block.wasm",
                            "sha256": "0000000000000000000000000000000000000000000000000000000000000000"}}}]}}),
    ]
}

#[tokio::test]
async fn snapshot_translates_and_its_statuses_are_applied() {
    let snap = relevant(&Snapshot::from_objects(cluster()), OURS);
    // As the controller reads it: the JSON objects, no YAML round trip.
    let (parsed, errors) = parse_values("kubernetes", snap.to_values());
    assert!(errors.is_empty(), "{errors:?}");
    let out = translate(
        &Resources::from_parsed(parsed),
        &TranslateOptions::default(),
        &OfflineResolver,
    );
    let records: Vec<StatusRecord> = out
        .statuses
        .iter()
        .map(|s| StatusRecord::from_serializable(s).expect("same serde shape"))
        .collect();
    let kinds: Vec<String> = records
        .iter()
        .map(|r| format!("{} {}", r.kind, r.metadata.name))
        .collect();
    for want in [
        "GatewayClass portcullis",
        "Gateway web",
        "HTTPRoute app",
        "EnvoyExtensionPolicy ua",
    ] {
        assert!(
            kinds.contains(&want.to_string()),
            "{want} missing from {kinds:?}"
        );
    }
    assert!(
        !kinds.contains(&"GatewayClass eg".to_string()),
        "other classes are not ours"
    );

    let (client, mut server) = common::client();
    let n = records.len();
    let mut writer = StatusWriter::new(client, OURS, LeaderState::always());
    let now: Timestamp = "2026-05-01T12:00:00Z".parse().expect("ts");
    let task = tokio::spawn(async move { writer.write(&records, &snap, now).await });
    let mut paths = Vec::new();
    for _ in 0..n {
        let got = server.next().await;
        assert_eq!(got.method, http::Method::PATCH);
        assert!(got.path.ends_with("/status"), "{}", got.path);
        // Every condition we write carries the object's generation.
        let text = got.body["status"].to_string();
        assert!(text.contains("\"type\""), "{text}");
        assert!(
            !text.contains("\"observedGeneration\":1") && text.contains("\"observedGeneration\":2"),
            "{text}"
        );
        if got.path.contains("/httproutes/") {
            let parents = got.body["status"]["parents"].as_array().expect("parents");
            assert_eq!(parents.len(), 1);
            assert_eq!(
                parents[0]["controllerName"], OURS,
                "the writer's merge keys on this"
            );
            assert_eq!(parents[0]["parentRef"]["name"], "web");
        }
        paths.push(got.path.clone());
        got.ok(json!({}));
    }
    let report = task.await.expect("join");
    assert_eq!(report.written.len(), n, "{report:?}");
    assert!(paths.contains(
        &"/apis/gateway.networking.k8s.io/v1/namespaces/infra/httproutes/app/status".to_string()
    ));
    assert!(paths.contains(
        &"/apis/gateway.networking.k8s.io/v1/gatewayclasses/portcullis/status".to_string()
    ));
}
