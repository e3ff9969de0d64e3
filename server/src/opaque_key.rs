//! The relay's OPAQUE secrets (`opaque.key` in the data directory, mode 0600): generated on
//! the first start, loaded on every later one. Every account record is bound to them:
//! losing or replacing the file makes every password login fail.

use std::io::{ErrorKind, Write as _};
use std::path::Path;

use cove_account::ServerSecrets;

use crate::relay::StartError;

/// The file name in the data directory.
pub(crate) const FILE: &str = "opaque.key";

/// Loads the secrets from `data_dir/opaque.key`, creating the file with fresh secrets if it
/// does not exist.
pub(crate) fn load(data_dir: &Path) -> Result<ServerSecrets, StartError> {
    let path = data_dir.join(FILE);
    let fail = |source: std::io::Error| StartError::OpaqueKey {
        path: path.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) => ServerSecrets::from_bytes(&bytes)
            .map_err(|e| fail(std::io::Error::new(ErrorKind::InvalidData, e.to_string()))),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let secrets = ServerSecrets::generate();
            let mut options = std::fs::OpenOptions::new();
            // create_new: never overwrite secrets another process just wrote.
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&path).map_err(fail)?;
            file.write_all(&secrets.to_bytes()).map_err(fail)?;
            file.sync_all().map_err(fail)?;
            Ok(secrets)
        }
        Err(e) => Err(fail(e)),
    }
}
