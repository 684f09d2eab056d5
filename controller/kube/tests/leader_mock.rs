//! Lease leader election against kube's mock client.

mod common;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use portcullis_kube::{LeaderElector, LeaseConfig};
use serde_json::{json, Value};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/portcullis-system/leases";

fn cfg() -> LeaseConfig {
    LeaseConfig {
        namespace: "portcullis-system".into(),
        name: "portcullis-leader".into(),
        identity: "pod-a".into(),
        lease_duration: Duration::from_secs(15),
        renew_interval: Duration::from_secs(5),
    }
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("ts")
}

fn lease(holder: &str, renew: &str, transitions: i32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "portcullis-leader", "namespace": "portcullis-system", "resourceVersion": "5"},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                    "acquireTime": "2026-05-01T11:00:00.000000Z", "renewTime": renew, "leaseTransitions": transitions}})
}

#[tokio::test]
async fn creates_the_lease_when_none_exists() {
    let (client, mut server) = common::client();
    let el = LeaderElector::new(client, cfg());
    let state = el.state();
    assert!(!state.is_leader());
    let task =
        tokio::spawn(async move { el.try_acquire_or_renew(ts("2026-05-01T12:00:00Z")).await });
    let got = server.next().await;
    assert_eq!(got.method, http::Method::GET);
    assert_eq!(got.path, format!("{LEASES}/portcullis-leader"));
    got.status(404, "NotFound");
    let got = server.next().await;
    assert_eq!(got.method, http::Method::POST);
    assert_eq!(got.path, LEASES);
    assert_eq!(got.body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(got.body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(got.body["spec"]["leaseTransitions"], 0);
    assert!(got.body["spec"]["renewTime"]
        .as_str()
        .is_some_and(|t| t.starts_with("2026-05-01T12:00:00")));
    let body = got.body.clone();
    got.respond(201, body);
    assert!(task.await.expect("join").expect("round"));
    assert!(state.is_leader());
}

#[tokio::test]
async fn a_fresh_lease_held_by_another_is_left_alone() {
    let (client, mut server) = common::client();
    let el = LeaderElector::new(client, cfg());
    let state = el.state();
    let task = tokio::spawn(async move {
        // 10s after the other's renewal: still valid for 5s.
        let r = el.try_acquire_or_renew(ts("2026-05-01T12:00:10Z")).await;
        (el, r)
    });
    server
        .next()
        .await
        .ok(lease("pod-b", "2026-05-01T12:00:00.000000Z", 3));
    let (_el, r) = task.await.expect("join");
    assert!(!r.expect("round"));
    assert!(!state.is_leader());
    server.expect_silence(100).await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_compare_and_swap() {
    let (client, mut server) = common::client();
    let el = LeaderElector::new(client, cfg());
    let state = el.state();
    let task =
        tokio::spawn(async move { el.try_acquire_or_renew(ts("2026-05-01T12:00:16Z")).await });
    server
        .next()
        .await
        .ok(lease("pod-b", "2026-05-01T12:00:00.000000Z", 3));
    let got = server.next().await;
    assert_eq!(got.method, http::Method::PUT);
    assert_eq!(got.path, format!("{LEASES}/portcullis-leader"));
    assert_eq!(
        got.body["metadata"]["resourceVersion"], "5",
        "PUT is a compare-and-swap"
    );
    assert_eq!(got.body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(got.body["spec"]["leaseTransitions"], 4);
    let body = got.body.clone();
    got.ok(body);
    assert!(task.await.expect("join").expect("round"));
    assert!(state.is_leader());
}

#[tokio::test]
async fn losing_the_race_means_follower_and_renewal_keeps_leadership() {
    let (client, mut server) = common::client();
    let el = LeaderElector::new(client, cfg());
    let state = el.state();
    let task = tokio::spawn(async move {
        let r = el.try_acquire_or_renew(ts("2026-05-01T12:00:16Z")).await;
        (el, r)
    });
    server
        .next()
        .await
        .ok(lease("pod-b", "2026-05-01T12:00:00.000000Z", 3));
    server.next().await.status(409, "Conflict");
    let (el, r) = task.await.expect("join");
    assert!(!r.expect("a lost race is not an error"));
    assert!(!state.is_leader());

    // Later we hold it: a renewal only moves renewTime.
    let task = tokio::spawn(async move {
        let r = el.try_acquire_or_renew(ts("2026-05-01T12:01:00Z")).await;
        (el, r)
    });
    server
        .next()
        .await
        .ok(lease("pod-a", "2026-05-01T12:00:55.000000Z", 4));
    let got = server.next().await;
    assert_eq!(got.method, http::Method::PUT);
    assert_eq!(got.body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(got.body["spec"]["leaseTransitions"], 4);
    assert!(got.body["spec"]["renewTime"]
        .as_str()
        .is_some_and(|t| t.starts_with("2026-05-01T12:01:00")));
    let body = got.body.clone();
    got.ok(body);
    let (el, r) = task.await.expect("join");
    assert!(r.expect("round"));
    assert!(state.is_leader());

    // The API server fails right after a renewal: still leader (well within the lease) ...
    let task = tokio::spawn(async move {
        let r = el.try_acquire_or_renew(ts("2026-05-01T12:01:05Z")).await;
        (el, r)
    });
    server.next().await.status(500, "InternalError");
    let (el, r) = task.await.expect("join");
    assert!(r.is_err());
    assert!(state.is_leader());
    // ... but not once 2/3 of the lease passed without a renewal.
    let task =
        tokio::spawn(async move { el.try_acquire_or_renew(ts("2026-05-01T12:01:11Z")).await });
    server.next().await.status(500, "InternalError");
    assert!(task.await.expect("join").is_err());
    assert!(!state.is_leader());
}
