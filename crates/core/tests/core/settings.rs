//! Issue 13, the group settings: read receipts (batched), typing (never stored), unread
//! counts, muting, disappearing messages and the group profile.

use cove_core::cove_store::{Kv, MemoryStore, Namespace, Store};
use cove_core::error::InvalidArgument;
use cove_core::{
    ChatMessage, CommandError, Content, Event, GroupChange, MessageId, RECEIPT_INTERVAL_MS,
    TYPING_FRESH_MS,
};
use cove_wire::GroupId;

use super::relay::Net;
use super::{device, group_of, op_result, user};

/// Every namespace of the key-value layer.
const NAMESPACES: [Namespace; 19] = [
    Namespace::Mls,
    Namespace::Identity,
    Namespace::Config,
    Namespace::Pinned,
    Namespace::Group,
    Namespace::Message,
    Namespace::Outbox,
    Namespace::Cursor,
    Namespace::Seen,
    Namespace::Pending,
    Namespace::UserIdentity,
    Namespace::IdentityPin,
    Namespace::DeviceList,
    Namespace::IdentityChange,
    Namespace::Account,
    Namespace::Backup,
    Namespace::Daemon,
    Namespace::GroupSettings,
    Namespace::Expiry,
];

/// Every key and value of `store`, namespace by namespace, except those listed in `except`.
fn snapshot(store: &MemoryStore, except: &[Namespace]) -> Vec<(Namespace, Vec<u8>, Vec<u8>)> {
    let mut all = Vec::new();
    for ns in NAMESPACES.iter().filter(|ns| !except.contains(ns)) {
        for (k, v) in store.kv_scan(*ns, &[]).unwrap() {
            all.push((*ns, k, v));
        }
    }
    all
}

/// Whether any key or value of any namespace of `store` contains `needle`.
fn store_holds(store: &MemoryStore, needle: &[u8]) -> bool {
    snapshot(store, &[])
        .iter()
        .any(|(_, k, v)| contains(k, needle) || contains(v, needle))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Sends `text` from `slot` to `group` and runs the net; returns the message's id.
pub(crate) fn say(
    net: &mut Net<MemoryStore>,
    slot: usize,
    group: GroupId,
    text: &str,
) -> MessageId {
    let now = net.now_ms;
    let op = net
        .client(slot)
        .send_text(now, &group.to_hex(), text)
        .unwrap();
    op_result(net, slot, op).unwrap();
    net.run();
    let history = net.client(slot).history(&group.to_hex()).unwrap();
    history.iter().rfind(|m| m.text == text).unwrap().id
}

fn history(net: &mut Net<MemoryStore>, slot: usize, group: GroupId) -> Vec<ChatMessage> {
    net.client(slot).history(&group.to_hex()).unwrap()
}

fn unread(net: &mut Net<MemoryStore>, slot: usize, group: GroupId) -> u32 {
    let groups = net.client(slot).groups();
    groups.iter().find(|g| g.id == group).unwrap().unread
}

/// The `(by, up_to)` of every read receipt event.
fn receipts(events: &[Event]) -> Vec<(String, MessageId)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ReadUpTo { by, up_to, .. } => Some((by.to_string(), *up_to)),
            _ => None,
        })
        .collect()
}

/// Unread counts only others' messages after the last read; `mark_read` zeroes them and
/// sends one receipt at once; later receipts within [`RECEIPT_INTERVAL_MS`] wait for the
/// timer and only the newest goes out; receivers report `ReadUpTo` and fill `read_by`;
/// receipts are never stored as history records.
#[test]
fn receipts_are_batched_fill_read_by_and_unread_counts_follow_them() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob", "carol"]);
    let m1 = say(&mut net, alice, group, "one");
    let m2 = say(&mut net, alice, group, "two");
    say(&mut net, bob, group, "bob's own");
    assert_eq!(unread(&mut net, bob, group), 2, "bob's own does not count");
    assert_eq!(unread(&mut net, carol, group), 3);
    assert_eq!(unread(&mut net, alice, group), 1);
    for slot in [alice, bob, carol] {
        net.take_events(slot);
    }

    let now = net.now_ms;
    net.client(bob).mark_read(now, &group.to_hex()).unwrap();
    assert_eq!(unread(&mut net, bob, group), 0);
    net.run();
    // The newest message of another user is what bob read up to.
    for slot in [alice, carol] {
        assert_eq!(
            receipts(&net.take_events(slot)),
            vec![("bob".to_string(), m2)],
            "slot {slot}"
        );
    }
    let seen = history(&mut net, alice, group);
    let read_by = |msgs: &[ChatMessage], id: MessageId| {
        msgs.iter()
            .find(|m| m.id == id)
            .map(|m| m.read_by.clone())
            .unwrap()
    };
    assert_eq!(read_by(&seen, m1), vec![user("bob")]);
    assert_eq!(read_by(&seen, m2), vec![user("bob")]);
    // Not by its own author.
    let bobs = seen.iter().find(|m| m.text == "bob's own").unwrap();
    assert!(bobs.read_by.is_empty(), "{:?}", bobs.read_by);

    // Two more reads within the interval: nothing goes out until the timer.
    let m3 = say(&mut net, carol, group, "three");
    let now = net.now_ms;
    net.client(bob).mark_read(now, &group.to_hex()).unwrap();
    let m4 = say(&mut net, carol, group, "four");
    let now = net.now_ms;
    net.client(bob).mark_read(now, &group.to_hex()).unwrap();
    net.run();
    assert!(receipts(&net.take_events(alice)).is_empty());
    let due = net.client(bob).poll_timeout().expect("a receipt is due");
    assert!(
        due > net.now_ms && due <= now + RECEIPT_INTERVAL_MS,
        "{due}"
    );
    net.client(bob).handle_timeout(due - 1).unwrap();
    net.run();
    assert!(receipts(&net.take_events(alice)).is_empty(), "early");
    net.client(bob).handle_timeout(due).unwrap();
    net.run();
    assert_eq!(
        receipts(&net.take_events(alice)),
        vec![("bob".to_string(), m4)],
        "only the newest"
    );
    assert_eq!(net.client(bob).poll_timeout(), None);
    let seen = history(&mut net, alice, group);
    assert_eq!(read_by(&seen, m3), vec![user("bob")]);
    assert_eq!(read_by(&seen, m4), vec![user("bob")]);

    // No device keeps a receipt as a history record.
    for slot in [alice, bob, carol] {
        for m in net.client(slot).store().messages(&group).unwrap() {
            let content = cove_core::Envelope::decode(&m.content).unwrap().content;
            assert!(
                !matches!(content, Content::ReadReceipt { .. }),
                "slot {slot} stored a receipt"
            );
        }
    }
}

/// Typing reaches the others as `Event::Typing` and leaves no record: apart from the MLS
/// state, the cursors and the seen ids, no namespace of the sender's or a receiver's store
/// changes. Not connected, nothing is sent; a typing notification older than
/// [`TYPING_FRESH_MS`] when it arrives (backlog) is not reported.
#[test]
fn typing_is_reported_and_never_stored() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    say(&mut net, alice, group, "hello");
    net.take_events(alice);
    net.take_events(bob);
    let moving = [Namespace::Mls, Namespace::Cursor, Namespace::Seen];
    let before: Vec<_> = [alice, bob]
        .iter()
        .map(|s| snapshot(net.client(*s).store(), &moving))
        .collect();

    let now = net.now_ms;
    let op = net
        .client(alice)
        .set_typing(now, &group.to_hex(), true)
        .unwrap()
        .expect("connected: sent");
    op_result(&mut net, alice, op).unwrap();
    net.run();
    let events = net.take_events(bob);
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Typing { group: g, from, active: true } if *g == group && from.as_str() == "alice"
        )),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Message(_))));
    for (i, s) in [alice, bob].iter().enumerate() {
        assert_eq!(
            snapshot(net.client(*s).store(), &moving),
            before[i],
            "slot {s} kept something of the typing notification"
        );
    }

    // Offline: not sent.
    net.disconnect(alice);
    let now = net.now_ms;
    assert_eq!(
        net.client(alice)
            .set_typing(now, &group.to_hex(), true)
            .unwrap(),
        None
    );
    net.connect(alice);
    net.run();

    // A stale one from the backlog is not reported; a message after it is (the sentinel).
    net.disconnect(bob);
    let now = net.now_ms;
    net.client(alice)
        .set_typing(now, &group.to_hex(), false)
        .unwrap()
        .expect("sent");
    net.run();
    say(&mut net, alice, group, "sentinel");
    net.now_ms += TYPING_FRESH_MS + 1;
    net.connect(bob);
    net.run();
    let events = net.take_events(bob);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Message(m) if m.text == "sentinel"))
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::Typing { .. })),
        "{events:?}"
    );
}

/// The timer is bounded; once set, every device's copy of a message (the sender's too)
/// expires the timer after it was stored: `expires_at_ms` says when, `poll_timeout`
/// includes it, and `handle_timeout` then deletes it with the edit of it, reports
/// `Event::Expired`, and no namespace of any store holds its text or the edit's any more
/// (also on a device that is offline then). Messages from before the timer stay.
#[test]
fn disappearing_messages_expire_on_every_device() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob", "carol"]);
    let g = group.to_hex();
    let kept = say(&mut net, alice, group, "before the timer");
    let now = net.now_ms;
    for bad in [Some(0), Some(cove_core::MAX_DISAPPEARING_SECS + 1)] {
        assert!(matches!(
            net.client(alice).set_disappearing(now, &g, bad),
            Err(CommandError::Invalid(InvalidArgument::Timer))
        ));
    }
    let op = net
        .client(alice)
        .set_disappearing(now, &g, Some(60))
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    for slot in [alice, bob, carol] {
        let events = net.take_events(slot);
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::GroupChanged { change: GroupChange::Disappearing(Some(60)), by, .. }
                    if by.as_str() == "alice"
            )),
            "slot {slot}: {events:?}"
        );
        let info = net.client(slot).groups();
        assert_eq!(info[0].disappearing_secs, Some(60));
    }

    let secret = "VANISHING-SECRET-4711";
    let edit = "VANISHING-EDIT-0815";
    let id = say(&mut net, bob, group, secret);
    let now = net.now_ms;
    let op = net
        .client(bob)
        .send_content(
            now,
            group,
            Content::Edit {
                to: id.0,
                text: edit.into(),
            },
        )
        .unwrap();
    op_result(&mut net, bob, op).unwrap();
    net.run();
    let mut deadlines = Vec::new();
    for slot in [alice, bob, carol] {
        net.take_events(slot);
        let msgs = history(&mut net, slot, group);
        let m = msgs.iter().find(|m| m.id == id).expect("stored");
        let at = m.expires_at_ms.expect("expires");
        assert!(at > net.now_ms && at <= net.now_ms + 60_000, "{at}");
        let old = msgs.iter().find(|m| m.id == kept).unwrap();
        assert_eq!(old.expires_at_ms, None);
        assert!(store_holds(net.client(slot).store(), secret.as_bytes()));
        assert!(store_holds(net.client(slot).store(), edit.as_bytes()));
        let next = net.client(slot).poll_timeout().expect("an expiry is due");
        assert!(next <= at);
        deadlines.push(at);
    }
    // Carol is offline when hers expires: it goes all the same.
    net.disconnect(carol);
    assert!(net.client(carol).poll_timeout().is_some(), "offline too");
    for (slot, at) in [alice, bob, carol].into_iter().zip(deadlines) {
        net.client(slot).handle_timeout(at - 1).unwrap();
        assert!(history(&mut net, slot, group).iter().any(|m| m.id == id));
        net.client(slot).handle_timeout(at).unwrap();
        net.run();
        let events = net.take_events(slot);
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::Expired { group: g, ids } if *g == group && ids.contains(&id)
            )),
            "slot {slot}: {events:?}"
        );
        let msgs = history(&mut net, slot, group);
        assert!(!msgs.iter().any(|m| m.id == id), "slot {slot}");
        assert!(msgs.iter().any(|m| m.id == kept), "slot {slot}");
        let store = net.client(slot).store();
        assert!(!store_holds(store, secret.as_bytes()), "slot {slot}");
        assert!(!store_holds(store, edit.as_bytes()), "slot {slot}");
    }

    net.connect(carol);
    net.run();

    // Off again: new messages stay.
    let now = net.now_ms;
    let op = net.client(alice).set_disappearing(now, &g, None).unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    let id = say(&mut net, alice, group, "stays");
    for slot in [alice, bob, carol] {
        let msgs = history(&mut net, slot, group);
        assert_eq!(
            msgs.iter().find(|m| m.id == id).unwrap().expires_at_ms,
            None
        );
        assert_eq!(net.client(slot).groups()[0].disappearing_secs, None);
    }
}

/// The profile: bounded name and description; every member's group list shows the new name
/// and description, and `GroupChanged(Profile)` is reported. Muting is local: the muter's
/// list shows it, nobody else's.
#[test]
fn the_group_profile_reaches_every_member_and_muting_stays_local() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let g = group.to_hex();
    let now = net.now_ms;
    assert!(matches!(
        net.client(alice).set_group_profile(now, &g, "", "d", None),
        Err(CommandError::Invalid(
            InvalidArgument::GroupNameLength { .. }
        ))
    ));
    let long = "x".repeat(cove_core::content::MAX_DESCRIPTION_BYTES + 1);
    assert!(matches!(
        net.client(alice)
            .set_group_profile(now, &g, "n", &long, None),
        Err(CommandError::Invalid(
            InvalidArgument::DescriptionLength { .. }
        ))
    ));
    let op = net
        .client(alice)
        .set_group_profile(now, &g, "renamed", "where we plan", None)
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    for slot in [alice, bob] {
        let events = net.take_events(slot);
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::GroupChanged { change: GroupChange::Profile { name, description, avatar: false }, .. }
                    if name == "renamed" && description == "where we plan"
            )),
            "slot {slot}: {events:?}"
        );
        let info = &net.client(slot).groups()[0];
        assert_eq!(info.name, "renamed");
        assert_eq!(info.description, "where we plan");
        assert_eq!(
            net.client(slot).resolve("renamed").unwrap(),
            group,
            "slot {slot}"
        );
    }

    net.client(bob).mute("renamed", Some(u64::MAX)).unwrap();
    net.run();
    assert_eq!(net.client(bob).groups()[0].muted_until_ms, Some(u64::MAX));
    assert_eq!(net.client(alice).groups()[0].muted_until_ms, None);
    net.client(bob).mute("renamed", None).unwrap();
    assert_eq!(net.client(bob).groups()[0].muted_until_ms, None);
}

/// Settings a hostile (or buggy) member sends past its own client's checks: an
/// out-of-bounds timer or profile is skipped with `Warning::SettingRefused` and changes
/// nothing; a receipt naming a message nobody holds is reported to nobody and kept nowhere.
#[test]
fn out_of_bounds_settings_and_receipts_for_unknown_messages_change_nothing() {
    use cove_core::error::Warning;
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    say(&mut net, alice, group, "hello");
    net.take_events(bob);
    let settings_before = snapshot(net.client(bob).store(), &[])
        .into_iter()
        .filter(|(ns, _, _)| *ns == Namespace::GroupSettings)
        .collect::<Vec<_>>();
    let hostile = [
        (
            Content::Disappearing {
                timer_secs: Some(0),
            },
            "a disappearing timer",
        ),
        (
            Content::Disappearing {
                timer_secs: Some(cove_core::MAX_DISAPPEARING_SECS + 1),
            },
            "a disappearing timer",
        ),
        (
            Content::GroupProfile {
                name: String::new(),
                description: String::new(),
                avatar: None,
            },
            "a profile",
        ),
        (
            Content::GroupProfile {
                name: "ok".into(),
                description: "d".repeat(cove_core::content::MAX_DESCRIPTION_BYTES + 1),
                avatar: None,
            },
            "a profile",
        ),
    ];
    for (content, what) in hostile {
        let now = net.now_ms;
        let op = net.client(alice).send_content(now, group, content).unwrap();
        op_result(&mut net, alice, op).unwrap();
        net.run();
        let events = net.take_events(bob);
        // Refused by the settings (out of bounds), or before them by the content's own
        // bounds (a description too long is invalid content).
        assert!(
            events.iter().any(|e| match e {
                Event::Warning(Warning::SettingRefused {
                    what: w,
                    why: "out of bounds",
                    from,
                    ..
                }) => *w == what && from.as_str() == "alice",
                Event::Warning(w) => w.to_string().contains("group description too long"),
                _ => false,
            }),
            "{what}: {events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::GroupChanged { .. })),
            "{events:?}"
        );
    }
    let now = net.now_ms;
    let op = net
        .client(alice)
        .send_content(now, group, Content::ReadReceipt { up_to: [9; 16] })
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    let events = net.take_events(bob);
    assert!(receipts(&events).is_empty(), "{events:?}");
    let info = &net.client(bob).groups()[0];
    assert_eq!(info.name, "friends");
    assert_eq!(info.description, "");
    assert_eq!(info.disappearing_secs, None);
    let settings_after = snapshot(net.client(bob).store(), &[])
        .into_iter()
        .filter(|(ns, _, _)| *ns == Namespace::GroupSettings)
        .collect::<Vec<_>>();
    assert_eq!(settings_after, settings_before, "bob's settings changed");
}
