//! The account steps of the demo (issue 11): carol gives her user a password (OPAQUE: the
//! relay never sees it) and gets a recovery key; later she logs in on a new laptop with only
//! the password: the laptop unwraps her identity key from the account bundle, adds itself to
//! her signed device list, joins her groups by external commits and restores her history
//! from the encrypted backup her first device keeps on the relay.

use anyhow::{Context as _, ensure};

use cove::{Device, Event, UserName};
use cove_core::IdentityEvent;

use super::{Demo, StepFuture};

const GROUP: &str = "friends";
const LAPTOP: &str = "carol-laptop";
/// carol's password (a demo: real users type theirs, or give `--password-file`).
const PASSWORD: &[u8] = b"carol's long demo passphrase";

pub fn carol_password(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let carol = d.users.remove("carol").context("carol is not online")?;
        let recovery = carol
            .register_account(PASSWORD)
            .await
            .context("registering carol's password")?;
        // The recovery key is shown once by `cove init`; the demo only says it exists.
        let shown = recovery.display();
        println!(
            "[carol] password registered (OPAQUE, Argon2id); recovery key of {} characters shown once",
            shown.len()
        );
        let carol = Device::open(&d.home("carol"))
            .await
            .context("reopening carol's home")?;
        d.users.insert("carol", carol);
        d.summary.push(
            "carol gave her user a password (OPAQUE: the relay stores a record that checks no guess by itself) and a recovery key".into(),
        );
        Ok(())
    })
}

pub fn carol_logs_in(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let carol = d.users.get_mut("carol").context("carol is not online")?;
        let backed = cove::backup::backup(carol)
            .await
            .context("carol backing up her history")?;
        println!(
            "[carol] backed up {} messages in {} encrypted segment(s) ({} bytes) to the relay",
            backed.messages, backed.segments, backed.bytes
        );

        let home = d.home(LAPTOP);
        println!(
            "[{LAPTOP}] cove login --user carol --server {} (password)",
            d.server
        );
        let mut laptop = Device::login(
            &home,
            &d.server,
            UserName::new("carol")?,
            PASSWORD,
            Some(&d.ca),
        )
        .await
        .context("carol logging in on her laptop")?;
        let restored = cove::backup::restore_history(&mut laptop)
            .await
            .context("restoring carol's history on the laptop")?;
        println!(
            "[{LAPTOP}] logged in as device {}; restored {} messages from {} segment(s)",
            laptop
                .device_id()
                .map(|d| d.to_string())
                .unwrap_or_default(),
            restored.messages,
            restored.segments
        );
        let history = laptop.history(GROUP).await?;
        for m in history.iter().take(3) {
            println!("[{LAPTOP}] {GROUP} (from before the laptop) {}", m.line());
        }
        ensure!(
            history.iter().any(|m| m.text == "hi alice, hi carol"),
            "the laptop did not restore carol's history"
        );
        d.users.insert(LAPTOP, laptop);
        d.expect("alice", "carol's new device", |e| {
            matches!(
                e,
                Event::Identity(IdentityEvent::DeviceAdded { user, .. }) if user.as_str() == "carol"
            )
        })
        .await?;
        d.say("bob", GROUP, "welcome, carol's laptop").await?;
        d.expect_text(&[LAPTOP, "carol"], "welcome, carol's laptop")
            .await?;
        d.summary.push(format!(
            "carol logged in on a new laptop with only her password: it joined her group by an external commit and restored {} messages of history from the encrypted backup",
            restored.messages
        ));
        Ok(())
    })
}
