//! Making entries: the holder of the identity secret key.

use cove_wire::identity::{
    DeviceCertificate, DeviceName, EntryBody, IdentityKey, ListEntry, ListOp, list_entry_message,
};
use cove_wire::{DeviceKey, Signature, UserName};
use ed25519_dalek::{Signer, SigningKey};

use crate::list::{DeviceList, ListError};

/// The identity secret key of one user, making the entries of its device list. Every entry
/// it makes is checked with [`DeviceList::append`] before it is returned, so it never signs
/// an entry that the list's rules refuse.
pub struct IdentitySigner {
    user: UserName,
    key: SigningKey,
}

impl IdentitySigner {
    /// The signer of `user`'s list with the identity secret key `secret` (32 bytes).
    pub fn new(user: UserName, secret: &[u8; 32]) -> Self {
        IdentitySigner {
            user,
            key: SigningKey::from_bytes(secret),
        }
    }

    /// The identity (public) key.
    pub fn identity(&self) -> IdentityKey {
        IdentityKey(self.key.verifying_key().to_bytes())
    }

    /// A new list: the `Create` entry and the `Add` of the first device.
    pub fn create(
        &self,
        device: DeviceKey,
        name: DeviceName,
        now_ms: u64,
    ) -> Result<DeviceList, ListError> {
        let create = self.sign(EntryBody {
            user: self.user.clone(),
            index: 0,
            prev: None,
            time_ms: now_ms,
            op: ListOp::Create {
                identity: self.identity(),
            },
        })?;
        let mut list = DeviceList::verify(&self.user, &[create])?;
        self.extend(&mut list, ListOp::Add { device, name }, now_ms)?;
        Ok(list)
    }

    /// Adds `device` to `list`; returns its certificate.
    pub fn add(
        &self,
        list: &mut DeviceList,
        device: DeviceKey,
        name: DeviceName,
        now_ms: u64,
    ) -> Result<DeviceCertificate, ListError> {
        let entry = self.extend(list, ListOp::Add { device, name }, now_ms)?;
        Ok(DeviceCertificate {
            identity: self.identity(),
            entry,
        })
    }

    /// Revokes `device` in `list`; returns the entry to publish.
    pub fn revoke(
        &self,
        list: &mut DeviceList,
        device: DeviceKey,
        now_ms: u64,
    ) -> Result<ListEntry, ListError> {
        self.extend(list, ListOp::Revoke { device }, now_ms)
    }

    /// Signs the next entry of `list` with `op` and appends it.
    fn extend(
        &self,
        list: &mut DeviceList,
        op: ListOp,
        now_ms: u64,
    ) -> Result<ListEntry, ListError> {
        let head = list.head();
        let entry = self.sign(EntryBody {
            user: self.user.clone(),
            index: head.index + 1,
            prev: Some(head.hash),
            time_ms: now_ms,
            op,
        })?;
        list.append(&entry)?;
        Ok(entry)
    }

    fn sign(&self, body: EntryBody) -> Result<ListEntry, ListError> {
        let message = list_entry_message(&body)?;
        Ok(ListEntry {
            body,
            signature: Signature(self.key.sign(&message).to_bytes()),
        })
    }
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySigner")
            .field("user", &self.user)
            .field("identity", &self.identity())
            .finish_non_exhaustive()
    }
}
