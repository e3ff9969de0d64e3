//! `cove tui`: a terminal UI on the home's daemon (`cove daemon`, started if none runs).
//!
//! Three parts, so the logic is testable without a terminal or a daemon:
//! - [`app`]: the state and `update(now, event) -> actions`, no I/O;
//! - [`view`]: `render(&App, frame)`, a pure drawing of the state;
//! - this module and [`rpc`]: the thin loop that feeds it key presses, resizes and the
//!   daemon's lines, draws, and carries out the actions.
//!
//! ```text
//! keys (thread: crossterm::event::read) ─┐
//! daemon socket (task: rpc::connection) ─┴─> channel -> app.update -> draw
//!                                                  actions -> requests to the socket, bell, quit
//! ```

/// The commands and keys, for the help screen and `cove tui --help`.
macro_rules! keys_help {
    () => {
        "\
Commands (in the input line):
  /file PATH           send a file to this group
  /download N          save attachment #N of this group
  /call                call this group
  /answer  /decline    the ringing call (or Alt-A / Alt-D)
  /hangup              end the call
  /add USER...         add users to this group
  /remove USER...      remove users from this group
  /leave               leave this group
  /create NAME [USER...]  create a group
  /verify USER [yes]   show the safety number; yes: verified
  /reply ID TEXT       reply to message ID (the dim id after each message)
  /react ID EMOJI      react to message ID (/unreact ID EMOJI takes it back)
  /edit ID TEXT        change your message ID
  /delete ID           delete message ID for everyone
  /help  /quit         this help; exit (or Ctrl-C)
Keys:
  Tab Ctrl-N Alt-Down  next group
  S-Tab Ctrl-P Alt-Up  previous group
  PgUp PgDn            scroll messages
  Alt-A Alt-D          answer / decline a call
  Esc F1               close / open this help"
    };
}

pub mod app;
pub mod rpc;
pub mod view;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use ratatui::crossterm::event::{self as term, KeyEventKind};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use zeroize::Zeroizing;

use app::{Action, App, Event};

/// Arguments of `cove tui`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct TuiArgs {
    /// The microphone for calls made or answered here: `default`, a device from
    /// `cove devices`, `tone`, `tone:HZ`, `silence` or a WAV file. Without it, the daemon's
    /// choice (the default device if there is one).
    #[arg(long, value_name = "INPUT")]
    pub audio_in: Option<String>,
    /// The speaker for calls: `default`, a device from `cove devices`, `none` or a WAV file to
    /// record into. Without it, the daemon's choice.
    #[arg(long, value_name = "OUTPUT")]
    pub audio_out: Option<String>,
}

const AFTER_HELP: &str = concat!(
    "\
Example:
  cove tui            # in the home of `cove init`; starts `cove daemon` if none runs
  cove tui --audio-in tone --audio-out none    # calls on a machine without sound devices

The left column lists the groups with their unread counts, the right one the shown group's
messages (local times), attachments as [name size #N], membership changes, calls, warnings
and identity changes. Type a message and press Enter to send it; `//text` sends `/text`.
An incoming call shows a red banner and rings the terminal bell. The daemon keeps running
after the UI exits.

",
    keys_help!()
);

/// The daemon's socket in `home`.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("daemon.sock")
}

/// Runs `cove tui` on the home in `home`. `password` gives the home's password (if it is
/// locked) for a daemon this starts.
pub async fn run(
    home: &Path,
    password: impl FnOnce() -> anyhow::Result<Option<Zeroizing<String>>>,
    args: TuiArgs,
) -> anyhow::Result<()> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("cove tui needs a terminal (use `cove listen` or `cove daemon` in scripts)");
    }
    let socket = socket_path(home);
    if tokio::net::UnixStream::connect(&socket).await.is_err() {
        start_daemon(home, password()?).await?;
    }
    let size = ratatui::crossterm::terminal::size().context("reading the terminal size")?;
    let mut app = App::new(jiff::tz::TimeZone::system(), size);
    app.set_audio(args.audio_in, args.audio_out);
    // `try_init` enters the alternate screen and raw mode, and restores both on a panic too.
    let mut terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(e) => {
            ratatui::restore();
            return Err(e).context("setting up the terminal");
        }
    };
    let result = event_loop(&mut terminal, app, socket).await;
    ratatui::restore();
    result
}

/// Starts the home's daemon with `cove daemon --detach` (its own process group, so Ctrl-C in
/// this terminal does not stop it; output to `daemon.log` in the home), which returns once
/// the socket answers.
async fn start_daemon(home: &Path, password: Option<Zeroizing<String>>) -> anyhow::Result<()> {
    if !home.join("config.toml").exists() {
        bail!(
            "{} is not initialised: run `cove init` first",
            home.display()
        );
    }
    let exe = std::env::current_exe().context("finding the cove executable")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("--home")
        .arg(home)
        .args(["daemon", "--detach"])
        .stdin(std::process::Stdio::null());
    if let Some(password) = &password {
        command.env("COVE_PASSWORD", password.as_str());
    }
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .context("starting `cove daemon`")?
        .context("starting `cove daemon`")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim().trim_start_matches("error: ");
        bail!("`cove daemon --detach` failed: {}", cove::escape(err));
    }
    Ok(())
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    mut app: App,
    socket: PathBuf,
) -> anyhow::Result<()> {
    let (events, mut incoming) = unbounded_channel();
    let keys = events.clone();
    std::thread::spawn(move || read_terminal(keys));
    let (requests, outgoing) = unbounded_channel();
    tokio::spawn(rpc::connection(socket, events, outgoing));
    loop {
        terminal
            .draw(|frame| view::render(&app, frame))
            .context("drawing")?;
        let Some(event) = incoming.recv().await else {
            return Ok(());
        };
        let mut actions = app.update(now_ms(), event);
        // Apply whatever else is ready before drawing again.
        while let Ok(event) = incoming.try_recv() {
            actions.extend(app.update(now_ms(), event));
        }
        if perform(actions, &requests) {
            return Ok(());
        }
    }
}

/// Carries out `actions`; true to quit.
fn perform(actions: Vec<Action>, requests: &UnboundedSender<String>) -> bool {
    for action in actions {
        match action {
            Action::Request { id, method, params } => {
                // The connection task is gone only when the loop ends.
                let _ = requests.send(rpc::request_line(id, method, params));
            }
            Action::Bell => {
                let mut out = std::io::stdout();
                let _ = out.write_all(b"\x07").and_then(|()| out.flush());
            }
            Action::Quit => return true,
        }
    }
    false
}

/// Forwards key presses and resizes until the UI is gone.
fn read_terminal(events: UnboundedSender<Event>) {
    loop {
        let event = match term::read() {
            Ok(term::Event::Key(key)) if key.kind != KeyEventKind::Release => Event::Key(key),
            Ok(term::Event::Resize(w, h)) => Event::Resize(w, h),
            Ok(_) => continue,
            Err(_) => return,
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
