//! Users' identities as this client knows them (issue 9): for every other user the pinned
//! identity key and the newest device-list head verified for it, and the checks a client
//! makes with them on a device list the relay serves and on a leaf's certificate.
//!
//! The rules of lists and certificates are `cove-identity`'s; this module adds what one
//! client remembers (its pins, in the [`Store`]) and so what it can detect over time:
//! a list rolled back or forked by the relay, an identity key that changed, a device that
//! was revoked, a leaf certified by some other identity.
//!
//! Pinning is per user identity key, not per device: devices come and go in the signed list
//! without changing the user's safety number ([`identity_safety_number`]).

use cove_identity::{CertificateError, DeviceList, ListError, ListedDevice, verify_certificate};
use cove_store::{IdentityChange, PinnedIdentity, Store, StoreError};
use cove_wire::identity::{DeviceCertificate, IdentityKey, ListEntry};
use cove_wire::{DeviceKey, UserName};

/// What a verified device list changed for this client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListVerdict {
    /// The first list seen for this user: its identity key is pinned now (trust on first use).
    FirstSeen {
        /// The pinned identity key.
        identity: IdentityKey,
        /// The devices listed.
        devices: Vec<ListedDevice>,
    },
    /// Nothing new since the head pinned last.
    Unchanged,
    /// The list grew: devices added and revoked since the head pinned last.
    Changed {
        /// Devices added.
        added: Vec<ListedDevice>,
        /// Devices revoked.
        revoked: Vec<DeviceKey>,
    },
    /// An unverified user's identity key changed: the new one is pinned, and the user
    /// must be told (the safety number changed).
    NewIdentity {
        /// The key pinned before.
        previous: IdentityKey,
        /// The key pinned now.
        identity: IdentityKey,
    },
}

/// Why a device list was refused. Every variant but `Storage` means the relay (or whoever
/// answered for it) served something the user did not sign, or an old or split history.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The list breaks the rules (a forged, altered, reordered or truncated entry).
    #[error("the relay served an invalid device list for {user}: {source}")]
    Invalid {
        /// Whose list.
        user: UserName,
        /// What is wrong with it.
        #[source]
        source: ListError,
    },
    /// The list is older than, or split from, the one this client saw before.
    #[error("the relay served a rolled-back or forked device list for {user}: {source}")]
    History {
        /// Whose list.
        user: UserName,
        /// `ListError::Rollback` or `ListError::Fork`.
        #[source]
        source: ListError,
    },
    /// A verified user's identity key changed: nothing is re-pinned, sending to groups
    /// with them stays blocked until the user verifies the new key
    /// ([`accept_identity`]).
    #[error("{user}'s identity key changed since you verified it: compare safety numbers again")]
    VerifiedIdentityChanged {
        /// Whose identity.
        user: UserName,
        /// The verified key.
        pinned: IdentityKey,
        /// The key the list names now.
        presented: IdentityKey,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// What a leaf's certificate says about its device.
#[derive(Debug, PartialEq, Eq)]
pub enum LeafVerdict {
    /// Certified by the pinned identity key, in the verified list, not revoked.
    Trusted,
    /// Validly signed, but this client has no pin for the user yet, or the certificate is
    /// newer than the list it verified: fetch the user's list ([`observe_list`]) and check
    /// again.
    NeedList,
    /// Refused: its messages are shown as nobody's and the member should be removed.
    Refused(LeafRefusal),
}

/// Why a leaf was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeafRefusal {
    /// The certificate itself does not hold (wrong user, wrong device, bad signature).
    #[error("its certificate is invalid: {0}")]
    Certificate(#[from] CertificateError),
    /// Signed by another identity key than the one pinned for the user.
    #[error("it is certified by another identity than the user's")]
    OtherIdentity,
    /// The device was revoked by its user.
    #[error("the device was revoked by its user")]
    Revoked,
    /// The certificate's entry is not the one the verified list holds at its index.
    #[error("its certificate is not in the user's device list")]
    NotListed,
    /// The leaf carries no device certificate.
    #[error("it carries no device certificate")]
    NoCertificate,
    /// The leaf's certificate extension does not decode.
    #[error("its device certificate does not decode")]
    Undecodable,
    /// The user's device list, fetched for it, could not be verified or does not name it.
    #[error("its user's device list could not be fetched or does not hold its certificate")]
    NoList,
}

/// Verifies `entries` as `user`'s device list and compares it with what this client pinned;
/// on success pins the new head (and, for a first or an unverified changed identity, the
/// identity key) and stores the list. A changed identity is kept ([`IdentityChange`]) until
/// the user verifies it ([`verify_identity`]): an unverified user's is only marked; a
/// verified user's blocks sending to groups with them ([`blocking_changes`]) until then, or
/// until the relay serves a list of the verified key again.
pub fn observe_list(
    store: &impl Store,
    user: &UserName,
    entries: &[ListEntry],
    now_ms: u64,
) -> Result<ListVerdict, IdentityError> {
    let list = DeviceList::verify(user, entries).map_err(|source| IdentityError::Invalid {
        user: user.clone(),
        source,
    })?;
    let pin = store.identity_pin(user)?;
    let verdict = match &pin {
        None => ListVerdict::FirstSeen {
            identity: list.identity(),
            devices: list.devices().cloned().collect(),
        },
        Some(p) if p.identity != list.identity() => {
            if p.verified {
                // Nothing is re-pinned; the change is kept (it blocks sending to groups
                // with the user) until the user verifies the new key.
                record_change(store, user, p.identity, &list, true, now_ms)?;
                return Err(IdentityError::VerifiedIdentityChanged {
                    user: user.clone(),
                    pinned: p.identity,
                    presented: list.identity(),
                });
            }
            ListVerdict::NewIdentity {
                previous: p.identity,
                identity: list.identity(),
            }
        }
        Some(p) => match p.head {
            Some(head) if head == list.head() => ListVerdict::Unchanged,
            head => {
                if let Some(head) = head {
                    list.extends(&head)
                        .map_err(|source| IdentityError::History {
                            user: user.clone(),
                            source,
                        })?;
                }
                let known = match store.device_list(user)? {
                    Some(old) => DeviceList::verify(user, &old).ok(),
                    None => None,
                };
                let added = list
                    .devices()
                    .filter(|d| known.as_ref().is_none_or(|k| !k.is_listed(&d.key)))
                    .cloned()
                    .collect();
                let revoked = known
                    .as_ref()
                    .map(|k| {
                        k.devices()
                            .filter(|d| list.is_revoked(&d.key))
                            .map(|d| d.key)
                            .collect()
                    })
                    .unwrap_or_default();
                ListVerdict::Changed { added, revoked }
            }
        },
    };
    let verified = match (&pin, &verdict) {
        (Some(p), ListVerdict::Unchanged | ListVerdict::Changed { .. }) => p.verified,
        _ => false,
    };
    store.set_identity_pin(&PinnedIdentity {
        user: user.clone(),
        identity: list.identity(),
        head: Some(list.head()),
        verified,
        pinned_at_ms: match (&pin, &verdict) {
            (Some(p), ListVerdict::Unchanged | ListVerdict::Changed { .. }) => p.pinned_at_ms,
            _ => now_ms,
        },
    })?;
    store.set_device_list(user, list.entries())?;
    match (&pin, &verdict) {
        (_, ListVerdict::NewIdentity { previous, .. }) => {
            // Marked as changed until the user verifies the new key (not blocking).
            record_change(store, user, *previous, &list, false, now_ms)?;
        }
        (Some(p), ListVerdict::Unchanged | ListVerdict::Changed { .. })
            if p.verified && store.identity_change(user)?.is_some_and(|c| c.blocking) =>
        {
            // The verified key is back: a change seen meanwhile no longer blocks.
            store.remove_identity_change(user)?;
        }
        _ => {}
    }
    Ok(verdict)
}

/// Keeps `list`'s identity as `user`'s changed identity (see [`IdentityChange`]), unless the
/// same change is already kept.
fn record_change(
    store: &impl Store,
    user: &UserName,
    previous: IdentityKey,
    list: &DeviceList,
    blocking: bool,
    now_ms: u64,
) -> Result<(), StoreError> {
    let kept = store.identity_change(user)?;
    if let Some(kept) = &kept
        && kept.presented == list.identity()
        && kept.entries.len() >= list.entries().len()
    {
        return Ok(());
    }
    store.set_identity_change(&IdentityChange {
        user: user.clone(),
        // After several changes, the one the user last knew (verified or pinned).
        previous: kept.map_or(previous, |k| k.previous),
        presented: list.identity(),
        entries: list.entries().to_vec(),
        blocking,
        seen_at_ms: now_ms,
    })
}

/// Checks the certificate `cert` of a leaf that claims to be `device` of `user`, against the
/// pinned identity and the last verified list.
pub fn check_leaf(
    store: &impl Store,
    user: &UserName,
    device: &DeviceKey,
    cert: &DeviceCertificate,
) -> Result<LeafVerdict, StoreError> {
    if let Err(e) = verify_certificate(cert, user, device) {
        return Ok(LeafVerdict::Refused(e.into()));
    }
    let Some(pin) = store.identity_pin(user)? else {
        return Ok(LeafVerdict::NeedList);
    };
    if cert.identity != pin.identity {
        return Ok(LeafVerdict::Refused(LeafRefusal::OtherIdentity));
    }
    let Some(list) = store
        .device_list(user)?
        .and_then(|entries| DeviceList::verify(user, &entries).ok())
    else {
        return Ok(LeafVerdict::NeedList);
    };
    if list.is_revoked(device) {
        return Ok(LeafVerdict::Refused(LeafRefusal::Revoked));
    }
    if cert.entry.body.index > list.head().index {
        return Ok(LeafVerdict::NeedList);
    }
    if list.certifies(cert) {
        Ok(LeafVerdict::Trusted)
    } else {
        Ok(LeafVerdict::Refused(LeafRefusal::NotListed))
    }
}

/// Marks `user`'s pinned identity as verified (the user compared safety numbers).
pub fn mark_verified(store: &impl Store, user: &UserName) -> Result<bool, StoreError> {
    let Some(mut pin) = store.identity_pin(user)? else {
        return Ok(false);
    };
    pin.verified = true;
    store.set_identity_pin(&pin)?;
    if store
        .identity_change(user)?
        .is_some_and(|c| c.presented == pin.identity)
    {
        store.remove_identity_change(user)?;
    }
    Ok(true)
}

/// After [`IdentityError::VerifiedIdentityChanged`] and the user's confirmation: pins the
/// new identity of `entries` (verified, since the user just compared it) and its list.
pub fn accept_identity(
    store: &impl Store,
    user: &UserName,
    entries: &[ListEntry],
    now_ms: u64,
) -> Result<IdentityKey, IdentityError> {
    let list = DeviceList::verify(user, entries).map_err(|source| IdentityError::Invalid {
        user: user.clone(),
        source,
    })?;
    store.set_identity_pin(&PinnedIdentity {
        user: user.clone(),
        identity: list.identity(),
        head: Some(list.head()),
        verified: true,
        pinned_at_ms: now_ms,
    })?;
    store.set_device_list(user, list.entries())?;
    store.remove_identity_change(user)?;
    Ok(list.identity())
}

/// Whether the user verified `user`'s pinned identity (compared safety numbers). A verified
/// identity that changes is refused by [`observe_list`] until [`accept_identity`], which is
/// what blocks sending to groups with them meanwhile.
pub fn is_verified(store: &impl Store, user: &UserName) -> Result<bool, StoreError> {
    Ok(store.identity_pin(user)?.is_some_and(|p| p.verified))
}

/// How far this user trusts another user's identity key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Pinned on first sight (trust on first use); safety numbers not compared yet.
    Unverified,
    /// The user compared safety numbers and confirmed this identity key.
    Verified,
    /// The identity key changed since it was pinned, and the user has not verified the new
    /// one yet.
    Changed {
        /// Whether the previous key was verified: then sending to groups with the user is
        /// blocked until the user verifies the new one.
        blocking: bool,
    },
}

/// Another user's identity as this client knows it, for `cove verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityState {
    /// Whose identity.
    pub user: UserName,
    /// The identity key to compare: the one the user's device list names now (after a
    /// change, the new one, even while the old one stays pinned).
    pub identity: IdentityKey,
    /// Verified, unverified or changed.
    pub verification: Verification,
    /// The safety number over this user's and `user`'s identity keys (`identity`); `None`
    /// while this user's own identity is not pinned yet.
    pub safety_number: Option<String>,
}

/// Why [`verify_identity`] refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No identity is pinned for the user: their device list was never seen.
    #[error("no identity key known for {0} yet")]
    Unknown(UserName),
    /// The key the user compared is not the one to verify now (it changed meanwhile).
    #[error("{0}'s identity key changed while you compared: compare the new safety number")]
    Stale(UserName),
    /// The kept list of a changed identity no longer verifies (a corrupt store).
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// The identity of `user` as seen from `me` (`None` if nothing is pinned for `user`).
pub fn identity_state(
    store: &impl Store,
    me: &UserName,
    user: &UserName,
) -> Result<Option<IdentityState>, StoreError> {
    let Some(pin) = store.identity_pin(user)? else {
        return Ok(None);
    };
    let change = store.identity_change(user)?;
    let (identity, verification) = match &change {
        Some(c) => (
            c.presented,
            Verification::Changed {
                blocking: c.blocking,
            },
        ),
        None if pin.verified => (pin.identity, Verification::Verified),
        None => (pin.identity, Verification::Unverified),
    };
    let safety_number = store
        .identity_pin(me)?
        .map(|mine| identity_safety_number(me, &mine.identity, user, &identity));
    Ok(Some(IdentityState {
        user: user.clone(),
        identity,
        verification,
        safety_number,
    }))
}

/// The user compared the safety number over `shown` (from [`identity_state`]) with `user`
/// and confirmed it: marks that identity verified, pinning it first after a change. Refused
/// if `shown` is not the key to verify now.
pub fn verify_identity<S: Store>(
    store: &S,
    user: &UserName,
    shown: &IdentityKey,
    now_ms: u64,
) -> Result<(), VerifyError> {
    store.transaction(|s: &S| -> Result<(), VerifyError> {
        let pin = s
            .identity_pin(user)?
            .ok_or_else(|| VerifyError::Unknown(user.clone()))?;
        match s.identity_change(user)? {
            Some(c) if c.presented == *shown => {
                if c.blocking {
                    accept_identity(s, user, &c.entries, now_ms)?;
                } else {
                    s.remove_identity_change(user)?;
                }
            }
            Some(_) => return Err(VerifyError::Stale(user.clone())),
            None if pin.identity != *shown => return Err(VerifyError::Stale(user.clone())),
            None => {}
        }
        mark_verified(s, user)?;
        Ok(())
    })
}

/// The event that tells the user `user`'s identity key changed (`verified`: the previous
/// one was verified, so sending to groups with them is blocked).
pub fn changed_event(user: &UserName, verified: bool) -> crate::Event {
    crate::Event::Identity(crate::IdentityEvent::IdentityChanged {
        user: user.clone(),
        verified,
    })
}

/// The users among `members` whose verified identity changed and who were not verified
/// again: sending to a group with them is blocked.
pub fn blocking_changes(
    store: &impl Store,
    members: &[UserName],
) -> Result<Vec<UserName>, StoreError> {
    Ok(store
        .identity_changes()?
        .into_iter()
        .filter(|c| c.blocking && members.contains(&c.user))
        .map(|c| c.user)
        .collect())
}

/// The safety number of two users over their identity keys: unchanged by devices coming
/// and going, changed by a new identity key. Same digits scheme as
/// [`crate::safety_number`] (30 digits per user, the halves in name order).
pub fn identity_safety_number(
    a: &UserName,
    a_identity: &IdentityKey,
    b: &UserName,
    b_identity: &IdentityKey,
) -> String {
    crate::safety_number(a, &[DeviceKey(a_identity.0)], b, &[DeviceKey(b_identity.0)])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cove_identity::IdentitySigner;
    use cove_store::MemoryStore;
    use cove_wire::identity::DeviceName;
    use ed25519_dalek::SigningKey;

    fn user(n: &str) -> UserName {
        UserName::new(n).unwrap()
    }
    fn key(n: u8) -> DeviceKey {
        DeviceKey(SigningKey::from_bytes(&[n; 32]).verifying_key().to_bytes())
    }
    fn name(s: &str) -> DeviceName {
        DeviceName::new(s).unwrap()
    }
    fn alice() -> (IdentitySigner, DeviceList) {
        let signer = IdentitySigner::new(user("alice"), &[42; 32]);
        let mut list = signer.create(key(1), name("laptop"), 1).unwrap();
        signer.add(&mut list, key(2), name("phone"), 2).unwrap();
        (signer, list)
    }

    #[test]
    fn first_list_pins_then_growth_is_reported() {
        let store = MemoryStore::new();
        let (signer, mut list) = alice();
        let v = observe_list(&store, &user("alice"), list.entries(), 10).unwrap();
        let ListVerdict::FirstSeen { identity, devices } = v else {
            panic!("{v:?}")
        };
        assert_eq!(identity, signer.identity());
        assert_eq!(devices.len(), 2);
        assert_eq!(
            observe_list(&store, &user("alice"), list.entries(), 11).unwrap(),
            ListVerdict::Unchanged
        );
        signer.add(&mut list, key(3), name("tablet"), 3).unwrap();
        signer.revoke(&mut list, key(2), 4).unwrap();
        let v = observe_list(&store, &user("alice"), list.entries(), 12).unwrap();
        let ListVerdict::Changed { added, revoked } = v else {
            panic!("{v:?}")
        };
        assert_eq!(added.iter().map(|d| d.key).collect::<Vec<_>>(), [key(3)]);
        assert_eq!(revoked, [key(2)]);
        let pin = store.identity_pin(&user("alice")).unwrap().unwrap();
        assert_eq!(pin.head, Some(list.head()));
        assert_eq!(pin.pinned_at_ms, 10);
    }

    #[test]
    fn a_rolled_back_or_forked_list_is_refused_and_the_pin_stays() {
        let store = MemoryStore::new();
        let (signer, list) = alice();
        let mut newer = list.clone();
        signer.add(&mut newer, key(3), name("tablet"), 3).unwrap();
        observe_list(&store, &user("alice"), newer.entries(), 1).unwrap();
        let err = observe_list(&store, &user("alice"), list.entries(), 2).unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::History {
                    source: ListError::Rollback { .. },
                    ..
                }
            ),
            "{err}"
        );
        let mut fork = list.clone();
        signer.add(&mut fork, key(9), name("ghost"), 3).unwrap();
        let err = observe_list(&store, &user("alice"), fork.entries(), 3).unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::History {
                    source: ListError::Fork { index: 3 },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            store.identity_pin(&user("alice")).unwrap().unwrap().head,
            Some(newer.head())
        );
        // A forged entry is invalid, whatever the pin.
        let mut entries = newer.entries().to_vec();
        entries[3].body.time_ms += 1;
        assert!(matches!(
            observe_list(&store, &user("alice"), &entries, 4).unwrap_err(),
            IdentityError::Invalid {
                source: ListError::BadSignature { index: 3 },
                ..
            }
        ));
    }

    #[test]
    fn a_changed_identity_is_announced_or_blocked_if_verified() {
        let store = MemoryStore::new();
        let (signer, list) = alice();
        observe_list(&store, &user("alice"), list.entries(), 1).unwrap();
        let other = IdentitySigner::new(user("alice"), &[43; 32]);
        let relisted = other.create(key(1), name("laptop"), 5).unwrap();
        // Unverified: the new key is pinned and announced.
        assert_eq!(
            observe_list(&store, &user("alice"), relisted.entries(), 2).unwrap(),
            ListVerdict::NewIdentity {
                previous: signer.identity(),
                identity: other.identity()
            }
        );
        // Verified: refused, nothing re-pinned, until accepted.
        assert!(mark_verified(&store, &user("alice")).unwrap());
        let err = observe_list(&store, &user("alice"), list.entries(), 3).unwrap_err();
        assert!(
            matches!(err, IdentityError::VerifiedIdentityChanged { .. }),
            "{err}"
        );
        assert_eq!(
            store
                .identity_pin(&user("alice"))
                .unwrap()
                .unwrap()
                .identity,
            other.identity()
        );
        assert!(is_verified(&store, &user("alice")).unwrap());
        assert_eq!(
            accept_identity(&store, &user("alice"), list.entries(), 4).unwrap(),
            signer.identity()
        );
        assert!(is_verified(&store, &user("alice")).unwrap());
        assert_eq!(
            observe_list(&store, &user("alice"), list.entries(), 5).unwrap(),
            ListVerdict::Unchanged
        );
    }

    /// The change kept for `cove verify`: an unverified change is marked until verified; a
    /// verified one blocks, keeps the key the user last knew over further changes, and only
    /// the newest key can be verified (which pins it and ends the block).
    #[test]
    fn changes_are_kept_until_the_shown_key_is_verified() {
        let store = MemoryStore::new();
        let (signer, list) = alice();
        let me = user("bob");
        observe_list(&store, &user("alice"), list.entries(), 1).unwrap();
        let state = identity_state(&store, &me, &user("alice"))
            .unwrap()
            .unwrap();
        assert_eq!(state.verification, Verification::Unverified);
        assert_eq!(
            state.safety_number, None,
            "bob's own identity is not pinned"
        );
        let relist = |k: u8| {
            let s = IdentitySigner::new(user("alice"), &[k; 32]);
            (s.identity(), s.create(key(1), name("laptop"), 5).unwrap())
        };
        // Unverified: pinned at once, marked as changed until verified.
        let (k2, l2) = relist(43);
        observe_list(&store, &user("alice"), l2.entries(), 2).unwrap();
        let state = identity_state(&store, &me, &user("alice"))
            .unwrap()
            .unwrap();
        assert_eq!(state.identity, k2);
        assert_eq!(
            state.verification,
            Verification::Changed { blocking: false }
        );
        assert!(
            blocking_changes(&store, &[user("alice")])
                .unwrap()
                .is_empty()
        );
        verify_identity(&store, &user("alice"), &k2, 3).unwrap();
        assert_eq!(
            identity_state(&store, &me, &user("alice"))
                .unwrap()
                .unwrap()
                .verification,
            Verification::Verified
        );
        // Verified, then two changes: both block, the newest is the one to verify.
        let (k3, l3) = relist(44);
        let (k4, l4) = relist(45);
        assert!(observe_list(&store, &user("alice"), l3.entries(), 4).is_err());
        assert!(observe_list(&store, &user("alice"), l4.entries(), 5).is_err());
        let kept = store.identity_change(&user("alice")).unwrap().unwrap();
        assert_eq!(
            (kept.previous, kept.presented, kept.blocking),
            (k2, k4, true)
        );
        assert_eq!(
            blocking_changes(&store, &[user("carol"), user("alice")]).unwrap(),
            [user("alice")]
        );
        assert_eq!(
            store
                .identity_pin(&user("alice"))
                .unwrap()
                .unwrap()
                .identity,
            k2
        );
        for stale in [k2, k3, signer.identity()] {
            assert!(matches!(
                verify_identity(&store, &user("alice"), &stale, 6),
                Err(VerifyError::Stale(_))
            ));
        }
        verify_identity(&store, &user("alice"), &k4, 7).unwrap();
        let pin = store.identity_pin(&user("alice")).unwrap().unwrap();
        assert_eq!((pin.identity, pin.verified), (k4, true));
        assert!(store.identity_change(&user("alice")).unwrap().is_none());
        assert!(
            blocking_changes(&store, &[user("alice")])
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            verify_identity(&store, &user("carol"), &k4, 8),
            Err(VerifyError::Unknown(_))
        ));
        // A change that goes away (the verified key's list is served again) stops blocking.
        assert!(observe_list(&store, &user("alice"), l3.entries(), 9).is_err());
        assert_eq!(
            blocking_changes(&store, &[user("alice")]).unwrap(),
            [user("alice")]
        );
        assert_eq!(
            observe_list(&store, &user("alice"), l4.entries(), 10).unwrap(),
            ListVerdict::Unchanged
        );
        assert!(
            blocking_changes(&store, &[user("alice")])
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            identity_state(&store, &me, &user("alice"))
                .unwrap()
                .unwrap()
                .verification,
            Verification::Verified
        );
    }

    #[test]
    fn leaves_are_checked_against_pin_and_list() {
        let store = MemoryStore::new();
        let (signer, mut list) = alice();
        let cert = list.certificate(&key(2)).unwrap();
        // No pin yet: fetch the list first.
        assert_eq!(
            check_leaf(&store, &user("alice"), &key(2), &cert).unwrap(),
            LeafVerdict::NeedList
        );
        observe_list(&store, &user("alice"), list.entries(), 1).unwrap();
        assert_eq!(
            check_leaf(&store, &user("alice"), &key(2), &cert).unwrap(),
            LeafVerdict::Trusted
        );
        // mallory's leaf claims to be alice's device 2 with her own key.
        assert_eq!(
            check_leaf(&store, &user("alice"), &key(9), &cert).unwrap(),
            LeafVerdict::Refused(LeafRefusal::Certificate(CertificateError::WrongDevice))
        );
        // mallory certifies her key as alice's with her own identity key.
        let mallory = IdentitySigner::new(user("alice"), &[66; 32]);
        let fake = mallory.create(key(9), name("alice"), 1).unwrap();
        assert_eq!(
            check_leaf(
                &store,
                &user("alice"),
                &key(9),
                &fake.certificate(&key(9)).unwrap()
            )
            .unwrap(),
            LeafVerdict::Refused(LeafRefusal::OtherIdentity)
        );
        // A device added after the list this client saw: fetch the list.
        let tablet = signer.add(&mut list, key(3), name("tablet"), 3).unwrap();
        assert_eq!(
            check_leaf(&store, &user("alice"), &key(3), &tablet).unwrap(),
            LeafVerdict::NeedList
        );
        // Revoked (once the list that says so was seen).
        signer.revoke(&mut list, key(2), 4).unwrap();
        observe_list(&store, &user("alice"), list.entries(), 2).unwrap();
        assert_eq!(
            check_leaf(&store, &user("alice"), &key(2), &cert).unwrap(),
            LeafVerdict::Refused(LeafRefusal::Revoked)
        );
        assert_eq!(
            check_leaf(&store, &user("alice"), &key(3), &tablet).unwrap(),
            LeafVerdict::Trusted
        );
    }

    #[test]
    fn safety_numbers_follow_identity_keys_not_devices() {
        let (signer, mut list) = alice();
        let bob = IdentitySigner::new(user("bob"), &[7; 32]);
        let before = identity_safety_number(
            &user("alice"),
            &signer.identity(),
            &user("bob"),
            &bob.identity(),
        );
        signer.add(&mut list, key(3), name("tablet"), 3).unwrap();
        signer.revoke(&mut list, key(2), 4).unwrap();
        let after = identity_safety_number(
            &user("alice"),
            &list.identity(),
            &user("bob"),
            &bob.identity(),
        );
        assert_eq!(before, after);
        assert_eq!(
            before,
            identity_safety_number(
                &user("bob"),
                &bob.identity(),
                &user("alice"),
                &signer.identity()
            ),
            "both sides compute the same number"
        );
        let other = IdentitySigner::new(user("alice"), &[43; 32]);
        assert_ne!(
            before,
            identity_safety_number(
                &user("alice"),
                &other.identity(),
                &user("bob"),
                &bob.identity()
            )
        );
    }
}
