//! Chaos: the real `cove-server` binary on its SQLite store is killed with SIGKILL in a loop
//! and restarted on the same address and data directory, while three users send, add and
//! remove each other in a shared group and make groups of their own. Afterwards nothing the
//! relay acknowledged is lost, nothing is shown twice, no group forked and none is wedged.
//!
//! Bounded: 60 s of chaos by default, `COVE_CHAOS_SECS` for longer. The schedule (kill
//! intervals, every user's choices) comes from one seed, printed at the start;
//! `COVE_CHAOS_SEED=N` runs the same schedule again (the interleaving with the relay's
//! restarts still varies from run to run).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cove::config::Home;
use cove::{ChatMessage, Device, DeviceId, Event, GroupId, Sent};
use cove_core::cove_wire::{EntryKind, GroupEntry, Reply, Request, Seq};
use tokio::time::Instant;

use crate::support::*;

const USERS: [&str; 3] = ["alice", "bob", "carol"];
/// The group every user works in.
const SHARED: &str = "shared";

/// The relay is killed with SIGKILL and restarted in a loop (every 0.3 to 3 s, down for up
/// to 0.3 s, one time in five for 1 to 4 s) while alice, bob and carol, each a library
/// client with its own SQLite store and a command timeout of 2 to 10 s (so that some sends
/// are left queued in the outbox and some commands fail), concurrently send texts to the shared group, add and remove each other there, and
/// create groups of their own (adding one other user and sending there). Then the relay is
/// left up, every user is added back to the shared group, and the test checks:
///
/// - **Nothing acknowledged is lost.** A message is acknowledged when `send_text` returned
///   [`Sent::Delivered`] (the relay answered `Posted`); it must be in its sender's history.
///   A device that is a member at the end was one in every epoch since the commit that last
///   added it (the creator: since epoch 0). Every message in the relay's log sent in one of
///   those epochs by another device (including every acknowledged one, whose log entry at the
///   position in its sender's history must name that sender) is in that device's history and
///   was shown to it (an [`Event::Message`]). A device removed after a message was sent,
///   even if added back later, is not required to have it: a re-joining device starts at
///   its Welcome.
/// - **Nothing is shown twice.** No device's [`Event::Message`] stream, over the whole run,
///   holds a message id twice, nor does any history; every history holds a log position
///   once, and two devices holding the same position hold the same message there.
/// - **Nothing refused is sent.** The text of a `send_text` that returned an error (it
///   promises the message was not sent and will not be) is on no device.
/// - **No fork.** Every group ends with all its members in the same epoch with equal epoch
///   authenticators.
/// - **No wedged group.** Afterwards every member of every group sends a final message there
///   (acknowledged), and every other member receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let seed = std::env::var("COVE_CHAOS_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("COVE_CHAOS_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let secs: u64 = std::env::var("COVE_CHAOS_SECS")
        .ok()
        .map(|s| s.parse().expect("COVE_CHAOS_SECS is a number"))
        .unwrap_or(60);
    println!("chaos: COVE_CHAOS_SEED={seed} COVE_CHAOS_SECS={secs}");
    let started = Instant::now();
    let mut rng = Rng::new(seed);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let relay = RelayProcess::spawn(&data, "127.0.0.1:0");
    let addr = relay.addr;
    let server = format!("wss://{addr}");
    let ca = data.join("tls").join("cert.pem");
    let home = |n: &str| Home::new(dir.path().join(n));
    let mut devices = Vec::new();
    for user in USERS {
        let mut d = register(&home(user), &server, user, &ca).await;
        d.set_timeout(Duration::from_secs(rng.range(2, 11)));
        devices.push(d);
    }
    let ids: Vec<DeviceId> = devices.iter().map(|d| d.device_id().unwrap()).collect();
    devices[0].create_group(SHARED).await.unwrap();
    devices[0]
        .add_users(SHARED, &names(&["bob", "carol"]))
        .await
        .unwrap();
    // Every user adds and removes at random: all are admins (issue 13).
    for u in ["bob", "carol"] {
        devices[0].promote(SHARED, &names(&[u])[0]).await.unwrap();
    }

    // The chaos: a killer and three users, until the deadline.
    let end = Instant::now() + Duration::from_secs(secs);
    let killer = tokio::spawn(kill_in_a_loop(
        relay,
        data.clone(),
        addr,
        end,
        Rng::new(rng.next()),
    ));
    let mut users = Vec::new();
    for (me, device) in devices.into_iter().enumerate() {
        users.push(tokio::spawn(act(me, device, end, Rng::new(rng.next()))));
    }
    let mut devices = Vec::new();
    let mut logs = Vec::new();
    for u in users {
        let (device, log) = u.await.unwrap();
        devices.push(device);
        logs.push(log);
    }
    let (relay, kills) = killer.await.unwrap();
    for (me, log) in logs.iter().enumerate() {
        println!(
            "chaos: {}: {} sent ({} acknowledged, {} queued, {} refused), {} changes ({} failed): {:?}",
            USERS[me],
            log.acked.len() + log.queued.len() + log.refused.len(),
            log.acked.len(),
            log.queued.len(),
            log.refused.len(),
            log.changes,
            log.changes_failed,
            log.errors,
        );
    }
    println!("chaos: {kills} kills in {secs} s");
    assert!(kills > 0, "the relay was never killed");

    // The relay stays up now. Everyone is caught up and a member of the shared group again.
    for d in devices.iter_mut() {
        d.set_timeout(WAIT);
        settle(d).await;
    }
    readd_everyone(&mut devices).await;

    // No fork: per group, all members in one epoch with equal authenticators.
    let groups = converge(&mut devices).await;

    // No wedged group: every member sends a final message in each of its groups.
    let mut finals: Vec<BTreeSet<String>> = vec![BTreeSet::new(); USERS.len()];
    for (name, (_, members, _)) in &groups {
        for &m in members {
            let text = format!("final from {} in {name}", USERS[m]);
            assert_eq!(
                devices[m].send_text(name, &text).await.unwrap(),
                Sent::Delivered,
                "{}'s final message in {name}",
                USERS[m]
            );
            for &other in members.iter().filter(|&&o| o != m) {
                finals[other].insert(text.clone());
            }
        }
    }
    // Everything each device was shown, over the whole run, up to the others' finals.
    let mut shown: Vec<Vec<ChatMessage>> = Vec::new();
    for (me, d) in devices.iter_mut().enumerate() {
        let mut missing = finals[me].clone();
        let got = until(d, "every other member's final message", |e| {
            if let Event::Message(m) = e {
                missing.remove(&m.text);
            }
            missing.is_empty()
        })
        .await;
        assert_unique(USERS[me], &got);
        shown.push(got);
    }

    // Every device's history of every group (empty where it is not a member).
    let mut histories: Vec<BTreeMap<String, Vec<cove::MessageView>>> = Vec::new();
    for d in &devices {
        let mut per_group = BTreeMap::new();
        for name in groups.keys() {
            per_group.insert(name.clone(), d.history(name).await.unwrap_or_default());
        }
        histories.push(per_group);
    }
    let (mut checked, mut readable_checked) = (0usize, 0usize);
    for (name, (group, members, epoch)) in &groups {
        // Same position, same message, on every device; each position and id once.
        let mut at: BTreeMap<u64, String> = BTreeMap::new();
        for (me, h) in histories.iter().enumerate() {
            let h = &h[name];
            let seqs: BTreeSet<u64> = h.iter().map(|m| m.seq).collect();
            assert_eq!(seqs.len(), h.len(), "{} holds a position twice", USERS[me]);
            let ids: BTreeSet<&str> = h.iter().map(|m| m.id.as_str()).collect();
            assert_eq!(ids.len(), h.len(), "{} holds a message twice", USERS[me]);
            for m in h {
                let first = at.entry(m.seq).or_insert_with(|| m.id.clone());
                assert_eq!(
                    *first, m.id,
                    "{name} position {} differs on {}",
                    m.seq, USERS[me]
                );
            }
        }
        // Each member reads the log from the commit that last added it (the creator: from
        // the start), so the commits it reads are all those since; the epoch that commit
        // began is `joined`, and the member stayed one in every epoch from there on.
        let mut readable: Vec<BTreeMap<u64, GroupEntry>> = vec![BTreeMap::new(); USERS.len()];
        for &to in members {
            let log = fetch_log(&devices[to], *group).await;
            let commits = log
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::Commit { .. }))
                .count() as u64;
            let joined = epoch
                .checked_sub(commits)
                .expect("no more commits since the join than epochs");
            readable[to] = log
                .into_iter()
                .filter(|e| matches!(e.kind, EntryKind::Application) && e.epoch.0 >= joined)
                .map(|e| (e.seq.0, e))
                .collect();
            // Every message another member sent there since is in its history and was shown.
            for (seq, e) in &readable[to] {
                if e.sender == ids[to] {
                    continue;
                }
                readable_checked += 1;
                let Some(m) = histories[to][name].iter().find(|m| m.seq == *seq) else {
                    panic!(
                        "{name}: {} lacks the message at {seq} (epoch {}, from device {}; it joined in epoch {joined})",
                        USERS[to], e.epoch.0, e.sender.0
                    );
                };
                assert!(
                    shown[to].iter().any(|s| s.id.to_hex() == m.id),
                    "{name}: {} has {:?} in its history but was not shown it",
                    USERS[to],
                    m.text
                );
            }
        }
        // Every acknowledged message is in its sender's history and at that position in the
        // relay's log, from its sender, so every member that stayed one since has it.
        for (from, log) in logs.iter().enumerate() {
            for text in log
                .acked
                .iter()
                .filter(|s| s.group == *name)
                .map(|s| &s.text)
            {
                let Some(sent) = histories[from][name].iter().find(|m| &m.text == text) else {
                    panic!(
                        "{}'s acknowledged {text:?} is not in its history",
                        USERS[from]
                    );
                };
                for &to in members.iter().filter(|&&to| to != from) {
                    if let Some(e) = readable[to].get(&sent.seq) {
                        assert_eq!(e.sender, ids[from], "{text:?}: the entry's sender");
                        checked += 1;
                    }
                }
            }
        }
    }
    // The checks above checked something.
    assert!(
        checked > 0,
        "no acknowledged message had a member left to check"
    );
    // Nothing refused was sent.
    for (from, log) in logs.iter().enumerate() {
        for s in &log.refused {
            for (to, h) in histories.iter().enumerate() {
                assert!(
                    h.values().flatten().all(|m| m.text != s.text),
                    "{}'s {:?} was refused, yet {} has it",
                    USERS[from],
                    s.text,
                    USERS[to]
                );
            }
        }
    }
    println!(
        "chaos: {readable_checked} deliveries checked ({checked} of acknowledged messages) in {} groups; {:.0?} in all",
        groups.len(),
        started.elapsed()
    );
    for d in devices {
        d.close().await;
    }
    drop(relay);
}

/// A text handed to `send_text`.
struct Text {
    group: String,
    text: String,
}

/// What one user did.
#[derive(Default)]
struct Log {
    /// Sends the relay acknowledged ([`Sent::Delivered`]).
    acked: Vec<Text>,
    /// Sends left in the outbox ([`Sent::Queued`]).
    queued: Vec<Text>,
    /// Sends that returned an error (not sent, and never to be).
    refused: Vec<Text>,
    /// Membership changes and group creations attempted.
    changes: usize,
    /// ... of which returned an error.
    changes_failed: usize,
    /// Errors seen, by message, with counts (for the printout).
    errors: BTreeMap<String, usize>,
}

impl Log {
    fn error(&mut self, e: cove::DeviceError) {
        *self.errors.entry(e.to_string()).or_default() += 1;
    }
}

/// Kills the relay with SIGKILL and restarts it on the same address and data directory, at
/// random intervals, until `until`; returns the running relay and the number of kills.
async fn kill_in_a_loop(
    mut relay: RelayProcess,
    data: PathBuf,
    addr: SocketAddr,
    until: Instant,
    mut rng: Rng,
) -> (RelayProcess, usize) {
    let mut kills = 0;
    loop {
        // The chaos schedule, not a condition of the test.
        let up = Duration::from_millis(rng.range(300, 3000));
        if Instant::now() + up >= until {
            tokio::time::sleep_until(until).await;
            return (relay, kills);
        }
        tokio::time::sleep(up).await;
        let down = Duration::from_millis(if rng.below(5) == 0 {
            rng.range(1000, 4000)
        } else {
            rng.range(0, 300)
        });
        let data = data.clone();
        relay = tokio::task::spawn_blocking(move || {
            relay.kill9();
            std::thread::sleep(down);
            let relay = RelayProcess::spawn(&data, &addr.to_string());
            assert_eq!(relay.addr, addr);
            relay
        })
        .await
        .unwrap();
        kills += 1;
    }
}

/// One user's part of the chaos: random sends, adds, removes and new groups until `until`.
async fn act(me: usize, device: Device, until: Instant, mut rng: Rng) -> (Device, Log) {
    let mut log = Log::default();
    let user = USERS[me];
    let mut own: Vec<String> = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let members = shared_members(&device).await;
        let others: Vec<&str> = USERS.iter().copied().filter(|u| *u != user).collect();
        let roll = rng.below(100);
        if members.is_some() && roll < 70 || !own.is_empty() && roll >= 95 {
            let group = if roll < 70 {
                SHARED.to_owned()
            } else {
                own[rng.below(own.len() as u64) as usize].clone()
            };
            let text = format!("{user} {n} in {group}");
            let result = device.send_text(&group, &text).await;
            let text = Text { group, text };
            match result {
                Ok(Sent::Delivered) => log.acked.push(text),
                Ok(Sent::Queued) => log.queued.push(text),
                Err(e) => {
                    log.error(e);
                    log.refused.push(text);
                }
            }
        } else if let Some(members) = members.filter(|_| roll < 90) {
            // Add one who is not a member, or remove one who is.
            let add = roll < 86;
            let pick: Vec<&str> = others
                .iter()
                .copied()
                .filter(|o| members.contains(*o) != add)
                .collect();
            if pick.is_empty() {
                continue;
            }
            let who = names(&[pick[rng.below(pick.len() as u64) as usize]]);
            log.changes += 1;
            let result = if add {
                device.add_users(SHARED, &who).await
            } else {
                device.remove_users(SHARED, &who).await
            };
            if let Err(e) = result {
                log.changes_failed += 1;
                log.error(e);
            }
        } else if own.len() < 4 {
            // A group of one's own, with one other user in it.
            let name = format!("{user}'s group {n}");
            log.changes += 1;
            match device.create_group(&name).await {
                Ok(_) => {
                    own.push(name.clone());
                    let who = names(&[others[rng.below(2) as usize]]);
                    log.changes += 1;
                    if let Err(e) = device.add_users(&name, &who).await {
                        log.changes_failed += 1;
                        log.error(e);
                    }
                }
                Err(e) => {
                    log.changes_failed += 1;
                    log.error(e);
                }
            }
        }
        // Think time (the chaos schedule, not a condition of the test).
        tokio::time::sleep(Duration::from_millis(rng.range(10, 150))).await;
    }
    (device, log)
}

/// The users in the shared group as `device` sees it, `None` if it is not a member.
async fn shared_members(device: &Device) -> Option<BTreeSet<String>> {
    let groups = device.groups().await.ok()?;
    let g = groups.into_iter().find(|g| g.name == SHARED)?;
    Some(g.members.into_iter().collect())
}

/// Waits until `device` is connected, caught up and idle.
async fn settle(device: &mut Device) {
    let deadline = Instant::now() + WAIT;
    while let Err(e) = device.settle().await {
        assert!(
            Instant::now() < deadline,
            "{} does not settle: {e}",
            device.user()
        );
    }
}

/// A member of the shared group adds whoever is not one back, until all three are in it.
async fn readd_everyone(devices: &mut [Device]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut missing = Vec::new();
        let mut member = None;
        for (i, d) in devices.iter_mut().enumerate() {
            settle(d).await;
            match shared_members(d).await {
                Some(_) => member = member.or(Some(i)),
                None => missing.push(USERS[i]),
            }
        }
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing:?} not back in the shared group"
        );
        let member = member.expect("the shared group has a member left");
        let seen = shared_members(&devices[member]).await.unwrap_or_default();
        let add: Vec<&str> = missing
            .iter()
            .copied()
            .filter(|u| !seen.contains(*u))
            .collect();
        if !add.is_empty() {
            // An error (e.g. a racing commit) is retried by the next round.
            let _ = devices[member].add_users(SHARED, &names(&add)).await;
        } else {
            // Added, the Welcome on its way. Poll interval only: the loop condition decides.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until, in every group, all members are in one epoch, and asserts their epoch
/// authenticators are equal. Returns every group by name with its id, its members (indexes
/// into `devices`) and its epoch.
async fn converge(devices: &mut [Device]) -> BTreeMap<String, (GroupId, Vec<usize>, u64)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut groups: BTreeMap<String, (GroupId, Vec<usize>, u64)> = BTreeMap::new();
        let mut states: BTreeMap<String, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for (i, d) in devices.iter_mut().enumerate() {
            settle(d).await;
            for g in d.groups().await.unwrap() {
                let id = GroupId::from_hex(&g.id).unwrap();
                let Some(state) = d.epoch_state(id).await.unwrap() else {
                    continue;
                };
                let entry = groups
                    .entry(g.name.clone())
                    .or_insert((id, Vec::new(), state.0));
                assert_eq!(entry.0, id, "two groups named {:?}", g.name);
                entry.1.push(i);
                states.entry(g.name).or_default().push(state);
            }
        }
        let settled = states.values().all(|s| s.iter().all(|e| e.0 == s[0].0));
        if settled {
            for (name, s) in &states {
                for (i, state) in s.iter().enumerate() {
                    assert_eq!(
                        state, &s[0],
                        "{name}: {} forked from {}",
                        USERS[groups[name].1[i]], USERS[groups[name].1[0]]
                    );
                }
            }
            assert_eq!(
                groups[SHARED].1,
                [0, 1, 2],
                "everyone is in the shared group"
            );
            return groups;
        }
        assert!(
            Instant::now() < deadline,
            "members still in different epochs: {:?}",
            states
                .iter()
                .map(|(n, s)| (n, s.iter().map(|e| e.0).collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        );
        // Poll interval only: the condition above decides.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whole log of `group` on the relay, read by a member.
async fn fetch_log(member: &Device, group: GroupId) -> Vec<GroupEntry> {
    let mut all: Vec<GroupEntry> = Vec::new();
    loop {
        let after = all.last().map_or(Seq(0), |e| e.seq);
        let fetch = Request::Fetch {
            group,
            after,
            limit: 500,
        };
        // The probe's connection and the member's own session displace each other (one
        // connection per device): the session reconnects by itself and may push the probe
        // off before it is answered. A fetch is a read, so it is simply sent again.
        let mut attempts = 0;
        let reply = loop {
            match member.probe(fetch.clone()).await {
                Ok(reply) => break reply.unwrap(),
                Err(e) if attempts < 20 && format!("{e:?}").contains("Displaced") => {
                    attempts += 1;
                    eprintln!("fetch_log: probe displaced ({e}), again");
                }
                Err(e) => panic!("the probe failed {attempts} times: {e}"),
            }
        };
        let entries = match reply {
            Reply::Entries { entries } => entries.0,
            other => panic!("unexpected {other:?}"),
        };
        if entries.is_empty() {
            return all;
        }
        all.extend(entries);
    }
}

/// A small seeded generator (splitmix64): the same seed, the same schedule.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }
}
