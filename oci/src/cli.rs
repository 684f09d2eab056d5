//! `portcullis oci ...`: push, pull and inspect wasm images.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::{auth, ImageFormat, PullOptions, PushOptions, RegistryAuth, RetryPolicy};

#[derive(Debug, clap::Args)]
pub struct OciArgs {
    #[command(subcommand)]
    pub command: OciCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum OciCommand {
    /// Package a .wasm as an image and push it; prints the manifest digest.
    Push(PushArgs),
    /// Pull an image and write its wasm module to a file.
    Pull(PullArgs),
    /// Show an image's format, layers, sizes and manifest digest.
    Inspect(InspectArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PushFormat {
    /// OCI image, one tar+gzip layer with plugin.wasm (Envoy Gateway and Istio).
    Compat,
    /// Wasm OCI artifact: runtime config + application/vnd.module.wasm.content.layer.v1+wasm.
    Artifact,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Docker config with credentials [default: $DOCKER_CONFIG/config.json or ~/.docker/config.json].
    #[arg(long, value_name = "PATH", env = "PORTCULLIS_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
    /// Username for HTTP basic / token auth (password from --password or PORTCULLIS_REGISTRY_PASSWORD).
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    /// Password for --username (ignored without it).
    #[arg(long, env = "PORTCULLIS_REGISTRY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Use plain HTTP (default for 127.0.0.1 and localhost).
    #[arg(long, conflicts_with = "ca_file")]
    pub insecure: bool,
    /// PEM file with CA certificates to trust for HTTPS.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Give up after this many seconds (retries included).
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub timeout: u64,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The wasm module.
    pub file: PathBuf,
    /// Target, e.g. 127.0.0.1:5000/portcullis/headers:0.1.0.
    pub reference: String,
    #[arg(long, value_enum, default_value_t = PushFormat::Compat)]
    pub format: PushFormat,
    /// Print a JSON object (reference, manifest_digest, wasm_sha256, format) instead.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Source, by tag or by digest (repo@sha256:...).
    pub reference: String,
    /// Where to write the module (`-` for stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Required manifest digest: hex, with or without `sha256:`.
    #[arg(long, value_name = "DIGEST")]
    pub sha256: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    pub reference: String,
    /// Required manifest digest: hex, with or without `sha256:`.
    #[arg(long, value_name = "DIGEST")]
    pub sha256: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

impl RegistryArgs {
    fn auth(&self, reference: &str) -> anyhow::Result<RegistryAuth> {
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            return Ok(RegistryAuth::basic(u, p));
        }
        let host = crate::registry_host(reference)?;
        let (path, explicit) = match &self.docker_config {
            Some(p) => (Some(p.clone()), true),
            None => (auth::default_docker_config_path(), false),
        };
        match path {
            Some(path) if explicit || path.is_file() => {
                let auth = RegistryAuth::from_docker_config_file(&path, &host)?;
                tracing::debug!(config = %path.display(), registry = %host, ?auth, "credentials");
                Ok(auth)
            }
            _ => Ok(RegistryAuth::Anonymous),
        }
    }

    fn insecure(&self) -> Option<bool> {
        self.insecure.then_some(true)
    }

    fn progress(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }
}

pub async fn run(args: OciArgs) -> anyhow::Result<()> {
    match args.command {
        OciCommand::Push(a) => push(a).await,
        OciCommand::Pull(a) => pull(a).await,
        OciCommand::Inspect(a) => inspect(a).await,
    }
}

async fn push(a: PushArgs) -> anyhow::Result<()> {
    let wasm =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let opts = PushOptions {
        format: match a.format {
            PushFormat::Compat => ImageFormat::Compat,
            PushFormat::Artifact => ImageFormat::Artifact,
        },
        auth: a.registry.auth(&a.reference)?,
        insecure: a.registry.insecure(),
        ca_file: a.registry.ca_file.clone(),
        timeout: Duration::from_secs(a.registry.timeout),
        retry: RetryPolicy::default(),
        progress: a.registry.progress(),
    };
    let pushed = crate::push_wasm(&wasm, &a.reference, &opts)
        .await
        .with_context(|| format!("cannot push {} to {}", a.file.display(), a.reference))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&pushed)?);
    } else {
        println!("{}", pushed.manifest_digest);
    }
    Ok(())
}

async fn pull(a: PullArgs) -> anyhow::Result<()> {
    let opts = PullOptions {
        expected_digest: a.sha256.clone(),
        auth: a.registry.auth(&a.reference)?,
        insecure: a.registry.insecure(),
        ca_file: a.registry.ca_file.clone(),
        timeout: Duration::from_secs(a.registry.timeout),
        retry: RetryPolicy::default(),
        progress: a.registry.progress(),
    };
    let pulled = crate::pull_wasm(&a.reference, &opts)
        .await
        .with_context(|| format!("cannot pull {}", a.reference))?;
    if a.output.as_os_str() == "-" {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&pulled.wasm)
            .and_then(|()| stdout.flush())
            .context("cannot write the module to stdout")?;
        return Ok(());
    }
    // Write next to the target then rename, so a failed write never leaves half a module.
    let tmp = a.output.with_extension("wasm.partial");
    std::fs::write(&tmp, &pulled.wasm)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.output)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), a.output.display()))?;
    eprintln!(
        "pulled {} ({} format, {} bytes, manifest {}, wasm sha256 {}) to {}",
        a.reference,
        pulled.format,
        pulled.wasm.len(),
        pulled.manifest_digest,
        pulled.wasm_sha256,
        a.output.display()
    );
    Ok(())
}

async fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let opts = PullOptions {
        expected_digest: a.sha256.clone(),
        auth: a.registry.auth(&a.reference)?,
        insecure: a.registry.insecure(),
        ca_file: a.registry.ca_file.clone(),
        timeout: Duration::from_secs(a.registry.timeout),
        retry: RetryPolicy::default(),
        progress: false,
    };
    let info = crate::inspect(&a.reference, &opts)
        .await
        .with_context(|| format!("cannot inspect {}", a.reference))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("reference:  {}", info.reference);
    println!("digest:     {}", info.manifest_digest);
    if let Some(index) = &info.index_digest {
        println!("index:      {index}");
    }
    println!("media type: {}", info.manifest_media_type);
    match (&info.format, &info.format_error) {
        (Some(f), _) => println!("format:     {f}"),
        (None, Some(e)) => println!("format:     not a wasm image ({e})"),
        (None, None) => println!("format:     unknown"),
    }
    println!(
        "config:     {} {} ({} bytes)",
        info.config.media_type, info.config.digest, info.config.size
    );
    println!("layers:");
    for l in &info.layers {
        let mark = if info.wasm_layer.as_ref() == Some(l) {
            "  <- wasm"
        } else {
            ""
        };
        println!("  {} {} ({} bytes){mark}", l.media_type, l.digest, l.size);
    }
    Ok(())
}
