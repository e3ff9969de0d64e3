//! openmls's storage on top of [`crate::Kv`]: the helpers and the [`crate::impl_mls_storage!`]
//! macro that implements `StorageProvider<CURRENT_VERSION>` for a backend.
//!
//! Layout (namespace [`Namespace::Mls`]): key = label ‖ 0 ‖ JSON(key), value = JSON(value),
//! lists as a JSON array of JSON-encoded items (the same encodings as openmls's own
//! `MemoryStorage`, so the cost per write is the same as bare openmls).

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use openmls_traits::storage::traits;

use crate::{Kv, Namespace, StoreError};

#[allow(missing_docs)]
pub mod labels {
    pub const KEY_PACKAGE: &[u8] = b"KeyPackage";
    pub const PSK: &[u8] = b"Psk";
    pub const ENCRYPTION_KEY_PAIR: &[u8] = b"EncryptionKeyPair";
    pub const SIGNATURE_KEY_PAIR: &[u8] = b"SignatureKeyPair";
    pub const EPOCH_KEY_PAIRS: &[u8] = b"EpochKeyPairs";
    pub const TREE: &[u8] = b"Tree";
    pub const GROUP_CONTEXT: &[u8] = b"GroupContext";
    pub const INTERIM_TRANSCRIPT_HASH: &[u8] = b"InterimTranscriptHash";
    pub const CONFIRMATION_TAG: &[u8] = b"ConfirmationTag";
    pub const JOIN_CONFIG: &[u8] = b"MlsGroupJoinConfig";
    pub const OWN_LEAF_NODES: &[u8] = b"OwnLeafNodes";
    pub const GROUP_STATE: &[u8] = b"GroupState";
    pub const QUEUED_PROPOSAL: &[u8] = b"QueuedProposal";
    pub const PROPOSAL_QUEUE_REFS: &[u8] = b"ProposalQueueRefs";
    pub const OWN_LEAF_NODE_INDEX: &[u8] = b"OwnLeafNodeIndex";
    pub const EPOCH_SECRETS: &[u8] = b"EpochSecrets";
    pub const RESUMPTION_PSK_STORE: &[u8] = b"ResumptionPsk";
    pub const MESSAGE_SECRETS: &[u8] = b"MessageSecrets";
}

fn enc<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Encode(e.to_string()))
}

fn storage_key(label: &[u8], key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(label.len() + 1 + key.len());
    k.extend_from_slice(label);
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// Writes `value` under (`label`, `key`).
pub fn write<K: Serialize + ?Sized, V: Serialize + ?Sized>(
    kv: &impl Kv,
    label: &[u8],
    key: &K,
    value: &V,
) -> Result<(), StoreError> {
    kv.kv_put(
        Namespace::Mls,
        &storage_key(label, &enc(key)?),
        &enc(value)?,
    )
}

/// Reads the value under (`label`, `key`).
pub fn read<K: Serialize + ?Sized, V: DeserializeOwned>(
    kv: &impl Kv,
    label: &[u8],
    key: &K,
) -> Result<Option<V>, StoreError> {
    match kv.kv_get(Namespace::Mls, &storage_key(label, &enc(key)?))? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

/// Deletes the value under (`label`, `key`).
pub fn delete<K: Serialize + ?Sized>(
    kv: &impl Kv,
    label: &[u8],
    key: &K,
) -> Result<(), StoreError> {
    kv.kv_delete(Namespace::Mls, &storage_key(label, &enc(key)?))
}

fn raw_list(kv: &impl Kv, k: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    match kv.kv_get(Namespace::Mls, k)? {
        Some(bytes) => Ok(serde_json::from_slice(&bytes)?),
        None => Ok(Vec::new()),
    }
}

/// Appends `value` to the list under (`label`, `key`).
pub fn append<K: Serialize + ?Sized, V: Serialize + ?Sized>(
    kv: &impl Kv,
    label: &[u8],
    key: &K,
    value: &V,
) -> Result<(), StoreError> {
    let k = storage_key(label, &enc(key)?);
    let mut list = raw_list(kv, &k)?;
    list.push(enc(value)?);
    kv.kv_put(Namespace::Mls, &k, &enc(&list)?)
}

/// Removes the first item equal to `value` from the list under (`label`, `key`).
pub fn remove_item<K: Serialize + ?Sized, V: Serialize + ?Sized>(
    kv: &impl Kv,
    label: &[u8],
    key: &K,
    value: &V,
) -> Result<(), StoreError> {
    let k = storage_key(label, &enc(key)?);
    let mut list = raw_list(kv, &k)?;
    let v = enc(value)?;
    if let Some(pos) = list.iter().position(|x| *x == v) {
        list.remove(pos);
    }
    kv.kv_put(Namespace::Mls, &k, &enc(&list)?)
}

/// The list under (`label`, `key`), decoded.
pub fn read_list<K: Serialize + ?Sized, V: DeserializeOwned>(
    kv: &impl Kv,
    label: &[u8],
    key: &K,
) -> Result<Vec<V>, StoreError> {
    raw_list(kv, &storage_key(label, &enc(key)?))?
        .iter()
        .map(|b| Ok(serde_json::from_slice(b)?))
        .collect()
}

/// The key of an epoch's encryption key pairs.
pub fn epoch_key<G: Serialize, E: Serialize>(
    group: &G,
    epoch: &E,
    leaf_index: u32,
) -> Result<Vec<u8>, StoreError> {
    let mut k = enc(group)?;
    k.extend_from_slice(&enc(epoch)?);
    k.extend_from_slice(&enc(&leaf_index)?);
    Ok(k)
}

/// Clears the proposal queue of a group.
pub fn clear_proposal_queue<G: Serialize, R: Serialize + DeserializeOwned>(
    kv: &impl Kv,
    group: &G,
) -> Result<(), StoreError> {
    let refs: Vec<R> = read_list(kv, labels::PROPOSAL_QUEUE_REFS, group)?;
    for r in refs {
        delete(kv, labels::QUEUED_PROPOSAL, &(group, &r))?;
    }
    delete(kv, labels::PROPOSAL_QUEUE_REFS, group)
}

/// The queued proposals of a group.
pub fn queued_proposals<G: Serialize, R: Serialize + DeserializeOwned, P: DeserializeOwned>(
    kv: &impl Kv,
    group: &G,
) -> Result<Vec<(R, P)>, StoreError> {
    let refs: Vec<R> = read_list(kv, labels::PROPOSAL_QUEUE_REFS, group)?;
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let p: Option<P> = read(kv, labels::QUEUED_PROPOSAL, &(group, &r))?;
        match p {
            Some(p) => out.push((r, p)),
            None => return Err(StoreError::Corrupt("queued proposal missing".into())),
        }
    }
    Ok(out)
}

/// Implements openmls's `StorageProvider<CURRENT_VERSION>` (error type
/// [`crate::StoreError`]) for a type implementing [`crate::Kv`].
#[macro_export]
macro_rules! impl_mls_storage {
    ($t:ty) => {
        impl $crate::StorageProvider<{ $crate::CURRENT_VERSION }> for $t {
            type Error = $crate::StoreError;

            fn write_mls_join_config<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                MlsGroupJoinConfig: $crate::mls::traits::MlsGroupJoinConfig<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId, config: &MlsGroupJoinConfig) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::JOIN_CONFIG, group_id, config)
            }
            fn append_own_leaf_node<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                LeafNode: $crate::mls::traits::LeafNode<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId, leaf_node: &LeafNode) -> Result<(), Self::Error> {
                $crate::mls::append(self, $crate::mls::labels::OWN_LEAF_NODES, group_id, leaf_node)
            }
            fn queue_proposal<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                ProposalRef: $crate::mls::traits::ProposalRef<{ $crate::CURRENT_VERSION }>,
                QueuedProposal: $crate::mls::traits::QueuedProposal<{ $crate::CURRENT_VERSION }>,
            >(
                &self,
                group_id: &GroupId,
                proposal_ref: &ProposalRef,
                proposal: &QueuedProposal,
            ) -> Result<(), Self::Error> {
                $crate::mls::write(
                    self,
                    $crate::mls::labels::QUEUED_PROPOSAL,
                    &(group_id, proposal_ref),
                    proposal,
                )?;
                $crate::mls::append(
                    self,
                    $crate::mls::labels::PROPOSAL_QUEUE_REFS,
                    group_id,
                    proposal_ref,
                )
            }
            fn write_tree<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                TreeSync: $crate::mls::traits::TreeSync<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId, tree: &TreeSync) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::TREE, group_id, tree)
            }
            fn write_interim_transcript_hash<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                InterimTranscriptHash: $crate::mls::traits::InterimTranscriptHash<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId, h: &InterimTranscriptHash) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::INTERIM_TRANSCRIPT_HASH, group_id, h)
            }
            fn write_context<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                GroupContext: $crate::mls::traits::GroupContext<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId, c: &GroupContext) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::GROUP_CONTEXT, group_id, c)
            }
            fn write_confirmation_tag<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                ConfirmationTag: $crate::mls::traits::ConfirmationTag<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId, t: &ConfirmationTag) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::CONFIRMATION_TAG, group_id, t)
            }
            fn write_group_state<
                GroupState: $crate::mls::traits::GroupState<{ $crate::CURRENT_VERSION }>,
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId, s: &GroupState) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::GROUP_STATE, group_id, s)
            }
            fn write_message_secrets<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                MessageSecrets: $crate::mls::traits::MessageSecrets<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId, s: &MessageSecrets) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::MESSAGE_SECRETS, group_id, s)
            }
            fn write_resumption_psk_store<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                ResumptionPskStore: $crate::mls::traits::ResumptionPskStore<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId, s: &ResumptionPskStore) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::RESUMPTION_PSK_STORE, group_id, s)
            }
            fn write_own_leaf_index<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                LeafNodeIndex: $crate::mls::traits::LeafNodeIndex<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId, i: &LeafNodeIndex) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::OWN_LEAF_NODE_INDEX, group_id, i)
            }
            fn write_group_epoch_secrets<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                GroupEpochSecrets: $crate::mls::traits::GroupEpochSecrets<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId, s: &GroupEpochSecrets) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::EPOCH_SECRETS, group_id, s)
            }
            fn write_signature_key_pair<
                SignaturePublicKey: $crate::mls::traits::SignaturePublicKey<{ $crate::CURRENT_VERSION }>,
                SignatureKeyPair: $crate::mls::traits::SignatureKeyPair<{ $crate::CURRENT_VERSION }>,
            >(&self, pk: &SignaturePublicKey, kp: &SignatureKeyPair) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::SIGNATURE_KEY_PAIR, pk, kp)
            }
            fn write_encryption_key_pair<
                EncryptionKey: $crate::mls::traits::EncryptionKey<{ $crate::CURRENT_VERSION }>,
                HpkeKeyPair: $crate::mls::traits::HpkeKeyPair<{ $crate::CURRENT_VERSION }>,
            >(&self, pk: &EncryptionKey, kp: &HpkeKeyPair) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::ENCRYPTION_KEY_PAIR, pk, kp)
            }
            fn write_encryption_epoch_key_pairs<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                EpochKey: $crate::mls::traits::EpochKey<{ $crate::CURRENT_VERSION }>,
                HpkeKeyPair: $crate::mls::traits::HpkeKeyPair<{ $crate::CURRENT_VERSION }>,
            >(
                &self,
                group_id: &GroupId,
                epoch: &EpochKey,
                leaf_index: u32,
                key_pairs: &[HpkeKeyPair],
            ) -> Result<(), Self::Error> {
                let k = $crate::mls::epoch_key(group_id, epoch, leaf_index)?;
                $crate::mls::write(self, $crate::mls::labels::EPOCH_KEY_PAIRS, &k, key_pairs)
            }
            fn write_key_package<
                HashReference: $crate::mls::traits::HashReference<{ $crate::CURRENT_VERSION }>,
                KeyPackage: $crate::mls::traits::KeyPackage<{ $crate::CURRENT_VERSION }>,
            >(&self, r: &HashReference, kp: &KeyPackage) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::KEY_PACKAGE, r, kp)
            }
            fn write_psk<
                PskId: $crate::mls::traits::PskId<{ $crate::CURRENT_VERSION }>,
                PskBundle: $crate::mls::traits::PskBundle<{ $crate::CURRENT_VERSION }>,
            >(&self, id: &PskId, psk: &PskBundle) -> Result<(), Self::Error> {
                $crate::mls::write(self, $crate::mls::labels::PSK, id, psk)
            }
            fn mls_group_join_config<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                MlsGroupJoinConfig: $crate::mls::traits::MlsGroupJoinConfig<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId) -> Result<Option<MlsGroupJoinConfig>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::JOIN_CONFIG, group_id)
            }
            fn own_leaf_nodes<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                LeafNode: $crate::mls::traits::LeafNode<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId) -> Result<Vec<LeafNode>, Self::Error> {
                $crate::mls::read_list(self, $crate::mls::labels::OWN_LEAF_NODES, group_id)
            }
            fn queued_proposal_refs<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                ProposalRef: $crate::mls::traits::ProposalRef<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId) -> Result<Vec<ProposalRef>, Self::Error> {
                $crate::mls::read_list(self, $crate::mls::labels::PROPOSAL_QUEUE_REFS, group_id)
            }
            fn queued_proposals<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                ProposalRef: $crate::mls::traits::ProposalRef<{ $crate::CURRENT_VERSION }>,
                QueuedProposal: $crate::mls::traits::QueuedProposal<{ $crate::CURRENT_VERSION }>,
            >(
                &self,
                group_id: &GroupId,
            ) -> Result<Vec<(ProposalRef, QueuedProposal)>, Self::Error> {
                $crate::mls::queued_proposals(self, group_id)
            }
            fn tree<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                TreeSync: $crate::mls::traits::TreeSync<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId) -> Result<Option<TreeSync>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::TREE, group_id)
            }
            fn group_context<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                GroupContext: $crate::mls::traits::GroupContext<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId) -> Result<Option<GroupContext>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::GROUP_CONTEXT, group_id)
            }
            fn interim_transcript_hash<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                InterimTranscriptHash: $crate::mls::traits::InterimTranscriptHash<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId) -> Result<Option<InterimTranscriptHash>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::INTERIM_TRANSCRIPT_HASH, group_id)
            }
            fn confirmation_tag<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                ConfirmationTag: $crate::mls::traits::ConfirmationTag<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId) -> Result<Option<ConfirmationTag>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::CONFIRMATION_TAG, group_id)
            }
            fn group_state<
                GroupState: $crate::mls::traits::GroupState<{ $crate::CURRENT_VERSION }>,
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId) -> Result<Option<GroupState>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::GROUP_STATE, group_id)
            }
            fn message_secrets<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                MessageSecrets: $crate::mls::traits::MessageSecrets<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId) -> Result<Option<MessageSecrets>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::MESSAGE_SECRETS, group_id)
            }
            fn resumption_psk_store<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                ResumptionPskStore: $crate::mls::traits::ResumptionPskStore<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId) -> Result<Option<ResumptionPskStore>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::RESUMPTION_PSK_STORE, group_id)
            }
            fn own_leaf_index<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                LeafNodeIndex: $crate::mls::traits::LeafNodeIndex<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId) -> Result<Option<LeafNodeIndex>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::OWN_LEAF_NODE_INDEX, group_id)
            }
            fn group_epoch_secrets<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                GroupEpochSecrets: $crate::mls::traits::GroupEpochSecrets<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId) -> Result<Option<GroupEpochSecrets>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::EPOCH_SECRETS, group_id)
            }
            fn signature_key_pair<
                SignaturePublicKey: $crate::mls::traits::SignaturePublicKey<{ $crate::CURRENT_VERSION }>,
                SignatureKeyPair: $crate::mls::traits::SignatureKeyPair<{ $crate::CURRENT_VERSION }>,
            >(&self, pk: &SignaturePublicKey) -> Result<Option<SignatureKeyPair>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::SIGNATURE_KEY_PAIR, pk)
            }
            fn encryption_key_pair<
                HpkeKeyPair: $crate::mls::traits::HpkeKeyPair<{ $crate::CURRENT_VERSION }>,
                EncryptionKey: $crate::mls::traits::EncryptionKey<{ $crate::CURRENT_VERSION }>,
            >(&self, pk: &EncryptionKey) -> Result<Option<HpkeKeyPair>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::ENCRYPTION_KEY_PAIR, pk)
            }
            fn encryption_epoch_key_pairs<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                EpochKey: $crate::mls::traits::EpochKey<{ $crate::CURRENT_VERSION }>,
                HpkeKeyPair: $crate::mls::traits::HpkeKeyPair<{ $crate::CURRENT_VERSION }>,
            >(
                &self,
                group_id: &GroupId,
                epoch: &EpochKey,
                leaf_index: u32,
            ) -> Result<Vec<HpkeKeyPair>, Self::Error> {
                let k = $crate::mls::epoch_key(group_id, epoch, leaf_index)?;
                Ok($crate::mls::read(self, $crate::mls::labels::EPOCH_KEY_PAIRS, &k)?
                    .unwrap_or_default())
            }
            fn key_package<
                KeyPackageRef: $crate::mls::traits::HashReference<{ $crate::CURRENT_VERSION }>,
                KeyPackage: $crate::mls::traits::KeyPackage<{ $crate::CURRENT_VERSION }>,
            >(&self, r: &KeyPackageRef) -> Result<Option<KeyPackage>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::KEY_PACKAGE, r)
            }
            fn psk<
                PskBundle: $crate::mls::traits::PskBundle<{ $crate::CURRENT_VERSION }>,
                PskId: $crate::mls::traits::PskId<{ $crate::CURRENT_VERSION }>,
            >(&self, id: &PskId) -> Result<Option<PskBundle>, Self::Error> {
                $crate::mls::read(self, $crate::mls::labels::PSK, id)
            }
            fn remove_proposal<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                ProposalRef: $crate::mls::traits::ProposalRef<{ $crate::CURRENT_VERSION }>,
            >(&self, group_id: &GroupId, r: &ProposalRef) -> Result<(), Self::Error> {
                $crate::mls::remove_item(self, $crate::mls::labels::PROPOSAL_QUEUE_REFS, group_id, r)?;
                $crate::mls::delete(self, $crate::mls::labels::QUEUED_PROPOSAL, &(group_id, r))
            }
            fn delete_own_leaf_nodes<GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>>(
                &self,
                group_id: &GroupId,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::OWN_LEAF_NODES, group_id)
            }
            fn delete_group_config<GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>>(
                &self,
                group_id: &GroupId,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::JOIN_CONFIG, group_id)
            }
            fn delete_tree<GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>>(
                &self,
                group_id: &GroupId,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::TREE, group_id)
            }
            fn delete_confirmation_tag<GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>>(
                &self,
                group_id: &GroupId,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::CONFIRMATION_TAG, group_id)
            }
            fn delete_group_state<GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>>(
                &self,
                group_id: &GroupId,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::GROUP_STATE, group_id)
            }
            fn delete_context<GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>>(
                &self,
                group_id: &GroupId,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::GROUP_CONTEXT, group_id)
            }
            fn delete_interim_transcript_hash<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
            >(
                &self,
                group_id: &GroupId,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::INTERIM_TRANSCRIPT_HASH, group_id)
            }
            fn delete_message_secrets<GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>>(
                &self,
                group_id: &GroupId,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::MESSAGE_SECRETS, group_id)
            }
            fn delete_all_resumption_psk_secrets<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
            >(
                &self,
                group_id: &GroupId,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::RESUMPTION_PSK_STORE, group_id)
            }
            fn delete_own_leaf_index<GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>>(
                &self,
                group_id: &GroupId,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::OWN_LEAF_NODE_INDEX, group_id)
            }
            fn delete_group_epoch_secrets<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
            >(
                &self,
                group_id: &GroupId,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::EPOCH_SECRETS, group_id)
            }
            fn clear_proposal_queue<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                ProposalRef: $crate::mls::traits::ProposalRef<{ $crate::CURRENT_VERSION }>,
            >(
                &self,
                group_id: &GroupId,
            ) -> Result<(), Self::Error> {
                $crate::mls::clear_proposal_queue::<GroupId, ProposalRef>(self, group_id)
            }
            fn delete_signature_key_pair<
                SignaturePublicKey: $crate::mls::traits::SignaturePublicKey<{ $crate::CURRENT_VERSION }>,
            >(
                &self,
                pk: &SignaturePublicKey,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::SIGNATURE_KEY_PAIR, pk)
            }
            fn delete_encryption_key_pair<
                EncryptionKey: $crate::mls::traits::EncryptionKey<{ $crate::CURRENT_VERSION }>,
            >(
                &self,
                pk: &EncryptionKey,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::ENCRYPTION_KEY_PAIR, pk)
            }
            fn delete_encryption_epoch_key_pairs<
                GroupId: $crate::mls::traits::GroupId<{ $crate::CURRENT_VERSION }>,
                EpochKey: $crate::mls::traits::EpochKey<{ $crate::CURRENT_VERSION }>,
            >(
                &self,
                group_id: &GroupId,
                epoch: &EpochKey,
                leaf_index: u32,
            ) -> Result<(), Self::Error> {
                let k = $crate::mls::epoch_key(group_id, epoch, leaf_index)?;
                $crate::mls::delete(self, $crate::mls::labels::EPOCH_KEY_PAIRS, &k)
            }
            fn delete_key_package<
                KeyPackageRef: $crate::mls::traits::HashReference<{ $crate::CURRENT_VERSION }>,
            >(
                &self,
                r: &KeyPackageRef,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::KEY_PACKAGE, r)
            }
            fn delete_psk<PskKey: $crate::mls::traits::PskId<{ $crate::CURRENT_VERSION }>>(
                &self,
                id: &PskKey,
            ) -> Result<(), Self::Error> {
                $crate::mls::delete(self, $crate::mls::labels::PSK, id)
            }
        }
    };
}
