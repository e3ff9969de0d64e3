//! `cove init`: create the home, the device identity, and register with the relay.

use std::path::PathBuf;

use clap::Args;

use cove::config::Home;
use cove::{Device, UserName};

/// Arguments of `cove init`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove --home ~/.cove-alice init --server wss://127.0.0.1:7443 --user alice --ca cove-data/tls/cert.pem

  COVE_PASSWORD_FILE=pw.txt cove --home ~/.cove-alice init --lock --server wss://127.0.0.1:7443 --user alice

Registers the user name on the relay (the first device claims it) and uploads KeyPackages so
others can add this device to groups. The CA file is copied into the home.

The home is private (0700, files 0600) and its database is encrypted. Its key is kept in
db.key beside it, or, with --lock, wrapped under the password (Argon2id, 128 MiB): every later
command then needs the password (asked on the terminal, or COVE_PASSWORD / --password-file).
A locked home copied elsewhere cannot be opened without the password.")]
pub struct InitArgs {
    /// The relay, as wss://HOST:PORT.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The user name to register (1-32 of a-z 0-9 _ . -).
    #[arg(long, value_name = "NAME")]
    pub user: UserName,
    /// Trust this PEM certificate for the relay (its self-signed certificate) instead of the
    /// public web PKI.
    #[arg(long, value_name = "CERT.pem")]
    pub ca: Option<PathBuf>,
    /// Lock the home's database key with a password (asked twice, or COVE_PASSWORD /
    /// --password-file).
    #[arg(long)]
    pub lock: bool,
}

/// Runs `cove init`.
pub async fn run(home: Home, args: InitArgs) -> anyhow::Result<()> {
    let device = Device::init(&home, &args.server, args.user, args.ca.as_deref()).await?;
    println!(
        "initialised {} as {} (device {}) on {}",
        home.dir().display(),
        device.user(),
        device
            .device_id()
            .map(|d| d.to_string())
            .unwrap_or_else(|| "?".into()),
        device.server()
    );
    device.close().await;
    Ok(())
}
