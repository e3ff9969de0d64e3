//! The relay's OPAQUE secrets (`opaque.key` in the data directory, or the file `[secrets]
//! opaque_key` names, which every node of a cluster shares; mode 0600): generated on the
//! first start, loaded on every later one. Every account record is bound to them: losing or
//! replacing the file makes every password login fail, and nodes with different files cannot
//! log in each other's users.

use std::io::ErrorKind;
use std::path::Path;

use cove_account::ServerSecrets;

use crate::relay::StartError;

/// The file name in the data directory.
pub(crate) const FILE: &str = "opaque.key";

/// Loads the secrets from `path`, creating the file with fresh secrets if it does not exist
/// (two nodes creating it at once agree: see [`crate::secret_file`]). A file that does not
/// hold secrets is an error.
pub(crate) fn load(path: &Path) -> Result<ServerSecrets, StartError> {
    let fail = |source: std::io::Error| StartError::OpaqueKey {
        path: path.to_owned(),
        source,
    };
    let mut bytes =
        crate::secret_file::load_or_create(path, || ServerSecrets::generate().to_bytes().to_vec())
            .map_err(fail)?;
    let secrets = ServerSecrets::from_bytes(&bytes);
    bytes.iter_mut().for_each(|b| *b = 0);
    secrets.map_err(|e| fail(std::io::Error::new(ErrorKind::InvalidData, e.to_string())))
}
