//! Linking any machine by a short code (issue 9): the shell around [`cove_core::link`].
//!
//! The existing device (the **host**) opens a rendezvous slot on its own session connection
//! (`OpenLink`, sent with `Client::send_request`; the relay's pushes come back as
//! [`Event::Link`]) and shows the code. The new machine (the **joiner**) has no account:
//! it joins the slot on a raw, unauthenticated connection ([`RawConnection`]). Both run
//! SPAKE2 and the key confirmation over the slot, then the link messages
//! ([`LinkMessage`]) over the sealed channel: the host offers the user, authorises the
//! joiner's key (and waits until the relay has the device-list entry), the joiner registers
//! and uploads its KeyPackages, the host adds it to every group and hands over the history,
//! the joiner stores it and waits until it is in those groups.
//!
//! A failure on either side ends with a [`LinkFailure`] on that side; once the channel is
//! up, the failing side tells the other (`Failed`). A failed join leaves no home behind.

use std::sync::Arc;
use std::time::Duration;

use cove_core::link::{
    Channel, Handshake, LINK_VERSION, LinkCode, LinkError, LinkMessage, MAX_HISTORY_CHUNKS, Role,
};
use cove_core::{Client, Event, LinkPush};
use cove_wire::{
    BoundedVec, DeviceId, ErrorCode, ErrorReply, GroupId, LinkCloseReason, Payload, Reply, Request,
    RequestId, ServerFrame, UserName,
};
use tokio::time::Instant;

use super::error::DeviceError;
use super::handle::{Device, seed};
use super::open::remove_home;
use crate::config::{ConfigError, Home};
use crate::raw::{RawConnection, RawError};
use crate::session::{self, SessionEvent};
use crate::transport::{self, TlsTrust};

/// How long either side waits for the other at most (a code lives 5 minutes; the rest is
/// registration, group commits and the history).
const LINK_DEADLINE: Duration = Duration::from_secs(6 * 60);

/// Why linking by a code failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkFailure {
    /// The handshake or a channel message failed (e.g. the codes differ).
    #[error(transparent)]
    Protocol(#[from] LinkError),
    /// The relay refused the rendezvous step (no such code, taken, expired, ...).
    #[error("{}", .0.message)]
    Relay(ErrorReply),
    /// The code expired before linking finished.
    #[error("the code expired (codes last 5 minutes): start again")]
    Expired,
    /// The other device went away before linking finished.
    #[error("the other device disconnected before linking finished")]
    PeerLeft,
    /// The other device stopped and said why.
    #[error("the other device stopped linking: {0}")]
    PeerFailed(String),
    /// The other device sent a message out of turn.
    #[error("the other device sent an unexpected link message ({0})")]
    Unexpected(&'static str),
    /// This device's connection to the relay was lost.
    #[error("the connection to the relay was lost: {0}")]
    ConnectionLost(String),
    /// Nothing came in time.
    #[error("timed out waiting for the other device")]
    Timeout,
    /// The relay did not accept the new device's entry in the signed device list.
    #[error("the relay did not take the new device's entry in the signed device list")]
    ListNotPublished,
}

impl LinkFailure {
    /// The relay's error code, for a refused rendezvous step.
    pub fn relay_code(&self) -> Option<ErrorCode> {
        match self {
            LinkFailure::Relay(e) => Some(e.code),
            _ => None,
        }
    }
}

/// What linking reports while it runs (for progress lines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkProgress {
    /// Host: the code to type on the new machine.
    Code(String),
    /// Host: a machine joined the code; checking it typed the right one.
    PeerJoined,
    /// Both: the codes match; the channel is up.
    Confirmed,
    /// Host: the new device's key is authorised and in the signed device list.
    Authorized,
    /// Both: the new device is registered with the relay.
    Registered(DeviceId),
    /// Host: the new device was added to this group.
    AddedTo(String),
    /// Host: the new device could not be added to this group.
    NotAddedTo(String, String),
    /// Host: this many messages of history sent; joiner: stored.
    History(usize),
    /// Both: done.
    Done,
}

/// Sends link messages to the peer and receives its messages, one side's transport.
trait Pipe {
    async fn send_bytes(&mut self, bytes: Vec<u8>) -> Result<(), DeviceError>;
    /// The next push of the slot, or an error when nothing comes in time.
    async fn next_push(&mut self, deadline: Instant) -> Result<LinkPush, DeviceError>;

    /// The next message from the peer (the slot closing or a non-message push is an error).
    async fn next_bytes(&mut self, deadline: Instant) -> Result<Vec<u8>, DeviceError> {
        match self.next_push(deadline).await? {
            LinkPush::Message(bytes) => Ok(bytes),
            LinkPush::Closed(LinkCloseReason::Expired) => Err(LinkFailure::Expired.into()),
            LinkPush::Closed(LinkCloseReason::PeerLeft) => Err(LinkFailure::PeerLeft.into()),
            LinkPush::PeerJoined => Err(LinkFailure::Unexpected("a second join").into()),
        }
    }
}

/// The handshake over `pipe`: SPAKE2, confirmations (both sent before either is checked,
/// so a wrong code fails on both sides), then the channel.
async fn handshake(
    pipe: &mut impl Pipe,
    role: Role,
    code: &LinkCode,
    deadline: Instant,
) -> Result<Channel, DeviceError> {
    let (state, own) = Handshake::start(role, code, &mut rand::rngs::OsRng);
    pipe.send_bytes(own).await?;
    let peer = pipe.next_bytes(deadline).await?;
    let confirming = state.finish(&peer).map_err(LinkFailure::from)?;
    pipe.send_bytes(confirming.confirmation()).await?;
    let peer_confirm = pipe.next_bytes(deadline).await?;
    Ok(confirming
        .verify(&peer_confirm)
        .map_err(LinkFailure::from)?)
}

/// A confirmed channel over a pipe.
struct Linked<'p, P: Pipe> {
    pipe: &'p mut P,
    channel: Channel,
    deadline: Instant,
}

impl<P: Pipe> Linked<'_, P> {
    async fn send(&mut self, message: &LinkMessage) -> Result<(), DeviceError> {
        let sealed = self
            .channel
            .seal(&message.encode().map_err(LinkFailure::from)?)
            .map_err(LinkFailure::from)?;
        self.pipe.send_bytes(sealed).await
    }

    async fn recv(&mut self) -> Result<LinkMessage, DeviceError> {
        let bytes = self.pipe.next_bytes(self.deadline).await?;
        let plain = self.channel.open(&bytes).map_err(LinkFailure::from)?;
        match LinkMessage::decode(&plain).map_err(LinkFailure::from)? {
            LinkMessage::Failed { reason } => Err(LinkFailure::PeerFailed(reason).into()),
            message => Ok(message),
        }
    }

    /// Tells the peer why this side stops (best effort), and returns the error.
    async fn fail(&mut self, e: DeviceError) -> DeviceError {
        let _ = self.send(&LinkMessage::failed(&e.to_string())).await;
        e
    }
}

// ---------------------------------------------------------------------------------------
// The host: an existing device, over its own session
// ---------------------------------------------------------------------------------------

/// The host's pipe: requests through the session, pushes from its events.
struct HostPipe<'d> {
    device: &'d mut Device,
    /// LinkSend requests not answered yet.
    pending: Vec<RequestId>,
}

impl HostPipe<'_> {
    async fn request(&mut self, body: Request) -> Result<RequestId, DeviceError> {
        self.device
            .session
            .call(move |c| c.send_request(body))
            .await?
            .ok_or_else(|| LinkFailure::ConnectionLost("not connected".into()).into())
    }

    /// Handles one session event; returns a push if it is one.
    fn on_event(&mut self, event: SessionEvent) -> Result<Option<LinkPush>, DeviceError> {
        match event {
            SessionEvent::Core(Event::Link(push)) => Ok(Some(push)),
            SessionEvent::Core(Event::Reply { id, result }) if self.pending.contains(&id) => {
                self.pending.retain(|p| *p != id);
                match result {
                    Ok(_) => Ok(None),
                    Err(e) => Err(LinkFailure::Relay(e).into()),
                }
            }
            SessionEvent::Disconnected(reason) => Err(LinkFailure::ConnectionLost(reason).into()),
            _ => Ok(None),
        }
    }

    async fn next_event(&mut self, deadline: Instant) -> Result<SessionEvent, DeviceError> {
        match tokio::time::timeout_at(deadline, self.device.events.recv()).await {
            Err(_) => Err(LinkFailure::Timeout.into()),
            Ok(None) => Err(LinkFailure::ConnectionLost("the session stopped".into()).into()),
            Ok(Some(event)) => Ok(event),
        }
    }

    /// Opens the slot; returns its number.
    async fn open(&mut self, deadline: Instant) -> Result<u32, DeviceError> {
        let id = self.request(Request::OpenLink).await?;
        loop {
            match self.next_event(deadline).await? {
                SessionEvent::Core(Event::Reply { id: got, result }) if got == id => {
                    return match result {
                        Ok(Reply::LinkOpened { nameplate }) => Ok(nameplate),
                        Ok(_) => Err(LinkFailure::Unexpected("an answer to OpenLink").into()),
                        Err(e) => Err(LinkFailure::Relay(e).into()),
                    };
                }
                other => {
                    self.on_event(other)?;
                }
            }
        }
    }
}

impl Pipe for HostPipe<'_> {
    async fn send_bytes(&mut self, bytes: Vec<u8>) -> Result<(), DeviceError> {
        let id = self
            .request(Request::LinkSend {
                bytes: Payload(bytes),
            })
            .await?;
        self.pending.push(id);
        Ok(())
    }

    async fn next_push(&mut self, deadline: Instant) -> Result<LinkPush, DeviceError> {
        loop {
            let event = self.next_event(deadline).await?;
            if let Some(push) = self.on_event(event)? {
                return Ok(push);
            }
        }
    }
}

impl Device {
    /// On an existing device: links a new machine by a code. Opens a rendezvous slot,
    /// reports the code ([`LinkProgress::Code`]), waits for the new machine
    /// ([`Device::join_by_code`] there), authorises it, adds it to every group this device
    /// is in and hands over the message history. Returns the new device's id.
    ///
    /// Only a device that holds the identity key (the user's first device, or one logged in
    /// with the password) can link: on any other
    /// this fails at once, before a code is shown
    /// ([`OwnIdentityError::NotIdentityHolder`](cove_core::error::OwnIdentityError)),
    /// rather than letting the new machine fail to register.
    pub async fn link_by_code(
        &mut self,
        mut progress: impl FnMut(LinkProgress),
    ) -> Result<DeviceId, DeviceError> {
        if !self.session.call(|c| c.holds_user_identity()).await?? {
            let refused = cove_core::error::OwnIdentityError::NotIdentityHolder;
            return Err(cove_core::CommandError::from(refused).into());
        }
        self.settle().await?;
        let user = self.config.user.clone();
        let deadline = Instant::now() + LINK_DEADLINE;
        let mut pipe = HostPipe {
            device: self,
            pending: Vec::new(),
        };
        let nameplate = pipe.open(deadline).await?;
        let code =
            LinkCode::generate(nameplate, &mut rand::rngs::OsRng).map_err(LinkFailure::from)?;
        progress(LinkProgress::Code(code.to_string()));
        match pipe.next_push(deadline).await? {
            LinkPush::PeerJoined => {}
            LinkPush::Closed(LinkCloseReason::Expired) => return Err(LinkFailure::Expired.into()),
            LinkPush::Closed(LinkCloseReason::PeerLeft) => {
                return Err(LinkFailure::PeerLeft.into());
            }
            LinkPush::Message(_) => return Err(LinkFailure::Unexpected("a message").into()),
        }
        progress(LinkProgress::PeerJoined);
        let channel = handshake(&mut pipe, Role::Host, &code, deadline).await?;
        progress(LinkProgress::Confirmed);
        let mut link = Linked {
            pipe: &mut pipe,
            channel,
            deadline,
        };
        match host_steps(&mut link, user, &mut progress).await {
            Ok(device) => Ok(device),
            Err(e) => Err(link.fail(e).await),
        }
    }
}

async fn host_steps(
    link: &mut Linked<'_, HostPipe<'_>>,
    user: UserName,
    progress: &mut impl FnMut(LinkProgress),
) -> Result<DeviceId, DeviceError> {
    link.send(&LinkMessage::Offer {
        version: LINK_VERSION,
        user: user.clone(),
    })
    .await?;
    let key = match link.recv().await? {
        LinkMessage::Hello { device_key, .. } => device_key,
        _ => return Err(LinkFailure::Unexpected("expected Hello").into()),
    };
    let device = &mut *link.pipe.device;
    let (authorizer, authorization) = device
        .session
        .call(move |c| c.authorize_device(session::now_ms(), &key))
        .await??
        .ok_or(DeviceError::NotRegistered)?;
    // The relay is to have the list entry before the new device registers. The session
    // sends the publish after the call above; once a second call has run, the publish is in
    // flight and `settle` waits for its answer.
    device.session.call(|_| ()).await?;
    device.settle().await?;
    if !device.session.call(|c| c.own_list_published()).await?? {
        return Err(LinkFailure::ListNotPublished.into());
    }
    progress(LinkProgress::Authorized);
    link.send(&LinkMessage::Grant {
        authorizer,
        authorization,
    })
    .await?;
    let new_device = match link.recv().await? {
        LinkMessage::Ready { device } => device,
        _ => return Err(LinkFailure::Unexpected("expected Ready").into()),
    };
    progress(LinkProgress::Registered(new_device));
    // Add it to every group (adding our own user adds its missing devices).
    let device = &mut *link.pipe.device;
    let groups = device.session.call(|c| c.groups()).await?;
    let mut added: Vec<GroupId> = Vec::new();
    for group in groups.into_iter().filter(|g| g.active) {
        let (id, me) = (group.id.to_hex(), vec![user.clone()]);
        let result = device
            .session
            .op(device.timeout, move |c| {
                c.add_users(session::now_ms(), &id, &me)
            })
            .await;
        match result {
            Ok(Ok(())) => {
                added.push(group.id);
                progress(LinkProgress::AddedTo(group.name));
            }
            Ok(Err(e)) => progress(LinkProgress::NotAddedTo(group.name, e.to_string())),
            Err(e) => progress(LinkProgress::NotAddedTo(group.name, e.to_string())),
        }
    }
    let chunks = device
        .session
        .call(|c| c.export_history())
        .await?
        .map_err(DeviceError::Store)?;
    let mut sent = 0;
    for chunk in chunks.into_iter().take(MAX_HISTORY_CHUNKS) {
        sent += chunk.messages.len();
        link.send(&LinkMessage::History(chunk)).await?;
    }
    progress(LinkProgress::History(sent));
    link.send(&LinkMessage::Done {
        groups: BoundedVec(added),
    })
    .await?;
    match link.recv().await? {
        LinkMessage::Finished => {}
        _ => return Err(LinkFailure::Unexpected("expected Finished").into()),
    }
    progress(LinkProgress::Done);
    Ok(new_device)
}

// ---------------------------------------------------------------------------------------
// The joiner: a new machine, on a raw unauthenticated connection
// ---------------------------------------------------------------------------------------

struct JoinerPipe {
    raw: RawConnection,
}

impl Pipe for JoinerPipe {
    async fn send_bytes(&mut self, bytes: Vec<u8>) -> Result<(), DeviceError> {
        match self
            .raw
            .request(Request::LinkSend {
                bytes: Payload(bytes),
            })
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) => Err(LinkFailure::Relay(e).into()),
        }
    }

    async fn next_push(&mut self, deadline: Instant) -> Result<LinkPush, DeviceError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.raw.next_link_frame(left).await {
            Ok(ServerFrame::LinkPeerJoined) => Ok(LinkPush::PeerJoined),
            Ok(ServerFrame::LinkMessage { bytes }) => Ok(LinkPush::Message(bytes.into_vec())),
            Ok(ServerFrame::LinkClosed { reason }) => Ok(LinkPush::Closed(reason)),
            Ok(_) => Err(LinkFailure::Unexpected("a frame").into()),
            Err(RawError::Timeout) => Err(LinkFailure::Timeout.into()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Device {
    /// On a new machine: joins the user of the device showing `code` as a further device
    /// of theirs, in `home` (which must not be initialised), with relay `server` (and its
    /// CA certificate `ca`, if not a public one). Registers, waits until the device is in
    /// every group the host added it to, and stores the history the host sent. If it does
    /// not get there, it leaves no half-initialised home behind.
    pub async fn join_by_code(
        home: &Home,
        server: &str,
        ca: Option<&std::path::Path>,
        code: &str,
        mut progress: impl FnMut(LinkProgress),
    ) -> Result<Device, DeviceError> {
        let code: LinkCode = code.parse().map_err(LinkFailure::from)?;
        if home.is_initialised() {
            return Err(ConfigError::AlreadyInitialised(home.dir().to_owned()).into());
        }
        let url = transport::endpoint_url(server)?;
        let trust = match ca {
            Some(ca) => {
                transport::read_certs(ca)?;
                TlsTrust::CaFile(ca.to_owned())
            }
            None => TlsTrust::WebPki,
        };
        let tls = Arc::new(transport::client_config(&trust)?);
        let deadline = Instant::now() + LINK_DEADLINE;
        let (raw, _nonce) = RawConnection::open(&url, tls).await?;
        let mut pipe = JoinerPipe { raw };
        match pipe
            .raw
            .request(Request::JoinLink {
                nameplate: code.nameplate(),
            })
            .await?
        {
            Ok(_) => {}
            Err(e) => return Err(LinkFailure::Relay(e).into()),
        }
        let channel = handshake(&mut pipe, Role::Joiner, &code, deadline).await?;
        progress(LinkProgress::Confirmed);
        let mut link = Linked {
            pipe: &mut pipe,
            channel,
            deadline,
        };
        let user = match link.recv().await? {
            LinkMessage::Offer { user, .. } => user,
            _ => {
                let e = LinkFailure::Unexpected("expected Offer").into();
                return Err(link.fail(e).await);
            }
        };
        let lock = match home.lock() {
            Ok(lock) => lock,
            Err(e) => return Err(link.fail(e.into()).await),
        };
        // From here on the home is ours: on any failure, remove it again.
        let started = async {
            let mut client = Client::init(home.open_database()?, user.clone(), seed())?;
            link.send(&LinkMessage::Hello {
                version: LINK_VERSION,
                device_key: client.device_key(),
            })
            .await?;
            let (authorizer, authorization) = match link.recv().await? {
                LinkMessage::Grant {
                    authorizer,
                    authorization,
                } => (authorizer, authorization),
                _ => return Err(LinkFailure::Unexpected("expected Grant").into()),
            };
            client.set_device_authorization(authorizer, authorization)?;
            let config = home.initialise(server, user.clone(), ca)?;
            Self::start(home, config, client, Some(lock))
        }
        .await;
        let mut device = match started {
            Ok(device) => device,
            Err(e) => {
                remove_home(home);
                return Err(link.fail(e).await);
            }
        };
        match joiner_steps(&mut link, &mut device, &mut progress).await {
            Ok(()) => Ok(device),
            Err(e) => {
                let e = link.fail(e).await;
                device.close_now().await;
                remove_home(home);
                Err(e)
            }
        }
    }
}

async fn joiner_steps(
    link: &mut Linked<'_, JoinerPipe>,
    device: &mut Device,
    progress: &mut impl FnMut(LinkProgress),
) -> Result<(), DeviceError> {
    // Registered, KeyPackages uploaded.
    device.settle().await?;
    let id = device.device_id().ok_or(DeviceError::NotRegistered)?;
    progress(LinkProgress::Registered(id));
    link.send(&LinkMessage::Ready { device: id }).await?;
    let (mut stored, mut chunks) = (0, 0);
    let groups = loop {
        match link.recv().await? {
            LinkMessage::History(chunk) => {
                chunks += 1;
                if chunks > MAX_HISTORY_CHUNKS {
                    return Err(LinkFailure::Unexpected("too much history").into());
                }
                stored += device
                    .session
                    .call(move |c| c.import_history(chunk))
                    .await??;
            }
            LinkMessage::Done { groups } => break groups.0,
            _ => return Err(LinkFailure::Unexpected("expected History or Done").into()),
        }
    };
    progress(LinkProgress::History(stored));
    // Wait until the Welcomes of those groups are processed.
    loop {
        let held = device.session.call(|c| c.groups()).await?;
        if groups
            .iter()
            .all(|g| held.iter().any(|h| h.id == *g && h.active))
        {
            break;
        }
        match tokio::time::timeout_at(link.deadline, device.events.recv()).await {
            Err(_) => return Err(LinkFailure::Timeout.into()),
            Ok(None) => {
                return Err(LinkFailure::ConnectionLost("the session stopped".into()).into());
            }
            Ok(Some(_)) => {}
        }
    }
    device.settle().await?;
    link.send(&LinkMessage::Finished).await?;
    progress(LinkProgress::Done);
    Ok(())
}
