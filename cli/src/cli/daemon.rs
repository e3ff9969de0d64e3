//! `cove daemon`: runs the daemon (the logic is in `cove::daemon`; this only starts it).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use cove::config::Home;
use cove::daemon::client::DaemonClient;

/// Arguments of `cove daemon`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove daemon                 # in the foreground; Ctrl-C or SIGTERM stops it
  cove daemon --detach        # in the background; prints its pid once it serves
  cove send friends 'hi'      # in another terminal: goes through the daemon

One process per home owns the relay connection, the database and calls, and serves
JSON-RPC 2.0 on HOME/daemon.sock (mode 0600, one JSON object per line; see API.md). While
it runs, `cove send`, `send-file`, `download`, `groups`, `history`, `group create|add|remove|
leave`, `sync`, `listen`, `call` and `answer` talk to it instead of opening the home
themselves. Messages sent while the relay is unreachable are queued (`pending`) and go out
when it is back, also after a restart of the daemon. A home locked with a password: give it
by COVE_PASSWORD or --password-file for --detach (the background process cannot ask).")]
pub struct DaemonArgs {
    /// Run in the background (output to HOME/daemon.log); returns once the socket answers.
    #[arg(long)]
    pub detach: bool,
}

/// How long `--detach` waits for the background daemon's socket.
const DETACH_WAIT: Duration = Duration::from_secs(60);

/// Runs `cove daemon`.
pub async fn run(
    home: Home,
    args: DaemonArgs,
    password_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    if args.detach {
        return detach(&home, password_file).await;
    }
    cove::daemon::run(&home, |path| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "cove daemon {} listening on {}",
            std::process::id(),
            path.display()
        );
        let _ = out.flush();
    })
    .await?;
    let _ = writeln!(std::io::stderr(), "cove daemon stopped");
    Ok(())
}

/// Starts `cove daemon` in the background, in its own process group, and waits until its
/// socket answers (or it exits).
async fn detach(home: &Home, password_file: Option<PathBuf>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("finding the cove binary")?;
    let log_path = home.dir().join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = std::process::Command::new(exe);
    command.arg("--home").arg(home.dir());
    if let Some(file) = password_file {
        // A locked home: the background daemon reads the same password file (a password
        // typed here cannot be handed over; use COVE_PASSWORD or --password-file).
        command
            .arg("--password-file")
            .arg(std::path::absolute(file)?);
    }
    let mut child = command
        .arg("daemon")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the daemon")?;
    let deadline = tokio::time::Instant::now() + DETACH_WAIT;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the daemon exited ({status}); see {}", log_path.display());
        }
        if let Some(mut client) = DaemonClient::connect(home).await?
            && let Ok(status) = client.call("status", serde_json::json!({})).await
            && status["pid"].as_u64() == Some(u64::from(child.id()))
        {
            println!("cove daemon {} started", child.id());
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the daemon did not start serving; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
