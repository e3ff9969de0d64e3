//! A device's backlog: the stored entries it has not acknowledged, step by step.

use std::collections::{HashMap, VecDeque};

use cove_wire::limits::MAX_FETCH_ENTRIES;
use cove_wire::{Delivery, DeviceId, EntryKind, GroupEntry, GroupId, Seq, Stream};

use crate::store::{DEFAULT_READ_BYTES, RelayStore, StoreError};

/// Most entries read from the store per step (the byte budget usually stops a step first).
const STEP: u32 = MAX_FETCH_ENTRIES;

/// The backlog of a device that has just authenticated, read from the store in steps of at
/// most one store page each (bounded in entries and in payload bytes), in this order: the groups it was removed from without having
/// acked the removal (up to and including the removal commit, also when it was added again
/// since: a device always receives the commit that removed it, before the Welcome that adds
/// it again), its inbox, and every group it is in (never past a commit that removes it).
/// After the last step the device goes live: entries stored meanwhile are delivered live,
/// those the backlog already sent are not sent twice (see [`BacklogStep::Done`]).
#[derive(Debug)]
pub struct Backlog {
    device: DeviceId,
    phase: Phase,
    /// The groups the device is a member of (read at the start).
    members: Vec<GroupId>,
    /// The last seq pushed per stream.
    sent: HashMap<Stream, Seq>,
    /// Payload bytes read from the store per step (the first entry of a step always is).
    read_bytes: usize,
    /// Where to start each stream at the latest: after what this connection was already
    /// sent (a re-read in cluster mode), if past the device's ack cursor.
    resume: HashMap<Stream, Seq>,
}

/// What to do after one step.
#[derive(Debug)]
pub enum BacklogStep {
    /// Send these to the device, in order, then step again.
    Deliver(Vec<Delivery>),
    /// The backlog is complete: send `BacklogDone` and make the device live. `sent` is the
    /// last seq pushed per stream: a live entry of a stream at or below it was in the
    /// backlog and is not delivered again.
    Done(HashMap<Stream, Seq>),
}

#[derive(Debug)]
enum Phase {
    Start,
    Departures(VecDeque<(GroupId, Seq)>, Option<Reading>),
    Inbox(Option<Seq>),
    Groups(VecDeque<GroupId>, Option<Reading>),
    Done,
}

/// One group log being read.
#[derive(Debug)]
struct Reading {
    group: GroupId,
    /// The last seq pushed (the cursor before the first).
    after: Seq,
    /// For a departure: the removal commit, the last entry to push.
    removed_at: Option<Seq>,
}

impl Backlog {
    /// The backlog of `device`, not read yet, read in steps of at most
    /// [`DEFAULT_READ_BYTES`] of payload.
    pub fn new(device: DeviceId) -> Self {
        Self::with_read_bytes(device, DEFAULT_READ_BYTES)
    }

    /// The backlog of `device`, read in steps of at most `read_bytes` of payload (and
    /// `MAX_FETCH_ENTRIES` entries); a step holds one entry larger than that.
    pub fn with_read_bytes(device: DeviceId, read_bytes: usize) -> Self {
        Backlog {
            device,
            phase: Phase::Start,
            members: Vec::new(),
            sent: HashMap::new(),
            read_bytes,
            resume: HashMap::new(),
        }
    }

    /// This backlog read again for a connection that was already sent each stream up to
    /// `resume` (in order, without a gap): every stream starts after the later of the
    /// device's ack cursor and that position, so nothing the connection has is sent again.
    pub fn resuming(mut self, resume: HashMap<Stream, Seq>) -> Self {
        self.resume = resume;
        self
    }

    /// `cursor`, or the position the connection already has in `stream` if later.
    fn start_after(&self, stream: Stream, cursor: Seq) -> Seq {
        self.resume
            .get(&stream)
            .map_or(cursor, |sent| cursor.max(*sent))
    }

    /// Reads the next step from the store. After `Done`, every step is `Done` with nothing
    /// sent.
    pub fn step(&mut self, store: &dyn RelayStore) -> Result<BacklogStep, StoreError> {
        let device = self.device;
        loop {
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Start => {
                    self.members = store
                        .groups_of(device)?
                        .into_iter()
                        .map(|summary| summary.group)
                        .collect();
                    let departures = store.departures(device)?;
                    self.phase = Phase::Departures(departures.into(), None);
                }
                Phase::Departures(mut list, current) => {
                    let mut reading = match current {
                        Some(reading) => reading,
                        None => {
                            let Some((group, removed_at)) = list.pop_front() else {
                                self.phase = Phase::Inbox(None);
                                continue;
                            };
                            match store.departure_cursor(device, group)? {
                                Some(after) => Reading {
                                    group,
                                    after: self.start_after(Stream::Group(group), after),
                                    removed_at: Some(removed_at),
                                },
                                // The removal was acked meanwhile.
                                None => {
                                    self.phase = Phase::Departures(list, None);
                                    continue;
                                }
                            }
                        }
                    };
                    let (out, finished) = read_group(store, device, &mut reading, self.read_bytes)?;
                    if finished {
                        // A member again: its live stream starts from its member cursor.
                        if !self.members.contains(&reading.group) {
                            self.sent
                                .insert(Stream::Group(reading.group), reading.after);
                        }
                        self.phase = Phase::Departures(list, None);
                    } else {
                        self.phase = Phase::Departures(list, Some(reading));
                    }
                    if !out.is_empty() {
                        return Ok(BacklogStep::Deliver(out));
                    }
                }
                Phase::Inbox(after) => {
                    let after = match after {
                        Some(after) => after,
                        None => {
                            self.start_after(Stream::Inbox, store.cursor(device, Stream::Inbox)?)
                        }
                    };
                    let entries = store.read_inbox(device, after, STEP, self.read_bytes)?;
                    let Some(last) = entries.last() else {
                        self.sent.insert(Stream::Inbox, after);
                        self.phase = Phase::Groups(self.members.clone().into(), None);
                        continue;
                    };
                    self.phase = Phase::Inbox(Some(last.seq));
                    return Ok(BacklogStep::Deliver(
                        entries.into_iter().map(Delivery::Inbox).collect(),
                    ));
                }
                Phase::Groups(mut list, current) => {
                    let mut reading = match current {
                        Some(reading) => reading,
                        None => {
                            let Some(group) = list.pop_front() else {
                                return Ok(BacklogStep::Done(std::mem::take(&mut self.sent)));
                            };
                            let stream = Stream::Group(group);
                            if self.sent.contains_key(&stream) {
                                self.phase = Phase::Groups(list, None);
                                continue;
                            }
                            match store.cursor(device, stream) {
                                Ok(after) => Reading {
                                    group,
                                    after: self.start_after(stream, after),
                                    removed_at: None,
                                },
                                // Removed (and told, live) or left meanwhile.
                                Err(StoreError::NotMember) => {
                                    self.phase = Phase::Groups(list, None);
                                    continue;
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    };
                    let (out, finished) = read_group(store, device, &mut reading, self.read_bytes)?;
                    if finished {
                        self.sent
                            .insert(Stream::Group(reading.group), reading.after);
                        self.phase = Phase::Groups(list, None);
                    } else {
                        self.phase = Phase::Groups(list, Some(reading));
                    }
                    if !out.is_empty() {
                        return Ok(BacklogStep::Deliver(out));
                    }
                }
                Phase::Done => return Ok(BacklogStep::Done(HashMap::new())),
            }
        }
    }
}

/// One page of a group log after `reading.after` (up to and including `removed_at` if
/// given, never past a commit that removes the device). Returns the entries and whether the
/// log is finished for this backlog.
fn read_group(
    store: &dyn RelayStore,
    device: DeviceId,
    reading: &mut Reading,
    read_bytes: usize,
) -> Result<(Vec<Delivery>, bool), StoreError> {
    let entries = store.read_group(reading.group, reading.after, STEP, read_bytes)?;
    if entries.is_empty() {
        return Ok((Vec::new(), true));
    }
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        if reading.removed_at.is_some_and(|r| entry.seq > r) {
            return Ok((out, true));
        }
        reading.after = entry.seq;
        let removes_me = removes(&entry, device);
        out.push(Delivery::Group(entry));
        if removes_me {
            return Ok((out, true));
        }
    }
    Ok((out, false))
}

/// Whether `entry` is a commit that removes `device`.
fn removes(entry: &GroupEntry, device: DeviceId) -> bool {
    matches!(&entry.kind, EntryKind::Commit { removed, .. } if removed.contains(&device))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use cove_wire::{Delivery, Seq};

    use super::{Backlog, BacklogStep};
    use crate::store::conformance::{app, commit, device, gid, one};
    use crate::store::{MemoryStore, RelayStore, SqliteStore};

    /// 500 entries of 2 KiB and a Welcome, read with a 10 KiB budget: every step holds at
    /// most 10 KiB of payload (five entries), and the steps deliver the Welcome and then
    /// every entry once, in order.
    fn steps_stay_within_the_byte_budget(store: &dyn RelayStore) {
        const SIZE: usize = 2048;
        const BUDGET: usize = 10 * 1024;
        let a = device(store, "alice", 1);
        let b = device(store, "bob", 2);
        let g = gid(1);
        store.create_group(g, a).unwrap();
        one(store, commit(g, a, 0, &[b], &[], Some(&[9u8; SIZE]))).unwrap();
        let payload = |i: u32| {
            let mut p = vec![0u8; SIZE];
            p[..4].copy_from_slice(&i.to_be_bytes());
            p
        };
        let posts = (0..500).map(|i| app(g, a, 1, &payload(i))).collect();
        assert!(store.append_batch(posts).iter().all(Result::is_ok));

        let mut backlog = Backlog::with_read_bytes(b, BUDGET);
        let mut steps = Vec::new();
        while let BacklogStep::Deliver(deliveries) = backlog.step(store).unwrap() {
            steps.push(deliveries);
        }
        let bytes = |d: &Delivery| match d {
            Delivery::Group(e) => e.payload.len(),
            Delivery::Inbox(e) => e.payload.len(),
        };
        for step in &steps {
            assert!(step.iter().map(bytes).sum::<usize>() <= BUDGET);
        }
        // The inbox step, then 100 group steps of exactly five entries.
        assert_eq!(steps.len(), 101);
        assert!(steps[1..].iter().all(|s| s.len() == 5));
        let all: Vec<Delivery> = steps.into_iter().flatten().collect();
        assert!(matches!(&all[0], Delivery::Inbox(_)));
        let group: Vec<(Seq, Vec<u8>)> = all[1..]
            .iter()
            .map(|d| match d {
                Delivery::Group(e) => (e.seq, e.payload.as_bytes()[..4].to_vec()),
                Delivery::Inbox(e) => panic!("inbox entry {} among group entries", e.seq),
            })
            .collect();
        let expected: Vec<(Seq, Vec<u8>)> = (0..500u32)
            .map(|i| (Seq(u64::from(i) + 2), i.to_be_bytes().to_vec()))
            .collect();
        assert_eq!(group, expected);
    }

    /// A backlog read again for a connection that already has the group up to seq 5 and
    /// the inbox up to its Welcome (cluster mode) starts after those positions, not at the
    /// ack cursors: entries 6..=8 only, and `Done` reports the new positions. A position
    /// behind the ack cursor changes nothing.
    #[test]
    fn a_resumed_backlog_starts_after_what_the_connection_has() {
        use std::collections::HashMap;

        use cove_wire::Stream;

        let store = MemoryStore::new();
        let a = device(&store, "alice", 1);
        let b = device(&store, "bob", 2);
        let g = gid(1);
        store.create_group(g, a).unwrap();
        one(&store, commit(g, a, 0, &[b], &[], Some(b"welcome"))).unwrap();
        let posts = (0..7u8).map(|i| app(g, a, 1, &[i])).collect();
        assert!(store.append_batch(posts).iter().all(Result::is_ok));
        store.ack(b, Stream::Group(g), Seq(3)).unwrap();

        let read = |resume: HashMap<Stream, Seq>| {
            let mut backlog = Backlog::new(b).resuming(resume);
            let mut got = Vec::new();
            loop {
                match backlog.step(&store).unwrap() {
                    BacklogStep::Deliver(d) => got.extend(d),
                    BacklogStep::Done(sent) => return (got, sent),
                }
            }
        };
        let (got, sent) = read(HashMap::from([
            (Stream::Group(g), Seq(5)),
            (Stream::Inbox, Seq(1)),
        ]));
        let seqs: Vec<Seq> = got
            .iter()
            .map(|d| match d {
                Delivery::Group(e) => e.seq,
                Delivery::Inbox(e) => panic!("inbox entry {} sent again", e.seq),
            })
            .collect();
        assert_eq!(seqs, vec![Seq(6), Seq(7), Seq(8)]);
        assert_eq!(sent.get(&Stream::Group(g)), Some(&Seq(8)));
        assert_eq!(sent.get(&Stream::Inbox), Some(&Seq(1)));

        // Behind the ack cursor: from the cursor, as a first backlog (Welcome, then 4..=8).
        let (got, _) = read(HashMap::from([(Stream::Group(g), Seq(1))]));
        assert_eq!(got.len(), 1 + 5);
    }

    #[test]
    fn memory_steps_stay_within_the_byte_budget() {
        steps_stay_within_the_byte_budget(&MemoryStore::new());
    }

    #[test]
    fn sqlite_steps_stay_within_the_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("relay.db")).unwrap();
        steps_stay_within_the_byte_budget(&store);
    }
}
