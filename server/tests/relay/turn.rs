//! The relay's TURN server with the credentials the relay hands out over the wire
//! (`Request::TurnCredentials`), driven by a raw STUN/TURN client on a UDP socket so every
//! answer (success, `401` and its reason) is seen as the server sent it.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cove_test_utils::TestRelay;
use cove_turn::{
    PeerPolicy, REASON_BAD_CREDENTIALS, REASON_EXPIRED, REASON_FORBIDDEN_PEER, REASON_QUOTA,
    TurnStats,
};
use cove_wire::{Reply, Request};
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::{CODE_UNAUTHORIZED, ErrorCodeAttribute};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter,
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND,
    Message, MessageClass, MessageType, Method, Setter,
};
use stun::textattrs::{Nonce, Realm, Username};
use tokio::net::UdpSocket;
use turn::proto::PROTO_UDP;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

/// Only stops a hung test; nothing passes or fails on it.
const WAIT: Duration = Duration::from_secs(30);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A TURN client speaking raw STUN from its own UDP socket (one 5-tuple, one allocation).
pub(crate) struct RawTurn {
    socket: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    /// Realm and nonce from the server's first `401` challenge.
    challenge: Option<(Realm, Nonce)>,
}

/// The server's answer to one request: its class, and its error code and reason if any.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    class: MessageClass,
    error: Option<(u16, String)>,
}

impl RawTurn {
    pub(crate) async fn new(server: SocketAddr, username: &str, password: &str) -> Self {
        RawTurn {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            challenge: None,
        }
    }

    /// Sends `request` and returns the response with its transaction id.
    async fn transact(&self, request: &Message) -> Message {
        self.socket
            .send_to(&request.raw, self.server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 1500];
        loop {
            let (n, from) = tokio::time::timeout(WAIT, self.socket.recv_from(&mut buf))
                .await
                .expect("the TURN server did not answer")
                .unwrap();
            assert_eq!(from, self.server);
            let mut response = Message::new();
            response.unmarshal_binary(&buf[..n]).unwrap();
            if response.transaction_id == request.transaction_id {
                return response;
            }
        }
    }

    /// Sends an authenticated `method` request with `attrs`, first fetching the realm and
    /// nonce with an unauthenticated `Allocate` if this client has none yet.
    async fn request(&mut self, method: Method, attrs: Vec<Box<dyn Setter>>) -> Message {
        if self.challenge.is_none() {
            let mut probe = Message::new();
            probe
                .build(&[
                    Box::new(TransactionId::new()),
                    Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
                    Box::new(RequestedTransport {
                        protocol: PROTO_UDP,
                    }),
                    Box::new(FINGERPRINT),
                ])
                .unwrap();
            let challenge = self.transact(&probe).await;
            assert_eq!(error_of(&challenge).map(|e| e.0), Some(401));
            self.challenge = Some((
                Realm::get_from_as(&challenge, ATTR_REALM).unwrap(),
                Nonce::get_from_as(&challenge, ATTR_NONCE).unwrap(),
            ));
        }
        let (realm, nonce) = self.challenge.clone().unwrap();
        let integrity = MessageIntegrity::new_long_term_integrity(
            self.username.clone(),
            realm.text.clone(),
            self.password.clone(),
        );
        let mut all: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        all.extend(attrs);
        all.push(Box::new(Username::new(
            ATTR_USERNAME,
            self.username.clone(),
        )));
        all.push(Box::new(realm));
        all.push(Box::new(nonce));
        all.push(Box::new(integrity));
        all.push(Box::new(FINGERPRINT));
        let mut request = Message::new();
        request.build(&all).unwrap();
        self.transact(&request).await
    }

    pub(crate) async fn allocate(&mut self) -> Message {
        let transport = RequestedTransport {
            protocol: PROTO_UDP,
        };
        self.request(METHOD_ALLOCATE, vec![Box::new(transport)])
            .await
    }

    async fn refresh(&mut self, lifetime: Duration) -> Message {
        self.request(METHOD_REFRESH, vec![Box::new(Lifetime(lifetime))])
            .await
    }

    async fn create_permission(&mut self, peer: SocketAddr) -> Message {
        let peer = PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        };
        self.request(METHOD_CREATE_PERMISSION, vec![Box::new(peer)])
            .await
    }

    /// Sends `data` to `peer` in a `Send` indication (no answer comes).
    async fn send_indication(&self, peer: SocketAddr, data: &[u8]) {
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
            Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }),
            Box::new(Data(data.to_vec())),
            Box::new(FINGERPRINT),
        ])
        .unwrap();
        self.socket.send_to(&m.raw, self.server).await.unwrap();
    }

    async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Message {
        let peer = PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        };
        self.request(
            METHOD_CHANNEL_BIND,
            vec![Box::new(ChannelNumber(channel)), Box::new(peer)],
        )
        .await
    }
}

/// TURN credentials the relay hands to a freshly registered device of `user`.
pub(crate) async fn credentials_of(relay: &TestRelay, user: &str) -> (String, String) {
    let (mut client, _) = relay.register(user).await.unwrap();
    let Reply::TurnCredentials {
        username, password, ..
    } = client.call(Request::TurnCredentials).await.unwrap()
    else {
        panic!("not TurnCredentials");
    };
    (username, password)
}

fn error_of(m: &Message) -> Option<(u16, String)> {
    let mut code = ErrorCodeAttribute::default();
    code.get_from(m).ok()?;
    Some((
        code.code.0,
        String::from_utf8_lossy(&code.reason).into_owned(),
    ))
}

pub(crate) fn answer(m: &Message) -> Answer {
    Answer {
        class: m.typ.class,
        error: error_of(m),
    }
}

pub(crate) fn success() -> Answer {
    Answer {
        class: CLASS_SUCCESS_RESPONSE,
        error: None,
    }
}

pub(crate) fn unauthorized(reason: &str) -> Answer {
    Answer {
        class: CLASS_ERROR_RESPONSE,
        error: Some((CODE_UNAUTHORIZED.0, reason.to_owned())),
    }
}

/// A credential the relay handed out over the wire (its lifetime configured to 3 seconds):
/// before it expires it makes an allocation; after it expired, the allocation made with it is
/// still refreshed and gets a new permission, while a new allocation with it from another
/// address is refused `401` with the expired reason, and the same credential with a wrong
/// password is refused `401` as forged. The relay's TURN counters agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_issued_turn_credential_renews_its_allocation_after_expiry_but_allocates_nothing_new()
{
    let relay = TestRelay::configured(|config| {
        config.turn_listen = Some("127.0.0.1:0".parse().unwrap());
        config.turn_credential_ttl = Duration::from_secs(3);
        // The peer below is on this machine.
        config.turn_peers = PeerPolicy::allowing(["127.0.0.0/8".parse().unwrap()]);
    })
    .await;
    let server = relay.handle().turn_addr().unwrap();
    let (mut client, keys) = relay.register("alice").await.unwrap();
    let Reply::TurnCredentials {
        urls,
        username,
        password,
        expires_at_ms,
    } = client.call(Request::TurnCredentials).await.unwrap()
    else {
        panic!("not TurnCredentials");
    };
    assert_eq!(urls.0, vec![format!("turn:{server}?transport=udp")]);
    let expires_at = expires_at_ms / 1000;
    assert_eq!(username, format!("{expires_at}:alice/d{}", keys.id()));

    // Allocated while the credential is fresh (it has at least two seconds left).
    let mut carol = RawTurn::new(server, &username, &password).await;
    let allocated = carol.allocate().await;
    assert_eq!(answer(&allocated), success());
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&allocated).unwrap();
    assert_eq!(relayed.ip, server.ip());
    assert_eq!(relay.handle().turn_stats(), Some(TurnStats::default()));

    let deadline = tokio::time::Instant::now() + WAIT;
    while unix_now() <= expires_at {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the credential never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new allocation with the expired credential, from another address: refused.
    let mut eve = RawTurn::new(server, &username, &password).await;
    assert_eq!(answer(&eve.allocate().await), unauthorized(REASON_EXPIRED));
    // The same credential with a wrong password: refused as forged.
    let mut mallory = RawTurn::new(server, &username, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=").await;
    assert_eq!(
        answer(&mallory.allocate().await),
        unauthorized(REASON_BAD_CREDENTIALS)
    );

    // The allocation made with it is refreshed and gets a new permission.
    let refreshed = carol.refresh(Duration::from_secs(600)).await;
    assert_eq!(answer(&refreshed), success());
    let mut lifetime = Lifetime::default();
    lifetime.get_from(&refreshed).unwrap();
    assert!(lifetime.0 > Duration::ZERO, "{lifetime:?}");
    let peer = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    assert_eq!(
        answer(&carol.create_permission(peer.local_addr().unwrap()).await),
        success()
    );

    assert_eq!(
        relay.handle().turn_stats(),
        Some(TurnStats {
            refused_expired: 1,
            refused_bad_credentials: 1,
            refreshes_after_expiry: 1,
            permissions_after_expiry: 1,
            refused_peers: 0,
            refused_quota: 0,
        })
    );
    // Closing the allocation (a Refresh with lifetime 0) works after expiry too.
    assert_eq!(answer(&carol.refresh(Duration::ZERO).await), success());
    relay.shutdown().await;
}

fn refused(code: u16, reason: &str) -> Answer {
    Answer {
        class: CLASS_ERROR_RESPONSE,
        error: Some((code, reason.to_owned())),
    }
}

/// With the default policy the relay's TURN server is no open relay into its own network: a
/// member's allocation gets no permission and no channel to loopback (IPv4, IPv6, mapped),
/// private, link-local or metadata addresses, each refused `403`; at the relay's own IP only
/// the ports of allocations are reachable (a channel to another port is refused, data sent
/// there dropped); a permission to a public address is granted, and the counters agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_allocation_cannot_reach_loopback_private_or_the_relay_itself() {
    let relay = TestRelay::configured(|config| {
        config.turn_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let server = relay.handle().turn_addr().unwrap();
    let (username, password) = credentials_of(&relay, "alice").await;
    let mut alice = RawTurn::new(server, &username, &password).await;
    assert_eq!(answer(&alice.allocate().await), success());

    let internal = [
        "10.0.0.1:53",
        "192.168.1.1:80",
        "172.16.0.1:80",
        "169.254.169.254:80",
        "100.64.0.1:80",
        "127.0.0.2:22",
        "[::1]:22",
        "[fd00::1]:22",
        "[fe80::1]:22",
        "[::ffff:127.0.0.2]:22",
        "0.0.0.0:22",
        "224.0.0.1:5000",
    ];
    for peer in internal {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(
            answer(&alice.create_permission(peer).await),
            refused(403, REASON_FORBIDDEN_PEER),
            "permission to {peer}"
        );
    }
    let channel_peer: SocketAddr = "10.0.0.1:3478".parse().unwrap();
    assert_eq!(
        answer(&alice.channel_bind(0x4000, channel_peer).await),
        refused(403, REASON_FORBIDDEN_PEER)
    );
    // A public peer is fine (a permission sends nothing by itself).
    let public: SocketAddr = "203.0.113.7:5000".parse().unwrap();
    assert_eq!(answer(&alice.create_permission(public).await), success());

    // The relay's own IP (127.0.0.1 here) is a peer only at the ports of its allocations:
    // the permission (per IP) is granted, a channel to another port of the host is not, nor
    // is data sent there; a channel to bob's relayed address is.
    let (bob_user, bob_password) = credentials_of(&relay, "bob").await;
    let mut bob = RawTurn::new(server, &bob_user, &bob_password).await;
    let allocated = bob.allocate().await;
    assert_eq!(answer(&allocated), success());
    let mut bobs = RelayedAddress::default();
    bobs.get_from(&allocated).unwrap();
    let bobs = SocketAddr::new(bobs.ip, bobs.port);
    assert_eq!(bobs.ip(), server.ip());
    assert_eq!(answer(&alice.create_permission(server).await), success());
    let host_service = SocketAddr::new(server.ip(), 22);
    assert_eq!(
        answer(&alice.channel_bind(0x4001, host_service).await),
        refused(403, REASON_FORBIDDEN_PEER)
    );
    assert_eq!(answer(&alice.channel_bind(0x4002, bobs).await), success());
    alice
        .send_indication(server, b"to the relay's own TURN port")
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let expected = internal.len() as u64 + 3;
    while relay.handle().turn_stats().unwrap().refused_peers < expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Send was not judged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        relay.handle().turn_stats(),
        Some(TurnStats {
            refused_peers: expected,
            ..TurnStats::default()
        })
    );
    relay.shutdown().await;
}

/// Allocations are capped per credential and per user (the user's devices together): with
/// caps of 2 and 3, alice's first credential allocates twice and is refused a third time
/// (`486`); her second device's credential allocates once more and is then refused for the
/// user's cap, while bob is not affected; a released allocation frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_allocations_are_capped_per_credential_and_per_user() {
    let relay = TestRelay::configured(|config| {
        config.turn_listen = Some("127.0.0.1:0".parse().unwrap());
        config.turn_peers.max_allocations_per_credential = 2;
        config.turn_peers.max_allocations_per_user = 3;
    })
    .await;
    let server = relay.handle().turn_addr().unwrap();
    let (mut alice_client, alice_keys) = relay.register("alice").await.unwrap();
    let mut phone_keys = cove_test_utils::DeviceKeys::generate("alice");
    crate::device_lists::publish_signed_list(
        &mut alice_client,
        &alice_keys,
        &[phone_keys.public_key()],
    )
    .await;
    let Reply::TurnCredentials {
        username: laptop_user,
        password: laptop_password,
        ..
    } = alice_client.call(Request::TurnCredentials).await.unwrap()
    else {
        panic!("not TurnCredentials");
    };
    let mut laptop = Vec::new();
    for _ in 0..2 {
        let mut c = RawTurn::new(server, &laptop_user, &laptop_password).await;
        assert_eq!(answer(&c.allocate().await), success());
        laptop.push(c);
    }
    let mut third = RawTurn::new(server, &laptop_user, &laptop_password).await;
    assert_eq!(answer(&third.allocate().await), refused(486, REASON_QUOTA));

    // alice's second device: its own credential, the same user.
    let mut phone_client = relay.connect().await.unwrap();
    phone_client
        .register_device(&mut phone_keys, &alice_keys)
        .await
        .unwrap();
    let Reply::TurnCredentials {
        username: phone_user,
        password: phone_password,
        ..
    } = phone_client.call(Request::TurnCredentials).await.unwrap()
    else {
        panic!("not TurnCredentials");
    };
    assert_ne!(phone_user, laptop_user);
    let mut phone = RawTurn::new(server, &phone_user, &phone_password).await;
    assert_eq!(answer(&phone.allocate().await), success());
    let mut phone2 = RawTurn::new(server, &phone_user, &phone_password).await;
    assert_eq!(answer(&phone2.allocate().await), refused(486, REASON_QUOTA));

    // bob is not affected.
    let (bob_user, bob_password) = credentials_of(&relay, "bob").await;
    let mut bob = RawTurn::new(server, &bob_user, &bob_password).await;
    assert_eq!(answer(&bob.allocate().await), success());

    // Releasing one of the laptop's allocations makes room for the refused one.
    assert_eq!(answer(&laptop[0].refresh(Duration::ZERO).await), success());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = answer(&third.allocate().await);
        if a == success() {
            break;
        }
        // The server tells the gate about the closed allocation a moment later.
        assert_eq!(a, refused(486, REASON_QUOTA));
        assert!(tokio::time::Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(relay.handle().turn_stats().unwrap().refused_quota >= 2);
    relay.shutdown().await;
}
