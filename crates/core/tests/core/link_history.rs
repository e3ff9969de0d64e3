//! The history a device hands to a newly linked device of its user (`Client::export_history`
//! / `Client::import_history`, carried over the link channel by the shell).

use super::*;

/// alice's history of "friends" exported and imported on her linked second device shows the
/// same messages there, in order; importing it again stores nothing twice; a device's own
/// later messages follow the imported ones.
#[test]
fn an_exported_history_imports_on_a_linked_device_once() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    group_of(&mut net, alice, &["bob"]);
    let op = send(&mut net, alice, "first");
    op_result(&mut net, alice, op).unwrap();
    let op = send(&mut net, bob, "second");
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
    // The new device reads from the commit that added it: no history of its own.
    assert!(net.client(alice2).history("friends").unwrap().is_empty());

    let chunks = net.client(alice).export_history().unwrap();
    assert_eq!(chunks.len(), 1);
    let stored: usize = chunks
        .iter()
        .map(|c| net.client(alice2).import_history(c.clone()).unwrap())
        .sum();
    assert_eq!(stored, 2);
    let texts_of = |net: &mut Net<MemoryStore>, slot| -> Vec<(String, String)> {
        net.client(slot)
            .history("friends")
            .unwrap()
            .into_iter()
            .map(|m| (m.from.to_string(), m.text))
            .collect()
    };
    let expected = vec![
        ("alice".to_string(), "first".to_string()),
        ("bob".to_string(), "second".to_string()),
    ];
    assert_eq!(texts_of(&mut net, alice2), expected);
    // Again: nothing stored twice.
    assert_eq!(
        net.client(alice2)
            .import_history(chunks[0].clone())
            .unwrap(),
        0
    );
    // A message after the link follows the history.
    let op = send(&mut net, bob, "third");
    op_result(&mut net, bob, op).unwrap();
    net.run();
    let mut all = expected;
    all.push(("bob".to_string(), "third".to_string()));
    assert_eq!(texts_of(&mut net, alice2), all);
}
