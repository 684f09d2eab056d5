//! Prometheus metrics of the controller, served as text on the admin endpoint's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub type_url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabel {
    pub gateway: String,
}

/// Every metric the controller exports. Cheap to clone (all handles are `Arc`s inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub translations: Family<ResultLabel, Counter>,
    pub snapshot_generation: Gauge,
    pub xds_streams: Gauge,
    pub xds_pushes: Family<TypeLabel, Counter>,
    pub xds_acks: Family<TypeLabel, Counter>,
    pub xds_nacks: Family<TypeLabel, Counter>,
    pub wasm_fetches: Family<ResultLabel, Counter>,
    pub wasm_cache_bytes: Gauge,
    pub envoy_starts: Family<GatewayLabel, Counter>,
    pub envoys_running: Gauge,
    pub load_errors: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("portcullis");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            translations: Family::default(),
            snapshot_generation: Gauge::default(),
            xds_streams: Gauge::default(),
            xds_pushes: Family::default(),
            xds_acks: Family::default(),
            xds_nacks: Family::default(),
            wasm_fetches: Family::default(),
            wasm_cache_bytes: Gauge::default(),
            envoy_starts: Family::default(),
            envoys_running: Gauge::default(),
            load_errors: Gauge::default(),
        };
        r.register(
            "translations",
            "Translation runs by result",
            m.translations.clone(),
        );
        r.register(
            "snapshot_generation",
            "Generation of the xDS snapshot being served",
            m.snapshot_generation.clone(),
        );
        r.register("xds_streams", "Open ADS streams", m.xds_streams.clone());
        r.register(
            "xds_pushes",
            "xDS responses sent, by type",
            m.xds_pushes.clone(),
        );
        r.register(
            "xds_acks",
            "xDS responses ACKed by Envoy, by type",
            m.xds_acks.clone(),
        );
        r.register(
            "xds_nacks",
            "xDS responses rejected (NACKed) by Envoy, by type",
            m.xds_nacks.clone(),
        );
        r.register(
            "wasm_fetches",
            "Wasm module fetch attempts by result",
            m.wasm_fetches.clone(),
        );
        r.register(
            "wasm_cache_bytes",
            "Bytes of wasm modules in the disk cache",
            m.wasm_cache_bytes.clone(),
        );
        r.register(
            "envoy_starts",
            "Envoy process starts, by Gateway",
            m.envoy_starts.clone(),
        );
        r.register(
            "envoys_running",
            "Envoy processes running",
            m.envoys_running.clone(),
        );
        r.register(
            "load_errors",
            "Manifests or documents that failed to load",
            m.load_errors.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub fn type_label(type_url: &str) -> TypeLabel {
    TypeLabel {
        type_url: short_type(type_url).to_string(),
    }
}

/// `type.googleapis.com/envoy.config.listener.v3.Listener` -> `Listener`.
pub fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}
