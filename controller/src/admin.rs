//! The controller's admin endpoint: `/healthz`, `/readyz`, `/metrics` (Prometheus text) and
//! `/status` (JSON: every resource with its conditions, load errors, xDS ACK/NACK state per
//! node, wasm modules and Envoy processes) and `/status/xds` (only the xDS part).

use crate::infra::host::{EnvoyStatus, HostInfra};
use crate::metrics::Metrics;
use crate::wasm::cache::{ModuleStatus, WasmCache};
use crate::xds::server::{XdsServer, XdsStatus};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use portcullis_translator::status::ResourceStatus;
use portcullis_translator::GatewayInfra;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};

/// A manifest (or one document in it) that could not be loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadErrorView {
    pub source: String,
    /// Index of the YAML document within the file (None: the file itself).
    pub document: Option<usize>,
    pub reason: String,
}

impl From<portcullis_translator::LoadError> for LoadErrorView {
    fn from(e: portcullis_translator::LoadError) -> Self {
        Self {
            source: e.source_name,
            document: Some(e.index),
            reason: e.reason,
        }
    }
}

/// The latest translation's results.
#[derive(Debug, Clone, Default)]
pub struct Board {
    pub controller_name: String,
    /// Shared, so a `/status` poll copies pointers, not every resource's conditions.
    pub resources: Arc<[ResourceStatus]>,
    pub load_errors: Arc<[LoadErrorView]>,
    pub gateways: Arc<[GatewayInfra]>,
    pub translations: u64,
    /// Wall time of the last read + parse + translate, in milliseconds.
    pub last_translate_ms: u64,
}

/// A health check beyond "translated once": whether it passes, and a JSON body saying why.
pub type Probe = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Metrics,
    pub xds: XdsServer,
    pub infra: Option<Arc<HostInfra>>,
    pub cache: WasmCache,
    pub board: Arc<RwLock<Board>>,
    /// Kubernetes mode: `/readyz` also needs every watch synced, `/healthz` the watches alive.
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
}

/// The `/status` document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDoc<'a> {
    pub controller_name: &'a str,
    pub translations: u64,
    pub last_translate_ms: u64,
    pub resources: &'a [ResourceStatus],
    pub load_errors: &'a [LoadErrorView],
    pub gateways: &'a [GatewayInfra],
    pub xds: XdsStatus,
    pub wasm: Vec<ModuleStatus>,
    pub envoys: Vec<EnvoyStatus>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/status/xds", get(xds_status))
        .with_state(state)
}

fn probe_reply(ok: bool, mut body: serde_json::Value) -> axum::response::Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    body["ok"] = serde_json::Value::Bool(ok);
    (code, Json(body)).into_response()
}

async fn healthz(State(s): State<AdminState>) -> axum::response::Response {
    match &s.liveness {
        Some(p) => {
            let (ok, body) = p();
            probe_reply(ok, body)
        }
        None => "ok\n".into_response(),
    }
}

async fn readyz(State(s): State<AdminState>) -> axum::response::Response {
    let translated = s.board.read().map(|b| b.translations > 0).unwrap_or(false);
    if let Some(p) = &s.readiness {
        let (ok, mut body) = p();
        body["translated"] = serde_json::Value::Bool(translated);
        return probe_reply(ok && translated, body);
    }
    if translated {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not translated yet\n").into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Only the xDS part of `/status`: cheap to poll while waiting for Envoys to ACK.
async fn xds_status(State(s): State<AdminState>) -> impl IntoResponse {
    Json(s.xds.status())
}

async fn status(State(s): State<AdminState>) -> axum::response::Response {
    // A clone of shared parts: the lock is not held while serializing, so a publish never
    // waits for a poll.
    let board = s.board.read().unwrap_or_else(|p| p.into_inner()).clone();
    let (xds, wasm) = (s.xds.status(), s.cache.modules());
    let envoys = s.infra.as_ref().map(|i| i.status()).unwrap_or_default();
    let doc = StatusDoc {
        controller_name: &board.controller_name,
        translations: board.translations,
        last_translate_ms: board.last_translate_ms,
        resources: &board.resources,
        load_errors: &board.load_errors,
        gateways: &board.gateways,
        xds,
        wasm,
        envoys,
    };
    match serde_json::to_vec(&doc) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}
