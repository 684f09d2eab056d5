//! `portcullis run`: watch manifests (or the Kubernetes API), serve xDS, run one Envoy per
//! Gateway (or, on Kubernetes, an Envoy Deployment per Gateway).

use crate::infra::host::XdsMode;
use crate::kubernetes::KubeRuntimeConfig;
use crate::runtime::{self, EnvoyConfig, RuntimeConfig};
use anyhow::Context;
use portcullis_translator::wasm::source::WasmSource;
use portcullis_translator::BuiltinRuntime;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Where Gateway API and Envoy Gateway resources come from: manifest files (`-f`), or the
    /// Kubernetes API (in-cluster config or $KUBECONFIG).
    #[arg(long, value_enum, default_value_t = Provider::File)]
    pub provider: Provider,
    /// Manifest file or directory (recursive; multi-document YAML). Repeatable. Required with
    /// `--provider file`.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
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
    /// Once the admin, xDS and wasm listeners are bound, write the addresses they got to PATH
    /// as JSON (`{"admin":"127.0.0.1:40123","xds":...,"wasm":...}`, written atomically): how
    /// to learn the ports when the addresses above use port 0.
    #[arg(long, value_name = "PATH")]
    pub bound_addresses_file: Option<PathBuf>,
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
    #[arg(long, visible_alias = "wasm-cache-dir")]
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
    /// Bind every Gateway listener on a port the kernel picks (port 0) instead of the
    /// Gateway's own port; listener names keep the Gateway port (`<ns>/<gateway>/<port>`). Read
    /// the bound ports from the Envoy admin (`/listeners`; `adminAddr` in `portcullis status`).
    /// For tests and local runs on a busy machine.
    #[arg(long)]
    pub ephemeral_listener_ports: bool,
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
    /// Directory with the dynamic module `libportcullis.so`, served to the Envoys this
    /// controller manages. Default: `dist/dynamic` under the current directory, else the
    /// executable's directory, else `../dynamic` beside it.
    #[arg(long, value_name = "DIR")]
    pub dynamic_module_dir: Option<PathBuf>,
    /// Runtime of the built-in filters (SecurityPolicy oidc, BackendTrafficPolicy rateLimit):
    /// `wasm` (`oidc.wasm`, `ratelimit.wasm`) or `dynamic` (`libportcullis.so`, Envoy 1.40).
    /// Default: `dynamic` when the library is found, else `wasm`.
    #[arg(long, value_name = "wasm|dynamic")]
    pub builtin_runtime: Option<BuiltinRuntime>,
    /// File with the 32-byte key OIDC session cookies derive from (64 hex characters or 32 raw
    /// bytes). Default: `session-secret` in the cache dir, created (random, mode 0600) on first
    /// start. Share it between replicas so sessions survive a failover.
    #[arg(long, value_name = "PATH")]
    pub session_secret_file: Option<PathBuf>,
    /// `HOST:PORT` of the rate-limit gRPC service (`portcullis ratelimit-server`) for
    /// BackendTrafficPolicy global limits.
    #[arg(long, value_name = "HOST:PORT", value_parser = crate::builtin::parse_host_port)]
    pub ratelimit_service: Option<String>,
    #[command(flatten)]
    pub egress: super::egress::EgressArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Log format on stderr: `text` for people, `json` (one object per line) for log pipelines.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Print the resolved configuration as JSON and exit without binding, connecting or
    /// starting anything (checks a command line, e.g. the Helm chart's).
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    File,
    Kubernetes,
}

/// Settings of `--provider kubernetes` (ignored by the file provider).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kubernetes provider (--provider kubernetes)")]
pub struct KubeArgs {
    /// DNS name of the controller's Service: managed Envoys reach xDS and the wasm endpoint
    /// there, and it is the name in the controller's server certificate.
    #[arg(long, value_name = "DNS_NAME")]
    pub xds_service: Option<String>,
    /// Service port of xDS (default: the port of --xds-addr).
    #[arg(long)]
    pub xds_service_port: Option<u16>,
    /// Service port of the wasm endpoint (default: the port of --wasm-addr).
    #[arg(long)]
    pub wasm_service_port: Option<u16>,
    /// Namespace of the controller (Lease, xDS CA and session Secrets).
    #[arg(long, env = "POD_NAMESPACE", default_value = "portcullis-system")]
    pub namespace: String,
    /// This replica's identity in the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Default image of the managed Envoy Deployments (an EnvoyProxy may override it).
    #[arg(long, default_value = portcullis_kube::infra::DEFAULT_ENVOY_IMAGE)]
    pub envoy_image: String,
    /// Create and own an Envoy fleet (Deployment, Service, ServiceAccount) per Gateway. Off:
    /// only serve xDS, for Envoys deployed by other means.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub manage_infra: bool,
    /// Elect a leader with a Lease: only the leader writes status and infrastructure. Off: this
    /// replica always writes (run one replica only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub leader_election: bool,
    /// Name of the Lease (in --namespace).
    #[arg(long, default_value = "portcullis-leader")]
    pub lease_name: String,
    /// How long a Lease stays valid without renewal: the longest failover.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// How often the leader renews the Lease (and followers retry); below the duration.
    #[arg(long, default_value_t = 5)]
    pub lease_renew_seconds: u64,
    /// Secret (in --namespace) holding the xDS CA; created by the first replica.
    #[arg(long, default_value = "portcullis-xds-ca")]
    pub ca_secret: String,
    /// Secret (in --namespace) holding the OIDC session key shared by all replicas; created by
    /// the first replica.
    #[arg(long, default_value = "portcullis-session")]
    pub session_secret_name: String,
    /// Longest a batch of watch events may be held back under a constant stream of changes (ms).
    #[arg(long, default_value_t = 2000)]
    pub max_batch_delay_ms: u64,
    /// Watch Gateways, routes, policies and the objects they reference only in this namespace
    /// (repeatable, or comma-separated): every namespaced kind is listed and watched per
    /// namespace (never cluster-wide), Namespace objects are read by name, and objects elsewhere
    /// are invisible. Default: the whole cluster. The RBAC can then be Roles in these namespaces
    /// (the chart's `watchNamespaces`).
    #[arg(
        long = "watch-namespace",
        value_name = "NAMESPACE",
        value_delimiter = ','
    )]
    pub watch_namespaces: Vec<String>,
    /// Write a NetworkPolicy per fleet: ingress only on the Gateway's listener ports (and the
    /// readiness/metrics port from --fleet-metrics-namespace). Needs RBAC on networkpolicies.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub fleet_network_policy: bool,
    /// With --fleet-network-policy: a namespace whose pods may scrape the fleets' metrics port
    /// (e.g. Prometheus's). Repeatable, or comma-separated.
    #[arg(
        long = "fleet-metrics-namespace",
        value_name = "NAMESPACE",
        value_delimiter = ','
    )]
    pub fleet_metrics_namespaces: Vec<String>,
}

/// A Kubernetes namespace name: a DNS-1123 label (lowercase alphanumerics and '-', at most 63,
/// starting and ending with an alphanumeric).
fn check_namespace(flag: &str, ns: &str) -> anyhow::Result<()> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if !ok {
        anyhow::bail!("{flag} {ns:?} is not a namespace name (a DNS-1123 label)");
    }
    Ok(())
}

pub fn init_tracing() {
    init_tracing_as(LogFormat::Text)
}

pub fn init_tracing_as(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn,kube=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::logging::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    match args.provider {
        Provider::File => run_files(args).await,
        Provider::Kubernetes => run_kubernetes(args).await,
    }
}

fn cache_dir(args: &RunArgs) -> PathBuf {
    args.cache_dir
        .clone()
        .unwrap_or_else(crate::wasm::cache::default_cache_dir)
}

fn builtin_wasm_dir(args: &RunArgs) -> Option<PathBuf> {
    match &args.builtin_wasm_dir {
        Some(d) => Some(d.clone()),
        None => {
            let d = crate::builtin::default_builtin_dir();
            if d.is_none() && !args.print_config {
                tracing::warn!("no built-in wasm directory (dist/wasm, ../wasm beside the executable); SecurityPolicy oidc and BackendTrafficPolicy rateLimit need --builtin-wasm-dir");
            }
            d
        }
    }
}

fn dynamic_module_dir(args: &RunArgs) -> Option<PathBuf> {
    args.dynamic_module_dir
        .clone()
        .or_else(crate::builtin::default_dynamic_module_dir)
}

fn wasm_retry(args: &RunArgs) -> (Duration, Duration) {
    (
        Duration::from_millis(args.wasm_retry_initial_ms.max(1)),
        Duration::from_millis(
            args.wasm_retry_max_ms
                .max(args.wasm_retry_initial_ms)
                .max(1),
        ),
    )
}

/// The Kubernetes-mode configuration from the command line (no I/O).
pub fn kube_config(args: &RunArgs) -> anyhow::Result<KubeRuntimeConfig> {
    let k = &args.kube;
    let Some(xds_service) = k.xds_service.clone().filter(|s| !s.trim().is_empty()) else {
        anyhow::bail!("--provider kubernetes needs --xds-service (the DNS name of the controller's Service, e.g. portcullis.portcullis-system.svc)");
    };
    if !args.files.is_empty() {
        anyhow::bail!("-f/--file is for --provider file; the Kubernetes provider reads the API");
    }
    if k.lease_renew_seconds == 0 || k.lease_renew_seconds >= k.lease_duration_seconds {
        anyhow::bail!(
            "--lease-renew-seconds ({}) must be above 0 and below --lease-duration-seconds ({}), or the Lease expires between renewals",
            k.lease_renew_seconds,
            k.lease_duration_seconds
        );
    }
    let identity = match &k.pod_name {
        Some(n) if !n.is_empty() => n.clone(),
        _ => hostname(),
    };
    let mut watch_namespaces = Vec::new();
    for ns in &k.watch_namespaces {
        check_namespace("--watch-namespace", ns)?;
        if !watch_namespaces.contains(ns) {
            watch_namespaces.push(ns.clone());
        }
    }
    for ns in &k.fleet_metrics_namespaces {
        check_namespace("--fleet-metrics-namespace", ns)?;
    }
    if !k.fleet_metrics_namespaces.is_empty() && !k.fleet_network_policy {
        anyhow::bail!("--fleet-metrics-namespace needs --fleet-network-policy=true");
    }
    let (wasm_retry_initial, wasm_retry_max) = wasm_retry(args);
    Ok(KubeRuntimeConfig {
        controller_name: args.controller_name.clone(),
        xds_addr: args.xds_addr,
        wasm_addr: args.wasm_addr,
        admin_addr: args.admin_addr,
        xds_mode: args.xds_mode,
        xds_service,
        xds_service_port: k.xds_service_port.unwrap_or(args.xds_addr.port()),
        wasm_service_port: k.wasm_service_port.unwrap_or(args.wasm_addr.port()),
        namespace: k.namespace.clone(),
        identity,
        envoy_image: k.envoy_image.clone(),
        manage_infra: k.manage_infra,
        leader_election: k.leader_election,
        lease_name: k.lease_name.clone(),
        lease_duration: Duration::from_secs(k.lease_duration_seconds),
        lease_renew: Duration::from_secs(k.lease_renew_seconds),
        ca_secret: k.ca_secret.clone(),
        session_secret_name: k.session_secret_name.clone(),
        cache_dir: cache_dir(args),
        cache_max_bytes: args.cache_max_mib.saturating_mul(1 << 20),
        wasm_retry_initial,
        wasm_retry_max,
        debounce: Duration::from_millis(args.debounce_ms),
        max_batch_delay: Duration::from_millis(k.max_batch_delay_ms.max(args.debounce_ms)),
        listener_address: args.listener_address.clone(),
        ephemeral_listener_ports: args.ephemeral_listener_ports,
        builtin_wasm_dir: builtin_wasm_dir(args),
        builtin_wasm_urls: args.builtin_wasm_url.iter().cloned().collect(),
        dynamic_module_dir: dynamic_module_dir(args),
        builtin_runtime: args.builtin_runtime,
        ratelimit_service: args.ratelimit_service.clone(),
        egress: args.egress.policy(false),
        fleet_cert_dir: portcullis_kube::infra::CERT_DIR.to_string(),
        bound_addresses_file: args.bound_addresses_file.clone(),
        watch_namespaces,
        fleet_network_policy: k.fleet_network_policy,
        fleet_metrics_namespaces: k.fleet_metrics_namespaces.clone(),
    })
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("portcullis-{}", std::process::id()))
}

async fn run_kubernetes(args: RunArgs) -> anyhow::Result<()> {
    let cfg = kube_config(&args)?;
    if args.print_config {
        let doc = serde_json::json!({"provider": "kubernetes", "config": cfg});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    init_tracing_as(args.log_format);
    let client = kube::Client::try_default().await.context(
        "no Kubernetes client configuration: run in a pod (in-cluster service account) or set KUBECONFIG",
    )?;
    crate::kubernetes::run(cfg, client, shutdown_signal()).await
}

async fn run_files(args: RunArgs) -> anyhow::Result<()> {
    if args.files.is_empty() {
        anyhow::bail!(
            "--provider file needs at least one -f/--file PATH (a manifest file or directory)"
        );
    }
    if args.print_config {
        let doc = serde_json::json!({
            "provider": "file",
            "files": args.files,
            "controllerName": args.controller_name,
            "xdsAddr": args.xds_addr,
            "wasmAddr": args.wasm_addr,
            "adminAddr": args.admin_addr,
            "xdsMode": args.xds_mode,
            "envoy": !args.no_envoy,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    init_tracing_as(args.log_format);
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("portcullis-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating work dir {}", work_dir.display()))?;
    let cache_dir = cache_dir(&args);
    let secret_path = args
        .session_secret_file
        .clone()
        .unwrap_or_else(|| cache_dir.join(crate::builtin::SESSION_SECRET_FILE));
    let session_secret = crate::builtin::load_or_create_session_secret(&secret_path)?;
    let builtin_wasm_dir = builtin_wasm_dir(&args);
    let (wasm_retry_initial, wasm_retry_max) = wasm_retry(&args);
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
        wasm_retry_initial,
        wasm_retry_max,
        work_dir: work_dir.clone(),
        listener_address: args.listener_address.clone(),
        ephemeral_listener_ports: args.ephemeral_listener_ports,
        debounce: Duration::from_millis(args.debounce_ms),
        builtin_wasm_dir,
        builtin_wasm_urls: args.builtin_wasm_url.iter().cloned().collect(),
        dynamic_module_dir: dynamic_module_dir(&args),
        builtin_runtime: args.builtin_runtime,
        session_secret,
        ratelimit_service: args.ratelimit_service.clone(),
        egress: args.egress.policy(true),
        bound_addresses_file: args.bound_addresses_file.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(Debug, clap::Subcommand)]
    enum Cmd {
        Run(RunArgs),
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["portcullis"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| match c.cmd {
            Cmd::Run(a) => a,
        })
    }

    #[test]
    fn the_chart_arguments_parse_into_a_kubernetes_config() {
        // The argument list of charts/portcullis/templates/deployment.yaml with default values.
        let a = parse(&[
            "run",
            "--provider=kubernetes",
            "--controller-name=portcullis.dev/gatewayclass-controller",
            "--xds-addr=0.0.0.0:18000",
            "--wasm-addr=0.0.0.0:18001",
            "--admin-addr=0.0.0.0:19100",
            "--xds-service=portcullis.portcullis-system.svc",
            "--envoy-image=docker.io/envoyproxy/envoy:distroless-v1.40.0",
            "--debounce-ms=200",
            "--leader-election=true",
            "--lease-name=portcullis-leader",
            "--lease-duration-seconds=15",
            "--lease-renew-seconds=5",
            "--wasm-cache-dir=/var/cache/portcullis",
            "--ca-secret=portcullis-xds-ca",
        ])
        .expect("chart args parse");
        let c = kube_config(&a).expect("valid");
        assert_eq!(c.xds_service, "portcullis.portcullis-system.svc");
        assert_eq!((c.xds_service_port, c.wasm_service_port), (18000, 18001));
        assert_eq!(c.cache_dir, PathBuf::from("/var/cache/portcullis"));
        assert!(c.leader_election && c.manage_infra);
        assert_eq!(c.lease_renew, Duration::from_secs(5));

        let a =
            parse(&["run", "--provider", "kubernetes", "--leader-election=false"]).expect("parses");
        let e = kube_config(&a).expect_err("no service");
        assert!(e.to_string().contains("--xds-service"), "{e}");
        let a = parse(&[
            "run",
            "--provider=kubernetes",
            "--xds-service=x.y.svc",
            "--lease-duration-seconds=5",
            "--lease-renew-seconds=5",
        ])
        .expect("parses");
        assert!(kube_config(&a)
            .expect_err("renew >= duration")
            .to_string()
            .contains("--lease-renew-seconds"));
        assert!(parse(&["run", "--provider=kubernetes", "--leader-election=maybe"]).is_err());
        assert!(
            c.watch_namespaces.is_empty(),
            "cluster-wide unless --watch-namespace"
        );
        assert!(!c.fleet_network_policy);
    }

    #[test]
    fn watch_namespaces_and_fleet_network_policies_parse() {
        let a = parse(&[
            "run",
            "--provider=kubernetes",
            "--xds-service=x.y.svc",
            "--watch-namespace=infra",
            "--watch-namespace=apps,team-b",
            "--watch-namespace=infra",
            "--fleet-network-policy=true",
            "--fleet-metrics-namespace=monitoring",
        ])
        .expect("parses");
        let c = kube_config(&a).expect("valid");
        assert_eq!(c.watch_namespaces, ["infra", "apps", "team-b"]);
        assert!(c.fleet_network_policy);
        assert_eq!(c.fleet_metrics_namespaces, ["monitoring"]);

        for bad in [
            "--watch-namespace=Infra",
            "--watch-namespace=a_b",
            "--watch-namespace=-x",
        ] {
            let a = parse(&["run", "--provider=kubernetes", "--xds-service=x.y.svc", bad])
                .expect("parses");
            let e = kube_config(&a).expect_err(bad);
            assert!(e.to_string().contains("--watch-namespace"), "{e}");
        }
        let a = parse(&[
            "run",
            "--provider=kubernetes",
            "--xds-service=x.y.svc",
            "--fleet-metrics-namespace=monitoring",
        ])
        .expect("parses");
        assert!(kube_config(&a)
            .expect_err("metrics namespace without the policy")
            .to_string()
            .contains("--fleet-network-policy"));
    }
}
