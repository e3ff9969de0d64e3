//! `cove device link|join|list|revoke`: the devices of this user.

use std::path::PathBuf;

use clap::Subcommand;

use cove::config::Home;
use cove::{Device, DeviceId, DeviceListView, LinkProgress};

/// `cove device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Link a new machine to this user: prints a one-time code and waits until the new
    /// machine joins with it (`cove device join CODE ...` there). With `--from`, registers
    /// this home instead as a further device of the user of another home on this machine.
    #[command(after_help = "\
Examples:
  cove device link                     # on the existing device: prints a code, waits
  cove device join 7-crossword-harbor --server wss://relay.example:7443   # on the new machine
  cove --home ~/.cove-bob-laptop device link --from ~/.cove-bob   # both homes on this machine

The code lasts 5 minutes and works once. The new device is added to every group of this
device and receives their message history, end-to-end encrypted between the two devices
(the relay cannot read it or learn the code). With --from, the existing home must not be in
use (stop its `cove listen`).")]
    Link {
        /// The home of an existing, registered device of the user (on this machine).
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
    },
    /// Join this machine (a new home) as a further device of a user, with the code that
    /// `cove device link` shows on one of their devices.
    #[command(after_help = "\
Example:
  cove --home ~/.cove device join 7-crossword-harbor --server wss://127.0.0.1:7443 --ca cert.pem

Creates the home, registers this device with the relay (authorised by the other device),
joins every group of the other device and stores their message history.")]
    Join {
        /// The code the other device shows (e.g. 7-crossword-harbor).
        code: String,
        /// The relay, as wss://HOST:PORT.
        #[arg(long, value_name = "URL")]
        server: String,
        /// Trust this PEM certificate for the relay instead of the public web PKI.
        #[arg(long, value_name = "CERT.pem")]
        ca: Option<PathBuf>,
    },
    /// Show this user's devices as the user's signed device list names them (fetched from
    /// the relay and checked against the user's identity key).
    #[command(after_help = "\
Example:
  cove device list

Each line: the device key (the first 16 hex digits; `cove device revoke` takes any unique
prefix), its relay id, its name, when it was added, when it last logged in to the relay
(only the user's own devices may ask), and which one is this device. Revoked devices follow.
Offline, the list this device last verified is shown, with ids and last seen unknown.")]
    List,
    /// Revoke a device of this user for good (lost or stolen): signs a revoke entry with the
    /// user's identity key (held by the user's first device and by devices logged in with
    /// the password) and publishes it.
    #[command(after_help = "\
Examples:
  cove device revoke 9f8e7d6c      # by key prefix
  cove device revoke 2             # by the id `cove device list` shows

From then on the relay refuses the revoked device's logins, and no client adds it to a group
again. It cannot be undone: a revoked key is never listed again.")]
    Revoke {
        /// The device's relay id (a number `cove device list` shows; taken as an id when one
        /// matches), or its key or a unique prefix of the key in hex.
        key: String,
    },
}

/// Runs `cove device ...`.
pub async fn run(home: Home, cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Link { from: None } => {
            let mut device = Device::open(&home).await?;
            let server = device.server().to_owned();
            let linked = device.link_by_code(|p| say(&p, &server, true)).await;
            device.close().await;
            let linked = linked?;
            println!("linked device {linked}");
            Ok(())
        }
        DeviceCommand::Join { code, server, ca } => {
            let joined = Device::join_by_code(&home, &server, ca.as_deref(), &code, |p| {
                say(&p, &server, false)
            })
            .await?;
            println!(
                "joined {} as a new device ({}) of {}",
                home.dir().display(),
                joined
                    .device_id()
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                joined.user()
            );
            joined.close().await;
            Ok(())
        }
        DeviceCommand::Link { from: Some(from) } => {
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
        DeviceCommand::List => {
            let mut device = Device::open(&home).await?;
            let synced = device.settle().await;
            let view = device.device_list().await;
            device.close().await;
            let Some(view) = view? else {
                synced?;
                println!("no signed device list known for this user yet");
                return Ok(());
            };
            for line in device_list_lines(&view) {
                println!("{line}");
            }
            if let Err(e) = synced {
                println!("relay not reachable: {e}; showing the list this device last verified");
            }
            Ok(())
        }
        DeviceCommand::Revoke { key } => {
            let mut device = Device::open(&home).await?;
            let revoked = device.revoke_device(&key).await;
            device.close().await;
            println!("revoked device {}", short(&revoked?));
            Ok(())
        }
    }
}

/// The lines of `cove device list`: the identity key, then per device its key prefix, relay
/// id, name, when it was added, when it last logged in to the relay ("now" for this device,
/// whose connection just answered), and which one is this device; revoked devices after
/// them. Without the relay's answer ids show as `?`, last seen as unknown, and a last line
/// says so.
pub(crate) fn device_list_lines(view: &DeviceListView) -> Vec<String> {
    let id = |id: Option<DeviceId>| id.map_or_else(|| "?".to_owned(), |d| d.to_string());
    let seen = |ms: Option<u64>| ms.map_or_else(|| "unknown".to_owned(), utc);
    let mut lines = vec![format!("identity key {}", short(&view.identity))];
    for d in &view.devices {
        let last_seen = if d.this && view.from_relay {
            "now".to_owned()
        } else {
            seen(d.last_seen_ms)
        };
        lines.push(format!(
            "  {}  id {:<3}  {:<16}  added {}  last seen {}{}",
            short(&d.key),
            id(d.id),
            cove::escape(&d.name),
            utc(d.added_ms),
            last_seen,
            if d.this { "  (this device)" } else { "" }
        ));
    }
    for d in &view.revoked {
        lines.push(format!(
            "  {}  revoked  id {}  last seen {}",
            short(&d.key),
            id(d.id),
            seen(d.last_seen_ms)
        ));
    }
    if !view.from_relay {
        lines.push("device ids and last seen unknown: the relay did not answer".to_owned());
    }
    lines
}

/// Prints the progress lines of linking by a code.
fn say(progress: &LinkProgress, server: &str, host: bool) {
    for line in link_progress_lines(progress, server, host) {
        println!("{line}");
    }
}

/// The lines that tell the user how linking by a code goes (`host`: the existing device).
pub(crate) fn link_progress_lines(
    progress: &LinkProgress,
    server: &str,
    host: bool,
) -> Vec<String> {
    match progress {
        LinkProgress::Code(code) => vec![
            format!("link code: {code}"),
            format!("on the new machine run: cove device join {code} --server {server}"),
            "waiting for the new machine (the code works once, for 5 minutes)...".to_owned(),
        ],
        LinkProgress::PeerJoined => vec!["a machine joined; checking the code...".to_owned()],
        LinkProgress::Confirmed => vec!["code confirmed; secure channel up".to_owned()],
        LinkProgress::Authorized => vec!["authorised the new device's key".to_owned()],
        LinkProgress::Registered(id) => vec![format!("new device {id} registered")],
        LinkProgress::AddedTo(group) => vec![format!("added the new device to {group}")],
        LinkProgress::NotAddedTo(group, why) => {
            vec![format!("could not add the new device to {group}: {why}")]
        }
        LinkProgress::History(n) if host => vec![format!("sent {n} messages of history")],
        LinkProgress::History(n) => vec![format!("received {n} messages of history")],
        LinkProgress::Done => vec!["linking complete".to_owned()],
    }
}

/// The first 16 hex digits of a key.
fn short(hex: &str) -> &str {
    hex.get(..16).unwrap_or(hex)
}

/// `YYYY-MM-DD HH:MM UTC` of a time in ms since the Unix epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(super::utc(1_796_433_840_000), "2026-12-05 01:24 UTC");
    }
}
