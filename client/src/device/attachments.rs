//! The glue between a device and [`crate::transfer`]: attachment pointers in messages,
//! and what uploads need.

use std::sync::Arc;

use cove_core::attachment::{AttachmentPointer, BlobRequestSigner};
use cove_core::{CommandError, QueryError};

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

    /// The attachment of a stored message of `group`, by message id or blob id (hex), or the
    /// start of either (at least 4 hex digits, as `cove history` shows a message's short id).
    /// `AmbiguousMessage` when several files match.
    pub async fn attachment(
        &self,
        group: &str,
        id: &str,
    ) -> Result<Option<AttachmentPointer>, DeviceError> {
        let (group, id) = (group.to_owned(), id.trim().to_ascii_lowercase());
        let messages = self.session.call(move |c| c.history(&group)).await??;
        if id.len() < 4 {
            return Ok(None);
        }
        let mut found: Vec<AttachmentPointer> = messages
            .into_iter()
            .filter_map(|m| {
                let pointer = m.attachment?;
                let hit =
                    m.id.to_hex().starts_with(&id) || pointer.blob_id.to_hex().starts_with(&id);
                hit.then_some(pointer)
            })
            .collect();
        found.dedup_by(|a, b| a.blob_id == b.blob_id);
        match found.len() {
            0 | 1 => Ok(found.pop()),
            _ => Err(QueryError::AmbiguousMessage(id).into()),
        }
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
