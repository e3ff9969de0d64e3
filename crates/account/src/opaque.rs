//! OPAQUE (RFC 9807) as Cove uses it: ristretto255 for the OPRF and the 3DH key exchange,
//! SHA-512, and Argon2id as the key-stretching function. Every message crosses the network
//! as the bytes opaque-ke serializes; this module only fixes the suite, the parameters and
//! the identifiers both sides must agree on, and turns every failure into [`AccountError`].
//!
//! The client identifier is the user name, so a record registered for one name cannot be
//! replayed under another. The server identifier is left to its default, the relay's OPAQUE
//! public key: a record is bound to the relay that holds the matching [`ServerSecrets`].
//!
//! The relay stores the registration record (192 bytes) and never sees the password. Without
//! the record nothing checks a password guess offline; with the record each guess costs one
//! Argon2id evaluation at [`KSF_PARAMS`].

use argon2::{Algorithm, Argon2, Params, Version};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, Identifiers, RegistrationRequest, RegistrationResponse, RegistrationUpload,
    Ristretto255, ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup, TripleDh,
};
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::AccountError;

/// Cove's OPAQUE cipher suite.
pub struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = Ristretto255;
    type KeyExchange = TripleDh<Ristretto255, sha2::Sha512>;
    type Ksf = Argon2<'static>;
}

/// The Argon2id parameters of the key-stretching function, version 1: memory in KiB,
/// iterations, lanes. RFC 9106 §4's second recommended option uses 64 MiB; OWASP's
/// password-storage sheet lists 46 MiB with t=1 as a floor. Cove takes 128 MiB and five
/// passes, so one evaluation costs about 0.55 s of one core on the machines Cove is measured
/// on (0.45 s at four passes, just under the 0.5–1 s aimed for; see BENCHMARKS.md,
/// "Login"), which is what an attacker holding the record pays per guess.
pub const KSF_PARAMS: KsfParams = KsfParams {
    memory_kib: 128 * 1024,
    iterations: 5,
    lanes: 1,
};

/// The version of [`KSF_PARAMS`]. The relay keeps it with the record and returns it with
/// the login response, so parameters can be raised later: a client refuses a version it
/// does not know rather than stretching with the wrong parameters (which would look like a
/// wrong password).
pub const KSF_VERSION: u8 = 1;

/// Argon2id parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KsfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes (parallelism).
    pub lanes: u32,
}

impl KsfParams {
    /// The Argon2id instance for these parameters.
    fn argon2(&self) -> Result<Argon2<'static>, AccountError> {
        let params = Params::new(self.memory_kib, self.iterations, self.lanes, None)
            .map_err(|_| AccountError::Internal("bad Argon2 parameters"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// The parameters of a KSF version, if this build knows it.
    pub fn for_version(version: u8) -> Option<KsfParams> {
        (version == KSF_VERSION).then_some(KSF_PARAMS)
    }
}

/// OPAQUE's export key: 64 bytes only the client learns, the same at registration and at
/// every login with the right password. Cove derives the bundle key from it
/// ([`crate::bundle`]). Zeroed on drop.
pub struct ExportKey(Zeroizing<[u8; 64]>);

impl ExportKey {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl std::fmt::Debug for ExportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportKey(..)")
    }
}

fn export_key(bytes: &[u8]) -> Result<ExportKey, AccountError> {
    let mut key = Zeroizing::new([0u8; 64]);
    if bytes.len() != 64 {
        return Err(AccountError::Internal("export key length"));
    }
    key.copy_from_slice(bytes);
    Ok(ExportKey(key))
}

fn identifiers(user: &str) -> Identifiers<'_> {
    Identifiers {
        client: Some(user.as_bytes()),
        server: None,
    }
}

/// A client's registration in progress (between its two messages).
pub struct ClientRegistrationState {
    state: ClientRegistration<Suite>,
    password: Zeroizing<Vec<u8>>,
}

/// Starts registering `password`: the state to keep and the request for the relay.
pub fn client_register_start(
    password: &[u8],
) -> Result<(ClientRegistrationState, Vec<u8>), AccountError> {
    let start = ClientRegistration::<Suite>::start(&mut OsRng, password)
        .map_err(|_| AccountError::Internal("registration start"))?;
    let request = start.message.serialize().to_vec();
    Ok((
        ClientRegistrationState {
            state: start.state,
            password: Zeroizing::new(password.to_vec()),
        },
        request,
    ))
}

/// Finishes a registration with the relay's response: the upload for the relay (it becomes
/// the record) and the export key.
pub fn client_register_finish(
    state: ClientRegistrationState,
    user: &str,
    response: &[u8],
) -> Result<(Vec<u8>, ExportKey), AccountError> {
    let response = RegistrationResponse::<Suite>::deserialize(response)
        .map_err(|_| AccountError::Malformed("registration response"))?;
    let ksf = KSF_PARAMS.argon2()?;
    let finish = state
        .state
        .finish(
            &mut OsRng,
            &state.password,
            response,
            ClientRegistrationFinishParameters::new(identifiers(user), Some(&ksf)),
        )
        .map_err(|_| AccountError::Malformed("registration response"))?;
    Ok((
        finish.message.serialize().to_vec(),
        export_key(&finish.export_key)?,
    ))
}

/// A client's login in progress (between its two messages).
pub struct ClientLoginState {
    state: ClientLogin<Suite>,
    password: Zeroizing<Vec<u8>>,
}

/// Starts a login with `password`: the state to keep and the request for the relay.
pub fn client_login_start(password: &[u8]) -> Result<(ClientLoginState, Vec<u8>), AccountError> {
    let start = ClientLogin::<Suite>::start(&mut OsRng, password)
        .map_err(|_| AccountError::Internal("login start"))?;
    let request = start.message.serialize().to_vec();
    Ok((
        ClientLoginState {
            state: start.state,
            password: Zeroizing::new(password.to_vec()),
        },
        request,
    ))
}

/// What a successful login gives the client.
pub struct ClientLoginFinish {
    /// The message that proves the login to the relay.
    pub finalization: Vec<u8>,
    /// The export key (the same as at registration).
    pub export_key: ExportKey,
    /// The session key both sides share (64 bytes).
    pub session_key: Zeroizing<Vec<u8>>,
}

/// Finishes a login with the relay's response and the KSF version it returned.
/// [`AccountError::LoginFailed`] for a wrong password, an unknown user or a response from a
/// relay that does not hold the user's record: the three cannot be told apart.
pub fn client_login_finish(
    state: ClientLoginState,
    user: &str,
    ksf_version: u8,
    response: &[u8],
) -> Result<ClientLoginFinish, AccountError> {
    let params =
        KsfParams::for_version(ksf_version).ok_or(AccountError::UnsupportedVersion(ksf_version))?;
    let response = CredentialResponse::<Suite>::deserialize(response)
        .map_err(|_| AccountError::Malformed("login response"))?;
    let ksf = params.argon2()?;
    let finish = state
        .state
        .finish(
            &mut OsRng,
            &state.password,
            response,
            ClientLoginFinishParameters::new(None, identifiers(user), Some(&ksf)),
        )
        .map_err(|e| match e {
            opaque_ke::errors::ProtocolError::InvalidLoginError => AccountError::LoginFailed,
            _ => AccountError::Malformed("login response"),
        })?;
    Ok(ClientLoginFinish {
        finalization: finish.message.serialize().to_vec(),
        export_key: export_key(&finish.export_key)?,
        session_key: Zeroizing::new(finish.session_key.to_vec()),
    })
}

/// The relay's long-term OPAQUE secrets: its key pair and OPRF seed. Generated once and kept
/// (a file readable only by the relay); losing them invalidates every record.
pub struct ServerSecrets(ServerSetup<Suite>);

impl ServerSecrets {
    /// Fresh secrets.
    pub fn generate() -> ServerSecrets {
        ServerSecrets(ServerSetup::<Suite>::new(&mut OsRng))
    }

    /// The bytes to persist.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.serialize().to_vec())
    }

    /// Secrets persisted with [`ServerSecrets::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<ServerSecrets, AccountError> {
        ServerSetup::<Suite>::deserialize(bytes)
            .map(ServerSecrets)
            .map_err(|_| AccountError::Malformed("server secrets"))
    }
}

impl std::fmt::Debug for ServerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecrets(..)")
    }
}

/// The relay's answer to a registration request for `user`.
pub fn server_register_start(
    secrets: &ServerSecrets,
    user: &str,
    request: &[u8],
) -> Result<Vec<u8>, AccountError> {
    let request = RegistrationRequest::<Suite>::deserialize(request)
        .map_err(|_| AccountError::Malformed("registration request"))?;
    let start = ServerRegistration::<Suite>::start(&secrets.0, request, user.as_bytes())
        .map_err(|_| AccountError::Malformed("registration request"))?;
    Ok(start.message.serialize().to_vec())
}

/// The record the relay stores, from the client's registration upload.
pub fn server_register_finish(upload: &[u8]) -> Result<Vec<u8>, AccountError> {
    let upload = RegistrationUpload::<Suite>::deserialize(upload)
        .map_err(|_| AccountError::Malformed("registration upload"))?;
    Ok(ServerRegistration::<Suite>::finish(upload)
        .serialize()
        .to_vec())
}

/// The relay's login in progress (between the response and the client's finalization).
pub struct ServerLoginState(ServerLogin<Suite>);

/// The relay's answer to a login request. `record` is `None` for a user without one: the
/// answer is then a fake one derived from the relay's secrets and the name, which a client
/// cannot tell from a real one until its login fails like a wrong password's.
pub fn server_login_start(
    secrets: &ServerSecrets,
    user: &str,
    record: Option<&[u8]>,
    request: &[u8],
) -> Result<(ServerLoginState, Vec<u8>), AccountError> {
    let record = match record {
        Some(bytes) => Some(
            ServerRegistration::<Suite>::deserialize(bytes)
                .map_err(|_| AccountError::Malformed("stored record"))?,
        ),
        None => None,
    };
    let request = CredentialRequest::<Suite>::deserialize(request)
        .map_err(|_| AccountError::Malformed("login request"))?;
    let start = ServerLogin::start(
        &mut OsRng,
        &secrets.0,
        record,
        request,
        user.as_bytes(),
        ServerLoginParameters {
            context: None,
            identifiers: identifiers(user),
        },
    )
    .map_err(|_| AccountError::Malformed("login request"))?;
    Ok((
        ServerLoginState(start.state),
        start.message.serialize().to_vec(),
    ))
}

/// Checks the client's finalization: the shared session key if the client knew the
/// password, else [`AccountError::LoginFailed`].
pub fn server_login_finish(
    state: ServerLoginState,
    user: &str,
    finalization: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AccountError> {
    let finalization = CredentialFinalization::<Suite>::deserialize(finalization)
        .map_err(|_| AccountError::LoginFailed)?;
    let finish = state
        .0
        .finish(
            finalization,
            ServerLoginParameters {
                context: None,
                identifiers: identifiers(user),
            },
        )
        .map_err(|_| AccountError::LoginFailed)?;
    Ok(Zeroizing::new(finish.session_key.to_vec()))
}
