//! Which peers an allocation may reach, and how many allocations a credential and a user may
//! hold.
//!
//! Without a filter a TURN server is an open UDP relay into its own network: a member could
//! send datagrams to the relay host's loopback services or its private LAN. [`PeerPolicy`]
//! refuses, for `CreatePermission` and `ChannelBind` (the only ways to open a path to a peer:
//! `Send` indications and channel data need one of them first), every peer address that is
//! loopback, private (RFC 1918, IPv6 unique-local), link-local, carrier-grade NAT shared
//! space, multicast, broadcast, unspecified or reserved; IPv4-mapped and NAT64 IPv6 forms are
//! judged by the IPv4 address inside. The relay's **own** addresses are peers only at the
//! ports of its current allocations (two clients that both relay through this server reach
//! each other that way), never at any other port of the relay host: a permission for the
//! own IP is granted, but a `ChannelBind` or `Send` to another port is refused. An allow
//! list (`IpRange`s) overrides all of it, for tests and LAN deployments.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// Default cap of allocations one credential may hold at once.
pub const DEFAULT_MAX_ALLOCATIONS_PER_CREDENTIAL: usize = 8;
/// Default cap of allocations all credentials of one user may hold at once.
pub const DEFAULT_MAX_ALLOCATIONS_PER_USER: usize = 32;

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `::1/128`; a bare address is
/// a single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

/// Why an [`IpRange`] did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an IP range (expected ADDRESS or ADDRESS/PREFIX, e.g. 127.0.0.0/8): {0}")]
pub struct BadIpRange(String);

impl IpRange {
    /// The range of `addr`'s first `prefix` bits (`None` if `prefix` is longer than the
    /// address).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpRange { addr, prefix })
    }

    /// Whether `ip` is in the range (IPv4 and IPv6 never match each other; use the
    /// canonical form, see [`canonical`]).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl FromStr for IpRange {
    type Err = BadIpRange;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadIpRange(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let prefix = match prefix {
            Some(p) => p.trim().parse().map_err(|_| bad())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        IpRange::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a.get(..full) != b.get(..full) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(full), b.get(full)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible or NAT64
/// (`64:ff9b::a.b.c.d`) IPv6 address; any other address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let o = v6.octets();
            let nat64 = o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0];
            let compatible = o[..12] == [0; 12] && !v6.is_loopback() && !v6.is_unspecified();
            if nat64 || compatible {
                IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            } else {
                ip
            }
        }
        v4 => v4,
    }
}

/// Whether `ip` (canonical) is an address a relay must not send to on a member's behalf.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0 // "this network"
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, shared (CGNAT)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // fc00::/7, unique local
                || (first & 0xffc0) == 0xfe80 // fe80::/10, link-local
                || (first & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
        }
    }
}

/// Which peers the TURN server relays to, and the allocation caps.
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    allow: Vec<IpRange>,
    own: Vec<IpAddr>,
    /// Most allocations one credential (username) holds at once.
    pub max_allocations_per_credential: usize,
    /// Most allocations one user (the credential's user part up to its first `/`) holds at
    /// once, over all its credentials.
    pub max_allocations_per_user: usize,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        PeerPolicy {
            allow: Vec::new(),
            own: Vec::new(),
            max_allocations_per_credential: DEFAULT_MAX_ALLOCATIONS_PER_CREDENTIAL,
            max_allocations_per_user: DEFAULT_MAX_ALLOCATIONS_PER_USER,
        }
    }
}

impl PeerPolicy {
    /// The default policy with `ranges` allowed whatever they are (loopback for tests, a LAN
    /// for a LAN deployment).
    pub fn allowing(ranges: impl IntoIterator<Item = IpRange>) -> Self {
        PeerPolicy {
            allow: ranges.into_iter().collect(),
            ..PeerPolicy::default()
        }
    }

    /// Marks `ip` as one of the server's own addresses (see [`Peer::Own`]; the server adds
    /// its listening and relayed addresses itself).
    pub fn refuse_own(&mut self, ip: IpAddr) {
        let ip = canonical(ip);
        if !self.own.contains(&ip) {
            self.own.push(ip);
        }
    }

    /// What the server may do for a peer at `ip`.
    pub fn judge(&self, ip: IpAddr) -> Peer {
        let ip = canonical(ip);
        if self.allow.iter().any(|r| r.contains(ip)) {
            Peer::Allowed
        } else if self.own.contains(&ip) {
            Peer::Own
        } else if is_internal(ip) {
            Peer::Forbidden
        } else {
            Peer::Allowed
        }
    }
}

/// The verdict on a peer address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Any port of it.
    Allowed,
    /// One of the server's own addresses: only at the ports of its current allocations.
    Own,
    /// Never.
    Forbidden,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_permitted() {
        let mut p = PeerPolicy::default();
        p.refuse_own(ip("203.0.113.9"));
        assert_eq!(p.judge(ip("203.0.113.9")), Peer::Own);
        assert_eq!(p.judge(ip("::ffff:203.0.113.9")), Peer::Own);
        for refused in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::5",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.1.1",
            "64:ff9b::a00:1",
        ] {
            assert_eq!(p.judge(ip(refused)), Peer::Forbidden, "{refused}");
        }
        for permitted in [
            "1.1.1.1",
            "203.0.113.7",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert_eq!(p.judge(ip(permitted)), Peer::Allowed, "{permitted}");
        }
    }

    #[test]
    fn the_allow_list_overrides_everything() {
        let mut p = PeerPolicy::allowing(["127.0.0.0/8".parse().unwrap()]);
        p.refuse_own(ip("127.0.0.1"));
        assert_eq!(p.judge(ip("127.0.0.1")), Peer::Allowed);
        assert_eq!(p.judge(ip("::ffff:127.0.0.2")), Peer::Allowed);
        assert_eq!(p.judge(ip("10.0.0.1")), Peer::Forbidden);
        assert_eq!(
            p.judge(ip("::1")),
            Peer::Forbidden,
            "IPv6 loopback is another range"
        );
    }

    #[test]
    fn ranges_parse_and_match_by_prefix() {
        let r: IpRange = "10.0.0.0/8".parse().unwrap();
        assert!(r.contains(ip("10.255.0.1")));
        assert!(!r.contains(ip("11.0.0.1")));
        let r: IpRange = "172.16.0.0/12".parse().unwrap();
        assert!(r.contains(ip("172.31.0.1")));
        assert!(!r.contains(ip("172.32.0.1")));
        let host: IpRange = "::1".parse().unwrap();
        assert_eq!(host.to_string(), "::1/128");
        assert!(host.contains(ip("::1")));
        for bad in ["", "10.0.0.0/33", "::/129", "ten/8", "1.2.3.4/x"] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
    }
}
