//! A device's password account: registering it (at `cove init`) and reaching the relay for
//! the account operations of [`crate::account`].

use std::sync::Arc;

use cove_account::RecoveryKey;
use cove_store::{AccountSecrets, Store as _};
use zeroize::Zeroizing;

use super::error::DeviceError;
use super::handle::Device;
use crate::account::{self, AccountServer};
use crate::config::Home;
use crate::transport;

/// Removes the files of `home` after its user's account was deleted at the relay
/// (configuration, CA copy, database and its key, lock file), and the home's directory if
/// nothing else is in it; returns whether the directory is gone. Takes the home's lock
/// first, so it fails (`Busy`) while another process drives the device.
pub fn remove_deleted_home(home: &Home) -> Result<bool, DeviceError> {
    let lock = home.lock()?;
    super::open::remove_home(home);
    drop(lock);
    Ok(!home.dir().exists())
}

impl Device {
    /// Registers a password account for this device's user on a connection authenticated
    /// as this device (`account::register`: OPAQUE, the account bundle with the user's
    /// identity key from this device's store, a fresh backup key and a fresh recovery key,
    /// wrapped under the password's export key and under the recovery key). Stores the
    /// backup key in the device's store ([`AccountSecrets`]) and returns the recovery key,
    /// which the caller shows once. The device's session is stopped first, so the two
    /// connections never displace each other; the device is closed when this returns.
    pub async fn register_account(self, password: &[u8]) -> Result<RecoveryKey, DeviceError> {
        self.device.ok_or(DeviceError::NotRegistered)?;
        let server = self.account_server()?;
        let user = self.config.user.clone();
        let client = self
            .session
            .stop()
            .await
            .ok_or(DeviceError::NotRegistered)?;
        let identity = client
            .store()
            .user_identity()?
            .ok_or(DeviceError::NotRegistered)?;
        let (mut conn, nonce) = server.connect().await?;
        let channel = conn.channel_binding();
        let authenticate = client
            .side_authentication(&nonce, &channel)
            .ok_or(DeviceError::NotRegistered)?;
        conn.authenticate(authenticate).await?;
        let bundle = account::register(&mut conn, &user, *identity.secret_key, password).await?;
        conn.close().await;
        client.store().set_account_secrets(&AccountSecrets {
            user,
            backup_key: Zeroizing::new(bundle.backup_key),
        })?;
        Ok(bundle.recovery_key())
    }

    /// The relay of this device's home and how to trust it, for [`crate::account`].
    pub fn account_server(&self) -> Result<AccountServer, DeviceError> {
        Ok(AccountServer {
            server: self.config.server.clone(),
            tls: Arc::new(transport::client_config(&self.home.trust(&self.config))?),
        })
    }
}
