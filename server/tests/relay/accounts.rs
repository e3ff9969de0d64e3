//! Password accounts over the wire (real relay, real TLS): OPAQUE registration and login,
//! the wrapped bundle sent only after a successful login, `LoginFailed` alike for a wrong
//! password and an unknown user, login rate limits, records across a restart, what the data
//! directory holds, and the recovery-bundle fetch.

use std::path::Path;
use std::sync::Arc;

use cove_account::opaque::{
    client_login_finish, client_login_start, client_register_finish, client_register_start,
};
use cove_account::{AccountBundle, ExportKey, KSF_VERSION, RecoveryKey, WrapKind};
use cove_server::{Limits, Relay, RelayConfig, RelayHandle, StoreKind};
use cove_test_utils::{TestClient, TestRelay, client_tls_config, test_limits, ws_url};
use cove_wire::{ErrorCode, ErrorReply, Payload, Reply, Request, Signature, UserName};
use ed25519_dalek::Signer as _;

fn name(user: &str) -> UserName {
    UserName::new(user).unwrap()
}

/// What registering an account leaves the client with.
pub(crate) struct Registered {
    pub(crate) export_key: ExportKey,
    bundle: AccountBundle,
    recovery: RecoveryKey,
    pub(crate) password_bundle: Vec<u8>,
}

/// Registers a password for the authenticated `client`'s user `user`.
pub(crate) async fn register_account(
    client: &mut TestClient,
    user: &str,
    password: &[u8],
) -> Registered {
    let (state, request) = client_register_start(password).unwrap();
    let response = match client
        .call(Request::AccountRegisterStart {
            request: request.into(),
        })
        .await
        .unwrap()
    {
        Reply::AccountRegisterResponse { response } => response,
        other => panic!("unexpected {other:?}"),
    };
    let (upload, export_key) = client_register_finish(state, user, response.as_bytes()).unwrap();
    let bundle = AccountBundle::new(rand_seed());
    let recovery = RecoveryKey::generate();
    let password_bundle = bundle
        .wrap(user, WrapKind::Password, export_key.as_bytes())
        .unwrap();
    let recovery_bundle = bundle
        .wrap(user, WrapKind::Recovery, recovery.as_bytes())
        .unwrap();
    let recovery_key = recovery.auth_key().unwrap().verifying_key().to_bytes();
    let reply = client
        .call(Request::AccountRegisterFinish {
            upload: upload.into(),
            password_bundle: password_bundle.clone().into(),
            recovery_bundle: recovery_bundle.into(),
            recovery_key,
        })
        .await
        .unwrap();
    assert_eq!(reply, Reply::AccountRegistered);
    Registered {
        export_key,
        bundle,
        recovery,
        password_bundle,
    }
}

fn rand_seed() -> [u8; 32] {
    rand::random()
}

/// The relay's answer to a login start: (response, ksf_version).
async fn login_start(
    client: &mut TestClient,
    user: &str,
    request: Vec<u8>,
) -> Result<(Payload, u8), ErrorReply> {
    client
        .request(Request::AccountLoginStart {
            user: name(user),
            request: request.into(),
        })
        .await
        .unwrap()
        .map(|reply| match reply {
            Reply::AccountLoginResponse {
                response,
                ksf_version,
            } => (response, ksf_version),
            other => panic!("unexpected {other:?}"),
        })
}

/// A whole password login on `client`: the client's export key and the relay's answer to
/// the finish, or the error code where it stopped (`LoginFailed` from the client's own
/// check is sent on as a garbage finalization, as a client that goes on would).
pub(crate) async fn login(
    client: &mut TestClient,
    user: &str,
    password: &[u8],
) -> (Option<ExportKey>, Result<Reply, ErrorReply>) {
    let (state, request) = client_login_start(password).unwrap();
    let (response, ksf_version) = match login_start(client, user, request).await {
        Ok(x) => x,
        Err(e) => return (None, Err(e)),
    };
    let (finalization, export_key) =
        match client_login_finish(state, user, ksf_version, response.as_bytes()) {
            Ok(done) => (done.finalization, Some(done.export_key)),
            Err(_) => (vec![0u8; 64], None),
        };
    let answer = client
        .request(Request::AccountLoginFinish {
            finalization: finalization.into(),
        })
        .await
        .unwrap();
    (export_key, answer)
}

fn code(result: &Result<Reply, ErrorReply>) -> Option<ErrorCode> {
    result.as_ref().err().map(|e| e.code)
}

#[tokio::test]
async fn register_then_log_in_from_a_fresh_connection_unwraps_the_same_identity_key() {
    let relay = TestRelay::memory().await;
    let (mut alice, _keys) = relay.register("alice").await.unwrap();
    let reg = register_account(&mut alice, "alice", b"correct horse").await;

    let mut fresh = relay.connect().await.unwrap();
    let (export_key, answer) = login(&mut fresh, "alice", b"correct horse").await;
    let export_key = export_key.expect("the client's login check passed");
    assert_eq!(export_key.as_bytes(), reg.export_key.as_bytes());
    let wrapped = match answer.unwrap() {
        Reply::AccountLoggedIn { password_bundle } => password_bundle,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(wrapped.as_bytes(), reg.password_bundle.as_slice());
    let bundle = AccountBundle::unwrap(
        wrapped.as_bytes(),
        "alice",
        WrapKind::Password,
        export_key.as_bytes(),
    )
    .unwrap();
    assert_eq!(bundle.identity_key, reg.bundle.identity_key);
    assert_eq!(bundle.backup_key, reg.bundle.backup_key);
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_login_failed() {
    let relay = TestRelay::memory().await;
    let (mut alice, _keys) = relay.register("alice").await.unwrap();
    register_account(&mut alice, "alice", b"right").await;
    let mut fresh = relay.connect().await.unwrap();
    let (export_key, answer) = login(&mut fresh, "alice", b"wrong").await;
    assert!(export_key.is_none());
    assert_eq!(code(&answer), Some(ErrorCode::LoginFailed));
}

#[tokio::test]
async fn an_unknown_user_and_a_user_without_an_account_fail_like_a_wrong_password() {
    let relay = TestRelay::memory().await;
    let (mut alice, _keys) = relay.register("alice").await.unwrap();
    register_account(&mut alice, "alice", b"pw").await;
    let (_bob, _bob_keys) = relay.register("bob").await.unwrap();

    let (_, request) = client_login_start(b"pw").unwrap();
    let mut c = relay.connect().await.unwrap();
    let (real, real_ksf) = login_start(&mut c, "alice", request.clone()).await.unwrap();
    for user in ["nobody", "bob"] {
        let mut c = relay.connect().await.unwrap();
        let (fake, ksf) = login_start(&mut c, user, request.clone()).await.unwrap();
        assert_eq!(fake.len(), real.len(), "{user}");
        assert_eq!(ksf, real_ksf, "{user}");
        assert_eq!(ksf, KSF_VERSION);
        let (export_key, answer) = login(&mut c, user, b"pw").await;
        assert!(export_key.is_none(), "{user}");
        assert_eq!(code(&answer), Some(ErrorCode::LoginFailed), "{user}");
    }
}

#[tokio::test]
async fn the_bundle_is_sent_only_after_a_successful_finish() {
    let relay = TestRelay::memory().await;
    let (mut alice, _keys) = relay.register("alice").await.unwrap();
    let reg = register_account(&mut alice, "alice", b"pw").await;
    let contains = |hay: &[u8]| {
        hay.windows(reg.password_bundle.len())
            .any(|w| w == reg.password_bundle)
    };

    let mut c = relay.connect().await.unwrap();
    // A finish with no login started is refused, bundle-less.
    let early = c
        .request(Request::AccountLoginFinish {
            finalization: vec![0u8; 64].into(),
        })
        .await
        .unwrap();
    assert_eq!(code(&early), Some(ErrorCode::InvalidRequest));
    // The login response carries no part of the bundle.
    let (state, request) = client_login_start(b"wrong").unwrap();
    let (response, ksf) = login_start(&mut c, "alice", request).await.unwrap();
    let encoded = cove_wire::encode(&Reply::AccountLoginResponse {
        response: response.clone(),
        ksf_version: ksf,
    })
    .unwrap();
    assert!(!contains(&encoded));
    assert!(client_login_finish(state, "alice", ksf, response.as_bytes()).is_err());
    // A failed finish: LoginFailed; the state is gone, a second finish is refused too.
    for expected in [ErrorCode::LoginFailed, ErrorCode::InvalidRequest] {
        let answer = c
            .request(Request::AccountLoginFinish {
                finalization: vec![7u8; 64].into(),
            })
            .await
            .unwrap();
        assert_eq!(code(&answer), Some(expected));
    }
}

#[tokio::test]
async fn registration_needs_an_authenticated_connection_and_happens_once() {
    let relay = TestRelay::memory().await;
    let mut anonymous = relay.connect().await.unwrap();
    let (_, request) = client_register_start(b"pw").unwrap();
    let refused = anonymous
        .request(Request::AccountRegisterStart {
            request: request.clone().into(),
        })
        .await
        .unwrap();
    assert_eq!(code(&refused), Some(ErrorCode::Unauthenticated));

    let (mut alice, _keys) = relay.register("alice").await.unwrap();
    // A finish without a start.
    let finish = |bundle_len: usize| Request::AccountRegisterFinish {
        upload: vec![0u8; 192].into(),
        password_bundle: vec![0u8; bundle_len].into(),
        recovery_bundle: vec![0u8; bundle_len].into(),
        recovery_key: [0u8; 32],
    };
    let wrapped_len = cove_account::bundle::WRAPPED_LEN;
    let no_start = alice.request(finish(wrapped_len)).await.unwrap();
    assert_eq!(code(&no_start), Some(ErrorCode::InvalidRequest));
    // Bundles of the wrong length.
    alice
        .call(Request::AccountRegisterStart {
            request: request.clone().into(),
        })
        .await
        .unwrap();
    let short = alice.request(finish(wrapped_len - 1)).await.unwrap();
    assert_eq!(code(&short), Some(ErrorCode::InvalidRequest));

    register_account(&mut alice, "alice", b"pw").await;
    let again = alice
        .request(Request::AccountRegisterStart {
            request: request.into(),
        })
        .await
        .unwrap();
    assert_eq!(code(&again), Some(ErrorCode::InvalidRequest));
}

#[tokio::test]
async fn login_attempts_past_the_user_bucket_are_rate_limited_known_or_not() {
    let relay = TestRelay::start(
        StoreKind::Memory,
        Limits {
            logins_per_minute_per_user: 1,
            login_burst_per_user: 3,
            ..test_limits()
        },
    )
    .await;
    let (mut alice, _keys) = relay.register("alice").await.unwrap();
    register_account(&mut alice, "alice", b"pw").await;
    let mut c = relay.connect().await.unwrap();
    for user in ["alice", "nobody"] {
        for _ in 0..3 {
            let (_, request) = client_login_start(b"pw").unwrap();
            login_start(&mut c, user, request).await.unwrap();
        }
        let (_, request) = client_login_start(b"pw").unwrap();
        let refused = login_start(&mut c, user, request).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited, "{user}");
        assert!(refused.retry_after_ms.is_some_and(|ms| ms > 0), "{user}");
    }
    // Another name is not limited by those two.
    let (_, request) = client_login_start(b"pw").unwrap();
    login_start(&mut c, "carol", request).await.unwrap();
}

#[tokio::test]
async fn login_attempts_past_the_address_bucket_are_rate_limited() {
    let relay = TestRelay::start(
        StoreKind::Memory,
        Limits {
            logins_per_minute_per_address: 1,
            login_burst_per_address: 4,
            ..test_limits()
        },
    )
    .await;
    for i in 0..4 {
        let mut c = relay.connect().await.unwrap();
        let (_, request) = client_login_start(b"pw").unwrap();
        login_start(&mut c, &format!("user{i}"), request)
            .await
            .unwrap();
    }
    let mut c = relay.connect().await.unwrap();
    let (_, request) = client_login_start(b"pw").unwrap();
    let refused = login_start(&mut c, "user9", request).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::RateLimited);
    assert!(refused.retry_after_ms.is_some_and(|ms| ms > 0));
}

async fn start_sqlite(dir: &Path) -> (RelayHandle, Arc<rustls::ClientConfig>) {
    let mut config = RelayConfig::new(([127, 0, 0, 1], 0).into(), dir);
    config.store = StoreKind::Sqlite;
    config.limits = test_limits();
    let handle = Relay::start(config).await.unwrap();
    let tls = client_tls_config(handle.cert_der()).unwrap();
    (handle, tls)
}

/// Every file under `dir`, recursively, as bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

/// No file under `dir` holds any of `secrets`; one does hold `stored` (so the scan sees
/// what the store wrote).
fn assert_holds_none(dir: &Path, secrets: &[(&str, &[u8])], stored: &[u8]) {
    let all = files(dir);
    assert!(all.iter().any(|(p, _)| p.ends_with("opaque.key")));
    assert!(
        all.iter()
            .any(|(_, bytes)| bytes.windows(stored.len()).any(|w| w == stored)),
        "the scan found not even the stored wrapped bundle"
    );
    for (path, bytes) in &all {
        for (what, secret) in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == *secret),
                "{path} holds the {what}"
            );
        }
    }
}

#[tokio::test]
async fn records_survive_a_restart_and_the_data_dir_holds_no_password_or_key() {
    let dir = cove_test_utils::temp_dir();
    let password = b"a password nobody would store 7f3c";
    let (relay, tls) = start_sqlite(dir.path()).await;
    let mut alice = TestClient::connect(&ws_url(relay.local_addr()), Arc::clone(&tls))
        .await
        .unwrap();
    let mut keys = cove_test_utils::DeviceKeys::generate("alice");
    alice.register(&mut keys).await.unwrap();
    let reg = register_account(&mut alice, "alice", password).await;
    let key_path = dir.path().join("opaque.key");
    let opaque_key = std::fs::read(&key_path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let mut c = TestClient::connect(&ws_url(relay.local_addr()), Arc::clone(&tls))
        .await
        .unwrap();
    let (export_key, answer) = login(&mut c, "alice", password).await;
    assert!(matches!(answer, Ok(Reply::AccountLoggedIn { .. })));
    assert!(export_key.is_some());
    let secrets: [(&str, &[u8]); 4] = [
        ("password", password),
        ("export key", reg.export_key.as_bytes()),
        ("identity key", &reg.bundle.identity_key),
        ("backup key", &reg.bundle.backup_key),
    ];
    // While running (WAL and all), then after shutdown.
    assert_holds_none(dir.path(), &secrets, &reg.password_bundle);
    alice.close().await;
    c.close().await;
    relay.shutdown().await;
    assert_holds_none(dir.path(), &secrets, &reg.password_bundle);

    let (relay, tls) = start_sqlite(dir.path()).await;
    assert_eq!(
        std::fs::read(&key_path).unwrap(),
        opaque_key,
        "opaque.key reloaded"
    );
    let mut c = TestClient::connect(&ws_url(relay.local_addr()), tls)
        .await
        .unwrap();
    let (export_key, answer) = login(&mut c, "alice", password).await;
    let wrapped = match answer.unwrap() {
        Reply::AccountLoggedIn { password_bundle } => password_bundle,
        other => panic!("unexpected {other:?}"),
    };
    let bundle = AccountBundle::unwrap(
        wrapped.as_bytes(),
        "alice",
        WrapKind::Password,
        export_key.unwrap().as_bytes(),
    )
    .unwrap();
    assert_eq!(bundle.identity_key, reg.bundle.identity_key);
    relay.shutdown().await;
}

#[tokio::test]
async fn the_recovery_bundle_needs_the_recovery_keys_signature_over_the_challenge() {
    let relay = TestRelay::memory().await;
    let (mut alice, _keys) = relay.register("alice").await.unwrap();
    let reg = register_account(&mut alice, "alice", b"pw").await;
    let auth = reg.recovery.auth_key().unwrap();
    let sign = |key: &ed25519_dalek::SigningKey, c: &cove_test_utils::TestClient, user: &str| {
        let message =
            cove_wire::sign::recovery_fetch_message(&c.nonce(), &c.channel(), &name(user));
        Signature(key.sign(&message).to_bytes())
    };
    // The right key and user over this connection's nonce, but another connection's channel
    // binding (a signature forwarded from another TLS connection).
    let forwarded = |key: &ed25519_dalek::SigningKey,
                     c: &cove_test_utils::TestClient,
                     other: &cove_test_utils::TestClient| {
        let message =
            cove_wire::sign::recovery_fetch_message(&c.nonce(), &other.channel(), &name("alice"));
        Signature(key.sign(&message).to_bytes())
    };

    // Signed by another key, over another connection's challenge, for an unknown user:
    // each on a fresh connection.
    let other = RecoveryKey::generate().auth_key().unwrap();
    let other_conn = relay.connect().await.unwrap();
    for case in [
        "wrong key",
        "wrong challenge",
        "wrong channel",
        "unknown user",
    ] {
        let mut c = relay.connect().await.unwrap();
        let (user, signature) = match case {
            "wrong key" => ("alice", sign(&other, &c, "alice")),
            "wrong challenge" => ("alice", sign(&auth, &other_conn, "alice")),
            "wrong channel" => ("alice", forwarded(&auth, &c, &other_conn)),
            _ => ("nobody", sign(&auth, &c, "nobody")),
        };
        let refused = c
            .request(Request::FetchRecoveryBundle {
                user: name(user),
                signature,
            })
            .await
            .unwrap();
        assert_eq!(code(&refused), Some(ErrorCode::LoginFailed), "{case}");
    }

    let mut c = relay.connect().await.unwrap();
    // The right signature on this connection's challenge: the bundle, once.
    let signature = sign(&auth, &c, "alice");
    let fetch = Request::FetchRecoveryBundle {
        user: name("alice"),
        signature,
    };
    let wrapped = match c.call(fetch.clone()).await.unwrap() {
        Reply::RecoveryBundle { recovery_bundle } => recovery_bundle,
        other => panic!("unexpected {other:?}"),
    };
    let bundle = AccountBundle::unwrap(
        wrapped.as_bytes(),
        "alice",
        WrapKind::Recovery,
        reg.recovery.as_bytes(),
    )
    .unwrap();
    assert_eq!(bundle.identity_key, reg.bundle.identity_key);
    let replay = c.request(fetch).await.unwrap();
    assert_eq!(code(&replay), Some(ErrorCode::AuthenticationFailed));
}

/// A new machine that logged in with the password (no device yet) unwraps the identity
/// key, signs an `Add` entry for its own key, publishes it and registers the device, with
/// no other device's authorisation; a connection that did not log in may do neither, and
/// the login does not stand for another user.
#[tokio::test]
async fn a_password_login_lets_a_new_machine_list_and_register_its_device() {
    use cove_identity::IdentitySigner;
    use cove_wire::BoundedVec;
    use cove_wire::identity::DeviceName;

    let relay = TestRelay::memory().await;
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let (_bob, _bob_keys) = relay.register("bob").await.unwrap();
    let reg = register_account(&mut alice, "alice", b"pw").await;
    let signer = IdentitySigner::new(name("alice"), &reg.bundle.identity_key);
    let list = signer
        .create(
            alice_keys.public_key(),
            DeviceName::new("phone").unwrap(),
            1,
        )
        .unwrap();
    alice
        .call(Request::PublishDeviceList {
            entries: BoundedVec(list.entries().to_vec()),
        })
        .await
        .unwrap();

    // Not logged in: neither a publish nor an unauthorised registration.
    let mut anonymous = relay.connect().await.unwrap();
    let mut laptop = cove_test_utils::DeviceKeys::generate("alice");
    let publish = |entries: Vec<cove_wire::identity::ListEntry>| Request::PublishDeviceList {
        entries: BoundedVec(entries),
    };
    let refused = anonymous.request(publish(vec![])).await.unwrap();
    assert_eq!(code(&refused), Some(ErrorCode::Unauthenticated));

    // Logged in: fetch the list, extend it with the identity key from the bundle, publish.
    let mut machine = relay.connect().await.unwrap();
    let (export_key, answer) = login(&mut machine, "alice", b"pw").await;
    let Ok(Reply::AccountLoggedIn { password_bundle }) = answer else {
        panic!("{answer:?}")
    };
    let bundle = AccountBundle::unwrap(
        password_bundle.as_bytes(),
        "alice",
        WrapKind::Password,
        export_key.unwrap().as_bytes(),
    )
    .unwrap();
    let Reply::DeviceList { entries } = machine
        .call(Request::FetchDeviceList {
            user: name("alice"),
        })
        .await
        .unwrap()
    else {
        panic!("no list")
    };
    let mut stored = cove_identity::DeviceList::verify(&name("alice"), &entries.0).unwrap();
    let signer = IdentitySigner::new(name("alice"), &bundle.identity_key);
    let cert = signer
        .add(
            &mut stored,
            laptop.public_key(),
            DeviceName::new("laptop").unwrap(),
            2,
        )
        .unwrap();
    let reply = machine.call(publish(vec![cert.entry])).await.unwrap();
    assert!(matches!(reply, Reply::DeviceListHead { .. }), "{reply:?}");

    // Without the login, the listed key with a zero authorisation is refused.
    let unauthorised = anonymous
        .request(Request::RegisterDevice {
            user: name("alice"),
            key: laptop.public_key(),
            signature: laptop.sign_challenge(&anonymous.nonce(), &anonymous.channel()),
            authorizer: alice_keys.id(),
            authorization: Signature([0u8; 64]),
        })
        .await
        .unwrap();
    assert_eq!(code(&unauthorised), Some(ErrorCode::AuthenticationFailed));

    // The login is alice's: registering a device of bob still needs bob's authorizer.
    let bob_laptop = cove_test_utils::DeviceKeys::generate("bob");
    let as_bob = machine
        .request(Request::RegisterDevice {
            user: name("bob"),
            key: bob_laptop.public_key(),
            signature: bob_laptop.sign_challenge(&machine.nonce(), &machine.channel()),
            authorizer: alice_keys.id(),
            authorization: Signature([0u8; 64]),
        })
        .await
        .unwrap();
    assert_eq!(code(&as_bob), Some(ErrorCode::UnknownDevice));

    // Registering the listed key needs no device's authorisation (a zero one is ignored).
    let reply = machine
        .call(Request::RegisterDevice {
            user: name("alice"),
            key: laptop.public_key(),
            signature: laptop.sign_challenge(&machine.nonce(), &machine.channel()),
            authorizer: alice_keys.id(),
            authorization: Signature([0u8; 64]),
        })
        .await
        .unwrap();
    let Reply::Authenticated { device } = reply else {
        panic!("{reply:?}")
    };
    laptop.device = Some(device);
    let mut again = relay.login(&laptop).await.unwrap();
    assert_eq!(again.call(Request::Ping).await.unwrap(), Reply::Pong);
}

/// OPAQUE messages over `MAX_ACCOUNT_MESSAGE_BYTES` are refused `TooLarge` before any
/// parsing; bytes within the bound that are not an OPAQUE message are `InvalidRequest`.
#[tokio::test]
async fn oversized_and_garbage_opaque_messages_are_refused() {
    use cove_wire::limits::MAX_ACCOUNT_MESSAGE_BYTES;
    let relay = TestRelay::memory().await;
    let (mut alice, _keys) = relay.register("alice").await.unwrap();
    let mut c = relay.connect().await.unwrap();
    for (len, expected) in [
        (MAX_ACCOUNT_MESSAGE_BYTES + 1, ErrorCode::TooLarge),
        (MAX_ACCOUNT_MESSAGE_BYTES, ErrorCode::InvalidRequest),
        (3, ErrorCode::InvalidRequest),
    ] {
        let login = login_start(&mut c, "alice", vec![0xff; len]).await;
        assert_eq!(
            login.unwrap_err().code,
            expected,
            "login start of {len} bytes"
        );
        let register = alice
            .request(Request::AccountRegisterStart {
                request: vec![0xff; len].into(),
            })
            .await
            .unwrap();
        assert_eq!(
            code(&register),
            Some(expected),
            "register start of {len} bytes"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Password change, reset and account deletion.

/// Starts a password replacement for `new` on `client` and builds its finish: the relay's
/// answer to the start, or the upload and the bundle wrapped under the new export key.
async fn password_start(
    client: &mut TestClient,
    user: &str,
    bundle: &AccountBundle,
    new: &[u8],
) -> Result<(Vec<u8>, Vec<u8>, ExportKey), ErrorReply> {
    let (state, request) = client_register_start(new).unwrap();
    let response = match client
        .request(Request::AccountPasswordStart {
            request: request.into(),
        })
        .await
        .unwrap()?
    {
        Reply::AccountRegisterResponse { response } => response,
        other => panic!("unexpected {other:?}"),
    };
    let (upload, export_key) = client_register_finish(state, user, response.as_bytes()).unwrap();
    let password_bundle = bundle
        .wrap(user, WrapKind::Password, export_key.as_bytes())
        .unwrap();
    Ok((upload, password_bundle, export_key))
}

fn finish(upload: &[u8], password_bundle: &[u8], signature: Option<Signature>) -> Request {
    Request::AccountPasswordFinish {
        upload: upload.to_vec().into(),
        password_bundle: password_bundle.to_vec().into(),
        reset_signature: signature,
    }
}

/// A fresh connection's login: the bundle it unwraps, or the error code.
async fn fresh_login(
    relay: &TestRelay,
    user: &str,
    password: &[u8],
) -> Result<AccountBundle, ErrorCode> {
    let mut c = relay.connect().await.unwrap();
    let (export_key, answer) = login(&mut c, user, password).await;
    match answer {
        Ok(Reply::AccountLoggedIn { password_bundle }) => Ok(AccountBundle::unwrap(
            password_bundle.as_bytes(),
            user,
            WrapKind::Password,
            export_key.unwrap().as_bytes(),
        )
        .unwrap()),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(e.code),
    }
}

/// Signs a recovery-bundle fetch of `user` on `c` with the recovery auth key.
fn fetch_signature(key: &ed25519_dalek::SigningKey, c: &TestClient, user: &str) -> Signature {
    let message = cove_wire::sign::recovery_fetch_message(&c.nonce(), &c.channel(), &name(user));
    Signature(key.sign(&message).to_bytes())
}

/// Signs a reset on connection `c` (its nonce and channel) of `upload` and `bundle`.
fn reset_signature(
    key: &ed25519_dalek::SigningKey,
    c: &TestClient,
    user: &str,
    upload: &[u8],
    bundle: &[u8],
) -> Signature {
    let message = cove_wire::sign::password_reset_message(
        &c.nonce(),
        &c.channel(),
        &name(user),
        upload,
        bundle,
    );
    Signature(key.sign(&message).to_bytes())
}

/// A password change needs a successful login on the same connection (none, or a failed
/// one: `Unauthenticated`), replaces the record and the password bundle (the old password
/// then fails with `LoginFailed`, the new one unwraps the same identity key), keeps the
/// recovery bundle, uses the login up, refuses a signature, and leaves the user's device
/// able to authenticate.
#[tokio::test]
async fn a_password_change_needs_a_fresh_login_and_replaces_record_and_bundle() {
    let relay = TestRelay::memory().await;
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let reg = register_account(&mut alice, "alice", b"old password").await;

    // No login, or a failed one: no change.
    let mut anonymous = relay.connect().await.unwrap();
    let refused = password_start(&mut anonymous, "alice", &reg.bundle, b"x").await;
    assert_eq!(
        refused.err().map(|e| e.code),
        Some(ErrorCode::Unauthenticated)
    );
    let mut failed = relay.connect().await.unwrap();
    let (_, answer) = login(&mut failed, "alice", b"wrong").await;
    assert_eq!(code(&answer), Some(ErrorCode::LoginFailed));
    let refused = password_start(&mut failed, "alice", &reg.bundle, b"x").await;
    assert_eq!(
        refused.err().map(|e| e.code),
        Some(ErrorCode::Unauthenticated)
    );
    // An authenticated device without a password login: no change either.
    let refused = password_start(&mut alice, "alice", &reg.bundle, b"x").await;
    assert_eq!(
        refused.err().map(|e| e.code),
        Some(ErrorCode::Unauthenticated)
    );

    // A change carrying a reset signature is refused (and uses the start up).
    let mut c = relay.connect().await.unwrap();
    let (_, answer) = login(&mut c, "alice", b"old password").await;
    assert!(
        matches!(answer, Ok(Reply::AccountLoggedIn { .. })),
        "{answer:?}"
    );
    let (upload, bundle, _) = password_start(&mut c, "alice", &reg.bundle, b"new password")
        .await
        .unwrap();
    let signed = c
        .request(finish(&upload, &bundle, Some(Signature([1; 64]))))
        .await
        .unwrap();
    assert_eq!(code(&signed), Some(ErrorCode::InvalidRequest));
    assert_eq!(
        fresh_login(&relay, "alice", b"new password").await.err(),
        Some(ErrorCode::LoginFailed)
    );

    let mut c = relay.connect().await.unwrap();
    let (_, answer) = login(&mut c, "alice", b"old password").await;
    assert!(
        matches!(answer, Ok(Reply::AccountLoggedIn { .. })),
        "{answer:?}"
    );
    let (upload, bundle, _) = password_start(&mut c, "alice", &reg.bundle, b"new password")
        .await
        .unwrap();
    let done = c.request(finish(&upload, &bundle, None)).await.unwrap();
    assert_eq!(done, Ok(Reply::AccountPasswordChanged));
    // The login and the start are used up.
    let again = c.request(finish(&upload, &bundle, None)).await.unwrap();
    assert_eq!(code(&again), Some(ErrorCode::InvalidRequest));
    let again = password_start(&mut c, "alice", &reg.bundle, b"third").await;
    assert_eq!(
        again.err().map(|e| e.code),
        Some(ErrorCode::Unauthenticated)
    );

    assert_eq!(
        fresh_login(&relay, "alice", b"old password").await.err(),
        Some(ErrorCode::LoginFailed)
    );
    let opened = fresh_login(&relay, "alice", b"new password").await.unwrap();
    assert_eq!(opened, reg.bundle);
    // The recovery bundle is the one registered.
    let auth = reg.recovery.auth_key().unwrap();
    let mut r = relay.connect().await.unwrap();
    let signature = fetch_signature(&auth, &r, "alice");
    let Reply::RecoveryBundle { recovery_bundle } = r
        .call(Request::FetchRecoveryBundle {
            user: name("alice"),
            signature,
        })
        .await
        .unwrap()
    else {
        panic!("no recovery bundle")
    };
    let recovered = AccountBundle::unwrap(
        recovery_bundle.as_bytes(),
        "alice",
        WrapKind::Recovery,
        reg.recovery.as_bytes(),
    )
    .unwrap();
    assert_eq!(recovered, reg.bundle);
    // The device still authenticates.
    relay.login(&alice_keys).await.unwrap();
}

/// A reset needs a successful recovery-bundle fetch on the same connection (a wrong
/// recovery key: `LoginFailed`, then `Unauthenticated`), and a signature by the recovery
/// key over this connection and the new upload and bundle: none is `InvalidRequest`; one
/// made on another connection (forwarded) or over other bytes is `LoginFailed`; the same
/// finish replayed on its connection is `InvalidRequest` and on another connection
/// `LoginFailed`. Afterwards the new password logs in and the forgotten one fails.
#[tokio::test]
async fn a_reset_needs_the_recovery_key_and_a_signature_bound_to_connection_and_upload() {
    let relay = TestRelay::memory().await;
    let (mut alice, _keys) = relay.register("alice").await.unwrap();
    let reg = register_account(&mut alice, "alice", b"forgotten").await;
    let auth = reg.recovery.auth_key().unwrap();

    // A wrong recovery key: no bundle, no reset.
    let other = RecoveryKey::generate().auth_key().unwrap();
    let mut c = relay.connect().await.unwrap();
    let signature = fetch_signature(&other, &c, "alice");
    let refused = c
        .request(Request::FetchRecoveryBundle {
            user: name("alice"),
            signature,
        })
        .await
        .unwrap();
    assert_eq!(code(&refused), Some(ErrorCode::LoginFailed));
    let refused = password_start(&mut c, "alice", &reg.bundle, b"x").await;
    assert_eq!(
        refused.err().map(|e| e.code),
        Some(ErrorCode::Unauthenticated)
    );

    // A connection that fetched with the right key, its finish signed in various ways.
    async fn fetched(relay: &TestRelay, auth: &ed25519_dalek::SigningKey) -> TestClient {
        let mut c = relay.connect().await.unwrap();
        let signature = fetch_signature(auth, &c, "alice");
        let reply = c
            .call(Request::FetchRecoveryBundle {
                user: name("alice"),
                signature,
            })
            .await
            .unwrap();
        assert!(matches!(reply, Reply::RecoveryBundle { .. }));
        c
    }
    let elsewhere = relay.connect().await.unwrap();
    for case in ["unsigned", "forwarded", "other bytes"] {
        let mut c = fetched(&relay, &auth).await;
        let (upload, bundle, _) = password_start(&mut c, "alice", &reg.bundle, b"new")
            .await
            .unwrap();
        let (signature, want) = match case {
            "unsigned" => (None, ErrorCode::InvalidRequest),
            "forwarded" => (
                Some(reset_signature(
                    &auth, &elsewhere, "alice", &upload, &bundle,
                )),
                ErrorCode::LoginFailed,
            ),
            _ => {
                let mut other_upload = upload.clone();
                other_upload[0] ^= 1;
                (
                    Some(reset_signature(&auth, &c, "alice", &other_upload, &bundle)),
                    ErrorCode::LoginFailed,
                )
            }
        };
        let refused = c
            .request(finish(&upload, &bundle, signature))
            .await
            .unwrap();
        assert_eq!(code(&refused), Some(want), "{case}");
    }
    assert_eq!(
        fresh_login(&relay, "alice", b"new").await.err(),
        Some(ErrorCode::LoginFailed)
    );

    let mut c = fetched(&relay, &auth).await;
    let (upload, bundle, _) = password_start(&mut c, "alice", &reg.bundle, b"new")
        .await
        .unwrap();
    let signature = reset_signature(&auth, &c, "alice", &upload, &bundle);
    let request = finish(&upload, &bundle, Some(signature));
    assert_eq!(
        c.request(request.clone()).await.unwrap(),
        Ok(Reply::AccountPasswordChanged)
    );
    // Replayed on its connection (the proof is used up) and on another one that fetched.
    let replay = c.request(request.clone()).await.unwrap();
    assert_eq!(code(&replay), Some(ErrorCode::InvalidRequest));
    let mut d = fetched(&relay, &auth).await;
    let (_, _, _) = password_start(&mut d, "alice", &reg.bundle, b"third")
        .await
        .unwrap();
    let replay = d.request(request).await.unwrap();
    assert_eq!(code(&replay), Some(ErrorCode::LoginFailed));

    assert_eq!(
        fresh_login(&relay, "alice", b"forgotten").await.err(),
        Some(ErrorCode::LoginFailed)
    );
    assert_eq!(
        fresh_login(&relay, "alice", b"new").await.unwrap(),
        reg.bundle
    );
}

/// Whether a file named `name` is anywhere under `dir`.
fn holds_file(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            holds_file(&path, name)
        } else {
            entry.file_name().to_string_lossy() == name
        }
    })
}

/// Deleting an account needs a password login on the same connection; it closes the
/// user's connected devices (`UnknownDevice`), removes the user (directory, device list,
/// account, KeyPackages) and its blobs, ends its group memberships (a member's commit may
/// still remove its leaf), refuses its old device's login, and frees the name for someone
/// else; another user's account, devices and blobs stay.
#[tokio::test]
async fn deleting_an_account_removes_the_user_its_devices_and_blobs_and_frees_the_name() {
    let relay = TestRelay::sqlite().await;
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    register_account(&mut alice, "alice", b"alice pw").await;
    register_account(&mut bob, "bob", b"bob pw").await;
    let alice_blob = crate::resources::upload(&relay, &alice_keys, b"alice's file").await;
    let bob_blob = crate::resources::upload(&relay, &bob_keys, b"bob's file").await;
    assert!(holds_file(relay.data_dir(), &alice_blob));
    let group = crate::group_with(&mut bob, &mut [(&mut alice, &alice_keys)]).await;

    // Without a login, or after a failed one: refused.
    let mut c = relay.connect().await.unwrap();
    let refused = c.request(Request::AccountDelete).await.unwrap();
    assert_eq!(code(&refused), Some(ErrorCode::Unauthenticated));
    let (_, answer) = login(&mut c, "alice", b"wrong").await;
    assert_eq!(code(&answer), Some(ErrorCode::LoginFailed));
    let refused = c.request(Request::AccountDelete).await.unwrap();
    assert_eq!(code(&refused), Some(ErrorCode::Unauthenticated));

    // A connection of its own for the right password: an unauthenticated connection has
    // the handshake deadline, and two Argon2id logins on a loaded machine can outlast it.
    let mut c = relay.connect().await.unwrap();
    let (_, answer) = login(&mut c, "alice", b"alice pw").await;
    assert!(
        matches!(answer, Ok(Reply::AccountLoggedIn { .. })),
        "{answer:?}"
    );
    assert_eq!(
        c.request(Request::AccountDelete).await.unwrap(),
        Ok(Reply::AccountDeleted)
    );
    // The login is used up.
    let again = c.request(Request::AccountDelete).await.unwrap();
    assert_eq!(code(&again), Some(ErrorCode::Unauthenticated));

    // alice's connected device is closed; her old device cannot log in again.
    let (_, closing) = alice.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::UnknownDevice));
    let err = relay.login(&alice_keys).await.err().expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::UnknownDevice));
    // Gone from the directory, the lists, the accounts and the blobs.
    let gone = bob
        .request(Request::ListDevices {
            user: name("alice"),
        })
        .await
        .unwrap();
    assert_eq!(code(&gone), Some(ErrorCode::UnknownUser));
    let gone = bob
        .request(Request::FetchDeviceList {
            user: name("alice"),
        })
        .await
        .unwrap();
    assert_eq!(code(&gone), Some(ErrorCode::UnknownUser));
    assert_eq!(
        fresh_login(&relay, "alice", b"alice pw").await.err(),
        Some(ErrorCode::LoginFailed)
    );
    assert!(!holds_file(relay.data_dir(), &alice_blob));
    // bob's group goes on without her: a post, and a commit removing her leaf.
    bob.post_app(group, cove_wire::Epoch(1), b"still here")
        .await
        .unwrap();
    bob.commit(
        group,
        cove_wire::Epoch(1),
        vec![],
        vec![alice_keys.id()],
        None,
        b"commit-remove",
    )
    .await
    .unwrap();

    // bob is untouched.
    assert!(holds_file(relay.data_dir(), &bob_blob));
    assert!(fresh_login(&relay, "bob", b"bob pw").await.is_ok());
    relay.login(&bob_keys).await.unwrap();

    // The name is free: someone else registers it, with a new device id and no account.
    let (_mallory, mallory_keys) = relay.register("alice").await.unwrap();
    assert!(mallory_keys.id() > alice_keys.id());
    assert_eq!(
        fresh_login(&relay, "alice", b"alice pw").await.err(),
        Some(ErrorCode::LoginFailed)
    );
}

/// Hostile password replacements change nothing: an oversized start is `TooLarge`, a
/// garbage one `InvalidRequest`; a finish with an oversized upload is `TooLarge`, with a
/// garbage upload or a bundle of the wrong length `InvalidRequest`; afterwards the old
/// password still logs in and unwraps the registered bundle.
#[tokio::test]
async fn hostile_password_replacements_are_refused_and_change_nothing() {
    use cove_wire::limits::MAX_ACCOUNT_MESSAGE_BYTES;
    let relay = TestRelay::memory().await;
    let (mut alice, _keys) = relay.register("alice").await.unwrap();
    let reg = register_account(&mut alice, "alice", b"pw").await;
    async fn logged_in(relay: &TestRelay) -> TestClient {
        let mut c = relay.connect().await.unwrap();
        let (_, answer) = login(&mut c, "alice", b"pw").await;
        assert!(
            matches!(answer, Ok(Reply::AccountLoggedIn { .. })),
            "{answer:?}"
        );
        c
    }
    for (len, expected) in [
        (MAX_ACCOUNT_MESSAGE_BYTES + 1, ErrorCode::TooLarge),
        (3, ErrorCode::InvalidRequest),
    ] {
        let mut c = logged_in(&relay).await;
        let refused = c
            .request(Request::AccountPasswordStart {
                request: vec![0xff; len].into(),
            })
            .await
            .unwrap();
        assert_eq!(code(&refused), Some(expected), "start of {len} bytes");
    }
    let good_len = cove_account::bundle::WRAPPED_LEN;
    for (upload, bundle_len, expected) in [
        (None, good_len - 1, ErrorCode::InvalidRequest),
        (None, good_len + 1, ErrorCode::InvalidRequest),
        (
            Some(vec![0xff; MAX_ACCOUNT_MESSAGE_BYTES + 1]),
            good_len,
            ErrorCode::TooLarge,
        ),
        (Some(vec![0xff; 64]), good_len, ErrorCode::InvalidRequest),
    ] {
        let mut c = logged_in(&relay).await;
        let (real_upload, _, _) = password_start(&mut c, "alice", &reg.bundle, b"new")
            .await
            .unwrap();
        let upload = upload.unwrap_or(real_upload);
        let refused = c
            .request(finish(&upload, &vec![7; bundle_len], None))
            .await
            .unwrap();
        assert_eq!(
            code(&refused),
            Some(expected),
            "upload of {} bytes, bundle of {bundle_len}",
            upload.len()
        );
    }
    assert_eq!(
        fresh_login(&relay, "alice", b"new").await.err(),
        Some(ErrorCode::LoginFailed)
    );
    assert_eq!(
        fresh_login(&relay, "alice", b"pw").await.unwrap(),
        reg.bundle
    );
}

/// A device that logs in with the password on its own authenticated connection and deletes
/// its account gets the answer first, then its connection closes with `UnknownDevice`.
#[tokio::test]
async fn a_device_deleting_its_own_account_is_answered_then_closed() {
    let relay = TestRelay::memory().await;
    let (mut alice, _keys) = relay.register("alice").await.unwrap();
    register_account(&mut alice, "alice", b"pw").await;
    let (_, answer) = login(&mut alice, "alice", b"pw").await;
    assert!(
        matches!(answer, Ok(Reply::AccountLoggedIn { .. })),
        "{answer:?}"
    );
    assert_eq!(
        alice.request(Request::AccountDelete).await.unwrap(),
        Ok(Reply::AccountDeleted)
    );
    let (_, closing) = alice.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::UnknownDevice));
}

/// A password login and a password change whose client pauses between every step for
/// longer than the authentication deadline (as Argon2id does on a slow machine) complete on
/// one unauthenticated connection; a connection that started no account operation is still
/// closed at the deadline (`Unauthenticated`).
#[tokio::test]
async fn slow_steps_of_a_login_and_a_password_change_outlive_the_authentication_deadline() {
    let relay = TestRelay::start(
        StoreKind::Memory,
        Limits {
            handshake_timeout_ms: 300,
            ..test_limits()
        },
    )
    .await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let reg = register_account(&mut alice, "alice", b"old password").await;
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(700));

    let mut c = relay.connect().await.unwrap();
    let (state, request) = client_login_start(b"old password").unwrap();
    let (response, ksf_version) = login_start(&mut c, "alice", request).await.unwrap();
    pause().await;
    let done = client_login_finish(state, "alice", ksf_version, response.as_bytes()).unwrap();
    let answer = c
        .request(Request::AccountLoginFinish {
            finalization: done.finalization.into(),
        })
        .await
        .unwrap();
    assert!(matches!(answer, Ok(Reply::AccountLoggedIn { .. })));
    pause().await;
    let (upload, bundle, _) = password_start(&mut c, "alice", &reg.bundle, b"new password")
        .await
        .unwrap();
    pause().await;
    let reply = c.request(finish(&upload, &bundle, None)).await.unwrap();
    assert_eq!(reply, Ok(Reply::AccountPasswordChanged));
    assert!(fresh_login(&relay, "alice", b"new password").await.is_ok());

    let mut idle = relay.connect().await.unwrap();
    let (_, code) = idle.read_until_closed().await;
    assert_eq!(code, Some(ErrorCode::Unauthenticated));
    relay.shutdown().await;
}
