//! The chat steps of the demo (issue 3): register, create a group, chat, offline catch-up,
//! removal, and a scan of the relay's data for plaintext.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

use cove::{Device, Event, GroupId, SessionEvent, UserName};
use cove_wire::{ErrorCode, Payload, PostKind, Request, Seq};

use super::{Demo, StepFuture};

const GROUP: &str = "friends";

pub fn register(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        for user in ["alice", "bob", "carol"] {
            d.register(user).await?;
        }
        d.summary
            .push("alice, bob and carol registered over TLS with their own keys".into());
        Ok(())
    })
}

pub fn create_group(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let group = d
            .user("alice")?
            .create_group(GROUP)
            .await
            .context("creating the group")?;
        println!("[alice] created {} (group id {})", group.name, group.id);
        let users = [UserName::new("bob")?, UserName::new("carol")?];
        d.user("alice")?
            .add_users(GROUP, &users)
            .await
            .context("adding bob and carol")?;
        println!("[alice] added bob and carol (one MLS commit, Welcomes via the relay)");
        for user in ["bob", "carol"] {
            d.expect(user, "the Welcome", |e| matches!(e, Event::Joined { .. }))
                .await?;
        }
        Ok(())
    })
}

pub fn chat(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        d.say("alice", GROUP, "hello friends!").await?;
        d.expect_text(&["bob", "carol"], "hello friends!").await?;
        d.say("bob", GROUP, "hi alice, hi carol").await?;
        d.expect_text(&["alice", "carol"], "hi alice, hi carol")
            .await?;
        d.say("carol", GROUP, "hey both, good to see you").await?;
        d.expect_text(&["alice", "bob"], "hey both, good to see you")
            .await?;
        Ok(())
    })
}

pub fn bob_offline(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let bob = d.users.remove("bob").context("bob is not online")?;
        bob.close_now().await;
        println!("[bob] goes offline (connection dropped)");
        d.say("alice", GROUP, "bob, are you there?").await?;
        d.expect_text(&["carol"], "bob, are you there?").await?;
        d.say("carol", GROUP, "he will catch up later").await?;
        d.expect_text(&["alice"], "he will catch up later").await?;
        d.say(
            "alice",
            GROUP,
            "the relay keeps our messages for him, encrypted",
        )
        .await?;
        d.expect_text(
            &["carol"],
            "the relay keeps our messages for him, encrypted",
        )
        .await?;
        Ok(())
    })
}

pub fn bob_returns(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let bob = Device::open(&d.home("bob"))
            .await
            .context("reopening bob's device")?;
        d.users.insert("bob", bob);
        println!("[bob] back online: the relay resends everything after his cursor");
        let missed = [
            "bob, are you there?",
            "he will catch up later",
            "the relay keeps our messages for him, encrypted",
        ];
        // In order: each wait consumes bob's events up to that message.
        for text in missed {
            d.expect_text(&["bob"], text).await?;
        }
        d.summary.push(format!(
            "bob caught up on the {} messages sent while he was offline, in order",
            missed.len()
        ));
        Ok(())
    })
}

pub fn remove_carol(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let carol_name = UserName::new("carol")?;
        let group_id = group_id(d.user("alice")?).await?;
        d.user("alice")?
            .remove_users(GROUP, &[carol_name])
            .await
            .context("removing carol")?;
        println!("[alice] removed carol (an MLS commit: new epoch keys carol does not get)");
        d.expect(
            "bob",
            "carol's removal",
            |e| matches!(e, Event::MembersChanged { removed, .. } if !removed.is_empty()),
        )
        .await?;
        // Both of carol's devices: removing a user removes every device of hers.
        for device in ["carol", "carol-laptop"] {
            if d.users.contains_key(device) {
                d.expect(device, "her removal", |e| {
                    matches!(e, Event::RemovedFromGroup { .. })
                })
                .await?;
            }
        }

        let secret = "now just the two of us";
        d.say("alice", GROUP, secret).await?;
        d.expect_text(&["bob"], secret).await?;

        // carol: connected and caught up, yet nothing new arrives.
        let carol = d.users.get_mut("carol").context("carol is not online")?;
        carol.settle().await.context("carol syncing")?;
        let mut late = 0;
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(300), carol.next_event()).await
        {
            if let SessionEvent::Core(Event::Message(m)) = event {
                println!("[carol] {}", cove::message_view(&m).line());
                late += 1;
            }
        }
        let carol_seen = d.seen.get("carol").map(Vec::len).unwrap_or(0);
        ensure!(
            late == 0,
            "carol received {late} message(s) after her removal"
        );
        println!(
            "[carol] sees nothing new (still {carol_seen} messages, all from before her removal)"
        );

        // Her own client refuses to send, and the relay refuses her directly.
        let carol = d.user("carol")?;
        match carol.send_text(GROUP, "am I still in?").await {
            Ok(_) => bail!("carol could still send to the group"),
            Err(e) => println!("[carol] tries to send: refused by her client ({e})"),
        }
        let fetch = Request::Fetch {
            group: group_id,
            after: Seq(0),
            limit: 10,
        };
        let reply = carol
            .probe(fetch)
            .await
            .context("carol probing the relay")?;
        match reply {
            Err(e) if e.code == ErrorCode::NotMember => {
                println!("[carol] asks the relay for the group's log directly: refused ({e})");
            }
            other => bail!("the relay answered carol's fetch with {other:?}"),
        }
        let post = Request::Post {
            group: group_id,
            epoch: cove_wire::Epoch(0),
            kind: PostKind::Application,
            payload: Payload(vec![0; 64]),
        };
        match carol.probe(post).await.context("carol probing the relay")? {
            Err(e) if e.code == ErrorCode::NotMember => {
                println!("[carol] posts to the group directly: refused ({e})");
            }
            other => bail!("the relay answered carol's post with {other:?}"),
        }
        d.summary.push(
            "carol was removed: she received nothing afterwards and the relay refuses her reads and posts"
                .into(),
        );

        // Everyone who stayed agrees on the group state and the order of messages.
        let a = d
            .user("alice")?
            .epoch_state(group_id)
            .await?
            .context("alice's group state")?;
        let b = d
            .user("bob")?
            .epoch_state(group_id)
            .await?
            .context("bob's group state")?;
        ensure!(a == b, "alice and bob disagree on the group state");
        d.summary.push(format!(
            "alice and bob are in the same epoch ({}) with equal epoch authenticators",
            a.0
        ));
        for (user, seen) in &d.seen {
            let ids: BTreeSet<_> = seen.iter().map(|m| m.id).collect();
            ensure!(ids.len() == seen.len(), "{user} saw a message twice");
        }
        // The stored histories: every message once, in the relay's log order.
        let alice = d.user("alice")?.history(GROUP).await?;
        let bob = d.user("bob")?.history(GROUP).await?;
        let carol = d.user("carol")?.history(GROUP).await?;
        let ids = |h: &[cove::MessageView]| h.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        ensure!(
            ids(&alice) == ids(&bob),
            "alice and bob have different histories"
        );
        ensure!(
            ids(&alice).iter().collect::<BTreeSet<_>>().len() == alice.len(),
            "a message is stored twice"
        );
        ensure!(
            ids(&alice).starts_with(&ids(&carol)),
            "carol's history is not a prefix of alice's"
        );
        d.summary.push(format!(
            "alice and bob each hold all {} messages exactly once, in the same order; carol holds the first {}",
            alice.len(),
            carol.len()
        ));
        Ok(())
    })
}

pub fn scan_relay(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let mut files = Vec::new();
        collect_files(&d.relay_dir, &mut files)?;
        let mut bytes = 0u64;
        for file in &files {
            let data =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            bytes += data.len() as u64;
            for text in &d.sent {
                ensure!(
                    !contains(&data, text.as_bytes()),
                    "plaintext {text:?} found in {}",
                    file.display()
                );
            }
        }
        let line = format!(
            "the relay's data ({} files, {bytes} bytes) contains none of the {} plaintexts",
            files.len(),
            d.sent.len()
        );
        println!("relay   {line}");
        d.summary.push(line);
        Ok(())
    })
}

async fn group_id(device: &Device) -> anyhow::Result<GroupId> {
    let groups = device.groups().await?;
    let group = groups
        .iter()
        .find(|g| g.name == GROUP)
        .context("no group named friends")?;
    Ok(GroupId::from_hex(&group.id)?)
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
