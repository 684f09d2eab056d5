//! Stand-alone echo upstream for `make run` and manual testing (see `portcullis_integration::echo`).

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;

/// Echo upstream: answers every request with JSON {method, path, headers, body}.
///
/// Request header `x-echo-response-header: name: value` (repeatable) adds a response header;
/// `x-echo-status: CODE` sets the status.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080", env = "ECHO_ADDR")]
    addr: SocketAddr,
    /// Write the bound address (`host:port`) to this file once listening: with port 0 in
    /// `--addr`, the kernel picks the port and this says which.
    #[arg(long, value_name = "PATH")]
    addr_file: Option<std::path::PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let bound = listener.local_addr().context("bound address")?;
    if let Some(path) = &args.addr_file {
        // Written whole, then renamed: a reader never sees half an address.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bound.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    tracing::info!(addr = %bound, "echo upstream listening");
    portcullis_integration::echo::serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .context("echo upstream failed")?;
    Ok(())
}
