//! Password accounts, the client side (issue 11): registering a password for a device's
//! user (with the recovery key), showing the recovery key again, changing the password,
//! resetting a forgotten one with the recovery key, and deleting the account.
//!
//! OPAQUE and the bundle format are `cove-account`'s; this module only sends the requests
//! (`PROTOCOL.md`, "Password accounts"). Each operation runs on its own short connection to
//! the relay ([`RawConnection`]), never on a device's session. Registration authenticates
//! that connection as the device (the relay registers a password only for an authenticated
//! device's own user); the others prove the password (an OPAQUE login) or the recovery key
//! (a signed recovery-bundle fetch) on a connection that need not authenticate, so they work
//! from any machine. Argon2id runs on the blocking pool.

use std::sync::Arc;

use cove_account::opaque;
use cove_account::{AccountBundle, WrapKind};
pub use cove_account::{AccountError, RecoveryKey};
use cove_wire::sign::{ChannelBinding, password_reset_message, recovery_fetch_message};
use cove_wire::{ErrorCode, ErrorReply, Payload, Reply, Request, Signature, UserName};
use ed25519_dalek::{Signer as _, SigningKey};

use crate::device::DeviceError;
use crate::raw::{RawConnection, RawError};
use crate::transport;

/// Where an account lives: the relay and how to trust it.
#[derive(Clone)]
pub struct AccountServer {
    /// The relay, as `wss://HOST:PORT`.
    pub server: String,
    /// The TLS configuration to reach it.
    pub tls: Arc<rustls::ClientConfig>,
}

impl AccountServer {
    /// The relay at `server`, trusting `ca` (a PEM file) if given, else the web PKI.
    pub fn new(server: &str, ca: Option<&std::path::Path>) -> Result<AccountServer, DeviceError> {
        transport::endpoint_url(server)?;
        let trust = match ca {
            Some(ca) => {
                transport::read_certs(ca)?;
                transport::TlsTrust::CaFile(ca.to_owned())
            }
            None => transport::TlsTrust::WebPki,
        };
        Ok(AccountServer {
            server: server.to_owned(),
            tls: Arc::new(transport::client_config(&trust)?),
        })
    }

    pub(crate) async fn connect(&self) -> Result<(RawConnection, [u8; 32]), DeviceError> {
        Ok(RawConnection::open(&self.server, Arc::clone(&self.tls)).await?)
    }
}

/// One OPAQUE registration round on `conn` for `password` (the start request made by
/// `start`: a first registration or a replacement), then `bundle` wrapped under the new
/// export key. Returns the registration upload and the password-wrapped bundle.
async fn opaque_registration(
    conn: &mut RawConnection,
    user: &UserName,
    bundle: &AccountBundle,
    password: &[u8],
    start: impl FnOnce(Payload) -> Request,
) -> Result<(Vec<u8>, Vec<u8>), DeviceError> {
    let (state, request) = opaque::client_register_start(password)?;
    let response = match answer(conn.request(start(Payload(request))).await)? {
        Reply::AccountRegisterResponse { response } => response,
        other => return Err(unexpected(&other)),
    };
    let name = user.as_str().to_owned();
    let (upload, export_key) =
        blocking(move || opaque::client_register_finish(state, &name, response.as_bytes())).await?;
    let password_bundle = bundle.wrap(user.as_str(), WrapKind::Password, export_key.as_bytes())?;
    Ok((upload, password_bundle))
}

/// Registers `password` for `user` on `conn`, authenticated as one of the user's devices:
/// OPAQUE registration, then the account bundle (`identity_seed`, a fresh backup key, a
/// fresh recovery key) wrapped under the export key and under the recovery key. Returns the
/// bundle (its recovery and backup keys are the caller's to keep and show).
pub(crate) async fn register(
    conn: &mut RawConnection,
    user: &UserName,
    identity_seed: [u8; 32],
    password: &[u8],
) -> Result<AccountBundle, DeviceError> {
    let bundle = AccountBundle::new(identity_seed);
    let recovery = bundle.recovery_key();
    let (upload, password_bundle) = opaque_registration(conn, user, &bundle, password, |request| {
        Request::AccountRegisterStart { request }
    })
    .await?;
    let recovery_bundle = bundle.wrap(user.as_str(), WrapKind::Recovery, recovery.as_bytes())?;
    let recovery_key = recovery.auth_key()?.verifying_key().to_bytes();
    match answer(
        conn.request(Request::AccountRegisterFinish {
            upload: Payload(upload),
            password_bundle: Payload(password_bundle),
            recovery_bundle: Payload(recovery_bundle),
            recovery_key,
        })
        .await,
    )? {
        Reply::AccountRegistered => Ok(bundle),
        other => Err(unexpected(&other)),
    }
}

/// Logs in as `user` with `password` on `conn` (OPAQUE) and unwraps the account bundle the
/// relay sends after a successful login. [`AccountError::LoginFailed`] for a wrong password
/// and for a user without an account alike.
pub async fn login(
    conn: &mut RawConnection,
    user: &UserName,
    password: &[u8],
) -> Result<AccountBundle, DeviceError> {
    let (state, request) = opaque::client_login_start(password)?;
    let (response, ksf_version) = match answer(
        conn.request(Request::AccountLoginStart {
            user: user.clone(),
            request: Payload(request),
        })
        .await,
    )? {
        Reply::AccountLoginResponse {
            response,
            ksf_version,
        } => (response, ksf_version),
        other => return Err(unexpected(&other)),
    };
    let name = user.as_str().to_owned();
    let finish = blocking(move || {
        opaque::client_login_finish(state, &name, ksf_version, response.as_bytes())
    })
    .await?;
    let password_bundle = match answer(
        conn.request(Request::AccountLoginFinish {
            finalization: Payload(finish.finalization),
        })
        .await,
    )? {
        Reply::AccountLoggedIn { password_bundle } => password_bundle,
        other => return Err(unexpected(&other)),
    };
    Ok(AccountBundle::unwrap(
        password_bundle.as_bytes(),
        user.as_str(),
        WrapKind::Password,
        finish.export_key.as_bytes(),
    )?)
}

/// The recovery key of `user`'s account, after an OPAQUE login with `password` (the
/// account bundle carries it).
pub async fn show_recovery_key(
    server: &AccountServer,
    user: &UserName,
    password: &[u8],
) -> Result<RecoveryKey, DeviceError> {
    let (mut conn, _) = server.connect().await?;
    let bundle = login(&mut conn, user, password).await?;
    conn.close().await;
    Ok(bundle.recovery_key())
}

/// Changes `user`'s password: an OPAQUE login with `current` on a fresh connection, then a
/// new OPAQUE registration for `new` on the same connection, whose record and re-wrapped
/// bundle replace the old ones at the relay in one transaction. The recovery bundle stays;
/// other devices are not affected.
pub async fn change_password(
    server: &AccountServer,
    user: &UserName,
    current: &[u8],
    new: &[u8],
) -> Result<(), DeviceError> {
    let (mut conn, _) = server.connect().await?;
    let bundle = login(&mut conn, user, current).await?;
    replace_password(&mut conn, user, &bundle, new, None).await?;
    conn.close().await;
    Ok(())
}

/// Resets a forgotten password with the recovery key, from any machine: fetches the
/// recovery-wrapped bundle (the recovery auth key signs this connection's challenge and
/// channel binding), unwraps it, and replaces the password with `new`, the replacement
/// signed by the recovery auth key over this connection and the new record and bundle.
/// [`AccountError::LoginFailed`] for a key that is not this account's.
pub async fn reset_password(
    server: &AccountServer,
    user: &UserName,
    recovery: &RecoveryKey,
    new: &[u8],
) -> Result<(), DeviceError> {
    let (mut conn, nonce) = server.connect().await?;
    let channel = conn.channel_binding();
    let auth = recovery.auth_key()?;
    let signature = auth.sign(&recovery_fetch_message(&nonce, &channel, user));
    let recovery_bundle = match answer(
        conn.request(Request::FetchRecoveryBundle {
            user: user.clone(),
            signature: Signature(signature.to_bytes()),
        })
        .await,
    )? {
        Reply::RecoveryBundle { recovery_bundle } => recovery_bundle,
        other => return Err(unexpected(&other)),
    };
    let bundle = AccountBundle::unwrap(
        recovery_bundle.as_bytes(),
        user.as_str(),
        WrapKind::Recovery,
        recovery.as_bytes(),
    )?;
    let proof = ResetProof {
        key: &auth,
        nonce,
        channel,
    };
    replace_password(&mut conn, user, &bundle, new, Some(proof)).await?;
    conn.close().await;
    Ok(())
}

/// Deletes `user`'s account after an OPAQUE login with `password`: the relay removes the
/// record, both bundles, the device list, every device of the user and their blobs, and
/// frees the name. The caller removes the local home afterwards.
pub async fn delete_account(
    server: &AccountServer,
    user: &UserName,
    password: &[u8],
) -> Result<(), DeviceError> {
    let (mut conn, _) = server.connect().await?;
    login(&mut conn, user, password).await?;
    match answer(conn.request(Request::AccountDelete).await)? {
        Reply::AccountDeleted => {}
        other => return Err(unexpected(&other)),
    }
    conn.close().await;
    Ok(())
}

/// What a reset signs with (see [`password_reset_message`]).
struct ResetProof<'a> {
    key: &'a SigningKey,
    nonce: [u8; 32],
    channel: ChannelBinding,
}

/// Registers `new` as `user`'s password on `conn`, which proved the current password or the
/// recovery key, and re-wraps `bundle` under the new export key.
async fn replace_password(
    conn: &mut RawConnection,
    user: &UserName,
    bundle: &AccountBundle,
    new: &[u8],
    reset: Option<ResetProof<'_>>,
) -> Result<(), DeviceError> {
    let (upload, password_bundle) = opaque_registration(conn, user, bundle, new, |request| {
        Request::AccountPasswordStart { request }
    })
    .await?;
    let reset_signature = reset.map(|proof| {
        let message = password_reset_message(
            &proof.nonce,
            &proof.channel,
            user,
            &upload,
            &password_bundle,
        );
        Signature(proof.key.sign(&message).to_bytes())
    });
    match answer(
        conn.request(Request::AccountPasswordFinish {
            upload: Payload(upload),
            password_bundle: Payload(password_bundle),
            reset_signature,
        })
        .await,
    )? {
        Reply::AccountPasswordChanged => Ok(()),
        other => Err(unexpected(&other)),
    }
}

/// The relay's reply, with `LoginFailed` as [`AccountError::LoginFailed`] (its message
/// says "wrong user name or password") and any other refusal as [`RawError::Refused`].
fn answer(result: Result<Result<Reply, ErrorReply>, RawError>) -> Result<Reply, DeviceError> {
    match result? {
        Ok(reply) => Ok(reply),
        Err(e) if e.code == ErrorCode::LoginFailed => Err(AccountError::LoginFailed.into()),
        Err(e) => Err(RawError::Refused(e).into()),
    }
}

fn unexpected(reply: &Reply) -> DeviceError {
    RawError::Unexpected(format!("{reply:?}")).into()
}

/// Runs a key-stretching step (Argon2id) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AccountError> + Send + 'static,
) -> Result<T, DeviceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| DeviceError::Account(AccountError::Internal("key stretching task failed")))?
        .map_err(DeviceError::Account)
}
