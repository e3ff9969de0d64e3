//! The check in front of the TURN server's socket: every authenticated request is judged here
//! before the `turn` crate sees it. Forged credentials are refused with `401`
//! ([`REASON_BAD_CREDENTIALS`]), and so are expired ones ([`REASON_EXPIRED`]), except that the
//! allocation made with a credential can be refreshed, and its permissions and channels
//! created, with it from the same address for up to [`MAX_TTL`] after it expired. Peers the
//! [`PeerPolicy`] refuses are answered `403 Forbidden` ([`REASON_FORBIDDEN_PEER`]), and an
//! `Allocate` over a credential's or a user's cap `486 Allocation Quota Reached`.
//! [`TurnStats`] counts what was refused and what was renewed after expiry.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use stun::agent::TransactionId;
use stun::attributes::{
    ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
};
use stun::error_code::{
    CODE_ALLOC_QUOTA_REACHED, CODE_FORBIDDEN, CODE_UNAUTHORIZED, ErrorCode, ErrorCodeAttribute,
};
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter,
    MAGIC_COOKIE, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH,
    METHOD_SEND, Message, MessageType, Method, Setter, is_message,
};
use stun::textattrs::{Nonce, Realm, Username};
use tokio::net::UdpSocket;
use turn::allocation::AllocationInfo;
use turn::auth::generate_auth_key;
use turn::proto::relayaddr::RelayedAddress;
use webrtc_util::Conn;
use zeroize::Zeroizing;

use crate::credentials::{MAX_TTL, parse_username, rest_password};
use crate::peers::{Peer, PeerPolicy, canonical};

/// The reason phrase of a `401` for a correctly signed but expired credential.
pub const REASON_EXPIRED: &str = "Unauthorized: credential expired";
/// The reason phrase of a `401` for a forged credential (wrong HMAC, malformed username,
/// foreign realm).
pub const REASON_BAD_CREDENTIALS: &str = "Unauthorized";
/// The reason phrase of a `403` for a peer address the [`PeerPolicy`] refuses.
pub const REASON_FORBIDDEN_PEER: &str = "Forbidden: peer address not allowed";
/// The reason phrase of a `486` for an allocation over a credential's or a user's cap.
pub const REASON_QUOTA: &str = "Allocation Quota Reached";
/// Most allocations tracked for renewal after their credential expired; beyond it, new
/// allocations still work but cannot be renewed past their credential's expiry.
const MAX_TRACKED_ALLOCATIONS: usize = 65_536;
/// Most renewals awaiting the server's answer (statistics only).
const MAX_PENDING_RENEWALS: usize = 4096;

/// Counters of a running TURN server (for tests and monitoring).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnStats {
    /// Requests refused with `401` because their (correctly signed) credential had expired.
    pub refused_expired: u64,
    /// Requests refused with `401` because their credential was forged or malformed.
    pub refused_bad_credentials: u64,
    /// `Refresh` requests answered with success for an allocation whose credential had
    /// already expired.
    pub refreshes_after_expiry: u64,
    /// `CreatePermission` and `ChannelBind` requests answered with success for an allocation
    /// whose credential had already expired.
    pub permissions_after_expiry: u64,
    /// `CreatePermission` and `ChannelBind` requests refused `403` for a peer address.
    pub refused_peers: u64,
    /// `Allocate` requests refused `486` for a credential's or a user's cap.
    pub refused_quota: u64,
}

/// Checks TURN REST credentials before the `turn` crate sees a request.
///
/// The crate answers a refused credential with `400 Bad Request` and cannot tell a new
/// allocation from the renewal of an existing one. The gate answers `401 Unauthorized`
/// (RFC 8489 §9.2.4, with `REALM` and `NONCE`) and applies the expiry rule:
/// - a credential must be correctly signed for every request;
/// - a new allocation (`Allocate`) needs an unexpired credential;
/// - the allocation made with a credential can be refreshed, and its permissions and channels
///   created or refreshed (`Refresh`, `CreatePermission`, `ChannelBind`) with that same
///   credential from the same address after it expired, for at most [`MAX_TTL`] past its
///   expiry, so a call outlives its credential but a leaked, expired credential opens
///   nothing new.
pub(crate) struct Gate {
    realm: String,
    secret: Zeroizing<Vec<u8>>,
    /// Client address -> the username its allocation was made with.
    allocations: Mutex<HashMap<SocketAddr, String>>,
    /// Transaction ids of renewals let through after expiry, awaiting the server's answer.
    renewals: Mutex<HashMap<TransactionId, Method>>,
    /// Transaction ids of new allocations counted against the caps, awaiting the server's
    /// answer (a refused one is not counted any more).
    pending_allocations: Mutex<HashMap<TransactionId, SocketAddr>>,
    /// Which peers may be reached; the allocation caps.
    policy: PeerPolicy,
    /// The relayed addresses of the allocations the server granted: the only ports of its
    /// own addresses a peer may be at.
    relayed: Mutex<HashSet<SocketAddr>>,
    refused_peers: AtomicU64,
    refused_quota: AtomicU64,
    refused_expired: AtomicU64,
    refused_bad_credentials: AtomicU64,
    refreshes_after_expiry: AtomicU64,
    permissions_after_expiry: AtomicU64,
}

pub(crate) enum Verdict {
    Pass,
    Refuse(Vec<u8>),
}

enum Refusal {
    Expired,
    BadCredentials,
    ForbiddenPeer,
    Quota,
}

impl Gate {
    /// A gate for `realm` and `secret` applying `policy`, tracking no allocation yet.
    pub(crate) fn new(realm: &str, secret: &[u8], policy: PeerPolicy) -> Self {
        Gate {
            realm: realm.to_owned(),
            secret: Zeroizing::new(secret.to_vec()),
            allocations: Mutex::default(),
            renewals: Mutex::default(),
            pending_allocations: Mutex::default(),
            policy,
            relayed: Mutex::default(),
            refused_peers: AtomicU64::new(0),
            refused_quota: AtomicU64::new(0),
            refused_expired: AtomicU64::new(0),
            refused_bad_credentials: AtomicU64::new(0),
            refreshes_after_expiry: AtomicU64::new(0),
            permissions_after_expiry: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> TurnStats {
        TurnStats {
            refused_expired: self.refused_expired.load(Ordering::Relaxed),
            refused_bad_credentials: self.refused_bad_credentials.load(Ordering::Relaxed),
            refreshes_after_expiry: self.refreshes_after_expiry.load(Ordering::Relaxed),
            permissions_after_expiry: self.permissions_after_expiry.load(Ordering::Relaxed),
            refused_peers: self.refused_peers.load(Ordering::Relaxed),
            refused_quota: self.refused_quota.load(Ordering::Relaxed),
        }
    }

    /// Decides on one datagram from `src`. Anything that is not an authenticated STUN request
    /// passes unchanged (the crate answers unauthenticated requests with its nonce challenge).
    pub(crate) fn inspect(&self, packet: &[u8], src: SocketAddr, now: SystemTime) -> Verdict {
        if !is_message(packet) {
            return Verdict::Pass;
        }
        let mut m = Message::new();
        if m.unmarshal_binary(packet).is_err() {
            return Verdict::Pass;
        }
        if m.typ.class == CLASS_INDICATION && m.typ.method == METHOD_SEND {
            // Data to a peer (unauthenticated, needs a permission for the peer's IP): the
            // port matters for the server's own IP.
            if self.peers_permitted(&m) {
                return Verdict::Pass;
            }
            self.refused_peers.fetch_add(1, Ordering::Relaxed);
            return Verdict::Refuse(Vec::new());
        }
        if m.typ.class != CLASS_REQUEST || !m.contains(ATTR_MESSAGE_INTEGRITY) {
            return Verdict::Pass;
        }
        let (Ok(username), Ok(realm)) = (
            Username::get_from_as(&m, ATTR_USERNAME),
            Realm::get_from_as(&m, ATTR_REALM),
        ) else {
            // The crate answers 400 Bad Request.
            return Verdict::Pass;
        };
        match self.check(&mut m, &username.text, &realm.text, src, now) {
            Ok(()) => Verdict::Pass,
            Err(refusal) => {
                let (counter, code, reason) = match refusal {
                    Refusal::Expired => (&self.refused_expired, CODE_UNAUTHORIZED, REASON_EXPIRED),
                    Refusal::BadCredentials => (
                        &self.refused_bad_credentials,
                        CODE_UNAUTHORIZED,
                        REASON_BAD_CREDENTIALS,
                    ),
                    Refusal::ForbiddenPeer => {
                        (&self.refused_peers, CODE_FORBIDDEN, REASON_FORBIDDEN_PEER)
                    }
                    Refusal::Quota => (&self.refused_quota, CODE_ALLOC_QUOTA_REACHED, REASON_QUOTA),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                match self.error_response(&m, code, reason) {
                    Some(response) => Verdict::Refuse(response),
                    // Cannot happen for the attributes used; dropping the request is safe.
                    None => Verdict::Refuse(Vec::new()),
                }
            }
        }
    }

    fn check(
        &self,
        m: &mut Message,
        username: &str,
        realm: &str,
        src: SocketAddr,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        if realm != self.realm {
            return Err(Refusal::BadCredentials);
        }
        let (expiry, _) = parse_username(username).ok_or(Refusal::BadCredentials)?;
        let password = rest_password(&self.secret, username);
        let key = generate_auth_key(username, realm, &password);
        MessageIntegrity(key)
            .check(m)
            .map_err(|_| Refusal::BadCredentials)?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Refusal::Expired)?
            .as_secs();
        let method = m.typ.method;
        if matches!(method, METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND)
            && !self.peers_permitted(m)
        {
            return Err(Refusal::ForbiddenPeer);
        }
        if expiry > now {
            if method == METHOD_ALLOCATE {
                self.admit_allocation(m.transaction_id, username, src)?;
            }
            return Ok(());
        }
        let renewal = matches!(
            method,
            METHOD_REFRESH | METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND
        );
        let own_allocation =
            lock(&self.allocations).get(&src).map(String::as_str) == Some(username);
        if renewal && own_allocation && now < expiry.saturating_add(MAX_TTL.as_secs()) {
            let mut renewals = lock(&self.renewals);
            if renewals.len() >= MAX_PENDING_RENEWALS {
                renewals.clear();
            }
            renewals.insert(m.transaction_id, method);
            return Ok(());
        }
        Err(Refusal::Expired)
    }

    /// Whether every `XOR-PEER-ADDRESS` of `m` is a peer the policy permits (one that does
    /// not decode is not). At the server's own IP, a permission (`CreatePermission`, per IP)
    /// is granted, while a channel or data needs the port of one of its allocations.
    fn peers_permitted(&self, m: &Message) -> bool {
        let per_ip = m.typ.method == METHOD_CREATE_PERMISSION;
        m.attributes
            .0
            .iter()
            .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
            .all(|a| {
                let Some(peer) = xor_peer(&a.value, &m.transaction_id) else {
                    return false;
                };
                match self.policy.judge(peer.ip()) {
                    Peer::Allowed => true,
                    Peer::Forbidden => false,
                    Peer::Own => {
                        per_ip
                            || lock(&self.relayed)
                                .contains(&SocketAddr::new(canonical(peer.ip()), peer.port()))
                    }
                }
            })
    }

    /// Counts a new allocation from `src` under `username` against the caps. The first
    /// username stays until the server closes that allocation (as the server itself refuses
    /// a second allocation for the same address), so a spoofed Allocate from the same
    /// address cannot take over the renewal right; a repeated Allocate from an address that
    /// holds one is not counted again.
    fn admit_allocation(
        &self,
        transaction: TransactionId,
        username: &str,
        src: SocketAddr,
    ) -> Result<(), Refusal> {
        let mut allocations = lock(&self.allocations);
        if allocations.contains_key(&src) {
            return Ok(());
        }
        let user = user_of(username);
        let (mut same_credential, mut same_user) = (0usize, 0usize);
        for held in allocations.values() {
            same_credential += usize::from(held == username);
            same_user += usize::from(user_of(held) == user);
        }
        if same_credential >= self.policy.max_allocations_per_credential
            || same_user >= self.policy.max_allocations_per_user
        {
            return Err(Refusal::Quota);
        }
        if allocations.len() < MAX_TRACKED_ALLOCATIONS {
            allocations.insert(src, username.to_owned());
            let mut pending = lock(&self.pending_allocations);
            if pending.len() >= MAX_PENDING_RENEWALS {
                // Their allocations stay counted until the server closes them.
                pending.clear();
            }
            pending.insert(transaction, src);
        }
        Ok(())
    }

    /// An error response to request `m`: `code` with `reason`, and for `401` the realm and
    /// the request's nonce.
    fn error_response(&self, m: &Message, code: ErrorCode, reason: &str) -> Option<Vec<u8>> {
        if code != CODE_UNAUTHORIZED {
            let mut response = Message::new();
            response
                .build(&[
                    Box::new(Message {
                        transaction_id: m.transaction_id,
                        ..Default::default()
                    }),
                    Box::new(MessageType::new(m.typ.method, CLASS_ERROR_RESPONSE)),
                    Box::new(ErrorCodeAttribute {
                        code,
                        reason: reason.as_bytes().to_vec(),
                    }),
                ])
                .ok()?;
            return Some(response.raw);
        }
        self.unauthorized(m, reason)
    }

    /// `401 Unauthorized` for request `m`, with the realm and the request's nonce.
    fn unauthorized(&self, m: &Message, reason: &str) -> Option<Vec<u8>> {
        let mut response = Message::new();
        let mut attrs: Vec<Box<dyn Setter>> = vec![
            Box::new(Message {
                transaction_id: m.transaction_id,
                ..Default::default()
            }),
            Box::new(MessageType::new(m.typ.method, CLASS_ERROR_RESPONSE)),
            Box::new(ErrorCodeAttribute {
                code: CODE_UNAUTHORIZED,
                reason: reason.as_bytes().to_vec(),
            }),
            Box::new(Realm::new(ATTR_REALM, self.realm.clone())),
        ];
        if let Ok(nonce) = Nonce::get_from_as(m, ATTR_NONCE) {
            attrs.push(Box::new(nonce));
        }
        response.build(&attrs).ok()?;
        Some(response.raw)
    }

    /// Notes the server's answer to a renewal let through after its credential expired.
    pub(crate) fn observe_outgoing(&self, packet: &[u8]) {
        if (lock(&self.renewals).is_empty() && lock(&self.pending_allocations).is_empty())
            || !is_message(packet)
        {
            return;
        }
        let mut m = Message::new();
        if m.unmarshal_binary(packet).is_err() {
            return;
        }
        let allocated = lock(&self.pending_allocations).remove(&m.transaction_id);
        if let Some(src) = allocated {
            if m.typ.class == CLASS_SUCCESS_RESPONSE {
                let mut relayed = RelayedAddress::default();
                if relayed.get_from(&m).is_ok() {
                    let mut set = lock(&self.relayed);
                    if set.len() < MAX_TRACKED_ALLOCATIONS {
                        set.insert(SocketAddr::new(canonical(relayed.ip), relayed.port));
                    }
                }
            } else {
                // Refused by the server: no allocation to count (nor to renew).
                lock(&self.allocations).remove(&src);
            }
        }
        let Some(method) = lock(&self.renewals).remove(&m.transaction_id) else {
            return;
        };
        if m.typ.class != CLASS_SUCCESS_RESPONSE {
            return;
        }
        let counter = if method == METHOD_REFRESH {
            &self.refreshes_after_expiry
        } else {
            &self.permissions_after_expiry
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets an allocation the server closed.
    pub(crate) fn closed(&self, info: &AllocationInfo) {
        lock(&self.relayed).remove(&SocketAddr::new(
            canonical(info.relay_addr.ip()),
            info.relay_addr.port(),
        ));
        let mut allocations = lock(&self.allocations);
        if allocations.get(&info.five_tuple.src_addr) == Some(&info.username) {
            allocations.remove(&info.five_tuple.src_addr);
        }
    }
}

/// The user of a credential's username for the per-user cap: its user part up to the first
/// `/` (the relay mints `<user>/d<device>`), or the whole user part.
fn user_of(username: &str) -> &str {
    let user = parse_username(username).map_or(username, |(_, user)| user);
    user.split('/').next().unwrap_or(user)
}

/// The address of an `XOR-PEER-ADDRESS` value (RFC 8489 §14.2: family, port and address
/// XORed with the magic cookie and, for IPv6, the transaction id).
fn xor_peer(value: &[u8], transaction: &TransactionId) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    xor_peer_ip(value, transaction).map(|ip| SocketAddr::new(ip, port))
}

fn xor_peer_ip(value: &[u8], transaction: &TransactionId) -> Option<IpAddr> {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(&transaction.0);
    let family = u16::from_be_bytes([*value.first()?, *value.get(1)?]);
    let xored = |len: usize| -> Option<Vec<u8>> {
        let addr = value.get(4..4 + len)?;
        Some(addr.iter().zip(key.iter()).map(|(a, k)| a ^ k).collect())
    };
    match family {
        0x01 => {
            let b = xored(4)?;
            Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
        }
        0x02 => {
            let b: [u8; 16] = xored(16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The server's UDP socket with the [`Gate`] in front of it.
pub(crate) struct GatedConn {
    socket: Arc<UdpSocket>,
    gate: Arc<Gate>,
}

impl GatedConn {
    /// `socket` with `gate` in front of it.
    pub(crate) fn new(socket: Arc<UdpSocket>, gate: Arc<Gate>) -> Self {
        GatedConn { socket, gate }
    }
}

#[async_trait]
impl Conn for GatedConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, src) = self.socket.recv_from(buf).await?;
            let packet = buf.get(..n).unwrap_or_default();
            match self.gate.inspect(packet, src, SystemTime::now()) {
                Verdict::Pass => return Ok((n, src)),
                Verdict::Refuse(response) => {
                    if !response.is_empty() {
                        // A failed answer is like a lost datagram: the client retransmits.
                        let _ = self.socket.send_to(&response, src).await;
                    }
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.gate.observe_outgoing(buf);
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use stun::fingerprint::FINGERPRINT;
    use stun::message::Getter;

    use super::*;
    use crate::credentials::turn_credentials;

    const SECRET: &[u8] = b"turn-shared-secret-for-tests";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// An authenticated request as a TURN client sends it.
    fn request(method: Method, username: &str, realm: &str, password: &str) -> Vec<u8> {
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
            Box::new(Username::new(ATTR_USERNAME, username.to_owned())),
            Box::new(Realm::new(ATTR_REALM, realm.to_owned())),
            Box::new(MessageIntegrity::new_long_term_integrity(
                username.to_owned(),
                realm.to_owned(),
                password.to_owned(),
            )),
            Box::new(FINGERPRINT),
        ])
        .unwrap();
        m.raw
    }

    /// `None` if the gate passes the packet, else the refusal's code and reason.
    fn verdict(gate: &Gate, packet: &[u8], src: SocketAddr, now: SystemTime) -> Option<String> {
        match gate.inspect(packet, src, now) {
            Verdict::Pass => None,
            Verdict::Refuse(raw) => {
                let mut m = Message::new();
                m.unmarshal_binary(&raw).unwrap();
                assert_eq!(m.typ.class, CLASS_ERROR_RESPONSE);
                let mut code = ErrorCodeAttribute::default();
                code.get_from(&m).unwrap();
                Some(format!(
                    "{} {}",
                    code.code.0,
                    String::from_utf8_lossy(&code.reason)
                ))
            }
        }
    }

    /// The rules of the gate, request by request: a fresh credential allocates; an expired
    /// one neither allocates nor renews another address's allocation, but renews its own
    /// (until `MAX_TTL` past its expiry); forged, malformed and foreign-realm credentials are
    /// refused as bad; unauthenticated requests and non-STUN datagrams pass to the crate.
    #[test]
    fn gate_allocates_with_fresh_credentials_and_renews_only_its_own_allocation_after_expiry() {
        let gate = Gate::new("cove", SECRET, PeerPolicy::default());
        let carol: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let eve: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let t0 = 1_700_000_000;
        let c = turn_credentials(SECRET, "carol", Duration::from_secs(60), at(t0)).unwrap();
        let req = |method| request(method, &c.username, "cove", &c.password);
        let expired = format!("401 {REASON_EXPIRED}");
        let bad = format!("401 {REASON_BAD_CREDENTIALS}");

        assert_eq!(verdict(&gate, &req(METHOD_ALLOCATE), carol, at(t0)), None);
        assert_eq!(
            verdict(&gate, &req(METHOD_REFRESH), carol, at(t0 + 1)),
            None
        );
        let later = at(c.expires_at);
        assert_eq!(
            verdict(&gate, &req(METHOD_ALLOCATE), eve, later),
            Some(expired.clone())
        );
        assert_eq!(
            verdict(&gate, &req(METHOD_REFRESH), eve, later),
            Some(expired.clone())
        );
        for method in [
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ] {
            assert_eq!(verdict(&gate, &req(method), carol, later), None);
        }
        assert_eq!(
            verdict(&gate, &req(METHOD_ALLOCATE), carol, later),
            Some(expired.clone())
        );
        let too_late = at(c.expires_at + MAX_TTL.as_secs());
        assert_eq!(
            verdict(&gate, &req(METHOD_REFRESH), carol, too_late),
            Some(expired.clone())
        );
        assert_eq!(gate.stats().refused_expired, 4);

        // Forged, malformed, foreign realm.
        let forged = request(METHOD_ALLOCATE, &c.username, "cove", "not-the-password");
        assert_eq!(verdict(&gate, &forged, eve, at(t0)), Some(bad.clone()));
        let nocolon = request(METHOD_ALLOCATE, "nocolon", "cove", &c.password);
        assert_eq!(verdict(&gate, &nocolon, eve, at(t0)), Some(bad.clone()));
        let foreign = request(METHOD_ALLOCATE, &c.username, "other", &c.password);
        assert_eq!(verdict(&gate, &foreign, eve, at(t0)), Some(bad));
        assert_eq!(gate.stats().refused_bad_credentials, 3);

        // Unauthenticated requests and non-STUN datagrams are the crate's business.
        let mut probe = Message::new();
        probe
            .build(&[
                Box::new(TransactionId::new()),
                Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            ])
            .unwrap();
        assert_eq!(verdict(&gate, &probe.raw, eve, later), None);
        assert_eq!(verdict(&gate, b"not stun at all", eve, later), None);
    }

    /// A closed allocation gives up its renewal right: the expired credential no longer
    /// refreshes from that address.
    #[test]
    fn a_closed_allocation_is_no_longer_renewed_after_expiry() {
        let gate = Gate::new("cove", SECRET, PeerPolicy::default());
        let carol: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let t0 = 1_700_000_000;
        let c = turn_credentials(SECRET, "carol", Duration::from_secs(60), at(t0)).unwrap();
        let req = |method| request(method, &c.username, "cove", &c.password);
        assert_eq!(verdict(&gate, &req(METHOD_ALLOCATE), carol, at(t0)), None);
        let info = AllocationInfo::new(
            turn::allocation::five_tuple::FiveTuple {
                src_addr: carol,
                ..Default::default()
            },
            c.username.clone(),
            "127.0.0.1:5000".parse().unwrap(),
        );
        gate.closed(&info);
        assert_eq!(
            verdict(&gate, &req(METHOD_REFRESH), carol, at(c.expires_at)),
            Some(format!("401 {REASON_EXPIRED}"))
        );
    }
}
