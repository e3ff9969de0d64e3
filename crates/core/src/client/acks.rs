//! Acknowledgements: cumulative, sent by count rather than by clock, mostly unanswered.
//!
//! The relay acknowledges everything up to an acked seq (`Ack { stream, seq }`, never
//! backwards), and each ack request costs it a wake-up, a TLS record read and, answered, a
//! record and a `writev` back. So the client does not ack each entry it processes, nor each
//! burst of frames (at low load a burst is one entry: one ack per entry per receiver). It
//! keeps the highest processed seq per stream and counts the entries processed since the
//! last acks went out; they go out, one per stream:
//!
//! - at the end of a burst ([`super::Client::end_of_burst`]: every frame the connection had
//!   ready is handled) once [`ACK_BATCH`] entries are unacked and the last acks sent for
//!   that count on the connection went out at least [`ACK_INTERVAL_MS`] (stretched per
//!   device) before, or when one of them is urgent (below). Under a steady stream the
//!   interval is what paces the acks: a receiver of 1,000 entries a second sends about one
//!   every 1-2 s, not one per 64 entries (each ack costs the relay a wake-up and the read
//!   of a TLS record: in the relay fan-out benchmark one ack per 64 entries raised the
//!   relay's CPU per delivery by more than half, and a bare broadcast server's alike);
//! - at `BacklogDone`, and when the shell flushes them ([`super::Client::flush_acks`], before
//!   it closes the connection politely);
//! - otherwise on a timer ([`Acks::deadline`]): when the connection has been idle (no entry
//!   processed) for [`ACK_IDLE_MS`], or [`ACK_DELAY_MS`] after the first unsent one,
//!   whichever comes first. Both are stretched per device by up to 100% ([`Acks::set_device`]),
//!   so that the receivers of one busy group, who all get each entry at the same moment, do
//!   not all ack at the same moment.
//!
//! Urgent: inbox acks (Welcomes, rare) and the acks of a group this device holds no state of
//! any more (it was removed or left, or the entries were dropped): the relay keeps a removed
//! device's cursor, and delivers the entries up to its removal again on every connection,
//! until that device acks the removal commit.
//!
//! Group acks go out as `QuietAck`, which the relay answers only when it refuses one (under
//! its id). Their ids are kept until an answered `Ack` sent after them is answered (the
//! relay keeps a connection's acks in request order, so a refusal of an earlier quiet ack
//! would have come before); once [`MAX_UNCONFIRMED_QUIET_ACKS`] are kept, the next group
//! ack is sent answered, which bounds the ids kept. Inbox acks are always answered.
//!
//! An entry processed and not acked yet when the connection drops is delivered again on
//! the next connection (what arrived since the last acks: at most [`ACK_BATCH`] entries per
//! stream, or the entries of one stretched [`ACK_INTERVAL_MS`], plus what arrived within
//! the timers); the store's cursor (advanced in the transaction that applied the entry)
//! recognises it and it is only acked again. A leaf: it imports no other part.

use std::collections::VecDeque;

use cove_wire::{RequestId, Seq, Stream};

/// Entries processed and not acked at which the end of a burst sends their acks (a burst
/// with fewer leaves them to the timers).
pub const ACK_BATCH: usize = 64;

/// Least time between two end-of-burst acks of one connection (ms), before the per-device
/// stretch (up to twice this): under a steady stream, acks go out about this often rather
/// than every [`ACK_BATCH`] entries.
pub const ACK_INTERVAL_MS: u64 = 1_000;

/// Longest time an ack waits after the first unsent entry was processed (ms), before the
/// per-device stretch (up to twice this).
pub const ACK_DELAY_MS: u64 = 1_000;

/// Time without a processed entry after which the unsent acks go out (ms), before the
/// per-device stretch (up to twice this).
pub const ACK_IDLE_MS: u64 = 250;

/// Quiet acks whose refusal could still come, at most, before a group ack is sent answered
/// (whose answer settles them).
pub const MAX_UNCONFIRMED_QUIET_ACKS: usize = 64;

/// The per-device stretch of the timers, in thousandths (`0..STRETCH_SCALE`).
const STRETCH_SCALE: u64 = 1_000;

/// Acks to send and quiet acks whose refusal could still come.
#[derive(Debug, Default)]
pub(super) struct Acks {
    /// The highest processed seq per stream, not sent yet (few streams per burst).
    unsent: Vec<(Stream, Seq)>,
    /// Entries processed since the acks last went out.
    count: usize,
    /// One of the unsent acks should go out at the end of the burst.
    urgent: bool,
    /// When the first unsent entry was processed.
    first_ms: Option<u64>,
    /// When the last unsent entry was processed.
    last_ms: u64,
    /// When a burst end last sent acks for their count on this connection.
    sent_ms: Option<u64>,
    /// This device's stretch of the timers, in thousandths (kept across connections).
    stretch: u64,
    /// Quiet acks sent on this connection that no answered ack settled yet: their ordinal
    /// (in sending order) and request id.
    unconfirmed: VecDeque<(u64, RequestId)>,
    /// The ordinal of the next quiet ack.
    next_ordinal: u64,
    /// An answered ack is in flight that settles the quiet acks below this ordinal.
    settling: Option<u64>,
}

/// How to send one ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AckKind {
    /// `QuietAck`; give its id to [`Acks::sent_quietly`].
    Quiet,
    /// `Ack`; its answer settles the quiet acks sent before it: give `confirms` to
    /// [`Acks::confirmed`] then.
    Answered { confirms: u64 },
}

impl Acks {
    /// The timers' stretch of this device (`device`, its relay id): a fixed fraction from
    /// 0 to almost 1 of [`ACK_DELAY_MS`] and [`ACK_IDLE_MS`] added to them, spread evenly
    /// over consecutive ids.
    pub(super) fn set_device(&mut self, device: u64) {
        // A Fibonacci hash: consecutive ids land far apart.
        let mixed = device.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.stretch = (mixed >> 32) % STRETCH_SCALE;
    }

    /// `stream` was processed up to `seq` (at `now_ms`); `urgent`: its ack should not wait
    /// for more entries (see the module).
    pub(super) fn processed(&mut self, now_ms: u64, stream: Stream, seq: Seq, urgent: bool) {
        match self.unsent.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, at)) => *at = (*at).max(seq),
            None => self.unsent.push((stream, seq)),
        }
        self.count = self.count.saturating_add(1);
        self.urgent |= urgent;
        self.first_ms.get_or_insert(now_ms);
        self.last_ms = now_ms;
    }

    /// `base` stretched by this device's fraction.
    fn stretched(&self, base: u64) -> u64 {
        base + base * self.stretch / STRETCH_SCALE
    }

    /// When the unsent acks are due (`None`: there are none): after the connection was idle
    /// for the stretched [`ACK_IDLE_MS`], or the stretched [`ACK_DELAY_MS`] after the first
    /// of them, whichever comes first.
    pub(super) fn deadline(&self) -> Option<u64> {
        let first = self.first_ms?;
        let idle = self.last_ms.saturating_add(self.stretched(ACK_IDLE_MS));
        let delay = first.saturating_add(self.stretched(ACK_DELAY_MS));
        Some(idle.min(delay))
    }

    /// The acks the end of a burst at `now_ms` sends (`None`: they wait): all of them when
    /// one is urgent, or when [`ACK_BATCH`] entries are unacked and the last acks sent for
    /// that count went out at least the stretched [`ACK_INTERVAL_MS`] before (or none did
    /// on this connection yet).
    pub(super) fn take_at_burst_end(&mut self, now_ms: u64) -> Option<Vec<(Stream, Seq)>> {
        if self.unsent.is_empty() {
            return None;
        }
        if self.urgent {
            return Some(self.take());
        }
        let paced = self
            .sent_ms
            .is_none_or(|at| now_ms >= at.saturating_add(self.stretched(ACK_INTERVAL_MS)));
        if self.count >= ACK_BATCH && paced {
            self.sent_ms = Some(now_ms);
            return Some(self.take());
        }
        None
    }

    /// The acks to send now (the highest seq per stream), in the order their streams were
    /// first processed.
    pub(super) fn take(&mut self) -> Vec<(Stream, Seq)> {
        self.count = 0;
        self.urgent = false;
        self.first_ms = None;
        std::mem::take(&mut self.unsent)
    }

    /// How to send the next ack, of `stream`: inbox acks answered; group acks quiet, except
    /// one answered when [`MAX_UNCONFIRMED_QUIET_ACKS`] are unsettled and no answered ack is
    /// on its way to settle them. The caller sends it so (and says so for a quiet one).
    pub(super) fn kind(&mut self, stream: Stream) -> AckKind {
        let crowded =
            self.unconfirmed.len() >= MAX_UNCONFIRMED_QUIET_ACKS && self.settling.is_none();
        if matches!(stream, Stream::Inbox) || crowded {
            let confirms = self.next_ordinal;
            self.settling = Some(confirms);
            AckKind::Answered { confirms }
        } else {
            AckKind::Quiet
        }
    }

    /// A quiet ack went out as request `id`.
    pub(super) fn sent_quietly(&mut self, id: RequestId) {
        self.unconfirmed.push_back((self.next_ordinal, id));
        self.next_ordinal += 1;
    }

    /// An answered ack was answered (accepted or refused): the quiet acks sent before it
    /// (ordinals below `confirms`) will not be answered any more.
    pub(super) fn confirmed(&mut self, confirms: u64) {
        while self
            .unconfirmed
            .front()
            .is_some_and(|(ordinal, _)| *ordinal < confirms)
        {
            self.unconfirmed.pop_front();
        }
        if self.settling.is_some_and(|s| s <= confirms) {
            self.settling = None;
        }
    }

    /// The relay answered request `id`: whether it was a quiet ack of this connection (a
    /// refusal), which is then forgotten.
    pub(super) fn answered_quietly(&mut self, id: RequestId) -> bool {
        match self.unconfirmed.iter().position(|(_, q)| *q == id) {
            Some(at) => {
                self.unconfirmed.remove(at);
                true
            }
            None => false,
        }
    }

    /// A connection began or ended: nothing unsent is sent on it (the relay delivers the
    /// unacked entries again, and they are acked again), nothing quiet is answered.
    pub(super) fn reset(&mut self) {
        *self = Acks {
            stretch: self.stretch,
            ..Acks::default()
        };
    }
}
