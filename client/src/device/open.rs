//! Opening a home: initialising it (and registering the user), or opening it online or
//! offline.

use std::path::Path;

use cove_core::Client;
use cove_wire::UserName;

use super::error::DeviceError;
use super::handle::{Device, seed};
use crate::config::{ConfigError, Home};
use crate::transport;

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
        let store = home.open_database()?;
        let client = Client::init(store, user.clone(), seed())?;
        let config = home.initialise(server, user, ca)?;
        let device = Self::start(home, config, client, Some(lock))?;
        device.registered_or_removed(home).await
    }

    /// Opens an initialised home and connects (in the background; commands wait for the
    /// connection).
    pub async fn open(home: &Home) -> Result<Device, DeviceError> {
        let config = home.load()?;
        let lock = home.lock()?;
        let client = Client::open(home.open_database()?, seed())?;
        Self::start(home, config, client, Some(lock))
    }

    /// Opens an initialised home without connecting (for local queries).
    pub async fn open_offline(home: &Home) -> Result<Device, DeviceError> {
        let config = home.load()?;
        let client = Client::open(home.open_database()?, seed())?;
        Self::start(home, config, client, None)
    }

    /// Waits until a device just created in `home` is registered and settled. If it does
    /// not get there, closes it and leaves no half-initialised home behind (the home's
    /// directory too, if nothing else is in it), and returns why.
    pub(super) async fn registered_or_removed(
        mut self,
        home: &Home,
    ) -> Result<Device, DeviceError> {
        let Err(e) = self.settle().await else {
            return Ok(self);
        };
        self.close_now().await;
        remove_home(home);
        Err(e)
    }
}

/// Removes what [`Device::init`] or [`Device::link`] created in `home` (configuration, CA
/// copy, database and its key, lock file), and the home's directory if nothing else is in it. For a
/// device that did not get registered; its database must be closed.
pub(super) fn remove_home(home: &Home) {
    let lock = home.dir().join(crate::config::LOCK_FILE);
    for file in [
        home.config_path(),
        home.ca_path(),
        home.database_path(),
        home.key_path(),
        home.locked_key_path(),
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
}
