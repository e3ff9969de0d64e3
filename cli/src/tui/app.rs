//! The terminal UI's state and its transitions, with no I/O: [`App::update`] takes one
//! [`Event`] (a key, a resize, a line from the daemon) and the current time, changes the
//! state and returns the [`Action`]s the I/O loop carries out (JSON-RPC requests, the bell,
//! quitting). What the daemon sends is untrusted: it is parsed into typed records, anything
//! malformed is dropped, and every text that came from another user is [`cove::escape`]d
//! before it is stored, so nothing reaches the terminal as a control sequence.

use std::collections::HashMap;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde::Deserialize;
use serde_json::{Value, json};

/// The longest input line kept (the daemon refuses longer texts anyway).
const MAX_INPUT: usize = 64 * 1024;

/// How many messages a group's first load asks the daemon for.
const HISTORY_LIMIT: u64 = 200;

/// The most entries kept per group (older ones are dropped from memory, not from the daemon).
const MAX_ENTRIES: usize = 5000;

/// One input to the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A key press.
    Key(KeyEvent),
    /// The terminal's new size (columns, rows).
    Resize(u16, u16),
    /// Something from the daemon's socket.
    Daemon(DaemonEvent),
}

/// What the daemon connection reports.
#[derive(Debug, Clone, PartialEq)]
pub enum DaemonEvent {
    /// The socket is (re)connected: the model asks for the status, subscribes and lists groups.
    Connected,
    /// The answer to the request with this id.
    Reply {
        /// The request's id (from [`Action::Request`]).
        id: u64,
        /// The `result`, or the `error` object.
        result: Result<Value, RpcError>,
    },
    /// A notification (`message`, `membership`, `incoming_call`, ...).
    Notification {
        /// The method name.
        method: String,
        /// Its params.
        params: Value,
    },
    /// The socket closed or failed; requests in flight will get no answer.
    Lost(String),
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The JSON-RPC code (-32000 for Cove errors).
    pub code: i64,
    /// `data.message` if present, else `message`.
    pub message: String,
    /// `data.code` (the Cove error code, e.g. `NoSuchGroup`).
    pub kind: Option<String>,
}

/// What the I/O loop must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this JSON-RPC request.
    Request {
        /// Its id; the answer comes back as [`DaemonEvent::Reply`] with it.
        id: u64,
        /// The method.
        method: &'static str,
        /// The params object.
        params: Value,
    },
    /// Ring the terminal bell (an incoming call).
    Bell,
    /// Restore the terminal and exit.
    Quit,
}

/// The UI state.
#[derive(Debug)]
pub struct App {
    /// Who this is, from `status`.
    pub(crate) me: Option<Me>,
    /// Whether the daemon's socket is open.
    pub(crate) daemon_up: bool,
    /// Whether the daemon is connected to the relay.
    pub(crate) relay_connected: bool,
    /// Messages queued in the daemon's outbox.
    pub(crate) pending: u64,
    /// The groups, in the daemon's order.
    pub(crate) groups: Vec<Group>,
    /// The index of the shown group in `groups` (0 when there is none).
    pub(crate) selected: usize,
    /// What is being typed.
    pub(crate) input: Input,
    /// The call in progress or ringing.
    pub(crate) call: Option<Call>,
    /// The last call that ended (a late reply to `call` must not bring it back).
    ended_call: Option<String>,
    /// Transfers in progress, oldest first.
    pub(crate) transfers: Vec<Transfer>,
    /// Notes shown while there is no group to show them in.
    pub(crate) lobby: Vec<Entry>,
    /// Whether the help is shown over the message pane.
    pub(crate) help: bool,
    /// The local time zone messages are shown in.
    pub(crate) tz: jiff::tz::TimeZone,
    /// The terminal size (columns, rows).
    pub(crate) size: (u16, u16),
    /// `audio_in` / `audio_out` for `call` and `answer` (empty: the daemon's default).
    audio: serde_json::Map<String, Value>,
    /// The next request id.
    next_id: u64,
    /// What each request in flight was for.
    waiting: HashMap<u64, Purpose>,
}

/// This device, from `status`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Me {
    pub(crate) user: String,
    pub(crate) server: String,
}

/// One group and what the UI holds of it.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// The group id (hex): what requests name it by.
    pub(crate) id: String,
    /// Its name (escaped).
    pub(crate) name: String,
    /// Its members (escaped).
    pub(crate) members: Vec<String>,
    /// Unread messages.
    pub(crate) unread: u64,
    /// Messages and events, oldest first.
    pub(crate) entries: Vec<Entry>,
    /// Whether its history was asked for.
    pub(crate) loaded: bool,
    /// Whether the oldest message is held (a history answer had fewer than asked for).
    pub(crate) complete: bool,
    /// How many rendered lines the pane is scrolled up from the bottom.
    pub(crate) scroll: usize,
    /// Who is typing in it now (escaped).
    pub(crate) typing: Vec<String>,
}

/// One line of a group's pane.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// The message id, for messages.
    pub(crate) id: Option<String>,
    /// When (ms since the Unix epoch).
    pub(crate) at_ms: u64,
    /// The sender, for messages (escaped).
    pub(crate) sender: Option<String>,
    /// What it is.
    pub(crate) kind: EntryKind,
    /// The text (escaped).
    pub(crate) text: String,
    /// The attachment, for files.
    pub(crate) file: Option<FileRef>,
    /// Queued, not yet accepted by the relay.
    pub(crate) pending: bool,
    /// What a reply quotes (`↪ alice: quote`, escaped), for replies.
    pub(crate) reply: Option<String>,
    /// What follows the text: ` (edited)` and the reactions (`  👍 2`), escaped.
    pub(crate) marks: String,
}

/// The kinds of pane lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Text,
    File,
    Membership,
    Call,
    Warning,
    Identity,
    /// The UI's own feedback (a command's result or error).
    Notice,
}

/// An attachment as the pane shows it: `[name size #index]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct FileRef {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) size: u64,
    /// Its number among the group's files (what `/download N` takes).
    #[serde(default)]
    pub(crate) index: Option<u64>,
}

/// A call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    /// The daemon's call id.
    pub(crate) id: String,
    /// The group's name (escaped).
    pub(crate) group: String,
    /// The caller, for an incoming call (escaped).
    pub(crate) from: Option<String>,
    /// `ringing`, `connecting`, `connected`, or `calling` before the daemon says more.
    pub(crate) state: String,
    /// Whether it is incoming and not answered yet.
    pub(crate) ringing: bool,
}

/// A transfer's progress.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Transfer {
    pub(crate) id: String,
    pub(crate) up: bool,
    pub(crate) done: u64,
    pub(crate) total: u64,
}

/// The line being typed; `cursor` counts chars.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Input {
    pub(crate) text: String,
    pub(crate) cursor: usize,
}

/// What a request in flight was for.
#[derive(Debug, Clone, PartialEq)]
enum Purpose {
    Status,
    Subscribe,
    Groups,
    /// The groups, then this note in the shown group.
    GroupsThen(String),
    History {
        group: String,
    },
    /// Older messages of this group (PgUp at the top).
    Older(String),
    Send {
        group: String,
        text: String,
    },
    /// A command whose success is shown as this note in the group (id) or the lobby.
    Command {
        group: Option<String>,
        done: String,
    },
    Download {
        group: String,
    },
    Call {
        group: String,
    },
    Answer,
    SafetyNumber {
        user: String,
        confirm: bool,
    },
    Verify {
        user: String,
    },
    MarkRead,
}

/// The help screen's text (also in `cove tui --help`).
pub const HELP: &str = keys_help!();

impl App {
    /// An empty UI of `size` (columns, rows) showing times in `tz`.
    pub fn new(tz: jiff::tz::TimeZone, size: (u16, u16)) -> App {
        App {
            me: None,
            daemon_up: false,
            relay_connected: false,
            pending: 0,
            groups: Vec::new(),
            selected: 0,
            input: Input::default(),
            call: None,
            ended_call: None,
            transfers: Vec::new(),
            lobby: Vec::new(),
            help: false,
            tz,
            size,
            audio: serde_json::Map::new(),
            next_id: 1,
            waiting: HashMap::new(),
        }
    }

    /// The audio devices (or sources) calls made or answered here use; `None`: the daemon's
    /// default.
    pub fn set_audio(&mut self, input: Option<String>, output: Option<String>) {
        self.audio.clear();
        if let Some(input) = input {
            self.audio.insert("audio_in".into(), input.into());
        }
        if let Some(output) = output {
            self.audio.insert("audio_out".into(), output.into());
        }
    }

    /// `params` with the audio choice added.
    fn with_audio(&self, mut params: Value) -> Value {
        if let Some(map) = params.as_object_mut() {
            map.extend(self.audio.clone());
        }
        params
    }

    /// Applies one event at `now_ms` (ms since the Unix epoch) and returns what to do.
    pub fn update(&mut self, now_ms: u64, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Key(key) => self.key(now_ms, key, &mut out),
            Event::Resize(w, h) => {
                self.size = (w, h);
                self.clamp_scroll();
            }
            Event::Daemon(DaemonEvent::Connected) => {
                self.daemon_up = true;
                self.request(&mut out, "status", json!({}), Purpose::Status);
                self.request(&mut out, "subscribe", json!({}), Purpose::Subscribe);
                self.request(&mut out, "groups", json!({}), Purpose::Groups);
                for g in &mut self.groups {
                    g.loaded = false;
                }
            }
            Event::Daemon(DaemonEvent::Lost(why)) => {
                self.daemon_up = false;
                self.waiting.clear();
                self.note(
                    now_ms,
                    None,
                    format!("lost the daemon: {} (reconnecting)", cove::escape(&why)),
                );
            }
            Event::Daemon(DaemonEvent::Reply { id, result }) => {
                if let Some(purpose) = self.waiting.remove(&id) {
                    self.reply(now_ms, purpose, result, &mut out);
                }
            }
            Event::Daemon(DaemonEvent::Notification { method, params }) => {
                self.notification(now_ms, &method, params, &mut out)
            }
        }
        out
    }

    /// Whether the app wants the terminal's cursor on the input line (not under the help).
    pub fn shows_cursor(&self) -> bool {
        !self.help
    }

    /// The shown group.
    pub(crate) fn current(&self) -> Option<&Group> {
        self.groups.get(self.selected)
    }

    fn current_mut(&mut self) -> Option<&mut Group> {
        self.groups.get_mut(self.selected)
    }

    fn group_index(&self, key: &str) -> Option<usize> {
        self.groups
            .iter()
            .position(|g| g.id == key)
            .or_else(|| self.groups.iter().position(|g| g.name == cove::escape(key)))
    }

    fn request(&mut self, out: &mut Vec<Action>, method: &'static str, params: Value, p: Purpose) {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.insert(id, p);
        out.push(Action::Request { id, method, params });
    }

    // ---- keys and commands ----

    fn key(&mut self, now_ms: u64, key: KeyEvent, out: &mut Vec<Action>) {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        if self.help {
            self.help = false;
            if matches!(key.code, KeyCode::Esc | KeyCode::F(1) | KeyCode::Enter) {
                return;
            }
        }
        match key.code {
            KeyCode::Char('c') if ctrl => out.push(Action::Quit),
            KeyCode::Char('n') if ctrl => self.select_step(true, out),
            KeyCode::Char('p') if ctrl => self.select_step(false, out),
            KeyCode::Down if alt => self.select_step(true, out),
            KeyCode::Up if alt => self.select_step(false, out),
            KeyCode::Tab => self.select_step(true, out),
            KeyCode::BackTab => self.select_step(false, out),
            KeyCode::Char('a') if alt => self.answer(now_ms, out),
            KeyCode::Char('d') if alt => self.decline(now_ms, out),
            _ if self.input.edit(key.code, ctrl, alt) => {}
            KeyCode::PageUp => {
                let page = self.page();
                let pane = crate::tui::view::layout(self, self.area()).pane;
                let top = crate::tui::view::max_scroll(self, pane);
                if let Some(g) = self.current_mut() {
                    let at_top = g.scroll >= top;
                    g.scroll = g.scroll.saturating_add(page);
                    self.clamp_scroll();
                    if at_top {
                        self.older(out);
                    }
                }
            }
            KeyCode::PageDown => {
                let page = self.page();
                if let Some(g) = self.current_mut() {
                    g.scroll = g.scroll.saturating_sub(page);
                }
            }
            KeyCode::F(1) => self.help = true,
            KeyCode::Esc => {}
            KeyCode::Enter => {
                let line = std::mem::take(&mut self.input);
                self.submit(now_ms, line.text, out);
            }
            _ => {}
        }
    }

    /// A page: the message pane's height less one line of overlap.
    fn page(&self) -> usize {
        let pane = crate::tui::view::layout(self, self.area()).pane;
        usize::from(pane.height.saturating_sub(2)).max(1)
    }

    pub(crate) fn area(&self) -> ratatui::layout::Rect {
        ratatui::layout::Rect::new(0, 0, self.size.0, self.size.1)
    }

    fn clamp_scroll(&mut self) {
        let pane = crate::tui::view::layout(self, self.area()).pane;
        let max = crate::tui::view::max_scroll(self, pane);
        if let Some(g) = self.current_mut() {
            g.scroll = g.scroll.min(max);
        }
    }

    /// Shows the next group (or the previous one), wrapping around.
    fn select_step(&mut self, forward: bool, out: &mut Vec<Action>) {
        let n = self.groups.len();
        if n == 0 {
            return;
        }
        let current = self.selected.min(n - 1);
        let next = if forward {
            (current + 1) % n
        } else {
            (current + n - 1) % n
        };
        self.select(next, out);
    }

    fn select(&mut self, index: usize, out: &mut Vec<Action>) {
        self.selected = index;
        let Some(g) = self.groups.get_mut(index) else {
            return;
        };
        let id = g.id.clone();
        if !g.loaded {
            g.loaded = true;
            self.request(
                out,
                "history",
                json!({ "group": id, "limit": HISTORY_LIMIT }),
                Purpose::History { group: id },
            );
        } else if g.unread > 0 {
            g.unread = 0;
            self.request(out, "mark_read", json!({ "group": id }), Purpose::MarkRead);
        }
    }

    /// Asks for the shown group's messages before the oldest one held, unless the daemon
    /// said there are none or a request is on its way.
    fn older(&mut self, out: &mut Vec<Action>) {
        let Some(g) = self.current() else {
            return;
        };
        if g.complete
            || self
                .waiting
                .values()
                .any(|p| p == &Purpose::Older(g.id.clone()))
        {
            return;
        }
        let Some(oldest) = g.entries.iter().find_map(|e| e.id.clone()) else {
            return;
        };
        let group = g.id.clone();
        let params = json!({ "group": group, "limit": HISTORY_LIMIT, "before": oldest });
        self.request(out, "history", params, Purpose::Older(group));
    }

    fn submit(&mut self, now_ms: u64, line: String, out: &mut Vec<Action>) {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return;
        }
        if let Some(command) = trimmed.strip_prefix('/')
            && !command.starts_with('/')
        {
            self.command(now_ms, command, out);
            return;
        }
        // `//text` sends `/text`.
        let text = if trimmed.starts_with("//") {
            line.trim_start().get(1..).unwrap_or_default().to_owned()
        } else {
            line
        };
        let Some(g) = self.current() else {
            self.note(now_ms, None, "no group yet: /create NAME [USER...]".into());
            self.input = Input {
                cursor: text.chars().count(),
                text,
            };
            return;
        };
        let group = g.id.clone();
        self.request(
            out,
            "send",
            json!({ "group": group, "text": text }),
            Purpose::Send { group, text },
        );
    }

    fn command(&mut self, now_ms: u64, command: &str, out: &mut Vec<Action>) {
        let mut words = command.split_whitespace();
        let name = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        let rest = command
            .trim_start()
            .get(name.len()..)
            .unwrap_or_default()
            .trim();
        let group = self.current().map(|g| (g.id.clone(), g.name.clone()));
        let needs_group = matches!(
            name,
            "file"
                | "download"
                | "call"
                | "add"
                | "remove"
                | "leave"
                | "reply"
                | "react"
                | "unreact"
                | "edit"
                | "delete"
        );
        if needs_group && group.is_none() {
            self.note(
                now_ms,
                None,
                format!("/{name} needs a group: /create NAME [USER...]"),
            );
            return;
        }
        let (gid, gname) = group.unwrap_or_default();
        let usage = |s: &str| format!("usage: {s}");
        match (name, args.as_slice()) {
            ("help", _) => self.help = true,
            ("quit" | "exit", _) => out.push(Action::Quit),
            ("file", [_, ..]) => {
                let note = format!("sent {}", cove::escape(rest));
                self.request(
                    out,
                    "send_file",
                    json!({ "group": gid, "path": rest }),
                    Purpose::Command {
                        group: Some(gid.clone()),
                        done: note,
                    },
                );
            }
            ("download", [n]) => {
                let file = match n.trim_start_matches('#').parse::<u64>() {
                    Ok(i) => json!(i),
                    Err(_) => json!(n),
                };
                self.request(
                    out,
                    "download",
                    json!({ "group": gid, "file": file }),
                    Purpose::Download { group: gid },
                );
            }
            ("call", []) => {
                let params = self.with_audio(json!({ "group": gid }));
                self.request(out, "call", params, Purpose::Call { group: gname })
            }
            ("answer", []) => self.answer(now_ms, out),
            ("decline", []) => self.decline(now_ms, out),
            ("hangup", []) => {
                let call = self.call.as_ref().map(|c| c.id.clone());
                self.request(
                    out,
                    "hangup",
                    call.map_or(json!({}), |c| json!({ "call": c })),
                    Purpose::Command {
                        group: None,
                        done: "hung up".into(),
                    },
                );
            }
            ("add" | "remove", [_, ..]) => {
                let method = if name == "add" {
                    "group_add"
                } else {
                    "group_remove"
                };
                let done = format!(
                    "{} {}",
                    if name == "add" { "added" } else { "removed" },
                    cove::escape(&args.join(", "))
                );
                self.request(
                    out,
                    method,
                    json!({ "group": gid, "users": args }),
                    Purpose::Command {
                        group: Some(gid.clone()),
                        done,
                    },
                );
            }
            ("leave", []) => self.request(
                out,
                "group_leave",
                json!({ "group": gid }),
                Purpose::Command {
                    group: None,
                    done: format!("left {gname}"),
                },
            ),
            ("create", [group, members @ ..]) => {
                let done = format!("created {}", cove::escape(group));
                self.request(
                    out,
                    "group_create",
                    json!({ "name": group, "members": members }),
                    Purpose::Command { group: None, done },
                );
            }
            ("verify", [user]) | ("verify", [user, "yes"]) => {
                let confirm = args.len() == 2;
                self.request(
                    out,
                    "safety_number",
                    json!({ "user": user }),
                    Purpose::SafetyNumber {
                        user: (*user).to_owned(),
                        confirm,
                    },
                );
            }
            ("reply" | "edit", [id, _, ..]) => {
                let text = rest.get(id.len()..).unwrap_or_default().trim();
                let (method, done) = if name == "reply" {
                    ("reply", "replied")
                } else {
                    ("edit", "edited")
                };
                self.request(
                    out,
                    method,
                    json!({ "group": gid, "to": id, "text": text }),
                    Purpose::Command {
                        group: Some(gid.clone()),
                        done: done.into(),
                    },
                );
            }
            ("react" | "unreact", [id, emoji]) => {
                let remove = name == "unreact";
                self.request(
                    out,
                    "react",
                    json!({ "group": gid, "to": id, "emoji": emoji, "remove": remove }),
                    Purpose::Command {
                        group: Some(gid.clone()),
                        done: if remove {
                            "reaction taken back"
                        } else {
                            "reacted"
                        }
                        .into(),
                    },
                );
            }
            ("delete", [id]) => self.request(
                out,
                "delete",
                json!({ "group": gid, "to": id }),
                Purpose::Command {
                    group: Some(gid.clone()),
                    done: "deleted".into(),
                },
            ),
            ("reply", _) => self.note(now_ms, None, usage("/reply ID TEXT")),
            ("edit", _) => self.note(now_ms, None, usage("/edit ID TEXT")),
            ("react" | "unreact", _) => {
                self.note(now_ms, None, usage(&format!("/{name} ID EMOJI")))
            }
            ("delete", _) => self.note(now_ms, None, usage("/delete ID")),
            ("file", _) => self.note(now_ms, None, usage("/file PATH")),
            ("download", _) => self.note(now_ms, None, usage("/download N")),
            ("add", _) => self.note(now_ms, None, usage("/add USER...")),
            ("remove", _) => self.note(now_ms, None, usage("/remove USER...")),
            ("create", _) => self.note(now_ms, None, usage("/create NAME [USER...]")),
            ("verify", _) => self.note(now_ms, None, usage("/verify USER [yes]")),
            ("call" | "answer" | "decline" | "hangup" | "leave", _) => {
                self.note(now_ms, None, usage(&format!("/{name} (no arguments)")))
            }
            _ => self.note(
                now_ms,
                None,
                format!("unknown command /{} (/help lists them)", cove::escape(name)),
            ),
        }
    }

    fn answer(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let call = self
            .call
            .as_ref()
            .filter(|c| c.ringing)
            .map(|c| c.id.clone());
        let Some(call) = call else {
            self.note(now_ms, None, "no incoming call to answer".into());
            return;
        };
        let params = self.with_audio(json!({ "call": call }));
        self.request(out, "answer", params, Purpose::Answer);
    }

    fn decline(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let call = self
            .call
            .as_ref()
            .filter(|c| c.ringing)
            .map(|c| c.id.clone());
        let Some(call) = call else {
            self.note(now_ms, None, "no incoming call to decline".into());
            return;
        };
        if let Some(c) = &mut self.call {
            c.ringing = false;
        }
        self.request(
            out,
            "decline",
            json!({ "call": call }),
            Purpose::Command {
                group: None,
                done: "declined the call".into(),
            },
        );
    }

    // ---- replies ----

    fn reply(
        &mut self,
        now_ms: u64,
        purpose: Purpose,
        result: Result<Value, RpcError>,
        out: &mut Vec<Action>,
    ) {
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                let (group, what) = match &purpose {
                    Purpose::Send { group, text } => {
                        // Give the text back to retry, unless something new is typed.
                        if self.input.text.is_empty() {
                            self.input = Input {
                                cursor: text.chars().count(),
                                text: text.clone(),
                            };
                        }
                        (Some(group.clone()), "not sent")
                    }
                    Purpose::History { group } | Purpose::Older(group) => {
                        (Some(group.clone()), "history")
                    }
                    Purpose::Download { group } => (Some(group.clone()), "download failed"),
                    Purpose::Command { group, .. } => (group.clone(), "failed"),
                    Purpose::Call { .. } => (None, "call failed"),
                    Purpose::SafetyNumber { .. } | Purpose::Verify { .. } => {
                        (None, "verify failed")
                    }
                    _ => (None, "daemon"),
                };
                let kind = e.kind.map(|k| format!(" ({})", cove::escape(&k)));
                let text = format!(
                    "{what}: {}{}",
                    cove::escape(&e.message),
                    kind.unwrap_or_default()
                );
                self.note(now_ms, group.as_deref(), text);
                return;
            }
        };
        match purpose {
            Purpose::Status => {
                if let Ok(s) = serde_json::from_value::<StatusReply>(value) {
                    self.me = Some(Me {
                        user: cove::escape(&s.user),
                        server: cove::escape(&s.server),
                    });
                    self.relay_connected = s.connected;
                    self.pending = s.pending;
                }
            }
            Purpose::Subscribe | Purpose::MarkRead => {}
            Purpose::Groups => {
                if let Ok(list) = serde_json::from_value::<Vec<GroupItem>>(value) {
                    self.set_groups(list, out);
                }
            }
            Purpose::GroupsThen(note) => {
                if let Ok(list) = serde_json::from_value::<Vec<GroupItem>>(value) {
                    self.set_groups(list, out);
                }
                self.note(now_ms, None, note);
            }
            Purpose::Older(group) => {
                let Ok(items) = serde_json::from_value::<Vec<MessageItem>>(value) else {
                    return;
                };
                let Some(i) = self.group_index(&group) else {
                    return;
                };
                let complete = items.len() < usize::try_from(HISTORY_LIMIT).unwrap_or(0);
                for m in items {
                    self.add_message(i, m.into_entry());
                }
                if let Some(g) = self.groups.get_mut(i) {
                    g.complete = complete;
                }
            }
            Purpose::History { group } => {
                let Ok(items) = serde_json::from_value::<Vec<MessageItem>>(value) else {
                    return;
                };
                let Some(i) = self.group_index(&group) else {
                    return;
                };
                if items.len() < usize::try_from(HISTORY_LIMIT).unwrap_or(0)
                    && let Some(g) = self.groups.get_mut(i)
                {
                    g.complete = true;
                }
                for m in items {
                    self.add_message(i, m.into_entry());
                }
                if i == self.selected
                    && let Some(g) = self.groups.get_mut(i)
                    && g.unread > 0
                {
                    g.unread = 0;
                    let gid = g.id.clone();
                    self.request(out, "mark_read", json!({ "group": gid }), Purpose::MarkRead);
                }
            }
            Purpose::Send { group, text } => {
                let Ok(sent) = serde_json::from_value::<SentReply>(value) else {
                    return;
                };
                if let Some(i) = self.group_index(&group) {
                    let sender = self.me.as_ref().map(|m| m.user.clone());
                    self.add_message(
                        i,
                        Entry {
                            id: Some(sent.id),
                            at_ms: now_ms,
                            sender,
                            kind: EntryKind::Text,
                            text: cove::escape(&text),
                            file: None,
                            pending: sent.pending,
                            reply: None,
                            marks: String::new(),
                        },
                    );
                    if let Some(g) = self.groups.get_mut(i) {
                        g.scroll = 0;
                    }
                }
                if sent.pending {
                    self.pending += 1;
                }
            }
            Purpose::Command { group, done } => match group {
                Some(group) => {
                    self.note(now_ms, Some(&group), done);
                    self.request(out, "groups", json!({}), Purpose::Groups);
                }
                // The groups change (left, created): the note goes where the list shows
                // once it is fresh.
                None => self.request(out, "groups", json!({}), Purpose::GroupsThen(done)),
            },
            Purpose::Download { group } => {
                let path = value.get("path").and_then(Value::as_str).unwrap_or("?");
                let size = value.get("size").and_then(Value::as_u64).unwrap_or(0);
                let text = format!("saved {} ({})", cove::escape(path), cove::human_size(size));
                self.note(now_ms, Some(&group), text);
            }
            Purpose::Call { group } => {
                // A `call_state` may have come first: keep what it said.
                if let Some(id) = value.get("call").and_then(Value::as_str)
                    && self.call.as_ref().is_none_or(|c| c.id != id)
                    && self.ended_call.as_deref() != Some(id)
                {
                    self.call = Some(Call {
                        id: id.to_owned(),
                        group,
                        from: None,
                        state: "calling".into(),
                        ringing: false,
                    });
                }
            }
            Purpose::Answer => {
                if let Some(c) = &mut self.call {
                    c.ringing = false;
                    if c.state == "ringing" {
                        c.state = "connecting".into();
                    }
                }
            }
            Purpose::SafetyNumber { user, confirm } => {
                let number = value.get("number").and_then(Value::as_str).unwrap_or("");
                let verified = value.get("verified").and_then(Value::as_bool) == Some(true);
                let who = cove::escape(&user);
                if confirm {
                    let params = json!({ "user": user, "number": number });
                    self.request(out, "verify", params, Purpose::Verify { user });
                } else {
                    let state = if verified { "verified" } else { "not verified" };
                    let text = format!(
                        "safety number with {who} ({state}): {}; compare it with {who}, \
                         then /verify {who} yes",
                        cove::escape(number)
                    );
                    self.note(now_ms, None, text);
                }
            }
            Purpose::Verify { user } => {
                let verified = value.get("verified").and_then(Value::as_bool) == Some(true);
                let text = if verified {
                    format!("{} is verified", cove::escape(&user))
                } else {
                    format!("{} is not verified", cove::escape(&user))
                };
                self.note(now_ms, None, text);
            }
        }
    }

    fn set_groups(&mut self, list: Vec<GroupItem>, out: &mut Vec<Action>) {
        let selected = self.current().map(|g| g.id.clone());
        let mut old: HashMap<String, Group> =
            self.groups.drain(..).map(|g| (g.id.clone(), g)).collect();
        for item in list {
            let mut g = old.remove(&item.group).unwrap_or_else(|| Group {
                id: item.group.clone(),
                name: String::new(),
                members: Vec::new(),
                unread: 0,
                entries: Vec::new(),
                loaded: false,
                complete: false,
                scroll: 0,
                typing: Vec::new(),
            });
            g.name = cove::escape(&item.name);
            g.members = item.members.iter().map(|m| cove::escape(m)).collect();
            g.unread = item.unread;
            self.groups.push(g);
        }
        let index = selected
            .and_then(|id| self.groups.iter().position(|g| g.id == id))
            .unwrap_or(0);
        self.select(index, out);
    }

    /// Inserts `entry` in time order, or updates the entry with the same id.
    fn add_message(&mut self, group: usize, entry: Entry) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        if let Some(id) = &entry.id
            && let Some(e) = g.entries.iter_mut().find(|e| e.id.as_ref() == Some(id))
        {
            e.pending = entry.pending;
            // The daemon's newer view of it (edited, deleted, reacted to).
            if matches!(entry.kind, EntryKind::Text | EntryKind::File) && !entry.pending {
                e.text = entry.text;
                e.file = entry.file;
                e.reply = entry.reply;
                e.marks = entry.marks;
            }
            return;
        }
        let at = g
            .entries
            .iter()
            .rposition(|e| e.at_ms <= entry.at_ms)
            .map_or(0, |i| i + 1);
        // A scrolled-up pane keeps showing the same lines.
        if g.scroll > 0 && at == g.entries.len() {
            g.scroll += 1;
        }
        g.entries.insert(at, entry);
        if g.entries.len() > MAX_ENTRIES {
            g.entries.remove(0);
        }
    }

    /// A line from the UI itself, in `group` (an id), else the shown group, else the lobby.
    fn note(&mut self, now_ms: u64, group: Option<&str>, text: String) {
        let entry = Entry {
            id: None,
            at_ms: now_ms,
            sender: None,
            kind: EntryKind::Notice,
            text,
            file: None,
            pending: false,
            reply: None,
            marks: String::new(),
        };
        let index = group
            .and_then(|g| self.group_index(g))
            .or_else(|| self.current().map(|_| self.selected));
        match index {
            Some(i) => self.add_message(i, entry),
            None => {
                self.lobby.push(entry);
                if self.lobby.len() > MAX_ENTRIES {
                    self.lobby.remove(0);
                }
            }
        }
    }

    /// An `update` notification: typing changes the group's title; a reaction, edit or
    /// delete reloads the group's recent messages (their entries are updated in place);
    /// expired messages leave the pane.
    fn group_update(&mut self, params: Value, out: &mut Vec<Action>) {
        let group = params["group"].as_str().unwrap_or_default().to_owned();
        let Some(i) = self.group_index(&group) else {
            return;
        };
        match params["kind"].as_str().unwrap_or_default() {
            "typing" => {
                let from = cove::escape(params["from"].as_str().unwrap_or_default());
                let me = self.me.as_ref().map(|m| cove::escape(&m.user));
                if let Some(g) = self.groups.get_mut(i)
                    && Some(&from) != me.as_ref()
                {
                    g.typing.retain(|t| *t != from);
                    if params["active"].as_bool() == Some(true) {
                        g.typing.push(from);
                    }
                }
            }
            "reaction" | "edit" | "delete" if self.groups.get(i).is_some_and(|g| g.loaded) => {
                let params = json!({ "group": group, "limit": HISTORY_LIMIT });
                self.request(out, "history", params, Purpose::History { group });
            }
            "expired" => {
                let ids: Vec<&str> = params["ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if let Some(g) = self.groups.get_mut(i) {
                    g.entries
                        .retain(|e| !e.id.as_deref().is_some_and(|id| ids.contains(&id)));
                }
            }
            "group_changed" => self.request(out, "groups", json!({}), Purpose::Groups),
            _ => {}
        }
    }

    // ---- notifications ----

    fn notification(&mut self, now_ms: u64, method: &str, params: Value, out: &mut Vec<Action>) {
        match method {
            "message" => {
                let Ok(m) = serde_json::from_value::<MessageItem>(params) else {
                    return;
                };
                let Some(i) = self.group_index(&m.group) else {
                    // A group this UI does not know yet (just added to it).
                    self.request(out, "groups", json!({}), Purpose::Groups);
                    return;
                };
                let id = m.id.clone();
                if let Some(g) = self.groups.get_mut(i) {
                    let sender = cove::escape(&m.sender);
                    g.typing.retain(|t| *t != sender);
                }
                let is_new = self
                    .groups
                    .get(i)
                    .is_some_and(|g| !g.entries.iter().any(|e| e.id.as_ref() == Some(&id)));
                self.add_message(i, m.into_entry());
                if !is_new {
                    return;
                }
                if i == self.selected {
                    let gid = self.groups.get(i).map(|g| g.id.clone()).unwrap_or_default();
                    self.request(
                        out,
                        "mark_read",
                        json!({ "group": gid, "up_to": id }),
                        Purpose::MarkRead,
                    );
                } else if let Some(g) = self.groups.get_mut(i) {
                    g.unread += 1;
                }
            }
            "update" => self.group_update(params, out),
            "membership" => {
                let Ok(m) = serde_json::from_value::<MembershipNote>(params) else {
                    return;
                };
                let users = m
                    .users
                    .iter()
                    .map(|u| cove::escape(u))
                    .collect::<Vec<_>>()
                    .join(", ");
                let by = m.by.as_deref().map(cove::escape);
                let text = match (m.kind.as_str(), by) {
                    ("added", Some(by)) => format!("{by} added {users}"),
                    ("removed", Some(by)) => format!("{by} removed {users}"),
                    ("joined", _) => format!("{users} joined"),
                    ("left", _) => format!("{users} left"),
                    ("device_added", _) => format!("{users} added a device"),
                    (kind, _) => format!("{users}: {}", cove::escape(kind)),
                };
                if let Some(i) = self.group_index(&m.group) {
                    self.add_message(i, event_entry(now_ms, EntryKind::Membership, text));
                }
                self.request(out, "groups", json!({}), Purpose::Groups);
            }
            "warning" => {
                let group = params.get("group").and_then(Value::as_str);
                let text = params.get("text").and_then(Value::as_str).unwrap_or("");
                let entry = event_entry(now_ms, EntryKind::Warning, cove::escape(text));
                match group.and_then(|g| self.group_index(g)) {
                    Some(i) => self.add_message(i, entry),
                    None => self.broadcast(entry, None),
                }
            }
            "identity" => {
                let user = params.get("user").and_then(Value::as_str).unwrap_or("");
                let text = params.get("text").and_then(Value::as_str).unwrap_or("");
                // A user verified is news, not a warning.
                let kind = match params.get("kind").and_then(Value::as_str) {
                    Some("verified") => EntryKind::Notice,
                    _ => EntryKind::Identity,
                };
                let entry = event_entry(now_ms, kind, cove::escape(text));
                // About one group (a refused member), or every group with the user.
                let group = params.get("group").and_then(Value::as_str);
                match group.and_then(|g| self.group_index(g)) {
                    Some(i) => self.add_message(i, entry),
                    None => self.broadcast(entry, Some(&cove::escape(user))),
                }
            }
            "incoming_call" => {
                let Ok(c) = serde_json::from_value::<IncomingCall>(params) else {
                    return;
                };
                let group = self
                    .group_index(&c.group)
                    .and_then(|i| self.groups.get(i))
                    .map_or_else(|| cove::escape(&c.group), |g| g.name.clone());
                let from = cove::escape(&c.from);
                let kind = if c.video { "video call" } else { "call" };
                if let Some(i) = self.group_index(&c.group) {
                    let text = format!("incoming {kind} from {from}");
                    self.add_message(i, event_entry(now_ms, EntryKind::Call, text));
                }
                self.call = Some(Call {
                    id: c.call,
                    group,
                    from: Some(from),
                    state: "ringing".into(),
                    ringing: true,
                });
                out.push(Action::Bell);
            }
            "call_state" => {
                let Ok(s) = serde_json::from_value::<CallState>(params) else {
                    return;
                };
                if s.state == "ended" {
                    if self.call.as_ref().is_some_and(|c| c.id == s.call) {
                        self.call = None;
                    }
                    self.ended_call = Some(s.call.clone());
                    let reason = s.reason.map(|r| format!(" ({})", cove::escape(&r)));
                    let text = format!("call ended{}", reason.unwrap_or_default());
                    if let Some(i) = self.group_index(&s.group) {
                        self.add_message(i, event_entry(now_ms, EntryKind::Call, text));
                    }
                } else if let Some(c) = self.call.as_mut().filter(|c| c.id == s.call) {
                    c.state = cove::escape(&s.state.replace('_', " "));
                    c.ringing = c.ringing && s.state == "ringing";
                } else if self.call.is_none() {
                    let group = self
                        .group_index(&s.group)
                        .and_then(|i| self.groups.get(i))
                        .map_or_else(|| cove::escape(&s.group), |g| g.name.clone());
                    self.call = Some(Call {
                        id: s.call,
                        group,
                        from: None,
                        state: cove::escape(&s.state.replace('_', " ")),
                        ringing: false,
                    });
                }
            }
            "transfer" => {
                let Ok(t) = serde_json::from_value::<TransferNote>(params) else {
                    return;
                };
                self.transfers.retain(|x| x.id != t.id);
                if t.done < t.total {
                    self.transfers.push(Transfer {
                        id: t.id,
                        up: t.direction == "up",
                        done: t.done,
                        total: t.total,
                    });
                }
            }
            "connection" => {
                let connected = params.get("connected").and_then(Value::as_bool);
                if let Some(connected) = connected {
                    self.relay_connected = connected;
                    self.request(out, "status", json!({}), Purpose::Status);
                    // Back online: queued messages go out; show them as sent.
                    if connected && let Some(g) = self.current().filter(|g| g.loaded) {
                        let group = g.id.clone();
                        let params = json!({ "group": group, "limit": HISTORY_LIMIT });
                        self.request(out, "history", params, Purpose::History { group });
                    }
                }
            }
            _ => {}
        }
    }

    /// Adds `entry` to every group `user` is a member of, or to the shown group (or lobby).
    fn broadcast(&mut self, entry: Entry, user: Option<&str>) {
        let with_user: Vec<usize> = (0..self.groups.len())
            .filter(|&i| {
                user.is_some_and(|u| {
                    self.groups
                        .get(i)
                        .is_some_and(|g| g.members.iter().any(|m| m == u))
                })
            })
            .collect();
        if !with_user.is_empty() {
            for i in with_user {
                self.add_message(i, entry.clone());
            }
        } else if self.current().is_some() {
            self.add_message(self.selected, entry);
        } else {
            self.lobby.push(entry);
        }
    }
}

impl Input {
    /// Applies an editing key (typing, deleting, moving the cursor); false if `code` is none.
    fn edit(&mut self, code: KeyCode, ctrl: bool, alt: bool) -> bool {
        let len = self.text.chars().count();
        match code {
            KeyCode::Char('u') if ctrl => {
                self.text = self.text.chars().skip(self.cursor).collect();
                self.cursor = 0;
            }
            KeyCode::Char('a') if ctrl => self.cursor = 0,
            KeyCode::Char('e') if ctrl => self.cursor = len,
            KeyCode::Char(c) if !ctrl && !alt => {
                if self.text.len() + c.len_utf8() <= MAX_INPUT {
                    self.text.insert(byte_at(&self.text, self.cursor), c);
                    self.cursor += 1;
                }
            }
            KeyCode::Backspace => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.remove_at_cursor();
                }
            }
            KeyCode::Delete => self.remove_at_cursor(),
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(len),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = len,
            _ => return false,
        }
        true
    }

    fn remove_at_cursor(&mut self) {
        let at = byte_at(&self.text, self.cursor);
        if at < self.text.len() {
            self.text.remove(at);
        }
    }
}

fn event_entry(now_ms: u64, kind: EntryKind, text: String) -> Entry {
    Entry {
        id: None,
        at_ms: now_ms,
        sender: None,
        kind,
        text,
        file: None,
        pending: false,
        reply: None,
        marks: String::new(),
    }
}

/// The byte offset of char `cursor` in `text` (its length past the end).
fn byte_at(text: &str, cursor: usize) -> usize {
    text.char_indices()
        .nth(cursor)
        .map_or(text.len(), |(i, _)| i)
}

// ---- what the daemon sends (contract: notes/daemon-api.md) ----

#[derive(Deserialize)]
struct StatusReply {
    #[serde(default)]
    user: String,
    #[serde(default)]
    server: String,
    #[serde(default)]
    connected: bool,
    #[serde(default)]
    pending: u64,
}

#[derive(Deserialize)]
struct GroupItem {
    group: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    unread: u64,
}

#[derive(Deserialize)]
struct SentReply {
    id: String,
    #[serde(default)]
    pending: bool,
}

#[derive(Deserialize)]
struct MessageItem {
    id: String,
    group: String,
    #[serde(default)]
    sender: String,
    #[serde(default)]
    sent_at_ms: u64,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    file: Option<FileRef>,
    #[serde(default)]
    pending: bool,
    #[serde(default)]
    reply_to: Option<QuoteItem>,
    #[serde(default)]
    reactions: Vec<ReactionItem>,
    #[serde(default)]
    edited: bool,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    unsupported: bool,
}

#[derive(Deserialize)]
struct QuoteItem {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct ReactionItem {
    emoji: String,
    #[serde(default)]
    users: Vec<String>,
}

impl MessageItem {
    fn into_entry(self) -> Entry {
        let kind = match self.kind.as_str() {
            "file" => EntryKind::File,
            "membership" => EntryKind::Membership,
            "call" => EntryKind::Call,
            "warning" => EntryKind::Warning,
            _ if self.file.is_some() => EntryKind::File,
            _ => EntryKind::Text,
        };
        let sender =
            matches!(kind, EntryKind::Text | EntryKind::File).then(|| cove::escape(&self.sender));
        let reply = self.reply_to.map(|q| {
            let quote: String = q.text.chars().take(40).collect();
            match q.from {
                Some(from) => format!("↪ {}: {}", cove::escape(&from), cove::escape(&quote)),
                None => format!("↪ {}", cove::escape(&quote)),
            }
        });
        let mut marks = String::new();
        if self.edited && !self.deleted {
            marks.push_str(" (edited)");
        }
        if !self.reactions.is_empty() {
            marks.push(' ');
        }
        for r in &self.reactions {
            marks.push_str(&format!(" {} {}", cove::escape(&r.emoji), r.users.len()));
        }
        let (text, file) = if self.deleted {
            ("(deleted)".to_owned(), None)
        } else if self.unsupported {
            ("[unsupported message]".to_owned(), None)
        } else {
            (cove::escape(&self.text), self.file)
        };
        Entry {
            id: Some(self.id),
            at_ms: self.sent_at_ms,
            sender,
            kind,
            text,
            file: file.map(|f| FileRef {
                name: cove::escape(&f.name),
                ..f
            }),
            pending: self.pending,
            reply,
            marks,
        }
    }
}

#[derive(Deserialize)]
struct MembershipNote {
    group: String,
    kind: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    by: Option<String>,
}

#[derive(Deserialize)]
struct IncomingCall {
    call: String,
    group: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    video: bool,
}

#[derive(Deserialize)]
struct CallState {
    call: String,
    #[serde(default)]
    group: String,
    state: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct TransferNote {
    id: String,
    #[serde(default)]
    direction: String,
    done: u64,
    total: u64,
}
