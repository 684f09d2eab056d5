//! `portcullis`: the controller binary. Parses the command line and dispatches to `cli::*`.

use clap::{Parser, Subcommand};
use portcullis::cli;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Envoy extension suite controller: Gateway API + EnvoyExtensionPolicy -> Envoy xDS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
enum Command {
    /// Watch manifests under the given paths, serve xDS and run one Envoy per Gateway.
    Run(cli::run::RunArgs),
    /// Translate manifests to xDS resources and statuses, offline.
    Translate(cli::translate::TranslateArgs),
    /// Show the status of a running controller as a table.
    Status(cli::status::StatusArgs),
    /// Package, push, pull and inspect wasm filter images.
    Oci(portcullis_oci::cli::OciArgs),
    /// Serve Envoy's rate-limit gRPC API backed by Redis.
    RatelimitServer(portcullis_ratelimit_server::Args),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The error and its causes on one line; no backtrace (RUST_BACKTRACE is for our bugs, and
    // these are the user's: a bad flag, an unreachable API server).
    match dispatch(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(a) => cli::run::run(a).await,
        Command::Translate(a) => cli::translate::run(a).await,
        Command::Status(a) => cli::status::run(a).await,
        Command::Oci(a) => portcullis_oci::cli::run(a).await,
        Command::RatelimitServer(a) => portcullis_ratelimit_server::run(a).await,
    }
}
