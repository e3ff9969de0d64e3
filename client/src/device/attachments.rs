//! The glue between a device and [`crate::transfer`]: attachment pointers in messages,
//! and what uploads need.

use std::sync::Arc;

use cove_core::CommandError;
use cove_core::attachment::{AttachmentPointer, BlobRequestSigner};

use super::error::DeviceError;
use super::handle::Device;
use crate::session;
use crate::transport;

impl Device {
    /// Sends an uploaded file's pointer to a group (see [`crate::transfer`]).
    pub async fn send_attachment(
        &self,
        group: &str,
        pointer: AttachmentPointer,
    ) -> Result<(), DeviceError> {
        self.caught_up_for_sending().await;
        let group = group.to_owned();
        self.session
            .op(self.timeout, move |c| {
                c.send_attachment(session::now_ms(), &group, pointer)
            })
            .await??;
        Ok(())
    }

    /// Refuses, before anything is uploaded, what [`Device::send_attachment`] would refuse
    /// anyway: an unknown group, or one with a member whose verified identity changed
    /// (`CommandError::IdentityNotVerified`).
    pub async fn check_can_send(&self, group: &str) -> Result<(), DeviceError> {
        let group = group.to_owned();
        self.session
            .call(move |c| -> Result<(), DeviceError> {
                let id = c.resolve(&group)?;
                let blocked = c.unverified_changes_in(&id)?;
                if blocked.is_empty() {
                    Ok(())
                } else {
                    Err(CommandError::IdentityNotVerified(blocked).into())
                }
            })
            .await?
    }

    /// The attachment of a stored message of `group`, by message id or blob id (hex).
    pub async fn attachment(
        &self,
        group: &str,
        id: &str,
    ) -> Result<Option<AttachmentPointer>, DeviceError> {
        let (group, id) = (group.to_owned(), id.trim().to_ascii_lowercase());
        let messages = self.session.call(move |c| c.history(&group)).await??;
        Ok(messages.into_iter().find_map(|m| {
            let blob = m.attachment.as_ref().map(|p| p.blob_id.to_hex());
            (m.id.to_hex() == id || blob.as_deref() == Some(id.as_str()))
                .then_some(m.attachment)
                .flatten()
        }))
    }

    /// The signer for blob-store uploads and the relay's TLS trust (see [`crate::transfer`]).
    pub async fn blob_access(
        &self,
    ) -> Result<(BlobRequestSigner, Arc<rustls::ClientConfig>), DeviceError> {
        let signer = self
            .session
            .call(|c| c.blob_request_signer())
            .await?
            .ok_or(DeviceError::NotRegistered)?;
        let tls = Arc::new(transport::client_config(&self.home.trust(&self.config))?);
        Ok((signer, tls))
    }
}
