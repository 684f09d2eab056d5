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
//!
//! Several clients can share one server ([`ApiServer::shared`] + [`ApiServer::client`]): one
//! store, one resourceVersion counter, one log, each request recorded with its client's label
//! (e.g. two controller replicas electing a leader over the same Lease).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use portcullis::infra::host::XdsMode;
use portcullis::kubernetes::KubeRuntimeConfig;
use portcullis_integration::http::client;
use serde_json::{json, Value};
use tower_test::mock::{self, SendResponse};

/// One request the controller sent, and the status it was answered with (`None`: held open).
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The label of the client that sent it (see [`ApiServer::client`]).
    pub client: String,
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

    /// One line: `[client] PATCH /api/v1/... ?query -> 200 {body, truncated}`.
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
            "[{}] {} {}?{} -> {answered} {body}",
            self.client, self.method, self.path, self.query
        )
    }
}

/// The fake API server: recorded requests, and the objects it stores.
#[derive(Clone)]
pub struct ApiServer {
    log: Arc<Mutex<Vec<Recorded>>>,
    store: Arc<Mutex<BTreeMap<String, Value>>>,
    /// The cluster's objects: collection path -> items.
    lists: Arc<BTreeMap<String, Vec<Value>>>,
    rv: Arc<AtomicU64>,
}

impl ApiServer {
    /// A kube client whose every request this server answers (on the current tokio runtime),
    /// with `lists` (collection path -> items) as the cluster's objects.
    pub fn start(lists: BTreeMap<String, Vec<Value>>) -> (kube::Client, ApiServer) {
        let server = ApiServer::shared(lists);
        let client = server.client("controller");
        (client, server)
    }

    /// A server with `lists` as the cluster's objects and no client yet: see [`client`](Self::client).
    pub fn shared(lists: BTreeMap<String, Vec<Value>>) -> ApiServer {
        ApiServer {
            log: Arc::default(),
            store: Arc::default(),
            lists: Arc::new(lists),
            rv: Arc::new(AtomicU64::new(100)),
        }
    }

    /// Another kube client answered by this server (same store, log and lists; on the current
    /// tokio runtime), its requests recorded with `label`. The client's watches stay open until
    /// the client is dropped.
    pub fn client(&self, label: &str) -> kube::Client {
        self.client_with_latency(label, Duration::ZERO)
    }

    /// [`client`](Self::client), each answer reaching the client `latency` after the request
    /// was handled (as across a network; requests are still handled, and recorded, on arrival).
    pub fn client_with_latency(&self, label: &str, latency: Duration) -> kube::Client {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let s = self.clone();
        let label = label.to_string();
        tokio::spawn(async move {
            let mut open_watches: Vec<SendResponse<Response<Body>>> = Vec::new();
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
                    client: label.clone(),
                    method,
                    path,
                    query,
                    content_type,
                    body,
                    answered: None,
                };
                // The log is held while answering, so its order is the order requests were
                // answered in, across clients too.
                let mut log = s.log.lock().unwrap_or_else(|p| p.into_inner());
                if rec.is_watch() {
                    log.push(rec);
                    drop(log);
                    open_watches.push(send);
                } else {
                    let (code, reply) = s.answer(&rec, &s.lists, &s.rv);
                    rec.answered = Some(code);
                    log.push(rec);
                    drop(log);
                    let resp = Response::builder()
                        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
                        .expect("response");
                    if latency.is_zero() {
                        send.send_response(resp);
                    } else {
                        tokio::spawn(async move {
                            tokio::time::sleep(latency).await;
                            send.send_response(resp);
                        });
                    }
                }
            }
            drop(open_watches);
        });
        client
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
                    // `fieldSelector=metadata.name=X` (how a scoped provider reads Namespaces).
                    let by_name = rec.query.split('&').find_map(|p| {
                        p.strip_prefix("fieldSelector=metadata.name%3D")
                            .or_else(|| p.strip_prefix("fieldSelector=metadata.name="))
                    });
                    let items: Vec<&Value> = items
                        .iter()
                        .filter(|o| by_name.is_none_or(|n| o["metadata"]["name"] == n))
                        .collect();
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

    /// Store `obj` at `path` (an object path, e.g. `/api/v1/namespaces/ns/secrets/name`), as
    /// if created before the controller started: GETs of `path` return it.
    pub fn put(&self, path: &str, obj: Value) {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string(), obj);
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

// ------------------------------------------------------------------------ fixtures

// The cluster the Kubernetes-mode tests run against: one GatewayClass of ours, Gateway `infra/web`
// with one HTTP listener, HTTPRoute `apps/app` to Service `apps/app` (whose EndpointSlice is the
// echo upstream), and an EnvoyExtensionPolicy adding the ua-block wasm filter to the route.

pub const OURS: &str = "portcullis.dev/gatewayclass-controller";
pub const CONTROLLER_NS: &str = "portcullis-system";
pub const GW_UID: &str = "5b1e3c1a-9d7f-4c55-8a3e-0c2f6b7d9e01";
pub const GW_GENERATION: i64 = 3;
pub const ROUTE_GENERATION: i64 = 2;
pub const BAD_UA: &str = "BadBot/1.0";
pub const GOOD_UA: &str = "Mozilla/5.0 (X11; Linux x86_64)";
/// The fleet (ServiceAccount, Secret, ConfigMap, Service, Deployment) of Gateway `infra/web`.
pub const FLEET: &str = "portcullis-web";

pub fn unb64(v: &Value, what: &str) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("{what} is not base64: {e}"));
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("{what} is not UTF-8: {e}"))
}

/// The cluster's objects, by the collection path the provider lists.
pub fn cluster(
    gw_port: u16,
    echo_port: u16,
    wasm_url: &str,
    sha: &str,
) -> BTreeMap<String, Vec<Value>> {
    let ns = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "uid": format!("ns-{name}"), "resourceVersion": "5",
                            "labels": {"kubernetes.io/metadata.name": name}}})
    };
    let class = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "portcullis", "uid": "gc-0001", "generation": 1, "resourceVersion": "10"},
        "spec": {"controllerName": OURS}
    });
    let gateway = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "web", "namespace": "infra", "uid": GW_UID,
                     "generation": GW_GENERATION, "resourceVersion": "11"},
        "spec": {"gatewayClassName": "portcullis",
                 "listeners": [{"name": "http", "port": gw_port, "protocol": "HTTP",
                                "allowedRoutes": {"namespaces": {"from": "All"}}}]}
    });
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "app", "namespace": "apps", "uid": "route-0001",
                     "generation": ROUTE_GENERATION, "resourceVersion": "12"},
        "spec": {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                 "name": "web", "namespace": "infra", "sectionName": "http"}],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                            "backendRefs": [{"name": "app", "port": 8080}]}]}
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "app", "namespace": "apps", "uid": "svc-0001", "resourceVersion": "13"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.12.34", "selector": {"app": "app"},
                 "ports": [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]}
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "app-x7k2p", "namespace": "apps", "uid": "eps-0001", "resourceVersion": "14",
                     "labels": {"kubernetes.io/service-name": "app",
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": echo_port, "protocol": "TCP"}]
    });
    let policy = json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyExtensionPolicy",
        "metadata": {"name": "ua-block", "namespace": "apps", "uid": "eep-0001",
                     "generation": 1, "resourceVersion": "15"},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "app"}],
            "wasm": [{
                "name": "ua-block",
                "rootID": "ua_block",
                "code": {"type": "HTTP", "http": {"url": wasm_url, "sha256": sha}},
                "config": {"deny": {"contains": ["BadBot"]}, "status": 403}
            }]
        }
    });
    let gw_api = "/apis/gateway.networking.k8s.io/v1";
    BTreeMap::from([
        (format!("{gw_api}/gatewayclasses"), vec![class]),
        (format!("{gw_api}/gateways"), vec![gateway]),
        (format!("{gw_api}/httproutes"), vec![route]),
        (format!("{gw_api}/referencegrants"), vec![]),
        (format!("{gw_api}/backendtlspolicies"), vec![]),
        ("/api/v1/services".into(), vec![service]),
        (
            "/apis/discovery.k8s.io/v1/endpointslices".into(),
            vec![slice],
        ),
        ("/api/v1/secrets".into(), vec![]),
        ("/api/v1/configmaps".into(), vec![]),
        (
            "/api/v1/namespaces".into(),
            vec![ns("infra"), ns("apps"), ns(CONTROLLER_NS)],
        ),
        (
            "/apis/gateway.envoyproxy.io/v1alpha1/envoyextensionpolicies".into(),
            vec![policy],
        ),
        (
            "/apis/gateway.envoyproxy.io/v1alpha1/securitypolicies".into(),
            vec![],
        ),
        (
            "/apis/gateway.envoyproxy.io/v1alpha1/backendtrafficpolicies".into(),
            vec![],
        ),
        (
            "/apis/gateway.envoyproxy.io/v1alpha1/backends".into(),
            vec![],
        ),
        (
            "/apis/gateway.envoyproxy.io/v1alpha1/envoyproxies".into(),
            vec![],
        ),
    ])
}

/// The module's HTTP origin (plain HTTP on 127.0.0.1), on the test's runtime.
pub fn serve_origin(rt: &tokio::runtime::Runtime, module: Vec<u8>) -> u16 {
    let app = axum::Router::new().route(
        "/ua_block.wasm",
        axum::routing::get(move || {
            let m = module.clone();
            async move { m }
        }),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
        .expect("bind the wasm origin");
    let port = listener.local_addr().expect("origin addr").port();
    rt.spawn(async move { axum::serve(listener, app).await });
    port
}

/// Applies (server-side apply PATCHes) to `path`, in order.
pub fn applies<'a>(reqs: &'a [Recorded], path: &str) -> Vec<&'a Recorded> {
    reqs.iter()
        .filter(|r| r.method == "PATCH" && r.path == path)
        .collect()
}

/// Replace every string starting with `from` by the same string starting with `to`; returns
/// how many were replaced.
pub fn replace_prefix(v: &mut Value, from: &str, to: &str) -> usize {
    match v {
        Value::String(s) if s.starts_with(from) => {
            *s = format!("{to}{}", &s[from.len()..]);
            1
        }
        Value::Array(a) => a.iter_mut().map(|x| replace_prefix(x, from, to)).sum(),
        Value::Object(o) => o.values_mut().map(|x| replace_prefix(x, from, to)).sum(),
        _ => 0,
    }
}

pub fn find_named<'a>(list: &'a mut Value, name: &str) -> &'a mut Value {
    list.as_array_mut()
        .and_then(|a| a.iter_mut().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("no entry named {name}"))
}

pub fn admin_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let r = client()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .map_err(|e| e.to_string())?;
    let code = r.status().as_u16();
    Ok((code, r.text().map_err(|e| e.to_string())?))
}

/// The fleet's objects, by kind and the path the leader applies them to.
pub fn fleet_paths() -> [(&'static str, String); 5] {
    [
        (
            "ServiceAccount",
            format!("/api/v1/namespaces/infra/serviceaccounts/{FLEET}"),
        ),
        (
            "Secret",
            format!("/api/v1/namespaces/infra/secrets/{FLEET}-xds"),
        ),
        (
            "ConfigMap",
            format!("/api/v1/namespaces/infra/configmaps/{FLEET}"),
        ),
        (
            "Service",
            format!("/api/v1/namespaces/infra/services/{FLEET}"),
        ),
        (
            "Deployment",
            format!("/apis/apps/v1/namespaces/infra/deployments/{FLEET}"),
        ),
    ]
}

/// Envoy's bootstrap from the applied ConfigMap, runnable outside a pod: certificates from
/// `cert_dir`, free admin/readiness ports, and the xDS cluster pointed at `xds_port` (the address
/// stays `localhost`, as do SNI and SAN).
pub fn envoy_bootstrap(configmap: &Value, cert_dir: &Path, was_port: u16, xds_port: u16) -> Value {
    let mut boot: Value = serde_json::from_str(
        configmap["data"]["bootstrap.json"]
            .as_str()
            .expect("bootstrap.json in the ConfigMap"),
    )
    .expect("bootstrap JSON");
    assert_eq!(boot["node"]["id"], "infra/web");
    let xds_cluster = find_named(&mut boot["static_resources"]["clusters"], "portcullis_xds");
    let address = &mut xds_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        ["endpoint"]["address"]["socket_address"];
    assert_eq!(
        *address,
        json!({"address": "localhost", "port_value": was_port}),
        "the bootstrap points at the xDS Service name and the leader's port"
    );
    address["port_value"] = json!(xds_port);
    let tls_ctx = &xds_cluster["transport_socket"]["typed_config"];
    assert_eq!(tls_ctx["sni"], "localhost");
    assert_eq!(
        tls_ctx["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]
            ["matcher"]["exact"],
        "localhost"
    );
    let replaced = replace_prefix(
        &mut boot,
        &format!("{}/", portcullis_kube::infra::CERT_DIR),
        &format!("{}/", cert_dir.display()),
    );
    assert_eq!(replaced, 3, "tls.crt, tls.key and ca.crt in the bootstrap");
    assert_eq!(
        boot["admin"]["address"]["pipe"]["path"],
        portcullis_kube::infra::ADMIN_SOCKET
    );
    free_local_ports(&mut boot, cert_dir.parent().unwrap_or(cert_dir));
    boot
}

/// Move a fleet bootstrap's admin socket into `dir` and its readiness listener to port 0 on
/// 127.0.0.1 (read back with [`listener_port`]; in a pod they are fixed, here several Envoys
/// share the machine). Returns the admin socket's path. Asserts the bootstrap's admin is a unix socket: no TCP port for a tenant's
/// upstream to reach.
pub fn free_local_ports(boot: &mut Value, dir: &Path) -> PathBuf {
    assert!(
        boot["admin"]["address"]["pipe"]["path"].is_string()
            && boot["admin"]["address"]["socket_address"].is_null(),
        "the fleet's admin listens on a unix socket: {}",
        boot["admin"]
    );
    let socket = dir.join("envoy-admin.sock");
    let path = json!(socket.display().to_string());
    boot["admin"]["address"]["pipe"]["path"] = path.clone();
    find_named(
        &mut boot["static_resources"]["clusters"],
        "portcullis_admin",
    )["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]
        ["path"] = path;
    // Port 0: Envoy binds an ephemeral port; `listener_port` reads it back from the admin.
    find_named(
        &mut boot["static_resources"]["listeners"],
        "portcullis_ready",
    )["address"]["socket_address"] = json!({"address": "127.0.0.1", "port_value": 0});
    socket
}

/// The port Envoy bound for its listener `name`, from `/listeners?format=json` on the admin
/// socket `socket`.
pub fn listener_port(socket: &Path, name: &str) -> Result<u16, String> {
    let (code, body) = admin_get_unix(socket, "/listeners?format=json")?;
    if code != 200 {
        return Err(format!("/listeners: HTTP {code}: {body}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("/listeners: {e}"))?;
    portcullis_integration::envoy::bound_listener_port(&v, name)
        .ok_or_else(|| format!("no bound listener {name} in {v}"))
}

/// GET `path` from an Envoy admin listening on the unix socket `socket` (HTTP/1.1, one request).
pub fn admin_get_unix(socket: &Path, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: envoy-admin\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head in {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if !chunked {
        return Ok((code, body.to_string()));
    }
    let (mut out, mut rest) = (String::new(), body);
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| "truncated chunk".to_string())?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(|e| format!("chunk size: {e}"))?;
        if n == 0 {
            return Ok((code, out));
        }
        let chunk = after
            .get(..n)
            .ok_or_else(|| "truncated chunk".to_string())?;
        out.push_str(chunk);
        rest = after.get(n + 2..).unwrap_or_default();
    }
}

/// The controller configuration both Kubernetes-mode tests run with: listeners dual-stack on
/// `[::]` (Envoy may resolve `localhost` to ::1 or 127.0.0.1), the Service name `localhost`, the
/// fleet's certificates expected in `cert_dir`.
/// The controller's xDS, wasm and admin listeners, bound on `[::]:0` on `rt` (dual-stack, as
/// `test_config` describes them), with their ports: for `portcullis::kubernetes::run_on`.
pub fn bind_listeners(
    rt: &tokio::runtime::Runtime,
) -> (portcullis::kubernetes::Listeners, (u16, u16, u16)) {
    let any = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    let bind = || {
        rt.block_on(tokio::net::TcpListener::bind(any))
            .expect("bind a controller listener")
    };
    let l = portcullis::kubernetes::Listeners {
        xds: bind(),
        wasm: bind(),
        admin: bind(),
    };
    let port = |l: &tokio::net::TcpListener| l.local_addr().expect("local addr").port();
    let ports = (port(&l.xds), port(&l.wasm), port(&l.admin));
    (l, ports)
}

pub fn test_config(
    identity: &str,
    (xds_port, wasm_port, admin_port): (u16, u16, u16),
    cache_dir: &Path,
    cert_dir: &Path,
) -> KubeRuntimeConfig {
    let dual = |port: u16| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    KubeRuntimeConfig {
        controller_name: OURS.into(),
        xds_addr: dual(xds_port),
        wasm_addr: dual(wasm_port),
        admin_addr: dual(admin_port),
        xds_mode: XdsMode::Sotw,
        xds_service: "localhost".into(),
        xds_service_port: xds_port,
        wasm_service_port: wasm_port,
        namespace: CONTROLLER_NS.into(),
        identity: identity.into(),
        envoy_image: portcullis_kube::infra::DEFAULT_ENVOY_IMAGE.into(),
        manage_infra: true,
        leader_election: true,
        lease_name: "portcullis-leader".into(),
        lease_duration: Duration::from_secs(15),
        lease_renew: Duration::from_secs(5),
        ca_secret: "portcullis-xds-ca".into(),
        session_secret_name: "portcullis-session".into(),
        cache_dir: cache_dir.to_path_buf(),
        cache_max_bytes: 256 << 20,
        wasm_retry_initial: Duration::from_millis(500),
        wasm_retry_max: Duration::from_secs(5),
        debounce: Duration::from_millis(200),
        max_batch_delay: Duration::from_secs(2),
        listener_address: "127.0.0.1".into(),
        ephemeral_listener_ports: false,
        builtin_wasm_dir: None,
        builtin_wasm_urls: BTreeMap::new(),
        dynamic_module_dir: None,
        builtin_runtime: Some(portcullis_translator::BuiltinRuntime::Wasm),
        ratelimit_service: None,
        fleet_cert_dir: cert_dir.display().to_string(),
        bound_addresses_file: None,
        watch_namespaces: Vec::new(),
        fleet_network_policy: false,
        fleet_metrics_namespaces: Vec::new(),
        // The tests' upstreams are local Backends (Envoy Gateway gates the kind the same way).
        egress: portcullis_translator::egress::EgressPolicy::allowing([
            "127.0.0.0/8".parse().expect("cidr"),
            "::1/128".parse().expect("cidr"),
        ]),
    }
}

// ------------------------------------------------------------------------ a running controller

/// `portcullis::kubernetes::run` on `rt` against a fresh [`ApiServer`] with `lists`, the store
/// seeded with `seed` (object path -> object) first.
pub struct Running {
    pub api: ApiServer,
    /// The ports the controller's xDS, wasm and admin listeners bound (port 0).
    pub xds_port: u16,
    pub wasm_port: u16,
    pub admin_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    ended: Arc<Mutex<Option<String>>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Run the controller on listeners bound on port 0 (`cfg`'s addresses are ignored; service
    /// ports of 0 become the bound ports).
    pub fn start(
        rt: &tokio::runtime::Runtime,
        cfg: KubeRuntimeConfig,
        lists: BTreeMap<String, Vec<Value>>,
        seed: Vec<(String, Value)>,
    ) -> Running {
        let (listeners, (xds_port, wasm_port, admin_port)) = bind_listeners(rt);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let (api, task) = rt.block_on(async {
            let (client, api) = ApiServer::start(lists);
            for (path, obj) in seed {
                api.put(&path, obj);
            }
            let ended = ended.clone();
            let task = tokio::spawn(async move {
                let r = portcullis::kubernetes::run_on(cfg, listeners, client, async {
                    let _ = stop_rx.await;
                })
                .await;
                *ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{r:?}"));
                r
            });
            (api, task)
        });
        Running {
            api,
            xds_port,
            wasm_port,
            admin_port,
            stop: Some(stop_tx),
            ended,
            task: Some(task),
        }
    }

    /// Why waiting is pointless: `run` returned.
    pub fn gone(&self) -> Option<String> {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| format!("portcullis::kubernetes::run returned early: {r}"))
    }

    /// Stop `run` and wait (bounded) for it to return.
    pub fn stop(&mut self, rt: &tokio::runtime::Runtime) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let r =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), task).await });
            let r = r
                .expect("run returns within 30s of shutdown")
                .expect("join");
            assert!(r.is_ok(), "run failed: {r:?}");
        }
    }
}

/// Spread cluster-wide collections into per-namespace ones (`.../namespaces/<ns>/<plural>`),
/// for a provider scoped with `--watch-namespace`. Cluster-scoped kinds (GatewayClass,
/// Namespace) stay; the cluster-wide collections stay too, so a provider that listed them
/// would see everything.
pub fn with_namespaced_paths(lists: BTreeMap<String, Vec<Value>>) -> BTreeMap<String, Vec<Value>> {
    let mut out = lists.clone();
    for (path, items) in &lists {
        if path.ends_with("/gatewayclasses") || path.ends_with("/namespaces") {
            continue;
        }
        let Some((prefix, plural)) = path.rsplit_once('/') else {
            continue;
        };
        for item in items {
            let ns = item["metadata"]["namespace"].as_str().unwrap_or_default();
            out.entry(format!("{prefix}/namespaces/{ns}/{plural}"))
                .or_default()
                .push(item.clone());
        }
    }
    out
}
