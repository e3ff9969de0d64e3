//! Acknowledgements: cumulative, sent once per burst of frames, mostly unanswered.
//!
//! The relay acknowledges everything up to an acked seq (`Ack { stream, seq }`, never
//! backwards), and each ack request costs it a wake-up, a TLS record read and, answered, a
//! record and a `writev` back. So the client does not ack each entry it processes: it keeps
//! the highest processed seq per stream and sends it when the shell reports the end of a
//! burst ([`super::Client::flush_acks`]: every frame the connection had ready is handled),
//! at `BacklogDone`, or [`ACK_DELAY_MS`] after the first unsent one, whichever comes first.
//!
//! Group acks go out as `QuietAck`, which the relay answers only when it refuses one (under
//! its id). Their ids are kept until an answered `Ack` sent after them is answered (the
//! relay keeps a connection's acks in request order, so a refusal of an earlier quiet ack
//! would have come before); once [`MAX_UNCONFIRMED_QUIET_ACKS`] are kept, the next group
//! ack is sent answered, which bounds the ids kept. Inbox acks (rare) are always answered.
//!
//! An entry processed and not acked yet when the connection drops is delivered again on
//! the next connection; the store's cursor (advanced in the transaction that applied the
//! entry) recognises it and it is only acked again. A leaf: it imports no other part.

use std::collections::VecDeque;

use cove_wire::{RequestId, Seq, Stream};

/// Longest time an ack waits for the end of its burst (ms).
pub const ACK_DELAY_MS: u64 = 100;

/// Quiet acks whose refusal could still come, at most, before a group ack is sent answered
/// (whose answer settles them).
pub const MAX_UNCONFIRMED_QUIET_ACKS: usize = 64;

/// Acks to send and quiet acks whose refusal could still come.
#[derive(Debug, Default)]
pub(super) struct Acks {
    /// The highest processed seq per stream, not sent yet (few streams per burst).
    unsent: Vec<(Stream, Seq)>,
    /// When the unsent acks go out at the latest.
    deadline_ms: Option<u64>,
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
    /// `stream` was processed up to `seq` (at `now_ms`).
    pub(super) fn processed(&mut self, now_ms: u64, stream: Stream, seq: Seq) {
        match self.unsent.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, at)) => *at = (*at).max(seq),
            None => self.unsent.push((stream, seq)),
        }
        if self.deadline_ms.is_none() {
            self.deadline_ms = Some(now_ms.saturating_add(ACK_DELAY_MS));
        }
    }

    /// When the unsent acks are due (`None`: there are none).
    pub(super) fn deadline(&self) -> Option<u64> {
        self.deadline_ms
    }

    /// The acks to send now (the highest seq per stream), in the order their streams were
    /// first processed.
    pub(super) fn take(&mut self) -> Vec<(Stream, Seq)> {
        self.deadline_ms = None;
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
        *self = Acks::default();
    }
}
