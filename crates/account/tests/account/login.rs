//! OPAQUE registration and login.

use argon2::{Algorithm, Argon2, Params, Version};
use cove_account::opaque::{
    client_login_finish, client_login_start, server_login_finish, server_login_start,
};
use cove_account::{AccountError, KSF_PARAMS, KSF_VERSION, ServerSecrets};

use crate::{login, register};

#[test]
fn the_right_password_logs_in_and_both_sides_share_the_keys() {
    let secrets = ServerSecrets::generate();
    let reg = register(&secrets, "alice", b"correct horse battery staple");
    let (client, server_key) = login(
        &secrets,
        "alice",
        Some(&reg.record),
        b"correct horse battery staple",
    )
    .expect("login");
    assert_eq!(client.export_key.as_bytes(), reg.export_key.as_bytes());
    assert_eq!(client.session_key.as_slice(), server_key.as_slice());
    assert_eq!(server_key.len(), 64);
}

#[test]
fn a_wrong_password_and_an_unknown_user_fail_alike() {
    let secrets = ServerSecrets::generate();
    let reg = register(&secrets, "alice", b"right password");
    let wrong = login(&secrets, "alice", Some(&reg.record), b"wrong password");
    assert_eq!(wrong.err(), Some(AccountError::LoginFailed));
    let unknown = login(&secrets, "nobody", None, b"right password");
    assert_eq!(unknown.err(), Some(AccountError::LoginFailed));

    // The relay's answer for an unknown user has the length of a real one: a client (or an
    // observer) cannot tell from it whether the name exists.
    let (_, request) = client_login_start(b"x").expect("start");
    let (_, real) =
        server_login_start(&secrets, "alice", Some(&reg.record), &request).expect("real");
    let (_, fake) = server_login_start(&secrets, "nobody", None, &request).expect("fake");
    assert_eq!(real.len(), fake.len());
}

#[test]
fn a_record_works_only_for_its_user_and_its_relay() {
    let secrets = ServerSecrets::generate();
    let reg = register(&secrets, "alice", b"pw");
    // The record presented under another name: the name is an OPAQUE identifier.
    let other_name = login(&secrets, "mallory", Some(&reg.record), b"pw");
    assert_eq!(other_name.err(), Some(AccountError::LoginFailed));
    // The record copied to another relay (other OPRF seed and key pair).
    let other_relay = ServerSecrets::generate();
    let copied = login(&other_relay, "alice", Some(&reg.record), b"pw");
    assert_eq!(copied.err(), Some(AccountError::LoginFailed));
    // The relay's secrets survive a save and load.
    let reloaded = ServerSecrets::from_bytes(&secrets.to_bytes()).expect("reload");
    assert!(login(&reloaded, "alice", Some(&reg.record), b"pw").is_ok());
}

#[test]
fn the_relay_finish_refuses_a_finalization_from_another_login() {
    let secrets = ServerSecrets::generate();
    let reg = register(&secrets, "alice", b"pw");
    // Two logins in flight; the finalization of the first does not finish the second.
    let (c1, r1) = client_login_start(b"pw").expect("start 1");
    let (_s1, resp1) = server_login_start(&secrets, "alice", Some(&reg.record), &r1).expect("s1");
    let (_c2, r2) = client_login_start(b"pw").expect("start 2");
    let (s2, _resp2) = server_login_start(&secrets, "alice", Some(&reg.record), &r2).expect("s2");
    let done1 = client_login_finish(c1, "alice", KSF_VERSION, &resp1).expect("client 1");
    assert_eq!(
        server_login_finish(s2, "alice", &done1.finalization).err(),
        Some(AccountError::LoginFailed)
    );
}

#[test]
fn an_unknown_ksf_version_is_refused_before_stretching() {
    let secrets = ServerSecrets::generate();
    let reg = register(&secrets, "alice", b"pw");
    let (c, r) = client_login_start(b"pw").expect("start");
    let (_s, resp) = server_login_start(&secrets, "alice", Some(&reg.record), &r).expect("s");
    assert_eq!(
        client_login_finish(c, "alice", KSF_VERSION + 1, &resp).err(),
        Some(AccountError::UnsupportedVersion(KSF_VERSION + 1))
    );
}

/// The relay never holds the password or a plain Argon2id hash of it (which would let
/// whoever reads the record test guesses without the OPRF key): neither appears in the
/// record or in any message the relay saw.
#[test]
fn the_relay_sees_no_password_and_no_password_hash() {
    let password = b"a password the relay must never see";
    let secrets = ServerSecrets::generate();
    let reg = register(&secrets, "alice", password);
    let argon = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(
            KSF_PARAMS.memory_kib,
            KSF_PARAMS.iterations,
            KSF_PARAMS.lanes,
            None,
        )
        .expect("params"),
    );
    let mut hash = [0u8; 32];
    argon
        .hash_password_into(password, &[0u8; 16], &mut hash)
        .expect("argon2");
    for haystack in [&reg.record, &reg.wire] {
        assert!(!contains(haystack, password));
        assert!(!contains(haystack, &hash[..16]));
        assert!(!contains(haystack, &reg.export_key.as_bytes()[..16]));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any bytes as any message from the network give an error, never a panic.
    #[test]
    fn hostile_messages_are_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        let secrets = ServerSecrets::generate();
        let _ = cove_account::opaque::server_register_start(&secrets, "a", &bytes);
        let _ = cove_account::opaque::server_register_finish(&bytes);
        let _ = server_login_start(&secrets, "a", Some(&bytes), &bytes);
        let _ = server_login_start(&secrets, "a", None, &bytes);
        let _ = ServerSecrets::from_bytes(&bytes);
        let (c, _) = client_login_start(b"pw").expect("start");
        // A response that does not parse fails before the (slow) stretching.
        if let Err(e) = client_login_finish(c, "a", KSF_VERSION, &bytes) {
            proptest::prop_assert!(matches!(e, AccountError::Malformed(_) | AccountError::LoginFailed));
        }
    }
}
