//! Handshake validation (issue 10 item 1) with real MLS members: openmls groups whose
//! credentials are `cove:<user>:<device>` and whose signature keys are the devices'
//! registered keys, as Cove devices make them, over a relay that validates handshakes (as
//! every production relay does).

use cove_server::{Relay, RelayConfig, StoreKind};
use cove_test_utils::{ClientError, DeviceKeys, TestClient, TestRelay, client_tls_config, ws_url};
use cove_wire::{
    Delivery, DeviceId, Epoch, ErrorCode, GroupId, Payload, PostKind, Reply, Request, Seq, Stream,
};
use openmls::messages::group_info::GroupInfo;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, Ciphersuite, ContentType, CredentialWithKey, GroupId as MlsGroupId,
    KeyPackage, LeafNodeIndex, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig,
    MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, OpenMlsProvider as _,
    PURE_CIPHERTEXT_WIRE_FORMAT_POLICY, ProcessedMessageContent, RatchetTreeIn, SignatureScheme,
    StagedWelcome, WireFormatPolicy,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// A relay on the memory store with handshake validation on.
pub(crate) async fn validating_relay() -> TestRelay {
    TestRelay::configured(|c| c.validate_handshakes = true).await
}

/// A device with a real MLS state: its relay connection, its keys, and its MLS group.
pub struct Member {
    /// Its connection.
    pub client: TestClient,
    /// Its keys (the MLS signature key is the device key).
    pub keys: DeviceKeys,
    pub(crate) provider: OpenMlsRustCrypto,
    pub(crate) signer: SignatureKeyPair,
    pub(crate) mls: Option<MlsGroup>,
}

/// A commit as a client posts it.
pub struct Commit {
    pub payload: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
    pub group_info: Vec<u8>,
    pub epoch: Epoch,
}

impl Member {
    /// Registers a new user `name` on `client`'s connection.
    pub async fn new(mut client: TestClient, name: &str) -> Self {
        let mut keys = DeviceKeys::generate(name);
        client.register(&mut keys).await.unwrap();
        Member::with(client, keys)
    }

    /// A device already registered (or authenticated) as `keys` on `client`.
    pub fn with(client: TestClient, keys: DeviceKeys) -> Self {
        let signer = SignatureKeyPair::from_raw(
            SignatureScheme::ED25519,
            keys.secret_bytes().to_vec(),
            keys.public_key().0.to_vec(),
        );
        Member {
            client,
            keys,
            provider: OpenMlsRustCrypto::default(),
            signer,
            mls: None,
        }
    }

    pub(crate) fn credential(&self) -> CredentialWithKey {
        let identity = format!("cove:{}:{}", self.keys.user, self.keys.id().0);
        CredentialWithKey {
            credential: BasicCredential::new(identity.into_bytes()).into(),
            signature_key: self.keys.public_key().0.to_vec().into(),
        }
    }

    pub fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .build(SUITE, &self.provider, &self.signer, self.credential())
            .unwrap()
            .key_package()
            .clone()
    }

    fn mls(&mut self) -> &mut MlsGroup {
        self.mls.as_mut().unwrap()
    }

    /// Makes the MLS group and creates it on the relay with its GroupInfo and tree.
    pub async fn create(&mut self) -> GroupId {
        let (group, group_info, tree) = self.make_group();
        self.client
            .create_group_with(group, group_info, tree)
            .await
            .unwrap();
        group
    }

    /// Makes an MLS group (only here): its id, GroupInfo and ratchet tree at epoch 0.
    fn make_group(&mut self) -> (GroupId, Vec<u8>, Vec<u8>) {
        let group = cove_test_utils::random_group_id();
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(SUITE)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .build();
        let mls = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            MlsGroupId::from_slice(&group.0),
            self.credential(),
        )
        .unwrap();
        let group_info = mls
            .export_group_info(self.provider.crypto(), &self.signer, false)
            .unwrap()
            .to_bytes()
            .unwrap();
        let tree = mls.export_ratchet_tree().tls_serialize_detached().unwrap();
        self.mls = Some(mls);
        (group, group_info, tree)
    }

    /// A commit adding `key_packages` (pending in the MLS group until merged).
    pub fn add(&mut self, key_packages: &[KeyPackage]) -> Commit {
        let (provider, signer) = (&self.provider, &self.signer);
        let mls = self.mls.as_mut().unwrap();
        let epoch = Epoch(mls.epoch().as_u64());
        let (commit, welcome, gi) = mls.add_members(provider, signer, key_packages).unwrap();
        Commit {
            payload: commit.to_bytes().unwrap(),
            welcome: Some(welcome.to_bytes().unwrap()),
            group_info: MlsMessageOut::from(gi.unwrap()).to_bytes().unwrap(),
            epoch,
        }
    }

    /// A commit removing the leaves at `leaves`.
    pub(crate) fn remove(&mut self, leaves: &[u32]) -> Commit {
        let (provider, signer) = (&self.provider, &self.signer);
        let mls = self.mls.as_mut().unwrap();
        let epoch = Epoch(mls.epoch().as_u64());
        let leaves: Vec<LeafNodeIndex> = leaves.iter().map(|i| LeafNodeIndex::new(*i)).collect();
        let (commit, _, gi) = mls.remove_members(provider, signer, &leaves).unwrap();
        Commit {
            payload: commit.to_bytes().unwrap(),
            welcome: None,
            group_info: MlsMessageOut::from(gi.unwrap()).to_bytes().unwrap(),
            epoch,
        }
    }

    /// A key-update commit.
    pub(crate) fn update(&mut self) -> Commit {
        let (provider, signer) = (&self.provider, &self.signer);
        let mls = self.mls.as_mut().unwrap();
        let epoch = Epoch(mls.epoch().as_u64());
        let bundle = mls
            .self_update(provider, signer, Default::default())
            .unwrap();
        let gi: GroupInfo = bundle.group_info().cloned().unwrap();
        Commit {
            payload: bundle.commit().to_bytes().unwrap(),
            welcome: None,
            group_info: MlsMessageOut::from(gi).to_bytes().unwrap(),
            epoch,
        }
    }

    /// Posts `commit` with the given lists.
    pub async fn post(
        &mut self,
        group: GroupId,
        commit: &Commit,
        added: &[DeviceId],
        removed: &[DeviceId],
    ) -> Result<Seq, ClientError> {
        let kind = PostKind::Commit {
            added: added.to_vec().into(),
            removed: removed.to_vec().into(),
            welcome: commit.welcome.clone().map(Payload),
            group_info: Payload(commit.group_info.clone()),
        };
        self.client
            .post(group, commit.epoch, kind, &commit.payload)
            .await
    }

    /// Sets the group's wire format policy.
    fn set_policy(&mut self, policy: WireFormatPolicy) {
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(policy)
            .use_ratchet_tree_extension(true)
            .build();
        let provider = &self.provider;
        let mls = self.mls.as_mut().unwrap();
        mls.set_configuration(provider.storage(), &config).unwrap();
    }

    /// Merges this member's own pending commit (the relay took it).
    pub fn merge(&mut self) {
        let provider = &self.provider;
        self.mls
            .as_mut()
            .unwrap()
            .merge_pending_commit(provider)
            .unwrap();
    }

    /// Drops this member's own pending commit (the relay refused it).
    pub(crate) fn discard(&mut self) {
        let provider = &self.provider;
        self.mls
            .as_mut()
            .unwrap()
            .clear_pending_commit(provider.storage())
            .unwrap();
    }

    /// Joins from the Welcome in this device's inbox.
    pub(crate) async fn join(&mut self) {
        let entry = match self.client.next_delivery().await.unwrap() {
            Delivery::Inbox(e) => e,
            Delivery::Group(e) => panic!("expected a Welcome, got group entry {}", e.seq),
        };
        self.client.ack(Stream::Inbox, entry.seq).await.unwrap();
        let message = MlsMessageIn::tls_deserialize_exact(entry.payload.as_bytes()).unwrap();
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            panic!("not a Welcome");
        };
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .build();
        let staged =
            StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None).unwrap();
        self.mls = Some(staged.into_group(&self.provider).unwrap());
    }

    /// Reads the next entry of `group` another device posted and processes it as a commit
    /// (merging it).
    pub(crate) async fn apply_next_commit(&mut self, group: GroupId) -> Seq {
        let me = self.keys.id();
        let entry = loop {
            match self.client.next_delivery().await.unwrap() {
                Delivery::Group(e) if e.group == group && e.sender != me => break e,
                _ => {}
            }
        };
        let message = MlsMessageIn::tls_deserialize_exact(entry.payload.as_bytes()).unwrap();
        let provider = &self.provider;
        let mls = self.mls.as_mut().unwrap();
        let processed = mls
            .process_message(provider, message.try_into_protocol_message().unwrap())
            .unwrap();
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            panic!("entry {} is not a commit", entry.seq);
        };
        mls.merge_staged_commit(provider, *staged).unwrap();
        self.client
            .ack(Stream::Group(group), entry.seq)
            .await
            .unwrap();
        entry.seq
    }

    /// The group's log as this member fetches it: (seq, payload) of every entry.
    async fn log(&mut self, group: GroupId) -> Vec<(Seq, Vec<u8>)> {
        let body = Request::Fetch {
            group,
            after: Seq(0),
            limit: 100,
        };
        match self.client.call(body).await.unwrap() {
            Reply::Entries { entries } => entries
                .0
                .into_iter()
                .map(|e| (e.seq, e.payload.0))
                .collect(),
            other => panic!("expected Entries: {other:?}"),
        }
    }
}

/// Alice creates a group on the relay and adds bob with a real commit; both hold the group
/// at epoch 1.
async fn alice_and_bob(relay: &TestRelay) -> (Member, Member, GroupId) {
    let mut alice = Member::new(relay.connect().await.unwrap(), "alice").await;
    let mut bob = Member::new(relay.connect().await.unwrap(), "bob").await;
    let group = alice.create().await;
    let kp = bob.key_package();
    let add = alice.add(&[kp]);
    alice
        .post(group, &add, &[bob.keys.id()], &[])
        .await
        .unwrap();
    alice.merge();
    bob.join().await;
    (alice, bob, group)
}

pub(crate) fn refused(result: Result<Seq, ClientError>) -> ErrorCode {
    match result {
        Err(e) => e.code().unwrap_or_else(|| panic!("not a refusal: {e}")),
        Ok(seq) => panic!("accepted at {seq}"),
    }
}

/// Garbage posted as a commit at the current epoch is refused `InvalidCommit`, never enters
/// the log, and the group goes on: a real commit at that epoch is then accepted, and the
/// other member processes it.
#[tokio::test]
async fn a_garbage_commit_is_refused_and_the_group_keeps_working() {
    let relay = validating_relay().await;
    let (mut alice, mut bob, group) = alice_and_bob(&relay).await;
    let before = alice.log(group).await;
    for garbage in [vec![0u8; 64], b"not an MLS message".to_vec(), Vec::new()] {
        let garbage = Commit {
            payload: garbage,
            welcome: None,
            group_info: b"not a group info".to_vec(),
            epoch: Epoch(1),
        };
        assert_eq!(
            refused(alice.post(group, &garbage, &[], &[]).await),
            ErrorCode::InvalidCommit
        );
    }
    // A real commit's bytes with one byte of its body flipped: the signature fails.
    let mut update = alice.update();
    let flipped = update.payload.len() / 2;
    update.payload[flipped] ^= 0x01;
    assert_eq!(
        refused(alice.post(group, &update, &[], &[]).await),
        ErrorCode::InvalidCommit
    );
    alice.discard();
    assert_eq!(alice.log(group).await, before, "nothing entered the log");
    let update = alice.update();
    let seq = alice.post(group, &update, &[], &[]).await.unwrap();
    alice.merge();
    assert_eq!(bob.apply_next_commit(group).await, seq);
    assert_eq!(
        alice.mls().epoch_authenticator().as_slice(),
        bob.mls().epoch_authenticator().as_slice()
    );
}

/// A real commit whose `added` or `removed` list disagrees with its proposals is refused
/// `InvalidCommit` (and the same commit with the true lists is then accepted).
#[tokio::test]
async fn a_commit_whose_lists_disagree_with_its_content_is_refused() {
    let relay = validating_relay().await;
    let (mut alice, mut bob, group) = alice_and_bob(&relay).await;
    let mut carol = Member::new(relay.connect().await.unwrap(), "carol").await;
    let mut dave = Member::new(relay.connect().await.unwrap(), "dave").await;
    let (bob_id, carol_id, dave_id) = (bob.keys.id(), carol.keys.id(), dave.keys.id());

    let add = alice.add(&[carol.key_package()]);
    for (added, removed) in [
        (vec![dave_id], vec![]),
        (vec![carol_id, dave_id], vec![]),
        (vec![carol_id], vec![bob_id]),
    ] {
        assert_eq!(
            refused(alice.post(group, &add, &added, &removed).await),
            ErrorCode::InvalidCommit,
            "added {added:?} removed {removed:?}"
        );
    }
    alice.post(group, &add, &[carol_id], &[]).await.unwrap();
    alice.merge();
    carol.join().await;
    bob.apply_next_commit(group).await;

    // Bob's leaf is 1: a removal of bob claimed as a removal of carol, or of nobody.
    let remove = alice.remove(&[1]);
    for removed in [vec![carol_id], vec![], vec![bob_id, carol_id]] {
        assert_eq!(
            refused(alice.post(group, &remove, &[], &removed).await),
            ErrorCode::InvalidCommit,
            "removed {removed:?}"
        );
    }
    // Claiming an add the commit does not make: no Welcome for dave.
    assert_eq!(
        refused(alice.post(group, &remove, &[dave_id], &[bob_id]).await),
        ErrorCode::InvalidCommit
    );
    let seq = alice.post(group, &remove, &[], &[bob_id]).await.unwrap();
    alice.merge();
    assert_eq!(carol.apply_next_commit(group).await, seq);
    // Dave was never added: the relay says so.
    let fetch = Request::Fetch {
        group,
        after: Seq(0),
        limit: 10,
    };
    assert_eq!(
        dave.client.call(fetch).await.unwrap_err().code(),
        Some(ErrorCode::NotMember)
    );
}

/// Commits not made by the posting member's own leaf are refused `InvalidCommit`: another
/// member's valid commit reposted by bob, and a commit for the group's id and epoch signed
/// by a key that is not in the group (made in a look-alike group). Then a real commit works.
#[tokio::test]
async fn a_non_member_or_forged_commit_is_refused() {
    let relay = validating_relay().await;
    let (mut alice, mut bob, group) = alice_and_bob(&relay).await;

    // Alice's real commit, posted by bob.
    let update = alice.update();
    assert_eq!(
        refused(bob.post(group, &update, &[], &[]).await),
        ErrorCode::InvalidCommit
    );
    alice.discard();

    // Eve (registered, not a member) builds a look-alike group with the same id, moves it
    // to epoch 1 and commits there, claiming leaf 0; bob posts her commit.
    let mut eve = Member::new(relay.connect().await.unwrap(), "eve").await;
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(SUITE)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .build();
    let fake = MlsGroup::new_with_group_id(
        &eve.provider,
        &eve.signer,
        &config,
        MlsGroupId::from_slice(&group.0),
        eve.credential(),
    )
    .unwrap();
    eve.mls = Some(fake);
    let first = eve.update();
    assert_eq!(first.epoch, Epoch(0));
    eve.merge();
    let forged = eve.update();
    assert_eq!(forged.epoch, Epoch(1));
    assert_eq!(
        refused(bob.post(group, &forged, &[], &[]).await),
        ErrorCode::InvalidCommit
    );
    // Eve herself is no member: the relay refuses her before any MLS work.
    assert_eq!(
        refused(eve.post(group, &forged, &[], &[]).await),
        ErrorCode::NotMember
    );

    // A commit sent as PrivateMessage (a client without the plaintext handshake policy).
    alice.set_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY);
    let private = alice.update();
    assert_eq!(
        refused(alice.post(group, &private, &[], &[]).await),
        ErrorCode::InvalidCommit
    );
    alice.discard();
    alice.set_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY);

    let update = alice.update();
    let seq = alice.post(group, &update, &[], &[]).await.unwrap();
    alice.merge();
    assert_eq!(bob.apply_next_commit(group).await, seq);
}

/// A GroupInfo that is not the one of the commit's new epoch (another commit's) is refused
/// `InvalidCommit`, and so is a CreateGroup whose state does not hold the creating device,
/// is of another group id, or is missing.
#[tokio::test]
async fn a_wrong_group_info_is_refused() {
    let relay = validating_relay().await;
    let (mut alice, mut bob, group) = alice_and_bob(&relay).await;
    let old = alice.update();
    alice.discard();
    let mut update = alice.update();
    update.group_info = old.group_info;
    assert_eq!(
        refused(alice.post(group, &update, &[], &[]).await),
        ErrorCode::InvalidCommit
    );
    alice.discard();
    let update = alice.update();
    let seq = alice.post(group, &update, &[], &[]).await.unwrap();
    alice.merge();
    assert_eq!(bob.apply_next_commit(group).await, seq);

    // Mallory makes a group only locally; bob asks the relay to create it with her state
    // (whose only leaf is hers), then under another id; and with no state at all.
    let mut mallory = Member::new(relay.connect().await.unwrap(), "mallory").await;
    let (id, group_info, tree) = mallory.make_group();
    let not_his = bob
        .client
        .create_group_with(id, group_info.clone(), tree.clone())
        .await;
    assert_eq!(not_his.unwrap_err().code(), Some(ErrorCode::InvalidCommit));
    let other_id = cove_test_utils::random_group_id();
    let wrong_id = mallory
        .client
        .create_group_with(other_id, group_info.clone(), tree.clone())
        .await;
    assert_eq!(wrong_id.unwrap_err().code(), Some(ErrorCode::InvalidCommit));
    let no_state = mallory.client.create_group(id).await;
    assert_eq!(no_state.unwrap_err().code(), Some(ErrorCode::InvalidCommit));
    // Her own state under its own id is accepted.
    mallory
        .client
        .create_group_with(id, group_info, tree)
        .await
        .unwrap();
}

/// After a restart on the same data directory (SQLite), the relay rebuilds the group's
/// public state from what it stored: it still refuses a garbage commit and a commit with a
/// lying list, and accepts the next real one.
#[tokio::test]
async fn validation_survives_a_relay_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = || async {
        let mut config = RelayConfig::new(([127, 0, 0, 1], 0).into(), dir.path());
        config.store = StoreKind::Sqlite;
        config.limits = cove_test_utils::test_limits();
        let handle = Relay::start(config).await.unwrap();
        let tls = client_tls_config(handle.cert_der()).unwrap();
        (handle, tls)
    };
    let (handle, tls) = start().await;
    let url = ws_url(handle.local_addr());
    let connect = || TestClient::connect(&url, tls.clone());
    let mut alice = Member::new(connect().await.unwrap(), "alice").await;
    let mut bob = Member::new(connect().await.unwrap(), "bob").await;
    let group = alice.create().await;
    let add = alice.add(&[bob.key_package()]);
    alice
        .post(group, &add, &[bob.keys.id()], &[])
        .await
        .unwrap();
    alice.merge();
    bob.join().await;
    let update = alice.update();
    alice.post(group, &update, &[], &[]).await.unwrap();
    alice.merge();
    bob.apply_next_commit(group).await;
    handle.shutdown().await;

    let (handle, tls) = start().await;
    let url = ws_url(handle.local_addr());
    for m in [&mut alice, &mut bob] {
        m.client = TestClient::connect(&url, tls.clone()).await.unwrap();
        m.client.authenticate(&m.keys).await.unwrap();
    }
    let garbage = Commit {
        payload: vec![7; 100],
        welcome: None,
        group_info: vec![7; 10],
        epoch: Epoch(2),
    };
    assert_eq!(
        refused(alice.post(group, &garbage, &[], &[]).await),
        ErrorCode::InvalidCommit
    );
    let remove = alice.remove(&[1]);
    assert_eq!(
        refused(alice.post(group, &remove, &[], &[]).await),
        ErrorCode::InvalidCommit
    );
    alice.discard();
    let update = alice.update();
    let seq = alice.post(group, &update, &[], &[]).await.unwrap();
    alice.merge();
    assert_eq!(bob.apply_next_commit(group).await, seq);
    handle.shutdown().await;
}

/// The relay's store holds no group secret: after a group's life (creation, an add, a key
/// update, application messages), neither the SQLite files nor the public state the store
/// returns contain the members' epoch authenticator, an exported secret of any epoch, or
/// the plaintext of an application message, while they do contain the public state (the
/// search finds what is there).
#[tokio::test]
async fn the_relay_store_holds_no_secret() {
    let relay = TestRelay::configured(|c| {
        c.validate_handshakes = true;
        c.store = StoreKind::Sqlite;
    })
    .await;
    let (mut alice, mut bob, group) = alice_and_bob(&relay).await;
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    fn record(m: &Member, secrets: &mut Vec<Vec<u8>>) {
        let mls = m.mls.as_ref().unwrap();
        secrets.push(mls.epoch_authenticator().as_slice().to_vec());
        secrets.push(
            mls.export_secret(m.provider.crypto(), "cove test", b"", 32)
                .unwrap(),
        );
    }
    record(&alice, &mut secrets);
    let update = alice.update();
    let seq = alice.post(group, &update, &[], &[]).await.unwrap();
    alice.merge();
    assert_eq!(bob.apply_next_commit(group).await, seq);
    record(&alice, &mut secrets);
    record(&bob, &mut secrets);
    let plaintext = b"the plaintext of a secret application message".to_vec();
    let provider = &alice.provider;
    let message = alice
        .mls
        .as_mut()
        .unwrap()
        .create_message(provider, &alice.signer, &plaintext)
        .unwrap()
        .to_bytes()
        .unwrap();
    alice
        .client
        .post_app(group, Epoch(2), &message)
        .await
        .unwrap();
    secrets.push(plaintext);

    // Everything the store holds, on disk (the WAL included).
    let mut disk = Vec::new();
    for entry in std::fs::read_dir(relay.data_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            disk.extend(std::fs::read(&path).unwrap());
        }
    }
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    // The search can find: the tree's bytes, which the store keeps, are on disk.
    let tree = alice
        .mls()
        .export_ratchet_tree()
        .tls_serialize_detached()
        .unwrap();
    assert!(
        contains(&disk, &tree[..64]),
        "the public state is not where it was looked for"
    );
    for (i, secret) in secrets.iter().enumerate() {
        assert!(
            !contains(&disk, secret),
            "secret {i} is in the relay's files"
        );
    }
    let _ = bob;
}

impl Member {
    /// Fetches the group's public state from the relay: (GroupInfo, tree).
    async fn fetch_state(&mut self, group: GroupId) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        match self.client.call(Request::FetchGroupState { group }).await? {
            Reply::GroupState {
                group: g,
                group_info,
                tree,
            } if g == group => Ok((group_info.0, tree.0)),
            other => panic!("expected GroupState: {other:?}"),
        }
    }

    /// Joins `group` by an external commit from the relay's state, signing with `signer`
    /// (this device's key, or another to forge), with `provider`'s storage; returns the
    /// group (already merged, as openmls does) and the commit to post.
    fn external_commit(
        &self,
        provider: &OpenMlsRustCrypto,
        signer: &SignatureKeyPair,
        state: &(Vec<u8>, Vec<u8>),
    ) -> (MlsGroup, Commit) {
        let message = MlsMessageIn::tls_deserialize_exact(&state.0).unwrap();
        let MlsMessageBodyIn::GroupInfo(vgi) = message.extract() else {
            panic!("not a GroupInfo");
        };
        let epoch = Epoch(vgi.epoch().as_u64());
        let tree = RatchetTreeIn::tls_deserialize_exact(&state.1).unwrap();
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .build();
        let mut credential = self.credential();
        credential.signature_key = signer.public().to_vec().into();
        let (mls, bundle) = MlsGroup::external_commit_builder()
            .with_config(config)
            .with_ratchet_tree(tree)
            .build_group(provider, vgi, credential)
            .unwrap()
            .load_psks(provider.storage())
            .unwrap()
            .create_group_info(true)
            .build(provider.rand(), provider.crypto(), signer, |_| true)
            .unwrap()
            .finalize(provider)
            .unwrap();
        let gi: GroupInfo = bundle.group_info().cloned().unwrap();
        let commit = Commit {
            payload: bundle.commit().to_bytes().unwrap(),
            welcome: None,
            group_info: MlsMessageOut::from(gi).to_bytes().unwrap(),
            epoch,
        };
        (mls, commit)
    }

    /// Encrypts `text` and posts it as an application message.
    async fn send_text(&mut self, group: GroupId, text: &[u8]) -> Seq {
        let provider = &self.provider;
        let mls = self.mls.as_mut().unwrap();
        let epoch = Epoch(mls.epoch().as_u64());
        let message = mls
            .create_message(provider, &self.signer, text)
            .unwrap()
            .to_bytes()
            .unwrap();
        self.client.post_app(group, epoch, &message).await.unwrap()
    }

    /// Reads this group's entries up to the next application message another device sent
    /// (commits before it, e.g. ones this device no longer holds the epoch of, are passed
    /// over) and decrypts it.
    async fn receive_text(&mut self, group: GroupId) -> Vec<u8> {
        let me = self.keys.id();
        let (entry, message) = loop {
            let Delivery::Group(e) = self.client.next_delivery().await.unwrap() else {
                continue;
            };
            if e.group != group || e.sender == me {
                continue;
            }
            let message = MlsMessageIn::tls_deserialize_exact(e.payload.as_bytes())
                .unwrap()
                .try_into_protocol_message()
                .unwrap();
            if message.content_type() == ContentType::Application {
                break (e, message);
            }
        };
        let provider = &self.provider;
        let mls = self.mls.as_mut().unwrap();
        let processed = mls.process_message(provider, message).unwrap();
        let ProcessedMessageContent::ApplicationMessage(m) = processed.into_content() else {
            panic!("entry {} is not an application message", entry.seq);
        };
        m.into_bytes()
    }
}

/// A member that lost its group state (so it cannot process the commits in the log) asks
/// the relay for the group's public state and rejoins by an external commit: the relay takes
/// it (the joiner is the posting member's device with its registered key, removing only its
/// own old leaf), the other member processes it, both agree on the epoch, and messages
/// flow both ways. A non-member cannot read the state; an external commit whose joiner
/// leaf has another key than the device's, or posted by another member, is refused
/// `InvalidCommit`.
#[tokio::test]
async fn a_member_rejoins_by_an_external_commit_from_the_relays_state() {
    let relay = validating_relay().await;
    let (mut alice, mut bob, group) = alice_and_bob(&relay).await;
    let mut eve = Member::new(relay.connect().await.unwrap(), "eve").await;
    // Alice moves the group on; bob has lost his state and cannot follow.
    let update = alice.update();
    alice.post(group, &update, &[], &[]).await.unwrap();
    alice.merge();
    let provider = &bob.provider;
    bob.mls.take().unwrap().delete(provider.storage()).unwrap();

    assert_eq!(
        eve.fetch_state(group).await.unwrap_err().code(),
        Some(ErrorCode::NotMember)
    );
    let state = bob.fetch_state(group).await.unwrap();

    // Another signature key under bob's credential: not his device's key.
    let forged_signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let (_, forged) = bob.external_commit(&OpenMlsRustCrypto::default(), &forged_signer, &state);
    assert_eq!(
        refused(bob.post(group, &forged, &[], &[]).await),
        ErrorCode::InvalidCommit
    );
    // Bob's real rejoin, posted by alice (not the joiner) or with a list: refused.
    let (mls, rejoin) = bob.external_commit(&bob.provider, &bob.signer, &state);
    assert_eq!(rejoin.epoch, Epoch(2));
    assert_eq!(
        refused(alice.post(group, &rejoin, &[], &[]).await),
        ErrorCode::InvalidCommit
    );
    assert_eq!(
        refused(bob.post(group, &rejoin, &[], &[bob.keys.id()]).await),
        ErrorCode::InvalidCommit
    );
    let seq = bob.post(group, &rejoin, &[], &[]).await.unwrap();
    bob.mls = Some(mls);
    assert_eq!(alice.apply_next_commit(group).await, seq);
    assert_eq!(
        alice.mls().epoch_authenticator().as_slice(),
        bob.mls().epoch_authenticator().as_slice()
    );
    assert_eq!(alice.mls().members().count(), 2, "bob's old leaf is gone");

    alice.send_text(group, b"welcome back").await;
    assert_eq!(bob.receive_text(group).await, b"welcome back");
    bob.send_text(group, b"thanks").await;
    assert_eq!(alice.receive_text(group).await, b"thanks");
}

/// Alice's second device `laptop`: listed in alice's signed list (published by her first
/// device) and registered, on its own connection, as an MLS member-to-be without a group.
async fn alices_new_device(relay: &TestRelay, alice: &mut Member) -> Member {
    let mut laptop = DeviceKeys::generate("alice");
    crate::device_lists::publish_signed_list(
        &mut alice.client,
        &alice.keys,
        &[laptop.public_key()],
    )
    .await;
    let mut client = relay.connect().await.unwrap();
    client
        .register_device(&mut laptop, &alice.keys)
        .await
        .unwrap();
    Member::with(client, laptop)
}

/// The group ids `UserGroups` answers to `member`.
async fn user_groups(member: &mut Member) -> Vec<GroupId> {
    match member.client.call(Request::UserGroups).await.unwrap() {
        Reply::UserGroups { groups } => groups.0,
        other => panic!("expected UserGroups: {other:?}"),
    }
}

/// A new device of a user who has a member device in a group (alice's laptop) learns the
/// group from `UserGroups` (another user's device does not), fetches its public state
/// (another user's device is `NotMember`), and joins by an external commit whose `added`
/// is exactly itself: the relay makes it a member at that commit (`ListGroups`), both
/// members process the commit into the same epoch, and messages go both ways.
#[tokio::test]
async fn a_users_new_device_joins_its_groups_by_external_commits() {
    let relay = validating_relay().await;
    let (mut alice, mut bob, group) = alice_and_bob(&relay).await;
    let mut eve = Member::new(relay.connect().await.unwrap(), "eve").await;
    let mut laptop = alices_new_device(&relay, &mut alice).await;

    assert_eq!(user_groups(&mut laptop).await, vec![group]);
    assert_eq!(user_groups(&mut bob).await, vec![group]);
    assert_eq!(user_groups(&mut eve).await, Vec::<GroupId>::new());
    assert_eq!(
        eve.fetch_state(group).await.unwrap_err().code(),
        Some(ErrorCode::NotMember)
    );
    let state = laptop.fetch_state(group).await.unwrap();
    let (mls, join) = laptop.external_commit(&laptop.provider, &laptop.signer, &state);
    assert_eq!(join.epoch, Epoch(1));
    let seq = laptop
        .post(group, &join, &[laptop.keys.id()], &[])
        .await
        .unwrap();
    laptop.mls = Some(mls);
    match laptop.client.call(Request::ListGroups).await.unwrap() {
        Reply::Groups { groups } => {
            assert_eq!(groups.0.len(), 1);
            assert_eq!(groups.0[0].group, group);
            assert_eq!(groups.0[0].epoch, Epoch(2));
        }
        other => panic!("expected Groups: {other:?}"),
    }
    assert_eq!(alice.apply_next_commit(group).await, seq);
    assert_eq!(bob.apply_next_commit(group).await, seq);
    assert_eq!(bob.mls().members().count(), 3, "alice, bob, alice's laptop");
    assert_eq!(
        bob.mls().epoch_authenticator().as_slice(),
        laptop.mls().epoch_authenticator().as_slice()
    );

    bob.send_text(group, b"hello laptop").await;
    assert_eq!(laptop.receive_text(group).await, b"hello laptop");
    laptop.send_text(group, b"hello bob").await;
    assert_eq!(bob.receive_text(group).await, b"hello bob");
}

/// External joins that are not a listed user's new device joining are refused and change
/// nothing: by a device of a user with no member device in the group (`InvalidCommit`), with
/// a leaf whose signature key is not the posting device's registered key (`InvalidCommit`),
/// posted without naming the joiner in `added` (`NotMember`: a non-member's commit that is
/// no join), or posted by another device (`InvalidCommit`). The real join is then accepted
/// at the same epoch.
#[tokio::test]
async fn external_joins_of_foreign_users_or_foreign_keys_are_refused() {
    let relay = validating_relay().await;
    let (mut alice, mut bob, group) = alice_and_bob(&relay).await;
    let mut eve = Member::new(relay.connect().await.unwrap(), "eve").await;
    let mut laptop = alices_new_device(&relay, &mut alice).await;
    let state = laptop.fetch_state(group).await.unwrap();

    // Eve builds an external commit from the state (she cannot fetch it herself).
    let (_, eves) = eve.external_commit(&eve.provider, &eve.signer, &state);
    assert_eq!(
        refused(eve.post(group, &eves, &[eve.keys.id()], &[]).await),
        ErrorCode::InvalidCommit
    );
    // The laptop's credential with another signature key.
    let forged_signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let (_, forged) = laptop.external_commit(&OpenMlsRustCrypto::default(), &forged_signer, &state);
    assert_eq!(
        refused(laptop.post(group, &forged, &[laptop.keys.id()], &[]).await),
        ErrorCode::InvalidCommit
    );
    // The real join without itself in `added`, or posted by another device.
    let (mls, join) = laptop.external_commit(&laptop.provider, &laptop.signer, &state);
    assert_eq!(
        refused(laptop.post(group, &join, &[], &[]).await),
        ErrorCode::NotMember
    );
    assert_eq!(
        refused(alice.post(group, &join, &[laptop.keys.id()], &[]).await),
        ErrorCode::InvalidCommit,
        "another device cannot post the laptop's join"
    );
    assert_eq!(user_groups(&mut eve).await, Vec::<GroupId>::new());

    let seq = laptop
        .post(group, &join, &[laptop.keys.id()], &[])
        .await
        .unwrap();
    laptop.mls = Some(mls);
    assert_eq!(bob.apply_next_commit(group).await, seq);
    assert_eq!(
        bob.mls().epoch().as_u64(),
        2,
        "only the real join moved the group"
    );
}
