//! `cove safety-number USER`.

use clap::Args;

use cove::config::Home;
use cove::{Device, UserName};

/// Arguments of `cove safety-number`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove safety-number bob

Both users run it and compare the digits out of band (in person, on a call). Equal numbers mean
neither relay nor network swapped a device key.")]
pub struct SafetyNumberArgs {
    /// The other user.
    pub user: UserName,
}

/// Runs `cove safety-number`.
pub async fn run(home: Home, args: SafetyNumberArgs) -> anyhow::Result<()> {
    let device = Device::open_offline(&home).await?;
    let number = device.safety_number(&args.user).await;
    device.close().await;
    println!("{}", number?);
    Ok(())
}
