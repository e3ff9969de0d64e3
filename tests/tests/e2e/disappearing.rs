//! Issue 13, the group settings end to end (three users, the real relay over TLS, real
//! SQLCipher homes): a disappearing message vanishes from every device's database files
//! and, after retention, from the relay's; read receipts, unread counts and typing
//! round-trip, and typing is not stored.

use std::path::PathBuf;
use std::time::Duration;

use cove::session::now_ms;
use cove::{Device, Event};
use cove_core::cove_store::Store as _;
use cove_core::{Content, Envelope, GroupChange, MessageId};
use cove_wire::{GroupId, Reply, Request, Seq};

use crate::support::*;

/// Whether `home`'s database or its write-ahead log, decrypted, holds `needle`.
fn home_holds(home: &cove::config::Home, needle: &[u8]) -> bool {
    let key = database_key(home);
    let db = home.database_path();
    let mut wal = db.clone().into_os_string();
    wal.push("-wal");
    [db, PathBuf::from(wal)]
        .iter()
        .any(|f| contains(&sqlcipher_plaintext(f, key.as_bytes()), needle))
}

/// `device`'s unread count of its (only) group.
async fn unread(device: &Device) -> u32 {
    device
        .session()
        .call(|c| c.groups()[0].unread)
        .await
        .unwrap()
}

/// The relay's copy of entry `seq` of `group`, as `device` fetches it (`None` once pruned).
async fn relay_entry(device: &Device, group: GroupId, seq: Seq) -> Option<Vec<u8>> {
    let reply = device
        .probe(Request::Fetch {
            group,
            after: Seq(seq.0 - 1),
            limit: 1,
        })
        .await
        .unwrap();
    match reply {
        Ok(Reply::Entries { entries }) => entries
            .0
            .into_iter()
            .find(|e| e.seq == seq)
            .map(|e| e.payload.as_bytes().to_vec()),
        other => panic!("fetch: {other:?}"),
    }
}

/// Three users; alice turns a 2-second timer on (every member is told); bob's message then
/// expires on all three devices (`Event::Expired`), after which none of their databases or
/// write-ahead logs, decrypted page by page, holds its text, while a message from before
/// the timer is still there (so the scan reads what it should). Once every member has
/// acknowledged it, the relay's retention prunes the message's ciphertext: a fetch no
/// longer returns it and no file of the relay's data directory holds its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disappearing_message_vanishes_from_every_device_and_the_relay() {
    let net = Net::sqlite().await;
    let mut alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    let mut carol = net.user("carol").await;
    alice.create_group("vanishing").await.unwrap();
    alice
        .add_users("vanishing", &names(&["bob", "carol"]))
        .await
        .unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;
    let group = group_id(&alice, "vanishing").await;
    let control = "CONTROL-STAYS-1234567";
    alice.send_text("vanishing", control).await.unwrap();
    for d in [&mut bob, &mut carol] {
        assert_eq!(texts(&messages(d, 1).await), vec![control.to_string()]);
    }

    alice
        .session()
        .op(WAIT, |c| c.set_disappearing(now_ms(), "vanishing", Some(2)))
        .await
        .unwrap()
        .unwrap();
    for d in [&mut alice, &mut bob, &mut carol] {
        until(d, "the timer", |e| {
            matches!(
                e,
                Event::GroupChanged { change: GroupChange::Disappearing(Some(2)), by, .. }
                    if by.as_str() == "alice"
            )
        })
        .await;
    }

    let secret = "DISAPPEARING-SECRET-9876543";
    bob.send_text("vanishing", secret).await.unwrap();
    let mut seq = None;
    let mut id: Option<MessageId> = None;
    for d in [&mut alice, &mut carol] {
        let got = until(
            d,
            "the secret",
            |e| matches!(e, Event::Message(m) if m.text == secret),
        )
        .await;
        let m = got.last().unwrap();
        seq = Some(m.seq);
        id = Some(m.id);
    }
    let (seq, id) = (seq.unwrap(), id.unwrap());
    // The relay's copy, before anything is pruned.
    let ciphertext = relay_entry(&alice, group, seq)
        .await
        .expect("the relay holds the entry");

    for (d, name) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
    ] {
        until(
            d,
            "the expiry",
            |e| matches!(e, Event::Expired { group: g, ids } if *g == group && ids.contains(&id)),
        )
        .await;
        let history = d.history("vanishing").await.unwrap();
        assert!(
            !history.iter().any(|m| m.text == secret),
            "{name}'s history"
        );
        let home = net.home(name);
        assert!(
            home_holds(&home, control.as_bytes()),
            "scan sanity check: {name}'s control message not found"
        );
        assert!(
            !home_holds(&home, secret.as_bytes()),
            "{name}'s database files still hold the expired text"
        );
    }

    // The relay: once every member acknowledged it, retention prunes it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        net.relay().handle().prune().await.unwrap();
        if relay_entry(&alice, group, seq).await.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never pruned the entry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let files = files_under(net.relay_data());
    let probe = &ciphertext[ciphertext.len() / 2..ciphertext.len() / 2 + 32];
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        assert!(
            !contains(&bytes, probe),
            "{} still holds the pruned ciphertext",
            f.display()
        );
    }
    for d in [alice, bob, carol] {
        d.close().await;
    }
}

/// Unread counts (others' messages only) go to zero at `mark_read`, whose receipt reaches
/// the others as `ReadUpTo` and fills `read_by` in their history; typing reaches the others
/// as `Event::Typing`, and no device stores a history record of it or of the receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_unread_counts_and_typing_round_trip() {
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
    alice.send_text("trio", "one").await.unwrap();
    alice.send_text("trio", "two").await.unwrap();
    for d in [&mut bob, &mut carol] {
        assert_eq!(texts(&messages(d, 2).await), vec!["one", "two"]);
    }
    assert_eq!(unread(&bob).await, 2);
    assert_eq!(unread(&alice).await, 0, "own messages are not unread");

    bob.session()
        .call(|c| c.mark_read(now_ms(), "trio"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unread(&bob).await, 0);
    let two = alice
        .history("trio")
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.text == "two")
        .unwrap();
    for d in [&mut alice, &mut carol] {
        until(d, "bob's receipt", |e| {
            matches!(e, Event::ReadUpTo { by, up_to, .. } if by.as_str() == "bob" && up_to.to_hex() == two.id)
        })
        .await;
    }
    let read_by = alice
        .session()
        .call(|c| c.history("trio").unwrap())
        .await
        .unwrap();
    for m in &read_by {
        assert_eq!(m.read_by, names(&["bob"]), "{}", m.text);
    }

    let sent = alice
        .session()
        .call(|c| c.set_typing(now_ms(), "trio", true))
        .await
        .unwrap()
        .unwrap();
    assert!(sent.is_some(), "connected: sent");
    for d in [&mut bob, &mut carol] {
        until(
            d,
            "alice typing",
            |e| matches!(e, Event::Typing { from, active: true, .. } if from.as_str() == "alice"),
        )
        .await;
    }
    alice.send_text("trio", SENTINEL).await.unwrap();
    for d in [&mut bob, &mut carol] {
        assert!(before_sentinel(d).await.is_empty());
    }
    let group = group_id(&alice, "trio").await;
    for d in [&alice, &bob, &carol] {
        let kinds = d
            .session()
            .call(move |c| {
                c.store()
                    .messages(&group)
                    .unwrap()
                    .into_iter()
                    .filter_map(|m| Envelope::decode(&m.content).ok().map(|e| e.content))
                    .filter(|c| matches!(c, Content::Typing { .. } | Content::ReadReceipt { .. }))
                    .count()
            })
            .await
            .unwrap();
        assert_eq!(kinds, 0, "{} stored a typing or receipt record", d.user());
    }
    for d in [alice, bob, carol] {
        d.close().await;
    }
}
