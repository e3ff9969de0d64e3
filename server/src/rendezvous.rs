//! The link rendezvous (issue 9, item 4): an existing device opens a slot and shows its
//! number (the code's first part, the "nameplate"); a new machine joins that slot with the
//! number; the relay then forwards opaque messages between the two (the SPAKE2 handshake,
//! its confirmations and the encrypted channel of `cove_core::link`). The relay learns
//! nothing from them; what it can do is limited here:
//!
//! - a slot takes **one joiner, ever**: a second join is refused (`Taken`), and a slot is not
//!   reused after its host closes it, so whoever guesses the code gets one try per slot;
//! - a slot lives at most [`SLOT_LIFETIME_MS`] (5 minutes, configurable) from its opening;
//!   for [`TOMBSTONE_MS`] after it expired, a join of its number is told `Expired` rather
//!   than `NoSuchSlot`;
//! - bounded everything: slots in all, one open slot per host connection, messages per slot
//!   and bytes per message.
//!
//! Sans-IO: connections are opaque ids `C`, time and randomness come in as arguments; the
//! session layer sends what the results name.

use std::collections::HashMap;
use std::hash::Hash;

use rand::Rng;

/// How long a slot may be joined and used, from its opening.
pub const SLOT_LIFETIME_MS: u64 = 5 * 60 * 1000;
/// How long an expired slot's number answers `Expired` to a join.
pub const TOMBSTONE_MS: u64 = 10 * 60 * 1000;
/// Most slots open at once on a relay.
pub const MAX_SLOTS: usize = 10_000;
/// Most messages forwarded through one slot (both directions together).
pub const MAX_MESSAGES_PER_SLOT: u32 = 64;
/// Largest message forwarded (a channel message of `cove_core::link` with its tag).
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024 + 64;
/// Nameplates are drawn from 1..=999 while few slots are open (short codes), from
/// 1..=999_999 otherwise.
const SHORT_NAMEPLATES: u32 = 999;
const LONG_NAMEPLATES: u32 = 999_999;

/// Why a rendezvous request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RendezvousError {
    /// No open slot has this number (never opened, closed, or swept after expiry).
    #[error("no device is waiting with this code (check it, or start again on the other device)")]
    NoSuchSlot,
    /// Another machine joined this slot already.
    #[error("another device already used this code")]
    Taken,
    /// The slot is older than [`SLOT_LIFETIME_MS`].
    #[error("the code expired (codes last 5 minutes)")]
    Expired,
    /// This connection has no joined slot to send through.
    #[error("not linked: open or join a code first")]
    NotLinked,
    /// This connection already has a slot.
    #[error("this connection already has a link code open")]
    AlreadyOpen,
    /// The relay has too many open slots.
    #[error("the relay is busy linking other devices; try again shortly")]
    Busy,
    /// More than [`MAX_MESSAGES_PER_SLOT`] messages.
    #[error("too many link messages")]
    TooMany,
    /// A message over [`MAX_MESSAGE_BYTES`].
    #[error("link message too large")]
    TooLarge,
}

struct Slot<C> {
    host: C,
    joiner: Option<C>,
    expires_ms: u64,
    messages: u32,
}

/// The open slots of a relay.
pub struct Rendezvous<C> {
    slots: HashMap<u32, Slot<C>>,
    /// Each connection's slot (host or joiner).
    of: HashMap<C, u32>,
    /// Numbers of expired slots, until when a join of them is told `Expired`.
    expired: HashMap<u32, u64>,
    /// How long a slot lives from its opening.
    lifetime_ms: u64,
}

impl<C> Default for Rendezvous<C> {
    fn default() -> Self {
        Self::with_lifetime(SLOT_LIFETIME_MS)
    }
}

impl<C> Rendezvous<C> {
    /// No slots; each slot will live `lifetime_ms` from its opening.
    pub fn with_lifetime(lifetime_ms: u64) -> Self {
        Rendezvous {
            slots: HashMap::new(),
            of: HashMap::new(),
            expired: HashMap::new(),
            lifetime_ms,
        }
    }
}

impl<C: Copy + Eq + Hash> Rendezvous<C> {
    /// Opens a slot for `host`; returns its number.
    pub fn open<R: Rng>(
        &mut self,
        host: C,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<u32, RendezvousError> {
        self.sweep(now_ms);
        if self.of.contains_key(&host) {
            return Err(RendezvousError::AlreadyOpen);
        }
        if self.slots.len() >= MAX_SLOTS {
            return Err(RendezvousError::Busy);
        }
        let top = if self.slots.len() < (SHORT_NAMEPLATES / 2) as usize {
            SHORT_NAMEPLATES
        } else {
            LONG_NAMEPLATES
        };
        // At most half the range is taken, so a free number comes quickly; bounded anyway.
        let nameplate = (0..64)
            .map(|_| rng.gen_range(1..=top))
            .find(|n| !self.slots.contains_key(n))
            .ok_or(RendezvousError::Busy)?;
        self.expired.remove(&nameplate);
        self.slots.insert(
            nameplate,
            Slot {
                host,
                joiner: None,
                expires_ms: now_ms.saturating_add(self.lifetime_ms),
                messages: 0,
            },
        );
        self.of.insert(host, nameplate);
        Ok(nameplate)
    }

    /// `joiner` joins slot `nameplate`; returns the host to tell.
    pub fn join(&mut self, joiner: C, nameplate: u32, now_ms: u64) -> Result<C, RendezvousError> {
        if self.of.contains_key(&joiner) {
            return Err(RendezvousError::AlreadyOpen);
        }
        let Some(slot) = self.slots.get_mut(&nameplate) else {
            return match self.expired.get(&nameplate) {
                Some(until) if now_ms < *until => Err(RendezvousError::Expired),
                _ => Err(RendezvousError::NoSuchSlot),
            };
        };
        if now_ms >= slot.expires_ms {
            return Err(RendezvousError::Expired);
        }
        if slot.joiner.is_some() {
            return Err(RendezvousError::Taken);
        }
        slot.joiner = Some(joiner);
        let host = slot.host;
        self.of.insert(joiner, nameplate);
        Ok(host)
    }

    /// `from` sends a message of `len` bytes; returns the peer to forward it to.
    pub fn send(&mut self, from: C, len: usize, now_ms: u64) -> Result<C, RendezvousError> {
        if len > MAX_MESSAGE_BYTES {
            return Err(RendezvousError::TooLarge);
        }
        let nameplate = *self.of.get(&from).ok_or(RendezvousError::NotLinked)?;
        let slot = self
            .slots
            .get_mut(&nameplate)
            .ok_or(RendezvousError::NotLinked)?;
        if now_ms >= slot.expires_ms {
            return Err(RendezvousError::Expired);
        }
        let peer = if slot.host == from {
            slot.joiner.ok_or(RendezvousError::NotLinked)?
        } else {
            slot.host
        };
        if slot.messages >= MAX_MESSAGES_PER_SLOT {
            return Err(RendezvousError::TooMany);
        }
        slot.messages += 1;
        Ok(peer)
    }

    /// `conn` closes its slot (done, failed, or disconnected); returns the peer to tell,
    /// if one had joined. The slot's number is free again, but nobody can join the closed
    /// slot: a later join of the number finds a new slot or none.
    pub fn close(&mut self, conn: C) -> Option<C> {
        let nameplate = self.of.remove(&conn)?;
        let slot = self.slots.remove(&nameplate)?;
        let peer = if slot.host == conn {
            slot.joiner
        } else {
            Some(slot.host)
        };
        if let Some(p) = peer {
            self.of.remove(&p);
        }
        peer
    }

    /// Drops expired slots; returns the connections to tell.
    pub fn sweep(&mut self, now_ms: u64) -> Vec<C> {
        let expired: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| now_ms >= s.expires_ms)
            .map(|(n, _)| *n)
            .collect();
        let mut tell = Vec::new();
        self.expired.retain(|_, until| now_ms < *until);
        for n in expired {
            if self.expired.len() < MAX_SLOTS {
                self.expired.insert(n, now_ms.saturating_add(TOMBSTONE_MS));
            }
            if let Some(slot) = self.slots.remove(&n) {
                self.of.remove(&slot.host);
                tell.push(slot.host);
                if let Some(j) = slot.joiner {
                    self.of.remove(&j);
                    tell.push(j);
                }
            }
        }
        tell
    }

    /// Open slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no slot is open.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn host_and_joiner_reach_each_other_and_nobody_else() {
        let mut r = Rendezvous::default();
        let mut rng = rng();
        let n = r.open(1u64, 0, &mut rng).unwrap();
        assert!((1..=SHORT_NAMEPLATES).contains(&n));
        // Before a joiner, the host has nobody to talk to.
        assert_eq!(r.send(1, 33, 10), Err(RendezvousError::NotLinked));
        assert_eq!(r.join(2, n, 10), Ok(1));
        assert_eq!(r.send(1, 33, 20), Ok(2));
        assert_eq!(r.send(2, 33, 20), Ok(1));
        // A third connection is not part of it.
        assert_eq!(r.send(3, 33, 20), Err(RendezvousError::NotLinked));
        assert_eq!(r.join(3, n, 20), Err(RendezvousError::Taken));
        assert_eq!(r.close(1), Some(2));
        assert_eq!(r.send(2, 33, 30), Err(RendezvousError::NotLinked));
        assert!(r.is_empty());
    }

    #[test]
    fn a_slot_takes_one_joiner_ever() {
        let mut r = Rendezvous::default();
        let n = r.open(1u64, 0, &mut rng()).unwrap();
        r.join(2, n, 1).unwrap();
        assert_eq!(r.join(3, n, 2), Err(RendezvousError::Taken));
        // The joiner leaving does not free the slot for another guess.
        assert_eq!(r.close(2), Some(1));
        assert_eq!(r.join(3, n, 3), Err(RendezvousError::NoSuchSlot));
        assert_eq!(r.send(1, 1, 3), Err(RendezvousError::NotLinked));
    }

    #[test]
    fn slots_expire_after_five_minutes() {
        let mut r = Rendezvous::default();
        let n = r.open(1u64, 1_000, &mut rng()).unwrap();
        assert_eq!(
            r.join(2, n, 1_000 + SLOT_LIFETIME_MS),
            Err(RendezvousError::Expired)
        );
        let m = r.open(3u64, 2_000, &mut rng()).unwrap();
        r.join(4, m, 2_001).unwrap();
        assert_eq!(
            r.send(4, 1, 2_000 + SLOT_LIFETIME_MS),
            Err(RendezvousError::Expired)
        );
        let mut told = r.sweep(2_000 + SLOT_LIFETIME_MS);
        told.sort_unstable();
        assert_eq!(told, [1, 3, 4]);
        assert!(r.is_empty());
        // A join after the sweep still hears that the code expired, for a while.
        assert_eq!(
            r.join(5, m, 2_000 + SLOT_LIFETIME_MS),
            Err(RendezvousError::Expired)
        );
        let later = 2_000 + SLOT_LIFETIME_MS + TOMBSTONE_MS;
        r.sweep(later);
        assert_eq!(r.join(5, m, later), Err(RendezvousError::NoSuchSlot));
        // The lifetime is configurable.
        let mut short = Rendezvous::with_lifetime(10);
        let n = short.open(1u64, 0, &mut rng()).unwrap();
        assert_eq!(short.join(2, n, 10), Err(RendezvousError::Expired));
    }

    #[test]
    fn limits_hold() {
        let mut r = Rendezvous::default();
        let mut rng = rng();
        let n = r.open(1u64, 0, &mut rng).unwrap();
        assert_eq!(r.open(1, 0, &mut rng), Err(RendezvousError::AlreadyOpen));
        r.join(2, n, 0).unwrap();
        assert_eq!(r.join(2, n, 0), Err(RendezvousError::AlreadyOpen));
        assert_eq!(
            r.send(1, MAX_MESSAGE_BYTES + 1, 0),
            Err(RendezvousError::TooLarge)
        );
        for i in 0..MAX_MESSAGES_PER_SLOT {
            r.send(if i % 2 == 0 { 1 } else { 2 }, 100, 0).unwrap();
        }
        assert_eq!(r.send(1, 100, 0), Err(RendezvousError::TooMany));
        // Many hosts: numbers stay distinct and the total is capped.
        let mut r = Rendezvous::default();
        let mut seen = std::collections::HashSet::new();
        for host in 0..MAX_SLOTS as u64 {
            assert!(seen.insert(r.open(host, 0, &mut rng).unwrap()));
        }
        assert_eq!(
            r.open(MAX_SLOTS as u64, 0, &mut rng),
            Err(RendezvousError::Busy)
        );
        assert!(seen.iter().all(|n| (1..=LONG_NAMEPLATES).contains(n)));
    }
}
