//! Trust in other devices' keys: pinning on first sight (from MLS credentials or the relay's
//! directory), key-change detection, the check of keys first seen in MLS against the
//! directory, and safety numbers.

use std::collections::BTreeSet;

use cove_identity::DeviceList;
use cove_store::{PinnedDevice, Store, StoreError};
use cove_wire::{DeviceId, DeviceInfo, DeviceKey, UserName};
use sha2::{Digest, Sha512};

use super::effects::Effects;
use super::mls::MemberId;
use crate::error::Warning;
use crate::types::{Event, QueryError};

/// Users whose keys were first seen in MLS (a Welcome or another member's commit) and are to
/// be checked against the relay's directory.
#[derive(Default)]
pub(super) struct Trust {
    to_verify: BTreeSet<UserName>,
}

/// Whether a presented key is the pinned one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pin {
    /// Pinned now or before, or this device itself.
    Trusted,
    /// Differs from the pinned key (a [`Event::KeyChanged`] was raised), or is not an
    /// Ed25519 key.
    Changed,
}

impl Trust {
    /// `user`'s keys are to be checked against the directory at the next chance.
    pub(super) fn verify_later(&mut self, user: &UserName) {
        self.to_verify.insert(user.clone());
    }

    /// The users to check now.
    pub(super) fn take_to_verify(&mut self) -> BTreeSet<UserName> {
        std::mem::take(&mut self.to_verify)
    }
}

/// Pins a key on first sight; a different key from the pinned one raises
/// [`Event::KeyChanged`]. A further device of a user already known raises
/// [`Warning::NewDevice`] only when the user's verified device list does not name it.
/// `me` is this device (always trusted).
pub(super) fn check_pin(
    store: &impl Store,
    me: Option<DeviceId>,
    now_ms: u64,
    m: &MemberId,
    events: &mut Vec<Event>,
) -> Result<Pin, StoreError> {
    if Some(m.device) == me {
        return Ok(Pin::Trusted);
    }
    let Ok(key) = <[u8; 32]>::try_from(m.key.as_slice()) else {
        return Ok(Pin::Changed);
    };
    let key = DeviceKey(key);
    match store
        .pinned_devices(&m.user)?
        .into_iter()
        .find(|p| p.device == m.device)
    {
        Some(p) if p.key == key => Ok(Pin::Trusted),
        Some(p) => {
            events.push(Event::KeyChanged {
                user: m.user.clone(),
                device: m.device,
                pinned: p.key,
                presented: key,
            });
            Ok(Pin::Changed)
        }
        None => {
            // Devices pinned together (one Welcome, one directory answer) are one first
            // sight; a device pinned later than the user's others is new.
            let known = store
                .pinned_devices(&m.user)?
                .iter()
                .filter(|p| p.pinned_at_ms < now_ms)
                .count();
            store.pin_device(&PinnedDevice {
                user: m.user.clone(),
                device: m.device,
                key,
                pinned_at_ms: now_ms,
            })?;
            if known > 0 && !listed(store, &m.user, &key)? {
                // A device the user's verified signed list names is announced by
                // `IdentityEvent::DeviceAdded` (and leaves the safety number, computed over
                // identity keys, unchanged): warning about it would contradict that. One the
                // list does not name is vouched for by nobody but the relay.
                events.push(Event::Warning(Warning::NewDevice {
                    user: m.user.clone(),
                    device: m.device,
                }));
            }
            Ok(Pin::Trusted)
        }
    }
}

/// Whether `user`'s verified signed device list (as last stored) names `key`, unrevoked.
fn listed(store: &impl Store, user: &UserName, key: &DeviceKey) -> Result<bool, StoreError> {
    Ok(store
        .device_list(user)?
        .and_then(|entries| DeviceList::verify(user, &entries).ok())
        .is_some_and(|list| list.is_listed(key) && !list.is_revoked(key)))
}

/// Compares the keys pinned from MLS credentials with the relay's directory.
pub(super) fn verify_against_directory(
    store: &impl Store,
    user: &UserName,
    directory: &[DeviceInfo],
    fx: &mut Effects,
) -> Result<(), StoreError> {
    for pin in store.pinned_devices(user)? {
        match directory.iter().find(|d| d.device == pin.device) {
            Some(d) if d.key == pin.key => {}
            Some(d) => fx.event(Event::KeyChanged {
                user: user.clone(),
                device: pin.device,
                pinned: pin.key,
                presented: d.key,
            }),
            None => fx.warn(Warning::MemberNotInDirectory {
                user: user.clone(),
                device: pin.device,
            }),
        }
    }
    Ok(())
}

/// Re-pins `user`'s `device` with `key` (an accepted key change).
pub(super) fn accept_key(
    store: &impl Store,
    now_ms: u64,
    user: &UserName,
    device: DeviceId,
    key: DeviceKey,
) -> Result<(), StoreError> {
    store.pin_device(&PinnedDevice {
        user: user.clone(),
        device,
        key,
        pinned_at_ms: now_ms,
    })
}

/// The safety number between `me` (with `my_key`, this device's) and `user`, over the pinned
/// keys of both.
pub(super) fn safety_number_with(
    store: &impl Store,
    me: &UserName,
    my_key: DeviceKey,
    user: &UserName,
) -> Result<String, QueryError> {
    let pinned_keys = |u: &UserName| -> Result<Vec<DeviceKey>, StoreError> {
        Ok(store
            .pinned_devices(u)?
            .into_iter()
            .map(|p| p.key)
            .collect())
    };
    let theirs = pinned_keys(user)?;
    if theirs.is_empty() {
        return Err(QueryError::UnknownUser(user.clone()));
    }
    let mut mine = pinned_keys(me)?;
    mine.push(my_key);
    Ok(safety_number(me, &mine, user, &theirs))
}

/// The safety number of two users over their device keys: for each user, 30 digits from an
/// iterated SHA-512 over a label, the name and the sorted keys; the two halves in name order.
pub fn safety_number(
    a: &UserName,
    a_keys: &[DeviceKey],
    b: &UserName,
    b_keys: &[DeviceKey],
) -> String {
    fn half(user: &UserName, keys: &[DeviceKey]) -> String {
        let mut keys: Vec<[u8; 32]> = keys.iter().map(|k| k.0).collect();
        keys.sort();
        keys.dedup();
        let mut input = Vec::new();
        input.extend_from_slice(b"cove/v1/safety-number\0");
        input.extend_from_slice(&(user.as_str().len() as u64).to_be_bytes());
        input.extend_from_slice(user.as_str().as_bytes());
        for k in &keys {
            input.extend_from_slice(k);
        }
        let mut h = Sha512::digest(&input).to_vec();
        for _ in 0..1024 {
            let mut d = Sha512::new();
            d.update(&h);
            d.update(&input);
            h = d.finalize().to_vec();
        }
        let mut out = String::new();
        for chunk in h.chunks(5).take(6) {
            let mut v: u64 = 0;
            for b in chunk {
                v = (v << 8) | u64::from(*b);
            }
            out.push_str(&format!("{:05}", v % 100_000));
        }
        out
    }
    let (first, second) = if a <= b {
        ((a, a_keys), (b, b_keys))
    } else {
        ((b, b_keys), (a, a_keys))
    };
    let digits = half(first.0, first.1) + &half(second.0, second.1);
    let groups: Vec<String> = digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    groups.join(" ")
}
