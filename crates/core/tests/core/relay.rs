//! A tiny in-process relay with the semantics of `server/src/store` (one commit per epoch,
//! ordered logs, cursors, KeyPackage claims, Welcomes into inboxes) and a network of
//! clients driven step by step, without sockets. Shared with `benches/mls.rs`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use cove_core::cove_store::Store;
use cove_core::{Client, Event, Output};
use cove_wire::{
    ClaimedKeyPackage, ClientFrame, Delivery, DeviceId, DeviceInfo, DeviceKey, EntryKind, Epoch,
    ErrorCode, ErrorReply, GroupEntry, GroupId, InboxEntry, InboxKind, Payload, PostKind, Reply,
    Request, Seq, ServerFrame, Stream, UserName,
};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

#[derive(Default)]
struct Group {
    epoch: u64,
    members: BTreeSet<DeviceId>,
    log: Vec<GroupEntry>,
}

/// The relay state.
#[derive(Default)]
pub struct Relay {
    users: BTreeMap<UserName, Vec<DeviceInfo>>,
    devices: HashMap<DeviceId, (UserName, DeviceKey)>,
    next_device: u64,
    key_packages: HashMap<DeviceId, (VecDeque<Payload>, Option<Payload>)>,
    groups: HashMap<GroupId, Group>,
    inbox: HashMap<DeviceId, Vec<InboxEntry>>,
    cursors: HashMap<(DeviceId, Stream), Seq>,
    /// Per connection slot: nonce and authenticated device.
    conns: HashMap<usize, ([u8; 32], Option<DeviceId>)>,
    nonce_counter: u8,
    /// Test hook: the directory presents these keys instead of the registered ones.
    pub tampered_keys: HashMap<DeviceId, DeviceKey>,
    /// How many commits were refused with StaleEpoch.
    pub stale_rejections: usize,
    /// Test hook: refuse this many application posts with `RateLimited` (retry after
    /// `rate_limit_retry_ms`) before accepting again.
    pub rate_limit_posts: usize,
    pub rate_limit_retry_ms: Option<u32>,
    /// Application posts accepted into a group log.
    pub app_posts: usize,
    /// Application posts refused with StaleEpoch (the real relay's rule: an application
    /// message is accepted in the group's current epoch or the one just before it).
    pub stale_app_rejections: usize,
}

impl Relay {
    /// A connection opens in `slot`: returns the challenge.
    pub fn connect(&mut self, slot: usize) -> ServerFrame {
        self.nonce_counter = self.nonce_counter.wrapping_add(1);
        let nonce = [self.nonce_counter; 32];
        self.conns.insert(slot, (nonce, None));
        ServerFrame::Challenge { version: 1, nonce }
    }

    pub fn disconnect(&mut self, slot: usize) {
        self.conns.remove(&slot);
    }

    fn slot_device(&self, slot: usize) -> Option<DeviceId> {
        self.conns.get(&slot).and_then(|c| c.1)
    }

    /// Handles one frame; returns frames per slot.
    pub fn handle(
        &mut self,
        slot: usize,
        frame: ClientFrame,
        now_ms: u64,
    ) -> Vec<(usize, ServerFrame)> {
        let ClientFrame::Request { id, body } = frame;
        let mut out = Vec::new();
        let result = self.request(slot, body, now_ms, &mut out);
        let mut frames = vec![(slot, ServerFrame::Response { id, result })];
        frames.extend(out);
        frames
    }

    fn verify(
        &self,
        slot: usize,
        user: &UserName,
        key: &DeviceKey,
        sig: &cove_wire::Signature,
    ) -> bool {
        let Some((nonce, _)) = self.conns.get(&slot) else {
            return false;
        };
        let msg = cove_wire::sign::auth_challenge_message(nonce, user, key);
        let Ok(vk) = VerifyingKey::from_bytes(&key.0) else {
            return false;
        };
        vk.verify(&msg, &Signature::from_bytes(&sig.0)).is_ok()
    }

    fn backlog(&self, device: DeviceId, slot: usize, out: &mut Vec<(usize, ServerFrame)>) {
        let c = self
            .cursors
            .get(&(device, Stream::Inbox))
            .copied()
            .unwrap_or_default();
        for e in self.inbox.get(&device).into_iter().flatten() {
            if e.seq > c {
                out.push((slot, ServerFrame::Deliver(Delivery::Inbox(e.clone()))));
            }
        }
        let mut ids: Vec<&GroupId> = self.groups.keys().collect();
        ids.sort();
        for gid in ids {
            let g = &self.groups[gid];
            if !g.members.contains(&device) {
                continue;
            }
            let c = self
                .cursors
                .get(&(device, Stream::Group(*gid)))
                .copied()
                .unwrap_or_default();
            for e in &g.log {
                if e.seq > c {
                    out.push((slot, ServerFrame::Deliver(Delivery::Group(e.clone()))));
                }
            }
        }
        out.push((slot, ServerFrame::BacklogDone));
    }

    fn slots_of(&self, device: DeviceId) -> Vec<usize> {
        self.conns
            .iter()
            .filter(|(_, c)| c.1 == Some(device))
            .map(|(s, _)| *s)
            .collect()
    }

    fn err(code: ErrorCode) -> ErrorReply {
        ErrorReply::new(code, format!("{code:?}"))
    }

    fn request(
        &mut self,
        slot: usize,
        body: Request,
        now_ms: u64,
        out: &mut Vec<(usize, ServerFrame)>,
    ) -> Result<Reply, ErrorReply> {
        match body {
            Request::Register {
                user,
                key,
                signature,
            } => {
                if !self.verify(slot, &user, &key, &signature) {
                    return Err(Self::err(ErrorCode::AuthenticationFailed));
                }
                if self.users.contains_key(&user) {
                    return Err(Self::err(ErrorCode::UserTaken));
                }
                self.next_device += 1;
                let device = DeviceId(self.next_device);
                self.users
                    .insert(user.clone(), vec![DeviceInfo { device, key }]);
                self.devices.insert(device, (user, key));
                if let Some(c) = self.conns.get_mut(&slot) {
                    c.1 = Some(device);
                }
                self.backlog(device, slot, out);
                Ok(Reply::Authenticated { device })
            }
            Request::Authenticate {
                user,
                device,
                signature,
            } => {
                let Some((u, key)) = self.devices.get(&device).cloned() else {
                    return Err(Self::err(ErrorCode::UnknownDevice));
                };
                if u != user || !self.verify(slot, &user, &key, &signature) {
                    return Err(Self::err(ErrorCode::AuthenticationFailed));
                }
                if let Some(c) = self.conns.get_mut(&slot) {
                    c.1 = Some(device);
                }
                self.backlog(device, slot, out);
                Ok(Reply::Authenticated { device })
            }
            Request::RegisterDevice {
                user,
                key,
                signature,
                authorizer,
                authorization,
            } => {
                if !self.verify(slot, &user, &key, &signature) {
                    return Err(Self::err(ErrorCode::AuthenticationFailed));
                }
                let Some((u, akey)) = self.devices.get(&authorizer).cloned() else {
                    return Err(Self::err(ErrorCode::UnknownDevice));
                };
                let msg = cove_wire::sign::add_device_message(&user, &key);
                let ok = u == user
                    && VerifyingKey::from_bytes(&akey.0).is_ok_and(|vk| {
                        vk.verify(&msg, &Signature::from_bytes(&authorization.0))
                            .is_ok()
                    });
                if !ok {
                    return Err(Self::err(ErrorCode::AuthenticationFailed));
                }
                self.next_device += 1;
                let device = DeviceId(self.next_device);
                self.users
                    .entry(user.clone())
                    .or_default()
                    .push(DeviceInfo { device, key });
                self.devices.insert(device, (user, key));
                if let Some(c) = self.conns.get_mut(&slot) {
                    c.1 = Some(device);
                }
                self.backlog(device, slot, out);
                Ok(Reply::Authenticated { device })
            }
            _ if self.slot_device(slot).is_none() => Err(Self::err(ErrorCode::Unauthenticated)),
            Request::ListDevices { user } => {
                let mut devices = self
                    .users
                    .get(&user)
                    .cloned()
                    .ok_or(Self::err(ErrorCode::UnknownUser))?;
                for d in &mut devices {
                    if let Some(k) = self.tampered_keys.get(&d.device) {
                        d.key = *k;
                    }
                }
                Ok(Reply::Devices {
                    user,
                    devices: devices.into(),
                })
            }
            Request::UploadKeyPackages {
                key_packages,
                last_resort,
            } => {
                let device = self.slot_device(slot).unwrap_or_default();
                let e = self.key_packages.entry(device).or_default();
                e.0.extend(key_packages.0);
                if last_resort.is_some() {
                    e.1 = last_resort;
                }
                Ok(Reply::KeyPackageStock {
                    remaining: e.0.len() as u32,
                    has_last_resort: e.1.is_some(),
                })
            }
            Request::KeyPackageStock => {
                let device = self.slot_device(slot).unwrap_or_default();
                let e = self.key_packages.entry(device).or_default();
                Ok(Reply::KeyPackageStock {
                    remaining: e.0.len() as u32,
                    has_last_resort: e.1.is_some(),
                })
            }
            Request::ClaimKeyPackages { user } => {
                let devices = self
                    .users
                    .get(&user)
                    .cloned()
                    .ok_or(Self::err(ErrorCode::UnknownUser))?;
                let mut kps = Vec::new();
                for d in devices {
                    let e = self.key_packages.entry(d.device).or_default();
                    if let Some(kp) = e.0.pop_front() {
                        kps.push(ClaimedKeyPackage {
                            device: d.device,
                            key_package: kp,
                            last_resort: false,
                        });
                    } else if let Some(kp) = e.1.clone() {
                        kps.push(ClaimedKeyPackage {
                            device: d.device,
                            key_package: kp,
                            last_resort: true,
                        });
                    }
                }
                Ok(Reply::KeyPackages {
                    user,
                    key_packages: kps.into(),
                })
            }
            Request::CreateGroup { group } => {
                if self.groups.contains_key(&group) {
                    return Err(Self::err(ErrorCode::GroupExists));
                }
                let device = self.slot_device(slot).unwrap_or_default();
                let mut g = Group::default();
                g.members.insert(device);
                self.groups.insert(group, g);
                Ok(Reply::GroupCreated)
            }
            Request::Post {
                group,
                epoch,
                kind,
                payload,
            } => {
                let device = self.slot_device(slot).unwrap_or_default();
                let g = self
                    .groups
                    .get_mut(&group)
                    .ok_or(Self::err(ErrorCode::UnknownGroup))?;
                if !g.members.contains(&device) {
                    return Err(Self::err(ErrorCode::NotMember));
                }
                if matches!(kind, PostKind::Application | PostKind::Proposal)
                    && epoch.0 != g.epoch
                    && Some(epoch.0) != g.epoch.checked_sub(1)
                {
                    self.stale_app_rejections += 1;
                    let mut e = Self::err(ErrorCode::StaleEpoch);
                    e.current_epoch = Some(Epoch(g.epoch));
                    return Err(e);
                }
                if matches!(kind, PostKind::Application) {
                    if self.rate_limit_posts > 0 {
                        self.rate_limit_posts -= 1;
                        let mut e = Self::err(ErrorCode::RateLimited);
                        e.retry_after_ms = self.rate_limit_retry_ms;
                        return Err(e);
                    }
                    self.app_posts += 1;
                }
                let seq = Seq(g.log.len() as u64 + 1);
                let mut removed_now = Vec::new();
                let mut welcomes = Vec::new();
                let entry_kind = match kind {
                    PostKind::Application => EntryKind::Application,
                    PostKind::Proposal => EntryKind::Proposal,
                    PostKind::Commit {
                        added,
                        removed,
                        welcome,
                    } => {
                        if epoch.0 != g.epoch {
                            self.stale_rejections += 1;
                            let mut e = Self::err(ErrorCode::StaleEpoch);
                            e.current_epoch = Some(Epoch(g.epoch));
                            return Err(e);
                        }
                        g.epoch += 1;
                        for d in removed.iter() {
                            g.members.remove(d);
                            removed_now.push(*d);
                        }
                        for d in added.iter() {
                            g.members.insert(*d);
                            self.cursors.insert((*d, Stream::Group(group)), seq);
                            if let Some(w) = &welcome {
                                welcomes.push((*d, w.clone()));
                            }
                        }
                        EntryKind::Commit { added, removed }
                    }
                };
                let entry = GroupEntry {
                    group,
                    seq,
                    epoch,
                    sender: device,
                    kind: entry_kind,
                    received_at_ms: now_ms,
                    payload,
                };
                g.log.push(entry.clone());
                let mut targets: Vec<DeviceId> = g.members.iter().copied().collect();
                targets.extend(removed_now);
                for (d, w) in welcomes {
                    let inbox = self.inbox.entry(d).or_default();
                    let ie = InboxEntry {
                        seq: Seq(inbox.len() as u64 + 1),
                        kind: InboxKind::Welcome {
                            group,
                            commit_seq: seq,
                            sender: device,
                        },
                        received_at_ms: now_ms,
                        payload: w,
                    };
                    inbox.push(ie.clone());
                    for s in self.slots_of(d) {
                        out.push((s, ServerFrame::Deliver(Delivery::Inbox(ie.clone()))));
                    }
                }
                for d in targets {
                    for s in self.slots_of(d) {
                        out.push((s, ServerFrame::Deliver(Delivery::Group(entry.clone()))));
                    }
                }
                Ok(Reply::Posted { seq })
            }
            Request::Fetch {
                group,
                after,
                limit,
            } => {
                let device = self.slot_device(slot).unwrap_or_default();
                let g = self
                    .groups
                    .get(&group)
                    .ok_or(Self::err(ErrorCode::UnknownGroup))?;
                if !g.members.contains(&device) {
                    return Err(Self::err(ErrorCode::NotMember));
                }
                let entries: Vec<GroupEntry> = g
                    .log
                    .iter()
                    .filter(|e| e.seq > after)
                    .take(limit as usize)
                    .cloned()
                    .collect();
                Ok(Reply::Entries {
                    entries: entries.into(),
                })
            }
            Request::Ack { stream, seq } => {
                let device = self.slot_device(slot).unwrap_or_default();
                if let Stream::Group(g) = stream {
                    let member = self
                        .groups
                        .get(&g)
                        .is_some_and(|g| g.members.contains(&device));
                    if !member {
                        return Err(Self::err(ErrorCode::NotMember));
                    }
                }
                let c = self.cursors.entry((device, stream)).or_default();
                if seq > *c {
                    *c = seq;
                }
                Ok(Reply::Acked)
            }
            Request::ListGroups => Ok(Reply::Groups {
                groups: Vec::new().into(),
            }),
            Request::Ping => Ok(Reply::Pong),
            // Requests this test relay does not serve (TURN credentials, later additions).
            #[allow(unreachable_patterns)]
            _ => Err(Self::err(ErrorCode::InvalidRequest)),
        }
    }

    /// Registers a user with one device directly (benchmark setup for members that are not
    /// full clients).
    pub fn register_raw(&mut self, user: UserName, key: DeviceKey) -> DeviceId {
        self.next_device += 1;
        let device = DeviceId(self.next_device);
        self.users
            .insert(user.clone(), vec![DeviceInfo { device, key }]);
        self.devices.insert(device, (user, key));
        device
    }

    /// Stores a KeyPackage for a device directly.
    pub fn upload_raw(&mut self, device: DeviceId, key_package: Payload) {
        self.key_packages
            .entry(device)
            .or_default()
            .0
            .push_back(key_package);
    }

    /// A device's inbox (for members driven by bare openmls in tests).
    pub fn inbox_of(&self, device: DeviceId) -> Vec<InboxEntry> {
        self.inbox.get(&device).cloned().unwrap_or_default()
    }

    /// Takes away a device's normal KeyPackages (as if others had claimed them); returns
    /// how many there were. Its last-resort KeyPackage stays.
    pub fn drain_stock(&mut self, device: DeviceId) -> usize {
        self.key_packages
            .get_mut(&device)
            .map(|k| k.0.drain(..).count())
            .unwrap_or(0)
    }

    /// Normal KeyPackages a device has on file.
    pub fn stock(&self, device: DeviceId) -> usize {
        self.key_packages
            .get(&device)
            .map(|k| k.0.len())
            .unwrap_or(0)
    }

    /// The cursor of a device in a stream (for assertions).
    pub fn cursor(&self, device: DeviceId, stream: Stream) -> Seq {
        self.cursors
            .get(&(device, stream))
            .copied()
            .unwrap_or_default()
    }

    /// Injects an entry into a group log as if `sender` had posted it (hostile tests).
    pub fn inject(
        &mut self,
        group: GroupId,
        sender: DeviceId,
        payload: Vec<u8>,
        now_ms: u64,
    ) -> Vec<(usize, ServerFrame)> {
        let g = self.groups.get_mut(&group).expect("group");
        let seq = Seq(g.log.len() as u64 + 1);
        let entry = GroupEntry {
            group,
            seq,
            epoch: Epoch(g.epoch),
            sender,
            kind: EntryKind::Application,
            received_at_ms: now_ms,
            payload: Payload(payload),
        };
        g.log.push(entry.clone());
        let members: Vec<DeviceId> = g.members.iter().copied().collect();
        let mut out = Vec::new();
        for d in members {
            for s in self.slots_of(d) {
                out.push((s, ServerFrame::Deliver(Delivery::Group(entry.clone()))));
            }
        }
        out
    }
}

/// One simulated device.
pub struct Node<S: Store> {
    pub client: Option<Client<S>>,
    pub inbound: VecDeque<ServerFrame>,
    pub events: Vec<Event>,
    pub connected: bool,
    /// While true, inbound frames are kept, not handed to the client.
    pub hold: bool,
}

/// Relay plus devices; time advances 1 ms per step.
pub struct Net<S: Store> {
    pub relay: Relay,
    pub nodes: Vec<Node<S>>,
    pub now_ms: u64,
}

impl<S: Store> Net<S> {
    pub fn new() -> Self {
        Net {
            relay: Relay::default(),
            nodes: Vec::new(),
            now_ms: 1_700_000_000_000,
        }
    }

    /// Adds a device and connects it; returns its slot.
    pub fn add(&mut self, client: Client<S>) -> usize {
        self.nodes.push(Node {
            client: Some(client),
            inbound: VecDeque::new(),
            events: Vec::new(),
            connected: false,
            hold: false,
        });
        let slot = self.nodes.len() - 1;
        self.connect(slot);
        slot
    }

    pub fn connect(&mut self, slot: usize) {
        let ch = self.relay.connect(slot);
        let node = &mut self.nodes[slot];
        node.connected = true;
        node.inbound.clear();
        if let Some(c) = node.client.as_mut() {
            c.handle_connected(self.now_ms);
        }
        node.inbound.push_back(ch);
    }

    pub fn disconnect(&mut self, slot: usize) {
        self.relay.disconnect(slot);
        let node = &mut self.nodes[slot];
        node.connected = false;
        node.inbound.clear();
        if let Some(c) = node.client.as_mut() {
            c.handle_disconnected();
        }
    }

    pub fn client(&mut self, slot: usize) -> &mut Client<S> {
        self.nodes[slot].client.as_mut().expect("client present")
    }

    /// Runs until nothing moves.
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            if !self.step() {
                return;
            }
        }
        panic!("network did not settle");
    }

    /// One round: every node handles its inbound frames, its outputs go to the relay.
    pub fn step(&mut self) -> bool {
        let mut moved = false;
        self.now_ms += 1;
        for slot in 0..self.nodes.len() {
            let now = self.now_ms;
            let node = &mut self.nodes[slot];
            let Some(client) = node.client.as_mut() else {
                continue;
            };
            if !node.hold {
                while let Some(f) = node.inbound.pop_front() {
                    moved = true;
                    if let Err(e) = client.handle_frame(now, f) {
                        node.events
                            .push(Event::Warning(format!("handle error: {e}")));
                    }
                }
            }
            let mut sends = Vec::new();
            while let Some(o) = client.poll_output() {
                moved = true;
                match o {
                    Output::Send(f) => sends.push(f),
                    Output::Event(e) => node.events.push(e),
                }
            }
            if node.connected {
                for f in sends {
                    for (s, sf) in self.relay.handle(slot, f, now) {
                        if self.nodes[s].connected {
                            self.nodes[s].inbound.push_back(sf);
                        }
                    }
                }
            }
        }
        moved
    }

    /// Delivers frames produced outside the normal flow.
    pub fn deliver(&mut self, frames: Vec<(usize, ServerFrame)>) {
        for (s, f) in frames {
            if self.nodes[s].connected {
                self.nodes[s].inbound.push_back(f);
            }
        }
    }

    pub fn take_events(&mut self, slot: usize) -> Vec<Event> {
        std::mem::take(&mut self.nodes[slot].events)
    }
}
