//! Password accounts: OPAQUE registration and login, the wrapped bundles, the recovery-key
//! fetch. The relay runs only OPAQUE's server half (`cove-account`): it stores the record
//! and the two wrapped bundles and never sees the password, the export key or the bundle's
//! contents.
//!
//! The OPAQUE state between a start and its finish lives in the connection's
//! [`AccountSession`], never in the store. A login for a user without an account is answered
//! with opaque-ke's fake response and finishes with the same `LoginFailed` as a wrong
//! password. Rate limits are the connection layer's.

use cove_account::bundle::WRAPPED_LEN;
use cove_account::opaque::{self, ServerLoginState};
use cove_account::{AccountError, KSF_VERSION, ServerSecrets};
use cove_wire::limits::MAX_ACCOUNT_MESSAGE_BYTES;
use cove_wire::{ErrorCode, ErrorReply, Payload, Reply, Signature, UserName};
use ed25519_dalek::VerifyingKey;
use tracing::{debug, info};

use crate::reply::{invalid, store_error_reply};
use crate::store::{Account, RelayStore, StoreError};

/// A login between its start and its finish.
struct PendingLogin {
    user: UserName,
    state: ServerLoginState,
    /// The wrapped bundle, sent after a successful finish; `None` for a user without an
    /// account (whose fake login cannot succeed).
    password_bundle: Option<Vec<u8>>,
}

/// A recovery-bundle fetch that succeeded on this connection: what a reset's signature
/// must cover.
struct Recovered {
    user: UserName,
    nonce: [u8; 32],
    channel: cove_wire::sign::ChannelBinding,
    key: VerifyingKey,
}

/// A password replacement between its start and its finish.
struct Replacing {
    user: UserName,
    /// For a reset: the recovery proof the finish's signature is checked against; `None`
    /// for a change after a password login.
    reset: Option<Recovered>,
}

/// One connection's account state.
#[derive(Default)]
pub struct AccountSession {
    /// A registration was started on this connection for its own user.
    registering: Option<UserName>,
    /// A login in progress.
    login: Option<PendingLogin>,
    /// The user this connection logged in as with a password.
    logged_in: Option<UserName>,
    /// The user whose recovery bundle this connection fetched (the recovery key's proof).
    recovered: Option<Recovered>,
    /// A password change or reset in progress.
    replacing: Option<Replacing>,
    /// The devices of the user this connection just deleted, for the connection layer to
    /// disconnect (and their user, whose blobs it removes); taken with
    /// [`AccountSession::take_deleted`].
    deleted: Option<(UserName, Vec<cove_wire::DeviceId>)>,
}

impl std::fmt::Debug for AccountSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSession")
            .field("registering", &self.registering)
            .field("logging_in", &self.login.as_ref().map(|l| &l.user))
            .field("logged_in", &self.logged_in)
            .finish()
    }
}

fn login_failed() -> ErrorReply {
    ErrorReply::new(ErrorCode::LoginFailed, "wrong user name or password")
}

fn too_large(what: &Payload) -> Result<(), ErrorReply> {
    if what.len() > MAX_ACCOUNT_MESSAGE_BYTES {
        return Err(ErrorReply::new(
            ErrorCode::TooLarge,
            "account message too large",
        ));
    }
    Ok(())
}

fn malformed(e: &AccountError) -> ErrorReply {
    debug!(error = %e, "account message refused");
    ErrorReply::new(ErrorCode::InvalidRequest, "malformed account message")
}

impl AccountSession {
    /// The user this connection logged in as with a password, if any.
    pub fn logged_in(&self) -> Option<&UserName> {
        self.logged_in.as_ref()
    }

    /// Whether an account operation is under way on this connection: a login between its
    /// start and finish, a password or recovery proof not used yet, or a password change or
    /// reset between its start and finish. Each step ahead of the client runs Argon2id, which
    /// may take seconds on a slow machine, so such a connection is not closed for not
    /// authenticating as a device (the idle timeout still applies).
    pub fn in_progress(&self) -> bool {
        self.login.is_some()
            || self.logged_in.is_some()
            || self.recovered.is_some()
            || self.replacing.is_some()
    }

    /// The user an `AccountDelete` on this connection just deleted, with its devices (to
    /// disconnect); `None` otherwise.
    pub fn take_deleted(&mut self) -> Option<(UserName, Vec<cove_wire::DeviceId>)> {
        self.deleted.take()
    }

    /// `AccountPasswordStart`: the registration response for the new password of the user
    /// this connection proved itself to be, by the recovery key (a fetch: a reset) or else
    /// by the password (a login: a change). Uses the proof up.
    pub fn password_start(
        &mut self,
        store: &dyn RelayStore,
        secrets: &ServerSecrets,
        request: &Payload,
    ) -> Result<Reply, ErrorReply> {
        too_large(request)?;
        self.replacing = None;
        let replacing = if let Some(recovered) = self.recovered.take() {
            Replacing {
                user: recovered.user.clone(),
                reset: Some(recovered),
            }
        } else if let Some(user) = self.logged_in.take() {
            Replacing { user, reset: None }
        } else {
            return Err(ErrorReply::new(
                ErrorCode::Unauthenticated,
                "log in with the password or fetch the recovery bundle first",
            ));
        };
        if store
            .account(&replacing.user)
            .map_err(|e| store_error_reply(&e))?
            .is_none()
        {
            return Err(login_failed());
        }
        let response =
            opaque::server_register_start(secrets, replacing.user.as_str(), request.as_bytes())
                .map_err(|e| malformed(&e))?;
        self.replacing = Some(replacing);
        Ok(Reply::AccountRegisterResponse {
            response: Payload(response),
        })
    }

    /// `AccountPasswordFinish`: replaces the record, the KSF version and the password
    /// bundle atomically. A reset needs the recovery key's signature over
    /// [`cove_wire::sign::password_reset_message`] (`LoginFailed` otherwise); a change must
    /// carry none.
    pub fn password_finish(
        &mut self,
        store: &dyn RelayStore,
        upload: &Payload,
        password_bundle: Payload,
        reset_signature: Option<Signature>,
    ) -> Result<Reply, ErrorReply> {
        too_large(upload)?;
        let Some(replacing) = self.replacing.take() else {
            return Err(invalid("no password change started on this connection"));
        };
        if password_bundle.len() != WRAPPED_LEN {
            return Err(invalid("a wrapped bundle of the wrong length"));
        }
        match (&replacing.reset, reset_signature) {
            (Some(proof), Some(signature)) => {
                let message = cove_wire::sign::password_reset_message(
                    &proof.nonce,
                    &proof.channel,
                    &proof.user,
                    upload.as_bytes(),
                    password_bundle.as_bytes(),
                );
                let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
                if proof.key.verify_strict(&message, &signature).is_err() {
                    info!(user = %proof.user, "password reset refused: bad signature");
                    return Err(login_failed());
                }
            }
            (Some(_), None) => return Err(invalid("a reset needs the recovery key's signature")),
            (None, Some(_)) => return Err(invalid("a password change carries no signature")),
            (None, None) => {}
        }
        let record =
            opaque::server_register_finish(upload.as_bytes()).map_err(|e| malformed(&e))?;
        store
            .replace_password(
                &replacing.user,
                record,
                KSF_VERSION,
                password_bundle.into_vec(),
            )
            .map_err(|e| store_error_reply(&e))?;
        let how = if replacing.reset.is_some() {
            "reset with the recovery key"
        } else {
            "changed"
        };
        info!(user = %replacing.user, "password {how}");
        Ok(Reply::AccountPasswordChanged)
    }

    /// `AccountDelete`: deletes the user this connection logged in as with the password, and
    /// everything of it ([`RelayStore::delete_user`]). Uses the login up.
    pub fn delete(&mut self, store: &dyn RelayStore) -> Result<Reply, ErrorReply> {
        let Some(user) = self.logged_in.take() else {
            return Err(ErrorReply::new(
                ErrorCode::Unauthenticated,
                "log in with the password first",
            ));
        };
        let devices = store
            .delete_user(&user)
            .map_err(|e| store_error_reply(&e))?;
        info!(%user, devices = devices.len(), "account deleted");
        self.deleted = Some((user, devices));
        Ok(Reply::AccountDeleted)
    }

    /// `FetchRecoveryBundle` ([`fetch_recovery_bundle`]); on success the connection holds
    /// the recovery key's proof for a reset.
    pub fn fetch_recovery(
        &mut self,
        store: &dyn RelayStore,
        challenge: Option<([u8; 32], cove_wire::sign::ChannelBinding)>,
        user: &UserName,
        signature: &Signature,
    ) -> Result<Reply, ErrorReply> {
        self.recovered = None;
        let reply = fetch_recovery_bundle(store, challenge, user, signature)?;
        // The fetch verified: the proof is the challenge it used and the key it checked.
        if let (Some((nonce, channel)), Ok(Some(account))) = (challenge, store.account(user))
            && let Ok(key) = VerifyingKey::from_bytes(&account.recovery_key)
        {
            self.recovered = Some(Recovered {
                user: user.clone(),
                nonce,
                channel,
                key,
            });
        }
        Ok(reply)
    }

    /// `AccountRegisterStart` of the authenticated connection of `user`: the registration
    /// response, if the user has no account yet.
    pub fn register_start(
        &mut self,
        store: &dyn RelayStore,
        secrets: &ServerSecrets,
        user: UserName,
        request: &Payload,
    ) -> Result<Reply, ErrorReply> {
        too_large(request)?;
        if store
            .account(&user)
            .map_err(|e| store_error_reply(&e))?
            .is_some()
        {
            return Err(invalid("the user already has an account"));
        }
        let response = opaque::server_register_start(secrets, user.as_str(), request.as_bytes())
            .map_err(|e| malformed(&e))?;
        self.registering = Some(user);
        Ok(Reply::AccountRegisterResponse {
            response: Payload(response),
        })
    }

    /// `AccountRegisterFinish` of the authenticated connection of `user`: stores the record,
    /// the KSF version, both wrapped bundles and the recovery key, atomically.
    pub fn register_finish(
        &mut self,
        store: &dyn RelayStore,
        user: UserName,
        upload: &Payload,
        password_bundle: Payload,
        recovery_bundle: Payload,
        recovery_key: [u8; 32],
    ) -> Result<Reply, ErrorReply> {
        too_large(upload)?;
        if self.registering.take().as_ref() != Some(&user) {
            return Err(invalid("no registration started on this connection"));
        }
        if password_bundle.len() != WRAPPED_LEN || recovery_bundle.len() != WRAPPED_LEN {
            return Err(invalid("a wrapped bundle of the wrong length"));
        }
        if VerifyingKey::from_bytes(&recovery_key).is_err() {
            return Err(invalid("the recovery key is not an Ed25519 public key"));
        }
        let record =
            opaque::server_register_finish(upload.as_bytes()).map_err(|e| malformed(&e))?;
        let account = Account {
            record,
            ksf_version: KSF_VERSION,
            password_bundle: password_bundle.into_vec(),
            recovery_bundle: recovery_bundle.into_vec(),
            recovery_key,
        };
        store
            .create_account(&user, account)
            .map_err(|e| store_error_reply(&e))?;
        info!(%user, "account registered");
        Ok(Reply::AccountRegistered)
    }

    /// `AccountLoginStart`: the credential response, a fake one for a user without an
    /// account (the same length and shape), and the KSF version.
    pub fn login_start(
        &mut self,
        store: &dyn RelayStore,
        secrets: &ServerSecrets,
        user: UserName,
        request: &Payload,
    ) -> Result<Reply, ErrorReply> {
        too_large(request)?;
        self.login = None;
        let account = store.account(&user).map_err(|e| store_error_reply(&e))?;
        let record = account.as_ref().map(|a| a.record.as_slice());
        let (state, response) =
            opaque::server_login_start(secrets, user.as_str(), record, request.as_bytes())
                .map_err(|e| malformed(&e))?;
        let ksf_version = account.as_ref().map_or(KSF_VERSION, |a| a.ksf_version);
        self.login = Some(PendingLogin {
            user,
            state,
            password_bundle: account.map(|a| a.password_bundle),
        });
        Ok(Reply::AccountLoginResponse {
            response: Payload(response),
            ksf_version,
        })
    }

    /// `AccountLoginFinish`: the password-wrapped bundle if the client proved the password;
    /// `LoginFailed` otherwise, and for a user without an account. On success the
    /// connection is logged in as the user.
    pub fn login_finish(&mut self, finalization: &Payload) -> Result<Reply, ErrorReply> {
        too_large(finalization)?;
        let Some(pending) = self.login.take() else {
            return Err(invalid("no login started on this connection"));
        };
        let verified = opaque::server_login_finish(
            pending.state,
            pending.user.as_str(),
            finalization.as_bytes(),
        );
        match (verified, pending.password_bundle) {
            (Ok(_session_key), Some(bundle)) => {
                info!(user = %pending.user, "password login");
                self.logged_in = Some(pending.user);
                Ok(Reply::AccountLoggedIn {
                    password_bundle: Payload(bundle),
                })
            }
            _ => {
                info!(user = %pending.user, "password login failed");
                Err(login_failed())
            }
        }
    }
}

/// `FetchRecoveryBundle`: the recovery-wrapped bundle if `signature` verifies with the
/// user's recovery key over [`cove_wire::sign::recovery_fetch_message`] of the connection's
/// challenge (used up by the caller) and channel binding (TLS exporter, relay certificate);
/// `LoginFailed` otherwise, including for a user without an account.
pub fn fetch_recovery_bundle(
    store: &dyn RelayStore,
    challenge: Option<([u8; 32], cove_wire::sign::ChannelBinding)>,
    user: &UserName,
    signature: &Signature,
) -> Result<Reply, ErrorReply> {
    let Some((nonce, channel)) = challenge else {
        return Err(ErrorReply::new(
            ErrorCode::AuthenticationFailed,
            "challenge already used; reconnect",
        ));
    };
    let account = match store.account(user) {
        Ok(account) => account,
        Err(StoreError::UnknownUser) => None,
        Err(e) => return Err(store_error_reply(&e)),
    };
    let Some(account) = account else {
        return Err(login_failed());
    };
    let Ok(key) = VerifyingKey::from_bytes(&account.recovery_key) else {
        return Err(login_failed());
    };
    let message = cove_wire::sign::recovery_fetch_message(&nonce, &channel, user);
    let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
    if key.verify_strict(&message, &signature).is_err() {
        info!(%user, "recovery bundle fetch refused: bad signature");
        return Err(login_failed());
    }
    Ok(Reply::RecoveryBundle {
        recovery_bundle: Payload(account.recovery_bundle),
    })
}
