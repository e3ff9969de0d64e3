//! The client state machine: a small dispatcher over parts that own their state.
//!
//! [`Client`] holds the connection state, the requests in flight and the output queue, and
//! routes each input (a frame, a command, a timeout) to the part it concerns. The parts never
//! send anything themselves: they push [`effects::Effect`]s (requests with what their answer
//! is for, events, acks) and return what the other parts must do (an epoch changed, a group
//! is to be forgotten, a command completed), which the dispatcher applies in order.
//!
//! The parts, each importing only those listed before it (no cycles):
//!
//! ```text
//! effects       Effect, Pending: what the parts ask the dispatcher to do
//! acks          Acks: cumulative acks per stream, sent by count or timer, mostly unanswered
//! mls           ciphersuite, group-name extension, Cove credentials
//! device        Me: this device's keys, challenge answers, device authorisations
//! own_list      the user's identity key and signed device list (first device, or taken
//!               over at a password login), publishing; this device's certificate
//! leaves        Leaves: leaf certificates checked; Welcomes and group logs held until the
//!               device lists they need are in; refused leaves reported once
//! groups        Groups: loaded MLS groups and group records; name resolution, queries
//! context       Cx: provider + Me + Groups + readiness, lent to one step of a part
//! chat_log      replies, reactions, edits, deletes: references kept in the store,
//!               applied in log order, deletes erasing; one message rendered
//! history       chat messages from stored messages
//! group_settings per-group settings, read receipts, the expiry index (issue 13)
//! trust         Trust: key pinning, key changes, directory checks, safety numbers
//! key_packages  KeyPackages: stock check and top-up; validation of claimed KeyPackages
//! outbox        Outbox: sealing, posting, retries with backoff, resealing stale posts
//! roles         group roles (admins): who is one, the commit policy, roles-change events
//! changes       Changes: group creation, add/remove (directory, claims), key updates,
//!               commits and commit races, leave requests of others
//! welcome       Welcomes: joining a group from the inbox
//! inbound       Inbound: group log entries: route, park, apply
//! rejoin        Rejoins: rejoining a group this device cannot follow, by external commit;
//!               joining the user's groups the same way after a password login
//! mod           Client: the dispatcher and the public API
//! ```

mod acks;
mod admins;
mod changes;
mod chat;
pub(crate) mod chat_log;
mod context;
mod device;
mod drive;
mod effects;
mod group_settings;
mod groups;
mod history;
mod inbound;
mod key_packages;
mod leaves;
mod link_history;
mod mls;
mod outbox;
mod own_list;
mod rejoin;
mod roles;
mod search;
mod settings;
mod trust;
mod welcome;

use std::collections::{BTreeSet, HashMap, VecDeque};

use cove_store::{Identity, Membership, Store, StoreError};
use cove_wire::sign::ChannelBinding;
use cove_wire::{
    ClientFrame, Delivery, DeviceId, DeviceKey, ErrorCode, ErrorReply, GroupEntry, GroupId,
    InboxEntry, Reply, Request, RequestId, Seq, ServerFrame, Signature, Stream, UserName,
};
use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use self::acks::{AckKind, Acks};
use self::changes::{Changes, Goal};
use self::context::Cx;
use self::device::Me;
use self::effects::{Effect, Effects, Pending};
use self::groups::Groups;
use self::inbound::{Inbound, Route};
use self::key_packages::KeyPackages;
use self::leaves::{Leaves, RefusedLeaf};
use self::outbox::Outbox;
use self::rejoin::Rejoins;
use self::trust::Trust;
use self::welcome::Inboxed;
use crate::content::{Content, MAX_TEXT_BYTES};
use crate::error::{InvalidArgument, NotApplicable, ProtocolViolation, Shared, Warning};
use crate::provider::CoveProvider;
use crate::types::*;

pub use self::acks::{
    ACK_BATCH, ACK_DELAY_MS, ACK_IDLE_MS, ACK_INTERVAL_MS, MAX_UNCONFIRMED_QUIET_ACKS,
};
pub use self::changes::MAX_COMMIT_RETRIES;
pub use self::inbound::{MAX_PARKED_BYTES, MAX_PENDING_PER_GROUP, UNJOINED_PARK_MS};
pub use self::key_packages::{KEY_PACKAGE_BATCH, KEY_PACKAGE_LOW_WATER};
pub use self::mls::{
    CIPHERSUITE, DEVICE_CERTIFICATE_EXTENSION, MAX_GROUP_NAME, MAX_PAST_EPOCHS, PADDING_BUCKET,
    credential_identity,
};
pub use self::outbox::{MAX_RETRY_DELAY_MS, MIN_RETRY_DELAY_MS};
pub use self::rejoin::{MAX_REJOIN_ATTEMPTS, placeholder_name};
pub use self::settings::{MAX_DISAPPEARING_SECS, RECEIPT_INTERVAL_MS, TYPING_FRESH_MS};
pub use self::trust::safety_number;

/// A Cove device: the sans-IO client core. See the crate docs for the main loop.
pub struct Client<S: Store> {
    /// Store, crypto and the injected randomness.
    provider: CoveProvider<S>,
    /// This device.
    me: Me,
    /// The connection's state.
    conn: Conn,
    /// The current connection's channel binding (set by [`Client::handle_connected`]): the
    /// challenge answer signs it.
    channel: Option<ChannelBinding>,
    /// The id of the next request.
    next_request: u32,
    /// Requests in flight on this connection, by id.
    requests: HashMap<RequestId, Pending>,
    /// The id of the next command.
    next_op: u64,
    /// What the shell is to do next.
    outputs: VecDeque<Output>,
    /// Effects the parts asked for and not yet applied (empty between inputs).
    fx: Effects,
    /// Acks processed and not sent yet, and quiet acks whose refusal could still come.
    acks: Acks,
    /// The time of the latest input that carried one (when acks asked for meanwhile are
    /// due).
    now_ms: u64,
    /// The groups.
    groups: Groups,
    /// Group creations, membership changes, key updates.
    changes: Changes,
    /// Messages on their way out.
    outbox: Outbox,
    /// Group log entries parked.
    inbound: Inbound,
    /// Keys to check against the directory.
    trust: Trust,
    /// This device's KeyPackage stock.
    key_packages: KeyPackages,
    /// Leaf checks: what waits for device lists, refusals reported.
    leaves: Leaves,
    /// Groups being rejoined by an external commit.
    rejoins: Rejoins,
    /// A linked device whose user's list does not certify it yet (the authorising device's
    /// publication may be on its way): when to fetch the list again.
    certificate_retry: Option<CertificateRetry>,
    /// Joining the groups of this device's user ([`Client::join_user_groups`]), if asked.
    user_join: Option<UserJoin>,
    /// Read receipts waiting to go out (issue 13).
    receipts: settings::Receipts,
}

/// Joining the user's groups by external commits: the command and the groups started.
#[derive(Debug)]
struct UserJoin {
    /// The command.
    op: OpId,
    /// The groups being joined, once the relay listed them (`None` while `UserGroups` is
    /// to be sent or in flight).
    groups: Option<Vec<GroupId>>,
}

/// Fetching this device's own list again until it certifies the device.
#[derive(Clone, Copy, Debug)]
struct CertificateRetry {
    /// When to fetch again (`None` while a fetch is in flight).
    at_ms: Option<u64>,
    /// The delay before that fetch.
    delay_ms: u64,
    /// Fetches made so far.
    attempts: u32,
}

/// First delay before fetching the own list again (doubled each time).
const CERTIFICATE_RETRY_FIRST_MS: u64 = 250;
/// Fetches of the own list, after the first, before giving up until the next connection.
const CERTIFICATE_RETRIES: u32 = 6;

/// What became of a group log entry.
enum Step {
    /// Applied (or skipped with a warning); whether the group moved to a new epoch.
    Applied { merged: bool },
    /// Not applied: parked, the group held until device lists arrive.
    Held,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    Disconnected,
    AwaitChallenge,
    Authenticating,
    Ready,
}

/// Lends the shared parts of a [`Client`] (one expression, so that the other fields stay
/// free to borrow).
macro_rules! cx {
    ($self:ident) => {
        Cx {
            provider: &$self.provider,
            me: &$self.me,
            groups: &mut $self.groups,
            ready: $self.conn == Conn::Ready,
        }
    };
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
        // A new store has no history to index.
        provider.store().set_config(search::INDEXED_KEY, "1")?;
        Self::from_parts(provider, identity)
    }

    /// Opens an initialised device: loads its identity and groups.
    pub fn open(store: S, rng_seed: [u8; 32]) -> Result<Self, OpenError> {
        let identity = store.identity()?.ok_or(OpenError::NoIdentity)?;
        // History stored before the search index existed gets indexed, once.
        search::backfill(&store)?;
        Self::from_parts(CoveProvider::new(store, rng_seed), identity)
    }

    fn from_parts(provider: CoveProvider<S>, identity: Identity) -> Result<Self, OpenError> {
        let groups = Groups::load(&provider)?;
        Ok(Client {
            provider,
            me: Me::new(identity),
            conn: Conn::Disconnected,
            channel: None,
            next_request: 1,
            requests: HashMap::new(),
            next_op: 1,
            outputs: VecDeque::new(),
            fx: Effects::default(),
            acks: Acks::default(),
            now_ms: 0,
            groups,
            changes: Changes::default(),
            outbox: Outbox::default(),
            inbound: Inbound::default(),
            trust: Trust::default(),
            key_packages: KeyPackages::default(),
            leaves: Leaves::default(),
            rejoins: Rejoins::default(),
            certificate_retry: None,
            user_join: None,
            receipts: settings::Receipts::default(),
        })
    }

    // ----------------------------------------------------------------------------------
    // Accessors and queries
    // ----------------------------------------------------------------------------------

    /// This device's user.
    pub fn user(&self) -> &UserName {
        self.me.user()
    }

    /// This device's id (once registered).
    pub fn device(&self) -> Option<DeviceId> {
        self.me.device()
    }

    /// This device's Ed25519 public key.
    pub fn device_key(&self) -> DeviceKey {
        self.me.key()
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
        !self.changes.is_empty() || self.outbox.busy() || self.certificate_retry.is_some()
    }

    /// The groups this device is or was in.
    pub fn groups(&self) -> Vec<GroupInfo> {
        let mut infos = self.groups.infos();
        // Unread counts and settings are left at their defaults if the store fails.
        let _ = self.with_settings(&mut infos);
        infos
    }

    /// The history of a group (name or hex id), in log order.
    pub fn history(&self, group: &str) -> Result<Vec<ChatMessage>, QueryError> {
        let id = self.groups.resolve(group).map_err(|e| match e {
            CommandError::AmbiguousGroup(g) => QueryError::AmbiguousGroup(g),
            _ => QueryError::UnknownGroup(group.to_string()),
        })?;
        let store = self.provider.store();
        let stored = store.messages(&id)?;
        let mut messages = history::chat_messages(store, &self.groups, id, stored)?;
        group_settings::decorate(store, &id, &mut messages)?;
        Ok(messages)
    }

    /// The messages of `group` stored after log position `after`, in log order. Reads only
    /// those, so a caller that keeps its own "shown up to" position (as `cove sync` does)
    /// pays for what is new, not for the whole history.
    pub fn history_after(
        &self,
        group: &GroupId,
        after: Seq,
    ) -> Result<Vec<ChatMessage>, QueryError> {
        let store = self.provider.store();
        let stored = store.messages_after(group, after)?;
        let mut messages = history::chat_messages(store, &self.groups, *group, stored)?;
        group_settings::decorate(store, group, &mut messages)?;
        Ok(messages)
    }

    /// The safety number between this user and `user`: 12 groups of 5 digits, identical on
    /// both sides. Over both users' identity keys once both are pinned (from their signed
    /// device lists), so adding or revoking a device does not change it; before that (a
    /// user who never published a list), over both users' pinned device keys.
    pub fn safety_number(&self, user: &UserName) -> Result<String, QueryError> {
        // Over identity keys once both are pinned: devices come and go without changing it.
        let store = self.provider.store();
        if let (Some(mine), Some(theirs)) = (
            store.identity_pin(self.me.user())?,
            store.identity_pin(user)?,
        ) {
            return Ok(crate::identity::identity_safety_number(
                self.me.user(),
                &mine.identity,
                user,
                &theirs.identity,
            ));
        }
        trust::safety_number_with(store, self.me.user(), self.me.key(), user)
    }

    /// `user`'s identity as this device knows it: the key to compare, whether it is
    /// verified or changed, and the safety number over it (`None` if nothing is pinned for
    /// `user`: call [`Client::refresh_identity`] first).
    pub fn identity_state(
        &self,
        user: &UserName,
    ) -> Result<Option<crate::identity::IdentityState>, StoreError> {
        crate::identity::identity_state(self.provider.store(), self.me.user(), user)
    }

    /// The identities of every other user this device pinned, ordered by user name.
    pub fn identity_states(&self) -> Result<Vec<crate::identity::IdentityState>, StoreError> {
        let store = self.provider.store();
        let mut out = Vec::new();
        for pin in store.identity_pins()? {
            if &pin.user == self.me.user() {
                continue;
            }
            if let Some(state) = crate::identity::identity_state(store, self.me.user(), &pin.user)?
            {
                out.push(state);
            }
        }
        Ok(out)
    }

    /// Fetches `user`'s signed device list now and checks it against the pin (a changed
    /// identity is announced as [`IdentityEvent::IdentityChanged`]). Returns false when not
    /// connected (nothing sent).
    pub fn refresh_identity(&mut self, user: &UserName) -> bool {
        if self.conn != Conn::Ready {
            return false;
        }
        self.send(
            Request::FetchDeviceList { user: user.clone() },
            Pending::ObserveList { user: user.clone() },
        );
        true
    }

    /// The user compared the safety number of `user`'s identity key `shown` (from
    /// [`Client::identity_state`]) with them and confirmed it: marks it verified (pinning it
    /// first if it is a changed identity, which unblocks sending to groups with `user`).
    pub fn verify_user(
        &mut self,
        now_ms: u64,
        user: &UserName,
        shown: &cove_wire::identity::IdentityKey,
    ) -> Result<(), crate::identity::VerifyError> {
        crate::identity::verify_identity(self.provider.store(), user, shown, now_ms)?;
        // A new identity may have been pinned: leaves trusted under the old one are checked
        // again.
        self.leaves.lists_changed();
        Ok(())
    }

    /// The members of `group` whose verified identity changed and who were not verified
    /// again (sending to the group is refused while there are any).
    pub fn unverified_changes_in(&self, group: &GroupId) -> Result<Vec<UserName>, StoreError> {
        let members: Vec<UserName> = self
            .groups
            .call_members(group)
            .into_iter()
            .map(|m| m.user)
            .collect();
        crate::identity::blocking_changes(self.provider.store(), &members)
    }

    /// Refuses to send to `group` while a member's verified identity changed.
    fn check_identities(&self, group: &GroupId) -> Result<(), CommandError> {
        let blocked = self.unverified_changes_in(group)?;
        if blocked.is_empty() {
            Ok(())
        } else {
            Err(CommandError::IdentityNotVerified(blocked))
        }
    }

    /// On a device holding the user's identity key (the user's first device, or one logged
    /// in with the password): authorises
    /// `new_key` as a further device of this user (the new device shows its key; this device
    /// signs it) and adds it to the signed device list, which is published now (or at the
    /// next connection), so that the relay registers it and other users' clients add it to
    /// groups. Returns what the new device needs: give it to
    /// [`Client::set_device_authorization`] there; `None` if this device is not registered
    /// yet.
    ///
    /// A device without the identity key (a linked one) is refused at once
    /// ([`OwnIdentityError::NotIdentityHolder`](crate::error::OwnIdentityError)): it could
    /// sign the relay's authorisation but not the list entry, and the relay registers no
    /// key the list does not add.
    pub fn authorize_device(
        &mut self,
        now_ms: u64,
        new_key: &DeviceKey,
    ) -> Result<Option<(DeviceId, Signature)>, CommandError> {
        if !self.holds_user_identity()? {
            return Err(crate::error::OwnIdentityError::NotIdentityHolder.into());
        }
        let Some(grant) = self.me.authorize_device(new_key) else {
            return Ok(None);
        };
        own_list::add_device(self.provider.store(), &self.me, *new_key, now_ms)?;
        self.publish_own_list()?;
        Ok(Some(grant))
    }

    /// Revokes this user's device `device` in the signed device list (on the device that
    /// holds the user's identity) and publishes the entry now (or at the next connection):
    /// the relay then refuses the device's logins, and no client adds it to a group again.
    ///
    /// This device also removes the revoked device from every group it is in at once (one
    /// commit per group) and reports [`IdentityEvent::DeviceRevoked`].
    pub fn revoke_device(&mut self, now_ms: u64, device: &DeviceKey) -> Result<(), CommandError> {
        own_list::revoke_device(self.provider.store(), &self.me, *device, now_ms)?;
        self.publish_own_list()?;
        let user = self.me.user().clone();
        let revoked = crate::identity::ListVerdict::Changed {
            added: Vec::new(),
            revoked: vec![*device],
        };
        self.on_list_verdict(now_ms, &user, revoked);
        self.apply_effects();
        Ok(())
    }

    /// Adds every device of this user that its signed device list names (not revoked), that
    /// the relay has registered and that is missing from a group, to every group this device
    /// is in: one change per group (the list is fetched and checked, the directory asked and
    /// KeyPackages claimed as [`Client::add_users`] does). Returns the changes' ids; each
    /// completes with [`Event::OpDone`] (a failure is only a warning: nothing to add is not
    /// one). Called by the link flow once a new device registered, and by the core itself
    /// when it sees its own user's list gain a device.
    pub fn add_own_devices_everywhere(&mut self, _now_ms: u64) -> Result<Vec<OpId>, CommandError> {
        if self.me.device().is_none() {
            return Err(CommandError::NotRegistered);
        }
        let groups: Vec<GroupId> = self
            .groups
            .ids()
            .filter(|g| {
                self.groups.membership(g) == Some(Membership::Active) && self.groups.holds(g)
            })
            .collect();
        Ok(groups
            .into_iter()
            .map(|g| self.start_change(g, Goal::OwnDevices))
            .collect())
    }

    /// On a new device of a user who logged in with the password (`cove login`), before it
    /// registers: takes the user's identity key (`identity_secret`) and history backup key
    /// (`backup_key`), both from the unwrapped account bundle, and the user's signed device
    /// list as the relay serves it (`list`: it must verify and be signed by that identity
    /// key, else [`OwnIdentityError::OtherIdentity`](crate::error::OwnIdentityError) or a
    /// list error). Adds this device's key to the list (an `Add` entry signed with the
    /// identity key) and stores the identity key, the list, the own pin and the account
    /// secrets. From then on this device holds the identity like the user's first device
    /// (it can link and revoke devices). Returns the `PublishDeviceList` request of the new
    /// entry (`None` if the relay's list has this device already); once the relay answers
    /// `DeviceListHead`, call [`Client::own_list_confirmed`], then register with
    /// [`Client::login_registration`] on the same (logged-in) connection.
    pub fn adopt_user_identity(
        &mut self,
        now_ms: u64,
        identity_secret: &Zeroizing<[u8; 32]>,
        backup_key: &Zeroizing<[u8; 32]>,
        list: &[cove_wire::identity::ListEntry],
    ) -> Result<Option<Request>, crate::error::OwnIdentityError> {
        let store = self.provider.store();
        let publish = own_list::adopt(store, &self.me, identity_secret, list, now_ms)?;
        store.set_account_secrets(&cove_store::AccountSecrets {
            user: self.me.user().clone(),
            backup_key: backup_key.clone(),
        })?;
        Ok(publish.map(|(request, _)| request))
    }

    /// The relay confirmed the whole own device list (its answer to the publish that
    /// [`Client::adopt_user_identity`] returned): it is not published again.
    pub fn own_list_confirmed(&mut self) -> Result<(), StoreError> {
        let len = self
            .provider
            .store()
            .device_list(self.me.user())?
            .map_or(0, |entries| entries.len() as u64);
        own_list::published(self.provider.store(), len)
    }

    /// The `RegisterDevice` request answering challenge `nonce` on a connection (binding
    /// `channel`) that is logged in as this device's user with the password: the relay
    /// then checks only this device's signature and that the user's signed list adds its
    /// key, not another device's authorisation, so `authorizer` and `authorization` are
    /// zero (see `PROTOCOL.md`, "Password accounts"). `None` once registered. Give the
    /// relay's answer to [`Client::registered_as`].
    pub fn login_registration(
        &self,
        nonce: &[u8; 32],
        channel: &ChannelBinding,
    ) -> Option<cove_wire::Request> {
        if self.me.device().is_some() {
            return None;
        }
        match self
            .me
            .answer_challenge(self.provider.store(), nonce, channel)
        {
            (
                Request::Register {
                    user,
                    key,
                    signature,
                },
                _,
            ) => Some(Request::RegisterDevice {
                user,
                key,
                signature,
                authorizer: DeviceId(0),
                authorization: Signature([0; 64]),
            }),
            (request @ Request::RegisterDevice { .. }, _) => Some(request),
            _ => None,
        }
    }

    /// The relay registered this device as `device` (on a side connection, e.g. after
    /// [`Client::login_registration`]): remembered, so that the next connection
    /// authenticates with it.
    pub fn registered_as(&mut self, device: DeviceId) -> Result<(), HandleError> {
        self.me.authenticated(self.provider.store(), device)
    }

    /// Joins every group in which another device of this user is a member and this device
    /// is not (`cove login` on a new machine): asks the relay for them (`UserGroups`) and
    /// joins each by an external commit from the relay's public state (see the rejoin
    /// part), which the relay takes from a new device of a user with a member device.
    /// Members accept the new leaf because its certificate chains to the user's pinned
    /// identity and the user's signed list names the device. A group joined this way has
    /// a placeholder name ([`placeholder_name`]) until [`Client::set_group_name`] sets it.
    /// Each joined group is reported as [`Event::Joined`] (`by` this device's user); the
    /// command completes with [`Event::OpDone`] once every group is joined, or with
    /// [`OpError::NotJoined`] naming how many could not be (each with a `RejoinFailed`
    /// warning). Needs the device registered with its certificate (after the first
    /// connection's backlog).
    pub fn join_user_groups(&mut self, _now_ms: u64) -> Result<OpId, CommandError> {
        if self.me.device().is_none() {
            return Err(CommandError::NotRegistered);
        }
        let op = self.new_op();
        self.user_join = Some(UserJoin { op, groups: None });
        if self.conn == Conn::Ready {
            self.send(Request::UserGroups, Pending::UserGroups { op });
        }
        Ok(op)
    }

    /// Sets the local name of `group` (a group id, or a name or prefix as the commands take
    /// it): for a group joined by an external commit, which carries no name, once the real
    /// name is known (e.g. from the history backup). Local only: nothing is sent. Refused
    /// for an empty name or one longer than [`MAX_GROUP_NAME`], and for a name another
    /// active group of this device has.
    pub fn set_group_name(&mut self, group: &str, name: &str) -> Result<(), CommandError> {
        if name.is_empty() || name.len() > MAX_GROUP_NAME {
            return Err(CommandError::Invalid(InvalidArgument::GroupNameLength {
                max: MAX_GROUP_NAME,
            }));
        }
        let id = self.groups.resolve(group)?;
        // A drive group keeps its name; a drive name is given only to a group joined by an
        // external commit (still under its placeholder), which may be a drive.
        let placeholder = self.groups.name(&id) == rejoin::placeholder_name(&id);
        if self.groups.is_drive(&id) || (crate::drive::is_drive_group(name) && !placeholder) {
            return Err(CommandError::Invalid(InvalidArgument::ReservedName));
        }
        if self.groups.name(&id) != name && self.groups.name_in_use(name) {
            return Err(CommandError::DuplicateGroupName(name.to_owned()));
        }
        let store = self.provider.store();
        let Some(mut record) = store.group(&id)? else {
            return Err(CommandError::UnknownGroup(group.to_owned()));
        };
        record.name = name.to_owned();
        store.put_group(&record)?;
        self.groups.insert_record(record);
        Ok(())
    }

    /// Publishes the entries of the own list the relay does not have yet, if connected
    /// (otherwise at the next authentication).
    fn publish_own_list(&mut self) -> Result<(), StoreError> {
        if self.conn == Conn::Ready
            && let Some((request, len)) = own_list::unpublished(self.provider.store(), &self.me)?
        {
            self.send(request, Pending::PublishList { len });
        }
        Ok(())
    }

    /// The last verified device list of `user` (this user's own included) this device holds.
    pub fn device_list_of(
        &self,
        user: &UserName,
    ) -> Result<Option<cove_identity::DeviceList>, StoreError> {
        Ok(self
            .provider
            .store()
            .device_list(user)?
            .and_then(|entries| cove_identity::DeviceList::verify(user, &entries).ok()))
    }

    /// Whether this device holds its user's identity key (it is the user's first device, or
    /// it logged in with the password): only such a device signs device-list entries, so
    /// only it can link (authorise) or revoke devices.
    pub fn holds_user_identity(&self) -> Result<bool, StoreError> {
        Ok(self.provider.store().user_identity()?.is_some())
    }

    /// Whether the relay confirmed every entry of the own signed device list (always true
    /// on a device that does not hold the user's identity). After
    /// [`Client::authorize_device`], the new device may register once this is true.
    pub fn own_list_published(&self) -> Result<bool, StoreError> {
        Ok(own_list::unpublished(self.provider.store(), &self.me)?.is_none())
    }

    /// The message history of every group this device is an active member of, in chunks
    /// that each fit one link message (at most [`crate::link::MAX_HISTORY_CHUNKS`]; the
    /// oldest messages are left out beyond that), for a newly linked device of this user.
    pub fn export_history(&self) -> Result<Vec<crate::link::HistoryChunk>, StoreError> {
        link_history::export(self.provider.store(), &self.groups)
    }

    /// Stores a history chunk from [`Client::export_history`] of another device of this
    /// user (skipping messages already here); returns how many messages were stored. The
    /// history queries show them like any message, once this device is in their group.
    pub fn import_history(
        &mut self,
        chunk: crate::link::HistoryChunk,
    ) -> Result<usize, StoreError> {
        link_history::import(self.provider.store(), chunk)
    }

    /// Imports an opened history-backup segment ([`crate::backup::import`]: rows not seen
    /// before, group names) and shows its groups at once.
    pub fn import_backup_segment(
        &mut self,
        now_ms: u64,
        segment: crate::backup::Segment,
    ) -> Result<crate::backup::Imported, StoreError> {
        let (imported, records) = crate::backup::import(self.provider.store(), segment, now_ms)?;
        for record in records {
            self.groups.insert_record(record);
        }
        Ok(imported)
    }

    /// This user's verified device list, on a device that holds the user's identity (the
    /// first device, or one logged in with the password): its identity key, devices and
    /// head.
    pub fn own_device_list(&self) -> Result<Option<cove_identity::DeviceList>, StoreError> {
        own_list::own_list(self.provider.store(), &self.me)
    }

    /// The `Authenticate` request answering challenge `nonce` on a side connection (one
    /// the shell opens beside the session, e.g. to probe what the relay allows) whose channel
    /// binding is `channel`, once this device is registered. The core signs; the shell never
    /// handles the device key.
    pub fn side_authentication(
        &self,
        nonce: &[u8; 32],
        channel: &ChannelBinding,
    ) -> Option<cove_wire::Request> {
        match self
            .me
            .answer_challenge(self.provider.store(), nonce, channel)
        {
            (request @ cove_wire::Request::Authenticate { .. }, false) => Some(request),
            _ => None,
        }
    }

    /// A signer for blob-store HTTP requests (attachment uploads), once registered.
    pub fn blob_request_signer(&self) -> Option<crate::attachment::BlobRequestSigner> {
        self.me.blob_request_signer()
    }

    /// On a new, not yet registered device of an existing user: stores the authorisation
    /// from [`Client::authorize_device`] so that the next connection registers this device
    /// with `RegisterDevice` instead of claiming the user name.
    pub fn set_device_authorization(
        &mut self,
        authorizer: DeviceId,
        authorization: Signature,
    ) -> Result<(), StoreError> {
        device::set_device_authorization(self.provider.store(), authorizer, authorization)
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
        trust::accept_key(self.provider.store(), now_ms, user, device, key)
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
        self.groups
            .export_secret(&self.provider, group, label, context, length)
    }

    /// The member devices of a group with their MLS leaf indexes (for calls).
    pub fn group_members(&self, group: &GroupId) -> Vec<crate::call::GroupMember> {
        self.groups.call_members(group)
    }

    /// The member devices of a group with their MLS leaf signature keys (read-only; for
    /// `cove group info`, to compare members out of band).
    pub fn group_member_keys(&self, group: &GroupId) -> Vec<(crate::call::GroupMember, Vec<u8>)> {
        self.groups.member_keys(group)
    }

    /// Sends a request the core does not interpret itself (e.g. `Request::TurnCredentials`)
    /// on the current connection; the answer comes back as [`Event::Reply`] with the returned
    /// id. `None` if the connection is not ready (authenticated) yet.
    pub fn send_request(&mut self, body: Request) -> Option<RequestId> {
        if self.conn != Conn::Ready {
            return None;
        }
        Some(self.send(body, Pending::External))
    }

    /// This device's MLS leaf index in a group.
    pub fn own_leaf_index(&self, group: &GroupId) -> Option<u32> {
        self.groups.get(group).map(|g| g.own_leaf_index().u32())
    }

    /// The current MLS epoch of a group.
    pub fn epoch(&self, group: &GroupId) -> Option<u64> {
        self.groups.epoch(group)
    }

    /// Resolves a group name or hex id.
    pub fn resolve(&self, group: &str) -> Result<GroupId, CommandError> {
        self.groups.resolve(group)
    }

    // ----------------------------------------------------------------------------------
    // Connection inputs
    // ----------------------------------------------------------------------------------

    /// A fresh connection is up; the relay's `Challenge` comes next. `channel` is the
    /// connection's TLS exporter value and the relay's certificate hash, as the shell's TLS
    /// stack reports them: the answer to the challenge signs them (see `PROTOCOL.md`,
    /// "Authentication").
    pub fn handle_connected(&mut self, now_ms: u64, channel: ChannelBinding) {
        self.now_ms = now_ms;
        self.channel = Some(channel);
        self.requests.clear();
        self.acks.reset();
        self.key_packages.reset();
        self.leaves.reset();
        self.certificate_retry = None;
        self.conn = Conn::AwaitChallenge;
    }

    /// The connection is gone. Requests in flight are retried on the next connection:
    /// outbox messages not seen in the backlog are resent once (the relay answers a repeated
    /// post with its original seq; receivers also drop duplicates by message id), commands
    /// restart their current step.
    pub fn handle_disconnected(&mut self) {
        self.conn = Conn::Disconnected;
        self.channel = None;
        self.requests.clear();
        // Acks not sent are lost with the connection: the relay delivers those entries
        // again, and the store's cursor makes them acks only.
        self.acks.reset();
        // The whole outbox goes out again after the next backlog: no timers meanwhile.
        self.outbox.disconnected();
        self.key_packages.reset();
        self.leaves.reset();
        self.changes.disconnected();
        self.rejoins.disconnected();
    }

    /// The next thing to do: a frame to send or an event for the user.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next deadline (ms, same clock as `now_ms`) at which the shell must call
    /// [`Client::handle_timeout`]; `None` when nothing is scheduled. Today: sending the acks
    /// of entries processed and not acked yet (when the connection was idle for
    /// [`ACK_IDLE_MS`], at the latest [`ACK_DELAY_MS`] after the first of them, both
    /// stretched per device by up to 100%), resending posts the relay refused as retryable (`RateLimited`,
    /// `Unavailable`, `Internal`), and, on a linked device its user's list does not certify
    /// yet, fetching that list again; and, connected or not, the next batched read receipt
    /// and the next disappearing message to delete.
    pub fn poll_timeout(&self) -> Option<u64> {
        // Receipts and disappearing messages, connected or not.
        let local = self.settings_timeout();
        if self.conn != Conn::Ready {
            return local;
        }
        let certificate = self.certificate_retry.and_then(|r| r.at_ms);
        [
            self.outbox.next_retry(),
            certificate,
            local,
            self.acks.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Time has reached `now_ms`: sends the acks that are due, resends the posts whose retry
    /// delay is over (and fetches the own list again when that is due); connected or not,
    /// sends the read receipts whose interval is over and deletes the disappearing messages
    /// whose time is up ([`Event::Expired`]). Calling it early or more than once is harmless.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), HandleError> {
        self.now_ms = now_ms;
        let settings = self.settings_on_timeout(now_ms);
        self.apply_effects();
        settings?;
        if self.conn != Conn::Ready {
            return Ok(());
        }
        if self.acks.deadline().is_some_and(|at| at <= now_ms) {
            self.send_acks();
        }
        let result = self
            .outbox
            .on_timeout(self.provider.store(), now_ms, &mut self.fx);
        if let Some(retry) = &mut self.certificate_retry
            && retry.at_ms.is_some_and(|at| at <= now_ms)
        {
            retry.at_ms = None;
            let user = self.me.user().clone();
            self.fx.request(
                Request::FetchDeviceList { user: user.clone() },
                Pending::ObserveList { user },
            );
        }
        self.apply_effects();
        result
    }

    /// The shell has handled every frame its connection had ready (the end of a burst):
    /// acknowledges what was processed, one cumulative ack per stream (group acks as
    /// `QuietAck`, see `PROTOCOL.md` "Quiet acknowledgements"), if [`ACK_BATCH`] entries
    /// are unacked and the last acks sent for that count went out at least
    /// [`ACK_INTERVAL_MS`] (stretched per device) before, or if one of the acks is urgent
    /// (an inbox entry, a group this device left); otherwise they wait for the deadline of [`Client::poll_timeout`] (the connection
    /// idle for [`ACK_IDLE_MS`], or [`ACK_DELAY_MS`] after the first, both stretched per
    /// device) or for more entries. Shells call it whenever a read from the connection
    /// finds nothing more waiting. Calling it with nothing to ack does nothing.
    pub fn end_of_burst(&mut self) {
        if let Some(unsent) = self.acks.take_at_burst_end(self.now_ms) {
            self.send_these_acks(unsent);
        }
    }

    /// Acknowledges everything processed now, whatever the count: one cumulative ack per
    /// stream (as [`Client::end_of_burst`] does once enough are unacked). Shells call it
    /// before closing the connection politely, so that the relay does not deliver those
    /// entries again on the next one. Calling it with nothing to ack does nothing.
    pub fn flush_acks(&mut self) {
        self.send_acks();
    }

    /// Handles one frame from the relay. Never panics on hostile input: a bad entry is
    /// skipped (acknowledged) with an [`Event::Warning`]; an error return means the frame
    /// was not processed and will come again (storage failure) or the connection should
    /// be dropped (protocol violation, `Closing`).
    pub fn handle_frame(&mut self, now_ms: u64, frame: ServerFrame) -> Result<(), HandleError> {
        self.now_ms = now_ms;
        let backlog_done = matches!(frame, ServerFrame::BacklogDone);
        let result = self.dispatch(now_ms, frame);
        self.apply_effects();
        // Device lists the look-ups of changes verified: devices added and revoked.
        for (user, verdict) in self.changes.take_observed() {
            self.on_list_verdict(now_ms, &user, verdict);
        }
        self.apply_effects();
        if self.conn == Conn::Ready {
            for user in self.trust.take_to_verify() {
                // The user's signed device list too: it pins their identity key.
                self.send(
                    Request::FetchDeviceList { user: user.clone() },
                    Pending::ObserveList { user: user.clone() },
                );
                self.send(
                    Request::ListDevices { user: user.clone() },
                    Pending::Verify { user },
                );
            }
        }
        if backlog_done {
            // The backlog is in: ack it now rather than at the end of the burst.
            self.send_acks();
        }
        result
    }

    fn dispatch(&mut self, now_ms: u64, frame: ServerFrame) -> Result<(), HandleError> {
        match frame {
            ServerFrame::Challenge { nonce, .. } => self.on_challenge(now_ms, &nonce),
            ServerFrame::Response { id, result } => self.on_response(now_ms, id, result),
            ServerFrame::Deliver(Delivery::Group(entry)) => self.on_group_entry(now_ms, entry),
            ServerFrame::Deliver(Delivery::Inbox(entry)) => self.on_inbox_entry(now_ms, entry),
            ServerFrame::BacklogDone => {
                self.on_backlog_done()?;
                let store = self.provider.store();
                // Not what waits for device lists (applied when they arrive, in a moment),
                // nor a group being rejoined (its entries are dealt with then).
                let leaves = &self.leaves;
                let groups = &self.groups;
                let rejoins = &self.rejoins;
                let waiting = |g: &GroupId| {
                    leaves.holds_group(g)
                        || (leaves.holds_inbox() && !groups.holds(g))
                        || rejoins.is_rejoining(g)
                };
                self.inbound
                    .report_parked(store, &self.groups, now_ms, waiting, &mut self.fx)?;
                self.fx.event(Event::BacklogDone);
                Ok(())
            }
            ServerFrame::Closing { code } => {
                self.handle_disconnected();
                Err(HandleError::Closing(code))
            }
            // Linking by a code: the shell drives it (see `crate::link`).
            ServerFrame::LinkPeerJoined => {
                self.fx.event(Event::Link(LinkPush::PeerJoined));
                Ok(())
            }
            ServerFrame::LinkMessage { bytes } => {
                self.fx
                    .event(Event::Link(LinkPush::Message(bytes.into_vec())));
                Ok(())
            }
            ServerFrame::LinkClosed { reason } => {
                self.fx.event(Event::Link(LinkPush::Closed(reason)));
                Ok(())
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
    /// Names starting with [`crate::drive::DRIVE_GROUP_PREFIX`] are refused
    /// ([`InvalidArgument::ReservedName`]): drives are made by
    /// [`Client::create_drive_group`].
    pub fn create_group(&mut self, now_ms: u64, name: &str) -> Result<OpId, CommandError> {
        if crate::drive::is_drive_group(name) {
            return Err(CommandError::Invalid(InvalidArgument::ReservedName));
        }
        self.create_named(now_ms, name)
    }

    /// Creates a Cove Drive group (a personal drive or a shared folder, issue 14) like
    /// [`Client::create_group`]: `name` must start with
    /// [`crate::drive::DRIVE_GROUP_PREFIX`] ([`InvalidArgument::NotADriveName`] otherwise).
    /// Its log carries tree operations ([`Content::Drive`], read with
    /// [`Client::drive_ops`]); chat commands, renames and timers do not apply to it.
    pub fn create_drive_group(&mut self, now_ms: u64, name: &str) -> Result<OpId, CommandError> {
        if !crate::drive::is_drive_group(name) {
            return Err(CommandError::Invalid(InvalidArgument::NotADriveName));
        }
        self.create_named(now_ms, name)
    }

    fn create_named(&mut self, _now_ms: u64, name: &str) -> Result<OpId, CommandError> {
        if name.is_empty() || name.len() > MAX_GROUP_NAME {
            return Err(CommandError::Invalid(InvalidArgument::GroupNameLength {
                max: MAX_GROUP_NAME,
            }));
        }
        if self.groups.name_in_use(name) || self.changes.creating(name) {
            return Err(CommandError::DuplicateGroupName(name.to_string()));
        }
        let mut id = [0u8; 16];
        self.provider
            .rng()
            .fill(&mut id)
            .map_err(CommandError::Rng)?;
        let op = self.new_op();
        self.changes
            .create(op, GroupId(id), name.to_string(), cx!(self), &mut self.fx);
        self.apply_effects();
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
        self.change_users(group, users, Goal::Add)
    }

    /// Removes every device of each user from a group.
    pub fn remove_users(
        &mut self,
        _now_ms: u64,
        group: &str,
        users: &[UserName],
    ) -> Result<OpId, CommandError> {
        self.change_users(group, users, Goal::Remove)
    }

    /// Rotates this device's keys in a group (an MLS self-update commit): post-compromise
    /// security for everything sent after it.
    pub fn update_keys(&mut self, _now_ms: u64, group: &str) -> Result<OpId, CommandError> {
        let id = self.groups.active(group)?;
        Ok(self.start_change(id, Goal::UpdateKeys))
    }

    /// Leaves a group: sends a leave request (a remaining member commits the removal),
    /// then forgets the group's keys. Completes when the relay accepted the request.
    pub fn leave(&mut self, now_ms: u64, group: &str) -> Result<OpId, CommandError> {
        let id = self.groups.active(group)?;
        // An admin's user leaving (with its last device) leaves the admins first, handing
        // admin to the longest-standing member if it was the last one, so that the group
        // keeps an admin (the commit is posted before the leave request, in that order).
        if self.hands_over(&id) {
            self.start_change(id, Goal::HandOver);
        }
        self.send_content(now_ms, id, Content::LeaveRequest)
    }

    /// Sends an uploaded file's pointer, like a text message (see `cove send-file`). Refused
    /// with [`CommandError::IdentityNotVerified`] like [`Client::send_text`].
    pub fn send_attachment(
        &mut self,
        now_ms: u64,
        group: &str,
        pointer: crate::attachment::AttachmentPointer,
    ) -> Result<OpId, CommandError> {
        let id = self.groups.chat(group)?;
        self.check_identities(&id)?;
        self.send_content(now_ms, id, Content::Attachment(pointer))
    }

    /// Sends a text message. It is encrypted and persisted in the outbox now and sent
    /// (again after reconnects) until the relay accepts it. Refused with
    /// [`CommandError::IdentityNotVerified`] while a member's verified identity key changed
    /// and the user has not verified the new one.
    pub fn send_text(
        &mut self,
        now_ms: u64,
        group: &str,
        text: &str,
    ) -> Result<OpId, CommandError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(CommandError::TooLarge(text.len(), MAX_TEXT_BYTES));
        }
        let id = self.groups.chat(group)?;
        self.check_identities(&id)?;
        let text = text.to_string();
        self.send_content(now_ms, id, Content::Text { text })
    }

    /// Sends any content (used by the attachment and call modules).
    pub fn send_content(
        &mut self,
        now_ms: u64,
        group: GroupId,
        content: Content,
    ) -> Result<OpId, CommandError> {
        // The command id is taken only once the message is queued.
        let op = OpId(self.next_op);
        let held = self.leaves.holds_group(&group);
        let sent = self
            .outbox
            .send(cx!(self), op, now_ms, group, content, held, &mut self.fx);
        self.apply_effects();
        sent?;
        self.next_op += 1;
        Ok(op)
    }

    // ----------------------------------------------------------------------------------
    // Connection handling
    // ----------------------------------------------------------------------------------

    fn on_challenge(&mut self, now_ms: u64, nonce: &[u8; 32]) -> Result<(), HandleError> {
        let (Conn::AwaitChallenge, Some(channel)) = (self.conn, self.channel) else {
            return Err(HandleError::Protocol(
                ProtocolViolation::UnexpectedChallenge,
            ));
        };
        let (body, registered) = self
            .me
            .answer_challenge(self.provider.store(), nonce, &channel);
        if matches!(body, Request::Register { .. }) {
            // The user's first device: its identity exists before the relay knows the user.
            own_list::ensure(self.provider.store(), self.provider.rng(), &self.me, now_ms)?;
        }
        self.conn = Conn::Authenticating;
        self.fx.request(body, Pending::Auth { registered });
        Ok(())
    }

    fn on_authenticated(&mut self, device: DeviceId, registered: bool) -> Result<(), HandleError> {
        self.me.authenticated(self.provider.store(), device)?;
        self.conn = Conn::Ready;
        self.acks.set_device(device.0);
        self.fx.event(Event::Authenticated { device, registered });
        // KeyPackages: check the stock (uploads when low).
        self.key_packages.check(&mut self.fx);
        // The device list: publish what the relay does not have yet; a device without the
        // user's identity (a linked one) fetches its own user's list to pin that identity,
        // and again at every connection until that list certifies it.
        if let Some((request, len)) = own_list::unpublished(self.provider.store(), &self.me)? {
            self.fx.request(request, Pending::PublishList { len });
        } else if self
            .provider
            .store()
            .identity_pin(self.me.user())?
            .is_none()
            || own_list::certificate(self.provider.store(), &self.me)?.is_none()
        {
            let user = self.me.user().clone();
            self.fx.request(
                Request::FetchDeviceList { user: user.clone() },
                Pending::ObserveList { user },
            );
        }
        Ok(())
    }

    fn on_backlog_done(&mut self) -> Result<(), HandleError> {
        // A pending commit no command owns (we crashed after building it) and whose echo
        // was not in the backlog was never accepted: drop it.
        let owned = self.changes.posting_groups();
        self.groups
            .clear_orphaned_commits(self.provider.store(), &owned)?;
        // Resend the outbox (after the backlog: items whose echo was in it are done), but
        // not what is still in flight on this connection.
        self.apply_effects();
        let in_flight = self.posts_in_flight();
        let leaves = &self.leaves;
        self.outbox.resend_all(
            cx!(self),
            &in_flight,
            |g| leaves.holds_group(g),
            &mut self.fx,
        )?;
        // Restart commands.
        self.changes.restart(cx!(self), &mut self.fx);
        // Rejoins cut off by the disconnect start over; an active group whose MLS state is
        // missing (lost) is rejoined.
        self.rejoins.restart(&mut self.fx);
        // Joining the user's groups: ask for them (again, if cut off before the answer).
        if let Some(join) = &self.user_join
            && join.groups.is_none()
        {
            let op = join.op;
            self.send(Request::UserGroups, Pending::UserGroups { op });
        }
        let lost: Vec<GroupId> = self
            .groups
            .ids()
            .filter(|g| {
                self.groups.membership(g) == Some(Membership::Active) && !self.groups.holds(g)
            })
            .collect();
        for group in lost {
            self.rejoins.start(group, &mut self.fx);
        }
        Ok(())
    }

    fn on_response(
        &mut self,
        now_ms: u64,
        id: RequestId,
        result: Result<Reply, ErrorReply>,
    ) -> Result<(), HandleError> {
        let pending = match self.requests.remove(&id) {
            Some(pending) => pending,
            // A quiet ack is answered only when refused.
            None if self.acks.answered_quietly(id) => Pending::QuietAck,
            None => {
                self.fx.warn(Warning::UnknownResponse(id));
                return Ok(());
            }
        };
        let fx = &mut self.fx;
        match (pending, result) {
            (Pending::Auth { registered }, Ok(Reply::Authenticated { device })) => {
                self.on_authenticated(device, registered)
            }
            (Pending::Auth { .. }, Err(e)) => {
                self.conn = Conn::Disconnected;
                Err(HandleError::AuthRefused(e))
            }
            (
                Pending::Stock | Pending::Upload,
                Ok(Reply::KeyPackageStock {
                    remaining,
                    has_last_resort,
                }),
            ) => {
                let stock = Ok((remaining, has_last_resort));
                self.key_packages
                    .on_stock(&self.provider, &self.me, stock, fx)
            }
            (Pending::Stock | Pending::Upload, Err(e)) => {
                self.key_packages
                    .on_stock(&self.provider, &self.me, Err(e), fx)
            }
            (Pending::CreateGroup { op }, r) => {
                self.changes.on_group_created(op, now_ms, r, cx!(self), fx)
            }
            (Pending::Lookup { op, lookup, user }, r) => {
                self.changes
                    .on_lookup(op, lookup, user, now_ms, r, cx!(self), fx);
                Ok(())
            }
            (Pending::PublishList { len }, Ok(Reply::DeviceListHead { head }))
                if head.index.checked_add(1) == Some(len) =>
            {
                own_list::published(self.provider.store(), len)?;
                Ok(())
            }
            (Pending::PublishList { .. }, Err(e)) => {
                fx.warn(Warning::DeviceListNotPublished(e));
                Ok(())
            }
            (Pending::ObserveList { user }, result) => self.on_list_answer(now_ms, user, result),
            (Pending::Verify { user }, Ok(Reply::Devices { user: u, devices })) if u == user => {
                trust::verify_against_directory(self.provider.store(), &user, &devices, fx)?;
                Ok(())
            }
            (Pending::PostApplication { local_id }, r) => {
                let posted = self.outbox.on_posted(cx!(self), now_ms, local_id, r, fx)?;
                if let Some((group, membership)) = posted.forget {
                    self.forget_group(group, membership)?;
                }
                for e in posted.then {
                    self.fx.event(e);
                }
                Ok(())
            }
            (Pending::PostCommit { op }, r) => {
                match self.changes.on_commit_posted(op, r, cx!(self), fx)? {
                    Some(group) => self.after_epoch_change(now_ms, group),
                    None => Ok(()),
                }
            }
            (Pending::FetchGroupState { group }, r) => {
                let result = self.rejoins.on_state(cx!(self), group, r, fx);
                self.check_user_join();
                result
            }
            (Pending::PostRejoin { group }, r) => {
                let result = match self.rejoins.on_posted(cx!(self), group, now_ms, r, fx)? {
                    Some(done) => {
                        if done.unreadable > 0 {
                            fx.warn(Warning::RejoinDropped {
                                group,
                                count: done.unreadable,
                            });
                        }
                        match done.joined {
                            Some(name) => fx.event(Event::Joined {
                                group,
                                name,
                                by: self.me.user().clone(),
                            }),
                            None => fx.event(Event::Rejoined {
                                group,
                                unreadable: done.unreadable,
                            }),
                        }
                        self.refuse_leaves(group, done.refused);
                        self.after_epoch_change(now_ms, group)
                    }
                    None => Ok(()),
                };
                self.check_user_join();
                result
            }
            (Pending::UserGroups { op }, r) => {
                self.on_user_groups(op, r);
                Ok(())
            }
            (Pending::Fetch, Ok(Reply::Entries { entries })) => {
                for e in entries {
                    self.on_group_entry(now_ms, e)?;
                }
                Ok(())
            }
            (Pending::External, result) => {
                fx.event(Event::Reply { id, result });
                Ok(())
            }
            (Pending::Ack { confirms }, Ok(_)) => {
                self.acks.confirmed(confirms);
                Ok(())
            }
            (Pending::Ephemeral { op }, Ok(_)) => {
                fx.op_done(op, Ok(()));
                Ok(())
            }
            (Pending::Ephemeral { op }, Err(e)) => {
                fx.op_done(op, Err(OpError::Relay(e)));
                Ok(())
            }
            // Already gone (e.g. a member's commit removed it first): the same outcome.
            (Pending::LeaveGroup, Ok(Reply::Left)) => Ok(()),
            (Pending::LeaveGroup, Err(e)) if e.code == ErrorCode::NotMember => Ok(()),
            (Pending::Ack { confirms }, Err(e)) => {
                self.acks.confirmed(confirms);
                // Acks for entries of groups we were removed from are refused; harmless.
                if e.code != ErrorCode::NotMember {
                    fx.warn(Warning::AckRefused(e));
                }
                Ok(())
            }
            (Pending::QuietAck, Err(e)) => {
                // The same refusals as an answered ack.
                if e.code != ErrorCode::NotMember {
                    fx.warn(Warning::AckRefused(e));
                }
                Ok(())
            }
            (_, Err(e)) => {
                fx.warn(Warning::RequestFailed(e));
                Ok(())
            }
            (p, Ok(r)) => {
                fx.warn(Warning::UnexpectedReply {
                    reply: r,
                    request: p.name(),
                });
                Ok(())
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Inbound entries
    // ----------------------------------------------------------------------------------

    fn on_inbox_entry(&mut self, now_ms: u64, entry: InboxEntry) -> Result<(), HandleError> {
        // Behind a Welcome waiting for device lists: in order, after it.
        if self.leaves.holds_inbox() {
            self.leaves.queue_inbox(entry);
            return Ok(());
        }
        let inboxed = welcome::on_inbox_entry(
            cx!(self),
            &mut self.trust,
            now_ms,
            &entry,
            self.leaves.answered(),
            &mut self.fx,
        )?;
        let inboxed = match inboxed {
            Inboxed::NeedLists(users) => {
                // Not acknowledged: taken again once the lists are in (or redelivered).
                self.leaves.hold_inbox(entry, users, &mut self.fx);
                return Ok(());
            }
            Inboxed::Joined(group, refused) => {
                self.apply_parked(now_ms, group)?;
                self.refuse_leaves(group, refused);
                Inboxed::Joined(group, Vec::new())
            }
            Inboxed::AdderRefused(group, adder) => {
                // Reported only: the group is not joined, so there is nothing to remove.
                // Its entries parked meanwhile are dropped and acknowledged, like the rest
                // of its log from now on.
                self.refuse_leaves(group, vec![adder]);
                let store = self.provider.store();
                let parked = store.pending(&group)?;
                for (seq, _) in &parked {
                    store.delete_pending(&group, *seq)?;
                }
                self.inbound.forget_bytes();
                if let Some((last, _)) = parked.last() {
                    self.fx.ack(Stream::Group(group), *last);
                }
                Inboxed::Skipped
            }
            other => other,
        };
        self.fx.ack(Stream::Inbox, entry.seq);
        // A KeyPackage was consumed: check the stock.
        if !matches!(inboxed, Inboxed::Seen) && self.conn == Conn::Ready {
            self.key_packages.check_if_idle(&mut self.fx);
        }
        Ok(())
    }

    fn on_group_entry(&mut self, now_ms: u64, entry: GroupEntry) -> Result<(), HandleError> {
        let store = self.provider.store();
        match self.inbound.route(store, &self.groups, &entry)? {
            Route::Ack => self.fx.ack(Stream::Group(entry.group), entry.seq),
            Route::Park => self
                .inbound
                .park(store, &self.groups, &entry, &mut self.fx)?,
            // Held until device lists arrive: behind the entry that waits for them.
            Route::Apply if self.leaves.holds_group(&entry.group) => {
                self.inbound
                    .park(store, &self.groups, &entry, &mut self.fx)?
            }
            Route::Apply => match self.apply_entry(now_ms, &entry, false)? {
                Step::Held => {}
                Step::Applied { merged } => {
                    self.fx.ack(Stream::Group(entry.group), entry.seq);
                    if merged {
                        self.after_epoch_change(now_ms, entry.group)?;
                    }
                }
            },
        }
        Ok(())
    }

    /// Applies parked entries of `group` that have become applicable, in seq order.
    fn apply_parked(&mut self, now_ms: u64, group: GroupId) -> Result<(), HandleError> {
        // Applied (or undecodable) parked entries are deleted below.
        self.inbound.forget_bytes();
        loop {
            if self.leaves.holds_group(&group) {
                return Ok(());
            }
            let ready = self
                .inbound
                .applicable(self.provider.store(), &self.groups, group)?;
            if ready.is_empty() {
                // What was sent while the log was held goes out now.
                return self.outbox.release(cx!(self), group, &mut self.fx);
            }
            for entry in ready {
                // Removed from the parking area in the same transaction that applies it.
                match self.apply_entry(now_ms, &entry, true)? {
                    Step::Held => return Ok(()),
                    Step::Applied { merged } => {
                        self.fx.ack(Stream::Group(group), entry.seq);
                        if merged {
                            self.after_epoch_change(now_ms, group)?;
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Applies one entry and what it asks of the other parts; or parks it and holds the
    /// group when it needs device lists first.
    fn apply_entry(
        &mut self,
        now_ms: u64,
        entry: &GroupEntry,
        parked: bool,
    ) -> Result<Step, HandleError> {
        let group = entry.group;
        let applied = inbound::apply(
            cx!(self),
            &mut self.trust,
            now_ms,
            entry,
            parked,
            &self.leaves,
            &mut self.fx,
        )?;
        if parked {
            // Its parked copy may be deleted now.
            self.inbound.forget_bytes();
        }
        if !applied.need_lists.is_empty() {
            if !parked {
                self.inbound
                    .park(self.provider.store(), &self.groups, entry, &mut self.fx)?;
            }
            self.leaves
                .hold_group(group, applied.need_lists, &mut self.fx);
            return Ok(Step::Held);
        }
        if applied.own_commit
            && let Some(op) = self.changes.posting_in(group)
        {
            self.changes.finish(op, Ok(()), &mut self.fx);
        }
        if let Some(op) = applied.own_message.and_then(|id| self.outbox.complete(id)) {
            self.fx.op_done(op, Ok(()));
        }
        if applied.left {
            self.forget_group(group, Membership::Left)?;
            // Out of the relay's members at once: a member that is no admin may then
            // commit our leaf's removal (see PROTOCOL.md, "Admins").
            self.fx.leave_group(group);
        }
        if applied.removed {
            // Forget the group's keys: nothing later can be decrypted anyway, and a later
            // re-add starts from a fresh Welcome.
            self.forget_group(group, Membership::Removed)?;
        }
        for leaver in applied.leave_requests {
            self.leaves.asked_to_leave(group, leaver);
            if self
                .groups
                .get(&group)
                .is_some_and(|mls| changes::commits_leave(mls, leaver))
            {
                self.start_change(group, Goal::RemoveDevices(vec![leaver]));
            }
        }
        if let Some(key) = applied.trusted_sender {
            self.leaves.trusted(group, key);
        }
        if applied.unprocessable_commit && self.conn == Conn::Ready {
            self.rejoins.start(group, &mut self.fx);
        }
        if !applied.removed && !applied.left {
            self.refuse_leaves(group, applied.refused);
        }
        for user in applied.refresh {
            self.leaves.refresh(&user, &mut self.fx);
        }
        Ok(Step::Applied {
            merged: applied.merged,
        })
    }

    /// The answer to a fetch of `user`'s device list outside any command: pins or checks it
    /// (what it changed is told, and acted on), then applies again what waited for it.
    fn on_list_answer(
        &mut self,
        now_ms: u64,
        user: UserName,
        result: Result<Reply, ErrorReply>,
    ) -> Result<(), HandleError> {
        let own = &user == self.me.user();
        let had_certificate =
            own && own_list::certificate(self.provider.store(), &self.me)?.is_some();
        match result {
            Ok(Reply::DeviceList { entries }) if !entries.0.is_empty() => {
                let store = self.provider.store();
                match crate::identity::observe_list(store, &user, &entries.0, now_ms) {
                    Ok(verdict) => {
                        if own {
                            // The relay has all of what it served: on a device that holds
                            // the identity, nothing of it is to be published again (another
                            // holder, e.g. a device logged in with the password, may have
                            // extended the list).
                            own_list::served(store, &self.me, entries.0.len() as u64)?;
                        }
                        if let crate::identity::ListVerdict::NewIdentity { .. } = verdict {
                            self.fx.event(crate::identity::changed_event(&user, false));
                        }
                        self.on_list_verdict(now_ms, &user, verdict);
                    }
                    Err(crate::identity::IdentityError::Storage(e)) => return Err(e.into()),
                    Err(crate::identity::IdentityError::VerifiedIdentityChanged { .. }) => {
                        self.fx.event(crate::identity::changed_event(&user, true));
                    }
                    Err(e) => self.fx.warn(Warning::DeviceListRefused {
                        user: user.clone(),
                        error: Shared::new(e),
                    }),
                }
            }
            Ok(Reply::DeviceList { .. }) => {}
            Ok(reply) => self.fx.warn(Warning::UnexpectedReply {
                reply,
                request: "fetching a device list",
            }),
            Err(e) => self.fx.warn(Warning::RequestFailed(e)),
        }
        // A linked device has its certificate once its user's list is pinned: its
        // KeyPackages can be made now. A list that does not list it yet is fetched again a
        // little later (the authorising device may still be publishing it).
        if own {
            let store = self.provider.store();
            if own_list::certificate(store, &self.me)?.is_some() {
                self.certificate_retry = None;
                if !had_certificate {
                    self.key_packages.check_if_idle(&mut self.fx);
                }
            } else if store.user_identity()?.is_none() {
                let (delay_ms, attempts) = match self.certificate_retry {
                    Some(r) => (r.delay_ms.saturating_mul(2), r.attempts + 1),
                    None => (CERTIFICATE_RETRY_FIRST_MS, 1),
                };
                self.certificate_retry = if attempts > CERTIFICATE_RETRIES {
                    self.fx.warn(Warning::NoDeviceCertificate);
                    None
                } else {
                    Some(CertificateRetry {
                        at_ms: Some(now_ms.saturating_add(delay_ms)),
                        delay_ms,
                        attempts,
                    })
                };
            }
        }
        let released = self.leaves.on_list(&user);
        let result = (|| {
            for entry in released.inbox {
                self.on_inbox_entry(now_ms, entry)?;
            }
            for group in released.groups {
                self.apply_parked(now_ms, group)?;
            }
            Ok(())
        })();
        self.leaves.done(&user);
        result
    }

    /// What a verified device list changed: devices added and revoked are told; revoked
    /// ones are removed from every group this device is in; a new device of this user is
    /// added to every group.
    fn on_list_verdict(
        &mut self,
        now_ms: u64,
        user: &UserName,
        verdict: crate::identity::ListVerdict,
    ) {
        let (added, revoked) = match verdict {
            crate::identity::ListVerdict::Unchanged => return,
            crate::identity::ListVerdict::Changed { added, revoked } => (added, revoked),
            crate::identity::ListVerdict::FirstSeen { .. }
            | crate::identity::ListVerdict::NewIdentity { .. } => {
                self.leaves.lists_changed();
                return;
            }
        };
        self.leaves.lists_changed();
        for d in &added {
            self.fx.event(Event::Identity(IdentityEvent::DeviceAdded {
                user: user.clone(),
                device: d.key,
                name: d.name.to_string(),
            }));
        }
        for key in &revoked {
            self.fx.event(Event::Identity(IdentityEvent::DeviceRevoked {
                user: user.clone(),
                device: *key,
            }));
        }
        if !revoked.is_empty() {
            self.remove_everywhere(&revoked);
        }
        if user == self.me.user() && added.iter().any(|d| d.key != self.me.key()) {
            // Not registered yet is fine: nothing to add then.
            let _ = self.add_own_devices_everywhere(now_ms);
        }
    }

    /// Removes the leaves with these keys from every group this device is in (one commit per
    /// group that has any).
    fn remove_everywhere(&mut self, keys: &[DeviceKey]) {
        let groups: Vec<GroupId> = self
            .groups
            .ids()
            .filter(|g| {
                self.groups.get(g).is_some_and(|mls| {
                    mls.members().any(|m| {
                        m.index != mls.own_leaf_index()
                            && keys.iter().any(|k| k.0.as_slice() == m.signature_key)
                    })
                })
            })
            .collect();
        for group in groups {
            self.start_change(group, Goal::RemoveKeys(keys.to_vec()));
        }
    }

    /// Reports refused leaves of `group` (once each) and removes them.
    fn refuse_leaves(&mut self, group: GroupId, refused: Vec<RefusedLeaf>) {
        let mut keys = Vec::new();
        for r in refused {
            if self.leaves.first_report(group, r.key) {
                self.fx.event(Event::Identity(IdentityEvent::LeafRefused {
                    group,
                    user: r.user,
                    device: r.device,
                    reason: r.reason,
                }));
                keys.push(r.key);
            }
        }
        if !keys.is_empty() && self.groups.holds(&group) {
            self.start_change(group, Goal::RemoveKeys(keys));
        }
    }

    fn after_epoch_change(&mut self, now_ms: u64, group: GroupId) -> Result<(), HandleError> {
        self.outbox.reseal_stale(cx!(self), group, &mut self.fx)?;
        // Commands waiting for this group may proceed.
        self.changes.drive_group(group, cx!(self), &mut self.fx);
        self.apply_parked(now_ms, group)
    }

    fn forget_group(&mut self, group: GroupId, membership: Membership) -> Result<(), HandleError> {
        self.groups
            .forget(self.provider.store(), &group, membership)?;
        let why = if membership == Membership::Removed {
            NotApplicable::RemovedFromGroup
        } else {
            NotApplicable::LeftGroup
        };
        self.changes.fail_group(group, why, &mut self.fx);
        Ok(())
    }

    // ----------------------------------------------------------------------------------
    // Helpers
    // ----------------------------------------------------------------------------------

    /// The relay's answer to `UserGroups` for the user-groups join `op`: starts joining
    /// each listed group this device has no record of.
    fn on_user_groups(&mut self, op: OpId, result: Result<Reply, ErrorReply>) {
        let Some(join) = self.user_join.as_mut().filter(|j| j.op == op) else {
            return;
        };
        let listed = match result {
            Ok(Reply::UserGroups { groups }) => groups.0,
            Ok(_) => {
                self.user_join = None;
                self.fx
                    .op_done(op, Err(OpError::UnexpectedReply { to: "user groups" }));
                return;
            }
            Err(e) => {
                self.user_join = None;
                self.fx.op_done(op, Err(OpError::Relay(e)));
                return;
            }
        };
        let new: Vec<GroupId> = listed
            .into_iter()
            .filter(|g| self.groups.membership(g).is_none())
            .collect();
        join.groups = Some(new.clone());
        for group in new {
            self.rejoins.start_join(group, &mut self.fx);
        }
        self.check_user_join();
    }

    /// Completes the user-groups join once no join is under way: `OpDone`, failed with the
    /// number of listed groups this device does not hold.
    fn check_user_join(&mut self) {
        let Some(UserJoin {
            op,
            groups: Some(groups),
        }) = &self.user_join
        else {
            return;
        };
        if self.rejoins.joining() {
            return;
        }
        let op = *op;
        let missing = groups.iter().filter(|g| !self.groups.holds(g)).count();
        self.user_join = None;
        let result = if missing == 0 {
            Ok(())
        } else {
            Err(OpError::NotJoined { groups: missing })
        };
        self.fx.op_done(op, result);
    }

    fn new_op(&mut self) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        id
    }

    /// Starts adding or removing `users` (at least one) in `group`.
    fn change_users(
        &mut self,
        group: &str,
        users: &[UserName],
        goal: fn(Vec<UserName>) -> Goal,
    ) -> Result<OpId, CommandError> {
        let id = self.groups.active(group)?;
        if users.is_empty() {
            return Err(CommandError::Invalid(InvalidArgument::NoUsers));
        }
        if !self.may_change_users(&id, users) {
            return Err(CommandError::NotAdmin(group.to_string()));
        }
        Ok(self.start_change(id, goal(users.to_vec())))
    }

    fn start_change(&mut self, group: GroupId, goal: Goal) -> OpId {
        let op = self.new_op();
        self.changes.start(op, group, goal, cx!(self), &mut self.fx);
        self.apply_effects();
        op
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

    /// Applies the effects the parts asked for, in order.
    fn apply_effects(&mut self) {
        while let Some(effect) = self.fx.next() {
            match effect {
                Effect::Request(body, pending) => {
                    self.send(body, pending);
                }
                Effect::Event(event) => self.outputs.push_back(Output::Event(event)),
                Effect::Ack(stream, seq) => {
                    // Sent by count at the end of a burst (`end_of_burst`), at
                    // `BacklogDone`, by `flush_acks` or on the timers; an ack asked for off
                    // a ready connection is dropped (the entry comes again on the next one).
                    // Urgent: inbox acks, and those of a group this device no longer holds
                    // (the relay redelivers up to a removal until it is acked).
                    if self.conn == Conn::Ready {
                        let urgent = match stream {
                            Stream::Inbox => true,
                            Stream::Group(group) => !self.groups.holds(&group),
                        };
                        self.acks.processed(self.now_ms, stream, seq, urgent);
                    }
                }
            }
        }
    }

    /// Sends the acks not sent yet: one per stream, its highest processed seq; group acks
    /// quiet (some answered, see `acks`), inbox acks answered.
    fn send_acks(&mut self) {
        let unsent = self.acks.take();
        self.send_these_acks(unsent);
    }

    /// Sends the acks `unsent` (taken from [`Acks::take`]), if connected.
    fn send_these_acks(&mut self, unsent: Vec<(Stream, Seq)>) {
        if self.conn != Conn::Ready {
            return;
        }
        for (stream, seq) in unsent {
            match self.acks.kind(stream) {
                AckKind::Quiet => {
                    let id = self.next_request_id();
                    self.outputs.push_back(Output::Send(ClientFrame::Request {
                        id,
                        body: Request::QuietAck { stream, seq },
                    }));
                    self.acks.sent_quietly(id);
                }
                AckKind::Answered { confirms } => {
                    self.send(Request::Ack { stream, seq }, Pending::Ack { confirms });
                }
            }
        }
    }

    /// The id of the next request.
    fn next_request_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request = self.next_request.wrapping_add(1).max(1);
        id
    }

    /// Sends a request now.
    fn send(&mut self, body: Request, pending: Pending) -> RequestId {
        let id = self.next_request_id();
        self.requests.insert(id, pending);
        self.outputs
            .push_back(Output::Send(ClientFrame::Request { id, body }));
        id
    }
}

#[cfg(test)]
mod tests {
    /// The parts in their documented order (see the module docs and ARCHITECTURE.md).
    const PARTS: [(&str, &str); 19] = [
        ("effects", include_str!("effects.rs")),
        ("acks", include_str!("acks.rs")),
        ("mls", include_str!("mls.rs")),
        ("device", include_str!("device.rs")),
        ("own_list", include_str!("own_list.rs")),
        ("leaves", include_str!("leaves.rs")),
        ("groups", include_str!("groups.rs")),
        ("context", include_str!("context.rs")),
        ("chat_log", include_str!("chat_log.rs")),
        ("history", include_str!("history.rs")),
        ("group_settings", include_str!("group_settings.rs")),
        ("trust", include_str!("trust.rs")),
        ("key_packages", include_str!("key_packages.rs")),
        ("outbox", include_str!("outbox.rs")),
        ("roles", include_str!("roles.rs")),
        ("changes", include_str!("changes.rs")),
        ("welcome", include_str!("welcome.rs")),
        ("inbound", include_str!("inbound.rs")),
        ("rejoin", include_str!("rejoin.rs")),
    ];

    /// Each part imports only parts listed before it, so there are no import cycles among
    /// them (the dispatcher, `mod.rs`, comes last and may import every part).
    #[test]
    fn parts_import_only_parts_listed_before_them() {
        for (index, (part, source)) in PARTS.iter().enumerate() {
            let imported = source
                .lines()
                .filter_map(|line| line.trim_start().strip_prefix("use super::"))
                .map(|path| path.split([':', ';']).next().unwrap_or(path));
            for target in imported {
                let at = PARTS.iter().position(|(name, _)| *name == target);
                assert!(
                    at.is_some_and(|at| at < index),
                    "{part} imports {target}, which is not a part listed before it"
                );
            }
        }
    }
}
