//! Linking a further device of a user, and probing the relay on a side connection.

use std::sync::Arc;

use cove_core::Client;
use cove_store::SqliteStore;
use cove_wire::{ErrorReply, Reply, Request};

use super::error::DeviceError;
use super::handle::{Device, seed};
use super::open::remove_home;
use crate::config::{ConfigError, Home};
use crate::raw::RawConnection;
use crate::transport;

impl Device {
    /// Links a further device of `existing`'s user in `home`: a fresh device key,
    /// authorised by a signature of `existing` and registered with the relay
    /// (`RegisterDevice`), then connected like any device. Groups the user joins from now on
    /// include it (users are added with all their devices). If the new device does not get
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
        let mut client = Client::init(
            SqliteStore::open(home.database_path())?,
            user.clone(),
            seed(),
        )?;
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
        device.registered_or_removed(home).await
    }

    /// Sends one request to the relay on a separate connection authenticated as this
    /// device, and returns the relay's answer. For probing what the relay allows (the
    /// device's own session may be displaced meanwhile; it reconnects by itself).
    pub async fn probe(&self, body: Request) -> Result<Result<Reply, ErrorReply>, DeviceError> {
        self.device.ok_or(DeviceError::NotRegistered)?;
        let tls = Arc::new(transport::client_config(&self.home.trust(&self.config))?);
        let (mut raw, nonce) = RawConnection::open(&self.config.server, tls).await?;
        let authenticate = self
            .session
            .call(move |c| c.side_authentication(&nonce))
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
}

/// A user's signed device list as this device verified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceListView {
    /// The user's identity key (hex).
    pub identity: String,
    /// The devices listed now, in the order they were added.
    pub devices: Vec<ListedDeviceView>,
    /// The keys (hex) of revoked devices.
    pub revoked: Vec<String>,
}

impl Device {
    /// This user's devices as the signed device list names them (after syncing with the
    /// relay when online), or `None` if this device has not seen its user's list.
    pub async fn device_list(&self) -> Result<Option<DeviceListView>, DeviceError> {
        let user = self.config.user.clone();
        let (list, me) = self
            .session
            .call(move |c| (c.device_list_of(&user), c.device_key()))
            .await?;
        let Some(list) = list? else {
            return Ok(None);
        };
        let revoked = list.revoked().map(|k| k.to_hex()).collect();
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
                })
                .collect(),
            revoked,
        }))
    }

    /// Revokes the device of this user whose key starts with the hex digits `key_prefix`
    /// (on the user's first device, which holds the identity key), and waits until the relay
    /// has the signed entry. Returns the revoked key (hex).
    pub async fn revoke_device(&mut self, key_prefix: &str) -> Result<String, DeviceError> {
        let prefix = key_prefix.trim().to_ascii_lowercase();
        let view = self
            .device_list()
            .await?
            .ok_or(DeviceError::NotRegistered)?;
        let matches: Vec<&ListedDeviceView> = view
            .devices
            .iter()
            .filter(|d| !prefix.is_empty() && d.key.starts_with(&prefix))
            .collect();
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
