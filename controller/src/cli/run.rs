//! `portcullis run`: watch manifests, serve xDS, run one Envoy per Gateway.

use crate::infra::host::XdsMode;
use crate::runtime::{self, EnvoyConfig, RuntimeConfig};
use anyhow::Context;
use portcullis_translator::wasm::source::WasmSource;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Manifest file or directory (recursive; multi-document YAML). Repeatable.
    #[arg(short = 'f', long = "file", value_name = "PATH", required = true)]
    pub files: Vec<PathBuf>,
    /// GatewayClasses with this controllerName are ours.
    #[arg(long, default_value = portcullis_translator::DEFAULT_CONTROLLER_NAME)]
    pub controller_name: String,
    /// gRPC ADS address Envoys connect to (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds_addr: SocketAddr,
    /// xDS protocol variant the managed Envoys use.
    #[arg(long, value_enum, default_value_t = XdsMode::Sotw)]
    pub xds_mode: XdsMode,
    /// HTTP address serving cached wasm modules to Envoy.
    #[arg(long, default_value = "127.0.0.1:18002")]
    pub wasm_addr: SocketAddr,
    /// Admin endpoint: /healthz, /readyz, /metrics, /status.
    #[arg(long, default_value = "127.0.0.1:19100")]
    pub admin_addr: SocketAddr,
    /// Envoy binary (default: `envoy` on PATH).
    #[arg(long, env = "PORTCULLIS_ENVOY_BIN")]
    pub envoy_bin: Option<PathBuf>,
    /// Serve xDS only; do not start Envoys.
    #[arg(long)]
    pub no_envoy: bool,
    /// Worker threads per Envoy (default: Envoy's own, one per core).
    #[arg(long)]
    pub envoy_concurrency: Option<u32>,
    /// Envoy's --log-level.
    #[arg(long, default_value = "warning")]
    pub envoy_log_level: String,
    /// Seconds to let open connections finish when an Envoy is drained.
    #[arg(long, default_value_t = 5)]
    pub drain_timeout: u64,
    /// Where Envoy bootstraps and logs go (default: a fresh temporary directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Wasm module disk cache (default: ~/.cache/portcullis/wasm).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Size bound of the wasm cache in MiB; least recently used modules not in use go first.
    #[arg(long, default_value_t = 512)]
    pub cache_max_mib: u64,
    /// First retry delay of a failed wasm fetch, in milliseconds (doubles each time).
    #[arg(long, default_value_t = 1000)]
    pub wasm_retry_initial_ms: u64,
    /// Longest retry delay of a failed wasm fetch, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub wasm_retry_max_ms: u64,
    /// Address Envoy listeners bind to.
    #[arg(long, default_value = "0.0.0.0")]
    pub listener_address: String,
    /// Wait this long (ms) after a file change before re-reading, so editors finish writing.
    #[arg(long, default_value_t = 150)]
    pub debounce_ms: u64,
    /// Directory with the built-in filter modules `oidc.wasm` and `ratelimit.wasm` (used for
    /// SecurityPolicy oidc and BackendTrafficPolicy rateLimit). Default: `dist/wasm` under the
    /// current directory, else `../wasm` beside the executable: the first holding a module.
    #[arg(long, value_name = "DIR")]
    pub builtin_wasm_dir: Option<PathBuf>,
    /// Fetch a built-in module from a URL instead: `NAME=URL[@sha256]`, NAME `oidc` or
    /// `ratelimit`. Repeatable; wins over --builtin-wasm-dir.
    #[arg(long, value_name = "NAME=URL[@SHA256]", value_parser = crate::builtin::parse_builtin_url)]
    pub builtin_wasm_url: Vec<(String, WasmSource)>,
    /// File with the 32-byte key OIDC session cookies derive from (64 hex characters or 32 raw
    /// bytes). Default: `session-secret` in the cache dir, created (random, mode 0600) on first
    /// start. Share it between replicas so sessions survive a failover.
    #[arg(long, value_name = "PATH")]
    pub session_secret_file: Option<PathBuf>,
    /// `HOST:PORT` of the rate-limit gRPC service (`portcullis ratelimit-server`) for
    /// BackendTrafficPolicy global limits.
    #[arg(long, value_name = "HOST:PORT", value_parser = crate::builtin::parse_host_port)]
    pub ratelimit_service: Option<String>,
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing();
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("portcullis-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating work dir {}", work_dir.display()))?;
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(crate::wasm::cache::default_cache_dir);
    let secret_path = args
        .session_secret_file
        .clone()
        .unwrap_or_else(|| cache_dir.join(crate::builtin::SESSION_SECRET_FILE));
    let session_secret = crate::builtin::load_or_create_session_secret(&secret_path)?;
    let builtin_wasm_dir = match &args.builtin_wasm_dir {
        Some(d) => Some(d.clone()),
        None => {
            let d = crate::builtin::default_builtin_dir();
            if d.is_none() {
                tracing::warn!("no built-in wasm directory (dist/wasm, ../wasm beside the executable); SecurityPolicy oidc and BackendTrafficPolicy rateLimit need --builtin-wasm-dir");
            }
            d
        }
    };
    let cfg = RuntimeConfig {
        paths: args.files.clone(),
        controller_name: args.controller_name.clone(),
        xds_addr: args.xds_addr,
        wasm_addr: args.wasm_addr,
        admin_addr: args.admin_addr,
        envoy: (!args.no_envoy).then(|| EnvoyConfig {
            bin: args.envoy_bin.clone(),
            concurrency: args.envoy_concurrency,
            log_level: args.envoy_log_level.clone(),
            drain_timeout: Duration::from_secs(args.drain_timeout),
        }),
        xds_mode: args.xds_mode,
        cache_dir,
        cache_max_bytes: args.cache_max_mib.saturating_mul(1 << 20),
        wasm_retry_initial: Duration::from_millis(args.wasm_retry_initial_ms.max(1)),
        wasm_retry_max: Duration::from_millis(
            args.wasm_retry_max_ms
                .max(args.wasm_retry_initial_ms)
                .max(1),
        ),
        work_dir: work_dir.clone(),
        listener_address: args.listener_address.clone(),
        debounce: Duration::from_millis(args.debounce_ms),
        builtin_wasm_dir,
        builtin_wasm_urls: args.builtin_wasm_url.iter().cloned().collect(),
        session_secret: Some(session_secret),
        ratelimit_service: args.ratelimit_service.clone(),
    };
    tracing::info!(work_dir = %work_dir.display(), cache_dir = %cfg.cache_dir.display(), "starting");
    runtime::run(cfg, shutdown_signal()).await?;
    if args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
