//! Per-address admission: how many connections one client address holds at once, and how
//! fast it may register users and devices. Both count by [`address_key`]: an IPv4 address,
//! or the /64 prefix of an IPv6 address (one host usually owns a whole /64, so counting
//! single IPv6 addresses would bound nothing).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::hub::TokenBucket;

/// Addresses whose registration buckets are tracked at once; past it, full buckets are
/// forgotten (a full bucket is the same as none), and if none is full a registration from a
/// new address is refused until one is.
const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// What a client address counts as: IPv4 (also when mapped into IPv6) as itself, IPv6 by
/// its /64 prefix.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// Open connections per client address, capped.
pub(crate) struct ConnectionsPerAddress {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
}

/// One admitted connection; dropping it gives its address's slot back.
pub(crate) struct AddressSlot {
    owner: Arc<ConnectionsPerAddress>,
    key: IpAddr,
}

impl ConnectionsPerAddress {
    /// A counter allowing `cap` connections per address.
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(ConnectionsPerAddress {
            cap,
            open: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
        })
    }

    /// A slot for one more connection from `ip`, or `None` if its address has `cap` open.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut open = self.lock();
        let count = open.entry(key).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(AddressSlot {
            owner: Arc::clone(self),
            key,
        })
    }

    /// Connections open now, from every address.
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every operation leaves the map consistent (one insert or update), so a panic
        // elsewhere while holding the lock does not make it wrong.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.owner.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
        self.owner.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Registrations (`Register` and `RegisterDevice`) per client address: a token bucket each.
pub(crate) struct RegistrationsPerAddress {
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
    per_second: f64,
    burst: f64,
}

impl RegistrationsPerAddress {
    /// `per_minute` sustained registrations per address, `burst` at once.
    pub(crate) fn new(per_minute: u32, burst: u32) -> Self {
        RegistrationsPerAddress {
            buckets: Mutex::new(HashMap::new()),
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst),
        }
    }

    /// Takes one registration token of `ip`'s address; on refusal, the milliseconds until
    /// one is due.
    pub(crate) fn take(&self, ip: IpAddr, now: Instant) -> Result<(), u32> {
        let key = address_key(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(&key) {
            return bucket.take(now);
        }
        if buckets.len() >= MAX_TRACKED_ADDRESSES {
            buckets.retain(|_, bucket| !bucket.is_full(now));
            if buckets.len() >= MAX_TRACKED_ADDRESSES {
                // Every tracked address registered recently: the oldest bucket refills
                // within a minute or so at the default rate.
                let interval = Duration::from_secs_f64((1.0 / self.per_second).min(3600.0));
                return Err(u32::try_from(interval.as_millis()).unwrap_or(u32::MAX));
            }
        }
        let mut bucket = TokenBucket::new(self.per_second, self.burst, now);
        let taken = bucket.take(now);
        buckets.insert(key, bucket);
        taken
    }
}

/// Token buckets by key (a user name, an address), at most [`MAX_TRACKED_ADDRESSES`] of
/// them: full buckets are forgotten when the table is full, and a key that finds no room
/// is refused for one interval.
pub(crate) struct KeyedBuckets<K> {
    buckets: Mutex<HashMap<K, TokenBucket>>,
    per_second: f64,
    burst: f64,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedBuckets<K> {
    pub(crate) fn new(per_minute: u32, burst: u32) -> Self {
        KeyedBuckets {
            buckets: Mutex::new(HashMap::new()),
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst),
        }
    }

    /// Takes a token of `key`'s bucket, or says in how many ms to retry.
    pub(crate) fn take(&self, key: &K, now: Instant) -> Result<(), u32> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(key) {
            return bucket.take(now);
        }
        if buckets.len() >= MAX_TRACKED_ADDRESSES {
            buckets.retain(|_, bucket| !bucket.is_full(now));
            if buckets.len() >= MAX_TRACKED_ADDRESSES {
                let interval = Duration::from_secs_f64((1.0 / self.per_second).min(3600.0));
                return Err(u32::try_from(interval.as_millis()).unwrap_or(u32::MAX));
            }
        }
        let mut bucket = TokenBucket::new(self.per_second, self.burst, now);
        let taken = bucket.take(now);
        buckets.insert(key.clone(), bucket);
        taken
    }
}

/// Password-login attempts (`AccountLoginStart`): a bucket per user name (known or not, so
/// probing cannot tell them apart) and one per client address.
pub(crate) struct LoginLimits {
    pub(crate) users: KeyedBuckets<cove_wire::UserName>,
    pub(crate) addresses: KeyedBuckets<IpAddr>,
}

impl LoginLimits {
    /// Takes a token of the address's bucket, then of the user's; the error names which
    /// refused and when to retry.
    pub(crate) fn take(
        &self,
        user: &cove_wire::UserName,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(), (&'static str, u32)> {
        self.addresses
            .take(&address_key(ip), now)
            .map_err(|retry| ("too many login attempts from this address", retry))?;
        self.users
            .take(user, now)
            .map_err(|retry| ("too many login attempts for this user", retry))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_count_as_ipv4_or_ipv6_slash_64() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        assert_eq!(address_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_connection_slot_is_given_back_on_drop() {
        let per = ConnectionsPerAddress::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = per.admit(ip).unwrap();
        let _second = per.admit(ip).unwrap();
        assert!(per.admit(ip).is_none());
        assert!(per.admit("192.0.2.2".parse().unwrap()).is_some());
        assert_eq!(per.total(), 2);
        drop(first);
        assert_eq!(per.total(), 1);
        assert!(per.admit(ip).is_some());
    }
}
