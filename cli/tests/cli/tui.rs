//! `cove tui` in a real terminal: tmux runs it in a detached 80x24 session (keys in with
//! `send-keys`, the screen out with `capture-pane`) against a real relay, with bob on the CLI.

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{fails, init, ok, relay};

/// Only stops a hung test; nothing waits this long when things work.
const DEADLINE: Duration = Duration::from_secs(90);

/// A tmux server of its own (its socket in the test's directory) with one 80x24 session
/// running `sh`; killed on drop, with the daemon `cove tui` started in `home`.
struct Tmux {
    socket: PathBuf,
    home: PathBuf,
}

impl Tmux {
    fn start(dir: &Path, home: &Path) -> Tmux {
        let tmux = Tmux {
            socket: dir.join(format!(
                "tmux-{}.sock",
                home.file_name().unwrap().to_str().unwrap()
            )),
            home: home.to_owned(),
        };
        let out = tmux
            .command()
            .args([
                "new-session",
                "-d",
                "-x",
                "80",
                "-y",
                "24",
                "-s",
                "tui",
                "sh",
            ])
            .env_remove("COVE_HOME")
            .env_remove("TMUX")
            .output()
            .expect("running tmux (install it: .ci/install-deps)");
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn command(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    /// Types `text` literally, then presses Enter.
    fn type_line(&self, text: &str) {
        let status = self
            .command()
            .args(["send-keys", "-t", "tui", "-l", text])
            .status()
            .unwrap();
        assert!(status.success());
        let status = self
            .command()
            .args(["send-keys", "-t", "tui", "Enter"])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Presses one key (tmux's name for it, e.g. `M-a`).
    fn key(&self, key: &str) {
        let status = self
            .command()
            .args(["send-keys", "-t", "tui", key])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Runs `cove tui` for the home in the shell and waits for its first screen (the group
    /// list, connected); prints the exit code when it ends.
    fn run_tui(&self) -> String {
        self.start_tui();
        self.wait_for("group list and status line", |s| {
            s.contains("> friends") && s.contains(" @ wss://") && s.contains("│ connected")
        })
    }

    /// Runs `cove tui` for the home in the shell; prints the exit code when it ends.
    fn start_tui(&self) {
        // A tone and no playback: the test machine may have no sound card.
        let line = format!(
            "{} --home {} tui --audio-in tone --audio-out none; echo TUI-EXIT=$?",
            env!("CARGO_BIN_EXE_cove"),
            self.home.display()
        );
        self.type_line(&line);
    }

    /// Runs a tmux command on the session and returns its output.
    fn tmux(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Whether the window rang the bell (tmux flags it; nothing is attached to clear it).
    fn bell(&self) -> bool {
        self.tmux(&["display-message", "-p", "-t", "tui", "#{window_bell_flag}"])
            .trim()
            == "1"
    }

    fn screen(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-t", "tui"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The screen once `want` accepts it (polling; panics with the last screen at the
    /// deadline).
    fn wait_for(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            let screen = self.screen();
            if want(&screen) {
                return screen;
            }
            assert!(Instant::now() < end, "no {what} on the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
        // The daemon `cove tui` started keeps running after the UI: stop it.
        if let Ok(mut s) = UnixStream::connect(self.home.join("daemon.sock")) {
            let _ = s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"shutdown\"}\n");
            let _ = std::io::Read::read(&mut s, &mut [0u8; 256]);
        }
    }
}

/// alice runs `cove tui` (which starts her daemon) in an 80x24 terminal; bob, on the CLI,
/// sends her a message, which her screen shows with its time and sender; the UI redraws to a
/// resized terminal; she types a reply,
/// which bob's `cove sync` prints; bob's file shows as `[notes.txt 17 bytes #1]` and
/// `/download 1` saves it; `/quit` leaves the UI and gives the shell back (exit code 0, the
/// UI's screen gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tui_shows_bobs_message_and_sends_alices_reply() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let dir_path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        friends(&alice, &bob, &server, &ca);

        let tmux = Tmux::start(&dir_path, &alice);
        let screen = tmux.run_tui();
        assert!(screen.contains(" friends · alice, bob"), "{screen}");
        assert_eq!(screen.lines().count(), 24, "{screen}");

        ok(&bob, &["send", "friends", "hello alice, from bob"]);
        tmux.wait_for("bob's message", |s| {
            s.lines()
                .any(|l| l.contains("<bob> hello alice, from bob") && has_time(l))
        });

        // A bigger terminal: the UI redraws to fill it (the status line on the last row).
        tmux.tmux(&["resize-window", "-t", "tui", "-x", "100", "-y", "30"]);
        tmux.wait_for("the UI at 100x30", |s| {
            let rows: Vec<&str> = s.lines().collect();
            rows.len() == 30
                && rows[29].contains("F1 help")
                && rows[28].starts_with('>')
                && rows[2].contains("<bob> hello alice, from bob")
        });

        tmux.type_line("hi bob, typed in the tui");
        tmux.wait_for("alice's reply in her pane", |s| {
            s.contains("<alice> hi bob, typed in the tui")
        });
        let end = Instant::now() + DEADLINE;
        let mut synced = String::new();
        while !synced.contains("friends <alice> hi bob, typed in the tui") {
            assert!(Instant::now() < end, "bob never got the reply: {synced}");
            synced.push_str(&ok(&bob, &["sync"]));
        }

        // A file from bob shows as `[name size #N]`; `/download N` saves it.
        let notes = dir_path.join("notes.txt");
        std::fs::write(&notes, "seventeen bytes!\n").unwrap();
        ok(&bob, &["send-file", "friends", notes.to_str().unwrap()]);
        tmux.wait_for("bob's file", |s| {
            s.contains("<bob> [notes.txt 17 bytes #1]")
        });
        tmux.type_line("/download 1");
        let saved = alice.join("downloads").join("notes.txt");
        tmux.wait_for("the saved file", |s| s.contains("* saved "));
        assert_eq!(std::fs::read(&saved).unwrap(), b"seventeen bytes!\n");

        tmux.type_line("/quit");
        let screen = tmux.wait_for("the shell after the UI", |s| s.contains("TUI-EXIT=0"));
        assert!(
            !screen.contains("F1 help"),
            "the UI's screen stayed:\n{screen}"
        );
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// bob calls the group from the CLI: alice's TUI shows the incoming-call banner and rings
/// the terminal bell, Alt-A
/// answers, bob's side connects, and alice's pane records the end of the call when bob's
/// one-second call hangs up; the banner is gone then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tui_shows_an_incoming_call_and_alt_a_answers_it() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let dir_path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        friends(&alice, &bob, &server, &ca);
        let tmux = Tmux::start(&dir_path, &alice);
        tmux.run_tui();
        let mut caller = Command::new(env!("CARGO_BIN_EXE_cove"))
            .arg("--home")
            .arg(&bob)
            .args(["call", "friends", "--duration", "1", "--ring-timeout", "60"])
            .env_remove("COVE_HOME")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Stops bob's call if the test fails before it ends.
        let mut stdout = caller.stdout.take().unwrap();
        let caller = KillOnDrop(caller);
        assert!(!tmux.bell(), "a bell before the call");
        let screen = tmux.wait_for("the call banner", |s| {
            s.contains("INCOMING CALL from bob in friends: Alt-A or /answer, Alt-D or /decline")
        });
        assert!(screen.contains("call: ringing"), "{screen}");
        assert!(tmux.bell(), "no bell for the call");
        tmux.key("M-a");
        let mut said = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut said).unwrap();
        let status = caller.wait();
        assert!(status.success(), "bob's call failed: {said}");
        assert!(said.contains("connected to alice"), "{said}");
        let screen = tmux.wait_for("the call's end", |s| s.contains("-- call ended"));
        assert!(!screen.contains("INCOMING CALL"), "{screen}");
        tmux.type_line("/quit");
        tmux.wait_for("the shell after the UI", |s| s.contains("TUI-EXIT=0"));
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// Two TUIs: alice creates a group with bob by typing `/create weekend bob`; bob's UI lists
/// it as soon as his daemon joins, and what bob types there shows on alice's screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_created_in_one_tui_appears_in_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let dir_path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        init(&alice, &server, &ca, "alice");
        init(&bob, &server, &ca, "bob");
        let (a, b) = (Tmux::start(&dir_path, &alice), Tmux::start(&dir_path, &bob));
        a.start_tui();
        b.start_tui();
        let connected = |s: &str| s.contains("No groups yet") && s.contains("│ connected");
        a.wait_for("alice's empty UI", connected);
        b.wait_for("bob's empty UI", connected);

        a.type_line("/create weekend bob");
        a.wait_for("the new group in alice's list", |s| {
            s.contains("> weekend") && s.contains("weekend · alice, bob")
        });
        b.wait_for("the group in bob's list", |s| s.contains("> weekend"));
        b.type_line("hello alice");
        a.wait_for("bob's message", |s| s.contains("<bob> hello alice"));
        a.type_line("/quit");
        b.type_line("/quit");
        a.wait_for("alice's shell", |s| s.contains("TUI-EXIT=0"));
        b.wait_for("bob's shell", |s| s.contains("TUI-EXIT=0"));
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// `cove tui --help` lists the commands and the keys.
#[test]
fn the_tui_help_lists_its_commands_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let help = ok(dir.path(), &["tui", "--help"]);
    for needle in [
        "/file PATH",
        "/download N",
        "/call",
        "/answer  /decline",
        "/hangup",
        "/add USER...",
        "/remove USER...",
        "/leave",
        "/verify USER [yes]",
        "/help  /quit",
        "Tab Ctrl-N Alt-Down",
        "S-Tab Ctrl-P Alt-Up",
        "PgUp PgDn",
        "Alt-A Alt-D",
        "--audio-in",
    ] {
        assert!(help.contains(needle), "{needle} is missing:\n{help}");
    }
}

/// Without a terminal (output to a pipe), `cove tui` fails at once, in one line, saying why.
#[test]
fn the_tui_without_a_terminal_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(dir.path(), &["tui"]);
    assert_eq!(
        err.trim_end(),
        "error: cove tui needs a terminal (use `cove listen` or `cove daemon` in scripts)"
    );
}

/// A home locked with a password: `cove tui` asks for it once, on the terminal, and starts
/// the daemon with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tui_of_a_locked_home_asks_for_the_password_once() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let alice = dir.path().join("alice");
    let dir_path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_cove"))
            .arg("--home")
            .arg(&alice)
            .args([
                "init", "--lock", "--server", &server, "--user", "alice", "--ca", &ca,
            ])
            .env_remove("COVE_HOME")
            .env_remove("COVE_PASSWORD_FILE")
            .env("COVE_PASSWORD", "correct horse")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tmux = Tmux::start(&dir_path, &alice);
        tmux.type_line(&format!(
            "env -u COVE_PASSWORD -u COVE_PASSWORD_FILE {} --home {} tui; echo TUI-EXIT=$?",
            env!("CARGO_BIN_EXE_cove"),
            alice.display()
        ));
        tmux.wait_for("the password prompt", |s| {
            s.lines()
                .any(|l| l.trim_end() == "password for this Cove home:")
        });
        tmux.type_line("correct horse");
        tmux.wait_for("the UI", |s| {
            s.contains("No groups yet") && s.contains("│ connected")
        });
        tmux.type_line("/quit");
        let screen = tmux.wait_for("the shell after the UI", |s| s.contains("TUI-EXIT=0"));
        assert_eq!(
            screen.matches("password for this Cove home:").count(),
            1,
            "{screen}"
        );
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// A child process killed (if still running) when dropped.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn wait(mut self) -> std::process::ExitStatus {
        self.0.wait().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// alice and bob with a group `friends` that bob has joined.
fn friends(alice: &Path, bob: &Path, server: &str, ca: &str) {
    init(alice, server, ca, "alice");
    init(bob, server, ca, "bob");
    ok(alice, &["group", "create", "friends"]);
    ok(alice, &["group", "add", "friends", "bob"]);
    // bob joins (the welcome).
    ok(bob, &["sync"]);
}

/// Whether a pane line shows an `HH:MM ` time before the message.
fn has_time(line: &str) -> bool {
    line.split('│').any(|part| {
        let b = part.as_bytes();
        b.len() > 6
            && b[0].is_ascii_digit()
            && b[1].is_ascii_digit()
            && b[2] == b':'
            && b[3].is_ascii_digit()
            && b[4].is_ascii_digit()
            && b[5] == b' '
    })
}
