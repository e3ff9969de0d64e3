//! Replies, reactions, edits, deletes and unsupported content (issue 13): the commands, what
//! every receiver renders, and the receivers' rules against hostile senders.

use cove_core::content::{Content, ENVELOPE_VERSION, Envelope, MAX_QUOTE_CHARS, MAX_TEXT_BYTES};
use cove_core::cove_store::{MemoryStore, Store};
use cove_core::error::InvalidArgument;
use cove_core::{ChatMessage, CommandError, Event, MessageId, QueryError, Quote, Reaction};
use cove_wire::GroupId;

use super::mallory::Mallory;
use super::relay::Net;
use super::{device, group_of, op_result, send, texts, user, warnings};

/// The id of the message of `slot`'s history whose text is `text`.
fn id_of(net: &mut Net<MemoryStore>, slot: usize, text: &str) -> MessageId {
    net.client(slot)
        .history("friends")
        .unwrap()
        .into_iter()
        .find(|m| m.text == text)
        .unwrap_or_else(|| panic!("slot {slot} holds no message {text:?}"))
        .id
}

fn history(net: &mut Net<MemoryStore>, slot: usize) -> Vec<ChatMessage> {
    net.client(slot).history("friends").unwrap()
}

/// Every member's rendered history, without the receiver-local parts (the group's name is
/// each member's own choice; `from_device` is the same everywhere).
fn histories_equal(net: &mut Net<MemoryStore>, slots: &[usize]) -> Vec<ChatMessage> {
    let first = history(net, slots[0]);
    for slot in &slots[1..] {
        assert_eq!(
            history(net, *slot),
            first,
            "slot {slot} renders the same history as slot {}",
            slots[0]
        );
    }
    first
}

/// Sends `content` from `slot` as is (no command checks: what a hostile or buggy client
/// could send) and waits for the relay to accept it.
fn send_raw(net: &mut Net<MemoryStore>, slot: usize, group: GroupId, content: Content) {
    let now = net.now_ms;
    let op = net.client(slot).send_content(now, group, content).unwrap();
    op_result(net, slot, op).unwrap();
}

/// The raw stored contents of `slot`'s history of `group`.
fn stored_bytes(net: &mut Net<MemoryStore>, slot: usize, group: GroupId) -> Vec<u8> {
    net.client(slot)
        .store()
        .messages(&group)
        .unwrap()
        .into_iter()
        .flat_map(|m| m.content)
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Three members: a reply, reactions (added, taken back) and an edit round-trip; every member
/// gets the events and renders the same history (the reply quoting the edited text, the
/// reactions per emoji in first-reaction order, the edit history), with the reactions and
/// the edit not shown as messages.
#[test]
fn replies_reactions_and_edits_render_the_same_for_every_member() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob", "carol"]);
    let op = send(&mut net, alice, "hello world");
    op_result(&mut net, alice, op).unwrap();
    let hello = id_of(&mut net, bob, "hello world");
    for slot in [alice, bob, carol] {
        net.take_events(slot);
    }

    let now = net.now_ms;
    let prefix = &hello.to_hex()[..6];
    let found = net.client(bob).find_message("friends", prefix);
    assert!(matches!(found, Ok(id) if id == hello), "{found:?}");
    let op = net
        .client(bob)
        .send_reply(now, "friends", hello, "hi alice")
        .unwrap();
    op_result(&mut net, bob, op).unwrap();
    for (slot, emoji, remove) in [
        (carol, "👍", false),
        (bob, "👍", false),
        (carol, "🎉", false),
        (carol, "👍", true),
    ] {
        let op = net
            .client(slot)
            .react(now, "friends", hello, emoji, remove)
            .unwrap();
        op_result(&mut net, slot, op).unwrap();
    }
    let op = net
        .client(alice)
        .edit(now, "friends", hello, "hello everyone")
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();

    for slot in [alice, bob, carol] {
        let events = net.take_events(slot);
        let reply = events
            .iter()
            .find_map(|e| match e {
                Event::Message(m) if m.text == "hi alice" => Some(m.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("slot {slot} got the reply: {events:?}"));
        assert_eq!(
            reply.reply_to,
            Some(Quote {
                id: hello,
                from: Some(user("alice")),
                text: "hello world".into(),
            }),
            "slot {slot}"
        );
        let reacted: Vec<(String, String, bool)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Reacted {
                    group: g,
                    by,
                    to,
                    emoji,
                    removed,
                } if *g == group && *to == hello => Some((by.to_string(), emoji.clone(), *removed)),
                _ => None,
            })
            .collect();
        assert_eq!(
            reacted,
            vec![
                ("carol".into(), "👍".into(), false),
                ("bob".into(), "👍".into(), false),
                ("carol".into(), "🎉".into(), false),
                ("carol".into(), "👍".into(), true),
            ],
            "slot {slot}"
        );
        let edited: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::Edited { by, to, text, .. } if by.as_str() == "alice" && *to == hello && text == "hello everyone"))
            .collect();
        assert_eq!(edited.len(), 1, "slot {slot}: {events:?}");
        assert!(warnings(&events).is_empty(), "slot {slot}: {events:?}");
    }

    let rendered = histories_equal(&mut net, &[alice, bob, carol]);
    assert_eq!(rendered.len(), 2, "reactions and edits are not messages");
    let (first, reply) = (&rendered[0], &rendered[1]);
    assert_eq!(first.id, hello);
    assert_eq!(first.text, "hello everyone");
    assert_eq!(first.edits, vec!["hello world".to_string()]);
    assert_eq!(
        first.reactions,
        vec![
            Reaction {
                emoji: "👍".into(),
                users: vec![user("bob")],
            },
            Reaction {
                emoji: "🎉".into(),
                users: vec![user("carol")],
            },
        ]
    );
    assert!(!first.deleted);
    assert_eq!(reply.text, "hi alice");
    assert_eq!(
        reply.reply_to,
        Some(Quote {
            id: hello,
            from: Some(user("alice")),
            text: "hello everyone".into(),
        }),
        "the reply shows the target's current text"
    );
}

/// alice deletes her edited message: every member gets `Deleted` and renders it deleted
/// (no text, no edits), the reply to it keeps its own text but quotes nothing, and no
/// member's stored history holds the message's text, its edit's text or the reply's quote
/// of it any more.
#[test]
fn a_delete_erases_the_message_its_edits_and_quotes_on_every_member() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob", "carol"]);
    let op = send(&mut net, alice, "secret plan");
    op_result(&mut net, alice, op).unwrap();
    let plan = id_of(&mut net, alice, "secret plan");
    let now = net.now_ms;
    let op = net
        .client(alice)
        .edit(now, "friends", plan, "secret plan two")
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    let op = net
        .client(bob)
        .send_reply(now, "friends", plan, "sounds good")
        .unwrap();
    op_result(&mut net, bob, op).unwrap();
    net.run();
    for slot in [alice, bob, carol] {
        assert!(contains(
            &stored_bytes(&mut net, slot, group),
            "secret plan"
        ));
        net.take_events(slot);
    }

    let op = net
        .client(alice)
        .delete_message(now, "friends", plan)
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();

    for slot in [alice, bob, carol] {
        let events = net.take_events(slot);
        let deleted: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::Deleted { by, to, .. } if by.as_str() == "alice" && *to == plan))
            .collect();
        assert_eq!(deleted.len(), 1, "slot {slot}: {events:?}");
        let bytes = stored_bytes(&mut net, slot, group);
        assert!(
            !contains(&bytes, "secret"),
            "slot {slot} keeps no text of the deleted message"
        );
        assert!(
            contains(&bytes, "sounds good"),
            "the reply's own text stays"
        );
    }
    let rendered = histories_equal(&mut net, &[alice, bob, carol]);
    assert_eq!(rendered.len(), 2);
    let gone = &rendered[0];
    assert!(gone.deleted);
    assert_eq!((gone.id, gone.from.as_str()), (plan, "alice"));
    assert_eq!(gone.text, "");
    assert!(gone.edits.is_empty());
    assert_eq!(
        rendered[1].reply_to,
        Some(Quote {
            id: plan,
            from: Some(user("alice")),
            text: String::new(),
        })
    );
    // A deleted message is not deleted, edited or replied to again... it can only be named.
    let again = net.client(alice).delete_message(now, "friends", plan);
    assert!(
        matches!(&again, Err(CommandError::UnknownMessage(m)) if *m == plan.to_hex()),
        "{again:?}"
    );
    let again = net.client(alice).edit(now, "friends", plan, "back");
    assert!(
        matches!(&again, Err(CommandError::UnknownMessage(m)) if *m == plan.to_hex()),
        "{again:?}"
    );
}

/// bob edits alice's message: the command refuses (`NotAuthor`); sent anyway, every
/// receiver (alice, carol, and bob's own device) ignores it: no `Edited`, the text and edit
/// history unchanged. A sentinel sent afterwards shows the edit was processed.
#[test]
fn an_edit_by_another_user_is_ignored_by_every_receiver() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob", "carol"]);
    let op = send(&mut net, alice, "mine");
    op_result(&mut net, alice, op).unwrap();
    net.run();
    let mine = id_of(&mut net, bob, "mine");
    let now = net.now_ms;
    let refused = net.client(bob).edit(now, "friends", mine, "bob's now");
    assert!(
        matches!(refused, Err(CommandError::NotAuthor)),
        "{refused:?}"
    );
    for slot in [alice, bob, carol] {
        net.take_events(slot);
    }
    send_raw(
        &mut net,
        bob,
        group,
        Content::Edit {
            to: mine.0,
            text: "bob's now".into(),
        },
    );
    let op = send(&mut net, bob, "sentinel");
    op_result(&mut net, bob, op).unwrap();
    net.run();
    for slot in [alice, bob, carol] {
        let events = net.take_events(slot);
        assert_eq!(texts(&events), vec!["sentinel".to_string()], "slot {slot}");
        assert!(
            !events.iter().any(|e| matches!(e, Event::Edited { .. })),
            "slot {slot}: {events:?}"
        );
    }
    let rendered = histories_equal(&mut net, &[alice, bob, carol]);
    assert_eq!(rendered[0].text, "mine");
    assert!(rendered[0].edits.is_empty());
}

/// The creator (an admin) deletes another member's message: it is deleted on every member.
/// bob (not an admin) cannot delete carol's message: `delete_message` refuses with
/// `NotAdmin`, and the delete sent anyway is ignored by every receiver (carol's message stays,
/// no `Deleted` event).
#[test]
fn deletes_of_others_messages_follow_the_admin_rule() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob", "carol"]);
    let op = send(&mut net, bob, "bob's");
    op_result(&mut net, bob, op).unwrap();
    let op = send(&mut net, carol, "carol's");
    op_result(&mut net, carol, op).unwrap();
    net.run();
    let bobs = id_of(&mut net, alice, "bob's");
    let carols = id_of(&mut net, alice, "carol's");
    let now = net.now_ms;
    let op = net
        .client(alice)
        .delete_message(now, "friends", bobs)
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    for slot in [alice, bob, carol] {
        net.take_events(slot);
    }
    let now = net.now_ms;
    assert!(matches!(
        net.client(bob).delete_message(now, "friends", carols),
        Err(CommandError::NotAdmin(g)) if g == "friends"
    ));
    send_raw(&mut net, bob, group, Content::Delete { to: carols.0 });
    net.run();
    for slot in [alice, bob, carol] {
        let events = net.take_events(slot);
        assert!(
            !events.iter().any(|e| matches!(e, Event::Deleted { .. })),
            "slot {slot}: {events:?}"
        );
    }
    let rendered = histories_equal(&mut net, &[alice, bob, carol]);
    assert_eq!(rendered.len(), 2);
    assert!(rendered[0].deleted && rendered[0].id == bobs);
    assert!(!rendered[1].deleted && rendered[1].id == carols && rendered[1].text == "carol's");
}

/// A member whose client picks its own ids (mallory) posts a reaction, an edit and a delete
/// before the messages they name: each is kept and applied when its target arrives, the
/// target's `Message` event already carries them, and alice and bob render the same.
#[test]
fn reactions_edits_and_deletes_before_their_target_apply_when_it_arrives() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let mut mallory = Mallory::register(&mut net.relay, "mallory");
    let group = group_of(&mut net, alice, &["bob", "mallory"]);
    mallory.join(&net.relay);
    for slot in [alice, bob] {
        net.take_events(slot);
    }
    let (later, doomed) = ([0x11; 16], [0x22; 16]);
    let posts = [
        (
            1,
            Content::Reaction {
                to: later,
                emoji: "🔥".into(),
                remove: false,
            },
        ),
        (
            2,
            Content::Edit {
                to: later,
                text: "later, edited".into(),
            },
        ),
        (3, Content::Delete { to: doomed }),
        (
            0x11,
            Content::Text {
                text: "later".into(),
            },
        ),
        (
            0x22,
            Content::Text {
                text: "doomed words".into(),
            },
        ),
        (
            4,
            Content::Text {
                text: "sentinel".into(),
            },
        ),
    ];
    let now = net.now_ms;
    for (id, content) in posts {
        let plaintext = Envelope {
            version: ENVELOPE_VERSION,
            id: [id; 16],
            sent_at_ms: 1,
            content,
        }
        .encode()
        .unwrap();
        let bytes = mallory.seal(&plaintext);
        let frames = net.relay.inject(group, mallory.device, bytes, now);
        net.deliver(frames);
    }
    net.run();
    for slot in [alice, bob] {
        let events = net.take_events(slot);
        assert!(warnings(&events).is_empty(), "slot {slot}: {events:?}");
        let shown: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(shown.len(), 3, "slot {slot}: {events:?}");
        assert_eq!(shown[0].text, "later, edited");
        assert_eq!(shown[0].edits, vec!["later".to_string()]);
        assert_eq!(
            shown[0].reactions,
            vec![Reaction {
                emoji: "🔥".into(),
                users: vec![user("mallory")],
            }]
        );
        assert!(shown[1].deleted && shown[1].text.is_empty());
        assert_eq!(shown[2].text, "sentinel");
        assert!(!contains(&stored_bytes(&mut net, slot, group), "doomed"));
    }
    let rendered = histories_equal(&mut net, &[alice, bob]);
    assert_eq!(rendered.len(), 3);
}

/// alice deletes her message, then (her client buggy) edits it: every receiver ignores the
/// edit (no `Edited`, the message stays deleted) and keeps no copy of its text.
#[test]
fn an_edit_of_a_deleted_message_is_ignored() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let op = send(&mut net, alice, "short-lived");
    op_result(&mut net, alice, op).unwrap();
    let id = id_of(&mut net, alice, "short-lived");
    let now = net.now_ms;
    let op = net
        .client(alice)
        .delete_message(now, "friends", id)
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    for slot in [alice, bob] {
        net.take_events(slot);
    }
    send_raw(
        &mut net,
        alice,
        group,
        Content::Edit {
            to: id.0,
            text: "resurrected".into(),
        },
    );
    let op = send(&mut net, alice, "sentinel");
    op_result(&mut net, alice, op).unwrap();
    net.run();
    for slot in [alice, bob] {
        let events = net.take_events(slot);
        assert_eq!(texts(&events), vec!["sentinel".to_string()], "slot {slot}");
        assert!(
            !events.iter().any(|e| matches!(e, Event::Edited { .. })),
            "slot {slot}: {events:?}"
        );
        assert!(!contains(
            &stored_bytes(&mut net, slot, group),
            "resurrected"
        ));
    }
    let rendered = histories_equal(&mut net, &[alice, bob]);
    assert!(rendered[0].deleted && rendered[0].text.is_empty());
}

/// Contents breaking their bounds (a quote over MAX_QUOTE_CHARS characters, a text over
/// MAX_TEXT_BYTES in a reply or an edit, emoji that are empty, too long, or hold whitespace
/// or control characters) are dropped by the receivers with one warning each; the
/// commands refuse such emoji with `InvalidArgument::Emoji`.
#[test]
fn contents_breaking_their_bounds_are_dropped_with_a_warning() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let op = send(&mut net, alice, "target");
    op_result(&mut net, alice, op).unwrap();
    net.run();
    let target = id_of(&mut net, bob, "target");
    let now = net.now_ms;
    for emoji in ["", "a b", "\u{7}", &"👍".repeat(9)] {
        let refused = net.client(bob).react(now, "friends", target, emoji, false);
        assert!(
            matches!(refused, Err(CommandError::Invalid(InvalidArgument::Emoji))),
            "{emoji:?}: {refused:?}"
        );
    }
    net.take_events(alice);
    let bad = vec![
        Content::Reply {
            to: target.0,
            quote: "q".repeat(MAX_QUOTE_CHARS + 1),
            text: "fine".into(),
        },
        Content::Reply {
            to: target.0,
            quote: String::new(),
            text: "r".repeat(MAX_TEXT_BYTES + 1),
        },
        Content::Edit {
            to: target.0,
            text: "e".repeat(MAX_TEXT_BYTES + 1),
        },
        Content::Reaction {
            to: target.0,
            emoji: String::new(),
            remove: false,
        },
        Content::Reaction {
            to: target.0,
            emoji: "x".repeat(33),
            remove: false,
        },
        Content::Reaction {
            to: target.0,
            emoji: "a\nb".into(),
            remove: false,
        },
    ];
    let count = bad.len();
    for content in bad {
        send_raw(&mut net, bob, group, content);
    }
    let op = send(&mut net, bob, "sentinel");
    op_result(&mut net, bob, op).unwrap();
    net.run();
    let events = net.take_events(alice);
    assert_eq!(texts(&events), vec!["sentinel".to_string()]);
    let skipped = warnings(&events)
        .into_iter()
        .filter(|w| w.contains("invalid application content"))
        .count();
    assert_eq!(skipped, count, "{:?}", warnings(&events));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Reacted { .. } | Event::Edited { .. })),
        "{events:?}"
    );
    let rendered = history(&mut net, alice);
    assert_eq!(rendered.len(), 2);
    assert!(rendered[0].reactions.is_empty() && rendered[0].edits.is_empty());
}

/// A content kind this client does not know (a newer client's) is stored and shown as an
/// unsupported message (event and history), can be named and reacted to; ids are found by
/// a prefix of at least 4 hex digits, a shared prefix is ambiguous.
#[test]
fn an_unknown_content_kind_shows_as_unsupported_and_ids_are_found_by_prefix() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let mut mallory = Mallory::register(&mut net.relay, "mallory");
    let group = group_of(&mut net, alice, &["mallory"]);
    mallory.join(&net.relay);
    net.take_events(alice);
    let mut newer = vec![ENVELOPE_VERSION];
    newer.extend_from_slice(&[0xab, 0xcd, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    newer.push(9); // sent_at_ms
    newer.push(40); // content kind 40
    newer.extend_from_slice(b"a newer client's fields");
    let text = Envelope {
        version: ENVELOPE_VERSION,
        id: [0xab, 0xcd, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
        sent_at_ms: 10,
        content: Content::Text { text: "hi".into() },
    }
    .encode()
    .unwrap();
    let now = net.now_ms;
    for plaintext in [newer, text] {
        let bytes = mallory.seal(&plaintext);
        let frames = net.relay.inject(group, mallory.device, bytes, now);
        net.deliver(frames);
    }
    net.run();
    let events = net.take_events(alice);
    assert!(warnings(&events).is_empty(), "{events:?}");
    let first = events
        .iter()
        .find_map(|e| match e {
            Event::Message(m) => Some(m.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(first.unsupported, Some(40));
    assert_eq!((first.text.as_str(), first.sent_at_ms), ("", 9));
    let rendered = history(&mut net, alice);
    assert_eq!(rendered.len(), 2);
    assert_eq!(rendered[0].unsupported, Some(40));

    let client = net.client(alice);
    let found = client.find_message("friends", "abcd");
    assert!(
        matches!(&found, Err(QueryError::AmbiguousMessage(p)) if p == "abcd"),
        "{found:?}"
    );
    let found = client.find_message("friends", "ABCD01");
    assert!(matches!(found, Ok(id) if id == rendered[0].id), "{found:?}");
    let found = client.find_message("friends", "abcd02");
    assert!(matches!(found, Ok(id) if id == rendered[1].id), "{found:?}");
    for missing in ["abc", "abcd03", "zzzz"] {
        let found = client.find_message("friends", missing);
        assert!(
            matches!(&found, Err(QueryError::UnknownMessage(p)) if p == missing),
            "{missing:?}: {found:?}"
        );
    }
    let nothing = MessageId([9; 16]);
    let refused = client.send_reply(now, "friends", nothing, "to nothing");
    assert!(
        matches!(&refused, Err(CommandError::UnknownMessage(m)) if *m == nothing.to_hex()),
        "{refused:?}"
    );
    let op = client
        .react(now, "friends", rendered[0].id, "🤔", false)
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    assert_eq!(
        history(&mut net, alice)[0].reactions,
        vec![Reaction {
            emoji: "🤔".into(),
            users: vec![user("alice")],
        }]
    );
}

/// alice's history with a reply, a reaction, an edit and a delete, handed to her newly
/// linked device in reverse log order (every reference before the message it names):
/// the linked device renders the same history as alice, and keeps no text of the deleted
/// message.
#[test]
fn an_imported_history_in_any_order_renders_the_same() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let op = send(&mut net, alice, "first");
    op_result(&mut net, alice, op).unwrap();
    let op = send(&mut net, alice, "gone soon");
    op_result(&mut net, alice, op).unwrap();
    net.run();
    let first = id_of(&mut net, bob, "first");
    let gone = id_of(&mut net, bob, "gone soon");
    let now = net.now_ms;
    let op = net
        .client(bob)
        .react(now, "friends", first, "👀", false)
        .unwrap();
    op_result(&mut net, bob, op).unwrap();
    let op = net
        .client(bob)
        .send_reply(now, "friends", first, "re")
        .unwrap();
    op_result(&mut net, bob, op).unwrap();
    let op = net
        .client(alice)
        .edit(now, "friends", first, "first!")
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    let op = net
        .client(alice)
        .delete_message(now, "friends", gone)
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    let alice2 = super::linked_device(&mut net, alice, "alice", 42);
    let op = net
        .client(alice)
        .add_users(now, "friends", &[user("alice")])
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();

    let mut chunks = net.client(alice).export_history().unwrap();
    chunks.reverse();
    for chunk in &mut chunks {
        chunk.messages.0.reverse();
    }
    for chunk in chunks {
        net.client(alice2).import_history(chunk).unwrap();
    }
    let expected = history(&mut net, alice);
    assert_eq!(expected.len(), 3, "{expected:#?}");
    assert_eq!(expected[0].text, "first!");
    assert!(expected[1].deleted);
    let imported: Vec<ChatMessage> = history(&mut net, alice2)
        .into_iter()
        .map(|mut m| {
            m.group_name = expected[0].group_name.clone();
            m
        })
        .collect();
    assert_eq!(imported, expected);
    assert!(!contains(
        &stored_bytes(&mut net, alice2, group),
        "gone soon"
    ));
}

/// carol is offline while alice posts, bob reacts and replies, and alice edits and deletes:
/// her backlog is applied in log order (each message, then the reaction, the edit and the
/// delete as events), and afterwards she renders the same history as alice and bob.
#[test]
fn an_offline_member_converges_after_her_backlog() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    group_of(&mut net, alice, &["bob", "carol"]);
    net.take_events(carol);
    net.disconnect(carol);
    let op = send(&mut net, alice, "one");
    op_result(&mut net, alice, op).unwrap();
    let op = send(&mut net, alice, "two");
    op_result(&mut net, alice, op).unwrap();
    net.run();
    let (one, two) = (id_of(&mut net, bob, "one"), id_of(&mut net, bob, "two"));
    let now = net.now_ms;
    let op = net
        .client(bob)
        .react(now, "friends", one, "✅", false)
        .unwrap();
    op_result(&mut net, bob, op).unwrap();
    let op = net
        .client(bob)
        .send_reply(now, "friends", two, "ok")
        .unwrap();
    op_result(&mut net, bob, op).unwrap();
    let op = net.client(alice).edit(now, "friends", one, "one.").unwrap();
    op_result(&mut net, alice, op).unwrap();
    let op = net
        .client(alice)
        .delete_message(now, "friends", two)
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();

    net.connect(carol);
    net.run();
    let events = net.take_events(carol);
    let seen: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(format!("message {}", m.text)),
            Event::Reacted { to, emoji, .. } if *to == one => Some(format!("reacted {emoji}")),
            Event::Edited { to, text, .. } if *to == one => Some(format!("edited {text}")),
            Event::Deleted { to, .. } if *to == two => Some("deleted two".to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        seen,
        [
            "message one",
            "message two",
            "reacted ✅",
            "message ok",
            "edited one.",
            "deleted two"
        ],
        "{events:?}"
    );
    let rendered = histories_equal(&mut net, &[alice, bob, carol]);
    assert_eq!(rendered[0].text, "one.");
    assert!(rendered[1].deleted);
}
