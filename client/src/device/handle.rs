//! The [`Device`] itself: its start, accessors, and waiting for the relay.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::sync::mpsc;

use cove_core::Client;
use cove_store::SqliteStore;
use cove_wire::{DeviceId, GroupId, UserName};

use super::error::DeviceError;
use super::inbox::Incoming;
use crate::config::{Config, Home, HomeLock};
use crate::session::{Endpoint, Session, SessionEvent};
use crate::transport;
use crate::views::MessageView;

/// How long a command waits for the relay by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a command waits for a connection before it reports the relay unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One device of a user, with its session to the relay.
pub struct Device {
    pub(super) home: Home,
    pub(super) config: Config,
    pub(super) session: Session<SqliteStore>,
    pub(super) events: mpsc::UnboundedReceiver<SessionEvent>,
    /// Messages collected for [`Device::next_message`] but not returned yet.
    pub(super) unprinted: VecDeque<Incoming>,
    /// Whether a connection was up since the last loss (to report losses once).
    pub(super) was_connected: bool,
    /// Highest log position queued per group (in memory; the persistent mark is set by
    /// [`Device::mark_shown`] once the caller has shown a message).
    pub(super) queued: HashMap<GroupId, u64>,
    /// The message [`Device::next_message`] returned last, marked shown on the next call.
    pub(super) returned: Option<MessageView>,
    pub(super) device: Option<DeviceId>,
    pub(super) timeout: Duration,
    pub(super) online: bool,
    /// Held while connected: one process drives a device at a time.
    pub(super) _lock: Option<HomeLock>,
}

impl Device {
    pub(super) fn start(
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

    /// The home this device lives in.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// How long commands wait for the relay.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Takes the session's event stream away from this handle, for a shell that routes the
    /// events itself (the daemon). Afterwards [`Device::next_event`], [`Device::next_incoming`]
    /// and the commands that read events (`device_list`'s relay part) see no events.
    pub fn take_events(&mut self) -> mpsc::UnboundedReceiver<SessionEvent> {
        let (_closed, empty) = mpsc::unbounded_channel();
        std::mem::replace(&mut self.events, empty)
    }

    /// Gives the event stream back (see [`Device::take_events`]).
    pub fn restore_events(&mut self, events: mpsc::UnboundedReceiver<SessionEvent>) {
        self.events = events;
    }

    /// Like [`Device::settle`], for a shared handle (the device id is not refreshed).
    pub async fn settle_shared(&self) -> Result<(), DeviceError> {
        self.reachable().await?;
        self.session.settled(self.timeout).await?;
        Ok(())
    }

    /// Waits until connected, caught up and quiet (no request or command outstanding).
    pub async fn settle(&mut self) -> Result<(), DeviceError> {
        self.reachable().await?;
        self.session.settled(self.timeout).await?;
        self.refresh_device_id().await;
        Ok(())
    }

    /// Fails fast with the connection error if the relay cannot be reached at all.
    pub(crate) async fn reachable(&self) -> Result<(), DeviceError> {
        if self.online {
            self.session
                .connected(CONNECT_TIMEOUT.min(self.timeout))
                .await?;
        }
        Ok(())
    }

    pub(super) async fn refresh_device_id(&mut self) {
        if let Ok(d) = self.session.call(|c| c.device()).await {
            self.device = d;
        }
    }
}

/// A fresh 32-byte seed for the core's RNG, from the operating system.
pub(super) fn seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    seed
}
