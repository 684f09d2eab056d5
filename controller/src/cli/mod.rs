//! One module per subcommand; `main.rs` only parses and dispatches.

pub mod egress;
pub mod run;
pub mod status;
pub mod translate;
