//! HTTP endpoint serving cached wasm modules to Envoy (`remote` code source pinned by sha256):
//! `GET /wasm/<sha256>.wasm`. Envoy never reaches the origin registry or URL itself.

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
        .route("/wasm/{file}", get(serve_module))
        .with_state(Arc::new(cache_dir))
}

async fn serve_module(State(dir): State<Arc<PathBuf>>, Path(file): Path<String>) -> Response {
    let sha = file.strip_suffix(".wasm").unwrap_or(&file);
    // Only exact digests: no path traversal, no listing.
    if !is_sha256_hex(sha) {
        return (StatusCode::NOT_FOUND, "not a sha256\n").into_response();
    }
    match tokio::fs::read(dir.join(format!("{sha}.wasm"))).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, "no such module\n").into_response()
        }
        Err(e) => {
            tracing::warn!(sha, error = %e, "cannot read cached wasm module");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot read module\n").into_response()
        }
    }
}
