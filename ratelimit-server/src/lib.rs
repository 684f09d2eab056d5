//! `portcullis ratelimit-server`: Envoy's RateLimitService on Redis (issue 5).

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`portcullis ratelimit-server` is not implemented yet")
}
