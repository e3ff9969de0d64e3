//! The command line: one module per command group. To add a command, add a module with an
//! `Args` struct (clap derive, with an `after_help` example) and an `async fn run`, then one
//! variant in [`Command`] and one arm in [`run`].

mod account;
mod audio;
mod backup;
mod chat;
mod daemon;
pub(crate) mod device;
mod drive;
mod files;
mod group;
mod init;
mod login;
mod messages;
mod safety;
mod verify;
mod via_daemon;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use cove::config::Home;

/// Cove: end-to-end encrypted group chat, file sharing and calls. The relay only ever sees ciphertext.
#[derive(Debug, Parser)]
#[command(name = "cove", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The client's home directory (config.toml, cove.db). Defaults to $COVE_HOME, then the
    /// platform data directory.
    #[arg(long, global = true, env = "COVE_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Read the password from this file (its first line) instead of asking; for scripts
    /// and tests. `COVE_PASSWORD` gives the password itself. It is the account's password
    /// (`cove init`, `recovery-key show`, `password change`, `account delete`) and a locked
    /// home's (`cove init --lock`).
    #[arg(long, global = true, env = "COVE_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// Log protocol details to stderr (-v: debug, -vv: trace). Never logs plaintext or keys.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  cove demo                                     # everything in-process: relay, alice, bob, carol
  cove init --server wss://127.0.0.1:7443 --user alice --ca cove-data/tls/cert.pem
  cove recovery-key show                        # the password account's recovery key
  cove login --server wss://127.0.0.1:7443 --user alice --ca cove-data/tls/cert.pem   # a second machine
  cove group create friends && cove group add friends bob
  cove send friends 'hello'
  cove history friends                          # each message with its short id
  cove reply friends 1a2b3c4d 'yes!' && cove react friends 1a2b3c4d 👍
  cove search pizza
  cove listen
  cove daemon --detach                          # one process owns the home; commands use it
  cove drive put ./photos / && cove drive share /photos bob   # Cove Drive";

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this device's identity and register it with a relay.
    Init(init::InitArgs),
    /// Make this machine a new device of an existing user, with the user's password.
    Login(login::LoginArgs),
    /// Create, change or leave a group.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// List the groups this device is a member of.
    Groups(group::GroupsArgs),
    /// Send a text message to a group.
    Send(messages::SendArgs),
    /// Connect, receive and print everything pending, then exit.
    Sync(messages::SyncArgs),
    /// Stay connected and print messages as they arrive.
    Listen(messages::ListenArgs),
    /// Print a group's stored messages.
    History(messages::HistoryArgs),
    /// Reply to a message of a group (quoting it).
    Reply(chat::ReplyArgs),
    /// React to a message with an emoji (or take the reaction back).
    React(chat::ReactArgs),
    /// Change the text of one of your messages.
    Edit(chat::EditArgs),
    /// Delete a message for everyone (your own, or any as an admin).
    Delete(chat::DeleteArgs),
    /// Search this device's decrypted history.
    Search(chat::SearchArgs),
    /// Show the safety number to compare with another user out of band.
    SafetyNumber(safety::SafetyNumberArgs),
    /// Compare safety numbers with a user and mark them verified (or list contacts).
    Verify(verify::VerifyArgs),
    /// Link a further device of the same user.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Run a relay and three users in-process and show them chatting.
    Demo(crate::demo::DemoArgs),
    /// Encrypt a file, upload it and send it to a group.
    SendFile(files::SendFileArgs),
    /// Download, verify and decrypt a file sent to a group.
    Download(files::DownloadArgs),
    /// Encrypt and upload a file and print a share link (key in the link's fragment).
    Share(files::ShareArgs),
    /// Download and decrypt a share link.
    Fetch(files::FetchArgs),
    /// Call a group (voice/video, end-to-end encrypted; signalling inside MLS).
    Call(cove::call::cli::CallArgs),
    /// Wait for an incoming call and answer it.
    Answer(cove::call::cli::AnswerArgs),
    /// List the audio devices calls can use (`--audio-in`, `--audio-out`).
    Devices(audio::DevicesArgs),
    /// Show the password account's recovery key again.
    #[command(subcommand)]
    RecoveryKey(account::RecoveryKeyCommand),
    /// Change the account's password, or reset a forgotten one with the recovery key.
    #[command(subcommand)]
    Password(account::PasswordCommand),
    /// Delete the password account, every device of it and its data at the relay.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Run the daemon: own this home's connection, database and calls, and serve JSON-RPC on
    /// HOME/daemon.sock; other commands then go through it.
    Daemon(daemon::DaemonArgs),
    /// Unlock a locked home for a while: start the daemon in the background with the
    /// password typed once; other commands then need no password while it runs.
    Unlock(daemon::UnlockArgs),
    /// Upload the messages stored since the last backup to the encrypted history backup.
    Backup(backup::BackupArgs),
    /// Restore the encrypted history backup on this device.
    RestoreHistory(backup::RestoreHistoryArgs),
    /// The terminal UI: groups, messages, files and calls, on the home's daemon.
    Tui(crate::tui::TuiArgs),
    /// Cove Drive: encrypted files synced across your devices, folders shared with people.
    #[command(subcommand, after_help = drive::HELP)]
    Drive(drive::DriveCommand),
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // A running daemon serves most commands (before any password is asked: it holds the
    // home open already).
    if let Ok(plain) = resolve_home(cli.home.clone())
        && via_daemon::try_run(&plain, &cli.command).await?
    {
        return Ok(());
    }
    let passwords = password::Source::new(cli.password_file);
    let resolve_home = |home: Option<PathBuf>| -> anyhow::Result<Home> {
        let home = resolve_home(home)?;
        if home.is_locked() {
            let why = format!("{} is locked with a password", home.dir().display());
            Ok(home.with_password(passwords.get("password for this Cove home: ", &why)?))
        } else {
            Ok(home)
        }
    };
    let home = cli.home;
    // Only the directory (for the daemon hint): never asks for a password.
    let plain_home = self::resolve_home(home.clone()).ok();
    let result = match cli.command {
        Command::Init(args) => {
            let home = resolve_home(home)?;
            let password = if args.lock || !args.no_account {
                Some(passwords.new_password(init::why_password(&args))?)
            } else {
                None
            };
            let home = match (&password, args.lock) {
                (Some(password), true) => home.locked_with(password.clone()),
                _ => home,
            };
            let account = password.filter(|_| !args.no_account);
            init::run(home, args, account).await
        }
        Command::Login(args) => {
            // A new home: never locked yet, so no password is asked for it.
            let home = crate::cli::resolve_home(home)?;
            let why = format!("logging in as {}", args.user);
            let password = passwords.get(&format!("password of {}: ", args.user), &why)?;
            let home = if args.lock {
                home.locked_with(password.clone())
            } else {
                home
            };
            login::run(home, args, password.as_bytes()).await
        }
        Command::Group(cmd) => group::run(resolve_home(home)?, cmd).await,
        Command::Groups(args) => group::run_groups(resolve_home(home)?, args).await,
        Command::Send(args) => messages::run_send(resolve_home(home)?, args).await,
        Command::Sync(args) => messages::run_sync(resolve_home(home)?, args).await,
        Command::Listen(args) => messages::run_listen(resolve_home(home)?, args).await,
        Command::History(args) => messages::run_history(resolve_home(home)?, args).await,
        Command::Reply(args) => chat::run_reply(resolve_home(home)?, args).await,
        Command::React(args) => chat::run_react(resolve_home(home)?, args).await,
        Command::Edit(args) => chat::run_edit(resolve_home(home)?, args).await,
        Command::Delete(args) => chat::run_delete(resolve_home(home)?, args).await,
        Command::Search(args) => chat::run_search(resolve_home(home)?, args).await,
        Command::SafetyNumber(args) => safety::run(resolve_home(home)?, args).await,
        Command::Verify(args) => verify::run(resolve_home(home)?, args).await,
        Command::Device(cmd) => device::run(resolve_home(home)?, cmd).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::SendFile(args) => files::run_send_file(resolve_home(home)?, args).await,
        Command::Download(args) => files::run_download(resolve_home(home)?, args).await,
        Command::Share(args) => files::run_share(resolve_home(home)?, args).await,
        Command::Fetch(args) => files::run_fetch(resolve_home(home).ok(), args).await,
        Command::Call(args) => cove::call::cli::run_call(resolve_home(home)?, args).await,
        Command::Answer(args) => cove::call::cli::run_answer(resolve_home(home)?, args).await,
        Command::Devices(args) => audio::run(args),
        // These read only the home's configuration (a locked home's password is not
        // needed for it): the account's password is what they ask for.
        Command::RecoveryKey(cmd) => {
            account::run_recovery_key(self::resolve_home(home)?, &passwords, cmd).await
        }
        Command::Password(cmd) => {
            account::run_password(self::resolve_home(home).ok(), &passwords, cmd).await
        }
        Command::Account(cmd) => {
            account::run_account(self::resolve_home(home)?, &passwords, cmd).await
        }
        Command::Daemon(args) => {
            let home = self::resolve_home(home)?;
            // A locked home's password is asked once, here, and kept by the daemon.
            let password = if home.is_locked() {
                let why = format!("{} is locked with a password", home.dir().display());
                Some(passwords.get("password for this Cove home: ", &why)?)
            } else {
                None
            };
            daemon::run(home, args, password).await
        }
        Command::Unlock(args) => {
            let home = self::resolve_home(home)?;
            daemon::unlock(home, args, &passwords).await
        }
        Command::Drive(cmd) => drive::run(resolve_home(home)?, cmd).await,
        Command::Backup(args) => backup::run_backup(resolve_home(home)?, args).await,
        Command::RestoreHistory(args) => backup::run_restore(resolve_home(home)?, args).await,
        Command::Tui(args) => {
            // The password is asked for only if a daemon must be started (for it).
            let dir = self::resolve_home(home)?.dir().to_owned();
            let password = || -> anyhow::Result<_> {
                if !Home::new(&dir).is_locked() {
                    return Ok(None);
                }
                let why = format!("{} is locked with a password", dir.display());
                Ok(Some(passwords.get("password for this Cove home: ", &why)?))
            };
            crate::tui::run(&dir, password, args).await
        }
    };
    match (result, plain_home) {
        (Err(e), Some(home)) if busy(&e) => Err(daemon_hint(e, &home).await),
        (result, _) => result,
    }
}

/// Whether the home's lock was taken by another process.
fn busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<cove::config::ConfigError>(),
            Some(cove::config::ConfigError::Busy(_))
        ) || matches!(
            c.downcast_ref::<cove::DeviceError>(),
            Some(cove::DeviceError::Config(cove::config::ConfigError::Busy(
                _
            )))
        )
    })
}

/// When a daemon holds the home, says so: this command does not go through it.
async fn daemon_hint(e: anyhow::Error, home: &Home) -> anyhow::Error {
    let Ok(Some(mut client)) = cove::daemon::client::DaemonClient::connect(home).await else {
        return e;
    };
    let pid = client
        .call("status", serde_json::json!({}))
        .await
        .ok()
        .and_then(|s| s["pid"].as_u64());
    let pid = pid.map(|p| format!(" {p}")).unwrap_or_default();
    anyhow::anyhow!(
        "a cove daemon{pid} serves {} and this command does not go through it; stop the daemon \
         (`kill{pid}`) to run it",
        home.dir().display()
    )
}

pub(crate) mod password {
    //! Where a home's password comes from: `--password-file`, `COVE_PASSWORD`, or the
    //! terminal (without echo).

    use std::path::{Path, PathBuf};

    use anyhow::{Context as _, bail};
    use zeroize::Zeroizing;

    /// The longest password file read (a password is one line).
    const MAX_PASSWORD_FILE: u64 = 4096;

    /// The password source of one command.
    pub struct Source {
        file: Option<PathBuf>,
    }

    impl Source {
        pub fn new(file: Option<PathBuf>) -> Source {
            Source { file }
        }

        /// The password, from the file, the environment or the terminal.
        pub fn get(&self, prompt: &str, why: &str) -> anyhow::Result<Zeroizing<String>> {
            if let Some(path) = &self.file {
                return read_file(path);
            }
            if let Ok(password) = std::env::var("COVE_PASSWORD") {
                return non_empty(Zeroizing::new(password));
            }
            if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                bail!(
                    "{why}: set COVE_PASSWORD or pass --password-file FILE (there is no terminal to ask on)"
                );
            }
            let typed = Zeroizing::new(rpassword::prompt_password(prompt)?);
            non_empty(typed)
        }

        /// A new password: from the file or the environment as given, or typed twice.
        /// `why` says what it is for, in the error when there is no source.
        pub fn new_password(&self, why: &str) -> anyhow::Result<Zeroizing<String>> {
            if self.file.is_some() || std::env::var_os("COVE_PASSWORD").is_some() {
                return self.get("", why);
            }
            let first = self.get("new password: ", why)?;
            let second = self.get("the same password again: ", why)?;
            if first != second {
                bail!("the two passwords differ; nothing was created");
            }
            Ok(first)
        }
    }

    impl Source {
        /// A new password for an account (a change or a reset): from `new_file`, else
        /// `COVE_NEW_PASSWORD`, else (when `or_current`, for a reset, which asks no other
        /// password) the ordinary source's file or `COVE_PASSWORD`, else typed twice.
        pub fn new_account_password(
            &self,
            new_file: Option<&Path>,
            or_current: bool,
            why: &str,
        ) -> anyhow::Result<Zeroizing<String>> {
            if let Some(path) = new_file {
                return read_file(path);
            }
            if let Ok(password) = std::env::var("COVE_NEW_PASSWORD") {
                return non_empty(Zeroizing::new(password));
            }
            if or_current {
                return self.new_password(why);
            }
            Source { file: None }.typed_twice(why)
        }

        fn typed_twice(&self, why: &str) -> anyhow::Result<Zeroizing<String>> {
            if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                bail!(
                    "{why}: set COVE_NEW_PASSWORD or pass --new-password-file FILE (there is no terminal to ask on)"
                );
            }
            let first = non_empty(Zeroizing::new(rpassword::prompt_password(
                "new password: ",
            )?))?;
            let second = Zeroizing::new(rpassword::prompt_password("the same password again: ")?);
            if first != second {
                bail!("the two passwords differ; nothing was changed");
            }
            Ok(first)
        }
    }

    /// The first line of a password file.
    fn read_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("reading the password file {}", path.display()))?;
        if meta.len() > MAX_PASSWORD_FILE {
            bail!("{} is not a password file (over 4 KiB)", path.display());
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the password file {}", path.display()))?,
        );
        let line = text.lines().next().unwrap_or("");
        non_empty(Zeroizing::new(line.to_owned()))
    }

    fn non_empty(password: Zeroizing<String>) -> anyhow::Result<Zeroizing<String>> {
        if password.is_empty() {
            bail!("the password is empty");
        }
        Ok(password)
    }
}

/// `--home`, else `$COVE_HOME` (handled by clap), else the platform data directory.
fn resolve_home(home: Option<PathBuf>) -> anyhow::Result<Home> {
    if let Some(dir) = home {
        return Ok(Home::new(dir));
    }
    let dirs = directories::ProjectDirs::from("", "", "cove")
        .context("no home directory found; pass --home DIR or set COVE_HOME")?;
    Ok(Home::new(dirs.data_dir()))
}

/// Formats an error and its causes on one line: `what: why: root cause`, with what another
/// user wrote in it (a group name, a peer's reason) [`cove::escape`]d.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        // Skip a cause whose text its parent already included (thiserror `{0}` wrapping).
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    cove::escape(&out.replace('\n', " "))
}

/// Logs to stderr at `warn` by default (openmls off), more with `-v`; `RUST_LOG` overrides.
pub fn init_logging(verbose: u8) {
    // openmls logs at ERROR level for inputs the core handles itself (e.g. a duplicate
    // delivery it drops), so it is silent unless asked for.
    let default = match verbose {
        // webrtc-rs warns about benign transient states while a call connects.
        0 => "warn,openmls=off,rtc=error,rtc_dtls=error,rtc_ice=error,webrtc=error",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
