//! `portcullis status`.

#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

pub async fn run(_args: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("`portcullis status` is not implemented yet")
}
