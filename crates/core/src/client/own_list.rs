//! This user's identity key and signed device list, on the user's first device (issue 9).
//!
//! The first device of a user (the one that registers with `Register`, not with another
//! device's authorisation) creates the user's identity key and the list `Create`, `Add` (this
//! device) before it sends its registration, so a crash cannot leave a registered user
//! without one. After every authentication, the entries the relay does not have yet are
//! published (`PublishDeviceList`); the relay verifies them (`cove-identity`) and stores
//! them; any device can fetch them to check this user's devices. Authorising a further
//! device adds it ([`add_device`]); a lost one is revoked ([`revoke_device`]). Only a device
//! that holds the identity key signs entries: the first device, and a device that logged
//! in with the user's password, which takes the identity key from the account bundle and
//! adds itself to the list ([`adopt`]).
//!
//! Every device's **certificate** (the identity key and the signed `Add` entry of its key,
//! which travels in its MLS leaves) comes from this list: the first device takes it from the
//! list it creates, a linked device from its user's list once it fetched, verified and pinned
//! it after authenticating ([`certificate`]). It is stored once made.

use cove_identity::{DeviceList, IdentitySigner};
use cove_store::{PinnedIdentity, Store, StoreError, UserIdentity};
use cove_wire::identity::{DeviceCertificate, DeviceName, ListEntry};
use cove_wire::{BoundedVec, Request};
use zeroize::Zeroizing;

use super::device::Me;
use crate::error::OwnIdentityError;
use crate::provider::SeededRand;

/// This device's certificate, postcard in hex (config key).
const CERTIFICATE_KEY: &str = "device-certificate";
/// How many entries of the own list the relay has confirmed (config key).
const PUBLISHED_KEY: &str = "device-list-published";
/// The name of a user's first device in its list.
const FIRST_DEVICE_NAME: &str = "first device";

/// Creates the user's identity key and device list if this first device has none yet.
pub(super) fn ensure<S: Store>(
    store: &S,
    rng: &SeededRand,
    me: &Me,
    now_ms: u64,
) -> Result<(), OwnIdentityError> {
    if store.user_identity()?.is_some() {
        return Ok(());
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill(secret.as_mut())
        .map_err(|_| OwnIdentityError::Rng)?;
    let user = me.user().clone();
    let signer = IdentitySigner::new(user.clone(), &secret);
    let name = DeviceName::new(FIRST_DEVICE_NAME)?;
    let list = signer.create(me.key(), name, now_ms)?;
    // Our own identity is pinned and verified: we made it.
    store_identity(store, &signer, &secret, &list, 0, now_ms)?;
    Ok(())
}

/// Stores, in one transaction, the user's identity key (`secret`, whose signer is
/// `signer`), its device list, the own pin (verified: this device holds the identity) and
/// how many of the list's entries the relay has (`published`).
fn store_identity<S: Store>(
    store: &S,
    signer: &IdentitySigner,
    secret: &Zeroizing<[u8; 32]>,
    list: &DeviceList,
    published: usize,
    now_ms: u64,
) -> Result<(), StoreError> {
    let user = list.user().clone();
    store.transaction(|s: &S| -> Result<(), StoreError> {
        s.set_user_identity(&UserIdentity {
            user: user.clone(),
            identity: signer.identity(),
            secret_key: secret.clone(),
        })?;
        s.set_device_list(&user, list.entries())?;
        s.set_identity_pin(&PinnedIdentity {
            user: user.clone(),
            identity: signer.identity(),
            head: Some(list.head()),
            verified: true,
            pinned_at_ms: now_ms,
        })?;
        s.set_config(PUBLISHED_KEY, &published.to_string())
    })
}

/// On a new device of a user who logged in with a password (`cove login`): takes the
/// user's identity key (`secret`, from the unwrapped account bundle) and the user's list as
/// the relay serves it (`entries`), which must verify and be signed by that identity key;
/// adds this device's key to it (an `Add` entry signed now, named "device N") unless it is
/// listed already, and stores, in one transaction, the identity key, the extended list and
/// the own pin (verified: this device holds the identity). From then on this device is an
/// identity holder like the user's first device. Returns the request that publishes the new
/// entry and the list length it brings the relay to (`None` when nothing is new);
/// [`published`] records the relay's confirmation.
pub(super) fn adopt<S: Store>(
    store: &S,
    me: &Me,
    secret: &Zeroizing<[u8; 32]>,
    entries: &[ListEntry],
    now_ms: u64,
) -> Result<Option<(Request, u64)>, OwnIdentityError> {
    let user = me.user().clone();
    let mut list = DeviceList::verify(&user, entries)?;
    let signer = IdentitySigner::new(user.clone(), secret);
    if list.identity() != signer.identity() {
        return Err(OwnIdentityError::OtherIdentity);
    }
    let stored_len = list.entries().len();
    if !list.is_listed(&me.key()) {
        let name = DeviceName::new(format!("device {stored_len}"))?;
        signer.add(&mut list, me.key(), name, now_ms)?;
    }
    store_identity(store, &signer, secret, &list, stored_len, now_ms)?;
    Ok(unpublished(store, me)?)
}

/// Adds `device` to the own list (when this device holds the user's identity); the name is
/// "device N" for its position. A device already listed is left as it is.
pub(super) fn add_device<S: Store>(
    store: &S,
    me: &Me,
    device: cove_wire::DeviceKey,
    now_ms: u64,
) -> Result<(), OwnIdentityError> {
    let Some((signer, mut list)) = signer_and_list(store, me)? else {
        return Ok(());
    };
    if list.is_listed(&device) {
        return Ok(());
    }
    let name = DeviceName::new(format!("device {}", list.entries().len()))?;
    signer.add(&mut list, device, name, now_ms)?;
    Ok(store_own(store, me, &list)?)
}

/// Revokes `device` in the own list (signed by the identity key this device holds).
pub(super) fn revoke_device<S: Store>(
    store: &S,
    me: &Me,
    device: cove_wire::DeviceKey,
    now_ms: u64,
) -> Result<(), OwnIdentityError> {
    let Some((signer, mut list)) = signer_and_list(store, me)? else {
        return Err(OwnIdentityError::NotIdentityHolder);
    };
    if device == me.key() {
        return Err(OwnIdentityError::RevokeSelf);
    }
    signer.revoke(&mut list, device, now_ms)?;
    Ok(store_own(store, me, &list)?)
}

/// The identity signer and the own list, on the device that holds the identity key.
fn signer_and_list<S: Store>(
    store: &S,
    me: &Me,
) -> Result<Option<(IdentitySigner, DeviceList)>, StoreError> {
    let Some(identity) = store.user_identity()? else {
        return Ok(None);
    };
    let signer = IdentitySigner::new(me.user().clone(), &identity.secret_key);
    Ok(own_list(store, me)?.map(|list| (signer, list)))
}

/// Stores the extended own list and moves the own pin to its head, in one transaction.
fn store_own<S: Store>(store: &S, me: &Me, list: &DeviceList) -> Result<(), StoreError> {
    store.transaction(|s: &S| -> Result<(), StoreError> {
        s.set_device_list(me.user(), list.entries())?;
        if let Some(mut pin) = s.identity_pin(me.user())? {
            pin.head = Some(list.head());
            s.set_identity_pin(&pin)?;
        }
        Ok(())
    })
}

/// The request that publishes what the relay does not have yet of the own list, and the
/// list length it brings the relay to.
pub(super) fn unpublished<S: Store>(
    store: &S,
    me: &Me,
) -> Result<Option<(Request, u64)>, StoreError> {
    if store.user_identity()?.is_none() {
        return Ok(None);
    }
    let Some(entries) = store.device_list(me.user())? else {
        return Ok(None);
    };
    let published: usize = store
        .config(PUBLISHED_KEY)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rest: Vec<ListEntry> = entries.iter().skip(published).cloned().collect();
    if rest.is_empty() {
        return Ok(None);
    }
    Ok(Some((
        Request::PublishDeviceList {
            entries: BoundedVec(rest),
        },
        entries.len() as u64,
    )))
}

/// The relay confirmed the own list up to `len` entries.
pub(super) fn published<S: Store>(store: &S, len: u64) -> Result<(), StoreError> {
    store.set_config(PUBLISHED_KEY, &len.to_string())
}

/// The relay served the own list with `len` entries (and this device stored it): on a
/// device that holds the user's identity, those entries count as published.
pub(super) fn served<S: Store>(store: &S, me: &Me, len: u64) -> Result<(), StoreError> {
    if store.user_identity()?.is_none() {
        return Ok(());
    }
    let stored = store
        .device_list(me.user())?
        .map_or(0, |entries| entries.len() as u64);
    let published: u64 = store
        .config(PUBLISHED_KEY)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if len > published && len <= stored {
        store.set_config(PUBLISHED_KEY, &len.to_string())?;
    }
    Ok(())
}

/// The own verified list, if this device holds the user's identity.
pub(super) fn own_list<S: Store>(store: &S, me: &Me) -> Result<Option<DeviceList>, StoreError> {
    if store.user_identity()?.is_none() {
        return Ok(None);
    }
    Ok(store
        .device_list(me.user())?
        .and_then(|entries| DeviceList::verify(me.user(), &entries).ok()))
}

/// This device's certificate: the stored one, or else the one made from its user's verified
/// list (own, or fetched and pinned) if it lists this device, then stored. `None` until
/// then: this device makes no KeyPackage and creates no group before it has one.
pub(super) fn certificate<S: Store>(
    store: &S,
    me: &Me,
) -> Result<Option<DeviceCertificate>, StoreError> {
    if let Some(cert) = store
        .config(CERTIFICATE_KEY)?
        .and_then(|hex| hex::decode(hex).ok())
        .and_then(|bytes| cove_wire::decode::<DeviceCertificate>(&bytes).ok())
        .filter(|c| cove_identity::verify_certificate(c, me.user(), &me.key()).is_ok())
    {
        return Ok(Some(cert));
    }
    let Some(cert) = store
        .device_list(me.user())?
        .and_then(|entries| DeviceList::verify(me.user(), &entries).ok())
        .and_then(|list| list.certificate(&me.key()))
    else {
        return Ok(None);
    };
    if let Ok(bytes) = cove_wire::encode(&cert) {
        store.set_config(CERTIFICATE_KEY, &hex::encode(bytes))?;
    }
    Ok(Some(cert))
}
