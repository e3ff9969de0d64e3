//! Handshake validation: the relay's public view of each group's MLS state.
//!
//! The relay keeps, per group, an openmls [`PublicGroup`]: the public ratchet tree, the
//! epoch and the group context. It holds no secret (no key schedule, no private keys), so it
//! can check what a signature and the public tree can prove, and nothing more:
//! - a group is created from the creator's GroupInfo and ratchet tree at epoch 0, which must
//!   verify (signature, tree hash), be of the requested group and hold exactly the creating
//!   device's leaf;
//! - a commit must be an MLS `PublicMessage` that `process_message` accepts (signature by a
//!   member's leaf, the current epoch, well-formed proposals), made by the posting device's
//!   own leaf; its frame's `added`/`removed` lists must equal the devices its Add and Remove
//!   proposals name (added leaves' credentials must be devices registered to the credential's
//!   user, with the registered key as signature key); and the GroupInfo it carries must be of
//!   the epoch it starts, carry an `external_pub`, be signed by the committer, and rebuild
//!   the very state the relay merged (same confirmation tag and group context);
//! - an external commit is accepted only as a member's rejoin or as a new device of a user
//!   who has a member device in the group joining: its joiner leaf is the posting device
//!   (with its registered key), it adds no one and removes at most that device's own old
//!   leaves; a rejoin's lists are empty (membership does not change), a join's `added` is
//!   exactly the posting device; both fetch the state to join from with `FetchGroupState`;
//! - a member's commit is checked against the group's roles (issue 13, the admins in the
//!   pre-commit group context's `cove_wire::roles::ROLES_EXTENSION`): a committer whose user
//!   is no admin may add only its own user's devices, remove only its own user's devices and
//!   devices that are no longer members here, and not change the roles; an admin's new roles
//!   must be well-formed and name an admin; joins and rejoins never change them;
//! - proposals are not accepted on their own (clients commit them inline);
//! - application messages are not parsed (the fan-out hot path).
//!
//! The relay cannot check what needs the group's secrets (membership tag, confirmation tag,
//! path secrets): a member may still fail to process a commit the relay accepted.
//!
//! The store keeps only opaque bytes (the latest GroupInfo and the exported ratchet tree),
//! written in the same transaction as the commit; after a restart the state is rebuilt from
//! them ([`PublicGroup::from_external`]) on the group's first commit. Commits are validated,
//! appended and merged one at a time (the post writer's one thread, or the simulation's
//! caller), so two commits of a group never race between validation and merge.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use cove_wire::roles::{ROLES_EXTENSION, RolesError, decode_roles};
use cove_wire::{DeviceId, Epoch, ErrorCode, ErrorReply, GroupId, PostKind, UserName};
use openmls::messages::group_info::{GroupInfo, VerifiableGroupInfo};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, ContentType, Credential, Extensions, GroupContext, LeafNode, LeafNodeIndex,
    MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider as _, OpenMlsSignaturePublicKey,
    ProcessedMessageContent, ProposalStore, PublicGroup, RatchetTreeIn, Sender, Verifiable as _,
    WireFormat,
};
use openmls_rust_crypto::OpenMlsRustCrypto;

use crate::store::{NewPost, PublicGroupState, RelayStore, StoreError};

/// Most groups whose public state is kept in memory; past it one is dropped (and rebuilt
/// from the store on its next commit).
const MAX_CACHED_GROUPS: usize = 4096;

/// Why a handshake was refused (answered `InvalidCommit`, or `Internal` for a relay fault).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes are not the MLS message they should be.
    #[error("{0} does not decode")]
    Undecodable(&'static str),
    /// A commit sent as a PrivateMessage: the relay can only check a PublicMessage.
    #[error("handshakes must be sent as MLS PublicMessage")]
    NotPublic,
    /// A commit post whose MLS message is no commit.
    #[error("the post is not an MLS commit")]
    NotCommit,
    /// A standalone proposal: not accepted (commit proposals inline).
    #[error("standalone proposals are not accepted; commit them inline")]
    Proposal,
    /// An external commit that is neither the posting member rejoining nor a new device of
    /// a user with a member device joining (it adds someone, removes another device's leaf,
    /// or comes from a device of a user with no member device in the group).
    #[error(
        "an external commit may only rejoin the posting device, or join a new device of a user \
         who has a member device, removing only its own old leaves"
    )]
    External,
    /// openmls refused the commit (signature, epoch, sender, proposals).
    #[error("the commit does not verify: {0}")]
    Refused(String),
    /// The group has no stored public state (created without validation).
    #[error("the group has no public MLS state on this relay")]
    NoState,
    /// The commit's signer is not the posting device's leaf.
    #[error("the commit is not signed by the posting device's leaf")]
    NotPoster,
    /// A leaf's credential is not a registered Cove device of its user with its key.
    #[error("a leaf's credential is not a registered device: {0}")]
    Credential(&'static str),
    /// The frame's `added` list is not what the commit's Add proposals add.
    #[error("the commit's added devices do not match its proposals")]
    AddedMismatch,
    /// The frame's `removed` list is not what the commit's Remove proposals remove.
    #[error("the commit's removed devices do not match its proposals")]
    RemovedMismatch,
    /// The GroupInfo the commit carries is not the one of the epoch it starts.
    #[error("the commit's GroupInfo {0}")]
    GroupInfo(&'static str),
    /// A member whose user is not an admin of the group (by the roles of the epoch the
    /// commit starts from) committed what only an admin may (issue 13).
    #[error("only an admin of the group may {0}")]
    NotAdmin(&'static str),
    /// The roles a commit (or a group's creation) sets are malformed or name no admin.
    #[error("the group's roles are not acceptable: {0}")]
    Roles(#[from] cove_wire::roles::RolesError),
    /// A group's creation state is not acceptable.
    #[error("the group's initial state {0}")]
    Create(String),
    /// Something failed inside the relay (storage of the public state, a store read).
    #[error("internal: {0}")]
    Internal(String),
}

impl HandshakeError {
    /// The error reply: `InvalidCommit`, or `Internal` for a relay fault.
    pub fn reply(&self) -> ErrorReply {
        let code = match self {
            HandshakeError::Internal(_) => ErrorCode::Internal,
            _ => ErrorCode::InvalidCommit,
        };
        ErrorReply::new(code, self.to_string())
    }
}

/// Why a post was refused: by the store's rules or by handshake validation.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The store refused it (or failed).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Handshake validation refused it.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

/// A group's public state in memory, with the (key-less) storage openmls keeps it in.
struct Tracked {
    provider: OpenMlsRustCrypto,
    group: PublicGroup,
}

/// A validated commit's next state: stored with the commit, then kept in memory.
pub struct Prepared {
    group: GroupId,
    state: PublicGroupState,
    tracked: Tracked,
}

impl Prepared {
    /// The bytes to store with the commit ([`NewPost::public_state`]).
    pub fn state(&self) -> &PublicGroupState {
        &self.state
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prepared({:?})", self.state)
    }
}

/// The relay's handshake validation: on or off (tests with placeholder MLS bytes), and the
/// public state of recently used groups.
pub struct Handshakes {
    enabled: bool,
    groups: Mutex<HashMap<GroupId, Tracked>>,
}

impl Handshakes {
    /// Validation on (`true`, the relay's default) or off.
    pub fn new(enabled: bool) -> Self {
        Handshakes {
            enabled,
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// Whether handshakes are validated.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn lock(&self) -> Result<MutexGuard<'_, HashMap<GroupId, Tracked>>, HandshakeError> {
        self.groups
            .lock()
            .map_err(|_| HandshakeError::Internal("handshake state lock poisoned".into()))
    }

    /// Checks a `CreateGroup` by `creator`: the public state to store with the group (`None`
    /// when validation is off).
    pub fn check_create(
        &self,
        store: &dyn RelayStore,
        group: GroupId,
        creator: DeviceId,
        group_info: &[u8],
        tree: &[u8],
    ) -> Result<Option<PublicGroupState>, HandshakeError> {
        if !self.enabled {
            return Ok(None);
        }
        let state = PublicGroupState {
            group_info: group_info.to_vec(),
            tree: tree.to_vec(),
        };
        let tracked = rebuild(&state).map_err(|e| HandshakeError::Create(e.to_string()))?;
        let pg = &tracked.group;
        if pg.group_id().as_slice() != group.0.as_slice() {
            return Err(HandshakeError::Create("is of another group".into()));
        }
        if pg.group_context().epoch().as_u64() != 0 {
            return Err(HandshakeError::Create("is not at epoch 0".into()));
        }
        if pg.members().count() != 1 {
            return Err(HandshakeError::Create("must hold exactly one leaf".into()));
        }
        let leaf = pg
            .leaf(LeafNodeIndex::new(0))
            .ok_or_else(|| HandshakeError::Create("has no first leaf".into()))?;
        if registered_device(store, leaf)? != creator {
            return Err(HandshakeError::Create(
                "must hold the creating device's leaf".into(),
            ));
        }
        if let Some(data) = roles_of(pg.group_context().extensions()) {
            decode_roles(data)?;
        }
        Ok(Some(state))
    }

    /// Checks a post before the store sees it. Application messages (and every post when
    /// validation is off) pass unparsed (`None`). A commit is validated as the module says
    /// and its next state returned, to store with it ([`NewPost::public_state`]) and then
    /// hand to [`Handshakes::stored`]. A commit by a non-member is refused `NotMember`, and
    /// one for another epoch than the group's current one passes unparsed (`None`) for the
    /// store to refuse with `StaleEpoch`, before any MLS work, as without validation.
    pub fn check_post(
        &self,
        store: &dyn RelayStore,
        post: &NewPost,
    ) -> Result<Option<Prepared>, PostError> {
        let group_info = match &post.kind {
            _ if !self.enabled => return Ok(None),
            PostKind::Application => return Ok(None),
            PostKind::Proposal => return Err(HandshakeError::Proposal.into()),
            PostKind::Commit { group_info, .. } => group_info,
        };
        // A non-member may post only a new device's external join (checked below), and
        // only when a device of its user is a member: another user's is `InvalidCommit`,
        // whatever its epoch.
        if !store.is_member(post.group, post.sender)? {
            if !is_join_shaped(post) {
                return Err(StoreError::NotMember.into());
            }
            if !super::requests::user_has_member(store, post.group, post.sender)? {
                return Err(HandshakeError::External.into());
            }
        }
        let mut groups = self.lock()?;
        // A cached state behind the post's epoch may be stale: another relay node on the
        // same store may have committed since (issue 15). The store's is the truth then.
        let cached = groups
            .remove(&post.group)
            .filter(|t| t.group.group_context().epoch().as_u64() >= post.epoch.0);
        let tracked = match cached {
            Some(tracked) => tracked,
            None => {
                let state = store
                    .public_state(post.group)?
                    .ok_or(HandshakeError::NoState)?;
                rebuild(&state)?
            }
        };
        let current = Epoch(tracked.group.group_context().epoch().as_u64());
        if post.epoch != current {
            keep(&mut groups, post.group, tracked);
            drop(groups);
            // Not this epoch: the store refuses it (`StaleEpoch`) by its own rule, as
            // without validation. Its epoch is the public state's (both change in one
            // transaction); were they ever out of step, the commit is refused here.
            let stored = store
                .groups_of(post.sender)?
                .into_iter()
                .find(|g| g.group == post.group)
                .map(|g| g.epoch);
            return match stored {
                Some(epoch) if epoch == post.epoch => Err(HandshakeError::Internal(format!(
                    "public state at epoch {current}, store at {epoch}"
                ))
                .into()),
                _ => Ok(None),
            };
        }
        drop(groups);
        match validate_commit(store, &tracked, post, group_info.as_bytes()) {
            Ok(staged) => {
                let prepared = merge(post.group, tracked, *staged, group_info.as_bytes())?;
                Ok(Some(prepared))
            }
            Err(e) => {
                // `process_message` changed nothing: the state is kept as it was.
                keep(&mut *self.lock()?, post.group, tracked);
                Err(e.into())
            }
        }
    }

    /// The commit of `prepared` is stored: its state becomes the group's in memory. (If the
    /// store refused it instead, dropping `prepared` leaves the group to be rebuilt from the
    /// store's state on its next commit.)
    pub fn stored(&self, prepared: Prepared) {
        if let Ok(mut groups) = self.lock() {
            keep(&mut groups, prepared.group, prepared.tracked);
        }
    }
}

/// Whether `post` has the shape of a new device's external join: a commit adding exactly
/// its sender, removing no one, with no Welcome (the MLS checks come after).
fn is_join_shaped(post: &NewPost) -> bool {
    matches!(
        &post.kind,
        PostKind::Commit { added, removed, welcome: None, .. }
            if added.as_slice() == [post.sender] && removed.is_empty()
    )
}

/// Puts a group's state in the cache, dropping another group's if it is full.
fn keep(groups: &mut HashMap<GroupId, Tracked>, group: GroupId, tracked: Tracked) {
    if groups.len() >= MAX_CACHED_GROUPS
        && !groups.contains_key(&group)
        && let Some(other) = groups.keys().next().copied()
    {
        groups.remove(&other);
    }
    groups.insert(group, tracked);
}

/// Rebuilds a group's public state from stored bytes: verifies the tree against the
/// GroupInfo's tree hash and the GroupInfo's signature by its signer's leaf.
fn rebuild(state: &PublicGroupState) -> Result<Tracked, HandshakeError> {
    let vgi = verifiable_group_info(&state.group_info)?;
    let tree = RatchetTreeIn::tls_deserialize_exact(&state.tree)
        .map_err(|_| HandshakeError::Undecodable("the ratchet tree"))?;
    let provider = OpenMlsRustCrypto::default();
    let (group, _) = PublicGroup::from_external(
        provider.crypto(),
        provider.storage(),
        tree,
        vgi,
        ProposalStore::new(),
    )
    .map_err(|e| HandshakeError::Refused(e.to_string()))?;
    Ok(Tracked { provider, group })
}

/// A GroupInfo from its MLSMessage encoding.
fn verifiable_group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, HandshakeError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|_| HandshakeError::Undecodable("the GroupInfo"))?;
    match message.extract() {
        MlsMessageBodyIn::GroupInfo(vgi) => Ok(vgi),
        _ => Err(HandshakeError::Undecodable("the GroupInfo")),
    }
}

/// The staged commit of a valid `post` (nothing changes yet).
fn validate_commit(
    store: &dyn RelayStore,
    tracked: &Tracked,
    post: &NewPost,
    group_info: &[u8],
) -> Result<Box<openmls::prelude::StagedCommit>, HandshakeError> {
    let PostKind::Commit { added, removed, .. } = &post.kind else {
        return Err(HandshakeError::NotCommit);
    };
    let pg = &tracked.group;
    let crypto = tracked.provider.crypto();
    let message = MlsMessageIn::tls_deserialize_exact(&post.payload)
        .map_err(|_| HandshakeError::Undecodable("the commit"))?
        .try_into_protocol_message()
        .map_err(|_| HandshakeError::NotCommit)?;
    if message.wire_format() != WireFormat::PublicMessage {
        return Err(HandshakeError::NotPublic);
    }
    if message.content_type() != ContentType::Commit {
        return Err(HandshakeError::NotCommit);
    }
    let processed = pg
        .process_message(crypto, message)
        .map_err(|e| HandshakeError::Refused(e.to_string()))?;
    let sender = processed.sender().clone();
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err(HandshakeError::NotCommit);
    };
    // The leaf that signs the GroupInfo: the committer's after the commit (an update path
    // may replace it), which must be the posting device with its registered key.
    let member = store
        .is_member(post.group, post.sender)
        .map_err(|e| HandshakeError::Internal(e.to_string()))?;
    let signer: LeafNode = match sender {
        // Only a member commits as a member (a device that left is still a leaf).
        Sender::Member(_) if !member => return Err(HandshakeError::NotPoster),
        Sender::Member(index) => {
            let committer = pg.leaf(index).ok_or(HandshakeError::NotPoster)?;
            if registered_device(store, committer)? != post.sender {
                return Err(HandshakeError::NotPoster);
            }
            let committer_user = credential_device(committer.credential())?.0;
            let mut derived_added = Vec::new();
            let mut added_users = Vec::new();
            for add in staged.add_proposals() {
                let leaf = add.add_proposal().key_package().leaf_node();
                derived_added.push(registered_device(store, leaf)?);
                added_users.push(credential_device(leaf.credential())?.0);
            }
            let mut derived_removed = Vec::new();
            let mut removed_leaves = Vec::new();
            for remove in staged.remove_proposals() {
                // The leaf as it is before the merge.
                let leaf = pg
                    .leaf(remove.remove_proposal().removed())
                    .ok_or(HandshakeError::RemovedMismatch)?;
                let (user, device) = credential_device(leaf.credential())?;
                derived_removed.push(device);
                removed_leaves.push((user, device));
            }
            check_roles(
                store,
                post.group,
                pg.group_context().extensions(),
                staged.group_context().extensions(),
                &committer_user,
                &added_users,
                &removed_leaves,
            )?;
            if !same_set(derived_added, added) {
                return Err(HandshakeError::AddedMismatch);
            }
            if !same_set(derived_removed, removed) {
                return Err(HandshakeError::RemovedMismatch);
            }
            staged.update_path_leaf_node().unwrap_or(committer).clone()
        }
        // An external commit. openmls authorizes none (RFC 9420 12.4.3.2), so the relay
        // does. Either a rejoin: a member that lost its group state joins again from the
        // relay's GroupInfo (the posting device is a member; its lists are empty, so
        // membership does not change); or a new device of a user who has a member device
        // in the group joins (the posting device is not a member, its user has a member
        // device, checked before; `added` is exactly the posting device, `removed` empty).
        // Either way the joiner leaf is the posting device with its registered key
        // (checked below as the signer), it adds no one, and it removes at most the posting
        // device's own old leaves.
        Sender::NewMemberCommit => {
            let joiner = staged
                .update_path_leaf_node()
                .ok_or(HandshakeError::External)?;
            if staged.add_proposals().next().is_some() {
                return Err(HandshakeError::External);
            }
            for remove in staged.remove_proposals() {
                let leaf = pg
                    .leaf(remove.remove_proposal().removed())
                    .ok_or(HandshakeError::External)?;
                if credential_device(leaf.credential())?.1 != post.sender {
                    return Err(HandshakeError::External);
                }
            }
            if !removed.is_empty() {
                return Err(HandshakeError::RemovedMismatch);
            }
            // A join or rejoin never changes the roles.
            if roles_of(pg.group_context().extensions())
                != roles_of(staged.group_context().extensions())
            {
                return Err(HandshakeError::NotAdmin("change the admins"));
            }
            let expected: &[DeviceId] = if member { &[] } else { &[post.sender] };
            if added.as_slice() != expected {
                return Err(HandshakeError::AddedMismatch);
            }
            joiner.clone()
        }
        _ => return Err(HandshakeError::NotPoster),
    };
    if registered_device(store, &signer)? != post.sender {
        return Err(HandshakeError::NotPoster);
    }
    let vgi = verifiable_group_info(group_info)?;
    if vgi.group_context() != staged.group_context() {
        return Err(HandshakeError::GroupInfo(
            "is not of the epoch the commit starts",
        ));
    }
    if vgi.extensions().external_pub().is_none() {
        return Err(HandshakeError::GroupInfo("has no external_pub extension"));
    }
    let key = OpenMlsSignaturePublicKey::from_signature_key(
        signer.signature_key().clone(),
        pg.ciphersuite().signature_algorithm(),
    );
    let _: GroupInfo = vgi
        .verify(crypto, &key)
        .map_err(|_| HandshakeError::GroupInfo("is not signed by the committer"))?;
    Ok(staged)
}

/// The roles data of a group context's extensions (`None`: the group has no roles).
fn roles_of(extensions: &Extensions<GroupContext>) -> Option<&[u8]> {
    extensions
        .unknown(ROLES_EXTENSION)
        .map(|ext| ext.0.as_slice())
}

/// Checks a member's commit against the roles of the epoch it starts from (`before`; a
/// group without roles lets everyone do what admins do): an admin may make any commit, but
/// roles it changes must stay well-formed and name an admin (`after`); any other member
/// may add only its own user's devices, remove only its own user's devices and devices
/// that are no longer members here (they left with `LeaveGroup`), and not change the roles.
fn check_roles(
    store: &dyn RelayStore,
    group: GroupId,
    before: &Extensions<GroupContext>,
    after: &Extensions<GroupContext>,
    committer: &UserName,
    added: &[UserName],
    removed: &[(UserName, DeviceId)],
) -> Result<(), HandshakeError> {
    let changed = roles_of(before) != roles_of(after);
    let admin = match roles_of(before) {
        None => true,
        Some(data) => decode_roles(data).is_ok_and(|admins| admins.contains(committer)),
    };
    if admin {
        if changed {
            let data = roles_of(after).ok_or(RolesError::Empty)?;
            decode_roles(data)?;
        }
        return Ok(());
    }
    if changed {
        return Err(HandshakeError::NotAdmin("change the admins"));
    }
    if added.iter().any(|u| u != committer) {
        return Err(HandshakeError::NotAdmin("add another user's devices"));
    }
    for (user, device) in removed {
        if user == committer {
            continue;
        }
        let member = store
            .is_member(group, *device)
            .map_err(|e| HandshakeError::Internal(e.to_string()))?;
        if member {
            return Err(HandshakeError::NotAdmin("remove another user's devices"));
        }
    }
    Ok(())
}

/// Merges a validated commit and checks that the stored bytes rebuild exactly the merged
/// state (the GroupInfo's confirmation tag is the commit's): the next state.
fn merge(
    group: GroupId,
    mut tracked: Tracked,
    staged: openmls::prelude::StagedCommit,
    group_info: &[u8],
) -> Result<Prepared, HandshakeError> {
    tracked
        .group
        .merge_commit(tracked.provider.storage(), staged)
        .map_err(|e| HandshakeError::Internal(e.to_string()))?;
    let tree = tracked
        .group
        .export_ratchet_tree()
        .tls_serialize_detached()
        .map_err(|e| HandshakeError::Internal(e.to_string()))?;
    let state = PublicGroupState {
        group_info: group_info.to_vec(),
        tree,
    };
    let rebuilt = rebuild(&state)?;
    if rebuilt.group.confirmation_tag() != tracked.group.confirmation_tag()
        || rebuilt.group.group_context() != tracked.group.group_context()
    {
        return Err(HandshakeError::GroupInfo(
            "does not carry the commit's confirmation tag",
        ));
    }
    Ok(Prepared {
        group,
        state,
        tracked: rebuilt,
    })
}

/// Whether `derived` and `claimed` hold the same devices (each list without repeats).
fn same_set(mut derived: Vec<DeviceId>, claimed: &[DeviceId]) -> bool {
    let mut claimed = claimed.to_vec();
    derived.sort_unstable();
    claimed.sort_unstable();
    let unique = derived.windows(2).all(|w| w.first() != w.get(1));
    unique && derived == claimed
}

/// The device of a leaf, which must be registered to its credential's user with the leaf's
/// signature key (Cove devices sign MLS with their registered key).
fn registered_device(store: &dyn RelayStore, leaf: &LeafNode) -> Result<DeviceId, HandshakeError> {
    let (user, device) = credential_device(leaf.credential())?;
    let (owner, key) = store
        .device(device)
        .map_err(|e| HandshakeError::Internal(e.to_string()))?
        .ok_or(HandshakeError::Credential("no such device"))?;
    if owner != user {
        return Err(HandshakeError::Credential("the device is of another user"));
    }
    if key.0.as_slice() != leaf.signature_key().as_slice() {
        return Err(HandshakeError::Credential(
            "the signature key is not the device's key",
        ));
    }
    Ok(device)
}

/// Parses a Cove credential: the BasicCredential identity `cove:<user>:<device id>` (the
/// format `cove-core` writes; the relay parses it itself).
fn credential_device(credential: &Credential) -> Result<(UserName, DeviceId), HandshakeError> {
    let bad = HandshakeError::Credential("not a Cove credential");
    let basic = BasicCredential::try_from(credential.clone()).map_err(|_| bad)?;
    let text = std::str::from_utf8(basic.identity())
        .map_err(|_| HandshakeError::Credential("not a Cove credential"))?;
    let (user, device) = text
        .strip_prefix("cove:")
        .and_then(|rest| rest.rsplit_once(':'))
        .ok_or(HandshakeError::Credential("not a Cove credential"))?;
    let user =
        UserName::new(user).map_err(|_| HandshakeError::Credential("not a Cove user name"))?;
    let device = device
        .parse()
        .map(DeviceId)
        .map_err(|_| HandshakeError::Credential("not a device id"))?;
    Ok((user, device))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The credential parser accepts exactly `cove:<user>:<decimal id>`.
    #[test]
    fn credentials_parse_only_in_the_cove_format() {
        let parse =
            |s: &str| credential_device(&BasicCredential::new(s.as_bytes().to_vec()).into());
        let (user, device) = parse("cove:alice:7").unwrap();
        assert_eq!((user.as_str(), device), ("alice", DeviceId(7)));
        for bad in [
            "alice:7",
            "cove:alice",
            "cove:alice:x",
            "cove::7",
            "cove:alice:-1",
        ] {
            assert!(
                matches!(parse(bad), Err(HandshakeError::Credential(_))),
                "{bad}"
            );
        }
    }

    /// Lists match as sets, and a derived list with a device twice never matches.
    #[test]
    fn membership_lists_compare_as_sets() {
        let d = DeviceId;
        assert!(same_set(vec![d(2), d(1)], &[d(1), d(2)]));
        assert!(!same_set(vec![d(1)], &[d(1), d(2)]));
        assert!(!same_set(vec![d(1), d(1)], &[d(1), d(1)]));
        assert!(same_set(vec![], &[]));
    }
}
