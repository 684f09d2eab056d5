//! The Envoy fleet per Gateway against kube's mock client: the exact server-side-apply requests.

mod common;

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use portcullis_kube::certs::CertAuthority;
use portcullis_kube::infra::{self, InfraConfig, InfraReconciler};
use portcullis_kube::{LeaderState, Snapshot, StatusRecord};
use portcullis_translator::ir::Protocol;
use portcullis_translator::GatewayInfra;
use serde_json::{json, Value};

fn ts(s: &str) -> Timestamp {
    s.parse().expect("ts")
}

fn ca() -> Arc<CertAuthority> {
    Arc::new(CertAuthority::generate(time::OffsetDateTime::now_utc()).expect("ca"))
}

fn class() -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "portcullis"},
           "spec": {"controllerName": "portcullis.dev/gatewayclass-controller",
                    "parametersRef": {"group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": "proxy", "namespace": "portcullis-system"}}})
}

fn gateway() -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "web", "namespace": "infra", "uid": "1111-2222", "generation": 1},
           "spec": {"gatewayClassName": "portcullis",
                    "infrastructure": {"labels": {"team": "edge"}, "annotations": {"example.com/owner": "edge"}},
                    "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"},
                                  {"name": "https", "port": 443, "protocol": "HTTPS"},
                                  {"name": "https-b", "port": 443, "protocol": "HTTPS", "hostname": "b.example.com"}]}})
}

fn envoy_proxy() -> Value {
    json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyProxy",
           "metadata": {"name": "proxy", "namespace": "portcullis-system"},
           "spec": {"provider": {"type": "Kubernetes", "kubernetes": {
                        "envoyDeployment": {"replicas": 3,
                                            "container": {"image": "example.com/envoy:1.40.1",
                                                          "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}}},
                                            "pod": {"nodeSelector": {"pool": "edge"}}},
                        "envoyService": {"type": "NodePort", "annotations": {"io.cilium/lb-ipam-ips": "10.0.0.10"}}}},
                    "logging": {"level": {"default": "debug"}},
                    "telemetry": {"accessLog": {"disable": true}}}})
}

/// The translator's view of [`gateway`]: its programmed listeners, one per distinct port.
fn programmed() -> Vec<GatewayInfra> {
    vec![GatewayInfra {
        namespace: "infra".into(),
        name: "web".into(),
        node_id: "infra/web".into(),
        listeners: vec![(80, Protocol::Http), (443, Protocol::Https)],
    }]
}

fn assert_apply(got: &common::Got, path: &str) {
    assert_eq!(got.method, http::Method::PATCH, "{path}");
    assert_eq!(got.path, path);
    assert_eq!(
        got.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert!(
        got.query_has("fieldManager=portcullis.dev%2Fcontroller"),
        "{}",
        got.query
    );
    assert!(got.query_has("force=true"));
    let owners = got.body["metadata"]["ownerReferences"]
        .as_array()
        .expect("ownerReferences");
    assert_eq!(owners.len(), 1, "{path}");
    assert_eq!(
        owners[0],
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "web", "uid": "1111-2222", "controller": true})
    );
    assert_eq!(got.body["metadata"]["namespace"], "infra");
    assert_eq!(
        got.body["metadata"]["labels"]["team"], "edge",
        "infrastructure labels on every object"
    );
    assert_eq!(
        got.body["metadata"]["labels"]["portcullis.dev/fleet"],
        "portcullis-web"
    );
}

/// Serve one full fleet apply, echoing bodies; returns the bodies by kind.
async fn serve_fleet(server: &mut common::MockServer) -> Vec<Value> {
    let paths = [
        "/api/v1/namespaces/infra/serviceaccounts/portcullis-web",
        "/api/v1/namespaces/infra/secrets/portcullis-web-xds",
        "/api/v1/namespaces/infra/configmaps/portcullis-web",
        "/api/v1/namespaces/infra/services/portcullis-web",
        "/apis/apps/v1/namespaces/infra/deployments/portcullis-web",
    ];
    let mut bodies = Vec::new();
    for path in paths {
        let got = server.next().await;
        assert_apply(&got, path);
        let body = got.body.clone();
        got.ok(body.clone());
        bodies.push(body);
    }
    bodies
}

fn snapshot(extra: Vec<Value>) -> Snapshot {
    let mut objs = vec![class(), gateway(), envoy_proxy()];
    objs.extend(extra);
    Snapshot::from_objects(objs)
}

#[tokio::test]
async fn a_gateway_gets_its_fleet_with_owner_references_and_envoyproxy_params() {
    let (client, mut server) = common::client();
    let mut rec = InfraReconciler::new(client, InfraConfig::default(), LeaderState::always(), ca());
    let snap = snapshot(vec![]);
    let now = ts("2026-05-01T12:00:00Z");
    let task = tokio::spawn(async move {
        let r = rec.reconcile(&snap, &programmed(), now).await;
        (rec, snap, r)
    });
    let bodies = serve_fleet(&mut server).await;
    let (mut rec, snap, report) = task.await.expect("join");
    assert_eq!(report.applied, [("infra".to_string(), "web".to_string())]);

    let sa = &bodies[0];
    assert_eq!(sa["kind"], "ServiceAccount");
    assert_eq!(sa["automountServiceAccountToken"], false);

    let secret = &bodies[1];
    assert_eq!(secret["type"], "kubernetes.io/tls");
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(
            secret["data"][k].as_str().is_some_and(|s| !s.is_empty()),
            "{k}"
        );
    }

    let cm = &bodies[2];
    let boot: Value =
        serde_json::from_str(cm["data"]["bootstrap.json"].as_str().expect("bootstrap"))
            .expect("json");
    assert_eq!(boot["node"]["id"], "infra/web");
    let xds = &boot["static_resources"]["clusters"][0];
    assert_eq!(
        xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"],
        json!({"address": "portcullis.portcullis-system.svc", "port_value": 18000})
    );
    assert_eq!(
        xds["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0]
            ["certificate_chain"]["filename"],
        "/etc/envoy/certs/tls.crt"
    );

    let svc = &bodies[3];
    assert_eq!(
        svc["spec"]["type"], "NodePort",
        "EnvoyProxy envoyService.type"
    );
    assert_eq!(
        svc["metadata"]["annotations"]["io.cilium/lb-ipam-ips"], "10.0.0.10",
        "annotations passed through"
    );
    assert_eq!(svc["metadata"]["annotations"]["example.com/owner"], "edge");
    let ports: Vec<i64> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert_eq!(ports, [80, 443], "one port per distinct listener port");
    assert_eq!(
        svc["spec"]["selector"],
        json!({"app.kubernetes.io/name": "envoy", "portcullis.dev/fleet": "portcullis-web"})
    );

    let dep = &bodies[4];
    assert_eq!(dep["spec"]["replicas"], 3);
    assert_eq!(
        dep["spec"]["selector"]["matchLabels"],
        svc["spec"]["selector"]
    );
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "portcullis-web");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "example.com/envoy:1.40.1");
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "200m", "memory": "256Mi"}})
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        &args[..4],
        [
            "--config-path",
            "/etc/envoy/bootstrap/bootstrap.json",
            "--log-level",
            "debug"
        ]
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        pod["volumes"][1]["secret"]["secretName"],
        "portcullis-web-xds"
    );
    assert!(
        dep["spec"]["template"]["metadata"]["annotations"][infra::CERT_HASH_ANNOTATION].is_string()
    );

    // Unsupported EnvoyProxy fields are reported, and become a GatewayClass condition.
    assert_eq!(report.unsupported.len(), 1);
    assert_eq!(report.unsupported[0].gateway_class, "portcullis");
    assert_eq!(
        report.unsupported[0].fields,
        [
            "spec.provider.kubernetes.envoyDeployment.pod.nodeSelector.pool",
            "spec.telemetry.accessLog.disable"
        ]
    );
    let mut records: Vec<StatusRecord> = vec![serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "portcullis"},
        "status": {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}]}}))
    .expect("record")];
    infra::add_param_conditions(&mut records, &report.unsupported);
    let conds = records[0].status["conditions"]
        .as_array()
        .expect("conditions");
    assert_eq!(conds.len(), 2, "translator's Accepted kept");
    assert_eq!(conds[1]["type"], infra::UNSUPPORTED_CONDITION);
    assert!(conds[1]["message"]
        .as_str()
        .is_some_and(|m| m.contains("pod.nodeSelector")));

    // Nothing changed: no requests.
    let r = rec
        .reconcile(&snap, &programmed(), ts("2026-05-01T12:00:05Z"))
        .await;
    assert_eq!((r.applied.len(), r.unchanged), (0, 1));
    server.expect_silence(100).await;
}

#[tokio::test]
async fn followers_create_nothing() {
    let (client, mut server) = common::client();
    let mut rec = InfraReconciler::new(
        client,
        InfraConfig::default(),
        LeaderState::follower(),
        ca(),
    );
    let r = rec
        .reconcile(&snapshot(vec![]), &programmed(), ts("2026-05-01T12:00:00Z"))
        .await;
    assert!(r.not_leader);
    assert!(r.applied.is_empty());
    assert_eq!(r.unsupported.len(), 1, "still reported for /status");
    server.expect_silence(200).await;
}

#[tokio::test]
async fn failures_back_off_and_retry_later() {
    let (client, mut server) = common::client();
    let mut rec = InfraReconciler::new(client, InfraConfig::default(), LeaderState::always(), ca());
    let snap = snapshot(vec![]);
    let t0 = ts("2026-05-01T12:00:00Z");
    let task = tokio::spawn(async move {
        let r = rec.reconcile(&snap, &programmed(), t0).await;
        (rec, snap, r)
    });
    server.next().await.status(500, "InternalError");
    let (mut rec, snap, r) = task.await.expect("join");
    assert_eq!(r.failed.len(), 1);

    // Immediately again: deferred by the backoff, no request.
    let r = rec.reconcile(&snap, &programmed(), t0).await;
    assert_eq!(r.deferred, 1);
    server.expect_silence(100).await;

    // After the backoff: retried, and this time it works.
    let task = tokio::spawn(async move {
        rec.reconcile(&snap, &programmed(), ts("2026-05-01T12:02:00Z"))
            .await
    });
    serve_fleet(&mut server).await;
    assert_eq!(task.await.expect("join").applied.len(), 1);
}

#[tokio::test]
async fn a_gateway_leaving_our_class_loses_its_fleet() {
    let (client, mut server) = common::client();
    let mut rec = InfraReconciler::new(client, InfraConfig::default(), LeaderState::always(), ca());
    let snap = snapshot(vec![]);
    let task = tokio::spawn(async move {
        let r = rec
            .reconcile(&snap, &programmed(), ts("2026-05-01T12:00:00Z"))
            .await;
        (rec, r)
    });
    serve_fleet(&mut server).await;
    let (mut rec, _) = task.await.expect("join");

    let task = tokio::spawn(async move {
        rec.reconcile(
            &Snapshot::from_objects([class()]),
            &programmed(),
            ts("2026-05-01T12:01:00Z"),
        )
        .await
    });
    for path in [
        "/apis/apps/v1/namespaces/infra/deployments/portcullis-web",
        "/api/v1/namespaces/infra/services/portcullis-web",
        "/api/v1/namespaces/infra/serviceaccounts/portcullis-web",
    ] {
        let got = server.next().await;
        assert_eq!(got.method, http::Method::DELETE);
        assert_eq!(got.path, path);
        // Already garbage-collected is fine.
        got.status(404, "NotFound");
    }
    let r = task.await.expect("join");
    assert_eq!(r.removed, [("infra".to_string(), "web".to_string())]);
}

#[tokio::test]
async fn a_new_leader_reuses_the_stored_client_certificate_until_renewal_is_due() {
    let authority = ca();
    let (client, mut server) = common::client();
    let mut rec = InfraReconciler::new(
        client,
        InfraConfig::default(),
        LeaderState::always(),
        authority.clone(),
    );
    let task = tokio::spawn(async move {
        rec.reconcile(&snapshot(vec![]), &programmed(), ts("2026-05-01T12:00:00Z"))
            .await
    });
    let first = serve_fleet(&mut server).await;
    task.await.expect("join");
    let hash = |dep: &Value| {
        dep["spec"]["template"]["metadata"]["annotations"][infra::CERT_HASH_ANNOTATION].clone()
    };

    // Another replica becomes leader; the Secret is in its snapshot as the watch delivered it.
    let secret = first[1].clone();
    let (client, mut server) = common::client();
    let mut rec = InfraReconciler::new(
        client,
        InfraConfig::default(),
        LeaderState::always(),
        authority,
    );
    let snap = snapshot(vec![secret.clone()]);
    let task = tokio::spawn(async move {
        let r = rec
            .reconcile(&snap, &programmed(), ts("2026-05-02T12:00:00Z"))
            .await;
        (rec, snap, r)
    });
    let second = serve_fleet(&mut server).await;
    let (mut rec, snap, _) = task.await.expect("join");
    assert_eq!(second[1]["data"], secret["data"], "certificate reused");
    assert_eq!(hash(&second[4]), hash(&first[4]), "no needless rollout");

    // 70 days later, a third of the 90-day lifetime is left: renewed, and the fleet rolls.
    let task = tokio::spawn(async move {
        rec.reconcile(&snap, &programmed(), ts("2026-07-10T12:00:00Z"))
            .await
    });
    let third = serve_fleet(&mut server).await;
    task.await.expect("join");
    assert_ne!(third[1]["data"]["tls.crt"], secret["data"]["tls.crt"]);
    assert_ne!(hash(&third[4]), hash(&first[4]));
}

#[tokio::test]
async fn with_network_policies_each_fleet_admits_only_its_listener_ports() {
    let (client, mut server) = common::client();
    let cfg = InfraConfig {
        network_policy: Some(infra::FleetNetworkPolicy {
            metrics_namespaces: vec!["monitoring".into()],
        }),
        ..InfraConfig::default()
    };
    let mut rec = InfraReconciler::new(client, cfg, LeaderState::always(), ca());
    let task = tokio::spawn(async move {
        let r = rec
            .reconcile(&snapshot(vec![]), &programmed(), ts("2026-05-01T12:00:00Z"))
            .await;
        (rec, r)
    });
    let mut bodies = Vec::new();
    for path in [
        "/api/v1/namespaces/infra/serviceaccounts/portcullis-web",
        "/api/v1/namespaces/infra/secrets/portcullis-web-xds",
        "/api/v1/namespaces/infra/configmaps/portcullis-web",
        // Before the Deployment: the pods are isolated from their first start.
        "/apis/networking.k8s.io/v1/namespaces/infra/networkpolicies/portcullis-web",
        "/api/v1/namespaces/infra/services/portcullis-web",
        "/apis/apps/v1/namespaces/infra/deployments/portcullis-web",
    ] {
        let got = server.next().await;
        assert_apply(&got, path);
        let body = got.body.clone();
        got.ok(body.clone());
        bodies.push(body);
    }
    let (mut rec, report) = task.await.expect("join");
    assert_eq!(report.applied.len(), 1);
    let np = &bodies[3];
    assert_eq!(np["kind"], "NetworkPolicy");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"], bodies[5]["spec"]["selector"]["matchLabels"],
        "selects exactly the fleet's pods"
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        np["spec"]["ingress"],
        json!([
            // The listeners (80, and 443 once for two listeners), from anywhere.
            {"ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]},
            // Readiness/metrics only from the scraping namespace; admin is no port at all.
            {"from": [{"namespaceSelector": {"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring"]}]}}],
             "ports": [{"port": infra::READY_PORT, "protocol": "TCP"}]}
        ])
    );

    // The Gateway leaves our class: its NetworkPolicy goes with the rest of the fleet.
    let task = tokio::spawn(async move {
        rec.reconcile(
            &Snapshot::from_objects([class()]),
            &programmed(),
            ts("2026-05-01T12:01:00Z"),
        )
        .await
    });
    let mut deleted = Vec::new();
    for _ in 0..4 {
        let got = server.next().await;
        assert_eq!(got.method, http::Method::DELETE);
        deleted.push(got.path.clone());
        got.status(404, "NotFound");
    }
    assert_eq!(
        deleted.last().map(String::as_str),
        Some("/apis/networking.k8s.io/v1/namespaces/infra/networkpolicies/portcullis-web")
    );
    assert_eq!(task.await.expect("join").removed.len(), 1);
}

#[tokio::test]
async fn without_network_policies_none_is_written_or_deleted() {
    let (client, mut server) = common::client();
    let mut rec = InfraReconciler::new(client, InfraConfig::default(), LeaderState::always(), ca());
    let task = tokio::spawn(async move {
        rec.reconcile(&snapshot(vec![]), &programmed(), ts("2026-05-01T12:00:00Z"))
            .await;
        rec
    });
    let bodies = serve_fleet(&mut server).await;
    assert!(bodies.iter().all(|b| b["kind"] != "NetworkPolicy"));
    let mut rec = task.await.expect("join");
    let task = tokio::spawn(async move {
        rec.reconcile(
            &Snapshot::from_objects([class()]),
            &programmed(),
            ts("2026-05-01T12:01:00Z"),
        )
        .await
    });
    for _ in 0..3 {
        let got = server.next().await;
        assert!(!got.path.contains("networkpolicies"), "{}", got.path);
        got.status(404, "NotFound");
    }
    task.await.expect("join");
    server.expect_silence(200).await;
}
