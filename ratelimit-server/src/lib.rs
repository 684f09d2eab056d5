//! `portcullis ratelimit-server`: Envoy's rate-limit service (`envoy.service.ratelimit.v3`,
//! `ShouldRateLimit`) with its counts in Redis.
//!
//! - The limit of a descriptor is its `limit` override (the Portcullis filter always sends
//!   one), else the `--config` file (envoyproxy/ratelimit YAML shape), else none (OK).
//! - Counting is one atomic Lua script per descriptor (fixed or sliding window, `--algorithm`),
//!   with window keys that expire, so any number of replicas on one Redis give one count.
//! - Redis errors answer gRPC UNAVAILABLE: the caller's failure mode decides.

pub mod config;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

pub use store::Algorithm;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Redis URL.
    #[arg(
        long,
        env = "PORTCULLIS_RATELIMIT_REDIS",
        default_value = "redis://127.0.0.1:6379"
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
    /// Prefix of every Redis key.
    #[arg(long, default_value = "portcullis-rl")]
    pub key_prefix: String,
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
    let store = store::Store::connect(&args.redis, args.algorithm, &args.key_prefix)
        .await
        .with_context(|| format!("connect to Redis at {}", args.redis))?;
    let local = listener.local_addr().context("local address")?;
    tracing::info!(addr = %local, redis = %args.redis, algorithm = ?args.algorithm, "ratelimit-server listening");
    let svc = service::RateLimit::new(Arc::new(limits), store);
    // grpc.health.v1: SERVING once Redis answered at startup (the connection manager
    // reconnects on its own; a Redis outage shows as UNAVAILABLE answers, not as unhealthy).
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<service::Server>().await;
    tonic::transport::Server::builder()
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
