//! Group roles at the relay (issue 13 item 2): with handshake validation on, the relay reads
//! a group's admins from the group context of the epoch a commit starts from, and refuses
//! (`InvalidCommit`) a commit by a member whose user is not an admin that adds or removes
//! another user's devices or changes the roles; an admin's commits pass, and a member that
//! is no admin may remove a device that left the group at the relay (`LeaveGroup`).

use cove_wire::roles::{MAX_ADMINS, ROLES_EXTENSION, encode_roles};
use cove_wire::{BoundedVec, ErrorCode, GroupId, Reply, Request, UserName};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{
    Capabilities, Ciphersuite, Extension, ExtensionType, Extensions, GroupContext,
    GroupId as MlsGroupId, KeyPackage, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup,
    MlsGroupCreateConfig, MlsMessageOut, OpenMlsProvider as _, RequiredCapabilitiesExtension,
    UnknownExtension,
};

use super::validation::{Commit, Member, refused, validating_relay};

const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// The leaf capabilities of a Cove device (the roles extension type listed).
fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&[SUITE]),
        Some(&[ExtensionType::Unknown(ROLES_EXTENSION)]),
        None,
        None,
    )
}

/// Group-context extensions whose roles extension holds `data`.
fn roles_data(data: Vec<u8>) -> Extensions<GroupContext> {
    let required =
        RequiredCapabilitiesExtension::new(&[ExtensionType::Unknown(ROLES_EXTENSION)], &[], &[]);
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(required),
        Extension::Unknown(ROLES_EXTENSION, UnknownExtension(data)),
    ])
    .unwrap()
}

/// Group-context extensions naming `admins`.
fn roles(admins: &[&str]) -> Extensions<GroupContext> {
    let admins: Vec<UserName> = admins.iter().map(|a| UserName::new(*a).unwrap()).collect();
    roles_data(encode_roles(&admins).unwrap())
}

/// A KeyPackage of `m` whose leaf lists the roles extension type.
fn key_package(m: &Member) -> KeyPackage {
    KeyPackage::builder()
        .leaf_node_capabilities(capabilities())
        .build(SUITE, &m.provider, &m.signer, m.credential())
        .unwrap()
        .key_package()
        .clone()
}

/// `m` makes a group whose only admin is its user and creates it on the relay.
async fn create_with_roles(m: &mut Member) -> GroupId {
    let group = cove_test_utils::random_group_id();
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(SUITE)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .capabilities(capabilities())
        .with_group_context_extensions(roles(&[m.keys.user.as_str()]))
        .build();
    let mls = MlsGroup::new_with_group_id(
        &m.provider,
        &m.signer,
        &config,
        MlsGroupId::from_slice(&group.0),
        m.credential(),
    )
    .unwrap();
    let group_info = mls
        .export_group_info(m.provider.crypto(), &m.signer, false)
        .unwrap()
        .to_bytes()
        .unwrap();
    let tree = mls.export_ratchet_tree().tls_serialize_detached().unwrap();
    m.mls = Some(mls);
    m.client
        .create_group_with(group, group_info, tree)
        .await
        .unwrap();
    group
}

/// A commit of `m` setting the group-context extensions to `extensions`.
fn set_roles(m: &mut Member, extensions: Extensions<GroupContext>) -> Commit {
    let mls = m.mls.as_mut().unwrap();
    let epoch = cove_wire::Epoch(mls.epoch().as_u64());
    let (commit, _, gi) = mls
        .update_group_context_extensions(&m.provider, extensions, &m.signer)
        .unwrap();
    Commit {
        payload: commit.to_bytes().unwrap(),
        welcome: None,
        group_info: MlsMessageOut::from(gi.unwrap()).to_bytes().unwrap(),
        epoch,
    }
}

/// A commit of `m` adding `key_packages`.
fn add(m: &mut Member, key_packages: &[KeyPackage]) -> Commit {
    let mls = m.mls.as_mut().unwrap();
    let epoch = cove_wire::Epoch(mls.epoch().as_u64());
    let (commit, welcome, gi) = mls
        .add_members(&m.provider, &m.signer, key_packages)
        .unwrap();
    Commit {
        payload: commit.to_bytes().unwrap(),
        welcome: Some(welcome.to_bytes().unwrap()),
        group_info: MlsMessageOut::from(gi.unwrap()).to_bytes().unwrap(),
        epoch,
    }
}

/// alice (the only admin) makes a group and adds bob and carol (leaves 1 and 2); all three
/// hold it at epoch 1.
async fn trio(relay: &cove_test_utils::TestRelay) -> (Member, Member, Member, GroupId) {
    let mut alice = Member::new(relay.connect().await.unwrap(), "alice").await;
    let mut bob = Member::new(relay.connect().await.unwrap(), "bob").await;
    let mut carol = Member::new(relay.connect().await.unwrap(), "carol").await;
    let group = create_with_roles(&mut alice).await;
    let commit = add(&mut alice, &[key_package(&bob), key_package(&carol)]);
    alice
        .post(group, &commit, &[bob.keys.id(), carol.keys.id()], &[])
        .await
        .expect("the admin's add passes");
    alice.merge();
    bob.join().await;
    carol.join().await;
    (alice, bob, carol, group)
}

/// A member that is no admin may not add another user's device, remove another user's
/// current device, or change the roles (each `InvalidCommit`, nothing enters the log); an
/// admin's roles change passes, after which the promoted member's add passes.
#[tokio::test]
async fn a_non_admins_add_remove_and_roles_commits_are_invalid_and_an_admins_pass() {
    let relay = validating_relay().await;
    let (mut alice, mut bob, carol, group) = trio(&relay).await;
    let mut dave = Member::new(relay.connect().await.unwrap(), "dave").await;

    let commit = add(&mut bob, &[key_package(&dave)]);
    let result = bob.post(group, &commit, &[dave.keys.id()], &[]).await;
    assert_eq!(refused(result), ErrorCode::InvalidCommit, "bob adds dave");
    bob.discard();

    let commit = bob.remove(&[2]);
    let result = bob.post(group, &commit, &[], &[carol.keys.id()]).await;
    assert_eq!(
        refused(result),
        ErrorCode::InvalidCommit,
        "bob removes carol"
    );
    bob.discard();

    let commit = set_roles(&mut bob, roles(&["alice", "bob"]));
    let result = bob.post(group, &commit, &[], &[]).await;
    assert_eq!(
        refused(result),
        ErrorCode::InvalidCommit,
        "bob makes himself admin"
    );
    bob.discard();

    // alice's roles with no admin, or too many, are refused too.
    let empty = cove_wire::encode(&BoundedVec(Vec::<UserName>::new())).unwrap();
    let commit = set_roles(&mut alice, roles_data(empty));
    let result = alice.post(group, &commit, &[], &[]).await;
    assert_eq!(refused(result), ErrorCode::InvalidCommit, "no admin left");
    alice.discard();
    let many: Vec<UserName> = (0..=MAX_ADMINS)
        .map(|i| UserName::new(format!("u{i}")).unwrap())
        .collect();
    let commit = set_roles(
        &mut alice,
        roles_data(cove_wire::encode(&BoundedVec(many)).unwrap()),
    );
    let result = alice.post(group, &commit, &[], &[]).await;
    assert_eq!(refused(result), ErrorCode::InvalidCommit, "too many admins");
    alice.discard();

    // The admin promotes bob: accepted, and bob's add now passes.
    let commit = set_roles(&mut alice, roles(&["alice", "bob"]));
    alice
        .post(group, &commit, &[], &[])
        .await
        .expect("the admin's roles change passes");
    alice.merge();
    bob.apply_next_commit(group).await;
    let commit = add(&mut bob, &[key_package(&dave)]);
    bob.post(group, &commit, &[dave.keys.id()], &[])
        .await
        .expect("the promoted member's add passes");
    bob.merge();
    dave.join().await;
}

/// A member that is no admin may commit the removal of a device that left the group at the
/// relay (`LeaveGroup`: no longer a member here), but not of one that is still a member.
#[tokio::test]
async fn a_non_admins_removal_of_a_device_that_left_passes() {
    let relay = validating_relay().await;
    let (mut alice, mut bob, mut carol, group) = trio(&relay).await;

    let commit = bob.remove(&[2]);
    let result = bob.post(group, &commit, &[], &[carol.keys.id()]).await;
    assert_eq!(
        refused(result),
        ErrorCode::InvalidCommit,
        "carol is a member"
    );
    bob.discard();

    match carol.client.call(Request::LeaveGroup { group }).await {
        Ok(Reply::Left) => {}
        other => panic!("expected Left: {other:?}"),
    }
    let commit = bob.remove(&[2]);
    bob.post(group, &commit, &[], &[carol.keys.id()])
        .await
        .expect("removing a device that left passes");
    bob.merge();
    alice.apply_next_commit(group).await;
    assert_eq!(
        alice.mls.as_ref().unwrap().members().count(),
        2,
        "alice merged carol's removal"
    );
}
