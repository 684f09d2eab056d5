//! The shared OIDC session key Secret, against kube's mock client: created once with 32 random
//! bytes, re-read by every other replica (including one that loses the create race), and a
//! malformed Secret is an error that names the problem.

mod common;

use base64::Engine;
use serde_json::json;

const PATH: &str = "/api/v1/namespaces/portcullis-system/secrets";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn first_replica_creates_a_random_key() {
    let (client, mut server) = common::client();
    let task = tokio::spawn(async move {
        portcullis_kube::session::load_or_create(client, "portcullis-system", "pc-session").await
    });
    let get = server.next().await;
    assert_eq!(get.method, http::Method::GET);
    assert_eq!(get.path, format!("{PATH}/pc-session"));
    get.status(404, "NotFound");
    let create = server.next().await;
    assert_eq!(create.method, http::Method::POST);
    assert_eq!(create.path, PATH);
    assert_eq!(create.body["metadata"]["name"], "pc-session");
    assert_eq!(create.body["type"], "Opaque");
    let stored = create.body["data"]["session-key"]
        .as_str()
        .expect("data.session-key")
        .to_string();
    let body = create.body.clone();
    create.respond(201, body);
    let key = task.await.expect("join").expect("key");
    assert_eq!(b64(&key), stored, "the key returned is the key stored");
    assert_ne!(key, [0u8; 32], "random, not zero");
}

#[tokio::test]
async fn later_replicas_and_race_losers_read_the_stored_key() {
    let stored = [7u8; 32];
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pc-session", "namespace": "portcullis-system"},
        "type": "Opaque", "data": {"session-key": b64(&stored)}});

    // Existing Secret: one GET, no write.
    let (client, mut server) = common::client();
    let task = tokio::spawn(async move {
        portcullis_kube::session::load_or_create(client, "portcullis-system", "pc-session").await
    });
    server.next().await.ok(secret.clone());
    assert_eq!(task.await.expect("join").expect("key"), stored);
    server.expect_silence(200).await;

    // Lost the create race: 409, then the winner's key.
    let (client, mut server) = common::client();
    let task = tokio::spawn(async move {
        portcullis_kube::session::load_or_create(client, "portcullis-system", "pc-session").await
    });
    server.next().await.status(404, "NotFound");
    let create = server.next().await;
    assert_eq!(create.method, http::Method::POST);
    create.status(409, "AlreadyExists");
    let reread = server.next().await;
    assert_eq!(reread.method, http::Method::GET);
    reread.ok(secret);
    assert_eq!(task.await.expect("join").expect("key"), stored);
}

#[tokio::test]
async fn a_malformed_secret_is_a_named_error() {
    let (client, mut server) = common::client();
    let task = tokio::spawn(async move {
        portcullis_kube::session::load_or_create(client, "portcullis-system", "pc-session").await
    });
    server
        .next()
        .await
        .ok(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pc-session", "namespace": "portcullis-system"},
        "data": {"session-key": b64(b"short")}}));
    let err = task.await.expect("join").expect_err("5 bytes is not a key");
    let msg = err.to_string();
    assert!(
        msg.contains("pc-session") && msg.contains("32 bytes"),
        "{msg}"
    );
}
