//! Linking a further device of a user, and probing the relay on a side connection.

use std::collections::HashMap;
use std::sync::Arc;

use cove_core::{Client, Event};
use cove_wire::{DeviceId, ErrorReply, OwnDevice, Reply, Request};
use tracing::warn;

use super::error::DeviceError;
use super::handle::{Device, seed};
use super::open::remove_home;
use crate::config::{ConfigError, Home};
use crate::raw::RawConnection;
use crate::session::{SessionError, SessionEvent};
use crate::transport;

impl Device {
    /// Links a further device of `existing`'s user in `home`: a fresh device key,
    /// authorised by a signature of `existing` and registered with the relay
    /// (`RegisterDevice`), then connected like any device. Groups the user joins from now on
    /// include it (users are added with all their devices), and `existing` adds it to the
    /// user's Cove Drive groups at once, with a snapshot of each drive the user owns
    /// (`Device::drive_welcome_own_devices`). If the new device does not get
    /// registered, it leaves no half-initialised home behind (as [`Device::init`]).
    ///
    /// The cores do the work: `existing`'s core signs the new key
    /// ([`Client::authorize_device`]), the new core stores that authorisation
    /// ([`Client::set_device_authorization`]) and registers with it on its first connection.
    pub async fn link(existing: &Device, home: &Home) -> Result<Device, DeviceError> {
        if home.is_initialised() {
            return Err(ConfigError::AlreadyInitialised(home.dir().to_owned()).into());
        }
        existing.device.ok_or(DeviceError::NotRegistered)?;
        let user = existing.config.user.clone();
        let lock = home.lock()?;
        let mut client = Client::init(home.open_database()?, user.clone(), seed())?;
        // From here on the new database is ours: if linking stops short of a started
        // device, remove it again so that `home` can be linked (or initialised) later.
        let new_key = client.device_key();
        let prepared = async {
            let (authorizer, authorization) = existing
                .session
                .call(move |c| c.authorize_device(crate::session::now_ms(), &new_key))
                .await??
                .ok_or(DeviceError::NotRegistered)?;
            client.set_device_authorization(authorizer, authorization)?;
            // The relay registers only devices the user's signed list adds: wait until it
            // confirmed the Add entry `authorize_device` published. (The empty call returns
            // once the session has sent the publish, so `settled` sees it in flight.)
            existing.session.call(|_| ()).await?;
            existing.reachable().await?;
            existing.session.settled(existing.timeout).await?;
            let ca = existing.config.custom_ca.then(|| existing.home.ca_path());
            Ok::<_, DeviceError>(home.initialise(&existing.config.server, user, ca.as_deref())?)
        }
        .await;
        let config = match prepared {
            Ok(config) => config,
            Err(e) => {
                drop(client);
                drop(lock);
                remove_home(home);
                return Err(e);
            }
        };
        let device = Self::start(home, config, client, Some(lock))?;
        let device = device.registered_or_removed(home).await?;
        // Cove Drive: the new device joins the user's drives (with a snapshot of each tree
        // the user owns); a drive not done is caught up by the snapshot request path.
        existing.drive_welcome_own_devices().await;
        Ok(device)
    }

    /// Sends one request to the relay on a separate connection authenticated as this
    /// device, and returns the relay's answer. For probing what the relay allows (the
    /// device's own session may be displaced meanwhile; it reconnects by itself).
    pub async fn probe(&self, body: Request) -> Result<Result<Reply, ErrorReply>, DeviceError> {
        self.device.ok_or(DeviceError::NotRegistered)?;
        let tls = Arc::new(transport::client_config(&self.home.trust(&self.config))?);
        let (mut raw, nonce) = RawConnection::open(&self.config.server, tls).await?;
        let channel = raw.channel_binding();
        let authenticate = self
            .session
            .call(move |c| c.side_authentication(&nonce, &channel))
            .await?
            .ok_or(DeviceError::NotRegistered)?;
        raw.authenticate(authenticate).await?;
        let reply = raw.request(body).await?;
        raw.close().await;
        Ok(reply)
    }
}

/// One device of a user's signed device list, as `cove device list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedDeviceView {
    /// The device key (hex).
    pub key: String,
    /// Its name in the list.
    pub name: String,
    /// When it was added (ms since the Unix epoch, by the adding device's clock).
    pub added_ms: u64,
    /// Whether it is this device.
    pub this: bool,
    /// Its relay-assigned id (`None` when the relay did not answer, or has no device with
    /// this key: listed but not registered yet).
    pub id: Option<DeviceId>,
    /// When it last authenticated with the relay (ms since the Unix epoch, by the relay's
    /// clock); `None` when unknown.
    pub last_seen_ms: Option<u64>,
}

/// A revoked device of the user, as `cove device list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedDeviceView {
    /// The device key (hex).
    pub key: String,
    /// Its relay-assigned id, as [`ListedDeviceView::id`].
    pub id: Option<DeviceId>,
    /// Its last login before (or since) the revocation, as [`ListedDeviceView::last_seen_ms`].
    pub last_seen_ms: Option<u64>,
}

/// A user's signed device list as this device verified it, joined by key with what the
/// relay says of the user's devices (ids and last-seen times) when it could be asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceListView {
    /// The user's identity key (hex).
    pub identity: String,
    /// The devices listed now, in the order they were added.
    pub devices: Vec<ListedDeviceView>,
    /// The revoked devices, in the order the list names them.
    pub revoked: Vec<RevokedDeviceView>,
    /// Whether the relay answered (`ListOwnDevices`): when false (offline, or the relay
    /// refused or did not answer in time), no id or last-seen time is known.
    pub from_relay: bool,
}

impl Device {
    /// This user's devices as the signed device list names them (after syncing with the
    /// relay when online), or `None` if this device has not seen its user's list. When
    /// connected, also asks the relay for the user's devices (`ListOwnDevices`, on this
    /// device's session) and adds their ids and last-seen times, matched by key: the names,
    /// times added and revocations come only from the signed list, never from the relay.
    ///
    /// Session events that arrive while waiting for the relay's answer are dropped (as while
    /// linking): received messages stay stored and are shown by a later `sync`.
    pub async fn device_list(&mut self) -> Result<Option<DeviceListView>, DeviceError> {
        let Some(mut view) = self.signed_device_list().await? else {
            return Ok(None);
        };
        if let Some(relay) = self.own_devices_at_relay().await? {
            let by_key: HashMap<String, &OwnDevice> =
                relay.iter().map(|d| (d.key.to_hex(), d)).collect();
            for d in &mut view.devices {
                if let Some(r) = by_key.get(&d.key) {
                    (d.id, d.last_seen_ms) = (Some(r.device), r.last_seen_ms);
                }
            }
            for d in &mut view.revoked {
                if let Some(r) = by_key.get(&d.key) {
                    (d.id, d.last_seen_ms) = (Some(r.device), r.last_seen_ms);
                }
            }
            view.from_relay = true;
        }
        Ok(Some(view))
    }

    /// The signed device list alone, as this device verified it (no relay round trip).
    pub async fn signed_device_list(&self) -> Result<Option<DeviceListView>, DeviceError> {
        let user = self.config.user.clone();
        let (list, me) = self
            .session
            .call(move |c| (c.device_list_of(&user), c.device_key()))
            .await?;
        let Some(list) = list? else {
            return Ok(None);
        };
        let revoked = list
            .revoked()
            .map(|k| RevokedDeviceView {
                key: k.to_hex(),
                id: None,
                last_seen_ms: None,
            })
            .collect();
        // In the order they were added.
        let mut listed: Vec<_> = list.devices().collect();
        listed.sort_by_key(|d| d.index);
        Ok(Some(DeviceListView {
            identity: list.identity().to_hex(),
            devices: listed
                .into_iter()
                .map(|d| ListedDeviceView {
                    key: d.key.to_hex(),
                    name: d.name.to_string(),
                    added_ms: d.added_ms,
                    this: d.key == me,
                    id: None,
                    last_seen_ms: None,
                })
                .collect(),
            revoked,
            from_relay: false,
        }))
    }

    /// Sends `body` on this device's session and waits (up to the device's timeout) for the
    /// relay's answer. Session events that arrive meanwhile are dropped (as while linking):
    /// received messages stay stored and are shown by a later `sync`.
    pub async fn relay_request(
        &mut self,
        body: Request,
    ) -> Result<Result<Reply, ErrorReply>, DeviceError> {
        self.reachable().await?;
        let id = self
            .session
            .call(|c| c.send_request(body))
            .await?
            .ok_or_else(|| SessionError::Stopped(Some("not connected to the relay".into())))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => return Err(SessionError::Stopped(None).into()),
                Err(_) => {
                    return Err(SessionError::Timeout {
                        secs: self.timeout.as_secs(),
                        state: None,
                    }
                    .into());
                }
            };
            if let SessionEvent::Core(Event::Reply { id: got, result }) = event
                && got == id
            {
                return Ok(result);
            }
        }
    }

    /// The relay's answer to `ListOwnDevices` on this device's session, or `None` when not
    /// connected, refused, or not answered within the device's timeout (logged).
    async fn own_devices_at_relay(&mut self) -> Result<Option<Vec<OwnDevice>>, DeviceError> {
        let Some(id) = self
            .session
            .call(|c| c.send_request(Request::ListOwnDevices))
            .await?
        else {
            return Ok(None);
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(None),
                Err(_) => {
                    warn!("the relay did not answer ListOwnDevices in time");
                    return Ok(None);
                }
            };
            match event {
                SessionEvent::Core(Event::Reply { id: got, result }) if got == id => {
                    return Ok(match result {
                        Ok(Reply::OwnDevices { devices }) => Some(devices.0),
                        Ok(other) => {
                            warn!(?other, "unexpected answer to ListOwnDevices");
                            None
                        }
                        Err(e) => {
                            warn!(error = %e, "the relay refused ListOwnDevices");
                            None
                        }
                    });
                }
                SessionEvent::Disconnected(_) => return Ok(None),
                _ => {}
            }
        }
    }

    /// Revokes the device of this user whose relay id `key_prefix` is (a decimal number that
    /// is an id), or else whose key starts with the hex digits `key_prefix`, on a device
    /// that holds the identity key (the user's first device, or one logged in with the
    /// password), and waits until the relay has the signed entry. Returns the revoked key
    /// (hex).
    pub async fn revoke_device(&mut self, key_prefix: &str) -> Result<String, DeviceError> {
        let prefix = key_prefix.trim().to_ascii_lowercase();
        // A number may be a relay id (`cove device list` shows them): ask the relay then.
        let id: Option<u64> = prefix.parse().ok();
        let view = if id.is_some() {
            self.settle().await?;
            self.device_list().await?
        } else {
            self.signed_device_list().await?
        }
        .ok_or(DeviceError::NotRegistered)?;
        let by_id: Vec<&ListedDeviceView> = view
            .devices
            .iter()
            .filter(|d| id.is_some() && d.id.map(|i| i.0) == id)
            .collect();
        let matches: Vec<&ListedDeviceView> = if by_id.is_empty() {
            view.devices
                .iter()
                .filter(|d| !prefix.is_empty() && d.key.starts_with(&prefix))
                .collect()
        } else {
            by_id
        };
        let key = match matches.as_slice() {
            [one] => one.key.clone(),
            [] => return Err(DeviceError::UnknownDeviceKey(key_prefix.to_owned())),
            _ => return Err(DeviceError::AmbiguousDeviceKey(key_prefix.to_owned())),
        };
        let device_key = cove_wire::DeviceKey::from_hex(&key)
            .map_err(|_| DeviceError::UnknownDeviceKey(key_prefix.to_owned()))?;
        self.session
            .call(move |c| c.revoke_device(crate::session::now_ms(), &device_key))
            .await??;
        self.settle().await?;
        Ok(key)
    }
}
