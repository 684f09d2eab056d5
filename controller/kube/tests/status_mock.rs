//! Status writer against kube's mock client: the exact server-side-apply requests it sends.

mod common;

use k8s_openapi::jiff::Timestamp;
use portcullis_kube::{LeaderState, ObjectKey, Snapshot, StatusRecord, StatusWriter};
use serde_json::{json, Value};

const OURS: &str = "portcullis.dev/gatewayclass-controller";
const EG: &str = "gateway.envoyproxy.io/gatewayclass-controller";

fn now() -> Timestamp {
    "2026-05-01T12:00:00Z".parse().expect("ts")
}

fn gateway(generation: i64, status: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "web", "namespace": "infra", "generation": generation, "resourceVersion": "100"},
           "spec": {"gatewayClassName": "portcullis", "listeners": []},
           "status": status})
}

fn gateway_record() -> StatusRecord {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"namespace": "infra", "name": "web"},
        "status": {"conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "accepted"},
            {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "programmed"}],
          "listeners": [{"name": "http", "attachedRoutes": 1,
                         "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
                         "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}]}]}
    }))
    .expect("record")
}

fn route(rv: &str, parents: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "a", "namespace": "apps", "generation": 4, "resourceVersion": rv},
           "spec": {"parentRefs": [{"name": "web", "namespace": "infra"}]},
           "status": {"parents": parents}})
}

fn eg_parent(name: &str) -> Value {
    json!({"parentRef": {"name": name}, "controllerName": EG,
           "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                           "lastTransitionTime": "2024-01-01T00:00:00Z", "observedGeneration": 1}]})
}

fn route_record() -> StatusRecord {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": "apps", "name": "a"},
        "status": {"parents": [{"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web", "namespace": "infra"},
                                "controllerName": OURS,
                                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""},
                                               {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": ""}]}]}
    }))
    .expect("record")
}

#[tokio::test]
async fn gateway_status_is_applied_server_side_with_observed_generation() {
    let (client, mut server) = common::client();
    let live = Snapshot::from_objects([gateway(5, json!({}))]);
    let mut writer = StatusWriter::new(client, OURS, LeaderState::always());
    let task = tokio::spawn(async move {
        let r = writer.write(&[gateway_record()], &live, now()).await;
        (writer, live, r)
    });

    let got = server.next().await;
    assert_eq!(got.method, http::Method::PATCH);
    assert_eq!(
        got.path,
        "/apis/gateway.networking.k8s.io/v1/namespaces/infra/gateways/web/status"
    );
    assert!(
        got.query_has("fieldManager=portcullis.dev%2Fcontroller"),
        "{}",
        got.query
    );
    assert!(got.query_has("force=true"), "{}", got.query);
    assert_eq!(
        got.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    let body = got.body.clone();
    assert_eq!(body["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(body["kind"], "Gateway");
    assert_eq!(
        body["metadata"],
        json!({"name": "web", "namespace": "infra"}),
        "no resourceVersion for listType=map statuses"
    );
    let conds = body["status"]["conditions"].as_array().expect("conditions");
    assert_eq!(conds.len(), 2);
    for c in conds {
        assert_eq!(c["observedGeneration"], 5);
        assert_eq!(c["lastTransitionTime"], "2026-05-01T12:00:00Z");
    }
    assert_eq!(conds[0]["type"], "Accepted");
    assert_eq!(conds[1]["type"], "Programmed");
    let lc = &body["status"]["listeners"][0]["conditions"][0];
    assert_eq!(lc["observedGeneration"], 5);
    assert_eq!(body["status"]["listeners"][0]["attachedRoutes"], 1);
    got.ok(gateway(5, body["status"].clone()));

    let (mut writer, live, report) = task.await.expect("join");
    assert_eq!(
        report.written,
        [ObjectKey::new(
            "gateway.networking.k8s.io",
            "Gateway",
            Some("infra"),
            "web"
        )]
    );

    // Same batch again before the watch shows our write: nothing is sent.
    let r = writer.write(&[gateway_record()], &live, now()).await;
    assert_eq!((r.written.len(), r.unchanged), (0, 1));
    server.expect_silence(100).await;

    // The watch now shows our write (new resourceVersion, same content): still nothing.
    let mut echoed = gateway(5, body["status"].clone());
    echoed["metadata"]["resourceVersion"] = json!("101");
    let r = writer
        .write(
            &[gateway_record()],
            &Snapshot::from_objects([echoed]),
            now(),
        )
        .await;
    assert_eq!((r.written.len(), r.unchanged), (0, 1));
    server.expect_silence(100).await;
}

#[tokio::test]
async fn a_new_generation_is_written_and_keeps_transition_times() {
    let (client, mut server) = common::client();
    let old_status = json!({"conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "accepted", "observedGeneration": 5, "lastTransitionTime": "2025-01-01T00:00:00Z"},
        {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "programmed", "observedGeneration": 5, "lastTransitionTime": "2025-01-01T00:00:00Z"}],
      "listeners": [{"name": "http", "attachedRoutes": 1, "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
                     "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "observedGeneration": 5, "lastTransitionTime": "2025-01-01T00:00:00Z"}]}]});
    let mut writer = StatusWriter::new(client, OURS, LeaderState::always());

    // Generation 5 already observed: no write at all (e.g. after a leader failover).
    let live = Snapshot::from_objects([gateway(5, old_status.clone())]);
    let r = writer.write(&[gateway_record()], &live, now()).await;
    assert_eq!((r.written.len(), r.unchanged), (0, 1));
    server.expect_silence(100).await;

    // Generation 6: written, observedGeneration 6, transition times unchanged (same statuses).
    let live = Snapshot::from_objects([gateway(6, old_status)]);
    let task = tokio::spawn(async move { writer.write(&[gateway_record()], &live, now()).await });
    let got = server.next().await;
    let c = &got.body["status"]["conditions"];
    assert_eq!(c[0]["observedGeneration"], 6);
    assert_eq!(c[0]["lastTransitionTime"], "2025-01-01T00:00:00Z");
    let body = got.body.clone();
    got.ok(gateway(6, body["status"].clone()));
    assert_eq!(task.await.expect("join").written.len(), 1);
}

#[tokio::test]
async fn route_parents_keep_other_controllers_and_conflicts_are_re_merged() {
    let (client, mut server) = common::client();
    let live = Snapshot::from_objects([route("10", json!([eg_parent("eg-gw")]))]);
    let mut writer = StatusWriter::new(client, OURS, LeaderState::always());
    let task = tokio::spawn(async move { writer.write(&[route_record()], &live, now()).await });

    // First apply: EG's entry carried over untouched, ours appended, resourceVersion pinned.
    let got = server.next().await;
    assert_eq!(got.method, http::Method::PATCH);
    assert_eq!(
        got.path,
        "/apis/gateway.networking.k8s.io/v1/namespaces/apps/httproutes/a/status"
    );
    assert_eq!(got.body["metadata"]["resourceVersion"], "10");
    let parents = got.body["status"]["parents"]
        .as_array()
        .expect("parents")
        .clone();
    assert_eq!(parents.len(), 2);
    assert_eq!(parents[0], eg_parent("eg-gw"));
    assert_eq!(parents[1]["controllerName"], OURS);
    assert_eq!(parents[1]["conditions"][0]["observedGeneration"], 4);
    // Meanwhile another controller wrote: 409.
    got.status(409, "Conflict");

    // The writer re-reads the status subresource ...
    let got = server.next().await;
    assert_eq!(got.method, http::Method::GET);
    assert_eq!(
        got.path,
        "/apis/gateway.networking.k8s.io/v1/namespaces/apps/httproutes/a/status"
    );
    got.ok(route(
        "11",
        json!([eg_parent("eg-gw"), eg_parent("eg-gw-2")]),
    ));

    // ... and applies again, keeping the entry written in between.
    let got = server.next().await;
    assert_eq!(got.method, http::Method::PATCH);
    assert_eq!(got.body["metadata"]["resourceVersion"], "11");
    let parents = got.body["status"]["parents"]
        .as_array()
        .expect("parents")
        .clone();
    assert_eq!(parents.len(), 3);
    assert_eq!(parents[0], eg_parent("eg-gw"));
    assert_eq!(parents[1], eg_parent("eg-gw-2"));
    assert_eq!(parents[2]["controllerName"], OURS);
    let body = got.body.clone();
    got.ok(route("12", body["status"]["parents"].clone()));

    let report = task.await.expect("join");
    assert_eq!(report.written.len(), 1);
    assert!(report.failed.is_empty());
}

#[tokio::test]
async fn policy_ancestors_are_merged_too() {
    let (client, mut server) = common::client();
    let eep = json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyExtensionPolicy",
        "metadata": {"name": "ua", "namespace": "apps", "generation": 2, "resourceVersion": "7"},
        "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "a"}]},
        "status": {"ancestors": [{"ancestorRef": {"name": "eg-gw"}, "controllerName": EG, "conditions": []}]}});
    let rec: StatusRecord = serde_json::from_value(json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyExtensionPolicy",
        "metadata": {"namespace": "apps", "name": "ua"},
        "status": {"ancestors": [{"ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web", "namespace": "infra"},
                                  "controllerName": OURS,
                                  "conditions": [{"type": "Accepted", "status": "False", "reason": "Invalid",
                                                  "message": "fetch https://example.com/ua.wasm: HTTP 404"}]}]}
    }))
    .expect("record");
    let live = Snapshot::from_objects([eep]);
    let mut writer = StatusWriter::new(client, OURS, LeaderState::always());
    let task = tokio::spawn(async move { writer.write(&[rec], &live, now()).await });
    let got = server.next().await;
    assert_eq!(
        got.path,
        "/apis/gateway.envoyproxy.io/v1alpha1/namespaces/apps/envoyextensionpolicies/ua/status"
    );
    let anc = got.body["status"]["ancestors"]
        .as_array()
        .expect("ancestors")
        .clone();
    assert_eq!(anc.len(), 2);
    assert_eq!(anc[0]["controllerName"], EG);
    assert_eq!(anc[1]["conditions"][0]["reason"], "Invalid");
    assert_eq!(anc[1]["conditions"][0]["observedGeneration"], 2);
    got.ok(json!({}));
    assert_eq!(task.await.expect("join").written.len(), 1);
}

#[tokio::test]
async fn followers_never_write() {
    let (client, mut server) = common::client();
    let leader = LeaderState::follower();
    let live = Snapshot::from_objects([gateway(5, json!({})), route("1", json!([]))]);
    let mut writer = StatusWriter::new(client, OURS, leader);
    let r = writer
        .write(&[gateway_record(), route_record()], &live, now())
        .await;
    assert_eq!(r.not_leader, 2);
    assert!(r.written.is_empty());
    server.expect_silence(200).await;
}

#[tokio::test]
async fn objects_missing_from_the_snapshot_are_skipped_and_failures_reported() {
    let (client, mut server) = common::client();
    let mut writer = StatusWriter::new(client, OURS, LeaderState::always());
    let r = writer
        .write(&[gateway_record()], &Snapshot::default(), now())
        .await;
    assert_eq!(r.missing, 1);
    server.expect_silence(100).await;

    let live = Snapshot::from_objects([gateway(1, json!({}))]);
    let task = tokio::spawn(async move {
        let first = writer.write(&[gateway_record()], &live, now()).await;
        (writer, live, first)
    });
    server.next().await.status(500, "InternalError");
    let (mut writer, live, first) = task.await.expect("join");
    assert_eq!(first.failed.len(), 1);
    // Nothing cached for a failure: the next batch tries again.
    let task = tokio::spawn(async move { writer.write(&[gateway_record()], &live, now()).await });
    let got = server.next().await;
    assert_eq!(got.method, http::Method::PATCH);
    got.ok(json!({}));
    assert_eq!(task.await.expect("join").written.len(), 1);
}
