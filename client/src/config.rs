//! A client's home directory: `config.toml` (relay URL, user name, trusted CA), the relay's CA
//! certificate copied in as `ca.pem`, and the client database `cove.db`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use cove_wire::UserName;

use crate::transport::{self, TlsTrust};

/// The configuration file's name inside the home directory.
pub const CONFIG_FILE: &str = "config.toml";
/// The client database's name inside the home directory.
pub const DATABASE_FILE: &str = "cove.db";
/// The copied CA certificate's name inside the home directory.
pub const CA_FILE: &str = "ca.pem";
/// The lock file's name inside the home directory.
pub const LOCK_FILE: &str = "lock";

/// The exclusive lock on a home (see [`Home::lock`]); released when dropped.
#[derive(Debug)]
pub struct HomeLock {
    _file: std::fs::File,
}

/// Why the home or its configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No `config.toml` in the home: the user has not run `cove init`.
    #[error("{0} is not initialised (run `cove init --server wss://HOST:PORT --user NAME` first)")]
    NotInitialised(PathBuf),
    /// The home already holds a configuration.
    #[error("{0} is already initialised; use another --home for another user")]
    AlreadyInitialised(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `config.toml` is not valid.
    #[error("{path} is not a valid configuration: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process (e.g. `cove listen`) is using this home.
    #[error(
        "{0} is in use by another cove process (only one connected command per home at a time; stop `cove listen` or use it to read)"
    )]
    Busy(PathBuf),
    /// The server URL or CA file is unusable.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
}

/// What `config.toml` holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The relay, `wss://HOST:PORT`.
    pub server: String,
    /// This device's user.
    pub user: UserName,
    /// Whether the relay's CA certificate was copied into the home as `ca.pem` (otherwise
    /// the public web PKI is trusted).
    pub custom_ca: bool,
}

/// The file format (the user name is validated after parsing).
#[derive(Serialize, Deserialize)]
struct ConfigFile {
    server: String,
    user: String,
    #[serde(default)]
    custom_ca: bool,
}

/// A client home directory.
#[derive(Clone, Debug)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// Uses `dir` as the home (it need not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Home { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// Path of the client database.
    pub fn database_path(&self) -> PathBuf {
        self.dir.join(DATABASE_FILE)
    }

    /// Path of the copied CA certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(CA_FILE)
    }

    /// Whether `config.toml` exists.
    pub fn is_initialised(&self) -> bool {
        self.config_path().exists()
    }

    /// Creates the home and writes the configuration, copying `ca` in if given. Refuses a
    /// home that is already initialised. The URL and the CA file are checked first.
    pub fn initialise(
        &self,
        server: &str,
        user: UserName,
        ca: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        if self.is_initialised() {
            return Err(ConfigError::AlreadyInitialised(self.dir.clone()));
        }
        transport::endpoint_url(server)?;
        if let Some(ca) = ca {
            transport::read_certs(ca)?;
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        if let Some(ca) = ca {
            let dest = self.ca_path();
            std::fs::copy(ca, &dest).map_err(|e| self.io(&dest, e))?;
        }
        let config = Config {
            server: server.trim_end_matches('/').to_owned(),
            user,
            custom_ca: ca.is_some(),
        };
        let file = ConfigFile {
            server: config.server.clone(),
            user: config.user.to_string(),
            custom_ca: config.custom_ca,
        };
        let text = toml::to_string(&file).map_err(|e| ConfigError::Invalid {
            path: self.config_path(),
            reason: e.to_string(),
        })?;
        let path = self.config_path();
        std::fs::write(&path, text).map_err(|e| self.io(&path, e))?;
        Ok(config)
    }

    /// Reads `config.toml`.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let path = self.config_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotInitialised(self.dir.clone()));
            }
            Err(e) => return Err(self.io(&path, e)),
        };
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.clone(),
            reason,
        };
        let file: ConfigFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let user = UserName::new(file.user).map_err(|e| invalid(e.to_string()))?;
        Ok(Config {
            server: file.server,
            user,
            custom_ca: file.custom_ca,
        })
    }

    /// The TLS trust for `config`.
    pub fn trust(&self, config: &Config) -> TlsTrust {
        if config.custom_ca {
            TlsTrust::CaFile(self.ca_path())
        } else {
            TlsTrust::WebPki
        }
    }

    /// Takes the home's exclusive lock (`HOME/lock`), so two processes never drive the same
    /// device (and its MLS state) at once. Held until the returned guard is dropped.
    pub fn lock(&self) -> Result<HomeLock, ConfigError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        let path = self.dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| self.io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(HomeLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(ConfigError::Busy(self.dir.clone())),
            Err(std::fs::TryLockError::Error(e)) => Err(self.io(&path, e)),
        }
    }

    fn io(&self, path: &Path, source: std::io::Error) -> ConfigError {
        ConfigError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_refuses_reinit() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("h"));
        assert!(matches!(home.load(), Err(ConfigError::NotInitialised(_))));
        let user = UserName::new("alice").unwrap();
        let c = home
            .initialise("wss://127.0.0.1:4433/", user.clone(), None)
            .unwrap();
        assert_eq!(c.server, "wss://127.0.0.1:4433");
        assert_eq!(home.load().unwrap(), c);
        assert!(matches!(
            home.initialise("wss://127.0.0.1:4433", user, None),
            Err(ConfigError::AlreadyInitialised(_))
        ));
    }

    #[test]
    fn a_home_is_locked_while_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let lock = home.lock().unwrap();
        assert!(matches!(home.lock(), Err(ConfigError::Busy(_))));
        drop(lock);
        home.lock().unwrap();
    }

    #[test]
    fn init_checks_the_url_first() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("h"));
        let user = UserName::new("alice").unwrap();
        assert!(home.initialise("http://x:1", user, None).is_err());
        assert!(!home.dir().exists());
    }
}
