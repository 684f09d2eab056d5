//! `portcullis oci ...`

#[derive(Debug, clap::Args)]
pub struct OciArgs {}

pub async fn run(_args: OciArgs) -> anyhow::Result<()> {
    anyhow::bail!("`portcullis oci` is not implemented yet")
}
