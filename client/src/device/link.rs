//! Linking a further device of a user, and probing the relay on a side connection.

use std::sync::Arc;

use cove_core::Client;
use cove_store::{SqliteStore, Store};
use cove_wire::{DeviceKey, ErrorReply, Reply, Request, Signature};
use ed25519_dalek::{Signer as _, SigningKey};

use super::error::DeviceError;
use super::handle::{Device, seed};
use crate::config::{ConfigError, Home};
use crate::raw::{self, RawConnection};
use crate::transport;

impl Device {
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
}
