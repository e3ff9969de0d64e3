//! Registration and challenge-response authentication (Ed25519 device keys).

use std::sync::Arc;

use cove_wire::{DeviceId, DeviceKey, ErrorCode, ErrorReply, Reply, Signature, UserName};
use ed25519_dalek::VerifyingKey;
use tracing::{debug, info};

use crate::hub::CloseReason;
use crate::reply::store_error_reply;
use crate::shared::blocking;

use super::state::Session;

impl Session {
    /// Takes the challenge for one signature check. `None` if it was already used.
    pub(super) fn take_nonce(&mut self) -> Result<[u8; 32], ErrorReply> {
        self.nonce.ok_or_else(|| {
            ErrorReply::new(
                ErrorCode::AuthenticationFailed,
                "challenge already used; reconnect",
            )
        })
    }

    /// A signature over the challenge failed: the challenge is spent, the connection closes.
    pub(super) fn auth_failed(&mut self, what: &str) -> ErrorReply {
        self.nonce = None;
        info!(conn = self.outbox.conn_id, what, "authentication failed");
        self.outbox
            .close(CloseReason::Code(ErrorCode::AuthenticationFailed));
        ErrorReply::new(ErrorCode::AuthenticationFailed, "signature did not verify")
    }

    pub(super) async fn register(
        &mut self,
        user: UserName,
        key: DeviceKey,
        signature: Signature,
    ) -> Result<Reply, ErrorReply> {
        let nonce = self.take_nonce()?;
        let message = cove_wire::sign::auth_challenge_message(&nonce, &user, &key);
        if !verify(&key, &message, &signature) {
            return Err(self.auth_failed("register"));
        }
        let name = user.clone();
        let device = blocking(&self.shared, move |s| s.register_user(&name, &key))
            .await
            .map_err(|e| store_error_reply(&e))?;
        info!(%device, %user, "registered user");
        Ok(self.authenticated(device))
    }

    pub(super) async fn register_device(
        &mut self,
        user: UserName,
        key: DeviceKey,
        signature: Signature,
        authorizer: DeviceId,
        authorization: Signature,
    ) -> Result<Reply, ErrorReply> {
        let nonce = self.take_nonce()?;
        let message = cove_wire::sign::auth_challenge_message(&nonce, &user, &key);
        if !verify(&key, &message, &signature) {
            return Err(self.auth_failed("register device"));
        }
        let found = blocking(&self.shared, move |s| s.device(authorizer))
            .await
            .map_err(|e| store_error_reply(&e))?;
        let authorizer_key = match found {
            Some((owner, authorizer_key)) if owner == user => authorizer_key,
            _ => {
                return Err(ErrorReply::new(
                    ErrorCode::UnknownDevice,
                    "the authorizer is not a device of this user",
                ));
            }
        };
        let grant = cove_wire::sign::add_device_message(&user, &key);
        if !verify(&authorizer_key, &grant, &authorization) {
            return Err(self.auth_failed("device authorization"));
        }
        let name = user.clone();
        let device = blocking(&self.shared, move |s| s.add_device(&name, &key))
            .await
            .map_err(|e| store_error_reply(&e))?;
        info!(%device, %user, %authorizer, "registered device");
        Ok(self.authenticated(device))
    }

    pub(super) async fn authenticate(
        &mut self,
        user: UserName,
        device: DeviceId,
        signature: Signature,
    ) -> Result<Reply, ErrorReply> {
        let nonce = self.take_nonce()?;
        let found = blocking(&self.shared, move |s| s.device(device))
            .await
            .map_err(|e| store_error_reply(&e))?;
        let key = match found {
            Some((owner, key)) if owner == user => key,
            _ => {
                return Err(ErrorReply::new(
                    ErrorCode::UnknownDevice,
                    "no such device for this user",
                ));
            }
        };
        let message = cove_wire::sign::auth_challenge_message(&nonce, &user, &key);
        if !verify(&key, &message, &signature) {
            return Err(self.auth_failed("authenticate"));
        }
        debug!(%device, "authenticated");
        Ok(self.authenticated(device))
    }

    /// Marks the connection authenticated: the reply is queued first, then the backlog.
    pub(super) fn authenticated(&mut self, device: DeviceId) -> Reply {
        self.nonce = None;
        self.device = Some(device);
        self.shared.hub.register(device, Arc::clone(&self.outbox));
        // The backlog task starts once the reply is queued (see `answer`).
        self.start_backlog = true;
        Reply::Authenticated { device }
    }
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
