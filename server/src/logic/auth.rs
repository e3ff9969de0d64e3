//! Registration and challenge-response authentication (Ed25519 device keys).

use cove_wire::sign::ChannelBinding;
use cove_wire::{DeviceId, DeviceKey, ErrorCode, ErrorReply, Reply, Signature, UserName};
use ed25519_dalek::VerifyingKey;
use tracing::{debug, info, warn};

use crate::reply::store_error_reply;
use crate::store::RelayStore;

use super::{Answer, Connection};

/// A request that authenticates a connection.
#[derive(Debug)]
pub enum Auth {
    /// A new user with its first device.
    Register {
        /// The user name to claim.
        user: UserName,
        /// The device's public key.
        key: DeviceKey,
        /// Signature by `key` over the challenge.
        signature: Signature,
    },
    /// A further device of an existing user, authorised by one of its devices.
    RegisterDevice {
        /// The existing user.
        user: UserName,
        /// The new device's public key.
        key: DeviceKey,
        /// Signature by `key` over the challenge.
        signature: Signature,
        /// The authorising device of `user`.
        authorizer: DeviceId,
        /// Signature by `authorizer` over the add-device message.
        authorization: Signature,
    },
    /// A further device of an existing user, registered on a connection logged in as the
    /// user with the password: the user's signed list must add its key (as for
    /// `RegisterDevice`), and no device's authorisation is needed.
    RegisterListed {
        /// The logged-in user.
        user: UserName,
        /// The new device's public key.
        key: DeviceKey,
        /// Signature by `key` over the challenge.
        signature: Signature,
    },
    /// A registered device.
    Authenticate {
        /// The device's user.
        user: UserName,
        /// The device.
        device: DeviceId,
        /// Signature by the device's registered key over the challenge.
        signature: Signature,
    },
}

impl Connection {
    /// Authenticates the connection (registering the user or device first if asked). A
    /// challenge serves one signature check: after a failed check the connection closes with
    /// `AuthenticationFailed`; after success it is this device's.
    ///
    /// On success the device's last seen time becomes `now_ms` (relay time, ms since the
    /// Unix epoch); a store failure there is logged and does not refuse the login.
    pub fn authenticate(&mut self, store: &dyn RelayStore, auth: Auth, now_ms: u64) -> Answer {
        let Some(nonce) = self.nonce else {
            return Answer::reply(Err(ErrorReply::new(
                ErrorCode::AuthenticationFailed,
                "challenge already used; reconnect",
            )));
        };
        let challenge = Challenge {
            nonce,
            channel: self.channel,
        };
        let result = match auth {
            Auth::Register {
                user,
                key,
                signature,
            } => register(store, &challenge, user, key, signature),
            Auth::RegisterDevice {
                user,
                key,
                signature,
                authorizer,
                authorization,
            } => register_device(
                store,
                &challenge,
                user,
                key,
                signature,
                authorizer,
                authorization,
            ),
            Auth::RegisterListed {
                user,
                key,
                signature,
            } => register_listed(store, &challenge, user, key, signature),
            Auth::Authenticate {
                user,
                device,
                signature,
            } => authenticate(store, &challenge, user, device, signature),
        };
        match result {
            Ok(device) => {
                if let Err(error) = store.record_seen(device, now_ms) {
                    warn!(%device, %error, "could not record the device's login time");
                }
                self.nonce = None;
                self.device = Some(device);
                Answer {
                    reply: Ok(Reply::Authenticated { device }),
                    close: None,
                    authenticated: Some(device),
                    quiet: false,
                }
            }
            Err(Refused::Reply(reply)) => Answer::reply(Err(reply)),
            Err(Refused::BadSignature(what)) => {
                // The challenge is spent; the connection closes.
                self.nonce = None;
                info!(what, "authentication failed");
                Answer {
                    reply: Err(ErrorReply::new(
                        ErrorCode::AuthenticationFailed,
                        "signature did not verify",
                    )),
                    close: Some(ErrorCode::AuthenticationFailed),
                    authenticated: None,
                    quiet: false,
                }
            }
        }
    }
}

/// Why an authentication was refused.
enum Refused {
    /// A signature did not verify (named for the log).
    BadSignature(&'static str),
    /// Any other refusal, answered with this.
    Reply(ErrorReply),
}

impl From<crate::store::StoreError> for Refused {
    fn from(e: crate::store::StoreError) -> Self {
        Refused::Reply(store_error_reply(&e))
    }
}

/// This connection's challenge: the nonce and the channel binding an answer signs.
struct Challenge {
    nonce: [u8; 32],
    channel: ChannelBinding,
}

impl Challenge {
    /// What the device signs to answer it as `user` with `key`.
    fn message(&self, user: &UserName, key: &DeviceKey) -> Vec<u8> {
        cove_wire::sign::auth_challenge_message(&self.nonce, &self.channel, user, key)
    }
}

fn register(
    store: &dyn RelayStore,
    challenge: &Challenge,
    user: UserName,
    key: DeviceKey,
    signature: Signature,
) -> Result<DeviceId, Refused> {
    let message = challenge.message(&user, &key);
    if !verify(&key, &message, &signature) {
        return Err(Refused::BadSignature("register"));
    }
    let device = store.register_user(&user, &key)?;
    info!(%device, %user, "registered user");
    Ok(device)
}

fn register_device(
    store: &dyn RelayStore,
    challenge: &Challenge,
    user: UserName,
    key: DeviceKey,
    signature: Signature,
    authorizer: DeviceId,
    authorization: Signature,
) -> Result<DeviceId, Refused> {
    let message = challenge.message(&user, &key);
    if !verify(&key, &message, &signature) {
        return Err(Refused::BadSignature("register device"));
    }
    let authorizer_key = match store.device(authorizer)? {
        Some((owner, authorizer_key)) if owner == user => authorizer_key,
        _ => {
            return Err(Refused::Reply(ErrorReply::new(
                ErrorCode::UnknownDevice,
                "the authorizer is not a device of this user",
            )));
        }
    };
    let grant = cove_wire::sign::add_device_message(&user, &key);
    if !verify(&authorizer_key, &grant, &authorization) {
        return Err(Refused::BadSignature("device authorization"));
    }
    refuse_revoked(store, &user, &authorizer_key)?;
    refuse_revoked(store, &user, &key)?;
    refuse_unlisted(store, &user, &key)?;
    let device = store.add_device(&user, &key)?;
    info!(%device, %user, %authorizer, "registered device");
    Ok(device)
}

fn register_listed(
    store: &dyn RelayStore,
    challenge: &Challenge,
    user: UserName,
    key: DeviceKey,
    signature: Signature,
) -> Result<DeviceId, Refused> {
    let message = challenge.message(&user, &key);
    if !verify(&key, &message, &signature) {
        return Err(Refused::BadSignature(
            "register device after a password login",
        ));
    }
    refuse_revoked(store, &user, &key)?;
    refuse_unlisted(store, &user, &key)?;
    let device = store.add_device(&user, &key)?;
    info!(%device, %user, "registered device after a password login");
    Ok(device)
}

fn authenticate(
    store: &dyn RelayStore,
    challenge: &Challenge,
    user: UserName,
    device: DeviceId,
    signature: Signature,
) -> Result<DeviceId, Refused> {
    let key = match store.device(device)? {
        Some((owner, key)) if owner == user => key,
        _ => {
            return Err(Refused::Reply(ErrorReply::new(
                ErrorCode::UnknownDevice,
                "no such device for this user",
            )));
        }
    };
    let message = challenge.message(&user, &key);
    if !verify(&key, &message, &signature) {
        return Err(Refused::BadSignature("authenticate"));
    }
    refuse_revoked(store, &user, &key)?;
    debug!(%device, "authenticated");
    Ok(device)
}

/// Refuses a device its user revoked in the signed device list (the list was verified when
/// it was published, so a `Revoke` entry in it was signed by the user's identity key).
fn refuse_revoked(store: &dyn RelayStore, user: &UserName, key: &DeviceKey) -> Result<(), Refused> {
    if cove_identity::revokes(&store.device_list(user)?, key) {
        info!(%user, "login of a revoked device refused");
        return Err(Refused::Reply(ErrorReply::new(
            ErrorCode::UnknownDevice,
            "this device was revoked by its user",
        )));
    }
    Ok(())
}

/// Refuses to register a device that the user's signed device list does not add (checked
/// after [`refuse_revoked`], so a listed key here is also unrevoked): only the user's
/// identity key decides which devices the user has, not a device's authorisation and not
/// the relay.
fn refuse_unlisted(
    store: &dyn RelayStore,
    user: &UserName,
    key: &DeviceKey,
) -> Result<(), Refused> {
    let listed = store.device_list(user)?.iter().any(
        |e| matches!(&e.body.op, cove_wire::identity::ListOp::Add { device, .. } if device == key),
    );
    if !listed {
        info!(%user, "registration of a device not in the signed list refused");
        return Err(Refused::Reply(ErrorReply::new(
            ErrorCode::NotInDeviceList,
            "the device is not in the user's signed device list: publish its Add entry first",
        )));
    }
    Ok(())
}

/// Verifies an Ed25519 signature strictly (no malleable or small-order cases).
fn verify(key: &DeviceKey, message: &[u8], signature: &Signature) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&key.0) else {
        return false;
    };
    if key.is_weak() {
        return false;
    }
    let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
    key.verify_strict(message, &signature).is_ok()
}
