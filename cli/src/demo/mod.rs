//! `cove demo`: an in-process relay on a free loopback port with a temporary data directory,
//! and alice, bob and carol as real clients over TLS, each with its own temporary home.
//!
//! The demo is a list of steps ([`STEPS`]) run in order against one [`Demo`] state. To show
//! a new capability, write an `fn(&mut Demo) -> StepFuture<'_>` (in its own module if it is
//! large) and append it to [`STEPS`]; [`Demo::expect`] and [`Demo::say`] do the waiting and
//! printing.

mod account;
mod call;
mod chat;
mod devices;
mod drive;
mod files;
mod messaging;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use cove::config::Home;
use cove::{ChatMessage, Device, Event, SessionEvent, UserName, escape};
use cove_core::IdentityEvent;
use cove_server::{Relay, RelayConfig, RelayHandle};

/// Arguments of `cove demo`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cargo run --release --bin cove -- demo

Starts a relay on 127.0.0.1 (a free port, a temporary data directory, a self-signed
certificate) and three users with their own homes; they chat over TLS, bob goes offline and
catches up, carol logs in on a new laptop with her password and gets her history back from
the encrypted backup, carol is removed, bob links a laptop by a code and revokes it, alice calls
bob. alice puts a folder in her Cove Drive, her laptop gets it, she shares it with bob. On
the way they reply, react, edit, delete a message for everyone and let one
disappear. Everything is deleted at the end.")]
pub struct DemoArgs {
    /// Keep the temporary directory (relay data and the three homes) and print its path.
    #[arg(long)]
    pub keep: bool,
}

/// A step's future.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// One demo step: a title and what it does.
pub type Step = (&'static str, fn(&mut Demo) -> StepFuture<'_>);

/// The demo, in order. Append new steps here.
pub const STEPS: &[Step] = &[
    (
        "alice, bob and carol register their devices",
        chat::register,
    ),
    (
        "carol gives her user a password and a recovery key",
        account::carol_password,
    ),
    (
        "alice creates the group \"friends\" and adds bob and carol",
        chat::create_group,
    ),
    ("everyone chats", chat::chat),
    (
        "a reply, a reaction, an edit and a delete for everyone",
        messaging::react_edit_delete,
    ),
    (
        "alice turns on disappearing messages; one disappears everywhere",
        messaging::disappearing,
    ),
    (
        "bob goes offline; alice and carol keep talking",
        chat::bob_offline,
    ),
    ("bob comes back and catches up", chat::bob_returns),
    (
        "carol logs in on a new laptop with her password; her history comes back",
        account::carol_logs_in,
    ),
    ("alice removes carol", chat::remove_carol),
    (
        "alice sends bob a file and shares a link",
        files::send_and_share,
    ),
    (
        "bob links his laptop by a one-time code; it gets the history",
        devices::link_laptop,
    ),
    (
        "bob revokes the laptop: out of the group, locked out",
        devices::revoke_laptop,
    ),
    (
        "alice puts a folder in her drive; her laptop gets it; she shares it with bob",
        drive::drive,
    ),
    ("the relay never saw a plaintext", chat::scan_relay),
    ("alice calls bob (2 s of audio)", call::call),
];

/// How long any single wait may take before the demo fails with a clear error.
pub const WAIT: Duration = Duration::from_secs(30);

/// The demo's state: the relay, the temporary directory and the users' devices.
pub struct Demo {
    /// The in-process relay.
    pub relay: Option<RelayHandle>,
    /// `wss://127.0.0.1:PORT`.
    pub server: String,
    /// The relay's self-signed certificate (the users' `--ca`).
    pub ca: PathBuf,
    /// The relay's data directory.
    pub relay_dir: PathBuf,
    /// Root of everything temporary.
    pub root: tempfile::TempDir,
    /// The online users' devices.
    pub users: BTreeMap<&'static str, Device>,
    /// What each user has seen: message texts in order (for the summary and checks).
    pub seen: BTreeMap<&'static str, Vec<ChatMessage>>,
    /// Every plaintext sent (the relay scan looks for them).
    pub sent: Vec<String>,
    /// Lines for the closing summary.
    pub summary: Vec<String>,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("cove-demo-")
        .tempdir()
        .context("temp dir")?;
    let relay_dir = root.path().join("relay");
    let mut config = RelayConfig::new(
        "127.0.0.1:0".parse().context("loopback address")?,
        relay_dir.clone(),
    );
    config.store = cove_server::StoreKind::Sqlite;
    let relay = Relay::start(config)
        .await
        .context("starting the in-process relay")?;
    let server = format!("wss://{}", relay.local_addr());
    println!("relay   listening on {server} (TLS, self-signed certificate)");
    println!("        data in {}", relay_dir.display());
    println!("        certificate SHA-256 {}", relay.fingerprint());
    let mut demo = Demo {
        ca: relay.cert_path().to_owned(),
        relay: Some(relay),
        server,
        relay_dir,
        root,
        users: BTreeMap::new(),
        seen: BTreeMap::new(),
        sent: Vec::new(),
        summary: Vec::new(),
    };
    let mut result = Ok(());
    for (i, (title, step)) in STEPS.iter().enumerate() {
        println!("\n== {}. {title}", i + 1);
        if let Err(e) = step(&mut demo).await {
            result = Err(e.context(format!("demo step {} ({title}) failed", i + 1)));
            break;
        }
    }
    for (_, device) in std::mem::take(&mut demo.users) {
        device.close().await;
    }
    if let Some(relay) = demo.relay.take() {
        relay.shutdown().await;
    }
    result?;
    println!("\n== summary");
    for line in &demo.summary {
        println!("  - {line}");
    }
    println!("  - done in {:.1} s", started.elapsed().as_secs_f64());
    if args.keep {
        let kept = demo.root.keep();
        println!("  - kept {}", kept.display());
    }
    Ok(())
}

impl Demo {
    /// The home directory of `user`.
    pub fn home(&self, user: &str) -> Home {
        Home::new(self.root.path().join(user))
    }

    /// The online device of `user`.
    pub fn user(&self, user: &str) -> anyhow::Result<&Device> {
        self.users
            .get(user)
            .with_context(|| format!("{user} is not online"))
    }

    /// Registers `user` with a fresh home.
    pub async fn register(&mut self, user: &'static str) -> anyhow::Result<()> {
        let name = UserName::new(user)?;
        let device = Device::init(&self.home(user), &self.server, name, Some(&self.ca))
            .await
            .with_context(|| format!("registering {user}"))?;
        let id = device
            .device_id()
            .map(|d| d.to_string())
            .unwrap_or_default();
        println!("[{user}] registered as device {id}, KeyPackages uploaded");
        self.users.insert(user, device);
        Ok(())
    }

    /// `user` sends `text` to `group` and the demo records it.
    pub async fn say(&mut self, user: &'static str, group: &str, text: &str) -> anyhow::Result<()> {
        self.user(user)?
            .send_text(group, text)
            .await
            .with_context(|| format!("{user} sending to {group}"))?;
        println!("[{user}] -> {}: {}", escape(group), escape(text));
        self.sent.push(text.to_owned());
        Ok(())
    }

    /// Reads `user`'s events, printing what they see, until `done` returns true for an
    /// event. Fails after [`WAIT`].
    pub async fn expect(
        &mut self,
        user: &'static str,
        what: &str,
        mut done: impl FnMut(&Event) -> bool,
    ) -> anyhow::Result<()> {
        let device = self
            .users
            .get_mut(user)
            .with_context(|| format!("{user} is not online"))?;
        let me = device.device_id();
        let seen = self.seen.entry(user).or_default();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let event = match tokio::time::timeout_at(deadline, device.next_event()).await {
                Err(_) => bail!("{user} did not see {what} within {} s", WAIT.as_secs()),
                Ok(None) => bail!("{user}'s session stopped before {what}"),
                Ok(Some(e)) => e,
            };
            let SessionEvent::Core(event) = event else {
                continue;
            };
            show(user, me, &event, seen);
            if done(&event) {
                return Ok(());
            }
        }
    }

    /// Waits until each of `users` has seen a message with exactly this text.
    pub async fn expect_text(&mut self, users: &[&'static str], text: &str) -> anyhow::Result<()> {
        for &user in users {
            self.expect(
                user,
                &format!("the message {text:?}"),
                |e| matches!(e, Event::Message(m) if m.text == text),
            )
            .await?;
        }
        Ok(())
    }
}

/// Prints what `user` sees for `event`, and records messages in `seen`.
fn show(user: &str, me: Option<cove::DeviceId>, event: &Event, seen: &mut Vec<ChatMessage>) {
    match event {
        Event::Message(m) => {
            seen.push((**m).clone());
            if Some(m.from_device) != me {
                println!("[{user}] {}", cove::message_view(m).line());
            }
        }
        Event::Joined { name, by, .. } => {
            let what = if cove_core::drive::is_drive_group(name) {
                "a Cove Drive group (a drive or a shared folder)".to_owned()
            } else {
                escape(name)
            };
            println!("[{user}] joined {what} (added by {})", escape(by.as_str()))
        }
        Event::MembersChanged {
            by, added, removed, ..
        } => {
            let names = |v: &[UserName]| v.iter().map(|u| escape(u.as_str())).collect::<Vec<_>>();
            // A user adding or removing a device of their own shows as themselves.
            let who = |v: &[UserName]| {
                names(v)
                    .into_iter()
                    .map(|n| {
                        if n == escape(by.as_str()) {
                            format!("a device of {n}")
                        } else {
                            n
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !added.is_empty() {
                println!("[{user}] {} added {}", escape(by.as_str()), who(added));
            }
            if !removed.is_empty() {
                println!("[{user}] {} removed {}", escape(by.as_str()), who(removed));
            }
        }
        Event::RemovedFromGroup { .. } => println!("[{user}] was removed from the group"),
        // What the user did themself was printed when they did it.
        Event::Reacted { by, .. }
        | Event::Edited { by, .. }
        | Event::Deleted { by, .. }
        | Event::GroupChanged { by, .. }
            if by.as_str() == user => {}
        Event::Reacted { .. }
        | Event::Edited { .. }
        | Event::Deleted { .. }
        | Event::GroupChanged { .. }
        | Event::Expired { .. } => {
            // Every group of the demo is "friends".
            if let Some(view) = cove::UpdateView::of(event, || "friends".into()) {
                println!("[{user}] -- {}", view.line());
            }
        }
        Event::KeyChanged { user: who, .. } => {
            println!(
                "[{user}] WARNING: the key of {} changed",
                escape(who.as_str())
            )
        }
        Event::Identity(IdentityEvent::DeviceAdded { user: who, .. }) => {
            println!(
                "[{user}] {} added a device (safety number unchanged)",
                escape(who.as_str())
            )
        }
        Event::Identity(IdentityEvent::DeviceRevoked { user: who, .. }) => {
            println!(
                "[{user}] {} revoked a device: it is removed from every group",
                escape(who.as_str())
            )
        }
        Event::Identity(IdentityEvent::IdentityChanged { user: who, .. }) => {
            println!(
                "[{user}] WARNING: the identity key of {} changed",
                escape(who.as_str())
            )
        }
        Event::Identity(IdentityEvent::LeafRefused {
            user: who, reason, ..
        }) => println!(
            "[{user}] refused a member claiming to be {}: {}",
            escape(who.as_str()),
            escape(&reason.to_string())
        ),
        Event::Warning(w) => println!("[{user}] warning: {}", escape(&w.to_string())),
        _ => {}
    }
}
