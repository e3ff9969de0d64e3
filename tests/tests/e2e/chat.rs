//! Group chat: exactly once, same order, offline catch-up, several devices per user.

use std::time::Duration;

use cove::{Device, Event, SessionEvent};

use crate::support::*;

/// Three users send concurrently; each sees every message exactly once, and all in the
/// same order (the relay's log order), both as events and in the stored history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_see_every_message_once_in_the_same_order() {
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

    const PER_USER: usize = 8;
    async fn send(d: &Device, who: &str) {
        for i in 0..PER_USER {
            d.send_text("trio", &format!("{who} #{i}")).await.unwrap();
        }
    }
    // All three send at the same time.
    tokio::join!(
        send(&alice, "alice"),
        send(&bob, "bob"),
        send(&carol, "carol")
    );

    let total = 3 * PER_USER;
    let mut seen = Vec::new();
    for device in [&mut alice, &mut bob, &mut carol] {
        let mut got = messages(device, total).await;
        got.extend(quiet(device).await);
        let who = device.user().to_string();
        assert_eq!(got.len(), total, "{who} saw {} messages", got.len());
        assert_unique(&who, &got);
        // Each sender's own messages keep their sending order.
        for sender in ["alice", "bob", "carol"] {
            let mine: Vec<String> = got
                .iter()
                .filter(|m| m.from.as_str() == sender)
                .map(|m| m.text.clone())
                .collect();
            let expected: Vec<String> = (0..PER_USER).map(|i| format!("{sender} #{i}")).collect();
            assert_eq!(mine, expected, "{who}'s view of {sender}'s messages");
        }
        seen.push((who, got));
    }
    let order = |v: &[cove::ChatMessage]| v.iter().map(|m| (m.seq, m.id)).collect::<Vec<_>>();
    assert_eq!(
        order(&seen[0].1),
        order(&seen[1].1),
        "alice and bob disagree on the order"
    );
    assert_eq!(
        order(&seen[0].1),
        order(&seen[2].1),
        "alice and carol disagree on the order"
    );
    // The stored histories agree too.
    let h_alice = alice.history("trio").await.unwrap();
    let h_bob = bob.history("trio").await.unwrap();
    let h_carol = carol.history("trio").await.unwrap();
    assert_eq!(h_alice.len(), total);
    assert_eq!(h_alice, h_bob);
    assert_eq!(h_alice, h_carol);
    for d in [alice, bob, carol] {
        d.close().await;
    }
}

/// A member that is offline while others chat gets everything, in order, on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_catches_up_in_order() {
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    alice.create_group("g").await.unwrap();
    alice.add_users("g", &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;
    alice.send_text("g", "before").await.unwrap();
    let got = messages(&mut bob, 1).await;
    assert_eq!(texts(&got), ["before"]);
    bob.close_now().await;

    let sent: Vec<String> = (0..30)
        .map(|i| format!("while you were away {i}"))
        .collect();
    for text in &sent {
        alice.send_text("g", text).await.unwrap();
    }
    let mut bob = Device::open(&net.home("bob")).await.unwrap();
    let mut got = messages(&mut bob, sent.len()).await;
    got.extend(quiet(&mut bob).await);
    assert_eq!(texts(&got), sent, "bob's catch-up");
    let history: Vec<String> = bob
        .history("g")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(history[0], "before");
    assert_eq!(history[1..], sent[..]);
    alice.close().await;
    bob.close().await;
}

/// A user with two devices creates a group: the other device joins it with the first commit,
/// receives on it and sends from it; what one device sends, the other receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_two_devices_receives_on_both() {
    let net = Net::sqlite().await;
    let mut alice = net.user("alice").await;
    let mut bob_phone = net.user("bob").await;
    let mut bob_laptop = Device::link(&bob_phone, &net.home("bob-laptop"))
        .await
        .unwrap();
    assert_ne!(bob_phone.device_id(), bob_laptop.device_id());
    assert_eq!(bob_laptop.user().as_str(), "bob");

    bob_phone.create_group("g").await.unwrap();
    joined(&mut bob_laptop).await;
    bob_phone.add_users("g", &names(&["alice"])).await.unwrap();
    joined(&mut alice).await;

    alice
        .send_text("g", "to both of bob's devices")
        .await
        .unwrap();
    for bob in [&mut bob_phone, &mut bob_laptop] {
        let got = messages(bob, 1).await;
        assert_eq!(texts(&got), ["to both of bob's devices"]);
    }
    bob_laptop.send_text("g", "from the laptop").await.unwrap();
    let phone = until(
        &mut bob_phone,
        "the laptop's message",
        |e| matches!(e, cove::Event::Message(m) if m.text == "from the laptop"),
    )
    .await;
    assert_eq!(phone.last().unwrap().from.as_str(), "bob");
    assert_eq!(
        phone.last().unwrap().from_device,
        bob_laptop.device_id().unwrap()
    );
    let on_alice = messages(&mut alice, 2).await; // her own echo, then the laptop's
    assert_eq!(
        texts(&on_alice),
        ["to both of bob's devices", "from the laptop"]
    );
    let members = &alice.groups().await.unwrap()[0].members;
    assert_eq!(members, &["alice", "bob"]);
    for d in [alice, bob_phone, bob_laptop] {
        d.close().await;
    }
}

/// A relay with a tight request rate refuses some posts with `RateLimited`: the client
/// resends each when the relay's `retry_after_ms` is over (its timer, not a reconnection),
/// and every message arrives exactly once, in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_posts_are_resent_after_the_delay_and_arrive_once() {
    let net = Net::with_limits(cove_server::Limits {
        requests_per_second: 20,
        request_burst: 40,
        ..cove_server::Limits::default()
    })
    .await;
    let mut alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    alice.create_group("g").await.unwrap();
    alice.add_users("g", &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;

    let sent: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
    for text in &sent {
        alice.send_text("g", text).await.unwrap();
    }
    // Some posts were refused and resent on the timer (while the connection stayed up).
    let mut resent = false;
    let mut disconnected = false;
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(200), alice.next_event()).await
    {
        match event {
            SessionEvent::Core(Event::Warning(w)) if w.contains("will be resent") => {
                resent = true;
            }
            SessionEvent::Disconnected(_) => disconnected = true,
            _ => {}
        }
    }
    assert!(resent, "the relay refused at least one post");
    assert!(!disconnected, "resent without reconnecting");
    let got = messages(&mut bob, sent.len()).await;
    assert_eq!(texts(&got), sent);
    assert_unique("bob", &got);
    assert!(quiet(&mut bob).await.is_empty(), "no duplicates");
    alice.close().await;
    bob.close().await;
}
