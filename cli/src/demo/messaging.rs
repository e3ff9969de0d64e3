//! The messaging step of the demo (issue 13): a reply, a reaction, an edit, a delete and a
//! disappearing message, each shown as every member sees it. All of it travels as MLS
//! application messages: the relay scan at the end looks for these texts and the emoji too.

use std::time::Duration;

use anyhow::{Context as _, ensure};

use cove::{Event, short_id};

use super::{Demo, StepFuture};

const GROUP: &str = "friends";

/// How long the demo's disappearing message lives.
const TIMER: Duration = Duration::from_secs(3);

/// The id (hex) of the newest message in `user`'s history with exactly `text`.
async fn id_of(d: &Demo, user: &str, text: &str) -> anyhow::Result<String> {
    d.user(user)?
        .history(GROUP)
        .await?
        .into_iter()
        .rev()
        .find(|m| m.text == text)
        .map(|m| m.id)
        .with_context(|| format!("{user} holds no message {text:?}"))
}

pub fn react_edit_delete(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        // bob replies to alice's first message.
        let hello = id_of(d, "bob", "hello friends!").await?;
        let reply = "hi! are we still on for saturday?";
        d.user("bob")?.reply(GROUP, &hello, reply).await?;
        println!("[bob] -> replies to {}: {reply}", short_id(&hello));
        d.sent.push(reply.into());
        for user in ["alice", "carol"] {
            d.expect(
                user,
                "bob's reply",
                |e| matches!(e, Event::Message(m) if m.text == reply && m.reply_to.is_some()),
            )
            .await?;
        }

        // carol reacts to it.
        let reply_id = id_of(d, "carol", reply).await?;
        d.user("carol")?
            .react(GROUP, &reply_id, "🎉", false)
            .await?;
        println!("[carol] -> reacts 🎉 to {}", short_id(&reply_id));
        d.sent.push("🎉".into());
        for user in ["alice", "bob"] {
            d.expect(
                user,
                "carol's reaction",
                |e| matches!(e, Event::Reacted { emoji, .. } if emoji == "🎉"),
            )
            .await?;
        }

        // alice edits her first message.
        let hello = id_of(d, "alice", "hello friends!").await?;
        let edited = "hello friends! (now with an edit)";
        d.user("alice")?.edit(GROUP, &hello, edited).await?;
        println!("[alice] -> edits {}: {edited}", short_id(&hello));
        d.sent.push(edited.into());
        for user in ["bob", "carol"] {
            d.expect(
                user,
                "alice's edit",
                |e| matches!(e, Event::Edited { text, .. } if text == edited),
            )
            .await?;
        }

        // carol says something in the wrong group and deletes it for everyone.
        let oops = "oops, that was meant for my sister";
        d.say("carol", GROUP, oops).await?;
        d.expect_text(&["alice", "bob"], oops).await?;
        let oops_id = id_of(d, "carol", oops).await?;
        d.user("carol")?.delete_message(GROUP, &oops_id).await?;
        println!("[carol] -> deletes {} for everyone", short_id(&oops_id));
        for user in ["alice", "bob"] {
            d.expect(user, "carol's delete", |e| {
                matches!(e, Event::Deleted { .. })
            })
            .await?;
        }

        // What bob's history shows now: the reply with its quote and reaction, the edit,
        // the deleted message.
        for m in d.user("bob")?.history(GROUP).await? {
            println!("[bob]   history: {}", m.line());
        }
        let history = d.user("bob")?.history(GROUP).await?;
        ensure!(
            !history.iter().any(|m| m.text == oops),
            "bob's history still holds the deleted text"
        );
        d.summary.push(
            "bob replied, carol reacted, alice edited, carol deleted for everyone: every member \
             rendered the same, all inside MLS"
                .into(),
        );
        Ok(())
    })
}

pub fn disappearing(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let secs = u32::try_from(TIMER.as_secs()).unwrap_or(3);
        d.user("alice")?.set_disappearing(GROUP, Some(secs)).await?;
        println!("[alice] -> disappearing messages: {secs} s");
        for user in ["bob", "carol"] {
            d.expect(user, "the timer", |e| {
                matches!(e, Event::GroupChanged { .. })
            })
            .await?;
        }
        let text = "this one disappears in 3 seconds";
        d.say("alice", GROUP, text).await?;
        d.expect_text(&["bob", "carol"], text).await?;
        for user in ["alice", "bob", "carol"] {
            d.expect(user, "the message to disappear", |e| {
                matches!(e, Event::Expired { .. })
            })
            .await?;
            let left = d.user(user)?.history(GROUP).await?;
            ensure!(
                !left.iter().any(|m| m.text == text),
                "{user} still holds the disappeared message"
            );
            ensure!(
                d.user(user)?
                    .search("disappears", Some(GROUP), 10)
                    .await?
                    .is_empty(),
                "{user}'s search still finds the disappeared message"
            );
        }
        d.user("alice")?.set_disappearing(GROUP, None).await?;
        println!("[alice] -> disappearing messages: off");
        for user in ["bob", "carol"] {
            d.expect(user, "the timer off", |e| {
                matches!(e, Event::GroupChanged { .. })
            })
            .await?;
        }
        d.sent.push(text.into());
        d.summary.push(format!(
            "a message disappeared from all three devices {secs} s after it arrived (history \
             and search no longer find it)"
        ));
        Ok(())
    })
}
