//! `cove backup` and `cove restore-history`: the encrypted history backup (see
//! `cove::backup`).

use clap::Args;

use cove::Device;
use cove::backup::{self, BACKUP_BATCH};
use cove::config::Home;

/// Arguments of `cove backup`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove backup

Receives what is pending, then encrypts the messages stored since the last backup with the
account's backup key and uploads them to the relay as history segments. Prints
`backed up N messages in S segments (B bytes)` or `nothing new to back up`. `cove sync`
backs up by itself once 100 messages wait, `cove listen` when it stops, a running
`cove daemon` once 100 wait, every 5 minutes and when it stops (then `cove backup` goes
through it). Needs a password account (the backup key comes with it).")]
pub struct BackupArgs {}

/// Arguments of `cove restore-history`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove restore-history

Downloads the user's history backup from the relay, checks every segment (a segment that
is not this user's, was changed, or is out of order is refused: `warning: ...`) and stores
the messages this device does not have, so `cove history GROUP` shows the past. Prints
`restored N messages from S segments`. Needs a password account.")]
pub struct RestoreHistoryArgs {}

/// Runs `cove backup`.
pub async fn run_backup(home: Home, _args: BackupArgs) -> anyhow::Result<()> {
    let mut device = Device::open(&home).await?;
    let result = async {
        device.settle().await?;
        Ok::<_, anyhow::Error>(backup::backup(&mut device).await?)
    }
    .await;
    device.close().await;
    let report = result?;
    if report.segments == 0 {
        println!("nothing new to back up");
    } else {
        println!(
            "backed up {} messages in {} segments ({} bytes)",
            report.messages, report.segments, report.bytes
        );
    }
    Ok(())
}

/// Runs `cove restore-history`.
pub async fn run_restore(home: Home, _args: RestoreHistoryArgs) -> anyhow::Result<()> {
    let mut device = Device::open(&home).await?;
    let result = async {
        device.settle().await?;
        Ok::<_, anyhow::Error>(backup::restore_history(&mut device).await?)
    }
    .await;
    device.close().await;
    let report = result?;
    for refused in &report.refused {
        eprintln!(
            "warning: history segment {} refused, not imported: {}",
            refused.position,
            cove::escape(&refused.reason)
        );
    }
    println!(
        "restored {} messages from {} segments ({} already here, {} refused)",
        report.messages,
        report.segments,
        report.duplicates,
        report.refused.len()
    );
    Ok(())
}

/// After a `sync` round: backs up once [`BACKUP_BATCH`] messages wait (`threshold` 1 at
/// close). Never fails the command: a failure is a warning and the rows wait for the next
/// backup.
pub async fn after_round(device: &mut Device, threshold: usize) {
    if let Err(e) = backup::backup_if_due(device, threshold).await {
        eprintln!("warning: history backup failed (retried later): {e}");
    }
}

/// The batch of a `sync` round.
pub const SYNC_THRESHOLD: usize = BACKUP_BATCH;
