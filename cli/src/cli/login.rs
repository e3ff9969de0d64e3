//! `cove login`: make this machine a new device of an existing user, with the user's
//! password.

use std::path::PathBuf;

use clap::Args;

use cove::config::Home;
use cove::{Device, UserName};

/// Arguments of `cove login`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example (a second machine of alice, whose account has a password):
  cove --home ~/.cove-alice-laptop login --server wss://127.0.0.1:7443 --user alice --ca cove-data/tls/cert.pem
  cove --home ~/.cove-alice-laptop groups

  COVE_PASSWORD_FILE=pw.txt cove --home ~/.cove-alice-laptop login --server wss://127.0.0.1:7443 --user alice

Logs in with the account's password (OPAQUE: the relay never sees it), unwraps the account
bundle (the user's identity key), adds a fresh device key to the user's signed device list,
registers it and joins every group of the user by an external commit; the other members see
\"alice added a device\" and the same safety number. Groups joined this way are shown under a
placeholder name (group-XXXXXXXX) until their name is known. Then the encrypted history backup
is restored: the messages from before this device existed, and the groups' names. A failed
login leaves no home behind.

The password is asked on the terminal, or read from COVE_PASSWORD / --password-file. With
--lock the new home's database key is also locked with it.")]
pub struct LoginArgs {
    /// The relay, as wss://HOST:PORT.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The user to log in as.
    #[arg(long, value_name = "NAME")]
    pub user: UserName,
    /// Trust this PEM certificate for the relay (its self-signed certificate) instead of the
    /// public web PKI.
    #[arg(long, value_name = "CERT.pem")]
    pub ca: Option<PathBuf>,
    /// Lock the new home's database key with the same password.
    #[arg(long)]
    pub lock: bool,
}

/// Runs `cove login` with the account's `password`.
pub async fn run(home: Home, args: LoginArgs, password: &[u8]) -> anyhow::Result<()> {
    let device =
        Device::login(&home, &args.server, args.user, password, args.ca.as_deref()).await?;
    let mut device = device;
    // The history from before this device existed, from the encrypted backup (it also
    // names the groups joined by external commits). The login stands if this fails.
    let restored = cove::backup::restore_history(&mut device).await;
    let groups = device.groups().await?;
    println!(
        "logged in {} as {} (device {}) on {}; joined {} group(s)",
        home.dir().display(),
        device.user(),
        device
            .device_id()
            .map(|d| d.to_string())
            .unwrap_or_else(|| "?".into()),
        device.server(),
        groups.len()
    );
    for g in &groups {
        println!("  {} ({})", g.name, g.id);
    }
    match restored {
        Ok(report) => {
            println!(
                "restored {} message(s) of history from {} backup segment(s)",
                report.messages, report.segments
            );
            for refused in &report.refused {
                eprintln!(
                    "warning: history segment {} refused, not imported: {}",
                    refused.position,
                    cove::escape(&refused.reason)
                );
            }
        }
        Err(e) => eprintln!(
            "warning: the history backup was not restored ({}); run `cove restore-history` later",
            crate::cli::one_line(&anyhow::Error::from(e))
        ),
    }
    device.close().await;
    Ok(())
}
