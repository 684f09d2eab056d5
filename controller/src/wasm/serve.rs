//! HTTP endpoint serving cached wasm modules to Envoy (`remote` code source pinned by sha256):
//! `GET /wasm/<sha256>.wasm`, and dynamic modules (shared libraries, `remote` source pinned by
//! sha256): `GET /dynamic/<sha256>.so`. Envoy never reaches the origin registry or URL itself.
//! Both kinds share one content-addressed store, so a route only picks the suffix and the
//! content type.

use crate::tls::TlsListener;
use crate::wasm::access::ModuleAccess;
use crate::wasm::cache::is_sha256_hex;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::path::PathBuf;
use std::sync::Arc;

pub fn router(cache_dir: PathBuf) -> Router {
    Router::new()
        .route("/wasm/{file}", get(serve_wasm))
        .route("/dynamic/{file}", get(serve_dynamic))
        .with_state(Arc::new(cache_dir))
}

async fn serve_wasm(State(dir): State<Arc<PathBuf>>, Path(file): Path<String>) -> Response {
    serve_module(&dir, &file, WASM.0, WASM.1).await
}

async fn serve_dynamic(State(dir): State<Arc<PathBuf>>, Path(file): Path<String>) -> Response {
    serve_module(&dir, &file, DYNAMIC.0, DYNAMIC.1).await
}

/// The fleet on the other end of a verified connection (`None`: its certificate names no
/// Gateway).
#[derive(Debug, Clone)]
pub struct PeerNode(pub Option<String>);

impl Connected<axum::serve::IncomingStream<'_, TlsListener>> for PeerNode {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerNode(stream.io().peer().node_id.clone())
    }
}

#[derive(Clone)]
struct Authorized {
    dir: Arc<PathBuf>,
    access: ModuleAccess,
}

/// [`router`] for fleets that present client certificates (Kubernetes mode): a fleet gets only
/// the modules its own Gateway's configuration references (403 otherwise). Serve it with
/// `into_make_service_with_connect_info::<PeerNode>()` on a [`TlsListener`].
pub fn authorized_router(cache_dir: PathBuf, access: ModuleAccess) -> Router {
    Router::new()
        .route(
            "/wasm/{file}",
            get(|State(a), ConnectInfo(p), Path(f)| authorized_module(a, p, f, WASM)),
        )
        .route(
            "/dynamic/{file}",
            get(|State(a), ConnectInfo(p), Path(f)| authorized_module(a, p, f, DYNAMIC)),
        )
        .with_state(Authorized {
            dir: Arc::new(cache_dir),
            access,
        })
}

/// `(suffix, content type)` of the two module kinds.
type ModuleKind = (&'static str, &'static str);
const WASM: ModuleKind = (".wasm", "application/wasm");
const DYNAMIC: ModuleKind = (".so", "application/octet-stream");

async fn authorized_module(
    a: Authorized,
    peer: PeerNode,
    file: String,
    (suffix, ctype): ModuleKind,
) -> Response {
    if let Some(denied) = refuse(&a.access, &peer, &file, suffix) {
        return denied;
    }
    serve_module(&a.dir, &file, suffix, ctype).await
}

fn refuse(access: &ModuleAccess, peer: &PeerNode, file: &str, suffix: &str) -> Option<Response> {
    let sha = file.strip_suffix(suffix).unwrap_or(file);
    match &peer.0 {
        Some(node) if access.allows(node, sha) => None,
        node => {
            tracing::warn!(node = ?node, sha = ?sha, "refused a module this fleet's configuration does not reference");
            Some(
                (
                    StatusCode::FORBIDDEN,
                    "module not referenced by this Gateway's configuration\n",
                )
                    .into_response(),
            )
        }
    }
}

async fn serve_module(
    dir: &std::path::Path,
    file: &str,
    suffix: &str,
    ctype: &'static str,
) -> Response {
    let sha = file.strip_suffix(suffix).unwrap_or(file);
    // Only exact digests: no path traversal, no listing.
    if !is_sha256_hex(sha) {
        return (StatusCode::NOT_FOUND, "not a sha256\n").into_response();
    }
    match tokio::fs::read(dir.join(format!("{sha}.wasm"))).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, ctype)], bytes).into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, "no such module\n").into_response()
        }
        Err(e) => {
            tracing::warn!(sha, error = %e, "cannot read cached wasm module");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot read module\n").into_response()
        }
    }
}
