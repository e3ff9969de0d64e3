//! The link rendezvous (linking a new machine by a code): an authenticated device opens a
//! slot, an unauthenticated connection joins it by number, the relay passes bytes both ways
//! and tells each side when the other leaves or the slot expires. One joiner per slot, ever.
//! Real relay on 127.0.0.1:0, real TLS.

use cove_server::StoreKind;
use cove_test_utils::{ClientError, TestClient, TestRelay, test_limits};
use cove_wire::{ErrorCode, LinkCloseReason, Payload, Reply, Request, ServerFrame};

async fn open(host: &mut TestClient) -> u32 {
    match host.call(Request::OpenLink).await.unwrap() {
        Reply::LinkOpened { nameplate } => nameplate,
        other => panic!("expected LinkOpened, got {other:?}"),
    }
}

async fn join(joiner: &mut TestClient, nameplate: u32) -> Result<Reply, ClientError> {
    joiner.call(Request::JoinLink { nameplate }).await
}

async fn send(from: &mut TestClient, bytes: &[u8]) -> Result<Reply, ClientError> {
    from.call(Request::LinkSend {
        bytes: Payload::from(bytes),
    })
    .await
}

/// The error code of a refused call.
fn refused(r: Result<Reply, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Refused(e)) => e.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn next_message(client: &mut TestClient) -> Vec<u8> {
    match client.next_link_frame().await.unwrap() {
        ServerFrame::LinkMessage { bytes } => bytes.into_vec(),
        other => panic!("expected a link message, got {other:?}"),
    }
}

/// The host hears the joiner, bytes pass both ways in order, and a second joiner of the same
/// slot is refused `LinkTaken`.
#[tokio::test]
async fn messages_pass_both_ways_and_a_second_joiner_is_taken() {
    let relay = TestRelay::memory().await;
    let (mut host, _) = relay.register("alice").await.unwrap();
    let nameplate = open(&mut host).await;
    let mut joiner = relay.connect().await.unwrap();
    assert_eq!(
        join(&mut joiner, nameplate).await.unwrap(),
        Reply::LinkJoined
    );
    assert_eq!(
        host.next_link_frame().await.unwrap(),
        ServerFrame::LinkPeerJoined
    );
    assert_eq!(
        send(&mut joiner, b"spake from joiner").await.unwrap(),
        Reply::LinkSent
    );
    assert_eq!(send(&mut joiner, b"second").await.unwrap(), Reply::LinkSent);
    assert_eq!(next_message(&mut host).await, b"spake from joiner");
    assert_eq!(next_message(&mut host).await, b"second");
    assert_eq!(
        send(&mut host, b"spake from host").await.unwrap(),
        Reply::LinkSent
    );
    assert_eq!(next_message(&mut joiner).await, b"spake from host");

    let mut second = relay.connect().await.unwrap();
    assert_eq!(
        refused(join(&mut second, nameplate).await),
        ErrorCode::LinkTaken
    );
    // The refused machine has no slot to send through.
    assert_eq!(
        refused(send(&mut second, b"x").await),
        ErrorCode::InvalidRequest
    );
    // The pair still works after the refusal.
    assert_eq!(send(&mut host, b"after").await.unwrap(), Reply::LinkSent);
    assert_eq!(next_message(&mut joiner).await, b"after");
    relay.shutdown().await;
}

/// A number nobody opened is `LinkNotFound`; opening needs an authenticated device; sending
/// without a slot is `InvalidRequest`; a message over the bound is `TooLarge`.
#[tokio::test]
async fn wrong_numbers_unauthenticated_opens_and_oversized_messages_are_refused() {
    let relay = TestRelay::memory().await;
    let (mut host, _) = relay.register("alice").await.unwrap();
    let nameplate = open(&mut host).await;
    let mut joiner = relay.connect().await.unwrap();
    let wrong = if nameplate == 1 { 2 } else { nameplate - 1 };
    assert_eq!(
        refused(join(&mut joiner, wrong).await),
        ErrorCode::LinkNotFound
    );
    assert_eq!(
        refused(joiner.call(Request::OpenLink).await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        refused(send(&mut joiner, b"x").await),
        ErrorCode::InvalidRequest
    );
    // A second slot on the same connection is refused.
    assert_eq!(
        refused(host.call(Request::OpenLink).await),
        ErrorCode::InvalidRequest
    );
    // The refusals did not use up the slot: the right number still joins.
    assert_eq!(
        join(&mut joiner, nameplate).await.unwrap(),
        Reply::LinkJoined
    );
    let big = vec![0u8; cove_wire::limits::MAX_LINK_MESSAGE_BYTES + 1];
    assert_eq!(refused(send(&mut joiner, &big).await), ErrorCode::TooLarge);
    relay.shutdown().await;
}

/// A slot expires after the configured lifetime: its host is told `Expired`, and a machine
/// joining the number afterwards is refused `LinkExpired`.
#[tokio::test]
async fn an_expired_code_is_refused() {
    let relay = TestRelay::start(
        StoreKind::Memory,
        cove_server::Limits {
            link_code_lifetime_ms: 200,
            ..test_limits()
        },
    )
    .await;
    let (mut host, _) = relay.register("alice").await.unwrap();
    let nameplate = open(&mut host).await;
    assert_eq!(
        host.next_link_frame().await.unwrap(),
        ServerFrame::LinkClosed {
            reason: LinkCloseReason::Expired
        }
    );
    let mut joiner = relay.connect().await.unwrap();
    assert_eq!(
        refused(join(&mut joiner, nameplate).await),
        ErrorCode::LinkExpired
    );
    // The host may open a new slot.
    let again = open(&mut host).await;
    assert!(again >= 1);
    relay.shutdown().await;
}

/// When the host disconnects, the joiner is told `PeerLeft`, can send nothing more, and the
/// number cannot be joined again.
#[tokio::test]
async fn a_host_disconnect_tells_the_joiner() {
    let relay = TestRelay::memory().await;
    let (mut host, _) = relay.register("alice").await.unwrap();
    let nameplate = open(&mut host).await;
    let mut joiner = relay.connect().await.unwrap();
    join(&mut joiner, nameplate).await.unwrap();
    host.close().await;
    assert_eq!(
        joiner.next_link_frame().await.unwrap(),
        ServerFrame::LinkClosed {
            reason: LinkCloseReason::PeerLeft
        }
    );
    assert_eq!(
        refused(send(&mut joiner, b"x").await),
        ErrorCode::InvalidRequest
    );
    let mut other = relay.connect().await.unwrap();
    assert_eq!(
        refused(join(&mut other, nameplate).await),
        ErrorCode::LinkNotFound
    );
    relay.shutdown().await;
}

/// An unauthenticated joiner in a slot is not closed for not authenticating: a connection
/// opened after it and never authenticating is closed (`Unauthenticated`), the joiner still
/// receives the host's message afterwards.
#[tokio::test]
async fn a_joiner_in_a_slot_outlives_the_authentication_deadline() {
    let relay = TestRelay::start(
        StoreKind::Memory,
        cove_server::Limits {
            handshake_timeout_ms: 300,
            ..test_limits()
        },
    )
    .await;
    let (mut host, _) = relay.register("alice").await.unwrap();
    let nameplate = open(&mut host).await;
    let mut joiner = relay.connect().await.unwrap();
    join(&mut joiner, nameplate).await.unwrap();
    let mut idle = relay.connect().await.unwrap();
    let (_, code) = idle.read_until_closed().await;
    assert_eq!(code, Some(ErrorCode::Unauthenticated));
    send(&mut host, b"still there").await.unwrap();
    assert_eq!(next_message(&mut joiner).await, b"still there");
    relay.shutdown().await;
}
