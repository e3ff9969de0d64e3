//! `cove daemon`: runs the daemon (the logic is in `cove::daemon`; this only starts it).

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use zeroize::Zeroizing;

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
once (asked on the terminal, or COVE_PASSWORD / --password-file); with --detach it is handed to
the background daemon through a pipe, never a file or its environment. `cove unlock` does the
same for a locked home.")]
pub struct DaemonArgs {
    /// Run in the background (output to HOME/daemon.log); returns once the socket answers.
    #[arg(long)]
    pub detach: bool,
}

/// Arguments of `cove unlock`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove --home ~/.cove-carol unlock        # asks the password once
  cove --home ~/.cove-carol send friends 'hi'   # no password asked: the daemon serves it

A home made with `cove init --lock` (or `cove login --lock`) keeps its database key wrapped
under the password (Argon2id). `cove unlock` starts `cove daemon` in the background with the
password typed once (handed over through a pipe); the daemon keeps the unwrapped key in memory
while it runs, and every command that goes through the daemon needs no password. Stopping the
daemon (`kill PID`, or the JSON-RPC `shutdown` method) locks the home again.")]
pub struct UnlockArgs {}

/// How long `--detach` waits for the background daemon's socket.
const DETACH_WAIT: Duration = Duration::from_secs(60);

/// Runs `cove daemon`.
pub async fn run(
    home: Home,
    args: DaemonArgs,
    password: Option<Zeroizing<String>>,
) -> anyhow::Result<()> {
    if args.detach {
        return detach(&home, password).await;
    }
    let home = match password {
        Some(password) => home.with_password(password),
        None => home,
    };
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

/// Runs `cove unlock`: a locked home's daemon in the background, with the password asked
/// once.
pub async fn unlock(
    home: Home,
    _args: UnlockArgs,
    passwords: &super::password::Source,
) -> anyhow::Result<()> {
    if !home.is_locked() {
        anyhow::bail!(
            "{} is not locked with a password (nothing to unlock; `cove init --lock` makes a locked home)",
            home.dir().display()
        );
    }
    if let Some(mut client) = DaemonClient::connect(&home).await? {
        let status = client.call("status", serde_json::json!({})).await?;
        println!(
            "{} is unlocked already: cove daemon {} serves it",
            home.dir().display(),
            status["pid"]
        );
        return Ok(());
    }
    let why = format!("{} is locked with a password", home.dir().display());
    let password = passwords.get("password for this Cove home: ", &why)?;
    // Checked here, so a wrong password is said at once (not in the daemon's log).
    home.clone()
        .with_password(password.clone())
        .check_key()
        .context("unlocking the home")?;
    detach(&home, Some(password)).await?;
    println!(
        "{} is unlocked while the daemon runs (stop it to lock it again)",
        home.dir().display()
    );
    Ok(())
}

/// Starts `cove daemon` in the background, in its own process group, and waits until its
/// socket answers (or it exits). A locked home's password goes to it through a pipe (its
/// `--password-file /dev/stdin`).
async fn detach(home: &Home, password: Option<Zeroizing<String>>) -> anyhow::Result<()> {
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
    if password.is_some() {
        command.arg("--password-file").arg("/dev/stdin");
    }
    let mut child = command
        .arg("daemon")
        .env_remove("COVE_PASSWORD")
        .stdin(if password.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the daemon")?;
    if let (Some(password), Some(mut stdin)) = (password, child.stdin.take()) {
        let mut line = Zeroizing::new(Vec::with_capacity(password.len() + 1));
        line.extend_from_slice(password.as_bytes());
        line.push(b'\n');
        stdin
            .write_all(&line)
            .context("handing the password to the daemon")?;
        // Dropped: the daemon reads to the end of the pipe.
    }
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
