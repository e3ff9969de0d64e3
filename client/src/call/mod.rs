//! Calls: the tokio driver that joins the core's call signalling (inside MLS, see
//! [`cove_core::call`]) with the media engine ([`cove_media::Call`]), and the `cove call` /
//! `cove answer` commands ([`cli`]).
//!
//! ```text
//! place():  TURN credentials from the relay -> settle -> Calls::dial -> Call::dial per peer
//! answer(): wait for CallAction::Incoming  -> Call::new + Calls::answer -> Call::apply_signal
//! loop select {
//!   media event   LocalSignal{peer, signal} -> Calls::local_signal -> send_content (MLS)
//!   session event Content(Call)             -> Calls::handle -> Dial / Apply / PeerLeft / Ended
//!   session event (anything else)           -> epoch changed? Call::rekey(export_secret(..))
//!   timers: ring timeout, call duration
//! }
//! Call::end() -> stats (and stats.json, audio-<user>.wav, video-<user>/ when recording)
//! ```
//!
//! The SFrame base key of each epoch is `MLS-Exporter(EXPORTER_LABEL, call_id, 32)` of the
//! group; every participant's SFrame member index is its MLS leaf index.

pub mod cli;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cove_core::call::{CallAction, CallId, CallMessage, CallSignal, Calls, GroupMember, Peer};
use cove_core::{Content, Event};
use cove_media::sframe::{EXPORTER_LABEL, EpochKey};
use cove_media::source::{AudioInput, AudioOutput, VideoInput};
use cove_media::{Call, CallConfig, CallEvent, CallStats, IceServer, PeerStats};
use cove_wire::{ErrorCode, GroupId, Reply, Request};
use rand::RngCore;
use tokio::sync::{Notify, mpsc};

use crate::device::{Device, DeviceError};
use crate::session::{self, SessionEvent};

/// How a call is made (from the CLI flags).
#[derive(Clone, Debug)]
pub struct CallOptions {
    /// Outgoing audio (`tone:HZ`, a WAV file, `silence`, a capture device).
    pub audio: Option<AudioInput>,
    /// Where received audio is played (`None`: nowhere; a WAV file or a playback device).
    pub audio_out: Option<AudioOutput>,
    /// Outgoing video (`pattern`, a Y4M file).
    pub video: Option<VideoInput>,
    /// Where to record what is received (`audio-<user>.wav`, `video-<user>/`, `stats.json`).
    pub record: Option<PathBuf>,
    /// Hang up this long after the call is connected (`None`: until the others hang up).
    pub duration: Option<Duration>,
    /// Only relayed (TURN) candidates.
    pub relay_only: bool,
    /// How long the caller waits for an answer, and the callee for a call.
    pub ring_timeout: Duration,
    /// Local UDP addresses for media.
    pub bind: Vec<String>,
    /// Print progress lines to stdout.
    pub verbose: bool,
    /// Go on without an audio device that fails to open (silence in, no playback) with a
    /// [`CallNote::DeviceFallback`] and a printed warning, instead of failing the call. The
    /// daemon sets it when it picks a default device itself (no `audio_in` or `audio_out`).
    pub device_fallback: bool,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            audio: Some(AudioInput::Tone(440.0)),
            audio_out: None,
            video: None,
            record: None,
            duration: Some(Duration::from_secs(5)),
            relay_only: false,
            ring_timeout: Duration::from_secs(30),
            bind: vec!["127.0.0.1:0".into()],
            verbose: false,
            device_fallback: false,
        }
    }
}

/// What a finished call reports.
#[derive(Clone, Debug)]
pub struct CallReport {
    /// The call id (hex).
    pub call_id: String,
    /// The remote participants that took part.
    pub peers: Vec<String>,
    /// Dial (or answer) to the first decoded audio frame, per peer, in ms.
    pub first_audio_ms: Vec<(String, f64)>,
    /// The media statistics.
    pub stats: CallStats,
    /// Whether TURN credentials were used.
    pub used_turn: bool,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// A device operation failed (unknown group, relay unreachable, ...).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// This device is not a member of the group.
    #[error("{0}")]
    Group(String),
    /// The group has nobody else, or too many members for a mesh call; or the call cannot
    /// be answered.
    #[error(transparent)]
    Command(#[from] cove_core::call::CallCommandError),
    /// Nobody answered in time.
    #[error("nobody answered within {0} s")]
    NoAnswer(u64),
    /// Everyone declined or was busy.
    #[error("the call was {0}")]
    Rejected(String),
    /// No call came in time (`cove answer`).
    #[error("no incoming call within {0} s")]
    NoIncomingCall(u64),
    /// A peer's description was refused (DTLS fingerprint not the signed one, bad SDP).
    #[error("refused the call with {peer}: {reason}")]
    Refused {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// Media setup failed.
    #[error("media: {0}")]
    Media(String),
    /// `--relay-only` without a TURN server on the relay.
    #[error(
        "--relay-only needs a TURN server, and the relay runs none (cove-server --turn-listen)"
    )]
    NoTurn,
    /// The session to the relay stopped.
    #[error("the connection to the relay stopped")]
    Stopped,
}

/// The session events a call reads (the device's own stream, or what the daemon forwards),
/// with those read while waiting for something else handed out again first.
pub struct Inbox {
    held: VecDeque<SessionEvent>,
    feed: mpsc::UnboundedReceiver<SessionEvent>,
}

impl Inbox {
    /// An inbox reading `feed`.
    pub fn new(feed: mpsc::UnboundedReceiver<SessionEvent>) -> Inbox {
        Inbox {
            held: VecDeque::new(),
            feed,
        }
    }

    /// The next event: held ones first, then the feed's.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        match self.held.pop_front() {
            Some(e) => Some(e),
            None => self.feed.recv().await,
        }
    }

    /// The feed, to give back to the device.
    pub fn into_feed(self) -> mpsc::UnboundedReceiver<SessionEvent> {
        self.feed
    }
}

/// What a call reports as it goes, besides its progress lines (for the daemon).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallNote {
    /// A callee answered.
    Answered {
        /// Who.
        peer: String,
    },
    /// Media flows with a peer.
    Connected {
        /// Who.
        peer: String,
    },
    /// A peer left, declined or was busy (`reason`: `hung up`, `declined`, `busy`).
    PeerLeft {
        /// Who.
        peer: String,
        /// Why.
        reason: &'static str,
    },
    /// An audio device failed to open; the call goes on without it (see
    /// [`CallOptions::device_fallback`]).
    DeviceFallback {
        /// What the user is told, e.g. `audio input default failed to open (...): sending silence`.
        warning: String,
    },
}

/// How a call is driven from outside: an observer of its progress, a hang-up trigger,
/// whether Ctrl-C hangs up.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Told of the call's progress.
    pub observer: Option<Arc<dyn Fn(CallNote) + Send + Sync>>,
    /// Hangs the call up when notified.
    pub stop: Option<Arc<Notify>>,
    /// Whether Ctrl-C (SIGINT) hangs up (the CLI's calls).
    pub ctrl_c: bool,
}

impl Hooks {
    /// The CLI's: Ctrl-C hangs up.
    pub fn cli() -> Hooks {
        Hooks {
            ctrl_c: true,
            ..Hooks::default()
        }
    }

    fn note(&self, note: CallNote) {
        if let Some(observer) = &self.observer {
            observer(note);
        }
    }
}

/// How long to wait for the relay's TURN credentials.
const TURN_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the relay for TURN credentials on the device's session (after settling). `None`
/// if the relay runs no TURN server. Other events read meanwhile are kept in `inbox`.
pub async fn turn_servers(
    device: &Device,
    inbox: &mut Inbox,
) -> Result<Option<IceServer>, CallError> {
    device.settle_shared().await?;
    let id = device
        .session()
        .call(|c| c.send_request(Request::TurnCredentials))
        .await
        .map_err(DeviceError::from)?
        .ok_or(CallError::Stopped)?;
    let deadline = tokio::time::Instant::now() + TURN_REPLY_TIMEOUT;
    let result = loop {
        let event = tokio::time::timeout_at(deadline, inbox.feed.recv())
            .await
            .map_err(|_| CallError::Media("the relay did not answer the TURN request".into()))?
            .ok_or(CallError::Stopped)?;
        match event {
            SessionEvent::Core(Event::Reply { id: got, result }) if got == id => break result,
            other => inbox.held.push_back(other),
        }
    };
    match result {
        Ok(Reply::TurnCredentials {
            urls,
            username,
            password,
            ..
        }) => Ok(Some(IceServer {
            urls: urls.0,
            username,
            credential: password,
        })),
        Ok(_) => Ok(None),
        Err(e) if e.code == ErrorCode::InvalidRequest => Ok(None),
        Err(e) => Err(CallError::Media(format!("TURN credentials refused: {e}"))),
    }
}

/// Calls every other member device of `group` and runs the call (see the module docs).
pub async fn place(
    device: &mut Device,
    group: &str,
    options: &CallOptions,
) -> Result<CallReport, CallError> {
    let mut call_id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut call_id);
    let mut inbox = Inbox::new(device.take_events());
    let result = place_on(
        device,
        &mut inbox,
        group,
        CallId(call_id),
        options,
        Hooks::cli(),
    )
    .await;
    device.restore_events(inbox.into_feed());
    result
}

/// Calls every other member device of `group` as call `call_id`, reading session events
/// from `inbox` (see the module docs).
pub async fn place_on(
    device: &Device,
    inbox: &mut Inbox,
    group: &str,
    call_id: CallId,
    options: &CallOptions,
    hooks: Hooks,
) -> Result<CallReport, CallError> {
    let ice = ice_servers(device, inbox, options).await?;
    let name = group.to_owned();
    let group = device
        .session()
        .call(move |c| c.resolve(&name))
        .await
        .map_err(DeviceError::from)?
        .map_err(DeviceError::from)?;
    let me = device.device_id().ok_or(DeviceError::NotRegistered)?;
    let mut calls = Calls::new(me);
    let state = group_state(device, group, call_id).await?;
    let actions = calls.dial(call_id, group, &state.members)?;
    let mut driver = Driver::new(options, ice, group, call_id, calls, state, inbox, hooks)?;
    driver.say(format!(
        "calling {} (call {})",
        actions
            .iter()
            .filter_map(|a| match a {
                CallAction::Dial { peer, .. } => Some(peer.name.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(", "),
        &call_id.to_hex()[..8]
    ));
    driver.ring_deadline = Some(Instant::now() + options.ring_timeout);
    driver.run_actions(device, actions).await?;
    driver.run(device).await
}

/// Waits for an incoming call (in `group`, if given), answers it and runs it.
pub async fn answer(
    device: &mut Device,
    group: Option<&str>,
    options: &CallOptions,
) -> Result<CallReport, CallError> {
    let mut inbox = Inbox::new(device.take_events());
    let result = answer_on(device, &mut inbox, group, options, Hooks::cli()).await;
    device.restore_events(inbox.into_feed());
    result
}

/// Waits for an incoming call (in `group`, if given) on `inbox`, answers it and runs it.
pub async fn answer_on(
    device: &Device,
    inbox: &mut Inbox,
    group: Option<&str>,
    options: &CallOptions,
    hooks: Hooks,
) -> Result<CallReport, CallError> {
    let ice = ice_servers(device, inbox, options).await?;
    let only: Option<GroupId> = match group {
        Some(name) => {
            let name = name.to_owned();
            Some(
                device
                    .session()
                    .call(move |c| c.resolve(&name))
                    .await
                    .map_err(DeviceError::from)?
                    .map_err(DeviceError::from)?,
            )
        }
        None => None,
    };
    let me = device.device_id().ok_or(DeviceError::NotRegistered)?;
    let mut calls = Calls::new(me);
    let deadline = tokio::time::Instant::now() + options.ring_timeout;
    let (call_id, group, from) = loop {
        let event = tokio::time::timeout_at(deadline, inbox.next())
            .await
            .map_err(|_| CallError::NoIncomingCall(options.ring_timeout.as_secs()))?
            .ok_or(CallError::Stopped)?;
        let SessionEvent::Core(Event::Content(received)) = event else {
            continue;
        };
        if !matches!(received.content, Content::Call(_)) {
            continue;
        }
        if only.is_some_and(|g| g != received.group) {
            continue;
        }
        let members = members(device, received.group).await?;
        let actions = calls.handle(session::now_ms(), &received, &members);
        let mut incoming = None;
        for action in actions {
            match action {
                CallAction::Incoming {
                    call_id,
                    group,
                    from,
                    ..
                } => incoming = Some((call_id, group, from)),
                CallAction::Send { group, message } => send(device, group, message).await?,
                _ => {}
            }
        }
        if let Some(found) = incoming {
            break found;
        }
    };
    answer_with(
        device, inbox, ice, calls, call_id, group, &from.name, options, hooks,
    )
    .await
}

/// Answers call `call_id` of `group` from `from`, which `calls` has ringing (the daemon
/// rings first and answers when a client asks), and runs it.
#[allow(clippy::too_many_arguments)]
pub async fn answer_ringing(
    device: &Device,
    inbox: &mut Inbox,
    calls: Calls,
    call_id: CallId,
    group: GroupId,
    from: &str,
    options: &CallOptions,
    hooks: Hooks,
) -> Result<CallReport, CallError> {
    let ice = ice_servers(device, inbox, options).await?;
    answer_with(
        device, inbox, ice, calls, call_id, group, from, options, hooks,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn answer_with(
    device: &Device,
    inbox: &mut Inbox,
    ice: Vec<IceServer>,
    calls: Calls,
    call_id: CallId,
    group: GroupId,
    from: &str,
    options: &CallOptions,
    hooks: Hooks,
) -> Result<CallReport, CallError> {
    let state = group_state(device, group, call_id).await?;
    let mut driver = Driver::new(options, ice, group, call_id, calls, state, inbox, hooks)?;
    driver.say(format!("incoming call from {from}: answering"));
    let actions = driver.calls.answer(call_id)?;
    driver.answered = true;
    driver.active_since = Some(Instant::now());
    driver.run_actions(device, actions).await?;
    driver.run(device).await
}

async fn ice_servers(
    device: &Device,
    inbox: &mut Inbox,
    options: &CallOptions,
) -> Result<Vec<IceServer>, CallError> {
    let turn = turn_servers(device, inbox).await?;
    if options.relay_only && turn.is_none() {
        return Err(CallError::NoTurn);
    }
    Ok(turn.into_iter().collect())
}

struct GroupState {
    members: Vec<GroupMember>,
    my_leaf: u32,
    epoch: u64,
    key: EpochKey,
}

async fn members(device: &Device, group: GroupId) -> Result<Vec<GroupMember>, CallError> {
    Ok(device
        .session()
        .call(move |c| c.group_members(&group))
        .await
        .map_err(DeviceError::from)?)
}

async fn group_state(
    device: &Device,
    group: GroupId,
    call_id: CallId,
) -> Result<GroupState, CallError> {
    let (members, leaf, epoch, secret) = device
        .session()
        .call(move |c| {
            (
                c.group_members(&group),
                c.own_leaf_index(&group),
                c.epoch(&group),
                c.export_secret(&group, EXPORTER_LABEL, &call_id.0, 32),
            )
        })
        .await
        .map_err(DeviceError::from)?;
    let (Some(my_leaf), Some(epoch)) = (leaf, epoch) else {
        return Err(CallError::Group("not a member of this group".into()));
    };
    let secret = secret.map_err(DeviceError::from)?;
    let key = EpochKey::new(epoch, &secret).map_err(|e| CallError::Media(e.to_string()))?;
    Ok(GroupState {
        members,
        my_leaf,
        epoch,
        key,
    })
}

async fn send(device: &Device, group: GroupId, message: CallMessage) -> Result<(), CallError> {
    device
        .session()
        .call(move |c| c.send_content(session::now_ms(), group, Content::Call(message)))
        .await
        .map_err(DeviceError::from)?
        .map_err(DeviceError::from)?;
    Ok(())
}

struct Driver<'a> {
    call: Call,
    events: mpsc::Receiver<CallEvent>,
    calls: Calls,
    group: GroupId,
    call_id: CallId,
    epoch: u64,
    peers: HashMap<String, Peer>,
    took_part: Vec<String>,
    first_audio: Vec<(String, f64)>,
    ring_deadline: Option<Instant>,
    ring_timeout: Duration,
    active_since: Option<Instant>,
    answered: bool,
    duration: Option<Duration>,
    verbose: bool,
    used_turn: bool,
    record: Option<PathBuf>,
    rejections: Vec<String>,
    inbox: &'a mut Inbox,
    departed: Vec<PeerStats>,
    hooks: Hooks,
}

impl<'a> Driver<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        options: &CallOptions,
        ice: Vec<IceServer>,
        group: GroupId,
        call_id: CallId,
        calls: Calls,
        state: GroupState,
        inbox: &'a mut Inbox,
        hooks: Hooks,
    ) -> Result<Self, CallError> {
        let used_turn = !ice.is_empty();
        let config = CallConfig {
            bind_addrs: options.bind.clone(),
            ice_servers: ice,
            relay_only: options.relay_only,
            audio: options.audio.clone(),
            audio_out: options.audio_out.clone(),
            video: options.video.clone(),
            receive_only: true,
            record_dir: options.record.clone(),
            device_fallback: options.device_fallback,
            ..CallConfig::default()
        };
        let leaves: Vec<u32> = state.members.iter().map(|m| m.leaf).collect();
        let (call, events) = Call::new(config, state.my_leaf, state.key, leaves)
            .map_err(|e| CallError::Media(e.to_string()))?;
        Ok(Driver {
            call,
            events,
            calls,
            group,
            call_id,
            epoch: state.epoch,
            peers: HashMap::new(),
            took_part: Vec::new(),
            first_audio: Vec::new(),
            ring_deadline: None,
            ring_timeout: options.ring_timeout,
            active_since: None,
            answered: false,
            duration: options.duration,
            verbose: options.verbose,
            used_turn,
            record: options.record.clone(),
            rejections: Vec::new(),
            inbox,
            departed: Vec::new(),
            hooks,
        })
    }

    fn say(&self, line: String) {
        if self.verbose {
            println!("{}", crate::views::escape(&line));
        }
    }

    async fn run(mut self, device: &Device) -> Result<CallReport, CallError> {
        let result = self.event_loop(device).await;
        // Leave cleanly: tell the others, close the sessions, finish the recordings.
        for action in self.calls.hang_up(self.call_id) {
            if let CallAction::Send { group, message } = action {
                let _ = send(device, group, message).await;
            }
        }
        // `end` hangs up every session (after reading their statistics).
        let mut stats = self.call.end().await;
        if !self.departed.is_empty() {
            stats.peers.append(&mut self.departed);
            stats.peers.sort_by(|a, b| a.peer.cmp(&b.peer));
            if let Some(dir) = &self.record {
                let _ = cove_media::call::write_stats(dir, &stats);
            }
        }
        result?;
        Ok(CallReport {
            call_id: self.call_id.to_hex(),
            peers: self.took_part,
            first_audio_ms: self.first_audio,
            stats,
            used_turn: self.used_turn,
        })
    }

    async fn event_loop(&mut self, device: &Device) -> Result<(), CallError> {
        // Created once, so a Ctrl-C that arrives while an event is being handled is not lost.
        let ctrl_c = self.hooks.ctrl_c;
        let interrupt = async move {
            if ctrl_c {
                tokio::signal::ctrl_c().await
            } else {
                std::future::pending().await
            }
        };
        tokio::pin!(interrupt);
        let stop = self.hooks.stop.clone();
        let stopped = async move {
            match stop {
                Some(stop) => stop.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopped);
        loop {
            let now = Instant::now();
            let until_ring = self
                .ring_deadline
                .filter(|_| !self.answered)
                .map(|d| d.saturating_duration_since(now));
            let until_end = self
                .active_since
                .zip(self.duration)
                .map(|(since, d)| (since + d).saturating_duration_since(now));
            let wake = until_ring
                .into_iter()
                .chain(until_end)
                .min()
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => self.on_media(device, event).await?,
                    None => return Err(CallError::Media("media engine stopped".into())),
                },
                () = &mut stopped => {
                    self.say("hanging up".into());
                    return Ok(());
                }
                event = self.inbox.next() => match event {
                    Some(event) => {
                        if self.on_session(device, event).await? {
                            return Ok(());
                        }
                    }
                    None => return Err(CallError::Stopped),
                },
                // Ctrl-C (SIGINT) hangs up cleanly: the others are told, recordings and
                // statistics are finished, and the command exits with its report.
                interrupted = &mut interrupt => {
                    if interrupted.is_ok() {
                        self.say("hanging up".into());
                        return Ok(());
                    }
                }
                () = tokio::time::sleep(wake) => {
                    if until_ring.is_some_and(|d| d.is_zero()) {
                        return Err(CallError::NoAnswer(self.ring_timeout.as_secs()));
                    }
                    if until_end.is_some_and(|d| d.is_zero()) {
                        self.say("hanging up".into());
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn on_media(&mut self, device: &Device, event: CallEvent) -> Result<(), CallError> {
        match event {
            CallEvent::LocalSignal { peer, signal } => {
                let Some(p) = self.peers.get(&peer) else {
                    return Ok(());
                };
                if let Some(CallAction::Send { group, message }) =
                    self.calls.local_signal(self.call_id, p, signal)
                {
                    send(device, group, message).await?;
                }
            }
            CallEvent::Connected { peer } => {
                self.say(format!("connected to {peer}"));
                self.hooks.note(CallNote::Connected { peer: peer.clone() });
                if self.active_since.is_none() {
                    self.active_since = Some(Instant::now());
                }
            }
            CallEvent::FirstAudio { peer, since_dial } => {
                let ms = since_dial.as_secs_f64() * 1000.0;
                self.say(format!("first audio from {peer} after {ms:.0} ms"));
                self.first_audio.push((peer, ms));
            }
            CallEvent::FirstVideo { peer } => self.say(format!("first video from {peer}")),
            CallEvent::Control { .. } => {}
            CallEvent::Refused { peer, reason } => {
                return Err(CallError::Refused { peer, reason });
            }
            CallEvent::Failed { peer, reason } => {
                self.say(format!("connection with {peer} failed: {reason}"));
            }
            CallEvent::Closed { peer } => self.say(format!("{peer} closed")),
            CallEvent::DeviceFallback {
                direction,
                device,
                reason,
            } => {
                let instead = if direction == "input" {
                    "sending silence"
                } else {
                    "not playing the call"
                };
                let warning =
                    format!("audio {direction} {device} failed to open ({reason}): {instead}");
                self.say(format!("warning: {warning}"));
                self.hooks.note(CallNote::DeviceFallback { warning });
            }
        }
        Ok(())
    }

    /// Returns true when the call is over.
    async fn on_session(
        &mut self,
        device: &Device,
        event: SessionEvent,
    ) -> Result<bool, CallError> {
        match event {
            SessionEvent::Core(Event::Content(received))
                if received.group == self.group && matches!(received.content, Content::Call(_)) =>
            {
                self.rekey(device).await?;
                let members = members(device, self.group).await?;
                let actions = self.calls.handle(session::now_ms(), &received, &members);
                self.run_actions(device, actions).await
            }
            SessionEvent::Core(Event::RemovedFromGroup { group }) if group == self.group => {
                self.say("removed from the group: leaving the call".into());
                Ok(true)
            }
            SessionEvent::Core(Event::Content(_) | Event::Warning(_) | Event::Reply { .. })
            | SessionEvent::Connected
            | SessionEvent::Disconnected(_) => Ok(false),
            SessionEvent::Core(_) => {
                // A commit (ours, e.g. a removal, completes as OpDone; others' show as
                // MembersChanged or not at all, e.g. key updates) may have moved the epoch.
                self.rekey(device).await?;
                Ok(false)
            }
        }
    }

    /// Installs the key of the group's current epoch if it moved; drops removed members.
    async fn rekey(&mut self, device: &Device) -> Result<(), CallError> {
        let state = group_state(device, self.group, self.call_id).await?;
        if state.epoch == self.epoch {
            return Ok(());
        }
        let removed: Vec<Peer> = self
            .peers
            .values()
            .filter(|p| !state.members.iter().any(|m| m.device == p.device))
            .cloned()
            .collect();
        for peer in removed {
            self.call.remove_member(peer.leaf);
            let actions = self.calls.member_removed(self.group, peer.device);
            self.run_actions(device, actions).await?;
        }
        let leaves: Vec<u32> = state.members.iter().map(|m| m.leaf).collect();
        self.call
            .rekey(state.key, leaves)
            .map_err(|e| CallError::Media(e.to_string()))?;
        self.say(format!("rekeyed to epoch {}", state.epoch));
        self.epoch = state.epoch;
        Ok(())
    }

    /// Carries out the state machine's actions; true when the call ended.
    async fn run_actions(
        &mut self,
        device: &Device,
        actions: Vec<CallAction>,
    ) -> Result<bool, CallError> {
        let mut ended = false;
        for action in actions {
            match action {
                CallAction::Send { group, message } => send(device, group, message).await?,
                CallAction::Dial { peer, .. } => {
                    self.peers.insert(peer.name.clone(), peer.clone());
                    self.call
                        .dial(&peer.name, Some(peer.leaf))
                        .await
                        .map_err(|e| CallError::Media(e.to_string()))?;
                }
                CallAction::Apply { peer, signal, .. } => {
                    self.peers.insert(peer.name.clone(), peer.clone());
                    if !self.took_part.contains(&peer.name) {
                        self.took_part.push(peer.name.clone());
                    }
                    if signal.is_media() {
                        // A refused description is reported as CallEvent::Refused.
                        if let Err(e) = self
                            .call
                            .apply_signal(&peer.name, Some(peer.leaf), signal)
                            .await
                        {
                            self.say(format!("signal from {} not applied: {e}", peer.name));
                        }
                    }
                }
                CallAction::Answered { peer, .. } => {
                    self.answered = true;
                    self.hooks.note(CallNote::Answered {
                        peer: peer.name.clone(),
                    });
                    self.say(format!("{} answered", peer.name));
                }
                CallAction::PeerLeft { peer, reason, .. } => {
                    let what = match reason {
                        CallSignal::Busy => "busy",
                        CallSignal::Decline => "declined",
                        _ => "hung up",
                    };
                    self.say(format!("{} {what}", peer.name));
                    self.hooks.note(CallNote::PeerLeft {
                        peer: peer.name.clone(),
                        reason: what,
                    });
                    if !matches!(reason, CallSignal::HangUp) {
                        self.rejections.push(format!("{what} by {}", peer.name));
                    }
                    // Keep its statistics: a closed session leaves the call's list.
                    let snapshot = self.call.stats().await;
                    self.departed
                        .extend(snapshot.peers.into_iter().filter(|p| p.peer == peer.name));
                    self.call.hang_up(&peer.name).await;
                    self.peers.remove(&peer.name);
                }
                CallAction::Ended { .. } => ended = true,
                CallAction::Incoming { .. } => {}
            }
        }
        if ended && !self.answered && !self.rejections.is_empty() {
            return Err(CallError::Rejected(self.rejections.join(", ")));
        }
        Ok(ended)
    }
}
