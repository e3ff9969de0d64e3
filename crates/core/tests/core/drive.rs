//! Issue 14, Cove Drive groups in the core: a drive group is made only by
//! `create_drive_group`, its log carries tree operations (`Content::Drive`) that
//! `drive_ops` reads back in log order with their authors on every member, they never show
//! in the chat history, search or unread counts, and chat commands, renames and timers do
//! not apply to it.

use cove_core::cove_store::MemoryStore;
use cove_core::drive::{DriveOp, ROOT};
use cove_core::error::{InvalidArgument, Warning};
use cove_core::{CommandError, Content, Event};
use cove_wire::GroupId;

use super::relay::Net;
use super::{device, op_result, user};

fn post(net: &mut Net<MemoryStore>, slot: usize, group: GroupId, op: DriveOp) {
    let now = net.now_ms;
    let id = net
        .client(slot)
        .send_content(now, group, Content::Drive(Box::new(op)))
        .unwrap();
    op_result(net, slot, id).unwrap();
    net.run();
}

fn mkdir(id: u8, name: &str) -> DriveOp {
    DriveOp::Mkdir {
        id: [id; 16],
        parent: ROOT,
        name: name.into(),
    }
}

/// A drive group of alice shared with bob.
fn drive_of_alice_and_bob(net: &mut Net<MemoryStore>, alice: usize) -> GroupId {
    let now = net.now_ms;
    let op = net
        .client(alice)
        .create_drive_group(now, "drive/alice/0a0b")
        .unwrap();
    op_result(net, alice, op).unwrap();
    let op = net
        .client(alice)
        .add_users(now, "drive/alice/0a0b", &[user("bob")])
        .unwrap();
    op_result(net, alice, op).unwrap();
    net.run();
    net.client(alice).resolve("drive/alice/0a0b").unwrap()
}

/// Chat groups may not take a `drive/` name and drive groups must: both refused with their
/// own `InvalidArgument`, nothing created.
#[test]
fn drive_names_are_reserved_for_drive_groups() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let now = net.now_ms;
    assert!(matches!(
        net.client(alice).create_group(now, "drive/alice"),
        Err(CommandError::Invalid(InvalidArgument::ReservedName))
    ));
    assert!(matches!(
        net.client(alice).create_drive_group(now, "photos"),
        Err(CommandError::Invalid(InvalidArgument::NotADriveName))
    ));
    net.run();
    assert!(net.client(alice).groups().is_empty());
    let op = net.client(alice).create_group(now, "friends").unwrap();
    op_result(&mut net, alice, op).unwrap();
    assert!(matches!(
        net.client(alice).set_group_name("friends", "drive/x"),
        Err(CommandError::Invalid(InvalidArgument::ReservedName))
    ));
    let op = net
        .client(alice)
        .create_drive_group(now, "drive/alice")
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    let drive = net.client(alice).resolve("drive/alice").unwrap();
    assert!(net.client(alice).is_drive_group(&drive));
    let friends = net.client(alice).resolve("friends").unwrap();
    assert!(!net.client(alice).is_drive_group(&friends));
}

/// Operations posted by both members come back from `drive_ops` on both, in the same log
/// order with their authors (own ones included once stored); `after` skips what was read.
/// None of them is in the history, a search or the unread count.
#[test]
fn drive_ops_are_read_back_in_log_order_and_stay_out_of_the_chat() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let drive = drive_of_alice_and_bob(&mut net, alice);
    let init = DriveOp::Init {
        name: "Photos".into(),
        owner: user("alice"),
    };
    post(&mut net, alice, drive, init.clone());
    post(&mut net, bob, drive, mkdir(1, "secretfolder"));
    post(&mut net, alice, drive, mkdir(2, "other"));

    let on_alice = net.client(alice).drive_ops(&drive, 0).unwrap();
    let on_bob = net.client(bob).drive_ops(&drive, 0).unwrap();
    assert_eq!(on_alice, on_bob);
    let got: Vec<(String, DriveOp)> = on_alice
        .iter()
        .map(|(_, a, op)| (a.to_string(), op.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("alice".to_string(), init),
            ("bob".to_string(), mkdir(1, "secretfolder")),
            ("alice".to_string(), mkdir(2, "other")),
        ]
    );
    assert!(on_alice.windows(2).all(|w| w[0].0 < w[1].0));
    let after = net.client(bob).drive_ops(&drive, on_alice[0].0).unwrap();
    assert_eq!(after, on_alice[1..].to_vec());

    for slot in [alice, bob] {
        let c = net.client(slot);
        assert!(
            c.history(&drive.to_hex()).unwrap().is_empty(),
            "slot {slot}"
        );
        assert!(
            c.search("secretfolder", None, 10).unwrap().is_empty(),
            "slot {slot}"
        );
        let info = c.groups().into_iter().find(|g| g.id == drive).unwrap();
        assert_eq!(info.unread, 0, "slot {slot}");
    }
}

/// Chat commands on a drive group are refused with `InvalidArgument::DriveGroup`; a rename,
/// profile or timer a member forces through `send_content` is refused by the receiver with
/// `Warning::SettingRefused` ("a Cove Drive group") and changes neither the name nor the
/// timer.
#[test]
fn chat_commands_renames_and_timers_do_not_apply_to_drive_groups() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let drive = drive_of_alice_and_bob(&mut net, alice);
    let g = drive.to_hex();
    let now = net.now_ms;
    let refused = |r: Result<cove_core::OpId, CommandError>| {
        matches!(r, Err(CommandError::Invalid(InvalidArgument::DriveGroup)))
    };
    assert!(refused(net.client(alice).send_text(now, &g, "hi")));
    assert!(refused(
        net.client(alice)
            .set_group_profile(now, &g, "renamed", "", None)
    ));
    assert!(refused(net.client(alice).set_disappearing(
        now,
        &g,
        Some(60)
    )));
    assert!(matches!(
        net.client(alice).set_group_name(&g, "renamed"),
        Err(CommandError::Invalid(InvalidArgument::ReservedName))
    ));
    net.take_events(bob);
    for content in [
        Content::GroupInfo {
            name: "renamed".into(),
        },
        Content::GroupProfile {
            name: "renamed".into(),
            description: String::new(),
            avatar: None,
        },
        Content::Disappearing {
            timer_secs: Some(1),
        },
    ] {
        let now = net.now_ms;
        let op = net.client(alice).send_content(now, drive, content).unwrap();
        op_result(&mut net, alice, op).unwrap();
        net.run();
        let events = net.take_events(bob);
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::Warning(Warning::SettingRefused { why: "a Cove Drive group", from, .. })
                    if from.as_str() == "alice"
            )),
            "{events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::GroupChanged { .. })),
            "{events:?}"
        );
    }
    let info = net
        .client(bob)
        .groups()
        .into_iter()
        .find(|g| g.id == drive)
        .unwrap();
    assert_eq!(info.name, "drive/alice/0a0b");
    assert_eq!(info.disappearing_secs, None);
}
