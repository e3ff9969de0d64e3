//! Calls through the daemon. An incoming offer rings every subscribed client
//! (`incoming_call`, `call_state: ringing`); any client can `answer` or `decline` it. `call`
//! places one. A running call (one at a time) is driven by [`crate::call`] in its own task,
//! reading the session events the pump forwards to it; its progress goes out as
//! `call_state` notifications (`connecting`, `connected`, `ended` with a reason).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use cove_core::call::{CallAction, CallId, CallMessage, CallSignal, Calls, MAX_SIGNAL_AGE_MS};
use cove_core::{Content, Event};
use cove_media::source::{AudioInput, AudioOutput};
use cove_store::{Kv as _, Namespace};
use cove_wire::GroupId;

use super::events::group_name;
use super::rpc::{RpcError, opt_str_param, str_param};
use super::server::Daemon;
use crate::call::{self, CallError, CallNote, CallOptions, Hooks, Inbox};
use crate::session::{self, SessionEvent};

/// How long an unanswered incoming call stays listed as ringing (the caller gives up after
/// its ring timeout, 30 s by default, and says so; this only bounds a caller that vanished).
const RING_EXPIRY: Duration = Duration::from_secs(120);

/// The daemon's calls.
#[derive(Default)]
pub struct CallManager {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The signalling state machine that rings (while no call runs).
    calls: Option<Calls>,
    ringing: Vec<Ringing>,
    active: Option<Active>,
}

struct Ringing {
    id: CallId,
    group: GroupId,
    group_name: String,
    from: String,
    video: bool,
    since: Instant,
}

struct Active {
    id: CallId,
    group: GroupId,
    outgoing: bool,
    /// The caller (incoming) or the group's name (outgoing), for the call's record.
    with: String,
    connected_at: Option<Instant>,
    state: &'static str,
    feed: mpsc::UnboundedSender<SessionEvent>,
    stop: Arc<Notify>,
}

impl CallManager {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it cannot leave the state half-changed in a way that matters
        // more than losing calls; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every session event: to the running call, or (call signalling) to the ringing state
    /// machine.
    pub(super) async fn on_event(&self, daemon: &Arc<Daemon>, event: &SessionEvent) {
        let busy_with = {
            let inner = self.lock();
            match &inner.active {
                Some(active) => {
                    let _ = active.feed.send(event.clone());
                    Some(active.id)
                }
                None => None,
            }
        };
        if let Some(active) = busy_with {
            self.busy(daemon, active, event).await;
            return;
        }
        let SessionEvent::Core(Event::Content(received)) = event else {
            return;
        };
        if !matches!(received.content, Content::Call(_)) {
            return;
        }
        let Some(me) = daemon.device.device_id() else {
            return;
        };
        let group = received.group;
        let Ok(members) = daemon.session.call(move |c| c.group_members(&group)).await else {
            return;
        };
        let actions = {
            let mut inner = self.lock();
            inner.calls.get_or_insert_with(|| Calls::new(me)).handle(
                session::now_ms(),
                received,
                &members,
            )
        };
        for action in actions {
            match action {
                CallAction::Incoming {
                    call_id,
                    group,
                    from,
                    video,
                } => {
                    let name = group_name(daemon, group).await;
                    self.lock().ringing.push(Ringing {
                        id: call_id,
                        group,
                        group_name: name.clone(),
                        from: from.name.clone(),
                        video,
                        since: Instant::now(),
                    });
                    daemon.notify(
                        "incoming_call",
                        json!({
                            "call": call_id.to_hex(), "group": group.to_hex(), "group_name": name,
                            "from": from.user.as_str(), "video": video,
                        }),
                    );
                    state(daemon, call_id, group, "ringing", None);
                }
                CallAction::Send { group, message } => {
                    send(daemon, group, message).await;
                }
                CallAction::Ended { call_id } | CallAction::PeerLeft { call_id, .. } => {
                    let gone = {
                        let mut inner = self.lock();
                        let pos = inner.ringing.iter().position(|r| r.id == call_id);
                        pos.map(|p| inner.ringing.remove(p))
                    };
                    if let Some(r) = gone {
                        let text = format!("missed call from {}", r.from);
                        record(daemon, r.group, r.id, &r.from, &text).await;
                        state(daemon, r.id, r.group, "ended", Some("missed"));
                    }
                }
                _ => {}
            }
        }
    }

    /// While call `active` runs: an offer of another call to this device is answered
    /// `Busy` (the caller hears "busy by USER"), and announced as a `call_state` `ended`
    /// with reason `busy`.
    async fn busy(&self, daemon: &Daemon, active: CallId, event: &SessionEvent) {
        let SessionEvent::Core(Event::Content(received)) = event else {
            return;
        };
        let Content::Call(msg) = &received.content else {
            return;
        };
        let me = daemon.device.device_id();
        let fresh = session::now_ms().saturating_sub(received.sent_at_ms) <= MAX_SIGNAL_AGE_MS;
        if msg.call_id == active
            || !matches!(msg.signal, CallSignal::Offer { .. })
            || msg.to.is_some_and(|d| Some(d) != me)
            || Some(received.from_device) == me
            || !fresh
        {
            return;
        }
        let busy = CallMessage {
            call_id: msg.call_id,
            to: Some(received.from_device),
            signal: CallSignal::Busy,
        };
        send(daemon, received.group, busy).await;
        state(daemon, msg.call_id, received.group, "ended", Some("busy"));
    }

    /// Ends the running call, if any (the daemon stops), and waits (up to `timeout`) until
    /// it has told the others.
    pub(super) async fn hang_up_all(&self, timeout: Duration) {
        let stop = self.lock().active.as_ref().map(|a| Arc::clone(&a.stop));
        let Some(stop) = stop else {
            return;
        };
        stop.notify_one();
        let end = Instant::now() + timeout;
        while self.lock().active.is_some() && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The ringing and running calls.
    pub(super) fn list(&self) -> Value {
        let mut inner = self.lock();
        inner.ringing.retain(|r| r.since.elapsed() < RING_EXPIRY);
        let mut out: Vec<Value> = inner
            .ringing
            .iter()
            .map(|r| {
                json!({
                    "call": r.id.to_hex(), "group": r.group.to_hex(), "group_name": r.group_name,
                    "from": r.from, "video": r.video, "state": "ringing", "direction": "in",
                })
            })
            .collect();
        if let Some(a) = &inner.active {
            out.push(json!({
                "call": a.id.to_hex(), "group": a.group.to_hex(), "state": a.state,
                "direction": if a.outgoing { "out" } else { "in" },
            }));
        }
        Value::Array(out)
    }

    /// `call {group, video?, audio_in?, audio_out?, duration?, ring_timeout?}`.
    pub(super) async fn call(
        &self,
        daemon: &Arc<Daemon>,
        params: &Value,
    ) -> Result<Value, RpcError> {
        let group_param = str_param(params, "group")?.to_owned();
        let ring = params["ring_timeout"].as_u64().unwrap_or(30);
        let options = options(params, ring)?;
        let group = {
            let name = group_param.clone();
            daemon
                .session
                .call(move |c| c.resolve(&name))
                .await
                .map_err(|e| super::methods::device_error(e.into()))?
                .map_err(|e| super::methods::device_error(e.into()))?
        };
        let id = CallId(rand::random());
        let with = group_name(daemon, group).await;
        let (_feed, inbox) = self.start(id, group, true, with)?;
        state(daemon, id, group, "ringing", None);
        let daemon = Arc::clone(daemon);
        tokio::spawn(async move {
            let mut inbox = inbox;
            let hooks = daemon.calls.hooks(&daemon, id, group);
            let result = {
                let device = &daemon.device;
                call::place_on(device, &mut inbox, &group_param, id, &options, hooks).await
            };
            daemon
                .calls
                .finished(&daemon, id, group, result.map(|_| ()))
                .await;
        });
        Ok(json!({ "call": id.to_hex() }))
    }

    /// `answer {call?, duration?, audio_in?, audio_out?}`: the ringing call (the given one, or
    /// the newest).
    pub(super) async fn answer(
        &self,
        daemon: &Arc<Daemon>,
        params: &Value,
    ) -> Result<Value, RpcError> {
        let options = options(params, 30)?;
        let wanted = opt_str_param(params, "call")?.map(str::to_ascii_lowercase);
        let (ringing, calls) = {
            let mut inner = self.lock();
            if inner.active.is_some() {
                return Err(RpcError::cove("Busy", "a call is already running"));
            }
            let pos = find_ringing(&inner.ringing, wanted.as_deref())?;
            let ringing = inner.ringing.remove(pos);
            let calls = inner.calls.take();
            (ringing, calls)
        };
        let Some(calls) = calls else {
            return Err(RpcError::cove("NoSuchCall", "no call is ringing"));
        };
        let (id, group, from) = (ringing.id, ringing.group, ringing.from);
        let (_feed, inbox) = self.start(id, group, false, from.clone())?;
        state(daemon, id, group, "connecting", None);
        let daemon = Arc::clone(daemon);
        tokio::spawn(async move {
            let mut inbox = inbox;
            let hooks = daemon.calls.hooks(&daemon, id, group);
            let result = {
                let device = &daemon.device;
                call::answer_ringing(device, &mut inbox, calls, id, group, &from, &options, hooks)
                    .await
            };
            daemon
                .calls
                .finished(&daemon, id, group, result.map(|_| ()))
                .await;
        });
        Ok(json!({ "call": id.to_hex() }))
    }

    /// `decline {call?}`: tells the caller, stops ringing everywhere.
    pub(super) async fn decline(
        &self,
        daemon: &Arc<Daemon>,
        params: &Value,
    ) -> Result<Value, RpcError> {
        let wanted = opt_str_param(params, "call")?.map(str::to_ascii_lowercase);
        let (ringing, actions) = {
            let mut inner = self.lock();
            let pos = find_ringing(&inner.ringing, wanted.as_deref())?;
            let ringing = inner.ringing.remove(pos);
            let actions = inner
                .calls
                .as_mut()
                .map(|c| c.decline(ringing.id))
                .unwrap_or_default();
            (ringing, actions)
        };
        for action in actions {
            if let CallAction::Send { group, message } = action {
                send(daemon, group, message).await;
            }
        }
        let text = format!("declined call from {}", ringing.from);
        record(daemon, ringing.group, ringing.id, &ringing.from, &text).await;
        state(daemon, ringing.id, ringing.group, "ended", Some("declined"));
        Ok(json!({}))
    }

    /// `hangup {call?}`: ends the running call (or declines a ringing one).
    pub(super) async fn hangup(
        &self,
        daemon: &Arc<Daemon>,
        params: &Value,
    ) -> Result<Value, RpcError> {
        let wanted = opt_str_param(params, "call")?.map(str::to_ascii_lowercase);
        let stop = {
            let inner = self.lock();
            inner
                .active
                .as_ref()
                .filter(|a| {
                    wanted
                        .as_deref()
                        .is_none_or(|w| a.id.to_hex().starts_with(w))
                })
                .map(|a| Arc::clone(&a.stop))
        };
        match stop {
            Some(stop) => {
                stop.notify_one();
                Ok(json!({}))
            }
            None => self.decline(daemon, params).await,
        }
    }

    /// Records a starting call; refuses a second one.
    fn start(
        &self,
        id: CallId,
        group: GroupId,
        outgoing: bool,
        with: String,
    ) -> Result<(mpsc::UnboundedSender<SessionEvent>, Inbox), RpcError> {
        let mut inner = self.lock();
        if inner.active.is_some() {
            return Err(RpcError::cove("Busy", "a call is already running"));
        }
        let (feed, rx) = mpsc::unbounded_channel();
        inner.active = Some(Active {
            id,
            group,
            outgoing,
            with,
            connected_at: None,
            state: if outgoing { "ringing" } else { "connecting" },
            feed: feed.clone(),
            stop: Arc::new(Notify::new()),
        });
        Ok((feed, Inbox::new(rx)))
    }

    fn hooks(&self, daemon: &Arc<Daemon>, id: CallId, group: GroupId) -> Hooks {
        let stop = self.lock().active.as_ref().map(|a| Arc::clone(&a.stop));
        let weak = Arc::downgrade(daemon);
        Hooks {
            observer: Some(Arc::new(move |note| {
                let Some(daemon) = weak.upgrade() else {
                    return;
                };
                let (new_state, reason) = match note {
                    CallNote::Answered { .. } => ("connecting", None),
                    CallNote::Connected { .. } => ("connected", None),
                    CallNote::DeviceFallback { warning } => {
                        daemon.notify(
                            "warning",
                            json!({ "text": warning, "call": id.to_hex(), "group": group.to_hex() }),
                        );
                        return;
                    }
                    CallNote::PeerLeft { peer, reason } => {
                        daemon.notify(
                            "call_state",
                            json!({
                                "call": id.to_hex(), "group": group.to_hex(), "state": "peer_left",
                                "peer": peer, "reason": reason,
                            }),
                        );
                        return;
                    }
                };
                let changed = {
                    let mut inner = daemon.calls.lock();
                    match inner.active.as_mut() {
                        Some(a) if a.id == id && a.state != new_state => {
                            a.state = new_state;
                            if new_state == "connected" {
                                a.connected_at.get_or_insert_with(Instant::now);
                            }
                            true
                        }
                        _ => false,
                    }
                };
                if changed {
                    state(&daemon, id, group, new_state, reason);
                }
            })),
            stop,
            ctrl_c: false,
        }
    }

    async fn finished(
        &self,
        daemon: &Daemon,
        id: CallId,
        group: GroupId,
        result: Result<(), CallError>,
    ) {
        let ended = {
            let mut inner = self.lock();
            match inner.active.take() {
                Some(a) if a.id == id => Some(a),
                other => {
                    inner.active = other;
                    None
                }
            }
        };
        let reason = match &result {
            Ok(()) => "hung up".to_owned(),
            Err(CallError::NoAnswer(_)) => "no answer".to_owned(),
            Err(CallError::Rejected(why)) => why.clone(),
            Err(e) => e.to_string(),
        };
        // The record first: a client told the call ended finds it in the history.
        if let Some(a) = ended {
            self.record_ended(daemon, group, id, a, &reason).await;
        }
        state(daemon, id, group, "ended", Some(&reason));
    }

    async fn record_ended(
        &self,
        daemon: &Daemon,
        group: GroupId,
        id: CallId,
        a: Active,
        reason: &str,
    ) {
        let text = match (a.connected_at, a.outgoing) {
            (Some(at), _) => format!("call with {}, {}", a.with, duration(at.elapsed())),
            (None, true) => format!("call to {}: {reason}", a.with),
            (None, false) => format!("call from {} did not connect: {reason}", a.with),
        };
        let from = if a.outgoing {
            daemon
                .session
                .call(|c| c.user().to_string())
                .await
                .unwrap_or_default()
        } else {
            a.with.clone()
        };
        record(daemon, group, id, &from, &text).await;
    }
}

/// `3 min`, `42 s`.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{} min", (s + 30) / 60)
    } else {
        format!("{s} s")
    }
}

/// The key prefix of a group's call records in the store's `Daemon` namespace.
pub(super) fn record_prefix(group: &GroupId) -> String {
    format!("call/{}/", group.to_hex())
}

/// Keeps a call record in the group's history (the store's `Daemon` namespace) and
/// announces it as a `message` of kind `call`.
async fn record(daemon: &Daemon, group: GroupId, id: CallId, from: &str, text: &str) {
    let now = session::now_ms();
    let key = format!("{}{now:020}/{}", record_prefix(&group), id.to_hex());
    let value = json!({ "call": id.to_hex(), "from": from, "text": text, "sent_at_ms": now });
    let bytes = value.to_string().into_bytes();
    let _ = daemon
        .session
        .call(move |c| c.store().kv_put(Namespace::Daemon, key.as_bytes(), &bytes))
        .await;
    let name = group_name(daemon, group).await;
    daemon.notify("message", call_message(&value, &group, &name));
}

/// A call record as a message object (kind `call`).
pub(super) fn call_message(record: &Value, group: &GroupId, group_name: &str) -> Value {
    json!({
        "id": record["call"], "group": group.to_hex(), "group_name": group_name,
        "sender": record["from"], "sent_at_ms": record["sent_at_ms"], "kind": "call",
        "text": record["text"], "pending": false,
    })
}

fn find_ringing(ringing: &[Ringing], wanted: Option<&str>) -> Result<usize, RpcError> {
    let found = match wanted {
        Some(w) => ringing.iter().rposition(|r| r.id.to_hex().starts_with(w)),
        None => ringing
            .iter()
            .rposition(|r| r.since.elapsed() < RING_EXPIRY),
    };
    found.ok_or_else(|| RpcError::cove("NoSuchCall", "no such call is ringing"))
}

fn state(daemon: &Daemon, id: CallId, group: GroupId, state: &str, reason: Option<&str>) {
    let mut params = json!({ "call": id.to_hex(), "group": group.to_hex(), "state": state });
    if let Some(reason) = reason {
        params["reason"] = reason.into();
    }
    daemon.notify("call_state", params);
}

async fn send(daemon: &Daemon, group: GroupId, message: cove_core::call::CallMessage) {
    let _ = daemon
        .session
        .call(move |c| c.send_content(session::now_ms(), group, Content::Call(message)))
        .await;
}

/// The media options of `call` and `answer`: the default microphone and speaker when this
/// machine has them, else a 440 Hz tone and no playback.
fn options(params: &Value, ring: u64) -> Result<CallOptions, RpcError> {
    // The devices picked here (no `audio_in`/`audio_out` given) may be listed but fail to
    // open (a busy or broken sound server): the call then goes on without them, with a
    // `warning`, rather than ending.
    let device_fallback = opt_str_param(params, "audio_in")?.is_none()
        || opt_str_param(params, "audio_out")?.is_none();
    let audio_in = match opt_str_param(params, "audio_in")? {
        Some(a) => parse_checked::<AudioInput>(a, "audio_in", AudioInput::check)?,
        None => parse_checked::<AudioInput>("default", "audio_in", AudioInput::check)
            .unwrap_or(AudioInput::Tone(440.0)),
    };
    let audio_out = match opt_str_param(params, "audio_out")? {
        Some(a) => parse_checked::<AudioOutput>(a, "audio_out", AudioOutput::check)?,
        None => parse_checked::<AudioOutput>("default", "audio_out", AudioOutput::check)
            .unwrap_or(AudioOutput::None),
    };
    let video = match params.get("video") {
        Some(Value::Bool(true)) => Some(
            "pattern"
                .parse()
                .map_err(|e| RpcError::params(format!("invalid params: video: {e}")))?,
        ),
        _ => None,
    };
    let duration = params["duration"].as_u64().filter(|d| *d > 0);
    Ok(CallOptions {
        audio: Some(audio_in),
        audio_out: Some(audio_out),
        video,
        record: opt_str_param(params, "record")?.map(Into::into),
        duration: duration.map(Duration::from_secs),
        relay_only: params["relay_only"].as_bool().unwrap_or(false),
        ring_timeout: Duration::from_secs(ring.max(1)),
        bind: match opt_str_param(params, "bind")? {
            Some(b) => b.split(',').map(str::to_owned).collect(),
            None => vec!["127.0.0.1:0".into()],
        },
        verbose: false,
        device_fallback,
    })
}

fn parse_checked<T: std::str::FromStr>(
    text: &str,
    name: &str,
    check: impl Fn(&T) -> Result<(), cove_media::MediaIoError>,
) -> Result<T, RpcError>
where
    T::Err: std::fmt::Display,
{
    let value: T = text
        .parse()
        .map_err(|e| RpcError::params(format!("invalid params: {name} {text}: {e}")))?;
    check(&value).map_err(|e| RpcError::cove("AudioDevice", &format!("{name} {text}: {e}")))?;
    Ok(value)
}
