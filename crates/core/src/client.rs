//! The client state machine.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use cove_store::{
    GroupRecord, Identity, Membership, OutboxItem, PinnedDevice, Store, StoreError, StoredMessage,
};
use cove_wire::{
    BoundedVec, ClaimedKeyPackage, ClientFrame, Delivery, DeviceId, DeviceInfo, DeviceKey,
    EntryKind, Epoch, ErrorCode, ErrorReply, GroupEntry, GroupId, InboxEntry, InboxKind, Payload,
    PostKind, Reply, Request, RequestId, Seq, ServerFrame, Signature, Stream, UserName,
};
use ed25519_dalek::{Signer as _, SigningKey};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, Credential, CredentialWithKey, Extension,
    ExtensionType, Extensions, GroupId as MlsGroupId, KeyPackage, KeyPackageIn, LeafNodeIndex,
    LeafNodeParameters, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn,
    MlsMessageIn, ProcessedMessageContent, ProtocolVersion, Sender, StagedWelcome,
    UnknownExtension,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::types::SignatureScheme;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use crate::content::{Content, ENVELOPE_VERSION, Envelope, MAX_TEXT_BYTES};
use crate::error::{
    CommitBuildError, CredentialError, EntryError, KeyPackageBuildError, KeyPackageError,
    OwnDevicesSkipped, WelcomeError,
};
use crate::provider::CoveProvider;
use crate::types::*;

/// The one ciphersuite Cove uses.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Private-use group context extension carrying the group name (UTF-8).
pub const GROUP_NAME_EXTENSION: u16 = 0xf0c0;
/// KeyPackages uploaded per batch.
pub const KEY_PACKAGE_BATCH: usize = 50;
/// Top up when the relay holds fewer than this many.
pub const KEY_PACKAGE_LOW_WATER: u32 = 10;
/// Longest group name, bytes.
pub const MAX_GROUP_NAME: usize = 128;
/// Past epochs whose keys are kept to decrypt late application messages.
pub const MAX_PAST_EPOCHS: usize = 8;
/// How often a commit is rebuilt after losing a race before giving up.
pub const MAX_COMMIT_RETRIES: u32 = 20;
/// Most parked (future-epoch or not-yet-joined) entries kept per group.
pub const MAX_PENDING_PER_GROUP: usize = 10_000;
/// Most entries asked for per Fetch.
const FETCH_LIMIT: u32 = 100;
/// First delay before resending a post the relay refused as retryable (when it gave no
/// `retry_after_ms`); doubles per attempt up to [`MAX_RETRY_DELAY_MS`].
pub const MIN_RETRY_DELAY_MS: u64 = 500;
/// Longest delay before resending a post refused as retryable.
pub const MAX_RETRY_DELAY_MS: u64 = 30_000;

/// A Cove device: the sans-IO client core. See the crate docs for the main loop.
pub struct Client<S: Store> {
    provider: CoveProvider<S>,
    signer: SignatureKeyPair,
    signing_key: SigningKey,
    identity: Identity,
    /// Loaded MLS groups of which this device is an active member.
    groups: HashMap<GroupId, MlsGroup>,
    /// Group records (names, membership), cached from the store.
    records: BTreeMap<GroupId, GroupRecord>,
    conn: Conn,
    next_request: u32,
    requests: HashMap<RequestId, Pending>,
    next_op: u64,
    ops: BTreeMap<OpId, Op>,
    /// Outbox items in flight: local id -> the op waiting for it (if any).
    outbox_ops: HashMap<u64, OpId>,
    outputs: VecDeque<Output>,
    key_package_request_in_flight: bool,
    /// Users whose keys were first seen in MLS (a Welcome or another member's commit) and
    /// are to be checked against the relay's directory.
    to_verify: BTreeSet<UserName>,
    /// Outbox items refused with a retryable error: local id -> when to resend.
    retries: BTreeMap<u64, Retry>,
    /// Groups that had entries parked on this connection (reported at `BacklogDone` if
    /// they are still parked; groups with a record are checked anyway).
    parked_groups: BTreeSet<GroupId>,
    /// Outbox items the relay refused as `StaleEpoch` while this device was not ahead of
    /// their epoch: they are encrypted again at this device's next epoch change (or at the
    /// next connection's backlog end). Cleared on disconnect.
    stale_posts: BTreeSet<u64>,
}

/// A post to resend after a retryable refusal.
#[derive(Clone, Copy, Debug)]
struct Retry {
    /// Refusals so far on this connection (for the backoff).
    attempts: u32,
    /// When to resend (ms); `None` while the resent post is in flight.
    due_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    Disconnected,
    AwaitChallenge,
    Authenticating,
    Ready,
}

/// What a request in flight was for.
#[derive(Debug)]
enum Pending {
    Auth { registered: bool },
    Stock,
    Upload,
    CreateGroup { op: OpId },
    Directory { op: OpId, user: UserName },
    Verify { user: UserName },
    Claim { op: OpId, user: UserName },
    PostApplication { local_id: u64 },
    PostCommit { op: OpId },
    Fetch,
    Ack,
    External,
}

struct Op {
    kind: OpKind,
    retries: u32,
}

enum OpKind {
    CreateGroup {
        group: GroupId,
        name: String,
        requested: bool,
    },
    Send,
    Change(Box<Change>),
}

/// An add / remove in progress.
struct Change {
    group: GroupId,
    add: Vec<UserName>,
    remove: Vec<UserName>,
    /// Remove exactly these devices (for leave requests).
    remove_devices: Vec<DeviceId>,
    stage: ChangeStage,
    directory: BTreeMap<UserName, Option<Vec<DeviceInfo>>>,
    claims: BTreeMap<UserName, Option<Vec<ClaimedKeyPackage>>>,
    key_packages: Vec<(UserName, DeviceId, KeyPackage)>,
    /// The commit posted (kept to resend after a reconnect).
    posted: Option<(Epoch, PostKind, Vec<u8>)>,
    /// The directory requests of the current connection were sent.
    directory_requested: bool,
    /// A key update (self-update commit) rather than a membership change.
    update_keys: bool,
    /// Adding our own missing devices right after creating the group: a failure is a
    /// warning, the command (group creation) still succeeds.
    best_effort: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeStage {
    /// Waiting for directory answers.
    Directory,
    /// Waiting for KeyPackage claims.
    Claim,
    /// Ready to build and post the commit (waits for a connection / other commits).
    Commit,
    /// Commit posted, waiting for the relay.
    Posting,
    /// Lost a race at this epoch: wait until the group moved past it, then rebuild.
    AwaitEpoch(u64),
}

/// What the credential of a member says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MemberId {
    user: UserName,
    device: DeviceId,
    key: Vec<u8>,
}

impl<S: Store> Client<S> {
    // ----------------------------------------------------------------------------------
    // Construction
    // ----------------------------------------------------------------------------------

    /// Creates a new device identity for `user` (a fresh Ed25519 key from `rng_seed`'s
    /// stream) and persists it. The device registers with the relay on the first
    /// connection.
    pub fn init(store: S, user: UserName, rng_seed: [u8; 32]) -> Result<Self, OpenError> {
        if let Some(id) = store.identity()? {
            return Err(OpenError::AlreadyInitialised(id.user));
        }
        let provider = CoveProvider::new(store, rng_seed);
        let mut seed = Zeroizing::new([0u8; 32]);
        provider.rng().fill(seed.as_mut()).map_err(OpenError::Rng)?;
        let signing_key = SigningKey::from_bytes(&seed);
        let identity = Identity {
            user,
            device: None,
            secret_key: seed,
            public_key: DeviceKey(signing_key.verifying_key().to_bytes()),
        };
        provider.store().set_identity(&identity)?;
        Self::from_parts(provider, identity)
    }

    /// Opens an initialised device: loads its identity and groups.
    pub fn open(store: S, rng_seed: [u8; 32]) -> Result<Self, OpenError> {
        let identity = store.identity()?.ok_or(OpenError::NoIdentity)?;
        Self::from_parts(CoveProvider::new(store, rng_seed), identity)
    }

    fn from_parts(provider: CoveProvider<S>, identity: Identity) -> Result<Self, OpenError> {
        let signing_key = SigningKey::from_bytes(&identity.secret_key);
        let signer = SignatureKeyPair::from_raw(
            SignatureScheme::ED25519,
            identity.secret_key.to_vec(),
            identity.public_key.0.to_vec(),
        );
        let mut groups = HashMap::new();
        let mut records = BTreeMap::new();
        for record in provider.store().groups()? {
            if record.membership == Membership::Active {
                let mls_id = MlsGroupId::from_slice(&record.id.0);
                match MlsGroup::load(provider.storage(), &mls_id) {
                    Ok(Some(g)) => {
                        groups.insert(record.id, g);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(OpenError::Mls(e)),
                }
            }
            records.insert(record.id, record);
        }
        Ok(Client {
            provider,
            signer,
            signing_key,
            identity,
            groups,
            records,
            conn: Conn::Disconnected,
            next_request: 1,
            requests: HashMap::new(),
            next_op: 1,
            ops: BTreeMap::new(),
            outbox_ops: HashMap::new(),
            outputs: VecDeque::new(),
            key_package_request_in_flight: false,
            to_verify: BTreeSet::new(),
            retries: BTreeMap::new(),
            parked_groups: BTreeSet::new(),
            stale_posts: BTreeSet::new(),
        })
    }

    // ----------------------------------------------------------------------------------
    // Accessors and queries
    // ----------------------------------------------------------------------------------

    /// This device's user.
    pub fn user(&self) -> &UserName {
        &self.identity.user
    }

    /// This device's id (once registered).
    pub fn device(&self) -> Option<DeviceId> {
        self.identity.device
    }

    /// This device's Ed25519 public key.
    pub fn device_key(&self) -> DeviceKey {
        self.identity.public_key
    }

    /// The store (for the shell's own config values).
    pub fn store(&self) -> &S {
        self.provider.store()
    }

    /// Whether the connection is authenticated.
    pub fn is_ready(&self) -> bool {
        self.conn == Conn::Ready
    }

    /// Whether any command is still running (useful for `sync`-style shells).
    pub fn has_pending_ops(&self) -> bool {
        !self.ops.is_empty() || !self.retries.is_empty()
    }

    /// The groups this device is or was in.
    pub fn groups(&self) -> Vec<GroupInfo> {
        self.records
            .values()
            .map(|r| {
                let (epoch, members) = match self.groups.get(&r.id) {
                    Some(g) => {
                        let mut users: Vec<UserName> = g
                            .members()
                            .filter_map(|m| parse_credential(&m.credential).ok())
                            .map(|m| m.user)
                            .collect();
                        users.sort();
                        users.dedup();
                        (g.epoch().as_u64(), users)
                    }
                    None => (0, Vec::new()),
                };
                GroupInfo {
                    id: r.id,
                    name: r.name.clone(),
                    epoch,
                    members,
                    active: r.membership == Membership::Active,
                }
            })
            .collect()
    }

    /// The history of a group (name or hex id), in log order.
    pub fn history(&self, group: &str) -> Result<Vec<ChatMessage>, QueryError> {
        let id = self.resolve(group).map_err(|e| match e {
            CommandError::AmbiguousGroup(g) => QueryError::AmbiguousGroup(g),
            _ => QueryError::UnknownGroup(group.to_string()),
        })?;
        Ok(self.chat_messages(id, self.provider.store().messages(&id)?))
    }

    /// The messages of `group` stored after log position `after`, in log order. Reads only
    /// those, so a caller that keeps its own "shown up to" position (as `cove sync` does)
    /// pays for what is new, not for the whole history.
    pub fn history_after(
        &self,
        group: &GroupId,
        after: Seq,
    ) -> Result<Vec<ChatMessage>, QueryError> {
        let stored = self.provider.store().messages_after(group, after)?;
        Ok(self.chat_messages(*group, stored))
    }

    fn chat_messages(&self, id: GroupId, stored: Vec<StoredMessage>) -> Vec<ChatMessage> {
        let name = self
            .records
            .get(&id)
            .map(|r| r.name.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        for m in stored {
            if let Ok(env) = Envelope::decode(&m.content)
                && let Some((text, attachment)) = env.content.into_chat_parts()
            {
                out.push(ChatMessage {
                    group: id,
                    group_name: name.clone(),
                    from: m.from,
                    from_device: m.from_device,
                    id: MessageId(m.message_id),
                    sent_at_ms: m.sent_at_ms,
                    text,
                    attachment,
                    seq: m.seq,
                });
            }
        }
        out
    }

    /// The safety number between this user and `user`: 12 groups of 5 digits over both
    /// users' device keys (sorted), identical on both sides. Needs `user`'s pinned keys.
    pub fn safety_number(&self, user: &UserName) -> Result<String, QueryError> {
        let theirs: Vec<DeviceKey> = self
            .provider
            .store()
            .pinned_devices(user)?
            .into_iter()
            .map(|p| p.key)
            .collect();
        if theirs.is_empty() {
            return Err(QueryError::UnknownUser(user.clone()));
        }
        let mut mine: Vec<DeviceKey> = self
            .provider
            .store()
            .pinned_devices(&self.identity.user)?
            .into_iter()
            .map(|p| p.key)
            .collect();
        mine.push(self.identity.public_key);
        Ok(safety_number(&self.identity.user, &mine, user, &theirs))
    }

    /// On an existing device: authorises `new_key` as a further device of this user (the
    /// new device shows its key; this device signs it). Returns what the new device needs:
    /// give it to [`Client::set_device_authorization`] there.
    pub fn authorize_device(&self, new_key: &DeviceKey) -> Option<(DeviceId, Signature)> {
        let device = self.identity.device?;
        let msg = cove_wire::sign::add_device_message(&self.identity.user, new_key);
        Some((device, Signature(self.signing_key.sign(&msg).to_bytes())))
    }

    /// A signer for blob-store HTTP requests (attachment uploads), once registered.
    pub fn blob_request_signer(&self) -> Option<crate::attachment::BlobRequestSigner> {
        Some(crate::attachment::BlobRequestSigner::new(
            self.identity.device?,
            self.signing_key.clone(),
        ))
    }

    /// On a new, not yet registered device of an existing user: stores the authorisation
    /// from [`Client::authorize_device`] so that the next connection registers this device
    /// with `RegisterDevice` instead of claiming the user name.
    pub fn set_device_authorization(
        &mut self,
        authorizer: DeviceId,
        authorization: Signature,
    ) -> Result<(), StoreError> {
        let store = self.provider.store();
        store.set_config("\0authorizer", &authorizer.0.to_string())?;
        store.set_config("\0authorization", &hex::encode(authorization.0))
    }

    fn pending_authorization(&self) -> Option<(DeviceId, Signature)> {
        let store = self.provider.store();
        let authorizer = store.config("\0authorizer").ok()??.parse().ok()?;
        let sig = store.config("\0authorization").ok()??;
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(sig, &mut bytes).ok()?;
        Some((DeviceId(authorizer), Signature(bytes)))
    }

    /// Accepts the keys `user` presents now (after a [`Event::KeyChanged`] and an
    /// out-of-band safety number check): re-pins them.
    pub fn accept_key_change(
        &mut self,
        now_ms: u64,
        user: &UserName,
        device: DeviceId,
        key: DeviceKey,
    ) -> Result<(), StoreError> {
        self.provider.store().pin_device(&PinnedDevice {
            user: user.clone(),
            device,
            key,
            pinned_at_ms: now_ms,
        })
    }

    /// The current epoch authenticator of a group (equal on all members in the same
    /// epoch): for tests and for out-of-band fork checks.
    pub fn epoch_authenticator(&self, group: &GroupId) -> Option<Vec<u8>> {
        self.groups
            .get(group)
            .map(|g| g.epoch_authenticator().as_slice().to_vec())
    }

    /// Exports a secret from the group's current epoch (RFC 9420 MLS-Exporter), e.g. for
    /// SFrame call keys.
    pub fn export_secret(
        &self,
        group: &GroupId,
        label: &str,
        context: &[u8],
        length: usize,
    ) -> Result<Vec<u8>, QueryError> {
        let mls = self
            .groups
            .get(group)
            .ok_or_else(|| QueryError::UnknownGroup(group.to_hex()))?;
        mls.export_secret(self.provider.crypto(), label, context, length)
            .map_err(QueryError::Export)
    }

    /// The member devices of a group with their MLS leaf indexes (for calls).
    pub fn group_members(&self, group: &GroupId) -> Vec<crate::call::GroupMember> {
        self.groups
            .get(group)
            .map(|g| {
                g.members()
                    .filter_map(|m| {
                        let leaf = m.index.u32();
                        member_id(&m).ok().map(|id| crate::call::GroupMember {
                            leaf,
                            user: id.user,
                            device: id.device,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends a request the core does not interpret itself (e.g. `Request::TurnCredentials`)
    /// on the current connection; the answer comes back as [`Event::Reply`] with the returned
    /// id. `None` if the connection is not ready (authenticated) yet.
    pub fn send_request(&mut self, body: Request) -> Option<RequestId> {
        if self.conn != Conn::Ready {
            return None;
        }
        let id = RequestId(self.next_request);
        self.request(body, Pending::External);
        Some(id)
    }

    /// This device's MLS leaf index in a group.
    pub fn own_leaf_index(&self, group: &GroupId) -> Option<u32> {
        self.groups.get(group).map(|g| g.own_leaf_index().u32())
    }

    /// The current MLS epoch of a group.
    pub fn epoch(&self, group: &GroupId) -> Option<u64> {
        self.groups.get(group).map(|g| g.epoch().as_u64())
    }

    /// Resolves a group name or hex id.
    pub fn resolve(&self, group: &str) -> Result<GroupId, CommandError> {
        if let Ok(id) = GroupId::from_hex(group)
            && self.records.contains_key(&id)
        {
            return Ok(id);
        }
        let found: Vec<GroupId> = self
            .records
            .values()
            .filter(|r| r.name == group)
            .map(|r| r.id)
            .collect();
        // Prefer active groups when a name was reused after leaving.
        let active: Vec<GroupId> = found
            .iter()
            .copied()
            .filter(|g| {
                self.records
                    .get(g)
                    .is_some_and(|r| r.membership == Membership::Active)
            })
            .collect();
        let pick = if active.is_empty() { found } else { active };
        match pick.as_slice() {
            [one] => Ok(*one),
            [] => Err(CommandError::UnknownGroup(group.to_string())),
            _ => Err(CommandError::AmbiguousGroup(group.to_string())),
        }
    }

    // ----------------------------------------------------------------------------------
    // Connection inputs
    // ----------------------------------------------------------------------------------

    /// A fresh connection is up; the relay's `Challenge` comes next.
    pub fn handle_connected(&mut self, _now_ms: u64) {
        self.requests.clear();
        self.key_package_request_in_flight = false;
        self.conn = Conn::AwaitChallenge;
    }

    /// The connection is gone. Requests in flight are retried on the next connection:
    /// outbox messages not seen in the backlog are resent once (the relay answers a repeated
    /// post with its original seq; receivers also drop duplicates by message id), commands
    /// restart their current step.
    pub fn handle_disconnected(&mut self) {
        self.conn = Conn::Disconnected;
        self.requests.clear();
        // The whole outbox goes out again after the next backlog: no timers meanwhile.
        self.retries.clear();
        self.stale_posts.clear();
        self.key_package_request_in_flight = false;
        for op in self.ops.values_mut() {
            match &mut op.kind {
                OpKind::CreateGroup { requested, .. } => *requested = false,
                OpKind::Change(c) => {
                    // The look-ups and claims of the lost connection will never be answered:
                    // the change starts its directory stage again on the next one.
                    if matches!(c.stage, ChangeStage::Directory | ChangeStage::Claim) {
                        c.stage = ChangeStage::Directory;
                        c.directory.values_mut().for_each(|v| *v = None);
                        c.claims.clear();
                    }
                    c.directory_requested = false;
                }
                OpKind::Send => {}
            }
        }
    }

    /// The next thing to do: a frame to send or an event for the user.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next deadline (ms, same clock as `now_ms`) at which the shell must call
    /// [`Client::handle_timeout`]; `None` when nothing is scheduled. Today: resending posts
    /// the relay refused as retryable (`RateLimited`, `Unavailable`, `Internal`).
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.conn != Conn::Ready {
            return None;
        }
        self.retries.values().filter_map(|r| r.due_ms).min()
    }

    /// Time has reached `now_ms`: resends the posts whose retry delay is over. Calling it
    /// early or more than once is harmless.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), HandleError> {
        if self.conn != Conn::Ready {
            return Ok(());
        }
        let due: Vec<u64> = self
            .retries
            .iter()
            .filter(|(_, r)| r.due_ms.is_some_and(|d| d <= now_ms))
            .map(|(id, _)| *id)
            .collect();
        for local_id in due {
            match self.provider.store().outbox_item(local_id)? {
                Some(item) => {
                    if let Some(r) = self.retries.get_mut(&local_id) {
                        r.due_ms = None;
                    }
                    self.post_outbox_item(&item);
                }
                // Moved to the history by its echo meanwhile.
                None => {
                    self.retries.remove(&local_id);
                }
            }
        }
        Ok(())
    }

    /// Handles one frame from the relay. Never panics on hostile input: a bad entry is
    /// skipped (acknowledged) with an [`Event::Warning`]; an error return means the frame
    /// was not processed and will come again (storage failure) or the connection should
    /// be dropped (protocol violation, `Closing`).
    pub fn handle_frame(&mut self, now_ms: u64, frame: ServerFrame) -> Result<(), HandleError> {
        let result = self.dispatch(now_ms, frame);
        if self.conn == Conn::Ready && !self.to_verify.is_empty() {
            for user in std::mem::take(&mut self.to_verify) {
                self.request(
                    Request::ListDevices { user: user.clone() },
                    Pending::Verify { user },
                );
            }
        }
        result
    }

    fn dispatch(&mut self, now_ms: u64, frame: ServerFrame) -> Result<(), HandleError> {
        match frame {
            ServerFrame::Challenge { nonce, .. } => self.on_challenge(&nonce),
            ServerFrame::Response { id, result } => self.on_response(now_ms, id, result),
            ServerFrame::Deliver(Delivery::Group(entry)) => self.on_group_entry(now_ms, entry),
            ServerFrame::Deliver(Delivery::Inbox(entry)) => self.on_inbox_entry(now_ms, entry),
            ServerFrame::BacklogDone => {
                self.on_backlog_done()?;
                self.report_parked()?;
                self.event(Event::BacklogDone);
                Ok(())
            }
            ServerFrame::Closing { code } => {
                self.handle_disconnected();
                Err(HandleError::Closing(code))
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Commands
    // ----------------------------------------------------------------------------------

    /// Creates a group named `name` with this device as its first member, then adds the
    /// user's other registered devices (the command completes after that commit; a failure
    /// there is a warning, the group exists). Refused with
    /// [`CommandError::DuplicateGroupName`] when this device is already in (or creating) a
    /// group of that name.
    pub fn create_group(&mut self, _now_ms: u64, name: &str) -> Result<OpId, CommandError> {
        if name.is_empty() || name.len() > MAX_GROUP_NAME {
            return Err(CommandError::Invalid(format!(
                "group names are 1-{MAX_GROUP_NAME} bytes"
            )));
        }
        let active = self
            .records
            .values()
            .any(|r| r.name == name && r.membership == Membership::Active);
        let creating = self
            .ops
            .values()
            .any(|o| matches!(&o.kind, OpKind::CreateGroup { name: n, .. } if n == name));
        if active || creating {
            return Err(CommandError::DuplicateGroupName(name.to_string()));
        }
        let mut id = [0u8; 16];
        self.provider
            .rng()
            .fill(&mut id)
            .map_err(CommandError::Rng)?;
        let op = self.new_op(OpKind::CreateGroup {
            group: GroupId(id),
            name: name.to_string(),
            requested: false,
        });
        self.drive(op);
        Ok(op)
    }

    /// Adds every device of each user to a group (name or hex id), and any device of our
    /// own user that is missing from it (looked up and key-checked like the others).
    pub fn add_users(
        &mut self,
        _now_ms: u64,
        group: &str,
        users: &[UserName],
    ) -> Result<OpId, CommandError> {
        let id = self.active_group(group)?;
        if users.is_empty() {
            return Err(CommandError::Invalid("no users given".into()));
        }
        let op = self.new_change(id, users.to_vec(), Vec::new(), Vec::new(), false);
        Ok(op)
    }

    /// Removes every device of each user from a group.
    pub fn remove_users(
        &mut self,
        _now_ms: u64,
        group: &str,
        users: &[UserName],
    ) -> Result<OpId, CommandError> {
        let id = self.active_group(group)?;
        if users.is_empty() {
            return Err(CommandError::Invalid("no users given".into()));
        }
        let op = self.new_change(id, Vec::new(), users.to_vec(), Vec::new(), false);
        Ok(op)
    }

    /// Rotates this device's keys in a group (an MLS self-update commit): post-compromise
    /// security for everything sent after it.
    pub fn update_keys(&mut self, _now_ms: u64, group: &str) -> Result<OpId, CommandError> {
        let id = self.active_group(group)?;
        Ok(self.new_change(id, Vec::new(), Vec::new(), Vec::new(), true))
    }

    /// Leaves a group: sends a leave request (a remaining member commits the removal),
    /// then forgets the group's keys. Completes when the relay accepted the request.
    pub fn leave(&mut self, now_ms: u64, group: &str) -> Result<OpId, CommandError> {
        let id = self.active_group(group)?;
        let op = self.send_content(now_ms, id, Content::LeaveRequest)?;
        Ok(op)
    }

    /// Sends an uploaded file's pointer, like a text message (see `cove send-file`).
    pub fn send_attachment(
        &mut self,
        now_ms: u64,
        group: &str,
        pointer: crate::attachment::AttachmentPointer,
    ) -> Result<OpId, CommandError> {
        let id = self.active_group(group)?;
        self.send_content(now_ms, id, Content::Attachment(pointer))
    }

    /// Sends a text message. It is encrypted and persisted in the outbox now and sent
    /// (again after reconnects) until the relay accepts it.
    pub fn send_text(
        &mut self,
        now_ms: u64,
        group: &str,
        text: &str,
    ) -> Result<OpId, CommandError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(CommandError::TooLarge(text.len(), MAX_TEXT_BYTES));
        }
        let id = self.active_group(group)?;
        self.send_content(
            now_ms,
            id,
            Content::Text {
                text: text.to_string(),
            },
        )
    }

    /// Sends any content (used by the attachment and call modules).
    pub fn send_content(
        &mut self,
        now_ms: u64,
        group: GroupId,
        content: Content,
    ) -> Result<OpId, CommandError> {
        let mut message_id = [0u8; 16];
        self.provider
            .rng()
            .fill(&mut message_id)
            .map_err(CommandError::Rng)?;
        let env = Envelope {
            version: ENVELOPE_VERSION,
            id: message_id,
            sent_at_ms: now_ms,
            content,
        };
        let bytes = env.encode().map_err(CommandError::Content)?;
        let item = self.seal_into_outbox(None, group, message_id, now_ms, bytes)?;
        let op = self.new_op(OpKind::Send);
        self.outbox_ops.insert(item.local_id, op);
        if self.conn == Conn::Ready {
            self.post_outbox_item(&item);
        }
        Ok(op)
    }

    /// Encrypts `content` (an encoded envelope) at the group's current epoch and persists it
    /// in the outbox, in one transaction: under `local_id` when given (a queued message
    /// encrypted again), else under a fresh local id.
    fn seal_into_outbox(
        &mut self,
        local_id: Option<u64>,
        group: GroupId,
        message_id: [u8; 16],
        sent_at_ms: u64,
        content: Vec<u8>,
    ) -> Result<OutboxItem, CommandError> {
        let store = self.provider.store();
        let mls = self
            .groups
            .get_mut(&group)
            .ok_or_else(|| CommandError::NotMember(group.to_hex()))?;
        store.begin()?;
        let result = (|| -> Result<OutboxItem, CommandError> {
            let out = mls
                .create_message(&self.provider, &self.signer, &content)
                .map_err(CommandError::Seal)?;
            let payload = out.to_bytes().map_err(CommandError::Encode)?;
            let local_id = match local_id {
                Some(id) => id,
                None => store.next_local_id()?,
            };
            let item = OutboxItem {
                local_id,
                group,
                epoch: Epoch(mls.epoch().as_u64()),
                message_id,
                sent_at_ms,
                content,
                payload,
            };
            store.put_outbox(&item)?;
            Ok(item)
        })();
        match result {
            Ok(item) => {
                store.commit()?;
                Ok(item)
            }
            Err(e) => {
                let _ = store.rollback();
                self.reload_group(&group);
                Err(e)
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Connection handling
    // ----------------------------------------------------------------------------------

    fn on_challenge(&mut self, nonce: &[u8; 32]) -> Result<(), HandleError> {
        if self.conn != Conn::AwaitChallenge {
            return Err(HandleError::Protocol("unexpected challenge".into()));
        }
        let msg = cove_wire::sign::auth_challenge_message(
            nonce,
            &self.identity.user,
            &self.identity.public_key,
        );
        let signature = Signature(self.signing_key.sign(&msg).to_bytes());
        let authorization = self.pending_authorization();
        let (body, registered) = match (self.identity.device, authorization) {
            (None, Some((authorizer, authorization))) => (
                Request::RegisterDevice {
                    user: self.identity.user.clone(),
                    key: self.identity.public_key,
                    signature,
                    authorizer,
                    authorization,
                },
                true,
            ),
            (None, None) => (
                Request::Register {
                    user: self.identity.user.clone(),
                    key: self.identity.public_key,
                    signature,
                },
                true,
            ),
            (Some(device), _) => (
                Request::Authenticate {
                    user: self.identity.user.clone(),
                    device,
                    signature,
                },
                false,
            ),
        };
        self.conn = Conn::Authenticating;
        self.request(body, Pending::Auth { registered });
        Ok(())
    }

    fn on_authenticated(&mut self, device: DeviceId, registered: bool) -> Result<(), HandleError> {
        if self.identity.device != Some(device) {
            if self.identity.device.is_some() {
                return Err(HandleError::Protocol(
                    "relay authenticated another device".into(),
                ));
            }
            self.identity.device = Some(device);
            self.provider.store().set_identity(&self.identity)?;
        }
        self.conn = Conn::Ready;
        self.event(Event::Authenticated { device, registered });
        // KeyPackages: check the stock (uploads when low).
        self.request(Request::KeyPackageStock, Pending::Stock);
        self.key_package_request_in_flight = true;
        Ok(())
    }

    fn on_backlog_done(&mut self) -> Result<(), HandleError> {
        // A pending commit no command owns (we crashed after building it) and whose echo
        // was not in the backlog was never accepted: drop it.
        let owned: BTreeSet<GroupId> = self
            .ops
            .values()
            .filter_map(|o| match &o.kind {
                OpKind::Change(c) if c.stage == ChangeStage::Posting => Some(c.group),
                _ => None,
            })
            .collect();
        let orphaned: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(id, g)| g.pending_commit().is_some() && !owned.contains(*id))
            .map(|(id, _)| *id)
            .collect();
        for id in &orphaned {
            if let Some(g) = self.groups.get_mut(id) {
                g.clear_pending_commit(self.provider.storage())?;
            }
        }
        // Resend the outbox (after the backlog: items whose echo was in it are done). Not
        // the items already posted on this connection and waiting for their reply, nor those
        // waiting for a retry: a second copy of the same ciphertext in the log cannot be
        // decrypted by the other members (its MLS generation is used up).
        let in_flight = self.posts_in_flight();
        for item in self.provider.store().outbox()? {
            if in_flight.contains(&item.local_id) || self.retries.contains_key(&item.local_id) {
                continue;
            }
            self.resend_outbox_item(item)?;
        }
        // Restart commands.
        let ids: Vec<OpId> = self.ops.keys().copied().collect();
        for op in ids {
            if let Some(Op {
                kind: OpKind::Change(c),
                ..
            }) = self.ops.get_mut(&op)
            {
                match c.stage {
                    // A change in its directory or claim stage was reset when the last
                    // connection was lost; if it sent its look-ups on this connection (it was
                    // started or driven before the backlog ended), their replies are still
                    // coming: resetting it here would send them twice and drop the claims of
                    // the first round (wasting the KeyPackages the relay handed out).
                    ChangeStage::Directory | ChangeStage::Claim => {}
                    ChangeStage::Posting => {
                        // Not in the backlog, so not accepted (yet): resend the same commit.
                        // (If the relay took it meanwhile, it answers StaleEpoch and the echo
                        // that follows merges it.)
                        if let Some((epoch, kind, payload)) = c.posted.clone() {
                            let group = c.group;
                            self.request(
                                Request::Post {
                                    group,
                                    epoch,
                                    kind,
                                    payload: Payload(payload),
                                },
                                Pending::PostCommit { op },
                            );
                        }
                        continue;
                    }
                    _ => {}
                }
            }
            self.drive(op);
        }
        Ok(())
    }

    fn on_response(
        &mut self,
        now_ms: u64,
        id: RequestId,
        result: Result<Reply, ErrorReply>,
    ) -> Result<(), HandleError> {
        let Some(pending) = self.requests.remove(&id) else {
            self.warn(format!("response to unknown request {id}"));
            return Ok(());
        };
        match (pending, result) {
            (Pending::Auth { registered }, Ok(Reply::Authenticated { device })) => {
                self.on_authenticated(device, registered)
            }
            (Pending::Auth { .. }, Err(e)) => {
                self.conn = Conn::Disconnected;
                Err(HandleError::AuthRefused(e))
            }
            (
                Pending::Stock,
                Ok(Reply::KeyPackageStock {
                    remaining,
                    has_last_resort,
                }),
            )
            | (
                Pending::Upload,
                Ok(Reply::KeyPackageStock {
                    remaining,
                    has_last_resort,
                }),
            ) => {
                self.key_package_request_in_flight = false;
                if remaining < KEY_PACKAGE_LOW_WATER || !has_last_resort {
                    self.upload_key_packages(!has_last_resort)?;
                }
                Ok(())
            }
            (Pending::Stock | Pending::Upload, Err(e)) => {
                self.key_package_request_in_flight = false;
                self.warn(format!("KeyPackage upload failed: {e}"));
                Ok(())
            }
            (Pending::CreateGroup { op }, r) => self.on_group_created(now_ms, op, r),
            (Pending::Directory { op, user }, r) => {
                self.on_directory(now_ms, op, user, r);
                Ok(())
            }
            (Pending::Verify { user }, Ok(Reply::Devices { user: u, devices })) if u == user => {
                self.verify_against_directory(&user, &devices)?;
                Ok(())
            }
            (Pending::Claim { op, user }, r) => {
                self.on_claim(op, user, r);
                Ok(())
            }
            (Pending::PostApplication { local_id }, r) => self.on_app_posted(now_ms, local_id, r),
            (Pending::PostCommit { op }, r) => self.on_commit_posted(now_ms, op, r),
            (Pending::Fetch, Ok(Reply::Entries { entries })) => {
                for e in entries {
                    self.on_group_entry(now_ms, e)?;
                }
                Ok(())
            }
            (Pending::External, result) => {
                self.event(Event::Reply { id, result });
                Ok(())
            }
            (Pending::Ack, Ok(_)) => Ok(()),
            (Pending::Ack, Err(e)) => {
                // Acks for entries of groups we were removed from are refused; harmless.
                if e.code != ErrorCode::NotMember {
                    self.warn(format!("ack refused: {e}"));
                }
                Ok(())
            }
            (_, Err(e)) => {
                self.warn(format!("request failed: {e}"));
                Ok(())
            }
            (p, Ok(r)) => {
                self.warn(format!("unexpected reply {r:?} to {p:?}"));
                Ok(())
            }
        }
    }

    fn upload_key_packages(&mut self, with_last_resort: bool) -> Result<(), HandleError> {
        let Some(device) = self.identity.device else {
            return Ok(());
        };
        let cred = self.credential_with_key(device);
        let store = self.provider.store();
        store.begin()?;
        let result = (|| -> Result<(Vec<Payload>, Option<Payload>), KeyPackageBuildError> {
            let mut kps = Vec::with_capacity(KEY_PACKAGE_BATCH);
            for _ in 0..KEY_PACKAGE_BATCH {
                let bundle = KeyPackage::builder()
                    .leaf_node_capabilities(capabilities())
                    .build(CIPHERSUITE, &self.provider, &self.signer, cred.clone())
                    .map_err(KeyPackageBuildError::New)?;
                let bytes = openmls::prelude::MlsMessageOut::from(bundle.key_package().clone())
                    .to_bytes()
                    .map_err(KeyPackageBuildError::Encode)?;
                kps.push(Payload(bytes));
            }
            let last_resort = if with_last_resort {
                let bundle = KeyPackage::builder()
                    .leaf_node_capabilities(capabilities())
                    .mark_as_last_resort()
                    .build(CIPHERSUITE, &self.provider, &self.signer, cred.clone())
                    .map_err(KeyPackageBuildError::New)?;
                let bytes = openmls::prelude::MlsMessageOut::from(bundle.key_package().clone())
                    .to_bytes()
                    .map_err(KeyPackageBuildError::Encode)?;
                Some(Payload(bytes))
            } else {
                None
            };
            Ok((kps, last_resort))
        })();
        match result {
            Ok((key_packages, last_resort)) => {
                store.commit()?;
                self.key_package_request_in_flight = true;
                self.request(
                    Request::UploadKeyPackages {
                        key_packages: BoundedVec(key_packages),
                        last_resort,
                    },
                    Pending::Upload,
                );
            }
            Err(e) => {
                let _ = store.rollback();
                self.warn(format!("could not generate KeyPackages: {e}"));
            }
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------
    // Inbound entries
    // ----------------------------------------------------------------------------------

    fn on_inbox_entry(&mut self, now_ms: u64, entry: InboxEntry) -> Result<(), HandleError> {
        let store = self.provider.store();
        if entry.seq <= store.cursor(&Stream::Inbox)? {
            self.ack(Stream::Inbox, entry.seq);
            return Ok(());
        }
        let InboxKind::Welcome {
            group,
            commit_seq,
            sender,
        } = entry.kind.clone();
        store.begin()?;
        let result = self.join_from_welcome(now_ms, &entry, group, commit_seq, sender);
        match result {
            Ok(events) => {
                let store = self.provider.store();
                if let Err(e) = store
                    .set_cursor(&Stream::Inbox, entry.seq)
                    .and_then(|_| store.commit())
                {
                    let _ = store.rollback();
                    self.groups.remove(&group);
                    self.records.remove(&group);
                    if let Ok(Some(r)) = self.provider.store().group(&group) {
                        self.records.insert(group, r);
                    }
                    self.reload_group(&group);
                    return Err(e.into());
                }
                for e in events {
                    self.event(e);
                }
                self.apply_parked(now_ms, group)?;
            }
            Err(reason) => {
                let _ = self.provider.store().rollback();
                self.groups.remove(&group);
                self.reload_group(&group);
                self.provider
                    .store()
                    .set_cursor(&Stream::Inbox, entry.seq)?;
                self.warn(format!("skipped a Welcome into group {group}: {reason}"));
            }
        }
        self.ack(Stream::Inbox, entry.seq);
        // A KeyPackage was consumed: check the stock.
        if self.conn == Conn::Ready && !self.key_package_request_in_flight {
            self.key_package_request_in_flight = true;
            self.request(Request::KeyPackageStock, Pending::Stock);
        }
        Ok(())
    }

    fn join_from_welcome(
        &mut self,
        now_ms: u64,
        entry: &InboxEntry,
        group: GroupId,
        commit_seq: Seq,
        sender: DeviceId,
    ) -> Result<Vec<Event>, WelcomeError> {
        let msg = MlsMessageIn::tls_deserialize_exact(entry.payload.as_bytes())
            .map_err(WelcomeError::Undecodable)?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(WelcomeError::NotWelcome);
        };
        let held = self.groups.get(&group).map(|g| g.epoch().as_u64());
        let mut builder =
            StagedWelcome::build_from_welcome(&self.provider, &join_config(), welcome)
                .map_err(WelcomeError::Rejected)?;
        if held.is_some() {
            builder = builder.replace_old_group();
        }
        let staged = builder.build().map_err(WelcomeError::Rejected)?;
        if staged.group_context().group_id().as_slice() != group.0 {
            return Err(WelcomeError::OtherGroup);
        }
        let mut events = Vec::new();
        if let Some(ours) = held {
            // We still hold the group: we were removed and added again while we did not see
            // the removal. A Welcome into a later epoch replaces the stale state (with which
            // nothing of the group can be read or sent any more); one into our epoch or an
            // earlier one is a replay.
            let offered = staged.group_context().epoch().as_u64();
            if offered <= ours {
                return Err(WelcomeError::AlreadyMember { offered, ours });
            }
            if let Some(mut old) = self.groups.remove(&group) {
                old.delete(self.provider.storage())
                    .map_err(WelcomeError::DropStale)?;
            }
            events.push(Event::Warning(format!(
                "re-added to group {group} at epoch {offered} while this device still held \
                 epoch {ours} (the removal was missed): the old state is replaced; messages \
                 sent while this device was not a member cannot be read"
            )));
        }
        let mls = staged
            .into_group(&self.provider)
            .map_err(WelcomeError::Join)?;
        let mut by = None;
        for m in mls.members() {
            let id = member_id(&m)?;
            if id.device == sender {
                by = Some(id.user.clone());
            }
            self.check_pin(now_ms, &id, &mut events)?;
            if Some(id.device) != self.identity.device {
                self.to_verify.insert(id.user.clone());
            }
        }
        let by = by.ok_or(WelcomeError::SenderNotMember)?;
        let name = mls
            .extensions()
            .unknown(GROUP_NAME_EXTENSION)
            .and_then(|e| String::from_utf8(e.0.clone()).ok())
            .unwrap_or_default();
        let record = GroupRecord {
            id: group,
            name: name.clone(),
            membership: Membership::Active,
            joined_at_ms: now_ms,
        };
        let store = self.provider.store();
        store.put_group(&record)?;
        store.set_cursor(&Stream::Group(group), commit_seq)?;
        self.records.insert(group, record);
        self.groups.insert(group, mls);
        events.insert(0, Event::Joined { group, name, by });
        Ok(events)
    }

    fn on_group_entry(&mut self, now_ms: u64, entry: GroupEntry) -> Result<(), HandleError> {
        let group = entry.group;
        let stream = Stream::Group(group);
        let store = self.provider.store();
        // Not (yet) a member locally: either the Welcome has not been processed yet (park
        // it; after a removal, later entries mean we were added again), or we left (ignore).
        match self.records.get(&group).map(|r| r.membership) {
            Some(Membership::Left) => {
                self.ack(stream, entry.seq);
                return Ok(());
            }
            Some(Membership::Removed) if entry.seq <= store.cursor(&stream)? => {
                self.ack(stream, entry.seq);
                return Ok(());
            }
            Some(Membership::Active) if self.groups.contains_key(&group) => {}
            _ => {
                // Kept here and not acknowledged: until it is applied, the relay delivers it
                // (and what it depends on) again on the next connection.
                self.park(&entry)?;
                return Ok(());
            }
        }
        if entry.seq <= store.cursor(&stream)? {
            self.ack(stream, entry.seq);
            return Ok(());
        }
        let epoch = self
            .groups
            .get(&group)
            .map(|g| g.epoch().as_u64())
            .unwrap_or(0);
        if entry.epoch.0 > epoch {
            // A commit before it is missing (yet): kept, not acknowledged (see above).
            self.park(&entry)?;
            return Ok(());
        }
        let merged = self.apply_entry(now_ms, &entry, false)?;
        self.ack(stream, entry.seq);
        if merged {
            self.after_epoch_change(now_ms, group)?;
        }
        Ok(())
    }

    /// After the backlog every entry should be applicable: the ones still parked are kept
    /// (never dropped, and applied as soon as the commit or Welcome they wait for arrives),
    /// and the user is told, once per group and connection.
    fn report_parked(&mut self) -> Result<(), HandleError> {
        let mut groups: BTreeSet<GroupId> = self.records.keys().copied().collect();
        groups.extend(std::mem::take(&mut self.parked_groups));
        for group in groups {
            let parked = self.provider.store().pending(&group)?.len();
            if parked == 0 {
                continue;
            }
            let why = match self.groups.get(&group) {
                Some(mls) => format!(
                    "they belong to a later epoch than this device's ({}); they are applied \
                     when the commit they need arrives",
                    mls.epoch().as_u64()
                ),
                None => "this device is not a member of it (yet); they are applied when its \
                         Welcome arrives"
                    .to_string(),
            };
            self.warn(format!(
                "{parked} entries of group {group} could not be processed and are kept: {why}"
            ));
        }
        Ok(())
    }

    fn park(&mut self, entry: &GroupEntry) -> Result<(), HandleError> {
        self.parked_groups.insert(entry.group);
        let store = self.provider.store();
        if store.pending(&entry.group)?.len() >= MAX_PENDING_PER_GROUP {
            self.warn(format!(
                "dropped entry {} of group {}: too many parked",
                entry.seq, entry.group
            ));
            return Ok(());
        }
        let bytes = postcard::to_stdvec(entry).map_err(|e| StoreError::Encode(e.to_string()))?;
        store.put_pending(&entry.group, entry.seq, &bytes)?;
        Ok(())
    }

    /// Applies parked entries of `group` that have become applicable, in seq order.
    fn apply_parked(&mut self, now_ms: u64, group: GroupId) -> Result<(), HandleError> {
        loop {
            let Some(mls) = self.groups.get(&group) else {
                return Ok(());
            };
            let epoch = mls.epoch().as_u64();
            let cursor = self.provider.store().cursor(&Stream::Group(group))?;
            let parked = self.provider.store().pending(&group)?;
            let mut progressed = false;
            for (seq, bytes) in parked {
                let entry: GroupEntry = match postcard::from_bytes(&bytes) {
                    Ok(e) => e,
                    Err(_) => {
                        self.provider.store().delete_pending(&group, seq)?;
                        continue;
                    }
                };
                if entry.seq <= cursor {
                    self.provider.store().delete_pending(&group, seq)?;
                    continue;
                }
                if entry.epoch.0 > epoch {
                    break;
                }
                // Removed from the parking area in the same transaction that applies it.
                let merged = self.apply_entry(now_ms, &entry, true)?;
                self.ack(Stream::Group(group), entry.seq);
                progressed = true;
                if merged {
                    self.after_epoch_change(now_ms, group)?;
                    break;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Applies one entry (epoch ≤ ours) in one transaction together with its plaintext and
    /// the cursor. Returns whether the group moved to a new epoch. A bad entry is skipped
    /// (cursor advanced) with a warning.
    fn apply_entry(
        &mut self,
        now_ms: u64,
        entry: &GroupEntry,
        parked: bool,
    ) -> Result<bool, HandleError> {
        let group = entry.group;
        let stream = Stream::Group(group);
        let store = self.provider.store();
        store.begin()?;
        let result = self.apply_entry_in_tx(now_ms, entry);
        let store = self.provider.store();
        match result {
            Ok(outcome) => {
                let finished = store
                    .set_cursor(&stream, entry.seq)
                    .and_then(|_| {
                        if parked {
                            store.delete_pending(&group, entry.seq)
                        } else {
                            Ok(())
                        }
                    })
                    .and_then(|_| store.commit());
                if let Err(e) = finished {
                    let _ = store.rollback();
                    self.reload_group(&group);
                    return Err(e.into());
                }
                for e in outcome.events {
                    self.event(e);
                }
                if let Some(op) = outcome.completed_op {
                    self.finish(op, Ok(()));
                }
                if outcome.left {
                    self.forget_group(group, Membership::Left)?;
                }
                if outcome.removed {
                    // Forget the group's keys: nothing later can be decrypted anyway, and a
                    // later re-add starts from a fresh Welcome.
                    self.forget_group(group, Membership::Removed)?;
                }
                for leaver in outcome.leave_requests {
                    self.handle_leave_request(group, leaver);
                }
                Ok(outcome.merged)
            }
            Err(reason) => {
                let _ = store.rollback();
                self.reload_group(&group);
                let store = self.provider.store();
                store.transaction(|store| {
                    store.set_cursor(&stream, entry.seq)?;
                    if parked {
                        store.delete_pending(&group, entry.seq)?;
                    }
                    Ok::<_, StoreError>(())
                })?;
                self.warn(format!(
                    "skipped entry {} of group {} from device {}: {reason}",
                    entry.seq, group, entry.sender
                ));
                Ok(false)
            }
        }
    }

    fn apply_entry_in_tx(
        &mut self,
        now_ms: u64,
        entry: &GroupEntry,
    ) -> Result<Outcome, EntryError> {
        let group = entry.group;
        let me = self.identity.device;
        let mut out = Outcome::default();
        let store = self.provider.store();
        let mls = self.groups.get_mut(&group).ok_or(EntryError::NotMember)?;
        let our_epoch = mls.epoch().as_u64();

        if Some(entry.sender) == me {
            match &entry.kind {
                EntryKind::Commit { .. } => {
                    if mls.pending_commit().is_some() && entry.epoch.0 == our_epoch {
                        // Our own commit, accepted (its Posted reply may be lost or later).
                        mls.merge_pending_commit(&self.provider)
                            .map_err(EntryError::MergePending)?;
                        out.merged = true;
                        out.completed_op = self
                            .ops
                            .iter()
                            .find(|(_, o)| matches!(&o.kind, OpKind::Change(c) if c.group == group && c.stage == ChangeStage::Posting))
                            .map(|(id, _)| *id);
                        // The Posted (or StaleEpoch, after a resend) reply, if it still
                        // comes, finds the command finished and is ignored.
                    }
                    return Ok(out);
                }
                EntryKind::Application => {
                    // Our own message: move it from the outbox to the history at this seq.
                    for item in store.outbox()? {
                        if item.group == group && item.payload == entry.payload.as_bytes() {
                            let msg = own_message(&self.identity, entry.sender, entry.seq, &item);
                            record_own(store, &item, &msg)?;
                            out.events.extend(self.to_chat_event(&msg));
                            if let Some(op) = self.outbox_ops.remove(&item.local_id) {
                                out.completed_op = Some(op);
                            }
                            if matches!(
                                Envelope::decode(&item.content).map(|e| e.content),
                                Ok(Content::LeaveRequest)
                            ) {
                                out.left = true;
                            }
                        }
                    }
                    return Ok(out);
                }
                EntryKind::Proposal => return Ok(out),
            }
        }

        let msg = MlsMessageIn::tls_deserialize_exact(entry.payload.as_bytes())
            .map_err(EntryError::Undecodable)?;
        let protocol = msg
            .try_into_protocol_message()
            .map_err(EntryError::NotGroupMessage)?;
        let is_commit = matches!(entry.kind, EntryKind::Commit { .. });
        if is_commit && mls.pending_commit().is_some() {
            // Another member's commit won this epoch: drop ours (the command retries).
            mls.clear_pending_commit(store)?;
        }
        let processed = mls
            .process_message(&self.provider, protocol)
            .map_err(EntryError::Process)?;
        let sender_leaf = match processed.sender() {
            Sender::Member(idx) => idx.u32(),
            _ => u32::MAX,
        };
        let sender_id = match processed.sender() {
            Sender::Member(idx) => mls
                .member_at(*idx)
                .and_then(|m| member_id(&m).ok())
                .ok_or(EntryError::UnknownSender)?,
            _ => return Err(EntryError::NotFromMember),
        };
        if sender_id.device != entry.sender {
            return Err(EntryError::SenderMismatch {
                relay: entry.sender,
                mls: sender_id.device,
            });
        }
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let bytes = app.into_bytes();
                let env = Envelope::decode(&bytes)?;
                if store.is_seen(&group, &env.id)? {
                    return Err(EntryError::Duplicate);
                }
                store.mark_seen(&group, &env.id)?;
                match &env.content {
                    Content::Text { .. } => {}
                    Content::GroupInfo { name } => {
                        if let Some(r) = self.records.get_mut(&group)
                            && name.len() <= MAX_GROUP_NAME
                        {
                            r.name = name.clone();
                            store.put_group(r)?;
                        }
                    }
                    Content::LeaveRequest => out.leave_requests.push(sender_id.device),
                    _ => {} // attachments, calls, ...: handled by their modules (Event::Content)
                }
                let stored = StoredMessage {
                    group,
                    seq: entry.seq,
                    from: sender_id.user.clone(),
                    from_device: sender_id.device,
                    message_id: env.id,
                    sent_at_ms: env.sent_at_ms,
                    content: bytes,
                };
                store.put_message(&stored)?;
                // What the user sees (text, attachments) is a Message; anything else goes
                // to the module that handles it as Content.
                if let Some(ev) = self.chat_event(&stored, env.content.clone()) {
                    out.events.push(ev);
                } else {
                    out.events.push(Event::Content(ReceivedContent {
                        group,
                        from: sender_id.user.clone(),
                        from_device: sender_id.device,
                        sender_leaf,
                        id: MessageId(env.id),
                        sent_at_ms: env.sent_at_ms,
                        seq: entry.seq,
                        content: env.content,
                    }));
                }
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let removed_self = staged.self_removed();
                // The membership change, from the commit itself (O(changes), not O(group)).
                let mut added = Vec::new();
                for p in staged.add_proposals() {
                    let leaf = p.add_proposal().key_package().leaf_node();
                    let mut id = parse_credential(leaf.credential())?;
                    id.key = leaf.signature_key().as_slice().to_vec();
                    added.push(id);
                }
                let removed: Vec<MemberId> = staged
                    .remove_proposals()
                    .filter_map(|p| mls.member_at(p.remove_proposal().removed()))
                    .filter_map(|m| member_id(&m).ok())
                    .collect();
                // A committer's new leaf (update path) must keep its credential and key.
                let updated = match staged.update_path_leaf_node() {
                    Some(leaf) => {
                        let mut id = parse_credential(leaf.credential())?;
                        id.key = leaf.signature_key().as_slice().to_vec();
                        if id.device != sender_id.device || id.user != sender_id.user {
                            return Err(EntryError::IdentityChanged);
                        }
                        Some(id)
                    }
                    None => None,
                };
                mls.merge_staged_commit(&self.provider, *staged)
                    .map_err(EntryError::Merge)?;
                out.merged = true;
                if removed_self {
                    out.removed = true;
                    if let Some(r) = self.records.get_mut(&group) {
                        r.membership = Membership::Removed;
                        store.put_group(r)?;
                    }
                    out.events.push(Event::RemovedFromGroup { group });
                    return Ok(out);
                }
                let mut pin_events = Vec::new();
                if let Some(id) = &updated {
                    self.check_pin(now_ms, id, &mut pin_events)?;
                }
                for m in &added {
                    self.check_pin(now_ms, m, &mut pin_events)?;
                    if Some(sender_id.device) != self.identity.device {
                        self.to_verify.insert(m.user.clone());
                    }
                }
                if !added.is_empty() || !removed.is_empty() {
                    out.events.push(Event::MembersChanged {
                        group,
                        by: sender_id.user.clone(),
                        added: users_of(&added),
                        removed: users_of(&removed),
                    });
                }
                out.events.extend(pin_events);
            }
            _ => {
                return Err(EntryError::Proposal);
            }
        }
        Ok(out)
    }

    fn to_chat_event(&self, m: &StoredMessage) -> Option<Event> {
        let env = Envelope::decode(&m.content).ok()?;
        self.chat_event(m, env.content)
    }

    /// The Message event for stored message `m` with its (already decoded) content, if
    /// that content is shown to the user.
    fn chat_event(&self, m: &StoredMessage, content: Content) -> Option<Event> {
        let (text, attachment) = content.into_chat_parts()?;
        Some(Event::Message(ChatMessage {
            group: m.group,
            group_name: self
                .records
                .get(&m.group)
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            from: m.from.clone(),
            from_device: m.from_device,
            id: MessageId(m.message_id),
            sent_at_ms: m.sent_at_ms,
            text,
            attachment,
            seq: m.seq,
        }))
    }

    /// Pins a key on first sight; a different key from the pinned one raises KeyChanged.
    fn check_pin(
        &self,
        now_ms: u64,
        m: &MemberId,
        events: &mut Vec<Event>,
    ) -> Result<bool, StoreError> {
        if Some(m.device) == self.identity.device {
            return Ok(true);
        }
        let Ok(key) = <[u8; 32]>::try_from(m.key.as_slice()) else {
            return Ok(false);
        };
        let key = DeviceKey(key);
        let store = self.provider.store();
        match store
            .pinned_devices(&m.user)?
            .into_iter()
            .find(|p| p.device == m.device)
        {
            Some(p) if p.key == key => Ok(true),
            Some(p) => {
                events.push(Event::KeyChanged {
                    user: m.user.clone(),
                    device: m.device,
                    pinned: p.key,
                    presented: key,
                });
                Ok(false)
            }
            None => {
                // Devices pinned together (one Welcome, one directory answer) are one first
                // sight; a device pinned later than the user's others is new.
                let known = store
                    .pinned_devices(&m.user)?
                    .iter()
                    .filter(|p| p.pinned_at_ms < now_ms)
                    .count();
                store.pin_device(&PinnedDevice {
                    user: m.user.clone(),
                    device: m.device,
                    key,
                    pinned_at_ms: now_ms,
                })?;
                if known > 0 {
                    // Not silent: a further device changes the user's safety number.
                    events.push(Event::Warning(format!(
                        "{} has a new device {} (key pinned on first sight; compare safety \
                         numbers to be sure it is theirs)",
                        m.user, m.device
                    )));
                }
                Ok(true)
            }
        }
    }

    /// Compares the keys pinned from MLS credentials with the relay's directory.
    fn verify_against_directory(
        &mut self,
        user: &UserName,
        directory: &[DeviceInfo],
    ) -> Result<(), HandleError> {
        for pin in self.provider.store().pinned_devices(user)? {
            match directory.iter().find(|d| d.device == pin.device) {
                Some(d) if d.key == pin.key => {}
                Some(d) => self.event(Event::KeyChanged {
                    user: user.clone(),
                    device: pin.device,
                    pinned: pin.key,
                    presented: d.key,
                }),
                None => self.warn(format!(
                    "device {} of {user} is a group member but not in the relay's directory",
                    pin.device
                )),
            }
        }
        Ok(())
    }

    fn after_epoch_change(&mut self, now_ms: u64, group: GroupId) -> Result<(), HandleError> {
        self.reseal_stale_posts(group)?;
        // Commands waiting for this group may proceed.
        let ids: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, o)| matches!(&o.kind, OpKind::Change(c) if c.group == group))
            .map(|(id, _)| *id)
            .collect();
        for op in ids {
            self.drive(op);
        }
        self.apply_parked(now_ms, group)
    }

    fn handle_leave_request(&mut self, group: GroupId, leaver: DeviceId) {
        // The remaining member with the lowest leaf index commits the removal; the others
        // would only lose the commit race.
        let Some(mls) = self.groups.get(&group) else {
            return;
        };
        let me = mls.own_leaf_index();
        let first = mls
            .members()
            .filter(|m| {
                parse_credential(&m.credential)
                    .map(|c| c.device != leaver)
                    .unwrap_or(false)
            })
            .map(|m| m.index)
            .min();
        if first == Some(me) {
            self.new_change(group, Vec::new(), Vec::new(), vec![leaver], false);
        }
    }

    // ----------------------------------------------------------------------------------
    // Commands: state machines
    // ----------------------------------------------------------------------------------

    fn new_op(&mut self, kind: OpKind) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        self.ops.insert(id, Op { kind, retries: 0 });
        id
    }

    fn new_change(
        &mut self,
        group: GroupId,
        add: Vec<UserName>,
        remove: Vec<UserName>,
        remove_devices: Vec<DeviceId>,
        update_keys: bool,
    ) -> OpId {
        let stage = if add.is_empty() {
            ChangeStage::Commit
        } else {
            ChangeStage::Directory
        };
        let mut directory: BTreeMap<UserName, Option<Vec<DeviceInfo>>> =
            add.iter().map(|u| (u.clone(), None)).collect();
        if !add.is_empty() {
            // Our own other devices belong in every group we add people to.
            directory.insert(self.identity.user.clone(), None);
        }
        let op = self.new_op(OpKind::Change(Box::new(Change {
            group,
            add,
            remove,
            remove_devices,
            stage,
            directory,
            claims: BTreeMap::new(),
            key_packages: Vec::new(),
            posted: None,
            directory_requested: false,
            update_keys,
            best_effort: false,
        })));
        self.drive(op);
        op
    }

    /// The change that adds our own other devices to a group just created, in place of the
    /// creation command (which completes when it does).
    fn own_devices_change(group: GroupId, user: UserName) -> OpKind {
        OpKind::Change(Box::new(Change {
            group,
            add: Vec::new(),
            remove: Vec::new(),
            remove_devices: Vec::new(),
            stage: ChangeStage::Directory,
            directory: BTreeMap::from([(user, None)]),
            claims: BTreeMap::new(),
            key_packages: Vec::new(),
            posted: None,
            directory_requested: false,
            update_keys: false,
            best_effort: true,
        }))
    }

    fn finish(&mut self, op: OpId, result: Result<(), OpError>) {
        if let Some(o) = self.ops.remove(&op) {
            let result = match (result, &o.kind) {
                (Err(e), OpKind::Change(c)) if c.best_effort => {
                    self.warn(format!(
                        "our other devices were not added to the group: {e}"
                    ));
                    Ok(())
                }
                (r, _) => r,
            };
            self.event(Event::OpDone { op, result });
        }
    }

    /// Drops our own user from a change (nothing to add, or its look-up failed: the change
    /// goes on for the other users), then moves the change on if it was waiting only for it.
    fn drop_own_user(&mut self, op: OpId, why: Option<OwnDevicesSkipped>) {
        if let Some(why) = why {
            self.warn(format!("our other devices are not added: {why}"));
        }
        let own = self.identity.user.clone();
        let Some(Op {
            kind: OpKind::Change(c),
            ..
        }) = self.ops.get_mut(&op)
        else {
            return;
        };
        c.directory.remove(&own);
        c.claims.remove(&own);
        match c.stage {
            ChangeStage::Directory => self.directory_progress(op),
            ChangeStage::Claim => self.claims_progress(op),
            _ => {}
        }
    }

    fn fail_group_ops(&mut self, group: GroupId, why: &str) {
        let ids: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, o)| matches!(&o.kind, OpKind::Change(c) if c.group == group))
            .map(|(id, _)| *id)
            .collect();
        for op in ids {
            self.finish(op, Err(OpError::NotApplicable(why.to_string())));
        }
    }

    /// Moves a command forward as far as it can go now.
    fn drive(&mut self, op: OpId) {
        let ready = self.conn == Conn::Ready;
        let Some(o) = self.ops.get_mut(&op) else {
            return;
        };
        match &mut o.kind {
            OpKind::Send => {}
            OpKind::CreateGroup {
                group, requested, ..
            } => {
                if ready && !*requested {
                    *requested = true;
                    let group = *group;
                    self.request(Request::CreateGroup { group }, Pending::CreateGroup { op });
                }
            }
            OpKind::Change(c) => match c.stage {
                ChangeStage::Directory => {
                    if ready && !c.directory_requested {
                        c.directory_requested = true;
                        let users: Vec<UserName> = c.directory.keys().cloned().collect();
                        for user in users {
                            self.request(
                                Request::ListDevices { user: user.clone() },
                                Pending::Directory { op, user },
                            );
                        }
                    }
                }
                ChangeStage::Claim => {}
                ChangeStage::Commit => {
                    if ready {
                        self.try_commit(op);
                    }
                }
                ChangeStage::AwaitEpoch(lost_at) => {
                    let group = c.group;
                    let now = self.groups.get(&group).map(|g| g.epoch().as_u64());
                    if now.is_some_and(|e| e > lost_at) {
                        c.stage = ChangeStage::Commit;
                        o.retries += 1;
                        if o.retries > MAX_COMMIT_RETRIES {
                            let n = o.retries;
                            self.finish(op, Err(OpError::TooManyRetries(n)));
                        } else if ready {
                            self.try_commit(op);
                        }
                    }
                }
                ChangeStage::Posting => {}
            },
        }
    }

    fn on_group_created(
        &mut self,
        now_ms: u64,
        op: OpId,
        result: Result<Reply, ErrorReply>,
    ) -> Result<(), HandleError> {
        let Some(Op {
            kind: OpKind::CreateGroup { group, name, .. },
            ..
        }) = self.ops.get(&op)
        else {
            return Ok(());
        };
        let (group, name) = (*group, name.clone());
        match result {
            Ok(Reply::GroupCreated) => {}
            Ok(_) => {
                self.finish(
                    op,
                    Err(OpError::UnexpectedReply {
                        to: "group creation",
                    }),
                );
                return Ok(());
            }
            Err(e) => {
                self.finish(op, Err(OpError::Relay(e)));
                return Ok(());
            }
        }
        let Some(device) = self.identity.device else {
            self.finish(op, Err(OpError::NotApplicable("not registered".into())));
            return Ok(());
        };
        let config = match Extensions::single(Extension::Unknown(
            GROUP_NAME_EXTENSION,
            UnknownExtension(name.as_bytes().to_vec()),
        )) {
            Ok(ext) => MlsGroupCreateConfig::builder()
                .ciphersuite(CIPHERSUITE)
                .use_ratchet_tree_extension(true)
                .max_past_epochs(MAX_PAST_EPOCHS)
                .capabilities(capabilities())
                .with_group_context_extensions(ext)
                .build(),
            Err(e) => {
                self.finish(op, Err(OpError::Mls(e.to_string())));
                return Ok(());
            }
        };
        let store = self.provider.store();
        store.begin()?;
        let created = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            MlsGroupId::from_slice(&group.0),
            self.credential_with_key(device),
        );
        match created {
            Ok(mls) => {
                let record = GroupRecord {
                    id: group,
                    name,
                    membership: Membership::Active,
                    joined_at_ms: now_ms,
                };
                if let Err(e) = store.put_group(&record).and_then(|_| store.commit()) {
                    let _ = store.rollback();
                    return Err(e.into());
                }
                self.records.insert(group, record);
                self.groups.insert(group, mls);
                // Our own other devices join at once (first commit); the creation command
                // completes when that is done.
                if let Some(o) = self.ops.get_mut(&op) {
                    o.kind = Self::own_devices_change(group, self.identity.user.clone());
                }
                self.drive(op);
            }
            Err(e) => {
                let _ = store.rollback();
                self.finish(op, Err(OpError::Mls(e.to_string())));
            }
        }
        Ok(())
    }

    fn on_directory(
        &mut self,
        now_ms: u64,
        op: OpId,
        user: UserName,
        result: Result<Reply, ErrorReply>,
    ) {
        let own = user == self.identity.user;
        let Some(reply) = self.lookup_reply(op, &user, result) else {
            return;
        };
        let devices = match reply {
            Reply::Devices { user: u, devices } if u == user => devices.0,
            _ => {
                self.finish(op, Err(OpError::UnexpectedReply { to: "directory" }));
                return;
            }
        };
        if devices.is_empty() && !own {
            self.finish(op, Err(OpError::NoDevices(user)));
            return;
        }
        // Our own user: only devices not yet in the group (never this one) are added.
        let devices = if own {
            let present: BTreeSet<DeviceId> = self
                .op_group(op)
                .and_then(|group| self.groups.get(&group))
                .map(|g| {
                    g.members()
                        .filter_map(|m| member_id(&m).ok().map(|id| id.device))
                        .collect()
                })
                .unwrap_or_default();
            let missing: Vec<DeviceInfo> = devices
                .into_iter()
                .filter(|d| Some(d.device) != self.identity.device && !present.contains(&d.device))
                .collect();
            if missing.is_empty() {
                self.drop_own_user(op, None);
                return;
            }
            missing
        } else {
            devices
        };
        // Trust on first use: pin unknown devices, refuse changed keys.
        let mut events = Vec::new();
        let mut changed = false;
        for d in &devices {
            let m = MemberId {
                user: user.clone(),
                device: d.device,
                key: d.key.0.to_vec(),
            };
            match self.check_pin(now_ms, &m, &mut events) {
                Ok(true) => {}
                Ok(false) => changed = true,
                Err(e) => {
                    self.finish(op, Err(OpError::Storage(e.to_string())));
                    return;
                }
            }
        }
        for e in events {
            self.event(e);
        }
        if changed {
            if own {
                self.drop_own_user(op, Some(OwnDevicesSkipped::KeyChanged(user.clone())));
            } else {
                self.finish(op, Err(OpError::KeyChanged(user)));
            }
            return;
        }
        let Some(Op {
            kind: OpKind::Change(c),
            ..
        }) = self.ops.get_mut(&op)
        else {
            return;
        };
        c.directory.insert(user, Some(devices));
        self.directory_progress(op);
    }

    /// The group of a change (`None` when `op` is not a change).
    fn op_group(&self, op: OpId) -> Option<GroupId> {
        match self.ops.get(&op).map(|o| &o.kind) {
            Some(OpKind::Change(c)) => Some(c.group),
            _ => None,
        }
    }

    /// Claims KeyPackages once every directory answer is in (commits at once when no user
    /// is left to add).
    fn directory_progress(&mut self, op: OpId) {
        let Some(Op {
            kind: OpKind::Change(c),
            ..
        }) = self.ops.get_mut(&op)
        else {
            return;
        };
        if c.stage != ChangeStage::Directory || !c.directory.values().all(|v| v.is_some()) {
            return;
        }
        if c.directory.is_empty() {
            c.stage = ChangeStage::Commit;
            self.drive(op);
            return;
        }
        c.stage = ChangeStage::Claim;
        let users: Vec<UserName> = c.directory.keys().cloned().collect();
        for user in users {
            self.request(
                Request::ClaimKeyPackages { user: user.clone() },
                Pending::Claim { op, user },
            );
        }
    }

    /// The relay's answer to a directory look-up or a claim for `user`, or `None` when it
    /// failed: a failure for our own user only drops our own devices from the change (with a
    /// warning), a failure for anyone else fails the operation.
    fn lookup_reply(
        &mut self,
        op: OpId,
        user: &UserName,
        result: Result<Reply, ErrorReply>,
    ) -> Option<Reply> {
        match result {
            Ok(reply) => Some(reply),
            Err(e) if *user == self.identity.user => {
                self.drop_own_user(op, Some(OwnDevicesSkipped::Refused(e)));
                None
            }
            Err(e) => {
                self.finish(
                    op,
                    Err(OpError::UserRefused {
                        user: user.clone(),
                        reply: e,
                    }),
                );
                None
            }
        }
    }

    fn on_claim(&mut self, op: OpId, user: UserName, result: Result<Reply, ErrorReply>) {
        let own = user == self.identity.user;
        let Some(reply) = self.lookup_reply(op, &user, result) else {
            return;
        };
        let claimed = match reply {
            Reply::KeyPackages {
                user: u,
                key_packages,
            } if u == user => key_packages.0,
            _ => {
                self.finish(op, Err(OpError::UnexpectedReply { to: "claim" }));
                return;
            }
        };
        let Some(Op {
            kind: OpKind::Change(c),
            ..
        }) = self.ops.get_mut(&op)
        else {
            return;
        };
        // Only KeyPackages of the devices looked up count (for our own user the relay
        // also hands out one of this device's, which is not added).
        let wanted = c
            .directory
            .get(&user)
            .cloned()
            .flatten()
            .unwrap_or_default();
        let claimed: Vec<ClaimedKeyPackage> = claimed
            .into_iter()
            .filter(|k| wanted.iter().any(|d| d.device == k.device))
            .collect();
        if claimed.is_empty() {
            if own {
                self.drop_own_user(op, Some(OwnDevicesSkipped::NoKeyPackage));
            } else {
                self.finish(op, Err(OpError::NoDevices(user)));
            }
            return;
        }
        c.claims.insert(user, Some(claimed));
        self.claims_progress(op);
    }

    /// Validates the claimed KeyPackages once every claim is in, then commits.
    fn claims_progress(&mut self, op: OpId) {
        let Some(Op {
            kind: OpKind::Change(c),
            ..
        }) = self.ops.get_mut(&op)
        else {
            return;
        };
        if c.stage != ChangeStage::Claim
            || c.claims.len() < c.directory.len()
            || c.claims.values().any(|v| v.is_none())
        {
            return;
        }
        // All claims in: validate each KeyPackage against the directory.
        let mut kps = Vec::new();
        let mut failure = None;
        for (user, claimed) in &c.claims {
            let devices = c.directory.get(user).cloned().flatten().unwrap_or_default();
            for ck in claimed.iter().flatten() {
                match validate_key_package(&self.provider, user, ck, &devices) {
                    Ok(kp) => kps.push((user.clone(), ck.device, kp)),
                    Err(reason) => {
                        failure = Some(OpError::InvalidKeyMaterial {
                            user: user.clone(),
                            reason: reason.to_string(),
                        });
                    }
                }
            }
        }
        if let Some(f) = failure {
            self.finish(op, Err(f));
            return;
        }
        c.key_packages = kps;
        c.stage = ChangeStage::Commit;
        self.drive(op);
    }

    /// Builds and posts the commit of a change, if the group has no commit in flight.
    fn try_commit(&mut self, op: OpId) {
        let Some(Op {
            kind: OpKind::Change(c),
            ..
        }) = self.ops.get(&op)
        else {
            return;
        };
        let group = c.group;
        let Some(mls) = self.groups.get_mut(&group) else {
            self.finish(
                op,
                Err(OpError::NotApplicable("not a member of the group".into())),
            );
            return;
        };
        if mls.pending_commit().is_some() {
            return; // another command's commit is in flight; retried after it settles
        }
        let members: Vec<(LeafNodeIndex, MemberId)> = mls
            .members()
            .filter_map(|m| member_id(&m).ok().map(|id| (m.index, id)))
            .collect();
        let present: BTreeSet<DeviceId> = members.iter().map(|(_, m)| m.device).collect();
        let to_add: Vec<(DeviceId, KeyPackage)> = c
            .key_packages
            .iter()
            .filter(|(_, d, _)| !present.contains(d))
            .map(|(_, d, kp)| (*d, kp.clone()))
            .collect();
        let to_remove: Vec<(LeafNodeIndex, DeviceId)> = members
            .iter()
            .filter(|(_, m)| c.remove.contains(&m.user) || c.remove_devices.contains(&m.device))
            .filter(|(_, m)| Some(m.device) != self.identity.device)
            .map(|(i, m)| (*i, m.device))
            .collect();
        let update_keys = c.update_keys;
        if to_add.is_empty() && to_remove.is_empty() && !update_keys {
            let result = if !c.remove.is_empty() && c.add.is_empty() {
                Err(OpError::NotApplicable(
                    "none of these users is a member".into(),
                ))
            } else {
                Ok(())
            };
            self.finish(op, result);
            return;
        }
        let epoch = Epoch(mls.epoch().as_u64());
        let store = self.provider.store();
        if let Err(e) = store.begin() {
            self.finish(op, Err(OpError::Storage(e.to_string())));
            return;
        }
        let built = (|| -> Result<(Vec<u8>, Option<Vec<u8>>), CommitBuildError> {
            if !to_add.is_empty() && !to_remove.is_empty() {
                return Err(CommitBuildError::AddAndRemove);
            }
            if to_add.is_empty() && to_remove.is_empty() {
                let bundle = mls
                    .self_update(&self.provider, &self.signer, LeafNodeParameters::default())
                    .map_err(CommitBuildError::SelfUpdate)?;
                return Ok((
                    bundle
                        .commit()
                        .to_bytes()
                        .map_err(CommitBuildError::Encode)?,
                    None,
                ));
            }
            if !to_add.is_empty() {
                let kps: Vec<KeyPackage> = to_add.iter().map(|(_, kp)| kp.clone()).collect();
                let (commit, welcome, _) = mls
                    .add_members(&self.provider, &self.signer, &kps)
                    .map_err(CommitBuildError::Add)?;
                Ok((
                    commit.to_bytes().map_err(CommitBuildError::Encode)?,
                    Some(welcome.to_bytes().map_err(CommitBuildError::Encode)?),
                ))
            } else {
                let leaves: Vec<LeafNodeIndex> = to_remove.iter().map(|(i, _)| *i).collect();
                let (commit, _, _) = mls
                    .remove_members(&self.provider, &self.signer, &leaves)
                    .map_err(CommitBuildError::Remove)?;
                Ok((commit.to_bytes().map_err(CommitBuildError::Encode)?, None))
            }
        })();
        let (commit, welcome) = match built {
            Ok(b) => b,
            Err(e) => {
                let _ = store.rollback();
                self.reload_group(&group);
                self.finish(op, Err(OpError::Mls(e.to_string())));
                return;
            }
        };
        if let Err(e) = store.commit() {
            let _ = store.rollback();
            self.reload_group(&group);
            self.finish(op, Err(OpError::Storage(e.to_string())));
            return;
        }
        let kind = PostKind::Commit {
            added: BoundedVec(to_add.iter().map(|(d, _)| *d).collect()),
            removed: BoundedVec(to_remove.iter().map(|(_, d)| *d).collect()),
            welcome: welcome.map(Payload),
        };
        if let Some(Op {
            kind: OpKind::Change(c),
            ..
        }) = self.ops.get_mut(&op)
        {
            c.stage = ChangeStage::Posting;
            c.posted = Some((epoch, kind.clone(), commit.clone()));
        }
        self.request(
            Request::Post {
                group,
                epoch,
                kind,
                payload: Payload(commit),
            },
            Pending::PostCommit { op },
        );
    }

    fn on_commit_posted(
        &mut self,
        now_ms: u64,
        op: OpId,
        result: Result<Reply, ErrorReply>,
    ) -> Result<(), HandleError> {
        let Some(Op {
            kind: OpKind::Change(c),
            ..
        }) = self.ops.get_mut(&op)
        else {
            return Ok(());
        };
        let group = c.group;
        match result {
            Ok(Reply::Posted { .. }) => {
                c.posted = None;
                if let Some(mls) = self.groups.get_mut(&group)
                    && mls.pending_commit().is_some()
                {
                    let store = self.provider.store();
                    store.begin()?;
                    match mls.merge_pending_commit(&self.provider) {
                        Ok(()) => store.commit()?,
                        Err(e) => {
                            let _ = store.rollback();
                            self.reload_group(&group);
                            self.finish(op, Err(OpError::Mls(e.to_string())));
                            return Ok(());
                        }
                    }
                }
                self.finish(op, Ok(()));
                self.after_epoch_change(now_ms, group)
            }
            Err(e) if e.code == ErrorCode::StaleEpoch => {
                // Lost the race. Keep our pending commit until we see the winner (it might
                // be our own, accepted before a reconnect); then rebuild.
                let current = self
                    .groups
                    .get(&group)
                    .map(|g| g.epoch().as_u64())
                    .unwrap_or(0);
                let lost_at = c.posted.as_ref().map(|p| p.0.0).unwrap_or(current);
                c.stage = ChangeStage::AwaitEpoch(lost_at);
                c.posted = None;
                let after = self.provider.store().cursor(&Stream::Group(group))?;
                self.request(
                    Request::Fetch {
                        group,
                        after,
                        limit: FETCH_LIMIT,
                    },
                    Pending::Fetch,
                );
                // The winner may already be processed (it can arrive before this reply).
                self.drive(op);
                Ok(())
            }
            other => {
                if let Some(mls) = self.groups.get_mut(&group) {
                    mls.clear_pending_commit(self.provider.storage())?;
                }
                let why = match other {
                    Err(e) => OpError::Relay(e),
                    Ok(_) => OpError::UnexpectedReply { to: "commit" },
                };
                self.finish(op, Err(why));
                Ok(())
            }
        }
    }

    /// Local ids of the outbox items posted on this connection whose reply has not come.
    fn posts_in_flight(&self) -> BTreeSet<u64> {
        self.requests
            .values()
            .filter_map(|p| match p {
                Pending::PostApplication { local_id } => Some(*local_id),
                _ => None,
            })
            .collect()
    }

    /// Posts a queued item once the backlog is in. The relay accepts an application message
    /// only in its current epoch or the one before, and its epoch is at least ours: an item
    /// older than that (queued while offline across commits) is encrypted again at our
    /// current epoch first. It was not stored: its echo would have been in the backlog.
    fn resend_outbox_item(&mut self, item: OutboxItem) -> Result<(), HandleError> {
        let ours = self.groups.get(&item.group).map(|g| g.epoch().as_u64());
        match ours {
            Some(ours) if item.epoch.0.saturating_add(1) < ours => self.reseal_and_post(&item),
            _ => {
                self.post_outbox_item(&item);
                Ok(())
            }
        }
    }

    /// Encrypts a queued item again at the group's current epoch (same envelope, so the
    /// same message id) and posts it. If that fails (e.g. a commit of ours is pending), it
    /// waits for the next epoch change.
    fn reseal_and_post(&mut self, item: &OutboxItem) -> Result<(), HandleError> {
        match self.seal_into_outbox(
            Some(item.local_id),
            item.group,
            item.message_id,
            item.sent_at_ms,
            item.content.clone(),
        ) {
            Ok(resealed) => {
                self.stale_posts.remove(&item.local_id);
                if self.conn == Conn::Ready {
                    self.post_outbox_item(&resealed);
                }
                Ok(())
            }
            Err(CommandError::Store(e)) => Err(e.into()),
            Err(e) => {
                self.stale_posts.insert(item.local_id);
                self.warn(format!(
                    "a queued message could not be encrypted at the current epoch yet: {e}"
                ));
                Ok(())
            }
        }
    }

    /// After an epoch change in `group`: the queued items the relay refused as stale are
    /// encrypted at the new epoch and posted.
    fn reseal_stale_posts(&mut self, group: GroupId) -> Result<(), HandleError> {
        let ids: Vec<u64> = self.stale_posts.iter().copied().collect();
        for local_id in ids {
            match self.provider.store().outbox_item(local_id)? {
                Some(item) if item.group == group => {
                    let ours = self.groups.get(&group).map(|g| g.epoch().as_u64());
                    if ours.is_some_and(|e| e > item.epoch.0) {
                        self.reseal_and_post(&item)?;
                    }
                }
                Some(_) => {}
                None => {
                    self.stale_posts.remove(&local_id);
                }
            }
        }
        Ok(())
    }

    fn post_outbox_item(&mut self, item: &OutboxItem) {
        self.request(
            Request::Post {
                group: item.group,
                epoch: item.epoch,
                kind: PostKind::Application,
                payload: Payload(item.payload.clone()),
            },
            Pending::PostApplication {
                local_id: item.local_id,
            },
        );
    }

    fn on_app_posted(
        &mut self,
        now_ms: u64,
        local_id: u64,
        result: Result<Reply, ErrorReply>,
    ) -> Result<(), HandleError> {
        let retry = self.retries.remove(&local_id);
        let store = self.provider.store();
        let Some(item) = store.outbox_item(local_id)? else {
            // Already moved to history by its echo.
            return Ok(());
        };
        match result {
            Ok(Reply::Posted { seq }) => {
                let Some(device) = self.identity.device else {
                    // Posts are sent only once authenticated, hence registered.
                    return Err(HandleError::Protocol(
                        "a Posted reply before registration".into(),
                    ));
                };
                let msg = own_message(&self.identity, device, seq, &item);
                store.begin()?;
                if let Err(e) = record_own(store, &item, &msg) {
                    let _ = store.rollback();
                    return Err(e.into());
                }
                store.commit()?;
                if let Some(ev) = self.to_chat_event(&msg) {
                    self.event(ev);
                }
                let is_leave = matches!(
                    Envelope::decode(&item.content).map(|e| e.content),
                    Ok(Content::LeaveRequest)
                );
                if is_leave {
                    self.forget_group(item.group, Membership::Left)?;
                }
                if let Some(op) = self.outbox_ops.remove(&local_id) {
                    self.finish(op, Ok(()));
                }
            }
            Err(e)
                if matches!(
                    e.code,
                    ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
                ) =>
            {
                // Retryable: it stays in the outbox and goes out again when the relay's
                // delay (or our backoff) is over, or after the next (re)connection.
                let attempts = retry.map_or(0, |r| r.attempts);
                let backoff = MIN_RETRY_DELAY_MS
                    .saturating_mul(1u64 << attempts.min(16))
                    .min(MAX_RETRY_DELAY_MS);
                let delay = e
                    .retry_after_ms
                    .map_or(backoff, |ms| u64::from(ms).min(MAX_RETRY_DELAY_MS));
                self.retries.insert(
                    local_id,
                    Retry {
                        attempts: attempts.saturating_add(1),
                        due_ms: Some(now_ms.saturating_add(delay)),
                    },
                );
                self.warn(format!("a message will be resent in {delay} ms: {e}"));
            }
            Err(e) if e.code == ErrorCode::StaleEpoch && self.groups.contains_key(&item.group) => {
                // Not stored: the group moved past the message's epoch while it waited
                // (offline, or racing a commit). It is not dropped: it is encrypted again at
                // our current epoch, now if we are ahead of it, else after our next epoch
                // change (the commit that made it stale is on its way to us).
                let ours = self.groups.get(&item.group).map(|g| g.epoch().as_u64());
                if ours.is_some_and(|ours| ours > item.epoch.0) {
                    self.reseal_and_post(&item)?;
                } else {
                    self.stale_posts.insert(local_id);
                }
            }
            Err(e) => {
                // Refused for good (not a member, too large...): drop it from the outbox.
                store.delete_outbox(local_id)?;
                if e.code == ErrorCode::NotMember
                    && self.records.get(&item.group).map(|r| r.membership)
                        == Some(Membership::Active)
                {
                    // We were removed while offline and missed the commit.
                    self.forget_group(item.group, Membership::Removed)?;
                    self.event(Event::RemovedFromGroup { group: item.group });
                }
                if let Some(op) = self.outbox_ops.remove(&local_id) {
                    self.finish(op, Err(OpError::Relay(e)));
                } else {
                    self.warn(format!("a queued message was refused by the relay: {e}"));
                }
            }
            Ok(other) => self.warn(format!("unexpected reply to a post: {other:?}")),
        }
        Ok(())
    }

    fn forget_group(&mut self, group: GroupId, membership: Membership) -> Result<(), HandleError> {
        let store = self.provider.store();
        if let Some(r) = self.records.get_mut(&group) {
            r.membership = membership;
            store.put_group(r)?;
        }
        if let Some(mut mls) = self.groups.remove(&group) {
            store.begin()?;
            match mls.delete(store) {
                Ok(()) => store.commit()?,
                Err(e) => {
                    let _ = store.rollback();
                    return Err(e.into());
                }
            }
        }
        let why = if membership == Membership::Removed {
            "removed from the group"
        } else {
            "left the group"
        };
        self.fail_group_ops(group, why);
        Ok(())
    }

    // ----------------------------------------------------------------------------------
    // Helpers
    // ----------------------------------------------------------------------------------

    fn active_group(&self, group: &str) -> Result<GroupId, CommandError> {
        let id = self.resolve(group)?;
        if !self.groups.contains_key(&id) {
            return Err(CommandError::NotMember(group.to_string()));
        }
        Ok(id)
    }

    fn reload_group(&mut self, group: &GroupId) {
        if self.records.get(group).map(|r| r.membership) != Some(Membership::Active) {
            self.groups.remove(group);
            return;
        }
        let mls_id = MlsGroupId::from_slice(&group.0);
        match MlsGroup::load(self.provider.storage(), &mls_id) {
            Ok(Some(g)) => {
                self.groups.insert(*group, g);
            }
            _ => {
                self.groups.remove(group);
            }
        }
    }

    fn credential_with_key(&self, device: DeviceId) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(credential_identity(&self.identity.user, device))
                .into(),
            signature_key: self.identity.public_key.0.to_vec().into(),
        }
    }

    fn request(&mut self, body: Request, pending: Pending) {
        let id = RequestId(self.next_request);
        self.next_request = self.next_request.wrapping_add(1).max(1);
        self.requests.insert(id, pending);
        self.outputs
            .push_back(Output::Send(ClientFrame::Request { id, body }));
    }

    fn ack(&mut self, stream: Stream, seq: Seq) {
        if self.conn == Conn::Ready {
            self.request(Request::Ack { stream, seq }, Pending::Ack);
        }
    }

    fn event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn warn(&mut self, text: String) {
        self.event(Event::Warning(text));
    }
}

#[derive(Default)]
struct Outcome {
    merged: bool,
    /// Our own leave request was accepted.
    left: bool,
    removed: bool,
    events: Vec<Event>,
    completed_op: Option<OpId>,
    leave_requests: Vec<DeviceId>,
}

/// Our own message `item`, sent by this `device`, as stored at `seq`.
fn own_message(
    identity: &Identity,
    device: DeviceId,
    seq: Seq,
    item: &OutboxItem,
) -> StoredMessage {
    StoredMessage {
        group: item.group,
        seq,
        from: identity.user.clone(),
        from_device: device,
        message_id: item.message_id,
        sent_at_ms: item.sent_at_ms,
        content: item.content.clone(),
    }
}

fn record_own<S: Store>(
    store: &S,
    item: &OutboxItem,
    msg: &StoredMessage,
) -> Result<(), StoreError> {
    store.put_message(msg)?;
    store.mark_seen(&item.group, &item.message_id)?;
    store.delete_outbox(item.local_id)
}

fn users_of(members: &[MemberId]) -> Vec<UserName> {
    let mut u: Vec<UserName> = members.iter().map(|m| m.user.clone()).collect();
    u.sort();
    u.dedup();
    u
}

fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&[CIPHERSUITE]),
        // A KeyPackage's own extensions must be listed too: the last-resort one is, or
        // every last-resort KeyPackage is refused by the members that claim it.
        Some(&[
            ExtensionType::Unknown(GROUP_NAME_EXTENSION),
            ExtensionType::LastResort,
        ]),
        None,
        None,
    )
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

/// The MLS BasicCredential identity of a device: `cove:<user>:<device id>`.
pub fn credential_identity(user: &UserName, device: DeviceId) -> Vec<u8> {
    format!("cove:{}:{}", user, device.0).into_bytes()
}

fn parse_credential(credential: &Credential) -> Result<MemberId, CredentialError> {
    let basic = BasicCredential::try_from(credential.clone())?;
    let text = std::str::from_utf8(basic.identity()).map_err(|_| CredentialError::NotUtf8)?;
    let rest = text.strip_prefix("cove:").ok_or(CredentialError::NotCove)?;
    let (user, device) = rest.rsplit_once(':').ok_or(CredentialError::Malformed)?;
    let user = UserName::new(user)?;
    let device = DeviceId(device.parse().map_err(|_| CredentialError::DeviceId)?);
    Ok(MemberId {
        user,
        device,
        key: Vec::new(),
    })
}

fn member_id(m: &openmls::prelude::Member) -> Result<MemberId, CredentialError> {
    let mut id = parse_credential(&m.credential)?;
    id.key = m.signature_key.clone();
    Ok(id)
}

fn validate_key_package<S: Store>(
    provider: &CoveProvider<S>,
    user: &UserName,
    claimed: &ClaimedKeyPackage,
    directory: &[DeviceInfo],
) -> Result<KeyPackage, KeyPackageError> {
    let msg = MlsMessageIn::tls_deserialize_exact(claimed.key_package.as_bytes())
        .map_err(KeyPackageError::Undecodable)?;
    let MlsMessageBodyIn::KeyPackage(kp_in) = msg.extract() else {
        return Err(KeyPackageError::NotKeyPackage);
    };
    let kp_in: KeyPackageIn = kp_in;
    let kp = kp_in
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(KeyPackageError::Invalid)?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(KeyPackageError::WrongCiphersuite);
    }
    let id = parse_credential(kp.leaf_node().credential())?;
    if &id.user != user || id.device != claimed.device {
        return Err(KeyPackageError::OtherDevice);
    }
    let dir = directory
        .iter()
        .find(|d| d.device == claimed.device)
        .ok_or(KeyPackageError::NotInDirectory)?;
    if kp.leaf_node().signature_key().as_slice() != dir.key.0 {
        return Err(KeyPackageError::KeyMismatch);
    }
    Ok(kp)
}

/// The safety number of two users over their device keys: for each user, 30 digits from an
/// iterated SHA-512 over a label, the name and the sorted keys; the two halves in name order.
pub fn safety_number(
    a: &UserName,
    a_keys: &[DeviceKey],
    b: &UserName,
    b_keys: &[DeviceKey],
) -> String {
    fn half(user: &UserName, keys: &[DeviceKey]) -> String {
        let mut keys: Vec<[u8; 32]> = keys.iter().map(|k| k.0).collect();
        keys.sort();
        keys.dedup();
        let mut input = Vec::new();
        input.extend_from_slice(b"cove/v1/safety-number\0");
        input.extend_from_slice(&(user.as_str().len() as u64).to_be_bytes());
        input.extend_from_slice(user.as_str().as_bytes());
        for k in &keys {
            input.extend_from_slice(k);
        }
        let mut h = Sha512::digest(&input).to_vec();
        for _ in 0..1024 {
            let mut d = Sha512::new();
            d.update(&h);
            d.update(&input);
            h = d.finalize().to_vec();
        }
        let mut out = String::new();
        for chunk in h.chunks(5).take(6) {
            let mut v: u64 = 0;
            for b in chunk {
                v = (v << 8) | u64::from(*b);
            }
            out.push_str(&format!("{:05}", v % 100_000));
        }
        out
    }
    let (first, second) = if a <= b {
        ((a, a_keys), (b, b_keys))
    } else {
        ((b, b_keys), (a, a_keys))
    };
    let digits = half(first.0, first.1) + &half(second.0, second.1);
    let groups: Vec<String> = digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    groups.join(" ")
}
