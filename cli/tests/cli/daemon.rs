//! `cove daemon`: one process owns a home and serves JSON-RPC on `HOME/daemon.sock`; the
//! CLI's other commands (other processes, as from other terminals) and a Python bot use it.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use cove_server::{Relay, RelayConfig, StoreKind};

use crate::{cove, fails, init, lines_of, ok, plain, relay};

/// Only stops a hung test; nothing waits this long when things work.
const DEADLINE: Duration = Duration::from_secs(90);

/// A `cove daemon` child process.
struct Daemon {
    child: Child,
    /// Keeps the output readers (and so the child's pipes) open.
    _lines: Receiver<String>,
    socket: PathBuf,
}

impl Daemon {
    /// Starts `cove daemon` on `home` and waits until it says it listens.
    fn start(home: &Path) -> Daemon {
        Daemon::start_with_env(home, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    fn start_with_env(home: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cove"))
            .arg("--home")
            .arg(home)
            .arg("daemon")
            .env_remove("COVE_HOME")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting cove daemon");
        let lines = lines_of(vec![
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ]);
        let seen = wait_line(&lines, |l| l.contains("listening on"));
        let socket = PathBuf::from(seen.rsplit("listening on ").next().unwrap());
        assert_eq!(socket, home.join("daemon.sock"));
        Daemon {
            child,
            _lines: lines,
            socket,
        }
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        let killed = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first line of `lines` that `want` accepts (panics with what came instead at the
/// deadline).
fn wait_line(lines: &Receiver<String>, want: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if want(&line) => return line,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no expected line ({e}); saw {seen:#?}"),
        }
    }
}

/// A raw JSON-RPC connection to a daemon socket.
struct Rpc {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next: u64,
}

impl Rpc {
    fn connect(socket: &Path) -> Rpc {
        let stream = UnixStream::connect(socket).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Rpc {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            next: 1,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// The next line as JSON (`None` at end of stream).
    fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        (n > 0).then(|| serde_json::from_str(&line).unwrap())
    }

    /// Calls `method`; the whole response (skipping notifications).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_raw(format!("{line}\n").as_bytes());
        loop {
            let v = self.read().expect("a response");
            if v["id"] == id {
                return v;
            }
        }
    }

    /// The result of a call that must succeed.
    fn ok(&mut self, method: &str, params: Value) -> Value {
        let v = self.call(method, params);
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The Python bot: subscribes, answers the first message of someone else with
/// `echo: TEXT` in the same group, prints the `send` result and exits.
const BOT: &str = r#"
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
f = sock.makefile("rw", encoding="utf-8")
def call(id, method, params):
    f.write(json.dumps({"jsonrpc": "2.0", "id": id, "method": method, "params": params}) + "\n")
    f.flush()
call(1, "status", {})
call(2, "subscribe", {})
me = None
for line in f:
    msg = json.loads(line)
    if msg.get("id") == 1:
        me = msg["result"]["user"]
    elif msg.get("id") == 2:
        print("subscribed", flush=True)
    elif msg.get("method") == "message" and msg["params"]["sender"] != me:
        p = msg["params"]
        call(3, "send", {"group": p["group"], "text": "echo: " + p["text"]})
    elif msg.get("id") == 3:
        print("replied", json.dumps(msg["result"]), flush=True)
        break
"#;

/// While `cove daemon` runs on alice's home, `cove group create/add`, `send`, `groups`,
/// `history`, `sync`, `send-file` and `download` from other processes succeed on the same
/// home through it, and bob receives; a second daemon on the home is refused; a Python bot on
/// the socket answers bob's message and bob gets the answer; a subscribed client gets
/// `transfer` notifications from start to done for the upload and the download; safety
/// numbers, `verify` and `devices` work on the socket; SIGTERM stops the daemon and removes its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_a_python_bot_go_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    tokio::task::spawn_blocking(move || {
        init(&alice, &server, &ca, "alice");
        init(&bob, &server, &ca, "bob");
        let daemon = Daemon::start(&alice);
        assert_eq!(mode(&daemon.socket), 0o600);

        let err = fails(&alice, &["daemon"]);
        assert!(err.contains("already running"), "{err}");

        let out = ok(&alice, &["group", "create", "friends"]);
        assert!(out.starts_with("created group friends ("), "{out}");
        assert_eq!(
            ok(&alice, &["group", "add", "friends", "bob"]).trim(),
            "added bob to friends"
        );
        assert_eq!(
            ok(&alice, &["send", "friends", "hello bob"]).trim(),
            "sent to friends"
        );
        let groups = ok(&alice, &["groups"]);
        assert!(
            groups.starts_with("friends  ") && groups.contains("members: alice, bob"),
            "{groups}"
        );
        assert_eq!(
            plain(&ok(&bob, &["sync"])).trim(),
            "friends <alice> hello bob"
        );

        // The bot answers bob through alice's daemon.
        let mut bot = Command::new("python3")
            .arg("-c")
            .arg(BOT)
            .arg(&daemon.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        let bot_lines = lines_of(vec![
            Box::new(bot.stdout.take().unwrap()),
            Box::new(bot.stderr.take().unwrap()),
        ]);
        wait_line(&bot_lines, |l| l == "subscribed");
        ok(&bob, &["send", "friends", "ping"]);
        let replied = wait_line(&bot_lines, |l| l.starts_with("replied "));
        let result: Value = serde_json::from_str(&replied["replied ".len()..]).unwrap();
        assert_eq!(result["pending"], false, "{replied}");
        assert_eq!(result["id"].as_str().unwrap().len(), 32, "{replied}");
        assert!(bot.wait().unwrap().success());
        assert_eq!(
            plain(&ok(&bob, &["sync"])).trim(),
            "friends <alice> echo: ping"
        );

        // alice's own history through the daemon, and what it holds unread for her.
        assert_eq!(
            plain(&ok(&alice, &["history", "friends"])).trim(),
            "friends <alice> hello bob\nfriends <bob> ping\nfriends <alice> echo: ping"
        );
        assert_eq!(plain(&ok(&alice, &["sync"])).trim(), "friends <bob> ping");
        let again = cove(&alice, &["sync"]);
        assert!(again.status.success());
        assert_eq!(String::from_utf8_lossy(&again.stdout), "");
        assert!(String::from_utf8_lossy(&again.stderr).contains("nothing new"));

        // A file through the daemon: sent (relative path, from this process's directory),
        // received by bob, and downloaded back by alice by its number in the group.
        let work = alice.parent().unwrap().to_owned();
        std::fs::write(work.join("notes.txt"), b"file through the daemon").unwrap();
        let mut watcher = Rpc::connect(&daemon.socket);
        watcher.ok("subscribe", json!({}));
        // The `transfer` notifications of one direction, up to the one that says it is done.
        let mut transfers = |direction: &str| {
            let mut seen = Vec::new();
            loop {
                let v = watcher.read().expect("notifications");
                if v["method"] == "transfer" && v["params"]["direction"] == direction {
                    let p = &v["params"];
                    seen.push((p["done"].as_u64().unwrap(), p["total"].as_u64().unwrap()));
                    if p["done"] == p["total"] {
                        return seen;
                    }
                }
            }
        };
        let sent = Command::new(env!("CARGO_BIN_EXE_cove"))
            .current_dir(&work)
            .arg("--home")
            .arg(&alice)
            .args(["send-file", "friends", "notes.txt"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&sent.stdout);
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
        assert!(
            said.starts_with("sent notes.txt (") && said.contains(" to friends [attachment "),
            "{said}"
        );
        assert!(
            plain(&ok(&bob, &["sync"]))
                .trim()
                .starts_with("friends <alice> [file] notes.txt (")
        );
        let up = transfers("up");
        assert_eq!((up[0], *up.last().unwrap()), ((0, 23), (23, 23)), "{up:?}");
        let got = work.join("got");
        std::fs::create_dir(&got).unwrap();
        let saved = ok(
            &alice,
            &["download", "friends", "1", "-o", got.to_str().unwrap()],
        );
        assert_eq!(
            saved.trim(),
            format!("saved {}", got.join("notes.txt").display())
        );
        assert_eq!(
            std::fs::read(got.join("notes.txt")).unwrap(),
            b"file through the daemon"
        );
        let down = transfers("down");
        assert_eq!(
            (down[0], *down.last().unwrap()),
            ((0, 23), (23, 23)),
            "{down:?}"
        );

        // Safety numbers and verifying through the socket; this device in the device list.
        let mut rpc = Rpc::connect(&daemon.socket);
        let number = rpc.ok("safety_number", json!({"user": "bob"}));
        assert_eq!(number["verified"], false);
        let number = number["number"].as_str().unwrap().to_owned();
        assert_eq!(number, ok(&bob, &["safety-number", "alice"]).trim());
        let v = rpc.call("verify", json!({"user": "bob", "number": "12345"}));
        assert_eq!(v["error"]["data"]["code"], "NumberMismatch", "{v}");
        assert_eq!(
            rpc.ok("verify", json!({"user": "bob", "number": number})),
            json!({"verified": true})
        );
        assert_eq!(
            rpc.ok("safety_number", json!({"user": "bob"}))["verified"],
            true
        );
        let devices = rpc.ok("devices", json!({}));
        assert_eq!(devices.as_array().unwrap().len(), 1, "{devices}");
        assert_eq!(devices[0]["current"], true);

        let socket = daemon.socket.clone();
        assert!(daemon.terminate().success());
        assert!(!socket.exists(), "the socket is removed on SIGTERM");
        // Without a daemon, commands open the home themselves again.
        assert!(ok(&alice, &["groups"]).contains("friends"));
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// The JSON-RPC framing: a malformed line gets -32700 and the connection keeps serving; an
/// unknown method -32601; bad params -32602; a Cove error -32000 with its kind; a line over
/// 1 MiB gets -32600 and its connection is closed while others keep working; a socket left
/// by a killed daemon is replaced by the next one; `shutdown` answers, then the daemon
/// exits and removes its socket; `cove daemon --detach` returns once its daemon serves; a
/// command the daemon does not serve fails saying a daemon holds the home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_speaks_json_rpc_and_refuses_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let alice = dir.path().join("alice");
    tokio::task::spawn_blocking(move || {
        init(&alice, &server, &ca, "alice");
        let mut daemon = Daemon::start(&alice);
        let mut rpc = Rpc::connect(&daemon.socket);

        rpc.send_raw(b"{this is not json\n");
        let v = rpc.read().unwrap();
        assert_eq!(v["error"]["code"], -32700, "{v}");
        assert_eq!(v["id"], Value::Null);
        let status = rpc.ok("status", json!({}));
        assert_eq!(status["user"], "alice");
        assert_eq!(status["version"], "1");
        assert_eq!(status["pending"], 0);

        // A command the daemon does not serve says that a daemon holds the home.
        let err = fails(&alice, &["device", "list"]);
        assert!(
            err.contains(&format!("a cove daemon {} serves", status["pid"]))
                && err.contains("does not go through it"),
            "{err}"
        );

        let v = rpc.call("no_such_method", json!({}));
        assert_eq!(v["error"]["code"], -32601, "{v}");
        rpc.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"method\":\"send\"}\n");
        let v = rpc.read().unwrap();
        assert_eq!(
            (v["id"].clone(), v["error"]["code"].clone()),
            (json!("x"), json!(-32602))
        );
        rpc.send_raw(b"[1,2]\n");
        assert_eq!(rpc.read().unwrap()["error"]["code"], -32600);
        let v = rpc.call("history", json!({"group": "nowhere"}));
        assert_eq!(v["error"]["code"], -32000, "{v}");
        assert_eq!(v["error"]["data"]["code"], "NoSuchGroup", "{v}");

        // Over-long: refused, and that connection closed; another one still served.
        let mut long = Rpc::connect(&daemon.socket);
        let mut line = vec![b'x'; (1 << 20) + 1];
        line.push(b'\n');
        // The daemon may close before reading everything: a write error is fine.
        let _ = long.writer.write_all(&line);
        let v = long.read().expect("an error response");
        assert_eq!(v["error"]["code"], -32600, "{v}");
        assert!(long.read().is_none(), "the connection is closed");
        assert_eq!(rpc.ok("status", json!({}))["user"], "alice");

        // A killed daemon leaves its socket; the next daemon replaces it.
        daemon.child.kill().unwrap();
        daemon.child.wait().unwrap();
        assert!(daemon.socket.exists());
        drop(daemon);
        let mut daemon = Daemon::start(&alice);
        let mut rpc = Rpc::connect(&daemon.socket);
        assert_eq!(rpc.ok("shutdown", json!({})), json!({}));
        assert!(daemon.child.wait().unwrap().success());
        assert!(!daemon.socket.exists());

        // `--detach` returns once the background daemon serves.
        let out = ok(&alice, &["daemon", "--detach"]);
        let pid: u64 = out
            .trim()
            .strip_prefix("cove daemon ")
            .and_then(|r| r.strip_suffix(" started"))
            .unwrap_or_else(|| panic!("{out}"))
            .parse()
            .unwrap();
        let mut rpc = Rpc::connect(&alice.join("daemon.sock"));
        assert_eq!(rpc.ok("status", json!({}))["pid"], pid);
        assert_eq!(rpc.ok("shutdown", json!({})), json!({}));
        assert!(rpc.read().is_none(), "the daemon closed the connection");
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// Polls `done` until it holds (panics at the deadline).
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `cove send` while the relay is down is queued by the daemon (`pending`, shown so in
/// `history`); it survives a restart of the daemon (still pending while the relay is down)
/// and goes out once the relay is back: bob receives it exactly once, before a sentinel
/// sent afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_while_the_relay_is_down_is_delivered_once_after_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let addr = relay.local_addr();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let (a, b, s, c) = (alice.clone(), bob.clone(), server.clone(), ca.clone());
    let daemon = tokio::task::spawn_blocking(move || {
        init(&a, &s, &c, "alice");
        init(&b, &s, &c, "bob");
        ok(&a, &["group", "create", "friends"]);
        ok(&a, &["group", "add", "friends", "bob"]);
        let daemon = Daemon::start(&a);
        // Connected first: a send before that is queued (`pending`), not what this checks.
        let mut rpc = Rpc::connect(&daemon.socket);
        until("the daemon is connected", || {
            rpc.ok("status", json!({}))["connected"] == true
        });
        assert_eq!(
            ok(&a, &["send", "friends", "before"]).trim(),
            "sent to friends"
        );
        daemon
    })
    .await
    .unwrap();
    relay.shutdown().await;

    let a = alice.clone();
    let daemon = tokio::task::spawn_blocking(move || {
        let mut rpc = Rpc::connect(&daemon.socket);
        until("the daemon notices the relay is gone", || {
            rpc.ok("status", json!({}))["connected"] == false
        });
        let out = ok(&a, &["send", "friends", "queued"]);
        assert!(out.starts_with("queued for friends"), "{out}");
        let history = plain(&ok(&a, &["history", "friends"]));
        assert_eq!(
            history.trim(),
            "friends <alice> before\nfriends <alice> queued (pending)"
        );
        assert_eq!(rpc.ok("status", json!({}))["pending"], 1);
        assert!(daemon.terminate().success());
        // Restarted while the relay is still down: the message is still pending.
        let daemon = Daemon::start(&a);
        let mut rpc = Rpc::connect(&daemon.socket);
        let status = rpc.ok("status", json!({}));
        assert_eq!(
            (status["pending"].clone(), status["connected"].clone()),
            (json!(1), json!(false))
        );
        daemon
    })
    .await
    .unwrap();

    // The relay comes back on the same address, with its data.
    let mut config = RelayConfig::new(addr, dir.path().join("relay"));
    config.store = StoreKind::Sqlite;
    let relay = Relay::start(config).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let mut rpc = Rpc::connect(&daemon.socket);
        until("the queued message went out", || {
            let s = rpc.ok("status", json!({}));
            s["connected"] == true && s["pending"] == 0
        });
        assert_eq!(
            ok(&alice, &["send", "friends", "sentinel"]).trim(),
            "sent to friends"
        );
        let all = "friends <alice> before\nfriends <alice> queued\nfriends <alice> sentinel";
        assert_eq!(plain(&ok(&bob, &["sync"])).trim(), all);
        assert_eq!(plain(&ok(&alice, &["history", "friends"])).trim(), all);
        assert!(daemon.terminate().success());
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// An incoming call rings every client of bob's daemon: a JSON-RPC client gets
/// `incoming_call` and `cove listen` prints it. Declined from the JSON-RPC client, alice's
/// `cove call` fails saying so; the next call, answered by `cove answer` from another
/// process through the daemon, connects on both sides and ends cleanly. Both calls are
/// recorded in bob's history of the group. A call placed through alice's daemon (`cove call`
/// while it runs) and answered by bob's JSON-RPC client connects; carol calling bob meanwhile
/// is told he is busy; bob's `hangup` ends the call on alice's side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_ring_every_client_and_any_can_answer_or_decline() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let carol = dir.path().join("carol");
    tokio::task::spawn_blocking(move || {
        init(&alice, &server, &ca, "alice");
        init(&bob, &server, &ca, "bob");
        init(&carol, &server, &ca, "carol");
        ok(&alice, &["group", "create", "talk"]);
        ok(&alice, &["group", "add", "talk", "bob"]);
        ok(&carol, &["group", "create", "other"]);
        ok(&carol, &["group", "add", "other", "bob"]);
        let daemon = Daemon::start(&bob);
        let mut rpc = Rpc::connect(&daemon.socket);
        rpc.ok("subscribe", json!({}));
        let mut listen = Command::new(env!("CARGO_BIN_EXE_cove"))
            .arg("--home")
            .arg(&bob)
            .arg("listen")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let listened = lines_of(vec![
            Box::new(listen.stdout.take().unwrap()),
            Box::new(listen.stderr.take().unwrap()),
        ]);
        wait_line(&listened, |l| l.contains("through the cove daemon"));

        let place = |alice: &Path| {
            Command::new(env!("CARGO_BIN_EXE_cove"))
                .arg("--home")
                .arg(alice)
                .args(["call", "talk", "--duration", "1", "--ring-timeout", "60"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let incoming = |rpc: &mut Rpc| loop {
            let v = rpc.read().expect("a notification");
            if v["method"] == "incoming_call" {
                return v["params"].clone();
            }
        };

        // Declined from the JSON-RPC client.
        let caller = place(&alice);
        let ring = incoming(&mut rpc);
        assert_eq!(
            (ring["from"].clone(), ring["group_name"].clone()),
            (json!("alice"), json!("talk"))
        );
        let call = ring["call"].as_str().unwrap().to_owned();
        wait_line(&listened, |l| {
            l.starts_with("-- incoming call from alice in talk") && l.contains(&call[..8])
        });
        assert_eq!(rpc.ok("decline", json!({ "call": call })), json!({}));
        let out = caller.wait_with_output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("the call was declined by bob"), "{err}");

        // Answered by `cove answer` in another process, through the daemon.
        let caller = place(&alice);
        let ring = incoming(&mut rpc);
        let answer = cove(&bob, &["answer", "--duration", "1"]);
        let answered = String::from_utf8_lossy(&answer.stdout);
        assert!(
            answer.status.success(),
            "{answered} {}",
            String::from_utf8_lossy(&answer.stderr)
        );
        let call = ring["call"].as_str().unwrap();
        assert!(
            answered.contains("connected")
                && answered.contains(&format!("call {} ended", &call[..8])),
            "{answered}"
        );
        let out = caller.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains("bob answered") && said.contains("connected to bob"),
            "{said}"
        );
        // The JSON-RPC client saw the call connect and end.
        let mut states = Vec::new();
        while !states.contains(&"ended".to_owned()) {
            let v = rpc.read().expect("call states");
            if v["method"] == "call_state" && v["params"]["call"] == call {
                states.push(v["params"]["state"].as_str().unwrap().to_owned());
            }
        }
        assert!(states.contains(&"connected".to_owned()), "{states:?}");
        // Both calls are recorded in bob's history of the group.
        let history = ok(&bob, &["history", "talk"]);
        let calls: Vec<&str> = history
            .lines()
            .filter(|l| l.starts_with("talk -- "))
            .collect();
        assert_eq!(calls.len(), 2, "{history}");
        assert_eq!(calls[0], "talk -- declined call from alice");
        assert!(
            calls[1].starts_with("talk -- call with alice, "),
            "{history}"
        );

        // alice calls through her own daemon; bob's JSON-RPC client answers; carol, calling
        // bob meanwhile, hears that he is busy; bob hangs up from the JSON-RPC client.
        let alice_daemon = Daemon::start(&alice);
        let caller = Command::new(env!("CARGO_BIN_EXE_cove"))
            .arg("--home")
            .arg(&alice)
            .args(["call", "talk", "--duration", "0", "--ring-timeout", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let ring = incoming(&mut rpc);
        let call = ring["call"].as_str().unwrap().to_owned();
        let answered = rpc.ok(
            "answer",
            json!({"call": call, "audio_in": "tone:660", "audio_out": "none"}),
        );
        assert_eq!(answered["call"], call.as_str());
        loop {
            let v = rpc.read().expect("call states");
            if v["method"] == "call_state" && v["params"]["call"] == call.as_str() {
                if v["params"]["state"] == "connected" {
                    break;
                }
                assert_ne!(v["params"]["state"], "ended", "{v}");
            }
        }
        let err = fails(&carol, &["call", "other", "--ring-timeout", "60"]);
        assert!(err.contains("the call was busy by bob"), "{err}");
        assert_eq!(rpc.ok("hangup", json!({ "call": call })), json!({}));
        let out = caller.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains(&format!("calling talk (call {})", &call[..8]))
                && said.contains("connected")
                && said.contains(&format!("call {} ended", &call[..8])),
            "{said}"
        );
        assert!(alice_daemon.terminate().success());

        let _ = listen.kill();
        let _ = listen.wait();
        assert!(daemon.terminate().success());
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// Reads `watcher`'s notifications until the `message` ones from `sender` were exactly
/// `expected`, in order (panics on one that is not the next expected text).
fn messages_until(watcher: &mut Rpc, sender: &str, expected: &[String]) {
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let v = watcher.read().expect("notifications");
        if v["method"] == "message" && v["params"]["sender"] == sender {
            seen.push(v["params"]["text"].as_str().unwrap().to_owned());
            assert_eq!(seen[..], expected[..seen.len()], "{v}");
        }
    }
}

/// With alice's daemon running on her password account, bob's messages all show as
/// `message` notifications (in order, none missing) while `cove backup` and
/// `cove restore-history` go through the daemon (its `backup` and `restore_history`
/// methods, whose relay replies the daemon routes to them): the backup uploads bob's five
/// messages and says so in a `backup` notification, a second one has nothing new, the
/// restore finds all five already here; a message after that still shows, and the daemon
/// backs it up when it stops (SIGTERM); `cove login` on a fresh home then restores all six
/// and `cove history` there shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_backs_up_history_and_a_login_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let laptop = dir.path().join("alice-laptop");
    let pw = dir.path().join("pw.txt");
    std::fs::write(&pw, "correct horse battery staple\n").unwrap();
    tokio::task::spawn_blocking(move || {
        let p = pw.to_str().unwrap();
        let out = ok(
            &alice,
            &[
                "--password-file",
                p,
                "init",
                "--server",
                &server,
                "--user",
                "alice",
                "--ca",
                &ca,
            ],
        );
        assert!(out.contains("recovery key: "), "{out}");
        init(&bob, &server, &ca, "bob");
        let daemon = Daemon::start(&alice);
        ok(&alice, &["group", "create", "friends"]);
        ok(&alice, &["group", "add", "friends", "bob"]);
        ok(&bob, &["sync"]);
        let mut watcher = Rpc::connect(&daemon.socket);
        watcher.ok("subscribe", json!({}));

        let texts: Vec<String> = (1..=5).map(|n| format!("bob {n}")).collect();
        for t in &texts {
            ok(&bob, &["send", "friends", t]);
        }
        messages_until(&mut watcher, "bob", &texts);

        let out = ok(&alice, &["backup"]);
        assert!(
            out.starts_with("backed up 5 messages in 1 segments ("),
            "{out}"
        );
        loop {
            let v = watcher.read().expect("notifications");
            if v["method"] == "backup" {
                assert_eq!(v["params"]["messages"], 5, "{v}");
                assert_eq!(v["params"]["segments"], 1, "{v}");
                break;
            }
        }
        assert_eq!(ok(&alice, &["backup"]).trim(), "nothing new to back up");
        assert_eq!(
            ok(&alice, &["restore-history"]).trim(),
            "restored 0 messages from 1 segments (5 already here, 0 refused)"
        );
        // Notifications still flow after the backup's requests.
        let after = vec!["bob after the backup".to_owned()];
        ok(&bob, &["send", "friends", &after[0]]);
        messages_until(&mut watcher, "bob", &after);
        // Stopping backs up what waits.
        assert!(daemon.terminate().success());

        let out = ok(
            &laptop,
            &[
                "--password-file",
                p,
                "login",
                "--server",
                &server,
                "--user",
                "alice",
                "--ca",
                &ca,
            ],
        );
        assert!(out.contains("restored 6 message(s) of history"), "{out}");
        let past = plain(&ok(&laptop, &["--password-file", p, "history", "friends"]));
        let expected: String = texts
            .iter()
            .chain(&after)
            .map(|t| format!("friends <bob> {t}\n"))
            .collect();
        assert_eq!(past, expected);
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// Once `BACKUP_BATCH` (100) messages wait, alice's daemon backs up by itself: bob sends 100
/// messages (through his own daemon's `send`), alice's subscribed client gets all 100
/// `message` notifications in order and then a `backup` notification for 100 messages,
/// without anyone asking; a `cove backup` after it has nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_backs_up_by_itself_once_a_batch_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let pw = dir.path().join("pw.txt");
    std::fs::write(&pw, "correct horse battery staple\n").unwrap();
    tokio::task::spawn_blocking(move || {
        let p = pw.to_str().unwrap();
        ok(
            &alice,
            &[
                "--password-file",
                p,
                "init",
                "--server",
                &server,
                "--user",
                "alice",
                "--ca",
                &ca,
            ],
        );
        init(&bob, &server, &ca, "bob");
        let daemon = Daemon::start(&alice);
        ok(&alice, &["group", "create", "friends"]);
        ok(&alice, &["group", "add", "friends", "bob"]);
        ok(&bob, &["sync"]);
        let bobs = Daemon::start(&bob);
        let mut watcher = Rpc::connect(&daemon.socket);
        watcher.ok("subscribe", json!({}));
        let mut sender = Rpc::connect(&bobs.socket);
        until("bob's daemon is connected", || {
            sender.ok("status", json!({}))["connected"] == true
        });
        let texts: Vec<String> = (1..=cove::backup::BACKUP_BATCH)
            .map(|n| format!("bob {n}"))
            .collect();
        for t in &texts {
            let r = sender.ok("send", json!({ "group": "friends", "text": t }));
            assert_eq!(r["pending"], false, "{r}");
        }
        messages_until(&mut watcher, "bob", &texts);
        loop {
            let v = watcher.read().expect("notifications");
            assert_ne!(v["method"], "message", "{v}");
            if v["method"] == "backup" {
                assert_eq!(v["params"]["messages"], texts.len(), "{v}");
                break;
            }
        }
        assert_eq!(ok(&alice, &["backup"]).trim(), "nothing new to back up");
        assert!(bobs.terminate().success());
        assert!(daemon.terminate().success());
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// A daemon whose default audio device is listed but cannot be opened (an ALSA `default` PCM
/// on a sound card that does not exist) answers a call without audio options: instead of the
/// call ending with "audio device: ...", the JSON-RPC client gets one `warning` per direction
/// (input: silence is sent; output: nothing is played), the call connects, and it stays
/// connected until the client hangs up (the caller then ends cleanly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_audio_device_that_fails_to_open_falls_back_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let asound = dir.path().join("asound.conf");
    std::fs::write(&asound, "pcm.!default { type hw; card 99; device 0 }\n").unwrap();
    let alsa = format!("/usr/share/alsa/alsa.conf:{}", asound.display());
    tokio::task::spawn_blocking(move || {
        init(&alice, &server, &ca, "alice");
        init(&bob, &server, &ca, "bob");
        ok(&alice, &["group", "create", "talk"]);
        ok(&alice, &["group", "add", "talk", "bob"]);
        let daemon = Daemon::start_with_env(&bob, &[("ALSA_CONFIG_PATH", &alsa)]);
        let mut rpc = Rpc::connect(&daemon.socket);
        rpc.ok("subscribe", json!({}));
        let caller = Command::new(env!("CARGO_BIN_EXE_cove"))
            .arg("--home")
            .arg(&alice)
            .args(["call", "talk", "--duration", "0", "--ring-timeout", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let call = loop {
            let v = rpc.read().expect("a notification");
            if v["method"] == "incoming_call" {
                break v["params"]["call"].as_str().unwrap().to_owned();
            }
        };
        // No audio options: the daemon picks the default devices.
        let answered = rpc.ok("answer", json!({ "call": call }));
        assert_eq!(answered["call"], call.as_str());
        let mut warnings = Vec::new();
        let mut connected = false;
        while !connected || warnings.len() < 2 {
            let v = rpc.read().expect("call notifications");
            if v["method"] == "warning" {
                assert_eq!(v["params"]["call"], call.as_str(), "{v}");
                warnings.push(v["params"]["text"].as_str().unwrap().to_owned());
            }
            if v["method"] == "call_state" && v["params"]["call"] == call.as_str() {
                assert_ne!(v["params"]["state"], "ended", "{v}");
                connected |= v["params"]["state"] == "connected";
            }
        }
        warnings.sort();
        assert!(
            warnings[0].starts_with("audio input default failed to open (")
                && warnings[0].ends_with("): sending silence"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].starts_with("audio output default failed to open (")
                && warnings[1].ends_with("): not playing the call"),
            "{warnings:?}"
        );
        assert_eq!(rpc.ok("hangup", json!({ "call": call })), json!({}));
        let out = caller.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains("connected") && said.contains(&format!("call {} ended", &call[..8])),
            "{said}"
        );
        assert!(daemon.terminate().success());
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// Issue 13's methods on the socket and the CLI's commands through the daemon: `reply`,
/// `react`, `edit`, `delete`, `group_rename`, `group_describe`, `group_avatar`, `group_admin`,
/// `group_mute`, `group_disappearing`, `group_info` and `search`, each error with its Cove code
/// (`NoSuchMessage`, `NotAuthor`, `InvalidArgument`) or invalid params; a subscribed client
/// gets an `update` notification for another member's reaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messaging_methods_go_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    tokio::task::spawn_blocking(move || {
        init(&alice, &server, &ca, "alice");
        init(&bob, &server, &ca, "bob");
        let daemon = Daemon::start(&alice);
        let mut rpc = Rpc::connect(&daemon.socket);
        ok(&alice, &["group", "create", "friends"]);
        ok(&alice, &["group", "add", "friends", "bob"]);
        ok(&alice, &["send", "friends", "pizza tonight?"]);
        ok(&bob, &["sync"]);
        ok(&bob, &["send", "friends", "bob's own words"]);
        let history = rpc.ok("history", json!({ "group": "friends" }));
        let id_of = |text: &str| {
            history
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["text"] == text)
                .map(|m| m["id"].as_str().unwrap()[..8].to_owned())
                .unwrap_or_else(|| panic!("no {text:?} in {history}"))
        };
        let (mine, bobs) = (id_of("pizza tonight?"), id_of("bob's own words"));

        // The CLI through the daemon.
        assert_eq!(
            ok(&alice, &["reply", "friends", &bobs, "sure"]).trim(),
            "replied in friends"
        );
        assert_eq!(
            ok(&alice, &["edit", "friends", &mine, "pizza at 8?"]).trim(),
            "edited in friends"
        );
        assert_eq!(
            ok(&alice, &["group", "describe", "friends", "food"]).trim(),
            "set the description of friends"
        );
        assert_eq!(
            ok(&alice, &["group", "disappearing", "friends", "7d"]).trim(),
            "set disappearing messages to 7d in friends"
        );
        assert_eq!(
            ok(&alice, &["group", "mute", "friends"]).trim(),
            "friends is muted"
        );
        let picture = alice.join("pizza.png");
        std::fs::write(&picture, [1u8; 64]).unwrap();
        assert_eq!(
            ok(
                &alice,
                &["group", "avatar", "friends", picture.to_str().unwrap()]
            )
            .trim(),
            "set the avatar of friends"
        );
        let info = ok(&alice, &["group", "info", "friends"]);
        for want in [
            "avatar: [file] pizza.png (64 bytes, image/png)",
            "description: food",
            "disappearing messages: 7d",
            "muted: for ever",
        ] {
            assert!(info.contains(want), "{want:?} in {info}");
        }
        let history = plain(&ok(&alice, &["history", "friends"]));
        assert_eq!(
            history,
            "friends <alice> pizza at 8? (edited)\nfriends <bob> bob's own words\n\
             friends <alice> [↪ bob: bob's own words] sure\n"
        );
        assert_eq!(
            plain(&ok(&alice, &["search", "pizza"])),
            "friends <alice> pizza at 8? (edited)\n"
        );

        // Bad input, with its code.
        let code = |v: &Value| v["error"]["data"]["code"].as_str().unwrap_or("").to_owned();
        let v = rpc.call(
            "reply",
            json!({ "group": "friends", "to": "0000ffff", "text": "x" }),
        );
        assert_eq!(code(&v), "NoSuchMessage", "{v}");
        let v = rpc.call(
            "edit",
            json!({ "group": "friends", "to": bobs, "text": "x" }),
        );
        assert_eq!(code(&v), "NotAuthor", "{v}");
        let v = rpc.call(
            "react",
            json!({ "group": "friends", "to": mine, "emoji": "ok" }),
        );
        assert_eq!(code(&v), "InvalidArgument", "{v}");
        let v = rpc.call("group_mute", json!({ "group": "friends", "until": "soon" }));
        assert_eq!(code(&v), "InvalidArgument", "{v}");
        let v = rpc.call("search", json!({ "query": "pizza", "limit": 0 }));
        assert_eq!(v["error"]["code"], -32602, "{v}");
        let err = fails(&alice, &["react", "friends", &mine, "ok"]);
        assert!(
            err.starts_with("error: invalid argument: \"ok\" is not an emoji"),
            "{err}"
        );

        // Another member's reaction comes as an `update`.
        rpc.ok("subscribe", json!({}));
        ok(&bob, &["react", "friends", &mine, "🍕"]);
        let update = loop {
            let v = rpc.read().expect("a notification");
            if v["method"] == "update" {
                break v["params"].clone();
            }
        };
        assert_eq!(update["kind"], "reaction", "{update}");
        assert_eq!(
            (update["by"].clone(), update["emoji"].clone()),
            (json!("bob"), json!("🍕"))
        );
        assert!(
            update["to"].as_str().unwrap().starts_with(&mine),
            "{update}"
        );
        assert_eq!(update["group_name"], "friends");
        assert_eq!(
            rpc.ok("group_info", json!({ "group": "friends" }))["description"],
            "food"
        );
        assert_eq!(
            ok(&alice, &["delete", "friends", &mine]).trim(),
            "deleted in friends"
        );
        assert!(ok(&alice, &["search", "pizza"]).is_empty());
        assert!(daemon.terminate().success());
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// Waits (polling, up to [`DEADLINE`]) until `check` holds; panics with `what` after.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < end, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cove drive sync` while `cove daemon` runs (issue 14): the sync runs inside the daemon
/// (the command returns at once), a file written in the folder reaches bob through the
/// shared folder, a file bob puts there reaches the folder, `--status` lists the sync and
/// `--stop` stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drive_sync_runs_inside_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, server, ca) = relay(dir.path()).await;
    let work = dir.path();
    let (alice, bob) = (work.join("alice"), work.join("bob"));
    init(&alice, &server, &ca, "alice");
    init(&bob, &server, &ca, "bob");
    let trip = work.join("trip");
    std::fs::create_dir_all(&trip).unwrap();
    std::fs::write(trip.join("plan.txt"), b"day 1").unwrap();
    ok(&alice, &["drive", "put", trip.to_str().unwrap()]);
    ok(&alice, &["drive", "share", "/trip", "bob"]);
    assert!(ok(&bob, &["drive", "ls", "alice:trip"]).contains("plan.txt"));

    let daemon = Daemon::start(&alice);
    let local = work.join("alice-trip");
    let started = ok(
        &alice,
        &[
            "drive",
            "sync",
            local.to_str().unwrap(),
            "alice:trip",
            "--interval",
            "1",
        ],
    );
    assert!(started.contains("the daemon now syncs"), "{started}");
    let again = fails(
        &alice,
        &["drive", "sync", local.to_str().unwrap(), "alice:trip"],
    );
    assert!(again.contains("already syncing"), "{again}");
    eventually("the daemon's sync downloads plan.txt", || {
        std::fs::read(local.join("plan.txt")).is_ok_and(|b| b == b"day 1")
    });
    std::fs::write(
        local.join("from-alice.txt"),
        b"written while the daemon syncs",
    )
    .unwrap();
    eventually("alice's file reaches bob", || {
        ok(&bob, &["drive", "ls", "alice:trip"]).contains("from-alice.txt")
    });
    let got = work.join("got.txt");
    ok(
        &bob,
        &[
            "drive",
            "get",
            "alice:trip/from-alice.txt",
            got.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(&got).unwrap(),
        b"written while the daemon syncs"
    );
    let bobs = work.join("from-bob.txt");
    std::fs::write(&bobs, b"bob's note").unwrap();
    ok(
        &bob,
        &["drive", "put", bobs.to_str().unwrap(), "alice:trip"],
    );
    eventually("bob's file reaches alice's folder", || {
        std::fs::read(local.join("from-bob.txt")).is_ok_and(|b| b == b"bob's note")
    });
    let status = ok(&alice, &["drive", "sync", "--status"]);
    assert!(status.contains("alice-trip <-> alice:trip"), "{status}");
    let stopped = ok(
        &alice,
        &["drive", "sync", "--stop", local.to_str().unwrap()],
    );
    assert!(stopped.contains("stopped syncing"), "{stopped}");
    assert_eq!(
        ok(&alice, &["drive", "sync", "--status"]),
        "the daemon runs no sync\n"
    );
    assert!(daemon.terminate().success());
}
