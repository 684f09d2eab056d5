//! kube's mock client: a `tower_test` service pair standing in for the API server. Each test plays
//! the server: it takes the client's requests one by one, asserts them exactly, and answers.
//! Nothing here checks what a real API server would do with the request (admission, SSA field
//! ownership, RBAC): only what the controller sends and how it reacts to answers.
#![allow(dead_code)]

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle, SendResponse};

pub type MockHandle = Handle<Request<Body>, Response<Body>>;

pub fn client() -> (Client, MockServer) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), MockServer { handle })
}

pub struct MockServer {
    pub handle: MockHandle,
}

/// One request the client sent.
pub struct Got {
    pub method: Method,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Value,
    send: SendResponse<Response<Body>>,
}

impl Got {
    pub fn respond(self, code: u16, body: Value) {
        let resp = Response::builder()
            .status(StatusCode::from_u16(code).expect("status code"))
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response");
        self.send.send_response(resp);
    }

    /// Answer with raw bytes (e.g. a watch stream of newline-separated events).
    pub fn respond_raw(self, code: u16, body: Vec<u8>) {
        let resp = Response::builder()
            .status(StatusCode::from_u16(code).expect("status code"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("response");
        self.send.send_response(resp);
    }

    pub fn ok(self, body: Value) {
        self.respond(200, body)
    }

    pub fn status(self, code: u16, reason: &str) {
        self.respond(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": reason, "reason": reason, "code": code}),
        )
    }

    pub fn query_has(&self, pair: &str) -> bool {
        self.query.split('&').any(|p| p == pair)
    }
}

impl MockServer {
    /// The next request, within 5 seconds.
    pub async fn next(&mut self) -> Got {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
            .await
            .expect("a request within 5s")
            .expect("the client is alive");
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let bytes = req.into_body().collect_bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Got {
            method,
            path,
            query,
            content_type,
            body,
            send,
        }
    }

    /// The next request if one comes within `ms` milliseconds.
    pub async fn try_next(&mut self, ms: u64) -> Option<Got> {
        let (req, send) =
            tokio::time::timeout(Duration::from_millis(ms), self.handle.next_request())
                .await
                .ok()??;
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let bytes = req.into_body().collect_bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Some(Got {
            method,
            path,
            query,
            content_type,
            body,
            send,
        })
    }

    /// Assert the client sends nothing more within `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(ms), self.handle.next_request()).await
        {
            panic!("unexpected request: {} {}", req.method(), req.uri());
        }
    }
}
