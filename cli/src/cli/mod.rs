//! The command line: one module per command group. To add a command, add a module with an
//! `Args` struct (clap derive, with an `after_help` example) and an `async fn run`, then one
//! variant in [`Command`] and one arm in [`run`].

mod audio;
mod daemon;
pub(crate) mod device;
mod files;
mod group;
mod init;
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

    /// Read the home's password from this file (its first line) instead of asking; for
    /// scripts and tests. `COVE_PASSWORD` gives the password itself. Only a home created with
    /// `cove init --lock` has a password.
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
  cove group create friends && cove group add friends bob
  cove send friends 'hello'
  cove listen
  cove daemon --detach                          # one process owns the home; commands use it";

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this device's identity and register it with a relay.
    Init(init::InitArgs),
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
    /// Run the daemon: own this home's connection, database and calls, and serve JSON-RPC on
    /// HOME/daemon.sock; other commands then go through it.
    Daemon(daemon::DaemonArgs),
    /// The terminal UI: groups, messages, files and calls, on the home's daemon.
    Tui(crate::tui::TuiArgs),
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
    let password_file = cli.password_file.clone();
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
    // Without asking for a password: only to find a running daemon if the home is busy.
    let plain_home = self::resolve_home(home.clone()).ok();
    let result = match cli.command {
        Command::Init(args) => {
            let home = resolve_home(home)?;
            let home = if args.lock {
                home.locked_with(passwords.new_password()?)
            } else {
                home
            };
            init::run(home, args).await
        }
        Command::Group(cmd) => group::run(resolve_home(home)?, cmd).await,
        Command::Groups(args) => group::run_groups(resolve_home(home)?, args).await,
        Command::Send(args) => messages::run_send(resolve_home(home)?, args).await,
        Command::Sync(args) => messages::run_sync(resolve_home(home)?, args).await,
        Command::Listen(args) => messages::run_listen(resolve_home(home)?, args).await,
        Command::History(args) => messages::run_history(resolve_home(home)?, args).await,
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
        Command::Daemon(args) => daemon::run(resolve_home(home)?, args, password_file).await,
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

mod password {
    //! Where a home's password comes from: `--password-file`, `COVE_PASSWORD`, or the
    //! terminal (without echo).

    use std::path::PathBuf;

    use anyhow::{Context as _, bail};
    use zeroize::Zeroizing;

    /// Why `init --lock` asks.
    const WHY_NEW: &str = "--lock needs a password for the new home";

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
                let meta = std::fs::metadata(path)
                    .with_context(|| format!("reading the password file {}", path.display()))?;
                if meta.len() > MAX_PASSWORD_FILE {
                    bail!("{} is not a password file (over 4 KiB)", path.display());
                }
                let text =
                    Zeroizing::new(std::fs::read_to_string(path).with_context(|| {
                        format!("reading the password file {}", path.display())
                    })?);
                let line = text.lines().next().unwrap_or("");
                return non_empty(Zeroizing::new(line.to_owned()));
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
        pub fn new_password(&self) -> anyhow::Result<Zeroizing<String>> {
            if self.file.is_some() || std::env::var_os("COVE_PASSWORD").is_some() {
                return self.get("", WHY_NEW);
            }
            let first = self.get("new password for this Cove home: ", WHY_NEW)?;
            let second = self.get("the same password again: ", WHY_NEW)?;
            if first != second {
                bail!("the two passwords differ; nothing was created");
            }
            Ok(first)
        }
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
