//! Fuzz entry point: the function the `stun_turn` target in `fuzz/fuzz_targets/` calls, and
//! that this crate's tests replay over `fuzz/corpus/stun_turn/` (see `fuzz/README.md`). Not an
//! API: it panics when the gate breaks a property it promises, never for any input alone.

use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use stun::agent::TransactionId;
use stun::attributes::{ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, Getter, METHOD_ALLOCATE,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND, Message,
    MessageType, Method, Setter,
};
use stun::textattrs::{Realm, Username};
use turn::proto::chandata::ChannelData;
use turn::proto::peeraddr::PeerAddress;

use crate::credentials::turn_credentials;
use crate::gate::{Gate, Verdict};
use crate::peers::PeerPolicy;

/// The shared secret of the fuzzed gate.
pub const FUZZ_SECRET: &[u8] = b"cove-fuzz-turn-secret";
/// The realm of the fuzzed gate.
pub const FUZZ_REALM: &str = "cove";
/// The gate's clock (Unix seconds).
pub const FUZZ_NOW_SECS: u64 = 1_700_000_000;

/// One datagram from a client, as the relay's TURN socket receives it: judged by a fresh
/// gate (`crate::gate`, default peer policy, [`FUZZ_SECRET`], at [`FUZZ_NOW_SECS`]), then
/// seen as the server's own answer (`observe_outgoing`), and decoded as `ChannelData` as the
/// `turn` crate decodes a non-STUN datagram. A refusal the gate answers must be a well-formed STUN
/// error response carrying an error code.
pub fn stun_turn(data: &[u8]) {
    let gate = Gate::new(FUZZ_REALM, FUZZ_SECRET, PeerPolicy::default());
    let src: SocketAddr = SocketAddr::from(([198, 51, 100, 7], 40_000));
    let now = UNIX_EPOCH + Duration::from_secs(FUZZ_NOW_SECS);
    if let Verdict::Refuse(answer) = gate.inspect(data, src, now)
        && !answer.is_empty()
    {
        let mut m = Message::new();
        let parsed = m.unmarshal_binary(&answer);
        let mut code = ErrorCodeAttribute::default();
        assert!(
            parsed.is_ok() && m.typ.class == CLASS_ERROR_RESPONSE && code.get_from(&m).is_ok(),
            "the gate answered a malformed refusal: {answer:?}"
        );
    }
    gate.observe_outgoing(data);
    let mut channel = ChannelData {
        raw: data.to_vec(),
        ..Default::default()
    };
    let _ = channel.decode();
}

/// Real datagrams for a seed corpus: requests signed with a fresh credential of the fuzzed
/// gate (`Allocate`, `Refresh`, `CreatePermission` and `ChannelBind` to a public and to a
/// loopback peer), a `Send` indication and a `ChannelData` message.
pub fn samples() -> Vec<Vec<u8>> {
    let now = UNIX_EPOCH + Duration::from_secs(FUZZ_NOW_SECS);
    let Ok(c) = turn_credentials(FUZZ_SECRET, "alice/d1", Duration::from_secs(600), now) else {
        return Vec::new();
    };
    let public = SocketAddr::from(([203, 0, 113, 9], 5000));
    let loopback = SocketAddr::from(([127, 0, 0, 1], 5000));
    let signed = |method: Method, peer: Option<SocketAddr>| -> Option<Vec<u8>> {
        let mut attrs: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId([7; 12])),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
            Box::new(Username::new(ATTR_USERNAME, c.username.clone())),
            Box::new(Realm::new(ATTR_REALM, FUZZ_REALM.to_owned())),
        ];
        if let Some(peer) = peer {
            attrs.push(Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }));
        }
        attrs.push(Box::new(MessageIntegrity::new_long_term_integrity(
            c.username.clone(),
            FUZZ_REALM.to_owned(),
            c.password.clone(),
        )));
        attrs.push(Box::new(FINGERPRINT));
        let mut m = Message::new();
        m.build(&attrs).ok()?;
        Some(m.raw)
    };
    let mut send = Message::new();
    let send = send
        .build(&[
            Box::new(TransactionId([8; 12])),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
            Box::new(PeerAddress {
                ip: public.ip(),
                port: public.port(),
            }),
        ])
        .ok()
        .map(|()| send.raw.clone());
    let channel = {
        let mut c = ChannelData {
            data: b"hello".to_vec(),
            number: turn::proto::channum::ChannelNumber(0x4000),
            raw: Vec::new(),
        };
        c.encode();
        Some(c.raw)
    };
    [
        signed(METHOD_ALLOCATE, None),
        signed(METHOD_REFRESH, None),
        signed(METHOD_CREATE_PERMISSION, Some(public)),
        signed(METHOD_CREATE_PERMISSION, Some(loopback)),
        signed(METHOD_CHANNEL_BIND, Some(loopback)),
        send,
        channel,
    ]
    .into_iter()
    .flatten()
    .collect()
}
