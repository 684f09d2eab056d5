//! `portcullis translate`.

#[derive(Debug, clap::Args)]
pub struct TranslateArgs {}

pub async fn run(_args: TranslateArgs) -> anyhow::Result<()> {
    anyhow::bail!("`portcullis translate` is not implemented yet")
}
