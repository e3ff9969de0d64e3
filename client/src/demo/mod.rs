//! `cove demo`: an in-process relay and three users chatting over real TLS.
//! (Placeholder until the relay library lands.)

use clap::Args;

/// Arguments of `cove demo`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  cargo run --release --bin cove -- demo")]
pub struct DemoArgs {}

/// Runs the demo.
pub async fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("the demo is not implemented yet")
}
