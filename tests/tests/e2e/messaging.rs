//! Replies, reactions, edits and deletes (issue 13) between three users through the real
//! relay over TLS: every kind round-trips, every member renders the same history, and a
//! deleted message's texts are gone from the members' database files.

use cove::{ChatMessage, Device, Event};
use cove_core::{MessageId, Quote, Reaction};

use crate::support::*;

/// Runs a chat command on `device` and waits until the relay accepted what it sent.
async fn run<E: std::fmt::Debug + Send + 'static>(
    device: &Device,
    f: impl FnOnce(
        &mut cove_core::Client<cove_core::cove_store::SqliteStore>,
        u64,
    ) -> Result<cove_core::OpId, E>
    + Send
    + 'static,
) {
    device
        .session()
        .op(WAIT, move |c| f(c, cove::session::now_ms()))
        .await
        .unwrap()
        .unwrap();
}

/// `device`'s rendered history of `group` (the core's).
async fn rendered(device: &Device, group: &'static str) -> Vec<ChatMessage> {
    device
        .session()
        .call(move |c| c.history(group))
        .await
        .unwrap()
        .unwrap()
}

/// The id of the message of `device`'s history with this text.
async fn id_of(device: &Device, text: &str) -> MessageId {
    rendered(device, "trio")
        .await
        .into_iter()
        .find(|m| m.text == text)
        .unwrap_or_else(|| panic!("{} holds no {text:?}", device.user()))
        .id
}

/// alice, bob and carol: a reply, a reaction, an edit, a second message edited, replied to
/// and deleted by its author. Every member gets the events, renders the same history (the
/// edit history, the reaction, the replies quoting the current text, the deleted message
/// empty), and after closing, the decrypted pages of each member's `cove.db` (free pages
/// included) hold the kept text but no text of the deleted message (its own, its edit's,
/// the quote of the reply to it), while the relay's data holds none of the texts or the
/// emoji.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chat_kind_round_trips_renders_the_same_and_a_delete_leaves_no_text() {
    let net = Net::sqlite().await;
    let mut alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    let mut carol = net.user("carol").await;
    alice.create_group("trio").await.unwrap();
    alice
        .add_users("trio", &names(&["bob", "carol"]))
        .await
        .unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;

    alice.send_text("trio", "KEEP-CANARY hello").await.unwrap();
    let hello = messages(&mut bob, 1).await[0].id;
    messages(&mut carol, 1).await;
    run(&bob, move |c, now| {
        c.send_reply(now, "trio", hello, "REPLY-CANARY hi")
    })
    .await;
    run(&carol, move |c, now| {
        c.react(now, "trio", hello, "🎉", false)
    })
    .await;
    run(&alice, move |c, now| {
        c.edit(now, "trio", hello, "KEEP-CANARY hello, edited")
    })
    .await;

    alice.send_text("trio", "DOOMED-CANARY one").await.unwrap();
    let doomed = id_of(&alice, "DOOMED-CANARY one").await;
    run(&alice, move |c, now| {
        c.edit(now, "trio", doomed, "DOOMED-CANARY two")
    })
    .await;
    until(
        &mut bob,
        "the edit",
        |e| matches!(e, Event::Edited { to, .. } if *to == doomed),
    )
    .await;
    run(&bob, move |c, now| {
        c.send_reply(now, "trio", doomed, "about that")
    })
    .await;
    run(&alice, move |c, now| c.delete_message(now, "trio", doomed)).await;
    alice.send_text("trio", SENTINEL).await.unwrap();

    for device in [&mut alice, &mut bob, &mut carol] {
        let who = device.user().to_string();
        let mut reacted = 0;
        let mut edited = 0;
        let mut deleted = 0;
        until(device, "the sentinel", |e| match e {
            Event::Reacted { to, emoji, .. } if *to == hello && emoji == "🎉" => {
                reacted += 1;
                false
            }
            Event::Edited { to, .. } if *to == hello || *to == doomed => {
                edited += 1;
                false
            }
            Event::Deleted { to, by, .. } if *to == doomed && by.as_str() == "alice" => {
                deleted += 1;
                false
            }
            Event::Message(m) => m.text == SENTINEL,
            _ => false,
        })
        .await;
        // bob read his events up to the second edit above: the reaction and both edits
        // are behind him already.
        let expected = if who == "bob" { (0, 0, 1) } else { (1, 2, 1) };
        assert_eq!((reacted, edited, deleted), expected, "{who}'s events");
    }

    let history = rendered(&alice, "trio").await;
    assert_eq!(
        rendered(&bob, "trio").await,
        history,
        "bob renders as alice"
    );
    assert_eq!(
        rendered(&carol, "trio").await,
        history,
        "carol renders as alice"
    );
    assert_eq!(history.len(), 5, "{history:#?}");
    let alice_name = cove::UserName::new("alice").unwrap();
    assert_eq!(history[0].text, "KEEP-CANARY hello, edited");
    assert_eq!(history[0].edits, vec!["KEEP-CANARY hello".to_string()]);
    assert_eq!(
        history[0].reactions,
        vec![Reaction {
            emoji: "🎉".into(),
            users: vec![cove::UserName::new("carol").unwrap()],
        }]
    );
    assert_eq!(
        history[1].reply_to,
        Some(Quote {
            id: hello,
            from: Some(alice_name.clone()),
            text: "KEEP-CANARY hello, edited".into(),
        })
    );
    assert!(history[2].deleted && history[2].id == doomed);
    assert!(history[2].text.is_empty() && history[2].edits.is_empty());
    assert_eq!(history[3].text, "about that");
    assert_eq!(
        history[3].reply_to,
        Some(Quote {
            id: doomed,
            from: Some(alice_name),
            text: String::new(),
        })
    );
    assert_eq!(history[4].text, SENTINEL);

    for device in [alice, bob, carol] {
        device.close().await;
    }
    for who in ["alice", "bob", "carol"] {
        let home = net.home(who);
        let key: [u8; 32] = hex::decode(std::fs::read_to_string(home.key_path()).unwrap().trim())
            .unwrap()
            .try_into()
            .unwrap();
        let wal = home.database_path().with_extension("db-wal");
        assert!(
            std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
            "{who}'s WAL is checkpointed at close"
        );
        let pages = sqlcipher_plaintext(&home.database_path(), &key);
        assert!(
            contains(&pages, b"KEEP-CANARY hello, edited"),
            "{who}: the scan reads the database (a kept text is found)"
        );
        assert!(
            !contains(&pages, b"DOOMED-CANARY"),
            "{who}'s database still holds a text of the deleted message"
        );
    }
    for f in files_under(net.relay_data()) {
        let data = std::fs::read(&f).unwrap();
        for needle in ["CANARY", "🎉", "about that"] {
            assert!(
                !contains(&data, needle.as_bytes()),
                "{needle:?} in the relay's {}",
                f.display()
            );
        }
    }
}
