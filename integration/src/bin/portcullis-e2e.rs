//! The controller's `run` and `status` commands, built inside this package so the controller
//! e2e tests always run the current code (`CARGO_BIN_EXE_portcullis-e2e`). Set
//! `PORTCULLIS_BIN=dist/bin/portcullis` to run the shipped binary instead.

use clap::Parser;
use portcullis::cli;

#[derive(Debug, Parser)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
#[command(
    name = "portcullis",
    about = "portcullis run/status, for end-to-end tests"
)]
enum Command {
    Run(cli::run::RunArgs),
    Status(cli::status::StatusArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::Run(a) => cli::run::run(a).await,
        Command::Status(a) => cli::status::run(a).await,
    }
}
