//! Post quotas: token buckets of posts and payload bytes per (sender device, group) and per
//! group, so that one member cannot flood a group (or a device it added to one), and a
//! group cannot flood the relay.
//!
//! Time is an input (the post's `now_ms`); the state lives with the relay's post writer,
//! which sees every post in order, so it needs no lock. A post is checked before the store
//! ([`Quotas::admit`]) and settled after it ([`Quotas::settle`]):
//! - the sender's buckets are taken at admission and given back if the store refused the
//!   post (not a member, stale epoch, a repeated post...), so only stored posts count and a
//!   refusal by quota is exact;
//! - the group's buckets are only checked at admission and charged once the post is
//!   stored, so posts the store refuses (e.g. a removed member's) never use up the group's
//!   quota; posts admitted in the same batch may take the group's buckets below zero (by at
//!   most one batch), which later posts wait off;
//! - a commit that removes devices is never refused by a quota (it is how members get rid
//!   of a flooder, and each one shrinks the group, so there can be no more of them than
//!   members); it is charged like any post once stored, and may take buckets below zero.
//!
//! Memory: a bucket that has refilled is the same as no bucket, so [`Quotas::sweep`] drops
//! those, at most once a minute of post time, and whenever more than
//! [`MAX_TRACKED_BUCKETS`] (and twice what the last sweep left) are tracked. What stays is
//! the buckets still refilling, i.e. of devices and groups that posted in the last minutes.

use std::collections::HashMap;

use cove_wire::{DeviceId, ErrorCode, ErrorReply, GroupId, PostKind};

use crate::store::NewPost;

/// Bucket pairs tracked before a sweep runs regardless of the time since the last one.
pub const MAX_TRACKED_BUCKETS: usize = 100_000;
/// Post time between two sweeps of refilled buckets, in milliseconds.
pub const SWEEP_INTERVAL_MS: u64 = 60_000;

/// The quota parameters (the `[limits]` keys of the same names).
#[derive(Clone, Copy, Debug)]
pub struct QuotaLimits {
    /// Sustained posts per minute by one device to one group.
    pub sender_posts_per_minute: u32,
    /// Burst of posts by one device to one group.
    pub sender_post_burst: u32,
    /// Sustained payload bytes per minute by one device to one group.
    pub sender_bytes_per_minute: u64,
    /// Burst of payload bytes by one device to one group.
    pub sender_byte_burst: u64,
    /// Sustained posts per minute to one group.
    pub group_posts_per_minute: u32,
    /// Burst of posts to one group.
    pub group_post_burst: u32,
    /// Sustained payload bytes per minute to one group.
    pub group_bytes_per_minute: u64,
    /// Burst of payload bytes to one group.
    pub group_byte_burst: u64,
}

/// What [`Quotas::admit`] let through, to hand back to [`Quotas::settle`] with the
/// store's verdict.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    sender: DeviceId,
    group: GroupId,
    /// Payload bytes the post counts for.
    bytes: u64,
    /// The sender's buckets were taken at admission (false for an exempt commit).
    taken: bool,
}

/// The quota state: one pair of buckets (posts, bytes) per sender and group and per group.
pub struct Quotas {
    limits: QuotaLimits,
    senders: HashMap<(DeviceId, GroupId), Pair>,
    groups: HashMap<GroupId, Pair>,
    /// Post time of the last sweep.
    swept_ms: u64,
    /// Bucket pairs left by the last sweep: an early sweep waits until twice as many are
    /// tracked, so sweeps cost O(1) per post however many buckets are busy.
    left_by_sweep: usize,
}

impl Quotas {
    /// No buckets yet (every bucket starts full).
    pub fn new(limits: QuotaLimits) -> Self {
        Quotas {
            limits,
            senders: HashMap::new(),
            groups: HashMap::new(),
            swept_ms: 0,
            left_by_sweep: 0,
        }
    }

    /// Checks a post against its sender's and its group's quotas before the store sees it.
    /// Refused: `RateLimited` with `retry_after_ms` (when the buckets will allow it), and
    /// the post must not be stored.
    pub fn admit(&mut self, post: &NewPost) -> Result<Ticket, ErrorReply> {
        let now = post.now_ms;
        self.sweep(now);
        let bytes = post_bytes(post);
        let mut ticket = Ticket {
            sender: post.sender,
            group: post.group,
            bytes,
            taken: false,
        };
        if let PostKind::Commit { removed, .. } = &post.kind
            && !removed.is_empty()
        {
            return Ok(ticket);
        }
        let (sender_rates, group_rates) = (self.sender_rates(), self.group_rates());
        let group_wait = match self.groups.get_mut(&post.group) {
            Some(pair) => pair.wait(&group_rates, bytes, now),
            None => None,
        };
        let sender = self
            .senders
            .entry((post.sender, post.group))
            .or_insert_with(|| Pair::full(&sender_rates, now));
        let sender_wait = sender.wait(&sender_rates, bytes, now);
        let refusal = match (sender_wait, group_wait) {
            (None, None) => None,
            (Some(ms), None) => Some(("too many posts by this device to this group", ms)),
            (sender_ms, Some(ms)) => Some((
                "too many posts to this group",
                ms.max(sender_ms.unwrap_or(0)),
            )),
        };
        if let Some((what, ms)) = refusal {
            let mut e = ErrorReply::new(ErrorCode::RateLimited, what);
            e.retry_after_ms = Some(ms);
            return Err(e);
        }
        sender.charge(bytes);
        ticket.taken = true;
        Ok(ticket)
    }

    /// Settles an admitted post once the store has answered: `stored` posts are charged to
    /// their group (and, if exempt at admission, to their sender); the others give back what
    /// admission took.
    pub fn settle(&mut self, ticket: Ticket, stored: bool, now_ms: u64) {
        let (sender_rates, group_rates) = (self.sender_rates(), self.group_rates());
        let sender = self
            .senders
            .entry((ticket.sender, ticket.group))
            .or_insert_with(|| Pair::full(&sender_rates, now_ms));
        match (stored, ticket.taken) {
            (true, true) => {}
            (true, false) => {
                sender.refill(&sender_rates, now_ms);
                sender.charge(ticket.bytes);
            }
            (false, true) => sender.refund(&sender_rates, ticket.bytes),
            (false, false) => return,
        }
        if stored {
            let group = self
                .groups
                .entry(ticket.group)
                .or_insert_with(|| Pair::full(&group_rates, now_ms));
            group.refill(&group_rates, now_ms);
            group.charge(ticket.bytes);
        }
    }

    /// Drops the buckets that have refilled by `now_ms` (they limit nothing), at most once
    /// per [`SWEEP_INTERVAL_MS`] of post time unless more than [`MAX_TRACKED_BUCKETS`] (and
    /// more than twice what the last sweep left) are tracked.
    pub fn sweep(&mut self, now_ms: u64) {
        let due = now_ms.saturating_sub(self.swept_ms) >= SWEEP_INTERVAL_MS;
        let crowded =
            self.tracked() > MAX_TRACKED_BUCKETS.max(self.left_by_sweep.saturating_mul(2));
        if !due && !crowded {
            return;
        }
        self.swept_ms = now_ms;
        let (sender_rates, group_rates) = (self.sender_rates(), self.group_rates());
        self.senders
            .retain(|_, pair| !pair.is_full(&sender_rates, now_ms));
        self.groups
            .retain(|_, pair| !pair.is_full(&group_rates, now_ms));
        self.left_by_sweep = self.tracked();
    }

    /// How many bucket pairs are tracked (senders and groups).
    pub fn tracked(&self) -> usize {
        self.senders.len().saturating_add(self.groups.len())
    }

    fn sender_rates(&self) -> Rates {
        Rates::new(
            self.limits.sender_posts_per_minute.into(),
            self.limits.sender_post_burst.into(),
            self.limits.sender_bytes_per_minute,
            self.limits.sender_byte_burst,
        )
    }

    fn group_rates(&self) -> Rates {
        Rates::new(
            self.limits.group_posts_per_minute.into(),
            self.limits.group_post_burst.into(),
            self.limits.group_bytes_per_minute,
            self.limits.group_byte_burst,
        )
    }
}

/// The payload bytes a post counts for: its payload and, for a commit, its Welcome.
fn post_bytes(post: &NewPost) -> u64 {
    let welcome = match &post.kind {
        PostKind::Commit {
            welcome: Some(w), ..
        } => w.as_bytes().len(),
        _ => 0,
    };
    u64::try_from(post.payload.len().saturating_add(welcome)).unwrap_or(u64::MAX)
}

/// Refill rates (per millisecond) and bursts of a pair of buckets.
struct Rates {
    posts_per_ms: f64,
    post_burst: f64,
    bytes_per_ms: f64,
    byte_burst: f64,
}

impl Rates {
    fn new(posts_per_minute: u64, post_burst: u64, bytes_per_minute: u64, byte_burst: u64) -> Self {
        Rates {
            posts_per_ms: (posts_per_minute as f64 / 60_000.0).max(f64::MIN_POSITIVE),
            post_burst: post_burst as f64,
            bytes_per_ms: (bytes_per_minute as f64 / 60_000.0).max(f64::MIN_POSITIVE),
            byte_burst: byte_burst as f64,
        }
    }
}

/// A posts bucket and a bytes bucket, refilled together. Tokens may go below zero (a post
/// charged after the store, see the module doc), never below minus the burst.
struct Pair {
    posts: f64,
    bytes: f64,
    /// Post time of the last refill.
    last_ms: u64,
}

impl Pair {
    fn full(rates: &Rates, now_ms: u64) -> Self {
        Pair {
            posts: rates.post_burst,
            bytes: rates.byte_burst,
            last_ms: now_ms,
        }
    }

    /// Adds what `now_ms` refills (the clock never runs backwards for a bucket).
    fn refill(&mut self, rates: &Rates, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.last_ms = self.last_ms.max(now_ms);
        self.posts = (self.posts + elapsed * rates.posts_per_ms).min(rates.post_burst);
        self.bytes = (self.bytes + elapsed * rates.bytes_per_ms).min(rates.byte_burst);
    }

    /// After a refill: `None` if a post of `bytes` fits, else the milliseconds until it
    /// does.
    fn wait(&mut self, rates: &Rates, bytes: u64, now_ms: u64) -> Option<u32> {
        self.refill(rates, now_ms);
        let bytes = (bytes as f64).min(rates.byte_burst);
        let posts_short = (1.0 - self.posts).max(0.0);
        let bytes_short = (bytes - self.bytes).max(0.0);
        if posts_short == 0.0 && bytes_short == 0.0 {
            return None;
        }
        let ms = (posts_short / rates.posts_per_ms)
            .max(bytes_short / rates.bytes_per_ms)
            .ceil()
            .clamp(1.0, 3_600_000.0);
        // In range by the clamp (1 ms to an hour).
        Some(ms as u32)
    }

    fn charge(&mut self, bytes: u64) {
        self.posts -= 1.0;
        self.bytes -= bytes as f64;
    }

    fn refund(&mut self, rates: &Rates, bytes: u64) {
        self.posts = (self.posts + 1.0).min(rates.post_burst);
        self.bytes = (self.bytes + bytes as f64).min(rates.byte_burst);
    }

    fn is_full(&mut self, rates: &Rates, now_ms: u64) -> bool {
        self.refill(rates, now_ms);
        self.posts >= rates.post_burst && self.bytes >= rates.byte_burst
    }
}

#[cfg(test)]
mod tests {
    use cove_wire::{Epoch, Payload};

    use super::*;

    fn limits() -> QuotaLimits {
        QuotaLimits {
            sender_posts_per_minute: 60,
            sender_post_burst: 3,
            sender_bytes_per_minute: 60_000,
            sender_byte_burst: 10_000,
            group_posts_per_minute: 60,
            group_post_burst: 5,
            group_bytes_per_minute: 600_000,
            group_byte_burst: 100_000,
        }
    }

    fn post(sender: u64, group: u8, len: usize, now_ms: u64) -> NewPost {
        NewPost {
            group: GroupId([group; 16]),
            sender: DeviceId(sender),
            epoch: Epoch(0),
            kind: PostKind::Application,
            payload: vec![0; len],
            now_ms,
            public_state: None,
        }
    }

    /// Admits and settles as stored; the refusal's code and wait if refused.
    fn send(q: &mut Quotas, p: &NewPost) -> Result<(), (ErrorCode, Option<u32>)> {
        let t = q.admit(p).map_err(|e| (e.code, e.retry_after_ms))?;
        q.settle(t, true, p.now_ms);
        Ok(())
    }

    #[test]
    fn a_sender_is_refused_after_its_burst_and_waits_one_refill() {
        let mut q = Quotas::new(limits());
        for _ in 0..3 {
            assert_eq!(send(&mut q, &post(1, 1, 10, 1_000)), Ok(()));
        }
        // One post a second: the next token is due in 1000 ms.
        assert_eq!(
            send(&mut q, &post(1, 1, 10, 1_000)),
            Err((ErrorCode::RateLimited, Some(1_000)))
        );
        // Another sender of the same group, and the same sender in another group, pass.
        assert_eq!(send(&mut q, &post(2, 1, 10, 1_000)), Ok(()));
        assert_eq!(send(&mut q, &post(1, 2, 10, 1_000)), Ok(()));
        assert_eq!(send(&mut q, &post(1, 1, 10, 2_000)), Ok(()));
    }

    #[test]
    fn bytes_count_as_well_as_posts() {
        let mut q = Quotas::new(limits());
        assert_eq!(send(&mut q, &post(1, 1, 9_000, 0)), Ok(()));
        // 1000 bytes left, refilled at 1 byte/ms: 1000 more bytes take 1000 ms.
        assert_eq!(
            send(&mut q, &post(1, 1, 2_000, 0)),
            Err((ErrorCode::RateLimited, Some(1_000)))
        );
        assert_eq!(send(&mut q, &post(1, 1, 1_000, 0)), Ok(()));
    }

    #[test]
    fn the_group_is_capped_for_all_senders_together() {
        let mut q = Quotas::new(limits());
        for sender in 1..=5 {
            assert_eq!(send(&mut q, &post(sender, 1, 10, 0)), Ok(()));
        }
        assert_eq!(
            send(&mut q, &post(6, 1, 10, 0)),
            Err((ErrorCode::RateLimited, Some(1_000)))
        );
    }

    #[test]
    fn posts_the_store_refuses_use_up_no_quota() {
        let mut q = Quotas::new(limits());
        for _ in 0..10 {
            let p = post(1, 1, 10, 0);
            let t = q.admit(&p).unwrap_or_else(|e| panic!("{e}"));
            q.settle(t, false, 0);
        }
        for sender in [1, 1, 1, 2, 3] {
            assert_eq!(send(&mut q, &post(sender, 1, 10, 0)), Ok(()));
        }
    }

    #[test]
    fn a_commit_removing_devices_is_never_refused_but_counts() {
        let mut q = Quotas::new(limits());
        for _ in 0..3 {
            assert_eq!(send(&mut q, &post(1, 1, 10, 0)), Ok(()));
        }
        let mut remove = post(1, 1, 10, 0);
        remove.kind = PostKind::Commit {
            added: vec![].into(),
            removed: vec![DeviceId(2)].into(),
            welcome: None,
            group_info: Payload::default(),
        };
        assert_eq!(send(&mut q, &remove), Ok(()));
        let mut add = post(1, 1, 10, 0);
        add.kind = PostKind::Commit {
            added: vec![DeviceId(3)].into(),
            removed: vec![].into(),
            welcome: Some(Payload::from(&b"w"[..])),
            group_info: Payload::default(),
        };
        // Other commits are refused, and the removal put the sender one post in debt.
        assert_eq!(
            send(&mut q, &add),
            Err((ErrorCode::RateLimited, Some(2_000)))
        );
    }

    #[test]
    fn refilled_buckets_are_dropped_so_memory_stays_bounded() {
        let mut q = Quotas::new(QuotaLimits {
            group_post_burst: 1_000,
            ..limits()
        });
        for sender in 0..1_000 {
            assert_eq!(
                send(&mut q, &post(sender, (sender % 7) as u8, 10, 0)),
                Ok(())
            );
        }
        assert_eq!(q.tracked(), 1_000 + 7);
        // Long after: every bucket has refilled and the next post's sweep drops them.
        assert_eq!(
            send(&mut q, &post(1, 1, 10, 10 * SWEEP_INTERVAL_MS)),
            Ok(())
        );
        assert_eq!(q.tracked(), 2, "only the buckets of the last post remain");
        // Those refill too and go at the next sweep.
        q.sweep(30 * SWEEP_INTERVAL_MS);
        assert_eq!(q.tracked(), 0);
    }

    #[test]
    fn past_the_cap_a_sweep_runs_at_once() {
        let mut q = Quotas::new(limits());
        q.swept_ms = 0;
        for sender in 0..=(MAX_TRACKED_BUCKETS as u64) {
            let p = post(sender, 1, 10, 1);
            let t = q.admit(&p).unwrap_or_else(|e| panic!("{e}"));
            // Refused by the store: the sender's bucket is given back (full again).
            q.settle(t, false, 1);
        }
        assert!(q.tracked() <= MAX_TRACKED_BUCKETS + 1, "{}", q.tracked());
    }
}
