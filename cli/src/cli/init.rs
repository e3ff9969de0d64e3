//! `cove init`: create the home, the device identity, and register with the relay.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use zeroize::Zeroizing;

use cove::config::Home;
use cove::{Device, UserName};

/// Arguments of `cove init`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove --home ~/.cove-alice init --server wss://127.0.0.1:7443 --user alice --ca cove-data/tls/cert.pem

  COVE_PASSWORD_FILE=pw.txt cove --home ~/.cove-alice init --lock --server wss://127.0.0.1:7443 --user alice

  cove --home ~/.cove-bot init --no-account --server wss://127.0.0.1:7443 --user bot

Registers the user name on the relay (the first device claims it) and uploads KeyPackages so
others can add this device to groups. The CA file is copied into the home.

Then it registers a password account for the user (OPAQUE: the relay never sees the
password): the password is asked twice on the terminal, or read from --password-file /
COVE_PASSWORD. The user's identity key and a history backup key are stored at the relay,
encrypted under the password and under a recovery key, which is printed ONCE: write it
down. With the password, `cove recovery-key show` shows it again; with the recovery key,
`cove password reset` replaces a forgotten password.

--no-account registers the device only, with no password: nothing can then be recovered
(no login from another machine, no recovery key, no password reset); losing this home
loses the user name.

The home is private (0700, files 0600) and its database is encrypted. Its key is kept in
db.key beside it, or, with --lock, wrapped under the same password (Argon2id, 128 MiB):
every later command then needs the password. A locked home copied elsewhere cannot be
opened without the password.")]
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
    /// Lock the home's database key with the password too.
    #[arg(long)]
    pub lock: bool,
    /// Register the device only, without a password account (no login from another
    /// machine, no recovery key, no password reset).
    #[arg(long)]
    pub no_account: bool,
}

/// What the password of `cove init` is for (in the error when there is no source).
pub fn why_password(args: &InitArgs) -> &'static str {
    if args.no_account {
        "--lock needs a password for the new home"
    } else {
        "cove init registers a password for the account (or pass --no-account for a device without one)"
    }
}

/// Runs `cove init`: the device, then (given `account`, its password) the password account
/// and the recovery key, printed once.
pub async fn run(
    home: Home,
    args: InitArgs,
    account: Option<Zeroizing<String>>,
) -> anyhow::Result<()> {
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
    let Some(password) = account else {
        device.close().await;
        return Ok(());
    };
    let user = device.user().clone();
    let recovery = device
        .register_account(password.as_bytes())
        .await
        .context("the device is registered, but its password account is not")?;
    println!("registered a password account for {user}");
    println!();
    println!("recovery key: {}", recovery.display().as_str());
    println!();
    println!(
        "Write the recovery key down now and keep it away from this machine: it is shown only\n\
         this once (`cove recovery-key show` shows it again, with the password). With it you\n\
         can reset a forgotten password (`cove password reset --recovery-key ...`); without\n\
         both the password and the recovery key the account cannot be recovered."
    );
    Ok(())
}
