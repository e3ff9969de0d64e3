//! The account rules end to end through both halves: OPAQUE registration and login, the
//! wrapped bundle, the recovery key, and what the relay's side holds.

mod bundle;
mod home_key;
mod login;
mod recovery;

use cove_account::opaque::{
    self, ExportKey, client_login_finish, client_login_start, client_register_finish,
    client_register_start, server_login_start, server_register_finish, server_register_start,
};
use cove_account::{AccountError, KSF_VERSION, ServerSecrets};

/// Registers `password` for `user` with `secrets`: the relay's record, the client's export
/// key, and every byte the relay saw or sent.
pub fn register(secrets: &ServerSecrets, user: &str, password: &[u8]) -> Registered {
    let (state, request) = client_register_start(password).expect("start");
    let response = server_register_start(secrets, user, &request).expect("server start");
    let (upload, export_key) = client_register_finish(state, user, &response).expect("finish");
    let record = server_register_finish(&upload).expect("record");
    Registered {
        record,
        export_key,
        wire: [request, response, upload].concat(),
    }
}

/// What [`register`] returns.
pub struct Registered {
    /// What the relay stores.
    pub record: Vec<u8>,
    /// What only the client learns.
    pub export_key: ExportKey,
    /// Every message of the registration, concatenated.
    pub wire: Vec<u8>,
}

/// A login attempt through both halves: the client's result, and the relay's verdict on the
/// client's finalization when the client produced one.
pub fn login(
    secrets: &ServerSecrets,
    user: &str,
    record: Option<&[u8]>,
    password: &[u8],
) -> Result<(opaque::ClientLoginFinish, Vec<u8>), AccountError> {
    let (state, request) = client_login_start(password)?;
    let (server_state, response) = server_login_start(secrets, user, record, &request)?;
    let client = client_login_finish(state, user, KSF_VERSION, &response)?;
    let server_key = opaque::server_login_finish(server_state, user, &client.finalization)?;
    Ok((client, server_key.to_vec()))
}
