//! HTTP endpoint serving cached wasm modules to Envoy (`remote` code source pinned by sha256):
//! `GET /wasm/<sha256>.wasm`, and dynamic modules (shared libraries, `remote` source pinned by
//! sha256): `GET /dynamic/<sha256>.so`. Envoy never reaches the origin registry or URL itself.
//! Both kinds share one content-addressed store, so a route only picks the suffix and the
//! content type.

use crate::wasm::cache::is_sha256_hex;
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
    serve_module(&dir, &file, ".wasm", "application/wasm").await
}

async fn serve_dynamic(State(dir): State<Arc<PathBuf>>, Path(file): Path<String>) -> Response {
    serve_module(&dir, &file, ".so", "application/octet-stream").await
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
