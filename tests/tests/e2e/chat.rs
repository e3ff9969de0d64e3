//! Group chat: exactly once, same order, offline catch-up, several devices per user.

use cove::config::Home;
use cove::{Device, Event, SessionEvent};

use crate::support::*;

/// Three users send concurrently; each sees every message exactly once (nothing more
/// before a sentinel sent afterwards), and all in the same order (the relay's log order),
/// both as events and in the stored history.
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

    // Sent after every other send completed: last in the log.
    alice.send_text("trio", SENTINEL).await.unwrap();

    let total = 3 * PER_USER;
    let mut seen = Vec::new();
    for device in [&mut alice, &mut bob, &mut carol] {
        let got = before_sentinel(device).await;
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
    assert_eq!(h_alice.len(), total + 1, "the messages and the sentinel");
    assert_eq!(h_alice, h_bob);
    assert_eq!(h_alice, h_carol);
    for d in [alice, bob, carol] {
        d.close().await;
    }
}

/// A member that is offline while others chat gets everything, in order, on reconnect, and
/// nothing twice (nothing but the sentinel sent after the reconnection follows).
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
    bob.settle().await.unwrap();
    alice.send_text("g", SENTINEL).await.unwrap();
    let got = before_sentinel(&mut bob).await;
    assert_eq!(texts(&got), sent, "bob's catch-up");
    let history: Vec<String> = bob
        .history("g")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(history[0], "before");
    assert_eq!(history[1..=sent.len()], sent[..]);
    assert_eq!(history[sent.len() + 1..], [SENTINEL]);
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

/// A device linked after its user's group exists: the user's other device adds it (adding
/// its own user name adds the devices the group lacks), and the messages sent right after
/// that add, by the adder and by another member, reach the new device, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_linked_later_receives_what_is_sent_right_after_it_is_added() {
    let net = Net::sqlite().await;
    let mut alice = net.user("alice").await;
    let mut bob_phone = net.user("bob").await;
    bob_phone.create_group("g").await.unwrap();
    bob_phone.add_users("g", &names(&["alice"])).await.unwrap();
    joined(&mut alice).await;
    alice.send_text("g", "before the laptop").await.unwrap();
    assert_eq!(
        texts(&messages(&mut bob_phone, 1).await),
        ["before the laptop"]
    );

    let mut bob_laptop = Device::link(&bob_phone, &net.home("bob-laptop"))
        .await
        .unwrap();
    bob_phone.add_users("g", &names(&["bob"])).await.unwrap();
    bob_phone
        .send_text("g", "right after the add")
        .await
        .unwrap();
    // alice sends once she has processed the add (her message is in the new epoch).
    until(&mut alice, "the laptop's add", |e| {
        matches!(e, cove::Event::MembersChanged { .. })
    })
    .await;
    alice.send_text("g", "from alice after").await.unwrap();
    alice.send_text("g", SENTINEL).await.unwrap();

    joined(&mut bob_laptop).await;
    let got = before_sentinel(&mut bob_laptop).await;
    assert_eq!(texts(&got), ["right after the add", "from alice after"]);
    let members = &alice.groups().await.unwrap()[0].members;
    assert_eq!(members, &["alice", "bob"]);
    for d in [alice, bob_phone, bob_laptop] {
        d.close().await;
    }
}

/// A relay with a tight request rate refuses some posts with `RateLimited`: the client
/// resends each when the relay's `retry_after_ms` is over (its timer, not a reconnection),
/// and every message arrives exactly once, in the order sent (nothing else before a
/// sentinel sent afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_posts_are_resent_after_the_delay_and_arrive_once() {
    // 10/s: alice's 60 posts must outrun it on a busy machine too (her acks, which used to
    // double her requests, are rare since the client acks by count).
    let net = Net::with_limits(cove_server::Limits {
        requests_per_second: 10,
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
    // Some posts were refused and resent on the timer (while the connection stayed up):
    // alice's events up to the echo of her last message, which follows every resend.
    let last = sent.last().unwrap().clone();
    let mut resent = false;
    let mut disconnected = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, alice.next_event())
            .await
            .expect("alice's last message echoed in time")
            .expect("alice's session running");
        match event {
            SessionEvent::Core(Event::Warning(cove_core::error::Warning::Resending {
                error,
                ..
            })) if error.code == cove_wire::ErrorCode::RateLimited => {
                resent = true;
            }
            SessionEvent::Disconnected(_) => disconnected = true,
            SessionEvent::Core(Event::Message(m)) if m.text == last => break,
            _ => {}
        }
    }
    assert!(resent, "the relay refused at least one post");
    assert!(!disconnected, "resent without reconnecting");
    alice.send_text("g", SENTINEL).await.unwrap();
    let got = before_sentinel(&mut bob).await;
    assert_eq!(texts(&got), sent, "each once, in order, nothing else");
    alice.close().await;
    bob.close().await;
}

/// A relay whose per-sender post quota (burst 10, ten posts a second) is smaller than what
/// alice sends at once refuses the posts over it with `RateLimited` ("too many posts by this
/// device to this group"), not stored: the client resends each after the relay's
/// `retry_after_ms`, on its timer (no reconnection), and every message arrives exactly
/// once, in the order sent (nothing else before a sentinel sent afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_over_the_sender_quota_are_resent_after_the_delay_and_arrive_once() {
    let net = Net::with_limits(cove_server::Limits {
        sender_posts_per_minute: 600,
        sender_post_burst: 10,
        ..cove_server::Limits::default()
    })
    .await;
    let mut alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    alice.create_group("g").await.unwrap();
    alice.add_users("g", &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;

    let sent: Vec<String> = (0..30).map(|i| format!("q{i}")).collect();
    for text in &sent {
        alice.send_text("g", text).await.unwrap();
    }
    let last = sent.last().unwrap().clone();
    let mut over_quota = false;
    let mut disconnected = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, alice.next_event())
            .await
            .expect("alice's last message echoed in time")
            .expect("alice's session running");
        match event {
            SessionEvent::Core(Event::Warning(cove_core::error::Warning::Resending {
                error,
                ..
            })) if error.code == cove_wire::ErrorCode::RateLimited => {
                assert_eq!(error.message, "too many posts by this device to this group");
                over_quota = true;
            }
            SessionEvent::Disconnected(_) => disconnected = true,
            SessionEvent::Core(Event::Message(m)) if m.text == last => break,
            _ => {}
        }
    }
    assert!(over_quota, "the relay refused at least one post over quota");
    assert!(!disconnected, "resent without reconnecting");
    alice.send_text("g", SENTINEL).await.unwrap();
    let got = before_sentinel(&mut bob).await;
    assert_eq!(texts(&got), sent, "each once, in order, nothing else");
    alice.close().await;
    bob.close().await;
}

/// A long outage: bob is offline while alice sends more than one backlog page
/// (`MAX_FETCH_ENTRIES`) of messages, and the relay goes down (`kill -9`) in the middle; bob
/// starts while it is down, fails to connect several times, and reconnects by himself once
/// it is back. He then has every message exactly once, in order (nothing but the sentinel
/// follows), as events and in his history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_back_after_a_long_outage_gets_more_than_a_backlog_page_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    // Alice sends 600 messages at once: far past the default post quota of a device in a
    // group (burst 240, then 120/min), which this test is not about.
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[limits]\nsender_posts_per_minute = 100000\nsender_post_burst = 100000\n",
    )
    .unwrap();
    let args = [std::ffi::OsStr::new("--config"), config.as_os_str()];
    let relay = RelayProcess::spawn_with(&data, "127.0.0.1:0", &args);
    let addr = relay.addr;
    let server = format!("wss://{addr}");
    let ca = data.join("tls").join("cert.pem");
    let home = |n: &str| Home::new(dir.path().join(n));
    let alice = register(&home("alice"), &server, "alice", &ca).await;
    let mut bob = register(&home("bob"), &server, "bob", &ca).await;
    alice.create_group("g").await.unwrap();
    alice.add_users("g", &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;
    bob.settle().await.unwrap();
    bob.close_now().await;

    let page = cove_core::cove_wire::limits::MAX_FETCH_ENTRIES as usize;
    let sent: Vec<String> = (0..page + 100).map(|i| format!("outage {i:04}")).collect();
    let (first, second) = sent.split_at(page / 2);
    for text in first {
        alice.send_text("g", text).await.unwrap();
    }

    // The relay goes down; bob starts meanwhile and keeps failing to connect.
    relay.kill9();
    let mut bob = Device::open(&home("bob")).await.unwrap();
    let mut failures = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while failures < 3 {
        match tokio::time::timeout_at(deadline, bob.next_event()).await {
            Ok(Some(SessionEvent::Disconnected(_))) => failures += 1,
            Ok(Some(SessionEvent::Connected)) => panic!("connected to a relay that is down"),
            Ok(Some(_)) => {}
            Ok(None) => panic!("bob's session stopped"),
            Err(_) => panic!("bob did not retry in time"),
        }
    }

    // Back on the same address and data; alice (reconnecting by herself) sends the rest.
    let relay = RelayProcess::spawn_with(&data, &addr.to_string(), &args);
    assert_eq!(relay.addr, addr);
    for text in second {
        alice.send_text("g", text).await.unwrap();
    }
    alice.send_text("g", SENTINEL).await.unwrap();

    let got = before_sentinel(&mut bob).await;
    assert_eq!(got.len(), sent.len(), "bob got {} messages", got.len());
    assert_eq!(texts(&got), sent, "each once, in the order sent");
    let history: Vec<String> = bob
        .history("g")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(history[..sent.len()], sent[..]);
    assert_eq!(history[sent.len()..], [SENTINEL]);
    alice.close().await;
    bob.close().await;
    drop(relay);
}
