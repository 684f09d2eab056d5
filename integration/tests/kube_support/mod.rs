//! A stand-in for the kube-apiserver behind kube's mock client (`tower_test::mock::pair`): every
//! request the controller sends is answered generically and recorded, so a test can run the
//! whole Kubernetes mode and then inspect what was written.
//!
//! What it does, per request:
//! - `GET <collection>?watch=true`: never answered (an open watch with nothing to say); the
//!   response handle is kept alive until the server is dropped;
//! - `GET <collection>` (a list): the fixture objects for that path, else an empty list;
//! - `GET <collection>/<name>`: the object stored by an earlier create/replace/apply, else 404;
//! - `POST <collection>`: stored (resourceVersion, uid, creationTimestamp filled), 201 echoing it;
//! - `PUT <collection>/<name>`: stored (resourceVersion bumped), 200 echoing it;
//! - `PATCH ...`: stored (uid/resourceVersion filled), 200 echoing the patch body;
//! - `DELETE`: 200 with the stored object, else 404.
//!
//! Nothing here does what a real API server would do beyond that: no admission, no server-side
//! apply merging or field ownership, no RBAC, no watch events for the controller's own writes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{self, SendResponse};

/// One request the controller sent, and the status it was answered with (`None`: held open).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Value,
    pub answered: Option<u16>,
}

impl Recorded {
    pub fn query_has(&self, pair: &str) -> bool {
        self.query.split('&').any(|p| p == pair)
    }

    pub fn is_watch(&self) -> bool {
        self.method == "GET" && self.query_has("watch=true")
    }

    /// One line: `PATCH /api/v1/... ?query -> 200 {body, truncated}`.
    pub fn line(&self) -> String {
        let mut body = if self.body.is_null() {
            String::new()
        } else {
            self.body.to_string()
        };
        if body.len() > 300 {
            let mut cut = 300;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body.push_str("...");
        }
        let answered = self
            .answered
            .map(|c| c.to_string())
            .unwrap_or_else(|| "open".into());
        format!(
            "{} {}?{} -> {answered} {body}",
            self.method, self.path, self.query
        )
    }
}

/// The fake API server: recorded requests, and the objects it stores.
#[derive(Clone, Default)]
pub struct ApiServer {
    log: Arc<Mutex<Vec<Recorded>>>,
    store: Arc<Mutex<BTreeMap<String, Value>>>,
}

impl ApiServer {
    /// A kube client whose every request this server answers (on the current tokio runtime),
    /// with `lists` (collection path -> items) as the cluster's objects.
    pub fn start(lists: BTreeMap<String, Vec<Value>>) -> (kube::Client, ApiServer) {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let server = ApiServer::default();
        let s = server.clone();
        tokio::spawn(async move {
            let mut open_watches: Vec<SendResponse<Response<Body>>> = Vec::new();
            let rv = AtomicU64::new(100);
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or_default().to_string();
                let content_type = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap_or_else(
                        |_| json!({"unparsed": String::from_utf8_lossy(&bytes).to_string()}),
                    )
                };
                let mut rec = Recorded {
                    method,
                    path,
                    query,
                    content_type,
                    body,
                    answered: None,
                };
                if rec.is_watch() {
                    open_watches.push(send);
                } else {
                    let (code, reply) = s.answer(&rec, &lists, &rv);
                    rec.answered = Some(code);
                    let resp = Response::builder()
                        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
                        .expect("response");
                    send.send_response(resp);
                }
                s.log.lock().unwrap_or_else(|p| p.into_inner()).push(rec);
            }
            drop(open_watches);
        });
        (client, server)
    }

    fn answer(
        &self,
        rec: &Recorded,
        lists: &BTreeMap<String, Vec<Value>>,
        rv: &AtomicU64,
    ) -> (u16, Value) {
        let next_rv = || rv.fetch_add(1, Ordering::SeqCst).to_string();
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        match rec.method.as_str() {
            "GET" => {
                if let Some(items) = lists.get(&rec.path) {
                    return (
                        200,
                        json!({"apiVersion": "v1", "kind": "List",
                               "metadata": {"resourceVersion": "1"}, "items": items}),
                    );
                }
                match store.get(&rec.path) {
                    Some(obj) => (200, obj.clone()),
                    // A collection nobody listed: an empty list; an object: not found.
                    None if is_collection(&rec.path) => (
                        200,
                        json!({"apiVersion": "v1", "kind": "List",
                               "metadata": {"resourceVersion": "1"}, "items": []}),
                    ),
                    None => (404, not_found(&rec.path)),
                }
            }
            "POST" => {
                let mut obj = rec.body.clone();
                let Some(name) = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(String::from)
                else {
                    return (422, status(422, "Invalid", "metadata.name is required"));
                };
                let key = format!("{}/{name}", rec.path);
                if store.contains_key(&key) {
                    return (409, status(409, "AlreadyExists", &format!("{key} exists")));
                }
                obj["metadata"]["resourceVersion"] = json!(next_rv());
                obj["metadata"]["uid"] = json!(format!("uid-{}", next_rv()));
                obj["metadata"]["creationTimestamp"] = json!("2026-05-01T12:00:00Z");
                store.insert(key, obj.clone());
                (201, obj)
            }
            "PUT" => {
                let mut obj = rec.body.clone();
                if let (Some(want), Some(have)) = (
                    obj.pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str),
                    store
                        .get(&rec.path)
                        .and_then(|o| o.pointer("/metadata/resourceVersion"))
                        .and_then(Value::as_str),
                ) {
                    if want != have {
                        return (409, status(409, "Conflict", "resourceVersion mismatch"));
                    }
                }
                obj["metadata"]["resourceVersion"] = json!(next_rv());
                store.insert(rec.path.clone(), obj.clone());
                (200, obj)
            }
            "PATCH" => {
                let mut obj = rec.body.clone();
                if !obj.is_object() {
                    return (
                        400,
                        status(400, "BadRequest", "patch body is not an object"),
                    );
                }
                if obj.pointer("/metadata/uid").is_none() {
                    obj["metadata"]["uid"] = json!(format!("uid-{}", next_rv()));
                }
                obj["metadata"]["resourceVersion"] = json!(next_rv());
                store.insert(rec.path.clone(), obj.clone());
                (200, obj)
            }
            "DELETE" => match store.remove(&rec.path) {
                Some(obj) => (200, obj),
                None => (404, not_found(&rec.path)),
            },
            _ => (405, status(405, "MethodNotAllowed", &rec.method)),
        }
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The request log, one line each, for failure messages.
    pub fn dump(&self) -> String {
        let reqs = self.requests();
        let mut out = format!("{} requests to the mock API server:\n", reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            out.push_str(&format!("  {i:3} {}\n", r.line()));
        }
        out
    }

    /// The object stored at `path` (created, replaced or applied there).
    pub fn stored(&self, path: &str) -> Option<Value> {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned()
    }

    /// Poll (blocking) until `find` picks something out of the request log.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        find: impl FnMut(&[Recorded]) -> Option<T>,
    ) -> T {
        self.wait_for_unless(what, timeout, || None, find)
    }

    /// [`wait_for`](Self::wait_for), failing at once when `gone` says why waiting is pointless
    /// (e.g. the controller returned).
    pub fn wait_for_unless<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut gone: impl FnMut() -> Option<String>,
        mut find: impl FnMut(&[Recorded]) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = find(&self.requests()) {
                return v;
            }
            if let Some(why) = gone() {
                panic!("while waiting for {what}: {why}\n{}", self.dump());
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `/api/v1/services`, `/apis/g/v/namespaces/ns/kind`: an even number of segments after the
/// group/version prefix (kind, or namespaces/ns/kind) means a collection.
fn is_collection(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segs.first() {
        Some(&"api") => &segs[segs.len().min(2)..],
        Some(&"apis") => &segs[segs.len().min(3)..],
        _ => return false,
    };
    matches!(rest, [_] | ["namespaces", _, _])
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn not_found(path: &str) -> Value {
    status(404, "NotFound", &format!("{path} not found"))
}

// ------------------------------------------------------------------------ CRD schemas

/// `PORTCULLIS_CRDS`, else `../shared/crds` beside the checkout, else the chart's vendored copy
/// (the same lookup as the `manifests` test).
pub fn crds_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Some(dir) = std::env::var_os("PORTCULLIS_CRDS") {
        return PathBuf::from(dir);
    }
    let shared = root.join("../shared/crds");
    if shared.is_dir() {
        return shared;
    }
    root.join("charts/portcullis/charts/portcullis-crds/crds")
}

/// Reject unknown fields, as strict field validation does (see the `manifests` test).
fn strict(schema: &mut Value) {
    match schema {
        Value::Object(o) => {
            let preserve =
                o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            if o.contains_key("properties") && !o.contains_key("additionalProperties") && !preserve
            {
                o.insert("additionalProperties".into(), Value::Bool(false));
            }
            o.values_mut().for_each(strict);
        }
        Value::Array(a) => a.iter_mut().for_each(strict),
        _ => {}
    }
}

/// The served CRD schemas, by `apiVersion` and kind.
pub struct Crds {
    schemas: BTreeMap<(String, String), Value>,
}

impl Crds {
    pub fn load() -> Crds {
        let dir = crds_dir();
        assert!(
            dir.is_dir(),
            "CRDs not found at {} (set PORTCULLIS_CRDS)",
            dir.display()
        );
        let mut files = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
                let p = e.expect("dir entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                    files.push(p);
                }
            }
        }
        let mut schemas = BTreeMap::new();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read CRD");
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let Ok(crd) = <Value as serde::Deserialize>::deserialize(doc) else {
                    continue;
                };
                if crd["kind"] != "CustomResourceDefinition" {
                    continue;
                }
                let group = crd["spec"]["group"].as_str().unwrap_or_default();
                let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
                for v in crd["spec"]["versions"].as_array().into_iter().flatten() {
                    if v["served"] != Value::Bool(true) {
                        continue;
                    }
                    let mut schema = v["schema"]["openAPIV3Schema"].clone();
                    strict(&mut schema);
                    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut)
                    {
                        props.insert("metadata".into(), json!({"type": "object"}));
                    }
                    let api_version = format!("{group}/{}", v["name"].as_str().unwrap_or(""));
                    schemas.insert((api_version, kind.to_string()), schema);
                }
            }
        }
        Crds { schemas }
    }

    fn schema(&self, api_version: &str, kind: &str) -> &Value {
        self.schemas
            .get(&(api_version.to_string(), kind.to_string()))
            .unwrap_or_else(|| panic!("no served CRD for {api_version} {kind}"))
    }

    /// Problems of a whole object against its CRD (empty: valid).
    pub fn check_object(&self, obj: &Value) -> Vec<String> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        errors(self.schema(api_version, kind), obj)
    }

    /// Problems of a status (the `status` of a status apply) against the CRD's status schema.
    pub fn check_status(&self, api_version: &str, kind: &str, status: &Value) -> Vec<String> {
        let schema = &self.schema(api_version, kind)["properties"]["status"];
        assert!(
            schema.is_object(),
            "{api_version} {kind} has no status schema"
        );
        errors(schema, status)
    }
}

fn errors(schema: &Value, v: &Value) -> Vec<String> {
    let validator = jsonschema::draft4::new(schema).expect("CRD schema compiles");
    validator
        .iter_errors(v)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}
