//! This device: its identity (user, device id, Ed25519 key, which is also its MLS signature
//! key), what it signs (relay challenges, further devices' authorisations, blob requests) and
//! the pending authorisation of a not yet registered further device.

use cove_store::{Identity, Store, StoreError};
use cove_wire::{DeviceId, DeviceKey, Request, Signature, UserName};
use ed25519_dalek::{Signer as _, SigningKey};
use openmls::prelude::{BasicCredential, CredentialWithKey};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::types::SignatureScheme;

use super::mls::credential_identity;
use crate::error::ProtocolViolation;
use crate::types::HandleError;

/// Config keys of the authorisation a further device registers with.
const AUTHORIZER_KEY: &str = "\0authorizer";
const AUTHORIZATION_KEY: &str = "\0authorization";

/// This device's identity and keys.
pub(super) struct Me {
    /// The MLS signer (the same Ed25519 key as `signing_key`).
    pub(super) signer: SignatureKeyPair,
    /// Signs relay challenges, authorisations and blob requests.
    signing_key: SigningKey,
    /// User, device id (once registered), keys; persisted.
    identity: Identity,
}

impl Me {
    /// The keys of a stored identity.
    pub(super) fn new(identity: Identity) -> Self {
        let signing_key = SigningKey::from_bytes(&identity.secret_key);
        let signer = SignatureKeyPair::from_raw(
            SignatureScheme::ED25519,
            identity.secret_key.to_vec(),
            identity.public_key.0.to_vec(),
        );
        Me {
            signer,
            signing_key,
            identity,
        }
    }

    /// This device's user.
    pub(super) fn user(&self) -> &UserName {
        &self.identity.user
    }

    /// This device's id, once registered.
    pub(super) fn device(&self) -> Option<DeviceId> {
        self.identity.device
    }

    /// This device's public key.
    pub(super) fn key(&self) -> DeviceKey {
        self.identity.public_key
    }

    /// Whether `device` is this device.
    pub(super) fn is(&self, device: DeviceId) -> bool {
        self.identity.device == Some(device)
    }

    /// The MLS credential of this device as `device`.
    pub(super) fn credential_with_key(&self, device: DeviceId) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(credential_identity(&self.identity.user, device))
                .into(),
            signature_key: self.identity.public_key.0.to_vec().into(),
        }
    }

    /// Authorises `new_key` as a further device of this user (see `Client::authorize_device`).
    pub(super) fn authorize_device(&self, new_key: &DeviceKey) -> Option<(DeviceId, Signature)> {
        let device = self.identity.device?;
        let msg = cove_wire::sign::add_device_message(&self.identity.user, new_key);
        Some((device, Signature(self.signing_key.sign(&msg).to_bytes())))
    }

    /// A signer for blob-store requests, once registered.
    pub(super) fn blob_request_signer(&self) -> Option<crate::attachment::BlobRequestSigner> {
        Some(crate::attachment::BlobRequestSigner::new(
            self.identity.device?,
            self.signing_key.clone(),
        ))
    }

    /// The answer to the relay's challenge `nonce` on the connection `channel`: registration
    /// (first device, or a further device with its stored authorisation) or authentication,
    /// and whether it registers.
    pub(super) fn answer_challenge<S: Store>(
        &self,
        store: &S,
        nonce: &[u8; 32],
        channel: &cove_wire::sign::ChannelBinding,
    ) -> (Request, bool) {
        let msg = cove_wire::sign::auth_challenge_message(
            nonce,
            channel,
            &self.identity.user,
            &self.identity.public_key,
        );
        let signature = Signature(self.signing_key.sign(&msg).to_bytes());
        match (self.identity.device, pending_authorization(store)) {
            (None, Some((authorizer, authorization))) => (
                Request::RegisterDevice {
                    user: self.identity.user.clone(),
                    key: self.identity.public_key,
                    signature,
                    authorizer,
                    authorization,
                },
                true,
            ),
            (None, None) => (
                Request::Register {
                    user: self.identity.user.clone(),
                    key: self.identity.public_key,
                    signature,
                },
                true,
            ),
            (Some(device), _) => (
                Request::Authenticate {
                    user: self.identity.user.clone(),
                    device,
                    signature,
                },
                false,
            ),
        }
    }

    /// The relay authenticated this device as `device`: remembers the id the first time;
    /// another id than the one held is a protocol violation.
    pub(super) fn authenticated<S: Store>(
        &mut self,
        store: &S,
        device: DeviceId,
    ) -> Result<(), HandleError> {
        if self.identity.device != Some(device) {
            if self.identity.device.is_some() {
                return Err(HandleError::Protocol(ProtocolViolation::OtherDevice));
            }
            self.identity.device = Some(device);
            store.set_identity(&self.identity)?;
        }
        Ok(())
    }
}

/// Stores the authorisation of a further device (see `Client::set_device_authorization`).
pub(super) fn set_device_authorization<S: Store>(
    store: &S,
    authorizer: DeviceId,
    authorization: Signature,
) -> Result<(), StoreError> {
    store.set_config(AUTHORIZER_KEY, &authorizer.0.to_string())?;
    store.set_config(AUTHORIZATION_KEY, &hex::encode(authorization.0))
}

/// The stored authorisation of this (not yet registered) further device, if any.
fn pending_authorization<S: Store>(store: &S) -> Option<(DeviceId, Signature)> {
    let authorizer = store.config(AUTHORIZER_KEY).ok()??.parse().ok()?;
    let sig = store.config(AUTHORIZATION_KEY).ok()??;
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(sig, &mut bytes).ok()?;
    Some((DeviceId(authorizer), Signature(bytes)))
}
