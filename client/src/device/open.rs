//! Opening a home: initialising it (and registering the user), or opening it online or
//! offline.

use std::path::Path;

use cove_core::Client;
use cove_store::SqliteStore;
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
}
