//! A client's home directory: `config.toml` (relay URL, user name, trusted CA), the relay's CA
//! certificate copied in as `ca.pem`, the client database `cove.db` (encrypted with SQLCipher)
//! and its key `db.key`.
//!
//! The home is private: the directory is made mode 0700 and every file in it 0600, each time
//! it is opened (so a home made before this rule is fixed on first use). The database key is
//! 32 random bytes in `db.key`, the way desktop messengers keep it without an OS keychain: a
//! copy of `cove.db` alone (a backup, a synced folder, a stolen disk image without the home's
//! other files) holds nothing readable. A home whose `cove.db` predates encryption is
//! encrypted in place the first time it is opened.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use cove_store::{DatabaseKey, Durability, SqliteStore, StoreError};
use rand::RngCore as _;
use zeroize::Zeroizing;

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
/// The database key file's name inside the home directory.
pub const KEY_FILE: &str = "db.key";
/// The password-locked database key's name inside the home directory.
pub const LOCKED_KEY_FILE: &str = "db.key.locked";

/// What a home's `cove.db` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DatabaseState {
    /// No file, or an empty one (created but never written).
    Absent,
    /// A plaintext SQLite database (a home made before encryption).
    Plaintext,
    /// Anything else: an encrypted database (or a damaged file).
    Encrypted,
}

/// The first bytes of a plaintext SQLite file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

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
    /// `cove.db` is encrypted and `db.key` is missing.
    #[error(
        "{0} is encrypted and its key file db.key is missing: a home copied without db.key cannot be opened"
    )]
    DatabaseKeyMissing(PathBuf),
    /// `db.key` does not open `cove.db`, or is not a key.
    #[error(
        "{0} does not open with this home's db.key (the files come from different homes, or one is damaged)"
    )]
    DatabaseKeyMismatch(PathBuf),
    /// The home is locked with a password and none was given.
    #[error(
        "{0} is locked with a password: set COVE_PASSWORD, pass --password-file FILE, or run from a terminal to be asked"
    )]
    PasswordNeeded(PathBuf),
    /// The password does not unlock the home.
    #[error("wrong password for {0}")]
    WrongPassword(PathBuf),
    /// The locked key file is damaged or from an unknown version.
    #[error("{path}: {reason}")]
    LockedKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The database could not be opened.
    #[error("{path}: {source}")]
    Database {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: StoreError,
    },
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
#[derive(Clone)]
pub struct Home {
    dir: PathBuf,
    /// The password that unlocks (or, with `lock_new`, locks) the database key.
    password: Option<std::sync::Arc<Zeroizing<String>>>,
    /// Whether a new home's database key is locked with `password` (`cove init --lock`).
    lock_new: bool,
}

impl std::fmt::Debug for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Home")
            .field("dir", &self.dir)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("lock_new", &self.lock_new)
            .finish()
    }
}

impl Home {
    /// Uses `dir` as the home (it need not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Home {
            dir: dir.into(),
            password: None,
            lock_new: false,
        }
    }

    /// The same home, with the password that unlocks its database key.
    pub fn with_password(mut self, password: Zeroizing<String>) -> Self {
        self.password = Some(std::sync::Arc::new(password));
        self
    }

    /// The same home, to be created locked with `password`: its database key is kept wrapped
    /// under Argon2id of the password (`db.key.locked`) instead of in `db.key`.
    pub fn locked_with(mut self, password: Zeroizing<String>) -> Self {
        self.lock_new = true;
        self.with_password(password)
    }

    /// Whether the home's database key is locked with a password.
    pub fn is_locked(&self) -> bool {
        self.locked_key_path().exists()
    }

    /// Path of the password-locked database key.
    pub fn locked_key_path(&self) -> PathBuf {
        self.dir.join(LOCKED_KEY_FILE)
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
        self.make_dir()?;
        if let Some(ca) = ca {
            let dest = self.ca_path();
            let pem = std::fs::read(ca).map_err(|e| self.io(ca, e))?;
            self.write_private(&dest, &pem)?;
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
        self.write_private(&path, text.as_bytes())?;
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
        self.make_dir()?;
        let path = self.dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| self.io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(HomeLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(ConfigError::Busy(self.dir.clone())),
            Err(std::fs::TryLockError::Error(e)) => Err(self.io(&path, e)),
        }
    }

    /// Locks the home's database key under `new_password` instead of the password it is
    /// locked with now (this home's, [`Home::with_password`]): after a password change, so
    /// the home keeps opening with the account's password. The locked key is replaced
    /// atomically (a new file renamed over the old one). Returns whether the home was
    /// locked (a home that is not does not change).
    pub fn relock(&self, new_password: &str) -> Result<bool, ConfigError> {
        if !self.is_locked() {
            return Ok(false);
        }
        let key = self
            .read_key()?
            .ok_or_else(|| ConfigError::PasswordNeeded(self.dir.clone()))?;
        let path = self.locked_key_path();
        let locked = cove_account::home_key::lock(new_password.as_bytes(), key.as_bytes())
            .map_err(|e| ConfigError::LockedKey {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let mut fresh = path.clone().into_os_string();
        fresh.push(".new");
        let fresh = PathBuf::from(fresh);
        self.write_private(&fresh, &locked)?;
        std::fs::rename(&fresh, &path).map_err(|e| self.io(&path, e))?;
        Ok(true)
    }

    /// Checks that the home's database key can be read: for a locked home, that the
    /// password given ([`Home::with_password`]) unwraps it (`WrongPassword` otherwise).
    pub fn check_key(&self) -> Result<(), ConfigError> {
        self.read_key().map(drop)
    }

    /// Path of the database key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// Opens (or creates) the home's encrypted database: creates `db.key` with a fresh random
    /// key for a new home, encrypts a `cove.db` made before encryption in place, and makes the
    /// home 0700 and its files 0600.
    pub fn open_database(&self) -> Result<SqliteStore, ConfigError> {
        self.make_dir()?;
        let db = self.database_path();
        let key = match self.read_key()? {
            // A key and a plaintext file: an encryption in place was interrupted.
            Some(key) if self.database_state(&db)? == DatabaseState::Plaintext => {
                SqliteStore::encrypt_in_place(&db, &key).map_err(|source| {
                    ConfigError::Database {
                        path: db.clone(),
                        source,
                    }
                })?;
                key
            }
            Some(key) => key,
            None => {
                let mut bytes = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                let key = DatabaseKey::from_bytes(bytes);
                bytes.fill(0);
                match self.database_state(&db)? {
                    DatabaseState::Absent => {}
                    DatabaseState::Plaintext => {
                        // The key first: if the encryption is interrupted, the next open
                        // finds the plaintext file and the key, and encrypts again.
                        self.write_key(&key)?;
                        SqliteStore::encrypt_in_place(&db, &key).map_err(|source| {
                            ConfigError::Database {
                                path: db.clone(),
                                source,
                            }
                        })?;
                    }
                    DatabaseState::Encrypted => return Err(ConfigError::DatabaseKeyMissing(db)),
                }
                self.write_key(&key)?;
                key
            }
        };
        // SQLite gives the WAL and shared-memory files the database file's mode: create the
        // database 0600 before SQLite does.
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .append(true)
            .mode(0o600)
            .open(&db)
            .map_err(|e| self.io(&db, e))?;
        let store = match SqliteStore::open_encrypted(&db, &key, Durability::Process) {
            Ok(store) => store,
            Err(StoreError::WrongKey) => return Err(ConfigError::DatabaseKeyMismatch(db)),
            Err(source) => return Err(ConfigError::Database { path: db, source }),
        };
        self.make_files_private()?;
        Ok(store)
    }

    /// The key of the home's database (`None` for a home without one yet): the drive sync
    /// engine encrypts its own state files under the home with it.
    pub fn database_key(&self) -> Result<Option<DatabaseKey>, ConfigError> {
        self.read_key()
    }

    /// What `cove.db` is, from its first bytes.
    fn database_state(&self, db: &Path) -> Result<DatabaseState, ConfigError> {
        let mut file = match std::fs::File::open(db) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DatabaseState::Absent),
            Err(e) => return Err(self.io(db, e)),
        };
        let mut header = Vec::with_capacity(16);
        std::io::Read::take(&mut file, 16)
            .read_to_end(&mut header)
            .map_err(|e| self.io(db, e))?;
        Ok(if header.is_empty() {
            DatabaseState::Absent
        } else if header == SQLITE_HEADER {
            DatabaseState::Plaintext
        } else {
            DatabaseState::Encrypted
        })
    }

    /// The key in `db.key` or, for a locked home, unlocked from `db.key.locked` with the
    /// password; `None` if neither file exists.
    fn read_key(&self) -> Result<Option<DatabaseKey>, ConfigError> {
        let locked_path = self.locked_key_path();
        match std::fs::read(&locked_path) {
            Ok(locked) => {
                let password = self
                    .password
                    .as_ref()
                    .ok_or_else(|| ConfigError::PasswordNeeded(self.dir.clone()))?;
                return match cove_account::home_key::unlock(password.as_bytes(), &locked) {
                    Ok(key) => Ok(Some(DatabaseKey::from_bytes(*key))),
                    Err(cove_account::AccountError::WrongPassword) => {
                        Err(ConfigError::WrongPassword(self.dir.clone()))
                    }
                    Err(e) => Err(ConfigError::LockedKey {
                        path: locked_path,
                        reason: e.to_string(),
                    }),
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(&locked_path, e)),
        }
        let path = self.key_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&path, e)),
        };
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut *bytes)
            .map_err(|_| ConfigError::DatabaseKeyMismatch(self.database_path()))?;
        Ok(Some(DatabaseKey::from_bytes(*bytes)))
    }

    /// Writes `db.key` (0600), or `db.key.locked` for a home created locked. If one exists
    /// already (another process won a race), keeps it.
    fn write_key(&self, key: &DatabaseKey) -> Result<(), ConfigError> {
        let (path, bytes) = match (&self.password, self.lock_new) {
            (Some(password), true) => {
                let locked = cove_account::home_key::lock(password.as_bytes(), key.as_bytes())
                    .map_err(|e| ConfigError::LockedKey {
                        path: self.locked_key_path(),
                        reason: e.to_string(),
                    })?;
                (self.locked_key_path(), Zeroizing::new(locked))
            }
            _ => (
                self.key_path(),
                Zeroizing::new((hex::encode(key.as_bytes()) + "\n").into_bytes()),
            ),
        };
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(self.io(&path, e)),
        };
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io(&path, e))
    }

    /// Creates the home directory if needed and makes it 0700.
    fn make_dir(&self) -> Result<(), ConfigError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.io(&self.dir, e))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| self.io(&self.dir, e))
    }

    /// Writes `bytes` to `path`, readable by the owner only.
    fn write_private(&self, path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| self.io(path, e))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(bytes))
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io(path, e))
    }

    /// Makes every file directly in the home 0600 (files of homes made before the rule).
    fn make_files_private(&self) -> Result<(), ConfigError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.io(&self.dir, e))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(|e| self.io(&path, e))?;
            if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| self.io(&path, e))?;
            }
        }
        Ok(())
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

    /// A home made before the database was encrypted: its plaintext `cove.db` is encrypted in
    /// place on first open, with every row kept, and its files become 0600.
    #[test]
    fn a_plaintext_home_is_encrypted_on_first_open() {
        use cove_store::{Kv as _, Namespace};
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("h"));
        std::fs::create_dir_all(home.dir()).unwrap();
        std::fs::set_permissions(home.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        {
            let old = SqliteStore::open(home.database_path()).unwrap();
            old.kv_put(Namespace::Config, b"probe", b"LEGACY-ROW-MARKER")
                .unwrap();
        }
        std::fs::set_permissions(home.database_path(), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let store = home.open_database().unwrap();
        assert_eq!(
            store.kv_get(Namespace::Config, b"probe").unwrap(),
            Some(b"LEGACY-ROW-MARKER".to_vec())
        );
        drop(store);
        let bytes = std::fs::read(home.database_path()).unwrap();
        assert!(!bytes.windows(17).any(|w| w == b"LEGACY-ROW-MARKER"));
        assert!(!bytes.starts_with(b"SQLite format 3"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(home.dir()), 0o700);
        assert_eq!(mode(&home.database_path()), 0o600);
        assert_eq!(mode(&home.key_path()), 0o600);
        // And it opens again with the key it was given.
        let again = home.open_database().unwrap();
        assert!(again.kv_get(Namespace::Config, b"probe").unwrap().is_some());
    }
}
