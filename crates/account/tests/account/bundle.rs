//! The wrapped account bundle.

use cove_account::bundle::WRAPPED_LEN;
use cove_account::{AccountBundle, AccountError, RecoveryKey, ServerSecrets, WrapKind};

use crate::{login, register};

#[test]
fn a_bundle_wrapped_at_registration_opens_after_a_login_on_another_machine() {
    let secrets = ServerSecrets::generate();
    let reg = register(&secrets, "alice", b"pw");
    let bundle = AccountBundle::new([7; 32]);
    let wrapped = bundle
        .wrap("alice", WrapKind::Password, reg.export_key.as_bytes())
        .expect("wrap");
    assert_eq!(wrapped.len(), WRAPPED_LEN);
    // A fresh login (as on a new machine) yields the export key that opens it.
    let (client, _) = login(&secrets, "alice", Some(&reg.record), b"pw").expect("login");
    let opened = AccountBundle::unwrap(
        &wrapped,
        "alice",
        WrapKind::Password,
        client.export_key.as_bytes(),
    )
    .expect("unwrap");
    assert_eq!(opened, bundle);
    assert_eq!(opened.identity_key, [7; 32]);
    // The wrapped bytes hold neither key in clear.
    assert!(!wrapped.windows(32).any(|w| w == bundle.identity_key));
    assert!(!wrapped.windows(32).any(|w| w == bundle.backup_key));
}

#[test]
fn every_changed_byte_of_a_wrapped_bundle_is_refused() {
    let secret = [3u8; 64];
    let bundle = AccountBundle::new([1; 32]);
    let wrapped = bundle
        .wrap("alice", WrapKind::Password, &secret)
        .expect("wrap");
    for i in 0..wrapped.len() {
        let mut bad = wrapped.clone();
        bad[i] ^= 0x01;
        let got = AccountBundle::unwrap(&bad, "alice", WrapKind::Password, &secret);
        let want = if i == 0 {
            AccountError::UnsupportedVersion(bad[0])
        } else {
            AccountError::BundleRefused
        };
        assert_eq!(got.err(), Some(want), "byte {i}");
    }
    for len in [0, 1, 14, wrapped.len() - 1] {
        assert_eq!(
            AccountBundle::unwrap(&wrapped[..len], "alice", WrapKind::Password, &secret).err(),
            Some(AccountError::BundleRefused)
        );
    }
    let mut longer = wrapped.clone();
    longer.push(0);
    assert_eq!(
        AccountBundle::unwrap(&longer, "alice", WrapKind::Password, &secret).err(),
        Some(AccountError::BundleRefused)
    );
}

#[test]
fn a_bundle_opens_only_for_its_user_kind_and_secret() {
    let secret = [9u8; 32];
    let bundle = AccountBundle::new([2; 32]);
    let wrapped = bundle
        .wrap("alice", WrapKind::Recovery, &secret)
        .expect("wrap");
    assert!(AccountBundle::unwrap(&wrapped, "alice", WrapKind::Recovery, &secret).is_ok());
    for (user, kind, key) in [
        ("bob", WrapKind::Recovery, secret),
        ("alice", WrapKind::Password, secret),
        ("alice", WrapKind::Recovery, [8u8; 32]),
    ] {
        assert_eq!(
            AccountBundle::unwrap(&wrapped, user, kind, &key).err(),
            Some(AccountError::BundleRefused)
        );
    }
    // Two wraps of one bundle under one secret differ (fresh nonce each time).
    let again = bundle
        .wrap("alice", WrapKind::Recovery, &secret)
        .expect("wrap");
    assert_ne!(again, wrapped);
}

#[test]
fn the_recovery_copy_opens_with_the_key_as_the_user_typed_it() {
    let recovery = RecoveryKey::generate();
    let bundle = AccountBundle::new([4; 32]);
    let wrapped = bundle
        .wrap("carol", WrapKind::Recovery, recovery.as_bytes())
        .expect("wrap");
    let typed = recovery.display().to_uppercase().replace('-', " ");
    let parsed = RecoveryKey::parse(&typed).expect("parse");
    let opened = AccountBundle::unwrap(&wrapped, "carol", WrapKind::Recovery, parsed.as_bytes())
        .expect("unwrap");
    assert_eq!(opened, bundle);
    assert_eq!(format!("{bundle:?}"), "AccountBundle(..)");
}

/// Version 2 carries the recovery key: a bundle unwrapped with the password yields the
/// recovery key that unwraps its recovery copy; `new` makes a fresh one each time; a
/// version 1 bundle (no recovery key) is refused as unsupported.
#[test]
fn the_bundle_carries_its_recovery_key_and_version_1_is_refused() {
    let secret = [5u8; 64];
    let bundle = AccountBundle::new([4; 32]);
    assert_ne!(
        AccountBundle::new([4; 32]).recovery_key,
        bundle.recovery_key,
        "a fresh recovery key per bundle"
    );
    let recovery = bundle.recovery_key();
    let by_password = bundle
        .wrap("alice", WrapKind::Password, &secret)
        .expect("wrap");
    let by_recovery = bundle
        .wrap("alice", WrapKind::Recovery, recovery.as_bytes())
        .expect("wrap");
    assert_eq!(by_password.len(), 127);
    let opened =
        AccountBundle::unwrap(&by_password, "alice", WrapKind::Password, &secret).expect("unwrap");
    let shown = opened.recovery_key();
    assert_eq!(shown.display(), recovery.display());
    let again = AccountBundle::unwrap(&by_recovery, "alice", WrapKind::Recovery, shown.as_bytes())
        .expect("unwrap");
    assert_eq!(again, bundle);
    let mut v1 = by_password.clone();
    v1[0] = 1;
    assert_eq!(
        AccountBundle::unwrap(&v1, "alice", WrapKind::Password, &secret).err(),
        Some(AccountError::UnsupportedVersion(1))
    );
}
