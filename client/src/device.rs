//! A device: the home's configuration and database, and the session that pumps the core.
//!
//! This is the API the CLI, the demo, the end-to-end tests and the benchmark use.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::sync::mpsc;

use cove_core::{ChatMessage, Client, CommandError, Event, GroupInfo, OpenError, QueryError};
use cove_store::{SqliteStore, Store, StoreError};
use cove_wire::{
    DeviceId, DeviceKey, ErrorReply, GroupId, Reply, Request, Seq, Signature, UserName,
};
use ed25519_dalek::{Signer as _, SigningKey};

use crate::config::{Config, ConfigError, Home, HomeLock};
use crate::raw::{self, RawConnection, RawError};
use crate::session::{self, Endpoint, LinkState, Session, SessionError, SessionEvent};
use crate::transport::{self, TransportError};
use crate::views::{GroupView, MessageView};

/// How long a command waits for the relay by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a command waits for a connection before it reports the relay unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Store config key prefix for the last printed log position per group (see
/// [`Device::next_message`]).
const PRINTED_KEY: &str = "cli.printed.";

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The home or configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS or URL setup failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The database could not be opened or used.
    #[error("client database: {0}")]
    Store(#[from] StoreError),
    /// The device state could not be loaded.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The command was refused locally (unknown group, bad argument, ...).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A query failed.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A direct relay exchange failed.
    #[error(transparent)]
    Raw(#[from] RawError),
    /// The device has no identity or is not registered yet.
    #[error("this device is not registered with the relay yet")]
    NotRegistered,
    /// The relay did not complete the command, or refused it.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// What became of a message handed to [`Device::send_text`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The relay stored it (it answered `Posted`).
    Delivered,
    /// The relay did not answer in time, so whether it stored the message is unknown. The
    /// message stays in this device's persisted outbox and goes out at the next connection
    /// (of any command), exactly once: if the relay did store it, its echo in the backlog
    /// completes it, and the relay answers a repeated post with the original entry.
    Queued,
}

/// What [`Device::next_incoming`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A message from another device.
    Message(MessageView),
    /// Something for the user to know, as one line of text.
    Notice(String),
    /// Something went wrong that the user must hear about (an entry skipped, a device not
    /// in the directory, ...): the core's [`Event::Warning`], as one line of text.
    Warning(String),
}

/// One device of a user, with its session to the relay.
pub struct Device {
    home: Home,
    config: Config,
    session: Session<SqliteStore>,
    events: mpsc::UnboundedReceiver<SessionEvent>,
    /// Messages collected for [`Device::next_message`] but not returned yet.
    unprinted: std::collections::VecDeque<Incoming>,
    /// Whether a connection was up since the last loss (to report losses once).
    was_connected: bool,
    /// Highest log position queued per group (in memory; the persistent mark is set by
    /// [`Device::mark_shown`] once the caller has shown a message).
    queued: std::collections::HashMap<GroupId, u64>,
    /// The message [`Device::next_message`] returned last, marked shown on the next call.
    returned: Option<MessageView>,
    device: Option<DeviceId>,
    timeout: Duration,
    online: bool,
    /// Held while connected: one process drives a device at a time.
    _lock: Option<HomeLock>,
}

impl Device {
    /// Initialises `home` (config, CA copy, database with a fresh device identity), connects
    /// and registers `user` with its first device, and waits until its KeyPackages are on the
    /// relay.
    pub async fn init(
        home: &Home,
        server: &str,
        user: UserName,
        ca: Option<&Path>,
    ) -> Result<Device, DeviceError> {
        if home.is_initialised() {
            return Err(ConfigError::AlreadyInitialised(home.dir().to_owned()).into());
        }
        // Check the URL and CA before creating anything.
        transport::endpoint_url(server)?;
        if let Some(ca) = ca {
            transport::read_certs(ca)?;
        }
        let lock = home.lock()?;
        let store = SqliteStore::open(home.database_path())?;
        let client = Client::init(store, user.clone(), seed())?;
        let config = home.initialise(server, user, ca)?;
        let mut device = Self::start(home, config, client, Some(lock))?;
        if let Err(e) = device.settle().await {
            // Not registered: leave no half-initialised home behind.
            device.close_now().await;
            let lock = home.dir().join(crate::config::LOCK_FILE);
            for file in [
                home.config_path(),
                home.ca_path(),
                home.database_path(),
                lock,
            ] {
                let _ = std::fs::remove_file(&file);
                for suffix in ["-wal", "-shm", "-journal"] {
                    let mut name = file.clone().into_os_string();
                    name.push(suffix);
                    let _ = std::fs::remove_file(name);
                }
            }
            let _ = std::fs::remove_dir(home.dir()); // only if empty
            return Err(e);
        }
        Ok(device)
    }

    /// Opens an initialised home and connects (in the background; commands wait for the
    /// connection).
    pub async fn open(home: &Home) -> Result<Device, DeviceError> {
        let config = home.load()?;
        let lock = home.lock()?;
        let client = Client::open(SqliteStore::open(home.database_path())?, seed())?;
        Self::start(home, config, client, Some(lock))
    }

    /// Opens an initialised home without connecting (for local queries).
    pub async fn open_offline(home: &Home) -> Result<Device, DeviceError> {
        let config = home.load()?;
        let client = Client::open(SqliteStore::open(home.database_path())?, seed())?;
        Self::start(home, config, client, None)
    }

    fn start(
        home: &Home,
        config: Config,
        client: Client<SqliteStore>,
        lock: Option<HomeLock>,
    ) -> Result<Device, DeviceError> {
        let online = lock.is_some();
        let device = client.device();
        let endpoint = if online {
            let tls = transport::client_config(&home.trust(&config))?;
            Some(Endpoint {
                server: config.server.clone(),
                tls: Arc::new(tls),
            })
        } else {
            None
        };
        let (session, events) = Session::start(client, endpoint);
        Ok(Device {
            home: home.clone(),
            config,
            session,
            events,
            unprinted: Default::default(),
            was_connected: false,
            queued: Default::default(),
            returned: None,
            device,
            timeout: DEFAULT_TIMEOUT,
            online,
            _lock: lock,
        })
    }

    /// Links a further device of `existing`'s user in `home`: a fresh device key,
    /// authorised by a signature of `existing` and registered with the relay
    /// (`RegisterDevice`), then connected like any device. Groups the user joins from now on
    /// include it (users are added with all their devices).
    pub async fn link(existing: &Device, home: &Home) -> Result<Device, DeviceError> {
        if home.is_initialised() {
            return Err(ConfigError::AlreadyInitialised(home.dir().to_owned()).into());
        }
        let authorizer = existing.device.ok_or(DeviceError::NotRegistered)?;
        let user = existing.config.user.clone();
        let lock = home.lock()?;
        let client = Client::init(
            SqliteStore::open(home.database_path())?,
            user.clone(),
            seed(),
        )?;
        let mut identity = client
            .store()
            .identity()?
            .ok_or(DeviceError::NotRegistered)?;
        let new_key: DeviceKey = identity.public_key;
        let authorization = existing
            .sign(cove_wire::sign::add_device_message(&user, &new_key))
            .await?;
        let signing_key = SigningKey::from_bytes(&identity.secret_key);
        let tls = Arc::new(transport::client_config(
            &existing.home.trust(&existing.config),
        )?);
        let (mut raw, nonce) = RawConnection::open(&existing.config.server, tls).await?;
        let msg = cove_wire::sign::auth_challenge_message(&nonce, &user, &new_key);
        let signature = Signature(signing_key.sign(&msg).to_bytes());
        raw.authenticate(raw::register_device_request(
            &user,
            new_key,
            signature,
            authorizer,
            authorization,
        ))
        .await?;
        identity.device = Some(raw.device);
        raw.close().await;
        client.store().set_identity(&identity)?;
        drop(client);
        let ca = existing.config.custom_ca.then(|| existing.home.ca_path());
        let config = home.initialise(&existing.config.server, user, ca.as_deref())?;
        let client = Client::open(SqliteStore::open(home.database_path())?, seed())?;
        let mut device = Self::start(home, config, client, Some(lock))?;
        device.settle().await?;
        Ok(device)
    }

    /// Sends one request to the relay on a separate connection authenticated as this
    /// device, and returns the relay's answer. For probing what the relay allows (the
    /// device's own session may be displaced meanwhile; it reconnects by itself).
    pub async fn probe(&self, body: Request) -> Result<Result<Reply, ErrorReply>, DeviceError> {
        let device = self.device.ok_or(DeviceError::NotRegistered)?;
        let user = self.config.user.clone();
        let key = self.session.call(|c| c.device_key()).await?;
        let tls = Arc::new(transport::client_config(&self.home.trust(&self.config))?);
        let (mut raw, nonce) = RawConnection::open(&self.config.server, tls).await?;
        let msg = cove_wire::sign::auth_challenge_message(&nonce, &user, &key);
        let signature = self.sign(msg).await?;
        raw.authenticate(Request::Authenticate {
            user,
            device,
            signature,
        })
        .await?;
        let reply = raw.request(body).await?;
        raw.close().await;
        Ok(reply)
    }

    /// Signs `message` with this device's key (inside the session task).
    async fn sign(&self, message: Vec<u8>) -> Result<Signature, DeviceError> {
        self.session
            .call(move |c| -> Result<Signature, DeviceError> {
                let identity = c.store().identity()?.ok_or(DeviceError::NotRegistered)?;
                let key = SigningKey::from_bytes(&identity.secret_key);
                Ok(Signature(key.sign(&message).to_bytes()))
            })
            .await?
    }

    /// The user.
    pub fn user(&self) -> &UserName {
        &self.config.user
    }

    /// The relay URL.
    pub fn server(&self) -> &str {
        &self.config.server
    }

    /// The relay-assigned device id (known once registered).
    pub fn device_id(&self) -> Option<DeviceId> {
        self.device
    }

    /// Changes how long commands wait for the relay.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The session (for direct access to the core in tests and tools).
    pub fn session(&self) -> &Session<SqliteStore> {
        &self.session
    }

    /// Waits until connected, caught up and quiet (no request or command outstanding).
    pub async fn settle(&mut self) -> Result<(), DeviceError> {
        self.reachable().await?;
        self.session.settled(self.timeout).await?;
        self.refresh_device_id().await;
        Ok(())
    }

    /// Creates a group.
    pub async fn create_group(&self, name: &str) -> Result<GroupView, DeviceError> {
        self.reachable().await?;
        let owned = name.to_owned();
        self.session
            .op(self.timeout, move |c| {
                c.create_group(session::now_ms(), &owned)
            })
            .await??;
        let groups = self.groups().await?;
        // The newest group of that name is ours; names can repeat, ids cannot.
        groups
            .into_iter()
            .rev()
            .find(|g| g.name == name)
            .ok_or_else(|| DeviceError::Command(CommandError::UnknownGroup(name.to_owned())))
    }

    /// Adds users (all their devices) to a group (name or hex id).
    pub async fn add_users(&self, group: &str, users: &[UserName]) -> Result<(), DeviceError> {
        self.reachable().await?;
        let (group, users) = (group.to_owned(), users.to_vec());
        self.session
            .op(self.timeout, move |c| {
                c.add_users(session::now_ms(), &group, &users)
            })
            .await??;
        Ok(())
    }

    /// Removes users (all their devices) from a group.
    pub async fn remove_users(&self, group: &str, users: &[UserName]) -> Result<(), DeviceError> {
        self.reachable().await?;
        let (group, users) = (group.to_owned(), users.to_vec());
        self.session
            .op(self.timeout, move |c| {
                c.remove_users(session::now_ms(), &group, &users)
            })
            .await??;
        Ok(())
    }

    /// Leaves a group.
    pub async fn leave(&self, group: &str) -> Result<(), DeviceError> {
        self.reachable().await?;
        let group = group.to_owned();
        self.session
            .op(self.timeout, move |c| c.leave(session::now_ms(), &group))
            .await??;
        Ok(())
    }

    /// Sends a text: [`Sent::Delivered`] once the relay has stored it, [`Sent::Queued`] if
    /// it did not answer within the timeout (the message is persisted and sent once later;
    /// sending it again would post it twice). An error means it was not sent and will not
    /// be: refused locally (nothing queued) or by the relay.
    pub async fn send_text(&self, group: &str, text: &str) -> Result<Sent, DeviceError> {
        self.reachable().await?;
        let (group, text) = (group.to_owned(), text.to_owned());
        let done = self
            .session
            .op(self.timeout, move |c| {
                c.send_text(session::now_ms(), &group, &text)
            })
            .await?;
        match done {
            Ok(()) => Ok(Sent::Delivered),
            // The core persisted it in the outbox before posting it.
            Err(SessionError::Timeout { .. }) => Ok(Sent::Queued),
            Err(e) => Err(e.into()),
        }
    }

    /// Receives everything pending and returns the messages not shown before (other
    /// devices' messages, in log order per group). Call [`Device::mark_shown`] for them once
    /// they are shown, so a crash in between shows them again rather than never.
    pub async fn sync(&mut self) -> Result<Vec<MessageView>, DeviceError> {
        Ok(self
            .sync_incoming()
            .await?
            .into_iter()
            .filter_map(|i| match i {
                Incoming::Message(m) => Some(m),
                Incoming::Notice(_) | Incoming::Warning(_) => None,
            })
            .collect())
    }

    /// Like [`Device::sync`], and also returns every warning the core raised meanwhile (as
    /// [`Incoming::Warning`], before the messages); other notices are left out.
    pub async fn sync_incoming(&mut self) -> Result<Vec<Incoming>, DeviceError> {
        self.settle().await?;
        // Everything the core said while catching up is in the channel by now (the session
        // is idle only after it drained the core's outputs). Messages are collected from the
        // store below; warnings exist only as events.
        let mut warnings = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            if let SessionEvent::Core(Event::Warning(text)) = event {
                warnings.push(Incoming::Warning(text));
            }
        }
        self.collect_unprinted().await?;
        let mut messages = Vec::new();
        for i in self.unprinted.drain(..) {
            match i {
                Incoming::Message(_) => messages.push(i),
                Incoming::Warning(_) => warnings.push(i),
                Incoming::Notice(_) => {}
            }
        }
        warnings.extend(messages);
        Ok(warnings)
    }

    /// The next message not shown before, waiting for one to arrive. Messages received by
    /// earlier commands (e.g. during `send`) come first. The previous one returned is
    /// marked shown when this is called again (or at [`Device::close`]).
    pub async fn next_message(&mut self) -> Result<MessageView, DeviceError> {
        loop {
            if let Incoming::Message(m) = self.next_incoming().await? {
                return Ok(m);
            }
        }
    }

    /// Like [`Device::next_message`], and also returns notices for the user as they happen
    /// (joined or removed from a group, membership changes, a changed device key, the
    /// connection lost and back) and the core's warnings.
    pub async fn next_incoming(&mut self) -> Result<Incoming, DeviceError> {
        if let Some(m) = self.returned.take() {
            self.mark_shown(&m).await?;
        }
        if self.queued.is_empty() {
            self.refresh_device_id().await;
            // Anything stored but not shown yet (first call).
            self.collect_unprinted().await?;
        }
        loop {
            if let Some(next) = self.unprinted.pop_front() {
                if let Incoming::Message(m) = &next {
                    self.returned = Some(m.clone());
                }
                return Ok(next);
            }
            let Some(event) = self.events.recv().await else {
                return Err(SessionError::Stopped(None).into());
            };
            let notice = match event {
                SessionEvent::Core(Event::Message(m)) => {
                    let queued = self.queued.entry(m.group).or_insert(0);
                    if m.seq.0 > *queued {
                        *queued = m.seq.0;
                        if Some(m.from_device) != self.device {
                            self.unprinted
                                .push_back(Incoming::Message(message_view(&m)));
                        }
                    }
                    None
                }
                SessionEvent::Core(Event::Authenticated { device, .. }) => {
                    self.device = Some(device);
                    None
                }
                SessionEvent::Core(Event::Joined { name, by, .. }) => {
                    Some(format!("joined {name} (added by {by})"))
                }
                SessionEvent::Core(Event::MembersChanged {
                    group,
                    by,
                    added,
                    removed,
                }) => {
                    let name = self.group_name(group).await;
                    let list = |v: &[UserName]| {
                        v.iter()
                            .map(UserName::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    match (added.is_empty(), removed.is_empty()) {
                        (false, true) => Some(format!("{by} added {} to {name}", list(&added))),
                        (true, false) => {
                            Some(format!("{by} removed {} from {name}", list(&removed)))
                        }
                        (false, false) => Some(format!(
                            "{by} added {} and removed {} in {name}",
                            list(&added),
                            list(&removed)
                        )),
                        (true, true) => None,
                    }
                }
                SessionEvent::Core(Event::RemovedFromGroup { group }) => Some(format!(
                    "you were removed from {}",
                    self.group_name(group).await
                )),
                SessionEvent::Core(Event::Warning(text)) => {
                    self.unprinted.push_back(Incoming::Warning(text));
                    None
                }
                SessionEvent::Core(Event::KeyChanged { user, .. }) => Some(format!(
                    "WARNING: a device key of {user} changed; compare `cove safety-number {user}` with them"
                )),
                SessionEvent::Connected => {
                    let back = !self.was_connected && self.device.is_some();
                    self.was_connected = true;
                    back.then(|| "connected to the relay".to_owned())
                }
                SessionEvent::Disconnected(reason) => {
                    tracing::debug!(%reason, "disconnected");
                    let lost = std::mem::replace(&mut self.was_connected, false);
                    lost.then(|| "connection to the relay lost; reconnecting".to_owned())
                }
                SessionEvent::Core(_) => None,
            };
            if let Some(notice) = notice {
                self.unprinted.push_back(Incoming::Notice(notice));
            }
            if let LinkState::Stopped(reason) = self.session.link()
                && self.unprinted.is_empty()
            {
                return Err(SessionError::Stopped(reason).into());
            }
        }
    }

    async fn group_name(&self, group: GroupId) -> String {
        let groups = self.session.call(|c| c.groups()).await.unwrap_or_default();
        groups
            .into_iter()
            .find(|g| g.id == group)
            .map(|g| g.name)
            .unwrap_or_else(|| group.to_hex())
    }

    /// Records that `message` (and everything before it in its group) was shown.
    pub async fn mark_shown(&self, message: &MessageView) -> Result<(), DeviceError> {
        let key = format!("{PRINTED_KEY}{}", message.group_id);
        let seq = message.seq;
        self.session
            .call(move |c| -> Result<(), StoreError> {
                let shown: u64 = c
                    .store()
                    .config(&key)?
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if seq > shown {
                    c.store().set_config(&key, &seq.to_string())?;
                }
                Ok(())
            })
            .await??;
        Ok(())
    }

    /// The next event from the session (core events and connection changes), unfiltered.
    /// Do not mix with [`Device::next_message`], which consumes the same stream.
    pub async fn next_event(&mut self) -> Option<SessionEvent> {
        self.events.recv().await
    }

    /// The groups this device is or was in.
    pub async fn groups(&self) -> Result<Vec<GroupView>, DeviceError> {
        let groups = self.session.call(|c| c.groups()).await?;
        Ok(groups
            .into_iter()
            .filter(|g| g.active)
            .map(group_view)
            .collect())
    }

    /// The core's full group list (including groups this device left or was removed from).
    pub async fn group_infos(&self) -> Result<Vec<GroupInfo>, DeviceError> {
        Ok(self.session.call(|c| c.groups()).await?)
    }

    /// A group's stored messages, in log order.
    pub async fn history(&self, group: &str) -> Result<Vec<MessageView>, DeviceError> {
        let group = group.to_owned();
        let messages = self.session.call(move |c| c.history(&group)).await??;
        Ok(messages.iter().map(message_view).collect())
    }

    /// Sends an uploaded file's pointer to a group (see [`crate::transfer`]).
    pub async fn send_attachment(
        &self,
        group: &str,
        pointer: cove_core::attachment::AttachmentPointer,
    ) -> Result<(), DeviceError> {
        let group = group.to_owned();
        self.session
            .op(self.timeout, move |c| {
                c.send_attachment(session::now_ms(), &group, pointer)
            })
            .await??;
        Ok(())
    }

    /// The attachment of a stored message of `group`, by message id or blob id (hex).
    pub async fn attachment(
        &self,
        group: &str,
        id: &str,
    ) -> Result<Option<cove_core::attachment::AttachmentPointer>, DeviceError> {
        let (group, id) = (group.to_owned(), id.trim().to_ascii_lowercase());
        let messages = self.session.call(move |c| c.history(&group)).await??;
        Ok(messages.into_iter().find_map(|m| {
            let blob = m.attachment.as_ref().map(|p| p.blob_id.to_hex());
            (m.id.to_hex() == id || blob.as_deref() == Some(id.as_str()))
                .then_some(m.attachment)
                .flatten()
        }))
    }

    /// The signer for blob-store uploads and the relay's TLS trust (see [`crate::transfer`]).
    pub async fn blob_access(
        &self,
    ) -> Result<
        (
            cove_core::attachment::BlobRequestSigner,
            Arc<rustls::ClientConfig>,
        ),
        DeviceError,
    > {
        let signer = self
            .session
            .call(|c| c.blob_request_signer())
            .await?
            .ok_or(DeviceError::NotRegistered)?;
        let tls = Arc::new(transport::client_config(&self.home.trust(&self.config))?);
        Ok((signer, tls))
    }

    /// The safety number with `user`.
    pub async fn safety_number(&self, user: &UserName) -> Result<String, DeviceError> {
        let user = user.clone();
        Ok(self.session.call(move |c| c.safety_number(&user)).await??)
    }

    /// The epoch and epoch authenticator of a group, if this device is a member.
    pub async fn epoch_state(&self, group: GroupId) -> Result<Option<(u64, Vec<u8>)>, DeviceError> {
        Ok(self
            .session
            .call(move |c| c.epoch(&group).zip(c.epoch_authenticator(&group)))
            .await?)
    }

    /// Waits (up to the timeout) until the core has processed every delivery the relay
    /// pushed so far, then closes the connection and the database.
    pub async fn close(mut self) {
        if let Some(m) = self.returned.take() {
            let _ = self.mark_shown(&m).await;
        }
        if matches!(self.session.link(), LinkState::CaughtUp) {
            let _ = self.session.settled(Duration::from_secs(5)).await;
        }
        let _ = self.session.stop().await;
    }

    /// Closes without waiting for anything (simulates a device going away abruptly,
    /// e.g. in tests; the database stays consistent because every step is transactional).
    pub async fn close_now(self) {
        let _ = self.session.stop().await;
    }

    /// Fails fast with the connection error if the relay cannot be reached at all.
    async fn reachable(&self) -> Result<(), DeviceError> {
        if self.online {
            self.session
                .connected(CONNECT_TIMEOUT.min(self.timeout))
                .await?;
        }
        Ok(())
    }

    async fn refresh_device_id(&mut self) {
        if let Ok(d) = self.session.call(|c| c.device()).await {
            self.device = d;
        }
    }

    /// Queues every stored message not shown yet (by the persistent marks).
    async fn collect_unprinted(&mut self) -> Result<(), DeviceError> {
        let me = self.device;
        let found = self
            .session
            .call(
                move |c| -> Result<Vec<(GroupId, u64, Vec<ChatMessage>)>, DeviceError> {
                    let mut out = Vec::new();
                    for g in c.groups() {
                        let key = format!("{PRINTED_KEY}{}", g.id.to_hex());
                        let shown: u64 = c
                            .store()
                            .config(&key)?
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let mut last = shown;
                        let mut new = Vec::new();
                        // Only what follows the shown position is read: the cost of a
                        // sync follows what is new, not the length of the history.
                        for m in c.history_after(&g.id, Seq(shown))? {
                            last = last.max(m.seq.0);
                            if Some(m.from_device) != me {
                                new.push(m);
                            }
                        }
                        out.push((g.id, last, new));
                    }
                    Ok(out)
                },
            )
            .await??;
        for (group, last, new) in found {
            let queued = self.queued.entry(group).or_insert(0);
            for m in new {
                if m.seq.0 > *queued {
                    self.unprinted
                        .push_back(Incoming::Message(message_view(&m)));
                }
            }
            *queued = (*queued).max(last);
        }
        Ok(())
    }
}

/// A fresh 32-byte seed for the core's RNG, from the operating system.
fn seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    seed
}

/// The view of a core message.
pub fn message_view(m: &ChatMessage) -> MessageView {
    MessageView {
        group: m.group_name.clone(),
        group_id: m.group.to_hex(),
        from: m.from.to_string(),
        device: m.from_device.0,
        text: match &m.attachment {
            Some(p) => crate::views::file_line(p),
            None => m.text.clone(),
        },
        id: m.id.to_hex(),
        sent_at: m.sent_at_ms,
        seq: m.seq.0,
        attachment: m
            .attachment
            .as_ref()
            .map(crate::transfer::AttachmentView::from),
    }
}

fn group_view(g: GroupInfo) -> GroupView {
    GroupView {
        name: g.name,
        id: g.id.to_hex(),
        epoch: g.epoch,
        members: g.members.iter().map(|u| u.to_string()).collect(),
    }
}
