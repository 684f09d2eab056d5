//! `portcullis ratelimit-server`: Envoy's rate-limit service (`envoy.service.ratelimit.v3`,
//! `ShouldRateLimit`) with its counts in Redis.
//!
//! - The limit of a descriptor is its `limit` override (the Portcullis filter always sends
//!   one) where the operator allowed overrides for its domain (`--allow-limit-override`), else
//!   the `--config` file (envoyproxy/ratelimit YAML shape), else none (OK). An override for a
//!   domain not allowed is refused (`PERMISSION_DENIED`).
//! - Counting is one atomic Lua script per descriptor (fixed or sliding window, `--algorithm`),
//!   with window keys that expire, so any number of replicas on one Redis give one count. Keys
//!   are hashes (bounded length); each rule counts a bounded number of distinct keys per window
//!   (`--max-keys-per-rule`, `--on-key-cap`).
//! - Requests are bounded (descriptors, entries, key and value bytes): `INVALID_ARGUMENT`.
//! - Redis errors answer gRPC UNAVAILABLE: the caller's failure mode decides.
//! - `--tls-cert`, `--tls-key`, `--client-ca`: mutual TLS (see [`tls`]).
//! - The Redis URL's credentials never reach a log line or an error ([`redact`]).

pub mod config;
pub mod redact;
pub mod service;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

pub use service::OnKeyCap;
pub use store::Algorithm;

/// Defaults of the request bounds and the key cap (see [`Args`]).
pub const DEFAULT_MAX_DESCRIPTORS: u32 = 64;
pub const DEFAULT_MAX_DESCRIPTOR_ENTRIES: u32 = 32;
pub const DEFAULT_MAX_ENTRY_KEY_BYTES: u32 = 256;
/// 64 KiB: more than Envoy's default limit on all request headers together (60 KiB), so no value
/// a default Envoy forwards is refused for its length (a refusal follows the caller's failure
/// mode, which may be `allow`).
pub const DEFAULT_MAX_ENTRY_VALUE_BYTES: u32 = 65_536;
pub const DEFAULT_MAX_KEYS_PER_RULE: u64 = 100_000;

#[derive(Clone, clap::Args)]
pub struct Args {
    /// Redis URL (`redis://[user:password@]host:port[/db]`, `unix:///path?pass=..`). Its
    /// credentials are never logged.
    #[arg(
        long,
        env = "PORTCULLIS_RATELIMIT_REDIS",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis: String,
    /// gRPC listen address.
    #[arg(
        long,
        env = "PORTCULLIS_RATELIMIT_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub addr: SocketAddr,
    /// Limits per domain and descriptor (envoyproxy/ratelimit YAML); optional when every
    /// request carries its limit.
    #[arg(long, env = "PORTCULLIS_RATELIMIT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Counting algorithm.
    #[arg(long, value_enum, default_value = "fixed")]
    pub algorithm: Algorithm,
    /// Prefix of every Redis key (at most 64 bytes; no braces, whitespace or controls).
    #[arg(long, default_value = "portcullis-rl")]
    pub key_prefix: String,
    /// Domains whose requests may carry a descriptor `limit` override (the Portcullis ratelimit
    /// filter always sends one; BackendTrafficPolicy translation uses domain `portcullis`).
    /// Repeat the flag or separate with commas; `*` allows every domain. Default: none, and a
    /// request with an override for any other domain is refused (PERMISSION_DENIED), because
    /// whoever can reach the server could otherwise choose their own limit.
    #[arg(
        long = "allow-limit-override",
        value_name = "DOMAIN",
        env = "PORTCULLIS_RATELIMIT_ALLOW_LIMIT_OVERRIDE",
        value_delimiter = ','
    )]
    pub allow_limit_override: Vec<String>,
    /// Most descriptors in one request (else INVALID_ARGUMENT).
    #[arg(long, default_value_t = DEFAULT_MAX_DESCRIPTORS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_descriptors: u32,
    /// Most entries in one descriptor (else INVALID_ARGUMENT).
    #[arg(long, default_value_t = DEFAULT_MAX_DESCRIPTOR_ENTRIES, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_descriptor_entries: u32,
    /// Longest entry key, and domain, in bytes (else INVALID_ARGUMENT).
    #[arg(long, default_value_t = DEFAULT_MAX_ENTRY_KEY_BYTES, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_entry_key_bytes: u32,
    /// Longest entry value in bytes (else INVALID_ARGUMENT, and the caller's failure mode
    /// applies). The default is above Envoy's default 60 KiB for all request headers.
    #[arg(long, default_value_t = DEFAULT_MAX_ENTRY_VALUE_BYTES, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_entry_value_bytes: u32,
    /// Most distinct descriptors one rule (domain + window + entry keys) counts per window
    /// (a Redis HyperLogLog per rule and window, so about ±1%); 0: no cap.
    #[arg(long, default_value_t = DEFAULT_MAX_KEYS_PER_RULE)]
    pub max_keys_per_rule: u64,
    /// Answer for a descriptor new to a rule at --max-keys-per-rule: `over-limit` (never stop
    /// limiting) or `allow` (OK, not counted). Both log a warning.
    #[arg(long, value_enum, default_value = "over-limit")]
    pub on_key_cap: OnKeyCap,
    /// Server certificate chain (PEM). With --tls-key and --client-ca: mutual TLS, plaintext
    /// refused.
    #[arg(long, env = "PORTCULLIS_RATELIMIT_TLS_CERT", requires_all = ["tls_key", "client_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "PORTCULLIS_RATELIMIT_TLS_KEY", requires_all = ["tls_cert", "client_ca"])]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) client certificates must chain to (in Kubernetes mode the controller's
    /// CA, which signs the fleet's client certificates).
    #[arg(long, env = "PORTCULLIS_RATELIMIT_CLIENT_CA", requires_all = ["tls_cert", "tls_key"])]
    pub client_ca: Option<PathBuf>,
}

impl Args {
    /// The CLI's defaults with this Redis URL (for callers that start the server in-process).
    pub fn new(redis: impl Into<String>) -> Self {
        Self {
            redis: redis.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            config: None,
            algorithm: Algorithm::Fixed,
            key_prefix: "portcullis-rl".into(),
            allow_limit_override: Vec::new(),
            max_descriptors: DEFAULT_MAX_DESCRIPTORS,
            max_descriptor_entries: DEFAULT_MAX_DESCRIPTOR_ENTRIES,
            max_entry_key_bytes: DEFAULT_MAX_ENTRY_KEY_BYTES,
            max_entry_value_bytes: DEFAULT_MAX_ENTRY_VALUE_BYTES,
            max_keys_per_rule: DEFAULT_MAX_KEYS_PER_RULE,
            on_key_cap: OnKeyCap::OverLimit,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
        }
    }

    fn policy(&self) -> service::Policy {
        let n = |v: u32| usize::try_from(v.max(1)).unwrap_or(usize::MAX);
        service::Policy {
            bounds: service::Bounds {
                max_descriptors: n(self.max_descriptors),
                max_entries: n(self.max_descriptor_entries),
                max_key_bytes: n(self.max_entry_key_bytes),
                max_value_bytes: n(self.max_entry_value_bytes),
            },
            overrides: service::OverridePolicy::from_flags(&self.allow_limit_override),
            max_keys_per_rule: self.max_keys_per_rule,
            on_key_cap: self.on_key_cap,
        }
    }
}

/// Redacted: the Redis URL's credentials stay out of `{:?}` too.
impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("redis", &redact::redact_url(&self.redis))
            .field("addr", &self.addr)
            .field("config", &self.config)
            .field("algorithm", &self.algorithm)
            .field("key_prefix", &self.key_prefix)
            .field("allow_limit_override", &self.allow_limit_override)
            .field("max_descriptors", &self.max_descriptors)
            .field("max_descriptor_entries", &self.max_descriptor_entries)
            .field("max_entry_key_bytes", &self.max_entry_key_bytes)
            .field("max_entry_value_bytes", &self.max_entry_value_bytes)
            .field("max_keys_per_rule", &self.max_keys_per_rule)
            .field("on_key_cap", &self.on_key_cap)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("client_ca", &self.client_ca)
            .finish()
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    serve(args, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Serves until `shutdown` completes (tests run replicas in-process and stop them this way).
pub async fn serve(
    args: Args,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listen on {}", args.addr))?;
    serve_on(args, listener, shutdown).await
}

/// [`serve`] on a listener the caller already bound (`args.addr` is ignored): tests bind
/// port 0 and pass the listener on, so no port is chosen first and bound later.
pub async fn serve_on(
    args: Args,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let limits = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            config::Limits::from_yaml(&text)
                .with_context(|| format!("config {}", path.display()))?
        }
        None => config::Limits::default(),
    };
    let tls = tls::server_config(tls::TlsPaths {
        cert: args.tls_cert.as_deref(),
        key: args.tls_key.as_deref(),
        client_ca: args.client_ca.as_deref(),
    })?;
    let redis_shown = redact::redact_url(&args.redis);
    let store = store::Store::connect(&args.redis, args.algorithm, &args.key_prefix)
        .await
        .with_context(|| format!("connect to Redis at {redis_shown}"))?;
    let local = listener.local_addr().context("local address")?;
    let policy = args.policy();
    tracing::info!(
        addr = %local,
        redis = %redis_shown,
        algorithm = ?args.algorithm,
        tls = if tls.is_some() { "mutual" } else { "off (plaintext)" },
        allow_limit_override = ?policy.overrides,
        max_keys_per_rule = policy.max_keys_per_rule,
        on_key_cap = ?policy.on_key_cap,
        "ratelimit-server listening"
    );
    if tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!(addr = %local, "serving plaintext without client authentication on a non-loopback address: set --tls-cert, --tls-key and --client-ca, or restrict who reaches it (docs/ratelimit.md, NetworkPolicy)");
    }
    let svc = service::RateLimit::new(Arc::new(limits), store, policy);
    // grpc.health.v1: SERVING once Redis answered at startup (the connection manager
    // reconnects on its own; a Redis outage shows as UNAVAILABLE answers, not as unhealthy).
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<service::Server>().await;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("TLS configuration")?;
    }
    builder
        .add_service(health_svc)
        .add_service(service::server(svc))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
        .context("gRPC server")?;
    Ok(())
}
