//! The post pipeline: the relay's hot path. The relay core ([`crate::logic::posted`])
//! decides each post's reply and recipients; the pipeline batches, encodes and delivers.
//!
//! Connections hand posts to one writer thread through a channel, as batches: a connection
//! collects the posts it decodes from what its socket has ready and submits them as one job
//! once no further frame is ready (see [`crate::session`]), so a burst of posts is woken,
//! stored and fanned out together. The thread takes everything queued (up to
//! `post_batch_max` posts), appends it with [`logic::append_posts`] (one
//! [`RelayStore::append_batch`] call for application messages, group commit: one
//! transaction, one sync for the whole batch; each handshake validated and appended on its
//! own), and encodes each post's reply and each accepted entry's `Deliver` frame once.
//! It hands the batch to one fan-out task on the async runtime (one cross-thread wake-up per
//! batch), which answers each poster with `Posted { seq }` (the post is durable by then) and
//! pushes the same `Bytes` to every online recipient's queue. One thread appends and one task
//! fans out, both in order, so every device sees a group's entries in seq order.
//!
//! Before the store, each post passes the quotas per sender and per group
//! ([`crate::logic::Quotas`], owned by the writer thread); a post over quota is answered
//! `RateLimited` and never stored.
//!
//! Memory is bounded by a byte semaphore: a post holds permits for its size until it has
//! been fanned out, so connections posting faster than the store can sync wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use cove_wire::{
    Delivery, DeviceId, ErrorCode, ErrorReply, GroupId, Reply, RequestId, Seq, ServerFrame, Stream,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, error, warn};

use crate::hub::{self, CloseReason, Hub, Outbox};
use crate::logic::{self, Fanout, Handshakes, PostError, PostOutcome, QuotaLimits, Quotas};
use crate::metrics::Metrics;
use crate::reply::{encode_frame, response};
use crate::store::{Appended, NewPost, RelayStore, Welcome};

/// Fixed per-post overhead counted against the byte budget besides the payload.
const POST_OVERHEAD_BYTES: usize = 256;

/// A post waiting for the writer thread.
pub(crate) struct PostJob {
    /// The post.
    pub post: NewPost,
    /// The request to answer.
    pub request: RequestId,
    /// Where to answer.
    pub reply_to: Arc<Outbox>,
    /// Byte budget held until the post is fanned out.
    pub permit: OwnedSemaphorePermit,
}

/// The sending side of the pipeline, held by connections.
pub(crate) struct Pipeline {
    jobs: mpsc::UnboundedSender<Vec<PostJob>>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    batch_max: usize,
}

impl Pipeline {
    /// Starts the writer thread.
    pub fn start(
        store: Arc<dyn RelayStore>,
        handshakes: Arc<Handshakes>,
        hub: Arc<Hub>,
        budget_bytes: usize,
        batch_max: usize,
        quotas: QuotaLimits,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Pipeline, JoinHandle<()>)> {
        let (jobs, rx) = mpsc::unbounded_channel();
        let (done, done_rx) = mpsc::unbounded_channel();
        let batch_max = batch_max.max(1);
        let thread = std::thread::Builder::new()
            .name("cove-post-writer".into())
            .spawn(move || {
                writer_thread(store, &handshakes, rx, done, batch_max, quotas, &metrics)
            })?;
        tokio::spawn(fanout_task(hub, done_rx));
        let budget_bytes = budget_bytes.min(Semaphore::MAX_PERMITS);
        let budget = Arc::new(Semaphore::new(budget_bytes));
        Ok((
            Pipeline {
                jobs,
                budget,
                budget_bytes,
                batch_max,
            },
            thread,
        ))
    }

    fn budget_for(&self, payload_len: usize) -> u32 {
        let want = payload_len
            .saturating_add(POST_OVERHEAD_BYTES)
            .min(self.budget_bytes);
        u32::try_from(want).unwrap_or(u32::MAX)
    }

    /// Reserves budget for a post of `payload_len` bytes if there is room now.
    pub fn try_reserve(&self, payload_len: usize) -> Option<OwnedSemaphorePermit> {
        let want = self.budget_for(payload_len);
        Arc::clone(&self.budget).try_acquire_many_owned(want).ok()
    }

    /// Reserves budget for a post of `payload_len` bytes (waits while the store is behind).
    /// A caller holding reserved posts it has not submitted must submit them first.
    pub async fn reserve(&self, payload_len: usize) -> Option<OwnedSemaphorePermit> {
        let want = self.budget_for(payload_len);
        Arc::clone(&self.budget).acquire_many_owned(want).await.ok()
    }

    /// Most posts a connection should gather before it submits them.
    pub fn batch_max(&self) -> usize {
        self.batch_max
    }

    /// Queues a batch of posts (in order). If the writer has stopped, the posts come back.
    pub fn submit(&self, jobs: Vec<PostJob>) -> Result<(), Vec<PostJob>> {
        self.jobs.send(jobs).map_err(|e| e.0)
    }
}

fn writer_thread(
    store: Arc<dyn RelayStore>,
    handshakes: &Handshakes,
    mut rx: mpsc::UnboundedReceiver<Vec<PostJob>>,
    done: mpsc::UnboundedSender<Vec<Outcome>>,
    batch_max: usize,
    limits: QuotaLimits,
    metrics: &Metrics,
) {
    // The quotas live here: this thread sees every post, in order.
    let mut quotas = Quotas::new(limits);
    let mut jobs: Vec<PostJob> = Vec::with_capacity(batch_max);
    // What did not fit in the last batch (the rest of a connection's job): it goes first.
    let mut carry: Vec<PostJob> = Vec::new();
    loop {
        let first = if carry.is_empty() {
            match rx.blocking_recv() {
                Some(first) => first,
                None => break,
            }
        } else {
            std::mem::take(&mut carry)
        };
        let mut next = Some(first);
        while let Some(mut more) = next.take() {
            let room = batch_max.saturating_sub(jobs.len());
            if more.len() > room {
                carry = more.split_off(room);
                jobs.append(&mut more);
                break;
            }
            jobs.append(&mut more);
            if jobs.len() < batch_max {
                next = rx.try_recv().ok();
            }
        }
        // Posts over quota are answered without reaching the store; the others keep their
        // place among the batch's outcomes.
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(jobs.len());
        let mut posts = Vec::with_capacity(jobs.len());
        let mut admitted = Vec::with_capacity(jobs.len());
        for job in jobs.drain(..) {
            match quotas.admit(&job.post) {
                Ok(ticket) => {
                    admitted.push((outcomes.len(), ticket, job.post.now_ms));
                    outcomes.push(None);
                    posts.push((job.post, (job.request, job.reply_to, job.permit)));
                }
                Err(refusal) => {
                    debug!(
                        device = job.post.sender.0,
                        "post over quota: {}", refusal.message
                    );
                    outcomes.push(Some(Outcome {
                        reply: encode_frame(&response(job.request, Err(refusal))),
                        reply_to: job.reply_to,
                        accepted: None,
                        _permit: job.permit,
                    }));
                }
            }
        }
        let (posts, reply_to): (Vec<NewPost>, Vec<_>) = posts.into_iter().unzip();
        let count = posts.len();
        // Handshakes are validated here, one at a time in post order: validation, append
        // and merge of a group's commit never race another commit of the group.
        let results = if count == 0 {
            Vec::new()
        } else {
            let started = Instant::now();
            let results = logic::append_posts(store.as_ref(), handshakes, posts);
            metrics.observe_batch(started.elapsed());
            let accepted = results.iter().filter(|r| r.is_ok()).count();
            metrics
                .posts_accepted
                .fetch_add(accepted as u64, Ordering::Relaxed);
            results
        };
        let results: Vec<Result<Appended, PostError>> = if results.len() == count {
            debug!(batch = count, "appended post batch");
            results
        } else {
            error!(
                expected = count,
                got = results.len(),
                "store returned a wrong number of results"
            );
            (0..count)
                .map(|_| Err(logic::wrong_count().into()))
                .collect()
        };
        for (((slot, ticket, now_ms), r), result) in admitted.into_iter().zip(reply_to).zip(results)
        {
            quotas.settle(ticket, result.is_ok(), now_ms);
            if let Some(place) = outcomes.get_mut(slot) {
                *place = Some(outcome(r, result));
            }
        }
        // The fan-out runs on the async runtime: one cross-thread wake-up per batch instead
        // of one per recipient connection.
        if done.send(outcomes.into_iter().flatten().collect()).is_err() {
            break;
        }
    }
    // Every connection is gone: write whatever the store buffers (acks) before it closes.
    if let Err(e) = store.flush() {
        error!(error = %e, "flushing the store failed");
    }
    debug!("post writer stopped");
}

/// A post after the store: its encoded reply and, if accepted, its encoded deliveries.
pub(crate) struct Outcome {
    reply_to: Arc<Outbox>,
    reply: Option<Bytes>,
    accepted: Option<Accepted>,
    /// Released once the post has been fanned out.
    _permit: OwnedSemaphorePermit,
}

struct Accepted {
    group: GroupId,
    seq: Seq,
    /// Who gets the entry (members, minus devices the commit added, plus removed ones).
    recipients: Vec<DeviceId>,
    frame: Bytes,
    welcomes: Vec<(DeviceId, Seq, Bytes)>,
}

fn outcome(
    (request, reply_to, permit): (RequestId, Arc<Outbox>, OwnedSemaphorePermit),
    result: Result<Appended, PostError>,
) -> Outcome {
    // The core decides the reply and who gets what; this encodes each frame once.
    let PostOutcome { reply, fanout } = logic::posted(result);
    let reply = encode_frame(&response(request, reply));
    let accepted = fanout.and_then(|fanout| {
        let Fanout {
            entry,
            recipients,
            welcome,
            welcomes,
        } = fanout;
        let group = entry.group;
        let seq = entry.seq;
        encode_frame(&ServerFrame::Deliver(Delivery::Group(entry))).map(|frame| Accepted {
            group,
            seq,
            recipients,
            frame,
            welcomes: match &welcome {
                Some(welcome) => welcomes
                    .iter()
                    .filter_map(|&(device, seq)| {
                        encode_welcome(welcome, seq).map(|f| (device, seq, f))
                    })
                    .collect(),
                None => Vec::new(),
            },
        })
    });
    Outcome {
        reply_to,
        reply,
        accepted,
        _permit: permit,
    }
}

/// The `Deliver(Inbox(..))` frame of `welcome` at inbox `seq`, encoded by
/// [`cove_wire::encode_inbox_delivery`] around the shared payload (no copy into an
/// [`cove_wire::InboxEntry`] first).
fn encode_welcome(welcome: &Welcome, seq: Seq) -> Option<Bytes> {
    match cove_wire::encode_inbox_delivery(
        seq,
        &welcome.kind,
        welcome.received_at_ms,
        &welcome.payload,
    ) {
        Ok(frame) => Some(Bytes::from(frame)),
        Err(e) => {
            error!(error = %e, "cannot encode a welcome frame");
            None
        }
    }
}

/// Answers posters and pushes each accepted entry to its online recipients, batch by batch,
/// in order.
async fn fanout_task(hub: Arc<Hub>, mut done: mpsc::UnboundedReceiver<Vec<Outcome>>) {
    while let Some(outcomes) = done.recv().await {
        let mut fanout = hub.fanout();
        // Cluster mode orders each device's deliveries entry by entry: no runs.
        let runs = !fanout.is_ordered();
        let mut rest = outcomes.as_slice();
        while !rest.is_empty() {
            let run = if runs { run_len(rest) } else { 1 };
            let (now, later) = rest.split_at(run);
            rest = later;
            if run >= 2 {
                deliver_run(&mut fanout, now);
            } else {
                for outcome in now {
                    deliver_one(&mut fanout, outcome, None);
                }
            }
        }
        drop(fanout);
        // Then the other nodes (cluster mode), without waiting on the bus.
        if let Some(publisher) = hub.publisher() {
            for a in outcomes.iter().filter_map(|o| o.accepted.as_ref()) {
                publisher.entry(a.group, a.seq, &a.recipients, &a.frame);
                for (device, seq, frame) in &a.welcomes {
                    publisher.welcome(*device, *seq, frame);
                }
            }
        }
    }
}

/// The poster's reply, then the entry to its recipients (all of them, or only `only`),
/// then the commit's Welcomes.
fn deliver_one(fanout: &mut hub::Fanout<'_>, outcome: &Outcome, only: Option<&[DeviceId]>) {
    match &outcome.reply {
        Some(frame) => {
            outcome.reply_to.push(frame.clone());
        }
        None => outcome
            .reply_to
            .close(CloseReason::Code(ErrorCode::Internal)),
    }
    let Some(a) = &outcome.accepted else { return };
    let recipients = only.unwrap_or(&a.recipients);
    fanout.deliver(recipients, Stream::Group(a.group), a.seq, &a.frame);
    if only.is_none() {
        for (device, seq, frame) in &a.welcomes {
            fanout.deliver(&[*device], Stream::Inbox, *seq, frame);
        }
    }
}

/// How many outcomes from the first form a run: accepted entries of one group, with the
/// same recipients and no Welcome (a burst of application messages). 1 if none.
fn run_len(outcomes: &[Outcome]) -> usize {
    fn key(o: &Outcome) -> Option<(GroupId, &[DeviceId])> {
        o.accepted
            .as_ref()
            .filter(|a| a.welcomes.is_empty())
            .map(|a| (a.group, a.recipients.as_slice()))
    }
    let Some(first) = outcomes.first().and_then(key) else {
        return 1;
    };
    1 + outcomes
        .iter()
        .skip(1)
        .take_while(|o| key(o) == Some(first))
        .count()
}

/// Delivers a run (see [`run_len`]) as one shared list of frames per recipient. The posters
/// of the run that are also recipients get their replies and the entries one at a time, in
/// the order of the posts, as outside a run.
fn deliver_run(fanout: &mut hub::Fanout<'_>, run: &[Outcome]) {
    let accepted: Vec<&Accepted> = run.iter().filter_map(|o| o.accepted.as_ref()).collect();
    let Some(first) = accepted.first() else {
        return;
    };
    let frames: Arc<[Bytes]> = accepted.iter().map(|a| a.frame.clone()).collect();
    let seqs: Vec<Seq> = accepted.iter().map(|a| a.seq).collect();
    let len = frames.iter().map(Bytes::len).sum();
    let mut posters: Vec<u64> = run.iter().map(|o| o.reply_to.conn_id).collect();
    posters.sort_unstable();
    posters.dedup();
    let skipped = fanout.deliver_run(
        &first.recipients,
        Stream::Group(first.group),
        &seqs,
        &frames,
        len,
        &posters,
    );
    for outcome in run {
        deliver_one(fanout, outcome, Some(&skipped));
    }
}

/// An acknowledgement waiting for the ack thread.
pub(crate) struct AckJob {
    /// The acking device.
    pub device: DeviceId,
    /// Which log.
    pub stream: Stream,
    /// Up to which entry.
    pub seq: Seq,
    /// The request to answer.
    pub request: RequestId,
    /// Where to answer.
    pub reply_to: Arc<Outbox>,
    /// The connection's count of acks in the lane, decremented once this one is answered.
    pub in_lane: Arc<AtomicUsize>,
    /// A `QuietAck`: answered only if refused.
    pub quiet: bool,
}

/// Acks are frequent (every device acks what it receives), tiny and cheap for the store
/// (backends may buffer them). Most group acks are applied in the connection task
/// ([`RelayStore::try_ack_buffered`]); the rest (inbox acks, departures, a due flush of the
/// buffer) come here. One thread applies them in order, without a blocking-pool hand-off per
/// ack; connections wait when it is behind.
pub(crate) struct AckLane {
    jobs: mpsc::Sender<AckJob>,
}

impl AckLane {
    /// Starts the ack thread.
    pub fn start(store: Arc<dyn RelayStore>) -> std::io::Result<(AckLane, JoinHandle<()>)> {
        let (jobs, mut rx) = mpsc::channel::<AckJob>(4096);
        let thread = std::thread::Builder::new()
            .name("cove-acks".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let result = logic::acked(store.ack(job.device, job.stream, job.seq));
                    if !(job.quiet && result.is_ok()) {
                        reply(&job.reply_to, job.request, result);
                    }
                    job.in_lane.fetch_sub(1, Ordering::AcqRel);
                }
                if let Err(e) = store.flush() {
                    error!(error = %e, "flushing the store failed");
                }
            })?;
        Ok((AckLane { jobs }, thread))
    }

    /// Queues an ack (waits while the thread is behind). False if it has stopped.
    pub async fn submit(&self, job: AckJob) -> bool {
        self.jobs.send(job).await.is_ok()
    }
}

fn reply(to: &Outbox, id: RequestId, result: Result<Reply, ErrorReply>) {
    match encode_frame(&response(id, result)) {
        Some(frame) => {
            if !to.push(frame) {
                warn!(conn = to.conn_id, "post reply dropped: connection closing");
            }
        }
        None => to.close(crate::hub::CloseReason::Code(ErrorCode::Internal)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use cove_wire::{Delivery, DeviceId, GroupId, InboxKind, Seq, ServerFrame};

    use super::encode_welcome;
    use crate::reply::encode_frame;
    use crate::store::Welcome;

    /// The frame built around the shared payload is byte for byte the codec's encoding of
    /// the whole entry, for payload lengths on both sides of each varint width.
    #[test]
    fn welcome_frames_match_the_codec() {
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000, 1_000_000] {
            let welcome = Welcome {
                kind: InboxKind::Welcome {
                    group: GroupId([7; 16]),
                    commit_seq: Seq(300),
                    sender: DeviceId(5),
                },
                received_at_ms: 1_700_000_000_000,
                payload: Arc::from(vec![0xab; len]),
            };
            for seq in [Seq(1), Seq(200), Seq(u64::MAX)] {
                let expected =
                    encode_frame(&ServerFrame::Deliver(Delivery::Inbox(welcome.entry(seq))));
                assert_eq!(encode_welcome(&welcome, seq), expected, "len {len}");
            }
        }
    }
}
