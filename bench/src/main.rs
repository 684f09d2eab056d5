//! `portcullis-bench`: the data-plane and control-plane benchmarks behind `make bench`.
//!
//! - `portcullis-bench filters`: each filter against no filter, Envoy's native equivalent and
//!   Lua, one Envoy worker pinned to one core, wrk pinned to the other.
//! - `portcullis-bench controller`: `portcullis translate` time and peak RSS, and file change →
//!   Envoy ACK under `portcullis run`.
//!
//! Results go to `target/bench/*.json` (machine-readable), `target/bench/*.md` (tables) and
//! `docs/bench/*.svg` (charts).

mod chart;
mod controller;
mod envoy;
mod filters;
mod load;
mod report;
mod util;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "portcullis-bench",
    version,
    about = "Portcullis benchmarks (data plane and control plane)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Data plane: every filter vs no filter, Envoy's native equivalent and Lua.
    Filters(filters::FiltersArgs),
    /// Control plane: translate time and peak RSS; file change → Envoy ACK under `run`.
    Controller(controller::ControllerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Filters(a) => match filters::run(a.clone())? {
            Some(r) => report::publish_filters(&r, &a),
            None => Ok(()),
        },
        Cmd::Controller(a) => report::publish_controller(&controller::run(a.clone())?, &a),
    }
}
