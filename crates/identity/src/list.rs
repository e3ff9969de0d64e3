//! Verifying a device list entry by entry, and comparing it with a pinned head.

use std::collections::BTreeMap;

use cove_wire::identity::{
    DeviceCertificate, DeviceName, EntryHash, IdentityKey, ListEntry, ListHead, ListOp,
    entry_hash_input, list_entry_message,
};
use cove_wire::limits::{MAX_DEVICE_LIST_ENTRIES, MAX_DEVICES_PER_USER};
use cove_wire::{DeviceKey, EncodeError, UserName};
use sha2::{Digest, Sha256};

/// Why a device list (or one more entry of it) was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    /// A list with no entry.
    #[error("the device list is empty")]
    Empty,
    /// More entries than [`MAX_DEVICE_LIST_ENTRIES`].
    #[error("the device list is longer than {MAX_DEVICE_LIST_ENTRIES} entries")]
    TooLong,
    /// An entry of another user's list.
    #[error("entry {index} belongs to another user's list")]
    WrongUser {
        /// The entry's index.
        index: u64,
    },
    /// An entry out of place.
    #[error("entry {got} found where entry {expected} belongs")]
    WrongIndex {
        /// The index the next entry must have.
        expected: u64,
        /// The index it has.
        got: u64,
    },
    /// An entry whose `prev` is not the hash of the entry before it.
    #[error("entry {index} does not follow the entry before it")]
    WrongPrev {
        /// The entry's index.
        index: u64,
    },
    /// An entry the identity key did not sign.
    #[error("entry {index} is not signed by the identity key")]
    BadSignature {
        /// The entry's index.
        index: u64,
    },
    /// Entry 0 is not a `Create`.
    #[error("the device list does not start with its identity key")]
    NotCreate,
    /// A `Create` after entry 0.
    #[error("entry {index} names an identity key again")]
    CreateAgain {
        /// The entry's index.
        index: u64,
    },
    /// A device added while it is listed already.
    #[error("entry {index} adds a device that is already listed")]
    AlreadyListed {
        /// The entry's index.
        index: u64,
    },
    /// A revoked device added again (revocation is for good).
    #[error("entry {index} adds a revoked device again")]
    Readded {
        /// The entry's index.
        index: u64,
    },
    /// A revocation of a device that is not listed.
    #[error("entry {index} revokes a device that is not listed")]
    NotListed {
        /// The entry's index.
        index: u64,
    },
    /// An add past [`MAX_DEVICES_PER_USER`] listed devices.
    #[error("entry {index} adds a device past the {MAX_DEVICES_PER_USER} a user may have")]
    TooManyDevices {
        /// The entry's index.
        index: u64,
    },
    /// The list is shorter than the head the client pinned: the relay rolled it back.
    #[error("the device list was rolled back: {got} entries, entry {pinned} was seen before")]
    Rollback {
        /// The pinned head's index.
        pinned: u64,
        /// How many entries the list has.
        got: u64,
    },
    /// The list holds another entry where the pinned head was: the relay forked it.
    #[error("the device list was forked at entry {index}")]
    Fork {
        /// The pinned head's index.
        index: u64,
    },
    /// An entry could not be encoded to check it.
    #[error("a device-list entry could not be encoded: {0}")]
    Encode(#[from] EncodeError),
}

/// A device on a verified list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedDevice {
    /// Its key.
    pub key: DeviceKey,
    /// Its display name.
    pub name: DeviceName,
    /// When it was added (the signer's clock, ms since the Unix epoch).
    pub added_ms: u64,
    /// The index of its `Add` entry.
    pub index: u64,
}

/// A verified device list: every entry checked, in order, from the `Create` entry.
#[derive(Clone, Debug)]
pub struct DeviceList {
    user: UserName,
    identity: IdentityKey,
    entries: Vec<ListEntry>,
    hashes: Vec<EntryHash>,
    head: ListHead,
    listed: BTreeMap<DeviceKey, ListedDevice>,
    /// Revoked device keys and the index of their `Revoke` entry.
    revoked: BTreeMap<DeviceKey, u64>,
}

/// Whether `entries` revoke `device`. For a list that was verified when it was stored (the
/// relay's, after `PublishDeviceList`): it reads the entries and checks no signature.
pub fn revokes(entries: &[ListEntry], device: &DeviceKey) -> bool {
    entries
        .iter()
        .any(|e| matches!(&e.body.op, ListOp::Revoke { device: d } if d == device))
}

/// The hash of a signed entry, as the next entry's `prev` holds it.
pub fn entry_hash(entry: &ListEntry) -> Result<EntryHash, EncodeError> {
    Ok(EntryHash(Sha256::digest(entry_hash_input(entry)?).into()))
}

impl DeviceList {
    /// Verifies a whole list of `user`.
    pub fn verify(user: &UserName, entries: &[ListEntry]) -> Result<Self, ListError> {
        let (first, rest) = entries.split_first().ok_or(ListError::Empty)?;
        let mut list = Self::create(user, first)?;
        for entry in rest {
            list.append(entry)?;
        }
        Ok(list)
    }

    /// Starts a list from its `Create` entry.
    fn create(user: &UserName, entry: &ListEntry) -> Result<Self, ListError> {
        let body = &entry.body;
        if &body.user != user {
            return Err(ListError::WrongUser { index: body.index });
        }
        if body.index != 0 {
            return Err(ListError::WrongIndex {
                expected: 0,
                got: body.index,
            });
        }
        let ListOp::Create { identity } = body.op else {
            return Err(ListError::NotCreate);
        };
        if body.prev.is_some() {
            return Err(ListError::WrongPrev { index: 0 });
        }
        check_signature(&identity, entry)?;
        let hash = entry_hash(entry)?;
        Ok(DeviceList {
            user: user.clone(),
            identity,
            hashes: vec![hash],
            head: ListHead { index: 0, hash },
            entries: vec![entry.clone()],
            listed: BTreeMap::new(),
            revoked: BTreeMap::new(),
        })
    }

    /// Verifies `entry` as the next entry and appends it. On error the list is unchanged.
    pub fn append(&mut self, entry: &ListEntry) -> Result<(), ListError> {
        let body = &entry.body;
        let index = self.entries.len() as u64;
        if self.entries.len() >= MAX_DEVICE_LIST_ENTRIES {
            return Err(ListError::TooLong);
        }
        if body.user != self.user {
            return Err(ListError::WrongUser { index: body.index });
        }
        if body.index != index {
            return Err(ListError::WrongIndex {
                expected: index,
                got: body.index,
            });
        }
        if body.prev != self.hashes.last().copied() {
            return Err(ListError::WrongPrev { index });
        }
        check_signature(&self.identity, entry)?;
        let hash = entry_hash(entry)?;
        match &body.op {
            ListOp::Create { .. } => return Err(ListError::CreateAgain { index }),
            ListOp::Add { device, name } => {
                if self.revoked.contains_key(device) {
                    return Err(ListError::Readded { index });
                }
                if self.listed.contains_key(device) {
                    return Err(ListError::AlreadyListed { index });
                }
                if self.listed.len() >= MAX_DEVICES_PER_USER {
                    return Err(ListError::TooManyDevices { index });
                }
                self.listed.insert(
                    *device,
                    ListedDevice {
                        key: *device,
                        name: name.clone(),
                        added_ms: body.time_ms,
                        index,
                    },
                );
            }
            ListOp::Revoke { device } => {
                if self.listed.remove(device).is_none() {
                    return Err(ListError::NotListed { index });
                }
                self.revoked.insert(*device, index);
            }
        }
        self.hashes.push(hash);
        self.entries.push(entry.clone());
        self.head = ListHead { index, hash };
        Ok(())
    }

    /// Checks that this list contains `pinned` (the head a client verified earlier): it is
    /// at least as long and holds the same entry at that index.
    pub fn extends(&self, pinned: &ListHead) -> Result<(), ListError> {
        let got = self.entries.len() as u64;
        let Some(hash) = usize::try_from(pinned.index)
            .ok()
            .and_then(|i| self.hashes.get(i))
        else {
            return Err(ListError::Rollback {
                pinned: pinned.index,
                got,
            });
        };
        if *hash == pinned.hash {
            Ok(())
        } else {
            Err(ListError::Fork {
                index: pinned.index,
            })
        }
    }

    /// Whether `cert` is the `Add` entry of this list at its index, for a device that is
    /// still listed (not revoked).
    pub fn certifies(&self, cert: &DeviceCertificate) -> bool {
        let Ok(i) = usize::try_from(cert.entry.body.index) else {
            return false;
        };
        cert.identity == self.identity
            && self.entries.get(i) == Some(&cert.entry)
            && matches!(&cert.entry.body.op, ListOp::Add { device, .. } if self.listed.contains_key(device))
    }

    /// The certificate of listed device `device`, if it is listed.
    pub fn certificate(&self, device: &DeviceKey) -> Option<DeviceCertificate> {
        let listed = self.listed.get(device)?;
        let entry = self.entries.get(usize::try_from(listed.index).ok()?)?;
        Some(DeviceCertificate {
            identity: self.identity,
            entry: entry.clone(),
        })
    }

    /// The newest entry, to pin.
    pub fn head(&self) -> ListHead {
        self.head
    }

    /// Whose list it is.
    pub fn user(&self) -> &UserName {
        &self.user
    }

    /// The identity key it belongs to.
    pub fn identity(&self) -> IdentityKey {
        self.identity
    }

    /// The signed entries, from entry 0.
    pub fn entries(&self) -> &[ListEntry] {
        &self.entries
    }

    /// The devices listed now (added, not revoked), by key.
    pub fn devices(&self) -> impl Iterator<Item = &ListedDevice> {
        self.listed.values()
    }

    /// Whether `device` is listed now.
    pub fn is_listed(&self, device: &DeviceKey) -> bool {
        self.listed.contains_key(device)
    }

    /// Whether `device` was revoked.
    pub fn is_revoked(&self, device: &DeviceKey) -> bool {
        self.revoked.contains_key(device)
    }

    /// The revoked device keys, in key order.
    pub fn revoked(&self) -> impl Iterator<Item = &DeviceKey> {
        self.revoked.keys()
    }
}

fn check_signature(identity: &IdentityKey, entry: &ListEntry) -> Result<(), ListError> {
    let message = list_entry_message(&entry.body)?;
    if crate::verify(&identity.0, &message, &entry.signature.0) {
        Ok(())
    } else {
        Err(ListError::BadSignature {
            index: entry.body.index,
        })
    }
}
