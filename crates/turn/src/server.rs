//! The running TURN server: the `turn` crate's server on a UDP socket with the [`Gate`] in
//! front of it.
//!
//! [`Gate`]: crate::gate

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use turn::allocation::AllocationInfo;
use turn::auth::{AuthHandler, generate_auth_key};
use turn::relay::relay_static::RelayAddressGeneratorStatic;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::vnet::net::Net;
use zeroize::Zeroizing;

use crate::TurnError;
use crate::credentials::{parse_username, rest_password};
use crate::gate::{Gate, GatedConn, TurnStats};
use crate::peers::PeerPolicy;

/// The key derivation the `turn` crate's server runs for every authenticated request.
///
/// It refuses only malformed usernames: whether a credential is good (signature, expiry, the
/// allocation it belongs to) is decided before the request reaches the crate, by [`Gate`],
/// which answers refused requests itself with `401 Unauthorized`.
struct RestAuth {
    secret: Zeroizing<Vec<u8>>,
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        parse_username(username).ok_or_else(|| turn::Error::Other("bad username".into()))?;
        let password = rest_password(&self.secret, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

/// A running TURN server.
pub struct TurnServerHandle {
    server: Server,
    local_addr: SocketAddr,
    gate: Arc<Gate>,
}

impl TurnServerHandle {
    /// The UDP address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `turn:` URL clients use (with the listening address; behind NAT or when bound to
    /// `0.0.0.0`, build the URL from the public address instead).
    pub fn url(&self) -> String {
        format!("turn:{}?transport=udp", self.local_addr)
    }

    /// Counters of refused credentials and renewals after expiry.
    pub fn stats(&self) -> TurnStats {
        self.gate.stats()
    }

    /// Stops the server.
    pub async fn close(self) -> Result<(), TurnError> {
        self.server
            .close()
            .await
            .map_err(|e| TurnError::Turn(e.to_string()))
    }
}

/// Starts a TURN server on `udp_addr` (port 0 picks one) relaying only to the peers `policy`
/// permits (its own addresses are added to the refused ones). Relayed addresses are
/// allocated on the same IP as `udp_addr` (so an unspecified address is refused: give the
/// public or loopback IP, or use [`start_turn_server_with_relay_ip`]).
pub async fn start_turn_server(
    udp_addr: SocketAddr,
    realm: &str,
    shared_secret: &[u8],
    policy: PeerPolicy,
) -> Result<TurnServerHandle, TurnError> {
    if udp_addr.ip().is_unspecified() {
        return Err(TurnError::BadParameters(
            "bind a concrete IP (it is also the relay IP)",
        ));
    }
    start_turn_server_with_relay_ip(udp_addr, udp_addr.ip(), realm, shared_secret, policy).await
}

/// Starts a TURN server listening on `udp_addr` (which may be `0.0.0.0:3478`) that allocates
/// relayed addresses on `relay_ip` (the address clients can reach, e.g. the public IP) and
/// relays only to the peers `policy` permits (never to `udp_addr`'s or `relay_ip`'s own
/// address unless the policy's allow list names them).
pub async fn start_turn_server_with_relay_ip(
    udp_addr: SocketAddr,
    relay_ip: IpAddr,
    realm: &str,
    shared_secret: &[u8],
    mut policy: PeerPolicy,
) -> Result<TurnServerHandle, TurnError> {
    if relay_ip.is_unspecified() {
        return Err(TurnError::BadParameters(
            "the relay IP must be a concrete address",
        ));
    }
    if shared_secret.len() < 16 {
        return Err(TurnError::BadParameters(
            "shared secret must be at least 16 bytes",
        ));
    }
    let socket = Arc::new(UdpSocket::bind(udp_addr).await?);
    let local_addr = socket.local_addr()?;
    policy.refuse_own(relay_ip);
    if !udp_addr.ip().is_unspecified() {
        policy.refuse_own(udp_addr.ip());
    }
    let gate = Arc::new(Gate::new(realm, shared_secret, policy));
    let conn = Arc::new(GatedConn::new(socket, Arc::clone(&gate)));
    // Closed allocations are forgotten by the gate; the task ends with the server.
    let (closed_tx, mut closed_rx) = mpsc::channel::<AllocationInfo>(64);
    let closed_gate = Arc::downgrade(&gate);
    tokio::spawn(async move {
        while let Some(info) = closed_rx.recv().await {
            let Some(gate) = closed_gate.upgrade() else {
                break;
            };
            gate.closed(&info);
        }
    });
    // Relayed sockets bind on the listening IP and are announced as `relay_ip`.
    let bind_ip = udp_addr.ip();
    let server = Server::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn,
            relay_addr_generator: Box::new(RelayAddressGeneratorStatic {
                relay_address: relay_ip,
                address: bind_ip.to_string(),
                net: Arc::new(Net::new(None)),
            }),
        }],
        realm: realm.to_owned(),
        auth_handler: Arc::new(RestAuth {
            secret: Zeroizing::new(shared_secret.to_vec()),
        }),
        channel_bind_timeout: Duration::from_secs(0),
        alloc_close_notify: Some(closed_tx),
    })
    .await
    .map_err(|e| TurnError::Turn(e.to_string()))?;
    Ok(TurnServerHandle {
        server,
        local_addr,
        gate,
    })
}
