//! Call signalling inside MLS: the messages ([`CallMessage`]) and a sans-IO state machine
//! ([`Calls`]) that decides who rings, who dials whom and which signal goes to which
//! media session. See `PROTOCOL.md`, "Calls".
//!
//! The media engine (`cove-media`, driven by the shell) produces and consumes the SDP and
//! ICE values; this module only carries them, addressed to one device, inside ordinary MLS
//! application messages of the group, so the relay can neither read nor alter them, and
//! the DTLS fingerprint inside an offer or answer is signed by the sender's MLS credential.
//!
//! ```text
//! caller: calls.dial(..)          -> Send(Offer to every other member device)   [ringing]
//! callee: Incoming{call}          -> calls.answer(call)  -> ApplySignal(offer)  [active]
//!         media answer            -> Send(Answer to the caller)
//! caller: Answer                  -> ApplySignal(answer)                        [active]
//! mesh:   when X learns that Y joined too, the one with the lower leaf index dials the other
//! end:    calls.hang_up(call)     -> Send(HangUp) ; peers: PeerLeft, Ended when alone
//! ```
//!
//! Signalling is ignored when it is addressed to another device, comes from a device that
//! is no longer a member of the group, is older than [`MAX_SIGNAL_AGE_MS`] (e.g. replayed
//! from the backlog long after the call), or belongs to a call this device is not in (except
//! offers, which ring).

use std::collections::{BTreeMap, HashMap};

use cove_wire::{DeviceId, GroupId, UserName};

use crate::content::Content;
use crate::types::ReceivedContent;

pub use crate::call_signal::{CallId, CallMessage};
pub use cove_wire::call::{
    CallSignal, CallSignalError, MAX_CANDIDATE_BYTES, MAX_FINGERPRINT_BYTES, MAX_SDP_BYTES,
};

/// Signalling older than this (by the sender's clock) is ignored: a call offer found in the
/// backlog after a minute does not ring.
pub const MAX_SIGNAL_AGE_MS: u64 = 60_000;
/// Most participants of one call (full mesh).
pub const MAX_PARTICIPANTS: usize = 6;

/// A member device of a group, with its MLS leaf index (see `Client::group_members`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// MLS leaf index in the current epoch.
    pub leaf: u32,
    /// The user.
    pub user: UserName,
    /// The device.
    pub device: DeviceId,
}

/// A remote participant's media session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    /// The user.
    pub user: UserName,
    /// The device.
    pub device: DeviceId,
    /// Its MLS leaf index (the SFrame member index).
    pub leaf: u32,
    /// The media layer's name of this peer (also in recording file names): the user name,
    /// or `user-device` when the user has several devices in the group.
    pub name: String,
}

/// Where a call stands on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallPhase {
    /// We dialled; nobody answered yet.
    Dialling,
    /// An offer arrived; we have not answered.
    Ringing,
    /// At least one peer answered (or we answered).
    Active,
    /// Over.
    Ended,
}

/// What the shell must do (returned by every [`Calls`] method).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallAction {
    /// Send this message to the group (`Client::send_content(now, group, Content::Call(..))`).
    Send {
        /// The group.
        group: GroupId,
        /// The message.
        message: CallMessage,
    },
    /// An incoming call: ring, then [`Calls::answer`] or [`Calls::decline`].
    Incoming {
        /// The call.
        call_id: CallId,
        /// The group.
        group: GroupId,
        /// The caller.
        from: Peer,
        /// Whether the caller sends video.
        video: bool,
    },
    /// Create a media session with `peer` and make an offer (`Call::dial`); send it with
    /// [`Calls::local_signal`].
    Dial {
        /// The call.
        call_id: CallId,
        /// Whom.
        peer: Peer,
    },
    /// Hand a signal to the media session of `peer` (`Call::apply_signal`).
    Apply {
        /// The call.
        call_id: CallId,
        /// From whom.
        peer: Peer,
        /// What.
        signal: CallSignal,
    },
    /// `peer` answered (its description follows as [`CallAction::Apply`]).
    Answered {
        /// The call.
        call_id: CallId,
        /// Who.
        peer: Peer,
    },
    /// `peer` left, declined or is busy: close its session (`Call::hang_up`).
    PeerLeft {
        /// The call.
        call_id: CallId,
        /// Who.
        peer: Peer,
        /// Why (`HangUp`, `Busy` or `Decline`).
        reason: CallSignal,
    },
    /// Nobody is left in the call (everyone hung up or declined).
    Ended {
        /// The call.
        call_id: CallId,
    },
}

struct CallState {
    group: GroupId,
    phase: CallPhase,
    /// Remote participants in the call (answered or dialled us), by device.
    peers: BTreeMap<DeviceId, Peer>,
    /// Devices rung and not yet answered or declined.
    pending: BTreeMap<DeviceId, Peer>,
    /// The offer waiting for our answer (callee side).
    offer: Option<(Peer, CallSignal)>,
    /// Other participants seen answering someone else (for mesh dialling).
    joined: BTreeMap<DeviceId, Peer>,
    /// Our leaf index when the call started.
    my_leaf: Option<u32>,
}

/// Why a call command ([`Calls::dial`], [`Calls::answer`]) cannot be carried out. The
/// caller is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallCommandError {
    /// The group has no other member device to call.
    #[error("nobody else is in this group")]
    Alone,
    /// The group is larger than a mesh call allows.
    #[error("a call has at most {MAX_PARTICIPANTS} participants; this group has {members}")]
    TooManyParticipants {
        /// Member devices of the group, this one included.
        members: usize,
    },
    /// No call with that id.
    #[error("no such call")]
    UnknownCall,
    /// The call is not ringing (already answered, declined or ended).
    #[error("the call is not ringing")]
    NotRinging,
    /// The call rang without an offer to answer.
    #[error("no offer")]
    NoOffer,
}

/// The call-signalling state machine of one device (sans-IO; see the module docs).
pub struct Calls {
    me: DeviceId,
    calls: HashMap<CallId, CallState>,
}

impl Calls {
    /// A state machine for this device.
    pub fn new(me: DeviceId) -> Self {
        Calls {
            me,
            calls: HashMap::new(),
        }
    }

    /// The phase of a call, if known.
    pub fn phase(&self, call_id: &CallId) -> Option<CallPhase> {
        self.calls.get(call_id).map(|c| c.phase)
    }

    /// The group of a call.
    pub fn group(&self, call_id: &CallId) -> Option<GroupId> {
        self.calls.get(call_id).map(|c| c.group)
    }

    /// The remote participants of a call.
    pub fn peers(&self, call_id: &CallId) -> Vec<Peer> {
        self.calls
            .get(call_id)
            .map(|c| c.peers.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether any call is dialling, ringing or active.
    pub fn busy(&self) -> bool {
        self.calls.values().any(|c| c.phase != CallPhase::Ended)
    }

    /// Starts a call in `group` with its current `members`: one [`CallAction::Dial`] per
    /// other member device (at most [`MAX_PARTICIPANTS`] - 1).
    pub fn dial(
        &mut self,
        call_id: CallId,
        group: GroupId,
        members: &[GroupMember],
    ) -> Result<Vec<CallAction>, CallCommandError> {
        let others: Vec<Peer> = members
            .iter()
            .filter(|m| m.device != self.me)
            .map(|m| peer_of(m, members))
            .collect();
        if others.is_empty() {
            return Err(CallCommandError::Alone);
        }
        if others.len() + 1 > MAX_PARTICIPANTS {
            return Err(CallCommandError::TooManyParticipants {
                members: others.len() + 1,
            });
        }
        let actions = others
            .iter()
            .map(|p| CallAction::Dial {
                call_id,
                peer: p.clone(),
            })
            .collect();
        self.calls.insert(
            call_id,
            CallState {
                group,
                phase: CallPhase::Dialling,
                peers: BTreeMap::new(),
                pending: others.into_iter().map(|p| (p.device, p)).collect(),
                offer: None,
                joined: BTreeMap::new(),
                my_leaf: members.iter().find(|m| m.device == self.me).map(|m| m.leaf),
            },
        );
        Ok(actions)
    }

    /// Wraps a signal the media layer produced for `peer` into the message to send.
    pub fn local_signal(
        &self,
        call_id: CallId,
        peer: &Peer,
        signal: CallSignal,
    ) -> Option<CallAction> {
        let call = self.calls.get(&call_id)?;
        if call.phase == CallPhase::Ended {
            return None;
        }
        Some(CallAction::Send {
            group: call.group,
            message: CallMessage {
                call_id,
                to: Some(peer.device),
                signal,
            },
        })
    }

    /// Answers a ringing call: the offer goes to the media layer (whose answer the shell
    /// sends with [`Calls::local_signal`]).
    pub fn answer(&mut self, call_id: CallId) -> Result<Vec<CallAction>, CallCommandError> {
        let call = self
            .calls
            .get_mut(&call_id)
            .ok_or(CallCommandError::UnknownCall)?;
        if call.phase != CallPhase::Ringing {
            return Err(CallCommandError::NotRinging);
        }
        let (peer, offer) = call.offer.take().ok_or(CallCommandError::NoOffer)?;
        call.phase = CallPhase::Active;
        call.peers.insert(peer.device, peer.clone());
        let mut out = vec![CallAction::Apply {
            call_id,
            peer,
            signal: offer,
        }];
        // Participants that joined before us: the lower leaf index dials.
        let joined: Vec<Peer> = std::mem::take(&mut call.joined).into_values().collect();
        for other in joined {
            if call.peers.contains_key(&other.device) || call.peers.len() + 1 >= MAX_PARTICIPANTS {
                continue;
            }
            if call.my_leaf.is_some_and(|l| l < other.leaf) {
                call.peers.insert(other.device, other.clone());
                out.push(CallAction::Dial {
                    call_id,
                    peer: other,
                });
            }
        }
        Ok(out)
    }

    /// Declines a ringing call.
    pub fn decline(&mut self, call_id: CallId) -> Vec<CallAction> {
        self.end_local(call_id, CallSignal::Decline)
    }

    /// Leaves a call: tells everyone and forgets it.
    pub fn hang_up(&mut self, call_id: CallId) -> Vec<CallAction> {
        self.end_local(call_id, CallSignal::HangUp)
    }

    fn end_local(&mut self, call_id: CallId, why: CallSignal) -> Vec<CallAction> {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return Vec::new();
        };
        if call.phase == CallPhase::Ended {
            return Vec::new();
        }
        call.phase = CallPhase::Ended;
        call.peers.clear();
        call.pending.clear();
        call.offer = None;
        vec![CallAction::Send {
            group: call.group,
            message: CallMessage {
                call_id,
                to: None,
                signal: why,
            },
        }]
    }

    /// A member left the group (removed): drops it from every call of that group.
    pub fn member_removed(&mut self, group: GroupId, device: DeviceId) -> Vec<CallAction> {
        let mut out = Vec::new();
        for (id, call) in &mut self.calls {
            if call.group != group {
                continue;
            }
            call.pending.remove(&device);
            if let Some(peer) = call.peers.remove(&device) {
                out.push(CallAction::PeerLeft {
                    call_id: *id,
                    peer,
                    reason: CallSignal::HangUp,
                });
            }
        }
        out
    }

    /// Handles received content. `members` are the group's current members (signalling
    /// from anyone else is ignored); `now_ms` is the local clock.
    pub fn handle(
        &mut self,
        now_ms: u64,
        received: &ReceivedContent,
        members: &[GroupMember],
    ) -> Vec<CallAction> {
        let Content::Call(msg) = &received.content else {
            return Vec::new();
        };
        if received.from_device == self.me
            || msg.validate().is_err()
            || now_ms.saturating_sub(received.sent_at_ms) > MAX_SIGNAL_AGE_MS
        {
            return Vec::new();
        }
        let Some(from) = members
            .iter()
            .find(|m| m.device == received.from_device && m.user == received.from)
            .map(|m| peer_of(m, members))
        else {
            return Vec::new(); // not (or no longer) a member
        };
        let for_me = msg.to.is_none_or(|d| d == self.me);
        let call_id = msg.call_id;
        let me = self.me;
        let my_leaf = members.iter().find(|m| m.device == me).map(|m| m.leaf);
        match (&msg.signal, self.calls.get_mut(&call_id)) {
            (CallSignal::Offer { video, .. }, None) if for_me => {
                if self.busy() {
                    return vec![CallAction::Send {
                        group: received.group,
                        message: CallMessage {
                            call_id,
                            to: Some(from.device),
                            signal: CallSignal::Busy,
                        },
                    }];
                }
                let video = *video;
                self.calls.insert(
                    call_id,
                    CallState {
                        group: received.group,
                        phase: CallPhase::Ringing,
                        peers: BTreeMap::new(),
                        pending: BTreeMap::new(),
                        offer: Some((from.clone(), msg.signal.clone())),
                        joined: BTreeMap::new(),
                        my_leaf,
                    },
                );
                vec![CallAction::Incoming {
                    call_id,
                    group: received.group,
                    from,
                    video,
                }]
            }
            (_, None) => Vec::new(),
            (_, Some(call)) if call.group != received.group || call.phase == CallPhase::Ended => {
                Vec::new()
            }
            (CallSignal::Offer { .. }, Some(call)) if for_me => {
                // A mesh peer dials us (or a repeated offer).
                if call.phase == CallPhase::Ringing {
                    return Vec::new(); // answer the first offer first
                }
                call.peers.insert(from.device, from.clone());
                vec![CallAction::Apply {
                    call_id,
                    peer: from,
                    signal: msg.signal.clone(),
                }]
            }
            (CallSignal::Answer { .. }, Some(call)) => {
                let mut out = Vec::new();
                if for_me {
                    call.pending.remove(&from.device);
                    call.phase = CallPhase::Active;
                    call.peers.insert(from.device, from.clone());
                    out.push(CallAction::Answered {
                        call_id,
                        peer: from.clone(),
                    });
                    out.push(CallAction::Apply {
                        call_id,
                        peer: from,
                        signal: msg.signal.clone(),
                    });
                } else if call.phase != CallPhase::Active {
                    // Not answered yet: remember who is in, for when we answer.
                    if call.joined.len() < MAX_PARTICIPANTS {
                        call.joined.insert(from.device, from);
                    }
                } else if !call.peers.contains_key(&from.device)
                    && call.peers.len() + 1 < MAX_PARTICIPANTS
                {
                    // Another participant joined: the lower leaf index dials.
                    if my_leaf.is_some_and(|l| l < from.leaf) {
                        call.peers.insert(from.device, from.clone());
                        out.push(CallAction::Dial {
                            call_id,
                            peer: from,
                        });
                    }
                }
                out
            }
            (CallSignal::Candidate { .. }, Some(call)) if for_me => {
                if call.peers.contains_key(&from.device) {
                    vec![CallAction::Apply {
                        call_id,
                        peer: from,
                        signal: msg.signal.clone(),
                    }]
                } else {
                    Vec::new()
                }
            }
            (CallSignal::HangUp | CallSignal::Busy | CallSignal::Decline, Some(call)) if for_me => {
                let mut out = Vec::new();
                let was_peer = call.peers.remove(&from.device).is_some();
                let was_pending = call.pending.remove(&from.device).is_some();
                let was_caller = call
                    .offer
                    .as_ref()
                    .is_some_and(|(p, _)| p.device == from.device);
                if was_peer || was_pending || was_caller {
                    out.push(CallAction::PeerLeft {
                        call_id,
                        peer: from,
                        reason: msg.signal.clone(),
                    });
                }
                if call.peers.is_empty() && call.pending.is_empty() {
                    call.phase = CallPhase::Ended;
                    call.offer = None;
                    out.push(CallAction::Ended { call_id });
                }
                out
            }
            _ => Vec::new(),
        }
    }
}

fn peer_of(m: &GroupMember, members: &[GroupMember]) -> Peer {
    let devices = members.iter().filter(|o| o.user == m.user).count();
    Peer {
        user: m.user.clone(),
        device: m.device,
        leaf: m.leaf,
        name: if devices > 1 {
            format!("{}-{}", m.user, m.device)
        } else {
            m.user.to_string()
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::MessageId;
    use cove_wire::Seq;

    fn member(leaf: u32, user: &str, device: u64) -> GroupMember {
        GroupMember {
            leaf,
            user: UserName::new(user).unwrap(),
            device: DeviceId(device),
        }
    }

    fn received(from: &GroupMember, sent_at_ms: u64, message: CallMessage) -> ReceivedContent {
        ReceivedContent {
            group: GroupId([1; 16]),
            from: from.user.clone(),
            from_device: from.device,
            sender_leaf: from.leaf,
            id: MessageId([0; 16]),
            sent_at_ms,
            seq: Seq(1),
            content: Content::Call(message),
        }
    }

    fn offer() -> CallSignal {
        CallSignal::Offer {
            sdp: "v=0".into(),
            fingerprint: "sha-256 AA".into(),
            video: false,
        }
    }

    fn sent(actions: &[CallAction]) -> Vec<&CallMessage> {
        actions
            .iter()
            .filter_map(|a| match a {
                CallAction::Send { message, .. } => Some(message),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_to_one_call_rings_answers_and_ends() {
        let (a, b) = (member(0, "alice", 1), member(1, "bob", 2));
        let members = [a.clone(), b.clone()];
        let id = CallId([7; 16]);
        let group = GroupId([1; 16]);
        let mut alice = Calls::new(a.device);
        let mut bob = Calls::new(b.device);
        let dial = alice.dial(id, group, &members).unwrap();
        assert!(matches!(&dial[..], [CallAction::Dial { peer, .. }] if peer.device == b.device));
        let peer_b = peer_of(&b, &members);
        let Some(CallAction::Send { message, .. }) = alice.local_signal(id, &peer_b, offer())
        else {
            panic!("no message")
        };
        assert_eq!(message.to, Some(b.device));
        let rang = bob.handle(1000, &received(&a, 1000, message), &members);
        assert!(
            matches!(&rang[..], [CallAction::Incoming { from, .. }] if from.device == a.device)
        );
        assert_eq!(bob.phase(&id), Some(CallPhase::Ringing));
        let applied = bob.answer(id).unwrap();
        assert!(matches!(
            &applied[..],
            [CallAction::Apply {
                signal: CallSignal::Offer { .. },
                ..
            }]
        ));
        let answer = CallSignal::Answer {
            sdp: "v=0".into(),
            fingerprint: "sha-256 BB".into(),
        };
        let Some(CallAction::Send { message, .. }) =
            bob.local_signal(id, &peer_of(&a, &members), answer)
        else {
            panic!("no answer")
        };
        let got = alice.handle(1100, &received(&b, 1100, message), &members);
        assert!(matches!(
            &got[..],
            [CallAction::Answered { .. }, CallAction::Apply { .. }]
        ));
        assert_eq!(alice.phase(&id), Some(CallPhase::Active));
        let bye = bob.hang_up(id);
        assert_eq!(sent(&bye)[0].signal, CallSignal::HangUp);
        let got = alice.handle(1200, &received(&b, 1200, sent(&bye)[0].clone()), &members);
        assert!(matches!(
            &got[..],
            [CallAction::PeerLeft { .. }, CallAction::Ended { .. }]
        ));
        assert!(!alice.busy());
    }

    #[test]
    fn stale_foreign_and_non_member_signalling_is_ignored() {
        let (a, b, c) = (
            member(0, "alice", 1),
            member(1, "bob", 2),
            member(2, "carol", 3),
        );
        let id = CallId([7; 16]);
        let msg = |to| CallMessage {
            call_id: id,
            to: Some(to),
            signal: offer(),
        };
        let mut bob = Calls::new(b.device);
        let members = [a.clone(), b.clone()];
        // Too old (replayed from the backlog).
        assert!(
            bob.handle(200_000, &received(&a, 1000, msg(b.device)), &members)
                .is_empty()
        );
        // For another device.
        assert!(
            bob.handle(1000, &received(&a, 1000, msg(c.device)), &members)
                .is_empty()
        );
        // From a non-member (removed).
        assert!(
            bob.handle(1000, &received(&c, 1000, msg(b.device)), &members)
                .is_empty()
        );
        // Oversized SDP.
        let big = CallMessage {
            call_id: id,
            to: Some(b.device),
            signal: CallSignal::Offer {
                sdp: "x".repeat(MAX_SDP_BYTES + 1),
                fingerprint: String::new(),
                video: false,
            },
        };
        assert!(
            bob.handle(1000, &received(&a, 1000, big), &members)
                .is_empty()
        );
        // A valid one rings; a second call while ringing gets Busy.
        assert_eq!(
            bob.handle(1000, &received(&a, 1000, msg(b.device)), &members)
                .len(),
            1
        );
        let other = CallMessage {
            call_id: CallId([8; 16]),
            ..msg(b.device)
        };
        let busy = bob.handle(1000, &received(&a, 1000, other), &members);
        assert_eq!(sent(&busy)[0].signal, CallSignal::Busy);
    }

    #[test]
    fn mesh_lower_leaf_dials_later_joiner() {
        let (a, b, c) = (
            member(0, "alice", 1),
            member(1, "bob", 2),
            member(2, "carol", 3),
        );
        let members = [a.clone(), b.clone(), c.clone()];
        let id = CallId([9; 16]);
        let group = GroupId([1; 16]);
        let mut alice = Calls::new(a.device);
        assert_eq!(alice.dial(id, group, &members).unwrap().len(), 2);
        let mut bob = Calls::new(b.device);
        let mut carol = Calls::new(c.device);
        for (callee, m) in [(&mut bob, &b), (&mut carol, &c)] {
            let o = CallMessage {
                call_id: id,
                to: Some(m.device),
                signal: offer(),
            };
            callee.handle(10, &received(&a, 10, o), &members);
            callee.answer(id).unwrap();
        }
        // Carol's answer to Alice, seen by Bob: Bob (leaf 1) < Carol (leaf 2) dials her.
        let answer = CallMessage {
            call_id: id,
            to: Some(a.device),
            signal: CallSignal::Answer {
                sdp: "v=0".into(),
                fingerprint: "f".into(),
            },
        };
        let got = bob.handle(20, &received(&c, 20, answer.clone()), &members);
        assert!(matches!(&got[..], [CallAction::Dial { peer, .. }] if peer.device == c.device));
        // Bob's answer seen by Carol: she does not dial (higher leaf).
        let from_bob = CallMessage { ..answer };
        assert!(
            carol
                .handle(20, &received(&b, 20, from_bob), &members)
                .is_empty()
        );
        // The other order: Carol's answer reaches Bob while he still rings; he dials her
        // when he answers.
        let mut late_bob = Calls::new(b.device);
        let o = CallMessage {
            call_id: id,
            to: Some(b.device),
            signal: offer(),
        };
        late_bob.handle(10, &received(&a, 10, o), &members);
        let carols = CallMessage {
            call_id: id,
            to: Some(a.device),
            signal: CallSignal::Answer {
                sdp: "v=0".into(),
                fingerprint: "f".into(),
            },
        };
        assert!(
            late_bob
                .handle(20, &received(&c, 20, carols), &members)
                .is_empty()
        );
        let got = late_bob.answer(id).unwrap();
        assert!(
            matches!(&got[..], [CallAction::Apply { .. }, CallAction::Dial { peer, .. }] if peer.device == c.device)
        );
        // Removing Carol from the group drops her from Bob's call.
        let left = bob.member_removed(group, c.device);
        assert!(matches!(&left[..], [CallAction::PeerLeft { .. }]));
    }
}
