//! `cove recovery-key show`, `cove password change|reset`, `cove account delete`: the
//! password account's lifecycle. The work is the `cove` library's ([`cove::account`]); this
//! module parses, asks for passwords and prints.

use std::io::BufRead as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use cove::UserName;
use cove::account::{self, AccountServer, RecoveryKey};
use cove::config::Home;

use super::password;

/// `cove recovery-key ...`.
#[derive(Debug, Subcommand)]
pub enum RecoveryKeyCommand {
    /// Show the account's recovery key again (needs the password).
    #[command(after_help = "\
Example:
  cove recovery-key show
  cove --password-file pw.txt recovery-key show

Logs in with the password (OPAQUE) and unwraps the account bundle, which carries the
recovery key. Anyone who sees the key can reset the password: show it only where nobody
else can read it.")]
    Show,
}

/// `cove password ...`.
#[derive(Debug, Subcommand)]
pub enum PasswordCommand {
    /// Change the account's password (needs the current one).
    #[command(after_help = "\
Example:
  cove password change
  cove --password-file old.txt password change --new-password-file new.txt

Asks for the current password, then the new one twice. The relay replaces the password
record and the account bundle wrapped under it; the recovery key stays the same and the
user's other devices keep working. A home locked with the old password is locked with the
new one. The new password comes from --new-password-file, COVE_NEW_PASSWORD, or the
terminal.")]
    Change(ChangeArgs),
    /// Reset a forgotten password with the recovery key (needs no home).
    #[command(after_help = "\
Example:
  cove password reset --recovery-key abcde-fghij-... --server wss://127.0.0.1:7443 --user alice --ca cove-data/tls/cert.pem

Proves the recovery key to the relay, unwraps the account bundle with it and registers the
new password (asked twice, or --new-password-file / COVE_NEW_PASSWORD / --password-file /
COVE_PASSWORD). Works from any machine. Existing devices keep working; a home locked with
the forgotten password stays locked with it.")]
    Reset(ResetArgs),
}

/// Arguments of `cove password change`.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// Read the new password from this file (its first line); `COVE_NEW_PASSWORD` gives it
    /// itself.
    #[arg(long, env = "COVE_NEW_PASSWORD_FILE", value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

/// Arguments of `cove password reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The recovery key shown at `cove init` (case, spaces and dashes do not matter).
    #[arg(long, value_name = "KEY")]
    pub recovery_key: String,
    /// The relay, as wss://HOST:PORT.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The account's user name.
    #[arg(long, value_name = "NAME")]
    pub user: UserName,
    /// Trust this PEM certificate for the relay instead of the public web PKI.
    #[arg(long, value_name = "CERT.pem")]
    pub ca: Option<PathBuf>,
    /// Read the new password from this file (its first line); `COVE_NEW_PASSWORD` gives it
    /// itself.
    #[arg(long, env = "COVE_NEW_PASSWORD_FILE", value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

/// `cove account ...`.
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Delete the account at the relay, then this home (needs the password).
    #[command(after_help = "\
Example:
  cove account delete
  cove --password-file pw.txt account delete --yes

Logs in with the password, then the relay removes the password record, both wrapped
bundles, the signed device list, every device of the user (KeyPackages, inboxes, group
memberships: other members no longer deliver to them) and the files they uploaded, and
frees the name for anyone to register. Only after the relay confirmed is this home
removed. There is no undo.")]
    Delete(DeleteArgs),
}

/// Arguments of `cove account delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Do not ask to type the user name to confirm.
    #[arg(long)]
    pub yes: bool,
}

/// The relay and user of an initialised home (read from its configuration; the database is
/// not opened, so a locked home needs no password for this).
fn home_account(home: &Home) -> anyhow::Result<(AccountServer, UserName)> {
    let config = home.load()?;
    let trust = home.trust(&config);
    let tls = cove::transport::client_config(&trust)?;
    Ok((
        AccountServer {
            server: config.server.clone(),
            tls: std::sync::Arc::new(tls),
        },
        config.user,
    ))
}

/// Runs `cove recovery-key ...`.
pub async fn run_recovery_key(
    home: Home,
    passwords: &password::Source,
    cmd: RecoveryKeyCommand,
) -> anyhow::Result<()> {
    match cmd {
        RecoveryKeyCommand::Show => {
            let (server, user) = home_account(&home)?;
            let password = passwords.get(
                &format!("password of {user}: "),
                "cove recovery-key show needs the account's password",
            )?;
            let key = account::show_recovery_key(&server, &user, password.as_bytes()).await?;
            println!("recovery key: {}", key.display().as_str());
            Ok(())
        }
    }
}

/// Runs `cove password ...`.
pub async fn run_password(
    home: Option<Home>,
    passwords: &password::Source,
    cmd: PasswordCommand,
) -> anyhow::Result<()> {
    match cmd {
        PasswordCommand::Change(args) => {
            let home = home.context("cove password change needs a home")?;
            let (server, user) = home_account(&home)?;
            let current = passwords.get(
                &format!("current password of {user}: "),
                "cove password change needs the current password",
            )?;
            let new = passwords.new_account_password(
                args.new_password_file.as_deref(),
                false,
                "cove password change needs the new password",
            )?;
            account::change_password(&server, &user, current.as_bytes(), new.as_bytes()).await?;
            println!("changed the password of {user} at {}", server.server);
            if home.is_locked() {
                match home.clone().with_password(current).relock(&new) {
                    Ok(_) => println!(
                        "{} is now locked with the new password",
                        home.dir().display()
                    ),
                    Err(e) => eprintln!(
                        "warning: {} stays locked with its old password: {e}",
                        home.dir().display()
                    ),
                }
            }
            Ok(())
        }
        PasswordCommand::Reset(args) => {
            let recovery =
                RecoveryKey::parse(&args.recovery_key).map_err(cove::DeviceError::Account)?;
            let server = AccountServer::new(&args.server, args.ca.as_deref())?;
            let new = passwords.new_account_password(
                args.new_password_file.as_deref(),
                true,
                "cove password reset needs the new password",
            )?;
            account::reset_password(&server, &args.user, &recovery, new.as_bytes()).await?;
            println!(
                "reset the password of {} at {} with the recovery key",
                args.user, server.server
            );
            Ok(())
        }
    }
}

/// Runs `cove account ...`.
pub async fn run_account(
    home: Home,
    passwords: &password::Source,
    cmd: AccountCommand,
) -> anyhow::Result<()> {
    match cmd {
        AccountCommand::Delete(args) => {
            let (server, user) = home_account(&home)?;
            if !args.yes {
                eprint!(
                    "This deletes the account {user} at {} and this home, for good.\n\
                     Type the user name to confirm: ",
                    server.server
                );
                let mut typed = String::new();
                std::io::stdin().lock().read_line(&mut typed)?;
                if typed.trim() != user.as_str() {
                    bail!("not deleted: the name typed is not {user}");
                }
            }
            let password = passwords.get(
                &format!("password of {user}: "),
                "cove account delete needs the account's password",
            )?;
            // The home must not be in use by another process while it goes away.
            let lock = home.lock()?;
            account::delete_account(&server, &user, password.as_bytes()).await?;
            println!(
                "deleted the account {user} at {} (the name is free again)",
                server.server
            );
            drop(lock);
            if cove::remove_deleted_home(&home)? {
                println!("removed {}", home.dir().display());
            } else {
                println!(
                    "removed the home's files; {} still holds other files",
                    home.dir().display()
                );
            }
            Ok(())
        }
    }
}
