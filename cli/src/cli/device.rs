//! `cove device link`: a further device of the same user.

use std::path::PathBuf;

use clap::Subcommand;

use cove::Device;
use cove::config::Home;

/// `cove device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register this home as a further device of the user of an existing home on this
    /// machine (the existing device signs the new device's key).
    #[command(after_help = "\
Example:
  cove --home ~/.cove-bob-laptop device link --from ~/.cove-bob

The new device receives in the groups the user is added to from now on (users are added with
all their devices). The existing home must not be in use (stop its `cove listen`).")]
    Link {
        /// The home of an existing, registered device of the user.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
    },
}

/// Runs `cove device ...`.
pub async fn run(home: Home, cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Link { from } => {
            let existing = Device::open(&Home::new(from)).await?;
            let linked = Device::link(&existing, &home).await;
            existing.close().await;
            let linked = linked?;
            println!(
                "linked {} as a new device ({}) of {}",
                home.dir().display(),
                linked
                    .device_id()
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                linked.user()
            );
            linked.close().await;
            Ok(())
        }
    }
}
