//! The write loop against kube's mock client: nothing is written until this replica leads; a
//! failed write is retried with backoff without a new snapshot; the loop keeps running.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_kube::reconcile::{Translated, WriteLoop};
use portcullis_kube::{LeaderState, Snapshot, StatusRecord, StatusWriter};
use serde_json::json;
use tokio::sync::watch;

const OURS: &str = "portcullis.dev/gatewayclass-controller";

#[tokio::test]
async fn writes_start_with_leadership_and_failures_are_retried() {
    let (client, mut server) = common::client();
    let leader = LeaderState::follower();
    let translations = Arc::new(AtomicUsize::new(0));
    let t = translations.clone();
    let translate = move |snap: &Snapshot| {
        t.fetch_add(1, Ordering::SeqCst);
        let records = snap
            .of_kind("GatewayClass")
            .map(|gc| {
                serde_json::from_value::<StatusRecord>(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                    "metadata": {"name": gc["metadata"]["name"]},
                    "status": {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}]}
                }))
                .expect("record")
            })
            .collect();
        Translated {
            records,
            gateways: Vec::new(),
        }
    };
    let writer = StatusWriter::new(client, OURS, leader.clone());
    let mut wl = WriteLoop::new(translate, writer, None, leader.clone());
    wl.poll = Duration::from_millis(50);
    let snap = Snapshot::from_objects([json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "pc", "generation": 1}, "spec": {"controllerName": OURS}})]);
    let (tx, rx) = watch::channel(Arc::new(snap));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(wl.run(rx, async move {
        let _ = stop_rx.await;
    }));

    // A follower translates (for its own xDS) but writes nothing.
    server.expect_silence(300).await;
    assert_eq!(translations.load(Ordering::SeqCst), 1);

    // Leadership: the status is written at once.
    leader.set(true);
    let got = server.next().await;
    assert_eq!(got.method, http::Method::PATCH);
    assert_eq!(
        got.path,
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses/pc/status"
    );
    assert_eq!(got.body["status"]["conditions"][0]["observedGeneration"], 1);
    got.status(503, "ServiceUnavailable");

    // No new snapshot, yet the failed write comes back after the backoff.
    let got = tokio::time::timeout(Duration::from_secs(3), server.next())
        .await
        .expect("retried");
    assert_eq!(got.method, http::Method::PATCH);
    let body = got.body.clone();
    got.ok(body);
    server.expect_silence(300).await;
    assert_eq!(
        translations.load(Ordering::SeqCst),
        1,
        "same snapshot: translated once"
    );
    assert!(!task.is_finished(), "errors never end the loop");

    // Losing leadership stops writes, even for a new snapshot.
    leader.set(false);
    let snap2 = Snapshot::from_objects([json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "pc", "generation": 2}, "spec": {"controllerName": OURS}})]);
    let snap2 = Arc::new(snap2);
    tx.send(snap2.clone()).expect("send");
    server.expect_silence(300).await;
    assert_eq!(translations.load(Ordering::SeqCst), 2);

    // The same snapshot sent again is a notified change: translated again.
    tx.send(snap2).expect("send");
    server.expect_silence(300).await;
    assert_eq!(translations.load(Ordering::SeqCst), 3);

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("stops")
        .expect("join");
}

/// Without any new snapshot, the loop still passes every `resync`, so the fleet's drift repair
/// runs in a quiet cluster (a hand-deleted Deployment is re-applied; no watch would report it).
#[tokio::test]
async fn fleets_are_resynced_without_new_snapshots() {
    let (client, mut server) = common::client();
    let leader = LeaderState::always();
    let writer = StatusWriter::new(client.clone(), OURS, leader.clone());
    let ca = std::sync::Arc::new(
        portcullis_kube::certs::CertAuthority::generate(time::OffsetDateTime::now_utc())
            .expect("ca"),
    );
    let infra = portcullis_kube::infra::InfraReconciler::new(
        client,
        portcullis_kube::infra::InfraConfig {
            // Every pass re-applies: what a due resync does.
            resync: Duration::ZERO,
            ..Default::default()
        },
        leader.clone(),
        ca,
    );
    let mut wl = WriteLoop::new(
        |_: &Snapshot| Translated::default(),
        writer,
        Some(infra),
        leader,
    );
    wl.poll = Duration::from_millis(50);
    wl.resync = Duration::from_millis(300);
    let snap = Snapshot::from_objects([
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "portcullis"}, "spec": {"controllerName": OURS}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "web", "namespace": "infra", "uid": "u-1", "generation": 1},
               "spec": {"gatewayClassName": "portcullis",
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    ]);
    let (_tx, rx) = watch::channel(Arc::new(snap));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(wl.run(rx, async {
        let _ = stop_rx.await;
    }));
    let deployment = "/apis/apps/v1/namespaces/infra/deployments/portcullis-web";
    let mut applies = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while applies < 3 && tokio::time::Instant::now() < deadline {
        let Some(got) = server.try_next(500).await else {
            continue;
        };
        if got.method == http::Method::PATCH && got.path == deployment {
            applies += 1;
        }
        match got.method {
            http::Method::GET => got.status(404, "NotFound"),
            _ => {
                let body = got.body.clone();
                got.ok(body)
            }
        }
    }
    assert!(
        applies >= 3,
        "the Deployment was applied {applies} time(s) in 10 s with one snapshot: no resync"
    );
    let _ = stop_tx.send(());
    task.await.expect("loop ends");
}
