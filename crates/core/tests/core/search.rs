//! Search over the local history (`Client::search`, issue 13): by word and by prefix, in
//! one group and across groups, never a message whose record is gone; the index fed by
//! received and own messages, replies, imported history (device link, backup) and, once,
//! by the history a store held before the index existed.

use cove_core::backup;
use cove_core::content::ENVELOPE_VERSION;
use cove_core::cove_store::{GroupRecord, Kv, Membership, Namespace, StoredMessage};
use cove_core::{ChatMessage, Content, Envelope, QueryError};
use cove_wire::{DeviceId, Seq};

use super::*;

/// `(from, text)` of each found message, in the order found.
fn found(messages: &[ChatMessage]) -> Vec<(String, String)> {
    messages
        .iter()
        .map(|m| (m.from.to_string(), m.text.clone()))
        .collect()
}

fn pair(from: &str, text: &str) -> (String, String) {
    (from.to_string(), text.to_string())
}

/// alice and bob in "friends" and "work", a few messages in each, sent a second apart:
/// alice's "the quarterly report is ready" and bob's "lunch at noon?" in friends, then
/// alice's "Quarterly numbers attached" in work, then bob's "quartz watch" in friends.
fn two_groups() -> (Net<MemoryStore>, usize, usize, GroupId, GroupId) {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let friends = group_of(&mut net, alice, &["bob"]);
    let now = net.now_ms;
    let op = net.client(alice).create_group(now, "work").unwrap();
    op_result(&mut net, alice, op).unwrap();
    let op = net
        .client(alice)
        .add_users(now, "work", &[user("bob")])
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    let work = net.client(alice).resolve("work").unwrap();
    for (slot, group, text) in [
        (alice, "friends", "the quarterly report is ready"),
        (bob, "friends", "lunch at noon?"),
        (alice, "work", "Quarterly numbers attached"),
        (bob, "friends", "quartz watch"),
    ] {
        net.now_ms += 1000;
        let now = net.now_ms;
        let op = net.client(slot).send_text(now, group, text).unwrap();
        op_result(&mut net, slot, op).unwrap();
        net.run();
    }
    (net, alice, bob, friends, work)
}

#[test]
fn search_finds_by_word_and_prefix_in_one_group_and_across_groups() {
    let (mut net, alice, bob, friends, work) = two_groups();
    // The same on the sender's device (own messages) and the receiver's.
    for slot in [alice, bob] {
        let c = net.client(slot);
        // A word, any case, across groups: latest sent first.
        let all = c.search("QUARTERLY", None, 10).unwrap();
        assert_eq!(
            found(&all),
            vec![
                pair("alice", "Quarterly numbers attached"),
                pair("alice", "the quarterly report is ready"),
            ],
            "slot {slot}"
        );
        assert_eq!(all[0].group, work);
        assert_eq!(all[0].group_name, "work");
        assert_eq!(all[1].group, friends);
        // A prefix.
        assert_eq!(
            found(&c.search("quar", None, 10).unwrap()),
            vec![
                pair("bob", "quartz watch"),
                pair("alice", "Quarterly numbers attached"),
                pair("alice", "the quarterly report is ready"),
            ]
        );
        // In one group (by name or id).
        assert_eq!(
            found(&c.search("quar", Some("friends"), 10).unwrap()),
            vec![
                pair("bob", "quartz watch"),
                pair("alice", "the quarterly report is ready"),
            ]
        );
        assert_eq!(
            found(&c.search("quar", Some(&work.to_hex()), 10).unwrap()),
            vec![pair("alice", "Quarterly numbers attached")]
        );
        // Every word must match; punctuation is no syntax.
        assert_eq!(
            found(&c.search("report quart", None, 10).unwrap()),
            vec![pair("alice", "the quarterly report is ready")]
        );
        assert_eq!(found(&c.search("\"noon?\" OR", None, 10).unwrap()), vec![]);
        assert_eq!(
            found(&c.search("noon?", None, 10).unwrap()),
            vec![pair("bob", "lunch at noon?")]
        );
        assert_eq!(c.search("lunch", Some("work"), 10).unwrap().len(), 0);
        // The limit keeps the newest.
        assert_eq!(
            found(&c.search("quar", None, 1).unwrap()),
            vec![pair("bob", "quartz watch")]
        );
        assert!(c.search("quar", None, 0).unwrap().is_empty());
        assert!(c.search("", None, 10).unwrap().is_empty());
        assert!(matches!(
            c.search("quar", Some("nope"), 10),
            Err(QueryError::UnknownGroup(g)) if g == "nope"
        ));
        assert!(matches!(
            c.search(&"quarterly ".repeat(200), None, 10),
            Err(QueryError::Store(
                cove_core::cove_store::StoreError::InvalidSearch(_)
            ))
        ));
    }
}

#[test]
fn search_never_returns_a_message_whose_record_is_gone() {
    let (mut net, _alice, bob, friends, _work) = two_groups();
    let store = net.client(bob).store();
    let hits = store.text_search("quar", Some(&friends), 10).unwrap();
    assert_eq!(hits.len(), 2);
    // The newest match ("quartz watch"): its record goes, its index entry stays (stale).
    let (g, seq) = hits[0];
    let mut key = g.0.to_vec();
    key.extend_from_slice(&seq.0.to_be_bytes());
    store.kv_delete(Namespace::Message, &key).unwrap();
    assert_eq!(
        store.text_search("quartz", None, 10).unwrap(),
        vec![(g, seq)]
    );
    let c = net.client(bob);
    assert!(c.search("quartz", None, 10).unwrap().is_empty());
    // The stale hit does not take a place of the limit: the next match fills it.
    assert_eq!(
        found(&c.search("quar", Some("friends"), 1).unwrap()),
        vec![pair("alice", "the quarterly report is ready")]
    );
    // Unindexed as well: gone from the index too.
    c.store().text_unindex(&g, seq).unwrap();
    assert!(
        c.store()
            .text_search("quartz", None, 10)
            .unwrap()
            .is_empty()
    );
    assert!(c.search("quartz", None, 10).unwrap().is_empty());
    assert_eq!(c.history("friends").unwrap().len(), 2);
}

#[test]
fn replies_are_indexed_as_they_arrive() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let friends = group_of(&mut net, alice, &["bob"]);
    let toast = super::settings::say(&mut net, bob, friends, "toast anyone?");
    let now = net.now_ms;
    let op = net
        .client(alice)
        .send_reply(now, "friends", toast, "replying with marmalade")
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    for slot in [alice, bob] {
        let hits = net
            .client(slot)
            .store()
            .text_search("marmal", None, 10)
            .unwrap();
        assert_eq!(hits.len(), 1, "slot {slot}");
        assert_eq!(hits[0].0, friends);
        let stored = net
            .client(slot)
            .store()
            .message(&friends, hits[0].1)
            .unwrap()
            .unwrap();
        assert!(matches!(
            Envelope::decode(&stored.content).unwrap().content,
            Content::Reply { text, .. } if text == "replying with marmalade"
        ));
    }
}

/// Forgets that the store was indexed, and the index: a store from before the index.
fn make_unindexed(store: &MemoryStore) {
    for group in store.groups().unwrap() {
        for m in store.messages(&group.id).unwrap() {
            store.text_unindex(&m.group, m.seq).unwrap();
        }
    }
    // The flag `search::backfill` sets (cove-core internal).
    store
        .kv_delete(Namespace::Config, b"\0search_indexed")
        .unwrap();
}

#[test]
fn history_stored_before_the_index_is_indexed_once_at_open() {
    let (mut net, _alice, bob, _friends, _work) = two_groups();
    let old = net.client(bob).store().snapshot().unwrap();
    make_unindexed(&old);
    assert!(old.text_search("quar", None, 10).unwrap().is_empty());
    let reopened = Client::open(old, seed(40)).unwrap();
    assert_eq!(
        found(&reopened.search("quar", None, 10).unwrap()),
        vec![
            pair("bob", "quartz watch"),
            pair("alice", "Quarterly numbers attached"),
            pair("alice", "the quarterly report is ready"),
        ]
    );
    assert_eq!(
        found(&reopened.search("lunch", None, 10).unwrap()),
        vec![pair("bob", "lunch at noon?")]
    );
    // Once: a store that was backfilled is not scanned again (the index emptied by hand
    // stays empty across an open).
    let again = reopened.store().snapshot().unwrap();
    for group in again.groups().unwrap() {
        for m in again.messages(&group.id).unwrap() {
            again.text_unindex(&m.group, m.seq).unwrap();
        }
    }
    let reopened = Client::open(again, seed(41)).unwrap();
    assert!(reopened.search("quar", None, 10).unwrap().is_empty());
}

#[test]
fn history_imported_on_a_linked_device_is_indexed() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    group_of(&mut net, alice, &["bob"]);
    let op = send(&mut net, alice, "pineapple pizza tonight");
    op_result(&mut net, alice, op).unwrap();
    let op = send(&mut net, bob, "never pineapple");
    op_result(&mut net, bob, op).unwrap();
    net.run();
    let alice2 = linked_device(&mut net, alice, "alice", 42);
    let now = net.now_ms;
    let op = net
        .client(alice)
        .add_users(now, "friends", &[user("alice")])
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    assert!(
        net.client(alice2)
            .search("pine", None, 10)
            .unwrap()
            .is_empty()
    );
    for chunk in net.client(alice).export_history().unwrap() {
        net.client(alice2).import_history(chunk).unwrap();
    }
    assert_eq!(
        found(&net.client(alice2).search("pine", None, 10).unwrap()),
        vec![
            pair("bob", "never pineapple"),
            pair("alice", "pineapple pizza tonight"),
        ]
    );
}

#[test]
fn history_imported_from_a_backup_is_indexed() {
    let group = GroupId([5; 16]);
    let source = MemoryStore::new();
    source
        .put_group(&GroupRecord {
            id: group,
            name: "family".into(),
            membership: Membership::Active,
            joined_at_ms: 1,
        })
        .unwrap();
    let texts = [
        Content::Text {
            text: "grandma's lasagne recipe".into(),
        },
        Content::Reply {
            to: [1; 16],
            quote: "recipe".into(),
            text: "more lasagne please".into(),
        },
        Content::Text {
            text: "unrelated".into(),
        },
    ];
    for (i, content) in texts.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let env = Envelope {
            version: ENVELOPE_VERSION,
            id: [seq as u8; 16],
            sent_at_ms: 1_700_000_000_000 + seq,
            content,
        };
        source
            .put_message(&StoredMessage {
                group,
                seq: Seq(seq),
                from: user("alice"),
                from_device: DeviceId(1),
                message_id: env.id,
                sent_at_ms: env.sent_at_ms,
                content: env.encode().unwrap(),
            })
            .unwrap();
    }
    let planned = backup::plan(&source, &user("alice"), DeviceId(1)).unwrap();
    let target = MemoryStore::new();
    for p in planned {
        backup::import(&target, p.segment, 5).unwrap();
    }
    assert_eq!(
        target.text_search("lasag", None, 10).unwrap(),
        vec![(group, Seq(2)), (group, Seq(1))]
    );
    assert!(
        target
            .text_search("recipe unrelated", None, 10)
            .unwrap()
            .is_empty()
    );
}

/// The same on a real SQLite file: a device whose store predates the index (its index
/// emptied and the flag removed while it is closed) finds its history after reopening.
#[test]
fn a_sqlite_store_from_before_the_index_is_backfilled_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bob.db");
    let mut net: Net<SqliteStore> = Net::new();
    let alice = net.add(
        Client::init(
            SqliteStore::open(dir.path().join("alice.db")).unwrap(),
            user("alice"),
            seed(1),
        )
        .unwrap(),
    );
    net.run();
    let bob =
        net.add(Client::init(SqliteStore::open(&path).unwrap(), user("bob"), seed(2)).unwrap());
    net.run();
    group_of(&mut net, alice, &["bob"]);
    let op = send(&mut net, alice, "the walrus sings");
    op_result(&mut net, alice, op).unwrap();
    net.run();
    assert_eq!(net.client(bob).search("walr", None, 10).unwrap().len(), 1);
    net.nodes[bob].client = None;
    net.disconnect(bob);
    {
        let old = SqliteStore::open(&path).unwrap();
        for group in old.groups().unwrap() {
            for m in old.messages(&group.id).unwrap() {
                old.text_unindex(&m.group, m.seq).unwrap();
            }
        }
        old.kv_delete(Namespace::Config, b"\0search_indexed")
            .unwrap();
        assert!(old.text_search("walr", None, 10).unwrap().is_empty());
    }
    let reopened = Client::open(SqliteStore::open(&path).unwrap(), seed(3)).unwrap();
    assert_eq!(
        found(&reopened.search("walr", None, 10).unwrap()),
        vec![pair("alice", "the walrus sings")]
    );
}
