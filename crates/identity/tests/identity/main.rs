//! The identity rules against a hostile relay (which stores and serves lists and can replay,
//! reorder, drop, splice and forge anything except the identity key's signature) and a
//! hostile member (who can put any certificate in its own leaf).
#![allow(clippy::unwrap_used, missing_docs)]

use cove_identity::{
    CertificateError, DeviceList, IdentitySigner, ListError, entry_hash, verify_certificate,
};
use cove_wire::identity::{
    DeviceCertificate, DeviceName, EntryBody, IdentityKey, ListEntry, ListHead, ListOp,
    list_entry_message,
};
use cove_wire::limits::{MAX_DEVICE_LIST_ENTRIES, MAX_DEVICES_PER_USER};
use cove_wire::{DeviceKey, Signature, UserName};
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;

fn user(name: &str) -> UserName {
    UserName::new(name).unwrap()
}

fn key(n: u8) -> DeviceKey {
    DeviceKey(SigningKey::from_bytes(&[n; 32]).verifying_key().to_bytes())
}

fn name(s: &str) -> DeviceName {
    DeviceName::new(s).unwrap()
}

/// alice's list: Create, Add laptop (1), Add phone (2), Add tablet (3).
fn alice() -> (IdentitySigner, DeviceList) {
    let signer = IdentitySigner::new(user("alice"), &[42; 32]);
    let mut list = signer.create(key(1), name("laptop"), 1_000).unwrap();
    signer.add(&mut list, key(2), name("phone"), 2_000).unwrap();
    signer
        .add(&mut list, key(3), name("tablet"), 3_000)
        .unwrap();
    (signer, list)
}

/// Signs `body` with `secret` as an identity key would (for entries the signer refuses).
fn sign_raw(secret: &[u8; 32], body: EntryBody) -> ListEntry {
    let message = list_entry_message(&body).unwrap();
    ListEntry {
        body,
        signature: Signature(SigningKey::from_bytes(secret).sign(&message).to_bytes()),
    }
}

/// The next entry after `list`'s head with `op`, signed by `secret`.
fn next(list: &DeviceList, secret: &[u8; 32], op: ListOp) -> ListEntry {
    let head = list.head();
    sign_raw(
        secret,
        EntryBody {
            user: list.user().clone(),
            index: head.index + 1,
            prev: Some(head.hash),
            time_ms: 9_000,
            op,
        },
    )
}

#[test]
fn a_list_made_by_the_signer_verifies_and_lists_its_devices() {
    let (signer, list) = alice();
    let again = DeviceList::verify(&user("alice"), list.entries()).unwrap();
    assert_eq!(again.head(), list.head());
    assert_eq!(again.head().index, 3);
    assert_eq!(again.identity(), signer.identity());
    let names: Vec<_> = again.devices().map(|d| d.name.to_string()).collect();
    assert_eq!(names.len(), 3);
    for (k, n) in [(1, "laptop"), (2, "phone"), (3, "tablet")] {
        assert!(again.is_listed(&key(k)));
        let cert = again.certificate(&key(k)).unwrap();
        verify_certificate(&cert, &user("alice"), &key(k)).unwrap();
        assert!(again.certifies(&cert));
        assert!(names.contains(&n.to_string()));
    }
    assert_eq!(
        again.devices().find(|d| d.key == key(2)).unwrap().added_ms,
        2_000
    );
}

#[test]
fn an_entry_not_signed_by_the_identity_key_is_refused() {
    let (_, list) = alice();
    // The relay (or anyone without the identity secret) appends a device of its own.
    let forged = next(
        &list,
        &[66; 32],
        ListOp::Add {
            device: key(9),
            name: name("ghost"),
        },
    );
    let mut copy = list.clone();
    assert_eq!(
        copy.append(&forged),
        Err(ListError::BadSignature { index: 4 })
    );
    assert_eq!(copy.head(), list.head(), "a refused entry changes nothing");
    let mut entries = list.entries().to_vec();
    entries.push(forged);
    assert_eq!(
        DeviceList::verify(&user("alice"), &entries).unwrap_err(),
        ListError::BadSignature { index: 4 }
    );
}

#[test]
fn a_changed_entry_no_longer_verifies() {
    let (_, list) = alice();
    let mut entries = list.entries().to_vec();
    // The relay swaps the phone's key for its own device's key, keeping the signature.
    entries[2].body.op = ListOp::Add {
        device: key(9),
        name: name("phone"),
    };
    assert_eq!(
        DeviceList::verify(&user("alice"), &entries).unwrap_err(),
        ListError::BadSignature { index: 2 }
    );
    // Or only the time.
    let mut entries = list.entries().to_vec();
    entries[3].body.time_ms += 1;
    assert_eq!(
        DeviceList::verify(&user("alice"), &entries).unwrap_err(),
        ListError::BadSignature { index: 3 }
    );
}

#[test]
fn reordered_dropped_and_spliced_entries_are_refused() {
    let (_, list) = alice();
    let entries = list.entries().to_vec();
    let mut reordered = entries.clone();
    reordered.swap(2, 3);
    assert_eq!(
        DeviceList::verify(&user("alice"), &reordered).unwrap_err(),
        ListError::WrongIndex {
            expected: 2,
            got: 3
        }
    );
    let mut dropped = entries.clone();
    dropped.remove(2);
    assert_eq!(
        DeviceList::verify(&user("alice"), &dropped).unwrap_err(),
        ListError::WrongIndex {
            expected: 2,
            got: 3
        }
    );
    // An entry validly signed by alice's identity key, but made for another history at the
    // same index (its prev is not this list's entry 2).
    let mut other = DeviceList::verify(&user("alice"), &entries[..2]).unwrap();
    let signer = IdentitySigner::new(user("alice"), &[42; 32]);
    signer.add(&mut other, key(7), name("other"), 5).unwrap();
    let spliced_entry = other.entries()[2].clone();
    let mut base = DeviceList::verify(&user("alice"), &entries[..3]).unwrap();
    let mut fake = spliced_entry.clone();
    fake.body.index = 3;
    assert_eq!(
        base.append(&fake),
        Err(ListError::WrongPrev { index: 3 }),
        "prev is checked before the signature"
    );
    // Bob's entries in alice's list.
    let bob = IdentitySigner::new(user("bob"), &[43; 32]);
    let bobs = bob.create(key(5), name("bob"), 1).unwrap();
    let mut mixed = entries[..1].to_vec();
    mixed.push(bobs.entries()[1].clone());
    assert_eq!(
        DeviceList::verify(&user("alice"), &mixed).unwrap_err(),
        ListError::WrongUser { index: 1 }
    );
    // Bob's whole list served as alice's.
    assert_eq!(
        DeviceList::verify(&user("alice"), bobs.entries()).unwrap_err(),
        ListError::WrongUser { index: 0 }
    );
}

#[test]
fn the_list_starts_with_its_identity_key_once() {
    assert_eq!(
        DeviceList::verify(&user("alice"), &[]).unwrap_err(),
        ListError::Empty
    );
    let (_, list) = alice();
    assert_eq!(
        DeviceList::verify(&user("alice"), &list.entries()[1..]).unwrap_err(),
        ListError::WrongIndex {
            expected: 0,
            got: 1
        }
    );
    let add_first = sign_raw(
        &[42; 32],
        EntryBody {
            user: user("alice"),
            index: 0,
            prev: None,
            time_ms: 1,
            op: ListOp::Add {
                device: key(1),
                name: name("laptop"),
            },
        },
    );
    assert_eq!(
        DeviceList::verify(&user("alice"), &[add_first]).unwrap_err(),
        ListError::NotCreate
    );
    // A second Create (an attempt to switch the identity key mid-list).
    let mut copy = list.clone();
    let again = next(
        &list,
        &[42; 32],
        ListOp::Create {
            identity: IdentityKey([1; 32]),
        },
    );
    assert_eq!(
        copy.append(&again),
        Err(ListError::CreateAgain { index: 4 })
    );
    // A Create entry not signed by the key it names.
    let create = sign_raw(
        &[66; 32],
        EntryBody {
            user: user("alice"),
            index: 0,
            prev: None,
            time_ms: 1,
            op: ListOp::Create {
                identity: IdentitySigner::new(user("alice"), &[42; 32]).identity(),
            },
        },
    );
    assert_eq!(
        DeviceList::verify(&user("alice"), &[create]).unwrap_err(),
        ListError::BadSignature { index: 0 }
    );
}

#[test]
fn a_revoked_device_is_never_listed_again() {
    let (signer, mut list) = alice();
    let cert = list.certificate(&key(2)).unwrap();
    signer.revoke(&mut list, key(2), 4_000).unwrap();
    assert!(!list.is_listed(&key(2)));
    assert!(list.is_revoked(&key(2)));
    assert!(list.certificate(&key(2)).is_none());
    // Its old certificate still carries a valid signature, but the list no longer backs it.
    verify_certificate(&cert, &user("alice"), &key(2)).unwrap();
    assert!(!list.certifies(&cert));
    // The signer refuses to add it again, and so does every verifier of a hand-made entry.
    let head = list.head();
    assert_eq!(
        signer.add(&mut list, key(2), name("phone"), 5_000),
        Err(ListError::Readded { index: 5 })
    );
    assert_eq!(list.head(), head);
    let readd = next(
        &list,
        &[42; 32],
        ListOp::Add {
            device: key(2),
            name: name("phone again"),
        },
    );
    let mut entries = list.entries().to_vec();
    entries.push(readd);
    assert_eq!(
        DeviceList::verify(&user("alice"), &entries).unwrap_err(),
        ListError::Readded { index: 5 }
    );
    // Revoking twice, or a device never listed.
    assert_eq!(
        signer.revoke(&mut list, key(2), 6_000),
        Err(ListError::NotListed { index: 5 })
    );
    assert_eq!(
        signer.revoke(&mut list, key(9), 6_000),
        Err(ListError::NotListed { index: 5 })
    );
    assert_eq!(
        signer.add(&mut list, key(1), name("laptop"), 6_000),
        Err(ListError::AlreadyListed { index: 5 })
    );
}

#[test]
fn at_most_the_device_cap_is_listed_and_revoked_devices_do_not_count() {
    let signer = IdentitySigner::new(user("alice"), &[42; 32]);
    let mut list = signer.create(key(1), name("d1"), 1).unwrap();
    for n in 2..=MAX_DEVICES_PER_USER as u8 {
        signer.add(&mut list, key(n), name("d"), 1).unwrap();
    }
    let over = MAX_DEVICES_PER_USER as u8 + 1;
    let index = list.head().index + 1;
    assert_eq!(
        signer.add(&mut list, key(over), name("one too many"), 1),
        Err(ListError::TooManyDevices { index })
    );
    signer.revoke(&mut list, key(1), 2).unwrap();
    signer
        .add(&mut list, key(over), name("replacement"), 3)
        .unwrap();
    assert_eq!(list.devices().count(), MAX_DEVICES_PER_USER);
}

#[test]
fn a_list_is_bounded_in_length() {
    let signer = IdentitySigner::new(user("alice"), &[42; 32]);
    let mut list = signer.create(key(1), name("d"), 1).unwrap();
    let mut n: u32 = 0;
    let k = |n: u32| {
        DeviceKey(
            SigningKey::from_bytes(&{
                let mut s = [0u8; 32];
                s[..4].copy_from_slice(&n.to_le_bytes());
                s[31] = 1;
                s
            })
            .verifying_key()
            .to_bytes(),
        )
    };
    while list.entries().len() + 2 <= MAX_DEVICE_LIST_ENTRIES {
        n += 1;
        signer.add(&mut list, k(n), name("d"), 1).unwrap();
        signer.revoke(&mut list, k(n), 1).unwrap();
    }
    while list.entries().len() < MAX_DEVICE_LIST_ENTRIES {
        n += 1;
        signer.add(&mut list, k(n), name("d"), 1).unwrap();
    }
    assert_eq!(
        signer.add(&mut list, k(n + 1), name("d"), 1),
        Err(ListError::TooLong)
    );
    DeviceList::verify(&user("alice"), list.entries()).unwrap();
    let mut long = list.entries().to_vec();
    long.push(next(&list, &[42; 32], ListOp::Revoke { device: k(n) }));
    assert_eq!(
        DeviceList::verify(&user("alice"), &long).unwrap_err(),
        ListError::TooLong
    );
}

#[test]
fn a_rolled_back_or_forked_list_is_detected_against_the_pinned_head() {
    let (signer, list) = alice();
    let pinned: ListHead = list.head();
    // Same list, and a longer one, extend the pin.
    list.extends(&pinned).unwrap();
    let mut longer = list.clone();
    signer.revoke(&mut longer, key(3), 5_000).unwrap();
    longer.extends(&pinned).unwrap();
    // The relay serves the list as it was before the tablet was added: a rollback.
    let old = DeviceList::verify(&user("alice"), &list.entries()[..3]).unwrap();
    assert_eq!(
        old.extends(&pinned),
        Err(ListError::Rollback { pinned: 3, got: 3 })
    );
    // Two histories, both signed by alice's identity key (two of her devices appended at
    // once, and the relay shows each side a different one): a fork.
    let mut fork = DeviceList::verify(&user("alice"), &list.entries()[..3]).unwrap();
    signer.add(&mut fork, key(8), name("other"), 3_000).unwrap();
    signer.add(&mut fork, key(9), name("more"), 3_001).unwrap();
    assert_eq!(fork.extends(&pinned), Err(ListError::Fork { index: 3 }));
    assert_ne!(entry_hash(&fork.entries()[3]).unwrap(), pinned.hash);
}

#[test]
fn a_certificate_binds_user_device_and_identity_key() {
    let (_, list) = alice();
    let cert = list.certificate(&key(2)).unwrap();
    assert_eq!(
        verify_certificate(&cert, &user("bob"), &key(2)),
        Err(CertificateError::WrongUser(user("alice")))
    );
    assert_eq!(
        verify_certificate(&cert, &user("alice"), &key(3)),
        Err(CertificateError::WrongDevice)
    );
    // mallory names alice's identity key but signs with her own key.
    let mut forged = cert.clone();
    forged.entry = sign_raw(&[66; 32], cert.entry.body.clone());
    assert_eq!(
        verify_certificate(&forged, &user("alice"), &key(2)),
        Err(CertificateError::BadSignature)
    );
    // An identity key that is not a curve point is refused, not a panic.
    let mut garbage = cert.clone();
    garbage.identity = IdentityKey([0xff; 32]);
    assert_eq!(
        verify_certificate(&garbage, &user("alice"), &key(2)),
        Err(CertificateError::BadSignature)
    );
    // A Create entry is not a certificate.
    let create = DeviceCertificate {
        identity: list.identity(),
        entry: list.entries()[0].clone(),
    };
    assert_eq!(
        verify_certificate(&create, &user("alice"), &key(1)),
        Err(CertificateError::NotAnAdd)
    );
}

#[test]
fn a_self_made_identity_verifies_alone_but_is_not_alices() {
    // mallory makes her own "alice" identity and certifies her device as alice's: the
    // certificate is internally valid; only the pinned identity key (and alice's list) tell
    // it apart, which is the caller's check.
    let (_, list) = alice();
    let mallory = IdentitySigner::new(user("alice"), &[66; 32]);
    let fake = mallory.create(key(9), name("alice's laptop"), 1).unwrap();
    let cert = fake.certificate(&key(9)).unwrap();
    verify_certificate(&cert, &user("alice"), &key(9)).unwrap();
    assert_ne!(cert.identity, list.identity());
    assert!(!list.certifies(&cert));
    // And a copy of one of alice's real entries under mallory's identity key fails.
    let mut stolen = list.certificate(&key(1)).unwrap();
    stolen.identity = mallory.identity();
    assert_eq!(
        verify_certificate(&stolen, &user("alice"), &key(1)),
        Err(CertificateError::BadSignature)
    );
    assert!(!list.certifies(&stolen));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Any corruption of an encoded list either fails to decode, fails to verify, or
    /// decodes to exactly the original list: never a panic, never a different valid list.
    #[test]
    fn corrupted_lists_never_verify_as_something_else(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4)
    ) {
        let (_, list) = alice();
        let original = list.entries().to_vec();
        let mut bytes = cove_wire::encode(&original).unwrap();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        if let Ok(entries) = cove_wire::decode::<Vec<ListEntry>>(&bytes)
            && let Ok(verified) = DeviceList::verify(&user("alice"), &entries)
        {
            prop_assert_eq!(verified.entries(), &original[..]);
        }
    }
}
