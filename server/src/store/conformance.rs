//! The conformance suite every [`RelayStore`] backend passes. Each case is a public function
//! taking the store under test and panicking when the store breaks the trait's contract;
//! [`relay_store_conformance!`](crate::relay_store_conformance) turns the whole list into
//! `#[test]`s for one backend.
//!
//! Built for this crate's own tests, and for other crates with the `conformance` feature, so
//! a backend living elsewhere runs the same suite. In its `Cargo.toml`:
//!
//! ```toml
//! [dev-dependencies]
//! cove-server = { workspace = true, features = ["conformance"] }
//! ```
//!
//! and in a test file:
//!
//! ```ignore
//! cove_server::relay_store_conformance!(my_backend, || {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = MyStore::open(dir.path()).unwrap();
//!     (dir, store)
//! });
//! ```
//!
//! The closure yields `(guard, store)`: the guard (e.g. a temporary directory, `()` when
//! there is none) lives as long as the test. Each case gets a fresh store.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Barrier;

use cove_wire::identity::{DeviceName, EntryBody, EntryHash, IdentityKey, ListEntry, ListOp};
use cove_wire::limits::{
    MAX_DEVICE_LIST_ENTRIES, MAX_DEVICES_PER_USER, MAX_FETCH_ENTRIES, MAX_GROUP_DEVICES,
    MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGE_STOCK, MAX_KEY_PACKAGES_PER_UPLOAD,
    MAX_MEMBERSHIP_CHANGE, MAX_PAYLOAD_BYTES,
};
use cove_wire::{
    DeviceId, DeviceKey, EntryKind, Epoch, GroupId, InboxKind, Payload, PostKind, Seq, Signature,
    Stream, UserName,
};

use super::{
    Account, Appended, BackupCaps, Heads, NewPost, Pruned, PublicGroupState, RelayStore, Stock,
    StoreError,
};

/// Expands to a module `$name` with one `#[test]` per conformance case, each run on a fresh
/// store made by `$make`, a closure (or function) returning `(guard, store)` where `store`
/// implements [`RelayStore`](crate::store::RelayStore) and `guard` lives as long as the
/// test. Items of the calling module are in scope inside `$make`.
///
/// ```ignore
/// cove_server::relay_store_conformance!(memory, || ((), MemoryStore::new()));
/// ```
#[macro_export]
macro_rules! relay_store_conformance {
    ($name:ident, $make:expr $(,)?) => {
        $crate::relay_store_conformance!(@cases $name, $make;
            register_and_look_up,
            add_devices_up_to_the_cap,
            key_packages_are_handed_out_once_then_last_resort,
            key_package_claims_skip_devices_without_any,
            key_package_upload_bounds,
            concurrent_claims_never_hand_out_a_key_package_twice,
            create_group_and_membership,
            application_posts_are_ordered_and_checked,
            a_repeated_post_is_not_stored_again,
            epoch_rule_for_application_and_proposal_posts,
            commit_adds_members_atomically,
            commit_removes_members,
            invalid_membership_changes_change_nothing,
            stale_commit_is_refused_and_its_welcome_never_lands,
            commits_from_eight_threads_for_one_epoch_exactly_one_wins,
            batch_results_are_in_input_order,
            readers_never_see_part_of_a_batch,
            group_size_is_capped,
            cursors_move_forward_only,
            acks_while_posting_to_one_group_never_fail_a_post,
            inbox_cursor_and_reads,
            reads_are_bounded,
            reads_are_bounded_in_bytes,
            oversized_payloads_are_refused,
            fetch_starts_at_the_join_commit,
            removed_device_keeps_its_cursor_until_it_acks_the_removal,
            device_lists_append_and_read_back,
            a_device_list_append_needs_the_expected_length,
            concurrent_device_list_appends_exactly_one_wins,
            device_list_append_bounds,
            revoked_devices_do_not_count_against_the_cap,
            a_revoke_withdraws_the_devices_key_packages,
            last_seen_moves_forward_per_device,
            acknowledged_entries_are_pruned,
            heads_are_the_last_seqs_ever_made,
            expired_entries_are_pruned_even_if_unacknowledged,
            public_state_is_replaced_only_by_an_accepted_post,
            a_device_leaves_without_mls_state,
            accounts_are_stored_once_and_read_back,
            concurrent_account_creations_exactly_one_wins,
            a_password_replacement_changes_the_record_and_password_bundle_only,
            deleting_a_user_removes_everything_of_it_and_frees_the_name,
            an_external_join_adds_its_poster_only_with_a_validated_state,
            backup_index_appends_lists_and_deletes,
            backup_index_caps_segments_and_bytes,
            concurrent_backup_appends_get_distinct_positions,
        );
    };
    (@cases $name:ident, $make:expr; $($case:ident),* $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() {
                    let (_guard, store) = ($make)();
                    $crate::store::conformance::$case(&store);
                }
            )*
        }
    };
}

// ---------------------------------------------------------------------------------------
// The history-backup index.

/// A backup segment whose blob id and entry are made from `tag`, of `size` bytes.
pub fn backup_segment(tag: u8, size: u64) -> cove_wire::NewBackupSegment {
    cove_wire::NewBackupSegment {
        blob: cove_wire::BlobId([tag; 16]),
        size,
        entry: Payload(vec![tag; 40]),
    }
}

/// Segments get positions 1, 2, 3 per user; a list pages after a position; another user's
/// index is apart; a blob is indexed once; an oversized entry and an unknown user are
/// refused; deleting the index returns its blobs and leaves it empty.
pub fn backup_index_appends_lists_and_deletes(store: &dyn RelayStore) {
    device(store, "alice", 1);
    device(store, "bob", 2);
    let (alice, bob) = (user("alice"), user("bob"));
    let caps = BackupCaps::default();
    for (i, tag) in [1u8, 2, 3].into_iter().enumerate() {
        let position = store
            .append_backup_segment(&alice, backup_segment(tag, 100), caps)
            .unwrap();
        assert_eq!(position, i as u64 + 1);
    }
    assert_eq!(
        store
            .append_backup_segment(&bob, backup_segment(9, 100), caps)
            .unwrap(),
        1
    );
    let all = store.backup_segments(&alice, 0, 100).unwrap();
    assert_eq!(
        all.iter().map(|s| s.position).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(all[1].blob, cove_wire::BlobId([2; 16]));
    assert_eq!(all[1].entry, Payload(vec![2; 40]));
    assert_eq!(all[1].size, 100);
    let page = store.backup_segments(&alice, 1, 1).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].position, 2);
    assert!(store.backup_segments(&alice, 3, 100).unwrap().is_empty());
    assert!(
        store
            .backup_segments(&user("nobody"), 0, 100)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .backup_holds_blob(&alice, &cove_wire::BlobId([2; 16]))
            .unwrap()
    );
    assert!(
        !store
            .backup_holds_blob(&alice, &cove_wire::BlobId([9; 16]))
            .unwrap()
    );
    assert!(
        store
            .backup_holds_blob(&bob, &cove_wire::BlobId([9; 16]))
            .unwrap()
    );
    assert!(matches!(
        store.append_backup_segment(&alice, backup_segment(2, 100), caps),
        Err(StoreError::Invalid(_))
    ));
    let mut big = backup_segment(7, 100);
    big.entry = Payload(vec![7; cove_wire::limits::MAX_BACKUP_ENTRY_BYTES + 1]);
    assert!(matches!(
        store.append_backup_segment(&alice, big, caps),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.append_backup_segment(&user("nobody"), backup_segment(8, 1), caps),
        Err(StoreError::UnknownUser)
    ));
    assert_eq!(store.backup_segments(&alice, 0, 100).unwrap().len(), 3);
    assert_eq!(
        store.delete_backup_index(&alice).unwrap(),
        vec![
            cove_wire::BlobId([1; 16]),
            cove_wire::BlobId([2; 16]),
            cove_wire::BlobId([3; 16])
        ]
    );
    assert!(store.backup_segments(&alice, 0, 100).unwrap().is_empty());
    assert!(
        !store
            .backup_holds_blob(&alice, &cove_wire::BlobId([1; 16]))
            .unwrap()
    );
    assert_eq!(store.backup_segments(&bob, 0, 100).unwrap().len(), 1);
}

/// The per-user caps: a segment past the count cap or past the byte cap is refused with
/// `BackupFull` and nothing is indexed; another user's index is not affected.
pub fn backup_index_caps_segments_and_bytes(store: &dyn RelayStore) {
    device(store, "alice", 1);
    device(store, "bob", 2);
    let (alice, bob) = (user("alice"), user("bob"));
    let caps = BackupCaps {
        segments: 2,
        bytes: 1000,
    };
    store
        .append_backup_segment(&alice, backup_segment(1, 600), caps)
        .unwrap();
    assert!(matches!(
        store.append_backup_segment(&alice, backup_segment(2, 401), caps),
        Err(StoreError::BackupFull)
    ));
    store
        .append_backup_segment(&alice, backup_segment(3, 400), caps)
        .unwrap();
    assert!(matches!(
        store.append_backup_segment(&alice, backup_segment(4, 0), caps),
        Err(StoreError::BackupFull)
    ));
    assert_eq!(store.backup_segments(&alice, 0, 100).unwrap().len(), 2);
    assert!(
        !store
            .backup_holds_blob(&alice, &cove_wire::BlobId([2; 16]))
            .unwrap()
    );
    store
        .append_backup_segment(&bob, backup_segment(5, 1000), caps)
        .unwrap();
}

/// Eight threads append to one user's index at once: every append succeeds with its own
/// position, and the positions are exactly 1..=8.
pub fn concurrent_backup_appends_get_distinct_positions(store: &dyn RelayStore) {
    device(store, "alice", 1);
    let alice = user("alice");
    let barrier = Barrier::new(8);
    let mut positions: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let (barrier, alice) = (&barrier, &alice);
                s.spawn(move || {
                    barrier.wait();
                    store
                        .append_backup_segment(
                            alice,
                            backup_segment(i + 1, 10),
                            BackupCaps::default(),
                        )
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    positions.sort_unstable();
    assert_eq!(positions, (1..=8).collect::<Vec<u64>>());
}

// ---------------------------------------------------------------------------------------
// Accounts.

/// An account whose fields are all made from `tag` (the store keeps bytes, it checks none).
pub fn account(tag: u8) -> Account {
    Account {
        record: vec![tag; 192],
        ksf_version: tag,
        password_bundle: vec![tag.wrapping_add(1); 95],
        recovery_bundle: vec![tag.wrapping_add(2); 95],
        recovery_key: [tag.wrapping_add(3); 32],
    }
}

/// No user has an account until one is created; it reads back field for field, per user;
/// a second creation is `Invalid` and changes nothing; an unknown user has no account and
/// cannot get one (UnknownUser).
pub fn accounts_are_stored_once_and_read_back(store: &dyn RelayStore) {
    device(store, "alice", 1);
    device(store, "bob", 2);
    assert_eq!(store.account(&user("alice")).unwrap(), None);
    assert_eq!(store.account(&user("nobody")).unwrap(), None);
    assert!(matches!(
        store.create_account(&user("nobody"), account(9)),
        Err(StoreError::UnknownUser)
    ));
    assert_eq!(store.account(&user("nobody")).unwrap(), None);
    store.create_account(&user("alice"), account(1)).unwrap();
    assert_eq!(store.account(&user("alice")).unwrap(), Some(account(1)));
    assert_eq!(store.account(&user("bob")).unwrap(), None);
    assert!(matches!(
        store.create_account(&user("alice"), account(2)),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.account(&user("alice")).unwrap(), Some(account(1)));
    store.create_account(&user("bob"), account(5)).unwrap();
    assert_eq!(store.account(&user("bob")).unwrap(), Some(account(5)));
    assert_eq!(store.account(&user("alice")).unwrap(), Some(account(1)));
}

/// `replace_password` replaces the record, KSF version and password bundle and keeps the
/// recovery bundle and key; another user's account is untouched; a user without an account
/// is `Invalid` and an unknown one `UnknownUser`, neither changing anything.
pub fn a_password_replacement_changes_the_record_and_password_bundle_only(store: &dyn RelayStore) {
    device(store, "alice", 1);
    device(store, "bob", 2);
    device(store, "carol", 3);
    store.create_account(&user("alice"), account(1)).unwrap();
    store.create_account(&user("bob"), account(5)).unwrap();
    store
        .replace_password(&user("alice"), vec![40; 192], 7, vec![41; 127])
        .unwrap();
    let changed = store.account(&user("alice")).unwrap().unwrap();
    assert_eq!(changed.record, vec![40; 192]);
    assert_eq!(changed.ksf_version, 7);
    assert_eq!(changed.password_bundle, vec![41; 127]);
    assert_eq!(changed.recovery_bundle, account(1).recovery_bundle);
    assert_eq!(changed.recovery_key, account(1).recovery_key);
    assert_eq!(store.account(&user("bob")).unwrap(), Some(account(5)));
    assert!(matches!(
        store.replace_password(&user("carol"), vec![1], 1, vec![1]),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.account(&user("carol")).unwrap(), None);
    assert!(matches!(
        store.replace_password(&user("nobody"), vec![1], 1, vec![1]),
        Err(StoreError::UnknownUser)
    ));
}

/// `delete_user` removes the user's account, device list and devices (their KeyPackages,
/// inbox and memberships: a member becomes a left leaf that a commit may still remove),
/// returns the devices, frees the name (a new registration gets a fresh device id and
/// nothing of the old user), and leaves another user's data as it was.
pub fn deleting_a_user_removes_everything_of_it_and_frees_the_name(store: &dyn RelayStore) {
    let a1 = device(store, "alice", 1);
    let a2 = store.add_device(&user("alice"), &key(2)).unwrap();
    let b = device(store, "bob", 3);
    store
        .append_device_list(&user("alice"), 0, vec![list_entry("alice", 0, 1)])
        .unwrap();
    store
        .append_device_list(&user("bob"), 0, vec![list_entry("bob", 0, 3)])
        .unwrap();
    store.create_account(&user("alice"), account(1)).unwrap();
    store.create_account(&user("bob"), account(5)).unwrap();
    store
        .upload_key_packages(a1, vec![b"kp-a1".to_vec()], Some(b"lr-a1".to_vec()))
        .unwrap();
    store
        .upload_key_packages(b, vec![b"kp-b".to_vec()], None)
        .unwrap();
    // bob's group with both of alice's devices (Welcomes in their inboxes); a second one
    // that a2 was removed from (a departure record).
    let g = gid(1);
    let h = gid(2);
    store.create_group(g, b).unwrap();
    one(store, commit(g, b, 0, &[a1, a2], &[], Some(b"w"))).unwrap();
    store.create_group(h, b).unwrap();
    one(store, commit(h, b, 0, &[a2], &[], Some(b"w"))).unwrap();
    one(store, commit(h, b, 1, &[], &[a2], None)).unwrap();
    // Both keep a history backup.
    let caps = BackupCaps::default();
    store
        .append_backup_segment(&user("alice"), backup_segment(1, 100), caps)
        .unwrap();
    store
        .append_backup_segment(&user("bob"), backup_segment(2, 100), caps)
        .unwrap();

    assert!(matches!(
        store.delete_user(&user("nobody")),
        Err(StoreError::UnknownUser)
    ));
    assert_eq!(store.delete_user(&user("alice")).unwrap(), vec![a1, a2]);

    assert!(matches!(
        store.devices(&user("alice")),
        Err(StoreError::UnknownUser)
    ));
    assert!(store.device(a1).unwrap().is_none());
    assert!(store.device(a2).unwrap().is_none());
    assert_eq!(store.account(&user("alice")).unwrap(), None);
    assert!(matches!(
        store.device_list(&user("alice")),
        Err(StoreError::UnknownUser)
    ));
    assert!(matches!(
        store.claim_key_packages(&user("alice")),
        Err(StoreError::UnknownUser)
    ));
    assert!(!store.is_member(g, a1).unwrap());
    assert!(!store.is_member(g, a2).unwrap());
    assert!(matches!(
        store.joined(g, a1),
        Err(StoreError::UnknownDevice)
    ));
    // Nothing goes to them any more; bob posts on.
    let after = one(store, app(g, b, 1, b"hello")).unwrap();
    assert_eq!(after.members, vec![b]);
    // Their leaves can still be removed by a commit (nothing delivered to them).
    let removal = one(store, commit(g, b, 1, &[], &[a1, a2], None)).unwrap();
    assert!(removal.removed.is_empty(), "{:?}", removal.removed);
    assert_eq!(removal.members, vec![b]);

    // alice's backup index is gone with her.
    assert!(
        store
            .backup_segments(&user("alice"), 0, 10)
            .unwrap()
            .is_empty()
    );

    // bob is untouched.
    assert_eq!(store.account(&user("bob")).unwrap(), Some(account(5)));
    assert_eq!(store.backup_segments(&user("bob"), 0, 10).unwrap().len(), 1);
    assert_eq!(store.devices(&user("bob")).unwrap().len(), 1);
    assert_eq!(store.device_list(&user("bob")).unwrap().len(), 1);
    assert_eq!(store.groups_of(b).unwrap().len(), 2);
    assert_eq!(store.claim_key_packages(&user("bob")).unwrap().len(), 1);

    // The name is free; the new alice has nothing of the old one.
    let new = store.register_user(&user("alice"), &key(9)).unwrap();
    assert!(new > a2, "{new:?} reuses an id");
    assert_eq!(store.account(&user("alice")).unwrap(), None);
    assert!(store.device_list(&user("alice")).unwrap().is_empty());
    assert!(store.claim_key_packages(&user("alice")).unwrap().is_empty());
    assert!(
        store
            .read_inbox(new, Seq(0), 10, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert!(store.groups_of(new).unwrap().is_empty());
    assert_eq!(
        store
            .devices(&user("alice"))
            .unwrap()
            .iter()
            .map(|d| d.device)
            .collect::<Vec<_>>(),
        vec![new]
    );
}

/// Eight threads create an account for the same user at once: exactly one wins, and the
/// stored account is the winner's whole (no field from another).
pub fn concurrent_account_creations_exactly_one_wins(store: &dyn RelayStore) {
    const N: u8 = 8;
    device(store, "alice", 1);
    let alice = user("alice");
    let barrier = Barrier::new(usize::from(N));
    let results: Vec<(u8, Result<(), StoreError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (barrier, alice) = (&barrier, &alice);
                s.spawn(move || {
                    barrier.wait();
                    (10 + i, store.create_account(alice, account(10 + i)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<u8> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(tag, _)| *tag)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one creation accepted");
    for (_, r) in results.iter().filter(|(_, r)| r.is_err()) {
        assert!(matches!(r, Err(StoreError::Invalid(_))));
    }
    assert_eq!(store.account(&alice).unwrap(), Some(account(winners[0])));
}

// ---------------------------------------------------------------------------------------
// Device lists.

/// A device-list entry of `name`'s list at `index` (the store checks shape only: the
/// signature and chain are left empty; `tag` makes entries differ).
pub fn list_entry(name: &str, index: u64, tag: u8) -> ListEntry {
    ListEntry {
        body: EntryBody {
            user: user(name),
            index,
            prev: (index > 0).then_some(EntryHash([tag; 32])),
            time_ms: 1_000 + index,
            op: if index == 0 {
                ListOp::Create {
                    identity: IdentityKey([tag; 32]),
                }
            } else {
                ListOp::Add {
                    device: key(tag),
                    name: DeviceName::new(format!("device {index}")).unwrap(),
                }
            },
        },
        signature: Signature([tag; 64]),
    }
}

/// A user has no list until it appends one; appends read back in order, per user; an
/// unknown user is UnknownUser.
pub fn device_lists_append_and_read_back(store: &dyn RelayStore) {
    assert!(matches!(
        store.device_list(&user("nobody")),
        Err(StoreError::UnknownUser)
    ));
    assert!(matches!(
        store.append_device_list(&user("nobody"), 0, vec![list_entry("nobody", 0, 1)]),
        Err(StoreError::UnknownUser)
    ));
    device(store, "alice", 1);
    device(store, "bob", 2);
    assert_eq!(store.device_list(&user("alice")).unwrap(), vec![]);
    let first = vec![list_entry("alice", 0, 1), list_entry("alice", 1, 2)];
    assert_eq!(
        store
            .append_device_list(&user("alice"), 0, first.clone())
            .unwrap(),
        2
    );
    assert_eq!(store.device_list(&user("alice")).unwrap(), first);
    let more = vec![list_entry("alice", 2, 3)];
    assert_eq!(
        store
            .append_device_list(&user("alice"), 2, more.clone())
            .unwrap(),
        3
    );
    let mut all = first;
    all.extend(more);
    assert_eq!(store.device_list(&user("alice")).unwrap(), all);
    assert_eq!(store.device_list(&user("bob")).unwrap(), vec![]);
}

/// An append verified against another length than the stored list's is ListChanged with
/// the stored length, and stores nothing.
pub fn a_device_list_append_needs_the_expected_length(store: &dyn RelayStore) {
    device(store, "alice", 1);
    let alice = user("alice");
    let first = vec![list_entry("alice", 0, 1), list_entry("alice", 1, 2)];
    store.append_device_list(&alice, 0, first.clone()).unwrap();
    // A stale caller that believed the list empty.
    assert!(matches!(
        store.append_device_list(&alice, 0, vec![list_entry("alice", 0, 9)]),
        Err(StoreError::ListChanged { stored: 2 })
    ));
    // One that believed it longer.
    assert!(matches!(
        store.append_device_list(&alice, 3, vec![list_entry("alice", 3, 9)]),
        Err(StoreError::ListChanged { stored: 2 })
    ));
    assert_eq!(store.device_list(&alice).unwrap(), first);
}

/// Eight threads append a different entry 1 to the same one-entry list at once: exactly one
/// wins, the others are ListChanged { stored: 2 }, and the stored entry is the winner's.
pub fn concurrent_device_list_appends_exactly_one_wins(store: &dyn RelayStore) {
    const N: u8 = 8;
    device(store, "alice", 1);
    let alice = user("alice");
    store
        .append_device_list(&alice, 0, vec![list_entry("alice", 0, 1)])
        .unwrap();
    let barrier = Barrier::new(usize::from(N));
    let results: Vec<(u8, Result<u64, StoreError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (barrier, alice) = (&barrier, &alice);
                s.spawn(move || {
                    barrier.wait();
                    let entry = list_entry("alice", 1, 10 + i);
                    (10 + i, store.append_device_list(alice, 1, vec![entry]))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<u8> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(tag, _)| *tag)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one append accepted");
    for (_, r) in results.iter().filter(|(_, r)| r.is_err()) {
        assert!(matches!(r, Err(StoreError::ListChanged { stored: 2 })));
    }
    let stored = store.device_list(&alice).unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1], list_entry("alice", 1, winners[0]));
}

/// A `Revoke` entry of `name`'s list at `index` for `device` (shape only, like
/// [`list_entry`]).
pub fn revoke_entry(name: &str, index: u64, device: DeviceKey) -> ListEntry {
    let mut entry = list_entry(name, index, 0xee);
    entry.body.op = ListOp::Revoke { device };
    entry
}

/// The per-user cap counts devices not revoked in the stored list: at the cap, a revoke
/// makes room for exactly one more device; another user's list changes nothing.
pub fn revoked_devices_do_not_count_against_the_cap(store: &dyn RelayStore) {
    let alice = user("alice");
    store.register_user(&alice, &key(0)).unwrap();
    for i in 1..MAX_DEVICES_PER_USER {
        store
            .add_device(&alice, &key(u8::try_from(i).unwrap()))
            .unwrap();
    }
    assert!(matches!(
        store.add_device(&alice, &key(99)),
        Err(StoreError::TooManyDevices)
    ));
    // Bob revoking a key of alice's in his own list does not count for alice.
    device(store, "bob", 50);
    let bobs = vec![list_entry("bob", 0, 50), revoke_entry("bob", 1, key(1))];
    store.append_device_list(&user("bob"), 0, bobs).unwrap();
    assert!(matches!(
        store.add_device(&alice, &key(99)),
        Err(StoreError::TooManyDevices)
    ));
    let list = vec![list_entry("alice", 0, 7), revoke_entry("alice", 1, key(1))];
    store.append_device_list(&alice, 0, list).unwrap();
    let added = store.add_device(&alice, &key(99)).unwrap();
    assert!(
        store
            .devices(&alice)
            .unwrap()
            .iter()
            .any(|d| d.device == added)
    );
    assert!(matches!(
        store.add_device(&alice, &key(100)),
        Err(StoreError::TooManyDevices)
    ));
}

/// The append of a `Revoke` entry deletes the revoked device's KeyPackages (normal and
/// last resort), not another device's, and claims leave the revoked device out.
pub fn a_revoke_withdraws_the_devices_key_packages(store: &dyn RelayStore) {
    let alice = user("alice");
    let a1 = store.register_user(&alice, &key(1)).unwrap();
    let a2 = store.add_device(&alice, &key(2)).unwrap();
    for (d, tag) in [(a1, "a1"), (a2, "a2")] {
        let kps = vec![
            format!("{tag}-kp1").into_bytes(),
            format!("{tag}-kp2").into_bytes(),
        ];
        store
            .upload_key_packages(d, kps, Some(format!("{tag}-lr").into_bytes()))
            .unwrap();
    }
    store
        .append_device_list(&alice, 0, vec![list_entry("alice", 0, 1)])
        .unwrap();
    store
        .append_device_list(&alice, 1, vec![revoke_entry("alice", 1, key(2))])
        .unwrap();
    assert_eq!(store.key_package_stock(a2).unwrap(), stock(0, false));
    assert_eq!(store.key_package_stock(a1).unwrap(), stock(2, true));
    let claimed = store.claim_key_packages(&alice).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].device, a1);
    assert_eq!(claimed[0].key_package.as_bytes(), b"a1-kp1");
    // Uploaded again after the revoke (e.g. over a connection still open): never claimed.
    store
        .upload_key_packages(a2, vec![b"late".to_vec()], Some(b"late-lr".to_vec()))
        .unwrap();
    for _ in 0..3 {
        let claimed = store.claim_key_packages(&alice).unwrap();
        assert!(claimed.iter().all(|c| c.device == a1), "{claimed:?}");
    }
}

/// Shape checks, each storing nothing: no entries, another user's entry, an entry out of
/// its place, a list past `MAX_DEVICE_LIST_ENTRIES` (a list of exactly that many is
/// accepted).
pub fn device_list_append_bounds(store: &dyn RelayStore) {
    device(store, "alice", 1);
    let alice = user("alice");
    let invalid = |r: Result<u64, StoreError>| matches!(r, Err(StoreError::Invalid(_)));
    assert!(invalid(store.append_device_list(&alice, 0, vec![])));
    assert!(invalid(store.append_device_list(
        &alice,
        0,
        vec![list_entry("bob", 0, 1)]
    )));
    assert!(invalid(store.append_device_list(
        &alice,
        0,
        vec![list_entry("alice", 0, 1), list_entry("alice", 2, 2)]
    )));
    assert!(invalid(store.append_device_list(
        &alice,
        0,
        vec![list_entry("alice", 1, 1)]
    )));
    assert_eq!(store.device_list(&alice).unwrap(), vec![]);
    let max = MAX_DEVICE_LIST_ENTRIES as u64;
    let too_many: Vec<ListEntry> = (0..=max).map(|i| list_entry("alice", i, 1)).collect();
    assert!(invalid(store.append_device_list(&alice, 0, too_many)));
    assert_eq!(store.device_list(&alice).unwrap(), vec![]);
    let full: Vec<ListEntry> = (0..max).map(|i| list_entry("alice", i, 1)).collect();
    assert_eq!(
        store.append_device_list(&alice, 0, full.clone()).unwrap(),
        max
    );
    assert!(invalid(store.append_device_list(
        &alice,
        max,
        vec![list_entry("alice", max, 1)]
    )));
    assert_eq!(store.device_list(&alice).unwrap(), full);
}

// ---------------------------------------------------------------------------------------
// Join seqs and departures.

/// A member reads from the commit that added it on, never earlier entries; the creator from
/// the start; a device removed and added again from its latest join.
pub fn fetch_starts_at_the_join_commit(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let c = device(store, "carol", 3);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    one(store, app(g, a, 0, b"before b")).unwrap();
    one(store, app(g, a, 0, b"still before b")).unwrap();
    let added = one(store, commit(g, a, 0, &[b], &[], Some(b"w"))).unwrap();
    assert_eq!(added.entry.seq, Seq(3));
    one(store, app(g, b, 1, b"after b")).unwrap();
    assert_eq!(store.joined(g, a).unwrap(), Some(Seq(0)));
    assert_eq!(store.joined(g, b).unwrap(), Some(Seq(3)));
    assert_eq!(store.joined(g, c).unwrap(), None);
    let seqs = |d: DeviceId, after: u64| -> Vec<u64> {
        store
            .fetch(g, d, Seq(after), 100, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.seq.0)
            .collect()
    };
    assert_eq!(seqs(a, 0), vec![1, 2, 3, 4]);
    assert_eq!(seqs(b, 0), vec![4]);
    assert_eq!(seqs(b, 1), vec![4]);
    assert_eq!(seqs(b, 4), Vec::<u64>::new());
    assert!(matches!(
        store.fetch(g, c, Seq(0), 100, usize::MAX),
        Err(StoreError::NotMember)
    ));
    assert!(matches!(
        store.fetch(gid(9), a, Seq(0), 100, usize::MAX),
        Err(StoreError::UnknownGroup)
    ));
    // Removed, then added again: reads from the second join.
    one(store, commit(g, a, 1, &[], &[b], None)).unwrap();
    assert!(matches!(
        store.fetch(g, b, Seq(0), 100, usize::MAX),
        Err(StoreError::NotMember)
    ));
    one(store, app(g, a, 2, b"while b is away")).unwrap();
    let again = one(store, commit(g, a, 2, &[b], &[], Some(b"w2"))).unwrap();
    assert_eq!(again.entry.seq, Seq(7));
    assert_eq!(store.joined(g, b).unwrap(), Some(Seq(7)));
    assert_eq!(seqs(b, 0), Vec::<u64>::new());
    one(store, app(g, a, 3, b"welcome back")).unwrap();
    assert_eq!(seqs(b, 0), vec![8]);
    // The unchecked log read is unchanged.
    assert_eq!(
        store.read_group(g, Seq(0), 100, usize::MAX).unwrap().len(),
        8
    );
}

/// A removed device keeps a departure record with its cursor until it acks the commit that
/// removed it: it may ack up to that commit and no further, it cannot read or post, and an
/// ack reaching the commit (or being added again) drops the record.
pub fn removed_device_keeps_its_cursor_until_it_acks_the_removal(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let g = gid(1);
    let h = gid(2);
    store.create_group(g, a).unwrap();
    store.create_group(h, a).unwrap();
    one(store, commit(g, a, 0, &[b], &[], Some(b"w"))).unwrap(); // g seq 1
    one(store, commit(h, a, 0, &[b], &[], Some(b"w"))).unwrap(); // h seq 1
    one(store, app(g, a, 1, b"m2")).unwrap();
    one(store, app(g, a, 1, b"m3")).unwrap();
    store.ack(b, Stream::Group(g), Seq(2)).unwrap();
    let removal = one(store, commit(g, a, 1, &[], &[b], None)).unwrap();
    assert_eq!(removal.entry.seq, Seq(4));
    one(store, app(g, a, 2, b"after removal")).unwrap();
    one(store, commit(h, a, 1, &[], &[b], None)).unwrap(); // h seq 2
    assert_eq!(store.departures(b).unwrap(), vec![(g, Seq(4)), (h, Seq(2))]);
    assert!(store.departures(a).unwrap().is_empty());
    assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(2));
    assert!(store.groups_of(b).unwrap().is_empty());
    assert!(matches!(
        store.fetch(g, b, Seq(0), 10, usize::MAX),
        Err(StoreError::NotMember)
    ));
    assert!(matches!(
        one(store, app(g, b, 2, b"x")),
        Err(StoreError::NotMember)
    ));
    // Acks up to the removal commit only; backwards changes nothing.
    assert!(matches!(
        store.ack(b, Stream::Group(g), Seq(5)),
        Err(StoreError::Invalid(_))
    ));
    store.ack(b, Stream::Group(g), Seq(3)).unwrap();
    store.ack(b, Stream::Group(g), Seq(1)).unwrap();
    assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(3));
    store.flush().unwrap();
    assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(3));
    store.ack(b, Stream::Group(g), Seq(4)).unwrap();
    assert_eq!(store.departures(b).unwrap(), vec![(h, Seq(2))]);
    assert!(matches!(
        store.cursor(b, Stream::Group(g)),
        Err(StoreError::NotMember)
    ));
    assert!(matches!(
        store.ack(b, Stream::Group(g), Seq(4)),
        Err(StoreError::NotMember)
    ));
    // Being added again keeps the record (b still receives the commit that removed it); the
    // member cursor starts at the new commit, and an ack of the removal drops the record.
    assert_eq!(store.departure_cursor(b, h).unwrap(), Some(Seq(1)));
    let again = one(store, commit(h, a, 2, &[b], &[], Some(b"w2"))).unwrap(); // h seq 3
    assert_eq!(store.departures(b).unwrap(), vec![(h, Seq(2))]);
    assert_eq!(store.departure_cursor(b, h).unwrap(), Some(Seq(1)));
    assert_eq!(store.cursor(b, Stream::Group(h)).unwrap(), again.entry.seq);
    store.ack(b, Stream::Group(h), Seq(2)).unwrap();
    store.flush().unwrap();
    assert!(store.departures(b).unwrap().is_empty());
    assert_eq!(store.departure_cursor(b, h).unwrap(), None);
    assert_eq!(store.cursor(b, Stream::Group(h)).unwrap(), again.entry.seq);
    assert_eq!(store.departure_cursor(b, g).unwrap(), None);
    // A member's buffered ack written after its removal is kept in the record.
    one(store, app(h, a, 3, b"m")).unwrap(); // h seq 4
    store.ack(b, Stream::Group(h), Seq(4)).unwrap();
    one(store, commit(h, a, 3, &[], &[b], None)).unwrap(); // h seq 5
    store.flush().unwrap();
    assert_eq!(store.cursor(b, Stream::Group(h)).unwrap(), Seq(4));
    assert_eq!(store.departures(b).unwrap(), vec![(h, Seq(5))]);
}

// ---------------------------------------------------------------------------------------
// Directory.

/// Registration, UserTaken, look-ups of users and devices.
pub fn register_and_look_up(store: &dyn RelayStore) {
    let alice = user("alice");
    let a1 = store.register_user(&alice, &key(1)).unwrap();
    assert!(matches!(
        store.register_user(&alice, &key(2)),
        Err(StoreError::UserTaken)
    ));
    let b1 = store.register_user(&user("bob"), &key(3)).unwrap();
    assert_ne!(a1, b1);
    let devices = store.devices(&alice).unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!((devices[0].device, devices[0].key), (a1, key(1)));
    assert_eq!(store.device(a1).unwrap(), Some((alice.clone(), key(1))));
    assert_eq!(store.device(b1).unwrap(), Some((user("bob"), key(3))));
    assert_eq!(store.device(DeviceId(9_999)).unwrap(), None);
    assert_eq!(store.device(DeviceId(u64::MAX)).unwrap(), None);
    assert!(matches!(
        store.devices(&user("carol")),
        Err(StoreError::UnknownUser)
    ));
}

/// Last seen: none until recorded, then the latest recorded time, never backwards, per
/// device and per user; unknown devices and users refused.
pub fn last_seen_moves_forward_per_device(store: &dyn RelayStore) {
    let alice = user("alice");
    let a1 = store.register_user(&alice, &key(1)).unwrap();
    let a2 = store.add_device(&alice, &key(2)).unwrap();
    let b1 = device(store, "bob", 3);
    assert_eq!(
        store.last_seen(&alice).unwrap(),
        vec![(a1, None), (a2, None)]
    );

    store.record_seen(a1, 1_000).unwrap();
    store.record_seen(b1, 5_000).unwrap();
    assert_eq!(
        store.last_seen(&alice).unwrap(),
        vec![(a1, Some(1_000)), (a2, None)]
    );
    store.record_seen(a1, 2_000).unwrap();
    store.record_seen(a2, 1_500).unwrap();
    // An older time (a clock step back) does not move it backwards.
    store.record_seen(a1, 1_200).unwrap();
    assert_eq!(
        store.last_seen(&alice).unwrap(),
        vec![(a1, Some(2_000)), (a2, Some(1_500))]
    );
    assert_eq!(
        store.last_seen(&user("bob")).unwrap(),
        vec![(b1, Some(5_000))]
    );
    // Times past i64 (SQLite's integers) are kept as the largest it can hold, not refused.
    store.record_seen(b1, u64::MAX).unwrap();
    let bob = store.last_seen(&user("bob")).unwrap();
    assert!(bob[0].1.is_some_and(|t| t >= i64::MAX as u64), "{bob:?}");

    assert!(matches!(
        store.record_seen(DeviceId(9_999), 1),
        Err(StoreError::UnknownDevice)
    ));
    assert!(matches!(
        store.record_seen(DeviceId(u64::MAX), 1),
        Err(StoreError::UnknownDevice)
    ));
    assert!(matches!(
        store.last_seen(&user("carol")),
        Err(StoreError::UnknownUser)
    ));
}

/// Further devices: ordered by id, capped per user, unknown users refused.
pub fn add_devices_up_to_the_cap(store: &dyn RelayStore) {
    let alice = user("alice");
    let first = store.register_user(&alice, &key(0)).unwrap();
    let mut ids = vec![first];
    for i in 1..MAX_DEVICES_PER_USER {
        ids.push(
            store
                .add_device(&alice, &key(u8::try_from(i).unwrap()))
                .unwrap(),
        );
    }
    assert!(matches!(
        store.add_device(&alice, &key(99)),
        Err(StoreError::TooManyDevices)
    ));
    assert!(matches!(
        store.add_device(&user("nobody"), &key(1)),
        Err(StoreError::UnknownUser)
    ));
    let listed: Vec<DeviceId> = store
        .devices(&alice)
        .unwrap()
        .iter()
        .map(|d| d.device)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    assert_eq!(listed.len(), MAX_DEVICES_PER_USER);
    // Another user's cap is independent.
    let bob = user("bob");
    store.register_user(&bob, &key(50)).unwrap();
    store.add_device(&bob, &key(51)).unwrap();
}

// ---------------------------------------------------------------------------------------
// KeyPackages.

/// Normal KeyPackages once each in upload order, then the last-resort one, not consumed.
pub fn key_packages_are_handed_out_once_then_last_resort(store: &dyn RelayStore) {
    let alice = user("alice");
    let a1 = store.register_user(&alice, &key(1)).unwrap();
    assert_eq!(store.key_package_stock(a1).unwrap(), stock(0, false));
    let stock_after = store
        .upload_key_packages(
            a1,
            vec![b"kp1".to_vec(), b"kp2".to_vec()],
            Some(b"lr1".to_vec()),
        )
        .unwrap();
    assert_eq!(stock_after, stock(2, true));
    let claim = |expect: &[u8], last_resort: bool| {
        let got = store.claim_key_packages(&alice).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].device, a1);
        assert_eq!(got[0].key_package.as_bytes(), expect);
        assert_eq!(got[0].last_resort, last_resort);
    };
    claim(b"kp1", false);
    assert_eq!(store.key_package_stock(a1).unwrap(), stock(1, true));
    claim(b"kp2", false);
    claim(b"lr1", true);
    claim(b"lr1", true);
    assert_eq!(store.key_package_stock(a1).unwrap(), stock(0, true));
    // A new upload without a last resort keeps the old one; with one replaces it.
    assert_eq!(
        store
            .upload_key_packages(a1, vec![b"kp3".to_vec()], None)
            .unwrap(),
        stock(1, true)
    );
    claim(b"kp3", false);
    store
        .upload_key_packages(a1, vec![], Some(b"lr2".to_vec()))
        .unwrap();
    claim(b"lr2", true);
    assert!(matches!(
        store.claim_key_packages(&user("nobody")),
        Err(StoreError::UnknownUser)
    ));
    assert!(matches!(
        store.key_package_stock(DeviceId(9_999)),
        Err(StoreError::UnknownDevice)
    ));
    assert!(matches!(
        store.upload_key_packages(DeviceId(9_999), vec![b"x".to_vec()], None),
        Err(StoreError::UnknownDevice)
    ));
}

/// One KeyPackage per device; a device with neither normal nor last resort is left out.
pub fn key_package_claims_skip_devices_without_any(store: &dyn RelayStore) {
    let alice = user("alice");
    let a1 = store.register_user(&alice, &key(1)).unwrap();
    let a2 = store.add_device(&alice, &key(2)).unwrap();
    let a3 = store.add_device(&alice, &key(3)).unwrap();
    assert!(store.claim_key_packages(&alice).unwrap().is_empty());
    store
        .upload_key_packages(a1, vec![b"a1-kp".to_vec()], None)
        .unwrap();
    store
        .upload_key_packages(a3, vec![], Some(b"a3-lr".to_vec()))
        .unwrap();
    let got = store.claim_key_packages(&alice).unwrap();
    let summary: Vec<(DeviceId, &[u8], bool)> = got
        .iter()
        .map(|c| (c.device, c.key_package.as_bytes(), c.last_resort))
        .collect();
    assert_eq!(
        summary,
        vec![(a1, &b"a1-kp"[..], false), (a3, &b"a3-lr"[..], true)]
    );
    // a1's only normal one is gone and it has no last resort: now only a3 answers.
    let got = store.claim_key_packages(&alice).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].device, a3);
    assert_ne!(a2, a3);
}

/// Upload bounds: batch size, KeyPackage size, empty KeyPackages, stock cap (all-or-nothing).
pub fn key_package_upload_bounds(store: &dyn RelayStore) {
    let a1 = store.register_user(&user("alice"), &key(1)).unwrap();
    let batch = |tag: usize, n: usize| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("kp-{tag}-{i}").into_bytes())
            .collect()
    };
    assert!(matches!(
        store.upload_key_packages(a1, batch(0, MAX_KEY_PACKAGES_PER_UPLOAD + 1), None),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.upload_key_packages(a1, vec![vec![7; MAX_KEY_PACKAGE_BYTES + 1]], None),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.upload_key_packages(a1, vec![], Some(vec![7; MAX_KEY_PACKAGE_BYTES + 1])),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.upload_key_packages(a1, vec![b"ok".to_vec(), vec![]], None),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.key_package_stock(a1).unwrap(), stock(0, false));
    // The largest allowed KeyPackage is fine.
    store
        .upload_key_packages(a1, vec![vec![1; MAX_KEY_PACKAGE_BYTES]], None)
        .unwrap();
    let mut uploads = 1;
    let mut have = 1;
    while have + MAX_KEY_PACKAGES_PER_UPLOAD <= MAX_KEY_PACKAGE_STOCK {
        store
            .upload_key_packages(a1, batch(uploads, MAX_KEY_PACKAGES_PER_UPLOAD), None)
            .unwrap();
        uploads += 1;
        have += MAX_KEY_PACKAGES_PER_UPLOAD;
    }
    let room = MAX_KEY_PACKAGE_STOCK - have;
    assert!(matches!(
        store.upload_key_packages(a1, batch(uploads, room + 1), Some(b"lr".to_vec())),
        Err(StoreError::StockFull)
    ));
    // Refused as a whole: neither the KeyPackages nor the last resort were stored.
    let full = u32::try_from(have).unwrap();
    assert_eq!(store.key_package_stock(a1).unwrap(), stock(full, false));
    let filled = store
        .upload_key_packages(a1, batch(uploads + 1, room), None)
        .unwrap();
    assert_eq!(
        filled,
        stock(u32::try_from(MAX_KEY_PACKAGE_STOCK).unwrap(), false)
    );
    // A full stock still accepts a new last resort.
    assert!(
        store
            .upload_key_packages(a1, vec![], Some(b"lr".to_vec()))
            .unwrap()
            .has_last_resort
    );
}

/// 8 threads released together by one barrier claim from 50 KeyPackages plus a last resort
/// (how their calls interleave inside the store is up to the scheduler and not checked): no
/// duplicate, all 50 handed out, every other claim gets the last resort.
pub fn concurrent_claims_never_hand_out_a_key_package_twice(store: &dyn RelayStore) {
    let bob = user("bob");
    let b1 = store.register_user(&bob, &key(1)).unwrap();
    let kps: Vec<Vec<u8>> = (0..50).map(|i| format!("kp-{i}").into_bytes()).collect();
    store
        .upload_key_packages(b1, kps, Some(b"last".to_vec()))
        .unwrap();
    const THREADS: usize = 8;
    const CLAIMS: usize = 10;
    let barrier = Barrier::new(THREADS);
    let claimed: Vec<Vec<(Vec<u8>, bool)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    (0..CLAIMS)
                        .map(|_| {
                            let got = store.claim_key_packages(&bob).unwrap();
                            assert_eq!(got.len(), 1);
                            (got[0].key_package.0.clone(), got[0].last_resort)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<(Vec<u8>, bool)> = claimed.into_iter().flatten().collect();
    assert_eq!(all.len(), THREADS * CLAIMS);
    let normal: Vec<&Vec<u8>> = all.iter().filter(|(_, lr)| !lr).map(|(kp, _)| kp).collect();
    let distinct: HashSet<&Vec<u8>> = normal.iter().copied().collect();
    assert_eq!(normal.len(), 50, "every normal KeyPackage handed out");
    assert_eq!(distinct.len(), 50, "no KeyPackage handed out twice");
    assert!(
        all.iter()
            .filter(|(_, lr)| *lr)
            .all(|(kp, _)| kp == b"last")
    );
    assert_eq!(store.key_package_stock(b1).unwrap(), stock(0, true));
}

// ---------------------------------------------------------------------------------------
// Groups.

/// A new group is at epoch 0 with its creator as only member; ids are unique.
pub fn create_group_and_membership(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    assert!(matches!(
        store.create_group(g, b),
        Err(StoreError::GroupExists)
    ));
    assert!(matches!(
        store.create_group(gid(2), DeviceId(9_999)),
        Err(StoreError::UnknownDevice)
    ));
    assert!(store.is_member(g, a).unwrap());
    assert!(!store.is_member(g, b).unwrap());
    assert!(matches!(
        store.is_member(gid(3), a),
        Err(StoreError::UnknownGroup)
    ));
    let groups = store.groups_of(a).unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].group, groups[0].epoch), (g, Epoch(0)));
    assert!(store.groups_of(b).unwrap().is_empty());
    assert!(matches!(
        store.groups_of(DeviceId(9_999)),
        Err(StoreError::UnknownDevice)
    ));
    store.create_group(gid(0), a).unwrap();
    let ids: Vec<GroupId> = store
        .groups_of(a)
        .unwrap()
        .iter()
        .map(|s| s.group)
        .collect();
    assert_eq!(
        ids,
        vec![gid(0), gid(1)],
        "groups_of is ordered by group id"
    );
    assert_eq!(store.cursor(a, Stream::Group(g)).unwrap(), Seq(0));
    assert!(
        store
            .read_group(g, Seq(0), 10, usize::MAX)
            .unwrap()
            .is_empty()
    );
}

/// Members' posts get seq 1, 2, 3 and read back in order with every field; others refused.
/// A resend of the same bytes by the same device (its client missed the reply) is not
/// stored again, in the same batch or a later one, even after the epoch moved on: the store
/// answers `Duplicate` with the original seq. The same bytes from another member, and
/// commits, are not affected.
pub fn a_repeated_post_is_not_stored_again(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    one(store, commit(g, a, 0, &[b], &[], Some(b"welcome"))).unwrap();
    assert_eq!(one(store, app(g, a, 1, b"m1")).unwrap().entry.seq, Seq(2));
    assert!(matches!(
        one(store, app(g, a, 1, b"m1")),
        Err(StoreError::Duplicate { seq: Seq(2) })
    ));
    let batch = store.append_batch(vec![app(g, a, 1, b"m2"), app(g, a, 1, b"m2")]);
    assert_eq!(batch[0].as_ref().unwrap().entry.seq, Seq(3));
    assert!(matches!(
        batch[1],
        Err(StoreError::Duplicate { seq: Seq(3) })
    ));
    // Another sender's identical bytes are its own post.
    assert_eq!(one(store, app(g, b, 1, b"m1")).unwrap().entry.seq, Seq(4));
    // Two commits later the original epoch is stale; the resend still gets its seq.
    one(store, commit(g, a, 1, &[], &[], None)).unwrap();
    one(store, commit(g, b, 2, &[], &[], None)).unwrap();
    assert!(matches!(
        one(store, app(g, a, 1, b"m1")),
        Err(StoreError::Duplicate { seq: Seq(2) })
    ));
    assert!(matches!(
        one(store, app(g, a, 1, b"new")),
        Err(StoreError::StaleEpoch { current: Epoch(3) })
    ));
    let seqs: Vec<u64> = store
        .read_group(g, Seq(0), 100, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq.0)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6], "nothing stored twice");
    // The window is bounded: a post older than the last RECENT_POSTS is forgotten.
    for i in 0..crate::store::rules::RECENT_POSTS {
        let payload = format!("filler {i}");
        one(store, app(g, b, 3, payload.as_bytes())).unwrap();
    }
    let m = one(store, app(g, a, 3, b"m1")).unwrap();
    assert_eq!(m.entry.seq.0, 7 + crate::store::rules::RECENT_POSTS as u64);
}

/// Members' posts (three application messages, then a proposal) get seq 1 to 4 and read
/// back in order with every field, also from a later seq; a non-member's post is NotMember,
/// a post to (or a read of) an unknown group UnknownGroup.
pub fn application_posts_are_ordered_and_checked(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    for i in 1..=3u8 {
        let appended = one(store, app(g, a, 0, &[i; 5]));
        let appended = appended.unwrap();
        assert_eq!(appended.entry.seq, Seq(u64::from(i)));
        assert_eq!(appended.members, vec![a]);
        assert!(appended.removed.is_empty() && appended.welcomes.is_empty());
    }
    let proposal = NewPost {
        kind: PostKind::Proposal,
        ..app(g, a, 0, b"prop")
    };
    assert_eq!(one(store, proposal).unwrap().entry.seq, Seq(4));
    assert!(matches!(
        one(store, app(g, b, 0, b"x")),
        Err(StoreError::NotMember)
    ));
    assert!(matches!(
        one(store, app(gid(9), a, 0, b"x")),
        Err(StoreError::UnknownGroup)
    ));
    let entries = store.read_group(g, Seq(0), 100, usize::MAX).unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    let e = &entries[1];
    assert_eq!(
        (e.group, e.epoch, e.sender, e.received_at_ms),
        (g, Epoch(0), a, 1_000)
    );
    assert_eq!(e.kind, EntryKind::Application);
    assert_eq!(e.payload, Payload(vec![2; 5]));
    assert_eq!(entries[3].kind, EntryKind::Proposal);
    assert_eq!(entries[3].payload.as_bytes(), b"prop");
    let later = store.read_group(g, Seq(2), 100, usize::MAX).unwrap();
    assert_eq!(
        later.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert!(
        store
            .read_group(g, Seq(4), 100, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.read_group(gid(9), Seq(0), 10, usize::MAX),
        Err(StoreError::UnknownGroup)
    ));
}

/// Application messages and proposals are accepted in the current epoch and the one before
/// it (messages racing a commit), never in a future or older epoch.
pub fn epoch_rule_for_application_and_proposal_posts(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    assert!(matches!(
        one(store, app(g, a, 1, b"future")),
        Err(StoreError::StaleEpoch { current: Epoch(0) })
    ));
    one(store, commit(g, a, 0, &[], &[], None)).unwrap();
    one(store, app(g, a, 1, b"current")).unwrap();
    one(store, app(g, a, 0, b"previous")).unwrap();
    one(
        store,
        NewPost {
            kind: PostKind::Proposal,
            ..app(g, a, 0, b"prev-prop")
        },
    )
    .unwrap();
    one(store, commit(g, a, 1, &[], &[], None)).unwrap();
    assert!(matches!(
        one(store, app(g, a, 0, b"too old")),
        Err(StoreError::StaleEpoch { current: Epoch(2) })
    ));
    assert!(matches!(
        one(
            store,
            NewPost {
                kind: PostKind::Proposal,
                ..app(g, a, 3, b"future")
            }
        ),
        Err(StoreError::StaleEpoch { current: Epoch(2) })
    ));
    // (Not the bytes of the earlier "previous": those would be a repeated post.)
    one(store, app(g, a, 1, b"previous 2")).unwrap();
    assert_eq!(store.groups_of(a).unwrap()[0].epoch, Epoch(2));
}

/// A commit adding a device: epoch advances, the device becomes a member with its cursor at
/// the commit, and the Welcome lands in its inbox, all reported in `Appended`.
pub fn commit_adds_members_atomically(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let c = device(store, "carol", 3);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    one(store, app(g, a, 0, b"before")).unwrap();
    let appended = one(store, commit(g, a, 0, &[c, b], &[], Some(b"welcome-1"))).unwrap();
    assert_eq!(appended.entry.seq, Seq(2));
    assert_eq!(appended.entry.epoch, Epoch(0));
    assert_eq!(
        appended.entry.kind,
        EntryKind::Commit {
            added: vec![c, b].into(),
            removed: vec![].into()
        }
    );
    assert_eq!(appended.members, sorted(vec![a, b, c]));
    assert!(appended.removed.is_empty());
    let mut welcomed: Vec<DeviceId> = appended.welcomes.iter().map(|(d, _)| *d).collect();
    welcomed.sort();
    assert_eq!(welcomed, sorted(vec![b, c]));
    // One shared copy of the Welcome for all the devices it adds.
    let shared = appended.welcome.as_ref().unwrap();
    for (d, seq) in &appended.welcomes {
        let w = shared.entry(*seq);
        assert_eq!(w.seq, Seq(1));
        assert_eq!(
            w.kind,
            InboxKind::Welcome {
                group: g,
                commit_seq: Seq(2),
                sender: a
            }
        );
        assert_eq!(w.payload.as_bytes(), b"welcome-1");
        assert_eq!(
            store.read_inbox(*d, Seq(0), 10, usize::MAX).unwrap(),
            vec![w.clone()]
        );
    }
    for d in [b, c] {
        assert!(store.is_member(g, d).unwrap());
        assert_eq!(store.cursor(d, Stream::Group(g)).unwrap(), Seq(2));
        let groups = store.groups_of(d).unwrap();
        assert_eq!((groups[0].group, groups[0].epoch), (g, Epoch(1)));
    }
    assert!(
        store
            .read_inbox(a, Seq(0), 10, usize::MAX)
            .unwrap()
            .is_empty()
    );
    // The commit is in the log (without its Welcome); the new members can post.
    let log = store.read_group(g, Seq(1), 10, usize::MAX).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].payload.as_bytes(), b"commit");
    let from_b = one(store, app(g, b, 1, b"hi from bob")).unwrap();
    assert_eq!(from_b.entry.seq, Seq(3));
    assert_eq!(from_b.members, sorted(vec![a, b, c]));
    // A second Welcome to b gets the next inbox seq.
    let h = gid(2);
    store.create_group(h, c).unwrap();
    let second = one(store, commit(h, c, 0, &[b], &[], Some(b"welcome-2"))).unwrap();
    assert_eq!(second.welcomes[0].1, Seq(2));
    assert_eq!(
        store.read_inbox(b, Seq(1), 10, usize::MAX).unwrap().len(),
        1
    );
}

/// A commit removing a device: it is told (in `removed`), then loses access.
pub fn commit_removes_members(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    one(store, commit(g, a, 0, &[b], &[], Some(b"w"))).unwrap();
    let appended = one(store, commit(g, a, 1, &[], &[b], None)).unwrap();
    assert_eq!(appended.members, vec![a]);
    assert_eq!(appended.removed, vec![b]);
    assert_eq!(
        appended.entry.kind,
        EntryKind::Commit {
            added: vec![].into(),
            removed: vec![b].into()
        }
    );
    assert!(!store.is_member(g, b).unwrap());
    assert!(matches!(
        one(store, app(g, b, 2, b"x")),
        Err(StoreError::NotMember)
    ));
    // b keeps its cursor until it acks the commit that removed it.
    assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(1));
    assert_eq!(store.departures(b).unwrap(), vec![(g, Seq(2))]);
    store.ack(b, Stream::Group(g), Seq(2)).unwrap();
    assert!(matches!(
        store.cursor(b, Stream::Group(g)),
        Err(StoreError::NotMember)
    ));
    assert!(matches!(
        store.ack(b, Stream::Group(g), Seq(1)),
        Err(StoreError::NotMember)
    ));
    assert!(store.groups_of(b).unwrap().is_empty());
    assert!(store.departures(b).unwrap().is_empty());
    // Re-adding starts b's cursor at the new commit.
    let again = one(store, commit(g, a, 2, &[b], &[], Some(b"w2"))).unwrap();
    assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), again.entry.seq);
    // A committer may remove itself (e.g. leaving); it is told like any removed device.
    let left = one(store, commit(g, a, 3, &[], &[a], None)).unwrap();
    assert_eq!((left.members, left.removed), (vec![b], vec![a]));
}

/// A device leaves a group at the relay (no MLS state, no commit): it is no member at once
/// (reads, posts and a second leave are NotMember), the group's posts no longer go to it,
/// a later commit may still name it among the removed devices (a no-op: no departure
/// record, not among `removed`), another commit may then not remove it again, and a commit
/// may add it back. Survives a reopen where the backend has one (checked by the SQLite
/// tests through the cache-less paths: `joined`, `groups_of`).
pub fn a_device_leaves_without_mls_state(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let c = device(store, "carol", 3);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    one(store, commit(g, a, 0, &[b, c], &[], Some(b"w"))).unwrap();
    store.leave_group(g, b).unwrap();
    assert!(!store.is_member(g, b).unwrap());
    assert_eq!(store.joined(g, b).unwrap(), None);
    assert!(store.groups_of(b).unwrap().is_empty());
    assert!(matches!(
        store.leave_group(g, b),
        Err(StoreError::NotMember)
    ));
    assert!(matches!(
        store.fetch(g, b, Seq(0), 10, usize::MAX),
        Err(StoreError::NotMember)
    ));
    assert!(matches!(
        one(store, app(g, b, 1, b"x")),
        Err(StoreError::NotMember)
    ));
    let after = one(store, app(g, c, 1, b"hello")).unwrap();
    assert!(!after.members.contains(&b), "{:?}", after.members);
    // A commit removing bob's leaf: accepted, nothing for bob.
    let removal = one(store, commit(g, c, 1, &[], &[b], None)).unwrap();
    assert!(removal.removed.is_empty());
    assert!(store.departures(b).unwrap().is_empty());
    // Now bob is neither member nor left: removing him again is Invalid.
    assert!(matches!(
        one(store, commit(g, c, 2, &[], &[b], None)),
        Err(StoreError::Invalid(_))
    ));
    // And he can be added back.
    let again = one(store, commit(g, c, 2, &[b], &[], Some(b"w2"))).unwrap();
    assert!(store.is_member(g, b).unwrap());
    assert_eq!(store.joined(g, b).unwrap(), Some(again.entry.seq));
    // Unknown group, unknown device.
    assert!(matches!(
        store.leave_group(gid(9), b),
        Err(StoreError::UnknownGroup)
    ));
    assert!(matches!(
        store.leave_group(g, DeviceId(999)),
        Err(StoreError::UnknownDevice)
    ));
}

/// Bad membership changes are Invalid / UnknownDevice and change nothing.
pub fn invalid_membership_changes_change_nothing(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let c = device(store, "carol", 3);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    one(store, commit(g, a, 0, &[b], &[], Some(b"w"))).unwrap();
    let invalid = [
        commit(g, a, 1, &[b], &[], Some(b"w")),    // already a member
        commit(g, a, 1, &[], &[c], None),          // not a member
        commit(g, a, 1, &[c, c], &[], Some(b"w")), // duplicate
        commit(g, a, 1, &[], &[b, b], None),       // duplicate
        commit(g, a, 1, &[c], &[], None),          // added without Welcome
        commit(g, a, 1, &[], &[], Some(b"w")),     // Welcome without added
        commit(g, a, 1, &[c], &[c], Some(b"w")),   // both added and removed
    ];
    for post in invalid {
        assert!(matches!(one(store, post), Err(StoreError::Invalid(_))));
    }
    let too_many: Vec<DeviceId> = (0..=MAX_MEMBERSHIP_CHANGE as u64)
        .map(|i| DeviceId(10_000 + i))
        .collect();
    assert!(matches!(
        one(store, commit(g, a, 1, &too_many, &[], Some(b"w"))),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        one(
            store,
            commit(g, a, 1, &[c, DeviceId(9_999)], &[], Some(b"w"))
        ),
        Err(StoreError::UnknownDevice)
    ));
    assert!(matches!(
        one(store, commit(g, c, 1, &[], &[], None)),
        Err(StoreError::NotMember)
    ));
    // Nothing changed: epoch 1, members a and b, log of one commit, no Welcome for c.
    assert_eq!(store.groups_of(a).unwrap()[0].epoch, Epoch(1));
    assert!(!store.is_member(g, c).unwrap());
    assert!(store.is_member(g, b).unwrap());
    assert_eq!(
        store.read_group(g, Seq(0), 100, usize::MAX).unwrap().len(),
        1
    );
    assert!(
        store
            .read_inbox(c, Seq(0), 10, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.read_inbox(b, Seq(0), 10, usize::MAX).unwrap().len(),
        1
    );
    assert_eq!(
        one(store, commit(g, a, 1, &[c], &[b], Some(b"w")))
            .unwrap()
            .members,
        vec![a, c]
    );
}

/// Two commits for one epoch: the second is refused with the current epoch and its Welcome
/// never reaches the device it would have added.
pub fn stale_commit_is_refused_and_its_welcome_never_lands(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let c = device(store, "carol", 3);
    let d = device(store, "dave", 4);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    one(store, commit(g, a, 0, &[b], &[], Some(b"wb"))).unwrap();
    one(store, commit(g, b, 1, &[c], &[], Some(b"wc"))).unwrap();
    let refused = one(store, commit(g, a, 1, &[d], &[], Some(b"wd")));
    assert!(matches!(
        refused,
        Err(StoreError::StaleEpoch { current: Epoch(2) })
    ));
    let future = one(store, commit(g, a, 5, &[d], &[], Some(b"wd")));
    assert!(matches!(
        future,
        Err(StoreError::StaleEpoch { current: Epoch(2) })
    ));
    assert!(
        store
            .read_inbox(d, Seq(0), 10, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert!(!store.is_member(g, d).unwrap());
    assert!(store.groups_of(d).unwrap().is_empty());
    assert_eq!(
        store.read_group(g, Seq(0), 10, usize::MAX).unwrap().len(),
        2
    );
    // The loser retries on the current epoch and wins.
    one(store, commit(g, a, 2, &[d], &[], Some(b"wd"))).unwrap();
    assert_eq!(
        store.read_inbox(d, Seq(0), 10, usize::MAX).unwrap().len(),
        1
    );
}

/// Eight devices commit for the same epoch from eight threads released together by one
/// barrier, each adding its own new device: exactly one commit is accepted, the others are
/// told the new epoch, only the winner's Welcome lands. Whether any two calls overlap inside
/// the store is up to the scheduler (this does not check it); the outcome must be this one
/// in every interleaving. Two commits for one epoch that are certainly in flight together
/// (one batch, as the relay's writer hands them over) are in
/// [`batch_results_are_in_input_order`].
pub fn commits_from_eight_threads_for_one_epoch_exactly_one_wins(store: &dyn RelayStore) {
    const N: u8 = 8;
    let g = gid(1);
    let committers: Vec<DeviceId> = (0..N).map(|i| device(store, &format!("m{i}"), i)).collect();
    let joiners: Vec<DeviceId> = (0..N)
        .map(|i| device(store, &format!("j{i}"), 100 + i))
        .collect();
    let first = committers[0];
    store.create_group(g, first).unwrap();
    let rest: Vec<DeviceId> = committers[1..].to_vec();
    one(store, commit(g, first, 0, &rest, &[], Some(b"w"))).unwrap();
    let barrier = Barrier::new(usize::from(N));
    let results: Vec<(DeviceId, Result<Appended, StoreError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = committers
            .iter()
            .zip(&joiners)
            .map(|(&who, &joiner)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let welcome = format!("welcome-{joiner}");
                    (
                        joiner,
                        one(
                            store,
                            commit(g, who, 1, &[joiner], &[], Some(welcome.as_bytes())),
                        ),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<DeviceId> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(joiner, _)| *joiner)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one commit accepted");
    for (_, r) in results.iter().filter(|(_, r)| r.is_err()) {
        assert!(matches!(
            r,
            Err(StoreError::StaleEpoch { current: Epoch(2) })
        ));
    }
    for joiner in &joiners {
        let inbox = store.read_inbox(*joiner, Seq(0), 10, usize::MAX).unwrap();
        if *joiner == winners[0] {
            assert_eq!(inbox.len(), 1);
            assert_eq!(
                inbox[0].payload.as_bytes(),
                format!("welcome-{joiner}").as_bytes()
            );
        } else {
            assert!(inbox.is_empty(), "a refused commit's Welcome never lands");
            assert!(!store.is_member(g, *joiner).unwrap());
        }
    }
    assert_eq!(
        store.read_group(g, Seq(0), 100, usize::MAX).unwrap().len(),
        2
    );
}

/// One batch of mixed posts: each checked on its own, in order, results in input order, and
/// later posts see the effect of earlier ones in the same batch.
pub fn batch_results_are_in_input_order(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let c = device(store, "carol", 3);
    let g = gid(1);
    let h = gid(2);
    store.create_group(g, a).unwrap();
    store.create_group(h, c).unwrap();
    let results = store.append_batch(vec![
        app(g, a, 0, b"one"),                   // ok seq 1
        app(g, b, 0, b"not a member"),          // NotMember
        commit(g, a, 0, &[b], &[], Some(b"w")), // ok seq 2, epoch -> 1
        commit(g, a, 0, &[c], &[], Some(b"w")), // StaleEpoch(1)
        app(g, b, 1, b"bob now a member"),      // ok seq 3
        app(h, c, 0, b"other group"),           // ok seq 1 in h
        app(gid(9), a, 0, b"no group"),         // UnknownGroup
        app(g, a, 0, b"previous epoch"),        // ok seq 4
    ]);
    assert_eq!(results.len(), 8);
    let seq = |i: usize| results[i].as_ref().unwrap().entry.seq.0;
    assert_eq!(seq(0), 1);
    assert!(matches!(results[1], Err(StoreError::NotMember)));
    assert_eq!(seq(2), 2);
    assert!(matches!(
        results[3],
        Err(StoreError::StaleEpoch { current: Epoch(1) })
    ));
    assert_eq!(seq(4), 3);
    assert_eq!(results[5].as_ref().unwrap().entry.group, h);
    assert_eq!(seq(5), 1);
    assert!(matches!(results[6], Err(StoreError::UnknownGroup)));
    assert_eq!(seq(7), 4);
    let payloads: Vec<Vec<u8>> = store
        .read_group(g, Seq(0), 100, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.payload.0)
        .collect();
    assert_eq!(
        payloads,
        vec![
            b"one".to_vec(),
            b"commit".to_vec(),
            b"bob now a member".to_vec(),
            b"previous epoch".to_vec()
        ]
    );
    assert!(
        store
            .read_inbox(c, Seq(0), 10, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert!(store.append_batch(Vec::new()).is_empty());
}

/// Readers running beside a writer see whole batches only: every read is a gap-free prefix
/// of the log whose length is a multiple of the batch size.
pub fn readers_never_see_part_of_a_batch(store: &dyn RelayStore) {
    const BATCH: usize = 10;
    const BATCHES: usize = 40;
    let a = device(store, "alice", 1);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    let total = BATCH * BATCHES;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..BATCHES {
                // Distinct payloads (a repeated one would not be stored again).
                let posts = (0..BATCH)
                    .map(|j| app(g, a, 0, &((i * BATCH + j) as u16).to_be_bytes()))
                    .collect();
                assert!(store.append_batch(posts).iter().all(Result::is_ok));
            }
        });
        for _ in 0..3 {
            s.spawn(|| {
                let mut seen = 0;
                // Bounded, so a failed writer ends the test instead of hanging it.
                for _ in 0..1_000_000 {
                    if seen == total {
                        break;
                    }
                    let entries = store.read_group(g, Seq(0), u32::MAX, usize::MAX).unwrap();
                    assert!(entries.len() >= seen, "a read went backwards");
                    assert_eq!(entries.len() % BATCH, 0, "saw part of a batch");
                    for (i, e) in entries.iter().enumerate() {
                        assert_eq!(e.seq, Seq(i as u64 + 1));
                        assert_eq!(e.payload.as_bytes(), (i as u16).to_be_bytes());
                    }
                    seen = entries.len();
                    std::thread::yield_now();
                }
                assert_eq!(seen, total);
            });
        }
    });
}

/// A group cannot grow past MAX_GROUP_DEVICES.
pub fn group_size_is_capped(store: &dyn RelayStore) {
    let creator = device(store, "creator", 0);
    let g = gid(1);
    store.create_group(g, creator).unwrap();
    let mut epoch = 0;
    let mut added = 1;
    while added < MAX_GROUP_DEVICES {
        let n = (MAX_GROUP_DEVICES - added).min(MAX_MEMBERSHIP_CHANGE);
        let batch: Vec<DeviceId> = (0..n)
            .map(|i| device(store, &format!("u{}", added + i), 7))
            .collect();
        one(store, commit(g, creator, epoch, &batch, &[], Some(b"w"))).unwrap();
        epoch += 1;
        added += n;
    }
    let extra = device(store, "one-too-many", 8);
    assert!(matches!(
        one(store, commit(g, creator, epoch, &[extra], &[], Some(b"w"))),
        Err(StoreError::Invalid(_))
    ));
    // Swapping one member for another keeps the size and is fine.
    let last = DeviceId(extra.0 - 1);
    let swapped = one(
        store,
        commit(g, creator, epoch, &[extra], &[last], Some(b"w")),
    )
    .unwrap();
    assert_eq!(swapped.members.len(), MAX_GROUP_DEVICES);
}

/// Group cursors only move forward and never past the end of the log.
pub fn cursors_move_forward_only(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    for i in 0..3u8 {
        one(store, app(g, a, 0, &[b'm', i])).unwrap();
    }
    let s = Stream::Group(g);
    assert_eq!(store.cursor(a, s).unwrap(), Seq(0));
    store.ack(a, s, Seq(2)).unwrap();
    assert_eq!(store.cursor(a, s).unwrap(), Seq(2));
    store.ack(a, s, Seq(1)).unwrap();
    assert_eq!(store.cursor(a, s).unwrap(), Seq(2), "never backwards");
    assert!(matches!(
        store.ack(a, s, Seq(4)),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.ack(a, s, Seq(u64::MAX)),
        Err(StoreError::Invalid(_))
    ));
    store.ack(a, s, Seq(3)).unwrap();
    assert_eq!(store.cursor(a, s).unwrap(), Seq(3));
    assert!(matches!(
        store.ack(b, s, Seq(1)),
        Err(StoreError::NotMember)
    ));
    assert!(matches!(store.cursor(b, s), Err(StoreError::NotMember)));
    let unknown = Stream::Group(gid(9));
    assert!(matches!(
        store.ack(a, unknown, Seq(1)),
        Err(StoreError::UnknownGroup)
    ));
    assert!(matches!(
        store.cursor(a, unknown),
        Err(StoreError::UnknownGroup)
    ));
    assert!(matches!(
        store.ack(DeviceId(9_999), s, Seq(1)),
        Err(StoreError::UnknownDevice)
    ));
    assert!(matches!(
        store.cursor(DeviceId(9_999), s),
        Err(StoreError::UnknownDevice)
    ));
}

/// Eight members ack up to the head of a group's log, without pause, while its poster
/// appends batches of application posts: every post is accepted (an ack never makes a
/// post fail, on PostgreSQL neither by a serialisation conflict past the retries), the
/// log is complete and in order, and each member's cursor ends at its last ack.
pub fn acks_while_posting_to_one_group_never_fail_a_post(store: &dyn RelayStore) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const MEMBERS: u8 = 8;
    const BATCHES: u64 = 4;
    const BATCH: u64 = 500;
    let g = gid(1);
    let poster = device(store, "poster", 200);
    let members: Vec<DeviceId> = (0..MEMBERS)
        .map(|i| device(store, &format!("m{i}"), i))
        .collect();
    store.create_group(g, poster).unwrap();
    let head = one(store, commit(g, poster, 0, &members, &[], Some(b"w")))
        .unwrap()
        .entry
        .seq;
    let head = AtomicU64::new(head.0);
    let done = AtomicBool::new(false);
    let (failed, last_acks) = std::thread::scope(|s| {
        let ackers: Vec<_> = members
            .iter()
            .map(|&m| {
                let (head, done) = (&head, &done);
                s.spawn(move || {
                    // Acks (again, if the head has not moved) while a batch is being
                    // written, then once more at the final head.
                    loop {
                        let finished = done.load(Ordering::Acquire);
                        let to = head.load(Ordering::Acquire);
                        store.ack(m, Stream::Group(g), Seq(to)).unwrap();
                        if finished {
                            return (m, to);
                        }
                    }
                })
            })
            .collect();
        let mut failed = Vec::new();
        for b in 0..BATCHES {
            let posts = (0..BATCH)
                .map(|i| app(g, poster, 1, &(b * BATCH + i).to_le_bytes()))
                .collect();
            for r in store.append_batch(posts) {
                match r {
                    Ok(a) => head.fetch_max(a.entry.seq.0, Ordering::AcqRel),
                    Err(e) => {
                        failed.push(e);
                        0
                    }
                };
            }
        }
        done.store(true, Ordering::Release);
        let last_acks: Vec<(DeviceId, u64)> =
            ackers.into_iter().map(|h| h.join().unwrap()).collect();
        (failed, last_acks)
    });
    assert!(failed.is_empty(), "posts failed: {failed:?}");
    let last = head.load(Ordering::Acquire);
    assert_eq!(last, 1 + BATCHES * BATCH, "the commit, then every post");
    // The log after the commit, read in capped pages.
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut after = Seq(1);
    loop {
        let page = store
            .read_group(g, after, MAX_FETCH_ENTRIES, usize::MAX)
            .unwrap();
        let Some(end) = page.last().map(|e| e.seq) else {
            break;
        };
        payloads.extend(page.iter().map(|e| e.payload.as_bytes().to_vec()));
        after = end;
    }
    let expected: Vec<Vec<u8>> = (0..BATCHES * BATCH)
        .map(|i| i.to_le_bytes().to_vec())
        .collect();
    assert_eq!(payloads, expected);
    for (m, acked) in last_acks {
        assert_eq!(acked, last);
        assert_eq!(store.cursor(m, Stream::Group(g)).unwrap(), Seq(last));
    }
}

/// The inbox: ordered reads after a cursor, forward-only ack, Invalid past the end.
pub fn inbox_cursor_and_reads(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    assert_eq!(store.cursor(b, Stream::Inbox).unwrap(), Seq(0));
    assert!(matches!(
        store.ack(b, Stream::Inbox, Seq(1)),
        Err(StoreError::Invalid(_))
    ));
    store.ack(b, Stream::Inbox, Seq(0)).unwrap();
    for i in 0..3u8 {
        let g = gid(i);
        store.create_group(g, a).unwrap();
        one(store, commit(g, a, 0, &[b], &[], Some(&[i; 3]))).unwrap();
    }
    let inbox = store.read_inbox(b, Seq(0), 10, usize::MAX).unwrap();
    assert_eq!(
        inbox.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(inbox[2].payload, Payload(vec![2; 3]));
    assert_eq!(
        inbox[1].kind,
        InboxKind::Welcome {
            group: gid(1),
            commit_seq: Seq(1),
            sender: a
        }
    );
    assert_eq!(store.read_inbox(b, Seq(1), 1, usize::MAX).unwrap().len(), 1);
    assert_eq!(
        store.read_inbox(b, Seq(1), 1, usize::MAX).unwrap()[0].seq,
        Seq(2)
    );
    store.ack(b, Stream::Inbox, Seq(2)).unwrap();
    store.ack(b, Stream::Inbox, Seq(1)).unwrap();
    assert_eq!(store.cursor(b, Stream::Inbox).unwrap(), Seq(2));
    assert!(matches!(
        store.ack(b, Stream::Inbox, Seq(4)),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.cursor(a, Stream::Inbox).unwrap(), Seq(0));
    assert!(matches!(
        store.read_inbox(DeviceId(9_999), Seq(0), 1, usize::MAX),
        Err(StoreError::UnknownDevice)
    ));
    assert!(matches!(
        store.cursor(DeviceId(9_999), Stream::Inbox),
        Err(StoreError::UnknownDevice)
    ));
}

/// Reads return at most MAX_FETCH_ENTRIES whatever the caller asks.
pub fn reads_are_bounded(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    let total = MAX_FETCH_ENTRIES as usize + 100;
    let posts: Vec<NewPost> = (0..total).map(|i| app(g, a, 0, &i.to_be_bytes())).collect();
    assert!(store.append_batch(posts).iter().all(Result::is_ok));
    let all = store.read_group(g, Seq(0), u32::MAX, usize::MAX).unwrap();
    assert_eq!(all.len(), MAX_FETCH_ENTRIES as usize);
    assert_eq!(all.last().unwrap().seq, Seq(u64::from(MAX_FETCH_ENTRIES)));
    let rest = store
        .read_group(g, Seq(u64::from(MAX_FETCH_ENTRIES)), u32::MAX, usize::MAX)
        .unwrap();
    assert_eq!(rest.len(), 100);
    assert_eq!(
        rest[0].payload.as_bytes(),
        (MAX_FETCH_ENTRIES as usize).to_be_bytes()
    );
    assert!(
        store
            .read_group(g, Seq(0), 0, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.read_group(g, Seq(10), 5, usize::MAX).unwrap().len(),
        5
    );
    assert!(
        store
            .read_group(g, Seq(u64::MAX), 5, usize::MAX)
            .unwrap()
            .is_empty()
    );
}

/// Reads stop before the first entry that would take the payload bytes past `max_bytes`,
/// always return the first entry (even one larger than the budget), keep order, and page
/// through the whole log; the inbox is bounded the same way.
pub fn reads_are_bounded_in_bytes(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    let size = 1000usize;
    let posts: Vec<NewPost> = (0..25u32)
        .map(|i| {
            let mut payload = vec![0u8; size];
            payload[..4].copy_from_slice(&i.to_be_bytes());
            app(g, a, 0, &payload)
        })
        .collect();
    assert!(store.append_batch(posts).iter().all(Result::is_ok));
    // 3500 bytes hold three entries of 1000; the fourth would make 4000.
    let page = store.read_group(g, Seq(0), 100, 3_500).unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![Seq(1), Seq(2), Seq(3)]
    );
    // Exactly on the budget: the entry that reaches it is returned.
    assert_eq!(store.read_group(g, Seq(0), 100, 3_000).unwrap().len(), 3);
    // A budget below one entry still returns that entry.
    let one_entry = store.read_group(g, Seq(5), 100, 1).unwrap();
    assert_eq!(one_entry.len(), 1);
    assert_eq!(one_entry[0].seq, Seq(6));
    assert_eq!(store.fetch(g, a, Seq(0), 100, 3_500).unwrap().len(), 3);
    // The entry limit still applies under a large byte budget.
    assert_eq!(store.read_group(g, Seq(0), 2, usize::MAX).unwrap().len(), 2);
    // Paging with a byte budget reads every entry once, in order.
    let mut after = Seq(0);
    let mut seen = Vec::new();
    loop {
        let page = store.read_group(g, after, 100, 4_500).unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 4);
        after = last.seq;
        seen.extend(page.iter().map(|e| e.payload.as_bytes()[..4].to_vec()));
    }
    let expected: Vec<Vec<u8>> = (0..25u32).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(seen, expected);
    // The inbox: two Welcomes of 1000 bytes, a budget for one and a half.
    let b = device(store, "bob", 2);
    let c = device(store, "carol", 3);
    let welcome = vec![7u8; size];
    one(store, commit(g, a, 0, &[b], &[], Some(&welcome))).unwrap();
    let g2 = gid(2);
    store.create_group(g2, c).unwrap();
    one(store, commit(g2, c, 0, &[b], &[], Some(&welcome))).unwrap();
    let first = store.read_inbox(b, Seq(0), 10, 1_500).unwrap();
    assert_eq!(first.len(), 1);
    let second = store.read_inbox(b, first[0].seq, 10, 1_500).unwrap();
    assert_eq!(second.len(), 1);
    assert!(second[0].seq > first[0].seq);
    assert_eq!(store.read_inbox(b, Seq(0), 10, 2_000).unwrap().len(), 2);
}

/// Payloads and Welcomes over MAX_PAYLOAD_BYTES are refused; the largest allowed ones pass.
pub fn oversized_payloads_are_refused(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    let big = vec![0xab; MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(
        one(store, app(g, a, 0, &big)),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        one(store, commit(g, a, 0, &[b], &[], Some(&big))),
        Err(StoreError::Invalid(_))
    ));
    let max = &big[..MAX_PAYLOAD_BYTES];
    assert_eq!(
        one(store, app(g, a, 0, max)).unwrap().entry.payload.len(),
        MAX_PAYLOAD_BYTES
    );
    one(store, commit(g, a, 0, &[b], &[], Some(max))).unwrap();
    assert_eq!(
        store.read_inbox(b, Seq(0), 1, usize::MAX).unwrap()[0]
            .payload
            .len(),
        MAX_PAYLOAD_BYTES
    );
    assert_eq!(
        store.read_group(g, Seq(0), 1, usize::MAX).unwrap()[0]
            .payload
            .as_bytes(),
        max
    );
}

// ---------------------------------------------------------------------------------------
// Retention.

/// The seqs of `group`'s stored entries (all of them, from seq 0).
fn log_seqs(store: &dyn RelayStore, group: GroupId) -> Vec<u64> {
    store
        .read_group(group, Seq(0), 500, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq.0)
        .collect()
}

/// The seqs of `device`'s stored inbox entries.
fn inbox_seqs(store: &dyn RelayStore, device: DeviceId) -> Vec<u64> {
    store
        .read_inbox(device, Seq(0), 500, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq.0)
        .collect()
}

/// `heads` gives each known group's last log seq and each known device's last inbox seq,
/// in the order asked, leaving unknown ones out; pruning an acknowledged log or inbox
/// empty does not move a head back.
pub fn heads_are_the_last_seqs_ever_made(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let (g, h, unknown) = (gid(1), gid(2), gid(3));
    store.create_group(g, a).unwrap();
    store.create_group(h, a).unwrap();
    one(store, commit(g, a, 0, &[b], &[], Some(b"welcome"))).unwrap();
    one(store, app(g, a, 1, b"m2")).unwrap();
    let nobody = DeviceId(9_999);
    let heads = store.heads(&[h, unknown, g], &[b, nobody, a]).unwrap();
    assert_eq!(heads.groups, vec![(h, Seq(0)), (g, Seq(2))]);
    assert_eq!(heads.inboxes, vec![(b, Seq(1)), (a, Seq(0))]);
    assert_eq!(store.heads(&[], &[]).unwrap(), Heads::default());
    // Everything acknowledged and pruned: the heads stay.
    store.ack(a, Stream::Group(g), Seq(2)).unwrap();
    store.ack(b, Stream::Group(g), Seq(2)).unwrap();
    store.ack(b, Stream::Inbox, Seq(1)).unwrap();
    store.flush().unwrap();
    store.prune(10_000, u64::MAX).unwrap();
    assert!(log_seqs(store, g).is_empty());
    let heads = store.heads(&[g], &[b]).unwrap();
    assert_eq!(heads.groups, vec![(g, Seq(2))]);
    assert_eq!(heads.inboxes, vec![(b, Seq(1))]);
}

/// Pruning removes the group-log entries every member and every departing device has
/// acknowledged (the lowest cursor), and the acknowledged inbox entries, nothing else
/// (nothing expires with an unbounded maximum age); seqs are not reused afterwards (the
/// next post, the end an ack is checked against, the next Welcome in an emptied inbox),
/// and a second prune finds nothing.
pub fn acknowledged_entries_are_pruned(store: &dyn RelayStore) {
    let no_expiry = u64::MAX;
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    one(store, commit(g, a, 0, &[b], &[], Some(b"welcome"))).unwrap();
    for p in [b"m2", b"m3", b"m4"] {
        one(store, app(g, a, 1, p)).unwrap();
    }
    store.ack(a, Stream::Group(g), Seq(4)).unwrap();
    store.ack(b, Stream::Group(g), Seq(2)).unwrap();
    let pruned = store.prune(10_000, no_expiry).unwrap();
    assert_eq!(
        pruned,
        Pruned {
            group_entries: 2,
            inbox_entries: 0
        }
    );
    assert_eq!(log_seqs(store, g), vec![3, 4]);
    assert_eq!(
        inbox_seqs(store, b),
        vec![1],
        "the Welcome is not acknowledged"
    );
    // A reader whose cursor points before the pruned range gets what remains.
    let fetched = store.fetch(g, b, Seq(0), 500, usize::MAX).unwrap();
    assert_eq!(
        fetched.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(2));
    assert_eq!(store.prune(10_000, no_expiry).unwrap(), Pruned::default());

    store.ack(b, Stream::Inbox, Seq(1)).unwrap();
    store.ack(b, Stream::Group(g), Seq(4)).unwrap();
    assert_eq!(
        store.prune(10_000, no_expiry).unwrap(),
        Pruned {
            group_entries: 2,
            inbox_entries: 1
        }
    );
    assert!(log_seqs(store, g).is_empty());
    assert!(inbox_seqs(store, b).is_empty());
    // Emptied, the log and the inbox go on from where they were.
    assert!(matches!(
        store.ack(a, Stream::Group(g), Seq(5)),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.ack(b, Stream::Inbox, Seq(2)),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(one(store, app(g, a, 1, b"m5")).unwrap().entry.seq, Seq(5));
    let g2 = gid(2);
    store.create_group(g2, a).unwrap();
    let added = one(store, commit(g2, a, 0, &[b], &[], Some(b"again"))).unwrap();
    assert_eq!(added.welcomes, vec![(b, Seq(2))]);

    // A departure record holds the log at its cursor until the removal is acknowledged.
    let c = device(store, "carol", 3);
    one(store, commit(g, a, 1, &[c], &[], Some(b"w"))).unwrap(); // seq 6
    one(store, commit(g, a, 2, &[], &[b], None)).unwrap(); // seq 7: b departs at cursor 4
    store.ack(a, Stream::Group(g), Seq(7)).unwrap();
    store.ack(c, Stream::Group(g), Seq(7)).unwrap();
    store.prune(10_000, no_expiry).unwrap();
    assert_eq!(log_seqs(store, g), vec![5, 6, 7]);
    store.ack(b, Stream::Group(g), Seq(7)).unwrap();
    store.prune(10_000, no_expiry).unwrap();
    assert!(log_seqs(store, g).is_empty());
    assert_eq!(one(store, app(g, a, 3, b"m8")).unwrap().entry.seq, Seq(8));
}

/// Entries older than the maximum age are pruned although nobody acknowledged them: the
/// group log's oldest entries (in seq order) received before `now - max_age`, and such
/// inbox entries; cursors stay, and a device behind gets what remains. With a maximum age
/// of zero everything received before `now` goes.
pub fn expired_entries_are_pruned_even_if_unacknowledged(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let b = device(store, "bob", 2);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    let at = |post: NewPost, now_ms: u64| NewPost { now_ms, ..post };
    one(store, at(commit(g, a, 0, &[b], &[], Some(b"w")), 1_000)).unwrap();
    for (i, t) in [2_000u64, 3_000, 4_000].into_iter().enumerate() {
        one(store, at(app(g, a, 1, &[i as u8]), t)).unwrap();
    }
    // Cutoff 2500: the commit (1000), the first message (2000) and the Welcome (1000).
    assert_eq!(
        store.prune(10_000, 7_500).unwrap(),
        Pruned {
            group_entries: 2,
            inbox_entries: 1
        }
    );
    assert_eq!(log_seqs(store, g), vec![3, 4]);
    assert!(inbox_seqs(store, b).is_empty());
    assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(1));
    let fetched = store.fetch(g, b, Seq(1), 500, usize::MAX).unwrap();
    assert_eq!(
        fetched.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        vec![3, 4]
    );
    store.ack(b, Stream::Group(g), Seq(3)).unwrap();
    store.ack(b, Stream::Inbox, Seq(1)).unwrap();
    assert_eq!(
        store.prune(10_000, 0).unwrap(),
        Pruned {
            group_entries: 2,
            inbox_entries: 0
        }
    );
    assert!(log_seqs(store, g).is_empty());
    assert_eq!(
        one(store, at(app(g, a, 1, b"late"), 11_000))
            .unwrap()
            .entry
            .seq,
        Seq(5)
    );
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// The user name `name` (must be valid).
pub fn user(name: &str) -> UserName {
    UserName::new(name).unwrap()
}

/// A device key made of the byte `n`.
pub fn key(n: u8) -> DeviceKey {
    DeviceKey([n; 32])
}

/// A group id made of the byte `n`.
pub fn gid(n: u8) -> GroupId {
    GroupId([n; 16])
}

fn stock(remaining: u32, has_last_resort: bool) -> Stock {
    Stock {
        remaining,
        has_last_resort,
    }
}

fn sorted(mut v: Vec<DeviceId>) -> Vec<DeviceId> {
    v.sort();
    v
}

/// A group's public state is what its creation stored, then what the last accepted post
/// carrying one stored, in the same transaction as that post: a refused post (stale epoch)
/// and a post without one leave it as it was.
pub fn public_state_is_replaced_only_by_an_accepted_post(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let state = |tag: u8| PublicGroupState {
        group_info: vec![tag; 3],
        tree: vec![tag, tag],
    };
    store.create_group(gid(1), a).unwrap();
    assert_eq!(store.public_state(gid(1)).unwrap(), None);
    store
        .create_group_with_state(gid(2), a, Some(state(1)))
        .unwrap();
    assert_eq!(store.public_state(gid(2)).unwrap(), Some(state(1)));
    assert!(matches!(
        store.create_group_with_state(gid(2), a, Some(state(9))),
        Err(StoreError::GroupExists)
    ));
    assert_eq!(store.public_state(gid(2)).unwrap(), Some(state(1)));
    let with = |epoch: u64, tag: u8| NewPost {
        public_state: Some(state(tag)),
        ..commit(gid(2), a, epoch, &[], &[], None)
    };
    one(store, with(0, 2)).unwrap();
    assert_eq!(store.public_state(gid(2)).unwrap(), Some(state(2)));
    assert!(matches!(
        one(store, with(0, 3)),
        Err(StoreError::StaleEpoch { current: Epoch(1) })
    ));
    one(store, commit(gid(2), a, 1, &[], &[], None)).unwrap();
    assert_eq!(store.public_state(gid(2)).unwrap(), Some(state(2)));
    assert!(matches!(
        store.public_state(gid(9)),
        Err(StoreError::UnknownGroup)
    ));
}

/// A non-member's commit that adds exactly itself without a Welcome (a user's new device
/// joining by an external commit) is taken only with a validated public state (the relay's
/// handshake validation checked it): without one it is `Invalid` and changes nothing; for a
/// past epoch it is `StaleEpoch` like any commit; accepted, the poster is a member from
/// that commit on (join seq and cursor), with nothing in its inbox. A non-member's commit of
/// any other shape is `NotMember`.
pub fn an_external_join_adds_its_poster_only_with_a_validated_state(store: &dyn RelayStore) {
    let a = device(store, "alice", 1);
    let n = store.add_device(&user("alice"), &key(2)).unwrap();
    let state = PublicGroupState {
        group_info: vec![1; 3],
        tree: vec![2; 2],
    };
    store
        .create_group_with_state(gid(1), a, Some(state.clone()))
        .unwrap();
    let join = |epoch: u64, validated: bool| NewPost {
        public_state: validated.then(|| state.clone()),
        ..commit(gid(1), n, epoch, &[n], &[], None)
    };
    assert!(matches!(
        one(store, join(0, false)),
        Err(StoreError::Invalid(_))
    ));
    assert!(!store.is_member(gid(1), n).unwrap());
    assert!(matches!(
        one(store, commit(gid(1), n, 0, &[], &[], None)),
        Err(StoreError::NotMember)
    ));
    assert!(matches!(
        one(store, commit(gid(1), n, 0, &[n], &[], Some(b"welcome"))),
        Err(StoreError::NotMember)
    ));
    one(store, app(gid(1), a, 0, b"before")).unwrap();
    let joined = one(store, join(0, true)).unwrap();
    assert!(joined.welcomes.is_empty() && joined.welcome.is_none());
    assert_eq!(sorted(joined.members.clone()), sorted(vec![a, n]));
    assert!(store.is_member(gid(1), n).unwrap());
    assert_eq!(store.joined(gid(1), n).unwrap(), Some(joined.entry.seq));
    assert_eq!(
        store.cursor(n, Stream::Group(gid(1))).unwrap(),
        joined.entry.seq
    );
    assert_eq!(inbox_seqs(store, n), Vec::<u64>::new());
    assert_eq!(store.groups_of(n).unwrap().len(), 1);
    // A second join at the old epoch is stale; the member's own join shape is no longer one.
    assert!(matches!(
        one(store, join(0, true)),
        Err(StoreError::StaleEpoch { current: Epoch(1) })
    ));
    assert!(matches!(
        one(store, join(1, true)),
        Err(StoreError::Invalid(_))
    ));
}

/// Registers a user with one device.
pub fn device(store: &dyn RelayStore, name: &str, k: u8) -> DeviceId {
    store.register_user(&user(name), &key(k)).unwrap()
}

/// An application post at 1000 ms.
pub fn app(group: GroupId, sender: DeviceId, epoch: u64, payload: &[u8]) -> NewPost {
    NewPost {
        group,
        sender,
        epoch: Epoch(epoch),
        kind: PostKind::Application,
        payload: payload.to_vec(),
        now_ms: 1_000,
        public_state: None,
    }
}

/// A commit with payload `b"commit"`.
pub fn commit(
    group: GroupId,
    sender: DeviceId,
    epoch: u64,
    added: &[DeviceId],
    removed: &[DeviceId],
    welcome: Option<&[u8]>,
) -> NewPost {
    NewPost {
        kind: PostKind::Commit {
            added: added.to_vec().into(),
            removed: removed.to_vec().into(),
            welcome: welcome.map(Payload::from),
            group_info: Payload::default(),
        },
        ..app(group, sender, epoch, b"commit")
    }
}

/// Appends a single post.
pub fn one(store: &dyn RelayStore, post: NewPost) -> Result<Appended, StoreError> {
    let mut results = store.append_batch(vec![post]);
    assert_eq!(results.len(), 1);
    results.pop().unwrap()
}

// ---------------------------------------------------------------------------------------
// Differential test: random operation sequences give the same results on both backends.

#[cfg(test)]
mod differential {
    use cove_wire::{DeviceId, Epoch, Payload, PostKind, Seq, Stream};
    use proptest::prelude::*;
    use serde::Serialize;

    use super::{gid, key, user};
    use crate::store::{
        MemoryStore, NewPost, RelayStore, SqliteOptions, SqliteStore, StoreError, Synchronous,
    };

    const USERS: u8 = 4;
    const DEVICES: u64 = 9;
    const GROUPS: u8 = 2;

    #[derive(Clone, Debug)]
    enum Op {
        Register(u8),
        AddDevice(u8),
        Device(u64),
        Devices(u8),
        Upload(u64, u8, bool),
        Claim(u8),
        Stock(u64),
        CreateGroup(u8, u64),
        IsMember(u8, u64),
        GroupsOf(u64),
        Batch(Vec<PostOp>),
        ReadGroup(u8, u64, u32),
        ReadInbox(u64, u64, u32),
        Cursor(u64, Option<u8>),
        Ack(u64, Option<u8>, u64),
    }

    #[derive(Clone, Debug)]
    struct PostOp {
        group: u8,
        sender: u64,
        /// The post's epoch is the group's current epoch minus this.
        epoch_back: i8,
        kind: u8,
        added: Vec<u64>,
        removed: Vec<u64>,
        /// Mostly a Welcome exactly when devices are added; sometimes always or never.
        welcome: u8,
    }

    /// Mostly devices that the prelude registers, sometimes any.
    fn device() -> impl Strategy<Value = u64> {
        prop_oneof![4 => 1..=6u64, 1 => 1..=DEVICES]
    }

    /// Four users, two with a second device (ids 1 to 6), and both groups.
    fn prelude() -> Vec<Op> {
        vec![
            Op::Register(0),
            Op::Register(1),
            Op::Register(2),
            Op::Register(3),
            Op::AddDevice(0),
            Op::AddDevice(1),
            Op::CreateGroup(0, 1),
            Op::CreateGroup(1, 2),
        ]
    }

    fn post_op() -> impl Strategy<Value = PostOp> {
        (
            0..GROUPS,
            // Group creators (1 and 2) most often, so that posts get past membership.
            prop_oneof![3 => 1..=2u64, 2 => device()],
            prop_oneof![6 => Just(0i8), 2 => Just(1), 1 => Just(2), 1 => Just(-1)],
            0..3u8,
            prop::collection::vec(1..=DEVICES, 0..3),
            prop::collection::vec(device(), 0..2),
            0..8u8,
        )
            .prop_map(
                |(group, sender, epoch_back, kind, added, removed, welcome)| PostOp {
                    group,
                    sender,
                    epoch_back,
                    kind,
                    added,
                    removed,
                    welcome,
                },
            )
    }

    fn stream() -> impl Strategy<Value = Option<u8>> {
        prop::option::of(0..GROUPS)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0..USERS).prop_map(Op::Register),
            1 => (0..USERS).prop_map(Op::AddDevice),
            1 => device().prop_map(Op::Device),
            1 => (0..USERS).prop_map(Op::Devices),
            1 => (device(), 0..3u8, any::<bool>()).prop_map(|(d, n, lr)| Op::Upload(d, n, lr)),
            1 => (0..USERS).prop_map(Op::Claim),
            1 => device().prop_map(Op::Stock),
            1 => (0..GROUPS, device()).prop_map(|(g, d)| Op::CreateGroup(g, d)),
            1 => (0..GROUPS, device()).prop_map(|(g, d)| Op::IsMember(g, d)),
            1 => device().prop_map(Op::GroupsOf),
            6 => prop::collection::vec(post_op(), 1..4).prop_map(Op::Batch),
            1 => (0..GROUPS, 0..6u64, 0..4u32).prop_map(|(g, a, l)| Op::ReadGroup(g, a, l)),
            1 => (device(), 0..3u64, 0..3u32).prop_map(|(d, a, l)| Op::ReadInbox(d, a, l)),
            1 => (device(), stream()).prop_map(|(d, s)| Op::Cursor(d, s)),
            2 => (device(), stream(), 0..6u64).prop_map(|(d, s, q)| Op::Ack(d, s, q)),
        ]
    }

    type Out = Result<Vec<u8>, String>;

    fn out<T: Serialize>(r: Result<T, StoreError>) -> Out {
        r.map(|v| cove_wire::encode(&v).unwrap())
            .map_err(|e| format!("{e:?}"))
    }

    fn to_stream(s: Option<u8>) -> Stream {
        s.map_or(Stream::Inbox, |g| Stream::Group(gid(g)))
    }

    fn run(store: &dyn RelayStore, op: &Op, step: usize, epochs: &[u64]) -> Vec<Out> {
        let name = |u: u8| user(&format!("user{u}"));
        let tag = u8::try_from(step % 250).unwrap();
        match op {
            Op::Register(u) => vec![out(store.register_user(&name(*u), &key(tag)))],
            Op::AddDevice(u) => vec![out(store.add_device(&name(*u), &key(tag)))],
            Op::Device(d) => vec![out(store.device(DeviceId(*d)))],
            Op::Devices(u) => vec![out(store.devices(&name(*u)))],
            Op::Upload(d, n, lr) => {
                let kps = (0..*n).map(|i| vec![tag, i]).collect();
                let stock = store.upload_key_packages(DeviceId(*d), kps, lr.then(|| vec![tag]));
                vec![out(stock.map(|s| (s.remaining, s.has_last_resort)))]
            }
            Op::Claim(u) => vec![out(store.claim_key_packages(&name(*u)))],
            Op::Stock(d) => {
                let stock = store.key_package_stock(DeviceId(*d));
                vec![out(stock.map(|s| (s.remaining, s.has_last_resort)))]
            }
            Op::CreateGroup(g, d) => vec![out(store.create_group(gid(*g), DeviceId(*d)))],
            Op::IsMember(g, d) => vec![out(store.is_member(gid(*g), DeviceId(*d)))],
            Op::GroupsOf(d) => vec![out(store.groups_of(DeviceId(*d)))],
            Op::Batch(posts) => {
                let posts = posts
                    .iter()
                    .map(|p| NewPost {
                        group: gid(p.group),
                        sender: DeviceId(p.sender),
                        epoch: Epoch(
                            epochs[usize::from(p.group)]
                                .saturating_add_signed(-i64::from(p.epoch_back)),
                        ),
                        kind: match p.kind {
                            0 => PostKind::Application,
                            1 => PostKind::Proposal,
                            _ => PostKind::Commit {
                                added: p
                                    .added
                                    .iter()
                                    .map(|d| DeviceId(*d))
                                    .collect::<Vec<_>>()
                                    .into(),
                                removed: p
                                    .removed
                                    .iter()
                                    .map(|d| DeviceId(*d))
                                    .collect::<Vec<_>>()
                                    .into(),
                                welcome: match p.welcome {
                                    0 => None,
                                    1 => Some(Payload(vec![tag, 0xee])),
                                    _ => (!p.added.is_empty()).then(|| Payload(vec![tag, 0xee])),
                                },
                                group_info: Payload::default(),
                            },
                        },
                        payload: vec![tag; 3],
                        now_ms: step as u64,
                        public_state: None,
                    })
                    .collect();
                store
                    .append_batch(posts)
                    .into_iter()
                    .map(|r| out(r.map(|a| (a.entry, a.members, a.removed, a.welcomes))))
                    .collect()
            }
            Op::ReadGroup(g, after, limit) => {
                vec![out(store.read_group(
                    gid(*g),
                    Seq(*after),
                    *limit,
                    usize::MAX,
                ))]
            }
            Op::ReadInbox(d, after, limit) => {
                vec![out(store.read_inbox(
                    DeviceId(*d),
                    Seq(*after),
                    *limit,
                    usize::MAX,
                ))]
            }
            Op::Cursor(d, s) => vec![out(store.cursor(DeviceId(*d), to_stream(*s)))],
            Op::Ack(d, s, seq) => vec![out(store.ack(DeviceId(*d), to_stream(*s), Seq(*seq)))],
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Both backends give identical results for the same operations, and the SQLite
        /// one still gives them after a reopen.
        #[test]
        fn memory_and_sqlite_agree(random in prop::collection::vec(op(), 1..60)) {
            let ops: Vec<Op> = prelude().into_iter().chain(random).collect();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("relay.db");
            // The sync level does not change semantics; Normal keeps the test quick.
            let options = SqliteOptions { synchronous: Synchronous::Normal };
            let memory = MemoryStore::new();
            let mut sqlite = SqliteStore::open_with(&path, options).unwrap();
            let mut epochs = [0u64; GROUPS as usize];
            for (step, op) in ops.iter().enumerate() {
                if step == ops.len() / 2 {
                    drop(sqlite);
                    sqlite = SqliteStore::open_with(&path, options).unwrap();
                }
                let expected = run(&memory, op, step, &epochs);
                let got = run(&sqlite, op, step, &epochs);
                prop_assert_eq!(&got, &expected, "step {}: {:?}", step, op);
                if let Op::Batch(posts) = op {
                    for (post, result) in posts.iter().zip(&expected) {
                        if post.kind == 2 && result.is_ok() {
                            epochs[usize::from(post.group)] += 1;
                        }
                    }
                }
            }
        }
    }
}
